//! The OT-Flow potential against the original code's float64 reference values, finite
//! differences, its own f64 evaluation (for f32), and itself (block vs single state).

// Index loops read several arrays in step, as the formulas are written.
#![allow(clippy::needless_range_loop)]

use serde_json::Value;
use socflow_runtime::field::{Field, Potential};
use socflow_runtime::nn::otflow::OtFlow;
use socflow_runtime::nn::OtFlowParams;
use socflow_runtime::{Error, Real};
use socflow_testkit::golden::{flat, rows, usize_of};
use socflow_testkit::{count_allocs, rel_close, Rng};

fn golden() -> Value {
    socflow_testkit::golden::json()
}

fn params_from_case(c: &Value) -> OtFlowParams {
    OtFlowParams::from_state_dict(
        usize_of(&c["d"]),
        usize_of(&c["m"]),
        usize_of(&c["nTh"]),
        usize_of(&c["r"]),
        &mut socflow_testkit::golden::state_dict(c),
    )
    .expect("reference parameters are complete")
}

fn random_params(d: usize, m: usize, n_th: usize, seed: u64) -> OtFlowParams {
    let mut sd = socflow_testkit::otflow_state_dict(d, m, n_th, seed);
    OtFlowParams::from_state_dict(d, m, n_th, (d + 1).min(10), &mut sd)
        .expect("complete parameters")
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

struct Eval {
    phi: f64,
    grad: Vec<f64>,
    dt: f64,
    lap: f64,
}

fn eval<T: Real>(net: &OtFlow<T>, t: f64, x: &[f64]) -> Eval {
    let xs: Vec<T> = x.iter().map(|&v| T::of(v)).collect();
    let mut g = vec![T::zero(); x.len()];
    let mut sc = vec![T::zero(); Potential::scratch_len(net)];
    let (phi, dt, lap) = net.grad_lap(T::of(t), &xs, &mut g, &mut sc).unwrap();
    // grad alone and value alone agree with grad_lap exactly (same sweeps).
    let mut g2 = vec![T::zero(); x.len()];
    let (phi2, dt2) = net.grad(T::of(t), &xs, &mut g2, &mut sc).unwrap();
    assert_eq!(phi.f64().to_bits(), phi2.f64().to_bits());
    assert_eq!(dt.f64().to_bits(), dt2.f64().to_bits());
    assert!(g
        .iter()
        .zip(&g2)
        .all(|(a, b)| a.f64().to_bits() == b.f64().to_bits()));
    let phi3 = net.value(T::of(t), &xs, &mut sc).unwrap();
    assert_eq!(phi.f64().to_bits(), phi3.f64().to_bits());
    Eval {
        phi: phi.f64(),
        grad: g.iter().map(|v| v.f64()).collect(),
        dt: dt.f64(),
        lap: lap.f64(),
    }
}

// ---------------------------------------------------------------------------------------
// Reference values from the original code
// ---------------------------------------------------------------------------------------

#[test]
fn golden_phi_grad_trace() {
    let g = golden();
    let cases = g["cases"].as_array().expect("cases");
    assert!(!cases.is_empty());
    let mut checked = 0;
    for c in cases {
        let p = params_from_case(c);
        let d = p.d;
        let net = OtFlow::<f64>::new(&p).unwrap();
        let s = rows(&c["s"]);
        let phi = flat(&c["phi"]);
        let grad = rows(&c["grad"]);
        let trh = flat(&c["trH"]);
        assert_eq!(s.len(), phi.len());
        for (i, si) in s.iter().enumerate() {
            assert_eq!(si.len(), d + 1);
            let e = eval(&net, si[d], &si[..d]);
            let case = format!("d={d} m={} nTh={} sample {i}", p.m, p.n_th);
            assert!(
                rel_close(e.phi, phi[i], 1e-12),
                "{case}: Φ {} vs {}",
                e.phi,
                phi[i]
            );
            // The reference gradient is ∇_sΦ: ∇ₓΦ then ∂ₜΦ.
            assert_eq!(grad[i].len(), d + 1);
            let gnorm = grad[i].iter().fold(0.0f64, |a, v| a.max(v.abs()));
            for k in 0..d {
                assert!(
                    (e.grad[k] - grad[i][k]).abs() <= 1e-12 * gnorm,
                    "{case}: ∂Φ/∂x{k} {} vs {}",
                    e.grad[k],
                    grad[i][k]
                );
                assert!(rel_close(e.grad[k], grad[i][k], 1e-10), "{case}: ∂x{k}");
            }
            assert!(
                (e.dt - grad[i][d]).abs() <= 1e-12 * gnorm,
                "{case}: ∂ₜΦ {} vs {}",
                e.dt,
                grad[i][d]
            );
            // trH is the Laplacian over x only, including trace((AᵀA)[0:d,0:d]).
            assert!(
                rel_close(e.lap, trh[i], 1e-12),
                "{case}: ΔΦ {} vs {}",
                e.lap,
                trh[i]
            );
            checked += 1;
        }
    }
    assert!(checked >= 80, "checked {checked} reference states");
}

/// The original `odefun`: state [x, l, c_L, c_H] at time t ↦
/// [−∇ₓΦ/α₀, −ΔΦ/α₀, ½‖dx‖², |−∂ₜΦ + α₀·½‖dx‖²|].
fn odefun(net: &OtFlow<f64>, alpha0: f64, t: f64, z: &[f64]) -> Vec<f64> {
    let d = Potential::dim(net);
    let e = eval(net, t, &z[..d]);
    let dx: Vec<f64> = e.grad.iter().map(|g| -g / alpha0).collect();
    let dv = 0.5 * dx.iter().map(|v| v * v).sum::<f64>();
    let mut out = dx;
    out.push(-e.lap / alpha0);
    out.push(dv);
    out.push((-e.dt + alpha0 * dv).abs());
    out
}

#[test]
fn golden_odefun() {
    let g = golden();
    for c in g["cases"].as_array().unwrap() {
        let p = params_from_case(c);
        let net = OtFlow::<f64>::new(&p).unwrap();
        let t = c["odefun_t"].as_f64().unwrap();
        let alpha0 = flat(&c["otflow_problem"]["alph"])[0];
        for (zin, zout) in rows(&c["odefun_in"]).iter().zip(rows(&c["odefun_out"])) {
            let got = odefun(&net, alpha0, t, zin);
            assert_eq!(got.len(), zout.len());
            let scale = zout.iter().fold(0.0f64, |a, v| a.max(v.abs()));
            for (k, (a, b)) in got.iter().zip(&zout).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-12 * scale,
                    "d={} odefun entry {k}: {a} vs {b}",
                    p.d
                );
            }
        }
    }
}

/// The whole OT-Flow objective: RK4 with `nt` steps on [0, 1] from the reference states'
/// x, costs (mean c_L, mean NLL, mean c_H) and J = α·costs.
#[test]
fn golden_otflow_problem() {
    let g = golden();
    for c in g["cases"].as_array().unwrap() {
        let p = params_from_case(c);
        let d = p.d;
        let net = OtFlow::<f64>::new(&p).unwrap();
        let prob = &c["otflow_problem"];
        let nt = usize_of(&prob["nt"]);
        let alph = flat(&prob["alph"]);
        let h = 1.0 / nt as f64;
        let xs = rows(&c["odefun_in"]);
        let (mut cl, mut cc, mut cr) = (0.0, 0.0, 0.0);
        for x0 in &xs {
            let mut z = x0.clone();
            let mut tk = 0.0;
            for _ in 0..nt {
                let f = |t: f64, z: &[f64]| odefun(&net, alph[0], t, z);
                let axpy = |a: &[f64], s: f64, b: &[f64]| -> Vec<f64> {
                    a.iter().zip(b).map(|(x, y)| x + s * y).collect()
                };
                let k1: Vec<f64> = f(tk, &z).iter().map(|v| h * v).collect();
                let mut zn = axpy(&z, 1.0 / 6.0, &k1);
                let k2: Vec<f64> = f(tk + h / 2.0, &axpy(&z, 0.5, &k1))
                    .iter()
                    .map(|v| h * v)
                    .collect();
                zn = axpy(&zn, 2.0 / 6.0, &k2);
                let k3: Vec<f64> = f(tk + h / 2.0, &axpy(&z, 0.5, &k2))
                    .iter()
                    .map(|v| h * v)
                    .collect();
                zn = axpy(&zn, 2.0 / 6.0, &k3);
                let k4: Vec<f64> = f(tk + h, &axpy(&z, 1.0, &k3))
                    .iter()
                    .map(|v| h * v)
                    .collect();
                zn = axpy(&zn, 1.0 / 6.0, &k4);
                z = zn;
                tk += h;
            }
            cl += z[d + 1];
            cr += z[d + 2];
            let nll = -(z[..d]
                .iter()
                .map(|v| -0.5 * (2.0 * std::f64::consts::PI).ln() - v * v / 2.0)
                .sum::<f64>()
                + z[d]);
            cc += nll;
        }
        let n = xs.len() as f64;
        let (cl, cc, cr) = (cl / n, cc / n, cr / n);
        let j = alph[0] * cl + alph[1] * cc + alph[2] * cr;
        let ctx = format!("d={}", d);
        for (name, got, want) in [
            ("costL", cl, prob["costL"].as_f64().unwrap()),
            ("costC", cc, prob["costC"].as_f64().unwrap()),
            ("costR", cr, prob["costR"].as_f64().unwrap()),
            ("J", j, prob["J"].as_f64().unwrap()),
        ] {
            assert!(rel_close(got, want, 1e-11), "{ctx}: {name} {got} vs {want}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Finite differences on random parameters
// ---------------------------------------------------------------------------------------

const SHAPES: &[(usize, usize, usize)] = &[
    (1, 4, 2),
    (2, 8, 2),
    (3, 6, 3),
    (5, 16, 4),
    (12, 64, 2),
    (17, 20, 3),
    (33, 40, 5),
];

#[test]
fn finite_differences_grad_dt_laplacian() {
    for (case, &(d, m, n_th)) in SHAPES.iter().enumerate() {
        let p = random_params(d, m, n_th, 100 + case as u64);
        let net = OtFlow::<f64>::new(&p).unwrap();
        let mut g = Rng(7 + case as u64);
        for _ in 0..3 {
            let x = g.vec(d, 1.0);
            let t = g.uniform();
            let e = eval(&net, t, &x);
            let phi_at = |t: f64, x: &[f64]| eval(&net, t, x).phi;
            let h = 1e-5;
            let scale = 1.0 + e.grad.iter().fold(e.dt.abs(), |a, v| a.max(v.abs()));
            for k in 0..d {
                let mut xp = x.clone();
                let mut xm = x.clone();
                xp[k] += h;
                xm[k] -= h;
                let fd = (phi_at(t, &xp) - phi_at(t, &xm)) / (2.0 * h);
                assert!(
                    (fd - e.grad[k]).abs() <= 1e-7 * scale,
                    "(d,m,nTh)=({d},{m},{n_th}) ∂x{k}: fd {fd} vs {}",
                    e.grad[k]
                );
            }
            let fd_t = (phi_at(t + h, &x) - phi_at(t - h, &x)) / (2.0 * h);
            assert!(
                (fd_t - e.dt).abs() <= 1e-7 * scale,
                "(d,m,nTh)=({d},{m},{n_th}) ∂t: fd {fd_t} vs {}",
                e.dt
            );
            // Laplacian: central differences of the (checked) gradient, and second
            // differences of Φ itself.
            let mut fd_lap = 0.0;
            let mut fd2_lap = 0.0;
            let h2 = 1e-4;
            for k in 0..d {
                let mut xp = x.clone();
                let mut xm = x.clone();
                xp[k] += h;
                xm[k] -= h;
                fd_lap += (eval(&net, t, &xp).grad[k] - eval(&net, t, &xm).grad[k]) / (2.0 * h);
                let mut xp = x.clone();
                let mut xm = x.clone();
                xp[k] += h2;
                xm[k] -= h2;
                fd2_lap += (phi_at(t, &xp) - 2.0 * e.phi + phi_at(t, &xm)) / (h2 * h2);
            }
            let lscale = 1.0 + e.lap.abs();
            assert!(
                (fd_lap - e.lap).abs() <= 1e-7 * lscale * d as f64,
                "(d,m,nTh)=({d},{m},{n_th}) Δ: fd {fd_lap} vs {}",
                e.lap
            );
            assert!(
                (fd2_lap - e.lap).abs() <= 1e-4 * lscale * d as f64 * (1.0 + e.phi.abs()),
                "(d,m,nTh)=({d},{m},{n_th}) Δ: second differences {fd2_lap} vs {}",
                e.lap
            );
        }
    }
}

#[test]
fn activation_is_stable_for_large_arguments() {
    // Huge pre-activations: σ(u) = |u| + log(1 + e^{-2|u|}) must stay finite and the
    // gradient must match the linear regime.
    let mut p = random_params(3, 8, 2, 5);
    for v in p.k[0].iter_mut() {
        *v *= 1e3;
    }
    let net = OtFlow::<f64>::new(&p).unwrap();
    let net32 = OtFlow::<f32>::new(&p).unwrap();
    let x = [3.0, -2.0, 1.0];
    let e = eval(&net, 0.5, &x);
    let e32 = eval(&net32, 0.5, &x);
    assert!(e.phi.is_finite() && e.lap.is_finite());
    assert!(e.grad.iter().all(|v| v.is_finite()));
    assert!(e32.phi.is_finite() && e32.grad.iter().all(|v| v.is_finite()));
    assert!(rel_close(e32.phi, e.phi, 1e-5), "{} vs {}", e32.phi, e.phi);
}

#[test]
fn nan_input_gives_nan_not_garbage() {
    let p = random_params(4, 8, 3, 11);
    let net = OtFlow::<f64>::new(&p).unwrap();
    let mut g = vec![0.0; 4];
    let mut sc = vec![0.0; Potential::scratch_len(&net)];
    let (phi, dt, lap) = net
        .grad_lap(0.3, &[0.1, f64::NAN, 0.2, 0.3], &mut g, &mut sc)
        .unwrap();
    assert!(phi.is_nan() && dt.is_nan() && lap.is_nan());
    assert!(g.iter().all(|v| v.is_nan()));
}

// ---------------------------------------------------------------------------------------
// Precision and paths
// ---------------------------------------------------------------------------------------

#[test]
fn f32_agrees_with_f64() {
    for (case, &(d, m, n_th)) in SHAPES
        .iter()
        .chain(&[(100, 256, 2), (12, 64, 2)])
        .enumerate()
    {
        let p = random_params(d, m, n_th, 300 + case as u64);
        let n64 = OtFlow::<f64>::new(&p).unwrap();
        // Round the parameters to f32 first, so that the comparison measures the
        // arithmetic, not the rounding of the weights.
        let p32 = OtFlow::<f32>::new(&p).unwrap().params();
        let n64r = OtFlow::<f64>::new(&p32).unwrap();
        let n32 = OtFlow::<f32>::new(&p32).unwrap();
        let mut g = Rng(case as u64);
        for _ in 0..4 {
            let x: Vec<f64> = g.vec(d, 1.0).iter().map(|&v| v as f32 as f64).collect();
            let t = g.uniform() as f32 as f64;
            let a = eval(&n64r, t, &x);
            let b = eval(&n32, t, &x);
            let gs = 1.0 + a.grad.iter().fold(a.dt.abs(), |s, v| s.max(v.abs()));
            // Sums of ~m·(d+1) terms of size O(1) in f32: allow a few hundred ulps of
            // the scale.
            let tol = 2e-5 * (m as f64).sqrt() * gs;
            assert!(
                (a.phi - b.phi).abs() <= tol * (1.0 + a.phi.abs()),
                "Φ {} vs {}",
                a.phi,
                b.phi
            );
            for k in 0..d {
                assert!(
                    (a.grad[k] - b.grad[k]).abs() <= tol,
                    "(d,m,nTh)=({d},{m},{n_th}) ∂x{k}: f64 {} f32 {}",
                    a.grad[k],
                    b.grad[k]
                );
            }
            assert!((a.dt - b.dt).abs() <= tol, "∂t {} vs {}", a.dt, b.dt);
            assert!(
                (a.lap - b.lap).abs() <= tol * (1.0 + a.lap.abs()) * (d as f64).sqrt(),
                "Δ {} vs {}",
                a.lap,
                b.lap
            );
            // And the unrounded f64 model stays close (weights rounded to f32).
            let c = eval(&n64, t, &x);
            assert!((c.phi - a.phi).abs() <= 1e-4 * (1.0 + c.phi.abs()));
        }
    }
}

fn block_case<T: Real>(d: usize, m: usize, n_th: usize, seed: u64, rows: usize, tol: f64) {
    let p = random_params(d, m, n_th, seed);
    let net = OtFlow::<T>::new(&p).unwrap();
    let mut g = Rng(seed ^ 0xABCD);
    let x: Vec<T> = g.vec(rows * d, 1.0).into_iter().map(T::of).collect();
    let t: Vec<T> = (0..rows).map(|_| T::of(g.uniform())).collect();
    let mut grad = vec![T::zero(); rows * d];
    let mut phi = vec![T::zero(); rows];
    let mut dt = vec![T::zero(); rows];
    let mut lap = vec![T::zero(); rows];
    let mut sc = vec![T::zero(); net.grad_block_scratch_len(true)];
    net.grad_block(
        &t,
        &x,
        &mut grad,
        &mut phi,
        &mut dt,
        Some(&mut lap),
        &mut sc,
    )
    .unwrap();
    // Without the Laplacian: same gradients (to rounding; different chunking).
    let mut grad2 = vec![T::zero(); rows * d];
    let mut phi2 = vec![T::zero(); rows];
    let mut dt2 = vec![T::zero(); rows];
    let mut sc2 = vec![T::zero(); net.grad_block_scratch_len(false)];
    net.grad_block(&t, &x, &mut grad2, &mut phi2, &mut dt2, None, &mut sc2)
        .unwrap();

    let mut ss = vec![T::zero(); Potential::scratch_len(&net)];
    for i in 0..rows {
        let xi = &x[i * d..(i + 1) * d];
        let mut gi = vec![T::zero(); d];
        let (p1, d1, l1) = net.grad_lap(t[i], xi, &mut gi, &mut ss).unwrap();
        let scale = 1.0 + gi.iter().fold(d1.f64().abs(), |s, v| s.max(v.f64().abs()));
        let ctx = format!("{} (d,m,nTh)=({d},{m},{n_th}) row {i}", T::NAME);
        assert!(
            (phi[i].f64() - p1.f64()).abs() <= tol * (1.0 + p1.f64().abs()),
            "{ctx}: Φ"
        );
        assert!(
            (phi2[i].f64() - p1.f64()).abs() <= tol * (1.0 + p1.f64().abs()),
            "{ctx}: Φ"
        );
        assert!((dt[i].f64() - d1.f64()).abs() <= tol * scale, "{ctx}: ∂t");
        assert!((dt2[i].f64() - d1.f64()).abs() <= tol * scale, "{ctx}: ∂t");
        assert!(
            (lap[i].f64() - l1.f64()).abs() <= tol * (1.0 + l1.f64().abs()),
            "{ctx}: Δ {} vs {}",
            lap[i],
            l1
        );
        for k in 0..d {
            assert!(
                (grad[i * d + k].f64() - gi[k].f64()).abs() <= tol * scale,
                "{ctx}: ∂x{k}"
            );
            assert!(
                (grad2[i * d + k].f64() - gi[k].f64()).abs() <= tol * scale,
                "{ctx}: ∂x{k}"
            );
        }
    }

    // Bitwise: any row computed alone, or inside another split, gives the same bits.
    let splits = [1usize, 3, 7, rows / 2 + 1];
    for &len in &splits {
        let mut start = 0;
        while start < rows {
            let n = len.min(rows - start);
            let mut gb = vec![T::zero(); n * d];
            let (mut pb, mut db, mut lb) =
                (vec![T::zero(); n], vec![T::zero(); n], vec![T::zero(); n]);
            net.grad_block(
                &t[start..start + n],
                &x[start * d..(start + n) * d],
                &mut gb,
                &mut pb,
                &mut db,
                Some(&mut lb),
                &mut sc,
            )
            .unwrap();
            for i in 0..n {
                let r = start + i;
                assert_eq!(
                    pb[i].f64().to_bits(),
                    phi[r].f64().to_bits(),
                    "split {len} row {r} Φ"
                );
                assert_eq!(
                    db[i].f64().to_bits(),
                    dt[r].f64().to_bits(),
                    "split {len} row {r} ∂t"
                );
                assert_eq!(
                    lb[i].f64().to_bits(),
                    lap[r].f64().to_bits(),
                    "split {len} row {r} Δ"
                );
                for k in 0..d {
                    assert_eq!(
                        gb[i * d + k].f64().to_bits(),
                        grad[r * d + k].f64().to_bits(),
                        "split {len} row {r} ∂x{k}"
                    );
                }
            }
            let mut gb2 = vec![T::zero(); n * d];
            net.grad_block(
                &t[start..start + n],
                &x[start * d..(start + n) * d],
                &mut gb2,
                &mut pb,
                &mut db,
                None,
                &mut sc2,
            )
            .unwrap();
            for i in 0..n {
                let r = start + i;
                assert_eq!(
                    pb[i].f64().to_bits(),
                    phi2[r].f64().to_bits(),
                    "split {len} row {r} Φ"
                );
                for k in 0..d {
                    assert_eq!(
                        gb2[i * d + k].f64().to_bits(),
                        grad2[r * d + k].f64().to_bits(),
                        "split {len} row {r} ∂x{k} (no Laplacian)"
                    );
                }
            }
            start += n;
        }
    }

    // Field block paths: v = −∇ₓΦ, div = −ΔΦ, same bits as grad_block.
    let mut v = vec![T::zero(); rows * d];
    let mut div = vec![T::zero(); rows];
    let mut fs = vec![T::zero(); Field::block_scratch_len(&net, rows)];
    net.eval_block_div(&t, &x, &mut v, &mut div, &mut fs)
        .unwrap();
    for i in 0..rows {
        assert_eq!((-div[i]).f64().to_bits(), lap[i].f64().to_bits());
        for k in 0..d {
            assert_eq!(
                (-v[i * d + k]).f64().to_bits(),
                grad[i * d + k].f64().to_bits()
            );
        }
    }
    net.eval_block(&t, &x, &mut v, &mut fs).unwrap();
    for i in 0..rows * d {
        assert_eq!((-v[i]).f64().to_bits(), grad2[i].f64().to_bits());
    }
}

#[test]
fn block_equals_single_state_f64() {
    for (case, &(d, m, n_th)) in SHAPES.iter().enumerate() {
        block_case::<f64>(d, m, n_th, 500 + case as u64, 70, 1e-12);
    }
    block_case::<f64>(100, 256, 2, 42, 40, 1e-12);
}

#[test]
fn block_equals_single_state_f32() {
    for (case, &(d, m, n_th)) in SHAPES.iter().enumerate() {
        block_case::<f32>(d, m, n_th, 700 + case as u64, 45, 2e-5 * (m as f64).sqrt());
    }
}

#[test]
fn single_state_paths_do_not_allocate() {
    for (d, m, n_th) in [(2usize, 8usize, 2usize), (12, 64, 2), (100, 256, 3)] {
        let p = random_params(d, m, n_th, 21);
        let n32 = OtFlow::<f32>::new(&p).unwrap();
        let n64 = OtFlow::<f64>::new(&p).unwrap();
        let x: Vec<f64> = Rng(4).vec(d, 1.0);
        let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        let (mut g, mut g32) = (vec![0.0; d], vec![0.0f32; d]);
        let mut sc = vec![0.0; Potential::scratch_len(&n64)];
        let mut sc32 = vec![0.0f32; Potential::scratch_len(&n32)];
        // Warm up (run-time dispatch resolves on the first call).
        n64.grad_lap(0.1, &x, &mut g, &mut sc).unwrap();
        n32.grad_lap(0.1, &x32, &mut g32, &mut sc32).unwrap();
        let (_, count) = count_allocs(|| {
            n64.value(0.2, &x, &mut sc).unwrap();
            n64.grad(0.2, &x, &mut g, &mut sc).unwrap();
            n64.grad_lap(0.2, &x, &mut g, &mut sc).unwrap();
            n64.eval(0.2, &x, &mut g, &mut sc).unwrap();
            n64.eval_div(0.2, &x, &mut g, &mut sc).unwrap();
            n32.grad(0.2, &x32, &mut g32, &mut sc32).unwrap();
            n32.grad_lap(0.2, &x32, &mut g32, &mut sc32).unwrap();
        });
        assert_eq!(
            count, 0,
            "(d,m,nTh)=({d},{m},{n_th}): single-state calls allocated"
        );
    }
}

#[test]
fn field_is_minus_gradient() {
    let p = random_params(6, 12, 3, 9);
    let net = OtFlow::<f64>::new(&p).unwrap();
    let x = [0.3, -0.2, 1.1, 0.0, -1.5, 0.7];
    let e = eval(&net, 0.25, &x);
    let mut v = [0.0; 6];
    let mut sc = vec![0.0; Field::scratch_len(&net)];
    net.eval(0.25, &x, &mut v, &mut sc).unwrap();
    for k in 0..6 {
        assert_eq!(v[k], -e.grad[k]);
    }
    let div = net.eval_div(0.25, &x, &mut v, &mut sc).unwrap();
    assert_eq!(div, -e.lap);
}

#[test]
fn params_round_trip() {
    let p = random_params(5, 16, 4, 3);
    let net = OtFlow::<f64>::new(&p).unwrap();
    assert_eq!(net.params(), p);
    let p32 = OtFlow::<f32>::new(&p).unwrap().params();
    assert_eq!(OtFlow::<f32>::new(&p32).unwrap().params(), p32);
    assert!(p32.w.iter().zip(&p.w).all(|(a, b)| *a == *b as f32 as f64));
}

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

#[test]
fn constructor_rejects_bad_shapes_and_values() {
    let good = random_params(3, 5, 3, 1);
    assert!(OtFlow::<f64>::new(&good).is_ok());

    let shape = |f: &dyn Fn(&mut OtFlowParams)| {
        let mut p = good.clone();
        f(&mut p);
        OtFlow::<f64>::new(&p).unwrap_err()
    };
    assert!(matches!(
        shape(&|p| p.k[0].pop().map(drop).unwrap_or(())),
        Error::Shape { .. }
    ));
    assert!(matches!(shape(&|p| p.k[2].push(0.0)), Error::Shape { .. }));
    assert!(matches!(
        shape(&|p| p.b[1].pop().map(drop).unwrap_or(())),
        Error::Shape { .. }
    ));
    assert!(matches!(shape(&|p| p.w.push(1.0)), Error::Shape { .. }));
    assert!(matches!(shape(&|p| p.a.push(1.0)), Error::Shape { .. }));
    assert!(matches!(
        shape(&|p| p.c_weight.pop().map(drop).unwrap_or(())),
        Error::Shape { .. }
    ));
    assert!(matches!(
        shape(&|p| drop(p.k.pop())),
        Error::InvalidArgument(_)
    ));
    assert!(matches!(
        shape(&|p| drop(p.b.pop())),
        Error::InvalidArgument(_)
    ));
    assert!(matches!(shape(&|p| p.d = 0), Error::InvalidArgument(_)));
    assert!(matches!(shape(&|p| p.m = 0), Error::InvalidArgument(_)));
    assert!(matches!(shape(&|p| p.n_th = 1), Error::InvalidArgument(_)));
    assert!(matches!(shape(&|p| p.r = 0), Error::InvalidArgument(_)));
    assert!(matches!(
        shape(&|p| p.d = usize::MAX),
        Error::InvalidArgument(_)
    ));
    assert!(matches!(
        shape(&|p| {
            p.m = 60_000;
            p.n_th = 1000;
        }),
        Error::Limit(_)
    ));
    // d changed without the tensors: a shape error, not a panic.
    assert!(matches!(shape(&|p| p.d = 4), Error::Shape { .. }));
    assert!(matches!(shape(&|p| p.m = 6), Error::Shape { .. }));

    for (name, f) in [
        (
            "K0",
            &(|p: &mut OtFlowParams| p.k[0][3] = f64::NAN) as &dyn Fn(&mut OtFlowParams),
        ),
        ("K2", &|p| p.k[2][0] = f64::INFINITY),
        ("b1", &|p| p.b[1][4] = f64::NAN),
        ("w", &|p| p.w[0] = f64::NEG_INFINITY),
        ("A", &|p| p.a[2] = f64::NAN),
        ("c.weight", &|p| p.c_weight[1] = f64::NAN),
        ("c.bias", &|p| p.c_bias = f64::NAN),
    ] {
        assert!(matches!(shape(f), Error::NonFinite(_)), "{name}");
    }
}

#[test]
fn calls_reject_bad_lengths() {
    let p = random_params(3, 5, 2, 2);
    let net = OtFlow::<f64>::new(&p).unwrap();
    let n = Potential::scratch_len(&net);
    let mut sc = vec![0.0; n];
    let mut g = [0.0; 3];
    assert!(matches!(
        net.grad(0.0, &[1.0, 2.0], &mut g, &mut sc),
        Err(Error::Length { .. })
    ));
    assert!(matches!(
        net.grad(0.0, &[1.0, 2.0, 3.0], &mut g[..2], &mut sc),
        Err(Error::Length { .. })
    ));
    assert!(matches!(
        net.grad_lap(0.0, &[1.0, 2.0, 3.0], &mut g, &mut sc[..n - 1]),
        Err(Error::Length { .. })
    ));
    assert!(matches!(
        net.grad(
            0.0,
            &[1.0, 2.0, 3.0],
            &mut g,
            &mut sc[..net.grad_scratch_len() - 1]
        ),
        Err(Error::Length { .. })
    ));
    assert!(net
        .grad(
            0.0,
            &[1.0, 2.0, 3.0],
            &mut g,
            &mut sc[..net.grad_scratch_len()]
        )
        .is_ok());
    let mut v = [0.0; 6];
    let (mut ph, mut dt) = ([0.0; 2], [0.0; 2]);
    let mut bs = vec![0.0; net.grad_block_scratch_len(false)];
    assert!(matches!(
        net.grad_block(
            &[0.0, 0.1],
            &[0.0; 5],
            &mut v,
            &mut ph,
            &mut dt,
            None,
            &mut bs
        ),
        Err(Error::Length { .. })
    ));
    assert!(matches!(
        net.grad_block(
            &[0.0, 0.1],
            &[0.0; 6],
            &mut v,
            &mut ph[..1],
            &mut dt,
            None,
            &mut bs
        ),
        Err(Error::Length { .. })
    ));
    let mut lap = [0.0; 2];
    assert!(matches!(
        net.grad_block(
            &[0.0, 0.1],
            &[0.0; 6],
            &mut v,
            &mut ph,
            &mut dt,
            Some(&mut lap),
            &mut bs
        ),
        Err(Error::Length { .. })
    ));
    // Empty block: nothing to do.
    assert!(net
        .grad_block(&[], &[], &mut [], &mut [], &mut [], None, &mut bs)
        .is_ok());
}
