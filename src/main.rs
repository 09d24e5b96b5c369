//! socflow command-line tool.
fn main() {}
