//! Log-likelihoods of score models (VP-SDE, MATH.md §4) through their probability-flow
//! ODE, against closed forms.
//!
//! For Gaussian data N(m, Σ) with Σ = R diag(s²) Rᵀ the forward marginals are
//! p_t = N(α_t m, Σ_t), Σ_t = R diag(v(t)) Rᵀ, v_j(t) = α_t² s_j² + σ_t², so the exact
//! score is −Σ_t⁻¹(x − α_t m) and every Σ_t shares the eigenvectors R. The
//! probability-flow ODE then maps x at ε to
//!
//! ```text
//! z = α₁ m + R diag(√(v(1)/v(ε))) Rᵀ (x − α_ε m)   (at t_prior = 1)
//! log p_flow(x) = log N(z; 0, I) + ½ Σ_j ln(v_j(1)/v_j(ε))
//! ```
//!
//! which is the true log N(x; α_ε m, Σ_ε) plus the prior's mismatch
//! log N(z; 0, I) − log N(z; α₁ m, Σ₁) ≈ α₁ mᵀz (a few 10⁻² for the default schedule,
//! whose α₁ = e^{−5.025} ≈ 0.0066; below 10⁻⁸ for β_max = 80). The divergence's time integral is the matrix
//! M = R diag(½ ln(v(1)/v(ε))) Rᵀ, so a Hutchinson estimate with probes ε_k is
//! exactly (1/K) Σ_k ε_kᵀ M ε_k: its mean is tr M and its variance 2 Σ_{i≠j} M_ij² / K
//! (Rademacher) or 2 tr(M²) / K (Gaussian).
//!
//! The exact score is a custom [`Field`] (value, divergence and JVP in closed form)
//! wrapped in a [`VpSdeModel`], evaluated through [`flow_log_likelihood`] of its
//! [`DensityFlow`]. A score MLP written to a model file is checked through
//! [`log_likelihood`]: it inverts the runtime sampler's probability-flow
//! log-densities, and Hutchinson agrees with the exact divergence within its standard
//! error.

use std::sync::Arc;

use crate::common::{hutchinson_agreement, moments};
use socflow_runtime::artifact::{Artifact, ModelKind, Normalization, Provenance, StorageDtype};
use socflow_runtime::field::Field;
use socflow_runtime::model::Model;
use socflow_runtime::nn::{Activation, MlpParams};
use socflow_runtime::ode::{OdeOptions, OdeSolver};
use socflow_runtime::vpsde::{ScoreOutput, VpSampling, VpSde, VpSdeModel};
use socflow_runtime::Error as RtError;
use socflow_testkit::Rng;
use socflow_trainer::cnf::Noise;
use socflow_trainer::likelihood::{
    flow_log_likelihood, log_likelihood, DensityFlow, Hutchinson, LikelihoodOptions,
};
use socflow_trainer::Error;

const LN_2PI: f64 = 1.837_877_066_409_345_3;

/// The exact score (or noise) of the VP-SDE marginals of N(m, R diag(s²) Rᵀ), d = 2.
struct GaussianScore {
    m: [f64; 2],
    s2: [f64; 2],
    /// Rotation angle of the eigenvectors (0: diagonal covariance).
    angle: f64,
    sde: VpSde,
}

impl GaussianScore {
    /// Eigenvalues v_j(t) = α_t² s_j² + σ_t² of Σ_t.
    fn var(&self, t: f64) -> [f64; 2] {
        let (a, s) = (self.sde.alpha(t), self.sde.sigma(t));
        self.s2.map(|s2| a * a * s2 + s * s)
    }

    /// R diag(w) Rᵀ u.
    fn apply(&self, w: [f64; 2], u: &[f64]) -> [f64; 2] {
        let (c, s) = (self.angle.cos(), self.angle.sin());
        // Rᵀu, scaled, then R.
        let y = [c * u[0] + s * u[1], -s * u[0] + c * u[1]];
        let y = [w[0] * y[0], w[1] * y[1]];
        [c * y[0] - s * y[1], s * y[0] + c * y[1]]
    }

    /// net = k(t) Σ_t⁻¹ (x − α_t m)·: the eigenvalues k/v_j of its Jacobian, with
    /// k = −1 (score) or σ_t (noise = −σ_t·score).
    fn jacobian_eigenvalues(&self, t: f64) -> [f64; 2] {
        let k = match self.sde.output {
            ScoreOutput::Score => -1.0,
            ScoreOutput::Noise => self.sde.sigma(t),
        };
        self.var(t).map(|v| k / v)
    }

    /// The probability-flow log-density of x (model coordinates), the true
    /// log N(x; α_ε m, Σ_ε), and the prior's mismatch log N(z; 0, I) − log N(z; α₁ m, Σ₁)
    /// at the flow's image z of x, per the module documentation.
    fn log_densities(&self, x: &[f64]) -> (f64, f64, f64) {
        let eps = self.sde.eps;
        let (ve, v1) = (self.var(eps), self.var(1.0));
        let (ae, a1) = (self.sde.alpha(eps), self.sde.alpha(1.0));
        let centred = [x[0] - ae * self.m[0], x[1] - ae * self.m[1]];
        let ratio = [(v1[0] / ve[0]).sqrt(), (v1[1] / ve[1]).sqrt()];
        let mapped = self.apply(ratio, &centred);
        let z = [a1 * self.m[0] + mapped[0], a1 * self.m[1] + mapped[1]];
        let log_n01 = -0.5 * (z[0] * z[0] + z[1] * z[1]) - LN_2PI;
        let flow = log_n01 + 0.5 * ((v1[0] / ve[0]).ln() + (v1[1] / ve[1]).ln());
        let inv = self.apply([1.0 / ve[0], 1.0 / ve[1]], &centred);
        let quad = centred[0] * inv[0] + centred[1] * inv[1];
        let truth = -0.5 * quad - LN_2PI - 0.5 * (ve[0].ln() + ve[1].ln());
        let zc = [z[0] - a1 * self.m[0], z[1] - a1 * self.m[1]];
        let inv1 = self.apply([1.0 / v1[0], 1.0 / v1[1]], &zc);
        let log_p1 =
            -0.5 * (zc[0] * inv1[0] + zc[1] * inv1[1]) - LN_2PI - 0.5 * (v1[0].ln() + v1[1].ln());
        (flow, truth, log_n01 - log_p1)
    }

    /// M = ∫_ε^1 ∂f/∂x dt = R diag(½ ln(v(1)/v(ε))) Rᵀ (row-major 2 × 2).
    fn divergence_integral(&self) -> [f64; 4] {
        let (ve, v1) = (self.var(self.sde.eps), self.var(1.0));
        let mu = [0.5 * (v1[0] / ve[0]).ln(), 0.5 * (v1[1] / ve[1]).ln()];
        let c0 = self.apply(mu, &[1.0, 0.0]);
        let c1 = self.apply(mu, &[0.0, 1.0]);
        [c0[0], c1[0], c0[1], c1[1]]
    }
}

impl Field<f64> for GaussianScore {
    fn dim(&self) -> usize {
        2
    }
    fn scratch_len(&self) -> usize {
        0
    }
    fn eval(&self, t: f64, x: &[f64], v: &mut [f64], _s: &mut [f64]) -> Result<(), RtError> {
        let a = self.sde.alpha(t);
        let centred = [x[0] - a * self.m[0], x[1] - a * self.m[1]];
        v.copy_from_slice(&self.apply(self.jacobian_eigenvalues(t), &centred));
        Ok(())
    }
    fn eval_div(&self, t: f64, x: &[f64], v: &mut [f64], s: &mut [f64]) -> Result<f64, RtError> {
        self.eval(t, x, v, s)?;
        Ok(self.jacobian_eigenvalues(t).iter().sum())
    }
    fn eval_jvp(
        &self,
        t: f64,
        x: &[f64],
        dx: &[f64],
        v: &mut [f64],
        jv: &mut [f64],
        s: &mut [f64],
    ) -> Result<(), RtError> {
        self.eval(t, x, v, s)?;
        jv.copy_from_slice(&self.apply(self.jacobian_eigenvalues(t), dx));
        Ok(())
    }
}

fn gaussian(angle: f64, sde: VpSde) -> Arc<GaussianScore> {
    Arc::new(GaussianScore {
        m: [1.5, -0.5],
        s2: [0.36, 1.69],
        angle,
        sde,
    })
}

fn flow_of(g: &Arc<GaussianScore>, normalization: Option<Normalization>) -> DensityFlow<f64> {
    let vp = VpSdeModel::new(g.clone() as Arc<dyn Field<f64>>, g.sde, 1.0, normalization).unwrap();
    DensityFlow::of_vpsde(&vp).unwrap()
}

/// Points around the data's mean out to about 3 standard deviations (model
/// coordinates).
fn points(g: &GaussianScore) -> Vec<f64> {
    let offsets = [
        (0.0, 0.0),
        (0.5, -0.3),
        (-1.2, 0.8),
        (1.8, 2.5),
        (-2.0, -3.0),
        (0.1, 3.6),
    ];
    offsets
        .iter()
        .flat_map(|&(a, b)| [g.m[0] + a, g.m[1] + b])
        .collect()
}

/// RK4 and Dopri5 log-likelihoods of the exact Gaussian score equal the
/// probability-flow log-density in closed form (diagonal and rotated covariances,
/// score and noise outputs) to 1e-6, and so the true Gaussian log-density plus the
/// prior's mismatch at t = 1 (computed from p₁ = N(α₁ m, Σ₁) directly): within 1e-6 of
/// the true density outright for a schedule (β_max = 80) whose marginal at 1 is
/// N(0, I) to α₁ = e^{−20}. A normalization shifts the result by −Σ ln std.
#[test]
fn exact_gaussian_score_gives_the_gaussian_log_density() {
    let rk4 = LikelihoodOptions::new(OdeOptions::fixed(OdeSolver::Rk4, 200));
    let dopri = LikelihoodOptions::new(OdeOptions::adaptive(1e-9, 1e-9));
    for beta_max in [20.0, 80.0] {
        for output in [ScoreOutput::Score, ScoreOutput::Noise] {
            for angle in [0.0, 0.6] {
                let sde = VpSde {
                    beta_max,
                    output,
                    ..VpSde::default()
                };
                let g = gaussian(angle, sde);
                let flow = flow_of(&g, None);
                let x = points(&g);
                let n = x.len() / 2;
                let ctx = format!("beta_max {beta_max}, {output:?}, angle {angle}");
                let (mut e_rk4, mut e_dopri) = (0.0f64, 0.0f64);
                let (mut mismatch, mut e_true, mut e_shift) = (0.0f64, 0.0f64, 0.0f64);
                let lp4 = flow_log_likelihood(&flow, &x, n, &rk4).unwrap();
                let lpd = flow_log_likelihood(&flow, &x, n, &dopri).unwrap();
                for (i, xi) in x.chunks_exact(2).enumerate() {
                    let (want, truth, delta) = g.log_densities(xi);
                    e_rk4 = e_rk4.max((lp4[i] - want).abs());
                    e_dopri = e_dopri.max((lpd[i] - want).abs());
                    mismatch = mismatch.max(delta.abs());
                    e_true = e_true.max((lp4[i] - truth).abs());
                    e_shift = e_shift.max((lp4[i] - truth - delta).abs());
                }
                println!(
                    "{ctx}: |RK4 200 - flow| {e_rk4:.2e}, |Dopri5 1e-9 - flow| {e_dopri:.2e}, \
                     prior mismatch {mismatch:.2e}, |RK4 - true| {e_true:.2e}, \
                     |RK4 - true - mismatch| {e_shift:.2e}"
                );
                assert!(e_rk4 < 1e-6, "{ctx}: RK4 error {e_rk4:e}");
                assert!(e_dopri < 1e-6, "{ctx}: Dopri5 error {e_dopri:e}");
                assert!(e_shift < 1e-6, "{ctx}: RK4 vs true + mismatch {e_shift:e}");
                if beta_max == 80.0 {
                    assert!(e_true < 1e-6, "{ctx}: |RK4 - true| {e_true:e}");
                }
            }
        }
    }

    // A normalization: data = mean + std ⊙ model coordinates.
    let g = gaussian(0.6, VpSde::default());
    let norm = Normalization::new(vec![0.3, -2.0], vec![2.5, 0.4]).unwrap();
    let flow = flow_of(&g, Some(norm.clone()));
    let xm = points(&g);
    let mut xd = xm.clone();
    norm.to_data(&mut xd).unwrap();
    let lp = flow_log_likelihood(&flow, &xd, xm.len() / 2, &rk4).unwrap();
    for (i, xi) in xm.chunks_exact(2).enumerate() {
        let want = g.log_densities(xi).0 - (2.5f64.ln() + 0.4f64.ln());
        assert!(
            (lp[i] - want).abs() < 1e-6,
            "normalized point {i}: {} vs {want}",
            lp[i]
        );
    }
}

/// Hutchinson's estimate on the exact Gaussian score is (1/K) Σ ε_kᵀ M ε_k: for a
/// rotated covariance its mean over 4000 data points is the exact log-likelihood within
/// 4 standard errors and its variance the closed form within 4 standard deviations
/// (Rademacher and Gaussian probes, K = 1 and 4, RK4 and Dopri5); for a diagonal one
/// Rademacher probes are exact (εᵀMε = tr M when M is diagonal).
#[test]
fn hutchinson_on_the_exact_gaussian_score_has_the_closed_form_moments() {
    let g = gaussian(0.6, VpSde::default());
    let flow = flow_of(&g, None);
    let mm = g.divergence_integral();
    let (off2, tr2) = (
        2.0 * mm[1] * mm[1],
        mm[0] * mm[0] + mm[3] * mm[3] + 2.0 * mm[1] * mm[1],
    );
    let x0 = [g.m[0] + 0.7, g.m[1] - 1.1];
    let exact = g.log_densities(&x0).0;
    let cases = [
        (OdeOptions::fixed(OdeSolver::Rk4, 64), 4000, "RK4 64"),
        (OdeOptions::adaptive(1e-8, 1e-8), 400, "Dopri5 1e-8"),
    ];
    for (ode, n, name) in cases {
        let x: Vec<f64> = (0..n).flat_map(|_| x0).collect();
        for noise in [Noise::Rademacher, Noise::Gaussian] {
            for probes in [1usize, 4] {
                let h = Hutchinson {
                    noise,
                    ..Hutchinson::new(probes, 31 + probes as u64)
                };
                let opts = LikelihoodOptions::new(ode).with_hutchinson(h);
                let lp = flow_log_likelihood(&flow, &x, n, &opts).unwrap();
                let (mean, var, var_sd) = moments(&lp);
                let se = (var / n as f64).sqrt();
                let want_var = match noise {
                    Noise::Rademacher => 2.0 * off2,
                    Noise::Gaussian => 2.0 * tr2,
                } / probes as f64;
                println!(
                    "{name} {noise:?} K={probes}: mean {mean:.5} ± {se:.5} (exact {exact:.5}), \
                     variance {var:.5} ± {var_sd:.5} (closed form {want_var:.5})"
                );
                assert!(
                    (mean - exact).abs() < 4.0 * se,
                    "{name} {noise:?} K={probes}: mean {mean} vs {exact} (se {se})"
                );
                // With d = 2 a Rademacher estimate takes two values, tr M ± 2M₁₂, and its
                // sample variance barely varies (the fourth-moment band is ~0): allow 1%.
                let band = (4.0 * var_sd).max(0.01 * want_var);
                assert!(
                    (var - want_var).abs() < band,
                    "{name} {noise:?} K={probes}: variance {var} vs {want_var} (band {band})"
                );
                assert!(want_var > 0.01, "the probes' noise is visible: {want_var}");
            }
        }
    }
    // Diagonal covariance: every Rademacher probe gives the trace.
    let g = gaussian(0.0, VpSde::default());
    let flow = flow_of(&g, None);
    let x = points(&g);
    let n = x.len() / 2;
    let opts = LikelihoodOptions::new(OdeOptions::fixed(OdeSolver::Rk4, 200))
        .with_hutchinson(Hutchinson::new(1, 5));
    let lp = flow_log_likelihood(&flow, &x, n, &opts).unwrap();
    for (i, xi) in x.chunks_exact(2).enumerate() {
        let want = g.log_densities(xi).0;
        assert!(
            (lp[i] - want).abs() < 1e-6,
            "point {i}: {} vs {want}",
            lp[i]
        );
    }
}

/// A score MLP (noise output, with a normalization) with fixed pseudo-random weights,
/// written to a model file and loaded back in f64.
fn score_model_file(dir: &std::path::Path) -> Model<f64> {
    let (d, hidden) = (2usize, vec![24usize, 24]);
    let mut g = Rng(17);
    let dims = [d + 1, hidden[0], hidden[1], d];
    let weights = dims
        .windows(2)
        .map(|w| g.vec(w[0] * w[1], 1.0 / (w[0] as f64).sqrt()))
        .collect();
    let biases = dims[1..].iter().map(|&n| g.vec(n, 0.2)).collect();
    let p = MlpParams {
        d,
        hidden,
        activation: Activation::Silu,
        weights,
        biases,
    };
    let sde = VpSde {
        output: ScoreOutput::Noise,
        ..VpSde::default()
    };
    let path = dir.join("score.safetensors");
    Artifact::mlp(p, ModelKind::Score, [0.0, 1.0], Provenance::now("test"))
        .unwrap()
        .with_vpsde(sde)
        .unwrap()
        .with_normalization(Normalization::new(vec![0.5, -1.0], vec![2.0, 0.8]).unwrap())
        .unwrap()
        .save(&path, StorageDtype::F64)
        .unwrap();
    Model::load(&path).unwrap()
}

/// Through a score model file: [`log_likelihood`] is [`flow_log_likelihood`] of the
/// model's VP-SDE flow, and it inverts the runtime sampler: the probability-flow
/// samples' log-densities (RK4, prior → data) equal the likelihoods of those samples
/// (RK4, data → prior) to the discretization error: below 1e-6 at 400 steps, and
/// falling by more than 6 per halving of the step (100, 200, 400 steps).
#[test]
fn score_model_file_likelihood_inverts_the_sampler() {
    let dir = tempfile::tempdir().unwrap();
    let model = score_model_file(dir.path());
    let vp = model.vpsde().unwrap();
    let n = 300;
    let mut errs = Vec::new();
    for steps in [100usize, 200, 400] {
        let ode = OdeOptions::fixed(OdeSolver::Rk4, steps);
        let mut so = vp.sampler_options(VpSampling::ProbabilityFlow(ode), 3);
        so.log_density = true;
        let s = vp.sampler(so).unwrap().sample(n, 0).unwrap();
        let opts = LikelihoodOptions::new(ode);
        let lp = log_likelihood(&model, &s.x, n, &opts).unwrap();
        let direct =
            flow_log_likelihood(&DensityFlow::of_vpsde(&vp).unwrap(), &s.x, n, &opts).unwrap();
        assert_eq!(
            lp.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            direct.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        let logp = s.log_density.unwrap();
        let err = lp
            .iter()
            .zip(&logp)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        let spread = logp.iter().fold(0.0f64, |m, v| m.max((v - logp[0]).abs()));
        println!(
            "RK4 {steps}: max |likelihood − sampler log-density| {err:.3e} (spread {spread:.2})"
        );
        assert!(spread > 0.5, "the log-densities vary: {spread}");
        errs.push(err);
    }
    // Order 4 tends to 16 per halving; the noise output's 1/σ_t, steep near ε, slows the
    // approach (8.4 and 10.9 here).
    println!(
        "error ratios {:.1}, {:.1}",
        errs[0] / errs[1],
        errs[1] / errs[2]
    );
    assert!(errs[2] < 1e-6, "{errs:?}");
    assert!(errs.windows(2).all(|w| w[0] / w[1] > 6.0), "{errs:?}");
}

/// Hutchinson minus exact log-likelihoods of data points under a score model file
/// (K = 1 and 8, Rademacher and Gaussian probes, RK4 and Dopri5, f64 and f32): each
/// mean within 4
/// standard errors of zero, the K = 8 variance one eighth of the K = 1 one within 4
/// standard deviations, and the noise visible.
#[test]
fn score_model_file_hutchinson_agrees_with_exact() {
    let dir = tempfile::tempdir().unwrap();
    let model = score_model_file(dir.path());
    let x: Vec<f64> = Rng(4)
        .vec(2 * 600, 3.0)
        .chunks_exact(2)
        .flat_map(|p| [0.5 + p[0], -1.0 + 0.5 * p[1]])
        .collect();
    let cases = [
        (
            OdeOptions::fixed(OdeSolver::Rk4, 32),
            Noise::Rademacher,
            600,
            "RK4 32 Rademacher",
        ),
        (
            OdeOptions::fixed(OdeSolver::Rk4, 32),
            Noise::Gaussian,
            600,
            "RK4 32 Gaussian",
        ),
        (
            OdeOptions::adaptive(1e-6, 1e-6),
            Noise::Rademacher,
            200,
            "Dopri5 1e-6 Rademacher",
        ),
    ];
    for (ode, noise, n, name) in cases {
        hutchinson_agreement(&model, &x[..2 * n], ode, noise, 1e-4, name);
    }
    let m32 = Model::<f32>::load(dir.path().join("score.safetensors")).unwrap();
    hutchinson_agreement(
        &m32,
        &x,
        OdeOptions::fixed(OdeSolver::Rk4, 32),
        Noise::Rademacher,
        1e-4,
        "f32 RK4 32 Rademacher",
    );
}

/// A score model's density flow is its probability flow from ε to the prior's time;
/// bad flows are typed errors.
#[test]
fn density_flow_interval_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let model = score_model_file(dir.path());
    let flow = DensityFlow::of_model(&model).unwrap();
    assert_eq!(flow.interval(), (1e-3, 1.0));
    assert_eq!(flow.dim(), 2);
    assert_eq!(
        flow.normalization(),
        model.artifact().card.normalization.as_ref()
    );
    let g = gaussian(0.0, VpSde::default()) as Arc<dyn Field<f64>>;
    for (t0, t1) in [(0.5, 0.5), (f64::NAN, 1.0), (0.0, f64::INFINITY)] {
        let e = DensityFlow::new(g.clone(), t0, t1, None).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    }
    let three = Normalization::new(vec![0.0; 3], vec![1.0; 3]).unwrap();
    let e = DensityFlow::new(g, 0.0, 1.0, Some(three)).unwrap_err();
    assert!(e.to_string().contains("dimension 3"), "{e}");
}
