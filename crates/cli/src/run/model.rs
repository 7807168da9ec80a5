//! The model of a run: its config (given, found beside the model in a repository layout, or
//! inferred from the graph), checked against the graph as the server checks it, and one loaded
//! engine instance.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rtserve_core::{Engine, EngineError, LoadOptions, ModelConfig, ModelInstance, NamedTensor};
use rtserve_engines::{EngineChoice, Engines};
use rtserve_server::preprocess::{preprocess_spec, PreprocessSpec};
use rtserve_server::repository::{
    check_against_signature, configured_threads, infer_config, read_config, read_config_file,
    DEFAULT_MODEL_FILENAME,
};

use super::RunError;

/// Where the model comes from and how to load it.
pub struct ModelOptions<'a> {
    pub model: &'a Path,
    pub config: Option<&'a Path>,
    pub engine: EngineChoice,
    pub ort_library: Option<PathBuf>,
    /// Intra-op threads; `None`: the config's parameter, else the engine's default.
    pub threads: Option<usize>,
}

/// A loaded model, ready to run.
pub struct RunModel {
    config: ModelConfig,
    preprocess: Option<PreprocessSpec>,
    /// The folder the server would read labels.txt from.
    folder: PathBuf,
    engine: Arc<dyn Engine>,
    instance: Box<dyn ModelInstance>,
    outputs: Vec<String>,
}

impl RunModel {
    /// Reads the config and loads one instance. A model or config file that is missing, cannot
    /// be read or does not fit is the user's input (exit 2); an engine that cannot start or an
    /// instance that cannot be made is a failure (exit 1).
    pub fn load(options: &ModelOptions<'_>) -> Result<RunModel, RunError> {
        let bad = |e: String| RunError::Input(format!("{}: {e}", options.model.display()));
        let failed = |e: String| RunError::Failed(format!("{}: {e}", options.model.display()));
        if !options.model.is_file() {
            return Err(bad("no such model file".into()));
        }
        let (declared, folder) = declared_config(options)?;
        let mut base = declared.clone().unwrap_or_else(|| ModelConfig {
            name: model_name(options.model),
            platform: "onnxruntime_onnx".to_string(),
            ..ModelConfig::default()
        });
        // The file given is the model, whatever a config calls it (a `.tflite` one is TFLite).
        base.default_model_filename = options
            .model
            .file_name()
            .map_or_else(|| DEFAULT_MODEL_FILENAME.to_string(), |f| f.to_string_lossy().into_owned());
        let engines = Engines::new(options.engine, options.ort_library.clone())
            .map_err(|e| RunError::Failed(e.to_string()))?;
        let engine = engines.for_model(&base, options.model);
        let prepared = engine.prepare(options.model).map_err(|e| bad(unreadable(options.model, e)))?;
        let config = match declared {
            Some(config) => check_against_signature(config, prepared.signature()).map_err(bad)?,
            None => infer_config(base, prepared.signature()),
        };
        let preprocess = preprocess_spec(&config).map_err(bad)?;
        let threads = match options.threads {
            Some(threads) => threads,
            None => configured_threads(&config).map_err(|e| bad(e.to_string()))?.unwrap_or(0),
        };
        let instance = prepared
            .instance(&LoadOptions {
                intra_op_threads: threads,
                allow_spinning: false,
                ..LoadOptions::default()
            })
            .map_err(|e| failed(e.to_string()))?;
        let outputs = config.outputs.iter().map(|o| o.name.clone()).collect();
        Ok(RunModel { config, preprocess, folder, engine, instance, outputs })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn preprocess(&self) -> Option<&PreprocessSpec> {
        self.preprocess.as_ref()
    }

    /// The model folder: where labels.txt is looked for.
    pub fn folder(&self) -> &Path {
        &self.folder
    }

    pub fn engine_name(&self) -> &'static str {
        self.engine.name()
    }

    /// Runs the model on validated inputs; every output, in config order.
    pub fn infer(&mut self, inputs: &[NamedTensor]) -> Result<Vec<NamedTensor>, RunError> {
        self.instance
            .infer(inputs, &self.outputs)
            .map_err(|e| RunError::Failed(format!("inference failed: {e}")))
    }
}

/// The engine's reason a model file cannot be read, with the file types `run` reads when the
/// name says neither.
fn unreadable(model: &Path, e: EngineError) -> String {
    let known = model
        .extension()
        .and_then(|x| x.to_str())
        .is_some_and(|x| x.eq_ignore_ascii_case("onnx") || x.eq_ignore_ascii_case("tflite"));
    if known {
        e.to_string()
    } else {
        format!("{e} (rtserve run reads ONNX (.onnx) and TFLite (.tflite) model files)")
    }
}

/// The config the user gave or the repository holds (`None`: infer it), and the model folder.
fn declared_config(options: &ModelOptions<'_>) -> Result<(Option<ModelConfig>, PathBuf), RunError> {
    let model_dir = options.model.parent().map(Path::to_path_buf).unwrap_or_default();
    if let Some(path) = options.config {
        let config = read_config_file(path).map_err(RunError::Input)?;
        let folder = path.parent().map(Path::to_path_buf).unwrap_or_default();
        return Ok((Some(config), folder));
    }
    match repository_folder(options.model) {
        Some((folder, name)) => {
            let config = read_config(&folder, &name)
                .map_err(|e| RunError::Input(format!("{}: {e}", folder.display())))?;
            Ok((config, folder))
        }
        None => Ok((None, model_dir)),
    }
}

/// `<folder>/<version>/<file>` with a numeric version: the model folder and its name.
fn repository_folder(model: &Path) -> Option<(PathBuf, String)> {
    let version_dir = model.parent()?;
    version_dir.file_name()?.to_str()?.parse::<u64>().ok()?;
    let parent = version_dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let folder = std::fs::canonicalize(parent).ok()?;
    let name = folder.file_name()?.to_str()?.to_string();
    Some((folder, name))
}

/// The name of a model with no config: its repository folder's, else the file's stem.
fn model_name(model: &Path) -> String {
    repository_folder(model)
        .map(|(_, name)| name)
        .or_else(|| model.file_stem().and_then(|s| s.to_str()).map(str::to_string))
        .unwrap_or_else(|| "model".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_model_folder_only_in_a_repository_layout() {
        let dir = tempfile::tempdir().expect("tempdir");
        let version = dir.path().join("resnet").join("3");
        std::fs::create_dir_all(&version).expect("folders");
        let found = repository_folder(&version.join("model.onnx")).expect("a repository layout");
        assert_eq!(found.1, "resnet");
        assert!(repository_folder(&dir.path().join("resnet").join("model.onnx")).is_none());
        assert!(repository_folder(Path::new("model.onnx")).is_none());
        assert_eq!(model_name(Path::new("some/where/net.onnx")), "net");
    }
}
