//! NeuralSOC (MATH.md §5): value functions Φ_θ(t, x) for stochastic optimal control,
//! trained on roll-outs of the PMP-driven SDE and deployed as feedback controllers.
//!
//! - [`ControlProblem`]: a problem (dynamics, running and terminal costs, noise,
//!   horizon, initial distribution, optimal feedback) recorded on a graph, for any
//!   backend; [`QuadraticProblem`]: the control-affine quadratic family with closed-form
//!   u* = −R⁻¹Bᵀ∇Φ, loadable from JSON, with the built-in problems;
//! - [`train`](mod@train): the NeuralSOC loss on Euler–Maruyama roll-outs, differentiated through
//!   the discrete steps ([`train_soc`]), and export with the control map
//!   ([`TrainedSoc::to_artifact`]);
//! - [`evaluate`](mod@evaluate): a learned controller against a reference along optimal paths;
//! - [`reference`](mod@reference): independent answers the tests and benchmarks judge a trained
//!   controller against (Riccati for linear–quadratic problems, Cole–Hopf for the
//!   Hamilton–Jacobi–Bellman benchmarks).

pub mod evaluate;
mod problem;
mod quadcopter;
pub(crate) mod quadratic;
pub mod reference;
pub mod simulate;
pub mod train;

pub use problem::ControlProblem;
pub use quadcopter::{QuadcopterProblem, QUADCOPTER_CONTROLS, QUADCOPTER_DIM};
pub use quadratic::{
    InitialDistribution, QuadraticProblem, StateCost, StateDrift, TerminalCost, INITIAL_STREAM,
};
pub use train::{
    train_soc, train_soc_checkpointed, train_soc_on, train_soc_on_device, Averaging, LossWeights,
    Residual, Sampling, SocConfig, SocCosts, SocObjective, SocProgress, SocRhs, SocValidation,
    TrainedSoc,
};
