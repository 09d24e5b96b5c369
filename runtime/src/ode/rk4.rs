//! The classical Runge–Kutta method: four stages, order 4.

use super::Tableau;

/// Kutta's 1901 tableau with nodes 0, ½, ½, 1 and weights 1/6, 1/3, 1/3, 1/6.
pub(crate) const TABLEAU: Tableau = Tableau {
    name: "RK4",
    c: &[0.0, 0.5, 0.5, 1.0],
    a: &[&[], &[0.5], &[0.0, 0.5], &[0.0, 0.0, 1.0]],
    b: &[1.0 / 6.0, 1.0 / 3.0, 1.0 / 3.0, 1.0 / 6.0],
    fsal: false,
    order: 4,
};
