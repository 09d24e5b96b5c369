//! Judging a learned controller against a reference solution along the reference's
//! optimal trajectories (the issue's "relative errors of Φ and of the control along
//! optimal trajectories").

use socflow_runtime::brownian::Brownian;

use crate::{Error, Result};

/// Relative errors of a learned value and control against a reference.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PathErrors {
    /// ‖Φ_θ − Φ‖₂ / ‖Φ‖₂ over every compared (path, time) point.
    pub value: f64,
    /// ‖u_θ − u*‖₂ / ‖u*‖₂ over every compared (path, time) point (stacked).
    pub control: f64,
    /// Points compared.
    pub points: usize,
}

/// f(z, u): the drift of one state under a control.
pub type DriftFn<'a> = &'a dyn Fn(&[f64], &[f64]) -> Result<Vec<f64>>;

/// (t, z) → (Φ, u) of a reference solution.
pub type ReferenceFn<'a> = &'a dyn Fn(f64, &[f64]) -> Result<(f64, Vec<f64>)>;

/// (t, z) → (Φ_θ, u_θ) of a learned controller (which may keep scratch state).
pub type LearnedFn<'a> = &'a mut dyn FnMut(f64, &[f64]) -> Result<(f64, Vec<f64>)>;

/// Where and how to compare.
#[derive(Clone, Debug, PartialEq)]
pub struct PathOptions {
    /// Initial states, one per path.
    pub starts: Vec<Vec<f64>>,
    /// Horizon T.
    pub horizon: f64,
    /// Euler–Maruyama steps of the reference roll-outs.
    pub steps: usize,
    /// Compare every this many steps (from step 0; the terminal time is excluded).
    pub every: usize,
    /// Noise level σ.
    pub sigma: f64,
    /// Seed of the roll-outs' Brownian increments (path p is sample p).
    pub seed: u64,
}

/// Rolls out `drift` (f(z, u)) under the reference feedback with noise σ dW, and at the
/// compared points evaluates `reference(t, z) → (Φ, u*)` and `learned(t, z) → (Φ_θ,
/// u_θ)`.
pub fn errors_along_optimal_paths(
    drift: DriftFn<'_>,
    reference: ReferenceFn<'_>,
    learned: LearnedFn<'_>,
    opts: &PathOptions,
) -> Result<PathErrors> {
    if opts.steps == 0 || opts.every == 0 || opts.starts.is_empty() {
        return Err(Error::InvalidArgument(
            "path errors: need steps ≥ 1, every ≥ 1 and at least one start".into(),
        ));
    }
    let gen = Brownian::new(opts.seed);
    let h = opts.horizon / opts.steps as f64;
    let (mut dv, mut nv, mut du, mut nu, mut points) = (0.0, 0.0, 0.0, 0.0, 0);
    for (path, start) in opts.starts.iter().enumerate() {
        let mut z = start.clone();
        let mut dw = vec![0.0; z.len()];
        for k in 0..opts.steps {
            let t = k as f64 * h;
            let (v, u) = reference(t, &z)?;
            if k % opts.every == 0 {
                let (vl, ul) = learned(t, &z)?;
                if ul.len() != u.len() {
                    return Err(Error::Length {
                        what: "learned control",
                        found: ul.len(),
                        expected: u.len(),
                    });
                }
                dv += (vl - v).powi(2);
                nv += v * v;
                du += ul.iter().zip(&u).map(|(a, b)| (a - b).powi(2)).sum::<f64>();
                nu += u.iter().map(|b| b * b).sum::<f64>();
                points += 1;
            }
            let f = drift(&z, &u)?;
            gen.increments(path as u64, k as u64, h, &mut dw)?;
            for ((zi, fi), wi) in z.iter_mut().zip(&f).zip(&dw) {
                *zi += fi * h + opts.sigma * wi;
            }
        }
    }
    let ratio = |a: f64, b: f64| if b > 0.0 { (a / b).sqrt() } else { a.sqrt() };
    Ok(PathErrors {
        value: ratio(dv, nv),
        control: ratio(du, nu),
        points,
    })
}
