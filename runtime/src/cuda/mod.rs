//! The GPU backend (feature `cuda`): batch fields and samplers on an NVIDIA GPU.
//!
//! - [`Gpu`]: a device with its stream, cuBLAS handle and kernels, compiled at run
//!   time with NVRTC for the device (nothing GPU-related is needed at build time);
//! - [`GpuMlp`]: an MLP's weights on the device, evaluated for a batch with one cuBLAS
//!   GEMM per layer (f32 GEMMs in f32, no TF32) and a bias + activation kernel;
//! - [`GpuOtFlow`]: an OT-Flow potential's Φ, ∇Φ, ∂ₜΦ and exact Laplacian for a batch
//!   (the CPU block path's sweeps, each layer one GEMM over the batch);
//! - [`GpuField`]: the fields samplers integrate: an MLP as a velocity, the VP-SDE's
//!   reverse drift or probability-flow field over a score network, a potential's
//!   −∇ₓΦ;
//! - [`GpuSampler`]: the CPU [`Sampler`](crate::sampler::Sampler)'s options and
//!   results on the GPU: prior draws, fixed-step ODE solves (Euler, Heun, RK4, Dopri5's
//!   fifth-order solution), adaptive Dopri5 (every row its own step and PI controller,
//!   as on the CPU) and SDE solves (Euler–Maruyama, stochastic Heun) with an additive
//!   diffusion (constant, or σ(t) such as the VP-SDE's √β(t)).
//!
//! # Agreement with the CPU
//!
//! Prior draws and Brownian increments come from the same counter-based generator as on
//! the CPU ([`brownian`](crate::brownian)), keyed by the same (seed, stream, global
//! sample index, step): the device computes the f64 normals bit for bit as the CPU
//! does (Philox4x32-10 and the exact Box–Muller, compiled without FMA contraction),
//! rounds them to `T` and scales them as the CPU does. The integrators combine stages in
//! the CPU's order and rounding; the activations are the CPU's polynomials with its
//! fused multiply-adds; adaptive steps run the CPU's controller (the device's `pow`).
//! What differs is the GEMMs' summation order (cuBLAS against the CPU's `gemm`), so a
//! seed gives the same samples on both to rounding: about 1e-6 relative in f32 after a
//! few dozen steps of a well-conditioned field (adaptive steps: to the tolerance where
//! rounding flips a step's acceptance).
//!
//! # Without a GPU
//!
//! Built without the `cuda` feature, this module keeps its API and every constructor
//! returns [`Error::Unsupported`](crate::Error::Unsupported); built with it on a
//! machine without a driver, [`Gpu::new`] returns [`Error::Device`](crate::Error::Device)
//! saying so (it never panics). The libraries are found as the `libs` module says:
//! the loader's path, `SOCFLOW_CUDA_LIB_DIR`, the NVIDIA wheels of a Python
//! environment (`nvidia/cu13/lib`, `nvidia/cuda_nvrtc/lib`, …), a CUDA toolkit.
//!
//! # Not yet on the GPU
//!
//! Log-densities (the exact divergence), trajectories and state-dependent diffusions:
//! a [`GpuSampler`] asked for them returns
//! [`Error::Unsupported`](crate::Error::Unsupported); use the CPU sampler. Adaptive
//! steps evaluate every row of a pass until its slowest row finishes (the CPU drops
//! finished rows); the results and work counters are the CPU's.

#[cfg(feature = "cuda")]
mod blas;
#[cfg(feature = "cuda")]
mod device;
#[cfg(feature = "cuda")]
mod field;
#[cfg(feature = "cuda")]
mod kernels;
#[cfg(feature = "cuda")]
mod libs;
#[cfg(feature = "cuda")]
mod mlp;
#[cfg(feature = "cuda")]
mod otflow;
#[cfg(feature = "cuda")]
mod sampler;

#[cfg(feature = "cuda")]
pub use device::{find_nvrtc, Gpu};
#[cfg(feature = "cuda")]
pub use field::GpuField;
#[cfg(feature = "cuda")]
pub use kernels::{compile_ptx, source as kernel_source, KERNELS};
#[cfg(feature = "cuda")]
pub use mlp::GpuMlp;
#[cfg(feature = "cuda")]
pub use otflow::GpuOtFlow;
#[cfg(feature = "cuda")]
pub use sampler::{GpuSampler, DEFAULT_MAX_ROWS};

#[cfg(not(feature = "cuda"))]
mod stub;
#[cfg(not(feature = "cuda"))]
pub use stub::*;

use crate::Real;

/// Whether this build has the GPU backend (the `cuda` feature).
pub const ENABLED: bool = cfg!(feature = "cuda");

/// The precisions the GPU backend computes in: f32 and f64.
pub trait GpuReal: Real + sealed::Sealed {}

impl GpuReal for f32 {}
impl GpuReal for f64 {}

pub(crate) mod sealed {
    //! What the backend needs of a precision, out of users' reach.

    /// The per-precision pieces of the backend.
    #[cfg(feature = "cuda")]
    pub trait Sealed:
        cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits + Copy + Send + Sync
    {
        /// The suffix of the kernels compiled for this precision.
        const SUFFIX: &'static str;

        /// C (col-major) = op(A)·op(B) through cuBLAS (`cublasSgemm` / `cublasDgemm`).
        ///
        /// # Safety
        ///
        /// The configuration's sizes and leading dimensions must fit the buffers.
        unsafe fn gemm(
            blas: &cudarc::cublas::CudaBlas,
            cfg: cudarc::cublas::GemmConfig<Self>,
            a: &cudarc::driver::CudaView<'_, Self>,
            b: &cudarc::driver::CudaView<'_, Self>,
            c: &mut cudarc::driver::CudaViewMut<'_, Self>,
        ) -> Result<(), cudarc::cublas::result::CublasError>;
    }

    /// The per-precision pieces of the backend (none without it).
    #[cfg(not(feature = "cuda"))]
    pub trait Sealed {}

    #[cfg(not(feature = "cuda"))]
    impl Sealed for f32 {}
    #[cfg(not(feature = "cuda"))]
    impl Sealed for f64 {}

    #[cfg(feature = "cuda")]
    macro_rules! sealed {
        ($t:ty, $s:literal) => {
            impl Sealed for $t {
                const SUFFIX: &'static str = $s;
                unsafe fn gemm(
                    blas: &cudarc::cublas::CudaBlas,
                    cfg: cudarc::cublas::GemmConfig<Self>,
                    a: &cudarc::driver::CudaView<'_, Self>,
                    b: &cudarc::driver::CudaView<'_, Self>,
                    c: &mut cudarc::driver::CudaViewMut<'_, Self>,
                ) -> Result<(), cudarc::cublas::result::CublasError> {
                    // SAFETY: the caller guarantees the sizes fit the buffers.
                    unsafe {
                        <cudarc::cublas::CudaBlas as cudarc::cublas::Gemm<$t>>::gemm(
                            blas, cfg, a, b, c,
                        )
                    }
                }
            }
        };
    }
    #[cfg(feature = "cuda")]
    sealed!(f32, "f32");
    #[cfg(feature = "cuda")]
    sealed!(f64, "f64");
}
