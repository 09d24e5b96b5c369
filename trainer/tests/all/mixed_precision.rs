//! The validation problem of MATH.md §8, set up as the mixed-precision paper (rampde)
//! sets it up: RK4 on y' = −(θ₁t² + θ₂t + θ₃)y, θ = (8, −10, 2⁻¹⁶), y₀ = 65504/180
//! rounded to f32, 399 steps on linspace(0, 2.65, 400), ℓ = ½y_N², the right-hand
//! side evaluated entirely at L (t, y and θ cast to L).
//!
//! The adjoint a(t) = y(T)²/y(t) falls from ~1.8e-4 at T to ~7e-12 near t = 1.25, far
//! below f16's smallest subnormal (6e-8): without scaling the f16 gradient is lost;
//! dynamic scaling keeps it to O(u_L). References: in f64, the exact gradient of the
//! *discrete* objective (forward-mode dual numbers through the same RK4 recurrence,
//! independent of the reverse-mode tape); for the low precisions, the closed-form
//! gradient of the continuous objective (the RK4 discretization error, printed, is far
//! below every bound). Run with `--nocapture` for the table.

use socflow_trainer::autodiff::{self, Cpu, DType, Graph, Tensor, Var};
use socflow_trainer::dto::{
    AdjointStats, Cotangents, IncreaseRule, Method, PrecisionPolicy, Solver,
};

const THETA: [f64; 3] = [8.0, -10.0, 1.0 / 65536.0];
const T_END: f64 = 2.65;
const POINTS: usize = 400;

fn y0() -> f64 {
    f64::from((65504.0f64 / 180.0) as f32)
}

fn grid() -> Vec<f64> {
    (0..POINTS)
        .map(|i| T_END * i as f64 / (POINTS - 1) as f64)
        .collect()
}

/// f(t, y) = −(θ₁t² + θ₂t + θ₃)·y, in the op order of the paper's module.
fn rhs(g: &mut Graph<Cpu>, t: Var, y: Var, p: &[Var]) -> autodiff::Result<Var> {
    let t2 = g.square(t)?;
    let at2 = g.mul(t2, p[0])?;
    let bt = g.mul(t, p[1])?;
    let lam = g.add(at2, bt)?;
    let lam = g.add(lam, p[2])?;
    let neg = g.neg(lam)?;
    g.mul(y, neg)
}

/// Closed form: y(T) and ∂ℓ/∂(y₀, θ₁, θ₂, θ₃) for ℓ = ½y(T)².
fn closed_form() -> (f64, [f64; 4]) {
    let (y0, t) = (y0(), T_END);
    let [a, b, c] = THETA;
    let yt = y0 * (-(a * t.powi(3) / 3.0 + b * t * t / 2.0 + c * t)).exp();
    let y2 = yt * yt;
    (
        yt,
        [y2 / y0, -y2 * t.powi(3) / 3.0, -y2 * t * t / 2.0, -y2 * t],
    )
}

/// A number with its derivatives with respect to (y₀, θ₁, θ₂, θ₃).
#[derive(Clone, Copy)]
struct Dual {
    v: f64,
    d: [f64; 4],
}

impl Dual {
    fn c(v: f64) -> Self {
        Dual { v, d: [0.0; 4] }
    }
    fn var(v: f64, k: usize) -> Self {
        let mut d = [0.0; 4];
        d[k] = 1.0;
        Dual { v, d }
    }
    fn add(self, o: Dual) -> Dual {
        Dual {
            v: self.v + o.v,
            d: std::array::from_fn(|k| self.d[k] + o.d[k]),
        }
    }
    fn mul(self, o: Dual) -> Dual {
        Dual {
            v: self.v * o.v,
            d: std::array::from_fn(|k| self.d[k] * o.v + self.v * o.d[k]),
        }
    }
    fn scale(self, s: f64) -> Dual {
        self.mul(Dual::c(s))
    }
}

/// The exact gradient of the discrete RK4 objective, by forward-mode dual numbers.
fn discrete_exact() -> (f64, [f64; 4]) {
    let th = [
        Dual::var(THETA[0], 1),
        Dual::var(THETA[1], 2),
        Dual::var(THETA[2], 3),
    ];
    let f = |t: f64, y: Dual| -> Dual {
        let lam = th[0].scale(t * t).add(th[1].scale(t)).add(th[2]);
        lam.mul(y).scale(-1.0)
    };
    let mut y = Dual::var(y0(), 0);
    for w in grid().windows(2) {
        let (t0, t1) = (w[0], w[1]);
        let h = t1 - t0;
        let tm = t0 + 0.5 * h;
        let k1 = f(t0, y);
        let k2 = f(tm, y.add(k1.scale(0.5 * h)));
        let k3 = f(tm, y.add(k2.scale(0.5 * h)));
        let k4 = f(t1, y.add(k3.scale(h)));
        let phi = k1.add(k2.add(k3).scale(2.0)).add(k4).scale(1.0 / 6.0);
        y = y.add(phi.scale(h));
    }
    (y.v, std::array::from_fn(|k| y.v * y.d[k]))
}

struct Run {
    y_t: f64,
    grad: [f64; 4],
    stats: AdjointStats,
}

fn run(policy: PrecisionPolicy, rule: IncreaseRule) -> Run {
    let be = Cpu::new();
    let mut solver = Solver::new(Method::Rk4, policy);
    solver.increase_rule = rule;
    let mut g = Graph::new(be);
    let y0 = Tensor::from_f64(&be, 1, 1, &[y0()], DType::F64).unwrap();
    let params: Vec<_> = THETA
        .iter()
        .map(|&v| Tensor::from_f64(&be, 1, 1, &[v], DType::F64).unwrap())
        .collect();
    let times = grid();
    let traj = solver.forward(&mut g, &rhs, &y0, &times, &params).unwrap();
    let y_t = traj.final_state().to_f64(&be).unwrap()[0];
    // ∂(½y_N²)/∂y_N = y_N.
    let cot = Cotangents::terminal(traj.final_state().try_clone(&be).unwrap());
    let grad = solver
        .backward(&mut g, &rhs, &traj, &params, &cot, false)
        .unwrap();
    let mut out = [grad.y0.to_f64(&be).unwrap()[0], 0.0, 0.0, 0.0];
    for k in 0..3 {
        out[k + 1] = grad.params[k].to_f64(&be).unwrap()[0];
    }
    Run {
        y_t,
        grad: out,
        stats: grad.stats,
    }
}

fn rel(x: f64, reference: f64) -> f64 {
    let r = (x - reference).abs() / reference.abs();
    if r.is_nan() {
        f64::INFINITY
    } else {
        r
    }
}

/// `[a, b, …]` in scientific notation.
fn sci(x: &[f64], digits: usize) -> String {
    let parts: Vec<String> = x.iter().map(|v| format!("{v:.digits$e}")).collect();
    format!("[{}]", parts.join(", "))
}

/// Lost: non-finite, zero, or off by at least half.
fn lost(x: f64, reference: f64) -> bool {
    !x.is_finite() || x == 0.0 || rel(x, reference) >= 0.5
}

#[test]
fn validation_problem_errors() {
    let (yt_cf, g_cf) = closed_form();
    let (yt_d, g_d) = discrete_exact();
    let d = |x: &[f64; 4]| -> [f64; 4] { std::array::from_fn(|k| rel(x[k], g_cf[k])) };
    println!(
        "closed form: y(T) = {yt_cf:.6e}, grad = {}\n\
         RK4 discretization (discrete exact vs closed form): y(T) {:.2e}, grad {}",
        sci(&g_cf, 6),
        rel(yt_d, yt_cf),
        sci(&d(&g_d), 2)
    );

    let cases = [
        ("f64", PrecisionPolicy::f64(), IncreaseRule::ScaledAdjoint),
        ("f32", PrecisionPolicy::f32(), IncreaseRule::ScaledAdjoint),
        (
            "f16",
            PrecisionPolicy::f16().with_dynamic_scaling(false),
            IncreaseRule::ScaledAdjoint,
        ),
        ("f16", PrecisionPolicy::f16(), IncreaseRule::ScaledAdjoint),
        ("f16", PrecisionPolicy::f16(), IncreaseRule::UnscaledAdjoint),
        (
            "bf16",
            PrecisionPolicy::bf16().with_dynamic_scaling(false),
            IncreaseRule::ScaledAdjoint,
        ),
        ("bf16", PrecisionPolicy::bf16(), IncreaseRule::ScaledAdjoint),
        (
            "bf16",
            PrecisionPolicy::bf16(),
            IncreaseRule::UnscaledAdjoint,
        ),
    ];
    println!(
        "\n| policy | scaling        | y(T)     | ∂y₀      | ∂θ₁      | ∂θ₂      | ∂θ₃      \
         | retries | S initial | S final  |"
    );
    println!(
        "|--------|----------------|----------|----------|----------|----------|----------\
         |---------|-----------|----------|"
    );
    let mut runs = Vec::new();
    for (name, policy, rule) in cases {
        let r = run(policy, rule);
        let e = d(&r.grad);
        let scaling = match (policy.dynamic_scaling, rule) {
            (false, _) => "off",
            (true, IncreaseRule::ScaledAdjoint) => "on, S·|a| rule",
            (true, IncreaseRule::UnscaledAdjoint) => "on, |a| rule",
        };
        let s = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("2^{}", v.log2()));
        println!(
            "| {name:6} | {scaling:14} | {:.2e} | {:.2e} | {:.2e} | {:.2e} | {:.2e} | {:7} \
             | {:9} | {:8} |",
            rel(r.y_t, yt_cf),
            e[0],
            e[1],
            e[2],
            e[3],
            r.stats.retries,
            s(r.stats.initial_scale),
            s(r.stats.final_scale),
        );
        runs.push((name, policy, rule, r, e));
    }
    println!("(errors relative to the closed form; raw gradients below)");
    for (name, policy, _, r, _) in &runs {
        println!(
            "{name} scaling={}: grad = {}",
            policy.dynamic_scaling,
            sci(&r.grad, 6)
        );
    }

    // f64: the exact gradient of the discrete objective.
    let f64_run = &runs[0].3;
    let e_disc: [f64; 4] = std::array::from_fn(|k| rel(f64_run.grad[k], g_d[k]));
    println!("f64 vs the discrete-exact gradient: {}", sci(&e_disc, 2));
    for (k, e) in e_disc.iter().enumerate() {
        assert!(*e <= 1e-10, "f64 vs discrete exact, entry {k}: {e:e}");
    }
    assert!(rel(f64_run.y_t, yt_d) <= 1e-12);
    // f32: about 1e-4 (O(u_H/h) with u_H = 6e-8, h = 6.6e-3, times the problem's
    // amplification), at most 1e-3.
    for (k, e) in runs[1].4.iter().enumerate() {
        assert!(*e <= 1e-3, "f32 entry {k}: {e:e}");
    }
    // f16 without scaling: the adjoint underflows and the gradient is lost.
    let unscaled = &runs[2].3;
    for (k, (x, want)) in unscaled.grad.iter().zip(&g_cf).enumerate() {
        assert!(
            lost(*x, *want),
            "f16 without scaling kept entry {k}: {x:e} vs {want:e}"
        );
    }
    // f16 with dynamic scaling (either increase rule): within 1e-2 (the paper: ~6e-3),
    // on every entry as in the paper's test.
    for (name, _, rule, r, e) in &runs[3..5] {
        for (k, e) in e.iter().enumerate() {
            assert!(*e <= 1e-2, "{name} {rule:?} entry {k}: {e:e}");
        }
        assert!(r.stats.initial_scale.is_some());
    }
    // bf16 with scaling: the error is O(u_L) with the constant of f16's (same problem,
    // same algorithm, same range handling), so f16's bound scaled by
    // u_bf16/u_f16 = 2⁻⁷/2⁻¹⁰ = 8: 8e-2.
    for (name, _, rule, _, e) in &runs[6..8] {
        for (k, e) in e.iter().enumerate() {
            assert!(*e <= 8e-2, "{name} {rule:?} entry {k}: {e:e}");
        }
    }
}
