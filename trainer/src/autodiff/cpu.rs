//! The CPU backend: host vectors, `gemm` for products, rayon for large elementwise
//! kernels.
//!
//! Half precisions are stored as [`half::f16`] / [`half::bf16`]; every kernel widens its
//! (exact) half inputs to f32, computes in f32 and rounds its output once, which is what
//! the GPU does natively (cuBLAS `gemm_ex` with 16-bit inputs and f32 compute;
//! elementwise kernels that load halves and compute in f32). The 16-bit GEMM therefore
//! widens both operands to f32 and calls the f32 GEMM, rather than `gemm`'s own f16
//! path, which stores partial sums in f16 between its blocks of the inner dimension.

use half::{bf16, f16};
use rayon::prelude::*;
use socflow_runtime::linalg::{exp_em1_full, log1p_unit, map_act, Act};
use std::cell::RefCell;
use std::collections::HashMap;
use std::ops::{Add, AddAssign, Div, Mul, Neg, Sub};
use std::thread::LocalKey;

use super::backend::{Backend, BinaryOp, Broadcast, Reduction, Storage, UnaryOp};
use super::error::{Error, Result};
use super::tensor::{DType, Shape};

/// Element count from which elementwise kernels split their work over rayon threads.
/// High on purpose: an OT-Flow step runs hundreds of ops on 10⁵-element tensors, and
/// waking the pool (plus zero-filling the shared output) cost more than a second core
/// gained (measured: one iteration of `benches/otflow_train.rs` in f32 went from 0.75 s
/// to 0.48 s with this and [`PAR_GEMM`] raised from 2¹⁵ and 2¹⁸).
const PAR_ELEMS: usize = 1 << 20;
/// Multiply–add count from which a GEMM runs on rayon threads (see [`PAR_ELEMS`]).
const PAR_GEMM: usize = 1 << 24;

/// The CPU backend. `Cpu::default()` uses rayon for large kernels; results do not
/// depend on the thread count except, in the last bits, those of large GEMMs (which
/// may split their inner loops differently).
#[derive(Clone, Copy, Debug)]
pub struct Cpu {
    parallel: bool,
}

impl Default for Cpu {
    fn default() -> Self {
        Cpu { parallel: true }
    }
}

impl Cpu {
    /// A backend that uses rayon's current thread pool for large kernels.
    pub fn new() -> Self {
        Cpu::default()
    }

    /// A backend that runs every kernel on the calling thread (for callers that
    /// parallelize over independent graphs themselves).
    pub fn serial() -> Self {
        Cpu { parallel: false }
    }

    /// Whether large kernels use rayon.
    pub fn is_parallel(&self) -> bool {
        self.parallel
    }

    /// Bytes of dropped buffers the calling thread keeps for reuse (see [`CpuBuffer`]).
    pub fn cached_bytes() -> usize {
        fn k<E: Elem>() -> usize {
            E::pool()
                .try_with(|p| p.try_borrow().map_or(0, |p| p.bytes))
                .unwrap_or(0)
        }
        k::<f64>() + k::<f32>() + k::<bf16>() + k::<f16>()
    }

    /// Returns the calling thread's cached buffers to the allocator (a long-lived
    /// program can call this after training; the cache refills on use).
    pub fn release_cached() {
        fn k<E: Elem>() {
            let _ = E::pool().try_with(|p| {
                if let Ok(mut p) = p.try_borrow_mut() {
                    *p = Pool::default();
                }
            });
        }
        k::<f64>();
        k::<f32>();
        k::<bf16>();
        k::<f16>();
    }
}

/// A CPU buffer: a host vector of one precision.
///
/// A dropped buffer of at least [`POOL_MIN_BYTES`] goes to a per-thread cache (at most
/// [`POOL_MAX_BYTES`] per precision) from which kernels take their outputs of the same
/// length. A tape holds every intermediate until it is cleared, and an OT-Flow step's
/// tape is ~80 MB: from the allocator, every new output was fresh memory (page faults
/// and cold cache lines, a 160k-element product 5× slower than into a reused buffer).
/// [`Cpu::release_cached`] empties the cache.
#[derive(Debug, PartialEq)]
pub enum CpuBuffer {
    /// f64 elements.
    F64(Vec<f64>),
    /// f32 elements.
    F32(Vec<f32>),
    /// bfloat16 elements.
    Bf16(Vec<bf16>),
    /// binary16 elements.
    F16(Vec<f16>),
}

impl Storage for CpuBuffer {
    fn dtype(&self) -> DType {
        match self {
            CpuBuffer::F64(_) => DType::F64,
            CpuBuffer::F32(_) => DType::F32,
            CpuBuffer::Bf16(_) => DType::Bf16,
            CpuBuffer::F16(_) => DType::F16,
        }
    }

    fn len(&self) -> usize {
        match self {
            CpuBuffer::F64(v) => v.len(),
            CpuBuffer::F32(v) => v.len(),
            CpuBuffer::Bf16(v) => v.len(),
            CpuBuffer::F16(v) => v.len(),
        }
    }
}

impl Clone for CpuBuffer {
    fn clone(&self) -> Self {
        fn k<E: Elem>(v: &[E]) -> Vec<E> {
            let mut out = alloc(v.len());
            out.extend_from_slice(v);
            out
        }
        match self {
            CpuBuffer::F64(v) => CpuBuffer::F64(k(v)),
            CpuBuffer::F32(v) => CpuBuffer::F32(k(v)),
            CpuBuffer::Bf16(v) => CpuBuffer::Bf16(k(v)),
            CpuBuffer::F16(v) => CpuBuffer::F16(k(v)),
        }
    }
}

impl Drop for CpuBuffer {
    fn drop(&mut self) {
        match self {
            CpuBuffer::F64(v) => recycle(std::mem::take(v)),
            CpuBuffer::F32(v) => recycle(std::mem::take(v)),
            CpuBuffer::Bf16(v) => recycle(std::mem::take(v)),
            CpuBuffer::F16(v) => recycle(std::mem::take(v)),
        }
    }
}

/// Vectors of fewer bytes than this are left to the allocator, which serves small
/// sizes from warm free lists anyway.
pub const POOL_MIN_BYTES: usize = 1 << 16;
/// Bytes of free vectors kept per thread and precision at most (a dropped buffer that
/// would exceed it goes back to the allocator).
pub const POOL_MAX_BYTES: usize = 1 << 30;

/// Free vectors by capacity (outputs of one shape reuse each other exactly).
struct Pool<E> {
    free: HashMap<usize, Vec<Vec<E>>>,
    bytes: usize,
}

impl<E> Default for Pool<E> {
    fn default() -> Self {
        Pool {
            free: HashMap::new(),
            bytes: 0,
        }
    }
}

impl<E> Pool<E> {
    fn take(&mut self, capacity: usize) -> Option<Vec<E>> {
        let v = self.free.get_mut(&capacity)?.pop()?;
        self.bytes -= capacity * std::mem::size_of::<E>();
        Some(v)
    }

    fn put(&mut self, mut v: Vec<E>) {
        let bytes = v.capacity() * std::mem::size_of::<E>();
        if bytes < POOL_MIN_BYTES || self.bytes + bytes > POOL_MAX_BYTES {
            return;
        }
        v.clear();
        self.bytes += bytes;
        self.free.entry(v.capacity()).or_default().push(v);
    }
}

thread_local! {
    static POOL_F64: RefCell<Pool<f64>> = RefCell::new(Pool::default());
    static POOL_F32: RefCell<Pool<f32>> = RefCell::new(Pool::default());
    static POOL_BF16: RefCell<Pool<bf16>> = RefCell::new(Pool::default());
    static POOL_F16: RefCell<Pool<f16>> = RefCell::new(Pool::default());
}

/// An empty vector with room for exactly `len` elements, reused from the calling
/// thread's cache when one of that capacity is there.
fn alloc<E: Elem>(len: usize) -> Vec<E> {
    if len * std::mem::size_of::<E>() >= POOL_MIN_BYTES {
        let reused = E::pool()
            .try_with(|p| p.try_borrow_mut().ok().and_then(|mut p| p.take(len)))
            .ok()
            .flatten();
        if let Some(v) = reused {
            return v;
        }
    }
    Vec::with_capacity(len)
}

/// `len` zeros (a reused vector when possible).
fn zeros<E: Elem>(len: usize) -> Vec<E> {
    let mut v = alloc(len);
    v.resize(len, E::from_acc(E::Acc::of(0.0)));
    v
}

/// Gives a vector back to the calling thread's cache (or to the allocator).
fn recycle<E: Elem>(v: Vec<E>) {
    if v.capacity() * std::mem::size_of::<E>() < POOL_MIN_BYTES {
        return;
    }
    let _ = E::pool().try_with(|p| {
        if let Ok(mut p) = p.try_borrow_mut() {
            p.put(v);
        }
    });
}

impl CpuBuffer {
    /// The elements, if f64.
    pub fn as_f64(&self) -> Option<&[f64]> {
        match self {
            CpuBuffer::F64(v) => Some(v),
            _ => None,
        }
    }

    /// The elements, if f32.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match self {
            CpuBuffer::F32(v) => Some(v),
            _ => None,
        }
    }

    /// The elements, if bf16.
    pub fn as_bf16(&self) -> Option<&[bf16]> {
        match self {
            CpuBuffer::Bf16(v) => Some(v),
            _ => None,
        }
    }

    /// The elements, if f16.
    pub fn as_f16(&self) -> Option<&[f16]> {
        match self {
            CpuBuffer::F16(v) => Some(v),
            _ => None,
        }
    }
}

/// Rounds f64 to the nearest f32, breaking a tie to the one with an odd last bit
/// ("round to odd"): rounding that result once more to a type at least two bits
/// narrower (f16, bf16) gives the correctly rounded narrow value, where plain
/// f64 → f32 → f16 can round twice the wrong way.
fn f64_to_f32_odd(x: f64) -> f32 {
    let f = x as f32;
    if !x.is_finite() || f64::from(f) == x {
        return f;
    }
    // `f` is the nearest f32; step one toward zero if it lies beyond `x` (truncation),
    // then mark the result inexact with its last bit. Same-sign f32 bit patterns are
    // ordered by magnitude, so ±1 on the bits moves by one ulp.
    let truncated = if f64::from(f).abs() > x.abs() {
        f32::from_bits(f.to_bits() - 1)
    } else {
        f
    };
    f32::from_bits(truncated.to_bits() | 1)
}

/// A compute type (f32 or f64) and the few functions the kernels need.
trait Acc:
    Copy
    + Send
    + Sync
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + 'static
{
    /// Rounds from f64.
    fn of(x: f64) -> Self;
    fn abs(self) -> Self;
    fn recip(self) -> Self;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn sqrt(self) -> Self;
    fn sin(self) -> Self;
    fn cos(self) -> Self;
    /// self·a + b, rounded once.
    fn mul_add(self, a: Self, b: Self) -> Self;
}

macro_rules! impl_acc {
    ($t:ty) => {
        impl Acc for $t {
            #[inline(always)]
            fn of(x: f64) -> Self {
                x as $t
            }
            #[inline(always)]
            fn abs(self) -> Self {
                <$t>::abs(self)
            }
            #[inline(always)]
            fn recip(self) -> Self {
                <$t>::recip(self)
            }
            #[inline(always)]
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            #[inline(always)]
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            #[inline(always)]
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            #[inline(always)]
            fn sin(self) -> Self {
                <$t>::sin(self)
            }
            #[inline(always)]
            fn cos(self) -> Self {
                <$t>::cos(self)
            }
            #[inline(always)]
            fn mul_add(self, a: Self, b: Self) -> Self {
                <$t>::mul_add(self, a, b)
            }
        }
    };
}

impl_acc!(f32);
impl_acc!(f64);

/// A storage element: how it widens to and rounds from its compute type.
trait Elem: Copy + Send + Sync + 'static {
    /// The compute (and accumulation) type.
    type Acc: Acc;
    fn to_acc(self) -> Self::Acc;
    fn from_acc(a: Self::Acc) -> Self;
    fn from_f64(x: f64) -> Self;
    fn to_f64(self) -> f64;
    /// `out[i] = act(x[i])` with the vectorized kernels (`out.len() == x.len()`),
    /// computed in the compute type and rounded once.
    fn act(act: Act, x: &[Self], out: &mut [Self]);
    /// log cosh, tanh and sech² of `x` in one pass (equal lengths), each bitwise what
    /// [`act`](Elem::act) gives.
    fn act3(x: &[Self], lc: &mut [Self], th: &mut [Self], s2: &mut [Self]);
    /// The calling thread's cache of free vectors of this type.
    fn pool() -> &'static LocalKey<RefCell<Pool<Self>>>;
}

/// The vectorized maps on a compute-type slice (equal lengths by construction).
fn act_native<T: socflow_runtime::Real>(act: Act, x: &[T], out: &mut [T]) {
    let r = map_act(act, x, out);
    debug_assert!(r.is_ok(), "act: length mismatch");
}

/// The vectorized maps on a 16-bit slice: widened to f32 a block at a time, mapped in
/// f32, each result rounded once.
fn act_half<E: Elem<Acc = f32>>(act: Act, x: &[E], out: &mut [E]) {
    const BLOCK: usize = 512;
    let (mut a, mut b) = ([0.0f32; BLOCK], [0.0f32; BLOCK]);
    for (xc, oc) in x.chunks(BLOCK).zip(out.chunks_mut(BLOCK)) {
        let n = xc.len();
        for (w, &v) in a[..n].iter_mut().zip(xc) {
            *w = v.to_acc();
        }
        act_native(act, &a[..n], &mut b[..n]);
        for (o, &v) in oc.iter_mut().zip(&b[..n]) {
            *o = E::from_acc(v);
        }
    }
}

/// log cosh, tanh and sech² from one e^{−2|a|}: the formulas of the runtime's
/// `logcosh_full`, `tanh_full` and `sech2_full`, compiled for the same targets (so the
/// same target is picked, with the same fused multiply-adds), hence the same bits as
/// three separate [`map_act`] calls.
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512vl+avx512dq+avx512bw+avx2+fma",
    "x86_64+avx2+fma",
    "aarch64+neon"
))]
fn k_logcosh_family<T: socflow_runtime::Real>(x: &[T], lc: &mut [T], th: &mut [T], s2: &mut [T]) {
    const F: bool =
        multiversion::target::target_cfg_f!(any(target_feature = "fma", target_arch = "aarch64"));
    for (((&a, l), t), q) in x.iter().zip(lc.iter_mut()).zip(th.iter_mut()).zip(s2) {
        let y = a.abs();
        let (e, em1) = exp_em1_full::<T, F>(T::of(-2.0) * y);
        let tv = (-em1 / (T::of(2.0) + em1)).abs();
        *t = if a.is_sign_negative() { -tv } else { tv };
        let d = T::one() + e;
        *q = T::of(4.0) * e / (d * d);
        *l = y + log1p_unit::<T, F>(e, em1);
    }
}

/// [`k_logcosh_family`] on a 16-bit slice: widened to f32 a block at a time, each result
/// rounded once.
fn act3_half<E: Elem<Acc = f32>>(x: &[E], lc: &mut [E], th: &mut [E], s2: &mut [E]) {
    const BLOCK: usize = 256;
    let mut a = [0.0f32; BLOCK];
    let mut o = [[0.0f32; BLOCK]; 3];
    let outs = lc
        .chunks_mut(BLOCK)
        .zip(th.chunks_mut(BLOCK))
        .zip(s2.chunks_mut(BLOCK));
    for (xc, ((l, t), q)) in x.chunks(BLOCK).zip(outs) {
        let n = xc.len();
        for (w, &v) in a[..n].iter_mut().zip(xc) {
            *w = v.to_acc();
        }
        let [o0, o1, o2] = &mut o;
        k_logcosh_family(&a[..n], &mut o0[..n], &mut o1[..n], &mut o2[..n]);
        for (dst, src) in [(l, &o[0]), (t, &o[1]), (q, &o[2])] {
            for (d, &v) in dst.iter_mut().zip(&src[..n]) {
                *d = E::from_acc(v);
            }
        }
    }
}

impl Elem for f64 {
    type Acc = f64;
    #[inline(always)]
    fn to_acc(self) -> f64 {
        self
    }
    #[inline(always)]
    fn from_acc(a: f64) -> Self {
        a
    }
    #[inline(always)]
    fn from_f64(x: f64) -> Self {
        x
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self
    }
    #[inline(always)]
    fn act(act: Act, x: &[Self], out: &mut [Self]) {
        act_native(act, x, out)
    }
    #[inline(always)]
    fn act3(x: &[Self], lc: &mut [Self], th: &mut [Self], s2: &mut [Self]) {
        k_logcosh_family(x, lc, th, s2)
    }
    #[inline(always)]
    fn pool() -> &'static LocalKey<RefCell<Pool<Self>>> {
        &POOL_F64
    }
}

impl Elem for f32 {
    type Acc = f32;
    #[inline(always)]
    fn to_acc(self) -> f32 {
        self
    }
    #[inline(always)]
    fn from_acc(a: f32) -> Self {
        a
    }
    #[inline(always)]
    fn from_f64(x: f64) -> Self {
        x as f32
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
    #[inline(always)]
    fn act(act: Act, x: &[Self], out: &mut [Self]) {
        act_native(act, x, out)
    }
    #[inline(always)]
    fn act3(x: &[Self], lc: &mut [Self], th: &mut [Self], s2: &mut [Self]) {
        k_logcosh_family(x, lc, th, s2)
    }
    #[inline(always)]
    fn pool() -> &'static LocalKey<RefCell<Pool<Self>>> {
        &POOL_F32
    }
}

impl Elem for f16 {
    type Acc = f32;
    #[inline(always)]
    fn to_acc(self) -> f32 {
        self.to_f32()
    }
    #[inline(always)]
    fn from_acc(a: f32) -> Self {
        f16::from_f32(a)
    }
    #[inline(always)]
    fn from_f64(x: f64) -> Self {
        f16::from_f32(f64_to_f32_odd(x))
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self.to_f64()
    }
    #[inline(always)]
    fn act(act: Act, x: &[Self], out: &mut [Self]) {
        act_half(act, x, out)
    }
    #[inline(always)]
    fn act3(x: &[Self], lc: &mut [Self], th: &mut [Self], s2: &mut [Self]) {
        act3_half(x, lc, th, s2)
    }
    #[inline(always)]
    fn pool() -> &'static LocalKey<RefCell<Pool<Self>>> {
        &POOL_F16
    }
}

impl Elem for bf16 {
    type Acc = f32;
    #[inline(always)]
    fn to_acc(self) -> f32 {
        self.to_f32()
    }
    #[inline(always)]
    fn from_acc(a: f32) -> Self {
        bf16::from_f32(a)
    }
    #[inline(always)]
    fn from_f64(x: f64) -> Self {
        bf16::from_f32(f64_to_f32_odd(x))
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self.to_f64()
    }
    #[inline(always)]
    fn act(act: Act, x: &[Self], out: &mut [Self]) {
        act_half(act, x, out)
    }
    #[inline(always)]
    fn act3(x: &[Self], lc: &mut [Self], th: &mut [Self], s2: &mut [Self]) {
        act3_half(x, lc, th, s2)
    }
    #[inline(always)]
    fn pool() -> &'static LocalKey<RefCell<Pool<Self>>> {
        &POOL_BF16
    }
}

/// Applies a generic kernel to a buffer, keeping its precision.
macro_rules! dispatch1 {
    ($x:expr, |$v:ident| $body:expr) => {
        match $x {
            CpuBuffer::F64($v) => CpuBuffer::F64($body),
            CpuBuffer::F32($v) => CpuBuffer::F32($body),
            CpuBuffer::Bf16($v) => CpuBuffer::Bf16($body),
            CpuBuffer::F16($v) => CpuBuffer::F16($body),
        }
    };
}

/// Applies a generic kernel to two buffers of the same precision.
macro_rules! dispatch2 {
    ($op:expr, $a:expr, $b:expr, |$x:ident, $y:ident| $body:expr) => {
        match ($a, $b) {
            (CpuBuffer::F64($x), CpuBuffer::F64($y)) => CpuBuffer::F64($body),
            (CpuBuffer::F32($x), CpuBuffer::F32($y)) => CpuBuffer::F32($body),
            (CpuBuffer::Bf16($x), CpuBuffer::Bf16($y)) => CpuBuffer::Bf16($body),
            (CpuBuffer::F16($x), CpuBuffer::F16($y)) => CpuBuffer::F16($body),
            (a, b) => {
                return Err(Error::DType {
                    op: $op,
                    lhs: a.dtype(),
                    rhs: b.dtype(),
                })
            }
        }
    };
}

pub(super) fn check_len(what: &'static str, found: usize, expected: usize) -> Result<()> {
    if found == expected {
        Ok(())
    } else {
        Err(Error::Length {
            what,
            found,
            expected,
        })
    }
}

/// Elements of a right operand covering `shape` as `bc` says.
pub(super) fn rhs_len(shape: Shape, bc: Broadcast) -> usize {
    match bc {
        Broadcast::None => shape.len(),
        Broadcast::Row => shape.cols,
        Broadcast::Col => shape.rows,
        Broadcast::Scalar => 1,
    }
}

pub(super) fn checked_len(op: &'static str, shape: Shape) -> Result<usize> {
    shape.checked_len().ok_or_else(|| Error::InvalidShape {
        op,
        shape,
        message: "element count overflows".into(),
    })
}

// ---------------------------------------------------------------------------------------
// Scalar maps, generic over the compute type (the transcendental ones are the
// vectorized kernels of `socflow_runtime::linalg`, through `Elem::act`)
// ---------------------------------------------------------------------------------------

#[inline(always)]
fn sign<R: Acc>(x: R) -> R {
    if x > R::of(0.0) {
        R::of(1.0)
    } else if x < R::of(0.0) {
        -R::of(1.0)
    } else {
        // ±0 stays 0, NaN stays NaN.
        x * R::of(0.0)
    }
}

// ---------------------------------------------------------------------------------------
// Generic kernels
// ---------------------------------------------------------------------------------------

fn map_k<E: Elem, F>(par: bool, x: &[E], f: F) -> Vec<E>
where
    F: Fn(E::Acc) -> E::Acc + Sync + Send,
{
    if par && x.len() >= PAR_ELEMS {
        x.par_iter().map(|&v| E::from_acc(f(v.to_acc()))).collect()
    } else {
        let mut out = alloc(x.len());
        out.extend(x.iter().map(|&v| E::from_acc(f(v.to_acc()))));
        out
    }
}

/// A vectorized map over `x`, split over rayon threads when large.
fn act_k<E: Elem>(par: bool, act: Act, x: &[E]) -> Vec<E> {
    if par && x.len() >= PAR_ELEMS {
        let mut out = zeros(x.len());
        out.par_chunks_mut(PAR_CHUNK)
            .zip(x.par_chunks(PAR_CHUNK))
            .for_each(|(o, x)| E::act(act, x, o));
        return out;
    }
    // Serially: a block at a time through a small buffer (in L1) and appended, so the
    // output is written once and never zero-filled.
    const BLOCK: usize = 256;
    let zero = E::from_acc(E::Acc::of(0.0));
    let mut buf = [zero; BLOCK];
    let mut out = alloc(x.len());
    for xc in x.chunks(BLOCK) {
        let b = &mut buf[..xc.len()];
        E::act(act, xc, b);
        out.extend_from_slice(b);
    }
    out
}

fn unary_k<E: Elem>(par: bool, op: UnaryOp, x: &[E]) -> Vec<E> {
    match op {
        UnaryOp::Neg => map_k(par, x, |v| -v),
        UnaryOp::Square => map_k(par, x, |v| v * v),
        UnaryOp::Abs => map_k(par, x, |v| v.abs()),
        UnaryOp::Sign => map_k(par, x, sign),
        UnaryOp::Recip => map_k(par, x, |v| v.recip()),
        UnaryOp::Exp => map_k(par, x, |v| v.exp()),
        UnaryOp::Log => map_k(par, x, |v| v.ln()),
        UnaryOp::Sqrt => map_k(par, x, |v| v.sqrt()),
        UnaryOp::Tanh => act_k(par, Act::Tanh, x),
        UnaryOp::Sech2 => act_k(par, Act::Sech2, x),
        UnaryOp::Sigmoid => act_k(par, Act::Sigmoid, x),
        UnaryOp::Silu => act_k(par, Act::Silu, x),
        UnaryOp::SiluPrime => act_k(par, Act::SiluPrime, x),
        UnaryOp::SiluSecond => act_k(par, Act::SiluSecond, x),
        UnaryOp::Softplus => act_k(par, Act::Softplus, x),
        UnaryOp::LogCosh => act_k(par, Act::LogCosh, x),
        UnaryOp::Sin => map_k(par, x, |v| v.sin()),
        UnaryOp::Cos => map_k(par, x, |v| v.cos()),
    }
}

/// Which of log cosh, tanh, sech² a set of maps asks for, if it asks only for those,
/// each at most once, and for at least two of them.
pub(super) fn logcosh_family(ops: &[UnaryOp]) -> Option<[Option<usize>; 3]> {
    let mut at = [None; 3];
    for (j, op) in ops.iter().enumerate() {
        let slot = match op {
            UnaryOp::LogCosh => 0,
            UnaryOp::Tanh => 1,
            UnaryOp::Sech2 => 2,
            _ => return None,
        };
        if at[slot].replace(j).is_some() {
            return None;
        }
    }
    (ops.len() >= 2).then_some(at)
}

/// log cosh, tanh and sech² of `x` in one pass (on the calling thread), the ones
/// `want` names appended to fresh vectors.
fn logcosh_family_k<E: Elem>(x: &[E], want: [bool; 3]) -> [Option<Vec<E>>; 3] {
    const BLOCK: usize = 256;
    let zero = E::from_acc(E::Acc::of(0.0));
    let mut bufs = [[zero; BLOCK]; 3];
    let mut outs = want.map(|w| w.then(|| alloc(x.len())));
    for xc in x.chunks(BLOCK) {
        let n = xc.len();
        let [l, t, q] = &mut bufs;
        E::act3(xc, &mut l[..n], &mut t[..n], &mut q[..n]);
        for (out, b) in outs.iter_mut().zip(&bufs) {
            if let Some(o) = out {
                o.extend_from_slice(&b[..n]);
            }
        }
    }
    outs
}

fn affine_k<E: Elem>(par: bool, x: &[E], alpha: f64, beta: f64) -> Vec<E> {
    let (a, b) = (E::Acc::of(alpha), E::Acc::of(beta));
    map_k(par, x, move |u| a * u + b)
}

/// Rows per parallel task of a broadcasting binary kernel (at least this many
/// elements).
const PAR_CHUNK: usize = 1 << 12;

fn zip_k<E: Elem, F>(par: bool, a: &[E], shape: Shape, b: &[E], bc: Broadcast, f: F) -> Vec<E>
where
    F: Fn(E::Acc, E::Acc) -> E::Acc + Sync + Send,
{
    let n = shape.cols.max(1);
    let par = par && a.len() >= PAR_ELEMS;
    // `r0` is the first row of the chunk `a_chunk`; the broadcast is resolved once per
    // row (or once per chunk), never per element.
    let chunk = |(r0, (out, a_chunk)): (usize, (&mut [E], &[E]))| match bc {
        Broadcast::None => {
            let b_chunk = &b[r0 * n..r0 * n + a_chunk.len()];
            for ((o, &x), &y) in out.iter_mut().zip(a_chunk).zip(b_chunk) {
                *o = E::from_acc(f(x.to_acc(), y.to_acc()));
            }
        }
        Broadcast::Row => {
            for (orow, arow) in out.chunks_mut(n).zip(a_chunk.chunks(n)) {
                for ((o, &x), &y) in orow.iter_mut().zip(arow).zip(b) {
                    *o = E::from_acc(f(x.to_acc(), y.to_acc()));
                }
            }
        }
        Broadcast::Col => {
            for (r, (orow, arow)) in out.chunks_mut(n).zip(a_chunk.chunks(n)).enumerate() {
                let y = b[r0 + r].to_acc();
                for (o, &x) in orow.iter_mut().zip(arow) {
                    *o = E::from_acc(f(x.to_acc(), y));
                }
            }
        }
        Broadcast::Scalar => {
            let y = b[0].to_acc();
            for (o, &x) in out.iter_mut().zip(a_chunk) {
                *o = E::from_acc(f(x.to_acc(), y));
            }
        }
    };
    if !par {
        return zip_serial(a, n, b, bc, &f);
    }
    let mut out = zeros(a.len());
    {
        let rows = PAR_CHUNK.div_ceil(n);
        out.par_chunks_mut(rows * n)
            .zip(a.par_chunks(rows * n))
            .enumerate()
            .for_each(|(i, pair)| chunk((i * rows, pair)));
    }
    out
}

/// [`zip_k`] on the calling thread, building the output by appending (no zero fill).
fn zip_serial<E: Elem, F>(a: &[E], n: usize, b: &[E], bc: Broadcast, f: F) -> Vec<E>
where
    F: Fn(E::Acc, E::Acc) -> E::Acc,
{
    let mut out = alloc(a.len());
    match bc {
        Broadcast::None => {
            out.extend(
                a.iter()
                    .zip(b)
                    .map(|(&x, &y)| E::from_acc(f(x.to_acc(), y.to_acc()))),
            );
        }
        Broadcast::Row => {
            for arow in a.chunks(n) {
                out.extend(
                    arow.iter()
                        .zip(b)
                        .map(|(&x, &y)| E::from_acc(f(x.to_acc(), y.to_acc()))),
                );
            }
        }
        Broadcast::Col => {
            for (arow, &y) in a.chunks(n).zip(b) {
                let y = y.to_acc();
                out.extend(arow.iter().map(|&x| E::from_acc(f(x.to_acc(), y))));
            }
        }
        Broadcast::Scalar => {
            let y = b[0].to_acc();
            out.extend(a.iter().map(|&x| E::from_acc(f(x.to_acc(), y))));
        }
    }
    out
}

fn binary_k<E: Elem>(
    par: bool,
    op: BinaryOp,
    a: &[E],
    shape: Shape,
    b: &[E],
    bc: Broadcast,
) -> Vec<E> {
    match op {
        BinaryOp::Add => zip_k(par, a, shape, b, bc, |x, y| x + y),
        BinaryOp::Sub => zip_k(par, a, shape, b, bc, |x, y| x - y),
        BinaryOp::Mul => zip_k(par, a, shape, b, bc, |x, y| x * y),
        BinaryOp::Div => zip_k(par, a, shape, b, bc, |x, y| x / y),
    }
}

fn add_assign_k<E: Elem>(dst: &mut [E], src: &[E]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = E::from_acc(d.to_acc() + s.to_acc());
    }
}

/// gσ ⊙ tanh + g_t ⊙ sech² + g_q ⊙ (−2·tanh·sech²) from the values tanh `t` and sech²
/// `q`, absent gradients left out, computed in the compute type and rounded once.
fn logcosh_family_vjp_k<E: Elem>(
    t: &[E],
    q: &[E],
    g_lc: Option<&[E]>,
    g_t: Option<&[E]>,
    g_q: Option<&[E]>,
) -> Vec<E> {
    let two = E::Acc::of(-2.0);
    let mut out = alloc(t.len());
    if let (Some(a), Some(b), Some(c)) = (g_lc, g_t, g_q) {
        out.extend(t.iter().zip(q).zip(a.iter().zip(b).zip(c)).map(
            |((&t, &q), ((&a, &b), &c))| {
                let (t, q) = (t.to_acc(), q.to_acc());
                E::from_acc((a.to_acc() * t + b.to_acc() * q) + c.to_acc() * ((two * t) * q))
            },
        ));
        return out;
    }
    let zero = E::Acc::of(0.0);
    let at = |g: Option<&[E]>, i: usize| g.map_or(zero, |g| g[i].to_acc());
    out.extend((0..t.len()).map(|i| {
        let (tv, qv) = (t[i].to_acc(), q[i].to_acc());
        E::from_acc((at(g_lc, i) * tv + at(g_t, i) * qv) + at(g_q, i) * ((two * tv) * qv))
    }));
    out
}

/// `dst ← dst + α·src`, one precision.
fn axpy_k<E: Elem>(dst: &mut [E], alpha: f64, src: &[E]) {
    if alpha == 1.0 {
        return add_assign_k(dst, src);
    }
    let a = E::Acc::of(alpha);
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = E::from_acc(d.to_acc() + a * s.to_acc());
    }
}

/// `dst ← dst + α·src` with `src` of another precision, read exactly (through f64,
/// which holds every element exactly) into `dst`'s compute type.
fn axpy_mixed_k<D: Elem, S: Elem>(dst: &mut [D], alpha: f64, src: &[S]) {
    let a = D::Acc::of(alpha);
    for (d, &s) in dst.iter_mut().zip(src) {
        let s = D::Acc::of(s.to_f64());
        let v = if alpha == 1.0 { s } else { a * s };
        *d = D::from_acc(d.to_acc() + v);
    }
}

/// `a + α·(b ⊙ c)`, `a`, `b` of shape `shape` and `c` broadcast.
fn mul_add_k<E: Elem>(
    a: &[E],
    b: &[E],
    shape: Shape,
    c: &[E],
    bc: Broadcast,
    alpha: f64,
) -> Vec<E> {
    let al = E::Acc::of(alpha);
    let n = shape.cols.max(1);
    let f = |x: E, y: E, z: E::Acc| E::from_acc(x.to_acc() + al * (y.to_acc() * z));
    let mut out = alloc(a.len());
    match bc {
        Broadcast::None => out.extend(
            a.iter()
                .zip(b)
                .zip(c)
                .map(|((&x, &y), &z)| f(x, y, z.to_acc())),
        ),
        Broadcast::Row => {
            for (ar, br) in a.chunks(n).zip(b.chunks(n)) {
                out.extend(
                    ar.iter()
                        .zip(br)
                        .zip(c)
                        .map(|((&x, &y), &z)| f(x, y, z.to_acc())),
                );
            }
        }
        Broadcast::Col => {
            for ((ar, br), &z) in a.chunks(n).zip(b.chunks(n)).zip(c) {
                let z = z.to_acc();
                out.extend(ar.iter().zip(br).map(|(&x, &y)| f(x, y, z)));
            }
        }
        Broadcast::Scalar => {
            let z = c[0].to_acc();
            out.extend(a.iter().zip(b).map(|(&x, &y)| f(x, y, z)));
        }
    }
    out
}

fn reduce_k<E: Elem>(x: &[E], shape: Shape, axis: Reduction, alpha: f64) -> Vec<E> {
    let alpha = E::Acc::of(alpha);
    let zero = E::Acc::of(0.0);
    let n = shape.cols;
    match axis {
        Reduction::Cols => {
            if n == 0 {
                return vec![E::from_acc(zero); shape.rows];
            }
            x.chunks(n)
                .map(|row| E::from_acc(alpha * row.iter().fold(zero, |s, &v| s + v.to_acc())))
                .collect()
        }
        Reduction::Rows => {
            let mut acc = vec![zero; n];
            if n > 0 {
                for row in x.chunks(n) {
                    for (a, &v) in acc.iter_mut().zip(row) {
                        *a += v.to_acc();
                    }
                }
            }
            acc.into_iter().map(|s| E::from_acc(alpha * s)).collect()
        }
        Reduction::All => {
            vec![E::from_acc(
                alpha * x.iter().fold(zero, |s, &v| s + v.to_acc()),
            )]
        }
    }
}

fn broadcast_k<E: Elem>(x: &[E], from: Shape, to: Shape, alpha: f64) -> Vec<E> {
    let a = E::Acc::of(alpha);
    let scaled = |v: E| {
        if alpha == 1.0 {
            v
        } else {
            E::from_acc(a * v.to_acc())
        }
    };
    let mut out = alloc(to.len());
    match (from.rows == 1, from.cols == 1) {
        (true, true) => out.resize(to.len(), scaled(x[0])),
        (true, false) => {
            // One row, then doubling copies (rows are short: a copy per row would be
            // thousands of small copies).
            out.extend(x.iter().map(|&v| scaled(v)));
            while out.len() < to.len() {
                let more = out.len().min(to.len() - out.len());
                out.extend_from_within(..more);
            }
        }
        (false, true) => {
            for &v in x {
                out.resize(out.len() + to.cols, scaled(v));
            }
        }
        (false, false) => out.extend(x.iter().map(|&v| scaled(v))),
    }
    out
}

fn slice_cols_k<E: Elem>(x: &[E], shape: Shape, c0: usize, c1: usize) -> Vec<E> {
    let mut out = alloc(shape.rows * (c1 - c0));
    if shape.cols > 0 {
        for row in x.chunks(shape.cols) {
            out.extend_from_slice(&row[c0..c1]);
        }
    }
    out
}

fn embed_cols_k<E: Elem>(x: &[E], shape: Shape, c0: usize, total: usize) -> Vec<E> {
    let mut out = zeros(shape.rows * total);
    if shape.cols > 0 {
        for (dst, src) in out.chunks_mut(total).zip(x.chunks(shape.cols)) {
            dst[c0..c0 + shape.cols].copy_from_slice(src);
        }
    }
    out
}

fn repeat_rows_k<E: Elem>(x: &[E], shape: Shape, k: usize) -> Vec<E> {
    let mut out = alloc(x.len() * k);
    if shape.cols > 0 {
        for row in x.chunks(shape.cols) {
            for _ in 0..k {
                out.extend_from_slice(row);
            }
        }
    }
    out
}

fn sum_row_groups_k<E: Elem>(x: &[E], shape: Shape, k: usize) -> Vec<E> {
    let n = shape.cols;
    let groups = shape.rows / k;
    let zero = E::Acc::of(0.0);
    let mut out = alloc(groups * n);
    let mut acc = vec![zero; n];
    for g in 0..groups {
        acc.fill(zero);
        for j in 0..k {
            let row = &x[(g * k + j) * n..(g * k + j + 1) * n];
            for (a, &v) in acc.iter_mut().zip(row) {
                *a += v.to_acc();
            }
        }
        out.extend(acc.iter().map(|&a| E::from_acc(a)));
    }
    out
}

fn tile_rows_k<E: Elem>(x: &[E], times: usize) -> Vec<E> {
    let total = x.len() * times;
    let mut out = alloc(total);
    if times > 0 {
        out.extend_from_slice(x);
    }
    // Doubling copies: one copy per tile would be many small copies.
    while out.len() < total {
        let more = out.len().min(total - out.len());
        out.extend_from_within(..more);
    }
    out
}

fn sum_tiles_k<E: Elem>(x: &[E], times: usize) -> Vec<E> {
    let tile = x.len() / times;
    let zero = E::Acc::of(0.0);
    let mut acc = vec![zero; tile];
    for t in 0..times {
        for (a, &v) in acc.iter_mut().zip(&x[t * tile..(t + 1) * tile]) {
            *a += v.to_acc();
        }
    }
    acc.into_iter().map(E::from_acc).collect()
}

fn convert_k<S: Elem, D: Elem>(x: &[S]) -> Vec<D> {
    let mut out = alloc(x.len());
    out.extend(x.iter().map(|&v| D::from_f64(v.to_f64())));
    out
}

fn cast_to<E: Elem>(x: &CpuBuffer) -> Vec<E> {
    match x {
        CpuBuffer::F64(v) => convert_k(v),
        CpuBuffer::F32(v) => convert_k(v),
        CpuBuffer::Bf16(v) => convert_k(v),
        CpuBuffer::F16(v) => convert_k(v),
    }
}

/// `len` copies of `value` rounded once.
fn filled<E: Elem>(len: usize, value: f64) -> Vec<E> {
    let mut v = alloc(len);
    v.resize(len, E::from_f64(value));
    v
}

// ---------------------------------------------------------------------------------------
// GEMM
// ---------------------------------------------------------------------------------------

/// The two types `gemm::gemm` is called with here.
trait GemmFloat: Elem<Acc = Self> + Acc + Copy + Send + Sync + 'static {
    const ZERO: Self;
    const ONE: Self;
}

impl GemmFloat for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
}

impl GemmFloat for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
}

/// A strided operand of a product: element (i, p) lives at `i·rs + p·cs`.
#[derive(Clone, Copy)]
struct Operand<'a, T> {
    data: &'a [T],
    rs: usize,
    cs: usize,
}

/// The operand op(X) for X stored `shape` (row-major), transposed if `t`: its
/// (rows, cols) after the transpose and its strides.
fn operand<T>(data: &[T], shape: Shape, t: bool) -> (usize, usize, Operand<'_, T>) {
    if t {
        (
            shape.cols,
            shape.rows,
            Operand {
                data,
                rs: 1,
                cs: shape.cols,
            },
        )
    } else {
        (
            shape.rows,
            shape.cols,
            Operand {
                data,
                rs: shape.cols,
                cs: 1,
            },
        )
    }
}

/// The last index an `rows × cols` strided operand touches must lie inside it.
fn check_extent<T>(
    what: &'static str,
    op: &Operand<'_, T>,
    rows: usize,
    cols: usize,
) -> Result<()> {
    let last = (rows - 1)
        .checked_mul(op.rs)
        .and_then(|a| (cols - 1).checked_mul(op.cs).and_then(|b| a.checked_add(b)))
        .ok_or_else(|| Error::InvalidArgument(format!("{what}: extent overflows")))?;
    if last >= op.data.len() {
        return Err(Error::Length {
            what,
            found: op.data.len(),
            expected: last + 1,
        });
    }
    Ok(())
}

/// `dst = lhs · rhs`, or with `acc = Some(β)` `dst ← dst + β·lhs·rhs` (`m × k` times
/// `k × n`, `dst` row-major `m × n`), through the `gemm` crate, whose entry point is an
/// `unsafe fn` on raw pointers and strides; every extent is checked against its slice
/// first.
#[allow(unsafe_code, clippy::too_many_arguments)]
fn gemm_into<T: GemmFloat>(
    par: bool,
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [T],
    lhs: Operand<'_, T>,
    rhs: Operand<'_, T>,
    acc: Option<T>,
) -> Result<()> {
    check_len("matmul output", dst.len(), m * n)?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        if acc.is_none() {
            dst.fill(T::ZERO);
        }
        return Ok(());
    }
    // dst ← α·dst + β·lhs·rhs, `dst` read only when accumulating.
    let (read_dst, alpha, beta) = match acc {
        None => (false, T::ZERO, T::ONE),
        Some(b) => (true, T::ONE, b),
    };
    check_extent("matmul lhs", &lhs, m, k)?;
    check_extent("matmul rhs", &rhs, k, n)?;
    if skinny_gemm(m, n, k, dst, &lhs, &rhs, acc) {
        return Ok(());
    }
    let to_isize = |v: usize| {
        isize::try_from(v).map_err(|_| Error::InvalidArgument("matmul stride exceeds isize".into()))
    };
    let (dst_rs, lhs_rs, lhs_cs, rhs_rs, rhs_cs) = (
        to_isize(n)?,
        to_isize(lhs.rs)?,
        to_isize(lhs.cs)?,
        to_isize(rhs.rs)?,
        to_isize(rhs.cs)?,
    );
    let parallelism = if par && m.saturating_mul(n).saturating_mul(k) >= PAR_GEMM {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: `dst` is an exclusive borrow of exactly m·n elements, addressed at
    // i·n + j (i < m, j < n); `lhs` and `rhs` are shared borrows whose largest addressed
    // index, (rows−1)·rs + (cols−1)·cs with non-negative strides, was checked to lie
    // inside them; a mutable and a shared borrow cannot alias. `T` is f32 or f64, both
    // supported by `gemm`; `dst` is initialized, so reading it (`read_dst`) is sound.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs,
            read_dst,
            lhs.data.as_ptr(),
            lhs_cs,
            lhs_rs,
            rhs.data.as_ptr(),
            rhs_cs,
            rhs_rs,
            alpha,
            beta,
            false,
            false,
            false,
            parallelism,
        );
    }
    Ok(())
}

fn matmul_k<T: GemmFloat>(
    par: bool,
    a: &[T],
    a_shape: Shape,
    ta: bool,
    b: &[T],
    b_shape: Shape,
    tb: bool,
) -> Result<Vec<T>> {
    let (m, k, lhs) = operand(a, a_shape, ta);
    let (k2, n, rhs) = operand(b, b_shape, tb);
    if k != k2 {
        return Err(Error::Shape {
            op: "matmul",
            lhs: a_shape,
            rhs: b_shape,
        });
    }
    let len = m.checked_mul(n).ok_or_else(|| Error::InvalidShape {
        op: "matmul",
        shape: Shape::new(m, n),
        message: "element count overflows".into(),
    })?;
    let mut out = zeros(len);
    gemm_into(par, m, n, k, &mut out, lhs, rhs, None)?;
    Ok(out)
}

/// `dst ← dst + β·op(a)·op(b)` in f32 or f64.
#[allow(clippy::too_many_arguments)]
fn matmul_acc_k<T: GemmFloat>(
    par: bool,
    dst: &mut [T],
    a: &[T],
    a_shape: Shape,
    ta: bool,
    b: &[T],
    b_shape: Shape,
    tb: bool,
    beta: f64,
) -> Result<()> {
    let (m, k, lhs) = operand(a, a_shape, ta);
    let (k2, n, rhs) = operand(b, b_shape, tb);
    if k != k2 {
        return Err(Error::Shape {
            op: "matmul_acc",
            lhs: a_shape,
            rhs: b_shape,
        });
    }
    let len = m.checked_mul(n).ok_or_else(|| Error::InvalidShape {
        op: "matmul_acc",
        shape: Shape::new(m, n),
        message: "element count overflows".into(),
    })?;
    check_len("matmul_acc destination", dst.len(), len)?;
    gemm_into(par, m, n, k, dst, lhs, rhs, Some(T::from_f64(beta)))
}

// ---------------------------------------------------------------------------------------
// Skinny products
// ---------------------------------------------------------------------------------------
//
// The `gemm` crate is fast on products whose three sizes are all large (~100 GFLOP/s on
// B×32 by 32×32), and no worse than simple kernels on a batch times a few columns, but a
// reduction over the batch to a few columns, Kᵀ·X with X of B × 3 (the gradient of
// a first layer's weights), took it ~160 µs for 5·10⁵ multiply-adds. The transposed
// product below does it in ~30 µs.

/// Lanes of the register-held accumulators (one AVX-512 register of f32, two of f64;
/// the compiler splits them as the target requires).
const LANES: usize = 16;
/// Output columns up to this (with a long inner size) use the transposed reduction.
const FEW_COLS: usize = 8;
/// Inner sizes from this on count as long.
const LONG_INNER: usize = 256;

/// `a·b + c`, fused when `FMA` (the selected target has the instruction; elsewhere a
/// fused multiply-add would be a slow library call).
#[inline(always)]
fn madd<T: GemmFloat, const FMA: bool>(a: T, b: T, c: T) -> T {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// `out[i, :] = Σ_p lhs[i, p]·rows[p, :]` for `M` ≤ 4 output rows of length n, with
/// `rows` a contiguous k × n matrix: the M × 16 accumulators of a column block stay in
/// registers while the loop over p streams `rows`.
#[inline(always)]
fn reduce_rows<T: GemmFloat, const M: usize, const F: bool>(
    n: usize,
    k: usize,
    out: &mut [T],
    lhs: &[T],
    (lrs, lcs): (usize, usize),
    rows: &[T],
) {
    let full = n - n % LANES;
    for c0 in (0..full).step_by(LANES) {
        let mut acc = [[T::ZERO; LANES]; M];
        for p in 0..k {
            let r: &[T; LANES] = rows[p * n + c0..p * n + c0 + LANES]
                .try_into()
                .expect("a slice of LANES elements");
            for (i, a) in acc.iter_mut().enumerate() {
                let s = lhs[i * lrs + p * lcs];
                for l in 0..LANES {
                    a[l] = madd::<T, F>(s, r[l], a[l]);
                }
            }
        }
        for (i, a) in acc.iter().enumerate() {
            out[i * n + c0..i * n + c0 + LANES].copy_from_slice(a);
        }
    }
    for c in full..n {
        for i in 0..M {
            let mut a = T::ZERO;
            for p in 0..k {
                a = madd::<T, F>(lhs[i * lrs + p * lcs], rows[p * n + c], a);
            }
            out[i * n + c] = a;
        }
    }
}

/// `out = lhs·rows` for a few output rows m (`out` m × n, `rows` a contiguous k × n
/// matrix, `lhs` strided), four rows at a time.
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512vl+avx512dq+avx512bw+avx2+fma",
    "x86_64+avx2+fma",
    "aarch64+neon"
))]
fn k_reduce_rows<T: GemmFloat>(
    m: usize,
    n: usize,
    k: usize,
    out: &mut [T],
    lhs: &[T],
    (lrs, lcs): (usize, usize),
    rows: &[T],
) {
    const F: bool =
        multiversion::target::target_cfg_f!(any(target_feature = "fma", target_arch = "aarch64"));
    for i0 in (0..m).step_by(4) {
        let (o, l) = (&mut out[i0 * n..], &lhs[i0 * lrs..]);
        match m - i0 {
            1 => reduce_rows::<T, 1, F>(n, k, o, l, (lrs, lcs), rows),
            2 => reduce_rows::<T, 2, F>(n, k, o, l, (lrs, lcs), rows),
            3 => reduce_rows::<T, 3, F>(n, k, o, l, (lrs, lcs), rows),
            _ => reduce_rows::<T, 4, F>(n, k, o, l, (lrs, lcs), rows),
        }
    }
}

/// `dst (+)= β·lhs·rhs` by the transposed reduction when the product has few columns,
/// a long inner size and a transposed left operand (`lhs = Xᵀ`, X contiguous k × m):
/// dstᵀ = rhsᵀ·X has few rows and streams X once. `false` (nothing written) for other
/// shapes. Extents are checked by the caller.
fn skinny_gemm<T: GemmFloat>(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [T],
    lhs: &Operand<'_, T>,
    rhs: &Operand<'_, T>,
    acc: Option<T>,
) -> bool {
    if !(n <= FEW_COLS && k >= LONG_INNER && m >= LANES && lhs.rs == 1 && lhs.cs == m) {
        return false;
    }
    let mut t = zeros(n * m);
    // rhsᵀ[j, p] = rhs[p, j].
    k_reduce_rows(n, m, k, &mut t, rhs.data, (rhs.cs, rhs.rs), lhs.data);
    for i in 0..m {
        for j in 0..n {
            let v = t[j * m + i];
            let o = &mut dst[i * n + j];
            *o = match acc {
                None => v,
                Some(b) => *o + b * v,
            };
        }
    }
    recycle(t);
    true
}

// ---------------------------------------------------------------------------------------
// 16-bit buffers through the f32 kernels
// ---------------------------------------------------------------------------------------

/// A 16-bit buffer widened (exactly) to f32, in bulk (F16C where the CPU has it);
/// `None` for f32 and f64 buffers. A 16-bit kernel computes in f32 and rounds once, so
/// running the f32 kernel on widened inputs and narrowing its output is that kernel,
/// without a conversion call per element.
fn widened(x: &CpuBuffer) -> Option<CpuBuffer> {
    match x {
        CpuBuffer::F16(v) => Some(CpuBuffer::F32(to_f32_bulk(v))),
        CpuBuffer::Bf16(v) => Some(CpuBuffer::F32(to_f32_bulk(v))),
        _ => None,
    }
}

/// Block size of the bulk conversions (through a stack buffer, so that the output is
/// written once and never zero-filled).
const CONVERT_BLOCK: usize = 512;

fn to_f32_bulk<H>(v: &[H]) -> Vec<f32>
where
    [H]: half::slice::HalfFloatSliceExt,
{
    use half::slice::HalfFloatSliceExt;
    let mut out = alloc::<f32>(v.len());
    let mut buf = [0.0f32; CONVERT_BLOCK];
    for c in v.chunks(CONVERT_BLOCK) {
        let b = &mut buf[..c.len()];
        c.convert_to_f32_slice(b);
        out.extend_from_slice(b);
    }
    out
}

fn from_f32_bulk<H: Elem>(v: &[f32]) -> Vec<H>
where
    [H]: half::slice::HalfFloatSliceExt,
{
    use half::slice::HalfFloatSliceExt;
    let mut out = alloc::<H>(v.len());
    let mut buf = [H::from_f64(0.0); CONVERT_BLOCK];
    for c in v.chunks(CONVERT_BLOCK) {
        let b = &mut buf[..c.len()];
        b.convert_from_f32_slice(c);
        out.extend_from_slice(b);
    }
    out
}

/// An f32 buffer rounded to `dtype` (to nearest, ties to even) in bulk when `dtype` is
/// a 16-bit type; otherwise `x` itself.
fn narrowed(x: CpuBuffer, dtype: DType) -> CpuBuffer {
    let Some(v) = x.as_f32() else {
        return x;
    };
    match dtype {
        DType::F16 => CpuBuffer::F16(from_f32_bulk(v)),
        DType::Bf16 => CpuBuffer::Bf16(from_f32_bulk(v)),
        _ => x,
    }
}

/// Both operands widened when both are of the same 16-bit type.
fn widened_pair(a: &CpuBuffer, b: &CpuBuffer) -> Option<(CpuBuffer, CpuBuffer)> {
    if a.dtype() != b.dtype() {
        return None;
    }
    Some((widened(a)?, widened(b)?))
}

// ---------------------------------------------------------------------------------------
// The backend
// ---------------------------------------------------------------------------------------

impl Backend for Cpu {
    type Buffer = CpuBuffer;

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn upload(&self, data: &[f64], dtype: DType) -> Result<CpuBuffer> {
        Ok(match dtype {
            DType::F64 => CpuBuffer::F64(data.to_vec()),
            DType::F32 => CpuBuffer::F32(convert_k(data)),
            DType::Bf16 => CpuBuffer::Bf16(convert_k(data)),
            DType::F16 => CpuBuffer::F16(convert_k(data)),
        })
    }

    fn download(&self, x: &CpuBuffer) -> Result<Vec<f64>> {
        Ok(match x {
            CpuBuffer::F64(v) => v.clone(),
            CpuBuffer::F32(v) => convert_k(v),
            CpuBuffer::Bf16(v) => convert_k(v),
            CpuBuffer::F16(v) => convert_k(v),
        })
    }

    fn full(&self, len: usize, value: f64, dtype: DType) -> Result<CpuBuffer> {
        Ok(match dtype {
            DType::F64 => CpuBuffer::F64(filled(len, value)),
            DType::F32 => CpuBuffer::F32(filled(len, value)),
            DType::Bf16 => CpuBuffer::Bf16(filled(len, value)),
            DType::F16 => CpuBuffer::F16(filled(len, value)),
        })
    }

    fn copy(&self, x: &CpuBuffer) -> Result<CpuBuffer> {
        Ok(x.clone())
    }

    fn cast(&self, x: &CpuBuffer, dtype: DType) -> Result<CpuBuffer> {
        if x.dtype() == dtype {
            return Ok(x.clone());
        }
        // Between f32 and a 16-bit type: bulk conversions (the same roundings).
        if dtype == DType::F32 {
            if let Some(w) = widened(x) {
                return Ok(w);
            }
        }
        if x.dtype() == DType::F32 && dtype.is_half() {
            return Ok(narrowed(x.clone(), dtype));
        }
        Ok(match dtype {
            DType::F64 => CpuBuffer::F64(cast_to(x)),
            DType::F32 => CpuBuffer::F32(cast_to(x)),
            DType::Bf16 => CpuBuffer::Bf16(cast_to(x)),
            DType::F16 => CpuBuffer::F16(cast_to(x)),
        })
    }

    fn matmul(
        &self,
        a: &CpuBuffer,
        a_shape: Shape,
        ta: bool,
        b: &CpuBuffer,
        b_shape: Shape,
        tb: bool,
    ) -> Result<CpuBuffer> {
        check_len("matmul lhs", a.len(), checked_len("matmul", a_shape)?)?;
        check_len("matmul rhs", b.len(), checked_len("matmul", b_shape)?)?;
        let par = self.parallel;
        Ok(match (a, b) {
            (CpuBuffer::F64(x), CpuBuffer::F64(y)) => {
                CpuBuffer::F64(matmul_k(par, x, a_shape, ta, y, b_shape, tb)?)
            }
            (CpuBuffer::F32(x), CpuBuffer::F32(y)) => {
                CpuBuffer::F32(matmul_k(par, x, a_shape, ta, y, b_shape, tb)?)
            }
            (CpuBuffer::F16(_), CpuBuffer::F16(_)) | (CpuBuffer::Bf16(_), CpuBuffer::Bf16(_)) => {
                // Both widened exactly, the f32 product rounded once (not `gemm`'s own
                // f16 path, which rounds partial sums to f16 between blocks).
                let (wa, wb) = widened_pair(a, b).expect("two 16-bit buffers of one type");
                narrowed(self.matmul(&wa, a_shape, ta, &wb, b_shape, tb)?, a.dtype())
            }
            (x, y) => {
                return Err(Error::DType {
                    op: "matmul",
                    lhs: x.dtype(),
                    rhs: y.dtype(),
                })
            }
        })
    }

    fn unary(&self, op: UnaryOp, x: &CpuBuffer) -> Result<CpuBuffer> {
        if let Some(w) = widened(x) {
            return Ok(narrowed(self.unary(op, &w)?, x.dtype()));
        }
        let par = self.parallel;
        Ok(dispatch1!(x, |v| unary_k(par, op, v)))
    }

    fn unary_many(&self, ops: &[UnaryOp], x: &CpuBuffer) -> Result<Vec<CpuBuffer>> {
        if let Some(w) = widened(x) {
            let ys = self.unary_many(ops, &w)?;
            return Ok(ys.into_iter().map(|y| narrowed(y, x.dtype())).collect());
        }
        let family = logcosh_family(ops).filter(|_| !(self.parallel && x.len() >= PAR_ELEMS));
        let Some(at) = family else {
            return ops.iter().map(|&op| self.unary(op, x)).collect();
        };
        fn k<E: Elem>(
            x: &[E],
            at: [Option<usize>; 3],
            n: usize,
            wrap: fn(Vec<E>) -> CpuBuffer,
        ) -> Vec<CpuBuffer> {
            let outs = logcosh_family_k(x, at.map(|a| a.is_some()));
            let mut slots: Vec<Option<CpuBuffer>> = (0..n).map(|_| None).collect();
            for (a, o) in at.into_iter().zip(outs) {
                if let (Some(j), Some(o)) = (a, o) {
                    slots[j] = Some(wrap(o));
                }
            }
            slots.into_iter().flatten().collect()
        }
        let n = ops.len();
        Ok(match x {
            CpuBuffer::F64(v) => k(v, at, n, CpuBuffer::F64),
            CpuBuffer::F32(v) => k(v, at, n, CpuBuffer::F32),
            CpuBuffer::Bf16(v) => k(v, at, n, CpuBuffer::Bf16),
            CpuBuffer::F16(v) => k(v, at, n, CpuBuffer::F16),
        })
    }

    fn affine(&self, x: &CpuBuffer, alpha: f64, beta: f64) -> Result<CpuBuffer> {
        if let Some(w) = widened(x) {
            return Ok(narrowed(self.affine(&w, alpha, beta)?, x.dtype()));
        }
        let par = self.parallel;
        Ok(dispatch1!(x, |v| affine_k(par, v, alpha, beta)))
    }

    fn binary(
        &self,
        op: BinaryOp,
        a: &CpuBuffer,
        a_shape: Shape,
        b: &CpuBuffer,
        broadcast: Broadcast,
    ) -> Result<CpuBuffer> {
        if let Some((wa, wb)) = widened_pair(a, b) {
            let c = self.binary(op, &wa, a_shape, &wb, broadcast)?;
            return Ok(narrowed(c, a.dtype()));
        }
        let len = checked_len(op.name(), a_shape)?;
        check_len("binary lhs", a.len(), len)?;
        check_len("binary rhs", b.len(), rhs_len(a_shape, broadcast))?;
        let par = self.parallel;
        Ok(dispatch2!(op.name(), a, b, |x, y| binary_k(
            par, op, x, a_shape, y, broadcast
        )))
    }

    fn add_assign(&self, dst: &mut CpuBuffer, src: &CpuBuffer) -> Result<()> {
        if let Some((mut wd, ws)) = widened_pair(dst, src) {
            self.add_assign(&mut wd, &ws)?;
            *dst = narrowed(wd, dst.dtype());
            return Ok(());
        }
        check_len("add_assign source", src.len(), dst.len())?;
        match (dst, src) {
            (CpuBuffer::F64(d), CpuBuffer::F64(s)) => add_assign_k(d, s),
            (CpuBuffer::F32(d), CpuBuffer::F32(s)) => add_assign_k(d, s),
            (CpuBuffer::Bf16(d), CpuBuffer::Bf16(s)) => add_assign_k(d, s),
            (CpuBuffer::F16(d), CpuBuffer::F16(s)) => add_assign_k(d, s),
            (d, s) => {
                return Err(Error::DType {
                    op: "add_assign",
                    lhs: d.dtype(),
                    rhs: s.dtype(),
                })
            }
        }
        Ok(())
    }

    fn unary_many_vjp(
        &self,
        ops: &[UnaryOp],
        x: &CpuBuffer,
        ys: &[&CpuBuffer],
        gs: &[Option<&CpuBuffer>],
    ) -> Result<Option<CpuBuffer>> {
        // The log cosh family with tanh and sech² at hand: σ' = tanh, tanh' = sech²,
        // (sech²)' = −2·tanh·sech², all from the values.
        let Some(at) = logcosh_family(ops) else {
            return Ok(None);
        };
        let (Some(ti), Some(qi)) = (at[1], at[2]) else {
            return Ok(None);
        };
        if let Some(wx) = widened(x) {
            let same = |b: &CpuBuffer| b.dtype() == x.dtype();
            if ys.iter().all(|b| same(b)) && gs.iter().flatten().all(|b| same(b)) {
                let wide = |b: &CpuBuffer| widened(b).unwrap_or_else(|| b.clone());
                let wys: Vec<CpuBuffer> = ys.iter().map(|b| wide(b)).collect();
                let wgs: Vec<Option<CpuBuffer>> = gs.iter().map(|b| b.map(wide)).collect();
                let yr: Vec<&CpuBuffer> = wys.iter().collect();
                let gr: Vec<Option<&CpuBuffer>> = wgs.iter().map(Option::as_ref).collect();
                let d = self.unary_many_vjp(ops, &wx, &yr, &gr)?;
                return Ok(d.map(|d| narrowed(d, x.dtype())));
            }
        }
        if ys.len() != ops.len() || gs.len() != ops.len() {
            return Err(Error::InvalidArgument(format!(
                "unary_many_vjp: {} maps, {} values, {} gradients",
                ops.len(),
                ys.len(),
                gs.len()
            )));
        }
        for b in ys.iter().copied().chain(gs.iter().flatten().copied()) {
            check_len("unary_many_vjp operand", b.len(), x.len())?;
            if b.dtype() != x.dtype() {
                return Err(Error::DType {
                    op: "unary_many_vjp",
                    lhs: x.dtype(),
                    rhs: b.dtype(),
                });
            }
        }
        let g_of = |slot: Option<usize>| slot.and_then(|j| gs[j]);
        let (g_lc, g_t, g_q) = (g_of(at[0]), g_of(at[1]), g_of(at[2]));
        macro_rules! go {
            ($variant:ident, $as:ident) => {{
                let (t, q) = (ys[ti].$as(), ys[qi].$as());
                let (Some(t), Some(q)) = (t, q) else {
                    return Ok(None);
                };
                CpuBuffer::$variant(logcosh_family_vjp_k(
                    t,
                    q,
                    g_lc.and_then(|b| b.$as()),
                    g_t.and_then(|b| b.$as()),
                    g_q.and_then(|b| b.$as()),
                ))
            }};
        }
        Ok(Some(match x {
            CpuBuffer::F64(_) => go!(F64, as_f64),
            CpuBuffer::F32(_) => go!(F32, as_f32),
            CpuBuffer::Bf16(_) => go!(Bf16, as_bf16),
            CpuBuffer::F16(_) => go!(F16, as_f16),
        }))
    }

    fn add_scaled(
        &self,
        a: &CpuBuffer,
        a_shape: Shape,
        b: &CpuBuffer,
        broadcast: Broadcast,
        alpha: f64,
    ) -> Result<CpuBuffer> {
        if let Some((wa, wb)) = widened_pair(a, b) {
            let c = self.add_scaled(&wa, a_shape, &wb, broadcast, alpha)?;
            return Ok(narrowed(c, a.dtype()));
        }
        let len = checked_len("add_scaled", a_shape)?;
        check_len("add_scaled lhs", a.len(), len)?;
        check_len("add_scaled rhs", b.len(), rhs_len(a_shape, broadcast))?;
        let par = self.parallel;
        fn k<E: Elem>(par: bool, a: &[E], s: Shape, b: &[E], bc: Broadcast, al: f64) -> Vec<E> {
            let al = E::Acc::of(al);
            zip_k(par, a, s, b, bc, move |x, y| x + al * y)
        }
        Ok(dispatch2!("add_scaled", a, b, |x, y| k(
            par, x, a_shape, y, broadcast, alpha
        )))
    }

    fn mul_add(
        &self,
        a: &CpuBuffer,
        b: &CpuBuffer,
        shape: Shape,
        c: &CpuBuffer,
        broadcast: Broadcast,
        alpha: f64,
    ) -> Result<CpuBuffer> {
        if let (Some((wa, wb)), true) = (widened_pair(a, b), c.dtype() == a.dtype()) {
            let wc = widened(c).unwrap_or_else(|| c.clone());
            let d = self.mul_add(&wa, &wb, shape, &wc, broadcast, alpha)?;
            return Ok(narrowed(d, a.dtype()));
        }
        let len = checked_len("mul_add", shape)?;
        check_len("mul_add a", a.len(), len)?;
        check_len("mul_add b", b.len(), len)?;
        check_len("mul_add c", c.len(), rhs_len(shape, broadcast))?;
        let dtype_err = |x: &CpuBuffer, y: &CpuBuffer| Error::DType {
            op: "mul_add",
            lhs: x.dtype(),
            rhs: y.dtype(),
        };
        Ok(match (a, b, c) {
            (CpuBuffer::F64(a), CpuBuffer::F64(b), CpuBuffer::F64(c)) => {
                CpuBuffer::F64(mul_add_k(a, b, shape, c, broadcast, alpha))
            }
            (CpuBuffer::F32(a), CpuBuffer::F32(b), CpuBuffer::F32(c)) => {
                CpuBuffer::F32(mul_add_k(a, b, shape, c, broadcast, alpha))
            }
            (CpuBuffer::Bf16(a), CpuBuffer::Bf16(b), CpuBuffer::Bf16(c)) => {
                CpuBuffer::Bf16(mul_add_k(a, b, shape, c, broadcast, alpha))
            }
            (CpuBuffer::F16(a), CpuBuffer::F16(b), CpuBuffer::F16(c)) => {
                CpuBuffer::F16(mul_add_k(a, b, shape, c, broadcast, alpha))
            }
            (x, y, z) => {
                return Err(if x.dtype() != y.dtype() {
                    dtype_err(x, y)
                } else {
                    dtype_err(x, z)
                })
            }
        })
    }

    fn axpy(&self, dst: &mut CpuBuffer, alpha: f64, src: &CpuBuffer) -> Result<()> {
        check_len("axpy source", src.len(), dst.len())?;
        if let Some(ws) = widened(src) {
            return self.axpy(dst, alpha, &ws);
        }
        if let Some(mut wd) = widened(dst) {
            self.axpy(&mut wd, alpha, src)?;
            *dst = narrowed(wd, dst.dtype());
            return Ok(());
        }
        fn mixed<D: Elem>(d: &mut [D], alpha: f64, src: &CpuBuffer) {
            match src {
                CpuBuffer::F64(s) => axpy_mixed_k(d, alpha, s),
                CpuBuffer::F32(s) => axpy_mixed_k(d, alpha, s),
                CpuBuffer::Bf16(s) => axpy_mixed_k(d, alpha, s),
                CpuBuffer::F16(s) => axpy_mixed_k(d, alpha, s),
            }
        }
        match (dst, src) {
            (CpuBuffer::F64(d), CpuBuffer::F64(s)) => axpy_k(d, alpha, s),
            (CpuBuffer::F32(d), CpuBuffer::F32(s)) => axpy_k(d, alpha, s),
            (CpuBuffer::Bf16(d), CpuBuffer::Bf16(s)) => axpy_k(d, alpha, s),
            (CpuBuffer::F16(d), CpuBuffer::F16(s)) => axpy_k(d, alpha, s),
            (CpuBuffer::F64(d), s) => mixed(d, alpha, s),
            (CpuBuffer::F32(d), s) => mixed(d, alpha, s),
            (CpuBuffer::Bf16(d), s) => mixed(d, alpha, s),
            (CpuBuffer::F16(d), s) => mixed(d, alpha, s),
        }
        Ok(())
    }

    fn matmul_acc(
        &self,
        dst: &mut CpuBuffer,
        a: &CpuBuffer,
        a_shape: Shape,
        ta: bool,
        b: &CpuBuffer,
        b_shape: Shape,
        tb: bool,
        beta: f64,
    ) -> Result<()> {
        check_len(
            "matmul_acc lhs",
            a.len(),
            checked_len("matmul_acc", a_shape)?,
        )?;
        check_len(
            "matmul_acc rhs",
            b.len(),
            checked_len("matmul_acc", b_shape)?,
        )?;
        let par = self.parallel;
        match (dst, a, b) {
            (CpuBuffer::F64(d), CpuBuffer::F64(x), CpuBuffer::F64(y)) => {
                matmul_acc_k(par, d, x, a_shape, ta, y, b_shape, tb, beta)
            }
            (CpuBuffer::F32(d), CpuBuffer::F32(x), CpuBuffer::F32(y)) => {
                matmul_acc_k(par, d, x, a_shape, ta, y, b_shape, tb, beta)
            }
            (d @ CpuBuffer::Bf16(_), CpuBuffer::Bf16(_), CpuBuffer::Bf16(_))
            | (d @ CpuBuffer::F16(_), CpuBuffer::F16(_), CpuBuffer::F16(_)) => {
                // Everything widened exactly, the updated f32 destination rounded once.
                let (wa, wb) = widened_pair(a, b).expect("two 16-bit buffers of one type");
                let mut wd = widened(d).expect("a 16-bit buffer");
                self.matmul_acc(&mut wd, &wa, a_shape, ta, &wb, b_shape, tb, beta)?;
                *d = narrowed(wd, d.dtype());
                Ok(())
            }
            (d, x, y) => Err(Error::DType {
                op: "matmul_acc",
                lhs: d.dtype(),
                rhs: if d.dtype() != x.dtype() {
                    x.dtype()
                } else {
                    y.dtype()
                },
            }),
        }
    }

    fn reduce(
        &self,
        x: &CpuBuffer,
        shape: Shape,
        axis: Reduction,
        alpha: f64,
    ) -> Result<CpuBuffer> {
        if let Some(w) = widened(x) {
            return Ok(narrowed(self.reduce(&w, shape, axis, alpha)?, x.dtype()));
        }
        check_len("reduce input", x.len(), checked_len("reduce", shape)?)?;
        Ok(dispatch1!(x, |v| reduce_k(v, shape, axis, alpha)))
    }

    fn broadcast(&self, x: &CpuBuffer, from: Shape, to: Shape, alpha: f64) -> Result<CpuBuffer> {
        let fits =
            (from.rows == 1 || from.rows == to.rows) && (from.cols == 1 || from.cols == to.cols);
        if !fits {
            return Err(Error::Shape {
                op: "broadcast",
                lhs: from,
                rhs: to,
            });
        }
        check_len("broadcast input", x.len(), checked_len("broadcast", from)?)?;
        checked_len("broadcast", to)?;
        Ok(dispatch1!(x, |v| broadcast_k(v, from, to, alpha)))
    }

    fn slice_cols(&self, x: &CpuBuffer, shape: Shape, c0: usize, c1: usize) -> Result<CpuBuffer> {
        check_len(
            "slice_cols input",
            x.len(),
            checked_len("slice_cols", shape)?,
        )?;
        if c0 > c1 || c1 > shape.cols {
            return Err(Error::InvalidShape {
                op: "slice_cols",
                shape,
                message: format!("column range {c0}..{c1}"),
            });
        }
        Ok(dispatch1!(x, |v| slice_cols_k(v, shape, c0, c1)))
    }

    fn embed_cols(
        &self,
        x: &CpuBuffer,
        shape: Shape,
        c0: usize,
        total: usize,
    ) -> Result<CpuBuffer> {
        check_len(
            "embed_cols input",
            x.len(),
            checked_len("embed_cols", shape)?,
        )?;
        if c0.checked_add(shape.cols).is_none_or(|end| end > total) {
            return Err(Error::InvalidShape {
                op: "embed_cols",
                shape,
                message: format!("columns from {c0} exceed {total}"),
            });
        }
        checked_len("embed_cols", Shape::new(shape.rows, total))?;
        Ok(dispatch1!(x, |v| embed_cols_k(v, shape, c0, total)))
    }

    fn concat_cols(&self, parts: &[(&CpuBuffer, Shape)]) -> Result<CpuBuffer> {
        let Some(&(first, s0)) = parts.first() else {
            return Err(Error::InvalidArgument("concat_cols of no parts".into()));
        };
        let mut total = 0usize;
        for &(buf, s) in parts {
            check_len(
                "concat_cols part",
                buf.len(),
                checked_len("concat_cols", s)?,
            )?;
            if s.rows != s0.rows {
                return Err(Error::Shape {
                    op: "concat_cols",
                    lhs: s0,
                    rhs: s,
                });
            }
            if buf.dtype() != first.dtype() {
                return Err(Error::DType {
                    op: "concat_cols",
                    lhs: first.dtype(),
                    rhs: buf.dtype(),
                });
            }
            total = total.checked_add(s.cols).ok_or_else(|| {
                Error::InvalidArgument("concat_cols: column count overflows".into())
            })?;
        }
        let out_shape = Shape::new(s0.rows, total);
        checked_len("concat_cols", out_shape)?;
        let mut out = self.full(out_shape.len(), 0.0, first.dtype())?;
        let mut c0 = 0;
        for &(buf, s) in parts {
            match (&mut out, buf) {
                (CpuBuffer::F64(o), CpuBuffer::F64(p)) => place(o, p, s, c0, total),
                (CpuBuffer::F32(o), CpuBuffer::F32(p)) => place(o, p, s, c0, total),
                (CpuBuffer::Bf16(o), CpuBuffer::Bf16(p)) => place(o, p, s, c0, total),
                (CpuBuffer::F16(o), CpuBuffer::F16(p)) => place(o, p, s, c0, total),
                _ => unreachable!("dtypes checked above"),
            }
            c0 += s.cols;
        }
        Ok(out)
    }

    fn repeat_rows(&self, x: &CpuBuffer, shape: Shape, k: usize) -> Result<CpuBuffer> {
        check_len(
            "repeat_rows input",
            x.len(),
            checked_len("repeat_rows", shape)?,
        )?;
        grown("repeat_rows", shape, k)?;
        Ok(dispatch1!(x, |v| repeat_rows_k(v, shape, k)))
    }

    fn sum_row_groups(&self, x: &CpuBuffer, shape: Shape, k: usize) -> Result<CpuBuffer> {
        check_len(
            "sum_row_groups input",
            x.len(),
            checked_len("sum_row_groups", shape)?,
        )?;
        if k == 0 || shape.rows % k != 0 {
            return Err(Error::InvalidShape {
                op: "sum_row_groups",
                shape,
                message: format!("row count is not a multiple of the group size {k}"),
            });
        }
        Ok(dispatch1!(x, |v| sum_row_groups_k(v, shape, k)))
    }

    fn tile_rows(&self, x: &CpuBuffer, shape: Shape, times: usize) -> Result<CpuBuffer> {
        check_len("tile_rows input", x.len(), checked_len("tile_rows", shape)?)?;
        grown("tile_rows", shape, times)?;
        Ok(dispatch1!(x, |v| tile_rows_k(v, times)))
    }

    fn sum_tiles(&self, x: &CpuBuffer, shape: Shape, times: usize) -> Result<CpuBuffer> {
        check_len("sum_tiles input", x.len(), checked_len("sum_tiles", shape)?)?;
        if times == 0 || shape.rows % times != 0 {
            return Err(Error::InvalidShape {
                op: "sum_tiles",
                shape,
                message: format!("row count is not a multiple of the tile count {times}"),
            });
        }
        Ok(dispatch1!(x, |v| sum_tiles_k(v, times)))
    }

    fn max_abs(&self, x: &CpuBuffer) -> Result<f64> {
        fn k<E: Elem>(v: &[E]) -> f64 {
            let mut m = 0.0f64;
            for &e in v {
                let a = e.to_f64().abs();
                if a.is_nan() {
                    return f64::NAN;
                }
                m = m.max(a);
            }
            m
        }
        Ok(match x {
            CpuBuffer::F64(v) => k(v),
            CpuBuffer::F32(v) => k(v),
            CpuBuffer::Bf16(v) => k(v),
            CpuBuffer::F16(v) => k(v),
        })
    }

    fn all_finite(&self, x: &CpuBuffer) -> Result<bool> {
        Ok(match x {
            CpuBuffer::F64(v) => v.iter().all(|e| e.is_finite()),
            CpuBuffer::F32(v) => v.iter().all(|e| e.is_finite()),
            CpuBuffer::Bf16(v) => v.iter().all(|e| e.is_finite()),
            CpuBuffer::F16(v) => v.iter().all(|e| e.is_finite()),
        })
    }
}

/// The shape of `times` copies of `shape` stacked by rows, if its size fits.
pub(super) fn grown(op: &'static str, shape: Shape, times: usize) -> Result<Shape> {
    shape
        .rows
        .checked_mul(times)
        .map(|rows| Shape::new(rows, shape.cols))
        .filter(|s| s.checked_len().is_some())
        .ok_or_else(|| Error::InvalidShape {
            op,
            shape,
            message: format!("{times} copies overflow"),
        })
}

/// Copies part `p` (shape `s`) into columns `[c0, c0 + s.cols)` of `o` (`total` wide).
fn place<E: Copy>(o: &mut [E], p: &[E], s: Shape, c0: usize, total: usize) {
    if s.cols == 0 {
        return;
    }
    for (dst, src) in o.chunks_mut(total).zip(p.chunks(s.cols)) {
        dst[c0..c0 + s.cols].copy_from_slice(src);
    }
}
