//! Helpers shared by the runtime's integration tests.

use socflow_runtime::nn::OtFlowParams;

/// Random OT-Flow parameters of the given sizes (testkit's state dict).
pub fn random_otflow(d: usize, m: usize, n_th: usize, seed: u64) -> OtFlowParams {
    let mut sd = socflow_testkit::otflow_state_dict(d, m, n_th, seed);
    OtFlowParams::from_state_dict(d, m, n_th, (d + 1).min(10), &mut sd)
        .expect("complete parameters")
}

/// An OT-Flow potential with w = 0: Φ(s) = ½ sᵀ(AᵀA)s + cᵀs + c₀, s = (x, t), so
/// ∇ₓΦ = [(AᵀA)s]_{0..d} + c_{0..d} in closed form.
pub fn quadratic_otflow(d: usize, a: Vec<f64>, r: usize, c: Vec<f64>) -> OtFlowParams {
    let mut p = random_otflow(d, 4, 2, 7);
    p.r = r;
    p.a = a;
    p.w = vec![0.0; p.m];
    p.c_weight = c;
    p.c_bias = 0.25;
    p
}

/// (AᵀA) for A of shape r × n (row-major), as an n × n row-major matrix.
pub fn ata(a: &[f64], r: usize, n: usize) -> Vec<f64> {
    let mut g = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            g[i * n + j] = (0..r).map(|k| a[k * n + i] * a[k * n + j]).sum();
        }
    }
    g
}
