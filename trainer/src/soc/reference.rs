//! Reference solutions of stochastic optimal control problems (Riccati, Cole–Hopf).
//!
//! Independent answers, in plain `f64` on slices (row-major matrices) and without
//! autodiff, that the NeuralSOC tests and benchmarks judge a trained controller
//! against. Conventions (MATH.md §5): `dz = f(z,u) ds + σ dW`, cost
//! `E[∫ L ds + g(z_T)]`, value `Φ` solving
//! `−∂sΦ − (σ²/2)ΔΦ + sup_u H(s,x,−∇Φ,u) = 0`, `H(s,z,p,u) = pᵀf − L`, `Φ(T,·) = g`;
//! for `f = a(z) + Bu`, `L = ½uᵀRu + Q(z)` the optimal feedback is `u* = −R⁻¹Bᵀ∇Φ`.
//!
//! - [`Lqr`] / [`LqrSolution`]: the linear–quadratic regulator, `Φ(t,z) = ½zᵀP(t)z + c(t)`
//!   with the Riccati equation solved backward by RK4 (step doubling to ~1e-12), any
//!   `t ∈ [0,T]` answered to the same accuracy. [`Lqr::standard`] is the seeded `d ≥ 10`
//!   problem the training tests use.
//! - [`ColeHopf`]: `f = b·u`, `L = (r/2)‖u‖²`, `g(z) = w·ln(½(1 + ‖z − x_ref‖²))`,
//!   scalar `σ`; the Cole–Hopf value `Φ = −c ln E[exp(−g(x + σ√(T−t) ξ)/c)]`,
//!   `c = σ²r/b²`, reduced by radial symmetry to a two-dimensional integral computed by
//!   adaptive Gauss–Kronrod quadrature in log space (accurate to ~1e-12 even for
//!   `w = 1000`). [`ColeHopf::hjb100`] and [`ColeHopf::shifted_target`] are the
//!   benchmarks.
//! - [`discrete_optimum`]: the optimum of the same radial problems over `N`
//!   Euler–Maruyama steps (dynamic programming in the distance to the target), the
//!   best any `N`-step policy can do; it lies above the continuous value.
//! - [`quadcopter_drift`], [`quadcopter_input_matrix`], [`Quadcopter`]: the 12-D
//!   quadcopter of Onken et al. (2022), used by NeuralSOC.
//! - [`SimulationProblem`] and [`closed_loop_cost`]: a Monte-Carlo estimate of the cost of
//!   a feedback policy under Euler–Maruyama.

use crate::error::{check_len, Error, Result};
use socflow_runtime::brownian::Brownian;

// ---------------------------------------------------------------------------------
// Small dense helpers (row-major).
// ---------------------------------------------------------------------------------

fn check_finite(what: &str, v: &[f64]) -> Result<()> {
    if v.iter().all(|x| x.is_finite()) {
        Ok(())
    } else {
        Err(Error::NonFinite(what.to_string()))
    }
}

fn check_scalar(what: &str, v: f64) -> Result<()> {
    if v.is_finite() {
        Ok(())
    } else {
        Err(Error::NonFinite(what.to_string()))
    }
}

/// `out = a·b` with `a` n×m, `b` m×p (row-major).
fn matmul(a: &[f64], b: &[f64], n: usize, m: usize, p: usize, out: &mut [f64]) {
    out.iter_mut().for_each(|x| *x = 0.0);
    for (arow, orow) in a.chunks_exact(m).zip(out.chunks_exact_mut(p)).take(n) {
        for (aik, brow) in arow.iter().zip(b.chunks_exact(p)) {
            for (o, bkj) in orow.iter_mut().zip(brow) {
                *o += aik * bkj;
            }
        }
    }
}

/// `out = aᵀ·b` with `a` m×n, `b` m×p, `out` n×p.
fn matmul_tn(a: &[f64], b: &[f64], m: usize, n: usize, p: usize, out: &mut [f64]) {
    out.iter_mut().for_each(|x| *x = 0.0);
    for (arow, brow) in a.chunks_exact(n).zip(b.chunks_exact(p)).take(m) {
        for (aki, orow) in arow.iter().zip(out.chunks_exact_mut(p)) {
            for (o, bkj) in orow.iter_mut().zip(brow) {
                *o += aki * bkj;
            }
        }
    }
}

fn matvec(a: &[f64], x: &[f64], n: usize, m: usize) -> Vec<f64> {
    a.chunks_exact(m)
        .take(n)
        .map(|row| row.iter().zip(x).map(|(p, q)| p * q).sum())
        .collect()
}

fn frobenius(a: &[f64]) -> f64 {
    a.iter().map(|x| x * x).sum::<f64>().sqrt()
}

fn max_abs(a: &[f64]) -> f64 {
    a.iter().fold(0.0_f64, |m, x| m.max(x.abs()))
}

fn symmetrize(p: &mut [f64], d: usize) {
    for i in 0..d {
        for j in (i + 1)..d {
            let m = 0.5 * (p[i * d + j] + p[j * d + i]);
            p[i * d + j] = m;
            p[j * d + i] = m;
        }
    }
}

fn check_symmetric(what: &str, a: &[f64], d: usize) -> Result<()> {
    let scale = max_abs(a).max(f64::MIN_POSITIVE);
    for i in 0..d {
        for j in (i + 1)..d {
            if (a[i * d + j] - a[j * d + i]).abs() > 1e-12 * scale {
                return Err(Error::InvalidArgument(format!(
                    "{what} must be symmetric: entry ({i},{j}) = {} but ({j},{i}) = {}",
                    a[i * d + j],
                    a[j * d + i]
                )));
            }
        }
    }
    Ok(())
}

/// Lower Cholesky factor of a symmetric positive definite n×n matrix.
fn cholesky(a: &[f64], n: usize, what: &str) -> Result<Vec<f64>> {
    let mut l = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let dot: f64 = (0..j).map(|k| l[i * n + k] * l[j * n + k]).sum();
            let v = a[i * n + j] - dot;
            if i == j {
                if v <= 0.0 || !v.is_finite() {
                    return Err(Error::InvalidArgument(format!(
                        "{what} must be symmetric positive definite (Cholesky pivot {i} is {v:e})"
                    )));
                }
                l[i * n + i] = v.sqrt();
            } else {
                l[i * n + j] = v / l[j * n + j];
            }
        }
    }
    Ok(l)
}

/// Solves `L Lᵀ x = b` in place.
fn cholesky_solve(l: &[f64], n: usize, b: &mut [f64]) {
    for i in 0..n {
        let s: f64 = (0..i).map(|k| l[i * n + k] * b[k]).sum();
        b[i] = (b[i] - s) / l[i * n + i];
    }
    for i in (0..n).rev() {
        let s: f64 = ((i + 1)..n).map(|k| l[k * n + i] * b[k]).sum();
        b[i] = (b[i] - s) / l[i * n + i];
    }
}

fn distance(x: &[f64], y: &[f64]) -> f64 {
    x.iter()
        .zip(y)
        .map(|(a, b)| (a - b) * (a - b))
        .sum::<f64>()
        .sqrt()
}

// ---------------------------------------------------------------------------------
// Linear–quadratic regulator.
// ---------------------------------------------------------------------------------

/// The diffusion coefficient of an [`Lqr`]: `σ dW` with `σ` a scalar times the
/// identity or a full d×d matrix (row-major).
#[derive(Clone, Debug, PartialEq)]
pub enum Diffusion {
    /// `σ·I`.
    Scalar(f64),
    /// A d×d matrix, row-major.
    Matrix(Vec<f64>),
}

/// A linear–quadratic regulator: `dz = (Az + Bu)ds + σ dW`,
/// `L = ½uᵀRu + ½zᵀQz`, `g = ½zᵀQ_T z`, horizon `T`. All matrices row-major.
///
/// [`solve`](Lqr::solve) validates the fields (shapes, finiteness, `R` symmetric
/// positive definite, `Q` and `Q_T` symmetric, `T > 0`) and integrates the Riccati
/// equation.
#[derive(Clone, Debug, PartialEq)]
pub struct Lqr {
    /// State dimension.
    pub d: usize,
    /// Control dimension.
    pub k: usize,
    /// Drift matrix `A`, d×d.
    pub a: Vec<f64>,
    /// Input matrix `B`, d×k.
    pub b: Vec<f64>,
    /// Control cost `R`, k×k, symmetric positive definite.
    pub r: Vec<f64>,
    /// State cost `Q`, d×d, symmetric.
    pub q: Vec<f64>,
    /// Terminal cost `Q_T`, d×d, symmetric.
    pub q_terminal: Vec<f64>,
    /// The noise coefficient `σ`.
    pub sigma: Diffusion,
    /// The horizon `T > 0`.
    pub horizon: f64,
}

impl Lqr {
    /// The standard test problem in `d` dimensions (the one the training tests use):
    /// `A = −½I + (0.4/√d)·G` with `G` a d×d matrix of standard normals drawn from
    /// [`Brownian::new(seed)`](Brownian) (sample 0, step 0, row-major), so `A` is
    /// stable-ish (eigenvalues near the disc of radius 0.4 about −½); `B = I` (`k = d`),
    /// `R = I`, `Q = I`, `Q_T = I`, `σ = 0.5·I`, `T = 1`.
    ///
    /// Errors with [`Error::InvalidArgument`] when `d == 0`.
    pub fn standard(d: usize, seed: u64) -> Result<Lqr> {
        if d == 0 {
            return Err(Error::InvalidArgument(
                "LQR dimension must be positive".into(),
            ));
        }
        let mut g = vec![0.0; d * d];
        Brownian::new(seed).normals(0, 0, &mut g)?;
        let scale = 0.4 / (d as f64).sqrt();
        let eye = identity(d);
        let a: Vec<f64> = g
            .iter()
            .zip(&eye)
            .map(|(gij, e)| scale * gij - 0.5 * e)
            .collect();
        Ok(Lqr {
            d,
            k: d,
            a,
            b: eye.clone(),
            r: eye.clone(),
            q: eye.clone(),
            q_terminal: eye,
            sigma: Diffusion::Scalar(0.5),
            horizon: 1.0,
        })
    }

    /// Checks shapes, finiteness, symmetry of `Q`, `Q_T`, `R`, positive definiteness of
    /// `R` and `T > 0`.
    pub fn validate(&self) -> Result<()> {
        let (d, k) = (self.d, self.k);
        if d == 0 || k == 0 {
            return Err(Error::InvalidArgument(
                "LQR state and control dimensions must be positive".into(),
            ));
        }
        check_len("LQR A", self.a.len(), d * d)?;
        check_len("LQR B", self.b.len(), d * k)?;
        check_len("LQR R", self.r.len(), k * k)?;
        check_len("LQR Q", self.q.len(), d * d)?;
        check_len("LQR Q_T", self.q_terminal.len(), d * d)?;
        check_finite("LQR A", &self.a)?;
        check_finite("LQR B", &self.b)?;
        check_finite("LQR R", &self.r)?;
        check_finite("LQR Q", &self.q)?;
        check_finite("LQR Q_T", &self.q_terminal)?;
        match &self.sigma {
            Diffusion::Scalar(s) => check_scalar("LQR sigma", *s)?,
            Diffusion::Matrix(m) => {
                check_len("LQR sigma", m.len(), d * d)?;
                check_finite("LQR sigma", m)?;
            }
        }
        if !(self.horizon.is_finite() && self.horizon > 0.0) {
            return Err(Error::InvalidArgument(format!(
                "LQR horizon must be positive and finite, got {}",
                self.horizon
            )));
        }
        check_symmetric("LQR R", &self.r, k)?;
        check_symmetric("LQR Q", &self.q, d)?;
        check_symmetric("LQR Q_T", &self.q_terminal, d)?;
        cholesky(&self.r, k, "LQR R")?;
        Ok(())
    }

    /// The noise matrix `σ` as a d×d row-major matrix.
    pub fn sigma_matrix(&self) -> Vec<f64> {
        match &self.sigma {
            Diffusion::Scalar(s) => identity(self.d).iter().map(|e| e * s).collect(),
            Diffusion::Matrix(m) => m.clone(),
        }
    }

    /// Validates the problem and solves the Riccati equation
    /// `−Ṗ = AᵀP + PA − PBR⁻¹BᵀP + Q`, `P(T) = Q_T`, `−ċ = ½tr(σσᵀP)`, `c(T) = 0`
    /// backward with RK4, doubling the number of steps until two solutions agree to
    /// 1.5e-11 relative (estimated error ~1e-12). Errors with [`Error::Numerical`] if
    /// `P` blows up (a finite escape time, possible when `Q` or `Q_T` is indefinite) or
    /// the step count would pass 2^21.
    pub fn solve(&self) -> Result<LqrSolution> {
        self.validate()?;
        let (d, k) = (self.d, self.k);
        let chol_r = cholesky(&self.r, k, "LQR R")?;
        // R⁻¹Bᵀ (k×d), column by column of Bᵀ.
        let mut rinv_bt = vec![0.0; k * d];
        let mut col = vec![0.0; k];
        for j in 0..d {
            col.copy_from_slice(&self.b[j * k..(j + 1) * k]);
            cholesky_solve(&chol_r, k, &mut col);
            for i in 0..k {
                rinv_bt[i * d + j] = col[i];
            }
        }
        let mut s_mat = vec![0.0; d * d];
        matmul(&self.b, &rinv_bt, d, k, d, &mut s_mat);
        symmetrize(&mut s_mat, d);
        let sig = self.sigma_matrix();
        let mut sst = vec![0.0; d * d];
        // σσᵀ = (σᵀ)ᵀ σᵀ
        let sig_t = transpose(&sig, d, d);
        matmul_tn(&sig_t, &sig_t, d, d, d, &mut sst);
        let mut sol = LqrSolution {
            problem: self.clone(),
            s_mat,
            sst,
            rinv_bt,
            n_steps: 0,
            h: 0.0,
            stride: 1,
            nodes_p: Vec::new(),
            nodes_c: Vec::new(),
            error_estimate: f64::INFINITY,
        };
        let t = self.horizon;
        let sn = frobenius(&sol.s_mat);
        let mut rate = 2.0 * frobenius(&self.a) + 1.0;
        if sn > 0.0 {
            rate += sn * frobenius(&self.q_terminal) + (sn * frobenius(&self.q)).sqrt();
        }
        let n0 = (t * rate / 0.05).ceil();
        if n0.is_nan() || n0 > (1u64 << 21) as f64 {
            return Err(Error::Numerical(format!(
                "Riccati solve would need more than 2^21 RK4 steps (T·rate = {:e})",
                t * rate
            )));
        }
        let mut n = (n0 as usize).max(64);
        let (mut p_prev, mut c_prev) = sol.integrate(n, false)?;
        loop {
            let (p2, c2) = sol.integrate(2 * n, true)?;
            let scale_p = 1.0 + max_abs(&p2);
            let diff_p = p2
                .iter()
                .zip(&p_prev)
                .fold(0.0_f64, |m, (x, y)| m.max((x - y).abs()));
            let err = (diff_p / scale_p).max((c2 - c_prev).abs() / (1.0 + c2.abs())) / 15.0;
            if err <= 1e-12 {
                sol.error_estimate = err;
                return Ok(sol);
            }
            n *= 2;
            if n > 1 << 21 {
                return Err(Error::Numerical(format!(
                    "Riccati solve did not reach 1e-12 with 2^22 RK4 steps (estimate {err:e})"
                )));
            }
            p_prev = p2;
            c_prev = c2;
        }
    }
}

fn identity(d: usize) -> Vec<f64> {
    let mut m = vec![0.0; d * d];
    for i in 0..d {
        m[i * d + i] = 1.0;
    }
    m
}

fn transpose(a: &[f64], n: usize, m: usize) -> Vec<f64> {
    let mut t = vec![0.0; n * m];
    for i in 0..n {
        for j in 0..m {
            t[j * n + i] = a[i * m + j];
        }
    }
    t
}

/// The solved [`Lqr`]: `Φ(t,z) = ½zᵀP(t)z + c(t)`, queried at any `t ∈ [0,T]`.
///
/// `P` is stored on a grid of the backward RK4 solve; a query between grid points is
/// integrated from the nearest stored point with steps no longer than the solve's, so
/// every `t` gets the solve's accuracy (~1e-12 relative).
#[derive(Clone, Debug)]
pub struct LqrSolution {
    problem: Lqr,
    s_mat: Vec<f64>,
    sst: Vec<f64>,
    rinv_bt: Vec<f64>,
    n_steps: usize,
    h: f64,
    stride: usize,
    nodes_p: Vec<f64>,
    nodes_c: Vec<f64>,
    error_estimate: f64,
}

impl LqrSolution {
    /// The problem solved.
    pub fn problem(&self) -> &Lqr {
        &self.problem
    }

    /// The number of RK4 steps on `[0, T]` of the accepted solve.
    pub fn steps(&self) -> usize {
        self.n_steps
    }

    /// The estimated relative error of `P(0)` and `c(0)` (step doubling, divided by 15).
    pub fn error_estimate(&self) -> f64 {
        self.error_estimate
    }

    /// Time derivative (in reversed time `τ = T − t`) of `(P, c)`.
    fn rhs(&self, p: &[f64], out: &mut [f64], tmp: &mut [f64], tmp2: &mut [f64]) -> f64 {
        let d = self.problem.d;
        let a = &self.problem.a;
        // AᵀP
        matmul_tn(a, p, d, d, d, out);
        // + PA
        matmul(p, a, d, d, d, tmp);
        out.iter_mut().zip(tmp.iter()).for_each(|(o, x)| *o += x);
        // − P S P
        matmul(p, &self.s_mat, d, d, d, tmp);
        matmul(tmp, p, d, d, d, tmp2);
        out.iter_mut()
            .zip(tmp2.iter().zip(&self.problem.q))
            .for_each(|(o, (psp, q))| *o += q - psp);
        symmetrize(out, d);
        0.5 * self.sst.iter().zip(p).map(|(s, x)| s * x).sum::<f64>()
    }

    /// `m` RK4 steps of size `dt` in τ, in place.
    fn rk4_steps(&self, p: &mut [f64], c: &mut f64, dt: f64, m: usize) -> Result<()> {
        let n = p.len();
        let mut k = [vec![0.0; n], vec![0.0; n], vec![0.0; n], vec![0.0; n]];
        let (mut tmp, mut tmp2, mut stage) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
        for _ in 0..m {
            let [k1, k2, k3, k4] = &mut k;
            let c1 = self.rhs(p, k1, &mut tmp, &mut tmp2);
            stage
                .iter_mut()
                .zip(p.iter().zip(k1.iter()))
                .for_each(|(s, (x, y))| *s = x + 0.5 * dt * y);
            let c2 = self.rhs(&stage, k2, &mut tmp, &mut tmp2);
            stage
                .iter_mut()
                .zip(p.iter().zip(k2.iter()))
                .for_each(|(s, (x, y))| *s = x + 0.5 * dt * y);
            let c3 = self.rhs(&stage, k3, &mut tmp, &mut tmp2);
            stage
                .iter_mut()
                .zip(p.iter().zip(k3.iter()))
                .for_each(|(s, (x, y))| *s = x + dt * y);
            let c4 = self.rhs(&stage, k4, &mut tmp, &mut tmp2);
            for (i, x) in p.iter_mut().enumerate() {
                *x += dt / 6.0 * (k1[i] + 2.0 * k2[i] + 2.0 * k3[i] + k4[i]);
            }
            *c += dt / 6.0 * (c1 + 2.0 * c2 + 2.0 * c3 + c4);
            if !(c.is_finite() && p.iter().all(|x| x.is_finite())) {
                return Err(Error::Numerical(
                    "Riccati solution blew up (finite escape time)".into(),
                ));
            }
        }
        Ok(())
    }

    /// Integrates from τ = 0 to T with `n` steps; stores the grid when `store`.
    fn integrate(&mut self, n: usize, store: bool) -> Result<(Vec<f64>, f64)> {
        let d = self.problem.d;
        let h = self.problem.horizon / n as f64;
        let mut p = self.problem.q_terminal.clone();
        let mut c = 0.0;
        let stride = if store {
            ((n as f64 * (d * d) as f64) / (1u64 << 21) as f64)
                .ceil()
                .max(1.0) as usize
        } else {
            n
        };
        let mut nodes_p = Vec::new();
        let mut nodes_c = Vec::new();
        if store {
            nodes_p.extend_from_slice(&p);
            nodes_c.push(c);
        }
        let mut done = 0;
        while done < n {
            let m = stride.min(n - done);
            self.rk4_steps(&mut p, &mut c, h, m)?;
            done += m;
            if store && m == stride {
                nodes_p.extend_from_slice(&p);
                nodes_c.push(c);
            }
        }
        if store {
            self.n_steps = n;
            self.h = h;
            self.stride = stride;
            self.nodes_p = nodes_p;
            self.nodes_c = nodes_c;
        }
        Ok((p, c))
    }

    fn check_time(&self, t: f64) -> Result<f64> {
        let big_t = self.problem.horizon;
        check_scalar("time", t)?;
        let slack = 1e-12 * big_t.max(1.0);
        if t < -slack || t > big_t + slack {
            return Err(Error::InvalidArgument(format!(
                "time {t} outside the horizon [0, {big_t}]"
            )));
        }
        Ok((big_t - t).clamp(0.0, big_t))
    }

    fn state(&self, t: f64) -> Result<(Vec<f64>, f64)> {
        let tau = self.check_time(t)?;
        let d2 = self.problem.d * self.problem.d;
        let node_dt = self.stride as f64 * self.h;
        let n_nodes = self.nodes_c.len();
        let j = ((tau / node_dt).floor() as usize).min(n_nodes - 1);
        let mut p = self.nodes_p[j * d2..(j + 1) * d2].to_vec();
        let mut c = self.nodes_c[j];
        let rem = tau - j as f64 * node_dt;
        if rem > 1e-14 * self.problem.horizon {
            let m = ((rem / self.h) * (1.0 - 1e-12)).ceil().max(1.0) as usize;
            self.rk4_steps(&mut p, &mut c, rem / m as f64, m)?;
        }
        Ok((p, c))
    }

    /// `P(t)`, d×d row-major (symmetric). Errors when `t` is outside `[0, T]`.
    pub fn p(&self, t: f64) -> Result<Vec<f64>> {
        Ok(self.state(t)?.0)
    }

    /// `c(t) = ½∫_t^T tr(σσᵀP)`. Errors when `t` is outside `[0, T]`.
    pub fn c(&self, t: f64) -> Result<f64> {
        Ok(self.state(t)?.1)
    }

    fn check_z(&self, z: &[f64]) -> Result<()> {
        check_len("LQR state", z.len(), self.problem.d)?;
        check_finite("LQR state", z)
    }

    /// `Φ(t,z) = ½zᵀP(t)z + c(t)`.
    pub fn value(&self, t: f64, z: &[f64]) -> Result<f64> {
        self.check_z(z)?;
        let (p, c) = self.state(t)?;
        let pz = matvec(&p, z, self.problem.d, self.problem.d);
        Ok(0.5 * pz.iter().zip(z).map(|(a, b)| a * b).sum::<f64>() + c)
    }

    /// `∇Φ(t,z) = P(t)z`.
    pub fn gradient(&self, t: f64, z: &[f64]) -> Result<Vec<f64>> {
        self.check_z(z)?;
        let p = self.p(t)?;
        Ok(matvec(&p, z, self.problem.d, self.problem.d))
    }

    /// The feedback gain `K(t) = R⁻¹BᵀP(t)`, k×d row-major, so that `u* = −K(t)z`.
    pub fn feedback_gain(&self, t: f64) -> Result<Vec<f64>> {
        let (d, k) = (self.problem.d, self.problem.k);
        let p = self.p(t)?;
        let mut g = vec![0.0; k * d];
        matmul(&self.rinv_bt, &p, k, d, d, &mut g);
        Ok(g)
    }

    /// The optimal control `u*(t,z) = −R⁻¹BᵀP(t)z`.
    pub fn control(&self, t: f64, z: &[f64]) -> Result<Vec<f64>> {
        let grad = self.gradient(t, z)?;
        Ok(matvec(&self.rinv_bt, &grad, self.problem.k, self.problem.d)
            .into_iter()
            .map(|x| -x)
            .collect())
    }
}

/// The exact optimum of an [`Lqr`] discretized by Euler–Maruyama on `n` equal steps
/// (the problem NeuralSOC's roll-outs actually pose): z_{i+1} = Fz_i + hBu_i + σΔW_i with
/// F = I + hA, cost Σ h(½uᵢᵀRuᵢ + ½zᵢᵀQzᵢ) + ½z_NᵀQ_Tz_N. The value is
/// V_i(z) = ½zᵀP_iz + c_i by the discrete Riccati recursion
///
/// ```text
/// P_N = Q_T,  K_i = (R + hBᵀP_{i+1}B)⁻¹BᵀP_{i+1}F,  u_i = −K_i z,
/// P_i = hQ + FᵀP_{i+1}F − h·FᵀP_{i+1}B K_i,  c_i = c_{i+1} + ½h·tr(σσᵀP_{i+1}).
/// ```
///
/// As n grows it converges to the continuous solution at order 1; at n = 20 its
/// feedback differs from the continuous one by several percent, which is the floor a
/// controller trained on 20 steps is judged against.
#[derive(Clone, Debug, PartialEq)]
pub struct DiscreteLqrSolution {
    d: usize,
    k: usize,
    h: f64,
    p: Vec<Vec<f64>>,
    c: Vec<f64>,
    gains: Vec<Vec<f64>>,
}

impl Lqr {
    /// The exact optimum of the `n`-step Euler–Maruyama discretization (see
    /// [`DiscreteLqrSolution`]).
    pub fn solve_discrete(&self, n: usize) -> Result<DiscreteLqrSolution> {
        self.validate()?;
        if n == 0 {
            return Err(Error::InvalidArgument(
                "discrete LQR: need at least one step".into(),
            ));
        }
        let (d, k) = (self.d, self.k);
        let h = self.horizon / n as f64;
        let mut f = identity(d);
        f.iter_mut().zip(&self.a).for_each(|(x, a)| *x += h * a);
        let sig = self.sigma_matrix();
        let mut sst = vec![0.0; d * d];
        matmul(&sig, &transpose(&sig, d, d), d, d, d, &mut sst);
        let mut p = vec![Vec::new(); n + 1];
        let mut c = vec![0.0; n + 1];
        let mut gains = vec![Vec::new(); n];
        p[n] = self.q_terminal.clone();
        let (mut pb, mut btpb, mut pf, mut btpf) = (
            vec![0.0; d * k],
            vec![0.0; k * k],
            vec![0.0; d * d],
            vec![0.0; k * d],
        );
        let mut ftpf = vec![0.0; d * d];
        let mut ftpb = vec![0.0; d * k];
        let mut corr = vec![0.0; d * d];
        for i in (0..n).rev() {
            let pn = &p[i + 1];
            matmul(pn, &self.b, d, d, k, &mut pb);
            matmul_tn(&self.b, &pb, d, k, k, &mut btpb);
            let mut m = self.r.clone();
            m.iter_mut().zip(&btpb).for_each(|(x, y)| *x += h * y);
            let l = cholesky(&m, k, "R + hBᵀPB")?;
            matmul(pn, &f, d, d, d, &mut pf);
            matmul_tn(&self.b, &pf, d, k, d, &mut btpf);
            // K = M⁻¹ BᵀPF, column by column.
            let mut gain = vec![0.0; k * d];
            let mut col = vec![0.0; k];
            for j in 0..d {
                for r in 0..k {
                    col[r] = btpf[r * d + j];
                }
                cholesky_solve(&l, k, &mut col);
                for r in 0..k {
                    gain[r * d + j] = col[r];
                }
            }
            matmul_tn(&f, &pf, d, d, d, &mut ftpf);
            matmul_tn(&f, &pb, d, d, k, &mut ftpb);
            matmul(&ftpb, &gain, d, k, d, &mut corr);
            let mut pi: Vec<f64> = (0..d * d)
                .map(|e| h * self.q[e] + ftpf[e] - h * corr[e])
                .collect();
            symmetrize(&mut pi, d);
            let tr: f64 = (0..d)
                .map(|r| (0..d).map(|s| sst[r * d + s] * pn[s * d + r]).sum::<f64>())
                .sum();
            c[i] = c[i + 1] + 0.5 * h * tr;
            p[i] = pi;
            gains[i] = gain;
        }
        Ok(DiscreteLqrSolution {
            d,
            k,
            h,
            p,
            c,
            gains,
        })
    }
}

impl DiscreteLqrSolution {
    /// The number of steps n.
    pub fn steps(&self) -> usize {
        self.gains.len()
    }

    /// The step length h = T/n.
    pub fn step(&self) -> f64 {
        self.h
    }

    /// P_i (d × d, row-major), i = 0 … n.
    pub fn p(&self, i: usize) -> Result<&[f64]> {
        self.p
            .get(i)
            .map(Vec::as_slice)
            .ok_or_else(|| Error::InvalidArgument(format!("discrete LQR: no step {i}")))
    }

    /// V_i(z) = ½zᵀP_iz + c_i.
    pub fn value(&self, i: usize, z: &[f64]) -> Result<f64> {
        let p = self.p(i)?;
        if z.len() != self.d {
            return Err(Error::Length {
                what: "discrete LQR state",
                found: z.len(),
                expected: self.d,
            });
        }
        let pz = matvec(p, z, self.d, self.d);
        Ok(0.5 * z.iter().zip(&pz).map(|(a, b)| a * b).sum::<f64>() + self.c[i])
    }

    /// The optimal control u_i = −K_iz at step i < n.
    pub fn control(&self, i: usize, z: &[f64]) -> Result<Vec<f64>> {
        let g = self.gains.get(i).ok_or_else(|| {
            Error::InvalidArgument(format!("discrete LQR: no control at step {i}"))
        })?;
        if z.len() != self.d {
            return Err(Error::Length {
                what: "discrete LQR state",
                found: z.len(),
                expected: self.d,
            });
        }
        Ok(matvec(g, z, self.k, self.d)
            .into_iter()
            .map(|v| -v)
            .collect())
    }
}

// ---------------------------------------------------------------------------------
// Log-space adaptive Gauss–Kronrod quadrature.
// ---------------------------------------------------------------------------------

/// Kronrod 15-point abscissae on [−1, 1] (the positive half, QUADPACK `qk15`);
/// entries 1, 3, 5, 7 are the 7-point Gauss abscissae.
const XGK: [f64; 8] = [
    0.991_455_371_120_812_6,
    0.949_107_912_342_758_5,
    0.864_864_423_359_769_1,
    0.741_531_185_599_394_4,
    0.586_087_235_467_691_1,
    0.405_845_151_377_397_2,
    0.207_784_955_007_898_5,
    0.0,
];
/// Kronrod 15-point weights.
const WGK: [f64; 8] = [
    0.022_935_322_010_529_22,
    0.063_092_092_629_978_55,
    0.104_790_010_322_250_2,
    0.140_653_259_715_525_9,
    0.169_004_726_639_267_9,
    0.190_350_578_064_785_4,
    0.204_432_940_075_298_9,
    0.209_482_141_084_727_8,
];
/// Gauss 7-point weights (for `XGK[1]`, `XGK[3]`, `XGK[5]`, `XGK[7]`).
const WG: [f64; 4] = [
    0.129_484_966_168_869_7,
    0.279_705_391_489_276_7,
    0.381_830_050_505_118_9,
    0.417_959_183_673_469_4,
];

/// One panel of the log-space quadrature of `∫ e^F` and `∫ e^F·v`: the estimates are
/// relative to `e^fmax`.
#[derive(Clone, Copy, Debug)]
struct Panel {
    a: f64,
    b: f64,
    fmax: f64,
    z: f64,
    zv: f64,
    zabs: f64,
    err_z: f64,
    err_v: f64,
}

fn gk15<F>(f: &mut F, a: f64, b: f64) -> Result<Panel>
where
    F: FnMut(f64) -> Result<(f64, f64)>,
{
    let c = 0.5 * (a + b);
    let hl = 0.5 * (b - a);
    let mut lf = [0.0; 15];
    let mut vv = [0.0; 15];
    // index 0..7: c − hl·XGK[j]; 7..14: c + hl·XGK[j] (j = 0..6); 14: center.
    for j in 0..7 {
        let (f1, v1) = f(c - hl * XGK[j])?;
        let (f2, v2) = f(c + hl * XGK[j])?;
        lf[j] = f1;
        vv[j] = v1;
        lf[7 + j] = f2;
        vv[7 + j] = v2;
    }
    let (f0, v0) = f(c)?;
    lf[14] = f0;
    vv[14] = v0;
    if lf.iter().any(|x| x.is_nan() || *x == f64::INFINITY) || vv.iter().any(|x| !x.is_finite()) {
        return Err(Error::Numerical(format!(
            "log-integrand not finite on [{a}, {b}]"
        )));
    }
    let fmax = lf.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    if fmax == f64::NEG_INFINITY {
        return Ok(Panel {
            a,
            b,
            fmax,
            z: 0.0,
            zv: 0.0,
            zabs: 0.0,
            err_z: 0.0,
            err_v: 0.0,
        });
    }
    let e: Vec<f64> = lf.iter().map(|x| (x - fmax).exp()).collect();
    let (mut kz, mut kv, mut ka, mut gz, mut gv) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for j in 0..7 {
        let s = e[j] + e[7 + j];
        let sv = e[j] * vv[j] + e[7 + j] * vv[7 + j];
        kz += WGK[j] * s;
        kv += WGK[j] * sv;
        ka += WGK[j] * (e[j] * vv[j].abs() + e[7 + j] * vv[7 + j].abs());
        if j % 2 == 1 {
            gz += WG[j / 2] * s;
            gv += WG[j / 2] * sv;
        }
    }
    kz += WGK[7] * e[14];
    kv += WGK[7] * e[14] * vv[14];
    ka += WGK[7] * e[14] * vv[14].abs();
    gz += WG[3] * e[14];
    gv += WG[3] * e[14] * vv[14];
    Ok(Panel {
        a,
        b,
        fmax,
        z: hl * kz,
        zv: hl * kv,
        zabs: hl * ka,
        err_z: hl * (kz - gz).abs(),
        err_v: hl * (kv - gv).abs(),
    })
}

/// `ln ∫ e^F` and the tilted mean `∫ e^F v / ∫ e^F` of an integrand given as
/// `x ↦ (F(x), v(x))`, over `[breaks[0], breaks[last]]`.
#[derive(Clone, Copy, Debug)]
struct LogIntegral {
    log_z: f64,
    mean_v: f64,
}

/// Global adaptive Gauss–Kronrod (15/7) in log space: every panel is scaled by its
/// own largest `F`, panels are compared on the common scale of the largest; the panel
/// with the largest (Kronrod − Gauss) difference is bisected until the sum of those
/// differences is below `tol` relative, for both `∫e^F` and `∫e^F|v|`.
fn log_integrate<F>(mut f: F, breaks: &[f64], tol: f64) -> Result<LogIntegral>
where
    F: FnMut(f64) -> Result<(f64, f64)>,
{
    const MAX_PANELS: usize = 3000;
    let mut panels = Vec::with_capacity(64);
    for w in breaks.windows(2) {
        if w[1] > w[0] {
            panels.push(gk15(&mut f, w[0], w[1])?);
        }
    }
    if panels.is_empty() {
        return Err(Error::Numerical("empty quadrature interval".into()));
    }
    loop {
        let m = panels.iter().fold(f64::NEG_INFINITY, |m, p| m.max(p.fmax));
        if m == f64::NEG_INFINITY {
            return Err(Error::Numerical(
                "integrand vanishes on the whole quadrature interval".into(),
            ));
        }
        let (mut z, mut zv, mut za, mut ez, mut ev) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for p in &panels {
            let s = (p.fmax - m).exp();
            z += s * p.z;
            zv += s * p.zv;
            za += s * p.zabs;
            ez += s * p.err_z;
            ev += s * p.err_v;
        }
        let za_ok = if za > 0.0 { za } else { 1.0 };
        if ez <= tol * z && ev <= tol * za_ok {
            return Ok(LogIntegral {
                log_z: m + z.ln(),
                mean_v: zv / z,
            });
        }
        if panels.len() >= MAX_PANELS {
            return Err(Error::Numerical(format!(
                "adaptive quadrature did not converge ({} panels, relative error {:e})",
                panels.len(),
                ez / z
            )));
        }
        let (mut worst, mut worst_score) = (0, -1.0);
        for (i, p) in panels.iter().enumerate() {
            let s = (p.fmax - m).exp();
            let score = s * (p.err_z / z + p.err_v / za_ok);
            if score > worst_score {
                worst = i;
                worst_score = score;
            }
        }
        let p = panels[worst];
        let mid = 0.5 * (p.a + p.b);
        if !(mid > p.a && mid < p.b) || (p.b - p.a) <= 1e-14 * p.a.abs().max(p.b.abs()) {
            // Cannot split further: accept this panel's estimate as is.
            panels[worst].err_z = 0.0;
            panels[worst].err_v = 0.0;
            continue;
        }
        panels[worst] = gk15(&mut f, p.a, mid)?;
        panels.push(gk15(&mut f, mid, p.b)?);
    }
}

/// Walks from `x0` (where `F = f0`) in direction `dir` by `step·2^j` until `F` drops
/// below `f0 − drop` or `bound` is passed (returned then). `F` must be monotone
/// beyond `x0` in that direction.
fn find_edge<F>(f: &mut F, x0: f64, f0: f64, step: f64, dir: f64, bound: f64, drop: f64) -> f64
where
    F: FnMut(f64) -> f64,
{
    let mut st = step;
    for _ in 0..400 {
        let x = x0 + dir * st;
        if (dir < 0.0 && x <= bound) || (dir > 0.0 && x >= bound) {
            return bound;
        }
        let fx = f(x);
        if fx.is_nan() || fx < f0 - drop {
            return x;
        }
        st *= 2.0;
    }
    bound
}

/// `ln Γ(k/2)` for an integer `k ≥ 1`, by the exact recurrences from `Γ(1) = 1` and
/// `Γ(½) = √π`.
fn ln_gamma_half(k: usize) -> f64 {
    if k % 2 == 0 {
        (1..k / 2).map(|j| (j as f64).ln()).sum()
    } else {
        0.5 * std::f64::consts::PI.ln()
            + (0..(k - 1) / 2).map(|j| (j as f64 + 0.5).ln()).sum::<f64>()
    }
}

// ---------------------------------------------------------------------------------
// Gauss rules (Golub–Welsch).
// ---------------------------------------------------------------------------------

/// A Gauss quadrature rule for an expectation: `E f(X) ≈ Σ weights[i]·f(nodes[i])`
/// (weights sum to 1), nodes ascending.
#[derive(Clone, Debug, PartialEq)]
pub struct GaussRule {
    /// The nodes, ascending.
    pub nodes: Vec<f64>,
    /// The weights (positive, summing to 1).
    pub weights: Vec<f64>,
}

/// Eigen-decomposition of the symmetric tridiagonal Jacobi matrix (implicit QL,
/// Numerical Recipes `tqli`), keeping only the first components of the eigenvectors:
/// the Gauss nodes and weights of the probability measure with these recurrence
/// coefficients.
fn golub_welsch(diag: &[f64], offdiag: &[f64]) -> Result<GaussRule> {
    let n = diag.len();
    let mut d = diag.to_vec();
    let mut e = vec![0.0; n];
    e[..n - 1].copy_from_slice(&offdiag[..n - 1]);
    // First row of the eigenvector matrix (rotations act on columns).
    let mut z = vec![0.0; n];
    z[0] = 1.0;
    for l in 0..n {
        let mut iter = 0;
        loop {
            let mut m = l;
            while m + 1 < n {
                let dd = d[m].abs() + d[m + 1].abs();
                if e[m].abs() <= f64::EPSILON * dd {
                    break;
                }
                m += 1;
            }
            if m == l {
                break;
            }
            iter += 1;
            if iter > 100 {
                return Err(Error::Numerical(
                    "Golub–Welsch eigenvalue iteration did not converge".into(),
                ));
            }
            let mut g = (d[l + 1] - d[l]) / (2.0 * e[l]);
            let mut r = g.hypot(1.0);
            g = d[m] - d[l] + e[l] / (g + if g >= 0.0 { r } else { -r });
            let (mut s, mut c, mut p) = (1.0, 1.0, 0.0);
            let mut i = m;
            let mut underflow = false;
            while i > l {
                i -= 1;
                let f = s * e[i];
                let b = c * e[i];
                r = f.hypot(g);
                e[i + 1] = r;
                if r == 0.0 {
                    d[i + 1] -= p;
                    e[m] = 0.0;
                    underflow = true;
                    break;
                }
                s = f / r;
                c = g / r;
                g = d[i + 1] - p;
                r = (d[i] - g) * s + 2.0 * c * b;
                p = s * r;
                d[i + 1] = g + p;
                g = c * r - b;
                let zf = z[i + 1];
                z[i + 1] = s * z[i] + c * zf;
                z[i] = c * z[i] - s * zf;
            }
            if underflow {
                continue;
            }
            d[l] -= p;
            e[l] = g;
            e[m] = 0.0;
        }
    }
    let mut idx: Vec<usize> = (0..n).collect();
    idx.sort_by(|&a, &b| d[a].total_cmp(&d[b]));
    let nodes: Vec<f64> = idx.iter().map(|&i| d[i]).collect();
    let mut weights: Vec<f64> = idx.iter().map(|&i| z[i] * z[i]).collect();
    let sum: f64 = weights.iter().sum();
    if !(sum.is_finite() && sum > 0.0) || nodes.iter().any(|x| !x.is_finite()) {
        return Err(Error::Numerical(
            "Golub–Welsch produced non-finite rule".into(),
        ));
    }
    weights.iter_mut().for_each(|w| *w /= sum);
    Ok(GaussRule { nodes, weights })
}

/// The `n`-point Gauss–Hermite rule for `E f(ξ)`, `ξ ~ N(0, 1)` (exact for polynomials
/// of degree `2n − 1`). Errors with [`Error::InvalidArgument`] for `n == 0` or
/// `n > 200`.
pub fn gauss_hermite(n: usize) -> Result<GaussRule> {
    if n == 0 || n > 200 {
        return Err(Error::InvalidArgument(format!(
            "Gauss–Hermite rule size must be in 1..=200, got {n}"
        )));
    }
    let diag = vec![0.0; n];
    let off: Vec<f64> = (1..n).map(|i| (i as f64).sqrt()).collect();
    golub_welsch(&diag, &off)
}

/// The `n`-point Gauss rule for `E f(V)`, `V ~ χ²_k` (generalized Gauss–Laguerre with
/// `α = k/2 − 1` on `V/2`; exact for polynomials of degree `2n − 1`). Errors with
/// [`Error::InvalidArgument`] for `k == 0`, `n == 0` or `n > 200`.
pub fn gauss_chi_square(k: usize, n: usize) -> Result<GaussRule> {
    if k == 0 || n == 0 || n > 200 {
        return Err(Error::InvalidArgument(format!(
            "chi-square Gauss rule needs k ≥ 1 and size in 1..=200, got k = {k}, n = {n}"
        )));
    }
    let alpha = k as f64 / 2.0 - 1.0;
    let diag: Vec<f64> = (0..n).map(|i| 2.0 * i as f64 + alpha + 1.0).collect();
    let off: Vec<f64> = (1..n)
        .map(|i| (i as f64 * (i as f64 + alpha)).sqrt())
        .collect();
    let mut rule = golub_welsch(&diag, &off)?;
    rule.nodes.iter_mut().for_each(|x| *x *= 2.0);
    Ok(rule)
}

// ---------------------------------------------------------------------------------
// Cole–Hopf.
// ---------------------------------------------------------------------------------

/// The radial problem `dz = b·u ds + σ dW` in `d` dimensions, `L = (r/2)‖u‖²`,
/// `g(z) = w·ln(½(1 + ‖z − x_ref‖²))`, horizon `T`, solved by the Cole–Hopf transform:
/// with `c = σ²r/b²`,
///
/// `Φ(t,x) = −c ln E[exp(−g(x + σ√(T−t) ξ)/c)]`, `ξ ~ N(0, I_d)`,
///
/// and `u* = −(b/r)∇Φ`. With `δ = ‖x − x_ref‖` and `s = σ√(T−t)`, writing the
/// terminal offset as `y e₁ + s·r·e⊥` (`y ~ N(δ, s²)` along `x − x_ref`, `r` a χ_{d−1}
/// variable), the expectation is a two-dimensional integral; it is computed in log
/// space by adaptive Gauss–Kronrod quadrature, the inner integral (over `r`, whose
/// log-integrand is unimodal with a closed-form mode) nested in the outer one (over
/// `y`, started from all local maxima of the profile log-integrand). Relative accuracy
/// is ~1e-12 for all weights, including `w = 1000` where the integrand spans
/// thousands of orders of magnitude. `∇Φ = Φ'(δ)(x − x_ref)/δ`,
/// `Φ'(δ) = E_tilted[w·2y/(1 + y² + s²r²)]` (the tilted mean of `∇g`); at `δ = 0` the
/// gradient is 0, at `t = T` the value and gradient are those of `g`.
///
/// Fields are public; every query validates them (`d ≥ 1`, `x_ref` of length `d`, all
/// finite, `σ, b, r, T > 0`, `w ≥ 0`).
#[derive(Clone, Debug, PartialEq)]
pub struct ColeHopf {
    /// Dimension.
    pub d: usize,
    /// Noise level σ (scalar times identity).
    pub sigma: f64,
    /// Control gain: `f = b·u`.
    pub b: f64,
    /// Control cost: `L = (r/2)‖u‖²`.
    pub r: f64,
    /// Terminal weight `w`.
    pub weight: f64,
    /// Target `x_ref`, length `d`.
    pub x_ref: Vec<f64>,
    /// Horizon `T`.
    pub horizon: f64,
}

/// The value and radial slope of a radial value function at one distance.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RadialValue {
    /// `Φ(t, x)` at `‖x − x_ref‖ = δ`.
    pub value: f64,
    /// `Φ'(δ)`, the derivative along `(x − x_ref)/δ`.
    pub slope: f64,
}

impl ColeHopf {
    /// The Han–Jentzen–E 100-D HJB benchmark: `d = 100`, `T = 1`, `f = 2u`,
    /// `L = ‖u‖²` (`b = 2`, `r = 2`), `σ = √2`, `g = ln(½(1 + ‖z‖²))` (`w = 1`,
    /// `x_ref = 0`); `c = 1` and `Φ(0, 0) ≈ 4.590162`.
    pub fn hjb100() -> ColeHopf {
        ColeHopf {
            d: 100,
            sigma: std::f64::consts::SQRT_2,
            b: 2.0,
            r: 2.0,
            weight: 1.0,
            x_ref: vec![0.0; 100],
            horizon: 1.0,
        }
    }

    /// The shifted-target 100-D benchmark (MATH.md §5, the lecture; NeuralSOC's
    /// `Benchmark2`): `d = 100`, `T = 1`, `σ = 2√2/5 (= 0.4√2)`, `x_ref = 3·1`,
    /// `g = weight·ln(½(1 + ‖z − x_ref‖²))`, started at `z = 0`. With `weight == 1` it
    /// is the lecture's form `f = u`, `L = ½‖u‖²` (`b = 1`, `r = 1`, `c = σ²`); with any
    /// other weight (1000 in the original NeuralSOC code) it is the original code's
    /// form `f = 2u`, `L = ‖u‖²` (`b = 2`, `r = 2`, `c = σ²/2`).
    pub fn shifted_target(weight: f64) -> ColeHopf {
        let (b, r) = if weight == 1.0 {
            (1.0, 1.0)
        } else {
            (2.0, 2.0)
        };
        ColeHopf {
            d: 100,
            sigma: 0.4 * std::f64::consts::SQRT_2,
            b,
            r,
            weight,
            x_ref: vec![3.0; 100],
            horizon: 1.0,
        }
    }

    /// Checks the fields (see the type's docs).
    pub fn validate(&self) -> Result<()> {
        if self.d == 0 {
            return Err(Error::InvalidArgument(
                "Cole–Hopf dimension must be positive".into(),
            ));
        }
        check_len("Cole–Hopf x_ref", self.x_ref.len(), self.d)?;
        check_finite("Cole–Hopf x_ref", &self.x_ref)?;
        for (name, v) in [
            ("sigma", self.sigma),
            ("b", self.b),
            ("r", self.r),
            ("horizon", self.horizon),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(Error::InvalidArgument(format!(
                    "Cole–Hopf {name} must be positive and finite, got {v}"
                )));
            }
        }
        if !(self.weight.is_finite() && self.weight >= 0.0) {
            return Err(Error::InvalidArgument(format!(
                "Cole–Hopf weight must be finite and ≥ 0, got {}",
                self.weight
            )));
        }
        Ok(())
    }

    /// The Cole–Hopf temperature `c = σ²r/b²`.
    pub fn temperature(&self) -> f64 {
        self.sigma * self.sigma * self.r / (self.b * self.b)
    }

    fn check_x(&self, x: &[f64]) -> Result<()> {
        self.validate()?;
        check_len("Cole–Hopf state", x.len(), self.d)?;
        check_finite("Cole–Hopf state", x)
    }

    fn remaining(&self, t: f64) -> Result<f64> {
        check_scalar("time", t)?;
        let big_t = self.horizon;
        let slack = 1e-12 * big_t.max(1.0);
        if t < -slack || t > big_t + slack {
            return Err(Error::InvalidArgument(format!(
                "time {t} outside the horizon [0, {big_t}]"
            )));
        }
        Ok((big_t - t).clamp(0.0, big_t))
    }

    /// The terminal cost `g(x) = w·ln(½(1 + ‖x − x_ref‖²))`.
    pub fn terminal(&self, x: &[f64]) -> Result<f64> {
        self.check_x(x)?;
        let rho = distance(x, &self.x_ref);
        Ok(self.weight * (0.5 * (1.0 + rho * rho)).ln())
    }

    /// `∇g(x) = 2w(x − x_ref)/(1 + ‖x − x_ref‖²)`.
    pub fn terminal_gradient(&self, x: &[f64]) -> Result<Vec<f64>> {
        self.check_x(x)?;
        let rho = distance(x, &self.x_ref);
        let f = 2.0 * self.weight / (1.0 + rho * rho);
        Ok(x.iter()
            .zip(&self.x_ref)
            .map(|(a, b)| f * (a - b))
            .collect())
    }

    /// `Φ` and `Φ'(δ)` at time `t` and distance `δ = ‖x − x_ref‖ ≥ 0` from the target.
    pub fn radial(&self, t: f64, delta: f64) -> Result<RadialValue> {
        self.validate()?;
        if !(delta.is_finite() && delta >= 0.0) {
            return Err(Error::InvalidArgument(format!(
                "distance must be finite and ≥ 0, got {delta}"
            )));
        }
        let tau = self.remaining(t)?;
        let w = self.weight;
        let s = self.sigma * tau.sqrt();
        if s == 0.0 || w == 0.0 {
            return Ok(RadialValue {
                value: w * (0.5 * (1.0 + delta * delta)).ln(),
                slope: 2.0 * w * delta / (1.0 + delta * delta),
            });
        }
        let c = self.temperature();
        let kappa = w / c;
        let li = log_expectation(self.d, delta, s, kappa)?;
        Ok(RadialValue {
            value: -c * li.log_z,
            slope: w * li.mean_v,
        })
    }

    /// `Φ(t, x)`. Errors on a bad problem, a wrong-length or non-finite `x`, or `t`
    /// outside `[0, T]`.
    pub fn value(&self, t: f64, x: &[f64]) -> Result<f64> {
        self.check_x(x)?;
        Ok(self.radial(t, distance(x, &self.x_ref))?.value)
    }

    /// `∇Φ(t, x) = Φ'(δ)(x − x_ref)/δ` (0 at `δ = 0`).
    pub fn gradient(&self, t: f64, x: &[f64]) -> Result<Vec<f64>> {
        self.check_x(x)?;
        let delta = distance(x, &self.x_ref);
        if delta == 0.0 {
            self.remaining(t)?;
            return Ok(vec![0.0; self.d]);
        }
        let slope = self.radial(t, delta)?.slope;
        Ok(x.iter()
            .zip(&self.x_ref)
            .map(|(a, b)| slope * (a - b) / delta)
            .collect())
    }

    /// The optimal control `u*(t, x) = −(b/r)∇Φ(t, x)`.
    pub fn control(&self, t: f64, x: &[f64]) -> Result<Vec<f64>> {
        let f = -self.b / self.r;
        Ok(self.gradient(t, x)?.into_iter().map(|g| f * g).collect())
    }
}

/// Mode `q* = r*²` of `r ↦ (k−1)ln r − r²/2 − κ ln(A + s²r²)`: the nonnegative root of
/// `s²q² + (A + (2κ − k + 1)s²)q − (k−1)A = 0` (the only one, so the function is
/// unimodal).
fn inner_mode_q(k: usize, big_a: f64, s2: f64, kappa: f64) -> f64 {
    if k <= 1 {
        return 0.0;
    }
    let km1 = (k - 1) as f64;
    let bq = big_a + (2.0 * kappa - km1) * s2;
    let disc = (bq * bq + 4.0 * s2 * km1 * big_a).sqrt();
    if bq >= 0.0 {
        2.0 * km1 * big_a / (bq + disc)
    } else {
        (disc - bq) / (2.0 * s2)
    }
}

const LOG_DROP: f64 = 64.0;
const QUAD_TOL: f64 = 1e-11;

/// `ln E[(½(1 + ρ²))^{−κ}]` with `ρ = ‖δe₁ + sξ‖`, `ξ ~ N(0, I_d)`, and the tilted mean
/// of `2y/(1 + ρ²)` (`y` the component along `e₁`).
fn log_expectation(d: usize, delta: f64, s: f64, kappa: f64) -> Result<LogIntegral> {
    let k = d - 1;
    let s2 = s * s;
    let lnorm_r = if k >= 1 {
        -(k as f64 / 2.0 - 1.0) * std::f64::consts::LN_2 - ln_gamma_half(k)
    } else {
        0.0
    };
    // Inner: (ln ∫ e^{ℓ_r} dr + normalization, tilted mean of 1/(A + s²r²)).
    let inner = |y: f64| -> Result<(f64, f64)> {
        let big_a = 1.0 + y * y;
        if k == 0 {
            return Ok((-kappa * big_a.ln(), 1.0 / big_a));
        }
        let km1 = (k - 1) as f64;
        let ell = |r: f64| -> f64 {
            let lr = if k == 1 { 0.0 } else { km1 * r.ln() };
            lr - 0.5 * r * r - kappa * (big_a + s2 * r * r).ln()
        };
        let q = inner_mode_q(k, big_a, s2, kappa);
        let rs = q.sqrt();
        let den = big_a + s2 * q;
        let curv = if k == 1 { 0.0 } else { km1 / q }
            + 1.0
            + 2.0 * kappa * s2 * (big_a - s2 * q) / (den * den);
        let width = if curv.is_finite() && curv > 0.0 {
            1.0 / curv.sqrt()
        } else {
            1.0
        };
        let fmode = ell(rs);
        let mut ellf = ell;
        let lo = if rs == 0.0 {
            0.0
        } else {
            find_edge(&mut ellf, rs, fmode, width, -1.0, 0.0, LOG_DROP)
        };
        let hi = find_edge(&mut ellf, rs, fmode, width, 1.0, f64::INFINITY, LOG_DROP);
        let mut br = vec![lo];
        for m in [-3.0, -1.0, 0.0, 1.0, 3.0] {
            let x = rs + m * width;
            if x > lo && x < hi {
                br.push(x);
            }
        }
        br.push(hi);
        br.dedup();
        let li = log_integrate(|r| Ok((ell(r), 1.0 / (big_a + s2 * r * r))), &br, QUAD_TOL)?;
        Ok((li.log_z + lnorm_r, li.mean_v))
    };
    // Outer log-integrand in y.
    let const_y = -(s * (2.0 * std::f64::consts::PI).sqrt()).ln() + kappa * std::f64::consts::LN_2;
    let outer = |y: f64| -> Result<(f64, f64)> {
        let (l, hm) = inner(y)?;
        let dy = y - delta;
        Ok((const_y - dy * dy / (2.0 * s2) + l, 2.0 * y * hm))
    };
    // Anchors: local maxima of the profile log-integrand on [0, δ] (its slope is
    // `slope(y)`), valleys between them as extra breakpoints.
    let slope = |y: f64| -> f64 {
        let q = inner_mode_q(k, 1.0 + y * y, s2, kappa);
        (delta - y) / s2 - 2.0 * kappa * y / (1.0 + y * y + s2 * q)
    };
    let width_at = |y: f64| -> f64 {
        let q = inner_mode_q(k, 1.0 + y * y, s2, kappa);
        1.0 / (1.0 / s2 + 2.0 * kappa / (1.0 + y * y + s2 * q)).sqrt()
    };
    let mut anchors: Vec<f64> = Vec::new();
    let mut valleys: Vec<f64> = Vec::new();
    if delta == 0.0 {
        anchors.push(0.0);
    } else {
        let near = delta.min(10.0 * (1.0 + s2 * (k as f64 + 1.0)).sqrt());
        let mut ys: Vec<f64> = (0..=400).map(|i| delta * i as f64 / 400.0).collect();
        ys.extend((1..2000).map(|i| near * i as f64 / 2000.0));
        ys.sort_by(f64::total_cmp);
        ys.dedup();
        let mut prev_y = ys[0];
        let mut prev_g = slope(prev_y);
        for &y in &ys[1..] {
            let g = slope(y);
            if (prev_g > 0.0) != (g > 0.0) {
                let (mut lo, mut hi) = (prev_y, y);
                let lo_pos = prev_g > 0.0;
                for _ in 0..200 {
                    let mid = 0.5 * (lo + hi);
                    if !(mid > lo && mid < hi) {
                        break;
                    }
                    if (slope(mid) > 0.0) == lo_pos {
                        lo = mid;
                    } else {
                        hi = mid;
                    }
                }
                let root = 0.5 * (lo + hi);
                if lo_pos {
                    anchors.push(root);
                } else {
                    valleys.push(root);
                }
            }
            prev_y = y;
            prev_g = g;
        }
        if anchors.is_empty() {
            // Cannot happen (slope(0) > 0 > slope(δ)); keep a safe fallback.
            anchors.push(0.5 * delta);
        }
    }
    let y_lo = -12.0 * s;
    let y_hi = delta + 12.0 * s;
    let mut br = vec![y_lo, y_hi, 0.0, delta];
    for &a in &anchors {
        let w = width_at(a);
        for m in [-20.0, -8.0, -3.0, -1.0, 0.0, 1.0, 3.0, 8.0, 20.0] {
            br.push(a + m * w);
        }
    }
    br.extend(valleys);
    let mut br: Vec<f64> = br
        .into_iter()
        .filter(|x| *x >= y_lo && *x <= y_hi)
        .collect();
    br.sort_by(f64::total_cmp);
    br.dedup();
    log_integrate(outer, &br, QUAD_TOL)
}

// ---------------------------------------------------------------------------------
// Discrete-time optimum by dynamic programming.
// ---------------------------------------------------------------------------------

/// Discretization settings of [`discrete_optimum_with`].
#[derive(Clone, Debug, PartialEq)]
pub struct DiscreteOptions {
    /// Spacing of the grid in the distance ρ (default 0.01).
    pub grid_spacing: f64,
    /// Most grid points; the spacing grows when the range needs more (default 20001).
    pub max_grid_points: usize,
    /// Gauss–Hermite nodes for the noise along the line to the target (default 24).
    pub hermite_nodes: usize,
    /// Gauss nodes for the χ²_{d−1} transverse noise (default 16).
    pub chi_square_nodes: usize,
}

impl Default for DiscreteOptions {
    fn default() -> Self {
        DiscreteOptions {
            grid_spacing: 0.01,
            max_grid_points: 20_001,
            hermite_nodes: 24,
            chi_square_nodes: 16,
        }
    }
}

/// A cubic spline on the uniform grid `x_j = j·h`, clamped with slope 0 at 0 (the
/// functions here are even in ρ) and a one-sided difference slope at the end, linear
/// beyond.
struct Spline {
    h: f64,
    y: Vec<f64>,
    m: Vec<f64>,
    end_slope: f64,
}

impl Spline {
    fn new(h: f64, y: Vec<f64>) -> Spline {
        let n = y.len();
        let end_slope = (3.0 * y[n - 1] - 4.0 * y[n - 2] + y[n - 3]) / (2.0 * h);
        // Tridiagonal system for the second derivatives m.
        let mut diag = vec![4.0; n];
        let mut rhs = vec![0.0; n];
        diag[0] = 2.0;
        diag[n - 1] = 2.0;
        rhs[0] = 6.0 / h * ((y[1] - y[0]) / h);
        rhs[n - 1] = 6.0 / h * (end_slope - (y[n - 1] - y[n - 2]) / h);
        for j in 1..n - 1 {
            rhs[j] = 6.0 / (h * h) * (y[j + 1] - 2.0 * y[j] + y[j - 1]);
        }
        // Thomas algorithm, off-diagonals 1.
        for j in 1..n {
            let f = 1.0 / diag[j - 1];
            diag[j] -= f;
            rhs[j] -= f * rhs[j - 1];
        }
        let mut m = vec![0.0; n];
        m[n - 1] = rhs[n - 1] / diag[n - 1];
        for j in (0..n - 1).rev() {
            m[j] = (rhs[j] - m[j + 1]) / diag[j];
        }
        Spline { h, y, m, end_slope }
    }

    #[inline]
    fn eval(&self, x: f64) -> f64 {
        let n = self.y.len();
        let xmax = (n - 1) as f64 * self.h;
        if x >= xmax {
            return self.y[n - 1] + self.end_slope * (x - xmax);
        }
        let u = x / self.h;
        let j = (u as usize).min(n - 2);
        let t = u - j as f64;
        let omt = 1.0 - t;
        omt * self.y[j]
            + t * self.y[j + 1]
            + self.h * self.h / 6.0
                * ((omt * omt * omt - omt) * self.m[j] + (t * t * t - t) * self.m[j + 1])
    }
}

/// The optimum of the `N`-step Euler–Maruyama discretization of a [`ColeHopf`] problem
/// from `z0`, with [`DiscreteOptions::default`] (≲0.1% error; see
/// [`discrete_optimum_with`]).
pub fn discrete_optimum(problem: &ColeHopf, n_steps: usize, z0: &[f64]) -> Result<f64> {
    discrete_optimum_with(problem, n_steps, z0, &DiscreteOptions::default())
}

/// The optimum over all policies of the discrete problem
/// `z_{i+1} = z_i + h·b·u_i + σ√h ξ_i`, `h = T/N`, cost `Σ h(r/2)‖u_i‖² + g(z_N)`, from
/// `z0`: the best any `N`-step controller can do. Because the steps are the exact
/// solution of the SDE under controls held constant over each step, this is never
/// below the continuous value [`ColeHopf::value`]`(0, z0)`.
///
/// The optimal feedback depends only on `ρ = ‖z − x_ref‖` and pushes along the line to
/// `x_ref`, so dynamic programming runs on a grid in ρ: `V_N(ρ) = g`,
/// `V_i(ρ) = min_{a ∈ [0,ρ]} [r(ρ − a)²/(2hb²) + W_{i+1}(a)]` where `a = ρ − hbv` is the
/// distance after the control and `W(a) = E V_{i+1}(‖a e₁ + σ√h ξ‖)`,
/// `‖a e₁ + sξ‖² = (a + sξ₁)² + s²χ²_{d−1}`, by a Gauss–Hermite × Gauss–χ² product rule
/// on a cubic-spline interpolant of `V_{i+1}`. The minimum over `a` uses the
/// monotonicity of the minimizer in ρ (the cost is submodular) on the grid, then a
/// golden-section refinement. The grid covers `[0, ρ_max]` with
/// `ρ_max = √(ρ0² + σ²T(d + 10√(2d))) + 10σ√T + 2`.
///
/// Errors: a bad problem, `n_steps == 0`, a wrong-length or non-finite `z0`, bad
/// options.
pub fn discrete_optimum_with(
    problem: &ColeHopf,
    n_steps: usize,
    z0: &[f64],
    options: &DiscreteOptions,
) -> Result<f64> {
    problem.check_x(z0)?;
    if n_steps == 0 {
        return Err(Error::InvalidArgument("step count must be positive".into()));
    }
    if !(options.grid_spacing.is_finite() && options.grid_spacing > 0.0)
        || options.max_grid_points < 16
    {
        return Err(Error::InvalidArgument(
            "discrete optimum: grid spacing must be positive and at least 16 grid points allowed"
                .into(),
        ));
    }
    let d = problem.d;
    let big_t = problem.horizon;
    let h = big_t / n_steps as f64;
    let s = problem.sigma * h.sqrt();
    let qcoef = problem.r / (2.0 * h * problem.b * problem.b);
    let w = problem.weight;
    let rho0 = distance(z0, &problem.x_ref);
    let df = d as f64;
    let sig_t = problem.sigma * big_t.sqrt();
    let rho_max_req =
        (rho0 * rho0 + sig_t * sig_t * (df + 10.0 * (2.0 * df).sqrt())).sqrt() + 10.0 * sig_t + 2.0;
    let spacing = options
        .grid_spacing
        .max(rho_max_req / (options.max_grid_points - 1) as f64);
    let n = ((rho_max_req / spacing).ceil() as usize + 1).max(8);
    let grid: Vec<f64> = (0..n).map(|j| j as f64 * spacing).collect();

    // Product rule for (ξ₁, s²χ²_{d−1}).
    let herm = gauss_hermite(options.hermite_nodes)?;
    let chi = if d >= 2 {
        gauss_chi_square(d - 1, options.chi_square_nodes)?
    } else {
        GaussRule {
            nodes: vec![0.0],
            weights: vec![1.0],
        }
    };
    let mut nodes: Vec<(f64, f64, f64)> = Vec::new();
    for (x1, w1) in herm.nodes.iter().zip(&herm.weights) {
        for (v, w2) in chi.nodes.iter().zip(&chi.weights) {
            nodes.push((s * x1, s * s * v, w1 * w2));
        }
    }
    let expect = |spl: &Spline, a: f64| -> f64 {
        nodes
            .iter()
            .map(|&(sx, u, wt)| {
                let y = a + sx;
                wt * spl.eval((y * y + u).sqrt())
            })
            .sum()
    };

    let mut v: Vec<f64> = grid
        .iter()
        .map(|r| w * (0.5 * (1.0 + r * r)).ln())
        .collect();
    for _ in 1..n_steps {
        let spl = Spline::new(spacing, v);
        let wv: Vec<f64> = grid.iter().map(|&a| expect(&spl, a)).collect();
        v = bellman_min(&grid, &wv, spacing, qcoef);
        if v.iter().any(|x| !x.is_finite()) {
            return Err(Error::Numerical(
                "dynamic programming produced non-finite values".into(),
            ));
        }
    }
    // Step 0, at ρ0 only.
    let spl = Spline::new(spacing, v);
    let wv: Vec<f64> = grid.iter().map(|&a| expect(&spl, a)).collect();
    let wspl = Spline::new(spacing, wv.clone());
    let obj = |a: f64| qcoef * (rho0 - a) * (rho0 - a) + wspl.eval(a);
    let mut best_a = rho0;
    let mut best = obj(rho0);
    for (&a, &wa) in grid.iter().zip(&wv) {
        if a > rho0 {
            break;
        }
        let f = qcoef * (rho0 - a) * (rho0 - a) + wa;
        if f < best {
            best = f;
            best_a = a;
        }
    }
    let (lo, hi) = ((best_a - spacing).max(0.0), (best_a + spacing).min(rho0));
    let (_, fr) = golden_min(&obj, lo, hi);
    let out = best.min(fr);
    if !out.is_finite() {
        return Err(Error::Numerical(
            "dynamic programming produced a non-finite value".into(),
        ));
    }
    Ok(out)
}

/// Golden-section minimization of `f` on `[lo, hi]`.
fn golden_min<F: Fn(f64) -> f64>(f: &F, lo: f64, hi: f64) -> (f64, f64) {
    if hi <= lo {
        return (lo, f(lo));
    }
    let g = 0.5 * (5.0_f64.sqrt() - 1.0);
    let (mut a, mut b) = (lo, hi);
    let mut x1 = b - g * (b - a);
    let mut x2 = a + g * (b - a);
    let mut f1 = f(x1);
    let mut f2 = f(x2);
    for _ in 0..60 {
        if f1 <= f2 {
            b = x2;
            x2 = x1;
            f2 = f1;
            x1 = b - g * (b - a);
            f1 = f(x1);
        } else {
            a = x1;
            x1 = x2;
            f1 = f2;
            x2 = a + g * (b - a);
            f2 = f(x2);
        }
    }
    let mut best = (lo, f(lo));
    for (x, fx) in [(hi, f(hi)), (x1, f1), (x2, f2)] {
        if fx < best.1 {
            best = (x, fx);
        }
    }
    best
}

/// `V(ρ_j) = min_{a ∈ [0, ρ_j]} q(ρ_j − a)² + W(a)` on the grid: the grid argmin by
/// divide and conquer over the monotone minimizer, refined by golden section on the
/// spline of `W`.
fn bellman_min(grid: &[f64], wv: &[f64], spacing: f64, qcoef: f64) -> Vec<f64> {
    let n = grid.len();
    let mut arg = vec![0usize; n];
    // Explicit stack instead of recursion: (jlo, jhi, mlo, mhi), inclusive.
    let mut stack = vec![(0usize, n - 1, 0usize, n - 1)];
    while let Some((jlo, jhi, mlo, mhi)) = stack.pop() {
        let mid = (jlo + jhi) / 2;
        let rho = grid[mid];
        let (mut best_m, mut best) = (mlo, f64::INFINITY);
        for m in mlo..=mhi.min(mid) {
            let f = qcoef * (rho - grid[m]) * (rho - grid[m]) + wv[m];
            if f < best {
                best = f;
                best_m = m;
            }
        }
        arg[mid] = best_m;
        if mid > jlo {
            stack.push((jlo, mid - 1, mlo, best_m));
        }
        if mid < jhi {
            stack.push((mid + 1, jhi, best_m, mhi));
        }
    }
    let wspl = Spline::new(spacing, wv.to_vec());
    grid.iter()
        .zip(&arg)
        .map(|(&rho, &m)| {
            let grid_val = qcoef * (rho - grid[m]) * (rho - grid[m]) + wv[m];
            let lo = if m > 0 { grid[m - 1] } else { 0.0 };
            let hi = (grid[m] + spacing).min(rho);
            let obj = |a: f64| qcoef * (rho - a) * (rho - a) + wspl.eval(a);
            let (_, fr) = golden_min(&obj, lo, hi.max(lo));
            grid_val.min(fr)
        })
        .collect()
}

// ---------------------------------------------------------------------------------
// Quadcopter (Onken et al. 2022; NeuralSOC).
// ---------------------------------------------------------------------------------

/// Mass `m` of the quadcopter of Onken et al. (2022) and NeuralSOC.
pub const QUADCOPTER_MASS: f64 = 1.0;
/// Gravity `g` of the quadcopter problem.
pub const QUADCOPTER_GRAVITY: f64 = 9.81;

/// The drift `a(z)` of the quadcopter `ż = a(z) + B(z)u` (mass 1, gravity 9.81), state
/// `z = (x, y, z, ψ, θ, φ, vx, vy, vz, vψ, vθ, vφ)`: `a = (v, (vψ, vθ, vφ), 0, 0, −g,
/// 0, 0, 0)`.
pub fn quadcopter_drift(z: &[f64; 12]) -> [f64; 12] {
    drift_with(z, QUADCOPTER_GRAVITY)
}

fn drift_with(z: &[f64; 12], gravity: f64) -> [f64; 12] {
    let mut a = [0.0; 12];
    a[..6].copy_from_slice(&z[6..12]);
    a[8] = -gravity;
    a
}

/// The input matrix `B(z)` (12×4, rows = state, columns = controls `(u, τψ, τθ, τφ)`)
/// of the quadcopter (mass 1): thrust enters the linear accelerations through
/// `(sin ψ sin φ + cos ψ sin θ cos φ, −cos ψ sin φ + sin ψ sin θ cos φ, cos θ cos φ)/m`
/// (rows 6, 7, 8), the torques are the angular accelerations (rows 9, 10, 11).
pub fn quadcopter_input_matrix(z: &[f64; 12]) -> [[f64; 4]; 12] {
    input_matrix_with(z, QUADCOPTER_MASS)
}

fn input_matrix_with(z: &[f64; 12], mass: f64) -> [[f64; 4]; 12] {
    let (sps, cps) = z[3].sin_cos();
    let (sth, cth) = z[4].sin_cos();
    let (sph, cph) = z[5].sin_cos();
    let mut b = [[0.0; 4]; 12];
    b[6][0] = (sps * sph + cps * sth * cph) / mass;
    b[7][0] = (-cps * sph + sps * sth * cph) / mass;
    b[8][0] = cth * cph / mass;
    b[9][1] = 1.0;
    b[10][2] = 1.0;
    b[11][3] = 1.0;
    b
}

/// The quadcopter problem of the NeuralSOC issue (settings of the original code's
/// `QuadcopterProblem`): `dz = (a(z) + B(z)u)ds + σ dW` on all 12 components,
/// `L = 2 + ‖u‖²` (so `R = 2I`, `u* = −½Bᵀ∇Φ`), `g = w‖z − z_target‖²`.
#[derive(Clone, Debug, PartialEq)]
pub struct Quadcopter {
    /// Mass `m`.
    pub mass: f64,
    /// Gravity.
    pub gravity: f64,
    /// Noise level σ (on all 12 components).
    pub sigma: f64,
    /// Horizon `T`.
    pub horizon: f64,
    /// Terminal weight `w` in `g = w‖z − z_target‖²`.
    pub terminal_weight: f64,
    /// The constant in the running cost `L = offset + ‖u‖²`.
    pub running_offset: f64,
    /// Start state.
    pub start: [f64; 12],
    /// Target state.
    pub target: [f64; 12],
}

impl Quadcopter {
    /// The issue's settings: `m = 1`, `g = 9.81`, `σ = 0.2`, `T = 1`, `w = 2500`,
    /// `L = 2 + ‖u‖²`, from `(−1.5, −1.5, −1.5, 0, …)` to `(2, 2, 2, 0, …)`. (The
    /// original code draws training starts as `(−1.5, −1.5, −1.5) + N(0, I₃)` in
    /// position.)
    pub fn neural_soc() -> Quadcopter {
        let mut start = [0.0; 12];
        let mut target = [0.0; 12];
        start[..3].copy_from_slice(&[-1.5; 3]);
        target[..3].copy_from_slice(&[2.0; 3]);
        Quadcopter {
            mass: QUADCOPTER_MASS,
            gravity: QUADCOPTER_GRAVITY,
            sigma: 0.2,
            horizon: 1.0,
            terminal_weight: 2500.0,
            running_offset: 2.0,
            start,
            target,
        }
    }

    /// `a(z)` with this mass and gravity.
    pub fn drift(&self, z: &[f64; 12]) -> [f64; 12] {
        drift_with(z, self.gravity)
    }

    /// `B(z)` with this mass.
    pub fn input_matrix(&self, z: &[f64; 12]) -> [[f64; 4]; 12] {
        input_matrix_with(z, self.mass)
    }

    /// `f(z, u) = a(z) + B(z)u`.
    pub fn dynamics(&self, z: &[f64; 12], u: &[f64; 4]) -> [f64; 12] {
        let mut f = self.drift(z);
        let b = self.input_matrix(z);
        for (fi, row) in f.iter_mut().zip(&b) {
            *fi += row.iter().zip(u).map(|(p, q)| p * q).sum::<f64>();
        }
        f
    }

    /// `L(u) = offset + ‖u‖²`.
    pub fn running_cost(&self, u: &[f64; 4]) -> f64 {
        self.running_offset + u.iter().map(|x| x * x).sum::<f64>()
    }

    /// `g(z) = w‖z − z_target‖²`.
    pub fn terminal_cost(&self, z: &[f64; 12]) -> f64 {
        self.terminal_weight * distance(z, &self.target).powi(2)
    }

    /// `∇g(z) = 2w(z − z_target)`.
    pub fn terminal_gradient(&self, z: &[f64; 12]) -> [f64; 12] {
        let mut g = [0.0; 12];
        for (i, gi) in g.iter_mut().enumerate() {
            *gi = 2.0 * self.terminal_weight * (z[i] - self.target[i]);
        }
        g
    }

    /// The maximizer of `H(z, −∇Φ, u) = −∇Φᵀf − L`: `u* = −½B(z)ᵀ∇Φ`.
    pub fn optimal_control(&self, z: &[f64; 12], grad_phi: &[f64; 12]) -> [f64; 4] {
        let b = self.input_matrix(z);
        let mut u = [0.0; 4];
        for (row, g) in b.iter().zip(grad_phi) {
            for (uj, bij) in u.iter_mut().zip(row) {
                *uj -= 0.5 * bij * g;
            }
        }
        u
    }
}

// ---------------------------------------------------------------------------------
// Closed-loop Monte Carlo.
// ---------------------------------------------------------------------------------

/// A control problem `dz = f(t,z,u)ds + σ(t,z)dW`, cost `E[∫L ds + g(z_T)]`, in plain
/// `f64` for [`closed_loop_cost`] (the training loop's
/// [`ControlProblem`](crate::soc::ControlProblem) records the same on an autodiff
/// graph). Slices have the documented lengths (implementations check).
pub trait SimulationProblem {
    /// State dimension.
    fn state_dim(&self) -> usize;
    /// Control dimension.
    fn control_dim(&self) -> usize;
    /// Dimension of the Brownian motion `W`.
    fn noise_dim(&self) -> usize;
    /// The horizon `T`.
    fn horizon(&self) -> f64;
    /// `out = f(t, z, u)`.
    fn dynamics(&self, t: f64, z: &[f64], u: &[f64], out: &mut [f64]) -> Result<()>;
    /// `out = σ(t, z)·dw` (`dw` of length [`noise_dim`](SimulationProblem::noise_dim)).
    fn diffusion(&self, t: f64, z: &[f64], dw: &[f64], out: &mut [f64]) -> Result<()>;
    /// `L(t, z, u)`.
    fn running_cost(&self, t: f64, z: &[f64], u: &[f64]) -> Result<f64>;
    /// `g(z)`.
    fn terminal_cost(&self, z: &[f64]) -> Result<f64>;
}

impl SimulationProblem for Lqr {
    fn state_dim(&self) -> usize {
        self.d
    }
    fn control_dim(&self) -> usize {
        self.k
    }
    fn noise_dim(&self) -> usize {
        self.d
    }
    fn horizon(&self) -> f64 {
        self.horizon
    }
    fn dynamics(&self, _t: f64, z: &[f64], u: &[f64], out: &mut [f64]) -> Result<()> {
        check_len("LQR state", z.len(), self.d)?;
        check_len("LQR control", u.len(), self.k)?;
        check_len("LQR output", out.len(), self.d)?;
        let az = matvec(&self.a, z, self.d, self.d);
        let bu = matvec(&self.b, u, self.d, self.k);
        for (o, (p, q)) in out.iter_mut().zip(az.iter().zip(&bu)) {
            *o = p + q;
        }
        Ok(())
    }
    fn diffusion(&self, _t: f64, _z: &[f64], dw: &[f64], out: &mut [f64]) -> Result<()> {
        check_len("LQR noise", dw.len(), self.d)?;
        check_len("LQR output", out.len(), self.d)?;
        match &self.sigma {
            Diffusion::Scalar(s) => out.iter_mut().zip(dw).for_each(|(o, w)| *o = s * w),
            Diffusion::Matrix(m) => {
                check_len("LQR sigma", m.len(), self.d * self.d)?;
                out.copy_from_slice(&matvec(m, dw, self.d, self.d));
            }
        }
        Ok(())
    }
    fn running_cost(&self, _t: f64, z: &[f64], u: &[f64]) -> Result<f64> {
        check_len("LQR state", z.len(), self.d)?;
        check_len("LQR control", u.len(), self.k)?;
        let ru = matvec(&self.r, u, self.k, self.k);
        let qz = matvec(&self.q, z, self.d, self.d);
        Ok(0.5 * ru.iter().zip(u).map(|(a, b)| a * b).sum::<f64>()
            + 0.5 * qz.iter().zip(z).map(|(a, b)| a * b).sum::<f64>())
    }
    fn terminal_cost(&self, z: &[f64]) -> Result<f64> {
        check_len("LQR state", z.len(), self.d)?;
        let qz = matvec(&self.q_terminal, z, self.d, self.d);
        Ok(0.5 * qz.iter().zip(z).map(|(a, b)| a * b).sum::<f64>())
    }
}

impl SimulationProblem for ColeHopf {
    fn state_dim(&self) -> usize {
        self.d
    }
    fn control_dim(&self) -> usize {
        self.d
    }
    fn noise_dim(&self) -> usize {
        self.d
    }
    fn horizon(&self) -> f64 {
        self.horizon
    }
    fn dynamics(&self, _t: f64, _z: &[f64], u: &[f64], out: &mut [f64]) -> Result<()> {
        check_len("Cole–Hopf control", u.len(), self.d)?;
        check_len("Cole–Hopf output", out.len(), self.d)?;
        out.iter_mut().zip(u).for_each(|(o, x)| *o = self.b * x);
        Ok(())
    }
    fn diffusion(&self, _t: f64, _z: &[f64], dw: &[f64], out: &mut [f64]) -> Result<()> {
        check_len("Cole–Hopf noise", dw.len(), self.d)?;
        check_len("Cole–Hopf output", out.len(), self.d)?;
        out.iter_mut()
            .zip(dw)
            .for_each(|(o, x)| *o = self.sigma * x);
        Ok(())
    }
    fn running_cost(&self, _t: f64, _z: &[f64], u: &[f64]) -> Result<f64> {
        check_len("Cole–Hopf control", u.len(), self.d)?;
        Ok(0.5 * self.r * u.iter().map(|x| x * x).sum::<f64>())
    }
    fn terminal_cost(&self, z: &[f64]) -> Result<f64> {
        self.terminal(z)
    }
}

fn as12(z: &[f64], what: &'static str) -> Result<[f64; 12]> {
    check_len(what, z.len(), 12)?;
    let mut a = [0.0; 12];
    a.copy_from_slice(z);
    Ok(a)
}

impl SimulationProblem for Quadcopter {
    fn state_dim(&self) -> usize {
        12
    }
    fn control_dim(&self) -> usize {
        4
    }
    fn noise_dim(&self) -> usize {
        12
    }
    fn horizon(&self) -> f64 {
        self.horizon
    }
    fn dynamics(&self, _t: f64, z: &[f64], u: &[f64], out: &mut [f64]) -> Result<()> {
        let z = as12(z, "quadcopter state")?;
        check_len("quadcopter control", u.len(), 4)?;
        check_len("quadcopter output", out.len(), 12)?;
        let u = [u[0], u[1], u[2], u[3]];
        out.copy_from_slice(&Quadcopter::dynamics(self, &z, &u));
        Ok(())
    }
    fn diffusion(&self, _t: f64, _z: &[f64], dw: &[f64], out: &mut [f64]) -> Result<()> {
        check_len("quadcopter noise", dw.len(), 12)?;
        check_len("quadcopter output", out.len(), 12)?;
        out.iter_mut()
            .zip(dw)
            .for_each(|(o, x)| *o = self.sigma * x);
        Ok(())
    }
    fn running_cost(&self, _t: f64, _z: &[f64], u: &[f64]) -> Result<f64> {
        check_len("quadcopter control", u.len(), 4)?;
        Ok(Quadcopter::running_cost(self, &[u[0], u[1], u[2], u[3]]))
    }
    fn terminal_cost(&self, z: &[f64]) -> Result<f64> {
        Ok(Quadcopter::terminal_cost(
            self,
            &as12(z, "quadcopter state")?,
        ))
    }
}

/// A Monte-Carlo estimate: the sample mean and its standard error.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CostEstimate {
    /// Sample mean of the path costs.
    pub mean: f64,
    /// Standard error of the mean (sample standard deviation / √paths).
    pub std_err: f64,
    /// Number of paths.
    pub paths: usize,
}

/// The cost of the feedback `policy(t, z, u_out)` on `problem` from `z0`, by `n_paths`
/// Euler–Maruyama roll-outs with `n_steps` steps of `h = T/n_steps`:
/// `z_{i+1} = z_i + h f(t_i, z_i, u_i) + σ(t_i, z_i)√h ξ_i`,
/// cost `Σ h L(t_i, z_i, u_i) + g(z_N)`. Path `p`, step `i` uses the normals
/// [`Brownian::new(seed)`](Brownian)`.normals(p, i, ·)`, so results are reproducible.
///
/// Errors: `n_steps == 0`, `n_paths < 2`, wrong lengths, a non-finite cost, or any
/// error of the problem or the policy.
pub fn closed_loop_cost<P, F>(
    problem: &P,
    z0: &[f64],
    mut policy: F,
    n_steps: usize,
    n_paths: usize,
    seed: u64,
) -> Result<CostEstimate>
where
    P: SimulationProblem + ?Sized,
    F: FnMut(f64, &[f64], &mut [f64]) -> Result<()>,
{
    let (d, k, m) = (
        problem.state_dim(),
        problem.control_dim(),
        problem.noise_dim(),
    );
    check_len("initial state", z0.len(), d)?;
    check_finite("initial state", z0)?;
    if n_steps == 0 || n_paths < 2 {
        return Err(Error::InvalidArgument(
            "closed-loop cost needs at least 1 step and 2 paths".into(),
        ));
    }
    let h = problem.horizon() / n_steps as f64;
    let sqh = h.sqrt();
    let gen = Brownian::new(seed);
    let (mut z, mut u, mut f, mut xi, mut noise) = (
        vec![0.0; d],
        vec![0.0; k],
        vec![0.0; d],
        vec![0.0; m],
        vec![0.0; d],
    );
    let (mut sum, mut sum2) = (0.0, 0.0);
    for p in 0..n_paths {
        z.copy_from_slice(z0);
        let mut cost = 0.0;
        for i in 0..n_steps {
            let t = i as f64 * h;
            policy(t, &z, &mut u)?;
            cost += h * problem.running_cost(t, &z, &u)?;
            problem.dynamics(t, &z, &u, &mut f)?;
            gen.normals(p as u64, i as u64, &mut xi)?;
            problem.diffusion(t, &z, &xi, &mut noise)?;
            for ((zj, fj), nj) in z.iter_mut().zip(&f).zip(&noise) {
                *zj += h * fj + sqh * nj;
            }
        }
        cost += problem.terminal_cost(&z)?;
        if !cost.is_finite() {
            return Err(Error::Numerical(format!("path {p} has a non-finite cost")));
        }
        sum += cost;
        sum2 += cost * cost;
    }
    let nf = n_paths as f64;
    let mean = sum / nf;
    let var = ((sum2 - nf * mean * mean) / (nf - 1.0)).max(0.0);
    Ok(CostEstimate {
        mean,
        std_err: (var / nf).sqrt(),
        paths: n_paths,
    })
}
