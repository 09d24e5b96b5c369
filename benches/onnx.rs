//! Sampling throughput of a native MLP field against the same network through ONNX
//! Runtime: [x, t] → 3 × 256 SiLU → d, RK4 with 32 steps from N(0, I), f32, for d = 2
//! and d = 64 (batch 1,024, blocks of 256 rows on the rayon pool, one ONNX Runtime
//! thread per session). After criterion's figures it prints the ratio ONNX / native of
//! the median times of interleaved rounds.
//!
//! The ONNX model is written at start-up from the native weights by
//! runtime/tests/onnx_mlp.py, so the bench needs a Python with `onnx` and
//! `onnxruntime` (SOCFLOW_PYTHON, else target/pyenv from scripts/setup-python); without
//! one it prints `skipped: <reason>` and measures nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use criterion::{Criterion, Throughput};
use socflow_runtime::field::Field;
use socflow_runtime::nn::mlp::Mlp;
use socflow_runtime::nn::{Activation, MlpParams};
use socflow_runtime::ode::{OdeOptions, OdeSolver};
use socflow_runtime::onnx::OnnxField;
use socflow_runtime::sampler::{Sampler, SamplerOptions};

const BATCH: usize = 1024;
const CASES: [usize; 2] = [2, 64];

/// The network of benches/sampling.rs: 3 × 256 SiLU, weights ~ U(±1/√fan_in).
fn mlp(d: usize) -> MlpParams {
    let widths = [d + 1, 256, 256, 256, d];
    let mut state = 0x1234_5678u64;
    let mut next = |scale: f64| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        scale * (((state >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0)
    };
    let mut weights = Vec::new();
    let mut biases = Vec::new();
    for w in widths.windows(2) {
        let s = 1.0 / (w[0] as f64).sqrt();
        weights.push((0..w[0] * w[1]).map(|_| next(s)).collect());
        biases.push((0..w[1]).map(|_| next(s)).collect());
    }
    MlpParams {
        d,
        hidden: vec![256, 256, 256],
        activation: Activation::Silu,
        weights,
        biases,
    }
}

/// A Python that imports onnx and onnxruntime, or why there is none.
fn python() -> Result<PathBuf, String> {
    let py = match std::env::var_os("SOCFLOW_PYTHON") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/target/pyenv/bin/python"
        )),
    };
    match std::process::Command::new(&py)
        .args(["-c", "import numpy, onnx, onnxruntime"])
        .output()
    {
        Ok(o) if o.status.success() => Ok(py),
        Ok(_) => Err(format!(
            "{} cannot import onnx and onnxruntime",
            py.display()
        )),
        Err(e) => Err(format!("{}: {e} (run scripts/setup-python)", py.display())),
    }
}

/// Writes `p` as a float32 ONNX model in `dir`.
fn write_onnx(py: &Path, dir: &Path, p: &MlpParams) -> Result<PathBuf, String> {
    let spec = serde_json::json!({
        "d": p.d,
        "activation": p.activation.name(),
        "weights": p.weights,
        "biases": p.biases,
        "dtype": "float32",
        "time": "batch",
        "variant": "ok",
    });
    let spec_path = dir.join(format!("mlp{}.json", p.d));
    std::fs::write(&spec_path, spec.to_string()).map_err(|e| e.to_string())?;
    let out = dir.join(format!("mlp{}.onnx", p.d));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/runtime/tests/onnx_mlp.py");
    let o = std::process::Command::new(py)
        .arg(script)
        .arg(&spec_path)
        .arg(&out)
        .output()
        .map_err(|e| e.to_string())?;
    if !o.status.success() {
        return Err(String::from_utf8_lossy(&o.stderr).into_owned());
    }
    Ok(out)
}

fn sampler(field: Arc<dyn Field<f32>>) -> Sampler<f32> {
    Sampler::new(
        field,
        1.0,
        0.0,
        SamplerOptions::ode(OdeOptions::fixed(OdeSolver::Rk4, 32), 0),
    )
    .expect("valid sampler")
}

/// One case: d, the native sampler and the ONNX one.
type Case = (usize, Sampler<f32>, Sampler<f32>);

/// Native and ONNX samplers for each case, or why there are none.
fn samplers(dir: &Path) -> Result<Vec<Case>, String> {
    let py = python()?;
    let mut out = Vec::new();
    for d in CASES {
        let p = mlp(d);
        let path = write_onnx(&py, dir, &p)?;
        let onnx = OnnxField::<f32>::load(&path).map_err(|e| e.to_string())?;
        let native = Mlp::<f32>::new(&p).map_err(|e| e.to_string())?;
        out.push((d, sampler(Arc::new(native)), sampler(Arc::new(onnx))));
    }
    Ok(out)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let cases = match samplers(dir.path()) {
        Ok(c) => c,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    // The samples agree, so both sides do the same work.
    for (d, native, onnx) in &cases {
        let a = native.sample(64, 0).expect("native sampling").x;
        let b = onnx.sample(64, 0).expect("ONNX sampling").x;
        let err = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(
            err <= 1e-4,
            "d = {d}: native and ONNX samples differ by {err}"
        );
    }
    let mut c = Criterion::default().configure_from_args();
    {
        let mut group = c.benchmark_group("sample_rk4_32_mlp3x256_native_vs_onnx");
        group.sample_size(10);
        group.throughput(Throughput::Elements(BATCH as u64));
        for (d, native, onnx) in &cases {
            group.bench_function(format!("d{d}_batch{BATCH}_native"), |b| {
                b.iter(|| native.sample(BATCH, 0).expect("sampling succeeds"))
            });
            group.bench_function(format!("d{d}_batch{BATCH}_onnx"), |b| {
                b.iter(|| onnx.sample(BATCH, 0).expect("sampling succeeds"))
            });
        }
        group.finish();
    }
    c.final_summary();
    // Interleaved rounds, so drifts in clock speed and load hit both sides alike.
    const ROUNDS: usize = 7;
    for threads in [1usize, 2] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("thread pool");
        for (d, native, onnx) in &cases {
            let (mut tn, mut to) = (Vec::new(), Vec::new());
            pool.install(|| {
                for _ in 0..ROUNDS {
                    let s = Instant::now();
                    native.sample(BATCH, 0).expect("sampling succeeds");
                    tn.push(s.elapsed().as_secs_f64());
                    let s = Instant::now();
                    onnx.sample(BATCH, 0).expect("sampling succeeds");
                    to.push(s.elapsed().as_secs_f64());
                }
            });
            let (tn, to) = (median(tn), median(to));
            println!(
                "d = {d:2}, batch {BATCH}, RK4 32 steps, {threads} thread(s): native {:.0} \
                 samples/s, ONNX Runtime {:.0} samples/s, time ratio ONNX/native {:.2}",
                BATCH as f64 / tn,
                BATCH as f64 / to,
                to / tn
            );
        }
    }
}
