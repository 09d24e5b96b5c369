//! Finding the CUDA libraries the backend opens at run time.
//!
//! cudarc (`dynamic-loading`) opens each library by name (`libnvrtc.so`,
//! `libnvrtc.so.13`, `libnvrtc.so.12`, …), so only the dynamic loader's path is
//! searched: `LD_LIBRARY_PATH`, the `ldconfig` cache, the system folders; and it panics
//! when none loads. The backend checks first, and when a library is not on the
//! loader's path it looks in these folders, in order, and preloads the first file found
//! by its full path (the loader then answers cudarc's by-name request with the library
//! already loaded under that soname):
//!
//! 1. the folders of `SOCFLOW_CUDA_LIB_DIR` (a `:`-separated list);
//! 2. the NVIDIA wheels of a Python environment (`nvidia/cu13/lib` for CUDA 13,
//!    `nvidia/cuda_nvrtc/lib`, `nvidia/cublas/lib` and `nvidia/cu12/lib` for CUDA 12) in
//!    the site-packages of `SOCFLOW_PYTHON`'s environment (an interpreter path),
//!    `VIRTUAL_ENV`, a `pyenv` or `target/pyenv` folder beside the executable or one of
//!    its parents, `./target/pyenv` (scripts/setup-python installs the NVRTC wheel
//!    there), and `~/.local`;
//! 3. a CUDA toolkit: `CUDA_HOME`, `CUDA_PATH`, `CUDA_ROOT`, `/usr/local/cuda`, then
//!    `/usr/local/cuda-*` (newest first), each `lib64`, `lib` and
//!    `targets/<arch>-linux/lib`.
//!
//! The driver (`libcuda.so.1`) comes with the NVIDIA kernel driver and is only ever
//! looked for on the loader's path.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

/// A library the backend needs besides the driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CudaLib {
    /// NVRTC, the run-time compiler of the kernels.
    Nvrtc,
    /// cuBLAS, the GEMMs of the networks.
    Cublas,
}

impl CudaLib {
    /// The library's name in messages.
    pub(crate) fn name(self) -> &'static str {
        match self {
            CudaLib::Nvrtc => "NVRTC (libnvrtc)",
            CudaLib::Cublas => "cuBLAS (libcublas)",
        }
    }

    /// Files to look for in a folder, preferred first: the library itself and, before
    /// it, the libraries it opens or links by name (preloaded from the same folder).
    fn files(self) -> (&'static [&'static str], &'static [&'static str]) {
        match self {
            CudaLib::Nvrtc => (
                &["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"],
                &["libnvrtc-builtins.so"],
            ),
            CudaLib::Cublas => (
                &["libcublas.so.13", "libcublas.so.12", "libcublas.so"],
                &["libcublasLt.so"],
            ),
        }
    }

    /// Whether cudarc finds the library by name now.
    fn present(self) -> bool {
        // SAFETY: opening a shared library runs its initializers; these are NVIDIA's
        // CUDA libraries (or whatever the user put on the loader's path under their
        // names), which is what cudarc itself would open on its first call.
        let found = std::panic::catch_unwind(|| unsafe {
            match self {
                CudaLib::Nvrtc => cudarc::nvrtc::sys::is_culib_present(),
                CudaLib::Cublas => cudarc::cublas::sys::is_culib_present(),
            }
        });
        found.unwrap_or(false)
    }
}

/// Libraries preloaded by full path: kept open for the life of the process.
static PRELOADED: Mutex<Vec<libloading::Library>> = Mutex::new(Vec::new());

/// Makes `lib` loadable by cudarc: `Ok` with where it comes from, or `Err` with every
/// place searched.
pub(crate) fn ensure(lib: CudaLib) -> Result<String, String> {
    if lib.present() {
        return Ok("the dynamic loader's path".into());
    }
    let (names, companions) = lib.files();
    let mut searched = vec!["the dynamic loader's path (LD_LIBRARY_PATH, ldconfig)".to_string()];
    let mut failed = Vec::new();
    for dir in search_dirs() {
        let Some(file) = names.iter().map(|n| dir.join(n)).find(|p| p.is_file()) else {
            searched.push(dir.display().to_string());
            continue;
        };
        for companion in companion_files(&dir, companions) {
            // A companion that fails to load is reported by the library's own load.
            let _ = preload(&companion);
        }
        match preload(&file) {
            Ok(()) if lib.present() => return Ok(file.display().to_string()),
            Ok(()) => failed.push(format!(
                "{} (loaded, but not under a name cudarc asks for)",
                file.display()
            )),
            Err(e) => failed.push(format!("{} ({e})", file.display())),
        }
    }
    let mut msg = format!("{} not found: searched {}", lib.name(), searched.join(", "));
    if !failed.is_empty() {
        msg.push_str(&format!("; found but not loadable: {}", failed.join(", ")));
    }
    msg.push_str(
        ". Install the CUDA toolkit or the NVIDIA wheels (pip install nvidia-cuda-nvrtc \
         nvidia-cublas), or name the folder in SOCFLOW_CUDA_LIB_DIR",
    );
    Err(msg)
}

fn preload(path: &Path) -> Result<(), String> {
    #[cfg(unix)]
    {
        use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};
        // SAFETY: as in `CudaLib::present`: a CUDA library's initializers run, as they
        // would when cudarc opens it by name.
        let lib = unsafe { Library::open(Some(path), RTLD_NOW | RTLD_GLOBAL) }
            .map_err(|e| e.to_string())?;
        PRELOADED
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(lib.into());
        Ok(())
    }
    #[cfg(not(unix))]
    {
        // SAFETY: as above.
        let lib = unsafe { libloading::Library::new(path) }.map_err(|e| e.to_string())?;
        PRELOADED
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(lib);
        Ok(())
    }
}

/// Files in `dir` whose names start with one of `prefixes`.
fn companion_files(dir: &Path, prefixes: &[&str]) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            prefixes.iter().any(|p| name.starts_with(p)) && !name.contains(".alt.")
        })
        .map(|e| e.path())
        .collect();
    files.sort();
    files
}

/// The folders searched after the loader's path, in order (module docs), existing
/// ones only, each once.
pub(crate) fn search_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(v) = std::env::var_os("SOCFLOW_CUDA_LIB_DIR") {
        dirs.extend(std::env::split_paths(&v));
    }
    let mut envs: Vec<PathBuf> = Vec::new();
    if let Some(py) = std::env::var_os("SOCFLOW_PYTHON").filter(|p| !p.is_empty()) {
        if let Some(root) = Path::new(&py).parent().and_then(Path::parent) {
            envs.push(root.to_path_buf());
        }
    }
    if let Some(v) = std::env::var_os("VIRTUAL_ENV").filter(|p| !p.is_empty()) {
        envs.push(PathBuf::from(v));
    }
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(4) {
            envs.push(dir.join("pyenv"));
            envs.push(dir.join("target").join("pyenv"));
        }
    }
    envs.push(PathBuf::from("target/pyenv"));
    let mut sites: Vec<PathBuf> = Vec::new();
    for env in &envs {
        for lib in ["lib", "lib64"] {
            sites.extend(python_dirs(&env.join(lib)));
        }
    }
    if let Some(home) = std::env::var_os("HOME").filter(|p| !p.is_empty()) {
        sites.extend(python_dirs(&Path::new(&home).join(".local/lib")));
    }
    for site in sites {
        for sub in ["cu13", "cuda_nvrtc", "cublas", "cu12"] {
            dirs.push(site.join("nvidia").join(sub).join("lib"));
        }
    }
    let mut toolkits: Vec<PathBuf> = ["CUDA_HOME", "CUDA_PATH", "CUDA_ROOT"]
        .iter()
        .filter_map(std::env::var_os)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .collect();
    toolkits.push(PathBuf::from("/usr/local/cuda"));
    if let Ok(entries) = std::fs::read_dir("/usr/local") {
        let mut versioned: Vec<PathBuf> = entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("cuda-"))
            .map(|e| e.path())
            .collect();
        versioned.sort_by_key(|p| std::cmp::Reverse(version_key(&p.to_string_lossy())));
        toolkits.extend(versioned);
    }
    let target = format!("targets/{}-linux/lib", std::env::consts::ARCH);
    for tk in toolkits {
        for sub in ["lib64", "lib", target.as_str()] {
            dirs.push(tk.join(sub));
        }
    }
    let mut seen = std::collections::HashSet::new();
    dirs.retain(|d| d.is_dir() && seen.insert(std::fs::canonicalize(d).unwrap_or(d.clone())));
    dirs
}

/// `<lib>/python3*/site-packages`, newest Python first.
fn python_dirs(lib: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(lib) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
        .map(|e| e.path().join("site-packages"))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort_by_key(|p| std::cmp::Reverse(version_key(&p.to_string_lossy())));
    dirs
}

/// The numbers in a name, for ordering versions (cuda-13.0 after cuda-12.8).
fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect()
}
