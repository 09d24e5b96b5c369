//! Sampling throughput on the GPU against the CPU (feature `cuda`):
//!
//! - an MLP velocity field [x, t] → 3 × 256 SiLU → d, RK4 with 32 steps, for d = 2
//!   (batch 10,000) and d = 64 (batch 4,096): the cases of benches/sampling.rs;
//! - a score MLP of the same shape sampled by the reverse VP-SDE with Euler–Maruyama,
//!   100 steps, same sizes.
//!
//! Each case runs on both backends with the same seed, prints samples per second, the
//! GPU/CPU ratio and the largest difference between the two backends' samples (they
//! agree to rounding). Without a device it prints `skipped: <reason>` and exits 0.
//!
//! `cargo run --release -p socflow-runtime --features cuda --example gpu_sampling`
//! (scripts/gpu-check runs it on a GPU machine).

use std::time::{Duration, Instant};

use socflow_runtime::artifact::{Artifact, ModelKind, Provenance};
use socflow_runtime::cuda::{Gpu, GpuSampler};
use socflow_runtime::model::Model;
use socflow_runtime::nn::{Activation, MlpParams};
use socflow_runtime::ode::{OdeOptions, OdeSolver};
use socflow_runtime::sampler::{Sampler, SamplerOptions};
use socflow_runtime::sde::{SdeOptions, SdeScheme};
use socflow_runtime::vpsde::{VpSampling, VpSde};

/// The network of benches/sampling.rs: weights U(−1, 1)/√fan-in from a fixed LCG.
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

/// The fastest of `reps` runs of `f` (after `warm` untimed ones), and its last result.
fn time<R>(warm: usize, reps: usize, mut f: impl FnMut() -> R) -> (Duration, R) {
    for _ in 0..warm {
        f();
    }
    let mut best = Duration::MAX;
    let mut out = None;
    for _ in 0..reps {
        let t = Instant::now();
        let r = f();
        best = best.min(t.elapsed());
        out = Some(r);
    }
    (best, out.expect("reps >= 1"))
}

fn report(name: &str, n: usize, gpu: Duration, cpu: Duration, gx: &[f32], cx: &[f32]) {
    let diff = gx
        .iter()
        .zip(cx)
        .map(|(a, b)| (a - b).abs() / b.abs().max(1.0))
        .fold(0.0f32, f32::max);
    let rate = |t: Duration| n as f64 / t.as_secs_f64();
    println!(
        "{name:<44} GPU {:>12.0} samples/s ({:>8.2} ms)  CPU {:>10.0} samples/s ({:>8.1} ms)  \
         GPU/CPU {:>7.1}x  max rel diff {diff:.1e}",
        rate(gpu),
        gpu.as_secs_f64() * 1e3,
        rate(cpu),
        cpu.as_secs_f64() * 1e3,
        cpu.as_secs_f64() / gpu.as_secs_f64()
    );
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let gpu = match Gpu::new(0) {
        Ok(g) => g,
        Err(e) => {
            println!("skipped: {e}");
            return Ok(());
        }
    };
    println!(
        "GPU {} (compute {}.{}); CPU: {} rayon threads; f32",
        gpu.name(),
        gpu.compute_capability().0,
        gpu.compute_capability().1,
        rayon::current_num_threads()
    );
    for &(d, n) in &[(2usize, 10_000usize), (64, 4_096)] {
        // RK4, 32 steps, velocity MLP 3 × 256 SiLU.
        let velocity = Model::<f32>::from_artifact(Artifact::mlp(
            mlp(d),
            ModelKind::Velocity,
            [0.0, 1.0],
            Provenance::default(),
        )?)?;
        let opts = SamplerOptions::ode(OdeOptions::fixed(OdeSolver::Rk4, 32), 0);
        let g = GpuSampler::for_model(&gpu, &velocity, opts.clone())?;
        let c = Sampler::new(velocity.field()?, 1.0, 0.0, opts)?;
        let (tg, gs) = time(2, 5, || g.sample(n, 0));
        let (tc, cs) = time(0, 2, || c.sample(n, 0));
        report(
            &format!("RK4 32 steps, MLP 3x256 SiLU, d = {d}, n = {n}"),
            n,
            tg,
            tc,
            &gs?.x,
            &cs?.x,
        );
        // Reverse VP-SDE, Euler–Maruyama, 100 steps, score MLP 3 × 256 SiLU. A random
        // network is no score: with β up to 2 (not 20) its samples stay O(1), so the
        // backends' agreement printed is meaningful; the work is the same.
        let sde = VpSde {
            beta_max: 2.0,
            ..VpSde::default()
        };
        let score = Model::<f32>::from_artifact(
            Artifact::mlp(mlp(d), ModelKind::Score, [0.0, 1.0], Provenance::default())?
                .with_vpsde(sde)?,
        )?;
        let vp = score.vpsde()?;
        let opts = vp.sampler_options(
            VpSampling::ReverseSde(SdeOptions::new(SdeScheme::EulerMaruyama, 100)),
            0,
        );
        let g = GpuSampler::for_model(&gpu, &score, opts.clone())?;
        let c = vp.sampler(opts)?;
        let (tg, gs) = time(2, 5, || g.sample(n, 0));
        let (tc, cs) = time(0, 2, || c.sample(n, 0));
        report(
            &format!("reverse VP-SDE EM 100 steps, d = {d}, n = {n}"),
            n,
            tg,
            tc,
            &gs?.x,
            &cs?.x,
        );
    }
    Ok(())
}
