//! The autodiff: every op's forward value against an independent formula and its VJP
//! against finite differences (the one gradient checker, in f64); shape and precision
//! errors; exact emulation of half-precision kernels; bytes accounting; the tape's
//! reuse, seeds and accumulation precision.

use half::{bf16, f16};
use socflow_trainer::autodiff::{
    check_gradients, Backend, BinaryOp, Broadcast, CheckOptions, CheckReport, Cpu, CpuBuffer,
    DType, Error, Graph, Reduction, Shape, Storage, Tensor, UnaryOp, Var,
};

type R<T> = socflow_trainer::autodiff::Result<T>;

/// Largest relative error the checker may report for an f64 function.
use socflow_testkit::Rng;

const TOL: f64 = 1e-7;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn t64(rows: usize, cols: usize, data: &[f64]) -> Tensor<Cpu> {
    Tensor::from_f64(&Cpu::new(), rows, cols, data, DType::F64).unwrap()
}

/// Σ (y ⊙ P) for a fixed pseudo-random P of y's shape: a scalar that depends on every
/// element of y with distinct weights.
fn probe(g: &mut Graph<Cpu>, y: Var) -> R<Var> {
    let s = g.shape(y)?;
    let dtype = g.dtype(y)?;
    let mut rng = Rng(0xABCD ^ (s.rows as u64) << 20 ^ s.cols as u64);
    let p = rng.range(s.len(), 0.5, 1.5);
    let p = g.leaf_f64(s.rows, s.cols, &p, dtype, false)?;
    let yp = g.mul(y, p)?;
    g.sum(yp)
}

fn check<F>(what: &str, leaves: &[Tensor<Cpu>], f: F) -> CheckReport
where
    F: FnMut(&mut Graph<Cpu>, &[Var]) -> R<Var>,
{
    let mut g = Graph::new(Cpu::new());
    let rep = check_gradients(&mut g, leaves, f, &CheckOptions::default())
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(rep.checked > 0, "{what}: nothing checked");
    eprintln!(
        "{what}: {} entries, max rel err {:.2e}",
        rep.checked, rep.max_rel_err
    );
    assert!(
        rep.max_rel_err <= TOL,
        "{what}: gradient check failed: {rep}"
    );
    rep
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * a.abs().max(b.abs()).max(1e-300)
}

fn assert_all_close(what: &str, got: &[f64], want: &[f64], rel: f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (&a, &b)) in got.iter().zip(want).enumerate() {
        assert!(close(a, b, rel), "{what}[{i}]: {a} vs {b}");
    }
}

fn naive_matmul(a: &[f64], sa: Shape, ta: bool, b: &[f64], sb: Shape, tb: bool) -> Vec<f64> {
    let at = |i: usize, p: usize| {
        if ta {
            a[p * sa.cols + i]
        } else {
            a[i * sa.cols + p]
        }
    };
    let bt = |p: usize, j: usize| {
        if tb {
            b[j * sb.cols + p]
        } else {
            b[p * sb.cols + j]
        }
    };
    let (m, k) = if ta {
        (sa.cols, sa.rows)
    } else {
        (sa.rows, sa.cols)
    };
    let n = if tb { sb.rows } else { sb.cols };
    let mut c = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            c[i * n + j] = (0..k).map(|p| at(i, p) * bt(p, j)).sum();
        }
    }
    c
}

// Independent f64 formulas of the maps (written differently from the kernels).
fn sig(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn reference(op: UnaryOp, x: f64) -> f64 {
    match op {
        UnaryOp::Neg => -x,
        UnaryOp::Square => x * x,
        UnaryOp::Abs => x.abs(),
        UnaryOp::Sign => x.signum(),
        UnaryOp::Recip => 1.0 / x,
        UnaryOp::Exp => x.exp(),
        UnaryOp::Log => x.ln(),
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Tanh => x.tanh(),
        UnaryOp::Sech2 => 1.0 / x.cosh().powi(2),
        UnaryOp::Sigmoid => sig(x),
        UnaryOp::Silu => x * sig(x),
        // d/dx [x σ(x)] = σ + x σ'.
        UnaryOp::SiluPrime => sig(x) + x * sig(x) * (1.0 - sig(x)),
        // 2σ' + x σ'', σ' = σ(1−σ), σ'' = σ'(1−2σ).
        UnaryOp::SiluSecond => {
            let d1 = sig(x) * (1.0 - sig(x));
            2.0 * d1 + x * d1 * (1.0 - 2.0 * sig(x))
        }
        UnaryOp::Softplus => (1.0 + x.exp()).ln(),
        UnaryOp::LogCosh => (x.exp() + (-x).exp()).ln(),
        // Through e^{ix} = cos x + i sin x would need complex numbers; the half-angle
        // forms are independent of std's sin and cos.
        UnaryOp::Sin => {
            let t = (0.5 * x).tan();
            2.0 * t / (1.0 + t * t)
        }
        UnaryOp::Cos => {
            let t = (0.5 * x).tan();
            (1.0 - t * t) / (1.0 + t * t)
        }
    }
}

/// Inputs inside each map's domain (and away from kinks).
fn domain(op: UnaryOp, rng: &mut Rng, n: usize) -> Vec<f64> {
    match op {
        UnaryOp::Log | UnaryOp::Sqrt | UnaryOp::Recip => rng.range(n, 0.5, 2.5),
        UnaryOp::Abs | UnaryOp::Sign => rng
            .range(n, 0.2, 2.0)
            .into_iter()
            .enumerate()
            .map(|(i, v)| if i % 2 == 0 { v } else { -v })
            .collect(),
        _ => rng.range(n, -3.0, 3.0),
    }
}

// ---------------------------------------------------------------------------------------
// Every op: forward values and the gradient checker
// ---------------------------------------------------------------------------------------

#[test]
fn unary_maps_forward_values() {
    let be = Cpu::new();
    let mut rng = Rng(1);
    for op in UnaryOp::ALL {
        let x = domain(op, &mut rng, 40);
        let y = be.unary(op, &be.upload(&x, DType::F64).unwrap()).unwrap();
        let y = be.download(&y).unwrap();
        // Relative to max(1, |value|): silu'' and silu' cross zero inside the range.
        for (i, &v) in x.iter().enumerate() {
            let want = reference(op, v);
            assert!(
                (y[i] - want).abs() <= 1e-13 * want.abs().max(1.0),
                "{}({v}) = {} vs {want}",
                op.name(),
                y[i]
            );
        }
    }
}

#[test]
fn unary_maps_are_stable_far_out() {
    let be = Cpu::new();
    let x = [-1000.0, -40.0, 40.0, 1000.0];
    let get = |op| {
        be.download(&be.unary(op, &be.upload(&x, DType::F64).unwrap()).unwrap())
            .unwrap()
    };
    // log(2 cosh u) = |u| + log(1 + e^{-2|u|}).
    assert_eq!(get(UnaryOp::LogCosh), vec![1000.0, 40.0, 40.0, 1000.0]);
    let sp = get(UnaryOp::Softplus);
    assert_eq!(sp[3], 1000.0);
    assert_eq!(sp[2], 40.0 + (-40f64).exp().ln_1p());
    assert!(close(sp[1], (-40f64).exp(), 1e-15) && sp[0] >= 0.0 && sp[0] < 1e-300);
    let s = get(UnaryOp::Sigmoid);
    assert!(s[0] >= 0.0 && s[0] < 1e-300 && s[3] == 1.0);
    let h = get(UnaryOp::Sech2);
    assert!(close(h[1], 4.0 * (-80f64).exp(), 1e-12) && h[0] >= 0.0 && h[0] < 1e-300);
    for op in UnaryOp::ALL {
        if matches!(op, UnaryOp::Log | UnaryOp::Sqrt | UnaryOp::Exp) {
            continue;
        }
        assert!(
            get(op).iter().all(|v| !v.is_nan()),
            "{} NaN far out",
            op.name()
        );
    }
}

#[test]
fn unary_maps_gradients() {
    let mut rng = Rng(2);
    for op in UnaryOp::ALL {
        let x = domain(op, &mut rng, 12);
        check(op.name(), &[t64(3, 4, &x)], |g, v| {
            let y = g.unary(op, v[0])?;
            probe(g, y)
        });
    }
}

/// The derivative maps are what the VJPs use: the gradient of Σ f(x) is f'(x) as the
/// forward op computes it, along the chains logcosh → tanh → sech², softplus →
/// sigmoid, silu → silu' → silu''.
#[test]
fn derivative_maps_are_the_vjps() {
    let mut rng = Rng(3);
    let x = rng.range(30, -4.0, 4.0);
    let pairs = [
        (UnaryOp::LogCosh, UnaryOp::Tanh),
        (UnaryOp::Tanh, UnaryOp::Sech2),
        (UnaryOp::Softplus, UnaryOp::Sigmoid),
        (UnaryOp::Silu, UnaryOp::SiluPrime),
        (UnaryOp::SiluPrime, UnaryOp::SiluSecond),
        (UnaryOp::Sin, UnaryOp::Cos),
    ];
    for (f, df) in pairs {
        let mut g = Graph::new(Cpu::new());
        let xv = g.leaf(t64(5, 6, &x), true);
        let y = g.unary(f, xv).unwrap();
        let s = g.sum(y).unwrap();
        let d = g.unary(df, xv).unwrap();
        let grads = g.backward(s, None).unwrap();
        let got = grads.get(xv).unwrap().to_f64(g.backend()).unwrap();
        assert_eq!(got, g.to_f64(d).unwrap(), "{} vs {}", f.name(), df.name());
    }
    // Second order, closed forms: (sech²)' = −2 tanh sech², silu''' from its formula.
    let mut g = Graph::new(Cpu::new());
    let xv = g.leaf(t64(5, 6, &x), true);
    let y = g.sech2(xv).unwrap();
    let s = g.sum(y).unwrap();
    let got = g.backward(s, None).unwrap();
    let got = got.get(xv).unwrap().to_f64(g.backend()).unwrap();
    let want: Vec<f64> = x
        .iter()
        .map(|&v| -2.0 * v.tanh() / v.cosh().powi(2))
        .collect();
    assert_all_close("sech2'", &got, &want, 1e-12);
}

#[test]
fn abs_subgradient_at_zero() {
    let mut g = Graph::new(Cpu::new());
    let x = g.leaf(t64(1, 3, &[-2.0, 0.0, 3.0]), true);
    let y = g.abs(x).unwrap();
    let s = g.sum(y).unwrap();
    let gr = g.backward(s, None).unwrap();
    assert_eq!(
        gr.get(x).unwrap().to_f64(g.backend()).unwrap(),
        vec![-1.0, 0.0, 1.0]
    );
}

/// The stored shapes of A (m × k) and B (k × n) when `ta`/`tb` say they are stored
/// transposed.
fn operand_shapes(m: usize, k: usize, n: usize, ta: bool, tb: bool) -> (Shape, Shape) {
    let sa = if ta {
        Shape::new(k, m)
    } else {
        Shape::new(m, k)
    };
    let sb = if tb {
        Shape::new(n, k)
    } else {
        Shape::new(k, n)
    };
    (sa, sb)
}

#[test]
fn matmul_forward_and_gradients() {
    let mut rng = Rng(4);
    let (m, k, n) = (5, 4, 3);
    for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
        let (sa, sb) = operand_shapes(m, k, n, ta, tb);
        let a = rng.vec(sa.len(), 1.0);
        let b = rng.vec(sb.len(), 1.0);
        let mut g = Graph::new(Cpu::new());
        let av = g.leaf(t64(sa.rows, sa.cols, &a), false);
        let bv = g.leaf(t64(sb.rows, sb.cols, &b), false);
        let c = g.matmul(av, bv, ta, tb).unwrap();
        assert_eq!(g.shape(c).unwrap(), Shape::new(m, n));
        assert_all_close(
            "matmul",
            &g.to_f64(c).unwrap(),
            &naive_matmul(&a, sa, ta, &b, sb, tb),
            1e-13,
        );
        check(
            &format!("matmul ta={ta} tb={tb}"),
            &[t64(sa.rows, sa.cols, &a), t64(sb.rows, sb.cols, &b)],
            |g, v| {
                let c = g.matmul(v[0], v[1], ta, tb)?;
                probe(g, c)
            },
        );
    }
    // The same operand on both sides (AᵀA): contributions accumulate.
    let a = rng.vec(12, 1.0);
    check("AᵀA", &[t64(4, 3, &a)], |g, v| {
        let c = g.matmul(v[0], v[0], true, false)?;
        probe(g, c)
    });
}

#[test]
fn binary_ops_with_every_broadcast() {
    let mut rng = Rng(5);
    let (r, n) = (4, 3);
    let shapes = [
        (Broadcast::None, Shape::new(r, n)),
        (Broadcast::Row, Shape::new(1, n)),
        (Broadcast::Col, Shape::new(r, 1)),
        (Broadcast::Scalar, Shape::SCALAR),
    ];
    for op in [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div] {
        for (bc, sb) in shapes {
            assert_eq!(Broadcast::infer(Shape::new(r, n), sb), Some(bc));
            let a = rng.vec(r * n, 1.0);
            let b = if op == BinaryOp::Div {
                rng.range(sb.len(), 0.5, 2.0)
            } else {
                rng.vec(sb.len(), 1.0)
            };
            let mut g = Graph::new(Cpu::new());
            let av = g.leaf(t64(r, n, &a), false);
            let bv = g.leaf(t64(sb.rows, sb.cols, &b), false);
            let c = match op {
                BinaryOp::Add => g.add(av, bv),
                BinaryOp::Sub => g.sub(av, bv),
                BinaryOp::Mul => g.mul(av, bv),
                BinaryOp::Div => g.div(av, bv),
            }
            .unwrap();
            let want: Vec<f64> = (0..r * n)
                .map(|i| {
                    let (ri, ci) = (i / n, i % n);
                    let y = match bc {
                        Broadcast::None => b[i],
                        Broadcast::Row => b[ci],
                        Broadcast::Col => b[ri],
                        Broadcast::Scalar => b[0],
                    };
                    match op {
                        BinaryOp::Add => a[i] + y,
                        BinaryOp::Sub => a[i] - y,
                        BinaryOp::Mul => a[i] * y,
                        BinaryOp::Div => a[i] / y,
                    }
                })
                .collect();
            assert_eq!(g.to_f64(c).unwrap(), want, "{} {bc:?}", op.name());
            check(
                &format!("{} {bc:?}", op.name()),
                &[t64(r, n, &a), t64(sb.rows, sb.cols, &b)],
                |g, v| {
                    let c = match op {
                        BinaryOp::Add => g.add(v[0], v[1]),
                        BinaryOp::Sub => g.sub(v[0], v[1]),
                        BinaryOp::Mul => g.mul(v[0], v[1]),
                        BinaryOp::Div => g.div(v[0], v[1]),
                    }?;
                    probe(g, c)
                },
            );
        }
    }
    // x ⊙ x and x / x: both operands are the same value.
    let x = rng.range(6, 0.5, 2.0);
    check("x⊙x", &[t64(2, 3, &x)], |g, v| {
        let c = g.mul(v[0], v[0])?;
        probe(g, c)
    });
    check("x/(x+1)", &[t64(2, 3, &x)], |g, v| {
        let x1 = g.add_scalar(v[0], 1.0)?;
        let c = g.div(v[0], x1)?;
        probe(g, c)
    });
}

#[test]
fn affine_maps() {
    let mut rng = Rng(6);
    let x = rng.vec(6, 1.0);
    let mut g = Graph::new(Cpu::new());
    let xv = g.leaf(t64(2, 3, &x), false);
    let y = g.affine(xv, -1.5, 0.25).unwrap();
    let s = g.scale(xv, 3.0).unwrap();
    let a = g.add_scalar(xv, -2.0).unwrap();
    let f = |k: f64, c: f64| x.iter().map(|v| k * v + c).collect::<Vec<_>>();
    assert_eq!(g.to_f64(y).unwrap(), f(-1.5, 0.25));
    assert_eq!(g.to_f64(s).unwrap(), f(3.0, 0.0));
    assert_eq!(g.to_f64(a).unwrap(), f(1.0, -2.0));
    for (name, k, c) in [
        ("scale", 3.0, 0.0),
        ("add_scalar", 1.0, -2.0),
        ("affine", -1.5, 0.25),
    ] {
        check(name, &[t64(2, 3, &x)], |g, v| {
            let y = g.affine(v[0], k, c)?;
            let y2 = g.square(y)?;
            probe(g, y2)
        });
    }
    assert!(matches!(
        g.affine(xv, f64::NAN, 0.0),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn reductions() {
    let mut rng = Rng(7);
    let (r, n) = (4, 5);
    let x = rng.vec(r * n, 1.0);
    let mut g = Graph::new(Cpu::new());
    let xv = g.leaf(t64(r, n, &x), false);
    let row_sums: Vec<f64> = (0..r).map(|i| x[i * n..(i + 1) * n].iter().sum()).collect();
    let col_sums: Vec<f64> = (0..n).map(|j| (0..r).map(|i| x[i * n + j]).sum()).collect();
    let total: f64 = x.iter().sum();
    let sc = g.sum_cols(xv).unwrap();
    let sr = g.sum_rows(xv).unwrap();
    let s = g.sum(xv).unwrap();
    let m = g.mean(xv).unwrap();
    let mr = g.mean_rows(xv).unwrap();
    assert_eq!(g.shape(sc).unwrap(), Shape::new(r, 1));
    assert_eq!(g.shape(sr).unwrap(), Shape::new(1, n));
    assert_eq!(g.shape(s).unwrap(), Shape::SCALAR);
    assert_all_close("sum_cols", &g.to_f64(sc).unwrap(), &row_sums, 1e-14);
    assert_all_close("sum_rows", &g.to_f64(sr).unwrap(), &col_sums, 1e-14);
    assert_all_close("sum", &g.to_f64(s).unwrap(), &[total], 1e-14);
    assert_all_close("mean", &g.to_f64(m).unwrap(), &[total / 20.0], 1e-14);
    let col_means: Vec<f64> = col_sums.iter().map(|v| v / r as f64).collect();
    assert_all_close("mean_rows", &g.to_f64(mr).unwrap(), &col_means, 1e-14);
    type Red = fn(&mut Graph<Cpu>, Var) -> R<Var>;
    let ops: [(&str, Red); 5] = [
        ("sum_cols", |g, v| g.sum_cols(v)),
        ("sum_rows", |g, v| g.sum_rows(v)),
        ("sum", |g, v| g.sum(v)),
        ("mean", |g, v| g.mean(v)),
        ("mean_rows", |g, v| g.mean_rows(v)),
    ];
    for (name, op) in ops {
        check(name, &[t64(r, n, &x)], |g, v| {
            let y = op(g, v[0])?;
            let y2 = g.square(y)?;
            probe(g, y2)
        });
    }
}

#[test]
fn slices_and_concatenation() {
    let mut rng = Rng(8);
    let a = rng.vec(12, 1.0);
    let b = rng.vec(8, 1.0);
    let mut g = Graph::new(Cpu::new());
    let av = g.leaf(t64(4, 3, &a), false);
    let bv = g.leaf(t64(4, 2, &b), false);
    let s = g.slice_cols(av, 1, 3).unwrap();
    let want: Vec<f64> = (0..4).flat_map(|i| [a[i * 3 + 1], a[i * 3 + 2]]).collect();
    assert_eq!(g.to_f64(s).unwrap(), want);
    let c = g.concat_cols(&[bv, av, bv]).unwrap();
    assert_eq!(g.shape(c).unwrap(), Shape::new(4, 7));
    let want: Vec<f64> = (0..4)
        .flat_map(|i| {
            let mut row = b[i * 2..i * 2 + 2].to_vec();
            row.extend_from_slice(&a[i * 3..i * 3 + 3]);
            row.extend_from_slice(&b[i * 2..i * 2 + 2]);
            row
        })
        .collect();
    assert_eq!(g.to_f64(c).unwrap(), want);
    let empty = g.slice_cols(av, 2, 2).unwrap();
    assert_eq!(g.shape(empty).unwrap(), Shape::new(4, 0));

    check("slice_cols", &[t64(4, 3, &a)], |g, v| {
        let s = g.slice_cols(v[0], 1, 3)?;
        let s2 = g.square(s)?;
        probe(g, s2)
    });
    check("concat_cols", &[t64(4, 3, &a), t64(4, 2, &b)], |g, v| {
        let c = g.concat_cols(&[v[1], v[0], v[1]])?;
        let c2 = g.square(c)?;
        probe(g, c2)
    });
}

#[test]
fn jacobian_layout_helpers() {
    let mut rng = Rng(9);
    let (bsz, k, n) = (3, 4, 2);
    let x = rng.vec(bsz * n, 1.0);
    let y = rng.vec(bsz * k * n, 1.0);
    let t = rng.vec(k * n, 1.0);
    let mut g = Graph::new(Cpu::new());
    let xv = g.leaf(t64(bsz, n, &x), false);
    let yv = g.leaf(t64(bsz * k, n, &y), false);
    let tv = g.leaf(t64(k, n, &t), false);

    let rep = g.repeat_rows(xv, k).unwrap();
    let want: Vec<f64> = (0..bsz * k)
        .flat_map(|row| x[(row / k) * n..(row / k + 1) * n].to_vec())
        .collect();
    assert_eq!(g.to_f64(rep).unwrap(), want);

    let grp = g.sum_row_groups(yv, k).unwrap();
    let want: Vec<f64> = (0..bsz * n)
        .map(|i| {
            let (b, c) = (i / n, i % n);
            (0..k).map(|j| y[(b * k + j) * n + c]).sum()
        })
        .collect();
    assert_all_close("sum_row_groups", &g.to_f64(grp).unwrap(), &want, 1e-14);

    let tile = g.tile_rows(tv, bsz).unwrap();
    let want: Vec<f64> = (0..bsz * k)
        .flat_map(|row| t[(row % k) * n..(row % k + 1) * n].to_vec())
        .collect();
    assert_eq!(g.to_f64(tile).unwrap(), want);

    let st = g.sum_tiles(yv, bsz).unwrap();
    let want: Vec<f64> = (0..k * n)
        .map(|i| (0..bsz).map(|b| y[b * k * n + i]).sum())
        .collect();
    assert_all_close("sum_tiles", &g.to_f64(st).unwrap(), &want, 1e-14);

    // Adjoint pairs: <repeat(x), y> = <x, groups(y)>, <tile(t), y> = <t, tiles(y)>.
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(p, q)| p * q).sum::<f64>();
    let lhs = dot(&g.to_f64(rep).unwrap(), &y);
    let rhs = dot(&x, &g.to_f64(grp).unwrap());
    assert!(close(lhs, rhs, 1e-13));
    let lhs = dot(&g.to_f64(tile).unwrap(), &y);
    let rhs = dot(&t, &g.to_f64(st).unwrap());
    assert!(close(lhs, rhs, 1e-13));

    type Op = fn(&mut Graph<Cpu>, Var) -> R<Var>;
    let cases: [(&str, Shape, Op); 4] = [
        ("repeat_rows", Shape::new(bsz, n), |g, v| {
            g.repeat_rows(v, 4)
        }),
        ("sum_row_groups", Shape::new(bsz * k, n), |g, v| {
            g.sum_row_groups(v, 4)
        }),
        ("tile_rows", Shape::new(k, n), |g, v| g.tile_rows(v, 3)),
        ("sum_tiles", Shape::new(bsz * k, n), |g, v| {
            g.sum_tiles(v, 3)
        }),
    ];
    for (name, s, op) in cases {
        let x = rng.vec(s.len(), 1.0);
        check(name, &[t64(s.rows, s.cols, &x)], |g, v| {
            let y = op(g, v[0])?;
            let y2 = g.square(y)?;
            probe(g, y2)
        });
    }
}

/// Per-sample Jacobian products as one GEMM: with Jᵀ ∈ R^{(B·d)×m}, Jᵀ·Kᵀ stacks
/// (K J_b)ᵀ for every sample b.
#[test]
fn per_sample_jacobian_products_are_one_gemm() {
    let mut rng = Rng(10);
    let (bsz, d, m) = (3, 2, 4);
    let jt = rng.vec(bsz * d * m, 1.0);
    let k = rng.vec(m * m, 1.0);
    let mut g = Graph::new(Cpu::new());
    let jv = g.leaf(t64(bsz * d, m, &jt), false);
    let kv = g.leaf(t64(m, m, &k), false);
    let kj = g.matmul(jv, kv, false, true).unwrap();
    let got = g.to_f64(kj).unwrap();
    for b in 0..bsz {
        // J_b (m × d) from its transpose, then K J_b.
        let jb: Vec<f64> = (0..m * d)
            .map(|i| jt[(b * d + i % d) * m + i / d])
            .collect();
        let kjb = naive_matmul(&k, Shape::new(m, m), false, &jb, Shape::new(m, d), false);
        for h in 0..m {
            for dir in 0..d {
                assert!(close(got[(b * d + dir) * m + h], kjb[h * d + dir], 1e-13));
            }
        }
    }
}

#[test]
fn cast_vjp_and_rounding() {
    let mut rng = Rng(11);
    let x = rng.vec(6, 1.0);
    let p: Vec<f64> = rng.vec(6, 1.0);
    let mut g = Graph::new(Cpu::new());
    let xv = g.leaf(t64(2, 3, &x), true);
    let x32 = g.cast(xv, DType::F32).unwrap();
    assert_eq!(g.dtype(x32).unwrap(), DType::F32);
    let pv = g.leaf_f64(2, 3, &p, DType::F32, false).unwrap();
    let y = g.mul(x32, pv).unwrap();
    let s = g.sum(y).unwrap();
    let s64 = g.cast(s, DType::F64).unwrap();
    let grads = g.backward(s64, None).unwrap();
    let gx = grads.get(xv).unwrap();
    assert_eq!(gx.dtype(), DType::F64);
    let want: Vec<f64> = p.iter().map(|&v| f64::from(v as f32)).collect();
    assert_eq!(gx.to_f64(g.backend()).unwrap(), want);

    // f64 → 16-bit is rounded once: just above a tie rounds up, where rounding through
    // f32 first would land on the tie and round to even (down).
    let above_tie = 1.0 + 2f64.powi(-11) + 2f64.powi(-40);
    let be = Cpu::new();
    let h = be.upload(&[above_tie, -above_tie], DType::F16).unwrap();
    assert_eq!(
        be.download(&h).unwrap(),
        vec![1.0 + 2f64.powi(-10), -(1.0 + 2f64.powi(-10))]
    );
    let above_tie_bf = 1.0 + 2f64.powi(-8) + 2f64.powi(-40);
    let h = be.upload(&[above_tie_bf], DType::Bf16).unwrap();
    assert_eq!(be.download(&h).unwrap(), vec![1.0 + 2f64.powi(-7)]);
    let exact_tie = 1.0 + 2f64.powi(-11);
    let h = be.upload(&[exact_tie], DType::F16).unwrap();
    assert_eq!(be.download(&h).unwrap(), vec![1.0]);
    // Through a cast from f64 as well.
    let x64 = be.upload(&[above_tie], DType::F64).unwrap();
    let c = be.cast(&x64, DType::F16).unwrap();
    assert_eq!(c, CpuBuffer::F16(vec![f16::from_f64(1.0 + 2f64.powi(-10))]));
    // Overflow and tiny values.
    let h = be.upload(&[1e6, -1e6, 1e-30], DType::F16).unwrap();
    let v = be.download(&h).unwrap();
    assert!(v[0] == f64::INFINITY && v[1] == f64::NEG_INFINITY && v[2] == 0.0);
}

/// A small network mixing every kind of op, values reused by several consumers.
#[test]
fn composite_models() {
    let mut rng = Rng(12);
    let (bsz, d, m) = (5, 3, 4);
    let leaves = [
        t64(bsz, d, &rng.vec(bsz * d, 1.0)),
        t64(m, d, &rng.vec(m * d, 0.7)),
        t64(1, m, &rng.vec(m, 0.3)),
        t64(d, m, &rng.vec(d * m, 0.7)),
    ];
    // MLP with silu and a residual; exact trace of its Jacobian through the helpers.
    check("mlp + trace", &leaves, |g, v| {
        let (x, w1, b1, w2) = (v[0], v[1], v[2], v[3]);
        let h = g.matmul(x, w1, false, true)?;
        let h = g.add(h, b1)?;
        let a = g.silu(h)?;
        let out = g.matmul(a, w2, false, true)?;
        let out = g.add(out, x)?;
        // tr(∂out/∂x) = d + Σ_h silu'(h) Σ_k W2[k,h] W1[h,k].
        // Per sample Jᵀ = W1ᵀ diag(silu'(h)) W2ᵀ (d × d), stacked (B·d) × d.
        let sp = g.silu_prime(h)?;
        let e = g.constant(t64(d, d, &{
            let mut e = vec![0.0; d * d];
            for i in 0..d {
                e[i * d + i] = 1.0;
            }
            e
        }));
        let jt = g.matmul(e, w1, false, true)?; // d×m: W1ᵀ
        let jt = g.tile_rows(jt, bsz)?;
        let spr = g.repeat_rows(sp, d)?;
        let jt = g.mul(jt, spr)?; // per sample: W1ᵀ diag(silu')
        let full = g.matmul(jt, w2, false, true)?; // (B·d)×d: (W2 diag W1)ᵀ
        let diag_mask = g.constant(t64(bsz * d, d, &{
            let mut e = vec![0.0; bsz * d * d];
            for r in 0..bsz * d {
                e[r * d + r % d] = 1.0;
            }
            e
        }));
        let dg = g.mul(full, diag_mask)?;
        let tr = g.sum_row_groups(dg, d)?;
        let tr = g.sum_cols(tr)?;
        let tr = g.add_scalar(tr, d as f64)?;
        let o2 = g.square(out)?;
        let l1 = g.mean(o2)?;
        let t2 = g.tanh(tr)?;
        let l2 = g.sum(t2)?;
        let l = g.add(l1, l2)?;
        let lc = g.logcosh(l)?;
        let sp2 = g.softplus(lc)?;
        let l3 = g.sqrt(sp2)?;
        g.add(l3, l)
    });
}

// ---------------------------------------------------------------------------------------
// Fused ops: add_scaled, mul_add, matmul_add, unary_many; the accumulation kernels
// ---------------------------------------------------------------------------------------

const BROADCASTS: [Broadcast; 4] = [
    Broadcast::None,
    Broadcast::Row,
    Broadcast::Col,
    Broadcast::Scalar,
];

fn covering(bc: Broadcast, r: usize, n: usize) -> Shape {
    match bc {
        Broadcast::None => Shape::new(r, n),
        Broadcast::Row => Shape::new(1, n),
        Broadcast::Col => Shape::new(r, 1),
        Broadcast::Scalar => Shape::SCALAR,
    }
}

fn at(v: &[f64], bc: Broadcast, n: usize, i: usize) -> f64 {
    match bc {
        Broadcast::None => v[i],
        Broadcast::Row => v[i % n],
        Broadcast::Col => v[i / n],
        Broadcast::Scalar => v[0],
    }
}

#[test]
fn add_scaled_and_mul_add_with_every_broadcast() {
    let mut rng = Rng(21);
    let (r, n) = (4, 3);
    for bc in BROADCASTS {
        let sc = covering(bc, r, n);
        let (a, b, c) = (
            rng.vec(r * n, 1.0),
            rng.vec(r * n, 1.0),
            rng.vec(sc.len(), 1.0),
        );
        let mut g = Graph::new(Cpu::new());
        let av = g.leaf(t64(r, n, &a), false);
        let bv = g.leaf(t64(r, n, &b), false);
        let cv = g.leaf(t64(sc.rows, sc.cols, &c), false);
        // Each product rounded before the sum, as the unfused ops round.
        let y = g.add_scaled(av, cv, -0.7).unwrap();
        let want: Vec<f64> = (0..r * n).map(|i| a[i] + -0.7 * at(&c, bc, n, i)).collect();
        assert_eq!(g.to_f64(y).unwrap(), want, "add_scaled {bc:?}");
        let y = g.mul_add(av, bv, cv, 1.3).unwrap();
        let want: Vec<f64> = (0..r * n)
            .map(|i| a[i] + 1.3 * (b[i] * at(&c, bc, n, i)))
            .collect();
        assert_eq!(g.to_f64(y).unwrap(), want, "mul_add {bc:?}");
        let leaves = [t64(r, n, &a), t64(r, n, &b), t64(sc.rows, sc.cols, &c)];
        check(&format!("add_scaled {bc:?}"), &leaves, |g, v| {
            let y = g.add_scaled(v[0], v[2], -0.7)?;
            probe(g, y)
        });
        check(&format!("mul_add {bc:?}"), &leaves, |g, v| {
            let y = g.mul_add(v[0], v[1], v[2], 1.3)?;
            probe(g, y)
        });
    }
    // Operands that are the same value (a sum of squares s + v ⊙ v, x + α·x).
    let x = rng.vec(6, 1.0);
    check("mul_add(x, x, x)", &[t64(2, 3, &x)], |g, v| {
        let y = g.mul_add(v[0], v[0], v[0], 0.5)?;
        probe(g, y)
    });
    check("add_scaled(x, x)", &[t64(2, 3, &x)], |g, v| {
        let y = g.add_scaled(v[0], v[0], 2.5)?;
        let y2 = g.square(y)?;
        probe(g, y2)
    });
}

#[test]
fn matmul_add_forward_and_gradients() {
    let mut rng = Rng(22);
    let (m, k, n) = (4, 3, 5);
    for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
        let (sa, sb) = operand_shapes(m, k, n, ta, tb);
        let prod = |a: &[f64], b: &[f64]| naive_matmul(a, sa, ta, b, sb, tb);
        for bc in BROADCASTS {
            let sc = covering(bc, m, n);
            let (a, b, c) = (
                rng.vec(sa.len(), 1.0),
                rng.vec(sb.len(), 1.0),
                rng.vec(sc.len(), 1.0),
            );
            let mut g = Graph::new(Cpu::new());
            let av = g.leaf(t64(sa.rows, sa.cols, &a), false);
            let bv = g.leaf(t64(sb.rows, sb.cols, &b), false);
            let cv = g.leaf(t64(sc.rows, sc.cols, &c), false);
            let y = g.matmul_add(cv, av, bv, ta, tb, -0.5).unwrap();
            assert_eq!(g.shape(y).unwrap(), Shape::new(m, n));
            let p = prod(&a, &b);
            let want: Vec<f64> = (0..m * n).map(|i| at(&c, bc, n, i) - 0.5 * p[i]).collect();
            // Relative to the terms' size (the sum may cancel).
            for (x, w) in g.to_f64(y).unwrap().iter().zip(&want) {
                assert!(
                    (x - w).abs() <= 1e-14 * (1.0 + w.abs()),
                    "matmul_add {ta} {tb} {bc:?}: {x} vs {w}"
                );
            }
            let leaves = [
                t64(sa.rows, sa.cols, &a),
                t64(sb.rows, sb.cols, &b),
                t64(sc.rows, sc.cols, &c),
            ];
            check(&format!("matmul_add {ta} {tb} {bc:?}"), &leaves, |g, v| {
                let y = g.matmul_add(v[2], v[0], v[1], ta, tb, -0.5)?;
                probe(g, y)
            });
        }
    }
}

/// The maps computed together are the maps computed one by one, bit for bit, in every
/// precision; so are the gradients through the linked derivative values, except where
/// one fused kernel pulls the gradient through log cosh, tanh and sech² together (then
/// to round-off).
#[test]
fn unary_many_is_unary_bitwise() {
    let be = Cpu::new();
    let mut rng = Rng(23);
    // Long enough for the vectorized loops' bodies and tails, and far-out values.
    let mut x = rng.range(1000, -6.0, 6.0);
    x.extend_from_slice(&[0.0, -0.0, 1e-30, -40.0, 40.0, 1000.0, -1000.0]);
    let sets: [&[UnaryOp]; 6] = [
        &[UnaryOp::LogCosh, UnaryOp::Tanh, UnaryOp::Sech2],
        &[UnaryOp::Sech2, UnaryOp::LogCosh],
        &[UnaryOp::Tanh, UnaryOp::Sech2],
        &[UnaryOp::LogCosh, UnaryOp::Tanh],
        &[
            UnaryOp::Softplus,
            UnaryOp::Sigmoid,
            UnaryOp::Silu,
            UnaryOp::SiluPrime,
        ],
        &[UnaryOp::Sin, UnaryOp::Cos, UnaryOp::Exp],
    ];
    for dtype in DType::ALL {
        let xb = be.upload(&x, dtype).unwrap();
        for ops in sets {
            let many = be.unary_many(ops, &xb).unwrap();
            assert_eq!(many.len(), ops.len());
            for (&op, y) in ops.iter().zip(&many) {
                assert_eq!(
                    *y,
                    be.unary(op, &xb).unwrap(),
                    "{dtype} {} in {ops:?}",
                    op.name()
                );
            }
        }
    }
    // Gradients of Σ_j w_j·Σ ops_j(x): linked (one unary_many) and unlinked (separate
    // unary calls) agree bitwise, and the checker agrees with both.
    let xs = rng.range(24, -3.0, 3.0);
    for dtype in DType::ALL {
        for ops in sets {
            let grad = |linked: bool| {
                let mut g = Graph::new(Cpu::new());
                let xv = g.leaf_f64(4, 6, &xs, dtype, true).unwrap();
                let ys = if linked {
                    g.unary_many(xv, ops).unwrap()
                } else {
                    ops.iter().map(|&op| g.unary(op, xv).unwrap()).collect()
                };
                let mut total: Option<Var> = None;
                for (j, y) in ys.into_iter().enumerate() {
                    let s = g.sum(y).unwrap();
                    let s = g.scale(s, 1.0 + j as f64).unwrap();
                    total = Some(match total {
                        None => s,
                        Some(t) => g.add(t, s).unwrap(),
                    });
                }
                let grads = g.backward(total.unwrap(), None).unwrap();
                grads.get(xv).unwrap().to_f64(g.backend()).unwrap()
            };
            let (linked, separate) = (grad(true), grad(false));
            let fused = ops.contains(&UnaryOp::Tanh) && ops.contains(&UnaryOp::Sech2);
            if fused {
                // One fused kernel sums the three maps' contributions (rounded once)
                // where the separate VJPs round each: equal to a few roundings of the
                // terms, which are O(1) here.
                let tol = if dtype == DType::F64 {
                    1e-14
                } else {
                    32.0 * dtype.unit_roundoff()
                };
                for (a, b) in linked.iter().zip(&separate) {
                    assert!(
                        (a - b).abs() <= tol * (1.0 + b.abs()),
                        "{dtype} {ops:?}: {a} vs {b}"
                    );
                }
            } else {
                assert_eq!(linked, separate, "{dtype} {ops:?}");
            }
        }
    }
    for ops in sets {
        check(&format!("unary_many {ops:?}"), &[t64(4, 6, &xs)], |g, v| {
            let ys = g.unary_many(v[0], ops)?;
            let mut total = probe(g, ys[0])?;
            for &y in &ys[1..] {
                let p = probe(g, y)?;
                total = g.add(total, p)?;
            }
            Ok(total)
        });
    }
    // A map of the group nothing depends on (its gradient absent), and one whose
    // gradient arrives from two uses.
    check("unary_many, tanh unused", &[t64(4, 6, &xs)], |g, v| {
        let ys = g.unary_many(v[0], &[UnaryOp::LogCosh, UnaryOp::Tanh, UnaryOp::Sech2])?;
        let a = probe(g, ys[0])?;
        let q2 = g.mul(ys[2], ys[2])?;
        let b = probe(g, q2)?;
        g.add(a, b)
    });
    let mut g = Graph::new(Cpu::new());
    let xv = g.leaf(t64(1, 2, &[0.5, 1.0]), true);
    assert!(g.unary_many(xv, &[]).unwrap().is_empty());
}

/// Every product shape the CPU backend routes differently (rank-k updates for a small
/// inner size or few output rows, dot products for few output columns, the transposed
/// reduction, tiny outputs, and the blocked GEMM), with every transpose, as plain and
/// accumulating products, against the naive product.
#[test]
fn matmul_kernels_for_every_shape() {
    let be = Cpu::new();
    let mut rng = Rng(26);
    let shapes = [
        (37, 3, 40),
        (3, 300, 40),
        (1, 500, 33),
        (300, 40, 3),
        (301, 33, 1),
        (40, 300, 3),
        (33, 500, 1),
        (3, 300, 3),
        (70, 1, 20),
        (50, 50, 50),
        (9, 9, 9),
    ];
    for (m, k, n) in shapes {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let (sa, sb) = operand_shapes(m, k, n, ta, tb);
            let (a, b, c) = (
                rng.vec(sa.len(), 1.0),
                rng.vec(sb.len(), 1.0),
                rng.vec(m * n, 1.0),
            );
            let p = naive_matmul(&a, sa, ta, &b, sb, tb);
            let what = format!("{m}×{k}×{n} {ta} {tb}");
            for dtype in [DType::F64, DType::F32] {
                let tol = if dtype == DType::F64 { 1e-12 } else { 1e-4 };
                let up = |v: &[f64]| be.upload(v, dtype).unwrap();
                let got = be
                    .download(&be.matmul(&up(&a), sa, ta, &up(&b), sb, tb).unwrap())
                    .unwrap();
                for (x, y) in got.iter().zip(&p) {
                    assert!((x - y).abs() <= tol * (1.0 + y.abs()), "{what} {dtype}");
                }
                let mut acc = up(&c);
                be.matmul_acc(&mut acc, &up(&a), sa, ta, &up(&b), sb, tb, -0.5)
                    .unwrap();
                let got = be.download(&acc).unwrap();
                for i in 0..m * n {
                    let want = c[i] - 0.5 * p[i];
                    assert!(
                        (got[i] - want).abs() <= tol * (1.0 + want.abs()),
                        "{what} acc {dtype}"
                    );
                }
            }
        }
    }
}

#[test]
fn in_place_accumulation_kernels() {
    let be = Cpu::new();
    let mut rng = Rng(24);
    let (d, s) = (rng.vec(12, 1.0), rng.vec(12, 1.0));
    // dst + α·src, the product rounded before the sum; src of another precision is
    // read exactly.
    for (dd, sd) in [
        (DType::F64, DType::F64),
        (DType::F32, DType::F32),
        (DType::F32, DType::F16),
        (DType::F32, DType::Bf16),
        (DType::F64, DType::F32),
        (DType::F16, DType::F16),
    ] {
        let mut dst = be.upload(&d, dd).unwrap();
        let src = be.upload(&s, sd).unwrap();
        let (dv, sv) = (be.download(&dst).unwrap(), be.download(&src).unwrap());
        be.axpy(&mut dst, -0.375, &src).unwrap();
        let got = be.download(&dst).unwrap();
        for i in 0..12 {
            let want = match dd {
                DType::F64 => dv[i] + -0.375 * sv[i],
                DType::F32 => f64::from(dv[i] as f32 + -0.375f32 * sv[i] as f32),
                _ => f16::from_f32(dv[i] as f32 + -0.375f32 * sv[i] as f32).to_f64(),
            };
            assert_eq!(got[i], want, "axpy {dd} += {sd}");
        }
    }
    let mut short = be.upload(&d[..3], DType::F64).unwrap();
    assert!(matches!(
        be.axpy(&mut short, 1.0, &be.upload(&s, DType::F64).unwrap()),
        Err(Error::Length { .. })
    ));
    // dst + β·A·Bᵀ against the naive product, and a 16-bit destination rounded once
    // from its f32 update.
    let (sa, sb) = (Shape::new(3, 4), Shape::new(5, 4));
    let (a, b, c) = (rng.vec(12, 1.0), rng.vec(20, 1.0), rng.vec(15, 1.0));
    let p = naive_matmul(&a, sa, false, &b, sb, true);
    for dtype in DType::ALL {
        let up = |v: &[f64]| be.upload(v, dtype).unwrap();
        let (ab, bb, mut cb) = (up(&a), up(&b), up(&c));
        let (ae, be_, ce) = (
            be.download(&ab).unwrap(),
            be.download(&bb).unwrap(),
            be.download(&cb).unwrap(),
        );
        be.matmul_acc(&mut cb, &ab, sa, false, &bb, sb, true, 2.0)
            .unwrap();
        let pe = naive_matmul(&ae, sa, false, &be_, sb, true);
        let got = be.download(&cb).unwrap();
        for i in 0..15 {
            let want = ce[i] + 2.0 * pe[i];
            let tol = match dtype {
                DType::F64 => 1e-14,
                DType::F32 => 1e-5,
                _ => 4.0 * dtype.unit_roundoff() * (1.0 + want.abs()),
            };
            assert!(
                (got[i] - want).abs() <= tol,
                "{dtype} [{i}]: {} vs {want}",
                got[i]
            );
        }
        if dtype == DType::F64 {
            assert_all_close(
                "matmul_acc",
                &got,
                &(0..15).map(|i| c[i] + 2.0 * p[i]).collect::<Vec<_>>(),
                1e-13,
            );
        }
    }
    let mut wrong = be.upload(&c[..14], DType::F64).unwrap();
    let up = |v: &[f64]| be.upload(v, DType::F64).unwrap();
    assert!(matches!(
        be.matmul_acc(&mut wrong, &up(&a), sa, false, &up(&b), sb, true, 1.0),
        Err(Error::Length { .. })
    ));
    assert!(matches!(
        be.matmul_acc(&mut up(&c), &up(&a), sa, false, &up(&b), sb, false, 1.0),
        Err(Error::Shape { .. })
    ));
}

/// Gradients summed into a value used many times, through every VJP path that sums in
/// place (a sum that exists: axpy, the fused product-and-sum, the accumulating GEMM)
/// and the one that moves the incoming gradient into an empty sum, with and without an
/// accumulation precision.
#[test]
fn reused_values_sum_their_gradients() {
    let mut rng = Rng(25);
    let x = rng.vec(12, 1.0);
    let w = rng.vec(16, 1.0);
    let build = |g: &mut Graph<Cpu>, v: &[Var]| -> R<Var> {
        let (x, w) = (v[0], v[1]);
        let a = g.add(x, x)?;
        let b = g.sub(a, x)?;
        let c = g.mul(b, x)?;
        let d = g.matmul(x, w, false, false)?;
        let e = g.matmul_add(d, c, w, false, false, 0.5)?;
        let t = g.unary_many(x, &[UnaryOp::LogCosh, UnaryOp::Tanh, UnaryOp::Sech2])?;
        let f = g.mul_add(t[0], t[1], t[2], -1.0)?;
        let f = g.add_scaled(f, x, 3.0)?;
        let h = g.matmul_add(e, f, w, false, false, 1.0)?;
        let k = g.scale(h, 0.25)?;
        let k = g.add(k, h)?;
        probe(g, k)
    };
    check("reused values", &[t64(3, 4, &x), t64(4, 4, &w)], build);
    // The same in f32 with sums at f64: gradients of f32 precision.
    let mut g = Graph::new(Cpu::new());
    let xv = g.leaf_f64(3, 4, &x, DType::F32, true).unwrap();
    let wv = g.leaf_f64(4, 4, &w, DType::F32, true).unwrap();
    let y = build(&mut g, &[xv, wv]).unwrap();
    let lo = g.backward_with(y, None, Some(DType::F64)).unwrap();
    let mut g64 = Graph::new(Cpu::new());
    let xv64 = g64.leaf(t64(3, 4, &x), true);
    let wv64 = g64.leaf(t64(4, 4, &w), true);
    let y64 = build(&mut g64, &[xv64, wv64]).unwrap();
    let hi = g64.backward(y64, None).unwrap();
    for (a, b) in [(xv, xv64), (wv, wv64)] {
        let got = lo.get(a).unwrap();
        assert_eq!(got.dtype(), DType::F64);
        let got = got.to_f64(g.backend()).unwrap();
        let want = hi.get(b).unwrap().to_f64(g64.backend()).unwrap();
        let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        for (p, q) in got.iter().zip(&want) {
            assert!((p - q).abs() <= 1e-5 * scale, "{p} vs {q}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

#[test]
fn shape_errors_are_typed() {
    let mut g = Graph::new(Cpu::new());
    let a = g.leaf(t64(2, 3, &[0.0; 6]), true);
    let b = g.leaf(t64(2, 3, &[0.0; 6]), true);
    let c = g.leaf(t64(3, 2, &[0.0; 6]), true);
    let n = g.len();
    assert_eq!(
        g.matmul(a, b, false, false).unwrap_err(),
        Error::Shape {
            op: "matmul",
            lhs: Shape::new(2, 3),
            rhs: Shape::new(2, 3)
        }
    );
    assert!(g.matmul(a, b, false, true).is_ok());
    assert!(g.matmul(a, b, true, false).is_ok());
    assert!(matches!(g.add(a, c), Err(Error::Shape { op: "add", .. })));
    assert!(matches!(g.div(a, c), Err(Error::Shape { op: "div", .. })));
    let col3 = g.leaf(t64(3, 1, &[0.0; 3]), false);
    assert!(matches!(
        g.mul(a, col3),
        Err(Error::Shape { op: "mul", .. })
    ));
    assert!(matches!(
        g.concat_cols(&[a, c]),
        Err(Error::Shape {
            op: "concat_cols",
            ..
        })
    ));
    assert!(matches!(g.concat_cols(&[]), Err(Error::InvalidArgument(_))));
    assert!(matches!(
        g.slice_cols(a, 2, 4),
        Err(Error::InvalidShape {
            op: "slice_cols",
            ..
        })
    ));
    assert!(matches!(
        g.slice_cols(a, 2, 1),
        Err(Error::InvalidShape { .. })
    ));
    assert!(matches!(
        g.sum_row_groups(c, 2),
        Err(Error::InvalidShape {
            op: "sum_row_groups",
            ..
        })
    ));
    assert!(matches!(g.sum_tiles(c, 2), Err(Error::InvalidShape { .. })));
    assert!(matches!(
        g.repeat_rows(a, 0),
        Err(Error::InvalidShape { .. })
    ));
    assert!(matches!(g.tile_rows(a, 0), Err(Error::InvalidShape { .. })));
    assert!(matches!(
        g.repeat_rows(a, usize::MAX),
        Err(Error::InvalidShape { .. })
    ));
    let e = g.leaf(t64(0, 3, &[]), false);
    assert!(matches!(
        g.mean(e),
        Err(Error::InvalidShape { op: "mean", .. })
    ));
    // The fused ops: b of a's shape in mul_add, c covering the product in matmul_add,
    // finite constants.
    assert!(matches!(
        g.mul_add(a, c, b, 1.0),
        Err(Error::Shape { op: "mul_add", .. })
    ));
    assert!(matches!(
        g.mul_add(a, b, c, 1.0),
        Err(Error::Shape { op: "mul_add", .. })
    ));
    assert!(matches!(
        g.add_scaled(a, c, 1.0),
        Err(Error::Shape {
            op: "add_scaled",
            ..
        })
    ));
    assert!(matches!(
        g.matmul_add(c, a, b, false, true, 1.0),
        Err(Error::Shape {
            op: "matmul_add",
            ..
        })
    ));
    assert!(matches!(
        g.matmul_add(a, a, b, false, false, 1.0),
        Err(Error::Shape {
            op: "matmul_add",
            ..
        })
    ));
    assert!(matches!(
        g.add_scaled(a, b, f64::INFINITY),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        g.mul_add(a, b, b, f64::NAN),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        g.matmul_add(a, a, c, false, false, f64::NAN),
        Err(Error::InvalidArgument(_))
    ));
    // Failed ops record nothing: two products and two leaves were added.
    assert_eq!(g.len(), n + 4);

    // backward: a non-scalar output needs a seed of its shape.
    let y = g.mul(a, b).unwrap();
    assert!(matches!(
        g.backward(y, None),
        Err(Error::InvalidShape { op: "backward", .. })
    ));
    let bad = Tensor::zeros(g.backend(), 3, 2, DType::F64).unwrap();
    assert!(matches!(
        g.backward(y, Some(bad)),
        Err(Error::Shape {
            op: "backward seed",
            ..
        })
    ));

    // Tensors: data of the wrong length.
    assert_eq!(
        Tensor::from_f64(&Cpu::new(), 2, 2, &[1.0; 3], DType::F32).unwrap_err(),
        Error::Length {
            what: "tensor data",
            found: 3,
            expected: 4
        }
    );
    assert!(matches!(
        Tensor::<Cpu>::from_buffer(2, 2, CpuBuffer::F64(vec![0.0; 5])),
        Err(Error::Length { .. })
    ));

    // Handles from another graph or from before a clear.
    let mut other = Graph::new(Cpu::new());
    let o = other.leaf(t64(1, 1, &[1.0]), true);
    assert_eq!(g.neg(o).unwrap_err(), Error::UnknownVar(o));
    g.clear();
    assert!(g.is_empty());
    assert!(matches!(g.value(a), Err(Error::UnknownVar(_))));
    assert!(matches!(g.sum(a), Err(Error::UnknownVar(_))));

    // Backend kernels check what they rely on when called directly.
    let be = Cpu::new();
    let x = be.upload(&[1.0; 6], DType::F64).unwrap();
    assert!(matches!(
        be.matmul(&x, Shape::new(2, 3), false, &x, Shape::new(2, 3), false),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        be.matmul(&x, Shape::new(2, 2), false, &x, Shape::new(2, 3), false),
        Err(Error::Length { .. })
    ));
    assert!(matches!(
        be.binary(BinaryOp::Add, &x, Shape::new(2, 3), &x, Broadcast::Row),
        Err(Error::Length { .. })
    ));
    assert!(matches!(
        be.reduce(&x, Shape::new(4, 2), Reduction::All, 1.0),
        Err(Error::Length { .. })
    ));
    assert!(matches!(
        be.sum_row_groups(&x, Shape::new(2, 3), 4),
        Err(Error::InvalidShape { .. })
    ));
}

#[test]
fn dtype_errors_are_typed() {
    let be = Cpu::new();
    let mut g = Graph::new(be);
    let a = g.leaf_f64(2, 2, &[1.0; 4], DType::F64, true).unwrap();
    let b = g.leaf_f64(2, 2, &[1.0; 4], DType::F32, true).unwrap();
    let h = g.leaf_f64(2, 2, &[1.0; 4], DType::F16, true).unwrap();
    assert_eq!(
        g.add(a, b).unwrap_err(),
        Error::DType {
            op: "add",
            lhs: DType::F64,
            rhs: DType::F32
        }
    );
    assert!(matches!(
        g.matmul(h, b, false, false),
        Err(Error::DType { op: "matmul", .. })
    ));
    assert!(matches!(g.concat_cols(&[a, h]), Err(Error::DType { .. })));
    for r in [
        g.add_scaled(a, b, 1.0),
        g.mul_add(a, a, h, 1.0),
        g.mul_add(a, b, a, 1.0),
        g.matmul_add(a, a, b, false, false, 1.0),
        g.matmul_add(h, a, a, false, false, 1.0),
    ] {
        assert!(matches!(r, Err(Error::DType { .. })), "{r:?}");
    }
    // Through a cast it works.
    let b64 = g.cast(b, DType::F64).unwrap();
    let s = g.add(a, b64).unwrap();
    let s = g.sum(s).unwrap();
    let seed = Tensor::scalar(g.backend(), 1.0, DType::F32).unwrap();
    assert!(matches!(
        g.backward(s, Some(seed)),
        Err(Error::DType {
            op: "backward seed",
            ..
        })
    ));
    assert!(g.backward(s, None).is_ok());
    // Kernels called directly.
    let x = be.upload(&[1.0; 4], DType::F64).unwrap();
    let y = be.upload(&[1.0; 4], DType::Bf16).unwrap();
    assert!(matches!(
        be.binary(BinaryOp::Mul, &x, Shape::new(2, 2), &y, Broadcast::None),
        Err(Error::DType { .. })
    ));
    let mut xm = x.clone();
    assert!(matches!(
        be.add_assign(&mut xm, &y),
        Err(Error::DType { .. })
    ));
    let s4 = Shape::new(2, 2);
    assert!(matches!(
        be.mul_add(&x, &x, s4, &y, Broadcast::None, 1.0),
        Err(Error::DType { .. })
    ));
    assert!(matches!(
        be.add_scaled(&x, s4, &y, Broadcast::None, 1.0),
        Err(Error::DType { .. })
    ));
    assert!(matches!(
        be.matmul_acc(&mut xm, &x, s4, false, &y, s4, false, 1.0),
        Err(Error::DType { .. })
    ));
    // The checker wants f64 leaves.
    let mut g2 = Graph::new(Cpu::new());
    let t32 = Tensor::from_f64(&be, 1, 1, &[1.0], DType::F32).unwrap();
    assert!(matches!(
        check_gradients(
            &mut g2,
            &[t32],
            |g, v| g.sum(v[0]),
            &CheckOptions::default()
        ),
        Err(Error::DType { .. })
    ));
}

#[test]
fn errors_bridge_into_the_trainer_error() {
    let e = Error::Shape {
        op: "matmul",
        lhs: Shape::new(2, 3),
        rhs: Shape::new(2, 3),
    };
    let msg = e.to_string();
    assert!(msg.contains("matmul") && msg.contains("2×3"), "{msg}");
    let t: socflow_trainer::Error = e.into();
    assert!(t.to_string().contains("matmul"), "{t}");
    assert!(matches!(
        t,
        socflow_trainer::Error::Autodiff(Error::Shape { op: "matmul", .. })
    ));
}

// ---------------------------------------------------------------------------------------
// Half precision: computed in f32 from exact inputs, rounded once
// ---------------------------------------------------------------------------------------

/// Spacing of the 16-bit grid around |v| (normal range).
fn spacing(dtype: DType, v: f64) -> f64 {
    let bits = if dtype == DType::F16 { 10 } else { 7 };
    2f64.powi(v.abs().log2().floor() as i32 - bits)
}

/// Integer operands in [0, 7] with an inner dimension of 1024: products and f32 sums
/// are exact (below 2²⁴), results (≈ 12 000) are not representable in 16 bits, so the
/// result is exactly the 16-bit rounding of the exact integer; more than one rounding
/// (partial sums stored in 16 bits) would differ.
#[test]
fn half_gemm_rounds_the_f32_product_once() {
    let be = Cpu::new();
    let mut rng = Rng(13);
    let (m, k, n) = (6, 1024, 5);
    for dtype in [DType::F16, DType::Bf16] {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let (sa, sb) = operand_shapes(m, k, n, ta, tb);
            let a = rng.ints(sa.len(), 7);
            let b = rng.ints(sb.len(), 7);
            let c = be
                .matmul(
                    &be.upload(&a, dtype).unwrap(),
                    sa,
                    ta,
                    &be.upload(&b, dtype).unwrap(),
                    sb,
                    tb,
                )
                .unwrap();
            assert_eq!(c.dtype(), dtype);
            let exact = naive_matmul(&a, sa, ta, &b, sb, tb);
            let mut inexact = 0;
            for (i, (&got, &want)) in be.download(&c).unwrap().iter().zip(&exact).enumerate() {
                let rounded = match dtype {
                    DType::F16 => f16::from_f32(want as f32).to_f64(),
                    _ => bf16::from_f32(want as f32).to_f64(),
                };
                assert_eq!(got, rounded, "{dtype} ta={ta} tb={tb} [{i}] exact {want}");
                inexact += usize::from(rounded != want);
            }
            assert!(inexact > exact.len() / 2, "the test must exercise rounding");
        }
    }
    // Random operands: within half a 16-bit spacing (plus f32 accumulation error) of
    // the exact product of the rounded inputs.
    for dtype in [DType::F16, DType::Bf16] {
        let a = be.upload(&rng.vec(8 * 64, 1.0), dtype).unwrap();
        let b = be.upload(&rng.vec(64 * 7, 1.0), dtype).unwrap();
        let c = be
            .matmul(&a, Shape::new(8, 64), false, &b, Shape::new(64, 7), false)
            .unwrap();
        let exact = naive_matmul(
            &be.download(&a).unwrap(),
            Shape::new(8, 64),
            false,
            &be.download(&b).unwrap(),
            Shape::new(64, 7),
            false,
        );
        for (&got, &want) in be.download(&c).unwrap().iter().zip(&exact) {
            let tol = 0.5 * spacing(dtype, want) + 64.0 * 8.0 * f64::from(f32::EPSILON);
            assert!((got - want).abs() <= tol, "{dtype}: {got} vs {want}");
        }
    }
}

#[test]
fn half_elementwise_kernels_round_the_f32_result_once() {
    let be = Cpu::new();
    let mut rng = Rng(14);
    // Maps with a canonical f32 implementation (std's, or for tanh the backend's f32
    // kernel): bit-exact.
    type F = fn(f32) -> f32;
    let exact: [(UnaryOp, F); 8] = [
        (UnaryOp::Neg, |x| -x),
        (UnaryOp::Square, |x| x * x),
        (UnaryOp::Abs, f32::abs),
        (UnaryOp::Recip, |x| 1.0 / x),
        (UnaryOp::Exp, f32::exp),
        (UnaryOp::Log, f32::ln),
        (UnaryOp::Sqrt, f32::sqrt),
        // The backend's own (vectorized) f32 tanh: the emulation rounds that once.
        (UnaryOp::Tanh, |x| {
            let mut y = [0.0f32];
            socflow_runtime::linalg::map_act(socflow_runtime::linalg::Act::Tanh, &[x], &mut y)
                .unwrap();
            y[0]
        }),
    ];
    for (op, f) in exact {
        let x = domain(op, &mut rng, 200);
        let xh = be.upload(&x, DType::F16).unwrap();
        let y = be.unary(op, &xh).unwrap();
        let (CpuBuffer::F16(xs), CpuBuffer::F16(ys)) = (&xh, &y) else {
            panic!("f16 buffers expected");
        };
        for (xv, yv) in xs.iter().zip(ys) {
            assert_eq!(
                yv.to_bits(),
                f16::from_f32(f(xv.to_f32())).to_bits(),
                "{} f16({})",
                op.name(),
                xv
            );
        }
        let xb = be.upload(&x, DType::Bf16).unwrap();
        let y = be.unary(op, &xb).unwrap();
        let (CpuBuffer::Bf16(xs), CpuBuffer::Bf16(ys)) = (&xb, &y) else {
            panic!("bf16 buffers expected");
        };
        for (xv, yv) in xs.iter().zip(ys) {
            assert_eq!(yv.to_bits(), bf16::from_f32(f(xv.to_f32())).to_bits());
        }
    }
    // Every map: within half a spacing (plus f32 error) of the exact value at the
    // exact 16-bit input.
    for op in UnaryOp::ALL {
        for dtype in [DType::F16, DType::Bf16] {
            let x = be.upload(&domain(op, &mut rng, 200), dtype).unwrap();
            let y = be.download(&be.unary(op, &x).unwrap()).unwrap();
            for (&xv, &yv) in be.download(&x).unwrap().iter().zip(&y) {
                let want = reference(op, xv);
                // Half a spacing of the 16-bit grid, plus the f32 evaluation's error
                // (a few f32 ulps of the terms, which are O(1)); below 1e-4 (f16
                // subnormals) an absolute bound.
                let f32_err = 2.0 * f64::from(f32::EPSILON) * want.abs().max(1.0);
                if want.abs() < 1e-4 {
                    assert!((yv - want).abs() <= 1e-6, "{} {dtype}({xv})", op.name());
                    continue;
                }
                let tol = 0.5 * spacing(dtype, want) + f32_err;
                assert!(
                    (yv - want).abs() <= tol,
                    "{} {dtype}({xv}) = {yv}, exact {want}",
                    op.name()
                );
            }
        }
    }
    // Binary maps and accumulation: the f32 result rounded once.
    let a = rng.vec(100, 3.0);
    let b = rng.range(100, 0.5, 2.0);
    let (ah, bh) = (
        be.upload(&a, DType::F16).unwrap(),
        be.upload(&b, DType::F16).unwrap(),
    );
    let s = Shape::new(10, 10);
    let (CpuBuffer::F16(av), CpuBuffer::F16(bv)) = (&ah, &bh) else {
        panic!("f16 buffers expected");
    };
    type G = fn(f32, f32) -> f32;
    let ops: [(BinaryOp, G); 4] = [
        (BinaryOp::Add, |x, y| x + y),
        (BinaryOp::Sub, |x, y| x - y),
        (BinaryOp::Mul, |x, y| x * y),
        (BinaryOp::Div, |x, y| x / y),
    ];
    for (op, f) in ops {
        let c = be.binary(op, &ah, s, &bh, Broadcast::None).unwrap();
        let CpuBuffer::F16(cv) = &c else {
            panic!("f16 result expected")
        };
        for i in 0..100 {
            let want = f16::from_f32(f(av[i].to_f32(), bv[i].to_f32()));
            assert_eq!(cv[i].to_bits(), want.to_bits(), "{}", op.name());
        }
    }
    // α·x + β in f32.
    let c = be.affine(&ah, 0.3, -1.7).unwrap();
    let CpuBuffer::F16(cv) = &c else {
        panic!("f16 result expected")
    };
    for i in 0..100 {
        let want = f16::from_f32(0.3f32 * av[i].to_f32() + -1.7f32);
        assert_eq!(cv[i].to_bits(), want.to_bits());
    }
    // A sum of 1024 integers accumulated in f32 (exact), rounded once.
    let ints = rng.ints(1024, 60);
    let exact: f64 = ints.iter().sum();
    for dtype in [DType::F16, DType::Bf16] {
        let x = be.upload(&ints, dtype).unwrap();
        let s = be
            .reduce(&x, Shape::new(32, 32), Reduction::All, 1.0)
            .unwrap();
        let want = match dtype {
            DType::F16 => f16::from_f64(exact).to_f64(),
            _ => bf16::from_f64(exact).to_f64(),
        };
        assert_ne!(want, exact, "the sum must need rounding");
        assert_eq!(be.download(&s).unwrap(), vec![want], "{dtype}");
    }
}

/// The same small model in f64, f32, bf16 and f16: values and gradients agree with f64
/// to each precision's unit roundoff times a modest factor.
#[test]
fn low_precision_graphs_track_f64() {
    let mut rng = Rng(15);
    let x = rng.vec(8 * 3, 1.0);
    let w = rng.vec(4 * 3, 0.5);
    let run = |dtype: DType| -> (Vec<f64>, Vec<f64>) {
        let mut g = Graph::new(Cpu::new());
        let xv = g.leaf_f64(8, 3, &x, dtype, false).unwrap();
        let wv = g.leaf_f64(4, 3, &w, dtype, true).unwrap();
        let h = g.matmul(xv, wv, false, true).unwrap();
        let a = g.logcosh(h).unwrap();
        let s = g.mean(a).unwrap();
        let grads = g.backward(s, None).unwrap();
        let gw = grads.get(wv).unwrap();
        assert_eq!(gw.dtype(), dtype);
        (g.to_f64(s).unwrap(), gw.to_f64(g.backend()).unwrap())
    };
    let (v64, g64) = run(DType::F64);
    let gmax = g64.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    for dtype in [DType::F32, DType::Bf16, DType::F16] {
        let (v, gr) = run(dtype);
        let u = dtype.unit_roundoff();
        assert!(
            close(v[0], v64[0], 16.0 * u),
            "{dtype}: {} vs {}",
            v[0],
            v64[0]
        );
        for (a, b) in gr.iter().zip(&g64) {
            assert!((a - b).abs() <= 32.0 * u * gmax, "{dtype}: {a} vs {b}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Tape mechanics
// ---------------------------------------------------------------------------------------

#[test]
fn bytes_accounting() {
    let be = Cpu::new();
    for (dtype, size) in [
        (DType::F64, 8),
        (DType::F32, 4),
        (DType::Bf16, 2),
        (DType::F16, 2),
    ] {
        assert_eq!(dtype.size_of(), size);
        let t = Tensor::zeros(&be, 7, 5, dtype).unwrap();
        assert_eq!(t.bytes(), 35 * size);
        assert_eq!(t.dtype(), dtype);
        assert_eq!((t.rows(), t.cols(), t.len()), (7, 5, 35));
    }
    let mut g = Graph::new(be);
    assert_eq!(g.bytes(), 0);
    let a = g.leaf_f64(4, 3, &[1.0; 12], DType::F16, true).unwrap();
    let b = g.cast(a, DType::F32).unwrap();
    let c = g.sum_cols(b).unwrap();
    assert_eq!(g.bytes(), 12 * 2 + 12 * 4 + 4 * 4);
    let _ = c;
    g.clear();
    assert_eq!(g.bytes(), 0);
    assert_eq!(g.len(), 0);
}

#[test]
fn seeded_backward_is_a_vjp() {
    let mut rng = Rng(16);
    let x = rng.vec(12, 1.0);
    let seed = rng.vec(4 * 2, 1.0);
    let w = rng.vec(2 * 3, 1.0);
    let mut g = Graph::new(Cpu::new());
    let xv = g.leaf(t64(4, 3, &x), true);
    let wv = g.leaf(t64(2, 3, &w), true);
    let h = g.matmul(xv, wv, false, true).unwrap();
    let y = g.tanh(h).unwrap();
    let vjp = g.backward(y, Some(t64(4, 2, &seed))).unwrap();
    // The same as the gradient of Σ seed ⊙ y.
    let sv = g.leaf(t64(4, 2, &seed), false);
    let ys = g.mul(y, sv).unwrap();
    let l = g.sum(ys).unwrap();
    let full = g.backward(l, None).unwrap();
    for v in [xv, wv] {
        let a = vjp.get(v).unwrap().to_f64(g.backend()).unwrap();
        let b = full.get(v).unwrap().to_f64(g.backend()).unwrap();
        assert_all_close("vjp", &a, &b, 1e-15);
    }
    // The tape survives backward: a second pass gives the same result.
    let again = g.backward(l, None).unwrap();
    assert_eq!(
        again.get(xv).unwrap().to_f64(g.backend()).unwrap(),
        full.get(xv).unwrap().to_f64(g.backend()).unwrap()
    );
}

#[test]
fn gradients_cover_exactly_the_leaves_that_ask() {
    let mut g = Graph::new(Cpu::new());
    let a = g.leaf(t64(1, 2, &[1.0, 2.0]), true);
    let frozen = g.leaf(t64(1, 2, &[3.0, 4.0]), false);
    let unused = g.leaf_f64(2, 2, &[1.0; 4], DType::F32, true).unwrap();
    let p = g.mul(a, frozen).unwrap();
    let s = g.sum(p).unwrap();
    assert!(g.requires_grad(s).unwrap());
    let c = g.sum(frozen).unwrap();
    assert!(!g.requires_grad(c).unwrap());
    let mut grads = g.backward(s, None).unwrap();
    assert_eq!(grads.len(), 2);
    assert!(grads.get(frozen).is_none());
    assert!(grads.get(p).is_none());
    let z = grads.get(unused).unwrap();
    assert_eq!(z.dtype(), DType::F32);
    assert_eq!(z.to_f64(g.backend()).unwrap(), vec![0.0; 4]);
    assert_eq!(
        grads.get(a).unwrap().to_f64(g.backend()).unwrap(),
        vec![3.0, 4.0]
    );
    let leaves: Vec<Var> = grads.iter().map(|(v, _)| v).collect();
    assert_eq!(leaves, vec![a, unused]);
    assert!(grads.take(a).is_some() && grads.get(a).is_none());
    // An output that depends on no trainable leaf: zeros everywhere.
    let gc = g.backward(c, None).unwrap();
    assert_eq!(
        gc.get(a).unwrap().to_f64(g.backend()).unwrap(),
        vec![0.0, 0.0]
    );
}

/// A 16-bit leaf used by many ops: its contributions summed in f32 keep what f16 sums
/// lose.
#[test]
fn accumulation_precision() {
    // c is exact in f16; the sum n·c = 100.29296875 is exact in f32 but not in f16.
    let c = 1.0 + 3.0 * 2f64.powi(-10);
    let n = 100;
    let build = |g: &mut Graph<Cpu>| -> (Var, Var) {
        let x = g.leaf_f64(1, 1, &[0.5], DType::F16, true).unwrap();
        let mut acc = g.scale(x, c).unwrap();
        for _ in 1..n {
            let t = g.scale(x, c).unwrap();
            acc = g.add(acc, t).unwrap();
        }
        (x, acc)
    };
    let exact = n as f64 * c;
    let mut g = Graph::new(Cpu::new());
    let (x, y) = build(&mut g);
    let hi = g.backward_with(y, None, Some(DType::F32)).unwrap();
    let hx = hi.get(x).unwrap();
    assert_eq!(hx.dtype(), DType::F32);
    assert_eq!(hx.to_f64(g.backend()).unwrap(), vec![exact]);
    let lo = g.backward(y, None).unwrap();
    let lx = lo.get(x).unwrap();
    assert_eq!(lx.dtype(), DType::F16);
    let lv = lx.to_f64(g.backend()).unwrap()[0];
    assert_ne!(lv, exact, "f16 sums lose the small terms");
    assert!((lv - exact).abs() < 1.0, "{lv} vs {exact}");
}

#[test]
fn cleared_tape_rebuilds_identically() {
    let mut rng = Rng(17);
    let x = rng.vec(6, 1.0);
    let mut g = Graph::new(Cpu::new());
    let mut results = Vec::new();
    for _ in 0..3 {
        g.clear();
        let xv = g.leaf(t64(2, 3, &x), true);
        let y = g.softplus(xv).unwrap();
        let s = g.sum(y).unwrap();
        let gr = g.backward(s, None).unwrap();
        results.push((
            g.to_f64(s).unwrap(),
            gr.get(xv).unwrap().to_f64(g.backend()).unwrap(),
        ));
        assert_eq!(g.len(), 3);
    }
    assert!(results.windows(2).all(|w| w[0] == w[1]));
}

#[test]
fn checker_finds_a_wrong_gradient() {
    // A function whose graph gradient is deliberately wrong: the value depends on x
    // through a constant recomputed from x outside the tape.
    let mut g = Graph::new(Cpu::new());
    let leaves = [t64(1, 3, &[0.3, -0.2, 0.5])];
    let rep = check_gradients(
        &mut g,
        &leaves,
        |g, v| {
            let xs = g.to_f64(v[0])?;
            let hidden = g.leaf_f64(1, 3, &xs, DType::F64, false)?;
            let y = g.mul(v[0], hidden)?; // true gradient 2x, tape says x
            g.sum(y)
        },
        &CheckOptions::default(),
    )
    .unwrap();
    assert!(rep.max_rel_err > 0.4, "{rep}");
    // A large leaf is checked on a subset.
    let big = t64(50, 10, &vec![0.1; 500]);
    let rep = check_gradients(
        &mut g,
        &[big],
        |g, v| {
            let y = g.square(v[0])?;
            g.sum(y)
        },
        &CheckOptions {
            max_elements_per_leaf: 16,
            ..CheckOptions::default()
        },
    )
    .unwrap();
    assert_eq!(rep.checked, 16);
    assert!(rep.max_rel_err <= TOL, "{rep}");
}
