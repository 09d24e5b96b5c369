//! Continuous normalizing flows (FFJORD, Grathwohl et al. 2019) with an MLP velocity,
//! trained by maximum likelihood through the discretize-then-optimize solver.
//!
//! # Convention (MATH.md §2)
//!
//! Data x sits at t = 0, the standard normal prior at t = 1. The augmented state
//! [z, l] solves
//!
//! ```text
//! dz/dt = v_θ(z, t),   dl/dt = tr ∂v_θ/∂z (z, t),   z(0) = x,  l(0) = 0
//! NLL(x) = ½‖z(1)‖² + (d/2) ln 2π − l(1)
//! ```
//!
//! and the loss is the batch mean of NLL. The exported artifact is an MLP of kind
//! velocity over [0, 1]: the runtime's [`Sampler`](socflow_runtime::sampler::Sampler)
//! draws z ~ N(0, I) at t = 1 and integrates the same field back to t = 0, and its
//! log-density is log N(z) + ∫₀¹ tr ∂v/∂z dt = −NLL (the sign conventions agree;
//! the tests check it against [`crate::likelihood`]).
//!
//! # Divergence
//!
//! Both estimators are built from graph ops on the network's own pre-activations, so
//! the discrete adjoint differentiates them like any other part of the right-hand side.
//!
//! - [`TraceEstimator::Exact`]: the per-sample Jacobians in the layout Jᵀ ∈
//!   R^{(B·d)×m} of [`crate::autodiff`]: J₀ᵀ = tile_rows(W₀[:, :d]ᵀ, B), then per
//!   hidden layer Jᵀ ← (repeat_rows(σ'(a), d) ⊙ Jᵀ)·W_{l+1}ᵀ, and the trace
//!   Σ_k J[(b,k),k] = sum_row_groups(sum_cols(Jᵀ ⊙ tile_rows(I_d, B)), d). It costs
//!   about d forward passes.
//! - [`TraceEstimator::Hutchinson`]: εᵀ(∂v/∂z)ε with one probe ε per sample: the
//!   directional derivative (∂v/∂z)ε is pushed forward through the layers as a B × m
//!   tensor (u ← (σ'(a) ⊙ u)·W_{l+1}ᵀ, u₀ = εW₀[:, :d]ᵀ), about one more forward
//!   pass. Unbiased for ε with E εεᵀ = I ([`Noise::Gaussian`] or
//!   [`Noise::Rademacher`]).
//!
//! # Randomness
//!
//! As in FFJORD, the probe ε of a sample is fixed for the whole solve (every step and
//! stage of the forward pass and of the backward pass's rebuild), so the discrete
//! objective is a deterministic function of the parameters and its adjoint gradient is
//! exact. It is drawn from the runtime's counter-based generator on
//! [`HUTCHINSON_STREAM`], keyed by (seed, sample = batch row, step = iteration)
//! ([`hutchinson_noise`]). Batches, initialization and the optimizer follow
//! [`crate::flow_matching`].
//!
//! # Reported losses
//!
//! With normalization on, training runs in model coordinates (x − mean)/std and every
//! reported NLL (training loss, validation NLL) is in data coordinates: model NLL plus
//! Σ ln std. Validation always uses the exact trace, with `validation_steps` steps.

use serde::{Deserialize, Serialize};
use socflow_runtime::artifact::{Artifact, ModelKind, Normalization, Provenance};
use socflow_runtime::brownian::{Brownian, Stream, MAX_SAMPLE};
use socflow_runtime::nn::Activation;

use crate::autodiff::{self, Backend, Cpu, DType, Graph, Tensor, Var};
use crate::data::normalized_sets;
use crate::data::rng::{Draws, FIRST_FREE_AFTER_DATA};
use crate::data::{BatchSampler, Dataset};
use crate::dto::{Cotangents, Method, PrecisionPolicy, Rhs, Solver};
use crate::error::{check_len, Error, Result};
use crate::flow_matching::Precision;
use crate::mlp::{MlpNet, MlpVars};
use crate::optim::{optimizer_step, validation_due, Adam, AdamConfig, Schedule, Scheduler};

/// Stream of the Hutchinson probes (well after the flow-matching streams; not
/// OT-Flow's initialization stream, +16, so that a seed's probes are independent of
/// the weights an OT-Flow model of that seed starts from).
pub const HUTCHINSON_STREAM: Stream = Stream(FIRST_FREE_AFTER_DATA.0 + 17);

/// ln 2π.
const LN_2PI: f64 = 1.837_877_066_409_345_3;

/// How tr ∂v/∂z is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TraceEstimator {
    /// The exact trace from per-sample Jacobians (about d forward passes).
    Exact,
    /// Hutchinson's unbiased estimate εᵀ(∂v/∂z)ε (about one more forward pass).
    Hutchinson,
}

/// The distribution of Hutchinson's probe ε (both have E εεᵀ = I).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Noise {
    /// ε ~ N(0, I).
    Gaussian,
    /// Independent ±1 entries (the smaller variance of the two).
    Rademacher,
}

/// The fixed-grid Runge–Kutta method of the training solve.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CnfMethod {
    /// Forward Euler.
    Euler,
    /// Heun's method.
    Heun,
    /// Classical RK4.
    Rk4,
}

impl CnfMethod {
    /// The solver's method.
    pub fn method(self) -> Method {
        match self {
            CnfMethod::Euler => Method::Euler,
            CnfMethod::Heun => Method::Heun,
            CnfMethod::Rk4 => Method::Rk4,
        }
    }
}

/// Settings of [`train_cnf`]. In JSON every field is optional (the [`Default`] fills
/// the rest) and unknown keys are errors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CnfConfig {
    /// Hidden widths of the velocity MLP.
    pub hidden: Vec<usize>,
    /// Activation of the hidden layers.
    pub activation: Activation,
    /// Equal steps of the training solve over [0, 1].
    pub steps: usize,
    /// Steps of the validation solve (`None`: `steps`).
    pub validation_steps: Option<usize>,
    /// Runge–Kutta method.
    pub method: CnfMethod,
    /// Trace estimator of the training loss (validation is always exact).
    pub trace: TraceEstimator,
    /// Probe distribution of Hutchinson's estimator.
    pub noise: Noise,
    /// Mini-batch size (at most the number of training samples).
    pub batch_size: usize,
    /// Number of optimizer steps.
    pub iterations: u64,
    /// Adam / AdamW settings.
    pub optimizer: AdamConfig,
    /// Learning-rate schedule (a plateau schedule observes the validation NLL).
    pub schedule: Schedule,
    /// Clip the gradient's global norm to this value.
    pub clip_norm: Option<f64>,
    /// Seed of every draw (initialization, batches, probes).
    pub seed: u64,
    /// Standardize the data per coordinate and record the map in the artifact.
    pub normalize: bool,
    /// Validate every this many iterations (and after the last); 0: only after the last.
    pub validate_every: u64,
    /// Precision of the network and the solve (the state, adjoint and gradient sums
    /// are at the same precision: [`PrecisionPolicy::f32`] or [`PrecisionPolicy::f64`]).
    pub precision: Precision,
}

impl Default for CnfConfig {
    fn default() -> Self {
        CnfConfig {
            hidden: vec![64, 64],
            activation: Activation::Tanh,
            steps: 8,
            validation_steps: None,
            method: CnfMethod::Rk4,
            trace: TraceEstimator::Exact,
            noise: Noise::Rademacher,
            batch_size: 256,
            iterations: 1000,
            optimizer: AdamConfig::adam(1e-3),
            schedule: Schedule::Constant,
            clip_norm: None,
            seed: 0,
            normalize: true,
            validate_every: 100,
            precision: Precision::F32,
        }
    }
}

impl CnfConfig {
    /// Checks the settings that do not depend on the data.
    pub fn validate(&self) -> Result<()> {
        crate::mlp::validate_hidden(&self.hidden)?;
        if self.steps == 0 || self.validation_steps == Some(0) {
            return Err(Error::InvalidArgument("a CNF solve needs ≥ 1 step".into()));
        }
        crate::optim::validate_run(
            self.batch_size,
            self.iterations,
            &self.optimizer,
            self.schedule,
            self.clip_norm,
        )?;
        Ok(())
    }

    /// The config as JSON.
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string(self).map_err(|e| Error::InvalidArgument(format!("CNF config: {e}")))
    }

    /// Parses a JSON config (unknown keys are errors).
    pub fn from_json(text: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| Error::InvalidArgument(format!("CNF config: {e}")))
    }

    /// The precision policy of the solves.
    pub fn policy(&self) -> PrecisionPolicy {
        match self.precision {
            Precision::F32 => PrecisionPolicy::f32(),
            Precision::F64 => PrecisionPolicy::f64(),
        }
    }
}

fn eye(d: usize) -> Vec<f64> {
    let mut e = vec![0.0; d * d];
    for k in 0..d {
        e[k * d + k] = 1.0;
    }
    e
}

/// v(x, t) and its divergence on the graph; `probe` = Some(ε) for Hutchinson.
fn vel_div<B: Backend>(
    g: &mut Graph<B>,
    net: &MlpVars,
    x: Var,
    t: Var,
    probe: Option<Var>,
) -> autodiff::Result<(Var, Var)> {
    let d = net.d;
    let batch = g.shape(x)?.rows;
    let dtype = g.dtype(x)?;
    let n_layers = net.weights.len();
    if n_layers == 0 || net.biases.len() != n_layers {
        return Err(autodiff::Error::InvalidArgument(
            "an MLP needs as many biases as weights, at least one layer".into(),
        ));
    }
    let s = g.concat_cols(&[x, t])?;
    let w0 = net.weights[0];
    let w0x = g.slice_cols(w0, 0, d)?;
    let a = g.matmul(s, w0, false, true)?;
    let mut a = g.add(a, net.biases[0])?;
    let (mut tan, eye_var) = match probe {
        None => {
            let e = g.leaf_f64(d, d, &eye(d), dtype, false)?;
            // W₀[:, :d]ᵀ (d × m) as I_d·W₀[:, :d]ᵀ.
            let w0t = g.matmul(e, w0x, false, true)?;
            (g.tile_rows(w0t, batch)?, Some(e))
        }
        Some(eps) => (g.matmul(eps, w0x, false, true)?, None),
    };
    for l in 1..n_layers {
        let (h, dh) = match net.activation {
            Activation::Silu => (g.silu(a)?, g.silu_prime(a)?),
            Activation::Tanh => (g.tanh(a)?, g.sech2(a)?),
            Activation::Softplus => (g.softplus(a)?, g.sigmoid(a)?),
        };
        let dh = if probe.is_none() {
            g.repeat_rows(dh, d)?
        } else {
            dh
        };
        let scaled = g.mul(tan, dh)?;
        tan = g.matmul(scaled, net.weights[l], false, true)?;
        let z = g.matmul(h, net.weights[l], false, true)?;
        a = g.add(z, net.biases[l])?;
    }
    let div = match (probe, eye_var) {
        (Some(eps), _) => {
            let p = g.mul(tan, eps)?;
            g.sum_cols(p)?
        }
        (None, Some(e)) => {
            let mask = g.tile_rows(e, batch)?;
            let diag = g.mul(tan, mask)?;
            let rows = g.sum_cols(diag)?;
            g.sum_row_groups(rows, d)?
        }
        (None, None) => {
            return Err(autodiff::Error::InvalidArgument(
                "exact trace without its identity mask".into(),
            ))
        }
    };
    Ok((a, div))
}

/// The velocity v(x, t) (B × d) and its divergence (B × 1) of the MLP on a graph: the
/// exact trace when `probe` is `None`, Hutchinson's εᵀ(∂v/∂x)ε with the B × d probe ε
/// otherwise (module documentation). `x` is B × d, `t` is B × 1, all of one precision.
/// Both results are differentiable with respect to the parameters and the inputs.
pub fn velocity_divergence<B: Backend>(
    g: &mut Graph<B>,
    net: &MlpVars,
    x: Var,
    t: Var,
    probe: Option<Var>,
) -> Result<(Var, Var)> {
    Ok(vel_div(g, net, x, t, probe)?)
}

/// Hutchinson probes of rows `first_sample .. first_sample + n` at `iteration`: an
/// n × d row-major block, row i from the address (seed, [`HUTCHINSON_STREAM`],
/// sample = first_sample + i, step = iteration).
///
/// Errors: [`Error::InvalidArgument`] for d = 0 or addresses beyond the generator's.
pub fn hutchinson_noise(
    seed: u64,
    noise: Noise,
    iteration: u64,
    first_sample: u64,
    n: usize,
    d: usize,
) -> Result<Vec<f64>> {
    if d == 0 {
        return Err(Error::InvalidArgument("probe dimension 0".into()));
    }
    let mut out = vec![0.0; n * d];
    let b = Brownian::new(seed);
    for (i, row) in out.chunks_exact_mut(d).enumerate() {
        let sample = first_sample + i as u64;
        match noise {
            Noise::Gaussian => b.stream_normals(HUTCHINSON_STREAM, sample, iteration, row)?,
            Noise::Rademacher => {
                let mut draws = Draws::new(seed, HUTCHINSON_STREAM, sample, iteration)?;
                for v in row.iter_mut() {
                    *v = if draws.next_u64() >> 63 == 1 {
                        1.0
                    } else {
                        -1.0
                    };
                }
            }
        }
    }
    Ok(out)
}

/// The augmented right-hand side [v, tr ∂v/∂z] of the state [z, l].
struct CnfRhs<'a> {
    d: usize,
    activation: Activation,
    probe: Option<&'a [f64]>,
}

impl<B: Backend> Rhs<B> for CnfRhs<'_> {
    fn eval(&self, g: &mut Graph<B>, t: Var, y: Var, params: &[Var]) -> autodiff::Result<Var> {
        let d = self.d;
        let dtype = g.dtype(y)?;
        let rows = g.shape(y)?.rows;
        let z = g.slice_cols(y, 0, d)?;
        let ones = g.leaf_f64(rows, 1, &vec![1.0; rows], dtype, false)?;
        let tc = g.mul(ones, t)?;
        let net = MlpVars {
            d,
            activation: self.activation,
            weights: params.iter().step_by(2).copied().collect(),
            biases: params.iter().skip(1).step_by(2).copied().collect(),
        };
        let probe = match self.probe {
            Some(e) => Some(g.leaf_f64(rows, d, e, dtype, false)?),
            None => None,
        };
        let (v, div) = vel_div(g, &net, z, tc, probe)?;
        g.concat_cols(&[v, div])
    }
}

/// How a CNF objective is solved: method, number of equal steps over [0, 1] and
/// precision policy.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CnfSolve {
    /// Runge–Kutta method.
    pub method: Method,
    /// Equal steps over [0, 1] (≥ 1).
    pub steps: usize,
    /// Precisions of the solve.
    pub policy: PrecisionPolicy,
}

impl CnfSolve {
    /// RK4 with `steps` steps in f64.
    pub fn rk4_f64(steps: usize) -> Self {
        CnfSolve {
            method: Method::Rk4,
            steps,
            policy: PrecisionPolicy::f64(),
        }
    }

    fn grid(&self) -> Result<Vec<f64>> {
        if self.steps == 0 {
            return Err(Error::InvalidArgument("a CNF solve needs ≥ 1 step".into()));
        }
        let n = self.steps as f64;
        Ok((0..=self.steps).map(|i| i as f64 / n).collect())
    }
}

/// The parameters as f64 tensors (biases 1 × out), in [`MlpNet::params`] order.
fn param_tensors(net: &MlpNet, backend: &Cpu) -> Result<Vec<Tensor<Cpu>>> {
    let p = net.params();
    p.shapes
        .iter()
        .zip(&p.values)
        .map(|(shape, v)| {
            let (r, c) = match shape.as_slice() {
                [o, i] => (*o, *i),
                [o] => (1, *o),
                _ => {
                    return Err(Error::InvalidArgument(format!(
                        "MLP parameter of shape {shape:?}"
                    )))
                }
            };
            Ok(Tensor::from_f64(backend, r, c, v, DType::F64)?)
        })
        .collect()
}

/// The result of [`cnf_objective`].
#[derive(Clone, Debug, PartialEq)]
pub struct CnfObjective {
    /// Per-sample NLL = ½‖z(1)‖² + (d/2) ln 2π − l(1) (model coordinates).
    pub nll: Vec<f64>,
    /// Their mean (the loss).
    pub loss: f64,
    /// ∂loss/∂θ in [`MlpNet::params`] order, when asked for.
    pub grad: Option<Vec<Vec<f64>>>,
}

/// Solves the augmented CNF ODE from the n × d batch `x` (row-major, model
/// coordinates) at t = 0 to t = 1 on the grid of `solve`, and returns the per-sample
/// NLL, the mean and (with `gradient`) its exact discrete gradient by the
/// discretize-then-optimize adjoint ([`Solver::backward`]). `probe` (n × d) selects
/// Hutchinson's estimator with those probes; `None` the exact trace.
///
/// Errors: [`Error::Length`] for buffers of the wrong size, [`Error::InvalidArgument`]
/// for n = 0 or no step, [`Error::Numerical`] for a non-finite loss, the solver's
/// errors.
pub fn cnf_objective(
    net: &MlpNet,
    x: &[f64],
    n: usize,
    probe: Option<&[f64]>,
    solve: &CnfSolve,
    gradient: bool,
) -> Result<CnfObjective> {
    let d = net.dim();
    if n == 0 {
        return Err(Error::InvalidArgument("an empty batch".into()));
    }
    check_len("CNF batch", x.len(), n * d)?;
    if let Some(p) = probe {
        check_len("Hutchinson probes", p.len(), n * d)?;
    }
    if x.iter().any(|v| !v.is_finite()) {
        return Err(Error::NonFinite("CNF batch".into()));
    }
    let times = solve.grid()?;
    let backend = Cpu::new();
    let params = param_tensors(net, &backend)?;
    let mut y0 = vec![0.0; n * (d + 1)];
    for (row, xr) in y0.chunks_exact_mut(d + 1).zip(x.chunks_exact(d)) {
        row[..d].copy_from_slice(xr);
    }
    let y0 = Tensor::from_f64(&backend, n, d + 1, &y0, DType::F64)?;
    let rhs = CnfRhs {
        d,
        activation: net.activation(),
        probe,
    };
    let solver = Solver::new(solve.method, solve.policy);
    let mut g = Graph::new(backend);
    let traj = solver.forward(&mut g, &rhs, &y0, &times, &params)?;
    let y1 = traj.final_state().to_f64(g.backend())?;
    let half_d_ln2pi = 0.5 * d as f64 * LN_2PI;
    let nll: Vec<f64> = y1
        .chunks_exact(d + 1)
        .map(|r| 0.5 * r[..d].iter().map(|v| v * v).sum::<f64>() + half_d_ln2pi - r[d])
        .collect();
    let loss = nll.iter().sum::<f64>() / n as f64;
    if !loss.is_finite() {
        return Err(Error::Numerical(format!("the CNF loss is {loss}")));
    }
    let grad = if gradient {
        let inv = 1.0 / n as f64;
        let cot: Vec<f64> = y1
            .chunks_exact(d + 1)
            .flat_map(|r| {
                r[..d]
                    .iter()
                    .map(move |v| v * inv)
                    .chain(std::iter::once(-inv))
            })
            .collect();
        let cot = Tensor::from_f64(g.backend(), n, d + 1, &cot, DType::F64)?;
        let gr = solver.backward(
            &mut g,
            &rhs,
            &traj,
            &params,
            &Cotangents::terminal(cot),
            false,
        )?;
        let out = gr
            .params
            .iter()
            .map(|t| Ok(t.to_f64(g.backend())?))
            .collect::<Result<Vec<_>>>()?;
        Some(out)
    } else {
        None
    };
    Ok(CnfObjective { nll, loss, grad })
}

/// What [`train_cnf`] reports after every iteration.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CnfProgress {
    /// Iterations completed.
    pub iteration: u64,
    /// Iterations in the run.
    pub iterations: u64,
    /// The mini-batch mean NLL of this iteration (data coordinates, before the step).
    pub loss: f64,
    /// The gradient's global norm before clipping.
    pub grad_norm: f64,
    /// The learning rate of this step.
    pub lr: f64,
    /// The validation mean NLL (data coordinates, exact trace), when computed.
    pub validation_nll: Option<f64>,
}

/// A trained CNF and its training record.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainedCnf {
    /// The config it was trained with.
    pub config: CnfConfig,
    /// The velocity network (model coordinates, data at t = 0).
    pub net: MlpNet,
    /// The data normalization, if any.
    pub normalization: Option<Normalization>,
    /// Mini-batch mean NLL of every iteration (data coordinates).
    pub losses: Vec<f64>,
    /// (iterations completed, validation mean NLL in data coordinates).
    pub validation: Vec<(u64, f64)>,
}

impl TrainedCnf {
    /// The last validation NLL, if a validation set was given.
    pub fn validation_nll(&self) -> Option<f64> {
        self.validation.last().map(|&(_, l)| l)
    }

    /// Σ ln std of the normalization (0 without one): data NLL = model NLL + this.
    pub fn log_det_normalization(&self) -> f64 {
        self.normalization.as_ref().map_or(0.0, |n| n.log_det())
    }

    /// Per-sample NLL of data points `x` (n × d, data coordinates) with the exact trace
    /// and `solve`, in data coordinates.
    pub fn nll(&self, x: &[f64], n: usize, solve: &CnfSolve) -> Result<Vec<f64>> {
        let mut xm = x.to_vec();
        if let Some(norm) = &self.normalization {
            check_len("CNF data", x.len(), n * self.net.dim())?;
            norm.to_model(&mut xm)?;
        }
        let shift = self.log_det_normalization();
        let o = cnf_objective(&self.net, &xm, n, None, solve, false)?;
        Ok(o.nll.into_iter().map(|v| v + shift).collect())
    }

    /// The model file: an MLP velocity artifact over [0, 1] (data at 0, prior at 1),
    /// with the normalization and a provenance recording the config and the NLLs.
    pub fn to_artifact(&self) -> Result<Artifact> {
        let mut prov = Provenance::now(concat!("socflow-trainer ", env!("CARGO_PKG_VERSION")))
            .with_detail(
                "problem",
                "continuous normalizing flow (maximum likelihood)",
            )
            .with_detail("config", self.config.to_json()?)
            .with_detail(
                "convention",
                "data at t=0, N(0,I) at t=1; dz/dt=v, dl/dt=tr dv/dz; \
                 NLL=0.5|z(1)|^2+(d/2)ln(2pi)-l(1); sample by integrating from t=1 to t=0",
            )
            .with_detail("iterations", self.losses.len());
        if let Some(l) = self.losses.last() {
            prov = prov.with_detail("final_train_nll", l);
        }
        if let Some(v) = self.validation_nll() {
            prov = prov.with_detail("validation_nll", v);
        }
        let a = Artifact::mlp(self.net.to_params()?, ModelKind::Velocity, [0.0, 1.0], prov)?;
        Ok(match &self.normalization {
            Some(n) => a.with_normalization(n.clone())?,
            None => a,
        })
    }
}

fn check_sample_count(n: usize, what: &str) -> Result<()> {
    if n as u64 > MAX_SAMPLE {
        return Err(Error::InvalidArgument(format!(
            "{n} {what} exceed the generator's {MAX_SAMPLE} sample indices"
        )));
    }
    Ok(())
}

/// Validation mean NLL (model coordinates), exact trace, in chunks of the batch size.
fn validation_nll(net: &MlpNet, config: &CnfConfig, data: &Dataset) -> Result<f64> {
    let solve = CnfSolve {
        method: config.method.method(),
        steps: config.validation_steps.unwrap_or(config.steps),
        policy: config.policy(),
    };
    let d = data.d;
    let chunk = config.batch_size.max(1);
    let mut total = 0.0;
    let mut r0 = 0;
    while r0 < data.n {
        let m = chunk.min(data.n - r0);
        let o = cnf_objective(net, &data.x[r0 * d..(r0 + m) * d], m, None, &solve, false)?;
        total += o.nll.iter().sum::<f64>();
        r0 += m;
    }
    Ok(total / data.n as f64)
}

/// Trains a CNF by maximum likelihood on `train_data` (data coordinates), reporting
/// the exact-trace validation NLL on `validation` every `config.validate_every`
/// iterations and after the last; `progress` is called after every iteration.
///
/// Errors: [`Error::InvalidArgument`] for a bad config (a batch larger than the
/// training set included); [`Error::Data`] for sets of different dimensions or a
/// constant coordinate under normalization; [`Error::Numerical`] for a non-finite
/// loss.
pub fn train_cnf(
    config: &CnfConfig,
    train_data: &Dataset,
    validation: Option<&Dataset>,
    progress: &mut dyn FnMut(&CnfProgress),
) -> Result<TrainedCnf> {
    config.validate()?;
    let d = train_data.d;
    check_sample_count(train_data.n, "training samples")?;
    if let Some(v) = validation {
        if v.d != d {
            return Err(Error::Data(format!(
                "validation data of dimension {}, training data of dimension {d}",
                v.d
            )));
        }
    }
    let (train_set, val_set, norm) = normalized_sets(train_data, validation, config.normalize)?;
    let shift = norm.as_ref().map_or(0.0, |n| n.log_det());
    let mut net = MlpNet::init(d, &config.hidden, config.activation, config.seed)?;
    let mut adam = Adam::new(config.optimizer, net.params())?;
    let mut scheduler = Scheduler::new(config.schedule, config.optimizer.lr)?;
    let mut batches = BatchSampler::new(train_set.n, config.batch_size, config.seed)?;
    let solve = CnfSolve {
        method: config.method.method(),
        steps: config.steps,
        policy: config.policy(),
    };
    let b = config.batch_size;
    let mut x = vec![0.0; b * d];
    let mut losses = Vec::with_capacity(config.iterations as usize);
    let mut record = Vec::new();
    for it in 0..config.iterations {
        batches.batch(&train_set, it, &mut x)?;
        let probe = match config.trace {
            TraceEstimator::Exact => None,
            TraceEstimator::Hutchinson => {
                Some(hutchinson_noise(config.seed, config.noise, it, 0, b, d)?)
            }
        };
        let o = cnf_objective(&net, &x, b, probe.as_deref(), &solve, true)?;
        let mut grad = o
            .grad
            .ok_or_else(|| Error::Numerical("no CNF gradient".into()))?;
        let (grad_norm, lr) = optimizer_step(
            &mut adam,
            &mut scheduler,
            net.params_mut(),
            &mut grad,
            config.clip_norm,
            it,
            "CNF",
        )?;
        losses.push(o.loss + shift);
        let done = it + 1;
        let due = validation_due(done, config.iterations, config.validate_every);
        let mut val = None;
        if let (true, Some(v)) = (due, &val_set) {
            let l = validation_nll(&net, config, v)? + shift;
            scheduler.observe(l);
            record.push((done, l));
            val = Some(l);
        }
        progress(&CnfProgress {
            iteration: done,
            iterations: config.iterations,
            loss: o.loss + shift,
            grad_norm,
            lr,
            validation_nll: val,
        });
    }
    Ok(TrainedCnf {
        config: config.clone(),
        net,
        normalization: norm,
        losses,
        validation: record,
    })
}
