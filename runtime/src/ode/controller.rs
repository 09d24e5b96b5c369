//! The step-size controller of adaptive solvers: a PI controller on the embedded error
//! estimate (Gustafsson 1991; Söderlind 2002), as in Hairer's `DOPRI5`, and Hairer's
//! initial step-size heuristic.

use super::AdaptiveOptions;
use crate::Real;

/// The proportional-integral step-size controller of one solve.
///
/// After a step of size h with scaled error `err` (RMS norm, accept iff `err ≤ 1`):
/// accepted, `h ← h · clamp(safety · err^-β₁ · err_prev^β₂, min_factor, max_factor)`,
/// with no growth right after a rejection, and `err_prev ← max(err, 10⁻⁴)`;
/// rejected, `h ← h · max(min_factor, safety · err^-β₁)`. |h| never exceeds `h_max`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PiController<T> {
    safety: T,
    min_factor: T,
    max_factor: T,
    beta1: T,
    beta2: T,
    h_max: T,
}

/// What the controller says about one step.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Verdict<T> {
    /// Whether the step is accepted.
    pub accept: bool,
    /// The next step size (signed like `h`).
    pub h_next: T,
}

/// The controller's memory for one row: the last accepted error and whether the last
/// attempt was rejected.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RowMemory<T> {
    pub err_prev: T,
    pub rejected_last: bool,
}

impl<T: Real> RowMemory<T> {
    /// The memory before the first step (Hairer's `FACOLD = 1e-4`).
    pub fn new() -> Self {
        RowMemory {
            err_prev: T::of(1e-4),
            rejected_last: false,
        }
    }
}

impl<T: Real> PiController<T> {
    /// The controller for `opts`, with `h_max` the resolved maximum step magnitude.
    pub fn new(opts: &AdaptiveOptions<T>, h_max: T) -> Self {
        PiController {
            safety: opts.safety,
            min_factor: opts.min_factor,
            max_factor: opts.max_factor,
            beta1: opts.beta1,
            beta2: opts.beta2,
            h_max,
        }
    }

    /// Judges a step of size `h` with scaled error `err` (NaN counts as a failure) and
    /// updates the row's memory.
    pub fn judge(&self, h: T, err: T, mem: &mut RowMemory<T>) -> Verdict<T> {
        let one = T::one();
        let accept = err <= one;
        let factor = if accept {
            // err = 0 gives an infinite raw factor, clamped to max_factor.
            let raw = self.safety * err.powf(-self.beta1) * mem.err_prev.powf(self.beta2);
            let mut f = raw.max(self.min_factor).min(self.max_factor);
            if mem.rejected_last {
                f = f.min(one);
            }
            mem.err_prev = err.max(T::of(1e-4));
            mem.rejected_last = false;
            f
        } else {
            mem.rejected_last = true;
            let raw = self.safety * err.powf(-self.beta1);
            // `max` returns the non-NaN operand: a NaN error shrinks by min_factor.
            raw.max(self.min_factor).min(one)
        };
        let mag = (h.abs() * factor).min(self.h_max);
        Verdict {
            accept,
            h_next: if h < T::zero() { -mag } else { mag },
        }
    }
}

/// Hairer's starting step size (HNW I, §II.4) for one row, in two halves around the one
/// extra field evaluation it needs.
///
/// First half: from the RMS norms `d0 = ‖y₀‖`, `d1 = ‖f(t₀, y₀)‖` (scaled by
/// `atol + rtol|y₀|`), the trial step `h = 0.01·d0/d1` (or 10⁻⁶ when either is below
/// 10⁻⁵), capped by `h_max`.
pub(crate) fn initial_trial<T: Real>(d0: T, d1: T, h_max: T) -> T {
    let small = T::of(1e-5);
    let h = if d0 < small || d1 < small {
        T::of(1e-6)
    } else {
        T::of(0.01) * d0 / d1
    };
    h.min(h_max)
}

/// Second half: with `d2 = ‖f(t₀ + h, y₀ + h f₀) − f₀‖ / |h|`, the step
/// `min(100 h, (0.01 / max(d1, d2))^(1/(p+1)), h_max)` for an error estimate of order p.
pub(crate) fn initial_final<T: Real>(h: T, d1: T, d2: T, error_order: u32, h_max: T) -> T {
    let m = d1.max(d2);
    let h1 = if m <= T::of(1e-15) {
        T::of(1e-6).max(h * T::of(1e-3))
    } else {
        (T::of(0.01) / m).powf(T::one() / T::of(f64::from(error_order)))
    };
    (T::of(100.0) * h).min(h1).min(h_max)
}
