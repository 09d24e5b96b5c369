//! VP-SDE sampler tests (MATH.md §4) against closed forms.
//!
//! For Gaussian data N(m, s²I) the forward marginals are Gaussian at every t:
//! x_t ~ N(m α_t, v_t I) with α_t = e^{−½B(t)}, v_t = s²α_t² + 1 − α_t², so the exact
//! score is −(x − mα_t)/v_t and both sampling dynamics are linear:
//!
//! - the probability-flow ODE maps each prior draw z = x(1) to
//!   x(ε) = mα_ε + √(v_ε/v_1)(z − mα_1) exactly, with log-density
//!   log N(z) − ½d ln(v_ε/v_1);
//! - the reverse SDE moves the mean offset δ = μ − mα and the variance offset
//!   e = P − v by δ_ε = δ_1 ρ, e_ε = e_1 ρ², ρ = (v_ε/v_1)(α_1/α_ε), starting from the
//!   prior N(0, I) (δ_1 = −mα_1, e_1 = 1 − v_1); its Euler–Maruyama moments follow the
//!   scheme's own linear recursion exactly.

// Index loops read several arrays in step, as the formulas are written.
#![allow(clippy::needless_range_loop)]

use std::sync::Arc;

use socflow_runtime::artifact::{Artifact, ModelKind, Provenance, StorageDtype, VPSDE_VERSION};
use socflow_runtime::field::Field;
use socflow_runtime::model::Model;
use socflow_runtime::nn::{Activation, MlpParams};
use socflow_runtime::ode::{OdeOptions, OdeSolver};
use socflow_runtime::sde::{SdeOptions, SdeScheme};
use socflow_runtime::vpsde::{ScoreOutput, VpDynamics, VpSampling, VpSde, VpSdeField, VpSdeModel};
use socflow_runtime::Error;

const LN_2PI: f64 = 1.837_877_066_409_345_3;

/// The exact score (or noise) of the VP-SDE marginals of N(m, s²I).
struct GaussianScore {
    m: Vec<f64>,
    s2: f64,
    sde: VpSde,
}

impl GaussianScore {
    fn var(&self, t: f64) -> f64 {
        let a = self.sde.alpha(t);
        self.s2 * a * a + 1.0 - a * a
    }
    /// net = k·(x − mα)/v with k = −1 (score) or σ (noise = −σ·score).
    fn factor(&self, t: f64) -> f64 {
        let k = match self.sde.output {
            ScoreOutput::Score => -1.0,
            ScoreOutput::Noise => self.sde.sigma(t),
        };
        k / self.var(t)
    }
}

impl Field<f64> for GaussianScore {
    fn dim(&self) -> usize {
        self.m.len()
    }
    fn scratch_len(&self) -> usize {
        0
    }
    fn eval(&self, t: f64, x: &[f64], v: &mut [f64], _s: &mut [f64]) -> Result<(), Error> {
        let (a, k) = (self.sde.alpha(t), self.factor(t));
        for ((vi, xi), mi) in v.iter_mut().zip(x).zip(&self.m) {
            *vi = k * (xi - mi * a);
        }
        Ok(())
    }
    fn eval_div(&self, t: f64, x: &[f64], v: &mut [f64], s: &mut [f64]) -> Result<f64, Error> {
        self.eval(t, x, v, s)?;
        Ok(self.factor(t) * self.m.len() as f64)
    }
}

fn gaussian(output: ScoreOutput) -> (Arc<GaussianScore>, VpSdeModel<f64>) {
    let sde = VpSde {
        output,
        ..VpSde::default()
    };
    let g = Arc::new(GaussianScore {
        m: vec![2.0, -1.0],
        s2: 0.25,
        sde,
    });
    let model = VpSdeModel::new(g.clone() as Arc<dyn Field<f64>>, sde, 1.0, None).unwrap();
    (g, model)
}

/// Largest error of the probability-flow samples against the exact map of their prior
/// draws, and the largest log-density error.
fn pf_errors(model: &VpSdeModel<f64>, g: &GaussianScore, opts: OdeOptions<f64>) -> (f64, f64) {
    let mut so = model.sampler_options(VpSampling::ProbabilityFlow(opts), 7);
    so.log_density = true;
    let s = model.sampler(so).unwrap().sample(400, 0).unwrap();
    let d = g.m.len();
    let eps = model.sde().eps;
    let (a1, ae) = (g.sde.alpha(1.0), g.sde.alpha(eps));
    let ratio = (g.var(eps) / g.var(1.0)).sqrt();
    let prior = socflow_runtime::brownian::Brownian::new(7);
    let (mut ex, mut el) = (0.0f64, 0.0f64);
    let logp = s.log_density.unwrap();
    for i in 0..s.n {
        let mut z = vec![0.0; d];
        prior.prior_normals(i as u64, &mut z).unwrap();
        let mut lp = -0.5 * d as f64 * LN_2PI - d as f64 * ratio.ln();
        for j in 0..d {
            let want = g.m[j] * ae + ratio * (z[j] - g.m[j] * a1);
            ex = ex.max((s.x[i * d + j] - want).abs());
            lp -= 0.5 * z[j] * z[j];
        }
        el = el.max((logp[i] - lp).abs());
    }
    (ex, el)
}

/// RK4 on the probability-flow ODE converges at order 4 to the exact map of every
/// prior draw, with the exact log-density; tight adaptive Dopri5 matches it to the
/// tolerance. Score and noise outputs give the same flow.
#[test]
fn probability_flow_is_the_exact_map_at_order_four() {
    for output in [ScoreOutput::Score, ScoreOutput::Noise] {
        let (g, model) = gaussian(output);
        let errs: Vec<(f64, f64)> = [50, 100, 200]
            .iter()
            .map(|&n| pf_errors(&model, &g, OdeOptions::fixed(OdeSolver::Rk4, n)))
            .collect();
        println!("{output:?}: RK4 errors (state, log-density) at 50/100/200 steps: {errs:?}");
        for w in errs.windows(2) {
            // Order 4: halving h divides the error by ≈ 16 (at least 12 here).
            assert!(w[0].0 / w[1].0 > 12.0, "state error ratio {:?}", w);
            assert!(w[0].1 / w[1].1 > 12.0, "log-density error ratio {:?}", w);
        }
        assert!(errs[2].0 < 1e-6 && errs[2].1 < 1e-6, "{errs:?}");
        let (ex, el) = pf_errors(&model, &g, OdeOptions::adaptive(1e-9, 1e-9));
        println!("{output:?}: Dopri5 (1e-9) errors {ex:e}, {el:e}");
        assert!(ex < 1e-6 && el < 1e-6, "Dopri5 errors {ex}, {el}");
    }
}

/// Exact continuous-time moments (per coordinate) of the reverse SDE's samples from
/// the prior N(0, I): mean offset and variance offset decay by ρ and ρ².
fn reverse_sde_moments(g: &GaussianScore, eps: f64) -> (Vec<f64>, f64) {
    let (a1, ae) = (g.sde.alpha(1.0), g.sde.alpha(eps));
    let rho = g.var(eps) / g.var(1.0) * a1 / ae;
    let mean = g.m.iter().map(|m| m * ae - m * a1 * rho).collect();
    let var = g.var(eps) + (1.0 - g.var(1.0)) * rho * rho;
    (mean, var)
}

/// The Euler–Maruyama scheme's exact moments after `steps` steps from N(0, I):
/// x₊ = x + (a x + b) h + √β ΔW with a = −½β + β/v, b = −βmα/v (per coordinate).
fn em_moments(g: &GaussianScore, eps: f64, steps: usize) -> (Vec<f64>, f64) {
    let h = (eps - 1.0) / steps as f64;
    let mut mean = vec![0.0; g.m.len()];
    let mut var = 1.0;
    for k in 0..steps {
        let t = if k == 0 { 1.0 } else { 1.0 + k as f64 * h };
        let (beta, v, al) = (g.sde.beta(t), g.var(t), g.sde.alpha(t));
        let a = -0.5 * beta + beta / v;
        for (mu, m) in mean.iter_mut().zip(&g.m) {
            *mu += (a * *mu - beta * m * al / v) * h;
        }
        var = (1.0 + a * h).powi(2) * var + beta * h.abs();
    }
    (mean, var)
}

/// The reverse SDE (Euler–Maruyama) recovers the data's mean and variance: its sample
/// moments match the scheme's exact discrete moments within Monte Carlo error at
/// every step count, and those converge at order 1 to the exact continuous moments,
/// which are the data's N(m α_ε, v_ε) up to the prior's mismatch (ρ ≈ 0.002).
#[test]
fn reverse_sde_recovers_gaussian_moments_and_converges_weakly() {
    let n = 40_000;
    for output in [ScoreOutput::Score, ScoreOutput::Noise] {
        let (g, model) = gaussian(output);
        let eps = model.sde().eps;
        let (mean_c, var_c) = reverse_sde_moments(&g, eps);
        // The continuous target is the data distribution (at t = ε) to 1e-4.
        for j in 0..2 {
            assert!((mean_c[j] - g.m[j]).abs() < 1e-2, "{mean_c:?}");
        }
        assert!((var_c - g.s2).abs() < 1e-3, "{var_c}");
        let mut bias = Vec::new();
        for steps in [25, 50, 100, 200] {
            let (mean_d, var_d) = em_moments(&g, eps, steps);
            let so = model.sampler_options(
                VpSampling::ReverseSde(SdeOptions::new(SdeScheme::EulerMaruyama, steps)),
                11,
            );
            let s = model.sampler(so).unwrap().sample(n, 0).unwrap();
            for j in 0..2 {
                let xs: Vec<f64> = (0..n).map(|i| s.x[i * 2 + j]).collect();
                let mu = xs.iter().sum::<f64>() / n as f64;
                let var = xs.iter().map(|x| (x - mu).powi(2)).sum::<f64>() / (n - 1) as f64;
                let se_mu = (var_d / n as f64).sqrt();
                let se_var = var_d * (2.0 / (n - 1) as f64).sqrt();
                assert!(
                    (mu - mean_d[j]).abs() < 4.0 * se_mu,
                    "{output:?} {steps} steps coord {j}: mean {mu} vs {}",
                    mean_d[j]
                );
                assert!(
                    (var - var_d).abs() < 4.0 * se_var,
                    "{output:?} {steps} steps coord {j}: var {var} vs {var_d}"
                );
                if steps == 200 {
                    // And within Monte Carlo error (plus the scheme's bias) of the data.
                    let b = (var_d - var_c).abs();
                    assert!((var - var_c).abs() < 4.0 * se_var + b, "{var} vs {var_c}");
                    assert!((mu - mean_c[j]).abs() < 4.0 * se_mu + (mean_d[j] - mean_c[j]).abs());
                }
            }
            bias.push(
                (var_d - var_c)
                    .abs()
                    .max((mean_d[0] - mean_c[0]).abs())
                    .max((mean_d[1] - mean_c[1]).abs()),
            );
        }
        println!("{output:?}: Euler–Maruyama moment bias at 25/50/100/200 steps: {bias:?}");
        for w in bias.windows(2) {
            let r = w[0] / w[1];
            assert!(
                (1.6..2.6).contains(&r),
                "weak order 1: ratio {r} ({bias:?})"
            );
        }
    }
}

fn random_score_artifact(seed: u64) -> Artifact {
    let (d, hidden) = (2usize, vec![16usize, 16]);
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    };
    let dims = [d + 1, hidden[0], hidden[1], d];
    let weights = dims
        .windows(2)
        .map(|w| (0..w[0] * w[1]).map(|_| next()).collect())
        .collect();
    let biases = dims[1..]
        .iter()
        .map(|&n| (0..n).map(|_| 0.1 * next()).collect())
        .collect();
    let p = MlpParams {
        d,
        hidden,
        activation: Activation::Silu,
        weights,
        biases,
    };
    Artifact::mlp(p, ModelKind::Score, [0.0, 1.0], Provenance::default()).unwrap()
}

/// A score MLP's VP-SDE fields: block path equals the single-state path, the exact
/// divergence equals central differences, and the JVP is the field's derivative.
#[test]
fn mlp_fields_block_divergence_and_jvp() {
    let sde = VpSde {
        output: ScoreOutput::Noise,
        ..VpSde::default()
    };
    let model =
        Model::<f64>::from_artifact(random_score_artifact(3).with_vpsde(sde).unwrap()).unwrap();
    let vp = model.vpsde().unwrap();
    assert_eq!(*vp.sde(), sde);
    for (field, dynamics) in [
        (vp.reverse_drift(), VpDynamics::ReverseSde),
        (vp.probability_flow(), VpDynamics::ProbabilityFlow),
    ] {
        let rows = 37;
        let t: Vec<f64> = (0..rows)
            .map(|i| 0.01 + 0.98 * i as f64 / rows as f64)
            .collect();
        let x: Vec<f64> = (0..rows * 2)
            .map(|i| ((i * 7919) % 101) as f64 / 25.0 - 2.0)
            .collect();
        let mut vb = vec![0.0; rows * 2];
        let mut divb = vec![0.0; rows];
        let mut sb = vec![0.0; field.block_scratch_len(rows)];
        field
            .eval_block_div(&t, &x, &mut vb, &mut divb, &mut sb)
            .unwrap();
        let mut s = vec![0.0; field.scratch_len().max(field.jvp_scratch_len())];
        for r in 0..rows {
            let xr = &x[r * 2..r * 2 + 2];
            let mut v = [0.0; 2];
            let div = field.eval_div(t[r], xr, &mut v, &mut s).unwrap();
            for j in 0..2 {
                assert!((v[j] - vb[r * 2 + j]).abs() < 1e-10 * (1.0 + v[j].abs()));
            }
            assert!((div - divb[r]).abs() < 1e-9 * (1.0 + div.abs()));
            // Central differences of the field give its Jacobian's trace and columns.
            let h = 1e-5;
            let mut fd_div = 0.0;
            let u = [0.3, -0.7];
            let mut jv_fd = [0.0; 2];
            for k in 0..2 {
                let (mut xp, mut xm) = ([xr[0], xr[1]], [xr[0], xr[1]]);
                xp[k] += h;
                xm[k] -= h;
                let (mut vp_, mut vm) = ([0.0; 2], [0.0; 2]);
                field.eval(t[r], &xp, &mut vp_, &mut s).unwrap();
                field.eval(t[r], &xm, &mut vm, &mut s).unwrap();
                fd_div += (vp_[k] - vm[k]) / (2.0 * h);
                for j in 0..2 {
                    jv_fd[j] += u[k] * (vp_[j] - vm[j]) / (2.0 * h);
                }
            }
            let scale = 1.0 + div.abs();
            assert!(
                (div - fd_div).abs() < 1e-6 * scale,
                "{dynamics:?} row {r}: div {div} vs {fd_div}"
            );
            let (mut v2, mut jv) = ([0.0; 2], [0.0; 2]);
            field
                .eval_jvp(t[r], xr, &u, &mut v2, &mut jv, &mut s)
                .unwrap();
            for j in 0..2 {
                assert!((jv[j] - jv_fd[j]).abs() < 1e-6 * (1.0 + jv[j].abs()));
            }
        }
    }
    // A noise-predicting network has no score where σ_t = 0: an error, not a NaN.
    let pf = VpSdeField::new(vp.network().clone(), sde, VpDynamics::ProbabilityFlow).unwrap();
    let mut s0 = vec![0.0; pf.scratch_len()];
    let err = pf
        .eval(0.0, &[0.1, 0.2], &mut [0.0; 2], &mut s0)
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    assert!(VpSdeField::new(
        vp.network().clone(),
        VpSde { eps: 1.5, ..sde },
        VpDynamics::ReverseSde
    )
    .is_err());
    // The reverse drift and the probability flow differ by ½β s: f_sde − 2 f_pf = ½βx.
    let (t, x) = (0.4, [0.5, -1.5]);
    let mut s = vec![0.0; vp.reverse_drift().scratch_len()];
    let (mut a, mut b) = ([0.0; 2], [0.0; 2]);
    vp.reverse_drift().eval(t, &x, &mut a, &mut s).unwrap();
    vp.probability_flow().eval(t, &x, &mut b, &mut s).unwrap();
    for j in 0..2 {
        let want = 0.5 * sde.beta(t) * x[j];
        assert!((a[j] - 2.0 * b[j] - want).abs() < 1e-12 * (1.0 + want.abs()));
    }
}

/// The card's `vpsde` entry: written at version 3 and read back; a score file without
/// one (version 1) still loads with the default schedule; the entry is refused on
/// other kinds, at older versions and with bad values; only score models have a
/// VP-SDE.
#[test]
fn card_entry_round_trips_and_old_files_load() {
    let plain = random_score_artifact(5);
    let bytes = plain.to_bytes(StorageDtype::F32).unwrap();
    let back = Artifact::from_bytes(&bytes).unwrap();
    assert_eq!(back.card.format_version, 1);
    assert_eq!(back.card.vpsde, None);
    assert_eq!(back.vpsde(), Some(VpSde::default()));
    let m = Model::<f32>::from_bytes(&bytes).unwrap();
    assert_eq!(*m.vpsde().unwrap().sde(), VpSde::default());
    assert!(m.field().is_err());

    let sde = VpSde {
        beta_min: 0.05,
        beta_max: 12.5,
        eps: 1e-4,
        output: ScoreOutput::Noise,
    };
    let a = plain.clone().with_vpsde(sde).unwrap();
    assert_eq!(a.card.format_version, VPSDE_VERSION);
    let back = Artifact::from_bytes(&a.to_bytes(StorageDtype::F64).unwrap()).unwrap();
    assert_eq!(back.card.vpsde, Some(sde));
    assert!(back.describe().contains("VP-SDE"));

    // Bad values and wrong kinds are refused.
    let bad = VpSde {
        eps: 0.0,
        ..VpSde::default()
    };
    assert!(matches!(
        plain.clone().with_vpsde(bad),
        Err(Error::InvalidArgument(_))
    ));
    let bad = VpSde {
        beta_max: -1.0,
        ..VpSde::default()
    };
    assert!(plain.clone().with_vpsde(bad).is_err());
    let mut velocity = plain.clone();
    velocity.card.kind = ModelKind::Velocity;
    assert!(velocity.clone().with_vpsde(VpSde::default()).is_err());
    assert!(Model::<f64>::from_artifact(velocity)
        .unwrap()
        .vpsde()
        .is_err());
    let mut old = a.clone();
    old.card.format_version = 2;
    assert!(old.validate().is_err());

    // A file whose card has a vpsde entry at version 2 is malformed.
    let bytes = a.to_bytes(StorageDtype::F64).unwrap();
    let mut edited = bytes.clone();
    for (from, to) in [
        (
            &b"\"format_version\":\"3\""[..],
            &b"\"format_version\":\"2\""[..],
        ),
        (
            &b"\\\"format_version\\\":3"[..],
            &b"\\\"format_version\\\":2"[..],
        ),
    ] {
        let at = edited
            .windows(from.len())
            .position(|w| w == from)
            .expect("the version is in the header");
        edited[at..at + to.len()].copy_from_slice(to);
    }
    let err = Artifact::from_bytes(&edited).unwrap_err();
    assert!(
        matches!(&err, Error::Format(m) if m.contains("vpsde")),
        "{err}"
    );
}

/// A sampler built from a model file draws the same samples for any thread count, and
/// refuses log-densities on the reverse SDE.
#[test]
fn model_samplers_are_reproducible() {
    let model = Model::<f32>::from_artifact(
        random_score_artifact(9)
            .with_vpsde(VpSde {
                output: ScoreOutput::Noise,
                ..VpSde::default()
            })
            .unwrap(),
    )
    .unwrap();
    let vp = model.vpsde().unwrap();
    for how in [
        VpSampling::ReverseSde(SdeOptions::new(SdeScheme::EulerMaruyama, 50)),
        VpSampling::ProbabilityFlow(OdeOptions::fixed(OdeSolver::Rk4, 20)),
    ] {
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let mut so = vp.sampler_options(how, 4);
                so.block_rows = 16;
                let s = vp.sampler(so).unwrap().sample(100, 0).unwrap();
                s.x.iter().map(|v| v.to_bits()).collect::<Vec<u32>>()
            })
        };
        assert_eq!(run(1), run(3));
    }
    let mut so = vp.sampler_options(
        VpSampling::ReverseSde(SdeOptions::new(SdeScheme::EulerMaruyama, 10)),
        0,
    );
    so.log_density = true;
    assert!(matches!(vp.sampler(so), Err(Error::Unsupported(_))));
}
