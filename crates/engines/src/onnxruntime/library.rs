//! Finding the ONNX Runtime shared library.
//!
//! The search order is: an explicit path, the `ORT_DYLIB_PATH` environment variable, the
//! `onnxruntime` Python package (its wheel ships the library in `onnxruntime/capi/`), then the
//! system library path as the dynamic loader searches it. A path may name the library file or a
//! folder that holds it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use rtserve_core::EngineError;

use super::runtime;

/// The environment variable that names the library (the name `ort` itself reads).
pub const LIBRARY_ENV: &str = "ORT_DYLIB_PATH";

/// How the library was found: given explicitly.
pub const FROM_EXPLICIT_PATH: &str = "explicit path";
/// How the library was found: `ORT_DYLIB_PATH`.
pub const FROM_ENV: &str = "ORT_DYLIB_PATH";
/// How the library was found: the `onnxruntime` Python package.
pub const FROM_PYTHON_PACKAGE: &str = "python package";
/// How the library was found: the system library path, searched by the dynamic loader.
pub const FROM_SYSTEM: &str = "system library path";

/// How long the Python interpreter may take to say where the package is.
const PYTHON_TIMEOUT: Duration = Duration::from_secs(5);

/// Asks Python where the `onnxruntime` package is without importing it (importing loads the
/// library and numpy, which is slow).
const PYTHON_SCRIPT: &str = "import importlib.util,os;s=importlib.util.find_spec('onnxruntime');\
print(os.path.dirname(s.origin) if s and s.origin else '')";

/// Finds the ONNX Runtime shared library and says how it was found (one of the `FROM_*`
/// constants), so callers can log "onnxruntime from python package at ...".
///
/// An explicit path or `ORT_DYLIB_PATH` that names no library is an error, not a reason to look
/// elsewhere. The last step, the system library path, is only taken when the dynamic loader can
/// actually load the library; that load is the one the process then keeps (see
/// [`OrtEngine::new`](super::OrtEngine::new)). Files found by the other steps are checked to
/// exist here and loaded by `OrtEngine::new`, which fails cleanly on a bad file.
pub fn locate_library(explicit: Option<&Path>) -> Result<(PathBuf, &'static str), EngineError> {
    locate_with(explicit, std::env::var_os(LIBRARY_ENV), python_package_dir, system_library)
}

/// [`locate_library`] with its sources of information passed in, so tests can fake them.
fn locate_with(
    explicit: Option<&Path>,
    env: Option<OsString>,
    python_package: impl FnOnce() -> Option<PathBuf>,
    system: impl FnOnce() -> Result<PathBuf, EngineError>,
) -> Result<(PathBuf, &'static str), EngineError> {
    if let Some(path) = explicit {
        return resolve(path)
            .map(|p| (p, FROM_EXPLICIT_PATH))
            .ok_or_else(|| not_found(path, "the configured ONNX Runtime library path"));
    }
    if let Some(value) = env.filter(|v| !v.is_empty()) {
        let path = PathBuf::from(value);
        return resolve(&path).map(|p| (p, FROM_ENV)).ok_or_else(|| not_found(&path, LIBRARY_ENV));
    }
    if let Some(found) = python_package().and_then(|dir| library_in_dir(&dir.join("capi"))) {
        return Ok((found, FROM_PYTHON_PACKAGE));
    }
    system().map(|p| (p, FROM_SYSTEM)).map_err(|e| {
        EngineError::new(format!(
            "ONNX Runtime not found: set {LIBRARY_ENV} to the path of {}, `pip install onnxruntime`, \
             or install it on the system library path ({e})",
            library_file_name()
        ))
    })
}

fn not_found(path: &Path, what: &str) -> EngineError {
    EngineError::new(format!(
        "{what} {} is neither an ONNX Runtime library nor a folder holding {}",
        path.display(),
        library_file_name()
    ))
}

/// The platform's file name for the library, e.g. `libonnxruntime.so`.
fn library_file_name() -> String {
    format!("{}onnxruntime{}", std::env::consts::DLL_PREFIX, std::env::consts::DLL_SUFFIX)
}

/// A path given by the user: the library file itself, or a folder to look in.
fn resolve(path: &Path) -> Option<PathBuf> {
    if path.is_file() {
        Some(path.to_path_buf())
    } else if path.is_dir() {
        library_in_dir(path)
    } else {
        None
    }
}

/// The library in `dir`: `libonnxruntime.so` if present, else the highest versioned
/// `libonnxruntime.so.X.Y.Z` (the PyPI wheel ships only the versioned name).
fn library_in_dir(dir: &Path) -> Option<PathBuf> {
    let entries = std::fs::read_dir(dir).ok()?;
    let names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_file())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    pick_library(&library_file_name(), &names).map(|name| dir.join(name))
}

/// Chooses among file names: the plain `base` name first, then `base.<version>` with the
/// highest version (compared numerically part by part).
fn pick_library<'a>(base: &str, names: &'a [String]) -> Option<&'a str> {
    if let Some(exact) = names.iter().find(|n| *n == base) {
        return Some(exact);
    }
    names
        .iter()
        .filter_map(|n| {
            let version = n.strip_prefix(base)?.strip_prefix('.')?;
            let parts: Option<Vec<u64>> = version.split('.').map(|p| p.parse().ok()).collect();
            Some((parts?, n.as_str()))
        })
        .max()
        .map(|(_, name)| name)
}

/// The folder of the `onnxruntime` Python package, if `python3` has one. Any failure (no Python,
/// no package, a hang past [`PYTHON_TIMEOUT`]) is `None`.
fn python_package_dir() -> Option<PathBuf> {
    let mut child = Command::new("python3")
        .args(["-c", PYTHON_SCRIPT])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let deadline = Instant::now() + PYTHON_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => break,
            Ok(None) if Instant::now() < deadline => sleep(Duration::from_millis(5)),
            Ok(Some(_)) => return None,
            Ok(None) | Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                tracing::debug!("python3 did not say where onnxruntime is within {PYTHON_TIMEOUT:?}");
                return None;
            }
        }
    }
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take()?, &mut out).ok()?;
    let dir = out.trim();
    (!dir.is_empty()).then(|| PathBuf::from(dir))
}

/// The bare library name, accepted only if the dynamic loader can load it from the system
/// library path.
fn system_library() -> Result<PathBuf, EngineError> {
    let path = PathBuf::from(library_file_name());
    runtime::load_library(&path)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn picks_plain_name_then_highest_version() {
        let base = "libonnxruntime.so";
        let wheel = names(&[
            "libonnxruntime_providers_shared.so",
            "libonnxruntime.so.1.9.0",
            "libonnxruntime.so.1.32.0",
            "libonnxruntime.so.1.32.0.bak",
        ]);
        assert_eq!(pick_library(base, &wheel), Some("libonnxruntime.so.1.32.0"));
        let mut with_plain = wheel.clone();
        with_plain.push(base.to_string());
        assert_eq!(pick_library(base, &with_plain), Some(base));
        assert_eq!(pick_library(base, &names(&["libonnxruntime_providers_shared.so"])), None);
    }

    /// A fresh empty folder under the system temp dir.
    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("rtserve-ort-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        dir
    }

    fn no_system() -> Result<PathBuf, EngineError> {
        Err(EngineError::new("not on the system path"))
    }

    #[test]
    fn explicit_path_wins_and_must_exist() {
        let dir = temp_dir("explicit");
        let lib = dir.join(library_file_name());
        std::fs::write(&lib, b"not really a library").expect("write");
        let env = Some(OsString::from("/nonexistent/env.so"));

        let found = locate_with(Some(&lib), env.clone(), || None, no_system).expect("file");
        assert_eq!(found, (lib.clone(), FROM_EXPLICIT_PATH));
        let found = locate_with(Some(&dir), env.clone(), || None, no_system).expect("folder");
        assert_eq!(found, (lib, FROM_EXPLICIT_PATH));

        let missing = dir.join("missing.so");
        let err = locate_with(Some(&missing), None, || Some(dir.clone()), no_system)
            .expect_err("a missing explicit path is an error");
        assert!(err.0.contains("missing.so"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn env_var_before_python_and_system() {
        let dir = temp_dir("env");
        let lib = dir.join("custom-ort.so");
        std::fs::write(&lib, b"x").expect("write");
        let found = locate_with(None, Some(lib.clone().into()), || None, no_system).expect("env");
        assert_eq!(found, (lib, FROM_ENV));
        let err = locate_with(None, Some("/nonexistent/ort.so".into()), || None, no_system)
            .expect_err("a wrong ORT_DYLIB_PATH is an error");
        assert!(err.0.contains(LIBRARY_ENV), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn python_package_then_system() {
        let dir = temp_dir("python");
        let capi = dir.join("capi");
        std::fs::create_dir_all(&capi).expect("mkdir");
        let versioned = capi.join(format!("{}.1.32.0", library_file_name()));
        std::fs::write(&versioned, b"x").expect("write");
        std::fs::write(capi.join("libonnxruntime_providers_shared.so"), b"x").expect("write");

        let found = locate_with(None, Some(OsString::new()), || Some(dir.clone()), no_system)
            .expect("python package");
        assert_eq!(found, (versioned, FROM_PYTHON_PACKAGE));

        let found =
            locate_with(None, None, || None, || Ok(PathBuf::from("libonnxruntime.so"))).expect("system");
        assert_eq!(found.1, FROM_SYSTEM);

        let empty = temp_dir("python-empty");
        let err = locate_with(None, None, || Some(empty.clone()), no_system).expect_err("nothing anywhere");
        assert!(err.0.contains("pip install onnxruntime"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_dir_all(&empty);
    }
}
