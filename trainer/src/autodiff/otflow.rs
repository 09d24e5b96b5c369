//! The OT-Flow potential (MATH.md §1) as a composition of graph ops: Φ, the gradient
//! ∇_sΦ by the closed-form backward sweep, and the exact Laplacian ΔₓΦ by the Jacobian
//! recursion in the batched Jᵀ layout.
//!
//! Because ∇Φ and ΔΦ are built from recorded ops, the parameter gradient of any loss
//! that contains them (the OT-Flow objective's NLL, transport cost and HJB penalty)
//! needs only first-order reverse mode; so does the adjoint with respect to the states.
//!
//! Layouts: a batch S is B × (d+1) (rows s = (x, t)); activations are B × m; the
//! per-sample Jacobians J_i ∈ R^{m×d} are held transposed and stacked,
//! Jᵀ ∈ R^{(B·d)×m} with row b·d + k = (sample b, direction k), so that applying K_i to
//! every sample's Jacobian is the single GEMM Jᵀ·K_iᵀ.

use socflow_runtime::nn::OtFlowParams;

use super::backend::{Backend, UnaryOp};
use super::error::{Error, Result};
use super::graph::{Gradients, Graph, Var};
use super::tensor::{DType, Shape, Tensor};

/// The OT-Flow parameters as graph values, shaped as in the original code:
/// K_0 m × (d+1), K_i m × m, b_i 1 × m, w 1 × m, A r × (d+1), c_weight 1 × (d+1),
/// c_bias 1 × 1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtFlowVars {
    /// State dimension d.
    pub d: usize,
    /// ResNet width m.
    pub m: usize,
    /// Number of ResNet layers nTh ≥ 2.
    pub n_th: usize,
    /// Rank r of A.
    pub r: usize,
    /// `N.layers.i.weight`.
    pub k: Vec<Var>,
    /// `N.layers.i.bias`.
    pub b: Vec<Var>,
    /// `w.weight`.
    pub w: Var,
    /// `A`.
    pub a: Var,
    /// `c.weight`.
    pub c_weight: Var,
    /// `c.bias`.
    pub c_bias: Var,
}

/// The results of [`potential`] for a batch of B states.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OtFlowOutputs {
    /// Φ, B × 1.
    pub phi: Var,
    /// ∇_sΦ = (∇ₓΦ, ∂ₜΦ), B × (d+1).
    pub grad: Var,
    /// ΔₓΦ (the trace of the Hessian over x), B × 1, when asked for.
    pub lap: Option<Var>,
}

impl OtFlowOutputs {
    /// ∇ₓΦ, B × d (a slice of [`grad`](OtFlowOutputs::grad)).
    pub fn grad_x<B: Backend>(&self, g: &mut Graph<B>) -> Result<Var> {
        let cols = g.shape(self.grad)?.cols;
        g.slice_cols(self.grad, 0, cols.saturating_sub(1))
    }

    /// ∂ₜΦ, B × 1 (the last column of [`grad`](OtFlowOutputs::grad)).
    pub fn dt<B: Backend>(&self, g: &mut Graph<B>) -> Result<Var> {
        let cols = g.shape(self.grad)?.cols;
        g.slice_cols(self.grad, cols.saturating_sub(1), cols)
    }
}

fn expect_shape<B: Backend>(
    g: &Graph<B>,
    v: Var,
    name: &'static str,
    expected: Shape,
) -> Result<()> {
    let s = g.shape(v)?;
    if s == expected {
        Ok(())
    } else {
        Err(Error::Shape {
            op: name,
            lhs: s,
            rhs: expected,
        })
    }
}

impl OtFlowVars {
    /// Records the parameters as leaves of `dtype` (each value rounded once).
    pub fn new<B: Backend>(
        g: &mut Graph<B>,
        p: &OtFlowParams,
        dtype: DType,
        requires_grad: bool,
    ) -> Result<Self> {
        let (d, m, n_th, r) = (p.d, p.m, p.n_th, p.r);
        if d == 0 || m == 0 || n_th < 2 || r == 0 {
            return Err(Error::InvalidArgument(format!(
                "OT-Flow sizes d = {d}, m = {m}, nTh = {n_th}, r = {r} (need d, m, r ≥ 1, nTh ≥ 2)"
            )));
        }
        if p.k.len() != n_th || p.b.len() != n_th {
            return Err(Error::InvalidArgument(format!(
                "OT-Flow: {} weight matrices and {} biases for nTh = {n_th}",
                p.k.len(),
                p.b.len()
            )));
        }
        let mut k = Vec::with_capacity(n_th);
        let mut b = Vec::with_capacity(n_th);
        for i in 0..n_th {
            let cols = if i == 0 { d + 1 } else { m };
            k.push(g.leaf_f64(m, cols, &p.k[i], dtype, requires_grad)?);
            b.push(g.leaf_f64(1, m, &p.b[i], dtype, requires_grad)?);
        }
        let w = g.leaf_f64(1, m, &p.w, dtype, requires_grad)?;
        let a = g.leaf_f64(r, d + 1, &p.a, dtype, requires_grad)?;
        let c_weight = g.leaf_f64(1, d + 1, &p.c_weight, dtype, requires_grad)?;
        let c_bias = g.leaf_f64(1, 1, &[p.c_bias], dtype, requires_grad)?;
        Ok(OtFlowVars {
            d,
            m,
            n_th,
            r,
            k,
            b,
            w,
            a,
            c_weight,
            c_bias,
        })
    }

    /// Every parameter handle, in the order K_0..K_{nTh−1}, b_0..b_{nTh−1}, w, A,
    /// c_weight, c_bias.
    pub fn all(&self) -> Vec<Var> {
        let mut v = self.k.clone();
        v.extend_from_slice(&self.b);
        v.extend_from_slice(&[self.w, self.a, self.c_weight, self.c_bias]);
        v
    }

    /// Checks that every handle has the shape its sizes require.
    pub fn validate<B: Backend>(&self, g: &Graph<B>) -> Result<()> {
        let (d, m, r) = (self.d, self.m, self.r);
        if d == 0 || m == 0 || self.n_th < 2 || r == 0 {
            return Err(Error::InvalidArgument(format!(
                "OT-Flow sizes d = {d}, m = {m}, nTh = {}, r = {r}",
                self.n_th
            )));
        }
        if self.k.len() != self.n_th || self.b.len() != self.n_th {
            return Err(Error::InvalidArgument(format!(
                "OT-Flow: {} weight matrices and {} biases for nTh = {}",
                self.k.len(),
                self.b.len(),
                self.n_th
            )));
        }
        for (i, (&k, &b)) in self.k.iter().zip(&self.b).enumerate() {
            let cols = if i == 0 { d + 1 } else { m };
            expect_shape(g, k, "OT-Flow K_i", Shape::new(m, cols))?;
            expect_shape(g, b, "OT-Flow b_i", Shape::new(1, m))?;
        }
        expect_shape(g, self.w, "OT-Flow w", Shape::new(1, m))?;
        expect_shape(g, self.a, "OT-Flow A", Shape::new(r, d + 1))?;
        expect_shape(g, self.c_weight, "OT-Flow c.weight", Shape::new(1, d + 1))?;
        expect_shape(g, self.c_bias, "OT-Flow c.bias", Shape::SCALAR)
    }

    /// The gradients of the parameters, as an [`OtFlowParams`] in f64 (for an optimizer
    /// step or a comparison); every parameter must have one.
    pub fn gradients<B: Backend>(&self, backend: &B, grads: &Gradients<B>) -> Result<OtFlowParams> {
        let get = |v: Var| -> Result<Vec<f64>> {
            grads
                .get(v)
                .ok_or_else(|| {
                    Error::InvalidArgument("OT-Flow parameter without a gradient".into())
                })?
                .to_f64(backend)
        };
        Ok(OtFlowParams {
            d: self.d,
            m: self.m,
            n_th: self.n_th,
            r: self.r,
            k: self.k.iter().map(|&v| get(v)).collect::<Result<_>>()?,
            b: self.b.iter().map(|&v| get(v)).collect::<Result<_>>()?,
            w: get(self.w)?,
            a: get(self.a)?,
            c_weight: get(self.c_weight)?,
            c_bias: get(self.c_bias)?[0],
        })
    }
}

/// Builds Φ(S), ∇_sΦ(S) and (with `laplacian`) ΔₓΦ(S) for a batch `s` (B × (d+1), rows
/// (x, t)) from recorded ops, following MATH.md §1:
///
/// forward: u_0 = σ(S K_0ᵀ + b_0), u_i = u_{i−1} + η σ(u_{i−1} K_iᵀ + b_i);
/// Φ = N w + ½‖S Aᵀ‖² + S c_wᵀ + c_b;
/// sweep: z_{nTh} = w, z_i = z_{i+1} + η (tanh(pre_i) ⊙ z_{i+1}) K_i,
/// z_0 = (tanh(pre_0) ⊙ z_1) K_0, ∇_sΦ = z_0 + (S Aᵀ) A + c_w;
/// trace: Σ_h (sech²(pre_0) ⊙ z_1)_h Σ_{k<d} K_0\[h,k\]², then for each layer i ≥ 1
/// and direction k < d (J\[k\] is B × m: column k of each sample's Jacobian)
/// KJ\[k\] = J\[k\] K_iᵀ, tr += η Σ_h (sech²(pre_i) ⊙ z_{i+1})_h Σ_k KJ\[k\]²_h,
/// J\[k\] += η KJ\[k\] ⊙ tanh(pre_i), with J_0\[k\] = tanh(pre_0) ⊙ K_0\[:, k\]ᵀ;
/// ΔₓΦ = tr + Σ_{j<d} (AᵀA)_{jj}.
///
/// The ops are the fused ones where they exist: each layer is one
/// [`matmul_add`](Graph::matmul_add) (x·Kᵀ + b), σ, tanh and sech² of each
/// pre-activation come from one [`unary_many`](Graph::unary_many) (so their VJPs reuse
/// each other's values), z_{nTh} = w stays a 1 × m row broadcast over the batch, and
/// the sweep's z_{i+1} + η·(…)K_i is one [`matmul_add`](Graph::matmul_add).
pub fn potential<B: Backend>(
    g: &mut Graph<B>,
    p: &OtFlowVars,
    s: Var,
    laplacian: bool,
) -> Result<OtFlowOutputs> {
    p.validate(g)?;
    let (d, n_th) = (p.d, p.n_th);
    let ss = g.shape(s)?;
    if ss.cols != d + 1 {
        return Err(Error::Shape {
            op: "OT-Flow batch",
            lhs: ss,
            rhs: Shape::new(ss.rows, d + 1),
        });
    }
    if ss.rows == 0 {
        return Err(Error::InvalidShape {
            op: "OT-Flow batch",
            shape: ss,
            message: "no state".into(),
        });
    }
    let eta = 1.0 / (n_th - 1) as f64;
    let maps: &[UnaryOp] = if laplacian {
        &[UnaryOp::LogCosh, UnaryOp::Tanh, UnaryOp::Sech2]
    } else {
        &[UnaryOp::LogCosh, UnaryOp::Tanh]
    };

    // Forward pass: σ, σ' = tanh and (for the trace) σ'' = sech² of every
    // pre-activation, and the ResNet state.
    let mut tanh = Vec::with_capacity(n_th);
    let mut sech2 = Vec::with_capacity(n_th);
    let mut u = s;
    for i in 0..n_th {
        let pre = g.matmul_add(p.b[i], u, p.k[i], false, true, 1.0)?;
        let act = g.unary_many(pre, maps)?;
        tanh.push(act[1]);
        if laplacian {
            sech2.push(act[2]);
        }
        u = if i == 0 {
            act[0]
        } else {
            g.add_scaled(u, act[0], eta)?
        };
    }

    // Φ = c_b + N(s)·w + c_wᵀ s + ½‖A s‖².
    let sa = g.matmul(s, p.a, false, true)?;
    let sa2 = g.square(sa)?;
    let sa2s = g.sum_cols(sa2)?;
    let phi = g.matmul_add(p.c_bias, u, p.w, false, true, 1.0)?;
    let phi = g.matmul_add(phi, s, p.c_weight, false, true, 1.0)?;
    let phi = g.add_scaled(phi, sa2s, 0.5)?;

    // Backward sweep: z[i] for i = 1..=nTh (z[0] unused), z[nTh] = w as a row.
    let mut z = vec![p.w; n_th + 1];
    for i in (1..n_th).rev() {
        let tz = g.mul(tanh[i], z[i + 1])?;
        z[i] = g.matmul_add(z[i + 1], tz, p.k[i], false, false, eta)?;
    }
    let tz0 = g.mul(tanh[0], z[1])?;
    let grad = g.matmul_add(p.c_weight, tz0, p.k[0], false, false, 1.0)?;
    let grad = g.matmul_add(grad, sa, p.a, false, false, 1.0)?;

    let lap = if laplacian {
        Some(laplacian_of(g, p, &tanh, &sech2, &z)?)
    } else {
        None
    };
    Ok(OtFlowOutputs { phi, grad, lap })
}

/// The exact Laplacian from tanh and sech² of the forward pre-activations and the
/// sweep's z (z[nTh] = w, a 1 × m row).
fn laplacian_of<B: Backend>(
    g: &mut Graph<B>,
    p: &OtFlowVars,
    tanh: &[Var],
    sech2: &[Var],
    z: &[Var],
) -> Result<Var> {
    let (d, n_th) = (p.d, p.n_th);
    let eta = 1.0 / (n_th - 1) as f64;
    let dtype = g.dtype(p.k[0])?;

    // Layer 0: Σ_h (σ''(pre_0) ⊙ z_1)_h · Σ_{k<d} K_0[h, k]².
    let k0x = g.slice_cols(p.k[0], 0, d)?;
    let k0x2 = g.square(k0x)?;
    let k0sq = g.sum_cols(k0x2)?;
    let s0z = g.mul(sech2[0], z[1])?;
    let mut tr = g.matmul(s0z, k0sq, false, false)?;

    // The Jacobian by input direction: J[k] (B × m) holds column k of every sample's
    // J_i (row b = ∂u_i/∂x_k at sample b), so that every op is on B × m values and no
    // row repeats or tiles are needed. J_0[k] = tanh(pre_0) ⊙ K_0[:, k]ᵀ, with the row
    // K_0[:, k]ᵀ = e_k K_0ᵀ from a GEMM with the constant unit row e_k. With nTh = 2,
    // J_0[k] is only multiplied by K_1ᵀ, and J_0[k]·K_1ᵀ = tanh(pre_0)·(K_1 ⊙ K_0[:, k]ᵀ)ᵀ
    // (K_1 with its columns scaled, m × m): J_0 is never formed.
    let mut k0rows = Vec::with_capacity(d);
    for k in 0..d {
        let mut e = vec![0.0; d + 1];
        e[k] = 1.0;
        let e = Tensor::from_f64(g.backend(), 1, d + 1, &e, dtype)?;
        let e = g.constant(e);
        k0rows.push(g.matmul(e, p.k[0], false, true)?);
    }
    let form_jac = n_th > 2;
    let mut jac = Vec::with_capacity(d);
    if form_jac {
        for &row in &k0rows {
            jac.push(g.mul(tanh[0], row)?);
        }
    }

    for i in 1..n_th {
        // KJ[k] = J[k] K_iᵀ; Σ_k KJ[k]² summed over directions in order k = 0, 1, ….
        let mut kj = Vec::with_capacity(d);
        let mut sq: Option<Var> = None;
        for k in 0..d {
            let kjk = if form_jac {
                g.matmul(jac[k], p.k[i], false, true)?
            } else {
                let scaled = g.mul(p.k[i], k0rows[k])?;
                g.matmul(tanh[0], scaled, false, true)?
            };
            sq = Some(match sq {
                None => g.square(kjk)?,
                Some(acc) => g.mul_add(acc, kjk, kjk, 1.0)?,
            });
            kj.push(kjk);
        }
        let Some(sq) = sq else {
            return Err(Error::InvalidArgument("OT-Flow: d = 0".into()));
        };
        // Σ_h (Σ_k KJ[k]² ⊙ sech²(pre_i))_h z_{i+1,h}: a product with the row w for the
        // last layer, a row sum otherwise.
        let sqs = g.mul(sq, sech2[i])?;
        let term = if i + 1 == n_th {
            g.matmul(sqs, z[i + 1], false, true)?
        } else {
            let prod = g.mul(sqs, z[i + 1])?;
            g.sum_cols(prod)?
        };
        tr = g.add_scaled(tr, term, eta)?;
        if i + 1 < n_th {
            for (jk, &kjk) in jac.iter_mut().zip(&kj) {
                *jk = g.mul_add(*jk, kjk, tanh[i], eta)?;
            }
        }
    }

    // + trace((AᵀA)[0:d, 0:d]) = Σ_{k, j<d} A_kj².
    let ax = g.slice_cols(p.a, 0, d)?;
    let ax2 = g.square(ax)?;
    let tra = g.sum(ax2)?;
    g.add(tr, tra)
}
