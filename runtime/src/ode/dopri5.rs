//! Dormand–Prince 5(4): seven stages (six evaluations a step thanks to FSAL), a
//! fifth-order solution, an embedded fourth-order error estimate, and a fourth-order
//! continuous extension for output between steps.
//!
//! Coefficients from Dormand & Prince (1980) and, for the error weights and the dense
//! output, Hairer, Nørsett & Wanner, *Solving ODEs I*, §II.5–II.6 (code `DOPRI5`).

use super::Tableau;
use crate::Real;

/// The Dormand–Prince tableau; the fifth-order weights `b` equal the last row of `a`
/// (first same as last: the seventh stage is f at the new state).
pub(crate) const TABLEAU: Tableau = Tableau {
    name: "Dopri5",
    c: &[0.0, 1.0 / 5.0, 3.0 / 10.0, 4.0 / 5.0, 8.0 / 9.0, 1.0, 1.0],
    a: &[
        &[],
        &[1.0 / 5.0],
        &[3.0 / 40.0, 9.0 / 40.0],
        &[44.0 / 45.0, -56.0 / 15.0, 32.0 / 9.0],
        &[
            19372.0 / 6561.0,
            -25360.0 / 2187.0,
            64448.0 / 6561.0,
            -212.0 / 729.0,
        ],
        &[
            9017.0 / 3168.0,
            -355.0 / 33.0,
            46732.0 / 5247.0,
            49.0 / 176.0,
            -5103.0 / 18656.0,
        ],
        &[
            35.0 / 384.0,
            0.0,
            500.0 / 1113.0,
            125.0 / 192.0,
            -2187.0 / 6784.0,
            11.0 / 84.0,
        ],
    ],
    b: &[
        35.0 / 384.0,
        0.0,
        500.0 / 1113.0,
        125.0 / 192.0,
        -2187.0 / 6784.0,
        11.0 / 84.0,
        0.0,
    ],
    fsal: true,
    order: 5,
};

/// Error weights: fifth-order minus fourth-order weights (Hairer's `E1..E7`).
pub(crate) const ERROR: [f64; 7] = [
    71.0 / 57600.0,
    0.0,
    -71.0 / 16695.0,
    71.0 / 1920.0,
    -17253.0 / 339200.0,
    22.0 / 525.0,
    -1.0 / 40.0,
];

/// Order of the embedded estimate plus one: the exponent scale of the controller.
pub(crate) const ERROR_ORDER: u32 = 5;

/// Dense-output weights (Hairer's `D1..D7`).
const DENSE: [f64; 7] = [
    -12715105075.0 / 11282082432.0,
    0.0,
    87487479700.0 / 32700410799.0,
    -10690763975.0 / 1880347072.0,
    701980252875.0 / 199316789632.0,
    -1453857185.0 / 822651844.0,
    69997945.0 / 29380423.0,
];

/// The continuous extension at `θ ∈ [0, 1]` of one component over a step of size `h`
/// from `y0` to `y1`, with the step's seven stage values `k` (Hairer's `CONTD5`):
/// y0 + θ(Δ + (1−θ)(b + θ(Δ − h k₇ − b + (1−θ) h Σ dᵢkᵢ))), Δ = y1 − y0, b = h k₁ − Δ.
#[inline]
pub(crate) fn dense<T: Real>(theta: T, h: T, y0: T, y1: T, k: [T; 7]) -> T {
    let ydiff = y1 - y0;
    let bspl = h * k[0] - ydiff;
    let r4 = ydiff - h * k[6] - bspl;
    let mut s = T::zero();
    for (dj, kj) in DENSE.iter().zip(k) {
        if *dj != 0.0 {
            s += T::of(*dj) * kj;
        }
    }
    let r5 = h * s;
    let one = T::one();
    y0 + theta * (ydiff + (one - theta) * (bspl + theta * (r4 + (one - theta) * r5)))
}
