//! Discretize-then-optimize (MATH.md §7) in mixed precision (MATH.md §8).
//!
//! - [`PrecisionPolicy`]: the network at a low precision L, the state, adjoint and
//!   gradient sums at a high precision H, the trajectory stored at 16 bits (or any
//!   precision), with presets [`f64`](PrecisionPolicy::f64),
//!   [`f32`](PrecisionPolicy::f32), [`bf16`](PrecisionPolicy::bf16) and
//!   [`f16`](PrecisionPolicy::f16);
//! - [`Rhs`]: a right-hand side f(t, y; θ) recorded on a [`Graph`](crate::autodiff::Graph),
//!   generic over the backend (closures implement it);
//! - [`Solver`]: Euler, Heun and RK4 ([`Method`]) on any increasing time grid.
//!   [`Solver::forward`] keeps no tape across steps and stores only y₀ … y_N;
//!   [`Solver::backward`] rebuilds one step at a time and pulls the adjoint through it,
//!   returning the exact gradient of the *discrete* objective with respect to y₀, the
//!   parameters and the grid, with the dynamic adjoint scaling of MATH.md §8;
//! - [`SdeRhs`], [`BrownianNoise`], [`Solver::forward_sde`] and
//!   [`Solver::backward_sde`]: Euler–Maruyama step maps whose Brownian increments come
//!   from the runtime's counter-based generator and are regenerated, not stored, in the
//!   backward pass (the same adjoint, precision policies and scaling);
//! - [`SdeTerms`] and [`SchemeIncrement`]: an SDE as a drift and a diagonal diffusion,
//!   stepped by Euler–Maruyama (Itô) or stochastic Heun (Stratonovich) through the
//!   same [`Solver::forward_sde`] / [`Solver::backward_sde`], so both schemes are
//!   differentiated exactly on a fixed Brownian path;
//! - [`ContinuousAdjoint`]: optimize-then-discretize for comparison, the continuous
//!   adjoint ODE by RK4 and the stochastic adjoint of Li et al. (2020), with or without
//!   the Itô-to-Stratonovich correction ([`StochasticAdjoint`]);
//! - [`MemoryReport`]: what a pass held, the trajectory plus one step's tape.
//!
//! # Where each precision is used
//!
//! The solver casts: every right-hand-side call receives the stage time, the stage
//! state and the parameters at L (parameters become fresh L leaves each step), and its
//! output is cast back to H. Stage states y + h·Σ aⱼₗkₗ, the increment Φ = Σ bⱼkⱼ and
//! the update y + h·Φ are formed at H, as are the adjoint and the gradient sums. So
//! only network work runs at L; MATH.md §8 allows Φ itself at L, and forming it at H
//! costs a few elementwise kernels per step and removes a rounding of the increment.
//!
//! # The discrete adjoint and its scaling
//!
//! The tape of step i ends at Φ (not at y_{i+1} = y_i + h·Φ): the identity part of the
//! step's Jacobian is added exactly at H, and the vector–Jacobian product of Φ, seeded
//! with Q_L(S·a), is unscaled by h/S, which is MATH.md §8's update
//! a ← a + (h/S)·Q_H(da). The grid's gradient adds the part through h = t_{i+1} − t_i,
//! ∓aᵀΦ, at H. See [`Solver::backward`] for the whole recurrence and
//! [`IncreaseRule`] for the one reading of MATH.md that needed a choice.

mod continuous;
mod error;
mod policy;
mod scaling;
mod solver;
mod terms;

pub use continuous::{ContinuousAdjoint, ContinuousGradient, ReverseScheme, StochasticAdjoint};

pub use error::{Error, Result};
pub use policy::PrecisionPolicy;
pub use scaling::{AdjointStats, IncreaseRule};
/// The fixed-step SDE schemes (the runtime's): which increment [`SchemeIncrement`]
/// records.
pub use socflow_runtime::sde::SdeScheme;
pub use solver::{
    BrownianNoise, Cotangents, Gradient, MemoryReport, Method, Rhs, SdeRhs, Solver, Trajectory,
};
pub use terms::{SchemeIncrement, SdeTerms};
