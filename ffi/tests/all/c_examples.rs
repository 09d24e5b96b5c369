//! The C and C++ examples (`examples/c`, `examples/cpp`) built against the installed
//! library and run on a model this test writes, their numbers checked against the
//! runtime's Rust API:
//!
//! - `control_loop` (make, pkg-config): a short run at 1 kHz in f64 and f32 prints
//!   latency percentiles that parse and are ordered (no timing thresholds), and its
//!   final state and control equal the same loop run through the Rust API;
//! - `sample`: the .npy files it writes (shared and static builds, several solvers,
//!   chunked calls, f32) hold the runtime's samples and log-densities, bit for bit;
//!   numpy reads them when the Python environment is there; on a score (diffusion)
//!   model `--solver em` and `stochastic-heun` draw the runtime's reverse-SDE samples
//!   and `--solver rk4` its probability-flow samples and log-densities;
//! - the C++ example (CMake, `find_package(socflow)`): controls, values, batches,
//!   roll-outs (built-in and C++ callables), samples and log-densities equal the
//!   Rust API's; the deliberate errors come back as they should;
//! - valgrind memcheck finds no errors and no definite or indirect leaks in any of
//!   them.
//!
//! A missing tool skips its part with `skipped: <reason>`.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use socflow_runtime::artifact::{Artifact, ControlMap, Provenance};
use socflow_runtime::controller::{Integrator, SimulateOptions};
use socflow_runtime::model::Model;
use socflow_runtime::npy::read_npy_f64;
use socflow_runtime::ode::{OdeOptions, OdeSolver};
use socflow_runtime::sampler::{Sampler, SamplerOptions};
use socflow_runtime::sde::{SdeOptions, SdeScheme};
use socflow_runtime::vpsde::VpSampling;
use socflow_runtime::Real;
use socflow_testkit::Rng;

/// State dimension of the test models.
const D: usize = 10;
/// Width of their OT-Flow ResNet (a realistic controller: ~3,000 parameters).
const M: usize = 48;
/// Rows of the control map of the second model (fewer controls than states).
const MAPPED_CONTROLS: usize = 4;

/// The examples, built once per test process.
struct Examples {
    /// Scratch directory of this test.
    dir: PathBuf,
    /// A d = 10, m = 48 OT-Flow potential on [0, 1], one control per state.
    model: PathBuf,
    /// The same network with a 4 × 10 control map.
    mapped_model: PathBuf,
    /// A d = 10 score model (VP-SDE diffusion: noise output, the schedule in the
    /// card, a normalization).
    score_model: PathBuf,
    /// `control_loop` and `sample` linked against libsocflow.so.
    c_shared: PathBuf,
    /// The same linked against libsocflow.a.
    c_static: PathBuf,
    /// The C++ example, or why it was not built.
    cpp: Result<PathBuf, String>,
}

/// Builds everything (or says why the C examples cannot be built here).
fn examples() -> Result<&'static Examples, &'static str> {
    static BUILT: OnceLock<Result<Examples, String>> = OnceLock::new();
    BUILT.get_or_init(build).as_ref().map_err(String::as_str)
}

fn build() -> Result<Examples, String> {
    let tools = common::c_tools()?;
    let make = common::which("make").ok_or("make is not installed")?;
    let dir = common::test_dir("examples");
    let prefix = common::install();

    // Testkit's random parameters with the quadratic part A and the output weights w
    // scaled by 0.3 (as NeuralSOC's init_scale does): samples of scale ~1-3 and
    // controls of order 1, as a trained model has, instead of a field that blows
    // the prior up to thousands.
    let mut params = common::otflow_params(D, M, 2, 2024);
    params.a.iter_mut().for_each(|v| *v *= 0.3);
    params.w.iter_mut().for_each(|v| *v *= 0.3);
    let artifact = Artifact::otflow(params, [0.0, 1.0], Provenance::now("C examples test"))
        .expect("OT-Flow artifact");
    let model = dir.join("otflow_d10.safetensors");
    common::write_model(&artifact, &model);
    let map = ControlMap::new(
        MAPPED_CONTROLS,
        D,
        Rng(77).vec_sym(MAPPED_CONTROLS * D, 0.5),
    )
    .expect("control map");
    let mapped_model = dir.join("otflow_d10_map4.safetensors");
    common::write_model(
        &artifact.with_control_map(map).expect("map fits"),
        &mapped_model,
    );

    let score_model = dir.join("score_d10.safetensors");
    common::write_model(&common::score_model(D, 2025), &score_model);

    let makefile = common::workspace_root().join("examples/c/Makefile");
    let mut builds = Vec::new();
    for (name, static_link) in [("c-shared", false), ("c-static", true)] {
        let out = dir.join(name);
        std::fs::create_dir_all(&out).expect("build directory");
        let mut cmd = Command::new(&make);
        cmd.current_dir(&out)
            .arg("-f")
            .arg(&makefile)
            .arg(format!("SOCFLOW_PREFIX={}", prefix.display()))
            .arg(format!("CC={}", tools.cc.display()))
            .arg(format!("PKG_CONFIG={}", tools.pkg_config.display()))
            .env_remove("PKG_CONFIG_PATH")
            .env_remove("CFLAGS");
        if static_link {
            cmd.arg("STATIC=1");
        }
        common::run_ok(&mut cmd);
        builds.push(out);
    }
    let c_static = builds.pop().expect("static build");
    let c_shared = builds.pop().expect("shared build");

    let cpp = build_cpp(&tools, prefix, &dir);
    Ok(Examples {
        dir,
        model,
        mapped_model,
        score_model,
        c_shared,
        c_static,
        cpp,
    })
}

/// Configures and builds examples/cpp with CMake against the installed prefix.
fn build_cpp(tools: &common::CTools, prefix: &Path, dir: &Path) -> Result<PathBuf, String> {
    let cmake = common::cmake()
        .ok_or("cmake is not installed (scripts/setup-python puts one in target/pyenv)")?;
    let cxx = tools.cxx.as_ref().ok_or("no C++ compiler (g++ or c++)")?;
    let build = dir.join("cpp");
    common::run_ok(
        Command::new(&cmake)
            .arg("-S")
            .arg(common::workspace_root().join("examples/cpp"))
            .arg("-B")
            .arg(&build)
            .arg(format!("-DCMAKE_PREFIX_PATH={}", prefix.display()))
            .arg(format!("-DCMAKE_CXX_COMPILER={}", cxx.display()))
            .arg("-DCMAKE_BUILD_TYPE=Release")
            .arg("-DSOCFLOW_EXAMPLE_WERROR=ON")
            .env_remove("CXXFLAGS"),
    );
    common::run_ok(Command::new(&cmake).arg("--build").arg(&build));
    Ok(build.join("socflow_example"))
}

/// The longest an example may run natively (a deadlock must not hang the suite).
const RUN_TIMEOUT: Duration = Duration::from_secs(120);
/// The longest one run under valgrind may take.
const VALGRIND_TIMEOUT: Duration = Duration::from_secs(300);

/// Runs a program; panics with its output unless it exits with status 0 in time.
fn run(program: &Path, args: &[&str]) -> String {
    let out = run_status(program, args);
    assert!(
        out.status.success(),
        "{} {}: {}",
        program.display(),
        args.join(" "),
        common::describe_output(&out)
    );
    String::from_utf8(out.stdout).expect("the examples print UTF-8")
}

/// Runs a program to completion (or panics after [`RUN_TIMEOUT`]).
fn run_status(program: &Path, args: &[&str]) -> Output {
    common::run_with_timeout(Command::new(program).args(args), RUN_TIMEOUT)
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 test paths")
}

/// The line of `out` whose first word is `key`.
fn line<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find(|l| l.split_whitespace().next() == Some(key))
        .unwrap_or_else(|| panic!("no `{key}` line in the output:\n{out}"))
}

/// The `name=value` fields of a line, in order.
fn fields(line: &str) -> Vec<(&str, &str)> {
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .collect()
}

/// The value of field `name` in `line`.
fn field<'a>(line: &'a str, name: &str) -> &'a str {
    fields(line)
        .into_iter()
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("no `{name}=` in `{line}`"))
}

fn numbers(list: &str) -> Vec<f64> {
    list.split(',')
        .map(|v| {
            v.parse()
                .unwrap_or_else(|e| panic!("`{v}` is not a number: {e}"))
        })
        .collect()
}

/// The comma-separated numbers after `key` on the `key` line.
fn values(out: &str, key: &str) -> Vec<f64> {
    let l = line(out, key);
    numbers(l.split_whitespace().nth(1).unwrap_or(""))
}

/// Whether `a` and `b` agree to a relative 1e-12 (elementwise, scale ≥ 1).
fn assert_close(what: &str, a: &[f64], b: &[f64]) {
    assert_eq!(a.len(), b.len(), "{what}: lengths differ");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= 1e-12 * y.abs().max(1.0),
            "{what}[{i}]: {x} vs {y}"
        );
    }
}

// ---------------------------------------------------------------------------
// control_loop

/// The percentiles of a `latency_us` line, checked to be ordered.
fn check_latency_line(out: &str) -> [f64; 4] {
    let l = line(out, "latency_us");
    let names: Vec<&str> = fields(l).iter().map(|(k, _)| *k).collect();
    assert_eq!(names, ["p50", "p99", "p99.9", "max"], "{l}");
    let p = ["p50", "p99", "p99.9", "max"].map(|k| {
        field(l, k)
            .parse::<f64>()
            .unwrap_or_else(|e| panic!("{k} in `{l}`: {e}"))
    });
    assert!(p[0] > 0.0 && p.iter().all(|v| v.is_finite()), "{l}");
    assert!(
        p[0] <= p[1] && p[1] <= p[2] && p[2] <= p[3],
        "percentiles out of order: {l}"
    );
    p
}

/// The example's plant noise: testkit's splitmix64 bits, uniforms in (0, 1],
/// Box–Muller (as control_loop.c draws them).
struct PlantRng(socflow_testkit::Rng);

impl PlantRng {
    fn uniform(&mut self) -> f64 {
        ((self.0.next_u64() >> 11) + 1) as f64 * (1.0 / 9_007_199_254_740_992.0)
    }
    fn normal(&mut self) -> f64 {
        let u1 = self.uniform();
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// control_loop's ticks run through the Rust API: (last t, final state, last
/// control) after `iterations` ticks at `rate` with noise `sigma` and `seed`.
fn control_loop_in_rust<T: Real>(
    model: &Path,
    iterations: usize,
    rate: f64,
    sigma: f64,
    seed: u64,
) -> (f64, Vec<f64>, Vec<f64>) {
    let model = Model::<T>::load(model).expect("model");
    let (t0, t1) = model.time_interval();
    let (t0, t1) = (t0.f64(), t1.f64());
    let mut ctl = model.controller().expect("controller");
    let (d, m) = (ctl.state_dim(), ctl.control_dim());
    let dt = 1.0 / rate;
    let episode = (((t1 - t0) / dt).round() as usize).max(1);
    let noise = sigma * dt.sqrt();
    let mut rng = PlantRng(socflow_testkit::Rng(seed));
    let mut z: Vec<f64> = (0..d).map(|_| rng.normal()).collect();
    let (mut x, mut u) = (vec![T::zero(); d], vec![T::zero(); m]);
    let mut t = t0;
    for k in 0..iterations {
        let j = k % episode;
        if j == 0 && k > 0 {
            z.iter_mut().for_each(|v| *v = rng.normal());
        }
        t = t0 + j as f64 * dt;
        for (a, b) in x.iter_mut().zip(&z) {
            *a = T::of(*b);
        }
        ctl.control(T::of(t), &x, &mut u).expect("control");
        for (i, zi) in z.iter_mut().enumerate() {
            let drive = if i < m.min(d) { u[i].f64() } else { 0.0 };
            *zi += drive * dt + noise * rng.normal();
        }
    }
    (t, z, u.iter().map(|v| v.f64()).collect())
}

/// Checks control_loop's `final` line against the Rust API's run of the same loop.
fn check_final_line<T: Real>(out: &str, model: &Path, iterations: usize, rate: f64, seed: u64) {
    let l = line(out, "final");
    let (t, z, u) = control_loop_in_rust::<T>(model, iterations, rate, 0.1, seed);
    let got_t: f64 = field(l, "t").parse().expect("t");
    assert_eq!(got_t, t, "last tick's time");
    // The same arithmetic; only libm's log/cos and the compiler's contraction could
    // differ in the last bits.
    assert_close("final state", &numbers(field(l, "x")), &z);
    assert_close("last control", &numbers(field(l, "u")), &u);
}

#[test]
fn control_loop_at_1khz_reports_ordered_percentiles_and_the_rust_api_states() {
    let ex = match examples() {
        Ok(ex) => ex,
        Err(why) => return println!("skipped: {why}"),
    };
    let exe = ex.c_shared.join("control_loop");
    let model = path_str(&ex.model);
    for (precision, flag) in [("f64", None), ("f32", Some("--f32"))] {
        let mut args = vec![
            model,
            "--iterations",
            "300",
            "--rate",
            "1000",
            "--seed",
            "5",
        ];
        args.extend(flag);
        let out = run(&exe, &args);
        let p = check_latency_line(&out);
        let l = out
            .lines()
            .find(|l| l.starts_with("missed_deadlines="))
            .expect("missed_deadlines line");
        let (k, of) = field(l, "missed_deadlines")
            .parse::<usize>()
            .ok()
            .zip(
                l.split_whitespace()
                    .last()
                    .and_then(|n| n.parse::<usize>().ok()),
            )
            .unwrap_or_else(|| panic!("unreadable `{l}`"));
        assert!(k <= of && of == 300, "{l}");
        println!(
            "control_loop {precision} at 1 kHz, 300 ticks: p50 {} µs, p99 {} µs, p99.9 {} µs, \
             max {} µs, {k} missed deadlines",
            p[0], p[1], p[2], p[3]
        );
        if precision == "f64" {
            check_final_line::<f64>(&out, &ex.model, 300, 1000.0, 5);
        } else {
            check_final_line::<f32>(&out, &ex.model, 300, 1000.0, 5);
        }
    }
}

#[test]
fn control_loop_without_sleep_drives_a_plant_with_fewer_controls() {
    let ex = match examples() {
        Ok(ex) => ex,
        Err(why) => return println!("skipped: {why}"),
    };
    // 2,500 ticks at a nominal 1 kHz: three episodes of [0, 1], so the state restarts.
    for dir in [&ex.c_shared, &ex.c_static] {
        let out = run(
            &dir.join("control_loop"),
            &[
                path_str(&ex.mapped_model),
                "--no-sleep",
                "--iterations",
                "2500",
                "--seed",
                "9",
            ],
        );
        check_latency_line(&out);
        assert!(!out.contains("missed_deadlines"), "{out}");
        assert!(
            out.contains(&format!("d = {D}, {MAPPED_CONTROLS} controls")),
            "{out}"
        );
        check_final_line::<f64>(&out, &ex.mapped_model, 2500, 1000.0, 9);
    }
}

#[test]
fn control_loop_reports_socflow_errors_with_status_names() {
    let ex = match examples() {
        Ok(ex) => ex,
        Err(why) => return println!("skipped: {why}"),
    };
    let missing = ex.dir.join("no-such-model.safetensors");
    let never = ex.dir.join("never-written.npy");
    for (program, args) in [
        ("control_loop", vec![path_str(&missing)]),
        ("sample", vec![path_str(&missing), path_str(&never)]),
    ] {
        let out = run_status(&ex.c_shared.join(program), &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{program}: {stderr}");
        assert!(
            stderr.contains("socflow_model_load failed: SOCFLOW_ERROR_IO: "),
            "{program}: {stderr}"
        );
    }
    // Bad arguments are usage errors (status 2), not socflow errors.
    let out = run_status(
        &ex.c_shared.join("control_loop"),
        &[path_str(&ex.model), "--rate", "-5"],
    );
    assert_eq!(out.status.code(), Some(2));
}

// ---------------------------------------------------------------------------
// sample

/// The runtime's samples (and log-densities) of `model`, as the C ABI's sampler
/// makes them: prior at t1, integrated to t0, the card's normalization.
fn samples_in_rust<T: Real>(
    model: &Path,
    ode: OdeOptions<T>,
    seed: u64,
    n: usize,
    log_density: bool,
) -> (Vec<f64>, Option<Vec<f64>>) {
    let model = Model::<T>::load(model).expect("model");
    let (t0, t1) = model.time_interval();
    let mut so = SamplerOptions::ode(ode, seed);
    so.log_density = log_density;
    so.normalization = model.artifact().card.normalization.clone();
    let s = Sampler::new(model.field().expect("field"), t1, t0, so)
        .expect("sampler")
        .sample(n, 0)
        .expect("samples");
    let wide = |v: Vec<T>| v.into_iter().map(|x| x.f64()).collect::<Vec<f64>>();
    (wide(s.x), s.log_density.map(wide))
}

/// Reads an .npy file the example wrote, checking its shape.
fn read_npy(path: &Path, shape: &[usize]) -> Vec<f64> {
    let (got, data) = read_npy_f64(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    assert_eq!(got, shape, "shape of {}", path.display());
    data
}

/// The Python interpreter with numpy (`SOCFLOW_PYTHON`, else target/pyenv), if any.
fn python_with_numpy() -> Option<PathBuf> {
    let python = std::env::var_os("SOCFLOW_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| common::target_dir().join("pyenv/bin/python"));
    let ok = Command::new(&python)
        .args(["-c", "import numpy"])
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then_some(python)
}

#[test]
fn sample_writes_npy_files_holding_the_runtimes_samples() {
    let ex = match examples() {
        Ok(ex) => ex,
        Err(why) => return println!("skipped: {why}"),
    };
    let model = path_str(&ex.model);
    let out_dir = ex.dir.join("samples");
    std::fs::create_dir_all(&out_dir).expect("samples directory");
    let file = |name: &str| out_dir.join(name);

    // RK4 with log-densities, filled by calls of 10 rows on two threads.
    let (x_path, lp_path) = (file("rk4.npy"), file("rk4_logp.npy"));
    let n = 64;
    let out = run(
        &ex.c_shared.join("sample"),
        &[
            model,
            path_str(&x_path),
            "--n",
            "64",
            "--solver",
            "rk4",
            "--steps",
            "16",
            "--seed",
            "5",
            "--chunk",
            "10",
            "--threads",
            "2",
            "--log-density",
            path_str(&lp_path),
        ],
    );
    let speed = out
        .lines()
        .find(|l| l.starts_with("elapsed_s="))
        .expect("throughput line");
    assert!(
        field(speed, "samples_per_s").parse::<f64>().expect("rate") > 0.0,
        "{speed}"
    );
    let (want_x, want_lp) =
        samples_in_rust::<f64>(&ex.model, OdeOptions::fixed(OdeSolver::Rk4, 16), 5, n, true);
    assert_eq!(read_npy(&x_path, &[n, D]), want_x, "RK4 samples");
    assert_eq!(
        read_npy(&lp_path, &[n]),
        want_lp.expect("log-densities"),
        "RK4 log-densities"
    );

    // The static build writes the same bytes.
    let static_path = file("rk4_static.npy");
    run(
        &ex.c_static.join("sample"),
        &[
            model,
            path_str(&static_path),
            "--n",
            "64",
            "--steps",
            "16",
            "--seed",
            "5",
        ],
    );
    assert_eq!(
        std::fs::read(&static_path).expect("static build's file"),
        std::fs::read(&x_path).expect("shared build's file"),
        "the static build's samples differ"
    );

    // Adaptive Dormand–Prince in f64; Heun in f32 (the file still float64).
    let dopri = file("dopri5.npy");
    run(
        &ex.c_shared.join("sample"),
        &[
            model,
            path_str(&dopri),
            "--n",
            "16",
            "--solver",
            "dopri5",
            "--rtol",
            "1e-6",
            "--atol",
            "1e-7",
            "--seed",
            "11",
        ],
    );
    let (want, _) =
        samples_in_rust::<f64>(&ex.model, OdeOptions::adaptive(1e-6, 1e-7), 11, 16, false);
    assert_eq!(read_npy(&dopri, &[16, D]), want, "Dopri5 samples");

    let heun32 = file("heun_f32.npy");
    run(
        &ex.c_shared.join("sample"),
        &[
            model,
            path_str(&heun32),
            "--n",
            "16",
            "--solver",
            "heun",
            "--steps",
            "8",
            "--seed",
            "3",
            "--f32",
        ],
    );
    let (want, _) = samples_in_rust::<f32>(
        &ex.model,
        OdeOptions::fixed(OdeSolver::Heun, 8),
        3,
        16,
        false,
    );
    assert_eq!(read_npy(&heun32, &[16, D]), want, "f32 Heun samples");

    // numpy reads the files: dtype, shape and every value.
    match python_with_numpy() {
        None => println!("skipped: numpy check (no Python with numpy; run scripts/setup-python)"),
        Some(python) => {
            let script = "import sys, numpy as np\n\
                          a = np.load(sys.argv[1])\n\
                          assert a.dtype == np.float64 and a.flags.c_contiguous, a.dtype\n\
                          print(' '.join(str(s) for s in a.shape))\n\
                          print(','.join(repr(float(v)) for v in a.ravel()))\n";
            for (path, shape, want) in [
                (&x_path, vec![n, D], &want_x),
                (&lp_path, vec![n], &read_npy(&lp_path, &[n])),
            ] {
                let out = run(&python, &["-c", script, path_str(path)]);
                let mut lines = out.lines();
                let got_shape: Vec<usize> = lines
                    .next()
                    .expect("shape line")
                    .split_whitespace()
                    .map(|s| s.parse().expect("shape"))
                    .collect();
                assert_eq!(got_shape, shape, "numpy's shape of {}", path.display());
                assert_eq!(
                    &numbers(lines.next().expect("values line")),
                    want,
                    "numpy's values of {}",
                    path.display()
                );
            }
        }
    }
}

/// The runtime's samples (and log-densities) of a score model, as the C ABI's
/// sampler draws them for `solver` (a `--solver` name of the example).
fn score_samples_in_rust(
    model: &Path,
    solver: &str,
    steps: usize,
    seed: u64,
    n: usize,
    log_density: bool,
) -> (Vec<f64>, Option<Vec<f64>>) {
    let vp = Model::<f64>::load(model)
        .expect("model")
        .vpsde()
        .expect("a score model");
    let how = match solver {
        "rk4" => VpSampling::ProbabilityFlow(OdeOptions::fixed(OdeSolver::Rk4, steps)),
        "em" => VpSampling::ReverseSde(SdeOptions::new(SdeScheme::EulerMaruyama, steps)),
        "stochastic-heun" => {
            VpSampling::ReverseSde(SdeOptions::new(SdeScheme::StochasticHeun, steps))
        }
        other => panic!("no solver {other} in this test"),
    };
    let mut so = vp.sampler_options(how, seed);
    so.log_density = log_density;
    let s = vp
        .sampler(so)
        .expect("sampler")
        .sample(n, 0)
        .expect("samples");
    (s.x, s.log_density)
}

#[test]
fn sample_draws_a_diffusion_model_by_its_reverse_sde_or_probability_flow() {
    let ex = match examples() {
        Ok(ex) => ex,
        Err(why) => return println!("skipped: {why}"),
    };
    let model = path_str(&ex.score_model);
    let out_dir = ex.dir.join("score_samples");
    std::fs::create_dir_all(&out_dir).expect("samples directory");
    let file = |name: &str| out_dir.join(name);
    let n = 48;

    // The reverse SDE, both schemes, in calls of 10 rows on two threads.
    for (solver, steps) in [("em", "60"), ("stochastic-heun", "30")] {
        let x_path = file(&format!("{solver}.npy"));
        let out = run(
            &ex.c_shared.join("sample"),
            &[
                model,
                path_str(&x_path),
                "--n",
                "48",
                "--solver",
                solver,
                "--steps",
                steps,
                "--seed",
                "6",
                "--chunk",
                "10",
                "--threads",
                "2",
            ],
        );
        let sampled = line(&out, "sampled");
        assert_eq!(field(sampled, "kind"), "score", "{sampled}");
        assert_eq!(field(sampled, "solver"), solver, "{sampled}");
        let (want, _) = score_samples_in_rust(
            &ex.score_model,
            solver,
            steps.parse().expect("steps"),
            6,
            n,
            false,
        );
        assert_eq!(read_npy(&x_path, &[n, D]), want, "{solver} samples");
    }

    // The probability-flow ODE with log-densities (the static build).
    let (x_path, lp_path) = (file("pf.npy"), file("pf_logp.npy"));
    run(
        &ex.c_static.join("sample"),
        &[
            model,
            path_str(&x_path),
            "--n",
            "48",
            "--solver",
            "rk4",
            "--steps",
            "24",
            "--seed",
            "7",
            "--log-density",
            path_str(&lp_path),
        ],
    );
    let (want_x, want_lp) = score_samples_in_rust(&ex.score_model, "rk4", 24, 7, n, true);
    assert_eq!(
        read_npy(&x_path, &[n, D]),
        want_x,
        "probability-flow samples"
    );
    assert_eq!(
        read_npy(&lp_path, &[n]),
        want_lp.expect("log-densities"),
        "probability-flow log-densities"
    );

    // The reverse SDE has no log-density, and a flow model no reverse SDE: socflow
    // errors (status 1) that say so.
    let never = file("never.npy");
    for (m, extra, message) in [
        (
            model,
            vec!["--log-density", path_str(&lp_path)],
            "log_density needs an ODE solver",
        ),
        (path_str(&ex.model), vec![], "score (diffusion) model"),
    ] {
        let mut args = vec![m, path_str(&never), "--n", "4", "--solver", "em"];
        args.extend(extra);
        let out = run_status(&ex.c_shared.join("sample"), &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("socflow_sampler_create failed: SOCFLOW_ERROR_INVALID_ARGUMENT: ")
                && stderr.contains(message),
            "{stderr}"
        );
        assert!(!never.exists());
    }
}

// ---------------------------------------------------------------------------
// C++

#[test]
fn cpp_example_equals_the_rust_api() {
    let ex = match examples() {
        Ok(ex) => ex,
        Err(why) => return println!("skipped: {why}"),
    };
    let exe = match &ex.cpp {
        Ok(exe) => exe,
        Err(why) => return println!("skipped: C++ example: {why}"),
    };
    let out = run(exe, &[path_str(&ex.model), "--threads", "2"]);

    let info = line(&out, "info");
    assert_eq!(field(info, "state_dim"), D.to_string(), "{info}");
    assert_eq!(field(info, "control_dim"), D.to_string(), "{info}");
    assert_eq!(field(info, "kind"), "potential", "{info}");
    let artifact = Artifact::load(&ex.model).expect("artifact");
    assert_eq!(
        field(info, "parameters"),
        artifact.parameter_count().to_string()
    );
    assert_eq!(line(&out, "from_buffer"), "from_buffer same_info=1");

    let t = values(&out, "t")[0];
    let x = values(&out, "x");
    assert_eq!((t, x.len()), (0.5, D));

    let rust = Model::<f64>::load(&ex.model).expect("model");
    let mut ctl = rust.controller().expect("controller");
    let mut u = vec![0.0; D];
    ctl.control(t, &x, &mut u).expect("control");
    assert_eq!(values(&out, "control_f64"), u, "f64 control");
    assert_eq!(
        values(&out, "value_f64"),
        [ctl.value(t, &x).expect("value")],
        "value"
    );

    let rust32 = Model::<f32>::load(&ex.model).expect("model");
    let mut ctl32 = rust32.controller().expect("controller");
    let x32: Vec<f32> = x.iter().map(|v| *v as f32).collect();
    let mut u32 = vec![0f32; D];
    ctl32.control(t as f32, &x32, &mut u32).expect("control");
    let u32: Vec<f64> = u32.into_iter().map(f64::from).collect();
    assert_eq!(values(&out, "control_f32"), u32, "f32 control");

    let xs: Vec<f64> = [1.0, 0.5, -1.0]
        .iter()
        .flat_map(|s| x.iter().map(move |v| s * v))
        .collect();
    let mut us = vec![0.0; 3 * D];
    ctl.control_batch(t, &xs, &mut us).expect("batch");
    assert_eq!(values(&out, "batch_f64"), us, "batch");

    let rollout = ctl
        .simulate(
            &Integrator {
                dim: D,
                gain: 1.0,
                control_weight: 1.0,
            },
            &SimulateOptions {
                x0: x.clone(),
                t0: 0.0,
                t1: 1.0,
                steps: 50,
                sigma: 0.1,
                paths: 4,
                seed: 7,
                keep_trajectories: false,
            },
        )
        .expect("simulate");
    let costs: Vec<f64> = rollout
        .running_cost
        .iter()
        .zip(&rollout.terminal_cost)
        .map(|(r, g)| r + g)
        .collect();
    assert_eq!(values(&out, "simulate_costs"), costs, "roll-out costs");
    assert_eq!(
        values(&out, "simulate_final0"),
        rollout.finals[..D],
        "roll-out final state"
    );
    // The same dynamics as C++ callables (½‖u‖² summed in C++).
    assert_close(
        "C++ callbacks' costs",
        &values(&out, "simulate_callbacks_costs"),
        &costs,
    );
    assert_eq!(
        line(&out, "callback_exception"),
        "callback_exception plant model out of range"
    );

    let samples = line(&out, "samples");
    assert_eq!(field(samples, "n"), "5");
    let (want_x, want_lp) = samples_in_rust::<f64>(
        &ex.model,
        OdeOptions::fixed(
            OdeSolver::Rk4,
            field(samples, "steps").parse().expect("steps"),
        ),
        field(samples, "seed").parse().expect("seed"),
        5,
        true,
    );
    let got_x = out
        .lines()
        .find(|l| l.starts_with("samples ") && !l.contains('='))
        .map(|l| numbers(&l["samples ".len()..]))
        .expect("samples values line");
    assert_eq!(got_x, want_x, "samples");
    assert_eq!(
        values(&out, "log_density"),
        want_lp.expect("log-densities"),
        "log-densities"
    );

    assert!(
        line(&out, "caught").starts_with("caught SOCFLOW_ERROR_LENGTH: "),
        "{out}"
    );
    assert_eq!(
        line(&out, "try_control"),
        "try_control SOCFLOW_ERROR_LENGTH"
    );
    assert_eq!(line(&out, "moved"), "moved source_empty=1 target_live=1");
}

// ---------------------------------------------------------------------------
// valgrind

#[test]
fn valgrind_memcheck_is_clean_on_the_examples() {
    let ex = match examples() {
        Ok(ex) => ex,
        Err(why) => return println!("skipped: {why}"),
    };
    let Some(valgrind) = common::which("valgrind") else {
        return println!("skipped: valgrind is not installed");
    };
    // Small runs, one worker thread: valgrind serializes threads, and it emulates
    // FMA instructions with a slow software helper, so the sampler's blocked
    // kernels (gemm and the AVX2+FMA versions of the activations) run ~1000× slower
    // than natively. One sampler step reaches every code path all the same.
    let model = path_str(&ex.model);
    let npy = ex.dir.join("valgrind.npy");
    let logp = ex.dir.join("valgrind_logp.npy");
    let mut runs: Vec<(PathBuf, Vec<&str>)> = vec![
        (
            ex.c_shared.join("control_loop"),
            vec![model, "--no-sleep", "--iterations", "200", "--warmup", "5"],
        ),
        (
            ex.c_shared.join("control_loop"),
            vec![
                model,
                "--no-sleep",
                "--iterations",
                "50",
                "--warmup",
                "0",
                "--f32",
            ],
        ),
        (
            ex.c_shared.join("sample"),
            vec![
                model,
                path_str(&npy),
                "--n",
                "2",
                "--steps",
                "1",
                "--threads",
                "1",
                "--log-density",
                path_str(&logp),
            ],
        ),
    ];
    // The reverse SDE of a score model.
    let score_npy = ex.dir.join("valgrind_score.npy");
    runs.push((
        ex.c_shared.join("sample"),
        vec![
            path_str(&ex.score_model),
            path_str(&score_npy),
            "--n",
            "2",
            "--solver",
            "em",
            "--steps",
            "1",
            "--threads",
            "1",
        ],
    ));
    match &ex.cpp {
        Ok(exe) => runs.push((exe.clone(), vec![model, "--threads", "1", "--steps", "1"])),
        Err(why) => println!("skipped: valgrind on the C++ example: {why}"),
    }
    for (program, args) in runs {
        let out = common::run_with_timeout(
            Command::new(&valgrind)
                .args([
                    "--error-exitcode=9",
                    "--leak-check=full",
                    "--errors-for-leak-kinds=definite,indirect",
                ])
                .arg(&program)
                .args(&args),
            VALGRIND_TIMEOUT,
        );
        assert!(
            out.status.success(),
            "valgrind {} {}: {}",
            program.display(),
            args.join(" "),
            common::describe_output(&out)
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        let summary = stderr
            .lines()
            .find(|l| l.contains("ERROR SUMMARY"))
            .unwrap_or("");
        println!(
            "valgrind {}: {summary}",
            program.file_name().unwrap_or_default().to_string_lossy()
        );
    }
}
