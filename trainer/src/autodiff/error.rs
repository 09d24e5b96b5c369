//! The autodiff's typed error.

use super::graph::Var;
use super::tensor::{DType, Shape};

/// Everything that can go wrong building, evaluating or differentiating a graph.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Two operands of an op do not fit together (matmul inner sizes, elementwise or
    /// broadcast shapes, concatenated row counts, a seed against its output).
    #[error("{op}: shapes {lhs} and {rhs} do not fit")]
    Shape {
        /// The op.
        op: &'static str,
        /// Shape of the left operand (as stored, before any transpose).
        lhs: Shape,
        /// Shape of the right operand.
        rhs: Shape,
    },
    /// One operand's shape is invalid for the op's parameters (a column range out of
    /// bounds, a row count not divisible by a group size, a zero repeat count).
    #[error("{op}: shape {shape}: {message}")]
    InvalidShape {
        /// The op.
        op: &'static str,
        /// The operand's shape.
        shape: Shape,
        /// What is wrong.
        message: String,
    },
    /// Two operands of an op have different precisions (use a cast).
    #[error("{op}: dtypes {lhs} and {rhs} differ (cast one of them)")]
    DType {
        /// The op.
        op: &'static str,
        /// Precision of the left operand.
        lhs: DType,
        /// Precision of the right operand.
        rhs: DType,
    },
    /// A buffer or host slice has the wrong number of elements.
    #[error("{what}: length {found}, expected {expected}")]
    Length {
        /// Which buffer.
        what: &'static str,
        /// Length given.
        found: usize,
        /// Length required.
        expected: usize,
    },
    /// A [`Var`] from another graph, or from before the last
    /// [`Graph::clear`](super::Graph::clear).
    #[error("{0:?} does not belong to this graph (another graph, or cleared since)")]
    UnknownVar(Var),
    /// An argument is out of its valid range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The backend failed (device memory, a kernel launch, a driver error).
    #[error("{backend} backend: {message}")]
    Backend {
        /// The backend's name.
        backend: &'static str,
        /// What failed.
        message: String,
    },
    /// The operation is not available on this backend or build.
    #[error("unsupported: {0}")]
    Unsupported(String),
}

/// Result with the autodiff's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
