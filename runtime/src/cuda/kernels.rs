//! The kernels' CUDA C source and its run-time compilation with NVRTC.
//!
//! The source lives in `kernels/*.cu` beside this file (kept as files so that g++ can
//! compile the same text as host C++ in the tests). At run time the shared device
//! functions (`common.cuh`) are prepended to the kernels (`sampling.cu`, `otflow.cu`, `adaptive.cu`) and NVRTC
//! compiles the result for the device's compute capability with `--fmad=false`: no
//! multiply-add is contracted, so the Brownian normals are bitwise the CPU's and the
//! integrators' combinations round as the CPU's do (the activations call `fma()`
//! explicitly where the CPU's FMA path fuses).

use std::panic::{catch_unwind, AssertUnwindSafe};

use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions, Ptx};

use crate::error::{Error, Result};

/// The shared device functions.
const COMMON: &str = include_str!("kernels/common.cuh");
/// The kernels of the MLP and the integrators.
const SAMPLING: &str = include_str!("kernels/sampling.cu");
/// The kernels of the OT-Flow potential.
const OTFLOW: &str = include_str!("kernels/otflow.cu");
/// The kernels of adaptive Dopri5.
const ADAPTIVE: &str = include_str!("kernels/adaptive.cu");

/// The kernel templates; each is compiled as `<name>_f32` and `<name>_f64`.
pub const KERNELS: &[&str] = &[
    "normals",
    "bias_act",
    "field_out",
    "rk_stage",
    "em_step",
    "heun_step",
    "vp_coeffs",
    "ot_input",
    "ot_act",
    "ot_fill_rows",
    "ot_scale_prod",
    "ot_finish",
    "ot_lap_tr0",
    "ot_lap_jt0",
    "ot_lap_tr",
    "ot_lap_jt",
    "ot_lap_out",
    "dp_init1",
    "dp_init2",
    "dp_prepare",
    "dp_stage_times",
    "dp_judge",
];

/// The whole source NVRTC compiles.
pub fn source() -> String {
    format!("{COMMON}\n{SAMPLING}\n{OTFLOW}\n{ADAPTIVE}")
}

/// Compiles the kernels with NVRTC for `arch` (`"compute_90"`, say) and returns the PTX.
///
/// Needs only libnvrtc (found as [the module docs of `libs`](super) say), no driver or
/// device. Errors: [`Error::Device`] when NVRTC is missing or the compilation fails
/// (with NVRTC's log).
pub fn compile_ptx(arch: &str) -> Result<String> {
    let ptx = compile(arch)?;
    catch_unwind(AssertUnwindSafe(|| ptx.to_src()))
        .map_err(|_| Error::Device("NVRTC returned PTX that is not text".into()))
}

/// Compiles the kernels for `arch` (the internal form the module loader takes).
pub(crate) fn compile(arch: &str) -> Result<Ptx> {
    let found = super::libs::ensure(super::libs::CudaLib::Nvrtc).map_err(Error::Device)?;
    let opts = CompileOptions {
        fmad: Some(false),
        options: vec![
            format!("--gpu-architecture={arch}"),
            "--std=c++17".into(),
            "-default-device".into(),
        ],
        name: Some("socflow_kernels.cu".into()),
        ..Default::default()
    };
    let src = source();
    // cudarc unwraps a few NVRTC calls (the log, the program's destruction): a panic
    // there is an NVRTC failure, reported as such.
    match catch_unwind(AssertUnwindSafe(|| compile_ptx_with_opts(&src, opts))) {
        Ok(Ok(ptx)) => Ok(ptx),
        Ok(Err(cudarc::nvrtc::CompileError::CompileError { nvrtc, log, .. })) => {
            Err(Error::Device(format!(
                "NVRTC ({found}) could not compile the kernels for {arch}: {nvrtc:?}\n{}",
                log.to_string_lossy()
            )))
        }
        Ok(Err(e)) => Err(Error::Device(format!(
            "NVRTC ({found}) failed for {arch}: {e:?}"
        ))),
        Err(_) => Err(Error::Device(format!(
            "NVRTC ({found}) panicked while compiling for {arch}"
        ))),
    }
}
