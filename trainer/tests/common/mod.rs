//! Helpers shared by the trainer's end-to-end tests: sampling an exported model through
//! the runtime, and the energy-distance two-sample statistic with its null distribution.
#![allow(dead_code)]

use socflow_runtime::artifact::{Artifact, StorageDtype};
use socflow_runtime::model::Model;
use socflow_runtime::ode::{OdeOptions, OdeSolver};
use socflow_runtime::sampler::{Sampler, SamplerOptions};
use socflow_trainer::autodiff::{Cpu, DType, Tensor};
use socflow_trainer::data::Toy;
use socflow_trainer::mlp::MlpNet;

/// Samples an exported model through the runtime as a user would: the f32 model file
/// loaded as `Model<f32>`, RK4 with `steps` steps from the prior at t1 to the data at
/// t0, in data coordinates.
pub fn sample_model(art: &Artifact, n: usize, steps: usize, seed: u64) -> Vec<f64> {
    let bytes = art.to_bytes(StorageDtype::F32).unwrap();
    let model = Model::<f32>::from_bytes(&bytes).unwrap();
    let (t0, t1) = model.time_interval();
    let mut opts = SamplerOptions::ode(OdeOptions::fixed(OdeSolver::Rk4, steps), seed);
    opts.normalization = model.artifact().card.normalization.clone();
    let sampler = Sampler::new(model.field().unwrap(), t1, t0, opts).unwrap();
    sampler
        .sample(n, 0)
        .unwrap()
        .x
        .into_iter()
        .map(f64::from)
        .collect()
}

/// The energy distance 2E‖X − Y‖ − E‖X − X'‖ − E‖Y − Y'‖ between two 2-D samples
/// (U-statistics for the within-sample terms).
pub fn energy_distance(a: &[f64], b: &[f64]) -> f64 {
    let dist = |p: &[f64], q: &[f64]| ((p[0] - q[0]).powi(2) + (p[1] - q[1]).powi(2)).sqrt();
    let (na, nb) = (a.len() / 2, b.len() / 2);
    let mut ab = 0.0;
    for p in a.chunks_exact(2) {
        for q in b.chunks_exact(2) {
            ab += dist(p, q);
        }
    }
    let within = |x: &[f64], n: usize| {
        let mut s = 0.0;
        for i in 0..n {
            for j in i + 1..n {
                s += dist(&x[2 * i..2 * i + 2], &x[2 * j..2 * j + 2]);
            }
        }
        2.0 * s / (n * (n - 1)) as f64
    };
    2.0 * ab / (na * nb) as f64 - within(a, na) - within(b, nb)
}

/// The energy distance between two independent 8gaussians samples of size `n`, for 20
/// seed pairs, sorted: the statistic's distribution under a perfect model.
pub fn null_distribution(n: usize) -> Vec<f64> {
    let mut null: Vec<f64> = (0..20)
        .map(|k| {
            let a = Toy::EightGaussians.sample(n, 2000 + 2 * k).unwrap();
            let b = Toy::EightGaussians.sample(n, 2001 + 2 * k).unwrap();
            energy_distance(&a, &b)
        })
        .collect();
    null.sort_by(f64::total_cmp);
    null
}

/// A net's parameters as f64 leaf tensors on `cpu` (weights `[out, in]`, biases
/// `[1, out]`), in the net's order: the leaves of a gradient check.
pub fn mlp_leaves(cpu: &Cpu, net: &MlpNet) -> Vec<Tensor<Cpu>> {
    net.params()
        .shapes
        .iter()
        .zip(&net.params().values)
        .map(|(s, v)| {
            let (r, c) = if s.len() == 2 {
                (s[0], s[1])
            } else {
                (1, s[0])
            };
            Tensor::from_f64(cpu, r, c, v, DType::F64).unwrap()
        })
        .collect()
}
