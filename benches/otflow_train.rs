//! One OT-Flow training iteration at the original paper's 2-D settings: batch 5000,
//! width m = 32, nTh = 2, RK4 with 8 steps, exact Laplacian, the forward solve and the
//! discretize-then-optimize adjoint (costs and parameter gradient), in f32 and f64 on
//! the CPU backend (rayon's default pool). The original PyTorch code takes about 1.1 s
//! per iteration on one core.

use criterion::{criterion_group, criterion_main, Criterion};
use socflow_trainer::autodiff::{Cpu, Graph};
use socflow_trainer::data::{Dataset, Toy};
use socflow_trainer::otflow::{init_params, OtFlowConfig, OtFlowProblem, Precision};

fn otflow_iteration(c: &mut Criterion) {
    let config = OtFlowConfig::default();
    let (d, batch) = (2, config.batch_size);
    let data = Dataset::from_toy(Toy::EightGaussians, batch, 5).expect("toy data");
    let x = &data.x[..batch * d];
    let p = init_params(d, config.m, config.n_th, 0).expect("initial parameters");
    let mut group = c.benchmark_group("otflow_train_iteration");
    // About a second per iteration: few samples.
    group.sample_size(10);
    for (name, prec) in [("f32", Precision::F32), ("f64", Precision::F64)] {
        let problem =
            OtFlowProblem::new(config.alpha, config.nt, prec.policy()).expect("OT-Flow problem");
        let mut graph = Graph::new(Cpu::new());
        group.bench_function(name, |b| {
            b.iter(|| {
                problem
                    .costs_and_gradient(&mut graph, &p, x)
                    .expect("costs and gradient")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, otflow_iteration);
criterion_main!(benches);
