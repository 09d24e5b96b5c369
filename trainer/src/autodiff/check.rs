//! The gradient checker: finite differences in f64 against [`Graph::backward`].
//!
//! One checker serves every op and every model: give it the leaves (f64 tensors) and a
//! closure that builds a scalar on a graph from their handles; it differentiates the
//! scalar once in reverse mode, then perturbs every leaf element (or a seeded random
//! subset of a large leaf) and compares each gradient entry with the fourth-order
//! central difference
//!
//! f'(x) ≈ [f(x − 2h) − 8f(x − h) + 8f(x + h) − f(x + 2h)] / 12h,
//!
//! h = 2^round(log₂(step · max(1, |x|))) (truncation error O(h⁴), rounding error
//! O(ε|f|/h); the default step 10⁻³ balances the two near 10⁻¹³ relative). The closure
//! is called once per evaluation on the same graph, [cleared](Graph::clear) in between,
//! so it must build the same function each time (it may create its own constant
//! leaves).

use super::backend::Backend;
use super::error::{Error, Result};
use super::graph::{Graph, Var};
use super::tensor::{DType, Shape, Tensor};

/// Settings of [`check_gradients`].
#[derive(Clone, Debug)]
pub struct CheckOptions {
    /// Leaves with more elements are checked on a random subset of this many.
    pub max_elements_per_leaf: usize,
    /// Seed of that subset.
    pub seed: u64,
    /// Relative finite-difference step (see the module documentation).
    pub step: f64,
    /// Entries much smaller than their leaf's largest gradient entry are compared
    /// relative to `floor · max(1, that largest entry)` rather than to themselves.
    pub floor: f64,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            max_elements_per_leaf: 64,
            seed: 0x5eed_cafe,
            step: 1e-3,
            floor: 1e-3,
        }
    }
}

/// The check of one leaf.
#[derive(Clone, Debug, PartialEq)]
pub struct LeafReport {
    /// Position of the leaf in the list given to [`check_gradients`].
    pub leaf: usize,
    /// Its shape.
    pub shape: Shape,
    /// Number of elements compared.
    pub checked: usize,
    /// Largest |backward − finite difference| / max(|backward|, |finite difference|,
    /// floor) over the compared elements.
    pub max_rel_err: f64,
    /// Largest |backward − finite difference|.
    pub max_abs_err: f64,
    /// The worst element: (flat index, backward, finite difference).
    pub worst: Option<(usize, f64, f64)>,
}

/// The outcome of [`check_gradients`].
#[derive(Clone, Debug, PartialEq)]
pub struct CheckReport {
    /// The function's value at the given leaves.
    pub value: f64,
    /// One report per leaf.
    pub leaves: Vec<LeafReport>,
    /// The largest relative error over every leaf.
    pub max_rel_err: f64,
    /// Total number of elements compared.
    pub checked: usize,
}

impl std::fmt::Display for CheckReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "f = {:.6e}; {} entries, max rel err {:.3e}",
            self.value, self.checked, self.max_rel_err
        )?;
        for l in &self.leaves {
            write!(
                f,
                "\n  leaf {} ({}): {} checked, rel {:.3e}, abs {:.3e}",
                l.leaf, l.shape, l.checked, l.max_rel_err, l.max_abs_err
            )?;
            if let Some((i, ad, fd)) = l.worst {
                write!(f, ", worst [{i}] backward {ad:.12e} vs fd {fd:.12e}")?;
            }
        }
        Ok(())
    }
}

/// splitmix64: the subset of a large leaf's elements to check.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn pick(len: usize, max: usize, seed: &mut u64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..len).collect();
    if len <= max {
        return idx;
    }
    // Partial Fisher–Yates.
    for i in 0..max {
        let j = i + (splitmix(seed) % (len - i) as u64) as usize;
        idx.swap(i, j);
    }
    idx.truncate(max);
    idx.sort_unstable();
    idx
}

fn evaluate<B, F>(
    graph: &mut Graph<B>,
    shapes: &[Shape],
    values: &[Vec<f64>],
    requires_grad: bool,
    f: &mut F,
) -> Result<(Vec<Var>, Var)>
where
    B: Backend,
    F: FnMut(&mut Graph<B>, &[Var]) -> Result<Var>,
{
    graph.clear();
    let mut vars = Vec::with_capacity(values.len());
    for (s, v) in shapes.iter().zip(values) {
        vars.push(graph.leaf_f64(s.rows, s.cols, v, DType::F64, requires_grad)?);
    }
    let out = f(graph, &vars)?;
    let shape = graph.shape(out)?;
    if shape != Shape::SCALAR || graph.dtype(out)? != DType::F64 {
        return Err(Error::InvalidArgument(format!(
            "check_gradients: the function must return a 1×1 f64 value, got {shape} {}",
            graph.dtype(out)?
        )));
    }
    Ok((vars, out))
}

fn scalar<B: Backend>(graph: &Graph<B>, v: Var) -> Result<f64> {
    Ok(graph.to_f64(v)?[0])
}

/// Checks the reverse-mode gradient of `f` with respect to every leaf (f64 tensors),
/// on `graph` (cleared first and between evaluations). See the module documentation.
pub fn check_gradients<B, F>(
    graph: &mut Graph<B>,
    leaves: &[Tensor<B>],
    mut f: F,
    opts: &CheckOptions,
) -> Result<CheckReport>
where
    B: Backend,
    F: FnMut(&mut Graph<B>, &[Var]) -> Result<Var>,
{
    let valid = opts.step > 0.0 && opts.step.is_finite() && opts.floor >= 0.0;
    if !valid {
        return Err(Error::InvalidArgument(format!(
            "check_gradients: step {} and floor {} must be positive and finite",
            opts.step, opts.floor
        )));
    }
    let mut shapes = Vec::with_capacity(leaves.len());
    let mut values = Vec::with_capacity(leaves.len());
    for t in leaves {
        if t.dtype() != DType::F64 {
            return Err(Error::DType {
                op: "check_gradients",
                lhs: DType::F64,
                rhs: t.dtype(),
            });
        }
        shapes.push(t.shape());
        values.push(t.to_f64(graph.backend())?);
    }

    let (vars, out) = evaluate(graph, &shapes, &values, true, &mut f)?;
    let value = scalar(graph, out)?;
    let grads = graph.backward(out, None)?;
    let mut ad = Vec::with_capacity(vars.len());
    for &v in &vars {
        let g = grads.get(v).ok_or_else(|| {
            Error::InvalidArgument("check_gradients: a leaf has no gradient".into())
        })?;
        ad.push(g.to_f64(graph.backend())?);
    }
    drop(grads);

    let mut seed = opts.seed;
    let mut reports = Vec::with_capacity(leaves.len());
    let mut perturbed = values.clone();
    for (li, shape) in shapes.iter().enumerate() {
        let scale = ad[li].iter().fold(1.0f64, |m, v| m.max(v.abs()));
        let floor = opts.floor * scale;
        let mut rep = LeafReport {
            leaf: li,
            shape: *shape,
            checked: 0,
            max_rel_err: 0.0,
            max_abs_err: 0.0,
            worst: None,
        };
        for e in pick(shape.len(), opts.max_elements_per_leaf, &mut seed) {
            let x = values[li][e];
            let h = (opts.step * x.abs().max(1.0)).log2().round().exp2();
            let mut at = |delta: f64| -> Result<f64> {
                perturbed[li][e] = x + delta;
                let (_, o) = evaluate(graph, &shapes, &perturbed, false, &mut f)?;
                scalar(graph, o)
            };
            let (m2, m1, p1, p2) = (at(-2.0 * h)?, at(-h)?, at(h)?, at(2.0 * h)?);
            perturbed[li][e] = x;
            let fd = (m2 - 8.0 * m1 + 8.0 * p1 - p2) / (12.0 * h);
            let a = ad[li][e];
            let abs = (a - fd).abs();
            let rel = abs / a.abs().max(fd.abs()).max(floor);
            // NaN counts as the worst error.
            let rel = if rel.is_nan() { f64::INFINITY } else { rel };
            if rel > rep.max_rel_err {
                rep.max_rel_err = rel;
                rep.worst = Some((e, a, fd));
            }
            rep.max_abs_err = rep.max_abs_err.max(abs);
            rep.checked += 1;
        }
        reports.push(rep);
    }
    let max_rel_err = reports.iter().fold(0.0f64, |m, r| m.max(r.max_rel_err));
    let checked = reports.iter().map(|r| r.checked).sum();
    Ok(CheckReport {
        value,
        leaves: reports,
        max_rel_err,
        checked,
    })
}
