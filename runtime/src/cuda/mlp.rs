//! An MLP on the GPU: v(t, x) = W_L σ(… σ(W_0 [x, t] + b_0) …) + b_L for a batch, one
//! cuBLAS GEMM per layer.
//!
//! Rows are row-major, as on the CPU. With row-major X (rows × n_in) and W (n_out ×
//! n_in), the product X·Wᵀ is, read column-major, W·Xᵀ: `gemm(transa = T, transb = N,
//! m = n_out, n = rows, k = n_in, A = W, B = X)` with no copy or transpose. The first
//! layer's input [x, t] is never built: the GEMM takes the first d columns of W_0
//! (leading dimension d + 1) against the state block itself, and the bias kernel adds
//! t·W_0[:, d] with the bias before the activation. The output layer's bias is left to
//! the field's kernel ([`GpuField`](super::GpuField)), which fuses it with the field's
//! own combination.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, PushKernelArg};

use super::blas::{self, Mat};
use super::device::{dev, guard, launch_config, Gpu};
use super::GpuReal;
use crate::error::{Error, Result};
use crate::nn::mlp::Mlp;
use crate::nn::Activation;

/// One dense layer on the device.
struct Layer<T> {
    n_in: usize,
    n_out: usize,
    /// W, n_out × n_in row-major (the first layer's n_in counts the time column).
    w: CudaSlice<T>,
    /// b, n_out.
    b: CudaSlice<T>,
    /// The first layer's time column W_0[:, d], n_out.
    wt: Option<CudaSlice<T>>,
}

/// The time a batch is evaluated at: one for every row, or one per row (a device
/// vector).
#[derive(Clone, Copy)]
pub(crate) enum Time<'a, T> {
    /// Every row at this time.
    Common(T),
    /// Row r at `t[r]`.
    Rows(&'a CudaSlice<T>),
}

/// Device buffers of an evaluation: two hidden-layer blocks.
pub(crate) struct MlpWorkspace<T> {
    rows: usize,
    h: [CudaSlice<T>; 2],
}

/// An MLP's weights on a GPU, evaluated for batches (the device half of
/// [`Mlp`](crate::nn::mlp::Mlp)).
pub struct GpuMlp<T: GpuReal> {
    gpu: Arc<Gpu>,
    d: usize,
    activation: Activation,
    layers: Vec<Layer<T>>,
    max_width: usize,
}

/// The activation's code in the kernels (`SF_ACT_*` in common.cuh).
fn act_code(a: Activation) -> i32 {
    match a {
        Activation::Silu => 1,
        Activation::Tanh => 2,
        Activation::Softplus => 3,
    }
}

impl<T: GpuReal> GpuMlp<T> {
    /// Copies the evaluator's parameters (as it evaluates them, in `T`) to `gpu`.
    pub fn new(gpu: &Arc<Gpu>, mlp: &Mlp<T>) -> Result<Self> {
        let p = mlp.params();
        let d = p.d;
        guard("copying the MLP to the GPU", || {
            let _hold = gpu.lock();
            let s = &gpu.stream;
            let mut layers = Vec::with_capacity(p.weights.len());
            let mut n_in = d + 1;
            for (l, (w, b)) in p.weights.iter().zip(&p.biases).enumerate() {
                let n_out = b.len();
                let wv: Vec<T> = w.iter().map(|v| T::of(*v)).collect();
                let bv: Vec<T> = b.iter().map(|v| T::of(*v)).collect();
                let wt = if l == 0 {
                    let col: Vec<T> = (0..n_out).map(|o| wv[o * n_in + d]).collect();
                    Some(s.clone_htod(&col).map_err(dev("copying weights"))?)
                } else {
                    None
                };
                layers.push(Layer {
                    n_in,
                    n_out,
                    w: s.clone_htod(&wv).map_err(dev("copying weights"))?,
                    b: s.clone_htod(&bv).map_err(dev("copying biases"))?,
                    wt,
                });
                n_in = n_out;
            }
            let max_width = p.hidden.iter().copied().max().unwrap_or(1);
            Ok(GpuMlp {
                gpu: Arc::clone(gpu),
                d,
                activation: p.activation,
                layers,
                max_width,
            })
        })
    }

    /// State dimension d.
    pub fn dim(&self) -> usize {
        self.d
    }

    /// The GPU the weights are on.
    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// Evaluates the network for a block of rows, row `i` at time `t[i]` (host buffers,
    /// as [`Field::eval_block`](crate::field::Field::eval_block)): `x` and `v` are
    /// row-major `rows × d`.
    pub fn eval_block(&self, t: &[T], x: &[T], v: &mut [T]) -> Result<()> {
        super::field::eval_host(self, None, t, x, v)
    }

    /// The output layer's bias (added by the field's kernel).
    pub(crate) fn out_bias(&self) -> &CudaSlice<T> {
        &self.layers[self.layers.len() - 1].b
    }

    /// A workspace for blocks of up to `rows` rows.
    pub(crate) fn workspace(&self, rows: usize) -> Result<MlpWorkspace<T>> {
        let n = rows.max(1) * self.max_width;
        let s = &self.gpu.stream;
        Ok(MlpWorkspace {
            rows,
            h: [
                s.alloc_zeros(n).map_err(dev("allocating GPU memory"))?,
                s.alloc_zeros(n).map_err(dev("allocating GPU memory"))?,
            ],
        })
    }

    /// Writes W_L h_{L-1} (the output layer without its bias) of `rows` rows of `x`
    /// (row-major `rows × d`) into `out`. The caller holds the device lock.
    pub(crate) fn forward(
        &self,
        ws: &mut MlpWorkspace<T>,
        rows: usize,
        x: &CudaView<'_, T>,
        time: Time<'_, T>,
        out: &mut CudaViewMut<'_, T>,
    ) -> Result<()> {
        if rows > ws.rows || x.len() < rows * self.d || out.len() < rows * self.d {
            return Err(Error::Device(format!(
                "MLP forward: {rows} rows with a workspace of {} (internal error)",
                ws.rows
            )));
        }
        let nl = self.layers.len();
        let act = act_code(self.activation);
        let gpu = &*self.gpu;
        for (l, layer) in self.layers.iter().enumerate() {
            // The first layer reads the state's d columns of W_0 (stride d + 1).
            let k = if l == 0 { self.d } else { layer.n_in };
            let w = layer.w.slice(..);
            let wm = Mat {
                data: &w,
                ld: layer.n_in,
            };
            let [h0, h1] = &mut ws.h;
            let (src, dst) = if l % 2 == 1 { (h0, h1) } else { (h1, h0) };
            if l + 1 == nl {
                let input = src.slice(..rows * k);
                let xm = Mat {
                    data: &input,
                    ld: k,
                };
                blas::xwt(
                    gpu,
                    rows,
                    layer.n_out,
                    k,
                    xm,
                    wm,
                    out,
                    layer.n_out,
                    T::zero(),
                )?;
                break;
            }
            {
                let mut c = dst.slice_mut(..rows * layer.n_out);
                if l == 0 {
                    let xm = Mat {
                        data: x,
                        ld: self.d,
                    };
                    blas::xwt(
                        gpu,
                        rows,
                        layer.n_out,
                        k,
                        xm,
                        wm,
                        &mut c,
                        layer.n_out,
                        T::zero(),
                    )?;
                } else {
                    let input = src.slice(..rows * k);
                    let xm = Mat {
                        data: &input,
                        ld: k,
                    };
                    blas::xwt(
                        gpu,
                        rows,
                        layer.n_out,
                        k,
                        xm,
                        wm,
                        &mut c,
                        layer.n_out,
                        T::zero(),
                    )?;
                }
            }
            self.bias_act(dst, layer, rows, time, act)?;
        }
        Ok(())
    }

    /// c ← σ(c + b (+ t w_t)) over `rows × n_out`.
    fn bias_act(
        &self,
        c: &mut CudaSlice<T>,
        layer: &Layer<T>,
        rows: usize,
        time: Time<'_, T>,
        act: i32,
    ) -> Result<()> {
        let f = self.gpu.function("bias_act", T::SUFFIX)?;
        let null: u64 = 0;
        let (t_common, t_rows) = match time {
            Time::Common(t) => (t, None),
            Time::Rows(tr) => (T::zero(), Some(tr)),
        };
        let (rows_i, n_i) = (rows as i64, layer.n_out as i64);
        let mut b = self.gpu.stream.launch_builder(f);
        b.arg(c).arg(&layer.b);
        match &layer.wt {
            Some(wt) => b.arg(wt),
            None => b.arg(&null),
        };
        match t_rows {
            Some(tr) => b.arg(tr),
            None => b.arg(&null),
        };
        b.arg(&t_common).arg(&rows_i).arg(&n_i).arg(&act);
        // SAFETY: bias_act_T(T* c, const T* b, const T* wt, const T* t_rows, T t,
        // i64 rows, i64 n, int act): c holds ≥ rows·n values, b and wt n, t_rows rows
        // (null pointers where absent); the argument types match in order.
        unsafe { b.launch(launch_config(rows * layer.n_out)) }
            .map_err(dev("launching bias_act"))?;
        Ok(())
    }
}
