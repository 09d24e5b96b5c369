// socflow CUDA backend: the kernels of batch fields and samplers.
//
// Each kernel is a template instantiated for f32 and f64 under extern "C" names with
// the suffix _f32 / _f64 (runtime/src/cuda/kernels.rs lists them). Rows are
// row-major; every index is 64-bit, and every loop is grid-strided, so any launch
// size covers any problem size.

#ifndef SOCFLOW_COMMON_CUH
#include "common.cuh"
#endif

// Standard normals of (seed, stream, first_sample + r, step), component c of row r at
// out[r * d + c], times `scale` (1 for prior draws, sqrt|h| for Brownian increments,
// as brownian.rs `increments`: the normal rounded to T, then multiplied in T).
template <typename T>
SF_BODY void normals(T* out, sf_u64 seed, sf_u32 stream, sf_u64 first_sample,
                        sf_u32 step, sf_i64 rows, sf_i64 d, T scale) {
  sf_i64 pairs = (d + 1) / 2;
  SF_GRID_LOOP(i, rows * pairs) {
    sf_i64 r = i / pairs;
    sf_i64 j = i - r * pairs;
    SfPair z = sf_normal_pair(seed, stream, first_sample + (sf_u64)r, step, (sf_u32)j);
    sf_i64 at = r * d + 2 * j;
    out[at] = (T)z.z0 * scale;
    if (2 * j + 1 < d) out[at + 1] = (T)z.z1 * scale;
  }
}

// c <- act(c + b + t wt): bias, the time column of the first layer (wt; null for other
// layers; t_rows the per-row times, or null for the common time t) and activation.
template <typename T>
SF_BODY void bias_act(T* c, const T* b, const T* wt, const T* t_rows, T t, sf_i64 rows,
                         sf_i64 n, int act) {
  SF_GRID_LOOP(i, rows * n) {
    sf_i64 r = i / n;
    sf_i64 j = i - r * n;
    T v = c[i];
    if (wt) v = v + (t_rows ? t_rows[r] : t) * wt[j];
    v = v + b[j];
    c[i] = sf_activate<T>(act, v);
  }
}

// The network's output layer and the field over it: v <- net = v + b (x null), or
// v <- a x + c net (the VP-SDE fields), with the coefficients (a, c) of the common
// time, or row r's at ac[2r], ac[2r + 1] when ac is not null.
template <typename T>
SF_BODY void field_out(T* v, const T* b, const T* x, T a, T c, const T* ac, sf_i64 rows,
                       sf_i64 d) {
  SF_GRID_LOOP(i, rows * d) {
    sf_i64 r = i / d;
    sf_i64 j = i - r * d;
    T net = v[i] + b[j];
    if (x) {
      T ar = ac ? ac[2 * r] : a;
      T cr = ac ? ac[2 * r + 1] : c;
      net = sf_vp_combine<T>(ar, x[i], cr, net);
    }
    v[i] = net;
  }
}

// out <- base + h sum_l w_l k_l, with k the stages stored `stride` apart, and h the
// common step or, when h_rows is not null, row i / d's step h_rows[i / d].
template <typename T>
SF_BODY void rk_stage(T* out, const T* base, const T* k, sf_i64 stride, int stages, T w0,
                      T w1, T w2, T w3, T w4, T w5, T w6, T h, const T* h_rows, sf_i64 d,
                      sf_i64 n) {
  T w[7] = {w0, w1, w2, w3, w4, w5, w6};
  SF_GRID_LOOP(i, n) {
    T hi = h_rows ? h_rows[i / d] : h;
    out[i] = sf_rk_combine<T>(stages, w, k, stride, i, base[i], hi);
  }
}

// out <- x + f h + g dW, with g the additive diffusion's d values for this step.
template <typename T>
SF_BODY void em_step(T* out, const T* x, const T* f, const T* g, const T* dw, T h,
                        sf_i64 rows, sf_i64 d) {
  SF_GRID_LOOP(i, rows * d) { out[i] = sf_em<T>(x[i], f[i], h, g[i % d], dw[i]); }
}

// x <- x + (f + f2)/2 h + (g + g2)/2 dW (stochastic Heun's corrector).
template <typename T>
SF_BODY void heun_step(T* x, const T* f, const T* f2, const T* g, const T* g2,
                          const T* dw, T h, sf_i64 rows, sf_i64 d) {
  SF_GRID_LOOP(i, rows * d) {
    sf_i64 j = i % d;
    x[i] = sf_heun<T>(x[i], f[i], f2[i], h, g[j], g2[j], dw[i]);
  }
}

// Per-row coefficients (a, c) of the VP-SDE fields at the rows' times (vpsde.rs
// `field_coefficients`, in f64 then rounded to T; expm1 is the device's): ac[2r] = a,
// ac[2r + 1] = c.
template <typename T>
SF_BODY void vp_coeffs(T* ac, const T* t_rows, double beta_min, double beta_max, int reverse,
                       int noise, sf_i64 rows) {
  SF_GRID_LOOP(r, rows) {
    double t = (double)t_rows[r];
    double beta = beta_min + t * (beta_max - beta_min);
    double weight = reverse ? -beta : -0.5 * beta;
    double k = 1.0;
    if (noise) {
      double big_b = beta_min * t + 0.5 * t * t * (beta_max - beta_min);
      k = -1.0 / sqrt(-expm1(-big_b));
    }
    ac[2 * r] = (T)(-0.5 * beta);
    ac[2 * r + 1] = (T)(weight * k);
  }
}

#define SF_INSTANTIATE(T, S)                                                                \
  SF_KERNEL void normals_##S(T* out, sf_u64 seed, sf_u32 stream, sf_u64 first_sample,     \
                             sf_u32 step, sf_i64 rows, sf_i64 d, T scale) {               \
    normals<T>(out, seed, stream, first_sample, step, rows, d, scale);                    \
  }                                                                                       \
  SF_KERNEL void bias_act_##S(T* c, const T* b, const T* wt, const T* t_rows, T t,        \
                              sf_i64 rows, sf_i64 n, int act) {                           \
    bias_act<T>(c, b, wt, t_rows, t, rows, n, act);                                       \
  }                                                                                       \
  SF_KERNEL void field_out_##S(T* v, const T* b, const T* x, T a, T c, const T* ac,       \
                               sf_i64 rows, sf_i64 d) {                                   \
    field_out<T>(v, b, x, a, c, ac, rows, d);                                             \
  }                                                                                       \
  SF_KERNEL void rk_stage_##S(T* out, const T* base, const T* k, sf_i64 stride,           \
                              int stages, T w0, T w1, T w2, T w3, T w4, T w5, T w6, T h,  \
                              const T* h_rows, sf_i64 d, sf_i64 n) {                      \
    rk_stage<T>(out, base, k, stride, stages, w0, w1, w2, w3, w4, w5, w6, h, h_rows, d,   \
                n);                                                                       \
  }                                                                                       \
  SF_KERNEL void em_step_##S(T* out, const T* x, const T* f, const T* g, const T* dw,     \
                             T h, sf_i64 rows, sf_i64 d) {                                \
    em_step<T>(out, x, f, g, dw, h, rows, d);                                             \
  }                                                                                       \
  SF_KERNEL void heun_step_##S(T* x, const T* f, const T* f2, const T* g, const T* g2,    \
                               const T* dw, T h, sf_i64 rows, sf_i64 d) {                 \
    heun_step<T>(x, f, f2, g, g2, dw, h, rows, d);                                        \
  }                                                                                       \
  SF_KERNEL void vp_coeffs_##S(T* ac, const T* t_rows, double beta_min, double beta_max,  \
                               int reverse, int noise, sf_i64 rows) {                     \
    vp_coeffs<T>(ac, t_rows, beta_min, beta_max, reverse, noise, rows);                   \
  }

SF_INSTANTIATE(float, f32)
SF_INSTANTIATE(double, f64)
