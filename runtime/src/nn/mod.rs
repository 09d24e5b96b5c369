//! Networks: the OT-Flow potential and MLP velocity/score fields.
//!
//! Parameters travel between the trainer, the artifact format and the runtime as the
//! plain structs of this module, in f64 (the artifact may store them as f32); the
//! evaluators ([`otflow::OtFlow`], [`mlp::Mlp`]) convert them to the compute type.

pub mod mlp;
pub mod otflow;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Parameters of the OT-Flow potential (MATH.md §1), named as in the original
/// PyTorch code:
///
/// Φ(s) = wᵀN(s) + ½ sᵀ(AᵀA)s + c_wᵀs + c_b, s = (x, t) ∈ R^{d+1}.
#[derive(Clone, Debug, PartialEq)]
pub struct OtFlowParams {
    /// State dimension d.
    pub d: usize,
    /// ResNet width m.
    pub m: usize,
    /// Number of ResNet layers nTh ≥ 2 (step size η = 1/(nTh − 1)).
    pub n_th: usize,
    /// Rank r of A (the original code uses min(10, d + 1)).
    pub r: usize,
    /// `N.layers.i.weight`: K_0 is m × (d+1), K_i (i ≥ 1) is m × m, row-major.
    pub k: Vec<Vec<f64>>,
    /// `N.layers.i.bias`: b_i, length m each.
    pub b: Vec<Vec<f64>>,
    /// `w.weight`: w, length m.
    pub w: Vec<f64>,
    /// `A`: r × (d+1), row-major.
    pub a: Vec<f64>,
    /// `c.weight`: the linear term, length d + 1.
    pub c_weight: Vec<f64>,
    /// `c.bias`: the constant term.
    pub c_bias: f64,
}

impl OtFlowParams {
    /// Takes the parameters out of tensors named as in the original PyTorch code
    /// (`N.layers.i.weight`, `N.layers.i.bias`, `w.weight`, `A`, `c.weight`, `c.bias`),
    /// flattened row-major: a PyTorch `state_dict` or a model file's tensors. A missing
    /// tensor is [`Error::Format`]; sizes and values are checked by the consumers
    /// ([`otflow::OtFlow::new`], the artifact loader).
    pub fn from_state_dict(
        d: usize,
        m: usize,
        n_th: usize,
        r: usize,
        tensors: &mut BTreeMap<String, Vec<f64>>,
    ) -> Result<Self> {
        let mut take = |name: &str| {
            tensors
                .remove(name)
                .ok_or_else(|| Error::Format(format!("missing tensor `{name}`")))
        };
        let mut k = Vec::with_capacity(n_th);
        let mut b = Vec::with_capacity(n_th);
        for i in 0..n_th {
            k.push(take(&format!("N.layers.{i}.weight"))?);
            b.push(take(&format!("N.layers.{i}.bias"))?);
        }
        let c_bias = take("c.bias")?;
        let c_bias = match c_bias.as_slice() {
            [v] => *v,
            other => {
                return Err(Error::Format(format!(
                    "tensor `c.bias` has {} values, expected 1",
                    other.len()
                )))
            }
        };
        Ok(OtFlowParams {
            d,
            m,
            n_th,
            r,
            k,
            b,
            w: take("w.weight")?,
            a: take("A")?,
            c_weight: take("c.weight")?,
            c_bias,
        })
    }
}

/// Activation of an MLP's hidden layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// x · sigmoid(x).
    Silu,
    /// tanh(x).
    Tanh,
    /// log(1 + eˣ), computed stably.
    Softplus,
}

impl Activation {
    /// The activation's name as written in model cards.
    pub fn name(self) -> &'static str {
        match self {
            Activation::Silu => "silu",
            Activation::Tanh => "tanh",
            Activation::Softplus => "softplus",
        }
    }
}

/// Parameters of an MLP field v(x, t) = W_L σ(… σ(W_0 [x, t] + b_0) …) + b_L.
///
/// The input is the state with the time appended (d + 1 values); the output has d
/// values. Tensor names in artifacts: `layers.i.weight` (out × in, row-major) and
/// `layers.i.bias`.
#[derive(Clone, Debug, PartialEq)]
pub struct MlpParams {
    /// State dimension d.
    pub d: usize,
    /// Hidden widths (at least one).
    pub hidden: Vec<usize>,
    /// Activation between layers (not after the last).
    pub activation: Activation,
    /// Layer weights, out × in row-major: first `hidden[0] × (d+1)`, last `d × hidden[last]`.
    pub weights: Vec<Vec<f64>>,
    /// Layer biases.
    pub biases: Vec<Vec<f64>>,
}
