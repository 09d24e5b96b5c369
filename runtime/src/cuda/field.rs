//! The fields GPU samplers integrate: an MLP as a velocity, or a VP-SDE field over a
//! score network (the device half of [`VpSdeField`](crate::vpsde::VpSdeField)).

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, PushKernelArg};

use super::device::{dev, guard, launch_config, Gpu};
use super::mlp::{GpuMlp, MlpWorkspace, Time};
use super::GpuReal;
use crate::error::Result;
use crate::field::check_block;
use crate::vpsde::{field_coefficients, VpDynamics, VpSde};

/// A time-dependent vector field over an MLP on the GPU: the network itself (a velocity
/// field, as [`Model::field`](crate::model::Model::field) gives for an MLP), or a
/// VP-SDE field a(t)x + c(t)·net(x, t) over a score network.
#[derive(Clone)]
pub struct GpuField<T: GpuReal> {
    net: Arc<GpuMlp<T>>,
    vp: Option<(VpSde, VpDynamics)>,
}

impl<T: GpuReal> GpuField<T> {
    /// The network as a velocity field.
    pub fn velocity(net: Arc<GpuMlp<T>>) -> Result<Self> {
        Ok(GpuField { net, vp: None })
    }

    /// The VP-SDE's reverse drift or probability-flow field over a score network
    /// (output per `sde.output`), as [`VpSdeField::new`](crate::vpsde::VpSdeField::new)
    /// (the schedule checked).
    pub fn vpsde(net: Arc<GpuMlp<T>>, sde: VpSde, dynamics: VpDynamics) -> Result<Self> {
        sde.validate()?;
        Ok(GpuField {
            net,
            vp: Some((sde, dynamics)),
        })
    }

    /// State dimension d.
    pub fn dim(&self) -> usize {
        self.net.dim()
    }

    /// The network.
    pub fn network(&self) -> &Arc<GpuMlp<T>> {
        &self.net
    }

    /// The GPU.
    pub fn gpu(&self) -> &Arc<Gpu> {
        self.net.gpu()
    }

    /// Evaluates the field for a block of rows, row `i` at time `t[i]` (host buffers,
    /// as [`Field::eval_block`](crate::field::Field::eval_block)).
    pub fn eval_block(&self, t: &[T], x: &[T], v: &mut [T]) -> Result<()> {
        eval_host(&self.net, self.vp.as_ref().map(|(s, d)| (s, *d)), t, x, v)
    }

    /// The coefficients (a, c) at time t of a VP-SDE field (None for a velocity).
    pub(crate) fn coefficients(&self, t: T) -> Result<Option<(T, T)>> {
        self.vp
            .as_ref()
            .map(|(sde, dynamics)| field_coefficients(sde, *dynamics, t))
            .transpose()
    }

    /// The field at the common time `t` for `rows` rows of `x` into `out` (device
    /// buffers; the caller holds the device lock).
    pub(crate) fn eval(
        &self,
        ws: &mut MlpWorkspace<T>,
        rows: usize,
        x: &CudaView<'_, T>,
        t: T,
        out: &mut CudaViewMut<'_, T>,
    ) -> Result<()> {
        let ac = self.coefficients(t)?;
        self.net.forward(ws, rows, x, Time::Common(t), out)?;
        field_out(
            self.gpu(),
            out,
            self.net.out_bias(),
            ac.map(|(a, c)| VpArgs {
                x,
                a,
                c,
                per_row: None,
            }),
            rows,
            self.dim(),
        )
    }
}

/// The VP-SDE combination a x + c net of [`field_out`]: the state, the coefficients of
/// the common time, or per-row coefficients (a, c) pairs on the device.
#[derive(Clone, Copy)]
pub(crate) struct VpArgs<'a, 'b, T> {
    x: &'a CudaView<'b, T>,
    a: T,
    c: T,
    per_row: Option<&'a CudaSlice<T>>,
}

/// v ← net = v + b, or v ← a x + c net (`vp`).
pub(crate) fn field_out<T: GpuReal>(
    gpu: &Gpu,
    v: &mut CudaViewMut<'_, T>,
    b: &CudaSlice<T>,
    vp: Option<VpArgs<'_, '_, T>>,
    rows: usize,
    d: usize,
) -> Result<()> {
    let f = gpu.function("field_out", T::SUFFIX)?;
    let null: u64 = 0;
    let (rows_i, d_i) = (rows as i64, d as i64);
    let (a, c) = vp.map_or((T::zero(), T::one()), |p| (p.a, p.c));
    let mut l = gpu.stream.launch_builder(f);
    l.arg(v).arg(b);
    match vp {
        Some(p) => l.arg(p.x),
        None => l.arg(&null),
    };
    l.arg(&a).arg(&c);
    match vp.and_then(|p| p.per_row) {
        Some(ac) => l.arg(ac),
        None => l.arg(&null),
    };
    l.arg(&rows_i).arg(&d_i);
    // SAFETY: field_out_T(T* v, const T* b, const T* x, T a, T c, const T* ac, i64 rows,
    // i64 d): v and x hold rows·d values, b d, ac 2·rows (null where absent); the
    // argument types match in order.
    unsafe { l.launch(launch_config(rows * d)) }.map_err(dev("launching field_out"))?;
    Ok(())
}

/// Host-buffer evaluation of a network (`vp` None) or a VP-SDE field over it, each row
/// at its own time.
pub(crate) fn eval_host<T: GpuReal>(
    net: &GpuMlp<T>,
    vp: Option<(&VpSde, VpDynamics)>,
    t: &[T],
    x: &[T],
    v: &mut [T],
) -> Result<()> {
    let d = net.dim();
    let rows = t.len();
    check_block(d, rows, x, v)?;
    if rows == 0 {
        return Ok(());
    }
    let ac: Option<Vec<T>> = match vp {
        Some((sde, dynamics)) => {
            let mut ac = Vec::with_capacity(2 * rows);
            for &ti in t {
                let (a, c) = field_coefficients(sde, dynamics, ti)?;
                ac.extend([a, c]);
            }
            Some(ac)
        }
        None => None,
    };
    let gpu = net.gpu();
    guard("evaluating a field on the GPU", || {
        let _hold = gpu.lock();
        let s = &gpu.stream;
        let xd = s.clone_htod(x).map_err(dev("copying states to the GPU"))?;
        let td = s.clone_htod(t).map_err(dev("copying times to the GPU"))?;
        let acd = match &ac {
            Some(ac) => Some(s.clone_htod(ac).map_err(dev("copying coefficients"))?),
            None => None,
        };
        let mut out = s
            .alloc_zeros::<T>(rows * d)
            .map_err(dev("allocating GPU memory"))?;
        let mut ws = net.workspace(rows)?;
        let xv = xd.slice(..);
        {
            let mut ov = out.slice_mut(..);
            net.forward(&mut ws, rows, &xv, Time::Rows(&td), &mut ov)?;
            let vp_args = acd.as_ref().map(|ac| VpArgs {
                x: &xv,
                a: T::zero(),
                c: T::zero(),
                per_row: Some(ac),
            });
            field_out(gpu, &mut ov, net.out_bias(), vp_args, rows, d)?;
        }
        s.memcpy_dtoh(&out, v)
            .map_err(dev("copying results from the GPU"))?;
        s.synchronize().map_err(dev("synchronizing the GPU"))?;
        Ok(())
    })
}
