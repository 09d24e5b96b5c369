//! The 2-D toy distributions of FFJORD and OT-Flow (`toy_data.py`, `inf_train_gen`).
//!
//! Each [`Toy`] draws `n` points (row-major, `n×2`) as a pure function of
//! `(n, seed)`: the formulas are those of FFJORD's `toy_data.py` (which OT-Flow
//! copies), including their constants and scalings (the sklearn generators they
//! call are written out), with numpy's generator replaced by the runtime's
//! counter-based one on [`TOY_STREAM`]. Normals come from
//! [`Brownian::stream_normals`] at `(TOY_STREAM, sample = row, step = 0)`; uniforms and
//! integers from [`Draws`] at `(TOY_STREAM, sample, step = 1)`; shuffles from
//! [`shuffle_rows`] at step 2.
//!
//! Below, `U` is a uniform on (0, 1), `B(k)` a uniform integer on `0..k`, `Z` a
//! standard normal, all independent, and `linspace` is numpy's.
//!
//! | name | formula |
//! |---|---|
//! | `8gaussians` | `(4·c_B(8) + 0.5·(Z, Z)) / 1.414`, centres c on the unit circle at multiples of 45° |
//! | `checkerboard` | `x₁ = 4U − 2`, `x₂ = U − 2B(2) + (⌊x₁⌋ mod 2)`, point `2·(x₁, x₂)` |
//! | `moons` | sklearn `make_moons(noise=0.1)`, then `2x + (−1, −0.2)` |
//! | `circles` | sklearn `make_circles(factor=0.5, noise=0.08)`, then `3x` |
//! | `swissroll` | `t = 1.5π(1 + 2U)`, `(t cos t + Z, t sin t + Z) / 5` (sklearn `make_swiss_roll(noise=1)`, columns 0 and 2) |
//! | `2spirals` | `s = 3π√U`, `b = (−s cos s + U/2, s sin s + U/2)`, points `±b/3 + 0.1·(Z, Z)` |
//! | `pinwheel` | 5 arms: `f = (1 + 0.3Z, 0.1Z)`, `a = 2πk/5 + 0.25·e^{f₁}`, point `2·(f₁ cos a + f₂ sin a, −f₁ sin a + f₂ cos a)` |
//! | `rings` | 4 circles of radii 3, 2.25, 1.5, 0.75 (`linspace` angles), `+ 0.08·(Z, Z)` |
//!
//! Where FFJORD's counts do not divide `n` it would return fewer than `n` points
//! (`2spirals`: 2⌊n/2⌋, `pinwheel`: 5⌊n/5⌋); here every toy returns exactly `n`:
//! `2spirals` pairs each base point b with −b in rows 2k and 2k+1 (FFJORD stacks the
//! `+b` arm over the `−b` arm; the set of points is the same), the last row of an odd
//! `n` has only its `+b`; `pinwheel` gives arm `r mod 5` to pre-shuffle row `r`. The
//! i.i.d. toys (`8gaussians`, `checkerboard`, `swissroll`, `2spirals`) draw row `i`
//! from row-`i` addresses only, so `sample(n)` is a prefix of `sample(n + k)`; the
//! others lay out a deterministic grid for `n`, shuffle it and add noise, as sklearn
//! and FFJORD do.

use std::f64::consts::{FRAC_1_SQRT_2, PI};
use std::fmt;
use std::str::FromStr;

use socflow_runtime::brownian::{Brownian, MAX_SAMPLE};

use super::rng::{shuffle_rows, Draws, TOY_STREAM};
use crate::error::{Error, Result};

/// `step` tag of normal draws.
const STEP_NORMAL: u64 = 0;
/// `step` tag of uniform and integer draws.
const STEP_UNIFORM: u64 = 1;
/// `step` tag of the row shuffle.
const STEP_SHUFFLE: u64 = 2;

/// A 2-D toy distribution of FFJORD / OT-Flow (see the module docs for formulas).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Toy {
    /// `8gaussians`: eight Gaussians (std 0.5/1.414) centred on a circle of radius
    /// 4/1.414.
    EightGaussians,
    /// `checkerboard`: uniform on the 8 dark squares of a 4×4 board on [−4, 4]².
    Checkerboard,
    /// `moons`: two interleaved half circles.
    Moons,
    /// `circles`: two concentric circles, radii 3 and 1.5.
    Circles,
    /// `swissroll`: the swiss roll, seen from above.
    SwissRoll,
    /// `2spirals`: two interleaved spirals.
    TwoSpirals,
    /// `pinwheel`: five curved arms.
    Pinwheel,
    /// `rings`: four concentric circles, radii 3, 2.25, 1.5 and 0.75.
    Rings,
}

impl Toy {
    /// Every toy, in the order of the module docs.
    pub const ALL: [Toy; 8] = [
        Toy::EightGaussians,
        Toy::Checkerboard,
        Toy::Moons,
        Toy::Circles,
        Toy::SwissRoll,
        Toy::TwoSpirals,
        Toy::Pinwheel,
        Toy::Rings,
    ];

    /// The name FFJORD and OT-Flow use (`"8gaussians"`, `"2spirals"`, …).
    pub fn name(self) -> &'static str {
        match self {
            Toy::EightGaussians => "8gaussians",
            Toy::Checkerboard => "checkerboard",
            Toy::Moons => "moons",
            Toy::Circles => "circles",
            Toy::SwissRoll => "swissroll",
            Toy::TwoSpirals => "2spirals",
            Toy::Pinwheel => "pinwheel",
            Toy::Rings => "rings",
        }
    }

    /// The dimension of the points: 2.
    pub fn dim(self) -> usize {
        2
    }

    /// `n` points (row-major, `n×2`) drawn with `seed`; the same `(n, seed)` always
    /// gives the same bits.
    ///
    /// Errors: a limit error when `n − 1` exceeds the generator's sample addresses
    /// ([`MAX_SAMPLE`]).
    pub fn sample(self, n: usize, seed: u64) -> Result<Vec<f64>> {
        if n > 1 && (n - 1) as u64 > MAX_SAMPLE {
            return Err(socflow_runtime::Error::Limit(format!(
                "{n} toy samples exceed the generator's {MAX_SAMPLE}"
            ))
            .into());
        }
        let mut x = vec![0.0; 2 * n];
        let g = Brownian::new(seed);
        match self {
            Toy::EightGaussians => eight_gaussians(&mut x, seed, g)?,
            Toy::Checkerboard => checkerboard(&mut x, seed)?,
            Toy::Moons => moons(&mut x, seed, g)?,
            Toy::Circles => circles(&mut x, seed, g)?,
            Toy::SwissRoll => swiss_roll(&mut x, seed, g)?,
            Toy::TwoSpirals => two_spirals(&mut x, seed, g)?,
            Toy::Pinwheel => pinwheel(&mut x, seed, g)?,
            Toy::Rings => rings(&mut x, seed, g)?,
        }
        Ok(x)
    }
}

impl fmt::Display for Toy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Toy {
    type Err = Error;

    /// Parses a toy's [`name`](Toy::name), ignoring ASCII case and surrounding space.
    fn from_str(s: &str) -> Result<Self> {
        let key = s.trim();
        Toy::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(key))
            .ok_or_else(|| Error::UnknownName {
                kind: "toy data set",
                name: s.to_string(),
                valid: Toy::ALL.map(Toy::name).join(", "),
            })
    }
}

/// Two standard normals of row `i`.
fn normals2(g: Brownian, i: usize) -> Result<[f64; 2]> {
    let mut z = [0.0; 2];
    g.stream_normals(TOY_STREAM, i as u64, STEP_NORMAL, &mut z)?;
    Ok(z)
}

/// The uniform/integer draws of `sample`.
fn draws(seed: u64, sample: usize) -> Result<Draws> {
    Draws::new(seed, TOY_STREAM, sample as u64, STEP_UNIFORM)
}

/// Adds `scale·(Z, Z)` to every row (row `i` from its own address).
fn add_noise(x: &mut [f64], g: Brownian, scale: f64) -> Result<()> {
    for (i, p) in x.chunks_exact_mut(2).enumerate() {
        let z = normals2(g, i)?;
        p[0] += scale * z[0];
        p[1] += scale * z[1];
    }
    Ok(())
}

fn shuffle(x: &mut [f64], seed: u64) -> Result<()> {
    shuffle_rows(x, x.len() / 2, 2, seed, TOY_STREAM, STEP_SHUFFLE)
}

/// numpy's `linspace(start, stop, num, endpoint)[k]`: `start + k·(stop − start)/div`,
/// `div = num − 1` with the endpoint (whose last value is `stop` exactly), `num`
/// without.
fn linspace(start: f64, stop: f64, num: usize, endpoint: bool, k: usize) -> f64 {
    let div = if endpoint { num.saturating_sub(1) } else { num };
    if div == 0 {
        return start;
    }
    if endpoint && k + 1 == num {
        return stop;
    }
    k as f64 * ((stop - start) / div as f64) + start
}

fn eight_gaussians(x: &mut [f64], seed: u64, g: Brownian) -> Result<()> {
    const S: f64 = 4.0;
    const C: [(f64, f64); 8] = [
        (1.0, 0.0),
        (-1.0, 0.0),
        (0.0, 1.0),
        (0.0, -1.0),
        (FRAC_1_SQRT_2, FRAC_1_SQRT_2),
        (FRAC_1_SQRT_2, -FRAC_1_SQRT_2),
        (-FRAC_1_SQRT_2, FRAC_1_SQRT_2),
        (-FRAC_1_SQRT_2, -FRAC_1_SQRT_2),
    ];
    for (i, p) in x.chunks_exact_mut(2).enumerate() {
        let (cx, cy) = C[draws(seed, i)?.below(8) as usize];
        let z = normals2(g, i)?;
        // FFJORD divides by 1.414, not √2.
        p[0] = (0.5 * z[0] + S * cx) / 1.414;
        p[1] = (0.5 * z[1] + S * cy) / 1.414;
    }
    Ok(())
}

fn checkerboard(x: &mut [f64], seed: u64) -> Result<()> {
    for (i, p) in x.chunks_exact_mut(2).enumerate() {
        let mut r = draws(seed, i)?;
        let x1 = r.uniform() * 4.0 - 2.0;
        let x2_ = r.uniform() - r.below(2) as f64 * 2.0;
        // numpy's `%` on floats takes the sign of the divisor, as rem_euclid does.
        let x2 = x2_ + x1.floor().rem_euclid(2.0);
        p[0] = 2.0 * x1;
        p[1] = 2.0 * x2;
    }
    Ok(())
}

fn moons(x: &mut [f64], seed: u64, g: Brownian) -> Result<()> {
    let n = x.len() / 2;
    let n_out = n / 2;
    let n_in = n - n_out;
    for (k, p) in x.chunks_exact_mut(2).enumerate() {
        if k < n_out {
            let t = linspace(0.0, PI, n_out, true, k);
            p[0] = t.cos();
            p[1] = t.sin();
        } else {
            let t = linspace(0.0, PI, n_in, true, k - n_out);
            p[0] = 1.0 - t.cos();
            p[1] = 1.0 - t.sin() - 0.5;
        }
    }
    shuffle(x, seed)?;
    add_noise(x, g, 0.1)?;
    for p in x.chunks_exact_mut(2) {
        p[0] = p[0] * 2.0 - 1.0;
        p[1] = p[1] * 2.0 - 0.2;
    }
    Ok(())
}

fn circles(x: &mut [f64], seed: u64, g: Brownian) -> Result<()> {
    let n = x.len() / 2;
    let n_out = n / 2;
    let n_in = n - n_out;
    for (k, p) in x.chunks_exact_mut(2).enumerate() {
        let (t, r) = if k < n_out {
            (linspace(0.0, 2.0 * PI, n_out, false, k), 1.0)
        } else {
            (linspace(0.0, 2.0 * PI, n_in, false, k - n_out), 0.5)
        };
        p[0] = t.cos() * r;
        p[1] = t.sin() * r;
    }
    shuffle(x, seed)?;
    add_noise(x, g, 0.08)?;
    for v in x.iter_mut() {
        *v *= 3.0;
    }
    Ok(())
}

fn rings(x: &mut [f64], seed: u64, g: Brownian) -> Result<()> {
    let n = x.len() / 2;
    let q = n / 4;
    // (count, radius) from the outer ring in; the innermost takes the remainder.
    let rings = [(q, 1.0), (q, 0.75), (q, 0.5), (n - 3 * q, 0.25)];
    let mut rows = x.chunks_exact_mut(2);
    for (count, r) in rings {
        for (k, p) in (&mut rows).take(count).enumerate() {
            let t = linspace(0.0, 2.0 * PI, count, false, k);
            p[0] = t.cos() * r * 3.0;
            p[1] = t.sin() * r * 3.0;
        }
    }
    shuffle(x, seed)?;
    add_noise(x, g, 0.08)
}

fn swiss_roll(x: &mut [f64], seed: u64, g: Brownian) -> Result<()> {
    for (i, p) in x.chunks_exact_mut(2).enumerate() {
        let t = 1.5 * PI * (1.0 + 2.0 * draws(seed, i)?.uniform());
        let z = normals2(g, i)?;
        p[0] = (t * t.cos() + z[0]) / 5.0;
        p[1] = (t * t.sin() + z[1]) / 5.0;
    }
    Ok(())
}

fn two_spirals(x: &mut [f64], seed: u64, g: Brownian) -> Result<()> {
    for (i, p) in x.chunks_exact_mut(2).enumerate() {
        // Rows 2k and 2k+1 share base point k, with opposite signs.
        let mut r = draws(seed, i / 2)?;
        let s = r.uniform().sqrt() * 540.0 * (2.0 * PI) / 360.0;
        let bx = -s.cos() * s + r.uniform() * 0.5;
        let by = s.sin() * s + r.uniform() * 0.5;
        let sign = if i % 2 == 0 { 1.0 } else { -1.0 };
        let z = normals2(g, i)?;
        p[0] = sign * bx / 3.0 + z[0] * 0.1;
        p[1] = sign * by / 3.0 + z[1] * 0.1;
    }
    Ok(())
}

fn pinwheel(x: &mut [f64], seed: u64, g: Brownian) -> Result<()> {
    const RADIAL_STD: f64 = 0.3;
    const TANGENTIAL_STD: f64 = 0.1;
    const CLASSES: usize = 5;
    const RATE: f64 = 0.25;
    for (r, p) in x.chunks_exact_mut(2).enumerate() {
        let arm = linspace(0.0, 2.0 * PI, CLASSES, false, r % CLASSES);
        let z = normals2(g, r)?;
        let f0 = z[0] * RADIAL_STD + 1.0;
        let f1 = z[1] * TANGENTIAL_STD;
        let a = arm + RATE * f0.exp();
        let (s, c) = a.sin_cos();
        // features · [[cos, −sin], [sin, cos]] (FFJORD's einsum "ti,tij->tj").
        p[0] = 2.0 * (f0 * c + f1 * s);
        p[1] = 2.0 * (-f0 * s + f1 * c);
    }
    shuffle(x, seed)
}
