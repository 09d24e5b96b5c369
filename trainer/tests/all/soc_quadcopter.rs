//! The 12-D quadcopter (Onken et al. 2022) as a NeuralSOC problem: its graph maps
//! against the plain-f64 reference model at random states, their derivatives against
//! finite differences, the per-state runtime dynamics, the exported controller with its
//! state-dependent law, the runtime roll-out against the reference Monte Carlo on the
//! same noise, and a short training run against the uncontrolled cost.

// Index loops read several arrays in step, as the formulas are written.
#![allow(clippy::needless_range_loop)]

use socflow_runtime::artifact::{ControlLaw, StorageDtype};
use socflow_runtime::controller::{Controller, Dynamics};
use socflow_runtime::model::Model;
use socflow_testkit::Rng;
use socflow_trainer::autodiff::{check_gradients, CheckOptions, Cpu, DType, Graph, Tensor, Var};
use socflow_trainer::otflow::init_params;
use socflow_trainer::soc::reference::{closed_loop_cost, Quadcopter};
use socflow_trainer::soc::{
    train_soc, ControlProblem, LossWeights, QuadcopterProblem, SocConfig, TrainedSoc,
};

fn arr12(v: &[f64]) -> [f64; 12] {
    v.try_into().unwrap()
}

fn close(a: f64, b: f64, what: &str) {
    assert!(
        (a - b).abs() <= 1e-12 * (1.0 + b.abs()),
        "{what}: {a} vs {b} (diff {:e})",
        (a - b).abs()
    );
}

/// A problem with every setting off its default (r = 2 so the reference applies).
fn perturbed() -> QuadcopterProblem {
    let mut p = QuadcopterProblem::neural_soc();
    p.mass = 1.4;
    p.gravity = 9.5;
    p.sigma = 0.3;
    p.terminal_weight = 37.0;
    p.running_offset = 1.5;
    p.target = arr12(&Rng(77).vec_sym(12, 2.0));
    p
}

#[test]
fn graph_maps_match_the_reference_model() {
    let rows = 16;
    let mut v = Rng(1);
    for problem in [QuadcopterProblem::neural_soc(), perturbed()] {
        let reference = problem.reference();
        let z = v.vec_sym(rows * 12, 3.0);
        let u = v.vec_sym(rows * 4, 5.0);
        let p = v.vec_sym(rows * 12, 100.0);
        let mut g = Graph::new(Cpu::new());
        let dt = DType::F64;
        let t = g.leaf_f64(1, 1, &[0.3], dt, false).unwrap();
        let zv = g.leaf_f64(rows, 12, &z, dt, false).unwrap();
        let uv = g.leaf_f64(rows, 4, &u, dt, false).unwrap();
        let pv = g.leaf_f64(rows, 12, &p, dt, false).unwrap();
        let pr: &dyn ControlProblem<Cpu> = &problem;
        let f = pr.drift(&mut g, t, zv, uv).unwrap();
        let l = pr.running_cost(&mut g, t, zv, uv).unwrap();
        let gt = pr.terminal_cost(&mut g, zv).unwrap();
        let gg = pr.terminal_gradient(&mut g, zv).unwrap();
        let us = pr.optimal_control(&mut g, t, zv, pv).unwrap();
        let q = g.neg(pv).unwrap();
        let ham = pr.hamiltonian(&mut g, t, zv, q, us).unwrap();
        let [f, l, gt, gg, us, ham] = [f, l, gt, gg, us, ham].map(|x| g.to_f64(x).unwrap());
        for r in 0..rows {
            let zr = arr12(&z[r * 12..(r + 1) * 12]);
            let ur: [f64; 4] = u[r * 4..(r + 1) * 4].try_into().unwrap();
            let prow = arr12(&p[r * 12..(r + 1) * 12]);
            let want_f = reference.dynamics(&zr, &ur);
            for j in 0..12 {
                close(f[r * 12 + j], want_f[j], "drift");
            }
            close(l[r], reference.running_cost(&ur), "running cost");
            close(gt[r], reference.terminal_cost(&zr), "terminal cost");
            let want_gg = reference.terminal_gradient(&zr);
            for j in 0..12 {
                close(gg[r * 12 + j], want_gg[j], "terminal gradient");
            }
            let want_u = reference.optimal_control(&zr, &prow);
            for j in 0..4 {
                close(us[r * 4 + j], want_u[j], "optimal control");
            }
            // H(z, −p, u*) = −pᵀf(z, u*) − L(u*), from the reference's pieces.
            let fu = reference.dynamics(&zr, &want_u);
            let want_h = -prow.iter().zip(&fu).map(|(a, b)| a * b).sum::<f64>()
                - reference.running_cost(&want_u);
            assert!((ham[r] - want_h).abs() <= 1e-10 * (1.0 + want_h.abs()));
            // The per-state runtime dynamics agree too.
            let mut out = [0.0; 12];
            Dynamics::<f64>::drift(&problem, 0.3, &zr, &ur, &mut out).unwrap();
            for j in 0..12 {
                close(out[j], want_f[j], "runtime drift");
            }
            let lr = Dynamics::<f64>::running_cost(&problem, 0.3, &zr, &ur).unwrap();
            close(lr, reference.running_cost(&ur), "runtime running cost");
            let gr = Dynamics::<f64>::terminal_cost(&problem, &zr).unwrap();
            close(gr, reference.terminal_cost(&zr), "runtime terminal cost");
            // The runtime's law is the same u*.
            let mut ul = [0.0; 4];
            problem.law().unwrap().control(&zr, &prow, &mut ul).unwrap();
            for j in 0..4 {
                close(ul[j], want_u[j], "runtime law");
            }
        }
        // Real values, not zeros by accident.
        assert!(us.iter().all(|x| x.abs() > 1e-6) && f.iter().any(|x| x.abs() > 1.0));
    }
}

#[test]
fn control_weight_scales_the_control_and_its_cost() {
    // R = rI: u* = (2/r)·(the reference's r = 2 control), L = offset + (r/2)‖u‖².
    let mut problem = QuadcopterProblem::neural_soc();
    problem.control_weight = 5.0;
    let reference = Quadcopter::neural_soc();
    let mut v = Rng(4);
    let (z, p, u) = (v.vec_sym(12, 2.0), v.vec_sym(12, 30.0), v.vec_sym(4, 3.0));
    let mut g = Graph::new(Cpu::new());
    let dt = DType::F64;
    let t = g.leaf_f64(1, 1, &[0.0], dt, false).unwrap();
    let zv = g.leaf_f64(1, 12, &z, dt, false).unwrap();
    let pv = g.leaf_f64(1, 12, &p, dt, false).unwrap();
    let uv = g.leaf_f64(1, 4, &u, dt, false).unwrap();
    let us = ControlProblem::<Cpu>::optimal_control(&problem, &mut g, t, zv, pv).unwrap();
    let l = ControlProblem::<Cpu>::running_cost(&problem, &mut g, t, zv, uv).unwrap();
    let us = g.to_f64(us).unwrap();
    let want = reference.optimal_control(&arr12(&z), &arr12(&p));
    for j in 0..4 {
        close(us[j], 0.4 * want[j], "u* with r = 5");
    }
    let sq: f64 = u.iter().map(|x| x * x).sum();
    close(g.to_f64(l).unwrap()[0], 2.0 + 2.5 * sq, "L with r = 5");
}

/// Σ W ⊙ out for a fixed random W: a scalar whose gradient exercises every entry.
fn weighted(g: &mut Graph<Cpu>, out: Var, seed: u64) -> socflow_trainer::autodiff::Result<Var> {
    let s = g.shape(out)?;
    let w = Rng(seed).vec_sym(s.rows * s.cols, 1.0);
    let wt = Tensor::from_f64(g.backend(), s.rows, s.cols, &w, DType::F64)?;
    let wv = g.constant(wt);
    let prod = g.mul(out, wv)?;
    g.sum(prod)
}

#[test]
fn graph_maps_pass_the_gradient_check() {
    let problem = perturbed();
    let rows = 3;
    let mut v = Rng(21);
    let cpu = Cpu::new();
    let leaf =
        |n: usize, c: usize, x: Vec<f64>| Tensor::from_f64(&cpu, n, c, &x, DType::F64).unwrap();
    let z = leaf(rows, 12, v.vec_sym(rows * 12, 2.0));
    let u = leaf(rows, 4, v.vec_sym(rows * 4, 3.0));
    let p = leaf(rows, 12, v.vec_sym(rows * 12, 10.0));
    let opts = CheckOptions::default();
    let mut g = Graph::new(Cpu::new());
    type Map = fn(
        &QuadcopterProblem,
        &mut Graph<Cpu>,
        Var,
        Var,
        Var,
    ) -> socflow_trainer::autodiff::Result<Var>;
    let maps: [(&str, Map); 5] = [
        ("drift", |q, g, t, z, u| {
            ControlProblem::<Cpu>::drift(q, g, t, z, u)
        }),
        ("running cost", |q, g, t, z, u| {
            ControlProblem::<Cpu>::running_cost(q, g, t, z, u)
        }),
        ("terminal cost", |q, g, _t, z, _u| {
            ControlProblem::<Cpu>::terminal_cost(q, g, z)
        }),
        ("terminal gradient", |q, g, _t, z, _u| {
            ControlProblem::<Cpu>::terminal_gradient(q, g, z)
        }),
        ("hamiltonian at u*", |q, g, t, z, p| {
            let u = ControlProblem::<Cpu>::optimal_control(q, g, t, z, p)?;
            let neg = g.neg(p)?;
            ControlProblem::<Cpu>::hamiltonian(q, g, t, z, neg, u)
        }),
    ];
    for (i, (name, map)) in maps.iter().enumerate() {
        let second = if i == 4 { p.clone() } else { u.clone() };
        let rep = check_gradients(
            &mut g,
            &[z.clone(), second],
            |g, leaves| {
                let t = g.leaf_f64(1, 1, &[0.4], DType::F64, false)?;
                let out = map(&problem, g, t, leaves[0], leaves[1])?;
                weighted(g, out, 100 + i as u64)
            },
            &opts,
        )
        .unwrap();
        assert!(rep.max_rel_err < 1e-7, "{name}: {rep}");
        assert!(rep.checked > 0);
    }
    // u* itself (its Jacobian in z and p).
    let rep = check_gradients(
        &mut g,
        &[z, p],
        |g, leaves| {
            let t = g.leaf_f64(1, 1, &[0.4], DType::F64, false)?;
            let u = ControlProblem::<Cpu>::optimal_control(&problem, g, t, leaves[0], leaves[1])?;
            weighted(g, u, 7)
        },
        &opts,
    )
    .unwrap();
    assert!(rep.max_rel_err < 1e-7, "optimal control: {rep}");
}

#[test]
fn initial_states_point_and_spread() {
    let point = QuadcopterProblem::neural_soc();
    let z = ControlProblem::<Cpu>::initial_states(&point, 3, 5, 0).unwrap();
    for r in z.chunks_exact(12) {
        assert_eq!(r, &point.start);
    }
    let spread = QuadcopterProblem::neural_soc_spread(1.0);
    let n = 4000;
    let z = ControlProblem::<Cpu>::initial_states(&spread, n, 5, 0).unwrap();
    for j in 0..12 {
        let col: Vec<f64> = z.iter().skip(j).step_by(12).copied().collect();
        let mean = col.iter().sum::<f64>() / n as f64;
        let var = col.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        if j < 3 {
            // Standard errors 1/√4000 ≈ 0.016 and √(2/4000) ≈ 0.022.
            assert!((mean + 1.5).abs() < 0.07, "mean {mean}");
            assert!((var - 1.0).abs() < 0.1, "var {var}");
        } else {
            assert!(col.iter().all(|x| *x == 0.0));
        }
    }
    // A pure function of (seed, sample index).
    let later = ControlProblem::<Cpu>::initial_states(&spread, 2, 5, 10).unwrap();
    assert_eq!(later[..], z[10 * 12..12 * 12]);
    let other = ControlProblem::<Cpu>::initial_states(&spread, 2, 6, 10).unwrap();
    assert_ne!(later, other);
}

#[test]
fn config_round_trip_defaults_and_errors() {
    let p = QuadcopterProblem::neural_soc_spread(0.5);
    assert_eq!(
        QuadcopterProblem::from_json(&p.to_json().unwrap()).unwrap(),
        p
    );
    // Omitted keys are the issue's settings.
    let q = QuadcopterProblem::from_json(r#"{"sigma": 0.1}"#).unwrap();
    assert_eq!(q.sigma, 0.1);
    assert_eq!(q.terminal_weight, 2500.0);
    assert_eq!(q.start[0], -1.5);
    assert_eq!(q.target[2], 2.0);
    assert_eq!(q.control_weight, 2.0);
    let err = |text: &str| QuadcopterProblem::from_json(text).unwrap_err().to_string();
    assert!(err(r#"{"sigm": 0.1}"#).contains("sigm"));
    assert!(err(r#"{"mass": 0}"#).contains("mass"));
    assert!(err(r#"{"control_weight": -1}"#).contains("control_weight"));
    assert!(err(r#"{"sigma": -0.1}"#).contains("sigma"));
    assert!(
        err(r#"{"start": [1, 2]}"#).contains("start") || err(r#"{"start": [1, 2]}"#).contains("12")
    );
    let mut std = [0.0; 12];
    std[4] = -1.0;
    let bad = QuadcopterProblem {
        start_std: Some(std),
        ..QuadcopterProblem::neural_soc()
    };
    assert!(bad
        .validate()
        .unwrap_err()
        .to_string()
        .contains("start_std"));
    assert!(ControlProblem::<Cpu>::initial_states(&bad, 1, 0, 0).is_err());
}

/// Φ_θ at OT-Flow's initialization for the quadcopter, exported and loaded back.
fn exported(problem: &QuadcopterProblem, m: usize) -> (TrainedSoc, Model<f64>) {
    let mut params = init_params(12, m, 2, 9).unwrap();
    params.w.iter_mut().for_each(|w| *w *= 30.0);
    let trained = TrainedSoc {
        config: SocConfig::default(),
        params,
        costs: Vec::new(),
        validation: Vec::new(),
    };
    let art = trained
        .to_artifact(
            problem as &dyn ControlProblem<Cpu>,
            Some(&problem.to_json().unwrap()),
        )
        .unwrap();
    let bytes = art.to_bytes(StorageDtype::F64).unwrap();
    (trained, Model::from_bytes(&bytes).unwrap())
}

#[test]
fn export_carries_the_quadcopter_law() {
    let problem = perturbed();
    let (_, model) = exported(&problem, 8);
    let art = model.artifact();
    assert_eq!(art.card.format_version, 2);
    assert!(art.control_map.is_none() && art.card.control_dim.is_none());
    match art.control_law() {
        Some(ControlLaw::Quadcopter(l)) => {
            assert_eq!((l.mass, l.gravity, l.control_weight), (1.4, 9.5, 2.0));
        }
        other => panic!("expected the quadcopter law, got {other:?}"),
    }
    let mut ctl = model.controller().unwrap();
    assert_eq!(ctl.control_dim(), 4);
    let pot = model.potential().unwrap();
    let reference = problem.reference();
    let mut v = Rng(8);
    let (mut grad, mut scratch) = (vec![0.0; 12], vec![0.0; pot.scratch_len()]);
    for _ in 0..10 {
        let z = v.vec_sym(12, 2.0);
        let t = 0.5 + 0.5 * v.sym();
        pot.grad(t, &z, &mut grad, &mut scratch).unwrap();
        let want = reference.optimal_control(&arr12(&z), &arr12(&grad));
        let mut u = [0.0; 4];
        ctl.control(t, &z, &mut u).unwrap();
        for j in 0..4 {
            close(u[j], want[j], "deployed u*");
        }
        assert!(want.iter().all(|x| x.abs() > 1e-8), "{want:?}");
    }
}

#[test]
fn runtime_roll_out_matches_the_reference_monte_carlo() {
    // The same controller, the same Brownian increments: the runtime's Euler–Maruyama
    // roll-out with the problem as its Dynamics against the reference's closed loop.
    let problem = perturbed();
    let (_, model) = exported(&problem, 8);
    let ctl = model.controller().unwrap();
    let (steps, paths, seed) = (40, 16, 3);
    let roll = ctl
        .simulate(&problem, &problem.rollout_options(steps, paths, seed))
        .unwrap();
    let (mean, _) = roll.cost();
    let mut c2: Controller<f64> = model.controller().unwrap();
    let reference = problem.reference();
    let est = closed_loop_cost(
        &reference,
        &problem.start,
        |t, z, u| {
            c2.control(t, z, u)
                .map_err(|e| socflow_trainer::Error::InvalidArgument(e.to_string()))
        },
        steps,
        paths,
        seed,
    )
    .unwrap();
    eprintln!("runtime {mean} vs reference {}", est.mean);
    assert!(
        (mean - est.mean).abs() <= 1e-9 * est.mean.abs(),
        "runtime {mean} vs reference {}",
        est.mean
    );
}

#[test]
fn short_training_flies_toward_the_target() {
    // A few hundred small iterations on the problem with its costs scaled down by 1000
    // (the same optimal control) and the control objective leading the loss: the
    // deployed controller's closed-loop cost on the original problem (runtime roll-out,
    // 200 steps under its noise) falls far below the uncontrolled cost (u = 0: the
    // quadcopter drops) and the untrained controller's.
    let problem = QuadcopterProblem::neural_soc();
    let scale = 1000.0;
    let scaled = problem.with_cost_scale(1.0 / scale).unwrap();
    let config = SocConfig {
        m: 16,
        steps: 20,
        batch_size: 16,
        iterations: 300,
        validate_every: 0,
        validation_paths: 16,
        weights: LossWeights {
            control: 1.0,
            hjb: 0.0,
            terminal: 0.1,
            terminal_gradient: 0.01,
            bsde: 0.5,
        },
        seed: 1,
        ..SocConfig::default()
    };
    let start = std::time::Instant::now();
    let trained = train_soc(&scaled, &config, &mut |_| {}).unwrap();
    let secs = start.elapsed().as_secs_f64();
    let deployed = |trained: &TrainedSoc| {
        let art = trained
            .to_artifact(&scaled as &dyn ControlProblem<Cpu>, None)
            .unwrap();
        let model = Model::<f64>::from_artifact(art).unwrap();
        let opts = problem.rollout_options(200, 64, 11);
        let roll = model
            .controller()
            .unwrap()
            .simulate(&problem, &opts)
            .unwrap();
        roll.cost()
    };
    let (cost, se) = deployed(&trained);
    let untrained = TrainedSoc {
        params: socflow_trainer::soc::SocObjective::new(&scaled, &config)
            .unwrap()
            .initial_params(&mut Graph::new(Cpu::new()))
            .unwrap(),
        ..trained.clone()
    };
    let (first, _) = deployed(&untrained);
    let free = closed_loop_cost(
        &problem.reference(),
        &problem.start,
        |_, _, u| {
            u.fill(0.0);
            Ok(())
        },
        200,
        64,
        11,
    )
    .unwrap();
    eprintln!(
        "quadcopter: {} iterations in {secs:.1} s; closed-loop cost {cost:.0} ± {se:.0} \
         (uncontrolled {:.0}, untrained {first:.0})",
        config.iterations, free.mean
    );
    assert!(
        cost < 0.1 * free.mean,
        "{cost} vs uncontrolled {}",
        free.mean
    );
    assert!(cost < 0.25 * first, "{cost} vs untrained {first}");
}
