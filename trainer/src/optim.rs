//! Optimization: parameter sets, Adam and AdamW, learning-rate schedules, gradient
//! clipping and parameter clamping.
//!
//! Parameters are host arrays in f64 (the master copy; networks evaluate them at
//! whatever precision the policy asks for). Every update is a pure function of the
//! parameters, the gradients and the optimizer state, so a run resumed from a
//! checkpoint continues bitwise as the uninterrupted run would.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Named parameter arrays (row-major), the optimizer's view of a model.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamSet {
    /// Parameter names (PyTorch-style, as in artifacts).
    pub names: Vec<String>,
    /// Shapes.
    pub shapes: Vec<Vec<usize>>,
    /// Values, one flat row-major array per parameter.
    pub values: Vec<Vec<f64>>,
}

impl ParamSet {
    /// An empty set.
    pub fn new() -> Self {
        ParamSet {
            names: Vec::new(),
            shapes: Vec::new(),
            values: Vec::new(),
        }
    }

    /// Appends a parameter; its length must match its shape.
    pub fn push(
        &mut self,
        name: impl Into<String>,
        shape: Vec<usize>,
        values: Vec<f64>,
    ) -> Result<()> {
        let name = name.into();
        let n: usize = shape.iter().product();
        if n != values.len() {
            return Err(Error::InvalidArgument(format!(
                "parameter `{name}`: shape {shape:?} holds {n} values, got {}",
                values.len()
            )));
        }
        if self.names.contains(&name) {
            return Err(Error::InvalidArgument(format!(
                "parameter `{name}` given twice"
            )));
        }
        self.names.push(name);
        self.shapes.push(shape);
        self.values.push(values);
        Ok(())
    }

    /// Number of parameter arrays.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether there are no parameters.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Total number of scalar parameters.
    pub fn count(&self) -> usize {
        self.values.iter().map(Vec::len).sum()
    }

    /// Index of a parameter by name.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    /// Zeros shaped like the parameters (a gradient buffer).
    pub fn zeros_like(&self) -> Vec<Vec<f64>> {
        self.values.iter().map(|v| vec![0.0; v.len()]).collect()
    }

    /// Checks that `grads` has one array per parameter of the right length.
    pub fn check_grads(&self, grads: &[Vec<f64>]) -> Result<()> {
        if grads.len() != self.values.len() {
            return Err(Error::Length {
                what: "gradient arrays",
                found: grads.len(),
                expected: self.values.len(),
            });
        }
        for (i, (g, p)) in grads.iter().zip(&self.values).enumerate() {
            if g.len() != p.len() {
                return Err(Error::InvalidArgument(format!(
                    "gradient of `{}` has {} values, the parameter {}",
                    self.names[i],
                    g.len(),
                    p.len()
                )));
            }
        }
        Ok(())
    }
}

impl Default for ParamSet {
    fn default() -> Self {
        Self::new()
    }
}

/// Settings of Adam / AdamW.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdamConfig {
    /// Learning rate (the schedule's base rate).
    pub lr: f64,
    /// First-moment decay β₁.
    pub beta1: f64,
    /// Second-moment decay β₂.
    pub beta2: f64,
    /// ε added to √v̂.
    pub eps: f64,
    /// Weight decay λ: added to the gradient (Adam, L2) or applied to the parameters
    /// directly, θ ← θ − lr·λ·θ (AdamW, decoupled).
    pub weight_decay: f64,
    /// Decoupled weight decay (AdamW, Loshchilov & Hutter) instead of L2.
    pub decoupled: bool,
}

impl AdamConfig {
    /// Adam with PyTorch's defaults (β = (0.9, 0.999), ε = 1e-8, no decay).
    pub fn adam(lr: f64) -> Self {
        AdamConfig {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled: false,
        }
    }

    /// AdamW with PyTorch's defaults (weight decay 0.01 unless set).
    pub fn adamw(lr: f64, weight_decay: f64) -> Self {
        AdamConfig {
            weight_decay,
            decoupled: true,
            ..Self::adam(lr)
        }
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        let ok = self.lr.is_finite()
            && self.lr > 0.0
            && (0.0..1.0).contains(&self.beta1)
            && (0.0..1.0).contains(&self.beta2)
            && self.eps.is_finite()
            && self.eps > 0.0
            && self.weight_decay.is_finite()
            && self.weight_decay >= 0.0;
        if ok {
            Ok(())
        } else {
            Err(Error::InvalidArgument(format!(
                "Adam settings out of range: {self:?} (need lr > 0, 0 ≤ β < 1, ε > 0, decay ≥ 0)"
            )))
        }
    }
}

/// Adam's state: step count and first and second moments of every parameter.
#[derive(Clone, Debug, PartialEq)]
pub struct AdamState {
    /// Number of updates taken.
    pub step: u64,
    /// First moments.
    pub m: Vec<Vec<f64>>,
    /// Second moments.
    pub v: Vec<Vec<f64>>,
}

/// The Adam / AdamW optimizer (Kingma & Ba 2015; Loshchilov & Hutter 2019), with
/// PyTorch's update rule, so runs compare step for step.
#[derive(Clone, Debug)]
pub struct Adam {
    config: AdamConfig,
    state: AdamState,
}

impl Adam {
    /// An optimizer for `params` (moments start at zero).
    pub fn new(config: AdamConfig, params: &ParamSet) -> Result<Self> {
        config.validate()?;
        Ok(Adam {
            config,
            state: AdamState {
                step: 0,
                m: params.zeros_like(),
                v: params.zeros_like(),
            },
        })
    }

    /// Restores an optimizer from a saved state (checked against `params`).
    pub fn from_state(config: AdamConfig, state: AdamState, params: &ParamSet) -> Result<Self> {
        config.validate()?;
        params.check_grads(&state.m)?;
        params.check_grads(&state.v)?;
        Ok(Adam { config, state })
    }

    /// The settings.
    pub fn config(&self) -> &AdamConfig {
        &self.config
    }

    /// The state (for checkpoints).
    pub fn state(&self) -> &AdamState {
        &self.state
    }

    /// One update with learning rate `lr` (from a schedule). Non-finite gradients are an
    /// error and leave parameters and state untouched.
    pub fn step(&mut self, params: &mut ParamSet, grads: &[Vec<f64>], lr: f64) -> Result<()> {
        params.check_grads(grads)?;
        if !(lr.is_finite() && lr >= 0.0) {
            return Err(Error::InvalidArgument(format!("learning rate {lr}")));
        }
        for (i, g) in grads.iter().enumerate() {
            if g.iter().any(|v| !v.is_finite()) {
                return Err(Error::NonFinite(format!(
                    "gradient of `{}`",
                    params.names[i]
                )));
            }
        }
        let c = self.config;
        self.state.step += 1;
        let t = self.state.step as i32;
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2 = 1.0 - c.beta2.powi(t);
        for ((p, g), (m, v)) in params
            .values
            .iter_mut()
            .zip(grads)
            .zip(self.state.m.iter_mut().zip(self.state.v.iter_mut()))
        {
            for k in 0..p.len() {
                let mut gk = g[k];
                if c.weight_decay > 0.0 {
                    if c.decoupled {
                        p[k] *= 1.0 - lr * c.weight_decay;
                    } else {
                        gk += c.weight_decay * p[k];
                    }
                }
                m[k] = c.beta1 * m[k] + (1.0 - c.beta1) * gk;
                v[k] = c.beta2 * v[k] + (1.0 - c.beta2) * gk * gk;
                let denom = (v[k] / bc2).sqrt() + c.eps;
                p[k] -= lr * (m[k] / bc1) / denom;
            }
        }
        Ok(())
    }
}

/// A learning-rate schedule.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Schedule {
    /// The base rate throughout.
    Constant,
    /// Multiply the rate by `factor` every `every` iterations (OT-Flow halves it every
    /// 500).
    Step {
        /// Period in iterations.
        every: u64,
        /// Factor in (0, 1].
        factor: f64,
    },
    /// Multiply the rate by `factor` when the validation metric has not improved by a
    /// relative `threshold` for more than `patience` observations (PyTorch's
    /// ReduceLROnPlateau, mode "min", threshold mode "rel"; unlike PyTorch, the
    /// relative threshold also means "better by that fraction" for negative metrics,
    /// such as a negative log-likelihood below zero).
    Plateau {
        /// Factor in (0, 1).
        factor: f64,
        /// Observations without improvement tolerated.
        patience: u32,
        /// Relative improvement that counts.
        threshold: f64,
        /// Observations to wait after a reduction.
        cooldown: u32,
        /// Lower bound of the rate.
        min_lr: f64,
    },
}

/// The schedule's mutable state (for checkpoints).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerState {
    /// Current rate.
    pub lr: f64,
    /// Best metric seen (plateau).
    pub best: f64,
    /// Observations since the best (plateau).
    pub bad: u32,
    /// Cooldown observations left (plateau).
    pub cooldown_left: u32,
}

/// A schedule with its state.
#[derive(Clone, Debug, PartialEq)]
pub struct Scheduler {
    schedule: Schedule,
    base_lr: f64,
    state: SchedulerState,
}

impl Scheduler {
    /// A scheduler starting at `base_lr`.
    pub fn new(schedule: Schedule, base_lr: f64) -> Result<Self> {
        let bad = |m: &str| Err(Error::InvalidArgument(format!("schedule: {m}")));
        match schedule {
            Schedule::Constant => {}
            Schedule::Step { every, factor } => {
                if every == 0 || !(factor > 0.0 && factor <= 1.0) {
                    return bad("step needs every ≥ 1 and 0 < factor ≤ 1");
                }
            }
            Schedule::Plateau {
                factor,
                threshold,
                min_lr,
                ..
            } => {
                let valid = factor > 0.0 && factor < 1.0 && threshold >= 0.0 && min_lr >= 0.0;
                if !valid {
                    return bad("plateau needs 0 < factor < 1, threshold ≥ 0, min_lr ≥ 0");
                }
            }
        }
        if !(base_lr.is_finite() && base_lr > 0.0) {
            return bad("the base learning rate must be positive");
        }
        Ok(Scheduler {
            schedule,
            base_lr,
            state: SchedulerState {
                lr: base_lr,
                best: f64::INFINITY,
                bad: 0,
                cooldown_left: 0,
            },
        })
    }

    /// Restores a scheduler from its saved state.
    pub fn from_state(schedule: Schedule, base_lr: f64, state: SchedulerState) -> Result<Self> {
        let mut s = Self::new(schedule, base_lr)?;
        s.state = state;
        Ok(s)
    }

    /// The state (for checkpoints).
    pub fn state(&self) -> SchedulerState {
        self.state
    }

    /// The rate for iteration `it` (0-based): the step schedule is a function of the
    /// iteration; the plateau schedule of the observed metrics.
    pub fn lr(&mut self, it: u64) -> f64 {
        if let Schedule::Step { every, factor } = self.schedule {
            self.state.lr = self.base_lr * factor.powi((it / every) as i32);
        }
        self.state.lr
    }

    /// Reports a validation metric (lower is better); the plateau schedule may lower
    /// the rate. Returns whether it did.
    pub fn observe(&mut self, metric: f64) -> bool {
        let Schedule::Plateau {
            factor,
            patience,
            threshold,
            cooldown,
            min_lr,
        } = self.schedule
        else {
            return false;
        };
        let s = &mut self.state;
        if metric.is_finite() && metric < s.best * (1.0 - threshold.copysign(s.best)) {
            s.best = metric;
            s.bad = 0;
        } else {
            s.bad += 1;
        }
        if s.cooldown_left > 0 {
            s.cooldown_left -= 1;
            s.bad = 0;
        }
        if s.bad > patience {
            let new = (s.lr * factor).max(min_lr);
            let reduced = s.lr - new > 1e-12 * s.lr;
            s.lr = new;
            s.cooldown_left = cooldown;
            s.bad = 0;
            return reduced;
        }
        false
    }
}

/// Scales the gradients so that their global Euclidean norm is at most `max_norm`;
/// returns the norm before clipping. Non-finite gradients are an error.
pub fn clip_grad_norm(grads: &mut [Vec<f64>], max_norm: f64) -> Result<f64> {
    if max_norm.is_nan() || max_norm <= 0.0 {
        return Err(Error::InvalidArgument(format!(
            "clip norm {max_norm} must be positive"
        )));
    }
    let norm = grads.iter().flatten().map(|g| g * g).sum::<f64>().sqrt();
    if !norm.is_finite() {
        return Err(Error::NonFinite("gradient (norm)".into()));
    }
    if norm > max_norm {
        let s = max_norm / norm;
        grads.iter_mut().flatten().for_each(|g| *g *= s);
    }
    Ok(norm)
}

/// One optimizer step of a training loop: the gradient's global norm (clipped to
/// `clip_norm` when given), an error naming `what` and the iteration when it is not
/// finite, the schedule's learning rate for iteration `it`, and Adam's update. Returns
/// (norm before clipping, learning rate).
#[allow(clippy::too_many_arguments)]
pub fn optimizer_step(
    adam: &mut Adam,
    scheduler: &mut Scheduler,
    params: &mut ParamSet,
    grads: &mut [Vec<f64>],
    clip_norm: Option<f64>,
    it: u64,
    what: &str,
) -> Result<(f64, f64)> {
    let grad_norm = match clip_norm {
        Some(c) => clip_grad_norm(grads, c)?,
        None => grads.iter().flatten().map(|v| v * v).sum::<f64>().sqrt(),
    };
    if !grad_norm.is_finite() {
        return Err(Error::Numerical(format!(
            "the {what} gradient norm is {grad_norm} at iteration {it}"
        )));
    }
    let lr = scheduler.lr(it);
    adam.step(params, grads, lr)?;
    Ok((grad_norm, lr))
}

/// Whether a training loop validates after `done` of its `iterations` iterations:
/// after the last, and every `every` (0: only after the last).
pub fn validation_due(done: u64, iterations: u64, every: u64) -> bool {
    done == iterations || (every > 0 && done % every == 0)
}

/// An [`Error::Numerical`] "`what` is `value` at iteration `it`" when a training
/// loop's objective `value` is not finite.
pub fn check_objective(value: f64, what: &str, it: u64) -> Result<()> {
    if !value.is_finite() {
        return Err(Error::Numerical(format!(
            "{what} is {value} at iteration {it}"
        )));
    }
    Ok(())
}

/// Bounds for a parameter, applied after every update (e.g. to keep a scale positive).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Clamp {
    /// The parameter's name.
    pub param: String,
    /// Lower bound.
    pub min: f64,
    /// Upper bound.
    pub max: f64,
}

/// Clamps the named parameters into their bounds.
pub fn clamp(params: &mut ParamSet, clamps: &[Clamp]) -> Result<()> {
    for c in clamps {
        if c.min.is_nan() || c.max.is_nan() || c.min > c.max {
            return Err(Error::InvalidArgument(format!(
                "clamp of `{}`: min {} > max {}",
                c.param, c.min, c.max
            )));
        }
        let i = params.index(&c.param).ok_or_else(|| {
            Error::InvalidArgument(format!("clamp names unknown parameter `{}`", c.param))
        })?;
        params.values[i]
            .iter_mut()
            .for_each(|v| *v = v.clamp(c.min, c.max));
    }
    Ok(())
}

/// Checks the settings every training loop shares: a non-empty batch, 1 to
/// [`MAX_STEP`](socflow_runtime::brownian::MAX_STEP) iterations (randomness is keyed by
/// the iteration), valid Adam settings and schedule, and a positive finite clip norm.
pub fn validate_run(
    batch_size: usize,
    iterations: u64,
    optimizer: &AdamConfig,
    schedule: Schedule,
    clip_norm: Option<f64>,
) -> Result<()> {
    use socflow_runtime::brownian::MAX_STEP;
    if batch_size == 0 {
        return Err(Error::InvalidArgument("batch size 0".into()));
    }
    if iterations == 0 || iterations > MAX_STEP {
        return Err(Error::InvalidArgument(format!(
            "iterations {iterations} (must be 1..={MAX_STEP})"
        )));
    }
    optimizer.validate()?;
    Scheduler::new(schedule, optimizer.lr)?;
    if let Some(c) = clip_norm {
        if !(c.is_finite() && c > 0.0) {
            return Err(Error::InvalidArgument(format!(
                "clip norm {c} must be positive and finite"
            )));
        }
    }
    Ok(())
}
