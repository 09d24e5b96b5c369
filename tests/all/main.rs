//! The command-line tool's end-to-end tests, one module per topic, in one test binary:
//! one link of the workspace instead of one per file (CI builds in release mode, where
//! linking dominated the build). Each test runs the `socflow` binary as a child
//! process in its own temporary directory, so the tests share nothing but the binary.
//!
//! `device_cli.rs` (`--device cuda`, which opens the GPU in the test process too) has
//! its own binary and borrows `common` from here.

mod common;

mod cli;
mod diffusion_cli;
mod likelihood;
mod onnx_cli;
mod soc_cli;
mod train;
