//! Fixed-grid Euler, Heun and RK4 as step maps built from graph ops, a forward pass
//! that keeps no tape across steps, and the discrete adjoint with dynamic scaling.

use socflow_runtime::brownian::Brownian;

use crate::autodiff::{self, Backend, BinaryOp, Broadcast, DType, Graph, Reduction, Tensor, Var};

use super::error::{Error, Result};
use super::policy::PrecisionPolicy;
use super::scaling::{AdjointStats, IncreaseRule, Scaler};

/// A right-hand side f(t, y; θ) built on a graph.
///
/// The solver does the casting: `t` (1 × 1), `y` (batch × features) and every
/// parameter arrive at the policy's network precision L, and the result must have
/// `y`'s shape and precision L (the solver checks, and casts it back to H). An
/// implementation therefore never needs to know the policy; constants it creates
/// should take the precision of `y` (`g.dtype(y)`). Parameters are fresh leaves each
/// step, in the order given to [`Solver::forward`].
pub trait Rhs<B: Backend> {
    /// Records f(t, y; θ) on `g` and returns its handle.
    fn eval(&self, g: &mut Graph<B>, t: Var, y: Var, params: &[Var]) -> autodiff::Result<Var>;
}

impl<B, F> Rhs<B> for F
where
    B: Backend,
    F: Fn(&mut Graph<B>, Var, Var, &[Var]) -> autodiff::Result<Var>,
{
    fn eval(&self, g: &mut Graph<B>, t: Var, y: Var, params: &[Var]) -> autodiff::Result<Var> {
        self(g, t, y, params)
    }
}

/// A stochastic step map for Euler–Maruyama solves ([`Solver::forward_sde`]) built on
/// a graph: the whole increment Δ = y_{i+1} − y_i of one step from its start.
///
/// For dy = f(t, y)dt + G(t, y)dW the Euler–Maruyama increment is
/// Δ = f(t_i, y_i)·h + G(t_i, y_i)·ΔW_i; an implementation may record more (running
/// costs that read ΔW, such as NeuralSOC's BSDE consistency term). As with [`Rhs`],
/// the solver casts: `t` and `h` (1 × 1), `y` (batch × features), `dw` (batch × the
/// noise's dimension) and the parameters arrive at the network precision L, and the
/// result must have `y`'s shape at L.
pub trait SdeRhs<B: Backend> {
    /// Records the increment Δ(t, h, y, ΔW; θ) on `g` and returns its handle.
    fn increment(
        &self,
        g: &mut Graph<B>,
        t: Var,
        h: Var,
        y: Var,
        dw: Var,
        params: &[Var],
    ) -> autodiff::Result<Var>;
}

/// The Brownian increments of an Euler–Maruyama solve, regenerated (never stored) from
/// the runtime's counter-based generator: row r of step i is
/// ΔW = √h·ξ with ξ = [`Brownian::increments`] at sample `first_sample + r`, step i.
/// The backward pass draws the same numbers as the forward pass from the same value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BrownianNoise {
    /// The keyed generator.
    pub brownian: Brownian,
    /// Sample index of the batch's first row (a training loop advances it by the batch
    /// size each iteration, so every iteration sees fresh paths).
    pub first_sample: u64,
    /// Components of ΔW per row (the number of Brownian motions).
    pub dim: usize,
}

impl BrownianNoise {
    /// ΔW of step `step` (length `h`) for `rows` rows, as a rows × dim tensor of `dtype`.
    pub fn increments<B: Backend>(
        &self,
        backend: &B,
        rows: usize,
        step: usize,
        h: f64,
        dtype: DType,
    ) -> Result<Tensor<B>> {
        if self.dim == 0 {
            return Err(Error::InvalidArgument(
                "Brownian noise with zero components".into(),
            ));
        }
        let mut out = vec![0.0f64; rows * self.dim];
        self.brownian
            .increments_block(self.first_sample, step as u64, h, self.dim, &mut out)
            .map_err(|e| Error::InvalidArgument(format!("Brownian increments: {e}")))?;
        Ok(Tensor::from_f64(backend, rows, self.dim, &out, dtype)?)
    }
}

/// What one step of a solve computes: a Runge–Kutta increment of an [`Rhs`] or an
/// Euler–Maruyama increment of an [`SdeRhs`].
trait StepMap<B: Backend> {
    /// Records Φ (at H) with y_{i+1} = y_i + h·Φ from the step's leaves.
    fn phi(
        &self,
        solver: &Solver,
        g: &mut Graph<B>,
        leaves: &StepLeaves,
        step: usize,
    ) -> Result<Var>;
}

/// The leaves of one step's tape: the state at H, t_i, t_{i+1} and h = t_{i+1} − t_i at
/// H, and the parameters at L.
struct StepLeaves {
    y: Var,
    t0: Var,
    t1: Var,
    h: Var,
    params: Vec<Var>,
}

/// An ODE step with the solver's Runge–Kutta method.
struct OdeStep<'a, R: ?Sized>(&'a R);

/// An Euler–Maruyama step with regenerated Brownian increments.
struct SdeStep<'a, S: ?Sized> {
    rhs: &'a S,
    noise: &'a BrownianNoise,
}

/// The explicit Runge–Kutta method of a fixed-grid solve.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    /// Forward Euler: Φ = f(t_i, y_i) (order 1).
    Euler,
    /// Heun (explicit trapezoid): Φ = ½(k₁ + k₂), k₂ = f(t_{i+1}, y_i + h k₁) (order 2).
    Heun,
    /// The classical fourth-order Runge–Kutta method (order 4).
    Rk4,
}

impl Method {
    /// Every method.
    pub const ALL: [Method; 3] = [Method::Euler, Method::Heun, Method::Rk4];

    /// Order of accuracy.
    pub fn order(self) -> usize {
        match self {
            Method::Euler => 1,
            Method::Heun => 2,
            Method::Rk4 => 4,
        }
    }

    /// Right-hand-side evaluations per step.
    pub fn stages(self) -> usize {
        self.order()
    }

    /// Name ("euler", "heun", "rk4").
    pub fn name(self) -> &'static str {
        match self {
            Method::Euler => "euler",
            Method::Heun => "heun",
            Method::Rk4 => "rk4",
        }
    }
}

/// Bytes a discretize-then-optimize pass held: the stored trajectory plus the largest
/// single-step tape (nothing else grows with the number of steps).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct MemoryReport {
    /// Bytes of the stored states y₀ … y_N (at the storage precision).
    pub trajectory_bytes: usize,
    /// Bytes of the largest single-step tape ([`Graph::bytes`]).
    pub max_step_tape_bytes: usize,
}

impl MemoryReport {
    /// Trajectory plus one step.
    pub fn total(&self) -> usize {
        self.trajectory_bytes + self.max_step_tape_bytes
    }
}

/// The result of [`Solver::forward`]: the time grid, the stored states and the final
/// state at H.
pub struct Trajectory<B: Backend> {
    times: Vec<f64>,
    states: Vec<Tensor<B>>,
    last: Tensor<B>,
    memory: MemoryReport,
}

impl<B: Backend> std::fmt::Debug for Trajectory<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trajectory")
            .field("steps", &self.steps())
            .field("memory", &self.memory)
            .finish()
    }
}

impl<B: Backend> Trajectory<B> {
    /// The time grid t₀ < … < t_N as given.
    pub fn times(&self) -> &[f64] {
        &self.times
    }

    /// Number of steps N.
    pub fn steps(&self) -> usize {
        self.times.len() - 1
    }

    /// The stored states y₀ … y_N, at the storage precision.
    pub fn states(&self) -> &[Tensor<B>] {
        &self.states
    }

    /// The final state y_N at the state precision H (what a terminal loss reads).
    pub fn final_state(&self) -> &Tensor<B> {
        &self.last
    }

    /// Memory of the forward pass.
    pub fn memory(&self) -> MemoryReport {
        self.memory
    }
}

/// Cotangents ∂ℓ/∂y_i of a loss ℓ of the trajectory: the backward pass's input.
pub struct Cotangents<B: Backend> {
    /// ∂ℓ/∂y_N (any precision; widened to H), the shape of the state.
    pub terminal: Tensor<B>,
    /// Further ∂ℓ/∂y_i for losses that read intermediate states (index i ≤ N; entries
    /// with the same index add up).
    pub states: Vec<(usize, Tensor<B>)>,
}

impl<B: Backend> std::fmt::Debug for Cotangents<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cotangents")
            .field("terminal", &self.terminal.shape())
            .field("states", &self.states.len())
            .finish()
    }
}

impl<B: Backend> Cotangents<B> {
    /// Only a terminal cotangent ∂ℓ/∂y_N.
    pub fn terminal(terminal: Tensor<B>) -> Self {
        Cotangents {
            terminal,
            states: Vec::new(),
        }
    }
}

/// The result of [`Solver::backward`]: gradients of the discrete objective.
pub struct Gradient<B: Backend> {
    /// ∂ℓ/∂y₀ at H.
    pub y0: Tensor<B>,
    /// ∂ℓ/∂θ_j at H, one per parameter in the order given.
    pub params: Vec<Tensor<B>>,
    /// ∂ℓ/∂t_i for every grid point, when asked for.
    pub times: Option<Vec<f64>>,
    /// What the adjoint scaling did, and the backward pass's largest step tape.
    pub stats: AdjointStats,
}

impl<B: Backend> std::fmt::Debug for Gradient<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gradient")
            .field("params", &self.params.len())
            .field("times", &self.times.is_some())
            .field("stats", &self.stats)
            .finish()
    }
}

/// A fixed-grid discretize-then-optimize solver: a method, a precision policy and the
/// adjoint-scaling settings.
///
/// [`forward`](Solver::forward) steps y_{i+1} = y_i + h_i·Φ(y_i, t_i, t_{i+1}; θ) over
/// any increasing grid, building each step on the graph and clearing it before the
/// next, and stores only the states. [`backward`](Solver::backward) walks the steps in
/// reverse, rebuilds step i from the stored y_i and pulls the adjoint through it.
#[derive(Clone, Debug, PartialEq)]
pub struct Solver {
    /// The Runge–Kutta method.
    pub method: Method,
    /// Where each part computes and stores.
    pub policy: PrecisionPolicy,
    /// At most this many vector–Jacobian products per step (and scale candidates at
    /// the start) before [`Error::ScalingFailed`] (MATH.md §8: 50).
    pub max_scale_tries: usize,
    /// When the scale doubles (see [`IncreaseRule`]).
    pub increase_rule: IncreaseRule,
}

/// The handles of one step's tape.
struct StepVars {
    y: Var,
    t0: Var,
    t1: Var,
    h: Var,
    params: Vec<Var>,
    phi: Var,
}

impl<B: Backend, R: Rhs<B> + ?Sized> StepMap<B> for OdeStep<'_, R> {
    fn phi(&self, solver: &Solver, g: &mut Graph<B>, lv: &StepLeaves, _step: usize) -> Result<Var> {
        let (hi, lo) = (solver.policy.state, solver.policy.network);
        let rhs = self.0;
        let shape = g.shape(lv.y)?;
        let (yv, h) = (lv.y, lv.h);
        let stage = |g: &mut Graph<B>, t: Var, ys: Var| -> Result<Var> {
            let tl = cast_to(g, t, lo)?;
            let yl = cast_to(g, ys, lo)?;
            let k = rhs.eval(g, tl, yl, &lv.params)?;
            check_output(g, k, shape, lo, "right-hand side")?;
            Ok(cast_to(g, k, hi)?)
        };
        // y + c·k, the product rounded at H.
        let shifted = |g: &mut Graph<B>, c: Var, k: Var| -> Result<Var> {
            let ck = g.mul(k, c)?;
            Ok(g.add(yv, ck)?)
        };
        let (t0v, t1v) = (lv.t0, lv.t1);
        Ok(match solver.method {
            Method::Euler => stage(g, t0v, yv)?,
            Method::Heun => {
                let k1 = stage(g, t0v, yv)?;
                let y2 = shifted(g, h, k1)?;
                let k2 = stage(g, t1v, y2)?;
                let s = g.add(k1, k2)?;
                g.scale(s, 0.5)?
            }
            Method::Rk4 => {
                let hh = g.scale(h, 0.5)?;
                let tm = g.add(t0v, hh)?;
                let k1 = stage(g, t0v, yv)?;
                let y2 = shifted(g, hh, k1)?;
                let k2 = stage(g, tm, y2)?;
                let y3 = shifted(g, hh, k2)?;
                let k3 = stage(g, tm, y3)?;
                let y4 = shifted(g, h, k3)?;
                let k4 = stage(g, t1v, y4)?;
                let k23 = g.add(k2, k3)?;
                let k23 = g.scale(k23, 2.0)?;
                let s = g.add(k1, k23)?;
                let s = g.add(s, k4)?;
                g.scale(s, 1.0 / 6.0)?
            }
        })
    }
}

impl<B: Backend, S: SdeRhs<B> + ?Sized> StepMap<B> for SdeStep<'_, S> {
    /// Φ = Δ/h at H, so that the driver's y + h·Φ and the adjoint's h/S unscaling serve
    /// both kinds of step; Δ/h·h reproduces Δ to one rounding at H.
    fn phi(&self, solver: &Solver, g: &mut Graph<B>, lv: &StepLeaves, step: usize) -> Result<Var> {
        let (hi, lo) = (solver.policy.state, solver.policy.network);
        let shape = g.shape(lv.y)?;
        // ΔW = √h·ξ on the tape (ξ a constant), so the grid's gradient sees the noise's
        // dependence on h as finite differences of the discrete objective do.
        let xi = self
            .noise
            .increments(g.backend(), shape.rows, step, 1.0, hi)?;
        let xi = g.constant(xi);
        let sqrt_h = g.sqrt(lv.h)?;
        let dw = g.mul(xi, sqrt_h)?;
        let dw = cast_to(g, dw, lo)?;
        let tl = cast_to(g, lv.t0, lo)?;
        let hl = cast_to(g, lv.h, lo)?;
        let yl = cast_to(g, lv.y, lo)?;
        let inc = self.rhs.increment(g, tl, hl, yl, dw, &lv.params)?;
        check_output(g, inc, shape, lo, "SDE increment")?;
        let inc = cast_to(g, inc, hi)?;
        let inv_h = g.recip(lv.h)?;
        Ok(g.mul(inc, inv_h)?)
    }
}

/// Checks that a step function returned the state's shape at the network precision.
fn check_output<B: Backend>(
    g: &Graph<B>,
    k: Var,
    shape: autodiff::Shape,
    lo: DType,
    what: &str,
) -> Result<()> {
    let (ks, kd) = (g.shape(k)?, g.dtype(k)?);
    if ks != shape || kd != lo {
        return Err(Error::InvalidArgument(format!(
            "{what} returned {ks} {kd}, expected the state's shape {shape} at the network \
             precision {lo}"
        )));
    }
    Ok(())
}

fn cast_to<B: Backend>(g: &mut Graph<B>, x: Var, d: DType) -> autodiff::Result<Var> {
    if g.dtype(x)? == d {
        Ok(x)
    } else {
        g.cast(x, d)
    }
}

fn copy<B: Backend>(be: &B, t: &Tensor<B>) -> Result<Tensor<B>> {
    Ok(t.try_clone(be)?)
}

/// `dst ← dst + alpha·src` (same shape and precision), each product rounded once.
fn axpy<B: Backend>(be: &B, dst: &mut Tensor<B>, alpha: f64, src: &Tensor<B>) -> Result<()> {
    let scaled = be.affine(src.buffer(), alpha, 0.0)?;
    be.add_assign(dst.buffer_mut(), &scaled)?;
    Ok(())
}

/// `dst ← dst + h·(src/S)`. Dividing by the power of two S first is exact (unless the
/// quotient underflows), whereas the single coefficient h/S would be rounded to H and,
/// for a large S (2¹²⁷ is reachable with f32 state), be a subnormal with few bits.
fn add_unscaled<B: Backend>(
    be: &B,
    dst: &mut Tensor<B>,
    h: f64,
    s: f64,
    src: &Tensor<B>,
) -> Result<()> {
    if s == 1.0 {
        return axpy(be, dst, h, src);
    }
    let unscaled = be.affine(src.buffer(), 1.0 / s, 0.0)?;
    let step = be.affine(&unscaled, h, 0.0)?;
    be.add_assign(dst.buffer_mut(), &step)?;
    Ok(())
}

impl Solver {
    /// A solver with MATH.md §8's settings: 50 tries, [`IncreaseRule::ScaledAdjoint`].
    pub fn new(method: Method, policy: PrecisionPolicy) -> Self {
        Solver {
            method,
            policy,
            max_scale_tries: 50,
            increase_rule: IncreaseRule::default(),
        }
    }

    fn validate_times(times: &[f64]) -> Result<()> {
        if times.len() < 2 {
            return Err(Error::InvalidArgument(format!(
                "time grid: need at least two points, got {}",
                times.len()
            )));
        }
        for (i, w) in times.windows(2).enumerate() {
            let ok = w[0].is_finite() && w[1].is_finite() && w[1] > w[0];
            if !ok {
                return Err(Error::InvalidArgument(format!(
                    "time grid: t[{i}] = {} and t[{}] = {} are not finite and increasing",
                    w[0],
                    i + 1,
                    w[1]
                )));
            }
        }
        Ok(())
    }

    fn params_low<B: Backend>(&self, be: &B, params: &[Tensor<B>]) -> Result<Vec<Tensor<B>>> {
        params
            .iter()
            .map(|p| Ok(p.cast(be, self.policy.network)?))
            .collect()
    }

    /// Records step `step`'s increment Φ (at H) on the cleared graph `g`. The state is
    /// a leaf at H, the times t_i, t_{i+1} are 1 × 1 leaves at H (h = t_{i+1} − t_i on
    /// the tape), the parameters leaves at L.
    #[allow(clippy::too_many_arguments)]
    fn build_step<B: Backend, M: StepMap<B> + ?Sized>(
        &self,
        g: &mut Graph<B>,
        map: &M,
        y: Tensor<B>,
        step: usize,
        t0: f64,
        t1: f64,
        params_low: &[Tensor<B>],
        grad: bool,
        time_grad: bool,
    ) -> Result<StepVars> {
        let hi = self.policy.state;
        let yv = g.leaf(y, grad);
        let t0v = g.leaf_f64(1, 1, &[t0], hi, time_grad)?;
        let t1v = g.leaf_f64(1, 1, &[t1], hi, time_grad)?;
        let h = g.sub(t1v, t0v)?;
        let mut pv = Vec::with_capacity(params_low.len());
        for p in params_low {
            let c = copy(g.backend(), p)?;
            pv.push(g.leaf(c, grad));
        }
        let leaves = StepLeaves {
            y: yv,
            t0: t0v,
            t1: t1v,
            h,
            params: pv,
        };
        let phi = map.phi(self, g, &leaves, step)?;
        Ok(StepVars {
            y: yv,
            t0: t0v,
            t1: t1v,
            h,
            params: leaves.params,
            phi,
        })
    }

    /// Integrates from `y0` over the grid `times` (any strictly increasing grid; N =
    /// `times.len() − 1` steps) without keeping a tape across steps.
    ///
    /// Per step: the graph is cleared, the step's increment Φ is built from the state
    /// at H and the parameters at L, y_{i+1} = y_i + h·Φ is formed at H and kept, and
    /// y_{i+1} is stored at the storage precision. `y0` and the parameters may have
    /// any precision (they are cast to H and L). The graph is left cleared.
    pub fn forward<B: Backend, R: Rhs<B> + ?Sized>(
        &self,
        g: &mut Graph<B>,
        rhs: &R,
        y0: &Tensor<B>,
        times: &[f64],
        params: &[Tensor<B>],
    ) -> Result<Trajectory<B>> {
        self.forward_map(g, &OdeStep(rhs), y0, times, params)
    }

    /// Integrates the SDE step map `rhs` from `y0` over the grid `times` by
    /// Euler–Maruyama, y_{i+1} = y_i + Δ(t_i, h_i, y_i, ΔW_i; θ), with the Brownian
    /// increments of `noise` (the solver's [`Method`] is not used). Otherwise as
    /// [`forward`](Solver::forward): no tape across steps, only the states are stored.
    pub fn forward_sde<B: Backend, S: SdeRhs<B> + ?Sized>(
        &self,
        g: &mut Graph<B>,
        rhs: &S,
        noise: &BrownianNoise,
        y0: &Tensor<B>,
        times: &[f64],
        params: &[Tensor<B>],
    ) -> Result<Trajectory<B>> {
        self.forward_map(g, &SdeStep { rhs, noise }, y0, times, params)
    }

    fn forward_map<B: Backend, M: StepMap<B> + ?Sized>(
        &self,
        g: &mut Graph<B>,
        map: &M,
        y0: &Tensor<B>,
        times: &[f64],
        params: &[Tensor<B>],
    ) -> Result<Trajectory<B>> {
        self.policy.validate()?;
        Self::validate_times(times)?;
        let (hi, st) = (self.policy.state, self.policy.storage);
        g.clear();
        let params_low = self.params_low(g.backend(), params)?;
        let mut y = y0.cast(g.backend(), hi)?;
        let mut states = Vec::with_capacity(times.len());
        states.push(y.cast(g.backend(), st)?);
        let mut max_tape = 0;
        for (i, w) in times.windows(2).enumerate() {
            g.clear();
            let sv = self.build_step(g, map, y, i, w[0], w[1], &params_low, false, false)?;
            let hphi = g.mul(sv.phi, sv.h)?;
            let next = g.add(sv.y, hphi)?;
            max_tape = max_tape.max(g.bytes());
            y = copy(g.backend(), g.value(next)?)?;
            states.push(y.cast(g.backend(), st)?);
        }
        g.clear();
        let trajectory_bytes = states.iter().map(Tensor::bytes).sum();
        Ok(Trajectory {
            times: times.to_vec(),
            states,
            last: y,
            memory: MemoryReport {
                trajectory_bytes,
                max_step_tape_bytes: max_tape,
            },
        })
    }

    /// Gradients of a loss ℓ(y₀, …, y_N) with respect to y₀, the parameters and (with
    /// `time_gradient`) the grid, by the discrete adjoint of the forward pass.
    ///
    /// `trajectory` must come from [`forward`](Solver::forward) with the same `rhs`,
    /// `params` and solver. From a = ∂ℓ/∂y_N, for i = N−1 … 0 the step's increment
    /// Φ is rebuilt from the stored y_i (widened to H) and
    ///
    /// ```text
    /// seed = Q_L(S·a)                          (widened to H: Φ's tape output is at H)
    /// da, dθ, dt_i, dt_{i+1} = seedᵀ·∂Φ/∂(y_i, θ, t_i, t_{i+1})   (one Graph::backward)
    /// t-grad[i]   += (h/S)·dt_i     − aᵀΦ      (y_{i+1} = y_i + hΦ, h = t_{i+1} − t_i)
    /// t-grad[i+1] += (h/S)·dt_{i+1} + aᵀΦ
    /// a ← a + (h/S)·da (+ ∂ℓ/∂y_i),   g_θ ← g_θ + (h/S)·dθ
    /// ```
    ///
    /// The identity part of ∂y_{i+1}/∂y_i is added exactly at H; only the increment
    /// goes through the tape, and since the tape's output is Φ (not h·Φ) the factor h
    /// is applied with the unscaling, as in MATH.md §8. The VJP sums at H
    /// ([`Graph::backward_with`]); every kernel of it runs at its value's precision,
    /// so the network's part runs at L.
    ///
    /// With `policy.dynamic_scaling`, S follows MATH.md §8: S = 2^round(log₂(target /
    /// max|a_N|)), target = (1/u_L)/√features, halved until Q_L(S·a_N) is finite; a
    /// step whose seed at L or any result is non-finite halves S and is retried (at
    /// most `max_scale_tries` tries, then [`Error::ScalingFailed`]); after a step whose
    /// first try succeeded S doubles as [`IncreaseRule`] says. Without it S = 1 and
    /// nothing is checked: an underflowing or overflowing adjoint shows in the result.
    /// While the adjoint is exactly zero a step contributes nothing and its product is
    /// skipped (and S is chosen at the first nonzero adjoint).
    pub fn backward<B: Backend, R: Rhs<B> + ?Sized>(
        &self,
        g: &mut Graph<B>,
        rhs: &R,
        trajectory: &Trajectory<B>,
        params: &[Tensor<B>],
        cotangents: &Cotangents<B>,
        time_gradient: bool,
    ) -> Result<Gradient<B>> {
        self.backward_map(
            g,
            &OdeStep(rhs),
            trajectory,
            params,
            cotangents,
            time_gradient,
        )
    }

    /// The discrete adjoint of [`forward_sde`](Solver::forward_sde): as
    /// [`backward`](Solver::backward), with each step rebuilt from the stored y_i and the
    /// same Brownian increments, regenerated from `noise` (which must be the forward
    /// pass's), so the gradient is that of the loss on the very paths the forward pass
    /// took.
    #[allow(clippy::too_many_arguments)]
    pub fn backward_sde<B: Backend, S: SdeRhs<B> + ?Sized>(
        &self,
        g: &mut Graph<B>,
        rhs: &S,
        noise: &BrownianNoise,
        trajectory: &Trajectory<B>,
        params: &[Tensor<B>],
        cotangents: &Cotangents<B>,
        time_gradient: bool,
    ) -> Result<Gradient<B>> {
        let map = SdeStep { rhs, noise };
        self.backward_map(g, &map, trajectory, params, cotangents, time_gradient)
    }

    fn backward_map<B: Backend, M: StepMap<B> + ?Sized>(
        &self,
        g: &mut Graph<B>,
        map: &M,
        trajectory: &Trajectory<B>,
        params: &[Tensor<B>],
        cotangents: &Cotangents<B>,
        time_gradient: bool,
    ) -> Result<Gradient<B>> {
        self.policy.validate()?;
        let (hi, lo) = (self.policy.state, self.policy.network);
        let n = trajectory.steps();
        let shape = trajectory.last.shape();
        g.clear();

        // Cotangents at H, by state index.
        let mut extra: Vec<Option<Tensor<B>>> = Vec::new();
        extra.resize_with(n + 1, || None);
        let inputs = std::iter::once((n, &cotangents.terminal))
            .chain(cotangents.states.iter().map(|(i, t)| (*i, t)));
        for (i, c) in inputs {
            if i > n {
                return Err(Error::InvalidArgument(format!(
                    "cotangent of y_{i}, but the trajectory ends at y_{n}"
                )));
            }
            if c.shape() != shape {
                return Err(Error::InvalidArgument(format!(
                    "cotangent of y_{i} has shape {}, the state {shape}",
                    c.shape()
                )));
            }
            if !c.all_finite(g.backend())? {
                return Err(Error::NonFiniteCotangent { index: i });
            }
            let c = c.cast(g.backend(), hi)?;
            match &mut extra[i] {
                Some(sum) => axpy(g.backend(), sum, 1.0, &c)?,
                slot => *slot = Some(c),
            }
        }
        let mut a = match extra[n].take() {
            Some(t) => t,
            None => Tensor::zeros(g.backend(), shape.rows, shape.cols, hi)?,
        };

        let params_low = self.params_low(g.backend(), params)?;
        let mut gparams = params
            .iter()
            .map(|p| Ok(Tensor::zeros(g.backend(), p.rows(), p.cols(), hi)?))
            .collect::<Result<Vec<_>>>()?;
        let mut gtimes = time_gradient.then(|| vec![0.0; n + 1]);

        let scaled = self.policy.dynamic_scaling;
        let mut scaler = Scaler::new(
            self.policy.scaling_target(shape.cols),
            self.max_scale_tries,
            self.increase_rule,
            lo,
        );
        let mut stats = AdjointStats::default();

        for i in (0..n).rev() {
            let amax = a.max_abs(g.backend())?;
            if amax != 0.0 {
                if scaled && scaler.scale.is_none() {
                    let s = scaler.init(g.backend(), &a, amax, n)?;
                    stats.initial_scale = Some(s);
                }
                g.clear();
                let y = trajectory.states[i].cast(g.backend(), hi)?;
                let (t0, t1) = (trajectory.times[i], trajectory.times[i + 1]);
                let sv = self.build_step(g, map, y, i, t0, t1, &params_low, true, time_gradient)?;
                stats.max_step_tape_bytes = stats.max_step_tape_bytes.max(g.bytes());
                let h = g.to_f64(sv.h)?[0];

                let mut tries = 0;
                let (s, da, dparams, dt0, dt1) = loop {
                    tries += 1;
                    let s = scaler.scale.unwrap_or(1.0);
                    let out = self.vjp(g, &sv, &a, s, time_gradient, scaled)?;
                    if let Some(out) = out {
                        break out;
                    }
                    if tries >= scaler.max_tries() {
                        return Err(Error::ScalingFailed {
                            step: i,
                            tries,
                            scale: s,
                        });
                    }
                    scaler.scale = Some(0.5 * s);
                };
                stats.retries += tries - 1;

                if let Some(gt) = gtimes.as_mut() {
                    let be = g.backend();
                    let phi = g.value(sv.phi)?;
                    let prod = be.binary(
                        BinaryOp::Mul,
                        a.buffer(),
                        shape,
                        phi.buffer(),
                        Broadcast::None,
                    )?;
                    let a_phi = be.download(&be.reduce(&prod, shape, Reduction::All, 1.0)?)?[0];
                    gt[i] += h * (dt0 / s) - a_phi;
                    gt[i + 1] += h * (dt1 / s) + a_phi;
                }
                add_unscaled(g.backend(), &mut a, h, s, &da)?;
                for (gp, dp) in gparams.iter_mut().zip(&dparams) {
                    add_unscaled(g.backend(), gp, h, s, dp)?;
                }
                if let Some(e) = extra[i].take() {
                    axpy(g.backend(), &mut a, 1.0, &e)?;
                }
                if scaled {
                    if !a.all_finite(g.backend())? {
                        return Err(Error::ScalingFailed {
                            step: i,
                            tries,
                            scale: s,
                        });
                    }
                    if tries == 1 && scaler.should_increase(a.max_abs(g.backend())?) {
                        scaler.scale = Some(2.0 * s);
                        stats.increases += 1;
                    }
                }
            } else if let Some(e) = extra[i].take() {
                axpy(g.backend(), &mut a, 1.0, &e)?;
            }
        }
        g.clear();
        stats.final_scale = scaler.scale;
        Ok(Gradient {
            y0: a,
            params: gparams,
            times: gtimes,
            stats,
        })
    }

    /// One try of step `sv`'s vector–Jacobian product with seed Q_L(s·a). `None` when
    /// scaling is on and the seed at L or a result is not finite (the caller halves S).
    #[allow(clippy::type_complexity)]
    fn vjp<B: Backend>(
        &self,
        g: &Graph<B>,
        sv: &StepVars,
        a: &Tensor<B>,
        s: f64,
        time_gradient: bool,
        scaled: bool,
    ) -> Result<Option<(f64, Tensor<B>, Vec<Tensor<B>>, f64, f64)>> {
        let (hi, lo) = (self.policy.state, self.policy.network);
        let be = g.backend();
        let sa = if s == 1.0 {
            copy(be, a)?
        } else {
            Tensor::from_buffer(a.rows(), a.cols(), be.affine(a.buffer(), s, 0.0)?)?
        };
        let seed_low = sa.cast(be, lo)?;
        if scaled && !seed_low.all_finite(be)? {
            return Ok(None);
        }
        let seed = seed_low.cast(be, hi)?;
        let mut grads = g.backward_with(sv.phi, Some(seed), Some(hi))?;
        let missing = || Error::InvalidArgument("a step leaf lost its gradient".into());
        let da = grads.take(sv.y).ok_or_else(missing)?;
        let mut dparams = Vec::with_capacity(sv.params.len());
        for &p in &sv.params {
            dparams.push(grads.take(p).ok_or_else(missing)?);
        }
        let (dt0, dt1) = if time_gradient {
            let d0 = grads.take(sv.t0).ok_or_else(missing)?;
            let d1 = grads.take(sv.t1).ok_or_else(missing)?;
            (d0.to_f64(be)?[0], d1.to_f64(be)?[0])
        } else {
            (0.0, 0.0)
        };
        if scaled {
            let mut finite = da.all_finite(be)? && dt0.is_finite() && dt1.is_finite();
            for d in &dparams {
                finite = finite && d.all_finite(be)?;
            }
            if !finite {
                return Ok(None);
            }
        }
        Ok(Some((s, da, dparams, dt0, dt1)))
    }
}
