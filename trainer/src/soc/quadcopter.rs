//! The 12-D quadcopter of Onken et al. (2022) as NeuralSOC trains it: a control-affine
//! problem f = a(z) + B(z)u whose input matrix depends on the state (the thrust
//! direction turns with the angles), so the optimal feedback u* = −R⁻¹B(z)ᵀ∇Φ is not a
//! constant map and the deployed controller carries the runtime's
//! [`QuadcopterLaw`](socflow_runtime::artifact::QuadcopterLaw).
//!
//! State z = (x, y, z, ψ, θ, φ, vx, vy, vz, vψ, vθ, vφ), control u = (thrust, τψ, τθ, τφ):
//!
//! ```text
//! dz = (a(z) + B(z)u)ds + σdW,   a = (v, (vψ, vθ, vφ), 0, 0, −gravity, 0, 0, 0)
//! B(z): rows 6, 7, 8 of column 0 are (sψsφ + cψsθcφ, −cψsφ + sψsθcφ, cθcφ)/m,
//!       rows 9, 10, 11 of columns 1, 2, 3 the identity
//! L = offset + (r/2)‖u‖²,   g = w‖z − z_target‖²,   u* = −(1/r)B(z)ᵀ∇Φ
//! ```
//!
//! The issue's problem ([`QuadcopterProblem::neural_soc`], the default): m = 1,
//! gravity 9.81, σ = 0.2, T = 1, r = 2 (L = 2 + ‖u‖²), w = 2500, from
//! (−1.5, −1.5, −1.5, 0, …) to (2, 2, 2, 0, …). The original code trains from starts
//! spread as (−1.5, −1.5, −1.5) + N(0, I₃) in position ([`QuadcopterProblem::start_std`]).
//! [`reference::Quadcopter`](super::reference::Quadcopter) is the independent plain-f64
//! model the tests check these maps against.

use serde::{Deserialize, Serialize};
use socflow_runtime::artifact::{ControlLaw, Feedback, QuadcopterLaw};
use socflow_runtime::brownian::Brownian;
use socflow_runtime::controller::{Dynamics, SimulateOptions};
use socflow_runtime::error::{check_len, Result as RtResult};
use socflow_runtime::Real;

use super::problem::ControlProblem;
use super::quadratic::INITIAL_STREAM;
use super::reference::{self, QUADCOPTER_GRAVITY, QUADCOPTER_MASS};
use crate::autodiff::{self, Backend, Graph, Tensor, Var};
use crate::{Error, Result};

/// State dimension of the quadcopter.
pub const QUADCOPTER_DIM: usize = 12;
/// Control dimension of the quadcopter (thrust and three torques).
pub const QUADCOPTER_CONTROLS: usize = 4;

/// The quadcopter problem (module docs); plain data, loadable from JSON or TOML (every
/// key optional, defaults are the issue's settings; unknown keys are errors).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuadcopterProblem {
    /// Mass m.
    pub mass: f64,
    /// Gravity.
    pub gravity: f64,
    /// Noise level σ (on all 12 components).
    pub sigma: f64,
    /// Horizon T.
    pub horizon: f64,
    /// w in g = w‖z − z_target‖².
    pub terminal_weight: f64,
    /// The constant in L = offset + (r/2)‖u‖².
    pub running_offset: f64,
    /// r in R = rI (2 in NeuralSOC's L = 2 + ‖u‖²).
    pub control_weight: f64,
    /// Start state (the mean of z(0)).
    pub start: [f64; 12],
    /// Target state.
    pub target: [f64; 12],
    /// Standard deviations of a Gaussian spread of z(0) around `start` (`None`: every
    /// path starts at `start`).
    pub start_std: Option<[f64; 12]>,
}

impl Default for QuadcopterProblem {
    fn default() -> Self {
        Self::neural_soc()
    }
}

impl QuadcopterProblem {
    /// The issue's problem: m = 1, gravity 9.81, σ = 0.2, T = 1, L = 2 + ‖u‖²,
    /// g = 2500‖z − z_target‖², from (−1.5, −1.5, −1.5, 0, …) to (2, 2, 2, 0, …), a
    /// point start.
    pub fn neural_soc() -> Self {
        let r = reference::Quadcopter::neural_soc();
        QuadcopterProblem {
            mass: QUADCOPTER_MASS,
            gravity: QUADCOPTER_GRAVITY,
            sigma: r.sigma,
            horizon: r.horizon,
            terminal_weight: r.terminal_weight,
            running_offset: r.running_offset,
            control_weight: 2.0,
            start: r.start,
            target: r.target,
            start_std: None,
        }
    }

    /// The issue's problem with starts spread as the original code trains:
    /// z(0) = start + `position_std`·(ξ₁, ξ₂, ξ₃, 0, …), ξ ~ N(0, I₃) (1 there).
    pub fn neural_soc_spread(position_std: f64) -> Self {
        let mut std = [0.0; 12];
        std[..3].fill(position_std);
        QuadcopterProblem {
            start_std: Some(std),
            ..Self::neural_soc()
        }
    }

    /// The problem with every cost multiplied by `factor` > 0 (running offset, control
    /// weight r and terminal weight): its value function is Φ·`factor` and its optimal
    /// control the same u* = −(1/r)B(z)ᵀ∇Φ, since r·`factor` and ∇Φ·`factor` cancel.
    /// Training on it keeps Φ_θ at a scale an optimizer's steps move (the issue's
    /// problem has Φ(0, z₀) in the thousands and g in the hundreds of thousands); the
    /// exported control law (r/`factor`) drives the original problem unchanged.
    pub fn with_cost_scale(&self, factor: f64) -> Result<Self> {
        if !(factor.is_finite() && factor > 0.0) {
            return Err(Error::InvalidArgument(format!(
                "quadcopter problem: cost scale {factor} (need a finite factor > 0)"
            )));
        }
        let p = QuadcopterProblem {
            running_offset: self.running_offset * factor,
            control_weight: self.control_weight * factor,
            terminal_weight: self.terminal_weight * factor,
            ..self.clone()
        };
        p.validate()?;
        Ok(p)
    }

    /// Checks that every setting is finite, m, r and T positive, σ, w and the spread
    /// non-negative.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(format!("quadcopter problem: {m}")));
        let scalars = [
            ("mass", self.mass),
            ("gravity", self.gravity),
            ("sigma", self.sigma),
            ("horizon", self.horizon),
            ("terminal_weight", self.terminal_weight),
            ("running_offset", self.running_offset),
            ("control_weight", self.control_weight),
        ];
        if let Some((k, v)) = scalars.iter().find(|(_, v)| !v.is_finite()) {
            return bad(format!("{k} = {v} is not finite"));
        }
        if !(self.mass > 0.0 && self.control_weight > 0.0 && self.horizon > 0.0) {
            return bad(format!(
                "mass {}, control_weight {}, horizon {} (need each > 0)",
                self.mass, self.control_weight, self.horizon
            ));
        }
        if self.sigma < 0.0 || self.terminal_weight < 0.0 {
            return bad(format!(
                "sigma {}, terminal_weight {} (need each ≥ 0)",
                self.sigma, self.terminal_weight
            ));
        }
        let vectors = [("start", &self.start), ("target", &self.target)];
        if let Some((k, _)) = vectors
            .iter()
            .find(|(_, v)| v.iter().any(|x| !x.is_finite()))
        {
            return bad(format!("{k} has a non-finite entry"));
        }
        if let Some(std) = &self.start_std {
            if std.iter().any(|s| !(s.is_finite() && *s >= 0.0)) {
                return bad("start_std needs finite entries ≥ 0".into());
            }
        }
        Ok(())
    }

    /// The problem as JSON.
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string(self)
            .map_err(|e| Error::InvalidArgument(format!("quadcopter problem: {e}")))
    }

    /// Parses a JSON problem (unknown keys are errors) and validates it.
    pub fn from_json(text: &str) -> Result<Self> {
        let p: Self = serde_json::from_str(text)
            .map_err(|e| Error::InvalidArgument(format!("quadcopter problem: {e}")))?;
        p.validate()?;
        Ok(p)
    }

    /// The runtime's control law u* = −(1/r)B(z)ᵀ∇Φ with this mass, gravity and r.
    pub fn law(&self) -> Result<QuadcopterLaw> {
        Ok(QuadcopterLaw::new(
            self.mass,
            self.gravity,
            self.control_weight,
        )?)
    }

    /// The same problem as the plain-f64 reference model (which fixes r = 2: its
    /// running cost is offset + ‖u‖²).
    pub fn reference(&self) -> reference::Quadcopter {
        reference::Quadcopter {
            mass: self.mass,
            gravity: self.gravity,
            sigma: self.sigma,
            horizon: self.horizon,
            terminal_weight: self.terminal_weight,
            running_offset: self.running_offset,
            start: self.start,
            target: self.target,
        }
    }

    /// Options for rolling out the closed loop with the runtime controller
    /// (`Controller::simulate`, with this problem as its [`Dynamics`]) on [0, T] under
    /// the problem's noise: `paths` Euler–Maruyama paths of `steps` steps from `start`.
    pub fn rollout_options(&self, steps: usize, paths: usize, seed: u64) -> SimulateOptions<f64> {
        SimulateOptions {
            x0: self.start.to_vec(),
            t0: 0.0,
            t1: self.horizon,
            steps,
            sigma: self.sigma,
            paths,
            seed,
            keep_trajectories: false,
        }
    }
}

/// A constant row (1 × n) at `like`'s precision.
fn row<B: Backend>(g: &mut Graph<B>, like: Var, data: &[f64]) -> autodiff::Result<Var> {
    let dtype = g.dtype(like)?;
    let t = Tensor::from_f64(g.backend(), 1, data.len(), data, dtype)?;
    Ok(g.constant(t))
}

impl QuadcopterProblem {
    /// The thrust column (b₆, b₇, b₈) of B(z), B × 3.
    fn thrust<B: Backend>(&self, g: &mut Graph<B>, z: Var) -> autodiff::Result<Var> {
        let angles = g.slice_cols(z, 3, 6)?;
        let s = g.sin(angles)?;
        let c = g.cos(angles)?;
        let (sps, sth, sph) = (
            g.slice_cols(s, 0, 1)?,
            g.slice_cols(s, 1, 2)?,
            g.slice_cols(s, 2, 3)?,
        );
        let (cps, cth, cph) = (
            g.slice_cols(c, 0, 1)?,
            g.slice_cols(c, 1, 2)?,
            g.slice_cols(c, 2, 3)?,
        );
        let sth_cph = g.mul(sth, cph)?;
        let a = g.mul(sps, sph)?;
        let b6 = g.mul_add(a, cps, sth_cph, 1.0)?;
        let a = g.mul(sps, sth_cph)?;
        let b7 = g.mul_add(a, cps, sph, -1.0)?;
        let b8 = g.mul(cth, cph)?;
        let b = g.concat_cols(&[b6, b7, b8])?;
        g.scale(b, 1.0 / self.mass)
    }
}

impl<B: Backend> ControlProblem<B> for QuadcopterProblem {
    fn dim(&self) -> usize {
        QUADCOPTER_DIM
    }

    fn control_dim(&self) -> usize {
        QUADCOPTER_CONTROLS
    }

    fn horizon(&self) -> f64 {
        self.horizon
    }

    fn sigma(&self) -> f64 {
        self.sigma
    }

    fn initial_states(&self, n: usize, seed: u64, first_sample: u64) -> Result<Vec<f64>> {
        self.validate()?;
        let mut out = vec![0.0; n * QUADCOPTER_DIM];
        let gen = Brownian::new(seed);
        for (i, r) in out.chunks_exact_mut(QUADCOPTER_DIM).enumerate() {
            match &self.start_std {
                None => r.copy_from_slice(&self.start),
                Some(std) => {
                    gen.stream_normals(INITIAL_STREAM, first_sample + i as u64, 0, r)?;
                    for ((v, m), s) in r.iter_mut().zip(&self.start).zip(std) {
                        *v = m + s * *v;
                    }
                }
            }
        }
        Ok(out)
    }

    fn drift(&self, g: &mut Graph<B>, _t: Var, z: Var, u: Var) -> autodiff::Result<Var> {
        let v = g.slice_cols(z, 6, 12)?;
        let b = self.thrust(g, z)?;
        let thrust = g.slice_cols(u, 0, 1)?;
        let acc = g.mul(b, thrust)?;
        let gravity = row(g, z, &[0.0, 0.0, -self.gravity])?;
        let acc = g.add(acc, gravity)?;
        let torques = g.slice_cols(u, 1, 4)?;
        g.concat_cols(&[v, acc, torques])
    }

    fn running_cost(&self, g: &mut Graph<B>, _t: Var, _z: Var, u: Var) -> autodiff::Result<Var> {
        let sq = g.square(u)?;
        let s = g.sum_cols(sq)?;
        g.affine(s, 0.5 * self.control_weight, self.running_offset)
    }

    fn terminal_cost(&self, g: &mut Graph<B>, z: Var) -> autodiff::Result<Var> {
        let c = row(g, z, &self.target)?;
        let dz = g.sub(z, c)?;
        let sq = g.square(dz)?;
        let s = g.sum_cols(sq)?;
        g.scale(s, self.terminal_weight)
    }

    fn terminal_gradient(&self, g: &mut Graph<B>, z: Var) -> autodiff::Result<Var> {
        let c = row(g, z, &self.target)?;
        let dz = g.sub(z, c)?;
        g.scale(dz, 2.0 * self.terminal_weight)
    }

    fn optimal_control(&self, g: &mut Graph<B>, _t: Var, z: Var, p: Var) -> autodiff::Result<Var> {
        // u* = −(1/r)B(z)ᵀp: the thrust sees B's column 0 against p₆..₈, the torques p₉..₁₁.
        let b = self.thrust(g, z)?;
        let pv = g.slice_cols(p, 6, 9)?;
        let bp = g.mul(b, pv)?;
        let thrust = g.sum_cols(bp)?;
        let torques = g.slice_cols(p, 9, 12)?;
        let u = g.concat_cols(&[thrust, torques])?;
        g.scale(u, -1.0 / self.control_weight)
    }

    fn feedback(&self) -> Result<Option<Feedback>> {
        Ok(Some(Feedback::Law(ControlLaw::Quadcopter(self.law()?))))
    }
}

/// The per-state maps of the [`ControlProblem`] implementation, in the runtime's
/// precision: deployed controllers roll out the problem they were trained on
/// (`Controller::simulate`), one state at a time and without allocation.
impl<T: Real> Dynamics<T> for QuadcopterProblem {
    fn state_dim(&self) -> usize {
        QUADCOPTER_DIM
    }

    fn control_dim(&self) -> usize {
        QUADCOPTER_CONTROLS
    }

    /// f(z, u) = a(z) + B(z)u.
    fn drift(&self, _s: T, z: &[T], u: &[T], out: &mut [T]) -> RtResult<()> {
        check_len("quadcopter drift state", z.len(), QUADCOPTER_DIM)?;
        check_len("quadcopter drift control", u.len(), QUADCOPTER_CONTROLS)?;
        check_len("quadcopter drift output", out.len(), QUADCOPTER_DIM)?;
        let (sps, cps) = z[3].sin_cos();
        let (sth, cth) = z[4].sin_cos();
        let (sph, cph) = z[5].sin_cos();
        let thrust = u[0] / T::of(self.mass);
        out[..6].copy_from_slice(&z[6..12]);
        out[6] = (sps * sph + cps * sth * cph) * thrust;
        out[7] = (sps * sth * cph - cps * sph) * thrust;
        out[8] = cth * cph * thrust - T::of(self.gravity);
        out[9..12].copy_from_slice(&u[1..4]);
        Ok(())
    }

    /// L(u) = offset + (r/2)‖u‖².
    fn running_cost(&self, _s: T, z: &[T], u: &[T]) -> RtResult<T> {
        check_len("quadcopter running cost state", z.len(), QUADCOPTER_DIM)?;
        check_len(
            "quadcopter running cost control",
            u.len(),
            QUADCOPTER_CONTROLS,
        )?;
        let sq: T = u.iter().map(|v| *v * *v).sum();
        Ok(T::of(0.5 * self.control_weight) * sq + T::of(self.running_offset))
    }

    /// g(z) = w‖z − z_target‖².
    fn terminal_cost(&self, z: &[T]) -> RtResult<T> {
        check_len("quadcopter terminal cost state", z.len(), QUADCOPTER_DIM)?;
        let sq: T = z
            .iter()
            .zip(&self.target)
            .map(|(zi, ci)| {
                let v = *zi - T::of(*ci);
                v * v
            })
            .sum();
        Ok(T::of(self.terminal_weight) * sq)
    }
}
