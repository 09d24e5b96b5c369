//! Gradients through SDEs (MATH.md §7): discretize-then-optimize through
//! Euler–Maruyama (Itô) and stochastic Heun (Stratonovich) on fixed Brownian paths,
//! against the continuous adjoint (optimize-then-discretize) with and without the
//! Itô-to-Stratonovich correction.
//!
//! Two problems with closed-form gradients of ℓ = E[X_T²], every path a row with its
//! own copy of the parameters (so each row's gradient is one Monte Carlo sample and
//! the standard error comes from the samples' spread):
//!
//! - (a) Ornstein–Uhlenbeck dX = −aX dt + θ dW: the diffusion depends on the parameter
//!   θ (not on the state), E[X_T²] = x₀²e^{−2aT} + θ²(1 − e^{−2aT})/(2a);
//! - (b) geometric Brownian motion dX = μX dt + σX dW: the diffusion depends on the
//!   state and on σ, E[X_T²] = x₀² exp((2μ + σ²)T); its Stratonovich form has drift
//!   (μ − ½σ²)X.
//!
//! The discrete objectives' expectations also have closed forms (each step multiplies
//! X by an affine or quadratic function of one normal), so a discretize-then-optimize
//! estimate is checked against the gradient of its own discrete expectation within
//! k standard errors, and against the exact gradient with the scheme's exact weak
//! error |∇E_h − ∇E| (O(h), EM and Heun have weak order 1 here) as the allowance.
//!
//! The corrected continuous adjoint agrees with the exact gradient (and converges path
//! by path to the discrete adjoint of stochastic Heun); the naive Itô adjoint is biased
//! on (b), by the amount a closed-form analysis of its recursion predicts, with a
//! nonzero limit as h → 0; on (a), where the diffusion depends on the parameter but
//! not on the state, the Itô-to-Stratonovich correction is zero and the naive adjoint
//! is consistent. Pathwise: both discrete adjoints equal central differences of the
//! discrete loss on the same path; the trainer's Heun paths equal the runtime's; the
//! ODE continuous adjoint approaches the discrete one at order 4.
//!
//! `cargo test -p socflow-trainer --release --test all sde_gradients:: -- --ignored
//! --nocapture` prints the bias table.

use socflow_runtime::brownian::Brownian;
use socflow_runtime::field::FnField;
use socflow_runtime::sde::{solve_sde_block, DiagonalDiffusion, SdeOptions, SdeWorkspace};
use socflow_testkit::observed_order;
use socflow_trainer::autodiff::{self, Cpu, DType, Graph, Tensor, Var};
use socflow_trainer::dto::{
    BrownianNoise, ContinuousAdjoint, Cotangents, Error, Method, PrecisionPolicy, ReverseScheme,
    SchemeIncrement, SdeScheme, SdeTerms, Solver, StochasticAdjoint,
};

type R<T> = autodiff::Result<T>;

/// Horizon.
const T_END: f64 = 1.0;
/// Monte Carlo paths per estimate.
const PATHS: usize = 40_000;
/// Standard errors allowed between an unbiased estimate and its expectation (the
/// checks are deterministic: fixed seeds).
const K_SE: f64 = 4.0;

fn t64(rows: usize, cols: usize, data: &[f64]) -> Tensor<Cpu> {
    Tensor::from_f64(&Cpu::new(), rows, cols, data, DType::F64).unwrap()
}

fn vals(t: &Tensor<Cpu>) -> Vec<f64> {
    t.to_f64(&Cpu::new()).unwrap()
}

fn grid(steps: usize) -> Vec<f64> {
    (0..=steps)
        .map(|i| T_END * i as f64 / steps as f64)
        .collect()
}

fn noise(seed: u64) -> BrownianNoise {
    BrownianNoise {
        brownian: Brownian::new(seed),
        first_sample: 0,
        dim: 1,
    }
}

// ---------------------------------------------------------------------------------------
// The two problems
// ---------------------------------------------------------------------------------------

/// dX = −aX dt + θ dW, params [a, θ] (each rows × 1). Additive noise: the Itô and
/// Stratonovich forms coincide.
struct Ou;

impl SdeTerms<Cpu> for Ou {
    fn drift(&self, g: &mut Graph<Cpu>, _t: Var, y: Var, p: &[Var]) -> R<Var> {
        let ay = g.mul(y, p[0])?;
        g.neg(ay)
    }
    fn diffusion(&self, g: &mut Graph<Cpu>, _t: Var, _y: Var, p: &[Var]) -> R<Var> {
        g.scale(p[1], 1.0)
    }
    fn diffusion_derivative(
        &self,
        g: &mut Graph<Cpu>,
        _t: Var,
        _y: Var,
        p: &[Var],
    ) -> R<Option<Var>> {
        Ok(Some(g.scale(p[1], 0.0)?))
    }
}

/// dX = μX dt + σX dW (Itô), or its Stratonovich form dX = (μ − ½σ²)X dt + σX ∘ dW;
/// params [μ, σ] (each rows × 1).
struct Gbm {
    stratonovich: bool,
}

impl SdeTerms<Cpu> for Gbm {
    fn drift(&self, g: &mut Graph<Cpu>, _t: Var, y: Var, p: &[Var]) -> R<Var> {
        let rate = if self.stratonovich {
            let s2 = g.square(p[1])?;
            g.add_scaled(p[0], s2, -0.5)?
        } else {
            p[0]
        };
        g.mul(y, rate)
    }
    fn diffusion(&self, g: &mut Graph<Cpu>, _t: Var, y: Var, p: &[Var]) -> R<Var> {
        g.mul(y, p[1])
    }
    fn diffusion_derivative(
        &self,
        g: &mut Graph<Cpu>,
        _t: Var,
        _y: Var,
        p: &[Var],
    ) -> R<Option<Var>> {
        Ok(Some(g.scale(p[1], 1.0)?))
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Problem {
    /// x₀, a, θ.
    Ou(f64, f64, f64),
    /// x₀, μ, σ.
    Gbm(f64, f64, f64),
}

const OU: Problem = Problem::Ou(1.0, 0.8, 0.6);
const GBM: Problem = Problem::Gbm(1.0, 0.2, 0.5);

/// Names of the gradient's entries: x₀ and the two parameters.
fn names(p: Problem) -> [&'static str; 3] {
    match p {
        Problem::Ou(..) => ["x0", "a", "theta"],
        Problem::Gbm(..) => ["x0", "mu", "sigma"],
    }
}

fn values(p: Problem) -> [f64; 3] {
    match p {
        Problem::Ou(x, a, b) | Problem::Gbm(x, a, b) => [x, a, b],
    }
}

fn terms(p: Problem, stratonovich: bool) -> Box<dyn SdeTerms<Cpu>> {
    match p {
        Problem::Ou(..) => Box::new(Ou),
        Problem::Gbm(..) => Box::new(Gbm { stratonovich }),
    }
}

/// ∇E[X_T²] in closed form, (∂x₀, ∂p₁, ∂p₂).
fn exact_gradient(p: Problem) -> [f64; 3] {
    let t = T_END;
    match p {
        Problem::Ou(x0, a, th) => {
            let e = (-2.0 * a * t).exp();
            [
                2.0 * x0 * e,
                -2.0 * t * x0 * x0 * e + th * th * (t * e / a - (1.0 - e) / (2.0 * a * a)),
                th * (1.0 - e) / a,
            ]
        }
        Problem::Gbm(x0, mu, s) => {
            let e = x0 * x0 * ((2.0 * mu + s * s) * t).exp();
            [2.0 * e / x0, 2.0 * t * e, 2.0 * s * t * e]
        }
    }
}

/// E[X_N²] of the discrete scheme in closed form (`heun`: stochastic Heun on the
/// Stratonovich form; else Euler–Maruyama on the Itô form).
fn discrete_expectation(p: Problem, v: [f64; 3], steps: usize, heun: bool) -> f64 {
    let h = T_END / steps as f64;
    let n = steps as i32;
    let [x0, p1, p2] = v;
    match p {
        Problem::Ou(..) => {
            let (a, th) = (p1, p2);
            // X₊ = cX + q·θΔW.
            let (c, q) = if heun {
                (1.0 - a * h + 0.5 * a * a * h * h, 1.0 - 0.5 * a * h)
            } else {
                (1.0 - a * h, 1.0)
            };
            let geo: f64 = (0..n).map(|k| c.powi(2 * k)).sum();
            c.powi(2 * n) * x0 * x0 + th * th * h * q * q * geo
        }
        Problem::Gbm(..) => {
            let (mu, s) = (p1, p2);
            let v = s * s * h;
            // X₊ = X·(1 + u) (EM) or X·(1 + u + u²/2) (Heun), u normal.
            let m2 = if heun {
                let m = (mu - 0.5 * s * s) * h;
                let (e1, e2) = (m, m * m + v);
                let e3 = m * m * m + 3.0 * m * v;
                let e4 = m.powi(4) + 6.0 * m * m * v + 3.0 * v * v;
                1.0 + 2.0 * e1 + 2.0 * e2 + e3 + 0.25 * e4
            } else {
                (1.0 + mu * h).powi(2) + v
            };
            x0 * x0 * m2.powi(n)
        }
    }
}

/// ∇ of [`discrete_expectation`] by fourth-order central differences (a smooth
/// closed-form function: accurate to ~1e-10).
fn discrete_gradient(p: Problem, steps: usize, heun: bool) -> [f64; 3] {
    let v = values(p);
    let mut out = [0.0; 3];
    for (e, o) in out.iter_mut().enumerate() {
        let d = 1e-3;
        let at = |x: f64| {
            let mut w = v;
            w[e] = x;
            discrete_expectation(p, w, steps, heun)
        };
        let x = v[e];
        *o = (at(x - 2.0 * d) - 8.0 * at(x - d) + 8.0 * at(x + d) - at(x + 2.0 * d)) / (12.0 * d);
    }
    out
}

// ---------------------------------------------------------------------------------------
// The gradient estimators
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq)]
enum Estimator {
    /// Discretize-then-optimize through Euler–Maruyama on the Itô form.
    DtoEm,
    /// Discretize-then-optimize through stochastic Heun on the Stratonovich form.
    DtoHeun,
    /// Forward stochastic Heun on the Stratonovich form, then the continuous adjoint
    /// of the Itô terms with [`StochasticAdjoint::CORRECTED`].
    Corrected,
    /// Forward Euler–Maruyama on the Itô form, then [`StochasticAdjoint::NAIVE_ITO`].
    Naive,
    /// Forward Euler–Maruyama, then the uncorrected drift with reverse Heun.
    NaiveHeun,
}

impl Estimator {
    fn name(self) -> &'static str {
        match self {
            Estimator::DtoEm => "DTO Euler-Maruyama",
            Estimator::DtoHeun => "DTO stochastic Heun",
            Estimator::Corrected => "adjoint, corrected",
            Estimator::Naive => "adjoint, naive Ito",
            Estimator::NaiveHeun => "adjoint, naive + Heun",
        }
    }
}

/// Per-path samples of ∂X_T²/∂(x₀, p₁, p₂): three vectors of `rows` entries.
fn gradient_samples(
    p: Problem,
    est: Estimator,
    rows: usize,
    steps: usize,
    nz: &BrownianNoise,
) -> [Vec<f64>; 3] {
    let v = values(p);
    let col = |x: f64| t64(rows, 1, &vec![x; rows]);
    let (y0, params) = (col(v[0]), vec![col(v[1]), col(v[2])]);
    let times = grid(steps);
    let solver = Solver::new(Method::Euler, PrecisionPolicy::f64());
    let mut g = Graph::new(Cpu::new());
    let (stratonovich, scheme) = match est {
        Estimator::DtoHeun | Estimator::Corrected => (true, SdeScheme::StochasticHeun),
        _ => (false, SdeScheme::EulerMaruyama),
    };
    let fwd_terms = terms(p, stratonovich);
    let inc = SchemeIncrement::new(fwd_terms.as_ref(), scheme);
    let traj = solver
        .forward_sde(&mut g, &inc, nz, &y0, &times, &params)
        .unwrap();
    let yt = vals(traj.final_state());
    let cot = t64(rows, 1, &yt.iter().map(|y| 2.0 * y).collect::<Vec<_>>());
    let (gy0, gp) = match est {
        Estimator::DtoEm | Estimator::DtoHeun => {
            let gr = solver
                .backward_sde(
                    &mut g,
                    &inc,
                    nz,
                    &traj,
                    &params,
                    &Cotangents::terminal(cot),
                    false,
                )
                .unwrap();
            (gr.y0, gr.params)
        }
        _ => {
            let variant = match est {
                Estimator::Corrected => StochasticAdjoint::CORRECTED,
                Estimator::Naive => StochasticAdjoint::NAIVE_ITO,
                _ => StochasticAdjoint {
                    ito_correction: false,
                    scheme: ReverseScheme::Heun,
                },
            };
            let ito = terms(p, false);
            let gr = ContinuousAdjoint::default()
                .sde(
                    &mut g,
                    ito.as_ref(),
                    nz,
                    variant,
                    traj.final_state(),
                    &times,
                    &params,
                    &cot,
                )
                .unwrap();
            (gr.y0, gr.params)
        }
    };
    [vals(&gy0), vals(&gp[0]), vals(&gp[1])]
}

/// Mean and standard error of samples.
fn mean_se(x: &[f64]) -> (f64, f64) {
    let n = x.len() as f64;
    let m = x.iter().sum::<f64>() / n;
    let var = x.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (n - 1.0);
    (m, (var / n).sqrt())
}

/// Monte Carlo estimate of ∇E[X_T²]: (mean, standard error) per entry.
fn estimate(p: Problem, est: Estimator, steps: usize, seed: u64) -> [(f64, f64); 3] {
    let s = gradient_samples(p, est, PATHS, steps, &noise(seed));
    [mean_se(&s[0]), mean_se(&s[1]), mean_se(&s[2])]
}

/// The exact discrete gradient the estimator is unbiased for, when known in closed
/// form (the discretize-then-optimize estimators).
fn own_expectation(p: Problem, est: Estimator, steps: usize) -> Option<[f64; 3]> {
    match est {
        Estimator::DtoEm => Some(discrete_gradient(p, steps, false)),
        Estimator::DtoHeun => Some(discrete_gradient(p, steps, true)),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------
// Pathwise checks
// ---------------------------------------------------------------------------------------

/// Fourth-order central difference.
fn fd(x: f64, mut f: impl FnMut(f64) -> f64) -> f64 {
    let h = (1e-3 * x.abs().max(1.0)).log2().round().exp2();
    (f(x - 2.0 * h) - 8.0 * f(x - h) + 8.0 * f(x + h) - f(x + 2.0 * h)) / (12.0 * h)
}

#[test]
fn discrete_gradients_equal_finite_differences_on_the_same_path() {
    // ℓ = Σ_rows X_N² on one fixed Brownian path per row, per-row x₀ and parameters:
    // the discrete adjoint of EM (Itô form) and of stochastic Heun (Stratonovich form)
    // against central differences of the same discrete loss, entry by entry.
    let (rows, steps) = (3usize, 12usize);
    let times = grid(steps);
    let nz = noise(5);
    let solver = Solver::new(Method::Euler, PrecisionPolicy::f64());
    for p in [OU, GBM] {
        for (stratonovich, scheme) in [
            (false, SdeScheme::EulerMaruyama),
            (true, SdeScheme::StochasticHeun),
        ] {
            let tm = terms(p, stratonovich);
            let inc = SchemeIncrement::new(tm.as_ref(), scheme);
            let base = values(p);
            // Per-row values, spread a little so rows differ.
            let init: Vec<Vec<f64>> = (0..3)
                .map(|e| {
                    (0..rows)
                        .map(|r| base[e] * (1.0 + 0.1 * r as f64))
                        .collect()
                })
                .collect();
            let loss = |v: &[Vec<f64>]| -> f64 {
                let mut g = Graph::new(Cpu::new());
                let ps = [t64(rows, 1, &v[1]), t64(rows, 1, &v[2])];
                let tr = solver
                    .forward_sde(&mut g, &inc, &nz, &t64(rows, 1, &v[0]), &times, &ps)
                    .unwrap();
                vals(tr.final_state()).iter().map(|y| y * y).sum()
            };
            let mut g = Graph::new(Cpu::new());
            let ps = [t64(rows, 1, &init[1]), t64(rows, 1, &init[2])];
            let traj = solver
                .forward_sde(&mut g, &inc, &nz, &t64(rows, 1, &init[0]), &times, &ps)
                .unwrap();
            let yt = vals(traj.final_state());
            let cot = t64(rows, 1, &yt.iter().map(|y| 2.0 * y).collect::<Vec<_>>());
            let gr = solver
                .backward_sde(
                    &mut g,
                    &inc,
                    &nz,
                    &traj,
                    &ps,
                    &Cotangents::terminal(cot),
                    false,
                )
                .unwrap();
            let ad = [vals(&gr.y0), vals(&gr.params[0]), vals(&gr.params[1])];
            let mut worst: f64 = 0.0;
            for e in 0..3 {
                for r in 0..rows {
                    let d = fd(init[e][r], |x| {
                        let mut v = init.clone();
                        v[e][r] = x;
                        loss(&v)
                    });
                    let rel = (ad[e][r] - d).abs() / d.abs().max(1e-3);
                    worst = worst.max(rel);
                }
            }
            eprintln!("{p:?} {}: worst rel err vs FD {worst:.2e}", scheme.name());
            assert!(worst < 1e-8, "{p:?} {}: {worst:e}", scheme.name());
        }
    }
}

#[test]
fn heun_step_map_paths_equal_the_runtime_solver() {
    // The trainer's stochastic Heun increment and the runtime's stochastic Heun on the
    // same generator and sample indices: the same paths (GBM, Stratonovich form).
    let (mu, s, rows, steps) = (0.2, 0.5, 6usize, 16usize);
    let x0: Vec<f64> = (0..rows).map(|r| 0.5 + 0.2 * r as f64).collect();
    let col = |x: f64| t64(rows, 1, &vec![x; rows]);
    let nz = BrownianNoise {
        first_sample: 300,
        ..noise(9)
    };
    let solver = Solver::new(Method::Euler, PrecisionPolicy::f64());
    let mut g = Graph::new(Cpu::new());
    let tm = Gbm { stratonovich: true };
    let inc = SchemeIncrement::new(&tm, SdeScheme::StochasticHeun);
    let traj = solver
        .forward_sde(
            &mut g,
            &inc,
            &nz,
            &t64(rows, 1, &x0),
            &grid(steps),
            &[col(mu), col(s)],
        )
        .unwrap();
    let ours = vals(traj.final_state());
    let b = mu - 0.5 * s * s;
    let drift = FnField::new(1, move |_t: f64, x: &[f64], out: &mut [f64]| {
        out[0] = b * x[0]
    });
    let diffusion = DiagonalDiffusion::new(1, move |_t: f64, x: &[f64], out: &mut [f64]| {
        out[0] = s * x[0]
    });
    let mut x = x0.clone();
    let mut ws = SdeWorkspace::new(rows, 1, 0);
    solve_sde_block(
        &drift,
        &diffusion,
        &SdeOptions::new(SdeScheme::StochasticHeun, steps),
        0.0,
        T_END,
        &mut x,
        &Brownian::new(9),
        300,
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
        "trainer and runtime Heun paths differ by {worst:e}"
    );
    let moved = ours
        .iter()
        .zip(&x0)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(moved > 0.1, "paths did not move ({moved:e})");
}

#[test]
fn heun_gradients_in_mixed_precision() {
    // The stochastic Heun increment under the solver's precision policies (terms at
    // the network precision, t + h formed there too): the gradient of Σ X_N² on fixed
    // paths against the f64 one, f32 close and f16 (dynamic scaling) within its
    // rounding.
    let (rows, steps) = (64usize, 40usize);
    let nz = noise(31);
    let tm = Gbm { stratonovich: true };
    let inc = SchemeIncrement::new(&tm, SdeScheme::StochasticHeun);
    let grads = |policy: PrecisionPolicy| -> Vec<f64> {
        let solver = Solver::new(Method::Euler, policy);
        let mut g = Graph::new(Cpu::new());
        let col = |x: f64| t64(rows, 1, &vec![x; rows]);
        let ps = [col(0.2), col(0.5)];
        let traj = solver
            .forward_sde(&mut g, &inc, &nz, &col(1.0), &grid(steps), &ps)
            .unwrap();
        let yt = vals(traj.final_state());
        let cot = t64(rows, 1, &yt.iter().map(|y| 2.0 * y).collect::<Vec<_>>());
        let gr = solver
            .backward_sde(
                &mut g,
                &inc,
                &nz,
                &traj,
                &ps,
                &Cotangents::terminal(cot),
                false,
            )
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
    let (e32, e16) = (
        rel(&grads(PrecisionPolicy::f32())),
        rel(&grads(PrecisionPolicy::f16())),
    );
    eprintln!("stochastic Heun gradient rel err: f32 {e32:.2e}, f16 {e16:.2e}");
    assert!(e32 < 1e-5, "f32 {e32:e}");
    assert!(e16 < 1e-2, "f16 {e16:e}");
    assert!(
        e16 > 0.0,
        "f16 gave the f64 gradient exactly: precision not applied?"
    );
}

/// y' = θ₀ tanh(y) − θ₁ y + θ₂ t, params 1 × 1 each (shared by the rows).
fn ode_rhs(g: &mut Graph<Cpu>, t: Var, y: Var, p: &[Var]) -> R<Var> {
    let th = g.tanh(y)?;
    let a = g.mul(th, p[0])?;
    let b = g.mul(y, p[1])?;
    let c = g.mul(p[2], t)?;
    let d = g.sub(a, b)?;
    g.add(d, c)
}

#[test]
fn ode_continuous_adjoint_matches_the_closed_form_gradient() {
    // y' = −θ y, ℓ = ½ y(T)²: ∂ℓ/∂y₀ = y(T)e^{−θT}, ∂ℓ/∂θ = −T y(T)². The continuous
    // adjoint (RK4 forward, RK4 backward reversing the ODE) converges to them at order 4.
    let (y0, theta, t_end): (f64, f64, f64) = (1.5, 0.8, 2.0);
    let decay = |g: &mut Graph<Cpu>, _t: Var, y: Var, p: &[Var]| -> R<Var> {
        let k = g.mul(y, p[0])?;
        g.neg(k)
    };
    let yt = y0 * (-theta * t_end).exp();
    let exact = [yt * (-theta * t_end).exp(), -t_end * yt * yt];
    let solver = Solver::new(Method::Rk4, PrecisionPolicy::f64());
    let steps = [4usize, 8, 16, 32];
    let mut errs = Vec::new();
    for &n in &steps {
        let times: Vec<f64> = (0..=n).map(|i| t_end * i as f64 / n as f64).collect();
        let mut g = Graph::new(Cpu::new());
        let params = [t64(1, 1, &[theta])];
        let traj = solver
            .forward(&mut g, &decay, &t64(1, 1, &[y0]), &times, &params)
            .unwrap();
        let fin = traj.final_state().try_clone(&Cpu::new()).unwrap();
        let otd = ContinuousAdjoint::default()
            .ode(&mut g, &decay, &fin, &times, &params, &fin)
            .unwrap();
        let got = [vals(&otd.y0)[0], vals(&otd.params[0])[0]];
        let e = (got[0] - exact[0]).abs().max((got[1] - exact[1]).abs());
        eprintln!("decay, {n} steps: gradient {got:?}, exact {exact:?}, error {e:.2e}");
        errs.push(e);
    }
    let order = observed_order(&steps, &errs);
    assert!((3.5..=4.8).contains(&order), "order {order} ({errs:?})");
    assert!(errs[3] < 1e-5, "{errs:?}");
}

#[test]
fn ode_continuous_adjoint_approaches_the_discrete_one_at_fourth_order() {
    // ℓ = ½Σ y_N²: the continuous adjoint (RK4 backward, reversing the ODE) against the
    // discrete adjoint of RK4 on the same grid. Both are within O(h⁴) of the exact
    // gradient, so their difference falls at order 4 as the steps double.
    let y0 = t64(3, 1, &[0.7, -1.1, 0.3]);
    let params = [t64(1, 1, &[1.3]), t64(1, 1, &[0.9]), t64(1, 1, &[0.5])];
    let solver = Solver::new(Method::Rk4, PrecisionPolicy::f64());
    let steps = [4usize, 8, 16, 32];
    let mut diffs = Vec::new();
    let mut recon = Vec::new();
    for &n in &steps {
        let times: Vec<f64> = (0..=n).map(|i| 2.0 * i as f64 / n as f64).collect();
        let mut g = Graph::new(Cpu::new());
        let traj = solver
            .forward(&mut g, &ode_rhs, &y0, &times, &params)
            .unwrap();
        let yt = traj.final_state().try_clone(&Cpu::new()).unwrap();
        let dto = solver
            .backward(
                &mut g,
                &ode_rhs,
                &traj,
                &params,
                &Cotangents::terminal(yt.try_clone(&Cpu::new()).unwrap()),
                false,
            )
            .unwrap();
        let otd = ContinuousAdjoint::default()
            .ode(&mut g, &ode_rhs, &yt, &times, &params, &yt)
            .unwrap();
        let mut d: f64 = 0.0;
        let pairs = std::iter::once((&dto.y0, &otd.y0)).chain(dto.params.iter().zip(&otd.params));
        for (a, b) in pairs {
            for (x, y) in vals(a).iter().zip(vals(b)) {
                d = d.max((x - y).abs());
            }
        }
        let r = vals(&otd.reconstructed_y0)
            .iter()
            .zip(vals(&y0))
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        eprintln!("ode, {n} steps: |OTD − DTO| = {d:.3e}, |y0 reconstructed − y0| = {r:.3e}");
        diffs.push(d);
        recon.push(r);
    }
    let order = observed_order(&steps, &diffs);
    eprintln!("observed order of |OTD − DTO|: {order:.2}");
    assert!((3.5..=4.8).contains(&order), "order {order}");
    assert!(diffs[steps.len() - 1] < 1e-5, "{diffs:?}");
    assert!(recon[steps.len() - 1] < 1e-5, "{recon:?}");
}

// ---------------------------------------------------------------------------------------
// Monte Carlo checks against the closed forms
// ---------------------------------------------------------------------------------------

/// Prints and returns (estimate, se, exact, allowance) per entry.
fn check_line(p: Problem, est: Estimator, steps: usize, seed: u64) -> [(f64, f64, f64); 3] {
    let e = estimate(p, est, steps, seed);
    let exact = exact_gradient(p);
    let own = own_expectation(p, est, steps);
    let mut out = [(0.0, 0.0, 0.0); 3];
    for k in 0..3 {
        let (m, se) = e[k];
        let line = format!(
            "{:<8} {:<22} {:>3} {:<6} {:>10.5} ± {:.5}  exact {:>9.5}  (est − exact)/SE {:>7.1}",
            match p {
                Problem::Ou(..) => "OU",
                Problem::Gbm(..) => "GBM",
            },
            est.name(),
            steps,
            names(p)[k],
            m,
            se,
            exact[k],
            (m - exact[k]) / se
        );
        match own {
            Some(o) => eprintln!(
                "{line}  discrete {:>9.5} ({:+.1} SE)",
                o[k],
                (m - o[k]) / se
            ),
            None => eprintln!("{line}"),
        }
        out[k] = (m, se, exact[k]);
    }
    out
}

#[test]
fn discretize_then_optimize_is_unbiased_for_its_discrete_objective() {
    // EM on the Itô form and stochastic Heun on the Stratonovich form: the estimate is
    // within K_SE standard errors of the gradient of the scheme's own discrete
    // expectation, and of the exact gradient up to that discrete gradient's exact
    // weak error (the allowance, O(h)).
    let steps = 40;
    for p in [OU, GBM] {
        for est in [Estimator::DtoEm, Estimator::DtoHeun] {
            let own = own_expectation(p, est, steps).unwrap();
            let line = check_line(p, est, steps, 11);
            for k in 0..3 {
                let (m, se, exact) = line[k];
                let allowance = (own[k] - exact).abs();
                assert!(
                    (m - own[k]).abs() <= K_SE * se,
                    "{p:?} {} {}: {m} vs discrete {} (SE {se})",
                    est.name(),
                    names(p)[k],
                    own[k]
                );
                assert!(
                    (m - exact).abs() <= K_SE * se + allowance,
                    "{p:?} {} {}: {m} vs exact {exact} (SE {se}, allowance {allowance})",
                    est.name(),
                    names(p)[k]
                );
            }
        }
    }
}

#[test]
fn corrected_continuous_adjoint_agrees_with_the_exact_gradient() {
    // Li et al.'s adjoint of the Itô SDE (Stratonovich drift f − ½ g ∂g/∂y, reverse
    // stochastic Heun from the final state of a forward stochastic Heun solve): within
    // K_SE standard errors of the exact gradient, plus the O(h) allowance of the
    // forward scheme's exact weak error at the same step (the adjoint reverses that
    // solve with the same scheme, so its discretization error is of the same order).
    for p in [OU, GBM] {
        for steps in [20, 80] {
            let allow = discrete_gradient(p, steps, true);
            let line = check_line(p, Estimator::Corrected, steps, 11);
            for k in 0..3 {
                let (m, se, exact) = line[k];
                let allowance = (allow[k] - exact).abs();
                assert!(
                    (m - exact).abs() <= K_SE * se + allowance,
                    "{p:?} corrected {} at {steps} steps: {m} vs {exact} (SE {se}, \
                     allowance {allowance})",
                    names(p)[k]
                );
            }
        }
    }
    // Path by path it converges to the discrete adjoint of the forward Heun solve:
    // the root-mean-square difference falls at least like h^(1/2) (strong order ½;
    // order 1 is expected for this commutative noise) from 20 to 80 steps.
    let rms = |steps: usize| -> [f64; 3] {
        let nz = noise(23);
        let a = gradient_samples(GBM, Estimator::Corrected, 2000, steps, &nz);
        let b = gradient_samples(GBM, Estimator::DtoHeun, 2000, steps, &nz);
        let mut out = [0.0; 3];
        for k in 0..3 {
            let ss: f64 = a[k].iter().zip(&b[k]).map(|(x, y)| (x - y).powi(2)).sum();
            out[k] = (ss / a[k].len() as f64).sqrt();
        }
        out
    };
    let (coarse, fine) = (rms(20), rms(80));
    for k in 0..3 {
        eprintln!(
            "GBM {}: rms |corrected − DTO Heun| {:.3e} (20 steps) → {:.3e} (80 steps)",
            names(GBM)[k],
            coarse[k],
            fine[k]
        );
        assert!(
            fine[k] <= 0.5 * coarse[k] || fine[k] < 1e-12,
            "GBM {}: {} → {}",
            names(GBM)[k],
            coarse[k],
            fine[k]
        );
    }
    // Where the state-independent parts make both the same linear recursion (x₀), the
    // two agree to rounding.
    assert!(fine[0] < 1e-10, "x0 {}", fine[0]);
}

/// The expectation of the naive adjoint's (μ, σ) gradient on GBM after `steps` EM
/// steps, in closed form. With u_k = μh + σΔW_k, the naive reverse pass gives
/// a_{i+1}·y_{i+1} = 2X_N²·Π_{k>i}(1 − u_k²) (the reconstructed path shrinks by
/// 1 − u_k² a step instead of retracing X), and the steps are independent, so
/// E[∂μ] = Σᵢ 2h x₀² M₁^{i+1} M₂^{N−1−i} and E[∂σ] = Σᵢ 2x₀² M₁^i · 2(1 + μh)σh ·
/// M₂^{N−1−i}, M₁ = E[(1 + u)²], M₂ = E[(1 + u)²(1 − u²)].
fn naive_gbm_expectation(steps: usize) -> [f64; 2] {
    let Problem::Gbm(x0, mu, s) = GBM else {
        unreachable!("GBM is a Gbm problem")
    };
    let h = T_END / steps as f64;
    let (m, v) = (mu * h, s * s * h);
    let (e3, e4) = (
        m.powi(3) + 3.0 * m * v,
        m.powi(4) + 6.0 * m * m * v + 3.0 * v * v,
    );
    let m1 = (1.0 + m).powi(2) + v;
    let m2 = 1.0 + 2.0 * m - 2.0 * e3 - e4;
    let n = steps as i32;
    let (mut dmu, mut dsig) = (0.0, 0.0);
    for i in 0..n {
        let tail = m2.powi(n - 1 - i);
        dmu += 2.0 * h * x0 * x0 * m1.powi(i + 1) * tail;
        dsig += 2.0 * x0 * x0 * m1.powi(i) * 2.0 * (1.0 + m) * s * h * tail;
    }
    [dmu, dsig]
}

#[test]
fn naive_ito_adjoint_is_biased_when_the_diffusion_depends_on_the_state() {
    // GBM, diffusion σX: the naive adjoint (Itô drift as if Stratonovich, Jacobians at
    // the right-hand point) misses the μ and σ gradients by many standard errors
    // beyond the O(h) allowance (EM's exact weak error), and the miss does not shrink
    // from 20 to 80 steps: it converges to the wrong value. Its x₀ gradient is right
    // here (∂f/∂y and ∂g/∂y are constant, so the right-hand-point Jacobians are exact).
    let mut bias = [[0.0; 3]; 2];
    for (j, steps) in [20usize, 80].into_iter().enumerate() {
        let allow = discrete_gradient(GBM, steps, false);
        let line = check_line(GBM, Estimator::Naive, steps, 11);
        for k in 0..3 {
            let (m, se, exact) = line[k];
            let allowance = (allow[k] - exact).abs();
            bias[j][k] = m - exact;
            if k == 0 {
                assert!(
                    (m - exact).abs() <= K_SE * se + allowance,
                    "x0 {m} vs {exact}"
                );
            } else {
                assert!(
                    (m - exact).abs() > 8.0 * se + allowance,
                    "naive {} at {steps} steps: {m} vs {exact} (SE {se}): no bias?",
                    names(GBM)[k]
                );
                // And it is what the analysis of the naive recursion predicts.
                let own = naive_gbm_expectation(steps)[k - 1];
                eprintln!(
                    "naive GBM {} at {steps} steps: closed-form expectation {own:.5} \
                     ({:+.1} SE)",
                    names(GBM)[k],
                    (m - own) / se
                );
                assert!(
                    (m - own).abs() <= K_SE * se,
                    "naive {} at {steps} steps: {m} vs its expectation {own} (SE {se})",
                    names(GBM)[k]
                );
            }
        }
    }
    let [b20, b80] = bias;
    for (k, (coarse, fine)) in b20.into_iter().zip(b80).enumerate().skip(1) {
        eprintln!(
            "naive GBM {}: bias {coarse:+.4} (20 steps) → {fine:+.4} (80 steps)",
            names(GBM)[k]
        );
        assert!(
            fine.signum() == coarse.signum() && fine.abs() >= 0.7 * coarse.abs(),
            "naive {} bias shrank: {coarse} → {fine}",
            names(GBM)[k]
        );
    }
    // As h → 0 that expectation tends to 2E(1 − e^{−σ²T})/σ² for μ and
    // 4σE(1 − e^{−σ²T})/σ² for σ (E = E[X_T²]), not to the exact 2TE and 2σTE.
    let Problem::Gbm(x0, mu, s) = GBM else {
        unreachable!("GBM is a Gbm problem")
    };
    let e = x0 * x0 * ((2.0 * mu + s * s) * T_END).exp();
    let shrink = (1.0 - (-s * s * T_END).exp()) / (s * s);
    let limit = [2.0 * e * shrink, 4.0 * s * e * shrink];
    let fine = naive_gbm_expectation(100_000);
    let exact = exact_gradient(GBM);
    for k in 0..2 {
        eprintln!(
            "naive GBM {}: expectation at 1e5 steps {:.5}, limit {:.5}, exact {:.5}",
            names(GBM)[k + 1],
            fine[k],
            limit[k],
            exact[k + 1]
        );
        assert!(
            (fine[k] - limit[k]).abs() < 1e-3 * limit[k],
            "{fine:?} vs {limit:?}"
        );
        assert!((limit[k] - exact[k + 1]).abs() > 0.1 * exact[k + 1]);
    }
}

#[test]
fn naive_ito_adjoint_is_consistent_when_the_diffusion_ignores_the_state() {
    // OU, diffusion θ: the Itô-to-Stratonovich correction ½ g ∂g/∂y is zero, so the
    // naive adjoint converges to the exact gradient too (at 80 steps within K_SE
    // standard errors plus EM's exact weak error). A diffusion that depends on the
    // parameter only does not bias it; the dependence on the state does.
    let steps = 80;
    let allow = discrete_gradient(OU, steps, false);
    let line = check_line(OU, Estimator::Naive, steps, 11);
    for k in 0..3 {
        let (m, se, exact) = line[k];
        let allowance = (allow[k] - exact).abs();
        assert!(
            (m - exact).abs() <= K_SE * se + allowance,
            "naive OU {}: {m} vs {exact} (SE {se}, allowance {allowance})",
            names(OU)[k]
        );
    }
}

#[test]
fn continuous_adjoint_argument_errors() {
    // Terms without ∂g/∂y cannot be corrected; the noise must be diagonal; the
    // cotangent must have the state's shape.
    struct NoDerivative;
    impl SdeTerms<Cpu> for NoDerivative {
        fn drift(&self, g: &mut Graph<Cpu>, _t: Var, y: Var, _p: &[Var]) -> R<Var> {
            g.scale(y, -1.0)
        }
        fn diffusion(&self, g: &mut Graph<Cpu>, _t: Var, y: Var, _p: &[Var]) -> R<Var> {
            g.scale(y, 0.3)
        }
    }
    let y = t64(2, 1, &[1.0, 2.0]);
    let times = grid(4);
    let adj = ContinuousAdjoint::default();
    let mut g = Graph::new(Cpu::new());
    let nz = noise(1);
    let e = adj
        .sde(
            &mut g,
            &NoDerivative,
            &nz,
            StochasticAdjoint::CORRECTED,
            &y,
            &times,
            &[],
            &y,
        )
        .unwrap_err();
    assert!(
        matches!(e, Error::InvalidArgument(ref m) if m.contains("diffusion_derivative")),
        "{e}"
    );
    // Uncorrected, the same terms run.
    let ok = adj
        .sde(
            &mut g,
            &NoDerivative,
            &nz,
            StochasticAdjoint::NAIVE_ITO,
            &y,
            &times,
            &[],
            &y,
        )
        .unwrap();
    assert!(vals(&ok.y0).iter().all(|v| v.is_finite()));
    let wide = BrownianNoise { dim: 2, ..nz };
    let e = adj
        .sde(
            &mut g,
            &NoDerivative,
            &wide,
            StochasticAdjoint::NAIVE_ITO,
            &y,
            &times,
            &[],
            &y,
        )
        .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    let e = adj
        .ode(&mut g, &ode_rhs, &y, &times, &[], &t64(1, 1, &[1.0]))
        .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    let e = adj
        .ode(&mut g, &ode_rhs, &y, &[0.0, 0.0], &[], &y)
        .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    let nan = t64(2, 1, &[f64::NAN, 0.0]);
    let e = adj
        .ode(&mut g, &ode_rhs, &y, &times, &[], &nan)
        .unwrap_err();
    assert!(matches!(e, Error::NonFiniteCotangent { .. }), "{e}");
}

#[test]
#[ignore = "prints the bias table; run with --ignored --nocapture"]
fn report_bias_table() {
    eprintln!(
        "problem  method                 steps entry  estimate ± SE       exact       bias/SE"
    );
    for p in [OU, GBM] {
        for est in [
            Estimator::DtoEm,
            Estimator::DtoHeun,
            Estimator::Corrected,
            Estimator::Naive,
            Estimator::NaiveHeun,
        ] {
            for steps in [20, 80] {
                check_line(p, est, steps, 11);
            }
        }
    }
}
