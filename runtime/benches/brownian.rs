//! The counter-based Gaussian generator: nanoseconds per normal of
//! `Brownian::stream_normals` (f64) and `Brownian::increments` (f32 and f64), one call
//! per `(sample, step)` for d ∈ {2, 64, 256}, and of a `rows × d` block filled the way
//! the SDE solver asks for it (`BrownianIncrements::fill`, one step of 256 rows).
//!
//! `reference/…` times the one-counter-at-a-time scalar implementation of the recipe
//! (the generator's code before it was vectorized, from the public scalar primitives)
//! on the same requests, as the baseline measured under the same conditions.
//!
//! Criterion reports throughput in normals per second (elements); 10⁹ over it is the
//! time per normal.
//!
//! Run: `cargo bench -p socflow-runtime --bench brownian` (add `-- --quick` for a short
//! run).

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use socflow_runtime::brownian::{
    ln_unit, philox4x32_10, sincos_turn, unit_open, Brownian, Stream, MAX_SAMPLE, MAX_STEP,
};
use socflow_runtime::sde::{BrownianIncrements, IncrementSource};
use socflow_runtime::Real;

/// Dimensions of the per-call and block benches.
const DIMS: [usize; 3] = [2, 64, 256];
/// Rows of a block (the samplers' block size).
const ROWS: usize = 256;
/// Calls per measured iteration of the per-call benches (steps of one sample).
const CALLS: usize = 64;

fn per_call(c: &mut Criterion) {
    let b = Brownian::new(0x5eed);
    let mut g = c.benchmark_group("brownian/per_call");
    g.measurement_time(Duration::from_secs(3));
    for d in DIMS {
        g.throughput(Throughput::Elements((CALLS * d) as u64));
        let mut z = vec![0.0f64; d];
        g.bench_with_input(BenchmarkId::new("stream_normals_f64", d), &d, |bch, _| {
            bch.iter(|| {
                for k in 0..CALLS as u64 {
                    b.stream_normals(Stream::BROWNIAN, black_box(7), k, &mut z)
                        .unwrap();
                    black_box(&z);
                }
            })
        });
        bench_increments::<f64>(&mut g, &b, d);
        bench_increments::<f32>(&mut g, &b, d);
    }
    g.finish();
}

/// The scalar implementation: one Philox counter, then one Box–Muller, at a time, with
/// the address checks of the original per-call API.
fn reference_increments(seed: u64, sample: u64, step: u64, dt: f64, out: &mut [f64]) {
    assert!(sample <= MAX_SAMPLE && step <= MAX_STEP && dt.is_finite());
    let key = [seed as u32, (seed >> 32) as u32];
    let hi = (sample >> 32) as u32;
    let mut j: u32 = 0;
    for pair in out.chunks_mut(2) {
        let x = philox4x32_10([j, step as u32, sample as u32, hi], key);
        let r = (-2.0 * ln_unit(unit_open(x[0], x[1]))).sqrt();
        let (s, c) = sincos_turn(unit_open(x[2], x[3]));
        pair[0] = r * c;
        if let Some(v) = pair.get_mut(1) {
            *v = r * s;
        }
        j = j.wrapping_add(1);
    }
    let s = dt.abs().sqrt();
    for v in out.iter_mut() {
        *v *= s;
    }
}

fn reference(c: &mut Criterion) {
    let mut g = c.benchmark_group("brownian/reference");
    g.measurement_time(Duration::from_secs(3));
    for d in DIMS {
        g.throughput(Throughput::Elements((CALLS * d) as u64));
        let mut z = vec![0.0f64; d];
        g.bench_with_input(BenchmarkId::new("increments_f64", d), &d, |bch, _| {
            bch.iter(|| {
                for k in 0..CALLS as u64 {
                    reference_increments(0x5eed, black_box(7), k, -0.01, &mut z);
                    black_box(&z);
                }
            })
        });
    }
    g.finish();
}

fn bench_increments<T: Real>(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    b: &Brownian,
    d: usize,
) {
    let mut z = vec![T::zero(); d];
    let dt = T::of(-0.01);
    g.bench_with_input(
        BenchmarkId::new(format!("increments_{}", T::NAME), d),
        &d,
        |bch, _| {
            bch.iter(|| {
                for k in 0..CALLS as u64 {
                    b.increments(black_box(7), k, dt, &mut z).unwrap();
                    black_box(&z);
                }
            })
        },
    );
}

fn block(c: &mut Criterion) {
    let b = Brownian::new(0x5eed);
    let mut g = c.benchmark_group("brownian/block");
    g.measurement_time(Duration::from_secs(3));
    for d in DIMS {
        g.throughput(Throughput::Elements((ROWS * d) as u64));
        bench_block::<f64>(&mut g, &b, d);
        bench_block::<f32>(&mut g, &b, d);
    }
    g.finish();
}

fn bench_block<T: Real>(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    b: &Brownian,
    d: usize,
) {
    let mut dw = vec![T::zero(); ROWS * d];
    let dt = T::of(-0.01);
    let mut step = 0u64;
    g.bench_with_input(
        BenchmarkId::new(format!("fill_{ROWS}_rows_{}", T::NAME), d),
        &d,
        |bch, _| {
            bch.iter(|| {
                let mut noise = BrownianIncrements::new(b, black_box(4096));
                noise.fill(step, dt, d, &mut dw).unwrap();
                step += 1;
                black_box(&dw);
            })
        },
    );
}

criterion_group!(benches, reference, per_call, block);
criterion_main!(benches);
