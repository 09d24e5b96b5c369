// socflow CUDA backend: adaptive Dormand-Prince 5(4) with every row its own step
// (runtime/src/ode/mod.rs `solve_adaptive`, `error_norm`, `initial_steps`;
// runtime/src/ode/controller.rs). One thread per row: each kernel does for its row what
// the CPU driver does for a slot, in the same order of operations (pow is the device's).
//
// Per-row state: t, h (the next step), hs (the step being taken), last (hs ends at t1),
// done, attempts, accepted, rejected, err_prev and rejected_last (the PI controller's
// memory), status (0, 1: too many steps, 2: step size underflow) and err (the last
// scaled error, for messages). ctrl holds the controller's settings:
// [rtol, atol, ncomp, safety, min_factor, max_factor, beta1, beta2, h_max, h_min,
//  ten_eps, t1, dir]; e the seven error weights. counters[0] counts the rows still
// active after a step, counters[1] the rows with a status.

#ifndef SOCFLOW_COMMON_CUH
#include "common.cuh"
#endif

#if defined(__CUDACC__)
#define SF_ATOMIC_ADD(p, v) atomicAdd((p), (v))
#else
#define SF_ATOMIC_ADD(p, v) (*(p) += (v))
#endif

#define SF_CTRL_RTOL 0
#define SF_CTRL_ATOL 1
#define SF_CTRL_NCOMP 2
#define SF_CTRL_SAFETY 3
#define SF_CTRL_MIN_FACTOR 4
#define SF_CTRL_MAX_FACTOR 5
#define SF_CTRL_BETA1 6
#define SF_CTRL_BETA2 7
#define SF_CTRL_H_MAX 8
#define SF_CTRL_H_MIN 9
#define SF_CTRL_TEN_EPS 10
#define SF_CTRL_T1 11
#define SF_CTRL_DIR 12

SF_DEV float sf_pow(float a, float b) { return powf(a, b); }
SF_DEV double sf_pow(double a, double b) { return pow(a, b); }
SF_DEV float sf_fmax(float a, float b) { return fmaxf(a, b); }
SF_DEV double sf_fmax(double a, double b) { return fmax(a, b); }
SF_DEV float sf_fmin(float a, float b) { return fminf(a, b); }
SF_DEV double sf_fmin(double a, double b) { return fmin(a, b); }

// Hairer's starting step, first half: the trial step from the norms of y0 and f(t0, y0)
// (k0), the trial state ytmp = y + dir h k0 and its time tst.
template <typename T>
SF_BODY void dp_init1(T* h, T* tst, T* ytmp, const T* y, const T* k0, const T* ctrl, T t0,
                      sf_i64 rows, sf_i64 d) {
  SF_GRID_LOOP(r, rows) {
    T rtol = ctrl[SF_CTRL_RTOL], atol = ctrl[SF_CTRL_ATOL], dir = ctrl[SF_CTRL_DIR];
    T d0 = (T)0.0, d1 = (T)0.0;
    for (sf_i64 j = 0; j < d; ++j) {
      sf_i64 i = r * d + j;
      T sc = atol + rtol * sf_abs(y[i]);
      T a = y[i] / sc, b = k0[i] / sc;
      d0 += a * a;
      d1 += b * b;
    }
    T dn = (T)(double)d;
    d0 = sf_sqrt(d0 / dn);
    d1 = sf_sqrt(d1 / dn);
    T small = (T)1e-5;
    T hr = (d0 < small || d1 < small) ? (T)1e-6 : (T)0.01 * d0 / d1;
    hr = sf_fmin(hr, ctrl[SF_CTRL_H_MAX]);
    h[r] = hr;
    tst[r] = t0 + dir * hr;
    for (sf_i64 j = 0; j < d; ++j) {
      sf_i64 i = r * d + j;
      ytmp[i] = y[i] + dir * hr * k0[i];
    }
  }
}

// Second half, with k1 = f(t0 + dir h, ytmp).
template <typename T>
SF_BODY void dp_init2(T* h, const T* y, const T* k0, const T* k1, const T* ctrl,
                      T inv_order, sf_i64 rows, sf_i64 d) {
  SF_GRID_LOOP(r, rows) {
    T rtol = ctrl[SF_CTRL_RTOL], atol = ctrl[SF_CTRL_ATOL], dir = ctrl[SF_CTRL_DIR];
    T d1 = (T)0.0, d2 = (T)0.0;
    for (sf_i64 j = 0; j < d; ++j) {
      sf_i64 i = r * d + j;
      T sc = atol + rtol * sf_abs(y[i]);
      T a = k0[i] / sc, b = (k1[i] - k0[i]) / sc;
      d1 += a * a;
      d2 += b * b;
    }
    T dn = (T)(double)d;
    T hr = h[r];
    d1 = sf_sqrt(d1 / dn);
    d2 = sf_sqrt(d2 / dn) / hr;
    T m = sf_fmax(d1, d2);
    T h1 = m <= (T)1e-15 ? sf_fmax((T)1e-6, hr * (T)1e-3) : sf_pow((T)0.01 / m, inv_order);
    hr = sf_fmin(sf_fmin((T)100.0 * hr, h1), ctrl[SF_CTRL_H_MAX]);
    h[r] = dir * hr;
  }
}

// Before a step: the row's step hs (to t1 exactly, without a sliver of a last step);
// a row past max_steps gets status 1 (dp_stage_times then writes the stage times).
template <typename T>
SF_BODY void dp_prepare(T* hs, int* last, const T* t, const T* h, const int* done,
                        const sf_u64* attempts, int* status, int* counters, const T* ctrl,
                        sf_u64 max_steps, sf_i64 rows) {
  SF_GRID_LOOP(r, rows) {
    if (done[r] || status[r]) {
      hs[r] = (T)0.0;
      last[r] = 0;
      continue;
    }
    if (attempts[r] >= max_steps) {
      status[r] = 1;
      SF_ATOMIC_ADD(&counters[1], 1);
      hs[r] = (T)0.0;
      last[r] = 0;
      continue;
    }
    T t1 = ctrl[SF_CTRL_T1], dir = ctrl[SF_CTRL_DIR];
    T tr = t[r], hr = h[r];
    if (dir * (tr + (T)1.01 * hr - t1) >= (T)0.0) {
      hs[r] = t1 - tr;
      last[r] = 1;
    } else {
      hs[r] = hr;
      last[r] = 0;
    }
  }
}

// tst = t + c hs.
template <typename T>
SF_BODY void dp_stage_times(T* tst, const T* t, const T* hs, T c, sf_i64 rows) {
  SF_GRID_LOOP(r, rows) { tst[r] = t[r] + c * hs[r]; }
}

// After a step: the scaled error, the controller's verdict, and for an accepted step
// the new state, first stage and time.
template <typename T>
SF_BODY void dp_judge(T* y, const T* ytmp, T* k, sf_i64 stride, T* t, T* h, const T* hs,
                      const int* last, int* done, sf_u64* attempts, sf_u64* accepted,
                      sf_u64* rejected, T* err_prev, int* rejected_last, int* status, T* errv,
                      int* counters, const T* ctrl, const T* e, sf_i64 rows, sf_i64 d) {
  SF_GRID_LOOP(r, rows) {
    if (done[r] || status[r]) continue;
    attempts[r] += 1;
    T rtol = ctrl[SF_CTRL_RTOL], atol = ctrl[SF_CTRL_ATOL];
    T hr = hs[r];
    T sum = (T)0.0;
    for (sf_i64 j = 0; j < d; ++j) {
      sf_i64 i = r * d + j;
      T acc = (T)0.0;
      for (int l = 0; l < 7; ++l) {
        if (e[l] != (T)0.0) acc += e[l] * k[(sf_i64)l * stride + i];
      }
      T sc = atol + rtol * sf_fmax(sf_abs(y[i]), sf_abs(ytmp[i]));
      T q = hr * acc / sc;
      sum += q * q;
    }
    T err = sf_sqrt(sum / ctrl[SF_CTRL_NCOMP]);
    errv[r] = err;
    // The PI controller (controller.rs `judge`).
    const T one = (T)1.0;
    bool accept = err <= one;
    T factor;
    if (accept) {
      T raw = ctrl[SF_CTRL_SAFETY] * sf_pow(err, -ctrl[SF_CTRL_BETA1]) *
              sf_pow(err_prev[r], ctrl[SF_CTRL_BETA2]);
      factor = sf_fmin(sf_fmax(raw, ctrl[SF_CTRL_MIN_FACTOR]), ctrl[SF_CTRL_MAX_FACTOR]);
      if (rejected_last[r]) factor = sf_fmin(factor, one);
      err_prev[r] = sf_fmax(err, (T)1e-4);
      rejected_last[r] = 0;
    } else {
      rejected_last[r] = 1;
      T raw = ctrl[SF_CTRL_SAFETY] * sf_pow(err, -ctrl[SF_CTRL_BETA1]);
      factor = sf_fmin(sf_fmax(raw, ctrl[SF_CTRL_MIN_FACTOR]), one);
    }
    T mag = sf_fmin(sf_abs(hr) * factor, ctrl[SF_CTRL_H_MAX]);
    T h_next = hr < (T)0.0 ? -mag : mag;
    if (accept) {
      accepted[r] += 1;
      T t_new = last[r] ? ctrl[SF_CTRL_T1] : t[r] + hr;
      for (sf_i64 j = 0; j < d; ++j) {
        sf_i64 i = r * d + j;
        y[i] = ytmp[i];
        k[i] = k[6 * stride + i];
      }
      t[r] = t_new;
      if (last[r]) {
        done[r] = 1;
        continue;
      }
    } else {
      rejected[r] += 1;
    }
    T ta = sf_abs(t[r]);
    if (!(sf_abs(h_next) > ctrl[SF_CTRL_H_MIN] && sf_abs(h_next) > ctrl[SF_CTRL_TEN_EPS] * ta)) {
      status[r] = 2;
      SF_ATOMIC_ADD(&counters[1], 1);
    }
    h[r] = h_next;
    SF_ATOMIC_ADD(&counters[0], 1);
  }
}

#define SF_INSTANTIATE_DP(T, S)                                                             \
  SF_KERNEL void dp_init1_##S(T* h, T* tst, T* ytmp, const T* y, const T* k0, const T* ctrl, \
                              T t0, sf_i64 rows, sf_i64 d) {                              \
    dp_init1<T>(h, tst, ytmp, y, k0, ctrl, t0, rows, d);                                  \
  }                                                                                       \
  SF_KERNEL void dp_init2_##S(T* h, const T* y, const T* k0, const T* k1, const T* ctrl,  \
                              T inv_order, sf_i64 rows, sf_i64 d) {                       \
    dp_init2<T>(h, y, k0, k1, ctrl, inv_order, rows, d);                                  \
  }                                                                                       \
  SF_KERNEL void dp_prepare_##S(T* hs, int* last, const T* t, const T* h, const int* done, \
                                const sf_u64* attempts, int* status, int* counters,      \
                                const T* ctrl, sf_u64 max_steps, sf_i64 rows) {          \
    dp_prepare<T>(hs, last, t, h, done, attempts, status, counters, ctrl, max_steps, rows); \
  }                                                                                       \
  SF_KERNEL void dp_stage_times_##S(T* tst, const T* t, const T* hs, T c, sf_i64 rows) {  \
    dp_stage_times<T>(tst, t, hs, c, rows);                                               \
  }                                                                                       \
  SF_KERNEL void dp_judge_##S(T* y, const T* ytmp, T* k, sf_i64 stride, T* t, T* h,       \
                              const T* hs, const int* last, int* done, sf_u64* attempts,  \
                              sf_u64* accepted, sf_u64* rejected, T* err_prev,            \
                              int* rejected_last, int* status, T* errv, int* counters,    \
                              const T* ctrl, const T* e, sf_i64 rows, sf_i64 d) {         \
    dp_judge<T>(y, ytmp, k, stride, t, h, hs, last, done, attempts, accepted, rejected,   \
                err_prev, rejected_last, status, errv, counters, ctrl, e, rows, d);       \
  }

SF_INSTANTIATE_DP(float, f32)
SF_INSTANTIATE_DP(double, f64)
