//! NeuralSOC on the built-in 100-D problems: trains Φ_θ and prints the learned value
//! Φ(0, z₀), the closed-loop cost on validation paths and the time per iteration.
//!
//! `cargo run --release --example neuralsoc -- [hjb100|shifted1|shifted1000] [ITERATIONS]
//! [--brownian] [--m M] [--batch B] [--steps N] [--lr LR]`

use socflow_trainer::optim::{AdamConfig, Schedule};
use socflow_trainer::soc::{train_soc, LossWeights, QuadraticProblem, Sampling, SocConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let name = args.first().map(String::as_str).unwrap_or("hjb100");
    let iterations: u64 = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(500);
    let flag = |f: &str| -> Option<String> {
        args.iter()
            .position(|a| a == f)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let problem = match name {
        "hjb100" => QuadraticProblem::hjb100(),
        "shifted1" => QuadraticProblem::shifted_target(1.0),
        "shifted1000" => QuadraticProblem::shifted_target(1000.0),
        other => return Err(format!("unknown problem {other}").into()),
    };
    let lr: f64 = flag("--lr").map(|s| s.parse()).transpose()?.unwrap_or(0.01);
    let config = SocConfig {
        m: flag("--m").map(|s| s.parse()).transpose()?.unwrap_or(64),
        n_th: 2,
        steps: flag("--steps").map(|s| s.parse()).transpose()?.unwrap_or(20),
        batch_size: flag("--batch").map(|s| s.parse()).transpose()?.unwrap_or(64),
        iterations,
        optimizer: AdamConfig::adam(lr),
        schedule: Schedule::Step {
            every: (iterations / 3).max(1),
            factor: 0.3,
        },
        sampling: if args.iter().any(|a| a == "--brownian") {
            Sampling::Brownian
        } else {
            Sampling::Pmp
        },
        weights: match flag("--w") {
            Some(w) => {
                let v: Vec<f64> = w.split(',').map(str::parse).collect::<Result<_, _>>()?;
                if v.len() != 5 {
                    return Err("--w takes five weights: control,hjb,terminal,gradient,bsde".into());
                }
                LossWeights {
                    control: v[0],
                    hjb: v[1],
                    terminal: v[2],
                    terminal_gradient: v[3],
                    bsde: v[4],
                }
            }
            None => LossWeights::default(),
        },
        validate_every: (iterations / 10).max(1),
        validation_paths: 512,
        ..SocConfig::default()
    };
    let start = std::time::Instant::now();
    let trained = train_soc(&problem, &config, &mut |p| {
        if let Some(v) = p.validation {
            println!(
                "it {:5}  loss {:10.4}  val cost {:10.4}  Phi(0,z0) {:.6}  term {:.4}  bsde {:.4}  {:.3} s/it",
                p.iteration,
                p.costs.loss,
                v.costs.cost,
                v.initial_value,
                v.costs.terminal,
                v.costs.bsde,
                p.seconds
            );
        }
    })?;
    let v = trained.validation.last().ok_or("no validation")?;
    println!(
        "{name}: Phi(0,z0) = {:.6}, closed-loop cost {:.4}, {:.1} s",
        v.initial_value,
        v.costs.cost,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
