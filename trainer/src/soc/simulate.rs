//! A [`QuadraticProblem`] as the runtime's closed-loop [`Dynamics`]: deployed
//! controllers (`socflow_runtime::controller::Controller::simulate`) roll out the
//! problem they were trained on, one state at a time and without allocation.
//!
//! The formulas are the graph versions' of [`QuadraticProblem`]'s
//! [`ControlProblem`](super::ControlProblem) implementation, evaluated per state:
//! drift f = a(z) + Bu, running cost L = ½uᵀRu + Q(z), terminal cost g(z) (the tests
//! check they agree to 1e-12 in f64).

use socflow_runtime::controller::{Dynamics, SimulateOptions};
use socflow_runtime::error::{check_len, Error as RtError, Result as RtResult};
use socflow_runtime::Real;

use super::quadratic::{
    InitialDistribution, QuadraticProblem, StateCost, StateDrift, TerminalCost,
};

impl QuadraticProblem {
    /// The lengths of every matrix and vector against d and k, in O(1): the problem's
    /// fields are public, and the per-state maps below index them.
    fn check_shapes(&self) -> RtResult<()> {
        let (d, k) = (self.dim, self.control_dim);
        if d == 0 || k == 0 {
            return Err(RtError::InvalidArgument(format!(
                "SOC problem: dimensions d = {d}, k = {k} (need ≥ 1)"
            )));
        }
        let bad = |what: &str, found: usize, expected: usize| {
            Err(RtError::InvalidArgument(format!(
                "SOC problem: {what} has {found} values, expected {expected}"
            )))
        };
        if self.input.len() != d * k {
            return bad("input matrix B", self.input.len(), d * k);
        }
        if self.control_cost.len() != k * k {
            return bad("control cost R", self.control_cost.len(), k * k);
        }
        if let StateDrift::Linear { matrix } = &self.drift {
            if matrix.len() != d * d {
                return bad("drift matrix A", matrix.len(), d * d);
            }
        }
        if let StateCost::Quadratic { matrix, center, .. } = &self.state_cost {
            if matrix.len() != d * d {
                return bad("state cost matrix Q", matrix.len(), d * d);
            }
            if center.len() != d {
                return bad("state cost center", center.len(), d);
            }
        }
        match &self.terminal {
            TerminalCost::Quadratic { matrix, center } => {
                if matrix.len() != d * d {
                    return bad("terminal cost matrix", matrix.len(), d * d);
                }
                if center.len() != d {
                    return bad("terminal cost center", center.len(), d);
                }
            }
            TerminalCost::LogRadial { center, .. } => {
                if center.len() != d {
                    return bad("terminal cost center", center.len(), d);
                }
            }
        }
        Ok(())
    }
}

/// ½(z − c)ᵀM(z − c) for a d × d row-major M.
fn half_quadratic_form<T: Real>(z: &[T], matrix: &[f64], center: &[f64]) -> T {
    let d = z.len();
    let mut s = T::zero();
    for ((zi, ci), m) in z.iter().zip(center).zip(matrix.chunks_exact(d)) {
        let row: T = m
            .iter()
            .zip(z.iter().zip(center))
            .map(|(mij, (zj, cj))| T::of(*mij) * (*zj - T::of(*cj)))
            .sum();
        s += (*zi - T::of(*ci)) * row;
    }
    T::of(0.5) * s
}

impl<T: Real> Dynamics<T> for QuadraticProblem {
    fn state_dim(&self) -> usize {
        self.dim
    }

    fn control_dim(&self) -> usize {
        self.control_dim
    }

    /// f(z, u) = a(z) + Bu.
    fn drift(&self, _s: T, z: &[T], u: &[T], out: &mut [T]) -> RtResult<()> {
        self.check_shapes()?;
        let (d, k) = (self.dim, self.control_dim);
        check_len("SOC drift state", z.len(), d)?;
        check_len("SOC drift control", u.len(), k)?;
        check_len("SOC drift output", out.len(), d)?;
        for (i, o) in out.iter_mut().enumerate() {
            let mut v = T::zero();
            for (l, ul) in u.iter().enumerate() {
                v += T::of(self.input[i * k + l]) * *ul;
            }
            if let StateDrift::Linear { matrix } = &self.drift {
                for (j, zj) in z.iter().enumerate() {
                    v += T::of(matrix[i * d + j]) * *zj;
                }
            }
            *o = v;
        }
        Ok(())
    }

    /// L(z, u) = ½uᵀRu + Q(z).
    fn running_cost(&self, _s: T, z: &[T], u: &[T]) -> RtResult<T> {
        self.check_shapes()?;
        let (d, k) = (self.dim, self.control_dim);
        check_len("SOC running cost state", z.len(), d)?;
        check_len("SOC running cost control", u.len(), k)?;
        let mut uru = T::zero();
        for (ui, r) in u.iter().zip(self.control_cost.chunks_exact(k)) {
            let row: T = r.iter().zip(u).map(|(rij, uj)| T::of(*rij) * *uj).sum();
            uru += *ui * row;
        }
        let control = T::of(0.5) * uru;
        Ok(match &self.state_cost {
            StateCost::Zero => control,
            StateCost::Constant { value } => control + T::of(*value),
            StateCost::Quadratic {
                matrix,
                center,
                offset,
            } => control + (half_quadratic_form(z, matrix, center) + T::of(*offset)),
        })
    }

    /// g(z): ½(z − c)ᵀQ_T(z − c) or w·ln(½(1 + ‖z − c‖²)).
    fn terminal_cost(&self, z: &[T]) -> RtResult<T> {
        self.check_shapes()?;
        check_len("SOC terminal cost state", z.len(), self.dim)?;
        Ok(match &self.terminal {
            TerminalCost::Quadratic { matrix, center } => half_quadratic_form(z, matrix, center),
            TerminalCost::LogRadial { weight, center } => {
                let sq: T = z
                    .iter()
                    .zip(center)
                    .map(|(zi, ci)| {
                        let v = *zi - T::of(*ci);
                        v * v
                    })
                    .sum();
                T::of(*weight) * (T::of(0.5) * sq + T::of(0.5)).ln()
            }
        })
    }
}

/// Options for rolling out `problem`'s closed loop with the runtime controller on
/// [0, T] with the problem's noise σ: `paths` Euler–Maruyama paths of `steps` steps
/// from the initial distribution's mean (the runtime starts every path at one state;
/// for a point distribution that is the problem's own start), Brownian increments
/// keyed by `seed`.
pub fn rollout_options(
    problem: &QuadraticProblem,
    steps: usize,
    paths: usize,
    seed: u64,
) -> SimulateOptions<f64> {
    SimulateOptions {
        x0: problem.initial.mean().to_vec(),
        t0: 0.0,
        t1: problem.horizon,
        steps,
        sigma: problem.sigma,
        paths,
        seed,
        keep_trajectories: false,
    }
}

/// Whether every path of `problem` starts at one state (a point initial distribution),
/// so that a roll-out from [`rollout_options`] samples the problem's own cost.
pub fn starts_at_a_point(problem: &QuadraticProblem) -> bool {
    matches!(problem.initial, InitialDistribution::Point { .. })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autodiff::{Cpu, DType, Graph};
    use crate::soc::ControlProblem;

    use socflow_testkit::Rng;

    /// A symmetric positive definite n × n matrix: GGᵀ + I.
    fn spd(v: &mut Rng, n: usize) -> Vec<f64> {
        let g = v.vec_sym(n * n, 1.0);
        let mut m = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                m[i * n + j] = (0..n).map(|l| g[i * n + l] * g[j * n + l]).sum::<f64>()
                    + if i == j { 1.0 } else { 0.0 };
            }
        }
        m
    }

    /// Problems covering every variant: d = 3, k = 2, with full matrices.
    fn problems() -> Vec<QuadraticProblem> {
        let (d, k) = (3, 2);
        let mut v = Rng(7);
        let base = QuadraticProblem::linear_quadratic(
            v.vec_sym(d * d, 1.0),
            v.vec_sym(d * k, 1.0),
            spd(&mut v, k),
            spd(&mut v, d),
            spd(&mut v, d),
            0.3,
            1.5,
            v.vec_sym(d, 1.0),
        )
        .unwrap();
        let mut quadratic_centered = base.clone();
        quadratic_centered.state_cost = StateCost::Quadratic {
            matrix: spd(&mut v, d),
            center: v.vec_sym(d, 2.0),
            offset: 0.7,
        };
        quadratic_centered.terminal = TerminalCost::Quadratic {
            matrix: spd(&mut v, d),
            center: v.vec_sym(d, 2.0),
        };
        let mut log_radial = base.clone();
        log_radial.drift = StateDrift::Zero;
        log_radial.state_cost = StateCost::Constant { value: -0.4 };
        log_radial.terminal = TerminalCost::LogRadial {
            weight: 3.5,
            center: v.vec_sym(d, 2.0),
        };
        let mut zero_cost = base.clone();
        zero_cost.state_cost = StateCost::Zero;
        vec![
            base,
            quadratic_centered,
            log_radial,
            zero_cost,
            QuadraticProblem::hjb100(),
            QuadraticProblem::shifted_target(1000.0),
        ]
    }

    #[test]
    fn per_state_maps_agree_with_the_graph_versions() {
        let mut v = Rng(11);
        let rows = 5;
        for p in problems() {
            p.validate().unwrap();
            let (d, k) = (p.dim, p.control_dim);
            let z = v.vec_sym(rows * d, 3.0);
            let u = v.vec_sym(rows * k, 2.0);
            let mut g = Graph::new(Cpu::new());
            let tv = g.leaf_f64(1, 1, &[0.25], DType::F64, false).unwrap();
            let zv = g.leaf_f64(rows, d, &z, DType::F64, false).unwrap();
            let uv = g.leaf_f64(rows, k, &u, DType::F64, false).unwrap();
            let f = ControlProblem::<Cpu>::drift(&p, &mut g, tv, zv, uv).unwrap();
            let l = ControlProblem::<Cpu>::running_cost(&p, &mut g, tv, zv, uv).unwrap();
            let gt = ControlProblem::<Cpu>::terminal_cost(&p, &mut g, zv).unwrap();
            let (f, l, gt) = (
                g.to_f64(f).unwrap(),
                g.to_f64(l).unwrap(),
                g.to_f64(gt).unwrap(),
            );
            let mut out = vec![0.0; d];
            for r in 0..rows {
                let zr = &z[r * d..(r + 1) * d];
                let ur = &u[r * k..(r + 1) * k];
                Dynamics::<f64>::drift(&p, 0.25, zr, ur, &mut out).unwrap();
                for (a, b) in out.iter().zip(&f[r * d..(r + 1) * d]) {
                    assert!(
                        (a - b).abs() <= 1e-12 * (1.0 + b.abs()),
                        "{}: {a} {b}",
                        p.name
                    );
                }
                let lr = Dynamics::<f64>::running_cost(&p, 0.25, zr, ur).unwrap();
                assert!(
                    (lr - l[r]).abs() <= 1e-12 * (1.0 + l[r].abs()),
                    "{}",
                    p.name
                );
                let gr = Dynamics::<f64>::terminal_cost(&p, zr).unwrap();
                assert!(
                    (gr - gt[r]).abs() <= 1e-12 * (1.0 + gt[r].abs()),
                    "{}",
                    p.name
                );
                // Real values, not zeros by accident.
                assert!(
                    lr.abs() > 1e-3 && out.iter().any(|x| x.abs() > 1e-3),
                    "{}",
                    p.name
                );
            }
        }
    }

    #[test]
    fn closed_forms_at_hand_picked_points() {
        // f = 2u, L = ‖u‖², g = ln(½(1 + ‖z‖²)) (HJB-100): at z = 1·e₀, u = 0.5·1.
        let p = QuadraticProblem::hjb100();
        let mut z = vec![0.0; 100];
        z[0] = 1.0;
        let u = vec![0.5; 100];
        let mut f = vec![0.0; 100];
        Dynamics::<f64>::drift(&p, 0.0, &z, &u, &mut f).unwrap();
        assert!(f.iter().all(|v| (v - 1.0).abs() < 1e-15));
        let l = Dynamics::<f64>::running_cost(&p, 0.0, &z, &u).unwrap();
        assert!((l - 25.0).abs() < 1e-12, "{l}");
        let g = Dynamics::<f64>::terminal_cost(&p, &z).unwrap();
        assert!((g - 0.0).abs() < 1e-15, "{g}");
        // f32 agrees with f64 to single precision.
        let z32: Vec<f32> = z.iter().map(|v| *v as f32 + 0.5).collect();
        let z64: Vec<f64> = z32.iter().map(|v| *v as f64).collect();
        let g32 = Dynamics::<f32>::terminal_cost(&p, &z32).unwrap();
        let g64 = Dynamics::<f64>::terminal_cost(&p, &z64).unwrap();
        assert!(((g32 as f64) - g64).abs() < 1e-5 * g64.abs(), "{g32} {g64}");
    }

    #[test]
    fn bad_lengths_are_errors_not_panics() {
        let mut p = problems().remove(0);
        let mut out = vec![0.0; 3];
        assert!(Dynamics::<f64>::drift(&p, 0.0, &[0.0; 2], &[0.0; 2], &mut out).is_err());
        assert!(Dynamics::<f64>::running_cost(&p, 0.0, &[0.0; 3], &[0.0; 3]).is_err());
        let mut empty = p.clone();
        empty.dim = 0;
        assert!(Dynamics::<f64>::terminal_cost(&empty, &[]).is_err());
        p.input.pop();
        let e = Dynamics::<f64>::drift(&p, 0.0, &[0.0; 3], &[0.0; 2], &mut out).unwrap_err();
        assert!(e.to_string().contains("input matrix B"), "{e}");
        assert!(Dynamics::<f64>::terminal_cost(&p, &[0.0; 3]).is_err());
    }

    #[test]
    fn rollout_options_follow_the_problem() {
        let p = QuadraticProblem::shifted_target(1000.0);
        let o = rollout_options(&p, 50, 8, 3);
        assert_eq!(o.x0, vec![0.0; 100]);
        assert_eq!((o.t0, o.t1, o.steps, o.paths, o.seed), (0.0, 1.0, 50, 8, 3));
        assert!((o.sigma - 0.4 * std::f64::consts::SQRT_2).abs() < 1e-15);
        assert!(starts_at_a_point(&p));
    }
}
