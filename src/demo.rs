//! `socflow demo`: the main job a newcomer runs.
//!
//! Until the trainer lands, the demo is a tour of the runtime on a model whose answer
//! is known in closed form: an OT-Flow potential Φ(x) = ½ xᵀPx (the optimal-transport
//! potential between N(0, e^{2P}) and N(0, I)). It writes the model file, prints its
//! card, samples it with RK4 and exact log-densities, checks the samples against the
//! closed form, and times the feedback controller.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{ensure, Result};
use socflow_runtime::artifact::{Artifact, Provenance, StorageDtype};
use socflow_runtime::model::Model;
use socflow_runtime::nn::OtFlowParams;
use socflow_runtime::npy::write_npy;
use socflow_runtime::ode::{OdeOptions, OdeSolver};
use socflow_runtime::sampler::{Sampler, SamplerOptions};

/// Arguments of `socflow demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Directory for the demo's files.
    #[arg(long, default_value = "socflow-demo")]
    pub out: PathBuf,
    /// Number of samples.
    #[arg(short = 'n', long, default_value_t = 20_000)]
    pub n: usize,
}

/// Runs the demo.
pub fn run(args: &DemoArgs) -> Result<()> {
    ensure!(
        args.n >= 100,
        "-n must be at least 100 for the statistics to mean anything"
    );
    std::fs::create_dir_all(&args.out)?;
    // P = Rᵀ diag(p) R with a rotation R: the data covariance e^{2P} is correlated.
    let (p1, p2, angle) = (0.6f64, 0.3f64, 0.5f64);
    let (c, s) = (angle.cos(), angle.sin());
    let rot = [[c, s], [-s, c]];
    // A (r × (d+1)) with AᵀA = [[P, 0], [0, 0]]; w = 0 switches the ResNet off.
    let a = vec![
        p1.sqrt() * rot[0][0],
        p1.sqrt() * rot[0][1],
        0.0,
        p2.sqrt() * rot[1][0],
        p2.sqrt() * rot[1][1],
        0.0,
        0.0,
        0.0,
        0.0,
    ];
    let m = 8;
    let params = OtFlowParams {
        d: 2,
        m,
        n_th: 2,
        r: 3,
        k: vec![vec![0.1; m * 3], vec![0.05; m * m]],
        b: vec![vec![0.0; m], vec![0.0; m]],
        w: vec![0.0; m],
        a,
        c_weight: vec![0.0; 3],
        c_bias: 0.0,
    };
    let artifact = Artifact::otflow(
        params,
        [0.0, 1.0],
        Provenance::now(format!("socflow {} demo", env!("CARGO_PKG_VERSION"))).with_detail(
            "model",
            "closed-form OT potential between N(0, exp(2P)) and N(0, I)",
        ),
    )?;
    let path = args.out.join("gaussian_otflow.safetensors");
    artifact.save(&path, StorageDtype::F64)?;
    println!("== model file {} ==", path.display());
    print!("{}", artifact.describe());

    let model = Model::<f64>::load(&path)?;
    let mut so = SamplerOptions::ode(OdeOptions::fixed(OdeSolver::Rk4, 32), 0);
    so.log_density = true;
    let (t0, t1) = model.time_interval();
    let sampler = Sampler::new(model.field()?, t1, t0, so)?;
    let start = Instant::now();
    let samples = sampler.sample(args.n, 0)?;
    let secs = start.elapsed().as_secs_f64();
    let spath = args.out.join("samples.npy");
    write_npy(&spath, &[args.n, 2], &samples.x)?;
    let logp = samples
        .log_density
        .as_ref()
        .expect("log_density was requested");
    write_npy(args.out.join("log_density.npy"), &[args.n], logp)?;

    // Closed form: Σ = Rᵀ diag(e^{2p}) R; log p(x) = −½xᵀΣ⁻¹x − ½ log det(2πΣ).
    let e = [(2.0 * p1).exp(), (2.0 * p2).exp()];
    let mut sigma = [[0.0; 2]; 2];
    let mut prec = [[0.0; 2]; 2];
    for i in 0..2 {
        for j in 0..2 {
            for k in 0..2 {
                sigma[i][j] += rot[k][i] * e[k] * rot[k][j];
                prec[i][j] += rot[k][i] / e[k] * rot[k][j];
            }
        }
    }
    let logdet = (2.0 * p1) + (2.0 * p2);
    let n = args.n as f64;
    let mut cov = [[0.0; 2]; 2];
    let mut max_err: f64 = 0.0;
    for (x, l) in samples.x.chunks_exact(2).zip(logp) {
        for i in 0..2 {
            for j in 0..2 {
                cov[i][j] += x[i] * x[j] / n;
            }
        }
        let q: f64 = (0..2)
            .map(|i| (0..2).map(|j| x[i] * prec[i][j] * x[j]).sum::<f64>())
            .sum();
        let exact = -0.5 * q - 0.5 * (2.0 * (2.0 * std::f64::consts::PI).ln() + logdet);
        max_err = max_err.max((l - exact).abs());
    }
    println!(
        "\n== sampling: {} samples, RK4 32 steps, exact log-densities ({:.0} samples/s) ==",
        args.n,
        n / secs
    );
    println!(
        "sample covariance   [[{:.4}, {:.4}], [{:.4}, {:.4}]]",
        cov[0][0], cov[0][1], cov[1][0], cov[1][1]
    );
    println!(
        "exact covariance    [[{:.4}, {:.4}], [{:.4}, {:.4}]]",
        sigma[0][0], sigma[0][1], sigma[1][0], sigma[1][1]
    );
    let nll = -logp.iter().sum::<f64>() / n;
    let exact_nll = 1.0 + (2.0 * std::f64::consts::PI).ln() + 0.5 * logdet;
    println!("mean NLL            {nll:.4} (exact entropy {exact_nll:.4})");
    println!("max |log p − exact| {max_err:.2e} (RK4 discretization error)");
    println!("wrote {} and log_density.npy", spath.display());

    let mut ctl = model.controller()?;
    let x = [0.5, -1.0];
    let mut u = [0.0; 2];
    ctl.control(0.0, &x, &mut u)?;
    let calls = 100_000;
    let t = Instant::now();
    for k in 0..calls {
        ctl.control(0.001 * (k % 1000) as f64, &x, &mut u)?;
    }
    let per = t.elapsed().as_secs_f64() / calls as f64;
    println!("\n== feedback control u = −∇Φ(t, x) ==");
    println!(
        "u(0, [0.5, -1.0]) = [{:.6}, {:.6}]  ({:.0} ns per call, no allocation)",
        u[0],
        u[1],
        per * 1e9
    );
    Ok(())
}
