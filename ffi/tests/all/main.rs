//! The C ABI's integration tests, one module per topic, in one test binary: one link
//! of the workspace instead of one per file (CI builds in release mode, where linking
//! dominated the build).
//!
//! Tests of one binary run as threads of one process; none of these changes
//! process-global state. The C and C++ programs run as child processes; the library
//! they link is installed once per process (`common::install`), and each test builds
//! in its own directory. The counting allocator below counts per thread, so the
//! no-allocation checks of `api` do not see the other tests' allocations.

use socflow_testkit::CountingAlloc;

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

mod common;

mod api;
mod c_abi;
mod c_examples;
mod header;
