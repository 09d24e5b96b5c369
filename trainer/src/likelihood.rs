//! Log-likelihood of data points under any exported density model.
//!
//! A density model (an MLP velocity, or an OT-Flow potential whose field is −∇ₓΦ) over
//! the time interval [t0, t1] carries data at t0 to the standard normal prior at t1.
//! For a data point x the runtime's ODE driver ([`solve_block`]) integrates
//!
//! ```text
//! dz/dt = f(t, z),  dl/dt = tr ∂f/∂z,   z(t0) = (x − mean)/std,  l(t0) = 0
//! log p(x) = −½‖z(t1)‖² − (d/2) ln 2π + l(t1) − Σ ln std
//! ```
//!
//! (the change of variables of MATH.md §2 plus the normalization recorded in the
//! artifact), with the exact divergence of the network ([`Field::eval_block_div`](socflow_runtime::Field::eval_block_div):
//! the MLP's forward-mode Jacobian, the OT-Flow potential's closed-form Laplacian) and
//! any runtime ODE method: fixed RK4 steps or adaptive Dopri5 (where l is part of the
//! error norm, so the log-density meets the tolerances too). This is the inverse of the
//! runtime sampler's log-density: sampling integrates the same field from t1 back to
//! t0.
//!
//! Hutchinson's estimator is not offered here: the runtime's fields expose only the
//! exact divergence (no Jacobian-vector product), and the exact trace of an exported
//! model costs at most about d forward passes, which is what evaluation wants. Training
//! with Hutchinson's estimator is in [`crate::cnf`].
//!
//! Blocks of rows are solved in parallel (rayon); every row is independent of the
//! block it is solved in, so the result does not depend on the thread count.

use rayon::prelude::*;
use socflow_runtime::model::Model;
use socflow_runtime::ode::{solve_block, OdeOptions, OdeWorkspace};
use socflow_runtime::Real;

use crate::error::{check_len, Error, Result};

/// ln 2π.
const LN_2PI: f64 = 1.837_877_066_409_345_3;

/// Settings of [`log_likelihood`].
#[derive(Clone, Debug)]
pub struct LikelihoodOptions<T> {
    /// The ODE method and step-size control (fixed steps or adaptive Dopri5).
    pub ode: OdeOptions<T>,
    /// Rows per block (0: the field's preferred block size).
    pub block_rows: usize,
}

impl<T: Real> LikelihoodOptions<T> {
    /// `opts` with the field's preferred block size.
    pub fn new(ode: OdeOptions<T>) -> Self {
        LikelihoodOptions { ode, block_rows: 0 }
    }
}

/// The log-density log p(x) of each of the `n` data points `x` (row-major n × d, data
/// coordinates) under `model` (module documentation), in f64.
///
/// Errors: [`Error::Length`] when `x` is not n × d; [`Error::NonFinite`] for a
/// non-finite coordinate; [`Error::InvalidArgument`] for n = 0; the runtime's errors
/// (a score model has no ODE field, bad ODE options, a failed adaptive solve).
pub fn log_likelihood<T: Real>(
    model: &Model<T>,
    x: &[f64],
    n: usize,
    opts: &LikelihoodOptions<T>,
) -> Result<Vec<f64>> {
    let d = model.dim();
    if n == 0 {
        return Err(Error::InvalidArgument(
            "log-likelihood of no data points".into(),
        ));
    }
    check_len("data points", x.len(), n * d)?;
    if x.iter().any(|v| !v.is_finite()) {
        return Err(Error::NonFinite("data points".into()));
    }
    opts.ode.validate()?;
    let field = model.field()?;
    let mut xm = x.to_vec();
    let norm = model.artifact().card.normalization.clone();
    if let Some(nm) = &norm {
        nm.to_model(&mut xm)?;
    }
    let shift = norm.as_ref().map_or(0.0, |nm| nm.log_det());
    let mut z: Vec<T> = xm.iter().map(|v| T::of(*v)).collect();
    let mut logdet = vec![T::zero(); n];
    let rows = if opts.block_rows > 0 {
        opts.block_rows
    } else {
        field.preferred_block_rows().max(1)
    };
    let (t0, t1) = model.time_interval();
    z.par_chunks_mut(rows * d)
        .zip(logdet.par_chunks_mut(rows))
        .map(|(zb, lb)| -> Result<()> {
            let mut ws = OdeWorkspace::for_field(&*field, lb.len());
            solve_block(&*field, &opts.ode, t0, t1, zb, Some(lb), None, &mut ws)?;
            Ok(())
        })
        .collect::<Result<Vec<()>>>()?;
    let half_d_ln2pi = 0.5 * d as f64 * LN_2PI;
    Ok(z.chunks_exact(d)
        .zip(&logdet)
        .map(|(zr, l)| {
            let sq: f64 = zr.iter().map(|v| v.f64() * v.f64()).sum();
            -0.5 * sq - half_d_ln2pi + l.f64() - shift
        })
        .collect())
}

/// The mean negative log-likelihood of the `n` points `x` under `model`
/// ([`log_likelihood`]'s errors).
pub fn mean_nll<T: Real>(
    model: &Model<T>,
    x: &[f64],
    n: usize,
    opts: &LikelihoodOptions<T>,
) -> Result<f64> {
    let lp = log_likelihood(model, x, n, opts)?;
    Ok(-lp.iter().sum::<f64>() / n as f64)
}
