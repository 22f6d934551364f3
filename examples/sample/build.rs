//! `build`: part of the fixed sample project the README's quickstart counts.
pub fn build_1() -> u32 {
    1
}
pub fn build_2() -> u32 {
    2
}
// line 8
// line 9
