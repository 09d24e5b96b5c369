//! NeuralSOC (MATH.md §5): value functions Φ_θ(t, x) for stochastic optimal control,
//! trained on roll-outs of the PMP-driven SDE and deployed as feedback controllers.
//!
//! - [`reference`]: independent answers the tests and benchmarks judge a trained
//!   controller against (Riccati for linear–quadratic problems, Cole–Hopf for the
//!   Hamilton–Jacobi–Bellman benchmarks).

pub mod reference;
