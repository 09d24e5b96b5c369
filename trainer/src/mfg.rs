//! Mean-field games (MATH.md §6; Ruthotto, Osher, Li, Nurbekyan, Fung, PNAS 2020): a
//! crowd crossing a room around obstacles, with a congestion cost, solved with the
//! OT-Flow potential of [`crate::otflow`].
//!
//! # The problem
//!
//! Agents start at x ~ ρ₀ and move by dz/dt = −∇ₓΦ(z, t)/α_L on t ∈ [0, T], Φ the
//! OT-Flow potential (MATH.md §1). Along a characteristic the density obeys
//! log ρ_t(z(x,t)) = log ρ₀(x) − ℓ(x,t), ℓ the log-determinant of ∂z/∂x
//! (dℓ/dt = tr ∇v = −ΔₓΦ/α_L), so every density term is an average over the particles
//! that the flow already transports. The objective, per particle x ~ ρ₀ and averaged,
//! is the potential (variational) form of the game:
//!
//! ```text
//! J = α_L·∫½‖v‖²dt                      transport        (c_L)
//!   + λ_Q·∫Q(z)dt                       obstacle         (c_Q)
//!   + λ_P·∫ρ_t(z)dt                     congestion       (c_P)
//!   + λ_E·∫log ρ_t(z)dt                 entropy          (c_E)
//!   + λ_G·(log ρ_T(z_T) − log ρ₁(z_T))  terminal KL(ρ_T‖ρ₁)
//!   + β₁·∫|r_HJB|dt + β₂·|Φ(z_T,T) − λ_G·(1 + log ρ_T(z_T) − log ρ₁(z_T))|
//! ```
//!
//! Averaged over x ~ ρ₀, the congestion term is ∫∫ρ_t² dz dt and the entropy term
//! ∫∫ρ_t log ρ_t dz dt; their variational derivatives are 2ρ and 1 + log ρ, and the
//! KL's is 1 + log ρ − log ρ₁. The HJB residual and the terminal condition are those of
//! the MFG these derivatives define (the original MFGnet `odefun` and `MeanFieldGame`):
//!
//! ```text
//! r_HJB = −∂ₜΦ + α_L·½‖v‖² − λ_Q·Q(z) − 2λ_P·ρ_t(z) − λ_E·(1 + log ρ_t(z)),
//! Φ(z, T) = λ_G·(1 + log ρ_T(z) − log ρ₁(z)).
//! ```
//!
//! (Each agent of the equivalent game pays 2λ_P·ρ for congestion: the objective is the
//! potential of the game, whose minimizers are its equilibria.)
//!
//! # The augmented state
//!
//! A batch is one B × (d+6) tensor y = [z, log ρ, c_L, c_Q, c_P, c_E, c_H] with
//! y(0) = [x, log ρ₀(x), 0, 0, 0, 0, 0]: the state carries log ρ_t(z) itself (it starts
//! at log ρ₀(x) and moves by d log ρ/dt = ΔₓΦ/α_L, so it is log ρ₀(x) − ℓ(x,t) to the
//! step's rounding), which the congestion and entropy rates read directly:
//!
//! ```text
//! dz/dt = −∇ₓΦ/α_L,  d log ρ/dt = ΔₓΦ/α_L,  dc_L/dt = ½‖dz/dt‖²,  dc_Q/dt = Q(z),
//! dc_P/dt = exp(log ρ),  dc_E/dt = log ρ,  dc_H/dt = |r_HJB|
//! ```
//!
//! integrated with RK4 on `nt` equal steps ([`crate::dto::Solver`], any
//! [`PrecisionPolicy`]). The terminal terms are recorded on one more tape from the final
//! state (in f64), whose gradient with respect to y(T) is the cotangent that
//! [`Solver::backward`] pulls back through the steps: the exact gradient of the discrete
//! objective.
//!
//! # The crowd-motion setting ([`CrowdProblem::paper`])
//!
//! From the original code of the paper, EmoryMLIP/MFGnet.jl
//! (`examples/ROLNWF2019/runObstacleExperiment.jl`): d = 2, T = 1,
//! ρ₀ = N((0, 3), 0.3·I), ρ₁ = N((0, −3), 0.3·I) (0.3 are variances, as in its
//! `Gaussian`), one obstacle Q(x) = 50·N(x; 0, diag(1, 0.5)) (peak ≈ 11.25), weights
//! α = (1, 2, 4, 2, 2) on (transport, F, G, HJB, terminal HJB) with
//! F = 1·Q + 0.01·entropy, so λ_Q = 2, λ_E = 0.02, λ_G = 4, β = (2, 2); m = 16, nTh = 2,
//! RK4 with nt = 4, 256 particles resampled every 25 iterations. The original has no
//! congestion term (λ_P = 0) and runs 200 BFGS iterations; here Adam (see
//! [`CrowdConfig::default`]), and [`CrowdProblem::paper`] leaves λ_P for the caller.

use serde::{Deserialize, Serialize};
use socflow_runtime::artifact::{Artifact, Provenance};
use socflow_runtime::brownian::{Brownian, Stream, MAX_SAMPLE};
use socflow_runtime::nn::OtFlowParams;

use crate::autodiff::{self, Backend, Cpu, DType, Graph, Tensor, Var};
use crate::checkpoint::Checkpointing;
use crate::data::rng::FIRST_FREE_AFTER_DATA;
use crate::dto::{Cotangents, Method, PrecisionPolicy, Rhs, Solver};
use crate::error::{Error, Result};
use crate::optim::{check_objective, validation_due, AdamConfig, Schedule};
use crate::otflow::{
    check_sizes, init_params, params_from_flat, potential_terms, scale_potential, OtFlowProblem,
    OtFlowRhs, PotentialOptimizer, Precision,
};

/// Stream of the training particles x ~ ρ₀ (sample = particle, step = resampling round).
pub const PARTICLE_STREAM: Stream = Stream(FIRST_FREE_AFTER_DATA.0 + 48);
/// Stream of the validation particles.
pub const VALIDATION_STREAM: Stream = Stream(FIRST_FREE_AFTER_DATA.0 + 49);

/// ln 2π.
const LN_2PI: f64 = 1.837_877_066_409_345_5;

/// Number of columns after z in the augmented state: log ρ, c_L, c_Q, c_P, c_E, c_H.
pub const EXTRA_COLUMNS: usize = 6;

/// A Gaussian with diagonal covariance: N(mean, diag(var)).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gaussian {
    /// The mean.
    pub mean: Vec<f64>,
    /// The variances (not standard deviations), one per coordinate.
    pub var: Vec<f64>,
}

impl Gaussian {
    /// N(mean, v·I).
    pub fn isotropic(mean: Vec<f64>, v: f64) -> Self {
        let var = vec![v; mean.len()];
        Gaussian { mean, var }
    }

    /// Checks dimension `d`, finite means and positive finite variances.
    pub fn validate(&self, what: &str, d: usize) -> Result<()> {
        if self.mean.len() != d || self.var.len() != d {
            return Err(Error::InvalidArgument(format!(
                "{what}: mean of length {} and {} variances for dimension {d}",
                self.mean.len(),
                self.var.len()
            )));
        }
        if !self.mean.iter().all(|v| v.is_finite())
            || !self.var.iter().all(|v| v.is_finite() && *v > 0.0)
        {
            return Err(Error::InvalidArgument(format!(
                "{what}: need finite means and positive finite variances, got mean {:?}, \
                 var {:?}",
                self.mean, self.var
            )));
        }
        Ok(())
    }

    /// −½·Σ ln(2π vₖ), the log-density's constant.
    fn log_norm(&self) -> f64 {
        -0.5 * self.var.iter().map(|v| LN_2PI + v.ln()).sum::<f64>()
    }

    /// The log-density at `x` (length d).
    pub fn log_density(&self, x: &[f64]) -> f64 {
        let q: f64 = x
            .iter()
            .zip(&self.mean)
            .zip(&self.var)
            .map(|((x, m), v)| (x - m) * (x - m) / v)
            .sum();
        self.log_norm() - 0.5 * q
    }

    /// Draws `n` points (row-major n × d) from `seed`, `stream` and `step`: point i is
    /// mean + √var ⊙ ξ with ξ the generator's normals at sample i.
    pub fn sample(&self, n: usize, seed: u64, stream: Stream, step: u64) -> Result<Vec<f64>> {
        let d = self.mean.len();
        if n as u64 > MAX_SAMPLE {
            return Err(Error::InvalidArgument(format!(
                "{n} particles exceed the generator's {MAX_SAMPLE}"
            )));
        }
        let gen = Brownian::new(seed);
        let mut x = vec![0.0; n * d];
        gen.stream_normals_block(stream, 0, step, d, &mut x)?;
        for row in x.chunks_exact_mut(d.max(1)) {
            for ((v, m), s) in row.iter_mut().zip(&self.mean).zip(&self.var) {
                *v = m + s.sqrt() * *v;
            }
        }
        Ok(x)
    }

    /// The log-density of every row of `z` (B × d) on the graph, at `z`'s precision.
    fn log_density_graph<B: Backend>(&self, g: &mut Graph<B>, z: Var) -> autodiff::Result<Var> {
        let e = quadratic_exponent(g, z, &self.mean, &self.var)?;
        g.add_scalar(e, self.log_norm())
    }
}

/// −½·Σₖ (zₖ − mₖ)²/vₖ for every row of `z`, B × 1.
fn quadratic_exponent<B: Backend>(
    g: &mut Graph<B>,
    z: Var,
    mean: &[f64],
    var: &[f64],
) -> autodiff::Result<Var> {
    let dt = g.dtype(z)?;
    let d = mean.len();
    let neg_mean: Vec<f64> = mean.iter().map(|m| -m).collect();
    let coef: Vec<f64> = var.iter().map(|v| -0.5 / v).collect();
    let shift = g.leaf_f64(1, d, &neg_mean, dt, false)?;
    let coef = g.leaf_f64(1, d, &coef, dt, false)?;
    let diff = g.add(z, shift)?;
    let sq = g.square(diff)?;
    let w = g.mul(sq, coef)?;
    g.sum_cols(w)
}

/// A Gaussian-bump obstacle: Q(x) = height·N(x; center, diag(var)) (the original's
/// `Gaussian(d, σ, μ, α)` with α = height).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Obstacle {
    /// The bump's shape: centre and variances.
    pub shape: Gaussian,
    /// Its mass (the peak is height/√((2π)^d Π var)).
    pub height: f64,
}

impl Obstacle {
    /// Q(x) at a point.
    pub fn cost(&self, x: &[f64]) -> f64 {
        self.height * self.shape.log_density(x).exp()
    }
}

/// The weights of the objective's terms (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CrowdWeights {
    /// α_L, the transport cost's weight; it also scales the velocity (v = −∇Φ/α_L).
    pub transport: f64,
    /// λ_Q, the obstacle cost's weight.
    pub obstacle: f64,
    /// λ_P, the congestion cost's weight (F(ρ) = ρ per particle).
    pub congestion: f64,
    /// λ_E, the entropy cost's weight (log ρ per particle).
    pub entropy: f64,
    /// λ_G, the terminal KL(ρ_T‖ρ₁)'s weight.
    pub terminal: f64,
    /// β₁, the HJB residual's weight.
    pub hjb: f64,
    /// β₂, the terminal HJB condition's weight.
    pub hjb_terminal: f64,
}

impl Default for CrowdWeights {
    /// MFGnet's obstacle experiment (module docs), without congestion.
    fn default() -> Self {
        CrowdWeights {
            transport: 1.0,
            obstacle: 2.0,
            congestion: 0.0,
            entropy: 0.02,
            terminal: 4.0,
            hjb: 2.0,
            hjb_terminal: 2.0,
        }
    }
}

impl CrowdWeights {
    /// Checks finite, non-negative weights and α_L > 0.
    pub fn validate(&self) -> Result<()> {
        let all = [
            self.transport,
            self.obstacle,
            self.congestion,
            self.entropy,
            self.terminal,
            self.hjb,
            self.hjb_terminal,
        ];
        if !all.iter().all(|w| w.is_finite() && *w >= 0.0) || self.transport <= 0.0 {
            return Err(Error::InvalidArgument(format!(
                "crowd weights {self:?}: need finite non-negative weights and transport > 0"
            )));
        }
        Ok(())
    }
}

/// The crowd-motion MFG: dimension, horizon, initial and target densities, obstacles
/// and weights.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrowdProblem {
    /// State dimension d.
    pub d: usize,
    /// Final time T.
    pub t_final: f64,
    /// The initial density ρ₀ (particles are drawn from it).
    pub rho0: Gaussian,
    /// The target density ρ₁ of the terminal cost.
    pub rho1: Gaussian,
    /// The obstacles; Q is their sum (empty: Q = 0).
    pub obstacles: Vec<Obstacle>,
    /// The objective's weights.
    pub weights: CrowdWeights,
}

impl Default for CrowdProblem {
    fn default() -> Self {
        CrowdProblem::paper()
    }
}

impl CrowdProblem {
    /// The original MFGnet obstacle experiment (module docs): ρ₀ = N((0,3), 0.3·I),
    /// ρ₁ = N((0,−3), 0.3·I), Q = 50·N(0, diag(1, 0.5)), T = 1, [`CrowdWeights::default`].
    pub fn paper() -> Self {
        CrowdProblem {
            d: 2,
            t_final: 1.0,
            rho0: Gaussian::isotropic(vec![0.0, 3.0], 0.3),
            rho1: Gaussian::isotropic(vec![0.0, -3.0], 0.3),
            obstacles: vec![Obstacle {
                shape: Gaussian {
                    mean: vec![0.0, 0.0],
                    var: vec![1.0, 0.5],
                },
                height: 50.0,
            }],
            weights: CrowdWeights::default(),
        }
    }

    /// Checks sizes, finiteness and signs.
    pub fn validate(&self) -> Result<()> {
        if self.d == 0 {
            return Err(Error::InvalidArgument("crowd problem: d = 0".into()));
        }
        if !(self.t_final.is_finite() && self.t_final > 0.0) {
            return Err(Error::InvalidArgument(format!(
                "crowd problem: T = {} must be positive and finite",
                self.t_final
            )));
        }
        self.rho0.validate("ρ₀", self.d)?;
        self.rho1.validate("ρ₁", self.d)?;
        for (i, o) in self.obstacles.iter().enumerate() {
            o.shape.validate(&format!("obstacle {i}"), self.d)?;
            if !(o.height.is_finite() && o.height >= 0.0) {
                return Err(Error::InvalidArgument(format!(
                    "obstacle {i}: height {} must be finite and non-negative",
                    o.height
                )));
            }
        }
        self.weights.validate()
    }

    /// Q(x), the sum of the obstacles, at a point.
    pub fn obstacle_cost(&self, x: &[f64]) -> f64 {
        self.obstacles.iter().map(|o| o.cost(x)).sum()
    }

    /// Q on the graph for every row of `z` (B × 1, `z`'s precision).
    fn obstacle_graph<B: Backend>(&self, g: &mut Graph<B>, z: Var) -> autodiff::Result<Var> {
        let mut total: Option<Var> = None;
        for o in &self.obstacles {
            let e = quadratic_exponent(g, z, &o.shape.mean, &o.shape.var)?;
            let ex = g.exp(e)?;
            let q = g.scale(ex, o.height * o.shape.log_norm().exp())?;
            total = Some(match total {
                Some(t) => g.add(t, q)?,
                None => q,
            });
        }
        match total {
            Some(t) => Ok(t),
            None => {
                let rows = g.shape(z)?.rows;
                let dt = g.dtype(z)?;
                g.leaf_f64(rows, 1, &vec![0.0; rows], dt, false)
            }
        }
    }
}

/// The right-hand side of the crowd's augmented state (module docs) for the DTO
/// [`Solver`]; the parameters arrive in OT-Flow's order ([`OtFlowRhs`]).
#[derive(Clone, Debug, PartialEq)]
pub struct CrowdRhs {
    /// The potential's sizes and α_L.
    pub otflow: OtFlowRhs,
    /// The problem (obstacles and weights).
    pub problem: CrowdProblem,
}

impl<B: Backend> Rhs<B> for CrowdRhs {
    fn eval(&self, g: &mut Graph<B>, t: Var, y: Var, params: &[Var]) -> autodiff::Result<Var> {
        let vars = self.otflow.vars(params)?;
        let d = self.otflow.d;
        let shape = g.shape(y)?;
        if shape.cols != d + EXTRA_COLUMNS {
            return Err(autodiff::Error::InvalidArgument(format!(
                "crowd state has {} columns, expected d + {EXTRA_COLUMNS} = {}",
                shape.cols,
                d + EXTRA_COLUMNS
            )));
        }
        let w = self.problem.weights;
        let x = g.slice_cols(y, 0, d)?;
        let log_rho = g.slice_cols(y, d, d + 1)?;
        let (gx, lap, dt) = potential_terms(g, &vars, x, t)?;
        let dx = g.scale(gx, -1.0 / w.transport)?;
        let dlog = g.scale(lap, 1.0 / w.transport)?;
        let dx2 = g.square(dx)?;
        let sq = g.sum_cols(dx2)?;
        let dv = g.scale(sq, 0.5)?;
        let q = self.problem.obstacle_graph(g, x)?;
        let rho = g.exp(log_rho)?;
        // r = α_L·½‖v‖² − ∂ₜΦ − λ_Q·Q − 2λ_P·ρ − λ_E·(1 + log ρ).
        let mut res = g.scale(dv, w.transport)?;
        res = g.sub(res, dt)?;
        res = g.add_scaled(res, q, -w.obstacle)?;
        res = g.add_scaled(res, rho, -2.0 * w.congestion)?;
        let ent = g.add_scalar(log_rho, 1.0)?;
        res = g.add_scaled(res, ent, -w.entropy)?;
        let dr = g.abs(res)?;
        g.concat_cols(&[dx, dlog, dv, q, rho, log_rho, dr])
    }
}

/// The terms of the crowd objective (unweighted batch means) and J.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CrowdCosts {
    /// Mean c_L(T) = ∫½‖v‖²dt.
    pub transport: f64,
    /// Mean c_Q(T) = ∫Q(z)dt.
    pub obstacle: f64,
    /// Mean c_P(T) = ∫ρ_t(z)dt.
    pub congestion: f64,
    /// Mean c_E(T) = ∫log ρ_t(z)dt.
    pub entropy: f64,
    /// Mean log ρ_T(z_T) − log ρ₁(z_T): the particle estimate of KL(ρ_T‖ρ₁).
    pub terminal: f64,
    /// Mean c_H(T) = ∫|r_HJB|dt.
    pub hjb: f64,
    /// Mean |Φ(z_T,T) − λ_G·(1 + log ρ_T − log ρ₁)|.
    pub hjb_terminal: f64,
    /// The weighted sum J.
    pub j: f64,
}

/// Trajectories of a batch of particles ([`CrowdObjective::rollout`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Rollout {
    /// State dimension d.
    pub d: usize,
    /// Number of particles.
    pub n: usize,
    /// The time grid t₀ = 0 … t_N = T.
    pub times: Vec<f64>,
    /// The augmented states [z, log ρ, c_L, c_Q, c_P, c_E, c_H] at every grid time,
    /// row-major (N+1) × n × (d+6).
    pub states: Vec<f64>,
}

impl Rollout {
    fn row(&self, k: usize, i: usize) -> &[f64] {
        let w = self.d + EXTRA_COLUMNS;
        let o = (k * self.n + i) * w;
        &self.states[o..o + w]
    }

    /// Positions at grid time k, row-major n × d.
    pub fn positions(&self, k: usize) -> Vec<f64> {
        (0..self.n)
            .flat_map(|i| self.row(k, i)[..self.d].to_vec())
            .collect()
    }

    /// All positions, (N+1) × n × d (the layout of the plot module's trajectories).
    pub fn all_positions(&self) -> Vec<f64> {
        (0..self.times.len())
            .flat_map(|k| self.positions(k))
            .collect()
    }

    /// log ρ_t(z(x,t)) of every particle at grid time k (the exact density along the
    /// characteristics, up to the solver's error).
    pub fn log_density(&self, k: usize) -> Vec<f64> {
        (0..self.n).map(|i| self.row(k, i)[self.d]).collect()
    }

    /// Per-particle accumulated (c_L, c_Q, c_P, c_E, c_H) at grid time k.
    pub fn running_costs(&self, k: usize) -> Vec<[f64; 5]> {
        let d = self.d;
        (0..self.n)
            .map(|i| {
                let r = self.row(k, i);
                [r[d + 1], r[d + 2], r[d + 3], r[d + 4], r[d + 5]]
            })
            .collect()
    }
}

/// The crowd objective on a fixed RK4 grid of `nt` steps over [0, T].
#[derive(Clone, Debug, PartialEq)]
pub struct CrowdObjective {
    /// The problem.
    pub problem: CrowdProblem,
    /// RK4 steps.
    pub nt: usize,
    /// The DTO solver.
    pub solver: Solver,
}

impl CrowdObjective {
    /// RK4 with `nt` steps under `policy`.
    ///
    /// Errors: [`Error::InvalidArgument`] for a bad problem, `nt` = 0 or a bad policy.
    pub fn new(problem: CrowdProblem, nt: usize, policy: PrecisionPolicy) -> Result<Self> {
        problem.validate()?;
        if nt == 0 {
            return Err(Error::InvalidArgument("crowd: nt = 0 time steps".into()));
        }
        policy.validate()?;
        Ok(CrowdObjective {
            problem,
            nt,
            solver: Solver::new(Method::Rk4, policy),
        })
    }

    /// The grid t_k = k·T/nt.
    pub fn times(&self) -> Vec<f64> {
        let n = self.nt as f64;
        (0..=self.nt)
            .map(|k| self.problem.t_final * k as f64 / n)
            .collect()
    }

    fn rhs(&self, p: &OtFlowParams) -> CrowdRhs {
        CrowdRhs {
            otflow: OtFlowRhs::new(p, self.problem.weights.transport),
            problem: self.problem.clone(),
        }
    }

    fn check(&self, p: &OtFlowParams, x: &[f64]) -> Result<usize> {
        let d = self.problem.d;
        if p.d != d {
            return Err(Error::InvalidArgument(format!(
                "crowd: a potential of dimension {} for a problem of dimension {d}",
                p.d
            )));
        }
        if x.is_empty() || x.len() % d != 0 {
            return Err(Error::InvalidArgument(format!(
                "crowd: {} values are not a nonempty batch of dimension {d}",
                x.len()
            )));
        }
        if !x.iter().all(|v| v.is_finite()) {
            return Err(Error::NonFinite("crowd particles".into()));
        }
        Ok(x.len() / d)
    }

    /// y(0) = [x, log ρ₀(x), 0, …] for the batch `x` (row-major B × d), B × (d+6).
    pub fn initial_state(&self, x: &[f64]) -> Result<Vec<f64>> {
        let d = self.problem.d;
        let w = d + EXTRA_COLUMNS;
        let n = x.len() / d.max(1);
        let mut y = vec![0.0; n * w];
        for (row, xr) in y.chunks_exact_mut(w).zip(x.chunks_exact(d)) {
            row[..d].copy_from_slice(xr);
            row[d] = self.problem.rho0.log_density(xr);
        }
        Ok(y)
    }

    /// Forward solve: the trajectory and the parameter tensors.
    fn forward<B: Backend>(
        &self,
        g: &mut Graph<B>,
        p: &OtFlowParams,
        x: &[f64],
    ) -> Result<(crate::dto::Trajectory<B>, Vec<Tensor<B>>, usize)> {
        let n = self.check(p, x)?;
        let params = OtFlowProblem::param_tensors(g.backend(), p)?;
        let y0 = self.initial_state(x)?;
        let y0 = Tensor::from_f64(
            g.backend(),
            n,
            self.problem.d + EXTRA_COLUMNS,
            &y0,
            DType::F64,
        )?;
        let traj = self
            .solver
            .forward(g, &self.rhs(p), &y0, &self.times(), &params)?;
        Ok((traj, params, n))
    }

    /// The terminal tape (f64) on the final states `y` (B × (d+6)): the costs, and with
    /// `grad` the gradients of J with respect to y(T) and to the parameters.
    #[allow(clippy::type_complexity)]
    fn terminal<B: Backend>(
        &self,
        g: &mut Graph<B>,
        p: &OtFlowParams,
        params: &[Tensor<B>],
        y: &[f64],
        n: usize,
        grad: bool,
    ) -> Result<(CrowdCosts, Option<(Tensor<B>, Vec<Vec<f64>>)>)> {
        let d = self.problem.d;
        let wd = self.problem.weights;
        g.clear();
        let yv = g.leaf_f64(n, d + EXTRA_COLUMNS, y, DType::F64, grad)?;
        let mut pv = Vec::with_capacity(params.len());
        for t in params {
            let t = t.cast(g.backend(), DType::F64)?;
            pv.push(g.leaf(t, grad));
        }
        let rhs = OtFlowRhs::new(p, wd.transport);
        let vars = rhs.vars(&pv)?;
        let z = g.slice_cols(yv, 0, d)?;
        let log_rho = g.slice_cols(yv, d, d + 1)?;
        let log_rho1 = self.problem.rho1.log_density_graph(g, z)?;
        let kl = g.sub(log_rho, log_rho1)?;
        let tt = g.leaf_f64(n, 1, &vec![self.problem.t_final; n], DType::F64, false)?;
        let s = g.concat_cols(&[z, tt])?;
        let phi = crate::autodiff::otflow::potential(g, &vars, s, false)?.phi;
        let target = g.affine(kl, wd.terminal, wd.terminal)?;
        let gap = g.sub(phi, target)?;
        let hf = g.abs(gap)?;
        let running = g.slice_cols(yv, d + 1, d + EXTRA_COLUMNS)?;
        let weights = g.leaf_f64(
            EXTRA_COLUMNS - 1,
            1,
            &[wd.transport, wd.obstacle, wd.congestion, wd.entropy, wd.hjb],
            DType::F64,
            false,
        )?;
        let per = g.matmul(running, weights, false, false)?;
        let per = g.add_scaled(per, kl, wd.terminal)?;
        let per = g.add_scaled(per, hf, wd.hjb_terminal)?;
        let j = g.mean(per)?;

        let mean = |v: Vec<f64>| v.iter().sum::<f64>() / n as f64;
        let mut sums = [0.0; 5];
        for r in y.chunks_exact(d + EXTRA_COLUMNS) {
            for (s, v) in sums.iter_mut().zip(&r[d + 1..]) {
                *s += v;
            }
        }
        let m = sums.map(|s| s / n as f64);
        let costs = CrowdCosts {
            transport: m[0],
            obstacle: m[1],
            congestion: m[2],
            entropy: m[3],
            hjb: m[4],
            terminal: mean(g.to_f64(kl)?),
            hjb_terminal: mean(g.to_f64(hf)?),
            j: g.to_f64(j)?[0],
        };
        if !grad {
            return Ok((costs, None));
        }
        let mut grads = g.backward(j, None)?;
        let gy = grads
            .take(yv)
            .ok_or_else(|| Error::Numerical("crowd: no gradient for the final state".into()))?;
        let gp = pv
            .iter()
            .map(|v| match grads.get(*v) {
                Some(t) => Ok(t.to_f64(g.backend())?),
                None => Err(Error::Numerical(
                    "crowd: no gradient for a potential parameter".into(),
                )),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((costs, Some((gy, gp))))
    }

    /// The costs and J of the batch `x` (row-major B × d, drawn from ρ₀).
    pub fn costs<B: Backend>(
        &self,
        g: &mut Graph<B>,
        p: &OtFlowParams,
        x: &[f64],
    ) -> Result<CrowdCosts> {
        let (traj, params, n) = self.forward(g, p, x)?;
        let y = traj.final_state().to_f64(g.backend())?;
        Ok(self.terminal(g, p, &params, &y, n, false)?.0)
    }

    /// The costs of the batch `x` and the gradient of J with respect to every
    /// parameter, by the discrete adjoint of the RK4 solve (module docs).
    pub fn costs_and_gradient<B: Backend>(
        &self,
        g: &mut Graph<B>,
        p: &OtFlowParams,
        x: &[f64],
    ) -> Result<(CrowdCosts, OtFlowParams)> {
        let (traj, params, n) = self.forward(g, p, x)?;
        let y = traj.final_state().to_f64(g.backend())?;
        let (costs, grads) = self.terminal(g, p, &params, &y, n, true)?;
        let (gy, gp_terminal) = grads
            .ok_or_else(|| Error::Numerical("crowd: terminal tape without gradients".into()))?;
        let grad = self.solver.backward(
            g,
            &self.rhs(p),
            &traj,
            &params,
            &Cotangents::terminal(gy),
            false,
        )?;
        let mut gp = Vec::with_capacity(gp_terminal.len());
        for (t, extra) in grad.params.iter().zip(gp_terminal) {
            let mut v = t.to_f64(g.backend())?;
            v.iter_mut().zip(extra).for_each(|(a, b)| *a += b);
            gp.push(v);
        }
        Ok((costs, params_from_flat(p, gp)?))
    }

    /// Rolls the batch `x` out: the augmented states at every grid time, from which
    /// [`Rollout`] reads trajectories and log ρ along them.
    pub fn rollout<B: Backend>(
        &self,
        g: &mut Graph<B>,
        p: &OtFlowParams,
        x: &[f64],
    ) -> Result<Rollout> {
        let (traj, _, n) = self.forward(g, p, x)?;
        let mut states = Vec::with_capacity(traj.states().len() * n * (p.d + EXTRA_COLUMNS));
        let last = traj.states().len().saturating_sub(1);
        for (k, s) in traj.states().iter().enumerate() {
            // The final state at H rather than its stored (possibly 16-bit) copy.
            let v = if k == last {
                traj.final_state().to_f64(g.backend())?
            } else {
                s.to_f64(g.backend())?
            };
            states.extend(v);
        }
        Ok(Rollout {
            d: p.d,
            n,
            times: traj.times().to_vec(),
            states,
        })
    }
}

/// Settings of [`train_crowd`].
///
/// In JSON every field is optional (the [`Default`] fills the rest) and unknown keys
/// are errors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CrowdConfig {
    /// The MFG.
    pub problem: CrowdProblem,
    /// ResNet width m.
    pub m: usize,
    /// ResNet layers nTh (≥ 2).
    pub n_th: usize,
    /// RK4 steps in training.
    pub nt: usize,
    /// RK4 steps in validation.
    pub nt_val: usize,
    /// Particles per iteration.
    pub batch_size: usize,
    /// Draw fresh particles every this many iterations (the original: 25).
    pub resample_every: u64,
    /// Validation particles (drawn once); 0: no validation.
    pub validation_size: usize,
    /// Validate every this many iterations (and after the last); 0: only after the
    /// last.
    pub validate_every: u64,
    /// Number of optimizer steps.
    pub iterations: u64,
    /// Adam settings.
    pub optimizer: AdamConfig,
    /// Learning-rate schedule (a plateau schedule observes the validation J).
    pub schedule: Schedule,
    /// Clip the gradient's global norm to this value.
    pub clip_norm: Option<f64>,
    /// Seed of the initialization and the particles.
    pub seed: u64,
    /// Precision policy of the solves.
    pub precision: Precision,
}

impl Default for CrowdConfig {
    /// The original's obstacle experiment (module docs) with Adam in place of BFGS:
    /// m = 16, nTh = 2, RK4 nt = 4 (validation 8), 256 particles resampled every 25
    /// iterations, lr 0.05 cut by 0.3 at iteration 4000 of 5000, f32. (Adam needs far
    /// more steps than the original's 200 BFGS iterations; at 1000 the obstacle cost
    /// is still falling.)
    fn default() -> Self {
        CrowdConfig {
            problem: CrowdProblem::paper(),
            m: 16,
            n_th: 2,
            nt: 4,
            nt_val: 8,
            batch_size: 256,
            resample_every: 25,
            validation_size: 1024,
            validate_every: 500,
            iterations: 5000,
            optimizer: AdamConfig::adam(0.05),
            schedule: Schedule::Step {
                every: 4000,
                factor: 0.3,
            },
            clip_norm: None,
            seed: 0,
            precision: Precision::F32,
        }
    }
}

impl CrowdConfig {
    /// Checks every setting.
    pub fn validate(&self) -> Result<()> {
        self.problem.validate()?;
        check_sizes("crowd", self.m, self.n_th, self.nt, self.nt_val)?;
        if self.resample_every == 0 {
            return Err(Error::InvalidArgument(
                "crowd: resample_every = 0 (need ≥ 1)".into(),
            ));
        }
        for (what, n) in [
            ("batch size", self.batch_size),
            ("validation size", self.validation_size),
        ] {
            if n as u64 > MAX_SAMPLE {
                return Err(Error::InvalidArgument(format!(
                    "crowd: {what} {n} exceeds the generator's {MAX_SAMPLE}"
                )));
            }
        }
        self.precision.policy().validate()?;
        crate::optim::validate_run(
            self.batch_size,
            self.iterations,
            &self.optimizer,
            self.schedule,
            self.clip_norm,
        )
    }

    /// The config as JSON.
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string(self)
            .map_err(|e| Error::InvalidArgument(format!("crowd config: {e}")))
    }

    /// Parses a JSON config (unknown keys are errors) and validates it.
    pub fn from_json(text: &str) -> Result<Self> {
        let c: CrowdConfig = serde_json::from_str(text)
            .map_err(|e| Error::InvalidArgument(format!("crowd config: {e}")))?;
        c.validate()?;
        Ok(c)
    }

    /// The training particles of iteration `it` (B × d): round ⌊it/resample_every⌋ of
    /// [`PARTICLE_STREAM`].
    pub fn particles(&self, it: u64) -> Result<Vec<f64>> {
        let round = it / self.resample_every.max(1);
        self.problem
            .rho0
            .sample(self.batch_size, self.seed, PARTICLE_STREAM, round)
    }

    /// The validation particles (from [`VALIDATION_STREAM`]).
    pub fn validation_particles(&self) -> Result<Vec<f64>> {
        self.problem
            .rho0
            .sample(self.validation_size, self.seed, VALIDATION_STREAM, 0)
    }
}

/// What [`train_crowd`] reports after every iteration.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CrowdProgress {
    /// Iterations completed.
    pub iteration: u64,
    /// Iterations in the run.
    pub iterations: u64,
    /// The batch's costs before the step.
    pub costs: CrowdCosts,
    /// The gradient's global norm before clipping.
    pub grad_norm: f64,
    /// The learning rate of this step.
    pub lr: f64,
    /// The validation costs after this step, when computed.
    pub validation: Option<CrowdCosts>,
    /// Wall-clock seconds of this iteration.
    pub seconds: f64,
}

/// A trained crowd potential and its record.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainedCrowd {
    /// The config it was trained with.
    pub config: CrowdConfig,
    /// The potential Φ (particles move by −∇ₓΦ/α_L).
    pub params: OtFlowParams,
    /// Costs of every iteration (training batches).
    pub costs: Vec<CrowdCosts>,
    /// (iterations completed, validation costs), after the last iteration and every
    /// `validate_every`.
    pub validation: Vec<(u64, CrowdCosts)>,
}

impl TrainedCrowd {
    /// The objective with `nt` steps (f64 policy), for roll-outs and evaluation.
    pub fn objective(&self, nt: usize) -> Result<CrowdObjective> {
        CrowdObjective::new(self.config.problem.clone(), nt, PrecisionPolicy::f64())
    }

    /// Rolls the particles `x` out with `nt` RK4 steps in f64.
    pub fn rollout(&self, x: &[f64], nt: usize) -> Result<Rollout> {
        let mut g = Graph::new(Cpu::new());
        self.objective(nt)?.rollout(&mut g, &self.params, x)
    }

    /// The model file: the potential Φ/α_L over [0, T] (the runtime's field −∇Φ is then
    /// the crowd's velocity), with the config in the provenance.
    pub fn to_artifact(&self) -> Result<Artifact> {
        let w = self.config.problem.weights.transport;
        let prov = Provenance::now(concat!("socflow-trainer ", env!("CARGO_PKG_VERSION")))
            .with_detail("problem", "crowd-motion mean-field game")
            .with_detail("config", self.config.to_json()?)
            .with_detail(
                "convention",
                "agents start at x ~ rho0 at t=0 and move by dz/dt = -grad_x Phi; exported Phi \
                 is the trained potential divided by the transport weight",
            )
            .with_detail("iterations", self.costs.len());
        Ok(Artifact::otflow(
            scale_potential(&self.params, w)?,
            [0.0, self.config.problem.t_final],
            prov,
        )?)
    }
}

/// Trains the crowd potential (seeded and deterministic for a given thread count);
/// `progress` is called after every iteration.
///
/// Errors: [`Error::InvalidArgument`] for a bad config; [`Error::Numerical`] when the
/// objective or its gradient is not finite; the solver's errors.
pub fn train_crowd(
    config: &CrowdConfig,
    progress: &mut dyn FnMut(&CrowdProgress),
) -> Result<TrainedCrowd> {
    train_crowd_checkpointed(config, &mut Checkpointing::none(), progress)
}

/// [`train_crowd`] with periodic checkpoints and resumption (a resumed run continues
/// bitwise as the uninterrupted one; its `costs` then start at the resumed iteration).
pub fn train_crowd_checkpointed(
    config: &CrowdConfig,
    ckpt: &mut Checkpointing<'_>,
    progress: &mut dyn FnMut(&CrowdProgress),
) -> Result<TrainedCrowd> {
    config.validate()?;
    let config_json = config.to_json()?;
    let policy = config.precision.policy();
    let objective = CrowdObjective::new(config.problem.clone(), config.nt, policy)?;
    let val_objective = CrowdObjective::new(config.problem.clone(), config.nt_val, policy)?;
    let (mut opt, start_it) = PotentialOptimizer::start(
        init_params(config.problem.d, config.m, config.n_th, config.seed)?,
        ckpt,
        &config_json,
        config.optimizer,
        config.schedule,
        config.iterations,
    )?;
    let val_x = if config.validation_size > 0 {
        Some(config.validation_particles()?)
    } else {
        None
    };
    let mut g = Graph::new(Cpu::new());
    let mut costs = Vec::with_capacity(config.iterations as usize);
    let mut record = Vec::new();
    let mut x = Vec::new();
    let mut round = None;
    for it in start_it..config.iterations {
        let start = std::time::Instant::now();
        let r = it / config.resample_every;
        if round != Some(r) {
            x = config.particles(it)?;
            round = Some(r);
        }
        let (c, grad) = objective.costs_and_gradient(&mut g, &opt.params, &x)?;
        check_objective(c.j, "the crowd objective", it)?;
        let (grad_norm, lr) = opt.step(&grad, config.clip_norm, it, "crowd")?;
        let seconds = start.elapsed().as_secs_f64();
        costs.push(c);
        let done = it + 1;
        let due = validation_due(done, config.iterations, config.validate_every);
        let mut val = None;
        if let (true, Some(vx)) = (due, &val_x) {
            let v = val_objective.costs(&mut g, &opt.params, vx)?;
            opt.scheduler.observe(v.j);
            record.push((done, v));
            val = Some(v);
        }
        opt.after_iteration(ckpt, done, config.iterations, &config_json)?;
        progress(&CrowdProgress {
            iteration: done,
            iterations: config.iterations,
            costs: c,
            grad_norm,
            lr,
            validation: val,
            seconds,
        });
    }
    Ok(TrainedCrowd {
        config: config.clone(),
        params: opt.params,
        costs,
        validation: record,
    })
}
