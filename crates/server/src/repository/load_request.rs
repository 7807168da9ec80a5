//! The parameters of a repository load or unload request, as Triton's: `config` (a JSON model
//! config that stands in for the folder's config file) and `file:<path>` (the contents of a
//! model file, base64 over HTTP, bytes over gRPC; the model is then loaded from these files
//! alone); rtserve's `version` on unload (one version instead of the whole model).
//!
//! What is refused (400): a file path that is absolute, climbs out (`..`), holds a hidden
//! (`.`-led) or empty part, or is longer than [`MAX_FILE_PATH`]; more than [`MAX_FILES`]
//! files; files without `config` (as Triton); content that is not base64 over HTTP; unknown
//! parameters. The total size is bounded by the request limit (`--max-request-bytes`).

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use base64::Engine as _;
use rtserve_core::ModelConfig;

use super::config_file::parse_json;
use crate::ServerError;

/// Most files one load request may carry.
pub const MAX_FILES: usize = 64;
/// Longest `file:` path, in bytes.
pub const MAX_FILE_PATH: usize = 255;

/// A repository request parameter, as either front end decodes it.
#[derive(Debug, Clone)]
pub enum RepositoryParameter {
    Bool(bool),
    Int(i64),
    String(String),
    Bytes(Vec<u8>),
}

/// A validated load request.
#[derive(Default)]
pub struct LoadRequest {
    config: Option<ModelConfig>,
    /// The request's files, written to a temporary model folder.
    staged: Option<tempfile::TempDir>,
}

impl LoadRequest {
    /// Checks and decodes the parameters of a load of `model`; files are written to a
    /// temporary folder (blocking, small).
    pub fn from_parameters(
        model: &str,
        parameters: BTreeMap<String, RepositoryParameter>,
    ) -> Result<LoadRequest, ServerError> {
        let mut config = None;
        let mut files = Vec::new();
        for (key, value) in parameters {
            if key == "config" {
                let RepositoryParameter::String(text) = value else {
                    return Err(bad("parameter 'config' must be a string holding a JSON model config"));
                };
                let parsed =
                    parse_json(&text, model).map_err(|e| bad(&format!("parameter 'config': {e}")))?;
                config = Some(parsed);
            } else if let Some(path) = key.strip_prefix("file:") {
                let path = checked_path(path)?;
                let bytes = match value {
                    RepositoryParameter::Bytes(bytes) => bytes,
                    RepositoryParameter::String(text) => base64::engine::general_purpose::STANDARD
                        .decode(text.trim())
                        .map_err(|e| bad(&format!("parameter '{key}': the contents are not base64: {e}")))?,
                    _ => return Err(bad(&format!("parameter '{key}' must hold the file's contents"))),
                };
                files.push((path, bytes));
            } else {
                return Err(bad(&format!(
                    "unknown load parameter '{key}' (expected 'config' or 'file:<path>')"
                )));
            }
        }
        if files.len() > MAX_FILES {
            return Err(bad(&format!("{} files in one load request; at most {MAX_FILES}", files.len())));
        }
        if !files.is_empty() && config.is_none() {
            return Err(bad("'file:' parameters need the 'config' parameter too (the model config)"));
        }
        let staged = if files.is_empty() { None } else { Some(stage(&files)?) };
        Ok(LoadRequest { config, staged })
    }

    /// The staged folder (if files were sent) and the config override.
    pub fn into_parts(self) -> (Option<tempfile::TempDir>, Option<ModelConfig>) {
        (self.staged, self.config)
    }
}

/// A validated unload request.
#[derive(Debug, Default)]
pub struct UnloadRequest {
    /// Only this version; `None`: the whole model.
    pub version: Option<u64>,
}

impl UnloadRequest {
    /// `version` (a whole number, or its text) unloads one version; `unload_dependents`
    /// (Triton's) is accepted and has nothing to do (rtserve has no ensembles).
    pub fn from_parameters(
        parameters: BTreeMap<String, RepositoryParameter>,
    ) -> Result<UnloadRequest, ServerError> {
        let mut request = UnloadRequest::default();
        for (key, value) in parameters {
            match (key.as_str(), value) {
                ("unload_dependents", RepositoryParameter::Bool(_)) => {}
                ("version", RepositoryParameter::Int(v)) if v >= 0 => request.version = Some(v as u64),
                ("version", RepositoryParameter::String(text)) if text.trim().parse::<u64>().is_ok() => {
                    request.version = text.trim().parse().ok();
                }
                ("version", _) => return Err(bad("parameter 'version' must be a version number")),
                ("unload_dependents", _) => {
                    return Err(bad("parameter 'unload_dependents' must be a boolean"))
                }
                (other, _) => {
                    return Err(bad(&format!(
                        "unknown unload parameter '{other}' (expected 'version' or 'unload_dependents')"
                    )))
                }
            }
        }
        Ok(request)
    }
}

fn bad(message: &str) -> ServerError {
    ServerError::BadRequest(message.to_string())
}

/// A `file:` path that stays inside the model folder.
fn checked_path(path: &str) -> Result<PathBuf, ServerError> {
    let refuse = |why: &str| bad(&format!("parameter 'file:{path}': {why}"));
    if path.is_empty() || path.len() > MAX_FILE_PATH {
        return Err(refuse(&format!("a path of 1 to {MAX_FILE_PATH} bytes is expected")));
    }
    if path.contains('\\') || path.contains('\0') {
        return Err(refuse("backslashes and NUL are not allowed"));
    }
    let parsed = Path::new(path);
    for component in parsed.components() {
        match component {
            Component::Normal(part) if !part.to_string_lossy().starts_with('.') => {}
            Component::Normal(_) => return Err(refuse("hidden (.-led) names are not allowed")),
            _ => return Err(refuse("the path must be relative and stay inside the model folder")),
        }
    }
    if path.split('/').any(str::is_empty) {
        return Err(refuse("empty path parts are not allowed"));
    }
    Ok(parsed.to_path_buf())
}

/// Writes the files to a new temporary model folder.
fn stage(files: &[(PathBuf, Vec<u8>)]) -> Result<tempfile::TempDir, ServerError> {
    let internal =
        |e: std::io::Error| ServerError::Internal(format!("staging the load request's files: {e}"));
    let dir = tempfile::Builder::new().prefix("rtserve-load-").tempdir().map_err(internal)?;
    for (path, bytes) in files {
        let target = dir.path().join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|_| {
                bad(&format!("parameter 'file:{}' is inside another file's path", path.display()))
            })?;
        }
        if target.is_dir() {
            return Err(bad(&format!("parameter 'file:{}' names a folder of another file", path.display())));
        }
        std::fs::write(&target, bytes).map_err(internal)?;
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(entries: &[(&str, RepositoryParameter)]) -> BTreeMap<String, RepositoryParameter> {
        entries.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
    }

    const CONFIG: &str = r#"{"name": "m", "max_batch_size": 4,
        "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": ["3"]}],
        "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [3]}],
        "parameters": {"intra_op_threads": {"string_value": "1"}}}"#;

    fn load_error(entries: &[(&str, RepositoryParameter)]) -> String {
        match LoadRequest::from_parameters("m", params(entries)) {
            Err(ServerError::BadRequest(message)) => message,
            Err(other) => panic!("not a bad request: {other}"),
            Ok(_) => panic!("accepted"),
        }
    }

    #[test]
    fn paths_that_leave_the_model_folder_are_refused() {
        let config = ("config", RepositoryParameter::String(CONFIG.into()));
        for path in ["../x", "/etc/passwd", "1/../../x", "1//model.onnx", ".hidden", "1/.git/x", "a\\b", ""] {
            let key = format!("file:{path}");
            let file = (key.as_str(), RepositoryParameter::Bytes(b"x".to_vec()));
            let message = load_error(&[config.clone(), file]);
            assert!(message.contains(&format!("'file:{path}'")), "{path}: {message}");
        }
        let long = format!("file:{}", "a".repeat(MAX_FILE_PATH + 1));
        assert!(load_error(&[config.clone(), (&long, RepositoryParameter::Bytes(Vec::new()))])
            .contains("1 to 255"));
    }

    #[test]
    fn files_are_staged_and_need_a_config() {
        let file = ("file:1/model.onnx", RepositoryParameter::String("aGVsbG8=".into()));
        assert!(load_error(std::slice::from_ref(&file)).contains("need the 'config' parameter"));
        let config = ("config", RepositoryParameter::String(CONFIG.into()));
        let request = LoadRequest::from_parameters("m", params(&[config, file])).expect("valid");
        let (staged, config) = request.into_parts();
        let staged = staged.expect("staged");
        assert_eq!(std::fs::read(staged.path().join("1/model.onnx")).expect("staged file"), b"hello");
        let config = config.expect("config");
        assert_eq!(config.inputs[0].dims, vec![3], "dims as protobuf JSON strings");
        assert_eq!(config.parameters["intra_op_threads"], "1", "Triton's JSON parameter map");
    }

    #[test]
    fn bad_contents_and_parameters_are_named() {
        let config = ("config", RepositoryParameter::String(CONFIG.into()));
        let file = ("file:1/model.onnx", RepositoryParameter::String("not base64!".into()));
        assert!(load_error(&[config.clone(), file]).contains("not base64"));
        assert!(
            load_error(&[("config", RepositoryParameter::String("{".into()))]).contains("parameter 'config'")
        );
        assert!(load_error(&[("config", RepositoryParameter::Int(1))]).contains("must be a string"));
        assert!(load_error(&[("colour", RepositoryParameter::Bool(true))]).contains("unknown load parameter"));
        let version = |v| UnloadRequest::from_parameters(params(&[("version", v)]));
        assert_eq!(version(RepositoryParameter::String("2".into())).expect("valid").version, Some(2));
        assert_eq!(version(RepositoryParameter::Int(3)).expect("valid").version, Some(3));
        assert!(version(RepositoryParameter::String("two".into())).is_err());
        assert!(version(RepositoryParameter::Int(-1)).is_err());
    }
}
