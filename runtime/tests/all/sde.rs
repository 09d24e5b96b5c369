//! SDE solvers: strong orders on geometric Brownian motion with nested Brownian paths
//! (Itô for Euler–Maruyama, Stratonovich for stochastic Heun), weak order of
//! Euler–Maruyama on Ornstein–Uhlenbeck against the closed-form moments of the scheme
//! and of the SDE, reverse time, exact use of the counter-based increments, bitwise
//! reproducibility across block splits and threads, validation.

use rayon::prelude::*;
use socflow_testkit::{count_allocs, observed_order};

use socflow_runtime::brownian::{Brownian, MAX_SAMPLE};
use socflow_runtime::field::FnField;
use socflow_runtime::ode::Trajectory;
use socflow_runtime::sde::{
    solve_sde_block, solve_sde_block_with, BrownianIncrements, ConstantDiffusion,
    DiagonalDiffusion, Diffusion, IncrementSource, ScalarDiffusion, SdeOptions, SdeScheme,
    SdeWorkspace,
};
use socflow_runtime::Error;

const MU: f64 = 0.5;
const SIGMA: f64 = 0.8;

/// Fine Brownian increments of `paths` paths over [0, T] in `fine` steps, from the
/// counter-based generator: `out[p][j]`.
fn fine_paths(b: &Brownian, paths: usize, fine: usize, t: f64) -> Vec<Vec<f64>> {
    let h = t / fine as f64;
    (0..paths)
        .map(|p| {
            (0..fine)
                .map(|j| {
                    let mut w = [0.0];
                    b.increments(p as u64, j as u64, h, &mut w).unwrap();
                    w[0]
                })
                .collect()
        })
        .collect()
}

/// RMS error at T of a GBM solve with `steps` coarse steps whose increments are sums
/// of the fine ones, against `exact(W_T)`.
fn gbm_rms_error(
    scheme: SdeScheme,
    fine: &[Vec<f64>],
    steps: usize,
    t: f64,
    exact: impl Fn(f64) -> f64,
) -> f64 {
    let drift = FnField::new(1, |_t: f64, x: &[f64], v: &mut [f64]| v[0] = MU * x[0]);
    let diffusion =
        DiagonalDiffusion::new(1, |_t: f64, x: &[f64], g: &mut [f64]| g[0] = SIGMA * x[0]);
    let paths = fine.len();
    let r = fine[0].len() / steps;
    let mut noise = |k: u64, _h: f64, d: usize, dw: &mut [f64]| -> Result<(), Error> {
        assert_eq!(d, 1);
        let k = k as usize;
        for (p, w) in dw.iter_mut().enumerate() {
            *w = fine[p][k * r..(k + 1) * r].iter().sum();
        }
        Ok(())
    };
    let mut x = vec![1.0; paths];
    let mut ws = SdeWorkspace::for_field(&drift, paths);
    let opts = SdeOptions::new(scheme, steps);
    let st = solve_sde_block_with(
        &drift, &diffusion, &opts, 0.0, t, &mut x, &mut noise, None, &mut ws,
    )
    .unwrap();
    let evals = match scheme {
        SdeScheme::EulerMaruyama => 1,
        SdeScheme::StochasticHeun => 2,
    };
    assert_eq!(st.nfe, (evals * steps * paths) as u64);
    let ms: f64 = x
        .iter()
        .zip(fine)
        .map(|(xi, f)| (xi - exact(f.iter().sum())).powi(2))
        .sum::<f64>()
        / paths as f64;
    ms.sqrt()
}

/// Euler–Maruyama converges strongly with order ½ to the Itô solution
/// X_T = exp((μ − σ²/2)T + σW_T); stochastic Heun with order 1 to the Stratonovich
/// one X_T = exp(μT + σW_T). Each converges to its own calculus, not the other's.
#[test]
fn strong_orders_on_geometric_brownian_motion() {
    let t = 1.0;
    let (paths, fine) = (2000, 1024);
    let b = Brownian::new(314159);
    let w = fine_paths(&b, paths, fine, t);
    let ito = |wt: f64| ((MU - 0.5 * SIGMA * SIGMA) * t + SIGMA * wt).exp();
    let strat = |wt: f64| (MU * t + SIGMA * wt).exp();
    let levels = [16, 32, 64, 128, 256];

    let em: Vec<f64> = levels
        .iter()
        .map(|&n| gbm_rms_error(SdeScheme::EulerMaruyama, &w, n, t, ito))
        .collect();
    let q = observed_order(&levels, &em);
    eprintln!("Euler–Maruyama (Itô) RMS errors {em:?}, order {q:.3}");
    assert!((q - 0.5).abs() < 0.1, "EM strong order {q} ({em:?})");

    let heun: Vec<f64> = levels
        .iter()
        .map(|&n| gbm_rms_error(SdeScheme::StochasticHeun, &w, n, t, strat))
        .collect();
    let q = observed_order(&levels, &heun);
    eprintln!("stochastic Heun (Stratonovich) RMS errors {heun:?}, order {q:.3}");
    assert!((q - 1.0).abs() < 0.15, "Heun strong order {q} ({heun:?})");

    // Against the other calculus the error does not vanish: E[(X_ito − X_strat)²]^½ =
    // e^{μT}·(E[(e^{σW−σ²T/2} − e^{σW})²])^½ is of order σ²T/2 ≈ 0.3.
    let em_vs_strat = gbm_rms_error(SdeScheme::EulerMaruyama, &w, 256, t, strat);
    let heun_vs_ito = gbm_rms_error(SdeScheme::StochasticHeun, &w, 256, t, ito);
    assert!(em_vs_strat > 10.0 * em[4], "{em_vs_strat} vs {}", em[4]);
    assert!(heun_vs_ito > 10.0 * heun[4], "{heun_vs_ito} vs {}", heun[4]);
}

/// Sample mean and second moment of a block, with their standard errors.
fn moments(x: &[f64]) -> (f64, f64, f64, f64) {
    let n = x.len() as f64;
    let m1 = x.iter().sum::<f64>() / n;
    let m2 = x.iter().map(|v| v * v).sum::<f64>() / n;
    let v1 = x.iter().map(|v| (v - m1).powi(2)).sum::<f64>() / (n - 1.0);
    let v2 = x.iter().map(|v| (v * v - m2).powi(2)).sum::<f64>() / (n - 1.0);
    (m1, (v1 / n).sqrt(), m2, (v2 / n).sqrt())
}

/// Moments of the Euler–Maruyama chain X₊ = (1 − θh)X + σΔW, ΔW ~ N(0, |h|), after n
/// steps from x0: (E X_n, E X_n²) in closed form.
fn em_ou_moments(theta: f64, sigma: f64, x0: f64, h: f64, n: usize) -> (f64, f64) {
    let a = 1.0 - theta * h;
    let mut m1 = x0;
    let mut m2 = x0 * x0;
    for _ in 0..n {
        m1 *= a;
        m2 = a * a * m2 + sigma * sigma * h.abs();
    }
    (m1, m2)
}

/// Ornstein–Uhlenbeck dX = −θX dt + σ dW from x0: Euler–Maruyama's sample moments
/// match the closed-form moments of the discrete chain (within 4 standard errors),
/// and their distance to the SDE's moments falls with weak order 1.
#[test]
fn weak_order_of_euler_maruyama_on_ornstein_uhlenbeck() {
    let (theta, sigma, x0, t) = (1.0, 0.5, 6.0, 1.0);
    let paths = 100_000;
    let drift = FnField::new(1, move |_t: f64, x: &[f64], v: &mut [f64]| {
        v[0] = -theta * x[0]
    });
    let diffusion = ConstantDiffusion::new(1, sigma);
    assert!(diffusion.is_additive());
    let b = Brownian::new(2718);
    let mut ws = SdeWorkspace::for_field(&drift, paths);
    let exact_m1 = x0 * (-theta * t).exp();
    let exact_m2 =
        exact_m1 * exact_m1 + sigma * sigma / (2.0 * theta) * (1.0 - (-2.0 * theta * t).exp());
    let levels = [4, 8, 16, 32];
    let mut e1 = Vec::new();
    let mut e2 = Vec::new();
    for &n in &levels {
        let mut x = vec![x0; paths];
        let opts = SdeOptions::new(SdeScheme::EulerMaruyama, n);
        solve_sde_block(
            &drift, &diffusion, &opts, 0.0, t, &mut x, &b, 0, None, &mut ws,
        )
        .unwrap();
        let (m1, se1, m2, se2) = moments(&x);
        let (d1, d2) = em_ou_moments(theta, sigma, x0, t / n as f64, n);
        eprintln!(
            "N = {n}: mean {m1:.5} (chain {d1:.5}, SDE {exact_m1:.5}, SE {se1:.1e}), \
             E[X²] {m2:.5} (chain {d2:.5}, SDE {exact_m2:.5}, SE {se2:.1e})"
        );
        assert!(
            (m1 - d1).abs() < 4.0 * se1,
            "N = {n}: mean {m1} vs chain {d1}"
        );
        assert!(
            (m2 - d2).abs() < 4.0 * se2,
            "N = {n}: E[X²] {m2} vs chain {d2}"
        );
        // The bias must dominate the Monte Carlo error for the order to be measured.
        assert!((d1 - exact_m1).abs() > 20.0 * se1 && (d2 - exact_m2).abs() > 20.0 * se2);
        e1.push((m1 - exact_m1).abs());
        e2.push((m2 - exact_m2).abs());
    }
    let q1 = observed_order(&levels, &e1);
    let q2 = observed_order(&levels, &e2);
    eprintln!("weak errors: mean {e1:?} (order {q1:.3}), second moment {e2:?} (order {q2:.3})");
    assert!((q1 - 1.0).abs() < 0.15, "weak order of the mean {q1}");
    assert!(
        (q2 - 1.0).abs() < 0.15,
        "weak order of the second moment {q2}"
    );
}

/// Reverse time (t1 < t0): the step is negative and the increments have variance
/// |h|: the sample moments match the chain X₊ = (1 − θh)X + σ√|h|ξ.
#[test]
fn reverse_time_uses_the_absolute_step() {
    let (theta, sigma, x0) = (0.7, 0.9, 1.5);
    let paths = 100_000;
    let drift = FnField::new(1, move |_t: f64, x: &[f64], v: &mut [f64]| {
        v[0] = -theta * x[0]
    });
    let diffusion = ConstantDiffusion::new(1, sigma);
    let b = Brownian::new(99);
    let mut ws = SdeWorkspace::for_field(&drift, paths);
    let n = 16;
    for scheme in [SdeScheme::EulerMaruyama, SdeScheme::StochasticHeun] {
        let mut x = vec![x0; paths];
        let opts = SdeOptions::new(scheme, n);
        solve_sde_block(
            &drift, &diffusion, &opts, 1.0, 0.0, &mut x, &b, 0, None, &mut ws,
        )
        .unwrap();
        let (m1, se1, m2, se2) = moments(&x);
        let h = -1.0 / n as f64;
        // Heun with additive noise and linear drift: X₊ = (1 − θh + θ²h²/2)X +
        // σ(1 − θh/2)ΔW.
        let (a, s) = match scheme {
            SdeScheme::EulerMaruyama => (1.0 - theta * h, sigma),
            SdeScheme::StochasticHeun => (
                1.0 - theta * h + 0.5 * theta * theta * h * h,
                sigma * (1.0 - 0.5 * theta * h),
            ),
        };
        let (mut d1, mut d2) = (x0, x0 * x0);
        for _ in 0..n {
            d1 *= a;
            d2 = a * a * d2 + s * s * h.abs();
        }
        eprintln!("{scheme:?} backward: mean {m1:.5} vs {d1:.5}, E[X²] {m2:.5} vs {d2:.5}");
        assert!((m1 - d1).abs() < 4.0 * se1, "{scheme:?}: mean {m1} vs {d1}");
        assert!(
            (m2 - d2).abs() < 4.0 * se2,
            "{scheme:?}: E[X²] {m2} vs {d2}"
        );
    }
}

/// With zero drift and σ(t) noise, Euler–Maruyama gives x0 + Σ σ(t_k)ΔW_k with
/// ΔW_k the generator's increments of sample `first_sample + row`, step k: bitwise.
#[test]
fn increments_come_from_sample_and_step_indices() {
    let d = 3;
    let drift = FnField::new(d, |_t: f64, _x: &[f64], v: &mut [f64]| v.fill(0.0));
    let sig = |t: f64| 0.5 + t * t;
    let diffusion = ScalarDiffusion::new(d, sig);
    assert!(diffusion.is_additive());
    let b = Brownian::new(5);
    let (rows, n, first) = (4usize, 10usize, 1000u64);
    let (t0, t1) = (0.25, 1.25);
    let x0: Vec<f64> = (0..rows * d).map(|i| i as f64 * 0.1).collect();
    let mut x = x0.clone();
    let mut ws = SdeWorkspace::for_field(&drift, rows);
    let opts = SdeOptions::new(SdeScheme::EulerMaruyama, n);
    solve_sde_block(
        &drift, &diffusion, &opts, t0, t1, &mut x, &b, first, None, &mut ws,
    )
    .unwrap();
    let h = (t1 - t0) / n as f64;
    for r in 0..rows {
        let mut want = x0[r * d..(r + 1) * d].to_vec();
        for k in 0..n {
            let mut w = vec![0.0; d];
            b.increments(first + r as u64, k as u64, h, &mut w).unwrap();
            let g = sig(t0 + k as f64 * h);
            for (y, wi) in want.iter_mut().zip(&w) {
                *y = *y + 0.0 * h + g * wi;
            }
        }
        assert_eq!(&x[r * d..(r + 1) * d], &want[..], "row {r}");
    }
}

type Rhs = fn(f64, &[f64], &mut [f64]);

fn nonlinear_drift(t: f64, x: &[f64], v: &mut [f64]) {
    // Bounded nonlinearity: the flow is tame backward in time too.
    v[0] = x[1] - 2.0 * x[0].sin() + t.sin();
    v[1] = -x[0] - 0.3 * x[1];
}

fn nonlinear_diffusion(t: f64, x: &[f64], g: &mut [f64]) {
    g[0] = 0.3 + 0.2 * x[0].sin();
    g[1] = 0.5 * (1.0 + t) / (1.0 + x[1] * x[1]);
}

fn nonlinear_problem() -> (FnField<Rhs>, DiagonalDiffusion<Rhs>) {
    (
        FnField::new(2, nonlinear_drift as Rhs),
        DiagonalDiffusion::new(2, nonlinear_diffusion as Rhs),
    )
}

/// 64 rows solved as one block, as 8 blocks of 8, and as uneven blocks on rayon
/// threads give the same bits, for both schemes, forward and backward.
#[test]
fn block_splits_and_threads_give_identical_bits() {
    let (drift, diffusion) = nonlinear_problem();
    let b = Brownian::new(77);
    let rows = 64;
    let x0: Vec<f64> = (0..rows * 2)
        .map(|i| ((i * 37) % 11) as f64 * 0.2 - 1.0)
        .collect();
    for scheme in [SdeScheme::EulerMaruyama, SdeScheme::StochasticHeun] {
        for (t0, t1) in [(0.0, 2.0), (2.0, 0.5)] {
            let opts = SdeOptions::new(scheme, 50);
            let mut whole = x0.clone();
            let mut ws = SdeWorkspace::for_field(&drift, rows);
            solve_sde_block(
                &drift, &diffusion, &opts, t0, t1, &mut whole, &b, 0, None, &mut ws,
            )
            .unwrap();

            let mut eights = x0.clone();
            for (i, blk) in eights.chunks_mut(16).enumerate() {
                let mut ws = SdeWorkspace::for_field(&drift, 8);
                solve_sde_block(
                    &drift,
                    &diffusion,
                    &opts,
                    t0,
                    t1,
                    blk,
                    &b,
                    8 * i as u64,
                    None,
                    &mut ws,
                )
                .unwrap();
            }

            let mut threaded = x0.clone();
            threaded
                .par_chunks_mut(2 * 5)
                .enumerate()
                .try_for_each(|(i, blk)| {
                    let mut ws = SdeWorkspace::for_field(&drift, 5);
                    solve_sde_block(
                        &drift,
                        &diffusion,
                        &opts,
                        t0,
                        t1,
                        blk,
                        &b,
                        5 * i as u64,
                        None,
                        &mut ws,
                    )
                    .map(|_| ())
                })
                .unwrap();

            let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(&whole),
                bits(&eights),
                "{scheme:?} [{t0}, {t1}]: 8 blocks"
            );
            assert_eq!(
                bits(&whole),
                bits(&threaded),
                "{scheme:?} [{t0}, {t1}]: threads"
            );
            assert!(whole.iter().all(|v| v.is_finite()));
            assert_ne!(whole, x0);
        }
    }
}

/// f32 solves see the same noise as f64 ones up to rounding.
#[test]
fn f32_follows_f64() {
    let b = Brownian::new(3);
    let d64 = FnField::new(1, |_t: f64, x: &[f64], v: &mut [f64]| v[0] = -x[0]);
    let d32 = FnField::with_div(
        1,
        |_t: f32, x: &[f32], v: &mut [f32]| v[0] = -x[0],
        |_t: f32, _x: &[f32]| -1.0f32,
    );
    let g64 = ConstantDiffusion::new(1, 0.5f64);
    let g32 = ConstantDiffusion::new(1, 0.5f32);
    let rows = 16;
    for scheme in [SdeScheme::EulerMaruyama, SdeScheme::StochasticHeun] {
        let opts = SdeOptions::new(scheme, 40);
        let mut x64 = vec![1.0f64; rows];
        let mut x32 = vec![1.0f32; rows];
        let mut w64 = SdeWorkspace::for_field(&d64, rows);
        let mut w32 = SdeWorkspace::for_field(&d32, rows);
        solve_sde_block(&d64, &g64, &opts, 0.0, 1.0, &mut x64, &b, 0, None, &mut w64).unwrap();
        solve_sde_block(&d32, &g32, &opts, 0.0, 1.0, &mut x32, &b, 0, None, &mut w32).unwrap();
        for (a, c) in x32.iter().zip(&x64) {
            assert!((f64::from(*a) - c).abs() < 1e-5, "{scheme:?}: {a} vs {c}");
        }
    }
}

/// Trajectories save every step; the Brownian source is an `IncrementSource`.
#[test]
fn trajectory_and_increment_source() {
    let (drift, diffusion) = nonlinear_problem();
    let b = Brownian::new(11);
    let x0 = vec![0.5, -0.5, 1.0, 0.0];
    let mut x = x0.clone();
    let mut traj = Trajectory::every_step();
    let mut ws = SdeWorkspace::new(2, 2, 0);
    let opts = SdeOptions::new(SdeScheme::StochasticHeun, 20);
    solve_sde_block(
        &drift,
        &diffusion,
        &opts,
        0.0,
        1.0,
        &mut x,
        &b,
        42,
        Some(&mut traj),
        &mut ws,
    )
    .unwrap();
    assert_eq!(traj.len(), 21);
    assert_eq!(traj.block(0).unwrap(), &x0[..]);
    assert_eq!(traj.block(20).unwrap(), &x[..]);
    assert_eq!(traj.times()[20], 1.0);
    assert!((traj.times()[7] - 0.35).abs() < 1e-15);

    // The same solve through the generic entry point and the Brownian source.
    let mut y = x0.clone();
    let mut src = BrownianIncrements::new(&b, 42);
    solve_sde_block_with(
        &drift, &diffusion, &opts, 0.0, 1.0, &mut y, &mut src, None, &mut ws,
    )
    .unwrap();
    assert_eq!(x, y);
    let mut dw = vec![0.0; 4];
    IncrementSource::<f64>::fill(&mut src, 3, 0.05, 2, &mut dw).unwrap();
    let mut w = vec![0.0; 2];
    b.increments(43, 3, 0.05, &mut w).unwrap();
    assert_eq!(&dw[2..], &w[..]);

    // An empty block evaluates nothing and still records the step times.
    let mut empty: Vec<f64> = Vec::new();
    let st = solve_sde_block(
        &drift,
        &diffusion,
        &opts,
        0.0,
        1.0,
        &mut empty,
        &b,
        0,
        Some(&mut traj),
        &mut ws,
    )
    .unwrap();
    assert_eq!((st.nfe, st.block_evals), (0, 0));
    assert_eq!(traj.len(), 21);
    assert!(traj.states().is_empty());

    let mut bad = Trajectory::at_times(vec![0.5]);
    assert!(matches!(
        solve_sde_block(
            &drift,
            &diffusion,
            &opts,
            0.0,
            1.0,
            &mut y,
            &b,
            0,
            Some(&mut bad),
            &mut ws
        ),
        Err(Error::Unsupported(_))
    ));
}

#[test]
fn invalid_arguments_are_refused() {
    let (drift, diffusion) = nonlinear_problem();
    let b = Brownian::new(1);
    let mut ws = SdeWorkspace::new(2, 2, 0);
    let em = SdeOptions::new(SdeScheme::EulerMaruyama, 10);
    let mut x = vec![0.1; 4];
    assert!(matches!(
        solve_sde_block(
            &drift,
            &diffusion,
            &SdeOptions::new(SdeScheme::EulerMaruyama, 0),
            0.0,
            1.0,
            &mut x,
            &b,
            0,
            None,
            &mut ws
        ),
        Err(Error::InvalidArgument(_))
    ));
    let g3 = ConstantDiffusion::new(3, 1.0);
    assert!(matches!(
        solve_sde_block(&drift, &g3, &em, 0.0, 1.0, &mut x, &b, 0, None, &mut ws),
        Err(Error::InvalidArgument(_))
    ));
    let mut odd = vec![0.1; 3];
    assert!(matches!(
        solve_sde_block(&drift, &diffusion, &em, 0.0, 1.0, &mut odd, &b, 0, None, &mut ws),
        Err(Error::Length { .. })
    ));
    let mut nan = vec![0.1, f64::NAN];
    assert!(matches!(
        solve_sde_block(&drift, &diffusion, &em, 0.0, 1.0, &mut nan, &b, 0, None, &mut ws),
        Err(Error::NonFinite(_))
    ));
    assert!(matches!(
        solve_sde_block(
            &drift,
            &diffusion,
            &em,
            0.0,
            f64::NAN,
            &mut x,
            &b,
            0,
            None,
            &mut ws
        ),
        Err(Error::NonFinite(_))
    ));
    // Sample indices past the generator's range.
    assert!(matches!(
        solve_sde_block(&drift, &diffusion, &em, 0.0, 1.0, &mut x, &b, MAX_SAMPLE, None, &mut ws),
        Err(Error::Limit(_))
    ));
    // A path that overflows names its row.
    let blow = FnField::new(1, |_t: f64, x: &[f64], v: &mut [f64]| v[0] = x[0] * x[0]);
    let g = ConstantDiffusion::new(1, 0.0);
    let mut y = vec![0.1, 50.0];
    let err = solve_sde_block(&blow, &g, &em, 0.0, 1.0, &mut y, &b, 0, None, &mut ws).unwrap_err();
    assert!(
        matches!(err, Error::Integration(_)) && err.to_string().contains("row 1"),
        "{err}"
    );
}

/// Once the workspace and trajectory have grown, SDE solves do not allocate.
#[test]
fn repeated_solves_do_not_allocate() {
    let (drift, diffusion) = nonlinear_problem();
    let b = Brownian::new(8);
    let mut ws = SdeWorkspace::for_field(&drift, 3);
    let mut traj = Trajectory::every_step();
    let x0 = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6];
    for round in 0..2 {
        let mut x = x0.to_vec();
        let (r, n) = count_allocs(|| {
            for scheme in [SdeScheme::EulerMaruyama, SdeScheme::StochasticHeun] {
                let opts = SdeOptions::new(scheme, 25);
                solve_sde_block(
                    &drift,
                    &diffusion,
                    &opts,
                    0.0,
                    1.0,
                    &mut x,
                    &b,
                    9,
                    Some(&mut traj),
                    &mut ws,
                )?;
            }
            Ok::<(), Error>(())
        });
        r.unwrap();
        if round == 0 {
            assert!(n > 0, "the first solve sizes the trajectory");
        } else {
            assert_eq!(n, 0, "{n} allocations in repeated SDE solves");
        }
    }
}
