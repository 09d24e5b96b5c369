//! The kernels' CUDA C source and its run-time compilation with NVRTC.
//!
//! The source lives in `ops.cuh` (per-element device functions) and `kernels.cu` (the
//! kernels) beside this file, kept as files so that g++ compiles the same text as host
//! C++ in the tests (trainer/tests/all/cuda_host.rs). NVRTC compiles their concatenation
//! for the device's compute capability with `--fmad=false`, so that no multiply-add is
//! contracted and every expression rounds where the CPU backend's does (the
//! activations call `fma()` explicitly where the CPU's FMA path fuses).

use crate::autodiff::error::{Error, Result};

/// The per-element device functions.
const OPS: &str = include_str!("ops.cuh");
/// The kernels.
const KERNELS: &str = include_str!("kernels.cu");

/// Kernels compiled once per storage type (`<name>_f64`, `_f32`, `_f16`, `_bf16`).
pub(crate) const TYPED: &[&str] = &[
    "unary",
    "logcosh3",
    "affine",
    "binary",
    "add_scaled",
    "mul_add",
    "logcosh_vjp",
    "broadcast",
    "sum_row_groups",
    "reduce_cols_seq",
    "reduce_cols_warp",
    "colsum_partial",
    "colsum_finish",
    "sum_partial",
    "sum_finish",
    "max_abs_partial",
];

/// Kernels compiled once per pair of storage types (`cast_<from>_<to>`,
/// `axpy_<dst>_<src>`).
pub(crate) const PAIRED: &[&str] = &["cast", "axpy"];

/// Kernels compiled once per element width (`<name>_u16`, `_u32`, `_u64`).
pub(crate) const MOVES: &[&str] = &["copy2d", "repeat_rows", "tile", "fill"];

/// The storage types' suffixes.
pub(crate) const TYPES: [&str; 4] = ["f64", "f32", "f16", "bf16"];

/// The element widths' suffixes.
pub(crate) const WIDTHS: [&str; 3] = ["u16", "u32", "u64"];

/// The whole CUDA C source NVRTC compiles.
pub fn kernel_source() -> String {
    format!("{OPS}\n{KERNELS}")
}

/// The name of every kernel in [`kernel_source`] (the entry points a compiled module
/// has).
pub fn kernel_names() -> Vec<String> {
    let mut names = Vec::new();
    for k in TYPED {
        names.extend(TYPES.iter().map(|t| format!("{k}_{t}")));
    }
    for k in PAIRED {
        for a in TYPES {
            names.extend(TYPES.iter().map(|b| format!("{k}_{a}_{b}")));
        }
    }
    for k in MOVES {
        names.extend(WIDTHS.iter().map(|w| format!("{k}_{w}")));
    }
    names
}

/// Compiles the kernels with NVRTC for `arch` (`"compute_90"`, say) and returns the
/// PTX.
///
/// Needs only libnvrtc (found as the runtime's
/// [`find_nvrtc`](socflow_runtime::cuda::find_nvrtc) says), no driver or device.
/// Errors: [`Error::Backend`] when NVRTC is missing or the compilation fails (with
/// NVRTC's log); [`Error::Unsupported`] in a build without the `cuda` feature.
#[cfg(feature = "cuda")]
pub fn compile_ptx(arch: &str) -> Result<String> {
    let ptx = compile(arch)?;
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ptx.to_src())).map_err(|_| {
        Error::Backend {
            backend: "cuda",
            message: "NVRTC returned PTX that is not text".into(),
        }
    })
}

/// Compiles the kernels with NVRTC: [`Error::Unsupported`] in this build (no `cuda`
/// feature).
#[cfg(not(feature = "cuda"))]
pub fn compile_ptx(arch: &str) -> Result<String> {
    let _ = arch;
    Err(Error::Unsupported(
        "socflow-trainer was built without the `cuda` feature".into(),
    ))
}

/// Compiles the kernels for `arch` (the form the module loader takes).
#[cfg(feature = "cuda")]
pub(crate) fn compile(arch: &str) -> Result<cudarc::nvrtc::Ptx> {
    use cudarc::nvrtc::{compile_ptx_with_opts, CompileError, CompileOptions};
    let backend = |message: String| Error::Backend {
        backend: "cuda",
        message,
    };
    let found = socflow_runtime::cuda::find_nvrtc().map_err(|e| backend(e.to_string()))?;
    let opts = CompileOptions {
        fmad: Some(false),
        options: vec![format!("--gpu-architecture={arch}"), "--std=c++17".into()],
        name: Some("socflow_autodiff.cu".into()),
        ..Default::default()
    };
    let src = kernel_source();
    // cudarc unwraps a few NVRTC calls (the log, the program's destruction): a panic
    // there is an NVRTC failure, reported as such.
    let compiled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        compile_ptx_with_opts(&src, opts)
    }));
    match compiled {
        Ok(Ok(ptx)) => Ok(ptx),
        Ok(Err(CompileError::CompileError { nvrtc, log, .. })) => Err(backend(format!(
            "NVRTC ({found}) could not compile the autodiff kernels for {arch}: {nvrtc:?}\n{}",
            log.to_string_lossy()
        ))),
        Ok(Err(e)) => Err(backend(format!("NVRTC ({found}) failed for {arch}: {e:?}"))),
        Err(_) => Err(backend(format!(
            "NVRTC ({found}) panicked while compiling for {arch}"
        ))),
    }
}
