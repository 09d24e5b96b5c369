//! Tests of the NeuralSOC reference answers (`soc::reference`, issue 4) against
//! independent ones: closed forms, finite differences of the HJB equation, brute-force
//! tensor quadrature of the d-dimensional Cole–Hopf expectation, Monte Carlo with
//! standard-error bounds, the deterministic N-step optimum in closed form.

use socflow_runtime::brownian::Brownian;
use socflow_trainer::soc::reference::*;
use socflow_trainer::Error;

/// Reproducible uniforms in [0, 1) (splitmix64).
struct Uniform(u64);

impl Uniform {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.next()
    }
}

fn normals(seed: u64, n: usize) -> Vec<f64> {
    let mut v = vec![0.0; n];
    Brownian::new(seed).normals(0, 0, &mut v).unwrap();
    v
}

fn assert_close(what: &str, got: f64, want: f64, rel: f64, abs: f64) {
    let err = (got - want).abs();
    assert!(
        err <= rel * want.abs() + abs,
        "{what}: got {got:.15e}, want {want:.15e}, error {err:.3e}"
    );
}

// ---------------------------------------------------------------------------------
// LQR
// ---------------------------------------------------------------------------------

fn scalar_lqr(a: f64, b: f64, r: f64, q: f64, qt: f64, sigma: f64, t: f64) -> Lqr {
    Lqr {
        d: 1,
        k: 1,
        a: vec![a],
        b: vec![b],
        r: vec![r],
        q: vec![q],
        q_terminal: vec![qt],
        sigma: Diffusion::Scalar(sigma),
        horizon: t,
    }
}

/// The scalar Riccati solution in closed form, `τ = T − t`, `s = b²/r`,
/// `γ = √(a² + sq)`:
/// `p = [p_T(γ cosh γτ + a sinh γτ) + q sinh γτ] / [γ cosh γτ − (a − s p_T) sinh γτ]`.
fn scalar_p(a: f64, b: f64, r: f64, q: f64, pt: f64, tau: f64) -> f64 {
    let s = b * b / r;
    let g = (a * a + s * q).sqrt();
    let (ch, sh) = ((g * tau).cosh(), (g * tau).sinh());
    (pt * (g * ch + a * sh) + q * sh) / (g * ch - (a - s * pt) * sh)
}

#[test]
fn lqr_scalar_matches_closed_form() {
    // (a, b, r, q, q_T, σ, T): unstable drift; stable drift with a stiff terminal cost.
    let cases = [
        (0.3, 1.3, 0.7, 2.0, 0.5, 0.4, 1.5),
        (-0.8, 0.5, 2.0, 0.1, 40.0, 1.1, 2.0),
    ];
    for &(a, b, r, q, qt, sigma, big_t) in &cases {
        let sol = scalar_lqr(a, b, r, q, qt, sigma, big_t).solve().unwrap();
        assert!(sol.error_estimate() <= 1e-12);
        for &t in &[0.0, 0.123_456_7, 0.5 * big_t, big_t - 1e-3, big_t] {
            let tau = big_t - t;
            let p_exact = scalar_p(a, b, r, q, qt, tau);
            let p = sol.p(t).unwrap();
            assert_close("P(t)", p[0], p_exact, 1e-10, 0.0);
            // c(t) = ½σ² ∫_0^τ p, Simpson on the closed form.
            let n = 20_000;
            let h = tau / n as f64;
            let mut simpson = 0.0;
            for i in 0..=n {
                let w = if i == 0 || i == n {
                    1.0
                } else if i % 2 == 1 {
                    4.0
                } else {
                    2.0
                };
                simpson += w * scalar_p(a, b, r, q, qt, i as f64 * h);
            }
            let c_exact = 0.5 * sigma * sigma * simpson * h / 3.0;
            assert_close("c(t)", sol.c(t).unwrap(), c_exact, 1e-10, 1e-14);
            let z = 0.7;
            assert_close(
                "value",
                sol.value(t, &[z]).unwrap(),
                0.5 * p_exact * z * z + c_exact,
                1e-10,
                1e-14,
            );
            assert_close(
                "gradient",
                sol.gradient(t, &[z]).unwrap()[0],
                p_exact * z,
                1e-10,
                0.0,
            );
            assert_close(
                "control",
                sol.control(t, &[z]).unwrap()[0],
                -b / r * p_exact * z,
                1e-10,
                0.0,
            );
        }
    }
}

/// A general LQR with k < d and a full noise matrix.
fn matrix_lqr() -> Lqr {
    let (d, k) = (4, 2);
    let g = normals(11, d * d + d * k + d * d + d * d);
    let a: Vec<f64> = g[..d * d].iter().map(|x| 0.5 * x).collect();
    let b: Vec<f64> = g[d * d..d * d + d * k].to_vec();
    let m = &g[d * d + d * k..2 * d * d + d * k];
    // Q = MᵀM/d + 0.1 I (symmetric positive definite).
    let mut q = vec![0.0; d * d];
    for i in 0..d {
        for j in 0..d {
            q[i * d + j] = (0..d).map(|l| m[l * d + i] * m[l * d + j]).sum::<f64>() / d as f64
                + if i == j { 0.1 } else { 0.0 };
        }
    }
    let sigma: Vec<f64> = g[2 * d * d + d * k..].iter().map(|x| 0.3 * x).collect();
    Lqr {
        d,
        k,
        a,
        b,
        r: vec![1.5, 0.3, 0.3, 0.8],
        q: q.clone(),
        q_terminal: q.iter().map(|x| 2.0 * x).collect(),
        sigma: Diffusion::Matrix(sigma),
        horizon: 1.3,
    }
}

/// `−Φ_t − ½tr(σσᵀ∇²Φ) − ∇ΦᵀAz + ½∇ΦᵀBR⁻¹Bᵀ∇Φ − ½zᵀQz`, every derivative of Φ by
/// central finite differences of `value` (exact in z, Φ being quadratic).
fn lqr_residual(sol: &LqrSolution, t: f64, z: &[f64]) -> (f64, f64) {
    let pr = sol.problem();
    let (d, k) = (pr.d, pr.k);
    let phi = |t: f64, z: &[f64]| sol.value(t, z).unwrap();
    let ht = 1e-3;
    let phi_t = (-phi(t + 2.0 * ht, z) + 8.0 * phi(t + ht, z) - 8.0 * phi(t - ht, z)
        + phi(t - 2.0 * ht, z))
        / (12.0 * ht);
    let hz = 1e-2;
    let shifted =
        |dir: &[f64], s: f64| -> Vec<f64> { z.iter().zip(dir).map(|(a, b)| a + s * b).collect() };
    let mut grad = vec![0.0; d];
    for (i, gi) in grad.iter_mut().enumerate() {
        let mut e = vec![0.0; d];
        e[i] = 1.0;
        *gi = (phi(t, &shifted(&e, hz)) - phi(t, &shifted(&e, -hz))) / (2.0 * hz);
    }
    let sig = pr.sigma_matrix();
    let mut trace = 0.0;
    for j in 0..d {
        let col: Vec<f64> = (0..d).map(|i| sig[i * d + j]).collect();
        trace += (phi(t, &shifted(&col, hz)) - 2.0 * phi(t, z) + phi(t, &shifted(&col, -hz)))
            / (hz * hz);
    }
    let az: Vec<f64> = (0..d)
        .map(|i| (0..d).map(|j| pr.a[i * d + j] * z[j]).sum())
        .collect();
    // Bᵀ∇Φ, then R⁻¹ by Cramer's rule (k ≤ 2 here) or R = I.
    let btg: Vec<f64> = (0..k)
        .map(|j| (0..d).map(|i| pr.b[i * k + j] * grad[i]).sum())
        .collect();
    let quad_u = if k == 2 {
        let (r00, r01, r11) = (pr.r[0], pr.r[1], pr.r[3]);
        let det = r00 * r11 - r01 * r01;
        let x0 = (r11 * btg[0] - r01 * btg[1]) / det;
        let x1 = (r00 * btg[1] - r01 * btg[0]) / det;
        btg[0] * x0 + btg[1] * x1
    } else {
        assert!(pr
            .r
            .iter()
            .enumerate()
            .all(|(i, &x)| x == if i % (k + 1) == 0 { 1.0 } else { 0.0 }));
        btg.iter().map(|x| x * x).sum()
    };
    let zqz: f64 = (0..d)
        .map(|i| z[i] * (0..d).map(|j| pr.q[i * d + j] * z[j]).sum::<f64>())
        .sum();
    let ga: f64 = grad.iter().zip(&az).map(|(a, b)| a * b).sum();
    let terms = [-phi_t, -0.5 * trace, -ga, 0.5 * quad_u, -0.5 * zqz];
    (
        terms.iter().sum(),
        terms.iter().map(|x| x.abs()).sum::<f64>(),
    )
}

#[test]
fn lqr_hjb_residual_vanishes_by_finite_differences() {
    let mut u = Uniform(3);
    for problem in [Lqr::standard(10, 5).unwrap(), matrix_lqr()] {
        let sol = problem.solve().unwrap();
        for _ in 0..4 {
            let t = u.range(0.05, problem.horizon - 0.05);
            let z: Vec<f64> = (0..problem.d).map(|_| u.range(-1.5, 1.5)).collect();
            let (res, scale) = lqr_residual(&sol, t, &z);
            assert!(
                res.abs() <= 1e-6 * scale,
                "HJB residual {res:e} at t = {t} (terms of size {scale:e})"
            );
        }
        // The control is −R⁻¹Bᵀ∇Φ: check Bᵀ∇Φ = −R u*.
        let z: Vec<f64> = (0..problem.d).map(|_| u.range(-1.0, 1.0)).collect();
        let g = sol.gradient(0.4, &z).unwrap();
        let uu = sol.control(0.4, &z).unwrap();
        let k = problem.k;
        for j in 0..k {
            let btg: f64 = (0..problem.d).map(|i| problem.b[i * k + j] * g[i]).sum();
            let ru: f64 = (0..k).map(|l| problem.r[j * k + l] * uu[l]).sum();
            assert_close("B'grad = -R u", btg, -ru, 1e-12, 1e-12);
        }
    }
}

#[test]
fn lqr_monte_carlo_cost_matches_value() {
    let problem = Lqr::standard(10, 7).unwrap();
    let sol = problem.solve().unwrap();
    let z0: Vec<f64> = (0..10).map(|i| 1.0 - 0.2 * i as f64).collect();
    let value = sol.value(0.0, &z0).unwrap();
    let n_steps = 200;
    let h = problem.horizon / n_steps as f64;
    let gains: Vec<Vec<f64>> = (0..n_steps)
        .map(|i| sol.feedback_gain(i as f64 * h).unwrap())
        .collect();
    let run = |scale: f64, paths: usize| {
        closed_loop_cost(
            &problem,
            &z0,
            |t, z, u| {
                let i = ((t / h).round() as usize).min(n_steps - 1);
                for (j, uj) in u.iter_mut().enumerate() {
                    *uj = -scale * (0..10).map(|l| gains[i][j * 10 + l] * z[l]).sum::<f64>();
                }
                Ok(())
            },
            n_steps,
            paths,
            99,
        )
        .unwrap()
    };
    let opt = run(1.0, 2000);
    assert!(opt.std_err < 0.01 * value, "{opt:?}");
    assert!(
        (opt.mean - value).abs() <= 4.0 * opt.std_err,
        "closed-loop cost {} ± {} vs Φ(0, z0) = {value}",
        opt.mean,
        opt.std_err
    );
    // A detuned gain costs measurably more (same noise).
    let detuned = run(0.5, 1000);
    assert!(
        detuned.mean > value + 4.0 * detuned.std_err,
        "{detuned:?} vs {value}"
    );
}

#[test]
fn lqr_rejects_bad_input() {
    let good = scalar_lqr(0.3, 1.0, 1.0, 1.0, 1.0, 0.5, 1.0);
    let mut p = good.clone();
    p.r = vec![-1.0];
    assert!(matches!(p.solve(), Err(Error::InvalidArgument(_))));
    let mut p = good.clone();
    p.a = vec![1.0, 2.0];
    assert!(matches!(p.solve(), Err(Error::Length { .. })));
    let mut p = good.clone();
    p.q = vec![f64::NAN];
    assert!(matches!(p.solve(), Err(Error::NonFinite(_))));
    let mut p = good.clone();
    p.horizon = 0.0;
    assert!(matches!(p.solve(), Err(Error::InvalidArgument(_))));
    let mut p = Lqr::standard(3, 1).unwrap();
    p.q[1] = 0.5; // not symmetric
    assert!(matches!(p.solve(), Err(Error::InvalidArgument(_))));
    // Finite escape: with Q_T = −2, p(τ) = −2/(1 − 2τ) blows up at τ = ½ < T.
    let p = scalar_lqr(0.0, 1.0, 1.0, 0.0, -2.0, 0.5, 2.0);
    assert!(matches!(p.solve(), Err(Error::Numerical(_))));
    // A rate scale far beyond what a fixed-step solve can follow is refused, not tried.
    let p = scalar_lqr(1e200, 1.0, 1.0, 1.0, 1.0, 0.5, 1.0);
    assert!(matches!(p.solve(), Err(Error::Numerical(_))));
    let sol = good.solve().unwrap();
    assert!(sol.value(1.5, &[0.0]).is_err());
    assert!(sol.value(-0.1, &[0.0]).is_err());
    assert!(sol.value(0.5, &[0.0, 1.0]).is_err());
    assert!(sol.value(0.5, &[f64::INFINITY]).is_err());
    assert!(Lqr::standard(0, 1).is_err());
}

// ---------------------------------------------------------------------------------
// Cole–Hopf
// ---------------------------------------------------------------------------------

#[test]
fn hjb100_value_at_origin() {
    let p = ColeHopf::hjb100();
    assert_close("c = σ²r/b²", p.temperature(), 1.0, 1e-15, 0.0);
    let v = p.value(0.0, &[0.0; 100]).unwrap();
    assert_close("Φ(0,0) of HJB-100", v, 4.590162, 0.0, 1e-6);
}

/// `Φ = −c ln E[exp(−g(x + sξ)/c)]` and `E_tilted[∇g]` by a tensor trapezoid rule over
/// `ξ ∈ [−L, L]^d` (spectrally accurate for these analytic integrands): two passes over
/// the `n^d` points, the first for the largest exponent.
fn brute_force(p: &ColeHopf, t: f64, x: &[f64], half_width: f64, n: usize) -> (f64, Vec<f64>) {
    let d = p.d;
    let s = p.sigma * (p.horizon - t).sqrt();
    let c = p.temperature();
    let h = 2.0 * half_width / (n - 1) as f64;
    let total = n.pow(d as u32);
    let mut y = vec![0.0; d];
    // (log-integrand, ρ²) at flat index `idx`, `y` left holding x + sξ − x_ref.
    let point = |idx: usize, y: &mut [f64]| -> (f64, f64) {
        let (mut rest, mut xi2) = (idx, 0.0);
        for j in 0..d {
            let xi = -half_width + (rest % n) as f64 * h;
            rest /= n;
            xi2 += xi * xi;
            y[j] = x[j] + s * xi - p.x_ref[j];
        }
        let rho2: f64 = y.iter().map(|v| v * v).sum();
        (-0.5 * xi2 - p.weight * (0.5 * (1.0 + rho2)).ln() / c, rho2)
    };
    let m = (0..total)
        .map(|i| point(i, &mut y).0)
        .fold(f64::NEG_INFINITY, f64::max);
    let (mut z, mut grad) = (0.0, vec![0.0; d]);
    for i in 0..total {
        let (l, rho2) = point(i, &mut y);
        let w = (l - m).exp();
        z += w;
        for (g, yj) in grad.iter_mut().zip(&y) {
            *g += w * 2.0 * p.weight * yj / (1.0 + rho2);
        }
    }
    let log_e =
        m + (z * h.powi(d as i32)).ln() - 0.5 * d as f64 * (2.0 * std::f64::consts::PI).ln();
    (-c * log_e, grad.iter().map(|g| g / z).collect())
}

/// Brute force in the terminal point `y = x − x_ref + sξ` on a box around the target:
/// for large weights, where the tilted law sits in a tiny ball about `x_ref`.
fn brute_force_near_target(p: &ColeHopf, t: f64, x: &[f64], half_width: f64, n: usize) -> f64 {
    assert_eq!(p.d, 2);
    let s = p.sigma * (p.horizon - t).sqrt();
    let c = p.temperature();
    let a: Vec<f64> = x.iter().zip(&p.x_ref).map(|(u, v)| u - v).collect();
    let h = 2.0 * half_width / (n - 1) as f64;
    let mut logs = Vec::with_capacity(n * n);
    for i in 0..n {
        for j in 0..n {
            let y = [-half_width + i as f64 * h, -half_width + j as f64 * h];
            let dy2 = (y[0] - a[0]).powi(2) + (y[1] - a[1]).powi(2);
            let rho2 = y[0] * y[0] + y[1] * y[1];
            logs.push(-dy2 / (2.0 * s * s) - p.weight * (0.5 * (1.0 + rho2)).ln() / c);
        }
    }
    let m = logs.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let z: f64 = logs.iter().map(|l| (l - m).exp()).sum();
    let log_e = m + (z * h * h).ln() - (2.0 * std::f64::consts::PI * s * s).ln();
    -c * log_e
}

fn small_problem(d: usize, weight: f64, b: f64, r: f64, sigma: f64) -> ColeHopf {
    ColeHopf {
        d,
        sigma,
        b,
        r,
        weight,
        x_ref: (0..d).map(|i| 0.5 - 0.4 * i as f64).collect(),
        horizon: 1.0,
    }
}

#[test]
fn cole_hopf_matches_brute_force_quadrature_in_low_dimensions() {
    let mut u = Uniform(17);
    let cases = [
        small_problem(2, 1.0, 1.0, 1.0, 0.8),
        small_problem(2, 5.0, 2.0, 2.0, 1.2),
        small_problem(3, 1.0, 2.0, 2.0, 1.4),
        small_problem(3, 3.0, 1.0, 1.0, 0.6),
    ];
    for p in &cases {
        let n = if p.d == 2 { 401 } else { 121 };
        for _ in 0..2 {
            let t = u.range(0.0, 0.9);
            let x: Vec<f64> = (0..p.d).map(|_| u.range(-2.0, 2.0)).collect();
            let (v_bf, g_bf) = brute_force(p, t, &x, 9.0, n);
            let v = p.value(t, &x).unwrap();
            assert_close("Φ vs brute force", v, v_bf, 1e-10, 1e-12);
            let g = p.gradient(t, &x).unwrap();
            for (gi, bi) in g.iter().zip(&g_bf) {
                assert_close("∇Φ vs brute force", *gi, *bi, 1e-9, 1e-11);
            }
        }
    }
    // Weight 1000 with the original code's f = 2u, L = ‖u‖², σ = 0.4√2 (c = 0.16,
    // exponent 6250): the expectation is e^{4000}-ish, carried by a ball of radius
    // ~0.01 about the target.
    let mut p = small_problem(2, 1000.0, 2.0, 2.0, 0.4 * std::f64::consts::SQRT_2);
    p.x_ref = vec![0.0, 0.0];
    for (t, x) in [(0.5, [0.5, -0.3]), (0.2, [-1.1, 0.7]), (0.9, [0.05, 0.1])] {
        let v_bf = brute_force_near_target(&p, t, &x, 0.25, 1201);
        let v = p.value(t, &x).unwrap();
        assert_close("Φ vs brute force, weight 1000", v, v_bf, 1e-10, 1e-9);
    }
}

#[test]
fn hjb100_matches_monte_carlo() {
    let p = ColeHopf::hjb100();
    let (t, n) = (0.3, 50_000);
    let x: Vec<f64> = normals(5, 100).iter().map(|v| 0.3 * v).collect();
    let s = p.sigma * (p.horizon - t).sqrt();
    let gen = Brownian::new(8);
    let mut xi = vec![0.0; 100];
    let mut y = vec![0.0; 100];
    let (mut sum, mut sum2) = (0.0, 0.0);
    for i in 0..n {
        gen.normals(i as u64, 0, &mut xi).unwrap();
        for j in 0..100 {
            y[j] = x[j] + s * xi[j];
        }
        let e = (-p.terminal(&y).unwrap() / p.temperature()).exp();
        sum += e;
        sum2 += e * e;
    }
    let mean = sum / n as f64;
    let se = ((sum2 / n as f64 - mean * mean) / (n as f64 - 1.0)).sqrt();
    let v_mc = -p.temperature() * mean.ln();
    let se_v = p.temperature() * se / mean;
    let v = p.value(t, &x).unwrap();
    assert!(
        (v - v_mc).abs() <= 4.0 * se_v,
        "Φ = {v} vs Monte Carlo {v_mc} ± {se_v}"
    );
}

/// Fourth-order central differences.
fn d1(f: &dyn Fn(f64) -> f64, h: f64) -> f64 {
    (-f(2.0 * h) + 8.0 * f(h) - 8.0 * f(-h) + f(-2.0 * h)) / (12.0 * h)
}

fn d2(f: &dyn Fn(f64) -> f64, h: f64) -> f64 {
    (-f(2.0 * h) + 16.0 * f(h) - 30.0 * f(0.0) + 16.0 * f(-h) - f(-2.0 * h)) / (12.0 * h * h)
}

/// HJB residual `−Φ_t − (σ²/2)ΔΦ + (b²/2r)‖∇Φ‖²` by finite differences of `value`:
/// along every coordinate when `full`, else along the radial direction and one
/// transverse direction (for a radial Φ, ΔΦ = ∂²_radial + (d−1)∂²_transverse and
/// ∇Φ is radial). Returns the residual and the sum of the terms' sizes.
fn cole_hopf_residual(p: &ColeHopf, t: f64, x: &[f64], h: f64, full: bool) -> (f64, f64) {
    let d = p.d;
    let phi = |t: f64, x: &[f64]| p.value(t, x).unwrap();
    let along = |dir: &[f64]| {
        let dir = dir.to_vec();
        move |s: f64| -> f64 {
            let y: Vec<f64> = x.iter().zip(&dir).map(|(a, b)| a + s * b).collect();
            phi(t, &y)
        }
    };
    let phi_t = d1(&|s| phi(t + s, x), 1e-3);
    let (lap, grad2) = if full {
        let mut lap = 0.0;
        let mut grad2 = 0.0;
        for i in 0..d {
            let mut e = vec![0.0; d];
            e[i] = 1.0;
            let f = along(&e);
            lap += d2(&f, h);
            grad2 += d1(&f, h).powi(2);
        }
        (lap, grad2)
    } else {
        let a: Vec<f64> = x.iter().zip(&p.x_ref).map(|(u, v)| u - v).collect();
        let delta = a.iter().map(|v| v * v).sum::<f64>().sqrt();
        let radial: Vec<f64> = a.iter().map(|v| v / delta).collect();
        // A unit vector orthogonal to the radial one.
        let mut perp = vec![0.0; d];
        let (i, j) = (0, 1);
        perp[i] = radial[j];
        perp[j] = -radial[i];
        let nrm = (perp[i] * perp[i] + perp[j] * perp[j]).sqrt();
        perp.iter_mut().for_each(|v| *v /= nrm);
        let fr = along(&radial);
        let fp = along(&perp);
        (d2(&fr, h) + (d - 1) as f64 * d2(&fp, h), d1(&fr, h).powi(2))
    };
    let terms = [
        -phi_t,
        -0.5 * p.sigma * p.sigma * lap,
        p.b * p.b / (2.0 * p.r) * grad2,
    ];
    (
        terms.iter().sum(),
        terms.iter().map(|v| v.abs()).sum::<f64>(),
    )
}

#[test]
fn cole_hopf_hjb_residual_vanishes() {
    let mut u = Uniform(23);
    // Low dimension: every coordinate.
    for p in [
        small_problem(3, 1.0, 1.0, 1.0, 0.9),
        small_problem(3, 1000.0, 2.0, 2.0, 0.4 * std::f64::consts::SQRT_2),
    ] {
        for _ in 0..3 {
            let t = u.range(0.05, 0.9);
            let x: Vec<f64> = (0..3).map(|_| u.range(-2.5, 2.5)).collect();
            let (res, scale) = cole_hopf_residual(&p, t, &x, 1e-2, true);
            assert!(
                res.abs() <= 1e-6 * scale,
                "d = 3, w = {}: residual {res:e} (terms {scale:e}) at t = {t}, x = {x:?}",
                p.weight
            );
        }
    }
    // The 100-D benchmarks, at random points between the start and the target.
    for p in [
        ColeHopf::hjb100(),
        ColeHopf::shifted_target(1.0),
        ColeHopf::shifted_target(1000.0),
    ] {
        for _ in 0..3 {
            let t = u.range(0.05, 0.9);
            let frac = u.range(0.0, 1.0);
            let noise = normals(u.next().to_bits(), 100);
            let x: Vec<f64> = p
                .x_ref
                .iter()
                .zip(&noise)
                .map(|(r, n)| frac * r + 0.3 * n)
                .collect();
            let (res, scale) = cole_hopf_residual(&p, t, &x, 1e-2, false);
            assert!(
                res.abs() <= 1e-6 * scale,
                "d = 100, w = {}: residual {res:e} (terms {scale:e}) at t = {t}",
                p.weight
            );
        }
    }
}

#[test]
fn cole_hopf_gradient_matches_finite_differences() {
    let mut u = Uniform(29);
    for p in [
        ColeHopf::hjb100(),
        ColeHopf::shifted_target(1.0),
        ColeHopf::shifted_target(1000.0),
        small_problem(3, 1000.0, 2.0, 2.0, 0.4 * std::f64::consts::SQRT_2),
    ] {
        for _ in 0..2 {
            let t = u.range(0.0, 0.95);
            let frac = u.range(0.0, 1.0);
            let noise = normals(u.next().to_bits(), p.d);
            let x: Vec<f64> = p
                .x_ref
                .iter()
                .zip(&noise)
                .map(|(r, n)| frac * r + 0.5 * n)
                .collect();
            let g = p.gradient(t, &x).unwrap();
            let gnorm = g.iter().map(|v| v * v).sum::<f64>().sqrt();
            for i in [0, p.d / 2, p.d - 1] {
                let f = |s: f64| {
                    let mut y = x.clone();
                    y[i] += s;
                    p.value(t, &y).unwrap()
                };
                assert_close("∂Φ/∂x_i", g[i], d1(&f, 1e-3), 0.0, 1e-7 * (1.0 + gnorm));
            }
            let c = p.control(t, &x).unwrap();
            for (ci, gi) in c.iter().zip(&g) {
                assert_close("u* = −(b/r)∇Φ", *ci, -p.b / p.r * gi, 1e-15, 0.0);
            }
            assert!(p.value(t, &x).unwrap().is_finite());
        }
    }
}

#[test]
fn cole_hopf_terminal_time_and_target() {
    let p = ColeHopf::shifted_target(1000.0);
    let x: Vec<f64> = normals(2, 100);
    assert_close(
        "Φ(T) = g",
        p.value(1.0, &x).unwrap(),
        p.terminal(&x).unwrap(),
        1e-15,
        0.0,
    );
    let (g1, gt) = (
        p.gradient(1.0, &x).unwrap(),
        p.terminal_gradient(&x).unwrap(),
    );
    for (a, b) in g1.iter().zip(&gt) {
        assert_close("∇Φ(T) = ∇g", *a, *b, 1e-14, 0.0);
    }
    // At the target the gradient is 0 and the value is the minimum along a ray.
    let g = p.gradient(0.5, &p.x_ref).unwrap();
    assert!(g.iter().all(|v| *v == 0.0));
    let v0 = p.value(0.5, &p.x_ref).unwrap();
    let mut y = p.x_ref.clone();
    y[0] += 0.01;
    assert!(p.value(0.5, &y).unwrap() > v0);
    // The radial slope is continuous at δ = 0 (Φ'(0+) → 0).
    assert!(p.radial(0.5, 1e-8).unwrap().slope.abs() < 1e-4);
    // Weight 1000 from the start: a finite value well below g(0) (the control pays).
    let v = p.value(0.0, &[0.0; 100]).unwrap();
    assert!(v.is_finite() && v < p.terminal(&[0.0; 100]).unwrap());
}

#[test]
fn cole_hopf_rejects_bad_input() {
    let p = ColeHopf::hjb100();
    assert!(matches!(p.value(0.0, &[0.0; 3]), Err(Error::Length { .. })));
    assert!(matches!(
        p.value(1.5, &[0.0; 100]),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        p.value(f64::NAN, &[0.0; 100]),
        Err(Error::NonFinite(_))
    ));
    let mut x = vec![0.0; 100];
    x[3] = f64::NAN;
    assert!(matches!(p.gradient(0.0, &x), Err(Error::NonFinite(_))));
    let mut q = p.clone();
    q.sigma = 0.0;
    assert!(q.value(0.0, &[0.0; 100]).is_err());
    let mut q = p.clone();
    q.weight = -1.0;
    assert!(q.value(0.0, &[0.0; 100]).is_err());
    let mut q = p.clone();
    q.x_ref.pop();
    assert!(q.value(0.0, &[0.0; 100]).is_err());
    assert!(p.radial(0.0, -1.0).is_err());
    assert!(discrete_optimum(&p, 0, &[0.0; 100]).is_err());
}

// ---------------------------------------------------------------------------------
// Discrete-time optimum
// ---------------------------------------------------------------------------------

/// Without noise the N-step optimum spends equal controls on a total displacement D
/// toward the target: `min_D (r/2)D²/(b²T) + w ln(½(1 + (δ − D)²))`.
fn deterministic_optimum(p: &ColeHopf, delta: f64) -> f64 {
    let f = |dd: f64| {
        p.r / 2.0 * dd * dd / (p.b * p.b * p.horizon)
            + p.weight * (0.5 * (1.0 + (delta - dd).powi(2))).ln()
    };
    let n = 200_000;
    let (mut best, mut arg) = (f64::INFINITY, 0.0);
    for i in 0..=n {
        let dd = delta * i as f64 / n as f64;
        if f(dd) < best {
            best = f(dd);
            arg = dd;
        }
    }
    // Golden refinement on the neighbouring cells.
    let (mut a, mut b) = (
        (arg - delta / n as f64).max(0.0),
        (arg + delta / n as f64).min(delta),
    );
    for _ in 0..100 {
        let m1 = a + (b - a) / 3.0;
        let m2 = b - (b - a) / 3.0;
        if f(m1) < f(m2) {
            b = m2;
        } else {
            a = m1;
        }
    }
    best.min(f(0.5 * (a + b)))
}

#[test]
fn discrete_optimum_without_noise_matches_closed_form() {
    for (weight, b, r) in [(1.0, 1.0, 1.0), (1000.0, 2.0, 2.0), (30.0, 1.0, 3.0)] {
        let mut p = small_problem(3, weight, b, r, 1e-4);
        p.x_ref = vec![1.0, -2.0, 2.0];
        let z0 = [0.0; 3];
        let exact = deterministic_optimum(&p, 3.0);
        for n in [1, 7] {
            let v = discrete_optimum(&p, n, &z0).unwrap();
            assert_close("noise-free N-step optimum", v, exact, 1e-6, 1e-5);
        }
    }
}

#[test]
fn discrete_optimum_lies_above_and_approaches_continuous_value() {
    // The shifted target in 10-D, weight 1000, nearer start (δ = 3): quick to grid.
    let mut p = ColeHopf::shifted_target(1000.0);
    p.d = 10;
    p.x_ref = vec![3.0 / 10f64.sqrt(); 10];
    let z0 = [0.0; 10];
    let cont = p.value(0.0, &z0).unwrap();
    let opts = DiscreteOptions {
        hermite_nodes: 16,
        chi_square_nodes: 6,
        ..DiscreteOptions::default()
    };
    let ns = [12, 24, 48, 96];
    let vals: Vec<f64> = ns
        .iter()
        .map(|&n| discrete_optimum_with(&p, n, &z0, &opts).unwrap())
        .collect();
    let gaps: Vec<f64> = vals.iter().map(|v| v - cont).collect();
    for (n, g) in ns.iter().zip(&gaps) {
        assert!(
            *g > 0.0,
            "N = {n}: discrete optimum below the continuous value by {g}"
        );
    }
    // Euler–Maruyama's first order: the gap halves with the step.
    for w in gaps.windows(2) {
        let ratio = w[0] / w[1];
        assert!((1.6..=2.5).contains(&ratio), "gaps {gaps:?}");
    }
    // The benchmark itself at N = 20: the same answer with a coarser discretization
    // (a finer one, 0.005 and 40 × 24 nodes, also agrees to 1e-8), and far above the
    // continuous value.
    let p = ColeHopf::shifted_target(1000.0);
    let z0 = [0.0; 100];
    let v = discrete_optimum(&p, 20, &z0).unwrap();
    let coarse = DiscreteOptions {
        grid_spacing: 0.02,
        hermite_nodes: 16,
        chi_square_nodes: 10,
        ..DiscreteOptions::default()
    };
    let vc = discrete_optimum_with(&p, 20, &z0, &coarse).unwrap();
    assert_close("N = 20 optimum, coarser grid", v, vc, 1e-4, 0.0);
    assert!(v > p.value(0.0, &z0).unwrap() + 500.0);
}

/// One step: `V_0(ρ) = min_a r(ρ − a)²/(2Tb²) + E g(‖a e₁ + σ√T ξ‖)`, the expectation by
/// a brute-force trapezoid rule over ξ ∈ R^d and the minimum by a scan refined by
/// golden section. One step of the whole horizon is the hardest case for the product
/// Gauss rule (the largest noise per step): the default rule is within 1e-4 relative
/// (≪ the 0.1% promised), a larger one much closer.
#[test]
fn discrete_optimum_one_step_matches_brute_force() {
    let big = DiscreteOptions {
        hermite_nodes: 48,
        chi_square_nodes: 48,
        ..DiscreteOptions::default()
    };
    for (d, weight, b, r, sigma) in [
        (3, 1000.0, 2.0, 2.0, 0.4 * std::f64::consts::SQRT_2),
        (3, 3.0, 1.0, 1.0, 1.0),
        (2, 5.0, 1.0, 2.0, 0.8),
    ] {
        let mut p = small_problem(d, weight, b, r, sigma);
        p.x_ref = vec![0.0; d];
        let s = sigma * p.horizon.sqrt();
        let (n, hw) = (49, 7.2);
        let h = 2.0 * hw / (n - 1) as f64;
        let nodes: Vec<(f64, f64)> = (0..n)
            .map(|i| {
                let x = -hw + i as f64 * h;
                (
                    x,
                    h * (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt(),
                )
            })
            .collect();
        // E g(‖a e₁ + sξ‖) over the tensor grid (the last d − 1 coordinates enter only
        // through their squares, summed here explicitly).
        let expect_g = |a: f64| -> f64 {
            let mut e = 0.0;
            for &(x1, w1) in &nodes {
                for &(x2, w2) in &nodes {
                    if d == 2 {
                        let rho2 = (a + s * x1).powi(2) + s * s * x2 * x2;
                        e += w1 * w2 * weight * (0.5 * (1.0 + rho2)).ln();
                        continue;
                    }
                    for &(x3, w3) in &nodes {
                        let rho2 = (a + s * x1).powi(2) + s * s * (x2 * x2 + x3 * x3);
                        e += w1 * w2 * w3 * weight * (0.5 * (1.0 + rho2)).ln();
                    }
                }
            }
            e
        };
        let q = r / (2.0 * p.horizon * b * b);
        for rho0 in [0.0, 0.7, 2.5] {
            let m = 24;
            let f = |a: f64| q * (rho0 - a) * (rho0 - a) + expect_g(a);
            let (mut best, mut arg) = (f(rho0), rho0);
            for i in 0..m {
                let a = rho0 * i as f64 / m as f64;
                let fa = f(a);
                if fa < best {
                    best = fa;
                    arg = a;
                }
            }
            let (mut lo, mut hi) = (
                (arg - rho0 / m as f64).max(0.0),
                (arg + rho0 / m as f64).min(rho0),
            );
            for _ in 0..30 {
                let (m1, m2) = (lo + (hi - lo) / 3.0, hi - (hi - lo) / 3.0);
                if f(m1) < f(m2) {
                    hi = m2;
                } else {
                    lo = m1;
                }
            }
            let want = best.min(f(0.5 * (lo + hi)));
            let mut z0 = vec![0.0; d];
            z0[0] = rho0;
            let got = discrete_optimum(&p, 1, &z0).unwrap();
            // Errors measured against |V| + w (the value can sit near 0).
            assert_close("one-step optimum", got, want, 1e-4, 1e-4 * weight);
            let got = discrete_optimum_with(&p, 1, &z0, &big).unwrap();
            assert_close(
                "one-step optimum, 48 × 48 nodes",
                got,
                want,
                1e-6,
                1e-6 * weight,
            );
        }
    }
}

/// Prints the discrete-time optima of the benchmarks (run with `--ignored --nocapture`;
/// takes ~15 s).
#[test]
#[ignore]
fn report_discrete_optima() {
    let z0 = [0.0; 100];
    for (name, p, ns) in [
        (
            "shifted_target(1000)",
            ColeHopf::shifted_target(1000.0),
            &[20, 50, 100, 200][..],
        ),
        (
            "shifted_target(1)",
            ColeHopf::shifted_target(1.0),
            &[20, 50, 100][..],
        ),
        ("hjb100", ColeHopf::hjb100(), &[20, 50, 100][..]),
    ] {
        println!(
            "{name}: continuous Φ(0, 0) = {:.6}",
            p.value(0.0, &z0).unwrap()
        );
        for &n in ns {
            println!("  N = {n:4}: {:.6}", discrete_optimum(&p, n, &z0).unwrap());
        }
    }
}

// ---------------------------------------------------------------------------------
// Quadcopter
// ---------------------------------------------------------------------------------

/// The equations of Onken et al. (2022), transcribed directly.
fn quad_rhs(z: &[f64; 12], u: &[f64; 4], m: f64, g: f64) -> [f64; 12] {
    let (psi, th, ph) = (z[3], z[4], z[5]);
    let mut f = [0.0; 12];
    f[0] = z[6];
    f[1] = z[7];
    f[2] = z[8];
    f[3] = z[9];
    f[4] = z[10];
    f[5] = z[11];
    f[6] = u[0] / m * (psi.sin() * ph.sin() + psi.cos() * th.sin() * ph.cos());
    f[7] = u[0] / m * (-psi.cos() * ph.sin() + psi.sin() * th.sin() * ph.cos());
    f[8] = u[0] / m * th.cos() * ph.cos() - g;
    f[9] = u[1];
    f[10] = u[2];
    f[11] = u[3];
    f
}

#[test]
fn quadcopter_matches_the_paper_equations() {
    let q = Quadcopter::neural_soc();
    for seed in 0..20 {
        let v = normals(100 + seed, 16);
        let z: [f64; 12] = std::array::from_fn(|i| 2.0 * v[i]);
        let u: [f64; 4] = std::array::from_fn(|i| 5.0 * v[12 + i]);
        let want = quad_rhs(&z, &u, 1.0, 9.81);
        let a = quadcopter_drift(&z);
        let b = quadcopter_input_matrix(&z);
        for i in 0..12 {
            let bu: f64 = (0..4).map(|j| b[i][j] * u[j]).sum();
            assert_close("a + Bu", a[i] + bu, want[i], 1e-14, 1e-14);
        }
        let f = q.dynamics(&z, &u);
        for i in 0..12 {
            assert_close("dynamics", f[i], want[i], 1e-14, 1e-14);
        }
        // The thrust direction is a column of a rotation matrix: a unit vector.
        let n2: f64 = (6..9).map(|i| b[i][0] * b[i][0]).sum();
        assert_close("|thrust direction|", n2, 1.0, 1e-14, 0.0);
        // A heavier quadcopter accelerates less.
        let mut heavy = q.clone();
        heavy.mass = 2.0;
        let fh = heavy.dynamics(&z, &u);
        let want_h = quad_rhs(&z, &u, 2.0, 9.81);
        for i in 0..12 {
            assert_close("dynamics, m = 2", fh[i], want_h[i], 1e-14, 1e-14);
        }
    }
    // Hover: level attitude, thrust m·g, no acceleration.
    let mut z = [0.0; 12];
    z[6] = 0.3;
    let f = q.dynamics(&z, &[9.81, 0.0, 0.0, 0.0]);
    assert_eq!(f[0], 0.3);
    assert!(f[6..].iter().all(|v| v.abs() < 1e-15));
    assert_eq!(q.running_cost(&[1.0, 0.0, 2.0, 0.0]), 7.0);
    let mut zt = q.target;
    zt[0] += 0.1;
    assert_close("g", q.terminal_cost(&zt), 25.0, 1e-12, 0.0);
}

#[test]
fn quadcopter_control_maximizes_the_hamiltonian() {
    let q = Quadcopter::neural_soc();
    for seed in 0..10 {
        let v = normals(200 + seed, 24);
        let z: [f64; 12] = std::array::from_fn(|i| v[i]);
        let grad: [f64; 12] = std::array::from_fn(|i| 3.0 * v[12 + i]);
        // H(z, −∇Φ, u) = −∇Φᵀf(z,u) − L(u), concave in u.
        let ham = |u: &[f64; 4]| -> f64 {
            let f = q.dynamics(&z, u);
            -grad.iter().zip(&f).map(|(a, b)| a * b).sum::<f64>() - q.running_cost(u)
        };
        let us = q.optimal_control(&z, &grad);
        let h0 = ham(&us);
        for j in 0..4 {
            for eps in [1e-3, -1e-3, 0.5, -0.5] {
                let mut up = us;
                up[j] += eps;
                // Exactly quadratic: H(u* + εe_j) = H(u*) − ε².
                assert_close("H(u* + εe_j)", ham(&up), h0 - eps * eps, 1e-12, 1e-12);
            }
        }
    }
}

#[test]
fn quadcopter_free_fall_matches_euler_maruyama_moments() {
    // No control: velocities fall at g, positions integrate them; under Euler–Maruyama
    // z_N is Gaussian with known moments, so E g(z_N) is exact.
    let q = Quadcopter::neural_soc();
    let (n, paths) = (50, 4000);
    let h = q.horizon / n as f64;
    let s2 = q.sigma * q.sigma;
    let nf = n as f64;
    let mut mean = q.start;
    let mut var = [0.0; 12];
    for i in 0..12 {
        if i < 6 {
            // Positions and angles: x_N = x_0 + h Σ v_i + σ√h Σ ξ.
            let acc = if i == 2 { -q.gravity } else { 0.0 };
            mean[i] = q.start[i] + nf * h * q.start[i + 6] + h * h * acc * nf * (nf - 1.0) / 2.0;
            var[i] = s2 * h * nf + s2 * h.powi(3) * (nf - 1.0) * nf * (2.0 * nf - 1.0) / 6.0;
        } else {
            let acc = if i == 8 { -q.gravity } else { 0.0 };
            mean[i] = q.start[i] + nf * h * acc;
            var[i] = s2 * h * nf;
        }
    }
    let expected = q.running_offset * q.horizon
        + q.terminal_weight
            * (0..12)
                .map(|i| (mean[i] - q.target[i]).powi(2) + var[i])
                .sum::<f64>();
    let est = closed_loop_cost(
        &q,
        &q.start,
        |_, _, u| {
            u.iter_mut().for_each(|v| *v = 0.0);
            Ok(())
        },
        n,
        paths,
        4,
    )
    .unwrap();
    assert!(
        (est.mean - expected).abs() <= 4.0 * est.std_err,
        "free-fall cost {} ± {} vs {expected}",
        est.mean,
        est.std_err
    );
}

#[test]
fn gauss_rules_reproduce_moments() {
    let gh = gauss_hermite(12).unwrap();
    // E ξ^{2j} = (2j − 1)!!, exact up to degree 23.
    let mut dfact = 1.0;
    for j in 0..12i32 {
        if j > 0 {
            dfact *= (2 * j - 1) as f64;
        }
        let m: f64 = gh
            .nodes
            .iter()
            .zip(&gh.weights)
            .map(|(x, w)| w * x.powi(2 * j))
            .sum();
        assert_close("Hermite even moment", m, dfact, 1e-12, 0.0);
        let odd: f64 = gh
            .nodes
            .iter()
            .zip(&gh.weights)
            .map(|(x, w)| w * x.powi(2 * j + 1))
            .sum();
        assert!(odd.abs() < 1e-10 * dfact.max(1.0));
    }
    for k in [1usize, 2, 9, 99] {
        let rule = gauss_chi_square(k, 10).unwrap();
        // E V^m = k(k+2)…(k+2m−2), exact up to degree 19.
        let mut moment = 1.0;
        for m in 0..10 {
            if m > 0 {
                moment *= (k + 2 * m - 2) as f64;
            }
            let got: f64 = rule
                .nodes
                .iter()
                .zip(&rule.weights)
                .map(|(x, w)| w * x.powi(m as i32))
                .sum();
            assert_close("chi-square moment", got, moment, 1e-11, 0.0);
        }
    }
    assert!(gauss_hermite(0).is_err());
    assert!(gauss_chi_square(0, 4).is_err());
}

/// The Euler–Maruyama-discretized LQR's exact optimum converges to the continuous
/// Riccati solution at order 1, and its value is the expected cost of its own feedback
/// on the discrete dynamics (Monte Carlo within 4 standard errors).
#[test]
fn discrete_lqr_converges_to_riccati_and_is_its_own_cost() {
    use socflow_trainer::soc::reference::Lqr;
    let lqr = Lqr::standard(6, 3).unwrap();
    let sol = lqr.solve().unwrap();
    let p0 = sol.p(0.0).unwrap();
    let steps = [20usize, 40, 80, 160];
    let errs: Vec<f64> = steps
        .iter()
        .map(|&n| {
            let ds = lqr.solve_discrete(n).unwrap();
            let pd = ds.p(0).unwrap();
            let num: f64 = pd.iter().zip(&p0).map(|(a, b)| (a - b).powi(2)).sum();
            let den: f64 = p0.iter().map(|b| b * b).sum();
            (num / den).sqrt()
        })
        .collect();
    let order = socflow_testkit::observed_order(&steps, &errs);
    eprintln!("discrete LQR: ‖P_0 − P(0)‖/‖P(0)‖ {errs:?}, order {order:.3}");
    assert!((order - 1.0).abs() < 0.1, "order {order}");

    // Monte Carlo of the discrete problem under its own optimal feedback.
    let n = 20;
    let ds = lqr.solve_discrete(n).unwrap();
    let d = lqr.d;
    let z0 = vec![0.7; d];
    let gen = socflow_runtime::brownian::Brownian::new(5);
    let h = ds.step();
    let paths = 4000;
    let mut costs = Vec::with_capacity(paths);
    let mut dw = vec![0.0; d];
    for p in 0..paths {
        let mut z = z0.clone();
        let mut cost = 0.0;
        for i in 0..n {
            let u = ds.control(i, &z).unwrap();
            let qz: f64 = (0..d)
                .map(|r| z[r] * (0..d).map(|s| lqr.q[r * d + s] * z[s]).sum::<f64>())
                .sum();
            let ru: f64 = (0..d)
                .map(|r| u[r] * (0..d).map(|s| lqr.r[r * d + s] * u[s]).sum::<f64>())
                .sum();
            cost += h * 0.5 * (qz + ru);
            gen.increments(p as u64, i as u64, h, &mut dw).unwrap();
            let f: Vec<f64> = (0..d)
                .map(|r| {
                    (0..d).map(|s| lqr.a[r * d + s] * z[s]).sum::<f64>()
                        + (0..d).map(|s| lqr.b[r * d + s] * u[s]).sum::<f64>()
                })
                .collect();
            for r in 0..d {
                z[r] += h * f[r] + 0.5 * dw[r];
            }
        }
        let gz: f64 = (0..d)
            .map(|r| {
                z[r] * (0..d)
                    .map(|s| lqr.q_terminal[r * d + s] * z[s])
                    .sum::<f64>()
            })
            .sum();
        costs.push(cost + 0.5 * gz);
    }
    let mean = costs.iter().sum::<f64>() / paths as f64;
    let var = costs.iter().map(|c| (c - mean).powi(2)).sum::<f64>() / (paths - 1) as f64;
    let se = (var / paths as f64).sqrt();
    let v0 = ds.value(0, &z0).unwrap();
    eprintln!("discrete LQR: V_0 {v0:.5}, Monte Carlo {mean:.5} ± {se:.5}");
    assert!((mean - v0).abs() < 4.0 * se, "{mean} ± {se} vs {v0}");
}
