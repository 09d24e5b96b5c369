//! `socflow likelihood`: the mean negative log-likelihood of a data file under a
//! density model (velocity, potential, or score model through its probability-flow
//! ODE), with the exact divergence or Hutchinson's estimate, and its standard error
//! over the data points.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use socflow_runtime::artifact::ModelKind;
use socflow_runtime::controller::mean_and_standard_error;
use socflow_runtime::model::Model;
use socflow_runtime::npy::write_npy;
use socflow_runtime::ode::{AdaptiveOptions, OdeOptions, OdeSolver, StepSize};
use socflow_runtime::Real;
use socflow_trainer::cnf::Noise;
use socflow_trainer::data::load_dataset;
use socflow_trainer::likelihood::{log_likelihood, Hutchinson, LikelihoodOptions};

use crate::{Precision, SolverArg};

/// Probe distributions of `--noise`.
#[derive(Clone, Copy, Debug, clap::ValueEnum, PartialEq, Eq)]
pub enum NoiseArg {
    /// Independent ±1 entries (the smaller variance).
    Rademacher,
    /// Standard normal entries.
    Gaussian,
}

/// Arguments of `socflow likelihood`.
#[derive(clap::Args, Debug)]
pub struct LikelihoodArgs {
    /// The model file: a velocity or potential model, or a score (diffusion) model,
    /// whose density is its probability-flow ODE's from eps to the prior's time.
    model: PathBuf,
    /// The data points, in data coordinates (n × d, .npy or .csv).
    #[arg(long)]
    data: PathBuf,
    /// Estimate the divergence with this many Hutchinson probes per point instead of
    /// computing it exactly (the default).
    #[arg(long, value_name = "PROBES")]
    hutchinson: Option<usize>,
    /// Distribution of the Hutchinson probes.
    #[arg(long, value_enum, default_value_t = NoiseArg::Rademacher)]
    noise: NoiseArg,
    /// Seed of the Hutchinson probes.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Integrator.
    #[arg(long, value_enum, default_value_t = SolverArg::Rk4)]
    solver: SolverArg,
    /// Steps of a fixed-step integrator.
    #[arg(long, default_value_t = 32)]
    steps: usize,
    /// Relative tolerance (dopri5).
    #[arg(long, default_value_t = 1e-5)]
    rtol: f64,
    /// Absolute tolerance (dopri5).
    #[arg(long, default_value_t = 1e-5)]
    atol: f64,
    /// Precision of evaluation.
    #[arg(long, value_enum, default_value_t = Precision::F64)]
    precision: Precision,
    /// Also write each point's log-likelihood log p(x) to this .npy file.
    #[arg(short = 'o', long)]
    output: Option<PathBuf>,
}

/// Runs the subcommand.
pub fn run(args: &LikelihoodArgs) -> Result<()> {
    match args.precision {
        Precision::F32 => run_in::<f32>(args),
        Precision::F64 => run_in::<f64>(args),
    }
}

fn run_in<T: Real>(args: &LikelihoodArgs) -> Result<()> {
    let model = Model::<T>::load(&args.model)
        .with_context(|| format!("cannot load model {}", args.model.display()))?;
    let data = load_dataset(&args.data)
        .with_context(|| format!("cannot load data {}", args.data.display()))?;
    let d = model.dim();
    if data.d != d {
        bail!(
            "{} has points of dimension {}, the model's state dimension is {d}",
            args.data.display(),
            data.d
        );
    }
    let ode = match args.solver {
        SolverArg::Dopri5 => OdeOptions {
            solver: OdeSolver::Dopri5,
            step_size: StepSize::Adaptive(AdaptiveOptions::new(T::of(args.rtol), T::of(args.atol))),
        },
        fixed => {
            if args.steps == 0 {
                bail!("--steps must be at least 1");
            }
            let solver = match fixed {
                SolverArg::Euler => OdeSolver::Euler,
                SolverArg::Heun => OdeSolver::Heun,
                _ => OdeSolver::Rk4,
            };
            OdeOptions::fixed(solver, args.steps)
        }
    };
    let mut opts = LikelihoodOptions::new(ode);
    let method = match args.hutchinson {
        None => "exact divergence".to_string(),
        Some(probes) => {
            let noise = match args.noise {
                NoiseArg::Rademacher => Noise::Rademacher,
                NoiseArg::Gaussian => Noise::Gaussian,
            };
            opts = opts.with_hutchinson(Hutchinson {
                noise,
                ..Hutchinson::new(probes, args.seed)
            });
            format!(
                "Hutchinson, {probes} {} probe{} per point, seed {}",
                match noise {
                    Noise::Rademacher => "Rademacher",
                    Noise::Gaussian => "Gaussian",
                },
                if probes == 1 { "" } else { "s" },
                args.seed
            )
        }
    };
    let mut solve = match args.solver {
        SolverArg::Dopri5 => format!("dopri5 rtol {:e} atol {:e}", args.rtol, args.atol),
        other => format!(
            "{} {} steps",
            format!("{other:?}").to_lowercase(),
            args.steps
        ),
    };
    if model.kind() == ModelKind::Score {
        // The density flow log_likelihood integrates (DensityFlow::of_model).
        let vp = model.vpsde()?;
        solve = format!(
            "probability-flow ODE from t = {} to {}, {solve}",
            vp.sde().eps,
            vp.t_prior()
        );
    }
    let lp = log_likelihood(&model, &data.x, data.n, &opts)?;
    let nll: Vec<f64> = lp.iter().map(|v| -v).collect();
    let (mean, se) = mean_and_standard_error(&nll);
    if let Some(path) = &args.output {
        write_npy(path, &[data.n], &lp)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    println!(
        "mean NLL {mean:.6} ± {se:.6} (standard error over {} points; {method}; {solve}; {})",
        data.n,
        T::NAME
    );
    if !mean.is_finite() {
        bail!("the log-likelihood is not finite");
    }
    Ok(())
}
