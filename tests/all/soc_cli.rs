//! NeuralSOC through the command-line tool: `socflow train` with `problem = "soc"`
//! (built-in and inline problems), `socflow simulate` of the exported model against
//! the library with the same seed, resumption from a mid-run checkpoint, config errors
//! that name the offending key, and the quick demo's SOC part.

use crate::common::{png_size, resume_ok, socflow, stderr, stdout, train, train_ok};

use std::path::Path;

use serde::Deserialize;
use socflow_runtime::artifact::Artifact;
use socflow_runtime::model::Model;
use socflow_trainer::autodiff::Cpu;
use socflow_trainer::checkpoint::{Checkpoint, Checkpointing};
use socflow_trainer::soc::reference::{closed_loop_cost, Lqr};
use socflow_trainer::soc::simulate::rollout_options;
use socflow_trainer::soc::{
    train_soc_checkpointed, ControlProblem, QuadraticProblem, SocConfig, TrainedSoc,
};

/// The number after `label` on the line that starts with it (up to a space or `±`).
fn figure(text: &str, label: &str) -> f64 {
    let line = text
        .lines()
        .find_map(|l| l.trim_start().strip_prefix(label))
        .unwrap_or_else(|| panic!("no line `{label}` in:\n{text}"));
    let v = line.split_whitespace().next().unwrap_or("");
    v.parse()
        .unwrap_or_else(|e| panic!("`{v}` after `{label}`: {e}"))
}

/// Two numbers `a ± b` after `label`.
fn figure_pm(text: &str, label: &str) -> (f64, f64) {
    let line = text
        .lines()
        .find_map(|l| l.trim_start().strip_prefix(label))
        .unwrap_or_else(|| panic!("no line `{label}` in:\n{text}"));
    let mut it = line.split_whitespace();
    let a = it.next().unwrap().parse().unwrap();
    assert_eq!(it.next(), Some("±"), "{line}");
    let b = it.next().unwrap().parse().unwrap();
    (a, b)
}

const LQR_CONFIG: &str = r#"
problem = "soc"
output = "lqr.safetensors"
checkpoint = "lqr.ckpt.safetensors"
checkpoint_every = 3

[soc]
m = 8
steps = 8
batch_size = 16
iterations = 6
validate_every = 3
validation_paths = 32

[soc_problem]
builtin = "lqr"
dim = 2
seed = 4
"#;

#[test]
fn train_a_builtin_lqr_then_simulate_matches_the_library() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("lqr.toml");
    std::fs::write(&cfg, LQR_CONFIG).unwrap();
    let out = dir.path().join("out");
    let o = train_ok(&cfg, &out);
    let text = stdout(&o);
    let err = stderr(&o);
    // Progress lines at each validation, with the closed-loop cost and Φ(0, z₀).
    assert!(err.contains("iteration 3/6"), "{err}");
    assert!(
        err.contains("validation cost") && err.contains("Φ(0,z₀)"),
        "{err}"
    );
    // The reference printed beside the learned value is Riccati's for the same LQR.
    let lqr = Lqr::standard(2, 4).unwrap();
    let riccati = lqr.solve().unwrap().value(0.0, &[0.5, 0.5]).unwrap();
    let printed = figure(&text, "reference Φ(0, x₀) (Riccati):");
    assert!((printed - riccati).abs() < 1e-6, "{printed} vs {riccati}");
    let discrete = lqr
        .solve_discrete(8)
        .unwrap()
        .value(0, &[0.5, 0.5])
        .unwrap();
    let printed = figure(
        &text,
        "optimum Φ(0, x₀) of the trainer's 8-step Euler–Maruyama problem (discrete Riccati):",
    );
    assert!((printed - discrete).abs() < 1e-6, "{printed} vs {discrete}");
    let learned = figure(&text, "learned Φ(0, x₀) (trainer):");
    let exported = figure(&text, "learned Φ(0, x₀) of the exported model (runtime):");
    assert!((learned - exported).abs() < 1e-6, "{learned} vs {exported}");
    assert!(
        figure(
            &text,
            "validation closed-loop cost (trainer, 8 Euler–Maruyama steps, 32 paths):"
        ) > 0.0
    );
    let model_path = out.join("lqr.safetensors");
    assert!(text.contains("lqr.safetensors"), "{text}");

    // The model records its problem; the library rolls out the same closed loop.
    let model = Model::<f64>::load(&model_path).unwrap();
    let json = model.artifact().card.provenance.details["soc_problem"].clone();
    let problem = QuadraticProblem::from_json(&json).unwrap();
    assert_eq!(problem.dim, 2);
    assert_eq!(problem.initial.mean(), &[0.5, 0.5]);
    let (steps, paths, seed) = (50, 300, 5);
    let ctl = model.controller().unwrap();
    let direct = ctl
        .simulate(&problem, &rollout_options(&problem, steps, paths, seed))
        .unwrap();
    let (mean, se) = direct.cost();
    let o = socflow(&[
        "simulate",
        model_path.to_str().unwrap(),
        "--steps",
        "50",
        "--paths",
        "300",
        "--seed",
        "5",
        "--reference",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let sim = stdout(&o);
    let (m, s) = figure_pm(&sim, "mean cost (running + terminal):");
    assert!(
        (m - mean).abs() < 1e-8 * (1.0 + mean.abs()),
        "{m} vs {mean}"
    );
    assert!((s - se).abs() < 1e-8, "{s} vs {se}");
    assert!(se > 0.0 && se < 0.1 * mean, "{mean} ± {se}");
    let phi = ctl.clone().value(0.0, &[0.5, 0.5]).unwrap();
    assert!((figure(&sim, "learned Φ(0, x₀):") - phi).abs() < 1e-6);
    assert!((figure(&sim, "reference Φ(0, x₀) (Riccati):") - riccati).abs() < 1e-6);
    // Riccati's feedback on the same Brownian paths, against the reference module's
    // own Monte Carlo (an independent loop on the same generator).
    let sol = lqr.solve().unwrap();
    let optimal = closed_loop_cost(
        &lqr,
        &[0.5, 0.5],
        |t, z, u| {
            u.copy_from_slice(&sol.control(t, z)?);
            Ok(())
        },
        steps,
        paths,
        seed,
    )
    .unwrap();
    let (om, os) = figure_pm(&sim, "mean cost of the Riccati feedback on the same paths:");
    assert!((om - optimal.mean).abs() < 1e-8, "{om} vs {}", optimal.mean);
    assert!(
        (os - optimal.std_err).abs() < 1e-8,
        "{os} vs {}",
        optimal.std_err
    );
    // The optimum is below a 6-iteration controller's cost, path by path on average.
    let (dm, ds) = figure_pm(&sim, "learned − Riccati, path by path:");
    assert!((dm - (mean - optimal.mean)).abs() < 1e-5, "{dm}");
    assert!(dm > 0.0 && ds > 0.0, "{dm} ± {ds}");

    // --sigma and --x0 override the problem's; other seeds give other paths.
    let o = socflow(&[
        "simulate",
        model_path.to_str().unwrap(),
        "--paths",
        "300",
        "--steps",
        "50",
        "--x0",
        "1,-1",
        "--sigma",
        "0",
        "--plot",
        out.join("lqr.png").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // One panel: the plane of the two coordinates.
    assert_eq!(png_size(&out.join("lqr.png")), (640, 640));
    let mut opts = rollout_options(&problem, steps, paths, 0);
    opts.x0 = vec![1.0, -1.0];
    opts.sigma = 0.0;
    let (mean0, se0) = ctl.simulate(&problem, &opts).unwrap().cost();
    let (m0, s0) = figure_pm(&stdout(&o), "mean cost (running + terminal):");
    assert!((m0 - mean0).abs() < 1e-8 * (1.0 + mean0), "{m0} vs {mean0}");
    // Without noise every path is the same.
    assert!(se0.abs() < 1e-12 && s0 == 0.0, "{se0} {s0}");
    let o = socflow(&["simulate", model_path.to_str().unwrap(), "--x0", "1,2,3"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--x0 has 3 values"), "{}", stderr(&o));
}

const INLINE_CONFIG: &str = r#"
problem = "soc"
checkpoint_every = 3

[soc]
m = 8
steps = 8
batch_size = 16
iterations = 6
validate_every = 2
validation_paths = 16
schedule = { type = "plateau", factor = 0.5, patience = 0, threshold = 0.0, cooldown = 0, min_lr = 0.0 }

# A double integrator steered to (1, 0): Ac = 0, so Riccati applies to z − c.
[soc_problem]
name = "double_integrator"
dim = 2
control_dim = 1
horizon = 1.0
sigma = 0.3
drift = { type = "linear", matrix = [0.0, 1.0, 0.0, 0.0] }
input = [0.0, 1.0]
control_cost = [0.5]
state_cost = { type = "constant", value = 0.1 }
terminal = { type = "quadratic", matrix = [4.0, 0.0, 0.0, 1.0], center = [1.0, 0.0] }
initial = { type = "gaussian", mean = [0.0, 0.0], std = [0.2, 0.2] }
"#;

#[derive(Deserialize)]
struct Tables {
    soc: SocConfig,
    soc_problem: QuadraticProblem,
}

/// The library's run of `config` on `problem` (as `socflow train` poses it), saving
/// its checkpoint after iteration `at` to `path`.
fn train_saving_at<P: ControlProblem<Cpu> + ?Sized>(
    problem: &P,
    config: &SocConfig,
    at: u64,
    path: &Path,
) -> TrainedSoc {
    let mut save = |c: &Checkpoint| {
        if c.iteration == at {
            c.save(path)?;
        }
        Ok(())
    };
    let mut ckpt = Checkpointing {
        every: at,
        resume: None,
        save: &mut save,
    };
    train_soc_checkpointed(problem, config, &mut ckpt, &mut |_| {}).unwrap()
}

/// Checks that the model files `name` of an uninterrupted run (in `full`) and a resumed
/// one (in `resumed`) hold bitwise the same potential, the library's `lib`; returns
/// both.
fn same_potentials(
    full: &Path,
    resumed: &Path,
    name: &str,
    lib: &TrainedSoc,
) -> (Artifact, Artifact) {
    let a = Artifact::load(full.join(name)).unwrap();
    let b = Artifact::load(resumed.join(name)).unwrap();
    assert_eq!(a.params, b.params);
    let socflow_runtime::artifact::Params::OtFlow(p) = &a.params else {
        panic!("a SOC model is an OT-Flow potential");
    };
    assert_eq!(p, &lib.params);
    (a, b)
}

#[test]
fn resume_from_a_mid_run_checkpoint_continues_bitwise() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("inline.toml");
    std::fs::write(&cfg, INLINE_CONFIG).unwrap();
    let full = dir.path().join("full");
    let o = train_ok(&cfg, &full);
    let text = stdout(&o);
    // A Gaussian start: the trainer's mean over the validation starts, and Riccati's
    // over the same starts.
    let learned = figure(
        &text,
        "learned mean Φ(0, z₀) over 16 validation starts (trainer):",
    );
    let reference = figure(
        &text,
        "reference mean Φ(0, z₀) over 16 validation starts (Riccati):",
    );
    assert!(learned.is_finite() && reference > 0.0, "{text}");
    assert!(stderr(&o).contains("checkpoint: "), "{}", stderr(&o));

    // The checkpoint after iteration 3 of the same run, from the library.
    let tables: Tables = toml::from_str(INLINE_CONFIG).unwrap();
    let ckpt_path = dir.path().join("after3.safetensors");
    let lib = train_saving_at(&tables.soc_problem, &tables.soc, 3, &ckpt_path);
    let at3 = Checkpoint::load(&ckpt_path).unwrap();
    assert_eq!(at3.iteration, 3);

    let resumed = dir.path().join("resumed");
    let o = resume_ok(&cfg, &resumed, &ckpt_path, 3);
    // Stored in f64: the resumed run's parameters are bitwise the uninterrupted run's
    // and the library's, and iterations 4–6 moved them.
    same_potentials(&full, &resumed, "model.safetensors", &lib);
    // The final checkpoints agree too, and differ from the one resumed from.
    let fa = Checkpoint::load(full.join("checkpoint.safetensors")).unwrap();
    let fb = Checkpoint::load(resumed.join("checkpoint.safetensors")).unwrap();
    assert_eq!((fa.iteration, fb.iteration), (6, 6));
    assert_ne!(fa.params.values, at3.params.values);
    assert_eq!(fa.params, fb.params);
    assert_eq!(fa.optimizer, fb.optimizer);
    assert_eq!(fa.scheduler, fb.scheduler);
    // The final validation is printed after a resume too.
    let again = figure(
        &stdout(&o),
        "learned mean Φ(0, z₀) over 16 validation starts (trainer):",
    );
    assert_eq!(again, learned);
}

#[test]
fn config_typos_and_bad_builtins_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str, text: &str| {
        let cfg = dir.path().join(name);
        std::fs::write(&cfg, text).unwrap();
        let o = train(&cfg, &dir.path().join("o"), None);
        assert!(!o.status.success(), "{name} should fail");
        let err = stderr(&o);
        assert!(err.starts_with("error: "), "{err}");
        assert!(!err.contains("panicked"), "{err}");
        err
    };
    let err = run(
        "soc_typo.toml",
        &LQR_CONFIG.replace("validate_every", "validate_evry"),
    );
    assert!(err.contains("unknown field `validate_evry`"), "{err}");
    assert!(err.contains("line 12"), "{err}");
    let err = run(
        "builtin.toml",
        &LQR_CONFIG.replace("\"lqr\"\n", "\"hjb1000\"\n"),
    );
    assert!(err.contains("hjb1000"), "{err}");
    assert!(
        err.contains("shifted_target"),
        "the valid names are listed: {err}"
    );
    let err = run(
        "builtin_key.toml",
        &LQR_CONFIG.replace("seed = 4", "sed = 4"),
    );
    assert!(err.contains("sed"), "{err}");
    let err = run(
        "inline_typo.toml",
        &INLINE_CONFIG.replace("control_cost", "control_costs"),
    );
    assert!(err.contains("control_costs"), "{err}");
    let err = run(
        "inline_size.toml",
        &INLINE_CONFIG.replace("input = [0.0, 1.0]", "input = [0.0, 1.0, 2.0]"),
    );
    assert!(err.contains("input matrix B"), "{err}");
    let err = run("dim.toml", &LQR_CONFIG.replace("dim = 2", "dim = 0"));
    assert!(err.contains("dim = 0"), "{err}");
    let err = run(
        "data.toml",
        &format!("{LQR_CONFIG}\n[data]\ntoy = \"moons\"\n"),
    );
    assert!(err.contains("[data]"), "{err}");
    let err = run(
        "no_problem.toml",
        &LQR_CONFIG[..LQR_CONFIG.find("[soc_problem]").unwrap()],
    );
    assert!(err.contains("[soc_problem]"), "{err}");
    let err = run(
        "other.toml",
        "problem = \"otflow\"\n[data]\ntoy = \"moons\"\n[soc]\nm = 4\n",
    );
    assert!(err.contains("[soc]"), "{err}");
    let err = run("bad_m.toml", &LQR_CONFIG.replace("m = 8", "m = 0"));
    assert!(err.contains("m = 0"), "{err}");
    let quad = QUADCOPTER_CONFIG.replace("SCALE", "0.001");
    let err = run("quad_typo.toml", &quad.replace("cost_scale", "cost_scal"));
    assert!(err.contains("unknown field `cost_scal`"), "{err}");
    assert!(
        err.contains("position_std"),
        "the valid keys are listed: {err}"
    );
    let err = run("quad_std.toml", &format!("{quad}position_std = -1\n"));
    assert!(err.contains("position_std = -1"), "{err}");
    let err = run("quad_scale.toml", &quad.replace("0.001", "0"));
    assert!(err.contains("cost_scale = 0"), "{err}");
    // A cost scale is the quadcopter's alone.
    let err = run("lqr_scale.toml", &format!("{LQR_CONFIG}cost_scale = 0.5\n"));
    assert!(err.contains("cost_scale"), "{err}");
}

#[test]
fn quick_demo_has_a_soc_part() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo");
    let o = socflow(&["demo", "--quick", "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("== NeuralSOC"), "{text}");
    // Riccati's Φ(0, z₀) of the demo problem, printed beside the learned one.
    let line = text
        .lines()
        .find(|l| l.contains("Φ(0, z₀): learned"))
        .unwrap_or_else(|| panic!("{text}"));
    let after = |word: &str| -> f64 {
        let rest = &line[line.find(word).unwrap_or_else(|| panic!("{line}")) + word.len()..];
        let v = rest.split([' ', ')', ',']).next().unwrap();
        v.parse().unwrap_or_else(|e| panic!("`{v}`: {e}"))
    };
    // Riccati's value of the demo problem, independently: Φ(0, x) = ½p(0)‖x‖² + c(0)
    // with ṗ = 0.2p + p² (−Ṗ = AᵀP + PA − P² for A = −0.1I + 0.5J, P = pI), p(2) = 10,
    // and −ċ = σ²p, so with q = 1/p: q̇ = −0.2q − 1, q(2) = 0.1.
    let (mut q, mut c, steps) = (0.1f64, 0.0f64, 200_000);
    let h = 2.0 / steps as f64;
    for _ in 0..steps {
        // Backward in time with RK2 (midpoint) on (q, c); error O(h²) ≈ 1e-10.
        let dq = |q: f64| 0.2 * q + 1.0; // −q̇ in backward time
        let qm = q + 0.5 * h * dq(q);
        c += h * 0.04 / qm;
        q += h * dq(qm);
    }
    let exact = 0.5 * 4.0 / q + c;
    let riccati = after("Riccati ");
    assert!((riccati - exact).abs() < 1e-4, "{line}: {exact}");
    let discrete = after("Euler–Maruyama problem: ");
    assert!(discrete > riccati && discrete < 1.1 * riccati, "{line}");
    let (d, s) = figure_pm(&text, "learned − Riccati, path by path:");
    assert!(d.is_finite() && s > 0.0, "{text}");
    let model = Model::<f64>::load(out.join("neuralsoc.safetensors")).unwrap();
    assert_eq!(model.dim(), 2);
    assert!(model
        .artifact()
        .card
        .provenance
        .details
        .contains_key("soc_problem"));
    png_size(&out.join("neuralsoc_trajectories.png"));
}

#[test]
fn simulate_rolls_out_a_quadcopter_model_under_its_own_dynamics() {
    use socflow_trainer::autodiff::{Cpu, Graph};
    use socflow_trainer::soc::{ControlProblem, QuadcopterProblem, SocObjective, TrainedSoc};
    // An untrained Φ_θ for the quadcopter (its initialization matches g on average),
    // exported with the problem recorded, as the quadcopter example does.
    let problem = QuadcopterProblem::neural_soc();
    let config = SocConfig {
        m: 8,
        steps: 4,
        batch_size: 4,
        iterations: 1,
        ..SocConfig::default()
    };
    let params = SocObjective::new(&problem, &config)
        .unwrap()
        .initial_params(&mut Graph::new(Cpu::new()))
        .unwrap();
    let trained = TrainedSoc {
        config,
        params,
        costs: Vec::new(),
        validation: Vec::new(),
    };
    let art = trained
        .to_artifact(
            &problem as &dyn ControlProblem<Cpu>,
            Some(&problem.to_json().unwrap()),
        )
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("quad.safetensors");
    art.save(&path, socflow_runtime::artifact::StorageDtype::F64)
        .unwrap();
    let model = Model::<f64>::load(&path).unwrap();
    let direct = model
        .controller()
        .unwrap()
        .simulate(&problem, &problem.rollout_options(20, 16, 9))
        .unwrap();
    let (mean, se) = direct.cost();
    let o = socflow(&[
        "simulate",
        path.to_str().unwrap(),
        "--steps",
        "20",
        "--paths",
        "16",
        "--seed",
        "9",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("on quadcopter"), "{text}");
    let (m, s) = figure_pm(&text, "mean cost (running + terminal):");
    assert!(
        (m - mean).abs() < 1e-8 * (1.0 + mean.abs()),
        "{m} vs {mean}"
    );
    assert!((s - se).abs() < 1e-8 * (1.0 + se), "{s} vs {se}");
    assert!(!text.contains("reference"), "{text}");
    // No reference answer for the quadcopter.
    let o = socflow(&["simulate", path.to_str().unwrap(), "--reference"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no reference answer"), "{}", stderr(&o));
}

/// A short quadcopter run (`cost_scale` is substituted).
const QUADCOPTER_CONFIG: &str = r#"
problem = "soc"
output = "quad.safetensors"
checkpoint_every = 3

[soc]
m = 8
steps = 20
batch_size = 16
iterations = 6
optimizer = { lr = 0.005, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0, decoupled = false }
clip_norm = 100.0
weights = { control = 1.0, hjb = 0.0, terminal = 0.01, terminal_gradient = 0.001, bsde = 0.05 }
validate_every = 3
validation_paths = 64

[soc_problem]
builtin = "quadcopter"
cost_scale = SCALE
"#;

#[test]
fn train_a_quadcopter_then_simulate_reports_the_problems_units_and_plots() {
    use socflow_runtime::artifact::ControlLaw;
    use socflow_runtime::npy::read_npy_f64;
    use socflow_trainer::soc::QuadcopterProblem;
    let problem = QuadcopterProblem::neural_soc();
    let dir = tempfile::tempdir().unwrap();
    for (scale, text) in [(0.001, "0.001"), (0.01, "0.01")] {
        let cfg = dir.path().join(format!("quad_{text}.toml"));
        std::fs::write(&cfg, QUADCOPTER_CONFIG.replace("SCALE", text)).unwrap();
        let out = dir.path().join(format!("out_{text}"));
        let o = train_ok(&cfg, &out);
        let err = stderr(&o);
        assert!(err.contains("soc: quadcopter (d = 12, k = 4"), "{err}");
        assert!(
            err.contains(&format!("costs × {text} for training")),
            "{err}"
        );
        let train = stdout(&o);
        let validation = figure(
            &train,
            "validation closed-loop cost (trainer, 20 Euler–Maruyama steps, 64 paths):",
        );
        let exported = figure(&train, "learned Φ(0, x₀) of the exported model (runtime):");

        // The model records the issue's problem in its own units, the scale, and the
        // training problem's law: r·scale with ∇Φ_θ ≈ scale·∇Φ gives the same u*.
        let model_path = out.join("quad.safetensors");
        let model = Model::<f64>::load(&model_path).unwrap();
        let details = &model.artifact().card.provenance.details;
        let recorded = QuadcopterProblem::from_json(&details["soc_problem"]).unwrap();
        assert_eq!(recorded, problem);
        assert_eq!(details["cost_scale"].parse::<f64>().unwrap(), scale);
        let Some(ControlLaw::Quadcopter(law)) = &model.artifact().card.control_law else {
            panic!("the quadcopter model carries its control law");
        };
        assert!(
            (law.control_weight - 2.0 * scale).abs() < 1e-15,
            "{}",
            law.control_weight
        );
        let ctl = model.controller().unwrap();
        let phi = ctl.clone().value(0.0, &problem.start).unwrap() / scale;
        assert!(
            (exported - phi).abs() < 1e-6 * phi.abs(),
            "{exported} vs {phi}"
        );

        let finals = out.join("finals.npy");
        let png = out.join("paths.png");
        let o = socflow(&[
            "simulate",
            model_path.to_str().unwrap(),
            "--steps",
            "20",
            "--paths",
            "256",
            "--seed",
            "3",
            "-o",
            finals.to_str().unwrap(),
            "--plot",
            png.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let sim = stdout(&o);
        let (mean, se) = figure_pm(&sim, "mean cost (running + terminal):");
        // The runtime's roll-out of the issue's problem, from the library.
        let direct = ctl
            .simulate(&problem, &problem.rollout_options(20, 256, 3))
            .unwrap()
            .cost();
        assert!(
            (mean - direct.0).abs() < 1e-8 * direct.0,
            "{mean} vs {direct:?}"
        );
        assert!(
            (se - direct.1).abs() < 1e-8 * direct.0,
            "{se} vs {direct:?}"
        );
        // The trainer's validation (other noise, the training problem's costs divided
        // by the scale) estimates the same closed loop: a scale applied wrongly on
        // either side, or the law's r, would put them orders of magnitude apart.
        assert!(
            (mean / validation - 1.0).abs() < 0.1,
            "simulate {mean} ± {se}, trainer {validation}"
        );
        assert!(mean > 10_000.0 && se < 0.05 * mean, "{mean} ± {se}");
        // g(z(T)) = 2500‖z(T) − z_target‖² on the final states written, and
        // ∫L ds = ∫(2 + ‖u‖²)ds ≥ 2: the issue's units.
        let (shape, z) = read_npy_f64(&finals).unwrap();
        assert_eq!(shape, vec![256, 12]);
        let g = z
            .chunks_exact(12)
            .map(|z| {
                let sq: f64 = z
                    .iter()
                    .zip(&problem.target)
                    .map(|(a, b)| (a - b).powi(2))
                    .sum();
                2500.0 * sq
            })
            .sum::<f64>()
            / 256.0;
        let line = sim
            .lines()
            .find(|l| l.contains("mean running cost ∫L ds:"))
            .unwrap();
        let after = |label: &str| -> f64 {
            let rest = &line[line.find(label).unwrap() + label.len()..];
            rest.trim()
                .trim_end_matches(',')
                .split([',', ' '])
                .next()
                .unwrap()
                .parse()
                .unwrap()
        };
        let (running, terminal) = (
            after("mean running cost ∫L ds:"),
            after("mean terminal cost g(z(T)):"),
        );
        assert!((terminal - g).abs() < 1e-5 * g, "{terminal} vs {g}");
        assert!(running > 2.0, "{running}");
        assert!((running + terminal - mean).abs() < 1e-5 * mean, "{line}");
        let printed_phi = figure(&sim, "learned Φ(0, x₀):");
        assert!(
            (printed_phi - phi).abs() < 1e-6 * phi.abs(),
            "{printed_phi} vs {phi}"
        );
        // Two panels: the ground track and the altitude.
        assert_eq!(png_size(&png), (1200, 600));
        assert!(sim.contains("plot: "), "{sim}");
    }
}

#[test]
fn quadcopter_resume_from_a_mid_run_checkpoint_continues_bitwise() {
    use socflow_trainer::soc::QuadcopterProblem;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}position_std = 0.5\n",
        QUADCOPTER_CONFIG.replace("SCALE", "0.001")
    );
    let cfg = dir.path().join("quad.toml");
    std::fs::write(&cfg, &text).unwrap();
    let full = dir.path().join("full");
    let o = train_ok(&cfg, &full);
    assert!(
        stderr(&o).contains("starts spread by 0.5 in position"),
        "{}",
        stderr(&o)
    );
    // Spread starts: the trainer's mean over the validation starts.
    let learned = figure(
        &stdout(&o),
        "learned mean Φ(0, z₀) over 64 validation starts (trainer):",
    );

    // The library on the problem the config poses, its costs times 0.001: the
    // checkpoint after iteration 3, and the parameters after 6.
    #[derive(Deserialize)]
    struct Soc {
        soc: SocConfig,
    }
    let soc = toml::from_str::<Soc>(&text).unwrap().soc;
    let training = QuadcopterProblem::neural_soc_spread(0.5)
        .with_cost_scale(0.001)
        .unwrap();
    let ckpt_path = dir.path().join("after3.safetensors");
    let lib = train_saving_at(&training, &soc, 3, &ckpt_path);

    let resumed = dir.path().join("resumed");
    let o = resume_ok(&cfg, &resumed, &ckpt_path, 3);
    let (a, b) = same_potentials(&full, &resumed, "quad.safetensors", &lib);
    assert_eq!(a.card.control_law, b.card.control_law);
    let again = figure(
        &stdout(&o),
        "learned mean Φ(0, z₀) over 64 validation starts (trainer):",
    );
    assert_eq!(again, learned);
    // The trainer's own figure, in its units, times 1/0.001.
    let v = lib.validation.last().unwrap().initial_value / 0.001;
    assert!((learned - v).abs() < 1e-6 * v.abs(), "{learned} vs {v}");
}
