//! Log-likelihood of data points under any exported density model.
//!
//! A density model carries data at a time t0 to the standard normal prior at a time
//! t1 along an ODE dz/dt = f(t, z) ([`DensityFlow`], the one place that knows which
//! field and interval each kind of model has):
//!
//! - an MLP velocity, or an OT-Flow potential whose field is −∇ₓΦ, over the model's
//!   time interval [t0, t1];
//! - a score model (VP-SDE diffusion, MATH.md §4): its probability-flow ODE
//!   f = −½β(t)[z + s_θ(z, t)] (Song et al. 2021) from t0 = ε (the end of sampling,
//!   the data end) to t1 = the prior's time. The result is the density at ε of the
//!   flow's samples from the N(0, I) prior at t1 (what the sampler draws), which is
//!   the forward process's p_ε to the extent that its marginal at t1 is N(0, I): for
//!   data of mean m the two differ by about α_{t1} mᵀz, α_{t1} = e^{−B(t1)/2}
//!   ≈ 0.0066 for the default schedule.
//!
//! For a data point x the runtime's ODE driver ([`solve_block`]) integrates
//!
//! ```text
//! dz/dt = f(t, z),  dl/dt = tr ∂f/∂z,   z(t0) = (x − mean)/std,  l(t0) = 0
//! log p(x) = −½‖z(t1)‖² − (d/2) ln 2π + l(t1) − Σ ln std
//! ```
//!
//! (the change of variables of MATH.md §2 plus the normalization recorded in the
//! artifact), with the exact divergence of the field ([`Field::eval_block_div`]:
//! the MLP's forward-mode Jacobian, the OT-Flow potential's closed-form Laplacian, a
//! score model's −½β(t)[d + k(t) tr ∂net/∂z]) and any runtime ODE method: fixed RK4
//! steps or adaptive Dopri5 (where l is part of the error norm, so the log-density
//! meets the tolerances too). This is the inverse of the runtime sampler's
//! log-density: sampling integrates the same field from t1 back to t0.
//!
//! # Hutchinson's estimator
//!
//! The exact trace costs about d forward passes per evaluation (the MLP's forward-mode
//! Jacobian; the OT-Flow Laplacian's O(m²d) sweep). With [`Divergence::Hutchinson`],
//! l' is instead the unbiased estimate (1/K) Σ_k ε_kᵀ(∂f/∂z)ε_k from K probes, each a
//! Jacobian–vector product ([`Field::eval_block_jvp`]: about one more forward pass),
//! and log p(x) is an unbiased estimate whose variance falls as 1/K. As
//! in FFJORD the probes of a data point are drawn once and held fixed for its whole
//! solve (every step and stage), so l(t1) is the integral of one smooth function and
//! adaptive steps see no noise. The probe k of the data point with index i is drawn
//! from the runtime's counter-based generator at (seed, [`PROBE_STREAM`], sample =
//! `first_sample` + i, step = k): Rademacher signs (the top bit of the first words, as
//! [`crate::cnf::hutchinson_noise`]) or standard normals. A result depends only on the
//! seed and the data point, never on the thread count or the block size.
//!
//! Under fixed steps a block's rows are solved together (the field's block JVP);
//! under adaptive steps each data point is solved alone (the solver reorders a block's
//! rows as they finish, and a probe must follow its row), through the single-state JVP.
//!
//! The exact trace is the default. The mean NLL over data points reported with a
//! Hutchinson log-likelihood has a standard error that contains both the spread of the
//! data and the probes' noise.
//!
//! Blocks of rows are solved in parallel (rayon); every row is independent of the
//! block it is solved in, so the result does not depend on the thread count.

use std::sync::Arc;

use rayon::prelude::*;
use socflow_runtime::artifact::{ModelKind, Normalization};
use socflow_runtime::brownian::{Brownian, Stream, MAX_SAMPLE};
use socflow_runtime::field::Field;
use socflow_runtime::model::Model;
use socflow_runtime::ode::{solve_block, OdeOptions, OdeWorkspace, StepSize};
use socflow_runtime::vpsde::VpSdeModel;
use socflow_runtime::Real;

use crate::cnf::Noise;
use crate::data::rng::{Draws, FIRST_FREE_AFTER_DATA};
use crate::error::{check_len, Error, Result};

/// Stream of the Hutchinson probes of [`log_likelihood`]: 32 after the data streams
/// (the MLP initialization takes +0, flow matching +1 to +4, OT-Flow's initialization
/// and the CNF's training probes +16), so that the probes of an evaluation never share
/// numbers with those of training.
pub const PROBE_STREAM: Stream = Stream(FIRST_FREE_AFTER_DATA.0 + 32);

/// Most probes per data point [`Hutchinson`] accepts. A block's probes are held for its
/// whole solve (K × rows × d values), and K probes cost about K forward passes per
/// evaluation against the exact trace's d (without noise).
pub const MAX_PROBES: usize = 1 << 10;

/// ln 2π.
const LN_2PI: f64 = 1.837_877_066_409_345_3;

/// Settings of Hutchinson's divergence estimate (module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hutchinson {
    /// Probes per data point K (1..=[`MAX_PROBES`]), averaged: the estimate's variance
    /// falls as 1/K.
    pub probes: usize,
    /// The probes' distribution (Rademacher has the smaller variance).
    pub noise: Noise,
    /// Seed of the probes.
    pub seed: u64,
    /// Generator index of the first data point: evaluating a large set in pieces with
    /// `first_sample` = the piece's offset gives the numbers of one whole run.
    pub first_sample: u64,
}

impl Hutchinson {
    /// `probes` Rademacher probes per data point under `seed`, from sample index 0.
    pub fn new(probes: usize, seed: u64) -> Self {
        Hutchinson {
            probes,
            noise: Noise::Rademacher,
            seed,
            first_sample: 0,
        }
    }

    /// Checks the settings for `n` data points: [`Error::InvalidArgument`] for no
    /// probes or more than [`MAX_PROBES`], or sample indices beyond the generator's.
    pub fn validate(&self, n: usize) -> Result<()> {
        if self.probes == 0 || self.probes > MAX_PROBES {
            return Err(Error::InvalidArgument(format!(
                "Hutchinson probes per data point: {} (must be 1..={MAX_PROBES})",
                self.probes
            )));
        }
        let last = (n as u64)
            .checked_sub(1)
            .and_then(|v| v.checked_add(self.first_sample));
        if last.is_none_or(|v| v > MAX_SAMPLE) {
            return Err(Error::InvalidArgument(format!(
                "Hutchinson probes of {n} data points from sample index {} exceed the \
                 generator's {MAX_SAMPLE}",
                self.first_sample
            )));
        }
        Ok(())
    }
}

/// How [`log_likelihood`] computes the divergence tr ∂f/∂z.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Divergence {
    /// Exactly (the default).
    #[default]
    Exact,
    /// Hutchinson's unbiased estimate.
    Hutchinson(Hutchinson),
}

/// Settings of [`log_likelihood`].
#[derive(Clone, Debug)]
pub struct LikelihoodOptions<T> {
    /// The ODE method and step-size control (fixed steps or adaptive Dopri5).
    pub ode: OdeOptions<T>,
    /// Rows per block (0: the field's preferred block size).
    pub block_rows: usize,
    /// Exact divergence or Hutchinson's estimate.
    pub divergence: Divergence,
}

impl<T: Real> LikelihoodOptions<T> {
    /// `opts` with the field's preferred block size and the exact divergence.
    pub fn new(ode: OdeOptions<T>) -> Self {
        LikelihoodOptions {
            ode,
            block_rows: 0,
            divergence: Divergence::Exact,
        }
    }

    /// These options with Hutchinson's estimate instead of the exact divergence.
    pub fn with_hutchinson(mut self, h: Hutchinson) -> Self {
        self.divergence = Divergence::Hutchinson(h);
        self
    }
}

/// The flow whose change of variables gives a model's density (module
/// documentation): a field f that carries model coordinates from the data end t0 to
/// the standard normal prior at t1, with the normalization from data to model
/// coordinates.
#[derive(Clone)]
pub struct DensityFlow<T: Real> {
    field: Arc<dyn Field<T>>,
    t0: T,
    t1: T,
    normalization: Option<Normalization>,
}

impl<T: Real> std::fmt::Debug for DensityFlow<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DensityFlow")
            .field("dim", &self.field.dim())
            .field("t0", &self.t0.f64())
            .field("t1", &self.t1.f64())
            .field("normalization", &self.normalization)
            .finish()
    }
}

impl<T: Real> DensityFlow<T> {
    /// The flow of `field` from the data end `t0` to the prior end `t1`, data mapped to
    /// model coordinates by `normalization` when given.
    ///
    /// Errors: [`Error::InvalidArgument`] for times that are not finite or are equal,
    /// or a normalization of another dimension than the field's.
    pub fn new(
        field: Arc<dyn Field<T>>,
        t0: T,
        t1: T,
        normalization: Option<Normalization>,
    ) -> Result<Self> {
        let (a, b) = (t0.f64(), t1.f64());
        if !(a.is_finite() && b.is_finite() && a != b) {
            return Err(Error::InvalidArgument(format!(
                "density flow from t0 = {a} to t1 = {b}: the times must be finite and differ"
            )));
        }
        if let Some(nm) = &normalization {
            if nm.dim() != field.dim() {
                return Err(Error::InvalidArgument(format!(
                    "density flow: a normalization of dimension {} for a field of dimension {}",
                    nm.dim(),
                    field.dim()
                )));
            }
        }
        Ok(DensityFlow {
            field,
            t0,
            t1,
            normalization,
        })
    }

    /// The density flow of a loaded model: for a score model its VP-SDE's
    /// ([`DensityFlow::of_vpsde`]), for any other its field ([`Model::field`]: the
    /// velocity, or −∇ₓΦ of a potential) over its time interval; the normalization is
    /// the card's.
    ///
    /// Errors: the runtime's (a score model with a bad VP-SDE entry).
    pub fn of_model(model: &Model<T>) -> Result<Self> {
        if model.kind() == ModelKind::Score {
            return Self::of_vpsde(&model.vpsde()?);
        }
        let (t0, t1) = model.time_interval();
        Self::new(
            model.field()?,
            t0,
            t1,
            model.artifact().card.normalization.clone(),
        )
    }

    /// The probability-flow ODE of a score network with its VP-SDE
    /// ([`VpSdeModel::probability_flow`]), from ε (the data end) to the prior's time
    /// [`VpSdeModel::t_prior`], with the model's normalization.
    ///
    /// Errors: none for a valid [`VpSdeModel`] (its constructor checks the same
    /// conditions as [`DensityFlow::new`]).
    pub fn of_vpsde(vp: &VpSdeModel<T>) -> Result<Self> {
        Self::new(
            vp.probability_flow(),
            T::of(vp.sde().eps),
            T::of(vp.t_prior()),
            vp.normalization().cloned(),
        )
    }

    /// State dimension d.
    pub fn dim(&self) -> usize {
        self.field.dim()
    }

    /// The field f.
    pub fn field(&self) -> &Arc<dyn Field<T>> {
        &self.field
    }

    /// (t0, t1): data at t0, the prior N(0, I) at t1.
    pub fn interval(&self) -> (T, T) {
        (self.t0, self.t1)
    }

    /// The map from data to model coordinates, if any.
    pub fn normalization(&self) -> Option<&Normalization> {
        self.normalization.as_ref()
    }
}

/// The log-density log p(x) of each of the `n` data points `x` (row-major n × d, data
/// coordinates) under `model` (module documentation), in f64: [`flow_log_likelihood`]
/// of the model's [`DensityFlow`] (velocity, potential or score model).
///
/// With [`Divergence::Hutchinson`] each value is an unbiased estimate (module
/// documentation), reproducible bit for bit from its seed.
///
/// Errors: [`flow_log_likelihood`]'s, and the runtime's for a model without a density
/// flow ([`DensityFlow::of_model`]).
pub fn log_likelihood<T: Real>(
    model: &Model<T>,
    x: &[f64],
    n: usize,
    opts: &LikelihoodOptions<T>,
) -> Result<Vec<f64>> {
    flow_log_likelihood(&DensityFlow::of_model(model)?, x, n, opts)
}

/// The log-density log p(x) of each of the `n` data points `x` (row-major n × d, data
/// coordinates) under the density of `flow` (module documentation), in f64.
///
/// Errors: [`Error::Length`] when `x` is not n × d; [`Error::NonFinite`] for a
/// non-finite coordinate; [`Error::InvalidArgument`] for n = 0 or bad Hutchinson
/// settings ([`Hutchinson::validate`]); the runtime's errors (bad ODE options, a
/// failed adaptive solve, a field without a Jacobian–vector product under
/// Hutchinson).
pub fn flow_log_likelihood<T: Real>(
    flow: &DensityFlow<T>,
    x: &[f64],
    n: usize,
    opts: &LikelihoodOptions<T>,
) -> Result<Vec<f64>> {
    let d = flow.dim();
    if n == 0 {
        return Err(Error::InvalidArgument(
            "log-likelihood of no data points".into(),
        ));
    }
    check_len("data points", x.len(), n * d)?;
    if x.iter().any(|v| !v.is_finite()) {
        return Err(Error::NonFinite("data points".into()));
    }
    opts.ode.validate()?;
    if let Divergence::Hutchinson(h) = &opts.divergence {
        h.validate(n)?;
    }
    let field = &flow.field;
    let mut xm = x.to_vec();
    if let Some(nm) = &flow.normalization {
        nm.to_model(&mut xm)?;
    }
    let shift = flow.normalization.as_ref().map_or(0.0, |nm| nm.log_det());
    let mut z: Vec<T> = xm.iter().map(|v| T::of(*v)).collect();
    let mut logdet = vec![T::zero(); n];
    let rows = if opts.block_rows > 0 {
        opts.block_rows
    } else {
        field.preferred_block_rows().max(1)
    };
    let (t0, t1) = flow.interval();
    z.par_chunks_mut(rows * d)
        .zip(logdet.par_chunks_mut(rows))
        .enumerate()
        .map(|(b, (zb, lb))| -> Result<()> {
            match &opts.divergence {
                Divergence::Exact => {
                    let mut ws = OdeWorkspace::for_field(&**field, lb.len());
                    solve_block(&**field, &opts.ode, t0, t1, zb, Some(lb), None, &mut ws)?;
                }
                Divergence::Hutchinson(h) => {
                    solve_hutchinson(&**field, h, (b * rows) as u64, &opts.ode, t0, t1, zb, lb)?
                }
            }
            Ok(())
        })
        .collect::<Result<Vec<()>>>()?;
    let half_d_ln2pi = 0.5 * d as f64 * LN_2PI;
    Ok(z.chunks_exact(d)
        .zip(&logdet)
        .map(|(zr, l)| {
            let sq: f64 = zr.iter().map(|v| v.f64() * v.f64()).sum();
            -0.5 * sq - half_d_ln2pi + l.f64() - shift
        })
        .collect())
}

/// The mean negative log-likelihood of the `n` points `x` under `model`
/// ([`log_likelihood`]'s errors).
pub fn mean_nll<T: Real>(
    model: &Model<T>,
    x: &[f64],
    n: usize,
    opts: &LikelihoodOptions<T>,
) -> Result<f64> {
    let lp = log_likelihood(model, x, n, opts)?;
    Ok(-lp.iter().sum::<f64>() / n as f64)
}

/// Draws the K probes of the `rows` data points from index `first` (generator sample
/// `h.first_sample + first`), laid out probe-major: probe k of row i at
/// `[(k·rows + i)·d ..][..d]`, so each probe's block is contiguous.
fn draw_probes<T: Real>(h: &Hutchinson, first: u64, rows: usize, d: usize) -> Result<Vec<T>> {
    let mut out = vec![T::zero(); h.probes * rows * d];
    let gen = Brownian::new(h.seed);
    for (j, p) in out.chunks_exact_mut(d).enumerate() {
        let (k, i) = (j / rows, j % rows);
        let sample = h.first_sample + first + i as u64;
        match h.noise {
            Noise::Gaussian => gen.stream_normals(PROBE_STREAM, sample, k as u64, p)?,
            Noise::Rademacher => {
                let mut draws = Draws::new(h.seed, PROBE_STREAM, sample, k as u64)?;
                for v in p.iter_mut() {
                    *v = if draws.next_u64() >> 63 == 1 {
                        T::one()
                    } else {
                        -T::one()
                    };
                }
            }
        }
    }
    Ok(out)
}

/// Solves one block of rows (data points `first..`) with Hutchinson's estimate:
/// together under fixed steps, one row at a time under adaptive steps (module
/// documentation).
#[allow(clippy::too_many_arguments)] // private: a block solve's natural arguments
fn solve_hutchinson<T: Real>(
    field: &dyn Field<T>,
    h: &Hutchinson,
    first: u64,
    ode: &OdeOptions<T>,
    t0: T,
    t1: T,
    zb: &mut [T],
    lb: &mut [T],
) -> Result<()> {
    let (d, rows) = (field.dim(), lb.len());
    if !matches!(ode.step_size, StepSize::Adaptive(_)) {
        let probes = draw_probes::<T>(h, first, rows, d)?;
        let f = Probed::new(field, &probes, rows, false);
        let mut ws = OdeWorkspace::for_field(&f, rows);
        solve_block(&f, ode, t0, t1, zb, Some(lb), None, &mut ws)?;
        return Ok(());
    }
    let mut ws: Option<OdeWorkspace<T>> = None;
    for (i, (zr, lr)) in zb
        .chunks_exact_mut(d)
        .zip(lb.chunks_exact_mut(1))
        .enumerate()
    {
        let at = first + i as u64;
        let probes = draw_probes::<T>(h, at, 1, d)?;
        let f = Probed::new(field, &probes, 1, true);
        let ws = ws.get_or_insert_with(|| OdeWorkspace::for_field(&f, 1));
        solve_block(&f, ode, t0, t1, zr, Some(lr), None, ws).map_err(|e| match e {
            // The solve is of one row: name the data point instead of "row 0".
            socflow_runtime::Error::Integration(m) => socflow_runtime::Error::Integration(format!(
                "data point {}: {m}",
                h.first_sample + at
            )),
            e => e,
        })?;
    }
    Ok(())
}

/// The model's field with Hutchinson's estimate as its "divergence": for the block of
/// `rows` states it was made for (row i of every call is data point i of the block),
/// `eval_block_div` returns (1/K) Σ_k ε_kᵀ(∂f/∂z)ε_k per row. Only for the solves of
/// [`solve_hutchinson`], which keep every row in place (fixed steps) or solve one row
/// (adaptive steps); any other block size is refused.
struct Probed<'a, T: Real> {
    field: &'a dyn Field<T>,
    /// K × rows × d, probe-major ([`draw_probes`]).
    probes: &'a [T],
    rows: usize,
    k: usize,
    /// Evaluate through the single-state paths (one row: a block path may pad it to
    /// a whole GEMM chunk).
    single: bool,
}

impl<'a, T: Real> Probed<'a, T> {
    fn new(field: &'a dyn Field<T>, probes: &'a [T], rows: usize, single: bool) -> Self {
        let k = probes.len() / (rows * field.dim()).max(1);
        Probed {
            field,
            probes,
            rows,
            k,
            single,
        }
    }

    fn check_rows(&self, rows: usize) -> socflow_runtime::Result<()> {
        if rows == self.rows {
            Ok(())
        } else {
            Err(socflow_runtime::Error::Unsupported(format!(
                "Hutchinson probes made for blocks of {} rows, evaluated on {rows}",
                self.rows
            )))
        }
    }

    fn single_len(&self) -> usize {
        self.field.scratch_len().max(self.field.jvp_scratch_len()) + self.field.dim()
    }
}

impl<T: Real> Field<T> for Probed<'_, T> {
    fn dim(&self) -> usize {
        self.field.dim()
    }

    fn scratch_len(&self) -> usize {
        self.single_len()
    }

    fn eval(&self, t: T, x: &[T], v: &mut [T], scratch: &mut [T]) -> socflow_runtime::Result<()> {
        self.field.eval(t, x, v, scratch)
    }

    fn eval_div(
        &self,
        t: T,
        x: &[T],
        v: &mut [T],
        scratch: &mut [T],
    ) -> socflow_runtime::Result<T> {
        let mut div = [T::zero()];
        self.eval_block_div(&[t], x, v, &mut div, scratch)?;
        Ok(div[0])
    }

    fn preferred_block_rows(&self) -> usize {
        self.field.preferred_block_rows()
    }

    fn block_scratch_len(&self, rows: usize) -> usize {
        if self.single {
            self.single_len()
        } else {
            let d = self.field.dim();
            self.field
                .block_scratch_len(rows)
                .max(self.field.block_jvp_scratch_len(rows) + rows * d)
        }
    }

    fn eval_block(
        &self,
        t: &[T],
        x: &[T],
        v: &mut [T],
        scratch: &mut [T],
    ) -> socflow_runtime::Result<()> {
        if !self.single {
            return self.field.eval_block(t, x, v, scratch);
        }
        let d = self.field.dim();
        socflow_runtime::field::check_block(d, t.len(), x, v)?;
        for ((ti, xi), vi) in t.iter().zip(x.chunks_exact(d)).zip(v.chunks_exact_mut(d)) {
            self.field.eval(*ti, xi, vi, scratch)?;
        }
        Ok(())
    }

    fn eval_block_div(
        &self,
        t: &[T],
        x: &[T],
        v: &mut [T],
        div: &mut [T],
        scratch: &mut [T],
    ) -> socflow_runtime::Result<()> {
        let (d, rows) = (self.field.dim(), t.len());
        self.check_rows(rows)?;
        socflow_runtime::field::check_block(d, rows, x, v)?;
        socflow_runtime::error::check_len("divergence buffer", div.len(), rows)?;
        let need = self.block_scratch_len(rows);
        socflow_runtime::error::check_len("scratch", scratch.len().min(need), need)?;
        let (jv, rest) = scratch.split_at_mut(rows * d);
        div.fill(T::zero());
        for probe in self.probes.chunks_exact(rows * d).take(self.k) {
            if self.single {
                self.field.eval_jvp(t[0], x, probe, v, jv, rest)?;
            } else {
                self.field.eval_block_jvp(t, x, probe, v, jv, rest)?;
            }
            for ((dv, e), j) in div
                .iter_mut()
                .zip(probe.chunks_exact(d))
                .zip(jv.chunks_exact(d))
            {
                *dv += e.iter().zip(j).fold(T::zero(), |s, (a, b)| s + *a * *b);
            }
        }
        let scale = T::one() / T::of(self.k as f64);
        for dv in div.iter_mut() {
            *dv *= scale;
        }
        Ok(())
    }
}
