//! PNG plots of the demo (plotters' bitmap backend). Text is drawn with DejaVu Sans,
//! shipped in `assets/` and compiled into the binary, so plots render on machines
//! without system fonts.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Result};
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

/// DejaVu Sans (Bitstream Vera license, `assets/DejaVuSans-LICENSE.txt`).
static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

/// Registers the shipped font as `sans-serif` (once).
fn ensure_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok =
        *REGISTERED.get_or_init(|| register_font("sans-serif", FontStyle::Normal, FONT).is_ok());
    if ok {
        Ok(())
    } else {
        Err(anyhow!(
            "the shipped font assets/DejaVuSans.ttf cannot be parsed"
        ))
    }
}

/// A square plotting window [−r, r]².
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Window {
    /// Half-width.
    pub r: f64,
}

impl Window {
    fn range(&self) -> std::ops::Range<f64> {
        -self.r..self.r
    }

    fn contains(&self, p: &[f64]) -> bool {
        p.iter().all(|v| v.abs() <= self.r)
    }
}

const BLUE: RGBColor = RGBColor(31, 119, 180);
const ORANGE: RGBColor = RGBColor(255, 127, 14);

fn check_2d(what: &str, x: &[f64]) -> Result<()> {
    if x.len() % 2 != 0 {
        bail!("{what}: {} values are not 2-D points", x.len());
    }
    Ok(())
}

/// Writes `path`: two panels, the data (left) and the model's samples (right), as
/// scatter plots over the same window.
pub fn samples_png(
    path: &Path,
    title: &str,
    data: &[f64],
    samples: &[f64],
    win: Window,
) -> Result<()> {
    ensure_font()?;
    check_2d("data", data)?;
    check_2d("samples", samples)?;
    let root = BitMapBackend::new(path, (1000, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 24))?;
    let panels = root.split_evenly((1, 2));
    for (area, (name, pts, color)) in panels.iter().zip([
        ("data (validation set)", data, BLUE),
        ("model samples", samples, ORANGE),
    ]) {
        let mut chart = ChartBuilder::on(area)
            .caption(name, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(40)
            .build_cartesian_2d(win.range(), win.range())?;
        chart.configure_mesh().disable_mesh().draw()?;
        chart.draw_series(
            pts.chunks_exact(2)
                .filter(|p| win.contains(p))
                .map(|p| Circle::new((p[0], p[1]), 1, color.mix(0.5).filled())),
        )?;
    }
    root.present()?;
    Ok(())
}

/// The viridis colour map at `v` ∈ [0, 1] (piecewise linear through 9 anchors).
fn viridis(v: f64) -> RGBColor {
    const ANCHORS: [(u8, u8, u8); 9] = [
        (68, 1, 84),
        (71, 44, 122),
        (59, 81, 139),
        (44, 113, 142),
        (33, 144, 141),
        (39, 173, 129),
        (92, 200, 99),
        (170, 220, 50),
        (253, 231, 37),
    ];
    let v = if v.is_finite() {
        v.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let s = v * (ANCHORS.len() - 1) as f64;
    let i = (s.floor() as usize).min(ANCHORS.len() - 2);
    let f = s - i as f64;
    let (a, b) = (ANCHORS[i], ANCHORS[i + 1]);
    let mix = |x: u8, y: u8| (x as f64 + f * (y as f64 - x as f64)).round() as u8;
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// Writes `path`: the density exp(log p) on a `k × k` grid of cell centres over the
/// window (`log_p[j·k + i]` at x = centre i, y = centre j), as a heat map scaled to
/// its maximum.
pub fn density_png(path: &Path, title: &str, log_p: &[f64], k: usize, win: Window) -> Result<()> {
    ensure_font()?;
    if k == 0 || log_p.len() != k * k {
        bail!("density grid: {} values for a {k} × {k} grid", log_p.len());
    }
    let max = log_p
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .fold(f64::NEG_INFINITY, f64::max);
    if !max.is_finite() {
        bail!("density grid: no finite log-density");
    }
    let root = BitMapBackend::new(path, (560, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(40)
        .build_cartesian_2d(win.range(), win.range())?;
    chart.configure_mesh().disable_mesh().draw()?;
    let h = 2.0 * win.r / k as f64;
    chart.draw_series((0..k * k).map(|c| {
        let (i, j) = (c % k, c / k);
        let x0 = -win.r + i as f64 * h;
        let y0 = -win.r + j as f64 * h;
        let v = (log_p[c] - max).exp();
        Rectangle::new([(x0, y0), (x0 + h, y0 + h)], viridis(v).filled())
    }))?;
    root.present()?;
    Ok(())
}

/// The centres of a `k × k` grid over the window, row-major by y then x (the layout
/// [`density_png`] expects).
pub fn grid_points(k: usize, win: Window) -> Vec<f64> {
    let h = 2.0 * win.r / k as f64;
    let mut pts = Vec::with_capacity(2 * k * k);
    for j in 0..k {
        for i in 0..k {
            pts.push(-win.r + (i as f64 + 0.5) * h);
            pts.push(-win.r + (j as f64 + 0.5) * h);
        }
    }
    pts
}

/// Writes `path`: the trajectories of `n` samples from the prior (grey dots) to the
/// data end (orange dots); `states` is `points × n × 2`, point 0 at the prior.
pub fn trajectories_png(
    path: &Path,
    title: &str,
    states: &[f64],
    points: usize,
    n: usize,
    win: Window,
) -> Result<()> {
    ensure_font()?;
    if points < 2 || states.len() != points * n * 2 {
        bail!(
            "trajectories: {} values for {points} points of {n} 2-D samples",
            states.len()
        );
    }
    let at = |p: usize, i: usize| (states[(p * n + i) * 2], states[(p * n + i) * 2 + 1]);
    let root = BitMapBackend::new(path, (560, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(40)
        .build_cartesian_2d(win.range(), win.range())?;
    chart.configure_mesh().disable_mesh().draw()?;
    for i in 0..n {
        chart.draw_series(LineSeries::new(
            (0..points).map(|p| at(p, i)),
            BLUE.mix(0.35).stroke_width(1),
        ))?;
    }
    chart.draw_series((0..n).map(|i| Circle::new(at(0, i), 2, BLACK.mix(0.4).filled())))?;
    chart.draw_series((0..n).map(|i| Circle::new(at(points - 1, i), 2, ORANGE.filled())))?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn viridis_ends_and_clamps() {
        assert_eq!(viridis(0.0), RGBColor(68, 1, 84));
        assert_eq!(viridis(1.0), RGBColor(253, 231, 37));
        assert_eq!(viridis(2.0), viridis(1.0));
        assert_eq!(viridis(f64::NAN), viridis(0.0));
    }

    #[test]
    fn grid_is_cell_centres() {
        let g = grid_points(2, Window { r: 1.0 });
        assert_eq!(g, vec![-0.5, -0.5, 0.5, -0.5, -0.5, 0.5, 0.5, 0.5]);
    }
}
