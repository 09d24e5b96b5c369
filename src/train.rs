//! `socflow train CONFIG.toml [--out DIR]`: trains a model from a typed TOML config,
//! reports progress (loss and validation figures), writes checkpoints and exports the
//! runtime artifact.
//!
//! The config (every table rejects unknown keys, so a typo is an error naming it):
//!
//! ```toml
//! problem = "flow_matching"        # which trainer runs; its table below
//! output = "model.safetensors"     # the artifact, relative to --out
//! checkpoint = "checkpoint.safetensors"
//! checkpoint_every = 500           # 0: no checkpoints
//!
//! [data]
//! toy = "8gaussians"               # or: path = "samples.npy" (or .csv)
//! n = 20000
//! seed = 0
//! validation_fraction = 0.1
//!
//! [flow_matching]                  # socflow_trainer::flow_matching::FlowMatchingConfig
//! iterations = 2000
//! ```
//!
//! `problem = "diffusion"` trains a VP-SDE score network by denoising score matching
//! (a `[diffusion]` table, `DiffusionConfig`; `examples/configs/diffusion_moons.toml`);
//! `socflow sample --method reverse-sde|ode` samples the result.
//!
//! `problem = "soc"` takes no `[data]`: a `[soc]` table (`SocConfig`) and a
//! `[soc_problem]` table (a built-in or a full problem; [`crate::soc`]).
//! `examples/configs/` has configs for the built-in quadcopter, HJB-100 and shifted
//! target.
//!
//! Each problem's table takes `device = "cpu"` (the default) or `"cuda"` (the first
//! NVIDIA GPU); `--device` overrides it. Without a driver, a CUDA run stops with the
//! backend's error naming what is missing.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;
use socflow_runtime::artifact::{Artifact, ModelKind, StorageDtype};
use socflow_runtime::model::Model;
use socflow_runtime::ode::{OdeOptions, OdeSolver};
use socflow_trainer::checkpoint::{Checkpoint, Checkpointing};
use socflow_trainer::data::{load_dataset, Dataset, Toy};
use socflow_trainer::device::Device;
use socflow_trainer::diffusion::{train_diffusion_checkpointed, DiffusionConfig};
use socflow_trainer::flow_matching::{train_flow_matching_checkpointed, FlowMatchingConfig};
use socflow_trainer::likelihood::{log_likelihood, LikelihoodOptions};
use socflow_trainer::otflow::{train_otflow_checkpointed, OtFlowConfig};
use socflow_trainer::soc::SocConfig;

use crate::soc::SocProblemSpec;

/// Arguments of `socflow train`.
#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// The TOML config (see the README for every key).
    pub config: PathBuf,
    /// Directory for the model and the checkpoints (default: the current directory).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Resume from this checkpoint (written by a run of the same config); the run
    /// continues exactly as the uninterrupted one would.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Where to train: overrides the `device` of the problem's table (cuda: the first
    /// NVIDIA GPU; needs a driver).
    #[arg(long, value_enum)]
    pub device: Option<DeviceArg>,
}

/// The `--device` of `socflow train` and `socflow sample`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceArg {
    /// The CPU.
    Cpu,
    /// The first NVIDIA GPU (needs a driver and the CUDA libraries, loaded at run time).
    Cuda,
}

impl From<DeviceArg> for Device {
    fn from(d: DeviceArg) -> Device {
        match d {
            DeviceArg::Cpu => Device::Cpu,
            DeviceArg::Cuda => Device::Cuda,
        }
    }
}

/// Which trainer a config runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Problem {
    /// Conditional flow matching (the `[flow_matching]` table).
    FlowMatching,
    /// OT-Flow density estimation (the `[otflow]` table).
    Otflow,
    /// NeuralSOC value functions (the `[soc]` and `[soc_problem]` tables).
    Soc,
    /// VP-SDE denoising score matching (the `[diffusion]` table).
    Diffusion,
}

impl Problem {
    /// The config key of the problem's table.
    pub fn key(self) -> &'static str {
        match self {
            Problem::FlowMatching => "flow_matching",
            Problem::Otflow => "otflow",
            Problem::Soc => "soc",
            Problem::Diffusion => "diffusion",
        }
    }
}

/// Where the training data comes from: a toy (`toy`, `n`) or a file (`path`).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// A built-in 2-D toy (`8gaussians`, `checkerboard`, `moons`, `circles`,
    /// `swissroll`, `2spirals`, `pinwheel`, `rings`).
    pub toy: Option<String>,
    /// A data file (`.npy` or `.csv`, samples × dimensions), relative to the config
    /// file's directory.
    pub path: Option<PathBuf>,
    /// Number of toy samples drawn (toys only; default 20,000).
    pub n: Option<usize>,
    /// Seed of the toy draws and of the train/validation split (default 0).
    #[serde(default)]
    pub seed: u64,
    /// Fraction of the samples held out for validation, in [0, 1) (default 0.1; 0: no
    /// validation).
    #[serde(default = "default_validation_fraction")]
    pub validation_fraction: f64,
}

fn default_validation_fraction() -> f64 {
    0.1
}

fn default_output() -> PathBuf {
    PathBuf::from("model.safetensors")
}

fn default_checkpoint() -> PathBuf {
    PathBuf::from("checkpoint.safetensors")
}

/// Default number of toy samples.
pub const DEFAULT_TOY_SAMPLES: usize = 20_000;

/// A `socflow train` config.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// The trainer to run.
    pub problem: Problem,
    /// The data (OT-Flow and flow matching; NeuralSOC draws its own paths).
    pub data: Option<DataConfig>,
    /// The exported artifact (relative to the output directory).
    #[serde(default = "default_output")]
    pub output: PathBuf,
    /// The checkpoint file (relative to the output directory).
    #[serde(default = "default_checkpoint")]
    pub checkpoint: PathBuf,
    /// Write a checkpoint every this many iterations (0: none).
    #[serde(default)]
    pub checkpoint_every: u64,
    /// Settings of flow matching (defaults when the table is absent).
    pub flow_matching: Option<FlowMatchingConfig>,
    /// Settings of OT-Flow (defaults when the table is absent).
    pub otflow: Option<OtFlowConfig>,
    /// Settings of NeuralSOC (defaults when the table is absent).
    pub soc: Option<SocConfig>,
    /// Settings of VP-SDE diffusion (defaults when the table is absent).
    pub diffusion: Option<DiffusionConfig>,
    /// The `[soc_problem]` table as read; [`TrainConfig::from_toml`] parses it into
    /// `soc_problem`.
    #[serde(default, rename = "soc_problem")]
    soc_problem_table: Option<toml::Table>,
    /// The SOC problem (problem = "soc").
    #[serde(skip)]
    pub soc_problem: Option<SocProblemSpec>,
}

impl TrainConfig {
    /// Parses a config; errors name the offending key (and its line).
    pub fn from_toml(text: &str) -> Result<Self> {
        let mut config: TrainConfig = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        config.check()?;
        if let Some(table) = &config.soc_problem_table {
            config.soc_problem = Some(SocProblemSpec::from_toml(text, table)?);
        }
        Ok(config)
    }

    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        TrainConfig::from_toml(&text).with_context(|| format!("config {}", path.display()))
    }

    /// Sets the `device` of the problem's table (the table with its defaults when the
    /// config has none): what `--device` does.
    pub fn set_device(&mut self, device: Device) {
        match self.problem {
            Problem::FlowMatching => {
                self.flow_matching
                    .get_or_insert_with(Default::default)
                    .device = device
            }
            Problem::Otflow => self.otflow.get_or_insert_with(Default::default).device = device,
            Problem::Soc => self.soc.get_or_insert_with(Default::default).device = device,
            Problem::Diffusion => {
                self.diffusion.get_or_insert_with(Default::default).device = device
            }
        }
    }

    /// The `device` of the problem's table (the CPU when the table is absent).
    pub fn device(&self) -> Device {
        match self.problem {
            Problem::FlowMatching => self.flow_matching.as_ref().map(|c| c.device),
            Problem::Otflow => self.otflow.as_ref().map(|c| c.device),
            Problem::Soc => self.soc.as_ref().map(|c| c.device),
            Problem::Diffusion => self.diffusion.as_ref().map(|c| c.device),
        }
        .unwrap_or_default()
    }

    /// Checks what the types cannot: tables that belong to another problem, and the
    /// data table's alternatives.
    fn check(&self) -> Result<()> {
        let given: Vec<(&str, Problem)> = [
            (
                "flow_matching",
                self.flow_matching.is_some(),
                Problem::FlowMatching,
            ),
            ("otflow", self.otflow.is_some(), Problem::Otflow),
            ("soc", self.soc.is_some(), Problem::Soc),
            ("diffusion", self.diffusion.is_some(), Problem::Diffusion),
            (
                "soc_problem",
                self.soc_problem_table.is_some(),
                Problem::Soc,
            ),
        ]
        .iter()
        .filter(|(_, g, _)| *g)
        .map(|(k, _, p)| (*k, *p))
        .collect();
        for (key, owner) in given {
            if owner != self.problem {
                bail!(
                    "table [{key}] given but problem = \"{}\"",
                    self.problem.key()
                );
            }
        }
        if self.problem == Problem::Soc {
            if self.data.is_some() {
                bail!("table [data] given but problem = \"soc\" (NeuralSOC draws its own paths)");
            }
            if self.soc_problem_table.is_none() {
                bail!(
                    "problem = \"soc\" needs a [soc_problem] table: `builtin = \"hjb100\"`, \
                     \"shifted_target\", \"lqr\" or \"quadcopter\", or a full problem (see the \
                     README)"
                );
            }
            return Ok(());
        }
        let Some(d) = &self.data else {
            bail!(
                "problem = \"{}\" needs a [data] table: `toy = \"8gaussians\"` (or another toy) \
                 or `path = \"FILE.npy|csv\"`",
                self.problem.key()
            );
        };
        match (&d.toy, &d.path) {
            (Some(_), Some(_)) => bail!("[data]: give either `toy` or `path`, not both"),
            (None, None) => bail!(
                "[data]: give `toy = \"8gaussians\"` (or another toy) or `path = \"FILE.npy|csv\"`"
            ),
            (None, Some(_)) if d.n.is_some() => {
                bail!("[data]: `n` is the number of toy samples; a data file gives its own")
            }
            _ => {}
        }
        if !(d.validation_fraction >= 0.0 && d.validation_fraction < 1.0) {
            bail!(
                "[data]: validation_fraction = {} must be in [0, 1)",
                d.validation_fraction
            );
        }
        Ok(())
    }

    /// The training and validation sets (`base`: the directory relative data paths
    /// start from).
    pub fn datasets(&self, base: &Path) -> Result<(Dataset, Option<Dataset>)> {
        let d = self
            .data
            .as_ref()
            .context("the config has no [data] table")?;
        let all = match (&d.toy, &d.path) {
            (Some(name), _) => {
                let toy: Toy = name
                    .parse()
                    .map_err(|e| anyhow::anyhow!("[data] toy: {e}"))?;
                Dataset::from_toy(toy, d.n.unwrap_or(DEFAULT_TOY_SAMPLES), d.seed)
                    .context("[data]")?
            }
            (None, Some(path)) => {
                let path = base.join(path);
                // The trainer's I/O errors name the path and the cause in their message
                // (and again as their source): keep the message only.
                load_dataset(&path).map_err(|e| anyhow::anyhow!("cannot load data: {e}"))?
            }
            (None, None) => bail!("[data]: no toy and no path"),
        };
        if d.validation_fraction == 0.0 {
            return Ok((all, None));
        }
        let (train, val) = all
            .split(1.0 - d.validation_fraction, d.seed)
            .context("[data] validation_fraction")?;
        Ok((train, Some(val)))
    }
}

/// One progress report of a training run, whatever the problem.
#[derive(Clone, Copy, Debug)]
pub struct Tick {
    /// Iterations completed.
    pub iteration: u64,
    /// Iterations in the run.
    pub iterations: u64,
    /// The training loss of this iteration.
    pub loss: f64,
    /// A validation figure computed after this iteration: (name, value).
    pub validation: Option<(&'static str, f64)>,
    /// A second figure of that validation, shown after it: (name, value).
    pub detail: Option<(&'static str, f64)>,
}

/// Training progress: an indicatif bar with the running loss and the last validation
/// figure on a terminal; plain lines at every validation (or every tenth of the run
/// without validation) otherwise.
pub struct TrainProgress {
    bar: Option<ProgressBar>,
    label: String,
    recent: Vec<f64>,
    last_validation: Option<(&'static str, f64)>,
    last_detail: Option<(&'static str, f64)>,
    last_decile: u64,
    start: Instant,
}

/// Training losses averaged for display.
const LOSS_WINDOW: usize = 50;

impl TrainProgress {
    /// Starts a report for a run of `iterations` labelled `label`.
    pub fn new(label: &str, iterations: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(iterations);
            if let Ok(style) = ProgressStyle::with_template(
                "{prefix} [{bar:30}] {pos}/{len} {msg} ({per_sec}, eta {eta})",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_prefix(label.to_string());
            bar
        });
        TrainProgress {
            bar,
            label: label.to_string(),
            recent: Vec::with_capacity(LOSS_WINDOW),
            last_validation: None,
            last_detail: None,
            last_decile: 0,
            start: Instant::now(),
        }
    }

    fn message(&self) -> String {
        let mean = self.recent.iter().sum::<f64>() / self.recent.len().max(1) as f64;
        let mut m = format!("loss {mean:.4}");
        for (name, v) in self.last_validation.iter().chain(&self.last_detail) {
            m.push_str(&format!(", {name} {v:.4}"));
        }
        m
    }

    /// Records one iteration.
    pub fn tick(&mut self, t: &Tick) {
        if self.recent.len() == LOSS_WINDOW {
            self.recent.remove(0);
        }
        self.recent.push(t.loss);
        if t.validation.is_some() {
            self.last_validation = t.validation;
            self.last_detail = t.detail;
        }
        match &self.bar {
            Some(bar) => {
                bar.set_position(t.iteration);
                if t.validation.is_some() || t.iteration % 10 == 0 || t.iteration == 1 {
                    bar.set_message(self.message());
                }
            }
            None => {
                let decile = (t.iteration * 10).checked_div(t.iterations).unwrap_or(10);
                let due = if t.validation.is_some() {
                    true
                } else if decile > self.last_decile {
                    self.last_decile = decile;
                    self.last_validation.is_none()
                } else {
                    false
                };
                if due {
                    eprintln!(
                        "{}: iteration {}/{}: {} ({:.1} s)",
                        self.label,
                        t.iteration,
                        t.iterations,
                        self.message(),
                        self.start.elapsed().as_secs_f64()
                    );
                }
            }
        }
    }

    /// Ends the report.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// The result of a training run, whatever the problem.
pub struct Outcome {
    /// The model file's content.
    pub artifact: Artifact,
    /// Final figures: (name, value), e.g. the validation loss or NLL.
    pub figures: Vec<(String, f64)>,
    /// Wall-clock seconds of training.
    pub seconds: f64,
}

/// RK4 steps of the log-density integrations (the validation NLL of velocity models,
/// the demo's density grids).
pub const DENSITY_STEPS: usize = 32;

/// Exact model log-densities log p(x) at `points` (n × d, data coordinates) of a
/// velocity or potential model: each point is mapped to model coordinates, integrated
/// with RK4 (`steps` steps) from the data end t0 to the prior end t1 together with
/// ℓ = ∫ tr ∂f/∂x dt (exact trace), and
/// log p(x) = log N(z; 0, I) + ℓ − Σ ln std, z the state at t1 (the change of variables
/// d/dt log p(x(t)) = −tr ∂f/∂x along the flow; the last term is the normalization's
/// Jacobian). This is the density of the model's RK4 flow up to the discretization
/// error, the same one the runtime sampler's `log_density` reports at its samples.
pub fn model_log_density(model: &Model<f64>, points: &[f64], steps: usize) -> Result<Vec<f64>> {
    let d = model.dim();
    if points.len() % d != 0 {
        bail!(
            "{} coordinates are not points of dimension {d}",
            points.len()
        );
    }
    let n = points.len() / d;
    if n == 0 {
        return Ok(Vec::new());
    }
    // The trainer's likelihood knows each kind's flow (a score model's is its
    // probability-flow ODE, from ε to the prior's time) and does the one solve.
    let opts = LikelihoodOptions::new(OdeOptions::fixed(OdeSolver::Rk4, steps));
    Ok(log_likelihood(model, points, n, &opts)?)
}

/// Mean negative log-likelihood of `data` under `model` ([`model_log_density`]).
pub fn mean_nll(model: &Model<f64>, data: &Dataset, steps: usize) -> Result<f64> {
    let logp = model_log_density(model, &data.x, steps)?;
    Ok(-logp.iter().sum::<f64>() / logp.len().max(1) as f64)
}

/// What a loss-reporting trainer (flow matching, diffusion) tells each iteration:
/// iteration, iterations, mini-batch loss, validation loss when computed.
type LossTick = (u64, u64, f64, Option<f64>);

/// Runs a trainer that reports a mini-batch loss and an occasional validation loss
/// (flow matching, diffusion): maps its progress to [`Tick`]s, then builds the
/// [`Outcome`] from `summary`'s view of the trained model (its artifact, its final
/// training loss over the last 100 iterations, its last validation loss).
fn run_loss_trainer<T, E>(
    progress: &mut dyn FnMut(&Tick),
    train: impl FnOnce(&mut dyn FnMut(LossTick)) -> std::result::Result<T, E>,
    summary: impl FnOnce(&T) -> std::result::Result<(Artifact, f64, Option<f64>), E>,
) -> Result<Outcome>
where
    anyhow::Error: From<E>,
{
    let start = Instant::now();
    let trained = train(&mut |(iteration, iterations, loss, validation)| {
        progress(&Tick {
            iteration,
            iterations,
            loss,
            validation: validation.map(|v| ("validation loss", v)),
            detail: None,
        })
    })?;
    let seconds = start.elapsed().as_secs_f64();
    let (artifact, final_loss, validation) = summary(&trained)?;
    let mut figures = vec![("final training loss".to_string(), final_loss)];
    if let Some(v) = validation {
        figures.push(("validation loss".to_string(), v));
    }
    Ok(Outcome {
        artifact,
        figures,
        seconds,
    })
}

/// Trains flow matching, reporting every iteration to `progress`.
pub fn run_flow_matching(
    config: &FlowMatchingConfig,
    train: &Dataset,
    validation: Option<&Dataset>,
    ckpt: &mut Checkpointing<'_>,
    progress: &mut dyn FnMut(&Tick),
) -> Result<Outcome> {
    run_loss_trainer(
        progress,
        |tick| {
            train_flow_matching_checkpointed(config, train, validation, ckpt, &mut |p| {
                tick((p.iteration, p.iterations, p.loss, p.validation_loss))
            })
        },
        |t| Ok((t.to_artifact()?, t.final_loss(100), t.validation_loss())),
    )
}

/// Trains a VP-SDE score network, reporting every iteration to `progress`.
pub fn run_diffusion(
    config: &DiffusionConfig,
    train: &Dataset,
    validation: Option<&Dataset>,
    ckpt: &mut Checkpointing<'_>,
    progress: &mut dyn FnMut(&Tick),
) -> Result<Outcome> {
    run_loss_trainer(
        progress,
        |tick| {
            train_diffusion_checkpointed(config, train, validation, ckpt, &mut |p| {
                tick((p.iteration, p.iterations, p.loss, p.validation_loss))
            })
        },
        |t| Ok((t.to_artifact()?, t.final_loss(100), t.validation_loss())),
    )
}

/// Trains OT-Flow, reporting every iteration to `progress`.
pub fn run_otflow(
    config: &OtFlowConfig,
    train: &Dataset,
    validation: Option<&Dataset>,
    ckpt: &mut Checkpointing<'_>,
    progress: &mut dyn FnMut(&Tick),
) -> Result<Outcome> {
    let start = Instant::now();
    let trained = train_otflow_checkpointed(config, train, validation, ckpt, &mut |p| {
        progress(&Tick {
            iteration: p.iteration,
            iterations: p.iterations,
            loss: p.costs.j,
            validation: p.validation_nll.map(|v| ("validation NLL", v)),
            detail: None,
        })
    })?;
    let seconds = start.elapsed().as_secs_f64();
    let artifact = trained.to_artifact()?;
    let mut figures = Vec::new();
    if let Some(c) = trained.costs.last() {
        figures.push(("final objective J".to_string(), c.j));
    }
    if let Some(v) = trained.validation_nll() {
        figures.push((
            format!("validation NLL (trainer, RK4, {} steps)", config.nt_val),
            v,
        ));
    }
    Ok(Outcome {
        artifact,
        figures,
        seconds,
    })
}

/// Runs `socflow train`.
pub fn run(args: &TrainArgs) -> Result<()> {
    let mut config = TrainConfig::load(&args.config)?;
    if let Some(device) = args.device {
        config.set_device(device.into());
    }
    if config.device() == Device::Cuda {
        // The training loop opens the GPU; without a driver (or a usable device) it
        // stops with the backend's reason.
        eprintln!(
            "{}: training on the GPU (device \"cuda\")",
            config.problem.key()
        );
    }
    let base = args
        .config
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let data = match config.problem {
        Problem::Soc => None,
        Problem::FlowMatching | Problem::Otflow | Problem::Diffusion => {
            Some(config.datasets(&base)?)
        }
    };
    let out = args.out.clone().unwrap_or_else(|| PathBuf::from("."));
    std::fs::create_dir_all(&out)
        .with_context(|| format!("cannot create output directory {}", out.display()))?;
    let output = out.join(&config.output);
    let checkpoint_path = out.join(&config.checkpoint);
    if let Some((train, validation)) = &data {
        eprintln!(
            "{}: {} training samples{} of dimension {}",
            config.problem.key(),
            train.n,
            validation
                .as_ref()
                .map(|v| format!(", {} validation samples", v.n))
                .unwrap_or_default(),
            train.d
        );
    }
    let resume = match &args.resume {
        Some(p) => Some(
            Checkpoint::load(p).with_context(|| format!("cannot resume from {}", p.display()))?,
        ),
        None => None,
    };
    if let Some(c) = &resume {
        eprintln!("resuming at iteration {}", c.iteration);
    }
    let every = config.checkpoint_every;
    let mut save = |c: &Checkpoint| -> socflow_trainer::Result<()> {
        if every > 0 {
            c.save(&checkpoint_path)?;
        }
        Ok(())
    };
    let mut ckpt = Checkpointing {
        every,
        resume,
        save: &mut save,
    };
    let (train, validation) = match (config.problem, data) {
        (Problem::Soc, _) => {
            let spec = config
                .soc_problem
                .as_ref()
                .context("problem = \"soc\" needs a [soc_problem] table")?;
            let soc = config.soc.clone().unwrap_or_default();
            crate::soc::train(spec, &soc, &mut ckpt, &output)?;
            if every > 0 {
                eprintln!("checkpoint: {}", checkpoint_path.display());
            }
            return Ok(());
        }
        (_, Some(sets)) => sets,
        (_, None) => bail!("the config has no [data] table"),
    };
    let outcome = match config.problem {
        Problem::FlowMatching => {
            let fm = config.flow_matching.clone().unwrap_or_default();
            let mut bar = TrainProgress::new("flow matching", fm.iterations);
            let r = run_flow_matching(&fm, &train, validation.as_ref(), &mut ckpt, &mut |t| {
                bar.tick(t)
            });
            bar.finish();
            r?
        }
        Problem::Otflow => {
            let ot = config.otflow.clone().unwrap_or_default();
            let mut bar = TrainProgress::new("OT-Flow", ot.iterations);
            let r = run_otflow(&ot, &train, validation.as_ref(), &mut ckpt, &mut |t| {
                bar.tick(t)
            });
            bar.finish();
            r?
        }
        Problem::Diffusion => {
            let dc = config.diffusion.clone().unwrap_or_default();
            let mut bar = TrainProgress::new("diffusion", dc.iterations);
            let r = run_diffusion(&dc, &train, validation.as_ref(), &mut ckpt, &mut |t| {
                bar.tick(t)
            });
            bar.finish();
            r?
        }
        Problem::Soc => bail!("NeuralSOC runs return above"),
    };
    outcome
        .artifact
        .save(&output, StorageDtype::F32)
        .with_context(|| format!("cannot write {}", output.display()))?;
    if every > 0 {
        eprintln!("checkpoint: {}", checkpoint_path.display());
    }
    let mut figures = outcome.figures;
    // The exported file is what users deploy: reload it and report the validation NLL
    // of the exported flow (a score model's probability-flow ODE).
    let model = Model::<f64>::load(&output)
        .with_context(|| format!("cannot reload the exported model {}", output.display()))?;
    if let Some(v) = &validation {
        let nll = mean_nll(&model, v, DENSITY_STEPS)?;
        let flow = if model.kind() == ModelKind::Score {
            "probability-flow ODE, "
        } else {
            ""
        };
        figures.push((
            format!("validation NLL (exported model, {flow}runtime RK4, {DENSITY_STEPS} steps)"),
            nll,
        ));
    }
    eprintln!("trained in {:.1} s", outcome.seconds);
    for (name, v) in &figures {
        println!("{name}: {v:.6}");
    }
    println!("model: {}", output.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_named() {
        let e = TrainConfig::from_toml(
            "problem = \"flow_matching\"\n[data]\ntoy = \"moons\"\ntoyy = 1\n",
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("toyy"), "{e:#}");
        let e = TrainConfig::from_toml(
            "problem = \"flow_matching\"\n[data]\ntoy = \"moons\"\n[flow_matching]\niteration = 3\n",
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("iteration"), "{e:#}");
    }

    #[test]
    fn the_readme_example_parses() {
        let readme = include_str!("../README.md");
        let start = readme
            .find("```toml\nproblem = ")
            .expect("the README has the example");
        let body = &readme[start + "```toml\n".len()..];
        let text = &body[..body.find("```").unwrap()];
        let c = TrainConfig::from_toml(text).unwrap();
        assert_eq!(c.problem, Problem::Otflow);
        assert_eq!(c.otflow, Some(OtFlowConfig::default()));
        assert_eq!(c.checkpoint_every, 100);
        // The commented flow matching and diffusion tables are the default configs too.
        let (fm_at, diff_at) = (
            text.find("# [flow_matching]").unwrap(),
            text.find("# [diffusion]").unwrap(),
        );
        let table = |problem: &str, commented: &str| {
            let body: String = commented
                .lines()
                .map(|l| l.trim_start_matches("# ").trim_start_matches('#'))
                .collect::<Vec<_>>()
                .join("\n");
            let toml = format!(
                "problem = \"{problem}\"\n[data]\ntoy = \"moons\"\n{}",
                body.trim_start()
            );
            TrainConfig::from_toml(&toml).unwrap()
        };
        let c = table("flow_matching", &text[fm_at..diff_at]);
        assert_eq!(c.flow_matching, Some(FlowMatchingConfig::default()));
        let c = table("diffusion", &text[diff_at..]);
        assert_eq!(c.diffusion, Some(DiffusionConfig::default()));
    }

    #[test]
    fn the_readme_soc_examples_parse() {
        let readme = include_str!("../README.md");
        let block = |start: &str| {
            let at = readme.find(start).expect("the README has the example");
            let body = &readme[at + "```toml\n".len()..];
            body[..body.find("```").unwrap()].to_string()
        };
        let text = block("```toml\nproblem = \"soc\"");
        let c = TrainConfig::from_toml(&text).unwrap();
        assert_eq!(c.problem, Problem::Soc);
        assert_eq!(c.soc, Some(SocConfig::default()));
        let spec = c.soc_problem.unwrap();
        assert_eq!(spec.build().unwrap().problem.name(), "hjb100");
        // The inline problem in place of the built-in one.
        let inline = block("```toml\n[soc_problem]\nname = ");
        let head = &text[..text.find("[soc_problem]").unwrap()];
        let c = TrainConfig::from_toml(&format!("{head}{inline}")).unwrap();
        let p = c.soc_problem.unwrap().build().unwrap().problem;
        let crate::soc::SocProblem::Quadratic(p) = p else {
            panic!("the README's inline problem is quadratic: {p:?}");
        };
        assert_eq!((p.dim, p.control_dim), (2, 1));
        let r = crate::soc::Reference::of(&p).unwrap().unwrap();
        assert_eq!(r.method(), "Riccati");
    }

    #[test]
    fn the_hjb100_and_shifted_target_example_configs_parse() {
        let c = TrainConfig::from_toml(include_str!("../examples/configs/hjb100.toml")).unwrap();
        let soc = c.soc.unwrap();
        soc.validate().unwrap();
        let a = soc.averaging.unwrap();
        assert_eq!((a.decay, a.start, soc.iterations), (0.99, 500, 1000));
        assert_eq!(
            c.soc_problem.unwrap().build().unwrap().problem.name(),
            "hjb100"
        );
        let c = TrainConfig::from_toml(include_str!("../examples/configs/shifted_target.toml"))
            .unwrap();
        let soc = c.soc.unwrap();
        soc.validate().unwrap();
        assert_eq!((soc.rank, soc.iterations), (Some(101), 2000));
        let task = c.soc_problem.unwrap().build().unwrap();
        assert_eq!(task.problem.name(), "shifted_target_1000");
        let c = TrainConfig::from_toml(include_str!(
            "../examples/configs/shifted_target_lecture.toml"
        ))
        .unwrap();
        let soc = c.soc.unwrap();
        soc.validate().unwrap();
        assert_eq!((soc.rank, soc.init_scale), (Some(101), Some(0.01)));
        let task = c.soc_problem.unwrap().build().unwrap();
        assert_eq!(task.problem.name(), "shifted_target_1");
    }

    #[test]
    fn the_quadcopter_example_config_parses() {
        let text = include_str!("../examples/configs/quadcopter.toml");
        let c = TrainConfig::from_toml(text).unwrap();
        assert_eq!(c.problem, Problem::Soc);
        let soc = c.soc.unwrap();
        assert_eq!((soc.m, soc.steps, soc.batch_size), (32, 100, 64));
        assert_eq!(soc.iterations, 4000);
        assert_eq!(soc.optimizer.lr, 0.005);
        assert_eq!(soc.clip_norm, Some(100.0));
        soc.validate().unwrap();
        let task = c.soc_problem.unwrap().build().unwrap();
        assert_eq!(task.problem.name(), "quadcopter");
        assert_eq!(task.cost_scale, 0.001);
        assert!(task.problem.starts_at_a_point());
    }

    #[test]
    fn the_diffusion_example_config_parses() {
        let text = include_str!("../examples/configs/diffusion_moons.toml");
        let c = TrainConfig::from_toml(text).unwrap();
        assert_eq!(c.problem, Problem::Diffusion);
        let dc = c.diffusion.unwrap();
        dc.validate().unwrap();
        // The example writes out the defaults.
        assert_eq!(dc, DiffusionConfig::default());
        assert_eq!((dc.beta_min, dc.beta_max, dc.eps), (0.1, 20.0, 1e-3));
        let d = c.data.unwrap();
        assert_eq!((d.toy.as_deref(), d.n), (Some("moons"), Some(20_000)));
        // A [diffusion] table belongs to problem = "diffusion".
        let e = TrainConfig::from_toml(
            "problem = \"flow_matching\"\n[data]\ntoy = \"moons\"\n[diffusion]\niterations = 3\n",
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("[diffusion]"), "{e:#}");
        let e = TrainConfig::from_toml(
            "problem = \"diffusion\"\n[data]\ntoy = \"moons\"\n[diffusion]\nbeta_mx = 3\n",
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("beta_mx"), "{e:#}");
    }

    #[test]
    fn data_alternatives_are_checked() {
        let base = "problem = \"flow_matching\"\n[data]\n";
        assert!(TrainConfig::from_toml(base).is_err());
        assert!(
            TrainConfig::from_toml(&format!("{base}toy = \"moons\"\npath = \"a.npy\"\n")).is_err()
        );
        assert!(TrainConfig::from_toml(&format!("{base}path = \"a.npy\"\nn = 3\n")).is_err());
        assert!(TrainConfig::from_toml(&format!(
            "{base}toy = \"moons\"\nvalidation_fraction = 1.0\n"
        ))
        .is_err());
        let c = TrainConfig::from_toml(&format!("{base}toy = \"moons\"\nn = 100\n")).unwrap();
        let (tr, va) = c.datasets(Path::new(".")).unwrap();
        assert_eq!((tr.n, va.map(|v| v.n)), (90, Some(10)));
    }
}
