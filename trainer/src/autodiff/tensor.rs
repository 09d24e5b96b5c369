//! Precisions, shapes and the backend-held 2-D tensor.

use std::fmt;

use super::backend::{Backend, Storage};
use super::error::{Error, Result};

/// The precision a tensor is stored in (and, through it, the precision its ops compute
/// in: see the [module documentation](super)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// IEEE binary64; ops compute in f64.
    F64,
    /// IEEE binary32; ops compute in f32.
    F32,
    /// bfloat16 (8-bit significand); ops compute in f32 and round their output once.
    Bf16,
    /// IEEE binary16 (11-bit significand); ops compute in f32 and round their output once.
    F16,
}

impl DType {
    /// Every precision, widest first.
    pub const ALL: [DType; 4] = [DType::F64, DType::F32, DType::Bf16, DType::F16];

    /// Bytes per element.
    pub fn size_of(self) -> usize {
        match self {
            DType::F64 => 8,
            DType::F32 => 4,
            DType::Bf16 | DType::F16 => 2,
        }
    }

    /// Name as written in messages and model cards ("f64", "f32", "bf16", "f16").
    pub fn name(self) -> &'static str {
        match self {
            DType::F64 => "f64",
            DType::F32 => "f32",
            DType::Bf16 => "bf16",
            DType::F16 => "f16",
        }
    }

    /// Unit roundoff u (half the distance from 1 to the next representable number):
    /// 2⁻⁵³, 2⁻²⁴, 2⁻⁸, 2⁻¹¹.
    pub fn unit_roundoff(self) -> f64 {
        match self {
            DType::F64 => f64::EPSILON / 2.0,
            DType::F32 => f64::from(f32::EPSILON) / 2.0,
            DType::Bf16 => 2f64.powi(-8),
            DType::F16 => 2f64.powi(-11),
        }
    }

    /// Largest finite value.
    pub fn max_finite(self) -> f64 {
        match self {
            DType::F64 => f64::MAX,
            DType::F32 => f64::from(f32::MAX),
            DType::Bf16 => half::bf16::MAX.to_f64(),
            DType::F16 => half::f16::MAX.to_f64(),
        }
    }

    /// Whether this is a 16-bit type (stored at 16 bits, computed in f32).
    pub fn is_half(self) -> bool {
        matches!(self, DType::Bf16 | DType::F16)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The shape of a 2-D tensor: `rows × cols`, row-major.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Shape {
    /// Number of rows (the batch, in batched tensors).
    pub rows: usize,
    /// Number of columns (the features).
    pub cols: usize,
}

impl Shape {
    /// `rows × cols`.
    pub const fn new(rows: usize, cols: usize) -> Self {
        Shape { rows, cols }
    }

    /// The 1 × 1 shape of a scalar.
    pub const SCALAR: Shape = Shape { rows: 1, cols: 1 };

    /// Number of elements, or `None` when it overflows `usize`.
    pub fn checked_len(self) -> Option<usize> {
        self.rows.checked_mul(self.cols)
    }

    /// Number of elements (`rows · cols`; shapes held by tensors never overflow).
    pub fn len(self) -> usize {
        self.rows.saturating_mul(self.cols)
    }

    /// Whether the shape holds no element.
    pub fn is_empty(self) -> bool {
        self.rows == 0 || self.cols == 0
    }

    /// The transposed shape.
    pub fn t(self) -> Shape {
        Shape::new(self.cols, self.rows)
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}×{}", self.rows, self.cols)
    }
}

/// A `rows × cols` row-major matrix of one [`DType`], held by a backend `B` (host memory
/// for [`Cpu`](super::Cpu), device memory for a GPU backend).
pub struct Tensor<B: Backend> {
    shape: Shape,
    buf: B::Buffer,
}

impl<B: Backend> Clone for Tensor<B>
where
    B::Buffer: Clone,
{
    fn clone(&self) -> Self {
        Tensor {
            shape: self.shape,
            buf: self.buf.clone(),
        }
    }
}

impl<B: Backend> fmt::Debug for Tensor<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tensor")
            .field("shape", &self.shape)
            .field("dtype", &self.dtype())
            .field("buf", &self.buf)
            .finish()
    }
}

impl<B: Backend> Tensor<B> {
    /// Wraps a backend buffer as a `rows × cols` tensor; the buffer must hold exactly
    /// `rows · cols` elements.
    pub fn from_buffer(rows: usize, cols: usize, buf: B::Buffer) -> Result<Self> {
        let shape = Shape::new(rows, cols);
        let len = shape
            .checked_len()
            .ok_or_else(|| Error::InvalidArgument(format!("tensor shape {shape} overflows")))?;
        if buf.len() != len {
            return Err(Error::Length {
                what: "tensor buffer",
                found: buf.len(),
                expected: len,
            });
        }
        Ok(Tensor { shape, buf })
    }

    /// A `rows × cols` tensor of `dtype` from row-major f64 values, each rounded to
    /// nearest (ties to even) once.
    pub fn from_f64(
        backend: &B,
        rows: usize,
        cols: usize,
        data: &[f64],
        dtype: DType,
    ) -> Result<Self> {
        let len = Shape::new(rows, cols).checked_len().ok_or_else(|| {
            Error::InvalidArgument(format!("tensor shape {rows}×{cols} overflows"))
        })?;
        if data.len() != len {
            return Err(Error::Length {
                what: "tensor data",
                found: data.len(),
                expected: len,
            });
        }
        Self::from_buffer(rows, cols, backend.upload(data, dtype)?)
    }

    /// A `rows × cols` tensor with every element equal to `value` (rounded to `dtype`).
    pub fn full(backend: &B, rows: usize, cols: usize, value: f64, dtype: DType) -> Result<Self> {
        let len = Shape::new(rows, cols).checked_len().ok_or_else(|| {
            Error::InvalidArgument(format!("tensor shape {rows}×{cols} overflows"))
        })?;
        Self::from_buffer(rows, cols, backend.full(len, value, dtype)?)
    }

    /// A `rows × cols` tensor of zeros.
    pub fn zeros(backend: &B, rows: usize, cols: usize, dtype: DType) -> Result<Self> {
        Self::full(backend, rows, cols, 0.0, dtype)
    }

    /// A 1 × 1 tensor.
    pub fn scalar(backend: &B, value: f64, dtype: DType) -> Result<Self> {
        Self::full(backend, 1, 1, value, dtype)
    }

    /// The values, row-major, converted to f64 (exactly: every dtype widens exactly).
    pub fn to_f64(&self, backend: &B) -> Result<Vec<f64>> {
        backend.download(&self.buf)
    }

    /// The shape.
    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.shape.rows
    }

    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.shape.cols
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.len()
    }

    /// Whether the tensor holds no element.
    pub fn is_empty(&self) -> bool {
        self.shape.is_empty()
    }

    /// The precision.
    pub fn dtype(&self) -> DType {
        self.buf.dtype()
    }

    /// Bytes of element storage held (`len · dtype.size_of()`; excludes the small
    /// fixed-size header).
    pub fn bytes(&self) -> usize {
        self.len() * self.dtype().size_of()
    }

    /// The backend buffer.
    pub fn buffer(&self) -> &B::Buffer {
        &self.buf
    }

    /// The backend buffer, mutably (in-place kernels such as gradient accumulation).
    pub(crate) fn buffer_mut(&mut self) -> &mut B::Buffer {
        &mut self.buf
    }

    /// The backend buffer, by value.
    pub fn into_buffer(self) -> B::Buffer {
        self.buf
    }

    /// A copy in another precision (the same tensor when `dtype` is its own).
    pub fn cast(&self, backend: &B, dtype: DType) -> Result<Self> {
        Ok(Tensor {
            shape: self.shape,
            buf: backend.cast(&self.buf, dtype)?,
        })
    }

    /// A copy with the same shape and precision.
    pub fn try_clone(&self, backend: &B) -> Result<Self> {
        Ok(Tensor {
            shape: self.shape,
            buf: backend.copy(&self.buf)?,
        })
    }

    /// Largest absolute value (NaN if any element is NaN; 0 for an empty tensor).
    pub fn max_abs(&self, backend: &B) -> Result<f64> {
        backend.max_abs(&self.buf)
    }

    /// Whether every element is finite.
    pub fn all_finite(&self, backend: &B) -> Result<bool> {
        backend.all_finite(&self.buf)
    }

    /// Internal constructor for results whose length the backend guarantees.
    pub(crate) fn from_parts(shape: Shape, buf: B::Buffer) -> Result<Self> {
        Self::from_buffer(shape.rows, shape.cols, buf)
    }
}
