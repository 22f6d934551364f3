//! `value`: part of the fixed sample project the README's quickstart counts.
pub fn value_1() -> u32 {
    1
}
pub fn value_2() -> u32 {
    2
}
pub fn value_3() -> u32 {
    3
}
pub fn value_4() -> u32 {
    4
}
// line 14
