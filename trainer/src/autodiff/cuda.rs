//! The GPU backend (feature `cuda`): [`Cuda`] implements [`Backend`](super::Backend)
//! on an NVIDIA GPU, on the runtime's [`Gpu`](socflow_runtime::cuda::Gpu) (its
//! context, stream and cuBLAS handle, and its search for the CUDA libraries).
//!
//! - GEMMs go through cuBLAS `cublasGemmEx`: f64 and f32 with f64 / f32 compute (the
//!   handle is in the default math mode, so f32 is not computed in TF32); f16 and bf16
//!   inputs with `CUBLAS_COMPUTE_32F` (tensor cores) into an f32 result that a kernel
//!   rounds once to the 16-bit type, as [`Cpu`](super::Cpu) does;
//! - everything else runs in kernels compiled at run time with NVRTC for the device
//!   (`cuda/ops.cuh` and `cuda/kernels.cu`, compiled with `--fmad=false`): the
//!   per-element bodies round exactly where `cpu.rs` rounds, and the activations are
//!   the runtime's polynomials with the CPU's fused multiply-adds.
//!
//! # Agreement with the CPU backend
//!
//! Bit for bit: uploads, casts, fills, copies and the data-movement ops; the
//! elementwise maps (negation, squares, |x|, sign, 1/x, √x, tanh, sech², the sigmoid,
//! SiLU and its derivatives, softplus, log cosh), affine maps, binary ops with every
//! broadcast, the fused add/axpy/mul-add kernels and the log cosh family's VJP; sums of
//! row groups and row sums of rows up to 32 wide (both summed in the CPU's order).
//! Within a few ulps of the compute type: eˣ, ln x, sin and cos (CUDA's libdevice
//! against the CPU's libm). Within summation-order error: GEMMs (cuBLAS's blocking
//! against `gemm`'s), wider row sums, column sums and total sums (tree and chunked
//! sums). A 16-bit result computed from f32 values that differ in the last bits may
//! round to the neighbouring 16-bit value.
//!
//! # Without a GPU
//!
//! Built without the `cuda` feature, [`Cuda`] keeps its API and [`Cuda::new`] returns
//! [`Error::Unsupported`](super::Error::Unsupported) (so generic code dispatching on a
//! device setting compiles either way); built with it on a machine without a driver,
//! [`Cuda::new`] returns [`Error::Backend`](super::Error::Backend) saying so, never a
//! panic. [`kernel_source`] is the CUDA C text in every build.

// The crate denies `unsafe`; the backend needs it for kernel launches, uninitialized
// device allocations and cuBLAS's raw-pointer GEMM (each block says why it is sound).
#[cfg(feature = "cuda")]
#[allow(unsafe_code)]
mod device;
mod kernels;
#[cfg(not(feature = "cuda"))]
mod stub;

#[cfg(feature = "cuda")]
pub use device::{Cuda, CudaBuffer};
pub use kernels::{compile_ptx, kernel_names, kernel_params, kernel_source, KernelParam};
#[cfg(not(feature = "cuda"))]
pub use stub::{Cuda, CudaBuffer};

/// Device memory held by a [`Cuda`] backend's buffers ([`Cuda::memory`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Bytes held now.
    pub live_bytes: u64,
    /// The most bytes held at once since the backend was created or its peak was last
    /// reset ([`Cuda::reset_peak_memory`]).
    pub peak_bytes: u64,
}

/// Whether this build has the GPU backend (the `cuda` feature).
pub const ENABLED: bool = cfg!(feature = "cuda");
