//! PNG plots of the demo (plotters' bitmap backend). Text is drawn with DejaVu Sans,
//! shipped in `assets/` and compiled into the binary, so plots render on machines
//! without system fonts.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Result};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

/// DejaVu Sans (Bitstream Vera license, `assets/DejaVuSans-LICENSE.txt`).
static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

/// Registers the shipped font (DejaVu Sans, compiled into the binary) as plotters'
/// `sans-serif`, once per process; later calls return the first call's outcome.
/// Every plot that draws text calls this first (the plots here and in
/// [`crate::plot_paths`]), so that text renders without system fonts.
///
/// # Errors
/// When the shipped font cannot be parsed.
pub fn ensure_font() -> Result<()> {
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

/// A chart's axes: the window on both.
type WindowCoord = Cartesian2d<RangedCoordf64, RangedCoordf64>;

/// A chart on `area` over the window on both axes, captioned in `caption_size`-point
/// sans-serif, with axes and no mesh (the layout of every single-window plot here).
fn window_chart<'a, 'b>(
    area: &'a DrawingArea<BitMapBackend<'b>, Shift>,
    caption: &str,
    caption_size: u32,
    win: Window,
) -> Result<ChartContext<'a, BitMapBackend<'b>, WindowCoord>> {
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", caption_size))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(40)
        .build_cartesian_2d(win.range(), win.range())?;
    chart.configure_mesh().disable_mesh().draw()?;
    Ok(chart)
}

/// The largest finite value (−∞ when there is none).
fn finite_max(values: impl Iterator<Item = f64>) -> f64 {
    values
        .filter(|v| v.is_finite())
        .fold(f64::NEG_INFINITY, f64::max)
}

/// `v` clamped to [0, 1], a non-finite `v` read as 0 (the colour maps' input).
fn unit(v: f64) -> f64 {
    if v.is_finite() {
        v.clamp(0.0, 1.0)
    } else {
        0.0
    }
}

/// The cells of a `k × k` grid over the window, cell `c` (x index `c % k`, y index
/// `c / k`) filled with `color(c)`.
fn grid_cells(
    k: usize,
    win: Window,
    color: impl Fn(usize) -> RGBColor,
) -> impl Iterator<Item = Rectangle<(f64, f64)>> {
    let h = 2.0 * win.r / k as f64;
    (0..k * k).map(move |c| {
        let (i, j) = (c % k, c / k);
        let x0 = -win.r + i as f64 * h;
        let y0 = -win.r + j as f64 * h;
        Rectangle::new([(x0, y0), (x0 + h, y0 + h)], color(c).filled())
    })
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
        let mut chart = window_chart(area, name, 18, win)?;
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
    let v = unit(v);
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
    let max = finite_max(log_p.iter().copied());
    if !max.is_finite() {
        bail!("density grid: no finite log-density");
    }
    let root = BitMapBackend::new(path, (560, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = window_chart(&root, title, 20, win)?;
    chart.draw_series(grid_cells(k, win, |c| viridis((log_p[c] - max).exp())))?;
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
    check_trajectories(states, points, n, "samples")?;
    let root = BitMapBackend::new(path, (560, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = window_chart(&root, title, 20, win)?;
    draw_trajectories(&mut chart, states, points, n, 0.35, 0.4)?;
    root.present()?;
    Ok(())
}

/// Checks that `states` holds `points` (≥ 2) points of `n` 2-D `what`, `points × n × 2`.
fn check_trajectories(states: &[f64], points: usize, n: usize, what: &str) -> Result<()> {
    if points < 2 || states.len() != points * n * 2 {
        bail!(
            "trajectories: {} values for {points} points of {n} 2-D {what}",
            states.len()
        );
    }
    Ok(())
}

/// Draws `n` trajectories (`states` is `points × n × 2`, checked by
/// [`check_trajectories`]): each a blue line of opacity `line_alpha`, its start a
/// black dot of opacity `start_alpha` and its end an orange dot.
fn draw_trajectories(
    chart: &mut ChartContext<'_, BitMapBackend<'_>, WindowCoord>,
    states: &[f64],
    points: usize,
    n: usize,
    line_alpha: f64,
    start_alpha: f64,
) -> Result<()> {
    let at = |p: usize, i: usize| (states[(p * n + i) * 2], states[(p * n + i) * 2 + 1]);
    for i in 0..n {
        chart.draw_series(LineSeries::new(
            (0..points).map(|p| at(p, i)),
            BLUE.mix(line_alpha).stroke_width(1),
        ))?;
    }
    chart.draw_series((0..n).map(|i| Circle::new(at(0, i), 2, BLACK.mix(start_alpha).filled())))?;
    chart.draw_series((0..n).map(|i| Circle::new(at(points - 1, i), 2, ORANGE.filled())))?;
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

/// Colours a cell of an obstacle background: white where `v` = 0, deepening to a
/// warm grey at `v` = 1 (so trajectories drawn over it stay visible).
fn obstacle_shade(v: f64) -> RGBColor {
    let v = unit(v);
    let mix = |hi: f64, lo: f64| (hi + v * (lo - hi)).round() as u8;
    RGBColor(mix(255.0, 120.0), mix(255.0, 100.0), mix(255.0, 90.0))
}

/// Draws an obstacle cost given on a `k × k` grid of cell centres (the layout of
/// [`grid_points`]) as a shaded background scaled to its maximum.
fn draw_obstacle<DB: DrawingBackend>(
    chart: &mut ChartContext<'_, DB, WindowCoord>,
    q: &[f64],
    k: usize,
    win: Window,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let max = q
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    if max <= 0.0 {
        return Ok(());
    }
    chart
        .draw_series(grid_cells(k, win, |c| obstacle_shade(q[c] / max)))
        .map_err(|e| anyhow!("obstacle background: {e}"))?;
    Ok(())
}

/// An obstacle cost sampled on a `k × k` grid of cell centres over a window (the
/// layout of [`grid_points`]), for the crowd plots' shaded background.
#[derive(Clone, Debug, PartialEq)]
pub struct ObstacleGrid {
    /// The cost at each cell centre, row-major by y then x.
    pub q: Vec<f64>,
    /// Cells per side.
    pub k: usize,
}

impl ObstacleGrid {
    /// Samples `cost` at the centres of a `k × k` grid over `win`.
    pub fn sample(k: usize, win: Window, cost: impl Fn(&[f64]) -> f64) -> Self {
        let q = grid_points(k, win).chunks_exact(2).map(cost).collect();
        ObstacleGrid { q, k }
    }

    fn check(&self) -> Result<()> {
        if self.k == 0 || self.q.len() != self.k * self.k {
            bail!(
                "obstacle grid: {} values for a {} × {} grid",
                self.q.len(),
                self.k,
                self.k
            );
        }
        Ok(())
    }
}

/// Writes `path`: crowd trajectories over the obstacle (drawn as a shaded background
/// scaled to its maximum); `states` is `points × n × 2` (point 0 at t = 0): each particle's path
/// in blue, its start black and its end orange.
pub fn crowd_trajectories_png(
    path: &Path,
    title: &str,
    obstacle: &ObstacleGrid,
    states: &[f64],
    points: usize,
    n: usize,
    win: Window,
) -> Result<()> {
    ensure_font()?;
    obstacle.check()?;
    check_trajectories(states, points, n, "particles")?;
    let root = BitMapBackend::new(path, (620, 620)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = window_chart(&root, title, 20, win)?;
    draw_obstacle(&mut chart, &obstacle.q, obstacle.k, win)?;
    draw_trajectories(&mut chart, states, points, n, 0.6, 0.6)?;
    root.present()?;
    Ok(())
}

/// One panel of [`crowd_density_png`]: the time, the particles' positions (n × 2) and
/// the density ρ_t at each of them (log ρ, n values).
#[derive(Clone, Debug, PartialEq)]
pub struct DensityPanel {
    /// The time t.
    pub t: f64,
    /// Particle positions, row-major n × 2.
    pub points: Vec<f64>,
    /// log ρ_t at each particle.
    pub log_rho: Vec<f64>,
}

/// Writes `path`: the crowd's density over time, one panel per entry of `panels` in a
/// row, each particle coloured (viridis) by its density ρ_t on one scale shared by
/// every panel (labelled with its maximum), over the shaded obstacle.
pub fn crowd_density_png(
    path: &Path,
    title: &str,
    obstacle: &ObstacleGrid,
    panels: &[DensityPanel],
    win: Window,
) -> Result<()> {
    ensure_font()?;
    obstacle.check()?;
    if panels.is_empty() {
        bail!("density over time: no panels");
    }
    for p in panels {
        check_2d("density panel", &p.points)?;
        if p.points.len() != 2 * p.log_rho.len() {
            bail!(
                "density panel at t = {}: {} points, {} densities",
                p.t,
                p.points.len() / 2,
                p.log_rho.len()
            );
        }
    }
    let max = finite_max(panels.iter().flat_map(|p| p.log_rho.iter().copied()));
    if !max.is_finite() {
        bail!("density over time: no finite log-density");
    }
    let rho_max = max.exp();
    let w = 330 * panels.len() as u32;
    let root = BitMapBackend::new(path, (w, 400)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        &format!("{title} (colour: ρ_t / {rho_max:.3})"),
        ("sans-serif", 22),
    )?;
    let areas = root.split_evenly((1, panels.len()));
    for (area, p) in areas.iter().zip(panels) {
        let mut chart = ChartBuilder::on(area)
            .caption(format!("t = {:.2}", p.t), ("sans-serif", 18))
            .margin(8)
            .x_label_area_size(25)
            .y_label_area_size(30)
            .build_cartesian_2d(win.range(), win.range())?;
        chart.configure_mesh().disable_mesh().draw()?;
        draw_obstacle(&mut chart, &obstacle.q, obstacle.k, win)?;
        // Densest particles last, so that they are drawn on top.
        let mut order: Vec<usize> = (0..p.log_rho.len()).collect();
        order.sort_by(|&a, &b| p.log_rho[a].total_cmp(&p.log_rho[b]));
        chart.draw_series(order.into_iter().filter_map(|i| {
            let pt = &p.points[2 * i..2 * i + 2];
            win.contains(pt).then(|| {
                let v = (p.log_rho[i] - max).exp();
                Circle::new((pt[0], pt[1]), 2, viridis(v).filled())
            })
        }))?;
    }
    root.present()?;
    Ok(())
}
