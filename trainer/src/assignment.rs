//! Exact linear assignment and the mini-batch optimal-transport coupling.
//!
//! [`linear_assignment`] solves the linear sum assignment problem: given an n×m cost
//! matrix C (row-major, n ≤ m), find the injection `i ↦ perm[i]` of rows into
//! columns that minimizes `Σᵢ C[i, perm[i]]`. Each row gets its own column, so a square problem
//! returns a permutation: no point is used twice. This is what scipy's
//! `linear_sum_assignment` computes, and POT's `ot.emd` on uniform weights.
//!
//! # Algorithm
//!
//! The shortest augmenting path method of Jonker & Volgenant ("A shortest augmenting
//! path algorithm for dense and sparse linear assignment problems", Computing 38,
//! 1987), with the prices initialized by an ε-scaling auction (Bertsekas, "The auction
//! algorithm: a distributed relaxation method for the assignment problem", Annals of
//! OR 14, 1988) in place of JV's augmenting row reduction:
//!
//! 1. *column reduction* and *reduction transfer* (JV): prices vⱼ = minᵢ C[i, j], each
//!    column offered to its cheapest row;
//! 2. *auction*: a free row takes its cheapest column at a price lowered by the gap to
//!    its second cheapest plus ε, evicting the owner; three phases with ε ≈ range/128,
//!    range/512, range/1024 (powers of two). JV's augmenting row reduction is this
//!    step with ε = 0; on squared distances between point clouds its near-ties start
//!    price wars (≈ 26 000 bids at 256×256, against ≈ 3 400 here), and it leaves prices
//!    far from optimal when the two clouds are apart (flow matching's data and noise);
//! 3. the rows whose column is not exactly their cheapest at the final prices are
//!    released, so that every assigned row is tight;
//! 4. *augmentation* (JV): for each free row, Dijkstra's shortest path over the
//!    reduced costs C[i, j] − uᵢ − vⱼ ≥ 0 to the nearest unassigned column; the path is
//!    flipped and the settled columns' prices move so that reduced costs stay ≥ 0.
//!
//! Steps 1–3 only choose the starting prices: whatever they leave, step 4 makes the
//! result exact. It is O(n²) per free row, O(n³) in the worst case; the auction is
//! bounded by 16n bids per phase. A rectangular problem (n < m) skips steps 1–3 and
//! runs the successive shortest paths from zero prices: column prices then stay ≤ 0
//! and are 0 on every unassigned column, the optimality conditions of that problem.
//!
//! The loops over a row are written so that they vectorize (compiled for AVX-512,
//! AVX2 and Neon, chosen at run time), with exact operations only (−, <, select), so
//! every target gives the same result. An OT pairing of 256 + 256 points in 2-D takes
//! under 1 ms on one core (the `timing_256_prints_only` test prints it).
//!
//! On return the workspace holds an optimal dual solution (u, v) that certifies the
//! result: uᵢ + vⱼ ≤ C[i, j] everywhere (up to rounding), with equality on the
//! assigned pairs, and Σ u + Σ v equal to the optimal cost (for n < m, also v ≤ 0 and
//! v = 0 on the unassigned columns). ε is a power of two, so for integer costs with
//! |C| ≤ 2⁴⁰/m every operation is exact and so is the certificate.
//!
//! All buffers live in an [`AssignmentWorkspace`], so repeated solves of one size (one
//! per training step) allocate only the returned `Vec`, and
//! [`linear_assignment_into`] nothing at all once the workspace is warm.

use crate::error::{check_len, Error, Result};

/// Marks an unassigned row or column.
const NONE: usize = usize::MAX;

/// Reusable buffers of [`linear_assignment`] and [`ot_pairing`], and the dual solution
/// of the last solve.
#[derive(Clone, Debug, Default)]
pub struct AssignmentWorkspace {
    solver: Solver,
    /// The cost matrix [`ot_pairing`] builds (n×n squared distances).
    cost: Vec<f64>,
    /// Squared norms of the second point set.
    norms: Vec<f64>,
    /// The second point set, transposed (d×n).
    x1t: Vec<f64>,
}

impl AssignmentWorkspace {
    /// An empty workspace; it grows to the largest problem solved with it.
    pub fn new() -> Self {
        Self::default()
    }

    /// Row duals u of the last successful solve (length n).
    pub fn row_duals(&self) -> &[f64] {
        &self.solver.u
    }

    /// Column duals v of the last successful solve (length m).
    pub fn column_duals(&self) -> &[f64] {
        &self.solver.v
    }

    /// The squared-distance cost matrix of the last [`ot_pairing`] (n×n, row-major):
    /// entry (i, j) is ‖x0ᵢ − x1ⱼ‖².
    pub fn pairing_cost(&self) -> &[f64] {
        &self.cost
    }
}

/// Solves the linear sum assignment problem for the `n`×`m` row-major `cost` matrix
/// (`n ≤ m`): returns `perm` of length `n`, with row `i` matched to column `perm[i]`,
/// distinct columns, minimizing `Σᵢ cost[i·m + perm[i]]`. For `n == m` it is a
/// permutation of `0..n`. See the module docs for the algorithm and the duals left
/// in `ws`.
///
/// Errors: [`Error::InvalidArgument`] when `n > m`; [`Error::Length`] when
/// `cost.len() != n·m`; [`Error::NonFinite`] for a NaN or infinite cost;
/// [`Error::InvalidArgument`] when a |cost| exceeds [`max_cost_magnitude`]`(m)`, beyond
/// which the price updates could overflow.
pub fn linear_assignment(
    cost: &[f64],
    n: usize,
    m: usize,
    ws: &mut AssignmentWorkspace,
) -> Result<Vec<usize>> {
    let mut perm = vec![0; n];
    linear_assignment_into(cost, n, m, ws, &mut perm)?;
    Ok(perm)
}

/// [`linear_assignment`] writing the matching into `perm` (length `n`); allocates
/// nothing once `ws` has solved a problem of this size.
pub fn linear_assignment_into(
    cost: &[f64],
    n: usize,
    m: usize,
    ws: &mut AssignmentWorkspace,
    perm: &mut [usize],
) -> Result<()> {
    let range = validate(cost, n, m)?;
    check_len("assignment output", perm.len(), n)?;
    ws.solver.solve(cost, n, m, range)?;
    perm.copy_from_slice(&ws.solver.x);
    Ok(())
}

/// The largest |cost| [`linear_assignment`] accepts for `m` columns:
/// `f64::MAX / (8(m + 1))`. Prices are sums of at most 2m costs along alternating
/// paths, so this bound keeps every intermediate finite.
pub fn max_cost_magnitude(m: usize) -> f64 {
    f64::MAX / (8.0 * (m as f64 + 1.0))
}

/// `Σᵢ cost[i·m + perm[i]]`: the cost of a matching of the rows of an `m`-column
/// matrix.
///
/// Errors: [`Error::Length`] when the matrix does not have `perm.len()` rows of `m`
/// columns; [`Error::InvalidArgument`] when a `perm` entry is `≥ m`.
pub fn assignment_cost(cost: &[f64], m: usize, perm: &[usize]) -> Result<f64> {
    let n = perm.len();
    let expected = n
        .checked_mul(m)
        .ok_or_else(|| Error::InvalidArgument(format!("{n}×{m} cost matrix overflows")))?;
    check_len("cost matrix", cost.len(), expected)?;
    let mut total = 0.0;
    for (i, &j) in perm.iter().enumerate() {
        if j >= m {
            return Err(Error::InvalidArgument(format!(
                "row {i} is matched to column {j} of a {m}-column matrix"
            )));
        }
        total += cost[i * m + j];
    }
    Ok(total)
}

/// The mini-batch optimal-transport coupling of two clouds of `n` points in `d`
/// dimensions (row-major `x0` and `x1`, each `n·d` values): the permutation `perm`
/// minimizing `Σᵢ ‖x0ᵢ − x1_perm[i]‖²`, so that `x0[i]` pairs with `x1[perm[i]]`.
/// Every point of each cloud is used exactly once (no duplicates, unlike sampling
/// from the transport plan).
///
/// The squared distances are built as ‖a‖² + ‖b‖² − 2a·b, clamped at 0 (the
/// cancellation error is a few ulps of ‖a‖² + ‖b‖²), and kept in `ws`
/// ([`AssignmentWorkspace::pairing_cost`]).
///
/// Errors: [`Error::Length`] when `x0` or `x1` do not hold `n·d` values;
/// [`Error::InvalidArgument`] for `d == 0` with `n > 0`; [`Error::NonFinite`] for a
/// NaN or infinite coordinate, or squared distances that overflow.
pub fn ot_pairing(
    x0: &[f64],
    x1: &[f64],
    n: usize,
    d: usize,
    ws: &mut AssignmentWorkspace,
) -> Result<Vec<usize>> {
    let len = n
        .checked_mul(d)
        .ok_or_else(|| Error::InvalidArgument(format!("{n} points of dimension {d} overflow")))?;
    check_len("ot_pairing x0", x0.len(), len)?;
    check_len("ot_pairing x1", x1.len(), len)?;
    if d == 0 && n > 0 {
        return Err(Error::InvalidArgument(
            "ot_pairing: points of dimension 0".into(),
        ));
    }
    if let Some(k) = x0.iter().position(|v| !v.is_finite()) {
        return Err(Error::NonFinite(format!(
            "ot_pairing x0 at point {}, coordinate {}",
            k / d,
            k % d
        )));
    }
    if let Some(k) = x1.iter().position(|v| !v.is_finite()) {
        return Err(Error::NonFinite(format!(
            "ot_pairing x1 at point {}, coordinate {}",
            k / d,
            k % d
        )));
    }
    n.checked_mul(n)
        .ok_or_else(|| Error::InvalidArgument(format!("{n}×{n} cost matrix overflows")))?;
    if n == 0 {
        ws.cost.clear();
        ws.solver
            .solve(&[], 0, 0, (f64::INFINITY, f64::NEG_INFINITY))?;
        return Ok(Vec::new());
    }
    squared_distances(x0, x1, n, d, ws);
    let range = validate(&ws.cost, n, n).map_err(|e| match e {
        Error::NonFinite(_) | Error::InvalidArgument(_) => Error::NonFinite(format!(
            "ot_pairing squared distances overflow (coordinates too large): {e}"
        )),
        other => other,
    })?;
    ws.solver.solve(&ws.cost, n, n, range)?;
    Ok(ws.solver.x.clone())
}

/// Checks the problem's shape and values; returns the least and largest cost
/// (+∞, −∞ for an empty matrix).
fn validate(cost: &[f64], n: usize, m: usize) -> Result<(f64, f64)> {
    if n > m {
        return Err(Error::InvalidArgument(format!(
            "assignment of {n} rows to {m} columns: needs rows ≤ columns (transpose the \
             cost matrix)"
        )));
    }
    let cells = n
        .checked_mul(m)
        .ok_or_else(|| Error::InvalidArgument(format!("{n}×{m} cost matrix overflows")))?;
    check_len("cost matrix", cost.len(), cells)?;
    let at = |k: usize| (k / m, k % m);
    let (lo, hi, finite) = cost_bounds(cost);
    if !finite {
        let k = cost.iter().position(|c| !c.is_finite()).unwrap_or(0);
        return Err(Error::NonFinite(format!(
            "cost matrix at {:?}: {}",
            at(k),
            cost[k]
        )));
    }
    let limit = max_cost_magnitude(m);
    if lo < -limit || hi > limit {
        let k = cost.iter().position(|c| c.abs() > limit).unwrap_or(0);
        return Err(Error::InvalidArgument(format!(
            "cost {:e} at {:?} exceeds the solver's limit {limit:e} for {m} columns",
            cost[k],
            at(k)
        )));
    }
    Ok((lo, hi))
}

/// Declares a function compiled for several SIMD targets, dispatched at run time (as
/// the runtime's kernels are). The kernels below use fixed lane counts and exact
/// operations only (subtraction, comparison), so every target gives the same bits.
macro_rules! simd_fn {
    ($(#[$attr:meta])* fn $($rest:tt)*) => {
        $(#[$attr])*
        #[multiversion::multiversion(targets(
            "x86_64+avx512f+avx512vl+avx512dq+avx512bw+avx2+fma",
            "x86_64+avx2+fma",
            "aarch64+neon"
        ))]
        fn $($rest)*
    };
}

/// ε of the auction's first phase, as a fraction of the largest power of two not above
/// the cost range (a power of two, so that prices of integer costs stay exact).
const AUCTION_EPS_START: f64 = 1.0 / 128.0;
/// ε of the auction's last phase, in the same unit.
const AUCTION_EPS_END: f64 = 1.0 / 1024.0;
/// Factor by which ε falls between auction phases (a power of two).
const AUCTION_EPS_FACTOR: f64 = 4.0;
/// Bids allowed per row and phase; past it the auction stops and the exact phase
/// takes over (it bounds the auction's time on adversarial costs).
const AUCTION_BIDS_PER_ROW: usize = 16;

/// The solver's buffers. Every solve resets what it reads.
#[derive(Clone, Debug, Default)]
struct Solver {
    /// Column of each row (length n).
    x: Vec<usize>,
    /// Row of each column, or [`NONE`] (length m).
    y: Vec<usize>,
    /// Row duals (length n), filled at the end.
    u: Vec<f64>,
    /// Column duals (prices; length m).
    v: Vec<f64>,
    /// Unassigned rows.
    free: Vec<usize>,
    /// Shortest-path distances of the unsettled columns (+∞ once settled).
    d: Vec<f64>,
    /// The prices seen by the shortest-path search: vⱼ for a column not yet settled,
    /// −∞ once settled (so that its distance C[i, j] − wⱼ − h is +∞).
    w: Vec<f64>,
    /// Rows scanned by the current search, in order, with their distance offsets h.
    scanned: Vec<(usize, f64)>,
    /// Columns settled by the current search, in order: (column, distance, number of
    /// rows scanned before it was settled).
    settled: Vec<(usize, f64, usize)>,
    /// Whether a row won exactly one column in the column reduction.
    unique: Vec<bool>,
}

impl Solver {
    /// Solves for a validated `n`×`m` matrix (`n ≤ m`, finite, bounded) whose least and
    /// largest entries are `bounds`.
    fn solve(&mut self, c: &[f64], n: usize, m: usize, bounds: (f64, f64)) -> Result<()> {
        self.x.clear();
        self.x.resize(n, NONE);
        self.y.clear();
        self.y.resize(m, NONE);
        self.v.clear();
        self.v.resize(m, 0.0);
        self.free.clear();
        self.d.clear();
        self.d.resize(m, 0.0);
        self.w.clear();
        self.w.resize(m, 0.0);
        self.settled.clear();
        self.scanned.clear();
        self.u.clear();
        if n == 0 {
            return Ok(());
        }
        if n == m {
            column_reduction(self, c, n);
            // The largest power of two not above the range (0 for a constant matrix or
            // a subnormal range: then there is nothing for an auction to do).
            let range = bounds.1 - bounds.0;
            let unit = f64::from_bits(range.to_bits() & 0xfff0_0000_0000_0000);
            if n >= 2 && unit.is_normal() {
                auction(self, c, n, unit);
            }
            keep_tight_rows(self, c, n);
        } else {
            self.free.extend(0..n);
        }
        let free = std::mem::take(&mut self.free);
        let result = free
            .iter()
            .try_for_each(|&start| shortest_path(self, c, m, start));
        self.free = free;
        result?;
        // Complementary slackness defines the row duals.
        self.u.extend(
            self.x
                .iter()
                .enumerate()
                .map(|(i, &j)| c[i * m + j] - self.v[j]),
        );
        Ok(())
    }
}

/// Lanes of one group of running minima: LLVM fully unrolls an 8-iteration lane loop
/// over local arrays and turns it into vector operations (one AVX-512 register of
/// f64, two AVX2 or four Neon ones); a 16-iteration loop it leaves scalar, and so it
/// does when the arrays sit in a struct (checked in the generated code).
const LANES: usize = 8;
/// Columns per step of the kernels: two lane groups, two independent dependency
/// chains (a running minimum waits on the previous compare-and-select), which the CPU
/// overlaps.
const STEP: usize = 2 * LANES;

/// 0, 1, …, LANES − 1 as f64: column offsets within a lane group. Columns ride along
/// as f64 (exact below 2⁵³) so that the selects stay in one vector type.
const LANE_INDEX: [f64; LANES] = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0];

/// One lane group's update of the running least `m1` (at column `j1`) and second
/// least `m2` with the values `row[l] − v[l]` of the columns `idx[l]`.
macro_rules! least_two_step {
    ($m1:ident, $m2:ident, $j1:ident, $idx:ident, $row:expr, $v:expr) => {{
        let (row, v) = (&$row[..LANES], &$v[..LANES]);
        for l in 0..LANES {
            let r = row[l] - v[l];
            let lower = r < $m1[l];
            let displaced = if lower { $m1[l] } else { r };
            $m2[l] = if displaced < $m2[l] {
                displaced
            } else {
                $m2[l]
            };
            $m1[l] = if lower { r } else { $m1[l] };
            $j1[l] = if lower { $idx[l] } else { $j1[l] };
            $idx[l] += STEP as f64;
        }
    }};
}

/// The least and second least of `row[j] − v[j]` (equal on a tie; the second is +∞
/// for a single column) and the first column of the least. Exact: the result does
/// not depend on the lane layout.
#[inline(always)]
fn least_two(row: &[f64], v: &[f64]) -> (f64, f64, usize) {
    let (mut m1a, mut m2a, mut j1a) =
        ([f64::INFINITY; LANES], [f64::INFINITY; LANES], [0.0; LANES]);
    let (mut m1b, mut m2b, mut j1b) =
        ([f64::INFINITY; LANES], [f64::INFINITY; LANES], [0.0; LANES]);
    let mut ia = LANE_INDEX;
    let mut ib = LANE_INDEX.map(|x| x + LANES as f64);
    let body = row.len() - row.len() % STEP;
    for (rc, vc) in row[..body]
        .chunks_exact(STEP)
        .zip(v[..body].chunks_exact(STEP))
    {
        least_two_step!(m1a, m2a, j1a, ia, rc, vc);
        least_two_step!(m1b, m2b, j1b, ib, rc[LANES..], vc[LANES..]);
    }
    // The tail, and group b, fold into group a one value at a time.
    let mut take = |l: usize, r: f64, j: f64| {
        if r < m1a[l] || (r == m1a[l] && j < j1a[l]) {
            m2a[l] = m2a[l].min(m1a[l]);
            m1a[l] = r;
            j1a[l] = j;
        } else {
            m2a[l] = m2a[l].min(r);
        }
    };
    for (t, j) in (body..row.len()).enumerate() {
        take(t % LANES, row[j] - v[j], j as f64);
    }
    for l in 0..LANES {
        take(l, m1b[l], j1b[l]);
        take(l, m2b[l], f64::INFINITY);
    }
    // The least is the least m1 (first column among equals); the second is the least
    // of the other lanes' m1 and that lane's m2.
    let mut best = 0;
    for l in 1..LANES {
        if m1a[l] < m1a[best] || (m1a[l] == m1a[best] && j1a[l] < j1a[best]) {
            best = l;
        }
    }
    let mut second = m2a[best];
    for (l, &x) in m1a.iter().enumerate() {
        if l != best {
            second = second.min(x);
        }
    }
    (m1a[best], second, j1a[best] as usize)
}

/// One step of the shortest-path search from a row whose distance offset is `h`:
/// d[j] ← min(d[j], row[j] − w[j] − h) for every column j (a settled one has
/// w[j] = −∞ and stays at d[j] = +∞); returns the least distance of an unsettled
/// column and its first column (+∞ when all are settled). Exact: the result does not
/// depend on the lane layout.
#[inline(always)]
fn relax(row: &[f64], w: &[f64], h: f64, d: &mut [f64]) -> (f64, usize) {
    // Three plain passes (an elementwise update, a minimum, a search), each of which
    // vectorizes, where a fused loop does not (checked in the generated code); d stays
    // in L1 between them.
    for ((&c, &wj), dj) in row.iter().zip(w).zip(d.iter_mut()) {
        let r = c - wj - h;
        *dj = if r < *dj { r } else { *dj };
    }
    let mut lanes = [f64::INFINITY; LANES];
    let mut chunks = d.chunks_exact(LANES);
    for dc in &mut chunks {
        for l in 0..LANES {
            lanes[l] = if dc[l] < lanes[l] { dc[l] } else { lanes[l] };
        }
    }
    let least = chunks
        .remainder()
        .iter()
        .chain(&lanes)
        .fold(f64::INFINITY, |a, &b| if b < a { b } else { a });
    (least, first_equal(d, least))
}

/// The first index of `target` in `xs` (`xs.len()` if absent), testing a chunk of
/// lanes at a time.
#[inline(always)]
fn first_equal(xs: &[f64], target: f64) -> usize {
    let mut chunks = xs.chunks_exact(LANES);
    let mut base = 0;
    for xc in &mut chunks {
        let mut hit = false;
        for &x in xc {
            hit |= x == target;
        }
        if hit {
            break;
        }
        base += LANES;
    }
    base + xs[base..]
        .iter()
        .position(|&x| x == target)
        .unwrap_or(xs.len() - base)
}

simd_fn! {
    /// The least and largest entries of `c`, and whether all of them are finite.
    fn cost_bounds(c: &[f64]) -> (f64, f64, bool) {
        let mut lo = [f64::INFINITY; LANES];
        let mut hi = [f64::NEG_INFINITY; LANES];
        // Σ x·0 is 0 when every x is finite and NaN otherwise.
        let mut z = [0.0f64; LANES];
        let mut chunks = c.chunks_exact(LANES);
        for cc in &mut chunks {
            for l in 0..LANES {
                let x = cc[l];
                lo[l] = if x < lo[l] { x } else { lo[l] };
                hi[l] = if x > hi[l] { x } else { hi[l] };
                z[l] += x * 0.0;
            }
        }
        for (l, &x) in chunks.remainder().iter().enumerate() {
            lo[l] = if x < lo[l] { x } else { lo[l] };
            hi[l] = if x > hi[l] { x } else { hi[l] };
            z[l] += x * 0.0;
        }
        let least = lo.iter().fold(f64::INFINITY, |a, &b| a.min(b));
        let largest = hi.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
        (least, largest, z.iter().all(|&s| s == 0.0))
    }
}

simd_fn! {
    /// Fills `ws.cost` with ‖x0ᵢ − x1ⱼ‖² = ‖x0ᵢ‖² + ‖x1ⱼ‖² − Σₖ 2x0ᵢₖ·x1ⱼₖ, clamped at
    /// 0, for `n ≥ 1` points of dimension `d ≥ 1`: one axpy over a row per coordinate,
    /// on x1 transposed, so the loops run along the row and vectorize.
    fn squared_distances(x0: &[f64], x1: &[f64], n: usize, d: usize, ws: &mut AssignmentWorkspace) {
        let (cost, norms, x1t) = (&mut ws.cost, &mut ws.norms, &mut ws.x1t);
        cost.clear();
        cost.resize(n * n, 0.0);
        norms.clear();
        norms.extend(x1.chunks_exact(d).map(|b| b.iter().map(|v| v * v).sum::<f64>()));
        x1t.clear();
        x1t.resize(d * n, 0.0);
        for (j, b) in x1.chunks_exact(d).enumerate() {
            for (k, &bk) in b.iter().enumerate() {
                x1t[k * n + j] = bk;
            }
        }
        for (a, row) in x0.chunks_exact(d).zip(cost.chunks_exact_mut(n)) {
            let na: f64 = a.iter().map(|v| v * v).sum();
            for (c, &nb) in row.iter_mut().zip(norms.iter()) {
                *c = na + nb;
            }
            for (&ak, col) in a.iter().zip(x1t.chunks_exact(n)) {
                let t = 2.0 * ak;
                for (c, &b) in row.iter_mut().zip(col) {
                    *c -= t * b;
                }
            }
            // Cancellation can leave a tiny negative value for near-equal points.
            for c in row.iter_mut() {
                *c = if *c < 0.0 { 0.0 } else { *c };
            }
        }
    }
}

simd_fn! {
    /// Column reduction and reduction transfer (JV steps 1–2, square only): prices
    /// vⱼ = minᵢ C[i, j], each column offered to its first cheapest row (a row keeps the
    /// last column it won), and a row that won exactly one column passes its slack on
    /// to that column's price. Assigned rows are tight: reduced cost 0 on their column,
    /// ≥ 0 elsewhere.
    fn column_reduction(s: &mut Solver, c: &[f64], n: usize) {
        s.v.fill(f64::INFINITY);
        for (i, row) in c.chunks_exact(n).enumerate() {
            for ((vj, yj), &cij) in s.v.iter_mut().zip(s.y.iter_mut()).zip(row) {
                let lower = cij < *vj;
                *vj = if lower { cij } else { *vj };
                *yj = if lower { i } else { *yj };
            }
        }
        s.unique.clear();
        s.unique.resize(n, true);
        for j in (0..n).rev() {
            let i = s.y[j];
            if s.x[i] == NONE {
                s.x[i] = j;
            } else {
                s.unique[i] = false;
                s.y[j] = NONE;
            }
        }
        for i in 0..n {
            let j = s.x[i];
            if j == NONE {
                s.free.push(i);
                continue;
            }
            if !s.unique[i] || n == 1 {
                continue;
            }
            // u_i becomes the least reduced cost over the other columns; v_j drops
            // by as much, so column j stays tight for row i.
            let row = &c[i * n..(i + 1) * n];
            let mut min = f64::INFINITY;
            for (j2, (&cij, &vj)) in row.iter().zip(&s.v).enumerate() {
                if j2 != j {
                    min = min.min(cij - vj);
                }
            }
            s.v[j] -= min;
        }
    }
}

simd_fn! {
    /// ε-scaling auction (Bertsekas; square, n ≥ 2): JV's augmenting row reduction
    /// with a positive bid increment, so that near-ties cannot start a price war. A
    /// free row takes its cheapest column j₁ at a price lowered by (second least −
    /// least) + ε, evicting the owner. ε goes from `unit`·[`AUCTION_EPS_START`] down
    /// to `unit`·[`AUCTION_EPS_END`] by [`AUCTION_EPS_FACTOR`] (`unit`, a power of two
    /// near the cost range); at the start of a phase, rows whose column is more than ε
    /// above their least reduced cost are released. The auction only moves the prices
    /// close to optimal ones, cheaply: its result is made exact by [`keep_tight_rows`]
    /// and the shortest-path phase, whatever it leaves.
    fn auction(s: &mut Solver, c: &[f64], n: usize, unit: f64) {
        let eps_end = unit * AUCTION_EPS_END;
        let mut eps = unit * AUCTION_EPS_START;
        let (v, x, y, free) = (&mut s.v, &mut s.x, &mut s.y, &mut s.free);
        loop {
            free.clear();
            for i in 0..n {
                let j = x[i];
                if j != NONE {
                    let row = &c[i * n..(i + 1) * n];
                    let (least, _, _) = least_two(row, v);
                    if row[j] - v[j] <= least + eps {
                        continue;
                    }
                    x[i] = NONE;
                    y[j] = NONE;
                }
                free.push(i);
            }
            let mut budget = AUCTION_BIDS_PER_ROW * n;
            while let Some(i) = free.pop() {
                if budget == 0 {
                    return;
                }
                budget -= 1;
                let (r1, r2, j1) = least_two(&c[i * n..(i + 1) * n], v);
                v[j1] -= (r2 - r1) + eps;
                let owner = std::mem::replace(&mut y[j1], i);
                x[i] = j1;
                if owner != NONE {
                    x[owner] = NONE;
                    free.push(owner);
                }
            }
            if eps <= eps_end {
                return;
            }
            eps = (eps / AUCTION_EPS_FACTOR).max(eps_end);
        }
    }
}

simd_fn! {
    /// Keeps the assigned rows that are tight (their column has their least reduced
    /// cost C[i, j] − vⱼ, exactly as computed), releases the others into `free`: the
    /// starting point the shortest-path phase needs, whatever the prices.
    fn keep_tight_rows(s: &mut Solver, c: &[f64], n: usize) {
        s.free.clear();
        for i in 0..n {
            let j = s.x[i];
            if j != NONE {
                let row = &c[i * n..(i + 1) * n];
                let (least, _, _) = least_two(row, &s.v);
                if row[j] - s.v[j] <= least {
                    continue;
                }
                s.x[i] = NONE;
                s.y[j] = NONE;
            }
            s.free.push(i);
        }
    }
}

simd_fn! {
    /// Assigns the free row `start` along a shortest augmenting path (JV step 4, dense
    /// form): Dijkstra over the reduced costs C[i, j] − uᵢ − vⱼ ≥ 0 settles the column
    /// of least distance, stops at the first unassigned one, otherwise scans its row.
    /// The path is then flipped, and the settled columns' prices drop by their
    /// distance below the path length, which keeps reduced costs non-negative and zero
    /// along the new matching.
    ///
    /// The search keeps no predecessor array (a store per column and step): the
    /// predecessor of a path column j is found afterwards as the first scanned row
    /// whose relaxation gives exactly j's distance, since d[j] is that very value.
    fn shortest_path(s: &mut Solver, c: &[f64], m: usize, start: usize) -> Result<()> {
        let (v, w, d, x, y) = (&mut s.v, &mut s.w, &mut s.d, &mut s.x, &mut s.y);
        let (scanned, settled) = (&mut s.scanned, &mut s.settled);
        d.fill(f64::INFINITY);
        w.copy_from_slice(v);
        settled.clear();
        scanned.clear();
        scanned.push((start, 0.0));
        let (mut mind, mut j) = relax(&c[start * m..(start + 1) * m], w, 0.0, d);
        loop {
            if mind == f64::INFINITY {
                return Err(Error::Numerical(
                    "assignment: no unassigned column reachable".into(),
                ));
            }
            settled.push((j, mind, scanned.len()));
            w[j] = f64::NEG_INFINITY;
            d[j] = f64::INFINITY;
            let i = y[j];
            if i == NONE {
                break;
            }
            let row = &c[i * m..(i + 1) * m];
            let h = row[j] - v[j] - mind;
            scanned.push((i, h));
            (mind, j) = relax(row, w, h, d);
        }
        // Flip the path, from the unassigned column back to `start`.
        let (mut j, mut dist, mut k) = settled[settled.len() - 1];
        loop {
            let Some(t) = scanned[..k]
                .iter()
                .position(|&(i, h)| c[i * m + j] - v[j] - h == dist)
            else {
                return Err(Error::Numerical(
                    "assignment: lost the shortest path's predecessor".into(),
                ));
            };
            let i = scanned[t].0;
            y[j] = i;
            x[i] = j;
            if t == 0 {
                break;
            }
            // Row i was scanned when column settled[t − 1] (its old column) settled.
            (j, dist, k) = settled[t - 1];
        }
        for &(j, dist, _) in settled.iter() {
            v[j] += dist - mind;
        }
        Ok(())
    }
}
