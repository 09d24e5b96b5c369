//! socflow runtime: load exported continuous-time models and evaluate them.
//!
//! The runtime holds what a deployed model needs and nothing of training:
//!
//! - [`artifact`]: one safetensors file per model with a JSON model card;
//! - [`nn`]: the OT-Flow potential Φ(t,x) (with ∇Φ, ∂ₜΦ and the exact Laplacian) and
//!   MLP velocity/score networks;
//! - [`field`]: the time-dependent vector field trait every network implements;
//! - [`brownian`], [`ode`], [`sde`]: counter-based Brownian increments and the ODE/SDE
//!   integrators;
//! - [`sampler`] and [`controller`]: prior + field + integrator → samples, and the
//!   allocation-free feedback control u = -∇Φ(t,x);
//! - [`cuda`]: batch fields and samplers on an NVIDIA GPU (feature `cuda`, through
//!   cudarc, libraries loaded at run time; without the feature the same API returns
//!   [`Error::Unsupported`]);
//! - `onnx` (feature `onnx`): ONNX models (exported from PyTorch, say) as fields and
//!   controls through ONNX Runtime, loaded at run time;
//! - [`vpsde`]: the VP-SDE of score-based diffusion, its reverse-SDE drift and
//!   probability-flow field over a score network, and the pieces its samplers need.
//!
//! Everything is generic over [`Real`] (f32 or f64). Library calls return
//! [`Result`] with a typed [`Error`]; they do not panic on user input.

#![warn(missing_docs)]
#![deny(unsafe_code)]

pub mod artifact;
pub mod brownian;
pub mod controller;
// The CUDA backend is the one place outside ffi/ where `unsafe` is allowed (every block
// with its SAFETY comment): kernel launches and cuBLAS calls through cudarc.
#[cfg_attr(feature = "cuda", allow(unsafe_code))]
pub mod cuda;
pub mod error;
pub mod field;
pub mod linalg;
pub mod model;
pub mod nn;
pub mod npy;
pub mod ode;
#[cfg(feature = "onnx")]
pub mod onnx;
pub mod real;
pub mod sampler;
pub mod sde;
pub mod vpsde;

pub use error::{Error, Result};
pub use field::Field;
pub use real::Real;
