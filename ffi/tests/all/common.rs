//! Helpers for the tests that drive the installed C library from C and C++ programs
//! (`c_abi.rs`, the examples' tests): model files, expected values for the programs
//! to read, the install into a prefix, the compilers and build tools.
//!
//! Expected values travel as plain text, one array a line: `name count v1 … vcount`,
//! each value written so that `strtod` reads back the same double (Rust's `{:e}`
//! prints the shortest round-trip form).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use socflow_runtime::artifact::{
    Artifact, ControlMap, ModelKind, Normalization, Provenance, StorageDtype,
};
use socflow_runtime::nn::{Activation, MlpParams, OtFlowParams};
use socflow_runtime::vpsde::{ScoreOutput, VpSde};
use socflow_testkit::Rng;

/// The workspace root (the parent of `ffi/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("ffi/ has a parent")
        .to_path_buf()
}

/// Cargo's target directory: `CARGO_TARGET_DIR` (relative to the workspace root
/// when relative) or `target/` in the workspace.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => workspace_root().join(d),
        _ => workspace_root().join("target"),
    }
}

/// A fresh, empty directory for one test under the target directory
/// (`target/c-tests/<name>`); [`remove_dir`] it when the test passed.
pub fn test_dir(name: &str) -> PathBuf {
    let dir = target_dir().join("c-tests").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

/// Removes a test directory (errors are ignored: it is only scratch space).
pub fn remove_dir(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}

/// An executable called `name` on `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// CMake: the Python environment's (`target/pyenv/bin/cmake`, installed by
/// `scripts/setup-python`), else one on `PATH`.
pub fn cmake() -> Option<PathBuf> {
    let venv = target_dir().join("pyenv/bin/cmake");
    if is_executable(&venv) {
        return Some(venv);
    }
    which("cmake")
}

/// The C toolchain the C tests need.
#[derive(Clone, Debug)]
pub struct CTools {
    /// The C compiler (`CC`, else gcc, else cc).
    pub cc: PathBuf,
    /// The C++ compiler (`CXX`, else g++, else c++), if any.
    pub cxx: Option<PathBuf>,
    /// pkg-config (or pkgconf).
    pub pkg_config: PathBuf,
}

/// Finds the C compiler and pkg-config, or says which is missing (the caller prints
/// `skipped: <reason>` and returns).
pub fn c_tools() -> Result<CTools, String> {
    let from_env = |var: &str| {
        std::env::var_os(var)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .and_then(|p| {
                if p.components().count() > 1 {
                    is_executable(&p).then_some(p)
                } else {
                    which(&p.to_string_lossy())
                }
            })
    };
    let cc = from_env("CC")
        .or_else(|| which("gcc"))
        .or_else(|| which("cc"))
        .ok_or("no C compiler (gcc or cc) on PATH")?;
    let cxx = from_env("CXX")
        .or_else(|| which("g++"))
        .or_else(|| which("c++"));
    let pkg_config = which("pkg-config")
        .or_else(|| which("pkgconf"))
        .ok_or("pkg-config is not installed")?;
    Ok(CTools {
        cc,
        cxx,
        pkg_config,
    })
}

/// Runs a command and returns its output; panics with the command line, status,
/// stdout and stderr when it cannot start or fails.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// The prefix `scripts/install-c` installs the library into for the tests
/// (`<target>/c-install`).
pub fn install_prefix() -> PathBuf {
    target_dir().join("c-install")
}

/// Builds and installs the C library into [`install_prefix`] with
/// `scripts/install-c` (once per test process; the cargo build inside is
/// incremental) and returns the prefix.
pub fn install() -> &'static Path {
    static PREFIX: OnceLock<PathBuf> = OnceLock::new();
    PREFIX.get_or_init(|| {
        let prefix = install_prefix();
        let mut cmd = Command::new(workspace_root().join("scripts/install-c"));
        cmd.arg(&prefix);
        // The cargo running this test, not whichever is first on PATH.
        if let Some(cargo) = std::env::var_os("CARGO") {
            cmd.env("CARGO", cargo);
        }
        run_ok(&mut cmd);
        prefix
    })
}

/// `pkg-config ARGS socflow` against an installed prefix (only that prefix's .pc
/// files are searched), split into arguments.
pub fn pkg_config(tools: &CTools, prefix: &Path, args: &[&str]) -> Vec<String> {
    let out = run_ok(
        Command::new(&tools.pkg_config)
            .args(args)
            .arg("socflow")
            .env("PKG_CONFIG_LIBDIR", prefix.join("lib/pkgconfig"))
            .env_remove("PKG_CONFIG_PATH")
            .env_remove("PKG_CONFIG_SYSROOT_DIR"),
    );
    String::from_utf8(out.stdout)
        .expect("pkg-config prints UTF-8")
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// How a program links the library.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Linkage {
    /// libsocflow.so, found at run time through an rpath to the prefix.
    Shared,
    /// libsocflow.a, with `pkg-config --static`'s private libraries.
    Static,
}

/// The compiler and linker flags pkg-config gives for `linkage`. For a static link
/// `-lsocflow` becomes `-Wl,-Bstatic -lsocflow -Wl,-Bdynamic`, so the archive is
/// used even though the shared library sits next to it; a shared link gets an
/// rpath to the prefix's lib/.
pub fn link_flags(tools: &CTools, prefix: &Path, linkage: Linkage) -> Vec<String> {
    let mut flags = pkg_config(tools, prefix, &["--cflags"]);
    match linkage {
        Linkage::Shared => {
            flags.extend(pkg_config(tools, prefix, &["--libs"]));
            flags.push(format!("-Wl,-rpath,{}", prefix.join("lib").display()));
        }
        Linkage::Static => {
            for f in pkg_config(tools, prefix, &["--static", "--libs"]) {
                if f == "-lsocflow" {
                    flags.extend(["-Wl,-Bstatic", "-lsocflow", "-Wl,-Bdynamic"].map(String::from));
                } else {
                    flags.push(f);
                }
            }
        }
    }
    flags
}

/// Compiles and links `sources` into the executable `out` with `compiler`:
/// `extra` (language standard, warnings, defines) come before the sources, `link`
/// (from [`link_flags`]) after them. Panics with the compiler's output on failure.
pub fn compile(compiler: &Path, sources: &[&Path], out: &Path, extra: &[&str], link: &[String]) {
    run_ok(
        Command::new(compiler)
            .args(extra)
            .args(sources)
            .arg("-o")
            .arg(out)
            .args(link),
    );
}

/// The shared libraries an executable needs (its `DT_NEEDED` entries), read with
/// readelf when installed, else with ldd.
pub fn needed_libraries(exe: &Path) -> Vec<String> {
    if let Some(readelf) = which("readelf") {
        let out = run_ok(Command::new(readelf).arg("-d").arg(exe));
        return String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("(NEEDED)"))
            .filter_map(|l| Some(l.split('[').nth(1)?.split(']').next()?.to_string()))
            .collect();
    }
    let out = run_ok(Command::new("ldd").arg(exe));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// Random OT-Flow parameters (testkit's state dict, rank min(10, d + 1)).
pub fn otflow_params(d: usize, m: usize, n_th: usize, seed: u64) -> OtFlowParams {
    let mut sd = socflow_testkit::otflow_state_dict(d, m, n_th, seed);
    OtFlowParams::from_state_dict(d, m, n_th, (d + 1).min(10), &mut sd)
        .expect("complete OT-Flow parameters")
}

/// Random MLP parameters on (x, t) with entries scaled by 1/√fan-in.
pub fn mlp_params(d: usize, hidden: &[usize], activation: Activation, seed: u64) -> MlpParams {
    let mut g = Rng(seed);
    let mut sizes = vec![d + 1];
    sizes.extend_from_slice(hidden);
    sizes.push(d);
    MlpParams {
        d,
        hidden: hidden.to_vec(),
        activation,
        weights: sizes
            .windows(2)
            .map(|w| g.vec(w[0] * w[1], 1.0 / (w[0] as f64).sqrt()))
            .collect(),
        biases: sizes.windows(2).map(|w| g.vec(w[1], 0.1)).collect(),
    }
}

/// An OT-Flow potential model on [0, 1] (width 8, 2 layers), with a random
/// `controls × d` control map when `controls` is given.
pub fn otflow_model(d: usize, controls: Option<usize>, seed: u64) -> Artifact {
    let a = Artifact::otflow(
        otflow_params(d, 8, 2, seed),
        [0.0, 1.0],
        Provenance::now("socflow-ffi C tests"),
    )
    .expect("OT-Flow artifact");
    match controls {
        Some(rows) => {
            let map = ControlMap::new(rows, d, Rng(seed ^ 0x5eed).vec_sym(rows * d, 1.0))
                .expect("control map");
            a.with_control_map(map).expect("control map fits")
        }
        None => a,
    }
}

/// An MLP model of `kind` (velocity or score) on [0, 1], hidden widths 16, 16, tanh.
pub fn mlp_model(d: usize, kind: ModelKind, seed: u64) -> Artifact {
    Artifact::mlp(
        mlp_params(d, &[16, 16], Activation::Tanh, seed),
        kind,
        [0.0, 1.0],
        Provenance::now("socflow-ffi C tests"),
    )
    .expect("MLP artifact")
}

/// A score (diffusion) model as `socflow train` writes one: a random MLP (hidden
/// 16, 16, SiLU) predicting the noise, with its VP-SDE in the card (β from 0.2 to 15,
/// sampling down to ε = 2·10⁻³, not the defaults, so a sampler that ignored the
/// card would differ) and a data normalization.
pub fn score_model(d: usize, seed: u64) -> Artifact {
    let mut g = Rng(seed ^ 0xd1ff);
    Artifact::mlp(
        mlp_params(d, &[16, 16], Activation::Silu, seed),
        ModelKind::Score,
        [0.0, 1.0],
        Provenance::now("socflow-ffi tests"),
    )
    .expect("MLP artifact")
    .with_vpsde(VpSde {
        beta_min: 0.2,
        beta_max: 15.0,
        eps: 2e-3,
        output: ScoreOutput::Noise,
    })
    .expect("VP-SDE entry")
    .with_normalization(
        Normalization::new(
            g.vec_sym(d, 1.0),
            g.vec(d, 0.5).iter().map(|v| 1.0 + v.abs()).collect(),
        )
        .expect("normalization"),
    )
    .expect("normalization fits")
}

/// A score model whose network is, to rounding, the exact score of Gaussian data,
/// and the closed forms it is checked against.
///
/// In model coordinates the data law is N(m, I): its VP-SDE marginals are
/// N(α_t m, I) at every t (v_t = α_t²·1 + σ_t² = 1), so the exact score is
/// s(x, t) = −(x − α_t m), affine in x with a unit coefficient. (Data of another
/// variance s² ≠ 1 has the score −(x − α_t m)/v_t, a product of x and a function of
/// t that no MLP of (x, t) computes exactly; a non-unit variance comes from the
/// card's normalization instead: the data law in data coordinates is
/// N(mean + std ⊙ m, diag(std²)).) With a constant schedule β(t) = β, α_t = e^{−βt/2}.
///
/// The MLP has one softplus layer of 2d + 1 units: softplus(x_j) − softplus(−x_j) = x_j
/// exactly in real arithmetic (to an ulp in floating point), and
/// e^{c}·softplus(−c − βt/2) = α_t (1 − O(e^{−c})) with c = 40, i.e. to an ulp too.
#[derive(Clone, Debug)]
pub struct GaussianScoreModel {
    /// The model (kind score, card entry `vpsde`, normalization).
    pub artifact: Artifact,
    /// Data mean m in model coordinates.
    pub m: Vec<f64>,
    /// The VP-SDE (constant β).
    pub sde: VpSde,
    /// The normalization model → data: x = mean + std ⊙ x_model.
    pub normalization: Normalization,
}

impl GaussianScoreModel {
    /// N(m, I) in model coordinates with β(t) = `beta`, sampling down to ε = 10⁻³,
    /// and the normalization (`mean`, `std`).
    pub fn new(m: Vec<f64>, beta: f64, mean: Vec<f64>, std: Vec<f64>) -> Self {
        const C: f64 = 40.0;
        let d = m.len();
        let width = 2 * d + 1;
        // Layer 0 (width × (d + 1), inputs [x, t]): units j and d + j see ±x_j,
        // unit 2d sees −βt/2 − c.
        let mut w0 = vec![0.0; width * (d + 1)];
        let mut b0 = vec![0.0; width];
        for j in 0..d {
            w0[j * (d + 1) + j] = 1.0;
            w0[(d + j) * (d + 1) + j] = -1.0;
        }
        w0[2 * d * (d + 1) + d] = -0.5 * beta;
        b0[2 * d] = -C;
        // Layer 1 (d × width): −(softplus(x_j) − softplus(−x_j)) + m_j e^c softplus(…).
        let mut w1 = vec![0.0; d * width];
        for j in 0..d {
            w1[j * width + j] = -1.0;
            w1[j * width + d + j] = 1.0;
            w1[j * width + 2 * d] = m[j] * C.exp();
        }
        let params = MlpParams {
            d,
            hidden: vec![width],
            activation: Activation::Softplus,
            weights: vec![w0, w1],
            biases: vec![b0, vec![0.0; d]],
        };
        let sde = VpSde {
            beta_min: beta,
            beta_max: beta,
            eps: 1e-3,
            output: ScoreOutput::Score,
        };
        let normalization = Normalization::new(mean, std).expect("normalization");
        let artifact = Artifact::mlp(
            params,
            ModelKind::Score,
            [0.0, 1.0],
            Provenance::now("socflow-ffi tests: exact Gaussian score"),
        )
        .expect("MLP artifact")
        .with_vpsde(sde)
        .expect("VP-SDE entry")
        .with_normalization(normalization.clone())
        .expect("normalization fits");
        GaussianScoreModel {
            artifact,
            m,
            sde,
            normalization,
        }
    }

    /// State dimension.
    pub fn dim(&self) -> usize {
        self.m.len()
    }

    /// Model coordinates of a sample in data coordinates.
    pub fn to_model(&self, x: &[f64]) -> Vec<f64> {
        x.iter()
            .zip(&self.normalization.mean)
            .zip(&self.normalization.std)
            .map(|((x, mu), s)| (x - mu) / s)
            .collect()
    }

    /// The probability-flow ODE dx/dt = −½β[x + s(x, t)] = −½β α_t m moves every
    /// point by the same offset from t = 1 to ε: m(α_ε − α₁) (model coordinates).
    pub fn flow_shift(&self) -> Vec<f64> {
        let shift = self.sde.alpha(self.sde.eps) - self.sde.alpha(1.0);
        self.m.iter().map(|m| m * shift).collect()
    }

    /// The model's exact log-density at a sample `x` (data coordinates) of its
    /// probability-flow sampler: the prior N(0, I) shifted by [`flow_shift`]
    /// (a translation: no volume change), minus Σ ln std for the normalization.
    ///
    /// [`flow_shift`]: GaussianScoreModel::flow_shift
    pub fn flow_log_density(&self, x: &[f64]) -> f64 {
        const LN_2PI: f64 = 1.837_877_066_409_345_3;
        let z = self.to_model(x);
        let shift = self.flow_shift();
        let mut lp = -0.5 * self.dim() as f64 * LN_2PI;
        for (zj, sj) in z.iter().zip(&shift) {
            lp -= 0.5 * (zj - sj) * (zj - sj);
        }
        lp - self.normalization.std.iter().map(|s| s.ln()).sum::<f64>()
    }

    /// Exact moments (per coordinate, model coordinates) of the continuous reverse
    /// SDE from the prior N(0, I) at t = 1 to ε: the mean offset from α_t m decays by
    /// ρ = α₁/α_ε, and the variance stays 1 (the prior's variance is already v₁ = 1).
    /// So the mean is m(α_ε − α₁²/α_ε) ≈ α_ε m and the variance α_ε² + σ_ε² = 1.
    pub fn reverse_sde_moments(&self) -> (Vec<f64>, f64) {
        let (a1, ae) = (self.sde.alpha(1.0), self.sde.alpha(self.sde.eps));
        let mean = self.m.iter().map(|m| m * (ae - a1 * a1 / ae)).collect();
        (mean, 1.0)
    }

    /// Exact moments (per coordinate, model coordinates) of the discrete schemes after
    /// `steps` steps from N(0, I) at t = 1: the reverse drift is a x + b_k with
    /// a = −½β + β = ½β and b_k = −β α_{t_k} m, the noise √β ΔW, so each step maps
    /// (mean, variance) linearly. Euler–Maruyama: x₊ = (1 + ah)x + b_k h + √β ΔW;
    /// stochastic Heun: x₊ = x + ½h[(a x + b_k) + (a x̃ + b_{k+1})] + √β ΔW with the
    /// predictor x̃ = x + (a x + b_k)h + √β ΔW.
    pub fn scheme_moments(&self, heun: bool, steps: usize) -> (Vec<f64>, f64) {
        let beta = self.sde.beta_min;
        let (t0, t1) = (1.0, self.sde.eps);
        let h = (t1 - t0) / steps as f64;
        let time = |k: usize| if k == steps { t1 } else { t0 + k as f64 * h };
        let a = 0.5 * beta;
        let g = beta.sqrt();
        let mut mean = vec![0.0; self.dim()];
        let mut var = 1.0;
        for k in 0..steps {
            let (ak, bk) = (self.sde.alpha(time(k)), self.sde.alpha(time(k + 1)));
            let (mult, noise) = if heun {
                (1.0 + a * h + 0.5 * a * a * h * h, g * (1.0 + 0.5 * a * h))
            } else {
                (1.0 + a * h, g)
            };
            for (mu, m) in mean.iter_mut().zip(&self.m) {
                let (b0, b1) = (-beta * ak * m, -beta * bk * m);
                let shift = if heun {
                    0.5 * h * (b0 + b1 + a * b0 * h)
                } else {
                    b0 * h
                };
                *mu = mult * *mu + shift;
            }
            var = mult * mult * var + noise * noise * h.abs();
        }
        (mean, var)
    }
}

/// Writes a model file (f64 tensors).
pub fn write_model(artifact: &Artifact, path: &Path) {
    artifact
        .save(path, StorageDtype::F64)
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Named arrays of numbers for a C program, written as text (see the module docs).
#[derive(Clone, Debug, Default)]
pub struct Expected {
    arrays: BTreeMap<String, Vec<f64>>,
}

impl Expected {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the array `name`; names are single words and values
    /// finite.
    pub fn put(&mut self, name: &str, values: &[f64]) {
        assert!(
            !name.is_empty() && !name.contains(char::is_whitespace),
            "array name {name:?} must be one word"
        );
        assert!(
            values.iter().all(|v| v.is_finite()),
            "array {name} holds a non-finite value"
        );
        self.arrays.insert(name.to_string(), values.to_vec());
    }

    /// Adds an array of integers (exact in a double below 2⁵³).
    pub fn put_ints(&mut self, name: &str, values: &[u64]) {
        assert!(
            values.iter().all(|v| *v < 1 << 53),
            "{name}: integer too large"
        );
        let v: Vec<f64> = values.iter().map(|v| *v as f64).collect();
        self.put(name, &v);
    }

    /// The text form.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        for (name, values) in &self.arrays {
            write!(s, "{name} {}", values.len()).expect("write to a String");
            for v in values {
                write!(s, " {v:e}").expect("write to a String");
            }
            s.push('\n');
        }
        s
    }

    /// Writes the text form to `path`.
    pub fn write(&self, path: &Path) {
        std::fs::write(path, self.to_text())
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
}

/// Runs a program to completion or until `timeout` passes (then kills it), and
/// returns its output; panics when it cannot start or runs out of time (a deadlock
/// in a threaded check must not hang the test suite).
pub fn run_with_timeout(cmd: &mut Command, timeout: std::time::Duration) -> Output {
    use std::io::Read;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    // Read both pipes on threads so a chatty program cannot block on a full pipe.
    let mut out_pipe = child.stdout.take().expect("piped stdout");
    let mut err_pipe = child.stderr.take().expect("piped stderr");
    let out_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out_pipe.read_to_end(&mut v);
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err_pipe.read_to_end(&mut v);
        v
    });
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            break status;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            let stdout = out_reader.join().unwrap_or_default();
            let stderr = err_reader.join().unwrap_or_default();
            panic!(
                "{cmd:?} ran longer than {timeout:?} and was killed:\n--- stdout\n{}\n--- stderr\n{}",
                String::from_utf8_lossy(&stdout),
                String::from_utf8_lossy(&stderr)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    }
}

/// Copies the directory tree `from` to `to` (which must not exist): directories are
/// created, symbolic links recreated as they are (relative links stay relative), and
/// files hard-linked when possible, else copied. Used to move an installed prefix.
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("create {}: {e}", to.display()));
    let entries =
        std::fs::read_dir(from).unwrap_or_else(|e| panic!("read {}: {e}", from.display()));
    for entry in entries {
        let entry = entry.expect("directory entry");
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type().expect("file type");
        if kind.is_symlink() {
            let target = std::fs::read_link(&src).expect("read link");
            std::os::unix::fs::symlink(&target, &dst)
                .unwrap_or_else(|e| panic!("link {}: {e}", dst.display()));
        } else if kind.is_dir() {
            copy_tree(&src, &dst);
        } else if std::fs::hard_link(&src, &dst).is_err() {
            std::fs::copy(&src, &dst)
                .unwrap_or_else(|e| panic!("copy {} to {}: {e}", src.display(), dst.display()));
        }
    }
}

/// Standard output and error of a finished program, for failure messages.
pub fn describe_output(out: &Output) -> String {
    format!(
        "{}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
