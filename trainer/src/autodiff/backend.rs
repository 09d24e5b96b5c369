//! The backend interface: buffers and the kernels every op and every VJP is made of.
//!
//! A backend owns memory (its [`Backend::Buffer`]) and runs kernels on it. Nothing in
//! this interface names a host type: a buffer carries its [`DType`] and its element
//! count, shapes are passed alongside, scalars cross as f64 (rounded by the kernel to
//! its compute type), and host data crosses only through [`Backend::upload`] and
//! [`Backend::download`]. The graph ([`Graph`](super::Graph)) validates shapes and
//! dtypes before it calls a kernel; kernels still check what they rely on (buffer
//! lengths, equal dtypes) and return an [`Error`](super::Error), so a backend is safe to
//! call directly.
//!
//! Precision contract (the one a GPU backend implements natively): a kernel reads its
//! inputs exactly, computes in f64 for [`DType::F64`] and in f32 for every other dtype,
//! and rounds its output to the output dtype once (to nearest, ties to even).
//! Reductions and GEMMs accumulate in the compute type.

use std::fmt::Debug;

use super::error::Result;
use super::tensor::{DType, Shape};

/// What the graph needs to know about a backend buffer.
pub trait Storage: Debug + Send + Sync {
    /// The precision of the elements.
    fn dtype(&self) -> DType;
    /// Number of elements.
    fn len(&self) -> usize;
    /// Whether the buffer holds no element.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Elementwise maps y = f(x). The derivative maps needed by closed-form gradients and
/// Laplacians (OT-Flow's σ' = tanh and σ'' = sech², an MLP's silu' and silu'') are maps
/// of their own, so that they can be recorded on a tape and differentiated once more.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    /// −x.
    Neg,
    /// x².
    Square,
    /// |x| (its VJP uses the subgradient sign(x), 0 at 0).
    Abs,
    /// sign(x) ∈ {−1, 0, 1} (derivative 0 almost everywhere).
    Sign,
    /// 1/x.
    Recip,
    /// eˣ.
    Exp,
    /// ln x.
    Log,
    /// √x.
    Sqrt,
    /// tanh x (= σ' for σ = log cosh).
    Tanh,
    /// sech² x = 1 − tanh² x, computed without cancellation as 4e^{−2|x|}/(1+e^{−2|x|})²
    /// (= tanh' = σ'' for σ = log cosh).
    Sech2,
    /// 1/(1 + e^{−x}), computed without overflow (= softplus').
    Sigmoid,
    /// x·sigmoid(x).
    Silu,
    /// silu'(x) = s(1 + x(1 − s)), s = sigmoid(x).
    SiluPrime,
    /// silu''(x) = s(1 − s)(2 + x(1 − 2s)).
    SiluSecond,
    /// ln(1 + eˣ), computed stably as max(x, 0) + ln(1 + e^{−|x|}).
    Softplus,
    /// σ(x) = log(2 cosh x), computed stably as |x| + ln(1 + e^{−2|x|}).
    LogCosh,
    /// sin x.
    Sin,
    /// cos x.
    Cos,
}

impl UnaryOp {
    /// Every map.
    pub const ALL: [UnaryOp; 18] = [
        UnaryOp::Neg,
        UnaryOp::Square,
        UnaryOp::Abs,
        UnaryOp::Sign,
        UnaryOp::Recip,
        UnaryOp::Exp,
        UnaryOp::Log,
        UnaryOp::Sqrt,
        UnaryOp::Tanh,
        UnaryOp::Sech2,
        UnaryOp::Sigmoid,
        UnaryOp::Silu,
        UnaryOp::SiluPrime,
        UnaryOp::SiluSecond,
        UnaryOp::Softplus,
        UnaryOp::LogCosh,
        UnaryOp::Sin,
        UnaryOp::Cos,
    ];

    /// Name, as in messages and kernel names ("logcosh", "sech2", …).
    pub fn name(self) -> &'static str {
        match self {
            UnaryOp::Neg => "neg",
            UnaryOp::Square => "square",
            UnaryOp::Abs => "abs",
            UnaryOp::Sign => "sign",
            UnaryOp::Recip => "recip",
            UnaryOp::Exp => "exp",
            UnaryOp::Log => "log",
            UnaryOp::Sqrt => "sqrt",
            UnaryOp::Tanh => "tanh",
            UnaryOp::Sech2 => "sech2",
            UnaryOp::Sigmoid => "sigmoid",
            UnaryOp::Silu => "silu",
            UnaryOp::SiluPrime => "silu_prime",
            UnaryOp::SiluSecond => "silu_second",
            UnaryOp::Softplus => "softplus",
            UnaryOp::LogCosh => "logcosh",
            UnaryOp::Sin => "sin",
            UnaryOp::Cos => "cos",
        }
    }

    /// The map whose value the VJP of `self` multiplies the incoming gradient by,
    /// where that is one of the maps: log cosh → tanh, tanh → sech², softplus →
    /// sigmoid, silu → silu', silu' → silu'', sin → cos.
    /// [`Graph::unary_many`](crate::autodiff::Graph::unary_many) links such pairs
    /// computed together, so that the VJP reuses the value instead of recomputing it.
    pub fn derivative(self) -> Option<UnaryOp> {
        match self {
            UnaryOp::LogCosh => Some(UnaryOp::Tanh),
            UnaryOp::Tanh => Some(UnaryOp::Sech2),
            UnaryOp::Softplus => Some(UnaryOp::Sigmoid),
            UnaryOp::Silu => Some(UnaryOp::SiluPrime),
            UnaryOp::SiluPrime => Some(UnaryOp::SiluSecond),
            UnaryOp::Sin => Some(UnaryOp::Cos),
            _ => None,
        }
    }
}

/// Elementwise binary maps c = a ∘ b, the right operand possibly broadcast.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    /// a + b.
    Add,
    /// a − b.
    Sub,
    /// a · b.
    Mul,
    /// a / b.
    Div,
}

impl BinaryOp {
    /// Name ("add", "sub", "mul", "div").
    pub fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
        }
    }
}

/// How the right operand of a binary op (shape `rhs`) covers the left one (`r × n`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Broadcast {
    /// Same shape.
    None,
    /// A 1 × n row vector, added to (multiplied into, …) every row.
    Row,
    /// An r × 1 column vector, one value per row.
    Col,
    /// A 1 × 1 scalar.
    Scalar,
}

impl Broadcast {
    /// The broadcast that makes `rhs` cover `lhs`, tried in the order same shape, row,
    /// column, scalar; `None` when it does not fit.
    pub fn infer(lhs: Shape, rhs: Shape) -> Option<Broadcast> {
        if lhs == rhs {
            Some(Broadcast::None)
        } else if rhs.rows == 1 && rhs.cols == lhs.cols {
            Some(Broadcast::Row)
        } else if rhs.cols == 1 && rhs.rows == lhs.rows {
            Some(Broadcast::Col)
        } else if rhs == Shape::SCALAR {
            Some(Broadcast::Scalar)
        } else {
            None
        }
    }
}

/// A sum (times a constant) along one or both axes of an `r × n` tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reduction {
    /// Over the columns of each row: → r × 1.
    Cols,
    /// Over the rows of each column: → 1 × n.
    Rows,
    /// Over everything: → 1 × 1.
    All,
}

impl Reduction {
    /// The shape a reduction of `x` has.
    pub fn out_shape(self, x: Shape) -> Shape {
        match self {
            Reduction::Cols => Shape::new(x.rows, 1),
            Reduction::Rows => Shape::new(1, x.cols),
            Reduction::All => Shape::SCALAR,
        }
    }

    /// The reduction that undoes a [`Broadcast`] of a right operand (`None` for none).
    pub fn of_broadcast(b: Broadcast) -> Option<Reduction> {
        match b {
            Broadcast::None => None,
            Broadcast::Row => Some(Reduction::Rows),
            Broadcast::Col => Some(Reduction::Cols),
            Broadcast::Scalar => Some(Reduction::All),
        }
    }
}

/// A compute backend: memory and kernels. Every op of the [`Graph`](super::Graph),
/// forward and VJP, is a composition of these methods.
///
/// Every method takes shapes explicitly (buffers know only their dtype and length) and
/// returns a fresh buffer unless it says otherwise. Mixed-dtype inputs are an error
/// except in [`cast`](Backend::cast) and [`axpy`](Backend::axpy). See the [module documentation](self) for the
/// precision contract.
pub trait Backend: Debug + Send + Sync + 'static {
    /// Device memory holding one tensor's elements.
    type Buffer: Storage;

    /// Short name ("cpu", "cuda").
    fn name(&self) -> &'static str;

    /// A buffer of `dtype` from host values, each rounded to nearest (ties to even)
    /// once.
    fn upload(&self, data: &[f64], dtype: DType) -> Result<Self::Buffer>;

    /// The values, widened exactly to f64.
    fn download(&self, x: &Self::Buffer) -> Result<Vec<f64>>;

    /// A buffer of `len` copies of `value` (rounded once to `dtype`).
    fn full(&self, len: usize, value: f64, dtype: DType) -> Result<Self::Buffer>;

    /// A copy.
    fn copy(&self, x: &Self::Buffer) -> Result<Self::Buffer>;

    /// A copy converted to `dtype` (rounded once, to nearest, ties to even).
    fn cast(&self, x: &Self::Buffer, dtype: DType) -> Result<Self::Buffer>;

    /// `C = op(A)·op(B)`, op(X) = Xᵀ when the flag is set; `a` is `a_shape` as stored
    /// (before the transpose), likewise `b`. Accumulates in the compute type; half
    /// inputs are read exactly, the f32 result rounded once (cuBLAS `gemm_ex` with f16
    /// or bf16 inputs and f32 compute).
    #[allow(clippy::too_many_arguments)]
    fn matmul(
        &self,
        a: &Self::Buffer,
        a_shape: Shape,
        ta: bool,
        b: &Self::Buffer,
        b_shape: Shape,
        tb: bool,
    ) -> Result<Self::Buffer>;

    /// `y = op(x)` elementwise.
    fn unary(&self, op: UnaryOp, x: &Self::Buffer) -> Result<Self::Buffer>;

    /// `ys[j] = ops[j](x)`: several maps of one input, each result exactly what
    /// [`unary`](Backend::unary) returns. A backend may compute them in one pass
    /// sharing their common work (log cosh, tanh and sech² all come from e^{−2|x|});
    /// the default calls [`unary`](Backend::unary) once per map.
    fn unary_many(&self, ops: &[UnaryOp], x: &Self::Buffer) -> Result<Vec<Self::Buffer>> {
        ops.iter().map(|&op| self.unary(op, x)).collect()
    }

    /// `y = α·x + β` elementwise (α, β rounded to the compute type).
    fn affine(&self, x: &Self::Buffer, alpha: f64, beta: f64) -> Result<Self::Buffer>;

    /// `c = a ∘ b` with `a` of shape `a_shape` and `b` covering it as `broadcast` says.
    fn binary(
        &self,
        op: BinaryOp,
        a: &Self::Buffer,
        a_shape: Shape,
        b: &Self::Buffer,
        broadcast: Broadcast,
    ) -> Result<Self::Buffer>;

    /// The gradient of x through several maps of it computed together by
    /// [`unary_many`](Backend::unary_many): Σ_j gs\[j\] ⊙ ops\[j\]'(x), given the maps'
    /// values `ys` and their incoming gradients `gs` (`None` for a map nothing depends
    /// on), all of x's precision, computed in the compute type and rounded once.
    /// `Ok(None)` when the backend has no fused kernel for this set of maps (the
    /// default): the graph then pulls each map's gradient through its own VJP.
    fn unary_many_vjp(
        &self,
        ops: &[UnaryOp],
        x: &Self::Buffer,
        ys: &[&Self::Buffer],
        gs: &[Option<&Self::Buffer>],
    ) -> Result<Option<Self::Buffer>> {
        let _ = (ops, x, ys, gs);
        Ok(None)
    }

    /// `dst ← dst + src` in place (same dtype and length): gradient accumulation.
    fn add_assign(&self, dst: &mut Self::Buffer, src: &Self::Buffer) -> Result<()>;

    /// `c = a + α·b` with `b` covering `a` (shape `a_shape`) as `broadcast` says: the
    /// product is formed and rounded in the compute type, then added (as
    /// [`affine`](Backend::affine) then [`binary`](Backend::binary) would in f32 and
    /// f64, in one pass; a 16-bit result is rounded once).
    fn add_scaled(
        &self,
        a: &Self::Buffer,
        a_shape: Shape,
        b: &Self::Buffer,
        broadcast: Broadcast,
        alpha: f64,
    ) -> Result<Self::Buffer>;

    /// `d = a + α·(b ⊙ c)` with `a` and `b` of shape `shape` and `c` covering them as
    /// `broadcast` says, computed as a + (α·(b·c)) in the compute type and rounded once.
    #[allow(clippy::too_many_arguments)]
    fn mul_add(
        &self,
        a: &Self::Buffer,
        b: &Self::Buffer,
        shape: Shape,
        c: &Self::Buffer,
        broadcast: Broadcast,
        alpha: f64,
    ) -> Result<Self::Buffer>;

    /// `dst ← dst + α·src` in place: gradient accumulation without a scaled copy.
    /// `src` may be of another precision than `dst` (the one exception to equal
    /// dtypes besides [`cast`](Backend::cast)): it is read exactly and the update is
    /// computed in `dst`'s compute type, so a 16-bit contribution is summed at f32
    /// without a cast pass.
    fn axpy(&self, dst: &mut Self::Buffer, alpha: f64, src: &Self::Buffer) -> Result<()>;

    /// `dst ← dst + β·op(A)·op(B)` in place (`dst` of the product's shape, all three of
    /// one dtype); as [`matmul`](Backend::matmul) otherwise (cuBLAS: `alpha` = β on the
    /// product, `beta` = 1 on `dst`). A 16-bit `dst` is read exactly, updated in f32
    /// and rounded once.
    #[allow(clippy::too_many_arguments)]
    fn matmul_acc(
        &self,
        dst: &mut Self::Buffer,
        a: &Self::Buffer,
        a_shape: Shape,
        ta: bool,
        b: &Self::Buffer,
        b_shape: Shape,
        tb: bool,
        beta: f64,
    ) -> Result<()>;

    /// `alpha · Σ` of `x` (shape `shape`) along `axis`, accumulated in the compute type
    /// and rounded once.
    fn reduce(
        &self,
        x: &Self::Buffer,
        shape: Shape,
        axis: Reduction,
        alpha: f64,
    ) -> Result<Self::Buffer>;

    /// `alpha · x` broadcast from `from` (1 × n, r × 1 or 1 × 1) to `to`: the VJP of a
    /// reduction.
    fn broadcast(
        &self,
        x: &Self::Buffer,
        from: Shape,
        to: Shape,
        alpha: f64,
    ) -> Result<Self::Buffer>;

    /// Columns `[c0, c1)` of `x`.
    fn slice_cols(
        &self,
        x: &Self::Buffer,
        shape: Shape,
        c0: usize,
        c1: usize,
    ) -> Result<Self::Buffer>;

    /// `x` (shape `shape`) placed at columns `[c0, c0 + shape.cols)` of a zero
    /// `shape.rows × total_cols` buffer: the VJP of [`slice_cols`](Backend::slice_cols).
    fn embed_cols(
        &self,
        x: &Self::Buffer,
        shape: Shape,
        c0: usize,
        total_cols: usize,
    ) -> Result<Self::Buffer>;

    /// The parts side by side (equal row counts, equal dtypes).
    fn concat_cols(&self, parts: &[(&Self::Buffer, Shape)]) -> Result<Self::Buffer>;

    /// `B × n → (B·k) × n`, each row repeated `k` times consecutively.
    fn repeat_rows(&self, x: &Self::Buffer, shape: Shape, k: usize) -> Result<Self::Buffer>;

    /// `(B·k) × n → B × n`, sums of consecutive groups of `k` rows.
    fn sum_row_groups(&self, x: &Self::Buffer, shape: Shape, k: usize) -> Result<Self::Buffer>;

    /// `k × n → (times·k) × n`, the whole matrix repeated `times` times.
    fn tile_rows(&self, x: &Self::Buffer, shape: Shape, times: usize) -> Result<Self::Buffer>;

    /// `(times·k) × n → k × n`, the sum of the `times` tiles.
    fn sum_tiles(&self, x: &Self::Buffer, shape: Shape, times: usize) -> Result<Self::Buffer>;

    /// Largest absolute value (NaN if any element is NaN; 0 when empty): the adjoint
    /// scaling of MATH.md §8 reads it.
    fn max_abs(&self, x: &Self::Buffer) -> Result<f64>;

    /// Whether every element is finite.
    fn all_finite(&self, x: &Self::Buffer) -> Result<bool>;
}
