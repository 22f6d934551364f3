//! `parser`: part of the fixed sample project the README's quickstart counts.
pub fn parser_1() -> u32 {
    1
}
pub fn parser_2() -> u32 {
    2
}
pub fn parser_3() -> u32 {
    3
}
pub fn parser_4() -> u32 {
    4
}
pub fn parser_5() -> u32 {
    5
}
pub fn parser_6() -> u32 {
    6
}
pub fn parser_7() -> u32 {
    7
}
pub fn parser_8() -> u32 {
    8
}
pub fn parser_9() -> u32 {
    9
}
pub fn parser_10() -> u32 {
    10
}
pub fn parser_11() -> u32 {
    11
}
// line 35
