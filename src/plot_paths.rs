//! PNG plots of closed-loop paths of a deployed controller (`socflow simulate --plot`,
//! the quadcopter example): the plane of the first two state coordinates, or the
//! quadcopter's ground track and altitude, with the start and the target marked.
//!
//! Paths are the runtime's layout (`Controller::simulate` with `keep_trajectories`):
//! `paths × points × dim` states, point 0 at t0 and the last at t1. A path is drawn up
//! to its first non-finite state, so a diverging roll-out still plots; its last point
//! drawn is a dot.

use std::ops::Range;
use std::path::Path;

use anyhow::{bail, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::plot::ensure_font;

const PATH_COLOR: RGBColor = RGBColor(31, 119, 180);
const TARGET_COLOR: RGBColor = RGBColor(214, 39, 40);
const END_COLOR: RGBColor = RGBColor(255, 127, 14);

/// Closed-loop paths: `states` is `paths × points × dim`, point k at
/// t0 + k(t1 − t0)/(points − 1).
#[derive(Clone, Copy, Debug)]
pub struct Paths<'a> {
    /// The states, `paths × points × dim`, row-major.
    pub states: &'a [f64],
    /// Number of paths.
    pub paths: usize,
    /// States per path (steps + 1).
    pub points: usize,
    /// State dimension.
    pub dim: usize,
    /// Time of the first point.
    pub t0: f64,
    /// Time of the last point.
    pub t1: f64,
}

impl Paths<'_> {
    /// Checks the sizes and the time interval.
    pub fn check(&self) -> Result<()> {
        if self.paths == 0 || self.points < 2 || self.dim == 0 {
            bail!(
                "paths: {} paths of {} points in dimension {} (need ≥ 1 path, ≥ 2 points, d ≥ 1)",
                self.paths,
                self.points,
                self.dim
            );
        }
        let want = self
            .paths
            .checked_mul(self.points)
            .and_then(|n| n.checked_mul(self.dim));
        if want != Some(self.states.len()) {
            bail!(
                "paths: {} values for {} paths × {} points × {} coordinates",
                self.states.len(),
                self.paths,
                self.points,
                self.dim
            );
        }
        if !(self.t0.is_finite() && self.t1.is_finite() && self.t1 > self.t0) {
            bail!("paths: time interval [{}, {}]", self.t0, self.t1);
        }
        Ok(())
    }

    /// The state of path `p` at point `k`.
    fn state(&self, p: usize, k: usize) -> &[f64] {
        let at = (p * self.points + k) * self.dim;
        &self.states[at..at + self.dim]
    }

    /// The time of point `k`.
    fn time(&self, k: usize) -> f64 {
        self.t0 + (self.t1 - self.t0) * k as f64 / (self.points - 1) as f64
    }

    /// Path `p`'s points `f(k, state)` up to its first non-finite state.
    fn line(&self, p: usize, f: impl Fn(usize, &[f64]) -> (f64, f64)) -> Vec<(f64, f64)> {
        (0..self.points)
            .map(|k| f(k, self.state(p, k)))
            .take_while(|(x, y)| x.is_finite() && y.is_finite())
            .collect()
    }
}

/// The start and the target drawn over the paths (full states; the plots take the
/// coordinates they show).
#[derive(Clone, Copy, Debug)]
pub struct Marks<'a> {
    /// The start z(0).
    pub start: &'a [f64],
    /// The target (the terminal cost's center), when the problem has one.
    pub target: Option<&'a [f64]>,
}

impl Marks<'_> {
    fn check(&self, dim: usize) -> Result<()> {
        if self.start.len() != dim || self.target.is_some_and(|t| t.len() != dim) {
            bail!(
                "marks: start of {} and target of {:?} values for states of dimension {dim}",
                self.start.len(),
                self.target.map(<[f64]>::len)
            );
        }
        Ok(())
    }
}

/// A range covering `values` (finite ones) with a 5% margin; ±1 around a single value.
fn range(values: impl Iterator<Item = f64>) -> Result<Range<f64>> {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    if !(lo.is_finite() && hi.is_finite()) {
        bail!("paths: no finite state to draw");
    }
    let pad = if hi > lo { 0.05 * (hi - lo) } else { 1.0 };
    Ok(lo - pad..hi + pad)
}

/// Two ranges widened to a common span about their centres (equal scales on a square
/// panel).
fn square(x: Range<f64>, y: Range<f64>) -> (Range<f64>, Range<f64>) {
    let half = 0.5 * (x.end - x.start).max(y.end - y.start);
    let (cx, cy) = (0.5 * (x.start + x.end), 0.5 * (y.start + y.end));
    (cx - half..cx + half, cy - half..cy + half)
}

/// Draws coordinate `j` of the paths against coordinate `i` (`i = None`: against time)
/// on `area`, with the marks.
fn panel(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    caption: &str,
    labels: (&str, &str),
    paths: &Paths<'_>,
    marks: &Marks<'_>,
    i: Option<usize>,
    j: usize,
) -> Result<()> {
    let x_of = |k: usize, z: &[f64]| match i {
        Some(i) => z[i],
        None => paths.time(k),
    };
    let lines: Vec<Vec<(f64, f64)>> = (0..paths.paths)
        .map(|p| paths.line(p, |k, z| (x_of(k, z), z[j])))
        .collect();
    // Marks: the start at t0 and the target at t1 on a time axis.
    let start = (x_of(0, marks.start), marks.start[j]);
    let target = marks.target.map(|t| (x_of(paths.points - 1, t), t[j]));
    let points = || lines.iter().flatten().copied().chain([start]).chain(target);
    let xr = range(points().map(|p| p.0))?;
    let yr = range(points().map(|p| p.1))?;
    let (xr, yr) = if i.is_some() {
        square(xr, yr)
    } else {
        (xr, yr)
    };
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(48)
        .build_cartesian_2d(xr, yr)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc(labels.0)
        .y_desc(labels.1)
        .draw()?;
    for line in &lines {
        chart.draw_series(LineSeries::new(
            line.iter().copied(),
            PATH_COLOR.mix(0.35).stroke_width(1),
        ))?;
    }
    chart.draw_series(
        lines
            .iter()
            .filter_map(|l| l.last())
            .map(|p| Circle::new(*p, 2, END_COLOR.filled())),
    )?;
    chart
        .draw_series([Circle::new(start, 6, BLACK.filled())])?
        .label("start")
        .legend(|(x, y)| Circle::new((x, y), 5, BLACK.filled()));
    if let Some(t) = target {
        chart
            .draw_series([Cross::new(t, 7, TARGET_COLOR.stroke_width(3))])?
            .label("target")
            .legend(|(x, y)| Cross::new((x, y), 5, TARGET_COLOR.stroke_width(3)));
    }
    // Closed-loop paths run from the start towards the target, lower left to upper
    // right in the problems plotted so far: the upper left corner is free.
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK.mix(0.3))
        .label_font(("sans-serif", 14))
        .draw()?;
    Ok(())
}

/// Writes `path`: the paths in the plane of the first two state coordinates (equal
/// scales), start and target marked; for one-dimensional states, the coordinate
/// against time.
pub fn plane_png(path: &Path, title: &str, paths: &Paths<'_>, marks: &Marks<'_>) -> Result<()> {
    ensure_font()?;
    paths.check()?;
    marks.check(paths.dim)?;
    let root = BitMapBackend::new(path, (640, 640)).into_drawing_area();
    root.fill(&WHITE)?;
    if paths.dim >= 2 {
        panel(&root, title, ("z₁", "z₂"), paths, marks, Some(0), 1)?;
    } else {
        panel(&root, title, ("t", "z"), paths, marks, None, 0)?;
    }
    root.present()?;
    Ok(())
}

/// Writes `path`: the quadcopter's paths (states (x, y, z, …)) as two panels, the x–y
/// ground track (equal scales) and the altitude z against time, start and target
/// marked in both.
pub fn quadcopter_png(
    path: &Path,
    title: &str,
    paths: &Paths<'_>,
    marks: &Marks<'_>,
) -> Result<()> {
    ensure_font()?;
    paths.check()?;
    marks.check(paths.dim)?;
    if paths.dim < 3 {
        bail!(
            "quadcopter paths: states of dimension {} (need x, y, z)",
            paths.dim
        );
    }
    let root = BitMapBackend::new(path, (1200, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 24))?;
    let panels = root.split_evenly((1, 2));
    panel(
        &panels[0],
        "ground track",
        ("x", "y"),
        paths,
        marks,
        Some(0),
        1,
    )?;
    panel(&panels[1], "altitude", ("t", "z"), paths, marks, None, 2)?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_pad_skip_non_finite_values_and_square_up() {
        let r = range([1.0, f64::NAN, 3.0, f64::INFINITY].into_iter()).unwrap();
        assert!((r.start - 0.9).abs() < 1e-12 && (r.end - 3.1).abs() < 1e-12);
        let r = range([2.0].into_iter()).unwrap();
        assert_eq!(r, 1.0..3.0);
        assert!(range([f64::NAN].into_iter()).is_err());
        let (x, y) = square(0.0..4.0, 1.0..2.0);
        assert_eq!((x, y), (0.0..4.0, -0.5..3.5));
    }

    #[test]
    fn paths_are_checked_and_cut_at_the_first_non_finite_state() {
        // 1 path, 3 points, d = 2.
        let states = [0.0, 0.0, 1.0, 2.0, f64::NAN, 3.0];
        let p = Paths {
            states: &states,
            paths: 1,
            points: 3,
            dim: 2,
            t0: 0.0,
            t1: 2.0,
        };
        p.check().unwrap();
        assert_eq!(p.line(0, |_, z| (z[0], z[1])), vec![(0.0, 0.0), (1.0, 2.0)]);
        assert_eq!(p.time(1), 1.0);
        let bad = Paths { points: 2, ..p };
        assert!(bad.check().is_err());
        let bad = Paths { t1: 0.0, ..p };
        assert!(bad.check().is_err());
        let m = Marks {
            start: &[0.0],
            target: None,
        };
        assert!(m.check(2).is_err());
    }
}
