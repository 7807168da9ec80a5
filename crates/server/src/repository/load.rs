//! Loading one model directory: config, versions, engine, instances.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rtserve_core::scheduler::one_row_time;
use rtserve_core::{
    intra_op_threads_for, Device, Engine, LoadOptions, ModelConfig, ModelInstance, ModelSignature,
    PredictionCache, PreparedModel, Scheduler, SchedulerOptions, TensorSpec,
};
use rtserve_engines::{Engines, TFLITE_FILENAME, TFLITE_PLATFORM};

use crate::classification::read_labels;
use crate::metrics::StageMetrics;
use crate::model::Processing;
use crate::preprocess::{preprocess_spec, ImagePool, Preprocessor};

use super::config_file::{read_config, DEFAULT_MODEL_FILENAME};
use super::content::content_identity;
use super::placement::{placements, GpuDefaults};
use super::LoadError;
use crate::model::LoadedModel;

/// The batch limit given to a model whose config is inferred from a graph with a dynamic
/// first dimension.
pub const INFERRED_MAX_BATCH_SIZE: u32 = 64;

/// The parameter that sets the threads one inference may use.
pub const INTRA_OP_THREADS_PARAMETER: &str = "intra_op_threads";
/// The parameter that lets those threads spin (busy-wait) between runs.
pub const ALLOW_SPINNING_PARAMETER: &str = "allow_spinning";

/// Timed one-row runs that choose the threads of a model that does not set them.
const THREAD_CHOICE_ROUNDS: usize = 9;

/// Loads every selected version of the model in `dir`. Blocking: run it off the async workers.
/// `config` (from the load request) stands in for the folder's config file.
pub fn load_model(
    dir: &Path,
    name: &str,
    config: Option<ModelConfig>,
    engines: &Engines,
    serving: &Serving,
) -> Result<BTreeMap<u64, Arc<LoadedModel>>, LoadError> {
    let declared = match config {
        Some(config) => Some(config),
        None => read_config(dir, name).map_err(LoadError::Config)?,
    };
    let base = declared.clone().unwrap_or_else(|| {
        // Without a config: ONNX files, or TFLite files where there is no ONNX one.
        let tflite =
            version_dirs(dir, DEFAULT_MODEL_FILENAME).is_err() && version_dirs(dir, TFLITE_FILENAME).is_ok();
        let (platform, file) = if tflite {
            (TFLITE_PLATFORM, TFLITE_FILENAME)
        } else {
            ("onnxruntime_onnx", DEFAULT_MODEL_FILENAME)
        };
        ModelConfig {
            name: name.to_string(),
            platform: platform.to_string(),
            default_model_filename: file.to_string(),
            ..ModelConfig::default()
        }
    });
    let available = version_dirs(dir, &base.default_model_filename)?;
    let selected = base.version_policy.select(&available.keys().copied().collect::<Vec<_>>());
    if selected.is_empty() {
        return Err(LoadError::Layout(format!(
            "version_policy {:?} selects none of the versions {:?}",
            base.version_policy,
            available.keys()
        )));
    }
    let labels = read_labels(dir).map_err(LoadError::Labels)?;
    let mut loaded = BTreeMap::new();
    for version in selected {
        let path = &available[&version];
        let engine = engines.for_model(&base, path);
        let model = load_version(path, version, declared.clone(), &base, engine.as_ref(), serving)
            .and_then(|model| with_processing(model, labels.clone(), serving))
            .map_err(|e| LoadError::Version { version, source: Box::new(e) })?;
        loaded.insert(version, Arc::new(model));
    }
    Ok(loaded)
}

/// What every loaded version is served with.
pub struct Serving {
    pub scheduling: SchedulerOptions,
    /// Where each version's scheduler reports its batches.
    pub stages: StageMetrics,
    pub cache: PredictionCache,
    /// The workers that decode and resize images for models that declare preprocessing.
    pub images: Arc<ImagePool>,
    /// Loads by model and outcome (`rtserve_model_loads_total`).
    pub loads: prometheus::IntCounterVec,
    /// Where `KIND_GPU` instances go when their config does not say.
    pub gpus: GpuDefaults,
}

/// Adds the model's preprocessing (from its config) and labels.
fn with_processing(
    model: LoadedModel,
    labels: Option<Vec<String>>,
    serving: &Serving,
) -> Result<LoadedModel, LoadError> {
    let preprocessor = preprocess_spec(&model.config).map_err(LoadError::Parameter)?.map(|spec| {
        tracing::info!(model = %model.config.name, "preprocessing: {spec:?}");
        Preprocessor::new(spec, serving.images.clone(), model.config.max_batch_size)
    });
    let metrics = Some(serving.stages.processing(&model.config.name, model.version));
    Ok(model.with_processing(Processing { preprocessor, labels, metrics }))
}

fn load_version(
    path: &Path,
    version: u64,
    declared: Option<ModelConfig>,
    base: &ModelConfig,
    engine: &dyn Engine,
    serving: &Serving,
) -> Result<LoadedModel, LoadError> {
    let content = content_identity(path.parent().unwrap_or(path))?;
    let prepared = engine.prepare(path)?;
    let signature = prepared.signature();
    let config = match declared {
        Some(config) => check_against_signature(config, signature).map_err(LoadError::Mismatch)?,
        None => infer_config(base.clone(), signature),
    };
    let devices = placements(&config, engine, &serving.gpus)?;
    let count = devices.len();
    let Instances { instances, threads, spinning } = load_instances(prepared.as_ref(), &config, &devices)?;
    // A file written while the engine read it would be served under the wrong identity.
    if content_identity(path.parent().unwrap_or(path))? != content {
        return Err(LoadError::Layout(format!(
            "{} changed while it was loaded; load it again once it is written",
            path.display()
        )));
    }
    let scheduling = SchedulerOptions {
        observer: Some(serving.stages.observer(&config.name, version)),
        ..serving.scheduling.clone()
    };
    let scheduler = Scheduler::start(&config, instances, &scheduling)?;
    let policy = scheduler.policy();
    let devices: Vec<String> = devices.iter().map(Device::describe).collect();
    tracing::info!(
        model = %config.name, version, engine = engine.name(), instances = count, devices = ?devices,
        threads, spinning, batching = policy.batching, slo = ?policy.slo,
        cache = config.response_cache, content = %content, "loaded {}", path.display()
    );
    Ok(LoadedModel::new(config, version, engine.name(), scheduler, content, serving.cache.clone()))
}

/// Numeric subdirectories holding the model file.
fn version_dirs(dir: &Path, file_name: &str) -> Result<BTreeMap<u64, PathBuf>, LoadError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| LoadError::Layout(format!("cannot read {}: {e}", dir.display())))?;
    let versions: BTreeMap<u64, PathBuf> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u64>().ok()?;
            let file = entry.path().join(file_name);
            file.is_file().then_some((version, file))
        })
        .collect();
    if versions.is_empty() {
        return Err(LoadError::Layout(format!("no version directory (like 1/) holding {file_name}")));
    }
    Ok(versions)
}

/// A model's loaded instances, with the intra-op threads each got and whether they spin.
struct Instances {
    instances: Vec<Box<dyn ModelInstance>>,
    threads: usize,
    spinning: bool,
}

/// Starts one instance of a prepared model per device. Threads: the `intra_op_threads` parameter, else chosen by [`intra_op_threads_for`]
/// from a timed one-row run on an instance given the cores split across instances (one thread
/// for a cheap model, those cores for an expensive one). Spinning: only with `allow_spinning`.
fn load_instances(
    model: &dyn PreparedModel,
    config: &ModelConfig,
    devices: &[Device],
) -> Result<Instances, LoadError> {
    let count = devices.len();
    let first = devices.first().ok_or_else(|| LoadError::Placement("no instance to start".to_string()))?;
    let spinning = allow_spinning(config)?;
    let load = |intra_op_threads: usize, device: &Device| {
        model.instance(&LoadOptions {
            intra_op_threads,
            allow_spinning: spinning,
            device: device.clone(),
            batches: true,
        })
    };
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let cores_each = (cores / count.max(1)).max(1);
    let mut instances = Vec::with_capacity(count);
    let threads = match configured_threads(config)? {
        Some(threads) => threads,
        None if cores_each == 1 => 1,
        None => {
            let mut probe = load(cores_each, first)?;
            let threads = match one_row_time(probe.as_mut(), config, THREAD_CHOICE_ROUNDS) {
                Ok(one_row) => {
                    let threads = intra_op_threads_for(one_row, cores_each);
                    tracing::info!(
                        model = %config.name, one_row_us = one_row.as_micros() as u64, threads,
                        "intra-op threads chosen from a one-row run on {cores_each}"
                    );
                    threads
                }
                Err(e) => {
                    tracing::warn!(model = %config.name, "cannot time a one-row run, using {cores_each} threads: {e}");
                    cores_each
                }
            };
            if threads == cores_each {
                instances.push(probe);
            }
            threads
        }
    };
    for device in &devices[instances.len()..] {
        instances.push(load(threads, device)?);
    }
    Ok(Instances { instances, threads, spinning })
}

/// The `intra_op_threads` parameter, if set.
pub fn configured_threads(config: &ModelConfig) -> Result<Option<usize>, LoadError> {
    config
        .parameters
        .get(INTRA_OP_THREADS_PARAMETER)
        .map(|value| {
            value.trim().parse::<usize>().map_err(|_| {
                LoadError::Parameter(format!(
                    "parameter {INTRA_OP_THREADS_PARAMETER} '{value}' is not a whole number"
                ))
            })
        })
        .transpose()
}

/// The `allow_spinning` parameter: `true`/`false` or `1`/`0`; absent: false.
fn allow_spinning(config: &ModelConfig) -> Result<bool, LoadError> {
    bool_parameter(config, ALLOW_SPINNING_PARAMETER)
}

/// A model parameter that is `true`/`false` or `1`/`0`; absent: false.
pub(super) fn bool_parameter(config: &ModelConfig, key: &str) -> Result<bool, LoadError> {
    config
        .parameters
        .get(key)
        .map_or(Ok(false), |value| parse_bool(key, value))
        .map_err(|e| LoadError::Parameter(format!("parameter {e}")))
}

/// `true`/`false` or `1`/`0`, any case, spaces around ignored.
pub(super) fn parse_bool(key: &str, value: &str) -> Result<bool, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(format!("{key} '{value}' must be true, false, 1 or 0")),
    }
}

/// A config made from the graph alone. A dynamic first dimension on every tensor is taken as
/// the batch dimension.
pub fn infer_config(mut config: ModelConfig, signature: &ModelSignature) -> ModelConfig {
    let batched = signature.inputs.iter().chain(&signature.outputs).all(|s| s.dims.first() == Some(&-1));
    config.max_batch_size = if batched { INFERRED_MAX_BATCH_SIZE } else { 0 };
    let strip = |specs: &[TensorSpec]| -> Vec<TensorSpec> {
        specs
            .iter()
            .map(|s| TensorSpec {
                dims: if batched { s.dims[1..].to_vec() } else { s.dims.clone() },
                ..s.clone()
            })
            .collect()
    };
    config.inputs = strip(&signature.inputs);
    config.outputs = strip(&signature.outputs);
    config
}

/// Fills what a config leaves out from the graph, and checks what it declares against it.
pub fn check_against_signature(
    mut config: ModelConfig,
    signature: &ModelSignature,
) -> Result<ModelConfig, String> {
    let inferred = infer_config(config.clone(), signature);
    if config.inputs.is_empty() {
        config.inputs = strip_to(&config, &signature.inputs)?;
    }
    if config.outputs.is_empty() {
        config.outputs = strip_to(&config, &signature.outputs)?;
    }
    if config.max_batch_size > 0 && inferred.max_batch_size == 0 {
        return Err(format!(
            "max_batch_size is {} but the model's tensors have no dynamic first (batch) dimension",
            config.max_batch_size
        ));
    }
    for spec in &config.inputs {
        check_tensor(&config, spec, &signature.inputs, "input")?;
    }
    if let Some(missing) = signature.inputs.iter().find(|s| config.input(&s.name).is_none()) {
        return Err(format!("the model has input '{}' that the config does not declare", missing.name));
    }
    for spec in &config.outputs {
        check_tensor(&config, spec, &signature.outputs, "output")?;
    }
    Ok(config)
}

/// The graph's tensors with the batch dimension removed when the config batches.
fn strip_to(config: &ModelConfig, specs: &[TensorSpec]) -> Result<Vec<TensorSpec>, String> {
    specs
        .iter()
        .map(|s| {
            if config.max_batch_size == 0 {
                return Ok(s.clone());
            }
            match s.dims.split_first() {
                Some((-1, rest)) => Ok(TensorSpec { dims: rest.to_vec(), ..s.clone() }),
                _ => Err(format!("tensor '{}' has no dynamic batch dimension: {:?}", s.name, s.dims)),
            }
        })
        .collect()
}

fn check_tensor(
    config: &ModelConfig,
    spec: &TensorSpec,
    graph: &[TensorSpec],
    what: &str,
) -> Result<(), String> {
    let Some(actual) = graph.iter().find(|g| g.name == spec.name) else {
        let names: Vec<&str> = graph.iter().map(|g| g.name.as_str()).collect();
        return Err(format!("config {what} '{}' is not in the model (it has {names:?})", spec.name));
    };
    if actual.data_type != spec.data_type {
        return Err(format!(
            "config {what} '{}' is {} but the model has {}",
            spec.name, spec.data_type, actual.data_type
        ));
    }
    let declared = config.full_dims(spec);
    let compatible = declared.len() == actual.dims.len()
        && declared.iter().zip(&actual.dims).all(|(&d, &a)| d == -1 || a == -1 || d == a);
    if !compatible {
        return Err(format!(
            "config {what} '{}' has shape {declared:?} (batch included) but the model has {:?}",
            spec.name, actual.dims
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use rtserve_core::{DataType, EngineError, NamedTensor};

    use super::*;

    /// Records how each instance was loaded; its instances take `run` per inference.
    struct Recorder {
        loads: Mutex<Vec<(usize, bool)>>,
        run: Duration,
        signature: ModelSignature,
    }

    struct Slow(Duration);

    impl ModelInstance for Slow {
        fn infer(&mut self, _: &[NamedTensor], _: &[String]) -> Result<Vec<NamedTensor>, EngineError> {
            std::thread::sleep(self.0);
            Ok(Vec::new())
        }
    }

    impl PreparedModel for Recorder {
        fn signature(&self) -> &ModelSignature {
            &self.signature
        }

        fn instance(&self, options: &LoadOptions) -> Result<Box<dyn ModelInstance>, EngineError> {
            self.loads.lock().expect("not poisoned").push((options.intra_op_threads, options.allow_spinning));
            Ok(Box::new(Slow(self.run)))
        }
    }

    fn config(parameters: &[(&str, &str)]) -> ModelConfig {
        ModelConfig {
            name: "m".into(),
            max_batch_size: 8,
            inputs: vec![TensorSpec { name: "x".into(), data_type: DataType::Fp32, dims: vec![2] }],
            parameters: parameters.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..ModelConfig::default()
        }
    }

    fn loads(parameters: &[(&str, &str)], count: usize, run: Duration) -> Result<Vec<(usize, bool)>, String> {
        let signature = ModelSignature { inputs: Vec::new(), outputs: Vec::new() };
        let engine = Recorder { loads: Mutex::new(Vec::new()), run, signature };
        let Instances { instances, threads, spinning } =
            load_instances(&engine, &config(parameters), &vec![Device::Cpu; count]).map_err(|e| match e {
                LoadError::Parameter(reason) => reason,
                other => panic!("a bad parameter is a LoadError::Parameter, not {other:?}"),
            })?;
        assert_eq!(instances.len(), count);
        let loads = engine.loads.into_inner().expect("not poisoned");
        assert!(loads.iter().rev().take(count).all(|&l| l == (threads, spinning)), "{loads:?}");
        Ok(loads)
    }

    #[test]
    fn configured_threads_and_spinning_are_used_as_given() {
        let given = loads(&[("intra_op_threads", "3"), ("allow_spinning", "true")], 2, Duration::ZERO);
        assert_eq!(given, Ok(vec![(3, true), (3, true)]));
        assert_eq!(
            loads(&[("allow_spinning", " 0 "), ("intra_op_threads", "1")], 1, Duration::ZERO),
            Ok(vec![(1, false)])
        );
        let err = loads(&[("allow_spinning", "sometimes")], 1, Duration::ZERO).expect_err("not a bool");
        assert!(err.contains("allow_spinning 'sometimes' must be true, false, 1 or 0"), "{err}");
        let err = loads(&[("intra_op_threads", "two")], 1, Duration::ZERO).expect_err("not a number");
        assert!(err.contains("intra_op_threads 'two' is not a whole number"), "{err}");
    }

    #[test]
    fn an_expensive_model_keeps_the_cores_and_its_timed_instance() {
        // Every run sleeps past ONE_THREAD_BELOW, so the timed instance is kept as it is.
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let loads = loads(&[], 1, rtserve_core::ONE_THREAD_BELOW * 2).expect("loads");
        assert_eq!(loads, vec![(cores, false)], "one load, no spinning");
    }
}
