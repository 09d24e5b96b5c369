//! Reverse-mode automatic differentiation over batched 2-D tensors, behind a backend
//! trait.
//!
//! - [`Tensor`]: a `rows × cols` row-major matrix of one [`DType`] (f64, f32, bf16,
//!   f16), held by a [`Backend`] as its opaque [`Backend::Buffer`];
//! - [`Backend`]: memory and kernels (GEMM with transposes, elementwise maps and their
//!   derivatives, broadcasting binary ops, reductions, column slices, the row
//!   repeat/tile helpers of per-sample Jacobians, casts). [`Cpu`] implements it, and
//!   [`Cuda`] (feature `cuda`: cuBLAS and NVRTC kernels, see [`cuda`]); nothing in it
//!   names a host type;
//! - [`Graph`]: the tape. Ops are methods returning [`Var`] handles (computed eagerly,
//!   recorded for [`Graph::backward`]); shape and precision mismatches are typed
//!   [`Error`]s; [`Graph::clear`] reuses the tape. Besides the elementary ops, fused
//!   ones save passes over batch-sized tensors: [`Graph::matmul_add`] (a layer
//!   x·Kᵀ + b, an update z + η·v·K), [`Graph::add_scaled`], [`Graph::mul_add`], and
//!   [`Graph::unary_many`] (several maps of one input in one pass, whose VJPs reuse
//!   each other's values); the backward pass sums gradients in place;
//! - [`check`]: the one gradient checker (central differences in f64) that every op and
//!   every model is tested with;
//! - [`otflow`]: the OT-Flow potential with its closed-form gradient and exact
//!   Laplacian, built from the ops.
//!
//! # Precision
//!
//! Every op's inputs must share one dtype (except [`Graph::cast`]). An op on f64
//! computes in f64; on f32, in f32; on bf16 or f16, the kernel reads the (exact) 16-bit
//! inputs as f32, computes in f32 — GEMMs and reductions accumulate in f32 — and rounds
//! its output to the 16-bit type once. That is what the GPU does natively (cuBLAS
//! `gemm_ex` with 16-bit inputs and f32 compute, elementwise kernels computing in f32),
//! so the CPU emulates mixed-precision training exactly, op by op. A VJP is itself a
//! short sequence of kernels at the value's precision, each rounding its output (as on
//! the GPU); gradient sums are held in each value's precision unless
//! [`Graph::backward_with`] names an accumulation precision.
//!
//! # Per-sample Jacobians
//!
//! A batch of Jacobians J_b ∈ R^{m×d} is held as Jᵀ ∈ R^{(B·d)×m}, rows indexed by
//! (sample b, input direction k) = b·d + k. Then K·J_b for every b is the single GEMM
//! Jᵀ·Kᵀ ([`Graph::matmul`] with `tb = true`), a per-sample row vector v_b scales J_bᵀ's
//! columns after [`Graph::repeat_rows`]`(v, d)`, a matrix shared by all samples enters
//! through [`Graph::tile_rows`], and per-sample sums over directions are
//! [`Graph::sum_row_groups`]`(·, d)`.

pub mod backend;
pub mod check;
pub mod cpu;
pub mod cuda;
pub mod error;
pub mod graph;
pub mod otflow;
pub mod tensor;

pub use backend::{Backend, BinaryOp, Broadcast, Reduction, Storage, UnaryOp};
pub use check::{check_gradients, CheckOptions, CheckReport, LeafReport};
pub use cpu::{Cpu, CpuBuffer};
pub use cuda::{Cuda, CudaBuffer, MemoryStats};
pub use error::{Error, Result};
pub use graph::{Gradients, Graph, Var};
pub use tensor::{DType, Shape, Tensor};
