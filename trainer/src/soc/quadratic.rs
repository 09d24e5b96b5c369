//! The control-affine quadratic family: f = a(z) + Bu, L = ½uᵀRu + Q(z), for which
//! u* = −R⁻¹Bᵀ∇Φ and sup_u H(s, z, −∇Φ, u) = −∇Φᵀa + ½∇ΦᵀBR⁻¹Bᵀ∇Φ − Q (MATH.md §5).
//!
//! A [`QuadraticProblem`] is plain data (serde, so built-in and user problems load from
//! a config file), with constructors for the built-in problems: a linear–quadratic
//! regulator ([`QuadraticProblem::linear_quadratic`]), the 100-D
//! Hamilton–Jacobi–Bellman benchmark of Han, Jentzen and E
//! ([`QuadraticProblem::hjb100`]) and the 100-D shifted target
//! ([`QuadraticProblem::shifted_target`]).

use serde::{Deserialize, Serialize};
use socflow_runtime::artifact::ControlMap;
use socflow_runtime::brownian::{Brownian, Stream};

use super::problem::ControlProblem;
use crate::autodiff::{self, Backend, Graph, Tensor, Var};
use crate::data::rng::FIRST_FREE_AFTER_DATA;
use crate::{Error, Result};

/// Stream of the initial states drawn from a Gaussian initial distribution.
pub const INITIAL_STREAM: Stream = Stream(FIRST_FREE_AFTER_DATA.0 + 40);

/// The uncontrolled drift a(z).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum StateDrift {
    /// a(z) = 0.
    Zero,
    /// a(z) = Az, A d × d row-major.
    Linear {
        /// A, row-major d × d.
        matrix: Vec<f64>,
    },
}

/// The state cost Q(z) of the running cost.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum StateCost {
    /// Q(z) = 0.
    Zero,
    /// Q(z) = c.
    Constant {
        /// The constant c.
        value: f64,
    },
    /// Q(z) = ½(z − c)ᵀQ(z − c) + q₀.
    Quadratic {
        /// Q, row-major d × d, symmetric.
        matrix: Vec<f64>,
        /// The center c (d values).
        center: Vec<f64>,
        /// The constant q₀.
        offset: f64,
    },
}

/// The terminal cost g(z).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum TerminalCost {
    /// g(z) = ½(z − c)ᵀQ_T(z − c).
    Quadratic {
        /// Q_T, row-major d × d, symmetric.
        matrix: Vec<f64>,
        /// The center c (d values).
        center: Vec<f64>,
    },
    /// g(z) = w·ln(½(1 + ‖z − c‖²)) (the HJB benchmarks).
    LogRadial {
        /// The weight w.
        weight: f64,
        /// The center c (d values).
        center: Vec<f64>,
    },
}

/// The distribution of z(0).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum InitialDistribution {
    /// Every path starts at `x`.
    Point {
        /// The initial state (d values).
        x: Vec<f64>,
    },
    /// z(0) = mean + std ⊙ ξ, ξ ~ N(0, I).
    Gaussian {
        /// Mean (d values).
        mean: Vec<f64>,
        /// Standard deviations (d values, ≥ 0).
        std: Vec<f64>,
    },
}

impl InitialDistribution {
    /// The distribution's mean.
    pub fn mean(&self) -> &[f64] {
        match self {
            InitialDistribution::Point { x } => x,
            InitialDistribution::Gaussian { mean, .. } => mean,
        }
    }
}

/// A control-affine problem with quadratic control cost: dz = (a(z) + Bu)ds + σdW,
/// L = ½uᵀRu + Q(z), terminal cost g, on [0, T].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuadraticProblem {
    /// A short name (recorded in the artifact).
    pub name: String,
    /// State dimension d.
    pub dim: usize,
    /// Control dimension k.
    pub control_dim: usize,
    /// Horizon T.
    pub horizon: f64,
    /// Noise level σ.
    pub sigma: f64,
    /// The uncontrolled drift a(z).
    pub drift: StateDrift,
    /// B, row-major d × k.
    pub input: Vec<f64>,
    /// R, row-major k × k, symmetric positive definite.
    pub control_cost: Vec<f64>,
    /// Q(z).
    pub state_cost: StateCost,
    /// g(z).
    pub terminal: TerminalCost,
    /// The distribution of z(0).
    pub initial: InitialDistribution,
    /// M = R⁻¹Bᵀ, computed once.
    #[serde(skip)]
    feedback: FeedbackCache,
}

/// M = R⁻¹Bᵀ with the (B, R) it was computed from (the fields are public, so a
/// changed problem recomputes it); equal to any other (it is a function of the
/// problem).
#[derive(Clone, Debug, Default)]
struct FeedbackCache(std::sync::Arc<std::sync::Mutex<Option<Feedback>>>);

#[derive(Clone, Debug)]
struct Feedback {
    input: Vec<f64>,
    control_cost: Vec<f64>,
    matrix: std::sync::Arc<Vec<f64>>,
}

impl PartialEq for FeedbackCache {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

fn identity(n: usize, scale: f64) -> Vec<f64> {
    let mut m = vec![0.0; n * n];
    for i in 0..n {
        m[i * n + i] = scale;
    }
    m
}

/// The inverse of a symmetric positive definite matrix (row-major n × n) by Cholesky;
/// `None` when it is not positive definite.
pub(crate) fn spd_inverse(a: &[f64], n: usize) -> Option<Vec<f64>> {
    // a = LLᵀ.
    let mut l = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let s: f64 = (0..j).map(|k| l[i * n + k] * l[j * n + k]).sum();
            if i == j {
                let v = a[i * n + i] - s;
                if v.is_nan() || v <= 0.0 || !v.is_finite() {
                    return None;
                }
                l[i * n + i] = v.sqrt();
            } else {
                l[i * n + j] = (a[i * n + j] - s) / l[j * n + j];
            }
        }
    }
    // Columns of a⁻¹ from L y = e_c, Lᵀ x = y.
    let mut inv = vec![0.0; n * n];
    let mut y = vec![0.0; n];
    for c in 0..n {
        for i in 0..n {
            let e = if i == c { 1.0 } else { 0.0 };
            let s: f64 = (0..i).map(|k| l[i * n + k] * y[k]).sum();
            y[i] = (e - s) / l[i * n + i];
        }
        for i in (0..n).rev() {
            let s: f64 = (i + 1..n).map(|k| l[k * n + i] * inv[k * n + c]).sum();
            inv[i * n + c] = (y[i] - s) / l[i * n + i];
        }
    }
    Some(inv)
}

impl QuadraticProblem {
    /// A linear–quadratic regulator: dz = (Az + Bu)ds + σdW, L = ½uᵀRu + ½zᵀQz,
    /// g = ½zᵀQ_Tz, z(0) = x0 (Riccati gives its value function).
    #[allow(clippy::too_many_arguments)]
    pub fn linear_quadratic(
        a: Vec<f64>,
        b: Vec<f64>,
        r: Vec<f64>,
        q: Vec<f64>,
        q_terminal: Vec<f64>,
        sigma: f64,
        horizon: f64,
        x0: Vec<f64>,
    ) -> Result<Self> {
        let d = x0.len();
        let k = b.len().checked_div(d).unwrap_or(0);
        let p = QuadraticProblem {
            name: "lqr".into(),
            dim: d,
            control_dim: k,
            horizon,
            sigma,
            drift: StateDrift::Linear { matrix: a },
            input: b,
            control_cost: r,
            state_cost: StateCost::Quadratic {
                matrix: q,
                center: vec![0.0; d],
                offset: 0.0,
            },
            terminal: TerminalCost::Quadratic {
                matrix: q_terminal,
                center: vec![0.0; d],
            },
            initial: InitialDistribution::Point { x: x0 },
            feedback: FeedbackCache::default(),
        };
        p.validate()?;
        Ok(p)
    }

    /// The problem of a reference [`Lqr`](super::reference::Lqr) (scalar noise only:
    /// this family's noise is σ·dW) with the initial distribution `initial`.
    pub fn from_lqr(lqr: &super::reference::Lqr, initial: InitialDistribution) -> Result<Self> {
        let sigma = match &lqr.sigma {
            super::reference::Diffusion::Scalar(s) => *s,
            super::reference::Diffusion::Matrix(_) => {
                return Err(Error::InvalidArgument(
                    "SOC problem: a matrix diffusion is not in the quadratic family (σ·dW)".into(),
                ))
            }
        };
        let mut p = Self::linear_quadratic(
            lqr.a.clone(),
            lqr.b.clone(),
            lqr.r.clone(),
            lqr.q.clone(),
            lqr.q_terminal.clone(),
            sigma,
            lqr.horizon,
            initial.mean().to_vec(),
        )?;
        p.initial = initial;
        p.validate()?;
        Ok(p)
    }

    /// dz = b·u ds + σdW, L = (r/2)‖u‖², g = w·ln(½(1 + ‖z − c‖²)), z(0) = 0, d = 100,
    /// T = 1 (the family of the HJB benchmarks, solved by Cole–Hopf).
    fn log_radial(name: &str, b: f64, r: f64, sigma: f64, weight: f64, center: f64) -> Self {
        let d = 100;
        QuadraticProblem {
            name: name.into(),
            dim: d,
            control_dim: d,
            horizon: 1.0,
            sigma,
            drift: StateDrift::Zero,
            input: identity(d, b),
            control_cost: identity(d, r),
            state_cost: StateCost::Zero,
            terminal: TerminalCost::LogRadial {
                weight,
                center: vec![center; d],
            },
            initial: InitialDistribution::Point { x: vec![0.0; d] },
            feedback: FeedbackCache::default(),
        }
    }

    /// The 100-D Hamilton–Jacobi–Bellman benchmark of Han, Jentzen and E: f = 2u,
    /// L = ‖u‖², σ = √2, g = ln(½(1 + ‖z‖²)), z(0) = 0, T = 1; Φ(0, 0) = 4.590162
    /// (Cole–Hopf).
    pub fn hjb100() -> Self {
        Self::log_radial("hjb100", 2.0, 2.0, std::f64::consts::SQRT_2, 1.0, 0.0)
    }

    /// The 100-D shifted target (MATH.md §5): x_ref = 3·1, σ = 2√2/5, T = 1, z(0) = 0,
    /// g = w·ln(½(1 + ‖z − x_ref‖²)). With `weight` 1 as the lecture states it
    /// (f = u, L = ½‖u‖²); with any other weight in the original NeuralSOC code's form
    /// (f = 2u, L = ‖u‖²), which it trains with weight 1000.
    pub fn shifted_target(weight: f64) -> Self {
        let sigma = 2.0 * std::f64::consts::SQRT_2 / 5.0;
        let name = format!("shifted_target_{weight}");
        if weight == 1.0 {
            Self::log_radial(&name, 1.0, 1.0, sigma, 1.0, 3.0)
        } else {
            Self::log_radial(&name, 2.0, 2.0, sigma, weight, 3.0)
        }
    }

    /// The problem with every cost multiplied by `factor` > 0 (R, Q(z), g): its value
    /// function is Φ·`factor` and its optimal control the same u* = −R⁻¹Bᵀ∇Φ, since
    /// R·`factor` and ∇Φ·`factor` cancel. Training on it keeps Φ_θ at a scale an
    /// optimizer's steps move (the shifted target with weight 1000 has Φ in the
    /// thousands); as [`QuadcopterProblem::with_cost_scale`](super::QuadcopterProblem::with_cost_scale).
    pub fn with_cost_scale(&self, factor: f64) -> Result<Self> {
        if !(factor.is_finite() && factor > 0.0) {
            return Err(Error::InvalidArgument(format!(
                "{}: cost scale {factor} (need a finite factor > 0)",
                self.name
            )));
        }
        let mul = |v: &[f64]| v.iter().map(|x| x * factor).collect::<Vec<f64>>();
        let state_cost = match &self.state_cost {
            StateCost::Zero => StateCost::Zero,
            StateCost::Constant { value } => StateCost::Constant {
                value: value * factor,
            },
            StateCost::Quadratic {
                matrix,
                center,
                offset,
            } => StateCost::Quadratic {
                matrix: mul(matrix),
                center: center.clone(),
                offset: offset * factor,
            },
        };
        let terminal = match &self.terminal {
            TerminalCost::Quadratic { matrix, center } => TerminalCost::Quadratic {
                matrix: mul(matrix),
                center: center.clone(),
            },
            TerminalCost::LogRadial { weight, center } => TerminalCost::LogRadial {
                weight: weight * factor,
                center: center.clone(),
            },
        };
        let p = QuadraticProblem {
            control_cost: mul(&self.control_cost),
            state_cost,
            terminal,
            feedback: FeedbackCache::default(),
            ..self.clone()
        };
        p.validate()?;
        Ok(p)
    }

    /// Checks sizes, finiteness and that R is positive definite.
    pub fn validate(&self) -> Result<()> {
        let (d, k) = (self.dim, self.control_dim);
        let bad = |m: String| Err(Error::InvalidArgument(format!("SOC problem: {m}")));
        if d == 0 || k == 0 {
            return bad(format!("dimensions d = {d}, k = {k} (need ≥ 1)"));
        }
        if !(self.horizon > 0.0 && self.horizon.is_finite()) {
            return bad(format!("horizon {} (need a finite T > 0)", self.horizon));
        }
        if !(self.sigma >= 0.0 && self.sigma.is_finite()) {
            return bad(format!("sigma {} (need a finite σ ≥ 0)", self.sigma));
        }
        let check = |what: &str, v: &[f64], len: usize| -> Result<()> {
            if v.len() != len {
                return Err(Error::InvalidArgument(format!(
                    "SOC problem: {what} has {} values, expected {len}",
                    v.len()
                )));
            }
            if v.iter().any(|x| !x.is_finite()) {
                return Err(Error::NonFinite(format!("SOC problem {what}")));
            }
            Ok(())
        };
        check("input matrix B", &self.input, d * k)?;
        check("control cost R", &self.control_cost, k * k)?;
        let r = &self.control_cost;
        let symmetric = (0..k).all(|i| (0..k).all(|j| r[i * k + j] == r[j * k + i]));
        if !symmetric || spd_inverse(r, k).is_none() {
            return bad("the control cost R is not symmetric positive definite".into());
        }
        if let StateDrift::Linear { matrix } = &self.drift {
            check("drift matrix A", matrix, d * d)?;
        }
        match &self.state_cost {
            StateCost::Zero => {}
            StateCost::Constant { value } => check("state cost", &[*value], 1)?,
            StateCost::Quadratic {
                matrix,
                center,
                offset,
            } => {
                check("state cost matrix Q", matrix, d * d)?;
                check("state cost center", center, d)?;
                check("state cost offset", &[*offset], 1)?;
            }
        }
        match &self.terminal {
            TerminalCost::Quadratic { matrix, center } => {
                check("terminal cost matrix", matrix, d * d)?;
                check("terminal cost center", center, d)?;
            }
            TerminalCost::LogRadial { weight, center } => {
                check("terminal cost weight", &[*weight], 1)?;
                check("terminal cost center", center, d)?;
            }
        }
        match &self.initial {
            InitialDistribution::Point { x } => check("initial state", x, d)?,
            InitialDistribution::Gaussian { mean, std } => {
                check("initial mean", mean, d)?;
                check("initial std", std, d)?;
                if std.iter().any(|s| *s < 0.0) {
                    return bad("a negative initial standard deviation".into());
                }
            }
        }
        Ok(())
    }

    /// M = R⁻¹Bᵀ (k × d, row-major): u* = −M∇Φ.
    pub fn feedback_matrix(&self) -> Result<std::sync::Arc<Vec<f64>>> {
        let mut cache = self
            .feedback
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(f) = cache.as_ref() {
            if f.input == self.input && f.control_cost == self.control_cost {
                return Ok(f.matrix.clone());
            }
        }
        let matrix = std::sync::Arc::new(self.compute_feedback()?);
        *cache = Some(Feedback {
            input: self.input.clone(),
            control_cost: self.control_cost.clone(),
            matrix: matrix.clone(),
        });
        Ok(matrix)
    }

    fn compute_feedback(&self) -> Result<Vec<f64>> {
        let (d, k) = (self.dim, self.control_dim);
        let rinv = spd_inverse(&self.control_cost, k).ok_or_else(|| {
            Error::InvalidArgument(
                "SOC problem: the control cost R is not positive definite".into(),
            )
        })?;
        let mut m = vec![0.0; k * d];
        for i in 0..k {
            for j in 0..d {
                m[i * d + j] = (0..k)
                    .map(|l| rinv[i * k + l] * self.input[j * k + l])
                    .sum();
            }
        }
        Ok(m)
    }

    /// The problem as JSON.
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string(self).map_err(|e| Error::InvalidArgument(format!("SOC problem: {e}")))
    }

    /// Parses a JSON problem (unknown keys are errors) and validates it.
    pub fn from_json(text: &str) -> Result<Self> {
        let p: Self = serde_json::from_str(text)
            .map_err(|e| Error::InvalidArgument(format!("SOC problem: {e}")))?;
        p.validate()?;
        Ok(p)
    }
}

/// A constant matrix as a graph constant at `v`'s precision.
fn constant<B: Backend>(
    g: &mut Graph<B>,
    like: Var,
    rows: usize,
    cols: usize,
    data: &[f64],
) -> autodiff::Result<Var> {
    let dtype = g.dtype(like)?;
    let t = Tensor::from_f64(g.backend(), rows, cols, data, dtype)?;
    Ok(g.constant(t))
}

/// ½(z − c)ᵀM(z − c) per row, and (z − c)M (M symmetric).
fn quadratic_form<B: Backend>(
    g: &mut Graph<B>,
    z: Var,
    matrix: &[f64],
    center: &[f64],
    d: usize,
) -> autodiff::Result<(Var, Var)> {
    let c = constant(g, z, 1, d, center)?;
    let m = constant(g, z, d, d, matrix)?;
    let dz = g.sub(z, c)?;
    let mz = g.matmul(dz, m, false, false)?;
    let prod = g.mul(mz, dz)?;
    let s = g.sum_cols(prod)?;
    Ok((g.scale(s, 0.5)?, mz))
}

/// ‖z − c‖² per row and z − c.
fn squared_distance<B: Backend>(
    g: &mut Graph<B>,
    z: Var,
    center: &[f64],
    d: usize,
) -> autodiff::Result<(Var, Var)> {
    let c = constant(g, z, 1, d, center)?;
    let dz = g.sub(z, c)?;
    let sq = g.square(dz)?;
    Ok((g.sum_cols(sq)?, dz))
}

impl<B: Backend> ControlProblem<B> for QuadraticProblem {
    fn dim(&self) -> usize {
        self.dim
    }

    fn control_dim(&self) -> usize {
        self.control_dim
    }

    fn horizon(&self) -> f64 {
        self.horizon
    }

    fn sigma(&self) -> f64 {
        self.sigma
    }

    fn initial_states(&self, n: usize, seed: u64, first_sample: u64) -> Result<Vec<f64>> {
        let d = self.dim;
        let mut out = vec![0.0; n * d];
        match &self.initial {
            InitialDistribution::Point { x } => {
                for row in out.chunks_exact_mut(d) {
                    row.copy_from_slice(x);
                }
            }
            InitialDistribution::Gaussian { mean, std } => {
                let gen = Brownian::new(seed);
                for (i, row) in out.chunks_exact_mut(d).enumerate() {
                    let sample = first_sample + i as u64;
                    gen.stream_normals(INITIAL_STREAM, sample, 0, row)?;
                    for ((v, m), s) in row.iter_mut().zip(mean).zip(std) {
                        *v = m + s * *v;
                    }
                }
            }
        }
        Ok(out)
    }

    fn drift(&self, g: &mut Graph<B>, _t: Var, z: Var, u: Var) -> autodiff::Result<Var> {
        let (d, k) = (self.dim, self.control_dim);
        let b = constant(g, z, d, k, &self.input)?;
        let bu = g.matmul(u, b, false, true)?;
        match &self.drift {
            StateDrift::Zero => Ok(bu),
            StateDrift::Linear { matrix } => {
                let a = constant(g, z, d, d, matrix)?;
                let az = g.matmul(z, a, false, true)?;
                g.add(az, bu)
            }
        }
    }

    fn running_cost(&self, g: &mut Graph<B>, _t: Var, z: Var, u: Var) -> autodiff::Result<Var> {
        let k = self.control_dim;
        let r = constant(g, u, k, k, &self.control_cost)?;
        let ru = g.matmul(u, r, false, false)?;
        let uru = g.mul(ru, u)?;
        let uru = g.sum_cols(uru)?;
        let control = g.scale(uru, 0.5)?;
        match &self.state_cost {
            StateCost::Zero => Ok(control),
            StateCost::Constant { value } => g.add_scalar(control, *value),
            StateCost::Quadratic {
                matrix,
                center,
                offset,
            } => {
                let (q, _) = quadratic_form(g, z, matrix, center, self.dim)?;
                let q = g.add_scalar(q, *offset)?;
                g.add(control, q)
            }
        }
    }

    fn terminal_cost(&self, g: &mut Graph<B>, z: Var) -> autodiff::Result<Var> {
        match &self.terminal {
            TerminalCost::Quadratic { matrix, center } => {
                Ok(quadratic_form(g, z, matrix, center, self.dim)?.0)
            }
            TerminalCost::LogRadial { weight, center } => {
                let (sq, _) = squared_distance(g, z, center, self.dim)?;
                let arg = g.affine(sq, 0.5, 0.5)?;
                let l = g.log(arg)?;
                g.scale(l, *weight)
            }
        }
    }

    fn terminal_gradient(&self, g: &mut Graph<B>, z: Var) -> autodiff::Result<Var> {
        match &self.terminal {
            TerminalCost::Quadratic { matrix, center } => {
                Ok(quadratic_form(g, z, matrix, center, self.dim)?.1)
            }
            TerminalCost::LogRadial { weight, center } => {
                // ∇g = 2w(z − c)/(1 + ‖z − c‖²).
                let (sq, dz) = squared_distance(g, z, center, self.dim)?;
                let den = g.add_scalar(sq, 1.0)?;
                let inv = g.recip(den)?;
                let gz = g.mul(dz, inv)?;
                g.scale(gz, 2.0 * weight)
            }
        }
    }

    fn optimal_control(&self, g: &mut Graph<B>, _t: Var, _z: Var, p: Var) -> autodiff::Result<Var> {
        // u* = −M p with M = R⁻¹Bᵀ: rows u = −p Mᵀ.
        let m = self
            .feedback_matrix()
            .map_err(|e| autodiff::Error::InvalidArgument(e.to_string()))?;
        let mv = constant(g, p, self.control_dim, self.dim, &m)?;
        let u = g.matmul(p, mv, false, true)?;
        g.neg(u)
    }

    fn control_map(&self) -> Result<Option<ControlMap>> {
        let m = self.feedback_matrix()?.as_ref().clone();
        Ok(Some(ControlMap::new(self.control_dim, self.dim, m)?))
    }
}
