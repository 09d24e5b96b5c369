//! Gives the shared library the soname `libsocflow.so.<major>` on Linux, so programs
//! linked against it keep working when a compatible (same major) version replaces it.
//! `scripts/install-c` installs it as `libsocflow.so.<version>` with the usual links.
//! The header is not generated here: the `header` test checks the checked-in copy.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if os == "linux" {
        let major = env!("CARGO_PKG_VERSION_MAJOR");
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libsocflow.so.{major}");
    }
}
