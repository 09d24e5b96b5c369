//! socflow: train and deploy continuous-time neural models from the command line.

mod bench;
mod demo;
mod likelihood;
use socflow_cli::plot;
mod progress;
mod soc;
mod train;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use socflow_runtime::artifact::{Artifact, ModelKind};
use socflow_runtime::controller::{Integrator, SimulateOptions};
use socflow_runtime::cuda::{Gpu, GpuReal, GpuSampler};
use socflow_runtime::model::Model;
use socflow_runtime::npy::write_npy;
use socflow_runtime::ode::{AdaptiveOptions, OdeOptions, OdeSolver, SaveAt, StepSize};
use socflow_runtime::onnx::{OnnxField, TimeShape};
use socflow_runtime::sampler::{Sampler, SamplerOptions};
use socflow_runtime::sde::{SdeOptions, SdeScheme};
use socflow_runtime::vpsde::VpSampling;
use socflow_runtime::Real;
use train::DeviceArg;

/// socflow: continuous-time neural models for stochastic optimal control and
/// generative modelling.
#[derive(Parser, Debug)]
#[command(name = "socflow", version, about, long_about = None)]
struct Cli {
    /// Worker threads for batch work (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Trains OT-Flow and flow matching on a 2-D toy and NeuralSOC on a 2-D control
    /// problem, writes plots and prints the validation figures.
    Demo(demo::DemoArgs),
    /// Trains a model from a TOML config and exports it as a model file.
    Train(train::TrainArgs),
    /// Prints a model file's card: kind, architecture, sizes, provenance; for an .onnx
    /// model, its signature (inputs, output, state dimension, element type).
    Inspect {
        /// The model file (.safetensors, or .onnx).
        model: PathBuf,
    },
    /// Draws samples from a velocity or potential model and writes them as .npy.
    Sample(SampleArgs),
    /// Mean negative log-likelihood of a data file under a velocity, potential or
    /// score model (exact divergence, or Hutchinson's estimate), with its standard
    /// error.
    Likelihood(likelihood::LikelihoodArgs),
    /// Evaluates the feedback control u = −M∇ₓΦ(t, x) of a potential model.
    Control(ControlArgs),
    /// Rolls the closed loop forward and reports its cost: a NeuralSOC model under its
    /// recorded problem's dynamics and noise, any other potential under dz = u dt + σ dW.
    Simulate(SimulateArgs),
    /// Measures the headline performance figures (ratios against baselines run in the
    /// same process).
    Bench(bench::BenchArgs),
}

/// Floating-point precision of evaluation.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Precision {
    /// Single precision (fastest).
    F32,
    /// Double precision.
    F64,
}

/// Integrators the sample command offers.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum SolverArg {
    /// Explicit Euler (fixed steps).
    Euler,
    /// Heun, order 2 (fixed steps).
    Heun,
    /// Classic Runge–Kutta, order 4 (fixed steps).
    Rk4,
    /// Dormand–Prince 5(4), adaptive steps (--rtol, --atol).
    Dopri5,
}

/// How the sample command samples a score (diffusion) model.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum MethodArg {
    /// The reverse-time VP-SDE, Euler–Maruyama in --steps steps (--solver heun:
    /// stochastic Heun).
    ReverseSde,
    /// The probability-flow ODE with --solver (and --steps or --rtol/--atol).
    Ode,
}

/// `socflow sample`'s steps of a fixed-step ODE solver when `--steps` is not given.
const DEFAULT_ODE_STEPS: usize = 32;
/// Its steps of a score model's reverse SDE: Euler–Maruyama's error grows with β
/// (up to 20 on the VP-SDE), so it needs many more steps than an ODE solver.
const DEFAULT_REVERSE_SDE_STEPS: usize = 500;

#[derive(clap::Args, Debug)]
struct SampleArgs {
    /// The model file: a socflow model (.safetensors), or an ONNX model v(x, t) (.onnx:
    /// inputs x [batch, d] and t, output [batch, d]; d is read from the model).
    model: PathBuf,
    /// Number of samples.
    #[arg(short = 'n', long, default_value_t = 1000)]
    n: usize,
    /// Integrator.
    #[arg(long, value_enum, default_value_t = SolverArg::Rk4)]
    solver: SolverArg,
    /// Score models only: the reverse SDE (default) or the probability-flow ODE.
    #[arg(long, value_enum)]
    method: Option<MethodArg>,
    /// Steps of a fixed-step integrator [default: 32; 500 for a score model's reverse
    /// SDE, whose β reaches 20].
    #[arg(long)]
    steps: Option<usize>,
    /// Relative tolerance (dopri5).
    #[arg(long, default_value_t = 1e-5)]
    rtol: f64,
    /// Absolute tolerance (dopri5).
    #[arg(long, default_value_t = 1e-5)]
    atol: f64,
    /// Seed of the prior draws.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Index of the first sample (draw a large set in pieces that match one run).
    #[arg(long, default_value_t = 0)]
    first_sample: u64,
    /// Output file for the samples (n × d, .npy).
    #[arg(short = 'o', long, default_value = "samples.npy")]
    output: PathBuf,
    /// Also write each sample's log-density (exact trace) to this .npy file.
    #[arg(long)]
    log_density: Option<PathBuf>,
    /// Also write the trajectories (points × n × d, .npy) to this file (fixed-step solvers).
    #[arg(long)]
    trajectory: Option<PathBuf>,
    /// Precision of evaluation (and of the written arrays).
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    precision: Precision,
    /// Data end of an .onnx model's time interval (it has no card; default 0).
    /// Samples are drawn from N(0, I) at --t1 and integrated to --t0: a model with its
    /// noise at t = 0 (as torchcfm trains them) takes --t0 1 --t1 0.
    #[arg(long, allow_negative_numbers = true)]
    t0: Option<f64>,
    /// Prior end of an .onnx model's time interval (default 1).
    #[arg(long, allow_negative_numbers = true)]
    t1: Option<f64>,
    /// Where to sample: the CPU, or the first NVIDIA GPU (cuda; needs a driver). The GPU
    /// samples velocity, potential and score models of socflow model files; it does not
    /// compute log-densities or record trajectories yet.
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    device: DeviceArg,
}

#[derive(clap::Args, Debug)]
struct ControlArgs {
    /// The model file (a potential).
    model: PathBuf,
    /// Time t.
    #[arg(long, default_value_t = 0.0)]
    t: f64,
    /// State x, comma-separated (d values).
    #[arg(
        long,
        value_delimiter = ',',
        allow_negative_numbers = true,
        required = true
    )]
    x: Vec<f64>,
    /// Precision of evaluation.
    #[arg(long, value_enum, default_value_t = Precision::F64)]
    precision: Precision,
}

#[derive(clap::Args, Debug)]
struct SimulateArgs {
    /// The model file (a potential).
    model: PathBuf,
    /// Initial state, comma-separated (default: a NeuralSOC model's start, the origin
    /// otherwise).
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true)]
    x0: Vec<f64>,
    /// Noise level σ (default: a NeuralSOC model's σ, 0 otherwise).
    #[arg(long)]
    sigma: Option<f64>,
    /// Euler–Maruyama steps.
    #[arg(long, default_value_t = 100)]
    steps: usize,
    /// Number of paths.
    #[arg(long, default_value_t = 1000)]
    paths: usize,
    /// Seed of the Brownian increments.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write the final states (paths × d, .npy) here.
    #[arg(short = 'o', long)]
    output: Option<PathBuf>,
    /// NeuralSOC models whose problem has a reference answer (Riccati, Cole–Hopf):
    /// also roll out the reference's optimal feedback on the same Brownian paths.
    #[arg(long)]
    reference: bool,
    /// Draw the first closed-loop paths (at most 48) to this PNG: the first two state
    /// coordinates, or a quadcopter's ground track and altitude, start and target
    /// marked.
    #[arg(long)]
    plot: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(n) = cli.threads {
        if n == 0 {
            eprintln!("error: --threads must be at least 1");
            return ExitCode::from(2);
        }
        if let Err(e) = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
        {
            eprintln!("error: cannot start {n} worker threads: {e}");
            return ExitCode::FAILURE;
        }
    }
    let result = match cli.command {
        Command::Demo(args) => demo::run(&args),
        Command::Train(args) => train::run(&args),
        Command::Inspect { model } => inspect(&model),
        Command::Sample(args) => match args.precision {
            Precision::F32 => sample::<f32>(&args),
            Precision::F64 => sample::<f64>(&args),
        },
        Command::Control(args) => match args.precision {
            Precision::F32 => control::<f32>(&args),
            Precision::F64 => control::<f64>(&args),
        },
        Command::Simulate(args) => simulate(&args),
        Command::Likelihood(args) => likelihood::run(&args),
        Command::Bench(args) => bench::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, `outer: inner: …`, leaving out a cause whose
/// text its outer message already ends with (the runtime's I/O errors print their
/// `io::Error` and also expose it as their source).
fn error_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.is_empty() {
            line = text;
        } else if !line.ends_with(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line
}

fn load_model<T: Real>(path: &Path) -> Result<Model<T>> {
    Model::load(path).with_context(|| format!("cannot load model {}", path.display()))
}

fn inspect(path: &Path) -> Result<()> {
    if is_onnx(path) {
        return inspect_onnx(path);
    }
    let artifact =
        Artifact::load(path).with_context(|| format!("cannot load model {}", path.display()))?;
    println!("{}", path.display());
    print!("{}", artifact.describe());
    Ok(())
}

/// `socflow inspect MODEL.onnx`: what the ONNX field reader sees (the signature it
/// validated when loading the model through ONNX Runtime) and what the model lacks
/// beside a socflow model file.
fn inspect_onnx(path: &Path) -> Result<()> {
    let field = OnnxField::<f64>::load(path)
        .with_context(|| format!("cannot load ONNX model {}", path.display()))?;
    let sig = field.signature();
    let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let library = socflow_runtime::onnx::init()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "?".into());
    let d = sig.dim;
    let time = match sig.time_shape {
        TimeShape::Scalar => "[], a scalar shared by the batch",
        TimeShape::Batch => "[batch]",
        TimeShape::BatchByOne => "[batch, 1]",
    };
    let state = format!("`{}` (state, [batch, {d}])", sig.x_name);
    let time = format!("`{}` (time, {time})", sig.t_name);
    let inputs = if sig.x_first {
        [state, time]
    } else {
        [time, state]
    };
    println!("{}", path.display());
    println!("format:        ONNX model, {bytes} bytes, read by ONNX Runtime ({library})");
    println!("kind:          field v = f(x, t), sampled as a velocity");
    println!("inputs:        {}", inputs.join(", "));
    println!("output:        `{}` ([batch, {d}])", sig.output_name);
    println!("state dim:     {d}");
    println!("dtype:         {} (inputs and output)", sig.dtype.name());
    println!("batch:         dynamic");
    println!("time:          not recorded (socflow sample takes --t0/--t1, default [0, 1])");
    println!("normalization: none");
    println!(
        "divergence:    none (ONNX Runtime gives no derivatives: no log-densities or \
         likelihoods)"
    );
    Ok(())
}

/// ODE options from the sample command's arguments.
impl SampleArgs {
    /// `--steps`, or `default` when not given; at least 1.
    fn fixed_steps(&self, default: usize) -> Result<usize> {
        match self.steps.unwrap_or(default) {
            0 => bail!("--steps must be at least 1"),
            n => Ok(n),
        }
    }
}

fn ode_options<T: Real>(args: &SampleArgs) -> Result<OdeOptions<T>> {
    let solver = match args.solver {
        SolverArg::Euler => OdeSolver::Euler,
        SolverArg::Heun => OdeSolver::Heun,
        SolverArg::Rk4 => OdeSolver::Rk4,
        SolverArg::Dopri5 => OdeSolver::Dopri5,
    };
    let opts = if solver == OdeSolver::Dopri5 {
        OdeOptions {
            solver,
            step_size: StepSize::Adaptive(AdaptiveOptions::new(T::of(args.rtol), T::of(args.atol))),
        }
    } else {
        OdeOptions::fixed(solver, args.fixed_steps(DEFAULT_ODE_STEPS)?)
    };
    opts.validate()?;
    Ok(opts)
}

fn sample<T: GpuReal>(args: &SampleArgs) -> Result<()> {
    if args.n == 0 {
        bail!("-n must be at least 1");
    }
    if is_onnx(&args.model) {
        if args.device == DeviceArg::Cuda {
            bail!(
                "--device cuda samples socflow model files; an .onnx model runs through ONNX \
                 Runtime on the CPU"
            );
        }
        return sample_onnx::<T>(args);
    }
    if args.t0.is_some() || args.t1.is_some() {
        bail!(
            "--t0/--t1 are for .onnx models; {} records its time interval in its card",
            args.model.display()
        );
    }
    let model = load_model::<T>(&args.model)?;
    if model.kind() == ModelKind::Score {
        return sample_score(args, &model);
    }
    if args.method.is_some() {
        bail!(
            "--method chooses how a score model is sampled; {} is a {} model (an ODE)",
            args.model.display(),
            model.kind().name()
        );
    }
    let field = model.field()?;
    let opts = ode_options::<T>(args)?;
    let d = model.dim();
    let mut so = SamplerOptions::ode(opts, args.seed);
    so.log_density = args.log_density.is_some();
    so.normalization = model.artifact().card.normalization.clone();
    so.trajectory = trajectory_option(args)?;
    if args.device == DeviceArg::Cuda {
        return sample_gpu(args, &model, so);
    }
    let (t0, t1) = model.time_interval();
    // Samples start from the prior at t1 and are integrated to the data end t0.
    let sampler = Sampler::new(field, t1, t0, so)?;
    draw_samples(args, &sampler, d)
}

/// `socflow sample --device cuda`: the model's sampler on the first GPU
/// ([`GpuSampler::for_model`]) with the options the CPU would take. What the GPU
/// sampler does not do yet (log-densities, trajectories) is its error, as is a missing
/// driver.
fn sample_gpu<T: GpuReal>(
    args: &SampleArgs,
    model: &Model<T>,
    so: SamplerOptions<T>,
) -> Result<()> {
    let gpu = Gpu::new(0).context("cannot sample on device \"cuda\"")?;
    let sampler = GpuSampler::for_model(&gpu, model, so)?;
    let d = sampler.dim();
    let start = std::time::Instant::now();
    let samples = sampler.sample(args.n, args.first_sample)?;
    let secs = start.elapsed().as_secs_f64();
    write_npy(&args.output, &[args.n, d], &samples.x)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    eprintln!(
        "{} samples (d = {d}, {}) on the GPU ({}) in {:.3} s: {:.0} samples/s, {:.1} field \
         evaluations per sample",
        args.n,
        T::NAME,
        gpu.name(),
        secs,
        args.n as f64 / secs,
        samples.stats.nfe as f64 / args.n as f64,
    );
    println!("{}", args.output.display());
    Ok(())
}

/// Whether a model path names an ONNX model (by its extension).
fn is_onnx(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("onnx"))
}

/// `socflow sample MODEL.onnx`: an ONNX model has no card, so d comes from its state
/// input's shape, the time interval from --t0/--t1, and there is no normalization.
fn sample_onnx<T: Real>(args: &SampleArgs) -> Result<()> {
    if args.log_density.is_some() {
        bail!(
            "--log-density needs the field's exact divergence, which an ONNX model does not \
             give; sample a socflow model file for log-densities"
        );
    }
    let field = OnnxField::<T>::load(&args.model)
        .with_context(|| format!("cannot load ONNX model {}", args.model.display()))?;
    let d = field.signature().dim;
    let (t0, t1) = (args.t0.unwrap_or(0.0), args.t1.unwrap_or(1.0));
    if !(t0.is_finite() && t1.is_finite() && t0 != t1) {
        bail!("--t0 {t0} and --t1 {t1} must be finite and differ");
    }
    let mut so = SamplerOptions::ode(ode_options::<T>(args)?, args.seed);
    so.trajectory = trajectory_option(args)?;
    let sampler = Sampler::new(Arc::new(field), T::of(t1), T::of(t0), so)?;
    draw_samples(args, &sampler, d)
}

/// The sampler's trajectory option from --trajectory.
fn trajectory_option<T: Real>(args: &SampleArgs) -> Result<Option<SaveAt<T>>> {
    if args.trajectory.is_none() {
        return Ok(None);
    }
    if args.solver == SolverArg::Dopri5 {
        bail!("--trajectory needs a fixed-step solver (euler, heun, rk4)");
    }
    Ok(Some(SaveAt::Steps))
}

/// Draws the samples with a progress bar, writes the .npy files and prints the rate.
fn draw_samples<T: Real>(args: &SampleArgs, sampler: &Sampler<T>, d: usize) -> Result<()> {
    let bar = progress::Progress::new("sampling", args.n as u64);
    let start = std::time::Instant::now();
    let samples =
        sampler.sample_with_progress(args.n, args.first_sample, &|done| bar.set(done as u64))?;
    bar.finish();
    let secs = start.elapsed().as_secs_f64();
    write_npy(&args.output, &[args.n, d], &samples.x)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    if let (Some(path), Some(l)) = (&args.log_density, &samples.log_density) {
        write_npy(path, &[args.n], l)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let (Some(path), Some(tr)) = (&args.trajectory, &samples.trajectory) {
        write_npy(path, &[tr.times.len(), args.n, d], &tr.states)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let per_row = samples.stats.nfe as f64 / args.n as f64;
    eprintln!(
        "{} samples (d = {d}, {}) in {:.3} s: {:.0} samples/s, {:.1} field evaluations per sample{}",
        args.n,
        T::NAME,
        secs,
        args.n as f64 / secs,
        per_row,
        if samples.stats.rejected > 0 {
            format!(", {} rejected steps", samples.stats.rejected)
        } else {
            String::new()
        }
    );
    println!("{}", args.output.display());
    Ok(())
}

/// `socflow sample` on a score model: the VP-SDE's reverse SDE or probability-flow ODE
/// from t = 1 down to the card's ε.
fn sample_score<T: GpuReal>(args: &SampleArgs, model: &Model<T>) -> Result<()> {
    let vp = model.vpsde()?;
    let method = args.method.unwrap_or(MethodArg::ReverseSde);
    let how = match method {
        MethodArg::ReverseSde => {
            let scheme = match args.solver {
                SolverArg::Heun => SdeScheme::StochasticHeun,
                SolverArg::Dopri5 => bail!(
                    "the reverse SDE takes fixed steps (Euler–Maruyama, or --solver heun); \
                     dopri5 is for --method ode"
                ),
                SolverArg::Euler | SolverArg::Rk4 => SdeScheme::EulerMaruyama,
            };
            if args.log_density.is_some() {
                bail!("--log-density needs --method ode (the reverse SDE has no density)");
            }
            let steps = args.fixed_steps(DEFAULT_REVERSE_SDE_STEPS)?;
            VpSampling::ReverseSde(SdeOptions::new(scheme, steps))
        }
        MethodArg::Ode => VpSampling::ProbabilityFlow(ode_options::<T>(args)?),
    };
    let mut so = vp.sampler_options(how, args.seed);
    so.log_density = args.log_density.is_some();
    if args.trajectory.is_some() {
        if method == MethodArg::Ode && args.solver == SolverArg::Dopri5 {
            bail!("--trajectory needs a fixed-step solver (euler, heun, rk4)");
        }
        so.trajectory = Some(SaveAt::Steps);
    }
    if args.device == DeviceArg::Cuda {
        return sample_gpu(args, model, so);
    }
    let sampler = vp.sampler(so)?;
    let d = vp.dim();
    let bar = progress::Progress::new("sampling", args.n as u64);
    let start = std::time::Instant::now();
    let samples =
        sampler.sample_with_progress(args.n, args.first_sample, &|done| bar.set(done as u64))?;
    bar.finish();
    let secs = start.elapsed().as_secs_f64();
    write_npy(&args.output, &[args.n, d], &samples.x)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    if let (Some(path), Some(l)) = (&args.log_density, &samples.log_density) {
        write_npy(path, &[args.n], l)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let (Some(path), Some(tr)) = (&args.trajectory, &samples.trajectory) {
        write_npy(path, &[tr.times.len(), args.n, d], &tr.states)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let sde = vp.sde();
    eprintln!(
        "{} samples (d = {d}, {}) of a score model by the {} from t = {} to {} in {:.3} s: \
         {:.0} samples/s, {:.1} network evaluations per sample",
        args.n,
        T::NAME,
        match method {
            MethodArg::ReverseSde => "reverse SDE",
            MethodArg::Ode => "probability-flow ODE",
        },
        vp.t_prior(),
        sde.eps,
        secs,
        args.n as f64 / secs,
        samples.stats.nfe as f64 / args.n as f64,
    );
    println!("{}", args.output.display());
    Ok(())
}

fn control<T: Real>(args: &ControlArgs) -> Result<()> {
    let model = load_model::<T>(&args.model)?;
    let mut ctl = model.controller()?;
    let d = ctl.state_dim();
    if args.x.len() != d {
        bail!(
            "--x has {} values, the model's state dimension is {d}",
            args.x.len()
        );
    }
    let x: Vec<T> = args.x.iter().map(|v| T::of(*v)).collect();
    let t = T::of(args.t);
    let mut u = vec![T::zero(); ctl.control_dim()];
    ctl.control(t, &x, &mut u)?;
    let phi = ctl.value(t, &x)?;
    let fmt = |v: &[T]| {
        v.iter()
            .map(|x| format!("{:.9e}", x.f64()))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!("phi {:.12e}", phi.f64());
    println!("u {}", fmt(&u));
    Ok(())
}

fn simulate(args: &SimulateArgs) -> Result<()> {
    let model = load_model::<f64>(&args.model)?;
    // A model trained by `socflow train` on a SOC problem records the problem: roll
    // out its own dynamics and costs.
    if let Some(problem) = model.artifact().card.provenance.details.get("soc_problem") {
        return soc::simulate(args, &model, problem);
    }
    let sigma = args.sigma.unwrap_or(0.0);
    let ctl = model.controller()?;
    let d = ctl.state_dim();
    if ctl.control_dim() != d {
        bail!(
            "this model's control map gives {} controls for a {d}-dimensional state; \
             simulate rolls out dz = u dt + σ dW, which needs one control per state",
            ctl.control_dim()
        );
    }
    let x0 = if args.x0.is_empty() {
        vec![0.0; d]
    } else {
        args.x0.clone()
    };
    if x0.len() != d {
        bail!(
            "--x0 has {} values, the model's state dimension is {d}",
            x0.len()
        );
    }
    let (t0, t1) = model.time_interval();
    let opts = SimulateOptions {
        x0,
        t0,
        t1,
        steps: args.steps,
        sigma,
        paths: args.paths,
        seed: args.seed,
        keep_trajectories: false,
    };
    let dynamics = Integrator {
        dim: d,
        gain: 1.0,
        control_weight: 1.0,
    };
    let out = ctl.simulate(&dynamics, &opts)?;
    if let Some(path) = &args.plot {
        let name = "dz = u dt + σ dW";
        soc::plot_closed_loop(
            path,
            name,
            &ctl,
            &dynamics,
            &opts,
            None,
            soc::PlotLayout::Plane,
        )?;
    }
    let (mean, se) = out.cost();
    println!(
        "control cost ∫½‖u‖²ds over {} paths, {} steps, σ = {sigma}: {mean:.6} ± {se:.6} (standard error)",
        args.paths, args.steps
    );
    if let Some(path) = &args.output {
        write_npy(path, &[args.paths, d], &out.finals)
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("{}", path.display());
    }
    if !mean.is_finite() {
        return Err(anyhow!("the closed loop produced a non-finite cost"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::error_line;
    use anyhow::Context;

    #[test]
    fn an_error_line_names_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file");
        let e = socflow_runtime::Error::io("m.safetensors", io);
        let e = Err::<(), _>(e)
            .context("cannot load model m.safetensors")
            .unwrap_err();
        assert_eq!(
            error_line(&e),
            "cannot load model m.safetensors: m.safetensors: No such file"
        );
        // Causes that say something new are all kept.
        let e = anyhow::anyhow!("inner").context("middle").context("outer");
        assert_eq!(error_line(&e), "outer: middle: inner");
    }
}
