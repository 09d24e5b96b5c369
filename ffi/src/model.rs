//! Models: load from a file or a memory buffer, describe, destroy.

use std::ffi::{c_char, CStr};
use std::sync::OnceLock;

use socflow_runtime::artifact::{Artifact, ModelKind};
use socflow_runtime::model::{Model, Network};

use crate::args;
use crate::error::{call, socflow_status, Failure};
use crate::handle::{self, Kind};

/// A loaded model (opaque). The null handle (id 0) names no model. A model is
/// immutable: any number of threads may use one model handle at once (to create
/// controllers and samplers, or to query it); destroy it only when no other call on
/// it is running. Controllers and samplers keep what they need of it, so a model may
/// be destroyed while they live.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub struct socflow_model {
    /// Opaque id; 0 is the null handle.
    pub id: u64,
}

/// The model is a potential Φ(t, x) (OT-Flow, or an SOC value function).
pub const SOCFLOW_MODEL_POTENTIAL: u32 = 0;
/// The model is a velocity field v(t, x) (flow matching, CNF).
pub const SOCFLOW_MODEL_VELOCITY: u32 = 1;
/// The model is a score network ∇ₓ log p_t(x) of a VP-SDE (diffusion; `socflow
/// train` with problem = "diffusion"). A sampler draws from it by the reverse SDE
/// (`SOCFLOW_SOLVER_EULER_MARUYAMA`, `_STOCHASTIC_HEUN`) or the probability-flow ODE
/// (the ODE solvers); it has no controller.
pub const SOCFLOW_MODEL_SCORE: u32 = 2;

/// What `socflow_model_info` reports about a model.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[allow(non_camel_case_types)]
pub struct socflow_model_info {
    /// State dimension d.
    pub state_dim: usize,
    /// Controls a controller over the model computes (0 when the model has no
    /// potential and so no controller).
    pub control_dim: usize,
    /// `SOCFLOW_MODEL_POTENTIAL`, `SOCFLOW_MODEL_VELOCITY` or `SOCFLOW_MODEL_SCORE`.
    pub kind: u32,
    /// Start of the model's time interval: the data end of a flow, the initial time
    /// of a control problem, the data end of a diffusion (its samplers stop at the
    /// VP-SDE's ε just above it).
    pub t0: f64,
    /// End of the time interval: the prior of a flow or a diffusion, the horizon of
    /// a control problem.
    pub t1: f64,
    /// Number of trained parameters.
    pub parameter_count: usize,
}

/// The object behind a model handle: the network in double precision, and in single
/// precision once a caller asks for it.
pub(crate) struct ModelObject {
    pub f64: Model<f64>,
    f32: OnceLock<Result<Model<f32>, String>>,
}

impl ModelObject {
    fn new(artifact: Artifact) -> Result<Self, Failure> {
        Ok(ModelObject {
            f64: Model::from_artifact(artifact)?,
            f32: OnceLock::new(),
        })
    }

    /// The model in single precision (built on first use).
    pub fn f32(&self) -> Result<&Model<f32>, Failure> {
        self.f32
            .get_or_init(|| {
                Model::from_artifact(self.f64.artifact().clone()).map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|m| Failure::new(socflow_status::SOCFLOW_ERROR_FORMAT, m.clone()))
    }

    fn info(&self) -> socflow_model_info {
        let m = &self.f64;
        let artifact = m.artifact();
        let control_dim = match m.network() {
            Network::Mlp(_) => 0,
            Network::OtFlow(_) => match (artifact.control_law(), &artifact.control_map) {
                (Some(law), _) => law.control_dim(),
                (None, Some(map)) => map.rows,
                (None, None) => m.dim(),
            },
        };
        let (t0, t1) = m.time_interval();
        socflow_model_info {
            state_dim: m.dim(),
            control_dim,
            kind: match m.kind() {
                ModelKind::Potential => SOCFLOW_MODEL_POTENTIAL,
                ModelKind::Velocity => SOCFLOW_MODEL_VELOCITY,
                ModelKind::Score => SOCFLOW_MODEL_SCORE,
            },
            t0,
            t1,
            parameter_count: artifact.parameter_count(),
        }
    }
}

/// Looks up a model handle for shared use.
pub(crate) fn get(model: socflow_model) -> Result<handle::Shared<ModelObject>, Failure> {
    handle::shared(model.id, Kind::Model)
}

/// Stores a loaded model behind a new handle in `*out` (the null handle on failure).
///
/// # Safety
/// `out` is NULL or valid for a write.
unsafe fn load_into(
    out: *mut socflow_model,
    load: impl FnOnce() -> Result<Artifact, Failure>,
) -> socflow_status {
    call(|| {
        // SAFETY: forwarded from the caller.
        unsafe { args::write(out, socflow_model::default(), "out (the model handle)")? };
        let object = ModelObject::new(load()?).map_err(|f| Failure {
            status: match f.status {
                socflow_status::SOCFLOW_ERROR_INVALID_ARGUMENT => {
                    socflow_status::SOCFLOW_ERROR_FORMAT
                }
                s => s,
            },
            ..f
        })?;
        let id = handle::insert(Kind::Model, object)?;
        // SAFETY: as above (checked by the first write).
        unsafe { out.write(socflow_model { id }) };
        Ok(())
    })
}

/// Loads and validates a model file (a safetensors artifact written by
/// `socflow train` or the trainer's export) and stores its handle in `*out`. On
/// failure `*out` is the null handle.
///
/// # Safety
/// `path` is NULL or a NUL-terminated string; `out` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn socflow_model_load(
    path: *const c_char,
    out: *mut socflow_model,
) -> socflow_status {
    let load = || {
        if path.is_null() {
            return Err(Failure::null_pointer("path"));
        }
        // SAFETY: non-null and NUL-terminated by the contract.
        let bytes = unsafe { CStr::from_ptr(path) }.to_bytes();
        Artifact::load(path_of(bytes)?).map_err(Failure::loading)
    };
    // SAFETY: forwarded from the caller.
    unsafe { load_into(out, load) }
}

#[cfg(unix)]
fn path_of(bytes: &[u8]) -> Result<std::path::PathBuf, Failure> {
    use std::os::unix::ffi::OsStrExt;
    Ok(std::ffi::OsStr::from_bytes(bytes).into())
}

#[cfg(not(unix))]
fn path_of(bytes: &[u8]) -> Result<std::path::PathBuf, Failure> {
    std::str::from_utf8(bytes)
        .map(Into::into)
        .map_err(|_| Failure::invalid("path is not valid UTF-8"))
}

/// Loads and validates a model from the bytes of a model file (`len` bytes at
/// `data`; the library copies what it needs) and stores its handle in `*out`. On
/// failure `*out` is the null handle.
///
/// # Safety
/// `data` is NULL or points to `len` readable bytes; `out` is NULL or valid for a
/// write.
#[no_mangle]
pub unsafe extern "C" fn socflow_model_load_buffer(
    data: *const u8,
    len: usize,
    out: *mut socflow_model,
) -> socflow_status {
    let load = || {
        // SAFETY: `len` readable bytes by the contract.
        let bytes = unsafe { args::input(data, len, "data")? };
        Artifact::from_bytes(bytes).map_err(Failure::loading)
    };
    // SAFETY: forwarded from the caller.
    unsafe { load_into(out, load) }
}

/// Writes what the model is (dimensions, kind, time interval) into `*out`.
///
/// # Safety
/// `out` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn socflow_model_get_info(
    model: socflow_model,
    out: *mut socflow_model_info,
) -> socflow_status {
    call(|| {
        let info = get(model)?.info();
        // SAFETY: forwarded from the caller.
        unsafe { args::write(out, info, "out (the model info)") }
    })
}

/// Destroys a model. The null handle is accepted (nothing happens); a closed handle
/// gives `SOCFLOW_ERROR_INVALID_HANDLE`, one in use by another thread
/// `SOCFLOW_ERROR_BUSY`.
#[no_mangle]
pub extern "C" fn socflow_model_destroy(model: socflow_model) -> socflow_status {
    call(|| handle::destroy::<ModelObject>(model.id, Kind::Model))
}
