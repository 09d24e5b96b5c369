//! The tape: values addressed by [`Var`] handles, ops recorded in creation order, and
//! reverse-mode [`backward`](Graph::backward).

use std::sync::atomic::{AtomicU32, Ordering};

use super::backend::{Backend, BinaryOp, Broadcast, Reduction, Storage, UnaryOp};
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
    /// `deriv`: a node holding the value the VJP multiplies by (see
    /// [`UnaryOp::derivative`]; for sech², the tanh of the same input). `group`: the
    /// first node and the count of the maps computed with it by one
    /// [`Graph::unary_many`].
    Unary {
        op: UnaryOp,
        x: usize,
        deriv: Option<usize>,
        group: Option<(usize, usize)>,
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
    /// a + α·b.
    AddScaled {
        a: usize,
        b: usize,
        bc: Broadcast,
        alpha: f64,
    },
    /// a + α·(b ⊙ c).
    MulAdd {
        a: usize,
        b: usize,
        c: usize,
        bc: Broadcast,
        alpha: f64,
    },
    /// c + β·op(a)·op(b).
    MatmulAdd {
        c: usize,
        a: usize,
        b: usize,
        ta: bool,
        tb: bool,
        bc: Broadcast,
        beta: f64,
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

    /// `a + α·b` for a constant α, `b` broadcast as in [`add`](Graph::add): one pass
    /// instead of a [`scale`](Graph::scale) and an [`add`](Graph::add) (a ResNet
    /// step u + η·σ(·)).
    pub fn add_scaled(&mut self, a: Var, b: Var, alpha: f64) -> Result<Var> {
        if !alpha.is_finite() {
            return Err(Error::InvalidArgument(format!(
                "add_scaled with a non-finite factor α = {alpha}"
            )));
        }
        let (ia, ib) = (self.index(a)?, self.index(b)?);
        self.same_dtype("add_scaled", ia, ib)?;
        let (sa, sb) = (self.nodes[ia].value.shape(), self.nodes[ib].value.shape());
        let bc = Broadcast::infer(sa, sb).ok_or(Error::Shape {
            op: "add_scaled",
            lhs: sa,
            rhs: sb,
        })?;
        let buf = self.backend.add_scaled(
            self.nodes[ia].value.buffer(),
            sa,
            self.nodes[ib].value.buffer(),
            bc,
            alpha,
        )?;
        let value = self.tensor(sa, buf)?;
        let rg = self.nodes[ia].requires_grad || self.nodes[ib].requires_grad;
        Ok(self.push(
            value,
            Op::AddScaled {
                a: ia,
                b: ib,
                bc,
                alpha,
            },
            rg,
        ))
    }

    /// `a + α·(b ⊙ c)` for a constant α: `a` and `b` of one shape, `c` of that shape or
    /// broadcast as in [`add`](Graph::add). One pass for what would be a
    /// [`mul`](Graph::mul), a [`scale`](Graph::scale) and an [`add`](Graph::add) (a
    /// Jacobian update J + η·(KJ ⊙ tanh), a sum of squares s + v ⊙ v).
    pub fn mul_add(&mut self, a: Var, b: Var, c: Var, alpha: f64) -> Result<Var> {
        if !alpha.is_finite() {
            return Err(Error::InvalidArgument(format!(
                "mul_add with a non-finite factor α = {alpha}"
            )));
        }
        let (ia, ib, ic) = (self.index(a)?, self.index(b)?, self.index(c)?);
        self.same_dtype("mul_add", ia, ib)?;
        self.same_dtype("mul_add", ia, ic)?;
        let sa = self.nodes[ia].value.shape();
        let (sb, sc) = (self.nodes[ib].value.shape(), self.nodes[ic].value.shape());
        if sb != sa {
            return Err(Error::Shape {
                op: "mul_add",
                lhs: sa,
                rhs: sb,
            });
        }
        let bc = Broadcast::infer(sa, sc).ok_or(Error::Shape {
            op: "mul_add",
            lhs: sa,
            rhs: sc,
        })?;
        let buf = self.backend.mul_add(
            self.nodes[ia].value.buffer(),
            self.nodes[ib].value.buffer(),
            sa,
            self.nodes[ic].value.buffer(),
            bc,
            alpha,
        )?;
        let value = self.tensor(sa, buf)?;
        let rg = [ia, ib, ic].iter().any(|&j| self.nodes[j].requires_grad);
        Ok(self.push(
            value,
            Op::MulAdd {
                a: ia,
                b: ib,
                c: ic,
                bc,
                alpha,
            },
            rg,
        ))
    }

    /// `c + β·op(A)·op(B)` for a constant β, `c` of the product's shape or broadcast
    /// as in [`add`](Graph::add): a layer x·Kᵀ + b (`matmul_add(b, x, k, false, true,
    /// 1.0)`) or an update z + η·(v·K) in one product, with no separate pass for the
    /// sum (the product accumulates onto `c`).
    pub fn matmul_add(
        &mut self,
        c: Var,
        a: Var,
        b: Var,
        ta: bool,
        tb: bool,
        beta: f64,
    ) -> Result<Var> {
        if !beta.is_finite() {
            return Err(Error::InvalidArgument(format!(
                "matmul_add with a non-finite factor β = {beta}"
            )));
        }
        let (ic, ia, ib) = (self.index(c)?, self.index(a)?, self.index(b)?);
        self.same_dtype("matmul_add", ia, ib)?;
        self.same_dtype("matmul_add", ia, ic)?;
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
                op: "matmul_add",
                lhs: sa,
                rhs: sb,
            });
        }
        let out = Shape::new(m, n);
        let sc = self.nodes[ic].value.shape();
        let bc = Broadcast::infer(out, sc).ok_or(Error::Shape {
            op: "matmul_add",
            lhs: out,
            rhs: sc,
        })?;
        let cb = self.nodes[ic].value.buffer();
        let mut buf = match bc {
            Broadcast::None => self.backend.copy(cb)?,
            _ => self.backend.broadcast(cb, sc, out, 1.0)?,
        };
        self.backend.matmul_acc(
            &mut buf,
            self.nodes[ia].value.buffer(),
            sa,
            ta,
            self.nodes[ib].value.buffer(),
            sb,
            tb,
            beta,
        )?;
        let value = self.tensor(out, buf)?;
        let rg = [ia, ib, ic].iter().any(|&j| self.nodes[j].requires_grad);
        Ok(self.push(
            value,
            Op::MatmulAdd {
                c: ic,
                a: ia,
                b: ib,
                ta,
                tb,
                bc,
                beta,
            },
            rg,
        ))
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
        Ok(self.push(
            value,
            Op::Unary {
                op,
                x: ix,
                deriv: None,
                group: None,
            },
            rg,
        ))
    }

    /// Several maps of one input, `[ops[0](x), ops[1](x), …]`, computed together (the
    /// CPU backend computes log cosh, tanh and sech² in one pass from one exponential).
    /// Each result is an ordinary map value, equal to what [`unary`](Graph::unary)
    /// gives; where one result is the derivative map of another (log cosh → tanh,
    /// tanh → sech², and the others [`UnaryOp::derivative`] names) or, for sech²,
    /// the tanh its derivative −2·tanh·sech² needs, the VJP reads that value instead
    /// of recomputing it. OT-Flow's layers take σ(u), σ'(u) = tanh u and σ''(u) =
    /// sech² u of every pre-activation this way.
    pub fn unary_many(&mut self, x: Var, ops: &[UnaryOp]) -> Result<Vec<Var>> {
        let ix = self.index(x)?;
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let bufs = self
            .backend
            .unary_many(ops, self.nodes[ix].value.buffer())?;
        if bufs.len() != ops.len() {
            return Err(Error::InvalidArgument(format!(
                "backend unary_many returned {} results for {} maps",
                bufs.len(),
                ops.len()
            )));
        }
        let shape = self.nodes[ix].value.shape();
        let rg = self.nodes[ix].requires_grad;
        let first = self.nodes.len();
        let position = |want: UnaryOp| ops.iter().position(|&o| o == want).map(|j| first + j);
        let mut vars = Vec::with_capacity(ops.len());
        for (&op, buf) in ops.iter().zip(bufs) {
            let value = self.tensor(shape, buf)?;
            let deriv = match op {
                UnaryOp::Sech2 => position(UnaryOp::Tanh),
                _ => op.derivative().and_then(position),
            };
            let group = (ops.len() > 1).then_some((first, ops.len()));
            vars.push(self.push(
                value,
                Op::Unary {
                    op,
                    x: ix,
                    deriv,
                    group,
                },
                rg,
            ));
        }
        Ok(vars)
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

    /// sin x.
    pub fn sin(&mut self, x: Var) -> Result<Var> {
        self.unary(UnaryOp::Sin, x)
    }

    /// cos x.
    pub fn cos(&mut self, x: Var) -> Result<Var> {
        self.unary(UnaryOp::Cos, x)
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
            let Some(g) = self.group_vjp(i, g, &mut grads, accumulate)? else {
                continue;
            };
            self.vjp(i, g, &mut grads, accumulate)?;
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

    /// At the last map of a [`unary_many`](Graph::unary_many) group (whose members'
    /// gradients are then complete: their uses all come later on the tape), the input's
    /// gradient from every member at once if the backend has a fused kernel for the
    /// group; `None` then (the members' gradients consumed), else `g` back for node
    /// `i`'s own VJP.
    fn group_vjp(
        &self,
        i: usize,
        g: Tensor<B>,
        grads: &mut [Option<Tensor<B>>],
        acc: Option<DType>,
    ) -> Result<Option<Tensor<B>>> {
        let Op::Unary {
            x,
            group: Some((first, count)),
            ..
        } = self.nodes[i].op
        else {
            return Ok(Some(g));
        };
        if i + 1 != first + count || !self.nodes[x].requires_grad {
            return Ok(Some(g));
        }
        let mut member_grads = Vec::with_capacity(count);
        let mut ops = Vec::with_capacity(count);
        for (node, grad) in self.nodes[first..i].iter().zip(&grads[first..i]) {
            let Op::Unary { op, .. } = node.op else {
                return Ok(Some(g));
            };
            ops.push(op);
            member_grads.push(match grad {
                Some(t) if t.dtype() != node.value.dtype() => {
                    Some(t.cast(&self.backend, node.value.dtype())?)
                }
                _ => None,
            });
        }
        let Op::Unary { op, .. } = self.nodes[i].op else {
            return Ok(Some(g));
        };
        ops.push(op);
        let gs: Vec<Option<&B::Buffer>> = (first..i)
            .zip(&member_grads)
            .map(|(j, cast)| cast.as_ref().or(grads[j].as_ref()).map(|t| t.buffer()))
            .chain(std::iter::once(Some(g.buffer())))
            .collect();
        let ys: Vec<&B::Buffer> = (first..=i).map(|j| self.nodes[j].value.buffer()).collect();
        let fused = self
            .backend
            .unary_many_vjp(&ops, self.nodes[x].value.buffer(), &ys, &gs)?;
        let Some(dx) = fused else {
            return Ok(Some(g));
        };
        for slot in &mut grads[first..i] {
            *slot = None;
        }
        let shape = g.shape();
        self.accumulate(&mut grads[x], Tensor::from_parts(shape, dx)?, acc)?;
        Ok(None)
    }

    /// Adds the owned contribution `c` to `slot`: moved in when the slot is empty (cast
    /// to the accumulation precision), summed in place otherwise.
    fn accumulate(
        &self,
        slot: &mut Option<Tensor<B>>,
        c: Tensor<B>,
        acc: Option<DType>,
    ) -> Result<()> {
        match slot {
            None => {
                let c = match acc {
                    Some(h) if c.dtype() != h => c.cast(&self.backend, h)?,
                    _ => c,
                };
                *slot = Some(c);
                Ok(())
            }
            Some(sum) => {
                Self::check_sum(sum, c.dtype(), acc)?;
                self.backend.axpy(sum.buffer_mut(), 1.0, c.buffer())
            }
        }
    }

    /// Without an accumulation precision a value's contributions all arrive in its own
    /// precision; this guards a backend bug.
    fn check_sum(sum: &Tensor<B>, dtype: DType, acc: Option<DType>) -> Result<()> {
        if acc.is_none() && sum.dtype() != dtype {
            return Err(Error::DType {
                op: "gradient accumulation",
                lhs: sum.dtype(),
                rhs: dtype,
            });
        }
        Ok(())
    }

    /// Adds `α·c` for a borrowed `c` (of shape `shape`): in place when the slot holds a
    /// sum, else as a scaled copy.
    fn accumulate_ref(
        &self,
        slot: &mut Option<Tensor<B>>,
        c: &B::Buffer,
        shape: Shape,
        alpha: f64,
        acc: Option<DType>,
    ) -> Result<()> {
        let be = &self.backend;
        match slot {
            Some(sum) => {
                Self::check_sum(sum, c.dtype(), acc)?;
                be.axpy(sum.buffer_mut(), alpha, c)
            }
            None => {
                let target = acc.unwrap_or(c.dtype());
                let buf = if alpha == 1.0 {
                    be.cast(c, target)?
                } else {
                    let scaled = be.affine(c, alpha, 0.0)?;
                    if scaled.dtype() == target {
                        scaled
                    } else {
                        be.cast(&scaled, target)?
                    }
                };
                *slot = Some(Tensor::from_parts(shape, buf)?);
                Ok(())
            }
        }
    }

    /// Adds `α·c` for an owned `c`.
    fn accumulate_scaled(
        &self,
        slot: &mut Option<Tensor<B>>,
        c: Tensor<B>,
        alpha: f64,
        acc: Option<DType>,
    ) -> Result<()> {
        if alpha == 1.0 {
            return self.accumulate(slot, c, acc);
        }
        if slot.is_some() {
            return self.accumulate_ref(slot, c.buffer(), c.shape(), alpha, acc);
        }
        let scaled = self.backend.affine(c.buffer(), alpha, 0.0)?;
        self.accumulate(slot, Tensor::from_parts(c.shape(), scaled)?, acc)
    }

    /// Adds `α·(g ⊙ f)` (`f` covering g's shape `gs` as `bc` says): one fused pass
    /// into an existing sum of g's precision, else the product as a new contribution.
    #[allow(clippy::too_many_arguments)]
    fn accumulate_mul(
        &self,
        slot: &mut Option<Tensor<B>>,
        g: &B::Buffer,
        gs: Shape,
        f: &B::Buffer,
        bc: Broadcast,
        alpha: f64,
        acc: Option<DType>,
    ) -> Result<()> {
        let be = &self.backend;
        if let Some(sum) = slot {
            if sum.dtype() == g.dtype() && sum.shape() == gs {
                let next = be.mul_add(sum.buffer(), g, gs, f, bc, alpha)?;
                *sum = Tensor::from_parts(gs, next)?;
                return Ok(());
            }
        }
        let mut p = be.binary(BinaryOp::Mul, g, gs, f, bc)?;
        if alpha != 1.0 {
            p = be.affine(&p, alpha, 0.0)?;
        }
        self.accumulate(slot, Tensor::from_parts(gs, p)?, acc)
    }

    /// Adds the product `β·op(x)·op(y)` (of shape `shape`): accumulated by the GEMM
    /// into an existing sum of the same precision, else a new contribution.
    fn accumulate_product(
        &self,
        slot: &mut Option<Tensor<B>>,
        shape: Shape,
        (x, xs, tx): (&B::Buffer, Shape, bool),
        (y, ys, ty): (&B::Buffer, Shape, bool),
        beta: f64,
        acc: Option<DType>,
    ) -> Result<()> {
        let be = &self.backend;
        if let Some(sum) = slot {
            if sum.dtype() == x.dtype() {
                return be.matmul_acc(sum.buffer_mut(), x, xs, tx, y, ys, ty, beta);
            }
        }
        let p = if beta == 1.0 {
            be.matmul(x, xs, tx, y, ys, ty)?
        } else {
            let mut p = be.full(shape.len(), 0.0, x.dtype())?;
            be.matmul_acc(&mut p, x, xs, tx, y, ys, ty, beta)?;
            p
        };
        self.accumulate(slot, Tensor::from_parts(shape, p)?, acc)
    }

    /// The operand gradients of `β·op(a)·op(b)` for the incoming gradient `g`.
    #[allow(clippy::too_many_arguments)]
    fn matmul_vjp(
        &self,
        grads: &mut [Option<Tensor<B>>],
        g: &Tensor<B>,
        a: usize,
        b: usize,
        ta: bool,
        tb: bool,
        beta: f64,
        acc: Option<DType>,
    ) -> Result<()> {
        let (av, bv) = (&self.nodes[a].value, &self.nodes[b].value);
        let (gb, gs) = (g.buffer(), g.shape());
        if self.nodes[a].requires_grad {
            let (x, y) = if ta {
                ((bv.buffer(), bv.shape(), tb), (gb, gs, true))
            } else {
                ((gb, gs, false), (bv.buffer(), bv.shape(), !tb))
            };
            self.accumulate_product(&mut grads[a], av.shape(), x, y, beta, acc)?;
        }
        if self.nodes[b].requires_grad {
            let (x, y) = if tb {
                ((gb, gs, true), (av.buffer(), av.shape(), ta))
            } else {
                ((av.buffer(), av.shape(), !ta), (gb, gs, false))
            };
            self.accumulate_product(&mut grads[b], bv.shape(), x, y, beta, acc)?;
        }
        Ok(())
    }

    /// The gradients of `a + α·b` (`b` broadcast as `bc` says), consuming `g`: where
    /// both need it, the one whose sum is empty takes `g` itself if it can, so that `g`
    /// is copied only when both sums are empty.
    #[allow(clippy::too_many_arguments)]
    fn add_vjp(
        &self,
        grads: &mut [Option<Tensor<B>>],
        g: Tensor<B>,
        a: usize,
        b: usize,
        bc: Broadcast,
        alpha: f64,
        acc: Option<DType>,
    ) -> Result<()> {
        let (need_a, need_b) = (self.nodes[a].requires_grad, self.nodes[b].requires_grad);
        let gs = g.shape();
        if need_b {
            if let Some(axis) = Reduction::of_broadcast(bc) {
                let r = self.backend.reduce(g.buffer(), gs, axis, alpha)?;
                let rs = self.nodes[b].value.shape();
                self.accumulate(&mut grads[b], Tensor::from_parts(rs, r)?, acc)?;
            } else if !need_a {
                return self.accumulate_scaled(&mut grads[b], g, alpha, acc);
            } else if alpha == 1.0 && grads[b].is_none() && grads[a].is_some() {
                self.accumulate_ref(&mut grads[a], g.buffer(), gs, 1.0, acc)?;
                return self.accumulate(&mut grads[b], g, acc);
            } else {
                self.accumulate_ref(&mut grads[b], g.buffer(), gs, alpha, acc)?;
            }
        }
        if need_a {
            self.accumulate(&mut grads[a], g, acc)?;
        }
        Ok(())
    }

    /// Pulls `g` (the gradient of node `i`, in its precision) through node `i`'s op,
    /// accumulating into its inputs that require gradients. Every VJP is made of
    /// backend kernels; `g` is consumed (moved into an input's empty sum where the VJP
    /// is the identity).
    fn vjp(
        &self,
        i: usize,
        g: Tensor<B>,
        grads: &mut [Option<Tensor<B>>],
        acc: Option<DType>,
    ) -> Result<()> {
        let be = &self.backend;
        let node = &self.nodes[i];
        let gs = g.shape();
        let val = |j: usize| &self.nodes[j].value;
        let needs = |j: usize| self.nodes[j].requires_grad;
        let give = |grads: &mut [Option<Tensor<B>>], j: usize, shape: Shape, buf: B::Buffer| {
            self.accumulate(&mut grads[j], Tensor::from_parts(shape, buf)?, acc)
        };
        match node.op {
            Op::Leaf => {}
            Op::Matmul { a, b, ta, tb } => self.matmul_vjp(grads, &g, a, b, ta, tb, 1.0, acc)?,
            Op::MatmulAdd {
                c,
                a,
                b,
                ta,
                tb,
                bc,
                beta,
            } => {
                self.matmul_vjp(grads, &g, a, b, ta, tb, beta, acc)?;
                if needs(c) {
                    match Reduction::of_broadcast(bc) {
                        None => self.accumulate(&mut grads[c], g, acc)?,
                        Some(axis) => {
                            let r = be.reduce(g.buffer(), gs, axis, 1.0)?;
                            give(grads, c, val(c).shape(), r)?;
                        }
                    }
                }
            }
            Op::Unary { op, x, deriv, .. } => {
                if needs(x) {
                    let gb = g.buffer();
                    match self.unary_vjp(op, i, x, deriv, &g)? {
                        UnaryVjp::Gradient(d) => give(grads, x, gs, d)?,
                        UnaryVjp::Factor(f) => self.accumulate_mul(
                            &mut grads[x],
                            gb,
                            gs,
                            &f,
                            Broadcast::None,
                            1.0,
                            acc,
                        )?,
                        UnaryVjp::Value(j) => self.accumulate_mul(
                            &mut grads[x],
                            gb,
                            gs,
                            val(j).buffer(),
                            Broadcast::None,
                            1.0,
                            acc,
                        )?,
                    }
                }
            }
            Op::Affine { x, alpha } => {
                if needs(x) {
                    self.accumulate_scaled(&mut grads[x], g, alpha, acc)?;
                }
            }
            Op::AddScaled { a, b, bc, alpha } => self.add_vjp(grads, g, a, b, bc, alpha, acc)?,
            Op::Binary { op, a, b, bc } => {
                let (av, bv) = (val(a), val(b));
                let gb = g.buffer();
                match op {
                    BinaryOp::Add => self.add_vjp(grads, g, a, b, bc, 1.0, acc)?,
                    BinaryOp::Sub => self.add_vjp(grads, g, a, b, bc, -1.0, acc)?,
                    BinaryOp::Mul => {
                        if needs(b) {
                            match Reduction::of_broadcast(bc) {
                                None => self.accumulate_mul(
                                    &mut grads[b],
                                    gb,
                                    gs,
                                    av.buffer(),
                                    Broadcast::None,
                                    1.0,
                                    acc,
                                )?,
                                Some(axis) => {
                                    let ga = be.binary(
                                        BinaryOp::Mul,
                                        gb,
                                        gs,
                                        av.buffer(),
                                        Broadcast::None,
                                    )?;
                                    give(grads, b, bv.shape(), be.reduce(&ga, gs, axis, 1.0)?)?;
                                }
                            }
                        }
                        if needs(a) {
                            self.accumulate_mul(&mut grads[a], gb, gs, bv.buffer(), bc, 1.0, acc)?;
                        }
                    }
                    BinaryOp::Div => {
                        if needs(a) {
                            give(
                                grads,
                                a,
                                gs,
                                be.binary(BinaryOp::Div, gb, gs, bv.buffer(), bc)?,
                            )?;
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
                            let db = match Reduction::of_broadcast(bc) {
                                None => be.affine(&gyb, -1.0, 0.0)?,
                                Some(axis) => be.reduce(&gyb, gs, axis, -1.0)?,
                            };
                            give(grads, b, bv.shape(), db)?;
                        }
                    }
                }
            }
            Op::MulAdd { a, b, c, bc, alpha } => {
                let (bv, cv) = (val(b), val(c));
                let gb = g.buffer();
                if needs(c) {
                    match Reduction::of_broadcast(bc) {
                        None => self.accumulate_mul(
                            &mut grads[c],
                            gb,
                            gs,
                            bv.buffer(),
                            Broadcast::None,
                            alpha,
                            acc,
                        )?,
                        Some(axis) => {
                            let gbv =
                                be.binary(BinaryOp::Mul, gb, gs, bv.buffer(), Broadcast::None)?;
                            give(grads, c, cv.shape(), be.reduce(&gbv, gs, axis, alpha)?)?;
                        }
                    }
                }
                if needs(b) {
                    self.accumulate_mul(&mut grads[b], gb, gs, cv.buffer(), bc, alpha, acc)?;
                }
                if needs(a) {
                    self.accumulate(&mut grads[a], g, acc)?;
                }
            }
            Op::Reduce { x, alpha, .. } => {
                if needs(x) {
                    let xs = val(x).shape();
                    give(grads, x, xs, be.broadcast(g.buffer(), gs, xs, alpha)?)?;
                }
            }
            Op::SliceCols { x, c0 } => {
                if needs(x) {
                    let xs = val(x).shape();
                    give(grads, x, xs, be.embed_cols(g.buffer(), gs, c0, xs.cols)?)?;
                }
            }
            Op::ConcatCols { start, len } => {
                let mut c0 = 0;
                for &p in &self.concat_inputs[start..start + len] {
                    let ps = val(p).shape();
                    if needs(p) {
                        give(
                            grads,
                            p,
                            ps,
                            be.slice_cols(g.buffer(), gs, c0, c0 + ps.cols)?,
                        )?;
                    }
                    c0 += ps.cols;
                }
            }
            Op::RepeatRows { x, k } => {
                if needs(x) {
                    give(
                        grads,
                        x,
                        val(x).shape(),
                        be.sum_row_groups(g.buffer(), gs, k)?,
                    )?;
                }
            }
            Op::SumRowGroups { x, k } => {
                if needs(x) {
                    give(grads, x, val(x).shape(), be.repeat_rows(g.buffer(), gs, k)?)?;
                }
            }
            Op::TileRows { x, times } => {
                if needs(x) {
                    give(
                        grads,
                        x,
                        val(x).shape(),
                        be.sum_tiles(g.buffer(), gs, times)?,
                    )?;
                }
            }
            Op::SumTiles { x, times } => {
                if needs(x) {
                    give(
                        grads,
                        x,
                        val(x).shape(),
                        be.tile_rows(g.buffer(), gs, times)?,
                    )?;
                }
            }
            Op::Cast { x } => {
                if needs(x) {
                    give(grads, x, gs, be.cast(g.buffer(), val(x).dtype())?)?;
                }
            }
        }
        Ok(())
    }

    /// The VJP of y = f(x) (node `i`, input node `x`) for the gradient `g`: mostly
    /// g ⊙ f'(x) with f'(x) from backend kernels (reusing y where that is exact and
    /// stable), or read from a linked node ([`Graph::unary_many`]). Each derivative is
    /// itself a map with a VJP of its own, so a gradient or Laplacian built from these
    /// maps is differentiable once more.
    fn unary_vjp(
        &self,
        op: UnaryOp,
        i: usize,
        x: usize,
        deriv: Option<usize>,
        g: &Tensor<B>,
    ) -> Result<UnaryVjp<B::Buffer>> {
        use UnaryVjp::{Factor, Gradient, Value};
        let be = &self.backend;
        let s = g.shape();
        let (xb, yb, gb) = (
            self.nodes[x].value.buffer(),
            self.nodes[i].value.buffer(),
            g.buffer(),
        );
        let mul = |a: &B::Buffer, b: &B::Buffer| be.binary(BinaryOp::Mul, a, s, b, Broadcast::None);
        let div = |a: &B::Buffer, b: &B::Buffer| be.binary(BinaryOp::Div, a, s, b, Broadcast::None);
        // (sech²)' = −2 tanh·sech², with tanh from `t`.
        let sech2_factor = |t: &B::Buffer| mul(&be.affine(t, -2.0, 0.0)?, yb);
        if let Some(d) = deriv {
            let db = self.nodes[d].value.buffer();
            return Ok(match op {
                UnaryOp::Sech2 => Factor(sech2_factor(db)?),
                _ => Value(d),
            });
        }
        Ok(match op {
            UnaryOp::Neg => Gradient(be.affine(gb, -1.0, 0.0)?),
            UnaryOp::Square => Factor(be.affine(xb, 2.0, 0.0)?),
            UnaryOp::Abs => Factor(be.unary(UnaryOp::Sign, xb)?),
            UnaryOp::Sign => Gradient(be.full(s.len(), 0.0, g.dtype())?),
            // d(1/x) = −y².
            UnaryOp::Recip => {
                Gradient(be.affine(&mul(gb, &be.unary(UnaryOp::Square, yb)?)?, -1.0, 0.0)?)
            }
            UnaryOp::Exp => Value(i),
            UnaryOp::Log => Gradient(div(gb, xb)?),
            // d√x = 1/(2y).
            UnaryOp::Sqrt => Gradient(div(gb, &be.affine(yb, 2.0, 0.0)?)?),
            // tanh' = sech², from x (1 − y² cancels where |x| is large).
            UnaryOp::Tanh => Factor(be.unary(UnaryOp::Sech2, xb)?),
            UnaryOp::Sech2 => Factor(sech2_factor(&be.unary(UnaryOp::Tanh, xb)?)?),
            // sigmoid' = s·(1 − s) = s·sigmoid(−x).
            UnaryOp::Sigmoid => {
                let sm = be.unary(UnaryOp::Sigmoid, &be.unary(UnaryOp::Neg, xb)?)?;
                Factor(mul(yb, &sm)?)
            }
            UnaryOp::Silu => Factor(be.unary(UnaryOp::SiluPrime, xb)?),
            UnaryOp::SiluPrime => Factor(be.unary(UnaryOp::SiluSecond, xb)?),
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
                Factor(mul(&q, &bracket)?)
            }
            UnaryOp::Softplus => Factor(be.unary(UnaryOp::Sigmoid, xb)?),
            UnaryOp::LogCosh => Factor(be.unary(UnaryOp::Tanh, xb)?),
            UnaryOp::Sin => Factor(be.unary(UnaryOp::Cos, xb)?),
            // cos' = −sin.
            UnaryOp::Cos => Factor(be.affine(&be.unary(UnaryOp::Sin, xb)?, -1.0, 0.0)?),
        })
    }
}

/// What a unary map's VJP multiplies the incoming gradient g by, or the result.
enum UnaryVjp<Buf> {
    /// dx itself.
    Gradient(Buf),
    /// dx = g ⊙ this.
    Factor(Buf),
    /// dx = g ⊙ the value of this tape node.
    Value(usize),
}
