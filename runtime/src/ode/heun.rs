//! Heun's method (the explicit trapezoidal rule): two stages, order 2.

use super::Tableau;

/// k₁ = f(t, y), k₂ = f(t + h, y + h k₁), y₊ = y + h (k₁ + k₂)/2.
pub(crate) const TABLEAU: Tableau = Tableau {
    name: "Heun",
    c: &[0.0, 1.0],
    a: &[&[], &[1.0]],
    b: &[0.5, 0.5],
    fsal: false,
    order: 2,
};
