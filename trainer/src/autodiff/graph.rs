//! The tape: values addressed by [`Var`] handles, ops recorded in creation order, and
//! reverse-mode [`backward`](Graph::backward).

use std::sync::atomic::{AtomicU32, Ordering};

use super::backend::{Backend, BinaryOp, Broadcast, Reduction, UnaryOp};
use super::error::{Error, Result};
use super::tensor::{DType, Shape, Tensor};

/// Source of graph identities: every graph, and every [`Graph::clear`], takes a fresh
/// one, so a handle from another graph or from before a clear is recognized.
static NEXT_GRAPH_ID: AtomicU32 = AtomicU32::new(1);

fn next_graph_id() -> u32 {
    NEXT_GRAPH_ID.fetch_add(1, Ordering::Relaxed)
}

/// A handle to a value on a [`Graph`]'s tape: a leaf or an op's result. Cheap to copy;
/// valid until the graph is [cleared](Graph::clear).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Var {
    graph: u32,
    index: usize,
}

impl Var {
    /// Position on the tape (creation order).
    pub fn index(self) -> usize {
        self.index
    }
}

/// A recorded op; inputs are tape positions.
#[derive(Clone, Copy, Debug)]
enum Op {
    Leaf,
    Matmul {
        a: usize,
        b: usize,
        ta: bool,
        tb: bool,
    },
    Unary {
        op: UnaryOp,
        x: usize,
    },
    Affine {
        x: usize,
        alpha: f64,
    },
    Binary {
        op: BinaryOp,
        a: usize,
        b: usize,
        bc: Broadcast,
    },
    Reduce {
        x: usize,
        alpha: f64,
    },
    SliceCols {
        x: usize,
        c0: usize,
    },
    /// Inputs are `concat_inputs[start..start + len]`.
    ConcatCols {
        start: usize,
        len: usize,
    },
    RepeatRows {
        x: usize,
        k: usize,
    },
    SumRowGroups {
        x: usize,
        k: usize,
    },
    TileRows {
        x: usize,
        times: usize,
    },
    SumTiles {
        x: usize,
        times: usize,
    },
    Cast {
        x: usize,
    },
}

struct Node<B: Backend> {
    value: Tensor<B>,
    op: Op,
    requires_grad: bool,
}

/// A tape of batched 2-D tensor ops on backend `B`, differentiable in reverse mode.
///
/// Build it with [`leaf`](Graph::leaf) and the op methods, each of which computes its
/// value at once (eagerly) and records itself; read values with
/// [`value`](Graph::value); differentiate a result with [`backward`](Graph::backward).
/// Every op validates its operands' shapes and precisions and returns a typed
/// [`Error`] on a mismatch, recording nothing.
///
/// A value requires a gradient when any of its inputs does; only those values take part
/// in the backward pass, so constants (data, a frozen trajectory) cost nothing there.
pub struct Graph<B: Backend> {
    backend: B,
    id: u32,
    nodes: Vec<Node<B>>,
    concat_inputs: Vec<usize>,
}

impl<B: Backend> std::fmt::Debug for Graph<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Graph")
            .field("backend", &self.backend)
            .field("nodes", &self.nodes.len())
            .field("bytes", &self.bytes())
            .finish()
    }
}

/// Gradients of one backward pass: one tensor per leaf created with
/// `requires_grad = true`, in that leaf's precision (or the accumulation precision
/// asked of [`Graph::backward_with`]). A leaf the output does not depend on gets zeros.
pub struct Gradients<B: Backend> {
    graph: u32,
    grads: Vec<Option<Tensor<B>>>,
}

impl<B: Backend> std::fmt::Debug for Gradients<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gradients")
            .field("leaves", &self.len())
            .finish()
    }
}

impl<B: Backend> Gradients<B> {
    fn slot(&self, var: Var) -> Option<usize> {
        (var.graph == self.graph && var.index < self.grads.len()).then_some(var.index)
    }

    /// The gradient of a leaf, `None` for a leaf without `requires_grad`, an op's
    /// result, or a handle from another graph.
    pub fn get(&self, var: Var) -> Option<&Tensor<B>> {
        self.slot(var).and_then(|i| self.grads[i].as_ref())
    }

    /// Moves a leaf's gradient out (then [`get`](Gradients::get) returns `None`).
    pub fn take(&mut self, var: Var) -> Option<Tensor<B>> {
        self.slot(var).and_then(|i| self.grads[i].take())
    }

    /// Number of gradients held.
    pub fn len(&self) -> usize {
        self.grads.iter().filter(|g| g.is_some()).count()
    }

    /// Whether no gradient is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The leaves and their gradients, in tape order.
    pub fn iter(&self) -> impl Iterator<Item = (Var, &Tensor<B>)> + '_ {
        let graph = self.graph;
        self.grads
            .iter()
            .enumerate()
            .filter_map(move |(index, g)| g.as_ref().map(|t| (Var { graph, index }, t)))
    }
}

impl<B: Backend> Graph<B> {
    /// An empty graph computing on `backend`.
    pub fn new(backend: B) -> Self {
        Graph {
            backend,
            id: next_graph_id(),
            nodes: Vec::new(),
            concat_inputs: Vec::new(),
        }
    }

    /// The backend (to create tensors, or to run kernels outside the tape).
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Number of values on the tape.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the tape is empty.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Bytes of tensor storage the tape holds (every leaf and every intermediate).
    pub fn bytes(&self) -> usize {
        self.nodes.iter().map(|n| n.value.bytes()).sum()
    }

    /// Empties the tape for reuse, keeping its allocations for the next build (a
    /// discretize-then-optimize backward pass rebuilds one step's tape per step).
    /// Every handle created before becomes invalid: using one is an
    /// [`Error::UnknownVar`].
    pub fn clear(&mut self) {
        self.nodes.clear();
        self.concat_inputs.clear();
        self.id = next_graph_id();
    }

    fn index(&self, var: Var) -> Result<usize> {
        if var.graph == self.id && var.index < self.nodes.len() {
            Ok(var.index)
        } else {
            Err(Error::UnknownVar(var))
        }
    }

    fn node(&self, var: Var) -> Result<&Node<B>> {
        Ok(&self.nodes[self.index(var)?])
    }

    fn push(&mut self, value: Tensor<B>, op: Op, requires_grad: bool) -> Var {
        let index = self.nodes.len();
        self.nodes.push(Node {
            value,
            op,
            requires_grad,
        });
        Var {
            graph: self.id,
            index,
        }
    }

    /// Records a leaf (a parameter, an input, a constant). With `requires_grad`,
    /// [`backward`](Graph::backward) returns its gradient.
    pub fn leaf(&mut self, value: Tensor<B>, requires_grad: bool) -> Var {
        self.push(value, Op::Leaf, requires_grad)
    }

    /// Records a leaf that needs no gradient.
    pub fn constant(&mut self, value: Tensor<B>) -> Var {
        self.leaf(value, false)
    }

    /// Records a leaf from row-major f64 values rounded to `dtype`.
    pub fn leaf_f64(
        &mut self,
        rows: usize,
        cols: usize,
        data: &[f64],
        dtype: DType,
        requires_grad: bool,
    ) -> Result<Var> {
        let t = Tensor::from_f64(&self.backend, rows, cols, data, dtype)?;
        Ok(self.leaf(t, requires_grad))
    }

    /// The value of `var`.
    pub fn value(&self, var: Var) -> Result<&Tensor<B>> {
        Ok(&self.node(var)?.value)
    }

    /// The value of `var`, row-major, widened to f64.
    pub fn to_f64(&self, var: Var) -> Result<Vec<f64>> {
        self.value(var)?.to_f64(&self.backend)
    }

    /// The shape of `var`.
    pub fn shape(&self, var: Var) -> Result<Shape> {
        Ok(self.node(var)?.value.shape())
    }

    /// The precision of `var`.
    pub fn dtype(&self, var: Var) -> Result<DType> {
        Ok(self.node(var)?.value.dtype())
    }

    /// Whether `var` depends on a leaf that requires a gradient.
    pub fn requires_grad(&self, var: Var) -> Result<bool> {
        Ok(self.node(var)?.requires_grad)
    }

    fn same_dtype(&self, op: &'static str, a: usize, b: usize) -> Result<()> {
        let (da, db) = (self.nodes[a].value.dtype(), self.nodes[b].value.dtype());
        if da == db {
            Ok(())
        } else {
            Err(Error::DType {
                op,
                lhs: da,
                rhs: db,
            })
        }
    }

    fn tensor(&self, shape: Shape, buf: B::Buffer) -> Result<Tensor<B>> {
        Tensor::from_parts(shape, buf)
    }

    // -----------------------------------------------------------------------------------
    // Ops
    // -----------------------------------------------------------------------------------

    /// `C = op(A)·op(B)`, op(X) = Xᵀ when `ta` (`tb`) is set. With the Jacobian layout
    /// Jᵀ ∈ R^{(B·d)×m}, `matmul(jt, k, false, true)` applies K to every sample's
    /// Jacobian in one GEMM.
    pub fn matmul(&mut self, a: Var, b: Var, ta: bool, tb: bool) -> Result<Var> {
        let (ia, ib) = (self.index(a)?, self.index(b)?);
        self.same_dtype("matmul", ia, ib)?;
        let (sa, sb) = (self.nodes[ia].value.shape(), self.nodes[ib].value.shape());
        let (m, k) = if ta {
            (sa.cols, sa.rows)
        } else {
            (sa.rows, sa.cols)
        };
        let (k2, n) = if tb {
            (sb.cols, sb.rows)
        } else {
            (sb.rows, sb.cols)
        };
        if k != k2 {
            return Err(Error::Shape {
                op: "matmul",
                lhs: sa,
                rhs: sb,
            });
        }
        let buf = self.backend.matmul(
            self.nodes[ia].value.buffer(),
            sa,
            ta,
            self.nodes[ib].value.buffer(),
            sb,
            tb,
        )?;
        let value = self.tensor(Shape::new(m, n), buf)?;
        let rg = self.nodes[ia].requires_grad || self.nodes[ib].requires_grad;
        Ok(self.push(
            value,
            Op::Matmul {
                a: ia,
                b: ib,
                ta,
                tb,
            },
            rg,
        ))
    }

    fn binary(&mut self, op: BinaryOp, a: Var, b: Var) -> Result<Var> {
        let (ia, ib) = (self.index(a)?, self.index(b)?);
        self.same_dtype(op.name(), ia, ib)?;
        let (sa, sb) = (self.nodes[ia].value.shape(), self.nodes[ib].value.shape());
        let bc = Broadcast::infer(sa, sb).ok_or(Error::Shape {
            op: op.name(),
            lhs: sa,
            rhs: sb,
        })?;
        let buf = self.backend.binary(
            op,
            self.nodes[ia].value.buffer(),
            sa,
            self.nodes[ib].value.buffer(),
            bc,
        )?;
        let value = self.tensor(sa, buf)?;
        let rg = self.nodes[ia].requires_grad || self.nodes[ib].requires_grad;
        Ok(self.push(
            value,
            Op::Binary {
                op,
                a: ia,
                b: ib,
                bc,
            },
            rg,
        ))
    }

    /// `a + b`; `b` has `a`'s shape or is a row vector (1 × n, added to every row), a
    /// column vector (r × 1, one value per row) or a 1 × 1 scalar.
    pub fn add(&mut self, a: Var, b: Var) -> Result<Var> {
        self.binary(BinaryOp::Add, a, b)
    }

    /// `a − b`, `b` broadcast as in [`add`](Graph::add).
    pub fn sub(&mut self, a: Var, b: Var) -> Result<Var> {
        self.binary(BinaryOp::Sub, a, b)
    }

    /// `a ⊙ b`, `b` broadcast as in [`add`](Graph::add) (a row vector scales columns, a
    /// column vector scales rows: diag(v)·X is `mul(x, v)` with v an r × 1 column).
    pub fn mul(&mut self, a: Var, b: Var) -> Result<Var> {
        self.binary(BinaryOp::Mul, a, b)
    }

    /// `a / b`, `b` broadcast as in [`add`](Graph::add).
    pub fn div(&mut self, a: Var, b: Var) -> Result<Var> {
        self.binary(BinaryOp::Div, a, b)
    }

    /// `α·x + β` for constants α, β.
    pub fn affine(&mut self, x: Var, alpha: f64, beta: f64) -> Result<Var> {
        if !alpha.is_finite() || !beta.is_finite() {
            return Err(Error::InvalidArgument(format!(
                "affine map with non-finite constants α = {alpha}, β = {beta}"
            )));
        }
        let ix = self.index(x)?;
        let buf = self
            .backend
            .affine(self.nodes[ix].value.buffer(), alpha, beta)?;
        let value = self.tensor(self.nodes[ix].value.shape(), buf)?;
        let rg = self.nodes[ix].requires_grad;
        Ok(self.push(value, Op::Affine { x: ix, alpha }, rg))
    }

    /// `c·x` for a constant c.
    pub fn scale(&mut self, x: Var, c: f64) -> Result<Var> {
        self.affine(x, c, 0.0)
    }

    /// `x + c` for a constant c.
    pub fn add_scalar(&mut self, x: Var, c: f64) -> Result<Var> {
        self.affine(x, 1.0, c)
    }

    /// `op(x)` elementwise.
    pub fn unary(&mut self, op: UnaryOp, x: Var) -> Result<Var> {
        let ix = self.index(x)?;
        let buf = self.backend.unary(op, self.nodes[ix].value.buffer())?;
        let value = self.tensor(self.nodes[ix].value.shape(), buf)?;
        let rg = self.nodes[ix].requires_grad;
        Ok(self.push(value, Op::Unary { op, x: ix }, rg))
    }

    /// −x.
    pub fn neg(&mut self, x: Var) -> Result<Var> {
        self.unary(UnaryOp::Neg, x)
    }

    /// x².
    pub fn square(&mut self, x: Var) -> Result<Var> {
        self.unary(UnaryOp::Square, x)
    }

    /// |x| (VJP with the subgradient sign(x), 0 at 0).
    pub fn abs(&mut self, x: Var) -> Result<Var> {
        self.unary(UnaryOp::Abs, x)
    }

    /// sign(x) (zero gradient).
    pub fn sign(&mut self, x: Var) -> Result<Var> {
        self.unary(UnaryOp::Sign, x)
    }

    /// 1/x.
    pub fn recip(&mut self, x: Var) -> Result<Var> {
        self.unary(UnaryOp::Recip, x)
    }

    /// eˣ.
    pub fn exp(&mut self, x: Var) -> Result<Var> {
        self.unary(UnaryOp::Exp, x)
    }

    /// ln x.
    pub fn log(&mut self, x: Var) -> Result<Var> {
        self.unary(UnaryOp::Log, x)
    }

    /// √x.
    pub fn sqrt(&mut self, x: Var) -> Result<Var> {
        self.unary(UnaryOp::Sqrt, x)
    }

    /// tanh x.
    pub fn tanh(&mut self, x: Var) -> Result<Var> {
        self.unary(UnaryOp::Tanh, x)
    }

    /// sech² x = 1 − tanh² x = tanh'(x).
    pub fn sech2(&mut self, x: Var) -> Result<Var> {
        self.unary(UnaryOp::Sech2, x)
    }

    /// The logistic sigmoid (= softplus').
    pub fn sigmoid(&mut self, x: Var) -> Result<Var> {
        self.unary(UnaryOp::Sigmoid, x)
    }

    /// x·sigmoid(x).
    pub fn silu(&mut self, x: Var) -> Result<Var> {
        self.unary(UnaryOp::Silu, x)
    }

    /// silu'(x).
    pub fn silu_prime(&mut self, x: Var) -> Result<Var> {
        self.unary(UnaryOp::SiluPrime, x)
    }

    /// silu''(x).
    pub fn silu_second(&mut self, x: Var) -> Result<Var> {
        self.unary(UnaryOp::SiluSecond, x)
    }

    /// ln(1 + eˣ), stable.
    pub fn softplus(&mut self, x: Var) -> Result<Var> {
        self.unary(UnaryOp::Softplus, x)
    }

    /// σ(x) = log(2 cosh x), stable (OT-Flow's activation; σ' = tanh, σ'' = sech²).
    pub fn logcosh(&mut self, x: Var) -> Result<Var> {
        self.unary(UnaryOp::LogCosh, x)
    }

    fn reduce(&mut self, x: Var, axis: Reduction, mean: bool) -> Result<Var> {
        let ix = self.index(x)?;
        let shape = self.nodes[ix].value.shape();
        let alpha = if mean {
            let count = match axis {
                Reduction::Cols => shape.cols,
                Reduction::Rows => shape.rows,
                Reduction::All => shape.len(),
            };
            if count == 0 {
                return Err(Error::InvalidShape {
                    op: "mean",
                    shape,
                    message: "mean over no element".into(),
                });
            }
            1.0 / count as f64
        } else {
            1.0
        };
        let buf = self
            .backend
            .reduce(self.nodes[ix].value.buffer(), shape, axis, alpha)?;
        let value = self.tensor(axis.out_shape(shape), buf)?;
        let rg = self.nodes[ix].requires_grad;
        Ok(self.push(value, Op::Reduce { x: ix, alpha }, rg))
    }

    /// Sum over the columns of each row: r × n → r × 1.
    pub fn sum_cols(&mut self, x: Var) -> Result<Var> {
        self.reduce(x, Reduction::Cols, false)
    }

    /// Sum over the rows of each column: r × n → 1 × n.
    pub fn sum_rows(&mut self, x: Var) -> Result<Var> {
        self.reduce(x, Reduction::Rows, false)
    }

    /// Sum of every element: → 1 × 1.
    pub fn sum(&mut self, x: Var) -> Result<Var> {
        self.reduce(x, Reduction::All, false)
    }

    /// Mean of every element: → 1 × 1 (an error for an empty tensor).
    pub fn mean(&mut self, x: Var) -> Result<Var> {
        self.reduce(x, Reduction::All, true)
    }

    /// Mean over the rows of each column (the batch mean): r × n → 1 × n.
    pub fn mean_rows(&mut self, x: Var) -> Result<Var> {
        self.reduce(x, Reduction::Rows, true)
    }

    /// Columns `[c0, c1)`.
    pub fn slice_cols(&mut self, x: Var, c0: usize, c1: usize) -> Result<Var> {
        let ix = self.index(x)?;
        let shape = self.nodes[ix].value.shape();
        if c0 > c1 || c1 > shape.cols {
            return Err(Error::InvalidShape {
                op: "slice_cols",
                shape,
                message: format!("column range {c0}..{c1}"),
            });
        }
        let buf = self
            .backend
            .slice_cols(self.nodes[ix].value.buffer(), shape, c0, c1)?;
        let value = self.tensor(Shape::new(shape.rows, c1 - c0), buf)?;
        let rg = self.nodes[ix].requires_grad;
        Ok(self.push(value, Op::SliceCols { x: ix, c0 }, rg))
    }

    /// The parts side by side (equal row counts and precisions; at least one part).
    pub fn concat_cols(&mut self, parts: &[Var]) -> Result<Var> {
        let Some(&first) = parts.first() else {
            return Err(Error::InvalidArgument("concat_cols of no parts".into()));
        };
        let i0 = self.index(first)?;
        let s0 = self.nodes[i0].value.shape();
        let mut idx = Vec::with_capacity(parts.len());
        let mut cols = 0usize;
        for &p in parts {
            let ip = self.index(p)?;
            self.same_dtype("concat_cols", i0, ip)?;
            let s = self.nodes[ip].value.shape();
            if s.rows != s0.rows {
                return Err(Error::Shape {
                    op: "concat_cols",
                    lhs: s0,
                    rhs: s,
                });
            }
            cols = cols.checked_add(s.cols).ok_or_else(|| {
                Error::InvalidArgument("concat_cols: column count overflows".into())
            })?;
            idx.push(ip);
        }
        let bufs: Vec<(&B::Buffer, Shape)> = idx
            .iter()
            .map(|&i| (self.nodes[i].value.buffer(), self.nodes[i].value.shape()))
            .collect();
        let buf = self.backend.concat_cols(&bufs)?;
        let value = self.tensor(Shape::new(s0.rows, cols), buf)?;
        let rg = idx.iter().any(|&i| self.nodes[i].requires_grad);
        let start = self.concat_inputs.len();
        self.concat_inputs.extend_from_slice(&idx);
        Ok(self.push(
            value,
            Op::ConcatCols {
                start,
                len: idx.len(),
            },
            rg,
        ))
    }

    fn positive(op: &'static str, shape: Shape, what: &str, k: usize) -> Result<()> {
        if k == 0 {
            Err(Error::InvalidShape {
                op,
                shape,
                message: format!("{what} must be at least 1"),
            })
        } else {
            Ok(())
        }
    }

    fn grown(op: &'static str, shape: Shape, k: usize) -> Result<Shape> {
        shape
            .rows
            .checked_mul(k)
            .map(|rows| Shape::new(rows, shape.cols))
            .filter(|s| s.checked_len().is_some())
            .ok_or_else(|| Error::InvalidShape {
                op,
                shape,
                message: format!("{k} copies overflow"),
            })
    }

    /// `B × n → (B·k) × n`, each row repeated `k` times consecutively: row b·k + j is
    /// row b. Lifts per-sample values to the Jacobian layout (rows = (sample, input
    /// direction)). VJP: [`sum_row_groups`](Graph::sum_row_groups).
    pub fn repeat_rows(&mut self, x: Var, k: usize) -> Result<Var> {
        let ix = self.index(x)?;
        let shape = self.nodes[ix].value.shape();
        Self::positive("repeat_rows", shape, "the repeat count", k)?;
        let out = Self::grown("repeat_rows", shape, k)?;
        let buf = self
            .backend
            .repeat_rows(self.nodes[ix].value.buffer(), shape, k)?;
        let value = self.tensor(out, buf)?;
        let rg = self.nodes[ix].requires_grad;
        Ok(self.push(value, Op::RepeatRows { x: ix, k }, rg))
    }

    /// `(B·k) × n → B × n`, sums of consecutive groups of `k` rows. VJP:
    /// [`repeat_rows`](Graph::repeat_rows).
    pub fn sum_row_groups(&mut self, x: Var, k: usize) -> Result<Var> {
        let ix = self.index(x)?;
        let shape = self.nodes[ix].value.shape();
        Self::positive("sum_row_groups", shape, "the group size", k)?;
        if shape.rows % k != 0 {
            return Err(Error::InvalidShape {
                op: "sum_row_groups",
                shape,
                message: format!("row count is not a multiple of the group size {k}"),
            });
        }
        let buf = self
            .backend
            .sum_row_groups(self.nodes[ix].value.buffer(), shape, k)?;
        let value = self.tensor(Shape::new(shape.rows / k, shape.cols), buf)?;
        let rg = self.nodes[ix].requires_grad;
        Ok(self.push(value, Op::SumRowGroups { x: ix, k }, rg))
    }

    /// `k × n → (times·k) × n`, the whole matrix repeated `times` times: row b·k + j is
    /// row j (a per-direction matrix shared by every sample). VJP:
    /// [`sum_tiles`](Graph::sum_tiles).
    pub fn tile_rows(&mut self, x: Var, times: usize) -> Result<Var> {
        let ix = self.index(x)?;
        let shape = self.nodes[ix].value.shape();
        Self::positive("tile_rows", shape, "the tile count", times)?;
        let out = Self::grown("tile_rows", shape, times)?;
        let buf = self
            .backend
            .tile_rows(self.nodes[ix].value.buffer(), shape, times)?;
        let value = self.tensor(out, buf)?;
        let rg = self.nodes[ix].requires_grad;
        Ok(self.push(value, Op::TileRows { x: ix, times }, rg))
    }

    /// `(times·k) × n → k × n`, the sum of the `times` tiles. VJP:
    /// [`tile_rows`](Graph::tile_rows).
    pub fn sum_tiles(&mut self, x: Var, times: usize) -> Result<Var> {
        let ix = self.index(x)?;
        let shape = self.nodes[ix].value.shape();
        Self::positive("sum_tiles", shape, "the tile count", times)?;
        if shape.rows % times != 0 {
            return Err(Error::InvalidShape {
                op: "sum_tiles",
                shape,
                message: format!("row count is not a multiple of the tile count {times}"),
            });
        }
        let buf = self
            .backend
            .sum_tiles(self.nodes[ix].value.buffer(), shape, times)?;
        let value = self.tensor(Shape::new(shape.rows / times, shape.cols), buf)?;
        let rg = self.nodes[ix].requires_grad;
        Ok(self.push(value, Op::SumTiles { x: ix, times }, rg))
    }

    /// `x` converted to `dtype` (rounded once). The only op that takes one precision to
    /// another; its VJP casts the gradient back.
    pub fn cast(&mut self, x: Var, dtype: DType) -> Result<Var> {
        let ix = self.index(x)?;
        let value = self.nodes[ix].value.cast(&self.backend, dtype)?;
        let rg = self.nodes[ix].requires_grad;
        Ok(self.push(value, Op::Cast { x: ix }, rg))
    }

    // -----------------------------------------------------------------------------------
    // Backward
    // -----------------------------------------------------------------------------------

    /// Reverse-mode gradients of `output` with respect to every leaf that requires one.
    ///
    /// `seed` is the cotangent of `output` (same shape and precision): the result is
    /// the vector–Jacobian product seedᵀ·∂output/∂leaf. Without a seed the output must
    /// be 1 × 1 and the seed is 1. Gradients are summed in each value's own precision
    /// and returned in each leaf's precision; see
    /// [`backward_with`](Graph::backward_with) to sum them in another.
    pub fn backward(&self, output: Var, seed: Option<Tensor<B>>) -> Result<Gradients<B>> {
        self.backward_with(output, seed, None)
    }

    /// [`backward`](Graph::backward) with an accumulation precision.
    ///
    /// With `accumulate = Some(h)`, every gradient contribution is cast to `h` before
    /// it is summed into a value's gradient, a summed gradient is cast to the value's
    /// own precision only to be pulled through its op's VJP (every VJP kernel computes
    /// at its value's precision, as the forward op did), and the leaves' gradients are
    /// returned in `h`. A half-precision parameter used by many ops (or by many steps)
    /// thus has its gradient summed at f32 or f64. With `None`, sums are held in each
    /// value's precision and leaf gradients returned in the leaf's.
    pub fn backward_with(
        &self,
        output: Var,
        seed: Option<Tensor<B>>,
        accumulate: Option<DType>,
    ) -> Result<Gradients<B>> {
        let out = self.index(output)?;
        let out_value = &self.nodes[out].value;
        let seed = match seed {
            Some(s) => {
                if s.shape() != out_value.shape() {
                    return Err(Error::Shape {
                        op: "backward seed",
                        lhs: out_value.shape(),
                        rhs: s.shape(),
                    });
                }
                if s.dtype() != out_value.dtype() {
                    return Err(Error::DType {
                        op: "backward seed",
                        lhs: out_value.dtype(),
                        rhs: s.dtype(),
                    });
                }
                s
            }
            None => {
                if out_value.shape() != Shape::SCALAR {
                    return Err(Error::InvalidShape {
                        op: "backward",
                        shape: out_value.shape(),
                        message: "a seed is needed unless the output is 1×1".into(),
                    });
                }
                Tensor::full(&self.backend, 1, 1, 1.0, out_value.dtype())?
            }
        };

        let mut grads: Vec<Option<Tensor<B>>> = Vec::new();
        grads.resize_with(self.nodes.len(), || None);
        if self.nodes[out].requires_grad {
            self.accumulate(&mut grads[out], seed, accumulate)?;
        }
        for i in (0..=out).rev() {
            let node = &self.nodes[i];
            if matches!(node.op, Op::Leaf) {
                continue;
            }
            let Some(g) = grads[i].take() else {
                continue;
            };
            let g = if g.dtype() == node.value.dtype() {
                g
            } else {
                g.cast(&self.backend, node.value.dtype())?
            };
            self.vjp(i, &g, &mut grads, accumulate)?;
        }

        for (i, node) in self.nodes.iter().enumerate() {
            let keep = matches!(node.op, Op::Leaf) && node.requires_grad;
            if !keep {
                grads[i] = None;
            } else if grads[i].is_none() {
                let v = &node.value;
                grads[i] = Some(Tensor::zeros(
                    &self.backend,
                    v.rows(),
                    v.cols(),
                    accumulate.unwrap_or(v.dtype()),
                )?);
            }
        }
        Ok(Gradients {
            graph: self.id,
            grads,
        })
    }

    fn accumulate(
        &self,
        slot: &mut Option<Tensor<B>>,
        contribution: Tensor<B>,
        accumulate: Option<DType>,
    ) -> Result<()> {
        let c = match accumulate {
            Some(h) if contribution.dtype() != h => contribution.cast(&self.backend, h)?,
            _ => contribution,
        };
        match slot {
            None => *slot = Some(c),
            Some(sum) => {
                if sum.dtype() != c.dtype() {
                    // Without an accumulation precision a value's contributions all
                    // arrive in its own precision; this guards a backend bug.
                    return Err(Error::DType {
                        op: "gradient accumulation",
                        lhs: sum.dtype(),
                        rhs: c.dtype(),
                    });
                }
                self.backend.add_assign(sum.buffer_mut(), c.buffer())?;
            }
        }
        Ok(())
    }

    /// Pulls `g` (the gradient of node `i`, in its precision) through node `i`'s op,
    /// accumulating into its inputs that require gradients. Every VJP is made of
    /// backend kernels.
    fn vjp(
        &self,
        i: usize,
        g: &Tensor<B>,
        grads: &mut [Option<Tensor<B>>],
        acc: Option<DType>,
    ) -> Result<()> {
        let be = &self.backend;
        let node = &self.nodes[i];
        let gs = g.shape();
        let gb = g.buffer();
        let val = |j: usize| &self.nodes[j].value;
        let needs = |j: usize| self.nodes[j].requires_grad;
        let mut give = |j: usize, shape: Shape, buf: B::Buffer| -> Result<()> {
            let t = Tensor::from_parts(shape, buf)?;
            self.accumulate(&mut grads[j], t, acc)
        };
        match node.op {
            Op::Leaf => {}
            Op::Matmul { a, b, ta, tb } => {
                let (av, bv) = (val(a), val(b));
                if needs(a) {
                    let da = if ta {
                        be.matmul(bv.buffer(), bv.shape(), tb, gb, gs, true)?
                    } else {
                        be.matmul(gb, gs, false, bv.buffer(), bv.shape(), !tb)?
                    };
                    give(a, av.shape(), da)?;
                }
                if needs(b) {
                    let db = if tb {
                        be.matmul(gb, gs, true, av.buffer(), av.shape(), ta)?
                    } else {
                        be.matmul(av.buffer(), av.shape(), !ta, gb, gs, false)?
                    };
                    give(b, bv.shape(), db)?;
                }
            }
            Op::Unary { op, x } => {
                if needs(x) {
                    let dx = self.unary_vjp(op, val(x), &node.value, g)?;
                    give(x, gs, dx)?;
                }
            }
            Op::Affine { x, alpha } => {
                if needs(x) {
                    give(x, gs, be.affine(gb, alpha, 0.0)?)?;
                }
            }
            Op::Binary { op, a, b, bc } => {
                let (av, bv) = (val(a), val(b));
                // Undo the broadcast of `b`: sum `t` (shape gs) down to b's shape,
                // times `alpha`.
                let reduce_to_b = |t: &B::Buffer, alpha: f64| -> Result<B::Buffer> {
                    match Reduction::of_broadcast(bc) {
                        None if alpha == 1.0 => be.copy(t),
                        None => be.affine(t, alpha, 0.0),
                        Some(axis) => be.reduce(t, gs, axis, alpha),
                    }
                };
                match op {
                    BinaryOp::Add | BinaryOp::Sub => {
                        if needs(a) {
                            give(a, gs, be.copy(gb)?)?;
                        }
                        if needs(b) {
                            let sign = if op == BinaryOp::Add { 1.0 } else { -1.0 };
                            give(b, bv.shape(), reduce_to_b(gb, sign)?)?;
                        }
                    }
                    BinaryOp::Mul => {
                        if needs(a) {
                            give(a, gs, be.binary(BinaryOp::Mul, gb, gs, bv.buffer(), bc)?)?;
                        }
                        if needs(b) {
                            let ga =
                                be.binary(BinaryOp::Mul, gb, gs, av.buffer(), Broadcast::None)?;
                            give(b, bv.shape(), reduce_to_b(&ga, 1.0)?)?;
                        }
                    }
                    BinaryOp::Div => {
                        if needs(a) {
                            give(a, gs, be.binary(BinaryOp::Div, gb, gs, bv.buffer(), bc)?)?;
                        }
                        if needs(b) {
                            // ∂(a/b)/∂b = −(a/b)/b = −y/b.
                            let gy = be.binary(
                                BinaryOp::Mul,
                                gb,
                                gs,
                                node.value.buffer(),
                                Broadcast::None,
                            )?;
                            let gyb = be.binary(BinaryOp::Div, &gy, gs, bv.buffer(), bc)?;
                            give(b, bv.shape(), reduce_to_b(&gyb, -1.0)?)?;
                        }
                    }
                }
            }
            Op::Reduce { x, alpha, .. } => {
                if needs(x) {
                    let xs = val(x).shape();
                    give(x, xs, be.broadcast(gb, gs, xs, alpha)?)?;
                }
            }
            Op::SliceCols { x, c0 } => {
                if needs(x) {
                    let xs = val(x).shape();
                    give(x, xs, be.embed_cols(gb, gs, c0, xs.cols)?)?;
                }
            }
            Op::ConcatCols { start, len } => {
                let mut c0 = 0;
                for &p in &self.concat_inputs[start..start + len] {
                    let ps = val(p).shape();
                    if needs(p) {
                        give(p, ps, be.slice_cols(gb, gs, c0, c0 + ps.cols)?)?;
                    }
                    c0 += ps.cols;
                }
            }
            Op::RepeatRows { x, k } => {
                if needs(x) {
                    give(x, val(x).shape(), be.sum_row_groups(gb, gs, k)?)?;
                }
            }
            Op::SumRowGroups { x, k } => {
                if needs(x) {
                    give(x, val(x).shape(), be.repeat_rows(gb, gs, k)?)?;
                }
            }
            Op::TileRows { x, times } => {
                if needs(x) {
                    give(x, val(x).shape(), be.sum_tiles(gb, gs, times)?)?;
                }
            }
            Op::SumTiles { x, times } => {
                if needs(x) {
                    give(x, val(x).shape(), be.tile_rows(gb, gs, times)?)?;
                }
            }
            Op::Cast { x } => {
                if needs(x) {
                    give(x, gs, be.cast(gb, val(x).dtype())?)?;
                }
            }
        }
        Ok(())
    }

    /// g ⊙ f'(x) for y = f(x), from backend kernels (reusing y where that is exact and
    /// stable). Each derivative is itself a map with a VJP of its own, so a gradient or
    /// Laplacian built from these maps is differentiable once more.
    fn unary_vjp(
        &self,
        op: UnaryOp,
        x: &Tensor<B>,
        y: &Tensor<B>,
        g: &Tensor<B>,
    ) -> Result<B::Buffer> {
        let be = &self.backend;
        let s = g.shape();
        let (xb, yb, gb) = (x.buffer(), y.buffer(), g.buffer());
        let mul = |a: &B::Buffer, b: &B::Buffer| be.binary(BinaryOp::Mul, a, s, b, Broadcast::None);
        let div = |a: &B::Buffer, b: &B::Buffer| be.binary(BinaryOp::Div, a, s, b, Broadcast::None);
        match op {
            UnaryOp::Neg => be.affine(gb, -1.0, 0.0),
            UnaryOp::Square => mul(gb, &be.affine(xb, 2.0, 0.0)?),
            UnaryOp::Abs => mul(gb, &be.unary(UnaryOp::Sign, xb)?),
            UnaryOp::Sign => be.full(s.len(), 0.0, g.dtype()),
            // d(1/x) = −y².
            UnaryOp::Recip => be.affine(&mul(gb, &be.unary(UnaryOp::Square, yb)?)?, -1.0, 0.0),
            UnaryOp::Exp => mul(gb, yb),
            UnaryOp::Log => div(gb, xb),
            // d√x = 1/(2y).
            UnaryOp::Sqrt => div(gb, &be.affine(yb, 2.0, 0.0)?),
            // tanh' = sech², from x (1 − y² cancels where |x| is large).
            UnaryOp::Tanh => mul(gb, &be.unary(UnaryOp::Sech2, xb)?),
            // (sech²)' = −2 tanh·sech².
            UnaryOp::Sech2 => {
                let t = be.affine(&be.unary(UnaryOp::Tanh, xb)?, -2.0, 0.0)?;
                mul(gb, &mul(&t, yb)?)
            }
            // sigmoid' = s·(1 − s) = s·sigmoid(−x).
            UnaryOp::Sigmoid => {
                let sm = be.unary(UnaryOp::Sigmoid, &be.unary(UnaryOp::Neg, xb)?)?;
                mul(gb, &mul(yb, &sm)?)
            }
            UnaryOp::Silu => mul(gb, &be.unary(UnaryOp::SiluPrime, xb)?),
            UnaryOp::SiluPrime => mul(gb, &be.unary(UnaryOp::SiluSecond, xb)?),
            // silu''' = q·[p·(3 + x·p) − 2·x·q], q = s·(1 − s), p = 1 − 2s = sm − s.
            UnaryOp::SiluSecond => {
                let sp = be.unary(UnaryOp::Sigmoid, xb)?;
                let sm = be.unary(UnaryOp::Sigmoid, &be.unary(UnaryOp::Neg, xb)?)?;
                let q = mul(&sp, &sm)?;
                let p = be.binary(BinaryOp::Sub, &sm, s, &sp, Broadcast::None)?;
                let three_xp = be.affine(&mul(xb, &p)?, 1.0, 3.0)?;
                let first = mul(&p, &three_xp)?;
                let second = be.affine(&mul(xb, &q)?, -2.0, 0.0)?;
                let bracket = be.binary(BinaryOp::Add, &first, s, &second, Broadcast::None)?;
                mul(gb, &mul(&q, &bracket)?)
            }
            UnaryOp::Softplus => mul(gb, &be.unary(UnaryOp::Sigmoid, xb)?),
            UnaryOp::LogCosh => mul(gb, &be.unary(UnaryOp::Tanh, xb)?),
        }
    }
}
