//! Training runs interrupted at a checkpoint and resumed from the file continue
//! bitwise as the uninterrupted runs (OT-Flow and flow matching), and a checkpoint of
//! another configuration is refused.

use socflow_trainer::checkpoint::{Checkpoint, Checkpointing};
use socflow_trainer::data::{Dataset, Toy};
use socflow_trainer::flow_matching::{
    train_flow_matching_checkpointed, Coupling, FlowMatchingConfig,
};
use socflow_trainer::optim::{AdamConfig, Schedule};
use socflow_trainer::otflow::{train_otflow_checkpointed, OtFlowConfig};
use socflow_trainer::Error;

fn bits(v: &[f64]) -> Vec<u64> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Runs `train` once uninterrupted (collecting its checkpoints), then again from the
/// checkpoint at iteration `at` read back from bytes; returns both runs' outputs.
fn run_twice<T>(
    at: u64,
    mut train: impl FnMut(&mut Checkpointing<'_>) -> Result<T, Error>,
) -> (T, T, Vec<Checkpoint>) {
    let mut saved = Vec::new();
    let full = {
        let mut save = |c: &Checkpoint| {
            saved.push(c.clone());
            Ok(())
        };
        let mut ck = Checkpointing {
            every: 4,
            resume: None,
            save: &mut save,
        };
        train(&mut ck).unwrap()
    };
    let mid = saved
        .iter()
        .find(|c| c.iteration == at)
        .expect("a checkpoint at the resume point");
    let mid = Checkpoint::from_bytes(&mid.to_bytes().unwrap()).unwrap();
    let resumed = {
        let mut ck = Checkpointing {
            every: 0,
            resume: Some(mid),
            save: &mut |_| Ok(()),
        };
        train(&mut ck).unwrap()
    };
    (full, resumed, saved)
}

#[test]
fn otflow_resumes_bitwise() {
    let data = Dataset::from_toy(Toy::EightGaussians, 400, 3).unwrap();
    let (tr, va) = data.split(0.8, 1).unwrap();
    let config = OtFlowConfig {
        m: 8,
        batch_size: 64,
        iterations: 12,
        optimizer: AdamConfig::adam(0.05),
        schedule: Schedule::Step {
            every: 5,
            factor: 0.5,
        },
        validate_every: 4,
        ..OtFlowConfig::default()
    };
    let (full, resumed, saved) = run_twice(4, |ck| {
        train_otflow_checkpointed(&config, &tr, Some(&va), ck, &mut |_| {})
    });
    assert_eq!(
        saved.iter().map(|c| c.iteration).collect::<Vec<_>>(),
        vec![4, 8, 12]
    );
    assert_eq!(resumed.losses.len(), 8);
    assert_eq!(bits(&full.losses[4..]), bits(&resumed.losses));
    for (a, b) in full.params.k.iter().zip(&resumed.params.k) {
        assert_eq!(bits(a), bits(b));
    }
    assert_eq!(bits(&full.params.a), bits(&resumed.params.a));
    assert_eq!(full.validation.last(), resumed.validation.last());

    // A checkpoint from another configuration is refused, naming the reason.
    let other = OtFlowConfig {
        seed: 9,
        ..config.clone()
    };
    let mut ck = Checkpointing {
        every: 0,
        resume: Some(saved[0].clone()),
        save: &mut |_| Ok(()),
    };
    match train_otflow_checkpointed(&other, &tr, Some(&va), &mut ck, &mut |_| {}) {
        Err(Error::Checkpoint(m)) => assert!(m.contains("configuration"), "{m}"),
        other => panic!("expected a checkpoint error, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn flow_matching_resumes_bitwise() {
    let data = Dataset::from_toy(Toy::Moons, 600, 4).unwrap();
    let (tr, va) = data.split(0.8, 2).unwrap();
    let config = FlowMatchingConfig {
        hidden: vec![16, 16],
        batch_size: 64,
        iterations: 12,
        coupling: Coupling::MiniBatchOt,
        schedule: Schedule::Plateau {
            factor: 0.5,
            patience: 0,
            threshold: 0.0,
            cooldown: 0,
            min_lr: 1e-5,
        },
        validate_every: 2,
        ..FlowMatchingConfig::default()
    };
    let (full, resumed, _) = run_twice(8, |ck| {
        train_flow_matching_checkpointed(&config, &tr, Some(&va), ck, &mut |_| {})
    });
    assert_eq!(bits(&full.losses[8..]), bits(&resumed.losses));
    for (a, b) in full
        .net
        .params()
        .values
        .iter()
        .zip(&resumed.net.params().values)
    {
        assert_eq!(bits(a), bits(b));
    }
}
