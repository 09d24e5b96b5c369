//! A GPU: its context, the one stream everything runs on, a cuBLAS handle and the
//! compiled kernels.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use cudarc::cublas::CudaBlas;
use cudarc::driver::{CudaContext, CudaFunction, CudaStream, LaunchConfig};

use super::kernels::{self, KERNELS};
use super::libs::{self, CudaLib};
use crate::error::{Error, Result};

/// An NVIDIA GPU ready to run socflow's kernels: a context on the device, one stream
/// (every operation of the backend runs on it, in order), a cuBLAS handle on that
/// stream and the kernels compiled for the device with NVRTC.
///
/// Create one per device with [`Gpu::new`] and share the `Arc`: calls from several
/// threads take turns (one sampling call at a time per `Gpu`).
pub struct Gpu {
    pub(crate) stream: Arc<CudaStream>,
    pub(crate) blas: CudaBlas,
    functions: HashMap<String, CudaFunction>,
    lock: Mutex<()>,
    ordinal: usize,
    name: String,
    capability: (u32, u32),
    nvrtc: String,
    cublas: String,
    // Last: the context is released after the stream and the handle that use it.
    _ctx: Arc<CudaContext>,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu")
            .field("ordinal", &self.ordinal)
            .field("name", &self.name)
            .field("capability", &self.capability)
            .finish_non_exhaustive()
    }
}

/// Turns a panic inside cudarc (a missing symbol, an unwrap on a failed call) into an
/// error naming `what`.
pub(crate) fn guard<R>(what: &str, f: impl FnOnce() -> Result<R>) -> Result<R> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let why = p
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| p.downcast_ref::<&str>().copied())
            .unwrap_or("no message");
        Err(Error::Device(format!(
            "{what}: the CUDA library failed: {why}"
        )))
    })
}

/// Maps a cudarc driver or cuBLAS error to [`Error::Device`], naming the operation.
pub(crate) fn dev<E: std::fmt::Debug>(what: &'static str) -> impl Fn(E) -> Error {
    move |e| Error::Device(format!("{what}: {e:?}"))
}

/// Whether the CUDA driver library can be opened (no device is touched).
pub(crate) fn driver_present() -> bool {
    // SAFETY: opening libcuda runs its initializers, as cudarc's own first call would.
    catch_unwind(|| unsafe { cudarc::driver::sys::is_culib_present() }).unwrap_or(false)
}

const NO_DRIVER: &str = "no CUDA driver: none of libcuda.so, libcuda.so.1 (and the other \
    names cudarc tries) could be opened from the dynamic loader's path (LD_LIBRARY_PATH, \
    ldconfig); this machine has no NVIDIA driver";

impl Gpu {
    /// Opens device `ordinal` (0 is the first GPU), compiles the kernels for it and
    /// creates the cuBLAS handle.
    ///
    /// Errors ([`Error::Device`], never a panic): no CUDA driver on the machine, an
    /// ordinal out of range (the message gives the number of devices), NVRTC or cuBLAS
    /// not found (the message lists every place searched, see the `libs` module docs),
    /// a kernel that does not compile, or any driver failure.
    pub fn new(ordinal: usize) -> Result<Arc<Gpu>> {
        if !driver_present() {
            return Err(Error::Device(NO_DRIVER.into()));
        }
        guard("opening the GPU", || Self::open(ordinal))
    }

    /// The number of CUDA devices (0 without a driver).
    pub fn device_count() -> Result<usize> {
        if !driver_present() {
            return Ok(0);
        }
        guard("counting CUDA devices", || {
            let n = CudaContext::device_count().map_err(dev("initializing the CUDA driver"))?;
            Ok(usize::try_from(n).unwrap_or(0))
        })
    }

    fn open(ordinal: usize) -> Result<Arc<Gpu>> {
        let count = CudaContext::device_count().map_err(dev("initializing the CUDA driver"))?;
        if ordinal >= usize::try_from(count).unwrap_or(0) {
            return Err(Error::Device(format!(
                "GPU ordinal {ordinal} is out of range: the CUDA driver sees {count} device{}",
                if count == 1 { "" } else { "s" }
            )));
        }
        let ctx = CudaContext::new(ordinal).map_err(dev("creating the CUDA context"))?;
        // SAFETY: everything the backend allocates is used on the one stream below, in
        // submission order, and host copies synchronize that stream, so the per-slice
        // events that order work across streams are not needed.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(dev("creating a CUDA stream"))?;
        let name = ctx.name().map_err(dev("reading the device name"))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(dev("reading the compute capability"))?;
        let capability = (
            u32::try_from(major).unwrap_or(0),
            u32::try_from(minor).unwrap_or(0),
        );
        let nvrtc = libs::ensure(CudaLib::Nvrtc).map_err(Error::Device)?;
        let versions = Versions::read();
        let nvrtc = format!(
            "{nvrtc} (NVRTC {}, driver for CUDA {})",
            versions.nvrtc, versions.driver
        );
        let arch = format!("compute_{}{}", capability.0, capability.1);
        let ptx = kernels::compile(&arch)?;
        let module = ctx.load_module(ptx).map_err(|e| {
            Error::Device(format!(
                "loading the kernels compiled by NVRTC {} into a driver for CUDA {}: {e:?} (PTX \
                 from an NVRTC newer than the driver does not load: put the NVRTC of a CUDA \
                 toolkit no newer than the driver first, e.g. with SOCFLOW_CUDA_LIB_DIR or \
                 LD_LIBRARY_PATH)",
                versions.nvrtc, versions.driver
            ))
        })?;
        let mut functions = HashMap::new();
        for k in KERNELS {
            for suffix in ["f32", "f64"] {
                let name = format!("{k}_{suffix}");
                let f = module
                    .load_function(&name)
                    .map_err(dev("finding a compiled kernel"))?;
                functions.insert(name, f);
            }
        }
        let cublas = libs::ensure(CudaLib::Cublas).map_err(Error::Device)?;
        let blas = CudaBlas::new(stream.clone()).map_err(dev("creating the cuBLAS handle"))?;
        // f32 GEMMs in f32: no TF32 (the results stay within 1e-5 of the CPU's).
        // SAFETY: the handle is valid (just created) and owned by this Gpu.
        unsafe {
            cudarc::cublas::sys::cublasSetMathMode(
                *blas.handle(),
                cudarc::cublas::sys::cublasMath_t::CUBLAS_DEFAULT_MATH,
            )
        }
        .result()
        .map_err(dev("setting the cuBLAS math mode"))?;
        Ok(Arc::new(Gpu {
            stream,
            blas,
            functions,
            lock: Mutex::new(()),
            ordinal,
            name,
            capability,
            nvrtc,
            cublas,
            _ctx: ctx,
        }))
    }

    /// The device ordinal.
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// The device's name (e.g. "NVIDIA H200").
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The compute capability (major, minor) the kernels were compiled for.
    pub fn compute_capability(&self) -> (u32, u32) {
        self.capability
    }

    /// Where NVRTC and cuBLAS were loaded from, for diagnostics.
    pub fn libraries(&self) -> String {
        format!("NVRTC from {}, cuBLAS from {}", self.nvrtc, self.cublas)
    }

    /// Waits until every operation submitted to the device has finished.
    pub fn synchronize(&self) -> Result<()> {
        guard("synchronizing the GPU", || {
            self.stream
                .synchronize()
                .map_err(dev("synchronizing the GPU"))
        })
    }

    /// The stream every operation of this GPU runs on, in order: for crates that run
    /// their own kernels and copies on this device (the trainer's backend), so that
    /// their work is ordered with the backend's. Buffers are allocated without
    /// cross-stream events (event tracking is off): use them on this stream only.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The cuBLAS handle, bound to [`stream`](Gpu::stream), in the default math mode
    /// (f32 GEMMs in f32: no TF32).
    pub fn blas(&self) -> &CudaBlas {
        &self.blas
    }

    /// Holds the device for one call (calls from several threads take turns).
    pub(crate) fn lock(&self) -> MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The kernel `name` compiled for precision `suffix`.
    pub(crate) fn function(&self, name: &str, suffix: &str) -> Result<&CudaFunction> {
        self.functions
            .get(&format!("{name}_{suffix}"))
            .ok_or_else(|| Error::Device(format!("kernel {name}_{suffix} was not compiled")))
    }
}

/// Makes NVRTC loadable by cudarc without a device, searching as the `libs` module
/// docs say (for crates compiling their own kernels with `cudarc::nvrtc`): where it
/// was found, or [`Error::Device`] listing every place searched.
pub fn find_nvrtc() -> Result<String> {
    libs::ensure(CudaLib::Nvrtc).map_err(Error::Device)
}

/// The CUDA versions of the driver and of the NVRTC loaded, as "major.minor" ("?" when
/// unknown), for messages.
struct Versions {
    driver: String,
    nvrtc: String,
}

impl Versions {
    fn read() -> Self {
        let mut v: std::ffi::c_int = 0;
        // SAFETY: the driver library is loaded (checked by `Gpu::new`) and the call
        // writes one int.
        let driver = match unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut v) } {
            cudarc::driver::sys::CUresult::CUDA_SUCCESS => {
                format!("{}.{}", v / 1000, v % 1000 / 10)
            }
            _ => "?".into(),
        };
        let (mut major, mut minor): (std::ffi::c_int, std::ffi::c_int) = (0, 0);
        // SAFETY: NVRTC is loaded (libs::ensure succeeded) and the call writes two ints.
        let nvrtc = match unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) } {
            cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS => format!("{major}.{minor}"),
            _ => "?".into(),
        };
        Versions { driver, nvrtc }
    }
}

/// A launch covering `n` elements with a grid-strided loop (256 threads a block, at
/// most 65 535 blocks: the kernels loop over the rest).
pub(crate) fn launch_config(n: usize) -> LaunchConfig {
    const THREADS: usize = 256;
    let blocks = n.div_ceil(THREADS).clamp(1, 65_535);
    LaunchConfig {
        grid_dim: (blocks as u32, 1, 1),
        block_dim: (THREADS as u32, 1, 1),
        shared_mem_bytes: 0,
    }
}
