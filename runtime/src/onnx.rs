//! ONNX models as fields and controls (feature `onnx`), evaluated by ONNX Runtime
//! through `ort`.
//!
//! # The model's signature
//!
//! An [`OnnxField`] wraps a model v = f(x, t) exported from PyTorch (say) with
//!
//! - two inputs: the states `x` of shape `[batch, d]` and the times `t` of shape
//!   `[batch]`, `[batch, 1]` or `[]` (a scalar shared by the batch), both float32 or
//!   both float64. Inputs named `x` and `t` are matched by name, any other two by
//!   position (x first);
//! - one output `[batch, d]` of the same element type;
//! - a dynamic batch dimension (`dynamic_axes={"x": {0: "batch"}, ...}` in
//!   `torch.onnx.export`) and a fixed state dimension d.
//!
//! Anything else is rejected when the model is loaded, with an [`Error::Format`] that
//! names the input or output and what was expected. The field evaluates in the
//! model's element type: an f32 model used as an `OnnxField<f64>` rounds its inputs
//! to f32.
//!
//! # Finding ONNX Runtime
//!
//! The library is loaded at run time (ort's `load-dynamic`), the first time a model is
//! loaded, from the first of these that exists (see [`library_candidates`]):
//!
//! 1. the file named by `ORT_DYLIB_PATH` (when set, nothing else is tried);
//! 2. the `onnxruntime` wheel of a Python environment: `onnxruntime/capi/
//!    libonnxruntime.so.1.*` in the site-packages of the environment of
//!    `SOCFLOW_PYTHON` (an interpreter path) or `VIRTUAL_ENV`, of a `pyenv` or
//!    `target/pyenv` folder beside the executable or one of its parent folders (the
//!    workspace's `target/pyenv` that `scripts/setup-python` makes), of
//!    `./target/pyenv`, of the user's `~/.local` and of the system Python;
//! 3. `libonnxruntime.so*` in the folders of `LD_LIBRARY_PATH` and the system library
//!    folders (`/usr/local/lib`, `/usr/lib`, `/usr/lib/<triple>`, `/usr/lib64`).
//!
//! A library that is missing or fails to load (not a library, or older than ONNX
//! Runtime 1.24) is an [`Error::Unsupported`] that lists every place tried; the
//! runtime never lets ort fall back to its own search, which panics.
//!
//! # Threads and allocation
//!
//! A session runs on the calling thread only (one intra-op thread by default,
//! [`OnnxOptions::intra_threads`]): samplers already spread blocks over rayon threads.
//! ONNX Runtime's `run` is not safe to call concurrently on one session, so a field
//! keeps a pool of sessions and each call takes one (creating it the first time a
//! thread needs one); a block is one `run`. The runtime's own buffers are reused, but
//! ONNX Runtime allocates the output of each run: an ONNX field (and a
//! [`FieldController`] over one) is not allocation-free, unlike the native networks.

use std::fmt;
use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use ort::environment::Environment;
use ort::session::{Session, SessionInputValue};
use ort::value::{PrimitiveTensorElementType, TensorElementType, TensorRef, ValueType};

use crate::controller::FieldController;
use crate::error::{check_len, Error, Result};
use crate::field::{check_block, Field};
use crate::Real;

/// The environment variable naming the ONNX Runtime library file to load.
pub const DYLIB_ENV: &str = "ORT_DYLIB_PATH";

/// Rows per ONNX Runtime run that samplers use by default: large enough to amortize
/// a run's fixed cost (tens of microseconds), small enough to split a batch over
/// threads.
pub const DEFAULT_BLOCK_ROWS: usize = 256;

/// Options of an [`OnnxField`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OnnxOptions {
    /// ONNX Runtime's intra-op threads per session (1: the caller parallelizes, as the
    /// samplers do; 0: ONNX Runtime's default, one per core).
    pub intra_threads: usize,
    /// Rows per block samplers hand to one run ([`Field::preferred_block_rows`]).
    pub block_rows: usize,
}

impl Default for OnnxOptions {
    fn default() -> Self {
        OnnxOptions {
            intra_threads: 1,
            block_rows: DEFAULT_BLOCK_ROWS,
        }
    }
}

/// Element type of a model's tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnnxDtype {
    /// float32.
    F32,
    /// float64 (double).
    F64,
}

impl OnnxDtype {
    /// The name used in messages ("float32", "float64").
    pub fn name(self) -> &'static str {
        match self {
            OnnxDtype::F32 => "float32",
            OnnxDtype::F64 => "float64",
        }
    }
}

/// Shape of a model's time input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeShape {
    /// `[]`: one time for the whole batch (a block whose rows have different times
    /// takes one run per run of equal times).
    Scalar,
    /// `[batch]`.
    Batch,
    /// `[batch, 1]`.
    BatchByOne,
}

/// A validated model signature: which input is which, the state dimension, the
/// element type and the time input's shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OnnxSignature {
    /// Name of the state input.
    pub x_name: String,
    /// Name of the time input.
    pub t_name: String,
    /// Name of the output.
    pub output_name: String,
    /// Whether the state input comes first in the model's input list.
    pub x_first: bool,
    /// State dimension d.
    pub dim: usize,
    /// Element type of inputs and output.
    pub dtype: OnnxDtype,
    /// Shape of the time input.
    pub time_shape: TimeShape,
}

/// Model element types the field converts to and from.
trait Elem: PrimitiveTensorElementType + Copy + fmt::Debug + 'static {
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
}

impl Elem for f32 {
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
}

impl Elem for f64 {
    fn from_f64(v: f64) -> Self {
        v
    }
    fn to_f64(self) -> f64 {
        self
    }
}

/// One session with the input buffers its runs reuse.
struct Worker {
    session: Session,
    x32: Vec<f32>,
    t32: Vec<f32>,
    x64: Vec<f64>,
    t64: Vec<f64>,
}

/// An ONNX model v = f(x, t) as a [`Field`] (see the [module docs](self) for the
/// signature it accepts, how ONNX Runtime is found and how calls are threaded).
///
/// It has no divergence and no Jacobian–vector product (ONNX Runtime computes no
/// derivatives): log-densities need a native model.
pub struct OnnxField<T> {
    signature: OnnxSignature,
    model: Arc<[u8]>,
    options: OnnxOptions,
    idle: Mutex<Vec<Worker>>,
    _real: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for OnnxField<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OnnxField")
            .field("signature", &self.signature)
            .field("model_bytes", &self.model.len())
            .field("options", &self.options)
            .finish()
    }
}

impl<T: Real> OnnxField<T> {
    /// Loads an ONNX model file with the default [`OnnxOptions`] and validates its
    /// signature.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        Self::load_with(path, OnnxOptions::default())
    }

    /// Loads an ONNX model file with `options` and validates its signature.
    pub fn load_with(path: impl AsRef<Path>, options: OnnxOptions) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_bytes(bytes, options).map_err(|e| match e {
            Error::Format(msg) => Error::Format(format!("{}: {msg}", path.display())),
            other => other,
        })
    }

    /// Builds the field from the bytes of an ONNX model and validates its signature.
    pub fn from_bytes(bytes: impl Into<Arc<[u8]>>, options: OnnxOptions) -> Result<Self> {
        if options.block_rows == 0 {
            return Err(Error::InvalidArgument(
                "ONNX block rows must be at least 1".into(),
            ));
        }
        let model: Arc<[u8]> = bytes.into();
        let session = new_session(&model, &options)?;
        let signature = signature(&session)?;
        let field = OnnxField {
            signature,
            model,
            options,
            idle: Mutex::new(Vec::new()),
            _real: PhantomData,
        };
        field.give_back(Worker::new(session));
        Ok(field)
    }

    /// The model's validated signature.
    pub fn signature(&self) -> &OnnxSignature {
        &self.signature
    }

    /// The options the field was built with.
    pub fn options(&self) -> &OnnxOptions {
        &self.options
    }

    /// A feedback controller whose control is the model's output, u(t, x) = f(x, t).
    pub fn into_controller(self) -> FieldController<T> {
        FieldController::new(Arc::new(self))
    }

    fn give_back(&self, w: Worker) {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(w);
    }

    /// Runs `f` on an idle session (a new one when all are busy) and returns it to the
    /// pool.
    fn with_worker<R>(&self, f: impl FnOnce(&mut Worker) -> Result<R>) -> Result<R> {
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let mut w = match idle {
            Some(w) => w,
            None => Worker::new(new_session(&self.model, &self.options)?),
        };
        let out = f(&mut w);
        self.give_back(w);
        out
    }

    fn run(&self, t: &[T], x: &[T], v: &mut [T]) -> Result<()> {
        if t.is_empty() {
            return Ok(());
        }
        let sig = &self.signature;
        self.with_worker(|w| {
            let Worker {
                session,
                x32,
                t32,
                x64,
                t64,
            } = w;
            match sig.dtype {
                OnnxDtype::F32 => run_groups(sig, session, t, x, v, x32, t32),
                OnnxDtype::F64 => run_groups(sig, session, t, x, v, x64, t64),
            }
        })
    }
}

impl Worker {
    fn new(session: Session) -> Self {
        Worker {
            session,
            x32: Vec::new(),
            t32: Vec::new(),
            x64: Vec::new(),
            t64: Vec::new(),
        }
    }
}

impl<T: Real> Field<T> for OnnxField<T> {
    fn dim(&self) -> usize {
        self.signature.dim
    }

    fn scratch_len(&self) -> usize {
        0
    }

    fn eval(&self, t: T, x: &[T], v: &mut [T], _scratch: &mut [T]) -> Result<()> {
        check_len("state", x.len(), self.signature.dim)?;
        check_len("output", v.len(), self.signature.dim)?;
        self.run(&[t], x, v)
    }

    fn eval_div(&self, _t: T, _x: &[T], _v: &mut [T], _scratch: &mut [T]) -> Result<T> {
        Err(Error::Unsupported(
            "an ONNX field has no divergence (ONNX Runtime computes no Jacobian); \
             log-densities need a native model"
                .into(),
        ))
    }

    fn preferred_block_rows(&self) -> usize {
        self.options.block_rows
    }

    fn eval_block(&self, t: &[T], x: &[T], v: &mut [T], _scratch: &mut [T]) -> Result<()> {
        check_block(self.signature.dim, t.len(), x, v)?;
        self.run(t, x, v)
    }
}

/// Evaluates a block: one run, or with a scalar time input one run per run of rows
/// with equal times.
fn run_groups<T: Real, E: Elem>(
    sig: &OnnxSignature,
    session: &mut Session,
    t: &[T],
    x: &[T],
    v: &mut [T],
    xb: &mut Vec<E>,
    tb: &mut Vec<E>,
) -> Result<()> {
    let d = sig.dim;
    if sig.time_shape != TimeShape::Scalar {
        return run_once(sig, session, t, x, v, xb, tb);
    }
    let mut start = 0;
    while start < t.len() {
        let ts = t[start];
        let end = start + t[start..].iter().take_while(|&&ti| ti == ts).count().max(1);
        run_once(
            sig,
            session,
            &t[start..start + 1],
            &x[start * d..end * d],
            &mut v[start * d..end * d],
            xb,
            tb,
        )?;
        start = end;
    }
    Ok(())
}

/// One ONNX Runtime run over `x.len() / d` rows (with a scalar time input, `t` holds
/// the one time).
fn run_once<T: Real, E: Elem>(
    sig: &OnnxSignature,
    session: &mut Session,
    t: &[T],
    x: &[T],
    v: &mut [T],
    xb: &mut Vec<E>,
    tb: &mut Vec<E>,
) -> Result<()> {
    let d = sig.dim;
    let rows = x.len() / d;
    xb.clear();
    xb.extend(x.iter().map(|&xi| E::from_f64(xi.f64())));
    tb.clear();
    tb.extend(t.iter().map(|&ti| E::from_f64(ti.f64())));
    let x_in: SessionInputValue<'_> = TensorRef::from_array_view(([rows, d], &xb[..]))
        .map_err(|e| run_error(sig, e))?
        .into();
    let t_in: SessionInputValue<'_> = match sig.time_shape {
        TimeShape::Scalar => TensorRef::from_array_view(((), &tb[..1])),
        TimeShape::Batch => TensorRef::from_array_view(([rows], &tb[..])),
        TimeShape::BatchByOne => TensorRef::from_array_view(([rows, 1], &tb[..])),
    }
    .map_err(|e| run_error(sig, e))?
    .into();
    let inputs = if sig.x_first {
        [x_in, t_in]
    } else {
        [t_in, x_in]
    };
    let outputs = session.run(inputs).map_err(|e| run_error(sig, e))?;
    let (shape, data) = outputs[0]
        .try_extract_tensor::<E>()
        .map_err(|e| run_error(sig, e))?;
    let expected = [rows as i64, d as i64];
    if shape[..] != expected[..] {
        return Err(Error::Shape {
            name: format!("ONNX output `{}`", sig.output_name),
            found: shape.iter().map(|&s| s.max(0) as usize).collect(),
            expected: vec![rows, d],
        });
    }
    for (vi, &o) in v.iter_mut().zip(data) {
        *vi = T::of(o.to_f64());
    }
    Ok(())
}

fn run_error<R>(sig: &OnnxSignature, e: ort::Error<R>) -> Error {
    Error::Format(format!(
        "ONNX Runtime failed to evaluate the model (output `{}`): {e}",
        sig.output_name
    ))
}

// ---------------------------------------------------------------------------------
// Signature
// ---------------------------------------------------------------------------------

/// Element type and shape of a tensor input or output, or a message saying what it is
/// instead.
fn tensor_info(what: &str, name: &str, ty: &ValueType) -> Result<(OnnxDtype, Vec<i64>)> {
    match ty {
        ValueType::Tensor { ty, shape, .. } => {
            let dtype = match ty {
                TensorElementType::Float32 => OnnxDtype::F32,
                TensorElementType::Float64 => OnnxDtype::F64,
                other => {
                    return Err(Error::Format(format!(
                        "ONNX {what} `{name}` has element type {other}; a field needs float32 or float64"
                    )))
                }
            };
            Ok((dtype, shape.to_vec()))
        }
        other => Err(Error::Format(format!(
            "ONNX {what} `{name}` is {other}, not a tensor"
        ))),
    }
}

fn dims(shape: &[i64]) -> String {
    let parts: Vec<String> = shape
        .iter()
        .map(|&s| {
            if s < 0 {
                "?".to_string()
            } else {
                s.to_string()
            }
        })
        .collect();
    format!("[{}]", parts.join(", "))
}

const EXPECTED: &str = "a field model takes x [batch, d] and t ([batch], [batch, 1] or a scalar) and returns [batch, d]";

/// Checks a session's inputs and output against the field signature.
fn signature(session: &Session) -> Result<OnnxSignature> {
    let inputs = session.inputs();
    let outputs = session.outputs();
    if inputs.len() != 2 {
        let names: Vec<String> = inputs.iter().map(|i| format!("`{}`", i.name())).collect();
        return Err(Error::Format(format!(
            "ONNX model has {} inputs ({}); {EXPECTED}",
            inputs.len(),
            names.join(", ")
        )));
    }
    if outputs.len() != 1 {
        let names: Vec<String> = outputs.iter().map(|o| format!("`{}`", o.name())).collect();
        return Err(Error::Format(format!(
            "ONNX model has {} outputs ({}); {EXPECTED}",
            outputs.len(),
            names.join(", ")
        )));
    }
    let is = |i: usize, n: &str| inputs[i].name().eq_ignore_ascii_case(n);
    // Named x and t: by name; otherwise by position, x first.
    let x_first = !(is(0, "t") || is(1, "x"));
    let (xi, ti) = if x_first { (0, 1) } else { (1, 0) };
    let (x_name, t_name) = (inputs[xi].name(), inputs[ti].name());
    let (x_ty, x_shape) = tensor_info("input", x_name, inputs[xi].dtype())?;
    let (t_ty, t_shape) = tensor_info("input", t_name, inputs[ti].dtype())?;
    let out = &outputs[0];
    let (o_ty, o_shape) = tensor_info("output", out.name(), out.dtype())?;
    const BATCH_HINT: &str =
        "export with a dynamic batch axis (dynamic_axes={\"x\": {0: \"batch\"}, ...})";
    if x_shape.len() != 2 {
        return Err(Error::Format(format!(
            "ONNX state input `{x_name}` has shape {} (rank {}); {EXPECTED}",
            dims(&x_shape),
            x_shape.len()
        )));
    }
    if x_shape[0] >= 0 {
        return Err(Error::Format(format!(
            "ONNX state input `{x_name}` has a fixed batch size {} (shape {}); {BATCH_HINT}",
            x_shape[0],
            dims(&x_shape)
        )));
    }
    if x_shape[1] <= 0 {
        return Err(Error::Format(format!(
            "ONNX state input `{x_name}` has shape {}: the state dimension d must be fixed and positive",
            dims(&x_shape)
        )));
    }
    let d = x_shape[1] as usize;
    let time_shape = match t_shape[..] {
        [] => TimeShape::Scalar,
        [b] if b < 0 => TimeShape::Batch,
        [b, 1] if b < 0 => TimeShape::BatchByOne,
        [b] | [b, 1] => {
            return Err(Error::Format(format!(
                "ONNX time input `{t_name}` has a fixed batch size {b} (shape {}); {BATCH_HINT}",
                dims(&t_shape)
            )))
        }
        _ => {
            return Err(Error::Format(format!(
                "ONNX time input `{t_name}` has shape {}; {EXPECTED}",
                dims(&t_shape)
            )))
        }
    };
    if t_ty != x_ty || o_ty != x_ty {
        return Err(Error::Format(format!(
            "ONNX model mixes element types: `{x_name}` is {}, `{t_name}` {}, output `{}` {}; \
             a field needs one type (float32 or float64)",
            x_ty.name(),
            t_ty.name(),
            out.name(),
            o_ty.name()
        )));
    }
    let out_ok = o_shape.len() == 2
        && (o_shape[0] < 0 || o_shape[0] == 1)
        && (o_shape[1] < 0 || o_shape[1] as usize == d);
    if !out_ok {
        return Err(Error::Format(format!(
            "ONNX output `{}` has shape {} but the state input `{x_name}` is {}: \
             the output must be [batch, {d}]",
            out.name(),
            dims(&o_shape),
            dims(&x_shape)
        )));
    }
    Ok(OnnxSignature {
        x_name: x_name.to_string(),
        t_name: t_name.to_string(),
        output_name: out.name().to_string(),
        x_first,
        dim: d,
        dtype: x_ty,
        time_shape,
    })
}

// ---------------------------------------------------------------------------------
// ONNX Runtime: library and sessions
// ---------------------------------------------------------------------------------

/// The loaded library and the process's ONNX Runtime environment.
struct OrtRuntime {
    environment: Environment,
    library: PathBuf,
}

static RUNTIME: OnceLock<OrtRuntime> = OnceLock::new();
static INIT: Mutex<()> = Mutex::new(());

/// Loads ONNX Runtime (once per process) and returns the path of the library in use.
///
/// Models load it themselves; call this to report which library a process uses, or to
/// fail early. A failure is an [`Error::Unsupported`] listing the places tried, and a
/// later call tries again.
pub fn init() -> Result<PathBuf> {
    Ok(runtime()?.library.clone())
}

fn runtime() -> Result<&'static OrtRuntime> {
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    let _guard = INIT.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    let search = library_search();
    let mut tried = search.tried;
    for path in search.found {
        // ort's loader returns errors; the catch_unwind is a second line of defense
        // against a panic inside a foreign library's initialization path.
        let loaded = catch_unwind(AssertUnwindSafe(|| {
            ort::init_from(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| b.with_name("socflow").build().map_err(|e| e.to_string()))
        }));
        match loaded {
            Ok(Ok(environment)) => {
                let rt = RUNTIME.get_or_init(|| OrtRuntime {
                    environment,
                    library: path,
                });
                return Ok(rt);
            }
            Ok(Err(e)) => tried.push(format!("{} ({e})", path.display())),
            Err(_) => tried.push(format!("{} (panicked while loading)", path.display())),
        }
    }
    Err(Error::Unsupported(format!(
        "ONNX Runtime library not found or not loadable; tried: {}. Install the \
         onnxruntime Python wheel (scripts/setup-python does) or set {DYLIB_ENV} to \
         its onnxruntime/capi/libonnxruntime.so.1.* file",
        if tried.is_empty() {
            "nothing".to_string()
        } else {
            tried.join("; ")
        }
    )))
}

fn new_session(model: &[u8], options: &OnnxOptions) -> Result<Session> {
    let rt = runtime()?;
    let builder = |e: ort::Error<ort::session::builder::SessionBuilder>| {
        Error::Format(format!("ONNX Runtime session options: {e}"))
    };
    let mut b = Session::builder(&rt.environment)
        .map_err(|e| Error::Format(format!("ONNX Runtime session: {e}")))?;
    if options.intra_threads > 0 {
        b = b
            .with_intra_threads(options.intra_threads)
            .map_err(builder)?
            .with_inter_threads(1)
            .map_err(builder)?;
    }
    b.commit_from_memory(model)
        .map_err(|e| Error::Format(format!("not a loadable ONNX model: {e}")))
}

/// Result of the library search: existing files in order, and what else was looked at.
struct Search {
    found: Vec<PathBuf>,
    tried: Vec<String>,
}

/// The ONNX Runtime library files the search finds, in the order they are tried (see
/// the [module docs](self)). Empty when none exists; with `ORT_DYLIB_PATH` set, that
/// file alone (if it exists).
pub fn library_candidates() -> Vec<PathBuf> {
    library_search().found
}

fn library_search() -> Search {
    let mut s = Search {
        found: Vec::new(),
        tried: Vec::new(),
    };
    if let Some(p) = std::env::var_os(DYLIB_ENV).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        let p = std::path::absolute(&p).unwrap_or(p);
        if p.is_file() {
            s.found.push(p);
        } else {
            s.tried
                .push(format!("{DYLIB_ENV}={} (no such file)", p.display()));
        }
        return s;
    }
    // Python environments: (root, where it came from), the named ones first.
    let mut envs: Vec<(PathBuf, &str)> = Vec::new();
    // An interpreter path: <env>/bin/python.
    if let Some(py) = std::env::var_os("SOCFLOW_PYTHON").filter(|p| !p.is_empty()) {
        if let Some(root) = Path::new(&py).parent().and_then(Path::parent) {
            envs.push((root.to_path_buf(), "SOCFLOW_PYTHON"));
        }
    }
    if let Some(v) = std::env::var_os("VIRTUAL_ENV").filter(|p| !p.is_empty()) {
        envs.push((PathBuf::from(v), "VIRTUAL_ENV"));
    }
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(4) {
            envs.push((dir.join("pyenv"), ""));
            envs.push((dir.join("target").join("pyenv"), ""));
        }
    }
    envs.push((PathBuf::from("target/pyenv"), ""));
    let mut site_dirs: Vec<PathBuf> = Vec::new();
    for (env, from) in &envs {
        let before = site_dirs.len();
        for lib in ["lib", "lib64"] {
            site_dirs.extend(python_dirs(&env.join(lib), "site-packages"));
        }
        if site_dirs.len() == before && !from.is_empty() {
            s.tried.push(format!(
                "{from}: no Python environment at {} (no lib/python3*/site-packages)",
                env.display()
            ));
        }
    }
    if envs.iter().all(|(env, _)| !env.is_dir()) {
        s.tried
            .push("no pyenv or target/pyenv beside the executable or in the current folder".into());
    }
    if let Some(home) = std::env::var_os("HOME").filter(|p| !p.is_empty()) {
        site_dirs.extend(python_dirs(
            &Path::new(&home).join(".local/lib"),
            "site-packages",
        ));
    }
    for lib in ["/usr/local/lib", "/usr/lib", "/usr/lib64"] {
        for sub in ["site-packages", "dist-packages"] {
            site_dirs.extend(python_dirs(Path::new(lib), sub));
        }
    }
    site_dirs.push(PathBuf::from("/usr/lib/python3/dist-packages"));
    let mut seen = std::collections::HashSet::new();
    site_dirs.retain(|p| seen.insert(p.clone()));
    for site in site_dirs {
        let capi = site.join("onnxruntime").join("capi");
        let before = s.found.len();
        push_libraries(&capi, &mut s.found);
        if s.found.len() == before && site.is_dir() {
            s.tried
                .push(format!("{} (no {})", capi.display(), library_pattern()));
        }
    }
    let mut lib_dirs: Vec<PathBuf> = std::env::var_os("LD_LIBRARY_PATH")
        .map(|v| std::env::split_paths(&v).collect())
        .unwrap_or_default();
    lib_dirs.extend(
        [
            "/usr/local/lib",
            "/usr/lib",
            "/usr/lib/x86_64-linux-gnu",
            "/usr/lib/aarch64-linux-gnu",
            "/usr/lib64",
            "/opt/homebrew/lib",
        ]
        .map(PathBuf::from),
    );
    for dir in &lib_dirs {
        let before = s.found.len();
        push_libraries(dir, &mut s.found);
        if s.found.len() == before && dir.is_dir() {
            s.tried
                .push(format!("{}/{}", dir.display(), library_pattern()));
        }
    }
    let mut seen = std::collections::HashSet::new();
    s.found.retain(|p| seen.insert(p.clone()));
    s
}

/// `<lib>/python3*/<sub>` folders, newest Python first.
fn python_dirs(lib: &Path, sub: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(lib) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
        .map(|e| e.path().join(sub))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort_by_key(|p| std::cmp::Reverse(version_key(&p.to_string_lossy())));
    dirs
}

fn library_pattern() -> String {
    format!(
        "{}onnxruntime{}*",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    )
}

/// Whether a file name is the ONNX Runtime library: `libonnxruntime.so`,
/// `libonnxruntime.so.1.x.y`, `libonnxruntime.1.x.y.dylib`, `onnxruntime.dll` (not the
/// `_providers_*` plug-ins).
fn is_library_name(name: &str) -> bool {
    let stem = format!("{}onnxruntime", std::env::consts::DLL_PREFIX);
    let Some(rest) = name.strip_prefix(&stem) else {
        return false;
    };
    let suffix = std::env::consts::DLL_SUFFIX;
    rest == suffix
        || rest.starts_with(&format!("{suffix}."))
        || (rest.starts_with('.') && rest.ends_with(suffix) && !rest.contains('_'))
}

/// Adds the library files in `dir`, newest version first.
fn push_libraries(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut libs: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| is_library_name(&e.file_name().to_string_lossy()))
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    libs.sort_by_key(|p| std::cmp::Reverse(version_key(&p.to_string_lossy())));
    out.extend(libs);
}

/// The numbers in a name, for ordering versions (python3.12 after python3.9).
fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_names() {
        if cfg!(target_os = "linux") {
            assert!(is_library_name("libonnxruntime.so"));
            assert!(is_library_name("libonnxruntime.so.1.32.0"));
            assert!(!is_library_name("libonnxruntime_providers_shared.so"));
            assert!(!is_library_name("onnxruntime_pybind11_state.so"));
            assert!(!is_library_name("libonnxruntime.a"));
        }
        assert!(version_key("python3.12") > version_key("python3.9"));
        assert!(version_key("libonnxruntime.so.1.32.0") > version_key("libonnxruntime.so.1.4.0"));
    }
}
