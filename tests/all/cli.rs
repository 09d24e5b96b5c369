//! End-to-end tests of the command-line tool: model file → inspect, sample (numpy
//! reads the output), control, simulate; bad files and arguments give a clear message
//! and a non-zero exit.

use crate::common::{socflow, stderr, stdout};

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use socflow_runtime::artifact::{Artifact, Provenance, StorageDtype};
use socflow_runtime::controller::Controller;
use socflow_runtime::model::Model;
use socflow_runtime::nn::{Activation, MlpParams, OtFlowParams};
use socflow_runtime::npy::read_npy_f64;

fn text(o: &Output) -> (String, String) {
    (stdout(o), stderr(o))
}

fn otflow_params(d: usize, m: usize) -> OtFlowParams {
    let mut k = 0u64;
    let mut next = |s: f64| {
        k += 1;
        s * (((k * 2_654_435_761) % 1000) as f64 / 500.0 - 1.0)
    };
    let r = (d + 1).min(10);
    OtFlowParams {
        d,
        m,
        n_th: 2,
        r,
        k: vec![
            (0..m * (d + 1)).map(|_| next(0.5)).collect(),
            (0..m * m).map(|_| next(0.3)).collect(),
        ],
        b: vec![
            (0..m).map(|_| next(0.2)).collect(),
            (0..m).map(|_| next(0.2)).collect(),
        ],
        w: (0..m).map(|_| next(0.5)).collect(),
        a: (0..r * (d + 1)).map(|_| next(0.4)).collect(),
        c_weight: (0..d + 1).map(|_| next(0.1)).collect(),
        c_bias: 0.1,
    }
}

fn write_models(dir: &Path) -> (PathBuf, PathBuf) {
    let pot = dir.join("pot.safetensors");
    Artifact::otflow(otflow_params(3, 8), [0.0, 1.0], Provenance::now("cli test"))
        .unwrap()
        .save(&pot, StorageDtype::F64)
        .unwrap();
    let d = 2;
    let widths = [d + 1, 16, 16, d];
    let mut s = 0.0f64;
    let mut val = || {
        s += 0.37;
        s.sin() * 0.4
    };
    let mlp = MlpParams {
        d,
        hidden: vec![16, 16],
        activation: Activation::Tanh,
        weights: widths
            .windows(2)
            .map(|w| (0..w[0] * w[1]).map(|_| val()).collect())
            .collect(),
        biases: widths[1..]
            .iter()
            .map(|&n| (0..n).map(|_| val()).collect())
            .collect(),
    };
    let vel = dir.join("vel.safetensors");
    Artifact::mlp(
        mlp,
        socflow_runtime::artifact::ModelKind::Velocity,
        [0.0, 1.0],
        Provenance::now("cli test"),
    )
    .unwrap()
    .save(&vel, StorageDtype::F32)
    .unwrap();
    (pot, vel)
}

#[test]
fn inspect_sample_control_simulate() {
    let dir = tempfile::tempdir().unwrap();
    let (pot, vel) = write_models(dir.path());

    let o = socflow(&["inspect", pot.to_str().unwrap()]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        out.contains("potential") && out.contains("N.layers.1.weight"),
        "{out}"
    );

    // Sampling writes an n × d array; the same seed gives the same file; another
    // thread count gives the same samples.
    let s1 = dir.path().join("s1.npy");
    let s2 = dir.path().join("s2.npy");
    let lp = dir.path().join("lp.npy");
    let tr = dir.path().join("tr.npy");
    let o = socflow(&[
        "sample",
        vel.to_str().unwrap(),
        "-n",
        "300",
        "--steps",
        "16",
        "--seed",
        "4",
        "-o",
        s1.to_str().unwrap(),
        "--log-density",
        lp.to_str().unwrap(),
        "--trajectory",
        tr.to_str().unwrap(),
        "--threads",
        "1",
    ]);
    assert!(o.status.success(), "{}", text(&o).1);
    let o = socflow(&[
        "sample",
        vel.to_str().unwrap(),
        "-n",
        "300",
        "--steps",
        "16",
        "--seed",
        "4",
        "-o",
        s2.to_str().unwrap(),
        "--threads",
        "2",
    ]);
    assert!(o.status.success(), "{}", text(&o).1);
    let (shape, a) = read_npy_f64(&s1).unwrap();
    assert_eq!(shape, vec![300, 2]);
    let (_, b) = read_npy_f64(&s2).unwrap();
    assert_eq!(a, b);
    assert_eq!(read_npy_f64(&lp).unwrap().0, vec![300]);
    // The trajectory is 3-D (points × n × d), beyond what read_npy_f64 reads back.
    let head = std::fs::read(&tr).unwrap();
    let head = String::from_utf8_lossy(&head[..128]);
    assert!(head.contains("'shape': (17, 300, 2)"), "{head}");
    assert!(a.iter().all(|v| v.is_finite()));

    // numpy reads the samples (when the project's Python environment is present).
    let py = std::env::var("SOCFLOW_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/target/pyenv/bin/python"
            ))
        });
    let check = Command::new(&py)
        .args(["-c", "import numpy, sys; a = numpy.load(sys.argv[1]); assert a.shape == (300, 2) and a.dtype == numpy.float32; print(repr(float(a[0, 0])), repr(float(a[299, 1])))", s1.to_str().unwrap()])
        .output();
    match check {
        Ok(o) if o.status.success() => {
            let out = String::from_utf8_lossy(&o.stdout);
            let vals: Vec<f64> = out.split_whitespace().map(|v| v.parse().unwrap()).collect();
            assert_eq!(vals, vec![a[0], a[599]]);
        }
        Ok(o) => panic!(
            "numpy could not read the samples: {}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => eprintln!("skipped: numpy check ({}: {e})", py.display()),
    }

    // Control agrees with the library.
    let o = socflow(&[
        "control",
        pot.to_str().unwrap(),
        "--t",
        "0.25",
        "--x",
        "0.5,-1,2",
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let u_line = out.lines().find(|l| l.starts_with("u ")).unwrap();
    let u: Vec<f64> = u_line[2..]
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect();
    let model = Model::<f64>::load(&pot).unwrap();
    let mut ctl: Controller<f64> = model.controller().unwrap();
    let mut want = [0.0; 3];
    ctl.control(0.25, &[0.5, -1.0, 2.0], &mut want).unwrap();
    for (a, b) in u.iter().zip(want) {
        assert!((a - b).abs() <= 1e-8 * (1.0 + b.abs()), "{a} vs {b}");
    }

    let o = socflow(&[
        "simulate",
        pot.to_str().unwrap(),
        "--sigma",
        "0.1",
        "--paths",
        "50",
        "--steps",
        "20",
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("±"), "{out}");
}

#[test]
fn bad_files_and_arguments_fail_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let (pot, vel) = write_models(dir.path());
    // A truncated model file.
    let bytes = std::fs::read(&pot).unwrap();
    let bad = dir.path().join("bad.safetensors");
    std::fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap();
    for args in [
        vec!["inspect", bad.to_str().unwrap()],
        vec!["sample", bad.to_str().unwrap()],
        vec!["inspect", "/nonexistent/model.safetensors"],
    ] {
        let o = socflow(&args);
        let (_, err) = text(&o);
        assert!(!o.status.success());
        assert!(err.starts_with("error: cannot load model"), "{err}");
    }
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["control", pot.to_str().unwrap(), "--x", "1,2"],
            "state dimension is 3",
        ),
        (
            vec!["control", pot.to_str().unwrap(), "--x", "1,nan,2"],
            "non-finite",
        ),
        (
            vec!["control", vel.to_str().unwrap(), "--x", "1,2"],
            "potential",
        ),
        (
            vec!["sample", vel.to_str().unwrap(), "--steps", "0"],
            "steps",
        ),
        (
            vec![
                "sample",
                vel.to_str().unwrap(),
                "--solver",
                "dopri5",
                "--rtol=-1",
            ],
            "tol",
        ),
        (
            vec!["sample", vel.to_str().unwrap(), "--solver", "rk5"],
            "invalid value",
        ),
        (
            vec![
                "sample",
                vel.to_str().unwrap(),
                "-o",
                "/nonexistent/dir/x.npy",
                "-n",
                "4",
            ],
            "cannot write",
        ),
    ];
    for (args, needle) in cases {
        let o = socflow(&args);
        let (_, err) = text(&o);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(err.to_lowercase().contains(needle), "{args:?}: {err}");
    }
}
