//! NeuralSOC: the loss's gradient against finite differences of the discrete objective
//! (every term, PMP and Brownian sampling), the problem family's closed forms, export
//! to the runtime controller, and bad configs.

use socflow_runtime::artifact::StorageDtype;
use socflow_runtime::model::Model;
use socflow_trainer::autodiff::{Cpu, Graph};
use socflow_trainer::otflow::init_params;
use socflow_trainer::soc::{
    train_soc, ControlProblem, InitialDistribution, LossWeights, QuadraticProblem, Sampling,
    SocConfig, SocObjective, StateCost,
};

/// A small LQR: d = 2, k = 2, a stable A, R not diagonal, noise 0.4, Gaussian z(0).
fn small_lqr() -> QuadraticProblem {
    let mut p = QuadraticProblem::linear_quadratic(
        vec![-0.5, 0.3, -0.2, -0.4],
        vec![1.0, 0.2, 0.0, 0.8],
        vec![1.5, 0.3, 0.3, 0.9],
        vec![1.0, 0.1, 0.1, 0.6],
        vec![2.0, 0.0, 0.0, 1.0],
        0.4,
        1.0,
        vec![0.8, -0.5],
    )
    .unwrap();
    p.initial = InitialDistribution::Gaussian {
        mean: vec![0.8, -0.5],
        std: vec![0.3, 0.2],
    };
    p
}

fn small_config(sampling: Sampling) -> SocConfig {
    SocConfig {
        m: 5,
        n_th: 3,
        steps: 6,
        batch_size: 4,
        iterations: 1,
        seed: 3,
        sampling,
        weights: LossWeights {
            control: 1.0,
            hjb: 0.7,
            terminal: 0.5,
            terminal_gradient: 0.3,
            bsde: 2.0,
        },
        ..SocConfig::default()
    }
}

/// Perturbs the initialization so no parameter (w, c) sits at an exact zero.
fn params(p: &QuadraticProblem, cfg: &SocConfig) -> socflow_runtime::nn::OtFlowParams {
    let mut q = init_params(p.dim, cfg.m, cfg.n_th, cfg.seed).unwrap();
    let mut s = 0.1f64;
    let mut bump = |v: &mut f64| {
        s = (s * 7.13 + 0.37) % 1.0;
        *v += 0.3 * (s - 0.5);
    };
    q.w.iter_mut().for_each(&mut bump);
    q.c_weight.iter_mut().for_each(&mut bump);
    q.a.iter_mut().for_each(&mut bump);
    bump(&mut q.c_bias);
    q
}

#[test]
fn loss_gradient_matches_finite_differences() {
    let problem = small_lqr();
    for sampling in [Sampling::Pmp, Sampling::Brownian] {
        let cfg = small_config(sampling);
        let obj = SocObjective::new(&problem, &cfg).unwrap();
        let p = params(&problem, &cfg);
        let mut g = Graph::new(Cpu::new());
        let (costs, grad) = obj.evaluate(&mut g, &p, 4, 10, sampling, true).unwrap();
        let grad = grad.unwrap();
        assert!(costs.hjb > 0.0 && costs.bsde > 0.0 && costs.terminal_gradient > 0.0);

        let flat = socflow_trainer::otflow::to_param_set(&p).unwrap().values;
        let loss_at = |vals: &[Vec<f64>]| -> f64 {
            let q = rebuild(&p, vals);
            let mut g = Graph::new(Cpu::new());
            obj.costs(&mut g, &q, 4, 10, sampling).unwrap().loss
        };
        let mut worst: f64 = 0.0;
        let scale = grad.iter().flatten().fold(0.0f64, |m, v| m.max(v.abs()));
        for (k, arr) in flat.iter().enumerate() {
            for e in 0..arr.len() {
                let h = 1e-5;
                let mut plus = flat.clone();
                plus[k][e] += h;
                let mut minus = flat.clone();
                minus[k][e] -= h;
                let fd = (loss_at(&plus) - loss_at(&minus)) / (2.0 * h);
                let ad = grad[k][e];
                let err = (ad - fd).abs() / ad.abs().max(fd.abs()).max(1e-3 * scale);
                worst = worst.max(err);
            }
        }
        eprintln!(
            "{sampling:?}: loss {:.4}, worst rel err {worst:.2e}",
            costs.loss
        );
        // Central differences with h = 1e-5 on a loss with |·| terms: 1e-6 is their
        // truncation and rounding floor here (no kink is crossed at these points).
        assert!(worst < 1e-6, "{sampling:?}: gradient rel err {worst:e}");
    }
}

fn rebuild(
    like: &socflow_runtime::nn::OtFlowParams,
    vals: &[Vec<f64>],
) -> socflow_runtime::nn::OtFlowParams {
    let n = like.n_th;
    let mut q = like.clone();
    q.k = vals[..n].to_vec();
    q.b = vals[n..2 * n].to_vec();
    q.w = vals[2 * n].clone();
    q.a = vals[2 * n + 1].clone();
    q.c_weight = vals[2 * n + 2].clone();
    q.c_bias = vals[2 * n + 3][0];
    q
}

#[test]
fn quadratic_family_closed_forms() {
    // u* = −R⁻¹Bᵀp maximizes H(s, z, −p, u) = −pᵀ(a + Bu) − ½uᵀRu − Q: the Hamiltonian
    // at u* exceeds it at perturbed controls, and equals −pᵀa + ½pᵀBR⁻¹Bᵀp − Q.
    let problem = small_lqr();
    let mut g = Graph::new(Cpu::new());
    let dt = socflow_trainer::autodiff::DType::F64;
    let z = g
        .leaf_f64(3, 2, &[0.3, -0.2, 1.0, 0.5, -0.7, 0.1], dt, false)
        .unwrap();
    let p = g
        .leaf_f64(3, 2, &[0.5, 1.2, -0.4, 0.3, 0.9, -1.1], dt, false)
        .unwrap();
    let t = g.leaf_f64(1, 1, &[0.2], dt, false).unwrap();
    let u = problem.optimal_control(&mut g, t, z, p).unwrap();
    let q = g.neg(p).unwrap();
    let hv = problem.hamiltonian(&mut g, t, z, q, u).unwrap();
    let h_star = g.to_f64(hv).unwrap();
    let uv = g.to_f64(u).unwrap();
    // Closed form.
    let (zv, pv) = (
        [0.3, -0.2, 1.0, 0.5, -0.7, 0.1],
        [0.5, 1.2, -0.4, 0.3, 0.9, -1.1],
    );
    let a = [-0.5, 0.3, -0.2, -0.4];
    let b = [1.0, 0.2, 0.0, 0.8];
    let r = [1.5, 0.3, 0.3, 0.9];
    let qm = [1.0, 0.1, 0.1, 0.6];
    let det = r[0] * r[3] - r[1] * r[2];
    let rinv = [r[3] / det, -r[1] / det, -r[2] / det, r[0] / det];
    for i in 0..3 {
        let (zi, pi) = (&zv[2 * i..2 * i + 2], &pv[2 * i..2 * i + 2]);
        let az = [a[0] * zi[0] + a[1] * zi[1], a[2] * zi[0] + a[3] * zi[1]];
        let btp = [b[0] * pi[0] + b[2] * pi[1], b[1] * pi[0] + b[3] * pi[1]];
        let u_cf = [
            -(rinv[0] * btp[0] + rinv[1] * btp[1]),
            -(rinv[2] * btp[0] + rinv[3] * btp[1]),
        ];
        assert!((uv[2 * i] - u_cf[0]).abs() < 1e-12 && (uv[2 * i + 1] - u_cf[1]).abs() < 1e-12);
        let quad = btp[0] * (rinv[0] * btp[0] + rinv[1] * btp[1])
            + btp[1] * (rinv[2] * btp[0] + rinv[3] * btp[1]);
        let qz = 0.5
            * (zi[0] * (qm[0] * zi[0] + qm[1] * zi[1]) + zi[1] * (qm[2] * zi[0] + qm[3] * zi[1]));
        let h_cf = -(pi[0] * az[0] + pi[1] * az[1]) + 0.5 * quad - qz;
        assert!((h_star[i] - h_cf).abs() < 1e-12, "{} vs {h_cf}", h_star[i]);
    }
    // Any other control gives a smaller Hamiltonian.
    for delta in [[0.1, 0.0], [0.0, -0.2], [0.3, 0.3]] {
        let pert: Vec<f64> = uv
            .chunks(2)
            .flat_map(|c| [c[0] + delta[0], c[1] + delta[1]])
            .collect();
        let up = g.leaf_f64(3, 2, &pert, dt, false).unwrap();
        let hv = problem.hamiltonian(&mut g, t, z, q, up).unwrap();
        let hp = g.to_f64(hv).unwrap();
        for i in 0..3 {
            assert!(hp[i] < h_star[i], "perturbed control beats u*");
        }
    }
}

#[test]
fn problems_round_trip_through_json_and_reject_bad_input() {
    for p in [
        small_lqr(),
        QuadraticProblem::hjb100(),
        QuadraticProblem::shifted_target(1000.0),
    ] {
        let j = p.to_json().unwrap();
        assert_eq!(QuadraticProblem::from_json(&j).unwrap(), p);
    }
    let j = small_lqr().to_json().unwrap();
    let typo = j.replacen("\"sigma\"", "\"sigmaa\"", 1);
    let e = QuadraticProblem::from_json(&typo).unwrap_err().to_string();
    assert!(e.contains("sigmaa"), "{e}");
    let mut bad = small_lqr();
    bad.control_cost = vec![1.0, 2.0, 2.0, 1.0]; // indefinite
    assert!(bad.validate().is_err());
    let mut bad = small_lqr();
    bad.input.pop();
    assert!(bad.validate().is_err());
    let mut bad = small_lqr();
    bad.state_cost = StateCost::Constant { value: f64::NAN };
    assert!(bad.validate().is_err());

    let mut cfg = small_config(Sampling::Pmp);
    cfg.weights = LossWeights {
        control: 0.0,
        hjb: 0.0,
        terminal: 0.0,
        terminal_gradient: 0.0,
        bsde: 0.0,
    };
    assert!(cfg.validate().is_err());
    let mut cfg = small_config(Sampling::Pmp);
    cfg.steps = 0;
    assert!(cfg.validate().is_err());
    let j = small_config(Sampling::Pmp).to_json().unwrap();
    assert!(SocConfig::from_json(&j.replacen("\"steps\"", "\"stepz\"", 1)).is_err());
}

#[test]
fn exported_controller_agrees_with_the_trainer() {
    // A few training steps, export, and the runtime's Controller: u = −M∇Φ equals the
    // trainer's u* = −R⁻¹Bᵀ∇Φ_θ, and Φ the trainer's Φ_θ.
    let problem = small_lqr();
    let mut cfg = small_config(Sampling::Pmp);
    cfg.iterations = 5;
    cfg.validation_paths = 8;
    let trained = train_soc(&problem, &cfg, &mut |_| {}).unwrap();
    assert_eq!(trained.costs.len(), 5);
    let art = trained
        .to_artifact(
            &problem as &dyn ControlProblem<Cpu>,
            Some(&problem.to_json().unwrap()),
        )
        .unwrap();
    assert_eq!(art.card.control_dim, Some(2));
    let bytes = art.to_bytes(StorageDtype::F64).unwrap();
    let model = Model::<f64>::from_bytes(&bytes).unwrap();
    let mut ctl = model.controller().unwrap();

    let mut g = Graph::new(Cpu::new());
    let dt = socflow_trainer::autodiff::DType::F64;
    let vars =
        socflow_trainer::autodiff::otflow::OtFlowVars::new(&mut g, &trained.params, dt, false)
            .unwrap();
    let states = [[0.3, -0.2, 0.1], [1.0, 0.5, 0.6], [-0.7, 0.1, 0.95]];
    for s in states {
        let sv = g.leaf_f64(1, 3, &s, dt, false).unwrap();
        let out = socflow_trainer::autodiff::otflow::potential(&mut g, &vars, sv, false).unwrap();
        let gx = out.grad_x(&mut g).unwrap();
        let t = g.leaf_f64(1, 1, &[s[2]], dt, false).unwrap();
        let z = g.leaf_f64(1, 2, &s[..2], dt, false).unwrap();
        let u = problem.optimal_control(&mut g, t, z, gx).unwrap();
        let u = g.to_f64(u).unwrap();
        let phi = g.to_f64(out.phi).unwrap()[0];
        let mut ur = [0.0; 2];
        ctl.control(s[2], &s[..2], &mut ur).unwrap();
        let vr = ctl.value(s[2], &s[..2]).unwrap();
        for k in 0..2 {
            assert!(
                (ur[k] - u[k]).abs() <= 1e-10 * u[k].abs().max(1.0),
                "{ur:?} vs {u:?}"
            );
        }
        assert!((vr - phi).abs() <= 1e-10 * phi.abs().max(1.0));
    }
}

/// Relative errors (Φ, u) of a controller against the Riccati solution along optimal
/// trajectories (Riccati feedback, Euler–Maruyama with 100 steps, 16 paths from the
/// training distribution on their own noise), every 10th step.
fn riccati_errors(
    ctl: &mut socflow_runtime::controller::Controller<f64>,
    problem: &QuadraticProblem,
    sol: &socflow_trainer::soc::reference::LqrSolution,
) -> (f64, f64) {
    use socflow_trainer::soc::evaluate::{errors_along_optimal_paths, PathOptions};
    let d = problem.dim;
    let gen = socflow_runtime::brownian::Brownian::new(99);
    let starts = (0..16)
        .map(|p| {
            let mut z = vec![0.0; d];
            gen.stream_normals(socflow_runtime::brownian::Stream(9), p, 0, &mut z)
                .unwrap();
            z.iter().map(|v| 0.5 + 0.5 * v).collect()
        })
        .collect();
    let drift = |z: &[f64], u: &[f64]| -> socflow_trainer::Result<Vec<f64>> {
        {
            let mut f = vec![0.0; z.len()];
            socflow_runtime::controller::Dynamics::<f64>::drift(problem, 0.0, z, u, &mut f)?;
            Ok(f)
        }
    };
    let reference = |t: f64, z: &[f64]| -> socflow_trainer::Result<(f64, Vec<f64>)> {
        Ok((sol.value(t, z)?, sol.control(t, z)?))
    };
    let mut learned = |t: f64, z: &[f64]| -> socflow_trainer::Result<(f64, Vec<f64>)> {
        let mut u = vec![0.0; d];
        ctl.control(t, z, &mut u)?;
        Ok((ctl.value(t, z)?, u))
    };
    let opts = PathOptions {
        starts,
        horizon: problem.horizon,
        steps: 100,
        every: 10,
        sigma: problem.sigma,
        seed: 99,
    };
    let e = errors_along_optimal_paths(&drift, &reference, &mut learned, &opts).unwrap();
    (e.value, e.control)
}

/// The learned controller against the Riccati solution of a 10-D LQR along optimal
/// trajectories, at the goal: relative errors of Φ and of u under 2%. The HJB
/// residual carries it: squared (its gradient shrinks with the residual, where the
/// absolute value's does not: 5% on u after 3000–10000 iterations, then a plateau),
/// weight 100, with the terminal gradient at weight 10 and no BSDE term. It fits the
/// continuous HJB equation, so 20 steps suffice although the 20-step discrete optimum
/// is itself 2.1% (Φ) and 3.2% (u) from Riccati. 8000 iterations of 32 paths at width
/// 32, the last half averaged: Φ 0.26%, u 1.49% (seed 1: 0.21%, 1.37%; 6000
/// iterations: 2.1% on u), about 55 s on 2 cores in release.
#[test]
fn lqr_value_and_control_match_riccati() {
    use socflow_trainer::soc::reference::Lqr;
    use socflow_trainer::soc::{Averaging, Residual};
    let d = 10;
    let lqr = Lqr::standard(d, 5).unwrap();
    let sol = lqr.solve().unwrap();
    let initial = InitialDistribution::Gaussian {
        mean: vec![0.5; d],
        std: vec![0.5; d],
    };
    let problem = QuadraticProblem::from_lqr(&lqr, initial).unwrap();
    let iterations = 8000;
    let cfg = SocConfig {
        m: 32,
        steps: 20,
        batch_size: 32,
        iterations,
        optimizer: socflow_trainer::optim::AdamConfig::adam(0.01),
        schedule: socflow_trainer::optim::Schedule::Step {
            every: iterations / 3,
            factor: 0.3,
        },
        weights: LossWeights {
            control: 1.0,
            hjb: 100.0,
            terminal: 10.0,
            terminal_gradient: 10.0,
            bsde: 0.0,
        },
        hjb_residual: Residual::Squared,
        averaging: Some(Averaging {
            decay: 0.995,
            start: iterations / 2,
        }),
        validate_every: 0,
        validation_paths: 64,
        ..SocConfig::default()
    };
    let controller = |params: &socflow_runtime::nn::OtFlowParams| {
        let trained = socflow_trainer::soc::TrainedSoc {
            config: cfg.clone(),
            params: params.clone(),
            costs: Vec::new(),
            validation: Vec::new(),
        };
        let art = trained
            .to_artifact(&problem as &dyn ControlProblem<Cpu>, None)
            .unwrap();
        let model = Model::<f64>::from_bytes(&art.to_bytes(StorageDtype::F64).unwrap()).unwrap();
        model.controller().unwrap()
    };
    let obj = SocObjective::new(&problem, &cfg).unwrap();
    let init = obj.initial_params(&mut Graph::new(Cpu::new())).unwrap();
    let (ev0, eu0) = riccati_errors(&mut controller(&init), &problem, &sol);

    let start = std::time::Instant::now();
    let trained = train_soc(&problem, &cfg, &mut |_| {}).unwrap();
    let (ev, eu) = riccati_errors(&mut controller(&trained.params), &problem, &sol);
    eprintln!(
        "LQR d = {d}: relative error of Φ {ev:.2e} (untrained {ev0:.2e}), of u {eu:.2e} \
         (untrained {eu0:.2e}), {:.1} s of training",
        start.elapsed().as_secs_f64()
    );
    assert!(ev < 0.02, "value error {ev} (untrained {ev0})");
    assert!(eu < 0.02, "control error {eu} (untrained {eu0})");
}

/// The 100-D HJB benchmark (Han, Jentzen and E) against Cole–Hopf, at the issue's
/// goal: the learned Φ(0, 0) within 1e-3 of 4.590162 (the 20-step discrete optimum is
/// 4.590676, 1.1e-4 above), and the closed-loop cost of the learned feedback on
/// validation paths within 1% of it. 1000 iterations with the last 500 averaged
/// (without averaging Φ(0, 0) swings by ±3e-3 between iterations from SGD noise).
#[test]
fn hjb100_value_matches_cole_hopf() {
    use socflow_trainer::soc::reference::ColeHopf;
    use socflow_trainer::soc::Averaging;
    let exact = ColeHopf::hjb100().value(0.0, &[0.0; 100]).unwrap();
    assert!((exact - 4.590162).abs() < 1e-6);
    let problem = QuadraticProblem::hjb100();
    let cfg = SocConfig {
        iterations: 1000,
        schedule: socflow_trainer::optim::Schedule::Step {
            every: 333,
            factor: 0.3,
        },
        weights: LossWeights {
            bsde: 100.0,
            ..LossWeights::default()
        },
        averaging: Some(Averaging {
            decay: 0.99,
            start: 500,
        }),
        validate_every: 0,
        validation_paths: 512,
        ..SocConfig::default()
    };
    let trained = train_soc(&problem, &cfg, &mut |_| {}).unwrap();
    let v = trained.validation.last().unwrap();
    let (ev, ec) = (
        (v.initial_value - exact).abs() / exact,
        (v.costs.cost - exact).abs() / exact,
    );
    eprintln!(
        "HJB-100: Φ(0,0) {:.5} (rel err {ev:.2e}), closed-loop cost {:.5} (rel err {ec:.2e}); \
         Cole–Hopf {exact:.6}",
        v.initial_value, v.costs.cost
    );
    assert!(ev < 1e-3, "Φ(0,0) rel err {ev}");
    assert!(ec < 0.01, "closed-loop cost rel err {ec}");
}

/// Parameter averaging: each checkpoint's average is δ·(previous average) + (1 − δ)·
/// (its iterate), starting at the iterate after step `start + 1`; the trained model is
/// the final average, and a run resumed from a mid-run checkpoint ends bitwise equal.
#[test]
fn averaging_is_the_ema_of_the_iterates_and_resumes_bitwise() {
    use socflow_trainer::checkpoint::{Checkpoint, Checkpointing};
    use socflow_trainer::soc::{train_soc_checkpointed, Averaging};
    let p = small_lqr();
    let decay = 0.75;
    let cfg = SocConfig {
        iterations: 6,
        validate_every: 0,
        averaging: Some(Averaging { decay, start: 2 }),
        ..small_config(Sampling::Pmp)
    };
    let mut saved: Vec<Checkpoint> = Vec::new();
    let mut save = |c: &Checkpoint| {
        saved.push(c.clone());
        Ok(())
    };
    let mut ck = Checkpointing {
        every: 1,
        resume: None,
        save: &mut save,
    };
    let full = train_soc_checkpointed(&p, &cfg, &mut ck, &mut |_| {}).unwrap();
    assert_eq!(saved.len(), 6);
    for c in &saved[..2] {
        assert!(c.averaged.is_none(), "no average before `start`");
    }
    let avg = |c: &Checkpoint| c.averaged.clone().unwrap();
    assert_eq!(
        avg(&saved[2]),
        saved[2].params.values,
        "the average starts at θ₃"
    );
    for k in 3..6 {
        let (prev, cur) = (avg(&saved[k - 1]), &saved[k]);
        for ((a, b), theta) in avg(cur).iter().zip(&prev).zip(&cur.params.values) {
            for ((x, y), t) in a.iter().zip(b).zip(theta) {
                assert_eq!(x.to_bits(), (decay * y + (1.0 - decay) * t).to_bits());
            }
        }
        assert_ne!(avg(cur), cur.params.values, "the average lags the iterate");
    }
    let flat = |q: &socflow_runtime::nn::OtFlowParams| {
        socflow_trainer::otflow::to_param_set(q).unwrap().values
    };
    assert_eq!(
        flat(&full.params),
        avg(&saved[5]),
        "the model is the average"
    );
    // Resume from iteration 4 (inside the averaging window): same bits.
    let mut save2 = |_: &Checkpoint| Ok(());
    let mut ck2 = Checkpointing {
        every: 0,
        resume: Some(saved[3].clone()),
        save: &mut save2,
    };
    let resumed = train_soc_checkpointed(&p, &cfg, &mut ck2, &mut |_| {}).unwrap();
    assert_eq!(flat(&resumed.params), flat(&full.params));
    // A checkpoint without its average cannot resume an averaging run.
    let mut stripped = saved[3].clone();
    stripped.averaged = None;
    let mut ck3 = Checkpointing {
        every: 0,
        resume: Some(stripped),
        save: &mut save2,
    };
    assert!(train_soc_checkpointed(&p, &cfg, &mut ck3, &mut |_| {}).is_err());
    // Bad settings are errors.
    for bad in [
        Averaging {
            decay: 1.0,
            start: 0,
        },
        Averaging {
            decay: f64::NAN,
            start: 0,
        },
        Averaging {
            decay: 0.5,
            start: 6,
        },
    ] {
        let c = SocConfig {
            averaging: Some(bad),
            ..cfg.clone()
        };
        assert!(c.validate().is_err(), "{bad:?}");
    }
}

/// `with_cost_scale(1/K)`: the problem with every cost divided by K has value Φ/K and the
/// same optimal control. Φ_θ/K on the scaled problem drives the same paths as Φ_θ on
/// the original (u* = −(R/K)⁻¹Bᵀ∇Φ_θ/K), so every cost term is the original's / K.
#[test]
fn cost_scaling_divides_every_cost_and_keeps_the_paths() {
    use socflow_trainer::otflow::scale_potential;
    let k = 250.0;
    for problem in [small_lqr(), QuadraticProblem::shifted_target(1000.0)] {
        let scaled = problem.with_cost_scale(1.0 / k).unwrap();
        let cfg = SocConfig {
            weights: LossWeights {
                control: 1.0,
                hjb: if problem.dim <= 2 { 0.7 } else { 0.0 },
                terminal: 0.5,
                terminal_gradient: 0.3,
                bsde: 2.0,
            },
            m: 6,
            ..small_config(Sampling::Pmp)
        };
        let theta = params(&problem, &cfg);
        let theta_k = scale_potential(&theta, k).unwrap();
        let mut g = Graph::new(Cpu::new());
        let a = SocObjective::new(&problem, &cfg)
            .unwrap()
            .costs(&mut g, &theta, 8, 0, Sampling::Pmp)
            .unwrap();
        let b = SocObjective::new(&scaled, &cfg)
            .unwrap()
            .costs(&mut g, &theta_k, 8, 0, Sampling::Pmp)
            .unwrap();
        // The gradient match is √(‖∇Φ − ∇g‖² + 1e-12): the floor is not scaled, so
        // that term is homogeneous only to ~1e-12/(2‖·‖²) ≈ 4e-8 relative here.
        for (what, x, y, tol) in [
            ("cost", a.cost, b.cost, 1e-11),
            ("running", a.running, b.running, 1e-11),
            ("hjb", a.hjb, b.hjb, 1e-11),
            ("terminal", a.terminal, b.terminal, 1e-11),
            ("gradient", a.terminal_gradient, b.terminal_gradient, 1e-6),
            ("bsde", a.bsde, b.bsde, 1e-11),
        ] {
            assert!(
                (x / k - y).abs() <= tol * (x / k).abs().max(1e-300),
                "{}: {what} {x}/K vs {y}",
                problem.name
            );
        }
        assert!(a.cost > 0.0 && a.terminal > 0.0 && a.bsde > 0.0);
    }
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        assert!(small_lqr().with_cost_scale(bad).is_err(), "{bad}");
    }
}
