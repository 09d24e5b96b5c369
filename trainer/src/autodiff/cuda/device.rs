//! The `Cuda` backend: device buffers, kernel launches and cuBLAS GEMMs.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType};
use cudarc::driver::{
    CudaFunction, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg,
};
use socflow_runtime::cuda::Gpu;

use super::{kernels, KernelParam, MemoryStats};
use crate::autodiff::backend::{Backend, BinaryOp, Broadcast, Reduction, Storage, UnaryOp};
use crate::autodiff::cpu::{check_len, checked_len, grown, logcosh_family, rhs_len};
use crate::autodiff::error::{Error, Result};
use crate::autodiff::tensor::{DType, Shape};
use crate::autodiff::{Cpu, CpuBuffer};

/// Threads per block of the elementwise kernels.
const THREADS: u32 = 256;
/// Blocks of a grid-strided launch at most (the kernels loop over the rest).
const MAX_BLOCKS: usize = 65_535;
/// Blocks of the partial sums of a total sum / largest magnitude at most.
const MAX_PARTIALS: usize = 1024;
/// Rows up to this width are summed one thread per row in column order (the CPU's
/// order, so bitwise its result); wider ones one warp per row.
const SEQ_ROW_SUM: usize = 32;
/// Rows per chunk of a column sum at least (each chunk's partial sums are summed in
/// chunk order by a second kernel).
const MIN_CHUNK_ROWS: usize = 64;
/// Chunks of a column sum at most (about).
const MAX_CHUNKS: usize = 256;

/// The GPU backend: kernels and cuBLAS GEMMs on one device, every operation on the
/// runtime [`Gpu`]'s stream, in order.
///
/// Create it with [`Cuda::new`]; clones share the device, its kernels and its stream.
/// Results agree with [`Cpu`] as the [module documentation](super) says. Host data
/// crosses only in [`Backend::upload`], [`Backend::download`], [`Backend::max_abs`] and
/// [`Backend::all_finite`], which wait for the device.
#[derive(Clone)]
pub struct Cuda {
    gpu: Arc<Gpu>,
    functions: Arc<HashMap<String, CudaFunction>>,
    /// Every kernel's parameter list (from the source), which each launch must match.
    params: Arc<HashMap<String, Vec<KernelParam>>>,
    memory: Arc<MemoryCounter>,
}

/// Bytes held by a backend's live buffers, and the most held at once (shared by the
/// clones of one [`Cuda`] and by every buffer it allocated).
#[derive(Debug, Default)]
struct MemoryCounter {
    live: AtomicU64,
    peak: AtomicU64,
}

impl MemoryCounter {
    fn allocated(&self, bytes: u64) {
        let live = self.live.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak.fetch_max(live, Ordering::Relaxed);
    }

    fn freed(&self, bytes: u64) {
        self.live.fetch_sub(bytes, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Cuda {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cuda")
            .field("gpu", &self.gpu)
            .finish_non_exhaustive()
    }
}

/// A device buffer: `len` elements of one [`DType`] in GPU memory (a little-endian
/// byte allocation, 16-bit elements as their IEEE binary16 / bfloat16 bits).
pub struct CudaBuffer {
    data: CudaSlice<u8>,
    dtype: DType,
    len: usize,
    /// The backend's counter, told of the allocation's bytes when the buffer drops.
    memory: Arc<MemoryCounter>,
}

impl Drop for CudaBuffer {
    fn drop(&mut self) {
        // `data` frees the device memory right after this (its own drop).
        self.memory.freed(self.data.len() as u64);
    }
}

impl std::fmt::Debug for CudaBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaBuffer")
            .field("dtype", &self.dtype)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl Storage for CudaBuffer {
    fn dtype(&self) -> DType {
        self.dtype
    }

    fn len(&self) -> usize {
        self.len
    }
}

/// A kernel argument.
#[derive(Clone, Copy, Debug)]
enum Arg {
    /// A device pointer (0 for an absent optional operand).
    Ptr(u64),
    /// A size or index (`long long`).
    I64(i64),
    /// A code (`int`).
    I32(i32),
    /// A scalar (`double`, rounded by the kernel to its compute type).
    F64(f64),
    /// A bit pattern (`unsigned long long`).
    U64(u64),
}

fn backend_err(message: String) -> Error {
    Error::Backend {
        backend: "cuda",
        message,
    }
}

/// Maps a cudarc error to [`Error::Backend`], naming the operation.
fn dev<E: std::fmt::Debug>(what: &'static str) -> impl Fn(E) -> Error {
    move |e| backend_err(format!("{what}: {e:?}"))
}

/// Runs `f`, turning a panic inside cudarc (a missing symbol, an unwrap on a failed
/// driver call) into an error naming `what`.
fn guard<R>(what: &str, f: impl FnOnce() -> Result<R>) -> Result<R> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let why = p
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| p.downcast_ref::<&str>().copied())
            .unwrap_or("no message");
        Err(backend_err(format!(
            "{what}: the CUDA library failed: {why}"
        )))
    })
}

fn suffix(d: DType) -> &'static str {
    match d {
        DType::F64 => "f64",
        DType::F32 => "f32",
        DType::F16 => "f16",
        DType::Bf16 => "bf16",
    }
}

fn width(d: DType) -> &'static str {
    match d.size_of() {
        2 => "u16",
        4 => "u32",
        _ => "u64",
    }
}

/// The compute (and accumulation) type of a storage type.
fn compute(d: DType) -> DType {
    if d == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

/// A size as a kernel's `long long`.
fn int(n: usize) -> Result<i64> {
    i64::try_from(n).map_err(|_| Error::InvalidArgument(format!("size {n} exceeds i64")))
}

/// A size as cuBLAS's `int`.
fn int32(n: usize) -> Result<i32> {
    i32::try_from(n)
        .map_err(|_| Error::InvalidArgument(format!("GEMM size {n} exceeds cuBLAS's 32-bit sizes")))
}

/// A grid-strided launch over `n` elements.
fn grid(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(THREADS as usize).clamp(1, MAX_BLOCKS);
    LaunchConfig {
        grid_dim: (blocks as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The code of a map in the kernels (`ops.cuh`, `AD_NEG` …).
fn unary_code(op: UnaryOp) -> i32 {
    match op {
        UnaryOp::Neg => 0,
        UnaryOp::Square => 1,
        UnaryOp::Abs => 2,
        UnaryOp::Sign => 3,
        UnaryOp::Recip => 4,
        UnaryOp::Exp => 5,
        UnaryOp::Log => 6,
        UnaryOp::Sqrt => 7,
        UnaryOp::Tanh => 8,
        UnaryOp::Sech2 => 9,
        UnaryOp::Sigmoid => 10,
        UnaryOp::Silu => 11,
        UnaryOp::SiluPrime => 12,
        UnaryOp::SiluSecond => 13,
        UnaryOp::Softplus => 14,
        UnaryOp::LogCosh => 15,
        UnaryOp::Sin => 16,
        UnaryOp::Cos => 17,
    }
}

fn binary_code(op: BinaryOp) -> i32 {
    match op {
        BinaryOp::Add => 0,
        BinaryOp::Sub => 1,
        BinaryOp::Mul => 2,
        BinaryOp::Div => 3,
    }
}

fn broadcast_code(b: Broadcast) -> i32 {
    match b {
        Broadcast::None => 0,
        Broadcast::Row => 1,
        Broadcast::Col => 2,
        Broadcast::Scalar => 3,
    }
}

fn same_dtype(op: &'static str, a: &CudaBuffer, b: &CudaBuffer) -> Result<()> {
    if a.dtype == b.dtype {
        Ok(())
    } else {
        Err(Error::DType {
            op,
            lhs: a.dtype,
            rhs: b.dtype,
        })
    }
}

/// (rows, cols) of op(X) for X stored `shape`, transposed if `t`.
fn op_dims(shape: Shape, t: bool) -> (usize, usize) {
    if t {
        (shape.cols, shape.rows)
    } else {
        (shape.rows, shape.cols)
    }
}

/// The little-endian bytes of a host buffer.
fn host_bytes(x: &CpuBuffer) -> Vec<u8> {
    match x {
        CpuBuffer::F64(v) => v.iter().flat_map(|e| e.to_le_bytes()).collect(),
        CpuBuffer::F32(v) => v.iter().flat_map(|e| e.to_le_bytes()).collect(),
        CpuBuffer::Bf16(v) => v.iter().flat_map(|e| e.to_bits().to_le_bytes()).collect(),
        CpuBuffer::F16(v) => v.iter().flat_map(|e| e.to_bits().to_le_bytes()).collect(),
    }
}

/// Elements of `dtype` from little-endian bytes, widened exactly to f64.
fn from_bytes(bytes: &[u8], dtype: DType) -> Vec<f64> {
    match dtype {
        DType::F64 => bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect(),
        DType::F32 => bytes
            .chunks_exact(4)
            .map(|c| f64::from(f32::from_le_bytes(c.try_into().expect("4 bytes"))))
            .collect(),
        DType::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f64())
            .collect(),
        DType::Bf16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f64())
            .collect(),
    }
}

impl Cuda {
    /// Opens GPU `ordinal` (0 is the first) through the runtime's [`Gpu::new`] and
    /// compiles the autodiff kernels for it with NVRTC.
    ///
    /// Errors ([`Error::Backend`], never a panic): no CUDA driver on the machine, an
    /// ordinal out of range, NVRTC or cuBLAS not found (the message lists every place
    /// searched), a kernel that does not compile or load, any driver failure.
    pub fn new(ordinal: usize) -> Result<Cuda> {
        let gpu = Gpu::new(ordinal).map_err(|e| backend_err(e.to_string()))?;
        Cuda::on(gpu)
    }

    /// The backend on an already opened [`Gpu`] (sharing its stream and cuBLAS
    /// handle with the runtime's GPU fields and samplers), with the autodiff kernels
    /// compiled for it.
    pub fn on(gpu: Arc<Gpu>) -> Result<Cuda> {
        let (major, minor) = gpu.compute_capability();
        let arch = format!("compute_{major}{minor}");
        let params = kernels::kernel_params().map_err(backend_err)?;
        let ptx = kernels::compile(&arch)?;
        guard("loading the autodiff kernels", || {
            let module = gpu.stream().context().load_module(ptx).map_err(dev(
                "loading the compiled kernels (a driver older than NVRTC?)",
            ))?;
            let mut functions = HashMap::new();
            for name in kernels::kernel_names() {
                let f = module
                    .load_function(&name)
                    .map_err(dev("finding a compiled kernel"))?;
                functions.insert(name, f);
            }
            Ok(Cuda {
                gpu: gpu.clone(),
                functions: Arc::new(functions),
                params: Arc::new(params),
                memory: Arc::default(),
            })
        })
    }

    /// The device (name, compute capability, libraries).
    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// Waits until every operation submitted to the device has finished (errors of
    /// earlier asynchronous kernels surface here or at the next download).
    pub fn synchronize(&self) -> Result<()> {
        self.gpu
            .synchronize()
            .map_err(|e| backend_err(e.to_string()))
    }

    /// The device memory held by this backend's buffers (every tensor, trajectory and
    /// scratch buffer of its operations, all clones together): bytes live now and the
    /// most live at once since it was created or [`reset_peak_memory`](Self::reset_peak_memory)
    /// was last called. What PyTorch's `memory_allocated` / `max_memory_allocated`
    /// count for its tensors; cuBLAS workspaces and the CUDA context are not included.
    pub fn memory(&self) -> MemoryStats {
        MemoryStats {
            live_bytes: self.memory.live.load(Ordering::Relaxed),
            peak_bytes: self.memory.peak.load(Ordering::Relaxed),
        }
    }

    /// Starts a new peak: [`memory`](Self::memory)'s `peak_bytes` becomes the bytes
    /// live now.
    pub fn reset_peak_memory(&self) {
        let live = self.memory.live.load(Ordering::Relaxed);
        self.memory.peak.store(live, Ordering::Relaxed);
    }

    fn stream(&self) -> &Arc<CudaStream> {
        self.gpu.stream()
    }

    fn function(&self, name: &str) -> Result<&CudaFunction> {
        self.functions
            .get(name)
            .ok_or_else(|| backend_err(format!("kernel {name} was not compiled")))
    }

    /// A buffer of `len` elements of `dtype`, contents unset: the caller writes every
    /// element before the buffer is read.
    fn alloc(&self, len: usize, dtype: DType) -> Result<CudaBuffer> {
        let bytes = len
            .checked_mul(dtype.size_of())
            .ok_or_else(|| Error::InvalidArgument(format!("{len} elements overflow")))?;
        // Never a zero-byte allocation (the driver refuses those); the length says how
        // many elements there are.
        let stream = self.stream();
        // SAFETY: the memory is uninitialized device memory, never read by the host;
        // every caller writes each of the `len` elements (a kernel, a copy or a fill)
        // before any kernel or copy reads them.
        let data = guard("allocating device memory", || {
            unsafe { stream.alloc::<u8>(bytes.max(8)) }.map_err(dev("allocating device memory"))
        })?;
        self.memory.allocated(data.len() as u64);
        Ok(CudaBuffer {
            data,
            dtype,
            len,
            memory: self.memory.clone(),
        })
    }

    /// A buffer of `len` zeros.
    fn zeros(&self, len: usize, dtype: DType) -> Result<CudaBuffer> {
        let mut b = self.alloc(len, dtype)?;
        let stream = self.stream();
        guard("zeroing device memory", || {
            stream
                .memset_zeros(&mut b.data)
                .map_err(dev("zeroing device memory"))
        })?;
        Ok(b)
    }

    /// The device address of a buffer, for a kernel argument or cuBLAS.
    fn ptr(&self, b: &CudaBuffer) -> u64 {
        // The context does no event tracking (the runtime's `Gpu` turns it off: one
        // stream orders everything), so the guard records nothing when dropped.
        let (p, _no_event) = b.data.device_ptr(self.stream());
        p
    }

    /// The device address of a buffer that is written.
    fn ptr_mut(&self, b: &mut CudaBuffer) -> u64 {
        let (p, _no_event) = b.data.device_ptr_mut(self.stream());
        p
    }

    /// Launches kernel `name` with `args` (in the kernel's parameter order and types).
    fn launch(&self, name: &str, cfg: LaunchConfig, args: &[Arg]) -> Result<()> {
        let f = self.function(name)?;
        self.check_args(name, args)?;
        let stream = self.stream();
        guard(name, || {
            let mut b = stream.launch_builder(f);
            for a in args {
                match a {
                    Arg::Ptr(v) | Arg::U64(v) => b.arg(v),
                    Arg::I64(v) => b.arg(v),
                    Arg::I32(v) => b.arg(v),
                    Arg::F64(v) => b.arg(v),
                };
            }
            // SAFETY: every call site passes the arguments of `name`'s signature in
            // kernels.cu, in order and with the same sizes (pointers and 64-bit
            // integers as u64/i64, `int` as i32, `double` as f64), and every pointer
            // is the address of a live buffer of this stream holding at least the
            // elements the kernel indexes for the sizes passed (checked by the
            // caller); buffers dropped meanwhile are freed in stream order, after
            // the kernel.
            unsafe { b.launch(cfg) }
                .map(|_| ())
                .map_err(dev("launching a kernel"))
        })
    }

    /// That `args` are what kernel `name` takes, kind by kind: a mismatch (a bug in a
    /// launch site) is an error naming both, never a launch with misread arguments.
    fn check_args(&self, name: &str, args: &[Arg]) -> Result<()> {
        let params = self
            .params
            .get(name)
            .ok_or_else(|| backend_err(format!("kernel {name} has no parameter list")))?;
        let kinds: Vec<KernelParam> = args
            .iter()
            .map(|a| match a {
                Arg::Ptr(_) => KernelParam::Ptr,
                Arg::I64(_) => KernelParam::I64,
                Arg::U64(_) => KernelParam::U64,
                Arg::I32(_) => KernelParam::I32,
                Arg::F64(_) => KernelParam::F64,
            })
            .collect();
        if kinds != *params {
            return Err(backend_err(format!(
                "kernel {name} takes {params:?}, launched with {kinds:?}"
            )));
        }
        Ok(())
    }

    /// An elementwise launch over `n` elements (nothing when `n` is 0).
    fn launch_n(&self, name: &str, n: usize, args: &[Arg]) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        self.launch(name, grid(n), args)
    }

    /// `c = α·op(A)·op(B) + β·c` through `cublasGemmEx`, all row-major: cuBLAS reads
    /// a row-major matrix as its transpose, so this computes cᵀ = op(B)ᵀ·op(A)ᵀ.
    /// `c` holds `m × n` elements of `c_type` (the inputs' type, or f32 for 16-bit
    /// inputs); sizes are checked by the caller (k > 0, m, n > 0).
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &self,
        (m, n, k): (usize, usize, usize),
        a: &CudaBuffer,
        a_shape: Shape,
        ta: bool,
        b: &CudaBuffer,
        b_shape: Shape,
        tb: bool,
        c: u64,
        alpha: f64,
        beta: f64,
    ) -> Result<()> {
        let (data_type, c_type, compute_type) = match a.dtype {
            DType::F64 => (
                cudaDataType::CUDA_R_64F,
                cudaDataType::CUDA_R_64F,
                cublasComputeType_t::CUBLAS_COMPUTE_64F,
            ),
            DType::F32 => (
                cudaDataType::CUDA_R_32F,
                cudaDataType::CUDA_R_32F,
                cublasComputeType_t::CUBLAS_COMPUTE_32F,
            ),
            DType::F16 => (
                cudaDataType::CUDA_R_16F,
                cudaDataType::CUDA_R_32F,
                cublasComputeType_t::CUBLAS_COMPUTE_32F,
            ),
            DType::Bf16 => (
                cudaDataType::CUDA_R_16BF,
                cudaDataType::CUDA_R_32F,
                cublasComputeType_t::CUBLAS_COMPUTE_32F,
            ),
        };
        let op = |t: bool| {
            if t {
                cublasOperation_t::CUBLAS_OP_T
            } else {
                cublasOperation_t::CUBLAS_OP_N
            }
        };
        let (m32, n32, k32) = (int32(m)?, int32(n)?, int32(k)?);
        let (lda, ldb) = (int32(b_shape.cols)?, int32(a_shape.cols)?);
        let (pa, pb) = (self.ptr(b), self.ptr(a));
        let (a64, b64) = (alpha, beta);
        let (a32, b32) = (alpha as f32, beta as f32);
        let (alpha_p, beta_p): (*const std::ffi::c_void, *const std::ffi::c_void) =
            if a.dtype == DType::F64 {
                ((&a64 as *const f64).cast(), (&b64 as *const f64).cast())
            } else {
                ((&a32 as *const f32).cast(), (&b32 as *const f32).cast())
            };
        let handle = *self.gpu.blas().handle();
        guard("cuBLAS GEMM", || {
            // SAFETY: the handle is the runtime Gpu's, bound to this stream; the
            // operands are live device buffers of this stream: op(B)ᵀ (cuBLAS's A) is
            // `b` read as an n × k (tb = false: ld = n = b_shape.cols) or transposed
            // k × n (tb: ld = k = b_shape.cols) column-major matrix, op(A)ᵀ likewise
            // from `a`, and `c` holds n × m column-major elements (ld = n) of
            // `c_type`; the callers checked every buffer's length against its shape
            // and that m, n, k > 0. α and β point to host scalars of the compute type
            // (the default host pointer mode) that outlive the call.
            unsafe {
                cudarc::cublas::result::gemm_ex(
                    handle,
                    op(tb),
                    op(ta),
                    n32,
                    m32,
                    k32,
                    alpha_p,
                    pa as *const std::ffi::c_void,
                    data_type,
                    lda,
                    pb as *const std::ffi::c_void,
                    data_type,
                    ldb,
                    beta_p,
                    c as *mut std::ffi::c_void,
                    c_type,
                    n32,
                    compute_type,
                    cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                )
            }
            .map_err(dev("cuBLAS GEMM"))
        })
    }

    /// Checks a product's operands: (m, n, k).
    fn product_dims(
        op: &'static str,
        a: &CudaBuffer,
        a_shape: Shape,
        ta: bool,
        b: &CudaBuffer,
        b_shape: Shape,
        tb: bool,
    ) -> Result<(usize, usize, usize)> {
        check_len("matmul lhs", a.len, checked_len(op, a_shape)?)?;
        check_len("matmul rhs", b.len, checked_len(op, b_shape)?)?;
        same_dtype(op, a, b)?;
        let (m, k) = op_dims(a_shape, ta);
        let (k2, n) = op_dims(b_shape, tb);
        if k != k2 {
            return Err(Error::Shape {
                op,
                lhs: a_shape,
                rhs: b_shape,
            });
        }
        m.checked_mul(n).ok_or_else(|| Error::InvalidShape {
            op,
            shape: Shape::new(m, n),
            message: "element count overflows".into(),
        })?;
        Ok((m, n, k))
    }

    /// `alpha · Σ` over the rows of `x` (rows × cols) → cols: partial sums over chunks
    /// of rows (32 columns × 8 row lanes a block), then the chunks' sums in order.
    fn column_sums(
        &self,
        x: &CudaBuffer,
        rows: usize,
        cols: usize,
        alpha: f64,
    ) -> Result<CudaBuffer> {
        let t = suffix(x.dtype);
        let mut out = self.alloc(cols, x.dtype)?;
        if cols == 0 {
            return Ok(out);
        }
        let chunk_rows = rows.div_ceil(MAX_CHUNKS).max(MIN_CHUNK_ROWS);
        let chunks = rows.div_ceil(chunk_rows);
        let partial_len = chunks
            .checked_mul(cols)
            .ok_or_else(|| Error::InvalidArgument("column sums overflow".into()))?;
        let mut partial = self.alloc(partial_len, compute(x.dtype))?;
        if chunks > 0 {
            let tiles = cols.div_ceil(32).min(MAX_BLOCKS);
            let cfg = LaunchConfig {
                grid_dim: (tiles as u32, chunks as u32, 1),
                block_dim: (32, 8, 1),
                shared_mem_bytes: 0,
            };
            self.launch(
                &format!("colsum_partial_{t}"),
                cfg,
                &[
                    Arg::Ptr(self.ptr_mut(&mut partial)),
                    Arg::Ptr(self.ptr(x)),
                    Arg::I64(int(rows)?),
                    Arg::I64(int(cols)?),
                    Arg::I64(int(chunk_rows)?),
                ],
            )?;
        }
        self.launch_n(
            &format!("colsum_finish_{t}"),
            cols,
            &[
                Arg::Ptr(self.ptr_mut(&mut out)),
                Arg::Ptr(self.ptr(&partial)),
                Arg::I64(int(chunks)?),
                Arg::I64(int(cols)?),
                Arg::F64(alpha),
            ],
        )?;
        Ok(out)
    }

    /// `alpha · Σ x` → 1 element: per-block tree sums, then the blocks' sums in order.
    fn total_sum(&self, x: &CudaBuffer, alpha: f64) -> Result<CudaBuffer> {
        let t = suffix(x.dtype);
        let blocks = x.len.div_ceil(THREADS as usize).clamp(1, MAX_PARTIALS);
        let mut partial = self.alloc(blocks, compute(x.dtype))?;
        let mut out = self.alloc(1, x.dtype)?;
        let cfg = LaunchConfig {
            grid_dim: (blocks as u32, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        self.launch(
            &format!("sum_partial_{t}"),
            cfg,
            &[
                Arg::Ptr(self.ptr_mut(&mut partial)),
                Arg::Ptr(self.ptr(x)),
                Arg::I64(int(x.len)?),
            ],
        )?;
        self.launch(
            &format!("sum_finish_{t}"),
            LaunchConfig {
                grid_dim: (1, 1, 1),
                block_dim: (1, 1, 1),
                shared_mem_bytes: 0,
            },
            &[
                Arg::Ptr(self.ptr_mut(&mut out)),
                Arg::Ptr(self.ptr(&partial)),
                Arg::I64(int(blocks)?),
                Arg::F64(alpha),
            ],
        )?;
        Ok(out)
    }

    /// `dst[:, dst_c0..] = src[:, src_c0..]` for `rows × cols` elements (row strides
    /// `dst_ld`, `src_ld`; both buffers of `dtype`, extents checked by the caller).
    #[allow(clippy::too_many_arguments)]
    fn copy2d(
        &self,
        dst: &mut CudaBuffer,
        dst_ld: usize,
        dst_c0: usize,
        src: &CudaBuffer,
        src_ld: usize,
        src_c0: usize,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        let name = format!("copy2d_{}", width(src.dtype));
        self.launch_n(
            &name,
            rows * cols,
            &[
                Arg::Ptr(self.ptr_mut(dst)),
                Arg::I64(int(dst_ld)?),
                Arg::I64(int(dst_c0)?),
                Arg::Ptr(self.ptr(src)),
                Arg::I64(int(src_ld)?),
                Arg::I64(int(src_c0)?),
                Arg::I64(int(rows)?),
                Arg::I64(int(cols)?),
            ],
        )
    }

    /// `out = convert(x)` into an existing buffer of the same length.
    fn cast_into(&self, out: &mut CudaBuffer, x: &CudaBuffer) -> Result<()> {
        let name = format!("cast_{}_{}", suffix(x.dtype), suffix(out.dtype));
        self.launch_n(
            &name,
            x.len,
            &[
                Arg::Ptr(self.ptr_mut(out)),
                Arg::Ptr(self.ptr(x)),
                Arg::I64(int(x.len)?),
            ],
        )
    }
}

impl Backend for Cuda {
    type Buffer = CudaBuffer;

    fn name(&self) -> &'static str {
        "cuda"
    }

    fn upload(&self, data: &[f64], dtype: DType) -> Result<CudaBuffer> {
        // Rounded on the host exactly as the CPU backend rounds.
        let bytes = host_bytes(&Cpu::serial().upload(data, dtype)?);
        let mut b = self.alloc(data.len(), dtype)?;
        if bytes.is_empty() {
            return Ok(b);
        }
        let stream = self.stream();
        guard("copying to the GPU", || {
            stream
                .memcpy_htod(&bytes, &mut b.data)
                .map_err(dev("copying to the GPU"))
        })?;
        Ok(b)
    }

    fn download(&self, x: &CudaBuffer) -> Result<Vec<f64>> {
        if x.len == 0 {
            return Ok(Vec::new());
        }
        let bytes = x.len * x.dtype.size_of();
        let stream = self.stream();
        let host = guard("copying from the GPU", || {
            stream
                .clone_dtoh(&x.data.slice(..bytes))
                .map_err(dev("copying from the GPU (or an earlier kernel failed)"))
        })?;
        Ok(from_bytes(&host, x.dtype))
    }

    fn full(&self, len: usize, value: f64, dtype: DType) -> Result<CudaBuffer> {
        let bits = {
            let b = host_bytes(&Cpu::serial().upload(&[value], dtype)?);
            let mut w = [0u8; 8];
            w[..b.len()].copy_from_slice(&b);
            u64::from_le_bytes(w)
        };
        let mut out = self.alloc(len, dtype)?;
        let name = format!("fill_{}", width(dtype));
        let p = self.ptr_mut(&mut out);
        self.launch_n(
            &name,
            len,
            &[Arg::Ptr(p), Arg::I64(int(len)?), Arg::U64(bits)],
        )?;
        Ok(out)
    }

    fn copy(&self, x: &CudaBuffer) -> Result<CudaBuffer> {
        let mut out = self.alloc(x.len, x.dtype)?;
        let stream = self.stream();
        guard("copying on the GPU", || {
            stream
                .memcpy_dtod(&x.data, &mut out.data)
                .map_err(dev("copying on the GPU"))
        })?;
        Ok(out)
    }

    fn cast(&self, x: &CudaBuffer, dtype: DType) -> Result<CudaBuffer> {
        if x.dtype == dtype {
            return self.copy(x);
        }
        let mut out = self.alloc(x.len, dtype)?;
        self.cast_into(&mut out, x)?;
        Ok(out)
    }

    fn matmul(
        &self,
        a: &CudaBuffer,
        a_shape: Shape,
        ta: bool,
        b: &CudaBuffer,
        b_shape: Shape,
        tb: bool,
    ) -> Result<CudaBuffer> {
        let (m, n, k) = Self::product_dims("matmul", a, a_shape, ta, b, b_shape, tb)?;
        if m == 0 || n == 0 || k == 0 {
            return self.full(m * n, 0.0, a.dtype);
        }
        if !a.dtype.is_half() {
            let mut out = self.alloc(m * n, a.dtype)?;
            let c = self.ptr_mut(&mut out);
            self.gemm((m, n, k), a, a_shape, ta, b, b_shape, tb, c, 1.0, 0.0)?;
            return Ok(out);
        }
        // 16-bit inputs: the f32 product, rounded once by the cast kernel.
        let mut wide = self.alloc(m * n, DType::F32)?;
        let c = self.ptr_mut(&mut wide);
        self.gemm((m, n, k), a, a_shape, ta, b, b_shape, tb, c, 1.0, 0.0)?;
        self.cast(&wide, a.dtype)
    }

    fn unary(&self, op: UnaryOp, x: &CudaBuffer) -> Result<CudaBuffer> {
        let mut out = self.alloc(x.len, x.dtype)?;
        let name = format!("unary_{}", suffix(x.dtype));
        self.launch_n(
            &name,
            x.len,
            &[
                Arg::Ptr(self.ptr_mut(&mut out)),
                Arg::Ptr(self.ptr(x)),
                Arg::I64(int(x.len)?),
                Arg::I32(unary_code(op)),
            ],
        )?;
        Ok(out)
    }

    fn unary_many(&self, ops: &[UnaryOp], x: &CudaBuffer) -> Result<Vec<CudaBuffer>> {
        let Some(at) = logcosh_family(ops) else {
            return ops.iter().map(|&op| self.unary(op, x)).collect();
        };
        // log cosh, tanh and sech² from one e^{−2|x|}, the ones asked for.
        let mut outs: [Option<CudaBuffer>; 3] = [None, None, None];
        for (slot, a) in outs.iter_mut().zip(at) {
            if a.is_some() {
                *slot = Some(self.alloc(x.len, x.dtype)?);
            }
        }
        let mut p = [0u64; 3];
        for (pi, o) in p.iter_mut().zip(outs.iter_mut()) {
            if let Some(o) = o {
                *pi = self.ptr_mut(o);
            }
        }
        self.launch_n(
            &format!("logcosh3_{}", suffix(x.dtype)),
            x.len,
            &[
                Arg::Ptr(p[0]),
                Arg::Ptr(p[1]),
                Arg::Ptr(p[2]),
                Arg::Ptr(self.ptr(x)),
                Arg::I64(int(x.len)?),
            ],
        )?;
        let mut slots: Vec<Option<CudaBuffer>> = (0..ops.len()).map(|_| None).collect();
        for (a, o) in at.into_iter().zip(outs) {
            if let (Some(j), Some(o)) = (a, o) {
                slots[j] = Some(o);
            }
        }
        Ok(slots.into_iter().flatten().collect())
    }

    fn affine(&self, x: &CudaBuffer, alpha: f64, beta: f64) -> Result<CudaBuffer> {
        let mut out = self.alloc(x.len, x.dtype)?;
        self.launch_n(
            &format!("affine_{}", suffix(x.dtype)),
            x.len,
            &[
                Arg::Ptr(self.ptr_mut(&mut out)),
                Arg::Ptr(self.ptr(x)),
                Arg::I64(int(x.len)?),
                Arg::F64(alpha),
                Arg::F64(beta),
            ],
        )?;
        Ok(out)
    }

    fn binary(
        &self,
        op: BinaryOp,
        a: &CudaBuffer,
        a_shape: Shape,
        b: &CudaBuffer,
        broadcast: Broadcast,
    ) -> Result<CudaBuffer> {
        let len = checked_len(op.name(), a_shape)?;
        check_len("binary lhs", a.len, len)?;
        check_len("binary rhs", b.len, rhs_len(a_shape, broadcast))?;
        same_dtype(op.name(), a, b)?;
        let mut out = self.alloc(len, a.dtype)?;
        self.launch_n(
            &format!("binary_{}", suffix(a.dtype)),
            len,
            &[
                Arg::Ptr(self.ptr_mut(&mut out)),
                Arg::Ptr(self.ptr(a)),
                Arg::Ptr(self.ptr(b)),
                Arg::I64(int(a_shape.rows)?),
                Arg::I64(int(a_shape.cols)?),
                Arg::I32(binary_code(op)),
                Arg::I32(broadcast_code(broadcast)),
            ],
        )?;
        Ok(out)
    }

    fn unary_many_vjp(
        &self,
        ops: &[UnaryOp],
        x: &CudaBuffer,
        ys: &[&CudaBuffer],
        gs: &[Option<&CudaBuffer>],
    ) -> Result<Option<CudaBuffer>> {
        // The log cosh family with tanh and sech² at hand: σ' = tanh, tanh' = sech²,
        // (sech²)' = −2·tanh·sech², all from the values.
        let Some(at) = logcosh_family(ops) else {
            return Ok(None);
        };
        let (Some(ti), Some(qi)) = (at[1], at[2]) else {
            return Ok(None);
        };
        if ys.len() != ops.len() || gs.len() != ops.len() {
            return Err(Error::InvalidArgument(format!(
                "unary_many_vjp: {} maps, {} values, {} gradients",
                ops.len(),
                ys.len(),
                gs.len()
            )));
        }
        for b in ys.iter().copied().chain(gs.iter().flatten().copied()) {
            check_len("unary_many_vjp operand", b.len, x.len)?;
            same_dtype("unary_many_vjp", x, b)?;
        }
        let g = |slot: Option<usize>| slot.and_then(|j| gs[j]).map_or(0, |b| self.ptr(b));
        let mut out = self.alloc(x.len, x.dtype)?;
        self.launch_n(
            &format!("logcosh_vjp_{}", suffix(x.dtype)),
            x.len,
            &[
                Arg::Ptr(self.ptr_mut(&mut out)),
                Arg::Ptr(self.ptr(ys[ti])),
                Arg::Ptr(self.ptr(ys[qi])),
                Arg::Ptr(g(at[0])),
                Arg::Ptr(g(at[1])),
                Arg::Ptr(g(at[2])),
                Arg::I64(int(x.len)?),
            ],
        )?;
        Ok(Some(out))
    }

    fn add_assign(&self, dst: &mut CudaBuffer, src: &CudaBuffer) -> Result<()> {
        check_len("add_assign source", src.len, dst.len)?;
        same_dtype("add_assign", dst, src)?;
        self.axpy(dst, 1.0, src)
    }

    fn add_scaled(
        &self,
        a: &CudaBuffer,
        a_shape: Shape,
        b: &CudaBuffer,
        broadcast: Broadcast,
        alpha: f64,
    ) -> Result<CudaBuffer> {
        let len = checked_len("add_scaled", a_shape)?;
        check_len("add_scaled lhs", a.len, len)?;
        check_len("add_scaled rhs", b.len, rhs_len(a_shape, broadcast))?;
        same_dtype("add_scaled", a, b)?;
        let mut out = self.alloc(len, a.dtype)?;
        self.launch_n(
            &format!("add_scaled_{}", suffix(a.dtype)),
            len,
            &[
                Arg::Ptr(self.ptr_mut(&mut out)),
                Arg::Ptr(self.ptr(a)),
                Arg::Ptr(self.ptr(b)),
                Arg::I64(int(a_shape.rows)?),
                Arg::I64(int(a_shape.cols)?),
                Arg::I32(broadcast_code(broadcast)),
                Arg::F64(alpha),
            ],
        )?;
        Ok(out)
    }

    fn mul_add(
        &self,
        a: &CudaBuffer,
        b: &CudaBuffer,
        shape: Shape,
        c: &CudaBuffer,
        broadcast: Broadcast,
        alpha: f64,
    ) -> Result<CudaBuffer> {
        let len = checked_len("mul_add", shape)?;
        check_len("mul_add a", a.len, len)?;
        check_len("mul_add b", b.len, len)?;
        check_len("mul_add c", c.len, rhs_len(shape, broadcast))?;
        same_dtype("mul_add", a, b)?;
        same_dtype("mul_add", a, c)?;
        let mut out = self.alloc(len, a.dtype)?;
        self.launch_n(
            &format!("mul_add_{}", suffix(a.dtype)),
            len,
            &[
                Arg::Ptr(self.ptr_mut(&mut out)),
                Arg::Ptr(self.ptr(a)),
                Arg::Ptr(self.ptr(b)),
                Arg::Ptr(self.ptr(c)),
                Arg::I64(int(shape.rows)?),
                Arg::I64(int(shape.cols)?),
                Arg::I32(broadcast_code(broadcast)),
                Arg::F64(alpha),
            ],
        )?;
        Ok(out)
    }

    fn axpy(&self, dst: &mut CudaBuffer, alpha: f64, src: &CudaBuffer) -> Result<()> {
        check_len("axpy source", src.len, dst.len)?;
        let name = format!("axpy_{}_{}", suffix(dst.dtype), suffix(src.dtype));
        let n = dst.len;
        let d = self.ptr_mut(dst);
        self.launch_n(
            &name,
            n,
            &[
                Arg::Ptr(d),
                Arg::Ptr(self.ptr(src)),
                Arg::I64(int(n)?),
                Arg::F64(alpha),
            ],
        )
    }

    fn matmul_acc(
        &self,
        dst: &mut CudaBuffer,
        a: &CudaBuffer,
        a_shape: Shape,
        ta: bool,
        b: &CudaBuffer,
        b_shape: Shape,
        tb: bool,
        beta: f64,
    ) -> Result<()> {
        let (m, n, k) = Self::product_dims("matmul_acc", a, a_shape, ta, b, b_shape, tb)?;
        check_len("matmul_acc destination", dst.len, m * n)?;
        if dst.dtype != a.dtype {
            return Err(Error::DType {
                op: "matmul_acc",
                lhs: dst.dtype,
                rhs: a.dtype,
            });
        }
        if m == 0 || n == 0 || k == 0 {
            return Ok(());
        }
        if !dst.dtype.is_half() {
            let c = self.ptr_mut(dst);
            return self.gemm((m, n, k), a, a_shape, ta, b, b_shape, tb, c, beta, 1.0);
        }
        // A 16-bit destination: widened exactly, updated in f32, rounded once.
        let mut wide = self.cast(dst, DType::F32)?;
        let c = self.ptr_mut(&mut wide);
        self.gemm((m, n, k), a, a_shape, ta, b, b_shape, tb, c, beta, 1.0)?;
        self.cast_into(dst, &wide)
    }

    fn reduce(
        &self,
        x: &CudaBuffer,
        shape: Shape,
        axis: Reduction,
        alpha: f64,
    ) -> Result<CudaBuffer> {
        check_len("reduce input", x.len, checked_len("reduce", shape)?)?;
        let t = suffix(x.dtype);
        match axis {
            Reduction::Cols => {
                if shape.cols == 0 {
                    return self.full(shape.rows, 0.0, x.dtype);
                }
                let mut out = self.alloc(shape.rows, x.dtype)?;
                let args = [
                    Arg::Ptr(self.ptr_mut(&mut out)),
                    Arg::Ptr(self.ptr(x)),
                    Arg::I64(int(shape.rows)?),
                    Arg::I64(int(shape.cols)?),
                    Arg::F64(alpha),
                ];
                if shape.cols <= SEQ_ROW_SUM {
                    self.launch_n(&format!("reduce_cols_seq_{t}"), shape.rows, &args)?;
                } else if shape.rows > 0 {
                    let threads = shape.rows.saturating_mul(32);
                    self.launch(&format!("reduce_cols_warp_{t}"), grid(threads), &args)?;
                }
                Ok(out)
            }
            Reduction::Rows => self.column_sums(x, shape.rows, shape.cols, alpha),
            Reduction::All => self.total_sum(x, alpha),
        }
    }

    fn broadcast(&self, x: &CudaBuffer, from: Shape, to: Shape, alpha: f64) -> Result<CudaBuffer> {
        let fits =
            (from.rows == 1 || from.rows == to.rows) && (from.cols == 1 || from.cols == to.cols);
        if !fits {
            return Err(Error::Shape {
                op: "broadcast",
                lhs: from,
                rhs: to,
            });
        }
        check_len("broadcast input", x.len, checked_len("broadcast", from)?)?;
        let len = checked_len("broadcast", to)?;
        let kind = match (from.rows == 1, from.cols == 1) {
            (true, true) => Broadcast::Scalar,
            (true, false) => Broadcast::Row,
            (false, true) => Broadcast::Col,
            (false, false) => Broadcast::None,
        };
        let mut out = self.alloc(len, x.dtype)?;
        self.launch_n(
            &format!("broadcast_{}", suffix(x.dtype)),
            len,
            &[
                Arg::Ptr(self.ptr_mut(&mut out)),
                Arg::Ptr(self.ptr(x)),
                Arg::I64(int(to.rows)?),
                Arg::I64(int(to.cols)?),
                Arg::I32(broadcast_code(kind)),
                Arg::F64(alpha),
            ],
        )?;
        Ok(out)
    }

    fn slice_cols(&self, x: &CudaBuffer, shape: Shape, c0: usize, c1: usize) -> Result<CudaBuffer> {
        check_len("slice_cols input", x.len, checked_len("slice_cols", shape)?)?;
        if c0 > c1 || c1 > shape.cols {
            return Err(Error::InvalidShape {
                op: "slice_cols",
                shape,
                message: format!("column range {c0}..{c1}"),
            });
        }
        let w = c1 - c0;
        let mut out = self.alloc(shape.rows * w, x.dtype)?;
        self.copy2d(&mut out, w, 0, x, shape.cols, c0, shape.rows, w)?;
        Ok(out)
    }

    fn embed_cols(
        &self,
        x: &CudaBuffer,
        shape: Shape,
        c0: usize,
        total: usize,
    ) -> Result<CudaBuffer> {
        check_len("embed_cols input", x.len, checked_len("embed_cols", shape)?)?;
        if c0.checked_add(shape.cols).is_none_or(|end| end > total) {
            return Err(Error::InvalidShape {
                op: "embed_cols",
                shape,
                message: format!("columns from {c0} exceed {total}"),
            });
        }
        let len = checked_len("embed_cols", Shape::new(shape.rows, total))?;
        let mut out = self.zeros(len, x.dtype)?;
        self.copy2d(
            &mut out, total, c0, x, shape.cols, 0, shape.rows, shape.cols,
        )?;
        Ok(out)
    }

    fn concat_cols(&self, parts: &[(&CudaBuffer, Shape)]) -> Result<CudaBuffer> {
        let Some(&(first, s0)) = parts.first() else {
            return Err(Error::InvalidArgument("concat_cols of no parts".into()));
        };
        let mut total = 0usize;
        for &(buf, s) in parts {
            check_len("concat_cols part", buf.len, checked_len("concat_cols", s)?)?;
            if s.rows != s0.rows {
                return Err(Error::Shape {
                    op: "concat_cols",
                    lhs: s0,
                    rhs: s,
                });
            }
            same_dtype("concat_cols", first, buf)?;
            total = total.checked_add(s.cols).ok_or_else(|| {
                Error::InvalidArgument("concat_cols: column count overflows".into())
            })?;
        }
        let len = checked_len("concat_cols", Shape::new(s0.rows, total))?;
        // Every column is some part's: each element is written once.
        let mut out = self.alloc(len, first.dtype)?;
        let mut c0 = 0;
        for &(buf, s) in parts {
            self.copy2d(&mut out, total, c0, buf, s.cols, 0, s.rows, s.cols)?;
            c0 += s.cols;
        }
        Ok(out)
    }

    fn repeat_rows(&self, x: &CudaBuffer, shape: Shape, k: usize) -> Result<CudaBuffer> {
        check_len(
            "repeat_rows input",
            x.len,
            checked_len("repeat_rows", shape)?,
        )?;
        let out_shape = grown("repeat_rows", shape, k)?;
        let mut out = self.alloc(out_shape.len(), x.dtype)?;
        self.launch_n(
            &format!("repeat_rows_{}", width(x.dtype)),
            out_shape.len(),
            &[
                Arg::Ptr(self.ptr_mut(&mut out)),
                Arg::Ptr(self.ptr(x)),
                Arg::I64(int(shape.rows)?),
                Arg::I64(int(shape.cols)?),
                Arg::I64(int(k)?),
            ],
        )?;
        Ok(out)
    }

    fn sum_row_groups(&self, x: &CudaBuffer, shape: Shape, k: usize) -> Result<CudaBuffer> {
        check_len(
            "sum_row_groups input",
            x.len,
            checked_len("sum_row_groups", shape)?,
        )?;
        if k == 0 || shape.rows % k != 0 {
            return Err(Error::InvalidShape {
                op: "sum_row_groups",
                shape,
                message: format!("row count is not a multiple of the group size {k}"),
            });
        }
        let groups = shape.rows / k;
        let mut out = self.alloc(groups * shape.cols, x.dtype)?;
        self.launch_n(
            &format!("sum_row_groups_{}", suffix(x.dtype)),
            groups * shape.cols,
            &[
                Arg::Ptr(self.ptr_mut(&mut out)),
                Arg::Ptr(self.ptr(x)),
                Arg::I64(int(groups)?),
                Arg::I64(int(shape.cols)?),
                Arg::I64(int(k)?),
            ],
        )?;
        Ok(out)
    }

    fn tile_rows(&self, x: &CudaBuffer, shape: Shape, times: usize) -> Result<CudaBuffer> {
        check_len("tile_rows input", x.len, checked_len("tile_rows", shape)?)?;
        let out_shape = grown("tile_rows", shape, times)?;
        let mut out = self.alloc(out_shape.len(), x.dtype)?;
        if x.len > 0 {
            self.launch_n(
                &format!("tile_{}", width(x.dtype)),
                out_shape.len(),
                &[
                    Arg::Ptr(self.ptr_mut(&mut out)),
                    Arg::Ptr(self.ptr(x)),
                    Arg::I64(int(x.len)?),
                    Arg::I64(int(out_shape.len())?),
                ],
            )?;
        }
        Ok(out)
    }

    fn sum_tiles(&self, x: &CudaBuffer, shape: Shape, times: usize) -> Result<CudaBuffer> {
        check_len("sum_tiles input", x.len, checked_len("sum_tiles", shape)?)?;
        if times == 0 || shape.rows % times != 0 {
            return Err(Error::InvalidShape {
                op: "sum_tiles",
                shape,
                message: format!("row count is not a multiple of the tile count {times}"),
            });
        }
        // The tiles are the rows of a times × (tile length) matrix.
        self.column_sums(x, times, x.len / times, 1.0)
    }

    fn max_abs(&self, x: &CudaBuffer) -> Result<f64> {
        if x.len == 0 {
            return Ok(0.0);
        }
        let blocks = x.len.div_ceil(THREADS as usize).clamp(1, MAX_PARTIALS);
        let mut partial = self.alloc(blocks, DType::F64)?;
        let cfg = LaunchConfig {
            grid_dim: (blocks as u32, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        self.launch(
            &format!("max_abs_partial_{}", suffix(x.dtype)),
            cfg,
            &[
                Arg::Ptr(self.ptr_mut(&mut partial)),
                Arg::Ptr(self.ptr(x)),
                Arg::I64(int(x.len)?),
            ],
        )?;
        let mut m = 0.0f64;
        for v in self.download(&partial)? {
            if v.is_nan() {
                return Ok(f64::NAN);
            }
            m = m.max(v);
        }
        Ok(m)
    }

    fn all_finite(&self, x: &CudaBuffer) -> Result<bool> {
        // The largest magnitude is finite exactly when no element is ±∞ or NaN.
        Ok(self.max_abs(x)?.is_finite())
    }
}
