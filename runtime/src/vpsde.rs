//! The variance-preserving SDE of score-based diffusion (Song et al. 2021; MATH.md §4)
//! and its samplers.
//!
//! Forward: dx = −½β(t)x dt + √β(t) dW on t ∈ [0, 1] with the linear schedule
//! β(t) = β_min + t(β_max − β_min) (defaults 0.1, 20), so that
//! x_t | x₀ ~ N(α_t x₀, σ_t² I) with α_t = e^{−½B(t)}, σ_t² = 1 − e^{−B(t)},
//! B(t) = ∫₀ᵗ β. A score network s_θ(x, t) ≈ ∇ₓ log p_t(x) is sampled from
//! x(1) ~ N(0, I) down to t = ε (default 10⁻³, where σ_ε > 0) by
//!
//! - the reverse SDE dx = [−½β(t)x − β(t)s_θ(x, t)] dt + √β(t) dW̄
//!   ([`VpDynamics::ReverseSde`], Euler–Maruyama or stochastic Heun: the noise is
//!   additive, so both discretize the same SDE), or
//! - the probability-flow ODE dx/dt = −½β(t)[x + s_θ(x, t)]
//!   ([`VpDynamics::ProbabilityFlow`], any ODE solver, with log-densities by the exact
//!   divergence of the network).
//!
//! The network's output is the score itself ([`ScoreOutput::Score`]) or a noise
//! prediction ε̂ with s_θ = −ε̂/σ_t ([`ScoreOutput::Noise`], what the trainer writes:
//! the denoising loss |σ_t s_θ + ε|² is then |ε − ε̂|², well scaled at every t). Either
//! way both fields are a(t)x + c(t)·net(x, t) with scalar coefficients, so their block
//! path is the network's block path (GEMMs) plus one axpy, and their divergence is
//! a(t)d + c(t)·tr(∂net/∂x).
//!
//! A model file records its schedule in the card's optional `vpsde` entry
//! ([`VpSde`]); a score model without one uses [`VpSde::default`].

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::artifact::Normalization;
use crate::error::{check_len, Error, Result};
use crate::field::Field;
use crate::ode::OdeOptions;
use crate::sampler::{Method, Sampler, SamplerOptions};
use crate::sde::{Diffusion, ScalarDiffusion, SdeOptions};
use crate::Real;

/// What a score model's network outputs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScoreOutput {
    /// The score s_θ(x, t) itself.
    #[default]
    Score,
    /// A noise prediction ε̂(x, t); the score is −ε̂/σ_t.
    Noise,
}

impl ScoreOutput {
    /// The name as written in model cards.
    pub fn name(self) -> &'static str {
        match self {
            ScoreOutput::Score => "score",
            ScoreOutput::Noise => "noise",
        }
    }
}

/// A VP-SDE: its β schedule, the end ε of sampling and the network's output, as the
/// model card's `vpsde` entry stores it (JSON
/// `{"beta_min":0.1,"beta_max":20.0,"eps":0.001,"output":"noise"}`; every key is
/// optional, unknown keys are errors).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VpSde {
    /// β(0) ≥ 0.
    pub beta_min: f64,
    /// β(1) ≥ β_min, > 0.
    pub beta_max: f64,
    /// Sampling ends at t = ε (0 < ε < 1).
    pub eps: f64,
    /// What the network outputs.
    pub output: ScoreOutput,
}

impl Default for VpSde {
    fn default() -> Self {
        VpSde {
            beta_min: 0.1,
            beta_max: 20.0,
            eps: 1e-3,
            output: ScoreOutput::Score,
        }
    }
}

impl VpSde {
    /// Checks finite values, 0 ≤ β_min ≤ β_max, β_max > 0 and 0 < ε < 1
    /// ([`Error::InvalidArgument`]).
    pub fn validate(&self) -> Result<()> {
        let (lo, hi, eps) = (self.beta_min, self.beta_max, self.eps);
        if !(lo.is_finite() && hi.is_finite() && lo >= 0.0 && hi >= lo && hi > 0.0) {
            return Err(Error::InvalidArgument(format!(
                "VP-SDE schedule beta_min = {lo}, beta_max = {hi}: need 0 <= beta_min <= \
                 beta_max, beta_max > 0, both finite"
            )));
        }
        if !(eps > 0.0 && eps < 1.0) {
            return Err(Error::InvalidArgument(format!(
                "VP-SDE eps = {eps}: sampling ends at a time 0 < eps < 1"
            )));
        }
        Ok(())
    }

    /// β(t) = β_min + t(β_max − β_min).
    pub fn beta(&self, t: f64) -> f64 {
        self.beta_min + t * (self.beta_max - self.beta_min)
    }

    /// B(t) = ∫₀ᵗ β = β_min t + ½t²(β_max − β_min).
    pub fn integral(&self, t: f64) -> f64 {
        self.beta_min * t + 0.5 * t * t * (self.beta_max - self.beta_min)
    }

    /// α_t = e^{−½B(t)}: the mean of x_t | x₀ is α_t x₀.
    pub fn alpha(&self, t: f64) -> f64 {
        (-0.5 * self.integral(t)).exp()
    }

    /// σ_t = √(1 − e^{−B(t)}): the standard deviation of x_t | x₀ (computed with
    /// `expm1`, accurate for small t).
    pub fn sigma(&self, t: f64) -> f64 {
        (-(-self.integral(t)).exp_m1()).sqrt()
    }

    /// The factor k(t) with s_θ = k(t)·net(x, t): 1 for a score output, −1/σ_t for a
    /// noise output.
    pub fn score_factor(&self, t: f64) -> f64 {
        match self.output {
            ScoreOutput::Score => 1.0,
            ScoreOutput::Noise => -1.0 / self.sigma(t),
        }
    }
}

/// Which of the two sampling dynamics a [`VpSdeField`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VpDynamics {
    /// The reverse SDE's drift −½β(t)x − β(t)s_θ(x, t) (its diffusion is √β(t)).
    ReverseSde,
    /// The probability-flow ODE's field −½β(t)[x + s_θ(x, t)].
    ProbabilityFlow,
}

/// The reverse-SDE drift or the probability-flow field of a VP-SDE over a network
/// (a [`Field`] whose output is the score or the noise, per [`VpSde::output`]).
#[derive(Clone)]
pub struct VpSdeField<T: Real> {
    net: Arc<dyn Field<T>>,
    sde: VpSde,
    dynamics: VpDynamics,
}

impl<T: Real> VpSdeField<T> {
    /// The field of `dynamics` over `net` (its schedule checked).
    pub fn new(net: Arc<dyn Field<T>>, sde: VpSde, dynamics: VpDynamics) -> Result<Self> {
        sde.validate()?;
        Ok(VpSdeField { net, sde, dynamics })
    }

    /// The VP-SDE.
    pub fn sde(&self) -> &VpSde {
        &self.sde
    }

    /// Which dynamics it is.
    pub fn dynamics(&self) -> VpDynamics {
        self.dynamics
    }

    /// The coefficients (a, c) of f = a x + c·net at time t.
    fn coefficients(&self, t: T) -> Result<(T, T)> {
        field_coefficients(&self.sde, self.dynamics, t)
    }

    /// v ← a x + c v, row by row with each row's time.
    fn combine(&self, t: &[T], x: &[T], v: &mut [T], mut div: Option<&mut [T]>) -> Result<()> {
        let d = self.net.dim();
        for (r, ((ti, xi), vi)) in t
            .iter()
            .zip(x.chunks_exact(d))
            .zip(v.chunks_exact_mut(d))
            .enumerate()
        {
            let (a, c) = self.coefficients(*ti)?;
            for (vj, xj) in vi.iter_mut().zip(xi) {
                *vj = a * *xj + c * *vj;
            }
            if let Some(dv) = div.as_deref_mut() {
                dv[r] = a * T::of(d as f64) + c * dv[r];
            }
        }
        Ok(())
    }
}

impl<T: Real> Field<T> for VpSdeField<T> {
    fn dim(&self) -> usize {
        self.net.dim()
    }

    fn scratch_len(&self) -> usize {
        self.net.scratch_len()
    }

    fn eval(&self, t: T, x: &[T], v: &mut [T], scratch: &mut [T]) -> Result<()> {
        self.net.eval(t, x, v, scratch)?;
        self.combine(std::slice::from_ref(&t), x, v, None)
    }

    fn eval_div(&self, t: T, x: &[T], v: &mut [T], scratch: &mut [T]) -> Result<T> {
        let mut div = [self.net.eval_div(t, x, v, scratch)?];
        self.combine(std::slice::from_ref(&t), x, v, Some(&mut div))?;
        Ok(div[0])
    }

    fn jvp_scratch_len(&self) -> usize {
        self.net.jvp_scratch_len()
    }

    fn eval_jvp(
        &self,
        t: T,
        x: &[T],
        dx: &[T],
        v: &mut [T],
        jv: &mut [T],
        scratch: &mut [T],
    ) -> Result<()> {
        self.net.eval_jvp(t, x, dx, v, jv, scratch)?;
        self.combine(std::slice::from_ref(&t), x, v, None)?;
        // (∂f/∂x)·u = a u + c (∂net/∂x)·u: the same combination with u for x.
        self.combine(std::slice::from_ref(&t), dx, jv, None)
    }

    fn preferred_block_rows(&self) -> usize {
        self.net.preferred_block_rows()
    }

    fn block_scratch_len(&self, rows: usize) -> usize {
        self.net.block_scratch_len(rows)
    }

    fn eval_block(&self, t: &[T], x: &[T], v: &mut [T], scratch: &mut [T]) -> Result<()> {
        self.net.eval_block(t, x, v, scratch)?;
        self.combine(t, x, v, None)
    }

    fn eval_block_div(
        &self,
        t: &[T],
        x: &[T],
        v: &mut [T],
        div: &mut [T],
        scratch: &mut [T],
    ) -> Result<()> {
        self.net.eval_block_div(t, x, v, div, scratch)?;
        check_len("divergence buffer", div.len(), t.len())?;
        self.combine(t, x, v, Some(div))
    }

    fn block_jvp_scratch_len(&self, rows: usize) -> usize {
        self.net.block_jvp_scratch_len(rows)
    }

    fn eval_block_jvp(
        &self,
        t: &[T],
        x: &[T],
        dx: &[T],
        v: &mut [T],
        jv: &mut [T],
        scratch: &mut [T],
    ) -> Result<()> {
        self.net.eval_block_jvp(t, x, dx, v, jv, scratch)?;
        self.combine(t, x, v, None)?;
        self.combine(t, dx, jv, None)
    }
}

/// The coefficients (a, c) of a VP-SDE field f = a x + c·net at time t, computed in f64
/// and rounded to `T` (shared by the CPU field and the GPU backend, so both see the
/// same numbers). Errors where the score factor is not finite.
pub(crate) fn field_coefficients<T: Real>(
    sde: &VpSde,
    dynamics: VpDynamics,
    t: T,
) -> Result<(T, T)> {
    let t = t.f64();
    let beta = sde.beta(t);
    let weight = match dynamics {
        VpDynamics::ReverseSde => -beta,
        VpDynamics::ProbabilityFlow => -0.5 * beta,
    };
    let c = weight * sde.score_factor(t);
    if !c.is_finite() {
        return Err(Error::InvalidArgument(format!(
            "VP-SDE field at t = {t}: the score factor is not finite (sigma_t = {}); \
             a noise-predicting network is evaluated only where sigma_t > 0",
            sde.sigma(t)
        )));
    }
    Ok((T::of(-0.5 * beta), T::of(c)))
}

/// How a VP-SDE model is sampled.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum VpSampling<T> {
    /// The reverse SDE with a fixed-step scheme (Euler–Maruyama by default).
    ReverseSde(SdeOptions),
    /// The probability-flow ODE (fixed steps or adaptive Dopri5).
    ProbabilityFlow(OdeOptions<T>),
}

/// A score network with its VP-SDE: what the samplers need ([`Model::vpsde`]
/// returns one for a score model).
///
/// [`Model::vpsde`]: crate::model::Model::vpsde
#[derive(Clone)]
pub struct VpSdeModel<T: Real> {
    net: Arc<dyn Field<T>>,
    sde: VpSde,
    t_prior: f64,
    normalization: Option<Normalization>,
}

impl<T: Real> VpSdeModel<T> {
    /// A score network `net` (output per `sde.output`) sampled from x(`t_prior`) ~
    /// N(0, I) down to `sde.eps` (usually `t_prior` = 1), mapping samples to data
    /// coordinates with `normalization` when given.
    ///
    /// Errors: [`Error::InvalidArgument`] for a bad schedule, a `t_prior` not above ε
    /// or not finite, or a normalization of another dimension.
    pub fn new(
        net: Arc<dyn Field<T>>,
        sde: VpSde,
        t_prior: f64,
        normalization: Option<Normalization>,
    ) -> Result<Self> {
        sde.validate()?;
        if !(t_prior.is_finite() && t_prior > sde.eps) {
            return Err(Error::InvalidArgument(format!(
                "VP-SDE sampling from t = {t_prior} to eps = {}: need a finite prior time above eps",
                sde.eps
            )));
        }
        if let Some(n) = &normalization {
            check_len("normalization", n.dim(), net.dim())?;
        }
        Ok(VpSdeModel {
            net,
            sde,
            t_prior,
            normalization,
        })
    }

    /// State dimension.
    pub fn dim(&self) -> usize {
        self.net.dim()
    }

    /// The VP-SDE.
    pub fn sde(&self) -> &VpSde {
        &self.sde
    }

    /// The score network (raw output, per [`VpSde::output`]).
    pub fn network(&self) -> &Arc<dyn Field<T>> {
        &self.net
    }

    /// The time the prior N(0, I) is drawn at.
    pub fn t_prior(&self) -> f64 {
        self.t_prior
    }

    /// The data normalization samples are mapped through.
    pub fn normalization(&self) -> Option<&Normalization> {
        self.normalization.as_ref()
    }

    /// The reverse SDE's drift −½β(t)x − β(t)s_θ(x, t).
    pub fn reverse_drift(&self) -> Arc<dyn Field<T>> {
        Arc::new(VpSdeField {
            net: Arc::clone(&self.net),
            sde: self.sde,
            dynamics: VpDynamics::ReverseSde,
        })
    }

    /// The probability-flow ODE's field −½β(t)[x + s_θ(x, t)].
    pub fn probability_flow(&self) -> Arc<dyn Field<T>> {
        Arc::new(VpSdeField {
            net: Arc::clone(&self.net),
            sde: self.sde,
            dynamics: VpDynamics::ProbabilityFlow,
        })
    }

    /// The reverse SDE's diffusion √β(t) in every component.
    pub fn diffusion(&self) -> Arc<dyn Diffusion<T>> {
        let sde = self.sde;
        Arc::new(ScalarDiffusion::new(self.dim(), move |t: T| {
            T::of(sde.beta(t.f64()).sqrt())
        }))
    }

    /// Sampler options for `how` with seed `seed` and the model's normalization; set
    /// `log_density` (probability flow only), `trajectory` or `block_rows` on them
    /// before [`sampler`](VpSdeModel::sampler).
    pub fn sampler_options(&self, how: VpSampling<T>, seed: u64) -> SamplerOptions<T> {
        let mut o = match how {
            VpSampling::ReverseSde(opts) => SamplerOptions::sde(opts, self.diffusion(), seed),
            VpSampling::ProbabilityFlow(opts) => SamplerOptions::ode(opts, seed),
        };
        o.normalization = self.normalization.clone();
        o
    }

    /// A sampler from t_prior to ε: with [`Method::Ode`] options it integrates the
    /// probability-flow ODE, with [`Method::Sde`] options the reverse SDE's drift
    /// (the options' diffusion must be the VP-SDE's, as from
    /// [`sampler_options`](VpSdeModel::sampler_options); another one is an
    /// [`Error::InvalidArgument`] only when its dimension differs).
    pub fn sampler(&self, opts: SamplerOptions<T>) -> Result<Sampler<T>> {
        let field = match &opts.method {
            Method::Ode(_) => self.probability_flow(),
            Method::Sde { .. } => self.reverse_drift(),
        };
        Sampler::new(field, T::of(self.t_prior), T::of(self.sde.eps), opts)
    }
}
