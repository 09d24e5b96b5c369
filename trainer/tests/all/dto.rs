//! Discretize-then-optimize: the discrete adjoint's gradients (initial state,
//! parameters, time grid) against central finite differences of the discrete objective
//! in f64, for Euler, Heun and RK4 on a nonlinear ODE with a small MLP right-hand side
//! and on a linear ODE whose discrete solution has a closed form; the memory held
//! (trajectory plus one step); argument and scaling errors. Euler–Maruyama step maps
//! the same way (with the Brownian increments regenerated in the backward pass), their
//! paths against the runtime's SDE solver on the same generator, and their gradients in
//! mixed precision.

use socflow_runtime::brownian::Brownian;
use socflow_runtime::field::FnField;
use socflow_runtime::sde::{
    solve_sde_block, ConstantDiffusion, SdeOptions, SdeScheme, SdeWorkspace,
};
use socflow_trainer::autodiff::{self, Cpu, DType, Graph, Tensor, Var};
use socflow_trainer::dto::{
    BrownianNoise, Cotangents, Error, Method, PrecisionPolicy, Rhs, SdeRhs, Solver, Trajectory,
};

type R<T> = autodiff::Result<T>;

/// Largest relative error allowed between the adjoint and finite differences (f64).
const TOL: f64 = 1e-7;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// splitmix64 uniforms in [lo, hi).
fn uniforms(seed: u64, n: usize, lo: f64, hi: f64) -> Vec<f64> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            lo + (hi - lo) * ((z >> 11) as f64 / (1u64 << 53) as f64)
        })
        .collect()
}

fn t64(rows: usize, cols: usize, data: &[f64]) -> Tensor<Cpu> {
    Tensor::from_f64(&Cpu::new(), rows, cols, data, DType::F64).unwrap()
}

fn vals(t: &Tensor<Cpu>) -> Vec<f64> {
    t.to_f64(&Cpu::new()).unwrap()
}

/// Fourth-order central difference of `f` at `x` in coordinate direction (h chosen as
/// in the autodiff's checker).
fn fd(x: f64, mut f: impl FnMut(f64) -> f64) -> f64 {
    let h = (1e-3 * x.abs().max(1.0)).log2().round().exp2();
    (f(x - 2.0 * h) - 8.0 * f(x - h) + 8.0 * f(x + h) - f(x + 2.0 * h)) / (12.0 * h)
}

/// max over entries of |a − b| / max(|a|, |b|, 1e-3·max|a|) (the checker's floor).
fn rel_err(ad: &[f64], fdv: &[f64]) -> f64 {
    assert_eq!(ad.len(), fdv.len());
    let scale = ad.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    ad.iter()
        .zip(fdv)
        .map(|(a, f)| {
            let r = (a - f).abs() / a.abs().max(f.abs()).max(1e-3 * scale);
            if r.is_nan() {
                f64::INFINITY
            } else {
                r
            }
        })
        .fold(0.0, f64::max)
}

/// Finite differences of `objective` in every entry of `x`.
fn fd_all(x: &[f64], mut objective: impl FnMut(&[f64]) -> f64) -> Vec<f64> {
    let mut p = x.to_vec();
    (0..x.len())
        .map(|e| {
            let d = fd(x[e], |v| {
                p[e] = v;
                objective(&p)
            });
            p[e] = x[e];
            d
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Problem (a): y' = W₂ tanh(W₁ y + b₁ + t c) + b₂, batch rows
// ---------------------------------------------------------------------------------------

const BATCH: usize = 3;
const D: usize = 2;
const M: usize = 4;

/// The MLP right-hand side: params W₁ (M×D), b₁ (1×M), c (1×M), W₂ (D×M), b₂ (1×D).
fn mlp(g: &mut Graph<Cpu>, t: Var, y: Var, p: &[Var]) -> R<Var> {
    let z = g.matmul(y, p[0], false, true)?;
    let z = g.add(z, p[1])?;
    let tc = g.mul(p[2], t)?;
    let z = g.add(z, tc)?;
    let a = g.tanh(z)?;
    let o = g.matmul(a, p[3], false, true)?;
    g.add(o, p[4])
}

fn mlp_shapes() -> [(usize, usize); 5] {
    [(M, D), (1, M), (1, M), (D, M), (1, D)]
}

fn mlp_params() -> Vec<Vec<f64>> {
    mlp_shapes()
        .iter()
        .enumerate()
        .map(|(k, &(r, c))| uniforms(100 + k as u64, r * c, -0.9, 0.9))
        .collect()
}

/// A non-uniform grid.
fn grid() -> Vec<f64> {
    vec![0.0, 0.1, 0.25, 0.3, 0.5, 0.62, 0.8, 1.0]
}

/// Weights of the loss ℓ = Σ P⊙y_N + ½Σ y_N² + Σ Q⊙y_2 + Σ Q⊙y_0.
fn loss_weights() -> (Vec<f64>, Vec<f64>) {
    (
        uniforms(7, BATCH * D, -1.0, 1.0),
        uniforms(8, BATCH * D, -1.0, 1.0),
    )
}

fn loss_of(traj: &Trajectory<Cpu>) -> f64 {
    let (p, q) = loss_weights();
    let yn = vals(traj.final_state());
    let y2 = vals(&traj.states()[2]);
    let y0 = vals(&traj.states()[0]);
    let mut l = 0.0;
    for e in 0..yn.len() {
        l += p[e] * yn[e] + 0.5 * yn[e] * yn[e] + q[e] * y2[e] + q[e] * y0[e];
    }
    l
}

fn cotangents_of(traj: &Trajectory<Cpu>) -> Cotangents<Cpu> {
    let (p, q) = loss_weights();
    let yn = vals(traj.final_state());
    let term: Vec<f64> = p.iter().zip(&yn).map(|(p, y)| p + y).collect();
    Cotangents {
        terminal: t64(BATCH, D, &term),
        states: vec![(2, t64(BATCH, D, &q)), (0, t64(BATCH, D, &q))],
    }
}

fn to_tensors(params: &[Vec<f64>], shapes: &[(usize, usize)]) -> Vec<Tensor<Cpu>> {
    params
        .iter()
        .zip(shapes)
        .map(|(v, &(r, c))| t64(r, c, v))
        .collect()
}

fn solve_mlp(solver: &Solver, y0: &[f64], params: &[Vec<f64>], times: &[f64]) -> Trajectory<Cpu> {
    let mut g = Graph::new(Cpu::new());
    let ps = to_tensors(params, &mlp_shapes());
    solver
        .forward(&mut g, &mlp, &t64(BATCH, D, y0), times, &ps)
        .unwrap()
}

#[test]
fn mlp_gradients_match_finite_differences() {
    let y0 = uniforms(1, BATCH * D, -1.0, 1.0);
    let params = mlp_params();
    let times = grid();
    for method in Method::ALL {
        let solver = Solver::new(method, PrecisionPolicy::f64());
        let mut g = Graph::new(Cpu::new());
        let ps = to_tensors(&params, &mlp_shapes());
        let traj = solver
            .forward(&mut g, &mlp, &t64(BATCH, D, &y0), &times, &ps)
            .unwrap();
        let cot = cotangents_of(&traj);
        let grad = solver
            .backward(&mut g, &mlp, &traj, &ps, &cot, true)
            .unwrap();
        assert_eq!(grad.stats.retries, 0);
        assert_eq!(grad.stats.final_scale, None);

        let obj = |y0: &[f64], params: &[Vec<f64>], times: &[f64]| {
            loss_of(&solve_mlp(&solver, y0, params, times))
        };
        let fd_y0 = fd_all(&y0, |y| obj(y, &params, &times));
        let e_y0 = rel_err(&vals(&grad.y0), &fd_y0);
        let mut e_p: f64 = 0.0;
        for k in 0..params.len() {
            let fd_p = fd_all(&params[k], |v| {
                let mut p = params.clone();
                p[k] = v.to_vec();
                obj(&y0, &p, &times)
            });
            e_p = e_p.max(rel_err(&vals(&grad.params[k]), &fd_p));
        }
        let fd_t = fd_all(&times, |t| obj(&y0, &params, t));
        let ad_t = grad.times.clone().unwrap();
        let e_t = rel_err(&ad_t, &fd_t);
        eprintln!(
            "mlp {}: rel err y0 {e_y0:.2e}, params {e_p:.2e}, times {e_t:.2e}",
            method.name()
        );
        assert!(e_y0 <= TOL, "{}: y0 {e_y0:e}", method.name());
        assert!(e_p <= TOL, "{}: params {e_p:e}", method.name());
        assert!(
            e_t <= TOL,
            "{}: times {e_t:e} ({ad_t:?} vs {fd_t:?})",
            method.name()
        );
        // The grid's gradient is not trivially zero: interior points matter.
        assert!(ad_t[3].abs() > 1e-6);
    }
}

// ---------------------------------------------------------------------------------------
// Problem (b): y' = A y; the discrete solution is y_N = Π R(h_i A) y₀
// ---------------------------------------------------------------------------------------

const LD: usize = 3;
const LB: usize = 2;

type Mat = Vec<Vec<f64>>;

fn matmul(a: &Mat, b: &Mat) -> Mat {
    let (n, k, m) = (a.len(), b.len(), b[0].len());
    (0..n)
        .map(|i| {
            (0..m)
                .map(|j| (0..k).map(|l| a[i][l] * b[l][j]).sum())
                .collect()
        })
        .collect()
}

fn eye(n: usize) -> Mat {
    (0..n)
        .map(|i| (0..n).map(|j| if i == j { 1.0 } else { 0.0 }).collect())
        .collect()
}

/// The stability polynomial R(hA) = Σ_{k ≤ order} (hA)^k / k!.
fn stability(method: Method, a: &Mat, h: f64) -> Mat {
    let mut r = eye(LD);
    let mut term = eye(LD);
    for k in 1..=method.order() {
        let ha: Mat = a
            .iter()
            .map(|row| row.iter().map(|v| v * h / k as f64).collect())
            .collect();
        term = matmul(&term, &ha);
        for i in 0..LD {
            for j in 0..LD {
                r[i][j] += term[i][j];
            }
        }
    }
    r
}

/// M = R(h_{N−1}A) ⋯ R(h_0 A), so y_N = M y₀ (columns) and Y_N = Y₀ Mᵀ (rows).
fn propagator(method: Method, a: &Mat, times: &[f64]) -> Mat {
    let mut m = eye(LD);
    for w in times.windows(2) {
        m = matmul(&stability(method, a, w[1] - w[0]), &m);
    }
    m
}

fn rows(v: &[f64], r: usize, c: usize) -> Mat {
    (0..r).map(|i| v[i * c..(i + 1) * c].to_vec()).collect()
}

fn transpose(a: &Mat) -> Mat {
    (0..a[0].len())
        .map(|j| a.iter().map(|row| row[j]).collect())
        .collect()
}

fn closed_form_final(method: Method, a: &[f64], y0: &[f64], times: &[f64]) -> Vec<f64> {
    let m = propagator(method, &rows(a, LD, LD), times);
    matmul(&rows(y0, LB, LD), &transpose(&m)).concat()
}

fn linear_loss(yn: &[f64], p: &[f64]) -> f64 {
    yn.iter().zip(p).map(|(y, p)| p * y + 0.5 * y * y).sum()
}

fn linear(g: &mut Graph<Cpu>, _t: Var, y: Var, p: &[Var]) -> R<Var> {
    g.matmul(y, p[0], false, true)
}

#[test]
fn linear_ode_matches_closed_form_discrete_solution() {
    let a: Vec<f64> = uniforms(11, LD * LD, -1.0, 1.0);
    let y0 = uniforms(12, LB * LD, -1.0, 1.0);
    let p = uniforms(13, LB * LD, -1.0, 1.0);
    let times = vec![0.0, 0.07, 0.2, 0.31, 0.5, 0.55, 0.9, 1.2, 1.5];
    for method in Method::ALL {
        let solver = Solver::new(method, PrecisionPolicy::f64());
        let mut g = Graph::new(Cpu::new());
        let ps = vec![t64(LD, LD, &a)];
        let traj = solver
            .forward(&mut g, &linear, &t64(LB, LD, &y0), &times, &ps)
            .unwrap();
        let yn = vals(traj.final_state());
        let want = closed_form_final(method, &a, &y0, &times);
        let e_fwd = rel_err(&yn, &want);
        assert!(e_fwd < 1e-13, "{}: forward {e_fwd:e}", method.name());

        let term: Vec<f64> = yn.iter().zip(&p).map(|(y, p)| y + p).collect();
        let cot = Cotangents::terminal(t64(LB, LD, &term));
        let grad = solver
            .backward(&mut g, &linear, &traj, &ps, &cot, true)
            .unwrap();

        // ∂ℓ/∂Y₀ = G·M exactly, G = ∂ℓ/∂Y_N.
        let m = propagator(method, &rows(&a, LD, LD), &times);
        let g_y0 = matmul(&rows(&term, LB, LD), &m).concat();
        let e_y0 = rel_err(&vals(&grad.y0), &g_y0);
        // A and the grid: finite differences of the closed form (not of the solver).
        let obj = |a: &[f64], t: &[f64]| linear_loss(&closed_form_final(method, a, &y0, t), &p);
        let e_a = rel_err(&vals(&grad.params[0]), &fd_all(&a, |v| obj(v, &times)));
        let e_t = rel_err(
            grad.times.as_ref().unwrap(),
            &fd_all(&times, |t| obj(&a, t)),
        );
        eprintln!(
            "linear {}: forward {e_fwd:.2e}, y0 {e_y0:.2e}, A {e_a:.2e}, times {e_t:.2e}",
            method.name()
        );
        assert!(e_y0 < 1e-12, "{}: y0 {e_y0:e}", method.name());
        assert!(e_a <= TOL, "{}: A {e_a:e}", method.name());
        assert!(e_t <= TOL, "{}: times {e_t:e}", method.name());
    }
}

// ---------------------------------------------------------------------------------------
// Memory: trajectory + one step
// ---------------------------------------------------------------------------------------

#[test]
fn memory_is_trajectory_plus_one_step() {
    let y0 = uniforms(1, BATCH * D, -1.0, 1.0);
    let params = mlp_params();
    for (policy, elem) in [(PrecisionPolicy::f64(), 8), (PrecisionPolicy::f16(), 2)] {
        let solver = Solver::new(Method::Rk4, policy);
        let mut fwd_tapes = Vec::new();
        let mut bwd_tapes = Vec::new();
        let mut traj_bytes = Vec::new();
        let steps = [8usize, 16, 32];
        for &n in &steps {
            let times: Vec<f64> = (0..=n).map(|i| i as f64 / n as f64).collect();
            let mut g = Graph::new(Cpu::new());
            let ps = to_tensors(&params, &mlp_shapes());
            let traj = solver
                .forward(&mut g, &mlp, &t64(BATCH, D, &y0), &times, &ps)
                .unwrap();
            assert!(g.is_empty(), "the forward pass leaves no tape");
            let cot = Cotangents::terminal(t64(BATCH, D, &[1.0; BATCH * D]));
            let grad = solver
                .backward(&mut g, &mlp, &traj, &ps, &cot, true)
                .unwrap();
            assert!(g.is_empty(), "the backward pass leaves no tape");
            let mem = traj.memory();
            assert_eq!(traj.states().len(), n + 1);
            assert_eq!(mem.trajectory_bytes, (n + 1) * BATCH * D * elem);
            assert_eq!(mem.total(), mem.trajectory_bytes + mem.max_step_tape_bytes);
            fwd_tapes.push(mem.max_step_tape_bytes);
            bwd_tapes.push(grad.stats.max_step_tape_bytes);
            traj_bytes.push(mem.trajectory_bytes);
        }
        eprintln!(
            "memory {:?}: trajectory {traj_bytes:?}, forward step tape {fwd_tapes:?}, \
             backward step tape {bwd_tapes:?}",
            policy.network
        );
        // Linear in N with slope one stored state; the step tapes do not grow.
        let state = BATCH * D * elem;
        for k in 1..steps.len() {
            assert_eq!(
                traj_bytes[k] - traj_bytes[k - 1],
                (steps[k] - steps[k - 1]) * state
            );
        }
        assert!(fwd_tapes.iter().all(|&b| b == fwd_tapes[0] && b > 0));
        assert!(bwd_tapes.iter().all(|&b| b == bwd_tapes[0] && b > 0));
        // One step's tape holds far less than a whole-trajectory tape would: the forward
        // step alone is more than one state, so N steps would exceed it N-fold.
        assert!(fwd_tapes[0] > state);
    }
}

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

#[test]
fn bad_arguments_are_typed_errors() {
    let solver = Solver::new(Method::Heun, PrecisionPolicy::f64());
    let mut g = Graph::new(Cpu::new());
    let ps = to_tensors(&mlp_params(), &mlp_shapes());
    let y0 = t64(BATCH, D, &[0.0; BATCH * D]);
    for bad in [
        vec![0.0],
        vec![0.0, 0.0],
        vec![0.0, 1.0, 0.5],
        vec![0.0, f64::NAN],
    ] {
        let e = solver.forward(&mut g, &mlp, &y0, &bad, &ps).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    }
    // A right-hand side of the wrong shape.
    let wrong = |g: &mut Graph<Cpu>, _t: Var, y: Var, _p: &[Var]| -> R<Var> { g.sum_cols(y) };
    let e = solver
        .forward(&mut g, &wrong, &y0, &[0.0, 1.0], &ps)
        .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    // A right-hand side whose graph ops fail (a shape mismatch) passes the error on.
    let mismatch = |g: &mut Graph<Cpu>, _t: Var, y: Var, p: &[Var]| -> R<Var> {
        g.matmul(y, p[0], false, false)
    };
    let e = solver
        .forward(&mut g, &mismatch, &y0, &[0.0, 1.0], &ps)
        .unwrap_err();
    assert!(matches!(e, Error::Autodiff(_)), "{e}");
    // Cotangents of the wrong shape, of a state past the end, non-finite.
    let traj = solver.forward(&mut g, &mlp, &y0, &[0.0, 1.0], &ps).unwrap();
    let bad = [
        Cotangents::terminal(t64(1, D, &[1.0; D])),
        Cotangents {
            terminal: t64(BATCH, D, &[1.0; BATCH * D]),
            states: vec![(2, t64(BATCH, D, &[1.0; BATCH * D]))],
        },
    ];
    for c in &bad {
        let e = solver
            .backward(&mut g, &mlp, &traj, &ps, c, false)
            .unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    }
    let nan = Cotangents::terminal(t64(BATCH, D, &[f64::NAN; BATCH * D]));
    let e = solver
        .backward(&mut g, &mlp, &traj, &ps, &nan, false)
        .unwrap_err();
    assert_eq!(e, Error::NonFiniteCotangent { index: 1 });
    // A policy whose network is wider than its state.
    let mut policy = PrecisionPolicy::f32();
    policy.network = DType::F64;
    let e = Solver::new(Method::Euler, policy)
        .forward(&mut g, &mlp, &y0, &[0.0, 1.0], &ps)
        .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
}

/// A right-hand side whose Jacobian overflows at L whatever the seed: the scaling
/// gives up after the documented number of tries with a typed error.
#[test]
fn scaling_gives_up_with_a_typed_error() {
    struct Overflow;
    impl Rhs<Cpu> for Overflow {
        fn eval(&self, g: &mut Graph<Cpu>, _t: Var, y: Var, _p: &[Var]) -> R<Var> {
            // exp(y) at f16 overflows for y > 11.1, and so does its derivative.
            g.exp(y)
        }
    }
    let mut solver = Solver::new(Method::Euler, PrecisionPolicy::f16());
    solver.max_scale_tries = 7;
    let mut g = Graph::new(Cpu::new());
    let y0 = t64(1, 1, &[12.0]);
    let traj = solver
        .forward(&mut g, &Overflow, &y0, &[0.0, 1e-3], &[])
        .unwrap();
    let cot = Cotangents::terminal(t64(1, 1, &[1.0]));
    let e = solver
        .backward(&mut g, &Overflow, &traj, &[], &cot, false)
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::ScalingFailed {
                step: 0,
                tries: 7,
                ..
            }
        ),
        "{e}"
    );
}

// ---------------------------------------------------------------------------------------
// Euler–Maruyama step maps
// ---------------------------------------------------------------------------------------

/// dy = mlp(t, y) dt + s ⊙ (1 + ½ tanh y) ⊙ dW: the MLP drift and a multiplicative
/// diffusion with its own parameter row s (1 × D), params = mlp's then s.
struct MlpSde;

impl SdeRhs<Cpu> for MlpSde {
    fn increment(&self, g: &mut Graph<Cpu>, t: Var, h: Var, y: Var, dw: Var, p: &[Var]) -> R<Var> {
        let f = mlp(g, t, y, &p[..5])?;
        let fh = g.mul(f, h)?;
        let th = g.tanh(y)?;
        let th = g.scale(th, 0.5)?;
        let gy = g.add_scalar(th, 1.0)?;
        let gy = g.mul(gy, p[5])?;
        let noise = g.mul(gy, dw)?;
        g.add(fh, noise)
    }
}

fn sde_shapes() -> Vec<(usize, usize)> {
    let mut s = mlp_shapes().to_vec();
    s.push((1, D));
    s
}

fn sde_params() -> Vec<Vec<f64>> {
    let mut p = mlp_params();
    p.push(uniforms(120, D, 0.3, 0.8));
    p
}

fn noise(first_sample: u64) -> BrownianNoise {
    BrownianNoise {
        brownian: Brownian::new(2024),
        first_sample,
        dim: D,
    }
}

fn solve_sde(
    solver: &Solver,
    y0: &[f64],
    params: &[Vec<f64>],
    times: &[f64],
    noise: &BrownianNoise,
) -> Trajectory<Cpu> {
    let mut g = Graph::new(Cpu::new());
    let ps = to_tensors(params, &sde_shapes());
    solver
        .forward_sde(&mut g, &MlpSde, noise, &t64(BATCH, D, y0), times, &ps)
        .unwrap()
}

#[test]
fn sde_gradients_match_finite_differences() {
    // The discrete objective of an Euler–Maruyama solve on fixed noise ξ (ΔW = √h·ξ):
    // its gradient with respect to y₀, θ and the grid against finite differences.
    let y0 = uniforms(11, BATCH * D, -1.0, 1.0);
    let params = sde_params();
    // Steps of at least 0.12: ΔW = √h·ξ has derivatives that grow like h^(1/2 − k), and
    // the fourth-order differences' truncation error with them.
    let times = vec![0.0, 0.14, 0.3, 0.45, 0.58, 0.72, 0.86, 1.0];
    let nz = noise(40);
    let solver = Solver::new(Method::Euler, PrecisionPolicy::f64());
    let mut g = Graph::new(Cpu::new());
    let ps = to_tensors(&params, &sde_shapes());
    let traj = solver
        .forward_sde(&mut g, &MlpSde, &nz, &t64(BATCH, D, &y0), &times, &ps)
        .unwrap();
    let cot = cotangents_of(&traj);
    let grad = solver
        .backward_sde(&mut g, &MlpSde, &nz, &traj, &ps, &cot, true)
        .unwrap();

    let obj = |y0: &[f64], params: &[Vec<f64>], times: &[f64]| {
        loss_of(&solve_sde(&solver, y0, params, times, &nz))
    };
    let fd_y0 = fd_all(&y0, |y| obj(y, &params, &times));
    let e_y0 = rel_err(&vals(&grad.y0), &fd_y0);
    let mut e_p: f64 = 0.0;
    for k in 0..params.len() {
        let fd_p = fd_all(&params[k], |v| {
            let mut p = params.clone();
            p[k] = v.to_vec();
            obj(&y0, &p, &times)
        });
        e_p = e_p.max(rel_err(&vals(&grad.params[k]), &fd_p));
    }
    let fd_t = fd_all(&times, |t| obj(&y0, &params, t));
    let ad_t = grad.times.clone().unwrap();
    let e_t = rel_err(&ad_t, &fd_t);
    eprintln!("euler-maruyama: rel err y0 {e_y0:.2e}, params {e_p:.2e}, times {e_t:.2e}");
    assert!(e_y0 <= TOL, "y0 {e_y0:e}");
    assert!(e_p <= TOL, "params {e_p:e}");
    assert!(e_t <= TOL, "times {e_t:e} ({ad_t:?} vs {fd_t:?})");
    // The diffusion parameter matters: its gradient is not zero.
    assert!(vals(&grad.params[5]).iter().any(|v| v.abs() > 1e-3));
}

#[test]
fn sde_paths_match_the_runtime_solver_on_the_same_generator() {
    // Ornstein–Uhlenbeck dy = −θy dt + σ dW by the trainer's step map and by the
    // runtime's Euler–Maruyama with the same seed and sample indices: the same paths.
    let (theta, sigma, n, steps) = (1.3, 0.7, 5usize, 16usize);
    let y0 = uniforms(3, n * D, -2.0, 2.0);
    let times: Vec<f64> = (0..=steps).map(|i| i as f64 / steps as f64).collect();
    let ou = move |g: &mut Graph<Cpu>, _t: Var, h: Var, y: Var, dw: Var, _p: &[Var]| {
        let f = g.scale(y, -theta)?;
        let fh = g.mul(f, h)?;
        let s = g.scale(dw, sigma)?;
        g.add(fh, s)
    };
    struct Ou<F>(F);
    impl<F> SdeRhs<Cpu> for Ou<F>
    where
        F: Fn(&mut Graph<Cpu>, Var, Var, Var, Var, &[Var]) -> R<Var>,
    {
        fn increment(
            &self,
            g: &mut Graph<Cpu>,
            t: Var,
            h: Var,
            y: Var,
            dw: Var,
            p: &[Var],
        ) -> R<Var> {
            (self.0)(g, t, h, y, dw, p)
        }
    }
    let nz = BrownianNoise {
        brownian: Brownian::new(77),
        first_sample: 1000,
        dim: D,
    };
    let solver = Solver::new(Method::Euler, PrecisionPolicy::f64());
    let mut g = Graph::new(Cpu::new());
    let traj = solver
        .forward_sde(&mut g, &Ou(ou), &nz, &t64(n, D, &y0), &times, &[])
        .unwrap();
    let ours = vals(traj.final_state());

    let drift = FnField::new(D, move |_t: f64, x: &[f64], out: &mut [f64]| {
        for (o, v) in out.iter_mut().zip(x) {
            *o = -theta * v;
        }
    });
    let diffusion = ConstantDiffusion::new(D, sigma);
    let mut x = y0.clone();
    let mut ws = SdeWorkspace::new(n, D, 0);
    solve_sde_block(
        &drift,
        &diffusion,
        &SdeOptions::new(SdeScheme::EulerMaruyama, steps),
        0.0,
        1.0,
        &mut x,
        &Brownian::new(77),
        1000,
        None,
        &mut ws,
    )
    .unwrap();
    let worst = ours
        .iter()
        .zip(&x)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(
        worst < 1e-13,
        "trainer and runtime paths differ by {worst:e}"
    );
    // And the paths are noisy: not the deterministic decay.
    let det: Vec<f64> = y0
        .iter()
        .map(|v| v * (1.0 - theta / steps as f64).powi(steps as i32))
        .collect();
    let spread = ours
        .iter()
        .zip(&det)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(spread > 0.1, "paths look noiseless ({spread:e})");

    // Another first sample draws other paths; the same one the same paths.
    let other = BrownianNoise {
        first_sample: 0,
        ..nz
    };
    let again = solver
        .forward_sde(&mut g, &Ou(ou), &other, &t64(n, D, &y0), &times, &[])
        .unwrap();
    assert_ne!(vals(again.final_state()), ours);
    let same = solver
        .forward_sde(&mut g, &Ou(ou), &nz, &t64(n, D, &y0), &times, &[])
        .unwrap();
    assert_eq!(vals(same.final_state()), ours);
}

#[test]
fn sde_gradients_in_mixed_precision() {
    // The same Euler–Maruyama objective differentiated under each precision policy
    // against f64: f32 close, f16 with dynamic scaling and bf16 within their rounding.
    let y0 = uniforms(12, BATCH * D, -1.0, 1.0);
    let params = sde_params();
    let times: Vec<f64> = (0..=40).map(|i| i as f64 / 40.0).collect();
    let nz = noise(7);
    let grads = |policy: PrecisionPolicy| -> Vec<f64> {
        let solver = Solver::new(Method::Euler, policy);
        let mut g = Graph::new(Cpu::new());
        let ps = to_tensors(&params, &sde_shapes());
        let traj = solver
            .forward_sde(&mut g, &MlpSde, &nz, &t64(BATCH, D, &y0), &times, &ps)
            .unwrap();
        let yn = vals(traj.final_state());
        let cot = Cotangents::terminal(t64(BATCH, D, &yn));
        let gr = solver
            .backward_sde(&mut g, &MlpSde, &nz, &traj, &ps, &cot, false)
            .unwrap();
        let mut out = vals(&gr.y0);
        for p in &gr.params {
            out.extend(vals(p));
        }
        out
    };
    let exact = grads(PrecisionPolicy::f64());
    let rel = |v: &[f64]| {
        let num: f64 = v.iter().zip(&exact).map(|(a, b)| (a - b).powi(2)).sum();
        let den: f64 = exact.iter().map(|b| b * b).sum();
        (num / den).sqrt()
    };
    let e32 = rel(&grads(PrecisionPolicy::f32()));
    let e16 = rel(&grads(PrecisionPolicy::f16()));
    let ebf = rel(&grads(PrecisionPolicy::bf16()));
    eprintln!("euler-maruyama gradient rel err: f32 {e32:.2e}, f16 {e16:.2e}, bf16 {ebf:.2e}");
    assert!(e32 < 1e-5, "f32 {e32:e}");
    assert!(e16 < 1e-2, "f16 {e16:e}");
    assert!(ebf < 5e-2, "bf16 {ebf:e}");
}
