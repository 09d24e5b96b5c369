//! `socflow demo`: the main job a newcomer runs.
//!
//! It trains OT-Flow and conditional flow matching on the 2-D toy `8gaussians` (about a
//! minute each on 2 cores in release; `--quick` takes seconds), exports both models,
//! loads them back through the runtime and, for each:
//!
//! - samples it with RK4 (32 steps) and writes data against samples
//!   (`*_samples.png`);
//! - computes the model density on a grid (`*_density.png`): every grid point is
//!   integrated from the data end to the prior end with the exact trace
//!   ([`crate::train::model_log_density`]), which gives the exact log-density of the
//!   RK4 flow at that point, so the picture is the model's density itself (not a
//!   histogram of samples);
//! - draws trajectories of the runtime sampler (`SaveAt::Steps`,
//!   `*_trajectories.png`);
//! - prints the validation NLL (both models, the same estimator), the energy distance
//!   between samples and held-out data beside that of a fresh draw of the toy (the
//!   noise floor), the flow-matching validation loss, and a round-trip check: the
//!   log-density the sampler reports at its samples against the grid estimator's at
//!   the same points.
//!
//! It also trains a VP-SDE score network by denoising score matching on the same toy
//! (MATH.md §4), samples it by the reverse SDE (Euler–Maruyama) and by the
//! probability-flow ODE (RK4), and plots each set of samples beside the data
//! (`diffusion_samples.png`, `diffusion_ode_samples.png`), with the energy distances
//! and the validation NLL of the probability-flow ODE.
//!
//! Then it trains NeuralSOC on a small 2-D control problem ([`crate::soc::demo_problem`]:
//! steer against a rotating drift to the origin, a linear–quadratic regulator), prints
//! the learned value and closed-loop cost against Riccati's, and plots closed-loop
//! paths of the exported controller (`neuralsoc_trajectories.png`).
//!
//! `--runtime-tour` runs the former demo instead: a tour of the runtime on an OT-Flow
//! potential whose answer is known in closed form.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use socflow_runtime::artifact::{Artifact, Provenance, StorageDtype};
use socflow_runtime::model::Model;
use socflow_runtime::nn::OtFlowParams;
use socflow_runtime::npy::write_npy;
use socflow_runtime::ode::{OdeOptions, OdeSolver, SaveAt};
use socflow_runtime::sampler::{Sampler, SamplerOptions};
use socflow_runtime::sde::{SdeOptions, SdeScheme};
use socflow_runtime::vpsde::VpSampling;
use socflow_trainer::checkpoint::Checkpointing;
use socflow_trainer::data::{Dataset, Toy};
use socflow_trainer::diffusion::DiffusionConfig;
use socflow_trainer::flow_matching::{Coupling, FlowMatchingConfig};
use socflow_trainer::optim::{AdamConfig, Schedule};
use socflow_trainer::otflow::OtFlowConfig;
use socflow_trainer::soc::{Averaging, SocConfig};

use crate::plot::{self, Window};
use crate::train::{self, Outcome, TrainProgress, DENSITY_STEPS};

/// Arguments of `socflow demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Directory for the demo's files.
    #[arg(long, default_value = "socflow-demo")]
    pub out: PathBuf,
    /// A few seconds instead of minutes: tiny runs (for tests; the models are poor).
    #[arg(long)]
    pub quick: bool,
    /// Run the runtime tour on a closed-form model instead of training.
    #[arg(long)]
    pub runtime_tour: bool,
    /// Number of samples of the runtime tour.
    #[arg(short = 'n', long, default_value_t = 20_000)]
    pub n: usize,
}

/// Sizes of a demo run.
struct Plan {
    data: usize,
    samples: usize,
    trajectories: usize,
    grid: usize,
    otflow: OtFlowConfig,
    flow_matching: FlowMatchingConfig,
    diffusion: DiffusionConfig,
    /// Euler–Maruyama steps of the reverse SDE and RK4 steps of the probability-flow
    /// ODE.
    diffusion_steps: (usize, usize),
    soc: SocConfig,
    /// Paths of the SOC closed-loop cost estimates.
    soc_paths: usize,
    /// SOC closed-loop paths plotted.
    soc_trajectories: usize,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            return Plan {
                data: 2_000,
                samples: 500,
                trajectories: 30,
                grid: 24,
                otflow: OtFlowConfig {
                    m: 8,
                    nt: 4,
                    nt_val: 4,
                    batch_size: 200,
                    iterations: 3,
                    validate_every: 0,
                    ..OtFlowConfig::default()
                },
                flow_matching: FlowMatchingConfig {
                    hidden: vec![32, 32],
                    batch_size: 128,
                    iterations: 50,
                    validate_every: 0,
                    ..FlowMatchingConfig::default()
                },
                diffusion: DiffusionConfig {
                    hidden: vec![32, 32],
                    batch_size: 128,
                    iterations: 50,
                    validate_every: 0,
                    ..DiffusionConfig::default()
                },
                diffusion_steps: (100, 20),
                soc: SocConfig {
                    m: 8,
                    steps: 10,
                    batch_size: 16,
                    iterations: 5,
                    validate_every: 0,
                    validation_paths: 32,
                    ..SocConfig::default()
                },
                soc_paths: 200,
                soc_trajectories: 20,
            };
        }
        Plan {
            data: 20_000,
            samples: 4_000,
            trajectories: 150,
            grid: 100,
            otflow: OtFlowConfig {
                m: 32,
                nt: 8,
                nt_val: 12,
                batch_size: 1_000,
                iterations: 200,
                optimizer: AdamConfig::adam(0.05),
                schedule: Schedule::Step {
                    every: 100,
                    factor: 0.5,
                },
                validate_every: 25,
                ..OtFlowConfig::default()
            },
            flow_matching: FlowMatchingConfig {
                hidden: vec![128, 128, 128],
                batch_size: 256,
                iterations: 18_000,
                coupling: Coupling::MiniBatchOt,
                optimizer: AdamConfig::adam(1e-3),
                schedule: Schedule::Step {
                    every: 6_000,
                    factor: 0.5,
                },
                validate_every: 1_000,
                ..FlowMatchingConfig::default()
            },
            // The defaults, as in the trainer's end-to-end test: every mode resolved
            // by both samplers, in about 25 s.
            diffusion: DiffusionConfig::default(),
            diffusion_steps: (500, 100),
            soc: SocConfig {
                m: 32,
                steps: 20,
                batch_size: 64,
                iterations: 3_000,
                optimizer: AdamConfig::adam(0.03),
                // Three decays: Φ(0, z₀) settles in the last quarter.
                schedule: Schedule::Step {
                    every: 750,
                    factor: 0.3,
                },
                // The last quarter averaged: the model is the mean of its last
                // iterates, not the last one's SGD noise.
                averaging: Some(Averaging {
                    decay: 0.99,
                    start: 2_250,
                }),
                validate_every: 100,
                validation_paths: 256,
                ..SocConfig::default()
            },
            soc_paths: 4_000,
            soc_trajectories: 100,
        }
    }
}

/// The demo's window: 8gaussians lies within radius 4/√2 + 3σ ≈ 3.9.
const WINDOW: Window = Window { r: 4.5 };

/// The energy distance 2E‖X − Y‖ − E‖X − X′‖ − E‖Y − Y′‖ between two 2-D point sets
/// (V-statistics; 0 when they coincide).
fn energy_distance(a: &[f64], b: &[f64]) -> f64 {
    let mean_dist = |p: &[f64], q: &[f64]| -> f64 {
        let mut s = 0.0;
        for x in p.chunks_exact(2) {
            for y in q.chunks_exact(2) {
                s += ((x[0] - y[0]).powi(2) + (x[1] - y[1]).powi(2)).sqrt();
            }
        }
        s / ((p.len() / 2) * (q.len() / 2)).max(1) as f64
    };
    2.0 * mean_dist(a, b) - mean_dist(a, a) - mean_dist(b, b)
}

/// What the demo reports for one model.
struct Report {
    name: &'static str,
    train_seconds: f64,
    figures: Vec<(String, f64)>,
    nll: f64,
    energy: f64,
    round_trip: f64,
}

/// Exports, samples and plots one trained model.
fn evaluate(
    name: &'static str,
    stem: &str,
    outcome: Outcome,
    out: &Path,
    plan: &Plan,
    validation: &Dataset,
) -> Result<Report> {
    let path = out.join(format!("{stem}.safetensors"));
    outcome
        .artifact
        .save(&path, StorageDtype::F32)
        .with_context(|| format!("cannot write {}", path.display()))?;
    let model = Model::<f64>::load(&path)
        .with_context(|| format!("cannot load the exported {}", path.display()))?;
    let (t0, t1) = model.time_interval();
    let norm = model.artifact().card.normalization.clone();

    // Samples with their log-densities.
    let mut so = SamplerOptions::ode(OdeOptions::fixed(OdeSolver::Rk4, DENSITY_STEPS), 1);
    so.log_density = true;
    so.normalization = norm.clone();
    let samples = Sampler::new(model.field()?, t1, t0, so)?.sample(plan.samples, 0)?;
    let logp = samples
        .log_density
        .as_ref()
        .context("the sampler returned no log-densities")?;
    // Round trip: the grid estimator at the samples against the sampler's values.
    let back = train::model_log_density(&model, &samples.x, DENSITY_STEPS)?;
    let round_trip = back
        .iter()
        .zip(logp)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    let m = plan.samples.min(validation.n);
    let energy = energy_distance(&samples.x, &validation.x[..2 * m]);
    plot::samples_png(
        &out.join(format!("{stem}_samples.png")),
        &format!("{name}: data and samples (RK4, {DENSITY_STEPS} steps)"),
        &validation.x[..2 * m],
        &samples.x,
        WINDOW,
    )?;

    // The model density on a grid.
    let grid = plot::grid_points(plan.grid, WINDOW);
    let log_grid = train::model_log_density(&model, &grid, DENSITY_STEPS)?;
    plot::density_png(
        &out.join(format!("{stem}_density.png")),
        &format!("{name}: model density"),
        &log_grid,
        plan.grid,
        WINDOW,
    )?;

    // Trajectories from the prior to the data.
    let mut so = SamplerOptions::ode(OdeOptions::fixed(OdeSolver::Rk4, DENSITY_STEPS), 2);
    so.trajectory = Some(SaveAt::Steps);
    so.normalization = norm;
    let traj = Sampler::new(model.field()?, t1, t0, so)?.sample(plan.trajectories, 0)?;
    let tr = traj
        .trajectory
        .as_ref()
        .context("the sampler returned no trajectories")?;
    plot::trajectories_png(
        &out.join(format!("{stem}_trajectories.png")),
        &format!("{name}: trajectories, noise → data"),
        &tr.states,
        tr.times.len(),
        plan.trajectories,
        WINDOW,
    )?;
    Ok(Report {
        name,
        train_seconds: outcome.seconds,
        figures: outcome.figures,
        nll: train::mean_nll(&model, validation, DENSITY_STEPS)?,
        energy,
        round_trip,
    })
}

/// What the demo reports for the diffusion model.
struct DiffusionReport {
    train_seconds: f64,
    figures: Vec<(String, f64)>,
    nll: f64,
    /// Energy distances to the validation set: reverse SDE, probability-flow ODE.
    energy: (f64, f64),
}

/// Trains the VP-SDE score network, exports it, samples it by both methods and plots
/// the samples beside the data.
fn diffusion(
    out: &Path,
    plan: &Plan,
    train_set: &Dataset,
    validation: &Dataset,
) -> Result<DiffusionReport> {
    let mut bar = TrainProgress::new("diffusion", plan.diffusion.iterations);
    let r = train::run_diffusion(
        &plan.diffusion,
        train_set,
        Some(validation),
        &mut Checkpointing {
            every: 0,
            resume: None,
            save: &mut |_| Ok(()),
        },
        &mut |t| bar.tick(t),
    );
    bar.finish();
    let outcome = r?;
    eprintln!("diffusion trained in {:.1} s", outcome.seconds);
    let path = out.join("diffusion.safetensors");
    outcome
        .artifact
        .save(&path, StorageDtype::F32)
        .with_context(|| format!("cannot write {}", path.display()))?;
    let model = Model::<f64>::load(&path)
        .with_context(|| format!("cannot load the exported {}", path.display()))?;
    let vp = model.vpsde()?;
    let (sde_steps, ode_steps) = plan.diffusion_steps;
    let m = plan.samples.min(validation.n);
    let data = &validation.x[..2 * m];
    let mut energy = [0.0; 2];
    for (k, (how, stem, title)) in [
        (
            VpSampling::ReverseSde(SdeOptions::new(SdeScheme::EulerMaruyama, sde_steps)),
            "diffusion_samples",
            format!("VP-SDE diffusion: data and samples (reverse SDE, {sde_steps} Euler–Maruyama steps)"),
        ),
        (
            VpSampling::ProbabilityFlow(OdeOptions::fixed(OdeSolver::Rk4, ode_steps)),
            "diffusion_ode_samples",
            format!("VP-SDE diffusion: data and samples (probability-flow ODE, RK4, {ode_steps} steps)"),
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let samples = vp.sampler(vp.sampler_options(how, 1))?.sample(plan.samples, 0)?;
        energy[k] = energy_distance(&samples.x, data);
        plot::samples_png(
            &out.join(format!("{stem}.png")),
            &title,
            data,
            &samples.x,
            WINDOW,
        )?;
    }
    Ok(DiffusionReport {
        train_seconds: outcome.seconds,
        figures: outcome.figures,
        nll: train::mean_nll(&model, validation, DENSITY_STEPS)?,
        energy: (energy[0], energy[1]),
    })
}

/// Runs the demo.
pub fn run(args: &DemoArgs) -> Result<()> {
    if args.runtime_tour {
        return runtime_tour(args);
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let plan = Plan::new(args.quick);
    let toy = Toy::EightGaussians;
    let all = Dataset::from_toy(toy, plan.data, 0)?;
    let (train_set, validation) = all.split(0.9, 0)?;
    // A fresh draw of the toy: its energy distance to the validation set is the floor
    // a perfect model reaches with this many samples.
    let m = plan.samples.min(validation.n);
    let fresh = Dataset::from_toy(toy, m, 12_345)?;
    let floor = energy_distance(&fresh.x, &validation.x[..2 * m]);
    println!(
        "socflow demo: {} ({} training, {} validation samples){}",
        toy.name(),
        train_set.n,
        validation.n,
        if args.quick { ", quick run" } else { "" }
    );
    let mut reports = Vec::new();

    let mut bar = TrainProgress::new("OT-Flow", plan.otflow.iterations);
    let r = train::run_otflow(
        &plan.otflow,
        &train_set,
        Some(&validation),
        &mut Checkpointing {
            every: 0,
            resume: None,
            save: &mut |_| Ok(()),
        },
        &mut |t| bar.tick(t),
    );
    bar.finish();
    let outcome = r?;
    eprintln!("OT-Flow trained in {:.1} s", outcome.seconds);
    reports.push(evaluate(
        "OT-Flow",
        "otflow",
        outcome,
        &args.out,
        &plan,
        &validation,
    )?);

    let mut bar = TrainProgress::new("flow matching", plan.flow_matching.iterations);
    let r = train::run_flow_matching(
        &plan.flow_matching,
        &train_set,
        Some(&validation),
        &mut Checkpointing {
            every: 0,
            resume: None,
            save: &mut |_| Ok(()),
        },
        &mut |t| bar.tick(t),
    );
    bar.finish();
    let outcome = r?;
    eprintln!("flow matching trained in {:.1} s", outcome.seconds);
    reports.push(evaluate(
        "flow matching",
        "flow_matching",
        outcome,
        &args.out,
        &plan,
        &validation,
    )?);

    let diff = diffusion(&args.out, &plan, &train_set, &validation)?;

    let soc = crate::soc::demo(&args.out, &plan.soc, plan.soc_paths, plan.soc_trajectories)?;

    println!();
    for r in &reports {
        println!("== {} (trained in {:.1} s) ==", r.name, r.train_seconds);
        for (k, v) in &r.figures {
            println!("  {k}: {v:.4}");
        }
        println!(
            "  validation NLL (exported model, runtime RK4, {DENSITY_STEPS} steps): {:.4}",
            r.nll
        );
        println!(
            "  energy distance samples ↔ validation: {:.4} (a fresh draw of the toy: {floor:.4})",
            r.energy
        );
        println!(
            "  max |log p| difference, sampler vs. grid estimator at the samples: {:.1e}",
            r.round_trip
        );
    }
    println!(
        "== VP-SDE diffusion (trained in {:.1} s) ==",
        diff.train_seconds
    );
    for (k, v) in &diff.figures {
        println!("  {k}: {v:.4}");
    }
    println!(
        "  validation NLL (probability-flow ODE of the exported model, runtime RK4, \
         {DENSITY_STEPS} steps): {:.4}",
        diff.nll
    );
    println!(
        "  energy distance samples ↔ validation: reverse SDE {:.4}, probability-flow ODE \
         {:.4} (a fresh draw of the toy: {floor:.4})",
        diff.energy.0, diff.energy.1
    );
    println!(
        "== NeuralSOC: steer2d, a 2-D LQR (trained in {:.1} s) ==",
        soc.train_seconds
    );
    println!("  dz = (Az + u)ds + 0.2 dW on [0, 2], A = [[-0.1, -0.5], [0.5, -0.1]],");
    println!("  L = ½‖u‖², g = 5‖z‖², z(0) = (2, 0)");
    println!(
        "  Φ(0, z₀): learned {:.4}, Riccati {:.4} (the optimum of the trainer's {}-step \
         Euler–Maruyama problem: {:.4})",
        soc.value, soc.reference_value, soc.train_steps, soc.discrete_value
    );
    println!(
        "  closed-loop cost ({} paths, {} Euler–Maruyama steps): learned feedback {:.4} ± {:.4}, \
         Riccati's on the same paths {:.4} ± {:.4}",
        soc.paths,
        soc.steps,
        soc.learned_cost.0,
        soc.learned_cost.1,
        soc.optimal_cost.0,
        soc.optimal_cost.1
    );
    println!(
        "  learned − Riccati, path by path: {:.4} ± {:.4}",
        soc.difference.0, soc.difference.1
    );
    println!(
        "
wrote to {}:",
        args.out.display()
    );
    for stem in ["otflow", "flow_matching"] {
        println!(
            "  {stem}.safetensors {stem}_samples.png {stem}_density.png {stem}_trajectories.png"
        );
    }
    println!("  diffusion.safetensors diffusion_samples.png diffusion_ode_samples.png");
    println!("  neuralsoc.safetensors neuralsoc_trajectories.png");
    Ok(())
}

/// The runtime tour (`--runtime-tour`): a closed-form OT-Flow potential, sampled
/// and checked against the closed form, and the controller timed.
fn runtime_tour(args: &DemoArgs) -> Result<()> {
    ensure!(
        args.n >= 100,
        "-n must be at least 100 for the statistics to mean anything"
    );
    std::fs::create_dir_all(&args.out)?;
    // P = Rᵀ diag(p) R with a rotation R: the data covariance e^{2P} is correlated.
    let (p1, p2, angle) = (0.6f64, 0.3f64, 0.5f64);
    let (c, s) = (angle.cos(), angle.sin());
    let rot = [[c, s], [-s, c]];
    // A (r × (d+1)) with AᵀA = [[P, 0], [0, 0]]; w = 0 switches the ResNet off.
    let a = vec![
        p1.sqrt() * rot[0][0],
        p1.sqrt() * rot[0][1],
        0.0,
        p2.sqrt() * rot[1][0],
        p2.sqrt() * rot[1][1],
        0.0,
        0.0,
        0.0,
        0.0,
    ];
    let m = 8;
    let params = OtFlowParams {
        d: 2,
        m,
        n_th: 2,
        r: 3,
        k: vec![vec![0.1; m * 3], vec![0.05; m * m]],
        b: vec![vec![0.0; m], vec![0.0; m]],
        w: vec![0.0; m],
        a,
        c_weight: vec![0.0; 3],
        c_bias: 0.0,
    };
    let artifact = Artifact::otflow(
        params,
        [0.0, 1.0],
        Provenance::now(format!("socflow {} demo", env!("CARGO_PKG_VERSION"))).with_detail(
            "model",
            "closed-form OT potential between N(0, exp(2P)) and N(0, I)",
        ),
    )?;
    let path = args.out.join("gaussian_otflow.safetensors");
    artifact.save(&path, StorageDtype::F64)?;
    println!("== model file {} ==", path.display());
    print!("{}", artifact.describe());

    let model = Model::<f64>::load(&path)?;
    let mut so = SamplerOptions::ode(OdeOptions::fixed(OdeSolver::Rk4, 32), 0);
    so.log_density = true;
    let (t0, t1) = model.time_interval();
    let sampler = Sampler::new(model.field()?, t1, t0, so)?;
    let start = Instant::now();
    let samples = sampler.sample(args.n, 0)?;
    let secs = start.elapsed().as_secs_f64();
    let spath = args.out.join("samples.npy");
    write_npy(&spath, &[args.n, 2], &samples.x)?;
    let logp = samples
        .log_density
        .as_ref()
        .expect("log_density was requested");
    write_npy(args.out.join("log_density.npy"), &[args.n], logp)?;

    // Closed form: Σ = Rᵀ diag(e^{2p}) R; log p(x) = −½xᵀΣ⁻¹x − ½ log det(2πΣ).
    let e = [(2.0 * p1).exp(), (2.0 * p2).exp()];
    let mut sigma = [[0.0; 2]; 2];
    let mut prec = [[0.0; 2]; 2];
    for i in 0..2 {
        for j in 0..2 {
            for k in 0..2 {
                sigma[i][j] += rot[k][i] * e[k] * rot[k][j];
                prec[i][j] += rot[k][i] / e[k] * rot[k][j];
            }
        }
    }
    let logdet = (2.0 * p1) + (2.0 * p2);
    let n = args.n as f64;
    let mut cov = [[0.0; 2]; 2];
    let mut max_err: f64 = 0.0;
    for (x, l) in samples.x.chunks_exact(2).zip(logp) {
        for i in 0..2 {
            for j in 0..2 {
                cov[i][j] += x[i] * x[j] / n;
            }
        }
        let q: f64 = (0..2)
            .map(|i| (0..2).map(|j| x[i] * prec[i][j] * x[j]).sum::<f64>())
            .sum();
        let exact = -0.5 * q - 0.5 * (2.0 * (2.0 * std::f64::consts::PI).ln() + logdet);
        max_err = max_err.max((l - exact).abs());
    }
    println!(
        "\n== sampling: {} samples, RK4 32 steps, exact log-densities ({:.0} samples/s) ==",
        args.n,
        n / secs
    );
    println!(
        "sample covariance   [[{:.4}, {:.4}], [{:.4}, {:.4}]]",
        cov[0][0], cov[0][1], cov[1][0], cov[1][1]
    );
    println!(
        "exact covariance    [[{:.4}, {:.4}], [{:.4}, {:.4}]]",
        sigma[0][0], sigma[0][1], sigma[1][0], sigma[1][1]
    );
    let nll = -logp.iter().sum::<f64>() / n;
    let exact_nll = 1.0 + (2.0 * std::f64::consts::PI).ln() + 0.5 * logdet;
    println!("mean NLL            {nll:.4} (exact entropy {exact_nll:.4})");
    println!("max |log p − exact| {max_err:.2e} (RK4 discretization error)");
    println!("wrote {} and log_density.npy", spath.display());

    let mut ctl = model.controller()?;
    let x = [0.5, -1.0];
    let mut u = [0.0; 2];
    ctl.control(0.0, &x, &mut u)?;
    let calls = 100_000;
    let t = Instant::now();
    for k in 0..calls {
        ctl.control(0.001 * (k % 1000) as f64, &x, &mut u)?;
    }
    let per = t.elapsed().as_secs_f64() / calls as f64;
    println!("\n== feedback control u = −∇Φ(t, x) ==");
    println!(
        "u(0, [0.5, -1.0]) = [{:.6}, {:.6}]  ({:.0} ns per call, no allocation)",
        u[0],
        u[1],
        per * 1e9
    );
    Ok(())
}
