//! Helpers shared by the command-line tool's end-to-end tests: running the binary and
//! reading what it printed.
#![allow(dead_code)]

use std::process::{Command, Output};

/// Runs the `socflow` binary built for these tests with `args`.
pub fn socflow(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_socflow"))
        .args(args)
        .output()
        .expect("the socflow binary runs")
}

/// What it printed on standard output.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// What it printed on standard error.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
