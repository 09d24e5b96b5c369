//! `socflow sample MODEL.onnx`: an ONNX model written by the `onnx` Python package from
//! a native MLP's weights samples what the native model file samples, and ONNX-specific
//! mistakes (log-densities, a wrong signature, --t0/--t1 on a card model, no ONNX
//! Runtime library) are clear messages with a non-zero exit. `socflow inspect MODEL.onnx`
//! prints the signature the field reader validated, and refuses what it refuses.
//!
//! Needs a Python with `onnx` and `onnxruntime` (SOCFLOW_PYTHON, else target/pyenv
//! from scripts/setup-python); without one each test prints `skipped: <reason>`.

use crate::common::{assert_success, socflow, stderr};

use std::path::{Path, PathBuf};
use std::process::Command;

use socflow_runtime::artifact::{Artifact, ModelKind, Provenance, StorageDtype};
use socflow_runtime::nn::{Activation, MlpParams};
use socflow_runtime::npy::read_npy_f64;

/// A Python that imports onnx and onnxruntime, or why there is none.
fn python() -> Result<PathBuf, String> {
    socflow_testkit::python_importing("numpy, onnx, onnxruntime", "onnx and onnxruntime")
}

macro_rules! python_or_skip {
    () => {
        socflow_testkit::ok_or_skip!(python())
    };
}

/// A velocity MLP [x, t] → 32 → 32 → d (SiLU) with fixed pseudo-random weights.
fn mlp(d: usize) -> MlpParams {
    let widths = [d + 1, 32, 32, d];
    let mut s = 0.0f64;
    let mut val = |scale: f64| {
        s += 0.618;
        scale * (s * 7.3).sin()
    };
    let weights = widths
        .windows(2)
        .map(|w| {
            let scale = 1.5 / (w[0] as f64).sqrt();
            (0..w[0] * w[1]).map(|_| val(scale)).collect()
        })
        .collect();
    let biases = widths[1..]
        .iter()
        .map(|&n| (0..n).map(|_| val(0.3)).collect())
        .collect();
    MlpParams {
        d,
        hidden: vec![32, 32],
        activation: Activation::Silu,
        weights,
        biases,
    }
}

/// Writes `p` as an ONNX model with runtime/tests/onnx_mlp.py (time input [batch]).
fn write_onnx(py: &Path, dir: &Path, p: &MlpParams, dtype: &str, variant: &str) -> PathBuf {
    write_onnx_timed(py, dir, p, dtype, variant, "batch")
}

/// Writes `p` as an ONNX model with runtime/tests/onnx_mlp.py, its time input of shape
/// `time` ("batch": [batch], "batch1": [batch, 1], "scalar": []).
fn write_onnx_timed(
    py: &Path,
    dir: &Path,
    p: &MlpParams,
    dtype: &str,
    variant: &str,
    time: &str,
) -> PathBuf {
    let spec = serde_json::json!({
        "d": p.d,
        "activation": p.activation.name(),
        "weights": p.weights,
        "biases": p.biases,
        "dtype": dtype,
        "time": time,
        "variant": variant,
    });
    let spec_path = dir.join(format!("{dtype}_{variant}_{time}.json"));
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    let out = dir.join(format!("vel_{dtype}_{variant}_{time}.onnx"));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/runtime/tests/onnx_mlp.py");
    let o = Command::new(py)
        .arg(script)
        .arg(&spec_path)
        .arg(&out)
        .output()
        .expect("python runs");
    assert!(
        o.status.success(),
        "onnx_mlp.py failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// `socflow sample MODEL -o OUT ARGS...`, which must succeed; returns the samples.
fn sample_ok(model: &Path, out: &Path, args: &[&str]) -> (Vec<usize>, Vec<f64>) {
    let mut all = vec![
        "sample",
        model.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    assert_success(&socflow(&all));
    read_npy_f64(out).unwrap()
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

#[test]
fn onnx_model_samples_like_the_native_model() {
    let py = python_or_skip!();
    let dir = tempfile::tempdir().unwrap();
    let d = 2;
    let p = mlp(d);
    let native = dir.path().join("vel.safetensors");
    Artifact::mlp(
        p.clone(),
        ModelKind::Velocity,
        [0.0, 1.0],
        Provenance::now("onnx cli test"),
    )
    .unwrap()
    .save(&native, StorageDtype::F64)
    .unwrap();
    let onnx32 = write_onnx(&py, dir.path(), &p, "float32", "ok");
    let onnx64 = write_onnx(&py, dir.path(), &p, "float64", "ok");
    let a = dir.path().join("a.npy");
    let b = dir.path().join("b.npy");
    let cases: [(&Path, &[&str], f64); 4] = [
        (&onnx32, &["-n", "500", "--seed", "3"], 1e-5),
        (
            &onnx32,
            &["-n", "300", "--seed", "4", "--solver", "dopri5"],
            1e-5,
        ),
        (
            &onnx64,
            &["-n", "300", "--seed", "5", "--precision", "f64"],
            1e-12,
        ),
        // Pieces of one run: sample indices 100.. of seed 3.
        (
            &onnx32,
            &["-n", "200", "--seed", "3", "--first-sample", "100"],
            1e-5,
        ),
    ];
    for (onnx, args, tol) in cases {
        let (shape_a, xa) = sample_ok(&native, &a, args);
        let (shape_b, xb) = sample_ok(onnx, &b, args);
        assert_eq!(shape_a, shape_b);
        assert_eq!(shape_b[1], d);
        let err = max_abs_diff(&xa, &xb);
        println!("{args:?}: max |native - onnx| = {err:e}");
        assert!(err <= tol, "{args:?}: max |Δ| = {err:e}");
        let spread = xa.iter().map(|v| v.abs()).fold(0.0, f64::max);
        assert!(spread > 0.5, "{args:?}: samples are not trivial ({spread})");
    }
    // The default interval is [0, 1] with the prior at 1: --t0 0 --t1 1 changes
    // nothing, while the reversed interval gives other samples.
    let (_, x0) = sample_ok(&onnx32, &a, &["-n", "50"]);
    let (_, x1) = sample_ok(&onnx32, &b, &["-n", "50", "--t0", "0", "--t1", "1"]);
    assert_eq!(x0, x1);
    let (_, x2) = sample_ok(&onnx32, &b, &["-n", "50", "--t0", "1", "--t1", "0"]);
    assert!(max_abs_diff(&x0, &x2) > 0.1);
}

#[test]
fn onnx_mistakes_are_clear_errors() {
    let py = python_or_skip!();
    let dir = tempfile::tempdir().unwrap();
    let p = mlp(3);
    let ok = write_onnx(&py, dir.path(), &p, "float32", "ok");
    let out = dir.path().join("s.npy");
    let run = |args: &[&str]| {
        let o = socflow(args);
        assert!(!o.status.success(), "{args:?} succeeded");
        let err = stderr(&o);
        assert!(!err.contains("panicked"), "{err}");
        err
    };
    let err = run(&[
        "sample",
        ok.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--log-density",
        dir.path().join("l.npy").to_str().unwrap(),
    ]);
    assert!(err.contains("--log-density"), "{err}");
    let three = write_onnx(&py, dir.path(), &p, "float32", "three_inputs");
    let err = run(&[
        "sample",
        three.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(err.contains("cannot load ONNX model"), "{err}");
    assert!(err.contains("3 inputs"), "{err}");
    let err = run(&["sample", ok.to_str().unwrap(), "--t0", "1", "--t1", "1"]);
    assert!(err.contains("must be finite and differ"), "{err}");
    // --t0/--t1 belong to .onnx models.
    let native = dir.path().join("vel.safetensors");
    Artifact::mlp(
        p.clone(),
        ModelKind::Velocity,
        [0.0, 1.0],
        Provenance::now("onnx cli test"),
    )
    .unwrap()
    .save(&native, StorageDtype::F32)
    .unwrap();
    let err = run(&["sample", native.to_str().unwrap(), "--t0", "0.5"]);
    assert!(err.contains("--t0/--t1 are for .onnx models"), "{err}");
    // No ONNX Runtime library: the message says what was tried.
    let o = Command::new(env!("CARGO_BIN_EXE_socflow"))
        .args(["sample", ok.to_str().unwrap(), "-o", out.to_str().unwrap()])
        .env("ORT_DYLIB_PATH", dir.path().join("no/libonnxruntime.so"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains("ONNX Runtime library not found"), "{err}");
    assert!(err.contains("ORT_DYLIB_PATH="), "{err}");
}

/// `socflow inspect MODEL.onnx` prints the signature the ONNX field reader validated:
/// input names in the model's order with the state and time shapes, the output, d, the
/// element type, the dynamic batch; d is the dimension `socflow sample` then draws in.
/// A socflow model file still prints its card.
#[test]
fn inspect_prints_an_onnx_models_signature() {
    let py = python_or_skip!();
    let dir = tempfile::tempdir().unwrap();
    let inspect = |path: &Path| {
        let o = socflow(&["inspect", path.to_str().unwrap()]);
        assert_success(&o);
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let cases: [(usize, &str, &str, &str, &str); 3] = [
        (
            3,
            "float32",
            "ok",
            "batch",
            "inputs:        `x` (state, [batch, 3]), `t` (time, [batch])\n",
        ),
        (
            2,
            "float64",
            "swapped",
            "scalar",
            "inputs:        `t` (time, [], a scalar shared by the batch), `x` (state, [batch, 2])\n",
        ),
        (
            4,
            "float32",
            "unnamed",
            "batch1",
            "inputs:        `a` (state, [batch, 4]), `b` (time, [batch, 1])\n",
        ),
    ];
    for (d, dtype, variant, time, inputs) in cases {
        let onnx = write_onnx_timed(&py, dir.path(), &mlp(d), dtype, variant, time);
        let text = inspect(&onnx);
        println!("{text}");
        let bytes = std::fs::metadata(&onnx).unwrap().len();
        for want in [
            format!("format:        ONNX model, {bytes} bytes, read by ONNX Runtime ("),
            inputs.to_string(),
            format!("output:        `v` ([batch, {d}])\n"),
            format!("state dim:     {d}\n"),
            format!("dtype:         {dtype} (inputs and output)\n"),
            "batch:         dynamic\n".to_string(),
            "normalization: none\n".to_string(),
            "divergence:    none".to_string(),
        ] {
            assert!(text.contains(&want), "{variant}: no {want:?} in\n{text}");
        }
        assert!(text.starts_with(onnx.to_str().unwrap()), "{text}");
        let out = dir.path().join("s.npy");
        let (shape, x) = sample_ok(&onnx, &out, &["-n", "7"]);
        assert_eq!(shape, vec![7, d]);
        assert!(x.iter().all(|v| v.is_finite()));
    }
    let native = dir.path().join("vel.safetensors");
    Artifact::mlp(
        mlp(2),
        ModelKind::Velocity,
        [0.0, 1.0],
        Provenance::now("onnx cli test"),
    )
    .unwrap()
    .save(&native, StorageDtype::F32)
    .unwrap();
    let text = inspect(&native);
    assert!(
        text.contains("kind:          velocity") && text.contains("state dim:     2"),
        "{text}"
    );
}

/// `socflow inspect` on an ONNX model the field reader refuses, on bytes that are no
/// ONNX model, on a missing file, and without an ONNX Runtime library: the messages of
/// `socflow sample MODEL.onnx`, a non-zero exit and no panic.
#[test]
fn inspect_onnx_mistakes_are_clear_errors() {
    let py = python_or_skip!();
    let dir = tempfile::tempdir().unwrap();
    let p = mlp(3);
    let fails = |path: &Path, lib: Option<&Path>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_socflow"));
        cmd.args(["inspect", path.to_str().unwrap()]);
        if let Some(lib) = lib {
            cmd.env("ORT_DYLIB_PATH", lib);
        }
        let o = cmd.output().unwrap();
        assert!(!o.status.success(), "inspect {} succeeded", path.display());
        let err = stderr(&o);
        assert!(!err.contains("panicked"), "{err}");
        assert!(err.contains("cannot load ONNX model"), "{err}");
        err
    };
    for (variant, want) in [
        ("three_inputs", "3 inputs"),
        ("fixed_batch", "fixed batch size 1"),
        ("wrong_d", "the output must be [batch, 3]"),
        ("mixed_dtype", "mixes element types"),
    ] {
        let onnx = write_onnx(&py, dir.path(), &p, "float32", variant);
        let err = fails(&onnx, None);
        assert!(err.contains(want), "{variant}: {err}");
    }
    let junk = dir.path().join("junk.onnx");
    std::fs::write(&junk, b"not an onnx model").unwrap();
    let err = fails(&junk, None);
    assert!(err.contains("not a loadable ONNX model"), "{err}");
    let err = fails(&dir.path().join("missing.onnx"), None);
    assert!(err.contains("missing.onnx"), "{err}");
    let ok = write_onnx(&py, dir.path(), &p, "float32", "ok");
    let err = fails(&ok, Some(&dir.path().join("no/libonnxruntime.so")));
    assert!(err.contains("ONNX Runtime library not found"), "{err}");
    assert!(err.contains("ORT_DYLIB_PATH="), "{err}");
}
