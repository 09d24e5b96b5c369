// socflow trainer, CUDA backend: the kernels (ops.cuh is prepended).
//
// Every kernel is instantiated per storage type with the suffix f64, f32, f16 or bf16
// (conversions and the mixed-precision axpy per pair: `cast_f64_f16`, ...); data
// movement kernels per element width (u16, u32, u64). Elementwise kernels loop over
// their elements grid-strided; on the host (the test harness) a kernel is a plain
// function whose loop covers every element, so the harness runs the kernels
// themselves. The reductions use shared memory and warp shuffles and are device-only.

#if defined(__CUDACC__)
#define AD_GRID_LOOP(i, n)                                                \
  for (ad_i64 i = (ad_i64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
       i += (ad_i64)blockDim.x * gridDim.x)
#define AD_BODY __device__
#define AD_KERNEL extern "C" __global__
#else
#define AD_GRID_LOOP(i, n) for (ad_i64 i = 0; i < (n); ++i)
#define AD_BODY static
#define AD_KERNEL extern "C"
#endif

// One kernel per storage type.
#define AD_FOR_TYPES(M) M(double, f64) M(float, f32) M(ad_f16, f16) M(ad_bf16, bf16)

// ---------------------------------------------------------------------------------
// Elementwise maps.
// ---------------------------------------------------------------------------------

// out = x converted, through its exact f64 value (cpu.rs `convert_k`).
template <typename S, typename D> AD_BODY void cast_body(D* out, const S* x, ad_i64 n) {
  AD_GRID_LOOP(i, n) { out[i] = AdElem<D>::from_f64(AdElem<S>::to_f64(x[i])); }
}

// dst += alpha src, src read exactly in dst's compute type.
template <typename D, typename S>
AD_BODY void axpy_body(D* dst, const S* src, ad_i64 n, double alpha) {
  typedef typename AdElem<D>::C C;
  C a = (C)alpha;
  AD_GRID_LOOP(i, n) {
    C s = (C)AdElem<S>::to_f64(src[i]);
    dst[i] = AdElem<D>::store(ad_axpy<C>(AdElem<D>::load(dst[i]), s, a));
  }
}

#define AD_PAIR(S, SN, D, DN)                                                  \
  AD_KERNEL void cast_##SN##_##DN(D* out, const S* x, ad_i64 n) {              \
    cast_body<S, D>(out, x, n);                                                \
  }                                                                            \
  AD_KERNEL void axpy_##DN##_##SN(D* dst, const S* src, ad_i64 n, double a) { \
    axpy_body<D, S>(dst, src, n, a);                                           \
  }
#define AD_PAIRS_FROM(S, SN) \
  AD_PAIR(S, SN, double, f64) AD_PAIR(S, SN, float, f32) AD_PAIR(S, SN, ad_f16, f16) \
  AD_PAIR(S, SN, ad_bf16, bf16)
AD_FOR_TYPES(AD_PAIRS_FROM)

template <typename S> AD_BODY void unary_body(S* out, const S* x, ad_i64 n, int op) {
  typedef typename AdElem<S>::C C;
  AD_GRID_LOOP(i, n) { out[i] = AdElem<S>::store(ad_unary<C>(op, AdElem<S>::load(x[i]))); }
}

// log cosh, tanh and sech^2 in one pass, each output optional (null).
template <typename S>
AD_BODY void logcosh3_body(S* lc, S* th, S* s2, const S* x, ad_i64 n) {
  typedef typename AdElem<S>::C C;
  AD_GRID_LOOP(i, n) {
    C a = AdElem<S>::load(x[i]);
    C y = ad_abs(a);
    C e, em1;
    ad_exp_em1_full<C>((C)-2.0 * y, &e, &em1);
    if (th) {
      C tv = ad_abs(-em1 / ((C)2.0 + em1));
      th[i] = AdElem<S>::store(ad_signbit(a) ? -tv : tv);
    }
    if (s2) {
      C d = (C)1.0 + e;
      s2[i] = AdElem<S>::store((C)4.0 * e / (d * d));
    }
    if (lc) lc[i] = AdElem<S>::store(y + ad_log1p_unit<C>(e, em1));
  }
}

template <typename S>
AD_BODY void affine_body(S* out, const S* x, ad_i64 n, double alpha, double beta) {
  typedef typename AdElem<S>::C C;
  C a = (C)alpha, b = (C)beta;
  AD_GRID_LOOP(i, n) { out[i] = AdElem<S>::store(ad_affine<C>(AdElem<S>::load(x[i]), a, b)); }
}

template <typename S>
AD_BODY void binary_body(S* out, const S* a, const S* b, ad_i64 rows, ad_i64 cols, int op,
                         int bc) {
  typedef typename AdElem<S>::C C;
  ad_i64 n = rows * cols;
  AD_GRID_LOOP(i, n) {
    C y = AdElem<S>::load(b[ad_bc_index(bc, i, cols)]);
    out[i] = AdElem<S>::store(ad_binary<C>(op, AdElem<S>::load(a[i]), y));
  }
}

template <typename S>
AD_BODY void add_scaled_body(S* out, const S* a, const S* b, ad_i64 rows, ad_i64 cols, int bc,
                             double alpha) {
  typedef typename AdElem<S>::C C;
  C al = (C)alpha;
  ad_i64 n = rows * cols;
  AD_GRID_LOOP(i, n) {
    C y = AdElem<S>::load(b[ad_bc_index(bc, i, cols)]);
    out[i] = AdElem<S>::store(ad_add_scaled<C>(AdElem<S>::load(a[i]), y, al));
  }
}

template <typename S>
AD_BODY void mul_add_body(S* out, const S* a, const S* b, const S* c, ad_i64 rows, ad_i64 cols,
                          int bc, double alpha) {
  typedef typename AdElem<S>::C C;
  C al = (C)alpha;
  ad_i64 n = rows * cols;
  AD_GRID_LOOP(i, n) {
    C z = AdElem<S>::load(c[ad_bc_index(bc, i, cols)]);
    out[i] = AdElem<S>::store(
        ad_mul_add<C>(AdElem<S>::load(a[i]), AdElem<S>::load(b[i]), z, al));
  }
}

template <typename S>
AD_BODY void logcosh_vjp_body(S* out, const S* t, const S* q, const S* g_lc, const S* g_t,
                              const S* g_q, ad_i64 n) {
  typedef typename AdElem<S>::C C;
  AD_GRID_LOOP(i, n) {
    C zero = (C)0.0;
    C a = g_lc ? AdElem<S>::load(g_lc[i]) : zero;
    C b = g_t ? AdElem<S>::load(g_t[i]) : zero;
    C c = g_q ? AdElem<S>::load(g_q[i]) : zero;
    out[i] = AdElem<S>::store(
        ad_logcosh_vjp<C>(AdElem<S>::load(t[i]), AdElem<S>::load(q[i]), a, b, c));
  }
}

// out (rows x cols) = alpha x, x a 1 x cols row, a rows x 1 column, a scalar, or of
// out's shape (kind as the broadcast codes).
template <typename S>
AD_BODY void broadcast_body(S* out, const S* x, ad_i64 rows, ad_i64 cols, int kind,
                            double alpha) {
  typedef typename AdElem<S>::C C;
  C a = (C)alpha;
  ad_i64 n = rows * cols;
  AD_GRID_LOOP(i, n) {
    out[i] = AdElem<S>::store(a * AdElem<S>::load(x[ad_bc_index(kind, i, cols)]));
  }
}

// out (groups x cols) = sums of consecutive groups of k rows, each in row order.
template <typename S>
AD_BODY void sum_row_groups_body(S* out, const S* x, ad_i64 groups, ad_i64 cols, ad_i64 k) {
  typedef typename AdElem<S>::C C;
  ad_i64 n = groups * cols;
  AD_GRID_LOOP(i, n) {
    ad_i64 g = i / cols, c = i % cols;
    C acc = (C)0.0;
    for (ad_i64 j = 0; j < k; ++j) acc += AdElem<S>::load(x[(g * k + j) * cols + c]);
    out[i] = AdElem<S>::store(acc);
  }
}

// out (rows) = alpha * the sum of each row of x (rows x cols), one thread per row in
// column order: the CPU's sums exactly (for narrow rows).
template <typename S>
AD_BODY void reduce_cols_seq_body(S* out, const S* x, ad_i64 rows, ad_i64 cols, double alpha) {
  typedef typename AdElem<S>::C C;
  C a = (C)alpha;
  AD_GRID_LOOP(r, rows) {
    C acc = (C)0.0;
    for (ad_i64 j = 0; j < cols; ++j) acc += AdElem<S>::load(x[r * cols + j]);
    out[r] = AdElem<S>::store(a * acc);
  }
}

#define AD_ELEMENTWISE(S, N)                                                                 \
  AD_KERNEL void unary_##N(S* out, const S* x, ad_i64 n, int op) {                           \
    unary_body<S>(out, x, n, op);                                                            \
  }                                                                                          \
  AD_KERNEL void logcosh3_##N(S* lc, S* th, S* s2, const S* x, ad_i64 n) {                   \
    logcosh3_body<S>(lc, th, s2, x, n);                                                      \
  }                                                                                          \
  AD_KERNEL void affine_##N(S* out, const S* x, ad_i64 n, double alpha, double beta) {       \
    affine_body<S>(out, x, n, alpha, beta);                                                  \
  }                                                                                          \
  AD_KERNEL void binary_##N(S* out, const S* a, const S* b, ad_i64 rows, ad_i64 cols, int op, \
                            int bc) {                                                        \
    binary_body<S>(out, a, b, rows, cols, op, bc);                                           \
  }                                                                                          \
  AD_KERNEL void add_scaled_##N(S* out, const S* a, const S* b, ad_i64 rows, ad_i64 cols,    \
                                int bc, double alpha) {                                      \
    add_scaled_body<S>(out, a, b, rows, cols, bc, alpha);                                    \
  }                                                                                          \
  AD_KERNEL void mul_add_##N(S* out, const S* a, const S* b, const S* c, ad_i64 rows,        \
                             ad_i64 cols, int bc, double alpha) {                            \
    mul_add_body<S>(out, a, b, c, rows, cols, bc, alpha);                                    \
  }                                                                                          \
  AD_KERNEL void logcosh_vjp_##N(S* out, const S* t, const S* q, const S* g_lc,              \
                                 const S* g_t, const S* g_q, ad_i64 n) {                     \
    logcosh_vjp_body<S>(out, t, q, g_lc, g_t, g_q, n);                                       \
  }                                                                                          \
  AD_KERNEL void broadcast_##N(S* out, const S* x, ad_i64 rows, ad_i64 cols, int kind,       \
                               double alpha) {                                               \
    broadcast_body<S>(out, x, rows, cols, kind, alpha);                                      \
  }                                                                                          \
  AD_KERNEL void sum_row_groups_##N(S* out, const S* x, ad_i64 groups, ad_i64 cols,          \
                                    ad_i64 k) {                                              \
    sum_row_groups_body<S>(out, x, groups, cols, k);                                         \
  }                                                                                          \
  AD_KERNEL void reduce_cols_seq_##N(S* out, const S* x, ad_i64 rows, ad_i64 cols,           \
                                     double alpha) {                                         \
    reduce_cols_seq_body<S>(out, x, rows, cols, alpha);                                      \
  }
AD_FOR_TYPES(AD_ELEMENTWISE)

// ---------------------------------------------------------------------------------
// Data movement, per element width.
// ---------------------------------------------------------------------------------

// dst[r, dst_c0 + j] = src[r, src_c0 + j] for r < rows, j < cols (row strides dst_ld,
// src_ld): column slices, embeddings and concatenations.
template <typename W>
AD_BODY void copy2d_body(W* dst, ad_i64 dst_ld, ad_i64 dst_c0, const W* src, ad_i64 src_ld,
                         ad_i64 src_c0, ad_i64 rows, ad_i64 cols) {
  ad_i64 n = rows * cols;
  AD_GRID_LOOP(i, n) {
    ad_i64 r = i / cols, j = i % cols;
    dst[r * dst_ld + dst_c0 + j] = src[r * src_ld + src_c0 + j];
  }
}

// dst ((rows k) x cols) = each row of src (rows x cols) repeated k times.
template <typename W>
AD_BODY void repeat_rows_body(W* dst, const W* src, ad_i64 rows, ad_i64 cols, ad_i64 k) {
  ad_i64 n = rows * k * cols;
  AD_GRID_LOOP(i, n) {
    ad_i64 r = i / cols, j = i % cols;
    dst[i] = src[(r / k) * cols + j];
  }
}

// dst (len_out) = src (len_in) repeated.
template <typename W>
AD_BODY void tile_body(W* dst, const W* src, ad_i64 len_in, ad_i64 len_out) {
  AD_GRID_LOOP(i, len_out) { dst[i] = src[i % len_in]; }
}

template <typename W> AD_BODY void fill_body(W* dst, ad_i64 n, ad_u64 bits) {
  AD_GRID_LOOP(i, n) { dst[i] = (W)bits; }
}

#define AD_MOVES(W, N)                                                                       \
  AD_KERNEL void copy2d_##N(W* dst, ad_i64 dst_ld, ad_i64 dst_c0, const W* src, ad_i64 src_ld, \
                            ad_i64 src_c0, ad_i64 rows, ad_i64 cols) {                       \
    copy2d_body<W>(dst, dst_ld, dst_c0, src, src_ld, src_c0, rows, cols);                    \
  }                                                                                          \
  AD_KERNEL void repeat_rows_##N(W* dst, const W* src, ad_i64 rows, ad_i64 cols, ad_i64 k) { \
    repeat_rows_body<W>(dst, src, rows, cols, k);                                            \
  }                                                                                          \
  AD_KERNEL void tile_##N(W* dst, const W* src, ad_i64 len_in, ad_i64 len_out) {             \
    tile_body<W>(dst, src, len_in, len_out);                                                 \
  }                                                                                          \
  AD_KERNEL void fill_##N(W* dst, ad_i64 n, ad_u64 bits) { fill_body<W>(dst, n, bits); }
AD_MOVES(ad_u16, u16)
AD_MOVES(ad_u32, u32)
AD_MOVES(ad_u64, u64)

// ---------------------------------------------------------------------------------
// Reductions (device only): accumulate in the compute type, round once at the end.
// ---------------------------------------------------------------------------------

#if defined(__CUDACC__)

#define AD_WARP 32
// Threads per block of the 1-D reductions (a power of two).
#define AD_RED_THREADS 256
// Row lanes per block of the column sums (blocks of 32 columns x 8 row lanes).
#define AD_COL_LANES 8

// out (rows) = alpha * row sums of x (rows x cols), one warp per row: lanes sum
// strided columns, then a shuffle tree.
template <typename S>
__device__ void reduce_cols_warp_body(S* out, const S* x, ad_i64 rows, ad_i64 cols,
                                      double alpha) {
  typedef typename AdElem<S>::C C;
  ad_i64 warp = ((ad_i64)blockIdx.x * blockDim.x + threadIdx.x) / AD_WARP;
  ad_i64 warps = ((ad_i64)gridDim.x * blockDim.x) / AD_WARP;
  int lane = threadIdx.x % AD_WARP;
  for (ad_i64 r = warp; r < rows; r += warps) {
    C acc = (C)0.0;
    for (ad_i64 j = lane; j < cols; j += AD_WARP) acc += AdElem<S>::load(x[r * cols + j]);
    for (int off = AD_WARP / 2; off > 0; off /= 2) acc += __shfl_down_sync(0xffffffffu, acc, off);
    if (lane == 0) out[r] = AdElem<S>::store((C)alpha * acc);
  }
}

// partial[chunk, j] = sum of x[r, j] over the rows r of `chunk` (rows_per_chunk each),
// for 32 columns per block (threadIdx.x) and 8 row lanes (threadIdx.y); grid.y = chunks.
template <typename S>
__device__ void colsum_partial_body(typename AdElem<S>::C* partial, const S* x, ad_i64 rows,
                                    ad_i64 cols, ad_i64 rows_per_chunk) {
  typedef typename AdElem<S>::C C;
  __shared__ C sums[AD_COL_LANES][AD_WARP];
  ad_i64 chunk = blockIdx.y;
  ad_i64 r0 = chunk * rows_per_chunk;
  ad_i64 r1 = r0 + rows_per_chunk < rows ? r0 + rows_per_chunk : rows;
  ad_i64 tiles = (cols + AD_WARP - 1) / AD_WARP;
  for (ad_i64 tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    ad_i64 j = tile * AD_WARP + threadIdx.x;
    C acc = (C)0.0;
    if (j < cols) {
      for (ad_i64 r = r0 + threadIdx.y; r < r1; r += AD_COL_LANES)
        acc += AdElem<S>::load(x[r * cols + j]);
    }
    sums[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && j < cols) {
      C s = sums[0][threadIdx.x];
      for (int l = 1; l < AD_COL_LANES; ++l) s += sums[l][threadIdx.x];
      partial[chunk * cols + j] = s;
    }
    __syncthreads();
  }
}

// out (cols) = alpha * the sums of the chunks' partial sums, in chunk order.
template <typename S>
__device__ void colsum_finish_body(S* out, const typename AdElem<S>::C* partial, ad_i64 chunks,
                                   ad_i64 cols, double alpha) {
  typedef typename AdElem<S>::C C;
  AD_GRID_LOOP(j, cols) {
    C acc = (C)0.0;
    for (ad_i64 c = 0; c < chunks; ++c) acc += partial[c * cols + j];
    out[j] = AdElem<S>::store((C)alpha * acc);
  }
}

// partial[block] = the sum of a grid-strided share of x (a shared-memory tree).
template <typename S>
__device__ void sum_partial_body(typename AdElem<S>::C* partial, const S* x, ad_i64 n) {
  typedef typename AdElem<S>::C C;
  __shared__ C sums[AD_RED_THREADS];
  C acc = (C)0.0;
  AD_GRID_LOOP(i, n) { acc += AdElem<S>::load(x[i]); }
  sums[threadIdx.x] = acc;
  __syncthreads();
  for (int half = AD_RED_THREADS / 2; half > 0; half /= 2) {
    if ((int)threadIdx.x < half) sums[threadIdx.x] += sums[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) partial[blockIdx.x] = sums[0];
}

// out[0] = alpha * the sum of the blocks' partial sums, in block order.
template <typename S>
__device__ void sum_finish_body(S* out, const typename AdElem<S>::C* partial, ad_i64 blocks,
                                double alpha) {
  typedef typename AdElem<S>::C C;
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    C acc = (C)0.0;
    for (ad_i64 b = 0; b < blocks; ++b) acc += partial[b];
    out[0] = AdElem<S>::store((C)alpha * acc);
  }
}

// max(a, b) for magnitudes, NaN sticky.
__device__ __forceinline__ double ad_max_nan(double a, double b) {
  return (a != a || b != b) ? (a != a ? a : b) : (a > b ? a : b);
}

// partial[block] = the largest |x| of a grid-strided share (NaN if any is NaN).
template <typename S>
__device__ void max_abs_partial_body(double* partial, const S* x, ad_i64 n) {
  __shared__ double m[AD_RED_THREADS];
  double acc = 0.0;
  AD_GRID_LOOP(i, n) { acc = ad_max_nan(acc, fabs(AdElem<S>::to_f64(x[i]))); }
  m[threadIdx.x] = acc;
  __syncthreads();
  for (int half = AD_RED_THREADS / 2; half > 0; half /= 2) {
    if ((int)threadIdx.x < half) m[threadIdx.x] = ad_max_nan(m[threadIdx.x], m[threadIdx.x + half]);
    __syncthreads();
  }
  if (threadIdx.x == 0) partial[blockIdx.x] = m[0];
}

#define AD_REDUCTIONS(S, N)                                                                  \
  AD_KERNEL void reduce_cols_warp_##N(S* out, const S* x, ad_i64 rows, ad_i64 cols,          \
                                      double alpha) {                                        \
    reduce_cols_warp_body<S>(out, x, rows, cols, alpha);                                     \
  }                                                                                          \
  AD_KERNEL void colsum_partial_##N(AdElem<S>::C* partial, const S* x, ad_i64 rows,          \
                                    ad_i64 cols, ad_i64 rows_per_chunk) {                    \
    colsum_partial_body<S>(partial, x, rows, cols, rows_per_chunk);                          \
  }                                                                                          \
  AD_KERNEL void colsum_finish_##N(S* out, const AdElem<S>::C* partial, ad_i64 chunks,       \
                                   ad_i64 cols, double alpha) {                              \
    colsum_finish_body<S>(out, partial, chunks, cols, alpha);                                \
  }                                                                                          \
  AD_KERNEL void sum_partial_##N(AdElem<S>::C* partial, const S* x, ad_i64 n) {              \
    sum_partial_body<S>(partial, x, n);                                                      \
  }                                                                                          \
  AD_KERNEL void sum_finish_##N(S* out, const AdElem<S>::C* partial, ad_i64 blocks,          \
                                double alpha) {                                              \
    sum_finish_body<S>(out, partial, blocks, alpha);                                         \
  }                                                                                          \
  AD_KERNEL void max_abs_partial_##N(double* partial, const S* x, ad_i64 n) {                \
    max_abs_partial_body<S>(partial, x, n);                                                  \
  }
AD_FOR_TYPES(AD_REDUCTIONS)

#endif  // __CUDACC__
