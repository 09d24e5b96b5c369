//! The MLP field against a straightforward re-implementation written here, finite
//! differences of its divergence, its own f64 evaluation (for f32), and itself (block
//! vs single state).

// Index loops read several arrays in step, as the formulas are written.
#![allow(clippy::needless_range_loop)]

use socflow_runtime::field::Field;
use socflow_runtime::nn::mlp::Mlp;
use socflow_runtime::nn::{Activation, MlpParams};
use socflow_runtime::{Error, Real};
use socflow_testkit::{count_allocs, Rng};

const ACTS: [Activation; 3] = [Activation::Silu, Activation::Tanh, Activation::Softplus];

fn random_params(d: usize, hidden: &[usize], act: Activation, seed: u64) -> MlpParams {
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

/// The field written out plainly, in f64 with the standard library's functions.
fn reference(p: &MlpParams, t: f64, x: &[f64]) -> Vec<f64> {
    let act = |a: f64| match p.activation {
        Activation::Silu => a / (1.0 + (-a).exp()),
        Activation::Tanh => a.tanh(),
        Activation::Softplus => a.max(0.0) + (-a.abs()).exp().ln_1p(),
    };
    let mut h: Vec<f64> = x.iter().copied().chain([t]).collect();
    let n = p.weights.len();
    for (l, (w, b)) in p.weights.iter().zip(&p.biases).enumerate() {
        let n_in = h.len();
        let out: Vec<f64> = b
            .iter()
            .enumerate()
            .map(|(o, bo)| bo + (0..n_in).map(|i| w[o * n_in + i] * h[i]).sum::<f64>())
            .collect();
        h = if l + 1 == n {
            out
        } else {
            out.into_iter().map(act).collect()
        };
    }
    h
}

fn eval<T: Real>(net: &Mlp<T>, t: f64, x: &[f64]) -> (Vec<f64>, f64) {
    let d = x.len();
    let xs: Vec<T> = x.iter().map(|&v| T::of(v)).collect();
    let mut v = vec![T::zero(); d];
    let mut sc = vec![T::zero(); net.scratch_len()];
    let div = net.eval_div(T::of(t), &xs, &mut v, &mut sc).unwrap();
    // eval alone gives the same bits as eval_div.
    let mut v2 = vec![T::zero(); d];
    net.eval(T::of(t), &xs, &mut v2, &mut sc).unwrap();
    assert!(v
        .iter()
        .zip(&v2)
        .all(|(a, b)| a.f64().to_bits() == b.f64().to_bits()));
    (v.iter().map(|a| a.f64()).collect(), div.f64())
}

const SHAPES: &[(usize, &[usize])] = &[
    (1, &[5]),
    (2, &[16, 16]),
    (3, &[40, 7, 33]),
    (5, &[64]),
    (2, &[256, 256, 256]),
    (13, &[31, 65]),
    (64, &[256, 256, 256]),
];

#[test]
fn matches_reference_implementation() {
    for act in ACTS {
        for (case, &(d, hidden)) in SHAPES.iter().enumerate() {
            let p = random_params(d, hidden, act, 10 + case as u64);
            let net = Mlp::<f64>::new(&p).unwrap();
            let mut g = Rng(case as u64);
            for _ in 0..3 {
                let x = g.vec(d, 1.5);
                let t = g.uniform();
                let want = reference(&p, t, &x);
                let (got, _) = eval(&net, t, &x);
                let scale = want.iter().fold(1.0f64, |s, v| s.max(v.abs()));
                for k in 0..d {
                    assert!(
                        (got[k] - want[k]).abs() <= 1e-12 * scale,
                        "{act:?} d={d} hidden={hidden:?} v[{k}]: {} vs {}",
                        got[k],
                        want[k]
                    );
                }
            }
        }
    }
}

#[test]
fn divergence_matches_finite_differences() {
    for act in ACTS {
        for (case, &(d, hidden)) in SHAPES.iter().enumerate() {
            let p = random_params(d, hidden, act, 40 + case as u64);
            let net = Mlp::<f64>::new(&p).unwrap();
            let mut g = Rng(99 + case as u64);
            let x = g.vec(d, 1.0);
            let t = g.uniform();
            let (_, div) = eval(&net, t, &x);
            let h = 1e-5;
            let mut fd = 0.0;
            let mut scale = 1.0f64;
            for k in 0..d {
                let mut xp = x.clone();
                let mut xm = x.clone();
                xp[k] += h;
                xm[k] -= h;
                let dk = (reference(&p, t, &xp)[k] - reference(&p, t, &xm)[k]) / (2.0 * h);
                scale = scale.max(dk.abs());
                fd += dk;
            }
            assert!(
                (fd - div).abs() <= 1e-7 * scale * d as f64,
                "{act:?} d={d} hidden={hidden:?}: div {div} vs fd {fd}"
            );
        }
    }
}

#[test]
fn f32_agrees_with_f64() {
    for act in ACTS {
        for (case, &(d, hidden)) in SHAPES.iter().enumerate() {
            let p = random_params(d, hidden, act, 70 + case as u64);
            // Weights rounded to f32 first: the comparison measures the arithmetic.
            let p32 = Mlp::<f32>::new(&p).unwrap().params();
            let n64 = Mlp::<f64>::new(&p32).unwrap();
            let n32 = Mlp::<f32>::new(&p32).unwrap();
            let mut g = Rng(5 + case as u64);
            let x: Vec<f64> = g.vec(d, 1.0).iter().map(|&v| v as f32 as f64).collect();
            let t = 0.375;
            let (a, da) = eval(&n64, t, &x);
            let (b, db) = eval(&n32, t, &x);
            let width = hidden.iter().copied().max().unwrap_or(1) as f64;
            let scale = a.iter().fold(1.0f64, |s, v| s.max(v.abs()));
            let tol = 2e-6 * width.sqrt() * hidden.len() as f64 * scale;
            for k in 0..d {
                assert!(
                    (a[k] - b[k]).abs() <= tol,
                    "{act:?} d={d} v[{k}]: f64 {} f32 {}",
                    a[k],
                    b[k]
                );
            }
            assert!(
                (da - db).abs() <= tol * d as f64 * (1.0 + da.abs()),
                "{act:?} d={d} div: f64 {da} f32 {db}"
            );
        }
    }
}

fn block_case<T: Real>(d: usize, hidden: &[usize], act: Activation, rows: usize, tol: f64) {
    let p = random_params(d, hidden, act, 1234 + d as u64);
    let net = Mlp::<T>::new(&p).unwrap();
    let mut g = Rng(77);
    let x: Vec<T> = g.vec(rows * d, 1.0).into_iter().map(T::of).collect();
    let t: Vec<T> = (0..rows).map(|_| T::of(g.uniform())).collect();
    let mut sc = vec![T::zero(); net.block_scratch_len(rows)];
    let mut v = vec![T::zero(); rows * d];
    net.eval_block(&t, &x, &mut v, &mut sc).unwrap();
    let mut vd = vec![T::zero(); rows * d];
    let mut div = vec![T::zero(); rows];
    net.eval_block_div(&t, &x, &mut vd, &mut div, &mut sc)
        .unwrap();

    let mut ss = vec![T::zero(); net.scratch_len()];
    for i in 0..rows {
        let xi = &x[i * d..(i + 1) * d];
        let mut vi = vec![T::zero(); d];
        let di = net.eval_div(t[i], xi, &mut vi, &mut ss).unwrap();
        let scale = vi.iter().fold(1.0f64, |s, v| s.max(v.f64().abs()));
        let ctx = format!("{} {act:?} d={d} row {i}", T::NAME);
        for k in 0..d {
            assert!(
                (v[i * d + k].f64() - vi[k].f64()).abs() <= tol * scale,
                "{ctx}: v[{k}]"
            );
            assert!(
                (vd[i * d + k].f64() - vi[k].f64()).abs() <= tol * scale,
                "{ctx}: v[{k}]"
            );
        }
        assert!(
            (div[i].f64() - di.f64()).abs() <= tol * (1.0 + di.f64().abs()) * d as f64,
            "{ctx}: div {} vs {}",
            div[i],
            di
        );
    }

    // Bitwise: a row alone, or in any other split, gives the same bits.
    for len in [1usize, 5, rows / 3 + 1] {
        let mut start = 0;
        while start < rows {
            let n = len.min(rows - start);
            let (tb, xb) = (&t[start..start + n], &x[start * d..(start + n) * d]);
            let mut vb = vec![T::zero(); n * d];
            net.eval_block(tb, xb, &mut vb, &mut sc).unwrap();
            let mut vdb = vec![T::zero(); n * d];
            let mut db = vec![T::zero(); n];
            net.eval_block_div(tb, xb, &mut vdb, &mut db, &mut sc)
                .unwrap();
            for i in 0..n {
                let r = start + i;
                assert_eq!(
                    db[i].f64().to_bits(),
                    div[r].f64().to_bits(),
                    "split {len} row {r}"
                );
                for k in 0..d {
                    assert_eq!(
                        vb[i * d + k].f64().to_bits(),
                        v[r * d + k].f64().to_bits(),
                        "split {len} row {r} v[{k}]"
                    );
                    assert_eq!(
                        vdb[i * d + k].f64().to_bits(),
                        vd[r * d + k].f64().to_bits(),
                        "split {len} row {r} v[{k}] (with divergence)"
                    );
                }
            }
            start += n;
        }
    }
}

#[test]
fn block_equals_single_state() {
    for act in ACTS {
        block_case::<f64>(2, &[16, 16], act, 37, 1e-12);
        block_case::<f64>(3, &[40, 7, 33], act, 50, 1e-12);
        block_case::<f32>(2, &[16, 16], act, 37, 1e-5);
    }
    // Sizes of the sampling benchmarks, crossing a chunk boundary.
    let rows = Mlp::<f32>::new(&random_params(2, &[8], Activation::Silu, 1))
        .unwrap()
        .preferred_block_rows();
    block_case::<f32>(2, &[256, 256, 256], Activation::Silu, rows + 3, 2e-4);
    block_case::<f64>(64, &[256, 256, 256], Activation::Tanh, 21, 1e-12);
}

#[test]
fn large_preactivations_stay_finite() {
    for act in ACTS {
        let mut p = random_params(3, &[12, 12], act, 8);
        for w in p.weights.iter_mut() {
            for v in w.iter_mut() {
                *v *= 300.0;
            }
        }
        for net_f32 in [false, true] {
            let x = [2.0, -3.0, 1.0];
            let (v, div) = if net_f32 {
                eval(&Mlp::<f32>::new(&p).unwrap(), 0.5, &x)
            } else {
                eval(&Mlp::<f64>::new(&p).unwrap(), 0.5, &x)
            };
            assert!(
                v.iter().all(|a| a.is_finite()) && div.is_finite(),
                "{act:?}"
            );
            if !net_f32 {
                let want = reference(&p, 0.5, &x);
                let scale = want.iter().fold(1.0f64, |s, v| s.max(v.abs()));
                for k in 0..3 {
                    assert!((v[k] - want[k]).abs() <= 1e-12 * scale, "{act:?} v[{k}]");
                }
            }
        }
    }
}

#[test]
fn single_state_paths_do_not_allocate() {
    for act in ACTS {
        for &(d, hidden) in &SHAPES[..6] {
            let p = random_params(d, hidden, act, 3);
            let n64 = Mlp::<f64>::new(&p).unwrap();
            let n32 = Mlp::<f32>::new(&p).unwrap();
            let x = vec![0.3; d];
            let x32 = vec![0.3f32; d];
            let (mut v, mut v32) = (vec![0.0; d], vec![0.0f32; d]);
            let mut sc = vec![0.0; n64.scratch_len()];
            let mut sc32 = vec![0.0f32; n32.scratch_len()];
            n64.eval_div(0.1, &x, &mut v, &mut sc).unwrap();
            n32.eval_div(0.1, &x32, &mut v32, &mut sc32).unwrap();
            let (_, count) = count_allocs(|| {
                n64.eval(0.2, &x, &mut v, &mut sc).unwrap();
                n64.eval_div(0.2, &x, &mut v, &mut sc).unwrap();
                n32.eval(0.2, &x32, &mut v32, &mut sc32).unwrap();
                n32.eval_div(0.2, &x32, &mut v32, &mut sc32).unwrap();
            });
            assert_eq!(count, 0, "{act:?} d={d}: single-state calls allocated");
        }
    }
}

#[test]
fn params_round_trip() {
    let p = random_params(3, &[40, 7, 33], Activation::Tanh, 4);
    assert_eq!(Mlp::<f64>::new(&p).unwrap().params(), p);
    let p32 = Mlp::<f32>::new(&p).unwrap().params();
    assert_eq!(Mlp::<f32>::new(&p32).unwrap().params(), p32);
}

#[test]
fn constructor_rejects_bad_shapes_and_values() {
    let good = random_params(3, &[8, 6], Activation::Silu, 2);
    assert!(Mlp::<f64>::new(&good).is_ok());
    let err = |f: &dyn Fn(&mut MlpParams)| {
        let mut p = good.clone();
        f(&mut p);
        Mlp::<f64>::new(&p).unwrap_err()
    };
    assert!(matches!(
        err(&|p| p.weights[0].push(0.0)),
        Error::Shape { .. }
    ));
    assert!(matches!(
        err(&|p| {
            p.weights[2].pop();
        }),
        Error::Shape { .. }
    ));
    assert!(matches!(
        err(&|p| {
            p.biases[1].pop();
        }),
        Error::Shape { .. }
    ));
    assert!(matches!(err(&|p| p.d = 4), Error::Shape { .. }));
    assert!(matches!(err(&|p| p.hidden[0] = 9), Error::Shape { .. }));
    assert!(matches!(
        err(&|p| drop(p.weights.pop())),
        Error::InvalidArgument(_)
    ));
    assert!(matches!(
        err(&|p| drop(p.biases.pop())),
        Error::InvalidArgument(_)
    ));
    assert!(matches!(
        err(&|p| p.hidden.clear()),
        Error::InvalidArgument(_)
    ));
    assert!(matches!(
        err(&|p| p.hidden[1] = 0),
        Error::InvalidArgument(_)
    ));
    assert!(matches!(err(&|p| p.d = 0), Error::InvalidArgument(_)));
    assert!(matches!(
        err(&|p| p.d = usize::MAX),
        Error::InvalidArgument(_)
    ));
    assert!(matches!(
        err(&|p| {
            p.hidden = vec![60_000; 1000];
        }),
        Error::Limit(_) | Error::InvalidArgument(_)
    ));
    assert!(matches!(
        err(&|p| p.weights[1][3] = f64::NAN),
        Error::NonFinite(_)
    ));
    assert!(matches!(
        err(&|p| p.biases[2][0] = f64::INFINITY),
        Error::NonFinite(_)
    ));
}

#[test]
fn calls_reject_bad_lengths() {
    let p = random_params(3, &[8], Activation::Tanh, 3);
    let net = Mlp::<f64>::new(&p).unwrap();
    let mut sc = vec![0.0; net.scratch_len()];
    let mut v = [0.0; 3];
    assert!(matches!(
        net.eval(0.0, &[1.0, 2.0], &mut v, &mut sc),
        Err(Error::Length { .. })
    ));
    assert!(matches!(
        net.eval(0.0, &[1.0, 2.0, 3.0], &mut v[..2], &mut sc),
        Err(Error::Length { .. })
    ));
    assert!(matches!(
        net.eval_div(0.0, &[1.0, 2.0, 3.0], &mut v, &mut sc[..1]),
        Err(Error::Length { .. })
    ));
    let mut bs = vec![0.0; net.block_scratch_len(2)];
    let mut vb = [0.0; 6];
    assert!(matches!(
        net.eval_block(&[0.0, 0.5], &[0.0; 5], &mut vb, &mut bs),
        Err(Error::Length { .. })
    ));
    assert!(matches!(
        net.eval_block(&[0.0, 0.5], &[0.0; 6], &mut vb, &mut bs[..3]),
        Err(Error::Length { .. })
    ));
    let mut div = [0.0; 1];
    assert!(matches!(
        net.eval_block_div(&[0.0, 0.5], &[0.0; 6], &mut vb, &mut div, &mut bs),
        Err(Error::Length { .. })
    ));
    assert!(net.eval_block(&[], &[], &mut [], &mut bs).is_ok());
}
