//! socflow trainer: learns the continuous-time models that the runtime deploys.
//!
//! It grows module by module (issue 3). The groundwork of conditional flow matching:
//!
//! - [`assignment`]: an exact linear assignment solver (Jonker–Volgenant shortest
//!   augmenting paths) returning a permutation, and [`assignment::ot_pairing`], the
//!   mini-batch optimal-transport coupling of two point clouds under squared
//!   Euclidean cost;
//! - [`data`]: the seeded 2-D toy distributions of FFJORD / OT-Flow, user data sets
//!   from `.npy` and `.csv` files, train/validation splits, normalization (recorded in
//!   the artifact as a [`socflow_runtime::artifact::Normalization`]) and a seeded
//!   mini-batch sampler.
//!
//! Library calls return [`Result`] with a typed [`Error`]; they do not panic on user
//! input or files. Randomness comes from the runtime's counter-based generator
//! ([`socflow_runtime::brownian`]), so every draw is a pure function of a seed.

#![warn(missing_docs)]
#![deny(unsafe_code)]

pub mod assignment;
pub mod autodiff;
pub mod checkpoint;
pub mod cnf;
pub mod data;
pub mod device;
pub mod diffusion;
pub mod dto;
pub mod error;
pub mod flow_matching;
pub mod likelihood;
pub mod mfg;
pub mod mlp;
pub mod optim;
pub mod otflow;
pub mod soc;

pub use error::{Error, Result};
