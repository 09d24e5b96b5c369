//! Training checkpoints: parameters, optimizer and schedule state, the iteration and
//! free-form run state, in one safetensors file written atomically.
//!
//! Everything is stored in f64, so a run resumed from a checkpoint continues bitwise
//! as the uninterrupted run would (the tests check it). Loading validates the file
//! and returns a typed error on any malformed input.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::optim::{AdamState, ParamSet, SchedulerState};

/// Format name in the checkpoint's metadata.
pub const CHECKPOINT_FORMAT: &str = "socflow-checkpoint";
/// Newest checkpoint version this build writes and reads (2 added the optional
/// averaged parameters; version 1 files still read).
pub const CHECKPOINT_VERSION: u32 = 2;

/// The state of a training run at the end of an iteration.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    /// Iterations completed.
    pub iteration: u64,
    /// Model parameters.
    pub params: ParamSet,
    /// Optimizer state (moments share the parameters' names and shapes).
    pub optimizer: AdamState,
    /// Learning-rate schedule state.
    pub scheduler: SchedulerState,
    /// Free-form run state (configuration, best validation loss, …) as strings.
    pub extra: BTreeMap<String, String>,
    /// A running average of the parameters (one array per parameter, in the order and
    /// shapes of `params`), for loops that average their iterates.
    pub averaged: Option<Vec<Vec<f64>>>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    format: String,
    version: u32,
    iteration: u64,
    adam_step: u64,
    lr: f64,
    /// Best metric; `None` before the first observation (JSON has no infinity).
    best: Option<f64>,
    bad: u32,
    cooldown_left: u32,
    names: Vec<String>,
    extra: BTreeMap<String, String>,
    /// Whether `avg/…` tensors follow (version ≥ 2).
    #[serde(default)]
    averaged: bool,
}

fn to_le(values: &[f64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

impl Checkpoint {
    /// Serializes the checkpoint.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        self.params.check_grads(&self.optimizer.m)?;
        self.params.check_grads(&self.optimizer.v)?;
        let header = Header {
            format: CHECKPOINT_FORMAT.into(),
            version: CHECKPOINT_VERSION,
            iteration: self.iteration,
            adam_step: self.optimizer.step,
            lr: self.scheduler.lr,
            best: self
                .scheduler
                .best
                .is_finite()
                .then_some(self.scheduler.best),
            bad: self.scheduler.bad,
            cooldown_left: self.scheduler.cooldown_left,
            names: self.params.names.clone(),
            extra: self.extra.clone(),
            averaged: self.averaged.is_some(),
        };
        if let Some(avg) = &self.averaged {
            self.params.check_grads(avg)?;
        }
        let meta = serde_json::to_string(&header)
            .map_err(|e| Error::InvalidArgument(format!("checkpoint header: {e}")))?;
        let mut bytes: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        for (i, name) in self.params.names.iter().enumerate() {
            let shape = self.params.shapes[i].clone();
            bytes.push((
                format!("param/{name}"),
                shape.clone(),
                to_le(&self.params.values[i]),
            ));
            bytes.push((
                format!("adam_m/{name}"),
                shape.clone(),
                to_le(&self.optimizer.m[i]),
            ));
            bytes.push((
                format!("adam_v/{name}"),
                shape.clone(),
                to_le(&self.optimizer.v[i]),
            ));
            if let Some(avg) = &self.averaged {
                bytes.push((format!("avg/{name}"), shape, to_le(&avg[i])));
            }
        }
        let mut views = Vec::with_capacity(bytes.len());
        for (name, shape, data) in &bytes {
            let view = TensorView::new(Dtype::F64, shape.clone(), data)
                .map_err(|e| Error::InvalidArgument(format!("checkpoint tensor {name}: {e}")))?;
            views.push((name.clone(), view));
        }
        let mut metadata = HashMap::new();
        metadata.insert("checkpoint".to_string(), meta);
        safetensors::serialize(views, Some(metadata))
            .map_err(|e| Error::InvalidArgument(format!("checkpoint: {e}")))
    }

    /// Writes the checkpoint atomically (temporary file, fsync, rename): a crash
    /// leaves the previous checkpoint intact.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let bytes = self.to_bytes()?;
        socflow_runtime::artifact::write_atomically(path.as_ref(), &bytes)?;
        Ok(())
    }

    /// Reads and validates a checkpoint file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        Self::from_bytes(&bytes).map_err(|e| match e {
            Error::Checkpoint(m) => Error::Checkpoint(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Parses and validates checkpoint bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let bad = |m: String| Error::Checkpoint(m);
        // The header length is checked before safetensors sees the bytes.
        if bytes.len() < 8 {
            return Err(bad("file too short".into()));
        }
        let mut n = [0u8; 8];
        n.copy_from_slice(&bytes[..8]);
        let header_len = u64::from_le_bytes(n);
        if header_len > (bytes.len() as u64 - 8) {
            return Err(bad(format!(
                "header of {header_len} bytes in a file of {}",
                bytes.len()
            )));
        }
        let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| bad(e.to_string()))?;
        let st = SafeTensors::deserialize(bytes).map_err(|e| bad(e.to_string()))?;
        let text = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("checkpoint"))
            .ok_or_else(|| bad("no `checkpoint` metadata: not a socflow checkpoint".into()))?;
        let header: Header =
            serde_json::from_str(text).map_err(|e| bad(format!("checkpoint header: {e}")))?;
        if header.format != CHECKPOINT_FORMAT {
            return Err(bad(format!(
                "format `{}` is not a socflow checkpoint",
                header.format
            )));
        }
        if header.version > CHECKPOINT_VERSION {
            return Err(bad(format!(
                "checkpoint version {} is newer than this build reads ({CHECKPOINT_VERSION})",
                header.version
            )));
        }
        let per = if header.averaged { 4 } else { 3 };
        if st.len() != per * header.names.len() {
            return Err(bad(format!(
                "{} tensors for {} parameters (expected {per} each)",
                st.len(),
                header.names.len()
            )));
        }
        let read = |name: &str| -> Result<(Vec<usize>, Vec<f64>)> {
            let t = st
                .tensor(name)
                .map_err(|_| bad(format!("missing tensor `{name}`")))?;
            if t.dtype() != Dtype::F64 {
                return Err(bad(format!(
                    "tensor `{name}` is {:?}, expected F64",
                    t.dtype()
                )));
            }
            let vals: Vec<f64> = t
                .data()
                .chunks_exact(8)
                .map(|c| {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(c);
                    f64::from_le_bytes(b)
                })
                .collect();
            if vals.iter().any(|v| !v.is_finite()) {
                return Err(Error::NonFinite(format!("checkpoint tensor `{name}`")));
            }
            Ok((t.shape().to_vec(), vals))
        };
        let mut params = ParamSet::new();
        let mut m = Vec::new();
        let mut v = Vec::new();
        let mut avg = Vec::new();
        for name in &header.names {
            let (shape, p) = read(&format!("param/{name}"))?;
            let (sm, mm) = read(&format!("adam_m/{name}"))?;
            let (sv, vv) = read(&format!("adam_v/{name}"))?;
            if sm != shape || sv != shape {
                return Err(bad(format!(
                    "optimizer state of `{name}` has the wrong shape"
                )));
            }
            if header.averaged {
                let (sa, aa) = read(&format!("avg/{name}"))?;
                if sa != shape {
                    return Err(bad(format!("averaged `{name}` has the wrong shape")));
                }
                avg.push(aa);
            }
            params.push(name.clone(), shape, p)?;
            m.push(mm);
            v.push(vv);
        }
        Ok(Checkpoint {
            iteration: header.iteration,
            params,
            optimizer: AdamState {
                step: header.adam_step,
                m,
                v,
            },
            scheduler: SchedulerState {
                lr: header.lr,
                best: header.best.unwrap_or(f64::INFINITY),
                bad: header.bad,
                cooldown_left: header.cooldown_left,
            },
            extra: header.extra,
            averaged: header.averaged.then_some(avg),
        })
    }
}

/// Periodic checkpoints and resumption for a training loop: the loops of
/// [`crate::otflow::train_otflow_checkpointed`] and
/// [`crate::flow_matching::train_flow_matching_checkpointed`] take one.
///
/// A run resumed from a checkpoint continues bitwise as the uninterrupted run would:
/// mini-batches and noise are keyed by the iteration, and the checkpoint holds the
/// parameters, the optimizer's moments and the schedule's state in f64.
pub struct Checkpointing<'a> {
    /// Save every this many iterations (0: only after the last).
    pub every: u64,
    /// Resume from this checkpoint.
    pub resume: Option<Checkpoint>,
    /// Receives each checkpoint (typically `|c| c.save(path)`).
    pub save: &'a mut dyn FnMut(&Checkpoint) -> Result<()>,
}

/// The key under which checkpoints record the training configuration (JSON).
pub const CONFIG_KEY: &str = "config";

impl Checkpointing<'static> {
    /// No checkpoints and no resumption: what the plain entry points (`train_otflow`,
    /// `train_flow_matching`, …) pass to their `_checkpointed` loops.
    pub fn none() -> Self {
        // The closure is zero-sized: leaking its box allocates nothing.
        let save: &'static mut _ = Box::leak(Box::new(|_: &Checkpoint| Ok(())));
        Checkpointing {
            every: 0,
            resume: None,
            save,
        }
    }
}

impl Checkpointing<'_> {
    /// A training loop's optimizer at its start: Adam with `optimizer` on `params` and
    /// the learning-rate `schedule`, both then [restored](Self::restore) from `resume`
    /// (if any), with the iteration to start from.
    pub fn start(
        &mut self,
        config_json: &str,
        params: &mut crate::optim::ParamSet,
        optimizer: crate::optim::AdamConfig,
        schedule: crate::optim::Schedule,
        iterations: u64,
    ) -> Result<(crate::optim::Adam, crate::optim::Scheduler, u64)> {
        let mut adam = crate::optim::Adam::new(optimizer, params)?;
        let mut scheduler = crate::optim::Scheduler::new(schedule, optimizer.lr)?;
        let start_it = self.restore(
            config_json,
            params,
            &mut adam,
            &mut scheduler,
            schedule,
            iterations,
        )?;
        Ok((adam, scheduler, start_it))
    }

    /// Applies `resume` (if any) to a loop's state after checking that it belongs to
    /// the same configuration and model; returns the iteration to start from.
    pub fn restore(
        &mut self,
        config_json: &str,
        params: &mut crate::optim::ParamSet,
        adam: &mut crate::optim::Adam,
        scheduler: &mut crate::optim::Scheduler,
        schedule: crate::optim::Schedule,
        iterations: u64,
    ) -> Result<u64> {
        let Some(ck) = self.resume.take() else {
            return Ok(0);
        };
        if let Some(saved) = ck.extra.get(CONFIG_KEY) {
            if saved != config_json {
                return Err(Error::Checkpoint(
                    "the checkpoint was written by a run with another configuration".into(),
                ));
            }
        }
        if ck.params.names != params.names || ck.params.shapes != params.shapes {
            return Err(Error::Checkpoint(
                "the checkpoint's parameters do not match the model".into(),
            ));
        }
        if ck.iteration > iterations {
            return Err(Error::Checkpoint(format!(
                "the checkpoint is at iteration {}, past the run's {iterations}",
                ck.iteration
            )));
        }
        *adam = crate::optim::Adam::from_state(*adam.config(), ck.optimizer, &ck.params)?;
        *scheduler = crate::optim::Scheduler::from_state(schedule, adam.config().lr, ck.scheduler)?;
        *params = ck.params;
        Ok(ck.iteration)
    }

    /// Saves a checkpoint when `done` iterations are complete and one is due.
    pub fn after_iteration(
        &mut self,
        done: u64,
        iterations: u64,
        config_json: &str,
        params: &crate::optim::ParamSet,
        adam: &crate::optim::Adam,
        scheduler: &crate::optim::Scheduler,
    ) -> Result<()> {
        self.after_iteration_averaged(done, iterations, config_json, params, adam, scheduler, None)
    }

    /// [`after_iteration`](Self::after_iteration) for a loop that also keeps a running
    /// average of its parameters (`averaged`, saved with the checkpoint).
    #[allow(clippy::too_many_arguments)]
    pub fn after_iteration_averaged(
        &mut self,
        done: u64,
        iterations: u64,
        config_json: &str,
        params: &crate::optim::ParamSet,
        adam: &crate::optim::Adam,
        scheduler: &crate::optim::Scheduler,
        averaged: Option<&[Vec<f64>]>,
    ) -> Result<()> {
        let due = done == iterations || (self.every > 0 && done % self.every == 0);
        if !due {
            return Ok(());
        }
        let mut extra = BTreeMap::new();
        extra.insert(CONFIG_KEY.to_string(), config_json.to_string());
        (self.save)(&Checkpoint {
            iteration: done,
            params: params.clone(),
            optimizer: adam.state().clone(),
            scheduler: scheduler.state(),
            extra,
            averaged: averaged.map(|a| a.to_vec()),
        })
    }
}
