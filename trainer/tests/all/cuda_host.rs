//! The trainer's GPU kernels run on the CPU: trainer/src/autodiff/cuda/ops.cuh and
//! kernels.cu compiled as host C++ with g++ (tests/cuda_host/harness.cpp; no
//! contraction into FMAs, as NVRTC is told with --fmad=false; warnings shown, not
//! fatal, so that a newer compiler's new warnings do not fail the check), each elementwise kernel
//! a loop over its elements, compared bit for bit with the Cpu backend:
//!
//! - the 16-bit conversions (every f16 and bf16 to f32 and f64, f32 and f64 to f16 and
//!   bf16 with round to nearest even, ties and the round-to-odd step through f32
//!   included), and every cast between the four precisions;
//! - every elementwise map (the activations and their derivatives are the runtime's
//!   polynomials with the CPU's fused multiply-adds; eˣ, ln, sin and cos are the host
//!   libm's on both sides here, CUDA's libdevice on a GPU), the log cosh family in one
//!   pass and its fused VJP;
//! - affine maps, binary ops, `add_scaled` and `mul_add` with every broadcast,
//!   `axpy` between every pair of precisions, broadcasts, sums of row groups and the
//!   row sums of narrow rows.
//!
//! This needs no GPU and no CUDA library and runs in every build (the kernels' source
//! is read from the crate); it is skipped, saying so, where g++ is missing.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use socflow_testkit::{build_cxx_harness, ok_or_skip, run_cxx_harness, special_values, Rng};
use socflow_trainer::autodiff::{
    Backend, BinaryOp, Broadcast, Cpu, CpuBuffer, DType, Reduction, Shape, UnaryOp,
};

/// The harness executable, built once per test run, or why it could not be.
fn harness() -> Result<PathBuf, String> {
    static EXE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    EXE.get_or_init(|| {
        let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/cuda_host/harness.cpp");
        let exe = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("trainer_cuda_host_harness");
        build_cxx_harness(&src, &exe)
    })
    .clone()
}

/// Runs the harness with `args`, `input` on stdin; returns its output numbers' bits.
fn run(exe: &Path, args: &[&str], input: &str) -> Vec<u64> {
    run_cxx_harness(exe, args, input)
        .iter()
        .map(|s| u64::from_str_radix(s, 16).expect("hex"))
        .collect()
}

/// The bits of a CPU buffer's elements.
fn bits(b: &CpuBuffer) -> Vec<u64> {
    match b {
        CpuBuffer::F64(v) => v.iter().map(|x| x.to_bits()).collect(),
        CpuBuffer::F32(v) => v.iter().map(|x| u64::from(x.to_bits())).collect(),
        CpuBuffer::Bf16(v) => v.iter().map(|x| u64::from(x.to_bits())).collect(),
        CpuBuffer::F16(v) => v.iter().map(|x| u64::from(x.to_bits())).collect(),
    }
}

/// A value of `dtype` from its bits.
fn value(b: u64, dtype: DType) -> f64 {
    match dtype {
        DType::F64 => f64::from_bits(b),
        DType::F32 => f64::from(f32::from_bits(b as u32)),
        DType::F16 => half::f16::from_bits(b as u16).to_f64(),
        DType::Bf16 => half::bf16::from_bits(b as u16).to_f64(),
    }
}

/// Appends a buffer's bits to the harness input.
fn push(input: &mut String, b: &CpuBuffer) {
    for x in bits(b) {
        input.push_str(&format!("{x:x} "));
    }
    input.push('\n');
}

/// Appends sizes, codes or f64 scalars (as bits).
fn push_ints(input: &mut String, xs: &[u64]) {
    for x in xs {
        input.push_str(&format!("{x:x} "));
    }
    input.push('\n');
}

/// Bit for bit (NaNs only as NaNs: their payloads may differ).
fn assert_same(what: &str, dtype: DType, got: &[u64], want: &CpuBuffer, inputs: &[f64]) {
    let want = bits(want);
    assert_eq!(got.len(), want.len(), "{what} ({dtype}): lengths");
    for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
        let (gv, wv) = (value(g, dtype), value(w, dtype));
        assert!(
            g == w || (gv.is_nan() && wv.is_nan()),
            "{what} ({dtype}) element {i} (input {:?}): kernel {gv:e} ({g:x}), CPU {wv:e} ({w:x})",
            inputs.get(i)
        );
    }
}

fn name(d: DType) -> &'static str {
    d.name()
}

const UNARY_CODES: [(UnaryOp, u64); 18] = [
    (UnaryOp::Neg, 0),
    (UnaryOp::Square, 1),
    (UnaryOp::Abs, 2),
    (UnaryOp::Sign, 3),
    (UnaryOp::Recip, 4),
    (UnaryOp::Exp, 5),
    (UnaryOp::Log, 6),
    (UnaryOp::Sqrt, 7),
    (UnaryOp::Tanh, 8),
    (UnaryOp::Sech2, 9),
    (UnaryOp::Sigmoid, 10),
    (UnaryOp::Silu, 11),
    (UnaryOp::SiluPrime, 12),
    (UnaryOp::SiluSecond, 13),
    (UnaryOp::Softplus, 14),
    (UnaryOp::LogCosh, 15),
    (UnaryOp::Sin, 16),
    (UnaryOp::Cos, 17),
];

fn bc_code(b: Broadcast) -> u64 {
    match b {
        Broadcast::None => 0,
        Broadcast::Row => 1,
        Broadcast::Col => 2,
        Broadcast::Scalar => 3,
    }
}

fn rhs_shape(s: Shape, bc: Broadcast) -> Shape {
    match bc {
        Broadcast::None => s,
        Broadcast::Row => Shape::new(1, s.cols),
        Broadcast::Col => Shape::new(s.rows, 1),
        Broadcast::Scalar => Shape::SCALAR,
    }
}

/// Every 16-bit pattern, f32 bit patterns (random, and every tie and near-tie around
/// the 16-bit types' rounding points), f64 values just off the ties: converted by the
/// cast kernels as `half` (through the Cpu backend) converts them.
#[test]
fn conversions_are_bitwise_half() {
    let exe = ok_or_skip!(harness());
    let cpu = Cpu::serial();
    let all16: Vec<u16> = (0..=u16::MAX).collect();
    let mut g = Rng(1);
    let mut f32s: Vec<f32> = (0..20_000)
        .map(|_| f32::from_bits(g.next_u64() as u32))
        .collect();
    for &h in all16.iter().step_by(7) {
        // Around each f16 value: the midpoints to its neighbours and one ulp of f32 off.
        let v = half::f16::from_bits(h).to_f32();
        let next = f32::from_bits(v.to_bits().wrapping_add(1 << 13));
        let mid = f32::from_bits(v.to_bits().wrapping_add(1 << 12));
        f32s.extend([v, next, mid, f32::from_bits(mid.to_bits() + 1)]);
        f32s.push(f32::from_bits(mid.to_bits().wrapping_sub(1)));
        // And around bfloat16's rounding point.
        let bmid = f32::from_bits(((h as u32) << 16) | 0x8000);
        f32s.extend([bmid, f32::from_bits(bmid.to_bits() + 1)]);
    }
    let mut f64s: Vec<f64> = f32s.iter().map(|&v| f64::from(v)).collect();
    // f64 values a hair above a 16-bit tie: plain f64 → f32 → f16 would round them
    // down twice; the round-to-odd step keeps them up.
    for &v in f32s.iter().take(5000) {
        f64s.push(f64::from(v) * (1.0 + 2f64.powi(-40)));
    }
    let sources: [(DType, Vec<f64>); 4] = [
        (
            DType::F16,
            all16
                .iter()
                .map(|&h| half::f16::from_bits(h).to_f64())
                .collect(),
        ),
        (
            DType::Bf16,
            all16
                .iter()
                .map(|&h| half::bf16::from_bits(h).to_f64())
                .collect(),
        ),
        (DType::F32, f32s.iter().map(|&v| f64::from(v)).collect()),
        (DType::F64, f64s),
    ];
    for (from, vals) in &sources {
        let x = cpu.upload(vals, *from).unwrap();
        for to in DType::ALL {
            let want = cpu.cast(&x, to).unwrap();
            let mut input = String::new();
            push_ints(&mut input, &[vals.len() as u64]);
            push(&mut input, &x);
            let got = run(&exe, &["cast", name(*from), name(to)], &input);
            assert_same(&format!("cast {from} → {to}"), to, &got, &want, vals);
        }
    }
}

/// Every elementwise map in every precision, and the log cosh family in one pass.
#[test]
fn elementwise_maps_are_bitwise_the_cpu() {
    let exe = ok_or_skip!(harness());
    let cpu = Cpu::serial();
    let xs = special_values(4000, 2);
    for dt in DType::ALL {
        let x = cpu.upload(&xs, dt).unwrap();
        for (op, code) in UNARY_CODES {
            let want = cpu.unary(op, &x).unwrap();
            let mut input = String::new();
            push_ints(&mut input, &[xs.len() as u64, code]);
            push(&mut input, &x);
            let got = run(&exe, &["unary", name(dt)], &input);
            assert_same(op.name(), dt, &got, &want, &xs);
        }
        let family = [UnaryOp::LogCosh, UnaryOp::Tanh, UnaryOp::Sech2];
        for want_mask in 1..8u64 {
            let ops: Vec<UnaryOp> = (0..3)
                .filter(|j| want_mask & (1 << j) != 0)
                .map(|j| family[j])
                .collect();
            let want: Vec<CpuBuffer> = ops.iter().map(|&op| cpu.unary(op, &x).unwrap()).collect();
            let mut input = String::new();
            push_ints(&mut input, &[xs.len() as u64, want_mask]);
            push(&mut input, &x);
            let got = run(&exe, &["logcosh3", name(dt)], &input);
            for (j, (op, w)) in ops.iter().zip(&want).enumerate() {
                let part = &got[j * xs.len()..(j + 1) * xs.len()];
                assert_same(&format!("logcosh3 {}", op.name()), dt, part, w, &xs);
            }
        }
        for (a, b) in [(1.0, 0.0), (-0.37, 2.5), (1e-3, -7.0)] {
            let want = cpu.affine(&x, a, b).unwrap();
            let mut input = String::new();
            push_ints(
                &mut input,
                &[xs.len() as u64, f64::to_bits(a), f64::to_bits(b)],
            );
            push(&mut input, &x);
            let got = run(&exe, &["affine", name(dt)], &input);
            assert_same(&format!("affine({a}, {b})"), dt, &got, &want, &xs);
        }
    }
}

/// Binary ops, `add_scaled` and `mul_add` with every broadcast.
#[test]
fn binary_ops_are_bitwise_the_cpu() {
    let exe = ok_or_skip!(harness());
    let cpu = Cpu::serial();
    let mut g = Rng(3);
    for s in [Shape::new(1, 1), Shape::new(13, 7), Shape::new(4, 40)] {
        for bc in [
            Broadcast::None,
            Broadcast::Row,
            Broadcast::Col,
            Broadcast::Scalar,
        ] {
            let rs = rhs_shape(s, bc);
            let a = g.vec(s.len(), 2.0);
            let mut c = g.vec(rs.len(), 2.0);
            c[0] = 0.0;
            let b = g.vec(s.len(), 1.5);
            for dt in DType::ALL {
                let (xa, xb, xc) = (
                    cpu.upload(&a, dt).unwrap(),
                    cpu.upload(&b, dt).unwrap(),
                    cpu.upload(&c, dt).unwrap(),
                );
                let header = |code: u64, alpha: f64| {
                    let mut input = String::new();
                    push_ints(
                        &mut input,
                        &[
                            s.rows as u64,
                            s.cols as u64,
                            code,
                            bc_code(bc),
                            alpha.to_bits(),
                        ],
                    );
                    input
                };
                for (op, code) in [
                    (BinaryOp::Add, 0),
                    (BinaryOp::Sub, 1),
                    (BinaryOp::Mul, 2),
                    (BinaryOp::Div, 3),
                ] {
                    let want = cpu.binary(op, &xa, s, &xc, bc).unwrap();
                    let mut input = header(code, 0.0);
                    push(&mut input, &xa);
                    push(&mut input, &xc);
                    let got = run(&exe, &["binary", name(dt)], &input);
                    assert_same(&format!("{} {s} {bc:?}", op.name()), dt, &got, &want, &a);
                }
                let want = cpu.add_scaled(&xa, s, &xc, bc, -0.3).unwrap();
                let mut input = header(0, -0.3);
                push(&mut input, &xa);
                push(&mut input, &xc);
                let got = run(&exe, &["add_scaled", name(dt)], &input);
                assert_same(&format!("add_scaled {s} {bc:?}"), dt, &got, &want, &a);
                let want = cpu.mul_add(&xa, &xb, s, &xc, bc, 0.7).unwrap();
                let mut input = header(0, 0.7);
                push(&mut input, &xa);
                push(&mut input, &xb);
                push(&mut input, &xc);
                let got = run(&exe, &["mul_add", name(dt)], &input);
                assert_same(&format!("mul_add {s} {bc:?}"), dt, &got, &want, &a);
            }
        }
    }
}

/// `axpy` between every pair of precisions (α = 1 and another), the log cosh family's
/// fused VJP with every subset of gradients.
#[test]
fn accumulations_are_bitwise_the_cpu() {
    let exe = ok_or_skip!(harness());
    let cpu = Cpu::serial();
    let mut g = Rng(4);
    let n = 2000;
    let d = g.vec(n, 3.0);
    let s = g.vec(n, 3.0);
    for dt in DType::ALL {
        for st in DType::ALL {
            for alpha in [1.0, -0.37] {
                let mut want = cpu.upload(&d, dt).unwrap();
                let src = cpu.upload(&s, st).unwrap();
                let mut input = String::new();
                push_ints(&mut input, &[n as u64, f64::to_bits(alpha)]);
                push(&mut input, &want);
                push(&mut input, &src);
                cpu.axpy(&mut want, alpha, &src).unwrap();
                let got = run(&exe, &["axpy", name(st), name(dt)], &input);
                assert_same(&format!("axpy ← {st}, α = {alpha}"), dt, &got, &want, &d);
            }
        }
        let xs = special_values(500, 5);
        let len = xs.len();
        let x = cpu.upload(&xs, dt).unwrap();
        let ops = [UnaryOp::LogCosh, UnaryOp::Tanh, UnaryOp::Sech2];
        let ys = cpu.unary_many(&ops, &x).unwrap();
        let grads: Vec<CpuBuffer> = (0..3)
            .map(|_| cpu.upload(&g.vec(len, 1.0), dt).unwrap())
            .collect();
        for mask in 1..8u64 {
            let gs: Vec<Option<&CpuBuffer>> = (0..3)
                .map(|j| (mask & (1 << j) != 0).then(|| &grads[j]))
                .collect();
            let yr: Vec<&CpuBuffer> = ys.iter().collect();
            let want = cpu
                .unary_many_vjp(&ops, &x, &yr, &gs)
                .unwrap()
                .expect("a fused kernel");
            let mut input = String::new();
            push_ints(&mut input, &[len as u64, mask]);
            push(&mut input, &ys[1]);
            push(&mut input, &ys[2]);
            for gj in gs.iter().flatten() {
                push(&mut input, gj);
            }
            let got = run(&exe, &["logcosh_vjp", name(dt)], &input);
            assert_same(&format!("logcosh VJP mask {mask}"), dt, &got, &want, &xs);
        }
    }
}

/// Broadcasts, sums of row groups, row sums of narrow rows.
#[test]
fn broadcasts_and_ordered_sums_are_bitwise_the_cpu() {
    let exe = ok_or_skip!(harness());
    let cpu = Cpu::serial();
    let mut g = Rng(6);
    for s in [
        Shape::new(1, 1),
        Shape::new(12, 5),
        Shape::new(9, 32),
        Shape::new(6, 50),
    ] {
        for dt in DType::ALL {
            for (kind, alpha) in [
                (Broadcast::Row, 1.0),
                (Broadcast::Col, -2.5),
                (Broadcast::Scalar, 0.3),
                (Broadcast::None, 1.5),
            ] {
                let from = rhs_shape(s, kind);
                let xv = g.vec(from.len(), 1.0);
                let x = cpu.upload(&xv, dt).unwrap();
                let want = cpu.broadcast(&x, from, s, alpha).unwrap();
                let mut input = String::new();
                push_ints(
                    &mut input,
                    &[s.rows as u64, s.cols as u64, bc_code(kind), alpha.to_bits()],
                );
                push(&mut input, &x);
                let got = run(&exe, &["broadcast", name(dt)], &input);
                assert_same(&format!("broadcast {from} → {s}"), dt, &got, &want, &xv);
            }
            let xv = g.vec(s.len() * 3, 2.0);
            let x = cpu.upload(&xv, dt).unwrap();
            let gs = Shape::new(s.rows * 3, s.cols);
            let want = cpu.sum_row_groups(&x, gs, 3).unwrap();
            let mut input = String::new();
            push_ints(&mut input, &[s.rows as u64, s.cols as u64, 3]);
            push(&mut input, &x);
            let got = run(&exe, &["sum_row_groups", name(dt)], &input);
            assert_same(&format!("sum_row_groups {gs}"), dt, &got, &want, &xv);
            for alpha in [1.0, -0.5] {
                let want = cpu.reduce(&x, gs, Reduction::Cols, alpha).unwrap();
                let mut input = String::new();
                push_ints(
                    &mut input,
                    &[gs.rows as u64, gs.cols as u64, alpha.to_bits()],
                );
                push(&mut input, &x);
                let got = run(&exe, &["reduce_cols", name(dt)], &input);
                assert_same(&format!("row sums {gs}"), dt, &got, &want, &xv);
            }
        }
    }
}
