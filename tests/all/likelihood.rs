//! End-to-end tests of `socflow likelihood`: the printed mean NLL and standard error
//! and the written per-point log-likelihoods equal the library's (exact divergence and
//! Hutchinson's estimate, fixed and adaptive steps), the Hutchinson NLL agrees with the
//! exact one within its standard error, a seed reproduces its file whatever the thread
//! count, and bad arguments fail with a message. A score model's likelihood is its
//! probability-flow ODE's, the same through the binary as through the library.

use crate::common::socflow;

use std::path::{Path, PathBuf};

use socflow_runtime::artifact::{Artifact, ModelKind, Normalization, Provenance, StorageDtype};
use socflow_runtime::controller::mean_and_standard_error;
use socflow_runtime::model::Model;
use socflow_runtime::nn::{Activation, MlpParams, OtFlowParams};
use socflow_runtime::npy::{read_npy_f64, write_npy};
use socflow_runtime::ode::OdeOptions;
use socflow_runtime::ode::OdeSolver;
use socflow_runtime::vpsde::{ScoreOutput, VpSde};
use socflow_trainer::cnf::Noise;
use socflow_trainer::likelihood::{log_likelihood, Hutchinson, LikelihoodOptions};

/// Runs socflow, asserts success, and returns stdout.
fn ok(args: &[&str]) -> String {
    let o = socflow(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "socflow {args:?} failed: {err}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Runs socflow, asserts failure, and returns stderr.
fn fails(args: &[&str]) -> String {
    let o = socflow(args);
    assert!(!o.status.success(), "socflow {args:?} succeeded");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// (mean, standard error) from "mean NLL {mean} ± {se} (...)".
fn parse(out: &str) -> (f64, f64) {
    let line = out
        .lines()
        .find(|l| l.starts_with("mean NLL "))
        .unwrap_or_else(|| panic!("no mean NLL line in {out:?}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(words[3], "±", "{line}");
    (words[2].parse().unwrap(), words[4].parse().unwrap())
}

/// splitmix64 values in [−s, s).
fn values(seed: u64, n: usize, s: f64) -> Vec<f64> {
    let mut k = seed;
    (0..n)
        .map(|_| {
            k = k.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = k;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            s * ((z >> 11) as f64 / (1u64 << 52) as f64 - 1.0)
        })
        .collect()
}

/// A SiLU MLP of state dimension `d` with fixed pseudo-random parameters: layer l's
/// weights from stream `seed + l` scaled by `w_scale`/√fan-in, its biases from stream
/// `seed + 10 + l` scaled by `b_scale`.
fn random_mlp(d: usize, hidden: &[usize], seed: u64, w_scale: f64, b_scale: f64) -> MlpParams {
    let widths: Vec<usize> = std::iter::once(d + 1)
        .chain(hidden.iter().copied())
        .chain(std::iter::once(d))
        .collect();
    MlpParams {
        d,
        hidden: hidden.to_vec(),
        activation: Activation::Silu,
        weights: widths
            .windows(2)
            .enumerate()
            .map(|(l, w)| values(seed + l as u64, w[0] * w[1], w_scale / (w[0] as f64).sqrt()))
            .collect(),
        biases: widths[1..]
            .iter()
            .enumerate()
            .map(|(l, &n)| values(seed + 10 + l as u64, n, b_scale))
            .collect(),
    }
}

/// A velocity MLP (d = 3, stored in f32, with a normalization) and an OT-Flow
/// potential (d = 3, stored in f64).
fn write_models(dir: &Path) -> (PathBuf, PathBuf) {
    let d = 3;
    let mlp = random_mlp(d, &[24, 24], 10, 1.2, 0.3);
    let vel = dir.join("vel.safetensors");
    Artifact::mlp(
        mlp,
        ModelKind::Velocity,
        [0.0, 1.0],
        Provenance::now("likelihood test"),
    )
    .unwrap()
    .with_normalization(Normalization::new(vec![0.5, -0.5, 0.0], vec![2.0, 1.0, 0.5]).unwrap())
    .unwrap()
    .save(&vel, StorageDtype::F32)
    .unwrap();
    let (m, ns) = (16, d + 1);
    let pot_params = OtFlowParams {
        d,
        m,
        n_th: 2,
        r: ns,
        k: vec![values(30, m * ns, 0.5), values(31, m * m, 0.25)],
        b: vec![values(32, m, 0.3), values(33, m, 0.3)],
        w: values(34, m, 0.5),
        a: values(35, ns * ns, 0.5),
        c_weight: values(36, ns, 0.2),
        c_bias: 0.1,
    };
    let pot = dir.join("pot.safetensors");
    Artifact::otflow(pot_params, [0.0, 1.0], Provenance::now("likelihood test"))
        .unwrap()
        .save(&pot, StorageDtype::F64)
        .unwrap();
    (vel, pot)
}

#[test]
fn likelihood_command_matches_library_exact_and_hutchinson() {
    let dir = tempfile::tempdir().unwrap();
    let (vel, pot) = write_models(dir.path());
    let (n, d) = (400, 3);
    let x = values(7, n * d, 2.0);
    let data = dir.path().join("x.npy");
    write_npy(&data, &[n, d], &x).unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let (vel_s, pot_s, data_s) = (s(&vel), s(&pot), s(&data));
    let out = |name: &str| dir.path().join(name);

    let model = Model::<f64>::load(&vel).unwrap();
    let rk4 = LikelihoodOptions::new(OdeOptions::fixed(OdeSolver::Rk4, 16));

    // Exact: the file holds the library's values (bitwise), the line their mean and
    // standard error.
    let lp_e = out("lp_exact.npy");
    let text = ok(&[
        "likelihood",
        &vel_s,
        "--data",
        &data_s,
        "--steps",
        "16",
        "-o",
        &s(&lp_e),
    ]);
    assert!(text.contains("exact divergence"), "{text}");
    let want = log_likelihood(&model, &x, n, &rk4).unwrap();
    let (shape, got) = read_npy_f64(&lp_e).unwrap();
    assert_eq!(shape, vec![n]);
    assert!(got
        .iter()
        .zip(&want)
        .all(|(a, b)| a.to_bits() == b.to_bits()));
    let nll: Vec<f64> = want.iter().map(|v| -v).collect();
    let (mean, se) = mean_and_standard_error(&nll);
    let (pm, pse) = parse(&text);
    assert!(
        (pm - mean).abs() <= 1e-6 && (pse - se).abs() <= 1e-6,
        "{text} vs {mean} ± {se}"
    );

    // Hutchinson with 4 probes: the library's values under the same seed.
    let lp_h = out("lp_h.npy");
    let args_h = [
        "likelihood",
        &vel_s,
        "--data",
        &data_s,
        "--steps",
        "16",
        "--hutchinson",
        "4",
        "--seed",
        "5",
        "-o",
        &s(&lp_h),
    ];
    let text_h = ok(&args_h);
    assert!(
        text_h.contains("Hutchinson, 4 Rademacher probes"),
        "{text_h}"
    );
    let want_h = log_likelihood(
        &model,
        &x,
        n,
        &rk4.clone().with_hutchinson(Hutchinson::new(4, 5)),
    )
    .unwrap();
    let (_, got_h) = read_npy_f64(&lp_h).unwrap();
    assert!(got_h
        .iter()
        .zip(&want_h)
        .all(|(a, b)| a.to_bits() == b.to_bits()));
    // It estimates the exact NLL: the per-point differences average to zero within
    // 4 standard errors, and they are not all zero.
    let diff: Vec<f64> = got_h.iter().zip(&got).map(|(a, b)| a - b).collect();
    let (dm, dse) = mean_and_standard_error(&diff);
    assert!(dse > 0.0 && dm.abs() < 4.0 * dse, "difference {dm} ± {dse}");
    let (hm, _) = parse(&text_h);
    assert!(
        (hm - mean).abs() < 4.0 * dse + 1e-6,
        "{text_h} vs exact {mean}"
    );

    // The same seed on one thread writes the same file.
    let lp_h1 = out("lp_h1.npy");
    let mut args_1 = args_h.to_vec();
    let p1 = s(&lp_h1);
    *args_1.last_mut().unwrap() = &p1;
    args_1.splice(0..0, ["--threads", "1"]);
    ok(&args_1);
    assert_eq!(
        std::fs::read(&lp_h).unwrap(),
        std::fs::read(&lp_h1).unwrap()
    );

    // Gaussian probes, f32, and the potential model under adaptive steps.
    let text_g = ok(&[
        "likelihood",
        &vel_s,
        "--data",
        &data_s,
        "--hutchinson",
        "2",
        "--noise",
        "gaussian",
        "--precision",
        "f32",
    ]);
    assert!(
        text_g.contains("Gaussian") && text_g.contains("f32"),
        "{text_g}"
    );
    let (gm, gse) = parse(&text_g);
    assert!(gm.is_finite() && gse > 0.0, "{text_g}");
    let lp_p = out("lp_pot.npy");
    let text_p = ok(&[
        "likelihood",
        &pot_s,
        "--data",
        &data_s,
        "--solver",
        "dopri5",
        "--rtol",
        "1e-7",
        "--atol",
        "1e-7",
        "--hutchinson",
        "1",
        "--seed",
        "9",
        "-o",
        &s(&lp_p),
    ]);
    let pmodel = Model::<f64>::load(&pot).unwrap();
    let want_p = log_likelihood(
        &pmodel,
        &x,
        n,
        &LikelihoodOptions::new(OdeOptions::adaptive(1e-7, 1e-7)).with_hutchinson(Hutchinson {
            noise: Noise::Rademacher,
            ..Hutchinson::new(1, 9)
        }),
    )
    .unwrap();
    let (_, got_p) = read_npy_f64(&lp_p).unwrap();
    assert!(got_p
        .iter()
        .zip(&want_p)
        .all(|(a, b)| a.to_bits() == b.to_bits()));
    assert!(text_p.contains("dopri5"), "{text_p}");
}

#[test]
fn likelihood_command_rejects_bad_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let (vel, _) = write_models(dir.path());
    let vel_s = vel.to_str().unwrap();
    let data = dir.path().join("x.npy");
    write_npy(&data, &[10, 3], &values(1, 30, 1.0)).unwrap();
    let data_s = data.to_str().unwrap();
    let wrong = dir.path().join("x2.npy");
    write_npy(&wrong, &[10, 2], &values(2, 20, 1.0)).unwrap();

    let err = fails(&["likelihood", vel_s, "--data", data_s, "--hutchinson", "0"]);
    assert!(err.contains("probes"), "{err}");
    let err = fails(&["likelihood", vel_s, "--data", wrong.to_str().unwrap()]);
    assert!(err.contains("dimension 2") && err.contains("3"), "{err}");
    let err = fails(&["likelihood", vel_s, "--data", "/nonexistent/x.npy"]);
    assert!(err.contains("cannot load data"), "{err}");
    let err = fails(&["likelihood", vel_s, "--data", data_s, "--steps", "0"]);
    assert!(err.contains("--steps"), "{err}");
    let err = fails(&["likelihood", vel_s]);
    assert!(err.contains("--data"), "{err}");
}

/// A score MLP (d = 2, noise output, a normalization, stored in f32) with fixed
/// pseudo-random weights.
fn write_score_model(dir: &Path) -> PathBuf {
    let d = 2;
    let p = random_mlp(d, &[32, 32], 40, 1.5, 0.2);
    let path = dir.join("score.safetensors");
    Artifact::mlp(
        p,
        ModelKind::Score,
        [0.0, 1.0],
        Provenance::now("likelihood test"),
    )
    .unwrap()
    .with_vpsde(VpSde {
        output: ScoreOutput::Noise,
        ..VpSde::default()
    })
    .unwrap()
    .with_normalization(Normalization::new(vec![0.5, -0.5], vec![1.5, 0.8]).unwrap())
    .unwrap()
    .save(&path, StorageDtype::F32)
    .unwrap();
    path
}

/// `socflow likelihood` on a score model: the probability-flow ODE from ε to 1, the
/// library's values bitwise (exact and Hutchinson), a finite mean NLL, and the
/// Hutchinson NLL within 4 standard errors of the exact one.
#[test]
fn likelihood_command_on_a_score_model() {
    let dir = tempfile::tempdir().unwrap();
    let score = write_score_model(dir.path());
    let (n, d) = (500, 2);
    let x = values(8, n * d, 2.5);
    let data = dir.path().join("x.npy");
    write_npy(&data, &[n, d], &x).unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let (score_s, data_s) = (s(&score), s(&data));
    let model = Model::<f64>::load(&score).unwrap();
    let rk4 = LikelihoodOptions::new(OdeOptions::fixed(OdeSolver::Rk4, 32));

    let lp_e = dir.path().join("lp_e.npy");
    let text = ok(&["likelihood", &score_s, "--data", &data_s, "-o", &s(&lp_e)]);
    assert!(
        text.contains("probability-flow ODE from t = 0.001 to 1, rk4 32 steps"),
        "{text}"
    );
    let want = log_likelihood(&model, &x, n, &rk4).unwrap();
    let (_, got) = read_npy_f64(&lp_e).unwrap();
    assert!(got
        .iter()
        .zip(&want)
        .all(|(a, b)| a.to_bits() == b.to_bits()));
    let (pm, pse) = parse(&text);
    assert!(pm.is_finite() && pse > 0.0, "{text}");
    let nll: Vec<f64> = want.iter().map(|v| -v).collect();
    let (mean, _) = mean_and_standard_error(&nll);
    assert!((pm - mean).abs() <= 1e-6, "{text} vs {mean}");

    let lp_h = dir.path().join("lp_h.npy");
    let text_h = ok(&[
        "likelihood",
        &score_s,
        "--data",
        &data_s,
        "--hutchinson",
        "2",
        "--seed",
        "3",
        "-o",
        &s(&lp_h),
    ]);
    let want_h =
        log_likelihood(&model, &x, n, &rk4.with_hutchinson(Hutchinson::new(2, 3))).unwrap();
    let (_, got_h) = read_npy_f64(&lp_h).unwrap();
    assert!(got_h
        .iter()
        .zip(&want_h)
        .all(|(a, b)| a.to_bits() == b.to_bits()));
    let diff: Vec<f64> = got_h.iter().zip(&got).map(|(a, b)| a - b).collect();
    let (dm, dse) = mean_and_standard_error(&diff);
    let (hm, _) = parse(&text_h);
    println!("score model: exact {text}Hutchinson {text_h}difference {dm:+.4} ± {dse:.4}");
    assert!(dse > 0.0 && dm.abs() < 4.0 * dse, "difference {dm} ± {dse}");
    assert!((hm - pm).abs() < 4.0 * dse + 1e-6, "{text_h} vs {text}");
}
