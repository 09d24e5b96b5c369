//! Precision policies (MATH.md §8): which precision the network, the state and the
//! stored trajectory use.

use crate::autodiff::DType;

use super::error::{Error, Result};

/// Where each part of a discretize-then-optimize solve computes and stores.
///
/// - `network` (L): every right-hand-side evaluation. The solver casts the stage state,
///   the stage time and the parameters to L before it calls the [`Rhs`](super::Rhs),
///   and casts the result back to H.
/// - `state` (H): the state y, the stage states y + h·Σ aⱼₗkₗ, the increment
///   Φ = Σ bⱼkⱼ, the update y ← y + h·Φ, the adjoint a and every accumulated gradient.
/// - `storage`: the trajectory y₀ … y_N kept between the forward and the backward pass.
///   The backward pass rebuilds step i from the stored y_i (widened to H).
///
/// `dynamic_scaling` turns on the adjoint scaling of MATH.md §8 (see
/// [`Solver::backward`](super::Solver::backward)); it matters only when L is a 16-bit
/// type, where an unscaled adjoint underflows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrecisionPolicy {
    /// L: the precision of the network (right-hand-side) evaluations.
    pub network: DType,
    /// H: the precision of the state, the adjoint and the gradient sums (f32 or f64).
    pub state: DType,
    /// The precision of the stored trajectory.
    pub storage: DType,
    /// Whether the backward pass scales the adjoint dynamically (MATH.md §8).
    pub dynamic_scaling: bool,
}

impl PrecisionPolicy {
    /// Everything in f64, no scaling: the reference for gradient checks.
    pub fn f64() -> Self {
        Self::uniform(DType::F64)
    }

    /// Everything in f32, no scaling.
    pub fn f32() -> Self {
        Self::uniform(DType::F32)
    }

    /// Network in bf16, state in f32, trajectory stored in bf16, dynamic scaling on.
    pub fn bf16() -> Self {
        PrecisionPolicy {
            network: DType::Bf16,
            state: DType::F32,
            storage: DType::Bf16,
            dynamic_scaling: true,
        }
    }

    /// Network in f16, state in f32, trajectory stored in f16, dynamic scaling on.
    pub fn f16() -> Self {
        PrecisionPolicy {
            network: DType::F16,
            state: DType::F32,
            storage: DType::F16,
            dynamic_scaling: true,
        }
    }

    fn uniform(d: DType) -> Self {
        PrecisionPolicy {
            network: d,
            state: d,
            storage: d,
            dynamic_scaling: false,
        }
    }

    /// The same policy with dynamic scaling switched on or off.
    pub fn with_dynamic_scaling(mut self, on: bool) -> Self {
        self.dynamic_scaling = on;
        self
    }

    /// Checks that H is f32 or f64 and that neither L nor the storage is wider than H
    /// (a wider network than state would round every network output away).
    pub fn validate(&self) -> Result<()> {
        if !matches!(self.state, DType::F32 | DType::F64) {
            return Err(Error::InvalidArgument(format!(
                "precision policy: the state precision must be f32 or f64, not {}",
                self.state
            )));
        }
        for (what, d) in [("network", self.network), ("storage", self.storage)] {
            if d.unit_roundoff() < self.state.unit_roundoff() {
                return Err(Error::InvalidArgument(format!(
                    "precision policy: the {what} precision {d} is wider than the state \
                     precision {}",
                    self.state
                )));
            }
        }
        Ok(())
    }

    /// Machine epsilon of L (the distance from 1 to the next number: 2⁻¹⁰ for f16,
    /// 2⁻⁷ for bf16, 2⁻²³ for f32, 2⁻⁵² for f64): the u_L of MATH.md §8.
    pub fn network_epsilon(&self) -> f64 {
        2.0 * self.network.unit_roundoff()
    }

    /// The scaling target of MATH.md §8 for a state with `features` entries per sample:
    /// (1/u_L)/√features, u_L = [`network_epsilon`](Self::network_epsilon).
    pub fn scaling_target(&self, features: usize) -> f64 {
        (1.0 / self.network_epsilon()) / (features.max(1) as f64).sqrt()
    }
}
