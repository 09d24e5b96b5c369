//! MLP velocity and score fields: v(t, x) = W_L σ(… σ(W_0 [x, t] + b_0) …) + b_L.
//!
//! [`Mlp`] implements [`Field`]: a single-state path with caller scratch and no
//! allocation (axpy-form products over stored Wᵀ), the exact divergence tr(∂v/∂x) by
//! forward mode over the d input directions, Jacobian–vector products (∂v/∂x)·u by
//! forward mode with one tangent, and block paths that run every layer as one GEMM
//! over a chunk of rows (the throughput path of batch sampling).
//!
//! Block results are independent of the other rows of a block, bitwise: blocks are cut
//! into chunks of a fixed number of rows ([`Field::preferred_block_rows`]; the last one
//! padded), so every GEMM call has the same shape whatever the caller's block.

use crate::error::{check_len, Error, Result};
use crate::field::{check_block, Field};
use crate::linalg::{
    axpy_rows, dot, dot_rows, fma, gemm_xwt, matmul_acc, padded, silu_d, simd_fn, softplus_d,
    tanh_d, wide, MatRef,
};
use crate::nn::{Activation, MlpParams};
use crate::Real;

/// Largest state dimension accepted.
pub const MAX_DIM: usize = 1 << 20;
/// Largest hidden width accepted.
pub const MAX_WIDTH: usize = 1 << 16;
/// Largest number of hidden layers accepted.
pub const MAX_LAYERS: usize = 1 << 10;
/// Largest total number of stored weights accepted.
const MAX_WEIGHTS: usize = 1 << 31;

/// Rows per GEMM chunk of [`Field::eval_block`]. The `gemm` crate runs the 256 × 256
/// layers at its full rate from about this many rows on, and a chunk's activations
/// (rows × 256 values per layer) stay in the L2 cache.
pub const BLOCK_ROWS: usize = 256;
/// Output length below which a single-state layer runs in dot form (over W's rows)
/// rather than axpy form (over Wᵀ's): a narrow axpy is one long FMA chain.
const NARROW: usize = 64;
/// Element budget of one tangent buffer (rows · d · width) in the divergence block
/// path: sets its chunk row count.
const DIV_BLOCK_BUDGET: usize = 1 << 20;

/// One dense layer in the compute type.
#[derive(Clone, Debug)]
struct Layer<T> {
    n_in: usize,
    in_pad: usize,
    n_out: usize,
    out_pad: usize,
    /// W: n_out × in_pad, row-major, rows zero-padded (GEMM operand, dot-form products,
    /// divergence of the last layer).
    w: Vec<T>,
    /// Wᵀ: n_in × out_pad (single-state axpy products).
    wt: Vec<T>,
    /// b: out_pad.
    b: Vec<T>,
}

/// An MLP field [x, t] → d, evaluated in `T` (f32 or f64).
#[derive(Clone, Debug)]
pub struct Mlp<T: Real> {
    d: usize,
    activation: Activation,
    layers: Vec<Layer<T>>,
    /// Widest padded layer input or output.
    max_pad: usize,
}

impl<T: Real> Mlp<T> {
    /// Builds the evaluator, checking every size (a [`Error::Shape`] reports the flat
    /// length found) and that every parameter is finite.
    pub fn new(p: &MlpParams) -> Result<Self> {
        let d = p.d;
        if d == 0 || d > MAX_DIM {
            return Err(Error::InvalidArgument(format!(
                "MLP state dimension d = {d} (must be 1..={MAX_DIM})"
            )));
        }
        if p.hidden.is_empty() || p.hidden.len() > MAX_LAYERS {
            return Err(Error::InvalidArgument(format!(
                "MLP with {} hidden layers (must be 1..={MAX_LAYERS})",
                p.hidden.len()
            )));
        }
        if let Some(&h) = p.hidden.iter().find(|&&h| h == 0 || h > MAX_WIDTH) {
            return Err(Error::InvalidArgument(format!(
                "MLP hidden width {h} (must be 1..={MAX_WIDTH})"
            )));
        }
        let n_layers = p.hidden.len() + 1;
        if p.weights.len() != n_layers || p.biases.len() != n_layers {
            return Err(Error::InvalidArgument(format!(
                "MLP with {} hidden layers needs {n_layers} weights and biases, got {} and {}",
                p.hidden.len(),
                p.weights.len(),
                p.biases.len()
            )));
        }
        let mut dims = Vec::with_capacity(n_layers + 1);
        dims.push(d + 1);
        dims.extend(p.hidden.iter().copied());
        dims.push(d);
        let mut total: usize = 0;
        for w in dims.windows(2) {
            total = w[0]
                .checked_mul(padded(w[1]))
                .and_then(|v| v.checked_mul(2))
                .and_then(|v| total.checked_add(v))
                .filter(|&v| v <= MAX_WEIGHTS)
                .ok_or_else(|| Error::Limit("MLP has too many weights".into()))?;
        }
        let mut layers = Vec::with_capacity(n_layers);
        for (l, io) in dims.windows(2).enumerate() {
            let (n_in, n_out) = (io[0], io[1]);
            let wname = format!("layers.{l}.weight");
            let bname = format!("layers.{l}.bias");
            let w = &p.weights[l];
            if w.len() != n_in * n_out {
                return Err(Error::Shape {
                    name: wname,
                    found: vec![w.len()],
                    expected: vec![n_out, n_in],
                });
            }
            if !w.iter().all(|v| v.is_finite()) {
                return Err(Error::NonFinite(wname));
            }
            let b = &p.biases[l];
            if b.len() != n_out {
                return Err(Error::Shape {
                    name: bname,
                    found: vec![b.len()],
                    expected: vec![n_out],
                });
            }
            if !b.iter().all(|v| v.is_finite()) {
                return Err(Error::NonFinite(bname));
            }
            let (in_pad, out_pad) = (padded(n_in), padded(n_out));
            let mut wt = vec![T::zero(); n_in * out_pad];
            let mut wp = vec![T::zero(); n_out * in_pad];
            for o in 0..n_out {
                for i in 0..n_in {
                    wt[i * out_pad + o] = T::of(w[o * n_in + i]);
                    wp[o * in_pad + i] = T::of(w[o * n_in + i]);
                }
            }
            let mut bp = vec![T::zero(); out_pad];
            for (dst, &v) in bp.iter_mut().zip(b) {
                *dst = T::of(v);
            }
            layers.push(Layer {
                n_in,
                in_pad,
                n_out,
                out_pad,
                w: wp,
                wt,
                b: bp,
            });
        }
        let max_pad = dims
            .iter()
            .map(|&n| padded(n))
            .max()
            .unwrap_or(crate::linalg::PAD);
        Ok(Mlp {
            d,
            activation: p.activation,
            layers,
            max_pad,
        })
    }

    /// The parameters as evaluated, converted to f64 (exact for `Mlp<f64>`; for
    /// `Mlp<f32>` the values rounded to f32).
    pub fn params(&self) -> MlpParams {
        MlpParams {
            d: self.d,
            hidden: self.layers[..self.layers.len() - 1]
                .iter()
                .map(|l| l.n_out)
                .collect(),
            activation: self.activation,
            weights: self
                .layers
                .iter()
                .map(|l| {
                    l.w.chunks_exact(l.in_pad)
                        .flat_map(|row| row[..l.n_in].iter().map(|v| v.f64()))
                        .collect()
                })
                .collect(),
            biases: self
                .layers
                .iter()
                .map(|l| l.b[..l.n_out].iter().map(|v| v.f64()).collect())
                .collect(),
        }
    }

    /// The hidden layers' activation.
    pub fn activation(&self) -> Activation {
        self.activation
    }

    /// Rows per chunk of [`Field::eval_block_div`] (smaller than
    /// [`Field::preferred_block_rows`] when the d tangent rows per
    /// state would not fit the buffer budget).
    pub fn div_block_rows(&self) -> usize {
        (DIV_BLOCK_BUDGET / (self.d * self.max_pad)).clamp(1, BLOCK_ROWS)
    }

    fn eval_scratch_len(&self) -> usize {
        2 * self.max_pad
    }

    fn block_len(&self, rows: usize, div: bool) -> usize {
        let mut n = 2 * rows * self.max_pad;
        if div {
            n += rows * self.max_pad + 2 * rows * self.d * self.max_pad;
        }
        n
    }
}

/// Splits `n` elements off the front of `buf` (callers check the total first).
fn take<'a, T>(buf: &mut &'a mut [T], n: usize) -> &'a mut [T] {
    let b = std::mem::take(buf);
    let (head, tail) = b.split_at_mut(n.min(b.len()));
    *buf = tail;
    head
}

simd_fn! {
    /// `a ← σ(a)` and, when given, `da ← σ'(a)`, on the first `n` columns of each
    /// `ld`-strided row.
    fn activate_rows<T: Real>(
        act: Activation,
        a: &mut [T],
        da: Option<&mut [T]>,
        ld: usize,
        n: usize,
    ) {
        const F: bool = fma!();
        match da {
            Some(da) => {
                for (arow, drow) in a.chunks_exact_mut(ld).zip(da.chunks_exact_mut(ld)) {
                    activate_body::<T, F>(act, &mut arow[..n], Some(&mut drow[..n]));
                }
            }
            None => {
                for arow in a.chunks_exact_mut(ld) {
                    activate_body::<T, F>(act, &mut arow[..n], None);
                }
            }
        }
    }
}

simd_fn! {
    /// Single state: v = f(t, x); with `div`, also returns tr(∂v/∂x) (forward mode over
    /// the d input directions), else zero.
    fn single<T: Real>(
        net: &Mlp<T>,
        t: T,
        x: &[T],
        v: &mut [T],
        scratch: &mut [T],
        div: bool,
    ) -> T {
        single_body::<T, { fma!() }, { wide!() }>(net, t, x, v, scratch, div)
    }
}

#[inline(always)]
fn single_body<T: Real, const F: bool, const V: bool>(
    net: &Mlp<T>,
    t: T,
    x: &[T],
    v: &mut [T],
    scratch: &mut [T],
    div: bool,
) -> T {
    let (d, mp) = (net.d, net.max_pad);
    let mut sc = scratch;
    let mut h = take(&mut sc, mp);
    let mut a = take(&mut sc, mp);
    let (dh, mut tg, mut tg2) = if div {
        (
            take(&mut sc, mp),
            take(&mut sc, d * mp),
            take(&mut sc, d * mp),
        )
    } else {
        (&mut [][..], &mut [][..], &mut [][..])
    };
    h[..d].copy_from_slice(x);
    h[d] = t;
    h[d + 1..net.layers[0].in_pad].fill(T::zero());
    let nl = net.layers.len();
    for (l, layer) in net.layers.iter().enumerate() {
        let out = &mut a[..layer.out_pad];
        out.copy_from_slice(&layer.b);
        if layer.out_pad < NARROW {
            // Short output: dot form over the rows of W (short FMA chains); the input
            // (a hidden layer, padded with finite values) is read to its padded length
            // against W's padded rows.
            dot_rows::<T, F>(
                &layer.w,
                layer.in_pad,
                &h[..layer.in_pad],
                &mut out[..layer.n_out],
            );
        } else {
            axpy_rows::<T, F, V>(&layer.wt, layer.out_pad, &h[..layer.n_in], out);
        }
        if l + 1 == nl {
            v.copy_from_slice(&out[..d]);
            break;
        }
        if div {
            let dhl = &mut dh[..layer.out_pad];
            activate_body::<T, F>(net.activation, out, Some(&mut *dhl));
            let op = layer.out_pad;
            if l == 0 {
                // ∂a₀/∂x_k = W₀[:, k] = row k of W₀ᵀ.
                for k in 0..d {
                    let row = &mut tg[k * mp..k * mp + op];
                    let wrow = &layer.wt[k * op..(k + 1) * op];
                    for ((tv, &wv), &dv) in row.iter_mut().zip(wrow).zip(dhl.iter()) {
                        *tv = wv * dv;
                    }
                }
            } else {
                // T ← (T·Wᵀ) ⊙ σ'(a), one tangent row per input direction.
                for row in tg2.chunks_exact_mut(mp).take(d) {
                    row[..op].fill(T::zero());
                }
                matmul_acc::<T, F>(d, layer.n_in, op, tg, mp, &layer.wt, op, tg2, mp);
                for row in tg2.chunks_exact_mut(mp).take(d) {
                    for (tv, &dv) in row[..op].iter_mut().zip(dhl.iter()) {
                        *tv *= dv;
                    }
                }
                std::mem::swap(&mut tg, &mut tg2);
            }
        } else {
            activate_body::<T, F>(net.activation, out, None);
        }
        std::mem::swap(&mut h, &mut a);
    }
    if !div {
        return T::zero();
    }
    // tr(∂v/∂x) = Σ_k W_L[k, :] · T[k, :].
    let last = &net.layers[nl - 1];
    let mut tr = T::zero();
    for k in 0..d {
        let wrow = &last.w[k * last.in_pad..(k + 1) * last.in_pad];
        tr += dot::<T, F>(wrow, &tg[k * mp..k * mp + last.in_pad]);
    }
    tr
}

simd_fn! {
    /// Single state: v = f(t, x) and jv = (∂v/∂x)·dx, by forward mode with one
    /// tangent (the time's tangent is zero). The primal products are those of
    /// [`single`], so `v` is bitwise the one [`Field::eval`] gives.
    fn single_jvp<T: Real>(
        net: &Mlp<T>,
        t: T,
        x: &[T],
        dx: &[T],
        v: &mut [T],
        jv: &mut [T],
        scratch: &mut [T],
    ) {
        single_jvp_body::<T, { fma!() }, { wide!() }>(net, t, x, dx, v, jv, scratch)
    }
}

#[inline(always)]
fn single_jvp_body<T: Real, const F: bool, const V: bool>(
    net: &Mlp<T>,
    t: T,
    x: &[T],
    dx: &[T],
    v: &mut [T],
    jv: &mut [T],
    scratch: &mut [T],
) {
    let (d, mp) = (net.d, net.max_pad);
    let mut sc = scratch;
    let mut h = take(&mut sc, mp);
    let mut a = take(&mut sc, mp);
    let mut th = take(&mut sc, mp);
    let mut ta = take(&mut sc, mp);
    let dh = take(&mut sc, mp);
    let in0 = net.layers[0].in_pad;
    h[..d].copy_from_slice(x);
    h[d] = t;
    h[d + 1..in0].fill(T::zero());
    th[..d].copy_from_slice(dx);
    th[d..in0].fill(T::zero());
    let nl = net.layers.len();
    for (l, layer) in net.layers.iter().enumerate() {
        let op = layer.out_pad;
        let out = &mut a[..op];
        out.copy_from_slice(&layer.b);
        let tout = &mut ta[..op];
        tout.fill(T::zero());
        // The same product form as `single` for the primal (bitwise the same v), and
        // for the tangent (padded entries stay zero: W's padded rows and columns are).
        if op < NARROW {
            dot_rows::<T, F>(
                &layer.w,
                layer.in_pad,
                &h[..layer.in_pad],
                &mut out[..layer.n_out],
            );
            dot_rows::<T, F>(
                &layer.w,
                layer.in_pad,
                &th[..layer.in_pad],
                &mut tout[..layer.n_out],
            );
        } else {
            axpy_rows::<T, F, V>(&layer.wt, op, &h[..layer.n_in], out);
            axpy_rows::<T, F, V>(&layer.wt, op, &th[..layer.n_in], tout);
        }
        if l + 1 == nl {
            v.copy_from_slice(&out[..d]);
            jv.copy_from_slice(&tout[..d]);
            break;
        }
        let dhl = &mut dh[..op];
        activate_body::<T, F>(net.activation, out, Some(&mut *dhl));
        for (tv, &dv) in tout.iter_mut().zip(dhl.iter()) {
            *tv *= dv;
        }
        std::mem::swap(&mut h, &mut a);
        std::mem::swap(&mut th, &mut ta);
    }
}

/// `a ← σ(a)` (and `da ← σ'(a)`), inside a dispatched function.
#[inline(always)]
fn activate_body<T: Real, const F: bool>(act: Activation, a: &mut [T], da: Option<&mut [T]>) {
    match (act, da) {
        (Activation::Silu, None) => a.iter_mut().for_each(|v| *v = silu_d::<T, F>(*v).0),
        (Activation::Tanh, None) => a.iter_mut().for_each(|v| *v = tanh_d::<T, F>(*v).0),
        (Activation::Softplus, None) => a.iter_mut().for_each(|v| *v = softplus_d::<T, F>(*v).0),
        (Activation::Silu, Some(da)) => {
            for (v, dv) in a.iter_mut().zip(da.iter_mut()) {
                (*v, *dv) = silu_d::<T, F>(*v);
            }
        }
        (Activation::Tanh, Some(da)) => {
            for (v, dv) in a.iter_mut().zip(da.iter_mut()) {
                (*v, *dv) = tanh_d::<T, F>(*v);
            }
        }
        (Activation::Softplus, Some(da)) => {
            for (v, dv) in a.iter_mut().zip(da.iter_mut()) {
                (*v, *dv) = softplus_d::<T, F>(*v);
            }
        }
    }
}

simd_fn! {
    /// Initial tangents of a chunk: TG[(r,k), :] = σ'(a₀)[r, :] ⊙ W₀[:, k].
    fn tangents_init<T: Real>(net: &Mlp<T>, rows: usize, dh: &[T], tg: &mut [T]) {
        let (d, mp) = (net.d, net.max_pad);
        let l0 = &net.layers[0];
        let op = l0.out_pad;
        for r in 0..rows {
            let dr = &dh[r * mp..r * mp + op];
            for k in 0..d {
                let row = &mut tg[(r * d + k) * mp..(r * d + k) * mp + op];
                let wrow = &l0.wt[k * op..(k + 1) * op];
                for ((tv, &wv), &dv) in row.iter_mut().zip(wrow).zip(dr) {
                    *tv = wv * dv;
                }
            }
        }
    }
}

simd_fn! {
    /// TG[(r,k), :n] ⊙= σ'(a)[r, :n].
    fn tangents_scale<T: Real>(d: usize, mp: usize, n: usize, rows: usize, dh: &[T], tg: &mut [T]) {
        for r in 0..rows {
            let dr = &dh[r * mp..r * mp + n];
            for k in 0..d {
                let row = &mut tg[(r * d + k) * mp..(r * d + k) * mp + n];
                for (tv, &dv) in row.iter_mut().zip(dr) {
                    *tv *= dv;
                }
            }
        }
    }
}

simd_fn! {
    /// div_r = Σ_k W_L[k, :] · TG[(r,k), :].
    fn tangents_trace<T: Real>(net: &Mlp<T>, n: usize, tg: &[T], div: &mut [T]) {
        let (d, mp) = (net.d, net.max_pad);
        let last = &net.layers[net.layers.len() - 1];
        for (r, dv) in div.iter_mut().enumerate().take(n) {
            let mut tr = T::zero();
            for k in 0..d {
                let wrow = &last.w[k * last.in_pad..(k + 1) * last.in_pad];
                let trow = &tg[(r * d + k) * mp..(r * d + k) * mp + last.in_pad];
                tr += dot::<T, { fma!() }>(wrow, trow);
            }
            *dv = tr;
        }
    }
}

/// One chunk of the block path: `t.len() ≤ rows` states computed as a `rows`-row
/// chunk (zero-padded), so every GEMM has the same shape.
fn block_chunk<T: Real>(
    net: &Mlp<T>,
    rows: usize,
    t: &[T],
    x: &[T],
    v: &mut [T],
    div: Option<&mut [T]>,
    scratch: &mut [T],
) -> Result<()> {
    let (d, mp) = (net.d, net.max_pad);
    let n = t.len();
    let mut sc = scratch;
    let mut h = take(&mut sc, rows * mp);
    let mut a = take(&mut sc, rows * mp);
    let with_div = div.is_some();
    let (dh, mut tg, mut tg2) = if with_div {
        (
            take(&mut sc, rows * mp),
            take(&mut sc, rows * d * mp),
            take(&mut sc, rows * d * mp),
        )
    } else {
        (&mut [][..], &mut [][..], &mut [][..])
    };
    for (i, row) in h.chunks_exact_mut(mp).enumerate() {
        if i < n {
            row[..d].copy_from_slice(&x[i * d..(i + 1) * d]);
            row[d] = t[i];
        } else {
            row[..=d].fill(T::zero());
        }
    }
    let nl = net.layers.len();
    for (l, layer) in net.layers.iter().enumerate() {
        gemm_xwt(
            MatRef::new(h, rows, layer.n_in, mp),
            MatRef::new(&layer.w, layer.n_out, layer.n_in, layer.in_pad),
            Some(&layer.b[..layer.n_out]),
            a,
            mp,
        )?;
        if l + 1 == nl {
            for (i, vrow) in v.chunks_exact_mut(d).enumerate().take(n) {
                vrow.copy_from_slice(&a[i * mp..i * mp + d]);
            }
            break;
        }
        let no = layer.n_out;
        if with_div {
            activate_rows(net.activation, a, Some(&mut *dh), mp, no);
            if l == 0 {
                tangents_init(net, rows, dh, tg);
            } else {
                gemm_xwt(
                    MatRef::new(tg, rows * d, layer.n_in, mp),
                    MatRef::new(&layer.w, no, layer.n_in, layer.in_pad),
                    None,
                    tg2,
                    mp,
                )?;
                tangents_scale(d, mp, no, rows, dh, tg2);
                std::mem::swap(&mut tg, &mut tg2);
            }
        } else {
            activate_rows(net.activation, a, None, mp, no);
        }
        std::mem::swap(&mut h, &mut a);
    }
    if let Some(div) = div {
        tangents_trace(net, n, tg, div);
    }
    Ok(())
}

simd_fn! {
    /// `tg[r, :n] ⊙= dh[r, :n]` for the `rows` rows (stride `ld`).
    fn scale_rows<T: Real>(ld: usize, n: usize, rows: usize, dh: &[T], tg: &mut [T]) {
        for (trow, drow) in tg.chunks_exact_mut(ld).zip(dh.chunks_exact(ld)).take(rows) {
            for (tv, &dv) in trow[..n].iter_mut().zip(&drow[..n]) {
                *tv *= dv;
            }
        }
    }
}

/// One chunk of the JVP block path: like [`block_chunk`] (the same GEMM shapes, so
/// `v` is bitwise the one [`Field::eval_block`] gives), with one tangent row per state
/// pushed forward beside it.
#[allow(clippy::too_many_arguments)] // private: a chunk's inputs and outputs
fn jvp_chunk<T: Real>(
    net: &Mlp<T>,
    rows: usize,
    t: &[T],
    x: &[T],
    dx: &[T],
    v: &mut [T],
    jv: &mut [T],
    scratch: &mut [T],
) -> Result<()> {
    let (d, mp) = (net.d, net.max_pad);
    let n = t.len();
    let mut sc = scratch;
    let mut h = take(&mut sc, rows * mp);
    let mut a = take(&mut sc, rows * mp);
    let mut th = take(&mut sc, rows * mp);
    let mut ta = take(&mut sc, rows * mp);
    let dh = take(&mut sc, rows * mp);
    for (i, (row, trow)) in h
        .chunks_exact_mut(mp)
        .zip(th.chunks_exact_mut(mp))
        .enumerate()
    {
        if i < n {
            row[..d].copy_from_slice(&x[i * d..(i + 1) * d]);
            row[d] = t[i];
            trow[..d].copy_from_slice(&dx[i * d..(i + 1) * d]);
        } else {
            row[..=d].fill(T::zero());
            trow[..d].fill(T::zero());
        }
        // The time's tangent is zero.
        trow[d] = T::zero();
    }
    let nl = net.layers.len();
    for (l, layer) in net.layers.iter().enumerate() {
        let w = MatRef::new(&layer.w[..], layer.n_out, layer.n_in, layer.in_pad);
        gemm_xwt(
            MatRef::new(h, rows, layer.n_in, mp),
            w,
            Some(&layer.b[..layer.n_out]),
            a,
            mp,
        )?;
        gemm_xwt(MatRef::new(th, rows, layer.n_in, mp), w, None, ta, mp)?;
        if l + 1 == nl {
            for (i, (vrow, jrow)) in v
                .chunks_exact_mut(d)
                .zip(jv.chunks_exact_mut(d))
                .enumerate()
                .take(n)
            {
                vrow.copy_from_slice(&a[i * mp..i * mp + d]);
                jrow.copy_from_slice(&ta[i * mp..i * mp + d]);
            }
            break;
        }
        let no = layer.n_out;
        activate_rows(net.activation, a, Some(&mut *dh), mp, no);
        scale_rows(mp, no, rows, dh, ta);
        std::mem::swap(&mut h, &mut a);
        std::mem::swap(&mut th, &mut ta);
    }
    Ok(())
}

impl<T: Real> Mlp<T> {
    fn block(
        &self,
        t: &[T],
        x: &[T],
        v: &mut [T],
        mut div: Option<&mut [T]>,
        scratch: &mut [T],
    ) -> Result<()> {
        let d = self.d;
        check_block(d, t.len(), x, v)?;
        if let Some(dv) = div.as_deref() {
            check_len("divergence buffer", dv.len(), t.len())?;
        }
        let chunk = if div.is_some() {
            self.div_block_rows()
        } else {
            BLOCK_ROWS
        };
        let need = self.block_len(chunk, div.is_some());
        check_len("scratch", scratch.len().min(need), need)?;
        let mut start = 0;
        while start < t.len() {
            let n = chunk.min(t.len() - start);
            block_chunk(
                self,
                chunk,
                &t[start..start + n],
                &x[start * d..(start + n) * d],
                &mut v[start * d..(start + n) * d],
                div.as_deref_mut().map(|dv| &mut dv[start..start + n]),
                &mut scratch[..need],
            )?;
            start += n;
        }
        Ok(())
    }
}

impl<T: Real> Field<T> for Mlp<T> {
    fn dim(&self) -> usize {
        self.d
    }

    fn scratch_len(&self) -> usize {
        self.eval_scratch_len() + (1 + 2 * self.d) * self.max_pad
    }

    fn eval(&self, t: T, x: &[T], v: &mut [T], scratch: &mut [T]) -> Result<()> {
        check_len("state", x.len(), self.d)?;
        check_len("output", v.len(), self.d)?;
        let need = self.eval_scratch_len();
        check_len("scratch", scratch.len().min(need), need)?;
        single(self, t, x, v, &mut scratch[..need], false);
        Ok(())
    }

    fn eval_div(&self, t: T, x: &[T], v: &mut [T], scratch: &mut [T]) -> Result<T> {
        check_len("state", x.len(), self.d)?;
        check_len("output", v.len(), self.d)?;
        let need = Field::scratch_len(self);
        check_len("scratch", scratch.len().min(need), need)?;
        Ok(single(self, t, x, v, &mut scratch[..need], true))
    }

    /// Rows per GEMM chunk of the block paths: a block of any size is evaluated in
    /// chunks of this many rows (the last one padded, so that every GEMM has the same
    /// shape and rows do not depend on each other), so blocks of a multiple of it waste
    /// nothing.
    fn preferred_block_rows(&self) -> usize {
        BLOCK_ROWS
    }

    fn block_scratch_len(&self, rows: usize) -> usize {
        let _ = rows;
        self.block_len(BLOCK_ROWS, false)
            .max(self.block_len(self.div_block_rows(), true))
    }

    fn eval_block(&self, t: &[T], x: &[T], v: &mut [T], scratch: &mut [T]) -> Result<()> {
        self.block(t, x, v, None, scratch)
    }

    fn eval_block_div(
        &self,
        t: &[T],
        x: &[T],
        v: &mut [T],
        div: &mut [T],
        scratch: &mut [T],
    ) -> Result<()> {
        self.block(t, x, v, Some(div), scratch)
    }

    fn jvp_scratch_len(&self) -> usize {
        5 * self.max_pad
    }

    /// Forward mode with one tangent beside the primal pass (about two forward
    /// passes); `v` is bitwise the one [`Field::eval`] gives.
    fn eval_jvp(
        &self,
        t: T,
        x: &[T],
        dx: &[T],
        v: &mut [T],
        jv: &mut [T],
        scratch: &mut [T],
    ) -> Result<()> {
        check_len("state", x.len(), self.d)?;
        check_len("tangent", dx.len(), self.d)?;
        check_len("output", v.len(), self.d)?;
        check_len("Jacobian-vector product", jv.len(), self.d)?;
        let need = Field::jvp_scratch_len(self);
        check_len("scratch", scratch.len().min(need), need)?;
        single_jvp(self, t, x, dx, v, jv, &mut scratch[..need]);
        Ok(())
    }

    fn block_jvp_scratch_len(&self, rows: usize) -> usize {
        let _ = rows;
        5 * BLOCK_ROWS * self.max_pad
    }

    /// GEMM chunks of [`BLOCK_ROWS`] rows, the tangents beside the states; `v` is
    /// bitwise the one [`Field::eval_block`] gives.
    fn eval_block_jvp(
        &self,
        t: &[T],
        x: &[T],
        dx: &[T],
        v: &mut [T],
        jv: &mut [T],
        scratch: &mut [T],
    ) -> Result<()> {
        let d = self.d;
        check_block(d, t.len(), x, v)?;
        check_block(d, t.len(), dx, jv)?;
        let need = Field::block_jvp_scratch_len(self, t.len());
        check_len("scratch", scratch.len().min(need), need)?;
        let mut start = 0;
        while start < t.len() {
            let n = BLOCK_ROWS.min(t.len() - start);
            let (lo, hi) = (start * d, (start + n) * d);
            jvp_chunk(
                self,
                BLOCK_ROWS,
                &t[start..start + n],
                &x[lo..hi],
                &dx[lo..hi],
                &mut v[lo..hi],
                &mut jv[lo..hi],
                &mut scratch[..need],
            )?;
            start += n;
        }
        Ok(())
    }
}
