//! The GPU kernels run on the CPU: runtime/src/cuda/kernels/*.cu compiled as host C++
//! with g++ (tests/cuda_host/harness.cpp; no contraction into FMAs, as NVRTC is told
//! with --fmad=false), each kernel a loop over its elements, compared with the
//! runtime's Rust implementations:
//!
//! - the counter-based generator (Philox4x32-10, `ln_unit`, `sincos_turn`, the normals
//!   and Brownian increments of any (seed, stream, sample, step)): bit for bit;
//! - the activations (SiLU, tanh, softplus and their derivatives, OT-Flow's log 2 cosh
//!   with tanh; the CPU's FMA path)
//!   and the bias + activation kernel: bit for bit;
//! - the integrators' combinations (Runge–Kutta stages, Euler–Maruyama, stochastic
//!   Heun, the VP-SDE fields' a x + c net): bit for bit against the CPU's order of
//!   operations;
//! - adaptive Dopri5: the GPU driver's sequence of kernels (per-row steps, error norm,
//!   PI controller, Hairer's starting step) on a test field, bit for bit against the
//!   CPU's `solve_block` (both call glibc's `pow`).
//!
//! This needs no GPU and no CUDA library, so it runs in every build (the kernels'
//! source is read from the crate); it is skipped, saying so, where g++ is missing.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use socflow_runtime::brownian::{ln_unit, philox4x32_10, sincos_turn, Brownian, Stream};
use socflow_runtime::field::FnField;
use socflow_runtime::linalg::{logcosh_tanh, silu_d, softplus_d, tanh_d};
use socflow_runtime::ode::{solve_block, OdeOptions, OdeWorkspace, StepSize};
use socflow_runtime::Real;
use socflow_testkit::{build_cxx_harness, ok_or_skip, run_cxx_harness, special_values, Rng};

/// The harness executable, built once per test run, or why it could not be.
fn harness() -> Result<PathBuf, String> {
    static EXE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    EXE.get_or_init(|| {
        let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/cuda_host/harness.cpp");
        let exe = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cuda_host_harness");
        build_cxx_harness(&src, &exe)
    })
    .clone()
}

/// Runs the harness with `args`, `input` on stdin; returns the output tokens.
fn run(exe: &Path, args: &[&str], input: &str) -> Vec<String> {
    run_cxx_harness(exe, args, input)
}

/// A precision's bits as the harness writes them.
trait Bits: Real {
    fn hex(self) -> String;
    fn parse(s: &str) -> Self;
    const TAG: &'static str;
}

impl Bits for f64 {
    fn hex(self) -> String {
        format!("{:016x}", self.to_bits())
    }
    fn parse(s: &str) -> Self {
        f64::from_bits(u64::from_str_radix(s, 16).expect("hex"))
    }
    const TAG: &'static str = "f64";
}

impl Bits for f32 {
    fn hex(self) -> String {
        format!("{:08x}", self.to_bits())
    }
    fn parse(s: &str) -> Self {
        f32::from_bits(u32::from_str_radix(s, 16).expect("hex"))
    }
    const TAG: &'static str = "f32";
}

fn push<T: Bits>(input: &mut String, xs: &[T]) {
    for x in xs {
        input.push_str(&x.hex());
        input.push(' ');
    }
    input.push('\n');
}

fn push_int(input: &mut String, xs: &[u64]) {
    for x in xs {
        input.push_str(&format!("{x:x} "));
    }
    input.push('\n');
}

fn parse_all<T: Bits>(tokens: &[String]) -> Vec<T> {
    tokens.iter().map(|s| T::parse(s)).collect()
}

/// Bit for bit (NaNs only as NaNs: their payloads may differ).
fn assert_same<T: Bits>(what: &str, got: &[T], want: &[T], inputs: &[T]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let same = (g.is_nan() && w.is_nan()) || g.f64().to_bits() == w.f64().to_bits();
        assert!(
            same,
            "{what} ({}) element {i} (input {:?}): kernel {:e}, Rust {:e}",
            T::TAG,
            inputs.get(i).map(|v| v.f64()),
            g.f64(),
            w.f64()
        );
    }
}

#[test]
fn philox_matches_random123_and_the_runtime() {
    let exe = ok_or_skip!(harness());
    let mut g = Rng(1);
    let mut cases: Vec<[u32; 6]> = vec![[0; 6], [u32::MAX; 6]];
    for _ in 0..500 {
        let mut c = [0u32; 6];
        for v in &mut c {
            *v = g.next_u64() as u32;
        }
        cases.push(c);
    }
    let mut input = format!("{:x}\n", cases.len());
    for c in &cases {
        push_int(&mut input, &c.map(u64::from));
    }
    let out = run(&exe, &["rng", "philox"], &input);
    for (i, c) in cases.iter().enumerate() {
        let want = philox4x32_10([c[0], c[1], c[2], c[3]], [c[4], c[5]]);
        let got: Vec<u32> = out[4 * i..4 * i + 4]
            .iter()
            .map(|s| u32::from_str_radix(s, 16).expect("hex"))
            .collect();
        assert_eq!(got, want, "philox case {i} {c:?}");
    }
    // Random123's known answer for a zero counter and key.
    assert_eq!(&out[..4], ["6627e8d5", "e169c58d", "bc57ac4c", "9b00dbd8"]);
}

#[test]
fn ln_and_sincos_are_bitwise_the_runtime() {
    let exe = ok_or_skip!(harness());
    let mut g = Rng(2);
    // The generator's whole range: 2^-53 … 1 − 2^-53, the octave edges, random.
    let mut us: Vec<f64> = vec![2f64.powi(-53), 1.0 - 2f64.powi(-53), 0.5, 0.25, 0.75];
    us.extend((1..53).map(|e| 2f64.powi(-e) * 1.000_000_1));
    us.extend((1..53).map(|e| std::f64::consts::FRAC_1_SQRT_2 * 2f64.powi(-e)));
    us.extend((0..5_000).map(|_| g.uniform()));
    let mut input = format!("{:x}\n", us.len());
    push(&mut input, &us);
    let ln: Vec<f64> = parse_all(&run(&exe, &["rng", "ln"], &input));
    let want: Vec<f64> = us.iter().map(|&u| ln_unit(u)).collect();
    assert_same("ln_unit", &ln, &want, &us);
    let mut ts = us.clone();
    ts.extend([0.0, 1.0, 0.125, 0.375, 0.625, 0.875]);
    let mut input = format!("{:x}\n", ts.len());
    push(&mut input, &ts);
    let sc: Vec<f64> = parse_all(&run(&exe, &["rng", "sincos"], &input));
    for (i, &u) in ts.iter().enumerate() {
        let (s, c) = sincos_turn(u);
        assert_same("sincos_turn", &sc[2 * i..2 * i + 2], &[s, c], &[u, u]);
    }
}

fn normals<T: Bits>(exe: &Path) {
    let mut g = Rng(3);
    for case in 0..12 {
        let seed = if case == 0 { 0 } else { g.next_u64() };
        let stream = [Stream::BROWNIAN, Stream::PRIOR, Stream(7)][case % 3];
        // Samples above 2^32 exercise the counter's high word.
        let first = if case % 2 == 0 {
            g.next_u64() % 1000
        } else {
            (1 << 40) + case as u64
        };
        let step = (g.next_u64() % 5000) as u32;
        let (rows, d) = (37usize, [1usize, 2, 5, 64][case % 4]);
        let dt = T::of(-0.013 * (case as f64 + 1.0));
        let scale = if stream == Stream::BROWNIAN {
            dt.abs().sqrt()
        } else {
            T::one()
        };
        let mut input = String::new();
        push_int(
            &mut input,
            &[
                seed,
                u64::from(stream.0),
                first,
                u64::from(step),
                rows as u64,
                d as u64,
            ],
        );
        push(&mut input, &[scale]);
        let got: Vec<T> = parse_all(&run(exe, &[T::TAG, "normals"], &input));
        let b = Brownian::new(seed);
        let mut want = vec![T::zero(); rows * d];
        for (r, row) in want.chunks_exact_mut(d).enumerate() {
            let sample = first + r as u64;
            if stream == Stream::BROWNIAN {
                b.increments(sample, u64::from(step), dt, row).unwrap();
            } else {
                b.stream_normals(stream, sample, u64::from(step), row)
                    .unwrap();
            }
        }
        assert_same(&format!("normals, case {case}"), &got, &want, &[]);
    }
}

/// Prior draws and Brownian increments (f64 normals, and rounded to f32 and scaled
/// by √|dt| as `Brownian::increments` does) for many keys.
#[test]
fn normals_are_bitwise_the_runtime() {
    let exe = ok_or_skip!(harness());
    normals::<f64>(&exe);
    normals::<f32>(&exe);
}

fn activations<T: Bits>(exe: &Path) {
    let xs: Vec<T> = special_values(4_000, 4).into_iter().map(T::of).collect();
    for (code, name) in [
        (1u64, "silu"),
        (2, "tanh"),
        (3, "softplus"),
        (4, "log 2 cosh"),
    ] {
        let mut input = String::new();
        push_int(&mut input, &[code, xs.len() as u64]);
        push(&mut input, &xs);
        let out: Vec<T> = parse_all(&run(exe, &[T::TAG, "act"], &input));
        let (v, dv) = out.split_at(xs.len());
        let want: Vec<(T, T)> = xs
            .iter()
            .map(|&a| match code {
                1 => silu_d::<T, true>(a),
                2 => tanh_d::<T, true>(a),
                3 => softplus_d::<T, true>(a),
                _ => logcosh_tanh::<T, true>(a),
            })
            .collect();
        let (wv, wd): (Vec<T>, Vec<T>) = want.into_iter().unzip();
        assert_same(name, v, &wv, &xs);
        assert_same(&format!("{name}'"), dv, &wd, &xs);
    }
    // The kernel: c ← act(c + t·w_t + b), per-row or common time.
    let (rows, n) = (9usize, 13usize);
    let mut g = Rng(5);
    let c: Vec<T> = g.vec(rows * n, 2.0).into_iter().map(T::of).collect();
    let b: Vec<T> = g.vec(n, 0.5).into_iter().map(T::of).collect();
    let wt: Vec<T> = g.vec(n, 0.5).into_iter().map(T::of).collect();
    let tr: Vec<T> = g.range(rows, 0.0, 1.0).into_iter().map(T::of).collect();
    for (act, has_wt, has_tr) in [
        (1u64, true, true),
        (2, true, false),
        (3, false, false),
        (0, true, true),
    ] {
        let t = T::of(0.3);
        let mut input = String::new();
        push_int(
            &mut input,
            &[rows as u64, n as u64, act, has_wt as u64, has_tr as u64],
        );
        push(&mut input, &[t]);
        push(&mut input, &c);
        push(&mut input, &b);
        if has_wt {
            push(&mut input, &wt);
        }
        if has_tr {
            push(&mut input, &tr);
        }
        let got: Vec<T> = parse_all(&run(exe, &[T::TAG, "bias_act"], &input));
        let want: Vec<T> = (0..rows * n)
            .map(|i| {
                let (r, j) = (i / n, i % n);
                let mut v = c[i];
                if has_wt {
                    v += (if has_tr { tr[r] } else { t }) * wt[j];
                }
                v += b[j];
                match act {
                    1 => silu_d::<T, true>(v).0,
                    2 => tanh_d::<T, true>(v).0,
                    3 => softplus_d::<T, true>(v).0,
                    _ => v,
                }
            })
            .collect();
        assert_same(&format!("bias_act {act}"), &got, &want, &[]);
    }
}

/// The activations and the bias + activation kernel: the CPU's FMA path, bit for bit.
#[test]
fn activations_are_bitwise_the_runtime() {
    let exe = ok_or_skip!(harness());
    activations::<f64>(&exe);
    activations::<f32>(&exe);
}

fn integrators<T: Bits>(exe: &Path) {
    let mut g = Rng(6);
    let mut vec = |n: usize, s: f64| -> Vec<T> { g.vec(n, s).into_iter().map(T::of).collect() };
    // Runge–Kutta stage combinations: each row of the RK4 and Dopri5 tableaus (zero
    // weights skipped, the first term assigned), as ode/mod.rs `combine`.
    let n = 50;
    let base = vec(n, 1.0);
    let k = vec(7 * n, 1.0);
    let h = T::of(-0.037);
    let rows: Vec<Vec<f64>> = vec![
        vec![],
        vec![0.5],
        vec![0.0, 0.5],
        vec![0.0, 0.0, 1.0],
        vec![1.0 / 6.0, 1.0 / 3.0, 1.0 / 3.0, 1.0 / 6.0],
        vec![44.0 / 45.0, -56.0 / 15.0, 32.0 / 9.0],
        vec![
            35.0 / 384.0,
            0.0,
            500.0 / 1113.0,
            125.0 / 192.0,
            -2187.0 / 6784.0,
            11.0 / 84.0,
        ],
    ];
    for w in &rows {
        let mut w7 = [T::zero(); 7];
        for (a, b) in w7.iter_mut().zip(w) {
            *a = T::of(*b);
        }
        let mut input = String::new();
        push_int(&mut input, &[n as u64, w.len() as u64]);
        push(&mut input, &w7);
        push(&mut input, &[h]);
        push(&mut input, &base);
        push(&mut input, &k[..w.len() * n]);
        let got: Vec<T> = parse_all(&run(exe, &[T::TAG, "rk"], &input));
        let want: Vec<T> = (0..n)
            .map(|i| {
                let mut acc: Option<T> = None;
                for (l, &wl) in w7[..w.len()].iter().enumerate() {
                    if wl == T::zero() {
                        continue;
                    }
                    let term = wl * k[l * n + i];
                    acc = Some(match acc {
                        None => term,
                        Some(a) => a + term,
                    });
                }
                base[i] + h * acc.unwrap_or(T::zero())
            })
            .collect();
        assert_same(&format!("rk_stage {w:?}"), &got, &want, &[]);
    }
    // Euler–Maruyama and stochastic Heun steps (sde.rs).
    let (rows, d) = (11usize, 3usize);
    let (x, f, gd, dw, f2, g2) = (
        vec(rows * d, 1.0),
        vec(rows * d, 2.0),
        vec(d, 1.0),
        vec(rows * d, 0.1),
        vec(rows * d, 2.0),
        vec(d, 1.0),
    );
    let mut input = String::new();
    push_int(&mut input, &[rows as u64, d as u64]);
    push(&mut input, &[h]);
    for v in [&x, &f, &gd, &dw, &f2, &g2] {
        push(&mut input, v);
    }
    let out: Vec<T> = parse_all(&run(exe, &[T::TAG, "sde"], &input));
    let half = T::of(0.5);
    let em: Vec<T> = (0..rows * d)
        .map(|i| x[i] + f[i] * h + gd[i % d] * dw[i])
        .collect();
    let heun: Vec<T> = (0..rows * d)
        .map(|i| x[i] + (f[i] + f2[i]) * half * h + (gd[i % d] + g2[i % d]) * half * dw[i])
        .collect();
    assert_same("em_step", &out[..rows * d], &em, &[]);
    assert_same("heun_step", &out[rows * d..], &heun, &[]);
    // The fields' output: net = v + b, and the VP-SDE's a x + c net (common and
    // per-row coefficients), as vpsde.rs `combine`.
    let (v, b, ac) = (vec(rows * d, 1.0), vec(d, 0.3), vec(2 * rows, 2.0));
    let (a, c) = (T::of(-3.7), T::of(0.61));
    for (has_x, has_ac) in [(false, false), (true, false), (true, true)] {
        let mut input = String::new();
        push_int(
            &mut input,
            &[rows as u64, d as u64, has_x as u64, has_ac as u64],
        );
        push(&mut input, &[a, c]);
        push(&mut input, &v);
        push(&mut input, &b);
        if has_x {
            push(&mut input, &x);
        }
        if has_ac {
            push(&mut input, &ac);
        }
        let got: Vec<T> = parse_all(&run(exe, &[T::TAG, "field_out"], &input));
        let want: Vec<T> = (0..rows * d)
            .map(|i| {
                let (r, j) = (i / d, i % d);
                let net = v[i] + b[j];
                match (has_x, has_ac) {
                    (false, _) => net,
                    (true, false) => a * x[i] + c * net,
                    (true, true) => ac[2 * r] * x[i] + ac[2 * r + 1] * net,
                }
            })
            .collect();
        assert_same(
            &format!("field_out x {has_x} ac {has_ac}"),
            &got,
            &want,
            &[],
        );
    }
}

/// The integrators' per-element arithmetic in the CPU's order, bit for bit.
#[test]
fn integrator_kernels_are_bitwise_the_cpu_formulas() {
    let exe = ok_or_skip!(harness());
    integrators::<f64>(&exe);
    integrators::<f32>(&exe);
}

/// The harness's test field: f_j = −(1 + t) x_j + ½ x_{j+1} − 0.1 x_j³ (indices mod d).
fn test_field<T: Real>(t: T, x: &[T], v: &mut [T]) {
    let d = x.len();
    for j in 0..d {
        let (xj, xn) = (x[j], x[(j + 1) % d]);
        v[j] = -(T::one() + t) * xj + T::of(0.5) * xn - T::of(0.1) * xj * xj * xj;
    }
}

#[allow(clippy::too_many_arguments)] // one adaptive case
fn adaptive_case<T: Bits>(
    exe: &Path,
    (rows, d, scale): (usize, usize, f64),
    (t0, t1): (f64, f64),
    (rtol, atol): (f64, f64),
    h0: Option<f64>,
    h_max: Option<f64>,
    max_steps: usize,
) -> u64 {
    let mut g = Rng(rows as u64 + d as u64);
    let y0: Vec<T> = g.vec(rows * d, scale).into_iter().map(T::of).collect();
    let mut input = String::new();
    push_int(&mut input, &[rows as u64, d as u64]);
    let span = (t1 - t0).abs();
    push(
        &mut input,
        &[
            T::of(t0),
            T::of(t1),
            T::of(rtol),
            T::of(atol),
            T::of(h0.unwrap_or(0.0)),
            T::of(h_max.unwrap_or(span)),
        ],
    );
    push_int(&mut input, &[max_steps as u64]);
    push(&mut input, &y0);
    let out = run(exe, &[T::TAG, "adaptive"], &input);
    let status = u32::from_str_radix(&out[0], 16).expect("hex");
    let got: Vec<T> = parse_all(&out[1..1 + rows * d]);
    let counts: Vec<u64> = out[1 + rows * d..]
        .iter()
        .map(|s| u64::from_str_radix(s, 16).expect("hex"))
        .collect();
    // The CPU's adaptive Dopri5 on the same field.
    let field = FnField::with_div(d, test_field::<T>, |_: T, _: &[T]| T::zero());
    let mut opts = OdeOptions::adaptive(T::of(rtol), T::of(atol));
    if let StepSize::Adaptive(a) = &mut opts.step_size {
        a.h0 = h0.map(T::of);
        a.h_max = h_max.map(T::of);
        a.max_steps = max_steps;
    }
    let mut x = y0.clone();
    let mut ws = OdeWorkspace::for_field(&field, rows);
    let what = format!(
        "adaptive {} rows {rows} d {d} [{t0}, {t1}] h0 {h0:?}",
        T::TAG
    );
    match solve_block(
        &field,
        &opts,
        T::of(t0),
        T::of(t1),
        &mut x,
        None,
        None,
        &mut ws,
    ) {
        Ok(stats) => {
            assert_eq!(
                status, 0,
                "{what}: the kernels failed where the CPU did not"
            );
            assert_same(&what, &got, &x, &[]);
            assert_eq!(
                counts,
                [stats.steps, stats.accepted, stats.rejected],
                "{what}: steps, accepted, rejected"
            );
            stats.rejected
        }
        Err(e) => {
            let m = e.to_string();
            let want = if m.contains("more than") {
                1
            } else if m.contains("underflows") {
                2
            } else {
                panic!("{what}: {e}")
            };
            assert_eq!(
                status, want,
                "{what}: the kernels did not fail like the CPU ({e})"
            );
            0
        }
    }
}

/// Adaptive Dopri5's kernels, driven as the GPU sampler drives them, reproduce the CPU
/// solver bit for bit: states, step counts, rejections, forward and backward, with
/// Hairer's starting step or a given one, and the `max_steps` failure.
#[test]
fn adaptive_kernels_are_bitwise_the_cpu_solver() {
    let exe = ok_or_skip!(harness());
    let ok = 100_000;
    let mut rejected = 0;
    rejected += adaptive_case::<f64>(
        &exe,
        (40, 3, 1.5),
        (0.0, 1.0),
        (1e-8, 1e-10),
        None,
        None,
        ok,
    );
    rejected += adaptive_case::<f64>(
        &exe,
        (25, 2, 0.5),
        (1.0, 0.0),
        (1e-6, 1e-9),
        Some(0.3),
        Some(0.5),
        ok,
    );
    // Backward from large states the cubic term blows up: the step size underflows.
    adaptive_case::<f64>(
        &exe,
        (25, 2, 1.5),
        (1.0, 0.0),
        (1e-6, 1e-9),
        Some(0.3),
        None,
        ok,
    );
    adaptive_case::<f64>(
        &exe,
        (10, 4, 1.5),
        (0.0, 2.0),
        (1e-10, 1e-12),
        None,
        None,
        5,
    );
    rejected += adaptive_case::<f32>(&exe, (40, 3, 0.5), (1.0, 0.0), (1e-4, 1e-6), None, None, ok);
    rejected += adaptive_case::<f32>(
        &exe,
        (20, 5, 1.5),
        (0.0, 1.0),
        (1e-5, 1e-6),
        Some(0.5),
        None,
        ok,
    );
    // A given first step that is too large is rejected at least once.
    assert!(rejected > 0, "no rejected step was exercised");
}
