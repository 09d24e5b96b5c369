//! The OT-Flow potential on the GPU (MATH.md §1; the device half of
//! [`OtFlow`](crate::nn::otflow::OtFlow)): Φ, ∇Φ (closed form, one backward sweep) and
//! the exact Laplacian for a batch, every layer's products as cuBLAS GEMMs over the
//! whole batch and the elementwise maps and per-row sums as kernels (otflow.cu).
//!
//! The sweeps are the CPU block path's (`block_chunk` in nn/otflow.rs) with the batch
//! as one chunk: forward u_i with tanh(a_i) kept per layer; backward z_i =
//! z_{i+1} + η K_iᵀ(tanh(a_i) ⊙ z_{i+1}) as Z += G·K_i; the Laplacian's tangents
//! J_i (d per row, stored as rows·d tangent rows) as one GEMM per layer.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, PushKernelArg};

use super::blas::{self, Mat};
use super::device::{dev, guard, launch_config, Gpu};
use super::mlp::Time;
use super::GpuReal;
use crate::error::{check_len, Result};
use crate::field::check_block;
use crate::nn::otflow::OtFlow;

/// An OT-Flow potential's parameters on a GPU, evaluated for batches.
pub struct GpuOtFlow<T: GpuReal> {
    gpu: Arc<Gpu>,
    d: usize,
    m: usize,
    n_th: usize,
    r: usize,
    eta: T,
    /// K_0, m × (d+1) row-major.
    k0: CudaSlice<T>,
    /// K_1 … K_{nTh−1}, m × m each, one after the other.
    kh: CudaSlice<T>,
    /// b_0 … b_{nTh−1}, m each.
    b: CudaSlice<T>,
    w: CudaSlice<T>,
    /// A, r × (d+1) row-major.
    a: CudaSlice<T>,
    cw: CudaSlice<T>,
    cb: T,
    /// Σ_{k<d} K_0[h, k]², per h.
    k0sq: CudaSlice<T>,
    /// trace((AᵀA)[0:d, 0:d]).
    tr_a: T,
}

/// Device buffers of one batch evaluation.
pub(crate) struct OtWorkspace<T> {
    rows: usize,
    s: CudaSlice<T>,
    gs: CudaSlice<T>,
    a: CudaSlice<T>,
    u: CudaSlice<T>,
    z: CudaSlice<T>,
    g: CudaSlice<T>,
    /// tanh(a_i) of every layer, n_th × rows × m.
    ts: CudaSlice<T>,
    lap: Option<LapWorkspace<T>>,
}

/// The Laplacian's buffers.
struct LapWorkspace<T> {
    /// z_i of every layer, n_th × rows × m.
    zs: CudaSlice<T>,
    jt: CudaSlice<T>,
    kjt: CudaSlice<T>,
    tr: CudaSlice<T>,
}

/// What a batch evaluation writes besides `sign·∇ₓΦ`.
pub(crate) struct OtOut<'a, T> {
    pub(crate) phi: Option<&'a mut CudaSlice<T>>,
    pub(crate) dt: Option<&'a mut CudaSlice<T>>,
    /// The Laplacian, times `sign`.
    pub(crate) lap: Option<&'a mut CudaSlice<T>>,
}

impl<T: GpuReal> GpuOtFlow<T> {
    /// Copies the evaluator's parameters (as it evaluates them, in `T`) to `gpu`.
    pub fn new(gpu: &Arc<Gpu>, net: &OtFlow<T>) -> Result<Self> {
        let p = net.params();
        let (d, m, n_th, r) = (p.d, p.m, p.n_th, p.r);
        let ns = d + 1;
        let cv = |v: &f64| T::of(*v);
        let k0: Vec<T> = p.k[0].iter().map(cv).collect();
        let mut kh: Vec<T> = p.k[1..].iter().flatten().map(cv).collect();
        let b: Vec<T> = p.b.iter().flatten().map(cv).collect();
        let w: Vec<T> = p.w.iter().map(cv).collect();
        let mut a: Vec<T> = p.a.iter().map(cv).collect();
        let cw: Vec<T> = p.c_weight.iter().map(cv).collect();
        // As OtFlow::new: Σ of squares in T, and trace((AᵀA)[0:d,0:d]) in f64.
        let k0sq: Vec<T> = (0..m)
            .map(|h| {
                (0..d)
                    .map(|j| k0[h * ns + j] * k0[h * ns + j])
                    .fold(T::zero(), |acc, v| acc + v)
            })
            .collect();
        let tr_a = T::of(
            (0..r)
                .flat_map(|k| (0..d).map(move |j| (k, j)))
                .map(|(k, j)| p.a[k * ns + j] * p.a[k * ns + j])
                .sum::<f64>(),
        );
        if kh.is_empty() {
            kh.push(T::zero());
        }
        if a.is_empty() {
            a.push(T::zero());
        }
        guard("copying the OT-Flow potential to the GPU", || {
            let _hold = gpu.lock();
            let s = &gpu.stream;
            let up = |v: &Vec<T>| s.clone_htod(v).map_err(dev("copying parameters"));
            Ok(GpuOtFlow {
                gpu: Arc::clone(gpu),
                d,
                m,
                n_th,
                r,
                eta: T::one() / T::of((n_th - 1) as f64),
                k0: up(&k0)?,
                kh: up(&kh)?,
                b: up(&b)?,
                w: up(&w)?,
                a: up(&a)?,
                cw: up(&cw)?,
                cb: T::of(p.c_bias),
                k0sq: up(&k0sq)?,
                tr_a,
            })
        })
    }

    /// State dimension d.
    pub fn dim(&self) -> usize {
        self.d
    }

    /// The GPU the parameters are on.
    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// Block evaluation, as [`OtFlow::grad_block`]: for each row i (state `x[i·d..]` at
    /// time `t[i]`) writes ∇ₓΦ into `grad` (rows × d), Φ into `phi[i]`, ∂ₜΦ into
    /// `dt_phi[i]` and, when `lap` is given, the exact Laplacian ΔₓΦ into `lap[i]`.
    pub fn grad_block(
        &self,
        t: &[T],
        x: &[T],
        grad: &mut [T],
        phi: &mut [T],
        dt_phi: &mut [T],
        lap: Option<&mut [T]>,
    ) -> Result<()> {
        let rows = t.len();
        check_block(self.d, rows, x, grad)?;
        check_len("potential block", phi.len(), rows)?;
        check_len("time-derivative block", dt_phi.len(), rows)?;
        if let Some(l) = lap.as_deref() {
            check_len("Laplacian block", l.len(), rows)?;
        }
        if rows == 0 {
            return Ok(());
        }
        let gpu = &*self.gpu;
        guard("evaluating the OT-Flow potential on the GPU", || {
            let _hold = gpu.lock();
            let s = &gpu.stream;
            let alloc = |n: usize| s.alloc_zeros::<T>(n).map_err(dev("allocating GPU memory"));
            let xd = s.clone_htod(x).map_err(dev("copying states to the GPU"))?;
            let td = s.clone_htod(t).map_err(dev("copying times to the GPU"))?;
            let mut gd = alloc(rows * self.d)?;
            let mut pd = alloc(rows)?;
            let mut dd = alloc(rows)?;
            let mut ld = if lap.is_some() {
                Some(alloc(rows)?)
            } else {
                None
            };
            let mut ws = self.workspace(rows, lap.is_some())?;
            {
                let xv = xd.slice(..);
                let mut gv = gd.slice_mut(..);
                let out = OtOut {
                    phi: Some(&mut pd),
                    dt: Some(&mut dd),
                    lap: ld.as_mut(),
                };
                self.forward_grad(&mut ws, rows, &xv, Time::Rows(&td), &mut gv, T::one(), out)?;
            }
            s.memcpy_dtoh(&gd, grad).map_err(dev("copying results"))?;
            s.memcpy_dtoh(&pd, phi).map_err(dev("copying results"))?;
            s.memcpy_dtoh(&dd, dt_phi).map_err(dev("copying results"))?;
            if let (Some(ld), Some(lap)) = (&ld, lap) {
                s.memcpy_dtoh(ld, lap).map_err(dev("copying results"))?;
            }
            s.synchronize().map_err(dev("synchronizing the GPU"))
        })
    }

    /// A workspace for batches of up to `rows` rows (with the Laplacian's buffers when
    /// `lap`).
    pub(crate) fn workspace(&self, rows: usize, lap: bool) -> Result<OtWorkspace<T>> {
        let s = &self.gpu.stream;
        let alloc = |n: usize| {
            s.alloc_zeros::<T>(n.max(1))
                .map_err(dev("allocating GPU memory"))
        };
        let (m, ns) = (self.m, self.d + 1);
        let lap = if lap {
            Some(LapWorkspace {
                zs: alloc(self.n_th * rows * m)?,
                jt: alloc(rows * self.d * m)?,
                kjt: alloc(rows * self.d * m)?,
                tr: alloc(rows)?,
            })
        } else {
            None
        };
        Ok(OtWorkspace {
            rows,
            s: alloc(rows * ns)?,
            gs: alloc(rows * ns)?,
            a: alloc(rows * m)?,
            u: alloc(rows * m)?,
            z: alloc(rows * m)?,
            g: alloc(rows * m)?,
            ts: alloc(self.n_th * rows * m)?,
            lap,
        })
    }

    /// `v` ← `sign`·∇ₓΦ for `rows` rows of `x`, and what `out` asks for (the caller holds
    /// the device lock; `ws` has the Laplacian's buffers if `out.lap` is given).
    #[allow(clippy::too_many_arguments)] // a batch's inputs and outputs
    pub(crate) fn forward_grad(
        &self,
        ws: &mut OtWorkspace<T>,
        rows: usize,
        x: &CudaView<'_, T>,
        time: Time<'_, T>,
        v: &mut CudaViewMut<'_, T>,
        sign: T,
        out: OtOut<'_, T>,
    ) -> Result<()> {
        let (d, m, nth) = (self.d, self.m, self.n_th);
        let ns = d + 1;
        let rm = rows * m;
        let gpu = &*self.gpu;
        if rows > ws.rows || (out.lap.is_some() && ws.lap.is_none()) {
            return Err(crate::Error::Device(
                "OT-Flow workspace too small (internal error)".into(),
            ));
        }
        let null: u64 = 0;
        let (rows_i, d_i, m_i, r_i) = (rows as i64, d as i64, m as i64, self.r as i64);
        // s = [x, t].
        {
            let (tc, tr) = match time {
                Time::Common(t) => (t, None),
                Time::Rows(tr) => (T::zero(), Some(tr)),
            };
            let f = gpu.function("ot_input", T::SUFFIX)?;
            let mut l = gpu.stream.launch_builder(f);
            l.arg(&mut ws.s).arg(x);
            match tr {
                Some(tr) => l.arg(tr),
                None => l.arg(&null),
            };
            l.arg(&tc).arg(&rows_i).arg(&d_i);
            // SAFETY: ot_input_T(T* s, const T* x, const T* t_rows, T t, i64 rows, i64 d):
            // s holds rows·(d+1) values, x rows·d, t_rows rows (or null).
            unsafe { l.launch(launch_config(rows * ns)) }.map_err(dev("launching ot_input"))?;
        }
        // Forward: a_i = K_i u_{i−1} + b_i (a_0 = K_0 s + b_0), u, tanh(a_i).
        for i in 0..nth {
            {
                let mut a = ws.a.slice_mut(..rm);
                if i == 0 {
                    let sv = ws.s.slice(..rows * ns);
                    let k0 = self.k0.slice(..);
                    let (xm, wm) = (Mat { data: &sv, ld: ns }, Mat { data: &k0, ld: ns });
                    blas::xwt(gpu, rows, m, ns, xm, wm, &mut a, m, T::zero())?;
                } else {
                    let uv = ws.u.slice(..rm);
                    let ki = self.kh.slice((i - 1) * m * m..i * m * m);
                    let (xm, wm) = (Mat { data: &uv, ld: m }, Mat { data: &ki, ld: m });
                    blas::xwt(gpu, rows, m, m, xm, wm, &mut a, m, T::zero())?;
                }
            }
            let f = gpu.function("ot_act", T::SUFFIX)?;
            let mut ts = ws.ts.slice_mut(i * rm..(i + 1) * rm);
            let b = self.b.slice(i * m..(i + 1) * m);
            let first = i32::from(i == 0);
            let mut l = gpu.stream.launch_builder(f);
            l.arg(&mut ws.a)
                .arg(&mut ws.u)
                .arg(&mut ts)
                .arg(&b)
                .arg(&self.eta)
                .arg(&first)
                .arg(&rows_i)
                .arg(&m_i);
            // SAFETY: ot_act_T(T* a, T* u, T* ts, const T* b, T eta, int first, i64 rows,
            // i64 m): a, u and ts hold rows·m values, b m.
            unsafe { l.launch(launch_config(rm)) }.map_err(dev("launching ot_act"))?;
        }
        // Backward: z_{nTh} = w, z_i = z_{i+1} + η (tanh(a_i) ⊙ z_{i+1}) K_i.
        {
            let f = gpu.function("ot_fill_rows", T::SUFFIX)?;
            let mut l = gpu.stream.launch_builder(f);
            l.arg(&mut ws.z).arg(&self.w).arg(&rows_i).arg(&m_i);
            // SAFETY: ot_fill_rows_T(T* z, const T* w, i64 rows, i64 m): z holds rows·m
            // values, w m.
            unsafe { l.launch(launch_config(rm)) }.map_err(dev("launching ot_fill_rows"))?;
        }
        for i in (0..nth).rev() {
            let c = if i == 0 { T::one() } else { self.eta };
            {
                let ts = ws.ts.slice(i * rm..(i + 1) * rm);
                let n_i = rm as i64;
                let f = gpu.function("ot_scale_prod", T::SUFFIX)?;
                let mut l = gpu.stream.launch_builder(f);
                l.arg(&mut ws.g).arg(&ts).arg(&ws.z).arg(&c).arg(&n_i);
                // SAFETY: ot_scale_prod_T(T* g, const T* ts, const T* z, T c, i64 n): all
                // hold ≥ n = rows·m values.
                unsafe { l.launch(launch_config(rm)) }.map_err(dev("launching ot_scale_prod"))?;
            }
            let gv = ws.g.slice(..rm);
            let gm = Mat { data: &gv, ld: m };
            if i == 0 {
                let k0 = self.k0.slice(..);
                let mut gs = ws.gs.slice_mut(..rows * ns);
                blas::xb(
                    gpu,
                    rows,
                    ns,
                    m,
                    gm,
                    Mat { data: &k0, ld: ns },
                    &mut gs,
                    ns,
                    T::zero(),
                )?;
            } else {
                let ki = self.kh.slice((i - 1) * m * m..i * m * m);
                let mut z = ws.z.slice_mut(..rm);
                blas::xb(
                    gpu,
                    rows,
                    m,
                    m,
                    gm,
                    Mat { data: &ki, ld: m },
                    &mut z,
                    m,
                    T::one(),
                )?;
                if let Some(lw) = ws.lap.as_mut() {
                    let mut zi = lw.zs.slice_mut(i * rm..(i + 1) * rm);
                    gpu.stream
                        .memcpy_dtod(&ws.z.slice(..rm), &mut zi)
                        .map_err(dev("copying z"))?;
                }
            }
        }
        // The quadratic and linear terms, the outputs.
        {
            let f = gpu.function("ot_finish", T::SUFFIX)?;
            let mut l = gpu.stream.launch_builder(f);
            l.arg(&ws.s)
                .arg(&mut ws.gs)
                .arg(&ws.u)
                .arg(&self.a)
                .arg(&self.cw)
                .arg(&self.w)
                .arg(&self.cb)
                .arg(&rows_i)
                .arg(&d_i)
                .arg(&m_i)
                .arg(&r_i)
                .arg(v)
                .arg(&sign);
            let OtOut { phi, dt, lap } = out;
            match phi {
                Some(p) => l.arg(p),
                None => l.arg(&null),
            };
            match dt {
                Some(p) => l.arg(p),
                None => l.arg(&null),
            };
            // SAFETY: ot_finish_T(const T* s, T* gs, const T* u, const T* A, const T* cw,
            // const T* w, T cb, i64 rows, i64 d, i64 m, i64 r, T* v, T sign, T* phi, T* dt):
            // s and gs hold rows·(d+1) values, u rows·m, A r·(d+1), cw d+1, w m, v rows·d,
            // phi and dt rows (or null).
            unsafe { l.launch(launch_config(rows)) }.map_err(dev("launching ot_finish"))?;
            if let Some(lap) = lap {
                self.laplacian(ws, rows, lap, sign)?;
            }
        }
        Ok(())
    }

    /// `lap` ← sign·ΔₓΦ from the forward and backward sweeps' buffers.
    fn laplacian(
        &self,
        ws: &mut OtWorkspace<T>,
        rows: usize,
        lap: &mut CudaSlice<T>,
        sign: T,
    ) -> Result<()> {
        let (d, m, nth) = (self.d, self.m, self.n_th);
        let rm = rows * m;
        let gpu = &*self.gpu;
        let lw = ws.lap.as_mut().ok_or_else(|| {
            crate::Error::Device("no Laplacian workspace (internal error)".into())
        })?;
        let null: u64 = 0;
        let (rows_i, d_i, m_i) = (rows as i64, d as i64, m as i64);
        let ts0 = ws.ts.slice(..rm);
        {
            let z1 = lw.zs.slice(rm..2 * rm);
            let f = gpu.function("ot_lap_tr0", T::SUFFIX)?;
            let mut l = gpu.stream.launch_builder(f);
            l.arg(&mut lw.tr)
                .arg(&ts0)
                .arg(&z1)
                .arg(&self.k0sq)
                .arg(&rows_i)
                .arg(&m_i);
            // SAFETY: ot_lap_tr0_T(T* tr, const T* ts0, const T* z1, const T* k0sq, i64 rows,
            // i64 m): tr holds rows values, ts0 and z1 rows·m, k0sq m.
            unsafe { l.launch(launch_config(rows)) }.map_err(dev("launching ot_lap_tr0"))?;
            let f = gpu.function("ot_lap_jt0", T::SUFFIX)?;
            let mut l = gpu.stream.launch_builder(f);
            l.arg(&mut lw.jt)
                .arg(&ts0)
                .arg(&self.k0)
                .arg(&rows_i)
                .arg(&d_i)
                .arg(&m_i);
            // SAFETY: ot_lap_jt0_T(T* jt, const T* ts0, const T* k0, i64 rows, i64 d, i64 m):
            // jt holds rows·d·m values, ts0 rows·m, k0 m·(d+1).
            unsafe { l.launch(launch_config(rows * d * m)) }
                .map_err(dev("launching ot_lap_jt0"))?;
        }
        for i in 1..nth {
            {
                let jv = lw.jt.slice(..rows * d * m);
                let ki = self.kh.slice((i - 1) * m * m..i * m * m);
                let mut kjt = lw.kjt.slice_mut(..rows * d * m);
                let (xm, wm) = (Mat { data: &jv, ld: m }, Mat { data: &ki, ld: m });
                blas::xwt(gpu, rows * d, m, m, xm, wm, &mut kjt, m, T::zero())?;
            }
            let ti = ws.ts.slice(i * rm..(i + 1) * rm);
            {
                let f = gpu.function("ot_lap_tr", T::SUFFIX)?;
                let mut l = gpu.stream.launch_builder(f);
                l.arg(&mut lw.tr).arg(&ti);
                let znext = if i + 1 < nth {
                    Some(lw.zs.slice((i + 1) * rm..(i + 2) * rm))
                } else {
                    None
                };
                match &znext {
                    Some(z) => l.arg(z),
                    None => l.arg(&null),
                };
                l.arg(&self.w)
                    .arg(&lw.kjt)
                    .arg(&self.eta)
                    .arg(&rows_i)
                    .arg(&d_i)
                    .arg(&m_i);
                // SAFETY: ot_lap_tr_T(T* tr, const T* ti, const T* z, const T* w, const T*
                // kjt, T eta, i64 rows, i64 d, i64 m): tr holds rows values, ti and z rows·m
                // (z null: w, m values), kjt rows·d·m.
                unsafe { l.launch(launch_config(rows)) }.map_err(dev("launching ot_lap_tr"))?;
            }
            if i + 1 < nth {
                let f = gpu.function("ot_lap_jt", T::SUFFIX)?;
                let mut l = gpu.stream.launch_builder(f);
                l.arg(&mut lw.jt)
                    .arg(&lw.kjt)
                    .arg(&ti)
                    .arg(&self.eta)
                    .arg(&rows_i)
                    .arg(&d_i)
                    .arg(&m_i);
                // SAFETY: ot_lap_jt_T(T* jt, const T* kjt, const T* ti, T eta, i64 rows, i64
                // d, i64 m): jt and kjt hold rows·d·m values, ti rows·m.
                unsafe { l.launch(launch_config(rows * d * m)) }
                    .map_err(dev("launching ot_lap_jt"))?;
            }
        }
        let f = gpu.function("ot_lap_out", T::SUFFIX)?;
        let mut l = gpu.stream.launch_builder(f);
        l.arg(lap)
            .arg(&lw.tr)
            .arg(&self.tr_a)
            .arg(&sign)
            .arg(&rows_i);
        // SAFETY: ot_lap_out_T(T* lap, const T* tr, T tr_a, T sign, i64 rows): lap and tr
        // hold rows values.
        unsafe { l.launch(launch_config(rows)) }.map_err(dev("launching ot_lap_out"))?;
        Ok(())
    }
}
