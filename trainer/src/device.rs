//! Where a training loop runs: the CPU backend, or the GPU backend (feature `cuda`).
//!
//! Every training config has a `device` setting (`"cpu"`, the default, or `"cuda"`);
//! the loops are generic over the autodiff [`Backend`](crate::autodiff::Backend) and
//! dispatch on it. A config on the CPU serializes without the key, so configs,
//! checkpoints and artifacts of CPU runs read and compare as before the setting
//! existed.

use serde::{Deserialize, Serialize};

use crate::autodiff::Cuda;
use crate::error::Result;

/// The compute device of a training run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    /// The CPU backend ([`Cpu`](crate::autodiff::Cpu)).
    #[default]
    Cpu,
    /// The first GPU ([`Cuda`]): needs a build with the `cuda` feature, an NVIDIA
    /// driver and the CUDA libraries; otherwise training returns the backend's error
    /// saying what is missing.
    Cuda,
}

impl Device {
    /// Whether this is the CPU (the default; configs leave it out of their JSON).
    pub fn is_cpu(&self) -> bool {
        *self == Device::Cpu
    }

    /// The name as written in configs ("cpu", "cuda").
    pub fn name(self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
        }
    }

    /// Opens the GPU backend on the first GPU (for [`Device::Cuda`]).
    pub fn cuda() -> Result<Cuda> {
        Ok(Cuda::new(0)?)
    }
}
