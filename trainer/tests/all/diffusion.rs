//! VP-SDE denoising score matching: gradient check of the loss against finite
//! differences, its value against the formula, and an end-to-end 2-D toy trained,
//! exported and sampled through the runtime's reverse SDE and probability-flow ODE,
//! compared with held-out data by the energy distance.

use crate::common::{energy_distance, mlp_leaves};
use socflow_runtime::artifact::{Artifact, ModelKind, StorageDtype};
use socflow_runtime::brownian::{Brownian, Stream};
use socflow_runtime::field::Field;
use socflow_runtime::model::Model;
use socflow_runtime::nn::mlp::Mlp;
use socflow_runtime::nn::Activation;
use socflow_runtime::ode::{OdeOptions, OdeSolver};
use socflow_runtime::sde::{SdeOptions, SdeScheme};
use socflow_runtime::vpsde::{ScoreOutput, VpSampling, VpSde};
use socflow_trainer::autodiff::{check_gradients, CheckOptions, Cpu, DType, Graph};
use socflow_trainer::checkpoint::{Checkpoint, Checkpointing};
use socflow_trainer::data::{Dataset, Toy};
use socflow_trainer::diffusion::{
    dsm_loss, train_diffusion, train_diffusion_checkpointed, DiffusionConfig, TrainedScore,
};
use socflow_trainer::mlp::{MlpNet, MlpVars};

/// Test-only draws (a stream no library module uses).
const TEST_STREAM: Stream = Stream(901);

fn normals(seed: u64, n: usize, d: usize) -> Vec<f64> {
    let b = Brownian::new(seed);
    let mut out = vec![0.0; n * d];
    for (i, row) in out.chunks_exact_mut(d).enumerate() {
        b.stream_normals(TEST_STREAM, i as u64, 0, row).unwrap();
    }
    out
}

/// The reverse-mode gradient of the DSM loss with respect to every parameter against
/// central differences (f64), for both outputs; and its value against the formula
/// (σ_t s + ε)² with s = net (score output) or s = −net/σ_t (noise output), computed
/// with the runtime's MLP.
#[test]
fn dsm_loss_gradient_and_value() {
    let (d, hidden, n) = (2usize, vec![5usize, 4], 7usize);
    let sde = VpSde::default();
    let x0: Vec<f64> = normals(1, n, d).iter().map(|v| 1.5 * v + 0.3).collect();
    let eps = normals(2, n, d);
    let t: Vec<f64> = (0..n).map(|i| 0.05 + 0.9 * i as f64 / n as f64).collect();
    let mut xt = vec![0.0; n * d];
    for i in 0..n {
        for j in 0..d {
            xt[i * d + j] = sde.alpha(t[i]) * x0[i * d + j] + sde.sigma(t[i]) * eps[i * d + j];
        }
    }
    for (k, output) in [ScoreOutput::Score, ScoreOutput::Noise]
        .into_iter()
        .enumerate()
    {
        let scale: Vec<f64> = t
            .iter()
            .map(|&ti| match output {
                ScoreOutput::Score => sde.sigma(ti),
                ScoreOutput::Noise => -1.0,
            })
            .collect();
        let act = Activation::Silu;
        let net = MlpNet::init(d, &hidden, act, 20 + k as u64).unwrap();
        let cpu = Cpu::new();
        let leaves = mlp_leaves(&cpu, &net);
        let mut g = Graph::new(cpu);
        let rep = check_gradients(
            &mut g,
            &leaves,
            |g, v| {
                let err = |e: socflow_trainer::Error| {
                    socflow_trainer::autodiff::Error::InvalidArgument(e.to_string())
                };
                let vars = MlpVars::from_vars(g, d, &hidden, act, v).map_err(err)?;
                let a = g.leaf_f64(n, d, &xt, DType::F64, false)?;
                let e = g.leaf_f64(n, d, &eps, DType::F64, false)?;
                let tt = g.leaf_f64(n, 1, &t, DType::F64, false)?;
                let sc = g.leaf_f64(n, 1, &scale, DType::F64, false)?;
                dsm_loss(g, &vars, a, e, tt, sc).map_err(err)
            },
            &CheckOptions::default(),
        )
        .unwrap();
        eprintln!("{output:?}: {rep}");
        assert_eq!(rep.checked, net.params().count());
        assert!(rep.max_rel_err <= 1e-7, "{output:?}: {rep}");

        let rt = Mlp::<f64>::new(&net.to_params().unwrap()).unwrap();
        let mut scratch = vec![0.0; rt.scratch_len()];
        let mut want = 0.0;
        for i in 0..n {
            let mut v = vec![0.0; d];
            rt.eval(t[i], &xt[i * d..(i + 1) * d], &mut v, &mut scratch)
                .unwrap();
            let s_t = sde.sigma(t[i]);
            for j in 0..d {
                let score = match output {
                    ScoreOutput::Score => v[j],
                    ScoreOutput::Noise => -v[j] / s_t,
                };
                want += (s_t * score + eps[i * d + j]).powi(2);
            }
        }
        want /= (n * d) as f64;
        assert!(
            (rep.value - want).abs() <= 1e-12 * want,
            "{} vs {want}",
            rep.value
        );
    }
}

/// Samples of an exported score model through the runtime as a user would: the f32
/// model file, `Model::vpsde`, data coordinates.
fn sample(art: &Artifact, how: VpSampling<f32>, n: usize, seed: u64) -> Vec<f64> {
    let bytes = art.to_bytes(StorageDtype::F32).unwrap();
    let model = Model::<f32>::from_bytes(&bytes).unwrap();
    let vp = model.vpsde().unwrap();
    let s = vp
        .sampler(vp.sampler_options(how, seed))
        .unwrap()
        .sample(n, 0)
        .unwrap();
    s.x.into_iter().map(f64::from).collect()
}

/// The unbiased MMD² between two 2-D samples with the Gaussian kernel
/// exp(−‖x − y‖²/(2h²)) of fixed bandwidth `h`.
fn mmd2(a: &[f64], b: &[f64], h: f64) -> f64 {
    let k = |p: &[f64], q: &[f64]| {
        (-((p[0] - q[0]).powi(2) + (p[1] - q[1]).powi(2)) / (2.0 * h * h)).exp()
    };
    let within = |x: &[f64]| {
        let n = x.len() / 2;
        let mut s = 0.0;
        for i in 0..n {
            for j in i + 1..n {
                s += k(&x[2 * i..2 * i + 2], &x[2 * j..2 * j + 2]);
            }
        }
        2.0 * s / (n * (n - 1)) as f64
    };
    let mut cross = 0.0;
    for p in a.chunks_exact(2) {
        for q in b.chunks_exact(2) {
            cross += k(p, q);
        }
    }
    within(a) + within(b) - 2.0 * cross / ((a.len() / 2) * (b.len() / 2)) as f64
}

/// MMD bandwidth: the scale of one 8gaussians mode (std 0.5/√2 ≈ 0.35), so the
/// statistic sees whether samples fall into the modes, not only the overall shape.
const MMD_BANDWIDTH: f64 = 0.5;

/// A two-sample statistic and its threshold: k = 3 times the 95th percentile of the
/// statistic between two independent data samples of size `n` (20 seed pairs).
struct Criterion {
    name: &'static str,
    stat: fn(&[f64], &[f64]) -> f64,
    threshold: f64,
}

impl Criterion {
    fn new(name: &'static str, stat: fn(&[f64], &[f64]) -> f64, n: usize) -> Self {
        let mut null: Vec<f64> = (0..20)
            .map(|k| {
                let a = Toy::EightGaussians.sample(n, 2000 + 2 * k).unwrap();
                let b = Toy::EightGaussians.sample(n, 2001 + 2 * k).unwrap();
                stat(&a, &b)
            })
            .collect();
        null.sort_by(f64::total_cmp);
        let p95 = null[(0.95 * (null.len() - 1) as f64).round() as usize];
        eprintln!(
            "{name}, data vs data (n = {n}): median {:.5}, p95 {p95:.5}, max {:.5}; threshold \
             3·p95 = {:.5}",
            null[null.len() / 2],
            null[null.len() - 1],
            3.0 * p95
        );
        Criterion {
            name,
            stat,
            threshold: 3.0 * p95,
        }
    }
}

/// 8gaussians end to end: train a noise-predicting score MLP, export it, load the f32
/// file, sample with the reverse SDE (Euler–Maruyama) and the probability-flow ODE
/// (RK4 and adaptive Dopri5), and compare with held-out data by two statistics: the
/// energy distance and the MMD with a Gaussian kernel at the modes' scale. Each
/// threshold is k = 3 times the 95th percentile of the statistic between two
/// independent data samples of the same size (20 seed pairs): under a perfect model
/// the statistic is distributed as the data-vs-data one, so k = 3 admits a model whose
/// population distance to the data is about twice the sampling noise. The test must
/// be able to fail: a "ring" with the data's radii and uniform angles (the modes
/// blurred away, the failure of an under-trained score) exceeds the MMD threshold, and
/// the untrained network and the N(0, I) prior (in data coordinates) exceed both.
#[test]
fn end_to_end_8gaussians() {
    let n_eval = 1500;
    let data = Dataset::from_toy(Toy::EightGaussians, 20_000, 21).unwrap();
    let (train, val) = data.split(0.9, 22).unwrap();
    // The defaults (3×128 SiLU, 18,000 Adam steps of 256 at 1e-3, halved every 6,000).
    let config = DiffusionConfig {
        validate_every: 3000,
        ..DiffusionConfig::default()
    };
    let start = std::time::Instant::now();
    let trained = train_diffusion(&config, &train, Some(&val), &mut |_| {}).unwrap();
    eprintln!(
        "trained in {:.1} s; validation {:?}",
        start.elapsed().as_secs_f64(),
        trained.validation
    );
    // Training lowered the validation loss.
    let v = &trained.validation;
    assert!(v.last().unwrap().1 < v[0].1, "{v:?}");
    let art = trained.to_artifact().unwrap();
    assert_eq!(art.card.kind, ModelKind::Score);
    assert_eq!(art.card.vpsde, Some(config.sde()));

    let held_out = Toy::EightGaussians.sample(n_eval, 1000).unwrap();
    let criteria = [
        Criterion::new("energy distance", energy_distance, n_eval),
        Criterion::new("MMD² (h = 0.5)", |a, b| mmd2(a, b, MMD_BANDWIDTH), n_eval),
    ];
    let methods = [
        (
            "reverse SDE, Euler–Maruyama 500 steps",
            VpSampling::ReverseSde(SdeOptions::new(SdeScheme::EulerMaruyama, 500)),
        ),
        (
            "probability flow, RK4 100 steps",
            VpSampling::ProbabilityFlow(OdeOptions::fixed(OdeSolver::Rk4, 100)),
        ),
        (
            "probability flow, Dopri5 1e-5",
            VpSampling::ProbabilityFlow(OdeOptions::adaptive(1e-5, 1e-5)),
        ),
    ];
    let mut model_samples = Vec::new();
    for (name, how) in methods {
        let t0 = std::time::Instant::now();
        model_samples.push((name, sample(&art, how, n_eval, 77)));
        eprintln!("{name}: sampled in {:.2} s", t0.elapsed().as_secs_f64());
    }

    // Baselines the criteria must reject.
    let untrained = train_diffusion(
        &DiffusionConfig {
            iterations: 1,
            ..config.clone()
        },
        &train,
        None,
        &mut |_| {},
    )
    .unwrap();
    let untrained = sample(
        &untrained.to_artifact().unwrap(),
        VpSampling::ReverseSde(SdeOptions::new(SdeScheme::EulerMaruyama, 500)),
        n_eval,
        77,
    );
    let norm = art.card.normalization.clone().unwrap();
    let mut prior = normals(5, n_eval, 2);
    norm.to_data(&mut prior).unwrap();
    let ring: Vec<f64> = Toy::EightGaussians
        .sample(n_eval, 1001)
        .unwrap()
        .chunks_exact(2)
        .zip(normals(6, n_eval, 2).chunks_exact(2))
        .flat_map(|(x, z)| {
            let r = x[0].hypot(x[1]);
            let angle = z[1].atan2(z[0]);
            [r * angle.cos(), r * angle.sin()]
        })
        .collect();

    for c in &criteria {
        let stat = |x: &[f64]| (c.stat)(x, &held_out);
        let (u, p, r) = (stat(&untrained), stat(&prior), stat(&ring));
        eprintln!(
            "{}: untrained network {u:.5}, prior {p:.5}, ring {r:.5} (threshold {:.5})",
            c.name, c.threshold
        );
        assert!(u > 10.0 * c.threshold, "{}: untrained {u}", c.name);
        assert!(p > c.threshold, "{}: prior {p}", c.name);
        if c.name.starts_with("MMD") {
            assert!(r > c.threshold, "{}: the ring passes ({r})", c.name);
        }
        for (name, x) in &model_samples {
            let s = stat(x);
            eprintln!("{}: {name}: {s:.5}", c.name);
            assert!(
                s <= c.threshold,
                "{}: {name}: {s} vs {}",
                c.name,
                c.threshold
            );
        }
    }
}

/// Config JSON round trip, unknown keys, and bad settings refused before training.
#[test]
fn config_json_and_errors() {
    let example = r#"{"hidden": [128, 128, 128], "activation": "silu", "batch_size": 256,
        "iterations": 18000,
        "optimizer": {"lr": 0.001, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8,
                      "weight_decay": 0.0, "decoupled": false},
        "schedule": {"type": "step", "every": 6000, "factor": 0.5}, "clip_norm": null,
        "seed": 0, "beta_min": 0.1, "beta_max": 20.0, "eps": 0.001, "output": "noise",
        "normalize": true, "validate_every": 1000, "precision": "f32"}"#;
    let c = DiffusionConfig::from_json(example).unwrap();
    assert_eq!(c, DiffusionConfig::default());
    assert_eq!(
        DiffusionConfig::from_json(&c.to_json().unwrap()).unwrap(),
        c
    );
    let partial = DiffusionConfig::from_json(r#"{"beta_max": 10, "output": "score"}"#).unwrap();
    assert_eq!(partial.beta_max, 10.0);
    assert_eq!(partial.output, ScoreOutput::Score);
    assert!(DiffusionConfig::from_json(r#"{"lr": 0.1}"#).is_err());
    assert!(DiffusionConfig::from_json(r#"{"output": "velocity"}"#).is_err());

    let data = Dataset::from_toy(Toy::Moons, 100, 1).unwrap();
    let bad = [
        DiffusionConfig {
            batch_size: 101,
            ..DiffusionConfig::default()
        },
        DiffusionConfig {
            hidden: vec![],
            ..DiffusionConfig::default()
        },
        DiffusionConfig {
            iterations: 0,
            ..DiffusionConfig::default()
        },
        DiffusionConfig {
            eps: 0.0,
            ..DiffusionConfig::default()
        },
        DiffusionConfig {
            beta_min: 5.0,
            beta_max: 1.0,
            ..DiffusionConfig::default()
        },
    ];
    for c in bad {
        assert!(train_diffusion(&c, &data, None, &mut |_| {}).is_err());
    }
    let other_dim = Dataset::new(3, 1, vec![0.0, 1.0, 2.0]).unwrap();
    let c = DiffusionConfig {
        batch_size: 10,
        iterations: 1,
        ..DiffusionConfig::default()
    };
    assert!(train_diffusion(&c, &data, Some(&other_dim), &mut |_| {}).is_err());
    // A seeded run is reproducible.
    let c = DiffusionConfig {
        hidden: vec![8],
        batch_size: 20,
        iterations: 5,
        ..DiffusionConfig::default()
    };
    let a: TrainedScore = train_diffusion(&c, &data, Some(&data), &mut |_| {}).unwrap();
    let b = train_diffusion(&c, &data, Some(&data), &mut |_| {}).unwrap();
    assert_eq!(a, b);
}

fn bits(v: &[f64]) -> Vec<u64> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// A run resumed from its checkpoint (read back from bytes) continues bitwise as the
/// uninterrupted run: the same losses after the resume point and the same parameters.
#[test]
fn resumes_bitwise_from_a_checkpoint() {
    let data = Dataset::from_toy(Toy::Moons, 600, 4).unwrap();
    let (tr, va) = data.split(0.8, 2).unwrap();
    let config = DiffusionConfig {
        hidden: vec![16, 16],
        batch_size: 64,
        iterations: 12,
        validate_every: 2,
        ..DiffusionConfig::default()
    };
    let mut saved = Vec::new();
    let full = {
        let mut save = |c: &Checkpoint| {
            saved.push(c.clone());
            Ok(())
        };
        let mut ck = Checkpointing {
            every: 4,
            resume: None,
            save: &mut save,
        };
        train_diffusion_checkpointed(&config, &tr, Some(&va), &mut ck, &mut |_| {}).unwrap()
    };
    let mid = saved.iter().find(|c| c.iteration == 8).unwrap();
    let mid = Checkpoint::from_bytes(&mid.to_bytes().unwrap()).unwrap();
    let mut ck = Checkpointing {
        every: 0,
        resume: Some(mid),
        save: &mut |_| Ok(()),
    };
    let resumed =
        train_diffusion_checkpointed(&config, &tr, Some(&va), &mut ck, &mut |_| {}).unwrap();
    assert_eq!(bits(&full.losses[8..]), bits(&resumed.losses));
    for (a, b) in full
        .net
        .params()
        .values
        .iter()
        .zip(&resumed.net.params().values)
    {
        assert_eq!(bits(a), bits(b));
    }
    // A checkpoint of another config is refused.
    let other = DiffusionConfig {
        beta_max: 10.0,
        ..config.clone()
    };
    let mut ck = Checkpointing {
        every: 0,
        resume: Some(saved[0].clone()),
        save: &mut |_| Ok(()),
    };
    assert!(train_diffusion_checkpointed(&other, &tr, Some(&va), &mut ck, &mut |_| {}).is_err());
}
