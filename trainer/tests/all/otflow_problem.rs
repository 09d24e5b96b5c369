//! OT-Flow density estimation: the objective against the original code's float64
//! values, parameter gradients through the DTO solver against central differences,
//! seeded determinism, the export (runtime field = trained velocity), a short training
//! on 8gaussians, and sampling the exported model through the runtime.

use crate::common::{energy_distance, null_distribution, sample_model};
use serde_json::Value;
use socflow_runtime::artifact::{Normalization, StorageDtype};
use socflow_runtime::brownian::{Brownian, Stream};
use socflow_runtime::field::Field;
use socflow_runtime::model::Model;
use socflow_runtime::nn::OtFlowParams;
use socflow_trainer::autodiff::{Cpu, DType, Graph};
use socflow_trainer::data::{Dataset, Toy};
use socflow_trainer::dto::{PrecisionPolicy, Rhs};
use socflow_trainer::optim::{AdamConfig, Schedule};
use socflow_trainer::otflow::{
    init_params, train_otflow, OtFlowConfig, OtFlowProblem, OtFlowRhs, Precision, Progress,
    TrainedOtFlow,
};

/// Test-only draws (a stream no library module uses).
const TEST_STREAM: Stream = Stream(901);

fn golden() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/reference/otflow_phi_golden.json"
    );
    let text = std::fs::read_to_string(path).expect("reference file");
    serde_json::from_str(&text).expect("reference JSON")
}

fn flat(v: &Value) -> Vec<f64> {
    match v {
        Value::Array(a) => a.iter().flat_map(flat).collect(),
        Value::Number(n) => vec![n.as_f64().unwrap()],
        _ => panic!("not numeric: {v}"),
    }
}

fn usize_of(v: &Value) -> usize {
    v.as_u64().unwrap() as usize
}

fn params_from_case(c: &Value) -> OtFlowParams {
    let n_th = usize_of(&c["nTh"]);
    let sd = &c["state_dict"];
    OtFlowParams {
        d: usize_of(&c["d"]),
        m: usize_of(&c["m"]),
        n_th,
        r: usize_of(&c["r"]),
        k: (0..n_th)
            .map(|i| flat(&sd[format!("N.layers.{i}.weight")]))
            .collect(),
        b: (0..n_th)
            .map(|i| flat(&sd[format!("N.layers.{i}.bias")]))
            .collect(),
        w: flat(&sd["w.weight"]),
        a: flat(&sd["A"]),
        c_weight: flat(&sd["c.weight"]),
        c_bias: flat(&sd["c.bias"])[0],
    }
}

/// The x columns of the reference's `odefun_in` rows (whose l, c_L, c_H are zero).
fn case_points(c: &Value, d: usize) -> Vec<f64> {
    let mut x = Vec::new();
    for row in c["odefun_in"].as_array().unwrap() {
        let r = flat(row);
        assert_eq!(r.len(), d + 3);
        assert!(r[d..].iter().all(|&v| v == 0.0));
        x.extend_from_slice(&r[..d]);
    }
    x
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(f64::MIN_POSITIVE)
}

fn normals(seed: u64, n: usize, d: usize, scale: f64) -> Vec<f64> {
    let b = Brownian::new(seed);
    let mut x = vec![0.0; n * d];
    for (i, row) in x.chunks_exact_mut(d).enumerate() {
        b.stream_normals(TEST_STREAM, i as u64, 0, row).unwrap();
    }
    x.iter().map(|v| scale * v).collect()
}

/// Parameters with every entry nonzero and of order one (w, c not at their initial
/// constants), so that every parameter's gradient is exercised.
fn random_params(d: usize, m: usize, n_th: usize, seed: u64) -> OtFlowParams {
    let mut p = init_params(d, m, n_th, seed).unwrap();
    let mut k = 0u64;
    let mut perturb = |v: &mut Vec<f64>, s: f64| {
        k += 1;
        let z = normals(seed * 100 + k, v.len(), 1, s);
        v.iter_mut().zip(z).for_each(|(a, b)| *a += b);
    };
    for i in 0..n_th {
        perturb(&mut p.k[i], 0.3);
        perturb(&mut p.b[i], 0.3);
    }
    perturb(&mut p.w, 0.5);
    perturb(&mut p.a, 0.3);
    perturb(&mut p.c_weight, 0.5);
    let mut cb = vec![p.c_bias];
    perturb(&mut cb, 0.5);
    p.c_bias = cb[0];
    p
}

/// J, costL, costC and costR through the DTO solver (RK4, f64) against the original
/// code's values, with α = (1, 20, 3): J = 1·costL + 20·costC + 3·costR identifies the
/// weights' order, and all four agree to 1e-10 relative.
#[test]
fn golden_objective() {
    let g = golden();
    let mut graph = Graph::new(Cpu::new());
    let cases = g["cases"].as_array().unwrap();
    assert!(cases.len() >= 4, "{} reference cases", cases.len());
    for c in cases {
        let p = params_from_case(c);
        let prob = &c["otflow_problem"];
        let alph = flat(&prob["alph"]);
        let (jr, lr, cr, rr) = (
            prob["J"].as_f64().unwrap(),
            prob["costL"].as_f64().unwrap(),
            prob["costC"].as_f64().unwrap(),
            prob["costR"].as_f64().unwrap(),
        );
        // The reference's own J is α₀·costL + α₁·costC + α₂·costR.
        assert!(rel(alph[0] * lr + alph[1] * cr + alph[2] * rr, jr) < 1e-13);
        let problem = OtFlowProblem::new(
            [alph[0], alph[1], alph[2]],
            usize_of(&prob["nt"]),
            PrecisionPolicy::f64(),
        )
        .unwrap();
        let x = case_points(c, p.d);
        let got = problem.costs(&mut graph, &p, &x).unwrap();
        eprintln!(
            "d={} m={} nTh={}: J {:.15e} (ref {jr:.15e}), costL {:.3e}, costC {:.3e}, costR \
             {:.3e}",
            p.d, p.m, p.n_th, got.j, got.cost_l, got.cost_c, got.cost_r
        );
        for (name, a, b) in [
            ("J", got.j, jr),
            ("costL", got.cost_l, lr),
            ("costC", got.cost_c, cr),
            ("costR", got.cost_r, rr),
        ] {
            assert!(
                rel(a, b) <= 1e-10,
                "d={}: {name} {a} vs {b} (rel {:.2e})",
                p.d,
                rel(a, b)
            );
        }
        // The gradient pass reports the same costs.
        let (c2, _) = problem.costs_and_gradient(&mut graph, &p, &x).unwrap();
        assert_eq!(c2, got);
    }
}

/// The parameter gradient of J through the DTO solver (f64) against fourth-order
/// central differences of J, for every entry of every OT-Flow parameter, with three
/// ResNet layers (nTh = 3) so that the inner layers' Jacobian recursion is exercised,
/// and with the reference's d = 2, m = 8 parameters.
#[test]
fn gradient_matches_central_differences() {
    let mut graph = Graph::new(Cpu::new());
    let g = golden();
    let cases: Vec<(OtFlowParams, Vec<f64>)> = vec![
        (random_params(2, 5, 3, 3), normals(4, 6, 2, 1.5)),
        (
            params_from_case(&g["cases"][0]),
            case_points(&g["cases"][0], 2),
        ),
    ];
    for (p, x) in cases {
        let problem = OtFlowProblem::new([2.0, 20.0, 3.0], 3, PrecisionPolicy::f64()).unwrap();
        let (_, grad) = problem.costs_and_gradient(&mut graph, &p, &x).unwrap();
        let j = |q: &OtFlowParams, graph: &mut Graph<Cpu>| problem.costs(graph, q, &x).unwrap().j;
        // Flat views of the parameters in one order.
        let flatten = |q: &OtFlowParams| -> Vec<f64> {
            let mut v: Vec<f64> = q.k.iter().flatten().copied().collect();
            v.extend(q.b.iter().flatten());
            v.extend(&q.w);
            v.extend(&q.a);
            v.extend(&q.c_weight);
            v.push(q.c_bias);
            v
        };
        let unflatten = |v: &[f64]| -> OtFlowParams {
            let mut q = p.clone();
            let mut it = v.iter().copied();
            for k in q.k.iter_mut().chain(q.b.iter_mut()) {
                k.iter_mut().for_each(|e| *e = it.next().unwrap());
            }
            for a in [&mut q.w, &mut q.a, &mut q.c_weight] {
                a.iter_mut().for_each(|e| *e = it.next().unwrap());
            }
            q.c_bias = it.next().unwrap();
            q
        };
        let theta = flatten(&p);
        let gv = flatten(&grad);
        let gmax = gv.iter().fold(0.0f64, |a, v| a.max(v.abs()));
        let mut worst = 0.0f64;
        for i in 0..theta.len() {
            let h = 1e-3 * theta[i].abs().max(1.0);
            let at = |s: f64, graph: &mut Graph<Cpu>| {
                let mut v = theta.clone();
                v[i] += s * h;
                j(&unflatten(&v), graph)
            };
            let fd = (8.0 * (at(1.0, &mut graph) - at(-1.0, &mut graph))
                - (at(2.0, &mut graph) - at(-2.0, &mut graph)))
                / (12.0 * h);
            // Relative to the entry, floored at 1e-3 of the largest gradient entry.
            let err = (gv[i] - fd).abs() / gv[i].abs().max(fd.abs()).max(1e-3 * gmax);
            worst = worst.max(err);
            assert!(
                err <= 1e-7,
                "d={} m={} nTh={}: entry {i}: adjoint {} vs differences {fd} (rel {err:.2e})",
                p.d,
                p.m,
                p.n_th,
                gv[i]
            );
        }
        eprintln!(
            "d={} m={} nTh={}: {} entries, max rel err {worst:.2e} (max |grad| {gmax:.3e})",
            p.d,
            p.m,
            p.n_th,
            theta.len()
        );
    }
}

fn small_config(iterations: u64, precision: Precision) -> OtFlowConfig {
    OtFlowConfig {
        batch_size: 256,
        iterations,
        precision,
        validate_every: 5,
        ..OtFlowConfig::default()
    }
}

/// Two runs with the same config and data are bitwise equal; another seed differs.
#[test]
fn seeded_runs_are_bitwise_equal() {
    let data = Dataset::from_toy(Toy::EightGaussians, 1000, 21).unwrap();
    let (train, val) = data.split(0.8, 22).unwrap();
    let run = |seed: u64| {
        let config = OtFlowConfig {
            seed,
            ..small_config(6, Precision::F32)
        };
        train_otflow(&config, &train, Some(&val), &mut |_| {}).unwrap()
    };
    let (a, b, c) = (run(1), run(1), run(2));
    assert_eq!(a.params, b.params);
    assert_eq!(a.losses, b.losses);
    assert_eq!(a.validation, b.validation);
    assert_ne!(a.params, c.params);
    assert_eq!(a.losses.len(), 6);
    // Validation before the first step, at 5 and after the last.
    assert_eq!(
        a.validation.iter().map(|v| v.0).collect::<Vec<_>>(),
        [0, 5, 6]
    );
}

/// The original's initialization: w = 1, c = 0, layers 2… copies of layer 1, ResNet
/// weights within ±1/√fan_in, A within the Xavier bound.
#[test]
fn initialization_follows_the_original() {
    let p = init_params(3, 16, 4, 7).unwrap();
    assert_eq!(p.r, 4);
    assert!(p.w.iter().all(|&v| v == 1.0));
    assert!(p.c_weight.iter().all(|&v| v == 0.0) && p.c_bias == 0.0);
    assert_eq!(p.k[2], p.k[1]);
    assert_eq!(p.k[3], p.k[1]);
    assert_eq!(p.b[3], p.b[1]);
    assert!(p.k[0].iter().all(|v| v.abs() <= 0.5));
    assert!(p.k[1].iter().all(|v| v.abs() <= 0.25));
    let xb = (6.0f64 / 8.0).sqrt();
    assert!(p.a.iter().all(|v| v.abs() <= xb));
    assert!(p.a.iter().any(|v| v.abs() > 0.5 * xb));
    assert!(init_params(2, 8, 1, 0).is_err());
}

/// Evaluates the trainer's right-hand side (the original odefun) on rows `y` at `t`.
fn trainer_rhs(p: &OtFlowParams, alpha0: f64, t: f64, y: &[f64], dtype: DType) -> Vec<f64> {
    let mut g = Graph::new(Cpu::new());
    let rhs = OtFlowRhs::new(p, alpha0);
    let n = y.len() / (p.d + 3);
    let tensors = OtFlowProblem::param_tensors(g.backend(), p).unwrap();
    let vars: Vec<_> = tensors
        .into_iter()
        .map(|t| {
            let t = t.cast(g.backend(), dtype).unwrap();
            g.leaf(t, false)
        })
        .collect();
    let tv = g.leaf_f64(1, 1, &[t], dtype, false).unwrap();
    let yv = g.leaf_f64(n, p.d + 3, y, dtype, false).unwrap();
    let out = rhs.eval(&mut g, tv, yv, &vars).unwrap();
    g.to_f64(out).unwrap()
}

/// The exported potential is Φ/α₀: the runtime's field v = −∇ₓ(Φ/α₀) equals the
/// trainer's dz/dt and its divergence the trainer's dl/dt = −ΔΦ/α₀ (f64: 1e-12
/// relative to the largest entry; the f32 file through `Model<f32>` against the f64
/// values: 1e-6), and the trainer's own right-hand side reproduces the reference
/// `odefun` values.
#[test]
fn export_field_equals_trained_velocity() {
    let g = golden();
    // The trainer's odefun against the original's (α₀ = 1 in the reference).
    for c in g["cases"].as_array().unwrap() {
        let p = params_from_case(c);
        let a0 = flat(&c["otflow_problem"]["alph"])[0];
        let t = c["odefun_t"].as_f64().unwrap();
        let yin = flat(&c["odefun_in"]);
        let want = flat(&c["odefun_out"]);
        let got = trainer_rhs(&p, a0, t, &yin, DType::F64);
        let scale = want.iter().fold(0.0f64, |a, v| a.max(v.abs()));
        let err = got
            .iter()
            .zip(&want)
            .fold(0.0f64, |a, (x, y)| a.max((x - y).abs()));
        assert!(err <= 1e-12 * scale, "d={}: odefun err {err:e}", p.d);
    }

    for (d, m, n_th, alpha0) in [(2, 16, 2, 5.0), (3, 8, 3, 0.7), (2, 32, 2, 1.0)] {
        let p = random_params(d, m, n_th, 40 + d as u64);
        let trained = TrainedOtFlow {
            config: OtFlowConfig {
                m,
                n_th,
                alpha: [alpha0, 30.0, 1.0],
                ..OtFlowConfig::default()
            },
            params: p.clone(),
            normalization: None,
            losses: vec![1.0],
            costs: vec![],
            validation: vec![],
        };
        let art = trained.to_artifact().unwrap();
        assert_eq!(art.card.time, [0.0, 1.0]);
        assert!(art.card.provenance.details["config"].contains("\"alpha\""));
        let n = 20;
        let x = normals(60 + d as u64, n, d, 2.0);
        let mut y = vec![0.0; n * (d + 3)];
        for (row, xr) in y.chunks_exact_mut(d + 3).zip(x.chunks_exact(d)) {
            row[..d].copy_from_slice(xr);
        }
        for t in [0.0, 0.37, 1.0] {
            let want = trainer_rhs(&p, alpha0, t, &y, DType::F64);
            let wrow = |i: usize| &want[i * (d + 3)..(i + 1) * (d + 3)];
            let scale_v = (0..n)
                .flat_map(|i| wrow(i)[..d].to_vec())
                .fold(0.0f64, |a, v| a.max(v.abs()));
            let scale_l = (0..n).fold(0.0f64, |a, i| a.max(wrow(i)[d].abs()));

            let m64 = Model::<f64>::from_artifact(art.clone()).unwrap();
            let f64f = m64.field().unwrap();
            let bytes = art.to_bytes(StorageDtype::F32).unwrap();
            let m32 = Model::<f32>::from_bytes(&bytes).unwrap();
            let f32f = m32.field().unwrap();
            let (mut e64v, mut e64l, mut e32v, mut e32l) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
            for i in 0..n {
                let xr = &x[i * d..(i + 1) * d];
                let mut v = vec![0.0; d];
                let mut sc = vec![0.0; f64f.scratch_len()];
                let div = f64f.eval_div(t, xr, &mut v, &mut sc).unwrap();
                for (a, b) in v.iter().zip(wrow(i)) {
                    e64v = e64v.max((a - b).abs());
                }
                e64l = e64l.max((div - wrow(i)[d]).abs());
                let x32: Vec<f32> = xr.iter().map(|&v| v as f32).collect();
                let mut v32 = vec![0.0f32; d];
                let mut sc32 = vec![0.0f32; f32f.scratch_len()];
                let div32 = f32f.eval_div(t as f32, &x32, &mut v32, &mut sc32).unwrap();
                for (a, b) in v32.iter().zip(wrow(i)) {
                    e32v = e32v.max((f64::from(*a) - b).abs());
                }
                e32l = e32l.max((f64::from(div32) - wrow(i)[d]).abs());
            }
            let (r64v, r64l, r32v, r32l) = (
                e64v / scale_v,
                e64l / scale_l,
                e32v / scale_v,
                e32l / scale_l,
            );
            eprintln!(
                "d={d} m={m} nTh={n_th} α₀={alpha0} t={t}: field rel err f64 {r64v:.1e}, \
                 div {r64l:.1e}; f32 {r32v:.1e}, div {r32l:.1e}"
            );
            assert!(r64v <= 1e-12 && r64l <= 1e-12, "f64 {r64v:e} {r64l:e}");
            assert!(r32v <= 1e-6 && r32l <= 1e-6, "f32 {r32v:e} {r32l:e}");
        }
    }

    // The trainer's NLL of data points equals the one obtained by integrating the
    // exported model's runtime field and its exact divergence (d/dt l = div v) with the
    // same RK4 grid from the points at t = 0 to t = 1.
    let (d, alpha0, nt) = (2, 5.0, 6);
    let p = random_params(d, 16, 2, 42);
    let trained = TrainedOtFlow {
        config: OtFlowConfig {
            m: 16,
            alpha: [alpha0, 30.0, 1.0],
            ..OtFlowConfig::default()
        },
        params: p.clone(),
        normalization: None,
        losses: vec![],
        costs: vec![],
        validation: vec![],
    };
    let model = Model::<f64>::from_artifact(trained.to_artifact().unwrap()).unwrap();
    let field = model.field().unwrap();
    let x = normals(70, 12, d, 2.0);
    let problem = OtFlowProblem::new([alpha0, 30.0, 1.0], nt, PrecisionPolicy::f64()).unwrap();
    let mut graph = Graph::new(Cpu::new());
    let nll = problem.nll(&mut graph, &p, &x).unwrap();
    let mut sc = vec![0.0; field.scratch_len()];
    let f = |t: f64, y: &[f64], sc: &mut [f64]| -> Vec<f64> {
        let mut v = vec![0.0; d];
        let div = field.eval_div(t, &y[..d], &mut v, sc).unwrap();
        v.push(div);
        v
    };
    let h = 1.0 / nt as f64;
    for (i, xr) in x.chunks_exact(d).enumerate() {
        let mut y = xr.to_vec();
        y.push(0.0);
        let mut t = 0.0;
        for _ in 0..nt {
            let shift = |a: &[f64], c: f64, k: &[f64]| -> Vec<f64> {
                a.iter().zip(k).map(|(u, v)| u + c * v).collect()
            };
            let k1 = f(t, &y, &mut sc);
            let k2 = f(t + h / 2.0, &shift(&y, h / 2.0, &k1), &mut sc);
            let k3 = f(t + h / 2.0, &shift(&y, h / 2.0, &k2), &mut sc);
            let k4 = f(t + h, &shift(&y, h, &k3), &mut sc);
            for (j, yj) in y.iter_mut().enumerate() {
                *yj += h / 6.0 * (k1[j] + 2.0 * k2[j] + 2.0 * k3[j] + k4[j]);
            }
            t += h;
        }
        let want = 0.5 * (y[0] * y[0] + y[1] * y[1]) + (2.0 * std::f64::consts::PI).ln() - y[d];
        assert!(
            rel(nll[i], want) <= 1e-12,
            "sample {i}: trainer NLL {} vs runtime path {want}",
            nll[i]
        );
    }

    // The normalization travels with the file.
    let norm = Normalization::new(vec![0.5, -1.0], vec![2.0, 3.0]).unwrap();
    let trained = TrainedOtFlow {
        config: OtFlowConfig::default(),
        params: init_params(2, 32, 2, 0).unwrap(),
        normalization: Some(norm.clone()),
        losses: vec![],
        costs: vec![],
        validation: vec![(0, 4.0)],
    };
    let art = trained.to_artifact().unwrap();
    assert_eq!(art.card.normalization, Some(norm));
    assert_eq!(art.card.provenance.details["validation_nll"], "4");
}

/// −log p(x) under the true 8gaussians density (centres (±1, 0)·4/1.414, (0, ±1)·4/1.414
/// and (±1, ±1)/√2·4/1.414, standard deviation 0.5/1.414 per coordinate, equal weights).
fn true_nll(x: &[f64]) -> f64 {
    let s = 1.0 / 2f64.sqrt();
    let centres = [
        (1.0, 0.0),
        (-1.0, 0.0),
        (0.0, 1.0),
        (0.0, -1.0),
        (s, s),
        (s, -s),
        (-s, s),
        (-s, -s),
    ];
    let sd = 0.5 / 1.414;
    let mut p = 0.0;
    for (cx, cy) in centres {
        let (mx, my) = (4.0 * cx / 1.414, 4.0 * cy / 1.414);
        let q = ((x[0] - mx).powi(2) + (x[1] - my).powi(2)) / (sd * sd);
        p += (-0.5 * q).exp() / (2.0 * std::f64::consts::PI * sd * sd) / 8.0;
    }
    -p.ln()
}

/// 8gaussians end to end. Training (the paper's settings except the batch, 1024, and
/// the number of iterations) must lower the validation NLL clearly and end below the
/// NLL of the best Gaussian fit of the data, ½ln det(2πeΣ) with Σ the validation set's
/// covariance: no unimodal Gaussian model can get there, so passing shows the flow has
/// learned the modes. It cannot beat the true density's NLL (the validation set's mean
/// −log p under the exact mixture, ≈ 2.83) by more than sampling noise, which checks
/// that the likelihood (z(1) and l(1)) is computed consistently. Then the exported
/// model, loaded as `Model<f32>` and sampled with the runtime's RK4 sampler from the
/// prior at t = 1 to t = 0, must be within k = 3 times the 95th percentile of the
/// data-vs-data energy distance of held-out data (as in the flow-matching test).
#[test]
fn train_8gaussians_and_sample_through_the_runtime() {
    let data = Dataset::from_toy(Toy::EightGaussians, 12_000, 31).unwrap();
    let (train, val) = data.split(10_000.0 / 12_000.0, 32).unwrap();
    let config = OtFlowConfig {
        batch_size: 256,
        iterations: 500,
        validate_every: 100,
        schedule: Schedule::Step {
            every: 200,
            factor: 0.5,
        },
        optimizer: AdamConfig::adam(0.1),
        ..OtFlowConfig::default()
    };
    let start = std::time::Instant::now();
    let mut time_sum = 0.0;
    let mut seen = 0;
    let trained = train_otflow(&config, &train, Some(&val), &mut |p: &Progress| {
        time_sum += p.seconds;
        seen += 1;
        if let Some(val_nll) = p.validation_nll {
            eprintln!(
                "it {:4}: J {:.4} (L {:.4}, C {:.4}, R {:.4}), |g| {:.3e}, lr {:.4}, val NLL \
                 {:.4}",
                p.iteration,
                p.costs.j,
                p.costs.cost_l,
                p.costs.cost_c,
                p.costs.cost_r,
                p.grad_norm,
                p.lr,
                val_nll
            );
        }
    })
    .unwrap();
    let elapsed = start.elapsed().as_secs_f64();
    eprintln!(
        "training: {seen} iterations in {elapsed:.1} s ({:.4} s/iteration at batch {})",
        time_sum / seen as f64,
        config.batch_size
    );
    assert_eq!(seen, 500);
    let initial = trained.validation[0].1;
    let last = trained.validation_nll().unwrap();

    // Reference numbers from the data alone.
    let nv = val.n as f64;
    let tn: Vec<f64> = val.x.chunks_exact(2).map(true_nll).collect();
    let h = tn.iter().sum::<f64>() / nv;
    let se = (tn.iter().map(|v| (v - h).powi(2)).sum::<f64>() / (nv - 1.0)).sqrt() / nv.sqrt();
    let mean = [0, 1].map(|k| val.x.chunks_exact(2).map(|r| r[k]).sum::<f64>() / nv);
    let mut cov = [0.0; 3];
    for r in val.x.chunks_exact(2) {
        let (a, b) = (r[0] - mean[0], r[1] - mean[1]);
        cov[0] += a * a / nv;
        cov[1] += a * b / nv;
        cov[2] += b * b / nv;
    }
    let det = cov[0] * cov[2] - cov[1] * cov[1];
    let gauss_nll = 0.5 * (det.ln() + 2.0 * (1.0 + (2.0 * std::f64::consts::PI).ln()));
    eprintln!(
        "validation NLL: initial {initial:.4}, final {last:.4}; best Gaussian {gauss_nll:.4}; \
         true density {h:.4} ± {se:.4}"
    );
    assert!(
        last < initial - 1.0,
        "no clear improvement: {initial} → {last}"
    );
    assert!(
        last < gauss_nll,
        "final NLL {last} ≥ best Gaussian {gauss_nll}"
    );
    assert!(
        last > h - 4.0 * se,
        "NLL {last} below the true density's {h}"
    );

    // Sampling the exported model through the runtime.
    let art = trained.to_artifact().unwrap();
    let n_eval = 1500;
    let samples = sample_model(&art, n_eval, 16, 77);
    let held_out = Toy::EightGaussians.sample(n_eval, 1000).unwrap();
    let stat = energy_distance(&samples, &held_out);
    let null = null_distribution(n_eval);
    let p95 = null[(0.95 * (null.len() - 1) as f64).round() as usize];
    let k = 3.0;
    eprintln!(
        "energy distance: model vs held-out {stat:.5}; data vs data: median {:.5}, p95 {p95:.5}; \
         threshold {:.5}",
        null[null.len() / 2],
        k * p95
    );
    assert!(stat <= k * p95, "model {stat} vs threshold {}", k * p95);
}

/// Config JSON round trip, unknown keys and bad settings are errors, not panics.
#[test]
fn config_json_and_errors() {
    let c = OtFlowConfig::default();
    assert_eq!(c.m, 32);
    assert_eq!(c.n_th, 2);
    assert_eq!((c.nt, c.nt_val), (8, 12));
    assert_eq!(c.batch_size, 5000);
    assert_eq!(c.alpha, [1.0, 30.0, 1.0]);
    assert_eq!(c.optimizer.lr, 0.1);
    assert_eq!(
        c.schedule,
        Schedule::Step {
            every: 500,
            factor: 0.5
        }
    );
    let back = OtFlowConfig::from_json(&c.to_json().unwrap()).unwrap();
    assert_eq!(back, c);
    let p = OtFlowConfig::from_json(r#"{"precision": "bf16", "nt": 4}"#).unwrap();
    assert_eq!(p.precision, Precision::Bf16);
    assert_eq!(p.nt, 4);
    assert!(OtFlowConfig::from_json(r#"{"alph": [1, 2, 3]}"#).is_err());
    assert!(OtFlowConfig::from_json(r#"{"precision": "f8"}"#).is_err());
    let data = Dataset::from_toy(Toy::EightGaussians, 100, 1).unwrap();
    let bad = [
        OtFlowConfig {
            n_th: 1,
            ..small_config(1, Precision::F64)
        },
        OtFlowConfig {
            nt: 0,
            ..small_config(1, Precision::F64)
        },
        OtFlowConfig {
            alpha: [0.0, 1.0, 1.0],
            ..small_config(1, Precision::F64)
        },
        OtFlowConfig {
            clip_norm: Some(-1.0),
            ..small_config(1, Precision::F64)
        },
        small_config(0, Precision::F64),
    ];
    for b in bad {
        assert!(train_otflow(&b, &data, None, &mut |_| {}).is_err(), "{b:?}");
    }
    let val3 = Dataset::new(2, 3, vec![0.0; 6]).unwrap();
    assert!(train_otflow(
        &small_config(1, Precision::F64),
        &data,
        Some(&val3),
        &mut |_| {}
    )
    .is_err());
}

/// Every precision policy trains (a few steps, finite and decreasing the NLL term is
/// not asserted here); bf16 and f16 run with dynamic adjoint scaling.
#[test]
fn every_precision_runs() {
    let data = Dataset::from_toy(Toy::EightGaussians, 300, 41).unwrap();
    for prec in [
        Precision::F64,
        Precision::F32,
        Precision::Bf16,
        Precision::F16,
    ] {
        let t = train_otflow(&small_config(2, prec), &data, None, &mut |_| {}).unwrap();
        assert!(t.losses.iter().all(|l| l.is_finite()), "{prec:?}");
    }
}

/// The gradient under each precision policy against the f64 gradient (relative error
/// in the Euclidean norm over all parameters), on initialized parameters and an
/// 8gaussians batch with the paper's α and nt. f32 must agree to 1e-5 (its unit
/// roundoff is 6e-8; the adjoint of 8 RK4 steps through a 32-wide network may amplify
/// it by a few hundred, no more). The 16-bit policies' error is O(u_L) (MATH.md §8):
/// at most 4 machine epsilons of the network precision (bf16 4·2⁻⁷, f16 4·2⁻¹⁰).
#[test]
fn precision_policies_gradient_error() {
    let p = init_params(2, 32, 2, 3).unwrap();
    let x = Toy::EightGaussians.sample(256, 9).unwrap();
    let mut graph = Graph::new(Cpu::new());
    let grad = |policy: PrecisionPolicy, graph: &mut Graph<Cpu>| -> Vec<f64> {
        let problem = OtFlowProblem::new([1.0, 30.0, 1.0], 8, policy).unwrap();
        let (_, g) = problem.costs_and_gradient(graph, &p, &x).unwrap();
        let mut v: Vec<f64> = g.k.iter().flatten().copied().collect();
        v.extend(g.b.iter().flatten());
        v.extend(&g.w);
        v.extend(&g.a);
        v.extend(&g.c_weight);
        v.push(g.c_bias);
        v
    };
    let reference = grad(PrecisionPolicy::f64(), &mut graph);
    let norm = reference.iter().map(|v| v * v).sum::<f64>().sqrt();
    for prec in [Precision::F32, Precision::Bf16, Precision::F16] {
        let g = grad(prec.policy(), &mut graph);
        let err = g
            .iter()
            .zip(&reference)
            .map(|(a, b)| (a - b).powi(2))
            .sum::<f64>()
            .sqrt()
            / norm;
        eprintln!("{prec:?}: gradient relative error {err:.3e}");
        assert!(err.is_finite());
        let bound = match prec {
            Precision::F32 => 1e-5,
            _ => 4.0 * prec.policy().network_epsilon(),
        };
        assert!(err <= bound, "{prec:?} gradient error {err:e} > {bound:e}");
    }
}

/// With `normalize`, training runs on standardized data and the reported validation
/// NLL is in data coordinates: the model's NLL of the standardized points plus Σ ln σ
/// (the change of variables x = μ + σ·y). Checked at iteration 0 against the problem's
/// NLL of the initial parameters, and the artifact records the normalization.
#[test]
fn normalization_reports_data_coordinates() {
    let x: Vec<f64> = Toy::Moons
        .sample(400, 3)
        .unwrap()
        .chunks_exact(2)
        .flat_map(|r| [3.0 * r[0] + 1.0, 0.5 * r[1] - 2.0])
        .collect();
    let data = Dataset::new(400, 2, x).unwrap();
    let (train, val) = data.split(0.75, 4).unwrap();
    let config = OtFlowConfig {
        normalize: true,
        ..small_config(1, Precision::F64)
    };
    let t = train_otflow(&config, &train, Some(&val), &mut |_| {}).unwrap();
    let norm = t.normalization.clone().unwrap();
    // Independent statistics of the training set.
    let n = train.n as f64;
    for k in 0..2 {
        let mean = train.x.iter().skip(k).step_by(2).sum::<f64>() / n;
        assert!((norm.mean[k] - mean).abs() <= 1e-12 * mean.abs().max(1.0));
    }
    let mut y = val.x.clone();
    for r in y.chunks_exact_mut(2) {
        for (k, v) in r.iter_mut().enumerate() {
            *v = (*v - norm.mean[k]) / norm.std[k];
        }
    }
    let p0 = init_params(2, config.m, config.n_th, config.seed).unwrap();
    let problem = OtFlowProblem::new(config.alpha, config.nt_val, PrecisionPolicy::f64()).unwrap();
    let mut graph = Graph::new(Cpu::new());
    let nll = problem.nll(&mut graph, &p0, &y).unwrap();
    let want =
        nll.iter().sum::<f64>() / val.n as f64 + norm.std.iter().map(|s| s.ln()).sum::<f64>();
    assert_eq!(t.validation[0].0, 0);
    assert!(
        rel(t.validation[0].1, want) <= 1e-12,
        "{} vs {want}",
        t.validation[0].1
    );
    let art = t.to_artifact().unwrap();
    assert_eq!(art.card.normalization, Some(norm));
}
