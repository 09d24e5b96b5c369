//! Optimize-then-discretize: the continuous adjoint, for comparison with the discrete
//! adjoint of [`Solver`](super::Solver) (MATH.md §7).
//!
//! Both solves *reverse* the forward equation: they start from the final state y(T)
//! and the cotangent a(T) = ∂ℓ/∂y(T) and integrate y, the adjoint a and the parameter
//! gradient together from t_N back to t₀ on the given grid (Chen et al. 2018 for
//! ODEs, Li et al. 2020 for SDEs), so nothing of the forward trajectory is stored and
//! the reconstructed y(t₀) is returned as a diagnostic. Each right-hand-side
//! evaluation records one small tape (the state and the parameters as leaves) and one
//! vector–Jacobian product with seed a gives aᵀ∂/∂y and aᵀ∂/∂θ; the state, adjoint
//! and gradient sums are combined outside the tape.
//!
//! Everything runs at one precision ([`ContinuousAdjoint::precision`], f64 by
//! default): this is a reference to compare the discrete adjoint against, not a
//! mixed-precision training path, and it has no dynamic scaling.

use crate::autodiff::{Backend, DType, Graph, Tensor, Var};

use super::error::{Error, Result};
use super::solver::{BrownianNoise, Rhs};
use super::terms::SdeTerms;

/// How the stochastic adjoint steps backward from t_{i+1} to t_i.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReverseScheme {
    /// Reverse stochastic Heun: a predictor from the right-hand point t_{i+1}, then the
    /// average of the right- and left-hand evaluations. Consistent with the
    /// Stratonovich integral (Li et al. 2020 integrate the adjoint SDE with such a
    /// scheme).
    Heun,
    /// Reverse Euler with every Jacobian at the right-hand point (t_{i+1}, y_{i+1}),
    /// the point the backward step starts from. Not consistent with the Stratonovich
    /// integral when the diffusion depends on the state.
    Euler,
}

/// Which continuous stochastic adjoint to integrate: the drift it uses and its
/// reverse scheme.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StochasticAdjoint {
    /// Read the terms as an Itô SDE and convert: integrate the Stratonovich drift
    /// f − ½ g ⊙ ∂g/∂y (needs [`SdeTerms::diffusion_derivative`]). `false` uses the
    /// drift as given: right for terms that already are a Stratonovich SDE, the naive
    /// error for an Itô SDE.
    pub ito_correction: bool,
    /// The reverse scheme.
    pub scheme: ReverseScheme,
}

impl StochasticAdjoint {
    /// Li et al.'s adjoint of an Itô SDE: Itô-to-Stratonovich correction, reverse
    /// stochastic Heun. Converges to the pathwise gradient as h → 0.
    pub const CORRECTED: StochasticAdjoint = StochasticAdjoint {
        ito_correction: true,
        scheme: ReverseScheme::Heun,
    };

    /// The naive adjoint of an Itô SDE (MATH.md §7): the Itô drift treated as if it
    /// were Stratonovich, stepped backward with Jacobians at the right-hand point.
    /// Biased when the diffusion depends on the state, by an amount that does not
    /// vanish as h → 0.
    pub const NAIVE_ITO: StochasticAdjoint = StochasticAdjoint {
        ito_correction: false,
        scheme: ReverseScheme::Euler,
    };
}

/// The result of a continuous adjoint solve.
pub struct ContinuousGradient<B: Backend> {
    /// a(t₀) ≈ ∂ℓ/∂y(t₀), the state's shape.
    pub y0: Tensor<B>,
    /// ∫ aᵀ∂f/∂θ dt (plus the noise term for SDEs), one per parameter in the order
    /// given, each the parameter's shape.
    pub params: Vec<Tensor<B>>,
    /// y(t₀) as the reverse solve reconstructed it (equal to the forward pass's y₀ up
    /// to the discretization error of both solves).
    pub reconstructed_y0: Tensor<B>,
}

impl<B: Backend> std::fmt::Debug for ContinuousGradient<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContinuousGradient")
            .field("y0", &self.y0.shape())
            .field("params", &self.params.len())
            .finish()
    }
}

/// Continuous-adjoint solves (optimize-then-discretize) at one precision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContinuousAdjoint {
    /// The precision of every value: state, adjoint, parameters and gradients.
    pub precision: DType,
}

impl Default for ContinuousAdjoint {
    /// f64 throughout.
    fn default() -> Self {
        ContinuousAdjoint {
            precision: DType::F64,
        }
    }
}

/// One evaluation: the value of the recorded function and its vector–Jacobian
/// product with the seed, with respect to the state and each parameter.
struct Vjp<B: Backend> {
    value: Tensor<B>,
    dy: Tensor<B>,
    dparams: Vec<Tensor<B>>,
}

/// `base + Σ αₖ·xₖ`.
fn lincomb<B: Backend>(be: &B, base: &Tensor<B>, terms: &[(f64, &Tensor<B>)]) -> Result<Tensor<B>> {
    let mut out = base.try_clone(be)?;
    for (alpha, x) in terms {
        be.axpy(out.buffer_mut(), *alpha, x.buffer())?;
    }
    Ok(out)
}

fn validate_times(times: &[f64]) -> Result<()> {
    if times.len() < 2 {
        return Err(Error::InvalidArgument(format!(
            "time grid: need at least two points, got {}",
            times.len()
        )));
    }
    for (i, w) in times.windows(2).enumerate() {
        if !(w[0].is_finite() && w[1].is_finite() && w[1] > w[0]) {
            return Err(Error::InvalidArgument(format!(
                "time grid: t[{i}] = {} and t[{}] = {} are not finite and increasing",
                w[0],
                i + 1,
                w[1]
            )));
        }
    }
    Ok(())
}

impl ContinuousAdjoint {
    /// Checks the inputs and casts them to the working precision.
    #[allow(clippy::type_complexity)]
    fn prepare<B: Backend>(
        &self,
        be: &B,
        y_final: &Tensor<B>,
        times: &[f64],
        params: &[Tensor<B>],
        a_final: &Tensor<B>,
    ) -> Result<(Tensor<B>, Tensor<B>, Vec<Tensor<B>>, Vec<Tensor<B>>)> {
        validate_times(times)?;
        if a_final.shape() != y_final.shape() {
            return Err(Error::InvalidArgument(format!(
                "terminal cotangent has shape {}, the state {}",
                a_final.shape(),
                y_final.shape()
            )));
        }
        if !a_final.all_finite(be)? {
            return Err(Error::NonFiniteCotangent {
                index: times.len() - 1,
            });
        }
        let p = self.precision;
        let y = y_final.cast(be, p)?;
        let a = a_final.cast(be, p)?;
        let params = params
            .iter()
            .map(|t| Ok(t.cast(be, p)?))
            .collect::<Result<Vec<_>>>()?;
        let gparams = params
            .iter()
            .map(|t| Ok(Tensor::zeros(be, t.rows(), t.cols(), p)?))
            .collect::<Result<Vec<_>>>()?;
        Ok((y, a, params, gparams))
    }

    /// Records `build(g, t, y, params)` on the cleared graph `g` with the state and
    /// the parameters as leaves, and pulls `seed` through it.
    fn vjp<B: Backend>(
        &self,
        g: &mut Graph<B>,
        t: f64,
        y: &Tensor<B>,
        params: &[Tensor<B>],
        seed: &Tensor<B>,
        build: impl FnOnce(&mut Graph<B>, Var, Var, &[Var]) -> Result<Var>,
    ) -> Result<Vjp<B>> {
        let p = self.precision;
        g.clear();
        let yv = g.leaf(y.try_clone(g.backend())?, true);
        let tv = g.leaf_f64(1, 1, &[t], p, false)?;
        let mut pv = Vec::with_capacity(params.len());
        for t in params {
            let c = t.try_clone(g.backend())?;
            pv.push(g.leaf(c, true));
        }
        let out = build(g, tv, yv, &pv)?;
        let (shape, dtype) = (g.shape(out)?, g.dtype(out)?);
        if shape != y.shape() || dtype != p {
            return Err(Error::InvalidArgument(format!(
                "right-hand side returned {shape} {dtype}, expected the state's shape {} \
                 at {p}",
                y.shape()
            )));
        }
        let value = g.value(out)?.try_clone(g.backend())?;
        let mut grads = g.backward_with(out, Some(seed.try_clone(g.backend())?), Some(p))?;
        let be = g.backend();
        // A leaf the function does not read gets no gradient: its product is zero.
        let mut take = |v: Var, like: &Tensor<B>| -> Result<Tensor<B>> {
            match grads.take(v) {
                Some(t) => Ok(t),
                None => Ok(Tensor::zeros(be, like.rows(), like.cols(), p)?),
            }
        };
        let dy = take(yv, y)?;
        let dparams = pv
            .iter()
            .zip(params)
            .map(|(&v, t)| take(v, t))
            .collect::<Result<Vec<_>>>()?;
        Ok(Vjp { value, dy, dparams })
    }

    /// The continuous adjoint of the ODE y' = f(t, y; θ) with a terminal loss, by RK4
    /// on the grid `times`, reversing the ODE.
    ///
    /// From y(T) = `y_final` and a(T) = `a_final` it integrates, from t_N to t₀,
    ///
    /// ```text
    /// y' = f(t, y; θ),   a' = −aᵀ∂f/∂y,   G' = −aᵀ∂f/∂θ,   G(T) = 0
    /// ```
    ///
    /// with the classical RK4 on the augmented state (each stage one tape and one
    /// vector–Jacobian product), and returns a(t₀) and G(t₀) = ∫ aᵀ∂f/∂θ dt. y is
    /// recomputed backward rather than read from a stored trajectory, so the result
    /// carries the reverse solve's error as well as the forward one's; both are
    /// O(h⁴), and the gradient approaches the discrete adjoint's at that order.
    pub fn ode<B: Backend, R: Rhs<B> + ?Sized>(
        &self,
        g: &mut Graph<B>,
        rhs: &R,
        y_final: &Tensor<B>,
        times: &[f64],
        params: &[Tensor<B>],
        a_final: &Tensor<B>,
    ) -> Result<ContinuousGradient<B>> {
        let (mut y, mut a, params, mut gp) =
            self.prepare(g.backend(), y_final, times, params, a_final)?;
        let eval = |g: &mut Graph<B>, t: f64, y: &Tensor<B>, a: &Tensor<B>| {
            self.vjp(g, t, y, &params, a, |g, t, y, p| Ok(rhs.eval(g, t, y, p)?))
        };
        for w in times.windows(2).rev() {
            let (t0, t1) = (w[0], w[1]);
            let h = t1 - t0;
            let tm = t1 - 0.5 * h;
            // dz/dt = (f, −v_y, −v_θ); a step of −h.
            let k1 = eval(g, t1, &y, &a)?;
            let be = g.backend();
            let y2 = lincomb(be, &y, &[(-0.5 * h, &k1.value)])?;
            let a2 = lincomb(be, &a, &[(0.5 * h, &k1.dy)])?;
            let k2 = eval(g, tm, &y2, &a2)?;
            let be = g.backend();
            let y3 = lincomb(be, &y, &[(-0.5 * h, &k2.value)])?;
            let a3 = lincomb(be, &a, &[(0.5 * h, &k2.dy)])?;
            let k3 = eval(g, tm, &y3, &a3)?;
            let be = g.backend();
            let y4 = lincomb(be, &y, &[(-h, &k3.value)])?;
            let a4 = lincomb(be, &a, &[(h, &k3.dy)])?;
            let k4 = eval(g, t0, &y4, &a4)?;
            let be = g.backend();
            let (c1, c2) = (h / 6.0, h / 3.0);
            y = lincomb(
                be,
                &y,
                &[
                    (-c1, &k1.value),
                    (-c2, &k2.value),
                    (-c2, &k3.value),
                    (-c1, &k4.value),
                ],
            )?;
            a = lincomb(
                be,
                &a,
                &[(c1, &k1.dy), (c2, &k2.dy), (c2, &k3.dy), (c1, &k4.dy)],
            )?;
            for (j, gj) in gp.iter_mut().enumerate() {
                *gj = lincomb(
                    be,
                    gj,
                    &[
                        (c1, &k1.dparams[j]),
                        (c2, &k2.dparams[j]),
                        (c2, &k3.dparams[j]),
                        (c1, &k4.dparams[j]),
                    ],
                )?;
            }
        }
        g.clear();
        Ok(ContinuousGradient {
            y0: a,
            params: gp,
            reconstructed_y0: y,
        })
    }

    /// The stochastic adjoint (Li et al. 2020) of dy = f dt + g ⊙ dW with a terminal
    /// loss, on the Brownian path of `noise` (the forward pass's: ΔW_i of step i is
    /// regenerated, as in [`Solver::backward_sde`](super::Solver::backward_sde)).
    ///
    /// With b the drift it integrates (f − ½ g ⊙ ∂g/∂y with
    /// [`ito_correction`](StochasticAdjoint::ito_correction), else f), the backward
    /// Stratonovich SDE for (y, a, G) is driven, over step i, by the increment
    /// Δ(t, y) = b(t, y)·h + g(t, y) ⊙ ΔW_i and its vector–Jacobian products:
    ///
    /// ```text
    /// y ← y − Δ,   a ← a + aᵀ∂Δ/∂y,   G ← G + aᵀ∂Δ/∂θ
    /// ```
    ///
    /// evaluated once at the right-hand point (t_{i+1}, y_{i+1}, a_{i+1}) for
    /// [`ReverseScheme::Euler`], or, for [`ReverseScheme::Heun`], at that point and at
    /// the predicted left-hand point (t_i, ỹ, ã) and averaged. The noise must have one
    /// component per state component (diagonal noise).
    #[allow(clippy::too_many_arguments)]
    pub fn sde<B: Backend, T: SdeTerms<B> + ?Sized>(
        &self,
        g: &mut Graph<B>,
        terms: &T,
        noise: &BrownianNoise,
        variant: StochasticAdjoint,
        y_final: &Tensor<B>,
        times: &[f64],
        params: &[Tensor<B>],
        a_final: &Tensor<B>,
    ) -> Result<ContinuousGradient<B>> {
        let (mut y, mut a, params, mut gp) =
            self.prepare(g.backend(), y_final, times, params, a_final)?;
        if noise.dim != y.cols() {
            return Err(Error::InvalidArgument(format!(
                "diagonal noise needs one Brownian component per state component: the \
                 noise has {}, the state {}",
                noise.dim,
                y.cols()
            )));
        }
        let rows = y.rows();
        let p = self.precision;
        let eval = |g: &mut Graph<B>,
                    t: f64,
                    h: f64,
                    dw: &Tensor<B>,
                    y: &Tensor<B>,
                    a: &Tensor<B>|
         -> Result<Vjp<B>> {
            self.vjp(g, t, y, &params, a, |g, t, y, ps| {
                let mut b = terms.drift(g, t, y, ps)?;
                let s = terms.diffusion(g, t, y, ps)?;
                if variant.ito_correction {
                    let ds = terms.diffusion_derivative(g, t, y, ps)?.ok_or_else(|| {
                        Error::InvalidArgument(
                            "the Itô-to-Stratonovich correction needs \
                             SdeTerms::diffusion_derivative"
                                .into(),
                        )
                    })?;
                    let c = g.mul(s, ds)?;
                    b = g.add_scaled(b, c, -0.5)?;
                }
                let bh = g.scale(b, h)?;
                let dwv = g.constant(dw.try_clone(g.backend())?);
                let sdw = g.mul(s, dwv)?;
                Ok(g.add(bh, sdw)?)
            })
        };
        for (i, w) in times.windows(2).enumerate().rev() {
            let (t0, t1) = (w[0], w[1]);
            let h = t1 - t0;
            let be = g.backend();
            let xi = noise.increments(be, rows, i, 1.0, p)?;
            let dw = Tensor::from_buffer(rows, noise.dim, be.affine(xi.buffer(), h.sqrt(), 0.0)?)?;
            let k1 = eval(g, t1, h, &dw, &y, &a)?;
            match variant.scheme {
                ReverseScheme::Euler => {
                    let be = g.backend();
                    y = lincomb(be, &y, &[(-1.0, &k1.value)])?;
                    a = lincomb(be, &a, &[(1.0, &k1.dy)])?;
                    for (gj, dj) in gp.iter_mut().zip(&k1.dparams) {
                        *gj = lincomb(be, gj, &[(1.0, dj)])?;
                    }
                }
                ReverseScheme::Heun => {
                    let be = g.backend();
                    let yp = lincomb(be, &y, &[(-1.0, &k1.value)])?;
                    let ap = lincomb(be, &a, &[(1.0, &k1.dy)])?;
                    let k2 = eval(g, t0, h, &dw, &yp, &ap)?;
                    let be = g.backend();
                    y = lincomb(be, &y, &[(-0.5, &k1.value), (-0.5, &k2.value)])?;
                    a = lincomb(be, &a, &[(0.5, &k1.dy), (0.5, &k2.dy)])?;
                    for (j, gj) in gp.iter_mut().enumerate() {
                        *gj = lincomb(be, gj, &[(0.5, &k1.dparams[j]), (0.5, &k2.dparams[j])])?;
                    }
                }
            }
        }
        g.clear();
        Ok(ContinuousGradient {
            y0: a,
            params: gp,
            reconstructed_y0: y,
        })
    }
}
