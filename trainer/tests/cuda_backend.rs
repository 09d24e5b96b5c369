//! The GPU backend ([`Cuda`], feature `cuda`) against the CPU backend, the reference.
//!
//! Every [`Backend`] op runs on both on the same inputs (random values with zeros, ±∞,
//! NaN, tiny and huge ones; random shapes with every transpose and broadcast) in every
//! precision, and the results are compared:
//!
//! - bit for bit where both compute the same IEEE operations in the same order
//!   (uploads, casts, fills, data movement, the elementwise maps but eˣ, ln, sin and cos,
//!   affine maps, binary ops, the fused kernels, sums of row groups, narrow row sums);
//! - within 4 ulps of f32/f64 (1 ulp of f16/bf16) for eˣ, ln, sin and cos (CUDA's
//!   libdevice against the CPU's libm);
//! - within summation-order error for GEMMs and the other sums: |GPU − CPU| ≤
//!   ε·Σ|terms| with ε = 1e-5 in f32 (and for 16-bit inputs, which accumulate in f32,
//!   plus one ulp of the 16-bit result) and 1e-12 in f64.
//!
//! Then the parameter gradient of an OT-Flow loss (Φ, ‖∇Φ‖², ΔΦ) through [`Graph`] on
//! both, a discretize-then-optimize solve (RK4, the 16-bit trajectory, dynamic
//! adjoint scaling) on both: same loss and gradients to tolerance; and a few
//! iterations of each training loop (OT-Flow, flow matching, diffusion, NeuralSOC) on
//! both, and the `device = "cuda"` setting dispatching to the GPU.
//!
//! Without a device each GPU test prints `skipped: <reason>` and returns
//! (scripts/gpu-check counts those as failures on a GPU machine). Two tests run
//! everywhere: `Cuda::new` without a driver is a clear error, never a panic, and NVRTC
//! compiles every kernel wherever libnvrtc is found. With `SOCFLOW_GPU_TESTS_ON_CPU=1`
//! and no device, the GPU tests run with a second CPU backend in the device's place (a
//! dry run of the comparisons themselves; they still print that the GPU was skipped).

use std::sync::OnceLock;

use socflow_runtime::nn::OtFlowParams;
use socflow_testkit::{special_values, Rng};
use socflow_trainer::autodiff::cuda::{compile_ptx, kernel_names, kernel_params};
use socflow_trainer::autodiff::otflow::{potential, OtFlowVars};
use socflow_trainer::autodiff::{
    self, Backend, BinaryOp, Broadcast, Cpu, Cuda, DType, Error, Graph, Reduction, Shape, Storage,
    Tensor, UnaryOp, Var,
};
use socflow_trainer::dto::{Cotangents, Method, PrecisionPolicy, Solver};

// ---------------------------------------------------------------------------------------
// The device, and the dry run
// ---------------------------------------------------------------------------------------

/// The first GPU, opened once for the whole test binary, or why there is none.
fn cuda() -> Result<Cuda, String> {
    static DEV: OnceLock<Result<Cuda, String>> = OnceLock::new();
    DEV.get_or_init(|| {
        Cuda::new(0)
            .inspect(|c| {
                let g = c.gpu();
                let (major, minor) = g.compute_capability();
                eprintln!(
                    "GPU: {} (compute {major}.{minor}), {}",
                    g.name(),
                    g.libraries()
                );
            })
            .map_err(|e| e.to_string())
    })
    .clone()
}

/// Runs `test` with the GPU, or says why not (and, asked to, runs it with a second CPU
/// backend in the GPU's place).
macro_rules! with_device {
    ($test:ident) => {
        match cuda() {
            Ok(dev) => $test(&dev),
            Err(why) => {
                eprintln!("skipped: {why}");
                if std::env::var_os("SOCFLOW_GPU_TESTS_ON_CPU").is_some() {
                    eprintln!("dry run: the comparisons with Cpu::serial() as the device");
                    $test(&Cpu::serial());
                }
            }
        }
    };
}

// ---------------------------------------------------------------------------------------
// Comparisons
// ---------------------------------------------------------------------------------------

const DTYPES: [DType; 4] = DType::ALL;

/// The spacing of `dtype`'s numbers at |x| (at least its smallest normal's).
fn ulp(x: f64, dtype: DType) -> f64 {
    let min_normal = match dtype {
        DType::F64 => f64::MIN_POSITIVE,
        DType::F32 | DType::Bf16 => f64::from(f32::MIN_POSITIVE),
        DType::F16 => 6.103_515_625e-5,
    };
    2.0 * dtype.unit_roundoff() * x.abs().max(min_normal)
}

/// ε of a sum in the compute type (the 16-bit types accumulate in f32).
fn sum_eps(dtype: DType) -> f64 {
    if dtype == DType::F64 {
        1e-12
    } else {
        1e-5
    }
}

/// Compares the device's results with the CPU's: bit for bit when `ulps` is 0 and
/// there is no `scale`; else each within `ulps`·ulp + ε·scale (NaN only as NaN, ±∞
/// only as itself).
fn compare(what: &str, dtype: DType, dev: &[f64], cpu: &[f64], ulps: f64, scale: Option<&[f64]>) {
    assert_eq!(dev.len(), cpu.len(), "{what} ({dtype}): lengths");
    let mut worst = 0.0f64;
    for (i, (&g, &c)) in dev.iter().zip(cpu).enumerate() {
        if ulps == 0.0 && scale.is_none() {
            let same = g.to_bits() == c.to_bits() || (g.is_nan() && c.is_nan());
            assert!(
                same,
                "{what} ({dtype}) element {i}: device {g:e}, CPU {c:e} (bitwise)"
            );
            continue;
        }
        if g.is_nan() || c.is_nan() || g.is_infinite() || c.is_infinite() {
            assert!(
                (g.is_nan() && c.is_nan()) || g == c,
                "{what} ({dtype}) element {i}: device {g:e}, CPU {c:e}"
            );
            continue;
        }
        let allowed = ulps * ulp(c, dtype) + scale.map_or(0.0, |s| sum_eps(dtype) * s[i]);
        let diff = (g - c).abs();
        worst = worst.max(diff / allowed.max(f64::MIN_POSITIVE));
        assert!(
            diff <= allowed,
            "{what} ({dtype}) element {i}: device {g:e}, CPU {c:e}, difference {diff:e} > {allowed:e}"
        );
    }
    if ulps > 0.0 || scale.is_some() {
        eprintln!("{what} ({dtype}): worst difference {worst:.2} of the tolerance");
    }
}

fn upload_all<B: Backend>(be: &B, inputs: &[(Vec<f64>, DType)]) -> Vec<B::Buffer> {
    inputs
        .iter()
        .map(|(v, d)| be.upload(v, *d).expect("upload"))
        .collect()
}

fn result_of<B: Backend>(what: &str, be: &B, r: autodiff::Result<B::Buffer>) -> Vec<f64> {
    let b = r.unwrap_or_else(|e| panic!("{what} on {}: {e}", be.name()));
    be.download(&b).expect("download")
}

/// Runs `$body` (with `$be` the backend and `$x` the uploaded inputs, returning a
/// `Result<Buffer>`) on the CPU and on the device: (device's values, CPU's values).
macro_rules! both {
    ($what:expr, $dev:expr, $inputs:expr, |$be:ident, $x:ident| $body:expr) => {{
        let inputs: &[(Vec<f64>, DType)] = &$inputs;
        let cpu = {
            let $be = &Cpu::new();
            #[allow(unused_mut, unused_variables)]
            let mut $x = upload_all($be, inputs);
            result_of($what, $be, $body)
        };
        let dev = {
            let $be = $dev;
            #[allow(unused_mut, unused_variables)]
            let mut $x = upload_all($be, inputs);
            result_of($what, $be, $body)
        };
        (dev, cpu)
    }};
}

fn randn(n: usize, seed: u64, scale: f64) -> Vec<f64> {
    Rng(seed).vec(n, scale)
}

/// Shapes for elementwise and reduction tests: edge cases, then random ones.
fn shapes(seed: u64) -> Vec<Shape> {
    let mut v = vec![
        Shape::new(1, 1),
        Shape::new(1, 7),
        Shape::new(9, 1),
        Shape::new(0, 3),
        Shape::new(3, 0),
        Shape::new(33, 32),
        Shape::new(17, 33),
        Shape::new(300, 70),
    ];
    let mut g = Rng(seed);
    for _ in 0..4 {
        let r = 1 + (g.next_u64() % 90) as usize;
        let c = 1 + (g.next_u64() % 50) as usize;
        v.push(Shape::new(r, c));
    }
    v
}

fn rhs_shape(s: Shape, bc: Broadcast) -> Shape {
    match bc {
        Broadcast::None => s,
        Broadcast::Row => Shape::new(1, s.cols),
        Broadcast::Col => Shape::new(s.rows, 1),
        Broadcast::Scalar => Shape::SCALAR,
    }
}

const BROADCASTS: [Broadcast; 4] = [
    Broadcast::None,
    Broadcast::Row,
    Broadcast::Col,
    Broadcast::Scalar,
];

// ---------------------------------------------------------------------------------------
// Tests that run everywhere
// ---------------------------------------------------------------------------------------

/// Without a driver (or without a GPU) `Cuda::new` is an error saying so; on a GPU
/// machine an ordinal out of range is one too. Never a panic.
#[test]
fn cuda_new_without_a_device_is_an_error() {
    let r = std::panic::catch_unwind(|| Cuda::new(0).map(|_| ()));
    let r = r.expect("Cuda::new must not panic");
    match r {
        Ok(()) => {
            let e = Cuda::new(1 << 20).expect_err("ordinal 2^20 is out of range");
            assert!(matches!(e, Error::Backend { .. }), "{e:?}");
            assert!(e.to_string().contains("out of range"), "{e}");
            eprintln!("a device is present; ordinal 2^20: {e}");
        }
        Err(e) => {
            assert!(
                matches!(
                    e,
                    Error::Backend {
                        backend: "cuda",
                        ..
                    }
                ),
                "{e:?}"
            );
            let msg = e.to_string();
            assert!(
                msg.contains("driver") || msg.contains("not found") || msg.contains("GPU"),
                "the error says what is missing: {msg}"
            );
            eprintln!("no device: {msg}");
        }
    }
}

/// NVRTC compiles the kernel source for Ampere and Hopper, every kernel is in the PTX,
/// and (--fmad=false) no multiply-add is contracted where the CPU has none.
#[test]
fn nvrtc_compiles_every_kernel() {
    for arch in ["compute_80", "compute_90"] {
        let ptx = match compile_ptx(arch) {
            Ok(p) => p,
            Err(Error::Backend { message, .. }) if message.contains("not found") => {
                eprintln!("skipped: {message}");
                return;
            }
            Err(e) => panic!("{arch}: {e}"),
        };
        let names = kernel_names();
        assert!(names.len() > 100, "{} kernels", names.len());
        // Every kernel is there, with the parameter list the backend checks each
        // launch against (read from the source): NVRTC's own reading of it.
        let params = kernel_params().unwrap();
        for k in &names {
            let entry = format!(".entry {k}(");
            let at = ptx
                .find(&entry)
                .unwrap_or_else(|| panic!("{arch}: no {entry} in the PTX"));
            let list = &ptx[at + entry.len()..];
            let list = &list[..list.find(')').expect("a closed parameter list")];
            let types: Vec<&str> = list
                .split(',')
                .map(|p| p.split_whitespace().nth(1).expect("`.param .type name`"))
                .collect();
            let expected: Vec<String> = params[k]
                .iter()
                .map(|p| format!(".{}", p.ptx_type()))
                .collect();
            assert_eq!(types, expected, "{arch}: {k}'s parameters");
        }
        // The affine kernel is a·x + b rounded twice, as on the CPU: a multiply and an
        // add, no fma.
        let affine = ptx
            .split(".entry ")
            .find(|s| s.starts_with("affine_f32("))
            .expect("affine_f32 in the PTX");
        assert!(
            !affine.contains("fma.rn.f32"),
            "{arch}: contracted FMA in affine_f32"
        );
        assert!(affine.contains("mul.rn.f32") || affine.contains("mul.f32"));
        // The activations' explicit fma() calls are there.
        let unary = ptx
            .split(".entry ")
            .find(|s| s.starts_with("unary_f64("))
            .expect("unary_f64 in the PTX");
        assert!(
            unary.contains("fma.rn.f64"),
            "{arch}: unary_f64 lost its fma()"
        );
        eprintln!(
            "{arch}: {} kernels, {} bytes of PTX",
            names.len(),
            ptx.len()
        );
    }
}

// ---------------------------------------------------------------------------------------
// Every op against the CPU
// ---------------------------------------------------------------------------------------

fn transfers<D: Backend>(dev: &D) {
    // Values that need care to round: halfway between f16 neighbours (ties to even),
    // just above halfway (round to odd through f32), f16 subnormals, overflow.
    let mut v = special_values(500, 1);
    v.extend([
        1.0 + 2f64.powi(-11),
        1.0 + 2f64.powi(-11) + 2f64.powi(-40),
        1.0 + 3.0 * 2f64.powi(-11),
        6e-8,
        3e-8,
        65504.0,
        65520.0,
        1e-40,
        3.4e38,
        3.5e38,
    ]);
    for dt in DTYPES {
        let (g, c) = both!("upload", dev, [(v.clone(), dt)], |be, x| Ok(x.remove(0)));
        compare("upload/download", dt, &g, &c, 0.0, None);
        for value in [
            0.1,
            -0.0,
            1.0 + 2f64.powi(-11) + 2f64.powi(-40),
            1e30,
            f64::NAN,
        ] {
            let (g, c) = both!("full", dev, [], |be, x| be.full(37, value, dt));
            compare(&format!("full({value})"), dt, &g, &c, 0.0, None);
        }
        let (g, c) = both!("full", dev, [], |be, x| be.full(0, 1.0, dt));
        assert!(g.is_empty() && c.is_empty());
        let (g, c) = both!("copy", dev, [(v.clone(), dt)], |be, x| be.copy(&x[0]));
        compare("copy", dt, &g, &c, 0.0, None);
        for to in DTYPES {
            let (g, c) = both!("cast", dev, [(v.clone(), dt)], |be, x| be.cast(&x[0], to));
            compare(&format!("cast {dt} → {to}"), to, &g, &c, 0.0, None);
        }
    }
}

/// Uploads, downloads, fills, copies and every cast, bit for bit.
#[test]
fn memory_counts_the_bytes_of_live_buffers_and_their_peak() {
    let dev = match cuda() {
        // A backend of its own (its own counter), so tests running beside it on the
        // shared device do not move the figures.
        Ok(d) => Cuda::on(d.gpu().clone()).expect("a second backend on the device"),
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    assert_eq!(dev.memory().live_bytes, 0);
    let a = dev.upload(&vec![1.0; 1000], DType::F32).unwrap();
    let b = dev.upload(&vec![1.0; 300], DType::F16).unwrap();
    let c = dev.upload(&[1.0], DType::F64).unwrap();
    // One allocation per buffer, of the elements' bytes; never fewer than 8.
    assert_eq!(dev.memory().live_bytes, 4000 + 600 + 8);
    assert_eq!(dev.memory().peak_bytes, 4608);
    drop(a);
    assert_eq!(dev.memory().live_bytes, 608);
    assert_eq!(dev.memory().peak_bytes, 4608);
    dev.reset_peak_memory();
    assert_eq!(dev.memory().peak_bytes, 608);
    // An op's output counts too, and so does its scratch while it lives.
    let s = dev.unary(UnaryOp::Square, &b).unwrap();
    assert_eq!(dev.memory().live_bytes, 608 + 600);
    drop((b, c, s));
    assert_eq!(dev.memory().live_bytes, 0);
    assert!(dev.memory().peak_bytes >= 1208);
}

#[test]
fn transfers_and_casts_are_bitwise() {
    with_device!(transfers);
}

fn elementwise<D: Backend>(dev: &D) {
    let v = special_values(3000, 2);
    for dt in DTYPES {
        for op in UnaryOp::ALL {
            let (g, c) = both!("unary", dev, [(v.clone(), dt)], |be, x| be.unary(op, &x[0]));
            let libm = matches!(
                op,
                UnaryOp::Exp | UnaryOp::Log | UnaryOp::Sin | UnaryOp::Cos
            );
            let ulps = match (libm, dt.is_half()) {
                (false, _) => 0.0,
                (true, false) => 4.0,
                (true, true) => 1.0,
            };
            compare(op.name(), dt, &g, &c, ulps, None);
        }
        // Several maps of one input: the log cosh family in one pass, others one by one.
        let sets: [&[UnaryOp]; 5] = [
            &[UnaryOp::LogCosh, UnaryOp::Tanh, UnaryOp::Sech2],
            &[UnaryOp::Sech2, UnaryOp::LogCosh],
            &[UnaryOp::Tanh, UnaryOp::Sech2],
            &[UnaryOp::Silu, UnaryOp::SiluPrime, UnaryOp::SiluSecond],
            &[UnaryOp::Softplus, UnaryOp::Sigmoid],
        ];
        for ops in sets {
            for j in 0..ops.len() {
                let (g, c) = both!("unary_many", dev, [(v.clone(), dt)], |be, x| {
                    be.unary_many(ops, &x[0]).map(|mut ys| ys.remove(j))
                });
                compare(&format!("unary_many {ops:?}[{j}]"), dt, &g, &c, 0.0, None);
            }
        }
        for (a, b) in [(1.0, 0.0), (-0.37, 2.5), (1e-3, -7.0)] {
            let (g, c) = both!("affine", dev, [(v.clone(), dt)], |be, x| be
                .affine(&x[0], a, b));
            compare(&format!("affine({a}, {b})"), dt, &g, &c, 0.0, None);
        }
    }
}

/// Every map (bitwise, eˣ/ln/sin/cos within a few ulps), `unary_many`, affine maps.
#[test]
fn elementwise_maps_match_the_cpu() {
    with_device!(elementwise);
}

fn binaries<D: Backend>(dev: &D) {
    for (si, s) in shapes(3).into_iter().enumerate() {
        for bc in BROADCASTS {
            let rs = rhs_shape(s, bc);
            let seed = 100 + si as u64;
            let a = randn(s.len(), seed, 2.0);
            let mut b = randn(rs.len(), seed + 7, 2.0);
            if let Some(first) = b.first_mut() {
                *first = 0.0; // a division by zero
            }
            let c = randn(s.len(), seed + 9, 1.5);
            for dt in DTYPES {
                for op in [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div] {
                    let (g, cp) = both!(
                        "binary",
                        dev,
                        [(a.clone(), dt), (b.clone(), dt)],
                        |be, x| be.binary(op, &x[0], s, &x[1], bc)
                    );
                    compare(&format!("{} {s} {bc:?}", op.name()), dt, &g, &cp, 0.0, None);
                }
                let (g, cp) = both!(
                    "add_scaled",
                    dev,
                    [(a.clone(), dt), (b.clone(), dt)],
                    |be, x| be.add_scaled(&x[0], s, &x[1], bc, -0.3)
                );
                compare(&format!("add_scaled {s} {bc:?}"), dt, &g, &cp, 0.0, None);
                let (g, cp) = both!(
                    "mul_add",
                    dev,
                    [(a.clone(), dt), (c.clone(), dt), (b.clone(), dt)],
                    |be, x| be.mul_add(&x[0], &x[1], s, &x[2], bc, 0.7)
                );
                compare(&format!("mul_add {s} {bc:?}"), dt, &g, &cp, 0.0, None);
            }
        }
    }
}

/// Binary ops, `add_scaled` and `mul_add` with every broadcast, bit for bit.
#[test]
fn binary_ops_with_broadcasts_are_bitwise() {
    with_device!(binaries);
}

fn accumulations<D: Backend>(dev: &D) {
    let n = 1000;
    let d = randn(n, 11, 3.0);
    let s = randn(n, 12, 3.0);
    for dt in DTYPES {
        let (g, c) = both!(
            "add_assign",
            dev,
            [(d.clone(), dt), (s.clone(), dt)],
            |be, x| {
                let src = x.pop().expect("two");
                let mut dst = x.pop().expect("two");
                be.add_assign(&mut dst, &src).map(|_| dst)
            }
        );
        compare("add_assign", dt, &g, &c, 0.0, None);
        for st in DTYPES {
            for alpha in [1.0, -0.37] {
                let (g, c) = both!("axpy", dev, [(d.clone(), dt), (s.clone(), st)], |be, x| {
                    let src = x.pop().expect("two");
                    let mut dst = x.pop().expect("two");
                    be.axpy(&mut dst, alpha, &src).map(|_| dst)
                });
                compare(&format!("axpy ← {st}, α = {alpha}"), dt, &g, &c, 0.0, None);
            }
        }
        // The log cosh family's fused VJP, with every subset of incoming gradients.
        let xs = special_values(500, 13);
        let len = xs.len();
        let gl = randn(len, 14, 1.0);
        let gt = randn(len, 15, 1.0);
        let gq = randn(len, 16, 1.0);
        let ops = [UnaryOp::LogCosh, UnaryOp::Tanh, UnaryOp::Sech2];
        for mask in 1..8u32 {
            let (g, c) = both!(
                "unary_many_vjp",
                dev,
                [
                    (xs.clone(), dt),
                    (gl.clone(), dt),
                    (gt.clone(), dt),
                    (gq.clone(), dt)
                ],
                |be, x| {
                    let ys = be.unary_many(&ops, &x[0]).expect("the three maps");
                    let yr: Vec<_> = ys.iter().collect();
                    let gs: Vec<_> = (0..3)
                        .map(|j| (mask & (1 << j) != 0).then(|| &x[1 + j]))
                        .collect();
                    be.unary_many_vjp(&ops, &x[0], &yr, &gs)
                        .map(|r| r.expect("a fused kernel for the family"))
                }
            );
            compare(
                &format!("logcosh family VJP, mask {mask}"),
                dt,
                &g,
                &c,
                0.0,
                None,
            );
        }
    }
}

/// `add_assign`, `axpy` between every pair of precisions, the fused VJP: bitwise.
#[test]
fn accumulations_are_bitwise() {
    with_device!(accumulations);
}

/// Σ_p |op(A)_ip|·|op(B)_pj|: the scale of a product's rounding errors.
fn product_scale(a: &[f64], sa: Shape, ta: bool, b: &[f64], sb: Shape, tb: bool) -> Vec<f64> {
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
    let mut out = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            out[i * n + j] = (0..k).map(|p| (at(i, p) * bt(p, j)).abs()).sum();
        }
    }
    out
}

/// The values a backend holds for `v` in `dtype` (the inputs as rounded).
fn rounded(v: &[f64], dtype: DType) -> Vec<f64> {
    let cpu = Cpu::serial();
    cpu.download(&cpu.upload(v, dtype).expect("upload"))
        .expect("download")
}

fn products<D: Backend>(dev: &D) {
    // (m, k, n): tiny, odd, a long inner size (the CPU's skinny path), wide.
    let sizes = [
        (1, 1, 1),
        (7, 13, 5),
        (64, 100, 33),
        (300, 257, 3),
        (2, 1000, 17),
        (129, 64, 200),
        (5, 0, 4),
        (0, 3, 4),
    ];
    for (case, &(m, k, n)) in sizes.iter().enumerate() {
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
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
            let seed = 200 + 4 * case as u64 + 2 * ta as u64 + tb as u64;
            let a = randn(sa.len(), seed, 1.0);
            let b = randn(sb.len(), seed + 50, 1.0);
            let d0 = randn(m * n, seed + 60, 2.0);
            for dt in DTYPES {
                let (ar, br, dr) = (rounded(&a, dt), rounded(&b, dt), rounded(&d0, dt));
                let scale = product_scale(&ar, sa, ta, &br, sb, tb);
                let ulps = if dt.is_half() { 1.0 } else { 0.0 };
                let what = format!("matmul {m}×{k}×{n} ta={ta} tb={tb}");
                let (g, c) = both!(
                    "matmul",
                    dev,
                    [(a.clone(), dt), (b.clone(), dt)],
                    |be, x| be.matmul(&x[0], sa, ta, &x[1], sb, tb)
                );
                compare(&what, dt, &g, &c, ulps, Some(&scale));
                let beta: f64 = -0.75;
                let acc_scale: Vec<f64> = scale
                    .iter()
                    .zip(&dr)
                    .map(|(s, d)| d.abs() + beta.abs() * s)
                    .collect();
                let (g, c) = both!(
                    "matmul_acc",
                    dev,
                    [(d0.clone(), dt), (a.clone(), dt), (b.clone(), dt)],
                    |be, x| {
                        let mut dst = x.remove(0);
                        be.matmul_acc(&mut dst, &x[0], sa, ta, &x[1], sb, tb, beta)
                            .map(|_| dst)
                    }
                );
                compare(&format!("{what} (acc)"), dt, &g, &c, ulps, Some(&acc_scale));
            }
        }
    }
}

/// GEMMs and accumulating GEMMs (every transpose; f16/bf16 inputs read exactly with
/// f32 accumulation) within summation-order error of the CPU's.
#[test]
fn products_match_the_cpu() {
    with_device!(products);
}

fn reductions<D: Backend>(dev: &D) {
    for (si, s) in shapes(5).into_iter().enumerate() {
        let x = randn(s.len(), 300 + si as u64, 2.0);
        let abs: Vec<f64> = x.iter().map(|v| v.abs()).collect();
        for dt in DTYPES {
            let xr = rounded(&x, dt);
            let ar: Vec<f64> = xr.iter().map(|v| v.abs()).collect();
            let ulps = if dt.is_half() { 1.0 } else { 0.0 };
            for alpha in [1.0, -0.5] {
                // Rows: narrow ones are summed in the CPU's order (bitwise).
                let (g, c) = both!("reduce cols", dev, [(x.clone(), dt)], |be, v| be.reduce(
                    &v[0],
                    s,
                    Reduction::Cols,
                    alpha
                ));
                if s.cols <= 32 {
                    compare(&format!("sum over columns {s}"), dt, &g, &c, 0.0, None);
                } else {
                    let sc: Vec<f64> = ar
                        .chunks(s.cols)
                        .map(|r| r.iter().sum::<f64>() * alpha.abs())
                        .collect();
                    compare(
                        &format!("sum over columns {s}"),
                        dt,
                        &g,
                        &c,
                        ulps,
                        Some(&sc),
                    );
                }
                let mut sc = vec![0.0; s.cols];
                if s.cols > 0 {
                    for row in ar.chunks(s.cols) {
                        for (a, v) in sc.iter_mut().zip(row) {
                            *a += v * alpha.abs();
                        }
                    }
                }
                let (g, c) = both!("reduce rows", dev, [(x.clone(), dt)], |be, v| be.reduce(
                    &v[0],
                    s,
                    Reduction::Rows,
                    alpha
                ));
                compare(&format!("sum over rows {s}"), dt, &g, &c, ulps, Some(&sc));
                let total = [ar.iter().sum::<f64>() * alpha.abs()];
                let (g, c) = both!("reduce all", dev, [(x.clone(), dt)], |be, v| be.reduce(
                    &v[0],
                    s,
                    Reduction::All,
                    alpha
                ));
                compare(&format!("total sum {s}"), dt, &g, &c, ulps, Some(&total));
            }
            // Sums of row groups (bitwise: each in row order) and of tiles.
            for k in [1usize, 3] {
                let rows = s.rows - s.rows % k;
                let gs = Shape::new(rows, s.cols);
                let xv = x[..gs.len()].to_vec();
                let (g, c) = both!("sum_row_groups", dev, [(xv.clone(), dt)], |be, v| be
                    .sum_row_groups(&v[0], gs, k));
                compare(&format!("sum_row_groups {gs} k={k}"), dt, &g, &c, 0.0, None);
                if rows > 0 {
                    let tile = gs.len() / k;
                    let mut sc = vec![0.0; tile];
                    for t in 0..k {
                        for (a, v) in sc.iter_mut().zip(&ar[t * tile..(t + 1) * tile]) {
                            *a += v;
                        }
                    }
                    let (g, c) = both!("sum_tiles", dev, [(xv, dt)], |be, v| be
                        .sum_tiles(&v[0], gs, k));
                    compare(
                        &format!("sum_tiles {gs} times={k}"),
                        dt,
                        &g,
                        &c,
                        ulps,
                        Some(&sc),
                    );
                }
            }
            let _ = &abs;
        }
    }
    // Long sums: many chunks of the column sums, many blocks of the total.
    let s = Shape::new(40_000, 5);
    let x = randn(s.len(), 400, 1.0);
    for dt in DTYPES {
        let ar: Vec<f64> = rounded(&x, dt).iter().map(|v| v.abs()).collect();
        let ulps = if dt.is_half() { 1.0 } else { 0.0 };
        let mut sc = vec![0.0; s.cols];
        for row in ar.chunks(s.cols) {
            for (a, v) in sc.iter_mut().zip(row) {
                *a += v;
            }
        }
        let (g, c) = both!("reduce rows", dev, [(x.clone(), dt)], |be, v| be.reduce(
            &v[0],
            s,
            Reduction::Rows,
            1.0
        ));
        compare(&format!("sum over rows {s}"), dt, &g, &c, ulps, Some(&sc));
        let total = [ar.iter().sum::<f64>()];
        let (g, c) = both!("reduce all", dev, [(x.clone(), dt)], |be, v| be.reduce(
            &v[0],
            s,
            Reduction::All,
            1.0
        ));
        compare(&format!("total sum {s}"), dt, &g, &c, ulps, Some(&total));
    }
}

/// Sums over columns, rows, everything, row groups and tiles.
#[test]
fn reductions_match_the_cpu() {
    with_device!(reductions);
}

fn movements<D: Backend>(dev: &D) {
    for (si, s) in shapes(7).into_iter().enumerate() {
        let x = randn(s.len(), 500 + si as u64, 1.0);
        for dt in DTYPES {
            for (from, alpha) in [
                (Shape::new(1, s.cols), 1.0),
                (Shape::new(s.rows, 1), -2.5),
                (Shape::SCALAR, 0.3),
                (s, 1.5),
            ] {
                let xv = randn(from.len(), 600 + si as u64, 1.0);
                let (g, c) = both!("broadcast", dev, [(xv, dt)], |be, v| be
                    .broadcast(&v[0], from, s, alpha));
                compare(&format!("broadcast {from} → {s}"), dt, &g, &c, 0.0, None);
            }
            let (c0, c1) = (s.cols / 3, s.cols - s.cols / 4);
            let (g, c) = both!("slice_cols", dev, [(x.clone(), dt)], |be, v| be
                .slice_cols(&v[0], s, c0, c1));
            compare(&format!("slice_cols {s} {c0}..{c1}"), dt, &g, &c, 0.0, None);
            let (g, c) = both!("embed_cols", dev, [(x.clone(), dt)], |be, v| be.embed_cols(
                &v[0],
                s,
                2,
                s.cols + 5
            ));
            compare(&format!("embed_cols {s}"), dt, &g, &c, 0.0, None);
            let other = Shape::new(s.rows, 3);
            let y = randn(other.len(), 700, 1.0);
            let (g, c) = both!("concat_cols", dev, [(x.clone(), dt), (y, dt)], |be, v| be
                .concat_cols(&[(&v[0], s), (&v[1], other), (&v[0], s)]));
            compare(&format!("concat_cols {s}"), dt, &g, &c, 0.0, None);
            for k in [1usize, 4] {
                let (g, c) = both!("repeat_rows", dev, [(x.clone(), dt)], |be, v| be
                    .repeat_rows(&v[0], s, k));
                compare(&format!("repeat_rows {s} k={k}"), dt, &g, &c, 0.0, None);
                let (g, c) = both!("tile_rows", dev, [(x.clone(), dt)], |be, v| be
                    .tile_rows(&v[0], s, k));
                compare(&format!("tile_rows {s} times={k}"), dt, &g, &c, 0.0, None);
            }
        }
    }
}

/// Broadcasts, column slices and embeddings, concatenations, row repeats and tiles.
#[test]
fn data_movement_is_bitwise() {
    with_device!(movements);
}

fn magnitudes<D: Backend>(dev: &D) {
    for dt in DTYPES {
        let mut x = randn(100_000, 800, 3.0);
        x[77_777] = -1e4;
        let cases: [(&str, Vec<f64>); 5] = [
            ("finite", x.clone()),
            ("with +∞", {
                let mut v = x.clone();
                v[5] = f64::INFINITY;
                v
            }),
            ("with NaN", {
                let mut v = x.clone();
                v[99_999] = f64::NAN;
                v
            }),
            ("empty", Vec::new()),
            ("one", vec![-0.25]),
        ];
        for (what, v) in cases {
            let cpu = Cpu::new();
            let (bc, bd) = (cpu.upload(&v, dt).unwrap(), dev.upload(&v, dt).unwrap());
            let (mc, md) = (cpu.max_abs(&bc).unwrap(), dev.max_abs(&bd).unwrap());
            assert!(
                mc.to_bits() == md.to_bits() || (mc.is_nan() && md.is_nan()),
                "max_abs {what} ({dt}): device {md}, CPU {mc}"
            );
            assert_eq!(
                cpu.all_finite(&bc).unwrap(),
                dev.all_finite(&bd).unwrap(),
                "all_finite {what} ({dt})"
            );
        }
    }
}

/// The largest magnitude (NaN-sticky) and the finiteness check the adjoint scaling
/// reads: exact.
#[test]
fn magnitudes_are_exact() {
    with_device!(magnitudes);
}

fn errors<D: Backend>(dev: &D) {
    let a = dev.upload(&[1.0; 6], DType::F32).unwrap();
    let b = dev.upload(&[1.0; 6], DType::F16).unwrap();
    let s = Shape::new(2, 3);
    assert!(matches!(
        dev.binary(BinaryOp::Add, &a, s, &b, Broadcast::None),
        Err(Error::DType { .. })
    ));
    assert!(matches!(
        dev.binary(BinaryOp::Add, &a, Shape::new(3, 3), &a, Broadcast::None),
        Err(Error::Length { .. })
    ));
    assert!(matches!(
        dev.matmul(&a, s, false, &a, s, false),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        dev.slice_cols(&a, s, 2, 4),
        Err(Error::InvalidShape { .. })
    ));
    assert!(matches!(
        dev.sum_row_groups(&a, s, 4),
        Err(Error::InvalidShape { .. })
    ));
    let mut d = dev.upload(&[0.0; 5], DType::F32).unwrap();
    assert!(matches!(
        dev.axpy(&mut d, 1.0, &a),
        Err(Error::Length { .. })
    ));
    assert_eq!(a.len(), 6);
    assert_eq!(b.dtype(), DType::F16);
}

/// Misfitting operands are the CPU's typed errors, not device faults.
#[test]
fn misfits_are_typed_errors() {
    with_device!(errors);
}

// ---------------------------------------------------------------------------------------
// Through the graph: an OT-Flow loss's gradient
// ---------------------------------------------------------------------------------------

/// ℓ = mean Φ + mean ‖∇Φ‖² + mean ΔΦ and ∂ℓ/∂θ for every parameter θ.
fn otflow_loss<B: Backend>(be: B, p: &OtFlowParams, s: &[f64], dtype: DType) -> Vec<Vec<f64>> {
    let mut g = Graph::new(be);
    let vars = OtFlowVars::new(&mut g, p, dtype, true).unwrap();
    let sv = g
        .leaf_f64(s.len() / (p.d + 1), p.d + 1, s, dtype, false)
        .unwrap();
    let out = potential(&mut g, &vars, sv, true).unwrap();
    let sq = g.square(out.grad).unwrap();
    let gn = g.sum_cols(sq).unwrap();
    let terms = [out.phi, gn, out.lap.expect("asked for")];
    let mut loss: Option<Var> = None;
    for t in terms {
        let m = g.mean(t).unwrap();
        loss = Some(match loss {
            None => m,
            Some(l) => g.add(l, m).unwrap(),
        });
    }
    let loss = loss.expect("three terms");
    let grads = g.backward(loss, None).unwrap();
    let mut out = vec![g.to_f64(loss).unwrap()];
    for v in vars.all() {
        let t = grads.get(v).expect("every parameter has a gradient");
        out.push(t.to_f64(g.backend()).unwrap());
    }
    out
}

/// The largest |a − b| over the largest |b| of each tensor.
fn rel_diffs(a: &[Vec<f64>], b: &[Vec<f64>]) -> Vec<f64> {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let m = y.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-300);
            x.iter()
                .zip(y)
                .fold(0.0f64, |w, (p, q)| w.max((p - q).abs()))
                / m
        })
        .collect()
}

fn otflow_gradient<D: Backend + Clone>(dev: &D) {
    let (d, m, n_th) = (3, 16, 3);
    let mut sd = socflow_testkit::otflow_state_dict(d, m, n_th, 17);
    let p = OtFlowParams::from_state_dict(d, m, n_th, d + 1, &mut sd).unwrap();
    let mut rng = Rng(18);
    let n = 256;
    let mut s = Vec::with_capacity(n * (d + 1));
    for _ in 0..n {
        s.extend(rng.vec(d, 1.0));
        s.push(rng.uniform());
    }
    let exact = otflow_loss(Cpu::new(), &p, &s, DType::F64);
    for dt in DTYPES {
        let cpu = otflow_loss(Cpu::new(), &p, &s, dt);
        let on_dev = otflow_loss(dev.clone(), &p, &s, dt);
        let dev_cpu = rel_diffs(&on_dev, &cpu);
        let cpu_err = rel_diffs(&cpu, &exact);
        let worst = dev_cpu.iter().fold(0.0f64, |a, &b| a.max(b));
        let worst_cpu = cpu_err.iter().fold(0.0f64, |a, &b| a.max(b));
        eprintln!(
            "OT-Flow loss gradient ({dt}): device vs CPU {worst:.2e}; CPU {dt} vs f64 {worst_cpu:.2e}; loss {} vs {}",
            on_dev[0][0], cpu[0][0]
        );
        // The device's rounding differs from the CPU's only in sums: its distance to
        // the CPU is of the order of the CPU's own distance to the exact gradient.
        let tol = match dt {
            DType::F64 => 1e-11,
            DType::F32 => (10.0 * worst_cpu).max(1e-5),
            _ => 4.0 * worst_cpu,
        };
        for (i, e) in dev_cpu.iter().enumerate() {
            assert!(
                *e <= tol,
                "{dt}: tensor {i} (0 = the loss, then K₀…, b₀…, w, A, c) differs by {e:e} > {tol:e}"
            );
        }
    }
}

/// The parameter gradient of an OT-Flow loss (Φ, ‖∇Φ‖², exact ΔΦ) through `Graph`,
/// every precision, relative per tensor over a few hundred ops: f64 to 1e-11, f32 to
/// 1e-5 (or 10× the CPU's own f32 error), 16-bit within 4× the CPU's own 16-bit error.
#[test]
fn otflow_gradient_matches_the_cpu() {
    with_device!(otflow_gradient);
}

// ---------------------------------------------------------------------------------------
// A discretize-then-optimize solve with the 16-bit trajectory and dynamic scaling
// ---------------------------------------------------------------------------------------

/// f(t, y) = tanh(y·W₁ᵀ + b₁ + t·c)·W₂ᵀ.
fn field<B: Backend>(g: &mut Graph<B>, t: Var, y: Var, p: &[Var]) -> autodiff::Result<Var> {
    let z = g.matmul(y, p[0], false, true)?;
    let z = g.add(z, p[1])?;
    let tc = g.mul(p[2], t)?;
    let z = g.add(z, tc)?;
    let h = g.tanh(z)?;
    g.matmul(h, p[3], false, true)
}

struct Solve {
    /// y_N, ∂ℓ/∂y₀, ∂ℓ/∂θ for ℓ = ½‖y_N‖².
    tensors: Vec<Vec<f64>>,
    scales: (Option<f64>, Option<f64>),
}

fn solve<B: Backend + Clone>(be: B, policy: PrecisionPolicy) -> Solve {
    let (batch, d, h) = (64, 4, 16);
    let mut rng = Rng(21);
    let w1 = rng.vec(h * d, 0.8);
    let b1 = rng.vec(h, 0.2);
    let c = rng.vec(h, 0.5);
    let w2 = rng.vec(d * h, 0.4);
    let y0 = rng.vec(batch * d, 1.0);
    let t =
        |r: usize, cols: usize, v: &[f64]| Tensor::from_f64(&be, r, cols, v, DType::F64).unwrap();
    let params = [t(h, d, &w1), t(1, h, &b1), t(1, h, &c), t(d, h, &w2)];
    let y0 = t(batch, d, &y0).cast(&be, policy.state).unwrap();
    let params: Vec<_> = params
        .iter()
        .map(|p| p.cast(&be, policy.state).unwrap())
        .collect();
    let times: Vec<f64> = (0..=24).map(|i| 1.5 * i as f64 / 24.0).collect();
    let solver = Solver::new(Method::Rk4, policy);
    let mut g = Graph::new(be.clone());
    let rhs = field::<B>;
    let traj = solver.forward(&mut g, &rhs, &y0, &times, &params).unwrap();
    let yn = traj.final_state().try_clone(&be).unwrap();
    let cot = Cotangents::terminal(yn.try_clone(&be).unwrap());
    let grad = solver
        .backward(&mut g, &rhs, &traj, &params, &cot, false)
        .unwrap();
    let mut tensors = vec![yn.to_f64(&be).unwrap(), grad.y0.to_f64(&be).unwrap()];
    tensors.extend(grad.params.iter().map(|p| p.to_f64(&be).unwrap()));
    Solve {
        tensors,
        scales: (grad.stats.initial_scale, grad.stats.final_scale),
    }
}

fn dto_solve<D: Backend + Clone>(dev: &D) {
    let exact = solve(Cpu::new(), PrecisionPolicy::f64());
    for (name, policy) in [
        ("f64", PrecisionPolicy::f64()),
        ("f32", PrecisionPolicy::f32()),
        ("f16 + scaling", PrecisionPolicy::f16()),
        ("bf16 + scaling", PrecisionPolicy::bf16()),
    ] {
        let cpu = solve(Cpu::new(), policy);
        let on_dev = solve(dev.clone(), policy);
        let dev_cpu = rel_diffs(&on_dev.tensors, &cpu.tensors);
        let cpu_err = rel_diffs(&cpu.tensors, &exact.tensors);
        let worst = dev_cpu.iter().fold(0.0f64, |a, &b| a.max(b));
        let worst_cpu = cpu_err.iter().fold(0.0f64, |a, &b| a.max(b));
        eprintln!(
            "DTO solve ({name}): device vs CPU {worst:.2e}; CPU vs f64 {worst_cpu:.2e}; \
             scales device {:?}, CPU {:?}",
            on_dev.scales, cpu.scales
        );
        let tol = match policy.network {
            DType::F64 => 1e-11,
            DType::F32 => (10.0 * worst_cpu).max(1e-5),
            _ => 4.0 * worst_cpu,
        };
        for (i, e) in dev_cpu.iter().enumerate() {
            assert!(
                *e <= tol,
                "{name}: tensor {i} (y_N, ∂y₀, ∂W₁, ∂b₁, ∂c, ∂W₂) differs by {e:e} > {tol:e}"
            );
        }
        // The scale is a power of two chosen from the adjoint's magnitude: the same,
        // or (at a boundary) a neighbour.
        for (sd, sc) in [
            (on_dev.scales.0, cpu.scales.0),
            (on_dev.scales.1, cpu.scales.1),
        ] {
            match (sd, sc) {
                (None, None) => {}
                (Some(a), Some(b)) => assert!(
                    (a / b - 1.0).abs() < 1e-12
                        || (a / b - 2.0).abs() < 1e-12
                        || (b / a - 2.0).abs() < 1e-12,
                    "{name}: scales {a} and {b}"
                ),
                other => panic!("{name}: scaling on one backend only: {other:?}"),
            }
        }
        if policy.network.is_half() {
            assert!(cpu.scales.0.is_some(), "{name}: dynamic scaling is on");
        }
    }
}

/// RK4 discretize-then-optimize on a small neural field (batch 64, 24 steps): final
/// state and gradients (∂y₀ and every parameter) on both backends, for the f64 and f32
/// policies and the 16-bit ones (trajectory stored at 16 bits, dynamic adjoint
/// scaling).
#[test]
fn dto_solve_matches_the_cpu() {
    with_device!(dto_solve);
}

// ---------------------------------------------------------------------------------------
// The training loops on the device
// ---------------------------------------------------------------------------------------

/// Largest |a − b| / |b| over two loss records.
fn max_rel(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "record lengths");
    a.iter().zip(b).fold(0.0f64, |m, (x, y)| {
        m.max((x - y).abs() / y.abs().max(1e-300))
    })
}

/// Checks a run on the device against the CPU's: in f64 the whole loss record (and the
/// validation record) to 1e-8, in f32 the first loss (before any step: later ones
/// follow Adam, whose normalized steps can turn a last-bit difference in a tiny
/// gradient entry into a different step) to 1e-5.
fn check_run(what: &str, f64_run: bool, dev: (&[f64], &[f64]), cpu: (&[f64], &[f64])) {
    let (dl, dv) = dev;
    let (cl, cv) = cpu;
    assert!(dl.iter().all(|v| v.is_finite()), "{what}: {dl:?}");
    let first = max_rel(&dl[..1], &cl[..1]);
    let all = max_rel(dl, cl);
    let val = max_rel(dv, cv);
    eprintln!(
        "{what}: first loss {:.6e} (CPU {:.6e}), relative differences first {first:.1e}, \
         all {all:.1e}, validation {val:.1e}",
        dl[0], cl[0]
    );
    if f64_run {
        assert!(all <= 1e-8 && val <= 1e-8, "{what}: {all:e}, {val:e}");
    } else {
        assert!(first <= 1e-5, "{what}: first loss differs by {first:e}");
    }
}

fn training<D: Backend + Clone>(dev: &D) {
    use socflow_trainer::checkpoint::Checkpointing;
    use socflow_trainer::data::{Dataset, Toy};
    use socflow_trainer::diffusion::{train_diffusion_on, DiffusionConfig};
    use socflow_trainer::flow_matching::{self, train_flow_matching_on, FlowMatchingConfig};
    use socflow_trainer::otflow::{self, train_otflow_on, OtFlowConfig};
    use socflow_trainer::soc::{train_soc_on, QuadraticProblem, SocConfig};

    let data = Dataset::from_toy(Toy::EightGaussians, 800, 31).unwrap();
    let (train, val) = data.split(0.75, 32).unwrap();
    let none = || Checkpointing::none();
    for precision in [
        otflow::Precision::F64,
        otflow::Precision::F32,
        otflow::Precision::F16,
    ] {
        let config = OtFlowConfig {
            m: 16,
            batch_size: 256,
            iterations: 3,
            precision,
            validate_every: 0,
            ..OtFlowConfig::default()
        };
        let run = |be: D| {
            train_otflow_on(be, &config, &train, Some(&val), &mut none(), &mut |_| {}).unwrap()
        };
        let c = train_otflow_on(
            Cpu::new(),
            &config,
            &train,
            Some(&val),
            &mut none(),
            &mut |_| {},
        )
        .unwrap();
        let d = run(dev.clone());
        let (dv, cv): (Vec<f64>, Vec<f64>) = (
            d.validation.iter().map(|v| v.1).collect(),
            c.validation.iter().map(|v| v.1).collect(),
        );
        let what = format!("OT-Flow {precision:?}");
        if precision == otflow::Precision::F16 {
            let f64_first = train_otflow_on(
                Cpu::new(),
                &OtFlowConfig {
                    precision: otflow::Precision::F64,
                    ..config.clone()
                },
                &train,
                None,
                &mut none(),
                &mut |_| {},
            )
            .unwrap()
            .losses[0];
            let (e_dev, e_cpu) = (
                (d.losses[0] - c.losses[0]).abs(),
                (c.losses[0] - f64_first).abs(),
            );
            eprintln!(
                "{what}: first loss device {}, CPU {}, f64 {f64_first}",
                d.losses[0], c.losses[0]
            );
            assert!(
                e_dev <= 4.0 * e_cpu + 1e-6 * f64_first.abs(),
                "{what}: {e_dev:e} vs the CPU's own {e_cpu:e}"
            );
        } else {
            check_run(
                &what,
                precision == otflow::Precision::F64,
                (&d.losses, &dv),
                (&c.losses, &cv),
            );
        }
    }
    for precision in [flow_matching::Precision::F64, flow_matching::Precision::F32] {
        let f64_run = precision == flow_matching::Precision::F64;
        let fm = FlowMatchingConfig {
            hidden: vec![32, 32],
            batch_size: 128,
            iterations: 4,
            precision,
            validate_every: 2,
            ..FlowMatchingConfig::default()
        };
        let c = train_flow_matching_on(
            Cpu::new(),
            &fm,
            &train,
            Some(&val),
            &mut none(),
            &mut |_| {},
        )
        .unwrap();
        let d = train_flow_matching_on(
            dev.clone(),
            &fm,
            &train,
            Some(&val),
            &mut none(),
            &mut |_| {},
        )
        .unwrap();
        let rec = |v: &[(u64, f64)]| v.iter().map(|x| x.1).collect::<Vec<_>>();
        check_run(
            &format!("flow matching {precision:?}"),
            f64_run,
            (&d.losses, &rec(&d.validation)),
            (&c.losses, &rec(&c.validation)),
        );
        let diff = DiffusionConfig {
            hidden: vec![32, 32],
            batch_size: 128,
            iterations: 4,
            precision,
            validate_every: 2,
            ..DiffusionConfig::default()
        };
        let c = train_diffusion_on(
            Cpu::new(),
            &diff,
            &train,
            Some(&val),
            &mut none(),
            &mut |_| {},
        )
        .unwrap();
        let d = train_diffusion_on(
            dev.clone(),
            &diff,
            &train,
            Some(&val),
            &mut none(),
            &mut |_| {},
        )
        .unwrap();
        check_run(
            &format!("diffusion {precision:?}"),
            f64_run,
            (&d.losses, &rec(&d.validation)),
            (&c.losses, &rec(&c.validation)),
        );
    }
    // NeuralSOC on a small LQR (d = 2), f64.
    let problem = QuadraticProblem::linear_quadratic(
        vec![-0.5, 0.3, -0.2, -0.4],
        vec![1.0, 0.2, 0.0, 0.8],
        vec![1.5, 0.3, 0.3, 0.9],
        vec![1.0, 0.1, 0.1, 0.6],
        vec![2.0, 0.0, 0.0, 1.0],
        0.4,
        1.0,
        vec![0.8, -0.5],
    )
    .unwrap();
    let soc = SocConfig {
        m: 8,
        steps: 8,
        batch_size: 32,
        iterations: 3,
        validation_paths: 64,
        validate_every: 0,
        ..SocConfig::default()
    };
    let c = train_soc_on(Cpu::new(), &problem, &soc, &mut none(), &mut |_| {}).unwrap();
    let d = train_soc_on(dev.clone(), &problem, &soc, &mut none(), &mut |_| {}).unwrap();
    let losses =
        |t: &socflow_trainer::soc::TrainedSoc| t.costs.iter().map(|c| c.loss).collect::<Vec<_>>();
    let vals = |t: &socflow_trainer::soc::TrainedSoc| {
        t.validation
            .iter()
            .map(|v| v.costs.cost)
            .collect::<Vec<_>>()
    };
    check_run(
        "NeuralSOC f64",
        true,
        (&losses(&d), &vals(&d)),
        (&losses(&c), &vals(&c)),
    );
}

/// OT-Flow, flow matching, diffusion and NeuralSOC training on the device against the
/// same runs on the CPU (a few iterations each; f64 records to 1e-8, the first f32
/// loss to 1e-5, the first f16 OT-Flow loss within 4× the CPU's own f16 error).
#[test]
fn training_loops_match_the_cpu() {
    with_device!(training);
}

/// `device = "cuda"` in a config runs the loop on the GPU: the same record as
/// [`train_otflow_on`](socflow_trainer::otflow::train_otflow_on) with the backend.
#[test]
fn the_device_setting_dispatches_to_the_gpu() {
    use socflow_trainer::checkpoint::Checkpointing;
    use socflow_trainer::data::{Dataset, Toy};
    use socflow_trainer::device::Device;
    use socflow_trainer::otflow::{self, train_otflow, train_otflow_on, OtFlowConfig};
    let dev = match cuda() {
        Ok(d) => d,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    let data = Dataset::from_toy(Toy::Moons, 400, 41).unwrap();
    let config = OtFlowConfig {
        m: 8,
        batch_size: 128,
        iterations: 2,
        precision: otflow::Precision::F64,
        validate_every: 0,
        device: Device::Cuda,
        ..OtFlowConfig::default()
    };
    let a = train_otflow(&config, &data, None, &mut |_| {}).unwrap();
    let b = train_otflow_on(
        dev,
        &config,
        &data,
        None,
        &mut Checkpointing::none(),
        &mut |_| {},
    )
    .unwrap();
    // The same device and kernels: the same record (cuBLAS is deterministic on one
    // stream; allow the last bits should another handle pick another algorithm).
    let diff = max_rel(&a.losses, &b.losses);
    eprintln!("device setting against the backend: {diff:.1e} (0: bitwise)");
    assert!(diff <= 1e-12, "{:?} vs {:?}", a.losses, b.losses);
    assert!(a.config.to_json().unwrap().contains(r#""device":"cuda""#));
}
