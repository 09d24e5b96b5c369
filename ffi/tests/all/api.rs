//! The C ABI called from Rust (the rlib): results equal the runtime's Rust API, the
//! control path does not allocate, handles fail safely (closed, forged, wrong kind,
//! destroyed while in use), errors are per thread, callbacks are honoured, score
//! models sample the reverse SDE and the probability-flow ODE of an exact Gaussian
//! score to its closed forms.

use crate::common;

use std::ffi::{c_void, CStr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use socflow::*;
use socflow_runtime::artifact::{Artifact, ControlMap, Provenance, StorageDtype};
use socflow_runtime::brownian::Brownian;
use socflow_runtime::controller::{Dynamics, Integrator, SimulateOptions};
use socflow_runtime::model::Model;
use socflow_runtime::nn::OtFlowParams;
use socflow_runtime::ode::{OdeOptions, OdeSolver};
use socflow_runtime::sampler::{Sampler, SamplerOptions};
use socflow_runtime::sde::{SdeOptions, SdeScheme};
use socflow_runtime::vpsde::VpSampling;
use socflow_runtime::Real;
use socflow_testkit::{count_allocs, Rng};

use socflow_status::*;

const D: usize = 6;
const CONTROLS: usize = 3;

/// The bytes of an OT-Flow model with a 3 × 6 control map.
fn model_bytes(seed: u64) -> Vec<u8> {
    let mut sd = socflow_testkit::otflow_state_dict(D, 16, 2, seed);
    let p = OtFlowParams::from_state_dict(D, 16, 2, D + 1, &mut sd).expect("parameters");
    let map = ControlMap::new(CONTROLS, D, Rng(seed + 1).vec_sym(CONTROLS * D, 1.0))
        .expect("control map");
    Artifact::otflow(p, [0.0, 1.0], Provenance::now("ffi api test"))
        .expect("artifact")
        .with_control_map(map)
        .expect("map")
        .to_bytes(StorageDtype::F64)
        .expect("bytes")
}

fn load(bytes: &[u8]) -> socflow_model {
    let mut m = socflow_model::default();
    // SAFETY: `bytes` is a live slice; `m` is a local.
    let s = unsafe { socflow_model_load_buffer(bytes.as_ptr(), bytes.len(), &mut m) };
    assert_eq!(s, SOCFLOW_OK, "{}", last_error());
    m
}

fn controller(m: socflow_model, precision: u32) -> socflow_controller {
    let mut c = socflow_controller::default();
    // SAFETY: `c` is a local.
    let s = unsafe { socflow_controller_create(m, precision, &mut c) };
    assert_eq!(s, SOCFLOW_OK, "{}", last_error());
    c
}

fn last_error() -> String {
    // SAFETY: the library returns a NUL-terminated string valid until the next
    // failed call on this thread.
    unsafe { CStr::from_ptr(socflow_last_error()) }
        .to_string_lossy()
        .into_owned()
}

fn control(c: socflow_controller, t: f64, x: &[f64], u: &mut [f64]) -> socflow_status {
    // SAFETY: slices with their lengths.
    unsafe { socflow_controller_control(c, t, x.as_ptr(), x.len(), u.as_mut_ptr(), u.len()) }
}

#[test]
fn controls_values_and_batches_equal_the_rust_api() {
    let bytes = model_bytes(3);
    let m = load(&bytes);
    let rust = Model::<f64>::from_bytes(&bytes).expect("model");
    let mut rc = rust.controller().expect("controller");
    let c64 = controller(m, SOCFLOW_PRECISION_F64);
    let c32 = controller(m, SOCFLOW_PRECISION_F32);
    let rc32 = Model::<f32>::from_bytes(&bytes)
        .expect("model")
        .controller();
    let mut rc32 = rc32.expect("controller");
    let mut g = Rng(11);
    let (mut dims_x, mut dims_u) = (0usize, 0usize);
    // SAFETY: locals.
    assert_eq!(
        unsafe { socflow_controller_dims(c64, &mut dims_x, &mut dims_u) },
        SOCFLOW_OK
    );
    assert_eq!((dims_x, dims_u), (D, CONTROLS));
    for _ in 0..20 {
        let t = g.uniform();
        let x = g.vec_sym(D, 2.0);
        let (mut u, mut want) = ([0.0; CONTROLS], [0.0; CONTROLS]);
        assert_eq!(control(c64, t, &x, &mut u), SOCFLOW_OK);
        rc.control(t, &x, &mut want).expect("rust control");
        assert_eq!(
            u, want,
            "f64 control through the C ABI differs from the Rust API"
        );
        let mut phi = 0.0;
        // SAFETY: locals.
        let s = unsafe { socflow_controller_value(c64, t, x.as_ptr(), D, &mut phi) };
        assert_eq!(s, SOCFLOW_OK);
        assert_eq!(phi, rc.value(t, &x).expect("value"));
        // Single precision: the same as the Rust API in f32, widened.
        let x32: Vec<f32> = x.iter().map(|v| *v as f32).collect();
        let mut want32 = [0f32; CONTROLS];
        rc32.control(t as f32, &x32, &mut want32)
            .expect("rust f32 control");
        assert_eq!(control(c32, t, &x, &mut u), SOCFLOW_OK);
        for (a, b) in u.iter().zip(want32) {
            assert_eq!(*a, f64::from(b));
        }
    }
    let n = 37;
    let xs = g.vec_sym(n * D, 1.0);
    let mut us = vec![0.0; n * CONTROLS];
    let mut want = vec![0.0; n * CONTROLS];
    // SAFETY: slices with their lengths.
    let s = unsafe {
        socflow_controller_control_batch(
            c64,
            0.25,
            xs.as_ptr(),
            xs.len(),
            us.as_mut_ptr(),
            us.len(),
        )
    };
    assert_eq!(s, SOCFLOW_OK, "{}", last_error());
    rc.control_batch(0.25, &xs, &mut want).expect("rust batch");
    assert_eq!(us, want);
    for h in [c64, c32] {
        assert_eq!(socflow_controller_destroy(h), SOCFLOW_OK);
    }
    assert_eq!(socflow_model_destroy(m), SOCFLOW_OK);
}

#[test]
fn control_does_not_allocate() {
    let m = load(&model_bytes(4));
    for precision in [SOCFLOW_PRECISION_F64, SOCFLOW_PRECISION_F32] {
        let c = controller(m, precision);
        let x = Rng(5).vec_sym(D, 1.0);
        let mut u = [0.0; CONTROLS];
        assert_eq!(control(c, 0.5, &x, &mut u), SOCFLOW_OK);
        let (statuses, allocs) = count_allocs(|| {
            (0..100)
                .map(|k| control(c, 0.01 * k as f64, &x, &mut u))
                .collect::<Vec<_>>()
                .len()
        });
        // The Vec of statuses allocates once (and may grow): count only the calls.
        let (_, baseline) = count_allocs(|| (0..100).map(|_| SOCFLOW_OK).collect::<Vec<_>>().len());
        assert_eq!(statuses, 100);
        assert_eq!(
            allocs, baseline,
            "socflow_controller_control allocated (precision {precision})"
        );
        assert_eq!(socflow_controller_destroy(c), SOCFLOW_OK);
    }
    assert_eq!(socflow_model_destroy(m), SOCFLOW_OK);
}

#[test]
fn bad_handles_are_errors_not_crashes() {
    let m = load(&model_bytes(5));
    let c = controller(m, SOCFLOW_PRECISION_F64);
    let x = [0.1; D];
    let mut u = [7.0; CONTROLS];
    // The null handle.
    assert_eq!(
        control(socflow_controller::default(), 0.0, &x, &mut u),
        SOCFLOW_ERROR_INVALID_HANDLE
    );
    assert!(last_error().contains("null handle"), "{}", last_error());
    // A forged id in a live slot's range, a wrong-kind id, and an id with no slot.
    for forged in [c.id ^ (1 << 40), m.id, (2 << 24) | 0xff_ffff, u64::MAX] {
        let h = socflow_controller { id: forged };
        assert_eq!(
            control(h, 0.0, &x, &mut u),
            SOCFLOW_ERROR_INVALID_HANDLE,
            "id {forged:#x}"
        );
    }
    let mut info = socflow_model_info::default();
    // SAFETY: a local.
    let s = unsafe { socflow_model_get_info(socflow_model { id: c.id }, &mut info) };
    assert_eq!(s, SOCFLOW_ERROR_INVALID_HANDLE);
    assert_eq!(u, [7.0; CONTROLS], "a failed call wrote the output");
    // Destroyed: every later use fails, a second destroy too; the null handle's is OK.
    assert_eq!(socflow_controller_destroy(c), SOCFLOW_OK);
    assert_eq!(control(c, 0.0, &x, &mut u), SOCFLOW_ERROR_INVALID_HANDLE);
    assert!(last_error().contains("closed"), "{}", last_error());
    assert_eq!(socflow_controller_destroy(c), SOCFLOW_ERROR_INVALID_HANDLE);
    assert_eq!(
        socflow_controller_destroy(socflow_controller::default()),
        SOCFLOW_OK
    );
    // A new object may reuse the slot, under a new id: the old id stays dead.
    let c2 = controller(m, SOCFLOW_PRECISION_F64);
    assert_ne!(c2.id, c.id);
    assert_eq!(control(c, 0.0, &x, &mut u), SOCFLOW_ERROR_INVALID_HANDLE);
    assert_eq!(control(c2, 0.0, &x, &mut u), SOCFLOW_OK);
    // A controller outlives its model.
    assert_eq!(socflow_model_destroy(m), SOCFLOW_OK);
    assert_eq!(control(c2, 0.0, &x, &mut u), SOCFLOW_OK);
    let mut c3 = socflow_controller { id: 99 };
    // SAFETY: a local.
    let s = unsafe { socflow_controller_create(m, SOCFLOW_PRECISION_F64, &mut c3) };
    assert_eq!(s, SOCFLOW_ERROR_INVALID_HANDLE);
    assert_eq!(
        c3,
        socflow_controller::default(),
        "a failed create left a handle"
    );
    assert_eq!(socflow_controller_destroy(c2), SOCFLOW_OK);
}

#[test]
fn bad_arguments_are_errors_with_messages() {
    let m = load(&model_bytes(6));
    let c = controller(m, SOCFLOW_PRECISION_F64);
    let x = [0.2; D];
    let mut u = [0.0; CONTROLS];
    assert_eq!(control(c, 0.0, &x[..D - 1], &mut u), SOCFLOW_ERROR_LENGTH);
    assert_eq!(control(c, 0.0, &x, &mut u[..1]), SOCFLOW_ERROR_LENGTH);
    assert_eq!(control(c, f64::NAN, &x, &mut u), SOCFLOW_ERROR_NON_FINITE);
    let mut bad = x;
    bad[2] = f64::INFINITY;
    assert_eq!(control(c, 0.0, &bad, &mut u), SOCFLOW_ERROR_NON_FINITE);
    // SAFETY: NULL pointers are what is tested; the library must not dereference them.
    unsafe {
        assert_eq!(
            socflow_controller_control(c, 0.0, std::ptr::null(), D, u.as_mut_ptr(), CONTROLS),
            SOCFLOW_ERROR_NULL_POINTER
        );
        assert_eq!(
            socflow_controller_control(c, 0.0, x.as_ptr(), D, std::ptr::null_mut(), CONTROLS),
            SOCFLOW_ERROR_NULL_POINTER
        );
        // Misaligned input.
        let raw = [0u8; 8 * (D + 1)];
        let p = raw.as_ptr().add(1).cast::<f64>();
        assert_eq!(
            socflow_controller_control(c, 0.0, p, D, u.as_mut_ptr(), CONTROLS),
            SOCFLOW_ERROR_INVALID_ARGUMENT
        );
        // Overlapping input and output.
        let mut both = [0.1; D];
        assert_eq!(
            socflow_controller_control(c, 0.0, both.as_ptr(), D, both.as_mut_ptr(), CONTROLS),
            SOCFLOW_ERROR_INVALID_ARGUMENT
        );
        assert_eq!(
            socflow_model_load(std::ptr::null(), &mut socflow_model::default()),
            SOCFLOW_ERROR_NULL_POINTER
        );
        assert_eq!(
            socflow_controller_create(m, SOCFLOW_PRECISION_F64, std::ptr::null_mut()),
            SOCFLOW_ERROR_NULL_POINTER
        );
    }
    assert_eq!(control(c, 0.0, &x, &mut u), SOCFLOW_OK);
    // Unknown precision, malformed and truncated models, a missing file.
    let mut c2 = socflow_controller::default();
    // SAFETY: a local.
    assert_eq!(
        unsafe { socflow_controller_create(m, 7, &mut c2) },
        SOCFLOW_ERROR_INVALID_ARGUMENT
    );
    let bytes = model_bytes(6);
    for cut in [0, 7, bytes.len() / 2, bytes.len() - 1] {
        let mut h = socflow_model { id: 1 };
        // SAFETY: a prefix of a live buffer.
        let s = unsafe { socflow_model_load_buffer(bytes.as_ptr(), cut, &mut h) };
        assert_eq!(
            s,
            SOCFLOW_ERROR_FORMAT,
            "truncated at {cut}: {}",
            last_error()
        );
        assert_eq!(h, socflow_model::default());
    }
    let mut h = socflow_model::default();
    // SAFETY: a NUL-terminated literal and a local.
    let s =
        unsafe { socflow_model_load(c"/nonexistent/socflow-model.safetensors".as_ptr(), &mut h) };
    assert_eq!(s, SOCFLOW_ERROR_IO);
    assert!(last_error().contains("nonexistent"), "{}", last_error());
    // Status names.
    // SAFETY: static strings.
    let name = |s: i32| {
        unsafe { CStr::from_ptr(socflow_status_name(s)) }
            .to_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(name(4), "SOCFLOW_ERROR_LENGTH");
    assert_eq!(name(-1), "SOCFLOW_UNKNOWN_STATUS");
    assert_eq!(name(13), "SOCFLOW_UNKNOWN_STATUS");
    assert_eq!(socflow_controller_destroy(c), SOCFLOW_OK);
    assert_eq!(socflow_model_destroy(m), SOCFLOW_OK);
}

#[test]
fn last_error_is_per_thread_and_kept_on_success() {
    let m = load(&model_bytes(7));
    let c = controller(m, SOCFLOW_PRECISION_F64);
    let mut u = [0.0; CONTROLS];
    assert_eq!(control(c, 0.0, &[0.0; 2], &mut u), SOCFLOW_ERROR_LENGTH);
    let message = last_error();
    assert!(
        message.contains("state") && message.contains("expected 6"),
        "{message}"
    );
    assert_eq!(control(c, 0.0, &[0.0; D], &mut u), SOCFLOW_OK);
    assert_eq!(
        last_error(),
        message,
        "a successful call changed the last error"
    );
    let other = std::thread::spawn(last_error).join().expect("thread");
    assert_eq!(other, "", "another thread sees this thread's error");
    assert_eq!(socflow_controller_destroy(c), SOCFLOW_OK);
    assert_eq!(socflow_model_destroy(m), SOCFLOW_OK);
}

#[test]
fn version_matches_the_crate() {
    // SAFETY: a static string.
    let v = unsafe { CStr::from_ptr(socflow_version()) }
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(v, env!("CARGO_PKG_VERSION"));
    let (mut a, mut b, mut c) = (9, 9, 9);
    // SAFETY: locals.
    assert_eq!(
        unsafe { socflow_version_numbers(&mut a, &mut b, &mut c) },
        SOCFLOW_OK
    );
    let want: Vec<u32> = env!("CARGO_PKG_VERSION")
        .split('.')
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(vec![a, b, c], want);
    assert_eq!(
        [
            SOCFLOW_VERSION_MAJOR,
            SOCFLOW_VERSION_MINOR,
            SOCFLOW_VERSION_PATCH
        ]
        .to_vec(),
        want,
        "the header's version constants are not the crate's version"
    );
}

/// One model shared by many threads, a controller per thread: every thread gets the
/// Rust API's controls.
#[test]
fn threads_share_a_model_with_a_controller_each() {
    let bytes = model_bytes(8);
    let m = load(&bytes);
    let mut rc = Model::<f64>::from_bytes(&bytes)
        .unwrap()
        .controller()
        .unwrap();
    let xs = Rng(9).vec_sym(64 * D, 1.5);
    let mut want = vec![0.0; 64 * CONTROLS];
    for (x, u) in xs.chunks(D).zip(want.chunks_mut(CONTROLS)) {
        rc.control(0.3, x, u).unwrap();
    }
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                let c = controller(m, SOCFLOW_PRECISION_F64);
                for _ in 0..50 {
                    for (x, w) in xs.chunks(D).zip(want.chunks(CONTROLS)) {
                        let mut u = [0.0; CONTROLS];
                        assert_eq!(control(c, 0.3, x, &mut u), SOCFLOW_OK);
                        assert_eq!(&u[..], w);
                    }
                }
                assert_eq!(socflow_controller_destroy(c), SOCFLOW_OK);
            });
        }
    });
    assert_eq!(socflow_model_destroy(m), SOCFLOW_OK);
}

/// Misuse across threads is reported, never a data race: two threads on one
/// controller get OK or BUSY; destroying a controller another thread is calling gives
/// BUSY until the calls stop, then the caller sees a closed handle.
#[test]
fn sharing_a_controller_is_busy_not_a_race() {
    let m = load(&model_bytes(10));
    let c = controller(m, SOCFLOW_PRECISION_F64);
    let x = [0.3; D];
    let mut want = [0.0; CONTROLS];
    assert_eq!(control(c, 0.1, &x, &mut want), SOCFLOW_OK);
    let busy = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                for _ in 0..20_000 {
                    let mut u = [0.0; CONTROLS];
                    match control(c, 0.1, &x, &mut u) {
                        SOCFLOW_OK => assert_eq!(u, want),
                        SOCFLOW_ERROR_BUSY => {
                            busy.fetch_add(1, Ordering::Relaxed);
                        }
                        other => panic!("unexpected {other:?}: {}", last_error()),
                    }
                }
            });
        }
    });
    println!(
        "{} of 40000 calls found the controller busy",
        busy.load(Ordering::Relaxed)
    );
    let stop = AtomicBool::new(false);
    let closed_seen = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                let mut u = [0.0; CONTROLS];
                match control(c, 0.1, &x, &mut u) {
                    SOCFLOW_OK => assert_eq!(u, want),
                    SOCFLOW_ERROR_BUSY => {}
                    SOCFLOW_ERROR_INVALID_HANDLE => {
                        closed_seen.store(true, Ordering::SeqCst);
                        break;
                    }
                    other => panic!("unexpected {other:?}: {}", last_error()),
                }
            }
        });
        let mut attempts = 0;
        loop {
            attempts += 1;
            match socflow_controller_destroy(c) {
                SOCFLOW_OK => break,
                SOCFLOW_ERROR_BUSY => std::thread::yield_now(),
                other => panic!("destroy: unexpected {other:?}: {}", last_error()),
            }
        }
        println!("destroyed after {attempts} attempts");
        // Give the caller thread time to see the closed handle, then stop it.
        for _ in 0..1000 {
            if closed_seen.load(Ordering::SeqCst) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        stop.store(true, Ordering::SeqCst);
    });
    assert!(
        closed_seen.load(Ordering::SeqCst),
        "the caller never saw the closed handle"
    );
    assert_eq!(socflow_model_destroy(m), SOCFLOW_OK);
}

fn sampler(m: socflow_model, o: &socflow_sampler_options) -> socflow_sampler {
    let mut s = socflow_sampler::default();
    // SAFETY: locals.
    let st = unsafe { socflow_sampler_create(m, o, &mut s) };
    assert_eq!(st, SOCFLOW_OK, "{}", last_error());
    s
}

fn sample(s: socflow_sampler, first: u64, x: &mut [f64], ld: Option<&mut [f64]>) -> socflow_status {
    let (p, n) = match ld {
        Some(l) => (l.as_mut_ptr(), l.len()),
        None => (std::ptr::null_mut(), 0),
    };
    // SAFETY: slices with their lengths (or NULL).
    unsafe { socflow_sampler_sample(s, first, x.as_mut_ptr(), x.len(), p, n) }
}

#[test]
fn samples_equal_the_rust_api_for_any_split_and_thread_count() {
    let bytes = model_bytes(12);
    let m = load(&bytes);
    let mut o = socflow_sampler_options::default();
    // SAFETY: a local.
    assert_eq!(
        unsafe { socflow_sampler_options_default(&mut o) },
        SOCFLOW_OK
    );
    o.seed = 17;
    o.steps = 8;
    o.log_density = 1;
    let s = sampler(m, &o);
    let n = 50;
    let (mut x, mut ld) = (vec![0.0; n * D], vec![0.0; n]);
    assert_eq!(
        sample(s, 100, &mut x, Some(&mut ld)),
        SOCFLOW_OK,
        "{}",
        last_error()
    );
    // The Rust API with the same options.
    let rust = Model::<f64>::from_bytes(&bytes).unwrap();
    let mut so = SamplerOptions::ode(
        OdeOptions::fixed(socflow_runtime::ode::OdeSolver::Rk4, 8),
        17,
    );
    so.log_density = true;
    let (t0, t1) = rust.time_interval();
    let want = Sampler::new(rust.field().unwrap(), t1, t0, so)
        .unwrap()
        .sample(n, 100)
        .unwrap();
    assert_eq!(x, want.x);
    assert_eq!(Some(ld.clone()), want.log_density);
    // Two calls over consecutive ranges, and a sampler with its own 1-thread pool.
    o.threads = 1;
    let s1 = sampler(m, &o);
    let (mut a, mut b) = (vec![0.0; 20 * D], vec![0.0; 30 * D]);
    assert_eq!(sample(s1, 100, &mut a, None), SOCFLOW_OK);
    assert_eq!(sample(s1, 120, &mut b, None), SOCFLOW_OK);
    a.extend_from_slice(&b);
    assert_eq!(a, x);
    // Errors: ragged buffer, log-densities not enabled, wrong log-density length.
    assert_eq!(sample(s1, 0, &mut x[..D + 1], None), SOCFLOW_ERROR_LENGTH);
    let mut few = vec![0.0; 3];
    assert_eq!(sample(s, 0, &mut x, Some(&mut few)), SOCFLOW_ERROR_LENGTH);
    let s2 = sampler(
        m,
        &socflow_sampler_options {
            log_density: 0,
            ..o
        },
    );
    assert_eq!(
        sample(s2, 0, &mut x, Some(&mut ld)),
        SOCFLOW_ERROR_INVALID_ARGUMENT
    );
    // Bad options.
    let mut bad = o;
    bad.solver = 42;
    let mut h = socflow_sampler::default();
    // SAFETY: locals.
    unsafe {
        assert_eq!(
            socflow_sampler_create(m, &bad, &mut h),
            SOCFLOW_ERROR_INVALID_ARGUMENT
        );
        bad = o;
        bad.steps = 0;
        assert_eq!(
            socflow_sampler_create(m, &bad, &mut h),
            SOCFLOW_ERROR_INVALID_ARGUMENT
        );
        bad = o;
        bad.solver = SOCFLOW_SOLVER_DOPRI5;
        bad.rtol = -1.0;
        assert_eq!(
            socflow_sampler_create(m, &bad, &mut h),
            SOCFLOW_ERROR_INVALID_ARGUMENT
        );
    }
    for h in [s, s1, s2] {
        assert_eq!(socflow_sampler_destroy(h), SOCFLOW_OK);
    }
    assert_eq!(socflow_model_destroy(m), SOCFLOW_OK);
}

/// The runtime's samples (and log-densities) of the score model in `bytes` drawn the
/// way `o` asks the C ABI to: `VpSdeModel::sampler` with the probability-flow ODE
/// for an ODE solver, the reverse SDE for an SDE solver; widened to f64.
fn rust_score_samples<T: Real>(
    bytes: &[u8],
    o: &socflow_sampler_options,
    n: usize,
    first: u64,
) -> (Vec<f64>, Option<Vec<f64>>) {
    let vp = Model::<T>::from_bytes(bytes)
        .expect("model")
        .vpsde()
        .expect("a score model");
    let how = match o.solver {
        SOCFLOW_SOLVER_EULER => {
            VpSampling::ProbabilityFlow(OdeOptions::fixed(OdeSolver::Euler, o.steps))
        }
        SOCFLOW_SOLVER_HEUN => {
            VpSampling::ProbabilityFlow(OdeOptions::fixed(OdeSolver::Heun, o.steps))
        }
        SOCFLOW_SOLVER_RK4 => {
            VpSampling::ProbabilityFlow(OdeOptions::fixed(OdeSolver::Rk4, o.steps))
        }
        SOCFLOW_SOLVER_DOPRI5 => {
            VpSampling::ProbabilityFlow(OdeOptions::adaptive(T::of(o.rtol), T::of(o.atol)))
        }
        SOCFLOW_SOLVER_EULER_MARUYAMA => {
            VpSampling::ReverseSde(SdeOptions::new(SdeScheme::EulerMaruyama, o.steps))
        }
        SOCFLOW_SOLVER_STOCHASTIC_HEUN => {
            VpSampling::ReverseSde(SdeOptions::new(SdeScheme::StochasticHeun, o.steps))
        }
        other => panic!("no solver {other}"),
    };
    let mut so = vp.sampler_options(how, o.seed);
    so.log_density = o.log_density != 0;
    let s = vp
        .sampler(so)
        .expect("sampler")
        .sample(n, first)
        .expect("samples");
    let wide = |v: Vec<T>| v.into_iter().map(|x| x.f64()).collect::<Vec<f64>>();
    (wide(s.x), s.log_density.map(wide))
}

fn create_status(m: socflow_model, o: &socflow_sampler_options) -> socflow_status {
    let mut h = socflow_sampler {
        id: 0x0bad_c0de_0bad_c0de,
    };
    // SAFETY: locals.
    let s = unsafe { socflow_sampler_create(m, o, &mut h) };
    assert_eq!(
        h.id, 0,
        "a failed socflow_sampler_create leaves the null handle"
    );
    s
}

/// A score model through the C ABI, every solver (the probability-flow ODE by
/// Euler, Heun, RK4 and Dopri5 with log-densities; the reverse SDE by Euler–Maruyama
/// and stochastic Heun), in f64 and f32: the samples and log-densities equal the
/// runtime's `VpSdeModel` sampler bit for bit, in one call and split into two calls
/// on a sampler with its own pool of 3 threads (the reverse SDE's increments are
/// keyed by seed, sample and step, not by thread or call).
#[test]
fn score_samples_equal_the_rust_api_for_any_split_and_thread_count() {
    const SD: usize = 3;
    let bytes = common::score_model(SD, 31)
        .to_bytes(StorageDtype::F64)
        .expect("bytes");
    let m = load(&bytes);
    let mut info = socflow_model_info::default();
    // SAFETY: a local.
    assert_eq!(unsafe { socflow_model_get_info(m, &mut info) }, SOCFLOW_OK);
    assert_eq!(
        (
            info.kind,
            info.state_dim,
            info.control_dim,
            info.t0,
            info.t1
        ),
        (SOCFLOW_MODEL_SCORE, SD, 0, 0.0, 1.0)
    );
    let (n, first, split) = (40, 7, 15);
    let cases = [
        (SOCFLOW_SOLVER_EULER, 24, true),
        (SOCFLOW_SOLVER_HEUN, 12, true),
        (SOCFLOW_SOLVER_RK4, 16, true),
        (SOCFLOW_SOLVER_DOPRI5, 0, true),
        (SOCFLOW_SOLVER_EULER_MARUYAMA, 40, false),
        (SOCFLOW_SOLVER_STOCHASTIC_HEUN, 20, false),
    ];
    let mut firsts = Vec::new();
    for precision in [SOCFLOW_PRECISION_F64, SOCFLOW_PRECISION_F32] {
        for (solver, steps, log_density) in cases {
            let o = socflow_sampler_options {
                solver,
                steps,
                rtol: 1e-5,
                atol: 1e-5,
                seed: 23,
                precision,
                log_density: u32::from(log_density),
                threads: 0,
            };
            let what = format!("solver {solver}, precision {precision}");
            let (want_x, want_ld) = if precision == SOCFLOW_PRECISION_F64 {
                rust_score_samples::<f64>(&bytes, &o, n, first)
            } else {
                rust_score_samples::<f32>(&bytes, &o, n, first)
            };
            assert_eq!(want_ld.is_some(), log_density);
            assert!(want_x.iter().all(|v| v.is_finite()), "{what}");
            let s = sampler(m, &o);
            let mut dim = 0;
            // SAFETY: a local.
            assert_eq!(unsafe { socflow_sampler_dim(s, &mut dim) }, SOCFLOW_OK);
            assert_eq!(dim, SD);
            let (mut x, mut ld) = (vec![0.0; n * SD], vec![0.0; n]);
            let st = sample(s, first, &mut x, log_density.then_some(&mut ld[..]));
            assert_eq!(st, SOCFLOW_OK, "{what}: {}", last_error());
            assert_eq!(x, want_x, "{what}: samples, one call");
            if let Some(l) = &want_ld {
                assert_eq!(&ld, l, "{what}: log-densities, one call");
            }
            // Two calls over consecutive ranges on 3 threads of the sampler's own.
            let s3 = sampler(m, &socflow_sampler_options { threads: 3, ..o });
            let (mut a, mut b) = (vec![0.0; split * SD], vec![0.0; (n - split) * SD]);
            let (mut la, mut lb) = (vec![0.0; split], vec![0.0; n - split]);
            let st = sample(s3, first, &mut a, log_density.then_some(&mut la[..]));
            assert_eq!(st, SOCFLOW_OK, "{what}: {}", last_error());
            let st = sample(
                s3,
                first + split as u64,
                &mut b,
                log_density.then_some(&mut lb[..]),
            );
            assert_eq!(st, SOCFLOW_OK, "{what}: {}", last_error());
            a.extend_from_slice(&b);
            la.extend_from_slice(&lb);
            assert_eq!(a, want_x, "{what}: samples, two calls on 3 threads");
            if let Some(l) = &want_ld {
                assert_eq!(&la, l, "{what}: log-densities, two calls on 3 threads");
            }
            for h in [s, s3] {
                assert_eq!(socflow_sampler_destroy(h), SOCFLOW_OK);
            }
            firsts.push(x[0]);
        }
    }
    // The solver is honoured: the six ways give six different first samples (in each
    // precision).
    for p in firsts.chunks(cases.len()) {
        for (i, a) in p.iter().enumerate() {
            assert!(
                p[i + 1..].iter().all(|b| b != a),
                "two solvers drew the same first sample: {p:?}"
            );
        }
    }
    assert_eq!(socflow_model_destroy(m), SOCFLOW_OK);
}

/// SDE solvers need a score model and draw no log-densities; each misuse is an
/// invalid argument whose message says what to do, and leaves the null handle.
#[test]
fn sde_solvers_need_a_score_model_and_no_log_density() {
    let score_bytes = common::score_model(2, 5)
        .to_bytes(StorageDtype::F64)
        .expect("bytes");
    let (score, flow) = (load(&score_bytes), load(&model_bytes(12)));
    let base = socflow_sampler_options {
        steps: 10,
        ..socflow_sampler_options::default()
    };
    for precision in [SOCFLOW_PRECISION_F64, SOCFLOW_PRECISION_F32] {
        for solver in [
            SOCFLOW_SOLVER_EULER_MARUYAMA,
            SOCFLOW_SOLVER_STOCHASTIC_HEUN,
        ] {
            let o = socflow_sampler_options {
                solver,
                precision,
                ..base
            };
            // A flow model has no reverse SDE.
            assert_eq!(create_status(flow, &o), SOCFLOW_ERROR_INVALID_ARGUMENT);
            let e = last_error();
            assert!(
                e.contains("score (diffusion) model") && e.contains("potential model is a flow"),
                "{e}"
            );
            // The reverse SDE has no log-density.
            let with_ld = socflow_sampler_options {
                log_density: 1,
                ..o
            };
            assert_eq!(
                create_status(score, &with_ld),
                SOCFLOW_ERROR_INVALID_ARGUMENT
            );
            let e = last_error();
            assert!(
                e.contains("log_density needs an ODE solver")
                    && e.contains("reverse SDE")
                    && e.contains("probability-flow"),
                "{e}"
            );
            // Zero steps.
            let zero = socflow_sampler_options { steps: 0, ..o };
            assert_eq!(create_status(score, &zero), SOCFLOW_ERROR_INVALID_ARGUMENT);
            assert!(last_error().contains("steps = 0"), "{}", last_error());
            // A reverse-SDE sampler refuses a log-density buffer when sampling.
            let s = sampler(score, &o);
            let (mut x, mut ld) = (vec![0.0; 4 * 2], vec![0.0; 4]);
            assert_eq!(
                sample(s, 0, &mut x, Some(&mut ld)),
                SOCFLOW_ERROR_INVALID_ARGUMENT
            );
            assert!(last_error().contains("log_density"), "{}", last_error());
            assert_eq!(sample(s, 0, &mut x, None), SOCFLOW_OK);
            assert!(x.iter().all(|v| v.is_finite() && *v != 0.0), "{x:?}");
            assert_eq!(socflow_sampler_destroy(s), SOCFLOW_OK);
        }
    }
    // Past the last solver.
    let o = socflow_sampler_options {
        solver: SOCFLOW_SOLVER_STOCHASTIC_HEUN + 1,
        ..base
    };
    for m in [score, flow] {
        assert_eq!(create_status(m, &o), SOCFLOW_ERROR_INVALID_ARGUMENT);
        let e = last_error();
        assert!(
            e.contains("unknown solver 6") && e.contains("_EULER_MARUYAMA"),
            "{e}"
        );
    }
    for m in [score, flow] {
        assert_eq!(socflow_model_destroy(m), SOCFLOW_OK);
    }
}

/// Mean and unbiased variance of coordinate `j` of `rows` (model coordinates).
fn moments(rows: &[Vec<f64>], j: usize) -> (f64, f64) {
    let n = rows.len() as f64;
    let mean = rows.iter().map(|r| r[j]).sum::<f64>() / n;
    let var = rows.iter().map(|r| (r[j] - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var)
}

/// Through the C ABI, a score model whose network is the exact score of Gaussian
/// data N(m, I) (model coordinates; common::GaussianScoreModel) under β = 10:
///
/// - the reverse SDE's samples (n = 20000, 200 steps, drawn in two calls on a pool
///   of 2) have the moments of the discrete scheme's exact recursion (Euler–Maruyama
///   and stochastic Heun) within 4 standard errors, and so, up to the scheme's bias,
///   those of the data law at ε: mean α_ε m, variance α_ε² + σ_ε² = 1, i.e.
///   N(mean + std ⊙ α_ε m, diag(std²)) in data coordinates;
/// - the probability-flow ODE (RK4, 64 steps; Dopri5 at 1e-10) maps each prior draw
///   exactly (a translation by m(α_ε − α₁)) and gives the exact log-density, both to
///   1e-6.
#[test]
fn score_sampler_draws_the_closed_forms_of_an_exact_gaussian_score() {
    let g = common::GaussianScoreModel::new(vec![1.5, -1.0], 10.0, vec![0.5, -2.0], vec![2.0, 0.5]);
    let d = g.dim();
    let bytes = g.artifact.to_bytes(StorageDtype::F64).expect("bytes");
    let m = load(&bytes);
    let (n, steps) = (20_000, 200);
    let alpha_eps = g.sde.alpha(g.sde.eps);
    let (mean_c, var_c) = g.reverse_sde_moments();
    for (j, mc) in mean_c.iter().enumerate() {
        // The continuous reverse SDE lands on the data law at ε up to the prior's
        // mismatch α₁ = e^{-5}.
        assert!((mc - alpha_eps * g.m[j]).abs() < 1e-4, "{mean_c:?}");
    }
    for (solver, heun) in [
        (SOCFLOW_SOLVER_EULER_MARUYAMA, false),
        (SOCFLOW_SOLVER_STOCHASTIC_HEUN, true),
    ] {
        let o = socflow_sampler_options {
            solver,
            steps,
            seed: 2025,
            threads: 2,
            ..socflow_sampler_options::default()
        };
        let s = sampler(m, &o);
        let mut x = vec![0.0; n * d];
        let (a, b) = x.split_at_mut(12_000 * d);
        assert_eq!(sample(s, 0, a, None), SOCFLOW_OK, "{}", last_error());
        assert_eq!(sample(s, 12_000, b, None), SOCFLOW_OK, "{}", last_error());
        assert_eq!(socflow_sampler_destroy(s), SOCFLOW_OK);
        let rows: Vec<Vec<f64>> = x.chunks_exact(d).map(|r| g.to_model(r)).collect();
        let (mean_d, var_d) = g.scheme_moments(heun, steps);
        let se_var = var_d * (2.0 / (n - 1) as f64).sqrt();
        let se_mu = (var_d / n as f64).sqrt();
        for j in 0..d {
            let (mu, var) = moments(&rows, j);
            println!(
                "solver {solver}, coordinate {j}: mean {mu:.5} (scheme {:.5}, data {:.5}), \
                 variance {var:.5} (scheme {var_d:.5}, data {var_c})",
                mean_d[j], mean_c[j]
            );
            assert!(
                (mu - mean_d[j]).abs() < 4.0 * se_mu,
                "solver {solver}, coordinate {j}: mean {mu} vs the scheme's {}",
                mean_d[j]
            );
            assert!(
                (var - var_d).abs() < 4.0 * se_var,
                "solver {solver}, coordinate {j}: variance {var} vs the scheme's {var_d}"
            );
            let (bias_mu, bias_var) = ((mean_d[j] - mean_c[j]).abs(), (var_d - var_c).abs());
            assert!(bias_mu < 0.02 && bias_var < 0.02, "{bias_mu} {bias_var}");
            assert!((mu - mean_c[j]).abs() < 4.0 * se_mu + bias_mu);
            assert!((var - var_c).abs() < 4.0 * se_var + bias_var);
        }
    }

    // The probability-flow ODE: the exact map of every prior draw, and its density.
    let shift = g.flow_shift();
    let log_det: f64 = g.normalization.std.iter().map(|s| s.ln()).sum();
    for o in [
        socflow_sampler_options {
            solver: SOCFLOW_SOLVER_RK4,
            steps: 64,
            ..socflow_sampler_options::default()
        },
        socflow_sampler_options {
            solver: SOCFLOW_SOLVER_DOPRI5,
            rtol: 1e-10,
            atol: 1e-10,
            ..socflow_sampler_options::default()
        },
    ] {
        let o = socflow_sampler_options {
            seed: 9,
            log_density: 1,
            ..o
        };
        let n = 500;
        let s = sampler(m, &o);
        let (mut x, mut ld) = (vec![0.0; n * d], vec![0.0; n]);
        assert_eq!(sample(s, 0, &mut x, Some(&mut ld)), SOCFLOW_OK);
        assert_eq!(socflow_sampler_destroy(s), SOCFLOW_OK);
        let prior = Brownian::new(o.seed);
        let (mut ex, mut el) = (0.0f64, 0.0f64);
        for i in 0..n {
            let mut z = vec![0.0; d];
            prior.prior_normals(i as u64, &mut z).expect("prior draw");
            let row = &x[i * d..(i + 1) * d];
            for j in 0..d {
                let want = g.normalization.mean[j] + g.normalization.std[j] * (z[j] + shift[j]);
                ex = ex.max((row[j] - want).abs());
            }
            let want_ld = -0.5 * d as f64 * 1.837_877_066_409_345_3
                - 0.5 * z.iter().map(|v| v * v).sum::<f64>()
                - log_det;
            el = el.max((ld[i] - want_ld).abs());
            el = el.max((ld[i] - g.flow_log_density(row)).abs());
        }
        println!(
            "probability flow, solver {}: largest state error {ex:e}, log-density error {el:e}",
            o.solver
        );
        assert!(ex < 1e-6 && el < 1e-6, "solver {}: {ex:e} {el:e}", o.solver);
    }
    assert_eq!(socflow_model_destroy(m), SOCFLOW_OK);
}

/// dz = (A z + B u) dt + σ dW with cost ½|u|² + ½|z|² running and |z|² terminal, as C
/// callbacks and as Rust [`Dynamics`].
struct Linear {
    a: Vec<f64>,
    b: Vec<f64>,
    calls: AtomicUsize,
    fail_after: usize,
}

impl Linear {
    fn new(fail_after: usize) -> Self {
        let mut g = Rng(21);
        Linear {
            a: g.vec_sym(D * D, 0.3),
            b: g.vec_sym(D * CONTROLS, 1.0),
            calls: AtomicUsize::new(0),
            fail_after,
        }
    }
}

impl Dynamics<f64> for Linear {
    fn state_dim(&self) -> usize {
        D
    }
    fn control_dim(&self) -> usize {
        CONTROLS
    }
    fn drift(&self, _s: f64, z: &[f64], u: &[f64], out: &mut [f64]) -> socflow_runtime::Result<()> {
        for (i, o) in out.iter_mut().enumerate() {
            *o = (0..D).map(|j| self.a[i * D + j] * z[j]).sum::<f64>()
                + (0..CONTROLS)
                    .map(|j| self.b[i * CONTROLS + j] * u[j])
                    .sum::<f64>();
        }
        Ok(())
    }
    fn running_cost(&self, _s: f64, z: &[f64], u: &[f64]) -> socflow_runtime::Result<f64> {
        Ok(0.5 * u.iter().map(|v| v * v).sum::<f64>() + 0.5 * z.iter().map(|v| v * v).sum::<f64>())
    }
    fn terminal_cost(&self, z: &[f64]) -> socflow_runtime::Result<f64> {
        Ok(z.iter().map(|v| v * v).sum())
    }
}

unsafe extern "C" fn drift(
    user: *mut c_void,
    t: f64,
    x: *const f64,
    u: *const f64,
    out: *mut f64,
) -> i32 {
    // SAFETY: `user` is the `Linear` the test passes; the library passes buffers of
    // state_dim, control_dim and state_dim doubles.
    let (l, x, u, out) = unsafe {
        (
            &*(user as *const Linear),
            std::slice::from_raw_parts(x, D),
            std::slice::from_raw_parts(u, CONTROLS),
            std::slice::from_raw_parts_mut(out, D),
        )
    };
    if l.calls.fetch_add(1, Ordering::SeqCst) >= l.fail_after {
        return -3;
    }
    l.drift(t, x, u, out).map_or(1, |_| 0)
}

unsafe extern "C" fn running(
    user: *mut c_void,
    t: f64,
    x: *const f64,
    u: *const f64,
    out: *mut f64,
) -> i32 {
    // SAFETY: as in `drift`; `out` is one double.
    unsafe {
        let l = &*(user as *const Linear);
        *out = l
            .running_cost(
                t,
                std::slice::from_raw_parts(x, D),
                std::slice::from_raw_parts(u, CONTROLS),
            )
            .unwrap();
    }
    0
}

unsafe extern "C" fn terminal(user: *mut c_void, x: *const f64, out: *mut f64) -> i32 {
    // SAFETY: as in `drift`; `out` is one double.
    unsafe {
        let l = &*(user as *const Linear);
        *out = l.terminal_cost(std::slice::from_raw_parts(x, D)).unwrap();
    }
    0
}

#[test]
fn simulate_with_callbacks_equals_the_rust_api() {
    let bytes = model_bytes(14);
    let m = load(&bytes);
    let c = controller(m, SOCFLOW_PRECISION_F64);
    let rust = Model::<f64>::from_bytes(&bytes)
        .unwrap()
        .controller()
        .unwrap();
    let linear = Arc::new(Linear::new(usize::MAX));
    let x0 = Rng(2).vec_sym(D, 1.0);
    let (paths, steps) = (16, 25);
    let opts = socflow_simulate_options {
        x0: x0.as_ptr(),
        x0_len: D,
        t0: 0.0,
        t1: 1.0,
        steps,
        sigma: 0.2,
        paths,
        seed: 5,
        threads: 0,
    };
    let dynamics = socflow_dynamics {
        state_dim: D,
        control_dim: CONTROLS,
        drift: Some(drift),
        running_cost: Some(running),
        terminal_cost: Some(terminal),
        user: Arc::as_ptr(&linear) as *mut c_void,
    };
    let mut finals = vec![0.0; paths * D];
    let mut costs = vec![0.0; paths];
    let mut traj = vec![0.0; paths * (steps + 1) * D];
    let run = |o: &socflow_simulate_options,
               dy: &socflow_dynamics,
               f: &mut [f64],
               c_: &mut [f64],
               tr: &mut [f64]| {
        // SAFETY: every buffer with its length; `dy.user` outlives the call.
        unsafe {
            socflow_controller_simulate(
                c,
                o,
                dy,
                f.as_mut_ptr(),
                f.len(),
                c_.as_mut_ptr(),
                c_.len(),
                tr.as_mut_ptr(),
                tr.len(),
            )
        }
    };
    assert_eq!(
        run(&opts, &dynamics, &mut finals, &mut costs, &mut traj),
        SOCFLOW_OK,
        "{}",
        last_error()
    );
    let want = rust
        .simulate(
            &*linear,
            &SimulateOptions {
                x0: x0.clone(),
                t0: 0.0,
                t1: 1.0,
                steps,
                sigma: 0.2,
                paths,
                seed: 5,
                keep_trajectories: true,
            },
        )
        .unwrap();
    assert_eq!(finals, want.finals);
    let total: Vec<f64> = want
        .running_cost
        .iter()
        .zip(&want.terminal_cost)
        .map(|(a, b)| a + b)
        .collect();
    assert_eq!(costs, total);
    assert_eq!(Some(traj.clone()), want.trajectories);
    // NULL dynamics: dz = u dt + σ dW needs one control per state (this map has 3).
    // SAFETY: as above, with NULL dynamics and optional outputs.
    let s = unsafe {
        socflow_controller_simulate(
            c,
            &opts,
            std::ptr::null(),
            finals.as_mut_ptr(),
            finals.len(),
            std::ptr::null_mut(),
            0,
            std::ptr::null_mut(),
            0,
        )
    };
    assert_eq!(s, SOCFLOW_ERROR_INVALID_ARGUMENT);
    // A failing callback stops the roll-out; outputs stay as they were.
    let failing = Arc::new(Linear::new(40));
    let dy = socflow_dynamics {
        user: Arc::as_ptr(&failing) as *mut c_void,
        ..dynamics
    };
    let before = finals.clone();
    assert_eq!(
        run(&opts, &dy, &mut finals, &mut costs, &mut traj),
        SOCFLOW_ERROR_CALLBACK
    );
    assert!(
        last_error().contains("drift") && last_error().contains("-3"),
        "{}",
        last_error()
    );
    assert_eq!(finals, before);
    // Missing drift, wrong dimensions, bad options, wrong buffer lengths.
    let no_drift = socflow_dynamics {
        drift: None,
        ..dynamics
    };
    assert_eq!(
        run(&opts, &no_drift, &mut finals, &mut costs, &mut traj),
        SOCFLOW_ERROR_NULL_POINTER
    );
    let wrong_dim = socflow_dynamics {
        control_dim: D,
        ..dynamics
    };
    assert_eq!(
        run(&opts, &wrong_dim, &mut finals, &mut costs, &mut traj),
        SOCFLOW_ERROR_LENGTH
    );
    for (bad, status) in [
        (
            socflow_simulate_options { t1: 0.0, ..opts },
            SOCFLOW_ERROR_INVALID_ARGUMENT,
        ),
        (
            socflow_simulate_options {
                sigma: -1.0,
                ..opts
            },
            SOCFLOW_ERROR_INVALID_ARGUMENT,
        ),
        (
            socflow_simulate_options { steps: 0, ..opts },
            SOCFLOW_ERROR_LENGTH,
        ),
        (
            socflow_simulate_options {
                x0_len: D - 1,
                ..opts
            },
            SOCFLOW_ERROR_LENGTH,
        ),
        (
            socflow_simulate_options {
                x0: std::ptr::null(),
                ..opts
            },
            SOCFLOW_ERROR_NULL_POINTER,
        ),
        (
            socflow_simulate_options {
                paths: usize::MAX / 2,
                ..opts
            },
            SOCFLOW_ERROR_INVALID_ARGUMENT,
        ),
    ] {
        let got = run(&bad, &dynamics, &mut finals, &mut costs, &mut traj);
        assert_eq!(got, status, "{bad:?}: {}", last_error());
    }
    assert_eq!(
        run(&opts, &dynamics, &mut finals[..D], &mut costs, &mut traj),
        SOCFLOW_ERROR_LENGTH
    );
    assert_eq!(socflow_controller_destroy(c), SOCFLOW_OK);
    assert_eq!(socflow_model_destroy(m), SOCFLOW_OK);
}

#[test]
fn simulate_without_dynamics_rolls_out_the_integrator() {
    // No control map: u = −∇Φ, one control per state.
    let mut sd = socflow_testkit::otflow_state_dict(D, 8, 2, 30);
    let p = OtFlowParams::from_state_dict(D, 8, 2, D + 1, &mut sd).unwrap();
    let art = Artifact::otflow(p, [0.0, 1.0], Provenance::now("ffi api test")).unwrap();
    let bytes = art.to_bytes(StorageDtype::F64).unwrap();
    let m = load(&bytes);
    let c = controller(m, SOCFLOW_PRECISION_F64);
    let x0 = [0.5; D];
    let opts = socflow_simulate_options {
        x0: x0.as_ptr(),
        x0_len: D,
        t0: 0.0,
        t1: 1.0,
        steps: 10,
        sigma: 0.1,
        paths: 8,
        seed: 1,
        threads: 2,
    };
    let mut finals = vec![0.0; 8 * D];
    let mut costs = vec![0.0; 8];
    // SAFETY: buffers with their lengths, NULL trajectories.
    let s = unsafe {
        socflow_controller_simulate(
            c,
            &opts,
            std::ptr::null(),
            finals.as_mut_ptr(),
            finals.len(),
            costs.as_mut_ptr(),
            8,
            std::ptr::null_mut(),
            0,
        )
    };
    assert_eq!(s, SOCFLOW_OK, "{}", last_error());
    let rust = Model::<f64>::from_bytes(&bytes)
        .unwrap()
        .controller()
        .unwrap();
    let want = rust
        .simulate(
            &Integrator {
                dim: D,
                gain: 1.0,
                control_weight: 1.0,
            },
            &SimulateOptions {
                x0: x0.to_vec(),
                t0: 0.0,
                t1: 1.0,
                steps: 10,
                sigma: 0.1,
                paths: 8,
                seed: 1,
                keep_trajectories: false,
            },
        )
        .unwrap();
    assert_eq!(finals, want.finals);
    assert_eq!(costs, want.running_cost);
    assert_eq!(socflow_controller_destroy(c), SOCFLOW_OK);
    assert_eq!(socflow_model_destroy(m), SOCFLOW_OK);
}
