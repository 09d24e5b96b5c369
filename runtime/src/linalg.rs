//! Small dense kernels for the networks, fast on one core.
//!
//! - matrix-vector products in the "axpy" form that vectorizes: `y += Σ_j x_j · row_j`
//!   over the rows of a row-major matrix, with a tile of `y` held in registers
//!   ([`matvec_t`], and [`matvec`] over a transposed copy);
//! - a register-tiled small matrix product for the exact-trace sweeps ([`matmul`]);
//! - a wrapper over the `gemm` crate for block evaluation, single-threaded (callers
//!   parallelize over row blocks): [`gemm_xwt`] (C = X·Wᵀ + bias) and [`gemm_xb`]
//!   (C += X·B);
//! - the activations' elementwise math (exp, log(2 cosh), tanh, sigmoid, SiLU,
//!   softplus) in branch-free form, so that loops over them vectorize.
//!
//! SIMD comes from run-time dispatch: the `simd_fn!` macro compiles a function once per
//! target (x86_64 AVX-512, x86_64 AVX2 + FMA, aarch64 Neon, and a portable fallback)
//! with [`multiversion`], and picks the best one the CPU supports on first call. The
//! kernels here are generic over [`Real`] and `#[inline(always)]`, so that they are
//! compiled inside each target's clone of the caller; a `const FMA: bool` parameter
//! selects fused multiply-adds where the target has them (a libm `fma` call on a CPU
//! without them would be slow).
//!
//! Results are deterministic for a given CPU (the same dispatch target), and every
//! kernel sums in a fixed order that does not depend on the values.

use crate::error::{check_len, Error, Result};
use crate::Real;

/// Padding granule (in elements) of the weight layouts: rows of stored matrices and
/// the vectors they multiply are padded with zeros to a multiple of this, so kernels
/// run on whole 32-lane chunks (two AVX-512 vectors of f32, four of f64).
pub const PAD: usize = 32;

/// Rounds `n` up to a multiple of [`PAD`].
#[inline]
pub fn padded(n: usize) -> usize {
    n.div_ceil(PAD) * PAD
}

/// Declares a function compiled for several SIMD targets with run-time dispatch.
///
/// Inside, `fma!()` is a constant `bool`: whether the selected target has fused
/// multiply-adds (pass it to the kernels' `FMA` parameter).
macro_rules! simd_fn {
    ($(#[$attr:meta])* $vis:vis fn $($rest:tt)*) => {
        $(#[$attr])*
        #[multiversion::multiversion(targets(
            "x86_64+avx512f+avx512vl+avx512dq+avx512bw+avx2+fma",
            "x86_64+avx2+fma",
            "aarch64+neon"
        ))]
        $vis fn $($rest)*
    };
}
pub(crate) use simd_fn;

/// Inside a [`simd_fn!`] function: whether the selected target has 32 vector registers
/// of 512 bits (AVX-512).
macro_rules! wide {
    () => {
        multiversion::target::target_cfg_f!(target_feature = "avx512f")
    };
}
pub(crate) use wide;

/// Inside a [`simd_fn!`] function: whether the selected target has fused multiply-adds.
macro_rules! fma {
    () => {
        multiversion::target::target_cfg_f!(any(target_feature = "fma", target_arch = "aarch64"))
    };
}
pub(crate) use fma;

/// `a·b + c`, fused when `FMA` (the target has the instruction).
#[inline(always)]
pub fn madd<T: Real, const FMA: bool>(a: T, b: T, c: T) -> T {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// Dot product of two slices over the whole 32-element chunks of the shorter one
/// (callers pad their vectors with zeros to a multiple of [`PAD`]; a tail is ignored),
/// summed in a fixed order: 32 lane-parallel partial sums, then the lanes in sequence.
///
/// The shape is chosen for the vectorizer (checked in the generated code: two zmm
/// accumulators for f32 and four for f64 with AVX-512, four ymm with AVX2): one row per
/// call (several rows in one loop body get packed across rows), a sequential final sum
/// (a pairwise tree over the lanes gets packed into 2-wide vectors), and no tail loop of
/// any kind (a 16-wide or scalar tail gets the whole function scalarized or packed
/// 2-wide).
#[inline(always)]
pub(crate) fn dot<T: Real, const FMA: bool>(a: &[T], b: &[T]) -> T {
    debug_assert!(a.len().min(b.len()) % PAD == 0, "dot: unpadded length");
    let mut acc = [T::zero(); 32];
    for (x, y) in a.chunks_exact(32).zip(b.chunks_exact(32)) {
        for l in 0..32 {
            acc[l] = madd::<T, FMA>(x[l], y[l], acc[l]);
        }
    }
    acc.iter().fold(T::zero(), |s, &v| s + v)
}

/// Whether a row-major `rows × cols` matrix with row stride `ld` fits in `len` elements.
#[inline(always)]
pub(crate) fn fits(len: usize, rows: usize, ld: usize, cols: usize) -> bool {
    rows == 0
        || cols == 0
        || (rows - 1)
            .checked_mul(ld)
            .and_then(|v| v.checked_add(cols))
            .is_some_and(|v| v <= len)
}

/// One register tile of [`axpy_rows`]: `y[0..W] += Σ_j x_j · a[j·lda + off ..][..W]`.
/// With `TWO`, even and odd rows go to two separate sums (added at the end), so that
/// twice as many FMA chains are in flight (narrow tiles are latency-bound otherwise).
/// The caller has checked the extent of `a`.
#[inline(always)]
fn axpy_tile<T: Real, const FMA: bool, const W: usize, const TWO: bool>(
    a: &[T],
    lda: usize,
    off: usize,
    x: &[T],
    y: &mut [T; W],
) {
    let mut acc = *y;
    let mut acc2 = [T::zero(); W];
    let mut j = 0;
    if TWO {
        let mut xc = x.chunks_exact(2);
        for xs in &mut xc {
            let r0 = &a[j * lda + off..j * lda + off + W];
            let r1 = &a[(j + 1) * lda + off..(j + 1) * lda + off + W];
            for l in 0..W {
                acc[l] = madd::<T, FMA>(xs[0], r0[l], acc[l]);
            }
            for l in 0..W {
                acc2[l] = madd::<T, FMA>(xs[1], r1[l], acc2[l]);
            }
            j += 2;
        }
    }
    for &xj in &x[j..] {
        let row = &a[j * lda + off..j * lda + off + W];
        for l in 0..W {
            acc[l] = madd::<T, FMA>(xj, row[l], acc[l]);
        }
        j += 1;
    }
    if TWO {
        for l in 0..W {
            acc[l] += acc2[l];
        }
    }
    *y = acc;
}

/// Tiles `y` for [`axpy_rows`], with `budget` (a constant after inlining: 128, 64 or
/// 32) accumulator elements in registers. Returns the length covered.
#[inline(always)]
fn axpy_tiles<T: Real, const FMA: bool>(
    budget: usize,
    a: &[T],
    lda: usize,
    x: &[T],
    y: &mut [T],
) -> usize {
    let n = y.len();
    let mut off = 0;
    macro_rules! tile {
        ($w:literal, $two:literal) => {
            if let Some(t) = y[off..].first_chunk_mut::<$w>() {
                axpy_tile::<T, FMA, $w, $two>(a, lda, off, x, t);
            }
            off += $w;
        };
    }
    match budget {
        128 => {
            while n - off >= 128 {
                tile!(128, false);
            }
            if n - off >= 64 {
                tile!(64, true);
            }
        }
        64 => {
            while n - off >= 64 {
                tile!(64, false);
            }
        }
        _ => {}
    }
    while n - off >= 32 {
        tile!(32, true);
    }
    if n - off >= 16 {
        tile!(16, true);
    }
    off
}

/// `y += Σ_j x_j · A[j, 0..y.len()]` for a row-major `A` with row stride `lda`
/// (`A` has `x.len()` rows). This is `y += Aᵀx`, the product that vectorizes: `y` is
/// held in registers a tile at a time while the rows of `A` stream past. `WIDE`: the
/// target has 32 vector registers of 512 bits (AVX-512), so tiles may be twice as wide.
/// Does nothing if `a` is too short (an internal caller's bug; debug builds assert).
#[inline(always)]
pub(crate) fn axpy_rows<T: Real, const FMA: bool, const WIDE: bool>(
    a: &[T],
    lda: usize,
    x: &[T],
    y: &mut [T],
) {
    if !fits(a.len(), x.len(), lda, y.len()) {
        debug_assert!(false, "axpy_rows: matrix too short");
        return;
    }
    // Eight vectors of accumulators: 8 × 64 bytes with AVX-512, 8 × 32 bytes otherwise.
    let off = match (WIDE, single::<T>()) {
        (true, true) => axpy_tiles::<T, FMA>(128, a, lda, x, y),
        (true, false) | (false, true) => axpy_tiles::<T, FMA>(64, a, lda, x, y),
        (false, false) => axpy_tiles::<T, FMA>(32, a, lda, x, y),
    };
    // Scalar tail (only for unpadded callers).
    for (c, yc) in y.iter_mut().enumerate().skip(off) {
        let mut acc = *yc;
        for (j, &xj) in x.iter().enumerate() {
            acc = madd::<T, FMA>(xj, a[j * lda + c], acc);
        }
        *yc = acc;
    }
}

/// `y[i] += A[i, :] · x` for the `y.len()` rows of a row-major `A` (row stride `lda`,
/// rows of `x.len()` elements, a multiple of [`PAD`]): the dot form, one row at a time (see
/// [`dot`]). Always accumulates: a flag choosing between `y + d` and `d` made the
/// vectorizer pack the dot products into 2-wide vectors. Does nothing if `a` is too
/// short (debug builds assert).
#[inline(always)]
pub(crate) fn dot_rows<T: Real, const FMA: bool>(a: &[T], lda: usize, x: &[T], y: &mut [T]) {
    let n = x.len();
    if !fits(a.len(), y.len(), lda, n) {
        debug_assert!(false, "dot_rows: matrix too short");
        return;
    }
    // Rows are sliced with checked indexing on purpose: with `get(..).unwrap_or(&[])`
    // (a possibly empty row) the vectorizer also packs into 2-wide vectors.
    for (i, yv) in y.iter_mut().enumerate() {
        *yv += dot::<T, FMA>(&a[i * lda..i * lda + n], x);
    }
}

/// One tile of [`matmul_acc`]: rows `i0..i0+R`, columns `c0..c0+W` (extents checked by
/// the caller).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn matmul_tile<T: Real, const FMA: bool, const R: usize, const W: usize>(
    k: usize,
    a: &[T],
    lda: usize,
    b: &[T],
    ldb: usize,
    c: &mut [T],
    ldc: usize,
    i0: usize,
    c0: usize,
) {
    let mut acc = [[T::zero(); W]; R];
    for (r, accr) in acc.iter_mut().enumerate() {
        let o = (i0 + r) * ldc + c0;
        accr.copy_from_slice(&c[o..o + W]);
    }
    for p in 0..k {
        let brow = &b[p * ldb + c0..p * ldb + c0 + W];
        for r in 0..R {
            let apr = a[(i0 + r) * lda + p];
            for l in 0..W {
                acc[r][l] = madd::<T, FMA>(apr, brow[l], acc[r][l]);
            }
        }
    }
    for (r, accr) in acc.iter().enumerate() {
        let o = (i0 + r) * ldc + c0;
        c[o..o + W].copy_from_slice(accr);
    }
}

/// Rows `i0..i0+R` of [`matmul_acc`], all column tiles.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn matmul_rows<T: Real, const FMA: bool, const R: usize>(
    k: usize,
    n: usize,
    a: &[T],
    lda: usize,
    b: &[T],
    ldb: usize,
    c: &mut [T],
    ldc: usize,
    i0: usize,
) {
    let mut c0 = 0;
    while n - c0 >= 32 {
        matmul_tile::<T, FMA, R, 32>(k, a, lda, b, ldb, c, ldc, i0, c0);
        c0 += 32;
    }
    if n - c0 >= 16 {
        matmul_tile::<T, FMA, R, 16>(k, a, lda, b, ldb, c, ldc, i0, c0);
        c0 += 16;
    }
    for r in 0..R {
        for col in c0..n {
            let mut acc = c[(i0 + r) * ldc + col];
            for p in 0..k {
                acc = madd::<T, FMA>(a[(i0 + r) * lda + p], b[p * ldb + col], acc);
            }
            c[(i0 + r) * ldc + col] = acc;
        }
    }
}

/// `C[0..m, 0..n] += A[0..m, 0..k] · B[0..k, 0..n]`, all row-major with the given row
/// strides; register tiles of 4 rows × 32 columns. Does nothing if a slice is too short
/// (debug builds assert).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_acc<T: Real, const FMA: bool>(
    m: usize,
    k: usize,
    n: usize,
    a: &[T],
    lda: usize,
    b: &[T],
    ldb: usize,
    c: &mut [T],
    ldc: usize,
) {
    if !(fits(a.len(), m, lda, k) && fits(b.len(), k, ldb, n) && fits(c.len(), m, ldc, n)) {
        debug_assert!(false, "matmul_acc: matrix too short");
        return;
    }
    let mut i0 = 0;
    while m - i0 >= 4 {
        matmul_rows::<T, FMA, 4>(k, n, a, lda, b, ldb, c, ldc, i0);
        i0 += 4;
    }
    while i0 < m {
        matmul_rows::<T, FMA, 1>(k, n, a, lda, b, ldb, c, ldc, i0);
        i0 += 1;
    }
}

// ---------------------------------------------------------------------------------------
// Dispatched kernels. Each is its own multiversioned function (a call costs a cached
// feature check and a direct call, a few ns), so that the vectorizer sees the kernel
// alone: inlined into a large caller, the same loops have been packed across rows or
// into 2-wide vectors (checked in the generated code).
// ---------------------------------------------------------------------------------------

simd_fn! {
    /// `y += Σ_j x_j · A[j, 0..y.len()]` ([`axpy_rows`]).
    pub(crate) fn k_axpy<T: Real>(a: &[T], lda: usize, x: &[T], y: &mut [T]) {
        axpy_rows::<T, { fma!() }, { wide!() }>(a, lda, x, y);
    }
}

simd_fn! {
    /// `y[i] += A[i, :] · x` ([`dot_rows`]).
    pub(crate) fn k_dot_rows<T: Real>(a: &[T], lda: usize, x: &[T], y: &mut [T]) {
        dot_rows::<T, { fma!() }>(a, lda, x, y);
    }
}

simd_fn! {
    /// `a · b` ([`dot`]).
    pub(crate) fn k_dot<T: Real>(a: &[T], b: &[T]) -> T {
        dot::<T, { fma!() }>(a, b)
    }
}

simd_fn! {
    /// `C += A·B` ([`matmul_acc`]).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn k_matmul_acc<T: Real>(
        m: usize,
        k: usize,
        n: usize,
        a: &[T],
        lda: usize,
        b: &[T],
        ldb: usize,
        c: &mut [T],
        ldc: usize,
    ) {
        matmul_acc::<T, { fma!() }>(m, k, n, a, lda, b, ldb, c, ldc);
    }
}

simd_fn! {
    /// OT-Flow activation of one ResNet layer: `th ← tanh(a)` and `u ← σ(a)` (`first`)
    /// or `u ← u + η σ(a)`, with σ(a) = log(2 cosh a).
    pub(crate) fn k_resnet_act<T: Real>(first: bool, eta: T, a: &[T], u: &mut [T], th: &mut [T]) {
        const F: bool = fma!();
        if first {
            for ((uv, tv), &av) in u.iter_mut().zip(th.iter_mut()).zip(a) {
                let (sg, t) = logcosh_tanh::<T, F>(av);
                *uv = sg;
                *tv = t;
            }
        } else {
            for ((uv, tv), &av) in u.iter_mut().zip(th.iter_mut()).zip(a) {
                let (sg, t) = logcosh_tanh::<T, F>(av);
                *uv = madd::<T, F>(eta, sg, *uv);
                *tv = t;
            }
        }
    }
}

simd_fn! {
    /// `out[h] = Σ_{k<n} A[h, k]²` for the `out.len()` rows of `A` (row stride `lda`).
    pub(crate) fn k_row_sqnorms<T: Real>(a: &[T], lda: usize, n: usize, out: &mut [T]) {
        if !fits(a.len(), out.len(), lda, n) {
            debug_assert!(false, "k_row_sqnorms: matrix too short");
            return;
        }
        for (h, o) in out.iter_mut().enumerate() {
            let row = &a[h * lda..h * lda + n];
            *o = dot::<T, { fma!() }>(row, row);
        }
    }
}

simd_fn! {
    /// `dst[h, :n] (+)= c_h · src[h, :n]` for the `c.len()` rows (strides `lds`, `ldd`).
    pub(crate) fn k_scale_rows<T: Real>(
        c: &[T],
        src: &[T],
        lds: usize,
        dst: &mut [T],
        ldd: usize,
        n: usize,
        acc: bool,
    ) {
        const F: bool = fma!();
        if !(fits(src.len(), c.len(), lds, n) && fits(dst.len(), c.len(), ldd, n)) {
            debug_assert!(false, "k_scale_rows: matrix too short");
            return;
        }
        for (h, &ch) in c.iter().enumerate() {
            let s = &src[h * lds..h * lds + n];
            let d = &mut dst[h * ldd..h * ldd + n];
            if acc {
                for (dv, &sv) in d.iter_mut().zip(s) {
                    *dv = madd::<T, F>(ch, sv, *dv);
                }
            } else {
                for (dv, &sv) in d.iter_mut().zip(s) {
                    *dv = ch * sv;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Public, checked entry points.
// ---------------------------------------------------------------------------------------

fn check_matrix(what: &'static str, len: usize, rows: usize, cols: usize, ld: usize) -> Result<()> {
    if cols > ld {
        return Err(Error::InvalidArgument(format!(
            "{what}: row stride {ld} is smaller than the row length {cols}"
        )));
    }
    let need = if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1)
            .checked_mul(ld)
            .and_then(|v| v.checked_add(cols))
            .ok_or_else(|| Error::Limit(format!("{what}: {rows} × {ld} overflows")))?
    };
    if len < need {
        return Err(Error::Length {
            what,
            found: len,
            expected: need,
        });
    }
    Ok(())
}

simd_fn! {
    fn matvec_t_impl<T: Real>(a: &[T], n: usize, x: &[T], y: &mut [T]) {
        y.fill(T::zero());
        axpy_rows::<T, { fma!() }, { wide!() }>(a, n, x, y);
    }
}

simd_fn! {
    fn matvec_impl<T: Real>(a: &[T], n: usize, x: &[T], y: &mut [T]) {
        let np = n / PAD * PAD;
        for (i, yi) in y.iter_mut().enumerate() {
            *yi = dot::<T, { fma!() }>(&a[i * n..i * n + np], &x[..np]);
        }
        // The unpadded tail, in a separate pass (see `dot`).
        for (i, yi) in y.iter_mut().enumerate() {
            for (&av, &xv) in a[i * n + np..i * n + n].iter().zip(&x[np..]) {
                *yi = madd::<T, { fma!() }>(av, xv, *yi);
            }
        }
    }
}

simd_fn! {
    #[allow(clippy::too_many_arguments)]
    fn matmul_impl<T: Real>(m: usize, k: usize, n: usize, a: &[T], b: &[T], c: &mut [T]) {
        c.fill(T::zero());
        matmul_acc::<T, { fma!() }>(m, k, n, a, k, b, n, c, n);
    }
}

/// `y = A x` for a row-major `m × n` matrix `A` (dot products of the rows with `x`).
///
/// For repeated products with one matrix, storing `Aᵀ` and calling [`matvec_t`] on it
/// is faster (the axpy form keeps `y` in registers).
pub fn matvec<T: Real>(a: &[T], m: usize, n: usize, x: &[T], y: &mut [T]) -> Result<()> {
    check_len("matrix", a.len(), m * n)?;
    check_len("vector x", x.len(), n)?;
    check_len("vector y", y.len(), m)?;
    matvec_impl(a, n, x, y);
    Ok(())
}

/// `y = Aᵀ x` for a row-major `m × n` matrix `A` (`x` has `m` entries, `y` has `n`),
/// in the axpy form `y = Σ_j x_j A[j, :]`.
pub fn matvec_t<T: Real>(a: &[T], m: usize, n: usize, x: &[T], y: &mut [T]) -> Result<()> {
    check_len("matrix", a.len(), m * n)?;
    check_len("vector x", x.len(), m)?;
    check_len("vector y", y.len(), n)?;
    matvec_t_impl(a, n, x, y);
    Ok(())
}

/// `C = A B` for row-major `A` (`m × k`), `B` (`k × n`) and `C` (`m × n`), with a
/// register-tiled kernel (for the small products of single-state evaluation; use
/// [`gemm_xb`] for large blocks).
pub fn matmul<T: Real>(m: usize, k: usize, n: usize, a: &[T], b: &[T], c: &mut [T]) -> Result<()> {
    check_len("matrix A", a.len(), m * k)?;
    check_len("matrix B", b.len(), k * n)?;
    check_len("matrix C", c.len(), m * n)?;
    matmul_impl(m, k, n, a, b, c);
    Ok(())
}

/// A row-major matrix view for the GEMM wrappers: `rows × cols` values, row `i` at
/// `data[i·ld ..]`.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a, T> {
    /// The elements.
    pub data: &'a [T],
    /// Number of rows.
    pub rows: usize,
    /// Number of columns.
    pub cols: usize,
    /// Row stride (≥ `cols`).
    pub ld: usize,
}

impl<'a, T> MatRef<'a, T> {
    /// A view of `data` as a `rows × cols` matrix with row stride `ld`.
    pub fn new(data: &'a [T], rows: usize, cols: usize, ld: usize) -> Self {
        MatRef {
            data,
            rows,
            cols,
            ld,
        }
    }

    fn check(&self, what: &'static str) -> Result<()> {
        check_matrix(what, self.data.len(), self.rows, self.cols, self.ld)
    }
}

/// Calls `gemm::gemm` (single-threaded) for `dst = [dst +] lhs·rhs`, where `lhs` is
/// `m × k` (row stride `lhs_rs`, column stride 1), `rhs` is `k × n` given by its strides,
/// `dst` is `m × n` row-major with stride `ldd`.
///
/// The `gemm` crate's entry point is an `unsafe fn` taking raw pointers; this is the
/// runtime's one call into it. Every extent is checked against the slices before the
/// call.
#[allow(unsafe_code, clippy::too_many_arguments)]
fn gemm_raw<T: Real>(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [T],
    ldd: usize,
    accumulate: bool,
    lhs: &[T],
    lhs_rs: usize,
    rhs: &[T],
    rhs_rs: usize,
    rhs_cs: usize,
) -> Result<()> {
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        if !accumulate {
            for row in dst.chunks_mut(ldd).take(m) {
                row[..n].fill(T::zero());
            }
        }
        return Ok(());
    }
    // Extents: the last element each operand touches must lie inside its slice.
    check_matrix("gemm output", dst.len(), m, n, ldd)?;
    check_matrix("gemm lhs", lhs.len(), m, k, lhs_rs)?;
    let rhs_last = (k - 1)
        .checked_mul(rhs_rs)
        .and_then(|a| (n - 1).checked_mul(rhs_cs).and_then(|b| a.checked_add(b)))
        .ok_or_else(|| Error::Limit("gemm rhs extent overflows".into()))?;
    if rhs_last >= rhs.len() {
        return Err(Error::Length {
            what: "gemm rhs",
            found: rhs.len(),
            expected: rhs_last + 1,
        });
    }
    let to_isize =
        |v: usize| isize::try_from(v).map_err(|_| Error::Limit("gemm stride exceeds isize".into()));
    let (ldd, lhs_rs, rhs_rs, rhs_cs) = (
        to_isize(ldd)?,
        to_isize(lhs_rs)?,
        to_isize(rhs_rs)?,
        to_isize(rhs_cs)?,
    );
    // SAFETY: `dst` is an exclusive borrow covering rows 0..m with stride `ldd` and
    // columns 0..n (checked above); `lhs` covers m × k with stride `lhs_rs` and unit
    // column stride; `rhs` covers every (p, j) at p·rhs_rs + j·rhs_cs for p < k, j < n
    // (its last such index is checked above; strides are non-negative, so that is the
    // largest). `dst` cannot alias `lhs` or `rhs` (one mutable and two shared borrows).
    // `T` is f32 or f64 (the only `Real` types), which `gemm` supports.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            ldd,
            accumulate,
            lhs.as_ptr(),
            1,
            lhs_rs,
            rhs.as_ptr(),
            rhs_cs,
            rhs_rs,
            T::one(),
            T::one(),
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
    Ok(())
}

/// `C = X·Wᵀ (+ bias)`: `X` is `rows × inner`, `W` is `out × inner` (a layer's weight,
/// row-major as stored), `C` is `rows × out` row-major with stride `ldc`; `bias` (length
/// `out`) is added to every row. Single-threaded (`gemm::Parallelism::None`): callers
/// parallelize over row blocks.
///
/// Bitwise, a row of `C` depends only on the corresponding row of `X` and on the
/// *shape* of the call (the `gemm` crate picks its blocking and kernels from the shape,
/// never from the values); callers that need results independent of how a batch is
/// split call it with a fixed row count.
pub fn gemm_xwt<T: Real>(
    x: MatRef<'_, T>,
    w: MatRef<'_, T>,
    bias: Option<&[T]>,
    c: &mut [T],
    ldc: usize,
) -> Result<()> {
    x.check("gemm X")?;
    w.check("gemm W")?;
    if x.cols != w.cols {
        return Err(Error::InvalidArgument(format!(
            "gemm: X has {} columns, W has {}",
            x.cols, w.cols
        )));
    }
    let (rows, out) = (x.rows, w.rows);
    check_matrix("gemm output", c.len(), rows, out, ldc)?;
    if let Some(b) = bias {
        check_len("gemm bias", b.len(), out)?;
        for row in c.chunks_mut(ldc).take(rows) {
            row[..out].copy_from_slice(b);
        }
    }
    // rhs = Wᵀ (inner × out): element (p, j) = W[j, p] at j·ld + p.
    gemm_raw(
        rows,
        out,
        x.cols,
        c,
        ldc,
        bias.is_some(),
        x.data,
        x.ld,
        w.data,
        1,
        w.ld,
    )
}

/// `C (+)= X·B`: `X` is `rows × inner`, `B` is `inner × out`, both row-major; `C` is
/// `rows × out` row-major with stride `ldc`. With `accumulate` the product is added to
/// `C`, otherwise it overwrites it. Single-threaded, like [`gemm_xwt`].
pub fn gemm_xb<T: Real>(
    x: MatRef<'_, T>,
    b: MatRef<'_, T>,
    c: &mut [T],
    ldc: usize,
    accumulate: bool,
) -> Result<()> {
    x.check("gemm X")?;
    b.check("gemm B")?;
    if x.cols != b.rows {
        return Err(Error::InvalidArgument(format!(
            "gemm: X has {} columns, B has {} rows",
            x.cols, b.rows
        )));
    }
    gemm_raw(
        x.rows, b.cols, x.cols, c, ldc, accumulate, x.data, x.ld, b.data, b.ld, 1,
    )
}

// ---------------------------------------------------------------------------------------
// Elementwise math, branch-free (selects, not branches) so that loops over it vectorize.
// ---------------------------------------------------------------------------------------

/// Whether `T` is single precision (picks polynomial degrees and tile widths; folded at
/// compile time).
#[inline(always)]
pub fn single<T: Real>() -> bool {
    std::mem::size_of::<T>() == 4
}

/// `(eˣ, eˣ − 1)` for `x ≤ 0` (NaN propagates), both to full relative precision of `T`.
///
/// Range reduction x = n·ln2 + r, |r| ≤ ln2/2 (Cody–Waite), Taylor polynomial for
/// eʳ − 1, and 2ⁿ built from the bits of an f64 (exact for every n reached here). Inputs
/// below the smallest normal result are clamped (the results are then below 1e-38
/// (f32) / 1e-307 (f64), and only ever added to O(1) values).
#[inline(always)]
pub fn exp_em1<T: Real, const FMA: bool>(x: T) -> (T, T) {
    let lo = if single::<T>() { -87.0 } else { -708.0 };
    let lo = T::of(lo);
    let x = if x < lo { lo } else { x };
    // Round x·log2(e) to an integer by adding and removing 1.5·2^(mantissa bits).
    let magic = T::of(1.5) / T::epsilon();
    let n = madd::<T, FMA>(x, T::LOG2_E(), magic) - magic;
    // ln 2 split so that n·LN2_HI is exact for |n| < 2^15 in either precision.
    let ln2_hi = T::of(0.693_359_375);
    let ln2_lo = T::of(-2.121_944_400_546_905_8e-4);
    let r = madd::<T, FMA>(-n, ln2_hi, x);
    let r = madd::<T, FMA>(-n, ln2_lo, r);
    // q = eʳ − 1 = r(1 + r/2! + r²/3! + …): degree 7 (f32) or 13 (f64) in r.
    const INV_FACT: [f64; 14] = [
        1.0,
        1.0,
        0.5,
        1.0 / 6.0,
        1.0 / 24.0,
        1.0 / 120.0,
        1.0 / 720.0,
        1.0 / 5040.0,
        1.0 / 40320.0,
        1.0 / 362_880.0,
        1.0 / 3_628_800.0,
        1.0 / 39_916_800.0,
        1.0 / 479_001_600.0,
        1.0 / 6_227_020_800.0,
    ];
    let deg = if single::<T>() { 7 } else { 13 };
    let mut p = T::of(INV_FACT[deg]);
    for i in (1..deg).rev() {
        p = madd::<T, FMA>(p, r, T::of(INV_FACT[i]));
    }
    let q = p * r;
    // s = 2ⁿ: with M = 1.5·2⁵², bits(M + j) = bits(M) + j for integers |j| < 2⁵¹.
    const M: f64 = 6_755_399_441_055_744.0;
    let j = n.f64() + (M + 1023.0);
    let s = f64::from_bits(j.to_bits().wrapping_sub(M.to_bits()) << 52);
    let s = T::of(s);
    (madd::<T, FMA>(s, q, s), madd::<T, FMA>(s, q, s - T::one()))
}

/// `log(1 + e)` for `e ∈ [0, 1]` given `e` and `em1 = e − 1` (both accurate):
/// `2·atanh(f/(2+f))` with f = e, or ln2 + log1p((e−1)/2) above √2 − 1, so that
/// |f/(2+f)| ≤ 0.172 and a short odd series suffices.
#[inline(always)]
pub fn log1p_unit<T: Real, const FMA: bool>(e: T, em1: T) -> T {
    let hi = e > T::of(std::f64::consts::SQRT_2 - 1.0);
    let f = if hi { em1 * T::of(0.5) } else { e };
    let base = if hi { T::LN_2() } else { T::zero() };
    let w = f / (T::of(2.0) + f);
    let w2 = w * w;
    // 2w Σ_k w^{2k}/(2k+1): 6 terms (f32) or 11 terms (f64).
    let terms = if single::<T>() { 6 } else { 11 };
    let mut p = T::of(1.0 / (2 * terms - 1) as f64);
    for k in (0..terms - 1).rev() {
        p = madd::<T, FMA>(p, w2, T::of(1.0 / (2 * k + 1) as f64));
    }
    madd::<T, FMA>(T::of(2.0) * w, p, base)
}

/// `(log(2 cosh a), tanh a)`: the OT-Flow activation and its derivative, computed as
/// |a| + log(1 + e^{−2|a|}) and sign(a)·(1 − e^{−2|a|})/(1 + e^{−2|a|}) with
/// `1 − e^{−2|a|}` taken from expm1 (accurate near 0).
#[inline(always)]
pub fn logcosh_tanh<T: Real, const FMA: bool>(a: T) -> (T, T) {
    let y = a.abs();
    let (e, em1) = exp_em1::<T, FMA>(T::of(-2.0) * y);
    let th = -em1 / (T::of(2.0) + em1);
    let th = if a < T::zero() { -th } else { th };
    (y + log1p_unit::<T, FMA>(e, em1), th)
}

/// `(σ(a), 1 − σ(a))` for the logistic sigmoid σ, both accurate (no cancellation).
#[inline(always)]
pub fn sigmoid_pair<T: Real, const FMA: bool>(a: T) -> (T, T) {
    let (e, _) = exp_em1::<T, FMA>(-a.abs());
    let p = T::one() / (T::one() + e);
    let ep = e * p;
    if a >= T::zero() {
        (p, ep)
    } else {
        (ep, p)
    }
}

/// `(SiLU(a), SiLU'(a))` = (a·σ(a), σ(a)·(1 + a·(1 − σ(a)))).
#[inline(always)]
pub fn silu_d<T: Real, const FMA: bool>(a: T) -> (T, T) {
    let (s, sc) = sigmoid_pair::<T, FMA>(a);
    (a * s, s * madd::<T, FMA>(a, sc, T::one()))
}

/// `(tanh a, 1 − tanh² a)`, the derivative as 4e/(1 + e)² with e = e^{−2|a|}, accurate
/// also where tanh a is close to ±1.
#[inline(always)]
pub fn tanh_d<T: Real, const FMA: bool>(a: T) -> (T, T) {
    let (e, em1) = exp_em1::<T, FMA>(T::of(-2.0) * a.abs());
    let th = -em1 / (T::of(2.0) + em1);
    let th = if a < T::zero() { -th } else { th };
    let ope = T::one() + e;
    (th, T::of(4.0) * e / (ope * ope))
}

/// `(softplus(a), σ(a))` with softplus(a) = max(a, 0) + log(1 + e^{−|a|}).
#[inline(always)]
pub fn softplus_d<T: Real, const FMA: bool>(a: T) -> (T, T) {
    let (e, em1) = exp_em1::<T, FMA>(-a.abs());
    let p = T::one() / (T::one() + e);
    let s = if a >= T::zero() { p } else { e * p };
    let relu = if a > T::zero() { a } else { T::zero() };
    // NaN propagates through `a.abs()` into e; keep it in the value too.
    let relu = if a.is_nan() { a } else { relu };
    (relu + log1p_unit::<T, FMA>(e, em1), s)
}

/// `(eˣ, eˣ − 1)` for `x ≤ 0` over the whole range of `T` (NaN propagates): as
/// [`exp_em1`] (identical results down to its clamp), but results below the smallest
/// normal value are rounded once into the subnormals (2ⁿ is applied as 2^{n+64}·2^{−64})
/// and underflow to 0, so that e.g. sech² and the sigmoid keep their relative accuracy
/// in the far tails.
#[inline(always)]
pub fn exp_em1_full<T: Real, const FMA: bool>(x: T) -> (T, T) {
    // Below these, eˣ rounds to 0 in T.
    let lo = if single::<T>() { -110.0 } else { -750.0 };
    let lo = T::of(lo);
    let x = if x < lo { lo } else { x };
    let magic = T::of(1.5) / T::epsilon();
    let n = madd::<T, FMA>(x, T::LOG2_E(), magic) - magic;
    let ln2_hi = T::of(0.693_359_375);
    let ln2_lo = T::of(-2.121_944_400_546_905_8e-4);
    let r = madd::<T, FMA>(-n, ln2_hi, x);
    let r = madd::<T, FMA>(-n, ln2_lo, r);
    const INV_FACT: [f64; 14] = [
        1.0,
        1.0,
        0.5,
        1.0 / 6.0,
        1.0 / 24.0,
        1.0 / 120.0,
        1.0 / 720.0,
        1.0 / 5040.0,
        1.0 / 40320.0,
        1.0 / 362_880.0,
        1.0 / 3_628_800.0,
        1.0 / 39_916_800.0,
        1.0 / 479_001_600.0,
        1.0 / 6_227_020_800.0,
    ];
    let deg = if single::<T>() { 7 } else { 13 };
    let mut p = T::of(INV_FACT[deg]);
    for i in (1..deg).rev() {
        p = madd::<T, FMA>(p, r, T::of(INV_FACT[i]));
    }
    let q = p * r;
    // Below the normal range, 2ⁿ = 2^{n+64} · 2^{−64}, both factors normal.
    let min_exp = if single::<T>() { -126.0 } else { -1022.0 };
    let low = n < T::of(min_exp);
    let k = if low { T::of(64.0) } else { T::zero() };
    const M: f64 = 6_755_399_441_055_744.0;
    let j = (n + k).f64() + (M + 1023.0);
    let s = T::of(f64::from_bits(j.to_bits().wrapping_sub(M.to_bits()) << 52));
    let unscale = if low {
        T::of(5.421_010_862_427_522e-20)
    } else {
        T::one()
    };
    let e = madd::<T, FMA>(s, q, s) * unscale;
    let em1 = if low {
        e - T::one()
    } else {
        madd::<T, FMA>(s, q, s - T::one())
    };
    (e, em1)
}

/// `tanh a` as sign(a)·(1 − e^{−2|a|})/(1 + e^{−2|a|}), with `1 − e^{−2|a|}` from
/// expm1 (accurate near 0); the sign of zero is kept.
#[inline(always)]
pub fn tanh_full<T: Real, const FMA: bool>(a: T) -> T {
    let (_, em1) = exp_em1_full::<T, FMA>(T::of(-2.0) * a.abs());
    // `abs`: at a = ±0 the quotient is −0.
    let th = (-em1 / (T::of(2.0) + em1)).abs();
    if a.is_sign_negative() {
        -th
    } else {
        th
    }
}

/// `sech² a = 1 − tanh² a` as 4e/(1 + e)² with e = e^{−2|a|} (no cancellation; full
/// relative accuracy down to underflow).
#[inline(always)]
pub fn sech2_full<T: Real, const FMA: bool>(a: T) -> T {
    let (e, _) = exp_em1_full::<T, FMA>(T::of(-2.0) * a.abs());
    let d = T::one() + e;
    T::of(4.0) * e / (d * d)
}

/// `log(2 cosh a) = |a| + log(1 + e^{−2|a|})`.
#[inline(always)]
pub fn logcosh_full<T: Real, const FMA: bool>(a: T) -> T {
    let y = a.abs();
    let (e, em1) = exp_em1_full::<T, FMA>(T::of(-2.0) * y);
    y + log1p_unit::<T, FMA>(e, em1)
}

/// `(σ(a), σ(−a))` for the logistic sigmoid σ, each one division: 1/(1 + e) and
/// e/(1 + e) with e = e^{−|a|}, both accurate in the tails.
#[inline(always)]
pub fn sigmoid_both<T: Real, const FMA: bool>(a: T) -> (T, T) {
    let (e, _) = exp_em1_full::<T, FMA>(-a.abs());
    let d = T::one() + e;
    let pos = a >= T::zero();
    let (np, nm) = if pos { (T::one(), e) } else { (e, T::one()) };
    (np / d, nm / d)
}

/// `softplus a = max(a, 0) + log(1 + e^{−|a|})` (NaN propagates).
#[inline(always)]
pub fn softplus_full<T: Real, const FMA: bool>(a: T) -> T {
    let (e, em1) = exp_em1_full::<T, FMA>(-a.abs());
    let relu = if a > T::zero() { a } else { T::zero() };
    let relu = if a.is_nan() { a } else { relu };
    relu + log1p_unit::<T, FMA>(e, em1)
}

/// The elementwise maps of [`map_act`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Act {
    /// tanh a ([`tanh_full`]).
    Tanh,
    /// sech² a ([`sech2_full`]).
    Sech2,
    /// log(2 cosh a) ([`logcosh_full`]).
    LogCosh,
    /// σ(a) = 1/(1 + e^{−a}) ([`sigmoid_both`]).
    Sigmoid,
    /// a·σ(a).
    Silu,
    /// SiLU'(a) = σ(a)(1 + a·σ(−a)).
    SiluPrime,
    /// SiLU''(a) = σ(a)σ(−a)(2 + a(σ(−a) − σ(a))).
    SiluSecond,
    /// log(1 + eᵃ) ([`softplus_full`]).
    Softplus,
}

simd_fn! {
    fn k_act<T: Real>(act: Act, x: &[T], out: &mut [T]) {
        const F: bool = fma!();
        macro_rules! go {
            (|$v:ident| $e:expr) => {
                for (o, &$v) in out.iter_mut().zip(x) {
                    *o = $e;
                }
            };
        }
        match act {
            Act::Tanh => go!(|v| tanh_full::<T, F>(v)),
            Act::Sech2 => go!(|v| sech2_full::<T, F>(v)),
            Act::LogCosh => go!(|v| logcosh_full::<T, F>(v)),
            Act::Sigmoid => go!(|v| sigmoid_both::<T, F>(v).0),
            Act::Silu => go!(|v| v * sigmoid_both::<T, F>(v).0),
            Act::SiluPrime => go!(|v| {
                let (s, sm) = sigmoid_both::<T, F>(v);
                s * madd::<T, F>(v, sm, T::one())
            }),
            Act::SiluSecond => go!(|v| {
                let (s, sm) = sigmoid_both::<T, F>(v);
                s * sm * madd::<T, F>(v, sm - s, T::of(2.0))
            }),
            Act::Softplus => go!(|v| softplus_full::<T, F>(v)),
        }
    }
}

/// `out[i] = act(x[i])` over slices, vectorized with run-time SIMD dispatch (AVX-512,
/// AVX2 + FMA, Neon, or portable code). Results are within a few ulps of the
/// correctly rounded value (f64: ≲ 4 ulps; f32: ≲ 2 ulps), deterministic for a given
/// CPU; NaN propagates.
pub fn map_act<T: Real>(act: Act, x: &[T], out: &mut [T]) -> Result<()> {
    check_len("map_act output", out.len(), x.len())?;
    k_act(act, x, out);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    simd_fn! {
        fn act_f64(a: &[f64], out: &mut [(f64, f64)]) {
            for (o, &v) in out.iter_mut().zip(a) {
                *o = logcosh_tanh::<f64, { fma!() }>(v);
            }
        }
    }
    simd_fn! {
        fn act_f32(a: &[f32], out: &mut [(f32, f32)]) {
            for (o, &v) in out.iter_mut().zip(a) {
                *o = logcosh_tanh::<f32, { fma!() }>(v);
            }
        }
    }

    fn grid() -> Vec<f64> {
        let mut v = vec![0.0, -0.0, 1e-300, -1e-300, 1e-12, 1e-5, 0.1, 0.17, 0.2, 0.5];
        let mut x = 1e-8;
        while x < 800.0 {
            v.push(x);
            v.push(-x);
            x *= 1.0137;
        }
        v
    }

    #[test]
    fn logcosh_and_tanh_match_std_f64() {
        let a = grid();
        let mut out = vec![(0.0, 0.0); a.len()];
        act_f64(&a, &mut out);
        for (&x, &(s, t)) in a.iter().zip(&out) {
            let y = x.abs();
            let s_ref = y + (-2.0 * y).exp().ln_1p();
            let t_ref = x.tanh();
            assert!(
                (s - s_ref).abs() <= 4e-16 * s_ref.abs(),
                "σ({x}) = {s} vs {s_ref}"
            );
            assert!(
                (t - t_ref).abs() <= 4e-16 * t_ref.abs() + 1e-300,
                "tanh({x}) = {t} vs {t_ref}"
            );
        }
    }

    #[test]
    fn logcosh_and_tanh_match_std_f32() {
        let a = grid();
        let a32: Vec<f32> = a.iter().map(|&v| v as f32).collect();
        let mut out = vec![(0.0f32, 0.0f32); a.len()];
        act_f32(&a32, &mut out);
        for (&x, &(s, t)) in a32.iter().zip(&out) {
            let x = x as f64;
            let y = x.abs();
            let s_ref = y + (-2.0 * y).exp().ln_1p();
            let t_ref = x.tanh();
            assert!(
                (s as f64 - s_ref).abs() <= 2.5e-7 * s_ref.abs(),
                "σ({x}) = {s} vs {s_ref}"
            );
            assert!(
                (t as f64 - t_ref).abs() <= 2.5e-7 * t_ref.abs() + 1e-38,
                "tanh({x}) = {t} vs {t_ref}"
            );
        }
    }

    /// Deterministic values in [-1, 1).
    fn values(n: usize, seed: u64) -> Vec<f64> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 11) as f64 / (1u64 << 52) as f64 - 1.0
            })
            .collect()
    }

    fn close(a: f64, b: f64, scale: f64) -> bool {
        (a - b).abs() <= 1e-13 * scale
    }

    #[test]
    fn matvec_and_transpose_match_loops() {
        for &(m, n) in &[
            (1usize, 1usize),
            (3, 5),
            (37, 53),
            (64, 256),
            (130, 7),
            (5, 300),
        ] {
            let a = values(m * n, (m * 1000 + n) as u64);
            let x = values(n, 1);
            let xt = values(m, 2);
            let mut y = vec![0.0; m];
            matvec(&a, m, n, &x, &mut y).unwrap();
            for i in 0..m {
                let want: f64 = (0..n).map(|j| a[i * n + j] * x[j]).sum();
                assert!(close(y[i], want, n as f64), "matvec {m}×{n} row {i}");
            }
            let mut yt = vec![7.0; n];
            matvec_t(&a, m, n, &xt, &mut yt).unwrap();
            for j in 0..n {
                let want: f64 = (0..m).map(|i| a[i * n + j] * xt[i]).sum();
                assert!(close(yt[j], want, m as f64), "matvec_t {m}×{n} col {j}");
            }
            // f32 too, against the f64 loops.
            let a32: Vec<f32> = a.iter().map(|&v| v as f32).collect();
            let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
            let mut y32 = vec![0.0f32; m];
            matvec(&a32, m, n, &x32, &mut y32).unwrap();
            for i in 0..m {
                let want: f64 = (0..n).map(|j| a32[i * n + j] as f64 * x32[j] as f64).sum();
                assert!(
                    (y32[i] as f64 - want).abs() <= 1e-6 * n as f64,
                    "matvec f32"
                );
            }
        }
        let mut y = [0.0; 2];
        assert!(matches!(
            matvec(&[1.0; 5], 2, 3, &[1.0; 3], &mut y),
            Err(Error::Length { .. })
        ));
        assert!(matches!(
            matvec_t(&[1.0; 6], 2, 3, &[1.0; 3], &mut [0.0; 3]),
            Err(Error::Length { .. })
        ));
    }

    #[test]
    fn matmul_matches_loops() {
        for &(m, k, n) in &[
            (1usize, 1usize, 1usize),
            (5, 7, 3),
            (9, 33, 70),
            (64, 64, 12),
        ] {
            let a = values(m * k, 3);
            let b = values(k * n, 4);
            let mut c = vec![1.0; m * n];
            matmul(m, k, n, &a, &b, &mut c).unwrap();
            for i in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
                    assert!(close(c[i * n + j], want, k as f64), "matmul ({m},{k},{n})");
                }
            }
        }
        assert!(matmul(2, 2, 2, &[0.0; 3], &[0.0; 4], &mut [0.0; 4]).is_err());
    }

    #[test]
    fn gemm_wrappers_match_loops() {
        for &(rows, inner, out) in &[
            (1usize, 3usize, 256usize),
            (7, 13, 5),
            (64, 256, 256),
            (33, 600, 17),
        ] {
            let ldx = inner + 3;
            let ldw = inner + 1;
            let ldc = out + 2;
            let x = values(rows * ldx, 5);
            let w = values(out * ldw, 6);
            let bias = values(out, 7);
            let mut c = vec![f64::NAN; rows * ldc];
            gemm_xwt(
                MatRef::new(&x, rows, inner, ldx),
                MatRef::new(&w, out, inner, ldw),
                Some(&bias),
                &mut c,
                ldc,
            )
            .unwrap();
            for i in 0..rows {
                for j in 0..out {
                    let want = bias[j]
                        + (0..inner)
                            .map(|p| x[i * ldx + p] * w[j * ldw + p])
                            .sum::<f64>();
                    assert!(close(c[i * ldc + j], want, inner as f64), "gemm_xwt");
                }
                // Padding columns of C are left alone.
                assert!(c[i * ldc + out].is_nan());
            }
            // C += X·B with B = Wᵀ stored row-major (inner × out).
            let mut bt = vec![0.0; inner * out];
            for p in 0..inner {
                for j in 0..out {
                    bt[p * out + j] = w[j * ldw + p];
                }
            }
            let mut c2: Vec<f64> = c.clone();
            gemm_xb(
                MatRef::new(&x, rows, inner, ldx),
                MatRef::new(&bt, inner, out, out),
                &mut c2,
                ldc,
                true,
            )
            .unwrap();
            let mut c3 = vec![0.0; rows * ldc];
            gemm_xb(
                MatRef::new(&x, rows, inner, ldx),
                MatRef::new(&bt, inner, out, out),
                &mut c3,
                ldc,
                false,
            )
            .unwrap();
            for i in 0..rows {
                for j in 0..out {
                    let prod = c[i * ldc + j] - bias[j];
                    assert!(close(
                        c2[i * ldc + j],
                        c[i * ldc + j] + prod,
                        inner as f64 * 4.0
                    ));
                    assert!(close(c3[i * ldc + j], prod, inner as f64 * 2.0));
                }
            }
        }
        // Shape and length errors, never a panic.
        let mut c = vec![0.0; 4];
        assert!(gemm_xwt(
            MatRef::new(&[0.0; 6], 2, 3, 3),
            MatRef::new(&[0.0; 4], 2, 2, 2),
            None,
            &mut c,
            2
        )
        .is_err());
        assert!(gemm_xwt(
            MatRef::new(&[0.0; 5], 2, 3, 3),
            MatRef::new(&[0.0; 6], 2, 3, 3),
            None,
            &mut c,
            2
        )
        .is_err());
        assert!(gemm_xwt(
            MatRef::new(&[0.0; 6], 2, 3, 2),
            MatRef::new(&[0.0; 6], 2, 3, 3),
            None,
            &mut c,
            2
        )
        .is_err());
        assert!(gemm_xwt(
            MatRef::new(&[0.0; 6], 2, 3, 3),
            MatRef::new(&[0.0; 6], 2, 3, 3),
            Some(&[0.0; 1]),
            &mut c,
            2
        )
        .is_err());
        assert!(gemm_xb(
            MatRef::new(&[0.0; 6], 2, 3, 3),
            MatRef::new(&[0.0; 6], 3, 2, 2),
            &mut c[..3],
            2,
            false
        )
        .is_err());
    }

    simd_fn! {
        fn mlp_acts(a: &[f64], out: &mut [[f64; 6]]) {
            for (o, &v) in out.iter_mut().zip(a) {
                let (s, ds) = silu_d::<f64, { fma!() }>(v);
                let (t, dt) = tanh_d::<f64, { fma!() }>(v);
                let (p, dp) = softplus_d::<f64, { fma!() }>(v);
                *o = [s, ds, t, dt, p, dp];
            }
        }
    }

    #[test]
    fn mlp_activations_match_std() {
        let a = grid();
        let mut out = vec![[0.0; 6]; a.len()];
        mlp_acts(&a, &mut out);
        for (&x, o) in a.iter().zip(&out) {
            // σ and 1 − σ without cancellation.
            let e = (-x.abs()).exp();
            let (sig, sigc) = if x >= 0.0 {
                (1.0 / (1.0 + e), e / (1.0 + e))
            } else {
                (e / (1.0 + e), 1.0 / (1.0 + e))
            };
            let sech = 1.0 / x.cosh();
            let want = [
                x * sig,
                sig * (1.0 + x * sigc),
                x.tanh(),
                sech * sech,
                x.max(0.0) + e.ln_1p(),
                sig,
            ];
            for (k, (&g, &w)) in o.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-15 * w.abs().max(1.0) || (g - w).abs() <= 4e-16 * w.abs(),
                    "activation {k} at {x}: {g} vs {w}"
                );
            }
        }
    }

    #[test]
    fn map_act_matches_std() {
        let a = grid();
        for act in [
            Act::Tanh,
            Act::Sech2,
            Act::LogCosh,
            Act::Sigmoid,
            Act::Silu,
            Act::SiluPrime,
            Act::SiluSecond,
            Act::Softplus,
        ] {
            let reference = |x: f64| {
                let e = (-x.abs()).exp();
                let (s, sm) = if x >= 0.0 {
                    (1.0 / (1.0 + e), e / (1.0 + e))
                } else {
                    (e / (1.0 + e), 1.0 / (1.0 + e))
                };
                let e2 = (-2.0 * x.abs()).exp();
                match act {
                    Act::Tanh => x.tanh(),
                    Act::Sech2 => 4.0 * e2 / ((1.0 + e2) * (1.0 + e2)),
                    Act::LogCosh => x.abs() + e2.ln_1p(),
                    Act::Sigmoid => s,
                    Act::Silu => x * s,
                    Act::SiluPrime => s * (1.0 + x * sm),
                    Act::SiluSecond => s * sm * (2.0 + x * (sm - s)),
                    Act::Softplus => x.max(0.0) + e.ln_1p(),
                }
            };
            let mut out = vec![0.0; a.len()];
            map_act(act, &a, &mut out).unwrap();
            let a32: Vec<f32> = a.iter().map(|&v| v as f32).collect();
            let mut out32 = vec![0.0f32; a.len()];
            map_act(act, &a32, &mut out32).unwrap();
            for i in 0..a.len() {
                let (x, want) = (a[i], reference(a[i]));
                let got = out[i];
                // The terms of SiLU' and SiLU'' (size s·(1 + |x|)) cancel near x ≈ −1.3
                // and x ≈ ±2.4: relative to them, not to the result.
                let sig = 1.0 / (1.0 + (-x).exp());
                let terms = match act {
                    Act::SiluPrime | Act::SiluSecond => sig * (1.0 + x.abs()),
                    _ => 0.0,
                };
                assert!(
                    (got - want).abs() <= 1e-15 * want.abs().max(terms) + 1e-300,
                    "{act:?}({x}) = {got} vs {want}"
                );
                let x32 = f64::from(a32[i]);
                let want32 = reference(x32);
                let got32 = f64::from(out32[i]);
                let sig32 = 1.0 / (1.0 + (-x32).exp());
                let terms32 = match act {
                    Act::SiluPrime | Act::SiluSecond => sig32 * (1.0 + x32.abs()),
                    _ => 0.0,
                };
                if want32.abs() > 1e-37 {
                    assert!(
                        (got32 - want32).abs() <= 3e-7 * want32.abs().max(terms32),
                        "{act:?}({x32}) f32 = {got32} vs {want32}"
                    );
                } else {
                    // Subnormal results: e^{−2|x|} is rounded to the subnormal grid
                    // before the factor 4 of sech² (or x of SiLU), so allow a few spacings.
                    assert!(
                        (got32 - want32).abs() <= 6e-45 * x32.abs().max(1.0),
                        "{act:?}({x32}) f32 tail {got32} vs {want32}"
                    );
                }
            }
        }
        let mut out = [0.0; 2];
        map_act(Act::Tanh, &[-0.0, f64::NAN], &mut out).unwrap();
        assert!(out[0] == 0.0 && out[0].is_sign_negative() && out[1].is_nan());
        map_act(Act::Tanh, &[0.0, 1.0], &mut out).unwrap();
        assert!(out[0] == 0.0 && out[0].is_sign_positive());
        assert!(map_act(Act::Tanh, &[1.0], &mut out).is_err());
    }

    #[test]
    fn nan_propagates() {
        let mut out = [(0.0, 0.0)];
        act_f64(&[f64::NAN], &mut out);
        assert!(out[0].0.is_nan() && out[0].1.is_nan());
    }
}
