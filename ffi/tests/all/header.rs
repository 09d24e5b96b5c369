//! The checked-in C header is what cbindgen generates from the crate today.
//!
//! `SOCFLOW_BLESS=1 cargo test -p socflow-ffi --test all header::` rewrites it.

use std::path::Path;

#[test]
fn header_is_current() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml"))
        .expect("ffi/cbindgen.toml parses");
    let bindings = cbindgen::Builder::new()
        .with_crate(crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen generates the header");
    let mut generated = Vec::new();
    bindings.write(&mut generated);
    let path = crate_dir.join("include/socflow.h");
    if std::env::var_os("SOCFLOW_BLESS").is_some() {
        std::fs::write(&path, &generated).expect("write include/socflow.h");
        return;
    }
    let checked_in = std::fs::read(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "ffi/include/socflow.h is stale: the exported API changed. Regenerate it with \
         `SOCFLOW_BLESS=1 cargo test -p socflow-ffi --test all header::` and commit it."
    );
}
