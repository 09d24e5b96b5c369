//! Optimizer, schedule and checkpoint tests: Adam against its update formula,
//! AdamW's decoupled decay, schedules against hand-computed sequences, clipping,
//! clamping, and a resumed run that continues bitwise as an uninterrupted one.

use std::collections::BTreeMap;

use socflow_runtime::brownian::Brownian;
use socflow_trainer::checkpoint::Checkpoint;
use socflow_trainer::optim::{
    clamp, clip_grad_norm, Adam, AdamConfig, Clamp, ParamSet, Schedule, Scheduler,
};
use socflow_trainer::Error;

fn one_param(v: Vec<f64>) -> ParamSet {
    let mut p = ParamSet::new();
    let n = v.len();
    p.push("theta", vec![n], v).unwrap();
    p
}

#[test]
fn adam_follows_its_update_formula() {
    // Reference: the textbook recursion written out independently for two steps.
    let cfg = AdamConfig::adam(0.1);
    let mut p = one_param(vec![1.0, -2.0]);
    let mut opt = Adam::new(cfg, &p).unwrap();
    let g1 = [0.5, -3.0];
    let g2 = [0.25, 1.0];
    opt.step(&mut p, &[g1.to_vec()], 0.1).unwrap();
    // Step 1: m̂ = g, v̂ = g², update = lr·g/(|g| + ε).
    for (k, x0) in [1.0, -2.0].iter().enumerate() {
        let want = x0 - 0.1 * g1[k] / (g1[k].abs() + 1e-8);
        assert!((p.values[0][k] - want).abs() < 1e-15);
    }
    let before = p.values[0].clone();
    opt.step(&mut p, &[g2.to_vec()], 0.1).unwrap();
    for k in 0..2 {
        let m = 0.9 * (0.1 * g1[k]) + 0.1 * g2[k];
        let v = 0.999 * (0.001 * g1[k] * g1[k]) + 0.001 * g2[k] * g2[k];
        let mhat = m / (1.0 - 0.81);
        let vhat = v / (1.0 - 0.999f64 * 0.999);
        let want = before[k] - 0.1 * mhat / (vhat.sqrt() + 1e-8);
        assert!(
            (p.values[0][k] - want).abs() < 1e-14,
            "{} vs {want}",
            p.values[0][k]
        );
    }
    // A quadratic is minimized.
    let mut p = one_param(vec![3.0, -4.0, 0.5]);
    let mut opt = Adam::new(AdamConfig::adam(0.05), &p).unwrap();
    for _ in 0..2000 {
        let g = p.values[0].clone();
        opt.step(&mut p, &[g], 0.05).unwrap();
    }
    assert!(
        p.values[0].iter().all(|v| v.abs() < 1e-3),
        "{:?}",
        p.values[0]
    );
}

#[test]
fn adamw_decays_decoupled_and_adam_l2_couples() {
    // Zero gradient: AdamW shrinks θ by (1 − lr·λ) per step; Adam with L2 sees the
    // gradient λθ and moves by lr·sign(θ) on its first step.
    let mut p = one_param(vec![2.0]);
    let mut opt = Adam::new(AdamConfig::adamw(0.1, 0.5), &p).unwrap();
    for _ in 0..3 {
        opt.step(&mut p, &[vec![0.0]], 0.1).unwrap();
    }
    assert!((p.values[0][0] - 2.0 * 0.95f64.powi(3)).abs() < 1e-15);
    let mut p = one_param(vec![2.0]);
    let mut cfg = AdamConfig::adam(0.1);
    cfg.weight_decay = 0.5;
    let mut opt = Adam::new(cfg, &p).unwrap();
    opt.step(&mut p, &[vec![0.0]], 0.1).unwrap();
    assert!((p.values[0][0] - (2.0 - 0.1 * 1.0 / (1.0 + 1e-8))).abs() < 1e-12);
}

#[test]
fn bad_optimizer_input_is_an_error_and_changes_nothing() {
    let mut p = one_param(vec![1.0, 2.0]);
    let mut opt = Adam::new(AdamConfig::adam(0.1), &p).unwrap();
    assert!(matches!(
        opt.step(&mut p, &[vec![f64::NAN, 1.0]], 0.1),
        Err(Error::NonFinite(_))
    ));
    assert!(opt.step(&mut p, &[vec![1.0]], 0.1).is_err());
    assert!(opt.step(&mut p, &[], 0.1).is_err());
    assert_eq!(p.values[0], vec![1.0, 2.0]);
    assert_eq!(opt.state().step, 0);
    assert!(Adam::new(AdamConfig::adam(-1.0), &p).is_err());
    assert!(p.clone().push("theta", vec![1], vec![0.0]).is_err());
    assert!(p.clone().push("x", vec![2, 2], vec![0.0]).is_err());
}

#[test]
fn step_and_plateau_schedules() {
    let mut s = Scheduler::new(
        Schedule::Step {
            every: 500,
            factor: 0.5,
        },
        0.1,
    )
    .unwrap();
    assert_eq!(s.lr(0), 0.1);
    assert_eq!(s.lr(499), 0.1);
    assert_eq!(s.lr(500), 0.05);
    assert_eq!(s.lr(1499), 0.025);
    let plateau = Schedule::Plateau {
        factor: 0.5,
        patience: 2,
        threshold: 0.01,
        cooldown: 1,
        min_lr: 0.02,
    };
    let mut s = Scheduler::new(plateau, 0.1).unwrap();
    // Improvements, then 3 observations without a 1% improvement → halve.
    let seq = [10.0, 9.0, 8.95, 8.94, 8.93];
    let reduced: Vec<bool> = seq.iter().map(|m| s.observe(*m)).collect();
    assert_eq!(reduced, vec![false, false, false, false, true]);
    assert_eq!(s.lr(0), 0.05);
    // Cooldown of one observation, then patience again; the floor holds at 0.02.
    for _ in 0..4 {
        s.observe(9.5);
    }
    assert_eq!(s.lr(0), 0.025);
    for _ in 0..8 {
        s.observe(9.5);
    }
    assert_eq!(s.lr(0), 0.02);
    // Negative metrics: an improvement must be better by the relative threshold.
    let mut s = Scheduler::new(plateau, 0.1).unwrap();
    s.observe(-2.0);
    for _ in 0..3 {
        s.observe(-2.001); // 0.05% better: not enough
    }
    assert_eq!(s.lr(0), 0.05);
    assert!(Scheduler::new(
        Schedule::Step {
            every: 0,
            factor: 0.5
        },
        0.1
    )
    .is_err());
}

#[test]
fn clipping_and_clamping() {
    let mut g = vec![vec![3.0], vec![4.0, 0.0]];
    let n = clip_grad_norm(&mut g, 1.0).unwrap();
    assert_eq!(n, 5.0);
    assert!((g[0][0] - 0.6).abs() < 1e-15 && (g[1][0] - 0.8).abs() < 1e-15);
    let mut g2 = vec![vec![0.3]];
    clip_grad_norm(&mut g2, 1.0).unwrap();
    assert_eq!(g2[0][0], 0.3);
    assert!(clip_grad_norm(&mut [vec![f64::INFINITY]], 1.0).is_err());
    let mut p = one_param(vec![-3.0, 0.5, 7.0]);
    clamp(
        &mut p,
        &[Clamp {
            param: "theta".into(),
            min: -1.0,
            max: 1.0,
        }],
    )
    .unwrap();
    assert_eq!(p.values[0], vec![-1.0, 0.5, 1.0]);
    assert!(clamp(
        &mut p,
        &[Clamp {
            param: "nope".into(),
            min: 0.0,
            max: 1.0
        }]
    )
    .is_err());
}

/// A small stochastic training problem: fit θ to minimize E‖θ − x‖² over mini-batches
/// of x ~ N(μ, I) drawn by the counter-based generator keyed by the iteration.
fn train(p: &mut ParamSet, opt: &mut Adam, sched: &mut Scheduler, from: u64, to: u64) -> Vec<f64> {
    let gen = Brownian::new(77);
    let mu = [1.0, -2.0, 0.5];
    let mut losses = Vec::new();
    for it in from..to {
        let mut grad = vec![0.0; 3];
        let mut loss = 0.0;
        let batch = 16;
        let mut x = [0.0f64; 3];
        for b in 0..batch {
            gen.normals(b, it, &mut x).unwrap();
            for k in 0..3 {
                let r = p.values[0][k] - (mu[k] + x[k]);
                loss += r * r / batch as f64;
                grad[k] += 2.0 * r / batch as f64;
            }
        }
        let mut grads = vec![grad];
        clip_grad_norm(&mut grads, 5.0).unwrap();
        let lr = sched.lr(it);
        opt.step(p, &grads, lr).unwrap();
        if it % 10 == 9 {
            sched.observe(loss);
        }
        losses.push(loss);
    }
    losses
}

#[test]
fn resumed_run_continues_bitwise() {
    let schedules = [
        Schedule::Step {
            every: 15,
            factor: 0.5,
        },
        Schedule::Plateau {
            factor: 0.5,
            patience: 1,
            threshold: 0.0,
            cooldown: 0,
            min_lr: 1e-4,
        },
    ];
    for schedule in schedules {
        let cfg = AdamConfig::adamw(0.2, 0.01);
        // Uninterrupted: 60 iterations.
        let mut p = one_param(vec![0.0; 3]);
        let mut opt = Adam::new(cfg, &p).unwrap();
        let mut sched = Scheduler::new(schedule, cfg.lr).unwrap();
        let full = train(&mut p, &mut opt, &mut sched, 0, 60);

        // Interrupted at 25: checkpoint to disk, fresh objects from the file, go on.
        let mut q = one_param(vec![0.0; 3]);
        let mut opt2 = Adam::new(cfg, &q).unwrap();
        let mut sched2 = Scheduler::new(schedule, cfg.lr).unwrap();
        let first = train(&mut q, &mut opt2, &mut sched2, 0, 25);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ckpt.safetensors");
        let mut extra = BTreeMap::new();
        extra.insert("config".to_string(), "{\"lr\": 0.2}".to_string());
        Checkpoint {
            iteration: 25,
            params: q.clone(),
            optimizer: opt2.state().clone(),
            scheduler: sched2.state(),
            extra: extra.clone(),
            averaged: None,
        }
        .save(&path)
        .unwrap();
        drop((q, opt2, sched2));
        let ck = Checkpoint::load(&path).unwrap();
        assert_eq!(ck.iteration, 25);
        assert_eq!(ck.extra, extra);
        let mut r = ck.params.clone();
        let mut opt3 = Adam::from_state(cfg, ck.optimizer.clone(), &r).unwrap();
        let mut sched3 = Scheduler::from_state(schedule, cfg.lr, ck.scheduler).unwrap();
        let second = train(&mut r, &mut opt3, &mut sched3, ck.iteration, 60);
        let resumed: Vec<f64> = first.iter().chain(&second).copied().collect();
        assert_eq!(
            full.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            resumed.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        assert_eq!(
            p.values[0].iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            r.values[0].iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        // And it converged near μ (the run is not trivial).
        assert!((p.values[0][0] - 1.0).abs() < 0.3, "{:?}", p.values[0]);
    }
}

#[test]
fn malformed_checkpoints_are_typed_errors() {
    let p = one_param(vec![1.0, 2.0]);
    let opt = Adam::new(AdamConfig::adam(0.1), &p).unwrap();
    let sched = Scheduler::new(Schedule::Constant, 0.1).unwrap();
    let ck = Checkpoint {
        iteration: 3,
        params: p,
        optimizer: opt.state().clone(),
        scheduler: sched.state(),
        extra: BTreeMap::new(),
        // A running average travels with the checkpoint (version 2), bit for bit.
        averaged: Some(vec![vec![0.1, -2.5e-300]]),
    };
    let bytes = ck.to_bytes().unwrap();
    assert_eq!(Checkpoint::from_bytes(&bytes).unwrap(), ck);
    let mut wrong = ck.clone();
    wrong.averaged = Some(vec![vec![0.1]]);
    assert!(wrong.to_bytes().is_err(), "an average of the wrong length");
    for cut in [0, 5, 8, 20, bytes.len() / 2, bytes.len() - 1] {
        assert!(
            Checkpoint::from_bytes(&bytes[..cut]).is_err(),
            "cut at {cut}"
        );
    }
    // Every single flipped byte: an error or a valid checkpoint, never a panic.
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0x5a;
        let _ = Checkpoint::from_bytes(&b);
    }
    // A header claiming more bytes than the file holds.
    let mut b = bytes.clone();
    b[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    assert!(matches!(
        Checkpoint::from_bytes(&b),
        Err(Error::Checkpoint(_))
    ));
    // A newer version.
    // (The header JSON sits escaped inside the safetensors header; same length.)
    let pat = br#"\"version\":2"#;
    let at = bytes
        .windows(pat.len())
        .position(|w| w == pat)
        .expect("version field in the header");
    let mut newer = bytes.clone();
    newer[at + pat.len() - 1] = b'9';
    assert!(matches!(
        Checkpoint::from_bytes(&newer),
        Err(Error::Checkpoint(m)) if m.contains("newer")
    ));
    assert!(Checkpoint::load("/nonexistent/ckpt").is_err());
}
