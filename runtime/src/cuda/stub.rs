//! The GPU backend's API in a build without the `cuda` feature: the same types and
//! functions, every constructor returning [`Error::Unsupported`], so that callers (the
//! CLI, the trainer) compile either way.

use std::marker::PhantomData;
use std::sync::Arc;

use super::GpuReal;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::nn::mlp::Mlp;
use crate::nn::otflow::OtFlow;
use crate::ode::SolveStats;
use crate::sampler::{SamplerOptions, Samples};
use crate::vpsde::{VpDynamics, VpSde};

fn unsupported<R>() -> Result<R> {
    Err(Error::Unsupported(
        "socflow was built without the `cuda` feature".into(),
    ))
}

/// The kernel templates (none in a build without the `cuda` feature).
pub const KERNELS: &[&str] = &[];

/// Rows per device pass by default.
pub const DEFAULT_MAX_ROWS: usize = 1 << 16;

/// The kernels' CUDA C source: empty in this build.
pub fn kernel_source() -> String {
    String::new()
}

/// Compiles the kernels with NVRTC: [`Error::Unsupported`] in this build.
pub fn compile_ptx(arch: &str) -> Result<String> {
    let _ = arch;
    unsupported()
}

/// An NVIDIA GPU (unavailable: built without the `cuda` feature).
#[derive(Debug)]
pub struct Gpu {
    _private: (),
}

impl Gpu {
    /// [`Error::Unsupported`]: built without the `cuda` feature.
    pub fn new(ordinal: usize) -> Result<Arc<Gpu>> {
        let _ = ordinal;
        unsupported()
    }

    /// The number of CUDA devices: 0 in this build.
    pub fn device_count() -> Result<usize> {
        Ok(0)
    }

    /// The device ordinal.
    pub fn ordinal(&self) -> usize {
        0
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        ""
    }

    /// The compute capability.
    pub fn compute_capability(&self) -> (u32, u32) {
        (0, 0)
    }

    /// Where the CUDA libraries were loaded from.
    pub fn libraries(&self) -> String {
        String::new()
    }

    /// Waits for the device.
    pub fn synchronize(&self) -> Result<()> {
        unsupported()
    }
}

/// An MLP on a GPU (unavailable: built without the `cuda` feature).
pub struct GpuMlp<T: GpuReal> {
    _t: PhantomData<T>,
}

impl<T: GpuReal> GpuMlp<T> {
    /// [`Error::Unsupported`]: built without the `cuda` feature.
    pub fn new(gpu: &Arc<Gpu>, mlp: &Mlp<T>) -> Result<Self> {
        let _ = (gpu, mlp);
        unsupported()
    }

    /// State dimension.
    pub fn dim(&self) -> usize {
        0
    }

    /// Evaluates a block of rows.
    pub fn eval_block(&self, t: &[T], x: &[T], v: &mut [T]) -> Result<()> {
        let _ = (t, x, v);
        unsupported()
    }
}

/// An OT-Flow potential on a GPU (unavailable: built without the `cuda` feature).
pub struct GpuOtFlow<T: GpuReal> {
    _t: PhantomData<T>,
}

impl<T: GpuReal> GpuOtFlow<T> {
    /// [`Error::Unsupported`]: built without the `cuda` feature.
    pub fn new(gpu: &Arc<Gpu>, net: &OtFlow<T>) -> Result<Self> {
        let _ = (gpu, net);
        unsupported()
    }

    /// State dimension.
    pub fn dim(&self) -> usize {
        0
    }

    /// Block evaluation of Φ, ∇ₓΦ, ∂ₜΦ and the Laplacian.
    pub fn grad_block(
        &self,
        t: &[T],
        x: &[T],
        grad: &mut [T],
        phi: &mut [T],
        dt_phi: &mut [T],
        lap: Option<&mut [T]>,
    ) -> Result<()> {
        let _ = (t, x, grad, phi, dt_phi, lap);
        unsupported()
    }
}

/// A field on a GPU (unavailable: built without the `cuda` feature).
pub struct GpuField<T: GpuReal> {
    _t: PhantomData<T>,
}

impl<T: GpuReal> GpuField<T> {
    /// [`Error::Unsupported`]: built without the `cuda` feature.
    pub fn velocity(net: Arc<GpuMlp<T>>) -> Result<Self> {
        let _ = net;
        unsupported()
    }

    /// [`Error::Unsupported`]: built without the `cuda` feature.
    pub fn vpsde(net: Arc<GpuMlp<T>>, sde: VpSde, dynamics: VpDynamics) -> Result<Self> {
        let _ = (net, sde, dynamics);
        unsupported()
    }

    /// [`Error::Unsupported`]: built without the `cuda` feature.
    pub fn potential(net: Arc<GpuOtFlow<T>>) -> Result<Self> {
        let _ = net;
        unsupported()
    }

    /// State dimension.
    pub fn dim(&self) -> usize {
        0
    }

    /// Evaluates a block of rows.
    pub fn eval_block(&self, t: &[T], x: &[T], v: &mut [T]) -> Result<()> {
        let _ = (t, x, v);
        unsupported()
    }
}

/// A sampler on a GPU (unavailable: built without the `cuda` feature).
pub struct GpuSampler<T: GpuReal> {
    _t: PhantomData<T>,
}

impl<T: GpuReal> GpuSampler<T> {
    /// [`Error::Unsupported`]: built without the `cuda` feature.
    pub fn new(field: GpuField<T>, t_prior: T, t_end: T, opts: SamplerOptions<T>) -> Result<Self> {
        let _ = (field, t_prior, t_end, opts);
        unsupported()
    }

    /// [`Error::Unsupported`]: built without the `cuda` feature.
    pub fn for_model(gpu: &Arc<Gpu>, model: &Model<T>, opts: SamplerOptions<T>) -> Result<Self> {
        let _ = (gpu, model, opts);
        unsupported()
    }

    /// Sets the rows per device pass.
    pub fn with_max_rows(self, rows: usize) -> Self {
        let _ = rows;
        self
    }

    /// State dimension.
    pub fn dim(&self) -> usize {
        0
    }

    /// Draws samples.
    pub fn sample(&self, n: usize, first_sample: u64) -> Result<Samples<T>> {
        let _ = (n, first_sample);
        unsupported()
    }

    /// Fills a caller's buffer with samples.
    pub fn sample_into(&self, first_sample: u64, x: &mut [T]) -> Result<SolveStats> {
        let _ = (first_sample, x);
        unsupported()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_constructor_says_the_feature_is_off() {
        let err = Gpu::new(0).unwrap_err();
        assert!(matches!(err, Error::Unsupported(_)), "{err:?}");
        assert!(err.to_string().contains("without the `cuda` feature"));
        assert_eq!(Gpu::device_count().unwrap(), 0);
        assert!(matches!(
            compile_ptx("compute_90"),
            Err(Error::Unsupported(_))
        ));
        const { assert!(!super::super::ENABLED) };
    }
}
