//! Model configuration files: Triton's `config.pbtxt` and rtserve's `config.toml`, both read
//! into one serde schema (Triton's field names), then validated into a [`ModelConfig`].
//! Unknown fields are logged as warnings, not refused.

use std::collections::BTreeMap;
use std::path::Path;

use rtserve_core::{
    DataType, DynamicBatching, GpuAcceleration, InstanceGroup, InstanceKind, ModelConfig, QueuePolicy,
    TensorSpec, TimeoutAction, VersionPolicy,
};
use rtserve_engines::{is_tflite, TFLITE_FILENAME, TFLITE_PLATFORM};
use serde::Deserialize;

use super::accelerators::RawOptimization;
use super::pbtxt;

/// The file name the model is loaded from when a config does not say.
pub const DEFAULT_MODEL_FILENAME: &str = "model.onnx";

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawConfig {
    name: Option<String>,
    platform: Option<String>,
    backend: Option<String>,
    max_batch_size: Option<u32>,
    input: Vec<RawTensor>,
    output: Vec<RawTensor>,
    instance_group: Vec<RawInstanceGroup>,
    dynamic_batching: Option<RawDynamicBatching>,
    response_cache: Option<RawResponseCache>,
    parameters: BTreeMap<String, RawScalar>,
    version_policy: Option<RawVersionPolicy>,
    default_model_filename: Option<String>,
    /// rtserve's `[preprocess]` table: the same keys as the `preprocess.<key>` parameters.
    preprocess: Option<BTreeMap<String, RawValue>>,
    optimization: Option<RawOptimization>,
}

#[derive(Debug, Deserialize)]
struct RawTensor {
    name: String,
    data_type: String,
    #[serde(default)]
    dims: Vec<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawInstanceGroup {
    name: Option<String>,
    count: Option<u32>,
    kind: Option<String>,
    gpus: Vec<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawDynamicBatching {
    preferred_batch_size: Vec<u32>,
    max_queue_delay_microseconds: u64,
    preserve_ordering: bool,
    priority_levels: u32,
    default_priority_level: u32,
    default_queue_policy: Option<RawQueuePolicy>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawQueuePolicy {
    timeout_action: Option<String>,
    default_timeout_microseconds: u64,
    allow_timeout_override: bool,
    max_queue_size: u32,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawResponseCache {
    enable: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawVersionPolicy {
    latest: Option<RawLatest>,
    all: Option<serde::de::IgnoredAny>,
    specific: Option<RawSpecific>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawLatest {
    num_versions: u32,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawSpecific {
    versions: Vec<u64>,
}

/// A parameter value: config.pbtxt gives strings, config.toml may give numbers or booleans.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawScalar {
    String(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

/// A `[preprocess]` value: a scalar or a list of them (`crop = [224, 224]`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawValue {
    Scalar(RawScalar),
    List(Vec<RawScalar>),
}

impl RawValue {
    fn into_string(self) -> String {
        match self {
            RawValue::Scalar(s) => s.into_string(),
            RawValue::List(items) => {
                items.into_iter().map(RawScalar::into_string).collect::<Vec<_>>().join(",")
            }
        }
    }
}

/// The parameters with the `[preprocess]` table folded in as `preprocess.<key>` entries (an
/// empty table turns preprocessing on with every key inferred).
fn with_preprocess(
    parameters: BTreeMap<String, RawScalar>,
    table: Option<BTreeMap<String, RawValue>>,
) -> Result<BTreeMap<String, String>, String> {
    let mut merged: BTreeMap<String, String> =
        parameters.into_iter().map(|(k, v)| (k, v.into_string())).collect();
    let Some(table) = table else { return Ok(merged) };
    if table.is_empty() {
        merged.insert("preprocess.enable".to_string(), "true".to_string());
    }
    for (key, value) in table {
        let key = format!("preprocess.{key}");
        if merged.contains_key(&key) {
            return Err(format!("{key} is set both in [preprocess] and in parameters"));
        }
        merged.insert(key, value.into_string());
    }
    Ok(merged)
}

impl RawScalar {
    pub(super) fn into_string(self) -> String {
        match self {
            RawScalar::String(s) => s,
            RawScalar::Int(i) => i.to_string(),
            RawScalar::Float(f) => f.to_string(),
            RawScalar::Bool(b) => b.to_string(),
        }
    }
}

/// Fields that text format may give once but that are lists.
const REPEATED: &[&str] = &[
    "input",
    "output",
    "instance_group",
    "dims",
    "preferred_batch_size",
    "versions",
    "gpus",
    "gpu_execution_accelerator",
    "cpu_execution_accelerator",
];

/// Makes the schema-less text-format tree fit the schema: singletons of repeated fields become
/// lists, and Triton's `parameters { key value { string_value } }` entries (or `{ key value }`
/// with a plain string, as an accelerator's parameters are written) become a map.
fn normalize(value: &mut serde_json::Value) {
    let serde_json::Value::Object(map) = value else { return };
    for (key, field) in map.iter_mut() {
        if REPEATED.contains(&key.as_str()) && !field.is_array() {
            *field = serde_json::Value::Array(vec![field.take()]);
        }
        if key == "parameters" {
            *field = parameter_map(field.take());
        }
        match field {
            serde_json::Value::Array(items) => items.iter_mut().for_each(normalize),
            other => normalize(other),
        }
    }
}

fn parameter_map(value: serde_json::Value) -> serde_json::Value {
    let entries = match value {
        serde_json::Value::Array(items) => items,
        single => vec![single],
    };
    let map = entries
        .into_iter()
        .filter_map(|entry| {
            let key = entry.get("key")?.as_str()?.to_string();
            let value = entry.get("value")?;
            let value = if value.is_string() { value.clone() } else { value.get("string_value")?.clone() };
            Some((key, value))
        })
        .collect();
    serde_json::Value::Object(map)
}

/// Reads `config.pbtxt` text of the model directory `dir_name` (the name a config may omit).
/// Public for the fuzz target `config_pbtxt`.
pub fn parse_pbtxt(text: &str, dir_name: &str) -> Result<ModelConfig, String> {
    raw_pbtxt(text, dir_name)?.validate(dir_name).map_err(|e| format!("config.pbtxt: {e}"))
}

fn raw_pbtxt(text: &str, dir_name: &str) -> Result<RawConfig, String> {
    let mut tree = pbtxt::parse(text).map_err(|e| format!("config.pbtxt: {e}"))?;
    normalize(&mut tree);
    serde_ignored::deserialize(tree, |path| warn_unknown("config.pbtxt", dir_name, &path))
        .map_err(|e| format!("config.pbtxt: {e}"))
}

/// Reads `config.toml` text of the model directory `dir_name`. Public for the fuzz target
/// `config_toml`.
pub fn parse_toml(text: &str, dir_name: &str) -> Result<ModelConfig, String> {
    raw_toml(text, dir_name)?.validate(dir_name).map_err(|e| format!("config.toml: {e}"))
}

fn raw_toml(text: &str, dir_name: &str) -> Result<RawConfig, String> {
    let deserializer = toml::Deserializer::parse(text).map_err(|e| format!("config.toml: {e}"))?;
    serde_ignored::deserialize(deserializer, |path| warn_unknown("config.toml", dir_name, &path))
        .map_err(|e| format!("config.toml: {e}"))
}

/// Reads one config file given by path (`rtserve run --config`): `*.pbtxt` in Triton's text
/// format, `*.toml` in rtserve's. Outside a repository the file's `name` is taken as it is;
/// without one, the model is named after the folder holding the file.
pub fn read_config_file(path: &Path) -> Result<ModelConfig, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let folder = path.parent().and_then(Path::file_name).and_then(|n| n.to_str()).unwrap_or("model");
    let (raw, file) = match path.extension().and_then(|e| e.to_str()) {
        Some("pbtxt") => (raw_pbtxt(&text, folder), "config.pbtxt"),
        Some("toml") => (raw_toml(&text, folder), "config.toml"),
        _ => return Err(format!("{}: a config file is *.pbtxt or *.toml", path.display())),
    };
    let raw = raw.map_err(|e| format!("{}: {e}", path.display()))?;
    let name = raw.name.clone().unwrap_or_else(|| folder.to_string());
    raw.validate(&name).map_err(|e| format!("{}: {file}: {e}", path.display()))
}

/// Fields that protobuf's JSON mapping writes as strings (64-bit integers), read as numbers.
const INT64_FIELDS: &[&str] =
    &["dims", "versions", "max_queue_delay_microseconds", "default_timeout_microseconds"];

/// Reads a JSON model config in Triton's form (what a load request's `config` parameter and
/// `GET .../config` carry): Triton's field names, 64-bit integers as numbers or strings, and
/// `parameters` as `{"key": {"string_value": "..."}}`.
pub fn parse_json(text: &str, dir_name: &str) -> Result<ModelConfig, String> {
    let mut tree: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("JSON: {e}"))?;
    normalize_json(&mut tree);
    let raw: RawConfig =
        serde_ignored::deserialize(tree, |path| warn_unknown("config (JSON)", dir_name, &path))
            .map_err(|e| format!("JSON: {e}"))?;
    raw.validate(dir_name)
}

fn normalize_json(value: &mut serde_json::Value) {
    use serde_json::Value;
    let Value::Object(map) = value else { return };
    for (key, field) in map.iter_mut() {
        if key == "parameters" {
            if let Value::Object(entries) = field {
                for entry in entries.values_mut() {
                    if let Some(text) = entry.get("string_value").cloned() {
                        *entry = text;
                    }
                }
            }
            continue;
        }
        if INT64_FIELDS.contains(&key.as_str()) {
            let number = |v: &mut Value| {
                if let Some(n) = v.as_str().and_then(|s| s.parse::<i64>().ok()) {
                    *v = Value::from(n);
                }
            };
            match &mut *field {
                Value::Array(items) => items.iter_mut().for_each(number),
                other => number(other),
            }
        }
        match field {
            Value::Array(items) => items.iter_mut().for_each(normalize_json),
            other => normalize_json(other),
        }
    }
}

/// Reads the model directory's config file, if it has one. Both files at once is an error.
pub fn read_config(dir: &Path, dir_name: &str) -> Result<Option<ModelConfig>, String> {
    let pbtxt_path = dir.join("config.pbtxt");
    let toml_path = dir.join("config.toml");
    match (pbtxt_path.is_file(), toml_path.is_file()) {
        (true, true) => Err("both config.pbtxt and config.toml exist; keep one".to_string()),
        (true, false) => {
            let text = std::fs::read_to_string(&pbtxt_path).map_err(|e| format!("config.pbtxt: {e}"))?;
            parse_pbtxt(&text, dir_name).map(Some)
        }
        (false, true) => {
            let text = std::fs::read_to_string(&toml_path).map_err(|e| format!("config.toml: {e}"))?;
            parse_toml(&text, dir_name).map(Some)
        }
        (false, false) => Ok(None),
    }
}

fn warn_unknown(file: &str, model: &str, path: &serde_ignored::Path<'_>) {
    tracing::warn!(model, "{file}: ignoring unknown field '{path}'");
}

impl RawConfig {
    fn validate(self, dir_name: &str) -> Result<ModelConfig, String> {
        let name = self.name.unwrap_or_else(|| dir_name.to_string());
        if name != dir_name {
            return Err(format!("name '{name}' does not match the model directory '{dir_name}'"));
        }
        let tensors = |raw: Vec<RawTensor>, what: &str| -> Result<Vec<TensorSpec>, String> {
            raw.into_iter()
                .map(|t| {
                    let data_type: DataType =
                        t.data_type.parse().map_err(|e| format!("{what} '{}': {e}", t.name))?;
                    if let Some(bad) = t.dims.iter().find(|&&d| d < -1 || d == 0) {
                        return Err(format!(
                            "{what} '{}': dimension {bad} is invalid (use -1 for any size)",
                            t.name
                        ));
                    }
                    Ok(TensorSpec { name: t.name, data_type, dims: t.dims })
                })
                .collect()
        };
        let instance_group = self
            .instance_group
            .into_iter()
            .map(|g| {
                let kind = match g.kind.as_deref().unwrap_or("KIND_AUTO") {
                    "KIND_AUTO" => InstanceKind::Auto,
                    "KIND_CPU" => InstanceKind::Cpu,
                    "KIND_GPU" => InstanceKind::Gpu,
                    "KIND_MODEL" => InstanceKind::Model,
                    other => {
                        return Err(format!(
                        "instance_group kind '{other}' is not KIND_AUTO, KIND_CPU, KIND_GPU or KIND_MODEL"
                    ))
                    }
                };
                if !g.gpus.is_empty() && kind != InstanceKind::Gpu {
                    return Err(format!("instance_group gpus {:?} need kind KIND_GPU", g.gpus));
                }
                if g.name.is_some() {
                    tracing::debug!(model = dir_name, "instance_group name is accepted but not used");
                }
                Ok(InstanceGroup { count: g.count.unwrap_or(1), kind, gpus: g.gpus })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let dynamic_batching = self.dynamic_batching.map(|d| d.validate()).transpose()?;
        let version_policy = match self.version_policy {
            None => VersionPolicy::default(),
            Some(RawVersionPolicy { latest: Some(l), all: None, specific: None }) => {
                VersionPolicy::Latest(l.num_versions.max(1))
            }
            Some(RawVersionPolicy { latest: None, all: Some(_), specific: None }) => VersionPolicy::All,
            Some(RawVersionPolicy { latest: None, all: None, specific: Some(s) }) => {
                VersionPolicy::Specific(s.versions)
            }
            Some(_) => {
                return Err("version_policy must hold exactly one of latest, all, specific".to_string())
            }
        };
        let mut config = ModelConfig {
            name,
            platform: self.platform.unwrap_or_else(|| {
                let tflite = self.backend.as_deref() == Some("tflite");
                if tflite { TFLITE_PLATFORM } else { "onnxruntime_onnx" }.to_string()
            }),
            backend: self.backend,
            max_batch_size: self.max_batch_size.unwrap_or(0),
            inputs: tensors(self.input, "input")?,
            outputs: tensors(self.output, "output")?,
            instance_group,
            dynamic_batching,
            response_cache: self.response_cache.is_some_and(|c| c.enable),
            parameters: with_preprocess(self.parameters, self.preprocess)?,
            version_policy,
            default_model_filename: self.default_model_filename.unwrap_or_default(),
            gpu: GpuAcceleration::default(),
        };
        config.gpu = match self.optimization {
            Some(optimization) => optimization.validate(&config.name, config.max_batch_size)?,
            None => GpuAcceleration::default(),
        };
        if config.default_model_filename.is_empty() {
            let file = if is_tflite(&config) { TFLITE_FILENAME } else { DEFAULT_MODEL_FILENAME };
            config.default_model_filename = file.to_string();
        }
        Ok(config)
    }
}

impl RawDynamicBatching {
    fn validate(self) -> Result<DynamicBatching, String> {
        let default_queue_policy = self
            .default_queue_policy
            .map(|q| {
                let timeout_action = match q.timeout_action.as_deref().unwrap_or("REJECT") {
                    "REJECT" => TimeoutAction::Reject,
                    "DELAY" => TimeoutAction::Delay,
                    other => return Err(format!("timeout_action '{other}' is not REJECT or DELAY")),
                };
                Ok(QueuePolicy {
                    timeout_action,
                    default_timeout_microseconds: q.default_timeout_microseconds,
                    allow_timeout_override: q.allow_timeout_override,
                    max_queue_size: q.max_queue_size,
                })
            })
            .transpose()?;
        Ok(DynamicBatching {
            preferred_batch_size: self.preferred_batch_size,
            max_queue_delay_microseconds: self.max_queue_delay_microseconds,
            preserve_ordering: self.preserve_ordering,
            priority_levels: self.priority_levels,
            default_priority_level: self.default_priority_level,
            default_queue_policy,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PBTXT: &str = r#"
        name: "m"
        platform: "onnxruntime_onnx"
        max_batch_size: 8
        input [ { name: "x" data_type: TYPE_FP32 dims: [ 3, -1 ] } ]
        output { name: "y" data_type: TYPE_INT64 dims: 3 }
        instance_group [ { count: 2 kind: KIND_CPU } ]
        dynamic_batching {
          preferred_batch_size: [ 4, 8 ]
          max_queue_delay_microseconds: 100
          default_queue_policy { timeout_action: DELAY max_queue_size: 16 allow_timeout_override: true }
        }
        parameters { key: "slo_ms" value: { string_value: "50" } }
        version_policy: { specific: { versions: [1, 3] } }
        response_cache { enable: true }
        some_future_field: 1
    "#;

    #[test]
    fn reads_a_config_file_by_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let named = dir.path().join("mine.pbtxt");
        std::fs::write(&named, "name: \"resnet\"\nmax_batch_size: 2").expect("write");
        let config = read_config_file(&named).expect("its own name is kept");
        assert_eq!((config.name.as_str(), config.max_batch_size), ("resnet", 2));
        let unnamed = dir.path().join("config.toml");
        std::fs::write(&unnamed, "max_batch_size = 3").expect("write");
        let folder = dir.path().file_name().and_then(|n| n.to_str()).expect("folder name");
        assert_eq!(read_config_file(&unnamed).expect("named after the folder").name, folder);
        let json = dir.path().join("config.json");
        std::fs::write(&json, "{}").expect("write");
        let err = read_config_file(&json).expect_err("not pbtxt or toml");
        assert!(err.contains("config.json: a config file is *.pbtxt or *.toml"), "{err}");
        std::fs::write(&named, "max_batch_size: \"lots\"").expect("write");
        let err = read_config_file(&named).expect_err("invalid");
        assert!(err.contains("mine.pbtxt: config.pbtxt"), "{err}");
    }

    #[test]
    fn reads_triton_pbtxt() {
        let config = parse_pbtxt(PBTXT, "m").expect("valid");
        assert_eq!(config.max_batch_size, 8);
        assert_eq!(
            config.inputs,
            vec![TensorSpec { name: "x".into(), data_type: DataType::Fp32, dims: vec![3, -1] }]
        );
        assert_eq!(config.outputs[0].dims, vec![3]);
        assert_eq!(
            config.instance_group,
            vec![InstanceGroup { count: 2, kind: InstanceKind::Cpu, gpus: vec![] }]
        );
        let batching = config.dynamic_batching.expect("dynamic batching");
        assert_eq!(batching.preferred_batch_size, vec![4, 8]);
        assert_eq!(batching.max_queue_delay_microseconds, 100);
        let policy = batching.default_queue_policy.expect("queue policy");
        assert_eq!((policy.timeout_action, policy.max_queue_size), (TimeoutAction::Delay, 16));
        assert!(policy.allow_timeout_override);
        assert_eq!(config.parameters.get("slo_ms").map(String::as_str), Some("50"));
        assert_eq!(config.version_policy, VersionPolicy::Specific(vec![1, 3]));
        assert!(config.response_cache);
        assert_eq!(config.default_model_filename, DEFAULT_MODEL_FILENAME);
    }

    #[test]
    fn tflite_configs_name_their_file_and_platform_as_triton_does() {
        for text in ["backend: \"tflite\"", "platform: \"tensorflowlite\""] {
            let config = parse_pbtxt(text, "m").expect("valid");
            assert_eq!(config.default_model_filename, TFLITE_FILENAME, "{text}");
            assert_eq!(config.platform, "tensorflowlite", "{text}");
        }
        let config =
            parse_pbtxt("backend: \"tflite\"\ndefault_model_filename: \"net.tflite\"", "m").expect("valid");
        assert_eq!(config.default_model_filename, "net.tflite");
        assert_eq!(parse_pbtxt("", "m").expect("valid").default_model_filename, DEFAULT_MODEL_FILENAME);
    }

    #[test]
    fn reads_rtserve_toml() {
        let text = r#"
            max_batch_size = 4
            backend = "tract"
            [[input]]
            name = "a"
            data_type = "FP32"
            dims = [4]
            [parameters]
            slo_ms = 50
            [version_policy.latest]
            num_versions = 2
        "#;
        let config = parse_toml(text, "m").expect("valid");
        assert_eq!(config.name, "m");
        assert_eq!(config.backend.as_deref(), Some("tract"));
        assert_eq!(config.inputs[0].data_type, DataType::Fp32);
        assert_eq!(config.parameters.get("slo_ms").map(String::as_str), Some("50"));
        assert_eq!(config.version_policy, VersionPolicy::Latest(2));
    }

    #[test]
    fn pbtxt_and_toml_agree() {
        let pbtxt =
            parse_pbtxt("max_batch_size: 2 input { name: \"a\" data_type: TYPE_BOOL dims: [1] }", "m");
        let toml =
            parse_toml("max_batch_size = 2\n[[input]]\nname = \"a\"\ndata_type = \"BOOL\"\ndims = [1]", "m");
        assert_eq!(pbtxt.expect("pbtxt"), toml.expect("toml"));
    }

    #[test]
    fn preprocess_table_and_parameters_agree() {
        let toml = parse_toml(
            "[preprocess]\ninput = \"image\"\nresize_short = 256\ncrop = [224, 224]\nmean = [127.0, 127.5, 127]",
            "m",
        )
        .expect("toml");
        let pbtxt = parse_pbtxt(
            r#"parameters [
                 { key: "preprocess.input" value: { string_value: "image" } },
                 { key: "preprocess.resize_short" value: { string_value: "256" } },
                 { key: "preprocess.crop" value: { string_value: "224,224" } },
                 { key: "preprocess.mean" value: { string_value: "127,127.5,127" } }
               ]"#,
            "m",
        )
        .expect("pbtxt");
        assert_eq!(toml.parameters, pbtxt.parameters);
        let empty = parse_toml("[preprocess]", "m").expect("empty table");
        assert_eq!(empty.parameters.get("preprocess.enable").map(String::as_str), Some("true"));
        let err = parse_toml("[parameters]\n\"preprocess.crop\" = \"1\"\n[preprocess]\ncrop = 2", "m")
            .expect_err("twice");
        assert!(err.contains("preprocess.crop is set both"), "{err}");
    }

    #[test]
    fn refuses_bad_configs_with_reasons() {
        let cases = [
            ("name: \"other\"", "name 'other' does not match the model directory 'm'"),
            (
                "input { name: \"x\" data_type: TYPE_FLOAT dims: [1] }",
                "input 'x': unknown datatype 'TYPE_FLOAT'",
            ),
            ("input { name: \"x\" data_type: TYPE_FP32 dims: [0] }", "input 'x': dimension 0 is invalid"),
            ("instance_group { kind: KIND_TPU }", "instance_group kind 'KIND_TPU'"),
            ("version_policy { all {} latest { num_versions: 1 } }", "exactly one of latest, all, specific"),
            ("dynamic_batching { default_queue_policy { timeout_action: DROP } }", "timeout_action 'DROP'"),
            ("max_batch_size: \"eight\"", "config.pbtxt: invalid type"),
            ("input {\n name: \"x\"", "unterminated message 'input' opened at line 1"),
        ];
        for (text, expected) in cases {
            let err = parse_pbtxt(text, "m").expect_err(text);
            assert!(err.contains(expected), "'{err}' should contain '{expected}'");
        }
        let err = parse_toml("max_batch_size = -1", "m").expect_err("negative");
        assert!(err.starts_with("config.toml:"), "{err}");
    }
}
