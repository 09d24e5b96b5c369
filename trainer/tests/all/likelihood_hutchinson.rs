//! Log-likelihoods with Hutchinson's divergence estimate: for a linear flow the
//! estimate is the probes' quadratic form, regenerated here from the documented
//! generator addresses (fixed and adaptive steps); on a trained flow-matching model and
//! an OT-Flow model it agrees with the exact log-likelihood within its standard error,
//! and K probes divide the estimator's variance by K; seeds reproduce bit for bit
//! whatever the block size, thread count or split into pieces; bad settings are typed
//! errors.

use crate::common::hutchinson_agreement;
use socflow_runtime::artifact::{Artifact, Normalization, Provenance, StorageDtype};
use socflow_runtime::brownian::{Brownian, MAX_SAMPLE};
use socflow_runtime::model::Model;
use socflow_runtime::nn::OtFlowParams;
use socflow_runtime::ode::{OdeOptions, OdeSolver};
use socflow_testkit::Rng;
use socflow_trainer::cnf::Noise;
use socflow_trainer::data::rng::Draws;
use socflow_trainer::data::{Dataset, Toy};
use socflow_trainer::flow_matching::{train_flow_matching, FlowMatchingConfig, Precision};
use socflow_trainer::likelihood::{
    log_likelihood, Divergence, Hutchinson, LikelihoodOptions, MAX_PROBES, PROBE_STREAM,
};
use socflow_trainer::Error;

fn rk4(steps: usize) -> LikelihoodOptions<f64> {
    LikelihoodOptions::new(OdeOptions::fixed(OdeSolver::Rk4, steps))
}

fn hutch(probes: usize, noise: Noise, seed: u64) -> Hutchinson {
    Hutchinson {
        noise,
        ..Hutchinson::new(probes, seed)
    }
}

fn bits(v: &[f64]) -> Vec<u64> {
    v.iter().map(|x| x.to_bits()).collect()
}

// ---------------------------------------------------------------------------------------
// Models
// ---------------------------------------------------------------------------------------

/// Φ = ½ sᵀ(AᵀA)s + cᵀs + c₀ (w = 0): the field v = −[(AᵀA)s + c]_{0..d} is linear with
/// constant Jacobian −M, M = (AᵀA)[0:d, 0:d]. Returns the parameters and M.
fn quadratic_otflow(d: usize, r: usize, seed: u64) -> (OtFlowParams, Vec<f64>) {
    let mut g = Rng(seed);
    let (m, ns) = (4, d + 1);
    let a = g.vec(r * ns, 0.6);
    let p = OtFlowParams {
        d,
        m,
        n_th: 2,
        r,
        k: vec![g.vec(m * ns, 0.5), g.vec(m * m, 0.5)],
        b: vec![g.vec(m, 0.5), g.vec(m, 0.5)],
        w: vec![0.0; m],
        a: a.clone(),
        c_weight: g.vec(ns, 0.3),
        c_bias: 0.1,
    };
    let mm: Vec<f64> = (0..d * d)
        .map(|ij| {
            let (i, j) = (ij / d, ij % d);
            (0..r).map(|k| a[k * ns + i] * a[k * ns + j]).sum()
        })
        .collect();
    (p, mm)
}

/// A random OT-Flow model with a data normalization.
fn otflow_model(d: usize, m: usize, seed: u64) -> Model<f64> {
    let mut g = Rng(seed);
    let ns = d + 1;
    let r = ns.min(10);
    let p = OtFlowParams {
        d,
        m,
        n_th: 3,
        r,
        k: vec![
            g.vec(m * ns, 1.0 / (ns as f64).sqrt()),
            g.vec(m * m, 1.0 / (m as f64).sqrt()),
            g.vec(m * m, 1.0 / (m as f64).sqrt()),
        ],
        b: vec![g.vec(m, 0.5), g.vec(m, 0.5), g.vec(m, 0.5)],
        w: g.vec(m, 0.5),
        a: g.vec(r * ns, 0.5),
        c_weight: g.vec(ns, 0.3),
        c_bias: 0.2,
    };
    let norm = Normalization::new(vec![0.3; d], vec![1.5; d]).unwrap();
    let art = Artifact::otflow(p, [0.0, 1.0], Provenance::now("test"))
        .unwrap()
        .with_normalization(norm)
        .unwrap();
    Model::from_artifact(art).unwrap()
}

/// A flow-matching model trained briefly on two moons, exported, and loaded back from
/// its f32 model file in f64 and in f32.
fn trained_flow() -> (Model<f64>, Model<f32>) {
    let train = Dataset::from_toy(Toy::Moons, 2000, 5).unwrap();
    let config = FlowMatchingConfig {
        hidden: vec![32, 32],
        batch_size: 128,
        iterations: 300,
        precision: Precision::F32,
        validate_every: 0,
        ..FlowMatchingConfig::default()
    };
    let trained = train_flow_matching(&config, &train, None, &mut |_| {}).unwrap();
    let bytes = trained
        .to_artifact()
        .unwrap()
        .to_bytes(StorageDtype::F32)
        .unwrap();
    (
        Model::from_bytes(&bytes).unwrap(),
        Model::from_bytes(&bytes).unwrap(),
    )
}

// ---------------------------------------------------------------------------------------
// The estimate itself
// ---------------------------------------------------------------------------------------

/// The probe k of the data point with generator index `sample`, as documented.
fn probe(h: &Hutchinson, sample: u64, k: u64, d: usize) -> Vec<f64> {
    let mut e = vec![0.0; d];
    match h.noise {
        Noise::Gaussian => Brownian::new(h.seed)
            .stream_normals(PROBE_STREAM, sample, k, &mut e)
            .unwrap(),
        Noise::Rademacher => {
            let mut draws = Draws::new(h.seed, PROBE_STREAM, sample, k).unwrap();
            for v in &mut e {
                *v = if draws.next_u64() >> 63 == 1 {
                    1.0
                } else {
                    -1.0
                };
            }
        }
    }
    e
}

#[test]
fn linear_flow_estimate_is_the_probes_quadratic_form() {
    // With J = −M constant, the divergence integral over [0, 1] is −(1/K) Σ_k ε_kᵀMε_k
    // (exact in any Runge–Kutta method) instead of −tr M: the log-likelihoods differ
    // by exactly tr M − (1/K) Σ_k ε_kᵀMε_k, whatever the state.
    let (d, r) = (3, 4);
    let (p, mm) = quadratic_otflow(d, r, 17);
    let art = Artifact::otflow(p, [0.0, 1.0], Provenance::now("test")).unwrap();
    let model = Model::<f64>::from_artifact(art).unwrap();
    let tr_m: f64 = (0..d).map(|i| mm[i * d + i]).sum();
    let n = 50;
    let x = Rng(3).vec(n * d, 1.0);
    let odes = [
        ("RK4", OdeOptions::fixed(OdeSolver::Rk4, 8)),
        ("Dopri5", OdeOptions::adaptive(1e-10, 1e-10)),
    ];
    for (name, ode) in odes {
        let exact = log_likelihood(&model, &x, n, &LikelihoodOptions::new(ode)).unwrap();
        for (noise, probes) in [(Noise::Rademacher, 1), (Noise::Gaussian, 3)] {
            let h = Hutchinson {
                first_sample: 1000,
                ..hutch(probes, noise, 9)
            };
            let opts = LikelihoodOptions::new(ode).with_hutchinson(h);
            let got = log_likelihood(&model, &x, n, &opts).unwrap();
            let mut spread = 0.0f64;
            for i in 0..n {
                let quad: f64 = (0..probes as u64)
                    .map(|k| {
                        let e = probe(&h, 1000 + i as u64, k, d);
                        (0..d * d)
                            .map(|ij| e[ij / d] * mm[ij] * e[ij % d])
                            .sum::<f64>()
                    })
                    .sum::<f64>()
                    / probes as f64;
                let want = tr_m - quad;
                spread = spread.max(want.abs());
                let diff = got[i] - exact[i];
                assert!(
                    (diff - want).abs() <= 1e-9 * (1.0 + exact[i].abs()),
                    "{name} {noise:?} K={probes} point {i}: difference {diff} vs tr M − ε̄ᵀMε̄ {want}"
                );
            }
            // The probes matter: the differences are not all zero.
            assert!(
                spread > 0.1,
                "{name} {noise:?}: largest difference {spread}"
            );
        }
    }
}

#[test]
fn trained_flow_matching_model_agrees_with_exact_within_standard_error() {
    let (m64, m32) = trained_flow();
    let x = Toy::Moons.sample(600, 77).unwrap();
    hutchinson_agreement(
        &m64,
        &x,
        OdeOptions::fixed(OdeSolver::Rk4, 16),
        Noise::Rademacher,
        1e-6,
        "flow matching f64 RK4 Rademacher",
    );
    hutchinson_agreement(
        &m32,
        &x,
        OdeOptions::fixed(OdeSolver::Rk4, 16),
        Noise::Gaussian,
        1e-6,
        "flow matching f32 RK4 Gaussian",
    );
    hutchinson_agreement(
        &m64,
        &x[..2 * 300],
        OdeOptions::adaptive(1e-6, 1e-6),
        Noise::Rademacher,
        1e-6,
        "flow matching f64 Dopri5 Rademacher",
    );
}

#[test]
fn otflow_model_agrees_with_exact_within_standard_error() {
    let model = otflow_model(4, 16, 3);
    let x = Rng(8).vec(500 * 4, 1.5);
    hutchinson_agreement(
        &model,
        &x,
        OdeOptions::fixed(OdeSolver::Rk4, 8),
        Noise::Rademacher,
        1e-6,
        "OT-Flow f64 RK4 Rademacher",
    );
}

// ---------------------------------------------------------------------------------------
// Reproducibility
// ---------------------------------------------------------------------------------------

#[test]
fn seeds_reproduce_bitwise_across_blocks_threads_and_pieces() {
    let (m64, _) = trained_flow();
    let otf = otflow_model(3, 8, 4);
    let x2 = Toy::Moons.sample(150, 5).unwrap();
    let x3 = Rng(6).vec(150 * 3, 1.0);
    let pool = |k| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(k)
            .build()
            .unwrap()
    };
    for (name, model, x) in [("flow matching", &m64, &x2), ("OT-Flow", &otf, &x3)] {
        let n = 150;
        for ode in [
            OdeOptions::fixed(OdeSolver::Rk4, 6),
            OdeOptions::adaptive(1e-5, 1e-5),
        ] {
            for noise in [Noise::Rademacher, Noise::Gaussian] {
                let h = hutch(2, noise, 21);
                let opts = LikelihoodOptions::new(ode).with_hutchinson(h);
                let ctx = format!("{name} {:?} {noise:?}", ode.step_size);
                let a = pool(1).install(|| log_likelihood(model, x, n, &opts).unwrap());
                let b = pool(2).install(|| log_likelihood(model, x, n, &opts).unwrap());
                assert_eq!(bits(&a), bits(&b), "{ctx}: thread count");
                let small = LikelihoodOptions {
                    block_rows: 7,
                    ..opts.clone()
                };
                let c = log_likelihood(model, x, n, &small).unwrap();
                assert_eq!(bits(&a), bits(&c), "{ctx}: block size");
                // Two pieces, the second with its generator offset, give one run.
                let d = model.dim();
                let (k, rest) = (60, n - 60);
                let p1 = log_likelihood(model, &x[..k * d], k, &opts).unwrap();
                let tail = LikelihoodOptions::new(ode).with_hutchinson(Hutchinson {
                    first_sample: k as u64,
                    ..h
                });
                let p2 = log_likelihood(model, &x[k * d..], rest, &tail).unwrap();
                let joined: Vec<f64> = p1.into_iter().chain(p2).collect();
                assert_eq!(bits(&a), bits(&joined), "{ctx}: pieces");
                // Another seed: other probes, other values. Gaussian probes never
                // repeat a value; Rademacher ones may (in d = 2, εᵀJε = tr J ±
                // (J₁₂ + J₂₁) takes two values, so two seeds tie on 3/8 of the points).
                let other = LikelihoodOptions::new(ode).with_hutchinson(hutch(2, noise, 22));
                let e = log_likelihood(model, x, n, &other).unwrap();
                let same = a.iter().zip(&e).filter(|(p, q)| p == q).count();
                let most = if noise == Noise::Gaussian { 0 } else { n - 1 };
                assert!(
                    same <= most,
                    "{ctx}: {same} of {n} values unchanged by the seed"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------------------

#[test]
fn exact_is_the_default_and_bad_settings_are_typed_errors() {
    let opts = rk4(4);
    assert_eq!(opts.divergence, Divergence::Exact);
    assert_eq!(Divergence::default(), Divergence::Exact);
    let h = Hutchinson::new(1, 0);
    assert_eq!((h.noise, h.first_sample), (Noise::Rademacher, 0));

    let model = otflow_model(2, 8, 1);
    let x = [0.1, 0.2, -0.3, 0.4];
    let run = |h: Hutchinson, n: usize| {
        log_likelihood(&model, &x[..2 * n], n, &rk4(4).with_hutchinson(h))
    };
    for probes in [0, MAX_PROBES + 1] {
        let err = run(Hutchinson::new(probes, 0), 2).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidArgument(m) if m.contains("probes")),
            "{probes} probes: {err}"
        );
    }
    let late = Hutchinson {
        first_sample: MAX_SAMPLE,
        ..Hutchinson::new(1, 0)
    };
    assert!(run(late, 1).is_ok(), "the last sample index is addressable");
    let err = run(late, 2).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    let err = run(Hutchinson::new(1, 0), 0).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    let err = log_likelihood(
        &model,
        &[0.1, f64::NAN],
        1,
        &rk4(4).with_hutchinson(Hutchinson::new(1, 0)),
    )
    .unwrap_err();
    assert!(matches!(err, Error::NonFinite(_)), "{err}");
}
