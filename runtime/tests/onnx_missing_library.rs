//! A missing or broken ONNX Runtime library is an error, never a panic, and a later
//! call can still succeed. ort's library is process-global, so this test has its own
//! binary: nothing else here loads ONNX Runtime first.

use std::path::PathBuf;

use socflow_runtime::onnx::{self, OnnxField, OnnxOptions};
use socflow_runtime::Error;

/// What a model load says with `ORT_DYLIB_PATH` set to `path`.
fn load_error(path: &std::path::Path) -> String {
    std::env::set_var("ORT_DYLIB_PATH", path);
    match OnnxField::<f32>::from_bytes(b"not even read".to_vec(), OnnxOptions::default()) {
        Err(Error::Unsupported(msg)) => msg,
        Err(e) => panic!("wrong error kind: {e}"),
        Ok(_) => panic!("loaded without a library"),
    }
}

#[test]
fn missing_library_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    // No such file: the message names it and says how to fix it.
    let missing = dir.path().join("libonnxruntime.so.1.99.0");
    let msg = load_error(&missing);
    assert!(
        msg.contains(&format!("ORT_DYLIB_PATH={}", missing.display())),
        "{msg}"
    );
    assert!(msg.contains("no such file"), "{msg}");
    assert!(msg.contains("onnxruntime"), "{msg}");
    assert!(matches!(onnx::init(), Err(Error::Unsupported(_))));

    // A file that is not a library: the loader's error, no panic.
    let fake = dir.path().join("libonnxruntime.so.1.24.0");
    std::fs::write(&fake, b"not an ELF file").unwrap();
    let msg = load_error(&fake);
    assert!(msg.contains(&fake.display().to_string()), "{msg}");
    assert!(msg.contains("failed to load"), "{msg}");

    // Without ORT_DYLIB_PATH the search runs; where the Python environment has the
    // wheel, the same process now loads it (the failures above left nothing behind).
    std::env::remove_var("ORT_DYLIB_PATH");
    let found: Vec<PathBuf> = onnx::library_candidates();
    if found.is_empty() {
        match onnx::init() {
            Err(Error::Unsupported(msg)) => {
                assert!(msg.contains("tried"), "{msg}");
                eprintln!("skipped the recovery check: no ONNX Runtime library installed");
            }
            other => panic!("no library but init gave {other:?}"),
        }
        return;
    }
    let lib = onnx::init().expect("the found library loads");
    assert!(found.contains(&lib));
}
