//! Helpers shared by socflow's test suites (a dev-dependency only).
//!
//! It depends on no socflow crate, so the runtime and the trainer can both use it
//! without a dependency cycle; tests convert its plain data into their own types.

#![warn(missing_docs)]

use std::cell::Cell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// A global allocator that counts the allocations of the current thread while
/// counting is on (tests run on several threads; only the measuring one counts).
///
/// Install it in a test crate with
/// `#[global_allocator] static GLOBAL: CountingAlloc = CountingAlloc;`
/// and measure with [`count_allocs`].
pub struct CountingAlloc;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

fn note_alloc() {
    // `try_with`: the thread-locals may be gone while a thread shuts down.
    let _ = COUNTING.try_with(|c| {
        if c.get() {
            let _ = ALLOCS.try_with(|a| a.set(a.get() + 1));
        }
    });
}

// SAFETY: every method forwards its arguments unchanged to the system allocator; the
// bookkeeping uses const-initialized thread-local Cells, which never allocate.
unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        note_alloc();
        // SAFETY: the caller's contract for `layout` is the system allocator's.
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        note_alloc();
        // SAFETY: as for `alloc`.
        unsafe { std::alloc::System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: `ptr` came from the system allocator with this layout.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, size: usize) -> *mut u8 {
        note_alloc();
        // SAFETY: `ptr` came from the system allocator with `layout`.
        unsafe { std::alloc::System.realloc(ptr, layout, size) }
    }
}

/// Runs `f` and returns its result with the number of allocations (and reallocations)
/// the current thread made meanwhile. Needs [`CountingAlloc`] as the global allocator.
pub fn count_allocs<R>(f: impl FnOnce() -> R) -> (R, usize) {
    ALLOCS.with(|a| a.set(0));
    COUNTING.with(|c| c.set(true));
    let r = f();
    COUNTING.with(|c| c.set(false));
    (r, ALLOCS.with(|a| a.get()))
}

/// A small seeded generator (splitmix64) for test data; not the product's generator.
#[derive(Clone, Debug)]
pub struct Rng(pub u64);

impl Rng {
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1).
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// Uniform in [−1, 1).
    pub fn sym(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }

    /// `n` normals times `scale`.
    pub fn vec(&mut self, n: usize, scale: f64) -> Vec<f64> {
        (0..n).map(|_| scale * self.normal()).collect()
    }

    /// `n` uniforms in (lo, hi).
    pub fn range(&mut self, n: usize, lo: f64, hi: f64) -> Vec<f64> {
        (0..n).map(|_| lo + (hi - lo) * self.uniform()).collect()
    }

    /// `n` integers in 0..=hi, as f64.
    pub fn ints(&mut self, n: usize, hi: u64) -> Vec<f64> {
        (0..n)
            .map(|_| (self.next_u64() % (hi + 1)) as f64)
            .collect()
    }

    /// `n` uniforms in [−scale, scale).
    pub fn vec_sym(&mut self, n: usize, scale: f64) -> Vec<f64> {
        (0..n).map(|_| scale * self.sym()).collect()
    }
}

/// Least-squares slope of ln(err) against ln(steps), negated: the observed order of
/// convergence of a method run with `steps[i]` steps and error `errs[i]`.
pub fn observed_order(steps: &[usize], errs: &[f64]) -> f64 {
    let xs: Vec<f64> = steps.iter().map(|n| (*n as f64).ln()).collect();
    let ys: Vec<f64> = errs.iter().map(|e| e.ln()).collect();
    let n = xs.len() as f64;
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let sxy: f64 = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let sxx: f64 = xs.iter().map(|x| (x - mx).powi(2)).sum();
    -sxy / sxx
}

/// Whether `a` is within relative tolerance `tol` of `b`.
pub fn rel_close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * b.abs().max(1e-300)
}

/// Random OT-Flow parameters as a PyTorch-named state dict (normal entries with
/// scales 1/√fan-in for the K's, 0.5 for biases, A and c, 1 for w), for d, width m,
/// nTh layers and rank min(10, d + 1). Build the runtime's parameters with
/// `OtFlowParams::from_state_dict`.
pub fn otflow_state_dict(d: usize, m: usize, n_th: usize, seed: u64) -> BTreeMap<String, Vec<f64>> {
    let mut g = Rng(seed);
    let r = (d + 1).min(10);
    let mut sd = BTreeMap::new();
    sd.insert(
        "N.layers.0.weight".into(),
        g.vec(m * (d + 1), 1.0 / ((d + 1) as f64).sqrt()),
    );
    sd.insert("N.layers.0.bias".into(), g.vec(m, 0.5));
    for i in 1..n_th {
        sd.insert(
            format!("N.layers.{i}.weight"),
            g.vec(m * m, 1.0 / (m as f64).sqrt()),
        );
        sd.insert(format!("N.layers.{i}.bias"), g.vec(m, 0.5));
    }
    sd.insert("w.weight".into(), g.vec(m, 1.0));
    sd.insert("A".into(), g.vec(r * (d + 1), 0.5));
    sd.insert("c.weight".into(), g.vec(d + 1, 0.5));
    sd.insert("c.bias".into(), vec![g.normal()]);
    sd
}

/// The OT-Flow reference values of the original code (`shared/reference`).
pub mod golden {
    use super::*;

    /// Path of the reference file, relative to any crate of the workspace.
    pub const PATH: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/reference/otflow_phi_golden.json"
    );

    /// The whole reference file as JSON.
    pub fn json() -> Value {
        let text = std::fs::read_to_string(PATH).expect("reference file readable");
        serde_json::from_str(&text).expect("reference file is JSON")
    }

    /// All numbers of a (nested) JSON array, flattened row-major.
    pub fn flat(v: &Value) -> Vec<f64> {
        match v {
            Value::Array(a) => a.iter().flat_map(flat).collect(),
            Value::Number(n) => vec![n.as_f64().expect("reference numbers are f64")],
            other => panic!("unexpected JSON value {other:?}"),
        }
    }

    /// A JSON array of rows as vectors.
    pub fn rows(v: &Value) -> Vec<Vec<f64>> {
        v.as_array()
            .expect("an array of rows")
            .iter()
            .map(flat)
            .collect()
    }

    /// A size field.
    pub fn usize_of(v: &Value) -> usize {
        v.as_u64().expect("a size") as usize
    }

    /// The parameters of one reference case, by PyTorch name, flattened.
    pub fn state_dict(case: &Value) -> BTreeMap<String, Vec<f64>> {
        case["state_dict"]
            .as_object()
            .expect("state_dict is an object")
            .iter()
            .map(|(k, v)| (k.clone(), flat(v)))
            .collect()
    }

    /// The reference cases.
    pub fn cases() -> Vec<Value> {
        json()["cases"]
            .as_array()
            .expect("cases is an array")
            .clone()
    }
}

/// A Python that runs `import {imports}` (e.g. `"numpy, onnx, onnxruntime"`):
/// `SOCFLOW_PYTHON`, else the workspace's `target/pyenv` (made by
/// scripts/setup-python). `Err` says why there is none, naming the packages as
/// `packages` (e.g. `"onnx and onnxruntime"`).
pub fn python_importing(imports: &str, packages: &str) -> Result<PathBuf, String> {
    let py = match std::env::var_os("SOCFLOW_PYTHON") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/..")).join("target/pyenv/bin/python"),
    };
    match Command::new(&py)
        .args(["-c", &format!("import {imports}")])
        .output()
    {
        Ok(o) if o.status.success() => Ok(py),
        Ok(o) => Err(format!(
            "{} cannot import {packages}: {}",
            py.display(),
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("{}: {e} (run scripts/setup-python)", py.display())),
    }
}

/// The `Ok` value of a `Result<T, String>`, or else prints `skipped: <why>` and
/// returns from the calling test.
#[macro_export]
macro_rules! ok_or_skip {
    ($result:expr) => {
        match $result {
            Ok(v) => v,
            Err(why) => {
                eprintln!("skipped: {why}");
                return;
            }
        }
    };
}

/// Builds a host C++ test harness (`src`, C++17, -O2, no FMA contraction, as NVRTC
/// compiles the GPU kernels with `--fmad=false`) into the executable `exe` with `$CXX`
/// (default `g++`). `Err` says why when no compiler runs, so the caller can skip; a
/// compiler that runs but rejects the source is a test failure (panics with its
/// output), since the kernels the harness includes must compile.
pub fn build_cxx_harness(src: &Path, exe: &Path) -> Result<PathBuf, String> {
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "g++".into());
    let out = Command::new(&cxx)
        .args(["-std=c++17", "-O2", "-ffp-contract=off", "-Wall", "-o"])
        .arg(exe)
        .arg(src)
        .output()
        .map_err(|e| {
            format!("{cxx} not runnable ({e}): the host harness needs a C++17 compiler")
        })?;
    assert!(
        out.status.success(),
        "{cxx} failed to build the harness {} from the kernels: {}",
        src.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(exe.to_path_buf())
}

/// Runs a harness built by [`build_cxx_harness`] with `args` and `input` on its stdin,
/// and returns its whitespace-separated output tokens (panics, with its stderr, when
/// it fails).
pub fn run_cxx_harness(exe: &Path, args: &[&str], input: &str) -> Vec<String> {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new(exe)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("harness starts");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("input written");
    let out = child.wait_with_output().expect("harness runs");
    assert!(
        out.status.success(),
        "harness {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("text")
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// Values that exercise every branch of an elementwise kernel (zeros of both signs,
/// tiny and huge magnitudes, the activations' clamps near 20, 43 and 88, ±∞ and NaN),
/// then `n` random ones from `seed` (half in ±3, half in ±30).
pub fn special_values(n: usize, seed: u64) -> Vec<f64> {
    let mut v = vec![
        0.0,
        -0.0,
        1e-30,
        -1e-30,
        1e-8,
        -1e-8,
        0.5,
        -0.5,
        1.0,
        -1.0,
        20.0,
        -20.0,
        43.0,
        -43.0,
        88.0,
        -88.0,
        400.0,
        -400.0,
        1e30,
        -1e30,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
    ];
    let mut g = Rng(seed);
    v.extend(g.vec(n / 2, 3.0));
    v.extend(g.vec_sym(n - n / 2, 30.0));
    v
}
