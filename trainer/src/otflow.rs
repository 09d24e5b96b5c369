//! OT-Flow (Onken et al. 2021) density estimation: the original code's objective
//! (EmoryMLIP/OT-Flow, `src/OTFlowProblem.py`), its parameter gradient through the
//! discretize-then-optimize solver, a seeded training loop and the export to a runtime
//! potential artifact.
//!
//! # The problem (MATH.md §2)
//!
//! The augmented state of a sample is y = [z, l, c_L, c_H] ∈ R^{d+3} (a batch is one
//! B × (d+3) tensor, in these columns), y(0) = [x, 0, 0, 0] for a data point x, and the
//! right-hand side is the original `odefun`:
//!
//! ```text
//! dz/dt   = −∇ₓΦ(z, t)/α₀
//! dl/dt   = −ΔₓΦ(z, t)/α₀                       (exact Laplacian, MATH.md §1)
//! dc_L/dt = ½‖dz/dt‖²
//! dc_H/dt = |−∂ₜΦ(z, t) + α₀·½‖dz/dt‖²|
//! ```
//!
//! integrated with RK4 on `nt` equal steps over t ∈ [0, 1] (the grid accumulated as
//! the original does, t_{k+1} = t_k + 1/nt). With the per-sample
//! NLL = ½‖z(1)‖² + (d/2)·ln 2π − l(1), the costs are the batch means
//!
//! ```text
//! costL = mean c_L(1),   costC = mean NLL,   costR = mean c_H(1),
//! J     = α₀·costL + α₁·costC + α₂·costR
//! ```
//!
//! with α = (α₀, α₁, α₂) in the original's order (`alph`). These reproduce the original
//! code's float64 values (`shared/reference/otflow_phi_golden.json`) to round-off.
//!
//! # Gradients
//!
//! [`OtFlowProblem::costs_and_gradient`] integrates with [`Solver::forward`] and pulls
//! the cotangent ∂J/∂y(1) (z: α₁z/B, l: −α₁/B, c_L: α₀/B, c_H: α₂/B) back with
//! [`Solver::backward`]: the exact gradient of the discrete objective with respect to
//! every OT-Flow parameter, in any [`PrecisionPolicy`] (f64, f32, or bf16/f16 with
//! dynamic adjoint scaling).
//!
//! # Initialization
//!
//! As the original `Phi.__init__` (src/Phi.py): the ResNet layers are PyTorch
//! `nn.Linear` defaults, K_i and b_i uniform on ±1/√fan_in (fan_in = d+1 for the
//! opening layer, m for the others), and layers 2 … nTh−1 are *copies* of layer 1
//! (`copy.deepcopy`); A is Xavier-uniform, U(±√(6/(r + d + 1))); w = 1 (ones);
//! c.weight = 0 and c.bias = 0. Draws come from [`INIT_STREAM`] keyed by the seed.
//!
//! # Training defaults
//!
//! [`OtFlowConfig::default`] follows the paper's 2-D toy settings: m = 32, nTh = 2,
//! RK4 with 8 steps in training and 12 in validation, batch 5000, α = (1, 30, 1), Adam
//! with lr 0.1 halved every 500 iterations. (The public `trainToyOTflow.py` script's
//! own defaults differ: α = (1, 100, 5), batch 4096, lr halved every 100 iterations,
//! nt_val = 8.) The original trains on a fixed batch resampled from the toy generator
//! every 25 iterations; here the training set is given and mini-batches are drawn from
//! it with the data module's [`BatchSampler`].
//!
//! # Export
//!
//! The runtime's potential field is v = −∇ₓΦ, while the trained flow moves with
//! −∇ₓΦ/α₀. [`TrainedOtFlow::to_artifact`] therefore exports Φ/α₀: w, c.weight and
//! c.bias divided by α₀ and A by √α₀ (Φ is linear in w, c and quadratic in A), so that
//! the runtime's field and its divergence are the trained dz/dt and dl/dt.

use serde::{Deserialize, Serialize};
use socflow_runtime::artifact::{Artifact, Normalization, Provenance};
use socflow_runtime::brownian::{Stream, MAX_SAMPLE};
use socflow_runtime::nn::otflow::OtFlow;
use socflow_runtime::nn::OtFlowParams;

use crate::autodiff::otflow::{potential, OtFlowVars};
use crate::autodiff::{self, Backend, Cpu, DType, Graph, Tensor, Var};
use crate::checkpoint::Checkpointing;
use crate::data::normalized_sets;
use crate::data::rng::{Draws, FIRST_FREE_AFTER_DATA};
use crate::data::{BatchSampler, Dataset};
use crate::device::Device;
use crate::dto::{Cotangents, Method, PrecisionPolicy, Rhs, Solver, Trajectory};
use crate::error::{Error, Result};
use crate::optim::{
    check_objective, optimizer_step, validation_due, Adam, AdamConfig, ParamSet, Schedule,
    Scheduler,
};

/// Stream of the parameters' initial draws.
pub const INIT_STREAM: Stream = Stream(FIRST_FREE_AFTER_DATA.0 + 16);

/// ½·ln 2π, the per-coordinate constant of the standard normal's NLL.
const HALF_LN_2PI: f64 = 0.918_938_533_204_672_8;

/// The precision policy of training and validation solves, by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in f64 ([`PrecisionPolicy::f64`]).
    F64,
    /// Everything in f32 ([`PrecisionPolicy::f32`]).
    F32,
    /// Network in bf16, state in f32, dynamic scaling ([`PrecisionPolicy::bf16`]).
    Bf16,
    /// Network in f16, state in f32, dynamic scaling ([`PrecisionPolicy::f16`]).
    F16,
}

impl Precision {
    /// The solver's precision policy.
    pub fn policy(self) -> PrecisionPolicy {
        match self {
            Precision::F64 => PrecisionPolicy::f64(),
            Precision::F32 => PrecisionPolicy::f32(),
            Precision::Bf16 => PrecisionPolicy::bf16(),
            Precision::F16 => PrecisionPolicy::f16(),
        }
    }
}

/// The rank of A the original code uses: min(10, d + 1).
pub fn default_rank(d: usize) -> usize {
    (d + 1).min(10)
}

/// The right-hand side of the augmented OT-Flow state (the original `odefun`), for
/// the DTO [`Solver`]: `y` is B × (d+3) = [z, l, c_L, c_H], the parameters arrive in
/// the order of [`OtFlowVars::all`] (K_0 … K_{nTh−1}, b_0 … b_{nTh−1}, w, A, c.weight,
/// c.bias), shaped as [`OtFlowProblem::param_tensors`] makes them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OtFlowRhs {
    /// State dimension d.
    pub d: usize,
    /// ResNet width m.
    pub m: usize,
    /// ResNet layers nTh.
    pub n_th: usize,
    /// Rank of A.
    pub r: usize,
    /// α₀, the transport-cost weight that also scales the velocity.
    pub alpha0: f64,
}

impl OtFlowRhs {
    /// The right-hand side for parameters of `p`'s sizes.
    pub fn new(p: &OtFlowParams, alpha0: f64) -> Self {
        OtFlowRhs {
            d: p.d,
            m: p.m,
            n_th: p.n_th,
            r: p.r,
            alpha0,
        }
    }

    pub(crate) fn vars(&self, params: &[Var]) -> autodiff::Result<OtFlowVars> {
        let n = self.n_th;
        if params.len() != 2 * n + 4 {
            return Err(autodiff::Error::InvalidArgument(format!(
                "OT-Flow right-hand side: {} parameters, expected {}",
                params.len(),
                2 * n + 4
            )));
        }
        Ok(OtFlowVars {
            d: self.d,
            m: self.m,
            n_th: n,
            r: self.r,
            k: params[..n].to_vec(),
            b: params[n..2 * n].to_vec(),
            w: params[2 * n],
            a: params[2 * n + 1],
            c_weight: params[2 * n + 2],
            c_bias: params[2 * n + 3],
        })
    }
}

impl<B: Backend> Rhs<B> for OtFlowRhs {
    fn eval(&self, g: &mut Graph<B>, t: Var, y: Var, params: &[Var]) -> autodiff::Result<Var> {
        let vars = self.vars(params)?;
        let d = self.d;
        let shape = g.shape(y)?;
        if shape.cols != d + 3 {
            return Err(autodiff::Error::InvalidArgument(format!(
                "OT-Flow state has {} columns, expected d + 3 = {}",
                shape.cols,
                d + 3
            )));
        }
        let x = g.slice_cols(y, 0, d)?;
        let (gx, lap, dt) = potential_terms(g, &vars, x, t)?;
        let inv = -1.0 / self.alpha0;
        let dx = g.scale(gx, inv)?;
        let dl = g.scale(lap, inv)?;
        let dx2 = g.square(dx)?;
        let sq = g.sum_cols(dx2)?;
        let dv = g.scale(sq, 0.5)?;
        let a0dv = g.scale(dv, self.alpha0)?;
        let res = g.sub(a0dv, dt)?;
        let dr = g.abs(res)?;
        g.concat_cols(&[dx, dl, dv, dr])
    }
}

/// ∇ₓΦ (B × d), ΔₓΦ (B × 1) and ∂ₜΦ (B × 1) of the potential at the states `x`
/// (B × d) and the time `t` (1 × 1): what every right-hand side moving particles by
/// −∇ₓΦ reads (OT-Flow's here, the crowd's in [`crate::mfg`]).
pub(crate) fn potential_terms<B: Backend>(
    g: &mut Graph<B>,
    vars: &OtFlowVars,
    x: Var,
    t: Var,
) -> autodiff::Result<(Var, Var, Var)> {
    let rows = g.shape(x)?.rows;
    let tt = g.tile_rows(t, rows)?;
    let s = g.concat_cols(&[x, tt])?;
    let out = potential(g, vars, s, true)?;
    let lap = out.lap.ok_or_else(|| {
        autodiff::Error::InvalidArgument("OT-Flow potential without a Laplacian".into())
    })?;
    let gx = out.grad_x(g)?;
    let dt = out.dt(g)?;
    Ok((gx, lap, dt))
}

/// The three costs of the OT-Flow objective and J (batch means, see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct OtFlowCosts {
    /// Transport cost, mean c_L(1) (`costL`).
    pub cost_l: f64,
    /// Mean negative log-likelihood (`costC`).
    pub cost_c: f64,
    /// HJB penalty, mean c_H(1) (`costR`).
    pub cost_r: f64,
    /// J = α₀·costL + α₁·costC + α₂·costR.
    pub j: f64,
}

/// The OT-Flow objective on a fixed RK4 grid: weights α, number of steps and the DTO
/// solver (with its precision policy).
#[derive(Clone, Debug, PartialEq)]
pub struct OtFlowProblem {
    /// (α₀, α₁, α₂): weights of (costL, costC, costR); α₀ also scales the velocity.
    pub alpha: [f64; 3],
    /// RK4 steps on [0, 1].
    pub nt: usize,
    /// The DTO solver (its method is RK4 unless changed).
    pub solver: Solver,
}

fn check_params(p: &OtFlowParams) -> Result<()> {
    OtFlow::<f64>::new(p)?;
    Ok(())
}

impl OtFlowProblem {
    /// RK4 with `nt` steps under `policy`.
    ///
    /// Errors: [`Error::InvalidArgument`] for `nt` = 0, α₀ ≤ 0 or a non-finite α, or an
    /// invalid policy.
    pub fn new(alpha: [f64; 3], nt: usize, policy: PrecisionPolicy) -> Result<Self> {
        if nt == 0 {
            return Err(Error::InvalidArgument("OT-Flow: nt = 0 time steps".into()));
        }
        if !alpha.iter().all(|a| a.is_finite()) || alpha[0] <= 0.0 {
            return Err(Error::InvalidArgument(format!(
                "OT-Flow: α = {alpha:?} (need finite values and α₀ > 0)"
            )));
        }
        policy.validate()?;
        Ok(OtFlowProblem {
            alpha,
            nt,
            solver: Solver::new(Method::Rk4, policy),
        })
    }

    /// The time grid t_0 = 0, t_{k+1} = t_k + 1/nt (accumulated as the original does).
    pub fn times(&self) -> Vec<f64> {
        let h = 1.0 / self.nt as f64;
        let mut t = Vec::with_capacity(self.nt + 1);
        let mut tk = 0.0;
        t.push(tk);
        for _ in 0..self.nt {
            tk += h;
            t.push(tk);
        }
        t
    }

    /// The parameters as f64 tensors in the order of [`OtFlowVars::all`]: K_i m × cols,
    /// b_i 1 × m, w 1 × m, A r × (d+1), c.weight 1 × (d+1), c.bias 1 × 1.
    pub fn param_tensors<B: Backend>(backend: &B, p: &OtFlowParams) -> Result<Vec<Tensor<B>>> {
        check_params(p)?;
        let (d, m) = (p.d, p.m);
        let mut out = Vec::with_capacity(2 * p.n_th + 4);
        for (i, k) in p.k.iter().enumerate() {
            let cols = if i == 0 { d + 1 } else { m };
            out.push(Tensor::from_f64(backend, m, cols, k, DType::F64)?);
        }
        for b in &p.b {
            out.push(Tensor::from_f64(backend, 1, m, b, DType::F64)?);
        }
        out.push(Tensor::from_f64(backend, 1, m, &p.w, DType::F64)?);
        out.push(Tensor::from_f64(backend, p.r, d + 1, &p.a, DType::F64)?);
        out.push(Tensor::from_f64(
            backend,
            1,
            d + 1,
            &p.c_weight,
            DType::F64,
        )?);
        out.push(Tensor::from_f64(backend, 1, 1, &[p.c_bias], DType::F64)?);
        Ok(out)
    }

    fn initial_state<B: Backend>(backend: &B, d: usize, x: &[f64]) -> Result<Tensor<B>> {
        if x.is_empty() || x.len() % d != 0 {
            return Err(Error::InvalidArgument(format!(
                "OT-Flow: {} values are not a nonempty batch of dimension {d}",
                x.len()
            )));
        }
        let n = x.len() / d;
        let mut y = vec![0.0; n * (d + 3)];
        for (row, xr) in y.chunks_exact_mut(d + 3).zip(x.chunks_exact(d)) {
            row[..d].copy_from_slice(xr);
        }
        Ok(Tensor::from_f64(backend, n, d + 3, &y, DType::F64)?)
    }

    fn integrate<B: Backend>(
        &self,
        g: &mut Graph<B>,
        p: &OtFlowParams,
        params: &[Tensor<B>],
        x: &[f64],
    ) -> Result<Trajectory<B>> {
        let y0 = Self::initial_state(g.backend(), p.d, x)?;
        let rhs = OtFlowRhs::new(p, self.alpha[0]);
        Ok(self.solver.forward(g, &rhs, &y0, &self.times(), params)?)
    }

    /// The final augmented states [z(1), l(1), c_L(1), c_H(1)] of the batch `x`
    /// (row-major B × d), row-major B × (d+3), in f64.
    pub fn final_states<B: Backend>(
        &self,
        g: &mut Graph<B>,
        p: &OtFlowParams,
        x: &[f64],
    ) -> Result<Vec<f64>> {
        let params = Self::param_tensors(g.backend(), p)?;
        let traj = self.integrate(g, p, &params, x)?;
        Ok(traj.final_state().to_f64(g.backend())?)
    }

    /// The per-sample negative log-likelihood ½‖z(1)‖² + (d/2)·ln 2π − l(1) of the
    /// batch `x` under the model (the flow's coordinates).
    pub fn nll<B: Backend>(
        &self,
        g: &mut Graph<B>,
        p: &OtFlowParams,
        x: &[f64],
    ) -> Result<Vec<f64>> {
        let y = self.final_states(g, p, x)?;
        Ok(y.chunks_exact(p.d + 3)
            .map(|r| nll_of_row(r, p.d))
            .collect())
    }

    /// The costs and J of the batch `x`.
    pub fn costs<B: Backend>(
        &self,
        g: &mut Graph<B>,
        p: &OtFlowParams,
        x: &[f64],
    ) -> Result<OtFlowCosts> {
        let y = self.final_states(g, p, x)?;
        Ok(self.costs_of(&y, p.d))
    }

    fn costs_of(&self, y: &[f64], d: usize) -> OtFlowCosts {
        let n = (y.len() / (d + 3)) as f64;
        let (mut cl, mut cc, mut cr) = (0.0, 0.0, 0.0);
        for r in y.chunks_exact(d + 3) {
            cc += nll_of_row(r, d);
            cl += r[d + 1];
            cr += r[d + 2];
        }
        let (cl, cc, cr) = (cl / n, cc / n, cr / n);
        let a = self.alpha;
        OtFlowCosts {
            cost_l: cl,
            cost_c: cc,
            cost_r: cr,
            j: a[0] * cl + a[1] * cc + a[2] * cr,
        }
    }

    /// The costs of the batch `x` and the gradient of J with respect to every
    /// parameter (as an [`OtFlowParams`] of gradients), by the discrete adjoint of the
    /// RK4 solve.
    ///
    /// Errors: bad parameters or batch; the solver's errors (non-finite cotangents,
    /// failed adjoint scaling).
    pub fn costs_and_gradient<B: Backend>(
        &self,
        g: &mut Graph<B>,
        p: &OtFlowParams,
        x: &[f64],
    ) -> Result<(OtFlowCosts, OtFlowParams)> {
        let params = Self::param_tensors(g.backend(), p)?;
        let traj = self.integrate(g, p, &params, x)?;
        let d = p.d;
        let y = traj.final_state().to_f64(g.backend())?;
        let costs = self.costs_of(&y, d);
        let n = y.len() / (d + 3);
        let inv = 1.0 / n as f64;
        let a = self.alpha;
        let mut cot = vec![0.0; y.len()];
        for (c, r) in cot.chunks_exact_mut(d + 3).zip(y.chunks_exact(d + 3)) {
            for k in 0..d {
                c[k] = a[1] * r[k] * inv;
            }
            c[d] = -a[1] * inv;
            c[d + 1] = a[0] * inv;
            c[d + 2] = a[2] * inv;
        }
        let cot = Tensor::from_f64(g.backend(), n, d + 3, &cot, DType::F64)?;
        let rhs = OtFlowRhs::new(p, a[0]);
        let grad =
            self.solver
                .backward(g, &rhs, &traj, &params, &Cotangents::terminal(cot), false)?;
        let gp: Vec<Vec<f64>> = grad
            .params
            .iter()
            .map(|t| Ok(t.to_f64(g.backend())?))
            .collect::<Result<_>>()?;
        Ok((costs, params_from_flat(p, gp)?))
    }
}

fn nll_of_row(r: &[f64], d: usize) -> f64 {
    0.5 * r[..d].iter().map(|v| v * v).sum::<f64>() + d as f64 * HALF_LN_2PI - r[d]
}

/// Rebuilds an [`OtFlowParams`] of `like`'s sizes from flat arrays in the order of
/// [`param_names`] (the order of [`to_param_set`]'s values and of the solver's
/// parameter gradients): what an optimizer working on a [`ParamSet`] turns back into a
/// potential.
///
/// Errors: [`Error::InvalidArgument`] for the wrong number of arrays (the sizes are
/// checked by the potential's consumers).
pub fn params_from_flat(like: &OtFlowParams, mut v: Vec<Vec<f64>>) -> Result<OtFlowParams> {
    let n = like.n_th;
    if v.len() != 2 * n + 4 || v[2 * n + 3].len() != 1 {
        return Err(Error::InvalidArgument(format!(
            "OT-Flow: {} parameter arrays, expected {}",
            v.len(),
            2 * n + 4
        )));
    }
    let c_bias = v[2 * n + 3][0];
    let c_weight = std::mem::take(&mut v[2 * n + 2]);
    let a = std::mem::take(&mut v[2 * n + 1]);
    let w = std::mem::take(&mut v[2 * n]);
    let b = v[n..2 * n].to_vec();
    v.truncate(n);
    Ok(OtFlowParams {
        d: like.d,
        m: like.m,
        n_th: n,
        r: like.r,
        k: v,
        b,
        w,
        a,
        c_weight,
        c_bias,
    })
}

/// The parameters' names (as in the original's `state_dict`), in the order of
/// [`OtFlowVars::all`].
pub fn param_names(n_th: usize) -> Vec<String> {
    let mut names: Vec<String> = (0..n_th).map(|i| format!("N.layers.{i}.weight")).collect();
    names.extend((0..n_th).map(|i| format!("N.layers.{i}.bias")));
    names.extend(["w.weight", "A", "c.weight", "c.bias"].map(String::from));
    names
}

/// The parameters as an optimizer [`ParamSet`] (names of [`param_names`]).
pub fn to_param_set(p: &OtFlowParams) -> Result<ParamSet> {
    check_params(p)?;
    let (d, m) = (p.d, p.m);
    let mut set = ParamSet::new();
    let names = param_names(p.n_th);
    let mut it = names.into_iter();
    let mut next = || it.next().unwrap_or_default();
    for (i, k) in p.k.iter().enumerate() {
        let cols = if i == 0 { d + 1 } else { m };
        set.push(next(), vec![m, cols], k.clone())?;
    }
    for b in &p.b {
        set.push(next(), vec![m], b.clone())?;
    }
    set.push(next(), vec![1, m], p.w.clone())?;
    set.push(next(), vec![p.r, d + 1], p.a.clone())?;
    set.push(next(), vec![1, d + 1], p.c_weight.clone())?;
    set.push(next(), vec![1], vec![p.c_bias])?;
    Ok(set)
}

/// The original's initialization (see the module docs) for dimension `d`, width `m`,
/// `n_th` layers and rank min(10, d+1), drawn from `seed`.
///
/// Errors: [`Error::InvalidArgument`] for d = 0, m = 0 or nTh < 2.
pub fn init_params(d: usize, m: usize, n_th: usize, seed: u64) -> Result<OtFlowParams> {
    init_params_with_rank(d, m, n_th, default_rank(d), seed)
}

/// [`init_params`] with the rank r of A chosen (1 ≤ r ≤ d + 1): the quadratic part
/// ½‖A(x, t)‖² curves Φ in at most r directions, which a value function with curvature
/// in every direction (a target to reach in 100-D) needs all of.
///
/// Errors: [`Error::InvalidArgument`] for d = 0, m = 0, nTh < 2 or r outside 1..=d+1.
pub fn init_params_with_rank(
    d: usize,
    m: usize,
    n_th: usize,
    r: usize,
    seed: u64,
) -> Result<OtFlowParams> {
    if d == 0 || m == 0 || n_th < 2 || r == 0 || r > d + 1 {
        return Err(Error::InvalidArgument(format!(
            "OT-Flow sizes d = {d}, m = {m}, nTh = {n_th}, rank {r} \
             (need d, m ≥ 1, nTh ≥ 2, 1 ≤ rank ≤ d + 1)"
        )));
    }
    let uniform = |sample: u64, n: usize, bound: f64| -> Result<Vec<f64>> {
        let mut draws = Draws::new(seed, INIT_STREAM, sample, 0)?;
        Ok((0..n)
            .map(|_| bound * (2.0 * draws.uniform() - 1.0))
            .collect())
    };
    let b0 = 1.0 / ((d + 1) as f64).sqrt();
    let b1 = 1.0 / (m as f64).sqrt();
    let k0 = uniform(0, m * (d + 1), b0)?;
    let bias0 = uniform(1, m, b0)?;
    let k1 = uniform(2, m * m, b1)?;
    let bias1 = uniform(3, m, b1)?;
    let a = uniform(4, r * (d + 1), (6.0 / (r + d + 1) as f64).sqrt())?;
    let mut k = vec![k0];
    let mut b = vec![bias0];
    for _ in 1..n_th {
        k.push(k1.clone());
        b.push(bias1.clone());
    }
    let p = OtFlowParams {
        d,
        m,
        n_th,
        r,
        k,
        b,
        w: vec![1.0; m],
        a,
        c_weight: vec![0.0; d + 1],
        c_bias: 0.0,
    };
    check_params(&p)?;
    Ok(p)
}

/// Φ/α₀ for the export: w, c.weight, c.bias divided by α₀, A by √α₀.
pub fn scale_potential(p: &OtFlowParams, alpha0: f64) -> Result<OtFlowParams> {
    if !(alpha0.is_finite() && alpha0 > 0.0) {
        return Err(Error::InvalidArgument(format!(
            "OT-Flow: α₀ = {alpha0} must be positive and finite"
        )));
    }
    let mut q = p.clone();
    let sa = alpha0.sqrt();
    q.w.iter_mut().for_each(|v| *v /= alpha0);
    q.c_weight.iter_mut().for_each(|v| *v /= alpha0);
    q.c_bias /= alpha0;
    q.a.iter_mut().for_each(|v| *v /= sa);
    Ok(q)
}

/// Settings of [`train_otflow`].
///
/// In JSON every field is optional (the [`Default`] fills the rest) and unknown keys
/// are errors, e.g.
///
/// ```json
/// {"m": 32, "n_th": 2, "nt": 8, "nt_val": 12, "batch_size": 5000,
///  "alpha": [1.0, 30.0, 1.0], "iterations": 1500,
///  "optimizer": {"lr": 0.1, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8,
///                "weight_decay": 0.0, "decoupled": false},
///  "schedule": {"type": "step", "every": 500, "factor": 0.5}, "clip_norm": null,
///  "seed": 0, "precision": "f32", "normalize": false, "validate_every": 100,
///  "device": "cpu"}
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OtFlowConfig {
    /// ResNet width m.
    pub m: usize,
    /// ResNet layers nTh (≥ 2).
    pub n_th: usize,
    /// RK4 steps in training.
    pub nt: usize,
    /// RK4 steps in validation.
    pub nt_val: usize,
    /// Mini-batch size; a batch larger than the training set uses the whole set
    /// every iteration. Validation runs in chunks of this size.
    pub batch_size: usize,
    /// (α₀, α₁, α₂), the original's `alph`: weights of the transport cost, the NLL and
    /// the HJB penalty; α₀ also scales the velocity.
    pub alpha: [f64; 3],
    /// Number of optimizer steps.
    pub iterations: u64,
    /// Adam settings.
    pub optimizer: AdamConfig,
    /// Learning-rate schedule (a plateau schedule observes the validation NLL).
    pub schedule: Schedule,
    /// Clip the gradient's global norm to this value.
    pub clip_norm: Option<f64>,
    /// Seed of the initialization and the mini-batches.
    pub seed: u64,
    /// Precision policy of the solves.
    pub precision: Precision,
    /// Standardize the data per coordinate (training-set statistics) and record the
    /// map in the artifact. The reported NLL is always in data coordinates.
    pub normalize: bool,
    /// Compute the validation NLL every this many iterations (and before the first and
    /// after the last); 0: only before the first and after the last.
    pub validate_every: u64,
    /// The compute device: `"cpu"` (the default) or `"cuda"` (the first GPU; see
    /// [`Device`]).
    #[serde(skip_serializing_if = "Device::is_cpu")]
    pub device: Device,
}

impl Default for OtFlowConfig {
    fn default() -> Self {
        OtFlowConfig {
            m: 32,
            n_th: 2,
            nt: 8,
            nt_val: 12,
            batch_size: 5000,
            alpha: [1.0, 30.0, 1.0],
            iterations: 1500,
            optimizer: AdamConfig::adam(0.1),
            schedule: Schedule::Step {
                every: 500,
                factor: 0.5,
            },
            clip_norm: None,
            seed: 0,
            precision: Precision::F32,
            normalize: false,
            validate_every: 100,
            device: Device::Cpu,
        }
    }
}

/// Checks the sizes a config of an OT-Flow potential trained with RK4 gives: ResNet
/// width `m` ≥ 1, `n_th` ≥ 2 layers, and ≥ 1 step in training (`nt`) and validation
/// (`nt_val`); `what` names the model in errors.
pub(crate) fn check_sizes(
    what: &str,
    m: usize,
    n_th: usize,
    nt: usize,
    nt_val: usize,
) -> Result<()> {
    if m == 0 || n_th < 2 {
        return Err(Error::InvalidArgument(format!(
            "{what}: m = {m}, nTh = {n_th} (need m ≥ 1, nTh ≥ 2)"
        )));
    }
    if nt == 0 || nt_val == 0 {
        return Err(Error::InvalidArgument(format!(
            "{what}: nt = {nt}, nt_val = {nt_val} (need ≥ 1)"
        )));
    }
    Ok(())
}

impl OtFlowConfig {
    /// Checks the settings that do not depend on the data.
    pub fn validate(&self) -> Result<()> {
        check_sizes("OT-Flow", self.m, self.n_th, self.nt, self.nt_val)?;
        OtFlowProblem::new(self.alpha, self.nt, self.precision.policy())?;
        crate::optim::validate_run(
            self.batch_size,
            self.iterations,
            &self.optimizer,
            self.schedule,
            self.clip_norm,
        )?;
        Ok(())
    }

    /// The config as JSON (what the artifact's provenance records).
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string(self)
            .map_err(|e| Error::InvalidArgument(format!("OT-Flow config: {e}")))
    }

    /// Parses a JSON config (unknown keys are errors).
    pub fn from_json(text: &str) -> Result<Self> {
        serde_json::from_str(text)
            .map_err(|e| Error::InvalidArgument(format!("OT-Flow config: {e}")))
    }
}

/// What [`train_otflow`] reports after every iteration.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Progress {
    /// Iterations completed (1 after the first step).
    pub iteration: u64,
    /// Iterations in the run.
    pub iterations: u64,
    /// The mini-batch objective J and its costs (before the step).
    pub costs: OtFlowCosts,
    /// The gradient's global norm before clipping.
    pub grad_norm: f64,
    /// The learning rate of this step.
    pub lr: f64,
    /// The validation NLL (data coordinates) after this step, when computed.
    pub validation_nll: Option<f64>,
    /// Wall-clock seconds of this iteration's objective, gradient and step.
    pub seconds: f64,
}

/// A trained OT-Flow model and its training record.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainedOtFlow {
    /// The config it was trained with.
    pub config: OtFlowConfig,
    /// The potential Φ as trained (the flow moves with −∇ₓΦ/α₀), model coordinates.
    pub params: OtFlowParams,
    /// The data normalization (model coordinates = (x − mean)/std), if any.
    pub normalization: Option<Normalization>,
    /// Training objective J of every iteration.
    pub losses: Vec<f64>,
    /// Costs of every iteration.
    pub costs: Vec<OtFlowCosts>,
    /// (iterations completed, validation NLL in data coordinates) at every validation,
    /// starting with iteration 0 (the initialization).
    pub validation: Vec<(u64, f64)>,
}

impl TrainedOtFlow {
    /// The last validation NLL, if a validation set was given.
    pub fn validation_nll(&self) -> Option<f64> {
        self.validation.last().map(|&(_, l)| l)
    }

    /// The exported potential Φ/α₀ (see the module docs).
    pub fn exported_params(&self) -> Result<OtFlowParams> {
        scale_potential(&self.params, self.config.alpha[0])
    }

    /// The model file: an OT-Flow potential Φ/α₀ over the time interval [0, 1] (data at
    /// 0, the standard normal at 1; sample by integrating from 1 to 0), with the
    /// normalization and a provenance recording the config (JSON) and final numbers.
    pub fn to_artifact(&self) -> Result<Artifact> {
        let mut prov = Provenance::now(concat!("socflow-trainer ", env!("CARGO_PKG_VERSION")))
            .with_detail("problem", "OT-Flow density estimation")
            .with_detail("config", self.config.to_json()?)
            .with_detail(
                "convention",
                "x ~ data at t=0, z ~ N(0,I) at t=1, dz/dt = -grad_x Phi; exported Phi is the \
                 trained potential divided by alpha_0; sample by integrating from t=1 to t=0",
            )
            .with_detail(
                "loss",
                "J = alpha0*mean(c_L) + alpha1*mean(NLL) + alpha2*mean(c_HJB), RK4 on [0,1]",
            )
            .with_detail("iterations", self.losses.len());
        if let Some(l) = self.losses.last() {
            prov = prov.with_detail("final_train_loss", l);
        }
        if let Some(v) = self.validation_nll() {
            prov = prov.with_detail("validation_nll", v);
        }
        let a = Artifact::otflow(self.exported_params()?, [0.0, 1.0], prov)?;
        Ok(match &self.normalization {
            Some(n) => a.with_normalization(n.clone())?,
            None => a,
        })
    }
}

/// An OT-Flow potential under training: the parameters, their flat copy (what Adam
/// updates and checkpoints hold), Adam and the learning-rate schedule. The training
/// loops of [`train_otflow_checkpointed`] and [`crate::mfg::train_crowd_checkpointed`]
/// share it.
pub(crate) struct PotentialOptimizer {
    /// The potential, rebuilt from `set` after every step.
    pub(crate) params: OtFlowParams,
    /// The parameters as the optimizer's arrays.
    pub(crate) set: ParamSet,
    /// Adam's state.
    pub(crate) adam: Adam,
    /// The learning-rate schedule.
    pub(crate) scheduler: Scheduler,
}

impl PotentialOptimizer {
    /// Starts training `params`, or resumes it from `ckpt` ([`Checkpointing::start`]);
    /// returns the iteration to start from.
    pub(crate) fn start(
        params: OtFlowParams,
        ckpt: &mut Checkpointing<'_>,
        config_json: &str,
        optimizer: AdamConfig,
        schedule: Schedule,
        iterations: u64,
    ) -> Result<(Self, u64)> {
        let mut set = to_param_set(&params)?;
        let (adam, scheduler, start_it) =
            ckpt.start(config_json, &mut set, optimizer, schedule, iterations)?;
        let params = params_from_flat(&params, set.values.clone())?;
        let opt = PotentialOptimizer {
            params,
            set,
            adam,
            scheduler,
        };
        Ok((opt, start_it))
    }

    /// One [`optimizer_step`] along `grad` at iteration `it` (`what` names the model in
    /// errors); returns (gradient norm before clipping, learning rate).
    pub(crate) fn step(
        &mut self,
        grad: &OtFlowParams,
        clip_norm: Option<f64>,
        it: u64,
        what: &str,
    ) -> Result<(f64, f64)> {
        let mut grad = to_param_set(grad)?.values;
        let (grad_norm, lr) = optimizer_step(
            &mut self.adam,
            &mut self.scheduler,
            &mut self.set,
            &mut grad,
            clip_norm,
            it,
            what,
        )?;
        self.params = params_from_flat(&self.params, self.set.values.clone())?;
        Ok((grad_norm, lr))
    }

    /// [`Checkpointing::after_iteration`] with this state.
    pub(crate) fn after_iteration(
        &self,
        ckpt: &mut Checkpointing<'_>,
        done: u64,
        iterations: u64,
        config_json: &str,
    ) -> Result<()> {
        ckpt.after_iteration(
            done,
            iterations,
            config_json,
            &self.set,
            &self.adam,
            &self.scheduler,
        )
    }
}

/// Σ ln std: the NLL in data coordinates is the model's NLL plus this.
fn log_det(norm: Option<&Normalization>) -> f64 {
    norm.map_or(0.0, |n| n.std.iter().map(|s| s.ln()).sum())
}

/// The mean NLL of `data` (model coordinates) with `nt_val` steps, in chunks.
fn mean_nll<B: Backend>(
    g: &mut Graph<B>,
    problem: &OtFlowProblem,
    p: &OtFlowParams,
    data: &Dataset,
    chunk: usize,
) -> Result<f64> {
    let d = data.d;
    let mut total = 0.0;
    for rows in data.x.chunks(chunk.max(1) * d) {
        total += problem.nll(g, p, rows)?.iter().sum::<f64>();
    }
    Ok(total / data.n as f64)
}

/// Trains OT-Flow on `train` (samples in data coordinates), reporting the validation
/// NLL on `validation` (if given) before the first iteration, every
/// `config.validate_every` iterations and after the last; `progress` is called after
/// every iteration. Deterministic for a given config, data and thread count.
///
/// Errors: [`Error::InvalidArgument`] for a bad config; [`Error::Data`] for sets of
/// different dimensions (or a constant coordinate under normalization);
/// [`Error::Numerical`] when the objective is not finite; the solver's errors.
pub fn train_otflow(
    config: &OtFlowConfig,
    train: &Dataset,
    validation: Option<&Dataset>,
    progress: &mut dyn FnMut(&Progress),
) -> Result<TrainedOtFlow> {
    train_otflow_checkpointed(
        config,
        train,
        validation,
        &mut Checkpointing::none(),
        progress,
    )
}

/// [`train_otflow`] with periodic checkpoints and, with `ckpt.resume`, resumption: a
/// resumed run continues bitwise as the uninterrupted one (its `losses` and `costs`
/// then start at the resumed iteration).
pub fn train_otflow_checkpointed(
    config: &OtFlowConfig,
    train: &Dataset,
    validation: Option<&Dataset>,
    ckpt: &mut Checkpointing<'_>,
    progress: &mut dyn FnMut(&Progress),
) -> Result<TrainedOtFlow> {
    match config.device {
        Device::Cpu => train_otflow_on(Cpu::new(), config, train, validation, ckpt, progress),
        Device::Cuda => train_otflow_on(Device::cuda()?, config, train, validation, ckpt, progress),
    }
}

/// [`train_otflow_checkpointed`] on `backend` (whatever `config.device` says): for a
/// caller holding a backend already (a [`Cuda`](crate::autodiff::Cuda) shared with
/// other work, a serial [`Cpu`]).
pub fn train_otflow_on<B: Backend>(
    backend: B,
    config: &OtFlowConfig,
    train: &Dataset,
    validation: Option<&Dataset>,
    ckpt: &mut Checkpointing<'_>,
    progress: &mut dyn FnMut(&Progress),
) -> Result<TrainedOtFlow> {
    config.validate()?;
    let config_json = config.to_json()?;
    let d = train.d;
    if train.n as u64 > MAX_SAMPLE {
        return Err(Error::InvalidArgument(format!(
            "{} training samples exceed the generator's {MAX_SAMPLE}",
            train.n
        )));
    }
    if let Some(v) = validation {
        if v.d != d {
            return Err(Error::Data(format!(
                "validation data of dimension {}, training data of dimension {d}",
                v.d
            )));
        }
    }
    let (train_set, val_set, norm) = normalized_sets(train, validation, config.normalize)?;
    let shift = log_det(norm.as_ref());

    let policy = config.precision.policy();
    let problem = OtFlowProblem::new(config.alpha, config.nt, policy)?;
    let val_problem = OtFlowProblem::new(config.alpha, config.nt_val, policy)?;
    let (mut opt, start_it) = PotentialOptimizer::start(
        init_params(d, config.m, config.n_th, config.seed)?,
        ckpt,
        &config_json,
        config.optimizer,
        config.schedule,
        config.iterations,
    )?;
    let b = config.batch_size.min(train_set.n);
    let mut batches = BatchSampler::new(train_set.n, b, config.seed)?;
    let mut g = Graph::new(backend);
    let mut x = vec![0.0; b * d];

    let mut losses = Vec::with_capacity(config.iterations as usize);
    let mut costs = Vec::with_capacity(config.iterations as usize);
    let mut record = Vec::new();
    if let (Some(v), 0) = (&val_set, start_it) {
        let l = mean_nll(&mut g, &val_problem, &opt.params, v, config.batch_size)? + shift;
        record.push((0, l));
    }
    for it in start_it..config.iterations {
        let start = std::time::Instant::now();
        batches.batch(&train_set, it, &mut x)?;
        let (c, grad) = problem.costs_and_gradient(&mut g, &opt.params, &x)?;
        check_objective(c.j, "the OT-Flow objective", it)?;
        let (grad_norm, lr) = opt.step(&grad, config.clip_norm, it, "OT-Flow")?;
        let seconds = start.elapsed().as_secs_f64();
        losses.push(c.j);
        costs.push(c);

        let done = it + 1;
        let due = validation_due(done, config.iterations, config.validate_every);
        let mut val = None;
        if let (true, Some(v)) = (due, &val_set) {
            let l = mean_nll(&mut g, &val_problem, &opt.params, v, config.batch_size)? + shift;
            opt.scheduler.observe(l);
            record.push((done, l));
            val = Some(l);
        }
        opt.after_iteration(ckpt, done, config.iterations, &config_json)?;
        progress(&Progress {
            iteration: done,
            iterations: config.iterations,
            costs: c,
            grad_norm,
            lr,
            validation_nll: val,
            seconds,
        });
    }
    Ok(TrainedOtFlow {
        config: config.clone(),
        params: opt.params,
        normalization: norm,
        losses,
        costs,
        validation: record,
    })
}
