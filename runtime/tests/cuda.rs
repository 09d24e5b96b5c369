//! The GPU backend (feature `cuda`) against the CPU path.
//!
//! Every GPU result is compared with the CPU's for the same inputs and seed: the
//! samplers with a zero network bit for bit (the driver's times, coefficients, Brownian
//! increments and combinations are the CPU's exactly; only GEMMs round differently, and
//! a zero network has none to round), and with random networks to 1e-5 relative in f32
//! (1e-10 in f64). Without a device each GPU test prints `skipped: <reason>` and
//! returns; scripts/gpu-check counts those as failures on a GPU machine.
//!
//! Two tests run everywhere: a machine without a driver gets a clear error from
//! `Gpu::new` (never a panic), and NVRTC compiles every kernel where libnvrtc is found
//! (scripts/setup-python installs the wheel).

use std::sync::{Arc, OnceLock};

use socflow_runtime::artifact::{Artifact, ModelKind, Normalization, Provenance};
use socflow_runtime::cuda::{
    compile_ptx, Gpu, GpuField, GpuMlp, GpuOtFlow, GpuReal, GpuSampler, KERNELS,
};
use socflow_runtime::field::Field;
use socflow_runtime::model::Model;
use socflow_runtime::nn::mlp::Mlp;
use socflow_runtime::nn::otflow::OtFlow;
use socflow_runtime::nn::{Activation, MlpParams, OtFlowParams};
use socflow_runtime::ode::{OdeOptions, OdeSolver, SaveAt, StepSize};
use socflow_runtime::sampler::{Method, Sampler, SamplerOptions};
use socflow_runtime::sde::{ConstantDiffusion, DiagonalDiffusion, SdeOptions, SdeScheme};
use socflow_runtime::vpsde::{ScoreOutput, VpDynamics, VpSampling, VpSde, VpSdeField};
use socflow_runtime::{Error, Real};
use socflow_testkit::{ok_or_skip, Rng};

/// The first GPU, opened once for the whole test binary, or why there is none.
fn gpu() -> Result<Arc<Gpu>, String> {
    static GPU: OnceLock<Result<Arc<Gpu>, String>> = OnceLock::new();
    GPU.get_or_init(|| {
        Gpu::new(0)
            .inspect(|g| {
                eprintln!(
                    "GPU: {} (compute {}.{}), {}",
                    g.name(),
                    g.compute_capability().0,
                    g.compute_capability().1,
                    g.libraries()
                );
            })
            .map_err(|e| e.to_string())
    })
    .clone()
}

/// Random MLP parameters: weights ~ U(−1, 1)/√fan-in, biases 0.1·U(−1, 1); all zero
/// with `zero`.
fn mlp_params(d: usize, hidden: &[usize], act: Activation, seed: u64, zero: bool) -> MlpParams {
    let mut g = Rng(seed);
    let mut dims = vec![d + 1];
    dims.extend_from_slice(hidden);
    dims.push(d);
    let scale = |s: f64| if zero { 0.0 } else { s };
    let weights = dims
        .windows(2)
        .map(|w| g.vec_sym(w[0] * w[1], scale(1.0 / (w[0] as f64).sqrt())))
        .collect();
    let biases = dims[1..]
        .iter()
        .map(|&n| g.vec_sym(n, scale(0.1)))
        .collect();
    MlpParams {
        d,
        hidden: hidden.to_vec(),
        activation: act,
        weights,
        biases,
    }
}

/// Largest |a − b| / max(|b|, 1) (b the CPU's).
fn rel_err<T: Real>(a: &[T], b: &[T]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x.f64() - y.f64()).abs() / y.f64().abs().max(1.0))
        .fold(0.0, f64::max)
}

/// The tolerance of a comparison in precision T.
fn tol<T: Real>() -> f64 {
    if T::NAME == "f32" {
        1e-5
    } else {
        1e-10
    }
}

fn assert_bitwise<T: Real>(what: &str, gpu: &[T], cpu: &[T]) {
    assert_eq!(gpu.len(), cpu.len(), "{what}: lengths");
    for (i, (g, c)) in gpu.iter().zip(cpu).enumerate() {
        assert!(
            g.f64().to_bits() == c.f64().to_bits(),
            "{what} ({}): element {i}: GPU {:e}, CPU {:e}",
            T::NAME,
            g.f64(),
            c.f64()
        );
    }
}

fn assert_close<T: Real>(what: &str, gpu: &[T], cpu: &[T], tol: f64) {
    let e = rel_err(gpu, cpu);
    eprintln!("{what} ({}): max relative difference {e:.2e}", T::NAME);
    assert!(
        e <= tol,
        "{what} ({}): GPU and CPU differ by {e:e} > {tol:e}",
        T::NAME
    );
}

/// A score model (with a normalization) as a runtime model in T. A random network is no
/// score: under the default schedule (β up to 20) the samplers would amplify it, and
/// rounding with it, by e^5; a schedule with β ≤ 2 keeps the samples O(1), as a trained
/// network does.
fn score_model<T: Real>(d: usize, zero: bool, output: ScoreOutput) -> Model<T> {
    let p = mlp_params(d, &[48, 48], Activation::Silu, 11, zero);
    let mut g = Rng(5);
    let norm = Normalization::new(g.vec(d, 1.0), g.range(d, 0.5, 2.0)).unwrap();
    let sde = VpSde {
        output,
        beta_max: if zero { 20.0 } else { 2.0 },
        ..VpSde::default()
    };
    let a = Artifact::mlp(p, ModelKind::Score, [0.0, 1.0], Provenance::default())
        .unwrap()
        .with_vpsde(sde)
        .unwrap()
        .with_normalization(norm)
        .unwrap();
    Model::from_artifact(a).unwrap()
}

/// A velocity model on [0, 1] (samples go from t = 1 to 0).
fn velocity_model<T: Real>(d: usize, act: Activation, zero: bool) -> Model<T> {
    let p = mlp_params(d, &[64, 64, 64], act, 3, zero);
    Model::from_artifact(
        Artifact::mlp(p, ModelKind::Velocity, [0.0, 1.0], Provenance::default()).unwrap(),
    )
    .unwrap()
}

/// The CPU sampler a GPU sampler is compared with (as `socflow sample` builds it).
fn cpu_sampler<T: Real>(model: &Model<T>, opts: SamplerOptions<T>) -> Sampler<T> {
    match model.kind() {
        ModelKind::Score => model.vpsde().unwrap().sampler(opts).unwrap(),
        _ => {
            let (t0, t1) = model.time_interval();
            Sampler::new(model.field().unwrap(), t1, t0, opts).unwrap()
        }
    }
}

/// Samples `n` from `first` on both backends.
fn both<T: GpuReal>(
    gpu: &Arc<Gpu>,
    model: &Model<T>,
    opts: SamplerOptions<T>,
    n: usize,
    first: u64,
) -> (Vec<T>, Vec<T>) {
    let adaptive = is_adaptive(&opts);
    let cpu = cpu_sampler(model, opts.clone()).sample(n, first).unwrap();
    let g = GpuSampler::for_model(gpu, model, opts).unwrap();
    let dev = g.sample(n, first).unwrap();
    assert_eq!((dev.n, dev.dim), (cpu.n, cpu.dim));
    assert_eq!(dev.stats.rows, n);
    if adaptive {
        // The step choices agree to rounding (pow is the device's): the same counts,
        // unless a step's error sits within rounding of the threshold.
        let (gs, cs) = (dev.stats.steps as f64, cpu.stats.steps as f64);
        eprintln!(
            "adaptive: GPU {} steps ({} rejected), CPU {} ({} rejected)",
            dev.stats.steps, dev.stats.rejected, cpu.stats.steps, cpu.stats.rejected
        );
        assert!((gs - cs).abs() <= 0.01 * cs, "steps: GPU {gs}, CPU {cs}");
        assert_eq!(dev.stats.steps, dev.stats.accepted + dev.stats.rejected);
        assert_eq!(
            dev.stats.nfe,
            cpu.stats.nfe - 6 * cpu.stats.steps + 6 * dev.stats.steps
        );
    } else {
        assert_eq!(dev.stats.nfe, cpu.stats.nfe, "field evaluations");
    }
    (dev.x, cpu.x)
}

/// Whether options take adaptive steps.
fn is_adaptive<T: Real>(opts: &SamplerOptions<T>) -> bool {
    matches!(&opts.method, Method::Ode(o) if matches!(o.step_size, StepSize::Adaptive(_)))
}

/// Adaptive Dopri5 options for T: tolerances well above T's rounding.
fn adaptive<T: Real>() -> OdeOptions<T> {
    if T::NAME == "f32" {
        OdeOptions::adaptive(T::of(1e-5), T::of(1e-6))
    } else {
        OdeOptions::adaptive(T::of(1e-9), T::of(1e-11))
    }
}

/// The tolerance of a GPU/CPU comparison for `opts`: adaptive steps may differ by a
/// step choice flipped by rounding, which moves a row by up to its error tolerance.
fn tol_for<T: Real>(opts: &SamplerOptions<T>) -> f64 {
    if is_adaptive(opts) {
        if T::NAME == "f32" {
            2e-4
        } else {
            1e-7
        }
    } else {
        tol::<T>()
    }
}

/// Every sampling method of the GPU, as options for a model of dimension `d`.
fn methods<T: Real>(model: &Model<T>) -> Vec<(String, SamplerOptions<T>)> {
    let mut out = Vec::new();
    let d = model.dim();
    if model.kind() == ModelKind::Score {
        let vp = model.vpsde().unwrap();
        for solver in [
            OdeSolver::Euler,
            OdeSolver::Heun,
            OdeSolver::Rk4,
            OdeSolver::Dopri5,
        ] {
            let how = VpSampling::ProbabilityFlow(OdeOptions::fixed(solver, 12));
            out.push((
                format!("probability flow, {}", solver.name()),
                vp.sampler_options(how, 7),
            ));
        }
        for scheme in [SdeScheme::EulerMaruyama, SdeScheme::StochasticHeun] {
            let how = VpSampling::ReverseSde(SdeOptions::new(scheme, 40));
            out.push((
                format!("reverse SDE, {}", scheme.name()),
                vp.sampler_options(how, 7),
            ));
        }
        let how = VpSampling::ProbabilityFlow(adaptive());
        out.push((
            "probability flow, adaptive Dopri5".into(),
            vp.sampler_options(how, 7),
        ));
    } else {
        for solver in [
            OdeSolver::Euler,
            OdeSolver::Heun,
            OdeSolver::Rk4,
            OdeSolver::Dopri5,
        ] {
            out.push((
                format!("ODE, {}", solver.name()),
                SamplerOptions::ode(OdeOptions::fixed(solver, 16), 9),
            ));
        }
        for scheme in [SdeScheme::EulerMaruyama, SdeScheme::StochasticHeun] {
            let diffusion = Arc::new(ConstantDiffusion::new(d, T::of(0.3)));
            out.push((
                format!("SDE, {}", scheme.name()),
                SamplerOptions::sde(SdeOptions::new(scheme, 25), diffusion, 9),
            ));
        }
        out.push((
            "ODE, adaptive Dopri5".into(),
            SamplerOptions::ode(adaptive(), 9),
        ));
        let mut given_h0 = adaptive();
        if let StepSize::Adaptive(a) = &mut given_h0.step_size {
            a.h0 = Some(T::of(0.05));
            a.h_max = Some(T::of(0.2));
        }
        out.push((
            "ODE, adaptive Dopri5 from h0".into(),
            SamplerOptions::ode(given_h0, 9),
        ));
    }
    out
}

fn zero_network_bitwise<T: GpuReal>(gpu: &Arc<Gpu>) {
    for model in [
        score_model::<T>(3, true, ScoreOutput::Noise),
        velocity_model::<T>(5, Activation::Tanh, true),
    ] {
        // Adaptive steps use the device's pow: their step choices are not bitwise.
        for (name, opts) in methods(&model).into_iter().filter(|(_, o)| !is_adaptive(o)) {
            let (g, c) = both(gpu, &model, opts, 301, 1_000);
            assert_bitwise(&format!("zero network, {name}"), &g, &c);
        }
    }
}

/// With a zero network the fields are linear (a(t)x for the VP-SDE, 0 for a velocity),
/// so the GPU samplers must reproduce the CPU's prior draws, Brownian increments, time
/// grids, coefficients and stage combinations exactly.
#[test]
fn zero_network_samplers_are_bitwise_the_cpu() {
    let gpu = ok_or_skip!(gpu());
    zero_network_bitwise::<f32>(&gpu);
    zero_network_bitwise::<f64>(&gpu);
}

fn random_network_close<T: GpuReal>(gpu: &Arc<Gpu>) {
    for model in [
        score_model::<T>(4, false, ScoreOutput::Score),
        velocity_model::<T>(2, Activation::Silu, false),
        velocity_model::<T>(3, Activation::Softplus, false),
    ] {
        for (name, opts) in methods(&model) {
            let tol = tol_for(&opts);
            let (g, c) = both(gpu, &model, opts, 517, 3);
            assert_close(&format!("{:?} model, {name}", model.kind()), &g, &c, tol);
        }
    }
}

/// Every sampler with trained-like random networks: the same samples as the CPU to
/// rounding (the GEMMs sum in another order).
#[test]
fn random_network_samplers_match_the_cpu() {
    let gpu = ok_or_skip!(gpu());
    random_network_close::<f32>(&gpu);
    random_network_close::<f64>(&gpu);
}

fn mlp_batch<T: GpuReal>(gpu: &Arc<Gpu>) {
    for (act, d, hidden) in [
        (Activation::Silu, 2, vec![256, 256, 256]),
        (Activation::Tanh, 64, vec![128, 96]),
        (Activation::Softplus, 7, vec![33]),
    ] {
        let p = mlp_params(d, &hidden, act, 21, false);
        let cpu = Mlp::<T>::new(&p).unwrap();
        let dev = GpuMlp::new(gpu, &cpu).unwrap();
        let rows = 1_000;
        let mut g = Rng(8);
        let x: Vec<T> = g.vec(rows * d, 1.5).into_iter().map(T::of).collect();
        let t: Vec<T> = g.range(rows, 0.0, 1.0).into_iter().map(T::of).collect();
        let mut want = vec![T::zero(); rows * d];
        let mut scratch = vec![T::zero(); cpu.block_scratch_len(rows)];
        cpu.eval_block(&t, &x, &mut want, &mut scratch).unwrap();
        let mut got = vec![T::zero(); rows * d];
        dev.eval_block(&t, &x, &mut got).unwrap();
        assert_close(
            &format!("MLP {} d = {d}", act.name()),
            &got,
            &want,
            tol::<T>(),
        );
        // Zero rows, and a block of the wrong size.
        dev.eval_block(&[], &[], &mut []).unwrap();
        assert!(matches!(
            dev.eval_block(&t, &x[1..], &mut got),
            Err(Error::Length { .. })
        ));
    }
}

/// The batch MLP (every activation, per-row times) equals the CPU's block path.
#[test]
fn mlp_batch_matches_the_cpu() {
    let gpu = ok_or_skip!(gpu());
    mlp_batch::<f32>(&gpu);
    mlp_batch::<f64>(&gpu);
}

fn vpsde_fields<T: GpuReal>(gpu: &Arc<Gpu>) {
    let d = 3;
    let p = mlp_params(d, &[40, 40], Activation::Silu, 4, false);
    let mlp = Arc::new(Mlp::<T>::new(&p).unwrap());
    let net = Arc::new(GpuMlp::new(gpu, &mlp).unwrap());
    let rows = 200;
    let mut g = Rng(2);
    let x: Vec<T> = g.vec(rows * d, 1.0).into_iter().map(T::of).collect();
    let t: Vec<T> = g.range(rows, 1e-3, 1.0).into_iter().map(T::of).collect();
    for output in [ScoreOutput::Score, ScoreOutput::Noise] {
        let sde = VpSde {
            output,
            ..VpSde::default()
        };
        for dynamics in [VpDynamics::ReverseSde, VpDynamics::ProbabilityFlow] {
            let cpu = VpSdeField::new(mlp.clone(), sde, dynamics).unwrap();
            let mut want = vec![T::zero(); rows * d];
            let mut scratch = vec![T::zero(); cpu.block_scratch_len(rows)];
            cpu.eval_block(&t, &x, &mut want, &mut scratch).unwrap();
            let dev = GpuField::vpsde(net.clone(), sde, dynamics).unwrap();
            let mut got = vec![T::zero(); rows * d];
            dev.eval_block(&t, &x, &mut got).unwrap();
            assert_close(
                &format!("VP-SDE {output:?} {dynamics:?}"),
                &got,
                &want,
                tol::<T>(),
            );
            // A noise network at t = 0 (σ_0 = 0): the CPU's error, not a panic.
            if output == ScoreOutput::Noise {
                let t0 = vec![T::zero(); rows];
                let e = dev.eval_block(&t0, &x, &mut got).unwrap_err();
                let c = cpu
                    .eval_block(&t0, &x, &mut want, &mut scratch)
                    .unwrap_err();
                assert_eq!(e.to_string(), c.to_string());
            }
        }
    }
}

/// The VP-SDE fields over a score network, per-row times, both outputs and dynamics.
#[test]
fn vpsde_fields_match_the_cpu() {
    let gpu = ok_or_skip!(gpu());
    vpsde_fields::<f32>(&gpu);
    vpsde_fields::<f64>(&gpu);
}

fn otflow_params(d: usize, m: usize, n_th: usize, seed: u64) -> OtFlowParams {
    let mut sd = socflow_testkit::otflow_state_dict(d, m, n_th, seed);
    OtFlowParams::from_state_dict(d, m, n_th, (d + 1).min(10), &mut sd).unwrap()
}

fn otflow_batch<T: GpuReal>(gpu: &Arc<Gpu>) {
    for (d, m, n_th) in [(2, 32, 2), (5, 64, 3), (12, 48, 4)] {
        let cpu = OtFlow::<T>::new(&otflow_params(d, m, n_th, 9)).unwrap();
        let dev = GpuOtFlow::new(gpu, &cpu).unwrap();
        let rows = 300;
        let mut g = Rng(10);
        let x: Vec<T> = g.vec(rows * d, 1.0).into_iter().map(T::of).collect();
        let t: Vec<T> = g.range(rows, 0.0, 1.0).into_iter().map(T::of).collect();
        let (mut grad, mut phi, mut dt, mut lap) = (
            vec![T::zero(); rows * d],
            vec![T::zero(); rows],
            vec![T::zero(); rows],
            vec![T::zero(); rows],
        );
        let mut scratch = vec![T::zero(); cpu.grad_block_scratch_len(true)];
        cpu.grad_block(
            &t,
            &x,
            &mut grad,
            &mut phi,
            &mut dt,
            Some(&mut lap),
            &mut scratch,
        )
        .unwrap();
        let (mut g_grad, mut g_phi, mut g_dt, mut g_lap) = (
            vec![T::zero(); rows * d],
            vec![T::zero(); rows],
            vec![T::zero(); rows],
            vec![T::zero(); rows],
        );
        dev.grad_block(&t, &x, &mut g_grad, &mut g_phi, &mut g_dt, Some(&mut g_lap))
            .unwrap();
        let what = format!("OT-Flow d = {d}, m = {m}, nTh = {n_th}");
        assert_close(&format!("{what}: grad"), &g_grad, &grad, tol::<T>());
        assert_close(&format!("{what}: phi"), &g_phi, &phi, tol::<T>());
        assert_close(&format!("{what}: dt phi"), &g_dt, &dt, tol::<T>());
        assert_close(&format!("{what}: Laplacian"), &g_lap, &lap, tol::<T>());
        // Without the Laplacian, and as the field -grad.
        let (mut g2, mut p2, mut d2) = (
            vec![T::zero(); rows * d],
            vec![T::zero(); rows],
            vec![T::zero(); rows],
        );
        dev.grad_block(&t, &x, &mut g2, &mut p2, &mut d2, None)
            .unwrap();
        assert_bitwise(&format!("{what}: grad without the Laplacian"), &g2, &g_grad);
        let field = GpuField::potential(Arc::new(dev)).unwrap();
        let mut v = vec![T::zero(); rows * d];
        field.eval_block(&t, &x, &mut v).unwrap();
        let neg: Vec<T> = grad.iter().map(|g| -*g).collect();
        assert_close(&format!("{what}: field"), &v, &neg, tol::<T>());
    }
}

/// The OT-Flow potential's batch path (Φ, ∇Φ, ∂ₜΦ and the exact Laplacian) equals the
/// CPU's block path.
#[test]
fn otflow_batch_matches_the_cpu() {
    let gpu = ok_or_skip!(gpu());
    otflow_batch::<f32>(&gpu);
    otflow_batch::<f64>(&gpu);
}

fn otflow_sampling<T: GpuReal>(gpu: &Arc<Gpu>) {
    // On [0, 0.5]: a random potential's quadratic term grows samples like e^{λt}, and
    // rounding with them (on [0, 1] f32 differs from f64 by 4.5e-6 on the CPU alone).
    let model = Model::<T>::from_artifact(
        Artifact::otflow(
            otflow_params(3, 32, 3, 4),
            [0.0, 0.5],
            Provenance::default(),
        )
        .unwrap(),
    )
    .unwrap();
    for solver in [OdeSolver::Euler, OdeSolver::Rk4, OdeSolver::Dopri5] {
        let opts = SamplerOptions::ode(OdeOptions::fixed(solver, 8), 3);
        let (g, c) = both(gpu, &model, opts, 400, 0);
        assert_close(
            &format!("OT-Flow sampling, {}", solver.name()),
            &g,
            &c,
            tol::<T>(),
        );
    }
    let opts = SamplerOptions::ode(adaptive(), 3);
    let adaptive_tol = tol_for(&opts);
    let (g, c) = both(gpu, &model, opts, 400, 0);
    assert_close("OT-Flow sampling, adaptive Dopri5", &g, &c, adaptive_tol);
    let diffusion = Arc::new(ConstantDiffusion::new(3, T::of(0.2)));
    let opts = SamplerOptions::sde(SdeOptions::new(SdeScheme::EulerMaruyama, 20), diffusion, 3);
    let (g, c) = both(gpu, &model, opts, 400, 0);
    assert_close("OT-Flow sampling, Euler–Maruyama", &g, &c, tol::<T>());
}

/// An OT-Flow model sampled on the GPU (−∇ₓΦ from t1 to t0) gives the CPU's samples.
#[test]
fn otflow_sampling_matches_the_cpu() {
    let gpu = ok_or_skip!(gpu());
    otflow_sampling::<f32>(&gpu);
    otflow_sampling::<f64>(&gpu);
}

/// Adaptive Dopri5's failures are the CPU's: a row past `max_steps`.
#[test]
fn adaptive_failures_are_the_cpus_errors() {
    let gpu = ok_or_skip!(gpu());
    let model = velocity_model::<f64>(2, Activation::Silu, false);
    let mut o = OdeOptions::adaptive(1e-12, 1e-14);
    if let StepSize::Adaptive(a) = &mut o.step_size {
        a.max_steps = 3;
    }
    let opts = SamplerOptions::ode(o, 1);
    let c = cpu_sampler(&model, opts.clone()).sample(50, 0).unwrap_err();
    let g = GpuSampler::for_model(&gpu, &model, opts)
        .unwrap()
        .sample(50, 0)
        .unwrap_err();
    eprintln!("CPU: {c}\nGPU: {g}");
    assert!(matches!(g, Error::Integration(_)), "{g:?}");
    assert!(g.to_string().contains("more than 3 steps"), "{g}");
    assert!(c.to_string().contains("more than 3 steps"), "{c}");
}

/// Samples are keyed by their global index: device passes of any size and any split of
/// a batch into calls give the CPU's samples.
#[test]
fn passes_and_splits_give_the_same_samples() {
    let gpu = ok_or_skip!(gpu());
    let model = score_model::<f64>(2, false, ScoreOutput::Noise);
    let vp = model.vpsde().unwrap();
    let opts = vp.sampler_options(
        VpSampling::ReverseSde(SdeOptions::new(SdeScheme::EulerMaruyama, 30)),
        42,
    );
    let cpu = cpu_sampler(&model, opts.clone()).sample(250, 10).unwrap().x;
    let whole = GpuSampler::for_model(&gpu, &model, opts.clone()).unwrap();
    let passes = GpuSampler::for_model(&gpu, &model, opts.clone())
        .unwrap()
        .with_max_rows(33);
    assert_close("one pass", &whole.sample(250, 10).unwrap().x, &cpu, 1e-10);
    assert_close(
        "passes of 33 rows",
        &passes.sample(250, 10).unwrap().x,
        &cpu,
        1e-10,
    );
    let mut split = whole.sample(100, 10).unwrap().x;
    split.extend(whole.sample(150, 110).unwrap().x);
    assert_close("two calls", &split, &cpu, 1e-10);
    let mut buf = vec![0.0; 250 * 2];
    let stats = whole.sample_into(10, &mut buf).unwrap();
    assert_eq!(stats.rows, 250);
    assert_close("sample_into", &buf, &cpu, 1e-10);
    assert!(matches!(
        whole.sample_into(0, &mut [0.0; 3]),
        Err(Error::Length { .. })
    ));
    assert!(whole.sample(0, 0).unwrap().x.is_empty());
}

/// The GPU sampler rejects what the CPU sampler rejects, with the same errors, and
/// says what it does not do yet.
#[test]
fn invalid_options_are_the_cpus_errors() {
    let gpu = ok_or_skip!(gpu());
    let model = velocity_model::<f32>(2, Activation::Silu, false);
    let (t0, t1) = model.time_interval();
    let net = match model.network() {
        socflow_runtime::model::Network::Mlp(m) => Arc::new(GpuMlp::new(&gpu, m).unwrap()),
        _ => unreachable!("an MLP model"),
    };
    let field = GpuField::velocity(net).unwrap();
    let cpu_field = model.field().unwrap();
    let check = |opts: SamplerOptions<f32>, t_prior: f32, t_end: f32| {
        let c = Sampler::new(cpu_field.clone(), t_prior, t_end, opts.clone()).err();
        let g = GpuSampler::new(field.clone(), t_prior, t_end, opts).err();
        match (c, g) {
            (Some(c), Some(g)) => assert_eq!(c.to_string(), g.to_string()),
            (c, g) => panic!("CPU {c:?}, GPU {g:?}"),
        }
    };
    check(
        SamplerOptions::ode(OdeOptions::fixed(OdeSolver::Rk4, 0), 1),
        t1,
        t0,
    );
    check(
        SamplerOptions::ode(OdeOptions::fixed(OdeSolver::Rk4, 4), 1),
        f32::NAN,
        t0,
    );
    let mut adaptive = OdeOptions::adaptive(1e-4, 1e-6);
    adaptive.solver = OdeSolver::Rk4;
    check(SamplerOptions::ode(adaptive, 1), t1, t0);
    let sde = |steps, dim| {
        SamplerOptions::sde(
            SdeOptions::new(SdeScheme::EulerMaruyama, steps),
            Arc::new(ConstantDiffusion::new(dim, 0.5f32)),
            1,
        )
    };
    check(sde(0, 2), t1, t0);
    check(sde(4, 3), t1, t0);
    let mut with_logp = sde(4, 2);
    with_logp.log_density = true;
    check(with_logp, t1, t0);
    let mut bad_norm = SamplerOptions::ode(OdeOptions::fixed(OdeSolver::Rk4, 4), 1);
    bad_norm.normalization = Some(Normalization::new(vec![0.0; 3], vec![1.0; 3]).unwrap());
    check(bad_norm, t1, t0);
    // Not on the GPU yet: typed errors.
    let unsupported = |opts: SamplerOptions<f32>| {
        assert!(matches!(
            GpuSampler::new(field.clone(), t1, t0, opts),
            Err(Error::Unsupported(_))
        ));
    };
    let mut logp = SamplerOptions::ode(OdeOptions::fixed(OdeSolver::Rk4, 4), 1);
    logp.log_density = true;
    unsupported(logp);
    let mut traj = SamplerOptions::ode(OdeOptions::fixed(OdeSolver::Rk4, 4), 1);
    traj.trajectory = Some(SaveAt::Steps);
    unsupported(traj);
    let state_noise =
        DiagonalDiffusion::new(2, |_t: f32, x: &[f32], g: &mut [f32]| g.copy_from_slice(x));
    unsupported(SamplerOptions::sde(
        SdeOptions::new(SdeScheme::EulerMaruyama, 4),
        Arc::new(state_noise),
        1,
    ));
    // Sample indices beyond the generator's range: the CPU's limit error.
    let ok = SamplerOptions::ode(OdeOptions::fixed(OdeSolver::Euler, 1), 1);
    let c = Sampler::new(cpu_field.clone(), t1, t0, ok.clone()).unwrap();
    let g = GpuSampler::new(field.clone(), t1, t0, ok).unwrap();
    let first = socflow_runtime::brownian::MAX_SAMPLE - 1;
    let ce = c.sample(5, first).unwrap_err();
    let ge = g.sample(5, first).unwrap_err();
    assert!(matches!(ge, Error::Limit(_)), "{ge}");
    assert_eq!(ce.to_string(), ge.to_string());
}

/// No driver (this machine, or CI's): `Gpu::new` returns a clear error, not a panic.
/// With a GPU: an ordinal out of range is that error.
#[test]
fn missing_device_is_a_clear_error() {
    let count = Gpu::device_count().unwrap();
    let ordinal = if count == 0 { 0 } else { count };
    let err = Gpu::new(ordinal).unwrap_err();
    eprintln!("Gpu::new({ordinal}) with {count} devices: {err}");
    assert!(matches!(err, Error::Device(_)), "{err:?}");
    let msg = err.to_string();
    if count == 0 {
        assert!(
            msg.contains("no CUDA driver") || msg.contains("0 devices"),
            "{msg}"
        );
    } else {
        assert!(msg.contains("out of range"), "{msg}");
    }
}

/// NVRTC compiles every kernel in both precisions for the GPUs socflow targets (no
/// driver needed); skipped where libnvrtc is not found.
#[test]
fn nvrtc_compiles_every_kernel() {
    for arch in ["compute_80", "compute_90"] {
        let ptx = match compile_ptx(arch) {
            Ok(p) => p,
            Err(Error::Device(m)) if m.contains("not found") => {
                eprintln!("skipped: {m}");
                return;
            }
            Err(e) => panic!("{arch}: {e}"),
        };
        for k in KERNELS {
            for s in ["f32", "f64"] {
                let entry = format!(".entry {k}_{s}(");
                assert!(ptx.contains(&entry), "{arch}: no {entry} in the PTX");
            }
        }
        // --fmad=false: the normals' arithmetic has no contracted multiply-add in f64
        // except the activations' explicit fma() calls, which are in other kernels.
        let normals = ptx
            .split(".entry ")
            .find(|s| s.starts_with("normals_f64("))
            .expect("normals_f64 in the PTX");
        assert!(
            !normals.contains("fma.rn.f64"),
            "{arch}: contracted FMA in normals_f64"
        );
        for op in ["sqrt.rn.f64", "div.rn.f64", "mul.rn.f64"] {
            assert!(normals.contains(op), "{arch}: no IEEE {op} in normals_f64");
        }
        eprintln!("{arch}: {} bytes of PTX", ptx.len());
    }
}
