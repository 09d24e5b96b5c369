//! Samplers on the GPU: the CPU [`Sampler`](crate::sampler::Sampler)'s options, keys
//! and results, with the batch on the device.
//!
//! Sample `i` of a call starts from the prior draw keyed by (seed, [`Stream::PRIOR`],
//! `first_sample + i`) and its SDE step `k` uses the increments keyed by (seed,
//! [`Stream::BROWNIAN`], `first_sample + i`, `k`), exactly as on the CPU (sampler.rs,
//! sde.rs), so a seed gives the same samples on both backends to rounding, for any
//! split of the batch into calls or into device passes.
//!
//! The driver follows the CPU's fixed-step drivers (`solve_fixed` in ode/mod.rs,
//! `solve_sde_block_with` in sde.rs) step for step: the same step size, stage times and
//! tableau weights, rounded to `T` as there; only the arithmetic runs on the device.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaView, PushKernelArg};

use super::device::{dev, guard, launch_config, Gpu};
use super::field::{FieldWorkspace, GpuField};
use super::mlp::GpuMlp;
use super::otflow::GpuOtFlow;
use super::GpuReal;
use crate::artifact::ModelKind;
use crate::brownian::{Stream, MAX_SAMPLE, MAX_STEP};
use crate::error::{check_len, Error, Result};
use crate::model::{Model, Network};
use crate::ode::{
    AdaptiveOptions, OdeSolver, SolveStats, StepSize, DOPRI5_ERROR, DOPRI5_ERROR_ORDER,
};
use crate::sampler::{Method, SamplerOptions, Samples};
use crate::sde::SdeScheme;
use crate::vpsde::VpDynamics;

/// Rows per device pass by default: the activations of a 256-wide network then take
/// 2 × 64 MiB in f32.
pub const DEFAULT_MAX_ROWS: usize = 1 << 16;

/// Draws samples on a GPU by integrating a [`GpuField`] from a standard normal prior,
/// as [`Sampler`](crate::sampler::Sampler) does on the CPU.
pub struct GpuSampler<T: GpuReal> {
    field: GpuField<T>,
    t_prior: T,
    t_end: T,
    opts: SamplerOptions<T>,
    /// SDE solves: the additive diffusion's d values at each of the steps + 1 times.
    diffusion: Option<Vec<T>>,
    max_rows: usize,
}

impl<T: GpuReal> GpuSampler<T> {
    /// A sampler that draws x(t_prior) ~ N(0, I) and integrates `field` to `t_end` on
    /// the field's GPU, with the CPU sampler's options.
    ///
    /// The options are checked as [`Sampler::new`](crate::sampler::Sampler::new) checks
    /// them (same errors). The GPU does not do everything the CPU does yet: log-densities,
    /// trajectories and diffusions that depend on the state are [`Error::Unsupported`]. `block_rows` is a CPU setting and is ignored (see
    /// [`with_max_rows`](GpuSampler::with_max_rows)).
    pub fn new(field: GpuField<T>, t_prior: T, t_end: T, opts: SamplerOptions<T>) -> Result<Self> {
        let d = field.dim();
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
                if diffusion.dim() != d {
                    return Err(Error::InvalidArgument(format!(
                        "diffusion dimension {} differs from the field's {}",
                        diffusion.dim(),
                        d
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
            check_len("normalization", norm.dim(), d)?;
        }
        if opts.log_density {
            return Err(Error::Unsupported(
                "log-densities are not computed on the GPU yet; use the CPU sampler".into(),
            ));
        }
        if opts.trajectory.is_some() {
            return Err(Error::Unsupported(
                "trajectories are not recorded on the GPU yet; use the CPU sampler".into(),
            ));
        }
        let diffusion = match &opts.method {
            Method::Ode(_) => None,
            Method::Sde { options, diffusion } => {
                if !diffusion.is_additive() {
                    return Err(Error::Unsupported(
                        "the GPU sampler takes additive diffusions (g depends on t only); use \
                         the CPU sampler for state-dependent noise"
                            .into(),
                    ));
                }
                // g(t) at the times of sde.rs `solve_sde_block_with`, evaluated on the
                // host once (it does not depend on the state).
                let steps = options.steps;
                let h = (t_end - t_prior) / T::of(steps as f64);
                let zero = vec![T::zero(); d];
                let mut g = vec![T::zero(); (steps + 1) * d];
                for (k, gk) in g.chunks_exact_mut(d).enumerate() {
                    let tk = if k == steps {
                        t_end
                    } else {
                        t_prior + T::of(k as f64) * h
                    };
                    diffusion.eval(tk, &zero, gk)?;
                }
                Some(g)
            }
        };
        Ok(GpuSampler {
            field,
            t_prior,
            t_end,
            opts,
            diffusion,
            max_rows: DEFAULT_MAX_ROWS,
        })
    }

    /// The GPU sampler of a model, as the CPU samples it: a velocity MLP or an OT-Flow
    /// potential (its −∇ₓΦ) from the end t1 of its time interval to t0 (as `socflow
    /// sample` does), a score model's
    /// probability-flow ODE (ODE options) or reverse SDE (SDE options) from t1 down to
    /// its ε. The options come from the caller as on the CPU (for a score model,
    /// [`VpSdeModel::sampler_options`](crate::vpsde::VpSdeModel::sampler_options), which
    /// sets the normalization).
    ///
    /// Errors: those of [`GpuMlp::new`], [`GpuOtFlow::new`] and [`GpuSampler::new`].
    pub fn for_model(gpu: &Arc<Gpu>, model: &Model<T>, opts: SamplerOptions<T>) -> Result<Self> {
        let mlp = match model.network() {
            Network::Mlp(m) => m,
            Network::OtFlow(p) => {
                // As Model::field: the potential's −∇ₓΦ, from t1 to t0.
                let net = Arc::new(GpuOtFlow::new(gpu, p)?);
                let (t0, t1) = model.time_interval();
                return Self::new(GpuField::potential(net)?, t1, t0, opts);
            }
        };
        match model.kind() {
            ModelKind::Velocity => {
                let net = Arc::new(GpuMlp::new(gpu, mlp)?);
                let (t0, t1) = model.time_interval();
                Self::new(GpuField::velocity(net)?, t1, t0, opts)
            }
            ModelKind::Score => {
                let vp = model.vpsde()?;
                let dynamics = match opts.method {
                    Method::Ode(_) => VpDynamics::ProbabilityFlow,
                    Method::Sde { .. } => VpDynamics::ReverseSde,
                };
                let net = Arc::new(GpuMlp::new(gpu, mlp)?);
                let field = GpuField::vpsde(net, *vp.sde(), dynamics)?;
                Self::new(field, T::of(vp.t_prior()), T::of(vp.sde().eps), opts)
            }
            kind => Err(Error::Unsupported(format!(
                "a {kind:?} MLP is not a velocity field; sample it with the VP-SDE sampler"
            ))),
        }
    }

    /// Sets the rows per device pass (≥ 1; default [`DEFAULT_MAX_ROWS`]): larger
    /// batches run in passes of this many rows, which bounds the device memory used.
    pub fn with_max_rows(mut self, rows: usize) -> Self {
        self.max_rows = rows.max(1);
        self
    }

    /// State dimension.
    pub fn dim(&self) -> usize {
        self.field.dim()
    }

    /// The options.
    pub fn options(&self) -> &SamplerOptions<T> {
        &self.opts
    }

    /// The field.
    pub fn field(&self) -> &GpuField<T> {
        &self.field
    }

    /// Draws samples `first_sample .. first_sample + n`.
    pub fn sample(&self, n: usize, first_sample: u64) -> Result<Samples<T>> {
        let d = self.dim();
        let len = n
            .checked_mul(d)
            .ok_or_else(|| Error::Limit(format!("{n} samples of dimension {d}")))?;
        let mut x = vec![T::zero(); len];
        let stats = self.sample_into(first_sample, &mut x)?;
        Ok(Samples {
            dim: d,
            n,
            x,
            log_density: None,
            trajectory: None,
            stats,
        })
    }

    /// Fills `x` (`n × dim`) with samples `first_sample .. first_sample + n`.
    ///
    /// The work counters count device passes as blocks: `block_evals` is the number of
    /// batch evaluations of the field.
    pub fn sample_into(&self, first_sample: u64, x: &mut [T]) -> Result<SolveStats> {
        let d = self.dim();
        if x.len() % d != 0 {
            return Err(Error::Length {
                what: "sample buffer (a multiple of the dimension)",
                found: x.len(),
                expected: x.len() / d * d,
            });
        }
        let n = x.len() / d;
        if n == 0 {
            return Ok(SolveStats::default());
        }
        check_samples(first_sample, n)?;
        if let Method::Sde { options, .. } = &self.opts.method {
            if options.steps as u64 - 1 > MAX_STEP {
                return Err(Error::Limit(format!(
                    "step index {} exceeds the generator's {MAX_STEP}",
                    MAX_STEP + 1
                )));
            }
        }
        let gpu = self.field.gpu();
        let stats = guard("sampling on the GPU", || {
            let _hold = gpu.lock();
            self.run(gpu, first_sample, x)
        })?;
        let t1 = self.t_end;
        let t0 = self.t_prior;
        for (r, row) in x.chunks_exact(d).enumerate() {
            if !row.iter().all(|v| v.is_finite()) {
                let (name, steps) = match &self.opts.method {
                    Method::Ode(o) => (
                        o.solver.name(),
                        match o.step_size {
                            StepSize::Fixed(s) => s,
                            StepSize::Adaptive(_) => 0,
                        },
                    ),
                    Method::Sde { options, .. } => (options.scheme.name(), options.steps),
                };
                return Err(Error::Integration(format!(
                    "row {r}: the state is not finite at t = {t1} ({name} with {steps} steps over [{t0}, {t1}])"
                )));
            }
        }
        if let Some(norm) = &self.opts.normalization {
            norm.to_data(x)?;
        }
        Ok(stats)
    }

    /// All passes of a call (the device lock held).
    fn run(&self, gpu: &Gpu, first_sample: u64, x: &mut [T]) -> Result<SolveStats> {
        let d = self.dim();
        let n = x.len() / d;
        let cap = n.min(self.max_rows);
        let slots = match &self.opts.method {
            Method::Ode(o) => o.solver.stages(),
            Method::Sde { .. } => 2,
        };
        let s = &gpu.stream;
        let alloc = |len: usize| -> Result<CudaSlice<T>> {
            s.alloc_zeros::<T>(len.max(1))
                .map_err(dev("allocating GPU memory"))
        };
        let mut bufs = Buffers {
            y: alloc(cap * d)?,
            ytmp: alloc(cap * d)?,
            k: alloc(slots * cap * d)?,
            stride: cap * d,
            dw: alloc(if self.diffusion.is_some() { cap * d } else { 0 })?,
            g: match &self.diffusion {
                Some(g) => Some(s.clone_htod(g).map_err(dev("copying the diffusion"))?),
                None => None,
            },
            ws: self.field.workspace(cap)?,
        };
        let mut stats = SolveStats::default();
        let mut start = 0;
        while start < n {
            let rows = cap.min(n - start);
            let first = first_sample + start as u64;
            normals(
                gpu,
                &mut bufs.y,
                self.opts.seed,
                Stream::PRIOR,
                first,
                0,
                rows,
                d,
                T::one(),
            )?;
            let st = match &self.opts.method {
                Method::Ode(o) => match &o.step_size {
                    StepSize::Fixed(steps) => {
                        self.solve_ode(gpu, &mut bufs, rows, o.solver.tableau(), *steps)?
                    }
                    StepSize::Adaptive(a) => self.solve_adaptive(gpu, &mut bufs, rows, start, a)?,
                },
                Method::Sde { options, .. } => {
                    self.solve_sde(gpu, &mut bufs, rows, first, options.scheme, options.steps)?
                }
            };
            stats.rows += st.rows;
            stats.nfe += st.nfe;
            stats.block_evals += st.block_evals;
            stats.steps += st.steps;
            stats.accepted += st.accepted;
            stats.rejected += st.rejected;
            let out = &mut x[start * d..(start + rows) * d];
            s.memcpy_dtoh(&bufs.y.slice(..rows * d), out)
                .map_err(dev("copying samples from the GPU"))?;
            start += rows;
        }
        s.synchronize().map_err(dev("synchronizing the GPU"))?;
        Ok(stats)
    }

    /// Fixed steps of an explicit Runge–Kutta method (ode/mod.rs `solve_fixed` and
    /// `rk_step`) on `rows` rows of `bufs.y`.
    fn solve_ode(
        &self,
        gpu: &Gpu,
        b: &mut Buffers<T>,
        rows: usize,
        tab: &crate::ode::Tableau,
        steps: usize,
    ) -> Result<SolveStats> {
        let d = self.dim();
        let nd = rows * d;
        let (t0, t1) = (self.t_prior, self.t_end);
        let h = (t1 - t0) / T::of(steps as f64);
        let stages = tab.stages();
        let mut stats = SolveStats {
            rows,
            ..SolveStats::default()
        };
        let mut have_k0 = false;
        let mut t = t0;
        for step in 0..steps {
            for j in usize::from(have_k0)..stages {
                let at = j * b.stride;
                if j == 0 {
                    let x = b.y.slice(..nd);
                    let mut out = b.k.slice_mut(at..at + nd);
                    self.field.eval(&mut b.ws, rows, &x, t, &mut out)?;
                } else {
                    let tj = t + T::of(tab.c[j]) * h;
                    rk_stage(
                        gpu,
                        &mut b.ytmp,
                        &b.y,
                        &b.k,
                        b.stride,
                        tab.a[j],
                        Step::Common(h),
                        nd,
                    )?;
                    let x = b.ytmp.slice(..nd);
                    let mut out = b.k.slice_mut(at..at + nd);
                    self.field.eval(&mut b.ws, rows, &x, tj, &mut out)?;
                }
                stats.nfe += rows as u64;
                stats.block_evals += 1;
            }
            if !tab.fsal {
                rk_stage(
                    gpu,
                    &mut b.ytmp,
                    &b.y,
                    &b.k,
                    b.stride,
                    tab.b,
                    Step::Common(h),
                    nd,
                )?;
            }
            let t_new = if step + 1 == steps {
                t1
            } else {
                t0 + T::of((step + 1) as f64) * h
            };
            std::mem::swap(&mut b.y, &mut b.ytmp);
            if tab.fsal {
                // The last stage, f at the new state, is the next step's first.
                let last = (stages - 1) * b.stride;
                let (mut lo, hi) = b.k.split_at_mut(last);
                gpu.stream
                    .memcpy_dtod(&hi.slice(..nd), &mut lo.slice_mut(..nd))
                    .map_err(dev("copying a stage"))?;
                have_k0 = true;
            }
            t = t_new;
        }
        stats.steps = (steps * rows) as u64;
        stats.accepted = stats.steps;
        Ok(stats)
    }

    /// Adaptive Dopri5 (ode/mod.rs `solve_adaptive`) on `rows` rows of `bufs.y` (rows
    /// `first_row ..` of the call, for messages): every row its own time, step and PI
    /// controller, stepped by the kernels of adaptive.cu. Every row is evaluated at
    /// every iteration (a finished row with a zero step) until the last one finishes;
    /// the work counters count what the CPU's driver would (the active rows only).
    fn solve_adaptive(
        &self,
        gpu: &Gpu,
        b: &mut Buffers<T>,
        rows: usize,
        first_row: usize,
        a: &AdaptiveOptions<T>,
    ) -> Result<SolveStats> {
        let d = self.dim();
        let nd = rows * d;
        let (t0, t1) = (self.t_prior, self.t_end);
        let mut stats = SolveStats {
            rows,
            ..SolveStats::default()
        };
        if t1 == t0 {
            return Ok(stats);
        }
        let tab = OdeSolver::Dopri5.tableau();
        let dir = if t1 > t0 { T::one() } else { -T::one() };
        let span = (t1 - t0).abs();
        let h_max = a.h_max.unwrap_or(span).min(span);
        let ctrl = [
            a.rtol,
            a.atol,
            T::of(d as f64),
            a.safety,
            a.min_factor,
            a.max_factor,
            a.beta1,
            a.beta2,
            h_max,
            a.h_min,
            T::of(10.0) * T::epsilon(),
            t1,
            dir,
        ];
        let e: [T; 7] = DOPRI5_ERROR.map(T::of);
        let s = &gpu.stream;
        let up = |v: &[T]| s.clone_htod(v).map_err(dev("copying to the GPU"));
        let zeros = |n: usize| s.alloc_zeros::<T>(n).map_err(dev("allocating GPU memory"));
        let flags = |n: usize| {
            s.alloc_zeros::<i32>(n)
                .map_err(dev("allocating GPU memory"))
        };
        let counts = |n: usize| {
            s.alloc_zeros::<u64>(n)
                .map_err(dev("allocating GPU memory"))
        };
        let ctrl_d = up(&ctrl)?;
        let e_d = up(&e)?;
        let mut st = RowState {
            t: up(&vec![t0; rows])?,
            h: zeros(rows)?,
            hs: zeros(rows)?,
            tst: zeros(rows)?,
            err_prev: up(&vec![T::of(1e-4); rows])?,
            errv: zeros(rows)?,
            last: flags(rows)?,
            done: flags(rows)?,
            rejected_last: flags(rows)?,
            status: flags(rows)?,
            counters: flags(2)?,
            attempts: counts(rows)?,
            accepted: counts(rows)?,
            rejected: counts(rows)?,
        };
        let (rows_i, d_i) = (rows as i64, d as i64);
        // The first stage at t0 (FSAL keeps it up to date afterwards).
        {
            let x = b.y.slice(..nd);
            let mut out = b.k.slice_mut(..nd);
            self.field.eval(&mut b.ws, rows, &x, t0, &mut out)?;
        }
        stats.nfe += rows as u64;
        stats.block_evals += 1;
        match a.h0 {
            Some(h0) => st.h = up(&vec![dir * h0.min(h_max); rows])?,
            None => {
                // Hairer's starting step: one more evaluation per row.
                let f = gpu.function("dp_init1", T::SUFFIX)?;
                let mut l = s.launch_builder(f);
                l.arg(&mut st.h)
                    .arg(&mut st.tst)
                    .arg(&mut b.ytmp)
                    .arg(&b.y)
                    .arg(&b.k)
                    .arg(&ctrl_d)
                    .arg(&t0)
                    .arg(&rows_i)
                    .arg(&d_i);
                // SAFETY: dp_init1_T(T* h, T* tst, T* ytmp, const T* y, const T* k0, const
                // T* ctrl, T t0, i64 rows, i64 d): h and tst hold rows values, ytmp, y and
                // k0 (the first stage slot) rows·d, ctrl 13.
                unsafe { l.launch(launch_config(rows)) }.map_err(dev("launching dp_init1"))?;
                {
                    let x = b.ytmp.slice(..nd);
                    let mut out = b.k.slice_mut(b.stride..b.stride + nd);
                    self.field
                        .eval_rows(&mut b.ws, rows, &x, &st.tst, &mut out)?;
                }
                stats.nfe += rows as u64;
                stats.block_evals += 1;
                let inv_order = T::one() / T::of(f64::from(DOPRI5_ERROR_ORDER));
                let k1 = b.k.slice(b.stride..b.stride + nd);
                let f = gpu.function("dp_init2", T::SUFFIX)?;
                let mut l = s.launch_builder(f);
                l.arg(&mut st.h)
                    .arg(&b.y)
                    .arg(&b.k)
                    .arg(&k1)
                    .arg(&ctrl_d)
                    .arg(&inv_order)
                    .arg(&rows_i)
                    .arg(&d_i);
                // SAFETY: dp_init2_T(T* h, const T* y, const T* k0, const T* k1, const T*
                // ctrl, T inv_order, i64 rows, i64 d): h holds rows values, y, k0 and k1
                // rows·d, ctrl 13.
                unsafe { l.launch(launch_config(rows)) }.map_err(dev("launching dp_init2"))?;
            }
        }
        let max_steps = a.max_steps as u64;
        let stride_i = b.stride as i64;
        loop {
            s.memset_zeros(&mut st.counters)
                .map_err(dev("clearing counters"))?;
            {
                let f = gpu.function("dp_prepare", T::SUFFIX)?;
                let mut l = s.launch_builder(f);
                l.arg(&mut st.hs)
                    .arg(&mut st.last)
                    .arg(&st.t)
                    .arg(&st.h)
                    .arg(&st.done)
                    .arg(&st.attempts)
                    .arg(&mut st.status)
                    .arg(&mut st.counters)
                    .arg(&ctrl_d)
                    .arg(&max_steps)
                    .arg(&rows_i);
                // SAFETY: dp_prepare_T(T* hs, int* last, const T* t, const T* h, const int*
                // done, const u64* attempts, int* status, int* counters, const T* ctrl, u64
                // max_steps, i64 rows): the per-row arrays hold rows values, counters 2,
                // ctrl 13.
                unsafe { l.launch(launch_config(rows)) }.map_err(dev("launching dp_prepare"))?;
            }
            for j in 1..tab.stages() {
                let c = T::of(tab.c[j]);
                let f = gpu.function("dp_stage_times", T::SUFFIX)?;
                let mut l = s.launch_builder(f);
                l.arg(&mut st.tst)
                    .arg(&st.t)
                    .arg(&st.hs)
                    .arg(&c)
                    .arg(&rows_i);
                // SAFETY: dp_stage_times_T(T* tst, const T* t, const T* hs, T c, i64 rows):
                // each holds rows values.
                unsafe { l.launch(launch_config(rows)) }
                    .map_err(dev("launching dp_stage_times"))?;
                rk_stage(
                    gpu,
                    &mut b.ytmp,
                    &b.y,
                    &b.k,
                    b.stride,
                    tab.a[j],
                    Step::Rows(&st.hs, d),
                    nd,
                )?;
                let x = b.ytmp.slice(..nd);
                let at = j * b.stride;
                let mut out = b.k.slice_mut(at..at + nd);
                self.field
                    .eval_rows(&mut b.ws, rows, &x, &st.tst, &mut out)?;
                stats.block_evals += 1;
            }
            {
                let f = gpu.function("dp_judge", T::SUFFIX)?;
                let mut l = s.launch_builder(f);
                l.arg(&mut b.y)
                    .arg(&b.ytmp)
                    .arg(&mut b.k)
                    .arg(&stride_i)
                    .arg(&mut st.t)
                    .arg(&mut st.h)
                    .arg(&st.hs)
                    .arg(&st.last)
                    .arg(&mut st.done)
                    .arg(&mut st.attempts)
                    .arg(&mut st.accepted)
                    .arg(&mut st.rejected)
                    .arg(&mut st.err_prev)
                    .arg(&mut st.rejected_last)
                    .arg(&mut st.status)
                    .arg(&mut st.errv)
                    .arg(&mut st.counters)
                    .arg(&ctrl_d)
                    .arg(&e_d)
                    .arg(&rows_i)
                    .arg(&d_i);
                // SAFETY: dp_judge_T(T* y, const T* ytmp, T* k, i64 stride, T* t, T* h, const
                // T* hs, const int* last, int* done, u64* attempts, u64* accepted, u64*
                // rejected, T* err_prev, int* rejected_last, int* status, T* errv, int*
                // counters, const T* ctrl, const T* e, i64 rows, i64 d): y and ytmp hold
                // rows·d values, k 7 slots of `stride` ≥ rows·d, the per-row arrays rows,
                // counters 2, ctrl 13, e 7.
                unsafe { l.launch(launch_config(rows)) }.map_err(dev("launching dp_judge"))?;
            }
            let counters = s
                .clone_dtoh(&st.counters)
                .map_err(dev("reading the step counters"))?;
            s.synchronize().map_err(dev("synchronizing the GPU"))?;
            if counters[1] > 0 {
                return Err(st.error(s, first_row, a.max_steps, t0, t1)?);
            }
            if counters[0] == 0 {
                break;
            }
        }
        let sum = |v: &CudaSlice<u64>| -> Result<u64> {
            Ok(s.clone_dtoh(v)
                .map_err(dev("reading the step counters"))?
                .iter()
                .sum())
        };
        stats.steps = sum(&st.attempts)?;
        stats.accepted = sum(&st.accepted)?;
        stats.rejected = sum(&st.rejected)?;
        stats.nfe += 6 * stats.steps;
        Ok(stats)
    }

    /// Fixed steps of an SDE scheme with additive noise (sde.rs
    /// `solve_sde_block_with`) on `rows` rows of `bufs.y`, samples `first ..`.
    #[allow(clippy::too_many_arguments)] // private driver half
    fn solve_sde(
        &self,
        gpu: &Gpu,
        b: &mut Buffers<T>,
        rows: usize,
        first: u64,
        scheme: SdeScheme,
        steps: usize,
    ) -> Result<SolveStats> {
        let d = self.dim();
        let nd = rows * d;
        let (t0, t1) = (self.t_prior, self.t_end);
        let h = (t1 - t0) / T::of(steps as f64);
        // Brownian::increments: ΔW = ξ·√|h| in T.
        let scale = h.abs().sqrt();
        let g = b.g.as_ref().ok_or_else(|| {
            Error::Device("SDE solve without its diffusion (internal error)".into())
        })?;
        let time = |k: usize| {
            if k == steps {
                t1
            } else {
                t0 + T::of(k as f64) * h
            }
        };
        let mut stats = SolveStats {
            rows,
            ..SolveStats::default()
        };
        let (f_at, f2_at) = (0, b.stride);
        for k in 0..steps {
            let (tk, tk1) = (time(k), time(k + 1));
            {
                let x = b.y.slice(..nd);
                let mut f = b.k.slice_mut(f_at..f_at + nd);
                self.field.eval(&mut b.ws, rows, &x, tk, &mut f)?;
            }
            normals(
                gpu,
                &mut b.dw,
                self.opts.seed,
                Stream::BROWNIAN,
                first,
                k as u32,
                rows,
                d,
                scale,
            )?;
            stats.nfe += rows as u64;
            stats.block_evals += 1;
            let gk = g.slice(k * d..(k + 1) * d);
            let f = b.k.slice(f_at..f_at + nd);
            em_step(gpu, &mut b.ytmp, &b.y, &f, &gk, &b.dw, h, rows, d)?;
            match scheme {
                SdeScheme::EulerMaruyama => std::mem::swap(&mut b.y, &mut b.ytmp),
                SdeScheme::StochasticHeun => {
                    {
                        let xt = b.ytmp.slice(..nd);
                        let mut f2 = b.k.slice_mut(f2_at..f2_at + nd);
                        self.field.eval(&mut b.ws, rows, &xt, tk1, &mut f2)?;
                    }
                    stats.nfe += rows as u64;
                    stats.block_evals += 1;
                    let gk1 = g.slice((k + 1) * d..(k + 2) * d);
                    heun_step(gpu, &mut b.y, &b.k, b.stride, &b.dw, &gk, &gk1, h, rows, d)?;
                }
            }
        }
        stats.steps = (steps * rows) as u64;
        stats.accepted = stats.steps;
        Ok(stats)
    }
}

/// The per-row state of adaptive steps (adaptive.cu's header).
struct RowState<T> {
    t: CudaSlice<T>,
    h: CudaSlice<T>,
    hs: CudaSlice<T>,
    tst: CudaSlice<T>,
    err_prev: CudaSlice<T>,
    errv: CudaSlice<T>,
    last: CudaSlice<i32>,
    done: CudaSlice<i32>,
    rejected_last: CudaSlice<i32>,
    status: CudaSlice<i32>,
    counters: CudaSlice<i32>,
    attempts: CudaSlice<u64>,
    accepted: CudaSlice<u64>,
    rejected: CudaSlice<u64>,
}

impl<T: GpuReal> RowState<T> {
    /// The CPU driver's error for the first row that failed.
    fn error(
        &self,
        s: &Arc<cudarc::driver::CudaStream>,
        first_row: usize,
        max_steps: usize,
        t0: T,
        t1: T,
    ) -> Result<Error> {
        let read = dev("reading the failed row");
        let status = s.clone_dtoh(&self.status).map_err(&read)?;
        let t = s.clone_dtoh(&self.t).map_err(&read)?;
        let h = s.clone_dtoh(&self.h).map_err(&read)?;
        let err = s.clone_dtoh(&self.errv).map_err(&read)?;
        let Some(r) = status.iter().position(|&v| v != 0) else {
            return Ok(Error::Integration(
                "adaptive steps failed (no row says why)".into(),
            ));
        };
        let row = first_row + r;
        Ok(Error::Integration(if status[r] == 1 {
            format!(
                "row {row}: more than {max_steps} steps (t = {}, h = {:e}, interval [{t0}, {t1}])",
                t[r],
                h[r].f64()
            )
        } else {
            format!(
                "row {row}: step size {:e} underflows at t = {} (scaled error {:e}, interval [{t0}, {t1}])",
                h[r].f64(),
                t[r],
                err[r].f64()
            )
        }))
    }
}

/// The device buffers of a call, sized for its largest pass.
struct Buffers<T: GpuReal> {
    /// The state.
    y: CudaSlice<T>,
    /// The stage input / the next state (ODE); the Heun predictor (SDE).
    ytmp: CudaSlice<T>,
    /// The stages (ODE), or f and f̃ (SDE), `stride` apart.
    k: CudaSlice<T>,
    stride: usize,
    /// Brownian increments.
    dw: CudaSlice<T>,
    /// The diffusion's values at the step times (SDE).
    g: Option<CudaSlice<T>>,
    ws: FieldWorkspace<T>,
}

/// Errors as the CPU's generator does when a sample index is out of its range.
fn check_samples(first: u64, n: usize) -> Result<()> {
    let last = first
        .checked_add(n as u64 - 1)
        .ok_or_else(|| Error::Limit(format!("sample index {first} + {} overflows u64", n - 1)))?;
    if last > MAX_SAMPLE {
        let sample = first.max(MAX_SAMPLE + 1);
        return Err(Error::Limit(format!(
            "sample index {sample} exceeds the generator's {MAX_SAMPLE}"
        )));
    }
    Ok(())
}

/// `out[r·d + c]` ← the normal of (seed, stream, first + r, step), component c, rounded
/// to T and times `scale`.
#[allow(clippy::too_many_arguments)] // the generator's key, the block's shape, the scale
fn normals<T: GpuReal>(
    gpu: &Gpu,
    out: &mut CudaSlice<T>,
    seed: u64,
    stream: Stream,
    first: u64,
    step: u32,
    rows: usize,
    d: usize,
    scale: T,
) -> Result<()> {
    let f = gpu.function("normals", T::SUFFIX)?;
    let stream_id = u32::from(stream.0);
    let (rows_i, d_i) = (rows as i64, d as i64);
    let mut l = gpu.stream.launch_builder(f);
    l.arg(out)
        .arg(&seed)
        .arg(&stream_id)
        .arg(&first)
        .arg(&step)
        .arg(&rows_i)
        .arg(&d_i)
        .arg(&scale);
    // SAFETY: normals_T(T* out, u64 seed, u32 stream, u64 first_sample, u32 step, i64
    // rows, i64 d, T scale) writes rows·d values, which `out` holds (sized for the
    // largest pass); the argument types match in order.
    unsafe { l.launch(launch_config(rows * d.div_ceil(2))) }.map_err(dev("launching normals"))?;
    Ok(())
}

/// The step of a Runge–Kutta combination: one for every row, or one per row (rows of
/// `d` values).
#[derive(Clone, Copy)]
enum Step<'a, T> {
    Common(T),
    Rows(&'a CudaSlice<T>, usize),
}

/// `out` ← base + h Σ_l w_l k_l (ode/mod.rs `combine`), over `n` values.
#[allow(clippy::too_many_arguments)] // the combination's operands
fn rk_stage<T: GpuReal>(
    gpu: &Gpu,
    out: &mut CudaSlice<T>,
    base: &CudaSlice<T>,
    k: &CudaSlice<T>,
    stride: usize,
    weights: &[f64],
    step: Step<'_, T>,
    n: usize,
) -> Result<()> {
    if weights.len() > 7 {
        return Err(Error::Device(
            "a tableau with more than 7 stages (internal error)".into(),
        ));
    }
    let f = gpu.function("rk_stage", T::SUFFIX)?;
    let mut w = [T::zero(); 7];
    for (wi, &v) in w.iter_mut().zip(weights) {
        *wi = T::of(v);
    }
    let (stride_i, stages, n_i) = (stride as i64, weights.len() as i32, n as i64);
    let mut l = gpu.stream.launch_builder(f);
    l.arg(out).arg(base).arg(k).arg(&stride_i).arg(&stages);
    for wi in &w {
        l.arg(wi);
    }
    let null: u64 = 0;
    let (h, d_i) = match step {
        Step::Common(h) => (h, 1i64),
        Step::Rows(_, d) => (T::zero(), d as i64),
    };
    l.arg(&h);
    match step {
        Step::Rows(hs, _) => l.arg(hs),
        Step::Common(_) => l.arg(&null),
    };
    l.arg(&d_i).arg(&n_i);
    // SAFETY: rk_stage_T(T* out, const T* base, const T* k, i64 stride, int stages, T w0..w6,
    // T h, const T* h_rows, i64 d, i64 n): out and base hold ≥ n values, k holds
    // `stages` slots of `stride` ≥ n values, h_rows n / d (or null); the argument types
    // match in order.
    unsafe { l.launch(launch_config(n)) }.map_err(dev("launching rk_stage"))?;
    Ok(())
}

/// `out` ← x + f h + g ΔW over `rows × d` values.
#[allow(clippy::too_many_arguments)] // the step's operands
fn em_step<T: GpuReal>(
    gpu: &Gpu,
    out: &mut CudaSlice<T>,
    x: &CudaSlice<T>,
    f: &CudaView<'_, T>,
    g: &CudaView<'_, T>,
    dw: &CudaSlice<T>,
    h: T,
    rows: usize,
    d: usize,
) -> Result<()> {
    let func = gpu.function("em_step", T::SUFFIX)?;
    let (rows_i, d_i) = (rows as i64, d as i64);
    let mut l = gpu.stream.launch_builder(func);
    l.arg(out)
        .arg(x)
        .arg(f)
        .arg(g)
        .arg(dw)
        .arg(&h)
        .arg(&rows_i)
        .arg(&d_i);
    // SAFETY: em_step_T(T* out, const T* x, const T* f, const T* g, const T* dw, T h, i64
    // rows, i64 d): out, x, f and dw hold ≥ rows·d values, g d; the argument types match
    // in order.
    unsafe { l.launch(launch_config(rows * d)) }.map_err(dev("launching em_step"))?;
    Ok(())
}

/// Stochastic Heun's corrector on `y`: x ← x + (f + f̃)/2 h + (g + g̃)/2 ΔW, with f and
/// f̃ in the first two slots of `k`, `stride` apart.
#[allow(clippy::too_many_arguments)] // the step's operands
fn heun_step<T: GpuReal>(
    gpu: &Gpu,
    y: &mut CudaSlice<T>,
    k: &CudaSlice<T>,
    stride: usize,
    dw: &CudaSlice<T>,
    g: &CudaView<'_, T>,
    g2: &CudaView<'_, T>,
    h: T,
    rows: usize,
    d: usize,
) -> Result<()> {
    let func = gpu.function("heun_step", T::SUFFIX)?;
    let nd = rows * d;
    let (rows_i, d_i) = (rows as i64, d as i64);
    let f = k.slice(..nd);
    let f2 = k.slice(stride..stride + nd);
    let mut l = gpu.stream.launch_builder(func);
    l.arg(y)
        .arg(&f)
        .arg(&f2)
        .arg(g)
        .arg(g2)
        .arg(dw)
        .arg(&h)
        .arg(&rows_i)
        .arg(&d_i);
    // SAFETY: heun_step_T(T* x, const T* f, const T* f2, const T* g, const T* g2, const T*
    // dw, T h, i64 rows, i64 d): x, f, f2 and dw hold ≥ rows·d values, g and g2 d; the
    // argument types match in order.
    unsafe { l.launch(launch_config(nd)) }.map_err(dev("launching heun_step"))?;
    Ok(())
}
