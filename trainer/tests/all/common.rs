//! Helpers shared by the trainer's end-to-end tests: sampling an exported model through
//! the runtime, the energy-distance two-sample statistic with its null distribution,
//! and the statistics of Hutchinson's estimator against the exact likelihood.

use socflow_runtime::artifact::{Artifact, StorageDtype};
use socflow_runtime::model::Model;
use socflow_runtime::ode::{OdeOptions, OdeSolver};
use socflow_runtime::sampler::{Sampler, SamplerOptions};
use socflow_runtime::Real;
use socflow_trainer::autodiff::{Cpu, DType, Tensor};
use socflow_trainer::cnf::Noise;
use socflow_trainer::data::Toy;
use socflow_trainer::likelihood::{log_likelihood, Hutchinson, LikelihoodOptions};
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

/// Mean, sample variance, and the standard deviation of the sample variance
/// √((m₄ − s⁴)/n), of `xs`.
pub fn moments(xs: &[f64]) -> (f64, f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let s2 = xs.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    let m4 = xs.iter().map(|v| (v - mean).powi(4)).sum::<f64>() / n;
    (mean, s2, ((m4 - s2 * s2).max(0.0) / n).sqrt())
}

/// Hutchinson's log-likelihoods of the points `x` under `model` against the exact
/// ones: with 1 and with 8 probes per point (`noise`), the mean difference is within 4
/// standard errors of zero (the estimator is unbiased), the variance with one probe
/// exceeds `min_variance` (the estimate is noisy, so the test has power), and 8 probes
/// divide the variance by 8 within 4 standard deviations of the difference of the
/// sample variances.
pub fn hutchinson_agreement<T: Real>(
    model: &Model<T>,
    x: &[f64],
    ode: OdeOptions<T>,
    noise: Noise,
    min_variance: f64,
    ctx: &str,
) {
    let n = x.len() / model.dim();
    let exact = log_likelihood(model, x, n, &LikelihoodOptions::new(ode)).unwrap();
    assert!(
        exact.iter().all(|v| v.is_finite()),
        "{ctx}: exact log-likelihood"
    );
    let diffs = |probes: usize, seed: u64| -> Vec<f64> {
        let h = Hutchinson {
            noise,
            ..Hutchinson::new(probes, seed)
        };
        let opts = LikelihoodOptions::new(ode).with_hutchinson(h);
        let lp = log_likelihood(model, x, n, &opts).unwrap();
        lp.iter().zip(&exact).map(|(a, b)| a - b).collect()
    };
    let (d1, d8) = (diffs(1, 11), diffs(8, 12));
    let (m1, v1, sd1) = moments(&d1);
    let (m8, v8, sd8) = moments(&d8);
    let (se1, se8) = ((v1 / n as f64).sqrt(), (v8 / n as f64).sqrt());
    let nll = -exact.iter().sum::<f64>() / n as f64;
    println!(
        "{ctx}: exact mean NLL {nll:.4}; Hutchinson − exact K=1 {m1:+.4} ± {se1:.4}, \
         K=8 {m8:+.4} ± {se8:.4}; variance K=1 {v1:.4}, K=8 {v8:.4} (×8 = {:.4})",
        8.0 * v8
    );
    assert!(
        v1 > min_variance,
        "{ctx}: the estimate has no noise ({v1:e})"
    );
    assert!(
        m1.abs() < 4.0 * se1,
        "{ctx}: K=1 mean difference {m1} vs se {se1}"
    );
    assert!(
        m8.abs() < 4.0 * se8,
        "{ctx}: K=8 mean difference {m8} vs se {se8}"
    );
    let band = 4.0 * (sd8 * sd8 + (sd1 / 8.0).powi(2)).sqrt();
    assert!(
        (v8 - v1 / 8.0).abs() < band,
        "{ctx}: variance with 8 probes {v8} vs one probe's / 8 {} (band {band})",
        v1 / 8.0
    );
}
