//! OT-Flow built from autodiff ops: Φ, ∇Φ and the exact Laplacian against the original
//! code's float64 reference values and against the runtime's evaluator; parameter (and
//! state) gradients of a loss mixing Φ, ‖∇Φ‖², ΔΦ and the HJB residual against finite
//! differences.

use serde_json::Value;
use socflow_runtime::field::Potential;
use socflow_runtime::nn::otflow::OtFlow;
use socflow_runtime::nn::OtFlowParams;
use socflow_trainer::autodiff::otflow::{potential, OtFlowOutputs, OtFlowVars};
use socflow_trainer::autodiff::{
    check_gradients, CheckOptions, Cpu, DType, Error, Graph, Shape, Tensor, Var,
};

use socflow_testkit::golden::{flat, rows, usize_of};
use socflow_testkit::Rng;

fn golden() -> Value {
    socflow_testkit::golden::json()
}

fn params_from_case(c: &Value) -> OtFlowParams {
    OtFlowParams::from_state_dict(
        usize_of(&c["d"]),
        usize_of(&c["m"]),
        usize_of(&c["nTh"]),
        usize_of(&c["r"]),
        &mut socflow_testkit::golden::state_dict(c),
    )
    .expect("reference parameters are complete")
}

fn random_params(d: usize, m: usize, n_th: usize, seed: u64) -> OtFlowParams {
    let mut sd = socflow_testkit::otflow_state_dict(d, m, n_th, seed);
    OtFlowParams::from_state_dict(d, m, n_th, (d + 1).min(10), &mut sd)
        .expect("complete parameters")
}

type R<T> = socflow_trainer::autodiff::Result<T>;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

struct Batch {
    phi: Vec<f64>,
    grad: Vec<f64>,
    lap: Vec<f64>,
}

/// Evaluates the op-built potential on a batch (rows (x, t)) in `dtype`.
fn eval(p: &OtFlowParams, s: &[f64], dtype: DType) -> Batch {
    let ns = p.d + 1;
    let mut g = Graph::new(Cpu::new());
    let vars = OtFlowVars::new(&mut g, p, dtype, false).unwrap();
    let sv = g.leaf_f64(s.len() / ns, ns, s, dtype, false).unwrap();
    let out = potential(&mut g, &vars, sv, true).unwrap();
    Batch {
        phi: g.to_f64(out.phi).unwrap(),
        grad: g.to_f64(out.grad).unwrap(),
        lap: g.to_f64(out.lap.expect("asked for")).unwrap(),
    }
}

fn rel_close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * b.abs().max(1e-300)
}

// ---------------------------------------------------------------------------------------
// Values
// ---------------------------------------------------------------------------------------

#[test]
fn golden_phi_grad_trace() {
    let g = golden();
    let cases = g["cases"].as_array().expect("cases");
    let mut checked = 0;
    for c in cases {
        let p = params_from_case(c);
        let d = p.d;
        let s = rows(&c["s"]);
        let phi = flat(&c["phi"]);
        let grad = rows(&c["grad"]);
        let trh = flat(&c["trH"]);
        let out = eval(&p, &s.concat(), DType::F64);
        for i in 0..s.len() {
            let case = format!("d={d} m={} nTh={} sample {i}", p.m, p.n_th);
            assert!(
                rel_close(out.phi[i], phi[i], 1e-12),
                "{case}: Φ {} vs {}",
                out.phi[i],
                phi[i]
            );
            // The reference gradient is ∇_sΦ = (∇ₓΦ, ∂ₜΦ); entries are compared
            // relative to the largest of the row (an entry can be near zero), and each
            // to 1e-10 of itself.
            assert_eq!(grad[i].len(), d + 1);
            let gnorm = grad[i].iter().fold(0.0f64, |a, v| a.max(v.abs()));
            for (k, &want) in grad[i].iter().enumerate() {
                let got = out.grad[i * (d + 1) + k];
                assert!(
                    (got - want).abs() <= 1e-12 * gnorm,
                    "{case}: ∂Φ/∂s{k} {got} vs {want}"
                );
                assert!(rel_close(got, want, 1e-10), "{case}: ∂s{k}");
            }
            assert!(
                rel_close(out.lap[i], trh[i], 1e-12),
                "{case}: ΔΦ {} vs {}",
                out.lap[i],
                trh[i]
            );
            checked += 1;
        }
    }
    assert!(checked >= 80, "checked {checked} reference states");
}

/// The original `odefun` right-hand side, [x, l, c_L, c_H] at t ↦
/// [−∇ₓΦ/α₀, −ΔΦ/α₀, ½‖dx‖², |−∂ₜΦ + α₀·½‖dx‖²|], composed from ops.
#[test]
fn golden_odefun_from_ops() {
    let gold = golden();
    for c in gold["cases"].as_array().unwrap() {
        let p = params_from_case(c);
        let d = p.d;
        let t = c["odefun_t"].as_f64().unwrap();
        let alpha0 = flat(&c["otflow_problem"]["alph"])[0];
        let zin = rows(&c["odefun_in"]);
        let zout = rows(&c["odefun_out"]);
        let bsz = zin.len();
        let mut g = Graph::new(Cpu::new());
        let vars = OtFlowVars::new(&mut g, &p, DType::F64, false).unwrap();
        let z = g
            .leaf_f64(bsz, d + 3, &zin.concat(), DType::F64, false)
            .unwrap();
        let x = g.slice_cols(z, 0, d).unwrap();
        let tcol = g
            .leaf_f64(bsz, 1, &vec![t; bsz], DType::F64, false)
            .unwrap();
        let s = g.concat_cols(&[x, tcol]).unwrap();
        let out = potential(&mut g, &vars, s, true).unwrap();
        let gx = out.grad_x(&mut g).unwrap();
        let dt = out.dt(&mut g).unwrap();
        let dx = g.scale(gx, -1.0 / alpha0).unwrap();
        let dl = g.scale(out.lap.unwrap(), -1.0 / alpha0).unwrap();
        let dx2 = g.square(dx).unwrap();
        let dv = g.sum_cols(dx2).unwrap();
        let dv = g.scale(dv, 0.5).unwrap();
        let a = g.scale(dv, alpha0).unwrap();
        let h = g.sub(a, dt).unwrap();
        let dh = g.abs(h).unwrap();
        let rhs = g.concat_cols(&[dx, dl, dv, dh]).unwrap();
        assert_eq!(g.shape(rhs).unwrap(), Shape::new(bsz, d + 3));
        let got = g.to_f64(rhs).unwrap();
        for (i, want) in zout.iter().enumerate() {
            let scale = want.iter().fold(0.0f64, |a, v| a.max(v.abs()));
            for (k, &w) in want.iter().enumerate() {
                let v = got[i * (d + 3) + k];
                assert!(
                    (v - w).abs() <= 1e-12 * scale,
                    "d={d} row {i} entry {k}: {v} vs {w}"
                );
            }
        }
    }
}

#[test]
fn agrees_with_the_runtime() {
    let configs = [(1, 4, 2), (2, 8, 2), (3, 6, 3), (5, 16, 4), (12, 10, 2)];
    let mut rng = Rng(99);
    for (ci, &(d, m, n_th)) in configs.iter().enumerate() {
        let p = random_params(d, m, n_th, 1000 + ci as u64);
        let net = OtFlow::<f64>::new(&p).unwrap();
        let bsz = 7;
        let s = rng.vec(bsz * (d + 1), 1.0);
        let out = eval(&p, &s, DType::F64);
        let mut scratch = vec![0.0; Potential::scratch_len(&net)];
        let mut grad = vec![0.0; d];
        for b in 0..bsz {
            let row = &s[b * (d + 1)..(b + 1) * (d + 1)];
            let (phi, dt, lap) = net
                .grad_lap(row[d], &row[..d], &mut grad, &mut scratch)
                .unwrap();
            let what = format!("d={d} m={m} nTh={n_th} sample {b}");
            assert!(rel_close(out.phi[b], phi, 1e-12), "{what}: Φ");
            let mut want = grad.clone();
            want.push(dt);
            let gnorm = want.iter().fold(0.0f64, |a, v| a.max(v.abs()));
            for (k, &w) in want.iter().enumerate() {
                let v = out.grad[b * (d + 1) + k];
                assert!((v - w).abs() <= 1e-12 * gnorm, "{what}: ∂s{k} {v} vs {w}");
            }
            assert!(
                rel_close(out.lap[b], lap, 1e-12),
                "{what}: ΔΦ {} vs {lap}",
                out.lap[b]
            );
        }
    }
}

/// f32, bf16 and f16 graphs track f64 to their precision.
#[test]
fn lower_precisions_track_f64() {
    let p = random_params(3, 16, 3, 7);
    let s = Rng(8).vec(5 * 4, 1.0);
    let hi = eval(&p, &s, DType::F64);
    for (dtype, tol) in [(DType::F32, 1e-5), (DType::Bf16, 0.1), (DType::F16, 2e-2)] {
        let lo = eval(&p, &s, dtype);
        let scale = |v: &[f64]| v.iter().fold(0.0f64, |a, x| a.max(x.abs()));
        for (name, a, b) in [
            ("Φ", &lo.phi, &hi.phi),
            ("∇Φ", &lo.grad, &hi.grad),
            ("ΔΦ", &lo.lap, &hi.lap),
        ] {
            let sc = scale(b);
            for (x, y) in a.iter().zip(b.iter()) {
                assert!((x - y).abs() <= tol * sc, "{dtype} {name}: {x} vs {y}");
            }
        }
    }
}

#[test]
fn shape_errors() {
    let p = random_params(2, 4, 2, 3);
    let mut g = Graph::new(Cpu::new());
    let vars = OtFlowVars::new(&mut g, &p, DType::F64, true).unwrap();
    let s = g.leaf_f64(3, 2, &[0.0; 6], DType::F64, false).unwrap();
    assert!(matches!(
        potential(&mut g, &vars, s, false),
        Err(Error::Shape { .. })
    ));
    let mut bad = vars.clone();
    bad.w = bad.b[1];
    bad.c_weight = bad.b[0];
    let s = g.leaf_f64(3, 3, &[0.0; 9], DType::F64, false).unwrap();
    assert!(matches!(
        potential(&mut g, &bad, s, false),
        Err(Error::Shape { .. })
    ));
    let mut q = p.clone();
    q.k.pop();
    assert!(matches!(
        OtFlowVars::new(&mut g, &q, DType::F64, true),
        Err(Error::InvalidArgument(_))
    ));
    let mut q = p.clone();
    q.a.pop();
    assert!(matches!(
        OtFlowVars::new(&mut g, &q, DType::F64, true),
        Err(Error::Length { .. })
    ));
    // Mixed precisions need a cast.
    let s32 = g.leaf_f64(3, 3, &[0.0; 9], DType::F32, false).unwrap();
    assert!(matches!(
        potential(&mut g, &vars, s32, true),
        Err(Error::DType { .. })
    ));
}

// ---------------------------------------------------------------------------------------
// Gradients of losses containing ∇Φ and ΔΦ
// ---------------------------------------------------------------------------------------

/// mean Φ + ½ mean ‖∇ₓΦ‖² + 0.3 mean ΔΦ + mean |∂ₜΦ − ½‖∇ₓΦ‖²| (+ a Φ² term).
fn loss(g: &mut Graph<Cpu>, out: &OtFlowOutputs) -> R<Var> {
    let gx = out.grad_x(g)?;
    let dt = out.dt(g)?;
    let gx2 = g.square(gx)?;
    let kin = g.sum_cols(gx2)?;
    let kin = g.scale(kin, 0.5)?;
    let hjb = g.sub(dt, kin)?;
    let hjb = g.abs(hjb)?;
    let lap = out.lap.expect("asked for");
    let phi2 = g.square(out.phi)?;
    let phi2 = g.scale(phi2, 0.01)?;
    let lap = g.scale(lap, 0.3)?;
    let parts = g.concat_cols(&[out.phi, kin, lap, hjb, phi2])?;
    g.mean(parts)
}

fn leaves_of(p: &OtFlowParams, s: &[f64]) -> Vec<Tensor<Cpu>> {
    let be = Cpu::new();
    let t = |r: usize, c: usize, v: &[f64]| Tensor::from_f64(&be, r, c, v, DType::F64).unwrap();
    let (d, m) = (p.d, p.m);
    let mut v = Vec::new();
    for (i, k) in p.k.iter().enumerate() {
        v.push(t(m, if i == 0 { d + 1 } else { m }, k));
    }
    for b in &p.b {
        v.push(t(1, m, b));
    }
    v.push(t(1, m, &p.w));
    v.push(t(p.r, d + 1, &p.a));
    v.push(t(1, d + 1, &p.c_weight));
    v.push(t(1, 1, &[p.c_bias]));
    v.push(t(s.len() / (d + 1), d + 1, s));
    v
}

fn vars_from(p: &OtFlowParams, v: &[Var]) -> OtFlowVars {
    let n = p.n_th;
    OtFlowVars {
        d: p.d,
        m: p.m,
        n_th: n,
        r: p.r,
        k: v[..n].to_vec(),
        b: v[n..2 * n].to_vec(),
        w: v[2 * n],
        a: v[2 * n + 1],
        c_weight: v[2 * n + 2],
        c_bias: v[2 * n + 3],
    }
}

#[test]
fn loss_gradients_match_finite_differences() {
    for (d, m, n_th, seed) in [(2, 5, 3, 21), (3, 4, 2, 22), (1, 3, 4, 23)] {
        let p = random_params(d, m, n_th, seed);
        let s = Rng(seed + 100).vec(4 * (d + 1), 1.0);
        // The HJB residual must stay away from its kink at 0 for finite differences.
        {
            let mut g = Graph::new(Cpu::new());
            let vars = OtFlowVars::new(&mut g, &p, DType::F64, false).unwrap();
            let sv = g.leaf_f64(4, d + 1, &s, DType::F64, false).unwrap();
            let out = potential(&mut g, &vars, sv, true).unwrap();
            let gx = out.grad_x(&mut g).unwrap();
            let dt = out.dt(&mut g).unwrap();
            let gx2 = g.square(gx).unwrap();
            let kin = g.sum_cols(gx2).unwrap();
            let kin = g.scale(kin, 0.5).unwrap();
            let r = g.sub(dt, kin).unwrap();
            let min = g
                .to_f64(r)
                .unwrap()
                .iter()
                .fold(f64::INFINITY, |a, v| a.min(v.abs()));
            assert!(min > 1e-2, "pick another seed: HJB residual {min}");
        }
        let leaves = leaves_of(&p, &s);
        let mut g = Graph::new(Cpu::new());
        let rep = check_gradients(
            &mut g,
            &leaves,
            |g, v| {
                let vars = vars_from(&p, v);
                let out = potential(g, &vars, v[v.len() - 1], true)?;
                loss(g, &out)
            },
            &CheckOptions::default(),
        )
        .unwrap();
        eprintln!("d={d} m={m} nTh={n_th}: {rep}");
        // Every parameter and the states: 2·nTh + 4 parameter leaves, then S.
        assert_eq!(rep.leaves.len(), 2 * n_th + 5);
        assert!(rep.leaves.iter().all(|l| l.checked > 0));
        assert!(rep.max_rel_err <= 1e-7, "d={d} m={m} nTh={n_th}: {rep}");
    }
}

/// The gradient as an `OtFlowParams`, through the parameter handles.
#[test]
fn parameter_gradients_as_params() {
    let p = random_params(2, 3, 2, 5);
    let s = Rng(6).vec(3 * 3, 1.0);
    let mut g = Graph::new(Cpu::new());
    let vars = OtFlowVars::new(&mut g, &p, DType::F64, true).unwrap();
    let sv = g.leaf_f64(3, 3, &s, DType::F64, false).unwrap();
    let out = potential(&mut g, &vars, sv, false).unwrap();
    assert!(out.lap.is_none());
    let l = g.sum(out.phi).unwrap();
    let grads = g.backward(l, None).unwrap();
    let gp = vars.gradients(g.backend(), &grads).unwrap();
    // ∂(Σ_b Φ_b)/∂c_b = B, ∂/∂c_w = Σ_b s_b.
    assert_eq!(gp.c_bias, 3.0);
    for j in 0..3 {
        let want: f64 = (0..3).map(|b| s[b * 3 + j]).sum();
        assert!(rel_close(gp.c_weight[j], want, 1e-14));
    }
    assert_eq!(gp.k.len(), 2);
    assert_eq!(gp.k[0].len(), 3 * 3);
    assert_eq!(vars.all().len(), 2 * 2 + 4);
}
