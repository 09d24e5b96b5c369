//! The MLP field v(x, t) = W_L σ(… σ(W_0 [x, t] + b_0) …) + b_L as graph ops, with its
//! parameters in a [`ParamSet`] laid out as the runtime's [`MlpParams`] and the
//! artifact's tensors.
//!
//! - [`MlpNet`]: the architecture (state dimension d, hidden widths, activation) and
//!   the parameters, named `layers.i.weight` (shape `[out, in]`, row-major) and
//!   `layers.i.bias` (`[out]`), in the order `layers.0.weight`, `layers.0.bias`,
//!   `layers.1.weight`, … — the names and layout of PyTorch's `nn.Linear` stack, of
//!   [`MlpParams`] and of the model file, so export is a copy;
//! - [`MlpNet::init`]: PyTorch's default `nn.Linear` initialization, every weight and
//!   bias uniform on (−1/√fan_in, 1/√fan_in) (`kaiming_uniform_(a = √5)` reduces to
//!   that bound), drawn from the runtime's counter-based generator
//!   ([`Draws`] on [`INIT_STREAM`], sample = layer, step = 0
//!   for weights and 1 for biases): the values are a pure function of the seed;
//! - [`MlpVars`]: the parameters recorded on a [`Graph`] and the forward pass
//!   [`MlpVars::forward`], one GEMM per layer over the whole batch.
//!
//! The input is the state with the time appended, [x, t] (d + 1 columns), as the
//! runtime's [`Mlp`](socflow_runtime::nn::mlp::Mlp) reads it; the last layer has no
//! activation.

use socflow_runtime::brownian::Stream;
use socflow_runtime::nn::{Activation, MlpParams};

use crate::autodiff::{Backend, Gradients, Graph, Var};
use crate::autodiff::{DType, Tensor};
use crate::data::rng::{Draws, FIRST_FREE_AFTER_DATA};
use crate::error::{Error, Result};
use crate::optim::ParamSet;

/// Stream of [`MlpNet::init`]'s draws (the first one the data module leaves free).
pub const INIT_STREAM: Stream = FIRST_FREE_AFTER_DATA;

/// Largest state dimension, hidden width and number of hidden layers accepted: those
/// of the model file ([`socflow_runtime::artifact`]), so that every net exports.
const MAX_DIM: usize = socflow_runtime::artifact::MAX_DIM;
const MAX_WIDTH: usize = socflow_runtime::artifact::MAX_WIDTH;
const MAX_LAYERS: usize = socflow_runtime::artifact::MAX_LAYERS;

/// Checks a config's hidden widths (flow matching, CNF, diffusion): at least one
/// layer, each of width ≥ 1.
pub(crate) fn validate_hidden(hidden: &[usize]) -> Result<()> {
    if hidden.is_empty() || hidden.contains(&0) {
        return Err(Error::InvalidArgument(format!(
            "hidden widths {hidden:?}: need at least one layer, each of width ≥ 1"
        )));
    }
    Ok(())
}

/// Name of layer `l`'s weight.
pub fn weight_name(l: usize) -> String {
    format!("layers.{l}.weight")
}

/// Name of layer `l`'s bias.
pub fn bias_name(l: usize) -> String {
    format!("layers.{l}.bias")
}

/// An MLP field [x, t] → R^d: architecture and parameters (f64 master copy).
#[derive(Clone, Debug, PartialEq)]
pub struct MlpNet {
    d: usize,
    hidden: Vec<usize>,
    activation: Activation,
    params: ParamSet,
}

fn check_arch(d: usize, hidden: &[usize]) -> Result<()> {
    if d == 0 || d > MAX_DIM {
        return Err(Error::InvalidArgument(format!(
            "MLP state dimension d = {d} (must be 1..={MAX_DIM})"
        )));
    }
    if hidden.is_empty() || hidden.len() > MAX_LAYERS {
        return Err(Error::InvalidArgument(format!(
            "MLP with {} hidden layers (must be 1..={MAX_LAYERS})",
            hidden.len()
        )));
    }
    if let Some(&h) = hidden.iter().find(|&&h| h == 0 || h > MAX_WIDTH) {
        return Err(Error::InvalidArgument(format!(
            "MLP hidden width {h} (must be 1..={MAX_WIDTH})"
        )));
    }
    Ok(())
}

impl MlpNet {
    /// A net with PyTorch's default initialization drawn from `seed` (see the module
    /// documentation).
    ///
    /// Errors: [`Error::InvalidArgument`] for d or a width of 0, no hidden layer, or
    /// sizes beyond the model file's limits.
    pub fn init(d: usize, hidden: &[usize], activation: Activation, seed: u64) -> Result<Self> {
        check_arch(d, hidden)?;
        let dims = layer_dims(d, hidden);
        let mut params = ParamSet::new();
        for (l, io) in dims.windows(2).enumerate() {
            let (n_in, n_out) = (io[0], io[1]);
            let bound = 1.0 / (n_in as f64).sqrt();
            let uniform = |step: u64, n: usize| -> Result<Vec<f64>> {
                let mut draws = Draws::new(seed, INIT_STREAM, l as u64, step)?;
                Ok((0..n)
                    .map(|_| bound * (2.0 * draws.uniform() - 1.0))
                    .collect())
            };
            let w = uniform(0, n_out * n_in)?;
            let b = uniform(1, n_out)?;
            params.push(weight_name(l), vec![n_out, n_in], w)?;
            params.push(bias_name(l), vec![n_out], b)?;
        }
        Ok(MlpNet {
            d,
            hidden: hidden.to_vec(),
            activation,
            params,
        })
    }

    /// A net holding the runtime's parameters (checked against their sizes).
    ///
    /// Errors: [`Error::InvalidArgument`] for bad sizes or a non-finite value.
    pub fn from_params(p: &MlpParams) -> Result<Self> {
        check_arch(p.d, &p.hidden)?;
        let dims = layer_dims(p.d, &p.hidden);
        let n_layers = dims.len() - 1;
        if p.weights.len() != n_layers || p.biases.len() != n_layers {
            return Err(Error::InvalidArgument(format!(
                "MLP with {} hidden layers needs {n_layers} weights and biases, got {} and {}",
                p.hidden.len(),
                p.weights.len(),
                p.biases.len()
            )));
        }
        let mut params = ParamSet::new();
        for (l, io) in dims.windows(2).enumerate() {
            params.push(weight_name(l), vec![io[1], io[0]], p.weights[l].clone())?;
            params.push(bias_name(l), vec![io[1]], p.biases[l].clone())?;
        }
        let net = MlpNet {
            d: p.d,
            hidden: p.hidden.clone(),
            activation: p.activation,
            params,
        };
        net.check()?;
        Ok(net)
    }

    /// A net from a parameter set with the names, order and shapes of
    /// [`MlpNet::params`] (a checkpoint's parameters, say).
    ///
    /// Errors: [`Error::InvalidArgument`] when the set does not fit the architecture
    /// or holds a non-finite value.
    pub fn from_param_set(
        d: usize,
        hidden: &[usize],
        activation: Activation,
        params: ParamSet,
    ) -> Result<Self> {
        check_arch(d, hidden)?;
        let net = MlpNet {
            d,
            hidden: hidden.to_vec(),
            activation,
            params,
        };
        net.check()?;
        Ok(net)
    }

    /// Checks that the parameters have the names, order and shapes the architecture
    /// requires, and finite values.
    pub fn check(&self) -> Result<()> {
        let dims = layer_dims(self.d, &self.hidden);
        let n = 2 * (dims.len() - 1);
        let p = &self.params;
        if p.names.len() != n || p.shapes.len() != n || p.values.len() != n {
            return Err(Error::InvalidArgument(format!(
                "MLP parameter set with {} arrays; the architecture has {n}",
                p.names.len()
            )));
        }
        for (l, io) in dims.windows(2).enumerate() {
            let expected = [
                (weight_name(l), vec![io[1], io[0]]),
                (bias_name(l), vec![io[1]]),
            ];
            for (k, (name, shape)) in expected.into_iter().enumerate() {
                let i = 2 * l + k;
                if p.names[i] != name || p.shapes[i] != shape {
                    return Err(Error::InvalidArgument(format!(
                        "MLP parameter {i} is `{}` {:?}; expected `{name}` {shape:?}",
                        p.names[i], p.shapes[i]
                    )));
                }
                let len: usize = shape.iter().product();
                if p.values[i].len() != len {
                    return Err(Error::Length {
                        what: "MLP parameter values",
                        found: p.values[i].len(),
                        expected: len,
                    });
                }
                if p.values[i].iter().any(|v| !v.is_finite()) {
                    return Err(Error::NonFinite(format!("MLP parameter `{name}`")));
                }
            }
        }
        Ok(())
    }

    /// State dimension d (the input has d + 1 columns, the output d).
    pub fn dim(&self) -> usize {
        self.d
    }

    /// Hidden widths.
    pub fn hidden(&self) -> &[usize] {
        &self.hidden
    }

    /// Activation of the hidden layers.
    pub fn activation(&self) -> Activation {
        self.activation
    }

    /// Layer sizes: d + 1, the hidden widths, d.
    pub fn layer_dims(&self) -> Vec<usize> {
        layer_dims(self.d, &self.hidden)
    }

    /// The parameters (the optimizer's view).
    pub fn params(&self) -> &ParamSet {
        &self.params
    }

    /// The parameters, mutably (for an optimizer step). Their names and shapes must
    /// stay as they are; [`MlpNet::check`] verifies them.
    pub fn params_mut(&mut self) -> &mut ParamSet {
        &mut self.params
    }

    /// The runtime's parameters (a copy: weights `[out, in]` row-major, biases).
    pub fn to_params(&self) -> Result<MlpParams> {
        self.check()?;
        let n_layers = self.hidden.len() + 1;
        Ok(MlpParams {
            d: self.d,
            hidden: self.hidden.clone(),
            activation: self.activation,
            weights: (0..n_layers)
                .map(|l| self.params.values[2 * l].clone())
                .collect(),
            biases: (0..n_layers)
                .map(|l| self.params.values[2 * l + 1].clone())
                .collect(),
        })
    }

    /// Records the parameters on `g` as leaves of `dtype` (each value rounded once),
    /// in the order of [`MlpNet::params`].
    pub fn record<B: Backend>(
        &self,
        g: &mut Graph<B>,
        dtype: DType,
        requires_grad: bool,
    ) -> Result<MlpVars> {
        self.check()?;
        let mut vars = Vec::with_capacity(self.params.len());
        for (shape, values) in self.params.shapes.iter().zip(&self.params.values) {
            let (rows, cols) = match shape.as_slice() {
                [out, inp] => (*out, *inp),
                [out] => (1, *out),
                _ => {
                    return Err(Error::InvalidArgument(format!(
                        "MLP parameter of shape {shape:?}"
                    )))
                }
            };
            vars.push(g.leaf_f64(rows, cols, values, dtype, requires_grad)?);
        }
        MlpVars::from_vars(g, self.d, &self.hidden, self.activation, &vars)
    }

    /// Evaluates the field on a batch in `dtype` (a graph of its own, no gradient):
    /// `x` is `n × d` row-major, `t` has `n` times; returns `n × d` velocities,
    /// widened to f64.
    pub fn eval<B: Backend>(
        &self,
        backend: B,
        x: &[f64],
        t: &[f64],
        dtype: DType,
    ) -> Result<Vec<f64>> {
        let n = t.len();
        crate::error::check_len("MLP input states", x.len(), n * self.d)?;
        let mut g = Graph::new(backend);
        let vars = self.record(&mut g, dtype, false)?;
        let xv = g.leaf_f64(n, self.d, x, dtype, false)?;
        let tv = g.leaf_f64(n, 1, t, dtype, false)?;
        let out = vars.forward(&mut g, xv, tv)?;
        Ok(g.to_f64(out)?)
    }
}

fn layer_dims(d: usize, hidden: &[usize]) -> Vec<usize> {
    let mut dims = Vec::with_capacity(hidden.len() + 2);
    dims.push(d + 1);
    dims.extend_from_slice(hidden);
    dims.push(d);
    dims
}

/// The MLP's parameters on a graph: weight W_l (out × in) and bias b_l (1 × out) of
/// every layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MlpVars {
    /// State dimension d.
    pub d: usize,
    /// Activation of the hidden layers.
    pub activation: Activation,
    /// `layers.l.weight`, out × in.
    pub weights: Vec<Var>,
    /// `layers.l.bias`, 1 × out.
    pub biases: Vec<Var>,
}

impl MlpVars {
    /// Wraps handles given in the order of [`MlpNet::params`] (`layers.0.weight`,
    /// `layers.0.bias`, …), checking their shapes (a gradient checker's leaves, say).
    pub fn from_vars<B: Backend>(
        g: &Graph<B>,
        d: usize,
        hidden: &[usize],
        activation: Activation,
        vars: &[Var],
    ) -> Result<Self> {
        check_arch(d, hidden)?;
        let dims = layer_dims(d, hidden);
        let n_layers = dims.len() - 1;
        if vars.len() != 2 * n_layers {
            return Err(Error::Length {
                what: "MLP parameter handles",
                found: vars.len(),
                expected: 2 * n_layers,
            });
        }
        for (l, io) in dims.windows(2).enumerate() {
            let (w, b) = (g.shape(vars[2 * l])?, g.shape(vars[2 * l + 1])?);
            if (w.rows, w.cols) != (io[1], io[0]) || (b.rows, b.cols) != (1, io[1]) {
                return Err(Error::InvalidArgument(format!(
                    "MLP layer {l}: weight {w} and bias {b}; expected {}×{} and 1×{}",
                    io[1], io[0], io[1]
                )));
            }
        }
        Ok(MlpVars {
            d,
            activation,
            weights: vars.iter().step_by(2).copied().collect(),
            biases: vars.iter().skip(1).step_by(2).copied().collect(),
        })
    }

    /// Every handle, in the order of [`MlpNet::params`].
    pub fn all(&self) -> Vec<Var> {
        self.weights
            .iter()
            .zip(&self.biases)
            .flat_map(|(&w, &b)| [w, b])
            .collect()
    }

    /// v(x, t) for a batch: `x` is B × d, `t` is B × 1; returns B × d.
    pub fn forward<B: Backend>(&self, g: &mut Graph<B>, x: Var, t: Var) -> Result<Var> {
        let s = g.concat_cols(&[x, t])?;
        self.forward_input(g, s)
    }

    /// v on the assembled input s = [x, t], B × (d + 1).
    pub fn forward_input<B: Backend>(&self, g: &mut Graph<B>, s: Var) -> Result<Var> {
        let n_layers = self.weights.len();
        let mut h = s;
        for (l, (&w, &b)) in self.weights.iter().zip(&self.biases).enumerate() {
            let z = g.matmul(h, w, false, true)?;
            let z = g.add(z, b)?;
            h = if l + 1 < n_layers {
                match self.activation {
                    Activation::Silu => g.silu(z)?,
                    Activation::Tanh => g.tanh(z)?,
                    Activation::Softplus => g.softplus(z)?,
                }
            } else {
                z
            };
        }
        Ok(h)
    }

    /// The gradients of the parameters from a backward pass, widened to f64, in the
    /// order of [`MlpNet::params`] (the optimizer's layout; a bias's 1 × out gradient
    /// is its `[out]` array).
    pub fn gradients<B: Backend>(
        &self,
        g: &Graph<B>,
        grads: &Gradients<B>,
    ) -> Result<Vec<Vec<f64>>> {
        self.all()
            .into_iter()
            .map(|v| {
                let t: &Tensor<B> = grads.get(v).ok_or_else(|| {
                    Error::InvalidArgument("an MLP parameter has no gradient".into())
                })?;
                Ok(t.to_f64(g.backend())?)
            })
            .collect()
    }
}
