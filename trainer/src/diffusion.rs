//! Score-based diffusion with the VP-SDE (Song et al. 2021; MATH.md §4): denoising
//! score matching for an MLP score network, exported as a `score` model that the
//! runtime samples by the reverse SDE or the probability-flow ODE
//! ([`socflow_runtime::vpsde`]).
//!
//! # Loss
//!
//! x₀ ~ data, t ~ U(ε, 1), ε ~ N(0, I), x_t = α_t x₀ + σ_t ε with α_t = e^{−½B(t)},
//! σ_t² = 1 − e^{−B(t)}, B(t) = β_min t + ½t²(β_max − β_min). With the weight
//! λ(t) = σ_t², denoising score matching minimizes
//!
//! L(θ) = mean over the batch and the d coordinates of (σ_t s_θ(x_t, t) + ε)²,
//!
//! whose minimizer is the score ∇ log p_t (the sum over coordinates is d times this).
//! With [`ScoreOutput::Noise`] (the default) the network predicts the noise, ε̂_θ,
//! and s_θ = −ε̂_θ/σ_t, so the loss is the mean of (ε − ε̂_θ(x_t, t))²: the same
//! objective with a network whose targets have unit scale at every t (a direct score
//! grows like 1/σ_t as t → 0). [`ScoreOutput::Score`] trains s_θ itself.
//!
//! The loss is built from the autodiff graph's existing ops (the MLP, products with a
//! per-row column, sums, squares, mean); x_t, σ_t and ε are constants of the graph.
//!
//! # Randomness and determinism
//!
//! Every draw comes from the runtime's counter-based generator keyed by the config's
//! seed: the mini-batch ([`BatchSampler`], step = iteration), the noise of batch row i
//! ([`NOISE_STREAM`], sample = i, step = iteration), its time ([`TIME_STREAM`]), the
//! initial parameters ([`MlpNet::init`]). The validation loss uses fixed draws keyed by
//! the validation sample's index ([`VALIDATION_NOISE_STREAM`],
//! [`VALIDATION_TIME_STREAM`], step 0), so successive validation losses are
//! comparable. Two runs with the same config and data give the same parameters.

use serde::{Deserialize, Serialize};
use socflow_runtime::artifact::{Artifact, ModelKind, Normalization, Provenance};
use socflow_runtime::brownian::{Brownian, Stream, MAX_SAMPLE};
use socflow_runtime::nn::Activation;
use socflow_runtime::vpsde::{ScoreOutput, VpSde};

use crate::autodiff::{Backend, Cpu, DType, Graph, Var};
use crate::checkpoint::Checkpointing;
use crate::data::normalized_sets;
use crate::data::rng::{Draws, FIRST_FREE_AFTER_DATA};
use crate::data::{BatchSampler, Dataset};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::flow_matching::Precision;
use crate::mlp::{MlpNet, MlpVars};
use crate::optim::{check_objective, optimizer_step, validation_due, AdamConfig, Schedule};

/// Stream of the training noise ε.
pub const NOISE_STREAM: Stream = Stream(FIRST_FREE_AFTER_DATA.0 + 64);
/// Stream of the training times t.
pub const TIME_STREAM: Stream = Stream(FIRST_FREE_AFTER_DATA.0 + 65);
/// Stream of the validation noise.
pub const VALIDATION_NOISE_STREAM: Stream = Stream(FIRST_FREE_AFTER_DATA.0 + 66);
/// Stream of the validation times.
pub const VALIDATION_TIME_STREAM: Stream = Stream(FIRST_FREE_AFTER_DATA.0 + 67);

/// Settings of [`train_diffusion`].
///
/// In JSON (and in `socflow train`'s `[diffusion]` table) every field is optional (the
/// [`Default`] fills the rest) and unknown keys are errors, e.g.
///
/// ```json
/// {"hidden": [128, 128, 128], "activation": "silu", "batch_size": 256,
///  "iterations": 18000, "optimizer": {"lr": 0.001, "beta1": 0.9, "beta2": 0.999,
///  "eps": 1e-8, "weight_decay": 0.0, "decoupled": false},
///  "schedule": {"type": "step", "every": 6000, "factor": 0.5}, "clip_norm": null,
///  "seed": 0, "beta_min": 0.1, "beta_max": 20.0, "eps": 0.001, "output": "noise",
///  "normalize": true, "validate_every": 1000, "precision": "f32", "device": "cpu"}
/// ```
///
/// The defaults are what the 2-D toys need (8gaussians: about 25 s on 2 cores, every
/// mode resolved); a third of the iterations leaves the modes blurred into a ring.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiffusionConfig {
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
    /// β(0) of the linear schedule.
    pub beta_min: f64,
    /// β(1) of the linear schedule.
    pub beta_max: f64,
    /// Smallest training time and end of sampling (0 < ε < 1).
    pub eps: f64,
    /// What the network outputs: `noise` (s = −ε̂/σ_t) or `score`.
    pub output: ScoreOutput,
    /// Standardize the data per coordinate (statistics of the training set) and record
    /// the map in the artifact.
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

impl Default for DiffusionConfig {
    fn default() -> Self {
        let sde = VpSde::default();
        DiffusionConfig {
            hidden: vec![128, 128, 128],
            activation: Activation::Silu,
            batch_size: 256,
            iterations: 18_000,
            optimizer: AdamConfig::adam(1e-3),
            schedule: Schedule::Step {
                every: 6_000,
                factor: 0.5,
            },
            clip_norm: None,
            seed: 0,
            beta_min: sde.beta_min,
            beta_max: sde.beta_max,
            eps: sde.eps,
            output: ScoreOutput::Noise,
            normalize: true,
            validate_every: 1_000,
            precision: Precision::F32,
            device: Device::Cpu,
        }
    }
}

impl DiffusionConfig {
    /// The VP-SDE these settings describe.
    pub fn sde(&self) -> VpSde {
        VpSde {
            beta_min: self.beta_min,
            beta_max: self.beta_max,
            eps: self.eps,
            output: self.output,
        }
    }

    /// Checks the settings that do not depend on the data.
    pub fn validate(&self) -> Result<()> {
        crate::mlp::validate_hidden(&self.hidden)?;
        self.sde()
            .validate()
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
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
            .map_err(|e| Error::InvalidArgument(format!("diffusion config: {e}")))
    }

    /// Parses a JSON config (unknown keys are errors).
    pub fn from_json(text: &str) -> Result<Self> {
        serde_json::from_str(text)
            .map_err(|e| Error::InvalidArgument(format!("diffusion config: {e}")))
    }
}

/// What [`train_diffusion`] reports after every iteration.
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

/// A trained score network and its training record.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainedScore {
    /// The config it was trained with.
    pub config: DiffusionConfig,
    /// The network (in model coordinates; its output per `config.output`).
    pub net: MlpNet,
    /// The data normalization (model coordinates = (x − mean)/std), if any.
    pub normalization: Option<Normalization>,
    /// Training loss of every iteration.
    pub losses: Vec<f64>,
    /// (iterations completed, validation loss) at every validation.
    pub validation: Vec<(u64, f64)>,
}

impl TrainedScore {
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

    /// The model file: an MLP artifact of kind score over [0, 1] (data at 0, the
    /// prior at 1) whose card records the VP-SDE (schedule, ε, output), with the
    /// normalization and a provenance recording the config (JSON), the loss and the
    /// final losses.
    pub fn to_artifact(&self) -> Result<Artifact> {
        let mut prov = Provenance::now(concat!("socflow-trainer ", env!("CARGO_PKG_VERSION")))
            .with_detail("problem", "VP-SDE denoising score matching")
            .with_detail("config", self.config.to_json()?)
            .with_detail(
                "loss",
                "mean over batch and coordinates of (sigma_t s(x_t,t) + eps)^2, \
                 x_t = alpha_t x0 + sigma_t eps, t ~ U(eps_t, 1)",
            )
            .with_detail("iterations", self.losses.len())
            .with_detail("final_train_loss", self.final_loss(100));
        if let Some(v) = self.validation_loss() {
            prov = prov.with_detail("validation_loss", v);
        }
        let a = Artifact::mlp(self.net.to_params()?, ModelKind::Score, [0.0, 1.0], prov)?
            .with_vpsde(self.config.sde())?;
        Ok(match &self.normalization {
            Some(n) => a.with_normalization(n.clone())?,
            None => a,
        })
    }
}

/// Per-sample constants of a batch: x_t (B × d), ε (B × d), t (B × 1) and the
/// loss's per-row scale (σ_t for a score output, −1 for a noise output, so that the
/// residual is scale · net + ε in both cases: σ s + ε, or ε − ε̂).
#[derive(Clone, Debug, Default)]
struct Batch {
    xt: Vec<f64>,
    noise: Vec<f64>,
    t: Vec<f64>,
    scale: Vec<f64>,
}

impl Batch {
    fn new(rows: usize, d: usize) -> Self {
        Batch {
            xt: vec![0.0; rows * d],
            noise: vec![0.0; rows * d],
            t: vec![0.0; rows],
            scale: vec![0.0; rows],
        }
    }

    /// Fills x_t, t and the scale from `x0` and the noise and uniforms already in
    /// `noise` and `t` (uniforms on (0, 1), mapped to (ε, 1)).
    fn perturb(&mut self, sde: &VpSde, x0: &[f64], d: usize) {
        for (r, ((xt, (x, e)), t)) in self
            .xt
            .chunks_exact_mut(d)
            .zip(x0.chunks_exact(d).zip(self.noise.chunks_exact(d)))
            .zip(self.t.iter_mut())
            .enumerate()
        {
            *t = sde.eps + (1.0 - sde.eps) * *t;
            let (a, s) = (sde.alpha(*t), sde.sigma(*t));
            for ((o, xi), ei) in xt.iter_mut().zip(x).zip(e) {
                *o = a * xi + s * ei;
            }
            self.scale[r] = match sde.output {
                ScoreOutput::Score => s,
                ScoreOutput::Noise => -1.0,
            };
        }
    }
}

/// The denoising score-matching loss of one batch on a graph: `xt` and `noise` are
/// B × d, `t` and `scale` B × 1; returns the 1 × 1 mean over the batch and the
/// coordinates of (scale · net(x_t, t) + ε)², which is (σ_t s_θ + ε)² with scale = σ_t
/// for a score output and (ε − ε̂_θ)² with scale = −1 for a noise output.
pub fn dsm_loss<B: Backend>(
    g: &mut Graph<B>,
    net: &MlpVars,
    xt: Var,
    noise: Var,
    t: Var,
    scale: Var,
) -> Result<Var> {
    let out = net.forward(g, xt, t)?;
    let scaled = g.mul(out, scale)?;
    let r = g.add(scaled, noise)?;
    let sq = g.square(r)?;
    Ok(g.mean(sq)?)
}

fn batch_loss<B: Backend>(
    g: &mut Graph<B>,
    net: &MlpNet,
    dtype: DType,
    requires_grad: bool,
    batch: &Batch,
    rows: usize,
) -> Result<(MlpVars, Var)> {
    g.clear();
    let d = net.dim();
    let vars = net.record(g, dtype, requires_grad)?;
    let xt = g.leaf_f64(rows, d, &batch.xt[..rows * d], dtype, false)?;
    let noise = g.leaf_f64(rows, d, &batch.noise[..rows * d], dtype, false)?;
    let t = g.leaf_f64(rows, 1, &batch.t[..rows], dtype, false)?;
    let scale = g.leaf_f64(rows, 1, &batch.scale[..rows], dtype, false)?;
    let loss = dsm_loss(g, &vars, xt, noise, t, scale)?;
    Ok((vars, loss))
}

/// Normals of `stream` at `step` for rows `first ..`, and uniforms of `tstream`.
fn draw(
    seed: u64,
    (stream, tstream): (Stream, Stream),
    first: u64,
    step: u64,
    batch: &mut Batch,
    rows: usize,
    d: usize,
) -> Result<()> {
    Brownian::new(seed).stream_normals_block(
        stream,
        first,
        step,
        d,
        &mut batch.noise[..rows * d],
    )?;
    for (i, t) in batch.t[..rows].iter_mut().enumerate() {
        *t = Draws::new(seed, tstream, first + i as u64, step)?.uniform();
    }
    Ok(())
}

/// The validation loss: the DSM loss over the whole set with fixed draws, in chunks of
/// the batch size, weighted by the chunks' sizes.
fn validation_loss<B: Backend>(
    g: &mut Graph<B>,
    net: &MlpNet,
    config: &DiffusionConfig,
    data: &Dataset,
) -> Result<f64> {
    let (n, d) = (data.n, data.d);
    let sde = config.sde();
    let chunk = config.batch_size.max(1);
    let mut batch = Batch::new(chunk, d);
    let mut total = 0.0;
    let mut r0 = 0;
    while r0 < n {
        let m = chunk.min(n - r0);
        draw(
            config.seed,
            (VALIDATION_NOISE_STREAM, VALIDATION_TIME_STREAM),
            r0 as u64,
            0,
            &mut batch,
            m,
            d,
        )?;
        // Only the first m rows are perturbed and read.
        batch.perturb(&sde, &data.x[r0 * d..(r0 + m) * d], d);
        let (_, loss) = batch_loss(g, net, config.precision.dtype(), false, &batch, m)?;
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

/// Trains a score network by denoising score matching on `train` (samples in data
/// coordinates), reporting the validation loss on `validation` (if given) every
/// `config.validate_every` iterations and after the last; `progress` is called after
/// every iteration.
///
/// With `config.normalize`, both sets are standardized with the training set's
/// per-coordinate mean and standard deviation and the map is recorded in the result
/// (and the artifact), so that the runtime's samplers return data coordinates.
///
/// Errors: [`Error::InvalidArgument`] for a bad config (including a batch larger than
/// the training set or a bad schedule); [`Error::Data`] for sets of different
/// dimensions or a constant coordinate under normalization; [`Error::Numerical`] when
/// the loss is not finite.
pub fn train_diffusion(
    config: &DiffusionConfig,
    train_data: &Dataset,
    validation: Option<&Dataset>,
    progress: &mut dyn FnMut(&Progress),
) -> Result<TrainedScore> {
    let mut ckpt = Checkpointing::none();
    train_diffusion_checkpointed(config, train_data, validation, &mut ckpt, progress)
}

/// [`train_diffusion`] with periodic checkpoints and, with `ckpt.resume`, resumption:
/// a resumed run continues as the uninterrupted one (its `losses` then start at the
/// resumed iteration).
pub fn train_diffusion_checkpointed(
    config: &DiffusionConfig,
    train_data: &Dataset,
    validation: Option<&Dataset>,
    ckpt: &mut Checkpointing<'_>,
    progress: &mut dyn FnMut(&Progress),
) -> Result<TrainedScore> {
    match config.device {
        Device::Cpu => {
            train_diffusion_on(Cpu::new(), config, train_data, validation, ckpt, progress)
        }
        Device::Cuda => train_diffusion_on(
            Device::cuda()?,
            config,
            train_data,
            validation,
            ckpt,
            progress,
        ),
    }
}

/// [`train_diffusion_checkpointed`] on `backend` (whatever `config.device` says).
pub fn train_diffusion_on<B: Backend>(
    backend: B,
    config: &DiffusionConfig,
    train_data: &Dataset,
    validation: Option<&Dataset>,
    ckpt: &mut Checkpointing<'_>,
    progress: &mut dyn FnMut(&Progress),
) -> Result<TrainedScore> {
    config.validate()?;
    let (train_set, val_set, normalization) =
        normalized_sets(train_data, validation, config.normalize)?;
    let config_json = config.to_json()?;
    let (n, d) = (train_set.n, train_set.d);
    check_sample_count(n, "training samples")?;
    if let Some(v) = &val_set {
        check_sample_count(v.n, "validation samples")?;
        if v.d != d {
            return Err(Error::Data(format!(
                "validation data of dimension {}, training data of dimension {d}",
                v.d
            )));
        }
    }
    let sde = config.sde();
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
    let b = config.batch_size;
    let mut x0 = vec![0.0; b * d];
    let mut batch = Batch::new(b, d);
    let mut losses = Vec::with_capacity(config.iterations.saturating_sub(start_it) as usize);
    let mut record = Vec::new();
    for it in start_it..config.iterations {
        batches.batch(&train_set, it, &mut x0)?;
        draw(
            config.seed,
            (NOISE_STREAM, TIME_STREAM),
            0,
            it,
            &mut batch,
            b,
            d,
        )?;
        batch.perturb(&sde, &x0, d);
        let (vars, loss) = batch_loss(&mut g, &net, dtype, true, &batch, b)?;
        let loss_value = g.to_f64(loss)?[0];
        check_objective(loss_value, "the denoising score matching loss", it)?;
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
            "diffusion",
        )?;
        losses.push(loss_value);

        let done = it + 1;
        let due = validation_due(done, config.iterations, config.validate_every);
        let mut val_loss = None;
        if let (true, Some(v)) = (due, &val_set) {
            let l = validation_loss(&mut g, &net, config, v)?;
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
    Ok(TrainedScore {
        config: config.clone(),
        net,
        normalization,
        losses,
        validation: record,
    })
}
