//! The explicit Euler method: one stage, order 1.

use super::Tableau;

/// y₊ = y + h f(t, y).
pub(crate) const TABLEAU: Tableau = Tableau {
    name: "Euler",
    c: &[0.0],
    a: &[&[]],
    b: &[1.0],
    fsal: false,
    order: 1,
};
