//! Runtime benchmarks.
fn main() {}
