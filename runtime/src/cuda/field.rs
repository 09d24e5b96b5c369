//! The fields GPU samplers integrate: an MLP as a velocity, a VP-SDE field over a
//! score network (the device half of [`VpSdeField`](crate::vpsde::VpSdeField)), or an
//! OT-Flow potential's −∇ₓΦ.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, PushKernelArg};

use super::device::{dev, guard, launch_config, Gpu};
use super::mlp::{GpuMlp, MlpWorkspace, Time};
use super::otflow::{GpuOtFlow, OtOut, OtWorkspace};
use super::GpuReal;
use crate::error::Result;
use crate::field::check_block;
use crate::vpsde::{field_coefficients, VpDynamics, VpSde};

/// The network a field evaluates.
#[derive(Clone)]
enum Net<T: GpuReal> {
    Mlp(Arc<GpuMlp<T>>),
    OtFlow(Arc<GpuOtFlow<T>>),
}

/// Device buffers of a field's batch evaluations.
pub(crate) enum FieldWorkspace<T> {
    /// The network's buffers and the per-row coefficients of a VP-SDE field.
    Mlp(MlpWorkspace<T>, CudaSlice<T>),
    OtFlow(Box<OtWorkspace<T>>),
}

/// A time-dependent vector field on the GPU: an MLP itself (a velocity field, as
/// [`Model::field`](crate::model::Model::field) gives for an MLP), a VP-SDE field
/// a(t)x + c(t)·net(x, t) over a score network, or an OT-Flow potential's −∇ₓΦ (as
/// [`OtFlow`](crate::nn::otflow::OtFlow)'s [`Field`](crate::field::Field)).
#[derive(Clone)]
pub struct GpuField<T: GpuReal> {
    net: Net<T>,
    vp: Option<(VpSde, VpDynamics)>,
}

impl<T: GpuReal> GpuField<T> {
    /// The network as a velocity field.
    pub fn velocity(net: Arc<GpuMlp<T>>) -> Result<Self> {
        Ok(GpuField {
            net: Net::Mlp(net),
            vp: None,
        })
    }

    /// The VP-SDE's reverse drift or probability-flow field over a score network
    /// (output per `sde.output`), as [`VpSdeField::new`](crate::vpsde::VpSdeField::new)
    /// (the schedule checked).
    pub fn vpsde(net: Arc<GpuMlp<T>>, sde: VpSde, dynamics: VpDynamics) -> Result<Self> {
        sde.validate()?;
        Ok(GpuField {
            net: Net::Mlp(net),
            vp: Some((sde, dynamics)),
        })
    }

    /// The velocity −∇ₓΦ of an OT-Flow potential.
    pub fn potential(net: Arc<GpuOtFlow<T>>) -> Result<Self> {
        Ok(GpuField {
            net: Net::OtFlow(net),
            vp: None,
        })
    }

    /// State dimension d.
    pub fn dim(&self) -> usize {
        match &self.net {
            Net::Mlp(n) => n.dim(),
            Net::OtFlow(n) => n.dim(),
        }
    }

    /// The GPU.
    pub fn gpu(&self) -> &Arc<Gpu> {
        match &self.net {
            Net::Mlp(n) => n.gpu(),
            Net::OtFlow(n) => n.gpu(),
        }
    }

    /// Evaluates the field for a block of rows, row `i` at time `t[i]` (host buffers,
    /// as [`Field::eval_block`](crate::field::Field::eval_block)).
    pub fn eval_block(&self, t: &[T], x: &[T], v: &mut [T]) -> Result<()> {
        match &self.net {
            Net::Mlp(n) => eval_host(n, self.vp.as_ref().map(|(s, d)| (s, *d)), t, x, v),
            Net::OtFlow(n) => {
                let rows = t.len();
                let (mut phi, mut dt) = (vec![T::zero(); rows], vec![T::zero(); rows]);
                n.grad_block(t, x, v, &mut phi, &mut dt, None)?;
                for vi in v.iter_mut() {
                    *vi = -*vi;
                }
                Ok(())
            }
        }
    }

    /// A workspace for batches of up to `rows` rows.
    pub(crate) fn workspace(&self, rows: usize) -> Result<FieldWorkspace<T>> {
        Ok(match &self.net {
            Net::Mlp(n) => {
                let ac = n
                    .gpu()
                    .stream
                    .alloc_zeros::<T>(2 * rows.max(1))
                    .map_err(dev("allocating GPU memory"))?;
                FieldWorkspace::Mlp(n.workspace(rows)?, ac)
            }
            Net::OtFlow(n) => FieldWorkspace::OtFlow(Box::new(n.workspace(rows, false)?)),
        })
    }

    /// The coefficients (a, c) at time t of a VP-SDE field (None otherwise).
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
        ws: &mut FieldWorkspace<T>,
        rows: usize,
        x: &CudaView<'_, T>,
        t: T,
        out: &mut CudaViewMut<'_, T>,
    ) -> Result<()> {
        match (&self.net, ws) {
            (Net::Mlp(net), FieldWorkspace::Mlp(ws, _)) => {
                let ac = self.coefficients(t)?;
                net.forward(ws, rows, x, Time::Common(t), out)?;
                field_out(
                    net.gpu(),
                    out,
                    net.out_bias(),
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
            (Net::OtFlow(net), FieldWorkspace::OtFlow(ws)) => {
                let none = OtOut {
                    phi: None,
                    dt: None,
                    lap: None,
                };
                net.forward_grad(ws, rows, x, Time::Common(t), out, -T::one(), none)
            }
            _ => Err(crate::Error::Device(
                "a field evaluated with another field's workspace (internal error)".into(),
            )),
        }
    }
}

impl<T: GpuReal> GpuField<T> {
    /// The field for `rows` rows of `x`, row r at time `t[r]` (device buffers; the
    /// caller holds the device lock).
    pub(crate) fn eval_rows(
        &self,
        ws: &mut FieldWorkspace<T>,
        rows: usize,
        x: &CudaView<'_, T>,
        t: &CudaSlice<T>,
        out: &mut CudaViewMut<'_, T>,
    ) -> Result<()> {
        match (&self.net, ws) {
            (Net::Mlp(net), FieldWorkspace::Mlp(ws, ac)) => {
                net.forward(ws, rows, x, Time::Rows(t), out)?;
                let vp = match &self.vp {
                    Some((sde, dynamics)) => {
                        vp_coeffs(net.gpu(), ac, t, sde, *dynamics, rows)?;
                        Some(VpArgs {
                            x,
                            a: T::zero(),
                            c: T::zero(),
                            per_row: Some(ac),
                        })
                    }
                    None => None,
                };
                field_out(net.gpu(), out, net.out_bias(), vp, rows, self.dim())
            }
            (Net::OtFlow(net), FieldWorkspace::OtFlow(ws)) => {
                let none = OtOut {
                    phi: None,
                    dt: None,
                    lap: None,
                };
                net.forward_grad(ws, rows, x, Time::Rows(t), out, -T::one(), none)
            }
            _ => Err(crate::Error::Device(
                "a field evaluated with another field's workspace (internal error)".into(),
            )),
        }
    }
}

/// `ac` ← the VP-SDE field's coefficients (a, c) at each row's time, computed on the
/// device (in f64, as `field_coefficients` does on the host).
fn vp_coeffs<T: GpuReal>(
    gpu: &Gpu,
    ac: &mut CudaSlice<T>,
    t: &CudaSlice<T>,
    sde: &VpSde,
    dynamics: VpDynamics,
    rows: usize,
) -> Result<()> {
    let f = gpu.function("vp_coeffs", T::SUFFIX)?;
    let reverse = i32::from(dynamics == VpDynamics::ReverseSde);
    let noise = i32::from(sde.output == crate::vpsde::ScoreOutput::Noise);
    let rows_i = rows as i64;
    let mut l = gpu.stream.launch_builder(f);
    l.arg(ac)
        .arg(t)
        .arg(&sde.beta_min)
        .arg(&sde.beta_max)
        .arg(&reverse)
        .arg(&noise)
        .arg(&rows_i);
    // SAFETY: vp_coeffs_T(T* ac, const T* t_rows, double beta_min, double beta_max, int
    // reverse, int noise, i64 rows): ac holds 2·rows values, t_rows rows.
    unsafe { l.launch(launch_config(rows)) }.map_err(dev("launching vp_coeffs"))?;
    Ok(())
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
