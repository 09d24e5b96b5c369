//! Samplers: a prior, a field and an integrator → samples, log-densities and
//! trajectories.
//!
//! Sample `i` of a run starts from the prior draw keyed by (seed, i) at the prior's
//! time `t_prior` and is integrated to `t_end` (the data end). The batch is split
//! into fixed-size blocks of rows spread over rayon threads; every row's prior draw and
//! Brownian increments are keyed by its global sample index and no arithmetic mixes
//! rows, so a seed gives bitwise the same samples for any thread count and for any
//! split of the batch into calls (`first_sample` offsets).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rayon::prelude::*;

use crate::artifact::Normalization;
use crate::brownian::Brownian;
use crate::error::{check_len, Error, Result};
use crate::field::Field;
use crate::ode::{solve_block, OdeOptions, OdeWorkspace, SaveAt, SolveStats, Trajectory};
use crate::sde::{solve_sde_block, Diffusion, SdeOptions, SdeWorkspace};
use crate::Real;

/// How samples are transported from the prior to the data end.
#[derive(Clone)]
pub enum Method<T: Real> {
    /// Integrate the ODE dx/dt = f(t, x) (fixed or adaptive steps).
    Ode(OdeOptions<T>),
    /// Integrate the SDE dx = f(t, x) dt + g(t, x) dW with a fixed-step scheme.
    Sde {
        /// Scheme and number of steps.
        options: SdeOptions,
        /// The diffusion coefficient g.
        diffusion: Arc<dyn Diffusion<T>>,
    },
}

/// Options of a [`Sampler`].
#[derive(Clone)]
pub struct SamplerOptions<T: Real> {
    /// The integrator.
    pub method: Method<T>,
    /// Seed of the prior draws and Brownian increments.
    pub seed: u64,
    /// Also compute each sample's log-density (ODE methods only: exact trace).
    pub log_density: bool,
    /// Also record trajectories: [`SaveAt::Steps`] (fixed steps) or [`SaveAt::Times`].
    pub trajectory: Option<SaveAt<T>>,
    /// Rows per block (0: the field's [`preferred_block_rows`](Field::preferred_block_rows)).
    pub block_rows: usize,
    /// Map samples from model to data coordinates (x = mean + std ⊙ x_model) and
    /// correct the log-density by −Σ ln std.
    pub normalization: Option<Normalization>,
}

impl<T: Real> SamplerOptions<T> {
    /// ODE sampling with `opts`, seed `seed`, no log-densities or trajectories.
    pub fn ode(opts: OdeOptions<T>, seed: u64) -> Self {
        SamplerOptions {
            method: Method::Ode(opts),
            seed,
            log_density: false,
            trajectory: None,
            block_rows: 0,
            normalization: None,
        }
    }

    /// SDE sampling with `opts` and `diffusion`, seed `seed`.
    pub fn sde(opts: SdeOptions, diffusion: Arc<dyn Diffusion<T>>, seed: u64) -> Self {
        SamplerOptions {
            method: Method::Sde {
                options: opts,
                diffusion,
            },
            seed,
            log_density: false,
            trajectory: None,
            block_rows: 0,
            normalization: None,
        }
    }
}

/// Samples drawn by a [`Sampler`].
#[derive(Clone, Debug)]
pub struct Samples<T> {
    /// State dimension.
    pub dim: usize,
    /// Number of samples.
    pub n: usize,
    /// Samples, `n × dim` row-major (data coordinates).
    pub x: Vec<T>,
    /// Log-densities of the samples under the model, when asked for.
    pub log_density: Option<Vec<T>>,
    /// Trajectories, when asked for.
    pub trajectory: Option<SampleTrajectory<T>>,
    /// Work counters summed over the blocks.
    pub stats: SolveStats,
}

/// Trajectories of a batch: `times.len()` points, each `n × dim` states.
#[derive(Clone, Debug)]
pub struct SampleTrajectory<T> {
    /// The times of the points (from the prior's end to the data end).
    pub times: Vec<T>,
    /// States: point `p`, sample `i`, component `j` at `(p·n + i)·dim + j`
    /// (data coordinates).
    pub states: Vec<T>,
}

/// Draws samples by integrating a field from a standard normal prior.
pub struct Sampler<T: Real> {
    field: Arc<dyn Field<T>>,
    t_prior: T,
    t_end: T,
    opts: SamplerOptions<T>,
}

impl<T: Real> Sampler<T> {
    /// A sampler that draws x(t_prior) ~ N(0, I) and integrates `field` to `t_end`.
    pub fn new(
        field: Arc<dyn Field<T>>,
        t_prior: T,
        t_end: T,
        opts: SamplerOptions<T>,
    ) -> Result<Self> {
        if !(t_prior.is_finite() && t_end.is_finite()) {
            return Err(Error::NonFinite(format!(
                "sampling interval [{t_prior}, {t_end}]"
            )));
        }
        match &opts.method {
            Method::Ode(o) => o.validate()?,
            Method::Sde { options, diffusion } => {
                if options.steps == 0 {
                    return Err(Error::InvalidArgument(
                        "SDE sampling needs steps >= 1".into(),
                    ));
                }
                if diffusion.dim() != field.dim() {
                    return Err(Error::InvalidArgument(format!(
                        "diffusion dimension {} differs from the field's {}",
                        diffusion.dim(),
                        field.dim()
                    )));
                }
                if opts.log_density {
                    return Err(Error::Unsupported(
                        "log-densities need an ODE sampler (the SDE sampler has none)".into(),
                    ));
                }
            }
        }
        if let Some(norm) = &opts.normalization {
            check_len("normalization", norm.dim(), field.dim())?;
        }
        Ok(Sampler {
            field,
            t_prior,
            t_end,
            opts,
        })
    }

    /// State dimension.
    pub fn dim(&self) -> usize {
        self.field.dim()
    }

    /// The options.
    pub fn options(&self) -> &SamplerOptions<T> {
        &self.opts
    }

    fn block_rows(&self) -> usize {
        if self.opts.block_rows > 0 {
            self.opts.block_rows
        } else {
            self.field.preferred_block_rows().max(1)
        }
    }

    /// Draws samples `first_sample .. first_sample + n`.
    pub fn sample(&self, n: usize, first_sample: u64) -> Result<Samples<T>> {
        self.sample_with_progress(n, first_sample, &|_| {})
    }

    /// Like [`sample`](Sampler::sample), calling `progress(rows_done)` as blocks finish
    /// (from worker threads).
    pub fn sample_with_progress(
        &self,
        n: usize,
        first_sample: u64,
        progress: &(dyn Fn(usize) + Sync),
    ) -> Result<Samples<T>> {
        let d = self.dim();
        let mut x = vec![T::zero(); n * d];
        let mut logp = if self.opts.log_density {
            Some(vec![T::zero(); n])
        } else {
            None
        };
        let (stats, traj) = self.run(first_sample, &mut x, logp.as_deref_mut(), true, progress)?;
        Ok(Samples {
            dim: d,
            n,
            x,
            log_density: logp,
            trajectory: traj,
            stats,
        })
    }

    /// Fills caller-owned buffers: `x` (`n × dim`) with samples `first_sample ..
    /// first_sample + n` and, when given, `log_density` (length n). Trajectories are
    /// not recorded here.
    pub fn sample_into(
        &self,
        first_sample: u64,
        x: &mut [T],
        log_density: Option<&mut [T]>,
    ) -> Result<SolveStats> {
        let d = self.dim();
        if x.len() % d != 0 {
            return Err(Error::Length {
                what: "sample buffer (a multiple of the dimension)",
                found: x.len(),
                expected: x.len() / d * d,
            });
        }
        if let Some(l) = &log_density {
            check_len("log-density buffer", l.len(), x.len() / d)?;
            if !self.opts.log_density {
                return Err(Error::InvalidArgument(
                    "log-density buffer given but the sampler was built without log_density".into(),
                ));
            }
        }
        Ok(self.run(first_sample, x, log_density, false, &|_| {})?.0)
    }

    fn run(
        &self,
        first_sample: u64,
        x: &mut [T],
        mut logp: Option<&mut [T]>,
        with_traj: bool,
        progress: &(dyn Fn(usize) + Sync),
    ) -> Result<(SolveStats, Option<SampleTrajectory<T>>)> {
        let d = self.dim();
        let n = x.len() / d;
        let rows = self.block_rows();
        let brownian = Brownian::new(self.opts.seed);
        let save = if with_traj {
            self.opts.trajectory.clone()
        } else {
            None
        };
        let nblocks = n.div_ceil(rows);
        let ld_chunks: Vec<Option<&mut [T]>> = match logp.take() {
            Some(l) => l.chunks_mut(rows).map(Some).collect(),
            None => (0..nblocks).map(|_| None).collect(),
        };
        let done = AtomicUsize::new(0);
        let results: Vec<Result<(SolveStats, Option<Trajectory<T>>)>> = x
            .par_chunks_mut(rows * d)
            .zip(ld_chunks.into_par_iter())
            .enumerate()
            .map(|(b, (xb, lb))| {
                let first = first_sample + (b * rows) as u64;
                let out = self.run_block(first, xb, lb, save.clone(), &brownian);
                let now = done.fetch_add(xb.len() / d, Ordering::Relaxed) + xb.len() / d;
                progress(now);
                out
            })
            .collect();
        let mut stats = SolveStats::default();
        let mut trajs = Vec::with_capacity(nblocks);
        for r in results {
            let (s, t) = r?;
            stats.rows += s.rows;
            stats.nfe += s.nfe;
            stats.block_evals += s.block_evals;
            stats.steps += s.steps;
            stats.accepted += s.accepted;
            stats.rejected += s.rejected;
            trajs.push(t);
        }
        let traj = if save.is_some() {
            Some(self.merge_trajectories(n, &trajs)?)
        } else {
            None
        };
        Ok((stats, traj))
    }

    fn run_block(
        &self,
        first: u64,
        xb: &mut [T],
        mut lb: Option<&mut [T]>,
        save: Option<SaveAt<T>>,
        brownian: &Brownian,
    ) -> Result<(SolveStats, Option<Trajectory<T>>)> {
        let d = self.dim();
        let rows = xb.len() / d;
        for (i, row) in xb.chunks_exact_mut(d).enumerate() {
            brownian.prior_normals(first + i as u64, row)?;
        }
        if let Some(l) = lb.as_deref_mut() {
            for (l, row) in l.iter_mut().zip(xb.chunks_exact(d)) {
                let sq: T = row.iter().map(|v| *v * *v).sum();
                *l = -(T::of(0.5) * sq + T::of(0.5 * d as f64 * (2.0 * std::f64::consts::PI).ln()));
            }
        }
        let mut traj = save.map(Trajectory::new);
        let stats = match &self.opts.method {
            Method::Ode(o) => {
                let mut ws = OdeWorkspace::for_field(&*self.field, rows);
                let mut logdet = lb.as_ref().map(|_| vec![T::zero(); rows]);
                let s = solve_block(
                    &*self.field,
                    o,
                    self.t_prior,
                    self.t_end,
                    xb,
                    logdet.as_deref_mut(),
                    traj.as_mut(),
                    &mut ws,
                )?;
                // log p(x(t_end)) = log p(x(t_prior)) − log det ∂x(t_end)/∂x(t_prior).
                if let (Some(l), Some(ld)) = (lb.as_deref_mut(), logdet) {
                    for (l, ld) in l.iter_mut().zip(ld) {
                        *l -= ld;
                    }
                }
                s
            }
            Method::Sde { options, diffusion } => {
                let mut ws = SdeWorkspace::for_field(&*self.field, rows);
                solve_sde_block(
                    &*self.field,
                    &**diffusion,
                    options,
                    self.t_prior,
                    self.t_end,
                    xb,
                    brownian,
                    first,
                    traj.as_mut(),
                    &mut ws,
                )?
            }
        };
        if let Some(norm) = &self.opts.normalization {
            norm.to_data(xb)?;
            if let Some(l) = lb {
                let shift = T::of(norm.log_det());
                for l in l.iter_mut() {
                    *l -= shift;
                }
            }
        }
        Ok((stats, traj))
    }

    fn merge_trajectories(
        &self,
        n: usize,
        blocks: &[Option<Trajectory<T>>],
    ) -> Result<SampleTrajectory<T>> {
        let d = self.dim();
        let times: Vec<T> = blocks
            .iter()
            .flatten()
            .next()
            .map(|t| t.times().to_vec())
            .unwrap_or_default();
        let points = times.len();
        let mut states = vec![T::zero(); points * n * d];
        let mut row0 = 0;
        for t in blocks.iter().flatten() {
            let r = t.rows();
            for p in 0..points {
                let src = t.block(p).ok_or_else(|| {
                    Error::Integration("trajectory point missing in a block".into())
                })?;
                states[(p * n + row0) * d..(p * n + row0 + r) * d].copy_from_slice(src);
            }
            row0 += r;
        }
        if let Some(norm) = &self.opts.normalization {
            norm.to_data(&mut states)?;
        }
        Ok(SampleTrajectory { times, states })
    }
}
