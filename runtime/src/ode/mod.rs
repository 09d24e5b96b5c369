//! ODE solvers for blocks of states: x' = f(t, x), each row of a row-major `rows × d`
//! block an independent initial value problem.
//!
//! The split follows diffrax: a solver is a Butcher tableau (one file each: Euler,
//! Heun, RK4, Dormand–Prince 5(4)), the step-size controller is its own module, and one
//! driver, [`solve_block`], steps a block with a solver under fixed steps or (Dopri5)
//! adaptive steps, optionally carrying the log-determinant of the flow map and saving
//! a trajectory.
//!
//! Blocks are integrated on the calling thread; a sampler splits a batch into blocks
//! and calls [`solve_block`] per block from rayon threads, each with its own
//! [`OdeWorkspace`].
//!
//! # Row independence
//!
//! Under adaptive steps every row has its own time, step size, error norm, controller
//! memory and accept/reject decision; rows that finish are no longer evaluated (the
//! still-active rows are kept as a contiguous prefix of the workspace and passed to
//! [`Field::eval_block`] with their own times). No arithmetic mixes rows, so a row's
//! result is bitwise the same whichever block it is solved in, provided the field
//! keeps the contract of [`Field::eval_block`].
//!
//! # Log-determinant
//!
//! With `logdet` given, the driver also integrates l' = tr ∂f/∂x (exact, from
//! [`Field::eval_block_div`]) with the same stages and weights as the state, and adds
//! the result to `logdet`: on return `logdet[i] += ∫_{t0}^{t1} tr ∂f/∂x dt =
//! log det ∂x(t1)/∂x(t0)` along row i (negative of the forward integral when
//! integrating backward). The log-density transported by the flow changes by minus
//! that amount. Under adaptive steps l is one more component of the error norm, so
//! the log-determinant meets the tolerances as well.

mod controller;
mod dopri5;
mod euler;
mod heun;
mod rk4;

use crate::error::{check_finite, check_len, Error, Result};
use crate::field::Field;
use crate::Real;
use controller::{PiController, RowMemory};
/// Dopri5's error weights and error order, for the GPU backend's adaptive driver.
#[cfg(feature = "cuda")]
pub(crate) use dopri5::{ERROR as DOPRI5_ERROR, ERROR_ORDER as DOPRI5_ERROR_ORDER};

/// An explicit Runge–Kutta method: Butcher tableau with nodes `c`, matrix `a` (row j
/// has j entries) and weights `b`.
pub(crate) struct Tableau {
    pub(crate) name: &'static str,
    pub(crate) c: &'static [f64],
    pub(crate) a: &'static [&'static [f64]],
    pub(crate) b: &'static [f64],
    /// First same as last: `b` is the last row of `a`, so the last stage's input is
    /// the new state and its value is the next step's first stage.
    pub(crate) fsal: bool,
    order: u32,
}

impl Tableau {
    pub(crate) fn stages(&self) -> usize {
        self.c.len()
    }
}

/// The most stages of any tableau (Dopri5).
const MAX_STAGES: usize = 7;

/// A Runge–Kutta method for ODEs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OdeSolver {
    /// Explicit Euler: 1 evaluation a step, order 1.
    Euler,
    /// Heun's method (explicit trapezoidal rule): 2 evaluations a step, order 2.
    Heun,
    /// Classical Runge–Kutta: 4 evaluations a step, order 4.
    Rk4,
    /// Dormand–Prince 5(4): 6 evaluations a step (FSAL), order 5, embedded order-4
    /// error estimate for adaptive steps, order-4 dense output.
    Dopri5,
}

impl OdeSolver {
    pub(crate) fn tableau(self) -> &'static Tableau {
        match self {
            OdeSolver::Euler => &euler::TABLEAU,
            OdeSolver::Heun => &heun::TABLEAU,
            OdeSolver::Rk4 => &rk4::TABLEAU,
            OdeSolver::Dopri5 => &dopri5::TABLEAU,
        }
    }

    /// Classical order of convergence of the method.
    pub fn order(self) -> u32 {
        self.tableau().order
    }

    /// Number of stages (field evaluations per step, before FSAL reuse).
    pub fn stages(self) -> usize {
        self.tableau().stages()
    }

    /// Whether the method has an embedded error estimate (can take adaptive steps)
    /// and dense output (can save at arbitrary times).
    pub fn has_error_estimate(self) -> bool {
        matches!(self, OdeSolver::Dopri5)
    }

    /// The method's name, as in messages.
    pub fn name(self) -> &'static str {
        self.tableau().name
    }
}

/// Settings of adaptive step-size control (Dopri5).
///
/// The scaled error of a step of one row is the RMS over its components (and its
/// log-determinant, when carried) of `err_i / (atol + rtol·max(|y_i|, |y_new_i|))`;
/// the step is accepted when it is at most 1. The next step is
/// `h·clamp(safety·err^-beta1·err_prev^beta2, min_factor, max_factor)` after an
/// accepted step (no growth right after a rejection; `err_prev` is the last accepted
/// error, at least 10⁻⁴), `h·max(min_factor, safety·err^-beta1)` after a rejected
/// one (Hairer's `DOPRI5` PI controller).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdaptiveOptions<T> {
    /// Relative tolerance (> 10·machine epsilon, finite).
    pub rtol: T,
    /// Absolute tolerance (> 0, finite).
    pub atol: T,
    /// First step size magnitude; `None` selects it per row by Hairer's algorithm
    /// (one extra field evaluation per row).
    pub h0: Option<T>,
    /// Smallest step magnitude before the solve fails with [`Error::Integration`]
    /// (the solve also fails when a step no longer changes t in floating point).
    pub h_min: T,
    /// Largest step magnitude; `None` means |t1 − t0|.
    pub h_max: Option<T>,
    /// Most step attempts (accepted + rejected) per row.
    pub max_steps: usize,
    /// Safety factor on the controller's proposal, in (0, 1].
    pub safety: T,
    /// Smallest factor a step may shrink by, in (0, 1].
    pub min_factor: T,
    /// Largest factor a step may grow by, ≥ 1.
    pub max_factor: T,
    /// Exponent on the current error (Hairer: 0.2 − 0.75·beta2 = 0.17).
    pub beta1: T,
    /// Exponent on the previous accepted error (Hairer: 0.04; 0 gives the
    /// classical I controller).
    pub beta2: T,
}

impl<T: Real> AdaptiveOptions<T> {
    /// Tolerances `rtol`, `atol` with Hairer's defaults for the rest: automatic first
    /// step, no minimum step, maximum |t1 − t0|, 100 000 steps, safety 0.9, factors in
    /// [0.2, 10], PI exponents 0.17 and 0.04.
    pub fn new(rtol: T, atol: T) -> Self {
        AdaptiveOptions {
            rtol,
            atol,
            h0: None,
            h_min: T::zero(),
            h_max: None,
            max_steps: 100_000,
            safety: T::of(0.9),
            min_factor: T::of(0.2),
            max_factor: T::of(10.0),
            beta1: T::of(0.17),
            beta2: T::of(0.04),
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |what: &str, v: T| {
            Err(Error::InvalidArgument(format!(
                "adaptive step control: {what} is {v}"
            )))
        };
        let ten_eps = T::of(10.0) * T::epsilon();
        if !(self.rtol.is_finite() && self.rtol > ten_eps) {
            return Err(Error::InvalidArgument(format!(
                "adaptive step control: rtol is {}, must be finite and above 10·epsilon = {} for {}",
                self.rtol,
                ten_eps,
                T::NAME
            )));
        }
        if !(self.atol.is_finite() && self.atol > T::zero()) {
            return bad("atol (must be finite and > 0)", self.atol);
        }
        if let Some(h0) = self.h0 {
            if !(h0.is_finite() && h0 > T::zero()) {
                return bad("h0 (must be finite and > 0)", h0);
            }
        }
        if !(self.h_min.is_finite() && self.h_min >= T::zero()) {
            return bad("h_min (must be finite and >= 0)", self.h_min);
        }
        if let Some(h) = self.h_max {
            if h.is_nan() || h <= T::zero() {
                return bad("h_max (must be > 0)", h);
            }
        }
        if self.max_steps == 0 {
            return Err(Error::InvalidArgument(
                "adaptive step control: max_steps must be >= 1".into(),
            ));
        }
        if !(self.safety > T::zero() && self.safety <= T::one()) {
            return bad("safety (must be in (0, 1])", self.safety);
        }
        if !(self.min_factor > T::zero() && self.min_factor <= T::one()) {
            return bad("min_factor (must be in (0, 1])", self.min_factor);
        }
        if !(self.max_factor >= T::one() && self.max_factor.is_finite()) {
            return bad("max_factor (must be finite and >= 1)", self.max_factor);
        }
        if !(self.beta1 > T::zero() && self.beta1.is_finite()) {
            return bad("beta1 (must be finite and > 0)", self.beta1);
        }
        if !(self.beta2 >= T::zero() && self.beta2.is_finite()) {
            return bad("beta2 (must be finite and >= 0)", self.beta2);
        }
        Ok(())
    }
}

/// How the driver chooses step sizes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum StepSize<T> {
    /// This many equal steps over [t0, t1] (≥ 1), all rows together.
    Fixed(usize),
    /// Adaptive steps, each row its own (needs a solver with an error estimate).
    Adaptive(AdaptiveOptions<T>),
}

/// A solver and its step-size choice.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OdeOptions<T> {
    /// The Runge–Kutta method.
    pub solver: OdeSolver,
    /// Fixed or adaptive steps.
    pub step_size: StepSize<T>,
}

impl<T: Real> OdeOptions<T> {
    /// `steps` equal steps of `solver` (Dopri5 included: its fifth-order solution).
    pub fn fixed(solver: OdeSolver, steps: usize) -> Self {
        OdeOptions {
            solver,
            step_size: StepSize::Fixed(steps),
        }
    }

    /// Adaptive Dopri5 with tolerances `rtol`, `atol` and the defaults of
    /// [`AdaptiveOptions::new`].
    pub fn adaptive(rtol: T, atol: T) -> Self {
        OdeOptions {
            solver: OdeSolver::Dopri5,
            step_size: StepSize::Adaptive(AdaptiveOptions::new(rtol, atol)),
        }
    }

    /// Checks the options: at least one fixed step; adaptive steps only with a solver
    /// that has an error estimate, and valid tolerances and controller settings.
    pub fn validate(&self) -> Result<()> {
        match &self.step_size {
            StepSize::Fixed(0) => Err(Error::InvalidArgument(
                "fixed-step solve needs steps >= 1".into(),
            )),
            StepSize::Fixed(_) => Ok(()),
            StepSize::Adaptive(a) => {
                if !self.solver.has_error_estimate() {
                    return Err(Error::InvalidArgument(format!(
                        "{} has no error estimate: adaptive steps need Dopri5",
                        self.solver.name()
                    )));
                }
                a.validate()
            }
        }
    }
}

/// Which states a [`Trajectory`] records.
#[derive(Clone, Debug, PartialEq)]
pub enum SaveAt<T> {
    /// The state after every step, the initial state first (`steps + 1` points).
    /// Fixed steps only: under adaptive steps every row has its own step times.
    Steps,
    /// The state at these times, which must lie in [t0, t1] and be ordered in the
    /// direction of integration (repeats allowed). Needs a solver with dense output
    /// (Dopri5, fixed or adaptive steps): between step ends the order-4 continuous
    /// extension is used, so saving never changes the steps taken or the result; a
    /// time equal to a row's step end (t0 and t1 included) gets that state exactly.
    Times(Vec<T>),
}

/// States saved along a solve, for all rows of a block.
///
/// Layout: point `p` (a step or a save time), row `r`, component `j` at
/// `states[(p·rows + r)·d + j]`; the log-determinant, when carried, at
/// `logdet[p·rows + r]`. Buffers are reused across solves (no allocation once they
/// are large enough).
#[derive(Clone, Debug, PartialEq)]
pub struct Trajectory<T> {
    save: SaveAt<T>,
    times: Vec<T>,
    states: Vec<T>,
    logdet: Vec<T>,
    rows: usize,
    dim: usize,
}

impl<T: Real> Trajectory<T> {
    /// A trajectory that records what `save` asks for.
    pub fn new(save: SaveAt<T>) -> Self {
        Trajectory {
            save,
            times: Vec::new(),
            states: Vec::new(),
            logdet: Vec::new(),
            rows: 0,
            dim: 0,
        }
    }

    /// Records the state after every (fixed) step.
    pub fn every_step() -> Self {
        Self::new(SaveAt::Steps)
    }

    /// Records the state at `times` (dense output).
    pub fn at_times(times: Vec<T>) -> Self {
        Self::new(SaveAt::Times(times))
    }

    /// What this trajectory records.
    pub fn save_at(&self) -> &SaveAt<T> {
        &self.save
    }

    /// Number of saved points.
    pub fn len(&self) -> usize {
        self.times.len()
    }

    /// Whether nothing has been saved.
    pub fn is_empty(&self) -> bool {
        self.times.is_empty()
    }

    /// Times of the saved points.
    pub fn times(&self) -> &[T] {
        &self.times
    }

    /// All saved states (layout in the type's docs).
    pub fn states(&self) -> &[T] {
        &self.states
    }

    /// The saved block (`rows × d`) at point `p`, if there is one.
    pub fn block(&self, p: usize) -> Option<&[T]> {
        let n = self.rows * self.dim;
        self.states.get(p * n..(p + 1) * n)
    }

    /// The saved state of row `r` at point `p`, if there is one.
    pub fn state(&self, p: usize, r: usize) -> Option<&[T]> {
        if r >= self.rows {
            return None;
        }
        let at = (p * self.rows + r) * self.dim;
        self.states.get(at..at + self.dim)
    }

    /// Saved log-determinants (`len() × rows`; empty unless the solve carried one).
    pub fn logdet(&self) -> &[T] {
        &self.logdet
    }

    /// Rows of the block the trajectory was recorded for.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// State dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Sizes the buffers for `points` points of `rows × dim` (reusing capacity).
    fn reset(&mut self, points: usize, rows: usize, dim: usize, logdet: bool) {
        self.rows = rows;
        self.dim = dim;
        self.times.clear();
        self.times.resize(points, T::zero());
        self.states.clear();
        self.states.resize(points * rows * dim, T::zero());
        self.logdet.clear();
        if logdet {
            self.logdet.resize(points * rows, T::zero());
        }
    }

    /// Sizes the buffers for an SDE solve (same layout, no log-determinant) and
    /// checks the save request; used by [`crate::sde`].
    pub(crate) fn reset_steps(
        &mut self,
        steps: usize,
        rows: usize,
        dim: usize,
        what: &str,
    ) -> Result<()> {
        match self.save {
            SaveAt::Steps => {
                self.reset(steps + 1, rows, dim, false);
                Ok(())
            }
            SaveAt::Times(_) => Err(Error::Unsupported(format!(
                "{what} saves only SaveAt::Steps (no dense output)"
            ))),
        }
    }

    /// Writes time `t` and a whole block at point `p`.
    pub(crate) fn put_block(&mut self, p: usize, t: T, block: &[T]) {
        let n = self.rows * self.dim;
        self.times[p] = t;
        self.states[p * n..(p + 1) * n].copy_from_slice(block);
    }
}

/// Work counters of one solve. All counts are totals over the rows of the block
/// (divide by `rows` for per-row figures).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SolveStats {
    /// Rows in the block.
    pub rows: usize,
    /// Field evaluations, counted per row (one row at one time = 1), including the
    /// one per row of the automatic first-step selection. For SDE solves: drift
    /// evaluations.
    pub nfe: u64,
    /// Calls of [`Field::eval_block`] / [`Field::eval_block_div`] (for SDE solves:
    /// of the drift).
    pub block_evals: u64,
    /// Step attempts (accepted + rejected).
    pub steps: u64,
    /// Accepted steps.
    pub accepted: u64,
    /// Rejected steps (adaptive only).
    pub rejected: u64,
}

/// Buffers of one block solve, reused across solves so that repeated solves do not
/// allocate. Sized by [`OdeWorkspace::new`] and grown on demand by [`solve_block`].
#[derive(Clone, Debug, Default)]
pub struct OdeWorkspace<T> {
    y: Vec<T>,
    ytmp: Vec<T>,
    k: Vec<Vec<T>>,
    kdiv: Vec<Vec<T>>,
    t: Vec<T>,
    h: Vec<T>,
    hs: Vec<T>,
    tstage: Vec<T>,
    ld: Vec<T>,
    ldnew: Vec<T>,
    mem: Vec<RowMemory<T>>,
    attempts: Vec<u64>,
    last: Vec<bool>,
    perm: Vec<usize>,
    cursor: Vec<usize>,
    scratch: Vec<T>,
}

fn grow<T: Clone>(v: &mut Vec<T>, n: usize, fill: T) {
    if v.len() < n {
        v.resize(n, fill);
    }
}

impl<T: Real> OdeWorkspace<T> {
    /// A workspace for blocks of up to `rows` rows of dimension `d`, with
    /// `scratch_len` scratch elements for the field (its
    /// [`block_scratch_len`](Field::block_scratch_len)`(rows)`), for any solver.
    pub fn new(rows: usize, d: usize, scratch_len: usize) -> Self {
        let mut ws = OdeWorkspace {
            y: Vec::new(),
            ytmp: Vec::new(),
            k: Vec::new(),
            kdiv: Vec::new(),
            t: Vec::new(),
            h: Vec::new(),
            hs: Vec::new(),
            tstage: Vec::new(),
            ld: Vec::new(),
            ldnew: Vec::new(),
            mem: Vec::new(),
            attempts: Vec::new(),
            last: Vec::new(),
            perm: Vec::new(),
            cursor: Vec::new(),
            scratch: Vec::new(),
        };
        ws.ensure(rows, d, MAX_STAGES, scratch_len, true);
        ws
    }

    /// A workspace sized for `field` and blocks of up to `rows` rows.
    pub fn for_field<F: Field<T> + ?Sized>(field: &F, rows: usize) -> Self {
        Self::new(rows, field.dim(), field.block_scratch_len(rows))
    }

    fn ensure(&mut self, rows: usize, d: usize, stages: usize, scratch: usize, div: bool) {
        let n = rows * d;
        let z = T::zero();
        grow(&mut self.y, n, z);
        grow(&mut self.ytmp, n, z);
        if self.k.len() < stages {
            self.k.resize_with(stages, Vec::new);
        }
        for k in &mut self.k[..stages] {
            grow(k, n, z);
        }
        if div {
            if self.kdiv.len() < stages {
                self.kdiv.resize_with(stages, Vec::new);
            }
            for k in &mut self.kdiv[..stages] {
                grow(k, rows, z);
            }
        }
        for v in [
            &mut self.t,
            &mut self.h,
            &mut self.hs,
            &mut self.tstage,
            &mut self.ld,
            &mut self.ldnew,
        ] {
            grow(v, rows, z);
        }
        grow(&mut self.mem, rows, RowMemory::new());
        grow(&mut self.attempts, rows, 0);
        grow(&mut self.last, rows, false);
        grow(&mut self.perm, rows, 0);
        grow(&mut self.cursor, rows, 0);
        grow(&mut self.scratch, scratch, z);
    }

    /// Evaluates stage `j` for slots `0..n`: at `tstage` and `y` (j = 0) or `ytmp`.
    fn eval_stage<F: Field<T> + ?Sized>(
        &mut self,
        field: &F,
        n: usize,
        d: usize,
        j: usize,
        div: bool,
        stats: &mut SolveStats,
    ) -> Result<()> {
        let x = if j == 0 {
            &self.y[..n * d]
        } else {
            &self.ytmp[..n * d]
        };
        let v = &mut self.k[j][..n * d];
        let t = &self.tstage[..n];
        if div {
            field.eval_block_div(t, x, v, &mut self.kdiv[j][..n], &mut self.scratch)?;
        } else {
            field.eval_block(t, x, v, &mut self.scratch)?;
        }
        stats.nfe += n as u64;
        stats.block_evals += 1;
        Ok(())
    }

    /// Computes stages `first..` of `tab` for slots `0..n` (slot i at time `t[i]` with
    /// step `hs[i]`), then the new state into `ytmp` and, with `div`, the new
    /// log-determinant into `ldnew`.
    #[allow(clippy::too_many_arguments)] // private: the solve's sizes and flags
    fn rk_step<F: Field<T> + ?Sized>(
        &mut self,
        field: &F,
        tab: &Tableau,
        n: usize,
        d: usize,
        first: usize,
        div: bool,
        stats: &mut SolveStats,
    ) -> Result<()> {
        let s = tab.stages();
        for j in first..s {
            if j == 0 {
                self.tstage[..n].copy_from_slice(&self.t[..n]);
            } else {
                let c = T::of(tab.c[j]);
                for i in 0..n {
                    self.tstage[i] = self.t[i] + c * self.hs[i];
                }
                combine(
                    tab.a[j],
                    &self.k,
                    &self.y[..n * d],
                    &self.hs[..n],
                    d,
                    &mut self.ytmp[..n * d],
                );
            }
            self.eval_stage(field, n, d, j, div, stats)?;
        }
        if !tab.fsal {
            combine(
                tab.b,
                &self.k,
                &self.y[..n * d],
                &self.hs[..n],
                d,
                &mut self.ytmp[..n * d],
            );
        }
        if div {
            combine(
                tab.b,
                &self.kdiv,
                &self.ld[..n],
                &self.hs[..n],
                1,
                &mut self.ldnew[..n],
            );
        }
        Ok(())
    }

    /// Swaps everything a slot carries between steps (state, first stage, time, step,
    /// controller memory, counters, save cursor, row index).
    fn swap_slots(&mut self, a: usize, b: usize, d: usize, div: bool) {
        if a == b {
            return;
        }
        let (lo, hi) = (a.min(b), a.max(b));
        for buf in [&mut self.y, &mut self.k[0]] {
            let (x, y) = buf.split_at_mut(hi * d);
            x[lo * d..(lo + 1) * d].swap_with_slice(&mut y[..d]);
        }
        if div {
            self.kdiv[0].swap(lo, hi);
        }
        self.t.swap(lo, hi);
        self.h.swap(lo, hi);
        self.ld.swap(lo, hi);
        self.mem.swap(lo, hi);
        self.attempts.swap(lo, hi);
        self.perm.swap(lo, hi);
        self.cursor.swap(lo, hi);
    }
}

/// `out[i·d + j] = base[i·d + j] + h[i] · Σ_l w[l] k[l][i·d + j]` over the rows `i` of
/// `out` (weights that are zero are skipped).
fn combine<T: Real>(w: &[f64], k: &[Vec<T>], base: &[T], h: &[T], d: usize, out: &mut [T]) {
    let n = out.len();
    let mut first = true;
    for (wl, kl) in w.iter().zip(k) {
        if *wl == 0.0 {
            continue;
        }
        let wl = T::of(*wl);
        let kl = &kl[..n];
        if first {
            for (o, kv) in out.iter_mut().zip(kl) {
                *o = wl * *kv;
            }
            first = false;
        } else {
            for (o, kv) in out.iter_mut().zip(kl) {
                *o += wl * *kv;
            }
        }
    }
    if first {
        out.fill(T::zero());
    }
    for ((orow, brow), hi) in out.chunks_exact_mut(d).zip(base.chunks_exact(d)).zip(h) {
        for (o, b) in orow.iter_mut().zip(brow) {
            *o = *b + *hi * *o;
        }
    }
}

/// Solves x' = f(t, x) from `t0` to `t1` for every row of the block `x` (row-major
/// `rows × d`, d = `field.dim()`), in place.
///
/// - `t1 < t0` integrates backward; `t1 = t0` leaves `x` as it is.
/// - `logdet` (length `rows`), when given, accumulates ∫ tr ∂f/∂x dt along each row
///   (module docs); the field must provide [`Field::eval_block_div`].
/// - `traj`, when given, records what its [`SaveAt`] asks for.
/// - `ws` is grown as needed and reused; it may be shared by solves of any size.
///
/// Errors: [`Error::InvalidArgument`] for bad options, times or save times,
/// [`Error::Length`] for buffers of the wrong size, [`Error::NonFinite`] for
/// non-finite inputs, [`Error::Unsupported`] for a save request the solver cannot
/// honour, the field's own errors, and [`Error::Integration`] (naming the row) when an
/// adaptive row exceeds `max_steps` or its step size underflows, or a fixed-step
/// solve ends in a non-finite state. On error `x`, `logdet` and `traj` hold
/// unspecified values.
#[allow(clippy::too_many_arguments)] // the natural arguments of a solve, all distinct
pub fn solve_block<T: Real, F: Field<T> + ?Sized>(
    field: &F,
    opts: &OdeOptions<T>,
    t0: T,
    t1: T,
    x: &mut [T],
    mut logdet: Option<&mut [T]>,
    traj: Option<&mut Trajectory<T>>,
    ws: &mut OdeWorkspace<T>,
) -> Result<SolveStats> {
    opts.validate()?;
    if !(t0.is_finite() && t1.is_finite()) {
        return Err(Error::NonFinite(format!("time interval [{t0}, {t1}]")));
    }
    let d = field.dim();
    if d == 0 {
        return Err(Error::InvalidArgument("field of dimension 0".into()));
    }
    if x.len() % d != 0 {
        return Err(Error::Length {
            what: "state block (a multiple of the field's dimension)",
            found: x.len(),
            expected: (x.len() / d + 1) * d,
        });
    }
    let rows = x.len() / d;
    check_finite("initial state", x)?;
    if let Some(l) = logdet.as_deref() {
        check_len("log-determinant", l.len(), rows)?;
        check_finite("log-determinant", l)?;
    }
    let div = logdet.is_some();
    let tab = opts.solver.tableau();
    if let Some(tr) = traj.as_deref() {
        match (&tr.save, &opts.step_size) {
            (SaveAt::Steps, StepSize::Adaptive(_)) => {
                return Err(Error::Unsupported(
                    "SaveAt::Steps under adaptive steps (rows have their own step times): save at times instead".into(),
                ))
            }
            (SaveAt::Times(_), _) if !opts.solver.has_error_estimate() => {
                return Err(Error::Unsupported(format!(
                    "{} has no dense output: SaveAt::Times needs Dopri5",
                    tab.name
                )))
            }
            (SaveAt::Times(ts), _) => check_save_times(ts, t0, t1)?,
            _ => {}
        }
    }
    ws.ensure(rows, d, tab.stages(), field.block_scratch_len(rows), div);
    ws.y[..rows * d].copy_from_slice(x);
    match logdet.as_deref() {
        Some(l) => ws.ld[..rows].copy_from_slice(l),
        None => ws.ld[..rows].fill(T::zero()),
    }
    for (i, p) in ws.perm[..rows].iter_mut().enumerate() {
        *p = i;
    }
    ws.cursor[..rows].fill(0);
    let mut stats = SolveStats {
        rows,
        ..SolveStats::default()
    };
    let result = match opts.step_size {
        StepSize::Fixed(steps) => solve_fixed(
            field, tab, steps, t0, t1, rows, d, div, traj, ws, &mut stats,
        ),
        StepSize::Adaptive(a) => {
            solve_adaptive(field, &a, t0, t1, rows, d, div, traj, ws, &mut stats)
        }
    };
    result?;
    for s in 0..rows {
        let r = ws.perm[s];
        x[r * d..(r + 1) * d].copy_from_slice(&ws.y[s * d..(s + 1) * d]);
        if let Some(l) = logdet.as_deref_mut() {
            l[r] = ws.ld[s];
        }
    }
    if let StepSize::Fixed(steps) = opts.step_size {
        for (r, row) in x.chunks_exact(d).enumerate() {
            let ok = row.iter().all(|v| v.is_finite())
                && logdet.as_deref().is_none_or(|l| l[r].is_finite());
            if !ok {
                return Err(Error::Integration(format!(
                    "row {r}: the state is not finite at t = {t1} ({} with {steps} steps over [{t0}, {t1}])",
                    tab.name
                )));
            }
        }
    }
    Ok(stats)
}

fn check_save_times<T: Real>(ts: &[T], t0: T, t1: T) -> Result<()> {
    let dir = if t1 >= t0 { T::one() } else { -T::one() };
    let mut prev = t0;
    for (i, &s) in ts.iter().enumerate() {
        if !s.is_finite() {
            return Err(Error::NonFinite(format!("save time {i}")));
        }
        if dir * (s - t0) < T::zero() || dir * (t1 - s) < T::zero() {
            return Err(Error::InvalidArgument(format!(
                "save time {i} = {s} is outside [{t0}, {t1}]"
            )));
        }
        if dir * (s - prev) < T::zero() {
            return Err(Error::InvalidArgument(format!(
                "save times must be ordered from t0 = {t0} to t1 = {t1}: time {i} = {s} comes after {prev}"
            )));
        }
        prev = s;
    }
    Ok(())
}

/// Fixed steps: all rows together on the grid t0 + k·h, the last step ending at t1.
#[allow(clippy::too_many_arguments)] // private driver half
fn solve_fixed<T: Real, F: Field<T> + ?Sized>(
    field: &F,
    tab: &Tableau,
    steps: usize,
    t0: T,
    t1: T,
    rows: usize,
    d: usize,
    div: bool,
    mut traj: Option<&mut Trajectory<T>>,
    ws: &mut OdeWorkspace<T>,
    stats: &mut SolveStats,
) -> Result<()> {
    let h = (t1 - t0) / T::of(steps as f64);
    ws.hs[..rows].fill(h);
    let n_save = match traj.as_deref() {
        Some(tr) => match &tr.save {
            SaveAt::Steps => steps + 1,
            SaveAt::Times(ts) => ts.len(),
        },
        None => 0,
    };
    if let Some(tr) = traj.as_deref_mut() {
        tr.reset(n_save, rows, d, div);
        if matches!(tr.save, SaveAt::Steps) {
            tr.put_block(0, t0, &ws.y[..rows * d]);
            if div {
                tr.logdet[..rows].copy_from_slice(&ws.ld[..rows]);
            }
        } else {
            emit_initial(tr, ws, rows, d, t0, div);
        }
    }
    let mut have_k0 = false;
    let mut t = t0;
    for step in 0..steps {
        ws.t[..rows].fill(t);
        let first = usize::from(have_k0);
        if rows > 0 {
            // An empty block evaluates nothing (fields need not accept 0 rows).
            ws.rk_step(field, tab, rows, d, first, div, stats)?;
        }
        let t_new = if step + 1 == steps {
            t1
        } else {
            t0 + T::of((step + 1) as f64) * h
        };
        if let Some(tr) = traj.as_deref_mut() {
            match tr.save {
                SaveAt::Steps => {
                    tr.put_block(step + 1, t_new, &ws.ytmp[..rows * d]);
                    if div {
                        let at = (step + 1) * rows;
                        tr.logdet[at..at + rows].copy_from_slice(&ws.ldnew[..rows]);
                    }
                }
                SaveAt::Times(_) => {
                    for s in 0..rows {
                        emit_dense(tr, ws, s, d, t, t_new, h, div);
                    }
                }
            }
        }
        std::mem::swap(&mut ws.y, &mut ws.ytmp);
        if div {
            std::mem::swap(&mut ws.ld, &mut ws.ldnew);
        }
        if tab.fsal {
            let last = tab.stages() - 1;
            ws.k.swap(0, last);
            if div {
                ws.kdiv.swap(0, last);
            }
            have_k0 = true;
        }
        t = t_new;
    }
    stats.steps += (steps * rows) as u64;
    stats.accepted += (steps * rows) as u64;
    Ok(())
}

/// Saves the initial state at every save time equal to t0.
fn emit_initial<T: Real>(
    tr: &mut Trajectory<T>,
    ws: &mut OdeWorkspace<T>,
    rows: usize,
    d: usize,
    t0: T,
    div: bool,
) {
    let SaveAt::Times(ts) = &tr.save else {
        return;
    };
    let mut p = 0;
    while p < ts.len() && ts[p] == t0 {
        tr.times[p] = t0;
        let at = p * rows * d;
        tr.states[at..at + rows * d].copy_from_slice(&ws.y[..rows * d]);
        if div {
            tr.logdet[p * rows..(p + 1) * rows].copy_from_slice(&ws.ld[..rows]);
        }
        p += 1;
    }
    ws.cursor[..rows].fill(p);
}

/// After slot `s` stepped from `t_old` (state `y`, log-det `ld`) to `t_new` (`ytmp`,
/// `ldnew`) with step `h`, saves every pending save time up to `t_new`: the new state
/// exactly at `t_new`, the Dopri5 continuous extension before it.
#[allow(clippy::too_many_arguments)] // private helper
fn emit_dense<T: Real>(
    tr: &mut Trajectory<T>,
    ws: &mut OdeWorkspace<T>,
    s: usize,
    d: usize,
    t_old: T,
    t_new: T,
    h: T,
    div: bool,
) {
    let SaveAt::Times(ts) = &tr.save else {
        return;
    };
    let rows = tr.rows;
    let r = ws.perm[s];
    let dir = if h < T::zero() { -T::one() } else { T::one() };
    let mut p = ws.cursor[s];
    while p < ts.len() && dir * (ts[p] - t_new) <= T::zero() {
        let tp = ts[p];
        tr.times[p] = tp;
        let at = (p * rows + r) * d;
        let out = &mut tr.states[at..at + d];
        if tp == t_new {
            out.copy_from_slice(&ws.ytmp[s * d..(s + 1) * d]);
            if div {
                tr.logdet[p * rows + r] = ws.ldnew[s];
            }
        } else {
            let theta = (tp - t_old) / h;
            for (j, o) in out.iter_mut().enumerate() {
                let i = s * d + j;
                let k = std::array::from_fn(|l| ws.k[l][i]);
                *o = dopri5::dense(theta, h, ws.y[i], ws.ytmp[i], k);
            }
            if div {
                let k = std::array::from_fn(|l| ws.kdiv[l][s]);
                tr.logdet[p * rows + r] = dopri5::dense(theta, h, ws.ld[s], ws.ldnew[s], k);
            }
        }
        p += 1;
    }
    ws.cursor[s] = p;
}

/// Adaptive Dopri5: every row its own step; finished rows leave the active prefix.
#[allow(clippy::too_many_arguments)] // private driver half
fn solve_adaptive<T: Real, F: Field<T> + ?Sized>(
    field: &F,
    a: &AdaptiveOptions<T>,
    t0: T,
    t1: T,
    rows: usize,
    d: usize,
    div: bool,
    mut traj: Option<&mut Trajectory<T>>,
    ws: &mut OdeWorkspace<T>,
    stats: &mut SolveStats,
) -> Result<()> {
    let tab = &dopri5::TABLEAU;
    if let Some(tr) = traj.as_deref_mut() {
        let n = match &tr.save {
            SaveAt::Times(ts) => ts.len(),
            SaveAt::Steps => 0,
        };
        tr.reset(n, rows, d, div);
        emit_initial(tr, ws, rows, d, t0, div);
    }
    if rows == 0 || t1 == t0 {
        return Ok(());
    }
    let dir = if t1 > t0 { T::one() } else { -T::one() };
    let span = (t1 - t0).abs();
    let h_max = a.h_max.unwrap_or(span).min(span);
    let ctrl = PiController::new(a, h_max);
    let (rtol, atol) = (a.rtol, a.atol);
    let ncomp = T::of((d + usize::from(div)) as f64);

    ws.t[..rows].fill(t0);
    ws.mem[..rows].fill(RowMemory::new());
    ws.attempts[..rows].fill(0);
    // First stage at t0 (FSAL keeps it up to date afterwards).
    ws.tstage[..rows].fill(t0);
    ws.eval_stage(field, rows, d, 0, div, stats)?;
    match a.h0 {
        Some(h0) => ws.h[..rows].fill(dir * h0.min(h_max)),
        None => initial_steps(field, a, rows, d, t0, dir, h_max, ws, stats)?,
    }

    let mut n = rows;
    let ten_eps = T::of(10.0) * T::epsilon();
    let lim = T::of(1.01);
    while n > 0 {
        for s in 0..n {
            if ws.attempts[s] >= a.max_steps as u64 {
                return Err(Error::Integration(format!(
                    "row {}: more than {} steps (t = {}, h = {:e}, interval [{t0}, {t1}])",
                    ws.perm[s],
                    a.max_steps,
                    ws.t[s],
                    ws.h[s].f64()
                )));
            }
            let (t, h) = (ws.t[s], ws.h[s]);
            // Reach t1 exactly, without leaving a sliver of a last step.
            if dir * (t + lim * h - t1) >= T::zero() {
                ws.hs[s] = t1 - t;
                ws.last[s] = true;
            } else {
                ws.hs[s] = h;
                ws.last[s] = false;
            }
        }
        ws.rk_step(field, tab, n, d, 1, div, stats)?;
        stats.steps += n as u64;
        // Judge every slot; finished slots leave the prefix (scanned downward so a
        // swapped-in slot has already been handled).
        for s in (0..n).rev() {
            ws.attempts[s] += 1;
            let hs = ws.hs[s];
            let err = error_norm(ws, s, d, hs, rtol, atol, div, ncomp);
            let mut mem = ws.mem[s];
            let verdict = ctrl.judge(hs, err, &mut mem);
            ws.mem[s] = mem;
            let t_old = ws.t[s];
            if verdict.accept {
                stats.accepted += 1;
                let t_new = if ws.last[s] { t1 } else { t_old + hs };
                if let Some(tr) = traj.as_deref_mut() {
                    emit_dense(tr, ws, s, d, t_old, t_new, hs, div);
                }
                let (lo, hi) = (s * d, (s + 1) * d);
                ws.y[lo..hi].copy_from_slice(&ws.ytmp[lo..hi]);
                let last = tab.stages() - 1;
                let (k0, rest) = ws.k.split_at_mut(1);
                k0[0][lo..hi].copy_from_slice(&rest[last - 1][lo..hi]);
                if div {
                    ws.ld[s] = ws.ldnew[s];
                    ws.kdiv[0][s] = ws.kdiv[last][s];
                }
                ws.t[s] = t_new;
                if ws.last[s] {
                    ws.swap_slots(s, n - 1, d, div);
                    n -= 1;
                    continue;
                }
            } else {
                stats.rejected += 1;
            }
            let h_next = verdict.h_next;
            let t = ws.t[s];
            if !(h_next.abs() > a.h_min && h_next.abs() > ten_eps * t.abs()) {
                return Err(Error::Integration(format!(
                    "row {}: step size {:e} underflows at t = {t} (scaled error {:e}, interval [{t0}, {t1}])",
                    ws.perm[s],
                    h_next.f64(),
                    err.f64()
                )));
            }
            ws.h[s] = h_next;
        }
    }
    Ok(())
}

/// The scaled RMS error of slot `s` after a Dopri5 step of size `h`.
#[allow(clippy::too_many_arguments)] // private helper
fn error_norm<T: Real>(
    ws: &OdeWorkspace<T>,
    s: usize,
    d: usize,
    h: T,
    rtol: T,
    atol: T,
    div: bool,
    ncomp: T,
) -> T {
    let e: [T; 7] = std::array::from_fn(|l| T::of(dopri5::ERROR[l]));
    let mut sum = T::zero();
    for j in 0..d {
        let i = s * d + j;
        let mut acc = T::zero();
        for (l, el) in e.iter().enumerate() {
            if *el != T::zero() {
                acc += *el * ws.k[l][i];
            }
        }
        let sc = atol + rtol * ws.y[i].abs().max(ws.ytmp[i].abs());
        let r = h * acc / sc;
        sum += r * r;
    }
    if div {
        let mut acc = T::zero();
        for (l, el) in e.iter().enumerate() {
            if *el != T::zero() {
                acc += *el * ws.kdiv[l][s];
            }
        }
        let sc = atol + rtol * ws.ld[s].abs().max(ws.ldnew[s].abs());
        let r = h * acc / sc;
        sum += r * r;
    }
    (sum / ncomp).sqrt()
}

/// Hairer's starting step for every row (one extra evaluation per row).
#[allow(clippy::too_many_arguments)] // private helper
fn initial_steps<T: Real, F: Field<T> + ?Sized>(
    field: &F,
    a: &AdaptiveOptions<T>,
    rows: usize,
    d: usize,
    t0: T,
    dir: T,
    h_max: T,
    ws: &mut OdeWorkspace<T>,
    stats: &mut SolveStats,
) -> Result<()> {
    let dn = T::of(d as f64);
    for s in 0..rows {
        let (mut d0, mut d1) = (T::zero(), T::zero());
        for j in 0..d {
            let i = s * d + j;
            let sc = a.atol + a.rtol * ws.y[i].abs();
            d0 += (ws.y[i] / sc).powi(2);
            d1 += (ws.k[0][i] / sc).powi(2);
        }
        let (d0, d1) = ((d0 / dn).sqrt(), (d1 / dn).sqrt());
        let h = controller::initial_trial(d0, d1, h_max);
        ws.h[s] = h;
        ws.tstage[s] = t0 + dir * h;
        for j in 0..d {
            let i = s * d + j;
            ws.ytmp[i] = ws.y[i] + dir * h * ws.k[0][i];
        }
    }
    // Stage 1's buffer is free before the first step.
    field.eval_block(
        &ws.tstage[..rows],
        &ws.ytmp[..rows * d],
        &mut ws.k[1][..rows * d],
        &mut ws.scratch,
    )?;
    stats.nfe += rows as u64;
    stats.block_evals += 1;
    for s in 0..rows {
        let (mut d1, mut d2) = (T::zero(), T::zero());
        for j in 0..d {
            let i = s * d + j;
            let sc = a.atol + a.rtol * ws.y[i].abs();
            d1 += (ws.k[0][i] / sc).powi(2);
            d2 += ((ws.k[1][i] - ws.k[0][i]) / sc).powi(2);
        }
        let h = ws.h[s];
        let (d1, d2) = ((d1 / dn).sqrt(), (d2 / dn).sqrt() / h);
        let h = controller::initial_final(h, d1, d2, dopri5::ERROR_ORDER, h_max);
        ws.h[s] = dir * h;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 17 order conditions up to order 5 (Butcher's rooted trees), as
    /// (order, Σ bᵢ Φᵢ(tree), 1/γ(tree)).
    fn conditions(c: &[f64], a: &[&[f64]], b: &[f64]) -> Vec<(u32, f64, f64)> {
        let s = b.len();
        let am = |v: &[f64]| -> Vec<f64> {
            (0..s)
                .map(|i| a[i].iter().zip(v).map(|(x, y)| x * y).sum())
                .collect()
        };
        let pw = |k: i32| -> Vec<f64> { c.iter().map(|x| x.powi(k)).collect() };
        let mul =
            |u: &[f64], v: &[f64]| -> Vec<f64> { u.iter().zip(v).map(|(x, y)| x * y).collect() };
        let dot = |v: &[f64]| -> f64 { b.iter().zip(v).map(|(x, y)| x * y).sum() };
        let one = vec![1.0; s];
        let ac = am(c);
        let ac2 = am(&pw(2));
        let aac = am(&ac);
        vec![
            (1, dot(&one), 1.0),
            (2, dot(c), 1.0 / 2.0),
            (3, dot(&pw(2)), 1.0 / 3.0),
            (3, dot(&ac), 1.0 / 6.0),
            (4, dot(&pw(3)), 1.0 / 4.0),
            (4, dot(&mul(c, &ac)), 1.0 / 8.0),
            (4, dot(&ac2), 1.0 / 12.0),
            (4, dot(&aac), 1.0 / 24.0),
            (5, dot(&pw(4)), 1.0 / 5.0),
            (5, dot(&mul(&pw(2), &ac)), 1.0 / 10.0),
            (5, dot(&mul(c, &ac2)), 1.0 / 15.0),
            (5, dot(&mul(c, &aac)), 1.0 / 30.0),
            (5, dot(&mul(&ac, &ac)), 1.0 / 20.0),
            (5, dot(&am(&pw(3))), 1.0 / 20.0),
            (5, dot(&am(&mul(c, &ac))), 1.0 / 40.0),
            (5, dot(&am(&ac2)), 1.0 / 60.0),
            (5, dot(&am(&aac)), 1.0 / 120.0),
        ]
    }

    /// Every tableau satisfies the row-sum condition and exactly the order conditions
    /// of its order (and, below order 5, fails one of the next order); Dopri5's
    /// embedded weights b − e are of order exactly 4.
    #[test]
    fn tableaux_have_their_orders() {
        let check = |name: &str, c: &[f64], a: &[&[f64]], b: &[f64], order: u32| {
            for (i, row) in a.iter().enumerate() {
                let sum: f64 = row.iter().sum();
                assert!((sum - c[i]).abs() < 1e-15, "{name}: row sum {i}");
            }
            let conds = conditions(c, a, b);
            for (p, got, want) in &conds {
                if *p <= order {
                    assert!(
                        (got - want).abs() < 1e-14,
                        "{name}: order-{p} condition {got} vs {want}"
                    );
                }
            }
            if order < 5 {
                assert!(
                    conds
                        .iter()
                        .any(|(p, got, want)| *p == order + 1 && (got - want).abs() > 1e-6),
                    "{name} is of order above {order}"
                );
            }
        };
        for solver in [
            OdeSolver::Euler,
            OdeSolver::Heun,
            OdeSolver::Rk4,
            OdeSolver::Dopri5,
        ] {
            let t = solver.tableau();
            check(t.name, t.c, t.a, t.b, t.order);
        }
        let t = &dopri5::TABLEAU;
        let b4: Vec<f64> = t.b.iter().zip(dopri5::ERROR).map(|(b, e)| b - e).collect();
        // The embedded method uses all seven stages (the seventh is f at y₅).
        check("Dopri5 embedded", t.c, t.a, &b4, 4);
        assert!(t.fsal && t.a[6].iter().zip(t.b).all(|(x, y)| x == y) && t.b[6] == 0.0);
    }

    /// The continuous extension interpolates: θ = 0 gives y0, θ = 1 gives y1, and it
    /// reproduces a cubic polynomial's values (order-4 dense output is exact for it
    /// when the stages are the exact derivatives at the stage points).
    #[test]
    fn dense_output_reproduces_polynomials() {
        let t = &dopri5::TABLEAU;
        // y' = 3t² + 2t − 1 (f independent of y): stages are exact derivatives.
        let y = |t: f64| t * t * t + t * t - t + 0.5;
        let f = |t: f64| 3.0 * t * t + 2.0 * t - 1.0;
        let (t0, h) = (0.3, 0.7);
        let k: [f64; 7] = std::array::from_fn(|j| f(t0 + t.c[j] * h));
        let (y0, y1) = (y(t0), y(t0 + h));
        assert_eq!(dopri5::dense(0.0, h, y0, y1, k), y0);
        assert!((dopri5::dense(1.0, h, y0, y1, k) - y1).abs() < 1e-15);
        for i in 1..10 {
            let th = i as f64 / 10.0;
            let got = dopri5::dense(th, h, y0, y1, k);
            assert!((got - y(t0 + th * h)).abs() < 1e-14, "θ = {th}: {got}");
        }
    }
}
