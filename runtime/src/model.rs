//! A loaded model: an [`Artifact`] turned into networks the runtime evaluates.

use std::path::Path;
use std::sync::Arc;

use crate::artifact::{Artifact, ModelKind, Params};
use crate::controller::{ControlMatrix, Controller};
use crate::error::{Error, Result};
use crate::field::{Field, Potential};
use crate::nn::mlp::Mlp;
use crate::nn::otflow::OtFlow;
use crate::vpsde::VpSdeModel;
use crate::Real;

/// The network inside a loaded model.
#[derive(Clone)]
pub enum Network<T: Real> {
    /// An OT-Flow potential Φ(t, x); its field is −∇ₓΦ.
    OtFlow(Arc<OtFlow<T>>),
    /// An MLP velocity or score field.
    Mlp(Arc<Mlp<T>>),
}

/// A model ready to evaluate: the artifact's card plus its network in precision `T`.
#[derive(Clone)]
pub struct Model<T: Real> {
    artifact: Arc<Artifact>,
    network: Network<T>,
}

impl<T: Real> Model<T> {
    /// Builds the networks of an artifact (validating parameters again).
    pub fn from_artifact(artifact: Artifact) -> Result<Self> {
        let network = match &artifact.params {
            Params::OtFlow(p) => Network::OtFlow(Arc::new(OtFlow::new(p)?)),
            Params::Mlp(p) => Network::Mlp(Arc::new(Mlp::new(p)?)),
        };
        Ok(Model {
            artifact: Arc::new(artifact),
            network,
        })
    }

    /// Loads and validates a model file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_artifact(Artifact::load(path.as_ref())?)
    }

    /// Loads a model from the bytes of a model file.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        Self::from_artifact(Artifact::from_bytes(bytes)?)
    }

    /// The artifact (card, parameters, control map).
    pub fn artifact(&self) -> &Artifact {
        &self.artifact
    }

    /// The network.
    pub fn network(&self) -> &Network<T> {
        &self.network
    }

    /// State dimension d.
    pub fn dim(&self) -> usize {
        self.artifact.card.dim
    }

    /// What the network models.
    pub fn kind(&self) -> ModelKind {
        self.artifact.card.kind
    }

    /// The model's time interval [t0, t1]: data (or the initial time) at t0, the
    /// prior (or the horizon) at t1.
    pub fn time_interval(&self) -> (T, T) {
        let [a, b] = self.artifact.card.time;
        (T::of(a), T::of(b))
    }

    /// The vector field samplers integrate: −∇ₓΦ for a potential, the network itself
    /// for a velocity. A score network is not a velocity: wrap it in a VP-SDE sampler.
    pub fn field(&self) -> Result<Arc<dyn Field<T>>> {
        match (&self.network, self.kind()) {
            (Network::OtFlow(p), _) => Ok(p.clone() as Arc<dyn Field<T>>),
            (Network::Mlp(m), ModelKind::Velocity) => Ok(m.clone() as Arc<dyn Field<T>>),
            (Network::Mlp(_), kind) => Err(Error::Unsupported(format!(
                "a {kind:?} MLP is not a velocity field; sample it with the VP-SDE sampler (Model::vpsde)"
            ))),
        }
    }

    /// A score model's VP-SDE sampler pieces: the network with the card's schedule
    /// (or [`VpSde::default`](crate::vpsde::VpSde::default) without a `vpsde` entry),
    /// sampled from the end t1 of the model's time interval down to ε, in data
    /// coordinates through the card's normalization.
    ///
    /// Errors: [`Error::Unsupported`] for a model that is not a score model.
    pub fn vpsde(&self) -> Result<VpSdeModel<T>> {
        match (&self.network, self.artifact.vpsde()) {
            (Network::Mlp(m), Some(sde)) => VpSdeModel::new(
                m.clone() as Arc<dyn Field<T>>,
                sde,
                self.artifact.card.time[1],
                self.artifact.card.normalization.clone(),
            ),
            _ => Err(Error::Unsupported(format!(
                "a {} model has no VP-SDE (only score models do)",
                self.kind().name()
            ))),
        }
    }

    /// The potential, for models of kind `potential`.
    pub fn potential(&self) -> Result<Arc<dyn Potential<T>>> {
        match &self.network {
            Network::OtFlow(p) => Ok(p.clone() as Arc<dyn Potential<T>>),
            Network::Mlp(_) => Err(Error::Unsupported(
                "this model has no potential (it is an MLP field); controllers need a potential"
                    .into(),
            )),
        }
    }

    /// A feedback controller over the model: the artifact's control law
    /// u = u(x, ∇ₓΦ) when it has one, else u = −M∇ₓΦ with its control map (or −∇ₓΦ).
    pub fn controller(&self) -> Result<Controller<T>> {
        if let Some(law) = self.artifact.control_law() {
            return Controller::with_law(self.potential()?, law.clone());
        }
        let map = match &self.artifact.control_map {
            Some(m) => Some(ControlMatrix::new(
                m.rows,
                m.cols,
                m.matrix.iter().map(|v| T::of(*v)).collect(),
            )?),
            None => None,
        };
        Controller::new(self.potential()?, map)
    }
}
