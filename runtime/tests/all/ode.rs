//! ODE solvers against closed-form solutions: convergence orders of the fixed-step
//! methods, adaptive Dopri5 meeting its tolerances, backward integration, per-row
//! independence of adaptive steps, the log-determinant, trajectories, dense output,
//! validation and failure reporting.

use socflow_testkit::{count_allocs, observed_order};

use socflow_runtime::field::FnField;
use socflow_runtime::ode::{
    solve_block, AdaptiveOptions, OdeOptions, OdeSolver, OdeWorkspace, SaveAt, SolveStats,
    StepSize, Trajectory,
};
use socflow_runtime::{Error, Field};

/// A test problem: field, interval, initial block, exact solution at t for a row's
/// initial state.
struct Problem {
    name: &'static str,
    field: Box<dyn Field<f64>>,
    t0: f64,
    t1: f64,
    x0: Vec<f64>,
    exact: fn(f64, f64, &[f64]) -> Vec<f64>,
}

impl Problem {
    fn dim(&self) -> usize {
        self.field.dim()
    }
    fn exact_block(&self, t: f64) -> Vec<f64> {
        self.exact_block_from(self.t0, &self.x0, t)
    }
    fn exact_block_from(&self, t0: f64, x0: &[f64], t: f64) -> Vec<f64> {
        x0.chunks(self.dim())
            .flat_map(|r| (self.exact)(t0, t, r))
            .collect()
    }
}

/// y' = −t y³: y(t) = y0 / sqrt(1 + y0²(t² − t0²)).
fn cubic() -> Problem {
    Problem {
        name: "y' = -t y^3",
        field: Box::new(FnField::new(1, |t: f64, x: &[f64], v: &mut [f64]| {
            v[0] = -t * x[0].powi(3)
        })),
        t0: 0.0,
        t1: 2.0,
        x0: vec![1.0, 0.5, -2.0],
        exact: |t0, t, x| vec![x[0] / (1.0 + x[0] * x[0] * (t * t - t0 * t0)).sqrt()],
    }
}

/// A rotation x' = ω J x with ω = 2.
fn rotation() -> Problem {
    Problem {
        name: "rotation",
        field: Box::new(FnField::new(2, |_t: f64, x: &[f64], v: &mut [f64]| {
            v[0] = -2.0 * x[1];
            v[1] = 2.0 * x[0];
        })),
        t0: 0.0,
        t1: 3.0,
        x0: vec![1.0, 0.5, -0.3, 2.0],
        exact: |t0, t, x| {
            let (s, c) = (2.0 * (t - t0)).sin_cos();
            vec![c * x[0] - s * x[1], s * x[0] + c * x[1]]
        },
    }
}

/// y' = cos(t) y (time-dependent): y(t) = y0 exp(sin t − sin t0).
fn growth() -> Problem {
    Problem {
        name: "y' = cos(t) y",
        field: Box::new(FnField::new(1, |t: f64, x: &[f64], v: &mut [f64]| {
            v[0] = t.cos() * x[0]
        })),
        t0: 0.0,
        t1: 4.0,
        x0: vec![1.0, -0.7],
        exact: |t0, t, x| vec![x[0] * (t.sin() - t0.sin()).exp()],
    }
}

/// The logistic equation y' = y(1 − y): y(t) = 1 / (1 + (1/y0 − 1) e^{−(t − t0)}).
fn logistic() -> Problem {
    Problem {
        name: "logistic",
        field: Box::new(FnField::new(1, |_t: f64, x: &[f64], v: &mut [f64]| {
            v[0] = x[0] * (1.0 - x[0])
        })),
        t0: 0.0,
        t1: 5.0,
        // Rows inside (0, 1): for rows far from the attractor (y0 = 2, say)
        // Dopri5's h^6 error term dominates its (minimized) h^5 term down to step
        // counts where the error reaches rounding, hiding the order.
        x0: vec![0.3, 0.5, 0.9],
        exact: |t0, t, x| vec![1.0 / (1.0 + (1.0 / x[0] - 1.0) * (-(t - t0)).exp())],
    }
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

fn solve(
    p: &Problem,
    opts: &OdeOptions<f64>,
    t0: f64,
    t1: f64,
    x: &mut [f64],
) -> Result<SolveStats, Error> {
    let mut ws = OdeWorkspace::for_field(&*p.field, x.len() / p.dim());
    solve_block(&*p.field, opts, t0, t1, x, None, None, &mut ws)
}

/// Fixed steps: the global error at t1 falls like h^p with p the method's order.
#[test]
fn fixed_step_convergence_orders() {
    let plans: [(OdeSolver, [usize; 4]); 4] = [
        (OdeSolver::Euler, [100, 200, 400, 800]),
        (OdeSolver::Heun, [50, 100, 200, 400]),
        (OdeSolver::Rk4, [16, 32, 64, 128]),
        // Dopri5's fifth-order error constants are small (they were minimized), so
        // the h^6 term matters down to smaller steps than for the other methods.
        (OdeSolver::Dopri5, [48, 64, 96, 128]),
    ];
    for p in [cubic(), rotation(), growth(), logistic()] {
        let exact = p.exact_block(p.t1);
        for (solver, ns) in plans {
            let errs: Vec<f64> = ns
                .iter()
                .map(|&n| {
                    let mut x = p.x0.clone();
                    let st = solve(&p, &OdeOptions::fixed(solver, n), p.t0, p.t1, &mut x).unwrap();
                    let rows = x.len() / p.dim();
                    // FSAL saves one evaluation a step after the first.
                    let per_row = match solver {
                        OdeSolver::Dopri5 => 6 * n + 1,
                        s => s.stages() * n,
                    };
                    assert_eq!(st.nfe, (per_row * rows) as u64);
                    assert_eq!(st.steps, (n * rows) as u64);
                    max_abs_diff(&x, &exact)
                })
                .collect();
            let q = observed_order(&ns, &errs);
            let want = solver.order() as f64;
            eprintln!("{} {:?}: errors {errs:?}, order {q:.3}", p.name, solver);
            assert!(
                (q - want).abs() < 0.15 * want.max(1.0),
                "{} {solver:?}: observed order {q}, expected {want} (errors {errs:?})",
                p.name
            );
        }
    }
}

/// The Arenstorf orbit (HNW I, §II.0): periodic with the given period, so the state
/// after one period equals the initial state.
fn arenstorf() -> Problem {
    const MU: f64 = 0.012277471;
    Problem {
        name: "Arenstorf orbit",
        field: Box::new(FnField::new(4, |_t: f64, y: &[f64], v: &mut [f64]| {
            let mu1 = 1.0 - MU;
            let d1 = ((y[0] + MU).powi(2) + y[1] * y[1]).powf(1.5);
            let d2 = ((y[0] - mu1).powi(2) + y[1] * y[1]).powf(1.5);
            v[0] = y[2];
            v[1] = y[3];
            v[2] = y[0] + 2.0 * y[3] - mu1 * (y[0] + MU) / d1 - MU * (y[0] - mu1) / d2;
            v[3] = y[1] - 2.0 * y[2] - mu1 * y[1] / d1 - MU * y[1] / d2;
        })),
        t0: 0.0,
        t1: 17.065_216_560_157_96,
        x0: vec![0.994, 0.0, 0.0, -2.001_585_106_379_082_5],
        exact: |_t0, _t, x| x.to_vec(),
    }
}

/// Adaptive Dopri5: the global error, scaled by atol + rtol·|y|, stays at the scale
/// of 1 on well-conditioned problems; the error is proportional to the tolerance;
/// the work grows like tol^(-1/5); the evaluation count matches the step count.
#[test]
fn dopri5_adaptive_meets_tolerances() {
    for p in [cubic(), rotation(), growth(), logistic()] {
        let exact = p.exact_block(p.t1);
        let rows = p.x0.len() / p.dim();
        let mut steps_at = Vec::new();
        for tol in [1e-4, 1e-6, 1e-8, 1e-10] {
            let mut x = p.x0.clone();
            let st = solve(&p, &OdeOptions::adaptive(tol, tol), p.t0, p.t1, &mut x).unwrap();
            let scaled = x
                .iter()
                .zip(&exact)
                .map(|(a, b)| (a - b).abs() / (tol + tol * b.abs()))
                .fold(0.0, f64::max);
            eprintln!(
                "{} tol {tol:e}: scaled global error {scaled:.3}, stats {st:?}",
                p.name
            );
            assert!(scaled < 10.0, "{} tol {tol}: scaled error {scaled}", p.name);
            assert_eq!(st.steps, st.accepted + st.rejected);
            // One evaluation at t0 and one for the first step size per row, then six
            // per attempt.
            assert_eq!(st.nfe, 2 * rows as u64 + 6 * st.steps);
            assert!(st.rejected * 4 <= st.steps, "too many rejections: {st:?}");
            steps_at.push(st.accepted as f64 / rows as f64);
        }
        // Accepted steps ∝ tol^(-1/5): a factor 10^(6/5) ≈ 16 from 1e-4 to 1e-10.
        let growth = steps_at[3] / steps_at[0];
        assert!(
            (6.0..40.0).contains(&growth),
            "{}: steps grew by {growth} from tol 1e-4 to 1e-10 ({steps_at:?})",
            p.name
        );
    }

    // A sensitive problem: the error is far above the tolerance, but falls in
    // proportion to it.
    let p = arenstorf();
    let mut errs = Vec::new();
    for tol in [1e-7, 1e-9, 1e-11] {
        let mut x = p.x0.clone();
        let st = solve(&p, &OdeOptions::adaptive(tol, tol), p.t0, p.t1, &mut x).unwrap();
        let e = max_abs_diff(&x[..2], &p.x0[..2]);
        eprintln!("Arenstorf tol {tol:e}: position error {e:.3e}, stats {st:?}");
        errs.push(e);
    }
    assert!(errs[2] < 1e-5, "Arenstorf at tol 1e-11: error {}", errs[2]);
    for w in errs.windows(2) {
        let ratio = w[0] / w[1];
        assert!(
            (20.0..1000.0).contains(&ratio),
            "Arenstorf: error fell by {ratio} for a 100x smaller tolerance ({errs:?})"
        );
    }
}

/// t1 < t0: fixed steps keep their order, adaptive steps their tolerance, and a
/// forward-then-backward round trip recovers the initial state.
///
/// The logistic equation is left out of the backward tolerance checks: run backward
/// it is ill-conditioned (∂y(0)/∂y(5) = (y0/y(5))² e⁵ ≈ 590 for y0 = 2), so its
/// global error is far above the local tolerance by nature, not by a solver fault.
#[test]
fn backward_integration() {
    let p = cubic();
    // Start from the exact state at t = 2 and integrate back to 0.
    let x2 = p.exact_block(2.0);
    let ns = [16, 32, 64, 128];
    let errs: Vec<f64> = ns
        .iter()
        .map(|&n| {
            let mut x = x2.clone();
            solve(&p, &OdeOptions::fixed(OdeSolver::Rk4, n), 2.0, 0.0, &mut x).unwrap();
            max_abs_diff(&x, &p.x0)
        })
        .collect();
    let q = observed_order(&ns, &errs);
    assert!((q - 4.0).abs() < 0.6, "backward RK4 order {q} ({errs:?})");

    for p in [cubic(), rotation(), growth()] {
        let tol = 1e-9;
        let mut x = p.exact_block(p.t1);
        let st = solve(&p, &OdeOptions::adaptive(tol, tol), p.t1, p.t0, &mut x).unwrap();
        let scaled = x
            .iter()
            .zip(&p.x0)
            .map(|(a, b)| (a - b).abs() / (tol + tol * b.abs()))
            .fold(0.0, f64::max);
        eprintln!("{} backward: scaled error {scaled:.3}, {st:?}", p.name);
        assert!(scaled < 10.0, "{} backward: scaled error {scaled}", p.name);
    }
    // Round trips on problems whose backward flow does not amplify errors (a
    // rotation) or barely does (|∂y(0)/∂y(4)| = e^{-sin 4} ≈ 2.1 for the growth).
    for p in [rotation(), growth()] {
        let tol = 1e-9;
        let mut y = p.x0.clone();
        solve(&p, &OdeOptions::adaptive(tol, tol), p.t0, p.t1, &mut y).unwrap();
        solve(&p, &OdeOptions::adaptive(tol, tol), p.t1, p.t0, &mut y).unwrap();
        let round = max_abs_diff(&y, &p.x0);
        eprintln!("{} round trip error {round:.3e}", p.name);
        assert!(round < 20.0 * tol, "{} round trip error {round}", p.name);
    }
}

/// y' = −λ (y − cos t), λ carried as a second, constant component so that one block
/// holds rows of very different stiffness.
fn relaxation() -> FnField<impl Fn(f64, &[f64], &mut [f64]) + Send + Sync> {
    FnField::new(2, |t: f64, x: &[f64], v: &mut [f64]| {
        v[0] = -x[1] * (x[0] - t.cos());
        v[1] = 0.0;
    })
}

fn relaxation_exact(lambda: f64, y0: f64, t: f64) -> f64 {
    let l2 = lambda * lambda;
    (l2 * t.cos() + lambda * t.sin()) / (1.0 + l2) + (y0 - l2 / (1.0 + l2)) * (-lambda * t).exp()
}

/// Rows of one block take their own steps: each row's result is bitwise the one it
/// gets solved alone or in another order, the work adds up, stiffer rows take more
/// steps, and every row meets the tolerance.
#[test]
fn adaptive_rows_advance_independently() {
    let f = relaxation();
    let lambdas = [0.5, 5.0, 50.0, 500.0];
    let x0: Vec<f64> = lambdas.iter().flat_map(|&l| [2.0, l]).collect();
    let (rtol, atol) = (1e-7, 1e-9);
    let opts = OdeOptions::adaptive(rtol, atol);
    let (t0, t1) = (0.0, 3.0);
    let mut ws = OdeWorkspace::for_field(&f, 4);

    let mut block = x0.clone();
    let st = solve_block(&f, &opts, t0, t1, &mut block, None, None, &mut ws).unwrap();

    let mut total = SolveStats::default();
    let mut per_row_steps = Vec::new();
    for (i, &l) in lambdas.iter().enumerate() {
        let mut alone = vec![2.0, l];
        let s = solve_block(&f, &opts, t0, t1, &mut alone, None, None, &mut ws).unwrap();
        assert_eq!(
            alone[0].to_bits(),
            block[2 * i].to_bits(),
            "row {i} (λ = {l}) differs from its solve alone"
        );
        let exact = relaxation_exact(l, 2.0, t1);
        let err = (alone[0] - exact).abs() / (atol + rtol * exact.abs());
        eprintln!("λ = {l}: {s:?}, scaled error {err:.3}");
        assert!(err < 10.0, "λ = {l}: scaled error {err}");
        total.nfe += s.nfe;
        total.steps += s.steps;
        total.accepted += s.accepted;
        total.rejected += s.rejected;
        per_row_steps.push(s.steps);
    }
    assert_eq!(
        (st.nfe, st.steps, st.accepted, st.rejected),
        (total.nfe, total.steps, total.accepted, total.rejected)
    );
    assert!(
        per_row_steps.windows(2).all(|w| w[0] < w[1]),
        "stiffer rows should need more steps: {per_row_steps:?}"
    );
    // Finished rows are not evaluated: the block's evaluation count is the sum of
    // the rows' own counts (above).

    // Reversed row order: the same bits per row.
    let mut rev: Vec<f64> = lambdas.iter().rev().flat_map(|&l| [2.0, l]).collect();
    solve_block(&f, &opts, t0, t1, &mut rev, None, None, &mut ws).unwrap();
    for i in 0..4 {
        assert_eq!(rev[2 * (3 - i)].to_bits(), block[2 * i].to_bits());
    }
}

/// 3×3 matrix exponential by scaling and squaring of a Taylor series (test oracle).
fn expm3(a: [[f64; 3]; 3], t: f64) -> [[f64; 3]; 3] {
    let mul = |x: [[f64; 3]; 3], y: [[f64; 3]; 3]| {
        let mut z = [[0.0; 3]; 3];
        for i in 0..3 {
            for j in 0..3 {
                for k in 0..3 {
                    z[i][j] += x[i][k] * y[k][j];
                }
            }
        }
        z
    };
    let s = 10;
    let scale = t / 2f64.powi(s);
    let mut m = [[0.0; 3]; 3];
    for i in 0..3 {
        for j in 0..3 {
            m[i][j] = a[i][j] * scale;
        }
    }
    let mut e = [[0.0; 3]; 3];
    let mut term = [[0.0; 3]; 3];
    for i in 0..3 {
        e[i][i] = 1.0;
        term[i][i] = 1.0;
    }
    for k in 1..20 {
        term = mul(term, m);
        for row in term.iter_mut() {
            for v in row.iter_mut() {
                *v /= k as f64;
            }
        }
        for i in 0..3 {
            for j in 0..3 {
                e[i][j] += term[i][j];
            }
        }
    }
    for _ in 0..s {
        e = mul(e, e);
    }
    e
}

const A: [[f64; 3]; 3] = [[-0.5, 1.0, 0.2], [-1.0, 0.3, 0.0], [0.4, -0.2, -0.6]];

type Rhs = fn(f64, &[f64], &mut [f64]);
type Div = fn(f64, &[f64]) -> f64;

fn linear_rhs(_t: f64, x: &[f64], v: &mut [f64]) {
    for (vi, row) in v.iter_mut().zip(A) {
        *vi = row.iter().zip(x).map(|(a, b)| a * b).sum();
    }
}

fn linear_div(_t: f64, _x: &[f64]) -> f64 {
    A[0][0] + A[1][1] + A[2][2]
}

fn linear_field() -> FnField<Rhs, Div> {
    FnField::with_div(3, linear_rhs as Rhs, linear_div as Div)
}

/// x' = A x: the log-determinant is tr(A)·(t1 − t0) (Jacobi's formula, up to
/// rounding) for every solver and step choice, forward and backward, and the state is
/// exp(A T) x0.
#[test]
fn logdet_of_a_linear_field() {
    let f = linear_field();
    let tr = A[0][0] + A[1][1] + A[2][2];
    let x0 = vec![1.0, -0.5, 2.0, 0.3, 0.3, -1.0];
    for (t0, t1) in [(0.0, 2.0), (1.5, -0.5)] {
        let e = expm3(A, t1 - t0);
        let exact: Vec<f64> = x0
            .chunks(3)
            .flat_map(|r| (0..3).map(move |i| (0..3).map(|j| e[i][j] * r[j]).sum::<f64>()))
            .collect();
        let mut cases: Vec<(OdeOptions<f64>, f64)> = vec![
            (OdeOptions::fixed(OdeSolver::Euler, 4000), 5e-3),
            (OdeOptions::fixed(OdeSolver::Heun, 400), 1e-4),
            (OdeOptions::fixed(OdeSolver::Rk4, 100), 1e-8),
            (OdeOptions::fixed(OdeSolver::Dopri5, 50), 1e-10),
        ];
        cases.push((OdeOptions::adaptive(1e-10, 1e-10), 1e-8));
        for (opts, state_tol) in cases {
            let mut x = x0.clone();
            let mut ld = vec![0.25, -1.0];
            let mut ws = OdeWorkspace::for_field(&f, 2);
            solve_block(&f, &opts, t0, t1, &mut x, Some(&mut ld), None, &mut ws).unwrap();
            let want = tr * (t1 - t0);
            for (l, l0) in ld.iter().zip([0.25, -1.0]) {
                assert!(
                    (l - l0 - want).abs() < 1e-12,
                    "{opts:?} [{t0}, {t1}]: logdet {} vs {want}",
                    l - l0
                );
            }
            let err = max_abs_diff(&x, &exact);
            assert!(err < state_tol, "{opts:?}: state error {err}");
        }
    }
}

/// x' = −t x³ has x(t) = x0 / sqrt(1 + x0² t²) and log det ∂x(t)/∂x0 =
/// ∫ −3 t x² dt = −(3/2) ln(1 + x0² t²): the log-determinant converges with the
/// method's order and meets adaptive tolerances.
#[test]
fn logdet_of_a_nonlinear_field() {
    let f = FnField::with_div(
        1,
        |t: f64, x: &[f64], v: &mut [f64]| v[0] = -t * x[0].powi(3),
        |t: f64, x: &[f64]| -3.0 * t * x[0] * x[0],
    );
    let x0 = [1.0f64, 0.9, -1.1];
    let t1 = 2.0;
    let exact_ld: Vec<f64> = x0
        .iter()
        .map(|a| -1.5 * (1.0 + a * a * t1 * t1).ln())
        .collect();
    let mut ws = OdeWorkspace::for_field(&f, 3);
    for (solver, ns) in [
        (OdeSolver::Euler, [200, 400, 800, 1600]),
        (OdeSolver::Heun, [100, 200, 400, 800]),
        (OdeSolver::Rk4, [20, 40, 80, 160]),
        (OdeSolver::Dopri5, [24, 32, 48, 64]),
    ] {
        let errs: Vec<f64> = ns
            .iter()
            .map(|&n| {
                let mut x = x0.to_vec();
                let mut ld = vec![0.0; 3];
                let opts = OdeOptions::fixed(solver, n);
                solve_block(&f, &opts, 0.0, t1, &mut x, Some(&mut ld), None, &mut ws).unwrap();
                max_abs_diff(&ld, &exact_ld)
            })
            .collect();
        let q = observed_order(&ns, &errs);
        let want = solver.order() as f64;
        eprintln!("logdet {solver:?}: errors {errs:?}, order {q:.3}");
        assert!(
            (q - want).abs() < 0.15 * want.max(1.0),
            "{solver:?}: logdet order {q}"
        );
    }
    for tol in [1e-6, 1e-9] {
        let mut x = x0.to_vec();
        let mut ld = vec![0.0; 3];
        let opts = OdeOptions::adaptive(tol, tol);
        solve_block(&f, &opts, 0.0, t1, &mut x, Some(&mut ld), None, &mut ws).unwrap();
        for (l, e) in ld.iter().zip(&exact_ld) {
            let scaled = (l - e).abs() / (tol + tol * e.abs());
            assert!(scaled < 10.0, "tol {tol}: logdet scaled error {scaled}");
        }
    }
}

/// SaveAt::Steps with fixed steps: the grid, the initial block first, the final block
/// bitwise the result, every saved state on the exact solution to the method's
/// accuracy.
#[test]
fn trajectory_every_step() {
    let p = growth();
    let n = 40;
    let mut x = p.x0.clone();
    let mut traj = Trajectory::every_step();
    let mut ws = OdeWorkspace::for_field(&*p.field, 2);
    let opts = OdeOptions::fixed(OdeSolver::Rk4, n);
    solve_block(
        &*p.field,
        &opts,
        p.t0,
        p.t1,
        &mut x,
        None,
        Some(&mut traj),
        &mut ws,
    )
    .unwrap();
    assert_eq!(traj.len(), n + 1);
    assert_eq!((traj.rows(), traj.dim()), (2, 1));
    assert_eq!(traj.block(0).unwrap(), &p.x0[..]);
    assert_eq!(traj.block(n).unwrap(), &x[..]);
    assert_eq!(traj.times()[n], p.t1);
    assert!(traj.logdet().is_empty());
    let h = (p.t1 - p.t0) / n as f64;
    for k in 0..=n {
        let t = traj.times()[k];
        assert!((t - k as f64 * h).abs() < 1e-14);
        let e = max_abs_diff(traj.block(k).unwrap(), &p.exact_block(t));
        assert!(e < 1e-5, "step {k}: error {e}");
    }
    assert_eq!(
        traj.state(3, 1).unwrap(),
        &traj.states()[3 * 2 + 1..3 * 2 + 2]
    );
    assert!(traj.state(0, 2).is_none());
}

/// SaveAt::Times with adaptive and fixed-step Dopri5: dense output on the exact
/// solution within the tolerance's scale, forward and backward; saving changes
/// nothing in the result; t0 and t1 give the initial and final states exactly.
#[test]
fn dense_output_at_save_times() {
    for p in [cubic(), rotation(), logistic()] {
        let tol = 1e-8;
        let opts = OdeOptions::adaptive(tol, tol);
        let rows = p.x0.len() / p.dim();
        let mut ws = OdeWorkspace::for_field(&*p.field, rows);
        // Backward only where the backward flow is well conditioned (see
        // `backward_integration` for the logistic equation).
        let spans: &[(f64, f64)] = if p.name == "logistic" {
            &[(p.t0, p.t1)]
        } else {
            &[(p.t0, p.t1), (p.t1, p.t0)]
        };
        for &(t0, t1) in spans {
            let x0 = p.exact_block(t0);
            let times: Vec<f64> = (0..=50).map(|i| t0 + (t1 - t0) * i as f64 / 50.0).collect();
            let mut traj = Trajectory::at_times(times.clone());
            let mut x = x0.clone();
            solve_block(
                &*p.field,
                &opts,
                t0,
                t1,
                &mut x,
                None,
                Some(&mut traj),
                &mut ws,
            )
            .unwrap();
            let mut plain = x0.clone();
            solve_block(&*p.field, &opts, t0, t1, &mut plain, None, None, &mut ws).unwrap();
            assert_eq!(x, plain, "saving must not change the result");
            assert_eq!(traj.block(0).unwrap(), &x0[..]);
            assert_eq!(traj.block(50).unwrap(), &x[..]);
            assert_eq!(traj.times(), &times[..]);
            let mut worst = 0.0f64;
            for (i, &t) in times.iter().enumerate() {
                let exact = p.exact_block(t);
                for (a, b) in traj.block(i).unwrap().iter().zip(&exact) {
                    worst = worst.max((a - b).abs() / (tol + tol * b.abs()));
                }
            }
            eprintln!(
                "{} [{t0}, {t1}] dense output: worst scaled error {worst:.3}",
                p.name
            );
            assert!(
                worst < 10.0,
                "{}: dense output scaled error {worst}",
                p.name
            );
        }
        // Fixed-step Dopri5: the continuous extension is fourth order.
        let errs: Vec<f64> = [20, 40, 80]
            .iter()
            .map(|&n| {
                let times = vec![p.t0 + 0.37 * (p.t1 - p.t0), p.t0 + 0.81 * (p.t1 - p.t0)];
                let mut traj = Trajectory::at_times(times.clone());
                let mut x = p.x0.clone();
                let o = OdeOptions::fixed(OdeSolver::Dopri5, n);
                solve_block(
                    &*p.field,
                    &o,
                    p.t0,
                    p.t1,
                    &mut x,
                    None,
                    Some(&mut traj),
                    &mut ws,
                )
                .unwrap();
                times
                    .iter()
                    .enumerate()
                    .map(|(i, &t)| max_abs_diff(traj.block(i).unwrap(), &p.exact_block(t)))
                    .fold(0.0, f64::max)
            })
            .collect();
        let q = observed_order(&[20, 40, 80], &errs);
        eprintln!(
            "{} fixed Dopri5 dense output: {errs:?}, order {q:.2}",
            p.name
        );
        assert!(q > 3.6, "{}: dense output order {q} ({errs:?})", p.name);
    }
}

/// Dense output carries the log-determinant too.
#[test]
fn dense_output_of_the_logdet() {
    let f = linear_field();
    let tr = A[0][0] + A[1][1] + A[2][2];
    let times = vec![0.0, 0.3, 0.3, 1.1, 2.0];
    let mut traj = Trajectory::at_times(times.clone());
    let mut x = vec![1.0, 0.0, 0.0];
    let mut ld = vec![0.0];
    let mut ws = OdeWorkspace::for_field(&f, 1);
    let opts = OdeOptions::adaptive(1e-9, 1e-9);
    solve_block(
        &f,
        &opts,
        0.0,
        2.0,
        &mut x,
        Some(&mut ld),
        Some(&mut traj),
        &mut ws,
    )
    .unwrap();
    assert_eq!(traj.logdet().len(), 5);
    for (l, t) in traj.logdet().iter().zip(&times) {
        assert!(
            (l - tr * t).abs() < 1e-9,
            "logdet at {t}: {l} vs {}",
            tr * t
        );
    }
    assert_eq!(traj.logdet()[4], ld[0]);
}

#[test]
fn invalid_arguments_are_refused() {
    let p = cubic();
    let f = &*p.field;
    let mut ws = OdeWorkspace::for_field(f, 3);
    let mut x = p.x0.clone();
    let mut run = |opts: OdeOptions<f64>, t0: f64, t1: f64, x: &mut [f64]| {
        solve_block(f, &opts, t0, t1, x, None, None, &mut ws)
    };
    let inv = |r: Result<SolveStats, Error>| matches!(r, Err(Error::InvalidArgument(_)));
    assert!(inv(run(
        OdeOptions::fixed(OdeSolver::Rk4, 0),
        0.0,
        1.0,
        &mut x
    )));
    let adaptive_euler = OdeOptions {
        solver: OdeSolver::Euler,
        step_size: StepSize::Adaptive(AdaptiveOptions::new(1e-6, 1e-6)),
    };
    assert!(inv(run(adaptive_euler, 0.0, 1.0, &mut x)));
    assert!(inv(run(OdeOptions::adaptive(0.0, 1e-6), 0.0, 1.0, &mut x)));
    assert!(inv(run(
        OdeOptions::adaptive(1e-20, 1e-6),
        0.0,
        1.0,
        &mut x
    )));
    assert!(inv(run(
        OdeOptions::adaptive(1e-6, f64::NAN),
        0.0,
        1.0,
        &mut x
    )));
    assert!(inv(run(OdeOptions::adaptive(1e-6, -1.0), 0.0, 1.0, &mut x)));
    for tweak in [
        |a: &mut AdaptiveOptions<f64>| a.h0 = Some(0.0),
        |a: &mut AdaptiveOptions<f64>| a.h_min = -1.0,
        |a: &mut AdaptiveOptions<f64>| a.h_max = Some(0.0),
        |a: &mut AdaptiveOptions<f64>| a.max_steps = 0,
        |a: &mut AdaptiveOptions<f64>| a.safety = 1.5,
        |a: &mut AdaptiveOptions<f64>| a.min_factor = 0.0,
        |a: &mut AdaptiveOptions<f64>| a.max_factor = 0.5,
        |a: &mut AdaptiveOptions<f64>| a.beta1 = 0.0,
        |a: &mut AdaptiveOptions<f64>| a.beta2 = -0.1,
    ] {
        let mut a = AdaptiveOptions::new(1e-6, 1e-6);
        tweak(&mut a);
        let o = OdeOptions {
            solver: OdeSolver::Dopri5,
            step_size: StepSize::Adaptive(a),
        };
        assert!(inv(run(o, 0.0, 1.0, &mut x)), "{a:?}");
    }
    assert!(matches!(
        run(
            OdeOptions::fixed(OdeSolver::Rk4, 4),
            0.0,
            f64::INFINITY,
            &mut x
        ),
        Err(Error::NonFinite(_))
    ));
    let mut bad = vec![1.0, f64::NAN];
    assert!(matches!(
        run(OdeOptions::fixed(OdeSolver::Rk4, 4), 0.0, 1.0, &mut bad),
        Err(Error::NonFinite(_))
    ));
    let r2 = FnField::new(2, |_t: f64, x: &[f64], v: &mut [f64]| v.copy_from_slice(x));
    let mut odd = vec![1.0; 3];
    let mut ws2 = OdeWorkspace::for_field(&r2, 2);
    let opts = OdeOptions::fixed(OdeSolver::Rk4, 4);
    assert!(matches!(
        solve_block(&r2, &opts, 0.0, 1.0, &mut odd, None, None, &mut ws2),
        Err(Error::Length { .. })
    ));
    let mut x2 = vec![1.0; 4];
    let mut ld = vec![0.0; 3];
    assert!(matches!(
        solve_block(&r2, &opts, 0.0, 1.0, &mut x2, Some(&mut ld), None, &mut ws2),
        Err(Error::Length { .. })
    ));
    // A field without a divergence cannot carry the log-determinant.
    let mut ld = vec![0.0; 2];
    assert!(matches!(
        solve_block(&r2, &opts, 0.0, 1.0, &mut x2, Some(&mut ld), None, &mut ws2),
        Err(Error::Unsupported(_))
    ));
    // Save requests the solver cannot honour, and bad save times.
    let mut traj = Trajectory::every_step();
    let ad = OdeOptions::adaptive(1e-6, 1e-6);
    assert!(matches!(
        solve_block(&r2, &ad, 0.0, 1.0, &mut x2, None, Some(&mut traj), &mut ws2),
        Err(Error::Unsupported(_))
    ));
    let mut traj = Trajectory::at_times(vec![0.5]);
    assert!(matches!(
        solve_block(
            &r2,
            &opts,
            0.0,
            1.0,
            &mut x2,
            None,
            Some(&mut traj),
            &mut ws2
        ),
        Err(Error::Unsupported(_))
    ));
    for times in [vec![0.5, 1.5], vec![0.6, 0.5], vec![-0.1]] {
        let mut traj = Trajectory::at_times(times);
        assert!(matches!(
            solve_block(&r2, &ad, 0.0, 1.0, &mut x2, None, Some(&mut traj), &mut ws2),
            Err(Error::InvalidArgument(_))
        ));
    }
    let mut traj = Trajectory::at_times(vec![0.5, 0.4]);
    assert!(
        solve_block(&r2, &ad, 1.0, 0.0, &mut x2, None, Some(&mut traj), &mut ws2).is_ok(),
        "descending save times are right for a backward solve"
    );
    assert!(matches!(traj.save_at(), SaveAt::Times(_)));
}

/// y' = y² blows up at t = 1/y0: the failing row is named; max_steps is honoured; a
/// fixed-step solve that overflows reports the row.
#[test]
fn integration_failures_name_the_row() {
    let f = FnField::new(1, |_t: f64, x: &[f64], v: &mut [f64]| v[0] = x[0] * x[0]);
    let mut ws = OdeWorkspace::for_field(&f, 2);
    let opts = OdeOptions::adaptive(1e-8, 1e-8);
    let mut x = vec![-1.0, 1.0];
    let err = solve_block(&f, &opts, 0.0, 2.0, &mut x, None, None, &mut ws).unwrap_err();
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(
        matches!(err, Error::Integration(_)) && msg.contains("row 1"),
        "{msg}"
    );

    let mut a = AdaptiveOptions::new(1e-10, 1e-10);
    a.max_steps = 10;
    let o = OdeOptions {
        solver: OdeSolver::Dopri5,
        step_size: StepSize::Adaptive(a),
    };
    let mut x = vec![0.1, -0.2];
    let err = solve_block(&f, &o, 0.0, 2.0, &mut x, None, None, &mut ws).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("more than 10 steps") && msg.contains("row"),
        "{msg}"
    );

    let mut a = AdaptiveOptions::new(1e-8, 1e-8);
    a.h_min = 0.1;
    let o = OdeOptions {
        solver: OdeSolver::Dopri5,
        step_size: StepSize::Adaptive(a),
    };
    let mut x = vec![0.1, 1.0];
    let err = solve_block(&f, &o, 0.0, 2.0, &mut x, None, None, &mut ws).unwrap_err();
    assert!(err.to_string().contains("underflow"), "{err}");

    let mut x = vec![0.1, 5.0];
    let e = OdeOptions::fixed(OdeSolver::Euler, 20);
    let err = solve_block(&f, &e, 0.0, 2.0, &mut x, None, None, &mut ws).unwrap_err();
    assert!(err.to_string().contains("row 1"), "{err}");
}

/// f32 solves follow the f64 ones to f32 accuracy.
#[test]
fn f32_solves_agree_with_f64() {
    let f32f = FnField::with_div(
        1,
        |t: f32, x: &[f32], v: &mut [f32]| v[0] = -t * x[0].powi(3),
        |t: f32, x: &[f32]| -3.0 * t * x[0] * x[0],
    );
    let exact = |y0: f64| y0 / (1.0 + 4.0 * y0 * y0).sqrt();
    let x0 = [1.0f32, 0.5, -2.0];
    let mut ws = OdeWorkspace::for_field(&f32f, 3);
    for opts in [
        OdeOptions::fixed(OdeSolver::Rk4, 64),
        OdeOptions::adaptive(1e-5f32, 1e-6),
    ] {
        let mut x = x0.to_vec();
        solve_block(&f32f, &opts, 0.0, 2.0, &mut x, None, None, &mut ws).unwrap();
        for (a, y0) in x.iter().zip(x0) {
            let e = exact(f64::from(y0));
            assert!((f64::from(*a) - e).abs() < 2e-5, "{opts:?}: {a} vs {e}");
        }
    }
    let mut x = x0.to_vec();
    assert!(matches!(
        solve_block(
            &f32f,
            &OdeOptions::adaptive(1e-9f32, 1e-9),
            0.0,
            2.0,
            &mut x,
            None,
            None,
            &mut ws
        ),
        Err(Error::InvalidArgument(_))
    ));
}

/// A workspace reused across blocks of other sizes and solvers gives the same bits
/// as a fresh one; an empty interval leaves the state alone.
#[test]
fn workspace_reuse_and_empty_interval() {
    let p = rotation();
    let f = &*p.field;
    let mut shared = OdeWorkspace::new(0, 0, 0);
    for opts in [
        OdeOptions::adaptive(1e-8, 1e-8),
        OdeOptions::fixed(OdeSolver::Dopri5, 7),
        OdeOptions::fixed(OdeSolver::Heun, 9),
        OdeOptions::adaptive(1e-5, 1e-7),
    ] {
        for rows in [2, 1, 2] {
            let x0 = &p.x0[..2 * rows];
            let mut a = x0.to_vec();
            let mut b = x0.to_vec();
            solve_block(f, &opts, 0.0, 1.0, &mut a, None, None, &mut shared).unwrap();
            let mut fresh = OdeWorkspace::for_field(f, rows);
            solve_block(f, &opts, 0.0, 1.0, &mut b, None, None, &mut fresh).unwrap();
            assert_eq!(a, b, "{opts:?}, {rows} rows");
        }
    }
    let mut x = p.x0.clone();
    let st = solve_block(
        f,
        &OdeOptions::adaptive(1e-8, 1e-8),
        0.5,
        0.5,
        &mut x,
        None,
        None,
        &mut shared,
    )
    .unwrap();
    assert_eq!(x, p.x0);
    assert_eq!(st.nfe, 0);

    // An empty block: nothing evaluated, the trajectory still has its times.
    let mut traj = Trajectory::every_step();
    let mut empty: Vec<f64> = Vec::new();
    let opts = OdeOptions::fixed(OdeSolver::Rk4, 4);
    let st = solve_block(
        f,
        &opts,
        0.0,
        1.0,
        &mut empty,
        None,
        Some(&mut traj),
        &mut shared,
    )
    .unwrap();
    assert_eq!((st.rows, st.nfe, st.block_evals), (0, 0, 0));
    assert_eq!(traj.times(), &[0.0, 0.25, 0.5, 0.75, 1.0]);
    assert!(traj.states().is_empty());
    let st = solve_block(
        f,
        &OdeOptions::adaptive(1e-6, 1e-6),
        0.0,
        1.0,
        &mut empty,
        None,
        None,
        &mut shared,
    )
    .unwrap();
    assert_eq!(st.nfe, 0);
}

/// Once the workspace and trajectory have grown, solves do not allocate.
#[test]
fn repeated_solves_do_not_allocate() {
    let f = linear_field();
    let mut ws = OdeWorkspace::for_field(&f, 2);
    let x0 = [1.0, -0.5, 2.0, 0.3, 0.3, -1.0];
    let mut steps = Trajectory::every_step();
    let mut dense = Trajectory::at_times(vec![0.0, 0.5, 1.0, 2.0]);
    let fixed = OdeOptions::fixed(OdeSolver::Rk4, 30);
    let adaptive = OdeOptions::adaptive(1e-8, 1e-8);
    let run =
        |ws: &mut OdeWorkspace<f64>, steps: &mut Trajectory<f64>, dense: &mut Trajectory<f64>| {
            let mut x = x0.to_vec();
            let mut ld = [0.0; 2];
            let mut y = x0.to_vec();
            let (r, n) = count_allocs(|| {
                solve_block(&f, &fixed, 0.0, 2.0, &mut x, Some(&mut ld), Some(steps), ws)?;
                solve_block(
                    &f,
                    &adaptive,
                    0.0,
                    2.0,
                    &mut y,
                    Some(&mut ld),
                    Some(dense),
                    ws,
                )
            });
            r.unwrap();
            n
        };
    // The first solves size the trajectories (and prove the counter counts).
    assert!(run(&mut ws, &mut steps, &mut dense) > 0);
    let n = run(&mut ws, &mut steps, &mut dense);
    assert_eq!(n, 0, "{n} allocations in repeated solves");
}
