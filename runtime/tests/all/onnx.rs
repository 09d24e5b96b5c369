//! ONNX models as fields and controls (feature `onnx`): a model written at test time
//! by the `onnx` Python package (tests/onnx_mlp.py) from the weights of a native MLP
//! evaluates, samples and controls like the native network; wrong signatures and bad
//! files give clear errors.
//!
//! Needs a Python with `onnx` and `onnxruntime` (SOCFLOW_PYTHON, else the workspace's
//! target/pyenv, which scripts/setup-python makes); without one each test prints
//! `skipped: <reason>` and returns. The ONNX Runtime library is then found by the
//! runtime's own search (no ORT_DYLIB_PATH needed).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use socflow_runtime::controller::{FieldController, Integrator, SimulateOptions};
use socflow_runtime::field::Field;
use socflow_runtime::nn::mlp::Mlp;
use socflow_runtime::nn::{Activation, MlpParams};
use socflow_runtime::ode::{OdeOptions, OdeSolver};
use socflow_runtime::onnx::{OnnxDtype, OnnxField, OnnxOptions, TimeShape};
use socflow_runtime::sampler::{Sampler, SamplerOptions};
use socflow_runtime::{Error, Real};
use socflow_testkit::{count_allocs, Rng};

/// A Python that imports onnx and onnxruntime, or why there is none.
fn python() -> Result<PathBuf, String> {
    socflow_testkit::python_importing("numpy, onnx, onnxruntime", "onnx and onnxruntime")
}

macro_rules! python_or_skip {
    () => {
        socflow_testkit::ok_or_skip!(python())
    };
}

/// Random MLP parameters [x, t] → hidden → d.
fn mlp_params(d: usize, hidden: &[usize], activation: Activation, seed: u64) -> MlpParams {
    let mut rng = Rng(seed);
    let mut widths = vec![d + 1];
    widths.extend_from_slice(hidden);
    widths.push(d);
    let mut weights = Vec::new();
    let mut biases = Vec::new();
    for w in widths.windows(2) {
        let s = 1.5 / (w[0] as f64).sqrt();
        weights.push(rng.vec_sym(w[0] * w[1], s));
        biases.push(rng.vec_sym(w[1], 0.3));
    }
    MlpParams {
        d,
        hidden: hidden.to_vec(),
        activation,
        weights,
        biases,
    }
}

/// Writes `p` as an ONNX model with tests/onnx_mlp.py: `dtype` "float32" or
/// "float64", `time` "batch", "batch1" or "scalar", `variant` "ok" or a wrong one.
fn write_onnx(
    py: &Path,
    dir: &Path,
    p: &MlpParams,
    dtype: &str,
    time: &str,
    variant: &str,
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
    let name = format!("mlp_{dtype}_{time}_{variant}");
    let spec_path = dir.join(format!("{name}.json"));
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    let out = dir.join(format!("{name}.onnx"));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/onnx_mlp.py");
    let o = std::process::Command::new(py)
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

fn max_abs_diff<T: Real>(a: &[T], b: &[T]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x.f64() - y.f64()).abs())
        .fold(0.0, f64::max)
}

/// Rows of states and distinct times in [0, 1].
fn rows(d: usize, n: usize, seed: u64) -> (Vec<f64>, Vec<f64>) {
    let mut rng = Rng(seed);
    (rng.vec(n * d, 1.0), rng.range(n, 0.0, 1.0))
}

fn cast<T: Real>(v: &[f64]) -> Vec<T> {
    v.iter().map(|x| T::of(*x)).collect()
}

/// The ONNX field against the native MLP on single states and blocks with distinct
/// times.
fn check_values<T: Real>(onnx: &OnnxField<T>, native: &Mlp<T>, tol: f64) {
    let d = native.dim();
    let n = 37;
    let (x, t) = rows(d, n, 5);
    let (x, t) = (cast::<T>(&x), cast::<T>(&t));
    let mut v_native = vec![T::zero(); n * d];
    let mut s = vec![T::zero(); native.block_scratch_len(n)];
    native.eval_block(&t, &x, &mut v_native, &mut s).unwrap();
    let mut v_onnx = vec![T::zero(); n * d];
    onnx.eval_block(&t, &x, &mut v_onnx, &mut []).unwrap();
    let err = max_abs_diff(&v_native, &v_onnx);
    assert!(err <= tol, "block: max |Δ| = {err:e} > {tol:e}");
    let scale = v_native.iter().map(|v| v.f64().abs()).fold(0.0, f64::max);
    assert!(scale > 0.1, "the test field is not trivial: {scale}");
    let mut v1 = vec![T::zero(); d];
    for i in [0, 17, n - 1] {
        onnx.eval(t[i], &x[i * d..(i + 1) * d], &mut v1, &mut [])
            .unwrap();
        let err = max_abs_diff(&v1, &v_onnx[i * d..(i + 1) * d]);
        assert!(err <= tol, "single row {i}: max |Δ| = {err:e}");
    }
}

/// Samples of the native and ONNX fields with the same seed and solver.
fn sample_both<T: Real>(
    native: Arc<dyn Field<T>>,
    onnx: Arc<dyn Field<T>>,
    opts: OdeOptions<T>,
    n: usize,
) -> (Vec<T>, Vec<T>) {
    let draw = |f: Arc<dyn Field<T>>| {
        Sampler::new(f, T::one(), T::zero(), SamplerOptions::ode(opts, 42))
            .unwrap()
            .sample(n, 0)
            .unwrap()
            .x
    };
    (draw(native), draw(onnx))
}

#[test]
fn f32_model_matches_the_native_mlp() {
    let py = python_or_skip!();
    let dir = tempfile::tempdir().unwrap();
    let p = mlp_params(3, &[32, 32], Activation::Silu, 1);
    let path = write_onnx(&py, dir.path(), &p, "float32", "batch", "ok");
    let onnx = OnnxField::<f32>::load(&path).unwrap();
    let sig = onnx.signature();
    assert_eq!(sig.dim, 3);
    assert_eq!(sig.dtype, OnnxDtype::F32);
    assert_eq!(sig.time_shape, TimeShape::Batch);
    assert_eq!((sig.x_name.as_str(), sig.t_name.as_str()), ("x", "t"));
    assert_eq!(sig.output_name, "v");
    let native = Mlp::<f32>::new(&p).unwrap();
    check_values(&onnx, &native, 2e-6);

    let onnx: Arc<dyn Field<f32>> = Arc::new(onnx);
    let native: Arc<dyn Field<f32>> = Arc::new(native);
    for (name, opts) in [
        ("rk4", OdeOptions::fixed(OdeSolver::Rk4, 32)),
        ("dopri5", OdeOptions::adaptive(1e-5, 1e-5)),
    ] {
        let (a, b) = sample_both(native.clone(), onnx.clone(), opts, 600);
        let err = max_abs_diff(&a, &b);
        println!("f32 {name}: max |native - onnx| = {err:e}");
        assert!(err <= 1e-5, "{name}: max |Δ| = {err:e}");
        assert!(a.iter().all(|v| v.is_finite()));
    }
}

#[test]
fn f64_model_matches_the_native_mlp() {
    let py = python_or_skip!();
    let dir = tempfile::tempdir().unwrap();
    let p = mlp_params(4, &[24, 24, 24], Activation::Tanh, 2);
    let path = write_onnx(&py, dir.path(), &p, "float64", "batch1", "ok");
    let onnx = OnnxField::<f64>::load(&path).unwrap();
    assert_eq!(onnx.signature().dtype, OnnxDtype::F64);
    assert_eq!(onnx.signature().time_shape, TimeShape::BatchByOne);
    let native = Mlp::<f64>::new(&p).unwrap();
    check_values(&onnx, &native, 1e-12);
    let onnx: Arc<dyn Field<f64>> = Arc::new(onnx);
    let native: Arc<dyn Field<f64>> = Arc::new(native);
    for (name, opts) in [
        ("rk4", OdeOptions::fixed(OdeSolver::Rk4, 32)),
        ("dopri5", OdeOptions::adaptive(1e-8, 1e-8)),
    ] {
        let (a, b) = sample_both(native.clone(), onnx.clone(), opts, 500);
        let err = max_abs_diff(&a, &b);
        println!("f64 {name}: max |native - onnx| = {err:e}");
        assert!(err <= 1e-10, "{name}: max |Δ| = {err:e}");
    }
}

#[test]
fn time_inputs_names_and_precisions() {
    let py = python_or_skip!();
    let dir = tempfile::tempdir().unwrap();
    let p = mlp_params(2, &[16], Activation::Softplus, 3);
    let native = Mlp::<f64>::new(&p).unwrap();
    // A scalar time input: rows with different times take one run each, rows with
    // equal times one run together.
    let scalar = write_onnx(&py, dir.path(), &p, "float64", "scalar", "ok");
    let f = OnnxField::<f64>::load(&scalar).unwrap();
    assert_eq!(f.signature().time_shape, TimeShape::Scalar);
    check_values(&f, &native, 1e-12);
    // Inputs in the order (t, x) are matched by name.
    let swapped = write_onnx(&py, dir.path(), &p, "float64", "batch", "swapped");
    let f = OnnxField::<f64>::load(&swapped).unwrap();
    assert!(!f.signature().x_first);
    check_values(&f, &native, 1e-12);
    // Inputs with other names are taken by position, x first.
    let unnamed = write_onnx(&py, dir.path(), &p, "float64", "batch", "unnamed");
    let f = OnnxField::<f64>::load(&unnamed).unwrap();
    assert_eq!(
        (f.signature().x_name.as_str(), f.signature().t_name.as_str()),
        ("a", "b")
    );
    check_values(&f, &native, 1e-12);
    // An f32 model evaluated as an f64 field rounds its inputs to f32.
    let f32_model = write_onnx(&py, dir.path(), &p, "float32", "batch", "ok");
    let f = OnnxField::<f64>::load(&f32_model).unwrap();
    assert_eq!(f.signature().dtype, OnnxDtype::F32);
    check_values(&f, &native, 1e-5);
}

#[test]
fn samples_do_not_depend_on_blocks_or_threads() {
    let py = python_or_skip!();
    let dir = tempfile::tempdir().unwrap();
    let p = mlp_params(3, &[32, 32], Activation::Silu, 4);
    let path = write_onnx(&py, dir.path(), &p, "float32", "batch", "ok");
    let draw = |block_rows: usize, threads: usize| {
        let f = OnnxField::<f32>::load_with(
            &path,
            OnnxOptions {
                block_rows,
                ..OnnxOptions::default()
            },
        )
        .unwrap();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let s = Sampler::new(
            Arc::new(f),
            1.0,
            0.0,
            SamplerOptions::ode(OdeOptions::fixed(OdeSolver::Rk4, 16), 9),
        )
        .unwrap();
        pool.install(|| s.sample(300, 0).unwrap().x)
    };
    let reference = draw(256, 1);
    // ONNX Runtime's CPU GEMMs compute each row the same way whatever the row count,
    // so blocks and threads change nothing, bit for bit (as for the native networks).
    for (rows, threads) in [(7, 2), (64, 2), (300, 1)] {
        assert_eq!(
            reference,
            draw(rows, threads),
            "{rows} rows per block on {threads} threads"
        );
    }
}

#[test]
fn controller_applies_the_model_output() {
    let py = python_or_skip!();
    let dir = tempfile::tempdir().unwrap();
    let p = mlp_params(3, &[24, 24], Activation::Tanh, 5);
    let path = write_onnx(&py, dir.path(), &p, "float64", "batch", "ok");
    let mut onnx = OnnxField::<f64>::load(&path).unwrap().into_controller();
    let mut native = FieldController::new(Arc::new(Mlp::<f64>::new(&p).unwrap()));
    assert_eq!((onnx.state_dim(), onnx.control_dim()), (3, 3));
    let (x, t) = rows(3, 50, 6);
    let mut u_onnx = [0.0; 3];
    let mut u_native = [0.0; 3];
    for i in 0..50 {
        let xi = &x[i * 3..i * 3 + 3];
        onnx.control(t[i], xi, &mut u_onnx).unwrap();
        native.control(t[i], xi, &mut u_native).unwrap();
        assert!(max_abs_diff(&u_onnx, &u_native) <= 1e-12, "row {i}");
    }
    // Batch controls at one time equal the single-state ones.
    let mut us = vec![0.0; 150];
    onnx.control_batch(0.3, &x, &mut us).unwrap();
    for i in [0, 21, 49] {
        native
            .control(0.3, &x[i * 3..i * 3 + 3], &mut u_native)
            .unwrap();
        assert!(max_abs_diff(&us[i * 3..i * 3 + 3], &u_native) <= 1e-12);
    }
    // The closed loop dz = u dt + σ dW rolls out the same under both.
    let opts = SimulateOptions {
        x0: vec![0.5, -0.2, 0.1],
        t0: 0.0,
        t1: 1.0,
        steps: 40,
        sigma: 0.3,
        paths: 64,
        seed: 11,
        keep_trajectories: false,
    };
    let dynamics = Integrator {
        dim: 3,
        gain: 1.0,
        control_weight: 1.0,
    };
    let a = onnx.simulate(&dynamics, &opts).unwrap();
    let b = native.simulate(&dynamics, &opts).unwrap();
    assert!(max_abs_diff(&a.finals, &b.finals) <= 1e-10);
    assert!(max_abs_diff(&a.running_cost, &b.running_cost) <= 1e-10);
    assert!(a.cost().0 > 0.0);
    // Bad inputs are errors.
    assert!(matches!(
        onnx.control(f64::NAN, &x[..3], &mut u_onnx),
        Err(Error::NonFinite(_))
    ));
    assert!(matches!(
        onnx.control(0.0, &x[..2], &mut u_onnx),
        Err(Error::Length { .. })
    ));
}

#[test]
fn wrong_signatures_are_clear_errors() {
    let py = python_or_skip!();
    let dir = tempfile::tempdir().unwrap();
    let p = mlp_params(3, &[8], Activation::Tanh, 6);
    let cases = [
        ("three_inputs", "3 inputs (`x`, `t`, `s`)"),
        ("x_rank3", "state input `x` has shape [?, 1, 3] (rank 3)"),
        (
            "wrong_d",
            "output `v` has shape [?, 4] but the state input `x` is [?, 3]",
        ),
        ("fixed_batch", "fixed batch size 1"),
        (
            "mixed_dtype",
            "mixes element types: `x` is float32, `t` float64",
        ),
    ];
    for (variant, expected) in cases {
        let path = write_onnx(&py, dir.path(), &p, "float32", "batch", variant);
        match OnnxField::<f32>::load(&path) {
            Err(Error::Format(msg)) => {
                assert!(msg.contains(expected), "{variant}: {msg}");
                assert!(
                    msg.contains(&path.display().to_string()),
                    "{variant}: {msg}"
                );
            }
            Err(e) => panic!("{variant}: wrong error kind: {e}"),
            Ok(_) => panic!("{variant}: loaded"),
        }
    }
    // Not an ONNX model at all, and no file.
    let junk = dir.path().join("junk.onnx");
    std::fs::write(&junk, b"this is not a protobuf").unwrap();
    match OnnxField::<f32>::load(&junk) {
        Err(Error::Format(msg)) => assert!(msg.contains("not a loadable ONNX model"), "{msg}"),
        other => panic!("junk: {other:?}"),
    }
    assert!(matches!(
        OnnxField::<f32>::load(dir.path().join("missing.onnx")),
        Err(Error::Io { .. })
    ));
    // A valid model: no divergence, so no log-densities; bad lengths are errors.
    let ok = write_onnx(&py, dir.path(), &p, "float32", "batch", "ok");
    let f = OnnxField::<f32>::load(&ok).unwrap();
    let mut v = [0.0f32; 3];
    assert!(matches!(
        f.eval_div(0.0, &[0.0; 3], &mut v, &mut []),
        Err(Error::Unsupported(_))
    ));
    assert!(matches!(
        f.eval(0.0, &[0.0; 2], &mut v, &mut []),
        Err(Error::Length { .. })
    ));
    let mut so = SamplerOptions::ode(OdeOptions::fixed(OdeSolver::Rk4, 4), 0);
    so.log_density = true;
    let s = Sampler::new(Arc::new(f), 1.0f32, 0.0, so).unwrap();
    match s.sample(10, 0) {
        Err(Error::Unsupported(msg)) => assert!(msg.contains("no divergence"), "{msg}"),
        other => panic!("log-density of an ONNX field: {other:?}"),
    }
    assert!(matches!(
        OnnxField::<f32>::load_with(
            &ok,
            OnnxOptions {
                block_rows: 0,
                ..OnnxOptions::default()
            }
        ),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn library_is_found_without_ort_dylib_path() {
    let _py = python_or_skip!();
    if std::env::var_os("ORT_DYLIB_PATH").is_some() {
        eprintln!("skipped: ORT_DYLIB_PATH is set, so the search is not exercised");
        return;
    }
    let found = socflow_runtime::onnx::library_candidates();
    assert!(!found.is_empty(), "no ONNX Runtime library found");
    let lib = socflow_runtime::onnx::init().unwrap();
    assert!(lib.is_file(), "{}", lib.display());
    let name = lib.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with("libonnxruntime") || name.contains("onnxruntime"),
        "{name}"
    );
    assert!(
        found.contains(&lib),
        "{} not among {found:?}",
        lib.display()
    );
}

#[test]
fn field_controller_allocates_only_inside_onnx_runtime() {
    // Over a native network the control does no allocation at all.
    let p = mlp_params(3, &[24, 24], Activation::Silu, 7);
    let mut native = FieldController::new(Arc::new(Mlp::<f32>::new(&p).unwrap()));
    let x = [0.3f32, -0.1, 0.7];
    let mut u = [0.0f32; 3];
    native.control(0.5, &x, &mut u).unwrap();
    let (r, n) = count_allocs(|| {
        let mut acc = 0.0;
        for k in 0..100 {
            native.control(k as f32 / 100.0, &x, &mut u).unwrap();
            acc += u[0];
        }
        acc
    });
    assert!(r.is_finite());
    assert_eq!(n, 0, "allocations in 100 native field controls");
    // Through ONNX Runtime each run allocates its output and ort's bookkeeping (the
    // Rust side is counted here; ONNX Runtime's C++ allocations bypass Rust's
    // allocator), while the runtime reuses its pooled session and input buffers: a
    // bounded, small number per call.
    let py = python_or_skip!();
    let dir = tempfile::tempdir().unwrap();
    let path = write_onnx(&py, dir.path(), &p, "float32", "batch", "ok");
    let mut onnx = OnnxField::<f32>::load(&path).unwrap().into_controller();
    onnx.control(0.5, &x, &mut u).unwrap();
    let (_, n) = count_allocs(|| {
        for k in 0..100 {
            onnx.control(k as f32 / 100.0, &x, &mut u).unwrap();
        }
    });
    let per_call = n as f64 / 100.0;
    println!("ONNX field control: {per_call:.1} Rust-side allocations per call");
    assert!(per_call <= 8.0, "{per_call} allocations per ONNX control");
}
