//! The `device` setting of the training configs: "cpu" by default and left out of the
//! JSON (configs, checkpoints and artifacts of CPU runs are as before the setting),
//! "cuda" written and read back, unknown names refused; training on "cuda" without a
//! usable GPU (or without the `cuda` feature) is an error saying why, not a panic.

use socflow_trainer::autodiff::Error as AdError;
use socflow_trainer::checkpoint::Checkpointing;
use socflow_trainer::data::{Dataset, Toy};
use socflow_trainer::device::Device;
use socflow_trainer::diffusion::{train_diffusion, DiffusionConfig};
use socflow_trainer::flow_matching::{train_flow_matching, FlowMatchingConfig};
use socflow_trainer::otflow::{train_otflow, OtFlowConfig};
use socflow_trainer::soc::{
    train_soc_checkpointed, train_soc_on_device, QuadraticProblem, SocConfig,
};
use socflow_trainer::Error;

#[test]
fn device_is_cpu_by_default_and_round_trips() {
    macro_rules! check {
        ($ty:ty) => {{
            let cpu = <$ty>::default();
            assert_eq!(cpu.device, Device::Cpu);
            let json = cpu.to_json().unwrap();
            assert!(!json.contains("device"), "{json}");
            let gpu = <$ty>::from_json(r#"{"device": "cuda"}"#).unwrap();
            assert_eq!(gpu.device, Device::Cuda);
            let json = gpu.to_json().unwrap();
            assert!(json.contains(r#""device":"cuda""#), "{json}");
            assert_eq!(<$ty>::from_json(&json).unwrap(), gpu);
            assert!(<$ty>::from_json(r#"{"device": "tpu"}"#).is_err());
        }};
    }
    check!(OtFlowConfig);
    check!(FlowMatchingConfig);
    check!(DiffusionConfig);
    check!(SocConfig);
}

/// Whether the error is the GPU backend's "not here" (no feature, no driver, no
/// device), as opposed to a training failure.
fn is_no_gpu(e: &Error) -> bool {
    matches!(
        e,
        Error::Autodiff(AdError::Unsupported(_)) | Error::Autodiff(AdError::Backend { .. })
    )
}

/// Without a GPU, every loop asked for "cuda" returns the backend's error; with one,
/// it trains (one iteration).
#[test]
fn training_on_cuda_without_a_gpu_is_an_error() {
    let data = Dataset::from_toy(Toy::Moons, 300, 1).unwrap();
    let quiet = &mut |_: &_| {};
    let results = [
        train_otflow(
            &OtFlowConfig {
                device: Device::Cuda,
                iterations: 1,
                batch_size: 64,
                m: 8,
                ..OtFlowConfig::default()
            },
            &data,
            None,
            quiet,
        )
        .map(|_| ()),
        train_flow_matching(
            &FlowMatchingConfig {
                device: Device::Cuda,
                iterations: 1,
                batch_size: 64,
                hidden: vec![8],
                ..FlowMatchingConfig::default()
            },
            &data,
            None,
            &mut |_| {},
        )
        .map(|_| ()),
        train_diffusion(
            &DiffusionConfig {
                device: Device::Cuda,
                iterations: 1,
                batch_size: 64,
                hidden: vec![8],
                ..DiffusionConfig::default()
            },
            &data,
            None,
            &mut |_| {},
        )
        .map(|_| ()),
    ];
    let soc = SocConfig {
        device: Device::Cuda,
        m: 4,
        steps: 4,
        batch_size: 8,
        iterations: 1,
        validation_paths: 8,
        ..SocConfig::default()
    };
    let problem = QuadraticProblem::hjb100();
    let soc_result =
        train_soc_on_device(&problem, &soc, &mut Checkpointing::none(), &mut |_| {}).map(|_| ());
    for (i, r) in results.into_iter().chain([soc_result]).enumerate() {
        match r {
            Ok(()) => eprintln!("loop {i}: trained on the GPU"),
            Err(e) => {
                assert!(is_no_gpu(&e), "loop {i}: {e:?}");
                eprintln!("loop {i}: {e}");
            }
        }
    }
    // A CPU-only problem (`dyn ControlProblem<Cpu>`) asked for the GPU: an error
    // naming the entry point that takes problems running on both.
    let dyn_problem: &dyn socflow_trainer::soc::ControlProblem<socflow_trainer::autodiff::Cpu> =
        &problem;
    let e = train_soc_checkpointed(dyn_problem, &soc, &mut Checkpointing::none(), &mut |_| {})
        .expect_err("a CPU-only problem cannot train on the GPU");
    assert!(e.to_string().contains("train_soc_on_device"), "{e}");
}
