//! Helpers shared by the integration tests (each `tests/*.rs` is its own
//! process; include with `mod common;`).
#![allow(dead_code)]

/// One line of `/proc/self/maps`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub start: usize,
    pub end: usize,
    /// `rwxp`-style permission string.
    pub perms: String,
    pub path: String,
}

/// The current mappings of this process.
pub fn mappings() -> Vec<Mapping> {
    std::fs::read_to_string("/proc/self/maps")
        .expect("read /proc/self/maps")
        .lines()
        .map(|l| {
            let mut it = l.split_whitespace();
            let range = it.next().unwrap();
            let perms = it.next().unwrap().to_string();
            let path = it.nth(3).unwrap_or("").to_string();
            let (s, e) = range.split_once('-').unwrap();
            Mapping {
                start: usize::from_str_radix(s, 16).unwrap(),
                end: usize::from_str_radix(e, 16).unwrap(),
                perms,
                path,
            }
        })
        .collect()
}

/// Panics if any mapping of the process is writable and executable at once.
#[track_caller]
pub fn assert_no_wx() {
    let wx: Vec<_> = mappings().into_iter().filter(|m| m.perms.contains('w') && m.perms.contains('x')).collect();
    assert!(wx.is_empty(), "writable and executable mappings: {wx:#x?}");
}

/// The permission string of the mapping that holds `addr`.
pub fn protection_of(addr: usize) -> String {
    mappings()
        .into_iter()
        .find(|m| m.start <= addr && addr < m.end)
        .map(|m| m.perms)
        .unwrap_or_else(|| panic!("{addr:#x} is not mapped"))
}
