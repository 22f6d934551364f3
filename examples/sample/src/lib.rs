//! `lib`: part of the fixed sample project the README's quickstart counts.
pub fn lib_1() -> u32 {
    1
}
pub fn lib_2() -> u32 {
    2
}
pub fn lib_3() -> u32 {
    3
}
pub fn lib_4() -> u32 {
    4
}
pub fn lib_5() -> u32 {
    5
}
pub fn lib_6() -> u32 {
    6
}
pub fn lib_7() -> u32 {
    7
}
pub fn lib_8() -> u32 {
    8
}
pub fn lib_9() -> u32 {
    9
}
pub fn lib_10() -> u32 {
    10
}
pub fn lib_11() -> u32 {
    11
}
pub fn lib_12() -> u32 {
    12
}
pub fn lib_13() -> u32 {
    13
}
// line 41
// line 42
