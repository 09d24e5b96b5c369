//! The runtime's typed error.

use std::path::PathBuf;

/// Everything that can go wrong in the runtime.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A file is malformed: bad safetensors or .npy framing, bad metadata, wrong tensors.
    #[error("malformed file: {0}")]
    Format(String),
    /// A model file uses a format version newer than this runtime understands.
    #[error("model format version {found} is newer than the newest this runtime reads ({supported}); upgrade socflow")]
    UnsupportedVersion {
        /// Version in the file.
        found: u32,
        /// Newest version this build reads.
        supported: u32,
    },
    /// A tensor has the wrong shape for the architecture the model card declares.
    #[error("tensor `{name}` has shape {found:?}, expected {expected:?}")]
    Shape {
        /// Tensor name.
        name: String,
        /// Shape found.
        found: Vec<usize>,
        /// Shape expected.
        expected: Vec<usize>,
    },
    /// A parameter or input holds NaN or infinity.
    #[error("non-finite value in {0}")]
    NonFinite(String),
    /// A caller-supplied buffer has the wrong length.
    #[error("{what}: length {found}, expected {expected}")]
    Length {
        /// Which buffer.
        what: &'static str,
        /// Length given.
        found: usize,
        /// Length required.
        expected: usize,
    },
    /// An argument is out of its valid range (a size, a tolerance, a time interval).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A size exceeds the runtime's limits (guards against absurd headers).
    #[error("limit exceeded: {0}")]
    Limit(String),
    /// An adaptive solver gave up (too many steps, step size underflow).
    #[error("integration failed: {0}")]
    Integration(String),
    /// The operation is not available for this model or build.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A GPU could not be used or failed: no CUDA driver, no such device, a CUDA
    /// library (NVRTC, cuBLAS) missing, a kernel that does not compile, a driver error.
    #[error("GPU: {0}")]
    Device(String),
}

/// Result with the runtime's [`Error`].
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

/// Checks that every value of a slice is finite, returning [`Error::NonFinite`].
#[inline]
pub fn check_finite<T: crate::Real>(what: &str, xs: &[T]) -> Result<()> {
    if xs.iter().all(|v| v.is_finite()) {
        Ok(())
    } else {
        Err(Error::NonFinite(what.to_string()))
    }
}
