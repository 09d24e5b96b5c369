//! The C library as C programs use it, after `scripts/install-c` installed it into a
//! prefix under the target directory:
//!
//! - `ffi/tests/c/test_abi.c`, built with pkg-config's flags once against
//!   libsocflow.a and once against libsocflow.so, checks every error path and
//!   compares results with the values the runtime's Rust API computes here (written
//!   to a directory the program reads, with the model files); and once more, the
//!   shared build with `--quick`, under valgrind memcheck;
//! - the installed tree: soname and links, the header, pkg-config's version and
//!   flags, and a moved prefix;
//! - the CMake package: `find_package(socflow 0.1 REQUIRED)` with the targets
//!   `socflow::socflow` and `socflow::socflow_static`, from a moved prefix.
//!
//! Without gcc or pkg-config (or cmake, or valgrind, for those checks) a test prints
//! `skipped: <reason>` and passes; CI has them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::*;
use socflow_runtime::artifact::{Artifact, ModelKind, Normalization};
use socflow_runtime::controller::{Dynamics, Integrator, SimulateOptions};
use socflow_runtime::model::Model;
use socflow_runtime::ode::{OdeOptions, OdeSolver};
use socflow_runtime::sampler::{Sampler, SamplerOptions};
use socflow_runtime::sde::{SdeOptions, SdeScheme};
use socflow_runtime::vpsde::VpSampling;
use socflow_testkit::Rng;

/// Sizes test_abi.c assumes (its MAP_D, MAP_U, PLAIN_D, MLP_D).
const MAP_D: usize = 4;
const MAP_U: usize = 2;
const PLAIN_D: usize = 3;
const MLP_D: usize = 2;

/// The C program may take this long (threads hammer one controller; a deadlock
/// would otherwise hang the suite).
const RUN_TIMEOUT: Duration = Duration::from_secs(180);

/// The dynamics test_abi.c passes as C callbacks, with the same arithmetic in the
/// same order: f_i = a_i x_i + Σ_j B_ij u_j + 0.1 t, L = Σ_j ½u_j² + Σ_i ¼x_i²,
/// g = Σ_i x_i².
struct TestDynamics {
    a: Vec<f64>,
    b: Vec<f64>,
    d: usize,
    du: usize,
}

impl Dynamics<f64> for TestDynamics {
    fn state_dim(&self) -> usize {
        self.d
    }
    fn control_dim(&self) -> usize {
        self.du
    }
    fn drift(&self, t: f64, x: &[f64], u: &[f64], out: &mut [f64]) -> socflow_runtime::Result<()> {
        let rows = self.b.chunks_exact(self.du);
        for (((o, a), xi), row) in out.iter_mut().zip(&self.a).zip(x).zip(rows) {
            let mut s = a * xi;
            for (bij, uj) in row.iter().zip(u) {
                s += bij * uj;
            }
            *o = s + 0.1 * t;
        }
        Ok(())
    }
    fn running_cost(&self, _t: f64, x: &[f64], u: &[f64]) -> socflow_runtime::Result<f64> {
        let mut s = 0.0;
        for v in u {
            s += 0.5 * v * v;
        }
        for v in x {
            s += 0.25 * v * v;
        }
        Ok(s)
    }
    fn terminal_cost(&self, x: &[f64]) -> socflow_runtime::Result<f64> {
        let mut s = 0.0;
        for v in x {
            s += v * v;
        }
        Ok(s)
    }
}

/// Records a roll-out's options (`prefix.x0`, `prefix.params` = [t0, t1, steps,
/// sigma, paths, seed]) and results (`.final`, `.cost` = running + terminal,
/// `.traj`).
fn put_rollout(
    e: &mut Expected,
    prefix: &str,
    ctl: &socflow_runtime::controller::Controller<f64>,
    dynamics: &dyn Dynamics<f64>,
    o: &SimulateOptions<f64>,
) {
    let r = ctl.simulate(dynamics, o).expect("Rust roll-out");
    e.put(&format!("{prefix}.x0"), &o.x0);
    e.put(
        &format!("{prefix}.params"),
        &[
            o.t0,
            o.t1,
            o.steps as f64,
            o.sigma,
            o.paths as f64,
            o.seed as f64,
        ],
    );
    e.put(&format!("{prefix}.final"), &r.finals);
    let costs: Vec<f64> = r
        .running_cost
        .iter()
        .zip(&r.terminal_cost)
        .map(|(a, b)| a + b)
        .collect();
    e.put(&format!("{prefix}.cost"), &costs);
    e.put(
        &format!("{prefix}.traj"),
        r.trajectories.as_deref().expect("kept trajectories"),
    );
}

/// A sampler case as test_abi.c builds it through the C API: the solver's C code,
/// steps (fixed-step solvers) or tolerances (Dopri5), seed, log-densities, n samples.
struct SamplerCase {
    solver: u32,
    steps: usize,
    rtol: f64,
    atol: f64,
    seed: u64,
    log_density: bool,
    n: usize,
}

/// Records `prefix.params` ([solver, steps, rtol, atol, seed, log_density, n]),
/// `prefix.x` and `prefix.logp`: the samples the runtime's sampler draws the way
/// the C sampler is documented to: for a flow, the prior N(0, I) at the model's t1
/// integrated to t0; for a score model, the probability-flow ODE (ODE solvers) or
/// the reverse SDE (solvers 4 and 5, Euler–Maruyama and stochastic Heun) from t1 down
/// to the VP-SDE's ε; the card's normalization applied.
fn put_samples(e: &mut Expected, prefix: &str, model: &Model<f64>, c: &SamplerCase) {
    let ode = || {
        let solver = [
            OdeSolver::Euler,
            OdeSolver::Heun,
            OdeSolver::Rk4,
            OdeSolver::Dopri5,
        ][c.solver as usize];
        if solver == OdeSolver::Dopri5 {
            OdeOptions::adaptive(c.rtol, c.atol)
        } else {
            OdeOptions::fixed(solver, c.steps)
        }
    };
    let sampler = if model.kind() == ModelKind::Score {
        let vp = model.vpsde().expect("a score model");
        let how = match c.solver {
            4 => VpSampling::ReverseSde(SdeOptions::new(SdeScheme::EulerMaruyama, c.steps)),
            5 => VpSampling::ReverseSde(SdeOptions::new(SdeScheme::StochasticHeun, c.steps)),
            _ => VpSampling::ProbabilityFlow(ode()),
        };
        let mut so = vp.sampler_options(how, c.seed);
        so.log_density = c.log_density;
        vp.sampler(so).expect("sampler")
    } else {
        let mut so = SamplerOptions::ode(ode(), c.seed);
        so.log_density = c.log_density;
        so.normalization = model.artifact().card.normalization.clone();
        let (t0, t1) = model.time_interval();
        Sampler::new(model.field().expect("a flow"), t1, t0, so).expect("sampler")
    };
    let s = sampler.sample(c.n, 0).expect("Rust samples");
    e.put(
        &format!("{prefix}.params"),
        &[
            f64::from(c.solver),
            c.steps as f64,
            c.rtol,
            c.atol,
            c.seed as f64,
            f64::from(u8::from(c.log_density)),
            c.n as f64,
        ],
    );
    e.put(&format!("{prefix}.x"), &s.x);
    if let Some(l) = &s.log_density {
        e.put(&format!("{prefix}.logp"), l);
    }
}

/// Writes the models test_abi.c loads and `expected.txt` with the inputs and the
/// Rust API's results for them.
fn write_inputs(dir: &Path) {
    let map = otflow_model(MAP_D, Some(MAP_U), 11);
    let plain = otflow_model(PLAIN_D, None, 12)
        .with_normalization(
            Normalization::new(vec![0.5, -1.0, 2.0], vec![1.5, 0.5, 2.0]).expect("normalization"),
        )
        .expect("normalization fits");
    let velocity = mlp_model(MLP_D, ModelKind::Velocity, 13);
    let score = mlp_model(MLP_D, ModelKind::Score, 14);

    let mut e = Expected::new();
    e.put_ints(
        "version",
        &[
            env!("CARGO_PKG_VERSION_MAJOR"),
            env!("CARGO_PKG_VERSION_MINOR"),
            env!("CARGO_PKG_VERSION_PATCH"),
        ]
        .map(|v| v.parse().expect("a version number")),
    );
    let infos: [(&str, &Artifact, usize, u64); 4] = [
        ("map", &map, MAP_U, 0),
        ("plain", &plain, PLAIN_D, 0),
        ("velocity", &velocity, 0, 1),
        ("score", &score, 0, 2),
    ];
    for (name, artifact, control_dim, kind) in infos {
        write_model(artifact, &dir.join(format!("{name}.safetensors")));
        let [t0, t1] = artifact.card.time;
        e.put(
            &format!("info.{name}"),
            &[
                artifact.dim() as f64,
                control_dim as f64,
                kind as f64,
                t0,
                t1,
                artifact.parameter_count() as f64,
            ],
        );
    }
    // The C side loads the files: so does the Rust side.
    let load = |name: &str| {
        Model::<f64>::load(dir.join(format!("{name}.safetensors"))).expect("load a model")
    };
    let (map, plain, velocity, score) =
        (load("map"), load("plain"), load("velocity"), load("score"));

    // Controls and values of single states, and a batch of 100 (two worker chunks).
    let mut g = Rng(2024);
    let ts = [0.0, 0.2, 0.45, 0.7, 0.9, 1.0];
    let xs = g.vec_sym(ts.len() * MAP_D, 1.5);
    let mut ctl = map.controller().expect("controller");
    let mut us = vec![0.0; ts.len() * MAP_U];
    let mut values = Vec::new();
    for (k, t) in ts.iter().enumerate() {
        let x = &xs[k * MAP_D..(k + 1) * MAP_D];
        ctl.control(*t, x, &mut us[k * MAP_U..(k + 1) * MAP_U])
            .expect("control");
        values.push(ctl.value(*t, x).expect("value"));
    }
    e.put("map.t", &ts);
    e.put("map.x", &xs);
    e.put("map.u", &us);
    e.put("map.value", &values);
    let batch_t = 0.3;
    let bx = g.vec_sym(100 * MAP_D, 2.0);
    let mut bu = vec![0.0; 100 * MAP_U];
    ctl.control_batch(batch_t, &bx, &mut bu).expect("batch");
    e.put("map.batch.t", &[batch_t]);
    e.put("map.batch.x", &bx);
    e.put("map.batch.u", &bu);

    // Roll-outs: C dynamics over the 2 × 4 control map, and the default integrator.
    let dynamics = TestDynamics {
        a: g.vec_sym(MAP_D, 0.5),
        b: g.vec_sym(MAP_D * MAP_U, 1.0),
        d: MAP_D,
        du: MAP_U,
    };
    e.put("dyn.a", &dynamics.a);
    e.put("dyn.b", &dynamics.b);
    let o = SimulateOptions {
        x0: g.vec_sym(MAP_D, 1.0),
        t0: 0.0,
        t1: 1.0,
        steps: 20,
        sigma: 0.3,
        paths: 5,
        seed: 99,
        keep_trajectories: true,
    };
    put_rollout(&mut e, "map.sim", &ctl, &dynamics, &o);
    let integrator = Integrator {
        dim: PLAIN_D,
        gain: 1.0,
        control_weight: 1.0,
    };
    let o = SimulateOptions {
        x0: g.vec_sym(PLAIN_D, 1.0),
        t0: 0.1,
        t1: 0.9,
        steps: 16,
        sigma: 0.2,
        paths: 4,
        seed: 5,
        keep_trajectories: true,
    };
    let plain_ctl = plain.controller().expect("controller");
    put_rollout(&mut e, "plain.sim", &plain_ctl, &integrator, &o);

    // Samples: every solver, with log-densities; the defaults (RK4, 32 steps, seed 0).
    let case = |solver, steps, rtol, atol, seed, log_density, n| SamplerCase {
        solver,
        steps,
        rtol,
        atol,
        seed,
        log_density,
        n,
    };
    let cases = [
        ("plain.rk4", &plain, case(2, 16, 1e-5, 1e-5, 7, true, 16)),
        (
            "plain.default",
            &plain,
            case(2, 32, 1e-5, 1e-5, 0, false, 4),
        ),
        (
            "velocity.euler",
            &velocity,
            case(0, 12, 1e-5, 1e-5, 3, true, 8),
        ),
        (
            "velocity.heun",
            &velocity,
            case(1, 10, 1e-5, 1e-5, 4, true, 8),
        ),
        (
            "velocity.rk4",
            &velocity,
            case(2, 8, 1e-5, 1e-5, 5, true, 8),
        ),
        // Dopri5 ignores the step count: the C side passes the 0 recorded here.
        (
            "velocity.dopri5",
            &velocity,
            case(3, 0, 1e-7, 1e-9, 6, true, 8),
        ),
        // The score model (no vpsde entry: the default schedule): the probability-flow
        // ODE with log-densities, the reverse SDE by Euler–Maruyama and stochastic Heun.
        ("score.rk4", &score, case(2, 16, 1e-5, 1e-5, 8, true, 8)),
        ("score.em", &score, case(4, 40, 1e-5, 1e-5, 9, false, 12)),
        ("score.sheun", &score, case(5, 20, 1e-5, 1e-5, 10, false, 8)),
    ];
    for (prefix, model, c) in &cases {
        put_samples(&mut e, prefix, model, c);
    }

    e.write(&dir.join("expected.txt"));
}

/// The C compiler and pkg-config, or `None` after printing why the test is skipped.
fn tools_or_skip() -> Option<CTools> {
    match c_tools() {
        Ok(t) => Some(t),
        Err(reason) => {
            println!("skipped: {reason}");
            None
        }
    }
}

/// Builds test_abi.c against the installed library with `linkage` into `dir`, and
/// checks what the executable links.
fn build_test_abi(tools: &CTools, prefix: &Path, linkage: Linkage, dir: &Path) -> PathBuf {
    let exe = dir.join("test_abi");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/test_abi.c");
    let mut link = link_flags(tools, prefix, linkage);
    link.extend(["-pthread", "-lm"].map(String::from));
    compile(
        &tools.cc,
        &[&source],
        &exe,
        &[
            "-std=c99",
            "-pedantic",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-O1",
            "-g",
        ],
        &link,
    );
    let needed = needed_libraries(&exe);
    match linkage {
        Linkage::Shared => {
            assert!(
                needed.iter().any(|l| l == "libsocflow.so.0"),
                "the shared build needs libsocflow.so.0 (the soname), found {needed:?}"
            );
            assert!(
                !needed.iter().any(|l| l == "libsocflow.so"),
                "the shared build must not need the unversioned libsocflow.so: {needed:?}"
            );
            // And the loader finds it in the prefix (through the rpath).
            let ldd = run_ok(Command::new("ldd").arg(&exe).env_remove("LD_LIBRARY_PATH"));
            let ldd = String::from_utf8_lossy(&ldd.stdout);
            let line = ldd
                .lines()
                .find(|l| l.contains("libsocflow.so.0"))
                .unwrap_or_else(|| panic!("ldd does not list libsocflow.so.0:\n{ldd}"));
            let lib = prefix.join("lib/libsocflow.so.0");
            assert!(
                line.contains(&*lib.to_string_lossy()),
                "libsocflow.so.0 resolves to {line:?}, expected {}",
                lib.display()
            );
        }
        Linkage::Static => assert!(
            !needed.iter().any(|l| l.starts_with("libsocflow")),
            "the static build must not need a shared libsocflow: {needed:?}"
        ),
    }
    exe
}

/// Runs a test_abi build (under `wrapper`, e.g. valgrind, when given) on `dir` and
/// checks that every check passed.
fn run_test_abi(exe: &Path, dir: &Path, wrapper: &[&str], args: &[&str], what: &str) {
    let mut cmd = match wrapper.split_first() {
        Some((program, wrapper_args)) => {
            let mut c = Command::new(program);
            c.args(wrapper_args).arg(exe);
            c
        }
        None => Command::new(exe),
    };
    cmd.arg(dir).args(args).env_remove("LD_LIBRARY_PATH");
    let out = run_with_timeout(&mut cmd, RUN_TIMEOUT);
    print!("{}", String::from_utf8_lossy(&out.stdout));
    assert!(
        out.status.success(),
        "test_abi ({what}) failed: {}",
        describe_output(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("test_abi: all "),
        "test_abi ({what}) did not finish: {}",
        describe_output(&out)
    );
}

/// Builds test_abi.c with `linkage` and runs it on freshly written inputs.
fn check_test_abi(linkage: Linkage, name: &str) {
    let Some(tools) = tools_or_skip() else { return };
    let prefix = install();
    let dir = test_dir(name);
    write_inputs(&dir);
    let exe = build_test_abi(&tools, prefix, linkage, &dir);
    run_test_abi(&exe, &dir, &[], &[], &format!("{linkage:?}"));
    remove_dir(&dir);
}

#[test]
fn c_test_program_against_the_static_library() {
    check_test_abi(Linkage::Static, "c_abi_static");
}

#[test]
fn c_test_program_against_the_shared_library() {
    check_test_abi(Linkage::Shared, "c_abi_shared");
}

/// The error paths, results and threads under valgrind memcheck: no invalid access,
/// no use of uninitialized memory, no definite or indirect leak. `--quick` leaves out
/// the sampler results (slow under valgrind; the fast groups still draw samples).
#[test]
fn c_test_program_under_valgrind() {
    let Some(valgrind) = which("valgrind") else {
        println!("skipped: valgrind is not installed");
        return;
    };
    let Some(tools) = tools_or_skip() else { return };
    let prefix = install();
    let dir = test_dir("c_abi_valgrind");
    write_inputs(&dir);
    let exe = build_test_abi(&tools, prefix, Linkage::Shared, &dir);
    let valgrind = valgrind.to_string_lossy().into_owned();
    run_test_abi(
        &exe,
        &dir,
        &[
            &valgrind,
            "--quiet",
            "--error-exitcode=99",
            "--leak-check=full",
            "--errors-for-leak-kinds=definite,indirect",
            "--show-leak-kinds=definite,indirect",
        ],
        &["--quick"],
        "valgrind",
    );
    remove_dir(&dir);
}

/// Canonical form of a path that pkg-config printed after a flag (`-I…`, `-L…`).
fn flag_path(flags: &[String], flag: &str) -> PathBuf {
    let p = flags
        .iter()
        .find_map(|f| f.strip_prefix(flag))
        .unwrap_or_else(|| panic!("no {flag} in {flags:?}"));
    std::fs::canonicalize(p).unwrap_or_else(|e| panic!("{flag}{p}: {e}"))
}

/// Where the installed files are, that they are what the build made, and what
/// pkg-config says about them, in place and after the prefix moved.
#[test]
fn installed_tree_and_pkg_config() {
    let Some(tools) = tools_or_skip() else { return };
    let prefix = install();
    let lib = prefix.join("lib");
    let version = env!("CARGO_PKG_VERSION");
    let major = env!("CARGO_PKG_VERSION_MAJOR");

    // The header is the checked-in one; the shared library sits behind two links.
    let header = std::fs::read(prefix.join("include/socflow.h")).expect("installed header");
    let source = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("include/socflow.h"))
        .expect("checked-in header");
    assert!(
        header == source,
        "the installed header differs from ffi/include/socflow.h"
    );
    assert_eq!(
        std::fs::read_link(lib.join("libsocflow.so")).expect("libsocflow.so is a link"),
        PathBuf::from(format!("libsocflow.so.{major}"))
    );
    assert_eq!(
        std::fs::read_link(lib.join(format!("libsocflow.so.{major}")))
            .expect("libsocflow.so.MAJOR is a link"),
        PathBuf::from(format!("libsocflow.so.{version}"))
    );
    let real = lib.join(format!("libsocflow.so.{version}"));
    assert!(
        real.is_file() && !real.is_symlink(),
        "{} is the library",
        real.display()
    );
    assert!(
        lib.join("libsocflow.a").is_file(),
        "libsocflow.a is installed"
    );
    for f in ["socflowConfig.cmake", "socflowConfigVersion.cmake"] {
        assert!(
            lib.join("cmake/socflow").join(f).is_file(),
            "{f} is installed"
        );
    }
    if let Some(readelf) = which("readelf") {
        let out = run_ok(Command::new(readelf).arg("-d").arg(&real));
        let dynamic = String::from_utf8_lossy(&out.stdout);
        assert!(
            dynamic.contains(&format!("Library soname: [libsocflow.so.{major}]")),
            "soname of {}:\n{dynamic}",
            real.display()
        );
    }

    // pkg-config: version and flags.
    assert_eq!(pkg_config(&tools, prefix, &["--modversion"]), [version]);
    let cflags = pkg_config(&tools, prefix, &["--cflags"]);
    assert_eq!(
        flag_path(&cflags, "-I"),
        std::fs::canonicalize(prefix.join("include")).expect("include/")
    );
    let libs = pkg_config(&tools, prefix, &["--libs"]);
    assert_eq!(
        flag_path(&libs, "-L"),
        std::fs::canonicalize(&lib).expect("lib/")
    );
    assert!(libs.iter().any(|f| f == "-lsocflow"), "--libs: {libs:?}");
    assert!(
        !libs.iter().any(|f| f == "-ldl"),
        "the shared link needs no private libraries: {libs:?}"
    );
    let static_libs = pkg_config(&tools, prefix, &["--static", "--libs"]);
    for l in ["-lsocflow", "-lpthread", "-ldl", "-lm"] {
        assert!(
            static_libs.iter().any(|f| f == l),
            "--static --libs lacks {l}: {static_libs:?}"
        );
    }

    // A moved prefix: the flags follow it.
    let dir = test_dir("moved_prefix");
    let moved = dir.join("prefix");
    copy_tree(prefix, &moved);
    let cflags = pkg_config(&tools, &moved, &["--cflags"]);
    assert_eq!(
        flag_path(&cflags, "-I"),
        std::fs::canonicalize(moved.join("include")).expect("moved include/")
    );
    let libs = pkg_config(&tools, &moved, &["--libs"]);
    assert_eq!(
        flag_path(&libs, "-L"),
        std::fs::canonicalize(moved.join("lib")).expect("moved lib/")
    );
    remove_dir(&dir);
}

/// A program for the CMake check: the version agrees with the header, and the
/// control of one state through the C API (printed for the test to compare).
const CMAKE_MAIN: &str = r#"#include <socflow.h>
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv) {
    char want[32];
    struct socflow_model model;
    struct socflow_controller ctl;
    double x[4] = {0.25, -0.5, 0.75, 1.0}, u[2];
    enum socflow_status s;
    if (argc != 2) return 2;
    snprintf(want, sizeof want, "%d.%d.%d", SOCFLOW_VERSION_MAJOR, SOCFLOW_VERSION_MINOR,
             SOCFLOW_VERSION_PATCH);
    if (strcmp(socflow_version(), want) != 0) {
        fprintf(stderr, "library %s, header %s\n", socflow_version(), want);
        return 1;
    }
    if ((s = socflow_model_load(argv[1], &model)) != SOCFLOW_OK ||
        (s = socflow_controller_create(model, SOCFLOW_PRECISION_F64, &ctl)) != SOCFLOW_OK ||
        (s = socflow_controller_control(ctl, 0.5, x, 4, u, 2)) != SOCFLOW_OK ||
        (s = socflow_controller_destroy(ctl)) != SOCFLOW_OK ||
        (s = socflow_model_destroy(model)) != SOCFLOW_OK) {
        fprintf(stderr, "%s: %s\n", socflow_status_name(s), socflow_last_error());
        return 1;
    }
    printf("%s %.17g %.17g\n", socflow_version(), u[0], u[1]);
    return 0;
}
"#;

const CMAKE_LISTS: &str = r#"cmake_minimum_required(VERSION 3.10)
project(socflow_cmake_check C)

# SameMajorVersion: another major version, or a newer minor one, is not found.
find_package(socflow 1 QUIET)
if(socflow_FOUND)
  message(FATAL_ERROR "socflow ${socflow_VERSION} satisfied find_package(socflow 1)")
endif()
find_package(socflow 0.2 QUIET)
if(socflow_FOUND)
  message(FATAL_ERROR "socflow ${socflow_VERSION} satisfied find_package(socflow 0.2)")
endif()

find_package(socflow 0.1 REQUIRED)
message(STATUS "socflow ${socflow_VERSION} from ${socflow_DIR}")
if(NOT socflow_VERSION STREQUAL "@VERSION@")
  message(FATAL_ERROR "socflow_VERSION is ${socflow_VERSION}, expected @VERSION@")
endif()

add_executable(check_shared main.c)
target_link_libraries(check_shared PRIVATE socflow::socflow)
add_executable(check_static main.c)
target_link_libraries(check_static PRIVATE socflow::socflow_static)
"#;

/// `find_package(socflow)` from a moved prefix: both targets build and run and give
/// the Rust API's control.
#[test]
fn cmake_package() {
    let Some(cmake) = cmake() else {
        println!(
            "skipped: cmake is not installed (scripts/setup-python puts one in target/pyenv/bin)"
        );
        return;
    };
    let Some(tools) = tools_or_skip() else { return };
    if which("make").is_none() {
        println!("skipped: make is not installed (CMake's default generator needs it)");
        return;
    }
    let prefix = install();
    let dir = test_dir("cmake_package");
    let moved = dir.join("prefix");
    copy_tree(prefix, &moved);
    let project = dir.join("project");
    std::fs::create_dir_all(&project).expect("project dir");
    std::fs::write(project.join("main.c"), CMAKE_MAIN).expect("main.c");
    std::fs::write(
        project.join("CMakeLists.txt"),
        CMAKE_LISTS.replace("@VERSION@", env!("CARGO_PKG_VERSION")),
    )
    .expect("CMakeLists.txt");
    let model_path = dir.join("map.safetensors");
    write_model(&otflow_model(MAP_D, Some(MAP_U), 11), &model_path);

    let build = dir.join("build");
    run_ok(
        Command::new(&cmake)
            .arg("-S")
            .arg(&project)
            .arg("-B")
            .arg(&build)
            .arg(format!("-DCMAKE_PREFIX_PATH={}", moved.display()))
            .arg("-DCMAKE_BUILD_TYPE=Release")
            .env("CC", &tools.cc),
    );
    run_ok(Command::new(&cmake).arg("--build").arg(&build));

    let mut ctl = Model::<f64>::load(&model_path)
        .expect("model")
        .controller()
        .expect("controller");
    let mut u = [0.0; MAP_U];
    ctl.control(0.5, &[0.25, -0.5, 0.75, 1.0], &mut u)
        .expect("control");
    for (exe, shared) in [("check_shared", true), ("check_static", false)] {
        let exe = build.join(exe);
        let needed = needed_libraries(&exe);
        assert_eq!(
            needed.iter().any(|l| l == "libsocflow.so.0"),
            shared,
            "{}: needs {needed:?}",
            exe.display()
        );
        let out = run_with_timeout(
            Command::new(&exe)
                .arg(&model_path)
                .env_remove("LD_LIBRARY_PATH"),
            Duration::from_secs(60),
        );
        assert!(
            out.status.success(),
            "{}: {}",
            exe.display(),
            describe_output(&out)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let fields: Vec<&str> = text.split_whitespace().collect();
        assert_eq!(fields.len(), 3, "{}: {text}", exe.display());
        assert_eq!(fields[0], env!("CARGO_PKG_VERSION"));
        let got: Vec<f64> = fields[1..]
            .iter()
            .map(|v| v.parse().expect("a number"))
            .collect();
        assert_eq!(
            got,
            u,
            "{}: the control differs from the Rust API's",
            exe.display()
        );
    }
    remove_dir(&dir);
}
