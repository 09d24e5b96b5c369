//! NeuralSOC on the command line: the `[soc_problem]` table of `socflow train` configs,
//! training with progress lines and independent reference answers, closed-loop
//! roll-outs of exported SOC models (`socflow simulate`, `--plot` for their paths), and
//! the demo's small problem.
//!
//! Every problem (the quadratic family, built-in or inline, and the quadcopter) goes
//! through [`SocProblem`], and a training run through [`SocTask`]: the problem in its
//! own units, and the factor its costs are multiplied by for training (`cost_scale`,
//! the quadcopter's). The model records the problem in its own units and the factor
//! ([`COST_SCALE_DETAIL`]), with the training problem's control law (which gives the
//! same u* from Φ_θ ≈ cost_scale·Φ), so every cost the commands print is in the
//! problem's units.
//!
//! Reference answers are found from the problem's structure, whatever its name:
//! Riccati for linear–quadratic problems (linear or zero drift, quadratic costs about
//! one center c with Ac = 0, so z − c is an LQR), Cole–Hopf for the radial log-terminal
//! problems (f = b·u, L = (r/2)‖u‖² plus a constant, g = w·ln(½(1 + ‖z − c‖²))).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use rayon::prelude::*;
use serde::Deserialize;
use socflow_runtime::artifact::{Artifact, StorageDtype};
use socflow_runtime::brownian::Brownian;
use socflow_runtime::controller::{mean_and_standard_error, Controller, Dynamics, SimulateOptions};
use socflow_runtime::model::Model;
use socflow_runtime::npy::write_npy;
use socflow_trainer::autodiff::{Cpu, Graph};
use socflow_trainer::checkpoint::Checkpointing;
use socflow_trainer::soc::reference::{ColeHopf, Diffusion, Lqr, LqrSolution};
use socflow_trainer::soc::simulate::{rollout_options, starts_at_a_point};
use socflow_trainer::soc::train::VALIDATION_FIRST_SAMPLE;
use socflow_trainer::soc::{
    train_soc_on_device, ControlProblem, QuadcopterProblem, QuadraticProblem, Sampling, SocConfig,
    SocObjective, SocProgress, SocValidation, StateCost, StateDrift, TerminalCost, TrainedSoc,
};

use crate::plot::{self, Window};
use crate::train::{Tick, TrainProgress};
use socflow_cli::plot_paths::{plane_png, quadcopter_png, Marks, Paths};

/// Largest state dimension of the built-in LQR (its matrices are d × d).
pub const MAX_LQR_DIM: usize = 1000;

fn default_shifted_weight() -> f64 {
    1000.0
}

fn default_lqr_dim() -> usize {
    10
}

fn default_cost_scale() -> f64 {
    1.0
}

/// A built-in problem of the `[soc_problem]` table, chosen by `builtin = "…"`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(tag = "builtin", rename_all = "snake_case", deny_unknown_fields)]
pub enum Builtin {
    /// The 100-D HJB benchmark of Han, Jentzen and E (f = 2u, L = ‖u‖², σ = √2,
    /// g = ln(½(1 + ‖z‖²)), z(0) = 0, T = 1; Cole–Hopf: Φ(0, 0) = 4.590162).
    Hjb100 {},
    /// The 100-D shifted target x_ref = 3·1 with terminal weight `weight`
    /// ([`QuadraticProblem::shifted_target`]).
    ShiftedTarget {
        /// The terminal weight w (default 1000, the original NeuralSOC code's).
        #[serde(default = "default_shifted_weight")]
        weight: f64,
    },
    /// The standard LQR of the trainer's tests ([`Lqr::standard`]) in `dim`
    /// dimensions: A = −½I + (0.4/√d)G (G standard normals from `seed`), B = R = Q =
    /// Q_T = I, σ = 0.5, T = 1, started at z(0) = 0.5·1.
    Lqr {
        /// State (= control) dimension d (default 10).
        #[serde(default = "default_lqr_dim")]
        dim: usize,
        /// Seed of A (default 0).
        #[serde(default)]
        seed: u64,
    },
    /// The 12-D quadcopter of Onken et al. (2022) as NeuralSOC poses it
    /// ([`QuadcopterProblem::neural_soc`]): from (−1.5, −1.5, −1.5) to (2, 2, 2) in
    /// T = 1 under σ = 0.2, L = 2 + ‖u‖², g = 2500‖z − z_target‖².
    Quadcopter {
        /// The factor the costs are multiplied by for training (default 1; 0.001 keeps
        /// Φ_θ at a scale Adam's steps move). The optimal control is the same; the
        /// model records the problem in its own units, so reported and simulated costs
        /// are in those.
        #[serde(default = "default_cost_scale")]
        cost_scale: f64,
        /// Training starts spread as start + `position_std`·N(0, I₃) in position
        /// (default 0: every path starts at the paper's single start).
        #[serde(default)]
        position_std: f64,
    },
}

/// The `[soc_problem]` table: a built-in problem or a full [`QuadraticProblem`].
#[derive(Clone, Debug, PartialEq)]
pub enum SocProblemSpec {
    /// `builtin = "hjb100" | "shifted_target" | "lqr" | "quadcopter"` with its
    /// parameters.
    Builtin(Builtin),
    /// Every field of a [`QuadraticProblem`] (validated when parsed).
    Inline(Box<QuadraticProblem>),
}

impl SocProblemSpec {
    /// Parses the `[soc_problem]` table of the config `text` (`table` is that table,
    /// already read): a table with a `builtin` key is a built-in problem, any other a
    /// full problem. The table is read again from the text, so an error names the key
    /// and its line.
    pub fn from_toml(text: &str, table: &toml::Table) -> Result<Self> {
        #[derive(Deserialize)]
        struct WithBuiltin {
            soc_problem: Builtin,
        }
        #[derive(Deserialize)]
        struct WithInline {
            soc_problem: QuadraticProblem,
        }
        if table.contains_key("builtin") {
            let w: WithBuiltin = toml::from_str(text).map_err(|e| anyhow!("{e}"))?;
            Ok(SocProblemSpec::Builtin(w.soc_problem))
        } else {
            let w: WithInline = toml::from_str(text).map_err(|e| anyhow!("{e}"))?;
            w.soc_problem
                .validate()
                .map_err(|e| anyhow!("[soc_problem]: {e}"))?;
            Ok(SocProblemSpec::Inline(Box::new(w.soc_problem)))
        }
    }

    /// The problem itself and the scale its costs are trained at (validated); an
    /// error names the offending key.
    pub fn build(&self) -> Result<SocTask> {
        let (problem, cost_scale) = match self {
            SocProblemSpec::Builtin(Builtin::Hjb100 {}) => {
                (SocProblem::Quadratic(QuadraticProblem::hjb100()), 1.0)
            }
            SocProblemSpec::Builtin(Builtin::ShiftedTarget { weight }) => {
                if !(weight.is_finite() && *weight > 0.0) {
                    bail!("[soc_problem]: weight = {weight} (need a finite weight > 0)");
                }
                let p = QuadraticProblem::shifted_target(*weight);
                (SocProblem::Quadratic(p), 1.0)
            }
            SocProblemSpec::Builtin(Builtin::Lqr { dim, seed }) => {
                (SocProblem::Quadratic(lqr_problem(*dim, *seed)?), 1.0)
            }
            SocProblemSpec::Builtin(Builtin::Quadcopter {
                cost_scale,
                position_std,
            }) => {
                if !(position_std.is_finite() && *position_std >= 0.0) {
                    bail!(
                        "[soc_problem]: position_std = {position_std} (need a finite spread ≥ 0)"
                    );
                }
                let p = if *position_std > 0.0 {
                    QuadcopterProblem::neural_soc_spread(*position_std)
                } else {
                    QuadcopterProblem::neural_soc()
                };
                (SocProblem::Quadcopter(p), *cost_scale)
            }
            SocProblemSpec::Inline(p) => (SocProblem::Quadratic((**p).clone()), 1.0),
        };
        SocTask::new(problem, cost_scale)
    }
}

/// A problem `socflow train` and `socflow simulate` know: the quadratic family or the
/// quadcopter. Each is a [`ControlProblem`] (training) and a [`Dynamics`] (closed-loop
/// roll-outs of the deployed controller); everything else goes through this type, so
/// the commands have one code path for every problem.
#[derive(Clone, Debug, PartialEq)]
pub enum SocProblem {
    /// A [`QuadraticProblem`] (built-in or inline).
    Quadratic(QuadraticProblem),
    /// The quadcopter (a state-dependent control law).
    Quadcopter(QuadcopterProblem),
}

impl SocProblem {
    /// Parses a model's recorded problem: the quadratic family, else the quadcopter;
    /// when neither parses, the quadratic family's error (the informative one).
    pub fn from_json(text: &str) -> Result<Self> {
        match QuadraticProblem::from_json(text) {
            Ok(p) => Ok(SocProblem::Quadratic(p)),
            Err(e) => match QuadcopterProblem::from_json(text) {
                Ok(q) => Ok(SocProblem::Quadcopter(q)),
                Err(_) => bail!("{e}"),
            },
        }
    }

    /// The problem as JSON (what a model records).
    pub fn to_json(&self) -> Result<String> {
        Ok(match self {
            SocProblem::Quadratic(p) => p.to_json()?,
            SocProblem::Quadcopter(q) => q.to_json()?,
        })
    }

    /// Checks every setting.
    pub fn validate(&self) -> Result<()> {
        match self {
            SocProblem::Quadratic(p) => p.validate()?,
            SocProblem::Quadcopter(q) => q.validate()?,
        }
        Ok(())
    }

    /// The problem as the trainer sees it.
    pub fn control(&self) -> &dyn ControlProblem<Cpu> {
        match self {
            SocProblem::Quadratic(p) => p,
            SocProblem::Quadcopter(q) => q,
        }
    }

    /// The problem as the runtime's closed loop rolls it out.
    pub fn dynamics(&self) -> &dyn Dynamics<f64> {
        match self {
            SocProblem::Quadratic(p) => p,
            SocProblem::Quadcopter(q) => q,
        }
    }

    /// A short name ("quadcopter" for the quadcopter).
    pub fn name(&self) -> &str {
        match self {
            SocProblem::Quadratic(p) => &p.name,
            SocProblem::Quadcopter(_) => "quadcopter",
        }
    }

    /// The mean of z(0) (the start of the runtime's roll-outs).
    pub fn start(&self) -> &[f64] {
        match self {
            SocProblem::Quadratic(p) => p.initial.mean(),
            SocProblem::Quadcopter(q) => &q.start,
        }
    }

    /// The state the terminal cost pulls towards (its center), where it has one.
    pub fn target(&self) -> Option<&[f64]> {
        match self {
            SocProblem::Quadratic(p) => match &p.terminal {
                TerminalCost::Quadratic { center, .. } | TerminalCost::LogRadial { center, .. } => {
                    Some(center)
                }
            },
            SocProblem::Quadcopter(q) => Some(&q.target),
        }
    }

    /// Whether every path starts at one state.
    pub fn starts_at_a_point(&self) -> bool {
        match self {
            SocProblem::Quadratic(p) => starts_at_a_point(p),
            SocProblem::Quadcopter(q) => q.start_std.is_none(),
        }
    }

    /// Options for the runtime's closed loop on [0, T] under the problem's noise:
    /// `paths` Euler–Maruyama paths of `steps` steps from [`start`](Self::start).
    pub fn rollout_options(&self, steps: usize, paths: usize, seed: u64) -> SimulateOptions<f64> {
        match self {
            SocProblem::Quadratic(p) => rollout_options(p, steps, paths, seed),
            SocProblem::Quadcopter(q) => q.rollout_options(steps, paths, seed),
        }
    }

    /// The independent answer for the value function (quadratic problems of the
    /// structures [`Reference`] knows), `None` otherwise.
    pub fn reference(&self) -> Result<Option<Reference>> {
        match self {
            SocProblem::Quadratic(p) => Reference::of(p),
            SocProblem::Quadcopter(_) => Ok(None),
        }
    }

    /// The same problem with every cost multiplied by `factor` > 0 (the same optimal
    /// control, Φ·`factor`); only the quadcopter scales, other problems take 1.
    pub fn with_costs_times(&self, factor: f64) -> Result<Self> {
        if !(factor.is_finite() && factor > 0.0) {
            bail!("[soc_problem]: cost_scale = {factor} (need a finite factor > 0)");
        }
        match self {
            SocProblem::Quadcopter(q) => Ok(SocProblem::Quadcopter(
                q.with_cost_scale(factor)
                    .map_err(|e| anyhow!("[soc_problem]: cost_scale = {factor}: {e}"))?,
            )),
            p if factor == 1.0 => Ok(p.clone()),
            p => bail!(
                "[soc_problem]: cost_scale = {factor}: only the quadcopter trains at a cost \
                 scale (problem {})",
                p.name()
            ),
        }
    }

    /// A short description: name, sizes, horizon, noise.
    pub fn describe(&self) -> String {
        let c = self.control();
        let spread = match self {
            SocProblem::Quadcopter(QuadcopterProblem {
                start_std: Some(s), ..
            }) => format!(", starts spread by {} in position", s[0]),
            _ => String::new(),
        };
        format!(
            "{} (d = {}, k = {}, T = {}, σ = {:.6}{spread})",
            self.name(),
            c.dim(),
            c.control_dim(),
            c.horizon(),
            c.sigma()
        )
    }
}

/// The provenance detail of a model trained at a cost scale: the factor its costs were
/// multiplied by, so Φ_θ / cost_scale is in the recorded problem's units.
pub const COST_SCALE_DETAIL: &str = "cost_scale";

/// A problem as `socflow train` trains it: posed in its own units, trained with its
/// costs multiplied by `cost_scale`.
#[derive(Clone, Debug, PartialEq)]
pub struct SocTask {
    /// The problem in its own units (what the model records and simulate rolls out).
    pub problem: SocProblem,
    /// The factor the costs are multiplied by for training (1: none).
    pub cost_scale: f64,
    /// The problem the trainer sees (costs times `cost_scale`).
    pub training: SocProblem,
}

impl SocTask {
    /// `problem` trained at `cost_scale` (both validated).
    pub fn new(problem: SocProblem, cost_scale: f64) -> Result<Self> {
        problem
            .validate()
            .map_err(|e| anyhow!("[soc_problem]: {e:#}"))?;
        let training = problem.with_costs_times(cost_scale)?;
        Ok(SocTask {
            problem,
            cost_scale,
            training,
        })
    }

    /// A training figure (a cost, a value of Φ_θ) in the problem's own units.
    pub fn unscaled(&self, v: f64) -> f64 {
        v / self.cost_scale
    }

    /// What the run prints first: the problem and its cost scale.
    pub fn describe(&self) -> String {
        let mut s = self.problem.describe();
        if self.cost_scale != 1.0 {
            s.push_str(&format!(
                ", costs × {} for training (reported in the problem's units)",
                self.cost_scale
            ));
        }
        s
    }
}

/// The built-in LQR (see [`Builtin::Lqr`]).
pub fn lqr_problem(dim: usize, seed: u64) -> Result<QuadraticProblem> {
    if dim == 0 || dim > MAX_LQR_DIM {
        bail!("[soc_problem]: dim = {dim} (the built-in LQR takes 1 ≤ dim ≤ {MAX_LQR_DIM})");
    }
    let lqr = Lqr::standard(dim, seed)?;
    let sigma = match lqr.sigma {
        Diffusion::Scalar(s) => s,
        Diffusion::Matrix(_) => bail!("the standard LQR has matrix noise; expected σ·I"),
    };
    let mut p = QuadraticProblem::linear_quadratic(
        lqr.a,
        lqr.b,
        lqr.r,
        lqr.q,
        lqr.q_terminal,
        sigma,
        lqr.horizon,
        vec![0.5; dim],
    )?;
    p.name = format!("lqr_d{dim}_seed{seed}");
    Ok(p)
}

/// An independent answer for a problem's value function (see the module docs).
pub enum Reference {
    /// Riccati for the LQR in z − `center`; Φ gains `constant`·(T − t).
    Riccati {
        /// The Riccati solution.
        solution: Box<LqrSolution>,
        /// The common center c of the costs.
        center: Vec<f64>,
        /// The constant running cost q₀.
        constant: f64,
        /// The horizon T.
        horizon: f64,
    },
    /// Cole–Hopf; Φ gains `constant`·(T − t).
    ColeHopf {
        /// The radial problem.
        problem: ColeHopf,
        /// The constant running cost.
        constant: f64,
    },
}

/// `value` when `m` is `value`·I (n × n), else `None`.
fn scalar_identity(m: &[f64], n: usize) -> Option<f64> {
    let s = *m.first()?;
    let ok = m.len() == n * n
        && (0..n).all(|i| (0..n).all(|j| m[i * n + j] == if i == j { s } else { 0.0 }));
    ok.then_some(s)
}

/// (M + Mᵀ)/2: the symmetric matrix of the same quadratic form.
fn symmetrized(m: &[f64], n: usize) -> Vec<f64> {
    let mut s = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            s[i * n + j] = 0.5 * (m[i * n + j] + m[j * n + i]);
        }
    }
    s
}

impl Reference {
    /// The reference of `problem`, if its structure has one; an error when it has one
    /// that cannot be computed (a Riccati solution that blows up, say).
    pub fn of(problem: &QuadraticProblem) -> Result<Option<Reference>> {
        if let Some(r) = Self::riccati(problem)? {
            return Ok(Some(r));
        }
        Ok(Self::cole_hopf(problem))
    }

    fn riccati(p: &QuadraticProblem) -> Result<Option<Reference>> {
        let d = p.dim;
        let TerminalCost::Quadratic {
            matrix: q_terminal,
            center,
        } = &p.terminal
        else {
            return Ok(None);
        };
        let (q, constant) = match &p.state_cost {
            StateCost::Zero => (vec![0.0; d * d], 0.0),
            StateCost::Constant { value } => (vec![0.0; d * d], *value),
            StateCost::Quadratic {
                matrix,
                center: c,
                offset,
            } => {
                if c != center {
                    return Ok(None);
                }
                (symmetrized(matrix, d), *offset)
            }
        };
        let a = match &p.drift {
            StateDrift::Zero => vec![0.0; d * d],
            StateDrift::Linear { matrix } => matrix.clone(),
        };
        // z − c follows the same linear dynamics only when Ac = 0.
        let scale = a.iter().fold(0.0f64, |m, v| m.max(v.abs()))
            * center.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        for i in 0..d {
            let ac: f64 = (0..d).map(|j| a[i * d + j] * center[j]).sum();
            if ac.abs() > 1e-12 * scale {
                return Ok(None);
            }
        }
        let lqr = Lqr {
            d,
            k: p.control_dim,
            a,
            b: p.input.clone(),
            r: p.control_cost.clone(),
            q,
            q_terminal: symmetrized(q_terminal, d),
            sigma: Diffusion::Scalar(p.sigma),
            horizon: p.horizon,
        };
        let solution = lqr.solve().context("the Riccati reference")?;
        Ok(Some(Reference::Riccati {
            solution: Box::new(solution),
            center: center.clone(),
            constant,
            horizon: p.horizon,
        }))
    }

    fn cole_hopf(p: &QuadraticProblem) -> Option<Reference> {
        let d = p.dim;
        let TerminalCost::LogRadial { weight, center } = &p.terminal else {
            return None;
        };
        if !matches!(p.drift, StateDrift::Zero) || p.control_dim != d {
            return None;
        }
        let constant = match &p.state_cost {
            StateCost::Zero => 0.0,
            StateCost::Constant { value } => *value,
            StateCost::Quadratic { .. } => return None,
        };
        let b = scalar_identity(&p.input, d)?;
        let r = scalar_identity(&p.control_cost, d)?;
        let problem = ColeHopf {
            d,
            sigma: p.sigma,
            b,
            r,
            weight: *weight,
            x_ref: center.clone(),
            horizon: p.horizon,
        };
        problem.validate().ok()?;
        Some(Reference::ColeHopf { problem, constant })
    }

    /// The method's name ("Riccati", "Cole–Hopf").
    pub fn method(&self) -> &'static str {
        match self {
            Reference::Riccati { .. } => "Riccati",
            Reference::ColeHopf { .. } => "Cole–Hopf",
        }
    }

    /// The reference Φ(t, x).
    pub fn value(&self, t: f64, x: &[f64]) -> Result<f64> {
        Ok(match self {
            Reference::Riccati {
                solution,
                center,
                constant,
                horizon,
            } => {
                if x.len() != center.len() {
                    bail!("a state of {} values, expected {}", x.len(), center.len());
                }
                let z: Vec<f64> = x.iter().zip(center).map(|(a, c)| a - c).collect();
                solution.value(t, &z)? + constant * (horizon - t)
            }
            Reference::ColeHopf { problem, constant } => {
                problem.value(t, x)? + constant * (problem.horizon - t)
            }
        })
    }

    /// For a Riccati reference, Φ(0, x) of the problem the trainer's roll-outs pose:
    /// Euler–Maruyama on `steps` equal steps, solved exactly by the discrete Riccati
    /// recursion, at each state of `points` (n × d); `None` for other references.
    pub fn discrete_values(&self, steps: usize, points: &[f64]) -> Result<Option<Vec<f64>>> {
        let Reference::Riccati {
            solution,
            center,
            constant,
            horizon,
        } = self
        else {
            return Ok(None);
        };
        let d = center.len();
        let disc = solution.problem().solve_discrete(steps)?;
        let mut out = Vec::with_capacity(points.len() / d.max(1));
        for x in points.chunks_exact(d) {
            let z: Vec<f64> = x.iter().zip(center).map(|(a, c)| a - c).collect();
            out.push(disc.value(0, &z)? + constant * horizon);
        }
        Ok(Some(out))
    }

    /// The reference optimal control u*(t, x).
    pub fn control(&self, t: f64, x: &[f64]) -> Result<Vec<f64>> {
        Ok(match self {
            Reference::Riccati {
                solution, center, ..
            } => {
                if x.len() != center.len() {
                    bail!("a state of {} values, expected {}", x.len(), center.len());
                }
                let z: Vec<f64> = x.iter().zip(center).map(|(a, c)| a - c).collect();
                solution.control(t, &z)?
            }
            Reference::ColeHopf { problem, .. } => problem.control(t, x)?,
        })
    }
}

/// The result of a NeuralSOC run.
pub struct SocOutcome {
    /// The trained value function and its record.
    pub trained: TrainedSoc,
    /// The model file's content (Φ_θ, the control map, the problem's JSON).
    pub artifact: Artifact,
    /// The validation after the last iteration.
    pub validation: SocValidation,
    /// The reference's mean Φ(0, z₀) over the validation starts.
    pub reference: Option<ReferenceValues>,
    /// Wall-clock seconds of training.
    pub seconds: f64,
}

/// A reference's mean Φ(0, z₀) over the validation starts.
#[derive(Clone, Copy, Debug)]
pub struct ReferenceValues {
    /// The method ("Riccati", "Cole–Hopf").
    pub method: &'static str,
    /// The continuous-time problem's value.
    pub value: f64,
    /// The optimum of the trainer's Euler–Maruyama problem (its `steps`), where known
    /// exactly (discrete Riccati).
    pub discrete: Option<f64>,
}

/// The reference's mean Φ(0, z₀) over the starts of `problem`'s validation paths (the
/// states the trainer's mean Φ(0, z₀) is taken over); `None` without a reference. A
/// reference that exists but fails is reported on stderr and left out.
fn reference_at_starts(problem: &QuadraticProblem, config: &SocConfig) -> Option<ReferenceValues> {
    let compute = || -> Result<Option<ReferenceValues>> {
        let Some(r) = Reference::of(problem)? else {
            return Ok(None);
        };
        let d = problem.dim;
        let n = if starts_at_a_point(problem) {
            1
        } else {
            config.validation_paths
        };
        let starts = ControlProblem::<Cpu>::initial_states(
            problem,
            n,
            config.seed,
            VALIDATION_FIRST_SAMPLE,
        )?;
        let mut sum = 0.0;
        for z in starts.chunks_exact(d) {
            sum += r.value(0.0, z)?;
        }
        let discrete = r
            .discrete_values(config.steps, &starts)?
            .map(|v| v.iter().sum::<f64>() / n as f64);
        Ok(Some(ReferenceValues {
            method: r.method(),
            value: sum / n as f64,
            discrete,
        }))
    };
    match compute() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("note: no reference answer for this problem: {e:#}");
            None
        }
    }
}

/// Trains Φ_θ for `task`, reporting every iteration to `progress` (validation
/// closed-loop cost and mean Φ(0, z₀) when computed, in the problem's units), and
/// builds the model file: Φ_θ with the training problem's control law, the problem in
/// its own units and the cost scale.
pub fn run_soc(
    task: &SocTask,
    config: &SocConfig,
    ckpt: &mut Checkpointing<'_>,
    progress: &mut dyn FnMut(&Tick),
) -> Result<SocOutcome> {
    let training = task.training.control();
    let start = Instant::now();
    let mut tick = |p: &SocProgress| {
        progress(&Tick {
            iteration: p.iteration,
            iterations: p.iterations,
            loss: p.costs.loss,
            validation: p
                .validation
                .map(|v| ("validation cost", task.unscaled(v.costs.cost))),
            detail: p
                .validation
                .map(|v| ("Φ(0,z₀)", task.unscaled(v.initial_value))),
        })
    };
    // Every problem the CLI knows runs on both backends: train on the config's device
    // with the concrete type (a `dyn ControlProblem<Cpu>` would be CPU-only).
    let trained = match &task.training {
        SocProblem::Quadratic(p) => train_soc_on_device(p, config, ckpt, &mut tick)?,
        SocProblem::Quadcopter(q) => train_soc_on_device(q, config, ckpt, &mut tick)?,
    };
    let seconds = start.elapsed().as_secs_f64();
    let validation = match trained.validation.last() {
        Some(v) if v.iteration == config.iterations => *v,
        // A run resumed from its last checkpoint runs no iteration, so no validation.
        _ => validate(training, config, &trained)?,
    };
    // The law comes from the training problem (its control weight carries the scale,
    // so the same u* follows from ∇Φ_θ); the record is the problem in its own units.
    let json = task.problem.to_json()?;
    let mut artifact = trained.to_artifact(training, Some(&json))?;
    if task.cost_scale != 1.0 {
        artifact
            .card
            .provenance
            .details
            .insert(COST_SCALE_DETAIL.into(), format!("{}", task.cost_scale));
    }
    let reference = match &task.problem {
        SocProblem::Quadratic(p) => reference_at_starts(p, config),
        SocProblem::Quadcopter(_) => None,
    };
    Ok(SocOutcome {
        reference,
        trained,
        artifact,
        validation,
        seconds,
    })
}

/// The trainer's validation of `trained` (what the training loop computes after its
/// last iteration).
fn validate(
    problem: &dyn ControlProblem<Cpu>,
    config: &SocConfig,
    trained: &TrainedSoc,
) -> Result<SocValidation> {
    let objective = SocObjective::new(problem, config)?;
    let mut g = Graph::new(Cpu::new());
    let n = config.validation_paths;
    let p = &trained.params;
    let costs = objective.costs(&mut g, p, n, VALIDATION_FIRST_SAMPLE, Sampling::Pmp)?;
    let v0 = objective.initial_values(&mut g, p, n, VALIDATION_FIRST_SAMPLE)?;
    Ok(SocValidation {
        iteration: config.iterations,
        costs,
        initial_value: v0.iter().sum::<f64>() / n as f64,
    })
}

/// A state for messages: its values when short, its size otherwise.
fn show_state(x: &[f64]) -> String {
    if x.len() <= 6 {
        let v: Vec<String> = x.iter().map(|v| format!("{v}")).collect();
        format!("[{}]", v.join(", "))
    } else if x.iter().all(|v| *v == x[0]) {
        format!("{}·1 ({} values)", x[0], x.len())
    } else {
        format!("({} values)", x.len())
    }
}

/// `socflow train` for `problem = "soc"`: trains, writes the model file (f64, so the
/// deployed Φ is the trained one), reloads it through the runtime and prints the final
/// figures (in the problem's units) beside the reference answer when the problem has
/// one.
pub fn train(
    spec: &SocProblemSpec,
    config: &SocConfig,
    ckpt: &mut Checkpointing<'_>,
    output: &Path,
) -> Result<()> {
    let task = spec.build()?;
    config.validate().context("[soc]")?;
    eprintln!(
        "soc: {}; {} iterations of {} paths, {} Euler–Maruyama steps",
        task.describe(),
        config.iterations,
        config.batch_size,
        config.steps
    );
    let mut bar = TrainProgress::new("NeuralSOC", config.iterations);
    let r = run_soc(&task, config, ckpt, &mut |t| bar.tick(t));
    bar.finish();
    let outcome = r?;
    outcome
        .artifact
        .save(output, StorageDtype::F64)
        .with_context(|| format!("cannot write {}", output.display()))?;
    let model = Model::<f64>::load(output)
        .with_context(|| format!("cannot reload the exported model {}", output.display()))?;
    eprintln!("trained in {:.1} s", outcome.seconds);
    let costs = &outcome.trained.costs;
    if !costs.is_empty() {
        let last = &costs[costs.len().saturating_sub(50)..];
        println!(
            "final training loss (mean of the last {}): {:.6}",
            last.len(),
            last.iter().map(|c| c.loss).sum::<f64>() / last.len() as f64
        );
    }
    let v = &outcome.validation;
    println!(
        "validation closed-loop cost (trainer, {} Euler–Maruyama steps, {} paths): {:.6}",
        config.steps,
        config.validation_paths,
        task.unscaled(v.costs.cost)
    );
    let point = task.problem.starts_at_a_point();
    let at = if point {
        "Φ(0, x₀)".to_string()
    } else {
        format!(
            "mean Φ(0, z₀) over {} validation starts",
            config.validation_paths
        )
    };
    println!(
        "learned {at} (trainer): {:.6}",
        task.unscaled(v.initial_value)
    );
    if let Some(r) = outcome.reference {
        println!("reference {at} ({}): {:.6}", r.method, r.value);
        if let Some(v) = r.discrete {
            println!(
                "optimum {at} of the trainer's {}-step Euler–Maruyama problem (discrete {}): {v:.6}",
                config.steps, r.method
            );
        }
    }
    if point {
        let phi = model.controller()?.value(0.0, task.problem.start())?;
        println!(
            "learned Φ(0, x₀) of the exported model (runtime): {:.6}",
            task.unscaled(phi)
        );
    }
    println!("model: {}", output.display());
    Ok(())
}

/// The cost scale a model was trained at (its [`COST_SCALE_DETAIL`]; 1 when absent).
pub fn recorded_cost_scale(model: &Model<f64>) -> Result<f64> {
    let Some(text) = model
        .artifact()
        .card
        .provenance
        .details
        .get(COST_SCALE_DETAIL)
    else {
        return Ok(1.0);
    };
    match text.parse::<f64>() {
        Ok(k) if k.is_finite() && k > 0.0 => Ok(k),
        _ => bail!("the model's {COST_SCALE_DETAIL} `{text}` is not a finite factor > 0"),
    }
}

/// Closed-loop paths drawn by `socflow simulate --plot` (at most).
pub const PLOT_PATHS: usize = 48;

/// How [`plot_closed_loop`] draws the paths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlotLayout {
    /// The plane of the first two coordinates ([`plane_png`]).
    Plane,
    /// The quadcopter's ground track and altitude ([`quadcopter_png`]).
    Quadcopter,
}

/// Writes `path`: the first (at most [`PLOT_PATHS`]) paths of the closed loop that
/// `opts` rolls out (path p sees the noise of (seed, p), so these are the first paths
/// of that roll-out), from `opts.x0` to `target`, titled with `name`.
pub fn plot_closed_loop<D: Dynamics<f64> + ?Sized>(
    path: &Path,
    name: &str,
    ctl: &Controller<f64>,
    dynamics: &D,
    opts: &SimulateOptions<f64>,
    target: Option<&[f64]>,
    layout: PlotLayout,
) -> Result<()> {
    let mut popts = opts.clone();
    popts.paths = opts.paths.min(PLOT_PATHS);
    popts.keep_trajectories = true;
    let states = ctl
        .simulate(dynamics, &popts)?
        .trajectories
        .context("the controller returned no trajectories")?;
    let paths = Paths {
        states: &states,
        paths: popts.paths,
        points: popts.steps + 1,
        dim: ctl.state_dim(),
        t0: popts.t0,
        t1: popts.t1,
    };
    let marks = Marks {
        start: &popts.x0,
        target,
    };
    let title = format!("{name}: {} closed-loop paths", popts.paths);
    match layout {
        PlotLayout::Quadcopter => quadcopter_png(path, &title, &paths, &marks),
        PlotLayout::Plane => plane_png(path, &title, &paths, &marks),
    }
    .with_context(|| format!("cannot write the plot {}", path.display()))?;
    println!("plot: {}", path.display());
    Ok(())
}

/// `socflow simulate` on a model whose provenance records its SOC problem: rolls out
/// the deployed feedback (u = −M∇Φ or the model's control law) under the problem's
/// dynamics and noise and prints the mean cost with its standard error, the learned
/// Φ(0, x₀) (in the problem's units) and the reference when there is one; `--plot`
/// draws the first paths.
pub fn simulate(args: &crate::SimulateArgs, model: &Model<f64>, problem_json: &str) -> Result<()> {
    let problem = SocProblem::from_json(problem_json)
        .map_err(|e| anyhow!("the model's recorded problem (soc_problem): {e:#}"))?;
    let cost_scale = recorded_cost_scale(model)?;
    let control = problem.control();
    let (dim, controls) = (control.dim(), control.control_dim());
    let (horizon, sigma) = (control.horizon(), control.sigma());
    let name = problem.name();
    let dynamics = problem.dynamics();
    let ctl = model.controller()?;
    if model.dim() != dim || ctl.control_dim() != controls {
        bail!(
            "the model maps {} states to {} controls, its recorded problem has d = {dim}, k = {controls}",
            model.dim(),
            ctl.control_dim(),
        );
    }
    let (t0, t1) = model.time_interval();
    if t0 != 0.0 || t1 != horizon {
        bail!("the model's time interval [{t0}, {t1}] is not the problem's [0, {horizon}]");
    }
    let mut opts = problem.rollout_options(args.steps, args.paths, args.seed);
    let from = if args.x0.is_empty() {
        if problem.starts_at_a_point() {
            "the problem's start".to_string()
        } else {
            "the mean of the problem's initial distribution".to_string()
        }
    } else {
        if args.x0.len() != dim {
            bail!(
                "--x0 has {} values, the problem's state dimension is {dim}",
                args.x0.len()
            );
        }
        opts.x0 = args.x0.clone();
        "--x0".to_string()
    };
    if let Some(s) = args.sigma {
        opts.sigma = s;
    }
    let out = ctl.simulate(dynamics, &opts)?;
    let (mean, se) = out.cost();
    println!(
        "closed loop of the learned feedback on {name}: {} paths, {} Euler–Maruyama steps, \
         σ = {}, seed {}, from x₀ = {} ({from})",
        opts.paths,
        opts.steps,
        opts.sigma,
        opts.seed,
        show_state(&opts.x0)
    );
    println!("mean cost (running + terminal): {mean:.9} ± {se:.9} (standard error)");
    let (running, _) = mean_and_standard_error(&out.running_cost);
    let (terminal, _) = mean_and_standard_error(&out.terminal_cost);
    println!("  mean running cost ∫L ds: {running:.6}, mean terminal cost g(z(T)): {terminal:.6}");
    let phi = ctl.clone().value(0.0, &opts.x0)? / cost_scale;
    if cost_scale == 1.0 {
        println!("learned Φ(0, x₀): {phi:.6}");
    } else {
        println!("learned Φ(0, x₀): {phi:.6} (Φ_θ / cost_scale {cost_scale})");
    }
    let reference = match problem.reference() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("note: no reference answer for this problem: {e:#}");
            None
        }
    };
    match &reference {
        // The reference solves the problem at its own σ.
        Some(r) if opts.sigma == sigma => {
            let v = r.value(0.0, &opts.x0)?;
            println!("reference Φ(0, x₀) ({}): {v:.6}", r.method());
        }
        _ => {}
    }
    if args.reference {
        let (Some(r), SocProblem::Quadratic(quadratic)) = (&reference, &problem) else {
            bail!("--reference: this problem has no reference answer (Riccati or Cole–Hopf)");
        };
        // Cole–Hopf's feedback takes milliseconds an evaluation in 100-D: show progress.
        let bar = crate::progress::Progress::new("reference", opts.paths as u64);
        let optimal = feedback_costs(quadratic, &opts, |t, z| r.control(t, z), |n| bar.set(n));
        bar.finish();
        let optimal = optimal?;
        let (m, s) = mean_and_standard_error(&optimal);
        println!(
            "mean cost of the {} feedback on the same paths: {m:.9} ± {s:.9}",
            r.method()
        );
        let diff: Vec<f64> = out
            .running_cost
            .iter()
            .zip(&out.terminal_cost)
            .zip(&optimal)
            .map(|((a, b), c)| a + b - c)
            .collect();
        let (m, s) = mean_and_standard_error(&diff);
        println!("learned − {}, path by path: {m:.6} ± {s:.6}", r.method());
    }
    if let Some(path) = &args.output {
        write_npy(path, &[opts.paths, dim], &out.finals)
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("{}", path.display());
    }
    if let Some(path) = &args.plot {
        let layout = match &problem {
            SocProblem::Quadcopter(_) => PlotLayout::Quadcopter,
            SocProblem::Quadratic(_) => PlotLayout::Plane,
        };
        plot_closed_loop(path, name, &ctl, dynamics, &opts, problem.target(), layout)?;
    }
    if !mean.is_finite() {
        bail!("the closed loop produced a non-finite cost");
    }
    Ok(())
}

/// Each path's cost under the feedback `policy(t, z)`, on the Euler–Maruyama scheme
/// and Brownian increments of the runtime's `Controller::simulate` with the same
/// options: path p, step k uses the increments of (seed, p, k), so two policies
/// rolled out with one seed see the same noise. Paths run in parallel; the result
/// does not depend on the thread count. `done(n)` reports n finished paths.
pub fn feedback_costs(
    problem: &QuadraticProblem,
    opts: &SimulateOptions<f64>,
    policy: impl Fn(f64, &[f64]) -> Result<Vec<f64>> + Sync,
    done: impl Fn(u64) + Sync,
) -> Result<Vec<f64>> {
    let finished = AtomicU64::new(0);
    let d = problem.dim;
    if opts.x0.len() != d || opts.steps == 0 {
        bail!("feedback roll-out: bad initial state or no steps");
    }
    let h = (opts.t1 - opts.t0) / opts.steps as f64;
    let brownian = Brownian::new(opts.seed);
    (0..opts.paths)
        .into_par_iter()
        .map(|path| -> Result<f64> {
            let (mut z, mut drift, mut dw) = (opts.x0.clone(), vec![0.0; d], vec![0.0; d]);
            let mut cost = 0.0;
            for k in 0..opts.steps {
                let s = opts.t0 + h * k as f64;
                let u = policy(s, &z)?;
                Dynamics::<f64>::drift(problem, s, &z, &u, &mut drift)?;
                cost += Dynamics::<f64>::running_cost(problem, s, &z, &u)? * h;
                brownian.increments(path as u64, k as u64, h, &mut dw)?;
                for j in 0..d {
                    z[j] += drift[j] * h + opts.sigma * dw[j];
                }
            }
            let cost = cost + Dynamics::<f64>::terminal_cost(problem, &z)?;
            done(finished.fetch_add(1, Ordering::Relaxed) + 1);
            Ok(cost)
        })
        .collect()
}

/// The demo's problem: a 2-D linear–quadratic regulator that steers from (2, 0) to the
/// origin across a slowly rotating drift: dz = (Az + u)ds + 0.2dW on [0, 2] with
/// A = [[−0.1, −0.5], [0.5, −0.1]], L = ½‖u‖², g = 5‖z‖² (Riccati gives its value
/// function). The rotation is slow because the trainer's Euler–Maruyama steps
/// (h = 0.1) grow a fast rotation's radius by √(1 + (ωh)²) a step, and the learned Φ
/// would be that of another problem.
pub fn demo_problem() -> Result<QuadraticProblem> {
    let eye = |s: f64| vec![s, 0.0, 0.0, s];
    let mut p = QuadraticProblem::linear_quadratic(
        vec![-0.1, -0.5, 0.5, -0.1],
        eye(1.0),
        eye(1.0),
        eye(0.0),
        eye(10.0),
        0.2,
        2.0,
        vec![2.0, 0.0],
    )?;
    p.state_cost = StateCost::Zero;
    p.name = "steer2d".into();
    Ok(p)
}

/// What the demo reports for its SOC problem.
pub struct SocDemoReport {
    /// Wall-clock seconds of training.
    pub train_seconds: f64,
    /// Learned Φ(0, x₀) (exported model, runtime).
    pub value: f64,
    /// Riccati's Φ(0, x₀).
    pub reference_value: f64,
    /// The optimum of the trainer's Euler–Maruyama problem (discrete Riccati).
    pub discrete_value: f64,
    /// The trainer's Euler–Maruyama steps.
    pub train_steps: usize,
    /// Paths and steps of the closed-loop estimates.
    pub paths: usize,
    /// Euler–Maruyama steps of the closed-loop estimates.
    pub steps: usize,
    /// Closed-loop cost of the learned feedback: mean and standard error.
    pub learned_cost: (f64, f64),
    /// Closed-loop cost of Riccati's feedback on the same paths.
    pub optimal_cost: (f64, f64),
    /// Learned minus Riccati, path by path: mean and standard error.
    pub difference: (f64, f64),
}

/// The demo's SOC part: trains [`demo_problem`] under `config`, exports
/// `neuralsoc.safetensors` to `out`, rolls out the learned feedback (runtime) and
/// Riccati's on the same Brownian paths, and plots `trajectories` closed-loop paths
/// (`neuralsoc_trajectories.png`).
pub fn demo(
    out: &Path,
    config: &SocConfig,
    paths: usize,
    trajectories: usize,
) -> Result<SocDemoReport> {
    let problem = demo_problem()?;
    let task = SocTask::new(SocProblem::Quadratic(problem.clone()), 1.0)?;
    let mut bar = TrainProgress::new("NeuralSOC", config.iterations);
    let r = run_soc(
        &task,
        config,
        &mut Checkpointing {
            every: 0,
            resume: None,
            save: &mut |_| Ok(()),
        },
        &mut |t| bar.tick(t),
    );
    bar.finish();
    let outcome = r?;
    eprintln!("NeuralSOC trained in {:.1} s", outcome.seconds);
    let path = out.join("neuralsoc.safetensors");
    outcome
        .artifact
        .save(&path, StorageDtype::F64)
        .with_context(|| format!("cannot write {}", path.display()))?;
    let model = Model::<f64>::load(&path)
        .with_context(|| format!("cannot load the exported {}", path.display()))?;
    let ctl = model.controller()?;
    let reference = Reference::of(&problem)?
        .context("the demo problem is linear–quadratic, so Riccati applies")?;
    let x0 = problem.initial.mean().to_vec();
    let steps = 100;
    let opts = rollout_options(&problem, steps, paths, 1);
    let learned = ctl.simulate(&problem, &opts)?;
    let learned_costs: Vec<f64> = learned
        .running_cost
        .iter()
        .zip(&learned.terminal_cost)
        .map(|(a, b)| a + b)
        .collect();
    let optimal_costs = feedback_costs(&problem, &opts, |t, z| reference.control(t, z), |_| {})?;
    let diff: Vec<f64> = learned_costs
        .iter()
        .zip(&optimal_costs)
        .map(|(a, b)| a - b)
        .collect();

    let mut topts = rollout_options(&problem, steps, trajectories, 2);
    topts.keep_trajectories = true;
    let tr = ctl.simulate(&problem, &topts)?;
    let states = tr
        .trajectories
        .context("the controller returned no trajectories")?;
    // paths × points × 2 → points × paths × 2 (the plot's layout).
    let points = steps + 1;
    let mut by_point = vec![0.0; states.len()];
    for p in 0..trajectories {
        for k in 0..points {
            for j in 0..2 {
                by_point[(k * trajectories + p) * 2 + j] = states[(p * points + k) * 2 + j];
            }
        }
    }
    plot::trajectories_png(
        &out.join("neuralsoc_trajectories.png"),
        "NeuralSOC: closed-loop paths from (2, 0) to the origin",
        &by_point,
        points,
        trajectories,
        Window { r: 2.2 },
    )?;
    Ok(SocDemoReport {
        train_seconds: outcome.seconds,
        value: ctl.clone().value(0.0, &x0)?,
        reference_value: reference.value(0.0, &x0)?,
        discrete_value: reference
            .discrete_values(config.steps, &x0)?
            .and_then(|v| v.first().copied())
            .context("Riccati has a discrete optimum")?,
        train_steps: config.steps,
        paths,
        steps,
        learned_cost: mean_and_standard_error(&learned_costs),
        optimal_cost: mean_and_standard_error(&optimal_costs),
        difference: mean_and_standard_error(&diff),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> Result<SocProblemSpec> {
        let doc: toml::Table = toml::from_str(text).map_err(|e| anyhow!("{e}"))?;
        let t = doc
            .get("soc_problem")
            .and_then(|v| v.as_table())
            .cloned()
            .unwrap_or_default();
        SocProblemSpec::from_toml(text, &t)
    }

    /// The quadratic problem a spec builds.
    fn quadratic(s: &SocProblemSpec) -> QuadraticProblem {
        match s.build().unwrap().problem {
            SocProblem::Quadratic(p) => p,
            other => panic!("not a quadratic problem: {other:?}"),
        }
    }

    #[test]
    fn builtins_parse_with_defaults_and_reject_typos() {
        let s = spec("[soc_problem]\nbuiltin = \"hjb100\"\n").unwrap();
        assert_eq!(s, SocProblemSpec::Builtin(Builtin::Hjb100 {}));
        let s = spec("[soc_problem]\nbuiltin = \"shifted_target\"\n").unwrap();
        assert_eq!(
            s,
            SocProblemSpec::Builtin(Builtin::ShiftedTarget { weight: 1000.0 })
        );
        let s = spec("[soc_problem]\nbuiltin = \"lqr\"\ndim = 3\n").unwrap();
        assert_eq!(s, SocProblemSpec::Builtin(Builtin::Lqr { dim: 3, seed: 0 }));
        let p = quadratic(&s);
        assert_eq!((p.dim, p.control_dim), (3, 3));
        assert_eq!(p.initial.mean(), &[0.5, 0.5, 0.5]);
        for (text, word) in [
            ("builtin = \"hjb101\"\n", "hjb101"),
            ("builtin = \"hjb100\"\nweight = 2.0\n", "weight"),
            ("builtin = \"lqr\"\ndimm = 3\n", "dimm"),
        ] {
            let e = format!("{:#}", spec(&format!("[soc_problem]\n{text}")).unwrap_err());
            assert!(e.contains(word) && e.contains("line"), "{e}");
        }
        let e = spec("[soc_problem]\nbuiltin = \"lqr\"\ndim = 0\n")
            .unwrap()
            .build()
            .unwrap_err();
        assert!(format!("{e:#}").contains("dim = 0"), "{e:#}");
    }

    #[test]
    fn the_quadcopter_trains_at_its_cost_scale_and_records_its_own_units() {
        let s = spec("[soc_problem]\nbuiltin = \"quadcopter\"\n").unwrap();
        assert_eq!(
            s,
            SocProblemSpec::Builtin(Builtin::Quadcopter {
                cost_scale: 1.0,
                position_std: 0.0
            })
        );
        let task = s.build().unwrap();
        assert_eq!(
            task.problem,
            SocProblem::Quadcopter(QuadcopterProblem::neural_soc())
        );
        assert_eq!(task.training, task.problem);
        let text = "[soc_problem]\nbuiltin = \"quadcopter\"\ncost_scale = 0.001\n\
                    position_std = 0.5\n";
        let task = spec(text).unwrap().build().unwrap();
        let (SocProblem::Quadcopter(q), SocProblem::Quadcopter(t)) =
            (&task.problem, &task.training)
        else {
            panic!("{task:?}");
        };
        // The record keeps the costs; the trainer's are a thousandth of them.
        assert_eq!(q, &QuadcopterProblem::neural_soc_spread(0.5));
        assert_eq!((q.terminal_weight, q.control_weight), (2500.0, 2.0));
        assert!((t.terminal_weight - 2.5).abs() < 1e-12, "{t:?}");
        assert!((t.running_offset - 0.002).abs() < 1e-15, "{t:?}");
        assert!((t.control_weight - 0.002).abs() < 1e-15, "{t:?}");
        assert_eq!(t.start_std, q.start_std);
        assert!((task.unscaled(3.3) - 3300.0).abs() < 1e-9);
        assert!(!task.problem.starts_at_a_point());
        assert_eq!(
            task.problem.target(),
            Some(&[2.0, 2.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0][..])
        );
        // The recorded JSON reads back as the quadcopter in its own units.
        let back = SocProblem::from_json(&task.problem.to_json().unwrap()).unwrap();
        assert_eq!(back, task.problem);
        // Typos and bad values name their key.
        for (text, word) in [
            ("cost_scal = 0.001\n", "cost_scal"),
            ("position_sd = 1.0\n", "position_sd"),
        ] {
            let e = format!(
                "{:#}",
                spec(&format!("[soc_problem]\nbuiltin = \"quadcopter\"\n{text}")).unwrap_err()
            );
            assert!(e.contains(word) && e.contains("line"), "{e}");
        }
        for (text, word) in [
            ("position_std = -1.0\n", "position_std = -1"),
            ("position_std = nan\n", "position_std = NaN"),
            ("cost_scale = 0.0\n", "cost_scale = 0"),
            ("cost_scale = -0.5\n", "cost_scale = -0.5"),
            ("cost_scale = inf\n", "cost_scale = inf"),
        ] {
            let e = spec(&format!("[soc_problem]\nbuiltin = \"quadcopter\"\n{text}"))
                .unwrap()
                .build()
                .unwrap_err();
            assert!(format!("{e:#}").contains(word), "{e:#}");
        }
        // Only the quadcopter trains at a scale.
        let lqr = SocProblem::Quadratic(lqr_problem(2, 0).unwrap());
        assert!(SocTask::new(lqr.clone(), 1.0).is_ok());
        let e = SocTask::new(lqr, 0.5).unwrap_err();
        assert!(format!("{e:#}").contains("cost_scale = 0.5"), "{e:#}");
    }

    #[test]
    fn inline_problems_parse_validate_and_name_typos() {
        let text = "[soc_problem]\nname = \"t\"\ndim = 2\ncontrol_dim = 1\nhorizon = 1.0\n\
                    sigma = 0.1\ndrift = { type = \"zero\" }\ninput = [0.0, 1.0]\n\
                    control_cost = [2.0]\nstate_cost = { type = \"constant\", value = 1.0 }\n\
                    terminal = { type = \"quadratic\", matrix = [1.0, 0.0, 0.0, 1.0], center = [1.0, 0.0] }\n\
                    initial = { type = \"point\", x = [0.0, 0.0] }\n";
        let p = quadratic(&spec(text).unwrap());
        assert_eq!(p.input, vec![0.0, 1.0]);
        let e = format!("{:#}", spec(&text.replace("sigma", "sigmaa")).unwrap_err());
        assert!(e.contains("sigmaa") && e.contains("line 6"), "{e}");
        let e = format!(
            "{:#}",
            spec(&text.replace("[0.0, 1.0]", "[0.0, 1.0, 2.0]")).unwrap_err()
        );
        assert!(e.contains("input matrix B"), "{e}");
    }

    #[test]
    fn references_are_found_from_the_structure() {
        let hjb = QuadraticProblem::hjb100();
        let r = Reference::of(&hjb).unwrap().unwrap();
        assert_eq!(r.method(), "Cole–Hopf");
        assert!((r.value(0.0, &[0.0; 100]).unwrap() - 4.590162).abs() < 1e-6);
        let lqr = lqr_problem(3, 1).unwrap();
        let r = Reference::of(&lqr).unwrap().unwrap();
        assert_eq!(r.method(), "Riccati");
        // Translation: the same LQR about a center c with A = 0 and a constant
        // running cost q₀ has Φ_c(t, x + c) = Φ(t, x) + q₀(T − t).
        let mut a = lqr.clone();
        a.drift = StateDrift::Zero;
        let base = Reference::of(&a)
            .unwrap()
            .unwrap()
            .value(0.3, &[0.1, -0.2, 0.4])
            .unwrap();
        let c = vec![1.0, 2.0, -3.0];
        let mut shifted = a.clone();
        if let StateCost::Quadratic { center, offset, .. } = &mut shifted.state_cost {
            *center = c.clone();
            *offset = 0.25;
        }
        if let TerminalCost::Quadratic { center, .. } = &mut shifted.terminal {
            *center = c.clone();
        }
        let v = Reference::of(&shifted)
            .unwrap()
            .unwrap()
            .value(0.3, &[1.1, 1.8, -2.6])
            .unwrap();
        assert!((v - base - 0.25 * 0.7).abs() < 1e-10, "{v}");
        // A linear drift that moves the center has no Riccati reference in z − c.
        if let StateCost::Quadratic { center, .. } = &mut a.state_cost {
            *center = c.clone();
        }
        if let TerminalCost::Quadratic { center, .. } = &mut a.terminal {
            *center = c;
        }
        a.drift = lqr.drift.clone();
        assert!(Reference::of(&a).unwrap().is_none());
    }
}
