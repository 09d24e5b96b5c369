//! `socflow train` with `problem = "diffusion"` and `socflow sample` on the score model
//! it exports, by the reverse SDE and by the probability-flow ODE, end to end through
//! the binary; the samples are compared with held-out data by the energy distance, and
//! `socflow likelihood`'s NLL of held-out data with the true density's.

use crate::common::{assert_success, socflow, stderr, stdout, train_ok};

use socflow_runtime::artifact::ModelKind;
use socflow_runtime::model::Model;
use socflow_runtime::npy::{read_npy_f64, write_npy};
use socflow_trainer::data::Toy;

const CONFIG: &str = r#"
problem = "diffusion"
output = "score.safetensors"
checkpoint = "score.ckpt.safetensors"
checkpoint_every = 0

[data]
toy = "8gaussians"
n = 20000
seed = 5
validation_fraction = 0.1

[diffusion]
hidden = [128, 128]
batch_size = 512
iterations = 6000
optimizer = { lr = 0.003, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0, decoupled = false }
schedule = { type = "step", every = 2000, factor = 0.3 }
validate_every = 2000
"#;

/// The energy distance 2E‖X − Y‖ − E‖X − X'‖ − E‖Y − Y'‖ of two 2-D samples
/// (U-statistics within samples).
fn energy_distance(a: &[f64], b: &[f64]) -> f64 {
    let dist = |p: &[f64], q: &[f64]| ((p[0] - q[0]).powi(2) + (p[1] - q[1]).powi(2)).sqrt();
    let cross = |x: &[f64], y: &[f64]| {
        let mut s = 0.0;
        for p in x.chunks_exact(2) {
            for q in y.chunks_exact(2) {
                s += dist(p, q);
            }
        }
        s / (x.len() / 2 * y.len() / 2) as f64
    };
    let within = |x: &[f64]| {
        let n = x.len() / 2;
        let mut s = 0.0;
        for i in 0..n {
            for j in i + 1..n {
                s += dist(&x[2 * i..2 * i + 2], &x[2 * j..2 * j + 2]);
            }
        }
        2.0 * s / (n * (n - 1)) as f64
    };
    2.0 * cross(a, b) - within(a) - within(b)
}

/// −log p(x) of each point under the true 8gaussians density: eight equally likely
/// Gaussians of standard deviation 0.5/1.414 centred at 4c/1.414, c on the unit circle
/// every 45° (trainer/src/data/toy.rs).
fn eight_gaussians_nll(x: &[f64]) -> Vec<f64> {
    let (s, sd) = (4.0 / 1.414, 0.5 / 1.414);
    let r = std::f64::consts::FRAC_1_SQRT_2;
    let centres = [
        (1.0, 0.0),
        (-1.0, 0.0),
        (0.0, 1.0),
        (0.0, -1.0),
        (r, r),
        (r, -r),
        (-r, r),
        (-r, -r),
    ];
    x.chunks_exact(2)
        .map(|p| {
            let dens: f64 = centres
                .iter()
                .map(|&(cx, cy)| {
                    let q = ((p[0] - s * cx).powi(2) + (p[1] - s * cy).powi(2)) / (sd * sd);
                    (-0.5 * q).exp() / (2.0 * std::f64::consts::PI * sd * sd)
                })
                .sum::<f64>()
                / 8.0;
            -dens.ln()
        })
        .collect()
}

/// (mean, standard error) from "mean NLL {mean} ± {se} (...)".
fn parse_nll(out: &str) -> (f64, f64) {
    let line = out
        .lines()
        .find(|l| l.starts_with("mean NLL "))
        .unwrap_or_else(|| panic!("no mean NLL line in {out:?}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    (words[2].parse().unwrap(), words[4].parse().unwrap())
}

#[test]
fn train_and_sample_a_score_model_by_both_methods() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("diffusion.toml");
    std::fs::write(&cfg, CONFIG).unwrap();
    let out = dir.path().join("out");
    let o = train_ok(&cfg, &out);
    let text = stdout(&o);
    assert!(text.contains("validation loss: "), "{text}");
    assert!(text.contains("validation NLL"), "{text}");
    let model_path = out.join("score.safetensors");
    let model = Model::<f64>::load(&model_path).unwrap();
    assert_eq!(model.kind(), ModelKind::Score);
    assert!(model.artifact().card.vpsde.is_some());
    let m = model_path.to_str().unwrap();

    // Threshold: 3 times the 95th percentile of the statistic between independent
    // data samples of the same size (10 seed pairs), as in the trainer's tests.
    let n = 1000;
    let held_out = Toy::EightGaussians.sample(n, 4242).unwrap();
    let mut null: Vec<f64> = (0..10)
        .map(|k| {
            let a = Toy::EightGaussians.sample(n, 3000 + 2 * k).unwrap();
            let b = Toy::EightGaussians.sample(n, 3001 + 2 * k).unwrap();
            energy_distance(&a, &b)
        })
        .collect();
    null.sort_by(f64::total_cmp);
    let threshold = 3.0 * null[(0.95 * (null.len() - 1) as f64).round() as usize];

    let sde = dir.path().join("sde.npy");
    let ode = dir.path().join("ode.npy");
    let lp = dir.path().join("lp.npy");
    let tr = dir.path().join("tr.npy");
    let ns = n.to_string();
    let runs: [(&str, Vec<&str>, &std::path::Path); 3] = [
        (
            "reverse SDE (default method and steps: 500 Euler–Maruyama steps)",
            vec!["--trajectory", tr.to_str().unwrap()],
            &sde,
        ),
        (
            "probability-flow ODE, Dopri5",
            vec![
                "--method",
                "ode",
                "--solver",
                "dopri5",
                "--log-density",
                lp.to_str().unwrap(),
            ],
            &ode,
        ),
        (
            "probability-flow ODE, RK4 100 steps, f64",
            vec!["--method", "ode", "--steps", "100", "--precision", "f64"],
            &ode,
        ),
    ];
    for (name, extra, path) in runs {
        let mut args = vec!["sample", m, "-n", &ns, "-o", path.to_str().unwrap()];
        args.extend(extra);
        let o = socflow(&args);
        assert_success(&o);
        let (shape, x) = read_npy_f64(path).unwrap();
        assert_eq!(shape, vec![n, 2]);
        let stat = energy_distance(&x, &held_out);
        eprintln!("{name}: energy distance {stat:.5} (threshold {threshold:.5})");
        assert!(stat <= threshold, "{name}: {stat} vs {threshold}");
        assert!(stderr(&o).contains("score model"), "{}", stderr(&o));
    }
    let (shape, l) = read_npy_f64(&lp).unwrap();
    assert_eq!(shape, vec![n]);
    assert!(l.iter().all(|v| v.is_finite()));

    // The likelihood of held-out data through the probability-flow ODE: its mean NLL is
    // the true density's (the cross-entropy H) plus KL(data ‖ model) ≥ 0, so at least H
    // (within the standard errors); this short run stays within 0.75 nats of it (0.40
    // here; RK4 32 steps is within 0.001 of Dopri5 at 1e-7) and 0.5 nats below the
    // best single Gaussian's NLL (the model learned the modes). The Hutchinson
    // estimate agrees with the exact NLL within its standard error.
    let held = dir.path().join("held_out.npy");
    write_npy(&held, &[n, 2], &held_out).unwrap();
    let true_nll = eight_gaussians_nll(&held_out);
    let h = true_nll.iter().sum::<f64>() / n as f64;
    // The Gaussian fitted to the held-out data: NLL = 1 + ln 2π + ½ ln det Σ̂ (d = 2).
    let mean = |j: usize| held_out.iter().skip(j).step_by(2).sum::<f64>() / n as f64;
    let (m0, m1) = (mean(0), mean(1));
    let cov = |a: usize, ma: f64, b: usize, mb: f64| {
        held_out
            .chunks_exact(2)
            .map(|p| (p[a] - ma) * (p[b] - mb))
            .sum::<f64>()
            / n as f64
    };
    let det = cov(0, m0, 0, m0) * cov(1, m1, 1, m1) - cov(0, m0, 1, m1).powi(2);
    let gauss = 1.0 + (2.0 * std::f64::consts::PI).ln() + 0.5 * det.ln();
    let like = |extra: &[&str]| {
        let mut args = vec!["likelihood", m, "--data", held.to_str().unwrap()];
        args.extend_from_slice(extra);
        let o = socflow(&args);
        assert_success(&o);
        let text = stdout(&o);
        eprintln!("{text}");
        parse_nll(&text)
    };
    let (nll, se) = like(&[]);
    let (nll_h, se_h) = like(&["--hutchinson", "1", "--seed", "4"]);
    eprintln!(
        "held-out NLL: model {nll:.4} ± {se:.4}, Hutchinson {nll_h:.4} ± {se_h:.4}, \
         true density {h:.4}, best Gaussian {gauss:.4}"
    );
    assert!(nll.is_finite() && se > 0.0);
    assert!(
        nll > h - 4.0 * se,
        "model NLL {nll} below the true density's {h}"
    );
    assert!(nll < h + 0.75, "model NLL {nll} vs the true density's {h}");
    assert!(
        nll < gauss - 0.5,
        "model NLL {nll} vs the best Gaussian's {gauss}"
    );
    assert!(
        (nll_h - nll).abs() < 4.0 * se_h,
        "Hutchinson {nll_h} vs exact {nll}"
    );
    // The trajectory: 501 points (the reverse SDE's default of 500 steps) of n × 2 f32
    // values (the .npy reader takes 1-D and 2-D arrays only, so check the header and
    // the size).
    let bytes = std::fs::read(&tr).unwrap();
    let header = String::from_utf8_lossy(&bytes[..128.min(bytes.len())]).into_owned();
    assert!(header.contains(&format!("(501, {n}, 2)")), "{header}");
    assert!(bytes.len() > 501 * n * 2 * 4 && bytes.len() < 501 * n * 2 * 4 + 256);

    // Errors: log-densities and adaptive steps belong to the ODE.
    for bad in [
        vec!["--log-density", lp.to_str().unwrap()],
        vec!["--solver", "dopri5"],
        vec!["--method", "sde"],
    ] {
        let mut args = vec!["sample", m, "-n", "10", "-o", sde.to_str().unwrap()];
        args.extend(bad.iter().copied());
        let o = socflow(&args);
        assert!(!o.status.success(), "{bad:?} should fail");
    }
}

/// `--method` belongs to score models: on a velocity model it is an error that says
/// so, and without it the velocity model samples as before.
#[test]
fn method_is_refused_on_a_velocity_model() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("fm.toml");
    std::fs::write(
        &cfg,
        "problem = \"flow_matching\"\noutput = \"fm.safetensors\"\n[data]\ntoy = \"moons\"\n\
         n = 400\n[flow_matching]\nhidden = [8]\nbatch_size = 32\niterations = 3\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    train_ok(&cfg, &out);
    let fm = out.join("fm.safetensors");
    let x = dir.path().join("x.npy");
    let args = [
        "sample",
        fm.to_str().unwrap(),
        "-n",
        "8",
        "-o",
        x.to_str().unwrap(),
    ];
    let o = socflow(&[&args[..], &["--method", "ode"]].concat());
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--method"), "{}", stderr(&o));
    assert_success(&socflow(&args));
    assert_eq!(read_npy_f64(&x).unwrap().0, vec![8, 2]);
}
