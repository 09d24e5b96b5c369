//! The assignment solver against independent references: brute force over all
//! permutations (and injections), a textbook Munkres (Hungarian) implementation, the
//! sorted matching of 1-D points, and the LP optimality certificate (duals).

use socflow_trainer::assignment::{
    assignment_cost, linear_assignment, linear_assignment_into, max_cost_magnitude, ot_pairing,
    AssignmentWorkspace,
};
use socflow_trainer::data::Toy;
use socflow_trainer::Error;

/// SplitMix64: a small independent generator for test matrices.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
    fn int(&mut self, k: u64) -> f64 {
        (self.next_u64() % k) as f64
    }
    fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

/// Least cost over all injections of n rows into m columns (n ≤ m), by depth-first
/// enumeration.
fn brute_force(c: &[f64], n: usize, m: usize) -> f64 {
    fn go(c: &[f64], m: usize, i: usize, n: usize, used: &mut [bool], acc: f64, best: &mut f64) {
        if i == n {
            *best = best.min(acc);
            return;
        }
        for j in 0..m {
            if !used[j] {
                used[j] = true;
                go(c, m, i + 1, n, used, acc + c[i * m + j], best);
                used[j] = false;
            }
        }
    }
    let mut best = f64::INFINITY;
    go(c, m, 0, n, &mut vec![false; m], 0.0, &mut best);
    if n == 0 {
        0.0
    } else {
        best
    }
}

/// Munkres' algorithm (the textbook O(n⁴) Hungarian method: star, cover, prime,
/// augment), written independently of the solver under test. Square matrices only.
fn munkres(c: &[f64], n: usize) -> Vec<usize> {
    let mut a = c.to_vec();
    for i in 0..n {
        let min = a[i * n..(i + 1) * n]
            .iter()
            .fold(f64::INFINITY, |x, &y| x.min(y));
        for v in &mut a[i * n..(i + 1) * n] {
            *v -= min;
        }
    }
    let mut star = vec![false; n * n];
    let mut prime = vec![false; n * n];
    let mut row_cov = vec![false; n];
    let mut col_cov = vec![false; n];
    for i in 0..n {
        for j in 0..n {
            if a[i * n + j] == 0.0 && !row_cov[i] && !col_cov[j] {
                star[i * n + j] = true;
                row_cov[i] = true;
                col_cov[j] = true;
            }
        }
    }
    row_cov.fill(false);
    col_cov.fill(false);
    loop {
        for j in 0..n {
            col_cov[j] = (0..n).any(|i| star[i * n + j]);
        }
        if col_cov.iter().filter(|&&b| b).count() == n {
            break;
        }
        // Steps 4–6 until an augmenting path is found.
        let (mut pi, mut pj);
        loop {
            let mut found = None;
            'find: for i in 0..n {
                if row_cov[i] {
                    continue;
                }
                for j in 0..n {
                    if !col_cov[j] && a[i * n + j] == 0.0 {
                        found = Some((i, j));
                        break 'find;
                    }
                }
            }
            match found {
                None => {
                    let mut m = f64::INFINITY;
                    for i in 0..n {
                        for j in 0..n {
                            if !row_cov[i] && !col_cov[j] {
                                m = m.min(a[i * n + j]);
                            }
                        }
                    }
                    for i in 0..n {
                        for j in 0..n {
                            if row_cov[i] {
                                a[i * n + j] += m;
                            }
                            if !col_cov[j] {
                                a[i * n + j] -= m;
                            }
                        }
                    }
                }
                Some((i, j)) => {
                    prime[i * n + j] = true;
                    if let Some(js) = (0..n).find(|&j2| star[i * n + j2]) {
                        row_cov[i] = true;
                        col_cov[js] = false;
                    } else {
                        (pi, pj) = (i, j);
                        break;
                    }
                }
            }
        }
        // Step 5: alternate primes and stars from (pi, pj), then flip them.
        let mut path = vec![(pi, pj)];
        while let Some(r) = (0..n).find(|&r| star[r * n + pj]) {
            path.push((r, pj));
            let c2 = (0..n)
                .find(|&c2| prime[r * n + c2])
                .expect("a starred row on the path has a primed zero");
            path.push((r, c2));
            (pi, pj) = (r, c2);
        }
        let _ = pi;
        for &(i, j) in &path {
            star[i * n + j] = !star[i * n + j];
        }
        prime.fill(false);
        row_cov.fill(false);
        col_cov.fill(false);
    }
    (0..n)
        .map(|i| {
            (0..n)
                .find(|&j| star[i * n + j])
                .expect("every row is starred")
        })
        .collect()
}

fn assert_injection(perm: &[usize], m: usize) {
    let mut seen = vec![false; m];
    for (i, &j) in perm.iter().enumerate() {
        assert!(j < m, "row {i} -> column {j} out of range {m}");
        assert!(!seen[j], "column {j} used twice: {perm:?}");
        seen[j] = true;
    }
}

/// The LP certificate: u_i + v_j ≤ c_ij, equality on the matching, Σu + Σv equal to the
/// cost; for n < m also v ≤ 0 and v = 0 off the matching. Exactly for integer costs
/// (the solver's arithmetic is exact there), else to rounding.
fn assert_certificate(c: &[f64], n: usize, m: usize, perm: &[usize], ws: &AssignmentWorkspace) {
    let (u, v) = (ws.row_duals(), ws.column_duals());
    assert_eq!(u.len(), n);
    assert_eq!(v.len(), m);
    let integer = c.iter().all(|x| x.fract() == 0.0);
    let scale = c.iter().fold(1.0f64, |s, x| s.max(x.abs()));
    let tol = if integer {
        0.0
    } else {
        1e-12 * scale * (m as f64 + 1.0)
    };
    for i in 0..n {
        for j in 0..m {
            let slack = c[i * m + j] - u[i] - v[j];
            assert!(slack >= -tol, "dual infeasible at ({i},{j}): {slack:e}");
        }
        let j = perm[i];
        let slack = c[i * m + j] - u[i] - v[j];
        assert!(slack.abs() <= tol, "slack {slack:e} on matched ({i},{j})");
    }
    let dual: f64 = u.iter().sum::<f64>() + v.iter().sum::<f64>();
    let primal = assignment_cost(c, m, perm).unwrap();
    assert!(
        (dual - primal).abs() <= tol * n as f64,
        "duality gap: primal {primal} dual {dual}"
    );
    if n < m {
        let mut matched = vec![false; m];
        for &j in perm {
            matched[j] = true;
        }
        for j in 0..m {
            assert!(v[j] <= tol, "rectangular price v[{j}] = {} > 0", v[j]);
            if !matched[j] {
                assert_eq!(v[j], 0.0, "unmatched column {j} has price {}", v[j]);
            }
        }
    }
}

/// Random matrix families: uniform reals, small integers (many ties), {0, 1}, constant,
/// negative reals, wide dynamic range.
fn random_matrix(rng: &mut Rng, n: usize, m: usize, family: usize) -> Vec<f64> {
    (0..n * m)
        .map(|k| match family {
            0 => rng.uniform(),
            1 => rng.int(4),
            2 => rng.int(2),
            3 => 7.0,
            4 => -100.0 * rng.uniform() - 3.0,
            5 => rng.int(1000) - 500.0,
            6 => ((k / m) * (k % m)) as f64,
            _ => rng.normal() * 10f64.powi(rng.int(7) as i32 - 3),
        })
        .collect()
}

const FAMILIES: usize = 8;

#[test]
fn matches_brute_force_square() {
    let mut rng = Rng(1);
    let mut ws = AssignmentWorkspace::new();
    let mut solved = 0;
    for n in 0..=8usize {
        let reps = if n >= 7 { 12 } else { 60 };
        for family in 0..FAMILIES {
            for _ in 0..reps {
                let c = random_matrix(&mut rng, n, n, family);
                let perm = linear_assignment(&c, n, n, &mut ws).unwrap();
                assert_eq!(perm.len(), n);
                assert_injection(&perm, n);
                let got = assignment_cost(&c, n, &perm).unwrap();
                let best = brute_force(&c, n, n);
                let scale = c.iter().fold(1.0f64, |s, x| s.max(x.abs()));
                if family == 0 || family == 4 || family == 7 {
                    assert!(
                        (got - best).abs() <= 1e-12 * scale * n as f64,
                        "n={n} family={family}: {got} vs brute force {best}"
                    );
                } else {
                    // Integer costs: every operation is exact.
                    assert_eq!(got, best, "n={n} family={family}: {c:?}");
                }
                assert_certificate(&c, n, n, &perm, &ws);
                solved += 1;
            }
        }
    }
    assert!(solved > 2000);
}

#[test]
fn matches_brute_force_rectangular() {
    let mut rng = Rng(2);
    let mut ws = AssignmentWorkspace::new();
    for n in 0..=5usize {
        for m in n..=7usize {
            for family in 0..FAMILIES {
                for _ in 0..6 {
                    let c = random_matrix(&mut rng, n, m, family);
                    let perm = linear_assignment(&c, n, m, &mut ws).unwrap();
                    assert_eq!(perm.len(), n);
                    assert_injection(&perm, m);
                    let got = assignment_cost(&c, m, &perm).unwrap();
                    let best = brute_force(&c, n, m);
                    let scale = c.iter().fold(1.0f64, |s, x| s.max(x.abs()));
                    assert!(
                        (got - best).abs() <= 1e-12 * scale * (n as f64 + 1.0),
                        "{n}x{m} family={family}: {got} vs brute force {best}"
                    );
                    assert_certificate(&c, n, m, &perm, &ws);
                }
            }
        }
    }
}

#[test]
fn matches_munkres_up_to_60() {
    let mut rng = Rng(3);
    let mut ws = AssignmentWorkspace::new();
    for &n in &[9usize, 10, 16, 23, 31, 40, 47, 60] {
        // Integer families: the Hungarian reference is exact there.
        for family in [1usize, 2, 5, 6] {
            let c = random_matrix(&mut rng, n, n, family);
            let perm = linear_assignment(&c, n, n, &mut ws).unwrap();
            assert_injection(&perm, n);
            let reference = munkres(&c, n);
            assert_injection(&reference, n);
            assert_eq!(
                assignment_cost(&c, n, &perm).unwrap(),
                assignment_cost(&c, n, &reference).unwrap(),
                "n={n} family={family}"
            );
            assert_certificate(&c, n, n, &perm, &ws);
        }
        // Squared distances of Gaussian points, the OT use.
        let x0: Vec<f64> = (0..2 * n).map(|_| rng.normal()).collect();
        let x1: Vec<f64> = (0..2 * n).map(|_| rng.normal() + 0.5).collect();
        let perm = ot_pairing(&x0, &x1, n, 2, &mut ws).unwrap();
        assert_injection(&perm, n);
        let c = ws.pairing_cost().to_vec();
        let reference = munkres(&c, n);
        let (a, b) = (
            assignment_cost(&c, n, &perm).unwrap(),
            assignment_cost(&c, n, &reference).unwrap(),
        );
        assert!(
            (a - b).abs() <= 1e-12 * b.abs(),
            "n={n}: {a} vs Munkres {b}"
        );
        assert_certificate(&c, n, n, &perm, &ws);
    }
}

#[test]
fn rectangular_matches_padded_munkres() {
    // An n×m problem equals the m×m one with m − n zero rows appended.
    let mut rng = Rng(4);
    let mut ws = AssignmentWorkspace::new();
    for &(n, m) in &[(5usize, 12usize), (17, 20), (30, 45), (1, 40), (39, 40)] {
        let c = random_matrix(&mut rng, n, m, 5);
        let perm = linear_assignment(&c, n, m, &mut ws).unwrap();
        assert_injection(&perm, m);
        let mut padded = c.clone();
        padded.resize(m * m, 0.0);
        let reference = munkres(&padded, m);
        assert_eq!(
            assignment_cost(&c, m, &perm).unwrap(),
            assignment_cost(&padded, m, &reference).unwrap(),
            "{n}x{m}"
        );
        assert_certificate(&c, n, m, &perm, &ws);
    }
}

#[test]
fn invariant_under_row_and_column_constants() {
    let mut rng = Rng(5);
    let mut ws = AssignmentWorkspace::new();
    for &n in &[6usize, 25, 50] {
        for family in [1usize, 5] {
            let c = random_matrix(&mut rng, n, n, family);
            let a: Vec<f64> = (0..n).map(|_| rng.int(2001) - 1000.0).collect();
            let b: Vec<f64> = (0..n).map(|_| rng.int(2001) - 1000.0).collect();
            let shifted: Vec<f64> = (0..n * n).map(|k| c[k] + a[k / n] + b[k % n]).collect();
            let p = linear_assignment(&c, n, n, &mut ws).unwrap();
            let q = linear_assignment(&shifted, n, n, &mut ws).unwrap();
            let (cp, cq) = (
                assignment_cost(&c, n, &p).unwrap(),
                assignment_cost(&c, n, &q).unwrap(),
            );
            // q is optimal for the original costs too, and the optimum moved by exactly
            // Σa + Σb.
            assert_eq!(cp, cq, "n={n}");
            let shift: f64 = a.iter().sum::<f64>() + b.iter().sum::<f64>();
            assert_eq!(assignment_cost(&shifted, n, &q).unwrap(), cp + shift);
        }
    }
}

#[test]
fn unique_optimum_is_found_exactly() {
    // A hidden permutation σ on a zero diagonal, every other cost ≥ 1.
    let mut rng = Rng(6);
    let mut ws = AssignmentWorkspace::new();
    for &n in &[1usize, 2, 3, 17, 100, 257] {
        let sigma = {
            let mut s: Vec<usize> = (0..n).collect();
            for i in (1..n).rev() {
                s.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
            }
            s
        };
        let mut c: Vec<f64> = (0..n * n).map(|_| 1.0 + rng.int(50)).collect();
        for (i, &j) in sigma.iter().enumerate() {
            c[i * n + j] = 0.0;
        }
        assert_eq!(linear_assignment(&c, n, n, &mut ws).unwrap(), sigma);
    }
}

#[test]
fn price_war_instances() {
    // Identical rows: every permutation is optimal, and an auction's bids barely move
    // the prices (the bid budget ends it); constant and {0, big} matrices.
    let mut rng = Rng(11);
    let mut ws = AssignmentWorkspace::new();
    for &n in &[2usize, 50, 150] {
        let row: Vec<f64> = (0..n).map(|_| rng.int(1000)).collect();
        let c: Vec<f64> = (0..n).flat_map(|_| row.iter().copied()).collect();
        let perm = linear_assignment(&c, n, n, &mut ws).unwrap();
        assert_injection(&perm, n);
        assert_eq!(
            assignment_cost(&c, n, &perm).unwrap(),
            row.iter().sum::<f64>()
        );
        assert_certificate(&c, n, n, &perm, &ws);
        let c = vec![3.0; n * n];
        let perm = linear_assignment(&c, n, n, &mut ws).unwrap();
        assert_injection(&perm, n);
        assert_certificate(&c, n, n, &perm, &ws);
        // Zero on a hidden permutation's cells and on a few more, 1e12 elsewhere.
        let mut c: Vec<f64> = (0..n * n)
            .map(|_| if rng.int(10) == 0.0 { 0.0 } else { 1e12 })
            .collect();
        for i in 0..n {
            c[i * n + (i * 7 + 3) % n] = 0.0;
        }
        let perm = linear_assignment(&c, n, n, &mut ws).unwrap();
        assert_eq!(assignment_cost(&c, n, &perm).unwrap(), 0.0);
        assert_certificate(&c, n, n, &perm, &ws);
    }
}

#[test]
fn ot_pairing_recovers_a_shuffle_and_sorts_in_1d() {
    let mut rng = Rng(7);
    let mut ws = AssignmentWorkspace::new();
    // x1 is x0 reordered by σ⁻¹: pairing x0[i] with x1[σ(i)] costs 0, uniquely.
    for &(n, d) in &[(64usize, 2usize), (100, 3), (33, 17)] {
        let x0: Vec<f64> = (0..n * d).map(|_| rng.normal()).collect();
        let mut sigma: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            sigma.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
        }
        let mut x1 = vec![0.0; n * d];
        for (i, &j) in sigma.iter().enumerate() {
            x1[j * d..(j + 1) * d].copy_from_slice(&x0[i * d..(i + 1) * d]);
        }
        assert_eq!(ot_pairing(&x0, &x1, n, d, &mut ws).unwrap(), sigma);
    }
    // In 1-D the optimal coupling for a convex cost is the monotone one: the k-th
    // smallest of x0 pairs with the k-th smallest of x1.
    for &n in &[5usize, 50, 200] {
        let x0: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
        let x1: Vec<f64> = (0..n).map(|_| 2.0 * rng.normal() + 1.0).collect();
        let rank = |x: &[f64]| {
            let mut idx: Vec<usize> = (0..n).collect();
            idx.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
            idx
        };
        let (r0, r1) = (rank(&x0), rank(&x1));
        let mut expected = vec![0; n];
        for k in 0..n {
            expected[r0[k]] = r1[k];
        }
        assert_eq!(ot_pairing(&x0, &x1, n, 1, &mut ws).unwrap(), expected);
    }
}

#[test]
fn ot_pairing_cost_is_squared_distance() {
    let mut rng = Rng(8);
    let mut ws = AssignmentWorkspace::new();
    let (n, d) = (40, 5);
    let x0: Vec<f64> = (0..n * d).map(|_| rng.normal() * 3.0).collect();
    let x1: Vec<f64> = (0..n * d).map(|_| rng.normal()).collect();
    let perm = ot_pairing(&x0, &x1, n, d, &mut ws).unwrap();
    let direct: Vec<f64> = (0..n * n)
        .map(|k| {
            let (i, j) = (k / n, k % n);
            (0..d)
                .map(|l| (x0[i * d + l] - x1[j * d + l]).powi(2))
                .sum()
        })
        .collect();
    // ‖a‖² + ‖b‖² − 2a·b loses a few ulps of ‖a‖² + ‖b‖² to cancellation.
    let norm2 = |x: &[f64]| x.iter().map(|v| v * v).sum::<f64>();
    for (k, (a, b)) in ws.pairing_cost().iter().zip(&direct).enumerate() {
        let (i, j) = (k / n, k % n);
        let bound = 4.0
            * (d as f64 + 3.0)
            * f64::EPSILON
            * (norm2(&x0[i * d..(i + 1) * d]) + norm2(&x1[j * d..(j + 1) * d]));
        assert!((a - b).abs() <= bound, "({i},{j}): {a} vs {b}");
    }
    let reference = linear_assignment(&direct, n, n, &mut ws).unwrap();
    let (a, b) = (
        assignment_cost(&direct, n, &perm).unwrap(),
        assignment_cost(&direct, n, &reference).unwrap(),
    );
    assert!((a - b).abs() <= 1e-12 * b, "{a} vs {b}");
}

#[test]
fn into_variant_and_workspace_reuse_agree() {
    let mut rng = Rng(9);
    let mut ws = AssignmentWorkspace::new();
    let mut out = vec![0; 30];
    for &n in &[30usize, 5, 30, 12, 30] {
        let c = random_matrix(&mut rng, n, n, 0);
        linear_assignment_into(&c, n, n, &mut ws, &mut out[..n]).unwrap();
        let reference = linear_assignment(&c, n, n, &mut AssignmentWorkspace::new()).unwrap();
        assert_eq!(&out[..n], &reference[..]);
    }
}

#[test]
fn errors() {
    let mut ws = AssignmentWorkspace::new();
    let good = vec![1.0, 5.0, 4.0, 2.0];
    let is_len = |r: Result<Vec<usize>, Error>| matches!(r, Err(Error::Length { .. }));
    assert!(is_len(linear_assignment(&good[..3], 2, 2, &mut ws)));
    assert!(matches!(
        linear_assignment(&good, 2, 1, &mut ws),
        Err(Error::InvalidArgument(_))
    ));
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let mut c = good.clone();
        c[3] = bad;
        let err = linear_assignment(&c, 2, 2, &mut ws).unwrap_err();
        assert!(
            matches!(&err, Error::NonFinite(msg) if msg.contains("(1, 1)")),
            "{err}"
        );
    }
    let mut huge = good.clone();
    huge[0] = max_cost_magnitude(2) * 2.0;
    assert!(matches!(
        linear_assignment(&huge, 2, 2, &mut ws),
        Err(Error::InvalidArgument(_))
    ));
    let mut out = vec![0; 3];
    assert!(matches!(
        linear_assignment_into(&good, 2, 2, &mut ws, &mut out),
        Err(Error::Length { .. })
    ));
    assert!(matches!(
        assignment_cost(&good, 2, &[0, 2]),
        Err(Error::InvalidArgument(_))
    ));
    // The workspace still works after errors.
    assert_eq!(linear_assignment(&good, 2, 2, &mut ws).unwrap(), vec![0, 1]);

    let x = vec![0.0, 1.0, 2.0, 3.0];
    assert!(is_len(ot_pairing(&x, &x[..3], 2, 2, &mut ws)));
    assert!(is_len(ot_pairing(&x[..2], &x, 2, 2, &mut ws)));
    let mut nan = x.clone();
    nan[1] = f64::NAN;
    assert!(matches!(
        ot_pairing(&nan, &x, 2, 2, &mut ws),
        Err(Error::NonFinite(_))
    ));
    assert!(matches!(
        ot_pairing(&x, &nan, 2, 2, &mut ws),
        Err(Error::NonFinite(_))
    ));
    let big = vec![1e200, 0.0, -1e200, 0.0];
    assert!(matches!(
        ot_pairing(&big, &x, 2, 2, &mut ws),
        Err(Error::NonFinite(_))
    ));
    assert!(matches!(
        ot_pairing(&[], &[], 3, 0, &mut ws),
        Err(Error::InvalidArgument(_))
    ));
    assert_eq!(
        ot_pairing(&[], &[], 0, 2, &mut ws).unwrap(),
        Vec::<usize>::new()
    );
}

/// Prints the time of a 256×256 OT pairing in 2-D (no assertion: speed belongs to
/// benchmarks; run with `--release --nocapture` to see it): two standard Gaussian
/// clouds, and flow matching's case, 8gaussians data against standard normal noise.
#[test]
fn timing_256_prints_only() {
    for case in ["gaussian/gaussian", "8gaussians/gaussian"] {
        timing_256(case);
    }
}

fn timing_256(case: &str) {
    let (n, d) = (256, 2);
    let mut rng = Rng(10);
    let mut ws = AssignmentWorkspace::new();
    let reps = if cfg!(debug_assertions) { 3 } else { 200 };
    let mut total = Vec::with_capacity(reps);
    let mut solve = Vec::with_capacity(reps);
    for r in 0..reps {
        let x0: Vec<f64> = if case.starts_with("8gaussians") {
            Toy::EightGaussians.sample(n, r as u64).unwrap()
        } else {
            (0..n * d).map(|_| rng.normal()).collect()
        };
        let x1: Vec<f64> = (0..n * d).map(|_| rng.normal()).collect();
        let t = std::time::Instant::now();
        let perm = ot_pairing(&x0, &x1, n, d, &mut ws).unwrap();
        total.push(t.elapsed().as_secs_f64());
        assert_injection(&perm, n);
        let c = ws.pairing_cost().to_vec();
        let t = std::time::Instant::now();
        let p2 = linear_assignment(&c, n, n, &mut ws).unwrap();
        solve.push(t.elapsed().as_secs_f64());
        assert_eq!(p2, perm);
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[v.len() * 9 / 10])
    };
    let (tm, t90) = med(&mut total);
    let (sm, s90) = med(&mut solve);
    println!(
        "ot_pairing 256x256 d=2 {case} ({} build, {reps} draws): median {:.3} ms (p90 \
         {:.3} ms); solve only median {:.3} ms (p90 {:.3} ms)",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        tm * 1e3,
        t90 * 1e3,
        sm * 1e3,
        s90 * 1e3
    );
}
