//! State-dependent control laws (the quadcopter's u = −(1/r)B(x)ᵀ∇ₓΦ): the law against
//! an independently written B(x), the controller over a potential (single state,
//! batch, value, roll-out), no allocation on the control path, the artifact round trip
//! and format version, and every kind of bad card.

// Index loops read several arrays in step, as the formulas are written.
#![allow(clippy::needless_range_loop)]

use socflow_testkit::Rng;
use std::sync::Arc;

use crate::common::random_otflow;
use socflow_runtime::artifact::{
    Artifact, ControlLaw, ControlMap, Feedback, ModelKind, Provenance, QuadcopterLaw, StorageDtype,
    CONTROL_LAW_VERSION,
};
use socflow_runtime::controller::{ControlMatrix, Controller, Dynamics, SimulateOptions};
use socflow_runtime::field::Potential;
use socflow_runtime::model::Model;
use socflow_runtime::nn::otflow::OtFlow;
use socflow_runtime::nn::{Activation, MlpParams};
use socflow_runtime::Error;
use socflow_testkit::count_allocs;

fn law() -> QuadcopterLaw {
    QuadcopterLaw::new(1.3, 9.81, 2.0).unwrap()
}

/// B(x) of Onken et al. (2022), 12 × 4, written out entry by entry from the rotation
/// matrix R = R_z(ψ)R_y(θ)R_x(φ): thrust along R's third column, torques straight into
/// the angular accelerations.
fn input_matrix(x: &[f64], mass: f64) -> [[f64; 4]; 12] {
    let (psi, th, ph) = (x[3], x[4], x[5]);
    let rz = [
        [psi.cos(), -psi.sin(), 0.0],
        [psi.sin(), psi.cos(), 0.0],
        [0.0, 0.0, 1.0],
    ];
    let ry = [
        [th.cos(), 0.0, th.sin()],
        [0.0, 1.0, 0.0],
        [-th.sin(), 0.0, th.cos()],
    ];
    let rx = [
        [1.0, 0.0, 0.0],
        [0.0, ph.cos(), -ph.sin()],
        [0.0, ph.sin(), ph.cos()],
    ];
    let mul = |a: [[f64; 3]; 3], b: [[f64; 3]; 3]| {
        let mut c = [[0.0; 3]; 3];
        for i in 0..3 {
            for j in 0..3 {
                c[i][j] = (0..3).map(|k| a[i][k] * b[k][j]).sum();
            }
        }
        c
    };
    let r = mul(mul(rz, ry), rx);
    let mut b = [[0.0; 4]; 12];
    for i in 0..3 {
        b[6 + i][0] = r[i][2] / mass;
        b[9 + i][1 + i] = 1.0;
    }
    b
}

fn reference_control(x: &[f64], p: &[f64], mass: f64, r: f64) -> [f64; 4] {
    let b = input_matrix(x, mass);
    let mut u = [0.0; 4];
    for (j, uj) in u.iter_mut().enumerate() {
        *uj = -(0..12).map(|i| b[i][j] * p[i]).sum::<f64>() / r;
    }
    u
}

#[test]
fn quadcopter_law_matches_the_rotation_matrix_formula() {
    let mut v = Rng(3);
    for (mass, r) in [(1.0, 2.0), (1.3, 0.7), (0.5, 5.0)] {
        let law = QuadcopterLaw::new(mass, 9.81, r).unwrap();
        for _ in 0..50 {
            let x = v.vec_sym(12, 3.0);
            let p = v.vec_sym(12, 50.0);
            let mut u = [0.0; 4];
            law.control(&x, &p, &mut u).unwrap();
            let want = reference_control(&x, &p, mass, r);
            for (a, b) in u.iter().zip(&want) {
                assert!(
                    (a - b).abs() <= 1e-12 * (1.0 + b.abs()),
                    "{u:?} vs {want:?}"
                );
            }
            assert!(want.iter().all(|w| w.abs() > 1e-6), "{want:?}");
            // f32 agrees to single precision.
            let x32: Vec<f32> = x.iter().map(|a| *a as f32).collect();
            let p32: Vec<f32> = p.iter().map(|a| *a as f32).collect();
            let mut u32 = [0.0f32; 4];
            ControlLaw::Quadcopter(law)
                .control(&x32, &p32, &mut u32)
                .unwrap();
            for (a, b) in u32.iter().zip(&want) {
                assert!(((*a as f64) - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} {b}");
            }
        }
    }
    // Hovering level (all angles 0): the thrust pushes straight up, u₀ = −p₈/(m r).
    let mut x = [0.0; 12];
    x[0] = 5.0;
    let mut p = [0.0; 12];
    p[6] = 4.0;
    p[8] = 3.0;
    p[10] = -1.0;
    let mut u = [0.0; 4];
    law().control(&x, &p, &mut u).unwrap();
    assert_eq!(u, [-3.0 / 1.3 / 2.0, 0.0, 0.5, 0.0]);
}

#[test]
fn bad_law_parameters_and_lengths_are_errors() {
    for (m, g, r) in [
        (0.0, 9.81, 2.0),
        (-1.0, 9.81, 2.0),
        (1.0, f64::NAN, 2.0),
        (1.0, 9.81, 0.0),
        (f64::INFINITY, 9.81, 2.0),
    ] {
        let e = QuadcopterLaw::new(m, g, r).unwrap_err();
        assert!(
            matches!(e, Error::InvalidArgument(ref s) if s.contains("quadcopter")),
            "{e}"
        );
    }
    let mut u = [0.0; 4];
    assert!(matches!(
        law().control(&[0.0; 11], &[0.0; 12], &mut u),
        Err(Error::Length { .. })
    ));
    assert!(law().control(&[0.0; 12], &[0.0; 13], &mut u).is_err());
    assert!(law()
        .control(&[0.0; 12], &[0.0; 12], &mut [0.0; 3])
        .is_err());
}

fn potential12(seed: u64) -> Arc<OtFlow<f64>> {
    Arc::new(OtFlow::<f64>::new(&random_otflow(12, 16, 2, seed)).unwrap())
}

#[test]
fn controller_applies_the_law_to_the_potential_gradient() {
    let pot = potential12(5);
    let law = law();
    let mut ctl = Controller::with_law(pot.clone(), ControlLaw::Quadcopter(law)).unwrap();
    assert_eq!((ctl.state_dim(), ctl.control_dim()), (12, 4));
    assert!(ctl.control_map().is_none());
    assert_eq!(ctl.control_law(), Some(&ControlLaw::Quadcopter(law)));
    let mut v = Rng(9);
    let n = 70; // more than one batch chunk
    let xs = v.vec_sym(n * 12, 2.0);
    let t = 0.35;
    let mut us = vec![0.0; n * 4];
    ctl.control_batch(t, &xs, &mut us).unwrap();
    let mut grad = vec![0.0; 12];
    let mut scratch = vec![0.0; pot.scratch_len()];
    for (x, ub) in xs.chunks_exact(12).zip(us.chunks_exact(4)) {
        pot.grad(t, x, &mut grad, &mut scratch).unwrap();
        let want = reference_control(x, &grad, law.mass, law.control_weight);
        let mut u = [0.0; 4];
        ctl.control(t, x, &mut u).unwrap();
        for ((a, b), w) in u.iter().zip(ub).zip(&want) {
            assert!((a - w).abs() <= 1e-12 * (1.0 + w.abs()), "{a} {w}");
            assert_eq!(a, b, "batch and single state differ");
        }
        // The value is Φ itself, whatever the law.
        let phi = pot.value(t, x, &mut scratch).unwrap();
        assert_eq!(ctl.value(t, x).unwrap(), phi);
    }
    // Wrong lengths and non-finite input are errors.
    let mut u = [0.0; 4];
    assert!(ctl.control(t, &xs[..11], &mut u).is_err());
    assert!(ctl.control(t, &xs[..12], &mut [0.0; 12]).is_err());
    assert!(ctl.control(f64::NAN, &xs[..12], &mut u).is_err());
    assert!(ctl.control_batch(t, &xs, &mut us[..8]).is_err());
    // A law for another state dimension is refused.
    let pot3 = Arc::new(OtFlow::<f64>::new(&random_otflow(3, 8, 2, 1)).unwrap());
    let e = Controller::with_law(pot3, ControlLaw::Quadcopter(law)).err();
    assert!(
        matches!(e, Some(Error::InvalidArgument(ref s)) if s.contains("12")),
        "{e:?}"
    );
}

#[test]
fn control_with_a_law_does_not_allocate() {
    let pot = Arc::new(OtFlow::<f32>::new(&random_otflow(12, 64, 2, 3)).unwrap());
    let mut ctl = Controller::with_law(pot, ControlLaw::Quadcopter(law())).unwrap();
    let x: Vec<f32> = (0..12).map(|i| 0.1 * i as f32 - 0.3).collect();
    let mut u = [0.0f32; 4];
    ctl.control(0.2, &x, &mut u).unwrap();
    let (acc, n) = count_allocs(|| {
        let mut acc = 0.0f32;
        for k in 0..1000 {
            ctl.control(0.001 * k as f32, &x, &mut u).unwrap();
            acc += u[0];
        }
        acc
    });
    assert!(acc.is_finite() && acc != 0.0);
    assert_eq!(n, 0, "control() with a control law allocated {n} times");
}

/// ẋ = a(x) + B(x)u with L = (r/2)‖u‖², g = ‖x‖² (the dynamics the law is optimal for).
struct Quad {
    law: QuadcopterLaw,
}

impl Dynamics<f64> for Quad {
    fn state_dim(&self) -> usize {
        12
    }
    fn control_dim(&self) -> usize {
        4
    }
    fn drift(&self, _s: f64, z: &[f64], u: &[f64], out: &mut [f64]) -> socflow_runtime::Result<()> {
        let b = input_matrix(z, self.law.mass);
        for i in 0..12 {
            out[i] = (0..4).map(|j| b[i][j] * u[j]).sum::<f64>();
        }
        for i in 0..6 {
            out[i] += z[6 + i];
        }
        out[8] -= self.law.gravity;
        Ok(())
    }
    fn running_cost(&self, _s: f64, _z: &[f64], u: &[f64]) -> socflow_runtime::Result<f64> {
        Ok(0.5 * self.law.control_weight * u.iter().map(|v| v * v).sum::<f64>())
    }
    fn terminal_cost(&self, z: &[f64]) -> socflow_runtime::Result<f64> {
        Ok(z.iter().map(|v| v * v).sum())
    }
}

#[test]
fn closed_loop_roll_out_uses_the_law() {
    // The roll-out of the controller equals a hand-written Euler loop with the law
    // applied to ∇Φ (σ = 0: deterministic).
    let pot = potential12(7);
    let law = law();
    let ctl = Controller::with_law(pot.clone(), ControlLaw::Quadcopter(law)).unwrap();
    let dyns = Quad { law };
    let x0: Vec<f64> = (0..12).map(|i| 0.05 * i as f64 - 0.2).collect();
    let opts = SimulateOptions {
        x0: x0.clone(),
        t0: 0.0,
        t1: 1.0,
        steps: 25,
        sigma: 0.0,
        paths: 2,
        seed: 1,
        keep_trajectories: false,
    };
    let roll = ctl.simulate(&dyns, &opts).unwrap();
    let mut z = x0;
    let h = 1.0 / 25.0;
    let mut cost = 0.0;
    let (mut grad, mut scratch) = (vec![0.0; 12], vec![0.0; pot.scratch_len()]);
    let mut f = vec![0.0; 12];
    for k in 0..25 {
        let s = k as f64 * h;
        pot.grad(s, &z, &mut grad, &mut scratch).unwrap();
        let u = reference_control(&z, &grad, law.mass, law.control_weight);
        cost += h * 0.5 * law.control_weight * u.iter().map(|v| v * v).sum::<f64>();
        dyns.drift(s, &z, &u, &mut f).unwrap();
        for j in 0..12 {
            z[j] += h * f[j];
        }
    }
    for p in 0..2 {
        for j in 0..12 {
            assert!((roll.finals[p * 12 + j] - z[j]).abs() < 1e-10);
        }
        assert!((roll.running_cost[p] - cost).abs() < 1e-10 * (1.0 + cost));
    }
}

fn provenance() -> Provenance {
    Provenance {
        created_by: "control-law tests".into(),
        created_unix: 1_700_000_000,
        details: Default::default(),
    }
}

fn law_artifact() -> Artifact {
    Artifact::otflow(random_otflow(12, 8, 2, 11), [0.0, 1.0], provenance())
        .unwrap()
        .with_feedback(Feedback::Law(ControlLaw::Quadcopter(law())))
        .unwrap()
}

/// The safetensors header of `bytes` and its data section.
fn split(bytes: &[u8]) -> (serde_json::Value, Vec<u8>) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    (
        serde_json::from_slice(&bytes[8..8 + n]).unwrap(),
        bytes[8 + n..].to_vec(),
    )
}

fn join(header: &serde_json::Value, data: &[u8]) -> Vec<u8> {
    let mut h = serde_json::to_vec(header).unwrap();
    h.resize(h.len().next_multiple_of(8), b' ');
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    out
}

fn card(header: &serde_json::Value) -> serde_json::Value {
    serde_json::from_str(header["__metadata__"]["card"].as_str().unwrap()).unwrap()
}

/// The file with its card edited by `f` (and the metadata version set to the card's).
fn edited(
    bytes: &[u8],
    f: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) -> Vec<u8> {
    let (mut header, data) = split(bytes);
    let mut c = card(&header);
    f(c.as_object_mut().unwrap());
    let version = c["format_version"].to_string();
    header["__metadata__"]["card"] = c.to_string().into();
    header["__metadata__"]["format_version"] = version.into();
    join(&header, &data)
}

fn format_error(r: Result<Artifact, Error>) -> String {
    match r {
        Err(Error::Format(s)) => s,
        other => panic!("expected a format error, got {other:?}"),
    }
}

#[test]
fn artifact_round_trip_records_the_law_at_version_2() {
    let a = law_artifact();
    assert_eq!(a.control_law(), Some(&ControlLaw::Quadcopter(law())));
    assert!(a.control_map.is_none());
    assert_eq!(a.card.format_version, CONTROL_LAW_VERSION);
    let bytes = a.to_bytes(StorageDtype::F64).unwrap();
    let back = Artifact::from_bytes(&bytes).unwrap();
    assert_eq!(back, a);
    let (header, _) = split(&bytes);
    assert_eq!(header["__metadata__"]["format_version"], "2");
    let c = card(&header);
    assert_eq!(c["format_version"], 2);
    assert_eq!(
        c["control_law"],
        serde_json::json!({"type": "quadcopter", "mass": 1.3, "gravity": 9.81, "control_weight": 2.0})
    );
    assert_eq!(c["control_dim"], serde_json::Value::Null);
    // Tensors are the network's alone.
    assert!(a.tensor_shapes().iter().all(|(n, _)| n != "control_map"));
    assert!(
        a.describe().contains("control law:   quadcopter"),
        "{}",
        a.describe()
    );
    // f32 storage keeps the law exactly (it lives in the card).
    let back32 = Artifact::from_bytes(&a.to_bytes(StorageDtype::F32).unwrap()).unwrap();
    assert_eq!(back32.control_law(), a.control_law());
    // The loaded model's controller applies the law.
    let model = Model::<f64>::from_bytes(&bytes).unwrap();
    let mut ctl = model.controller().unwrap();
    assert_eq!(ctl.control_dim(), 4);
    let pot = model.potential().unwrap();
    let x: Vec<f64> = (0..12).map(|i| 0.2 * i as f64 - 1.0).collect();
    let (mut grad, mut scratch) = (vec![0.0; 12], vec![0.0; pot.scratch_len()]);
    pot.grad(0.5, &x, &mut grad, &mut scratch).unwrap();
    let mut u = [0.0; 4];
    ctl.control(0.5, &x, &mut u).unwrap();
    let want = reference_control(&x, &grad, 1.3, 2.0);
    for (a, b) in u.iter().zip(&want) {
        assert!((a - b).abs() <= 1e-12 * (1.0 + b.abs()));
    }
    // A model without a law is still written as version 1, as before.
    let plain = Artifact::otflow(random_otflow(12, 8, 2, 11), [0.0, 1.0], provenance()).unwrap();
    let (h, _) = split(&plain.to_bytes(StorageDtype::F64).unwrap());
    assert_eq!(h["__metadata__"]["format_version"], "1");
    assert!(card(&h).get("control_law").is_none());
}

#[test]
fn bad_control_law_cards_are_format_errors() {
    let bytes = law_artifact().to_bytes(StorageDtype::F64).unwrap();
    // An unknown law type names the known ones.
    let e = format_error(Artifact::from_bytes(&edited(&bytes, |c| {
        c["control_law"]["type"] = "rocket".into();
    })));
    assert!(e.contains("rocket") && e.contains("quadcopter"), "{e}");
    // No type at all.
    let e = format_error(Artifact::from_bytes(&edited(&bytes, |c| {
        c["control_law"].as_object_mut().unwrap().remove("type");
    })));
    assert!(e.contains("type"), "{e}");
    // Unknown and missing keys of the law.
    let e = format_error(Artifact::from_bytes(&edited(&bytes, |c| {
        c["control_law"]["inertia"] = 2.0.into();
    })));
    assert!(e.contains("inertia"), "{e}");
    let e = format_error(Artifact::from_bytes(&edited(&bytes, |c| {
        c["control_law"].as_object_mut().unwrap().remove("mass");
    })));
    assert!(e.contains("mass"), "{e}");
    // Bad parameters.
    for (key, value) in [("mass", 0.0), ("control_weight", -2.0), ("mass", -1e-300)] {
        let e = format_error(Artifact::from_bytes(&edited(&bytes, |c| {
            c["control_law"][key] = value.into();
        })));
        assert!(e.contains("quadcopter control law"), "{e}");
    }
    // A law in a version-1 card.
    let e = format_error(Artifact::from_bytes(&edited(&bytes, |c| {
        c["format_version"] = 1.into();
    })));
    assert!(e.contains("format version 2"), "{e}");
    // A law and a control map at once.
    let e = format_error(Artifact::from_bytes(&edited(&bytes, |c| {
        c["control_dim"] = 4.into();
    })));
    assert!(e.contains("not both"), "{e}");
    // Untouched, it loads.
    Artifact::from_bytes(&edited(&bytes, |_| {})).unwrap();
}

#[test]
fn attaching_a_law_checks_the_model() {
    let q = ControlLaw::Quadcopter(law());
    // Wrong state dimension.
    let a3 = Artifact::otflow(random_otflow(3, 8, 2, 1), [0.0, 1.0], provenance()).unwrap();
    let e = a3.clone().with_control_law(q.clone()).unwrap_err();
    assert!(
        matches!(e, Error::InvalidArgument(ref s) if s.contains("state dimension 12")),
        "{e}"
    );
    // A control map and a law.
    let a12 = Artifact::otflow(random_otflow(12, 8, 2, 1), [0.0, 1.0], provenance()).unwrap();
    let with_map = a12
        .clone()
        .with_control_map(ControlMap::new(4, 12, vec![0.1; 48]).unwrap())
        .unwrap();
    let e = with_map.with_control_law(q.clone()).unwrap_err();
    assert!(e.to_string().contains("not both"), "{e}");
    // A velocity field cannot carry one.
    let mlp = MlpParams {
        d: 12,
        hidden: vec![4],
        activation: Activation::Silu,
        weights: vec![vec![0.1; 13 * 4], vec![0.1; 4 * 12]],
        biases: vec![vec![0.0; 4], vec![0.0; 12]],
    };
    let v = Artifact::mlp(mlp, ModelKind::Velocity, [0.0, 1.0], provenance()).unwrap();
    let e = v.with_control_law(q.clone()).unwrap_err();
    assert!(e.to_string().contains("only a potential"), "{e}");
    // The constant map still goes through `with_feedback`, at version 1.
    let m = a12
        .with_feedback(Feedback::Map(
            ControlMap::new(4, 12, vec![0.1; 48]).unwrap(),
        ))
        .unwrap();
    assert_eq!(m.card.format_version, 1);
    let model = Model::<f64>::from_artifact(m).unwrap();
    let ctl = model.controller().unwrap();
    assert!(ctl.control_law().is_none());
    assert_eq!(
        ctl.control_map(),
        Some(&ControlMatrix::new(4, 12, vec![0.1; 48]).unwrap())
    );
}
