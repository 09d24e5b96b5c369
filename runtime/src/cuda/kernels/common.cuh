// socflow CUDA backend: device functions shared by the kernels.
//
// This file (and sampling.cu, otflow.cu, adaptive.cu) compiles three ways:
//  - with NVRTC at run time (the runtime prepends it to the kernel sources);
//  - with nvcc, for anyone who wants to look at the SASS;
//  - as host C++ with g++ (runtime/tests/all/cuda_host.rs), where the macros below turn
//    the device functions into plain inline functions, so that the tests run the very
//    same bodies on the CPU and compare them with the Rust implementations bit for bit.
//
// Everything that must agree bitwise with the CPU (the Brownian normals) uses only
// IEEE + - * / and sqrt, with no contraction into FMAs: the runtime compiles with
// --fmad=false and the host harness with -ffp-contract=off. Where the CPU itself uses
// fused multiply-adds (the activations of runtime/src/linalg.rs on a CPU with FMA),
// the port calls fma() explicitly, which --fmad=false does not affect.

#ifndef SOCFLOW_COMMON_CUH
#define SOCFLOW_COMMON_CUH

#if defined(__CUDACC__)
#define SF_DEV __device__ __forceinline__
#define SF_MEMBER __device__ __forceinline__
#define SF_KERNEL extern "C" __global__
#else
#include <math.h>
#include <string.h>
#define SF_DEV static inline
#define SF_MEMBER inline
#endif

typedef unsigned int sf_u32;
typedef unsigned long long sf_u64;
typedef long long sf_i64;

// ---------------------------------------------------------------------------------
// Bits and scalar math with one name for both precisions and both compilers.
// ---------------------------------------------------------------------------------

#if defined(__CUDACC__)
SF_DEV sf_u64 sf_f64_bits(double x) { return (sf_u64)__double_as_longlong(x); }
SF_DEV double sf_bits_f64(sf_u64 b) { return __longlong_as_double((sf_i64)b); }
#else
SF_DEV sf_u64 sf_f64_bits(double x) {
  sf_u64 b;
  memcpy(&b, &x, sizeof b);
  return b;
}
SF_DEV double sf_bits_f64(sf_u64 b) {
  double x;
  memcpy(&x, &b, sizeof x);
  return x;
}
#endif

SF_DEV float sf_fma(float a, float b, float c) { return fmaf(a, b, c); }
SF_DEV double sf_fma(double a, double b, double c) { return fma(a, b, c); }
SF_DEV float sf_abs(float x) { return fabsf(x); }
SF_DEV double sf_abs(double x) { return fabs(x); }
SF_DEV float sf_sqrt(float x) { return sqrtf(x); }
SF_DEV double sf_sqrt(double x) { return sqrt(x); }
SF_DEV bool sf_isnan(float x) { return x != x; }
SF_DEV bool sf_isnan(double x) { return x != x; }

// Per-precision constants, as Rust's `T::epsilon()`, `T::LOG2_E()`, `T::LN_2()`.
template <typename T> struct SfConst;
template <> struct SfConst<float> {
  static SF_MEMBER float epsilon() { return 1.1920928955078125e-7f; }
  static SF_MEMBER float log2_e() { return 1.44269504088896340735992468100189214f; }
  static SF_MEMBER float ln_2() { return 0.693147180559945309417232121458176568f; }
  static const bool single = true;
};
template <> struct SfConst<double> {
  static SF_MEMBER double epsilon() { return 2.220446049250313080847263336181640625e-16; }
  static SF_MEMBER double log2_e() { return 1.44269504088896340735992468100189214; }
  static SF_MEMBER double ln_2() { return 0.693147180559945309417232121458176568; }
  static const bool single = false;
};

// ---------------------------------------------------------------------------------
// Counter-based normals: runtime/src/brownian.rs, "The recipe".
// ---------------------------------------------------------------------------------

struct SfPhilox {
  sf_u32 x[4];
};

// Philox4x32-10 (Random123's philox4x32_R(10, ctr, key)).
SF_DEV SfPhilox sf_philox4x32_10(sf_u32 c0, sf_u32 c1, sf_u32 c2, sf_u32 c3, sf_u32 k0,
                                 sf_u32 k1) {
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    sf_u64 p0 = (sf_u64)0xD2511F53u * (sf_u64)c0;
    sf_u64 p1 = (sf_u64)0xCD9E8D57u * (sf_u64)c2;
    sf_u32 n0 = ((sf_u32)(p1 >> 32)) ^ c1 ^ k0;
    sf_u32 n1 = (sf_u32)p1;
    sf_u32 n2 = ((sf_u32)(p0 >> 32)) ^ c3 ^ k1;
    sf_u32 n3 = (sf_u32)p0;
    c0 = n0;
    c1 = n1;
    c2 = n2;
    c3 = n3;
  }
  SfPhilox r;
  r.x[0] = c0;
  r.x[1] = c1;
  r.x[2] = c2;
  r.x[3] = c3;
  return r;
}

// A uniform on 52 bits strictly inside (0, 1), exact in f64.
SF_DEV double sf_unit_open(sf_u32 hi, sf_u32 lo) {
  sf_u64 k = ((sf_u64)hi << 20) | (sf_u64)(lo >> 12);
  return ((double)k + 0.5) * (1.0 / 4503599627370496.0);
}

// ln u for u in (0, 1) from + - * / only (brownian.rs `ln_unit`).
SF_DEV double sf_ln_unit(double u) {
  sf_u64 bits = sf_f64_bits(u);
  sf_i64 e = (sf_i64)((bits >> 52) & 0x7ffu) - 1023;
  double m = sf_bits_f64((bits & 0x000fffffffffffffull) | 0x3ff0000000000000ull);
  if (m > 1.4142135623730951) {
    m *= 0.5;
    e += 1;
  }
  double s = (m - 1.0) / (m + 1.0);
  double s2 = s * s;
  const double C[12] = {2.0 / 3.0,  2.0 / 5.0,  2.0 / 7.0,  2.0 / 9.0,
                        2.0 / 11.0, 2.0 / 13.0, 2.0 / 15.0, 2.0 / 17.0,
                        2.0 / 19.0, 2.0 / 21.0, 2.0 / 23.0, 2.0 / 25.0};
  double q = C[11];
  for (int i = 10; i >= 0; --i) q = q * s2 + C[i];
  double ef = (double)e;
  double ln_m = 2.0 * s + s * (s2 * q);
  return ef * 6.931471803691238e-1 + (ef * 1.9082149292705877e-10 + ln_m);
}

struct SfSinCos {
  double sin;
  double cos;
};

// (sin 2 pi u, cos 2 pi u) for u in [0, 1] from + - * / only (brownian.rs `sincos_turn`).
SF_DEV SfSinCos sf_sincos_turn(double u) {
  double v = 4.0 * u;
  double q = round(v);
  double phi = (v - q) * 1.5707963267948966;
  double p2 = phi * phi;
  const double S[9] = {1.6666666666666666e-1, 8.333333333333333e-3, 1.984126984126984e-4,
                       2.7557319223985893e-6, 2.505210838544172e-8, 1.6059043836821613e-10,
                       7.647163731819816e-13, 2.8114572543455206e-15, 8.22063524662433e-18};
  const double K[9] = {0.5,
                       4.1666666666666664e-2,
                       1.388888888888889e-3,
                       2.48015873015873e-5,
                       2.755731922398589e-7,
                       2.08767569878681e-9,
                       1.1470745597729725e-11,
                       4.779477332387385e-14,
                       1.5619206968586225e-16};
  double ps = S[8];
  for (int i = 7; i >= 0; --i) ps = S[i] - p2 * ps;
  double sn = phi - phi * (p2 * ps);
  double pc = K[8];
  for (int i = 7; i >= 0; --i) pc = K[i] - p2 * pc;
  double cs = 1.0 - p2 * pc;
  SfSinCos r;
  switch (((sf_i64)q) & 3) {
    case 0:
      r.sin = sn;
      r.cos = cs;
      break;
    case 1:
      r.sin = cs;
      r.cos = -sn;
      break;
    case 2:
      r.sin = -sn;
      r.cos = -cs;
      break;
    default:
      r.sin = -cs;
      r.cos = sn;
      break;
  }
  return r;
}

struct SfPair {
  double z0;
  double z1;
};

// The two normals of counter j of (stream, sample, step) under seed: components 2j
// and 2j + 1 (the recipe in brownian.rs's module documentation).
SF_DEV SfPair sf_normal_pair(sf_u64 seed, sf_u32 stream, sf_u64 sample, sf_u32 step,
                             sf_u32 j) {
  sf_u32 hi = ((sf_u32)(sample >> 32)) | (stream << 16);
  SfPhilox x = sf_philox4x32_10(j, step, (sf_u32)sample, hi, (sf_u32)seed,
                                (sf_u32)(seed >> 32));
  double u1 = sf_unit_open(x.x[0], x.x[1]);
  double u2 = sf_unit_open(x.x[2], x.x[3]);
  double r = sqrt(-2.0 * sf_ln_unit(u1));
  SfSinCos sc = sf_sincos_turn(u2);
  SfPair p;
  p.z0 = r * sc.cos;
  p.z1 = r * sc.sin;
  return p;
}

// ---------------------------------------------------------------------------------
// Activations: runtime/src/linalg.rs with FMA (`exp_em1`, `log1p_unit`,
// `sigmoid_pair`, `silu_d`, `tanh_d`, `softplus_d`), so that a pre-activation gives
// the same bits as on a CPU with FMA.
// ---------------------------------------------------------------------------------

template <typename T> struct SfPairT {
  T a;
  T b;
};

// (e^x, e^x - 1) for x <= 0 (NaN propagates).
template <typename T> SF_DEV SfPairT<T> sf_exp_em1(T x) {
  const bool single = SfConst<T>::single;
  T lo = single ? (T)-87.0 : (T)-708.0;
  x = x < lo ? lo : x;
  T magic = (T)1.5 / SfConst<T>::epsilon();
  T n = sf_fma(x, SfConst<T>::log2_e(), magic) - magic;
  T ln2_hi = (T)0.693359375;
  T ln2_lo = (T)-2.1219444005469058e-4;
  T r = sf_fma(-n, ln2_hi, x);
  r = sf_fma(-n, ln2_lo, r);
  const double INV_FACT[14] = {1.0,
                               1.0,
                               0.5,
                               1.0 / 6.0,
                               1.0 / 24.0,
                               1.0 / 120.0,
                               1.0 / 720.0,
                               1.0 / 5040.0,
                               1.0 / 40320.0,
                               1.0 / 362880.0,
                               1.0 / 3628800.0,
                               1.0 / 39916800.0,
                               1.0 / 479001600.0,
                               1.0 / 6227020800.0};
  const int deg = single ? 7 : 13;
  T p = (T)INV_FACT[deg];
  for (int i = deg - 1; i >= 1; --i) p = sf_fma(p, r, (T)INV_FACT[i]);
  T q = p * r;
  const double M = 6755399441055744.0;
  double j = (double)n + (M + 1023.0);
  T s = (T)sf_bits_f64((sf_f64_bits(j) - sf_f64_bits(M)) << 52);
  SfPairT<T> out;
  out.a = sf_fma(s, q, s);
  out.b = sf_fma(s, q, s - (T)1.0);
  return out;
}

// log(1 + e) for e in [0, 1] given e and e - 1.
template <typename T> SF_DEV T sf_log1p_unit(T e, T em1) {
  const bool single = SfConst<T>::single;
  bool hi = e > (T)(1.4142135623730951 - 1.0);
  T f = hi ? em1 * (T)0.5 : e;
  T base = hi ? SfConst<T>::ln_2() : (T)0.0;
  T w = f / ((T)2.0 + f);
  T w2 = w * w;
  const int terms = single ? 6 : 11;
  T p = (T)(1.0 / (double)(2 * terms - 1));
  for (int k = terms - 2; k >= 0; --k) p = sf_fma(p, w2, (T)(1.0 / (double)(2 * k + 1)));
  return sf_fma((T)2.0 * w, p, base);
}

// (sigma(a), 1 - sigma(a)).
template <typename T> SF_DEV SfPairT<T> sf_sigmoid_pair(T a) {
  SfPairT<T> e = sf_exp_em1<T>(-sf_abs(a));
  T p = (T)1.0 / ((T)1.0 + e.a);
  T ep = e.a * p;
  SfPairT<T> out;
  if (a >= (T)0.0) {
    out.a = p;
    out.b = ep;
  } else {
    out.a = ep;
    out.b = p;
  }
  return out;
}

// (SiLU(a), SiLU'(a)).
template <typename T> SF_DEV SfPairT<T> sf_silu_d(T a) {
  SfPairT<T> s = sf_sigmoid_pair<T>(a);
  SfPairT<T> out;
  out.a = a * s.a;
  out.b = s.a * sf_fma(a, s.b, (T)1.0);
  return out;
}

// (tanh a, 1 - tanh^2 a).
template <typename T> SF_DEV SfPairT<T> sf_tanh_d(T a) {
  SfPairT<T> e = sf_exp_em1<T>((T)-2.0 * sf_abs(a));
  T th = -e.b / ((T)2.0 + e.b);
  th = a < (T)0.0 ? -th : th;
  T ope = (T)1.0 + e.a;
  SfPairT<T> out;
  out.a = th;
  out.b = (T)4.0 * e.a / (ope * ope);
  return out;
}

// (softplus(a), sigma(a)).
template <typename T> SF_DEV SfPairT<T> sf_softplus_d(T a) {
  SfPairT<T> e = sf_exp_em1<T>(-sf_abs(a));
  T p = (T)1.0 / ((T)1.0 + e.a);
  T s = a >= (T)0.0 ? p : e.a * p;
  T relu = a > (T)0.0 ? a : (T)0.0;
  relu = sf_isnan(a) ? a : relu;
  SfPairT<T> out;
  out.a = relu + sf_log1p_unit<T>(e.a, e.b);
  out.b = s;
  return out;
}

// (log(2 cosh a), tanh a): the OT-Flow activation and its derivative (linalg.rs
// `logcosh_tanh`).
template <typename T> SF_DEV SfPairT<T> sf_logcosh_tanh(T a) {
  T y = sf_abs(a);
  SfPairT<T> e = sf_exp_em1<T>((T)-2.0 * y);
  T th = -e.b / ((T)2.0 + e.b);
  th = a < (T)0.0 ? -th : th;
  SfPairT<T> out;
  out.a = y + sf_log1p_unit<T>(e.a, e.b);
  out.b = th;
  return out;
}

// Activation codes (runtime/src/cuda: `act_code`).
#define SF_ACT_IDENTITY 0
#define SF_ACT_SILU 1
#define SF_ACT_TANH 2
#define SF_ACT_SOFTPLUS 3

template <typename T> SF_DEV T sf_activate(int act, T a) {
  switch (act) {
    case SF_ACT_SILU:
      return sf_silu_d<T>(a).a;
    case SF_ACT_TANH:
      return sf_tanh_d<T>(a).a;
    case SF_ACT_SOFTPLUS:
      return sf_softplus_d<T>(a).a;
    default:
      return a;
  }
}

// ---------------------------------------------------------------------------------
// Per-element bodies of the integrators' kernels (runtime/src/ode/mod.rs `combine`,
// runtime/src/sde.rs, runtime/src/vpsde.rs `combine`), in the CPU's order of
// operations.
// ---------------------------------------------------------------------------------

// base + h * sum_l w[l] k[l] over the non-zero weights, in stage order (the first
// term assigned, the others added; no term: 0).
template <typename T>
SF_DEV T sf_rk_combine(int stages, const T* w, const T* k, sf_i64 stride, sf_i64 i, T base,
                       T h) {
  T acc = (T)0.0;
  bool first = true;
  for (int l = 0; l < stages; ++l) {
    if (w[l] == (T)0.0) continue;
    T term = w[l] * k[(sf_i64)l * stride + i];
    acc = first ? term : acc + term;
    first = false;
  }
  return base + h * acc;
}

// Euler-Maruyama (and the stochastic Heun predictor): x + f h + g dW.
template <typename T> SF_DEV T sf_em(T x, T f, T h, T g, T dw) { return x + f * h + g * dw; }

// Stochastic Heun corrector: x + (f + f2)/2 h + (g + g2)/2 dW.
template <typename T> SF_DEV T sf_heun(T x, T f, T f2, T h, T g, T g2, T dw) {
  const T half = (T)0.5;
  return x + (f + f2) * half * h + (g + g2) * half * dw;
}

// The VP-SDE fields a x + c net (vpsde.rs `combine`), net = pre-bias output + bias.
template <typename T> SF_DEV T sf_vp_combine(T a, T x, T c, T net) { return a * x + c * net; }

// ---------------------------------------------------------------------------------
// Kernels: every loop is grid-strided on the device; on the host a kernel is a plain
// function whose loop covers every element, so the harness runs the kernels themselves.
// ---------------------------------------------------------------------------------

#if defined(__CUDACC__)
#define SF_GRID_LOOP(i, n)                                                        \
  for (sf_i64 i = (sf_i64)blockIdx.x * blockDim.x + threadIdx.x; i < (n);         \
       i += (sf_i64)blockDim.x * gridDim.x)
#define SF_BODY __device__
#else
// Host C++ (the test harness): a kernel is a plain function whose loop covers every
// element, so the harness runs the kernels themselves on the CPU.
#define SF_GRID_LOOP(i, n) for (sf_i64 i = 0; i < (n); ++i)
#define SF_BODY static
#define SF_KERNEL extern "C"
#endif

#endif  // SOCFLOW_COMMON_CUH
