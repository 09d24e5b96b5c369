//! The discretize-then-optimize solvers' typed error.

use crate::autodiff;

/// Everything that can go wrong in a discretize-then-optimize solve or its adjoint.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Building or differentiating a step's graph failed (shapes, precisions, the
    /// backend).
    #[error(transparent)]
    Autodiff(#[from] autodiff::Error),
    /// An argument is out of its valid range (a time grid that does not increase, a
    /// cotangent of the wrong shape, a right-hand side that returns the wrong shape).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The loss's cotangent holds NaN or infinity, so no adjoint scale can be chosen.
    #[error("non-finite cotangent of the state y_{index}")]
    NonFiniteCotangent {
        /// The index of the state.
        index: usize,
    },
    /// Dynamic adjoint scaling found no scale S that keeps a step's vector–Jacobian
    /// product finite (MATH.md §8: at most `tries` halvings).
    #[error(
        "adjoint scaling: step {step} (or the initial scale when step = number of steps) \
         stayed non-finite after {tries} tries; last scale S = {scale:e}"
    )]
    ScalingFailed {
        /// The step i (the rebuild of y_i → y_{i+1}); the number of steps for the
        /// initial scale.
        step: usize,
        /// Tries made.
        tries: usize,
        /// The last scale tried.
        scale: f64,
    },
}

/// Result with the solvers' [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Error> for crate::Error {
    /// Bridges into the trainer's error: argument errors stay argument errors, scaling
    /// failures and non-finite cotangents are numerical failures.
    fn from(e: Error) -> Self {
        match e {
            Error::Autodiff(a) => a.into(),
            Error::InvalidArgument(m) => crate::Error::InvalidArgument(m),
            other => crate::Error::Numerical(other.to_string()),
        }
    }
}
