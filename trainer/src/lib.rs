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

#[cfg(test)]
mod tests {
    use crate::data::rng::{BATCH_STREAM, SPLIT_STREAM, TOY_STREAM};
    use socflow_runtime::brownian::Stream;

    /// Every random stream of the trainer and the runtime is its own: two uses of one
    /// stream id with the same seed would draw the same numbers.
    #[test]
    fn random_streams_are_distinct() {
        let streams: Vec<(&str, Stream)> = vec![
            ("runtime BROWNIAN", Stream::BROWNIAN),
            ("runtime PRIOR", Stream::PRIOR),
            ("data TOY", TOY_STREAM),
            ("data SPLIT", SPLIT_STREAM),
            ("data BATCH", BATCH_STREAM),
            ("mlp INIT", crate::mlp::INIT_STREAM),
            ("otflow INIT", crate::otflow::INIT_STREAM),
            ("cnf HUTCHINSON", crate::cnf::HUTCHINSON_STREAM),
            ("likelihood PROBE", crate::likelihood::PROBE_STREAM),
            ("flow matching NOISE", crate::flow_matching::NOISE_STREAM),
            ("flow matching TIME", crate::flow_matching::TIME_STREAM),
            (
                "flow matching VALIDATION_NOISE",
                crate::flow_matching::VALIDATION_NOISE_STREAM,
            ),
            (
                "flow matching VALIDATION_TIME",
                crate::flow_matching::VALIDATION_TIME_STREAM,
            ),
            ("diffusion NOISE", crate::diffusion::NOISE_STREAM),
            ("diffusion TIME", crate::diffusion::TIME_STREAM),
            (
                "diffusion VALIDATION_NOISE",
                crate::diffusion::VALIDATION_NOISE_STREAM,
            ),
            (
                "diffusion VALIDATION_TIME",
                crate::diffusion::VALIDATION_TIME_STREAM,
            ),
            ("mfg PARTICLE", crate::mfg::PARTICLE_STREAM),
            ("mfg VALIDATION", crate::mfg::VALIDATION_STREAM),
            (
                "soc quadratic INITIAL",
                crate::soc::quadratic::INITIAL_STREAM,
            ),
        ];
        for (i, (a, sa)) in streams.iter().enumerate() {
            for (b, sb) in &streams[..i] {
                assert_ne!(sa, sb, "{a} and {b} share stream {}", sa.0);
            }
        }
    }
}
