//! Data: the toys' statistics against closed forms, reproducibility, the counter-based
//! draws, CSV/NPY parsing and every error path, splits, normalization, mini-batches.

use std::f64::consts::PI;
use std::path::PathBuf;

use socflow_runtime::artifact::Normalization;
use socflow_runtime::brownian::Brownian;
use socflow_trainer::data::rng::{permutation, shuffle_rows, Draws, TOY_STREAM};
use socflow_trainer::data::{load_dataset, parse_csv, BatchSampler, Dataset, Toy};
use socflow_trainer::Error;

/// A fresh file path under Cargo's per-test temporary directory.
fn temp_path(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("socflow-trainer-data");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Mean of f over the rows, and its standard error (from the sample variance).
fn mean_se(x: &[f64], f: impl Fn(f64, f64) -> f64) -> (f64, f64) {
    let vals: Vec<f64> = x.chunks_exact(2).map(|p| f(p[0], p[1])).collect();
    let n = vals.len() as f64;
    let mean = vals.iter().sum::<f64>() / n;
    let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, (var / n).sqrt())
}

/// Asserts that the sample mean of f is within 5 standard errors of `expected`.
fn assert_mean(x: &[f64], what: &str, expected: f64, f: impl Fn(f64, f64) -> f64) {
    let (mean, se) = mean_se(x, f);
    assert!(
        (mean - expected).abs() <= 5.0 * se,
        "{what}: mean {mean} vs expected {expected} (standard error {se})"
    );
}

/// Asserts a count of a Binomial(n, p) event within 5 standard deviations.
fn assert_binomial(count: usize, n: usize, p: f64, what: &str) {
    let (mean, sd) = (n as f64 * p, (n as f64 * p * (1.0 - p)).sqrt());
    assert!(
        (count as f64 - mean).abs() <= 5.0 * sd,
        "{what}: {count} of {n}, expected {mean} ± {sd}"
    );
}

const N: usize = 100_000;

#[test]
fn toy_names_round_trip_and_bad_names_are_explained() {
    let names = [
        "8gaussians",
        "checkerboard",
        "moons",
        "circles",
        "swissroll",
        "2spirals",
        "pinwheel",
        "rings",
    ];
    assert_eq!(Toy::ALL.map(Toy::name), names);
    for toy in Toy::ALL {
        assert_eq!(toy.name().parse::<Toy>().unwrap(), toy);
        assert_eq!(toy.to_string(), toy.name());
        assert_eq!(toy.name().to_uppercase().parse::<Toy>().unwrap(), toy);
        assert_eq!(toy.dim(), 2);
    }
    let err = "8gaussian".parse::<Toy>().unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::UnknownName { .. }), "{err:?}");
    assert!(msg.contains("`8gaussian`"), "{msg}");
    for name in names {
        assert!(msg.contains(name), "{msg} lacks {name}");
    }
}

#[test]
fn toys_are_reproducible_and_seeded() {
    for toy in Toy::ALL {
        let a = toy.sample(1000, 7).unwrap();
        assert_eq!(a.len(), 2000);
        assert!(a.iter().all(|v| v.is_finite()));
        let b = toy.sample(1000, 7).unwrap();
        assert!(
            a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{toy}: not reproducible"
        );
        let c = toy.sample(1000, 8).unwrap();
        let same = a.iter().zip(&c).filter(|(x, y)| x == y).count();
        assert!(same < 20, "{toy}: seeds 7 and 8 share {same} values");
        assert!(toy.sample(0, 7).unwrap().is_empty());
        assert_eq!(toy.sample(1, 7).unwrap().len(), 2);
        assert_eq!(toy.sample(1001, 7).unwrap().len(), 2002);
    }
    // The i.i.d. toys draw row i from row-i addresses only: a prefix property.
    for toy in [
        Toy::EightGaussians,
        Toy::Checkerboard,
        Toy::SwissRoll,
        Toy::TwoSpirals,
    ] {
        let short = toy.sample(100, 3).unwrap();
        let long = toy.sample(1000, 3).unwrap();
        assert_eq!(short[..], long[..200], "{toy}");
    }
}

/// numpy's `linspace(start, stop, num, endpoint)[k]`.
fn linspace(start: f64, stop: f64, num: usize, endpoint: bool, k: usize) -> f64 {
    let div = if endpoint { num - 1 } else { num };
    if div == 0 {
        start
    } else if endpoint && k == num - 1 {
        stop
    } else {
        start + k as f64 * (stop - start) / div as f64
    }
}

/// The toys written again from FFJORD's `toy_data.py` and the addresses the module
/// documents (normals at (TOY_STREAM, row, step 0), uniforms and integers at
/// (TOY_STREAM, sample, step 1), shuffles at step 2), independently of the library's
/// code: this pins every constant, which the statistics alone cannot resolve (1.414
/// against √2, say).
fn reference(toy: Toy, n: usize, seed: u64) -> Vec<[f64; 2]> {
    let g = Brownian::new(seed);
    let z = |i: usize| {
        let mut z = [0.0f64; 2];
        g.stream_normals(TOY_STREAM, i as u64, 0, &mut z).unwrap();
        z
    };
    let draws = |i: usize| Draws::new(seed, TOY_STREAM, i as u64, 1).unwrap();
    let shuffled = |grid: Vec<[f64; 2]>| -> Vec<[f64; 2]> {
        let p = permutation(grid.len(), seed, TOY_STREAM, 2).unwrap();
        p.iter().map(|&k| grid[k]).collect()
    };
    let noisy = |pts: Vec<[f64; 2]>, s: f64| -> Vec<[f64; 2]> {
        pts.iter()
            .enumerate()
            .map(|(i, p)| {
                let e = z(i);
                [p[0] + s * e[0], p[1] + s * e[1]]
            })
            .collect()
    };
    let h = 1.0 / 2f64.sqrt();
    match toy {
        Toy::EightGaussians => (0..n)
            .map(|i| {
                let centres = [
                    (1.0, 0.0),
                    (-1.0, 0.0),
                    (0.0, 1.0),
                    (0.0, -1.0),
                    (h, h),
                    (h, -h),
                    (-h, h),
                    (-h, -h),
                ];
                let (cx, cy) = centres[draws(i).below(8) as usize];
                let e = z(i);
                [
                    (e[0] * 0.5 + 4.0 * cx) / 1.414,
                    (e[1] * 0.5 + 4.0 * cy) / 1.414,
                ]
            })
            .collect(),
        Toy::Checkerboard => (0..n)
            .map(|i| {
                let mut d = draws(i);
                let x1 = d.uniform() * 4.0 - 2.0;
                let x2_ = d.uniform() - d.below(2) as f64 * 2.0;
                // Python's float `%` has the divisor's sign.
                let x2 = x2_ + ((x1.floor() % 2.0) + 2.0) % 2.0;
                [x1 * 2.0, x2 * 2.0]
            })
            .collect(),
        Toy::Moons => {
            let (n_out, n_in) = (n / 2, n - n / 2);
            let grid: Vec<[f64; 2]> = (0..n_out)
                .map(|k| {
                    let t = linspace(0.0, PI, n_out, true, k);
                    [t.cos(), t.sin()]
                })
                .chain((0..n_in).map(|k| {
                    let t = linspace(0.0, PI, n_in, true, k);
                    [1.0 - t.cos(), 1.0 - t.sin() - 0.5]
                }))
                .collect();
            noisy(shuffled(grid), 0.1)
                .iter()
                .map(|p| [p[0] * 2.0 - 1.0, p[1] * 2.0 - 0.2])
                .collect()
        }
        Toy::Circles => {
            let (n_out, n_in) = (n / 2, n - n / 2);
            let grid: Vec<[f64; 2]> = (0..n_out)
                .map(|k| {
                    let t = linspace(0.0, 2.0 * PI, n_out, false, k);
                    [t.cos(), t.sin()]
                })
                .chain((0..n_in).map(|k| {
                    let t = linspace(0.0, 2.0 * PI, n_in, false, k);
                    [t.cos() * 0.5, t.sin() * 0.5]
                }))
                .collect();
            noisy(shuffled(grid), 0.08)
                .iter()
                .map(|p| [p[0] * 3.0, p[1] * 3.0])
                .collect()
        }
        Toy::Rings => {
            let q = n / 4;
            let grid: Vec<[f64; 2]> = [(q, 1.0), (q, 0.75), (q, 0.5), (n - 3 * q, 0.25)]
                .iter()
                .flat_map(|&(count, r)| {
                    (0..count).map(move |k| {
                        let t = linspace(0.0, 2.0 * PI, count, false, k);
                        [t.cos() * r * 3.0, t.sin() * r * 3.0]
                    })
                })
                .collect();
            noisy(shuffled(grid), 0.08)
        }
        Toy::SwissRoll => (0..n)
            .map(|i| {
                let t = 1.5 * PI * (1.0 + 2.0 * draws(i).uniform());
                let e = z(i);
                [(t * t.cos() + e[0]) / 5.0, (t * t.sin() + e[1]) / 5.0]
            })
            .collect(),
        Toy::TwoSpirals => (0..n)
            .map(|i| {
                let mut d = draws(i / 2);
                let s = d.uniform().sqrt() * 540.0 * (2.0 * PI) / 360.0;
                let d1x = -s.cos() * s + d.uniform() * 0.5;
                let d1y = s.sin() * s + d.uniform() * 0.5;
                let sign = if i % 2 == 0 { 1.0 } else { -1.0 };
                let e = z(i);
                [sign * d1x / 3.0 + e[0] * 0.1, sign * d1y / 3.0 + e[1] * 0.1]
            })
            .collect(),
        Toy::Pinwheel => {
            let grid: Vec<[f64; 2]> = (0..n)
                .map(|r| {
                    let e = z(r);
                    let f = [e[0] * 0.3 + 1.0, e[1] * 0.1];
                    let a = linspace(0.0, 2.0 * PI, 5, false, r % 5) + 0.25 * f[0].exp();
                    // features · [[cos a, −sin a], [sin a, cos a]]
                    let rot = [[a.cos(), -a.sin()], [a.sin(), a.cos()]];
                    [
                        2.0 * (f[0] * rot[0][0] + f[1] * rot[1][0]),
                        2.0 * (f[0] * rot[0][1] + f[1] * rot[1][1]),
                    ]
                })
                .collect();
            shuffled(grid)
        }
        other => panic!("no reference for {other}"),
    }
}

#[test]
fn toys_match_the_reference_formulas() {
    for toy in Toy::ALL {
        for (n, seed) in [(1usize, 0u64), (7, 1), (1000, 2), (1003, 3)] {
            let got = toy.sample(n, seed).unwrap();
            let want = reference(toy, n, seed);
            assert_eq!(got.len(), 2 * want.len());
            for (i, (p, q)) in got.chunks_exact(2).zip(&want).enumerate() {
                for k in 0..2 {
                    assert!(
                        (p[k] - q[k]).abs() <= 1e-13 * (1.0 + q[k].abs()),
                        "{toy} n={n} seed={seed} row {i}: {p:?} vs {q:?}"
                    );
                }
            }
        }
    }
}

#[test]
fn eight_gaussians_moments() {
    let x = Toy::EightGaussians.sample(N, 1).unwrap();
    // Centres c_k = 4u_k/1.414 with Σ u_k u_kᵀ = 4 I over the 8 unit vectors, noise
    // 0.5/1.414: mean 0, covariance (16/2 + 0.25)/1.414² I.
    let var = (8.0 + 0.25) / (1.414f64 * 1.414);
    assert_mean(&x, "E x", 0.0, |a, _| a);
    assert_mean(&x, "E y", 0.0, |_, b| b);
    assert_mean(&x, "E x²", var, |a, _| a * a);
    assert_mean(&x, "E y²", var, |_, b| b * b);
    assert_mean(&x, "E xy", 0.0, |a, b| a * b);
    // Each point sits near one centre (radius 4/1.414 ≈ 2.83, separation 2.16 against
    // a noise std of 0.35): the nearest centre is uniform over the 8.
    let mut counts = [0usize; 8];
    for p in x.chunks_exact(2) {
        let angle = p[1].atan2(p[0]);
        let k = ((angle / (PI / 4.0)).round() as i64).rem_euclid(8) as usize;
        counts[k] += 1;
    }
    for (k, &c) in counts.iter().enumerate() {
        assert_binomial(c, N, 1.0 / 8.0, &format!("8gaussians centre {k}"));
    }
    // The fourth moment separates centres from noise: with c = 4u/1.414 and noise
    // e ~ N(0, s²I), s = 0.5/1.414, E x⁴ = E c₁⁴ + 6 E c₁² s² + 3 s⁴, where over the 8
    // directions E u₁⁴ = (2·1 + 4·¼)/8 = 3/8 and E u₁² = 1/2.
    let (r, s2) = (4.0 / 1.414f64, (0.5f64 / 1.414).powi(2));
    let e_x4 = r.powi(4) * 3.0 / 8.0 + 6.0 * r * r * 0.5 * s2 + 3.0 * s2 * s2;
    assert_mean(&x, "E x⁴", e_x4, |a, _| a.powi(4));
    assert_mean(&x, "E y⁴", e_x4, |_, b| b.powi(4));
}

#[test]
fn checkerboard_support_and_uniformity() {
    let x = Toy::Checkerboard.sample(N, 2).unwrap();
    // Cells of side 2 on (−4, 4)², the dark ones having ⌊x/2⌋ + ⌊y/2⌋ even.
    let mut counts = std::collections::HashMap::new();
    let mut frac = Vec::with_capacity(2 * N);
    for p in x.chunks_exact(2) {
        assert!(
            p[0] > -4.0 && p[0] < 4.0 && p[1] > -4.0 && p[1] < 4.0,
            "{p:?}"
        );
        let (cx, cy) = ((p[0] / 2.0).floor() as i64, (p[1] / 2.0).floor() as i64);
        assert_eq!((cx + cy).rem_euclid(2), 0, "{p:?} in a light square");
        *counts.entry((cx, cy)).or_insert(0usize) += 1;
        frac.push(p[0] / 2.0 - cx as f64);
        frac.push(p[1] / 2.0 - cy as f64);
    }
    assert_eq!(counts.len(), 8);
    for (cell, &c) in &counts {
        assert_binomial(c, N, 1.0 / 8.0, &format!("checkerboard cell {cell:?}"));
    }
    // Uniform inside a cell: positions have mean 1/2, variance 1/12, no correlation.
    assert_mean(&frac, "cell position x", 0.5, |a, _| a);
    assert_mean(&frac, "cell position y", 0.5, |_, b| b);
    assert_mean(&frac, "cell position x²", 1.0 / 3.0, |a, _| a * a);
    assert_mean(&frac, "cell position xy", 0.25, |a, b| a * b);
}

/// Mean of |p + e|² over grid points p and noise e ~ N(0, σ²I), with its standard
/// error: |p|² averaged plus 2σ², variance 4σ²|p|² + 4σ⁴ per point.
fn ring_moments(radii_counts: &[(f64, usize)], sigma: f64) -> (f64, f64) {
    let n: usize = radii_counts.iter().map(|&(_, c)| c).sum();
    let mut mean = 0.0;
    let mut var = 0.0;
    for &(r, c) in radii_counts {
        mean += c as f64 * (r * r + 2.0 * sigma * sigma);
        var += c as f64 * (4.0 * sigma * sigma * r * r + 4.0 * sigma.powi(4));
    }
    (mean / n as f64, var.sqrt() / n as f64)
}

#[test]
fn circles_radii() {
    let n = N + 1; // odd: the inner circle gets the extra point, as in sklearn
    let x = Toy::Circles.sample(n, 3).unwrap();
    let (n_out, n_in) = (n / 2, n - n / 2);
    // sklearn's noise 0.08, then ×3: radii 3 and 1.5, noise std 0.24.
    let (expected, se) = ring_moments(&[(3.0, n_out), (1.5, n_in)], 0.24);
    let (mean, _) = mean_se(&x, |a, b| a * a + b * b);
    assert!(
        (mean - expected).abs() <= 5.0 * se,
        "E r² {mean} vs {expected} ± {se}"
    );
    // The grid's angles are equally spaced: the mean is the noise's, 0 ± 0.24/√n.
    let se0 = 0.24 / (n as f64).sqrt();
    let (mx, _) = mean_se(&x, |a, _| a);
    let (my, _) = mean_se(&x, |_, b| b);
    assert!(mx.abs() <= 5.0 * se0 && my.abs() <= 5.0 * se0, "{mx} {my}");
    // Split at radius 2.25, 0.75 = 3.125σ from either circle: a point crosses it with
    // probability p ≈ Φ(−3.125) = 8.9e-4 (the radial part of the noise is N(0, σ²) to
    // first order), so the count outside is n_out + (n_in − n_out)p ± √(np).
    let outer = x
        .chunks_exact(2)
        .filter(|p| p[0].hypot(p[1]) > 2.25)
        .count();
    let p = 8.9e-4;
    let expected = n_out as f64 * (1.0 - p) + n_in as f64 * p;
    let sd = (n as f64 * p * (1.0 - p)).sqrt();
    assert!(
        (outer as f64 - expected).abs() <= 5.0 * sd,
        "{outer} points outside radius 2.25, expected {expected} ± {sd}"
    );
}

#[test]
fn rings_radii() {
    let n = 4003;
    let x = Toy::Rings.sample(n, 4).unwrap();
    let q = n / 4;
    let rings = [(3.0, q), (2.25, q), (1.5, q), (0.75, n - 3 * q)];
    let (expected, se) = ring_moments(&rings, 0.08);
    let (mean, _) = mean_se(&x, |a, b| a * a + b * b);
    assert!(
        (mean - expected).abs() <= 5.0 * se,
        "E r² {mean} vs {expected} ± {se}"
    );
    // Nearest ring: radii 0.75 apart, noise 0.08 (misclassified with probability
    // ~3e-6 each), so the counts are those of the grid.
    let mut per_ring = vec![Vec::new(); 4];
    for p in x.chunks_exact(2) {
        let r = p[0].hypot(p[1]);
        let k = rings
            .iter()
            .enumerate()
            .min_by(|a, b| (a.1 .0 - r).abs().total_cmp(&(b.1 .0 - r).abs()))
            .unwrap()
            .0;
        per_ring[k].push(p[0]);
        per_ring[k].push(p[1]);
    }
    for (k, &(radius, count)) in rings.iter().enumerate() {
        let got = per_ring[k].len() / 2;
        assert!(
            got.abs_diff(count) <= 2,
            "ring {k}: {got} points, {count} laid out"
        );
        assert_mean(
            &per_ring[k],
            &format!("ring {k} r²"),
            radius * radius + 2.0 * 0.08 * 0.08,
            |a, b| a * a + b * b,
        );
    }
}

#[test]
fn moons_moments() {
    let n = N;
    let x = Toy::Moons.sample(n, 5).unwrap();
    // The grid: outer (cos t, sin t), inner (1 − cos t, 1/2 − sin t), t = linspace(0, π)
    // with the endpoint; then x ← 2x + (−1, −0.2) after noise 0.1 (so noise 0.2).
    let (n_out, n_in) = (n / 2, n - n / 2);
    let grid: Vec<(f64, f64)> = (0..n_out)
        .map(|k| {
            let t = PI * k as f64 / (n_out - 1) as f64;
            (t.cos(), t.sin())
        })
        .chain((0..n_in).map(|k| {
            let t = PI * k as f64 / (n_in - 1) as f64;
            (1.0 - t.cos(), 0.5 - t.sin())
        }))
        .map(|(a, b)| (2.0 * a - 1.0, 2.0 * b - 0.2))
        .collect();
    let gx = grid.iter().map(|g| g.0).sum::<f64>() / n as f64;
    let gy = grid.iter().map(|g| g.1).sum::<f64>() / n as f64;
    let gxx = grid.iter().map(|g| g.0 * g.0).sum::<f64>() / n as f64;
    let se = 0.2 / (n as f64).sqrt();
    let (mx, _) = mean_se(&x, |a, _| a);
    let (my, _) = mean_se(&x, |_, b| b);
    assert!((mx - gx).abs() <= 5.0 * se, "E x {mx} vs {gx}");
    assert!((my - gy).abs() <= 5.0 * se, "E y {my} vs {gy}");
    assert_mean(&x, "E x²", gxx + 0.04, |a, _| a * a);
}

#[test]
fn swiss_roll_moments() {
    let x = Toy::SwissRoll.sample(N, 6).unwrap();
    // t ~ U[1.5π, 4.5π]: E[t cos t] = [cos t + t sin t]/(3π) = 2, E[t sin t] =
    // [sin t − t cos t]/(3π) = 2/(3π), E t² = 9.75π²; then /5 with unit noise.
    assert_mean(&x, "E x", 2.0 / 5.0, |a, _| a);
    assert_mean(&x, "E y", 2.0 / (3.0 * PI) / 5.0, |_, b| b);
    assert_mean(&x, "E r²", (9.75 * PI * PI + 2.0) / 25.0, |a, b| {
        a * a + b * b
    });
}

#[test]
fn two_spirals_moments() {
    let x = Toy::TwoSpirals.sample(N, 7).unwrap();
    // s = 3π√U has density 2s/(9π²) on [0, 3π]: E s² = 4.5π², E[s cos s] = −4/(3π),
    // E[s sin s] = 2(9π² − 4)/(9π²). With b = (−s cos s + U/2, s sin s + U/2):
    let e_b2 =
        4.5 * PI * PI + 2.0 / (3.0 * PI) + 1.0 / 6.0 + (9.0 * PI * PI - 4.0) / (9.0 * PI * PI);
    assert_mean(&x, "E r²", e_b2 / 9.0 + 0.02, |a, b| a * a + b * b);
    assert_mean(&x, "E x", 0.0, |a, _| a);
    assert_mean(&x, "E y", 0.0, |_, b| b);
    // Rows 2k and 2k+1 are ±b/3 plus independent noise of std 0.1: their sums are
    // N(0, 0.02 I).
    let sums: Vec<f64> = x
        .chunks_exact(4)
        .flat_map(|q| [q[0] + q[2], q[1] + q[3]])
        .collect();
    assert_mean(&sums, "pair sum x", 0.0, |a, _| a);
    assert_mean(&sums, "pair sum x²", 0.02, |a, _| a * a);
    assert_mean(&sums, "pair sum y²", 0.02, |_, b| b * b);
    // One arm: E[b] = (4/(3π) + 1/4, E[s sin s] + 1/4) / 3.
    let arm: Vec<f64> = x.chunks_exact(4).flat_map(|q| [q[0], q[1]]).collect();
    assert_mean(&arm, "arm E x", (4.0 / (3.0 * PI) + 0.25) / 3.0, |a, _| a);
    let e_ssin = 2.0 * (9.0 * PI * PI - 4.0) / (9.0 * PI * PI);
    assert_mean(&arm, "arm E y", (e_ssin + 0.25) / 3.0, |_, b| b);
}

#[test]
fn pinwheel_moments() {
    let x = Toy::Pinwheel.sample(N, 8).unwrap(); // N is a multiple of 5
                                                 // A rotation keeps |f|: E r² = 4 E|f|² = 4 (1 + 0.3² + 0.1²); five equal arms
                                                 // rotated by 2π/5 average to 0.
    assert_mean(&x, "E r²", 4.0 * (1.0 + 0.09 + 0.01), |a, b| a * a + b * b);
    assert_mean(&x, "E x", 0.0, |a, _| a);
    assert_mean(&x, "E y", 0.0, |_, b| b);
    // The radial feature f₁ = |x|/2 cos(angle to the arm) is 1 + 0.3Z; in particular
    // E r⁴/16 = E|f|⁴ is a closed form: E(f₁² + f₂²)² with f₁ ~ N(1, 0.09), f₂ ~ N(0,
    // 0.01): E f₁⁴ = 1 + 6·0.09 + 3·0.09², E f₁² f₂² = 1.09·0.01, E f₂⁴ = 3·0.01².
    let e_f4 = (1.0 + 6.0 * 0.09 + 3.0 * 0.0081) + 2.0 * 1.09 * 0.01 + 3.0 * 0.0001;
    assert_mean(&x, "E r⁴", 16.0 * e_f4, |a, b| (a * a + b * b).powi(2));
}

#[test]
fn counter_based_draws() {
    // Uniforms: mean 1/2, variance 1/12; integers below k: uniform counts.
    let mut d = Draws::new(9, TOY_STREAM, 5, 100).unwrap();
    let u: Vec<f64> = (0..2 * N).map(|_| d.uniform()).collect();
    assert!(u.iter().all(|&v| v > 0.0 && v < 1.0));
    assert_mean(&u, "uniform", 0.5, |a, _| a);
    assert_mean(&u, "uniform²", 1.0 / 3.0, |a, _| a * a);
    let mut counts = [0usize; 7];
    for _ in 0..N {
        counts[d.below(7) as usize] += 1;
    }
    for (k, &c) in counts.iter().enumerate() {
        assert_binomial(c, N, 1.0 / 7.0, &format!("below(7) = {k}"));
    }
    assert_eq!(d.below(1), 0);
    assert_eq!(d.below(0), 0);
    // The same address gives the same sequence; another gives another.
    let mut a = Draws::new(9, TOY_STREAM, 5, 100).unwrap();
    let mut b = Draws::new(9, TOY_STREAM, 6, 100).unwrap();
    let (x, y): (Vec<u64>, Vec<u64>) = (0..4).map(|_| (a.next_u64(), b.next_u64())).unzip();
    let mut c = Draws::new(9, TOY_STREAM, 5, 100).unwrap();
    assert_eq!(x, (0..4).map(|_| c.next_u64()).collect::<Vec<_>>());
    assert_ne!(x, y);
    assert!(Draws::new(0, TOY_STREAM, 1 << 48, 0).is_err());
    assert!(Draws::new(0, TOY_STREAM, 0, 1 << 32).is_err());

    // Permutations of 3: all six equally likely over seeds.
    let mut seen = std::collections::HashMap::new();
    let trials = 60_000;
    for seed in 0..trials {
        *seen
            .entry(permutation(3, seed, TOY_STREAM, 0).unwrap())
            .or_insert(0usize) += 1;
    }
    assert_eq!(seen.len(), 6);
    for (p, &c) in &seen {
        assert_binomial(c, trials as usize, 1.0 / 6.0, &format!("permutation {p:?}"));
    }
    // A permutation of 1000 is one, and shuffle_rows moves rows the same way.
    let p = permutation(1000, 1, TOY_STREAM, 3).unwrap();
    let mut sorted = p.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
    let mut rows: Vec<f64> = (0..1000).flat_map(|i| [i as f64, -(i as f64)]).collect();
    shuffle_rows(&mut rows, 1000, 2, 1, TOY_STREAM, 3).unwrap();
    for (k, &i) in p.iter().enumerate() {
        assert_eq!(rows[2 * k], i as f64);
        assert_eq!(rows[2 * k + 1], -(i as f64));
    }
    assert!(matches!(
        shuffle_rows(&mut rows, 999, 2, 1, TOY_STREAM, 3),
        Err(Error::Length { .. })
    ));
    assert!(permutation(0, 1, TOY_STREAM, 0).unwrap().is_empty());
}

fn write(name: &str, text: &str) -> PathBuf {
    let path = temp_path(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn csv_files_parse() {
    let path = write(
        "ok.csv",
        "x, y ,z\r\n1,2,3\n\n  4.5 , -6e-1,\t7\r\n# a comment\n8,9,1e3\n",
    );
    let ds = load_dataset(&path).unwrap();
    assert_eq!((ds.n, ds.d), (3, 3));
    assert_eq!(ds.x, vec![1.0, 2.0, 3.0, 4.5, -0.6, 7.0, 8.0, 9.0, 1000.0]);
    // No header, numpy.savetxt's "# " header line, one column, no final newline.
    let ds = parse_csv("# x,y\n1,2\n3,4", "mem.csv").unwrap();
    assert_eq!((ds.n, ds.d, ds.x), (2, 2, vec![1.0, 2.0, 3.0, 4.0]));
    let ds = parse_csv("v\n1\n2\n3\n", "mem.csv").unwrap();
    assert_eq!((ds.n, ds.d), (3, 1));
    // Upper-case extension.
    let path = write("UPPER.CSV", "1,2\n");
    assert_eq!(load_dataset(&path).unwrap().x, vec![1.0, 2.0]);
}

/// The line and message of a CSV parse error.
fn parse_error(text: &str) -> (usize, String) {
    match parse_csv(text, "bad.csv") {
        Err(Error::Parse {
            path,
            line,
            message,
        }) => {
            assert_eq!(path, PathBuf::from("bad.csv"));
            (line, message)
        }
        other => panic!("{text:?}: expected a parse error, got {other:?}"),
    }
}

#[test]
fn csv_errors_name_line_and_field() {
    let (line, msg) = parse_error("a,b\n1,2\n3,x4\n");
    assert_eq!(line, 3);
    assert!(msg.contains("field 2") && msg.contains("`x4`"), "{msg}");
    let (line, msg) = parse_error("a,b\n1,2\n\n3,4,5\n");
    assert_eq!(line, 4);
    assert!(
        msg.contains("3 fields") && msg.contains("expected 2"),
        "{msg}"
    );
    assert!(msg.contains("header (line 1)"), "{msg}");
    let (line, msg) = parse_error("1,2\n3\n");
    assert_eq!(line, 2);
    assert!(msg.contains("first row (line 1)"), "{msg}");
    let (line, msg) = parse_error("a,b,c\n1,2\n");
    assert_eq!(line, 2);
    assert!(msg.contains("expected 3"), "{msg}");
    let (line, msg) = parse_error("1,,2\n");
    assert_eq!(line, 1);
    assert!(msg.contains("field 2 is empty"), "{msg}");
    for bad in ["nan", "NaN", "inf", "-inf", "infinity"] {
        let (line, msg) = parse_error(&format!("1,2\n3,{bad}\n"));
        assert_eq!(line, 2, "{bad}");
        assert!(
            msg.contains("field 2") && msg.contains("NaN and infinity"),
            "{msg}"
        );
    }
    // A first line mixing numbers and words is an error, not a header.
    let (line, msg) = parse_error("1,b\n2,3\n");
    assert_eq!(line, 1);
    assert!(msg.contains("field 2 `b`"), "{msg}");
    // Long fields are shortened in messages.
    let (_, msg) = parse_error(&format!("1,{}\n", "y".repeat(100)));
    assert!(msg.len() < 120, "{msg}");
    // No data.
    for text in ["", "\n\n", "# only a comment\n", "a,b\n"] {
        assert!(
            matches!(parse_csv(text, "e.csv"), Err(Error::Data(_))),
            "{text:?}"
        );
    }
    // Not UTF-8, on line 2; a missing file.
    let path = temp_path("latin1.csv");
    std::fs::write(&path, b"1,2\n3,\xe94\n").unwrap();
    match load_dataset(&path) {
        Err(Error::Parse { line, message, .. }) => {
            assert_eq!(line, 2);
            assert!(message.contains("UTF-8"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        load_dataset(temp_path("missing.csv")),
        Err(Error::Io { .. })
    ));
    let err = load_dataset(temp_path("data.txt")).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    assert!(err.to_string().contains(".npy or .csv"), "{err}");
    assert!(matches!(
        load_dataset(temp_path("noextension")),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn npy_files_load() {
    let data: Vec<f64> = (0..12).map(|i| i as f64 * 0.5 - 1.0).collect();
    let path = temp_path("ok.npy");
    socflow_runtime::npy::write_npy(&path, &[4, 3], &data).unwrap();
    let ds = load_dataset(&path).unwrap();
    assert_eq!((ds.n, ds.d), (4, 3));
    assert_eq!(ds.x, data);
    let data32: Vec<f32> = vec![1.5, -2.25, 3.0, 0.125];
    let path = temp_path("ok32.NPY");
    socflow_runtime::npy::write_npy(&path, &[2, 2], &data32).unwrap();
    assert_eq!(load_dataset(&path).unwrap().x, vec![1.5, -2.25, 3.0, 0.125]);

    let path = temp_path("flat.npy");
    socflow_runtime::npy::write_npy(&path, &[4], &[1.0f64, 2.0, 3.0, 4.0]).unwrap();
    let err = load_dataset(&path).unwrap_err();
    assert!(
        matches!(&err, Error::Data(m) if m.contains("2-D") && m.contains("[4]")),
        "{err:?}"
    );
    let path = temp_path("empty.npy");
    socflow_runtime::npy::write_npy::<f64>(&path, &[0, 2], &[]).unwrap();
    assert!(matches!(load_dataset(&path), Err(Error::Data(_))));
    let path = temp_path("nan.npy");
    socflow_runtime::npy::write_npy(&path, &[2, 2], &[1.0, 2.0, 3.0, f64::NAN]).unwrap();
    let err = load_dataset(&path).unwrap_err();
    assert!(
        matches!(&err, Error::NonFinite(m) if m.contains("x[1, 1]")),
        "{err:?}"
    );
    let path = write("garbage.npy", "not an npy file at all");
    assert!(matches!(
        load_dataset(&path),
        Err(Error::Runtime(socflow_runtime::Error::Format(_)))
    ));
    assert!(matches!(
        load_dataset(temp_path("missing.npy")),
        Err(Error::Runtime(socflow_runtime::Error::Io { .. }))
    ));
}

#[test]
fn dataset_validation() {
    assert!(matches!(Dataset::new(0, 2, vec![]), Err(Error::Data(_))));
    assert!(matches!(Dataset::new(2, 0, vec![]), Err(Error::Data(_))));
    assert!(matches!(
        Dataset::new(2, 2, vec![1.0; 3]),
        Err(Error::Length { .. })
    ));
    let err = Dataset::new(2, 2, vec![1.0, 2.0, f64::INFINITY, 4.0]).unwrap_err();
    assert!(
        matches!(&err, Error::NonFinite(m) if m.contains("sample 1, coordinate 0")),
        "{err:?}"
    );
    let ds = Dataset::from_toy(Toy::Moons, 10, 1).unwrap();
    assert_eq!((ds.n, ds.d), (10, 2));
    assert_eq!(ds.row(9).unwrap(), &ds.x[18..20]);
    assert!(ds.row(10).is_none());
    // A caller who breaks the public fields gets an error, not a panic.
    let mut broken = ds.clone();
    broken.x.pop();
    assert!(matches!(broken.split(0.5, 1), Err(Error::Length { .. })));
    assert!(broken.normalization().is_err());
}

/// Rows carrying their own index (i, −i), to check splits and batches.
fn indexed(n: usize) -> Dataset {
    Dataset::new(n, 2, (0..n).flat_map(|i| [i as f64, -(i as f64)]).collect()).unwrap()
}

#[test]
fn split_is_a_seeded_partition() {
    let ds = indexed(1000);
    let (train, val) = ds.split(0.8, 42).unwrap();
    assert_eq!((train.n, val.n), (800, 200));
    let mut ids: Vec<usize> = train
        .x
        .chunks_exact(2)
        .chain(val.x.chunks_exact(2))
        .map(|r| {
            assert_eq!(r[1], -r[0]);
            r[0] as usize
        })
        .collect();
    // Shuffled, not the original order.
    assert_ne!(ids[..800], (0..800).collect::<Vec<_>>()[..]);
    ids.sort_unstable();
    assert_eq!(ids, (0..1000).collect::<Vec<_>>());
    assert_eq!(ds.split(0.8, 42).unwrap().0, train);
    assert_ne!(ds.split(0.8, 43).unwrap().0, train);
    // round(0.5 · 3) = 2.
    assert_eq!(indexed(3).split(0.5, 1).unwrap().0.n, 2);
    for bad in [0.0, 1.0, -0.5, 1.5, f64::NAN] {
        assert!(
            matches!(ds.split(bad, 1), Err(Error::InvalidArgument(_))),
            "{bad}"
        );
    }
    assert!(matches!(
        indexed(1).split(0.5, 1),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        indexed(10).split(0.01, 1),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        indexed(10).split(0.99, 1),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(ds.subset(&[1000]), Err(Error::InvalidArgument(_))));
}

#[test]
fn normalization_statistics_and_round_trip() {
    let ds = Dataset::new(2, 2, vec![1.0, 10.0, 3.0, 30.0]).unwrap();
    let norm = ds.normalization().unwrap();
    assert_eq!(norm.mean, vec![2.0, 20.0]);
    assert_eq!(norm.std, vec![1.0, 10.0]);
    let mut z = ds.clone();
    z.normalize(&norm).unwrap();
    assert_eq!(z.x, vec![-1.0, -1.0, 1.0, 1.0]);

    // A toy: normalized coordinates have mean 0 and std 1; the round trip returns the
    // data to rounding, and the recorded normalization is the artifact's type.
    let ds = Dataset::from_toy(Toy::SwissRoll, 5000, 3).unwrap();
    let norm: Normalization = ds.normalization().unwrap();
    let mut z = ds.clone();
    z.normalize(&norm).unwrap();
    let z_norm = z.normalization().unwrap();
    for k in 0..2 {
        assert!(z_norm.mean[k].abs() < 1e-14, "{:?}", z_norm.mean);
        assert!((z_norm.std[k] - 1.0).abs() < 1e-14, "{:?}", z_norm.std);
    }
    z.denormalize(&norm).unwrap();
    for (a, b) in z.x.iter().zip(&ds.x) {
        assert!(
            (a - b).abs() <= 4.0 * f64::EPSILON * (1.0 + b.abs()),
            "{a} vs {b}"
        );
    }

    let constant = Dataset::new(3, 2, vec![1.0, 5.0, 2.0, 5.0, 3.0, 5.0]).unwrap();
    let err = constant.normalization().unwrap_err();
    assert!(
        matches!(&err, Error::Data(m) if m.contains("coordinate 1") && m.contains("constant")),
        "{err:?}"
    );
    assert!(Dataset::new(1, 2, vec![1.0, 2.0])
        .unwrap()
        .normalization()
        .is_err());
    // Constant up to rounding: 0.1 + 0.2 and 0.3 differ in the last bit.
    let near = Dataset::new(2, 1, vec![0.1 + 0.2, 0.3]).unwrap();
    assert!(near.normalization().is_err());
    let three = Normalization::new(vec![0.0; 3], vec![1.0; 3]).unwrap();
    let mut ds2 = ds.clone();
    assert!(matches!(ds2.normalize(&three), Err(Error::Length { .. })));
    assert!(matches!(ds2.denormalize(&three), Err(Error::Length { .. })));
}

#[test]
fn batch_sampler_epochs() {
    let ds = indexed(103);
    let mut s = BatchSampler::new(103, 10, 5).unwrap();
    assert_eq!((s.batch_size(), s.batches_per_epoch()), (10, 10));
    let mut out = vec![0.0; 20];
    let mut epochs: Vec<Vec<usize>> = Vec::new();
    for epoch in 0..3u64 {
        let mut seen = Vec::new();
        for k in 0..10u64 {
            let step = epoch * 10 + k;
            let idx = s.indices(step).unwrap().to_vec();
            assert_eq!(idx.len(), 10);
            s.batch(&ds, step, &mut out).unwrap();
            for (r, &i) in out.chunks_exact(2).zip(&idx) {
                assert_eq!(r, [i as f64, -(i as f64)]);
            }
            seen.extend(idx);
        }
        // Each epoch draws 100 distinct samples of the 103.
        let mut sorted = seen.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 100);
        assert!(sorted.iter().all(|&i| i < 103));
        epochs.push(seen);
    }
    assert_ne!(epochs[0], epochs[1]);
    // Step-addressable: a fresh sampler, asked out of order, agrees.
    let mut t = BatchSampler::new(103, 10, 5).unwrap();
    assert_eq!(t.indices(25).unwrap(), &epochs[2][50..60]);
    assert_eq!(t.indices(3).unwrap(), &epochs[0][30..40]);
    let mut other = BatchSampler::new(103, 10, 6).unwrap();
    assert_ne!(other.indices(0).unwrap(), &epochs[0][..10]);
    // Errors.
    assert!(matches!(
        BatchSampler::new(10, 0, 1),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        BatchSampler::new(10, 11, 1),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        s.batch(&indexed(50), 0, &mut out),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        s.batch(&ds, 0, &mut out[..19]),
        Err(Error::Length { .. })
    ));
    let mut one = BatchSampler::new(4, 4, 1).unwrap();
    assert!(one.indices(u64::from(u32::MAX)).is_ok());
    assert!(one.indices(u64::from(u32::MAX) + 1).is_err());
}
