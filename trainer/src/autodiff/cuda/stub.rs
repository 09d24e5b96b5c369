//! The GPU backend's API in a build without the `cuda` feature: [`Cuda::new`] returns
//! [`Error::Unsupported`], so that code generic over the backend (a training loop
//! dispatching on a device setting) compiles either way.

use std::sync::Arc;

use socflow_runtime::cuda::Gpu;

use crate::autodiff::backend::{Backend, BinaryOp, Broadcast, Reduction, Storage, UnaryOp};
use crate::autodiff::error::{Error, Result};
use crate::autodiff::tensor::{DType, Shape};

fn unsupported<R>() -> Result<R> {
    Err(Error::Unsupported(
        "socflow-trainer was built without the `cuda` feature".into(),
    ))
}

/// The GPU backend (unavailable: built without the `cuda` feature; no value of this
/// type can be created).
#[derive(Clone, Debug)]
pub struct Cuda {
    never: Never,
}

/// No value: a [`Cuda`] cannot exist in this build.
#[derive(Clone, Copy, Debug)]
enum Never {}

/// A device buffer (none exists in this build).
#[derive(Debug)]
pub enum CudaBuffer {}

impl Storage for CudaBuffer {
    fn dtype(&self) -> DType {
        match *self {}
    }

    fn len(&self) -> usize {
        match *self {}
    }
}

impl Cuda {
    /// [`Error::Unsupported`]: built without the `cuda` feature.
    pub fn new(ordinal: usize) -> Result<Cuda> {
        let _ = ordinal;
        unsupported()
    }

    /// [`Error::Unsupported`]: built without the `cuda` feature.
    pub fn on(gpu: Arc<Gpu>) -> Result<Cuda> {
        let _ = gpu;
        unsupported()
    }

    /// Device memory held (never reached: no `Cuda` exists in this build).
    pub fn memory(&self) -> super::MemoryStats {
        match self.never {}
    }

    /// Starts a new peak (never reached: no `Cuda` exists in this build).
    pub fn reset_peak_memory(&self) {
        match self.never {}
    }

    /// The device (never reached: no `Cuda` exists in this build).
    pub fn gpu(&self) -> &Arc<Gpu> {
        match self.never {}
    }

    /// Waits for the device: [`Error::Unsupported`] in this build.
    pub fn synchronize(&self) -> Result<()> {
        match self.never {}
    }
}

impl Backend for Cuda {
    type Buffer = CudaBuffer;

    fn name(&self) -> &'static str {
        "cuda"
    }

    fn upload(&self, _: &[f64], _: DType) -> Result<CudaBuffer> {
        unsupported()
    }

    fn download(&self, x: &CudaBuffer) -> Result<Vec<f64>> {
        match *x {}
    }

    fn full(&self, _: usize, _: f64, _: DType) -> Result<CudaBuffer> {
        unsupported()
    }

    fn copy(&self, x: &CudaBuffer) -> Result<CudaBuffer> {
        match *x {}
    }

    fn cast(&self, x: &CudaBuffer, _: DType) -> Result<CudaBuffer> {
        match *x {}
    }

    fn matmul(
        &self,
        a: &CudaBuffer,
        _: Shape,
        _: bool,
        _: &CudaBuffer,
        _: Shape,
        _: bool,
    ) -> Result<CudaBuffer> {
        match *a {}
    }

    fn unary(&self, _: UnaryOp, x: &CudaBuffer) -> Result<CudaBuffer> {
        match *x {}
    }

    fn affine(&self, x: &CudaBuffer, _: f64, _: f64) -> Result<CudaBuffer> {
        match *x {}
    }

    fn binary(
        &self,
        _: BinaryOp,
        a: &CudaBuffer,
        _: Shape,
        _: &CudaBuffer,
        _: Broadcast,
    ) -> Result<CudaBuffer> {
        match *a {}
    }

    fn add_assign(&self, dst: &mut CudaBuffer, _: &CudaBuffer) -> Result<()> {
        match *dst {}
    }

    fn add_scaled(
        &self,
        a: &CudaBuffer,
        _: Shape,
        _: &CudaBuffer,
        _: Broadcast,
        _: f64,
    ) -> Result<CudaBuffer> {
        match *a {}
    }

    fn mul_add(
        &self,
        a: &CudaBuffer,
        _: &CudaBuffer,
        _: Shape,
        _: &CudaBuffer,
        _: Broadcast,
        _: f64,
    ) -> Result<CudaBuffer> {
        match *a {}
    }

    fn axpy(&self, dst: &mut CudaBuffer, _: f64, _: &CudaBuffer) -> Result<()> {
        match *dst {}
    }

    fn matmul_acc(
        &self,
        dst: &mut CudaBuffer,
        _: &CudaBuffer,
        _: Shape,
        _: bool,
        _: &CudaBuffer,
        _: Shape,
        _: bool,
        _: f64,
    ) -> Result<()> {
        match *dst {}
    }

    fn reduce(&self, x: &CudaBuffer, _: Shape, _: Reduction, _: f64) -> Result<CudaBuffer> {
        match *x {}
    }

    fn broadcast(&self, x: &CudaBuffer, _: Shape, _: Shape, _: f64) -> Result<CudaBuffer> {
        match *x {}
    }

    fn slice_cols(&self, x: &CudaBuffer, _: Shape, _: usize, _: usize) -> Result<CudaBuffer> {
        match *x {}
    }

    fn embed_cols(&self, x: &CudaBuffer, _: Shape, _: usize, _: usize) -> Result<CudaBuffer> {
        match *x {}
    }

    fn concat_cols(&self, parts: &[(&CudaBuffer, Shape)]) -> Result<CudaBuffer> {
        match parts.first() {
            Some((x, _)) => match **x {},
            None => unsupported(),
        }
    }

    fn repeat_rows(&self, x: &CudaBuffer, _: Shape, _: usize) -> Result<CudaBuffer> {
        match *x {}
    }

    fn sum_row_groups(&self, x: &CudaBuffer, _: Shape, _: usize) -> Result<CudaBuffer> {
        match *x {}
    }

    fn tile_rows(&self, x: &CudaBuffer, _: Shape, _: usize) -> Result<CudaBuffer> {
        match *x {}
    }

    fn sum_tiles(&self, x: &CudaBuffer, _: Shape, _: usize) -> Result<CudaBuffer> {
        match *x {}
    }

    fn max_abs(&self, x: &CudaBuffer) -> Result<f64> {
        match *x {}
    }

    fn all_finite(&self, x: &CudaBuffer) -> Result<bool> {
        match *x {}
    }
}
