//! SDE solvers for blocks of states with diagonal noise:
//! dx = f(t, x) dt + g(t, x) ⊙ dW, each row of a row-major `rows × d` block an
//! independent path.
//!
//! Two fixed-step schemes: Euler–Maruyama (Itô; strong order ½, weak order 1) and
//! stochastic Heun (Stratonovich; strong order 1 for commutative noise, which includes
//! additive noise and diagonal noise where g_i depends on x_i only, else ½).
//!
//! Increments come from an [`IncrementSource`]. With the counter-based
//! [`Brownian`] generator ([`solve_sde_block`]), row `i` of a block uses sample index
//! `first_sample + i` and its `k`-th step uses step index `k`, so a row's path, and
//! hence its result, is bitwise the same for any block split or thread count (given
//! a drift that keeps the row-independence contract of [`Field::eval_block`]).
//!
//! Time may run backward (`t1 < t0`, reverse-time samplers): the step h is negative
//! and the increments have variance |h| (ΔW = √|h|·ξ).

use crate::brownian::Brownian;
use crate::error::{check_finite, Error, Result};
use crate::field::Field;
use crate::ode::{SolveStats, Trajectory};
use crate::Real;

/// A fixed-step scheme for SDEs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SdeScheme {
    /// Euler–Maruyama, Itô: x₊ = x + f(t,x) h + g(t,x) ⊙ ΔW. One drift and one
    /// diffusion evaluation per step.
    EulerMaruyama,
    /// Stochastic Heun, Stratonovich: predictor x̃ = x + f h + g ⊙ ΔW, then
    /// x₊ = x + ½(f + f̃) h + ½(g + g̃) ⊙ ΔW with f̃, g̃ at (t + h, x̃). Two drift and two
    /// diffusion evaluations per step.
    StochasticHeun,
}

impl SdeScheme {
    /// The scheme's name, as in messages.
    pub fn name(self) -> &'static str {
        match self {
            SdeScheme::EulerMaruyama => "Euler–Maruyama",
            SdeScheme::StochasticHeun => "stochastic Heun",
        }
    }
}

/// A fixed-step SDE solve: scheme and number of steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SdeOptions {
    /// The scheme.
    pub scheme: SdeScheme,
    /// Equal steps over [t0, t1] (≥ 1).
    pub steps: usize,
}

impl SdeOptions {
    /// `steps` steps of `scheme`.
    pub fn new(scheme: SdeScheme, steps: usize) -> Self {
        SdeOptions { scheme, steps }
    }
}

/// A diagonal diffusion coefficient g(t, x) ∈ R^d: the noise of component j is
/// g_j(t, x) dW_j.
pub trait Diffusion<T: Real>: Send + Sync {
    /// State dimension d.
    fn dim(&self) -> usize;

    /// Writes g(t, x) into `g` (both of length d).
    fn eval(&self, t: T, x: &[T], g: &mut [T]) -> Result<()>;

    /// Whether g depends on t only (additive noise: Itô and Stratonovich coincide).
    fn is_additive(&self) -> bool {
        false
    }

    /// Evaluates a block of rows (row-major `rows × d`), row `i` at time `t[i]`. The
    /// default loops over [`eval`](Diffusion::eval).
    fn eval_block(&self, t: &[T], x: &[T], g: &mut [T]) -> Result<()> {
        let d = self.dim();
        crate::field::check_block(d, t.len(), x, g)?;
        for ((ti, xi), gi) in t.iter().zip(x.chunks_exact(d)).zip(g.chunks_exact_mut(d)) {
            self.eval(*ti, xi, gi)?;
        }
        Ok(())
    }
}

macro_rules! forward_diffusion {
    ($($ty:ty),*) => {$(
        impl<T: Real, G: Diffusion<T> + ?Sized> Diffusion<T> for $ty {
            fn dim(&self) -> usize { (**self).dim() }
            fn eval(&self, t: T, x: &[T], g: &mut [T]) -> Result<()> { (**self).eval(t, x, g) }
            fn is_additive(&self) -> bool { (**self).is_additive() }
            fn eval_block(&self, t: &[T], x: &[T], g: &mut [T]) -> Result<()> {
                (**self).eval_block(t, x, g)
            }
        }
    )*};
}
forward_diffusion!(&G, Box<G>, std::sync::Arc<G>);

/// Constant scalar noise: g(t, x) = σ in every component (additive).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ConstantDiffusion<T> {
    dim: usize,
    sigma: T,
}

impl<T: Real> ConstantDiffusion<T> {
    /// σ in each of `dim` components.
    pub fn new(dim: usize, sigma: T) -> Self {
        ConstantDiffusion { dim, sigma }
    }
}

impl<T: Real> Diffusion<T> for ConstantDiffusion<T> {
    fn dim(&self) -> usize {
        self.dim
    }
    fn eval(&self, _t: T, x: &[T], g: &mut [T]) -> Result<()> {
        crate::error::check_len("state", x.len(), self.dim)?;
        crate::error::check_len("diffusion output", g.len(), self.dim)?;
        g.fill(self.sigma);
        Ok(())
    }
    fn is_additive(&self) -> bool {
        true
    }
}

/// Time-dependent scalar noise g(t, x) = σ(t) in every component (additive), e.g.
/// √β(t) of the VP-SDE.
#[derive(Clone, Copy, Debug)]
pub struct ScalarDiffusion<S> {
    dim: usize,
    sigma: S,
}

impl<S> ScalarDiffusion<S> {
    /// σ(t) in each of `dim` components.
    pub fn new(dim: usize, sigma: S) -> Self {
        ScalarDiffusion { dim, sigma }
    }
}

impl<T: Real, S: Fn(T) -> T + Send + Sync> Diffusion<T> for ScalarDiffusion<S> {
    fn dim(&self) -> usize {
        self.dim
    }
    fn eval(&self, t: T, x: &[T], g: &mut [T]) -> Result<()> {
        crate::error::check_len("state", x.len(), self.dim)?;
        crate::error::check_len("diffusion output", g.len(), self.dim)?;
        g.fill((self.sigma)(t));
        Ok(())
    }
    fn is_additive(&self) -> bool {
        true
    }
}

/// State-dependent diagonal noise from a closure `g(t, x, out)`.
#[derive(Clone, Copy, Debug)]
pub struct DiagonalDiffusion<G> {
    dim: usize,
    g: G,
}

impl<G> DiagonalDiffusion<G> {
    /// The diffusion `g` of dimension `dim`.
    pub fn new(dim: usize, g: G) -> Self {
        DiagonalDiffusion { dim, g }
    }
}

impl<T: Real, G: Fn(T, &[T], &mut [T]) + Send + Sync> Diffusion<T> for DiagonalDiffusion<G> {
    fn dim(&self) -> usize {
        self.dim
    }
    fn eval(&self, t: T, x: &[T], g: &mut [T]) -> Result<()> {
        crate::error::check_len("state", x.len(), self.dim)?;
        crate::error::check_len("diffusion output", g.len(), self.dim)?;
        (self.g)(t, x, g);
        Ok(())
    }
}

/// Where a solve gets its Brownian increments.
///
/// Closures `FnMut(step, h, d, dw) -> Result<()>` implement it, which lets callers
/// build their own paths (tests build coarse paths as sums of fine increments).
pub trait IncrementSource<T: Real> {
    /// Fills `dw` (row-major `rows × d`) with the increments of step `step` (counted
    /// from 0 at t0), a step of size `h` (negative backward: the variance is |h|).
    fn fill(&mut self, step: u64, h: T, d: usize, dw: &mut [T]) -> Result<()>;
}

impl<T: Real, C: FnMut(u64, T, usize, &mut [T]) -> Result<()>> IncrementSource<T> for C {
    fn fill(&mut self, step: u64, h: T, d: usize, dw: &mut [T]) -> Result<()> {
        self(step, h, d, dw)
    }
}

/// Increments from the counter-based generator: row `i` of the block is sample
/// `first_sample + i`, step `k` is step index `k` ([`Brownian::increments`]; a step's
/// block is drawn by one [`Brownian::increments_block`]).
#[derive(Clone, Copy, Debug)]
pub struct BrownianIncrements<'a> {
    brownian: &'a Brownian,
    first_sample: u64,
}

impl<'a> BrownianIncrements<'a> {
    /// The paths of samples `first_sample, first_sample + 1, …` of `brownian`.
    pub fn new(brownian: &'a Brownian, first_sample: u64) -> Self {
        BrownianIncrements {
            brownian,
            first_sample,
        }
    }
}

impl<T: Real> IncrementSource<T> for BrownianIncrements<'_> {
    fn fill(&mut self, step: u64, h: T, d: usize, dw: &mut [T]) -> Result<()> {
        let rows = dw.len().checked_div(d).unwrap_or(0);
        if rows == 0 {
            return Ok(());
        }
        // All rows in one call (the generator's lanes run across short rows).
        self.brownian
            .increments_block(self.first_sample, step, h, d, &mut dw[..rows * d])
    }
}

/// Buffers of one block SDE solve, reused across solves (grown on demand).
#[derive(Clone, Debug, Default)]
pub struct SdeWorkspace<T> {
    f: Vec<T>,
    g: Vec<T>,
    dw: Vec<T>,
    xt: Vec<T>,
    f2: Vec<T>,
    g2: Vec<T>,
    t: Vec<T>,
    scratch: Vec<T>,
}

fn grow<T: Clone>(v: &mut Vec<T>, n: usize, fill: T) {
    if v.len() < n {
        v.resize(n, fill);
    }
}

impl<T: Real> SdeWorkspace<T> {
    /// A workspace for blocks of up to `rows` rows of dimension `d`, with
    /// `scratch_len` scratch elements for the drift (its
    /// [`block_scratch_len`](Field::block_scratch_len)`(rows)`).
    pub fn new(rows: usize, d: usize, scratch_len: usize) -> Self {
        let mut ws = SdeWorkspace {
            f: Vec::new(),
            g: Vec::new(),
            dw: Vec::new(),
            xt: Vec::new(),
            f2: Vec::new(),
            g2: Vec::new(),
            t: Vec::new(),
            scratch: Vec::new(),
        };
        ws.ensure(rows, d, scratch_len);
        ws
    }

    /// A workspace sized for `drift` and blocks of up to `rows` rows.
    pub fn for_field<F: Field<T> + ?Sized>(drift: &F, rows: usize) -> Self {
        Self::new(rows, drift.dim(), drift.block_scratch_len(rows))
    }

    fn ensure(&mut self, rows: usize, d: usize, scratch: usize) {
        let z = T::zero();
        for v in [
            &mut self.f,
            &mut self.g,
            &mut self.dw,
            &mut self.xt,
            &mut self.f2,
            &mut self.g2,
        ] {
            grow(v, rows * d, z);
        }
        grow(&mut self.t, rows, z);
        grow(&mut self.scratch, scratch, z);
    }
}

/// Solves the SDE from `t0` to `t1` in `opts.steps` equal steps for every row of the
/// block `x` (row-major `rows × d`), in place, with increments from the
/// counter-based generator: row `i` is sample `first_sample + i` (module docs).
///
/// `traj`, when given, must ask for [`SaveAt::Steps`](crate::ode::SaveAt::Steps): it
/// records the state after every step, the initial state first. Errors as
/// [`solve_sde_block_with`].
#[allow(clippy::too_many_arguments)] // the natural arguments of a solve, all distinct
pub fn solve_sde_block<T, F, G>(
    drift: &F,
    diffusion: &G,
    opts: &SdeOptions,
    t0: T,
    t1: T,
    x: &mut [T],
    brownian: &Brownian,
    first_sample: u64,
    traj: Option<&mut Trajectory<T>>,
    ws: &mut SdeWorkspace<T>,
) -> Result<SolveStats>
where
    T: Real,
    F: Field<T> + ?Sized,
    G: Diffusion<T> + ?Sized,
{
    let mut noise = BrownianIncrements::new(brownian, first_sample);
    solve_sde_block_with(drift, diffusion, opts, t0, t1, x, &mut noise, traj, ws)
}

/// Like [`solve_sde_block`], with the increments from `noise`: step `k` (0-based, from
/// t0) asks it for the `rows × d` increments over [t_k, t_k + h].
///
/// Errors: [`Error::InvalidArgument`] for zero steps or a drift and diffusion of
/// different dimensions, [`Error::Length`] for a block that is not `rows × d`,
/// [`Error::NonFinite`] for non-finite times or initial states,
/// [`Error::Unsupported`] for a trajectory that does not save steps, the drift's,
/// diffusion's and noise source's own errors, and [`Error::Integration`] (naming the
/// row) when a path ends in a non-finite state. On error `x` and `traj` hold
/// unspecified values.
#[allow(clippy::too_many_arguments)] // the natural arguments of a solve, all distinct
pub fn solve_sde_block_with<T, F, G, I>(
    drift: &F,
    diffusion: &G,
    opts: &SdeOptions,
    t0: T,
    t1: T,
    x: &mut [T],
    noise: &mut I,
    mut traj: Option<&mut Trajectory<T>>,
    ws: &mut SdeWorkspace<T>,
) -> Result<SolveStats>
where
    T: Real,
    F: Field<T> + ?Sized,
    G: Diffusion<T> + ?Sized,
    I: IncrementSource<T> + ?Sized,
{
    let steps = opts.steps;
    if steps == 0 {
        return Err(Error::InvalidArgument("SDE solve needs steps >= 1".into()));
    }
    if !(t0.is_finite() && t1.is_finite()) {
        return Err(Error::NonFinite(format!("time interval [{t0}, {t1}]")));
    }
    let d = drift.dim();
    if d == 0 || diffusion.dim() != d {
        return Err(Error::InvalidArgument(format!(
            "drift of dimension {d} and diffusion of dimension {} (must be equal and > 0)",
            diffusion.dim()
        )));
    }
    if x.len() % d != 0 {
        return Err(Error::Length {
            what: "state block (a multiple of the drift's dimension)",
            found: x.len(),
            expected: (x.len() / d + 1) * d,
        });
    }
    check_finite("initial state", x)?;
    let rows = x.len() / d;
    let n = rows * d;
    ws.ensure(rows, d, drift.block_scratch_len(rows));
    if let Some(tr) = traj.as_deref_mut() {
        tr.reset_steps(steps, rows, d, "an SDE solve")?;
        tr.put_block(0, t0, x);
    }
    let mut stats = SolveStats {
        rows,
        ..SolveStats::default()
    };
    let h = (t1 - t0) / T::of(steps as f64);
    let half = T::of(0.5);
    let time = |k: usize| {
        if k == steps {
            t1
        } else {
            t0 + T::of(k as f64) * h
        }
    };
    let SdeWorkspace {
        f,
        g,
        dw,
        xt,
        f2,
        g2,
        t,
        scratch,
    } = ws;
    let (f, g, dw, xt, f2, g2, t) = (
        &mut f[..n],
        &mut g[..n],
        &mut dw[..n],
        &mut xt[..n],
        &mut f2[..n],
        &mut g2[..n],
        &mut t[..rows],
    );
    for k in 0..steps {
        let (tk, tk1) = (time(k), time(k + 1));
        if rows == 0 {
            // An empty block evaluates nothing (fields need not accept 0 rows).
            if let Some(tr) = traj.as_deref_mut() {
                tr.put_block(k + 1, tk1, x);
            }
            continue;
        }
        t.fill(tk);
        drift.eval_block(t, x, f, scratch)?;
        diffusion.eval_block(t, x, g)?;
        noise.fill(k as u64, h, d, dw)?;
        stats.nfe += rows as u64;
        stats.block_evals += 1;
        match opts.scheme {
            SdeScheme::EulerMaruyama => {
                for (((xi, fi), gi), wi) in x.iter_mut().zip(&*f).zip(&*g).zip(&*dw) {
                    *xi = *xi + *fi * h + *gi * *wi;
                }
            }
            SdeScheme::StochasticHeun => {
                for ((((xti, xi), fi), gi), wi) in
                    xt.iter_mut().zip(&*x).zip(&*f).zip(&*g).zip(&*dw)
                {
                    *xti = *xi + *fi * h + *gi * *wi;
                }
                t.fill(tk1);
                drift.eval_block(t, xt, f2, scratch)?;
                diffusion.eval_block(t, xt, g2)?;
                stats.nfe += rows as u64;
                stats.block_evals += 1;
                for (((((xi, fi), gi), f2i), g2i), wi) in
                    x.iter_mut().zip(&*f).zip(&*g).zip(&*f2).zip(&*g2).zip(&*dw)
                {
                    *xi = *xi + (*fi + *f2i) * half * h + (*gi + *g2i) * half * *wi;
                }
            }
        }
        if let Some(tr) = traj.as_deref_mut() {
            tr.put_block(k + 1, tk1, x);
        }
    }
    stats.steps = (steps * rows) as u64;
    stats.accepted = stats.steps;
    for (r, row) in x.chunks_exact(d).enumerate() {
        if !row.iter().all(|v| v.is_finite()) {
            return Err(Error::Integration(format!(
                "row {r}: the state is not finite at t = {t1} ({} with {steps} steps over [{t0}, {t1}])",
                opts.scheme.name()
            )));
        }
    }
    Ok(stats)
}
