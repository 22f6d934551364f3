//! `lexer`: part of the fixed sample project the README's quickstart counts.
pub fn lexer_1() -> u32 {
    1
}
pub fn lexer_2() -> u32 {
    2
}
pub fn lexer_3() -> u32 {
    3
}
pub fn lexer_4() -> u32 {
    4
}
pub fn lexer_5() -> u32 {
    5
}
pub fn lexer_6() -> u32 {
    6
}
pub fn lexer_7() -> u32 {
    7
}
pub fn lexer_8() -> u32 {
    8
}
pub fn lexer_9() -> u32 {
    9
}
