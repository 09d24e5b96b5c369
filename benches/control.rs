//! Runtime benchmarks: single-state feedback control u = −∇ₓΦ(t, x) through the OT-Flow
//! potential (f32 and f64; d ∈ {2, 12, 100}, m ∈ {64, 256}, nTh = 2), and block
//! throughput of an MLP field against the raw GEMMs of the same shapes.
//!
//! Goals (one core): f32 ∇ₓΦ under 5 µs at d = 100, m = 256 and under 1 µs at d = 12,
//! m = 64; MLP block evaluation at ≥ 80 % of the raw GEMM rate.
//!
//! Run: `cargo bench --bench control` (add `-- --quick` for a short run).

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use socflow_runtime::field::{Field, Potential};
use socflow_runtime::linalg::{gemm_xwt, MatRef};
use socflow_runtime::nn::mlp::Mlp;
use socflow_runtime::nn::otflow::OtFlow;
use socflow_runtime::nn::{Activation, MlpParams, OtFlowParams};
use socflow_runtime::Real;

/// splitmix64: a fixed-seed stream of uniform numbers, no dependencies.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform on (−scale, scale).
    fn vec(&mut self, n: usize, scale: f64) -> Vec<f64> {
        (0..n).map(|_| scale * (2.0 * self.next() - 1.0)).collect()
    }
}

fn otflow_params(d: usize, m: usize, n_th: usize) -> OtFlowParams {
    let mut g = Rng(0x5eed_0000 + (d * 1000 + m) as u64);
    let r = (d + 1).min(10);
    let mut k = vec![g.vec(m * (d + 1), (3.0 / (d + 1) as f64).sqrt())];
    let mut b = vec![g.vec(m, 0.5)];
    for _ in 1..n_th {
        k.push(g.vec(m * m, (3.0 / m as f64).sqrt()));
        b.push(g.vec(m, 0.5));
    }
    OtFlowParams {
        d,
        m,
        n_th,
        r,
        k,
        b,
        w: g.vec(m, 1.0),
        a: g.vec(r * (d + 1), 0.5),
        c_weight: g.vec(d + 1, 0.1),
        c_bias: 0.0,
    }
}

fn bench_grad<T: Real>(c: &mut Criterion) {
    let mut group = c.benchmark_group(format!("otflow_grad_x/{}", T::NAME));
    group.measurement_time(Duration::from_secs(3));
    for &m in &[64usize, 256] {
        for &d in &[2usize, 12, 100] {
            let p = otflow_params(d, m, 2);
            let net = OtFlow::<T>::new(&p).expect("valid parameters");
            let mut g = Rng(7);
            let x: Vec<T> = g.vec(d, 1.0).into_iter().map(T::of).collect();
            let t = T::of(0.3);
            let mut u = vec![T::zero(); d];
            let mut scratch = vec![T::zero(); net.grad_scratch_len()];
            group.bench_with_input(BenchmarkId::new(format!("m{m}_nTh2"), d), &d, |bch, _| {
                bch.iter(|| {
                    let r = net.grad(black_box(t), black_box(&x), &mut u, &mut scratch);
                    black_box((&r, &u));
                })
            });
        }
    }
    group.finish();
}

fn bench_grad_f32(c: &mut Criterion) {
    bench_grad::<f32>(c);
}

fn bench_grad_f64(c: &mut Criterion) {
    bench_grad::<f64>(c);
}

fn bench_laplacian(c: &mut Criterion) {
    let mut group = c.benchmark_group("otflow_grad_lap/f32");
    group.measurement_time(Duration::from_secs(2));
    for &(d, m) in &[(12usize, 64usize), (100, 256)] {
        let net = OtFlow::<f32>::new(&otflow_params(d, m, 2)).expect("valid parameters");
        let x: Vec<f32> = Rng(3).vec(d, 1.0).into_iter().map(|v| v as f32).collect();
        let mut u = vec![0.0f32; d];
        let mut scratch = vec![0.0f32; Potential::scratch_len(&net)];
        group.bench_function(format!("d{d}_m{m}"), |bch| {
            bch.iter(|| black_box(net.grad_lap(0.3, black_box(&x), &mut u, &mut scratch)))
        });
    }
    group.finish();
}

fn mlp_params(d: usize, width: usize, depth: usize, act: Activation) -> MlpParams {
    let mut g = Rng(0x31337 + d as u64);
    let mut dims = vec![d + 1];
    dims.extend(std::iter::repeat_n(width, depth));
    dims.push(d);
    let weights = dims
        .windows(2)
        .map(|w| g.vec(w[1] * w[0], (3.0 / w[0] as f64).sqrt()))
        .collect();
    let biases = dims[1..].iter().map(|&n| g.vec(n, 0.1)).collect();
    MlpParams {
        d,
        hidden: vec![width; depth],
        activation: act,
        weights,
        biases,
    }
}

/// MLP block evaluation (3 × 256 SiLU, d = 2 and 64) against the same GEMMs alone.
fn bench_mlp_block(c: &mut Criterion) {
    let mut group = c.benchmark_group("mlp_block/f32");
    group.measurement_time(Duration::from_secs(3));
    for &d in &[2usize, 64] {
        let p = mlp_params(d, 256, 3, Activation::Silu);
        let net = Mlp::<f32>::new(&p).expect("valid parameters");
        let rows = net.preferred_block_rows();
        let mut g = Rng(11);
        let x: Vec<f32> = g.vec(rows * d, 1.0).into_iter().map(|v| v as f32).collect();
        let t: Vec<f32> = (0..rows).map(|i| i as f32 / rows as f32).collect();
        let mut v = vec![0.0f32; rows * d];
        let mut scratch = vec![0.0f32; net.block_scratch_len(rows)];
        let flops: usize = p.weights.iter().map(|w| 2 * w.len() * rows).sum();
        group.throughput(Throughput::Elements(flops as u64));
        group.bench_function(format!("eval_block_d{d}_rows{rows}"), |bch| {
            bch.iter(|| black_box(net.eval_block(black_box(&t), &x, &mut v, &mut scratch)))
        });

        // Raw GEMMs of the same shapes (X·Wᵀ + b per layer), no activations.
        let ws: Vec<Vec<f32>> = p
            .weights
            .iter()
            .map(|w| w.iter().map(|&v| v as f32).collect())
            .collect();
        let bs: Vec<Vec<f32>> = p
            .biases
            .iter()
            .map(|b| b.iter().map(|&v| v as f32).collect())
            .collect();
        let mut dims = vec![d + 1];
        dims.extend(p.hidden.iter().copied());
        dims.push(d);
        let maxw = *dims.iter().max().unwrap_or(&1);
        let mut bufs = [vec![0.1f32; rows * maxw], vec![0.0f32; rows * maxw]];
        group.bench_function(format!("raw_gemm_d{d}_rows{rows}"), |bch| {
            bch.iter(|| {
                for (l, w) in ws.iter().enumerate() {
                    let (n_in, n_out) = (dims[l], dims[l + 1]);
                    let (src, dst) = bufs.split_at_mut(1);
                    let (src, dst) = if l % 2 == 0 {
                        (&src[0], &mut dst[0])
                    } else {
                        (&dst[0], &mut src[0])
                    };
                    gemm_xwt(
                        MatRef::new(src, rows, n_in, n_in),
                        MatRef::new(w, n_out, n_in, n_in),
                        Some(&bs[l]),
                        dst,
                        n_out,
                    )
                    .expect("consistent shapes");
                }
                black_box(&bufs);
            })
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    bench_grad_f32,
    bench_grad_f64,
    bench_laplacian,
    bench_mlp_block
);
criterion_main!(benches);
