//! Conditional flow matching: gradient check of the loss, trainer MLP against the
//! runtime's, seeded determinism, the OT coupling's transport cost, a Gaussian problem
//! with a closed-form optimal field, an end-to-end 2-D toy through the runtime's
//! sampler, and reflow.

use crate::common::{energy_distance, mlp_leaves, null_distribution, sample_model};
use socflow_runtime::artifact::{Artifact, Params, StorageDtype};
use socflow_runtime::brownian::{Brownian, Stream};
use socflow_runtime::field::Field;
use socflow_runtime::model::Model;
use socflow_runtime::nn::mlp::Mlp;
use socflow_runtime::nn::Activation;
use socflow_runtime::ode::{OdeOptions, OdeSolver, SaveAt};
use socflow_runtime::sampler::{Sampler, SamplerOptions};
use socflow_trainer::assignment::AssignmentWorkspace;
use socflow_trainer::autodiff::{check_gradients, CheckOptions, Cpu, DType, Graph};
use socflow_trainer::data::rng::Draws;
use socflow_trainer::data::{Dataset, Toy};
use socflow_trainer::flow_matching::{
    cfm_loss, pair_batch, reflow_pairs, train_flow_matching, train_reflow, Coupling,
    FlowMatchingConfig, Precision, ReflowConfig, TrainedFlow,
};
use socflow_trainer::mlp::{MlpNet, MlpVars};
use socflow_trainer::optim::{AdamConfig, Schedule};

/// Test-only draws (a stream no library module uses).
const TEST_STREAM: Stream = Stream(900);

fn normals(seed: u64, n: usize, d: usize) -> Vec<f64> {
    let b = Brownian::new(seed);
    let mut x = vec![0.0; n * d];
    for (i, row) in x.chunks_exact_mut(d).enumerate() {
        b.stream_normals(TEST_STREAM, i as u64, 0, row).unwrap();
    }
    x
}

fn uniforms(seed: u64, n: usize) -> Vec<f64> {
    (0..n as u64)
        .map(|i| Draws::new(seed, TEST_STREAM, i, 1).unwrap().uniform())
        .collect()
}

fn no_progress() -> impl FnMut(&socflow_trainer::flow_matching::Progress) {
    |_| {}
}

/// The reverse-mode gradient of the CFM loss with respect to every MLP parameter
/// against fourth-order central differences (f64), for each activation.
#[test]
fn cfm_loss_gradient_matches_finite_differences() {
    let (d, hidden, n) = (2usize, vec![5usize, 4], 7usize);
    let x0: Vec<f64> = normals(1, n, d).iter().map(|v| 1.5 * v + 0.3).collect();
    let x1 = normals(2, n, d);
    let t = uniforms(3, n);
    for (k, act) in [Activation::Silu, Activation::Tanh, Activation::Softplus]
        .into_iter()
        .enumerate()
    {
        let net = MlpNet::init(d, &hidden, act, 10 + k as u64).unwrap();
        let cpu = Cpu::new();
        let leaves = mlp_leaves(&cpu, &net);
        let mut g = Graph::new(cpu);
        let rep = check_gradients(
            &mut g,
            &leaves,
            |g, v| {
                let vars = MlpVars::from_vars(g, d, &hidden, act, v).map_err(|e| {
                    socflow_trainer::autodiff::Error::InvalidArgument(e.to_string())
                })?;
                let a = g.leaf_f64(n, d, &x0, DType::F64, false)?;
                let b = g.leaf_f64(n, d, &x1, DType::F64, false)?;
                let tt = g.leaf_f64(n, 1, &t, DType::F64, false)?;
                cfm_loss(g, &vars, a, b, tt)
                    .map_err(|e| socflow_trainer::autodiff::Error::InvalidArgument(e.to_string()))
            },
            &CheckOptions::default(),
        )
        .unwrap();
        eprintln!("{act:?}: {rep}");
        assert_eq!(rep.leaves.len(), 2 * (hidden.len() + 1));
        // Every element of every parameter (each leaf is below the subset size).
        assert_eq!(rep.checked, net.params().count());
        assert!(rep.max_rel_err <= 1e-7, "{act:?}: {rep}");

        // The value is the loss as written in the module docs, computed here by hand
        // from the runtime's MLP.
        let rt = Mlp::<f64>::new(&net.to_params().unwrap()).unwrap();
        let mut want = 0.0;
        let mut scratch = vec![0.0; rt.scratch_len()];
        for i in 0..n {
            let u: Vec<f64> = (0..d).map(|j| x1[i * d + j] - x0[i * d + j]).collect();
            let psi: Vec<f64> = (0..d).map(|j| x0[i * d + j] + t[i] * u[j]).collect();
            let mut v = vec![0.0; d];
            rt.eval(t[i], &psi, &mut v, &mut scratch).unwrap();
            want += (0..d).map(|j| (v[j] - u[j]).powi(2)).sum::<f64>();
        }
        want /= (n * d) as f64;
        assert!(
            (rep.value - want).abs() <= 1e-13 * want,
            "{} vs {want}",
            rep.value
        );
    }
}

fn short_config(iterations: u64, coupling: Coupling, precision: Precision) -> FlowMatchingConfig {
    FlowMatchingConfig {
        hidden: vec![32, 32],
        batch_size: 128,
        iterations,
        coupling,
        precision,
        validate_every: 10,
        ..FlowMatchingConfig::default()
    }
}

fn max_rel(a: &[f64], b: &[f64]) -> f64 {
    let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

/// The trainer's network equals the runtime's on the exported parameters: the artifact
/// holds `layers.i.weight` [out, in] and `layers.i.bias` [out], and both evaluate the
/// same function (f32: 1e-6 relative to the largest output; f64: 1e-12).
#[test]
fn trainer_mlp_equals_runtime_mlp_on_exported_parameters() {
    let train = Dataset::from_toy(Toy::Moons, 2000, 5).unwrap();
    for act in [Activation::Silu, Activation::Tanh, Activation::Softplus] {
        let config = FlowMatchingConfig {
            activation: act,
            ..short_config(20, Coupling::Independent, Precision::F32)
        };
        let trained = train_flow_matching(&config, &train, None, &mut no_progress()).unwrap();
        let art = trained.to_artifact().unwrap();
        let shapes = art.tensor_shapes();
        let want: Vec<(String, Vec<usize>)> = vec![
            ("layers.0.bias".into(), vec![32]),
            ("layers.0.weight".into(), vec![32, 3]),
            ("layers.1.bias".into(), vec![32]),
            ("layers.1.weight".into(), vec![32, 32]),
            ("layers.2.bias".into(), vec![2]),
            ("layers.2.weight".into(), vec![2, 32]),
        ];
        assert_eq!(shapes, want);
        // Through the file format (f64 storage keeps every value).
        let art = Artifact::from_bytes(&art.to_bytes(StorageDtype::F64).unwrap()).unwrap();
        let Params::Mlp(p) = &art.params else {
            panic!("an MLP artifact")
        };
        assert_eq!(p, &trained.net.to_params().unwrap());
        assert!(art.card.normalization.is_some());

        let n = 300;
        let x: Vec<f64> = normals(7, n, 2).iter().map(|v| 2.0 * v).collect();
        let t = uniforms(8, n);
        for (dtype, tol) in [(DType::F32, 1e-6), (DType::F64, 1e-12)] {
            let ours = trained.net.eval(Cpu::new(), &x, &t, dtype).unwrap();
            let theirs: Vec<f64> = if dtype == DType::F32 {
                let m = Mlp::<f32>::new(p).unwrap();
                let xf: Vec<f32> = x.iter().map(|&v| v as f32).collect();
                let tf: Vec<f32> = t.iter().map(|&v| v as f32).collect();
                let mut v = vec![0.0f32; n * 2];
                let mut s = vec![0.0f32; m.block_scratch_len(n)];
                m.eval_block(&tf, &xf, &mut v, &mut s).unwrap();
                v.into_iter().map(f64::from).collect()
            } else {
                let m = Mlp::<f64>::new(p).unwrap();
                let mut v = vec![0.0; n * 2];
                let mut s = vec![0.0; m.block_scratch_len(n)];
                m.eval_block(&t, &x, &mut v, &mut s).unwrap();
                v
            };
            let err = max_rel(&ours, &theirs);
            eprintln!("{act:?} {dtype}: max |trainer − runtime| / max |runtime| = {err:.3e}");
            assert!(err <= tol, "{act:?} {dtype}: {err:e}");
        }
    }
}

/// Two runs of one config give bitwise the same losses and parameters; another seed
/// gives other ones.
#[test]
fn seeded_runs_are_bitwise_equal() {
    let data = Dataset::from_toy(Toy::EightGaussians, 3000, 1).unwrap();
    let (train, val) = data.split(0.8, 2).unwrap();
    for precision in [Precision::F32, Precision::F64] {
        let config = short_config(25, Coupling::MiniBatchOt, precision);
        let run = |c: &FlowMatchingConfig| {
            train_flow_matching(c, &train, Some(&val), &mut no_progress()).unwrap()
        };
        let (a, b) = (run(&config), run(&config));
        let bits = |t: &TrainedFlow| -> Vec<u64> {
            t.losses
                .iter()
                .chain(t.validation.iter().map(|(_, l)| l))
                .chain(t.net.params().values.iter().flatten())
                .map(|v| v.to_bits())
                .collect()
        };
        assert_eq!(bits(&a), bits(&b));
        assert_eq!(a.validation.len(), 3); // after 10, 20 and the last (25)
        let c = run(&FlowMatchingConfig {
            seed: 1,
            ..config.clone()
        });
        assert_ne!(a.losses, c.losses);
    }
}

/// Mini-batch OT pairs a batch by a permutation with a lower transport cost than the
/// independent pairing and than any of 200 random permutations.
#[test]
fn ot_coupling_lowers_transport_cost() {
    let (n, d) = (256, 2);
    let x0 = Toy::EightGaussians.sample(n, 3).unwrap();
    let x1 = normals(4, n, d);
    let cost = |a: &[f64], b: &[f64]| -> f64 {
        a.chunks_exact(d)
            .zip(b.chunks_exact(d))
            .map(|(p, q)| (p[0] - q[0]).powi(2) + (p[1] - q[1]).powi(2))
            .sum::<f64>()
            / n as f64
    };
    let mut ws = AssignmentWorkspace::new();
    let mut same = x1.clone();
    pair_batch(Coupling::Independent, &x0, &mut same, d, &mut ws).unwrap();
    assert_eq!(same, x1);
    let mut paired = x1.clone();
    pair_batch(Coupling::MiniBatchOt, &x0, &mut paired, d, &mut ws).unwrap();
    // A permutation of the rows: the same multiset of points, none twice.
    let mut rows_a: Vec<[u64; 2]> = x1
        .chunks_exact(2)
        .map(|r| [r[0].to_bits(), r[1].to_bits()])
        .collect();
    let mut rows_b: Vec<[u64; 2]> = paired
        .chunks_exact(2)
        .map(|r| [r[0].to_bits(), r[1].to_bits()])
        .collect();
    rows_a.sort_unstable();
    rows_b.sort_unstable();
    assert_eq!(rows_a, rows_b);

    let (indep, ot) = (cost(&x0, &x1), cost(&x0, &paired));
    let mut best_random = f64::INFINITY;
    for s in 0..200u64 {
        let perm = socflow_trainer::data::rng::permutation(n, s, TEST_STREAM, 0).unwrap();
        let shuffled: Vec<f64> = perm
            .iter()
            .flat_map(|&p| x1[p * d..(p + 1) * d].to_vec())
            .collect();
        best_random = best_random.min(cost(&x0, &shuffled));
    }
    eprintln!(
        "mean squared pair distance: independent {indep:.4}, OT {ot:.4}, best of 200 random \
         permutations {best_random:.4}"
    );
    assert!(ot < 0.5 * indep, "OT {ot} vs independent {indep}");
    assert!(ot < best_random);
}

/// Data N(μ, s²I), noise N(0, I), independent coupling: ψ_t and u = x₁ − x₀ are jointly
/// Gaussian, so the marginal field E[u | ψ_t = x] is linear in x:
///
///   v*(x, t) = −μ + c(t)/σ²(t) · (x − (1 − t)μ),
///   c(t) = Cov(u, ψ_t) per coordinate = t − (1 − t)s²,  σ²(t) = (1 − t)²s² + t².
///
/// The learned field must approach it: relative mean squared error over ψ_t samples at
/// most 1% (10% relative RMS; the best field that ignores x, −μ, is at 22%),
/// and the validation loss must approach the least possible loss
/// L* = E_t[(1 + s²) − c(t)²/σ²(t)] (the conditional variance of u, per coordinate).
#[test]
fn gaussian_to_gaussian_learns_the_closed_form_field() {
    let (d, s) = (2usize, 0.5f64);
    let mu = [1.5f64, -1.0];
    let make = |seed: u64, n: usize| {
        let z = normals(seed, n, d);
        let x: Vec<f64> = z
            .chunks_exact(d)
            .flat_map(|r| [mu[0] + s * r[0], mu[1] + s * r[1]])
            .collect();
        Dataset::new(n, d, x).unwrap()
    };
    let (train, val) = (make(20, 8192), make(21, 4096));
    let config = FlowMatchingConfig {
        hidden: vec![32, 32],
        batch_size: 1024,
        iterations: 3000,
        normalize: false,
        validate_every: 500,
        optimizer: AdamConfig::adam(2e-3),
        schedule: Schedule::Step {
            every: 750,
            factor: 0.5,
        },
        ..FlowMatchingConfig::default()
    };
    let trained = train_flow_matching(&config, &train, Some(&val), &mut no_progress()).unwrap();

    let c = |t: f64| t - (1.0 - t) * s * s;
    let var = |t: f64| (1.0 - t).powi(2) * s * s + t * t;
    let v_star = |x: &[f64], t: f64| -> [f64; 2] {
        let k = c(t) / var(t);
        [
            -mu[0] + k * (x[0] - (1.0 - t) * mu[0]),
            -mu[1] + k * (x[1] - (1.0 - t) * mu[1]),
        ]
    };
    // Points of the marginal ψ_t: fresh data, fresh noise, uniform-ish t.
    let n = 8192;
    let x0 = make(30, n).x;
    let x1 = normals(31, n, d);
    let t = uniforms(32, n);
    let psi: Vec<f64> = (0..n * d)
        .map(|k| (1.0 - t[k / d]) * x0[k] + t[k / d] * x1[k])
        .collect();
    let v = trained.net.eval(Cpu::new(), &psi, &t, DType::F64).unwrap();
    let (mut err, mut norm, mut base) = (0.0, 0.0, 0.0);
    let mut bins = [(0.0f64, 0.0f64); 10];
    for i in 0..n {
        let w = v_star(&psi[i * d..(i + 1) * d], t[i]);
        let b = ((t[i] * 10.0) as usize).min(9);
        for j in 0..d {
            bins[b].0 += (v[i * d + j] - w[j]).powi(2);
            bins[b].1 += w[j].powi(2);
        }
    }
    let by_t: Vec<String> = bins.iter().map(|(e, n)| format!("{:.1e}", e / n)).collect();
    eprintln!("Gaussian: relative MSE by t in tenths of [0, 1]: {by_t:?}");
    for i in 0..n {
        let w = v_star(&psi[i * d..(i + 1) * d], t[i]);
        for j in 0..d {
            err += (v[i * d + j] - w[j]).powi(2);
            norm += w[j].powi(2);
            // The best field that ignores x: E[u | t] = −μ.
            base += (-mu[j] - w[j]).powi(2);
        }
    }
    let (rel, rel_base) = (err / norm, base / norm);
    // L* by the midpoint rule on 10⁵ points (the integrand is smooth on [0, 1]).
    let m = 100_000;
    let l_star = (0..m)
        .map(|k| {
            let t = (k as f64 + 0.5) / m as f64;
            (1.0 + s * s) - c(t).powi(2) / var(t)
        })
        .sum::<f64>()
        / m as f64;
    let val_loss = trained.validation_loss().unwrap();
    eprintln!(
        "Gaussian: relative MSE of the learned field {rel:.3e} (x-blind baseline \
         {rel_base:.3e}); validation loss {val_loss:.4}, least possible L* = {l_star:.4}, \
         training loss (last 100) {:.4}",
        trained.final_loss(100)
    );
    assert!(rel <= 0.01, "relative MSE {rel}");
    assert!(
        rel_base > 10.0 * 0.01,
        "the baseline should be far off: {rel_base}"
    );
    // The validation loss is an estimate on 4096 draws; it cannot be much below L*,
    // and a field within 1% relative MSE puts it within ~0.01·E‖v*‖²/d above.
    let mean_sq = norm / (n * d) as f64;
    assert!(
        (val_loss - l_star).abs() <= 0.05 * l_star + 0.01 * mean_sq,
        "validation {val_loss} vs L* {l_star}"
    );
}

/// Mean ‖x_RK4(100 steps) − x_Euler(1 step)‖² over 1000 samples from the same prior
/// draws (data coordinates): zero for straight paths.
fn straightness(a: &Artifact) -> f64 {
    let fine = sample_model(a, 1000, 100, 123);
    let model = Model::<f32>::from_artifact(a.clone()).unwrap();
    let mut opts = SamplerOptions::ode(OdeOptions::fixed(OdeSolver::Euler, 1), 123);
    opts.normalization = a.card.normalization.clone();
    let one = Sampler::new(model.field().unwrap(), 1.0, 0.0, opts)
        .unwrap()
        .sample(1000, 0)
        .unwrap()
        .x;
    fine.iter()
        .zip(&one)
        .map(|(a, b)| (a - f64::from(*b)).powi(2))
        .sum::<f64>()
        / 1000.0
}

/// 8gaussians end to end: train (OT coupling, normalization), export, load as a
/// `Model<f32>`, sample with RK4 through the runtime's sampler, and compare with
/// held-out data by the energy distance. Threshold: k = 3 times the 95th percentile of
/// the same statistic between two independent data samples of the same size (20 seed
/// pairs). Under a perfect model the statistic is distributed as the data-vs-data one,
/// so k = 1 would fail 5% of perfect models; k = 3 admits a model whose population
/// distance to the data is about twice the sampling noise at this size, and no more: a
/// moment-matched Gaussian (right mean and covariance, no modes) must fail it.
#[test]
fn end_to_end_8gaussians() {
    let n_eval = 1500;
    let data = Dataset::from_toy(Toy::EightGaussians, 20_000, 11).unwrap();
    let (train, val) = data.split(0.9, 12).unwrap();
    let config = FlowMatchingConfig {
        hidden: vec![64, 64],
        batch_size: 256,
        iterations: 1500,
        coupling: Coupling::MiniBatchOt,
        validate_every: 250,
        optimizer: AdamConfig::adam(2e-3),
        ..FlowMatchingConfig::default()
    };
    let mut last = None;
    let teacher = train_flow_matching(&config, &train, Some(&val), &mut |p| {
        if p.validation_loss.is_some() {
            last = Some(*p);
        }
    })
    .unwrap();
    eprintln!("teacher: validation {:?}", teacher.validation);
    assert_eq!(last.unwrap().iteration, 1500);
    let art = teacher.to_artifact().unwrap();
    assert!(art.card.provenance.details["config"].contains("minibatch_ot"));

    let samples = sample_model(&art, n_eval, 40, 77);
    let held_out = Toy::EightGaussians.sample(n_eval, 1000).unwrap();
    let stat = energy_distance(&samples, &held_out);
    let null = null_distribution(n_eval);
    let p95 = null[(0.95 * (null.len() - 1) as f64).round() as usize];
    let k = 3.0;
    // The moment-matched Gaussian.
    let m = [
        held_out.chunks_exact(2).map(|r| r[0]).sum::<f64>() / n_eval as f64,
        held_out.chunks_exact(2).map(|r| r[1]).sum::<f64>() / n_eval as f64,
    ];
    let mut cov = [0.0; 3];
    for r in held_out.chunks_exact(2) {
        let (a, b) = (r[0] - m[0], r[1] - m[1]);
        cov[0] += a * a / n_eval as f64;
        cov[1] += a * b / n_eval as f64;
        cov[2] += b * b / n_eval as f64;
    }
    let l11 = cov[0].sqrt();
    let l21 = cov[1] / l11;
    let l22 = (cov[2] - l21 * l21).sqrt();
    let gauss: Vec<f64> = normals(50, n_eval, 2)
        .chunks_exact(2)
        .flat_map(|z| [m[0] + l11 * z[0], m[1] + l21 * z[0] + l22 * z[1]])
        .collect();
    let gauss_stat = energy_distance(&gauss, &Toy::EightGaussians.sample(n_eval, 1001).unwrap());
    eprintln!(
        "energy distance: model vs held-out {stat:.5}; data vs data: median {:.5}, p95 \
         {p95:.5}, max {:.5}; threshold k·p95 = {:.5}; moment-matched Gaussian {gauss_stat:.5}",
        null[null.len() / 2],
        null[null.len() - 1],
        k * p95
    );
    assert!(
        gauss_stat > k * p95,
        "the test cannot tell a Gaussian from the data"
    );
    assert!(stat <= k * p95, "model {stat} vs threshold {}", k * p95);

    // reflow_pairs' x1 are the sampler's own prior draws.
    let pairs = reflow_pairs(&art, 64, 10, 5, 3).unwrap();
    let model = Model::<f64>::from_artifact(art.clone()).unwrap();
    let mut opts = SamplerOptions::ode(OdeOptions::fixed(OdeSolver::Rk4, 10), 5);
    opts.trajectory = Some(SaveAt::Steps);
    let out = Sampler::new(model.field().unwrap(), 1.0, 0.0, opts)
        .unwrap()
        .sample(64, 3)
        .unwrap();
    let traj = out.trajectory.unwrap();
    assert_eq!(&traj.states[..64 * 2], &pairs.x1.x[..]);
    assert_eq!(out.x, pairs.x0.x);
}

/// Reflow (rectified flow): a teacher trained with independent coupling has curved
/// paths; a student trained on the teacher's ODE pairs has straighter ones, so one
/// Euler step lands much closer to its own 100-step RK4 solution (we ask for less than
/// half the teacher's squared error; Liu et al. report far larger reductions), while
/// its samples still match the data by the end-to-end test's criterion.
#[test]
fn reflow_straightens_paths() {
    let n_eval = 1500;
    let data = Dataset::from_toy(Toy::EightGaussians, 20_000, 13).unwrap();
    let config = FlowMatchingConfig {
        hidden: vec![64, 64],
        batch_size: 256,
        iterations: 1500,
        coupling: Coupling::Independent,
        validate_every: 0,
        optimizer: AdamConfig::adam(2e-3),
        ..FlowMatchingConfig::default()
    };
    let teacher = train_flow_matching(&config, &data, None, &mut no_progress()).unwrap();
    let art = teacher.to_artifact().unwrap();
    let reflow = ReflowConfig {
        pairs: 8192,
        validation_pairs: 1024,
        steps: 40,
        seed: 9,
    };
    let student = train_reflow(&config, &reflow, &art, &mut no_progress()).unwrap();
    let student_art = student.to_artifact().unwrap();
    assert_eq!(student_art.card.normalization, art.card.normalization);
    assert!(student_art.card.provenance.details.contains_key("reflow"));
    let ot = FlowMatchingConfig {
        coupling: Coupling::MiniBatchOt,
        ..config.clone()
    };
    assert!(train_reflow(&ot, &reflow, &art, &mut no_progress()).is_err());

    let (s_teacher, s_student) = (straightness(&art), straightness(&student_art));
    let held_out = Toy::EightGaussians.sample(n_eval, 1000).unwrap();
    let null = null_distribution(n_eval);
    let p95 = null[(0.95 * (null.len() - 1) as f64).round() as usize];
    let stats =
        [&art, &student_art].map(|a| energy_distance(&sample_model(a, n_eval, 40, 77), &held_out));
    eprintln!(
        "reflow: mean ‖x_RK4(100) − x_Euler(1)‖² teacher {s_teacher:.4}, student \
         {s_student:.4}; energy distance teacher {:.5}, student {:.5} (threshold 3·p95 = \
         {:.5}); student validation {:?}",
        stats[0],
        stats[1],
        3.0 * p95,
        student.validation
    );
    assert!(s_student < 0.5 * s_teacher, "{s_student} vs {s_teacher}");
    assert!(stats[1] <= 3.0 * p95);
}

/// The config's JSON form: the documented example parses, defaults fill omitted
/// fields, unknown keys and bad values are typed errors (no panic).
#[test]
fn config_json_and_errors() {
    let example = r#"{"hidden": [64, 64], "activation": "silu", "batch_size": 256,
        "iterations": 2000,
        "optimizer": {"lr": 0.001, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8,
                      "weight_decay": 0.0, "decoupled": false},
        "schedule": {"type": "constant"}, "clip_norm": null, "seed": 0,
        "coupling": "minibatch_ot", "normalize": true, "validate_every": 100,
        "precision": "f32"}"#;
    let c = FlowMatchingConfig::from_json(example).unwrap();
    assert_eq!(
        c,
        FlowMatchingConfig {
            coupling: Coupling::MiniBatchOt,
            ..FlowMatchingConfig::default()
        }
    );
    let round = FlowMatchingConfig::from_json(&c.to_json().unwrap()).unwrap();
    assert_eq!(round, c);
    let partial =
        FlowMatchingConfig::from_json(r#"{"iterations": 5, "precision": "f64"}"#).unwrap();
    assert_eq!(partial.iterations, 5);
    assert_eq!(partial.precision, Precision::F64);
    assert!(FlowMatchingConfig::from_json(r#"{"iterations": 5, "lr": 0.1}"#).is_err());
    assert!(FlowMatchingConfig::from_json(r#"{"coupling": "ot"}"#).is_err());
    let r: ReflowConfig = serde_json::from_str(r#"{"pairs": 100}"#).unwrap();
    assert_eq!(r.pairs, 100);

    let data = Dataset::from_toy(Toy::Moons, 100, 1).unwrap();
    let bad = [
        FlowMatchingConfig {
            batch_size: 101,
            ..FlowMatchingConfig::default()
        },
        FlowMatchingConfig {
            hidden: vec![],
            ..FlowMatchingConfig::default()
        },
        FlowMatchingConfig {
            iterations: 0,
            ..FlowMatchingConfig::default()
        },
        FlowMatchingConfig {
            clip_norm: Some(-1.0),
            ..FlowMatchingConfig::default()
        },
    ];
    for c in bad {
        assert!(train_flow_matching(&c, &data, None, &mut no_progress()).is_err());
    }
    let other_dim = Dataset::new(3, 1, vec![0.0, 1.0, 2.0]).unwrap();
    let c = FlowMatchingConfig {
        batch_size: 10,
        iterations: 1,
        ..FlowMatchingConfig::default()
    };
    assert!(train_flow_matching(&c, &data, Some(&other_dim), &mut no_progress()).is_err());
}
