// Runs the trainer's CUDA kernels on the CPU: trainer/src/autodiff/cuda/{ops.cuh,
// kernels.cu} compiled as host C++ (g++ -ffp-contract=off, as NVRTC is told
// --fmad=false), each elementwise kernel a plain loop over its elements. The Rust test
// trainer/tests/all/cuda_host.rs writes the inputs on stdin and compares the outputs with
// the Cpu backend's.
//
// Usage: harness MODE TYPE [TYPE2] < input. Every number travels as the hexadecimal
// bits of its storage type (16 digits for f64, 8 for f32, 4 for f16 and bf16; sizes,
// codes and f64 scalars as hex too), so nothing is lost in printing.

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "../../src/autodiff/cuda/ops.cuh"
#include "../../src/autodiff/cuda/kernels.cu"

static ad_u64 read_u64() {
  unsigned long long v;
  if (std::scanf("%llx", &v) != 1) {
    std::fprintf(stderr, "harness: input ended early\n");
    std::exit(2);
  }
  return v;
}
static ad_i64 read_i64() { return (ad_i64)read_u64(); }
static double read_f64() { return ad_bits_f64(read_u64()); }

// Storage types as bits.
template <typename S> S from_bits(ad_u64 b);
template <> double from_bits<double>(ad_u64 b) { return ad_bits_f64(b); }
template <> float from_bits<float>(ad_u64 b) { return ad_bits_f32((ad_u32)b); }
template <> ad_f16 from_bits<ad_f16>(ad_u64 b) {
  ad_f16 h;
  h.bits = (ad_u16)b;
  return h;
}
template <> ad_bf16 from_bits<ad_bf16>(ad_u64 b) {
  ad_bf16 h;
  h.bits = (ad_u16)b;
  return h;
}
static void put(double x) { std::printf("%016llx\n", (unsigned long long)ad_f64_bits(x)); }
static void put(float x) { std::printf("%08x\n", ad_f32_bits(x)); }
static void put(ad_f16 x) { std::printf("%04x\n", x.bits); }
static void put(ad_bf16 x) { std::printf("%04x\n", x.bits); }

template <typename S> std::vector<S> read_vec(ad_i64 n) {
  std::vector<S> v((size_t)n);
  for (auto& x : v) x = from_bits<S>(read_u64());
  return v;
}
template <typename S> void put_vec(const std::vector<S>& v) {
  for (const S& x : v) put(x);
}

// A pointer to a vector's data, or null for an empty one (an absent operand).
template <typename S> S* data_or_null(std::vector<S>& v) { return v.empty() ? nullptr : v.data(); }

// Each kernel by storage type (the extern "C" names carry the type as a suffix).
#define AD_HOST_DISPATCH(S, N)                                                             \
  static void k_unary(S* o, const S* x, ad_i64 n, int op) { unary_##N(o, x, n, op); }       \
  static void k_logcosh3(S* a, S* b, S* c, const S* x, ad_i64 n) {                          \
    logcosh3_##N(a, b, c, x, n);                                                            \
  }                                                                                         \
  static void k_affine(S* o, const S* x, ad_i64 n, double a, double b) {                    \
    affine_##N(o, x, n, a, b);                                                              \
  }                                                                                         \
  static void k_binary(S* o, const S* a, const S* b, ad_i64 r, ad_i64 c, int op, int bc) { \
    binary_##N(o, a, b, r, c, op, bc);                                                      \
  }                                                                                         \
  static void k_add_scaled(S* o, const S* a, const S* b, ad_i64 r, ad_i64 c, int bc,       \
                           double al) {                                                     \
    add_scaled_##N(o, a, b, r, c, bc, al);                                                  \
  }                                                                                         \
  static void k_mul_add(S* o, const S* a, const S* b, const S* c, ad_i64 r, ad_i64 cols,    \
                        int bc, double al) {                                                \
    mul_add_##N(o, a, b, c, r, cols, bc, al);                                               \
  }                                                                                         \
  static void k_logcosh_vjp(S* o, const S* t, const S* q, const S* a, const S* b,          \
                            const S* c, ad_i64 n) {                                         \
    logcosh_vjp_##N(o, t, q, a, b, c, n);                                                   \
  }                                                                                         \
  static void k_broadcast(S* o, const S* x, ad_i64 r, ad_i64 c, int kind, double al) {      \
    broadcast_##N(o, x, r, c, kind, al);                                                    \
  }                                                                                         \
  static void k_sum_row_groups(S* o, const S* x, ad_i64 g, ad_i64 c, ad_i64 k) {            \
    sum_row_groups_##N(o, x, g, c, k);                                                      \
  }                                                                                         \
  static void k_reduce_cols_seq(S* o, const S* x, ad_i64 r, ad_i64 c, double al) {          \
    reduce_cols_seq_##N(o, x, r, c, al);                                                    \
  }
AD_FOR_TYPES(AD_HOST_DISPATCH)

#define AD_HOST_PAIR(S, SN, D, DN)                                                          \
  static void k_cast(D* o, const S* x, ad_i64 n) { cast_##SN##_##DN(o, x, n); }             \
  static void k_axpy(D* d, const S* s, ad_i64 n, double a) { axpy_##DN##_##SN(d, s, n, a); }
#define AD_HOST_PAIRS_FROM(S, SN)                                                  \
  AD_HOST_PAIR(S, SN, double, f64) AD_HOST_PAIR(S, SN, float, f32)                 \
  AD_HOST_PAIR(S, SN, ad_f16, f16) AD_HOST_PAIR(S, SN, ad_bf16, bf16)
AD_FOR_TYPES(AD_HOST_PAIRS_FROM)

// Length of a right operand covering rows x cols as `bc` says.
static ad_i64 rhs_len(ad_i64 rows, ad_i64 cols, int bc) {
  switch (bc) {
    case AD_BC_NONE:
      return rows * cols;
    case AD_BC_ROW:
      return cols;
    case AD_BC_COL:
      return rows;
    default:
      return 1;
  }
}

template <typename S> void run(const std::string& mode) {
  if (mode == "unary") {
    // n op x -> out
    ad_i64 n = read_i64();
    int op = (int)read_u64();
    std::vector<S> x = read_vec<S>(n), o((size_t)n);
    k_unary(o.data(), x.data(), n, op);
    put_vec(o);
  } else if (mode == "logcosh3") {
    // n want(bits: lc, th, s2) x -> the wanted outputs in that order
    ad_i64 n = read_i64();
    int want = (int)read_u64();
    std::vector<S> x = read_vec<S>(n);
    std::vector<S> lc(want & 1 ? n : 0), th(want & 2 ? n : 0), s2(want & 4 ? n : 0);
    k_logcosh3(data_or_null(lc), data_or_null(th), data_or_null(s2), x.data(), n);
    put_vec(lc);
    put_vec(th);
    put_vec(s2);
  } else if (mode == "affine") {
    // n alpha beta x -> out
    ad_i64 n = read_i64();
    double a = read_f64(), b = read_f64();
    std::vector<S> x = read_vec<S>(n), o((size_t)n);
    k_affine(o.data(), x.data(), n, a, b);
    put_vec(o);
  } else if (mode == "binary" || mode == "add_scaled" || mode == "mul_add") {
    // rows cols code bc alpha a (b) c -> out; c is the broadcast operand.
    ad_i64 rows = read_i64(), cols = read_i64();
    int code = (int)read_u64(), bc = (int)read_u64();
    double alpha = read_f64();
    ad_i64 n = rows * cols;
    std::vector<S> a = read_vec<S>(n);
    std::vector<S> b = mode == "mul_add" ? read_vec<S>(n) : std::vector<S>();
    std::vector<S> c = read_vec<S>(rhs_len(rows, cols, bc)), o((size_t)n);
    if (mode == "binary") {
      k_binary(o.data(), a.data(), c.data(), rows, cols, code, bc);
    } else if (mode == "add_scaled") {
      k_add_scaled(o.data(), a.data(), c.data(), rows, cols, bc, alpha);
    } else {
      k_mul_add(o.data(), a.data(), b.data(), c.data(), rows, cols, bc, alpha);
    }
    put_vec(o);
  } else if (mode == "logcosh_vjp") {
    // n mask t q (g_lc) (g_t) (g_q) -> out
    ad_i64 n = read_i64();
    int mask = (int)read_u64();
    std::vector<S> t = read_vec<S>(n), q = read_vec<S>(n);
    std::vector<S> g0 = read_vec<S>(mask & 1 ? n : 0), g1 = read_vec<S>(mask & 2 ? n : 0),
                   g2 = read_vec<S>(mask & 4 ? n : 0), o((size_t)n);
    k_logcosh_vjp(o.data(), t.data(), q.data(), data_or_null(g0), data_or_null(g1),
                  data_or_null(g2), n);
    put_vec(o);
  } else if (mode == "broadcast") {
    // rows cols kind alpha x -> out
    ad_i64 rows = read_i64(), cols = read_i64();
    int kind = (int)read_u64();
    double alpha = read_f64();
    std::vector<S> x = read_vec<S>(rhs_len(rows, cols, kind)), o((size_t)(rows * cols));
    k_broadcast(o.data(), x.data(), rows, cols, kind, alpha);
    put_vec(o);
  } else if (mode == "sum_row_groups") {
    // groups cols k x -> out
    ad_i64 groups = read_i64(), cols = read_i64(), k = read_i64();
    std::vector<S> x = read_vec<S>(groups * k * cols), o((size_t)(groups * cols));
    k_sum_row_groups(o.data(), x.data(), groups, cols, k);
    put_vec(o);
  } else if (mode == "reduce_cols") {
    // rows cols alpha x -> out
    ad_i64 rows = read_i64(), cols = read_i64();
    double alpha = read_f64();
    std::vector<S> x = read_vec<S>(rows * cols), o((size_t)rows);
    k_reduce_cols_seq(o.data(), x.data(), rows, cols, alpha);
    put_vec(o);
  } else {
    std::fprintf(stderr, "harness: unknown mode %s\n", mode.c_str());
    std::exit(2);
  }
}

template <typename S, typename D> void run_pair(const std::string& mode) {
  ad_i64 n = read_i64();
  if (mode == "cast") {
    // n x(S) -> out(D)
    std::vector<S> x = read_vec<S>(n);
    std::vector<D> o((size_t)n);
    k_cast(o.data(), x.data(), n);
    put_vec(o);
  } else if (mode == "axpy") {
    // n alpha dst(D) src(S) -> dst
    double alpha = read_f64();
    std::vector<D> d = read_vec<D>(n);
    std::vector<S> s = read_vec<S>(n);
    k_axpy(d.data(), s.data(), n, alpha);
    put_vec(d);
  } else {
    std::fprintf(stderr, "harness: unknown mode %s\n", mode.c_str());
    std::exit(2);
  }
}

template <typename S> void run_pair_from(const std::string& mode, const std::string& to) {
  if (to == "f64") return run_pair<S, double>(mode);
  if (to == "f32") return run_pair<S, float>(mode);
  if (to == "f16") return run_pair<S, ad_f16>(mode);
  if (to == "bf16") return run_pair<S, ad_bf16>(mode);
  std::fprintf(stderr, "harness: unknown type %s\n", to.c_str());
  std::exit(2);
}

int main(int argc, char** argv) {
  if (argc != 3 && argc != 4) {
    std::fprintf(stderr, "usage: harness MODE TYPE [TYPE2] < input\n");
    return 2;
  }
  std::string mode = argv[1], t = argv[2];
  if (argc == 4) {
    // Pairs: cast FROM TO; axpy SRC DST.
    std::string t2 = argv[3];
    if (t == "f64") run_pair_from<double>(mode, t2);
    else if (t == "f32") run_pair_from<float>(mode, t2);
    else if (t == "f16") run_pair_from<ad_f16>(mode, t2);
    else if (t == "bf16") run_pair_from<ad_bf16>(mode, t2);
    else return 2;
    return 0;
  }
  if (t == "f64") run<double>(mode);
  else if (t == "f32") run<float>(mode);
  else if (t == "f16") run<ad_f16>(mode);
  else if (t == "bf16") run<ad_bf16>(mode);
  else return 2;
  return 0;
}
