//! Calls `socflow_controller_control` (through a function pointer, as a C program
//! calls the shared library) or the Rust API's `Controller::control` on the same
//! OT-Flow model (d = 12, m = 64, f64) N times. `scripts/bench-abi` runs it under
//! callgrind, whose instruction counts do not depend on the machine's load, and
//! prints the C ABI's instructions per call over the Rust API's.
//!
//! Usage: `abi_calls rust|c N`

use socflow::*;
use socflow_runtime::artifact::{Artifact, Provenance, StorageDtype};
use socflow_runtime::model::Model;
use socflow_runtime::nn::OtFlowParams;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(mode), Some(calls)) = (args.get(1), args.get(2)) else {
        return Err("usage: abi_calls rust|c N".into());
    };
    let calls: usize = calls.parse()?;
    let (d, m) = (12, 64);
    let mut sd = socflow_testkit::otflow_state_dict(d, m, 2, 3);
    let p = OtFlowParams::from_state_dict(d, m, 2, (d + 1).min(10), &mut sd)?;
    let bytes = Artifact::otflow(p, [0.0, 1.0], Provenance::now("abi_calls"))?
        .to_bytes(StorageDtype::F64)?;
    let mut model = socflow_model::default();
    let mut ctl = socflow_controller::default();
    // SAFETY: `bytes` is a live buffer; the handles are locals.
    unsafe {
        if socflow_model_load_buffer(bytes.as_ptr(), bytes.len(), &mut model)
            != socflow_status::SOCFLOW_OK
            || socflow_controller_create(model, SOCFLOW_PRECISION_F64, &mut ctl)
                != socflow_status::SOCFLOW_OK
        {
            return Err("cannot create the controller".into());
        }
    }
    let mut rust = Model::<f64>::from_bytes(&bytes)?.controller()?;
    let x: Vec<f64> = (0..d).map(|i| 0.01 * i as f64 - 0.2).collect();
    let mut u = vec![0.0; d];
    let f = std::hint::black_box(
        socflow_controller_control
            as unsafe extern "C" fn(
                socflow_controller,
                f64,
                *const f64,
                usize,
                *mut f64,
                usize,
            ) -> socflow_status,
    );
    for _ in 0..calls {
        match mode.as_str() {
            "rust" => rust.control(0.3, std::hint::black_box(&x), &mut u)?,
            // SAFETY: `x` and `u` are live buffers of length d.
            _ => std::hint::black_box(unsafe { f(ctl, 0.3, x.as_ptr(), d, u.as_mut_ptr(), d) })
                .ok()?,
        }
    }
    println!("{mode}: {calls} calls, u[0] = {:.6}", u[0]);
    Ok(())
}

trait StatusOk {
    fn ok(self) -> Result<(), Box<dyn std::error::Error>>;
}

impl StatusOk for socflow_status {
    fn ok(self) -> Result<(), Box<dyn std::error::Error>> {
        if self == socflow_status::SOCFLOW_OK {
            Ok(())
        } else {
            Err(format!("socflow_controller_control: {self:?}").into())
        }
    }
}
