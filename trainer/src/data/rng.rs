//! Counter-based draws for data: uniforms, bounded integers, shuffles.
//!
//! Every number is a pure function of an *address* `(seed, stream, sample, step)` and
//! a position in that address's sequence, computed with the runtime's Philox4x32-10
//! ([`socflow_runtime::brownian::philox4x32_10`]) under the same counter layout as
//! the runtime's normals: key `[seed as u32, (seed >> 32) as u32]`, counter
//! `[j, step, sample as u32, (sample >> 32) as u32 | stream << 16]`, with `j` the
//! block index. So a draw here and a normal from
//! [`Brownian::stream_normals`](socflow_runtime::brownian::Brownian::stream_normals)
//! never share a counter as long as they use different `(stream, step)` pairs; the
//! data module keeps normals and uniforms apart by their `step` tag.
//!
//! # Streams
//!
//! The data module takes the first three free streams of the runtime's generator:
//! [`TOY_STREAM`] (toy distributions), [`SPLIT_STREAM`] (train/validation splits) and
//! [`BATCH_STREAM`] (mini-batch shuffles). Other trainer modules take ids from
//! [`FIRST_FREE_AFTER_DATA`] on.

use socflow_runtime::brownian::{philox4x32_10, unit_open, Stream, MAX_SAMPLE, MAX_STEP};

use crate::error::{Error, Result};

/// Stream of the toy distributions' draws.
pub const TOY_STREAM: Stream = Stream(Stream::FIRST_FREE.0);
/// Stream of [`Dataset::split`](super::Dataset::split)'s shuffle.
pub const SPLIT_STREAM: Stream = Stream(Stream::FIRST_FREE.0 + 1);
/// Stream of [`BatchSampler`](super::BatchSampler)'s per-epoch shuffles.
pub const BATCH_STREAM: Stream = Stream(Stream::FIRST_FREE.0 + 2);
/// The first stream id the data module leaves free.
pub const FIRST_FREE_AFTER_DATA: Stream = Stream(Stream::FIRST_FREE.0 + 3);

/// The sequence of random words at one address `(seed, stream, sample, step)`: the
/// Philox blocks `j = 0, 1, …` of the module's counter layout, consumed in order
/// (words 0–1 of a block, then 2–3).
#[derive(Clone, Debug)]
pub struct Draws {
    key: [u32; 2],
    counter: [u32; 4],
    block: [u32; 4],
    /// Index of the next unused word of `block` (4: none left).
    next: usize,
}

impl Draws {
    /// The sequence at `(seed, stream, sample, step)`.
    ///
    /// Errors: [`Error::Runtime`] with a limit error when `sample` exceeds the
    /// generator's [`MAX_SAMPLE`] or `step` its [`MAX_STEP`].
    pub fn new(seed: u64, stream: Stream, sample: u64, step: u64) -> Result<Self> {
        if sample > MAX_SAMPLE || step > MAX_STEP {
            return Err(socflow_runtime::Error::Limit(format!(
                "random address (sample {sample}, step {step}) exceeds the generator's \
                 ({MAX_SAMPLE}, {MAX_STEP})"
            ))
            .into());
        }
        Ok(Draws {
            key: [seed as u32, (seed >> 32) as u32],
            counter: [
                0,
                step as u32,
                sample as u32,
                ((sample >> 32) as u32) | (u32::from(stream.0) << 16),
            ],
            block: [0; 4],
            next: 4,
        })
    }

    /// The next two words, as (first, second).
    #[inline]
    fn pair(&mut self) -> (u32, u32) {
        if self.next >= 4 {
            self.block = philox4x32_10(self.counter, self.key);
            self.counter[0] = self.counter[0].wrapping_add(1);
            self.next = 0;
        }
        let p = (self.block[self.next], self.block[self.next + 1]);
        self.next += 2;
        p
    }

    /// The next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let (hi, lo) = self.pair();
        (u64::from(hi) << 32) | u64::from(lo)
    }

    /// The next uniform on (0, 1), on 52 bits
    /// ([`unit_open`]); `floor(k·u)` is exactly
    /// uniform on `0..k` for every power of two `k ≤ 2⁵²`.
    #[inline]
    pub fn uniform(&mut self) -> f64 {
        let (hi, lo) = self.pair();
        unit_open(hi, lo)
    }

    /// An exactly uniform integer in `0..s` (`s ≥ 1`; 0 for `s = 0`), by Lemire's
    /// multiply-and-reject on 64-bit words.
    #[inline]
    pub fn below(&mut self, s: u64) -> u64 {
        if s == 0 {
            return 0;
        }
        let mut m = u128::from(self.next_u64()) * u128::from(s);
        if (m as u64) < s {
            let threshold = s.wrapping_neg() % s;
            while (m as u64) < threshold {
                m = u128::from(self.next_u64()) * u128::from(s);
            }
        }
        (m >> 64) as u64
    }
}

/// Shuffles the `rows` rows of width `width` (row-major `x`) in place by Fisher–Yates:
/// for `i = rows−1, …, 1`, swap row `i` with row `j`, `j` uniform on `0..=i` drawn
/// from the address `(seed, stream, sample = i, step)`. Every permutation is equally
/// likely; the result depends only on `(seed, stream, step, rows)`.
///
/// Errors: [`Error::Length`] when `x` is not `rows·width` long;
/// a limit error when `rows − 1` exceeds [`MAX_SAMPLE`] or `step` [`MAX_STEP`].
pub fn shuffle_rows(
    x: &mut [f64],
    rows: usize,
    width: usize,
    seed: u64,
    stream: Stream,
    step: u64,
) -> Result<()> {
    let len = rows
        .checked_mul(width)
        .ok_or_else(|| Error::InvalidArgument(format!("{rows}×{width} rows overflow")))?;
    crate::error::check_len("rows to shuffle", x.len(), len)?;
    for_each_swap(rows, seed, stream, step, |i, j| {
        for k in 0..width {
            x.swap(i * width + k, j * width + k);
        }
    })
}

/// A uniformly random permutation of `0..n`: [`shuffle_rows`] applied to the identity,
/// written into `out` (cleared first).
pub fn permutation_into(
    n: usize,
    seed: u64,
    stream: Stream,
    step: u64,
    out: &mut Vec<usize>,
) -> Result<()> {
    out.clear();
    out.extend(0..n);
    for_each_swap(n, seed, stream, step, |i, j| out.swap(i, j))
}

/// [`permutation_into`] returning a new vector.
pub fn permutation(n: usize, seed: u64, stream: Stream, step: u64) -> Result<Vec<usize>> {
    let mut out = Vec::with_capacity(n);
    permutation_into(n, seed, stream, step, &mut out)?;
    Ok(out)
}

/// The swaps (i, j), i = n−1 … 1, of the Fisher–Yates shuffle at `(seed, stream, ·,
/// step)`.
fn for_each_swap(
    n: usize,
    seed: u64,
    stream: Stream,
    step: u64,
    mut swap: impl FnMut(usize, usize),
) -> Result<()> {
    if n > 1 && (n - 1) as u64 > MAX_SAMPLE {
        return Err(socflow_runtime::Error::Limit(format!(
            "shuffle of {n} items exceeds the generator's {MAX_SAMPLE} samples"
        ))
        .into());
    }
    for i in (1..n).rev() {
        let j = Draws::new(seed, stream, i as u64, step)?.below(i as u64 + 1) as usize;
        swap(i, j);
    }
    Ok(())
}
