//! SDEs given as a drift and a diagonal diffusion, and the Euler–Maruyama and
//! stochastic Heun increments built from them for the discretize-then-optimize solver.

use socflow_runtime::sde::SdeScheme;

use crate::autodiff::{self, Backend, Graph, Var};

use super::solver::SdeRhs;

/// An SDE dy = f(t, y; θ) dt + g(t, y; θ) ⊙ dW with diagonal noise, its two terms
/// recorded on a graph.
///
/// The terms say nothing about the calculus: Euler–Maruyama reads them as an Itô SDE,
/// stochastic Heun as a Stratonovich SDE ([`SchemeIncrement`]), and the continuous
/// adjoint ([`ContinuousAdjoint::sde`](super::ContinuousAdjoint::sde)) is told which.
/// `t` is 1 × 1, `y` batch × features, the parameters are the leaves given to the
/// solver; both terms return `y`'s shape at `y`'s precision, and the noise has one
/// Brownian component per state component.
pub trait SdeTerms<B: Backend> {
    /// Records the drift f(t, y; θ).
    fn drift(&self, g: &mut Graph<B>, t: Var, y: Var, params: &[Var]) -> autodiff::Result<Var>;

    /// Records the diagonal diffusion g(t, y; θ) (component j multiplies dW_j).
    fn diffusion(&self, g: &mut Graph<B>, t: Var, y: Var, params: &[Var]) -> autodiff::Result<Var>;

    /// Records the diagonal of the diffusion's Jacobian, ∂g_j/∂y_j, as graph ops (so
    /// that the Itô-to-Stratonovich drift f − ½ g ⊙ ∂g/∂y can itself be differentiated
    /// by the continuous adjoint). `None` (the default) when the terms do not provide
    /// it; only the corrected continuous adjoint of an Itô SDE needs it.
    fn diffusion_derivative(
        &self,
        _g: &mut Graph<B>,
        _t: Var,
        _y: Var,
        _params: &[Var],
    ) -> autodiff::Result<Option<Var>> {
        Ok(None)
    }
}

/// The [`SdeRhs`] increment of [`SdeTerms`] under a fixed-step scheme, for
/// [`Solver::forward_sde`](super::Solver::forward_sde) and
/// [`Solver::backward_sde`](super::Solver::backward_sde):
///
/// - [`SdeScheme::EulerMaruyama`] (Itô): Δ = f(t, y)·h + g(t, y) ⊙ ΔW;
/// - [`SdeScheme::StochasticHeun`] (Stratonovich): the predictor
///   ỹ = y + f(t, y)·h + g(t, y) ⊙ ΔW, then Δ = ½(f + f̃)·h + ½(g + g̃) ⊙ ΔW with
///   f̃, g̃ at (t + h, ỹ), as the runtime's solver steps it.
///
/// The whole increment is on the step's tape, so the solver's backward pass
/// differentiates either scheme exactly on the same Brownian path.
#[derive(Clone, Copy, Debug)]
pub struct SchemeIncrement<'a, T: ?Sized> {
    /// The drift and diffusion.
    pub terms: &'a T,
    /// Which scheme's increment.
    pub scheme: SdeScheme,
}

impl<'a, T: ?Sized> SchemeIncrement<'a, T> {
    /// The increment of `terms` under `scheme`.
    pub fn new(terms: &'a T, scheme: SdeScheme) -> Self {
        SchemeIncrement { terms, scheme }
    }
}

impl<B: Backend, T: SdeTerms<B> + ?Sized> SdeRhs<B> for SchemeIncrement<'_, T> {
    fn increment(
        &self,
        g: &mut Graph<B>,
        t: Var,
        h: Var,
        y: Var,
        dw: Var,
        params: &[Var],
    ) -> autodiff::Result<Var> {
        let euler = |g: &mut Graph<B>, t: Var, y: Var| -> autodiff::Result<(Var, Var, Var)> {
            let f = self.terms.drift(g, t, y, params)?;
            let s = self.terms.diffusion(g, t, y, params)?;
            let fh = g.mul(f, h)?;
            let sdw = g.mul(s, dw)?;
            Ok((g.add(fh, sdw)?, f, s))
        };
        match self.scheme {
            SdeScheme::EulerMaruyama => Ok(euler(g, t, y)?.0),
            SdeScheme::StochasticHeun => {
                let (d0, f0, s0) = euler(g, t, y)?;
                let yp = g.add(y, d0)?;
                let t1 = g.add(t, h)?;
                let f1 = self.terms.drift(g, t1, yp, params)?;
                let s1 = self.terms.diffusion(g, t1, yp, params)?;
                let f = g.add(f0, f1)?;
                let s = g.add(s0, s1)?;
                let fh = g.mul(f, h)?;
                let sdw = g.mul(s, dw)?;
                let sum = g.add(fh, sdw)?;
                g.scale(sum, 0.5)
            }
        }
    }
}
