//! Helpers shared by the command-line tool's end-to-end tests: running the binary and
//! reading what it printed.

use std::path::Path;
use std::process::{Command, Output};

/// The `socflow` binary: the one built for these tests, or `SOCFLOW_BIN` where set
/// (scripts/gpu-check runs the device tests with a copied binary on a machine without
/// the build tree).
pub fn socflow_bin() -> std::path::PathBuf {
    std::env::var_os("SOCFLOW_BIN")
        .map(Into::into)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_socflow").into())
}

/// Runs the `socflow` binary with `args`.
pub fn socflow(args: &[&str]) -> Output {
    Command::new(socflow_bin())
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

/// Panics with what the run printed on standard error unless it succeeded.
#[track_caller]
pub fn assert_success(o: &Output) {
    assert!(o.status.success(), "{}", stderr(o));
}

/// Runs `socflow train CONFIG --out OUT`, with `--resume CHECKPOINT` when given.
pub fn train(config: &Path, out: &Path, resume: Option<&Path>) -> Output {
    let mut args = vec![
        "train",
        config.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    if let Some(ckpt) = resume {
        args.extend(["--resume", ckpt.to_str().unwrap()]);
    }
    socflow(&args)
}

/// `socflow train CONFIG --out OUT`, which must succeed.
#[track_caller]
pub fn train_ok(config: &Path, out: &Path) -> Output {
    let o = train(config, out, None);
    assert_success(&o);
    o
}

/// `socflow train CONFIG --out OUT --resume CHECKPOINT`, which must succeed and say
/// that it resumed at iteration `at`.
#[track_caller]
pub fn resume_ok(config: &Path, out: &Path, checkpoint: &Path, at: u64) -> Output {
    let o = train(config, out, Some(checkpoint));
    assert_success(&o);
    let err = stderr(&o);
    assert!(
        err.contains(&format!("resuming at iteration {at}")),
        "{err}"
    );
    o
}

/// Width and height of a PNG file (its IHDR chunk), after checking its signature and
/// that it holds more than a header's worth of data.
#[track_caller]
pub fn png_size(path: &Path) -> (u32, u32) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        bytes.len() > 2_000,
        "{}: {} bytes",
        path.display(),
        bytes.len()
    );
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{}", path.display());
    assert_eq!(&bytes[12..16], b"IHDR", "{}", path.display());
    let be = |i: usize| u32::from_be_bytes(bytes[i..i + 4].try_into().unwrap());
    (be(16), be(20))
}
