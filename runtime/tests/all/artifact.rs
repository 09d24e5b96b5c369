//! Model artifacts: round trips, the exact file layout, every kind of corruption, and
//! interoperability with Python's `safetensors` and `numpy`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use socflow_runtime::artifact::{
    Architecture, Artifact, ControlMap, ModelKind, Normalization, Params, Provenance, StorageDtype,
    FORMAT_NAME, FORMAT_VERSION, MAX_FILE_BYTES, MAX_VALUES,
};
use socflow_runtime::nn::{Activation, MlpParams, OtFlowParams};
use socflow_runtime::Error;

// ---------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------

/// xorshift64*: a reproducible stream without a dependency.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in [-1, 1), with full 53-bit mantissas so f32 storage really rounds.
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }
    fn vec(&mut self, n: usize) -> Vec<f64> {
        (0..n).map(|_| self.uniform()).collect()
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

fn otflow_params(d: usize, m: usize, n_th: usize, r: usize, seed: u64) -> OtFlowParams {
    let mut g = Rng(seed);
    OtFlowParams {
        d,
        m,
        n_th,
        r,
        k: (0..n_th)
            .map(|i| g.vec(if i == 0 { m * (d + 1) } else { m * m }))
            .collect(),
        b: (0..n_th).map(|_| g.vec(m)).collect(),
        w: g.vec(m),
        a: g.vec(r * (d + 1)),
        c_weight: g.vec(d + 1),
        c_bias: g.uniform(),
    }
}

fn mlp_params(d: usize, hidden: &[usize], activation: Activation, seed: u64) -> MlpParams {
    let mut g = Rng(seed);
    let mut sizes = vec![d + 1];
    sizes.extend_from_slice(hidden);
    sizes.push(d);
    MlpParams {
        d,
        hidden: hidden.to_vec(),
        activation,
        weights: sizes.windows(2).map(|w| g.vec(w[0] * w[1])).collect(),
        biases: sizes.windows(2).map(|w| g.vec(w[1])).collect(),
    }
}

fn provenance() -> Provenance {
    Provenance {
        created_by: "socflow-runtime tests".into(),
        created_unix: 1_700_000_000,
        details: BTreeMap::new(),
    }
    .with_detail("problem", "double-well")
    .with_detail("iterations", 1500)
    .with_detail("final_loss", 0.125)
}

/// OT-Flow potential, d = 2, m = 4, nTh = 3, r = 2, with normalization and a 1 × 2
/// control map.
fn otflow_artifact() -> Artifact {
    Artifact::otflow(otflow_params(2, 4, 3, 2, 7), [0.0, 1.0], provenance())
        .unwrap()
        .with_normalization(Normalization::new(vec![0.5, -1.0], vec![2.0, 0.25]).unwrap())
        .unwrap()
        .with_control_map(ControlMap::new(1, 2, vec![0.0, 1.0]).unwrap())
        .unwrap()
}

fn mlp_artifact(kind: ModelKind) -> Artifact {
    Artifact::mlp(
        mlp_params(3, &[5, 4], Activation::Silu, 11),
        kind,
        [1e-3, 1.0],
        provenance(),
    )
    .unwrap()
}

/// The tensors an artifact must hold, named independently of the library (the PyTorch
/// names of the original OT-Flow code and of `nn.Sequential`-style MLPs).
fn expected_tensors(a: &Artifact) -> BTreeMap<String, (Vec<usize>, Vec<f64>)> {
    let mut t = BTreeMap::new();
    match &a.params {
        Params::OtFlow(p) => {
            let (d, m) = (p.d, p.m);
            t.insert("A".into(), (vec![p.r, d + 1], p.a.clone()));
            t.insert("c.weight".into(), (vec![1, d + 1], p.c_weight.clone()));
            t.insert("c.bias".into(), (vec![1], vec![p.c_bias]));
            t.insert("w.weight".into(), (vec![1, m], p.w.clone()));
            for i in 0..p.n_th {
                let cols = if i == 0 { d + 1 } else { m };
                t.insert(
                    format!("N.layers.{i}.weight"),
                    (vec![m, cols], p.k[i].clone()),
                );
                t.insert(format!("N.layers.{i}.bias"), (vec![m], p.b[i].clone()));
            }
        }
        Params::Mlp(p) => {
            let mut sizes = vec![p.d + 1];
            sizes.extend_from_slice(&p.hidden);
            sizes.push(p.d);
            for (i, w) in sizes.windows(2).enumerate() {
                t.insert(
                    format!("layers.{i}.weight"),
                    (vec![w[1], w[0]], p.weights[i].clone()),
                );
                t.insert(
                    format!("layers.{i}.bias"),
                    (vec![w[1]], p.biases[i].clone()),
                );
            }
        }
    }
    if let Some(c) = &a.control_map {
        t.insert(
            "control_map".into(),
            (vec![c.rows, c.cols], c.matrix.clone()),
        );
    }
    t
}

fn all_values(a: &Artifact) -> Vec<f64> {
    expected_tensors(a)
        .into_values()
        .flat_map(|(_, v)| v)
        .collect()
}

/// Applies `f` to every stored value (to predict what a lossy storage type gives).
fn map_values(a: &Artifact, f: impl Fn(f64) -> f64) -> Artifact {
    let mut b = a.clone();
    let g = |v: &mut Vec<f64>| v.iter_mut().for_each(|x| *x = f(*x));
    match &mut b.params {
        Params::OtFlow(p) => {
            p.k.iter_mut().chain(p.b.iter_mut()).for_each(g);
            g(&mut p.w);
            g(&mut p.a);
            g(&mut p.c_weight);
            p.c_bias = f(p.c_bias);
        }
        Params::Mlp(p) => p.weights.iter_mut().chain(p.biases.iter_mut()).for_each(g),
    }
    if let Some(c) = &mut b.control_map {
        g(&mut c.matrix);
    }
    b
}

// ---------------------------------------------------------------------------------
// Editing files through the safetensors crate itself
// ---------------------------------------------------------------------------------

struct Parts {
    meta: HashMap<String, String>,
    tensors: BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>,
}

impl Parts {
    fn of(bytes: &[u8]) -> Parts {
        let (_, header) = SafeTensors::read_metadata(bytes).unwrap();
        let st = SafeTensors::deserialize(bytes).unwrap();
        Parts {
            meta: header.metadata().clone().unwrap(),
            tensors: st
                .tensors()
                .into_iter()
                .map(|(n, v)| (n, (v.dtype(), v.shape().to_vec(), v.data().to_vec())))
                .collect(),
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let views: Vec<(String, TensorView<'_>)> = self
            .tensors
            .iter()
            .map(|(n, (d, s, b))| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
            .collect();
        safetensors::serialize(views, Some(self.meta.clone())).unwrap()
    }

    fn card(&self) -> serde_json::Value {
        serde_json::from_str(&self.meta["card"]).unwrap()
    }

    fn set_card(&mut self, card: serde_json::Value) {
        self.meta.insert("card".into(), card.to_string());
    }

    fn edit_card(&mut self, f: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
        let mut card = self.card();
        f(card.as_object_mut().unwrap());
        self.set_card(card);
    }

    fn load(&self) -> Result<Artifact, Error> {
        Artifact::from_bytes(&self.bytes())
    }
}

fn f64_parts() -> Parts {
    Parts::of(&otflow_artifact().to_bytes(StorageDtype::F64).unwrap())
}

/// A hand-written safetensors file: header JSON (padded) and data.
fn raw_file(header: &serde_json::Value, data: &[u8]) -> Vec<u8> {
    let mut h = header.to_string().into_bytes();
    h.resize(h.len().next_multiple_of(8), b' ');
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    out
}

fn format_msg(r: Result<Artifact, Error>) -> String {
    match r {
        Err(Error::Format(msg)) => msg,
        other => panic!("expected Error::Format, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------
// Round trips and layout
// ---------------------------------------------------------------------------------

#[test]
fn otflow_f64_round_trip_is_bitwise() {
    let a = otflow_artifact();
    let bytes = a.to_bytes(StorageDtype::F64).unwrap();
    let b = Artifact::from_bytes(&bytes).unwrap();
    assert_eq!(b, a);
    let (va, vb) = (all_values(&a), all_values(&b));
    assert_eq!(va.len(), a.parameter_count() + 2);
    for (x, y) in va.iter().zip(&vb) {
        assert_eq!(x.to_bits(), y.to_bits());
    }
    // Writing again gives the same bytes.
    assert_eq!(b.to_bytes(StorageDtype::F64).unwrap(), bytes);
    assert_eq!(a.to_bytes(StorageDtype::F64).unwrap(), bytes);
}

#[test]
fn otflow_f32_round_trip_rounds_each_value_once() {
    let a = otflow_artifact();
    let b = Artifact::from_bytes(&a.to_bytes(StorageDtype::F32).unwrap()).unwrap();
    assert_eq!(b.card.dtype, StorageDtype::F32);
    let mut want = map_values(&a, |x| x as f32 as f64);
    want.card.dtype = StorageDtype::F32;
    assert_eq!(b, want);
    // Rounding really happened (the fixtures use full 53-bit mantissas).
    assert_ne!(all_values(&a), all_values(&b));
    // f32 storage of f32 values is lossless.
    let c = Artifact::from_bytes(&b.to_bytes(StorageDtype::F32).unwrap()).unwrap();
    assert_eq!(c, b);
}

#[test]
fn mlp_round_trips_in_f32_and_f64() {
    for kind in [ModelKind::Velocity, ModelKind::Score] {
        let a = mlp_artifact(kind);
        let b = Artifact::from_bytes(&a.to_bytes(StorageDtype::F64).unwrap()).unwrap();
        assert_eq!(b, a);
        for (x, y) in all_values(&a).iter().zip(all_values(&b)) {
            assert_eq!(x.to_bits(), y.to_bits());
        }
        let c = Artifact::from_bytes(&a.to_bytes(StorageDtype::F32).unwrap()).unwrap();
        let mut want = map_values(&a, |x| x as f32 as f64);
        want.card.dtype = StorageDtype::F32;
        assert_eq!(c, want);
        assert_eq!(c.card.kind, kind);
    }
}

#[test]
fn half_precision_storage_round_trips_within_its_precision() {
    let a = mlp_artifact(ModelKind::Velocity);
    for (dtype, eps) in [
        (StorageDtype::F16, 2f64.powi(-11)),
        (StorageDtype::Bf16, 2f64.powi(-8)),
    ] {
        let bytes = a.to_bytes(dtype).unwrap();
        let b = Artifact::from_bytes(&bytes).unwrap();
        assert_eq!(b.card.dtype, dtype);
        let (va, vb) = (all_values(&a), all_values(&b));
        assert_eq!(va.len(), vb.len());
        let mut max_rel: f64 = 0.0;
        for (x, y) in va.iter().zip(&vb) {
            // Values are in [-1, 1); f16 subnormals start below 2^-14.
            let err = (x - y).abs();
            assert!(
                err <= eps * x.abs() + 2f64.powi(-25),
                "{dtype:?}: {x} -> {y}"
            );
            max_rel = max_rel.max(err / x.abs().max(1e-3));
        }
        assert!(max_rel > 0.0, "{dtype:?} storage should round");
        // Stored half values survive a second round trip exactly.
        assert_eq!(
            Artifact::from_bytes(&b.to_bytes(dtype).unwrap()).unwrap(),
            b
        );
        let parts = Parts::of(&bytes);
        let want = if dtype == StorageDtype::F16 {
            Dtype::F16
        } else {
            Dtype::BF16
        };
        assert!(parts.tensors.values().all(|(d, _, _)| *d == want));
    }
}

#[test]
fn file_layout_uses_pytorch_names_shapes_and_metadata() {
    let a = otflow_artifact();
    for (dtype, st_dtype, size) in [
        (StorageDtype::F32, Dtype::F32, 4),
        (StorageDtype::F64, Dtype::F64, 8),
    ] {
        let p = Parts::of(&a.to_bytes(dtype).unwrap());
        let mut keys: Vec<&str> = p.meta.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["card", "format", "format_version"]);
        assert_eq!(p.meta["format"], FORMAT_NAME);
        assert_eq!(p.meta["format"], "socflow");
        assert_eq!(p.meta["format_version"], "1");
        let card = p.card();
        assert_eq!(card["format"], "socflow");
        assert_eq!(card["format_version"], 1);
        assert_eq!(card["kind"], "potential");
        assert_eq!(
            card["architecture"],
            serde_json::json!({"type": "otflow", "m": 4, "n_th": 3, "r": 2})
        );
        assert_eq!(card["dim"], 2);
        assert_eq!(card["time"], serde_json::json!([0.0, 1.0]));
        assert_eq!(card["dtype"], dtype.name());
        assert_eq!(card["control_dim"], 1);
        assert_eq!(
            card["normalization"],
            serde_json::json!({"mean": [0.5, -1.0], "std": [2.0, 0.25]})
        );
        assert_eq!(card["provenance"]["details"]["problem"], "double-well");

        let want = expected_tensors(&a);
        assert_eq!(
            p.tensors.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>()
        );
        for (name, (shape, values)) in &want {
            let (d, s, bytes) = &p.tensors[name];
            assert_eq!((d, s), (&st_dtype, shape), "{name}");
            let stored: Vec<f64> = bytes
                .chunks_exact(size)
                .map(|c| {
                    if size == 8 {
                        f64::from_le_bytes(c.try_into().unwrap())
                    } else {
                        f32::from_le_bytes(c.try_into().unwrap()) as f64
                    }
                })
                .collect();
            let rounded: Vec<f64> = if size == 8 {
                values.clone()
            } else {
                values.iter().map(|&x| x as f32 as f64).collect()
            };
            assert_eq!(stored, rounded, "{name}");
        }
    }
    assert_eq!(
        a.tensor_shapes(),
        expected_tensors(&a)
            .into_iter()
            .map(|(n, (s, _))| (n, s))
            .collect::<Vec<_>>()
    );
}

#[test]
fn mlp_card_and_tensors() {
    let a = mlp_artifact(ModelKind::Score);
    let p = Parts::of(&a.to_bytes(StorageDtype::F32).unwrap());
    let card = p.card();
    assert_eq!(card["kind"], "score");
    assert_eq!(
        card["architecture"],
        serde_json::json!({"type": "mlp", "hidden": [5, 4], "activation": "silu"})
    );
    assert_eq!(card["normalization"], serde_json::Value::Null);
    assert_eq!(card["control_dim"], serde_json::Value::Null);
    let shapes: Vec<(&str, &[usize])> = p
        .tensors
        .iter()
        .map(|(n, (_, s, _))| (n.as_str(), s.as_slice()))
        .collect();
    assert_eq!(
        shapes,
        [
            ("layers.0.bias", &[5][..]),
            ("layers.0.weight", &[5, 4][..]),
            ("layers.1.bias", &[4][..]),
            ("layers.1.weight", &[4, 5][..]),
            ("layers.2.bias", &[3][..]),
            ("layers.2.weight", &[3, 4][..]),
        ]
    );
}

#[test]
fn files_written_by_the_safetensors_crate_load() {
    // Our writer lays files out by hand; the reference writer's layout must load too.
    let a = otflow_artifact();
    for dtype in [StorageDtype::F32, StorageDtype::F64] {
        let ours = a.to_bytes(dtype).unwrap();
        let theirs = Parts::of(&ours).bytes();
        assert_eq!(
            Artifact::from_bytes(&theirs).unwrap(),
            Artifact::from_bytes(&ours).unwrap()
        );
    }
}

#[test]
fn parameter_count_matches_the_architecture() {
    let a = otflow_artifact();
    let (d, m, n_th, r) = (2, 4, 3, 2);
    let want = m * (d + 1) + (n_th - 1) * m * m + n_th * m + m + r * (d + 1) + (d + 1) + 1;
    assert_eq!(a.parameter_count(), want);
    let b = mlp_artifact(ModelKind::Velocity);
    assert_eq!(b.parameter_count(), (4 * 5 + 5) + (5 * 4 + 4) + (4 * 3 + 3));
}

#[test]
fn save_and_load_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let a = otflow_artifact();
    a.save(&path, StorageDtype::F64).unwrap();
    assert_eq!(Artifact::load(&path).unwrap(), a);
    assert_eq!(
        std::fs::read(&path).unwrap(),
        a.to_bytes(StorageDtype::F64).unwrap()
    );
    // Overwriting replaces the file; no temporary files are left behind.
    let b = mlp_artifact(ModelKind::Velocity);
    b.save(&path, StorageDtype::F32).unwrap();
    let loaded = Artifact::load(&path).unwrap();
    assert_eq!(loaded.card.kind, ModelKind::Velocity);
    assert_eq!(loaded.card.dtype, StorageDtype::F32);
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["model.safetensors"]);
    // A failed save leaves the old file intact and no temporary file.
    let mut bad = b.clone();
    if let Params::Mlp(p) = &mut bad.params {
        p.biases[0][0] = 1e300;
    }
    assert!(matches!(
        bad.save(&path, StorageDtype::F32),
        Err(Error::InvalidArgument(_))
    ));
    assert_eq!(Artifact::load(&path).unwrap(), loaded);
    // Saving into a missing directory is an I/O error naming the path.
    let missing = dir.path().join("no/such/dir/model.safetensors");
    assert!(matches!(
        a.save(&missing, StorageDtype::F64),
        Err(Error::Io { .. })
    ));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn load_checks_the_size_before_reading() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.safetensors");
    // A sparse file: nothing is written, so reading it would be the only cost.
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(MAX_FILE_BYTES + 1).unwrap();
    drop(f);
    match Artifact::load(&path) {
        Err(Error::Limit(msg)) => assert!(msg.contains("exceeds"), "{msg}"),
        other => panic!("expected Error::Limit, got {other:?}"),
    }
    assert!(matches!(
        Artifact::load(dir.path().join("absent.safetensors")),
        Err(Error::Io { .. })
    ));
}

#[test]
fn describe_prints_the_model_card() {
    let a = otflow_artifact();
    let b = Artifact::from_bytes(&a.to_bytes(StorageDtype::F32).unwrap()).unwrap();
    let s = b.describe();
    for needle in [
        "format:        socflow v1",
        "kind:          potential",
        "OT-Flow potential, ResNet width m = 4, nTh = 3",
        "rank r = 2",
        &format!("parameters:    {}", a.parameter_count()),
        "state dim:     2",
        "time:          [0, 1]",
        "dtype:         f32",
        "mean [0.5, -1], std [2, 0.25]",
        "M is 1 x 2",
        "created by socflow-runtime tests at 1700000000",
        "  problem: double-well",
        "  iterations: 1500",
        "  A [2, 3]",
        "  N.layers.0.weight [4, 3]",
        "  N.layers.2.weight [4, 4]",
        "  control_map [1, 2]",
    ] {
        assert!(s.contains(needle), "missing {needle:?} in\n{s}");
    }
    let m = mlp_artifact(ModelKind::Velocity).describe();
    assert!(
        m.contains("MLP 4 -> 5 -> 4 -> 3 on (x, t), silu activation"),
        "{m}"
    );
    assert!(m.contains("normalization: none"), "{m}");
    assert!(m.contains("control map:   none"), "{m}");
}

#[test]
fn golden_otflow_state_dict_names_and_shapes() {
    let candidates = [
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/reference/otflow_phi_golden.json"
        ),
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/reference/otflow_phi_golden.json"
        ),
    ];
    let Some(path) = candidates.iter().find(|p| Path::new(p).exists()) else {
        eprintln!("skipped: shared/reference/otflow_phi_golden.json not found");
        return;
    };
    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let cases = golden["cases"].as_array().unwrap();
    assert!(!cases.is_empty());
    for case in cases {
        let get = |k: &str| case[k].as_u64().unwrap() as usize;
        let (d, m, n_th, r) = (get("d"), get("m"), get("nTh"), get("r"));
        let sd = case["state_dict"].as_object().unwrap();
        let tensor = |name: &str| -> (Vec<usize>, Vec<f64>) {
            let v = &sd[name];
            match v.as_array().unwrap().first() {
                Some(serde_json::Value::Array(_)) => {
                    let rows = v.as_array().unwrap();
                    let cols = rows[0].as_array().unwrap().len();
                    let flat = rows
                        .iter()
                        .flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()))
                        .collect();
                    (vec![rows.len(), cols], flat)
                }
                _ => {
                    let flat: Vec<f64> = v
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|x| x.as_f64().unwrap())
                        .collect();
                    (vec![flat.len()], flat)
                }
            }
        };
        let params = OtFlowParams {
            d,
            m,
            n_th,
            r,
            k: (0..n_th)
                .map(|i| tensor(&format!("N.layers.{i}.weight")).1)
                .collect(),
            b: (0..n_th)
                .map(|i| tensor(&format!("N.layers.{i}.bias")).1)
                .collect(),
            w: tensor("w.weight").1,
            a: tensor("A").1,
            c_weight: tensor("c.weight").1,
            c_bias: tensor("c.bias").1[0],
        };
        let a = Artifact::otflow(params, [0.0, 1.0], Provenance::now("golden")).unwrap();
        // Same names and shapes as PyTorch's state_dict.
        let mut want: Vec<(String, Vec<usize>)> =
            sd.keys().map(|k| (k.clone(), tensor(k).0)).collect();
        want.sort();
        assert_eq!(a.tensor_shapes(), want, "d={d} m={m} nTh={n_th}");
        let p = Parts::of(&a.to_bytes(StorageDtype::F64).unwrap());
        for (name, (_, shape, bytes)) in &p.tensors {
            let (s, values) = tensor(name);
            assert_eq!(shape, &s);
            let stored: Vec<f64> = bytes
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                .collect();
            assert_eq!(stored, values, "{name}");
        }
        assert_eq!(
            Artifact::from_bytes(&a.to_bytes(StorageDtype::F64).unwrap()).unwrap(),
            a
        );
    }
}

// ---------------------------------------------------------------------------------
// Building artifacts: invalid arguments
// ---------------------------------------------------------------------------------

#[test]
fn constructors_validate_their_arguments() {
    let mut p = otflow_params(2, 4, 3, 2, 1);
    p.k[1].pop();
    match Artifact::otflow(p, [0.0, 1.0], provenance()) {
        Err(Error::Shape {
            name,
            found,
            expected,
        }) => {
            assert_eq!(name, "N.layers.1.weight");
            assert_eq!(found, [15]);
            assert_eq!(expected, [4, 4]);
        }
        other => panic!("expected Error::Shape, got {other:?}"),
    }
    let mut p = otflow_params(2, 4, 3, 2, 1);
    p.w[2] = f64::NAN;
    match Artifact::otflow(p, [0.0, 1.0], provenance()) {
        Err(Error::NonFinite(what)) => assert!(what.contains("w.weight"), "{what}"),
        other => panic!("expected Error::NonFinite, got {other:?}"),
    }
    let p = otflow_params(2, 4, 1, 2, 1);
    assert!(matches!(
        Artifact::otflow(p, [0.0, 1.0], provenance()),
        Err(Error::InvalidArgument(_))
    ));
    let p = otflow_params(2, 4, 2, 2, 1);
    assert!(matches!(
        Artifact::otflow(p, [1.0, 1.0], provenance()),
        Err(Error::InvalidArgument(_))
    ));
    let p = mlp_params(2, &[3], Activation::Tanh, 1);
    assert!(matches!(
        Artifact::mlp(p.clone(), ModelKind::Potential, [0.0, 1.0], provenance()),
        Err(Error::InvalidArgument(_))
    ));
    let mlp = Artifact::mlp(p, ModelKind::Velocity, [0.0, 1.0], provenance()).unwrap();
    // Control maps belong to potentials; sizes must match the state.
    assert!(matches!(
        mlp.clone()
            .with_control_map(ControlMap::new(1, 2, vec![1.0, 0.0]).unwrap()),
        Err(Error::InvalidArgument(_))
    ));
    let pot = Artifact::otflow(otflow_params(2, 4, 2, 2, 1), [0.0, 1.0], provenance()).unwrap();
    assert!(matches!(
        pot.clone()
            .with_control_map(ControlMap::new(1, 3, vec![1.0, 0.0, 0.0]).unwrap()),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        ControlMap::new(2, 2, vec![1.0; 3]),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        ControlMap::new(1, 2, vec![1.0, f64::INFINITY]),
        Err(Error::NonFinite(_))
    ));
    assert!(matches!(
        mlp.clone()
            .with_normalization(Normalization::new(vec![0.0; 3], vec![1.0; 3]).unwrap()),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        Normalization::new(vec![0.0, 0.0], vec![1.0, 0.0]),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        Normalization::new(vec![0.0, 0.0], vec![1.0]),
        Err(Error::InvalidArgument(_))
    ));
    // Values that overflow the storage type are refused, not written as infinity.
    let mut big = mlp.clone();
    if let Params::Mlp(p) = &mut big.params {
        p.weights[0][0] = 1e5;
    }
    assert!(big.to_bytes(StorageDtype::F32).is_ok());
    assert!(big.to_bytes(StorageDtype::Bf16).is_ok());
    match big.to_bytes(StorageDtype::F16) {
        Err(Error::InvalidArgument(msg)) => assert!(msg.contains("layers.0.weight"), "{msg}"),
        other => panic!("expected Error::InvalidArgument, got {other:?}"),
    }
    // The public fields are checked when writing.
    let mut lie = mlp;
    lie.card.dim = 3;
    assert!(lie.to_bytes(StorageDtype::F64).is_err());
}

#[test]
fn normalization_maps_rows_both_ways() {
    let n = Normalization::new(vec![1.0, -2.0], vec![2.0, 3.0]).unwrap();
    assert!((n.log_det() - 6f64.ln()).abs() < 1e-15);
    let mut rows = vec![1.0f64, 4.0, 0.0, -1.0];
    n.to_data(&mut rows).unwrap();
    assert_eq!(rows, [3.0, 10.0, 1.0, -5.0]);
    n.to_model(&mut rows).unwrap();
    assert_eq!(rows, [1.0, 4.0, 0.0, -1.0]);
    let mut rows32 = vec![0.5f32, 0.5];
    n.to_data(&mut rows32).unwrap();
    assert_eq!(rows32, [2.0, -0.5]);
    assert!(matches!(
        n.to_data(&mut [1.0f64; 3]),
        Err(Error::InvalidArgument(_))
    ));
    assert_eq!(n.dim(), 2);
}

#[test]
fn control_map_gives_minus_m_times_the_gradient() {
    let c = ControlMap::new(2, 3, vec![1.0, 2.0, 3.0, 0.0, -1.0, 0.5]).unwrap();
    let mut u = [0.0f64; 2];
    c.control(&[1.0, 1.0, 2.0], &mut u).unwrap();
    assert_eq!(u, [-9.0, 0.0]);
    let mut u32 = [0.0f32; 2];
    c.control(&[1.0f32, 0.0, 0.0], &mut u32).unwrap();
    assert_eq!(u32, [-1.0, -0.0]);
    assert!(matches!(
        c.control(&[1.0f64; 2], &mut u),
        Err(Error::Length { .. })
    ));
    assert!(matches!(
        c.control(&[1.0f64; 3], &mut [0.0; 3]),
        Err(Error::Length { .. })
    ));
}

// ---------------------------------------------------------------------------------
// Corrupted files: typed errors, never a panic
// ---------------------------------------------------------------------------------

#[test]
fn every_truncation_is_a_format_error() {
    let a = Artifact::otflow(otflow_params(2, 2, 2, 1, 3), [0.0, 1.0], provenance()).unwrap();
    for dtype in [StorageDtype::F32, StorageDtype::F64] {
        let bytes = a.to_bytes(dtype).unwrap();
        for len in 0..bytes.len() {
            match Artifact::from_bytes(&bytes[..len]) {
                Err(Error::Format(_)) => {}
                other => panic!("prefix of {len} bytes: expected Error::Format, got {other:?}"),
            }
        }
        // Trailing garbage is refused too.
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(
            Artifact::from_bytes(&longer),
            Err(Error::Format(_))
        ));
    }
}

#[test]
fn every_flipped_byte_is_caught_or_changes_one_value() {
    let a = Artifact::otflow(otflow_params(2, 2, 2, 1, 5), [0.0, 1.0], provenance()).unwrap();
    let bytes = a.to_bytes(StorageDtype::F64).unwrap();
    let header_end = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let original = all_values(&a);
    let (mut rejected, mut changed, mut non_finite) = (0, 0, 0);
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0xff;
        let r = Artifact::from_bytes(&b);
        if i < header_end {
            // The header is ASCII, so a flipped byte is never valid UTF-8 JSON.
            assert!(
                matches!(r, Err(Error::Format(_)) | Err(Error::Limit(_))),
                "byte {i}: {r:?}"
            );
            rejected += 1;
        } else {
            match r {
                Ok(c) => {
                    let got = all_values(&c);
                    let diff = original
                        .iter()
                        .zip(&got)
                        .filter(|(x, y)| x.to_bits() != y.to_bits())
                        .count();
                    assert_eq!(diff, 1, "byte {i}");
                    changed += 1;
                }
                Err(Error::NonFinite(_)) => non_finite += 1,
                other => panic!("byte {i}: {other:?}"),
            }
        }
    }
    assert_eq!(rejected, header_end);
    assert_eq!(changed + non_finite, bytes.len() - header_end);
    assert!(changed > 0);
}

#[test]
fn random_corruptions_never_panic() {
    let base = otflow_artifact();
    let files = [
        base.to_bytes(StorageDtype::F64).unwrap(),
        base.to_bytes(StorageDtype::F32).unwrap(),
        mlp_artifact(ModelKind::Score)
            .to_bytes(StorageDtype::F16)
            .unwrap(),
    ];
    let mut g = Rng(0x5eed);
    let mut outcomes: BTreeMap<&str, usize> = BTreeMap::new();
    for round in 0..6000 {
        let mut b = files[round % files.len()].clone();
        let header_end = 8 + u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
        match round % 4 {
            // Random bytes anywhere.
            0 => {
                for _ in 0..1 + g.below(6) {
                    let i = g.below(b.len());
                    b[i] = g.next_u64() as u8;
                }
            }
            // Digits in the header replaced by other digits: valid JSON, wrong numbers
            // (shapes, offsets, sizes, versions).
            1 => {
                let digits: Vec<usize> =
                    (8..header_end).filter(|&i| b[i].is_ascii_digit()).collect();
                for _ in 0..1 + g.below(3) {
                    let i = digits[g.below(digits.len())];
                    b[i] = b'0' + g.below(10) as u8;
                }
            }
            // Printable ASCII in the header.
            2 => {
                let i = 8 + g.below(header_end - 8);
                b[i] = b' ' + g.below(95) as u8;
            }
            // Truncated or extended.
            _ => {
                let n = g.below(b.len() + 16);
                b.resize(n, g.next_u64() as u8);
            }
        }
        let kind = match Artifact::from_bytes(&b) {
            Ok(_) => "ok",
            Err(Error::Format(_)) => "format",
            Err(Error::Shape { .. }) => "shape",
            Err(Error::NonFinite(_)) => "non-finite",
            Err(Error::Limit(_)) => "limit",
            Err(Error::UnsupportedVersion { .. }) => "version",
            Err(e) => panic!("unexpected error kind: {e:?}"),
        };
        *outcomes.entry(kind).or_default() += 1;
    }
    eprintln!("random corruptions: {outcomes:?}");
    assert!(outcomes["format"] > 0 && outcomes["ok"] > 0);
}

#[test]
fn header_claiming_gigabytes_is_a_limit_error() {
    for claimed in [1u64 << 31, 1 << 40, u64::MAX] {
        let mut b = claimed.to_le_bytes().to_vec();
        b.extend_from_slice(b"{}      ");
        match Artifact::from_bytes(&b) {
            Err(Error::Limit(msg)) => assert!(msg.contains(&claimed.to_string()), "{msg}"),
            other => panic!("expected Error::Limit, got {other:?}"),
        }
    }
}

#[test]
fn tensors_claiming_huge_sizes_are_format_errors() {
    // Eight U8 tensors of 2^61 - 1 bytes each: offsets sum near usize::MAX, which the
    // safetensors crate adds without a check (a panic in debug builds).
    let big = (1u64 << 61) - 1;
    let mut header = serde_json::Map::new();
    for i in 0..8u64 {
        header.insert(
            format!("t{i}"),
            serde_json::json!({"dtype": "U8", "shape": [big], "data_offsets": [i * big, (i + 1) * big]}),
        );
    }
    let b = raw_file(&serde_json::Value::Object(header), &[0; 16]);
    let msg = format_msg(Artifact::from_bytes(&b));
    assert!(msg.contains("past the data section"), "{msg}");
    // One tensor with a huge shape but honest small offsets.
    let header = serde_json::json!({"A": {"dtype": "F64", "shape": [1u64 << 40, 1u64 << 30], "data_offsets": [0, 8]}});
    format_msg(Artifact::from_bytes(&raw_file(&header, &[0; 8])));
    // Overlapping and reversed offsets.
    let header = serde_json::json!({
        "a": {"dtype": "F64", "shape": [1], "data_offsets": [0, 8]},
        "b": {"dtype": "F64", "shape": [1], "data_offsets": [4, 12]},
    });
    format_msg(Artifact::from_bytes(&raw_file(&header, &[0; 16])));
    let header = serde_json::json!({"a": {"dtype": "F64", "shape": [0], "data_offsets": [8, 0]}});
    format_msg(Artifact::from_bytes(&raw_file(&header, &[0; 8])));
    // Deeply nested JSON hits serde_json's recursion limit, not the stack.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let mut b = (deep.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(deep.as_bytes());
    format_msg(Artifact::from_bytes(&b));
    // A valid safetensors file that is not a socflow model.
    let header = serde_json::json!({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}});
    let msg = format_msg(Artifact::from_bytes(&raw_file(&header, &[0; 8])));
    assert!(msg.contains("__metadata__"), "{msg}");
}

#[test]
fn wrong_tensor_shape_is_a_shape_error() {
    let mut p = f64_parts();
    p.tensors.get_mut("A").unwrap().1 = vec![3, 2];
    match p.load() {
        Err(Error::Shape {
            name,
            found,
            expected,
        }) => {
            assert_eq!(name, "A");
            assert_eq!(found, [3, 2]);
            assert_eq!(expected, [2, 3]);
        }
        other => panic!("expected Error::Shape, got {other:?}"),
    }
    let mut p = f64_parts();
    p.tensors.get_mut("c.bias").unwrap().1 = vec![];
    assert!(matches!(p.load(), Err(Error::Shape { name, .. }) if name == "c.bias"));
    let mut p = f64_parts();
    p.tensors.get_mut("N.layers.1.bias").unwrap().1 = vec![1, 4];
    assert!(matches!(p.load(), Err(Error::Shape { name, .. }) if name == "N.layers.1.bias"));
}

#[test]
fn missing_and_extra_tensors_are_format_errors() {
    let mut p = f64_parts();
    p.tensors.remove("w.weight");
    assert!(format_msg(p.load()).contains("missing tensor `w.weight`"));
    let mut p = f64_parts();
    p.tensors.remove("control_map");
    assert!(format_msg(p.load()).contains("missing tensor `control_map`"));
    let mut p = f64_parts();
    p.tensors.insert(
        "N.layers.3.weight".into(),
        (Dtype::F64, vec![1], vec![0; 8]),
    );
    assert!(format_msg(p.load()).contains("unexpected tensor `N.layers.3.weight`"));
}

#[test]
fn non_finite_weights_are_rejected() {
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let mut p = f64_parts();
        let t = p.tensors.get_mut("N.layers.1.weight").unwrap();
        t.2[40..48].copy_from_slice(&bad.to_le_bytes());
        match p.load() {
            Err(Error::NonFinite(what)) => assert!(what.contains("N.layers.1.weight"), "{what}"),
            other => panic!("expected Error::NonFinite, got {other:?}"),
        }
    }
    // The same in f32 storage.
    let mut p = Parts::of(&otflow_artifact().to_bytes(StorageDtype::F32).unwrap());
    p.tensors.get_mut("control_map").unwrap().2[0..4].copy_from_slice(&f32::NAN.to_le_bytes());
    assert!(matches!(p.load(), Err(Error::NonFinite(w)) if w.contains("control_map")));
}

#[test]
fn wrong_dtypes_are_format_errors() {
    // Card says f32, tensors are F64.
    let mut p = f64_parts();
    p.edit_card(|c| {
        c.insert("dtype".into(), "f32".into());
    });
    assert!(format_msg(p.load()).contains("stored as F64, the card says f32"));
    // One tensor in another type.
    let mut p = f64_parts();
    let t = p.tensors.get_mut("c.bias").unwrap();
    *t = (Dtype::I64, vec![1], vec![0; 8]);
    assert!(format_msg(p.load()).contains("c.bias"));
    // An unknown storage dtype in the card.
    let mut p = f64_parts();
    p.edit_card(|c| {
        c.insert("dtype".into(), "f8".into());
    });
    format_msg(p.load());
}

#[test]
fn newer_format_versions_are_unsupported() {
    let want = |r: Result<Artifact, Error>, found: u32| match r {
        Err(Error::UnsupportedVersion {
            found: f,
            supported,
        }) => {
            assert_eq!((f, supported), (found, FORMAT_VERSION));
        }
        other => panic!("expected Error::UnsupportedVersion, got {other:?}"),
    };
    let mut p = f64_parts();
    let next = FORMAT_VERSION + 1;
    p.meta.insert("format_version".into(), next.to_string());
    want(p.load(), next);
    // A newer card may carry fields this version does not know: still a version error.
    let mut p = f64_parts();
    p.meta.insert("format_version".into(), "7".into());
    p.edit_card(|c| {
        c.insert("format_version".into(), 7.into());
        c.insert("quantization".into(), "int4".into());
    });
    want(p.load(), 7);
    let mut p = f64_parts();
    p.edit_card(|c| {
        c.insert("format_version".into(), 9.into());
    });
    want(p.load(), 9);
    // Nonsense versions are malformed files.
    for v in ["0", "one", "-1", ""] {
        let mut p = f64_parts();
        p.meta.insert("format_version".into(), v.into());
        format_msg(p.load());
    }
}

#[test]
fn unknown_card_keys_are_format_errors() {
    let mut p = f64_parts();
    p.edit_card(|c| {
        c.insert("dimm".into(), 2.into());
    });
    assert!(format_msg(p.load()).contains("dimm"));
    let mut p = f64_parts();
    p.edit_card(|c| {
        c["architecture"]
            .as_object_mut()
            .unwrap()
            .insert("width".into(), 4.into());
    });
    assert!(format_msg(p.load()).contains("width"));
    let mut p = f64_parts();
    p.edit_card(|c| {
        c["provenance"]
            .as_object_mut()
            .unwrap()
            .insert("author".into(), "x".into());
    });
    assert!(format_msg(p.load()).contains("author"));
    let mut p = f64_parts();
    p.edit_card(|c| {
        c["normalization"]
            .as_object_mut()
            .unwrap()
            .insert("scale".into(), 1.into());
    });
    assert!(format_msg(p.load()).contains("scale"));
    // Unknown enum values.
    let mut p = f64_parts();
    p.edit_card(|c| {
        c.insert("kind".into(), "density".into());
    });
    format_msg(p.load());
    let mut p = f64_parts();
    p.edit_card(|c| {
        c["architecture"]["type"] = "resnet".into();
    });
    format_msg(p.load());
    // Unknown metadata keys, missing or foreign format names.
    let mut p = f64_parts();
    p.meta.insert("author".into(), "x".into());
    assert!(format_msg(p.load()).contains("author"));
    let mut p = f64_parts();
    p.meta.insert("format".into(), "pt".into());
    format_msg(p.load());
    let mut p = f64_parts();
    p.meta.remove("card");
    format_msg(p.load());
    let mut p = f64_parts();
    p.meta.insert("card".into(), "{not json".into());
    format_msg(p.load());
    let mut p = f64_parts();
    p.edit_card(|c| {
        c.remove("time");
    });
    assert!(format_msg(p.load()).contains("time"));
}

#[test]
fn card_that_disagrees_with_the_tensors_is_rejected() {
    // dim 3 needs A of shape [2, 4].
    let mut p = f64_parts();
    p.edit_card(|c| {
        c.insert("dim".into(), 3.into());
        c.insert(
            "normalization".into(),
            serde_json::json!({"mean": [0, 0, 0], "std": [1, 1, 1]}),
        );
    });
    match p.load() {
        Err(Error::Shape {
            name,
            found,
            expected,
        }) => {
            assert_eq!(name, "A");
            assert_eq!(found, [2, 3]);
            assert_eq!(expected, [2, 4]);
        }
        other => panic!("expected Error::Shape, got {other:?}"),
    }
    // Width m = 5 where the tensors have m = 4.
    let mut p = f64_parts();
    p.edit_card(|c| {
        c["architecture"]["m"] = 5.into();
    });
    assert!(matches!(p.load(), Err(Error::Shape { .. })));
    // nTh = 2 where the file has 3 layers: an extra tensor.
    let mut p = f64_parts();
    p.edit_card(|c| {
        c["architecture"]["n_th"] = 2.into();
    });
    assert!(format_msg(p.load()).contains("unexpected tensor"));
    // control_dim 2 where the control map is 1 x 2.
    let mut p = f64_parts();
    p.edit_card(|c| {
        c.insert("control_dim".into(), 2.into());
    });
    assert!(matches!(p.load(), Err(Error::Shape { name, .. }) if name == "control_map"));
    // No control_dim, but a control map: an extra tensor.
    let mut p = f64_parts();
    p.edit_card(|c| {
        c.insert("control_dim".into(), serde_json::Value::Null);
    });
    assert!(format_msg(p.load()).contains("unexpected tensor `control_map`"));
    // Normalization of the wrong length, or with a zero scale.
    let mut p = f64_parts();
    p.edit_card(|c| {
        c["normalization"]["std"] = serde_json::json!([1.0]);
    });
    format_msg(p.load());
    let mut p = f64_parts();
    p.edit_card(|c| {
        c["normalization"]["std"] = serde_json::json!([1.0, 0.0]);
    });
    assert!(format_msg(p.load()).contains("positive"));
    // A potential must be an OT-Flow network, and vice versa.
    let mut p = f64_parts();
    p.edit_card(|c| {
        c.insert("kind".into(), "velocity".into());
    });
    format_msg(p.load());
    // An empty time interval.
    let mut p = f64_parts();
    p.edit_card(|c| {
        c.insert("time".into(), serde_json::json!([0.5, 0.5]));
    });
    assert!(format_msg(p.load()).contains("time interval"));
}

#[test]
fn absurd_sizes_are_limit_errors_before_any_tensor_is_read() {
    type Edit = Box<dyn Fn(&mut serde_json::Map<String, serde_json::Value>)>;
    let cases: Vec<(&str, Edit)> = vec![
        (
            "dim",
            Box::new(|c| {
                c.insert("dim".into(), (1u64 << 20).into());
            }),
        ),
        (
            "width",
            Box::new(|c| c["architecture"]["m"] = (1u64 << 20).into()),
        ),
        (
            "layers",
            Box::new(|c| c["architecture"]["n_th"] = 1000.into()),
        ),
        (
            "rank",
            Box::new(|c| c["architecture"]["r"] = (1u64 << 40).into()),
        ),
        // Each size within its limit, the total far above MAX_VALUES.
        (
            "total",
            Box::new(|c| {
                c["architecture"]["m"] = (1u64 << 14).into();
                c["architecture"]["n_th"] = 64.into();
            }),
        ),
        (
            "control",
            Box::new(|c| {
                c.insert("dim".into(), (1u64 << 16).into());
                c.insert("control_dim".into(), (1u64 << 16).into());
                c.insert("normalization".into(), serde_json::Value::Null);
            }),
        ),
    ];
    for (what, edit) in cases {
        let mut p = f64_parts();
        p.edit_card(edit);
        assert!(
            matches!(p.load(), Err(Error::Limit(_))),
            "{what}: {:?}",
            p.load()
        );
    }
    // An MLP with 100 hidden layers.
    let mut p = Parts::of(
        &mlp_artifact(ModelKind::Velocity)
            .to_bytes(StorageDtype::F32)
            .unwrap(),
    );
    p.edit_card(|c| c["architecture"]["hidden"] = serde_json::json!(vec![4; 100]));
    assert!(matches!(p.load(), Err(Error::Limit(_))));
    let mut p = Parts::of(
        &mlp_artifact(ModelKind::Velocity)
            .to_bytes(StorageDtype::F32)
            .unwrap(),
    );
    p.edit_card(|c| c["architecture"]["hidden"] = serde_json::json!([]));
    format_msg(p.load());
}

// The "total" case above needs every size within its limit and the total above it.
const _: () = assert!(MAX_VALUES < (1u64 << 14) * (1 << 14) * 63);

#[test]
fn architecture_serializes_with_a_type_tag() {
    let a = Architecture::OtFlow {
        m: 8,
        n_th: 2,
        r: 3,
    };
    assert_eq!(
        serde_json::to_value(&a).unwrap(),
        serde_json::json!({"type": "otflow", "m": 8, "n_th": 2, "r": 3})
    );
    let b: Architecture =
        serde_json::from_str(r#"{"type":"mlp","hidden":[3],"activation":"softplus"}"#).unwrap();
    assert_eq!(
        b,
        Architecture::Mlp {
            hidden: vec![3],
            activation: Activation::Softplus
        }
    );
    assert!(serde_json::from_str::<Architecture>(r#"{"type":"otflow","m":8,"n_th":2}"#).is_err());
}

// ---------------------------------------------------------------------------------
// Python interoperability
// ---------------------------------------------------------------------------------

/// A Python that imports numpy and safetensors: `SOCFLOW_PYTHON`, else the workspace's
/// `target/pyenv`. `Err` says why there is none.
fn python() -> Result<PathBuf, String> {
    socflow_testkit::python_importing("numpy, safetensors.numpy", "numpy and safetensors")
}

#[test]
fn python_reads_artifacts_and_npy_files() {
    let py = match python() {
        Ok(p) => p,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/check_artifact.py");
    let dir = tempfile::tempdir().unwrap();
    let path = |n: &str| dir.path().join(n).to_str().unwrap().to_string();

    let models = [
        ("otflow_f64", otflow_artifact(), StorageDtype::F64),
        ("otflow_f32", otflow_artifact(), StorageDtype::F32),
        ("mlp_f32", mlp_artifact(ModelKind::Score), StorageDtype::F32),
        (
            "mlp_f64",
            mlp_artifact(ModelKind::Velocity),
            StorageDtype::F64,
        ),
        (
            "mlp_f16",
            mlp_artifact(ModelKind::Velocity),
            StorageDtype::F16,
        ),
        (
            "score_vpsde_f32",
            mlp_artifact(ModelKind::Score)
                .with_vpsde(socflow_runtime::vpsde::VpSde {
                    beta_min: 0.2,
                    beta_max: 15.0,
                    ..Default::default()
                })
                .unwrap(),
            StorageDtype::F32,
        ),
    ];
    let mut artifacts = Vec::new();
    for (name, a, dtype) in &models {
        let file = path(&format!("{name}.safetensors"));
        a.save(&file, *dtype).unwrap();
        let stored = Artifact::load(&file).unwrap();
        let tensors: serde_json::Map<String, serde_json::Value> = expected_tensors(&stored)
            .into_iter()
            .map(|(n, (shape, values))| (n, serde_json::json!({"shape": shape, "values": values})))
            .collect();
        let card = serde_json::to_value(&stored.card).unwrap();
        artifacts.push(serde_json::json!({
            "path": file,
            "card": card,
            "tensors": tensors,
            "resave": path(&format!("{name}.resaved.safetensors")),
        }));
    }

    let m2: Vec<f64> = (0..12).map(|i| (i as f64 - 5.5) / 3.0).collect();
    let m1: Vec<f32> = (0..7).map(|i| (i as f32).sqrt() - 1.0).collect();
    socflow_runtime::npy::write_npy(path("a64.npy"), &[4, 3], &m2).unwrap();
    socflow_runtime::npy::write_npy(path("a32.npy"), &[7], &m1).unwrap();
    socflow_runtime::npy::write_npy::<f64>(path("empty.npy"), &[0, 3], &[]).unwrap();
    let npy = serde_json::json!([
        {"path": path("a64.npy"), "dtype": "<f8", "shape": [4, 3], "values": m2},
        // Widened exactly, so Python compares the very f32 values.
        {"path": path("a32.npy"), "dtype": "<f4", "shape": [7], "values": m1.iter().map(|&x| x as f64).collect::<Vec<_>>()},
        {"path": path("empty.npy"), "dtype": "<f8", "shape": [0, 3], "values": []},
    ]);
    let written: Vec<f64> = (0..10).map(|i| 1.0 / (i as f64 + 1.0)).collect();
    let write_npy = serde_json::json!([
        {"path": path("py64.npy"), "dtype": "<f8", "shape": [2, 5], "values": written, "order": "C"},
        {"path": path("py32.npy"), "dtype": "<f4", "shape": [10], "values": written, "order": "C"},
        {"path": path("pyfortran.npy"), "dtype": "<f8", "shape": [2, 5], "values": written, "order": "F"},
        {"path": path("pybig.npy"), "dtype": ">f8", "shape": [10], "values": written, "order": "C"},
        {"path": path("pyint.npy"), "dtype": "<i8", "shape": [10], "values": written, "order": "C"},
        {"path": path("py3d.npy"), "dtype": "<f8", "shape": [1, 2, 5], "values": written, "order": "C"},
    ]);
    let manifest = serde_json::json!({
        "artifacts": artifacts,
        "npy": npy,
        "write_npy": write_npy,
    });
    let manifest_path = path("manifest.json");
    std::fs::write(&manifest_path, manifest.to_string()).unwrap();

    let out = std::process::Command::new(&py)
        .arg(script)
        .arg(&manifest_path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "check_artifact.py failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("check_artifact: ok"), "{stdout}");
    eprintln!("{stdout}");

    // Files rewritten by Python's safetensors load back to the same artifacts.
    for (name, _, _) in &models {
        let ours = Artifact::load(path(&format!("{name}.safetensors"))).unwrap();
        let theirs = Artifact::load(path(&format!("{name}.resaved.safetensors"))).unwrap();
        assert_eq!(theirs, ours, "{name}");
    }
    // Arrays numpy wrote.
    let (shape, values) = socflow_runtime::npy::read_npy_f64(path("py64.npy")).unwrap();
    assert_eq!(shape, [2, 5]);
    assert_eq!(values, written);
    let (shape, values) = socflow_runtime::npy::read_npy_f64(path("py32.npy")).unwrap();
    assert_eq!(shape, [10]);
    let rounded: Vec<f64> = written.iter().map(|&x| x as f32 as f64).collect();
    assert_eq!(values, rounded);
    for f in ["pyfortran.npy", "pybig.npy", "pyint.npy", "py3d.npy"] {
        match socflow_runtime::npy::read_npy_f64(path(f)) {
            Err(Error::Unsupported(msg)) => assert!(msg.contains(f), "{msg}"),
            other => panic!("{f}: expected Error::Unsupported, got {other:?}"),
        }
    }
}
