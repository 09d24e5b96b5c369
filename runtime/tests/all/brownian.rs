//! The counter-based generator: Philox known answers, the documented normal recipe
//! against an independent implementation, distribution and independence statistics,
//! reproducibility and limits.

use socflow_runtime::brownian::{
    ln_unit, philox4x32_10, sincos_turn, unit_open, Brownian, Stream, MAX_SAMPLE, MAX_STEP,
};
use socflow_runtime::Error;

/// Random123's known-answer vectors for philox4x32_10 (kat_vectors).
#[test]
fn philox_known_answers() {
    let cases: [([u32; 4], [u32; 2], [u32; 4]); 3] = [
        (
            [0, 0, 0, 0],
            [0, 0],
            [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8],
        ),
        (
            [0xffffffff; 4],
            [0xffffffff; 2],
            [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd],
        ),
        (
            [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
            [0xa4093822, 0x299f31d0],
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1],
        ),
    ];
    for (ctr, key, want) in cases {
        assert_eq!(
            philox4x32_10(ctr, key),
            want,
            "counter {ctr:08x?} key {key:08x?}"
        );
    }
}

#[test]
fn uniforms_are_strictly_inside_the_unit_interval() {
    assert_eq!(unit_open(0, 0), 2f64.powi(-53));
    assert_eq!(unit_open(u32::MAX, u32::MAX), 1.0 - 2f64.powi(-53));
    // The low 12 bits of the second word are dropped (52 bits in all).
    assert_eq!(unit_open(0, 0xfff), unit_open(0, 0));
    assert_eq!(unit_open(0, 0x1000), 1.5 * 2f64.powi(-52));
}

/// Values of the module's recipe computed by an independent Python implementation
/// (its own Philox, checked on the same known answers, and libm's log/cos/sin).
#[test]
fn normals_match_an_independent_implementation_of_the_recipe() {
    let cases: [(u64, u16, u64, u64, usize, f64); 7] = [
        (0, 0, 0, 0, 0, -0.12151797595308224),
        (0, 0, 0, 0, 1, -1.350032659857655),
        (0, 0, 0, 0, 2, -0.08187420991589162),
        (42, 0, 7, 3, 5, 0.43547784850570104),
        (
            0xdeadbeefcafef00d,
            1,
            123456789012,
            0,
            0,
            0.16938327345260712,
        ),
        (
            0xdeadbeefcafef00d,
            1,
            123456789012,
            0,
            1,
            0.06181711578395501,
        ),
        (
            12345,
            0,
            (1 << 48) - 1,
            (1 << 32) - 1,
            9,
            0.41085786702892946,
        ),
    ];
    for (seed, stream, sample, step, comp, want) in cases {
        let mut z = vec![0.0f64; comp + 1];
        Brownian::new(seed)
            .stream_normals(Stream(stream), sample, step, &mut z)
            .unwrap();
        let got = z[comp];
        assert!(
            (got - want).abs() <= 4.0 * f64::EPSILON * want.abs().max(1.0),
            "seed {seed} stream {stream} sample {sample} step {step} comp {comp}: {got} vs {want}"
        );
    }
    // The prior stream is stream 1, step 0.
    let b = Brownian::new(0xdeadbeefcafef00d);
    let mut p = [0.0f64; 2];
    b.prior_normals(123456789012, &mut p).unwrap();
    let mut q = [0.0f64; 2];
    b.stream_normals(Stream::PRIOR, 123456789012, 0, &mut q)
        .unwrap();
    assert_eq!(p, q);
}

/// Φ(x) through erfc (Numerical Recipes' Chebyshev fit, relative error < 1.2e-7,
/// far below the KS critical value used here, ~2e-3).
fn normal_cdf(x: f64) -> f64 {
    let z = x.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.26551223
        + t * (1.00002368
            + t * (0.37409196
                + t * (0.09678418
                    + t * (-0.18628806
                        + t * (0.27886807
                            + t * (-1.13520398
                                + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))))))));
    let erfc = t * poly.exp();
    if x >= 0.0 {
        1.0 - 0.5 * erfc
    } else {
        0.5 * erfc
    }
}

/// 10⁶ draws over samples × steps × components (an odd dimension, so half pairs are
/// used too): mean, variance, skewness, excess kurtosis within 4 standard errors,
/// the tail mass beyond 3σ, and the Kolmogorov–Smirnov statistic below its 0.1%
/// critical value.
#[test]
fn normals_are_standard_normal() {
    let b = Brownian::new(20240611);
    let (samples, steps, dim) = (2000u64, 100u64, 5usize);
    let mut z = Vec::with_capacity(samples as usize * steps as usize * dim);
    let mut buf = [0.0f64; 5];
    for s in 0..samples {
        for k in 0..steps {
            b.normals(s, k, &mut buf).unwrap();
            z.extend_from_slice(&buf);
        }
    }
    let n = z.len() as f64;
    let mean = z.iter().sum::<f64>() / n;
    let m = |p: i32| z.iter().map(|v| (v - mean).powi(p)).sum::<f64>() / n;
    let (m2, m3, m4) = (m(2), m(3), m(4));
    let skew = m3 / m2.powf(1.5);
    let kurt = m4 / (m2 * m2) - 3.0;
    eprintln!("n = {n}, mean {mean:.2e}, var {m2:.6}, skew {skew:.2e}, excess kurtosis {kurt:.2e}");
    assert!(mean.abs() < 4.0 / n.sqrt(), "mean {mean}");
    assert!((m2 - 1.0).abs() < 4.0 * (2.0 / n).sqrt(), "variance {m2}");
    assert!(skew.abs() < 4.0 * (6.0 / n).sqrt(), "skewness {skew}");
    assert!(
        kurt.abs() < 4.0 * (24.0 / n).sqrt(),
        "excess kurtosis {kurt}"
    );

    let p3 = 2.0 * normal_cdf(-3.0);
    let tail = z.iter().filter(|v| v.abs() > 3.0).count() as f64 / n;
    assert!(
        (tail - p3).abs() < 4.0 * (p3 * (1.0 - p3) / n).sqrt(),
        "P(|z| > 3) = {tail}, expected {p3}"
    );

    z.sort_by(f64::total_cmp);
    let mut dmax = 0.0f64;
    for (i, v) in z.iter().enumerate() {
        let f = normal_cdf(*v);
        dmax = dmax
            .max((f - i as f64 / n).abs())
            .max(((i + 1) as f64 / n - f).abs());
    }
    let ks = dmax * n.sqrt();
    eprintln!("KS: D = {dmax:.3e}, sqrt(n) D = {ks:.3}");
    // Kolmogorov distribution: P(sqrt(n) D > 1.95) ≈ 0.001.
    assert!(ks < 1.95, "KS statistic sqrt(n) D = {ks}");
}

fn correlation(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let mut sab = 0.0;
    let mut saa = 0.0;
    let mut sbb = 0.0;
    for (x, y) in a.iter().zip(b) {
        sab += (x - ma) * (y - mb);
        saa += (x - ma).powi(2);
        sbb += (y - mb).powi(2);
    }
    sab / (saa * sbb).sqrt()
}

/// Neighbouring counters (the Box–Muller partner, the next counter word, the next
/// step, the next sample, the next seed, the prior stream) are uncorrelated, and so
/// are their squares (Box–Muller partners are independent, not just uncorrelated):
/// |ρ| < 4/√n for n = 2.5·10⁵ pairs.
#[test]
fn neighbouring_counters_are_uncorrelated() {
    let b = Brownian::new(7);
    let b2 = Brownian::new(8);
    let n = 250_000u64;
    let mut pairs: Vec<(&str, Vec<f64>, Vec<f64>)> = [
        "partner (c, c+1)",
        "next counter (c, c+2)",
        "next step",
        "next sample",
        "next seed",
        "prior stream vs Brownian step 0",
    ]
    .into_iter()
    .map(|name| (name, Vec::new(), Vec::new()))
    .collect();
    let mut z = [0.0f64; 4];
    let mut w = [0.0f64; 4];
    for i in 0..n {
        let (s, k) = (i / 500, i % 500);
        b.normals(s, k, &mut z).unwrap();
        pairs[0].1.push(z[0]);
        pairs[0].2.push(z[1]);
        pairs[1].1.push(z[1]);
        pairs[1].2.push(z[3]);
        b.normals(s, k + 1, &mut w).unwrap();
        pairs[2].1.push(z[0]);
        pairs[2].2.push(w[0]);
        b.normals(s + 1, k, &mut w).unwrap();
        pairs[3].1.push(z[2]);
        pairs[3].2.push(w[2]);
        b2.normals(s, k, &mut w).unwrap();
        pairs[4].1.push(z[0]);
        pairs[4].2.push(w[0]);
        b.prior_normals(i, &mut w).unwrap();
        b.normals(i, 0, &mut z).unwrap();
        pairs[5].1.push(z[0]);
        pairs[5].2.push(w[0]);
    }
    let bound = 4.0 / (n as f64).sqrt();
    for (name, a, c) in &pairs {
        let r = correlation(a, c);
        let sa: Vec<f64> = a.iter().map(|v| v * v).collect();
        let sc: Vec<f64> = c.iter().map(|v| v * v).collect();
        let r2 = correlation(&sa, &sc);
        eprintln!("{name}: corr {r:.2e}, corr of squares {r2:.2e} (bound {bound:.2e})");
        assert!(r.abs() < bound, "{name}: correlation {r}");
        assert!(r2.abs() < bound, "{name}: correlation of squares {r2}");
    }
}

#[test]
fn draws_are_reproducible_and_consistent_across_precisions() {
    let b = Brownian::new(99);
    let mut a = vec![0.0f64; 9];
    let mut c = vec![0.0f64; 9];
    b.normals(5, 17, &mut a).unwrap();
    Brownian::new(99).normals(5, 17, &mut c).unwrap();
    assert_eq!(a, c, "same address, same numbers");

    // A shorter request is a prefix of a longer one.
    let mut short = vec![0.0f64; 4];
    b.normals(5, 17, &mut short).unwrap();
    assert_eq!(short[..], a[..4]);
    let mut odd = vec![0.0f64; 3];
    b.normals(5, 17, &mut odd).unwrap();
    assert_eq!(odd[..], a[..3]);

    // f32 numbers are the f64 numbers rounded to nearest.
    let mut s = vec![0.0f32; 9];
    b.normals(5, 17, &mut s).unwrap();
    for (x, y) in s.iter().zip(&a) {
        assert_eq!(*x, *y as f32);
    }

    // Increments: sqrt(|dt|)·ξ, forward and backward.
    for dt in [0.01f64, -0.01, 0.25] {
        let mut inc = vec![0.0f64; 9];
        b.increments(5, 17, dt, &mut inc).unwrap();
        for (x, y) in inc.iter().zip(&a) {
            assert_eq!(*x, y * dt.abs().sqrt());
        }
    }

    // Other seeds, samples, steps and streams give other numbers.
    for (bb, sample, step, stream) in [
        (Brownian::new(100), 5, 17, Stream::BROWNIAN),
        (b, 6, 17, Stream::BROWNIAN),
        (b, 5, 18, Stream::BROWNIAN),
        (b, 5, 17, Stream::PRIOR),
        (b, 5, 17, Stream::FIRST_FREE),
    ] {
        let mut o = vec![0.0f64; 9];
        bb.stream_normals(stream, sample, step, &mut o).unwrap();
        assert!(o.iter().zip(&a).all(|(x, y)| x != y), "{o:?} vs {a:?}");
    }
}

#[test]
fn addresses_beyond_the_counter_are_refused() {
    let b = Brownian::new(1);
    let mut z = [0.0f64; 2];
    b.normals(MAX_SAMPLE, MAX_STEP, &mut z).unwrap();
    assert!(z.iter().all(|v| v.is_finite()));
    assert!(matches!(
        b.normals(MAX_SAMPLE + 1, 0, &mut z),
        Err(Error::Limit(_))
    ));
    assert!(matches!(
        b.normals(0, MAX_STEP + 1, &mut z),
        Err(Error::Limit(_))
    ));
    assert!(matches!(
        b.increments(0, 0, f64::NAN, &mut z),
        Err(Error::NonFinite(_))
    ));
    // Empty requests are fine.
    b.normals::<f64>(0, 0, &mut []).unwrap();
}

/// splitmix64: addresses for the bit-exactness tests, no dependencies.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A straightforward scalar implementation of the module's recipe, one counter at a
/// time from the public primitives (`philox4x32_10`, `unit_open`, `ln_unit`,
/// `sincos_turn`): the reference every faster path must match bit for bit.
fn reference_normals(seed: u64, stream: u16, sample: u64, step: u64, len: usize) -> Vec<f64> {
    let key = [seed as u32, (seed >> 32) as u32];
    let hi = ((sample >> 32) as u32) | (u32::from(stream) << 16);
    (0..len)
        .map(|c| {
            let x = philox4x32_10([(c / 2) as u32, step as u32, sample as u32, hi], key);
            let u1 = unit_open(x[0], x[1]);
            let u2 = unit_open(x[2], x[3]);
            let r = (-2.0 * ln_unit(u1)).sqrt();
            let (s, co) = sincos_turn(u2);
            if c % 2 == 0 {
                r * co
            } else {
                r * s
            }
        })
        .collect()
}

/// Lengths that exercise every remainder of the fast paths' lanes (odd lengths, one
/// normal, a partial last group) and the SDE dimensions benchmarked (2, 64, 256).
const LENGTHS: [usize; 24] = [
    0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 255, 256, 257, 511, 1001,
];

/// A random address `(seed, stream, sample, step, len)`, a quarter of them at or near
/// the counter's limits (sample near 2^48 − 1, step near 2^32 − 1).
fn random_address(g: &mut SplitMix) -> (u64, u16, u64, u64, usize) {
    let seed = g.next();
    let stream = g.next() as u16;
    let sample = match g.below(4) {
        0 => MAX_SAMPLE - g.below(4),
        1 => g.below(1 << 20),
        _ => g.next() & MAX_SAMPLE,
    };
    let step = match g.below(4) {
        0 => MAX_STEP - g.below(4),
        1 => g.below(1000),
        _ => g.next() & MAX_STEP,
    };
    let len = LENGTHS[g.below(LENGTHS.len() as u64) as usize];
    (seed, stream, sample, step, len)
}

/// FNV-1a (64-bit) over the little-endian bytes of each value.
fn fnv1a(h: &mut u64, bits: u64, bytes: usize) {
    for b in bits.to_le_bytes().iter().take(bytes) {
        *h ^= u64::from(*b);
        *h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
}

/// A digest of ~7.5·10⁵ values (~1.9·10⁵ normals in each of f64 and f32, as normals and
/// as increments, random streams, odd lengths, addresses at the counter's limits) pins the generator's output bit for
/// bit: any change of the recipe, or a faster path that rounds differently, changes it.
///
/// The pinned value was computed by the scalar reference implementation (one counter at
/// a time, `box_muller` over `philox4x32_10`) at commit 0e422c2, before the generator
/// was vectorized.
#[test]
fn normals_digest_is_pinned() {
    const PINNED: u64 = 0xc405_74be_aab7_02a8;
    let mut g = SplitMix(0x005e_edb1_0cd1_6e57);
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let mut count = 0usize;
    for _ in 0..1500 {
        let (seed, stream, sample, step, len) = random_address(&mut g);
        let b = Brownian::new(seed);
        let mut z = vec![0.0f64; len];
        b.stream_normals(Stream(stream), sample, step, &mut z)
            .unwrap();
        let mut y = vec![0.0f32; len];
        b.stream_normals(Stream(stream), sample, step, &mut y)
            .unwrap();
        let dt = (g.next() >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
        let mut w = vec![0.0f64; len];
        b.increments(sample, step, dt, &mut w).unwrap();
        let mut v = vec![0.0f32; len];
        b.increments(sample, step, dt as f32, &mut v).unwrap();
        for i in 0..len {
            fnv1a(&mut h, z[i].to_bits(), 8);
            fnv1a(&mut h, u64::from(y[i].to_bits()), 4);
            fnv1a(&mut h, w[i].to_bits(), 8);
            fnv1a(&mut h, u64::from(v[i].to_bits()), 4);
        }
        count += len;
    }
    eprintln!("{count} normals of each kind, digest {h:#018x}");
    assert!(count > 100_000, "{count}");
    assert_eq!(h, PINNED, "digest {h:#018x}");
}

/// The generator's normals (f64 and f32) against the scalar reference, element by
/// element, on random addresses.
#[test]
fn normals_match_the_scalar_reference_bit_for_bit() {
    let mut g = SplitMix(0xfeed_0123);
    for _ in 0..600 {
        let (seed, stream, sample, step, len) = random_address(&mut g);
        let want = reference_normals(seed, stream, sample, step, len);
        let b = Brownian::new(seed);
        let mut z = vec![0.0f64; len];
        b.stream_normals(Stream(stream), sample, step, &mut z)
            .unwrap();
        let mut y = vec![0.0f32; len];
        b.stream_normals(Stream(stream), sample, step, &mut y)
            .unwrap();
        for c in 0..len {
            assert_eq!(
                z[c].to_bits(),
                want[c].to_bits(),
                "seed {seed} stream {stream} sample {sample} step {step} len {len} comp {c}"
            );
            assert_eq!(y[c].to_bits(), (want[c] as f32).to_bits());
        }
    }
}

/// Blocks (`stream_normals_block`, `increments_block`) are their rows' per-sample
/// draws bit for bit, for rows of every length class (1, 2, odd, even, longer than a
/// group of lanes), blocks whose samples cross a 2^32 boundary of the counter's third
/// word, and blocks ending at the last addressable sample.
#[test]
fn blocks_are_their_rows_bit_for_bit() {
    let mut g = SplitMix(0xb10c);
    let dims = [1usize, 2, 3, 4, 5, 7, 8, 9, 16, 17, 31, 33, 64, 65, 100];
    let firsts = [0u64, (1 << 32) - 5, MAX_SAMPLE - 40, 12345];
    for &d in &dims {
        for &first in &firsts {
            for rows in [1usize, 2, 3, 7, 16, 33, 41] {
                let seed = g.next();
                let stream = Stream(g.next() as u16);
                let step = if g.below(2) == 0 {
                    MAX_STEP
                } else {
                    g.below(1000)
                };
                let b = Brownian::new(seed);
                let mut block = vec![0.0f64; rows * d];
                b.stream_normals_block(stream, first, step, d, &mut block)
                    .unwrap();
                let mut block32 = vec![0.0f32; rows * d];
                b.stream_normals_block(stream, first, step, d, &mut block32)
                    .unwrap();
                let dt = -0.37f64;
                let mut inc = vec![0.0f64; rows * d];
                b.increments_block(first, step, dt, d, &mut inc).unwrap();
                let mut inc32 = vec![0.0f32; rows * d];
                b.increments_block(first, step, dt as f32, d, &mut inc32)
                    .unwrap();
                for i in 0..rows {
                    let sample = first + i as u64;
                    let want = reference_normals(seed, stream.0, sample, step, d);
                    let mut row_inc = vec![0.0f64; d];
                    b.increments(sample, step, dt, &mut row_inc).unwrap();
                    let mut row_inc32 = vec![0.0f32; d];
                    b.increments(sample, step, dt as f32, &mut row_inc32)
                        .unwrap();
                    let at = format!("d {d} first {first} rows {rows} row {i}");
                    let r = i * d..(i + 1) * d;
                    let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    let bits32 = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    let want32: Vec<f32> = want.iter().map(|x| *x as f32).collect();
                    assert_eq!(bits(&block[r.clone()]), bits(&want), "{at}");
                    assert_eq!(bits32(&block32[r.clone()]), bits32(&want32), "{at}");
                    assert_eq!(bits(&inc[r.clone()]), bits(&row_inc), "{at}");
                    assert_eq!(bits32(&inc32[r.clone()]), bits32(&row_inc32), "{at}");
                }
            }
        }
    }
}

#[test]
fn block_requests_are_checked() {
    let b = Brownian::new(3);
    let mut z = [0.0f64; 6];
    // Rows must be whole.
    assert!(matches!(
        b.stream_normals_block(Stream::BROWNIAN, 0, 0, 4, &mut z),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        b.increments_block(0, 0, 0.1, 0, &mut z),
        Err(Error::InvalidArgument(_))
    ));
    b.increments_block::<f64>(0, 0, 0.1, 0, &mut []).unwrap();
    // Every row's sample must be addressable: 3 rows of 2 from MAX_SAMPLE - 2 end at
    // MAX_SAMPLE, from MAX_SAMPLE - 1 they do not.
    b.stream_normals_block(Stream::PRIOR, MAX_SAMPLE - 2, 0, 2, &mut z)
        .unwrap();
    assert!(matches!(
        b.stream_normals_block(Stream::PRIOR, MAX_SAMPLE - 1, 0, 2, &mut z),
        Err(Error::Limit(_))
    ));
    assert!(matches!(
        b.increments_block(u64::MAX, 0, 0.1, 2, &mut z),
        Err(Error::Limit(_))
    ));
    assert!(matches!(
        b.increments_block(0, MAX_STEP + 1, 0.1, 2, &mut z),
        Err(Error::Limit(_))
    ));
    assert!(matches!(
        b.increments_block(0, 0, f64::INFINITY, 2, &mut z),
        Err(Error::NonFinite(_))
    ));
}
