//! Dynamic adjoint scaling (MATH.md §8): one power-of-two scale S that keeps the
//! adjoint, as seen by the low-precision network's vector–Jacobian products, well
//! inside L's range.

use crate::autodiff::{Backend, DType, Tensor};

use super::error::{Error, Result};

/// When the scale S doubles after a step whose first try succeeded.
///
/// MATH.md §8 writes the test as `max|a_H| < ½·target` and the rampde code compares
/// the *unscaled* adjoint a_H with the target. The target is a magnitude for the
/// *scaled* adjoint S·a (the initial scale puts S·max|a_N| at the target), so the
/// default here compares S·max|a_H|: then S doubles exactly when the seed has drifted
/// below half its target, whatever the loss's units. With the literal reading S doubles
/// at every clean step whenever |a| < target/2 (any loss of ordinary size), until a
/// seed overflows and a retry halves it: S then sits at L's overflow edge and every
/// other step is retried. Both keep the gradient; the mixed-precision test runs both.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum IncreaseRule {
    /// Double S when S·max|a_H| < ½·target (the default).
    #[default]
    ScaledAdjoint,
    /// Double S when max|a_H| < ½·target (MATH.md §8 and rampde, literally).
    UnscaledAdjoint,
}

/// What the adjoint's scaling did during one backward pass.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct AdjointStats {
    /// Vector–Jacobian products thrown away because a result (or the seed at L) was
    /// not finite; each halved S.
    pub retries: usize,
    /// The scale chosen from a_N (`None` without dynamic scaling, or while the adjoint
    /// stayed zero).
    pub initial_scale: Option<f64>,
    /// The scale after the last step (`None` as for `initial_scale`).
    pub final_scale: Option<f64>,
    /// Number of doublings of S.
    pub increases: usize,
    /// Bytes of the largest single-step tape the backward pass built.
    pub max_step_tape_bytes: usize,
}

/// The scale's state machine.
#[derive(Debug)]
pub(crate) struct Scaler {
    /// S, once initialized.
    pub(crate) scale: Option<f64>,
    target: f64,
    max_tries: usize,
    rule: IncreaseRule,
    low: DType,
}

impl Scaler {
    pub(crate) fn new(target: f64, max_tries: usize, rule: IncreaseRule, low: DType) -> Self {
        Scaler {
            scale: None,
            target,
            max_tries: max_tries.max(1),
            rule,
            low,
        }
    }

    /// The most tries one step (or the initialization) may take.
    pub(crate) fn max_tries(&self) -> usize {
        self.max_tries
    }

    /// Whether `s·a` rounded to L is finite.
    pub(crate) fn finite_at_low<B: Backend>(&self, be: &B, a: &Tensor<B>, s: f64) -> Result<bool> {
        let sa = Tensor::from_buffer(a.rows(), a.cols(), be.affine(a.buffer(), s, 0.0)?)?;
        Ok(sa.cast(be, self.low)?.all_finite(be)?)
    }

    /// S = 2^round(log₂(target / max|a|)), halved until S·a is finite at L.
    /// `amax` must be positive and finite; `steps` names the error's step.
    pub(crate) fn init<B: Backend>(
        &mut self,
        be: &B,
        a: &Tensor<B>,
        amax: f64,
        steps: usize,
    ) -> Result<f64> {
        let mut s = (self.target / amax).log2().round().exp2();
        for _ in 0..self.max_tries {
            if s.is_finite() && s > 0.0 && self.finite_at_low(be, a, s)? {
                self.scale = Some(s);
                return Ok(s);
            }
            s *= 0.5;
        }
        Err(Error::ScalingFailed {
            step: steps,
            tries: self.max_tries,
            scale: s,
        })
    }

    /// Whether S should double after a step whose first try succeeded and left
    /// `max|a_H| = amax`.
    pub(crate) fn should_increase(&self, amax: f64) -> bool {
        let Some(s) = self.scale else {
            return false;
        };
        let seen = match self.rule {
            IncreaseRule::ScaledAdjoint => s * amax,
            IncreaseRule::UnscaledAdjoint => amax,
        };
        // A zero adjoint gives no reason to grow S (it would grow without bound).
        amax > 0.0 && seen < 0.5 * self.target && (2.0 * s).is_finite()
    }
}
