// socflow trainer, CUDA backend: the per-element device functions of the kernels.
//
// This file compiles two ways:
//  - with NVRTC at run time (trainer/src/autodiff/cuda/kernels.rs prepends it to
//    kernels.cu), with --fmad=false: no multiply-add is contracted, so every expression
//    rounds where the CPU backend's Rust code (trainer/src/autodiff/cpu.rs) rounds, and
//    the activations call fma() explicitly where the CPU's FMA path fuses
//    (runtime/src/linalg.rs `exp_em1_full`, `log1p_unit`, `tanh_full`, ...);
//  - as host C++ with g++ -ffp-contract=off (trainer/tests/all/cuda_host.rs), where the
//    macros below make the device functions plain inline functions, so that the tests
//    run these very bodies on the CPU and compare them with the Cpu backend bit for bit.
//
// Storage types: double, float, and the 16-bit types as raw bits (ad_f16, ad_bf16),
// converted in software with round-to-nearest-even exactly as the `half` crate does
// (so the same code runs on the host, and no CUDA header is needed). The compute type
// is double for double and float for the others (cpu.rs: a 16-bit kernel widens its
// exact inputs to f32, computes in f32 and rounds its output once).

#ifndef AD_OPS_CUH
#define AD_OPS_CUH

#if defined(__CUDACC__)
#define AD_DEV __device__ __forceinline__
#define AD_MEMBER __device__ __forceinline__
#else
#include <math.h>
#include <string.h>
#define AD_DEV static inline
#define AD_MEMBER inline
#endif

typedef unsigned short ad_u16;
typedef unsigned int ad_u32;
typedef unsigned long long ad_u64;
typedef long long ad_i64;

// IEEE binary16 and bfloat16, stored as their bits.
struct ad_f16 {
  ad_u16 bits;
};
struct ad_bf16 {
  ad_u16 bits;
};

// ---------------------------------------------------------------------------------
// Bits and scalar math with one name for both precisions and both compilers.
// ---------------------------------------------------------------------------------

#if defined(__CUDACC__)
AD_DEV ad_u32 ad_f32_bits(float x) { return __float_as_uint(x); }
AD_DEV float ad_bits_f32(ad_u32 b) { return __uint_as_float(b); }
AD_DEV ad_u64 ad_f64_bits(double x) { return (ad_u64)__double_as_longlong(x); }
AD_DEV double ad_bits_f64(ad_u64 b) { return __longlong_as_double((long long)b); }
#else
AD_DEV ad_u32 ad_f32_bits(float x) {
  ad_u32 b;
  memcpy(&b, &x, sizeof b);
  return b;
}
AD_DEV float ad_bits_f32(ad_u32 b) {
  float x;
  memcpy(&x, &b, sizeof x);
  return x;
}
AD_DEV ad_u64 ad_f64_bits(double x) {
  ad_u64 b;
  memcpy(&b, &x, sizeof b);
  return b;
}
AD_DEV double ad_bits_f64(ad_u64 b) {
  double x;
  memcpy(&x, &b, sizeof x);
  return x;
}
#endif

AD_DEV float ad_fma(float a, float b, float c) { return fmaf(a, b, c); }
AD_DEV double ad_fma(double a, double b, double c) { return fma(a, b, c); }
AD_DEV float ad_abs(float x) { return fabsf(x); }
AD_DEV double ad_abs(double x) { return fabs(x); }
AD_DEV float ad_sqrt(float x) { return sqrtf(x); }
AD_DEV double ad_sqrt(double x) { return sqrt(x); }
AD_DEV float ad_exp(float x) { return expf(x); }
AD_DEV double ad_exp(double x) { return exp(x); }
AD_DEV float ad_log(float x) { return logf(x); }
AD_DEV double ad_log(double x) { return log(x); }
AD_DEV float ad_sin(float x) { return sinf(x); }
AD_DEV double ad_sin(double x) { return sin(x); }
AD_DEV float ad_cos(float x) { return cosf(x); }
AD_DEV double ad_cos(double x) { return cos(x); }
AD_DEV bool ad_isnan(float x) { return x != x; }
AD_DEV bool ad_isnan(double x) { return x != x; }
// Rust's `is_sign_negative` (true for -0.0 and negative NaNs).
AD_DEV bool ad_signbit(float x) { return (ad_f32_bits(x) >> 31) != 0; }
AD_DEV bool ad_signbit(double x) { return (ad_f64_bits(x) >> 63) != 0; }

// Per-precision constants: Rust's `T::epsilon()`, `T::LOG2_E()`, `T::LN_2()`.
template <typename T> struct AdConst;
template <> struct AdConst<float> {
  static AD_MEMBER float epsilon() { return 1.1920928955078125e-7f; }
  static AD_MEMBER float log2_e() { return 1.44269504088896340735992468100189214f; }
  static AD_MEMBER float ln_2() { return 0.693147180559945309417232121458176568f; }
  static const bool single = true;
};
template <> struct AdConst<double> {
  static AD_MEMBER double epsilon() { return 2.220446049250313080847263336181640625e-16; }
  static AD_MEMBER double log2_e() { return 1.44269504088896340735992468100189214; }
  static AD_MEMBER double ln_2() { return 0.693147180559945309417232121458176568; }
  static const bool single = false;
};

// ---------------------------------------------------------------------------------
// 16-bit conversions: the `half` crate's (round to nearest, ties to even).
// ---------------------------------------------------------------------------------

// binary16 -> f32, exact.
AD_DEV float ad_f16_to_f32(ad_u16 h) {
  ad_u32 sign = (ad_u32)(h & 0x8000u) << 16;
  ad_u32 exp = h & 0x7c00u;
  ad_u32 man = h & 0x03ffu;
  if (exp == 0x7c00u) {
    // Infinity, or NaN with its payload kept and the quiet bit set.
    return ad_bits_f32(man == 0 ? (sign | 0x7f800000u) : (sign | 0x7fc00000u | (man << 13)));
  }
  if (exp == 0) {
    // Zero or subnormal: man * 2^-24, exact in f32.
    float v = (float)man * 5.9604644775390625e-8f;
    return ad_bits_f32(ad_f32_bits(v) | sign);
  }
  return ad_bits_f32(sign | (((exp >> 10) + 112u) << 23) | (man << 13));
}

// f32 -> binary16, to nearest, ties to even (half's `f32_to_f16_fallback`).
AD_DEV ad_u16 ad_f32_to_f16(float value) {
  ad_u32 x = ad_f32_bits(value);
  ad_u32 sign = x & 0x80000000u;
  ad_u32 exp = x & 0x7f800000u;
  ad_u32 man = x & 0x007fffffu;
  ad_u32 half_sign = sign >> 16;
  if (exp == 0x7f800000u) {
    ad_u32 nan_bit = man == 0 ? 0u : 0x0200u;
    return (ad_u16)(half_sign | 0x7c00u | nan_bit | (man >> 13));
  }
  int half_exp = (int)(exp >> 23) - 127 + 15;
  if (half_exp >= 0x1f) return (ad_u16)(half_sign | 0x7c00u);
  if (half_exp <= 0) {
    if (14 - half_exp > 24) return (ad_u16)half_sign;
    ad_u32 m = man | 0x00800000u;
    ad_u32 half_man = m >> (14 - half_exp);
    ad_u32 round_bit = 1u << (13 - half_exp);
    if ((m & round_bit) != 0 && (m & (3u * round_bit - 1u)) != 0) half_man += 1;
    return (ad_u16)(half_sign | half_man);
  }
  ad_u32 bits = half_sign | ((ad_u32)half_exp << 10) | (man >> 13);
  ad_u32 round_bit = 0x00001000u;
  if ((man & round_bit) != 0 && (man & (3u * round_bit - 1u)) != 0) bits += 1;
  return (ad_u16)bits;
}

// bfloat16 -> f32, exact (a NaN gets its quiet bit).
AD_DEV float ad_bf16_to_f32(ad_u16 h) {
  ad_u32 x = (ad_u32)h << 16;
  if ((x & 0x7fffffffu) > 0x7f800000u) x |= 0x00400000u;
  return ad_bits_f32(x);
}

// f32 -> bfloat16, to nearest, ties to even (half's `f32_to_bf16`).
AD_DEV ad_u16 ad_f32_to_bf16(float value) {
  ad_u32 x = ad_f32_bits(value);
  if ((x & 0x7fffffffu) > 0x7f800000u) return (ad_u16)((x >> 16) | 0x0040u);
  ad_u32 round_bit = 0x00008000u;
  if ((x & round_bit) != 0 && (x & (3u * round_bit - 1u)) != 0) return (ad_u16)((x >> 16) + 1u);
  return (ad_u16)(x >> 16);
}

// f64 -> f32 rounding ties to the odd neighbour (cpu.rs `f64_to_f32_odd`): rounding
// that once more to a 16-bit type gives the correctly rounded 16-bit value.
AD_DEV float ad_f64_to_f32_odd(double x) {
  float f = (float)x;
  bool finite = !(x != x) && ad_abs(x) <= 1.7976931348623157e308;
  if (!finite || (double)f == x) return f;
  ad_u32 b = ad_f32_bits(f);
  if (ad_abs((double)f) > ad_abs(x)) b -= 1u;
  return ad_bits_f32(b | 1u);
}

// A storage type: its compute type C, how it widens to C (exactly) and rounds from C
// (once), and its exact value in f64 / rounding from f64 (cpu.rs `Elem`).
template <typename S> struct AdElem;
template <> struct AdElem<double> {
  typedef double C;
  static AD_MEMBER double load(double v) { return v; }
  static AD_MEMBER double store(double c) { return c; }
  static AD_MEMBER double to_f64(double v) { return v; }
  static AD_MEMBER double from_f64(double x) { return x; }
};
template <> struct AdElem<float> {
  typedef float C;
  static AD_MEMBER float load(float v) { return v; }
  static AD_MEMBER float store(float c) { return c; }
  static AD_MEMBER double to_f64(float v) { return (double)v; }
  static AD_MEMBER float from_f64(double x) { return (float)x; }
};
template <> struct AdElem<ad_f16> {
  typedef float C;
  static AD_MEMBER float load(ad_f16 v) { return ad_f16_to_f32(v.bits); }
  static AD_MEMBER ad_f16 store(float c) {
    ad_f16 r;
    r.bits = ad_f32_to_f16(c);
    return r;
  }
  static AD_MEMBER double to_f64(ad_f16 v) { return (double)load(v); }
  static AD_MEMBER ad_f16 from_f64(double x) { return store(ad_f64_to_f32_odd(x)); }
};
template <> struct AdElem<ad_bf16> {
  typedef float C;
  static AD_MEMBER float load(ad_bf16 v) { return ad_bf16_to_f32(v.bits); }
  static AD_MEMBER ad_bf16 store(float c) {
    ad_bf16 r;
    r.bits = ad_f32_to_bf16(c);
    return r;
  }
  static AD_MEMBER double to_f64(ad_bf16 v) { return (double)load(v); }
  static AD_MEMBER ad_bf16 from_f64(double x) { return store(ad_f64_to_f32_odd(x)); }
};

// ---------------------------------------------------------------------------------
// Activations: runtime/src/linalg.rs's full-range forms with FMA (`exp_em1_full`,
// `log1p_unit`, `tanh_full`, `sech2_full`, `logcosh_full`, `sigmoid_both`,
// `softplus_full`, and `k_act`'s SiLU family), so that an input gives the same bits
// as the Cpu backend on a CPU with FMA.
// ---------------------------------------------------------------------------------

// (e^x, e^x - 1) for x <= 0 over T's whole range, results below the normal range
// rounded once into the subnormals (NaN propagates).
template <typename T> AD_DEV void ad_exp_em1_full(T x, T* e_out, T* em1_out) {
  const bool single = AdConst<T>::single;
  T lo = single ? (T)-110.0 : (T)-750.0;
  x = x < lo ? lo : x;
  T magic = (T)1.5 / AdConst<T>::epsilon();
  T n = ad_fma(x, AdConst<T>::log2_e(), magic) - magic;
  T ln2_hi = (T)0.693359375;
  T ln2_lo = (T)-2.1219444005469058e-4;
  T r = ad_fma(-n, ln2_hi, x);
  r = ad_fma(-n, ln2_lo, r);
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
  for (int i = deg - 1; i >= 1; --i) p = ad_fma(p, r, (T)INV_FACT[i]);
  T q = p * r;
  T min_exp = single ? (T)-126.0 : (T)-1022.0;
  bool low = n < min_exp;
  T k = low ? (T)64.0 : (T)0.0;
  const double M = 6755399441055744.0;
  double j = (double)(n + k) + (M + 1023.0);
  T s = (T)ad_bits_f64((ad_f64_bits(j) - ad_f64_bits(M)) << 52);
  T unscale = low ? (T)5.421010862427522e-20 : (T)1.0;
  T e = ad_fma(s, q, s) * unscale;
  *e_out = e;
  *em1_out = low ? e - (T)1.0 : ad_fma(s, q, s - (T)1.0);
}

// log(1 + e) for e in [0, 1] given e and e - 1.
template <typename T> AD_DEV T ad_log1p_unit(T e, T em1) {
  const bool single = AdConst<T>::single;
  bool hi = e > (T)(1.4142135623730951 - 1.0);
  T f = hi ? em1 * (T)0.5 : e;
  T base = hi ? AdConst<T>::ln_2() : (T)0.0;
  T w = f / ((T)2.0 + f);
  T w2 = w * w;
  const int terms = single ? 6 : 11;
  T p = (T)(1.0 / (double)(2 * terms - 1));
  for (int k = terms - 2; k >= 0; --k) p = ad_fma(p, w2, (T)(1.0 / (double)(2 * k + 1)));
  return ad_fma((T)2.0 * w, p, base);
}

// tanh a, the sign of zero kept.
template <typename T> AD_DEV T ad_tanh(T a) {
  T e, em1;
  ad_exp_em1_full<T>((T)-2.0 * ad_abs(a), &e, &em1);
  T th = ad_abs(-em1 / ((T)2.0 + em1));
  return ad_signbit(a) ? -th : th;
}

// sech^2 a = 4e/(1 + e)^2, e = e^{-2|a|}.
template <typename T> AD_DEV T ad_sech2(T a) {
  T e, em1;
  ad_exp_em1_full<T>((T)-2.0 * ad_abs(a), &e, &em1);
  T d = (T)1.0 + e;
  return (T)4.0 * e / (d * d);
}

// log(2 cosh a) = |a| + log(1 + e^{-2|a|}).
template <typename T> AD_DEV T ad_logcosh(T a) {
  T y = ad_abs(a);
  T e, em1;
  ad_exp_em1_full<T>((T)-2.0 * y, &e, &em1);
  return y + ad_log1p_unit<T>(e, em1);
}

// (sigma(a), sigma(-a)), each one division.
template <typename T> AD_DEV void ad_sigmoid_both(T a, T* s, T* sm) {
  T e, em1;
  ad_exp_em1_full<T>(-ad_abs(a), &e, &em1);
  T d = (T)1.0 + e;
  bool pos = a >= (T)0.0;
  *s = (pos ? (T)1.0 : e) / d;
  *sm = (pos ? e : (T)1.0) / d;
}

// softplus a = max(a, 0) + log(1 + e^{-|a|}) (NaN propagates).
template <typename T> AD_DEV T ad_softplus(T a) {
  T e, em1;
  ad_exp_em1_full<T>(-ad_abs(a), &e, &em1);
  T relu = a > (T)0.0 ? a : (T)0.0;
  relu = ad_isnan(a) ? a : relu;
  return relu + ad_log1p_unit<T>(e, em1);
}

// The maps of `UnaryOp`, numbered as `UnaryOp::ALL` lists them.
#define AD_NEG 0
#define AD_SQUARE 1
#define AD_ABS 2
#define AD_SIGN 3
#define AD_RECIP 4
#define AD_EXP 5
#define AD_LOG 6
#define AD_SQRT 7
#define AD_TANH 8
#define AD_SECH2 9
#define AD_SIGMOID 10
#define AD_SILU 11
#define AD_SILU_PRIME 12
#define AD_SILU_SECOND 13
#define AD_SOFTPLUS 14
#define AD_LOGCOSH 15
#define AD_SIN 16
#define AD_COS 17

// y = op(v) in the compute type T (cpu.rs `unary_k`). exp, log, sin and cos are the
// platform's (CUDA's libdevice on the GPU, within 1-2 ulps of the CPU's libm); every
// other map rounds exactly as the CPU does.
template <typename T> AD_DEV T ad_unary(int op, T v) {
  T s, sm;
  switch (op) {
    case AD_NEG:
      return -v;
    case AD_SQUARE:
      return v * v;
    case AD_ABS:
      return ad_abs(v);
    case AD_SIGN:
      // +-0 stays 0, NaN stays NaN.
      return v > (T)0.0 ? (T)1.0 : v < (T)0.0 ? (T)-1.0 : v * (T)0.0;
    case AD_RECIP:
      return (T)1.0 / v;
    case AD_EXP:
      return ad_exp(v);
    case AD_LOG:
      return ad_log(v);
    case AD_SQRT:
      return ad_sqrt(v);
    case AD_TANH:
      return ad_tanh<T>(v);
    case AD_SECH2:
      return ad_sech2<T>(v);
    case AD_SIGMOID:
      ad_sigmoid_both<T>(v, &s, &sm);
      return s;
    case AD_SILU:
      ad_sigmoid_both<T>(v, &s, &sm);
      return v * s;
    case AD_SILU_PRIME:
      ad_sigmoid_both<T>(v, &s, &sm);
      return s * ad_fma(v, sm, (T)1.0);
    case AD_SILU_SECOND:
      ad_sigmoid_both<T>(v, &s, &sm);
      return s * sm * ad_fma(v, sm - s, (T)2.0);
    case AD_SOFTPLUS:
      return ad_softplus<T>(v);
    case AD_LOGCOSH:
      return ad_logcosh<T>(v);
    case AD_SIN:
      return ad_sin(v);
    default:
      return ad_cos(v);
  }
}

// ---------------------------------------------------------------------------------
// Binary ops and the fused bodies, in the CPU's order of operations.
// ---------------------------------------------------------------------------------

#define AD_ADD 0
#define AD_SUB 1
#define AD_MUL 2
#define AD_DIV 3

template <typename T> AD_DEV T ad_binary(int op, T x, T y) {
  switch (op) {
    case AD_ADD:
      return x + y;
    case AD_SUB:
      return x - y;
    case AD_MUL:
      return x * y;
    default:
      return x / y;
  }
}

// How a right operand covers an r x n left one (`Broadcast`): same shape, a 1 x n row,
// an r x 1 column, a 1 x 1 scalar.
#define AD_BC_NONE 0
#define AD_BC_ROW 1
#define AD_BC_COL 2
#define AD_BC_SCALAR 3

// The index into the right operand of element i of an r x n left operand.
AD_DEV ad_i64 ad_bc_index(int bc, ad_i64 i, ad_i64 n) {
  switch (bc) {
    case AD_BC_NONE:
      return i;
    case AD_BC_ROW:
      return i % n;
    case AD_BC_COL:
      return i / n;
    default:
      return 0;
  }
}

// y = alpha x + beta (cpu.rs `affine_k`).
template <typename T> AD_DEV T ad_affine(T x, T alpha, T beta) { return alpha * x + beta; }

// a + alpha b (`add_scaled`).
template <typename T> AD_DEV T ad_add_scaled(T a, T b, T alpha) { return a + alpha * b; }

// a + alpha (b c) (`mul_add_k`).
template <typename T> AD_DEV T ad_mul_add(T a, T b, T c, T alpha) { return a + alpha * (b * c); }

// d + alpha s (`axpy_k`, `axpy_mixed_k`; alpha = 1 gives d + s exactly).
template <typename T> AD_DEV T ad_axpy(T d, T s, T alpha) { return d + alpha * s; }

// The log cosh family's fused VJP from tanh t and sech^2 q: g_lc t + g_t q +
// g_q (-2 t q), absent gradients as 0 (cpu.rs `logcosh_family_vjp_k`).
template <typename T> AD_DEV T ad_logcosh_vjp(T t, T q, T g_lc, T g_t, T g_q) {
  return (g_lc * t + g_t * q) + g_q * (((T)-2.0 * t) * q);
}

#endif  // AD_OPS_CUH
