//! The trainer's typed error.

use std::path::PathBuf;

/// Everything that can go wrong in the trainer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An error from the runtime (artifacts, `.npy` files, the random generator, …).
    #[error(transparent)]
    Runtime(#[from] socflow_runtime::Error),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A text data file has a bad line (a field that is not a number, a ragged row,
    /// NaN or infinity). Lines and fields count from 1.
    #[error("{path}:{line}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Line number, from 1.
        line: usize,
        /// What is wrong, naming the field.
        message: String,
    },
    /// A data set is unusable as a whole: empty, wrong shape, a constant coordinate.
    #[error("data: {0}")]
    Data(String),
    /// A caller-supplied buffer or matrix has the wrong length.
    #[error("{what}: length {found}, expected {expected}")]
    Length {
        /// Which buffer.
        what: &'static str,
        /// Length given.
        found: usize,
        /// Length required.
        expected: usize,
    },
    /// An input holds NaN or infinity.
    #[error("non-finite value in {0}")]
    NonFinite(String),
    /// An argument is out of its valid range (a size, a fraction, a name).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// An autodiff error: mismatched shapes or precisions, an unknown handle, a
    /// backend failure.
    #[error(transparent)]
    Autodiff(#[from] crate::autodiff::Error),
    /// A checkpoint file is malformed or from a newer socflow.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// A name (of a toy data set, say) is not one of the valid ones.
    #[error("unknown {kind} `{name}`; valid names: {valid}")]
    UnknownName {
        /// What kind of thing was named ("toy data set").
        kind: &'static str,
        /// The name given.
        name: String,
        /// The valid names, comma separated.
        valid: String,
    },
    /// A numerical routine broke an invariant it relies on (a bug, or input beyond
    /// its documented limits); the message says which.
    #[error("numerical failure: {0}")]
    Numerical(String),
}

/// Result with the trainer's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// Checks a buffer length, returning [`Error::Length`] on mismatch.
#[inline]
pub fn check_len(what: &'static str, found: usize, expected: usize) -> Result<()> {
    if found == expected {
        Ok(())
    } else {
        Err(Error::Length {
            what,
            found,
            expected,
        })
    }
}
