// Runs the CUDA backend's kernels on the CPU: runtime/src/cuda/kernels/*.cu compiled as
// host C++ (g++ -ffp-contract=off), each kernel a plain loop over its elements. The
// Rust test runtime/tests/all/cuda_host.rs writes the inputs on stdin and compares the
// outputs with the runtime's Rust implementations.
//
// Usage: harness MODE < input. Numbers travel as hexadecimal bit patterns (16 digits
// for f64, 8 for f32), one per token, so nothing is lost in printing.

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "../../src/cuda/kernels/common.cuh"
#include "../../src/cuda/kernels/sampling.cu"
#include "../../src/cuda/kernels/otflow.cu"
#include "../../src/cuda/kernels/adaptive.cu"

static sf_u64 read_u64() {
  unsigned long long v;
  if (std::scanf("%llx", &v) != 1) {
    std::fprintf(stderr, "harness: input ended early\n");
    std::exit(2);
  }
  return v;
}

static double read_f64() { return sf_bits_f64(read_u64()); }
static float read_f32() {
  sf_u32 b = (sf_u32)read_u64();
  float x;
  std::memcpy(&x, &b, sizeof x);
  return x;
}
static void put(double x) { std::printf("%016llx\n", (unsigned long long)sf_f64_bits(x)); }
static void put(float x) {
  sf_u32 b;
  std::memcpy(&b, &x, sizeof b);
  std::printf("%08x\n", b);
}

template <typename T> T read_t();
template <> double read_t<double>() { return read_f64(); }
template <> float read_t<float>() { return read_f32(); }

template <typename T> std::vector<T> read_vec(sf_i64 n) {
  std::vector<T> v((size_t)n);
  for (auto& x : v) x = read_t<T>();
  return v;
}

template <typename T> void put_vec(const std::vector<T>& v) {
  for (T x : v) put(x);
}

// act: prec act n values -> n values then n derivatives.
template <typename T> void act_mode() {
  int act = (int)read_u64();
  sf_i64 n = (sf_i64)read_u64();
  std::vector<T> a = read_vec<T>(n), v(n), dv(n);
  for (sf_i64 i = 0; i < n; ++i) {
    // Code 4: the OT-Flow activation (log 2 cosh, tanh).
    SfPairT<T> r = act == SF_ACT_SILU       ? sf_silu_d<T>(a[i])
                   : act == SF_ACT_TANH     ? sf_tanh_d<T>(a[i])
                   : act == SF_ACT_SOFTPLUS ? sf_softplus_d<T>(a[i])
                                            : sf_logcosh_tanh<T>(a[i]);
    v[i] = r.a;
    dv[i] = r.b;
  }
  put_vec(v);
  put_vec(dv);
}

// Kernels, each with its arguments read in order.
void normals_kernel(double* out, sf_u64 seed, sf_u32 stream, sf_u64 first, sf_u32 step,
                    sf_i64 rows, sf_i64 d, double scale) {
  normals_f64(out, seed, stream, first, step, rows, d, scale);
}
void normals_kernel(float* out, sf_u64 seed, sf_u32 stream, sf_u64 first, sf_u32 step,
                    sf_i64 rows, sf_i64 d, float scale) {
  normals_f32(out, seed, stream, first, step, rows, d, scale);
}
#define SF_DISPATCH(name)                                      \
  template <typename... A> void name##_k(double* p, A... a) { \
    name##_f64(p, a...);                                       \
  }                                                            \
  template <typename... A> void name##_k(float* p, A... a) {  \
    name##_f32(p, a...);                                       \
  }
SF_DISPATCH(bias_act)
SF_DISPATCH(field_out)
SF_DISPATCH(rk_stage)
SF_DISPATCH(em_step)
SF_DISPATCH(heun_step)
SF_DISPATCH(dp_init1)
SF_DISPATCH(dp_init2)
SF_DISPATCH(dp_prepare)
SF_DISPATCH(dp_stage_times)
SF_DISPATCH(dp_judge)

// normals: seed stream first step rows d scale -> rows*d values.
template <typename T> void normals_mode() {
  sf_u64 seed = read_u64();
  sf_u32 stream = (sf_u32)read_u64();
  sf_u64 first = read_u64();
  sf_u32 step = (sf_u32)read_u64();
  sf_i64 rows = (sf_i64)read_u64(), d = (sf_i64)read_u64();
  T scale = read_t<T>();
  std::vector<T> out((size_t)(rows * d));
  normals_kernel(out.data(), seed, stream, first, step, rows, d, scale);
  put_vec(out);
}

// bias_act: rows n act has_wt has_trows t c[rows*n] b[n] (wt[n]) (t_rows[rows]).
template <typename T> void bias_act_mode() {
  sf_i64 rows = (sf_i64)read_u64(), n = (sf_i64)read_u64();
  int act = (int)read_u64();
  bool has_wt = read_u64() != 0, has_trows = read_u64() != 0;
  T t = read_t<T>();
  std::vector<T> c = read_vec<T>(rows * n), b = read_vec<T>(n);
  std::vector<T> wt = has_wt ? read_vec<T>(n) : std::vector<T>();
  std::vector<T> tr = has_trows ? read_vec<T>(rows) : std::vector<T>();
  bias_act_k(c.data(), b.data(), has_wt ? wt.data() : nullptr,
             has_trows ? tr.data() : nullptr, t, rows, n, act);
  put_vec(c);
}

// field_out: rows d has_x has_ac a c v[rows*d] b[d] (x[rows*d]) (ac[2*rows]).
template <typename T> void field_out_mode() {
  sf_i64 rows = (sf_i64)read_u64(), d = (sf_i64)read_u64();
  bool has_x = read_u64() != 0, has_ac = read_u64() != 0;
  T a = read_t<T>(), c = read_t<T>();
  std::vector<T> v = read_vec<T>(rows * d), b = read_vec<T>(d);
  std::vector<T> x = has_x ? read_vec<T>(rows * d) : std::vector<T>();
  std::vector<T> ac = has_ac ? read_vec<T>(2 * rows) : std::vector<T>();
  field_out_k(v.data(), b.data(), has_x ? x.data() : nullptr, a, c,
              has_ac ? ac.data() : nullptr, rows, d);
  put_vec(v);
}

// rk: n stages w[7] h base[n] k[stages*n].
template <typename T> void rk_mode() {
  sf_i64 n = (sf_i64)read_u64();
  int stages = (int)read_u64();
  std::vector<T> w = read_vec<T>(7);
  T h = read_t<T>();
  std::vector<T> base = read_vec<T>(n), k = read_vec<T>(stages * n), out(n);
  rk_stage_k(out.data(), base.data(), k.data(), n, stages, w[0], w[1], w[2], w[3], w[4],
             w[5], w[6], h, (const T*)nullptr, (sf_i64)1, n);
  put_vec(out);
}

// sde: rows d h x f g[d] dw f2 g2[d] -> Euler-Maruyama result, then Heun's.
template <typename T> void sde_mode() {
  sf_i64 rows = (sf_i64)read_u64(), d = (sf_i64)read_u64();
  T h = read_t<T>();
  std::vector<T> x = read_vec<T>(rows * d), f = read_vec<T>(rows * d), g = read_vec<T>(d);
  std::vector<T> dw = read_vec<T>(rows * d), f2 = read_vec<T>(rows * d), g2 = read_vec<T>(d);
  std::vector<T> em(x.size());
  em_step_k(em.data(), x.data(), f.data(), g.data(), dw.data(), h, rows, d);
  heun_step_k(x.data(), f.data(), f2.data(), g.data(), g2.data(), dw.data(), h, rows, d);
  put_vec(em);
  put_vec(x);
}

// The test field of the adaptive mirror (cuda_host.rs `test_field`, same arithmetic):
// f_j = -(1 + t) x_j + 0.5 x_{j+1} - 0.1 x_j^3, indices mod d.
template <typename T>
void test_field(const std::vector<T>& t, const T* x, T* v, sf_i64 rows, sf_i64 d) {
  for (sf_i64 r = 0; r < rows; ++r) {
    for (sf_i64 j = 0; j < d; ++j) {
      T xj = x[r * d + j], xn = x[r * d + (j + 1) % d];
      v[r * d + j] = -((T)1.0 + t[r]) * xj + (T)0.5 * xn - (T)0.1 * xj * xj * xj;
    }
  }
}

// adaptive: rows d t0 t1 rtol atol h0 (0: Hairer's) h_max max_steps y[rows*d] ->
// status, y, steps, accepted, rejected. The GPU driver's sequence (cuda/sampler.rs
// `solve_adaptive`) with the host field above: the adaptive kernels against the CPU's
// solve_block.
template <typename T> void adaptive_mode() {
  sf_i64 rows = (sf_i64)read_u64(), d = (sf_i64)read_u64();
  T t0 = read_t<T>(), t1 = read_t<T>(), rtol = read_t<T>(), atol = read_t<T>();
  T h0 = read_t<T>(), h_max = read_t<T>();
  sf_u64 max_steps = read_u64();
  std::vector<T> y = read_vec<T>(rows * d);
  const double C[7] = {0.0, 1.0 / 5.0, 3.0 / 10.0, 4.0 / 5.0, 8.0 / 9.0, 1.0, 1.0};
  const double A[7][6] = {
      {0, 0, 0, 0, 0, 0},
      {1.0 / 5.0, 0, 0, 0, 0, 0},
      {3.0 / 40.0, 9.0 / 40.0, 0, 0, 0, 0},
      {44.0 / 45.0, -56.0 / 15.0, 32.0 / 9.0, 0, 0, 0},
      {19372.0 / 6561.0, -25360.0 / 2187.0, 64448.0 / 6561.0, -212.0 / 729.0, 0, 0},
      {9017.0 / 3168.0, -355.0 / 33.0, 46732.0 / 5247.0, 49.0 / 176.0, -5103.0 / 18656.0, 0},
      {35.0 / 384.0, 0.0, 500.0 / 1113.0, 125.0 / 192.0, -2187.0 / 6784.0, 11.0 / 84.0}};
  const double E[7] = {71.0 / 57600.0,       0.0,           -71.0 / 16695.0, 71.0 / 1920.0,
                       -17253.0 / 339200.0, 22.0 / 525.0, -1.0 / 40.0};
  sf_i64 n = rows * d, stride = n;
  T dir = t1 > t0 ? (T)1.0 : (T)-1.0;
  T span = sf_abs(t1 - t0);
  h_max = sf_fmin(h_max, span);
  T ctrl[13] = {rtol,       atol,       (T)(double)d, (T)0.9,  (T)0.2,
                (T)10.0,    (T)0.17,    (T)0.04,      h_max,   (T)0.0,
                (T)10.0 * SfConst<T>::epsilon(), t1, dir};
  T e[7];
  for (int l = 0; l < 7; ++l) e[l] = (T)E[l];
  std::vector<T> k(7 * n), ytmp(n), t(rows, t0), h(rows), hs(rows), tst(rows), errv(rows);
  std::vector<T> err_prev(rows, (T)1e-4);
  std::vector<int> last(rows), done(rows), rejected_last(rows), status(rows), counters(2);
  std::vector<sf_u64> attempts(rows), accepted(rows), rejected(rows);
  test_field(t, y.data(), k.data(), rows, d);
  if (h0 > (T)0.0) {
    for (auto& v : h) v = dir * sf_fmin(h0, h_max);
  } else {
    dp_init1_k(h.data(), tst.data(), ytmp.data(), y.data(), k.data(), ctrl, t0, rows, d);
    test_field(tst, ytmp.data(), k.data() + stride, rows, d);
    dp_init2_k(h.data(), y.data(), k.data(), k.data() + stride, ctrl, (T)1.0 / (T)5.0, rows, d);
  }
  for (;;) {
    counters[0] = counters[1] = 0;
    dp_prepare_k(hs.data(), last.data(), t.data(), h.data(), done.data(), attempts.data(),
                 status.data(), counters.data(), ctrl, max_steps, rows);
    for (int j = 1; j < 7; ++j) {
      dp_stage_times_k(tst.data(), t.data(), hs.data(), (T)C[j], rows);
      T w[7] = {0, 0, 0, 0, 0, 0, 0};
      for (int l = 0; l < j; ++l) w[l] = (T)A[j][l];
      rk_stage_k(ytmp.data(), y.data(), k.data(), stride, j, w[0], w[1], w[2], w[3], w[4], w[5],
                 w[6], (T)0.0, (const T*)hs.data(), d, n);
      test_field(tst, ytmp.data(), k.data() + j * stride, rows, d);
    }
    dp_judge_k(y.data(), ytmp.data(), k.data(), stride, t.data(), h.data(), hs.data(),
               last.data(), done.data(), attempts.data(), accepted.data(), rejected.data(),
               err_prev.data(), rejected_last.data(), status.data(), errv.data(),
               counters.data(), ctrl, e, rows, d);
    if (counters[1] > 0 || counters[0] == 0) break;
  }
  sf_u64 st = 0, ac = 0, rj = 0;
  int bad = 0;
  for (sf_i64 r = 0; r < rows; ++r) {
    st += attempts[r];
    ac += accepted[r];
    rj += rejected[r];
    if (status[r] && !bad) bad = status[r];
  }
  std::printf("%x\n", bad);
  put_vec(y);
  std::printf("%llx %llx %llx\n", st, ac, rj);
}

template <typename T> void run(const std::string& mode) {
  if (mode == "adaptive") return adaptive_mode<T>();
  if (mode == "act") return act_mode<T>();
  if (mode == "normals") return normals_mode<T>();
  if (mode == "bias_act") return bias_act_mode<T>();
  if (mode == "field_out") return field_out_mode<T>();
  if (mode == "rk") return rk_mode<T>();
  if (mode == "sde") return sde_mode<T>();
  std::fprintf(stderr, "harness: unknown mode %s\n", mode.c_str());
  std::exit(2);
}

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: harness f32|f64|rng MODE < input\n");
    return 2;
  }
  std::string prec = argv[1], mode = argv[2];
  if (prec == "rng") {
    // ln / sincos / philox on raw inputs.
    sf_i64 n = (sf_i64)read_u64();
    for (sf_i64 i = 0; i < n; ++i) {
      if (mode == "ln") {
        put(sf_ln_unit(read_f64()));
      } else if (mode == "sincos") {
        SfSinCos sc = sf_sincos_turn(read_f64());
        put(sc.sin);
        put(sc.cos);
      } else if (mode == "philox") {
        sf_u32 c[6];
        for (auto& v : c) v = (sf_u32)read_u64();
        SfPhilox p = sf_philox4x32_10(c[0], c[1], c[2], c[3], c[4], c[5]);
        std::printf("%08x %08x %08x %08x\n", p.x[0], p.x[1], p.x[2], p.x[3]);
      } else {
        std::fprintf(stderr, "harness: unknown mode %s\n", mode.c_str());
        return 2;
      }
    }
    return 0;
  }
  if (prec == "f64") {
    run<double>(mode);
  } else if (prec == "f32") {
    run<float>(mode);
  } else {
    std::fprintf(stderr, "harness: unknown precision %s\n", prec.c_str());
    return 2;
  }
  return 0;
}
