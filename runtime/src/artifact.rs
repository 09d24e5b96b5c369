//! Model artifacts: one safetensors file per trained model, with a JSON model card.
//!
//! A socflow model file is a plain [safetensors] file, so Python reads it with
//! `safetensors.numpy.load_file`. Its `__metadata__` map holds three strings:
//!
//! | key              | value                                   |
//! |------------------|-----------------------------------------|
//! | `format`         | [`FORMAT_NAME`] (`"socflow"`)           |
//! | `format_version` | the card's version in decimal (`"1"`)   |
//! | `card`           | the [`ModelCard`] as JSON               |
//!
//! The tensors are the network's parameters under the names of the original PyTorch
//! code (see [`Artifact::tensor_shapes`]), all stored in one little-endian floating
//! type ([`StorageDtype`]), plus `control_map` for SOC value functions with a
//! control-affine dynamics and a constant control map.
//!
//! Versions: a file is written at the oldest version that expresses it, so an older
//! runtime reads every file it can. Version 1 is the layout above; version 2 adds the
//! card field `control_law`, a state-dependent feedback u = u(x, ∇ₓΦ) such as the
//! quadcopter's u = −R⁻¹B(x)ᵀ∇ₓΦ ([`ControlLaw`]). A version-1 runtime refuses a
//! version-2 file with [`Error::UnsupportedVersion`] instead of applying a wrong law.
//! Version 3 adds the card field `vpsde` of score models: the VP-SDE's schedule, the
//! end ε of sampling and what the network outputs ([`VpSde`]); a score model without
//! it (versions 1 and 2) uses [`VpSde::default`], and an older runtime refuses a
//! version-3 file rather than sample it with the wrong schedule.
//!
//! Loading ([`Artifact::from_bytes`], [`Artifact::load`]) trusts nothing: it checks the
//! safetensors framing, the header, the card (unknown keys are errors, so typos are
//! caught), the limits on every size ([`MAX_DIM`], [`MAX_WIDTH`], [`MAX_LAYERS`],
//! [`MAX_VALUES`], [`MAX_HEADER_BYTES`], [`MAX_FILE_BYTES`]), the exact set of tensors,
//! their dtypes and shapes against the card, and that every value is finite. It returns
//! a typed [`Error`] and never panics, whatever the bytes.
//!
//! Files are written deterministically (the same artifact gives the same bytes) and
//! atomically ([`Artifact::save`]: temporary file, fsync, rename).
//!
//! [safetensors]: https://github.com/huggingface/safetensors

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::path::Path;

use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use crate::nn::{Activation, MlpParams, OtFlowParams};
use crate::vpsde::VpSde;
use crate::{Error, Real, Result};

/// Format name stored under `format` in the safetensors metadata and in the card.
pub const FORMAT_NAME: &str = "socflow";

/// Newest format version this runtime writes and reads.
pub const FORMAT_VERSION: u32 = 3;

/// The oldest format version, what a model without a [`ControlLaw`] is written as.
pub const BASE_FORMAT_VERSION: u32 = 1;

/// The first format version with the card field `control_law` ([`ControlLaw`]).
pub const CONTROL_LAW_VERSION: u32 = 2;

/// The first format version with the card field `vpsde` ([`VpSde`]).
pub const VPSDE_VERSION: u32 = 3;

/// Largest state dimension (and control dimension) a model file may declare.
pub const MAX_DIM: usize = 1 << 16;

/// Largest hidden width (OT-Flow m, MLP hidden sizes) and OT-Flow rank r.
pub const MAX_WIDTH: usize = 1 << 14;

/// Largest number of layers (OT-Flow nTh, MLP hidden layers + 1).
pub const MAX_LAYERS: usize = 64;

/// Largest number of stored values (parameters plus the control map).
pub const MAX_VALUES: u64 = 1 << 28;

/// Largest safetensors JSON header.
pub const MAX_HEADER_BYTES: u64 = 1 << 24;

/// Largest model file [`Artifact::load`] reads: [`MAX_VALUES`] values in f64 plus the
/// largest header (about 2 GiB). The size is checked before anything is read.
pub const MAX_FILE_BYTES: u64 = 8 + MAX_HEADER_BYTES + 8 * MAX_VALUES;

const META_FORMAT: &str = "format";
const META_VERSION: &str = "format_version";
const META_CARD: &str = "card";
const CONTROL_MAP: &str = "control_map";

/// What a model computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// A scalar potential Φ(t, x): an OT-Flow potential or an SOC value function.
    Potential,
    /// A velocity field v(t, x) (flow matching, CNF).
    Velocity,
    /// A score field ∇ₓ log p_t(x) (diffusion models).
    Score,
}

impl ModelKind {
    /// The kind's name as written in model cards.
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Potential => "potential",
            ModelKind::Velocity => "velocity",
            ModelKind::Score => "score",
        }
    }
}

/// The network architecture and its sizes (the state dimension is [`ModelCard::dim`]).
///
/// In JSON the variant is a `type` field: `{"type":"otflow","m":16,"n_th":2,"r":3}`,
/// `{"type":"mlp","hidden":[64,64],"activation":"silu"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Architecture {
    /// The OT-Flow potential (ResNet with log-cosh activation plus a quadratic term).
    OtFlow {
        /// ResNet width.
        m: usize,
        /// Number of ResNet layers (≥ 2).
        n_th: usize,
        /// Rank of the quadratic term's A.
        r: usize,
    },
    /// A multilayer perceptron on (x, t).
    Mlp {
        /// Hidden widths (at least one).
        hidden: Vec<usize>,
        /// Activation between layers.
        activation: Activation,
    },
}

/// The floating-point type the tensors are stored in (little-endian).
///
/// Loading converts every stored type to f64. Writing rounds to nearest, ties to even;
/// a value that overflows the storage type is an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageDtype {
    /// IEEE binary16 (safetensors `F16`).
    F16,
    /// bfloat16 (safetensors `BF16`; Python needs `ml_dtypes` to read it).
    Bf16,
    /// IEEE binary32 (safetensors `F32`).
    F32,
    /// IEEE binary64 (safetensors `F64`).
    F64,
}

impl StorageDtype {
    /// The name as written in model cards ("f16", "bf16", "f32", "f64").
    pub fn name(self) -> &'static str {
        match self {
            StorageDtype::F16 => "f16",
            StorageDtype::Bf16 => "bf16",
            StorageDtype::F32 => "f32",
            StorageDtype::F64 => "f64",
        }
    }

    /// Bytes per stored value.
    pub fn size(self) -> usize {
        match self {
            StorageDtype::F16 | StorageDtype::Bf16 => 2,
            StorageDtype::F32 => 4,
            StorageDtype::F64 => 8,
        }
    }

    fn safetensors(self) -> Dtype {
        match self {
            StorageDtype::F16 => Dtype::F16,
            StorageDtype::Bf16 => Dtype::BF16,
            StorageDtype::F32 => Dtype::F32,
            StorageDtype::F64 => Dtype::F64,
        }
    }
}

/// Data normalization: a data point is x = mean + std ⊙ x_model.
///
/// The model works in normalized coordinates; the log-density of a data point is the
/// model's log-density minus [`Normalization::log_det`] = Σ ln std.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Normalization {
    /// Per-coordinate mean (length dim).
    pub mean: Vec<f64>,
    /// Per-coordinate scale, positive (length dim).
    pub std: Vec<f64>,
}

impl Normalization {
    /// Builds a normalization, checking equal lengths, finite values and std > 0.
    pub fn new(mean: Vec<f64>, std: Vec<f64>) -> Result<Self> {
        let n = Normalization { mean, std };
        n.validate(n.mean.len()).map_err(format_to_argument)?;
        Ok(n)
    }

    /// The dimension it applies to.
    pub fn dim(&self) -> usize {
        self.mean.len()
    }

    /// log |det| of the map model → data: Σ ln std.
    pub fn log_det(&self) -> f64 {
        self.std.iter().map(|s| s.ln()).sum()
    }

    /// Maps row-major rows of model coordinates to data coordinates, in place:
    /// x ← mean + std ⊙ x.
    pub fn to_data<T: Real>(&self, rows: &mut [T]) -> Result<()> {
        self.check_rows(rows.len())?;
        for row in rows.chunks_exact_mut(self.dim()) {
            for ((x, &m), &s) in row.iter_mut().zip(&self.mean).zip(&self.std) {
                *x = T::of(m + s * x.f64());
            }
        }
        Ok(())
    }

    /// Maps row-major rows of data coordinates to model coordinates, in place:
    /// x ← (x − mean) / std.
    pub fn to_model<T: Real>(&self, rows: &mut [T]) -> Result<()> {
        self.check_rows(rows.len())?;
        for row in rows.chunks_exact_mut(self.dim()) {
            for ((x, &m), &s) in row.iter_mut().zip(&self.mean).zip(&self.std) {
                *x = T::of((x.f64() - m) / s);
            }
        }
        Ok(())
    }

    fn check_rows(&self, len: usize) -> Result<()> {
        let d = self.dim();
        if d == 0 || len % d != 0 {
            return Err(Error::InvalidArgument(format!(
                "normalization: {len} values are not whole rows of dimension {d}"
            )));
        }
        Ok(())
    }

    fn validate(&self, dim: usize) -> Result<()> {
        if self.mean.len() != dim || self.std.len() != dim {
            return Err(Error::Format(format!(
                "normalization has {} means and {} stds, expected {dim} of each",
                self.mean.len(),
                self.std.len()
            )));
        }
        crate::error::check_finite("normalization mean", &self.mean)?;
        crate::error::check_finite("normalization std", &self.std)?;
        if let Some(s) = self.std.iter().find(|&&s| s <= 0.0) {
            return Err(Error::Format(format!(
                "normalization std must be positive, found {s}"
            )));
        }
        Ok(())
    }
}

/// The control map of a control-affine SOC problem: u = −M ∇ₓΦ with M = R⁻¹Bᵀ.
///
/// Stored as the tensor `control_map` of shape [rows, cols]; cols is the state
/// dimension and rows the control dimension (the card's `control_dim`).
#[derive(Clone, Debug, PartialEq)]
pub struct ControlMap {
    /// Control dimension.
    pub rows: usize,
    /// State dimension.
    pub cols: usize,
    /// M, rows × cols, row-major.
    pub matrix: Vec<f64>,
}

impl ControlMap {
    /// Builds a control map, checking sizes, limits and finiteness.
    pub fn new(rows: usize, cols: usize, matrix: Vec<f64>) -> Result<Self> {
        let c = ControlMap { rows, cols, matrix };
        c.validate().map_err(format_to_argument)?;
        Ok(c)
    }

    /// Computes u = −M ∇ₓΦ for one state (no allocation).
    pub fn control<T: Real>(&self, grad_x: &[T], u: &mut [T]) -> Result<()> {
        crate::error::check_len("control map gradient", grad_x.len(), self.cols)?;
        crate::error::check_len("control map output", u.len(), self.rows)?;
        for (ui, row) in u.iter_mut().zip(self.matrix.chunks_exact(self.cols)) {
            let s: f64 = row.iter().zip(grad_x).map(|(&m, g)| m * g.f64()).sum();
            *ui = T::of(-s);
        }
        Ok(())
    }

    fn validate(&self) -> Result<()> {
        check_size("control dimension", self.rows, 1, MAX_DIM)?;
        check_size("control map columns", self.cols, 1, MAX_DIM)?;
        let n = self.rows as u64 * self.cols as u64;
        if n > MAX_VALUES {
            return Err(Error::Limit(format!(
                "control map has {n} entries, limit {MAX_VALUES}"
            )));
        }
        if self.matrix.len() as u64 != n {
            return Err(Error::Shape {
                name: CONTROL_MAP.into(),
                found: vec![self.matrix.len()],
                expected: vec![self.rows, self.cols],
            });
        }
        crate::error::check_finite("tensor `control_map`", &self.matrix)
    }
}

/// A state-dependent feedback law u = u(x, ∇ₓΦ) stored in the model card's
/// `control_law` (format version [`CONTROL_LAW_VERSION`]), for SOC problems whose
/// optimal control is not a constant matrix times ∇ₓΦ.
///
/// In JSON the variant is a `type` field:
/// `{"type":"quadcopter","mass":1.0,"gravity":9.81,"control_weight":2.0}`; an unknown
/// type is a format error naming the known ones.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ControlLaw {
    /// The 12-D quadcopter of Onken et al. (2022): see [`QuadcopterLaw`].
    Quadcopter(QuadcopterLaw),
}

impl ControlLaw {
    /// The state dimension the law applies to.
    pub fn state_dim(&self) -> usize {
        match self {
            ControlLaw::Quadcopter(_) => QuadcopterLaw::STATE_DIM,
        }
    }

    /// The control dimension.
    pub fn control_dim(&self) -> usize {
        match self {
            ControlLaw::Quadcopter(_) => QuadcopterLaw::CONTROL_DIM,
        }
    }

    /// Computes u(x, ∇ₓΦ) for one state (no allocation); checks lengths.
    pub fn control<T: Real>(&self, x: &[T], grad_x: &[T], u: &mut [T]) -> Result<()> {
        match self {
            ControlLaw::Quadcopter(q) => q.control(x, grad_x, u),
        }
    }

    /// The law's `type` as written in model cards.
    pub fn name(&self) -> &'static str {
        match self {
            ControlLaw::Quadcopter(_) => "quadcopter",
        }
    }

    /// A one-line description (what `socflow inspect` prints).
    pub fn describe(&self) -> String {
        match self {
            ControlLaw::Quadcopter(q) => format!(
                "quadcopter, u = -(1/r) B(x)^T grad_x Phi with mass {}, r = {} (gravity {})",
                q.mass, q.control_weight, q.gravity
            ),
        }
    }

    fn validate(&self) -> Result<()> {
        match self {
            ControlLaw::Quadcopter(q) => q.validate(),
        }
    }
}

/// The optimal feedback of the 12-D quadcopter of Onken et al. (2022) as NeuralSOC
/// trains it: state x = (x, y, z, ψ, θ, φ, vx, vy, vz, vψ, vθ, vφ), controls
/// (thrust, τψ, τθ, τφ), dynamics ẋ = a(x) + B(x)u with
/// a = (v, (vψ, vθ, vφ), 0, 0, −gravity, 0, 0, 0), running cost (r/2)‖u‖² + const, so
///
/// ```text
/// u = −(1/r) B(x)ᵀ ∇ₓΦ:   u₀ = −(1/r)(b₆p₆ + b₇p₇ + b₈p₈),   u₁,₂,₃ = −(1/r)(p₉, p₁₀, p₁₁)
/// b₆ = (sin ψ sin φ + cos ψ sin θ cos φ)/m
/// b₇ = (−cos ψ sin φ + sin ψ sin θ cos φ)/m
/// b₈ = cos θ cos φ / m
/// ```
///
/// (p = ∇ₓΦ). Gravity enters the drift, not the law; it is recorded so the file names
/// the dynamics its controller was trained for.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuadcopterLaw {
    /// Mass m (> 0).
    pub mass: f64,
    /// Gravity (finite; the drift's, recorded with the law).
    pub gravity: f64,
    /// r in R = rI, the control cost (r/2)‖u‖² (> 0; NeuralSOC's L = 2 + ‖u‖² has r = 2).
    pub control_weight: f64,
}

impl QuadcopterLaw {
    /// State dimension of the quadcopter.
    pub const STATE_DIM: usize = 12;
    /// Control dimension of the quadcopter (thrust and three torques).
    pub const CONTROL_DIM: usize = 4;

    /// A law with these parameters; checks that they are finite and mass and r positive.
    pub fn new(mass: f64, gravity: f64, control_weight: f64) -> Result<Self> {
        let q = QuadcopterLaw {
            mass,
            gravity,
            control_weight,
        };
        q.validate().map_err(format_to_argument)?;
        Ok(q)
    }

    /// The thrust column (b₆, b₇, b₈) of B(x) at the angles (ψ, θ, φ) = (x₃, x₄, x₅).
    pub fn thrust_direction<T: Real>(&self, x: &[T]) -> Result<[T; 3]> {
        crate::error::check_len("quadcopter state", x.len(), Self::STATE_DIM)?;
        let (sps, cps) = x[3].sin_cos();
        let (sth, cth) = x[4].sin_cos();
        let (sph, cph) = x[5].sin_cos();
        let inv_m = T::of(1.0 / self.mass);
        Ok([
            (sps * sph + cps * sth * cph) * inv_m,
            (sps * sth * cph - cps * sph) * inv_m,
            cth * cph * inv_m,
        ])
    }

    /// Computes u = −(1/r)B(x)ᵀ∇ₓΦ for one state (no allocation); checks lengths.
    pub fn control<T: Real>(&self, x: &[T], grad_x: &[T], u: &mut [T]) -> Result<()> {
        crate::error::check_len("quadcopter gradient", grad_x.len(), Self::STATE_DIM)?;
        crate::error::check_len("quadcopter control", u.len(), Self::CONTROL_DIM)?;
        let b = self.thrust_direction(x)?;
        let c = T::of(-1.0 / self.control_weight);
        u[0] = c * (b[0] * grad_x[6] + b[1] * grad_x[7] + b[2] * grad_x[8]);
        u[1] = c * grad_x[9];
        u[2] = c * grad_x[10];
        u[3] = c * grad_x[11];
        Ok(())
    }

    fn validate(&self) -> Result<()> {
        let ok = self.mass.is_finite()
            && self.mass > 0.0
            && self.gravity.is_finite()
            && self.control_weight.is_finite()
            && self.control_weight > 0.0;
        if ok {
            Ok(())
        } else {
            Err(Error::Format(format!(
                "quadcopter control law needs a finite mass > 0, finite gravity and a finite \
                 control weight r > 0; found mass {}, gravity {}, r {}",
                self.mass, self.gravity, self.control_weight
            )))
        }
    }
}

/// How an SOC problem's optimal control follows from ∇ₓΦ, as a trainer exports it:
/// a constant map (stored as the tensor `control_map`, format version 1) or a
/// state-dependent [`ControlLaw`] (the card's `control_law`, version 2).
#[derive(Clone, Debug, PartialEq)]
pub enum Feedback {
    /// u = −M∇ₓΦ.
    Map(ControlMap),
    /// u = u(x, ∇ₓΦ).
    Law(ControlLaw),
}

/// Who made a model, when, and how (free-form details: trainer configuration,
/// problem name, iterations, final loss, …).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provenance {
    /// The program that wrote the file, e.g. "socflow-trainer 0.1.0".
    pub created_by: String,
    /// Creation time, seconds since the Unix epoch.
    pub created_unix: u64,
    /// Free-form key/value details.
    #[serde(default)]
    pub details: BTreeMap<String, String>,
}

impl Provenance {
    /// Provenance stamped with the current time.
    pub fn now(created_by: impl Into<String>) -> Self {
        let created_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Provenance {
            created_by: created_by.into(),
            created_unix,
            details: BTreeMap::new(),
        }
    }

    /// Adds (or replaces) a detail.
    pub fn with_detail(mut self, key: impl Into<String>, value: impl ToString) -> Self {
        self.details.insert(key.into(), value.to_string());
        self
    }
}

/// The model card: everything about a model except its tensors, stored as JSON in the
/// file's metadata. Unknown keys are rejected when reading.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelCard {
    /// Always [`FORMAT_NAME`].
    pub format: String,
    /// The format version the file was written with.
    pub format_version: u32,
    /// What the model computes.
    pub kind: ModelKind,
    /// Network architecture and sizes.
    pub architecture: Architecture,
    /// State dimension d.
    pub dim: usize,
    /// Time interval [t0, t1]: t0 is the data end, t1 the noise/terminal end.
    pub time: [f64; 2],
    /// Storage type of the tensors.
    pub dtype: StorageDtype,
    /// Data normalization, if the model works in normalized coordinates.
    #[serde(default)]
    pub normalization: Option<Normalization>,
    /// Control dimension, when the file holds a `control_map`.
    #[serde(default)]
    pub control_dim: Option<usize>,
    /// A state-dependent control law (format version ≥ 2; excludes a `control_map`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_law: Option<ControlLaw>,
    /// A score model's VP-SDE (format version ≥ 3; absent: [`VpSde::default`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpsde: Option<VpSde>,
    /// Who made the model and how.
    pub provenance: Provenance,
}

/// A model's parameters (in f64, whatever the storage type).
#[derive(Clone, Debug, PartialEq)]
pub enum Params {
    /// OT-Flow potential parameters.
    OtFlow(OtFlowParams),
    /// MLP field parameters.
    Mlp(MlpParams),
}

impl Params {
    /// Number of scalar parameters.
    pub fn count(&self) -> usize {
        match self {
            Params::OtFlow(p) => {
                p.k.iter().chain(&p.b).map(Vec::len).sum::<usize>()
                    + p.w.len()
                    + p.a.len()
                    + p.c_weight.len()
                    + 1
            }
            Params::Mlp(p) => p.weights.iter().chain(&p.biases).map(Vec::len).sum(),
        }
    }
}

/// A model file in memory: card, parameters and optional control map.
///
/// The fields are public; [`Artifact::validate`] (called by [`Artifact::to_bytes`])
/// checks that they agree.
#[derive(Clone, Debug, PartialEq)]
pub struct Artifact {
    /// The model card.
    pub card: ModelCard,
    /// The network parameters.
    pub params: Params,
    /// The SOC control map M (u = −M ∇ₓΦ), for potentials only.
    pub control_map: Option<ControlMap>,
}

impl Artifact {
    /// An OT-Flow potential artifact (kind [`ModelKind::Potential`], card dtype f64
    /// until written with another).
    pub fn otflow(params: OtFlowParams, time: [f64; 2], provenance: Provenance) -> Result<Self> {
        let card = ModelCard {
            format: FORMAT_NAME.into(),
            format_version: BASE_FORMAT_VERSION,
            kind: ModelKind::Potential,
            architecture: Architecture::OtFlow {
                m: params.m,
                n_th: params.n_th,
                r: params.r,
            },
            dim: params.d,
            time,
            dtype: StorageDtype::F64,
            normalization: None,
            control_dim: None,
            control_law: None,
            vpsde: None,
            provenance,
        };
        let a = Artifact {
            card,
            params: Params::OtFlow(params),
            control_map: None,
        };
        a.validate()?;
        Ok(a)
    }

    /// An MLP field artifact of the given kind ([`ModelKind::Velocity`] or
    /// [`ModelKind::Score`]).
    pub fn mlp(
        params: MlpParams,
        kind: ModelKind,
        time: [f64; 2],
        provenance: Provenance,
    ) -> Result<Self> {
        let card = ModelCard {
            format: FORMAT_NAME.into(),
            format_version: BASE_FORMAT_VERSION,
            kind,
            architecture: Architecture::Mlp {
                hidden: params.hidden.clone(),
                activation: params.activation,
            },
            dim: params.d,
            time,
            dtype: StorageDtype::F64,
            normalization: None,
            control_dim: None,
            control_law: None,
            vpsde: None,
            provenance,
        };
        let a = Artifact {
            card,
            params: Params::Mlp(params),
            control_map: None,
        };
        a.validate()?;
        Ok(a)
    }

    /// Attaches a data normalization (its dimension must be the model's).
    pub fn with_normalization(mut self, normalization: Normalization) -> Result<Self> {
        normalization
            .validate(self.card.dim)
            .map_err(format_to_argument)?;
        self.card.normalization = Some(normalization);
        Ok(self)
    }

    /// Attaches an SOC control map (potentials only; its columns must be the state
    /// dimension) and records the control dimension in the card.
    pub fn with_control_map(mut self, control_map: ControlMap) -> Result<Self> {
        self.card.control_dim = Some(control_map.rows);
        self.control_map = Some(control_map);
        self.validate()?;
        Ok(self)
    }

    /// Attaches a state-dependent control law (potentials only, of the law's state
    /// dimension, without a control map) and raises the card's format version to
    /// [`CONTROL_LAW_VERSION`].
    pub fn with_control_law(mut self, law: ControlLaw) -> Result<Self> {
        self.card.format_version = self.card.format_version.max(CONTROL_LAW_VERSION);
        self.card.control_law = Some(law);
        self.validate()?;
        Ok(self)
    }

    /// Attaches a problem's [`Feedback`]: a control map or a control law.
    pub fn with_feedback(self, feedback: Feedback) -> Result<Self> {
        match feedback {
            Feedback::Map(m) => self.with_control_map(m),
            Feedback::Law(l) => self.with_control_law(l),
        }
    }

    /// Records a score model's VP-SDE in the card (kind [`ModelKind::Score`] only) and
    /// raises the card's format version to [`VPSDE_VERSION`].
    pub fn with_vpsde(mut self, sde: VpSde) -> Result<Self> {
        self.card.format_version = self.card.format_version.max(VPSDE_VERSION);
        self.card.vpsde = Some(sde);
        self.validate()?;
        Ok(self)
    }

    /// A score model's VP-SDE: the card's `vpsde` entry, or [`VpSde::default`] for a
    /// score model without one; `None` for other kinds.
    pub fn vpsde(&self) -> Option<VpSde> {
        match self.card.kind {
            ModelKind::Score => Some(self.card.vpsde.unwrap_or_default()),
            _ => None,
        }
    }

    /// The state-dependent control law, if the card has one.
    pub fn control_law(&self) -> Option<&ControlLaw> {
        self.card.control_law.as_ref()
    }

    /// State dimension.
    pub fn dim(&self) -> usize {
        self.card.dim
    }

    /// Number of scalar network parameters (the control map not included).
    pub fn parameter_count(&self) -> usize {
        self.params.count()
    }

    /// Names and shapes of the tensors the file holds, sorted by name.
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<usize>)> {
        expected_tensors(&self.card)
    }

    /// Checks that card, parameters and control map agree and respect the limits.
    ///
    /// Problems are reported as [`Error::InvalidArgument`] (or [`Error::Limit`],
    /// [`Error::Shape`], [`Error::NonFinite`], [`Error::UnsupportedVersion`]).
    pub fn validate(&self) -> Result<()> {
        self.validate_inner().map_err(format_to_argument)
    }

    /// [`Artifact::validate`] reporting problems with the card as [`Error::Format`], as
    /// loading does.
    fn validate_inner(&self) -> Result<()> {
        check_card(&self.card)?;
        match (&self.card.architecture, &self.params) {
            (Architecture::OtFlow { m, n_th, r }, Params::OtFlow(p)) => {
                if (p.d, p.m, p.n_th, p.r) != (self.card.dim, *m, *n_th, *r) {
                    return Err(Error::Format(format!(
                        "OT-Flow parameters have d = {}, m = {}, nTh = {}, r = {}; the card says \
                         d = {}, m = {m}, nTh = {n_th}, r = {r}",
                        p.d, p.m, p.n_th, p.r, self.card.dim
                    )));
                }
            }
            (Architecture::Mlp { hidden, activation }, Params::Mlp(p)) => {
                if p.d != self.card.dim || &p.hidden != hidden || p.activation != *activation {
                    return Err(Error::Format(format!(
                        "MLP parameters have d = {}, hidden {:?}, {}; the card says d = {}, \
                         hidden {hidden:?}, {}",
                        p.d,
                        p.hidden,
                        p.activation.name(),
                        self.card.dim,
                        activation.name()
                    )));
                }
            }
            _ => {
                return Err(Error::Format(
                    "parameters do not match the card's architecture".into(),
                ))
            }
        }
        if let Some(c) = &self.control_map {
            c.validate()?;
            if c.cols != self.card.dim || Some(c.rows) != self.card.control_dim {
                return Err(Error::Format(format!(
                    "control map is {} x {}, the card says control_dim {:?} and dim {}",
                    c.rows, c.cols, self.card.control_dim, self.card.dim
                )));
            }
        }
        let expected = expected_tensors(&self.card);
        let values = self.tensor_values();
        if expected.len() != values.len() {
            return Err(Error::Format(format!(
                "the parameters hold {} tensors, the architecture needs {}",
                values.len(),
                expected.len()
            )));
        }
        for (name, shape) in &expected {
            let found = values
                .get(name.as_str())
                .ok_or_else(|| Error::Format(format!("the parameters lack tensor `{name}`")))?;
            if found.len() != shape.iter().product::<usize>() {
                return Err(Error::Shape {
                    name: name.clone(),
                    found: vec![found.len()],
                    expected: shape.clone(),
                });
            }
            crate::error::check_finite(&format!("tensor `{name}`"), found)?;
        }
        Ok(())
    }

    /// Serializes to safetensors bytes, storing the tensors as `dtype` (the card written
    /// records it). The output depends only on the artifact and `dtype`.
    pub fn to_bytes(&self, dtype: StorageDtype) -> Result<Vec<u8>> {
        self.validate()?;
        let mut card = self.card.clone();
        card.dtype = dtype;
        let card_json = serde_json::to_string(&card)
            .map_err(|e| Error::InvalidArgument(format!("cannot encode the model card: {e}")))?;

        let values = self.tensor_values();
        let mut entries = serde_json::Map::new();
        let mut data = Vec::new();
        // Sorted by name, as the safetensors crate lays them out.
        for (name, shape) in expected_tensors(&self.card) {
            let vals = values.get(name.as_str()).ok_or_else(|| {
                Error::InvalidArgument(format!("the parameters lack tensor `{name}`"))
            })?;
            let start = data.len();
            encode_values(&name, vals, dtype, &mut data)?;
            entries.insert(
                name,
                serde_json::json!({
                    "dtype": dtype.safetensors().to_string(),
                    "shape": shape,
                    "data_offsets": [start, data.len()],
                }),
            );
        }
        let mut metadata = serde_json::Map::new();
        metadata.insert(META_CARD.into(), card_json.into());
        metadata.insert(META_FORMAT.into(), FORMAT_NAME.into());
        metadata.insert(META_VERSION.into(), card.format_version.to_string().into());
        entries.insert("__metadata__".into(), metadata.into());

        let mut header = serde_json::to_vec(&serde_json::Value::Object(entries))
            .map_err(|e| Error::InvalidArgument(format!("cannot encode the header: {e}")))?;
        // Tensor data starts 8-byte aligned, as the safetensors crate writes it.
        header.resize(header.len().next_multiple_of(8), b' ');
        if header.len() as u64 > MAX_HEADER_BYTES {
            return Err(Error::Limit(format!(
                "header of {} bytes exceeds {MAX_HEADER_BYTES}",
                header.len()
            )));
        }
        let mut out = Vec::with_capacity(8 + header.len() + data.len());
        out.extend_from_slice(&(header.len() as u64).to_le_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(&data);
        Ok(out)
    }

    /// Parses and validates a model file's bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        check_framing(bytes)?;
        let (header_len, header) = SafeTensors::read_metadata(bytes)
            .map_err(|e| Error::Format(format!("invalid safetensors file: {e}")))?;
        let data = bytes.get(8 + header_len..).unwrap_or_default();
        let meta = header.metadata().as_ref().ok_or_else(|| {
            Error::Format("no `__metadata__` in the header: not a socflow model file".into())
        })?;
        let card = parse_card(meta)?;
        check_card(&card)?;

        let expected = expected_tensors(&card);
        let expected_names: BTreeSet<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
        let mut found_names = header.offset_keys();
        found_names.sort_unstable();
        if let Some(extra) = found_names
            .iter()
            .find(|n| !expected_names.contains(n.as_str()))
        {
            return Err(Error::Format(format!(
                "unexpected tensor `{extra}` for this architecture"
            )));
        }
        let dtype = card.dtype.safetensors();
        let mut values: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for (name, shape) in &expected {
            let info = header
                .info(name)
                .ok_or_else(|| Error::Format(format!("missing tensor `{name}`")))?;
            if info.shape != *shape {
                return Err(Error::Shape {
                    name: name.clone(),
                    found: info.shape.clone(),
                    expected: shape.clone(),
                });
            }
            if info.dtype != dtype {
                return Err(Error::Format(format!(
                    "tensor `{name}` is stored as {}, the card says {}",
                    info.dtype,
                    card.dtype.name()
                )));
            }
            let (start, end) = info.data_offsets;
            let raw = data.get(start..end).ok_or_else(|| {
                Error::Format(format!("tensor `{name}` data lies outside the file"))
            })?;
            if raw.len() != shape.iter().product::<usize>() * card.dtype.size() {
                return Err(Error::Format(format!(
                    "tensor `{name}` holds {} bytes, its shape needs {}",
                    raw.len(),
                    shape.iter().product::<usize>() * card.dtype.size()
                )));
            }
            let v = decode_values(raw, card.dtype);
            crate::error::check_finite(&format!("tensor `{name}`"), &v)?;
            values.insert(name.clone(), v);
        }
        fn take(values: &mut BTreeMap<String, Vec<f64>>, name: &str) -> Result<Vec<f64>> {
            values
                .remove(name)
                .ok_or_else(|| Error::Format(format!("missing tensor `{name}`")))
        }

        let params =
            match &card.architecture {
                Architecture::OtFlow { m, n_th, r } => Params::OtFlow(
                    OtFlowParams::from_state_dict(card.dim, *m, *n_th, *r, &mut values)?,
                ),
                Architecture::Mlp { hidden, activation } => {
                    let mut weights = Vec::with_capacity(hidden.len() + 1);
                    let mut biases = Vec::with_capacity(hidden.len() + 1);
                    for i in 0..=hidden.len() {
                        weights.push(take(&mut values, &format!("layers.{i}.weight"))?);
                        biases.push(take(&mut values, &format!("layers.{i}.bias"))?);
                    }
                    Params::Mlp(MlpParams {
                        d: card.dim,
                        hidden: hidden.clone(),
                        activation: *activation,
                        weights,
                        biases,
                    })
                }
            };
        let control_map = match card.control_dim {
            Some(rows) => Some(ControlMap {
                rows,
                cols: card.dim,
                matrix: take(&mut values, CONTROL_MAP)?,
            }),
            None => None,
        };
        let artifact = Artifact {
            card,
            params,
            control_map,
        };
        artifact.validate_inner()?;
        Ok(artifact)
    }

    /// Writes the model file atomically: a temporary file in the same directory,
    /// fsync, then rename over `path`.
    pub fn save(&self, path: impl AsRef<Path>, dtype: StorageDtype) -> Result<()> {
        let bytes = self.to_bytes(dtype)?;
        write_atomically(path.as_ref(), &bytes)
    }

    /// Reads and validates a model file. Files larger than [`MAX_FILE_BYTES`] are
    /// rejected before any byte is read.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        if len > MAX_FILE_BYTES {
            return Err(Error::Limit(format!(
                "{}: model file of {len} bytes exceeds the limit of {MAX_FILE_BYTES}",
                path.display()
            )));
        }
        let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        // `take` guards against a file that grows while it is read.
        file.take(MAX_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io(path, e))?;
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(Error::Limit(format!(
                "{}: model file exceeds the limit of {MAX_FILE_BYTES} bytes",
                path.display()
            )));
        }
        Self::from_bytes(&bytes).map_err(|e| match e {
            Error::Format(msg) => Error::Format(format!("{}: {msg}", path.display())),
            other => other,
        })
    }

    /// A human-readable model card (what `socflow inspect FILE` prints).
    pub fn describe(&self) -> String {
        let c = &self.card;
        let mut s = String::new();
        let _ = writeln!(s, "format:        {} v{}", c.format, c.format_version);
        let _ = writeln!(s, "kind:          {}", c.kind.name());
        match &c.architecture {
            Architecture::OtFlow { m, n_th, r } => {
                let _ = writeln!(
                    s,
                    "architecture:  OT-Flow potential, ResNet width m = {m}, nTh = {n_th} \
                     layers, log-cosh activation, quadratic rank r = {r}"
                );
            }
            Architecture::Mlp { hidden, activation } => {
                let mut sizes = vec![(c.dim + 1).to_string()];
                sizes.extend(hidden.iter().map(usize::to_string));
                sizes.push(c.dim.to_string());
                let _ = writeln!(
                    s,
                    "architecture:  MLP {} on (x, t), {} activation",
                    sizes.join(" -> "),
                    activation.name()
                );
            }
        }
        let _ = writeln!(s, "parameters:    {}", self.parameter_count());
        let _ = writeln!(s, "state dim:     {}", c.dim);
        let _ = writeln!(
            s,
            "time:          [{}, {}] (t0 = data end, t1 = noise/terminal end)",
            c.time[0], c.time[1]
        );
        let _ = writeln!(s, "dtype:         {}", c.dtype.name());
        match &c.normalization {
            None => {
                let _ = writeln!(s, "normalization: none");
            }
            Some(n) => {
                let _ = writeln!(
                    s,
                    "normalization: x = mean + std * x_model, mean {}, std {}, log-det {}",
                    preview(&n.mean),
                    preview(&n.std),
                    n.log_det()
                );
            }
        }
        if let Some(sde) = self.vpsde() {
            let _ = writeln!(
                s,
                "VP-SDE:        beta(t) = {} + t ({} - {}), sampled from t = {} to eps = {}, \
                 network outputs the {}{}",
                sde.beta_min,
                sde.beta_max,
                sde.beta_min,
                c.time[1],
                sde.eps,
                sde.output.name(),
                if c.vpsde.is_none() {
                    " (defaults: the card has no vpsde entry)"
                } else {
                    ""
                }
            );
        }
        match (&self.control_map, &c.control_law) {
            (_, Some(law)) => {
                let _ = writeln!(s, "control law:   {}", law.describe());
            }
            (None, None) => {
                let _ = writeln!(s, "control map:   none");
            }
            (Some(cm), None) => {
                let _ = writeln!(
                    s,
                    "control map:   u = -M grad_x Phi, M is {} x {} (control dim {})",
                    cm.rows, cm.cols, cm.rows
                );
            }
        }
        let p = &c.provenance;
        let _ = writeln!(
            s,
            "provenance:    created by {} at {} (unix time)",
            if p.created_by.is_empty() {
                "(unknown)"
            } else {
                &p.created_by
            },
            p.created_unix
        );
        for (k, v) in &p.details {
            let _ = writeln!(s, "  {k}: {v}");
        }
        let _ = writeln!(s, "tensors:");
        for (name, shape) in self.tensor_shapes() {
            let _ = writeln!(s, "  {name} {shape:?}");
        }
        s
    }

    /// The stored values of every tensor, by name.
    fn tensor_values(&self) -> BTreeMap<String, &[f64]> {
        let mut v: BTreeMap<String, &[f64]> = BTreeMap::new();
        match &self.params {
            Params::OtFlow(p) => {
                v.insert("A".into(), &p.a);
                v.insert("c.weight".into(), &p.c_weight);
                v.insert("c.bias".into(), std::slice::from_ref(&p.c_bias));
                v.insert("w.weight".into(), &p.w);
                for (i, k) in p.k.iter().enumerate() {
                    v.insert(format!("N.layers.{i}.weight"), k);
                }
                for (i, b) in p.b.iter().enumerate() {
                    v.insert(format!("N.layers.{i}.bias"), b);
                }
            }
            Params::Mlp(p) => {
                for (i, w) in p.weights.iter().enumerate() {
                    v.insert(format!("layers.{i}.weight"), w);
                }
                for (i, b) in p.biases.iter().enumerate() {
                    v.insert(format!("layers.{i}.bias"), b);
                }
            }
        }
        if let Some(c) = &self.control_map {
            v.insert(CONTROL_MAP.into(), &c.matrix);
        }
        v
    }
}

/// Errors about values a caller built (not read from a file) are invalid arguments.
fn format_to_argument(e: Error) -> Error {
    match e {
        Error::Format(msg) => Error::InvalidArgument(msg),
        other => other,
    }
}

fn preview(xs: &[f64]) -> String {
    const SHOWN: usize = 6;
    let mut parts: Vec<String> = xs.iter().take(SHOWN).map(|x| format!("{x}")).collect();
    if xs.len() > SHOWN {
        parts.push(format!("... ({} values)", xs.len()));
    }
    format!("[{}]", parts.join(", "))
}

fn check_size(what: &str, value: usize, min: usize, max: usize) -> Result<()> {
    if value < min {
        return Err(Error::Format(format!(
            "{what} is {value}, must be at least {min}"
        )));
    }
    if value > max {
        return Err(Error::Limit(format!("{what} is {value}, limit {max}")));
    }
    Ok(())
}

/// Checks the card alone: format, limits, consistency of kind, architecture, time,
/// normalization and control dimension. Runs before any tensor is touched.
fn check_card(card: &ModelCard) -> Result<()> {
    if card.format != FORMAT_NAME {
        return Err(Error::Format(format!(
            "card format is `{}`, expected `{FORMAT_NAME}`",
            card.format
        )));
    }
    if card.format_version > FORMAT_VERSION {
        return Err(Error::UnsupportedVersion {
            found: card.format_version,
            supported: FORMAT_VERSION,
        });
    }
    if card.format_version == 0 {
        return Err(Error::Format("card format_version 0 does not exist".into()));
    }
    check_size("state dimension", card.dim, 1, MAX_DIM)?;
    let d1 = card.dim as u64 + 1;
    let count = match &card.architecture {
        Architecture::OtFlow { m, n_th, r } => {
            if card.kind != ModelKind::Potential {
                return Err(Error::Format(format!(
                    "an OT-Flow network is a potential, the card says {}",
                    card.kind.name()
                )));
            }
            check_size("OT-Flow width m", *m, 1, MAX_WIDTH)?;
            check_size("OT-Flow layers nTh", *n_th, 2, MAX_LAYERS)?;
            check_size("OT-Flow rank r", *r, 1, MAX_WIDTH)?;
            let (m, n_th, r) = (*m as u64, *n_th as u64, *r as u64);
            m * d1 + (n_th - 1) * m * m + n_th * m + m + r * d1 + d1 + 1
        }
        Architecture::Mlp { hidden, .. } => {
            if card.kind == ModelKind::Potential {
                return Err(Error::Format(
                    "an MLP network is a velocity or score field, not a potential".into(),
                ));
            }
            if hidden.is_empty() {
                return Err(Error::Format(
                    "an MLP needs at least one hidden layer".into(),
                ));
            }
            if hidden.len() + 1 > MAX_LAYERS {
                return Err(Error::Limit(format!(
                    "MLP has {} layers, limit {MAX_LAYERS}",
                    hidden.len() + 1
                )));
            }
            for &h in hidden {
                check_size("MLP hidden width", h, 1, MAX_WIDTH)?;
            }
            let mut sizes = Vec::with_capacity(hidden.len() + 2);
            sizes.push(d1);
            sizes.extend(hidden.iter().map(|&h| h as u64));
            sizes.push(card.dim as u64);
            sizes.windows(2).map(|w| w[1] * w[0] + w[1]).sum()
        }
    };
    let control = match card.control_dim {
        None => 0,
        Some(rows) => {
            if card.kind != ModelKind::Potential {
                return Err(Error::Format(
                    "only a potential can carry a control map".into(),
                ));
            }
            check_size("control dimension", rows, 1, MAX_DIM)?;
            rows as u64 * card.dim as u64
        }
    };
    let total = count + control;
    if total > MAX_VALUES {
        return Err(Error::Limit(format!(
            "model has {total} stored values, limit {MAX_VALUES}"
        )));
    }
    let [t0, t1] = card.time;
    if !(t0.is_finite() && t1.is_finite()) || t0 == t1 {
        return Err(Error::Format(format!(
            "time interval [{t0}, {t1}] must be finite with t0 != t1"
        )));
    }
    if let Some(n) = &card.normalization {
        n.validate(card.dim)?;
    }
    if let Some(law) = &card.control_law {
        if card.format_version < CONTROL_LAW_VERSION {
            return Err(Error::Format(format!(
                "a control law needs format version {CONTROL_LAW_VERSION}, the card says {}",
                card.format_version
            )));
        }
        if card.kind != ModelKind::Potential {
            return Err(Error::Format(
                "only a potential can carry a control law".into(),
            ));
        }
        if card.control_dim.is_some() {
            return Err(Error::Format(
                "a card has a control law or a control map (control_dim), not both".into(),
            ));
        }
        law.validate()?;
        if law.state_dim() != card.dim {
            return Err(Error::Format(format!(
                "the {} control law is for state dimension {}, the model's is {}",
                law.name(),
                law.state_dim(),
                card.dim
            )));
        }
    }
    if let Some(sde) = &card.vpsde {
        if card.format_version < VPSDE_VERSION {
            return Err(Error::Format(format!(
                "a vpsde entry needs format version {VPSDE_VERSION}, the card says {}",
                card.format_version
            )));
        }
        if card.kind != ModelKind::Score {
            return Err(Error::Format(format!(
                "only a score model has a VP-SDE, the card says {}",
                card.kind.name()
            )));
        }
        sde.validate().map_err(|e| Error::Format(e.to_string()))?;
        if sde.eps >= card.time[1] {
            return Err(Error::Format(format!(
                "VP-SDE sampling ends at eps = {} but the time interval ends at {}",
                sde.eps, card.time[1]
            )));
        }
    }
    Ok(())
}

/// Tensor names and shapes the card's architecture requires, sorted by name.
fn expected_tensors(card: &ModelCard) -> Vec<(String, Vec<usize>)> {
    let d = card.dim;
    let mut t = Vec::new();
    match &card.architecture {
        Architecture::OtFlow { m, n_th, r } => {
            t.push(("A".to_string(), vec![*r, d + 1]));
            t.push(("c.weight".to_string(), vec![1, d + 1]));
            t.push(("c.bias".to_string(), vec![1]));
            t.push(("w.weight".to_string(), vec![1, *m]));
            for i in 0..*n_th {
                let cols = if i == 0 { d + 1 } else { *m };
                t.push((format!("N.layers.{i}.weight"), vec![*m, cols]));
                t.push((format!("N.layers.{i}.bias"), vec![*m]));
            }
        }
        Architecture::Mlp { hidden, .. } => {
            let mut sizes = Vec::with_capacity(hidden.len() + 2);
            sizes.push(d + 1);
            sizes.extend_from_slice(hidden);
            sizes.push(d);
            for (i, w) in sizes.windows(2).enumerate() {
                t.push((format!("layers.{i}.weight"), vec![w[1], w[0]]));
                t.push((format!("layers.{i}.bias"), vec![w[1]]));
            }
        }
    }
    if let Some(rows) = card.control_dim {
        t.push((CONTROL_MAP.to_string(), vec![rows, d]));
    }
    t.sort();
    t
}

/// Reads the metadata map: format name, version (a newer one is
/// [`Error::UnsupportedVersion`], checked before the card is parsed, since a newer card
/// may have fields this version does not know), then the card.
fn parse_card(meta: &std::collections::HashMap<String, String>) -> Result<ModelCard> {
    let format = meta
        .get(META_FORMAT)
        .ok_or_else(|| Error::Format("metadata lacks `format`: not a socflow model file".into()))?;
    if format != FORMAT_NAME {
        return Err(Error::Format(format!(
            "metadata format is `{format}`, expected `{FORMAT_NAME}`"
        )));
    }
    let version = meta
        .get(META_VERSION)
        .ok_or_else(|| Error::Format("metadata lacks `format_version`".into()))?;
    let version: u32 = version.parse().map_err(|_| {
        Error::Format(format!(
            "metadata format_version `{version}` is not a number"
        ))
    })?;
    if version > FORMAT_VERSION {
        return Err(Error::UnsupportedVersion {
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    if version == 0 {
        return Err(Error::Format(
            "metadata format_version 0 does not exist".into(),
        ));
    }
    if let Some(key) = meta
        .keys()
        .find(|k| ![META_FORMAT, META_VERSION, META_CARD].contains(&k.as_str()))
    {
        return Err(Error::Format(format!("unknown metadata key `{key}`")));
    }
    let card_json = meta
        .get(META_CARD)
        .ok_or_else(|| Error::Format("metadata lacks the model `card`".into()))?;
    let value: serde_json::Value = serde_json::from_str(card_json)
        .map_err(|e| Error::Format(format!("model card is not valid JSON: {e}")))?;
    if let Some(v) = value
        .get("format_version")
        .and_then(serde_json::Value::as_u64)
    {
        if v > u64::from(FORMAT_VERSION) {
            return Err(Error::UnsupportedVersion {
                found: u32::try_from(v).unwrap_or(u32::MAX),
                supported: FORMAT_VERSION,
            });
        }
    }
    let card: ModelCard = serde_json::from_value(value)
        .map_err(|e| Error::Format(format!("invalid model card: {e}")))?;
    if card.format_version != version {
        return Err(Error::Format(format!(
            "card format_version {} disagrees with the metadata's {version}",
            card.format_version
        )));
    }
    Ok(card)
}

/// Checks the safetensors framing before the safetensors crate sees the bytes: the
/// header length against [`MAX_HEADER_BYTES`] and the file, and every tensor's data
/// offsets against the file's data section. The crate adds offsets unchecked (an
/// overflow panic in debug builds), so offsets past the end never reach it.
fn check_framing(bytes: &[u8]) -> Result<()> {
    let Some((len_bytes, rest)) = bytes.split_first_chunk::<8>() else {
        return Err(Error::Format(format!(
            "file of {} bytes is too short for a safetensors header",
            bytes.len()
        )));
    };
    let n = u64::from_le_bytes(*len_bytes);
    if n > MAX_HEADER_BYTES {
        return Err(Error::Limit(format!(
            "header claims {n} bytes, limit {MAX_HEADER_BYTES}"
        )));
    }
    let n = n as usize; // n ≤ MAX_HEADER_BYTES fits any usize we build for.
    if n > rest.len() {
        return Err(Error::Format(format!(
            "header of {n} bytes runs past the end of the file ({} bytes left): truncated?",
            rest.len()
        )));
    }
    let (header, data) = rest.split_at(n);
    let header: serde_json::Value = serde_json::from_slice(header)
        .map_err(|e| Error::Format(format!("header is not valid JSON: {e}")))?;
    let obj = header
        .as_object()
        .ok_or_else(|| Error::Format("header is not a JSON object".into()))?;
    for (name, entry) in obj {
        if name == "__metadata__" {
            continue;
        }
        let offsets = entry
            .get("data_offsets")
            .and_then(serde_json::Value::as_array)
            .ok_or_else(|| Error::Format(format!("tensor `{name}` lacks data_offsets")))?;
        for o in offsets {
            let o = o.as_u64().ok_or_else(|| {
                Error::Format(format!("tensor `{name}` has a non-integer data offset"))
            })?;
            if o > data.len() as u64 {
                return Err(Error::Format(format!(
                    "tensor `{name}` data offset {o} lies past the data section ({} bytes)",
                    data.len()
                )));
            }
        }
    }
    Ok(())
}

fn encode_values(name: &str, values: &[f64], dtype: StorageDtype, out: &mut Vec<u8>) -> Result<()> {
    out.reserve(values.len() * dtype.size());
    let overflow = |x: f64| {
        Error::InvalidArgument(format!(
            "tensor `{name}`: value {x} overflows {}",
            dtype.name()
        ))
    };
    for &x in values {
        match dtype {
            StorageDtype::F64 => out.extend_from_slice(&x.to_le_bytes()),
            StorageDtype::F32 => {
                let y = x as f32;
                if !y.is_finite() {
                    return Err(overflow(x));
                }
                out.extend_from_slice(&y.to_le_bytes());
            }
            StorageDtype::F16 => {
                let y = round_to_small_float(x, 10, -14, 5).ok_or_else(|| overflow(x))?;
                out.extend_from_slice(&y.to_le_bytes());
            }
            StorageDtype::Bf16 => {
                let y = round_to_small_float(x, 7, -126, 8).ok_or_else(|| overflow(x))?;
                out.extend_from_slice(&y.to_le_bytes());
            }
        }
    }
    Ok(())
}

/// Rounds a finite f64 to nearest (ties to even) in a binary format with `man_bits`
/// stored mantissa bits, smallest normal exponent `emin` and `exp_bits` exponent bits,
/// returning its bit pattern, or `None` when it overflows to infinity.
fn round_to_small_float(x: f64, man_bits: i32, emin: i32, exp_bits: u32) -> Option<u16> {
    if !x.is_finite() {
        return None;
    }
    let sign: u16 = if x.is_sign_negative() {
        1 << (man_bits as u32 + exp_bits)
    } else {
        0
    };
    let a = x.abs();
    if a == 0.0 {
        return Some(sign);
    }
    // Binary exponent of a (f64 subnormals are far below any target's range).
    let e = (((a.to_bits() >> 52) & 0x7ff) as i32 - 1023).max(emin);
    let q = e - man_bits; // weight of the last stored mantissa bit
    let rounded = (a * 2f64.powi(-q)).round_ties_even(); // exact scaling, then RNE
                                                         // Subnormals encode as the mantissa alone; a carry into the next binade moves into
                                                         // the exponent field by itself.
    let bits = ((e - emin) as u64) * (1u64 << man_bits) + rounded as u64;
    let inf = ((1u64 << exp_bits) - 1) << man_bits;
    if bits >= inf {
        return None;
    }
    Some(sign | bits as u16)
}

fn f16_to_f64(h: u16) -> f64 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((h >> 10) & 0x1f);
    let man = f64::from(h & 0x3ff);
    match exp {
        0 => sign * man * 2f64.powi(-24),
        31 if man == 0.0 => sign * f64::INFINITY,
        31 => f64::NAN,
        _ => sign * (1.0 + man / 1024.0) * 2f64.powi(exp - 15),
    }
}

fn decode_values(bytes: &[u8], dtype: StorageDtype) -> Vec<f64> {
    match dtype {
        StorageDtype::F64 => bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect(),
        StorageDtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect(),
        StorageDtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| f16_to_f64(u16::from_le_bytes([c[0], c[1]])))
            .collect(),
        StorageDtype::Bf16 => bytes
            .chunks_exact(2)
            .map(|c| {
                f64::from(f32::from_bits(
                    u32::from(u16::from_le_bytes([c[0], c[1]])) << 16,
                ))
            })
            .collect(),
    }
}

/// Writes `bytes` to `path` atomically: a new temporary file in the same directory,
/// fsync, rename over `path`, then fsync of the directory (where the platform allows).
/// Readers see the old file or the new one, never a partial one. Used for model files,
/// `.npy` outputs and the trainer's checkpoints.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);

    let file_name = path
        .file_name()
        .ok_or_else(|| Error::InvalidArgument(format!("{}: not a file path", path.display())))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut attempt = 0;
    let (tmp, mut file) = loop {
        let mut name = std::ffi::OsString::from(".");
        name.push(file_name);
        name.push(format!(
            ".{}.{}.tmp",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let tmp = dir.join(name);
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
        {
            Ok(f) => break (tmp, f),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 16 => {
                attempt += 1;
            }
            Err(e) => return Err(Error::io(tmp, e)),
        }
    };
    let written = file
        .write_all(bytes)
        .and_then(|()| file.sync_all())
        .and_then(|()| {
            drop(file);
            std::fs::rename(&tmp, path)
        });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    // Make the rename durable; not every platform lets a directory be opened.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_rounding_matches_known_bit_patterns() {
        let f16 = |x| round_to_small_float(x, 10, -14, 5);
        assert_eq!(f16(1.0), Some(0x3c00));
        assert_eq!(f16(-2.0), Some(0xc000));
        assert_eq!(f16(1.0 / 3.0), Some(0x3555));
        assert_eq!(f16(65504.0), Some(0x7bff));
        assert_eq!(f16(65519.0), Some(0x7bff));
        assert_eq!(f16(65520.0), None);
        assert_eq!(f16(2f64.powi(-24)), Some(0x0001));
        assert_eq!(f16(2f64.powi(-25)), Some(0x0000)); // tie to even (zero)
        assert_eq!(f16(1.5 * 2f64.powi(-24)), Some(0x0002)); // tie to even (2)
        assert_eq!(f16(2f64.powi(-14)), Some(0x0400)); // smallest normal
        assert_eq!(f16(2f64.powi(-14) - 2f64.powi(-26)), Some(0x0400)); // carry up
        assert_eq!(f16(-0.0), Some(0x8000));
        assert_eq!(f16(f64::NAN), None);
        let bf16 = |x| round_to_small_float(x, 7, -126, 8);
        assert_eq!(bf16(1.0), Some(0x3f80));
        assert_eq!(bf16(1.0 / 3.0), Some(0x3eab));
        assert_eq!(bf16(-3.0e38), Some(0xff62));
        assert_eq!(bf16(f64::MAX), None);
    }

    #[test]
    fn f16_decoding_inverts_rounding() {
        for bits in 0u16..0x7c00 {
            let x = f16_to_f64(bits);
            assert_eq!(round_to_small_float(x, 10, -14, 5), Some(bits));
            assert_eq!(round_to_small_float(-x, 10, -14, 5), Some(bits | 0x8000));
        }
        assert_eq!(f16_to_f64(0x7c00), f64::INFINITY);
        assert!(f16_to_f64(0x7e00).is_nan());
    }
}
