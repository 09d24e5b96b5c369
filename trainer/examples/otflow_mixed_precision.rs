//! OT-Flow training in mixed precision (issue 7, part 5): time per iteration, peak
//! memory, gradient accuracy and a short training run, in f32, bf16 and f16 with
//! dynamic adjoint scaling, and f16 without it (the ablation), on the CPU or a GPU.
//!
//! The case of the mixed-precision paper: d = 63 (MiniBooNE's dimension; the data are
//! a synthetic 63-D Gaussian mixture, which changes no cost), ResNet width m = 512,
//! nTh = 2, batch 512, RK4 with 14 steps, exact Laplacian, discretize-then-optimize
//! gradient. One iteration is what `socflow train` does per step: the forward solve
//! (storing the trajectory in the network's precision), the adjoint sweep, the
//! download of the gradient and Adam's update on the host.
//!
//! Per precision it prints:
//! - seconds per iteration (median over `--iters` after `--warmup`);
//! - peak memory of the first iteration: on a GPU the most bytes the backend's buffers
//!   held at once ([`Cuda::memory`], what PyTorch's `max_memory_allocated` counts), on
//!   the CPU the most heap bytes live at once beyond those live before it (a counting
//!   allocator; the CPU backend's per-thread buffer caches are emptied first, and what
//!   they keep during the iteration counts);
//! - the relative error of the first gradient against the f64 gradient on the same
//!   device;
//! - the objective J at the first and last of `--train-iters` Adam steps on one fixed
//!   batch, or the iteration where it failed (a non-finite objective or gradient).
//!
//! `--export DIR` also writes the initial weights (one float64 `.npy` per parameter,
//! the original code's `state_dict` names), the batch (`x.npy`), `config.json` and the
//! f64 objective and gradient (`reference.json`), for the PyTorch + torchdiffeq peer
//! `scripts/peers/bench_otflow.py`, which checks it computes the same objective before
//! timing the same model. `--json FILE` writes the results.
//!
//! ```text
//! cargo run --release -p socflow-trainer --features cuda --example otflow_mixed_precision -- \
//!     --device cuda --export target/otflow-weights --json target/otflow-socflow.json
//! cargo run --release -p socflow-trainer --example otflow_mixed_precision -- \
//!     --device cpu --d 8 --m 64 --batch 128 --iters 3 --train-iters 20
//! ```
//!
//! On the CPU the paper's case takes tens of seconds per iteration; scripts/gpu-check
//! runs it on a GPU machine. Without a device, `--device cuda` prints `skipped:` and the
//! reason, and exits 0.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use serde_json::json;
use socflow_runtime::nn::OtFlowParams;
use socflow_runtime::npy::write_npy;
use socflow_trainer::autodiff::{Backend, Cpu, Cuda, Graph};
use socflow_trainer::dto::PrecisionPolicy;
use socflow_trainer::optim::{Adam, AdamConfig};
use socflow_trainer::otflow::{
    init_params, params_from_flat, to_param_set, OtFlowCosts, OtFlowProblem,
};

/// The system allocator, counting the bytes live and the most live at once: the CPU
/// run's peak memory.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call forwards to the system allocator with the caller's layout and
// pointer unchanged; the counters are plain atomics and never affect the allocation.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc` is the system allocator's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` above (the system allocator) with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The command line.
struct Args {
    device: String,
    d: usize,
    m: usize,
    n_th: usize,
    batch: usize,
    nt: usize,
    alpha: [f64; 3],
    lr: f64,
    warmup: usize,
    iters: usize,
    train_iters: usize,
    precisions: Vec<String>,
    seed: u64,
    export: Option<PathBuf>,
    json: Option<PathBuf>,
    grad_check: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        device: "cpu".into(),
        d: 63,
        m: 512,
        n_th: 2,
        batch: 512,
        nt: 14,
        // The original code's weights for MiniBooNE (transport, NLL, HJB penalty).
        alpha: [1.0, 100.0, 15.0],
        lr: 0.02,
        warmup: 1,
        iters: 5,
        train_iters: 30,
        precisions: ["f32", "bf16", "f16", "f16-noscale"]
            .map(String::from)
            .to_vec(),
        seed: 0,
        export: None,
        json: None,
        grad_check: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--no-grad-check" {
            a.grad_check = false;
            continue;
        }
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--device" => a.device = value.clone(),
            "--d" => a.d = value.parse().map_err(|e| bad(&e))?,
            "--m" => a.m = value.parse().map_err(|e| bad(&e))?,
            "--n-th" => a.n_th = value.parse().map_err(|e| bad(&e))?,
            "--batch" => a.batch = value.parse().map_err(|e| bad(&e))?,
            "--nt" => a.nt = value.parse().map_err(|e| bad(&e))?,
            "--lr" => a.lr = value.parse().map_err(|e| bad(&e))?,
            "--warmup" => a.warmup = value.parse().map_err(|e| bad(&e))?,
            "--iters" => a.iters = value.parse().map_err(|e| bad(&e))?,
            "--train-iters" => a.train_iters = value.parse().map_err(|e| bad(&e))?,
            "--seed" => a.seed = value.parse().map_err(|e| bad(&e))?,
            "--alpha" => {
                let v: Vec<f64> = value
                    .split(',')
                    .map(|s| s.trim().parse::<f64>())
                    .collect::<Result<_, _>>()
                    .map_err(|e| bad(&e))?;
                a.alpha = v
                    .try_into()
                    .map_err(|_| format!("--alpha {value}: three comma-separated weights"))?;
            }
            "--precisions" => {
                a.precisions = value.split(',').map(|s| s.trim().to_string()).collect()
            }
            "--export" => a.export = Some(value.into()),
            "--json" => a.json = Some(value.into()),
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    if a.iters == 0 {
        return Err("--iters must be at least 1".into());
    }
    for p in &a.precisions {
        policy(p)?;
    }
    Ok(a)
}

/// The solver's precision policy of a precision's name.
fn policy(name: &str) -> Result<PrecisionPolicy, String> {
    Ok(match name {
        "f64" => PrecisionPolicy::f64(),
        "f32" => PrecisionPolicy::f32(),
        "bf16" => PrecisionPolicy::bf16(),
        "f16" => PrecisionPolicy::f16(),
        "f16-noscale" => PrecisionPolicy::f16().with_dynamic_scaling(false),
        _ => {
            return Err(format!(
                "unknown precision {name} (f64, f32, bf16, f16, f16-noscale)"
            ))
        }
    })
}

/// A batch of a 63-D (any d) Gaussian mixture: eight centres with coordinates ±1,
/// spread 0.5, from a fixed generator (the costs do not depend on the data).
fn mixture(n: usize, d: usize, seed: u64) -> Vec<f64> {
    let mut state = seed ^ 0x9E37_79B9_7F4A_7C15;
    let mut uniform = move || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    let centres: Vec<Vec<f64>> = (0..8)
        .map(|_| {
            (0..d)
                .map(|_| if uniform() < 0.5 { -1.0 } else { 1.0 })
                .collect()
        })
        .collect();
    let mut x = Vec::with_capacity(n * d);
    for i in 0..n {
        let c = &centres[i % 8];
        for &ck in c {
            let (u1, u2) = (uniform(), uniform());
            let normal = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
            x.push(ck + 0.5 * normal);
        }
    }
    x
}

/// What one precision's run measured.
struct Run {
    name: String,
    seconds: Option<f64>,
    peak_bytes: Option<u64>,
    grad_rel_err: Option<f64>,
    first_j: Option<f64>,
    last_j: Option<f64>,
    steps_done: usize,
    failure: Option<String>,
}

/// The backend's memory: live bytes now and the peak since the last reset.
trait Memory {
    fn reset(&self);
    fn peak_since_reset(&self) -> u64;
}

/// The heap of this process (the CPU backend's buffers live there): peak beyond the
/// bytes live at the reset.
struct Heap {
    base: AtomicUsize,
}

impl Memory for Heap {
    fn reset(&self) {
        // The CPU backend keeps dropped buffers per thread for reuse; an earlier run's
        // cache would serve this run's buffers without new allocations.
        Cpu::release_cached();
        rayon::broadcast(|_| Cpu::release_cached());
        let live = LIVE.load(Ordering::Relaxed);
        self.base.store(live, Ordering::Relaxed);
        PEAK.store(live, Ordering::Relaxed);
    }

    fn peak_since_reset(&self) -> u64 {
        (PEAK.load(Ordering::Relaxed) - self.base.load(Ordering::Relaxed)) as u64
    }
}

/// The GPU backend's buffers: peak beyond those live at the reset.
struct Device {
    cuda: Cuda,
    base: std::sync::atomic::AtomicU64,
}

impl Memory for Device {
    fn reset(&self) {
        self.cuda.reset_peak_memory();
        self.base
            .store(self.cuda.memory().live_bytes, Ordering::Relaxed);
    }

    fn peak_since_reset(&self) -> u64 {
        self.cuda.memory().peak_bytes - self.base.load(Ordering::Relaxed)
    }
}

/// The gradient as flat arrays in the order of the parameter names.
fn flat(g: &OtFlowParams) -> Result<Vec<Vec<f64>>, String> {
    Ok(to_param_set(g).map_err(|e| e.to_string())?.values)
}

fn rel_err(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
    let (mut num, mut den) = (0.0, 0.0);
    for (x, y) in a.iter().flatten().zip(b.iter().flatten()) {
        num += (x - y) * (x - y);
        den += y * y;
    }
    (num / den).sqrt()
}

/// One precision: timing, peak memory, gradient error and a short training run.
fn run_precision<B: Backend + Clone>(
    backend: &B,
    memory: &dyn Memory,
    args: &Args,
    name: &str,
    p0: &OtFlowParams,
    x: &[f64],
    reference: Option<&[Vec<f64>]>,
) -> Result<Run, String> {
    let problem =
        OtFlowProblem::new(args.alpha, args.nt, policy(name)?).map_err(|e| e.to_string())?;
    let mut run = Run {
        name: name.to_string(),
        seconds: None,
        peak_bytes: None,
        grad_rel_err: None,
        first_j: None,
        last_j: None,
        steps_done: 0,
        failure: None,
    };
    let mut set = to_param_set(p0).map_err(|e| e.to_string())?;
    let mut adam = Adam::new(AdamConfig::adam(args.lr), &set).map_err(|e| e.to_string())?;
    let mut params = p0.clone();
    let mut g = Graph::new(backend.clone());
    let total = (args.warmup + args.iters).max(args.train_iters);
    let mut times = Vec::new();
    memory.reset();
    for it in 0..total {
        let start = Instant::now();
        let step = problem
            .costs_and_gradient(&mut g, &params, x)
            .map_err(|e| e.to_string())
            .and_then(|(c, grad)| {
                let grads = flat(&grad)?;
                check(&c, &grads)?;
                adam.step(&mut set, &grads, args.lr)
                    .map_err(|e| e.to_string())?;
                params = params_from_flat(p0, set.values.clone()).map_err(|e| e.to_string())?;
                Ok((c, grads))
            });
        let elapsed = start.elapsed().as_secs_f64();
        match step {
            Ok((c, grads)) => {
                if it == 0 {
                    run.peak_bytes = Some(memory.peak_since_reset());
                    run.first_j = Some(c.j);
                    run.grad_rel_err = reference.map(|r| rel_err(&grads, r));
                }
                if it >= args.warmup && times.len() < args.iters {
                    times.push(elapsed);
                }
                run.last_j = Some(c.j);
                run.steps_done = it + 1;
            }
            Err(e) => {
                run.failure = Some(format!("iteration {}: {e}", it + 1));
                break;
            }
        }
        if it + 1 >= args.train_iters && times.len() == args.iters {
            break;
        }
    }
    if !times.is_empty() {
        times.sort_by(f64::total_cmp);
        run.seconds = Some(times[times.len() / 2]);
    }
    Ok(run)
}

/// A failed step: a non-finite objective or gradient (what the training loops refuse).
fn check(c: &OtFlowCosts, grads: &[Vec<f64>]) -> Result<(), String> {
    if !c.j.is_finite() {
        return Err(format!("the objective is {}", c.j));
    }
    if grads.iter().flatten().any(|v| !v.is_finite()) {
        return Err("the gradient is not finite".into());
    }
    Ok(())
}

/// The weights, batch, settings and f64 reference for the PyTorch peer.
fn export(
    dir: &Path,
    args: &Args,
    p0: &OtFlowParams,
    x: &[f64],
    reference: Option<(&OtFlowCosts, &[Vec<f64>])>,
) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| format!("exporting to {}: {e}", dir.display());
    std::fs::create_dir_all(dir).map_err(|e| err(&e))?;
    let set = to_param_set(p0).map_err(|e| err(&e))?;
    for ((name, shape), values) in set.names.iter().zip(&set.shapes).zip(&set.values) {
        write_npy(dir.join(format!("{name}.npy")), shape, values).map_err(|e| err(&e))?;
    }
    write_npy(dir.join("x.npy"), &[args.batch, args.d], x).map_err(|e| err(&e))?;
    let config = json!({
        "d": args.d, "m": args.m, "n_th": args.n_th, "r": p0.r, "nt": args.nt,
        "alpha": args.alpha, "batch": args.batch, "lr": args.lr,
    });
    std::fs::write(dir.join("config.json"), config.to_string()).map_err(|e| err(&e))?;
    if let Some((c, grads)) = reference {
        let grad: serde_json::Map<String, serde_json::Value> = set
            .names
            .iter()
            .zip(grads)
            .map(|(n, g)| (n.clone(), json!(g)))
            .collect();
        let r = json!({
            "J": c.j, "nll": c.cost_c, "cL": c.cost_l, "cH": c.cost_r, "grad": grad,
            "solver": "classic RK4, discretize-then-optimize, float64",
        });
        std::fs::write(dir.join("reference.json"), r.to_string()).map_err(|e| err(&e))?;
    }
    Ok(())
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<(), String> {
    let args = parse_args()?;
    match args.device.as_str() {
        "cpu" => {
            let memory = Heap {
                base: AtomicUsize::new(0),
            };
            bench(&Cpu::new(), &memory, &args, "CPU (rayon)".into())
        }
        "cuda" => {
            let cuda = match Cuda::new(0) {
                Ok(c) => c,
                Err(e) => {
                    println!("skipped: no usable GPU: {e}");
                    return Ok(());
                }
            };
            let label = format!("GPU {}", cuda.gpu().name());
            let memory = Device {
                cuda: cuda.clone(),
                base: Default::default(),
            };
            bench(&cuda, &memory, &args, label)
        }
        other => Err(format!("--device {other}: cpu or cuda")),
    }
}

fn bench<B: Backend + Clone>(
    backend: &B,
    memory: &dyn Memory,
    args: &Args,
    label: String,
) -> Result<(), String> {
    let x = mixture(args.batch, args.d, args.seed);
    let p0 = init_params(args.d, args.m, args.n_th, args.seed).map_err(|e| e.to_string())?;
    println!(
        "OT-Flow d = {}, m = {}, nTh = {}, batch {}, RK4 {} steps, alpha {:?}, on {label}",
        args.d, args.m, args.n_th, args.batch, args.nt, args.alpha
    );
    let reference = if args.grad_check || args.export.is_some() {
        let t = Instant::now();
        let problem = OtFlowProblem::new(args.alpha, args.nt, PrecisionPolicy::f64())
            .map_err(|e| e.to_string())?;
        let mut g = Graph::new(backend.clone());
        let (c, grad) = problem
            .costs_and_gradient(&mut g, &p0, &x)
            .map_err(|e| format!("the f64 reference: {e}"))?;
        println!(
            "f64 reference: J = {:.10}, {:.2} s",
            c.j,
            t.elapsed().as_secs_f64()
        );
        Some((c, flat(&grad)?))
    } else {
        None
    };
    if let Some(dir) = &args.export {
        export(
            dir,
            args,
            &p0,
            &x,
            reference.as_ref().map(|(c, g)| (c, g.as_slice())),
        )?;
        println!(
            "exported the weights, batch and f64 reference to {}",
            dir.display()
        );
    }
    let ref_grad = if args.grad_check {
        reference.as_ref().map(|(_, g)| g.as_slice())
    } else {
        None
    };
    let mut runs = Vec::new();
    for name in &args.precisions {
        let r = run_precision(backend, memory, args, name, &p0, &x, ref_grad)?;
        print_run(&r);
        runs.push(r);
    }
    summary(&runs);
    if let Some(path) = &args.json {
        let rows: Vec<_> = runs
            .iter()
            .map(|r| {
                json!({
                    "precision": r.name, "seconds_per_iteration": r.seconds,
                    "peak_bytes": r.peak_bytes, "grad_rel_err": r.grad_rel_err,
                    "first_j": r.first_j, "last_j": r.last_j, "steps": r.steps_done,
                    "failure": r.failure,
                })
            })
            .collect();
        let out = json!({
            "device": label, "d": args.d, "m": args.m, "n_th": args.n_th,
            "batch": args.batch, "nt": args.nt, "alpha": args.alpha, "lr": args.lr,
            "runs": rows,
        });
        std::fs::write(path, out.to_string())
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    Ok(())
}

fn print_run(r: &Run) {
    let opt = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map_or("-".into(), f);
    println!(
        "{:<12} {:>10} s/it  peak {:>10}  grad err {:>9}  J {} -> {} ({} steps){}",
        r.name,
        opt(r.seconds, &|s| format!("{s:.4}")),
        r.peak_bytes
            .map_or("-".into(), |b| format!("{:.1} MiB", b as f64 / 1048576.0)),
        opt(r.grad_rel_err, &|e| format!("{e:.2e}")),
        opt(r.first_j, &|j| format!("{j:.4}")),
        opt(r.last_j, &|j| format!("{j:.4}")),
        r.steps_done,
        r.failure
            .as_ref()
            .map_or(String::new(), |f| format!("  FAILED at {f}")),
    );
}

/// Time and memory as ratios to f32 (the paper's comparisons).
fn summary(runs: &[Run]) {
    let Some(base) = runs.iter().find(|r| r.name == "f32") else {
        return;
    };
    for r in runs.iter().filter(|r| r.name != "f32") {
        let speed = match (base.seconds, r.seconds) {
            (Some(b), Some(s)) => format!("{:.2}x f32's speed", b / s),
            _ => "-".into(),
        };
        let mem = match (base.peak_bytes, r.peak_bytes) {
            (Some(b), Some(p)) if b > 0 => {
                format!("{:.2} of f32's peak memory", p as f64 / b as f64)
            }
            _ => "-".into(),
        };
        println!("{:<12} {speed}, {mem}", r.name);
    }
}
