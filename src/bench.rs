//! `socflow bench`: the headline performance figures, each beside a baseline measured
//! in the same process (the GEMM rate on the same shapes; the goals).

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use socflow_runtime::controller::Controller;
use socflow_runtime::field::Field;
use socflow_runtime::linalg::{gemm_xwt, MatRef};
use socflow_runtime::nn::mlp::Mlp;
use socflow_runtime::nn::otflow::OtFlow;
use socflow_runtime::nn::{Activation, MlpParams, OtFlowParams};
use socflow_runtime::ode::{OdeOptions, OdeSolver};
use socflow_runtime::sampler::{Sampler, SamplerOptions};

/// Arguments of `socflow bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Fewer repetitions and smaller batches (a smoke run, not for reporting).
    #[arg(long)]
    pub quick: bool,
}

/// A deterministic generator for benchmark weights (splitmix64).
pub struct SplitMix(pub u64);

impl SplitMix {
    /// Uniform in [−scale, scale).
    pub fn sym(&mut self, scale: f64) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        scale * (2.0 * ((z >> 11) as f64 / (1u64 << 53) as f64) - 1.0)
    }

    /// `n` values uniform in [−scale, scale).
    pub fn vec(&mut self, n: usize, scale: f64) -> Vec<f64> {
        (0..n).map(|_| self.sym(scale)).collect()
    }
}

/// OT-Flow parameters with PyTorch-like uniform initialization.
pub fn otflow_params(d: usize, m: usize, n_th: usize, seed: u64) -> OtFlowParams {
    let mut g = SplitMix(seed);
    let r = (d + 1).min(10);
    let s0 = 1.0 / ((d + 1) as f64).sqrt();
    let s1 = 1.0 / (m as f64).sqrt();
    let mut k = vec![g.vec(m * (d + 1), s0)];
    let mut b = vec![g.vec(m, s0)];
    for _ in 1..n_th {
        k.push(g.vec(m * m, s1));
        b.push(g.vec(m, s1));
    }
    OtFlowParams {
        d,
        m,
        n_th,
        r,
        k,
        b,
        w: g.vec(m, s1),
        a: g.vec(r * (d + 1), s0),
        c_weight: g.vec(d + 1, s0),
        c_bias: 0.0,
    }
}

/// MLP [x, t] → hidden… → d with PyTorch-like uniform initialization.
pub fn mlp_params(d: usize, hidden: &[usize], activation: Activation, seed: u64) -> MlpParams {
    let mut g = SplitMix(seed);
    let mut widths = vec![d + 1];
    widths.extend_from_slice(hidden);
    widths.push(d);
    let mut weights = Vec::new();
    let mut biases = Vec::new();
    for w in widths.windows(2) {
        let s = 1.0 / (w[0] as f64).sqrt();
        weights.push(g.vec(w[0] * w[1], s));
        biases.push(g.vec(w[1], s));
    }
    MlpParams {
        d,
        hidden: hidden.to_vec(),
        activation,
        weights,
        biases,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

/// Runs every headline benchmark and prints the figures.
pub fn run(args: &BenchArgs) -> Result<()> {
    println!("socflow bench{}", if args.quick { " (quick)" } else { "" });
    control_latency(args)?;
    soc_controller_latency(args)?;
    abi_overhead(args)?;
    sampling_throughput(args)?;
    Ok(())
}

fn control_latency(args: &BenchArgs) -> Result<()> {
    println!("\n== single-state control u = −∇ₓΦ(t, x), OT-Flow potential, nTh = 2, one thread ==");
    println!(
        "{:>5} {:>5} {:>6} {:>12} {:>12} {:>12} {:>10}",
        "d", "m", "type", "median", "p99", "p99.9", "goal"
    );
    let calls = if args.quick { 2_000 } else { 50_000 };
    for &(d, m) in &[
        (2, 64),
        (2, 256),
        (12, 64),
        (12, 256),
        (100, 64),
        (100, 256),
    ] {
        let p = otflow_params(d, m, 2, 42);
        for ty in ["f32", "f64"] {
            let lat = match ty {
                "f32" => latency::<f32>(&p, calls)?,
                _ => latency::<f64>(&p, calls)?,
            };
            let goal = match (d, m, ty) {
                (100, 256, "f32") => "< 5 µs",
                (12, 64, "f32") => "< 1 µs",
                _ => "",
            };
            println!(
                "{:>5} {:>5} {:>6} {:>9.3} µs {:>9.3} µs {:>9.3} µs {:>10}",
                d,
                m,
                ty,
                lat.0 * 1e6,
                lat.1 * 1e6,
                lat.2 * 1e6,
                goal
            );
        }
    }
    println!("(peers on this machine, from Python, one thread: ONNX Runtime ~16–31 µs, numpy ~26 µs, PyTorch autograd ~400 µs)");
    Ok(())
}

/// The exported NeuralSOC controllers' single-state latency: the 100-D HJB benchmark's
/// network (d = 100, m = 64, nTh = 2, as `socflow train` trains it) with its control
/// map M = R⁻¹Bᵀ (u = −M∇Φ), and the quadcopter with its state-dependent law, each
/// beside the bare gradient.
fn soc_controller_latency(args: &BenchArgs) -> Result<()> {
    use socflow_trainer::soc::{ControlProblem, QuadraticProblem};
    println!("\n== exported NeuralSOC controller u = −M∇ₓΦ(t, x), one thread ==");
    println!(
        "{:>23} {:>6} {:>12} {:>12} {:>12} {:>14}",
        "controller", "type", "median", "p99", "p99.9", "vs bare ∇Φ"
    );
    let calls = if args.quick { 2_000 } else { 50_000 };
    let problem = QuadraticProblem::hjb100();
    let map = ControlProblem::<socflow_trainer::autodiff::Cpu>::control_map(&problem)?
        .ok_or_else(|| anyhow::anyhow!("the HJB-100 problem has a constant control map"))?;
    let p = otflow_params(100, 64, 2, 42);
    for ty in ["f32", "f64"] {
        let (bare, with_map) = match ty {
            "f32" => (
                latency::<f32>(&p, calls)?,
                latency_with::<f32>(&p, calls, Some(&map))?,
            ),
            _ => (
                latency::<f64>(&p, calls)?,
                latency_with::<f64>(&p, calls, Some(&map))?,
            ),
        };
        println!(
            "{:>23} {:>6} {:>9.3} µs {:>9.3} µs {:>9.3} µs {:>13.2}x",
            "HJB-100 (d=100, m=64)",
            ty,
            with_map.0 * 1e6,
            with_map.1 * 1e6,
            with_map.2 * 1e6,
            with_map.0 / bare.0
        );
    }
    // The quadcopter (d = 12, m = 32 as examples/quadcopter.rs trains it) with its
    // state-dependent law u = −½B(x)ᵀ∇Φ.
    let law = socflow_runtime::artifact::ControlLaw::Quadcopter(
        socflow_runtime::artifact::QuadcopterLaw::new(1.0, 9.81, 2.0)?,
    );
    let p = otflow_params(12, 32, 2, 42);
    for ty in ["f32", "f64"] {
        let (bare, with_law) = match ty {
            "f32" => (
                latency::<f32>(&p, calls)?,
                law_latency::<f32>(&p, calls, &law)?,
            ),
            _ => (
                latency::<f64>(&p, calls)?,
                law_latency::<f64>(&p, calls, &law)?,
            ),
        };
        println!(
            "{:>23} {:>6} {:>9.3} µs {:>9.3} µs {:>9.3} µs {:>13.2}x",
            "quadcopter (d=12, m=32)",
            ty,
            with_law.0 * 1e6,
            with_law.1 * 1e6,
            with_law.2 * 1e6,
            with_law.0 / bare.0
        );
    }
    Ok(())
}

fn law_latency<T: socflow_runtime::Real>(
    p: &OtFlowParams,
    calls: usize,
    law: &socflow_runtime::artifact::ControlLaw,
) -> Result<(f64, f64, f64)> {
    let pot = Arc::new(OtFlow::<T>::new(p)?);
    let ctl = Controller::with_law(pot, law.clone())?;
    time_controller(ctl, p.d, law.control_dim(), calls)
}

fn latency<T: socflow_runtime::Real>(p: &OtFlowParams, calls: usize) -> Result<(f64, f64, f64)> {
    latency_with::<T>(p, calls, None)
}

fn latency_with<T: socflow_runtime::Real>(
    p: &OtFlowParams,
    calls: usize,
    map: Option<&socflow_runtime::artifact::ControlMap>,
) -> Result<(f64, f64, f64)> {
    let pot = Arc::new(OtFlow::<T>::new(p)?);
    let d = p.d;
    let matrix = match map {
        Some(m) => Some(socflow_runtime::controller::ControlMatrix::new(
            m.rows,
            m.cols,
            m.matrix.iter().map(|&v| T::of(v)).collect(),
        )?),
        None => None,
    };
    let ctl = Controller::new(pot, matrix)?;
    time_controller(ctl, d, map.map_or(d, |m| m.rows), calls)
}

/// Median, p99 and p99.9 seconds of single-state `control` calls.
fn time_controller<T: socflow_runtime::Real>(
    mut ctl: Controller<T>,
    d: usize,
    k: usize,
    calls: usize,
) -> Result<(f64, f64, f64)> {
    let mut x: Vec<T> = (0..d).map(|i| T::of(0.01 * i as f64 - 0.2)).collect();
    let mut u = vec![T::zero(); k];
    for _ in 0..calls / 10 {
        ctl.control(T::of(0.3), &x, &mut u)?;
    }
    // Time batches of calls (one Instant pair per 16 calls keeps clock overhead small).
    const INNER: usize = 16;
    let mut per_call = Vec::with_capacity(calls / INNER);
    for k in 0..calls / INNER {
        x[0] = T::of(0.001 * (k % 100) as f64);
        let t0 = Instant::now();
        for _ in 0..INNER {
            ctl.control(T::of(0.3), &x, &mut u)?;
        }
        per_call.push(t0.elapsed().as_secs_f64() / INNER as f64);
        std::hint::black_box(&u);
    }
    per_call.sort_by(f64::total_cmp);
    Ok((
        percentile(&per_call, 0.5),
        percentile(&per_call, 0.99),
        percentile(&per_call, 0.999),
    ))
}

/// FLOPs of one MLP evaluation of one row (multiply-adds count 2).
fn mlp_flops(d: usize, hidden: &[usize]) -> f64 {
    let mut widths = vec![d + 1];
    widths.extend_from_slice(hidden);
    widths.push(d);
    widths.windows(2).map(|w| 2.0 * (w[0] * w[1]) as f64).sum()
}

fn sampling_throughput(args: &BenchArgs) -> Result<()> {
    println!("\n== batch sampling, MLP [x,t] → 3×256 SiLU → d, RK4 32 steps, f32 ==");
    println!(
        "{:>4} {:>7} {:>7} {:>12} {:>10} {:>12} {:>8}",
        "d", "batch", "threads", "samples/s", "GFLOP/s", "GEMM GFLOP/s", "ratio"
    );
    let hidden = [256, 256, 256];
    for &(d, batch) in &[(2usize, 10_000usize), (64, 4_096)] {
        let batch = if args.quick { batch / 4 } else { batch };
        let mlp = Arc::new(Mlp::<f32>::new(&mlp_params(
            d,
            &hidden,
            Activation::Silu,
            7,
        ))?);
        let block = Field::<f32>::preferred_block_rows(&*mlp);
        for threads in [1usize, 2] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()?;
            let field: Arc<dyn Field<f32>> = mlp.clone();
            let sampler = Sampler::new(
                field,
                1.0,
                0.0,
                SamplerOptions::ode(OdeOptions::fixed(OdeSolver::Rk4, 32), 1),
            )?;
            let reps = if args.quick { 1 } else { 3 };
            let secs = pool.install(|| -> Result<f64> {
                sampler.sample(batch, 0)?; // warm up
                let mut ts = Vec::new();
                for _ in 0..reps {
                    let t0 = Instant::now();
                    std::hint::black_box(sampler.sample(batch, 0)?);
                    ts.push(t0.elapsed().as_secs_f64());
                }
                Ok(median(ts))
            })?;
            let flops = mlp_flops(d, &hidden) * 4.0 * 32.0 * batch as f64;
            let gflops = flops / secs / 1e9;
            let gemm = pool.install(|| gemm_rate(block, 256, 256, threads, args.quick))?;
            println!(
                "{:>4} {:>7} {:>7} {:>12.0} {:>10.1} {:>12.1} {:>7.0}%",
                d,
                batch,
                threads,
                batch as f64 / secs,
                gflops,
                gemm,
                100.0 * gflops / gemm
            );
        }
    }
    println!("(goal: ≥ 80% of the GEMM rate; torchdiffeq, one thread, same network: ~1,700 samples/s at d = 2 and d = 64)");
    Ok(())
}

/// GFLOP/s of the `rows × inner → out` GEMM the networks run, on `threads` threads
/// each multiplying its own blocks (as the sampler does).
fn gemm_rate(rows: usize, inner: usize, out: usize, threads: usize, quick: bool) -> Result<f64> {
    use rayon::prelude::*;
    let mut g = SplitMix(3);
    let x: Vec<f32> = g
        .vec(rows * inner, 1.0)
        .into_iter()
        .map(|v| v as f32)
        .collect();
    let w: Vec<f32> = g
        .vec(out * inner, 1.0)
        .into_iter()
        .map(|v| v as f32)
        .collect();
    let reps = if quick { 200 } else { 2000 };
    let run = || -> Result<()> {
        (0..threads).into_par_iter().try_for_each(|_| {
            let mut c = vec![0.0f32; rows * out];
            for _ in 0..reps {
                gemm_xwt(
                    MatRef::new(&x, rows, inner, inner),
                    MatRef::new(&w, out, inner, inner),
                    None,
                    &mut c,
                    out,
                )?;
                std::hint::black_box(&c);
            }
            Ok::<(), socflow_runtime::Error>(())
        })?;
        Ok(())
    };
    run()?;
    let t0 = Instant::now();
    run()?;
    let secs = t0.elapsed().as_secs_f64();
    Ok(2.0 * (rows * inner * out * reps * threads) as f64 / secs / 1e9)
}

/// The C ABI's per-call cost over the Rust API: `socflow_controller_control` (called
/// through a function pointer, as a C program calls into the shared library) against
/// `Controller::control` on the same model and states, in interleaved rounds.
fn abi_overhead(args: &BenchArgs) -> Result<()> {
    use socflow::socflow_status::SOCFLOW_OK;
    use socflow_runtime::artifact::{Artifact, Provenance, StorageDtype};
    println!("\n== C ABI per-call cost: socflow_controller_control vs Controller::control, one thread ==");
    println!(
        "{:>5} {:>5} {:>6} {:>12} {:>12} {:>8} {:>8}",
        "d", "m", "type", "Rust", "C ABI", "ratio", "goal"
    );
    let (rounds, inner) = if args.quick { (100, 64) } else { (2000, 64) };
    for &(d, m) in &[(12, 64), (100, 256)] {
        let bytes = Artifact::otflow(
            otflow_params(d, m, 2, 7),
            [0.0, 1.0],
            Provenance::now("bench"),
        )?
        .to_bytes(StorageDtype::F64)?;
        for (ty, precision) in [
            ("f64", socflow::SOCFLOW_PRECISION_F64),
            ("f32", socflow::SOCFLOW_PRECISION_F32),
        ] {
            let mut model = socflow::socflow_model::default();
            let mut ctl = socflow::socflow_controller::default();
            // SAFETY: `bytes` is a live buffer and the handles are locals.
            unsafe {
                anyhow::ensure!(
                    socflow::socflow_model_load_buffer(bytes.as_ptr(), bytes.len(), &mut model)
                        == SOCFLOW_OK
                );
                anyhow::ensure!(
                    socflow::socflow_controller_create(model, precision, &mut ctl) == SOCFLOW_OK
                );
            }
            let x: Vec<f64> = (0..d).map(|i| 0.01 * i as f64 - 0.2).collect();
            let mut u = vec![0.0; d];
            let f = std::hint::black_box(
                socflow::socflow_controller_control
                    as unsafe extern "C" fn(
                        socflow::socflow_controller,
                        f64,
                        *const f64,
                        usize,
                        *mut f64,
                        usize,
                    ) -> socflow::socflow_status,
            );
            let mut c_call = || {
                // SAFETY: `x` and `u` are live buffers of the lengths passed.
                let s = unsafe { f(ctl, 0.3, x.as_ptr(), d, u.as_mut_ptr(), d) };
                std::hint::black_box(s);
            };
            let (rust, c) = if ty == "f64" {
                let mut rc =
                    socflow_runtime::model::Model::<f64>::from_bytes(&bytes)?.controller()?;
                let mut ur = vec![0.0; d];
                interleaved(
                    rounds,
                    inner,
                    || {
                        let _ = rc.control(0.3, std::hint::black_box(&x), &mut ur);
                    },
                    &mut c_call,
                )
            } else {
                let mut rc =
                    socflow_runtime::model::Model::<f32>::from_bytes(&bytes)?.controller()?;
                let x32: Vec<f32> = x.iter().map(|v| *v as f32).collect();
                let mut ur = vec![0f32; d];
                interleaved(
                    rounds,
                    inner,
                    || {
                        let _ = rc.control(0.3, std::hint::black_box(&x32), &mut ur);
                    },
                    &mut c_call,
                )
            };
            socflow::socflow_controller_destroy(ctl);
            socflow::socflow_model_destroy(model);
            println!(
                "{:>5} {:>5} {:>6} {:>9.3} µs {:>9.3} µs {:>8.3} {:>8}",
                d,
                m,
                ty,
                rust * 1e6,
                c * 1e6,
                c / rust,
                "≤ 1.1"
            );
        }
    }
    Ok(())
}

/// Median seconds per call of `a` and of `b`, timed in alternating rounds of `inner`
/// calls (after a warm-up), so drift of the machine affects both alike.
fn interleaved(
    rounds: usize,
    inner: usize,
    mut a: impl FnMut(),
    b: &mut impl FnMut(),
) -> (f64, f64) {
    for _ in 0..inner * 4 {
        a();
        b();
    }
    let (mut ta, mut tb) = (Vec::with_capacity(rounds), Vec::with_capacity(rounds));
    for r in 0..rounds {
        let time = |f: &mut dyn FnMut(), out: &mut Vec<f64>| {
            let t0 = Instant::now();
            for _ in 0..inner {
                f();
            }
            out.push(t0.elapsed().as_secs_f64() / inner as f64);
        };
        if r % 2 == 0 {
            time(&mut a, &mut ta);
            time(b, &mut tb);
        } else {
            time(b, &mut tb);
            time(&mut a, &mut ta);
        }
    }
    (median(ta), median(tb))
}
