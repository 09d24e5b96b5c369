//! NeuralSOC on the built-in 100-D problems: trains Φ_θ and prints the learned value
//! Φ(0, z₀), the closed-loop cost on validation paths and the time per iteration.
//!
//! `cargo run --release --example neuralsoc -- [hjb100|shifted1|shifted1000|lqr10] [ITERATIONS]
//! [--brownian] [--m M] [--batch B] [--steps N] [--lr LR] [--w A,HJB,T,GRAD,BSDE]
//! [--constant-lr] [--lr-every N] [--ema DECAY[,START]] [--cost-scale K]
//! [--rank R] [--init-scale S] [--squared] [--hjb-squared] [--seed S]
//! [--cole-hopf-feedback]`
//!
//! `--squared` / `--hjb-squared` penalize the BSDE / HJB residuals squared instead of
//! absolute ([`Residual`]); `--lr-every N` sets the step schedule's period (default
//! ITERATIONS/3, factor 0.3).
//!
//! LQR-10 (issue 4's goal, Φ and u within 2% of Riccati along optimal paths): reached
//! with `lqr10 8000 --m 32 --batch 32 --w 1,100,10,10,0 --hjb-squared --ema 0.995,4000`
//! (20 steps): Φ 0.26%, u 1.49% (seed 1: 0.21%, 1.37%) in 62 s on 2 shared cores
//! (6000 iterations: u 2.1%, 48 s); width 64, batch 64, 6000 iterations: 0.28%, 1.61%
//! in 204 s. The squared HJB residual carries it: it fits the continuous HJB equation,
//! so these beat the 20-step discrete optimum (2.1%, 3.2% from Riccati; against it the
//! learned Φ and u are 2.3% and 3.5% apart), and more steps are not needed. With the
//! absolute HJB residual, `--w 1,10,10,1,0`, u stalls near 5% (1000 / 3000 / 10000
//! iterations: 7.6% / 5.2% / 5.0%, errors piling up near T, and a larger terminal
//! gradient weight only moves them to t = 0); the default weights (BSDE, no HJB) give
//! 3.9%, 14.6% at 20 steps and 7.2%, 19.3% at 50; the squared BSDE alone ≥ 13% on u.
//! No help with the absolute HJB: rank 11, width 128, nTh 3, lr 0.003 or 0.03 (1000
//! iterations), batch 256 (3000).
//! The time-independent quadratic part cannot follow P(t) (diagonal ≈ 0.69 at t = 0 to
//! 1 at T), so the ResNet must: a direct least-squares fit of this architecture to the
//! exact Φ and ∇Φ needs ~10000 iterations for 0.7% on ∇Φ (5.6% at 3000).
//!
//! `--cost-scale K` trains on the problem with every cost multiplied by K (same optimal
//! control, value Φ·K: [`QuadraticProblem::with_cost_scale`]); everything printed is
//! in the original problem's units.

use socflow_runtime::artifact::StorageDtype;
use socflow_runtime::brownian::{Brownian, Stream};
use socflow_runtime::model::Model;
use socflow_trainer::autodiff::Cpu;
use socflow_trainer::optim::{AdamConfig, Schedule};
use socflow_trainer::soc::evaluate::{errors_along_optimal_paths, PathOptions};
use socflow_trainer::soc::reference::{closed_loop_cost, ColeHopf, Lqr};
use socflow_trainer::soc::{
    train_soc, Averaging, ControlProblem, InitialDistribution, LossWeights, QuadraticProblem,
    Residual, Sampling, SocConfig,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let name = args.first().map(String::as_str).unwrap_or("hjb100");
    let iterations: u64 = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(500);
    let flag = |f: &str| -> Option<String> {
        args.iter()
            .position(|a| a == f)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let problem = match name {
        "hjb100" => QuadraticProblem::hjb100(),
        "shifted1" => QuadraticProblem::shifted_target(1.0),
        "shifted1000" => QuadraticProblem::shifted_target(1000.0),
        "lqr10" => {
            let initial = InitialDistribution::Gaussian {
                mean: vec![0.5; 10],
                std: vec![0.5; 10],
            };
            QuadraticProblem::from_lqr(&Lqr::standard(10, 5)?, initial)?
        }
        other => return Err(format!("unknown problem {other}").into()),
    };
    let scale: f64 = flag("--cost-scale")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1.0);
    let scaled = problem.with_cost_scale(scale)?;
    let lr: f64 = flag("--lr").map(|s| s.parse()).transpose()?.unwrap_or(0.01);
    let config = SocConfig {
        m: flag("--m").map(|s| s.parse()).transpose()?.unwrap_or(64),
        n_th: 2,
        rank: flag("--rank").map(|s| s.parse()).transpose()?,
        init_scale: flag("--init-scale").map(|s| s.parse()).transpose()?,
        steps: flag("--steps")
            .map(|s| s.parse())
            .transpose()?
            .unwrap_or(20),
        batch_size: flag("--batch")
            .map(|s| s.parse())
            .transpose()?
            .unwrap_or(64),
        iterations,
        optimizer: AdamConfig::adam(lr),
        schedule: if args.iter().any(|a| a == "--constant-lr") {
            Schedule::Constant
        } else {
            Schedule::Step {
                every: flag("--lr-every")
                    .map(|s| s.parse())
                    .transpose()?
                    .unwrap_or((iterations / 3).max(1)),
                factor: 0.3,
            }
        },
        sampling: if args.iter().any(|a| a == "--brownian") {
            Sampling::Brownian
        } else {
            Sampling::Pmp
        },
        weights: match flag("--w") {
            Some(w) => {
                let v: Vec<f64> = w.split(',').map(str::parse).collect::<Result<_, _>>()?;
                if v.len() != 5 {
                    return Err("--w takes five weights: control,hjb,terminal,gradient,bsde".into());
                }
                LossWeights {
                    control: v[0],
                    hjb: v[1],
                    terminal: v[2],
                    terminal_gradient: v[3],
                    bsde: v[4],
                }
            }
            None => LossWeights::default(),
        },
        validate_every: (iterations / 10).max(1),
        validation_paths: 512,
        averaging: match flag("--ema") {
            Some(e) => {
                let mut it = e.split(',');
                let decay = it.next().unwrap_or("").parse()?;
                let start = it.next().map(str::parse).transpose()?.unwrap_or(0);
                Some(Averaging { decay, start })
            }
            None => None,
        },
        bsde_residual: if args.iter().any(|a| a == "--squared") {
            Residual::Squared
        } else {
            Residual::Absolute
        },
        hjb_residual: if args.iter().any(|a| a == "--hjb-squared") {
            Residual::Squared
        } else {
            Residual::Absolute
        },
        seed: flag("--seed").map(|s| s.parse()).transpose()?.unwrap_or(0),
        ..SocConfig::default()
    };
    let start = std::time::Instant::now();
    let trained = train_soc(&scaled, &config, &mut |p| {
        if let Some(v) = p.validation {
            println!(
                "it {:5}  loss {:10.4}  val cost {:10.4}  Phi(0,z0) {:.6}  term {:.4}  bsde {:.4}  {:.3} s/it  {:.0} s",
                p.iteration,
                p.costs.loss,
                v.costs.cost / scale,
                v.initial_value / scale,
                v.costs.terminal,
                v.costs.bsde,
                p.seconds,
                start.elapsed().as_secs_f64()
            );
        }
    })?;
    let v = trained.validation.last().ok_or("no validation")?;
    // Against the reference along its optimal paths (16 paths, 100 steps).
    let art = trained.to_artifact(&scaled as &dyn ControlProblem<Cpu>, None)?;
    let model = Model::<f64>::from_bytes(&art.to_bytes(StorageDtype::F64)?)?;
    let mut ctl = model.controller()?;
    let mut ctl2 = model.controller()?;
    let d = problem.dim;
    let gen = Brownian::new(99);
    let mean = problem.initial.mean().to_vec();
    let spread = match &problem.initial {
        InitialDistribution::Gaussian { std, .. } => std.clone(),
        InitialDistribution::Point { .. } => vec![0.0; d],
    };
    let mut starts = Vec::new();
    for p in 0..16 {
        let mut z = vec![0.0; d];
        gen.stream_normals(Stream(9), p, 0, &mut z)?;
        starts.push(
            z.iter()
                .zip(&mean)
                .zip(&spread)
                .map(|((x, m), s)| m + s * x)
                .collect(),
        );
    }
    let opts = PathOptions {
        starts,
        horizon: problem.horizon,
        steps: 100,
        every: 10,
        sigma: problem.sigma,
        seed: 99,
    };
    let drift = |z: &[f64], u: &[f64]| {
        let mut f = vec![0.0; z.len()];
        socflow_runtime::controller::Dynamics::<f64>::drift(&problem, 0.0, z, u, &mut f)?;
        Ok(f)
    };
    let mut learned = |t: f64, z: &[f64]| {
        let mut u = vec![0.0; d];
        ctl.control(t, z, &mut u)?;
        Ok((ctl.value(t, z)? / scale, u))
    };
    let errors = if name == "lqr10" {
        let lqr = Lqr::standard(10, 5)?;
        let sol = lqr.solve()?;
        let reference = |t: f64, z: &[f64]| Ok((sol.value(t, z)?, sol.control(t, z)?));
        // The floor at the training step count: the exact optimum of the discretized
        // problem against the continuous one, on the same paths.
        let disc = lqr.solve_discrete(config.steps)?;
        let mut discrete = |t: f64, z: &[f64]| {
            let i = ((t / disc.step()).round() as usize).min(disc.steps() - 1);
            Ok((disc.value(i, z)?, disc.control(i, z)?))
        };
        let mut floor_opts = opts.clone();
        floor_opts.every = (100 / config.steps).max(1);
        let floor = errors_along_optimal_paths(&drift, &reference, &mut discrete, &floor_opts)?;
        println!(
            "{}-step discrete optimum vs Riccati along optimal paths: Phi {:.3e}, u {:.3e}",
            config.steps, floor.value, floor.control
        );
        // The learned network against the discrete optimum at the same points (the
        // differences normalized by the continuous Φ and u).
        let mut offset = |t: f64, z: &[f64]| {
            let (v, u) = learned(t, z)?;
            let (vd, ud) = discrete(t, z)?;
            let (vc, uc) = reference(t, z)?;
            let u = u
                .iter()
                .zip(&ud)
                .zip(&uc)
                .map(|((a, b), c)| a - b + c)
                .collect();
            Ok((v - vd + vc, u))
        };
        let vs = errors_along_optimal_paths(&drift, &reference, &mut offset, &opts)?;
        println!(
            "learned vs the {}-step discrete optimum along optimal paths: Phi {:.3e}, u {:.3e}",
            config.steps, vs.value, vs.control
        );
        errors_along_optimal_paths(&drift, &reference, &mut learned, &opts)?
    } else {
        let ch = match name {
            "hjb100" => ColeHopf::hjb100(),
            "shifted1" => ColeHopf::shifted_target(1.0),
            _ => ColeHopf::shifted_target(1000.0),
        };
        println!("Cole–Hopf Phi(0,z0) = {:.6}", ch.value(0.0, &mean)?);
        // Closed-loop costs from z0 at the training step count and finer: the learned
        // feedback, Cole–Hopf's exact (continuous-time) feedback and no control.
        // (Cole–Hopf's feedback takes a quadrature per call: 128 paths, and only with
        // --cole-hopf-feedback.)
        let with_exact = args.iter().any(|a| a == "--cole-hopf-feedback");
        for n in [config.steps, 100, 200] {
            let paths = 512;
            let policy = |t: f64, z: &[f64], u: &mut [f64]| Ok(ctl2.control(t, z, u)?);
            let mine = closed_loop_cost(&ch, &mean, policy, n, paths, 7)?;
            let zero = |_: f64, _: &[f64], u: &mut [f64]| {
                u.fill(0.0);
                Ok(())
            };
            let free = closed_loop_cost(&ch, &mean, zero, n, paths, 7)?;
            print!(
                "{n:4} steps: learned {:.4} ± {:.4} ({paths} paths), uncontrolled {:.4} ± {:.4}",
                mine.mean, mine.std_err, free.mean, free.std_err
            );
            if with_exact {
                let exact = |t: f64, z: &[f64], u: &mut [f64]| {
                    u.copy_from_slice(&ch.control(t, z)?);
                    Ok(())
                };
                let e = closed_loop_cost(&ch, &mean, exact, n, 128, 7)?;
                print!(
                    ", Cole–Hopf feedback {:.4} ± {:.4} (128 paths)",
                    e.mean, e.std_err
                );
            }
            println!();
        }
        let reference = |t: f64, z: &[f64]| Ok((ch.value(t, z)?, ch.control(t, z)?));
        errors_along_optimal_paths(&drift, &reference, &mut learned, &opts)?
    };
    println!(
        "relative errors along optimal paths: Phi {:.3e}, u {:.3e}",
        errors.value, errors.control
    );
    println!(
        "{name}: Phi(0,z0) = {:.6}, closed-loop cost {:.4}, {:.1} s",
        v.initial_value / scale,
        v.costs.cost / scale,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
