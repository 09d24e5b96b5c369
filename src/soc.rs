//! NeuralSOC on the command line: the `[soc_problem]` table of `socflow train` configs,
//! training with progress lines and independent reference answers, closed-loop
//! roll-outs of exported SOC models (`socflow simulate`), and the demo's small problem.
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
use socflow_runtime::controller::{mean_and_standard_error, Dynamics, SimulateOptions};
use socflow_runtime::model::Model;
use socflow_runtime::npy::write_npy;
use socflow_trainer::autodiff::{Cpu, Graph};
use socflow_trainer::checkpoint::Checkpointing;
use socflow_trainer::soc::reference::{ColeHopf, Diffusion, Lqr, LqrSolution};
use socflow_trainer::soc::simulate::{rollout_options, starts_at_a_point};
use socflow_trainer::soc::train::VALIDATION_FIRST_SAMPLE;
use socflow_trainer::soc::{
    train_soc_checkpointed, ControlProblem, QuadcopterProblem, QuadraticProblem, Sampling,
    SocConfig, SocObjective, SocValidation, StateCost, StateDrift, TerminalCost, TrainedSoc,
    QUADCOPTER_CONTROLS, QUADCOPTER_DIM,
};

use crate::plot::{self, Window};
use crate::train::{Tick, TrainProgress};

/// Largest state dimension of the built-in LQR (its matrices are d × d).
pub const MAX_LQR_DIM: usize = 1000;

fn default_shifted_weight() -> f64 {
    1000.0
}

fn default_lqr_dim() -> usize {
    10
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
}

/// The `[soc_problem]` table: a built-in problem or a full [`QuadraticProblem`].
#[derive(Clone, Debug, PartialEq)]
pub enum SocProblemSpec {
    /// `builtin = "hjb100" | "shifted_target" | "lqr"` with its parameters.
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

    /// The problem itself (validated).
    pub fn build(&self) -> Result<QuadraticProblem> {
        let p = match self {
            SocProblemSpec::Builtin(Builtin::Hjb100 {}) => QuadraticProblem::hjb100(),
            SocProblemSpec::Builtin(Builtin::ShiftedTarget { weight }) => {
                if !(weight.is_finite() && *weight > 0.0) {
                    bail!("[soc_problem]: weight = {weight} (need a finite weight > 0)");
                }
                QuadraticProblem::shifted_target(*weight)
            }
            SocProblemSpec::Builtin(Builtin::Lqr { dim, seed }) => lqr_problem(*dim, *seed)?,
            SocProblemSpec::Inline(p) => (**p).clone(),
        };
        p.validate().map_err(|e| anyhow!("[soc_problem]: {e}"))?;
        Ok(p)
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

/// Trains Φ_θ for `problem`, reporting every iteration to `progress` (validation
/// closed-loop cost and mean Φ(0, z₀) when computed), and builds the model file.
pub fn run_soc(
    problem: &QuadraticProblem,
    config: &SocConfig,
    ckpt: &mut Checkpointing<'_>,
    progress: &mut dyn FnMut(&Tick),
) -> Result<SocOutcome> {
    problem.validate()?;
    let start = Instant::now();
    let trained = train_soc_checkpointed(problem, config, ckpt, &mut |p| {
        progress(&Tick {
            iteration: p.iteration,
            iterations: p.iterations,
            loss: p.costs.loss,
            validation: p.validation.map(|v| ("validation cost", v.costs.cost)),
            detail: p.validation.map(|v| ("Φ(0,z₀)", v.initial_value)),
        })
    })?;
    let seconds = start.elapsed().as_secs_f64();
    let validation = match trained.validation.last() {
        Some(v) if v.iteration == config.iterations => *v,
        // A run resumed from its last checkpoint runs no iteration, so no validation.
        _ => validate(problem, config, &trained)?,
    };
    let json = problem.to_json()?;
    let artifact = trained.to_artifact::<Cpu, QuadraticProblem>(problem, Some(&json))?;
    Ok(SocOutcome {
        reference: reference_at_starts(problem, config),
        trained,
        artifact,
        validation,
        seconds,
    })
}

/// The trainer's validation of `trained` (what the training loop computes after its
/// last iteration).
fn validate(
    problem: &QuadraticProblem,
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

/// A short description of a problem: name, sizes, horizon, noise.
fn describe(p: &QuadraticProblem) -> String {
    format!(
        "{} (d = {}, k = {}, T = {}, σ = {:.6})",
        p.name, p.dim, p.control_dim, p.horizon, p.sigma
    )
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
/// figures beside the reference answer when the problem has one.
pub fn train(
    spec: &SocProblemSpec,
    config: &SocConfig,
    ckpt: &mut Checkpointing<'_>,
    output: &Path,
) -> Result<()> {
    let problem = spec.build()?;
    config.validate().context("[soc]")?;
    eprintln!(
        "soc: {}; {} iterations of {} paths, {} Euler–Maruyama steps",
        describe(&problem),
        config.iterations,
        config.batch_size,
        config.steps
    );
    let mut bar = TrainProgress::new("NeuralSOC", config.iterations);
    let r = run_soc(&problem, config, ckpt, &mut |t| bar.tick(t));
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
        config.steps, config.validation_paths, v.costs.cost
    );
    let point = starts_at_a_point(&problem);
    let at = if point {
        "Φ(0, x₀)".to_string()
    } else {
        format!(
            "mean Φ(0, z₀) over {} validation starts",
            config.validation_paths
        )
    };
    println!("learned {at} (trainer): {:.6}", v.initial_value);
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
        let x0 = problem.initial.mean();
        let phi = model.controller()?.value(0.0, x0)?;
        println!("learned Φ(0, x₀) of the exported model (runtime): {phi:.6}");
    }
    println!("model: {}", output.display());
    Ok(())
}

/// `socflow simulate` on a model whose provenance records its SOC problem: rolls out
/// u = −M∇Φ under the problem's dynamics and noise and prints the mean cost with its
/// standard error, the learned Φ(0, x₀) and the reference when there is one.
pub fn simulate(args: &crate::SimulateArgs, model: &Model<f64>, problem_json: &str) -> Result<()> {
    // The quadratic family, or the quadcopter (its own problem type, state-dependent
    // control law); the first parse's error is the informative one.
    let (quadratic, quadcopter) = match QuadraticProblem::from_json(problem_json) {
        Ok(p) => (Some(p), None),
        Err(e) => match QuadcopterProblem::from_json(problem_json) {
            Ok(q) => (None, Some(q)),
            Err(_) => bail!("the model's recorded problem (soc_problem): {e}"),
        },
    };
    let (name, dim, controls, horizon, sigma, dynamics): (_, _, _, _, _, &dyn Dynamics<f64>) =
        match (&quadratic, &quadcopter) {
            (Some(p), _) => (p.name.as_str(), p.dim, p.control_dim, p.horizon, p.sigma, p),
            (None, Some(q)) => (
                "quadcopter",
                QUADCOPTER_DIM,
                QUADCOPTER_CONTROLS,
                q.horizon,
                q.sigma,
                q,
            ),
            (None, None) => bail!("the model's recorded problem (soc_problem) is missing"),
        };
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
    let mut opts = match (&quadratic, &quadcopter) {
        (Some(p), _) => rollout_options(p, args.steps, args.paths, args.seed),
        (None, Some(q)) => q.rollout_options(args.steps, args.paths, args.seed),
        (None, None) => bail!("the model's recorded problem (soc_problem) is missing"),
    };
    let from = if args.x0.is_empty() {
        match &quadratic {
            Some(p) if !starts_at_a_point(p) => {
                "the mean of the problem's initial distribution".to_string()
            }
            _ => "the problem's start".to_string(),
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
    let phi = ctl.clone().value(0.0, &opts.x0)?;
    println!("learned Φ(0, x₀): {phi:.6}");
    let reference = match quadratic.as_ref().map(Reference::of).transpose() {
        Ok(r) => r.flatten(),
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
        let (Some(r), Some(problem)) = (&reference, &quadratic) else {
            bail!("--reference: this problem has no reference answer (Riccati or Cole–Hopf)");
        };
        // Cole–Hopf's feedback takes milliseconds an evaluation in 100-D: show progress.
        let bar = crate::progress::Progress::new("reference", opts.paths as u64);
        let optimal = feedback_costs(problem, &opts, |t, z| r.control(t, z), |n| bar.set(n));
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
    let mut bar = TrainProgress::new("NeuralSOC", config.iterations);
    let r = run_soc(
        &problem,
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
        let p = s.build().unwrap();
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
    fn inline_problems_parse_validate_and_name_typos() {
        let text = "[soc_problem]\nname = \"t\"\ndim = 2\ncontrol_dim = 1\nhorizon = 1.0\n\
                    sigma = 0.1\ndrift = { type = \"zero\" }\ninput = [0.0, 1.0]\n\
                    control_cost = [2.0]\nstate_cost = { type = \"constant\", value = 1.0 }\n\
                    terminal = { type = \"quadratic\", matrix = [1.0, 0.0, 0.0, 1.0], center = [1.0, 0.0] }\n\
                    initial = { type = \"point\", x = [0.0, 0.0] }\n";
        let p = spec(text).unwrap().build().unwrap();
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
