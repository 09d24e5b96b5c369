//! The OT-Flow potential Φ(t, x) with closed-form ∇Φ, ∂ₜΦ and exact Laplacian
//! (MATH.md §1; Onken et al. 2020):
//!
//! Φ(s) = wᵀN(s) + ½ sᵀ(AᵀA)s + c_wᵀs + c_b,  s = (x, t) ∈ R^{d+1},
//!
//! N a ResNet of `n_th` layers of width m with activation σ(u) = log(2 cosh u).
//!
//! [`OtFlow`] implements [`Potential`] (single state, caller scratch, no allocation) and
//! [`Field`] as the velocity v = −∇ₓΦ with divergence −ΔₓΦ and Jacobian–vector
//! products −(∇ₓ²Φ)·u ([`OtFlow::grad_hvp`]). Its block paths (and
//! [`OtFlow::grad_block`]) evaluate many states with GEMMs.
//!
//! Layout: the weights are stored in the compute type, zero-padded to multiples of
//! [`PAD`](crate::linalg::PAD) so that every kernel runs on whole vectors, and each
//! ResNet matrix twice (K and Kᵀ): the forward sweep reads Kᵀ and the backward sweep K,
//! both as axpy products that keep the output in registers (no horizontal sums). At
//! m = 256 the single-state sweep streams every matrix once from the L2 cache and runs
//! at its bandwidth. (Fusing the last layer's two products over one read of K needs
//! dot products, whose per-row horizontal sums cost more than the saved traffic on the
//! machine this was measured on.)
//!
//! Block results are independent of the other rows of a block, bitwise: blocks are cut
//! into chunks of a fixed number of rows ([`Field::preferred_block_rows`]; the last
//! chunk padded), so every GEMM call has the same shape whatever the caller's block.

use crate::error::{check_len, Error, Result};
use crate::field::{check_block, Field, Potential};
use crate::linalg::{
    dot, fma, gemm_xb, gemm_xwt, k_axpy, k_dot, k_matmul_acc, k_resnet_act, k_row_sqnorms,
    k_scale_rows, logcosh_tanh, madd, padded, simd_fn, MatRef,
};
use crate::nn::OtFlowParams;
use crate::Real;

/// Largest state dimension accepted.
pub const MAX_DIM: usize = 1 << 20;
/// Largest ResNet width accepted.
pub const MAX_WIDTH: usize = 1 << 16;
/// Largest number of ResNet layers accepted.
pub const MAX_LAYERS: usize = 1 << 10;
/// Largest total number of stored weights accepted.
const MAX_WEIGHTS: usize = 1 << 31;

/// Rows per GEMM chunk of the block paths without the Laplacian.
const BLOCK_ROWS: usize = 64;
/// Element budget of one per-chunk tangent buffer (rows · d · m) in the Laplacian block
/// path: sets its chunk row count.
const LAP_BLOCK_BUDGET: usize = 1 << 19;

/// The OT-Flow potential, evaluated in `T` (f32 or f64).
#[derive(Clone, Debug)]
pub struct OtFlow<T: Real> {
    d: usize,
    m: usize,
    n_th: usize,
    r: usize,
    /// d + 1, and its padded length.
    ns: usize,
    ns_pad: usize,
    m_pad: usize,
    d_pad: usize,
    eta: T,
    /// K₀: m_pad × ns_pad.
    k0: Vec<T>,
    /// K₀ᵀ: ns × m_pad.
    k0t: Vec<T>,
    /// K_i (i = 1..n_th−1): m_pad × m_pad each, concatenated.
    kh: Vec<T>,
    /// K_iᵀ: m_pad × m_pad each, concatenated.
    kht: Vec<T>,
    /// b_i: n_th × m_pad.
    b: Vec<T>,
    /// w: m_pad.
    w: Vec<T>,
    /// A: r × ns_pad.
    a: Vec<T>,
    /// Aᵀ: ns × r_pad (the forward product As in axpy form).
    at: Vec<T>,
    r_pad: usize,
    /// c_w: ns_pad.
    cw: Vec<T>,
    cb: T,
    /// trace((AᵀA)[0:d, 0:d]).
    tr_a: T,
    /// Σ_{k<d} K₀[h, k]²: m_pad.
    k0sq: Vec<T>,
}

fn shape_err(name: String, found: usize, expected: Vec<usize>) -> Error {
    Error::Shape {
        name,
        found: vec![found],
        expected,
    }
}

fn finite(name: &str, v: &[f64]) -> Result<()> {
    if v.iter().all(|x| x.is_finite()) {
        Ok(())
    } else {
        Err(Error::NonFinite(name.to_string()))
    }
}

impl<T: Real> OtFlow<T> {
    /// Builds the evaluator from parameters, checking every size (the tensors are
    /// flat, row-major; a [`Error::Shape`] reports the flat length found) and that every
    /// parameter is finite.
    pub fn new(p: &OtFlowParams) -> Result<Self> {
        let (d, m, n_th, r) = (p.d, p.m, p.n_th, p.r);
        if d == 0 || d > MAX_DIM {
            return Err(Error::InvalidArgument(format!(
                "OT-Flow state dimension d = {d} (must be 1..={MAX_DIM})"
            )));
        }
        if m == 0 || m > MAX_WIDTH {
            return Err(Error::InvalidArgument(format!(
                "OT-Flow width m = {m} (must be 1..={MAX_WIDTH})"
            )));
        }
        if !(2..=MAX_LAYERS).contains(&n_th) {
            return Err(Error::InvalidArgument(format!(
                "OT-Flow layer count nTh = {n_th} (must be 2..={MAX_LAYERS})"
            )));
        }
        if r == 0 || r > MAX_DIM {
            return Err(Error::InvalidArgument(format!(
                "OT-Flow rank r = {r} (must be 1..={MAX_DIM})"
            )));
        }
        let ns = d + 1;
        let (ns_pad, m_pad, d_pad) = (padded(ns), padded(m), padded(d));
        let total = (n_th - 1)
            .checked_mul(m_pad * m_pad)
            .and_then(|v| v.checked_mul(2))
            .and_then(|v| v.checked_add(2 * m_pad * ns_pad))
            .and_then(|v| v.checked_add(r.checked_mul(ns_pad)?))
            .filter(|&v| v <= MAX_WEIGHTS)
            .ok_or_else(|| {
                Error::Limit(format!(
                    "OT-Flow with d = {d}, m = {m}, nTh = {n_th}, r = {r} has too many weights"
                ))
            })?;
        let _ = total;

        if p.k.len() != n_th {
            return Err(Error::InvalidArgument(format!(
                "OT-Flow: {} weight matrices for nTh = {n_th} layers",
                p.k.len()
            )));
        }
        if p.b.len() != n_th {
            return Err(Error::InvalidArgument(format!(
                "OT-Flow: {} bias vectors for nTh = {n_th} layers",
                p.b.len()
            )));
        }
        for (i, k) in p.k.iter().enumerate() {
            let (rows, cols) = if i == 0 { (m, ns) } else { (m, m) };
            let name = format!("N.layers.{i}.weight");
            if k.len() != rows * cols {
                return Err(shape_err(name, k.len(), vec![rows, cols]));
            }
            finite(&name, k)?;
        }
        for (i, b) in p.b.iter().enumerate() {
            let name = format!("N.layers.{i}.bias");
            if b.len() != m {
                return Err(shape_err(name, b.len(), vec![m]));
            }
            finite(&name, b)?;
        }
        if p.w.len() != m {
            return Err(shape_err("w.weight".into(), p.w.len(), vec![1, m]));
        }
        finite("w.weight", &p.w)?;
        if p.a.len() != r * ns {
            return Err(shape_err("A".into(), p.a.len(), vec![r, ns]));
        }
        finite("A", &p.a)?;
        if p.c_weight.len() != ns {
            return Err(shape_err("c.weight".into(), p.c_weight.len(), vec![1, ns]));
        }
        finite("c.weight", &p.c_weight)?;
        if !p.c_bias.is_finite() {
            return Err(Error::NonFinite("c.bias".into()));
        }

        let cv = T::of;
        let mut k0 = vec![T::zero(); m_pad * ns_pad];
        let mut k0t = vec![T::zero(); ns * m_pad];
        let mut k0sq = vec![T::zero(); m_pad];
        for h in 0..m {
            for j in 0..ns {
                let v = p.k[0][h * ns + j];
                k0[h * ns_pad + j] = cv(v);
                k0t[j * m_pad + h] = cv(v);
            }
            k0sq[h] = (0..d)
                .map(|j| {
                    let v = cv(p.k[0][h * ns + j]);
                    v * v
                })
                .fold(T::zero(), |acc, v| acc + v);
        }
        let mm = m_pad * m_pad;
        let mut kh = vec![T::zero(); (n_th - 1) * mm];
        let mut kht = vec![T::zero(); (n_th - 1) * mm];
        for i in 1..n_th {
            let (dst, dstt) = (
                &mut kh[(i - 1) * mm..i * mm],
                &mut kht[(i - 1) * mm..i * mm],
            );
            for h in 0..m {
                for j in 0..m {
                    let v = cv(p.k[i][h * m + j]);
                    dst[h * m_pad + j] = v;
                    dstt[j * m_pad + h] = v;
                }
            }
        }
        let mut b = vec![T::zero(); n_th * m_pad];
        for (i, bi) in p.b.iter().enumerate() {
            for (dst, &v) in b[i * m_pad..].iter_mut().zip(bi) {
                *dst = cv(v);
            }
        }
        let mut w = vec![T::zero(); m_pad];
        for (dst, &v) in w.iter_mut().zip(&p.w) {
            *dst = cv(v);
        }
        let r_pad = padded(r);
        let mut a = vec![T::zero(); r * ns_pad];
        let mut at = vec![T::zero(); ns * r_pad];
        for k in 0..r {
            for j in 0..ns {
                a[k * ns_pad + j] = cv(p.a[k * ns + j]);
                at[j * r_pad + k] = cv(p.a[k * ns + j]);
            }
        }
        // trace((AᵀA)[0:d,0:d]) = Σ_k Σ_{j<d} A_kj², accumulated in f64.
        let tr_a = cv((0..r)
            .flat_map(|k| (0..d).map(move |j| (k, j)))
            .map(|(k, j)| p.a[k * ns + j] * p.a[k * ns + j])
            .sum::<f64>());
        let mut cw = vec![T::zero(); ns_pad];
        for (dst, &v) in cw.iter_mut().zip(&p.c_weight) {
            *dst = cv(v);
        }
        Ok(OtFlow {
            d,
            m,
            n_th,
            r,
            ns,
            ns_pad,
            m_pad,
            d_pad,
            eta: T::one() / T::of((n_th - 1) as f64),
            k0,
            k0t,
            kh,
            kht,
            b,
            w,
            a,
            at,
            r_pad,
            cw,
            cb: cv(p.c_bias),
            tr_a,
            k0sq,
        })
    }

    /// The parameters as evaluated, converted to f64 (exact for `OtFlow<f64>`; for
    /// `OtFlow<f32>` the values rounded to f32).
    pub fn params(&self) -> OtFlowParams {
        let (d, m, ns) = (self.d, self.m, self.ns);
        let f = |v: T| v.f64();
        let mut k = Vec::with_capacity(self.n_th);
        k.push(
            (0..m)
                .flat_map(|h| (0..ns).map(move |j| (h, j)))
                .map(|(h, j)| f(self.k0[h * self.ns_pad + j]))
                .collect(),
        );
        let mm = self.m_pad * self.m_pad;
        for i in 1..self.n_th {
            let ki = &self.kh[(i - 1) * mm..i * mm];
            k.push(
                (0..m)
                    .flat_map(|h| (0..m).map(move |j| (h, j)))
                    .map(|(h, j)| f(ki[h * self.m_pad + j]))
                    .collect(),
            );
        }
        let b = (0..self.n_th)
            .map(|i| {
                self.b[i * self.m_pad..i * self.m_pad + m]
                    .iter()
                    .map(|&v| f(v))
                    .collect()
            })
            .collect();
        OtFlowParams {
            d,
            m,
            n_th: self.n_th,
            r: self.r,
            k,
            b,
            w: self.w[..m].iter().map(|&v| f(v)).collect(),
            a: (0..self.r)
                .flat_map(|k| (0..ns).map(move |j| (k, j)))
                .map(|(k, j)| f(self.a[k * self.ns_pad + j]))
                .collect(),
            c_weight: self.cw[..ns].iter().map(|&v| f(v)).collect(),
            c_bias: f(self.cb),
        }
    }

    /// State dimension d.
    pub fn dim(&self) -> usize {
        self.d
    }

    /// ResNet width m.
    pub fn width(&self) -> usize {
        self.m
    }

    /// Number of ResNet layers nTh.
    pub fn layers(&self) -> usize {
        self.n_th
    }

    /// Scratch elements [`Potential::value`] and [`Potential::grad`] need (less than
    /// [`Potential::scratch_len`], which also covers the Laplacian).
    pub fn grad_scratch_len(&self) -> usize {
        self.ns_pad * 2 + self.m_pad * (2 * self.n_th + 3) + padded(self.r)
    }

    /// Scratch elements [`grad_hvp`](OtFlow::grad_hvp) needs.
    pub fn hvp_scratch_len(&self) -> usize {
        4 * self.ns_pad + self.m_pad * (2 * self.n_th + 7) + 2 * self.r_pad
    }

    /// Writes ∇ₓΦ(t, x) into `grad` and the Hessian–vector product (∇ₓ²Φ)·`dx` into
    /// `hv` (all of length d), and returns (Φ, ∂ₜΦ). `scratch` needs
    /// [`hvp_scratch_len`](OtFlow::hvp_scratch_len) elements; no allocation.
    ///
    /// Forward mode over the gradient's sweeps (MATH.md §1): the tangents of the
    /// ResNet's pre-activations δa_i along s = (dx, 0), then of the backward sweep,
    /// δz_i = δz_{i+1} + η K_iᵀ(σ''(a_i) ⊙ δa_i ⊙ z_{i+1} + tanh(a_i) ⊙ δz_{i+1}),
    /// and (AᵀA)(dx, 0) for the quadratic term: about two gradients' work, against
    /// the exact Laplacian's O(m²d). The gradient is bitwise the one
    /// [`Potential::grad`] gives.
    pub fn grad_hvp(
        &self,
        t: T,
        x: &[T],
        dx: &[T],
        grad: &mut [T],
        hv: &mut [T],
        scratch: &mut [T],
    ) -> Result<(T, T)> {
        let need = self.hvp_scratch_len();
        self.check_single(x, scratch, need)?;
        check_len("tangent", dx.len(), self.d)?;
        check_len("gradient", grad.len(), self.d)?;
        check_len("Hessian-vector product", hv.len(), self.d)?;
        Ok(single_hvp(self, t, x, dx, grad, hv, &mut scratch[..need]))
    }

    fn lap_scratch_len(&self) -> usize {
        self.grad_scratch_len() + 2 * self.m_pad * self.d_pad
    }

    fn lap_block_rows(&self) -> usize {
        (LAP_BLOCK_BUDGET / (self.d * self.m_pad)).clamp(1, BLOCK_ROWS)
    }

    fn chunk_scratch_len(&self, rows: usize, lap: bool) -> usize {
        let (m, ns) = (self.m_pad, self.ns_pad);
        // S, GS: rows × ns; A, U, Z, G: rows × m; TS: n_th × rows × m;
        // ZS (lap): n_th × rows × m; JT, KJT (lap): 2 × rows·d × m.
        let mut n = 2 * rows * ns + 4 * rows * m + self.n_th * rows * m;
        if lap {
            n += self.n_th * rows * m + 2 * rows * self.d * m + m;
        }
        n
    }

    /// Scratch elements [`grad_block`](OtFlow::grad_block) needs, for any number of
    /// rows, with or without the Laplacian.
    pub fn grad_block_scratch_len(&self, lap: bool) -> usize {
        if lap {
            self.chunk_scratch_len(self.lap_block_rows(), true)
        } else {
            self.chunk_scratch_len(BLOCK_ROWS, false)
        }
    }

    /// Block evaluation: for each row i (state `x[i·d..(i+1)·d]` at time `t[i]`) writes
    /// ∇ₓΦ into `grad` (rows × d), Φ into `phi[i]`, ∂ₜΦ into `dt_phi[i]` and, when `lap`
    /// is given, the exact Laplacian ΔₓΦ into `lap[i]`. `scratch` needs
    /// [`grad_block_scratch_len`](OtFlow::grad_block_scratch_len) elements.
    ///
    /// Rows are evaluated in GEMM chunks of a fixed size, so each row's result does not
    /// depend on the other rows (bitwise). It agrees with the single-state path to
    /// rounding (the summation orders differ), not bitwise.
    #[allow(clippy::too_many_arguments)]
    pub fn grad_block(
        &self,
        t: &[T],
        x: &[T],
        grad: &mut [T],
        phi: &mut [T],
        dt_phi: &mut [T],
        lap: Option<&mut [T]>,
        scratch: &mut [T],
    ) -> Result<()> {
        let rows = t.len();
        check_block(self.d, rows, x, grad)?;
        check_len("potential block", phi.len(), rows)?;
        check_len("time-derivative block", dt_phi.len(), rows)?;
        let with_lap = lap.is_some();
        let need = self.grad_block_scratch_len(with_lap);
        check_len("scratch", scratch.len().min(need), need)?;
        let chunk = if with_lap {
            self.lap_block_rows()
        } else {
            BLOCK_ROWS
        };
        let mut lap = lap;
        if let Some(l) = lap.as_deref() {
            check_len("Laplacian block", l.len(), rows)?;
        }
        let d = self.d;
        let mut start = 0;
        while start < rows {
            let n = chunk.min(rows - start);
            let out = BlockOut {
                grad: &mut grad[start * d..(start + n) * d],
                phi: &mut phi[start..start + n],
                dt: &mut dt_phi[start..start + n],
                lap: lap.as_deref_mut().map(|l| &mut l[start..start + n]),
            };
            block_chunk(
                self,
                chunk,
                &t[start..start + n],
                &x[start * d..(start + n) * d],
                out,
                &mut scratch[..need],
            )?;
            start += n;
        }
        Ok(())
    }

    fn check_single(&self, x: &[T], scratch: &[T], need: usize) -> Result<()> {
        check_len("state", x.len(), self.d)?;
        check_len("scratch", scratch.len().min(need), need)
    }
}

/// Splits `n` elements off the front of `buf`. Callers check the total length first
/// (the scratch layouts are sums of these takes).
fn take<'a, T>(buf: &mut &'a mut [T], n: usize) -> &'a mut [T] {
    let b = std::mem::take(buf);
    let (head, tail) = b.split_at_mut(n.min(b.len()));
    *buf = tail;
    head
}

/// What a single-state sweep computes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Value,
    Grad,
    GradLap,
}

/// Single-state forward and backward sweeps (MATH.md §1). `grad` gets ∇ₓΦ (unless
/// `Mode::Value`); returns (Φ, ∂ₜΦ, ΔₓΦ), the last two zero when not computed.
///
/// Plain code over the dispatched kernels of [`crate::linalg`] (each a few ns of
/// dispatch): the products and activations run in the best SIMD the CPU has.
fn single<T: Real>(
    net: &OtFlow<T>,
    mode: Mode,
    t: T,
    x: &[T],
    grad: &mut [T],
    scratch: &mut [T],
) -> (T, T, T) {
    let (d, ns, nsp, mp, nth) = (net.d, net.ns, net.ns_pad, net.m_pad, net.n_th);
    let eta = net.eta;
    let mm = mp * mp;
    let mut sc = scratch;
    let s = take(&mut sc, nsp);
    let gs = take(&mut sc, nsp);
    let ts = take(&mut sc, nth * mp);
    let zs = take(&mut sc, nth * mp);
    let u = take(&mut sc, mp);
    let a = take(&mut sc, mp);
    let g = take(&mut sc, mp);
    let q = take(&mut sc, padded(net.r));
    q.fill(T::zero());

    s[..d].copy_from_slice(x);
    s[d] = t;
    s[ns..].fill(T::zero());

    // Forward: a₀ = K₀s + b₀, u₀ = σ(a₀); u_i = u_{i−1} + η σ(K_i u_{i−1} + b_i).
    a.copy_from_slice(&net.b[..mp]);
    k_axpy(&net.k0t, mp, &s[..ns], a);
    k_resnet_act(true, eta, a, u, &mut ts[..mp]);
    for i in 1..nth {
        a.copy_from_slice(&net.b[i * mp..(i + 1) * mp]);
        k_axpy(&net.kht[(i - 1) * mm..i * mm], mp, u, a);
        k_resnet_act(false, eta, a, u, &mut ts[i * mp..(i + 1) * mp]);
    }
    // Φ = wᵀu + ½|As|² + c_wᵀs + c_b.
    k_axpy(&net.at, net.r_pad, &s[..ns], q);
    let quad_lin = T::of(0.5) * k_dot(q, q) + k_dot(&net.cw, s) + net.cb;
    let phi = k_dot(&net.w, u) + quad_lin;
    if mode == Mode::Value {
        return (phi, T::zero(), T::zero());
    }

    // Backward: z_{nTh} = w; z_i = z_{i+1} + η K_iᵀ(tanh(a_i) ⊙ z_{i+1}); zs[i] = z_i.
    for i in (1..nth).rev() {
        let (lo, hi) = zs.split_at_mut((i + 1) * mp);
        let zi = &mut lo[i * mp..];
        let znext: &[T] = if i + 1 == nth { &net.w } else { &hi[..mp] };
        let ti = &ts[i * mp..(i + 1) * mp];
        for ((gv, &tv), &zv) in g.iter_mut().zip(ti).zip(znext) {
            *gv = eta * tv * zv;
        }
        zi.copy_from_slice(znext);
        k_axpy(&net.kh[(i - 1) * mm..i * mm], mp, g, zi);
    }
    // z₀ = K₀ᵀ(tanh(a₀) ⊙ z₁); ∇_sΦ = z₀ + AᵀAs + c_w.
    for ((gv, &tv), &zv) in g.iter_mut().zip(&ts[..mp]).zip(&zs[mp..2 * mp]) {
        *gv = tv * zv;
    }
    gs.copy_from_slice(&net.cw);
    k_axpy(&net.a, nsp, &q[..net.r], gs);
    k_axpy(&net.k0, nsp, g, gs);
    grad[..d].copy_from_slice(&gs[..d]);
    let dt = gs[d];
    if mode == Mode::Grad {
        return (phi, dt, T::zero());
    }

    // Exact Laplacian: J₀ = diag(tanh a₀) K₀E; per layer KJ = K_i J, accumulate
    // η Σ (σ''(a_i) ⊙ z_{i+1}) ⊙ KJ², J ← J + η diag(tanh a_i) KJ.
    let dp = net.d_pad;
    let j = take(&mut sc, mp * dp);
    let kj = take(&mut sc, mp * dp);
    // c = (1 − tanh²(a₀)) ⊙ z₁ into g; the first term is Σ_h c_h Σ_{k<d} K₀[h,k]².
    for ((gv, &tv), &zv) in g.iter_mut().zip(&ts[..mp]).zip(&zs[mp..2 * mp]) {
        *gv = (T::one() - tv * tv) * zv;
    }
    let mut tr = k_dot(g, &net.k0sq);
    j.fill(T::zero());
    k_scale_rows(&ts[..mp], &net.k0, nsp, j, dp, d, false);
    for i in 1..nth {
        kj.fill(T::zero());
        k_matmul_acc(mp, mp, dp, &net.kh[(i - 1) * mm..i * mm], mp, j, dp, kj, dp);
        let znext: &[T] = if i + 1 == nth {
            &net.w
        } else {
            &zs[(i + 1) * mp..(i + 2) * mp]
        };
        let ti = &ts[i * mp..(i + 1) * mp];
        for ((gv, &tv), &zv) in g.iter_mut().zip(ti).zip(znext) {
            *gv = (T::one() - tv * tv) * zv;
        }
        k_row_sqnorms(kj, dp, dp, a);
        tr += eta * k_dot(g, a);
        if i + 1 < nth {
            for (av, &tv) in a.iter_mut().zip(ti) {
                *av = eta * tv;
            }
            k_scale_rows(a, kj, dp, j, dp, dp, true);
        }
    }
    (phi, dt, tr + net.tr_a)
}

/// Single-state gradient and Hessian–vector product ([`OtFlow::grad_hvp`]): the
/// sweeps of [`single`] (same kernels, same order, so the same gradient bits) with a
/// tangent beside each. Returns (Φ, ∂ₜΦ).
fn single_hvp<T: Real>(
    net: &OtFlow<T>,
    t: T,
    x: &[T],
    dx: &[T],
    grad: &mut [T],
    hv: &mut [T],
    scratch: &mut [T],
) -> (T, T) {
    let (d, ns, nsp, mp, nth) = (net.d, net.ns, net.ns_pad, net.m_pad, net.n_th);
    let eta = net.eta;
    let mm = mp * mp;
    let mut sc = scratch;
    let s = take(&mut sc, nsp);
    let gs = take(&mut sc, nsp);
    let ds = take(&mut sc, nsp);
    let dgs = take(&mut sc, nsp);
    let ts = take(&mut sc, nth * mp);
    let das = take(&mut sc, nth * mp);
    let u = take(&mut sc, mp);
    let a = take(&mut sc, mp);
    let du = take(&mut sc, mp);
    let z = take(&mut sc, mp);
    let dz = take(&mut sc, mp);
    let g = take(&mut sc, mp);
    let dg = take(&mut sc, mp);
    let q = take(&mut sc, net.r_pad);
    let dq = take(&mut sc, net.r_pad);
    q.fill(T::zero());
    dq.fill(T::zero());

    s[..d].copy_from_slice(x);
    s[d] = t;
    s[ns..].fill(T::zero());
    ds[..d].copy_from_slice(dx);
    ds[d..].fill(T::zero());

    // Forward with tangents: δa₀ = K₀δs, δu₀ = tanh(a₀) ⊙ δa₀; δa_i = K_i δu_{i−1},
    // δu_i = δu_{i−1} + η tanh(a_i) ⊙ δa_i.
    a.copy_from_slice(&net.b[..mp]);
    k_axpy(&net.k0t, mp, &s[..ns], a);
    k_resnet_act(true, eta, a, u, &mut ts[..mp]);
    let da0 = &mut das[..mp];
    da0.fill(T::zero());
    k_axpy(&net.k0t, mp, &ds[..ns], da0);
    for ((duv, &tv), &dav) in du.iter_mut().zip(&ts[..mp]).zip(da0.iter()) {
        *duv = tv * dav;
    }
    for i in 1..nth {
        a.copy_from_slice(&net.b[i * mp..(i + 1) * mp]);
        k_axpy(&net.kht[(i - 1) * mm..i * mm], mp, u, a);
        k_resnet_act(false, eta, a, u, &mut ts[i * mp..(i + 1) * mp]);
        let dai = &mut das[i * mp..(i + 1) * mp];
        dai.fill(T::zero());
        k_axpy(&net.kht[(i - 1) * mm..i * mm], mp, du, dai);
        for ((duv, &tv), &dav) in du.iter_mut().zip(&ts[i * mp..(i + 1) * mp]).zip(dai.iter()) {
            *duv += eta * tv * dav;
        }
    }
    // Φ = wᵀu + ½|As|² + c_wᵀs + c_b.
    k_axpy(&net.at, net.r_pad, &s[..ns], q);
    let quad_lin = T::of(0.5) * k_dot(q, q) + k_dot(&net.cw, s) + net.cb;
    let phi = k_dot(&net.w, u) + quad_lin;

    // Backward with tangents, z and δz in place (z_{nTh} = w, δz_{nTh} = 0).
    z.copy_from_slice(&net.w);
    dz.fill(T::zero());
    for i in (1..nth).rev() {
        let ti = &ts[i * mp..(i + 1) * mp];
        let dai = &das[i * mp..(i + 1) * mp];
        for ((gv, &tv), &zv) in g.iter_mut().zip(ti).zip(z.iter()) {
            *gv = eta * tv * zv;
        }
        for ((((dgv, &tv), &zv), &dzv), &dav) in
            dg.iter_mut().zip(ti).zip(z.iter()).zip(dz.iter()).zip(dai)
        {
            *dgv = eta * ((T::one() - tv * tv) * dav * zv + tv * dzv);
        }
        k_axpy(&net.kh[(i - 1) * mm..i * mm], mp, g, z);
        k_axpy(&net.kh[(i - 1) * mm..i * mm], mp, dg, dz);
    }
    // z₀ = K₀ᵀ(tanh(a₀) ⊙ z₁), δz₀ = K₀ᵀ(σ''(a₀) ⊙ δa₀ ⊙ z₁ + tanh(a₀) ⊙ δz₁);
    // ∇_sΦ = z₀ + AᵀAs + c_w, its tangent δz₀ + AᵀAδs.
    for ((((gv, dgv), &tv), &zv), (&dzv, &dav)) in g
        .iter_mut()
        .zip(dg.iter_mut())
        .zip(&ts[..mp])
        .zip(z.iter())
        .zip(dz.iter().zip(&das[..mp]))
    {
        *gv = tv * zv;
        *dgv = (T::one() - tv * tv) * dav * zv + tv * dzv;
    }
    gs.copy_from_slice(&net.cw);
    k_axpy(&net.a, nsp, &q[..net.r], gs);
    k_axpy(&net.k0, nsp, g, gs);
    k_axpy(&net.at, net.r_pad, &ds[..ns], dq);
    dgs.fill(T::zero());
    k_axpy(&net.a, nsp, &dq[..net.r], dgs);
    k_axpy(&net.k0, nsp, dg, dgs);
    grad[..d].copy_from_slice(&gs[..d]);
    hv[..d].copy_from_slice(&dgs[..d]);
    (phi, gs[d])
}

/// Per-chunk outputs of the block path.
struct BlockOut<'a, T> {
    grad: &'a mut [T],
    phi: &'a mut [T],
    dt: &'a mut [T],
    lap: Option<&'a mut [T]>,
}

/// One chunk of `grad_block`: `t.len() ≤ rows` states, computed as a `rows`-row chunk
/// (padded with zero states) so that every GEMM call has the same shape.
fn block_chunk<T: Real>(
    net: &OtFlow<T>,
    rows: usize,
    t: &[T],
    x: &[T],
    out: BlockOut<'_, T>,
    scratch: &mut [T],
) -> Result<()> {
    let (d, ns, nsp, mp, nth) = (net.d, net.ns, net.ns_pad, net.m_pad, net.n_th);
    let mm = mp * mp;
    let with_lap = out.lap.is_some();
    let mut sc = scratch;
    let s = take(&mut sc, rows * nsp);
    let gs = take(&mut sc, rows * nsp);
    let a = take(&mut sc, rows * mp);
    let u = take(&mut sc, rows * mp);
    let z = take(&mut sc, rows * mp);
    let g = take(&mut sc, rows * mp);
    let ts = take(&mut sc, nth * rows * mp);

    let n = t.len();
    for (i, srow) in s.chunks_exact_mut(nsp).enumerate() {
        if i < n {
            srow[..d].copy_from_slice(&x[i * d..(i + 1) * d]);
            srow[d] = t[i];
            srow[ns..].fill(T::zero());
        } else {
            srow.fill(T::zero());
        }
    }
    // Forward.
    gemm_xwt(
        MatRef::new(s, rows, ns, nsp),
        MatRef::new(&net.k0, mp, ns, nsp),
        Some(&net.b[..mp]),
        a,
        mp,
    )?;
    block_act(net.eta, a, u, &mut ts[..rows * mp], true);
    for i in 1..nth {
        gemm_xwt(
            MatRef::new(u, rows, mp, mp),
            MatRef::new(&net.kh[(i - 1) * mm..i * mm], mp, mp, mp),
            Some(&net.b[i * mp..(i + 1) * mp]),
            a,
            mp,
        )?;
        block_act(
            net.eta,
            a,
            u,
            &mut ts[i * rows * mp..(i + 1) * rows * mp],
            false,
        );
    }
    // Backward; with the Laplacian, keep every z_i (i = 1..nTh−1).
    let zs = if with_lap {
        Some(take(&mut sc, nth * rows * mp))
    } else {
        None
    };
    for zrow in z.chunks_exact_mut(mp) {
        zrow.copy_from_slice(&net.w);
    }
    let mut zs = zs;
    for i in (1..nth).rev() {
        scale_prod(net.eta, &ts[i * rows * mp..(i + 1) * rows * mp], z, g);
        gemm_xb(
            MatRef::new(g, rows, mp, mp),
            MatRef::new(&net.kh[(i - 1) * mm..i * mm], mp, mp, mp),
            z,
            mp,
            true,
        )?;
        if let Some(zs) = zs.as_deref_mut() {
            zs[i * rows * mp..(i + 1) * rows * mp].copy_from_slice(z);
        }
    }
    scale_prod(T::one(), &ts[..rows * mp], z, g);
    gemm_xb(
        MatRef::new(g, rows, mp, mp),
        MatRef::new(&net.k0, mp, nsp, nsp),
        gs,
        nsp,
        false,
    )?;
    block_finish(net, n, s, gs, u, out.grad, out.phi, out.dt);

    let (Some(lap), Some(zs)) = (out.lap, zs) else {
        return Ok(());
    };
    // Laplacian: tangent rows JT[(r, k), :] = (column k of J for row r)ᵀ.
    let jt = take(&mut sc, rows * d * mp);
    let kjt = take(&mut sc, rows * d * mp);
    let sq = take(&mut sc, mp);
    let mut tr = [T::zero(); BLOCK_ROWS];
    lap_init(
        net,
        rows,
        &ts[..rows * mp],
        &zs[rows * mp..2 * rows * mp],
        jt,
        &mut tr[..rows],
    );
    for i in 1..nth {
        gemm_xwt(
            MatRef::new(jt, rows * d, mp, mp),
            MatRef::new(&net.kh[(i - 1) * mm..i * mm], mp, mp, mp),
            None,
            kjt,
            mp,
        )?;
        let znext: Option<&[T]> = if i + 1 == nth {
            None
        } else {
            Some(&zs[(i + 1) * rows * mp..(i + 2) * rows * mp])
        };
        lap_layer(
            net,
            rows,
            &ts[i * rows * mp..(i + 1) * rows * mp],
            znext,
            jt,
            kjt,
            i + 1 < nth,
            sq,
            &mut tr[..rows],
        );
    }
    for (l, &v) in lap.iter_mut().zip(tr.iter()) {
        *l = v + net.tr_a;
    }
    Ok(())
}

/// Scratch elements of one chunk of the block JVP ([`jvp_chunk`]).
fn jvp_chunk_scratch_len<T: Real>(net: &OtFlow<T>) -> usize {
    let (r, m, ns) = (BLOCK_ROWS, net.m_pad, net.ns_pad);
    // S, DS, GS, DGS: rows × ns; A, U, DU, Z, DZ, G, DG: rows × m; TS, DAS: n_th ×
    // rows × m; φ, ∂ₜφ: rows.
    4 * r * ns + 7 * r * m + 2 * net.n_th * r * m + 2 * r
}

/// One chunk of the block JVP: `t.len() ≤ BLOCK_ROWS` states computed as a
/// `BLOCK_ROWS`-row chunk (padded with zero states), writing ∇ₓΦ into `grad` and
/// (∇ₓ²Φ)·dx into `hv`. The primal GEMMs and maps are those of [`block_chunk`] without
/// the Laplacian (same shapes, same order: the gradient is bitwise the block path's);
/// the tangents are those of [`single_hvp`], each layer's as one more GEMM.
#[allow(clippy::too_many_arguments)] // private: a chunk's inputs and outputs
fn jvp_chunk<T: Real>(
    net: &OtFlow<T>,
    t: &[T],
    x: &[T],
    dx: &[T],
    grad: &mut [T],
    hv: &mut [T],
    scratch: &mut [T],
) -> Result<()> {
    let rows = BLOCK_ROWS;
    let (d, ns, nsp, mp, nth) = (net.d, net.ns, net.ns_pad, net.m_pad, net.n_th);
    let mm = mp * mp;
    let mut sc = scratch;
    let s = take(&mut sc, rows * nsp);
    let ds = take(&mut sc, rows * nsp);
    let gs = take(&mut sc, rows * nsp);
    let dgs = take(&mut sc, rows * nsp);
    let a = take(&mut sc, rows * mp);
    let u = take(&mut sc, rows * mp);
    let du = take(&mut sc, rows * mp);
    let z = take(&mut sc, rows * mp);
    let dz = take(&mut sc, rows * mp);
    let g = take(&mut sc, rows * mp);
    let dg = take(&mut sc, rows * mp);
    let ts = take(&mut sc, nth * rows * mp);
    let das = take(&mut sc, nth * rows * mp);
    let phi = take(&mut sc, rows);
    let dt = take(&mut sc, rows);

    let n = t.len();
    for (i, (srow, drow)) in s
        .chunks_exact_mut(nsp)
        .zip(ds.chunks_exact_mut(nsp))
        .enumerate()
    {
        srow.fill(T::zero());
        drow.fill(T::zero());
        if i < n {
            srow[..d].copy_from_slice(&x[i * d..(i + 1) * d]);
            srow[d] = t[i];
            drow[..d].copy_from_slice(&dx[i * d..(i + 1) * d]);
        }
    }
    // Forward, with δa_i = K_i δu_{i−1} (δa₀ = K₀δs) and δu_i = δu_{i−1} + η tanh(a_i) ⊙
    // δa_i (δu₀ = tanh(a₀) ⊙ δa₀).
    let k0 = MatRef::new(&net.k0, mp, ns, nsp);
    gemm_xwt(MatRef::new(s, rows, ns, nsp), k0, Some(&net.b[..mp]), a, mp)?;
    block_act(net.eta, a, u, &mut ts[..rows * mp], true);
    gemm_xwt(
        MatRef::new(ds, rows, ns, nsp),
        k0,
        None,
        &mut das[..rows * mp],
        mp,
    )?;
    for ((duv, &tv), &dav) in du.iter_mut().zip(&ts[..rows * mp]).zip(&das[..rows * mp]) {
        *duv = tv * dav;
    }
    for i in 1..nth {
        let ki = MatRef::new(&net.kh[(i - 1) * mm..i * mm], mp, mp, mp);
        let layer = i * rows * mp..(i + 1) * rows * mp;
        gemm_xwt(
            MatRef::new(u, rows, mp, mp),
            ki,
            Some(&net.b[i * mp..(i + 1) * mp]),
            a,
            mp,
        )?;
        gemm_xwt(
            MatRef::new(du, rows, mp, mp),
            ki,
            None,
            &mut das[layer.clone()],
            mp,
        )?;
        block_act(net.eta, a, u, &mut ts[layer.clone()], false);
        for ((duv, &tv), &dav) in du.iter_mut().zip(&ts[layer.clone()]).zip(&das[layer]) {
            *duv += net.eta * tv * dav;
        }
    }
    // Backward, z and δz together (z_{nTh} = w, δz_{nTh} = 0).
    for zrow in z.chunks_exact_mut(mp) {
        zrow.copy_from_slice(&net.w);
    }
    dz.fill(T::zero());
    for i in (1..nth).rev() {
        let layer = i * rows * mp..(i + 1) * rows * mp;
        let ki = MatRef::new(&net.kh[(i - 1) * mm..i * mm], mp, mp, mp);
        scale_prod(net.eta, &ts[layer.clone()], z, g);
        tangent_prod(net.eta, &ts[layer.clone()], &das[layer], z, dz, dg);
        gemm_xb(MatRef::new(g, rows, mp, mp), ki, z, mp, true)?;
        gemm_xb(MatRef::new(dg, rows, mp, mp), ki, dz, mp, true)?;
    }
    scale_prod(T::one(), &ts[..rows * mp], z, g);
    tangent_prod(T::one(), &ts[..rows * mp], &das[..rows * mp], z, dz, dg);
    let k0b = MatRef::new(&net.k0, mp, nsp, nsp);
    gemm_xb(MatRef::new(g, rows, mp, mp), k0b, gs, nsp, false)?;
    gemm_xb(MatRef::new(dg, rows, mp, mp), k0b, dgs, nsp, false)?;
    block_finish(net, n, s, gs, u, grad, phi, dt);
    // The quadratic term's tangent (AᵀA)δs, row by row.
    for i in 0..n {
        let drow = &ds[i * nsp..(i + 1) * nsp];
        let hrow = &mut dgs[i * nsp..(i + 1) * nsp];
        for k in 0..net.r {
            let arow = &net.a[k * nsp..(k + 1) * nsp];
            let qk = k_dot(arow, drow);
            for (hv, &av) in hrow.iter_mut().zip(arow) {
                *hv += qk * av;
            }
        }
        hv[i * d..(i + 1) * d].copy_from_slice(&hrow[..d]);
    }
    Ok(())
}

/// `dg ← c · ((1 − ts²) ⊙ da ⊙ z + ts ⊙ dz)` (elementwise): the tangent of
/// `c · tanh(a) ⊙ z`.
fn tangent_prod<T: Real>(c: T, ts: &[T], da: &[T], z: &[T], dz: &[T], dg: &mut [T]) {
    for ((((gv, &tv), &av), &zv), &dzv) in dg.iter_mut().zip(ts).zip(da).zip(z).zip(dz) {
        *gv = c * ((T::one() - tv * tv) * av * zv + tv * dzv);
    }
}

simd_fn! {
    /// `u ← σ(a)` (first layer) or `u ← u + η σ(a)`, and `ts ← tanh(a)`.
    fn block_act<T: Real>(eta: T, a: &[T], u: &mut [T], ts: &mut [T], first: bool) {
        const F: bool = fma!();
        if first {
            for ((uv, tv), &av) in u.iter_mut().zip(ts.iter_mut()).zip(a) {
                let (sg, th) = logcosh_tanh::<T, F>(av);
                *uv = sg;
                *tv = th;
            }
        } else {
            for ((uv, tv), &av) in u.iter_mut().zip(ts.iter_mut()).zip(a) {
                let (sg, th) = logcosh_tanh::<T, F>(av);
                *uv = madd::<T, F>(eta, sg, *uv);
                *tv = th;
            }
        }
    }
}

/// `g ← c · ts ⊙ z` (elementwise).
fn scale_prod<T: Real>(c: T, ts: &[T], z: &[T], g: &mut [T]) {
    for ((gv, &tv), &zv) in g.iter_mut().zip(ts).zip(z) {
        *gv = c * tv * zv;
    }
}

simd_fn! {
    /// Per-row quadratic and linear terms, and the outputs.
    #[allow(clippy::too_many_arguments)]
    fn block_finish<T: Real>(
        net: &OtFlow<T>,
        n: usize,
        s: &[T],
        gs: &mut [T],
        u: &[T],
        grad: &mut [T],
        phi: &mut [T],
        dt: &mut [T],
    ) {
        const F: bool = fma!();
        let (d, nsp, mp) = (net.d, net.ns_pad, net.m_pad);
        for i in 0..n {
            let srow = &s[i * nsp..(i + 1) * nsp];
            let grow = &mut gs[i * nsp..(i + 1) * nsp];
            let urow = &u[i * mp..(i + 1) * mp];
            let mut qq = T::zero();
            for k in 0..net.r {
                let arow = &net.a[k * nsp..(k + 1) * nsp];
                let qk = dot::<T, F>(arow, srow);
                qq = madd::<T, F>(qk, qk, qq);
                for (gv, &av) in grow.iter_mut().zip(arow) {
                    *gv = madd::<T, F>(qk, av, *gv);
                }
            }
            for (gv, &cv) in grow.iter_mut().zip(&net.cw) {
                *gv += cv;
            }
            grad[i * d..(i + 1) * d].copy_from_slice(&grow[..d]);
            dt[i] = grow[d];
            phi[i] = dot::<T, F>(&net.w, urow)
                + T::of(0.5) * qq
                + dot::<T, F>(&net.cw, srow)
                + net.cb;
        }
    }
}

simd_fn! {
    /// First Laplacian term and the initial tangents JT[(r,k), h] = tanh(a₀)[r,h]·K₀[h,k].
    fn lap_init<T: Real>(
        net: &OtFlow<T>,
        rows: usize,
        t0: &[T],
        z1: &[T],
        jt: &mut [T],
        tr: &mut [T],
    ) {
        const F: bool = fma!();
        let (d, mp) = (net.d, net.m_pad);
        for r in 0..rows {
            let trow = &t0[r * mp..(r + 1) * mp];
            let zrow = &z1[r * mp..(r + 1) * mp];
            let mut acc = T::zero();
            for h in 0..mp {
                acc = madd::<T, F>(madd::<T, F>(-trow[h], trow[h], T::one()) * zrow[h], net.k0sq[h], acc);
            }
            tr[r] = acc;
            for k in 0..d {
                let krow = &net.k0t[k * mp..(k + 1) * mp];
                let jrow = &mut jt[(r * d + k) * mp..(r * d + k + 1) * mp];
                for ((jv, &tv), &kv) in jrow.iter_mut().zip(trow).zip(krow) {
                    *jv = tv * kv;
                }
            }
        }
    }
}

simd_fn! {
    /// One layer of the Laplacian sweep on tangent rows.
    #[allow(clippy::too_many_arguments)]
    fn lap_layer<T: Real>(
        net: &OtFlow<T>,
        rows: usize,
        ti: &[T],
        znext: Option<&[T]>,
        jt: &mut [T],
        kjt: &[T],
        update: bool,
        sq: &mut [T],
        tr: &mut [T],
    ) {
        const F: bool = fma!();
        let (d, mp) = (net.d, net.m_pad);
        for r in 0..rows {
            let trow = &ti[r * mp..(r + 1) * mp];
            let zrow: &[T] = match znext {
                Some(z) => &z[r * mp..(r + 1) * mp],
                None => &net.w,
            };
            // Σ_h c_h Σ_k KJ[(r,k),h]², c = (1 − tanh²) ⊙ z_{i+1}: sum the squares over
            // the tangent rows first (vectorized over h), then weight.
            let block = &kjt[r * d * mp..(r + 1) * d * mp];
            sq.fill(T::zero());
            for kr in block.chunks_exact(mp) {
                for (sv, &v) in sq.iter_mut().zip(kr) {
                    *sv = madd::<T, F>(v, v, *sv);
                }
            }
            let mut acc = T::zero();
            for h in 0..mp {
                let ch = madd::<T, F>(-trow[h], trow[h], T::one()) * zrow[h];
                acc = madd::<T, F>(ch, sq[h], acc);
            }
            tr[r] = madd::<T, F>(net.eta, acc, tr[r]);
            if update {
                let jblock = &mut jt[r * d * mp..(r + 1) * d * mp];
                for k in 0..d {
                    let kr = &block[k * mp..(k + 1) * mp];
                    let jr = &mut jblock[k * mp..(k + 1) * mp];
                    for ((jv, &kv), &tv) in jr.iter_mut().zip(kr).zip(trow) {
                        *jv = madd::<T, F>(net.eta * tv, kv, *jv);
                    }
                }
            }
        }
    }
}

impl<T: Real> Potential<T> for OtFlow<T> {
    fn dim(&self) -> usize {
        self.d
    }

    fn scratch_len(&self) -> usize {
        self.lap_scratch_len()
    }

    fn value(&self, t: T, x: &[T], scratch: &mut [T]) -> Result<T> {
        let need = self.grad_scratch_len();
        self.check_single(x, scratch, need)?;
        let (phi, _, _) = single(self, Mode::Value, t, x, &mut [], &mut scratch[..need]);
        Ok(phi)
    }

    fn grad(&self, t: T, x: &[T], grad: &mut [T], scratch: &mut [T]) -> Result<(T, T)> {
        let need = self.grad_scratch_len();
        self.check_single(x, scratch, need)?;
        check_len("gradient", grad.len(), self.d)?;
        let (phi, dt, _) = single(self, Mode::Grad, t, x, grad, &mut scratch[..need]);
        Ok((phi, dt))
    }

    fn grad_lap(&self, t: T, x: &[T], grad: &mut [T], scratch: &mut [T]) -> Result<(T, T, T)> {
        let need = self.lap_scratch_len();
        self.check_single(x, scratch, need)?;
        check_len("gradient", grad.len(), self.d)?;
        Ok(single(
            self,
            Mode::GradLap,
            t,
            x,
            grad,
            &mut scratch[..need],
        ))
    }
}

impl<T: Real> Field<T> for OtFlow<T> {
    fn dim(&self) -> usize {
        self.d
    }

    fn scratch_len(&self) -> usize {
        self.lap_scratch_len()
    }

    fn eval(&self, t: T, x: &[T], v: &mut [T], scratch: &mut [T]) -> Result<()> {
        Potential::grad(self, t, x, v, scratch)?;
        for vi in v.iter_mut() {
            *vi = -*vi;
        }
        Ok(())
    }

    fn eval_div(&self, t: T, x: &[T], v: &mut [T], scratch: &mut [T]) -> Result<T> {
        let (_, _, lap) = Potential::grad_lap(self, t, x, v, scratch)?;
        for vi in v.iter_mut() {
            *vi = -*vi;
        }
        Ok(-lap)
    }

    fn jvp_scratch_len(&self) -> usize {
        self.hvp_scratch_len()
    }

    /// v = −∇ₓΦ and (∂v/∂x)·dx = −(∇ₓ²Φ)·dx, through [`OtFlow::grad_hvp`]; `v` is
    /// bitwise the one [`Field::eval`] gives.
    fn eval_jvp(
        &self,
        t: T,
        x: &[T],
        dx: &[T],
        v: &mut [T],
        jv: &mut [T],
        scratch: &mut [T],
    ) -> Result<()> {
        self.grad_hvp(t, x, dx, v, jv, scratch)?;
        for vi in v.iter_mut().chain(jv.iter_mut()) {
            *vi = -*vi;
        }
        Ok(())
    }

    fn block_jvp_scratch_len(&self, rows: usize) -> usize {
        let _ = rows;
        jvp_chunk_scratch_len(self)
    }

    /// GEMM chunks of [`Field::preferred_block_rows`] rows with the tangents beside the
    /// gradient's sweeps (about two to three times [`Field::eval_block`]'s work); `v` is
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
        let need = jvp_chunk_scratch_len(self);
        check_len("scratch", scratch.len().min(need), need)?;
        let mut start = 0;
        while start < t.len() {
            let n = BLOCK_ROWS.min(t.len() - start);
            let (lo, hi) = (start * d, (start + n) * d);
            jvp_chunk(
                self,
                &t[start..start + n],
                &x[lo..hi],
                &dx[lo..hi],
                &mut v[lo..hi],
                &mut jv[lo..hi],
                &mut scratch[..need],
            )?;
            start += n;
        }
        for vi in v.iter_mut().chain(jv.iter_mut()) {
            *vi = -*vi;
        }
        Ok(())
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
        // φ and ∂ₜφ outputs (one chunk at a time) + the chunk buffers.
        2 * BLOCK_ROWS
            + self
                .grad_block_scratch_len(true)
                .max(self.grad_block_scratch_len(false))
    }

    fn eval_block(&self, t: &[T], x: &[T], v: &mut [T], scratch: &mut [T]) -> Result<()> {
        self.block_field(t, x, v, None, scratch)
    }

    fn eval_block_div(
        &self,
        t: &[T],
        x: &[T],
        v: &mut [T],
        div: &mut [T],
        scratch: &mut [T],
    ) -> Result<()> {
        check_len("divergence buffer", div.len(), t.len())?;
        self.block_field(t, x, v, Some(div), scratch)
    }
}

impl<T: Real> OtFlow<T> {
    /// v = −∇ₓΦ (and div = −ΔₓΦ) over a block, through [`grad_block`](Self::grad_block)
    /// one chunk at a time.
    fn block_field(
        &self,
        t: &[T],
        x: &[T],
        v: &mut [T],
        mut div: Option<&mut [T]>,
        scratch: &mut [T],
    ) -> Result<()> {
        let d = self.d;
        check_block(d, t.len(), x, v)?;
        let need = Field::block_scratch_len(self, t.len());
        check_len("scratch", scratch.len().min(need), need)?;
        let (small, rest) = scratch.split_at_mut(2 * BLOCK_ROWS);
        let (phi, dt) = small.split_at_mut(BLOCK_ROWS);
        let step = if div.is_some() {
            self.lap_block_rows()
        } else {
            BLOCK_ROWS
        };
        let mut start = 0;
        while start < t.len() {
            let n = step.min(t.len() - start);
            let lap = div.as_deref_mut().map(|dv| &mut dv[start..start + n]);
            self.grad_block(
                &t[start..start + n],
                &x[start * d..(start + n) * d],
                &mut v[start * d..(start + n) * d],
                &mut phi[..n],
                &mut dt[..n],
                lap,
                rest,
            )?;
            start += n;
        }
        for vi in v.iter_mut() {
            *vi = -*vi;
        }
        if let Some(dv) = div {
            for di in dv.iter_mut() {
                *di = -*di;
            }
        }
        Ok(())
    }
}
