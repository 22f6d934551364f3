//! `error`: part of the fixed sample project the README's quickstart counts.
pub fn error_1() -> u32 {
    1
}
// line 5
