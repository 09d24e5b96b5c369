//! NeuralSOC on the 12-D quadcopter of Onken et al. (2022): trains Φ_θ, exports it with
//! the quadcopter's control law u* = −½B(z)ᵀ∇Φ, loads it back through the runtime and
//! rolls the deployed controller out under the problem's noise (200 Euler–Maruyama
//! steps, as the original evaluates), beside the uncontrolled cost and the published
//! figures (original NeuralSOC about 3,350; Onken et al.'s deterministic controller
//! about 9,350). It also reports the training time to that goal and draws the
//! closed-loop paths.
//!
//! `cargo run --release --example quadcopter -- [ITERATIONS] [--m M] [--batch B]
//! [--steps N] [--lr LR] [--spread S] [--cost-scale K] [--paths P] [--seed S] [--clip C]
//! [--w control,hjb,terminal,gradient,bsde] [--eval-every E] [--eval-paths Q]
//! [--out FILE] [--plot FILE.png]`
//!
//! The defaults are `examples/configs/quadcopter.toml`'s (the config `socflow train`
//! runs for the same model): m = 32, 64 paths × 100 steps per iteration, Adam at 0.005
//! cut by 0.3 every third of the run, gradient norm clipped at 100, loss weights
//! (control 1, terminal 0.01, gradient 0.001, BSDE 0.05), 4000 iterations, training
//! costs times K = 0.001 (see `QuadcopterProblem::with_cost_scale`: the same optimal
//! control, Φ·K). Costs are printed in the problem's own units.
//!
//! Time to goal: every E iterations (default 100) the current Φ_θ is exported and the
//! deployed controller rolled out (200 steps, Q = 256 paths, other noise than the
//! final evaluation's); the run prints the wall time, and the training time alone, at
//! which that cost first went below 3,350.
//!
//! A run on 2 cores (release), alone on the machine: 170 s of training, 42 ms per
//! iteration; the deployed controller costs 3,304 ± 23 over 1,000 paths of 200 steps
//! (running 2,390, terminal 914; mean final distance to the target 0.36), against
//! 478,281 uncontrolled and the original's 3,350. With the time-to-goal evaluations
//! (the same bits: they do not touch training), on 2 cores shared with other jobs
//! (57.6 ms per iteration): the deployed cost first went below 3,350 at iteration
//! 2,700 (3,347 ± 29, within a standard error of the goal; 3,356 at 2,800, below it
//! from 2,900 on), 175.8 s wall (173.1 s without the 3.6 s of evaluations); it was
//! 12,123 at iteration 100, 3,994 at 1,000, 3,589 at 2,000, 3,261 at 4,000. Its learned
//! Φ(0, z₀) is not the cost-to-go: with these weights the offset that the
//! initialization matched to the first (falling) roll-outs is barely corrected; only
//! ∇Φ drives the controller.
//!
//! `--spread S` trains from starts spread as (−1.5, −1.5, −1.5) + S·N(0, I₃) in position
//! (the original trains with S = 1); the evaluation always starts at (−1.5, −1.5, −1.5).
//! `--plot` (default `quadcopter_paths.png`) draws 48 paths of the final evaluation:
//! the ground track and the altitude.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use serde::Deserialize;
use socflow_cli::plot_paths::{quadcopter_png, Marks, Paths};
use socflow_runtime::artifact::StorageDtype;
use socflow_runtime::controller::Controller;
use socflow_runtime::model::Model;
use socflow_runtime::nn::OtFlowParams;
use socflow_trainer::autodiff::Cpu;
use socflow_trainer::checkpoint::{Checkpoint, Checkpointing};
use socflow_trainer::optim::Schedule;
use socflow_trainer::soc::reference::closed_loop_cost;
use socflow_trainer::soc::{
    train_soc_checkpointed, ControlProblem, LossWeights, QuadcopterProblem, SocConfig, TrainedSoc,
    QUADCOPTER_DIM,
};

/// The original NeuralSOC controller's closed-loop cost on this problem (200 steps).
const NEURAL_SOC_COST: f64 = 3350.0;
/// Onken et al. (2022)'s deterministic controller's cost under the same noise.
const ONKEN_COST: f64 = 9350.0;
/// Euler–Maruyama steps of every evaluation (the original's).
const EVAL_STEPS: usize = 200;
/// Seed of the time-to-goal evaluations (the final one uses `FINAL_SEED`).
const GOAL_SEED: u64 = 777;
/// Seed of the final evaluation.
const FINAL_SEED: u64 = 12345;
/// Paths drawn in the plot.
const PLOT_PATHS: usize = 48;

/// The settings `socflow train` uses for this model, and this example's defaults.
const CONFIG: &str = include_str!("configs/quadcopter.toml");

type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

/// The parts of the config the example reads (other keys are `socflow train`'s).
#[derive(Deserialize)]
struct Config {
    soc: SocConfig,
    soc_problem: ProblemTable,
}

#[derive(Deserialize)]
struct ProblemTable {
    builtin: String,
    cost_scale: f64,
    position_std: f64,
}

/// Φ_θ of a checkpoint's parameters (the trainer's names are the artifact's).
fn params_of(c: &Checkpoint, m: usize, n_th: usize) -> AnyResult<OtFlowParams> {
    let p = &c.params;
    let r = p
        .names
        .iter()
        .position(|n| n == "A")
        .map(|i| p.shapes[i][0])
        .ok_or("the checkpoint has no tensor `A`")?;
    let mut tensors: BTreeMap<String, Vec<f64>> = p
        .names
        .iter()
        .cloned()
        .zip(p.values.iter().cloned())
        .collect();
    Ok(OtFlowParams::from_state_dict(
        QUADCOPTER_DIM,
        m,
        n_th,
        r,
        &mut tensors,
    )?)
}

/// The deployed controller of Φ_θ with the training problem's law.
fn deployed(
    params: OtFlowParams,
    config: &SocConfig,
    scaled: &QuadcopterProblem,
) -> AnyResult<(Controller<f64>, Vec<u8>)> {
    let trained = TrainedSoc {
        config: config.clone(),
        params,
        costs: Vec::new(),
        validation: Vec::new(),
    };
    let art = trained.to_artifact(scaled as &dyn ControlProblem<Cpu>, Some(&scaled.to_json()?))?;
    let bytes = art.to_bytes(StorageDtype::F64)?;
    let ctl = Model::<f64>::from_bytes(&bytes)?.controller()?;
    Ok((ctl, bytes))
}

fn main() -> AnyResult<()> {
    let file: Config = toml::from_str(CONFIG)?;
    if file.soc_problem.builtin != "quadcopter" {
        return Err("examples/configs/quadcopter.toml: builtin is not the quadcopter".into());
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let given_iterations: Option<u64> = match args.first() {
        Some(a) if !a.starts_with("--") => Some(a.parse()?),
        _ => None,
    };
    let flag = |f: &str| -> Option<String> {
        args.iter()
            .position(|a| a == f)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let num = |f: &str, default: f64| -> AnyResult<f64> {
        Ok(flag(f).map(|s| s.parse()).transpose()?.unwrap_or(default))
    };
    let problem = match num("--spread", file.soc_problem.position_std)? {
        s if s > 0.0 => QuadcopterProblem::neural_soc_spread(s),
        _ => QuadcopterProblem::neural_soc(),
    };
    problem.validate()?;
    // Training runs on the problem with its costs multiplied by --cost-scale (the same
    // optimal control, Φ scaled down); the evaluations use the original costs.
    let scale = num("--cost-scale", file.soc_problem.cost_scale)?;
    if !(scale.is_finite() && scale > 0.0) {
        return Err(format!("--cost-scale {scale}: need a finite factor > 0").into());
    }
    let scaled = problem.with_cost_scale(scale)?;
    let mut config = file.soc;
    if let Some(w) = flag("--w") {
        let v: Vec<f64> = w.split(',').map(str::parse).collect::<Result<_, _>>()?;
        if v.len() != 5 {
            return Err("--w takes five weights: control,hjb,terminal,gradient,bsde".into());
        }
        config.weights = LossWeights {
            control: v[0],
            hjb: v[1],
            terminal: v[2],
            terminal_gradient: v[3],
            bsde: v[4],
        };
    }
    if let Some(it) = given_iterations {
        // The config's schedule cuts the rate every third of its run: keep that.
        config.iterations = it;
        if let Schedule::Step { factor, .. } = config.schedule {
            config.schedule = Schedule::Step {
                every: (it / 3).max(1),
                factor,
            };
        }
    }
    config.m = num("--m", config.m as f64)? as usize;
    config.steps = num("--steps", config.steps as f64)? as usize;
    config.batch_size = num("--batch", config.batch_size as f64)? as usize;
    config.optimizer.lr = num("--lr", config.optimizer.lr)?;
    config.clip_norm = Some(num("--clip", config.clip_norm.unwrap_or(100.0))?);
    config.seed = num("--seed", config.seed as f64)? as u64;
    let iterations = config.iterations;
    let eval_every = num("--eval-every", 100.0)? as u64;
    let eval_paths = num("--eval-paths", 256.0)? as usize;
    let paths = num("--paths", 1000.0)? as usize;
    let plot = PathBuf::from(flag("--plot").unwrap_or_else(|| "quadcopter_paths.png".into()));
    config.validate()?;
    println!(
        "quadcopter: sigma {}, T {}, L = {} + |u|^2, g = {}|z - z_target|^2; m = {}, {} paths x {} \
         steps per iteration, {} iterations, costs x {scale} for training",
        problem.sigma,
        problem.horizon,
        problem.running_offset,
        problem.terminal_weight,
        config.m,
        config.batch_size,
        config.steps,
        iterations
    );

    // Every `eval_every` iterations the checkpoint hook deploys the current Φ_θ and
    // rolls it out at 200 steps; its time is kept out of the training time.
    let start = Instant::now();
    let mut train_seconds = 0.0;
    let mut eval_seconds = 0.0;
    let mut goal: Option<(u64, f64, f64, f64)> = None;
    let mut eval_error: Option<String> = None;
    let goal_options = problem.rollout_options(EVAL_STEPS, eval_paths, GOAL_SEED);
    let (m, n_th) = (config.m, config.n_th);
    let mut evaluate = |c: &Checkpoint| -> AnyResult<()> {
        let t = Instant::now();
        let (ctl, _) = deployed(params_of(c, m, n_th)?, &config, &scaled)?;
        let (cost, se) = ctl.simulate(&problem, &goal_options)?.cost();
        eval_seconds += t.elapsed().as_secs_f64();
        let wall = start.elapsed().as_secs_f64();
        println!(
            "it {:5}  deployed cost ({EVAL_STEPS} steps, {eval_paths} paths) {cost:10.1} ± {se:7.1}  \
             wall {wall:6.1} s",
            c.iteration
        );
        if goal.is_none() && cost < NEURAL_SOC_COST {
            goal = Some((c.iteration, wall, wall - eval_seconds, cost));
        }
        Ok(())
    };
    let mut save = |c: &Checkpoint| -> socflow_trainer::Result<()> {
        if eval_error.is_none() {
            if let Err(e) = evaluate(c) {
                eval_error = Some(e.to_string());
            }
        }
        Ok(())
    };
    let mut ckpt = Checkpointing {
        every: eval_every,
        resume: None,
        save: &mut save,
    };
    let report_every = (iterations / 10).max(1);
    let trained = train_soc_checkpointed(&scaled, &config, &mut ckpt, &mut |p| {
        train_seconds += p.seconds;
        if let Some(v) = p.validation.filter(|_| p.iteration % report_every == 0) {
            println!(
                "it {:5}  loss {:12.2}  trainer val cost {:10.1}  Phi(0,z0) {:10.1}  term {:9.2}  \
                 bsde {:9.2}  {:.3} s/it",
                p.iteration,
                p.costs.loss,
                v.costs.cost / scale,
                v.initial_value / scale,
                v.costs.terminal,
                v.costs.bsde,
                p.seconds
            );
        }
    })?;
    let wall = start.elapsed().as_secs_f64();
    if let Some(e) = eval_error {
        return Err(format!("time-to-goal evaluation: {e}").into());
    }

    let (mut ctl, bytes) = deployed(trained.params.clone(), &config, &scaled)?;
    if let Some(path) = flag("--out") {
        std::fs::write(&path, &bytes)?;
        println!("wrote {path}");
    }
    let evaluation = problem.rollout_options(EVAL_STEPS, paths, FINAL_SEED);
    let roll = ctl.simulate(&problem, &evaluation)?;
    let (cost, se) = roll.cost();
    let running: f64 = roll.running_cost.iter().sum::<f64>() / paths as f64;
    let dist: f64 = roll
        .finals
        .chunks_exact(12)
        .map(|z| {
            z[..3]
                .iter()
                .zip(&problem.target)
                .map(|(a, b)| (a - b).powi(2))
                .sum::<f64>()
                .sqrt()
        })
        .sum::<f64>()
        / paths as f64;
    let free = closed_loop_cost(
        &problem.reference(),
        &problem.start,
        |_, _, u| {
            u.fill(0.0);
            Ok(())
        },
        EVAL_STEPS,
        paths,
        FINAL_SEED,
    )?;
    let phi0 = ctl.value(0.0, &problem.start)? / scale;

    // The first paths of the final evaluation (path p sees the noise of (seed, p)).
    let mut popts = evaluation.clone();
    popts.paths = paths.min(PLOT_PATHS);
    popts.keep_trajectories = true;
    let states = ctl
        .simulate(&problem, &popts)?
        .trajectories
        .ok_or("the controller returned no trajectories")?;
    quadcopter_png(
        &plot,
        &format!(
            "quadcopter: {} closed-loop paths of the deployed controller",
            popts.paths
        ),
        &Paths {
            states: &states,
            paths: popts.paths,
            points: EVAL_STEPS + 1,
            dim: QUADCOPTER_DIM,
            t0: 0.0,
            t1: problem.horizon,
        },
        &Marks {
            start: &problem.start,
            target: Some(&problem.target),
        },
    )?;

    println!(
        "trained in {wall:.1} s wall ({train_seconds:.1} s in the iterations, {:.1} ms per \
         iteration; {eval_seconds:.1} s in the time-to-goal evaluations)",
        1e3 * train_seconds / iterations.max(1) as f64
    );
    match goal {
        Some((it, wall, train, c)) => println!(
            "time to goal (deployed cost < {NEURAL_SOC_COST:.0} at {EVAL_STEPS} steps, checked \
             every {eval_every} iterations): iteration {it}, {wall:.1} s wall ({train:.1} s \
             without the evaluations), cost {c:.1}"
        ),
        None => println!(
            "time to goal: the deployed cost never went below {NEURAL_SOC_COST:.0} (checked \
             every {eval_every} iterations)"
        ),
    }
    println!(
        "deployed controller (runtime, {EVAL_STEPS} steps, {paths} paths): cost {cost:.1} ± {se:.1} \
         (running {running:.1}, terminal {:.1}); mean final distance to the target {dist:.3}",
        cost - running
    );
    println!("learned Phi(0, z0) = {phi0:.1} (the trained Phi divided by the cost scale {scale})");
    println!(
        "uncontrolled: {:.0}; original NeuralSOC: about {NEURAL_SOC_COST:.0}; Onken et al.: \
         about {ONKEN_COST:.0}; goal below {NEURAL_SOC_COST:.0}: {}",
        free.mean,
        if cost < NEURAL_SOC_COST {
            "met"
        } else {
            "not met"
        }
    );
    println!("paths: {}", plot.display());
    Ok(())
}
