//! The 100-D shifted target (MATH.md §5, x_ref = 3·1) in the original NeuralSOC code's
//! form (f = 2u, L = ‖u‖², terminal weight 1000): a short run against the original
//! code's trained policy and the exact 20-step optimum.

use socflow_trainer::optim::{AdamConfig, Schedule};
use socflow_trainer::soc::reference::ColeHopf;
use socflow_trainer::soc::{train_soc, LossWeights, QuadraticProblem, SocConfig};

/// The original NeuralSOC code's trained policy costs about 1,900 at 20 Euler–Maruyama
/// steps with PMP sampling (issue 4); the exact 20-step optimum is 511.7
/// (`soc::reference::discrete_optimum`, see soc_reference.rs), the continuous value
/// −401.9 (Cole–Hopf) and doing nothing ~6,130.
const ORIGINAL_POLICY_COST: f64 = 1900.0;
const DISCRETE_OPTIMUM_20: f64 = 511.7;

/// Iterations of the lecture-form run, and the goal for its control error.
const ITERATIONS_LECTURE: u64 = 600;
const CONTROL_BOUND_LECTURE: f64 = 0.05;

/// 400 iterations with the potential's quadratic part at full rank (101) and the
/// control objective leading: the closed-loop cost of the learned feedback on 512
/// validation paths (fixed noise) is already below the original's ~1,900 (the full
/// 2,000-iteration run of examples/configs/shifted_target.toml reaches ~690) and, as
/// any policy must, above the exact 20-step optimum.
#[test]
fn full_rank_beats_the_original_policy_at_20_steps() {
    let exact = ColeHopf::shifted_target(1000.0)
        .value(0.0, &[0.0; 100])
        .unwrap();
    assert!((exact + 401.882).abs() < 1e-2, "Cole–Hopf {exact}");
    let problem = QuadraticProblem::shifted_target(1000.0);
    let cfg = SocConfig {
        rank: Some(101),
        iterations: 400,
        optimizer: AdamConfig::adam(0.01),
        schedule: Schedule::Constant,
        weights: LossWeights {
            control: 1.0,
            hjb: 0.0,
            terminal: 0.1,
            terminal_gradient: 0.1,
            bsde: 1.0,
        },
        validate_every: 0,
        validation_paths: 512,
        ..SocConfig::default()
    };
    let trained = train_soc(&problem, &cfg, &mut |_| {}).unwrap();
    let (first, last) = (
        trained.validation.first().unwrap().costs.cost,
        trained.validation.last().unwrap().costs.cost,
    );
    eprintln!("shifted target (w = 1000): closed-loop cost {first:.1} → {last:.1} at 20 steps");
    assert!(first > 5000.0, "the initial policy barely moves: {first}");
    assert!(
        last < ORIGINAL_POLICY_COST && last > DISCRETE_OPTIMUM_20,
        "closed-loop cost {last}"
    );
}

/// The lecture's form (terminal weight 1, f = u, L = ½‖u‖²): the optimal control is
/// small (‖u*‖ ≈ 0.067 at the start) and Φ(0, 0) = 6.142472 lies barely below the cost of
/// doing nothing (6.1455 at 20 steps), so the test is the learned value and control
/// against Cole–Hopf along Cole–Hopf's optimal paths (8 paths, 100 steps, compared
/// every 10): the goal, u within 5%. What it takes (measured with
/// examples/neuralsoc.rs, 1,500 iterations): the quadratic part at full rank (u*
/// varies by ~±19% per coordinate across the paths' spread through an isotropic
/// Hessian 2I/(1 + ‖z − x_ref‖²), which rank 10 plus 64 ResNet units cannot hold in
/// 100-D: 7% error), a small start (init_scale 0.01: the random initial ∇Φ_θ is
/// otherwise larger than u* itself), the terminal-gradient weight leading (∇g
/// supervises ∇Φ exactly at T) and the last half of the iterates averaged (Adam's
/// steps are of the size of u*): 2.0% for u, 6e-5 for Φ along the paths.
#[test]
fn lecture_form_matches_cole_hopf_along_optimal_paths() {
    use socflow_runtime::artifact::StorageDtype;
    use socflow_runtime::model::Model;
    use socflow_trainer::autodiff::Cpu;
    use socflow_trainer::soc::evaluate::{errors_along_optimal_paths, PathOptions};
    use socflow_trainer::soc::{Averaging, ControlProblem};
    let problem = QuadraticProblem::shifted_target(1.0);
    let ch = ColeHopf::shifted_target(1.0);
    let exact = ch.value(0.0, &[0.0; 100]).unwrap();
    assert!((exact - 6.142472).abs() < 1e-5, "Cole–Hopf {exact}");
    let iterations = ITERATIONS_LECTURE;
    let cfg = SocConfig {
        rank: Some(101),
        init_scale: Some(0.01),
        iterations,
        schedule: Schedule::Step {
            every: iterations / 3,
            factor: 0.3,
        },
        weights: LossWeights {
            control: 1.0,
            hjb: 0.0,
            terminal: 10.0,
            terminal_gradient: 100.0,
            bsde: 50.0,
        },
        averaging: Some(Averaging {
            decay: 0.995,
            start: iterations / 2,
        }),
        validate_every: 0,
        validation_paths: 512,
        ..SocConfig::default()
    };
    let trained = train_soc(&problem, &cfg, &mut |_| {}).unwrap();
    let v = trained.validation.last().unwrap();
    let art = trained
        .to_artifact(&problem as &dyn ControlProblem<Cpu>, None)
        .unwrap();
    let model = Model::<f64>::from_bytes(&art.to_bytes(StorageDtype::F64).unwrap()).unwrap();
    let mut ctl = model.controller().unwrap();
    let opts = PathOptions {
        starts: vec![vec![0.0; 100]; 8],
        horizon: 1.0,
        steps: 100,
        every: 10,
        sigma: problem.sigma,
        seed: 99,
    };
    let drift = |_: &[f64], u: &[f64]| Ok(u.to_vec());
    let reference = |t: f64, z: &[f64]| Ok((ch.value(t, z)?, ch.control(t, z)?));
    let mut learned = |t: f64, z: &[f64]| {
        let mut u = vec![0.0; 100];
        ctl.control(t, z, &mut u)?;
        Ok((ctl.value(t, z)?, u))
    };
    let e = errors_along_optimal_paths(&drift, &reference, &mut learned, &opts).unwrap();
    let ev = (v.initial_value - exact).abs() / exact;
    eprintln!(
        "shifted target (w = 1): Φ(0,0) {:.6} (rel err {ev:.2e}), along optimal paths Φ \
         {:.2e}, u {:.2e}",
        v.initial_value, e.value, e.control
    );
    assert!(ev < 1e-3, "Φ(0,0) rel err {ev}");
    assert!(e.value < 2e-3, "Φ along optimal paths: {}", e.value);
    assert!(
        e.control < CONTROL_BOUND_LECTURE,
        "u along optimal paths: {}",
        e.control
    );
}
