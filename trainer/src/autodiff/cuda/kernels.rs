//! The kernels' CUDA C source and its run-time compilation with NVRTC.
//!
//! The source lives in `ops.cuh` (per-element device functions) and `kernels.cu` (the
//! kernels) beside this file, kept as files so that g++ compiles the same text as host
//! C++ in the tests (trainer/tests/all/cuda_host.rs). NVRTC compiles their concatenation
//! for the device's compute capability with `--fmad=false`, so that no multiply-add is
//! contracted and every expression rounds where the CPU backend's does (the
//! activations call `fma()` explicitly where the CPU's FMA path fuses).

use std::collections::HashMap;

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

/// How a kernel takes one parameter, as a launch passes it (see [`kernel_params`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KernelParam {
    /// A device pointer (`T*`, 64 bits).
    Ptr,
    /// A signed 64-bit size or index (`ad_i64`, `long long`).
    I64,
    /// An unsigned 64-bit bit pattern (`ad_u64`).
    U64,
    /// A 32-bit code (`int`).
    I32,
    /// A scalar (`double`).
    F64,
}

impl KernelParam {
    /// The PTX type the parameter compiles to (`.param .u64 …`, `.u32`, `.f64`).
    pub fn ptx_type(self) -> &'static str {
        match self {
            KernelParam::Ptr | KernelParam::I64 | KernelParam::U64 => "u64",
            KernelParam::I32 => "u32",
            KernelParam::F64 => "f64",
        }
    }
}

/// The parameter list of every kernel of [`kernel_names`], read from the signatures in
/// `kernels.cu` (`AD_KERNEL void <family>_##N(<params>)`): what every launch must pass,
/// in order. The GPU backend checks each launch against it, so that a launch whose
/// arguments do not match the kernel fails with an error naming both instead of
/// running with misread arguments.
///
/// Errors: a kernel of [`kernel_names`] whose family has no signature in the source, or
/// a parameter type the table does not know (a bug in the source, caught by the tests).
pub fn kernel_params() -> std::result::Result<HashMap<String, Vec<KernelParam>>, String> {
    let families = family_params()?;
    let mut out = HashMap::new();
    let mut add = |family: &str, name: String| -> std::result::Result<(), String> {
        let params = families
            .get(family)
            .ok_or_else(|| format!("kernel {name}: no signature of {family}_## in kernels.cu"))?;
        out.insert(name, params.clone());
        Ok(())
    };
    for k in TYPED {
        for t in TYPES {
            add(k, format!("{k}_{t}"))?;
        }
    }
    for k in PAIRED {
        for a in TYPES {
            for b in TYPES {
                add(k, format!("{k}_{a}_{b}"))?;
            }
        }
    }
    for k in MOVES {
        for w in WIDTHS {
            add(k, format!("{k}_{w}"))?;
        }
    }
    Ok(out)
}

/// Each kernel family's parameters, parsed from the `AD_KERNEL void` signatures.
fn family_params() -> std::result::Result<HashMap<String, Vec<KernelParam>>, String> {
    const MARK: &str = "AD_KERNEL void ";
    let mut out = HashMap::new();
    let mut rest = KERNELS;
    while let Some(at) = rest.find(MARK) {
        rest = &rest[at + MARK.len()..];
        let open = rest
            .find('(')
            .ok_or_else(|| "an AD_KERNEL signature without '('".to_string())?;
        let family = rest[..open].split("_##").next().unwrap_or_default().trim();
        let close = rest[open..]
            .find(')')
            .ok_or_else(|| format!("kernel {family}: signature without ')'"))?;
        let list = rest[open + 1..open + close].replace('\\', " ");
        let mut params = Vec::new();
        for p in list.split(',') {
            let words: Vec<&str> = p.split_whitespace().collect();
            let kind = if p.contains('*') {
                KernelParam::Ptr
            } else {
                match words.first().copied() {
                    Some("ad_i64") => KernelParam::I64,
                    Some("ad_u64") => KernelParam::U64,
                    Some("int") => KernelParam::I32,
                    Some("double") => KernelParam::F64,
                    _ => return Err(format!("kernel {family}: unknown parameter `{}`", p.trim())),
                }
            };
            params.push(kind);
        }
        if family.is_empty() {
            return Err("an AD_KERNEL signature without a name".into());
        }
        out.insert(family.to_string(), params);
    }
    Ok(out)
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

#[cfg(test)]
mod tests {
    use super::{kernel_names, kernel_params, KernelParam::*};

    #[test]
    fn every_kernel_has_its_parameter_list() {
        let params = kernel_params().unwrap();
        for name in kernel_names() {
            assert!(params.contains_key(&name), "{name}");
        }
        assert_eq!(params.len(), kernel_names().len());
        assert_eq!(params["unary_f32"], [Ptr, Ptr, I64, I32]);
        assert_eq!(params["affine_bf16"], [Ptr, Ptr, I64, F64, F64]);
        assert_eq!(params["binary_f64"], [Ptr, Ptr, Ptr, I64, I64, I32, I32]);
        assert_eq!(params["cast_f16_f32"], [Ptr, Ptr, I64]);
        assert_eq!(params["axpy_f32_f16"], [Ptr, Ptr, I64, F64]);
        assert_eq!(params["fill_u16"], [Ptr, I64, U64]);
        assert_eq!(params["copy2d_u64"][..4], [Ptr, I64, I64, Ptr]);
        assert_eq!(params["max_abs_partial_f16"], [Ptr, Ptr, I64]);
    }
}
