//! `socflow train --device` and `socflow sample --device`: the binary on tiny configs.
//!
//! Where no GPU can be opened (no driver, as on most CI machines) a CUDA run must stop
//! with one `error: …` line giving the reason; where one can, the same runs must
//! succeed, so these tests exercise the GPU paths on a machine that has one.

// The helpers of the merged test binary (tests/all); this binary uses a few of them.
#[allow(dead_code)]
#[path = "all/common.rs"]
mod common;
use common::{assert_success, socflow, stderr, stdout, train, train_ok};

use std::path::Path;
use std::process::Output;

use socflow_runtime::cuda::Gpu;

/// Why the first GPU cannot be opened here (`None` where it can).
fn no_gpu() -> Option<String> {
    match Gpu::new(0) {
        Ok(_) => None,
        Err(e) => Some(e.to_string()),
    }
}

/// A CUDA run: on a machine without a usable GPU, a failure whose one `error:` line
/// (the last line) carries `reason`; with a GPU, a success.
#[track_caller]
fn cuda_run(o: &Output, reason: &Option<String>) {
    let err = stderr(o);
    match reason {
        None => assert_success(o),
        Some(reason) => {
            assert!(!o.status.success(), "a CUDA run without a GPU succeeded");
            let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
            assert_eq!(errors.len(), 1, "{err}");
            assert_eq!(err.lines().last(), Some(errors[0]), "{err}");
            assert!(errors[0].contains(reason.as_str()), "{err}");
            assert!(
                errors[0].contains("cuda") || errors[0].contains("CUDA"),
                "{err}"
            );
            if Gpu::device_count().unwrap_or(0) == 0 && reason.contains("driver") {
                assert!(errors[0].contains("CUDA driver"), "{err}");
            }
        }
    }
}

const FM_CONFIG: &str = r#"
problem = "flow_matching"
output = "fm.safetensors"

[data]
toy = "8gaussians"
n = 300
seed = 1

[flow_matching]
hidden = [8, 8]
batch_size = 32
iterations = 5
validate_every = 5
"#;

const DIFFUSION_CONFIG: &str = r#"
problem = "diffusion"
output = "diff.safetensors"

[data]
toy = "moons"
n = 300

[diffusion]
hidden = [8, 8]
batch_size = 32
iterations = 5
validate_every = 5
device = "cuda"
"#;

const SOC_CONFIG: &str = r#"
problem = "soc"
output = "soc.safetensors"

[soc]
m = 8
steps = 10
batch_size = 16
iterations = 3
validate_every = 3
validation_paths = 16

[soc_problem]
builtin = "lqr"
dim = 2
"#;

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn train_on(config: &Path, out: &Path, device: &str) -> Output {
    socflow(&[
        "train",
        config.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--device",
        device,
    ])
}

#[test]
fn train_device_cuda_runs_on_the_gpu_or_names_what_is_missing() {
    let reason = no_gpu();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let fm = write(dir.path(), "fm.toml", FM_CONFIG);
    cuda_run(&train_on(&fm, &out, "cuda"), &reason);
    // `--device cpu` is the default device, spelled out.
    assert_success(&train_on(&fm, &out, "cpu"));
    // The table's `device = "cuda"`, and `--device cpu` overriding it.
    let diff = write(dir.path(), "diff.toml", DIFFUSION_CONFIG);
    cuda_run(&train(&diff, &out, None), &reason);
    assert_success(&train_on(&diff, &out, "cpu"));
    // NeuralSOC goes to the GPU from the CLI too.
    let soc = write(dir.path(), "soc.toml", SOC_CONFIG);
    cuda_run(&train_on(&soc, &out, "cuda"), &reason);
}

#[test]
fn train_otflow_device_cuda_runs_on_the_gpu_or_names_what_is_missing() {
    let reason = no_gpu();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "ot.toml",
        "problem = \"otflow\"\n[data]\ntoy = \"moons\"\nn = 200\n\
         [otflow]\nm = 8\nnt = 4\nnt_val = 4\niterations = 3\nbatch_size = 32\n\
         validate_every = 3\n",
    );
    cuda_run(&train_on(&cfg, &dir.path().join("out"), "cuda"), &reason);
}

#[test]
fn a_device_typo_is_rejected_by_the_parser() {
    let o = socflow(&["train", "any.toml", "--device", "gpu"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("gpu") && err.contains("cuda"), "{err}");
    let o = socflow(&["sample", "any.safetensors", "--device", "gpu"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

#[test]
fn sample_device_cuda_runs_on_the_gpu_or_names_what_is_missing() {
    let reason = no_gpu();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let fm = write(dir.path(), "fm.toml", FM_CONFIG);
    train_ok(&fm, &out);
    let model = out.join("fm.safetensors");
    let samples = dir.path().join("s.npy");
    let sample = |extra: &[&str]| {
        let mut args = vec![
            "sample",
            model.to_str().unwrap(),
            "-n",
            "100",
            "-o",
            samples.to_str().unwrap(),
            "--device",
            "cuda",
        ];
        args.extend_from_slice(extra);
        socflow(&args)
    };
    let o = sample(&[]);
    cuda_run(&o, &reason);
    if reason.is_none() {
        assert!(stdout(&o).contains("s.npy"), "{}", stdout(&o));
        assert!(samples.exists());
        // What the GPU sampler does not do is its error.
        let o = sample(&["--log-density", dir.path().join("l.npy").to_str().unwrap()]);
        assert!(!o.status.success());
        assert!(stderr(&o).contains("log-densities"), "{}", stderr(&o));
    }
    // An .onnx model is not sampled on the GPU.
    let o = socflow(&["sample", "m.onnx", "--device", "cuda"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains(".onnx"), "{}", stderr(&o));
}
