//! Controller tests: u = −M∇ₓΦ against closed forms and the potential, no allocation
//! on the control path (counting global allocator), typed errors on bad input, and the
//! closed-loop roll-out against its exact discrete solution.

// Index loops read several arrays in step, as the formulas are written.
#![allow(clippy::needless_range_loop)]

use std::sync::Arc;

use crate::common::{ata, quadratic_otflow, random_otflow};
use socflow_runtime::controller::{ControlMatrix, Controller, Integrator, SimulateOptions};
use socflow_runtime::field::Potential;
use socflow_runtime::nn::otflow::OtFlow;
use socflow_runtime::Error;
use socflow_testkit::count_allocs;

#[test]
fn control_path_does_not_allocate() {
    for &(d, m) in &[(2, 16), (12, 64), (100, 256)] {
        let pot = Arc::new(OtFlow::<f32>::new(&random_otflow(d, m, 2, 3)).unwrap());
        let mut ctl = Controller::new(pot, None).unwrap();
        let x: Vec<f32> = (0..d).map(|i| 0.1 * i as f32 - 0.3).collect();
        let mut u = vec![0.0f32; d];
        ctl.control(0.2, &x, &mut u).unwrap(); // warm up
        let (res, n) = count_allocs(|| {
            let mut acc = 0.0f32;
            for k in 0..1000 {
                ctl.control(0.001 * k as f32, &x, &mut u).unwrap();
                acc += u[0];
            }
            acc
        });
        assert!(res.is_finite());
        assert_eq!(n, 0, "control() allocated {n} times for d={d}, m={m}");
    }
    // With a control map too.
    let d = 6;
    let pot = Arc::new(OtFlow::<f64>::new(&random_otflow(d, 8, 3, 5)).unwrap());
    let map = ControlMatrix::new(2, d, (0..2 * d).map(|i| i as f64 * 0.1).collect()).unwrap();
    let mut ctl = Controller::new(pot, Some(map)).unwrap();
    let x = vec![0.3; d];
    let mut u = vec![0.0; 2];
    ctl.control(0.0, &x, &mut u).unwrap();
    let (_, n) = count_allocs(|| ctl.control(0.5, &x, &mut u).unwrap());
    assert_eq!(n, 0);
}

#[test]
fn control_equals_closed_form_for_quadratic_potential() {
    // Φ = ½ sᵀAᵀAs + cᵀs + c0, s = (x, t): ∇ₓΦ = (AᵀA s)[..d] + c[..d].
    let d = 3;
    let n = d + 1;
    let r = 2;
    let a = vec![0.5, -0.2, 0.1, 0.3, 0.7, 0.4, -0.6, 0.2];
    let c = vec![0.1, -0.2, 0.3, 0.05];
    let p = quadratic_otflow(d, a.clone(), r, c.clone());
    let g = ata(&a, r, n);
    let pot = Arc::new(OtFlow::<f64>::new(&p).unwrap());
    let mut ctl = Controller::new(pot, None).unwrap();
    let x = [0.4, -1.2, 2.0];
    let t = 0.7;
    let s = [x[0], x[1], x[2], t];
    let mut u = [0.0; 3];
    ctl.control(t, &x, &mut u).unwrap();
    for i in 0..d {
        let grad: f64 = (0..n).map(|j| g[i * n + j] * s[j]).sum::<f64>() + c[i];
        assert!(
            (u[i] + grad).abs() < 1e-14,
            "u[{i}] = {} vs {}",
            u[i],
            -grad
        );
    }
    let phi: f64 = 0.5
        * (0..n)
            .map(|i| (0..n).map(|j| s[i] * g[i * n + j] * s[j]).sum::<f64>())
            .sum::<f64>()
        + (0..n).map(|i| c[i] * s[i]).sum::<f64>()
        + 0.25;
    assert!((ctl.value(t, &x).unwrap() - phi).abs() < 1e-13);
}

#[test]
fn control_map_and_batch_agree_with_potential_gradient() {
    let d = 5;
    let pot = Arc::new(OtFlow::<f64>::new(&random_otflow(d, 12, 3, 11)).unwrap());
    let mdata: Vec<f64> = (0..3 * d)
        .map(|i| ((i * 7 % 5) as f64 - 2.0) * 0.3)
        .collect();
    let map = ControlMatrix::new(3, d, mdata.clone()).unwrap();
    let mut ctl = Controller::new(pot.clone(), Some(map)).unwrap();
    assert_eq!(ctl.control_dim(), 3);
    let n = 37;
    let xs: Vec<f64> = (0..n * d)
        .map(|i| ((i * 13 % 17) as f64 - 8.0) * 0.15)
        .collect();
    let t = 0.35;
    let mut ub = vec![0.0; n * 3];
    ctl.control_batch(t, &xs, &mut ub).unwrap();
    let mut grad = vec![0.0; d];
    let mut scratch = vec![0.0; pot.scratch_len()];
    let mut u = [0.0; 3];
    for i in 0..n {
        let x = &xs[i * d..(i + 1) * d];
        pot.grad(t, x, &mut grad, &mut scratch).unwrap();
        ctl.control(t, x, &mut u).unwrap();
        for k in 0..3 {
            let want: f64 = -(0..d).map(|j| mdata[k * d + j] * grad[j]).sum::<f64>();
            assert!((u[k] - want).abs() <= 1e-14 * (1.0 + want.abs()));
            assert_eq!(
                u[k].to_bits(),
                ub[i * 3 + k].to_bits(),
                "batch differs from single"
            );
        }
    }
    // The control is minus the gradient of the value: check against central
    // differences of Φ (independent of the closed-form gradient).
    let mut ctl = Controller::new(pot, None).unwrap();
    let x = vec![0.2, -0.4, 0.9, 0.1, -0.7];
    let mut u = vec![0.0; d];
    ctl.control(t, &x, &mut u).unwrap();
    for j in 0..d {
        let h = 1e-5;
        let mut xp = x.clone();
        let mut xm = x.clone();
        xp[j] += h;
        xm[j] -= h;
        let fd = (ctl.value(t, &xp).unwrap() - ctl.value(t, &xm).unwrap()) / (2.0 * h);
        assert!(
            (u[j] + fd).abs() < 1e-8 * (1.0 + fd.abs()),
            "j={j}: {} vs {}",
            u[j],
            -fd
        );
    }
}

#[test]
fn bad_input_gives_typed_errors() {
    let d = 4;
    let pot = Arc::new(OtFlow::<f32>::new(&random_otflow(d, 8, 2, 1)).unwrap());
    let mut ctl = Controller::new(pot.clone(), None).unwrap();
    let mut u = vec![0.0f32; d];
    assert!(matches!(
        ctl.control(0.0, &[0.0; 3], &mut u),
        Err(Error::Length { .. })
    ));
    assert!(matches!(
        ctl.control(0.0, &[0.0; 4], &mut [0.0; 5]),
        Err(Error::Length { .. })
    ));
    assert!(matches!(
        ctl.control(0.0, &[0.0, f32::NAN, 0.0, 0.0], &mut u),
        Err(Error::NonFinite(_))
    ));
    assert!(matches!(
        ctl.control(f32::INFINITY, &[0.0; 4], &mut u),
        Err(Error::NonFinite(_))
    ));
    assert!(matches!(
        ctl.control_batch(0.0, &[0.0; 7], &mut [0.0; 8]),
        Err(Error::Length { .. })
    ));
    // The buffer is untouched after an error.
    let mut u = vec![9.0f32; d];
    let _ = ctl.control(0.0, &[f32::NAN; 4], &mut u);
    assert_eq!(u, vec![9.0; d]);
    // A control map of the wrong width is refused.
    let map = ControlMatrix::new(2, 3, vec![1.0; 6]).unwrap();
    assert!(matches!(
        Controller::new(pot, Some(map)),
        Err(Error::InvalidArgument(_))
    ));
    assert!(ControlMatrix::<f32>::new(2, 2, vec![1.0, f32::NAN, 0.0, 1.0]).is_err());
}

/// With f = u and u = −∇ₓΦ = −(P x + q(t)) for a quadratic Φ, Euler–Maruyama without
/// noise is the linear recursion x ← x − h(P x + q(t)), computed here independently.
#[test]
fn simulate_matches_exact_discrete_recursion() {
    let d = 2;
    let n = d + 1;
    let r = 3;
    let a = vec![1.0, 0.2, 0.0, 0.0, 0.8, 0.1, 0.3, 0.0, 0.5];
    let c = vec![0.2, -0.1, 0.0];
    let p = quadratic_otflow(d, a.clone(), r, c.clone());
    let g = ata(&a, r, n);
    let ctl = Controller::new(Arc::new(OtFlow::<f64>::new(&p).unwrap()), None).unwrap();
    let dynamics = Integrator {
        dim: d,
        gain: 1.0,
        control_weight: 1.0,
    };
    let steps = 50;
    let opts = SimulateOptions {
        x0: vec![1.5, -2.0],
        t0: 0.0,
        t1: 1.0,
        steps,
        sigma: 0.0,
        paths: 3,
        seed: 9,
        keep_trajectories: true,
    };
    let out = ctl.simulate(&dynamics, &opts).unwrap();
    let h = 1.0 / steps as f64;
    let mut x = [1.5, -2.0];
    let mut cost = 0.0;
    for k in 0..steps {
        let t = k as f64 * h;
        let s = [x[0], x[1], t];
        let grad: Vec<f64> = (0..d)
            .map(|i| (0..n).map(|j| g[i * n + j] * s[j]).sum::<f64>() + c[i])
            .collect();
        cost += 0.5 * (grad[0] * grad[0] + grad[1] * grad[1]) * h;
        x[0] -= h * grad[0];
        x[1] -= h * grad[1];
    }
    for path in 0..3 {
        for j in 0..d {
            assert!((out.finals[path * d + j] - x[j]).abs() < 1e-12);
        }
        assert!((out.running_cost[path] - cost).abs() < 1e-12);
    }
    let traj = out.trajectories.as_ref().unwrap();
    assert_eq!(traj.len(), 3 * (steps + 1) * d);
    assert_eq!(&traj[..d], &[1.5, -2.0]);
    assert_eq!(&traj[steps * d..(steps + 1) * d], &out.finals[..d]);
}

/// With noise, the paths of the same linear closed loop have mean (I − hP)^k x0 (plus
/// the drift of q) and, for P = pI, variance σ²h Σ (1 − hp)^{2j}: check both within
/// Monte Carlo error, and that results do not depend on the thread count.
#[test]
fn simulate_noise_statistics_and_thread_independence() {
    let d = 2;
    // A = diag(√p) on x, zero on t, c = 0 → Φ = ½ p ‖x‖², u = −p x.
    let pgain = 2.0f64;
    let sq = pgain.sqrt();
    let a = vec![sq, 0.0, 0.0, 0.0, sq, 0.0, 0.0, 0.0, 0.0];
    let p = quadratic_otflow(d, a, 3, vec![0.0; 3]);
    let ctl = Controller::new(Arc::new(OtFlow::<f64>::new(&p).unwrap()), None).unwrap();
    let dynamics = Integrator {
        dim: d,
        gain: 1.0,
        control_weight: 1.0,
    };
    let (steps, sigma, paths) = (20, 0.5, 20_000);
    let opts = SimulateOptions {
        x0: vec![1.0, -1.0],
        t0: 0.0,
        t1: 1.0,
        steps,
        sigma,
        paths,
        seed: 2024,
        keep_trajectories: false,
    };
    let out = ctl.simulate(&dynamics, &opts).unwrap();
    let h = 1.0 / steps as f64;
    let rho = 1.0 - h * pgain;
    let mean = rho.powi(steps as i32);
    let var: f64 = sigma * sigma * h * (0..steps).map(|j| rho.powi(2 * j as i32)).sum::<f64>();
    for j in 0..d {
        let xs: Vec<f64> = (0..paths).map(|i| out.finals[i * d + j]).collect();
        let m = xs.iter().sum::<f64>() / paths as f64;
        let v = xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (paths - 1) as f64;
        let want_m = if j == 0 { mean } else { -mean };
        let se_m = (var / paths as f64).sqrt();
        let se_v = var * (2.0 / (paths - 1) as f64).sqrt();
        assert!(
            (m - want_m).abs() < 4.0 * se_m,
            "mean {m} vs {want_m} (se {se_m})"
        );
        assert!((v - var).abs() < 4.0 * se_v, "var {v} vs {var} (se {se_v})");
    }
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let out1 = one.install(|| ctl.simulate(&dynamics, &opts).unwrap());
    assert!(out1
        .finals
        .iter()
        .zip(&out.finals)
        .all(|(a, b)| a.to_bits() == b.to_bits()));
    let (c, se) = out.cost();
    assert!(c.is_finite() && se > 0.0 && se < c);
}

#[test]
fn diagonal_and_dense_maps_apply_minus_m_grad() {
    // A square diagonal map takes the elementwise path, a dense one the matrix–vector
    // product; both equal −M∇Φ computed here, and the diagonal path does not allocate.
    let d = 7;
    let pot = Arc::new(OtFlow::<f64>::new(&random_otflow(d, 8, 2, 11)).unwrap());
    let x: Vec<f64> = (0..d).map(|i| 0.2 * i as f64 - 0.5).collect();
    let mut grad = vec![0.0; d];
    let mut scratch = vec![0.0; pot.scratch_len()];
    pot.grad(0.4, &x, &mut grad, &mut scratch).unwrap();
    let mut diag = vec![0.0; d * d];
    for i in 0..d {
        diag[i * d + i] = 0.5 + i as f64;
    }
    let mut dense = diag.clone();
    dense[d + 3] = -0.7;
    for m in [diag, dense] {
        let mut ctl = Controller::new(
            pot.clone(),
            Some(ControlMatrix::new(d, d, m.clone()).unwrap()),
        )
        .unwrap();
        let mut u = vec![0.0; d];
        ctl.control(0.4, &x, &mut u).unwrap();
        let (_, allocs) = count_allocs(|| ctl.control(0.4, &x, &mut u).unwrap());
        assert_eq!(allocs, 0);
        for i in 0..d {
            let want: f64 = -(0..d).map(|j| m[i * d + j] * grad[j]).sum::<f64>();
            assert!((u[i] - want).abs() <= 1e-14 * want.abs().max(1.0), "{u:?}");
        }
    }
}
