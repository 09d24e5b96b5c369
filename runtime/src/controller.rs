//! Feedback controllers u = −M ∇ₓΦ(t, x) from a learned value function, or a
//! state-dependent law u = u(x, ∇ₓΦ(t, x)) ([`ControlLaw`]: the quadcopter's
//! u = −R⁻¹B(x)ᵀ∇ₓΦ).
//!
//! A [`Controller`] owns its scratch buffers, so [`Controller::control`] does no
//! allocation, takes no lock and does no I/O: it is meant to be called from a control
//! loop at kilohertz rates. The potential itself is shared read-only (an `Arc`), so
//! many threads can each hold a controller over one loaded model.
//!
//! A [`FieldController`] applies a field's output as the control, u = f(t, x): a
//! policy network (an ONNX model, say) rather than a value function.

use std::sync::Arc;

use rayon::prelude::*;

use crate::artifact::ControlLaw;
use crate::brownian::Brownian;
use crate::error::{check_len, Error, Result};
use crate::field::{Field, Potential};
use crate::Real;

/// The control map M in u = −M ∇ₓΦ (M = R⁻¹Bᵀ for control-affine dynamics with
/// quadratic control cost), `rows × cols` row-major with `cols` the state dimension.
#[derive(Clone, Debug, PartialEq)]
pub struct ControlMatrix<T> {
    rows: usize,
    cols: usize,
    data: Vec<T>,
    /// The diagonal when M is square and diagonal (R and B diagonal, as in the HJB
    /// benchmarks): u = −diag ⊙ ∇Φ instead of a dense product.
    diagonal: Option<Vec<T>>,
}

impl<T: Real> ControlMatrix<T> {
    /// Builds the map from a row-major `rows × cols` matrix; checks sizes and finiteness.
    pub fn new(rows: usize, cols: usize, data: Vec<T>) -> Result<Self> {
        if rows == 0 || cols == 0 {
            return Err(Error::InvalidArgument(
                "control map must have at least one row and one column".into(),
            ));
        }
        check_len("control map", data.len(), rows * cols)?;
        crate::error::check_finite("control map", &data)?;
        let is_diagonal = rows == cols
            && data
                .iter()
                .enumerate()
                .all(|(e, v)| e / cols == e % cols || *v == T::zero());
        let diagonal = is_diagonal.then(|| (0..rows).map(|i| data[i * cols + i]).collect());
        Ok(ControlMatrix {
            rows,
            cols,
            data,
            diagonal,
        })
    }

    /// Number of controls (rows).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// State dimension (columns).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The matrix, row-major.
    pub fn data(&self) -> &[T] {
        &self.data
    }
}

/// A feedback controller over a potential: u(t, x) = −M ∇ₓΦ(t, x), M the identity
/// when no control map is given, or u = u(x, ∇ₓΦ(t, x)) for a [`ControlLaw`].
pub struct Controller<T: Real> {
    potential: Arc<dyn Potential<T>>,
    map: Option<ControlMatrix<T>>,
    law: Option<ControlLaw>,
    grad: Vec<T>,
    scratch: Vec<T>,
}

impl<T: Real> Clone for Controller<T> {
    fn clone(&self) -> Self {
        Controller {
            potential: Arc::clone(&self.potential),
            map: self.map.clone(),
            law: self.law.clone(),
            grad: vec![T::zero(); self.grad.len()],
            scratch: vec![T::zero(); self.scratch.len()],
        }
    }
}

impl<T: Real> Controller<T> {
    /// A controller over `potential`, with an optional control map whose column count
    /// must equal the potential's state dimension.
    pub fn new(potential: Arc<dyn Potential<T>>, map: Option<ControlMatrix<T>>) -> Result<Self> {
        let d = potential.dim();
        if let Some(m) = &map {
            if m.cols != d {
                return Err(Error::InvalidArgument(format!(
                    "control map has {} columns but the potential's state dimension is {d}",
                    m.cols
                )));
            }
        }
        Ok(Controller {
            grad: vec![T::zero(); d],
            scratch: vec![T::zero(); potential.scratch_len()],
            potential,
            map,
            law: None,
        })
    }

    /// A controller applying the state-dependent `law` to the potential's gradient;
    /// the law's state dimension must be the potential's.
    pub fn with_law(potential: Arc<dyn Potential<T>>, law: ControlLaw) -> Result<Self> {
        let d = potential.dim();
        if law.state_dim() != d {
            return Err(Error::InvalidArgument(format!(
                "the {} control law is for state dimension {}, the potential's is {d}",
                law.name(),
                law.state_dim()
            )));
        }
        let mut c = Controller::new(potential, None)?;
        c.law = Some(law);
        Ok(c)
    }

    /// State dimension d.
    pub fn state_dim(&self) -> usize {
        self.potential.dim()
    }

    /// Control dimension (the control law's, the rows of the control map, or d).
    pub fn control_dim(&self) -> usize {
        match (&self.law, &self.map) {
            (Some(law), _) => law.control_dim(),
            (None, Some(m)) => m.rows,
            (None, None) => self.potential.dim(),
        }
    }

    /// The potential the controller evaluates.
    pub fn potential(&self) -> &Arc<dyn Potential<T>> {
        &self.potential
    }

    /// The control map, if any.
    pub fn control_map(&self) -> Option<&ControlMatrix<T>> {
        self.map.as_ref()
    }

    /// The state-dependent control law, if any.
    pub fn control_law(&self) -> Option<&ControlLaw> {
        self.law.as_ref()
    }

    /// Writes the feedback control u(t, x) into `u` (length [`control_dim`]).
    /// Rejects wrong lengths and non-finite t or x with an error; does not allocate.
    ///
    /// [`control_dim`]: Controller::control_dim
    pub fn control(&mut self, t: T, x: &[T], u: &mut [T]) -> Result<()> {
        self.check_input(t, x)?;
        check_len("control output", u.len(), self.control_dim())?;
        self.potential
            .grad(t, x, &mut self.grad, &mut self.scratch)?;
        apply(self.law.as_ref(), self.map.as_ref(), x, &self.grad, u)
    }

    /// Returns Φ(t, x) (the value function: the optimal cost-to-go).
    pub fn value(&mut self, t: T, x: &[T]) -> Result<T> {
        self.check_input(t, x)?;
        self.potential.value(t, x, &mut self.scratch)
    }

    /// Controls for a batch of states (row-major `n × d` in `xs`, `n × control_dim`
    /// in `us`) at one time, rows spread over rayon threads. Allocates one scratch
    /// buffer per worker task.
    pub fn control_batch(&self, t: T, xs: &[T], us: &mut [T]) -> Result<()> {
        let d = self.state_dim();
        let du = self.control_dim();
        if xs.len() % d != 0 {
            return Err(Error::Length {
                what: "state batch (not a multiple of the state dimension)",
                found: xs.len(),
                expected: xs.len() / d * d,
            });
        }
        let n = xs.len() / d;
        check_len("control batch output", us.len(), n * du)?;
        if !t.is_finite() {
            return Err(Error::NonFinite("time".into()));
        }
        crate::error::check_finite("state batch", xs)?;
        const ROWS: usize = 64;
        xs.par_chunks(ROWS * d)
            .zip(us.par_chunks_mut(ROWS * du))
            .try_for_each_init(
                || {
                    (
                        vec![T::zero(); d],
                        vec![T::zero(); self.potential.scratch_len()],
                    )
                },
                |(grad, scratch), (xb, ub)| {
                    for (x, u) in xb.chunks_exact(d).zip(ub.chunks_exact_mut(du)) {
                        self.potential.grad(t, x, grad, scratch)?;
                        apply(self.law.as_ref(), self.map.as_ref(), x, grad, u)?;
                    }
                    Ok(())
                },
            )
    }

    fn check_input(&self, t: T, x: &[T]) -> Result<()> {
        check_len("state", x.len(), self.state_dim())?;
        if !t.is_finite() {
            return Err(Error::NonFinite("time".into()));
        }
        crate::error::check_finite("state", x)
    }

    /// Rolls the closed loop dz = f(s, z, u(s, z)) ds + σ dW forward with
    /// Euler–Maruyama from `opts.x0`, for `opts.paths` independent paths, and returns
    /// the final states with the accumulated costs. Brownian increments come from the
    /// counter-based generator keyed by (seed, path, step), so the result does not
    /// depend on the thread count.
    pub fn simulate<D: Dynamics<T> + ?Sized>(
        &self,
        dynamics: &D,
        opts: &SimulateOptions<T>,
    ) -> Result<Rollout<T>> {
        simulate_closed_loop(
            self.state_dim(),
            self.control_dim(),
            dynamics,
            opts,
            || Controller::clone(self),
            |ctl, s, z, u| ctl.control(s, z, u),
        )
    }
}

/// The closed-loop roll-out of [`Controller::simulate`] and
/// [`FieldController::simulate`]: `make` gives each worker task its own controller,
/// `control` evaluates it.
fn simulate_closed_loop<T, D, C, M, U>(
    d: usize,
    du: usize,
    dynamics: &D,
    opts: &SimulateOptions<T>,
    make: M,
    control: U,
) -> Result<Rollout<T>>
where
    T: Real,
    D: Dynamics<T> + ?Sized,
    M: Fn() -> C + Sync + Send,
    U: Fn(&mut C, T, &[T], &mut [T]) -> Result<()> + Sync + Send,
{
    check_len("dynamics state dimension", dynamics.state_dim(), d)?;
    check_len("dynamics control dimension", dynamics.control_dim(), du)?;
    check_len("initial state", opts.x0.len(), d)?;
    crate::error::check_finite("initial state", &opts.x0)?;
    if opts.steps == 0 || opts.paths == 0 {
        return Err(Error::InvalidArgument(
            "simulate needs at least one step and one path".into(),
        ));
    }
    if !(opts.t0.is_finite() && opts.t1.is_finite() && opts.t1 > opts.t0) {
        return Err(Error::InvalidArgument(format!(
            "simulate needs finite t0 < t1, got [{}, {}]",
            opts.t0, opts.t1
        )));
    }
    if !(opts.sigma.is_finite() && opts.sigma >= T::zero()) {
        return Err(Error::InvalidArgument(format!(
            "noise level sigma must be finite and non-negative, got {}",
            opts.sigma
        )));
    }
    let n = opts.paths;
    let keep = opts.keep_trajectories;
    let steps = opts.steps;
    let h = (opts.t1 - opts.t0) / T::of(steps as f64);
    let brownian = Brownian::new(opts.seed);
    let mut finals = vec![T::zero(); n * d];
    let mut running = vec![T::zero(); n];
    let mut terminal = vec![T::zero(); n];
    let mut trajectories = if keep {
        vec![T::zero(); n * (steps + 1) * d]
    } else {
        Vec::new()
    };
    let traj_stride = (steps + 1) * d;
    let traj_chunks: Vec<&mut [T]> = if keep {
        trajectories.chunks_mut(traj_stride).collect()
    } else {
        (0..n).map(|_| <&mut [T]>::default()).collect()
    };
    finals
        .par_chunks_mut(d)
        .zip(running.par_iter_mut())
        .zip(terminal.par_iter_mut())
        .zip(traj_chunks.into_par_iter())
        .enumerate()
        .try_for_each_init(
            || {
                (
                    make(),
                    vec![T::zero(); du],
                    vec![T::zero(); d],
                    vec![T::zero(); d],
                )
            },
            |(ctl, u, drift, dw), (path, (((z, run), term), traj))| {
                z.copy_from_slice(&opts.x0);
                if keep {
                    traj[..d].copy_from_slice(z);
                }
                let mut cost = T::zero();
                for k in 0..steps {
                    let s = opts.t0 + h * T::of(k as f64);
                    control(ctl, s, z, u)?;
                    dynamics.drift(s, z, u, drift)?;
                    cost += dynamics.running_cost(s, z, u)? * h;
                    brownian.increments(path as u64, k as u64, h, dw)?;
                    for j in 0..d {
                        z[j] += drift[j] * h + opts.sigma * dw[j];
                    }
                    if keep {
                        traj[(k + 1) * d..(k + 2) * d].copy_from_slice(z);
                    }
                }
                if z.iter().any(|v| !v.is_finite()) {
                    return Err(Error::Integration(format!(
                        "closed-loop state of path {path} became non-finite"
                    )));
                }
                *run = cost;
                *term = dynamics.terminal_cost(z)?;
                Ok(())
            },
        )?;
    Ok(Rollout {
        dim: d,
        paths: n,
        steps,
        finals,
        running_cost: running,
        terminal_cost: terminal,
        trajectories: keep.then_some(trajectories),
    })
}

/// A feedback controller whose control is a field's output, u(t, x) = f(t, x): a
/// policy network that outputs the control directly (an ONNX model exported from
/// PyTorch, say, through `OnnxField::into_controller` of the `onnx` feature).
///
/// Like [`Controller`], it owns its scratch buffer, so [`control`](FieldController::control)
/// allocates nothing beyond what the field's own evaluation does: nothing for the
/// native networks; ONNX Runtime allocates each run's output.
pub struct FieldController<T: Real> {
    field: Arc<dyn Field<T>>,
    scratch: Vec<T>,
}

impl<T: Real> Clone for FieldController<T> {
    fn clone(&self) -> Self {
        FieldController {
            field: Arc::clone(&self.field),
            scratch: vec![T::zero(); self.scratch.len()],
        }
    }
}

impl<T: Real> FieldController<T> {
    /// A controller applying `field`'s output as the control.
    pub fn new(field: Arc<dyn Field<T>>) -> Self {
        FieldController {
            scratch: vec![T::zero(); field.scratch_len()],
            field,
        }
    }

    /// The field the controller evaluates.
    pub fn field(&self) -> &Arc<dyn Field<T>> {
        &self.field
    }

    /// State dimension d.
    pub fn state_dim(&self) -> usize {
        self.field.dim()
    }

    /// Control dimension (the field's output: d).
    pub fn control_dim(&self) -> usize {
        self.field.dim()
    }

    /// Writes the control u(t, x) = f(t, x) into `u` (length d). Rejects wrong lengths
    /// and non-finite t or x with an error.
    pub fn control(&mut self, t: T, x: &[T], u: &mut [T]) -> Result<()> {
        let d = self.state_dim();
        check_len("state", x.len(), d)?;
        check_len("control output", u.len(), d)?;
        if !t.is_finite() {
            return Err(Error::NonFinite("time".into()));
        }
        crate::error::check_finite("state", x)?;
        self.field.eval(t, x, u, &mut self.scratch)
    }

    /// Controls for a batch of states (row-major `n × d` in `xs` and `us`) at one time:
    /// blocks of the field's preferred size, one block evaluation each, spread over
    /// rayon threads. Allocates a time and scratch buffer per worker task.
    pub fn control_batch(&self, t: T, xs: &[T], us: &mut [T]) -> Result<()> {
        let d = self.state_dim();
        if xs.len() % d != 0 {
            return Err(Error::Length {
                what: "state batch (not a multiple of the state dimension)",
                found: xs.len(),
                expected: xs.len() / d * d,
            });
        }
        check_len("control batch output", us.len(), xs.len())?;
        if !t.is_finite() {
            return Err(Error::NonFinite("time".into()));
        }
        crate::error::check_finite("state batch", xs)?;
        let rows = self.field.preferred_block_rows().max(1);
        xs.par_chunks(rows * d)
            .zip(us.par_chunks_mut(rows * d))
            .try_for_each_init(
                || {
                    (
                        vec![t; rows],
                        vec![T::zero(); self.field.block_scratch_len(rows)],
                    )
                },
                |(ts, scratch), (xb, ub)| {
                    let n = xb.len() / d;
                    self.field.eval_block(&ts[..n], xb, ub, scratch)
                },
            )
    }

    /// Rolls the closed loop forward like [`Controller::simulate`], with this
    /// controller's u(s, z) = f(s, z).
    pub fn simulate<D: Dynamics<T> + ?Sized>(
        &self,
        dynamics: &D,
        opts: &SimulateOptions<T>,
    ) -> Result<Rollout<T>> {
        simulate_closed_loop(
            self.state_dim(),
            self.control_dim(),
            dynamics,
            opts,
            || FieldController::clone(self),
            |ctl, s, z, u| ctl.control(s, z, u),
        )
    }
}

/// u from ∇ₓΦ at x: the control law when there is one, else −M∇ₓΦ (or −∇ₓΦ).
fn apply<T: Real>(
    law: Option<&ControlLaw>,
    map: Option<&ControlMatrix<T>>,
    x: &[T],
    grad: &[T],
    u: &mut [T],
) -> Result<()> {
    if let Some(law) = law {
        return law.control(x, grad, u);
    }
    apply_map(map, grad, u)
}

fn apply_map<T: Real>(map: Option<&ControlMatrix<T>>, grad: &[T], u: &mut [T]) -> Result<()> {
    match map {
        None => {
            for (ui, gi) in u.iter_mut().zip(grad) {
                *ui = -*gi;
            }
        }
        Some(ControlMatrix {
            diagonal: Some(diag),
            ..
        }) => {
            for ((ui, gi), di) in u.iter_mut().zip(grad).zip(diag) {
                *ui = -(*di * *gi);
            }
        }
        Some(m) => {
            crate::linalg::matvec(&m.data, m.rows, m.cols, grad, u)?;
            for ui in u.iter_mut() {
                *ui = -*ui;
            }
        }
    }
    Ok(())
}

/// Controlled dynamics for [`Controller::simulate`]: the drift f(s, z, u) and the
/// costs the roll-out accumulates.
pub trait Dynamics<T: Real>: Sync {
    /// State dimension.
    fn state_dim(&self) -> usize;
    /// Control dimension.
    fn control_dim(&self) -> usize;
    /// Writes the drift f(s, z, u) into `out`.
    fn drift(&self, s: T, z: &[T], u: &[T], out: &mut [T]) -> Result<()>;
    /// Running cost L(s, z, u) (zero by default).
    fn running_cost(&self, s: T, z: &[T], u: &[T]) -> Result<T> {
        let _ = (s, z, u);
        Ok(T::zero())
    }
    /// Terminal cost g(z) (zero by default).
    fn terminal_cost(&self, z: &[T]) -> Result<T> {
        let _ = z;
        Ok(T::zero())
    }
}

/// The controlled integrator f = b·u with running cost (r/2)‖u‖² and no terminal
/// cost: the dynamics of OT-Flow and of the NeuralSOC benchmark problems.
#[derive(Clone, Debug)]
pub struct Integrator<T> {
    /// State (= control) dimension.
    pub dim: usize,
    /// Control gain b.
    pub gain: T,
    /// Control-cost weight r.
    pub control_weight: T,
}

impl<T: Real> Dynamics<T> for Integrator<T> {
    fn state_dim(&self) -> usize {
        self.dim
    }
    fn control_dim(&self) -> usize {
        self.dim
    }
    fn drift(&self, _s: T, _z: &[T], u: &[T], out: &mut [T]) -> Result<()> {
        for (o, ui) in out.iter_mut().zip(u) {
            *o = self.gain * *ui;
        }
        Ok(())
    }
    fn running_cost(&self, _s: T, _z: &[T], u: &[T]) -> Result<T> {
        let sq: T = u.iter().map(|v| *v * *v).sum();
        Ok(T::of(0.5) * self.control_weight * sq)
    }
}

/// Options of [`Controller::simulate`].
#[derive(Clone, Debug)]
pub struct SimulateOptions<T> {
    /// Initial state (every path starts here).
    pub x0: Vec<T>,
    /// Start time.
    pub t0: T,
    /// End time.
    pub t1: T,
    /// Number of Euler–Maruyama steps.
    pub steps: usize,
    /// Noise level σ (dW is d-dimensional standard Brownian motion).
    pub sigma: T,
    /// Number of independent paths.
    pub paths: usize,
    /// Seed of the Brownian increments.
    pub seed: u64,
    /// Keep every path's states at every step.
    pub keep_trajectories: bool,
}

/// The result of [`Controller::simulate`].
#[derive(Clone, Debug)]
pub struct Rollout<T> {
    /// State dimension.
    pub dim: usize,
    /// Number of paths.
    pub paths: usize,
    /// Number of steps.
    pub steps: usize,
    /// Final states, `paths × dim` row-major.
    pub finals: Vec<T>,
    /// Each path's accumulated running cost ∫ L ds.
    pub running_cost: Vec<T>,
    /// Each path's terminal cost g(z(T)).
    pub terminal_cost: Vec<T>,
    /// With `keep_trajectories`: `paths × (steps + 1) × dim` states.
    pub trajectories: Option<Vec<T>>,
}

impl<T: Real> Rollout<T> {
    /// Mean total cost over the paths and its standard error.
    pub fn cost(&self) -> (f64, f64) {
        let totals: Vec<f64> = self
            .running_cost
            .iter()
            .zip(&self.terminal_cost)
            .map(|(a, b)| a.f64() + b.f64())
            .collect();
        mean_and_standard_error(&totals)
    }
}

/// Sample mean and standard error of the mean.
pub fn mean_and_standard_error(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    if xs.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mean = xs.iter().sum::<f64>() / n;
    if xs.len() < 2 {
        return (mean, f64::NAN);
    }
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, (var / n).sqrt())
}
