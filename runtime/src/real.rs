//! The floating-point types the runtime computes in.

use std::fmt::{Debug, Display};
use std::iter::Sum;

/// A floating-point scalar (f32 or f64) the networks, fields and integrators run in.
pub trait Real:
    num_traits::Float
    + num_traits::FloatConst
    + num_traits::NumAssignOps
    + Sum
    + Default
    + Debug
    + Display
    + Send
    + Sync
    + 'static
{
    /// Name of the type as written in model cards and messages ("f32", "f64").
    const NAME: &'static str;
    /// Converts from f64 (rounding to nearest for f32).
    fn of(x: f64) -> Self;
    /// Converts to f64 (exact).
    fn f64(self) -> f64;
}

impl Real for f32 {
    const NAME: &'static str = "f32";
    #[inline(always)]
    fn of(x: f64) -> Self {
        x as f32
    }
    #[inline(always)]
    fn f64(self) -> f64 {
        self as f64
    }
}

impl Real for f64 {
    const NAME: &'static str = "f64";
    #[inline(always)]
    fn of(x: f64) -> Self {
        x
    }
    #[inline(always)]
    fn f64(self) -> f64 {
        self
    }
}
