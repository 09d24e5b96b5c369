// socflow CUDA backend: the OT-Flow potential's batch kernels (runtime/src/nn/otflow.rs,
// MATH.md section 1). The GEMMs are cuBLAS calls made from Rust; these kernels do the
// elementwise maps and the per-row reductions between them. One thread per row for
// the reductions (m and d are at most a few hundred in practice).

#ifndef SOCFLOW_COMMON_CUH
#include "common.cuh"
#endif

// s = [x, t] (rows x (d+1)), row r at t_rows[r] or the common t.
template <typename T>
SF_BODY void ot_input(T* s, const T* x, const T* t_rows, T t, sf_i64 rows, sf_i64 d) {
  sf_i64 ns = d + 1;
  SF_GRID_LOOP(i, rows * ns) {
    sf_i64 r = i / ns;
    sf_i64 j = i - r * ns;
    s[i] = j < d ? x[r * d + j] : (t_rows ? t_rows[r] : t);
  }
}

// u <- sigma(a + b) (first layer) or u + eta sigma(a + b), sigma = log 2cosh; ts <-
// tanh(a + b) (a is only read).
template <typename T>
SF_BODY void ot_act(T* a, T* u, T* ts, const T* b, T eta, int first, sf_i64 rows, sf_i64 m) {
  SF_GRID_LOOP(i, rows * m) {
    T v = a[i] + b[i % m];
    SfPairT<T> st = sf_logcosh_tanh<T>(v);
    u[i] = first ? st.a : sf_fma(eta, st.a, u[i]);
    ts[i] = st.b;
  }
}

// z <- w in every row.
template <typename T> SF_BODY void ot_fill_rows(T* z, const T* w, sf_i64 rows, sf_i64 m) {
  SF_GRID_LOOP(i, rows * m) { z[i] = w[i % m]; }
}

// g <- c ts z (otflow.rs `scale_prod`).
template <typename T> SF_BODY void ot_scale_prod(T* g, const T* ts, const T* z, T c, sf_i64 n) {
  SF_GRID_LOOP(i, n) { g[i] = c * ts[i] * z[i]; }
}

// Per row: the quadratic and linear terms (otflow.rs `block_finish`): gs += sum_k
// (A_k s) A_k + c_w; v = sign grad_x, and when not null phi = w.u + qq/2 + c_w.s + c_b,
// dt = (grad_s)_d.
template <typename T>
SF_BODY void ot_finish(const T* s, T* gs, const T* u, const T* A, const T* cw, const T* w,
                       T cb, sf_i64 rows, sf_i64 d, sf_i64 m, sf_i64 r, T* v, T sign, T* phi,
                       T* dt) {
  sf_i64 ns = d + 1;
  SF_GRID_LOOP(row, rows) {
    const T* srow = s + row * ns;
    T* grow = gs + row * ns;
    T qq = (T)0.0;
    for (sf_i64 k = 0; k < r; ++k) {
      const T* arow = A + k * ns;
      T qk = (T)0.0;
      for (sf_i64 j = 0; j < ns; ++j) qk = sf_fma(arow[j], srow[j], qk);
      qq = sf_fma(qk, qk, qq);
      for (sf_i64 j = 0; j < ns; ++j) grow[j] = sf_fma(qk, arow[j], grow[j]);
    }
    for (sf_i64 j = 0; j < ns; ++j) grow[j] = grow[j] + cw[j];
    for (sf_i64 j = 0; j < d; ++j) v[row * d + j] = sign * grow[j];
    if (dt) dt[row] = grow[d];
    if (phi) {
      T wu = (T)0.0, cs = (T)0.0;
      for (sf_i64 h = 0; h < m; ++h) wu = sf_fma(w[h], u[row * m + h], wu);
      for (sf_i64 j = 0; j < ns; ++j) cs = sf_fma(cw[j], srow[j], cs);
      phi[row] = wu + (T)0.5 * qq + cs + cb;
    }
  }
}

// The Laplacian's first term per row: tr = sum_h (1 - tanh^2 a0) z1 sum_{k<d} K0[h,k]^2.
template <typename T>
SF_BODY void ot_lap_tr0(T* tr, const T* ts0, const T* z1, const T* k0sq, sf_i64 rows,
                        sf_i64 m) {
  SF_GRID_LOOP(row, rows) {
    T acc = (T)0.0;
    for (sf_i64 h = 0; h < m; ++h) {
      T t = ts0[row * m + h];
      acc = sf_fma(sf_fma(-t, t, (T)1.0) * z1[row * m + h], k0sq[h], acc);
    }
    tr[row] = acc;
  }
}

// The initial tangents JT[(r, k), h] = tanh(a0)[r, h] K0[h, k] ((rows d) x m).
template <typename T>
SF_BODY void ot_lap_jt0(T* jt, const T* ts0, const T* k0, sf_i64 rows, sf_i64 d, sf_i64 m) {
  sf_i64 ns = d + 1;
  SF_GRID_LOOP(i, rows * d * m) {
    sf_i64 h = i % m;
    sf_i64 rk = i / m;
    sf_i64 r = rk / d;
    sf_i64 k = rk - r * d;
    jt[i] = ts0[r * m + h] * k0[h * ns + k];
  }
}

// One layer's Laplacian term per row: tr += eta sum_h (1 - tanh^2 a_i) z_{i+1} sum_k
// KJ[(r,k),h]^2, with z_{i+1} = w in every row when z is null.
template <typename T>
SF_BODY void ot_lap_tr(T* tr, const T* ti, const T* z, const T* w, const T* kjt, T eta,
                       sf_i64 rows, sf_i64 d, sf_i64 m) {
  SF_GRID_LOOP(row, rows) {
    T acc = (T)0.0;
    for (sf_i64 h = 0; h < m; ++h) {
      T sq = (T)0.0;
      for (sf_i64 k = 0; k < d; ++k) {
        T v = kjt[(row * d + k) * m + h];
        sq = sf_fma(v, v, sq);
      }
      T t = ti[row * m + h];
      T zh = z ? z[row * m + h] : w[h];
      acc = sf_fma(sf_fma(-t, t, (T)1.0) * zh, sq, acc);
    }
    tr[row] = sf_fma(eta, acc, tr[row]);
  }
}

// JT <- JT + eta diag(tanh a_i) KJ.
template <typename T>
SF_BODY void ot_lap_jt(T* jt, const T* kjt, const T* ti, T eta, sf_i64 rows, sf_i64 d,
                       sf_i64 m) {
  SF_GRID_LOOP(i, rows * d * m) {
    sf_i64 h = i % m;
    sf_i64 r = i / (d * m);
    jt[i] = sf_fma(eta * ti[r * m + h], kjt[i], jt[i]);
  }
}

// lap = sign (tr + tr_A).
template <typename T>
SF_BODY void ot_lap_out(T* lap, const T* tr, T tr_a, T sign, sf_i64 rows) {
  SF_GRID_LOOP(row, rows) { lap[row] = sign * (tr[row] + tr_a); }
}

#define SF_INSTANTIATE_OT(T, S)                                                            \
  SF_KERNEL void ot_input_##S(T* s, const T* x, const T* t_rows, T t, sf_i64 rows,       \
                              sf_i64 d) {                                                \
    ot_input<T>(s, x, t_rows, t, rows, d);                                               \
  }                                                                                      \
  SF_KERNEL void ot_act_##S(T* a, T* u, T* ts, const T* b, T eta, int first, sf_i64 rows, \
                            sf_i64 m) {                                                  \
    ot_act<T>(a, u, ts, b, eta, first, rows, m);                                         \
  }                                                                                      \
  SF_KERNEL void ot_fill_rows_##S(T* z, const T* w, sf_i64 rows, sf_i64 m) {             \
    ot_fill_rows<T>(z, w, rows, m);                                                      \
  }                                                                                      \
  SF_KERNEL void ot_scale_prod_##S(T* g, const T* ts, const T* z, T c, sf_i64 n) {       \
    ot_scale_prod<T>(g, ts, z, c, n);                                                    \
  }                                                                                      \
  SF_KERNEL void ot_finish_##S(const T* s, T* gs, const T* u, const T* A, const T* cw,   \
                               const T* w, T cb, sf_i64 rows, sf_i64 d, sf_i64 m,        \
                               sf_i64 r, T* v, T sign, T* phi, T* dt) {                  \
    ot_finish<T>(s, gs, u, A, cw, w, cb, rows, d, m, r, v, sign, phi, dt);               \
  }                                                                                      \
  SF_KERNEL void ot_lap_tr0_##S(T* tr, const T* ts0, const T* z1, const T* k0sq,         \
                                sf_i64 rows, sf_i64 m) {                                 \
    ot_lap_tr0<T>(tr, ts0, z1, k0sq, rows, m);                                           \
  }                                                                                      \
  SF_KERNEL void ot_lap_jt0_##S(T* jt, const T* ts0, const T* k0, sf_i64 rows, sf_i64 d, \
                                sf_i64 m) {                                              \
    ot_lap_jt0<T>(jt, ts0, k0, rows, d, m);                                              \
  }                                                                                      \
  SF_KERNEL void ot_lap_tr_##S(T* tr, const T* ti, const T* z, const T* w, const T* kjt, \
                               T eta, sf_i64 rows, sf_i64 d, sf_i64 m) {                 \
    ot_lap_tr<T>(tr, ti, z, w, kjt, eta, rows, d, m);                                    \
  }                                                                                      \
  SF_KERNEL void ot_lap_jt_##S(T* jt, const T* kjt, const T* ti, T eta, sf_i64 rows,     \
                               sf_i64 d, sf_i64 m) {                                     \
    ot_lap_jt<T>(jt, kjt, ti, eta, rows, d, m);                                          \
  }                                                                                      \
  SF_KERNEL void ot_lap_out_##S(T* lap, const T* tr, T tr_a, T sign, sf_i64 rows) {      \
    ot_lap_out<T>(lap, tr, tr_a, sign, rows);                                            \
  }

SF_INSTANTIATE_OT(float, f32)
SF_INSTANTIATE_OT(double, f64)
