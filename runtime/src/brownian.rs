//! Counter-based random numbers: Brownian increments and prior draws.
//!
//! Every number is a pure function of `(seed, stream, sample, step, component)`, so a
//! run gives the same samples for any thread count, batch split or backend: there is
//! no generator state to share or to split. The generator is Philox4x32-10 (Salmon et
//! al., "Parallel random numbers: as easy as 1, 2, 3", SC'11; the one in Random123 and
//! cuRAND), followed by an exact Box–Muller transform written with IEEE-754 `+ − × ÷`
//! and `sqrt` only, so that it gives the same bits on every platform and can be
//! reproduced bit for bit by a GPU kernel (compiled without FMA contraction).
//!
//! # The recipe (what a CUDA kernel has to do)
//!
//! For the normal with index `c` (a component, `0 ≤ c < len`) of `(stream, sample,
//! step)` under `seed`:
//!
//! 1. `j = c / 2`; key `k = [seed as u32, (seed >> 32) as u32]`; counter
//!    `n = [j, step, sample as u32, (sample >> 32) as u32 | (stream << 16)]`
//!    (so `step < 2^32`, `sample < 2^48`, `j < 2^32`).
//! 2. `[x0, x1, x2, x3] = philox4x32_10(n, k)` ([`philox4x32_10`]).
//! 3. Two uniforms on 52 bits, strictly inside (0, 1) and exact in f64:
//!    `u1 = ((x0 << 20 | x1 >> 12) + 0.5) · 2^-52`, `u2` the same from `(x2, x3)`.
//! 4. `r = sqrt(-2 ln u1)`, and `z = r cos(2π u2)` for even `c`, `z = r sin(2π u2)`
//!    for odd `c`, with `ln`, `cos` and `sin` the polynomial evaluations below
//!    ([`ln_unit`] and [`sincos_turn`]), each step rounded to f64 (no FMA).
//!
//! The results are the f64 numbers; the f32 ones are those rounded to nearest, so a
//! solve in f32 sees the same noise as one in f64 up to f32 rounding. A request for `m`
//! normals returns the first `m` of any longer request (a prefix), whatever `m`.
//!
//! # Speed
//!
//! The recipe above is the specification; [`philox4x32_10`], [`unit_open`],
//! [`ln_unit`] and [`sincos_turn`] are its scalar reference. Requests are computed
//! 32 counters at a time in arrays the compiler turns into vector instructions
//! (AVX-512, AVX2 or Neon, picked at run time; portable code elsewhere): every lane
//! does the same IEEE operations in the same order, with selects and exact integer
//! tricks where the scalar code branches or rounds, so the numbers are the scalar
//! recipe's bit for bit on every path (the tests compare them, and pin a digest).
//! Many samples at one step are best drawn by one call,
//! [`Brownian::stream_normals_block`] or [`Brownian::increments_block`], whose lanes
//! run across rows: a call for one short row is bound by the latency of one
//! Box–Muller, not by throughput.
//!
//! # Streams
//!
//! The counter carries a 16-bit stream id: Brownian increments use
//! [`Stream::BROWNIAN`], prior draws (the initial state of a sampler) use
//! [`Stream::PRIOR`], so the two never share a number. Other users take ids from
//! [`Stream::FIRST_FREE`] on.

use crate::error::{Error, Result};
use crate::Real;

/// First Philox multiplier (Random123's `PHILOX_M4x32_0`).
const PHILOX_M0: u32 = 0xD251_1F53;
/// Second Philox multiplier (`PHILOX_M4x32_1`).
const PHILOX_M1: u32 = 0xCD9E_8D57;
/// First Weyl key increment (golden ratio, `PHILOX_W32_0`).
const PHILOX_W0: u32 = 0x9E37_79B9;
/// Second Weyl key increment (√3 − 1, `PHILOX_W32_1`).
const PHILOX_W1: u32 = 0xBB67_AE85;

/// Largest sample index a stream can address (48 bits of the counter).
pub const MAX_SAMPLE: u64 = (1 << 48) - 1;
/// Largest step index a stream can address (32 bits of the counter).
pub const MAX_STEP: u64 = u32::MAX as u64;
/// Largest number of normals one `(stream, sample, step)` can give (2 per counter).
pub const MAX_COMPONENTS: u64 = 2 * (u32::MAX as u64 + 1);

/// The Philox4x32 block cipher with 10 rounds: a bijection of the 128-bit `counter`
/// for each 64-bit `key`, as in Random123 (`philox4x32_R(10, ctr, key)`) and cuRAND.
#[inline]
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let mut c = counter;
    let mut k = key;
    for round in 0..10 {
        if round > 0 {
            k[0] = k[0].wrapping_add(PHILOX_W0);
            k[1] = k[1].wrapping_add(PHILOX_W1);
        }
        let p0 = u64::from(PHILOX_M0) * u64::from(c[0]);
        let p1 = u64::from(PHILOX_M1) * u64::from(c[2]);
        c = [
            ((p1 >> 32) as u32) ^ c[1] ^ k[0],
            p1 as u32,
            ((p0 >> 32) as u32) ^ c[3] ^ k[1],
            p0 as u32,
        ];
    }
    c
}

/// A uniform on 52 bits strictly inside (0, 1): `(hi << 20 | lo >> 12) + 0.5` over
/// 2^52, exact in f64 (the smallest value is 2^-53, the largest 1 − 2^-53).
#[inline]
pub fn unit_open(hi: u32, lo: u32) -> f64 {
    let k = (u64::from(hi) << 20) | u64::from(lo >> 12);
    // k < 2^52, so k + 0.5 has at most 53 significant bits: both operations are exact.
    (k as f64 + 0.5) * (1.0 / 4_503_599_627_370_496.0)
}

/// High part of ln 2 (fdlibm's `ln2_hi`: its low 32 bits are zero, so `e · LN2_HI` is
/// exact for every binary exponent e of an f64).
const LN2_HI: f64 = 6.931_471_803_691_238e-1;
/// ln 2 − `LN2_HI`.
const LN2_LO: f64 = 1.908_214_929_270_587_7e-10;

/// Natural logarithm of `u ∈ (0, 1)` from `+ − × ÷` only (identical bits on every
/// platform): `u = m·2^e` with `m ∈ [√½, √2)`, `ln m = 2 atanh s`, `s = (m−1)/(m+1)`,
/// `|s| ≤ 0.1716`, by its series to s^25 (truncation below 1e-19 relative).
/// Accurate to a few ulps for normal `u`; subnormal and non-positive inputs are not
/// supported (the generator never makes them: its uniforms are at least 2^-53).
pub fn ln_unit(u: f64) -> f64 {
    let bits = u.to_bits();
    let mut e = ((bits >> 52) & 0x7ff) as i64 - 1023;
    let mut m = f64::from_bits((bits & 0x000f_ffff_ffff_ffff) | 0x3ff0_0000_0000_0000);
    if m > std::f64::consts::SQRT_2 {
        m *= 0.5;
        e += 1;
    }
    ln_reduced(m, e as f64)
}

/// 2/(2k+1) for k = 1..12: the series of 2 atanh s in s², after its first term 2s.
const LN_SERIES: [f64; 12] = [
    2.0 / 3.0,
    2.0 / 5.0,
    2.0 / 7.0,
    2.0 / 9.0,
    2.0 / 11.0,
    2.0 / 13.0,
    2.0 / 15.0,
    2.0 / 17.0,
    2.0 / 19.0,
    2.0 / 21.0,
    2.0 / 23.0,
    2.0 / 25.0,
];

/// `ln(m · 2^e)` from the reduced mantissa `m ∈ [√½, √2)` and the exponent `ef = e`
/// (an integer, as f64): the shared last part of [`ln_unit`] and its lane version.
#[inline(always)]
fn ln_reduced(m: f64, ef: f64) -> f64 {
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    // Horner in s².
    let mut q = LN_SERIES[11];
    for c in LN_SERIES[..11].iter().rev() {
        q = q * s2 + c;
    }
    let ln_m = 2.0 * s + s * (s2 * q);
    ef * LN2_HI + (ef * LN2_LO + ln_m)
}

/// `(sin 2πu, cos 2πu)` for `u ∈ [0, 1]` from `+ − × ÷` only (identical bits on every
/// platform): `4u = q + f` with `q` the nearest integer and `|f| ≤ ½` (exact), then
/// the Taylor series of sin and cos at `φ = f·π/2 ∈ [−π/4, π/4]` to φ^19 and φ^18
/// (truncation below 1e-18), rotated by `q` quarter turns (exact sign swaps).
pub fn sincos_turn(u: f64) -> (f64, f64) {
    let v = 4.0 * u;
    let q = v.round();
    let (sin, cos) = sincos_reduced((v - q) * std::f64::consts::FRAC_PI_2);
    // q is an integer in 0..=4 (u ∈ [0, 1]); q = 4 is a full turn.
    match (q as i64).rem_euclid(4) {
        0 => (sin, cos),
        1 => (cos, -sin),
        2 => (-sin, -cos),
        _ => (-cos, sin),
    }
}

/// 1/(2k+1)! for k = 1..9, as f64 literals: the series of sin φ / φ − 1 in −φ².
const SIN_SERIES: [f64; 9] = [
    1.666_666_666_666_666_6e-1,
    8.333_333_333_333_333e-3,
    1.984_126_984_126_984e-4,
    2.755_731_922_398_589_3e-6,
    2.505_210_838_544_172e-8,
    1.605_904_383_682_161_3e-10,
    7.647_163_731_819_816e-13,
    2.811_457_254_345_520_6e-15,
    8.220_635_246_624_33e-18,
];
/// 1/(2k)! for k = 1..9, as f64 literals: the series of 1 − cos φ in −φ².
const COS_SERIES: [f64; 9] = [
    0.5,
    4.166_666_666_666_666_4e-2,
    1.388_888_888_888_889e-3,
    2.480_158_730_158_73e-5,
    2.755_731_922_398_589e-7,
    2.087_675_698_786_81e-9,
    1.147_074_559_772_972_5e-11,
    4.779_477_332_387_385e-14,
    1.561_920_696_858_622_5e-16,
];

/// `(sin φ, cos φ)` for `φ ∈ [−π/4, π/4]` by their Taylor series: the shared middle
/// part of [`sincos_turn`] and its lane version.
#[inline(always)]
fn sincos_reduced(phi: f64) -> (f64, f64) {
    let p2 = phi * phi;
    // Alternating series: Horner with sign flips, p = Σ (−1)^k c_k p2^k (k ≥ 1).
    let mut ps = SIN_SERIES[8];
    for c in SIN_SERIES[..8].iter().rev() {
        ps = c - p2 * ps;
    }
    let sin = phi - phi * (p2 * ps);
    let mut pc = COS_SERIES[8];
    for c in COS_SERIES[..8].iter().rev() {
        pc = c - p2 * pc;
    }
    let cos = 1.0 - p2 * pc;
    (sin, cos)
}

/// An independent stream of the generator: the 16-bit id in the counter's top word.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Stream(pub u16);

impl Stream {
    /// Brownian increments of SDE solves.
    pub const BROWNIAN: Stream = Stream(0);
    /// Prior draws: the initial states of samplers.
    pub const PRIOR: Stream = Stream(1);
    /// The first id free for other users (Hutchinson probes, data shuffles, …).
    pub const FIRST_FREE: Stream = Stream(2);
}

/// A keyed family of standard normal streams, addressed by `(stream, sample, step,
/// component)`. Cheap to copy; holds no state but the seed. See the module docs for
/// the exact recipe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Brownian {
    seed: u64,
}

impl Brownian {
    /// The generator keyed by `seed`.
    pub fn new(seed: u64) -> Self {
        Brownian { seed }
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Standard normals ξ of the Brownian stream for `(sample, step)`: `out[c]` is
    /// component `c`. Errors with [`Error::Limit`] when `sample > MAX_SAMPLE`,
    /// `step > MAX_STEP` or `out` is longer than [`MAX_COMPONENTS`].
    pub fn normals<T: Real>(&self, sample: u64, step: u64, out: &mut [T]) -> Result<()> {
        self.stream_normals(Stream::BROWNIAN, sample, step, out)
    }

    /// Brownian increments ΔW = √|dt|·ξ for `(sample, step)`, with ξ from
    /// [`normals`](Brownian::normals). `dt` may be negative (reverse-time solves): the
    /// variance is |dt|.
    pub fn increments<T: Real>(&self, sample: u64, step: u64, dt: T, out: &mut [T]) -> Result<()> {
        if !dt.is_finite() {
            return Err(Error::NonFinite("Brownian time step".into()));
        }
        check_address(sample, step, out.len())?;
        let d = out.len();
        self.fill(Stream::BROWNIAN, sample, step, d, dt.abs().sqrt(), out);
        Ok(())
    }

    /// Standard normals of the prior stream for `sample` (a sampler's initial state):
    /// never the same numbers as any Brownian increment of the same seed.
    pub fn prior_normals<T: Real>(&self, sample: u64, out: &mut [T]) -> Result<()> {
        self.stream_normals(Stream::PRIOR, sample, 0, out)
    }

    /// Standard normals of any stream for `(sample, step)`.
    pub fn stream_normals<T: Real>(
        &self,
        stream: Stream,
        sample: u64,
        step: u64,
        out: &mut [T],
    ) -> Result<()> {
        check_address(sample, step, out.len())?;
        let d = out.len();
        self.fill(stream, sample, step, d, T::one(), out);
        Ok(())
    }

    /// Standard normals of `stream` for a block of samples at one `step`: `out` is
    /// row-major `rows × d`, and row `i` holds the `d` normals of sample
    /// `first_sample + i`, the same numbers as [`stream_normals`](Brownian::stream_normals)
    /// for that sample (bit for bit), from one call.
    ///
    /// Errors with [`Error::InvalidArgument`] when `out.len()` is not a multiple of `d`
    /// (or `d = 0` with a non-empty `out`), and with [`Error::Limit`] when a row's
    /// sample is beyond [`MAX_SAMPLE`], `step > MAX_STEP` or `d > MAX_COMPONENTS`.
    pub fn stream_normals_block<T: Real>(
        &self,
        stream: Stream,
        first_sample: u64,
        step: u64,
        d: usize,
        out: &mut [T],
    ) -> Result<()> {
        check_block(first_sample, step, d, out.len())?;
        self.fill(stream, first_sample, step, d, T::one(), out);
        Ok(())
    }

    /// Brownian increments ΔW = √|dt|·ξ of a block of samples at one `step`: row `i` of
    /// `out` (row-major `rows × d`) is [`increments`](Brownian::increments) of sample
    /// `first_sample + i` (bit for bit), from one call. This is how the SDE solvers
    /// ([`BrownianIncrements`](crate::sde::BrownianIncrements)) draw a step's noise.
    ///
    /// Errors with [`Error::NonFinite`] for a non-finite `dt` and otherwise as
    /// [`stream_normals_block`](Brownian::stream_normals_block).
    pub fn increments_block<T: Real>(
        &self,
        first_sample: u64,
        step: u64,
        dt: T,
        d: usize,
        out: &mut [T],
    ) -> Result<()> {
        if !dt.is_finite() {
            return Err(Error::NonFinite("Brownian time step".into()));
        }
        check_block(first_sample, step, d, out.len())?;
        let s = dt.abs().sqrt();
        self.fill(Stream::BROWNIAN, first_sample, step, d, s, out);
        Ok(())
    }

    /// `out[i·d + c] = T::of(z) · scale` for the normal `z` of component `c` of sample
    /// `first_sample + i`, on an address checked by the caller (`d > 0`).
    fn fill<T: Real>(
        &self,
        stream: Stream,
        first_sample: u64,
        step: u64,
        d: usize,
        scale: T,
        out: &mut [T],
    ) {
        if out.is_empty() {
            return;
        }
        let key = [self.seed as u32, (self.seed >> 32) as u32];
        if out.len() == d && d <= 2 * SHORT_LANES {
            // A few counters: one narrow group, without the dispatch and the wide
            // path's set-up (a short call's time is the latency of one Box–Muller).
            let mut walk = Walk::new(key, stream.0, step as u32, first_sample, d);
            if d <= 2 {
                walk.group::<1, T>(1, scale, out);
            } else {
                walk.group::<SHORT_LANES, T>(d.div_ceil(2), scale, out);
            }
            return;
        }
        fill_block(key, stream.0, step as u32, first_sample, d, scale, out);
    }
}

/// Counters (pairs of normals) computed together by the fast path: one group of
/// arrays the compiler turns into vector instructions (the Philox products into packed
/// 32×32→64-bit multiplies, the polynomials into packed f64 operations). Every lane
/// does the scalar recipe's IEEE operations in the same order (Rust never contracts
/// `a·b + c` into a fused multiply-add), so the bits are those of the scalar recipe.
const LANES: usize = 32;
/// Counters per group at the end of a block (or in a short request), where a group of
/// [`LANES`] would compute mostly unused lanes; a last single counter goes alone.
const TAIL_LANES: usize = 8;
/// Counters of a request short enough for one narrow group outside the dispatched
/// code: one row of up to `2·SHORT_LANES` normals.
const SHORT_LANES: usize = 2;

/// `2^52` as f64: `f64::from_bits(TWO52_BITS | n) = 2^52 + n` exactly for `n < 2^52`.
const TWO52: f64 = 4_503_599_627_370_496.0;
/// The bits of [`TWO52`].
const TWO52_BITS: u64 = 0x4330_0000_0000_0000;

/// The normals of `L` counters under `key`, lane `i`'s being `[w0, c1, w2, w3]` for
/// `[w0, w2, w3] = counter(i)`: for lane `i`,
/// `zc[i]` and `zs[i]` are the even (cosine) and odd (sine) normals of that counter,
/// bit for bit those of [`philox4x32_10`] followed by the scalar Box–Muller
/// ([`unit_open`], [`ln_unit`], [`sincos_turn`]).
///
/// Each stage runs over all lanes before the next one starts, so that the vectors of a
/// group are independent chains the processor overlaps (one lane's Horner steps depend
/// on each other; the lanes' do not).
#[inline(always)]
fn normals_lanes<const L: usize>(
    counter: impl Fn(usize) -> [u32; 3],
    c1: u32,
    key: [u32; 2],
    zc: &mut [f64; L],
    zs: &mut [f64; L],
) {
    // Philox4x32-10, the four words in 64-bit lanes whose low halves are the words: a
    // packed 32×32→64 multiply reads only the low halves, and exclusive-ors leave the
    // low halves right whatever the high halves hold, so no lane is masked until the
    // end.
    let mut x0 = [0u64; L];
    let mut x1 = [u64::from(c1); L];
    let mut x2 = [0u64; L];
    let mut x3 = [0u64; L];
    for i in 0..L {
        let [w0, w2, w3] = counter(i);
        x0[i] = u64::from(w0);
        x2[i] = u64::from(w2);
        x3[i] = u64::from(w3);
    }
    let (mut k0, mut k1) = (u64::from(key[0]), u64::from(key[1]));
    for round in 0..10 {
        if round > 0 {
            k0 += u64::from(PHILOX_W0);
            k1 += u64::from(PHILOX_W1);
        }
        for i in 0..L {
            let p0 = u64::from(PHILOX_M0) * (x0[i] & LOW32);
            let p1 = u64::from(PHILOX_M1) * (x2[i] & LOW32);
            x0[i] = (p1 >> 32) ^ x1[i] ^ k0;
            x1[i] = p1;
            x2[i] = (p0 >> 32) ^ x3[i] ^ k1;
            x3[i] = p0;
        }
    }

    // Uniforms (unit_open): u = (k + 0.5)·2^-52 = (1 + k·2^-52) − (1 − 2^-53), exact
    // both ways. ln_unit's reduction of u1 ≥ 2^-53 (normal, below 1): the mantissa
    // m ∈ [√½, √2) and the exponent e as f64, exactly: (2^52 + biased) − (2^52 + 1023).
    // sincos_turn's reduction of u2: v = 4·u2 = (k2 + 0.5)·2^-50 is never a half-integer,
    // so round(v) = ⌊(k2 + 2^49)/2^50⌋ = q ∈ 0..=4, and φ = (v − q)·π/2 as there.
    let one_bits = 1f64.to_bits();
    let below_one = 1.0 - 1.0 / 9_007_199_254_740_992.0;
    let mut m = [0.0; L];
    let mut ef = [0.0; L];
    let mut phi = [0.0; L];
    let mut quarter = [0u64; L];
    for i in 0..L {
        let k1 = ((x0[i] & LOW32) << 20) | ((x1[i] & LOW32) >> 12);
        let k2 = ((x2[i] & LOW32) << 20) | ((x3[i] & LOW32) >> 12);
        let u1 = f64::from_bits(one_bits | k1) - below_one;
        let u2 = f64::from_bits(one_bits | k2) - below_one;
        let bits = u1.to_bits();
        let mi = f64::from_bits((bits & 0x000f_ffff_ffff_ffff) | one_bits);
        let big = mi > std::f64::consts::SQRT_2;
        m[i] = if big { mi * 0.5 } else { mi };
        ef[i] = f64::from_bits(TWO52_BITS | ((bits >> 52) + u64::from(big))) - (TWO52 + 1023.0);
        let v = 4.0 * u2;
        let q = (k2 + (1 << 49)) >> 50;
        let qf = f64::from_bits(TWO52_BITS | q) - TWO52;
        phi[i] = (v - qf) * std::f64::consts::FRAC_PI_2;
        quarter[i] = q & 3;
    }

    // ln_reduced: s = (m − 1)/(m + 1), Horner in s², then r = sqrt(−2 ln u1).
    let mut sv = [0.0; L];
    let mut s2 = [0.0; L];
    for i in 0..L {
        sv[i] = (m[i] - 1.0) / (m[i] + 1.0);
        s2[i] = sv[i] * sv[i];
    }
    let mut q = [LN_SERIES[11]; L];
    for c in LN_SERIES[..11].iter().rev() {
        for i in 0..L {
            q[i] = q[i] * s2[i] + c;
        }
    }
    let mut r = [0.0; L];
    for i in 0..L {
        let ln_m = 2.0 * sv[i] + sv[i] * (s2[i] * q[i]);
        let ln = ef[i] * LN2_HI + (ef[i] * LN2_LO + ln_m);
        r[i] = (-2.0 * ln).sqrt();
    }

    // sincos_reduced at φ, rotated by q quarter turns: odd q swaps sin and cos; the sine
    // is negated for q mod 4 ∈ {2, 3}, the cosine for q mod 4 ∈ {1, 2} (sign-bit flips,
    // as negation).
    let mut p2 = [0.0; L];
    for i in 0..L {
        p2[i] = phi[i] * phi[i];
    }
    let mut ps = [SIN_SERIES[8]; L];
    let mut pc = [COS_SERIES[8]; L];
    for k in (0..8).rev() {
        for i in 0..L {
            ps[i] = SIN_SERIES[k] - p2[i] * ps[i];
            pc[i] = COS_SERIES[k] - p2[i] * pc[i];
        }
    }
    for i in 0..L {
        let sin = phi[i] - phi[i] * (p2[i] * ps[i]);
        let cos = 1.0 - p2[i] * pc[i];
        let qm = quarter[i];
        let (s, c) = if qm & 1 != 0 { (cos, sin) } else { (sin, cos) };
        let s = f64::from_bits(s.to_bits() ^ ((qm >> 1) << 63));
        let c = f64::from_bits(c.to_bits() ^ (((qm ^ (qm >> 1)) & 1) << 63));
        zc[i] = r[i] * c;
        zs[i] = r[i] * s;
    }
}

/// The low 32 bits of a u64.
const LOW32: u64 = 0xffff_ffff;

crate::linalg::simd_fn! {
    /// `out[i·d + c] = T::of(z) · scale` for the normal `z` of component `c` of sample
    /// `first_sample + i` of `stream` at `step` (rows `out.len() / d`, `d > 0`), in
    /// groups of [`LANES`] counters that run across rows when rows are short.
    fn fill_block<T: Real>(
        key: [u32; 2],
        stream: u16,
        step: u32,
        first_sample: u64,
        d: usize,
        scale: T,
        out: &mut [T],
    ) {
        fill_block_lanes(key, stream, step, first_sample, d, scale, out);
    }
}

/// The body of [`fill_block`], compiled once per SIMD target: groups of [`LANES`]
/// counters while that many are left, then groups of [`TAIL_LANES`].
#[inline(always)]
fn fill_block_lanes<T: Real>(
    key: [u32; 2],
    stream: u16,
    step: u32,
    first_sample: u64,
    d: usize,
    scale: T,
    out: &mut [T],
) {
    let total = (out.len() / d) * d.div_ceil(2);
    let mut walk = Walk::new(key, stream, step, first_sample, d);
    let mut done = 0;
    while total - done >= LANES {
        walk.group::<LANES, T>(LANES, scale, out);
        done += LANES;
    }
    while total - done >= 2 {
        let n = TAIL_LANES.min(total - done);
        walk.group::<TAIL_LANES, T>(n, scale, out);
        done += n;
    }
    if done < total {
        walk.group::<1, T>(1, scale, out);
    }
}

/// Where [`fill_block_lanes`] is in its block: the next counter is component pair `j`
/// of sample `sample`, and its normals go to `out[pos]` (and `out[pos + 1]`).
struct Walk {
    key: [u32; 2],
    step: u32,
    d: usize,
    /// Counters per row: ⌈d/2⌉.
    pairs: usize,
    /// The stream id in place in the counter's top word.
    stream_bits: u32,
    j: usize,
    sample: u64,
    pos: usize,
}

impl Walk {
    /// At the start of the block of rows of `d` normals from `first_sample`.
    #[inline(always)]
    fn new(key: [u32; 2], stream: u16, step: u32, first_sample: u64, d: usize) -> Self {
        Walk {
            key,
            step,
            d,
            pairs: d.div_ceil(2),
            stream_bits: u32::from(stream) << 16,
            j: 0,
            sample: first_sample,
            pos: 0,
        }
    }

    /// The counter's top word for `sample`.
    #[inline(always)]
    fn hi(&self, sample: u64) -> u32 {
        ((sample >> 32) as u32) | self.stream_bits
    }

    /// Fills the normals of the next `n ≤ L` counters of the block into `out` (the
    /// whole block) and moves past them.
    #[inline(always)]
    fn group<const L: usize, T: Real>(&mut self, n: usize, scale: T, out: &mut [T]) {
        let mut zc = [0.0; L];
        let mut zs = [0.0; L];
        if 2 * (self.j + n) <= self.d {
            // Whole pairs of one row: consecutive counters, contiguous normals.
            let (j, lo, hi) = (self.j as u32, self.sample as u32, self.hi(self.sample));
            let counter = |i: usize| [j.wrapping_add(i as u32), lo, hi];
            normals_lanes(counter, self.step, self.key, &mut zc, &mut zs);
            write_pairs(&mut out[self.pos..self.pos + 2 * n], &zc, &zs, scale);
            self.pos += 2 * n;
            self.j += n;
            if self.j == self.pairs {
                self.j = 0;
                self.sample += 1;
            }
        } else if self.pairs == 1 {
            // Rows of one counter (d = 1 or 2): one row per lane.
            let counter = |i: usize| {
                let sample = self.sample + i as u64;
                [0, sample as u32, self.hi(sample)]
            };
            normals_lanes(counter, self.step, self.key, &mut zc, &mut zs);
            let o = &mut out[self.pos..self.pos + n * self.d];
            if self.d == 2 {
                write_pairs(o, &zc, &zs, scale);
            } else {
                for (v, zc) in o.iter_mut().zip(&zc) {
                    *v = T::of(*zc) * scale;
                }
            }
            self.pos += n * self.d;
            self.sample += n as u64;
        } else {
            // Counters across rows of several counters: where each lane's normals go,
            // and whether it has its sine half (not the last counter of an odd row).
            let mut words = [[0u32; 3]; L];
            let mut at = [0usize; L];
            let mut both = [false; L];
            for i in 0..n {
                words[i] = [self.j as u32, self.sample as u32, self.hi(self.sample)];
                at[i] = self.pos;
                both[i] = 2 * self.j + 1 < self.d;
                self.pos += 1 + usize::from(both[i]);
                self.j += 1;
                if self.j == self.pairs {
                    self.j = 0;
                    self.sample += 1;
                }
            }
            normals_lanes(|i| words[i], self.step, self.key, &mut zc, &mut zs);
            for i in 0..n {
                out[at[i]] = T::of(zc[i]) * scale;
                if both[i] {
                    out[at[i] + 1] = T::of(zs[i]) * scale;
                }
            }
        }
    }
}

/// `o[2i] = T::of(zc[i]) · scale`, `o[2i + 1] = T::of(zs[i]) · scale` for the
/// `o.len() / 2` pairs of `o`.
#[inline(always)]
fn write_pairs<T: Real, const L: usize>(o: &mut [T], zc: &[f64; L], zs: &[f64; L], scale: T) {
    for ((pair, zc), zs) in o.chunks_exact_mut(2).zip(zc).zip(zs) {
        pair[0] = T::of(*zc) * scale;
        pair[1] = T::of(*zs) * scale;
    }
}

/// Checks a block request: `len` is `rows × d`, every row's sample and the step are
/// addressable.
fn check_block(first_sample: u64, step: u64, d: usize, len: usize) -> Result<()> {
    if d == 0 {
        if len == 0 {
            return Ok(());
        }
        return Err(Error::InvalidArgument(format!(
            "{len} normals in rows of 0 components"
        )));
    }
    if len % d != 0 {
        return Err(Error::InvalidArgument(format!(
            "{len} normals are not whole rows of {d}"
        )));
    }
    let rows = (len / d) as u64;
    let last = first_sample
        .checked_add(rows.saturating_sub(1))
        .ok_or_else(|| {
            Error::Limit(format!(
                "sample index {first_sample} + {rows} rows overflows u64"
            ))
        })?;
    check_address(last, step, d)?;
    check_address(first_sample, step, d)
}

fn check_address(sample: u64, step: u64, len: usize) -> Result<()> {
    if sample > MAX_SAMPLE {
        return Err(Error::Limit(format!(
            "sample index {sample} exceeds the generator's {MAX_SAMPLE}"
        )));
    }
    if step > MAX_STEP {
        return Err(Error::Limit(format!(
            "step index {step} exceeds the generator's {MAX_STEP}"
        )));
    }
    if len as u64 > MAX_COMPONENTS {
        return Err(Error::Limit(format!(
            "{len} normals per (sample, step) exceed the generator's {MAX_COMPONENTS}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// splitmix64, for random addresses.
    struct SplitMix(u64);

    impl SplitMix {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
    }

    /// The scalar recipe, one counter at a time: `box_muller` of `philox4x32_10`.
    fn reference(key: [u32; 2], stream: u16, sample: u64, step: u32, d: usize) -> Vec<f64> {
        let hi = ((sample >> 32) as u32) | (u32::from(stream) << 16);
        (0..d)
            .map(|c| {
                let x = philox4x32_10([(c / 2) as u32, step, sample as u32, hi], key);
                let r = (-2.0 * ln_unit(unit_open(x[0], x[1]))).sqrt();
                let (s, co) = sincos_turn(unit_open(x[2], x[3]));
                if c % 2 == 0 {
                    r * co
                } else {
                    r * s
                }
            })
            .collect()
    }

    /// The block body compiled for AVX2 + FMA only (on a CPU with AVX-512 the
    /// dispatched `fill_block` takes the AVX-512 clone): its bits must be the same.
    #[multiversion::multiversion(targets("x86_64+avx2+fma"))]
    fn fill_block_avx2<T: Real>(
        key: [u32; 2],
        stream: u16,
        step: u32,
        first_sample: u64,
        d: usize,
        scale: T,
        out: &mut [T],
    ) {
        fill_block_lanes(key, stream, step, first_sample, d, scale, out);
    }

    type Fill<T> = fn([u32; 2], u16, u32, u64, usize, T, &mut [T]);

    /// Every compiled path of the block fill (the dispatched one, AVX2, and the
    /// portable code without target features) against the scalar recipe, bit for bit,
    /// in f64 and f32, on random blocks.
    #[test]
    fn every_simd_path_gives_the_reference_bits() {
        let paths64: [(&str, Fill<f64>); 3] = [
            ("dispatched", fill_block::<f64>),
            ("avx2", fill_block_avx2::<f64>),
            ("portable", fill_block_lanes::<f64>),
        ];
        let paths32: [(&str, Fill<f32>); 3] = [
            ("dispatched", fill_block::<f32>),
            ("avx2", fill_block_avx2::<f32>),
            ("portable", fill_block_lanes::<f32>),
        ];
        let mut g = SplitMix(17);
        for _ in 0..300 {
            let key = [g.next() as u32, g.next() as u32];
            let stream = g.next() as u16;
            let step = g.next() as u32;
            let d = 1 + (g.next() % 80) as usize;
            let rows = 1 + (g.next() % 12) as usize;
            let first = match g.next() % 3 {
                0 => (1 << 32) - 3,
                1 => MAX_SAMPLE - rows as u64 + 1,
                _ => g.next() & MAX_SAMPLE >> 1,
            };
            let want: Vec<f64> = (0..rows as u64)
                .flat_map(|i| reference(key, stream, first + i, step, d))
                .collect();
            for (name, f) in paths64 {
                let mut out = vec![0.0f64; rows * d];
                f(key, stream, step, first, d, 1.0, &mut out);
                for (k, (a, b)) in out.iter().zip(&want).enumerate() {
                    assert_eq!(a.to_bits(), b.to_bits(), "{name} d {d} rows {rows} at {k}");
                }
            }
            for (name, f) in paths32 {
                let mut out = vec![0.0f32; rows * d];
                f(key, stream, step, first, d, 0.5, &mut out);
                for (k, (a, b)) in out.iter().zip(&want).enumerate() {
                    let b = (*b as f32) * 0.5;
                    assert_eq!(a.to_bits(), b.to_bits(), "{name} d {d} rows {rows} at {k}");
                }
            }
        }
    }

    #[test]
    fn ln_matches_std() {
        let mut worst = 0.0f64;
        for i in 1..200_000u64 {
            let u = (i as f64 - 0.25) / 200_000.0;
            let a = ln_unit(u);
            let b = u.ln();
            worst = worst.max((a - b).abs() / b.abs().max(1e-300));
        }
        for e in 1..53 {
            let u = 2f64.powi(-e) * 1.000_000_1;
            worst = worst.max((ln_unit(u) - u.ln()).abs() / u.ln().abs());
        }
        assert!(worst < 4.0 * f64::EPSILON, "ln rel err {worst:e}");
    }

    #[test]
    fn sincos_matches_std() {
        let mut worst = 0.0f64;
        for i in 0..=400_000u64 {
            let u = i as f64 / 400_000.0;
            let (s, c) = sincos_turn(u);
            let (bs, bc) = (2.0 * std::f64::consts::PI * u).sin_cos();
            worst = worst.max((s - bs).abs()).max((c - bc).abs());
        }
        // Absolute error: std's own argument 2πu carries ~1 ulp of 2π error.
        assert!(worst < 8.0 * f64::EPSILON, "sincos abs err {worst:e}");
    }
}
