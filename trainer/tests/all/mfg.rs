//! The crowd-motion mean-field game (MATH.md §6): the objective's gradient against
//! central differences, the augmented state (log ρ along characteristics and every
//! running cost) against closed forms for a quadratic potential, dynamic OT between
//! equal-covariance Gaussians against its exact penalized optimum, and short trainings
//! showing the obstacle and the congestion at work.

use socflow_runtime::brownian::{Brownian, Stream};
use socflow_runtime::nn::OtFlowParams;
use socflow_trainer::autodiff::{Cpu, Graph};
use socflow_trainer::checkpoint::{Checkpoint, Checkpointing};
use socflow_trainer::dto::PrecisionPolicy;
use socflow_trainer::mfg::{
    train_crowd, train_crowd_checkpointed, CrowdConfig, CrowdCosts, CrowdObjective, CrowdProblem,
    CrowdWeights, Gaussian, Obstacle, TrainedCrowd,
};
use socflow_trainer::optim::{AdamConfig, Schedule};
use socflow_trainer::otflow::{init_params, Precision};

/// Test-only draws (a stream no library module uses).
const TEST_STREAM: Stream = Stream(902);

fn normals(n: usize, seed: u64) -> Vec<f64> {
    let mut v = vec![0.0; n];
    Brownian::new(seed)
        .stream_normals(TEST_STREAM, 0, 0, &mut v)
        .unwrap();
    v
}

/// Every weight non-zero, so that every term of J is in the gradient check.
fn all_terms_problem() -> CrowdProblem {
    let mut p = CrowdProblem::paper();
    p.rho0 = Gaussian {
        mean: vec![0.2, 1.5],
        var: vec![0.3, 0.4],
    };
    p.rho1 = Gaussian {
        mean: vec![-0.1, -1.5],
        var: vec![0.35, 0.25],
    };
    p.obstacles.push(Obstacle {
        shape: Gaussian {
            mean: vec![0.8, 0.3],
            var: vec![0.5, 0.7],
        },
        height: 5.0,
    });
    p.t_final = 1.3;
    p.weights = CrowdWeights {
        transport: 1.7,
        obstacle: 0.9,
        congestion: 3.0,
        entropy: 0.4,
        terminal: 2.5,
        hjb: 0.6,
        hjb_terminal: 0.8,
    };
    p
}

fn flat(p: &OtFlowParams) -> Vec<f64> {
    let mut v: Vec<f64> = p.k.iter().flatten().copied().collect();
    v.extend(p.b.iter().flatten());
    v.extend(&p.w);
    v.extend(&p.a);
    v.extend(&p.c_weight);
    v.push(p.c_bias);
    v
}

fn unflat(like: &OtFlowParams, v: &[f64]) -> OtFlowParams {
    let mut q = like.clone();
    let mut it = v.iter().copied();
    for k in q.k.iter_mut() {
        k.iter_mut().for_each(|x| *x = it.next().unwrap());
    }
    for b in q.b.iter_mut() {
        b.iter_mut().for_each(|x| *x = it.next().unwrap());
    }
    q.w.iter_mut().for_each(|x| *x = it.next().unwrap());
    q.a.iter_mut().for_each(|x| *x = it.next().unwrap());
    q.c_weight.iter_mut().for_each(|x| *x = it.next().unwrap());
    q.c_bias = it.next().unwrap();
    assert!(it.next().is_none());
    q
}

/// The gradient of J (every term weighted, three ResNet layers) through the RK4
/// adjoint and the terminal tape equals central differences of J in f64, entry by
/// entry, to 1e-6 relative (central differences with h = 1e-5 carry ~1e-10 truncation
/// and ~1e-11 round-off here; the objective's |·| terms are far from their kinks at
/// these parameters, which the check would otherwise expose as a mismatch).
#[test]
fn gradient_matches_central_differences() {
    let problem = all_terms_problem();
    let obj = CrowdObjective::new(problem.clone(), 3, PrecisionPolicy::f64()).unwrap();
    let mut p = init_params(2, 5, 3, 7).unwrap();
    // Move w, c and A off their initial values so that every block matters.
    let noise = normals(64, 3);
    p.w.iter_mut().zip(&noise).for_each(|(w, n)| *w += 0.3 * n);
    p.c_weight
        .iter_mut()
        .zip(&noise[20..])
        .for_each(|(c, n)| *c = 0.5 * n);
    p.c_bias = 0.3;
    let x = problem.rho0.sample(6, 11, TEST_STREAM, 1).unwrap();
    let mut g = Graph::new(Cpu::new());
    let (costs, grad) = obj.costs_and_gradient(&mut g, &p, &x).unwrap();
    for (name, v) in [
        ("transport", costs.transport),
        ("obstacle", costs.obstacle),
        ("congestion", costs.congestion),
        ("entropy", costs.entropy),
        ("terminal", costs.terminal),
        ("hjb", costs.hjb),
        ("hjb_terminal", costs.hjb_terminal),
    ] {
        assert!(
            v.abs() > 1e-3,
            "{name} = {v} does not take part in the check"
        );
    }
    let theta = flat(&p);
    let analytic = flat(&grad);
    let h = 1e-5;
    let mut worst = 0.0f64;
    for i in 0..theta.len() {
        let mut tp = theta.clone();
        tp[i] += h;
        let mut tm = theta.clone();
        tm[i] -= h;
        let jp = obj.costs(&mut g, &unflat(&p, &tp), &x).unwrap().j;
        let jm = obj.costs(&mut g, &unflat(&p, &tm), &x).unwrap().j;
        let fd = (jp - jm) / (2.0 * h);
        let err = (analytic[i] - fd).abs() / analytic[i].abs().max(1.0);
        worst = worst.max(err);
        assert!(
            err < 1e-6,
            "parameter {i}: adjoint {} vs central difference {fd}",
            analytic[i]
        );
    }
    eprintln!(
        "worst relative gradient error {worst:.2e} over {}",
        theta.len()
    );
}

/// A potential with w = 0 is the quadratic ½sᵀAᵀAs + cᵀs + c_b: with A diagonal,
/// each coordinate flows as dzₖ/dt = −(aₖ²zₖ + cₖ)/α_L, so
/// zₖ(t) = (xₖ + cₖ/aₖ²)e^{−λₖt} − cₖ/aₖ² with λₖ = aₖ²/α_L, and ρ_t is the Gaussian
/// with those means and variances vₖe^{−2λₖt}. Checked along every particle: the
/// positions, log ρ_t(z(x,t)) against that Gaussian's log-density (the exact pushed
/// density), and the running costs against their integrals:
/// c_L = Σ ¼λₖuₖ²(1 − e^{−2λₖT}), c_P = ρ₀(x)(e^{ΛT} − 1)/Λ (Λ = Σλₖ),
/// c_E = T·log ρ₀(x) + ΛT²/2, and c_Q and c_H by fine quadrature of Q and |r_HJB| along
/// the exact path. RK4 with 100 steps: global error ~T(λh)⁴/120 ≈ 3e-10, below the
/// tolerances, except for the kinked |r_HJB| (see there).
#[test]
fn log_density_along_characteristics_is_exact_for_a_quadratic_potential() {
    let mut problem = all_terms_problem();
    problem.t_final = 1.5;
    let alpha = problem.weights.transport;
    let (a, c) = ([0.9f64, 1.3, 0.7], [0.4f64, -0.6, 0.25]);
    let mut p = init_params(2, 4, 2, 5).unwrap();
    p.w = vec![0.0; 4];
    p.a = vec![a[0], 0.0, 0.0, 0.0, a[1], 0.0, 0.0, 0.0, a[2]];
    p.c_weight = c.to_vec();
    p.c_bias = -0.2;
    let nt = 100;
    let obj = CrowdObjective::new(problem.clone(), nt, PrecisionPolicy::f64()).unwrap();
    let x = problem.rho0.sample(12, 4, TEST_STREAM, 2).unwrap();
    let mut g = Graph::new(Cpu::new());
    let roll = obj.rollout(&mut g, &p, &x).unwrap();
    assert_eq!(roll.times.len(), nt + 1);
    let lam: Vec<f64> = a[..2].iter().map(|ak| ak * ak / alpha).collect();
    let big_lam: f64 = lam.iter().sum();
    let path = |x: &[f64], t: f64| -> Vec<f64> {
        (0..2)
            .map(|k| {
                let off = c[k] / (a[k] * a[k]);
                (x[k] + off) * (-lam[k] * t).exp() - off
            })
            .collect()
    };
    let pushed = |t: f64| Gaussian {
        mean: (0..2)
            .map(|k| {
                let off = c[k] / (a[k] * a[k]);
                (problem.rho0.mean[k] + off) * (-lam[k] * t).exp() - off
            })
            .collect(),
        var: (0..2)
            .map(|k| problem.rho0.var[k] * (-2.0 * lam[k] * t).exp())
            .collect(),
    };
    let w = problem.weights;
    let t_end = problem.t_final;
    for (k, &t) in roll.times.iter().enumerate() {
        let z = roll.positions(k);
        let lr = roll.log_density(k);
        let rho_t = pushed(t);
        for i in 0..roll.n {
            let xi = &x[2 * i..2 * i + 2];
            let exact = path(xi, t);
            for j in 0..2 {
                assert!(
                    (z[2 * i + j] - exact[j]).abs() < 1e-9,
                    "t = {t}, particle {i}: z = {:?}, exact {exact:?}",
                    &z[2 * i..2 * i + 2]
                );
            }
            let want = rho_t.log_density(&exact);
            assert!(
                (lr[i] - want).abs() < 1e-9,
                "t = {t}, particle {i}: log ρ = {}, pushed Gaussian {want}",
                lr[i]
            );
            // The identity log ρ_t = log ρ₀(x) − ℓ with ℓ = −Λt.
            let via_det = problem.rho0.log_density(xi) + big_lam * t;
            assert!((lr[i] - via_det).abs() < 1e-9);
        }
    }
    let fin = roll.running_costs(nt);
    for (i, costs) in fin.iter().enumerate() {
        let xi = &x[2 * i..2 * i + 2];
        let log_rho0 = problem.rho0.log_density(xi);
        let cl: f64 = (0..2)
            .map(|k| {
                let u = xi[k] + c[k] / (a[k] * a[k]);
                0.25 * lam[k] * u * u * (1.0 - (-2.0 * lam[k] * t_end).exp())
            })
            .sum();
        let cp = log_rho0.exp() * ((big_lam * t_end).exp() - 1.0) / big_lam;
        let ce = t_end * log_rho0 + 0.5 * big_lam * t_end * t_end;
        // Fine trapezoid quadrature along the exact path.
        let q_steps = 40_000;
        let dt = t_end / q_steps as f64;
        let (mut cq, mut ch) = (0.0, 0.0);
        for s in 0..=q_steps {
            let t = s as f64 * dt;
            let wq = if s == 0 || s == q_steps { 0.5 } else { 1.0 };
            let z = path(xi, t);
            let q = problem.obstacle_cost(&z);
            let v2: f64 = (0..2)
                .map(|k| {
                    let gk = a[k] * a[k] * z[k] + c[k];
                    (gk / alpha).powi(2)
                })
                .sum();
            let dphi_dt = a[2] * a[2] * t + c[2];
            let log_rho = log_rho0 + big_lam * t;
            let r = alpha * 0.5 * v2
                - dphi_dt
                - w.obstacle * q
                - 2.0 * w.congestion * log_rho.exp()
                - w.entropy * (1.0 + log_rho);
            cq += wq * q * dt;
            ch += wq * r.abs() * dt;
        }
        let checks = [
            ("c_L", costs[0], cl, 1e-9),
            ("c_Q", costs[1], cq, 1e-7),
            ("c_P", costs[2], cp, 1e-9),
            ("c_E", costs[3], ce, 1e-9),
            // |r_HJB| has a kink where r changes sign: the RK4 step containing it
            // integrates a piecewise-smooth rate, with an error of order h²·|r'| (~1e-4
            // here) instead of h⁵; away from kinks c_H is as exact as the others.
            ("c_H", costs[4], ch, 1e-4),
        ];
        for (name, got, want, tol) in checks {
            assert!(
                (got - want).abs() < tol * want.abs().max(1.0),
                "particle {i}: {name} = {got}, exact {want}"
            );
        }
    }
}

/// A short, fast training config on `problem` (f64, m = 8, RK4 with 4 steps).
fn short_config(problem: CrowdProblem, iterations: u64, seed: u64) -> CrowdConfig {
    CrowdConfig {
        problem,
        m: 8,
        n_th: 2,
        nt: 4,
        nt_val: 8,
        batch_size: 128,
        resample_every: 25,
        validation_size: 0,
        validate_every: 0,
        iterations,
        optimizer: AdamConfig::adam(0.03),
        schedule: Schedule::Step {
            every: iterations * 3 / 4,
            factor: 0.3,
        },
        clip_norm: None,
        seed,
        precision: Precision::F64,
    }
}

fn no_interaction(mu0: Vec<f64>, mu1: Vec<f64>, var: f64, terminal: f64) -> CrowdProblem {
    CrowdProblem {
        d: 2,
        t_final: 1.0,
        rho0: Gaussian::isotropic(mu0, var),
        rho1: Gaussian::isotropic(mu1, var),
        obstacles: Vec::new(),
        weights: CrowdWeights {
            transport: 1.0,
            obstacle: 0.0,
            congestion: 0.0,
            entropy: 0.0,
            terminal,
            hjb: 1.0,
            hjb_terminal: 1.0,
        },
    }
}

/// Fresh evaluation particles (not the training draws).
fn eval_particles(problem: &CrowdProblem, n: usize) -> Vec<f64> {
    problem.rho0.sample(n, 77, TEST_STREAM, 9).unwrap()
}

fn evaluate(trained: &TrainedCrowd, x: &[f64], nt: usize) -> CrowdCosts {
    let mut g = Graph::new(Cpu::new());
    trained
        .objective(nt)
        .unwrap()
        .costs(&mut g, &trained.params, x)
        .unwrap()
}

/// With no obstacle, congestion or entropy and ρ₀ = N(μ₀, σ²I), ρ₁ = N(μ₁, σ²I), the
/// MFG is dynamic OT with a KL penalty λ_G·KL(ρ_T‖ρ₁). Its minimizer is a translation
/// by s along μ₁ − μ₀ (a change of covariance would raise both terms), and
/// ½s² + λ_G(D − s)²/(2σ²) is least at s* = λ_G·D/(σ² + λ_G) (D = ‖μ₁ − μ₀‖), with
/// transport cost ½s*² (→ ½D² as λ_G → ∞). A short training reaches both to 1%
/// (measured 0.1% and 0.2%): the residual is the optimizer's (400 Adam steps; the
/// network fits a constant field only approximately) plus the evaluation's (RK4 with 8
/// steps on 1000 fresh particles; the displacement, not the end point, is compared, so
/// the particles' sample mean does not enter).
#[test]
fn without_interactions_the_crowd_solves_dynamic_ot() {
    let (mu0, mu1, var, lg) = (vec![0.0, 1.0], vec![0.0, -1.0], 0.3, 4.0);
    let problem = no_interaction(mu0.clone(), mu1.clone(), var, lg);
    let trained = train_crowd(&short_config(problem.clone(), 400, 1), &mut |_| {}).unwrap();
    let x = eval_particles(&problem, 1000);
    let roll = trained.rollout(&x, 8).unwrap();
    let zt = roll.positions(8);
    let n = x.len() / 2;
    let disp: Vec<f64> = (0..2)
        .map(|k| (0..n).map(|i| zt[2 * i + k] - x[2 * i + k]).sum::<f64>() / n as f64)
        .collect();
    let dist = 2.0;
    let s_star = lg * dist / (var + lg);
    let costs = evaluate(&trained, &x, 8);
    eprintln!(
        "dynamic OT: displacement {disp:?} (exact [0, {}]), transport {} (exact {}), KL {} \
         (exact {})",
        -s_star,
        costs.transport,
        0.5 * s_star * s_star,
        costs.terminal,
        (dist - s_star).powi(2) / (2.0 * var)
    );
    assert!(disp[0].abs() < 0.01 * s_star, "sideways drift {}", disp[0]);
    assert!(
        (disp[1] + s_star).abs() < 0.01 * s_star,
        "mean displacement {} vs −s* = {}",
        disp[1],
        -s_star
    );
    let want = 0.5 * s_star * s_star;
    assert!(
        (costs.transport - want).abs() < 0.01 * want,
        "transport cost {} vs ½s*² = {want}",
        costs.transport
    );
}

/// The paper's obstacle (Q = 50·N(0, diag(1, 0.5)) between ρ₀ = N((0,3), 0.3I) and
/// ρ₁ = N((0,−3), 0.3I)) with a strong obstacle weight λ_Q = 10: after a short
/// training the crowd's mean ∫Q(z)dt is far below the straight-line map
/// x ↦ x + t(μ₁ − μ₀)'s (computed here by quadrature along those lines): below 0.3×
/// (measured 0.61 against 2.96).
#[test]
fn the_crowd_goes_around_the_obstacle() {
    let mut problem = CrowdProblem::paper();
    problem.weights.obstacle = 10.0;
    problem.weights.entropy = 0.0;
    let trained = train_crowd(&short_config(problem.clone(), 600, 2), &mut |_| {}).unwrap();
    let x = eval_particles(&problem, 500);
    let costs = evaluate(&trained, &x, 8);
    let steps = 2000;
    let h = 1.0 / steps as f64;
    let mut q_line = 0.0;
    for xi in x.chunks_exact(2) {
        for s in 0..=steps {
            let t = s as f64 * h;
            let w = if s == 0 || s == steps { 0.5 } else { 1.0 };
            q_line += w * h * problem.obstacle_cost(&[xi[0], xi[1] - 6.0 * t]);
        }
    }
    q_line /= (x.len() / 2) as f64;
    eprintln!(
        "obstacle: trained ∫Q = {} (transport {}, KL {}), straight line ∫Q = {q_line}",
        costs.obstacle, costs.transport, costs.terminal
    );
    assert!(
        costs.obstacle < 0.3 * q_line,
        "trained ∫Q dt = {} vs straight line {q_line}",
        costs.obstacle
    );
}

/// Congestion spreads the crowd: the same short training with λ_P = 100 leaves the
/// density along the paths (mean and peak of ρ_t over the particles at t = ½) well
/// below that of λ_P = 0 (measured: 0.59× and 0.54×). Without congestion the optimum
/// translates the crowd rigidly, so its mean ρ at t = ½ stays that of t = 0 on the same
/// particles (E[ρ₀] = 1/(4πσ²) ≈ 0.265); the short training keeps it to within 3%
/// (measured 0.7%).
#[test]
fn congestion_lowers_the_density_along_paths() {
    let (var, n_eval) = (0.3, 500);
    let mut base = no_interaction(vec![0.0, 1.5], vec![0.0, -1.5], var, 4.0);
    base.weights.congestion = 0.0;
    let mut crowded = base.clone();
    crowded.weights.congestion = 100.0;
    let mean_rho_half = |problem: &CrowdProblem| {
        let trained = train_crowd(&short_config(problem.clone(), 400, 3), &mut |_| {}).unwrap();
        let x = eval_particles(problem, n_eval);
        let roll = trained.rollout(&x, 8).unwrap();
        let mean_rho = |k: usize| {
            let lr = roll.log_density(k);
            lr.iter().map(|v| v.exp()).sum::<f64>() / lr.len() as f64
        };
        let lr = roll.log_density(4);
        let peak = lr.iter().copied().fold(f64::NEG_INFINITY, f64::max).exp();
        (mean_rho(4), peak, mean_rho(0))
    };
    let (free, free_peak, rigid) = mean_rho_half(&base);
    let (spread, spread_peak, _) = mean_rho_half(&crowded);
    eprintln!(
        "congestion: mean ρ at t = ½ {free} (peak {free_peak}) without, {spread} (peak \
         {spread_peak}) with; at t = 0 {rigid} (E[ρ₀] = {})",
        1.0 / (4.0 * std::f64::consts::PI * var)
    );
    assert!(
        (free - rigid).abs() < 0.03 * rigid,
        "no congestion: {free} vs {rigid}"
    );
    assert!(
        spread < 0.7 * free,
        "with congestion {spread}, without {free}"
    );
    assert!(spread_peak < 0.7 * free_peak);
}

/// Bad settings are typed errors, not panics; a config survives JSON.
#[test]
fn bad_settings_are_errors() {
    let good = CrowdConfig::default();
    good.validate().unwrap();
    let back = CrowdConfig::from_json(&good.to_json().unwrap()).unwrap();
    assert_eq!(back, good);
    let mut bad = Vec::new();
    let mut c = good.clone();
    c.problem.rho0.var[1] = 0.0;
    bad.push(c);
    let mut c = good.clone();
    c.problem.rho1.mean.push(1.0);
    bad.push(c);
    let mut c = good.clone();
    c.problem.weights.transport = 0.0;
    bad.push(c);
    let mut c = good.clone();
    c.problem.weights.congestion = f64::NAN;
    bad.push(c);
    let mut c = good.clone();
    c.problem.obstacles[0].height = -1.0;
    bad.push(c);
    let mut c = good.clone();
    c.problem.t_final = 0.0;
    bad.push(c);
    let mut c = good.clone();
    c.resample_every = 0;
    bad.push(c);
    let mut c = good.clone();
    c.nt = 0;
    bad.push(c);
    let mut c = good.clone();
    c.n_th = 1;
    bad.push(c);
    for c in &bad {
        assert!(c.validate().is_err(), "{c:?}");
        assert!(train_crowd(c, &mut |_| {}).is_err());
    }
    assert!(CrowdConfig::from_json(r#"{"m": 8, "unknown": 1}"#).is_err());
    assert!(CrowdConfig::from_json(r#"{"m": 0}"#).is_err());
    // Particles of the wrong dimension or non-finite values.
    let obj = CrowdObjective::new(CrowdProblem::paper(), 2, PrecisionPolicy::f64()).unwrap();
    let p = init_params(2, 4, 2, 0).unwrap();
    let mut g = Graph::new(Cpu::new());
    assert!(obj.costs(&mut g, &p, &[0.0, 1.0, 2.0]).is_err());
    assert!(obj.costs(&mut g, &p, &[]).is_err());
    assert!(obj.costs(&mut g, &p, &[0.0, f64::NAN]).is_err());
    let p3 = init_params(3, 4, 2, 0).unwrap();
    assert!(obj.costs(&mut g, &p3, &[0.0, 1.0, 2.0]).is_err());
}

/// Training is a pure function of the config, and a run resumed from a checkpoint
/// continues bitwise as the uninterrupted one.
#[test]
fn training_is_seeded_and_resumes_bitwise() {
    let config = short_config(CrowdProblem::paper(), 12, 5);
    let a = train_crowd(&config, &mut |_| {}).unwrap();
    let b = train_crowd(&config, &mut |_| {}).unwrap();
    assert_eq!(a.params, b.params);
    assert_eq!(a.costs, b.costs);

    let mut saved: Vec<Checkpoint> = Vec::new();
    let mut save = |c: &Checkpoint| {
        saved.push(c.clone());
        Ok(())
    };
    let mut ck = Checkpointing {
        every: 7,
        resume: None,
        save: &mut save,
    };
    train_crowd_checkpointed(&config, &mut ck, &mut |_| {}).unwrap();
    let at7 = saved.iter().find(|c| c.iteration == 7).unwrap().clone();
    let mut ck = Checkpointing {
        every: 0,
        resume: Some(at7),
        save: &mut |_| Ok(()),
    };
    let resumed = train_crowd_checkpointed(&config, &mut ck, &mut |_| {}).unwrap();
    assert_eq!(resumed.params, a.params);
    assert_eq!(resumed.costs, a.costs[7..]);
    // The exported artifact is the potential divided by α_L over [0, T].
    a.to_artifact().unwrap();
}

/// The same objective under the f32 and f16 policies (f16: network in half precision,
/// state in f32, dynamic adjoint scaling) against f64: J to 1e-6 relative in f32
/// (~16 units of f32 round-off; measured 2e-8) and 3e-3 in f16 (~6 units of
/// u = 2⁻¹¹, MATH.md §8's O(u_L) error; measured 7e-4), the gradients' directions to
/// cosine 1 − 1e-10 and 1 − 1e-6 (measured 1 − 1e-15 and 1 − 3e-8).
#[test]
fn precision_policies_agree_with_f64() {
    let problem = all_terms_problem();
    let mut p = init_params(2, 16, 2, 9).unwrap();
    p.c_weight = vec![0.3, -0.4, 0.2];
    let x = problem.rho0.sample(64, 13, TEST_STREAM, 3).unwrap();
    let mut g = Graph::new(Cpu::new());
    let run = |policy: PrecisionPolicy, g: &mut Graph<Cpu>| {
        let obj = CrowdObjective::new(problem.clone(), 4, policy).unwrap();
        let (c, grad) = obj.costs_and_gradient(g, &p, &x).unwrap();
        (c.j, flat(&grad))
    };
    let (j64, g64) = run(PrecisionPolicy::f64(), &mut g);
    let cosine = |a: &[f64], b: &[f64]| {
        let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let na: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
        let nb: f64 = b.iter().map(|x| x * x).sum::<f64>().sqrt();
        dot / (na * nb)
    };
    for (name, policy, tol_j, tol_cos) in [
        ("f32", PrecisionPolicy::f32(), 1e-6, 1e-10),
        ("f16", PrecisionPolicy::f16(), 3e-3, 1e-6),
    ] {
        let (j, gr) = run(policy, &mut g);
        let cos = cosine(&gr, &g64);
        eprintln!(
            "{name}: J {j} vs {j64}, gradient cosine 1 − {:.2e}",
            1.0 - cos
        );
        assert!(
            (j - j64).abs() < tol_j * j64.abs(),
            "{name}: J {j} vs {j64}"
        );
        assert!(cos > 1.0 - tol_cos, "{name}: gradient cosine {cos}");
    }
}
