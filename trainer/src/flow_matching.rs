//! Conditional flow matching (Lipman et al. 2023), with mini-batch optimal-transport
//! coupling (Tong et al. 2024) and rectified flow / reflow (Liu et al. 2023).
//!
//! # Convention (MATH.md §3)
//!
//! x₀ ~ data at t = 0, x₁ ~ N(0, I) at t = 1, t ~ U(0, 1),
//! ψ_t = (1 − t)x₀ + t x₁, target u = x₁ − x₀, and the loss
//!
//! L(θ) = mean over the batch and the d coordinates of (v_θ(ψ_t, t) − u)²,
//!
//! that is `torch.mean((vt - ut) ** 2)` as torchcfm's examples compute it (the sum over
//! coordinates is d times this). With `sigma = 0`, torchcfm's
//! `ExactOptimalTransportConditionalFlowMatcher` computes the same loss with the time
//! reversed (its x₀ is the noise, its x₁ the data): under t ↦ 1 − t its field is minus
//! ours. Sampling solves dx/dt = v_θ from t = 1 (noise) to t = 0 (data), which is what
//! the runtime's [`Sampler`] does with a velocity artifact over the time interval
//! [0, 1].
//!
//! # Couplings
//!
//! - [`Coupling::Independent`]: x₁ drawn independently of the batch of x₀;
//! - [`Coupling::MiniBatchOt`]: the batch's x₁ are re-paired with its x₀ by the exact
//!   assignment minimizing Σ‖x₀ᵢ − x₁_π(i)‖² ([`assignment::ot_pairing`]): a
//!   permutation, so no point is used twice (torchcfm samples pairs from the transport
//!   plan with replacement, which may duplicate points; with uniform weights and equal
//!   batch sizes the optimal plan is a permutation, so the expected coupling is the
//!   same). t is drawn independently of the pairing.
//! - reflow ([`train_reflow`]): the pairs (x₀, x₁) are fixed beforehand by integrating a
//!   trained model's ODE from noise x₁ at t = 1 to x₀ at t = 0 with the runtime's RK4
//!   sampler ([`reflow_pairs`]); training then draws mini-batches of those pairs.
//!
//! # Randomness and determinism
//!
//! Every draw comes from the runtime's counter-based generator, keyed by the config's
//! seed and the iteration: the mini-batch (the data module's [`BatchSampler`], step =
//! iteration), the noise x₁ of batch row i ([`NOISE_STREAM`], sample = i, step =
//! iteration), its time t ([`TIME_STREAM`], same address), the parameters' initial
//! values ([`MlpNet::init`]). The validation loss uses fixed draws keyed by the
//! validation sample's index ([`VALIDATION_NOISE_STREAM`], [`VALIDATION_TIME_STREAM`],
//! step 0), so successive validation losses are comparable. Two runs with the same
//! config, data and thread count give bitwise the same parameters and losses (the CPU
//! backend's large GEMMs may split their work by thread count; nothing else does).
//!
//! # Precision
//!
//! The network, the loss and its gradient are evaluated on the CPU backend in the
//! config's [`Precision`] (f32 by default); the parameters' master copy and Adam's
//! state are f64 ([`crate::optim`]).

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use socflow_runtime::artifact::{Artifact, ModelKind, Normalization, Provenance};
use socflow_runtime::brownian::{Brownian, Stream, MAX_SAMPLE};
use socflow_runtime::model::Model;
use socflow_runtime::nn::Activation;
use socflow_runtime::ode::{OdeOptions, OdeSolver};
use socflow_runtime::sampler::{Sampler, SamplerOptions};

use crate::assignment::{self, AssignmentWorkspace};
use crate::autodiff::{Backend, Cpu, DType, Graph, Var};
use crate::checkpoint::Checkpointing;
use crate::data::normalized_sets;
use crate::data::rng::{Draws, FIRST_FREE_AFTER_DATA};
use crate::data::{BatchSampler, Dataset};
use crate::device::Device;
use crate::error::{check_len, Error, Result};
use crate::mlp::{MlpNet, MlpVars};
use crate::optim::{check_objective, optimizer_step, validation_due, AdamConfig, Schedule};

/// Stream of the training noise x₁ (after [`crate::mlp::INIT_STREAM`]).
pub const NOISE_STREAM: Stream = Stream(FIRST_FREE_AFTER_DATA.0 + 1);
/// Stream of the training times t.
pub const TIME_STREAM: Stream = Stream(FIRST_FREE_AFTER_DATA.0 + 2);
/// Stream of the validation noise.
pub const VALIDATION_NOISE_STREAM: Stream = Stream(FIRST_FREE_AFTER_DATA.0 + 3);
/// Stream of the validation times.
pub const VALIDATION_TIME_STREAM: Stream = Stream(FIRST_FREE_AFTER_DATA.0 + 4);

/// How the noise x₁ is paired with the data x₀ of a mini-batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Coupling {
    /// Independent draws (plain conditional flow matching).
    #[serde(rename = "independent")]
    Independent,
    /// Exact mini-batch optimal transport under squared Euclidean cost, as a
    /// permutation (OT-CFM).
    #[serde(rename = "minibatch_ot")]
    MiniBatchOt,
}

/// The precision the network, the loss and its gradient are computed in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// IEEE binary32.
    F32,
    /// IEEE binary64.
    F64,
}

impl Precision {
    /// The autodiff precision.
    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::F64 => DType::F64,
        }
    }
}

/// Settings of [`train_flow_matching`] and [`train_reflow`].
///
/// In JSON every field is optional (the [`Default`] fills the rest) and unknown keys
/// are errors, e.g.
///
/// ```json
/// {"hidden": [64, 64], "activation": "silu", "batch_size": 256, "iterations": 2000,
///  "optimizer": {"lr": 0.001, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8,
///                "weight_decay": 0.0, "decoupled": false},
///  "schedule": {"type": "constant"}, "clip_norm": null, "seed": 0,
///  "coupling": "minibatch_ot", "normalize": true, "validate_every": 100,
///  "precision": "f32", "device": "cpu"}
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FlowMatchingConfig {
    /// Hidden widths of the MLP (at least one layer).
    pub hidden: Vec<usize>,
    /// Activation of the hidden layers.
    pub activation: Activation,
    /// Mini-batch size (at most the number of training samples).
    pub batch_size: usize,
    /// Number of optimizer steps.
    pub iterations: u64,
    /// Adam / AdamW settings (all six fields when given).
    pub optimizer: AdamConfig,
    /// Learning-rate schedule (a plateau schedule observes the validation loss).
    pub schedule: Schedule,
    /// Clip the gradient's global norm to this value.
    pub clip_norm: Option<f64>,
    /// Seed of every draw (initialization, batches, noise, times).
    pub seed: u64,
    /// Pairing of noise and data in a batch (reflow requires `independent`).
    pub coupling: Coupling,
    /// Standardize the data per coordinate (statistics of the training set) and record
    /// the map in the artifact. Reflow inherits the teacher's normalization instead.
    pub normalize: bool,
    /// Compute the validation loss every this many iterations (and always after the
    /// last one); 0: only after the last.
    pub validate_every: u64,
    /// Precision of the network, loss and gradient.
    pub precision: Precision,
    /// The compute device: `"cpu"` (the default) or `"cuda"` (the first GPU; see
    /// [`Device`]).
    #[serde(skip_serializing_if = "Device::is_cpu")]
    pub device: Device,
}

impl Default for FlowMatchingConfig {
    fn default() -> Self {
        FlowMatchingConfig {
            hidden: vec![64, 64],
            activation: Activation::Silu,
            batch_size: 256,
            iterations: 2000,
            optimizer: AdamConfig::adam(1e-3),
            schedule: Schedule::Constant,
            clip_norm: None,
            seed: 0,
            coupling: Coupling::Independent,
            normalize: true,
            validate_every: 100,
            precision: Precision::F32,
            device: Device::Cpu,
        }
    }
}

impl FlowMatchingConfig {
    /// Checks the settings that do not depend on the data.
    pub fn validate(&self) -> Result<()> {
        crate::mlp::validate_hidden(&self.hidden)?;
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
            .map_err(|e| Error::InvalidArgument(format!("flow matching config: {e}")))
    }

    /// Parses a JSON config (unknown keys are errors).
    pub fn from_json(text: &str) -> Result<Self> {
        serde_json::from_str(text)
            .map_err(|e| Error::InvalidArgument(format!("flow matching config: {e}")))
    }
}

/// What [`train_flow_matching`] reports after every iteration.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Progress {
    /// Iterations completed (1 after the first step).
    pub iteration: u64,
    /// Iterations in the run.
    pub iterations: u64,
    /// The mini-batch loss of this iteration (before the step).
    pub loss: f64,
    /// The gradient's global norm before clipping.
    pub grad_norm: f64,
    /// The learning rate of this step.
    pub lr: f64,
    /// The validation loss after this step, when it was computed.
    pub validation_loss: Option<f64>,
}

/// A trained flow-matching model and its training record.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainedFlow {
    /// The config it was trained with.
    pub config: FlowMatchingConfig,
    /// The network (in model coordinates).
    pub net: MlpNet,
    /// The data normalization (model coordinates = (x − mean)/std), if any.
    pub normalization: Option<Normalization>,
    /// Training loss of every iteration.
    pub losses: Vec<f64>,
    /// (iterations completed, validation loss) at every validation.
    pub validation: Vec<(u64, f64)>,
    /// Reflow settings, for a model trained by [`train_reflow`].
    pub reflow: Option<ReflowConfig>,
}

impl TrainedFlow {
    /// The last validation loss, if a validation set was given.
    pub fn validation_loss(&self) -> Option<f64> {
        self.validation.last().map(|&(_, l)| l)
    }

    /// The mean training loss over the last `k` iterations (fewer if the run was
    /// shorter); NaN for an empty record.
    pub fn final_loss(&self, k: usize) -> f64 {
        let k = k.clamp(1, self.losses.len().max(1));
        let tail = &self.losses[self.losses.len().saturating_sub(k)..];
        tail.iter().sum::<f64>() / tail.len() as f64
    }

    /// The model file: an MLP artifact of kind velocity over the time interval [0, 1]
    /// (data at 0, noise at 1), with the normalization and a provenance recording the
    /// config (JSON), the loss convention and the final losses.
    pub fn to_artifact(&self) -> Result<Artifact> {
        let problem = if self.reflow.is_some() {
            "rectified flow (reflow)"
        } else {
            "conditional flow matching"
        };
        let mut prov = Provenance::now(concat!("socflow-trainer ", env!("CARGO_PKG_VERSION")))
            .with_detail("problem", problem)
            .with_detail("config", self.config.to_json()?)
            .with_detail(
                "convention",
                "x0 ~ data at t=0, x1 ~ N(0,I) at t=1, psi_t=(1-t)x0+t*x1, target x1-x0; \
                 sample by integrating from t=1 to t=0",
            )
            .with_detail(
                "loss",
                "mean over batch and coordinates of (v - (x1 - x0))^2",
            )
            .with_detail("iterations", self.losses.len())
            .with_detail("final_train_loss", self.final_loss(100));
        if let Some(v) = self.validation_loss() {
            prov = prov.with_detail("validation_loss", v);
        }
        if let Some(r) = &self.reflow {
            let json = serde_json::to_string(r)
                .map_err(|e| Error::InvalidArgument(format!("reflow config: {e}")))?;
            prov = prov.with_detail("reflow", json);
        }
        let a = Artifact::mlp(self.net.to_params()?, ModelKind::Velocity, [0.0, 1.0], prov)?;
        Ok(match &self.normalization {
            Some(n) => a.with_normalization(n.clone())?,
            None => a,
        })
    }
}

/// The conditional flow matching loss of one batch on a graph: `x0` (data) and `x1`
/// (noise) are B × d, `t` is B × 1; returns the 1 × 1 mean over the batch and the
/// coordinates of (v(ψ_t, t) − (x₁ − x₀))², ψ_t = x₀ + t(x₁ − x₀).
pub fn cfm_loss<B: Backend>(
    g: &mut Graph<B>,
    net: &MlpVars,
    x0: Var,
    x1: Var,
    t: Var,
) -> Result<Var> {
    let u = g.sub(x1, x0)?;
    let tu = g.mul(u, t)?;
    let psi = g.add(x0, tu)?;
    let v = net.forward(g, psi, t)?;
    let r = g.sub(v, u)?;
    let sq = g.square(r)?;
    Ok(g.mean(sq)?)
}

/// Pairs a batch: with [`Coupling::MiniBatchOt`], reorders the rows of `x1` (n × d)
/// so that row i pairs with row i of `x0` under the optimal permutation; with
/// [`Coupling::Independent`], leaves `x1` as it is.
///
/// Errors: [`Error::Length`] when `x0` and `x1` differ in length or are not rows of
/// `d`; the assignment's errors (non-finite coordinates).
pub fn pair_batch(
    coupling: Coupling,
    x0: &[f64],
    x1: &mut [f64],
    d: usize,
    ws: &mut AssignmentWorkspace,
) -> Result<()> {
    check_len("noise batch", x1.len(), x0.len())?;
    if d == 0 || x0.len() % d != 0 {
        return Err(Error::InvalidArgument(format!(
            "a batch of {} values is not rows of dimension {d}",
            x0.len()
        )));
    }
    if coupling == Coupling::Independent {
        return Ok(());
    }
    let n = x0.len() / d;
    let perm = assignment::ot_pairing(x0, x1, n, d, ws)?;
    let old = x1.to_vec();
    for (row, &p) in x1.chunks_exact_mut(d).zip(&perm) {
        row.copy_from_slice(&old[p * d..(p + 1) * d]);
    }
    Ok(())
}

/// Where training and validation batches come from.
enum Source<'a> {
    /// Data samples; the noise is drawn.
    Samples(&'a Dataset),
    /// Fixed (data, noise) pairs, row i of each.
    Pairs(&'a Dataset, &'a Dataset),
}

impl Source<'_> {
    fn n(&self) -> usize {
        match self {
            Source::Samples(x) | Source::Pairs(x, _) => x.n,
        }
    }

    fn d(&self) -> usize {
        match self {
            Source::Samples(x) | Source::Pairs(x, _) => x.d,
        }
    }
}

/// Per-row normals of `stream` at `step`, sample index `first + i` for row i.
fn noise_rows(
    seed: u64,
    stream: Stream,
    first: u64,
    step: u64,
    out: &mut [f64],
    d: usize,
) -> Result<()> {
    Brownian::new(seed).stream_normals_block(stream, first, step, d, out)?;
    Ok(())
}

/// Per-row uniforms on (0, 1) of `stream` at `step`, sample index `first + i`.
fn time_rows(seed: u64, stream: Stream, first: u64, step: u64, out: &mut [f64]) -> Result<()> {
    for (i, t) in out.iter_mut().enumerate() {
        *t = Draws::new(seed, stream, first + i as u64, step)?.uniform();
    }
    Ok(())
}

/// Builds the loss of one batch on `g` (cleared first); returns the parameters'
/// handles and the loss.
fn batch_loss<B: Backend>(
    g: &mut Graph<B>,
    net: &MlpNet,
    dtype: DType,
    requires_grad: bool,
    (x0, x1, t): (&[f64], &[f64], &[f64]),
) -> Result<(MlpVars, Var)> {
    g.clear();
    let (n, d) = (t.len(), net.dim());
    let vars = net.record(g, dtype, requires_grad)?;
    let x0v = g.leaf_f64(n, d, x0, dtype, false)?;
    let x1v = g.leaf_f64(n, d, x1, dtype, false)?;
    let tv = g.leaf_f64(n, 1, t, dtype, false)?;
    let loss = cfm_loss(g, &vars, x0v, x1v, tv)?;
    Ok((vars, loss))
}

/// The validation loss: the CFM loss over the whole set with fixed draws, in chunks of
/// the batch size (each chunk paired on its own under OT coupling), weighted by the
/// chunks' sizes.
fn validation_loss<B: Backend>(
    g: &mut Graph<B>,
    net: &MlpNet,
    config: &FlowMatchingConfig,
    source: &Source<'_>,
    ws: &mut AssignmentWorkspace,
) -> Result<f64> {
    let (n, d) = (source.n(), source.d());
    let dtype = config.precision.dtype();
    let chunk = config.batch_size.max(1);
    let mut total = 0.0;
    let mut r0 = 0;
    while r0 < n {
        let m = chunk.min(n - r0);
        let (x0, mut x1) = match source {
            Source::Samples(x) => {
                let mut x1 = vec![0.0; m * d];
                noise_rows(
                    config.seed,
                    VALIDATION_NOISE_STREAM,
                    r0 as u64,
                    0,
                    &mut x1,
                    d,
                )?;
                (x.x[r0 * d..(r0 + m) * d].to_vec(), x1)
            }
            Source::Pairs(a, b) => (
                a.x[r0 * d..(r0 + m) * d].to_vec(),
                b.x[r0 * d..(r0 + m) * d].to_vec(),
            ),
        };
        if matches!(source, Source::Samples(_)) {
            pair_batch(config.coupling, &x0, &mut x1, d, ws)?;
        }
        let mut t = vec![0.0; m];
        time_rows(config.seed, VALIDATION_TIME_STREAM, r0 as u64, 0, &mut t)?;
        let (_, loss) = batch_loss(g, net, dtype, false, (&x0, &x1, &t))?;
        total += g.to_f64(loss)?[0] * m as f64;
        r0 += m;
    }
    Ok(total / n as f64)
}

fn check_sample_count(n: usize, what: &str) -> Result<()> {
    if n as u64 > MAX_SAMPLE {
        return Err(Error::InvalidArgument(format!(
            "{n} {what} exceed the generator's {MAX_SAMPLE} sample indices"
        )));
    }
    Ok(())
}

/// The training loop shared by [`train_flow_matching`] and [`train_reflow`], on the
/// config's device.
fn train(
    config: &FlowMatchingConfig,
    train: Source<'_>,
    validation: Option<Source<'_>>,
    normalization: Option<Normalization>,
    reflow: Option<ReflowConfig>,
    ckpt: &mut Checkpointing<'_>,
    progress: &mut dyn FnMut(&Progress),
) -> Result<TrainedFlow> {
    let sets = (train, validation, normalization, reflow);
    match config.device {
        Device::Cpu => train_on(Cpu::new(), config, sets, ckpt, progress),
        Device::Cuda => train_on(Device::cuda()?, config, sets, ckpt, progress),
    }
}

/// The training pairs or samples, the validation ones, the normalization and the
/// reflow settings of a run.
type Sets<'a> = (
    Source<'a>,
    Option<Source<'a>>,
    Option<Normalization>,
    Option<ReflowConfig>,
);

/// [`train`] on `backend`.
fn train_on<B: Backend>(
    backend: B,
    config: &FlowMatchingConfig,
    (train, validation, normalization, reflow): Sets<'_>,
    ckpt: &mut Checkpointing<'_>,
    progress: &mut dyn FnMut(&Progress),
) -> Result<TrainedFlow> {
    config.validate()?;
    let config_json = config.to_json()?;
    let (n, d) = (train.n(), train.d());
    check_sample_count(n, "training samples")?;
    if let Some(v) = &validation {
        check_sample_count(v.n(), "validation samples")?;
        if v.d() != d {
            return Err(Error::Data(format!(
                "validation data of dimension {}, training data of dimension {d}",
                v.d()
            )));
        }
    }
    let dtype = config.precision.dtype();
    let mut net = MlpNet::init(d, &config.hidden, config.activation, config.seed)?;
    let (mut adam, mut scheduler, start_it) = ckpt.start(
        &config_json,
        net.params_mut(),
        config.optimizer,
        config.schedule,
        config.iterations,
    )?;
    let mut batches = BatchSampler::new(n, config.batch_size, config.seed)?;
    let mut g = Graph::new(backend);
    let mut ws = AssignmentWorkspace::new();

    let b = config.batch_size;
    let mut x0 = vec![0.0; b * d];
    let mut x1 = vec![0.0; b * d];
    let mut t = vec![0.0; b];
    let mut losses = Vec::with_capacity(config.iterations as usize);
    let mut record = Vec::new();
    for it in start_it..config.iterations {
        match &train {
            Source::Samples(data) => {
                batches.batch(data, it, &mut x0)?;
                noise_rows(config.seed, NOISE_STREAM, 0, it, &mut x1, d)?;
                pair_batch(config.coupling, &x0, &mut x1, d, &mut ws)?;
            }
            Source::Pairs(a, bset) => {
                let idx = batches.indices(it)?;
                a.gather(idx, &mut x0)?;
                bset.gather(idx, &mut x1)?;
            }
        }
        time_rows(config.seed, TIME_STREAM, 0, it, &mut t)?;
        let (vars, loss) = batch_loss(&mut g, &net, dtype, true, (&x0, &x1, &t))?;
        let loss_value = g.to_f64(loss)?[0];
        check_objective(loss_value, "the flow matching loss", it)?;
        let grads = g.backward(loss, None)?;
        let mut grad = vars.gradients(&g, &grads)?;
        drop(grads);
        let (grad_norm, lr) = optimizer_step(
            &mut adam,
            &mut scheduler,
            net.params_mut(),
            &mut grad,
            config.clip_norm,
            it,
            "flow matching",
        )?;
        losses.push(loss_value);

        let done = it + 1;
        let due = validation_due(done, config.iterations, config.validate_every);
        let mut val_loss = None;
        if let (true, Some(v)) = (due, &validation) {
            let l = validation_loss(&mut g, &net, config, v, &mut ws)?;
            scheduler.observe(l);
            record.push((done, l));
            val_loss = Some(l);
        }
        ckpt.after_iteration(
            done,
            config.iterations,
            &config_json,
            net.params(),
            &adam,
            &scheduler,
        )?;
        progress(&Progress {
            iteration: done,
            iterations: config.iterations,
            loss: loss_value,
            grad_norm,
            lr,
            validation_loss: val_loss,
        });
    }
    Ok(TrainedFlow {
        config: config.clone(),
        net,
        normalization,
        losses,
        validation: record,
        reflow,
    })
}

/// Trains a velocity field by conditional flow matching on `train` (samples in data
/// coordinates), reporting the validation loss on `validation` (if given) every
/// `config.validate_every` iterations and after the last; `progress` is called after
/// every iteration.
///
/// With `config.normalize`, both sets are standardized with the training set's
/// per-coordinate mean and standard deviation, and the map is recorded in the result
/// (and the artifact), so that the runtime's sampler returns data coordinates.
///
/// Errors: [`Error::InvalidArgument`] for a bad config (including a batch larger than
/// the training set); [`Error::Data`] for sets of different dimensions or a constant
/// coordinate under normalization; [`Error::Numerical`] when the loss is not finite.
pub fn train_flow_matching(
    config: &FlowMatchingConfig,
    train_data: &Dataset,
    validation: Option<&Dataset>,
    progress: &mut dyn FnMut(&Progress),
) -> Result<TrainedFlow> {
    let mut ckpt = Checkpointing::none();
    train_flow_matching_checkpointed(config, train_data, validation, &mut ckpt, progress)
}

/// [`train_flow_matching`] with periodic checkpoints and, with `ckpt.resume`,
/// resumption: a resumed run continues bitwise as the uninterrupted one (its `losses`
/// then start at the resumed iteration).
pub fn train_flow_matching_checkpointed(
    config: &FlowMatchingConfig,
    train_data: &Dataset,
    validation: Option<&Dataset>,
    ckpt: &mut Checkpointing<'_>,
    progress: &mut dyn FnMut(&Progress),
) -> Result<TrainedFlow> {
    match config.device {
        Device::Cpu => {
            train_flow_matching_on(Cpu::new(), config, train_data, validation, ckpt, progress)
        }
        Device::Cuda => {
            let backend = Device::cuda()?;
            train_flow_matching_on(backend, config, train_data, validation, ckpt, progress)
        }
    }
}

/// [`train_flow_matching_checkpointed`] on `backend` (whatever `config.device` says).
pub fn train_flow_matching_on<B: Backend>(
    backend: B,
    config: &FlowMatchingConfig,
    train_data: &Dataset,
    validation: Option<&Dataset>,
    ckpt: &mut Checkpointing<'_>,
    progress: &mut dyn FnMut(&Progress),
) -> Result<TrainedFlow> {
    config.validate()?;
    let (train_set, val_set, norm) = normalized_sets(train_data, validation, config.normalize)?;
    train_on(
        backend,
        config,
        (
            Source::Samples(&train_set),
            val_set.as_ref().map(Source::Samples),
            norm,
            None,
        ),
        ckpt,
        progress,
    )
}

/// Settings of reflow ([`train_reflow`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReflowConfig {
    /// Number of training pairs generated with the teacher.
    pub pairs: usize,
    /// Number of validation pairs (0: no validation).
    pub validation_pairs: usize,
    /// RK4 steps of the teacher's ODE solve.
    pub steps: usize,
    /// Seed of the teacher's prior draws (the sampler's seed).
    pub seed: u64,
}

impl Default for ReflowConfig {
    fn default() -> Self {
        ReflowConfig {
            pairs: 10_000,
            validation_pairs: 1_000,
            steps: 100,
            seed: 1,
        }
    }
}

/// Pairs generated by a teacher model, in its model coordinates: row i of `x1` is a
/// standard normal draw, row i of `x0` the teacher's ODE solution from it.
#[derive(Clone, Debug, PartialEq)]
pub struct ReflowPairs {
    /// The teacher's samples (data end, t = 0).
    pub x0: Dataset,
    /// The prior draws they come from (noise end, t = 1).
    pub x1: Dataset,
}

/// Samples `first_sample .. first_sample + n` of a velocity (or potential) model's
/// ODE, solved in f64 with `steps` RK4 steps from its noise end to its data end by the
/// runtime's [`Sampler`] (seed `seed`), without the artifact's normalization (the pairs
/// stay in model coordinates), together with the prior draws they start from
/// (re-drawn with [`Brownian::prior_normals`], the sampler's own draws).
///
/// Errors: the runtime's errors (a score model has no ODE field; `steps` = 0);
/// [`Error::InvalidArgument`] for `n` = 0.
pub fn reflow_pairs(
    teacher: &Artifact,
    n: usize,
    steps: usize,
    seed: u64,
    first_sample: u64,
) -> Result<ReflowPairs> {
    if n == 0 {
        return Err(Error::InvalidArgument(
            "reflow needs at least one pair".into(),
        ));
    }
    check_sample_count(n, "reflow pairs")?;
    let model = Model::<f64>::from_artifact(teacher.clone())?;
    let d = model.dim();
    let (t0, t1) = model.time_interval();
    let field = model.field()?;
    let sampler = Sampler::new(
        Arc::clone(&field),
        t1,
        t0,
        SamplerOptions::ode(OdeOptions::fixed(OdeSolver::Rk4, steps), seed),
    )?;
    let samples = sampler.sample(n, first_sample)?;
    let mut x1 = vec![0.0; n * d];
    let prior = Brownian::new(seed);
    for (i, row) in x1.chunks_exact_mut(d).enumerate() {
        prior.prior_normals(first_sample + i as u64, row)?;
    }
    Ok(ReflowPairs {
        x0: Dataset::new(n, d, samples.x)?,
        x1: Dataset::new(n, d, x1)?,
    })
}

/// Rectified flow's reflow: generates `reflow.pairs` training pairs (prior samples
/// 0..pairs) and `reflow.validation_pairs` validation pairs (the next ones) with the
/// `teacher`'s ODE ([`reflow_pairs`]), then trains a fresh network by flow matching on
/// those fixed pairs. The student works in the teacher's model coordinates and records
/// the teacher's normalization (`config.normalize` is not consulted).
///
/// Errors: [`Error::InvalidArgument`] when `config.coupling` is not
/// [`Coupling::Independent`] (the pairs are the coupling) and for a bad config;
/// [`reflow_pairs`]'s errors.
pub fn train_reflow(
    config: &FlowMatchingConfig,
    reflow: &ReflowConfig,
    teacher: &Artifact,
    progress: &mut dyn FnMut(&Progress),
) -> Result<TrainedFlow> {
    config.validate()?;
    if config.coupling != Coupling::Independent {
        return Err(Error::InvalidArgument(
            "reflow trains on the teacher's pairs: the coupling must be `independent`".into(),
        ));
    }
    let train_pairs = reflow_pairs(teacher, reflow.pairs, reflow.steps, reflow.seed, 0)?;
    let val_pairs = if reflow.validation_pairs > 0 {
        Some(reflow_pairs(
            teacher,
            reflow.validation_pairs,
            reflow.steps,
            reflow.seed,
            reflow.pairs as u64,
        )?)
    } else {
        None
    };
    train(
        config,
        Source::Pairs(&train_pairs.x0, &train_pairs.x1),
        val_pairs.as_ref().map(|p| Source::Pairs(&p.x0, &p.x1)),
        teacher.card.normalization.clone(),
        Some(*reflow),
        &mut Checkpointing::none(),
        progress,
    )
}
