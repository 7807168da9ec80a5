//! A model's metadata and configuration as KServe v2 / Triton clients read them, over HTTP
//! (JSON) and gRPC (protobuf), built from one [`ModelConfig`].

use rtserve_core::{InstanceKind, ModelConfig, TensorSpec, TimeoutAction, VersionPolicy};
use serde_json::{json, Value};

use crate::model::LoadedModel;
use crate::proto;

/// `GET /v2/models/{m}[/versions/{v}]` body.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ModelMetadata {
    pub name: String,
    /// The loaded versions, highest first.
    pub versions: Vec<String>,
    pub platform: String,
    pub inputs: Vec<TensorMetadata>,
    pub outputs: Vec<TensorMetadata>,
}

/// One input or output of [`ModelMetadata`].
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct TensorMetadata {
    pub name: String,
    /// `FP32`, `INT64`, `BYTES`, ...
    pub datatype: &'static str,
    /// With the batch dimension when the model batches; `-1` for a dynamic dimension.
    pub shape: Vec<i64>,
}

/// The metadata of `model`, reporting `versions` as loaded.
pub fn metadata(model: &LoadedModel, versions: &[String]) -> ModelMetadata {
    let config = &model.config;
    let tensors = |specs: &[TensorSpec]| -> Vec<TensorMetadata> {
        specs
            .iter()
            .map(|s| TensorMetadata {
                name: s.name.clone(),
                datatype: s.data_type.as_str(),
                shape: config.full_dims(s),
            })
            .collect()
    };
    ModelMetadata {
        name: config.name.clone(),
        versions: versions.to_vec(),
        platform: config.platform.clone(),
        inputs: tensors(&config.inputs),
        outputs: tensors(&config.outputs),
    }
}

/// ModelMetadata reply: the same metadata as protobuf.
pub fn metadata_proto(model: &LoadedModel, versions: &[String]) -> proto::ModelMetadataResponse {
    let metadata = metadata(model, versions);
    let tensors = |tensors: Vec<TensorMetadata>| {
        tensors
            .into_iter()
            .map(|t| proto::model_metadata_response::TensorMetadata {
                name: t.name,
                datatype: t.datatype.to_string(),
                shape: t.shape,
            })
            .collect()
    };
    proto::ModelMetadataResponse {
        name: metadata.name,
        versions: metadata.versions,
        platform: metadata.platform,
        inputs: tensors(metadata.inputs),
        outputs: tensors(metadata.outputs),
    }
}

/// `GET /v2/models/{m}/config` body: Triton's JSON model configuration.
pub fn config_json(config: &ModelConfig) -> Value {
    let version_policy = match &config.version_policy {
        VersionPolicy::Latest(n) => json!({"latest": {"num_versions": n}}),
        VersionPolicy::All => json!({"all": {}}),
        VersionPolicy::Specific(v) => json!({"specific": {"versions": v}}),
    };
    let mut value = json!({
        "name": config.name,
        "platform": config.platform,
        "backend": config.backend.clone().unwrap_or_default(),
        "version_policy": version_policy,
        "max_batch_size": config.max_batch_size,
        "input": config.inputs.iter().map(|s| json!({
            "name": s.name,
            "data_type": s.data_type.config_name(),
            "format": "FORMAT_NONE",
            "dims": s.dims,
            "is_shape_tensor": false,
            "allow_ragged_batch": false,
            "optional": false,
        })).collect::<Vec<_>>(),
        "output": config.outputs.iter().map(|s| json!({
            "name": s.name,
            "data_type": s.data_type.config_name(),
            "dims": s.dims,
            "label_filename": "",
            "is_shape_tensor": false,
        })).collect::<Vec<_>>(),
        "instance_group": config.instance_group.iter().enumerate().map(|(i, g)| json!({
            "name": format!("{}_{i}", config.name),
            "kind": g.kind.as_str(),
            "count": g.count,
        })).collect::<Vec<_>>(),
        "default_model_filename": config.default_model_filename,
        "parameters": config.parameters.iter()
            .map(|(k, v)| (k.clone(), json!({"string_value": v})))
            .collect::<serde_json::Map<_, _>>(),
        "response_cache": {"enable": config.response_cache},
    });
    if let Some(d) = &config.dynamic_batching {
        let mut batching = json!({
            "preferred_batch_size": d.preferred_batch_size,
            "max_queue_delay_microseconds": d.max_queue_delay_microseconds,
            "preserve_ordering": d.preserve_ordering,
            "priority_levels": d.priority_levels,
            "default_priority_level": d.default_priority_level,
        });
        if let Some(q) = &d.default_queue_policy {
            batching["default_queue_policy"] = json!({
                "timeout_action": match q.timeout_action { TimeoutAction::Reject => "REJECT", TimeoutAction::Delay => "DELAY" },
                "default_timeout_microseconds": q.default_timeout_microseconds,
                "allow_timeout_override": q.allow_timeout_override,
                "max_queue_size": q.max_queue_size,
            });
        }
        value["dynamic_batching"] = batching;
    }
    value
}

/// ModelConfig reply: the same configuration as protobuf.
pub fn config_proto(config: &ModelConfig) -> proto::ModelConfig {
    use proto::model_version_policy::{All, Latest, PolicyChoice, Specific};
    let policy_choice = match &config.version_policy {
        VersionPolicy::Latest(n) => PolicyChoice::Latest(Latest { num_versions: *n }),
        VersionPolicy::All => PolicyChoice::All(All {}),
        VersionPolicy::Specific(v) => {
            PolicyChoice::Specific(Specific { versions: v.iter().map(|&x| x as i64).collect() })
        }
    };
    let data_type = |s: &TensorSpec| {
        proto::DataType::from_str_name(&s.data_type.config_name()).unwrap_or(proto::DataType::TypeInvalid)
            as i32
    };
    let kind = |k: InstanceKind| {
        proto::model_instance_group::Kind::from_str_name(k.as_str())
            .unwrap_or(proto::model_instance_group::Kind::Auto) as i32
    };
    proto::ModelConfig {
        name: config.name.clone(),
        platform: config.platform.clone(),
        backend: config.backend.clone().unwrap_or_default(),
        version_policy: Some(proto::ModelVersionPolicy { policy_choice: Some(policy_choice) }),
        max_batch_size: config.max_batch_size as i32,
        input: config
            .inputs
            .iter()
            .map(|s| proto::ModelInput {
                name: s.name.clone(),
                data_type: data_type(s),
                dims: s.dims.clone(),
                ..Default::default()
            })
            .collect(),
        output: config
            .outputs
            .iter()
            .map(|s| proto::ModelOutput {
                name: s.name.clone(),
                data_type: data_type(s),
                dims: s.dims.clone(),
                ..Default::default()
            })
            .collect(),
        instance_group: config
            .instance_group
            .iter()
            .enumerate()
            .map(|(i, g)| proto::ModelInstanceGroup {
                name: format!("{}_{i}", config.name),
                kind: kind(g.kind),
                count: g.count as i32,
                gpus: g.gpus.iter().map(|&id| id as i32).collect(),
                ..Default::default()
            })
            .collect(),
        default_model_filename: config.default_model_filename.clone(),
        parameters: config
            .parameters
            .iter()
            .map(|(k, v)| (k.clone(), proto::ModelParameter { string_value: v.clone() }))
            .collect(),
        response_cache: Some(proto::ModelResponseCache { enable: config.response_cache }),
        scheduling_choice: config.dynamic_batching.as_ref().map(|d| {
            proto::model_config::SchedulingChoice::DynamicBatching(proto::ModelDynamicBatching {
                preferred_batch_size: d.preferred_batch_size.iter().map(|&b| b as i32).collect(),
                max_queue_delay_microseconds: d.max_queue_delay_microseconds,
                preserve_ordering: d.preserve_ordering,
                priority_levels: u64::from(d.priority_levels),
                default_priority_level: u64::from(d.default_priority_level),
                default_queue_policy: d.default_queue_policy.as_ref().map(|q| proto::ModelQueuePolicy {
                    timeout_action: match q.timeout_action {
                        TimeoutAction::Reject => proto::model_queue_policy::TimeoutAction::Reject,
                        TimeoutAction::Delay => proto::model_queue_policy::TimeoutAction::Delay,
                    } as i32,
                    default_timeout_microseconds: q.default_timeout_microseconds,
                    allow_timeout_override: q.allow_timeout_override,
                    max_queue_size: q.max_queue_size,
                }),
                ..Default::default()
            })
        }),
        ..Default::default()
    }
}
