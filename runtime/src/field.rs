//! Time-dependent vector fields f(t, x) and scalar potentials Φ(t, x).
//!
//! [`Field`] is what every integrator steps: MLP velocity and score networks, a
//! potential as -∇Φ (or -M∇Φ with a control map), ONNX models, closures in tests.
//! Each field has an allocation-free single-state path (the caller owns the scratch
//! buffer, sized by [`Field::scratch_len`]) and a block path over rows stored
//! row-major, each row with its own time (adaptive solvers step rows independently).
//! Blocks are evaluated on the calling thread; samplers split a batch into blocks and
//! spread the blocks over rayon threads.
//!
//! Besides f, a field gives its exact divergence tr(∂f/∂x) (log-densities) and,
//! optionally, Jacobian–vector products (∂f/∂x)·u ([`Field::eval_jvp`],
//! [`Field::eval_block_jvp`]: Hutchinson's divergence estimate). The networks have
//! both; a field without a JVP answers [`Error::Unsupported`](crate::Error::Unsupported).

use crate::error::{check_len, Result};
use crate::Real;

/// A time-dependent vector field f: (t, x ∈ R^d) → R^d.
pub trait Field<T: Real>: Send + Sync {
    /// State dimension d.
    fn dim(&self) -> usize;

    /// Number of scratch elements a single-state evaluation needs.
    fn scratch_len(&self) -> usize;

    /// Writes f(t, x) into `v`. `x` and `v` have length [`dim`](Field::dim), `scratch`
    /// at least [`scratch_len`](Field::scratch_len). Does not allocate.
    fn eval(&self, t: T, x: &[T], v: &mut [T], scratch: &mut [T]) -> Result<()>;

    /// Writes f(t, x) into `v` and returns its divergence tr(∂f/∂x), computed exactly.
    fn eval_div(&self, t: T, x: &[T], v: &mut [T], scratch: &mut [T]) -> Result<T>;

    /// Number of scratch elements [`eval_jvp`](Field::eval_jvp) needs (by default
    /// [`scratch_len`](Field::scratch_len)).
    fn jvp_scratch_len(&self) -> usize {
        self.scratch_len()
    }

    /// Writes f(t, x) into `v` and the Jacobian–vector product (∂f/∂x)(t, x)·`dx` (the
    /// directional derivative of f along `dx`, time held fixed) into `jv`. `x`, `dx`,
    /// `v` and `jv` have length [`dim`](Field::dim), `scratch` at least
    /// [`jvp_scratch_len`](Field::jvp_scratch_len). Does not allocate.
    ///
    /// The product is what Hutchinson's divergence estimate εᵀ(∂f/∂x)ε needs: one
    /// forward-mode pass instead of the d of the exact trace. Fields without one (the
    /// default, e.g. a [`FnField`]) return [`Error::Unsupported`](crate::Error::Unsupported).
    fn eval_jvp(
        &self,
        t: T,
        x: &[T],
        dx: &[T],
        v: &mut [T],
        jv: &mut [T],
        scratch: &mut [T],
    ) -> Result<()> {
        let _ = (t, x, dx, v, jv, scratch);
        Err(crate::Error::Unsupported(
            "this field has no Jacobian-vector product (Hutchinson's divergence estimate needs one); use the exact divergence".into(),
        ))
    }

    /// The block size (rows) at which [`eval_block`](Field::eval_block) runs best:
    /// samplers split batches into blocks of this many rows. Large enough to amortize
    /// matrix-matrix products, small enough to keep a block's work in cache.
    fn preferred_block_rows(&self) -> usize {
        64
    }

    /// Number of scratch elements [`eval_block`](Field::eval_block) needs for `rows` rows.
    fn block_scratch_len(&self, rows: usize) -> usize {
        let _ = rows;
        self.scratch_len()
    }

    /// Evaluates a block of `t.len()` rows: `x` and `v` are row-major `rows × d`, row
    /// `i` at time `t[i]`. The default loops over [`eval`](Field::eval); networks
    /// override it with matrix-matrix products. Each row's result must not depend on
    /// the other rows of the block (so results do not depend on how a batch is split).
    fn eval_block(&self, t: &[T], x: &[T], v: &mut [T], scratch: &mut [T]) -> Result<()> {
        let d = self.dim();
        check_block(d, t.len(), x, v)?;
        let need = self.scratch_len();
        check_len("scratch", scratch.len().min(need), need)?;
        for ((ti, xi), vi) in t.iter().zip(x.chunks_exact(d)).zip(v.chunks_exact_mut(d)) {
            self.eval(*ti, xi, vi, scratch)?;
        }
        Ok(())
    }

    /// Like [`eval_block`](Field::eval_block), and writes each row's divergence in `div`.
    fn eval_block_div(
        &self,
        t: &[T],
        x: &[T],
        v: &mut [T],
        div: &mut [T],
        scratch: &mut [T],
    ) -> Result<()> {
        let d = self.dim();
        check_block(d, t.len(), x, v)?;
        check_len("divergence buffer", div.len(), t.len())?;
        let need = self.scratch_len();
        check_len("scratch", scratch.len().min(need), need)?;
        for (((ti, xi), vi), di) in t
            .iter()
            .zip(x.chunks_exact(d))
            .zip(v.chunks_exact_mut(d))
            .zip(div.iter_mut())
        {
            *di = self.eval_div(*ti, xi, vi, scratch)?;
        }
        Ok(())
    }

    /// Number of scratch elements [`eval_block_jvp`](Field::eval_block_jvp) needs for
    /// `rows` rows (by default [`jvp_scratch_len`](Field::jvp_scratch_len)).
    fn block_jvp_scratch_len(&self, rows: usize) -> usize {
        let _ = rows;
        self.jvp_scratch_len()
    }

    /// Like [`eval_block`](Field::eval_block), and writes each row's Jacobian–vector
    /// product (∂f/∂x)·`dx` into `jv` ([`eval_jvp`](Field::eval_jvp)): `dx` and `jv`
    /// are row-major `rows × d` like `x`. The default loops over
    /// [`eval_jvp`](Field::eval_jvp); each row's result must not depend on the other
    /// rows of the block.
    fn eval_block_jvp(
        &self,
        t: &[T],
        x: &[T],
        dx: &[T],
        v: &mut [T],
        jv: &mut [T],
        scratch: &mut [T],
    ) -> Result<()> {
        let d = self.dim();
        check_block(d, t.len(), x, v)?;
        check_block(d, t.len(), dx, jv)?;
        let need = self.jvp_scratch_len();
        check_len("scratch", scratch.len().min(need), need)?;
        for ((((ti, xi), ui), vi), ji) in t
            .iter()
            .zip(x.chunks_exact(d))
            .zip(dx.chunks_exact(d))
            .zip(v.chunks_exact_mut(d))
            .zip(jv.chunks_exact_mut(d))
        {
            self.eval_jvp(*ti, xi, ui, vi, ji, &mut scratch[..need])?;
        }
        Ok(())
    }
}

/// Checks the lengths of a block call: `x` and `v` must hold `rows × d` values.
pub fn check_block<T>(d: usize, rows: usize, x: &[T], v: &[T]) -> Result<()> {
    check_len("state block", x.len(), rows * d)?;
    check_len("output block", v.len(), rows * d)
}

macro_rules! forward_field {
    ($($ty:ty),*) => {$(
        impl<T: Real, F: Field<T> + ?Sized> Field<T> for $ty {
            fn dim(&self) -> usize { (**self).dim() }
            fn scratch_len(&self) -> usize { (**self).scratch_len() }
            fn eval(&self, t: T, x: &[T], v: &mut [T], s: &mut [T]) -> Result<()> {
                (**self).eval(t, x, v, s)
            }
            fn eval_div(&self, t: T, x: &[T], v: &mut [T], s: &mut [T]) -> Result<T> {
                (**self).eval_div(t, x, v, s)
            }
            fn preferred_block_rows(&self) -> usize { (**self).preferred_block_rows() }
            fn block_scratch_len(&self, rows: usize) -> usize { (**self).block_scratch_len(rows) }
            fn eval_block(&self, t: &[T], x: &[T], v: &mut [T], s: &mut [T]) -> Result<()> {
                (**self).eval_block(t, x, v, s)
            }
            fn eval_block_div(&self, t: &[T], x: &[T], v: &mut [T], dv: &mut [T], s: &mut [T]) -> Result<()> {
                (**self).eval_block_div(t, x, v, dv, s)
            }
            fn jvp_scratch_len(&self) -> usize { (**self).jvp_scratch_len() }
            fn eval_jvp(&self, t: T, x: &[T], dx: &[T], v: &mut [T], jv: &mut [T], s: &mut [T]) -> Result<()> {
                (**self).eval_jvp(t, x, dx, v, jv, s)
            }
            fn block_jvp_scratch_len(&self, rows: usize) -> usize { (**self).block_jvp_scratch_len(rows) }
            fn eval_block_jvp(&self, t: &[T], x: &[T], dx: &[T], v: &mut [T], jv: &mut [T], s: &mut [T]) -> Result<()> {
                (**self).eval_block_jvp(t, x, dx, v, jv, s)
            }
        }
    )*};
}
forward_field!(&F, Box<F>, std::sync::Arc<F>);

/// A field given by closures: handy for analytic test problems and user code.
///
/// `f(t, x, v)` writes the field; `div(t, x)` returns its divergence (required for
/// log-density augmentation; without it [`Field::eval_div`] returns an error).
pub struct FnField<F, D = fn(f64, &[f64]) -> f64> {
    dim: usize,
    f: F,
    div: Option<D>,
}

impl<F> FnField<F> {
    /// A field of dimension `dim` with no divergence.
    pub fn new(dim: usize, f: F) -> Self {
        FnField { dim, f, div: None }
    }
}

impl<F, D> FnField<F, D> {
    /// A field of dimension `dim` with its divergence.
    pub fn with_div(dim: usize, f: F, div: D) -> Self {
        FnField {
            dim,
            f,
            div: Some(div),
        }
    }
}

impl<T, F, D> Field<T> for FnField<F, D>
where
    T: Real,
    F: Fn(T, &[T], &mut [T]) + Send + Sync,
    D: Fn(T, &[T]) -> T + Send + Sync,
{
    fn dim(&self) -> usize {
        self.dim
    }
    fn scratch_len(&self) -> usize {
        0
    }
    fn eval(&self, t: T, x: &[T], v: &mut [T], _scratch: &mut [T]) -> Result<()> {
        check_len("state", x.len(), self.dim)?;
        check_len("output", v.len(), self.dim)?;
        (self.f)(t, x, v);
        Ok(())
    }
    fn eval_div(&self, t: T, x: &[T], v: &mut [T], scratch: &mut [T]) -> Result<T> {
        let div = self.div.as_ref().ok_or_else(|| {
            crate::Error::Unsupported("this closure field has no divergence".into())
        })?;
        self.eval(t, x, v, scratch)?;
        Ok(div(t, x))
    }
}

/// A scalar potential Φ(t, x) with closed-form derivatives (the OT-Flow potential).
pub trait Potential<T: Real>: Send + Sync {
    /// State dimension d (the potential takes s = (x, t) ∈ R^{d+1}).
    fn dim(&self) -> usize;

    /// Number of scratch elements a single-state call needs.
    fn scratch_len(&self) -> usize;

    /// Φ(t, x).
    fn value(&self, t: T, x: &[T], scratch: &mut [T]) -> Result<T>;

    /// Writes ∇ₓΦ(t, x) into `grad` (length d) and returns (Φ, ∂ₜΦ).
    fn grad(&self, t: T, x: &[T], grad: &mut [T], scratch: &mut [T]) -> Result<(T, T)>;

    /// Writes ∇ₓΦ into `grad` and returns (Φ, ∂ₜΦ, ΔₓΦ) with the exact Laplacian.
    fn grad_lap(&self, t: T, x: &[T], grad: &mut [T], scratch: &mut [T]) -> Result<(T, T, T)>;
}
