//! End-to-end tests: the real `rtserve` binary on port 0, called over real HTTP and gRPC, with
//! each engine, its outputs checked against the NumPy reference in `tests/data/expected/`.
//!
//! Tests that only read share one server per engine, started on first use. Tests that change a
//! server (repository, limits, shutdown) start their own. When `--engine onnxruntime` cannot find
//! ONNX Runtime, its cases are skipped with a note, unless `RTSERVE_E2E_REQUIRE_ONNXRUNTIME` is
//! set. `RTSERVE_E2E_LOG=1` echoes the servers' logs.

mod access_log;
mod auth;
mod batching;
mod cache;
mod client;
mod errors;
mod gpu;
mod grpc;
mod http;
mod images;
mod limits;
mod metrics;
mod model_control;
mod reload_under_load;
mod repository;
mod server;
mod shutdown;
mod stamp_model;
mod tensors;
mod tflite;
mod tls;

use std::io::Write;
use std::path::Path;
use std::sync::{Once, OnceLock};

use server::{Engine, Server, StartError};

/// Defines, for each function `name(engine: Engine)`, a module `name` with the tests `tract`
/// and `onnxruntime` that run it with that engine.
macro_rules! engine_tests {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn tract() {
                super::$name($crate::server::Engine::Tract).await
            }

            #[tokio::test]
            async fn onnxruntime() {
                super::$name($crate::server::Engine::OnnxRuntime).await
            }
        }
    )+};
}
pub(crate) use engine_tests;

/// The server for `engine` on the example repository, shared by every test; `None` (after a
/// note) when the engine is not available here.
pub fn shared_server(engine: Engine) -> Option<&'static Server> {
    static TRACT: OnceLock<Result<Server, StartError>> = OnceLock::new();
    static ONNXRUNTIME: OnceLock<Result<Server, StartError>> = OnceLock::new();
    let cell = match engine {
        Engine::Tract => &TRACT,
        Engine::OnnxRuntime => &ONNXRUNTIME,
    };
    match cell.get_or_init(|| Server::start(&server::example_repository(), engine, &[])) {
        Ok(server) => Some(server),
        Err(StartError::OnnxRuntimeMissing(log)) => skip_onnxruntime(log),
        Err(StartError::Failed(log)) => panic!("the shared {engine:?} server did not start: {log}"),
    }
}

/// Starts a server of its own for one test; `None` (after a note) when the engine is not
/// available here.
pub fn start_server(repository: &Path, engine: Engine, extra: &[&str]) -> Option<Server> {
    match Server::start(repository, engine, extra) {
        Ok(server) => Some(server),
        Err(StartError::OnnxRuntimeMissing(log)) => skip_onnxruntime(&log),
        Err(StartError::Failed(log)) => panic!("the {engine:?} server did not start: {log}"),
    }
}

/// The start-up error (the log) of a tract server on `repository` started with `flags`;
/// asserts that it is an error, not a panic.
pub fn start_error(repository: &Path, flags: &[&str]) -> String {
    match Server::start(repository, Engine::Tract, flags) {
        Ok(_) => panic!("rtserve started with {flags:?}"),
        Err(StartError::Failed(log) | StartError::OnnxRuntimeMissing(log)) => {
            assert!(!log.contains("panicked"), "{log}");
            log
        }
    }
}

fn skip_onnxruntime<T>(log: &str) -> Option<T> {
    if std::env::var_os("RTSERVE_E2E_REQUIRE_ONNXRUNTIME").is_some() {
        panic!("RTSERVE_E2E_REQUIRE_ONNXRUNTIME is set but ONNX Runtime is missing: {log}");
    }
    static NOTE: Once = Once::new();
    NOTE.call_once(|| {
        // Straight to stderr, past the test harness's capture, so that the skip is visible.
        let _ = writeln!(
            std::io::stderr(),
            "note: ONNX Runtime is not available (pip install onnxruntime); skipping the onnxruntime end-to-end cases"
        );
    });
    None
}

/// A model repository in a temporary folder holding copies of `models` from the examples.
pub fn temp_repository(models: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temporary folder");
    for model in models {
        copy_dir(&server::example_repository().join(model), &dir.path().join(model));
    }
    dir
}

/// Adds to `repository` a model `name` with the versions of the example model `from` and the
/// given config.pbtxt text.
pub fn add_model(repository: &Path, from: &str, name: &str, config: &str) {
    let target = repository.join(name);
    copy_dir(&server::example_repository().join(from).join("1"), &target.join("1"));
    std::fs::write(target.join("config.pbtxt"), config).expect("write config.pbtxt");
}

/// The MLP's config.pbtxt under another name, with `extra` appended (dynamic_batching,
/// response_cache, parameters...).
pub fn mlp_config(name: &str, extra: &str) -> String {
    format!(
        "name: \"{name}\"\nmax_batch_size: 8\n\
         input [ {{ name: \"input\" data_type: TYPE_FP32 dims: [ 784 ] }} ]\n\
         output [ {{ name: \"output\" data_type: TYPE_FP32 dims: [ 10 ] }} ]\n{extra}\n"
    )
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create folder");
    for entry in std::fs::read_dir(from).expect("read folder") {
        let entry = entry.expect("folder entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy file");
        }
    }
}
