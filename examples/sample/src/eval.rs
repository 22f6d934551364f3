//! `eval`: part of the fixed sample project the README's quickstart counts.
pub fn eval_1() -> u32 {
    1
}
pub fn eval_2() -> u32 {
    2
}
pub fn eval_3() -> u32 {
    3
}
pub fn eval_4() -> u32 {
    4
}
pub fn eval_5() -> u32 {
    5
}
pub fn eval_6() -> u32 {
    6
}
// line 20
// line 21
