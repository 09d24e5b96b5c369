//! The stochastic optimal control problem a NeuralSOC run learns the value function
//! of: dz = f(s, z, u)ds + σ dW on [0, T], cost E[∫ L(s, z, u)ds + g(z(T))].
//!
//! [`ControlProblem`] is the general interface: every map is recorded on a graph for a
//! batch of states (rows), so the training loss can be differentiated through it, and
//! the optimal feedback u* = argmax_u H(s, z, −∇Φ, u) is the problem's to give (in
//! closed form where one exists). [`QuadraticProblem`](super::QuadraticProblem) is the
//! control-affine quadratic family with its closed-form u* and Hamiltonian.

use socflow_runtime::artifact::{ControlMap, Feedback};

use crate::autodiff::{self, Backend, Graph, Var};
use crate::Result;

/// A stochastic optimal control problem, batched on a graph.
///
/// Shapes: `t` is 1 × 1, `z` B × d, `u` B × k, a gradient p = ∇ₓΦ B × d; costs are
/// B × 1. Every handle arrives at one precision (`g.dtype(z)`), and constants a method
/// creates should take it too. The noise is σ·dW with W a d-dimensional standard
/// Brownian motion.
pub trait ControlProblem<B: Backend> {
    /// State dimension d.
    fn dim(&self) -> usize;

    /// Control dimension k.
    fn control_dim(&self) -> usize;

    /// Horizon T (the problem runs on [0, T]).
    fn horizon(&self) -> f64;

    /// Noise level σ.
    fn sigma(&self) -> f64;

    /// `n` initial states, row-major n × d, drawn from the initial distribution as a
    /// pure function of `(seed, first_sample + row)`.
    fn initial_states(&self, n: usize, seed: u64, first_sample: u64) -> Result<Vec<f64>>;

    /// The drift f(s, z, u), B × d.
    fn drift(&self, g: &mut Graph<B>, t: Var, z: Var, u: Var) -> autodiff::Result<Var>;

    /// The running cost L(s, z, u), B × 1.
    fn running_cost(&self, g: &mut Graph<B>, t: Var, z: Var, u: Var) -> autodiff::Result<Var>;

    /// The terminal cost g(z), B × 1.
    fn terminal_cost(&self, g: &mut Graph<B>, z: Var) -> autodiff::Result<Var>;

    /// The terminal cost's gradient ∇g(z), B × d.
    fn terminal_gradient(&self, g: &mut Graph<B>, z: Var) -> autodiff::Result<Var>;

    /// The optimal feedback u* = argmax_u H(s, z, −p, u) for p = ∇ₓΦ(s, z), B × k.
    fn optimal_control(&self, g: &mut Graph<B>, t: Var, z: Var, p: Var) -> autodiff::Result<Var>;

    /// The Hamiltonian H(s, z, q, u) = qᵀf(s, z, u) − L(s, z, u), B × 1 (MATH.md §5's
    /// sign convention; the HJB equation reads −∂ₛΦ − (σ²/2)ΔΦ + H(s, z, −∇Φ, u*) = 0).
    fn hamiltonian(
        &self,
        g: &mut Graph<B>,
        t: Var,
        z: Var,
        q: Var,
        u: Var,
    ) -> autodiff::Result<Var> {
        let f = self.drift(g, t, z, u)?;
        let qf = g.mul(q, f)?;
        let qf = g.sum_cols(qf)?;
        let l = self.running_cost(g, t, z, u)?;
        g.sub(qf, l)
    }

    /// The map M with u* = −M∇ₓΦ when it is a constant matrix (what the runtime's
    /// controller applies), `None` otherwise.
    fn control_map(&self) -> Result<Option<ControlMap>> {
        Ok(None)
    }

    /// How the deployed controller computes u* from ∇ₓΦ: a constant map (by default
    /// [`control_map`](ControlProblem::control_map)'s) or a state-dependent law the
    /// runtime knows (such as the quadcopter's u* = −R⁻¹B(z)ᵀ∇ₓΦ); `None` exports no
    /// control (the runtime then applies u = −∇ₓΦ).
    fn feedback(&self) -> Result<Option<Feedback>> {
        Ok(self.control_map()?.map(Feedback::Map))
    }
}
