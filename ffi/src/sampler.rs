//! Samplers: draw samples (and log-densities) of a flow model or a score (VP-SDE
//! diffusion) model into caller-owned buffers.

use socflow_runtime::artifact::ModelKind;
use socflow_runtime::model::Model;
use socflow_runtime::ode::{AdaptiveOptions, OdeOptions, OdeSolver, StepSize};
use socflow_runtime::sampler::{Sampler, SamplerOptions};
use socflow_runtime::sde::{SdeOptions, SdeScheme};
use socflow_runtime::vpsde::VpSampling;
use socflow_runtime::Real;

use crate::args;
use crate::error::{call, socflow_status, Failure};
use crate::handle::{self, Kind};
use crate::model::{self, socflow_model};
use crate::{thread_pool, Precision};

/// A sampler (opaque): a prior N(0, I) at the model's t1, integrated to where the
/// model's samples live, and a seed. Over a flow model (potential or velocity) an
/// ODE solver integrates its field from t1 to t0; over a score model (diffusion) an
/// ODE solver integrates the probability-flow ODE and an SDE solver the reverse SDE,
/// from t1 down to the VP-SDE's ε. A sampler is read-only once created: several
/// threads may draw from one sampler at once (each call uses its own buffers);
/// destroy it only when no other call on it is running.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub struct socflow_sampler {
    /// Opaque id; 0 is the null handle.
    pub id: u64,
}

/// Explicit Euler, `steps` fixed steps (order 1). An ODE solver: a flow model's
/// field, or a score model's probability-flow ODE.
pub const SOCFLOW_SOLVER_EULER: u32 = 0;
/// Heun's method, `steps` fixed steps (order 2). An ODE solver.
pub const SOCFLOW_SOLVER_HEUN: u32 = 1;
/// Classical Runge–Kutta, `steps` fixed steps (order 4). An ODE solver.
pub const SOCFLOW_SOLVER_RK4: u32 = 2;
/// Dormand–Prince 5(4) with adaptive steps to tolerances `rtol`, `atol`. An ODE
/// solver.
pub const SOCFLOW_SOLVER_DOPRI5: u32 = 3;
/// Euler–Maruyama on a score model's reverse SDE, `steps` fixed steps (weak order
/// 1). An SDE solver: score models only, no log-densities.
pub const SOCFLOW_SOLVER_EULER_MARUYAMA: u32 = 4;
/// Stochastic Heun on a score model's reverse SDE, `steps` fixed steps (two network
/// evaluations a step; the noise is additive, so it discretizes the same SDE as
/// Euler–Maruyama). An SDE solver: score models only, no log-densities.
pub const SOCFLOW_SOLVER_STOCHASTIC_HEUN: u32 = 5;

/// Options of `socflow_sampler_create`; `socflow_sampler_options_default` fills in
/// the defaults (RK4, 32 steps, tolerances 1e-5, seed 0, double precision, no
/// log-densities, the shared thread pool). On a score model the default RK4 samples
/// the probability-flow ODE; `solver = SOCFLOW_SOLVER_EULER_MARUYAMA` samples the
/// reverse SDE instead (what `socflow sample` does by default on a score model).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
#[allow(non_camel_case_types)]
pub struct socflow_sampler_options {
    /// `SOCFLOW_SOLVER_EULER`, `_HEUN`, `_RK4` or `_DOPRI5` (ODE solvers, any
    /// model), `SOCFLOW_SOLVER_EULER_MARUYAMA` or `_STOCHASTIC_HEUN` (the reverse
    /// SDE of a score model).
    pub solver: u32,
    /// Steps of a fixed-step solver, ODE or SDE (>= 1; ignored by Dopri5).
    pub steps: usize,
    /// Relative tolerance of Dopri5.
    pub rtol: f64,
    /// Absolute tolerance of Dopri5.
    pub atol: f64,
    /// Seed: sample i's prior draw, and the Brownian increments of its reverse-SDE
    /// path, are keyed by (seed, i) (and the step), so a seed gives the same samples
    /// for any thread count and any split of the work into calls.
    pub seed: u64,
    /// `SOCFLOW_PRECISION_F64` or `SOCFLOW_PRECISION_F32` (buffers are double either way).
    pub precision: u32,
    /// Nonzero: also compute each sample's log-density (exact trace), which
    /// `socflow_sampler_sample` then writes when given a buffer. ODE solvers only (a
    /// score model's log-density is that of its probability-flow ODE; the reverse SDE
    /// has none). With Dopri5 the log-density takes part in the step-size control, so
    /// the samples differ (within the tolerances) from those of a sampler without
    /// log-densities.
    pub log_density: u32,
    /// Worker threads: 0 uses the library's shared pool, n > 0 a pool of n threads
    /// owned by the sampler.
    pub threads: usize,
}

impl Default for socflow_sampler_options {
    fn default() -> Self {
        socflow_sampler_options {
            solver: SOCFLOW_SOLVER_RK4,
            steps: 32,
            rtol: 1e-5,
            atol: 1e-5,
            seed: 0,
            precision: crate::SOCFLOW_PRECISION_F64,
            log_density: 0,
            threads: 0,
        }
    }
}

enum AnySampler {
    F64(Sampler<f64>),
    F32(Sampler<f32>),
}

/// The object behind a sampler handle.
pub(crate) struct SamplerObject {
    sampler: AnySampler,
    dim: usize,
    pool: Option<rayon::ThreadPool>,
}

/// What a solver code integrates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Integrator {
    Ode(OdeSolver),
    Sde(SdeScheme),
}

fn integrator(solver: u32) -> Result<Integrator, Failure> {
    Ok(match solver {
        SOCFLOW_SOLVER_EULER => Integrator::Ode(OdeSolver::Euler),
        SOCFLOW_SOLVER_HEUN => Integrator::Ode(OdeSolver::Heun),
        SOCFLOW_SOLVER_RK4 => Integrator::Ode(OdeSolver::Rk4),
        SOCFLOW_SOLVER_DOPRI5 => Integrator::Ode(OdeSolver::Dopri5),
        SOCFLOW_SOLVER_EULER_MARUYAMA => Integrator::Sde(SdeScheme::EulerMaruyama),
        SOCFLOW_SOLVER_STOCHASTIC_HEUN => Integrator::Sde(SdeScheme::StochasticHeun),
        other => {
            return Err(Failure::invalid(format!(
                "unknown solver {other} (SOCFLOW_SOLVER_EULER, _HEUN, _RK4, _DOPRI5, \
                 _EULER_MARUYAMA or _STOCHASTIC_HEUN)"
            )))
        }
    })
}

fn ode_options<T: Real>(
    solver: OdeSolver,
    o: &socflow_sampler_options,
) -> Result<OdeOptions<T>, Failure> {
    let ode = if solver == OdeSolver::Dopri5 {
        OdeOptions {
            solver,
            step_size: StepSize::Adaptive(AdaptiveOptions::new(T::of(o.rtol), T::of(o.atol))),
        }
    } else {
        OdeOptions::fixed(solver, o.steps)
    };
    ode.validate()?;
    Ok(ode)
}

fn build<T: Real>(model: &Model<T>, o: &socflow_sampler_options) -> Result<Sampler<T>, Failure> {
    let how = integrator(o.solver)?;
    if model.kind() == ModelKind::Score {
        // The CLI's `socflow sample` on a score model, in the same terms: the
        // probability-flow ODE or the reverse SDE from the prior at t1 down to ε.
        let vp = model.vpsde()?;
        let sampling = match how {
            Integrator::Ode(solver) => VpSampling::ProbabilityFlow(ode_options(solver, o)?),
            Integrator::Sde(scheme) => {
                if o.steps == 0 {
                    return Err(Failure::invalid(format!(
                        "steps = 0: the {} reverse SDE takes fixed steps (>= 1)",
                        scheme.name()
                    )));
                }
                if o.log_density != 0 {
                    return Err(Failure::invalid(
                        "log_density needs an ODE solver: the reverse SDE \
                         (SOCFLOW_SOLVER_EULER_MARUYAMA, _STOCHASTIC_HEUN) has no density; \
                         an ODE solver (e.g. SOCFLOW_SOLVER_RK4) samples the probability-flow \
                         ODE with log-densities",
                    ));
                }
                VpSampling::ReverseSde(SdeOptions::new(scheme, o.steps))
            }
        };
        let mut so = vp.sampler_options(sampling, o.seed);
        so.log_density = o.log_density != 0;
        return Ok(vp.sampler(so)?);
    }
    let solver = match how {
        Integrator::Ode(solver) => solver,
        Integrator::Sde(scheme) => {
            return Err(Failure::invalid(format!(
                "solver {} ({}) samples the reverse SDE of a score (diffusion) model; a {} \
                 model is a flow: use an ODE solver (SOCFLOW_SOLVER_EULER, _HEUN, _RK4 or \
                 _DOPRI5)",
                o.solver,
                scheme.name(),
                model.kind().name()
            )))
        }
    };
    let mut so = SamplerOptions::ode(ode_options(solver, o)?, o.seed);
    so.log_density = o.log_density != 0;
    so.normalization = model.artifact().card.normalization.clone();
    let (t0, t1) = model.time_interval();
    // Samples start from the prior at t1 and are integrated to the data end t0.
    Ok(Sampler::new(model.field()?, t1, t0, so)?)
}

/// Writes the default sampler options into `*out`.
///
/// # Safety
/// `out` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn socflow_sampler_options_default(
    out: *mut socflow_sampler_options,
) -> socflow_status {
    // SAFETY: forwarded from the caller.
    call(|| unsafe { args::write(out, socflow_sampler_options::default(), "out") })
}

/// Creates a sampler over a model with `options` (NULL: the defaults) and stores its
/// handle in `*out` (the null handle on failure).
///
/// - A potential or velocity model (a flow): an ODE solver integrates its field
///   from the prior N(0, I) at t1 to t0.
/// - A score model (VP-SDE diffusion, the card's schedule): an ODE solver
///   integrates the probability-flow ODE, `SOCFLOW_SOLVER_EULER_MARUYAMA` or
///   `_STOCHASTIC_HEUN` the reverse SDE with `steps` fixed steps, from the prior
///   N(0, I) at t1 down to the schedule's ε.
///
/// Samples are in data coordinates (the card's normalization applied). An unknown
/// solver, an SDE solver on a flow model, an SDE solver with `log_density`, zero
/// steps or bad tolerances give `SOCFLOW_ERROR_INVALID_ARGUMENT`.
///
/// # Safety
/// `options` is NULL or valid; `out` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn socflow_sampler_create(
    model: socflow_model,
    options: *const socflow_sampler_options,
    out: *mut socflow_sampler,
) -> socflow_status {
    call(|| {
        // SAFETY: forwarded from the caller.
        unsafe { args::write(out, socflow_sampler::default(), "out (the sampler handle)")? };
        let o = if options.is_null() {
            socflow_sampler_options::default()
        } else {
            // SAFETY: non-null and valid by the contract.
            unsafe { *options }
        };
        let m = model::get(model)?;
        let sampler = match crate::precision(o.precision)? {
            Precision::F64 => AnySampler::F64(build(&m.f64, &o)?),
            Precision::F32 => AnySampler::F32(build(m.f32()?, &o)?),
        };
        let object = SamplerObject {
            sampler,
            dim: m.f64.dim(),
            pool: thread_pool(o.threads)?,
        };
        let id = handle::insert(Kind::Sampler, object)?;
        // SAFETY: checked by the first write.
        unsafe { out.write(socflow_sampler { id }) };
        Ok(())
    })
}

/// Writes the sampler's state dimension (values per sample) into `*dim`.
///
/// # Safety
/// `dim` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn socflow_sampler_dim(
    sampler: socflow_sampler,
    dim: *mut usize,
) -> socflow_status {
    call(|| {
        let d = handle::shared::<SamplerObject>(sampler.id, Kind::Sampler)?.dim;
        // SAFETY: forwarded from the caller.
        unsafe { args::write(dim, d, "dim") }
    })
}

/// Draws samples `first_sample .. first_sample + n` into `samples` (n × dim values,
/// n = `samples_len` / dim, row-major, data coordinates) and, when `log_density` is
/// not NULL, their log-densities under the model (n values; needs a sampler created
/// with `log_density` set). Calls with consecutive `first_sample` ranges give the
/// same samples as one large call.
///
/// # Safety
/// `samples` is NULL or points to `samples_len` writable doubles; `log_density` is
/// NULL or points to `log_density_len` writable doubles.
#[no_mangle]
pub unsafe extern "C" fn socflow_sampler_sample(
    sampler: socflow_sampler,
    first_sample: u64,
    samples: *mut f64,
    samples_len: usize,
    log_density: *mut f64,
    log_density_len: usize,
) -> socflow_status {
    call(|| {
        // SAFETY: forwarded from the caller.
        let (x, ld) = unsafe {
            (
                args::output(samples, samples_len, "samples")?,
                args::optional_output(log_density, log_density_len, "log_density")?,
            )
        };
        if let Some(l) = &ld {
            args::disjoint(x, l, "samples and log_density")?;
        }
        let s = handle::shared::<SamplerObject>(sampler.id, Kind::Sampler)?;
        if x.is_empty() || x.len() % s.dim != 0 {
            return Err(Failure::length(
                "samples (a positive multiple of the dimension)",
                x.len(),
                (x.len() / s.dim).max(1) * s.dim,
            ));
        }
        let run = || -> Result<(), Failure> {
            match &s.sampler {
                AnySampler::F64(sm) => {
                    sm.sample_into(first_sample, x, ld)?;
                }
                AnySampler::F32(sm) => {
                    let mut x32 = vec![0f32; x.len()];
                    let mut ld32 = ld.as_ref().map(|l| vec![0f32; l.len()]);
                    sm.sample_into(first_sample, &mut x32, ld32.as_deref_mut())?;
                    for (o, v) in x.iter_mut().zip(&x32) {
                        *o = f64::from(*v);
                    }
                    if let (Some(l), Some(l32)) = (ld, ld32) {
                        for (o, v) in l.iter_mut().zip(&l32) {
                            *o = f64::from(*v);
                        }
                    }
                }
            }
            Ok(())
        };
        match &s.pool {
            Some(pool) => pool.install(run),
            None => run(),
        }
    })
}

/// Destroys a sampler (and its thread pool). The null handle is accepted (nothing
/// happens); a closed handle gives `SOCFLOW_ERROR_INVALID_HANDLE`, one in use by
/// another thread `SOCFLOW_ERROR_BUSY`.
#[no_mangle]
pub extern "C" fn socflow_sampler_destroy(sampler: socflow_sampler) -> socflow_status {
    call(|| handle::destroy::<SamplerObject>(sampler.id, Kind::Sampler))
}
