//! Batch sampling against PyTorch on the same network, in one run: the other half of
//! `scripts/bench-peers`, which first runs the peer script
//! `shared/baselines/bench_sampling.py` (torchdiffeq and torchsde) and converts the
//! weights and initial states it saved into .npy files.
//!
//! ```text
//! cargo run --release --example peer_sampling -- DIR [--threads N] [--repeats R]
//! ```
//!
//! `DIR` holds, for each dimension d the peer ran (2: batch 10,000; 64: batch 4,096),
//! `silu_d{d}/W{i}.npy`, `b{i}.npy` (the peer MLP [x, t] → 3 × 256 SiLU → d, out × in
//! row-major), `x0.npy` (its initial states) and `ref_classic_rk4_N32.npy` (the peer's
//! hand-written classic RK4, 32 steps, t: 0 → 1, from x0), and the peer's timings
//! `sampling_t{N}.json`.
//!
//! First the network is checked to be the same: socflow's RK4 from the peer's x0 must
//! land on the peer's final states (f32 rounding, max |Δ| printed and checked against
//! 1e-3). Then the same cases are timed here, f32, `N` threads, median of `R` runs
//! after one warm-up: RK4 with 32 steps, Euler with 100, Dormand–Prince at rtol = atol
//! = 1e-5, and the reverse VP-SDE (β from 0.1 to 20, the network as the score, t from
//! 1 to ε = 10⁻³) by Euler–Maruyama with 100 steps. Each line prints samples per
//! second on both sides, their ratio socflow / peer (above 1: socflow is faster), and
//! the ratio of samples per CPU-second, which with one thread is the figure that
//! holds when other work shares the machine.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use rayon::prelude::*;
use socflow_runtime::field::Field;
use socflow_runtime::nn::mlp::Mlp;
use socflow_runtime::nn::{Activation, MlpParams};
use socflow_runtime::npy::read_npy_f64;
use socflow_runtime::ode::{
    solve_block, AdaptiveOptions, OdeOptions, OdeSolver, OdeWorkspace, StepSize,
};
use socflow_runtime::sampler::{Sampler, SamplerOptions};
use socflow_runtime::sde::{SdeOptions, SdeScheme};
use socflow_runtime::vpsde::{ScoreOutput, VpSampling, VpSde, VpSdeModel};

/// Command-line options.
#[derive(Parser, Debug)]
#[command(about = "socflow sampling against torchdiffeq/torchsde on the same network")]
struct Args {
    /// Folder written by scripts/bench-peers (peer JSON and .npy weights).
    dir: PathBuf,
    /// Worker threads (the peer ran with the same count).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Timed runs per case (median reported).
    #[arg(long, default_value_t = 5)]
    repeats: usize,
}

/// The peer's batch per dimension (bench_sampling.py's BATCH).
const CASES: [(usize, usize); 2] = [(2, 10_000), (64, 4_096)];

fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(
        args.threads >= 1 && args.repeats >= 1,
        "--threads and --repeats must be >= 1"
    );
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads)
        .build()
        .context("thread pool")?;
    let json_path = args.dir.join(format!("sampling_t{}.json", args.threads));
    let peer: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&json_path)
            .with_context(|| format!("cannot read the peer's timings {}", json_path.display()))?,
    )
    .with_context(|| format!("{} is not JSON", json_path.display()))?;
    let env = &peer["env"];
    println!(
        "peer: torch {} torchdiffeq {} torchsde {}, {} thread(s); cpu {}",
        env["torch"], env["torchdiffeq"], env["torchsde"], args.threads, env["cpu"]
    );
    for (d, batch) in CASES {
        let dir = args.dir.join(format!("silu_d{d}"));
        if !dir.exists() {
            println!(
                "d={d}: no {} (the peer did not run this dimension)",
                dir.display()
            );
            continue;
        }
        let Some(case) = peer["cases"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["act"] == "silu" && c["d"] == d as u64))
        else {
            bail!("{} has no silu case for d = {d}", json_path.display());
        };
        let net = load_mlp(&dir, d)?;
        pool.install(|| same_network(&dir, &net, d))?;
        println!(
            "{:<6} {:<24} {:>11} {:>11} {:>7} {:>9}  peer case",
            "case", "socflow", "socflow/s", "peer/s", "ratio", "cpu ratio"
        );
        let field: Arc<dyn Field<f32>> = net.clone();
        let runs = &case["runs"];
        let label = format!("d={d}");
        let rk4 = OdeOptions::fixed(OdeSolver::Rk4, 32);
        let euler = OdeOptions::fixed(OdeSolver::Euler, 100);
        let dopri = OdeOptions {
            solver: OdeSolver::Dopri5,
            step_size: StepSize::Adaptive(AdaptiveOptions::new(1e-5, 1e-5)),
        };
        for (name, opts, peers) in [
            (
                "rk4 32 steps",
                rk4,
                &["torchdiffeq_rk4_N32", "manual_rk4_N32"][..],
            ),
            (
                "euler 100 steps",
                euler,
                &["torchdiffeq_euler_N100", "manual_euler_N100"][..],
            ),
            ("dopri5 1e-5", dopri, &["torchdiffeq_dopri5_tol1e-5"][..]),
        ] {
            // The peer integrates t: 0 → 1 from N(0, I); so does this sampler.
            let sampler = Sampler::new(field.clone(), 0.0, 1.0, SamplerOptions::ode(opts, 0))?;
            let rate =
                pool.install(|| time_rate(batch, args.repeats, || sampler.sample(batch, 0)))?;
            report(&label, name, rate, runs, peers);
        }
        let vp = VpSdeModel::new(
            field.clone(),
            VpSde {
                output: ScoreOutput::Score,
                ..VpSde::default()
            },
            1.0,
            None,
        )?;
        let sampler = vp.sampler(vp.sampler_options(
            VpSampling::ReverseSde(SdeOptions::new(SdeScheme::EulerMaruyama, 100)),
            123,
        ))?;
        let rate = pool.install(|| time_rate(batch, args.repeats, || sampler.sample(batch, 0)))?;
        report(
            &label,
            "reverse VP-SDE EM 100",
            rate,
            runs,
            &["torchsde_revVP_EM_N100", "manual_revVP_EM_N100"],
        );
    }
    Ok(())
}

/// The peer MLP from `dir/W{i}.npy`, `dir/b{i}.npy` (i = 0..4), in f32.
fn load_mlp(dir: &Path, d: usize) -> Result<Arc<Mlp<f32>>> {
    let mut weights = Vec::new();
    let mut biases = Vec::new();
    for i in 0..4 {
        let (_, w) = read_npy_f64(dir.join(format!("W{i}.npy")))?;
        let (_, b) = read_npy_f64(dir.join(format!("b{i}.npy")))?;
        weights.push(w);
        biases.push(b);
    }
    let params = MlpParams {
        d,
        hidden: vec![256, 256, 256],
        activation: Activation::Silu,
        weights,
        biases,
    };
    Ok(Arc::new(
        Mlp::<f32>::new(&params).context("the peer's weights")?,
    ))
}

/// Integrates the peer's x0 with RK4 (32 steps, 0 → 1) and compares with the peer's
/// classic RK4 result: the two must be the same network up to f32 rounding.
fn same_network(dir: &Path, net: &Arc<Mlp<f32>>, d: usize) -> Result<()> {
    let (shape, x0) = read_npy_f64(dir.join("x0.npy"))?;
    let (_, reference) = read_npy_f64(dir.join("ref_classic_rk4_N32.npy"))?;
    ensure!(
        shape.len() == 2 && shape[1] == d,
        "x0.npy has shape {shape:?}, expected [n, {d}]"
    );
    ensure!(
        reference.len() == x0.len(),
        "the reference has {} values, x0 {}",
        reference.len(),
        x0.len()
    );
    let mut x: Vec<f32> = x0.iter().map(|v| *v as f32).collect();
    let opts = OdeOptions::fixed(OdeSolver::Rk4, 32);
    let rows = net.preferred_block_rows().max(1);
    x.par_chunks_mut(rows * d)
        .map(|block| -> socflow_runtime::Result<()> {
            let mut ws = OdeWorkspace::for_field(&**net, block.len() / d);
            solve_block(&**net, &opts, 0.0, 1.0, block, None, None, &mut ws)?;
            Ok(())
        })
        .collect::<socflow_runtime::Result<Vec<()>>>()?;
    let max_diff = x
        .iter()
        .zip(&reference)
        .map(|(a, b)| (f64::from(*a) - b).abs())
        .fold(0.0, f64::max);
    let scale = reference.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    println!("d={d}: same network: RK4 from the peer's x0, max |socflow - peer| = {max_diff:.2e} (states up to {scale:.2})");
    ensure!(
        max_diff < 1e-3 * scale.max(1.0),
        "the network differs from the peer's"
    );
    Ok(())
}

/// Samples per second of wall-clock time and per second of the process's CPU time.
#[derive(Clone, Copy)]
struct Rates {
    wall: f64,
    cpu: f64,
}

/// `batch` over the median of `repeats` timed runs after a warm-up, in wall-clock and
/// in CPU time. With one thread the CPU-time rate is what the run would reach on an
/// idle core, so it stays comparable when other work shares the machine (the peer
/// script records the same, as `samples_per_cpu_s`).
fn time_rate<R>(
    batch: usize,
    repeats: usize,
    mut run: impl FnMut() -> socflow_runtime::Result<R>,
) -> Result<Rates> {
    run()?;
    let mut wall = Vec::with_capacity(repeats);
    let mut cpu = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let (c0, start) = (process_cpu_seconds()?, Instant::now());
        std::hint::black_box(run()?);
        wall.push(start.elapsed().as_secs_f64());
        cpu.push(process_cpu_seconds()? - c0);
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Ok(Rates {
        wall: batch as f64 / median(wall),
        cpu: batch as f64 / median(cpu),
    })
}

/// CPU time of every thread of this process so far, in seconds: the sum of the first
/// field (nanoseconds on a CPU) of `/proc/self/task/*/schedstat` (Linux).
fn process_cpu_seconds() -> Result<f64> {
    let mut ns = 0u64;
    for task in std::fs::read_dir("/proc/self/task").context("/proc/self/task (Linux only)")? {
        let path = task?.path().join("schedstat");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        ns += text
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .with_context(|| format!("{} is not a schedstat line", path.display()))?;
    }
    Ok(ns as f64 * 1e-9)
}

/// Prints one line per peer case that ran: wall-clock rates and their ratio, then the
/// ratio of the rates per CPU-second.
fn report(label: &str, name: &str, rate: Rates, runs: &serde_json::Value, peers: &[&str]) {
    for peer in peers {
        let run = &runs[*peer];
        if let (Some(p), Some(pc)) = (
            run["samples_per_s"].as_f64(),
            run["samples_per_cpu_s"].as_f64(),
        ) {
            println!(
                "{label:<6} {name:<24} {:>11.0} {p:>11.0} {:>7.2} {:>9.2}  {peer}",
                rate.wall,
                rate.wall / p,
                rate.cpu / pc
            );
        }
    }
}
