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
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    // 2/(2k+1) for k = 1..12, Horner in s².
    const C: [f64; 12] = [
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
    let mut q = C[11];
    for c in C[..11].iter().rev() {
        q = q * s2 + c;
    }
    let ef = e as f64;
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
    let phi = (v - q) * std::f64::consts::FRAC_PI_2;
    let p2 = phi * phi;
    // 1/(2k+1)! for k = 1..9 (sin) and 1/(2k)! for k = 1..9 (cos), as f64 literals.
    const S: [f64; 9] = [
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
    const K: [f64; 9] = [
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
    // Alternating series: Horner with sign flips, p = Σ (−1)^k c_k p2^k (k ≥ 1).
    let mut ps = S[8];
    for c in S[..8].iter().rev() {
        ps = c - p2 * ps;
    }
    let sin = phi - phi * (p2 * ps);
    let mut pc = K[8];
    for c in K[..8].iter().rev() {
        pc = c - p2 * pc;
    }
    let cos = 1.0 - p2 * pc;
    // q is an integer in 0..=4 (u ∈ [0, 1]); q = 4 is a full turn.
    match (q as i64).rem_euclid(4) {
        0 => (sin, cos),
        1 => (cos, -sin),
        2 => (-sin, -cos),
        _ => (-cos, sin),
    }
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
        self.stream_normals(Stream::BROWNIAN, sample, step, out)?;
        let s = dt.abs().sqrt();
        for v in out.iter_mut() {
            *v *= s;
        }
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
        let key = [self.seed as u32, (self.seed >> 32) as u32];
        let hi = ((sample >> 32) as u32) | (u32::from(stream.0) << 16);
        let mut pairs = out.chunks_mut(2);
        let mut j: u32 = 0;
        for pair in &mut pairs {
            let (z0, z1) = box_muller(philox4x32_10([j, step as u32, sample as u32, hi], key));
            pair[0] = T::of(z0);
            if let Some(v) = pair.get_mut(1) {
                *v = T::of(z1);
            }
            j = j.wrapping_add(1);
        }
        Ok(())
    }
}

/// The two normals of one Philox output (steps 3–4 of the module's recipe).
#[inline]
fn box_muller(x: [u32; 4]) -> (f64, f64) {
    let u1 = unit_open(x[0], x[1]);
    let u2 = unit_open(x[2], x[3]);
    let r = (-2.0 * ln_unit(u1)).sqrt();
    let (s, c) = sincos_turn(u2);
    (r * c, r * s)
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
