//! The runtime's integration tests, one module per topic, in one test binary: one
//! link of the workspace instead of one per file (CI builds in release mode, where
//! linking and re-instantiating the generics for each binary dominated the build).
//!
//! Tests of one binary run as threads of one process, so a test that changes
//! process-global state (environment variables, the current directory, a global
//! thread pool, a library loaded once per process) has its own binary instead:
//! `onnx_missing_library.rs` (ONNX Runtime is loaded once per process, and the test
//! sets `ORT_DYLIB_PATH`) and `cuda.rs` (feature `cuda`; scripts/gpu-check runs it on
//! a GPU machine by that name). The counting allocator below is process-global but
//! counts per thread, so the no-allocation checks of different modules do not see
//! one another's allocations.

use socflow_testkit::CountingAlloc;

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

mod common;

mod artifact;
mod brownian;
mod control_law;
mod controller;
mod cuda_host;
mod jvp;
mod mlp;
mod npy;
mod ode;
// ONNX models as fields: feature `onnx`, on in `cargo test --workspace` (the CLI
// enables it). These tests load ONNX Runtime through the runtime's own search and set
// no environment variable, so they share the process; the missing-library test, which
// sets ORT_DYLIB_PATH and must load the library first, has its own binary.
#[cfg(feature = "onnx")]
mod onnx;
mod otflow;
mod sampler;
mod sde;
mod vpsde;
