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
