//! Row-major GEMMs through cuBLAS (column-major): a row-major matrix read column-major
//! is its transpose, so C = X·Wᵀ is, column-major, Cᵀ = W·Xᵀ, and C = X·B is Cᵀ = Bᵀ·Xᵀ,
//! with no copy or transpose of any operand.

use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublas::GemmConfig;
use cudarc::driver::{CudaView, CudaViewMut};

use super::device::{dev, Gpu};
use super::GpuReal;
use crate::error::{Error, Result};

/// A row-major operand: a view and its row stride (leading dimension).
pub(crate) struct Mat<'a, 'b, T> {
    pub(crate) data: &'a CudaView<'b, T>,
    pub(crate) ld: usize,
}

fn int(n: usize) -> Result<i32> {
    i32::try_from(n).map_err(|_| Error::Limit(format!("{n} exceeds cuBLAS's 32-bit sizes")))
}

/// Checks that a row-major `rows × cols` matrix with row stride `ld` fits `len`.
fn fits(what: &str, len: usize, rows: usize, cols: usize, ld: usize) -> Result<()> {
    let need = if rows == 0 { 0 } else { (rows - 1) * ld + cols };
    if ld < cols || len < need {
        return Err(Error::Device(format!(
            "GEMM operand {what}: {rows} × {cols} with stride {ld} does not fit {len} values \
             (internal error)"
        )));
    }
    Ok(())
}

/// C (rows × out, row stride ldc) = X (rows × inner) · Wᵀ, W out × inner (row-major),
/// plus β·C.
#[allow(clippy::too_many_arguments)] // a GEMM's shape and operands
pub(crate) fn xwt<T: GpuReal>(
    gpu: &Gpu,
    rows: usize,
    out: usize,
    inner: usize,
    x: Mat<'_, '_, T>,
    w: Mat<'_, '_, T>,
    c: &mut CudaViewMut<'_, T>,
    ldc: usize,
    beta: T,
) -> Result<()> {
    fits("X", x.data.len(), rows, inner, x.ld)?;
    fits("W", w.data.len(), out, inner, w.ld)?;
    fits("C", c.len(), rows, out, ldc)?;
    let cfg = GemmConfig {
        transa: cublasOperation_t::CUBLAS_OP_T,
        transb: cublasOperation_t::CUBLAS_OP_N,
        m: int(out)?,
        n: int(rows)?,
        k: int(inner)?,
        alpha: T::one(),
        lda: int(w.ld)?,
        ldb: int(x.ld)?,
        beta,
        ldc: int(ldc)?,
    };
    // SAFETY: the three operands were checked to hold their matrices above.
    unsafe { T::gemm(&gpu.blas, cfg, w.data, x.data, c) }.map_err(dev("cuBLAS GEMM"))
}

/// C (rows × out, row stride ldc) = X (rows × inner) · B, B inner × out (row-major),
/// plus β·C.
#[allow(clippy::too_many_arguments)] // a GEMM's shape and operands
pub(crate) fn xb<T: GpuReal>(
    gpu: &Gpu,
    rows: usize,
    out: usize,
    inner: usize,
    x: Mat<'_, '_, T>,
    b: Mat<'_, '_, T>,
    c: &mut CudaViewMut<'_, T>,
    ldc: usize,
    beta: T,
) -> Result<()> {
    fits("X", x.data.len(), rows, inner, x.ld)?;
    fits("B", b.data.len(), inner, out, b.ld)?;
    fits("C", c.len(), rows, out, ldc)?;
    let cfg = GemmConfig {
        transa: cublasOperation_t::CUBLAS_OP_N,
        transb: cublasOperation_t::CUBLAS_OP_N,
        m: int(out)?,
        n: int(rows)?,
        k: int(inner)?,
        alpha: T::one(),
        lda: int(b.ld)?,
        ldb: int(x.ld)?,
        beta,
        ldc: int(ldc)?,
    };
    // SAFETY: the three operands were checked to hold their matrices above.
    unsafe { T::gemm(&gpu.blas, cfg, b.data, x.data, c) }.map_err(dev("cuBLAS GEMM"))
}
