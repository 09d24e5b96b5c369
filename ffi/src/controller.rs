//! Controllers: the feedback control u(t, x) of a potential model, one state at a
//! time (no allocation, no lock), a batch, the value Φ(t, x), and closed-loop
//! roll-outs.

use std::cell::RefCell;
use std::ffi::c_void;
use std::sync::Mutex;

use socflow_runtime::controller::{Controller, Dynamics, Integrator, Rollout, SimulateOptions};
use socflow_runtime::error::check_len;
use socflow_runtime::{Error, Real};

use crate::args;
use crate::error::{call, socflow_status, Failure};
use crate::handle::{self, Kind};
use crate::model::{self, socflow_model};
use crate::{with_threads, Precision};

/// A feedback controller (opaque): u = −M∇ₓΦ(t, x), or the model's control law.
/// A controller owns scratch buffers: use each controller from one thread at a time
/// (a second thread calling it meanwhile gets `SOCFLOW_ERROR_BUSY`); create one per
/// thread over a shared model.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub struct socflow_controller {
    /// Opaque id; 0 is the null handle.
    pub id: u64,
}

/// The object behind a controller handle.
pub(crate) enum ControllerObject {
    F64(Controller<f64>),
    /// Single precision inside, double at the interface: the state and control are
    /// converted through buffers allocated at creation.
    F32 {
        ctl: Controller<f32>,
        x: Vec<f32>,
        u: Vec<f32>,
    },
}

impl ControllerObject {
    fn dims(&self) -> (usize, usize) {
        match self {
            ControllerObject::F64(c) => (c.state_dim(), c.control_dim()),
            ControllerObject::F32 { ctl, .. } => (ctl.state_dim(), ctl.control_dim()),
        }
    }

    fn control(&mut self, t: f64, x: &[f64], u: &mut [f64]) -> Result<(), Failure> {
        match self {
            ControllerObject::F64(c) => c.control(t, x, u)?,
            ControllerObject::F32 {
                ctl,
                x: x32,
                u: u32,
            } => {
                check_len("state", x.len(), x32.len())?;
                check_len("control output", u.len(), u32.len())?;
                narrow(x, x32);
                ctl.control(t as f32, x32, u32)?;
                widen(u32, u);
            }
        }
        Ok(())
    }

    fn value(&mut self, t: f64, x: &[f64]) -> Result<f64, Failure> {
        Ok(match self {
            ControllerObject::F64(c) => c.value(t, x)?,
            ControllerObject::F32 { ctl, x: x32, .. } => {
                check_len("state", x.len(), x32.len())?;
                narrow(x, x32);
                f64::from(ctl.value(t as f32, x32)?)
            }
        })
    }

    fn control_batch(&self, t: f64, xs: &[f64], us: &mut [f64]) -> Result<(), Failure> {
        match self {
            ControllerObject::F64(c) => c.control_batch(t, xs, us)?,
            ControllerObject::F32 { ctl, .. } => {
                let xs32: Vec<f32> = xs.iter().map(|v| *v as f32).collect();
                let mut us32 = vec![0f32; us.len()];
                ctl.control_batch(t as f32, &xs32, &mut us32)?;
                widen(&us32, us);
            }
        }
        Ok(())
    }
}

fn narrow(from: &[f64], to: &mut [f32]) {
    for (t, f) in to.iter_mut().zip(from) {
        *t = *f as f32;
    }
}

fn widen(from: &[f32], to: &mut [f64]) {
    for (t, f) in to.iter_mut().zip(from) {
        *t = f64::from(*f);
    }
}

fn get(ctl: socflow_controller) -> Result<handle::Exclusive<ControllerObject>, Failure> {
    handle::exclusive(ctl.id, Kind::Controller)
}

/// Creates a controller over a potential model, computing in `precision`
/// (`SOCFLOW_PRECISION_F64` or `SOCFLOW_PRECISION_F32`; inputs and outputs are double
/// either way), and stores its handle in `*out` (the null handle on failure). A model
/// without a potential gives `SOCFLOW_ERROR_UNSUPPORTED`.
///
/// # Safety
/// `out` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn socflow_controller_create(
    model: socflow_model,
    precision: u32,
    out: *mut socflow_controller,
) -> socflow_status {
    call(|| {
        // SAFETY: forwarded from the caller.
        unsafe {
            args::write(
                out,
                socflow_controller::default(),
                "out (the controller handle)",
            )?
        };
        let m = model::get(model)?;
        let object = match crate::precision(precision)? {
            Precision::F64 => ControllerObject::F64(m.f64.controller()?),
            Precision::F32 => {
                let ctl = m.f32()?.controller()?;
                ControllerObject::F32 {
                    x: vec![0.0; ctl.state_dim()],
                    u: vec![0.0; ctl.control_dim()],
                    ctl,
                }
            }
        };
        let id = handle::insert(Kind::Controller, object)?;
        // SAFETY: checked by the first write.
        unsafe { out.write(socflow_controller { id }) };
        Ok(())
    })
}

/// Writes the controller's state dimension and control dimension.
///
/// # Safety
/// `state_dim` and `control_dim` are NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn socflow_controller_dims(
    ctl: socflow_controller,
    state_dim: *mut usize,
    control_dim: *mut usize,
) -> socflow_status {
    call(|| {
        let (d, du) = get(ctl)?.dims();
        // SAFETY: forwarded from the caller.
        unsafe {
            args::write(state_dim, d, "state_dim")?;
            args::write(control_dim, du, "control_dim")
        }
    })
}

/// Computes the feedback control u(t, x) for one state: `x` holds `x_len` =
/// state_dim values, `u` receives `u_len` = control_dim values. No allocation, no
/// lock, no I/O: meant for a control loop. NULL pointers, wrong lengths, a
/// non-finite `t` or `x`, or overlapping `x` and `u` give an error and leave `u`
/// untouched.
///
/// # Safety
/// `x` is NULL or points to `x_len` readable doubles; `u` is NULL or points to
/// `u_len` writable doubles.
#[no_mangle]
pub unsafe extern "C" fn socflow_controller_control(
    ctl: socflow_controller,
    t: f64,
    x: *const f64,
    x_len: usize,
    u: *mut f64,
    u_len: usize,
) -> socflow_status {
    call(|| {
        // SAFETY: forwarded from the caller.
        let (x, u) = unsafe { (args::input(x, x_len, "x")?, args::output(u, u_len, "u")?) };
        args::disjoint(x, u, "x and u")?;
        get(ctl)?.control(t, x, u)
    })
}

/// Writes the value Φ(t, x) (the optimal cost-to-go) of one state into `*value`.
///
/// # Safety
/// `x` is NULL or points to `x_len` readable doubles; `value` is NULL or valid for a
/// write.
#[no_mangle]
pub unsafe extern "C" fn socflow_controller_value(
    ctl: socflow_controller,
    t: f64,
    x: *const f64,
    x_len: usize,
    value: *mut f64,
) -> socflow_status {
    call(|| {
        // SAFETY: forwarded from the caller.
        let x = unsafe { args::input(x, x_len, "x")? };
        let phi = get(ctl)?.value(t, x)?;
        // SAFETY: forwarded from the caller.
        unsafe { args::write(value, phi, "value") }
    })
}

/// Computes controls for a batch of states at one time: `xs` is n × state_dim
/// (row-major, `xs_len` values), `us` receives n × control_dim values (`us_len`).
/// Rows are spread over the library's worker threads.
///
/// # Safety
/// `xs` is NULL or points to `xs_len` readable doubles; `us` is NULL or points to
/// `us_len` writable doubles.
#[no_mangle]
pub unsafe extern "C" fn socflow_controller_control_batch(
    ctl: socflow_controller,
    t: f64,
    xs: *const f64,
    xs_len: usize,
    us: *mut f64,
    us_len: usize,
) -> socflow_status {
    call(|| {
        // SAFETY: forwarded from the caller.
        let (xs, us) = unsafe {
            (
                args::input(xs, xs_len, "xs")?,
                args::output(us, us_len, "us")?,
            )
        };
        args::disjoint(xs, us, "xs and us")?;
        get(ctl)?.control_batch(t, xs, us)
    })
}

/// Destroys a controller. The null handle is accepted (nothing happens); a closed
/// handle gives `SOCFLOW_ERROR_INVALID_HANDLE`, one in use by another thread
/// `SOCFLOW_ERROR_BUSY`.
#[no_mangle]
pub extern "C" fn socflow_controller_destroy(ctl: socflow_controller) -> socflow_status {
    call(|| handle::destroy::<ControllerObject>(ctl.id, Kind::Controller))
}

/// Options of `socflow_controller_simulate`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[allow(non_camel_case_types)]
pub struct socflow_simulate_options {
    /// Initial state of every path (`x0_len` = state_dim values).
    pub x0: *const f64,
    /// Length of `x0`.
    pub x0_len: usize,
    /// Start time.
    pub t0: f64,
    /// End time (> t0).
    pub t1: f64,
    /// Euler–Maruyama steps (>= 1).
    pub steps: usize,
    /// Noise level σ >= 0: dz = f dt + σ dW.
    pub sigma: f64,
    /// Independent paths (>= 1).
    pub paths: usize,
    /// Seed of the Brownian increments (path i, step k is keyed by (seed, i, k), so
    /// results do not depend on the thread count).
    pub seed: u64,
    /// Worker threads: 0 uses the library's shared pool, n > 0 a pool of n threads.
    pub threads: usize,
}

/// A callback computing the drift f(t, x, u) into `out` (state_dim values). Returns
/// 0 on success; any other value stops the roll-out with `SOCFLOW_ERROR_CALLBACK`.
#[allow(non_camel_case_types)]
pub type socflow_drift_fn = Option<
    unsafe extern "C" fn(
        user: *mut c_void,
        t: f64,
        x: *const f64,
        u: *const f64,
        out: *mut f64,
    ) -> i32,
>;

/// A callback computing the running cost L(t, x, u) into `*out`; returns 0 on
/// success.
#[allow(non_camel_case_types)]
pub type socflow_running_cost_fn = Option<
    unsafe extern "C" fn(
        user: *mut c_void,
        t: f64,
        x: *const f64,
        u: *const f64,
        out: *mut f64,
    ) -> i32,
>;

/// A callback computing the terminal cost g(x) into `*out`; returns 0 on success.
#[allow(non_camel_case_types)]
pub type socflow_terminal_cost_fn =
    Option<unsafe extern "C" fn(user: *mut c_void, x: *const f64, out: *mut f64) -> i32>;

/// Controlled dynamics dz = f(t, z, u) dt + σ dW with costs, given by callbacks.
/// The callbacks are called from the library's worker threads, several at once:
/// they must be safe to call concurrently with the same `user` pointer.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[allow(non_camel_case_types)]
pub struct socflow_dynamics {
    /// State dimension (must be the controller's).
    pub state_dim: usize,
    /// Control dimension (must be the controller's).
    pub control_dim: usize,
    /// The drift f (required).
    pub drift: socflow_drift_fn,
    /// The running cost L (NULL: zero).
    pub running_cost: socflow_running_cost_fn,
    /// The terminal cost g (NULL: zero).
    pub terminal_cost: socflow_terminal_cost_fn,
    /// Passed to every callback.
    pub user: *mut c_void,
}

/// C callbacks as [`Dynamics`].
struct CDynamics {
    c: socflow_dynamics,
    drift: unsafe extern "C" fn(*mut c_void, f64, *const f64, *const f64, *mut f64) -> i32,
    /// The first callback failure: (callback name, its return value).
    failure: Mutex<Option<(&'static str, i32)>>,
}

// SAFETY: the callbacks and `user` are only used through calls that the
// `socflow_dynamics` contract (documented on the struct and on
// `socflow_controller_simulate`) declares safe to make from several threads at once.
unsafe impl Sync for CDynamics {}

thread_local! {
    /// Double-precision copies of (z, u, out) for the callbacks.
    static CALLBACK_BUFFERS: RefCell<[Vec<f64>; 3]> = const { RefCell::new([Vec::new(), Vec::new(), Vec::new()]) };
}

impl CDynamics {
    fn check(&self, name: &'static str, rc: i32) -> socflow_runtime::Result<()> {
        if rc == 0 {
            return Ok(());
        }
        let mut f = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        f.get_or_insert((name, rc));
        Err(Error::Integration(format!(
            "the {name} callback returned {rc}"
        )))
    }

    /// Runs `f` on double copies of `z` and `u` and an output of `out_len` doubles,
    /// then returns the output through `out`.
    fn with_f64<T: Real>(
        &self,
        z: &[T],
        u: &[T],
        out_len: usize,
        f: impl FnOnce(&[f64], &[f64], &mut [f64]) -> socflow_runtime::Result<()>,
        out: impl FnOnce(&[f64]),
    ) -> socflow_runtime::Result<()> {
        let run = |bufs: &mut [Vec<f64>; 3]| {
            let [zb, ub, ob] = bufs;
            zb.clear();
            zb.extend(z.iter().map(|v| v.f64()));
            ub.clear();
            ub.extend(u.iter().map(|v| v.f64()));
            ob.clear();
            ob.resize(out_len, 0.0);
            f(zb, ub, ob)?;
            out(ob);
            Ok(())
        };
        CALLBACK_BUFFERS.with(|b| match b.try_borrow_mut() {
            Ok(mut bufs) => run(&mut bufs),
            // A callback that simulates again on this thread: use fresh buffers.
            Err(_) => run(&mut [Vec::new(), Vec::new(), Vec::new()]),
        })
    }
}

impl<T: Real> Dynamics<T> for CDynamics {
    fn state_dim(&self) -> usize {
        self.c.state_dim
    }
    fn control_dim(&self) -> usize {
        self.c.control_dim
    }
    fn drift(&self, s: T, z: &[T], u: &[T], out: &mut [T]) -> socflow_runtime::Result<()> {
        self.with_f64(
            z,
            u,
            out.len(),
            |z, u, o| {
                // SAFETY: the buffers hold state_dim, control_dim and state_dim
                // doubles, as the callback contract says; `user` is the caller's.
                let rc = unsafe {
                    (self.drift)(self.c.user, s.f64(), z.as_ptr(), u.as_ptr(), o.as_mut_ptr())
                };
                self.check("drift", rc)
            },
            |o| {
                for (d, v) in out.iter_mut().zip(o) {
                    *d = T::of(*v);
                }
            },
        )
    }
    fn running_cost(&self, s: T, z: &[T], u: &[T]) -> socflow_runtime::Result<T> {
        let Some(cost) = self.c.running_cost else {
            return Ok(T::zero());
        };
        let mut value = 0.0;
        self.with_f64(
            z,
            u,
            1,
            |z, u, o| {
                // SAFETY: as for `drift`; `o` holds one double.
                let rc =
                    unsafe { cost(self.c.user, s.f64(), z.as_ptr(), u.as_ptr(), o.as_mut_ptr()) };
                self.check("running_cost", rc)
            },
            |o| value = o[0],
        )?;
        Ok(T::of(value))
    }
    fn terminal_cost(&self, z: &[T]) -> socflow_runtime::Result<T> {
        let Some(cost) = self.c.terminal_cost else {
            return Ok(T::zero());
        };
        let mut value = 0.0;
        self.with_f64(
            z,
            &[],
            1,
            |z, _, o| {
                // SAFETY: as for `drift`; `o` holds one double.
                let rc = unsafe { cost(self.c.user, z.as_ptr(), o.as_mut_ptr()) };
                self.check("terminal_cost", rc)
            },
            |o| value = o[0],
        )?;
        Ok(T::of(value))
    }
}

/// Where a roll-out's results go.
struct RolloutBuffers<'a> {
    finals: &'a mut [f64],
    costs: Option<&'a mut [f64]>,
    trajectories: Option<&'a mut [f64]>,
}

fn simulate_in<T: Real, D: Dynamics<T>>(
    ctl: &Controller<T>,
    dynamics: &D,
    o: &SimulateOptions<f64>,
) -> socflow_runtime::Result<Rollout<f64>> {
    let opts = SimulateOptions {
        x0: o.x0.iter().map(|v| T::of(*v)).collect(),
        t0: T::of(o.t0),
        t1: T::of(o.t1),
        steps: o.steps,
        sigma: T::of(o.sigma),
        paths: o.paths,
        seed: o.seed,
        keep_trajectories: o.keep_trajectories,
    };
    let r = ctl.simulate(dynamics, &opts)?;
    let wide = |v: Vec<T>| v.into_iter().map(|x| x.f64()).collect::<Vec<f64>>();
    Ok(Rollout {
        dim: r.dim,
        paths: r.paths,
        steps: r.steps,
        finals: wide(r.finals),
        running_cost: wide(r.running_cost),
        terminal_cost: wide(r.terminal_cost),
        trajectories: r.trajectories.map(wide),
    })
}

/// Rolls the closed loop dz = f(t, z, u(t, z)) dt + σ dW forward with Euler–Maruyama
/// for `options->paths` paths from `options->x0`, and writes each path's final state
/// (`final_states`: paths × state_dim values), its total cost ∫L dt + g(z(t1))
/// (`costs`: paths values, or NULL) and, when `trajectories` is not NULL, every
/// state along the way (paths × (steps + 1) × state_dim values). `dynamics` NULL
/// means dz = u dt + σ dW with running cost ½‖u‖² (the OT-Flow and NeuralSOC
/// benchmark dynamics; needs control_dim = state_dim). With callbacks, see
/// `socflow_dynamics` for the threading contract; a callback's nonzero return stops
/// the roll-out with `SOCFLOW_ERROR_CALLBACK`. Outputs are written only on success.
///
/// # Safety
/// `options` and `dynamics` are NULL or valid; `options->x0` points to `x0_len`
/// readable doubles; each output is NULL or points to its length in writable
/// doubles.
#[no_mangle]
pub unsafe extern "C" fn socflow_controller_simulate(
    ctl: socflow_controller,
    options: *const socflow_simulate_options,
    dynamics: *const socflow_dynamics,
    final_states: *mut f64,
    final_states_len: usize,
    costs: *mut f64,
    costs_len: usize,
    trajectories: *mut f64,
    trajectories_len: usize,
) -> socflow_status {
    call(|| {
        if options.is_null() {
            return Err(Failure::null_pointer("options"));
        }
        // SAFETY: non-null and valid by the contract.
        let o = unsafe { *options };
        // SAFETY: non-null pointers are valid by the contract (checked by `input`).
        let x0 = unsafe { args::input(o.x0, o.x0_len, "options->x0")? };
        let dynamics = if dynamics.is_null() {
            None
        } else {
            // SAFETY: non-null and valid by the contract.
            Some(unsafe { *dynamics })
        };
        for (what, v) in [
            ("options->t0", o.t0),
            ("options->t1", o.t1),
            ("options->sigma", o.sigma),
        ] {
            if !v.is_finite() {
                return Err(Failure::new(
                    socflow_status::SOCFLOW_ERROR_NON_FINITE,
                    format!("{what} is {v}"),
                ));
            }
        }
        let guard = get(ctl)?;
        let (d, du) = guard.dims();
        let steps_plus_one = o
            .steps
            .checked_add(1)
            .ok_or_else(|| Failure::invalid("options->steps is too large"))?;
        let n_final = args::product("final_states", &[o.paths, d])?;
        let n_traj = args::product("trajectories", &[o.paths, steps_plus_one, d])?;
        // SAFETY: forwarded from the caller.
        let mut out = unsafe {
            RolloutBuffers {
                finals: args::output(final_states, final_states_len, "final_states")?,
                costs: args::optional_output(costs, costs_len, "costs")?,
                trajectories: args::optional_output(
                    trajectories,
                    trajectories_len,
                    "trajectories",
                )?,
            }
        };
        check_len("final_states", out.finals.len(), n_final)?;
        if let Some(c) = &out.costs {
            check_len("costs", c.len(), o.paths)?;
            args::disjoint(out.finals, c, "final_states and costs")?;
        }
        if let Some(tr) = &out.trajectories {
            check_len("trajectories", tr.len(), n_traj)?;
            args::disjoint(out.finals, tr, "final_states and trajectories")?;
            if let Some(c) = &out.costs {
                args::disjoint(c, tr, "costs and trajectories")?;
            }
        }
        let c_dynamics = match dynamics {
            Some(c) => {
                let drift = c
                    .drift
                    .ok_or_else(|| Failure::null_pointer("dynamics->drift"))?;
                Some(CDynamics {
                    c,
                    drift,
                    failure: Mutex::new(None),
                })
            }
            None => {
                if du != d {
                    return Err(Failure::invalid(format!(
                        "the default dynamics dz = u dt + σ dW need one control per state; \
                         this controller has {du} controls for {d} states (pass dynamics)"
                    )));
                }
                None
            }
        };
        let integrator = Integrator {
            dim: d,
            gain: 1.0,
            control_weight: 1.0,
        };
        let integrator32 = Integrator {
            dim: d,
            gain: 1.0f32,
            control_weight: 1.0f32,
        };
        let plan = SimulateOptions {
            x0: x0.to_vec(),
            t0: o.t0,
            t1: o.t1,
            steps: o.steps,
            sigma: o.sigma,
            paths: o.paths,
            seed: o.seed,
            keep_trajectories: out.trajectories.is_some(),
        };
        let object: &ControllerObject = &guard;
        let result = with_threads(o.threads, || match (object, &c_dynamics) {
            (ControllerObject::F64(c), Some(dy)) => simulate_in(c, dy, &plan),
            (ControllerObject::F64(c), None) => simulate_in(c, &integrator, &plan),
            (ControllerObject::F32 { ctl, .. }, Some(dy)) => simulate_in(ctl, dy, &plan),
            (ControllerObject::F32 { ctl, .. }, None) => simulate_in(ctl, &integrator32, &plan),
        })?;
        let rollout = match result {
            Ok(r) => r,
            Err(e) => {
                let failed = c_dynamics
                    .as_ref()
                    .and_then(|c| *c.failure.lock().unwrap_or_else(|p| p.into_inner()));
                return Err(match failed {
                    Some((name, rc)) => Failure::new(
                        socflow_status::SOCFLOW_ERROR_CALLBACK,
                        format!("the dynamics' {name} callback returned {rc}; roll-out stopped"),
                    ),
                    None => e.into(),
                });
            }
        };
        out.finals.copy_from_slice(&rollout.finals);
        if let Some(c) = out.costs.as_deref_mut() {
            for ((c, r), g) in c
                .iter_mut()
                .zip(&rollout.running_cost)
                .zip(&rollout.terminal_cost)
            {
                *c = r + g;
            }
        }
        if let (Some(tr), Some(src)) = (out.trajectories.as_deref_mut(), &rollout.trajectories) {
            tr.copy_from_slice(src);
        }
        Ok(())
    })
}
