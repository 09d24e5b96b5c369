//! Sampler tests: pushforward densities against closed forms, SDE statistics against
//! the exact discrete moments, and bitwise reproducibility across thread counts and
//! batch splits.

// Index loops read several arrays in step, as the formulas are written.
#![allow(clippy::needless_range_loop)]

use std::sync::Arc;

use crate::common::random_otflow;
use socflow_runtime::artifact::Normalization;
use socflow_runtime::field::{Field, FnField};
use socflow_runtime::nn::otflow::OtFlow;
use socflow_runtime::ode::{OdeOptions, OdeSolver, SaveAt};
use socflow_runtime::sampler::{Sampler, SamplerOptions};
use socflow_runtime::sde::{ConstantDiffusion, SdeOptions, SdeScheme};
use socflow_runtime::Error;

const LN_2PI: f64 = 1.837_877_066_409_345_3;

fn linear_field(d: usize, a: f64) -> Arc<dyn Field<f64>> {
    Arc::new(FnField::with_div(
        d,
        move |_t: f64, x: &[f64], v: &mut [f64]| {
            for (vi, xi) in v.iter_mut().zip(x) {
                *vi = a * xi;
            }
        },
        move |_t: f64, _x: &[f64]| a * d as f64,
    ))
}

/// v = a x from N(0, I) at t = 1 back to t = 0 maps z to x = R z. With 32 RK4 steps
/// R is the RK4 stability polynomial at q = −a/32 to the 32nd power, and the exact
/// trace integral is −a·d, so the reported log-density must be log N(x/R) + a·d to
/// rounding; with tight adaptive steps R = e^{−a} and the log-density is that of
/// N(0, e^{−2a} I) to the tolerance.
#[test]
fn log_density_of_linear_flow_is_exact() {
    let (d, a) = (3, 0.8);
    let q: f64 = -a / 32.0;
    let r_rk4 = (1.0 + q + q * q / 2.0 + q.powi(3) / 6.0 + q.powi(4) / 24.0).powi(32);
    for (opts, r, tol) in [
        (OdeOptions::fixed(OdeSolver::Rk4, 32), r_rk4, 1e-12),
        (OdeOptions::adaptive(1e-10, 1e-10), (-a).exp(), 1e-8),
    ] {
        let mut so = SamplerOptions::ode(opts, 17);
        so.log_density = true;
        let sampler = Sampler::new(linear_field(d, a), 1.0, 0.0, so).unwrap();
        let s = sampler.sample(500, 0).unwrap();
        let logp = s.log_density.as_ref().unwrap();
        let var = (-2.0 * a).exp();
        let mut sum_sq = 0.0;
        for i in 0..s.n {
            let x = &s.x[i * d..(i + 1) * d];
            let sq: f64 = x.iter().map(|v| v * v).sum();
            sum_sq += sq;
            let want = -0.5 * sq / (r * r) - 0.5 * d as f64 * LN_2PI + a * d as f64;
            assert!(
                (logp[i] - want).abs() < tol,
                "sample {i}: log p {} vs {want}",
                logp[i]
            );
        }
        // And the samples have the variance of N(0, e^{−2a} I) (chi-square bounds).
        let est = sum_sq / (s.n * d) as f64;
        let se = var * (2.0 / (s.n * d) as f64).sqrt();
        assert!((est - var).abs() < 4.0 * se, "variance {est} vs {var}");
    }
}

fn otflow_field(d: usize) -> Arc<dyn Field<f64>> {
    Arc::new(OtFlow::<f64>::new(&random_otflow(d, 16, 2, 99)).unwrap())
}

fn bits(v: &[f64]) -> Vec<u64> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn in_pool<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

#[test]
fn samples_are_bitwise_reproducible_across_threads_and_splits() {
    let d = 3;
    let field = otflow_field(d);
    let mut ode = SamplerOptions::ode(OdeOptions::fixed(OdeSolver::Rk4, 8), 5);
    ode.log_density = true;
    ode.block_rows = 16;
    let mut ada = SamplerOptions::ode(OdeOptions::adaptive(1e-6, 1e-6), 5);
    ada.block_rows = 16;
    let diffusion = Arc::new(ConstantDiffusion::new(d, 0.3));
    let mut sde = SamplerOptions::sde(
        SdeOptions::new(SdeScheme::EulerMaruyama, 20),
        diffusion.clone(),
        5,
    );
    sde.block_rows = 16;
    let mut heun =
        SamplerOptions::sde(SdeOptions::new(SdeScheme::StochasticHeun, 20), diffusion, 5);
    heun.block_rows = 7;
    for opts in [ode, ada, sde, heun] {
        let sampler = Sampler::new(field.clone(), 1.0, 0.0, opts.clone()).unwrap();
        let n = 100;
        let one = in_pool(1, || sampler.sample(n, 0).unwrap());
        let two = in_pool(2, || sampler.sample(n, 0).unwrap());
        assert_eq!(bits(&one.x), bits(&two.x), "1 vs 2 threads");
        // Another block size and a split of the batch into two calls.
        let mut o2 = opts.clone();
        o2.block_rows = 5;
        let sampler2 = Sampler::new(field.clone(), 1.0, 0.0, o2).unwrap();
        let a = sampler2.sample(37, 0).unwrap();
        let b = sampler2.sample(63, 37).unwrap();
        let joined: Vec<f64> = a.x.iter().chain(&b.x).copied().collect();
        assert_eq!(bits(&one.x), bits(&joined), "split batch");
        if let Some(l) = &one.log_density {
            let lj: Vec<f64> = a
                .log_density
                .unwrap()
                .iter()
                .chain(b.log_density.as_ref().unwrap())
                .copied()
                .collect();
            assert_eq!(bits(l), bits(&lj));
        }
        // A different seed gives different samples.
        let mut o3 = opts.clone();
        o3.seed = 6;
        let other = Sampler::new(field.clone(), 1.0, 0.0, o3)
            .unwrap()
            .sample(n, 0)
            .unwrap();
        assert_ne!(bits(&one.x), bits(&other.x));
    }
}

/// Ornstein–Uhlenbeck dx = −θx dt + σ dW from N(0, 1): Euler–Maruyama's final state
/// is Gaussian with mean 0 and variance ρ^{2N} + σ²h Σ_{j<N} ρ^{2j}, ρ = 1 − θh.
#[test]
fn sde_sampler_matches_discrete_ou_moments() {
    let (theta, sigma, steps, n) = (1.5, 0.7, 25, 40_000);
    let drift: Arc<dyn Field<f64>> =
        Arc::new(FnField::new(1, move |_t: f64, x: &[f64], v: &mut [f64]| {
            v[0] = -theta * x[0]
        }));
    let opts = SamplerOptions::sde(
        SdeOptions::new(SdeScheme::EulerMaruyama, steps),
        Arc::new(ConstantDiffusion::new(1, sigma)),
        11,
    );
    let s = Sampler::new(drift, 0.0, 1.0, opts)
        .unwrap()
        .sample(n, 0)
        .unwrap();
    let h = 1.0 / steps as f64;
    let rho: f64 = 1.0 - theta * h;
    let var = rho.powi(2 * steps as i32)
        + sigma * sigma * h * (0..steps).map(|j| rho.powi(2 * j as i32)).sum::<f64>();
    let mean = s.x.iter().sum::<f64>() / n as f64;
    let v = s.x.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    let fourth = s.x.iter().map(|x| (x - mean).powi(4)).sum::<f64>() / n as f64;
    assert!(mean.abs() < 4.0 * (var / n as f64).sqrt(), "mean {mean}");
    assert!(
        (v - var).abs() < 4.0 * var * (2.0 / n as f64).sqrt(),
        "var {v} vs {var}"
    );
    // Gaussian: kurtosis 3.
    let kurt = fourth / (v * v);
    assert!(
        (kurt - 3.0).abs() < 4.0 * (24.0 / n as f64).sqrt(),
        "kurtosis {kurt}"
    );
}

#[test]
fn normalization_and_trajectories() {
    let d = 2;
    let field = otflow_field(d);
    let mut base = SamplerOptions::ode(OdeOptions::fixed(OdeSolver::Heun, 10), 3);
    base.log_density = true;
    base.trajectory = Some(SaveAt::Steps);
    let plain = Sampler::new(field.clone(), 1.0, 0.0, base.clone())
        .unwrap()
        .sample(20, 0)
        .unwrap();
    let norm = Normalization::new(vec![1.0, -2.0], vec![0.5, 3.0]).unwrap();
    let mut with = base.clone();
    with.normalization = Some(norm);
    let mapped = Sampler::new(field.clone(), 1.0, 0.0, with)
        .unwrap()
        .sample(20, 0)
        .unwrap();
    let (mean, std) = ([1.0, -2.0], [0.5, 3.0]);
    for i in 0..20 {
        for j in 0..d {
            let want = mean[j] + std[j] * plain.x[i * d + j];
            assert!((mapped.x[i * d + j] - want).abs() < 1e-14);
        }
        let want = plain.log_density.as_ref().unwrap()[i] - (0.5f64.ln() + 3.0f64.ln());
        assert!((mapped.log_density.as_ref().unwrap()[i] - want).abs() < 1e-12);
    }
    // Trajectory: 11 points from t = 1 to 0; the last is the sample, the first the
    // prior draw (which has the prior's log-density).
    let tr = plain.trajectory.as_ref().unwrap();
    assert_eq!(tr.times.len(), 11);
    assert_eq!(tr.times[0], 1.0);
    assert_eq!(*tr.times.last().unwrap(), 0.0);
    let n = 20;
    assert_eq!(&tr.states[10 * n * d..], &plain.x[..]);
    let z = &tr.states[..n * d];
    let sampler = Sampler::new(field, 1.0, 1.0, base).unwrap(); // zero-length solve
    let prior = sampler.sample(20, 0).unwrap();
    assert_eq!(z, &prior.x[..]);
    for i in 0..n {
        let sq: f64 = z[i * d..(i + 1) * d].iter().map(|v| v * v).sum();
        let want = -0.5 * sq - 0.5 * d as f64 * LN_2PI;
        assert!((prior.log_density.as_ref().unwrap()[i] - want).abs() < 1e-12);
    }
}

#[test]
fn sampler_errors() {
    let d = 2;
    let field = otflow_field(d);
    let mut o = SamplerOptions::sde(
        SdeOptions::new(SdeScheme::EulerMaruyama, 10),
        Arc::new(ConstantDiffusion::new(d, 1.0)),
        0,
    );
    o.log_density = true;
    assert!(matches!(
        Sampler::new(field.clone(), 1.0, 0.0, o),
        Err(Error::Unsupported(_))
    ));
    let o = SamplerOptions::sde(
        SdeOptions::new(SdeScheme::EulerMaruyama, 10),
        Arc::new(ConstantDiffusion::new(3, 1.0)),
        0,
    );
    assert!(Sampler::new(field.clone(), 1.0, 0.0, o).is_err());
    let o = SamplerOptions::ode(OdeOptions::fixed(OdeSolver::Rk4, 0), 0);
    assert!(Sampler::new(field.clone(), 1.0, 0.0, o).is_err());
    let o = SamplerOptions::ode(OdeOptions::fixed(OdeSolver::Rk4, 4), 0);
    assert!(Sampler::new(field.clone(), f64::NAN, 0.0, o.clone()).is_err());
    let s = Sampler::new(field, 1.0, 0.0, o).unwrap();
    let mut x = vec![0.0; 5];
    assert!(matches!(
        s.sample_into(0, &mut x, None),
        Err(Error::Length { .. })
    ));
    let mut x = vec![0.0; 6];
    let mut l = vec![0.0; 3];
    assert!(s.sample_into(0, &mut x, Some(&mut l)).is_err());
    assert!(s.sample_into(0, &mut x, None).is_ok());
    assert!(x.iter().all(|v| v.is_finite()));
}
