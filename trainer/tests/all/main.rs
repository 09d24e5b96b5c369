//! The trainer's integration tests, one module per topic, in one test binary: one
//! link of the workspace instead of one per file (CI builds in release mode, where
//! linking and re-instantiating the generics for each binary dominated the build).
//!
//! Tests of one binary run as threads of one process; none of these changes
//! process-global state (environment variables, the current directory, the global
//! thread pool). The GPU backend's device tests, `cuda_backend.rs` (feature `cuda`),
//! have their own binary: scripts/gpu-check builds and runs it on a GPU machine by
//! that name.

mod common;

mod assignment;
mod autodiff;
mod cnf;
mod cuda_host;
mod data;
mod device;
mod diffusion;
mod dto;
mod flow_matching;
mod likelihood_hutchinson;
mod mfg;
mod mixed_precision;
mod optim;
mod otflow_autodiff;
mod otflow_problem;
mod resume;
mod score_likelihood;
mod sde_gradients;
mod soc;
mod soc_quadcopter;
mod soc_reference;
mod soc_shifted;
