//! `socflow train` and `socflow demo` end to end: the binary on tiny configs.

use crate::common::{png_size, resume_ok, socflow, stderr, stdout, train, train_ok};

use std::path::Path;

use socflow_runtime::model::Model;
use socflow_runtime::ode::{OdeOptions, OdeSolver};
use socflow_runtime::sampler::{Sampler, SamplerOptions};
use socflow_trainer::checkpoint::Checkpoint;

/// Loads a model file and draws samples from it with the runtime; checks they are
/// finite and 2-D.
fn loads_and_samples(path: &Path) {
    let model = Model::<f32>::load(path).expect("the exported model loads");
    assert_eq!(model.dim(), 2);
    let (t0, t1) = model.time_interval();
    let mut so = SamplerOptions::ode(OdeOptions::fixed(OdeSolver::Rk4, 8), 3);
    so.log_density = true;
    so.normalization = model.artifact().card.normalization.clone();
    let s = Sampler::new(model.field().unwrap(), t1, t0, so)
        .unwrap()
        .sample(64, 0)
        .unwrap();
    assert_eq!(s.x.len(), 128);
    assert!(s.x.iter().all(|v| v.is_finite()));
    assert!(s.log_density.unwrap().iter().all(|v| v.is_finite()));
}

const FM_CONFIG: &str = r#"
problem = "flow_matching"
output = "fm.safetensors"
checkpoint = "fm.ckpt.safetensors"
checkpoint_every = 10

[data]
toy = "8gaussians"
n = 600
seed = 3
validation_fraction = 0.2

[flow_matching]
hidden = [16, 16]
batch_size = 64
iterations = 20
validate_every = 10
"#;

#[test]
fn train_flow_matching_exports_a_model_the_runtime_samples() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("fm.toml");
    std::fs::write(&cfg, FM_CONFIG).unwrap();
    let out = dir.path().join("out");
    let o = train_ok(&cfg, &out);
    let text = stdout(&o);
    assert!(text.contains("validation loss: "), "{text}");
    assert!(text.contains("validation NLL"), "{text}");
    assert!(text.contains("fm.safetensors"), "{text}");
    let model = out.join("fm.safetensors");
    loads_and_samples(&model);
    // The last checkpoint holds the state after all 20 iterations, with the config.
    let ckpt = out.join("fm.ckpt.safetensors");
    let ck = Checkpoint::load(&ckpt).unwrap();
    assert_eq!(ck.iteration, 20);
    assert!(ck
        .extra
        .get("config")
        .is_some_and(|c| c.contains("batch_size")));
    assert_eq!(ck.optimizer.step, 20);
    // Resuming from it runs no further iteration and exports the same parameters.
    let again = dir.path().join("again");
    resume_ok(&cfg, &again, &ckpt, 20);
    let a = socflow_runtime::artifact::Artifact::load(&model).unwrap();
    let b = socflow_runtime::artifact::Artifact::load(again.join("fm.safetensors")).unwrap();
    assert_eq!(a.params, b.params);
    // A checkpoint of another configuration is refused.
    let other = dir.path().join("other.toml");
    std::fs::write(
        &other,
        FM_CONFIG.replace("iterations = 20", "iterations = 30"),
    )
    .unwrap();
    let o3 = train(&other, &again, Some(&ckpt));
    assert!(!o3.status.success());
    assert!(
        stderr(&o3).contains("another configuration"),
        "{}",
        stderr(&o3)
    );
    // The plain progress lines (stderr is not a terminal) report the validations.
    let err = stderr(&o);
    assert!(err.contains("iteration 10/20"), "{err}");
    assert!(err.contains("validation loss"), "{err}");
}

#[test]
fn train_otflow_from_a_data_file_relative_to_the_config() {
    let dir = tempfile::tempdir().unwrap();
    // A CSV data file next to the config.
    let mut csv = String::new();
    for i in 0..200 {
        let a = i as f64 * 0.1;
        csv.push_str(&format!(
            "{},{}\n",
            a.cos() * 2.0,
            a.sin() + 0.01 * i as f64
        ));
    }
    std::fs::write(dir.path().join("pts.csv"), csv).unwrap();
    let cfg = dir.path().join("ot.toml");
    std::fs::write(
        &cfg,
        r#"
problem = "otflow"
[data]
path = "pts.csv"
validation_fraction = 0.25
[otflow]
m = 8
nt = 2
nt_val = 2
batch_size = 50
iterations = 2
validate_every = 0
normalize = true
"#,
    )
    .unwrap();
    let out = dir.path().join("o");
    let o = train_ok(&cfg, &out);
    let text = stdout(&o);
    assert!(text.contains("validation NLL (trainer"), "{text}");
    loads_and_samples(&out.join("model.safetensors"));
    // No checkpoint was asked for.
    assert!(!out.join("checkpoint.safetensors").exists());
}

#[test]
fn unknown_keys_and_bad_data_fail_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str, text: &str| {
        let cfg = dir.path().join(name);
        std::fs::write(&cfg, text).unwrap();
        let o = train(&cfg, dir.path(), None);
        assert!(!o.status.success(), "{name} should fail");
        let err = stderr(&o);
        assert!(err.starts_with("error: "), "{err}");
        assert!(!err.contains("panicked"), "{err}");
        err
    };
    let typo = FM_CONFIG.replace("validate_every", "validate_evry");
    let err = run("typo.toml", &typo);
    assert!(err.contains("unknown field `validate_evry`"), "{err}");
    let err = run("top.toml", &format!("outptu = \"x\"\n{FM_CONFIG}"));
    assert!(err.contains("outptu"), "{err}");
    let err = run(
        "problem.toml",
        &FM_CONFIG.replace("\"flow_matching\"", "\"flowmatching\""),
    );
    assert!(err.contains("flowmatching"), "{err}");
    let err = run(
        "missing.toml",
        "problem = \"otflow\"\n[data]\npath = \"nope.npy\"\n",
    );
    assert!(err.contains("nope.npy"), "{err}");
    let err = run(
        "toy.toml",
        "problem = \"otflow\"\n[data]\ntoy = \"9gaussians\"\n",
    );
    assert!(err.contains("9gaussians"), "{err}");
    let err = run("table.toml", &format!("{FM_CONFIG}\n[otflow]\nm = 4\n"));
    assert!(err.contains("[otflow]"), "{err}");
    let o = socflow(&["train", dir.path().join("absent.toml").to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("absent.toml"), "{}", stderr(&o));
}

/// Checks a PNG file: the signature, an IHDR chunk with a plausible size, and more
/// than a header's worth of image data.
fn assert_png(path: &Path) {
    let (w, h) = png_size(path);
    assert!(
        (400..=2000).contains(&w) && (400..=2000).contains(&h),
        "{w} × {h}"
    );
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[bytes.len() - 8..bytes.len() - 4], b"IEND");
}

#[test]
fn quick_demo_writes_models_and_plots() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo");
    let o = socflow(&["demo", "--quick", "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert_eq!(
        text.matches("validation NLL (exported model").count(),
        2,
        "{text}"
    );
    assert!(text.contains("energy distance"), "{text}");
    for stem in ["otflow", "flow_matching"] {
        loads_and_samples(&out.join(format!("{stem}.safetensors")));
        for kind in ["samples", "density", "trajectories"] {
            assert_png(&out.join(format!("{stem}_{kind}.png")));
        }
    }
}
