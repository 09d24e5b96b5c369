//! Batch sampling throughput: an MLP velocity field [x, t] → 3 × 256 SiLU → d,
//! integrated with RK4 (32 steps) from N(0, I), for d = 2 (batch 10,000) and d = 64
//! (batch 4,096), on 1 and 2 threads. `socflow bench` prints the same case beside the
//! GEMM rate of the same process.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use socflow_runtime::field::Field;
use socflow_runtime::nn::mlp::Mlp;
use socflow_runtime::nn::{Activation, MlpParams};
use socflow_runtime::ode::{OdeOptions, OdeSolver};
use socflow_runtime::sampler::{Sampler, SamplerOptions};

fn mlp(d: usize) -> MlpParams {
    let widths = [d + 1, 256, 256, 256, d];
    let mut state = 0x1234_5678u64;
    let mut next = |scale: f64| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        scale * (((state >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0)
    };
    let mut weights = Vec::new();
    let mut biases = Vec::new();
    for w in widths.windows(2) {
        let s = 1.0 / (w[0] as f64).sqrt();
        weights.push((0..w[0] * w[1]).map(|_| next(s)).collect());
        biases.push((0..w[1]).map(|_| next(s)).collect());
    }
    MlpParams {
        d,
        hidden: vec![256, 256, 256],
        activation: Activation::Silu,
        weights,
        biases,
    }
}

fn sampling(c: &mut Criterion) {
    let mut group = c.benchmark_group("sample_rk4_32_mlp3x256");
    group.sample_size(10);
    for &(d, batch) in &[(2usize, 10_000usize), (64, 4_096)] {
        let field: Arc<dyn Field<f32>> = Arc::new(Mlp::<f32>::new(&mlp(d)).expect("valid MLP"));
        let sampler = Sampler::new(
            field,
            1.0,
            0.0,
            SamplerOptions::ode(OdeOptions::fixed(OdeSolver::Rk4, 32), 0),
        )
        .expect("valid sampler");
        group.throughput(Throughput::Elements(batch as u64));
        for threads in [1usize, 2] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("thread pool");
            group.bench_function(format!("d{d}_batch{batch}_threads{threads}"), |b| {
                b.iter(|| pool.install(|| sampler.sample(batch, 0).expect("sampling succeeds")))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, sampling);
criterion_main!(benches);
