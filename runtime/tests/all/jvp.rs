//! Jacobian–vector products of the runtime's fields: the MLP's forward-mode JVP and the
//! OT-Flow field's Hessian–vector product against Richardson-extrapolated finite
//! differences of `eval`, against Jacobians written out here (the MLP's layer by layer,
//! the quadratic potential's AᵀA) and the original code's Laplacians, in f64 and f32;
//! block vs single state; Hutchinson's estimate εᵀJε over many probes against the exact
//! divergence and the estimator's known variance; allocation-free single-state paths;
//! typed errors for fields without a JVP and for bad buffers.

// Index loops read several arrays in step, as the formulas are written.
#![allow(clippy::needless_range_loop)]

use crate::common;

use std::sync::Arc;

use socflow_runtime::field::{Field, FnField, Potential};
use socflow_runtime::nn::mlp::Mlp;
use socflow_runtime::nn::otflow::OtFlow;
use socflow_runtime::nn::{Activation, MlpParams, OtFlowParams};
use socflow_runtime::{Error, Real};
use socflow_testkit::golden::{flat, rows, usize_of};
use socflow_testkit::{count_allocs, Rng};

const ACTS: [Activation; 3] = [Activation::Silu, Activation::Tanh, Activation::Softplus];

const MLP_SHAPES: &[(usize, &[usize])] = &[
    (1, &[5]),
    (2, &[16, 16]),
    (3, &[40, 7, 33]),
    (5, &[64]),
    (13, &[31, 65]),
    (24, &[96, 96]),
];

/// (d, m, nTh) of the OT-Flow cases.
const OTFLOW_SHAPES: &[(usize, usize, usize)] =
    &[(1, 4, 2), (2, 16, 2), (3, 8, 3), (5, 32, 4), (12, 64, 2)];

fn random_mlp(d: usize, hidden: &[usize], act: Activation, seed: u64) -> MlpParams {
    let mut g = Rng(seed);
    let mut dims = vec![d + 1];
    dims.extend_from_slice(hidden);
    dims.push(d);
    MlpParams {
        d,
        hidden: hidden.to_vec(),
        activation: act,
        weights: dims
            .windows(2)
            .map(|w| g.vec(w[0] * w[1], 1.5 / (w[0] as f64).sqrt()))
            .collect(),
        biases: dims[1..].iter().map(|&n| g.vec(n, 0.5)).collect(),
    }
}

/// The MLP's Jacobian ∂v/∂x (d × d, row-major) written out plainly in f64:
/// J = W_L diag(σ'(a_{L−1})) W_{L−1} ⋯ diag(σ'(a_0)) W_0[:, :d].
fn mlp_jacobian(p: &MlpParams, t: f64, x: &[f64]) -> Vec<f64> {
    let d = p.d;
    let act_d = |a: f64| -> (f64, f64) {
        match p.activation {
            Activation::Silu => {
                let s = 1.0 / (1.0 + (-a).exp());
                (a * s, s * (1.0 + a * (1.0 - s)))
            }
            Activation::Tanh => (a.tanh(), 1.0 - a.tanh().powi(2)),
            Activation::Softplus => (
                a.max(0.0) + (-a.abs()).exp().ln_1p(),
                1.0 / (1.0 + (-a).exp()),
            ),
        }
    };
    let mut h: Vec<f64> = x.iter().copied().chain([t]).collect();
    // jac: rows = current width, d columns; the input's Jacobian is [I; 0].
    let mut jac: Vec<Vec<f64>> = (0..=d)
        .map(|i| (0..d).map(|k| f64::from(u8::from(i == k))).collect())
        .collect();
    let n = p.weights.len();
    for (l, (w, b)) in p.weights.iter().zip(&p.biases).enumerate() {
        let n_in = h.len();
        let a: Vec<f64> = b
            .iter()
            .enumerate()
            .map(|(o, bo)| bo + (0..n_in).map(|i| w[o * n_in + i] * h[i]).sum::<f64>())
            .collect();
        let wj: Vec<Vec<f64>> = (0..b.len())
            .map(|o| {
                (0..d)
                    .map(|k| (0..n_in).map(|i| w[o * n_in + i] * jac[i][k]).sum())
                    .collect()
            })
            .collect();
        if l + 1 == n {
            return wj.into_iter().flatten().collect();
        }
        let (hs, ds): (Vec<f64>, Vec<f64>) = a.iter().map(|&v| act_d(v)).unzip();
        h = hs;
        jac = wj
            .into_iter()
            .zip(&ds)
            .map(|(row, &dv)| row.into_iter().map(|v| v * dv).collect())
            .collect();
    }
    unreachable!("an MLP has an output layer")
}

fn random_otflow(d: usize, m: usize, n_th: usize, seed: u64) -> OtFlowParams {
    common::random_otflow(d, m, n_th, seed)
}

/// f(t, x) and (∂f/∂x)·u in f64, through the single-state paths of a `T` field.
fn jvp<T: Real>(f: &dyn Field<T>, t: f64, x: &[f64], u: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let d = f.dim();
    let xs: Vec<T> = x.iter().map(|&v| T::of(v)).collect();
    let us: Vec<T> = u.iter().map(|&v| T::of(v)).collect();
    let (mut v, mut jv) = (vec![T::zero(); d], vec![T::zero(); d]);
    let mut sc = vec![T::zero(); f.jvp_scratch_len()];
    f.eval_jvp(T::of(t), &xs, &us, &mut v, &mut jv, &mut sc)
        .unwrap();
    // eval gives the same bits for f.
    let mut v2 = vec![T::zero(); d];
    let mut sc2 = vec![T::zero(); f.scratch_len()];
    f.eval(T::of(t), &xs, &mut v2, &mut sc2).unwrap();
    assert!(
        v.iter()
            .zip(&v2)
            .all(|(a, b)| a.f64().to_bits() == b.f64().to_bits()),
        "eval_jvp's f differs from eval's"
    );
    (
        v.iter().map(|a| a.f64()).collect(),
        jv.iter().map(|a| a.f64()).collect(),
    )
}

/// f(t, x) in f64 through `eval` of an f64 field.
fn eval(f: &dyn Field<f64>, t: f64, x: &[f64]) -> Vec<f64> {
    let mut v = vec![0.0; f.dim()];
    let mut sc = vec![0.0; f.scratch_len()];
    f.eval(t, x, &mut v, &mut sc).unwrap();
    v
}

/// The directional derivative of f along u by central differences with one Richardson
/// step, (4D(h/2) − D(h))/3: error O(h⁴) from truncation plus O(ε/h) from rounding.
fn richardson(f: &dyn Field<f64>, t: f64, x: &[f64], u: &[f64], h: f64) -> Vec<f64> {
    let central = |h: f64| -> Vec<f64> {
        let xp: Vec<f64> = x.iter().zip(u).map(|(a, b)| a + h * b).collect();
        let xm: Vec<f64> = x.iter().zip(u).map(|(a, b)| a - h * b).collect();
        eval(f, t, &xp)
            .iter()
            .zip(eval(f, t, &xm))
            .map(|(p, m)| (p - m) / (2.0 * h))
            .collect()
    };
    let (d1, d2) = (central(h), central(h / 2.0));
    d1.iter()
        .zip(d2)
        .map(|(a, b)| (4.0 * b - a) / 3.0)
        .collect()
}

fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0f64, |s, x| s.max(x.abs()))
}

/// Asserts |a − b|∞ ≤ tol·max(1, |b|∞).
fn assert_close(a: &[f64], b: &[f64], tol: f64, ctx: &str) {
    let scale = max_abs(b).max(1.0);
    let err = a
        .iter()
        .zip(b)
        .fold(0.0f64, |s, (x, y)| s.max((x - y).abs()));
    assert!(
        err <= tol * scale,
        "{ctx}: max error {err:e} > {tol:e}·{scale}\n got {a:?}\nwant {b:?}"
    );
}

// ---------------------------------------------------------------------------------------
// MLP
// ---------------------------------------------------------------------------------------

#[test]
fn mlp_jvp_matches_finite_differences_and_jacobian_f64() {
    for act in ACTS {
        for (case, &(d, hidden)) in MLP_SHAPES.iter().enumerate() {
            let p = random_mlp(d, hidden, act, 500 + case as u64);
            let net = Mlp::<f64>::new(&p).unwrap();
            let mut g = Rng(600 + case as u64);
            for _ in 0..3 {
                let x = g.vec(d, 1.0);
                let u = g.vec(d, 1.0);
                let t = g.uniform();
                let ctx = format!("{act:?} d={d} hidden={hidden:?}");
                let (_, jv) = jvp::<f64>(&net, t, &x, &u);
                let fd = richardson(&net, t, &x, &u, 1e-3);
                assert_close(&jv, &fd, 1e-7, &format!("{ctx}: JVP vs finite differences"));
                // Against the Jacobian written out: J·u, and every column J·e_k.
                let jac = mlp_jacobian(&p, t, &x);
                let ju: Vec<f64> = (0..d)
                    .map(|i| (0..d).map(|k| jac[i * d + k] * u[k]).sum())
                    .collect();
                assert_close(&jv, &ju, 1e-12, &format!("{ctx}: JVP vs J·u"));
                let mut tr = 0.0;
                for k in 0..d {
                    let e: Vec<f64> = (0..d).map(|j| f64::from(u8::from(j == k))).collect();
                    let (_, col) = jvp::<f64>(&net, t, &x, &e);
                    let want: Vec<f64> = (0..d).map(|i| jac[i * d + k]).collect();
                    assert_close(&col, &want, 1e-12, &format!("{ctx}: column {k}"));
                    tr += col[k];
                }
                // Σ_k e_kᵀ J e_k is the exact divergence the field reports.
                let mut v = vec![0.0; d];
                let mut sc = vec![0.0; net.scratch_len()];
                let div = net.eval_div(t, &x, &mut v, &mut sc).unwrap();
                let scale = max_abs(&jac).max(1.0) * d as f64;
                assert!(
                    (tr - div).abs() <= 1e-12 * scale,
                    "{ctx}: Σ e_kᵀJe_k {tr} vs eval_div {div}"
                );
            }
        }
    }
}

#[test]
fn mlp_jvp_f32_matches_f64_jacobian() {
    for act in ACTS {
        for (case, &(d, hidden)) in MLP_SHAPES.iter().enumerate() {
            let p = random_mlp(d, hidden, act, 700 + case as u64);
            // Weights rounded to f32 first: the comparison measures the arithmetic.
            let p32 = Mlp::<f32>::new(&p).unwrap().params();
            let n32 = Mlp::<f32>::new(&p32).unwrap();
            let mut g = Rng(800 + case as u64);
            let x: Vec<f64> = g.vec(d, 1.0).iter().map(|&v| v as f32 as f64).collect();
            let t = 0.375;
            let jac = mlp_jacobian(&p32, t, &x);
            // Sums over the widths of O(1) terms in f32, layer after layer.
            let width = hidden.iter().copied().max().unwrap_or(1) as f64;
            let tol = 4e-6 * width.sqrt() * (hidden.len() + 1) as f64;
            for k in 0..d.min(4) {
                let e: Vec<f64> = (0..d).map(|j| f64::from(u8::from(j == k))).collect();
                let (_, col) = jvp::<f32>(&n32, t, &x, &e);
                let want: Vec<f64> = (0..d).map(|i| jac[i * d + k]).collect();
                assert_close(
                    &col,
                    &want,
                    tol,
                    &format!("f32 {act:?} d={d} hidden={hidden:?} column {k}"),
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// OT-Flow
// ---------------------------------------------------------------------------------------

#[test]
fn otflow_jvp_matches_finite_differences_and_is_symmetric() {
    for (case, &(d, m, n_th)) in OTFLOW_SHAPES.iter().enumerate() {
        let p = random_otflow(d, m, n_th, 40 + case as u64);
        let net = OtFlow::<f64>::new(&p).unwrap();
        let mut g = Rng(50 + case as u64);
        for _ in 0..3 {
            let x = g.vec(d, 1.0);
            let (a, b) = (g.vec(d, 1.0), g.vec(d, 1.0));
            let t = g.uniform();
            let ctx = format!("(d,m,nTh)=({d},{m},{n_th})");
            let (v, ja) = jvp::<f64>(&net, t, &x, &a);
            let (_, jb) = jvp::<f64>(&net, t, &x, &b);
            let fd = richardson(&net, t, &x, &a, 1e-3);
            assert_close(&ja, &fd, 1e-7, &format!("{ctx}: JVP vs finite differences"));
            // The field is −∇ₓΦ: its Jacobian −∇ₓ²Φ is symmetric, bᵀ(Ja) = aᵀ(Jb).
            let (bja, ajb): (f64, f64) = (
                b.iter().zip(&ja).map(|(x, y)| x * y).sum(),
                a.iter().zip(&jb).map(|(x, y)| x * y).sum(),
            );
            let scale = max_abs(&ja).max(max_abs(&jb)).max(1.0) * d as f64;
            assert!(
                (bja - ajb).abs() <= 1e-12 * scale,
                "{ctx}: bᵀJa {bja} vs aᵀJb {ajb}"
            );
            // grad_hvp gives ∇ₓΦ (bitwise the Potential's) and +∇²Φ·a.
            let mut gr = vec![0.0; d];
            let mut hv = vec![0.0; d];
            let mut sc = vec![0.0; net.hvp_scratch_len()];
            let (phi, dt) = net.grad_hvp(t, &x, &a, &mut gr, &mut hv, &mut sc).unwrap();
            let mut gr2 = vec![0.0; d];
            let mut sc2 = vec![0.0; Potential::scratch_len(&net)];
            let (phi2, dt2) = net.grad(t, &x, &mut gr2, &mut sc2).unwrap();
            assert_eq!(
                (phi.to_bits(), dt.to_bits()),
                (phi2.to_bits(), dt2.to_bits())
            );
            assert!(gr.iter().zip(&gr2).all(|(p, q)| p.to_bits() == q.to_bits()));
            assert!(gr
                .iter()
                .zip(&v)
                .all(|(p, q)| p.to_bits() == (-q).to_bits()));
            assert!(hv
                .iter()
                .zip(&ja)
                .all(|(p, q)| p.to_bits() == (-q).to_bits()));
        }
    }
}

#[test]
fn otflow_hessian_trace_matches_reference_laplacian() {
    let cases = socflow_testkit::golden::cases();
    let mut checked = 0;
    for c in &cases {
        let p = OtFlowParams::from_state_dict(
            usize_of(&c["d"]),
            usize_of(&c["m"]),
            usize_of(&c["nTh"]),
            usize_of(&c["r"]),
            &mut socflow_testkit::golden::state_dict(c),
        )
        .unwrap();
        let d = p.d;
        let net = OtFlow::<f64>::new(&p).unwrap();
        let s = rows(&c["s"]);
        let trh = flat(&c["trH"]);
        // A few states per case: the trace costs d products.
        for (i, si) in s.iter().enumerate().take(3) {
            let mut tr = 0.0;
            let mut hv = vec![0.0; d];
            let mut gr = vec![0.0; d];
            let mut sc = vec![0.0; net.hvp_scratch_len()];
            for k in 0..d {
                let e: Vec<f64> = (0..d).map(|j| f64::from(u8::from(j == k))).collect();
                net.grad_hvp(si[d], &si[..d], &e, &mut gr, &mut hv, &mut sc)
                    .unwrap();
                tr += hv[k];
            }
            assert!(
                (tr - trh[i]).abs() <= 1e-11 * trh[i].abs().max(1.0),
                "d={d} m={} nTh={} state {i}: Σ e_kᵀ∇²Φe_k {tr} vs reference ΔΦ {}",
                p.m,
                p.n_th,
                trh[i]
            );
            checked += 1;
        }
    }
    assert!(checked >= 10, "checked {checked} reference states");
}

#[test]
fn quadratic_potential_hessian_is_ata() {
    // w = 0: Φ = ½ sᵀ(AᵀA)s + cᵀs + c₀, so ∇ₓ²Φ = (AᵀA)[0:d, 0:d] exactly.
    for &(d, r) in &[(1usize, 2usize), (3, 4), (6, 3)] {
        let mut g = Rng(90 + d as u64);
        let a = g.vec(r * (d + 1), 0.7);
        let p = common::quadratic_otflow(d, a.clone(), r, g.vec(d + 1, 0.3));
        let h = common::ata(&a, r, d + 1);
        for precision in ["f64", "f32"] {
            for _ in 0..3 {
                let x = g.vec(d, 1.0);
                let u = g.vec(d, 1.0);
                let t = g.uniform();
                let want: Vec<f64> = (0..d)
                    .map(|i| -(0..d).map(|k| h[i * (d + 1) + k] * u[k]).sum::<f64>())
                    .collect();
                let (got, tol) = if precision == "f64" {
                    (
                        jvp::<f64>(&OtFlow::<f64>::new(&p).unwrap(), t, &x, &u).1,
                        1e-14,
                    )
                } else {
                    // f32 parameters and inputs: a few ulps of the products' sizes.
                    (
                        jvp::<f32>(&OtFlow::<f32>::new(&p).unwrap(), t, &x, &u).1,
                        2e-6,
                    )
                };
                let scale = max_abs(&h) * max_abs(&u) * d as f64;
                let err = got
                    .iter()
                    .zip(&want)
                    .fold(0.0f64, |s, (p, q)| s.max((p - q).abs()));
                assert!(
                    err <= tol * scale.max(1.0),
                    "{precision} d={d} r={r}: −(AᵀA)u error {err:e}: {got:?} vs {want:?}"
                );
            }
        }
    }
}

#[test]
fn otflow_jvp_f32_agrees_with_f64() {
    for (case, &(d, m, n_th)) in OTFLOW_SHAPES.iter().enumerate() {
        let p = random_otflow(d, m, n_th, 70 + case as u64);
        let p32 = OtFlow::<f32>::new(&p).unwrap().params();
        let (n64, n32) = (
            OtFlow::<f64>::new(&p32).unwrap(),
            OtFlow::<f32>::new(&p32).unwrap(),
        );
        let mut g = Rng(80 + case as u64);
        let x: Vec<f64> = g.vec(d, 1.0).iter().map(|&v| v as f32 as f64).collect();
        let u: Vec<f64> = g.vec(d, 1.0).iter().map(|&v| v as f32 as f64).collect();
        let t = 0.25;
        let (_, a) = jvp::<f64>(&n64, t, &x, &u);
        let (_, b) = jvp::<f32>(&n32, t, &x, &u);
        // As the gradient's f32 test: sums of ~m·(d+1) O(1) terms, twice (two sweeps).
        let tol = 4e-5 * (m as f64).sqrt() * n_th as f64;
        assert_close(&b, &a, tol, &format!("f32 (d,m,nTh)=({d},{m},{n_th})"));
    }
}

// ---------------------------------------------------------------------------------------
// Block paths
// ---------------------------------------------------------------------------------------

/// The block JVP against the single-state one, its `v` against `eval_block`, and its
/// rows against another split of the same states (bitwise).
fn block_case<T: Real>(f: &dyn Field<T>, rows: usize, tol: f64, ctx: &str) {
    let d = f.dim();
    let mut g = Rng(4242);
    let x: Vec<T> = g.vec(rows * d, 1.0).into_iter().map(T::of).collect();
    let u: Vec<T> = g.vec(rows * d, 1.0).into_iter().map(T::of).collect();
    let t: Vec<T> = (0..rows).map(|_| T::of(g.uniform())).collect();
    let mut sc = vec![T::zero(); f.block_jvp_scratch_len(rows).max(f.block_scratch_len(rows))];
    let (mut v, mut jv) = (vec![T::zero(); rows * d], vec![T::zero(); rows * d]);
    f.eval_block_jvp(&t, &x, &u, &mut v, &mut jv, &mut sc)
        .unwrap();
    let mut v2 = vec![T::zero(); rows * d];
    f.eval_block(&t, &x, &mut v2, &mut sc).unwrap();
    let bits = |a: &[T], b: &[T]| {
        a.iter()
            .zip(b)
            .all(|(p, q)| p.f64().to_bits() == q.f64().to_bits())
    };
    assert!(
        bits(&v, &v2),
        "{ctx}: eval_block_jvp's f differs from eval_block's"
    );
    // Another split: blocks of 7 rows give the same bits.
    let (mut vs, mut js) = (vec![T::zero(); rows * d], vec![T::zero(); rows * d]);
    for s in (0..rows).step_by(7) {
        let e = (s + 7).min(rows);
        f.eval_block_jvp(
            &t[s..e],
            &x[s * d..e * d],
            &u[s * d..e * d],
            &mut vs[s * d..e * d],
            &mut js[s * d..e * d],
            &mut sc,
        )
        .unwrap();
    }
    assert!(
        bits(&jv, &js) && bits(&v, &vs),
        "{ctx}: rows depend on the block split"
    );
    // Single state, to rounding.
    let mut ss = vec![T::zero(); f.jvp_scratch_len()];
    let (mut vi, mut ji) = (vec![T::zero(); d], vec![T::zero(); d]);
    for i in 0..rows {
        let r = i * d..(i + 1) * d;
        f.eval_jvp(
            t[i],
            &x[r.clone()],
            &u[r.clone()],
            &mut vi,
            &mut ji,
            &mut ss,
        )
        .unwrap();
        let want: Vec<f64> = ji.iter().map(|v| v.f64()).collect();
        let got: Vec<f64> = jv[r].iter().map(|v| v.f64()).collect();
        assert_close(&got, &want, tol, &format!("{ctx}: row {i}"));
    }
}

#[test]
fn block_jvp_equals_single_state() {
    for act in ACTS {
        let p = random_mlp(5, &[48, 40], act, 31);
        let (n64, n32) = (Mlp::<f64>::new(&p).unwrap(), Mlp::<f32>::new(&p).unwrap());
        block_case::<f64>(&n64, 300, 1e-13, &format!("MLP f64 {act:?}"));
        block_case::<f32>(&n32, 300, 1e-5, &format!("MLP f32 {act:?}"));
    }
    // OT-Flow: GEMM chunks beside the gradient's (f bitwise eval_block's).
    let p = random_otflow(4, 16, 3, 32);
    let (n64, n32) = (
        OtFlow::<f64>::new(&p).unwrap(),
        OtFlow::<f32>::new(&p).unwrap(),
    );
    block_case::<f64>(&n64, 150, 1e-13, "OT-Flow f64");
    block_case::<f32>(&n32, 150, 1e-5, "OT-Flow f32");
    let p = random_otflow(12, 64, 2, 33);
    let n64 = OtFlow::<f64>::new(&p).unwrap();
    block_case::<f64>(&n64, 70, 1e-13, "OT-Flow f64 d=12");
}

// ---------------------------------------------------------------------------------------
// Hutchinson's estimator
// ---------------------------------------------------------------------------------------

/// The Jacobian (d × d, row-major) assembled from JVPs with the basis vectors.
fn jacobian_by_jvp(f: &dyn Field<f64>, t: f64, x: &[f64]) -> Vec<f64> {
    let d = f.dim();
    let mut jac = vec![0.0; d * d];
    for k in 0..d {
        let e: Vec<f64> = (0..d).map(|j| f64::from(u8::from(j == k))).collect();
        let (_, col) = jvp::<f64>(f, t, x, &e);
        for i in 0..d {
            jac[i * d + k] = col[i];
        }
    }
    jac
}

/// Checks n draws of εᵀJε: mean within 4 standard errors of tr J, and sample variance
/// within 4 of its own standard deviations, √((m₄ − s⁴)/n), of the known variance.
/// With `known_var`, the variance formula over the assembled Jacobian must give it.
/// Returns the standard error.
fn hutchinson_case(
    f: &dyn Field<f64>,
    t: f64,
    x: &[f64],
    gaussian: bool,
    n: usize,
    seed: u64,
    known_var: Option<f64>,
) -> f64 {
    let d = f.dim();
    let jac = jacobian_by_jvp(f, t, x);
    let mut v = vec![0.0; d];
    let mut sc = vec![0.0; f.scratch_len()];
    let exact = f.eval_div(t, x, &mut v, &mut sc).unwrap();
    // Var εᵀJε = Σ_{i<j} (J_ij + J_ji)² for Rademacher ε (the diagonal is exact), plus
    // 2 Σ_i J_ii² for Gaussian ε: ½‖J + Jᵀ‖²_F over i ≠ j, or over all i, j.
    let mut var = 0.0;
    for i in 0..d {
        for j in 0..d {
            if i != j || gaussian {
                var += 0.5 * (jac[i * d + j] + jac[j * d + i]).powi(2);
            }
        }
    }
    if let Some(k) = known_var {
        assert!((var - k).abs() <= 1e-12 * k, "variance {var} vs known {k}");
    }
    let mut g = Rng(seed);
    let draws: Vec<f64> = (0..n)
        .map(|_| {
            let e: Vec<f64> = if gaussian {
                g.vec(d, 1.0)
            } else {
                (0..d)
                    .map(|_| if g.next_u64() >> 63 == 1 { 1.0 } else { -1.0 })
                    .collect()
            };
            let (_, je) = jvp::<f64>(f, t, x, &e);
            e.iter().zip(&je).map(|(a, b)| a * b).sum()
        })
        .collect();
    let nf = n as f64;
    let mean = draws.iter().sum::<f64>() / nf;
    let s2 = draws.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (nf - 1.0);
    let m4 = draws.iter().map(|v| (v - mean).powi(4)).sum::<f64>() / nf;
    let se = (s2 / nf).sqrt();
    let noise = if gaussian { "Gaussian" } else { "Rademacher" };
    assert!(
        (mean - exact).abs() < 4.0 * se,
        "{noise} n={n}: mean εᵀJε {mean} vs tr J {exact}, standard error {se:e}"
    );
    let sd_s2 = ((m4 - s2 * s2).max(0.0) / nf).sqrt();
    assert!(
        (s2 - var).abs() < 4.0 * sd_s2 + 1e-12 * var.max(1.0),
        "{noise} n={n}: sample variance {s2} vs formula {var} (sd {sd_s2:e})"
    );
    se
}

#[test]
fn hutchinson_estimate_converges_to_exact_divergence() {
    let mlp = Mlp::<f64>::new(&random_mlp(5, &[32, 32], Activation::Tanh, 11)).unwrap();
    let otf = OtFlow::<f64>::new(&random_otflow(4, 16, 3, 12)).unwrap();
    let mut g = Rng(13);
    let fields: [(&dyn Field<f64>, &str); 2] = [(&mlp, "MLP"), (&otf, "OT-Flow")];
    for (f, name) in fields {
        let x = g.vec(f.dim(), 1.0);
        for gaussian in [false, true] {
            let mut prev = f64::INFINITY;
            for (k, n) in [250usize, 1000, 4000].into_iter().enumerate() {
                // The standard error is s/√n with s checked against the known
                // standard deviation inside: four times the draws, half of it.
                let se = hutchinson_case(f, 0.3, &x, gaussian, n, 100 + k as u64, None);
                assert!(se < prev, "{name}: standard error {se} after {prev}");
                prev = se;
            }
        }
    }
}

#[test]
fn rademacher_variance_of_linear_field_is_known() {
    // The quadratic potential's field is linear, v = −(AᵀA)[0:d, :]s − c: its Jacobian
    // M = −(AᵀA)[0:d, 0:d] is constant and symmetric, and the Rademacher estimate's
    // variance is 2 Σ_{i≠j} M_ij² (checked inside hutchinson_case against draws).
    let (d, r) = (4, 5);
    let mut g = Rng(21);
    let a = g.vec(r * (d + 1), 0.7);
    let p = common::quadratic_otflow(d, a.clone(), r, g.vec(d + 1, 0.3));
    let net = OtFlow::<f64>::new(&p).unwrap();
    let h = common::ata(&a, r, d + 1);
    let var: f64 = (0..d)
        .flat_map(|i| (0..d).map(move |j| (i, j)))
        .filter(|(i, j)| i != j)
        .map(|(i, j)| 2.0 * h[i * (d + 1) + j].powi(2))
        .sum();
    assert!(var > 0.1, "a non-trivial case: variance {var}");
    let x = g.vec(d, 1.0);
    hutchinson_case(&net, 0.5, &x, false, 4000, 22, Some(var));
}

// ---------------------------------------------------------------------------------------
// Allocation, errors
// ---------------------------------------------------------------------------------------

#[test]
fn single_state_jvp_does_not_allocate() {
    let mlp = Mlp::<f32>::new(&random_mlp(3, &[64, 64], Activation::Silu, 5)).unwrap();
    let otf = OtFlow::<f64>::new(&random_otflow(3, 32, 3, 6)).unwrap();
    let mlp_dyn: Arc<dyn Field<f32>> = Arc::new(mlp.clone());
    let x = [0.1, -0.4, 0.7];
    let u = [1.0, -1.0, 1.0];
    let mut sc32 = vec![0.0f32; mlp.jvp_scratch_len()];
    let mut sc64 = vec![0.0f64; otf.jvp_scratch_len()];
    let (mut v32, mut j32) = ([0.0f32; 3], [0.0f32; 3]);
    let (mut v64, mut j64) = ([0.0f64; 3], [0.0f64; 3]);
    let x32 = x.map(|v| v as f32);
    let u32_ = u.map(|v| v as f32);
    let (_, n) = count_allocs(|| {
        for _ in 0..10 {
            mlp.eval_jvp(0.5, &x32, &u32_, &mut v32, &mut j32, &mut sc32)
                .unwrap();
            mlp_dyn
                .eval_jvp(0.5, &x32, &u32_, &mut v32, &mut j32, &mut sc32)
                .unwrap();
            otf.eval_jvp(0.5, &x, &u, &mut v64, &mut j64, &mut sc64)
                .unwrap();
        }
    });
    assert_eq!(n, 0, "single-state JVPs allocated {n} times");
}

#[test]
fn fields_without_jvp_and_bad_buffers_are_typed_errors() {
    let f = FnField::with_div(
        2,
        |_t: f64, x: &[f64], v: &mut [f64]| {
            v[0] = x[1];
            v[1] = -x[0];
        },
        |_t: f64, _x: &[f64]| 0.0,
    );
    let (mut v, mut jv) = ([0.0; 2], [0.0; 2]);
    let err = Field::<f64>::eval_jvp(&f, 0.0, &[1.0, 2.0], &[1.0, 0.0], &mut v, &mut jv, &mut [])
        .unwrap_err();
    assert!(matches!(err, Error::Unsupported(_)), "{err}");
    assert!(err.to_string().contains("Jacobian-vector product"), "{err}");
    let err = Field::<f64>::eval_block_jvp(
        &f,
        &[0.0],
        &[1.0, 2.0],
        &[1.0, 0.0],
        &mut v,
        &mut jv,
        &mut [],
    )
    .unwrap_err();
    assert!(matches!(err, Error::Unsupported(_)), "{err}");
    // Through a trait object the error is the same (forwarding keeps the default).
    let boxed: Box<dyn Field<f64>> = Box::new(f);
    assert!(matches!(
        boxed.eval_jvp(0.0, &[1.0, 2.0], &[1.0, 0.0], &mut v, &mut jv, &mut []),
        Err(Error::Unsupported(_))
    ));

    let mlp = Mlp::<f64>::new(&random_mlp(2, &[8], Activation::Tanh, 1)).unwrap();
    let otf = OtFlow::<f64>::new(&random_otflow(2, 8, 2, 2)).unwrap();
    for f in [&mlp as &dyn Field<f64>, &otf] {
        let mut sc = vec![0.0; f.jvp_scratch_len()];
        let bad_tangent = f.eval_jvp(0.0, &[1.0, 2.0], &[1.0], &mut v, &mut jv, &mut sc);
        assert!(
            matches!(bad_tangent, Err(Error::Length { .. })),
            "{bad_tangent:?}"
        );
        let bad_out = f.eval_jvp(
            0.0,
            &[1.0, 2.0],
            &[1.0, 0.0],
            &mut v,
            &mut [0.0; 3],
            &mut sc,
        );
        assert!(matches!(bad_out, Err(Error::Length { .. })), "{bad_out:?}");
        let short = f.eval_jvp(0.0, &[1.0, 2.0], &[1.0, 0.0], &mut v, &mut jv, &mut sc[..1]);
        assert!(matches!(short, Err(Error::Length { .. })), "{short:?}");
        let mut bsc = vec![0.0; f.block_jvp_scratch_len(2)];
        let bad_block = f.eval_block_jvp(
            &[0.0, 0.1],
            &[1.0, 2.0, 3.0, 4.0],
            &[1.0, 0.0],
            &mut [0.0; 4],
            &mut [0.0; 4],
            &mut bsc,
        );
        assert!(
            matches!(bad_block, Err(Error::Length { .. })),
            "{bad_block:?}"
        );
    }
}
