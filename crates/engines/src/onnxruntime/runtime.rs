//! The process-wide ONNX Runtime: the shared library, loaded once, and the one environment that
//! every session is created in.
//!
//! `ort` keeps the loaded library in a process global that cannot be replaced, and allows one
//! environment per process. Nothing in `ort` may be called before the library is loaded (it
//! would try to load one itself and panic on failure), so every entry point of this crate goes
//! through [`runtime`] first.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use ort::environment::Environment;
use ort::logging::LogLevel;
use rtserve_core::EngineError;

use super::library::locate_library;
use crate::panic::panic_message;

/// The loaded library and the process's environment.
pub(crate) struct Runtime {
    pub(crate) environment: Environment,
    pub(crate) library: PathBuf,
    pub(crate) found_by: &'static str,
}

static RUNTIME: OnceLock<Runtime> = OnceLock::new();
/// Serialises the first initialisation, so two engines created at once load one library.
static INIT: Mutex<()> = Mutex::new(());
/// The path of the library `ort` has loaded, once it has.
static LOADED: Mutex<Option<PathBuf>> = Mutex::new(None);

/// The process's runtime, initialised on first use from the library [`locate_library`] finds for
/// `explicit`. Later calls return the same runtime; a different `explicit` path is then ignored
/// with a warning, since a process can only hold one ONNX Runtime.
pub(crate) fn runtime(explicit: Option<&Path>) -> Result<&'static Runtime, EngineError> {
    if let Some(runtime) = RUNTIME.get() {
        warn_if_other(explicit, &runtime.library);
        return Ok(runtime);
    }
    let _init = INIT.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(runtime) = RUNTIME.get() {
        warn_if_other(explicit, &runtime.library);
        return Ok(runtime);
    }
    let (library, found_by) = locate_library(explicit)?;
    load_library(&library)?;
    let environment = catch_panic("creating the ONNX Runtime environment", create_environment)?
        .map_err(|e| EngineError::new(format!("cannot create the ONNX Runtime environment: {e}")))?;
    tracing::info!(library = %library.display(), found_by, "onnxruntime loaded");
    Ok(RUNTIME.get_or_init(|| Runtime { environment, library, found_by }))
}

/// Loads the shared library at `path` into `ort`, once per process. A path the dynamic loader
/// cannot load, a file that is no ONNX Runtime, or one older than `ort` needs, is an error.
/// Once a library is loaded, later calls succeed without loading anything.
pub(crate) fn load_library(path: &Path) -> Result<(), EngineError> {
    let mut loaded = LOADED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(current) = loaded.as_ref() {
        warn_if_other(Some(path), current);
        return Ok(());
    }
    // `ort` resolves a relative path against the executable's folder and may panic when it
    // cannot tell where that is.
    catch_panic("loading ONNX Runtime", || ort::init_from(path).map(drop))?
        .map_err(|e| EngineError::new(format!("cannot load ONNX Runtime from {}: {e}", path.display())))?;
    *loaded = Some(path.to_path_buf());
    Ok(())
}

/// Builds the environment, forwarding ONNX Runtime's log to `tracing` at warning level and up.
fn create_environment() -> ort::Result<Environment> {
    let environment =
        ort::init().with_name("rtserve").with_telemetry(false).with_logger(Arc::new(forward_log)).build()?;
    // With a custom logger `ort` asks for verbose messages; building them costs time on every run.
    environment.set_log_level(LogLevel::Warning);
    Ok(environment)
}

fn forward_log(level: LogLevel, category: &str, id: &str, location: &str, message: &str) {
    match level {
        LogLevel::Verbose => tracing::trace!(target: "onnxruntime", category, id, location, "{message}"),
        LogLevel::Info => tracing::debug!(target: "onnxruntime", category, id, location, "{message}"),
        LogLevel::Warning => tracing::warn!(target: "onnxruntime", category, id, location, "{message}"),
        LogLevel::Error | LogLevel::Fatal => {
            tracing::error!(target: "onnxruntime", category, id, location, "{message}")
        }
    }
}

fn warn_if_other(requested: Option<&Path>, loaded: &Path) {
    if let Some(requested) = requested.filter(|r| *r != loaded) {
        tracing::warn!(
            requested = %requested.display(),
            loaded = %loaded.display(),
            "ONNX Runtime is already loaded in this process; keeping the loaded library"
        );
    }
}

/// Runs `f`, turning a panic inside `ort` into an error naming what was being done.
pub(crate) fn catch_panic<T>(what: &str, f: impl FnOnce() -> T) -> Result<T, EngineError> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|panic| {
        EngineError::new(format!("onnxruntime failed while {what}: {}", panic_message(panic.as_ref())))
    })
}

/// Held by the unit tests that load ONNX Runtime, so that the one below sees the process before
/// any library is loaded or after, never in between.
#[cfg(test)]
pub(crate) static TEST_LOCK: Mutex<()> = Mutex::new(());

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_library_is_an_error_then_the_real_one_loads_once() {
        let _only = TEST_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
        let dir = std::env::temp_dir().join(format!("rtserve-ort-runtime-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let fake = dir.join("libonnxruntime.so");
        std::fs::write(&fake, b"not an ELF file").expect("write");

        // Only the first load of the process can fail: another test may have loaded it already.
        if RUNTIME.get().is_none() {
            let err = runtime(Some(&fake)).err().expect("a fake library must not load");
            assert!(err.0.contains("cannot load ONNX Runtime"), "{err}");
            assert!(runtime(Some(&dir.join("missing.so"))).is_err());
        }

        let Ok((real, found_by)) = locate_library(None) else {
            eprintln!("skipping the rest: no ONNX Runtime library here");
            return;
        };
        let first = runtime(None).expect("the located library loads");
        assert_eq!((first.library.as_path(), first.found_by), (real.as_path(), found_by));
        // Once loaded, the process keeps it, whatever a later caller asks for.
        let again = runtime(Some(&fake)).expect("reuses the loaded runtime");
        assert!(std::ptr::eq(first, again));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
