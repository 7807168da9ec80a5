//! Triton's `optimization` block as far as it concerns execution providers:
//! `execution_accelerators { gpu_execution_accelerator: [ { name: "tensorrt" | "cuda"
//! parameters { key value } } ] }` and `cuda { graphs: true }`, read into [`GpuAcceleration`].
//! Parameter names are the ones Triton's ONNX Runtime backend reads; a name rtserve does not
//! know is an error naming the ones it does, not a setting silently dropped.

use std::collections::BTreeMap;
use std::path::PathBuf;

use rtserve_core::{CudaOptions, GpuAcceleration, TensorRtOptions};
use serde::Deserialize;

use super::config_file::RawScalar;
use super::load::parse_bool;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawOptimization {
    execution_accelerators: Option<RawAccelerators>,
    cuda: Option<RawCuda>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawAccelerators {
    gpu_execution_accelerator: Vec<RawAccelerator>,
    cpu_execution_accelerator: Vec<RawAccelerator>,
}

#[derive(Debug, Deserialize)]
struct RawAccelerator {
    name: String,
    #[serde(default)]
    parameters: BTreeMap<String, RawScalar>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawCuda {
    graphs: bool,
}

const TENSORRT_KEYS: &[&str] = &[
    "precision_mode",
    "max_workspace_size_bytes",
    "minimum_segment_size",
    "trt_engine_cache_enable",
    "trt_engine_cache_path",
];
const CUDA_KEYS: &[&str] = &[
    "cudnn_conv_algo_search",
    "cudnn_conv_use_max_workspace",
    "enable_cuda_graph",
    "gpu_mem_limit",
    "use_tf32",
];

impl RawOptimization {
    pub(super) fn validate(self, model: &str, max_batch_size: u32) -> Result<GpuAcceleration, String> {
        let mut gpu = GpuAcceleration::default();
        let accelerators = self.execution_accelerators.unwrap_or_default();
        for cpu in &accelerators.cpu_execution_accelerator {
            tracing::warn!(
                model,
                "cpu_execution_accelerator '{}' is ignored: rtserve runs ONNX Runtime's own CPU provider",
                cpu.name
            );
        }
        let mut cuda_seen = false;
        for accelerator in accelerators.gpu_execution_accelerator {
            let what = format!("gpu_execution_accelerator '{}'", accelerator.name);
            let parameters = strings(accelerator.parameters);
            match accelerator.name.as_str() {
                "tensorrt" if gpu.tensorrt.is_some() => return Err(format!("{what} is given twice")),
                "tensorrt" => gpu.tensorrt = Some(tensorrt(parameters).map_err(|e| format!("{what}: {e}"))?),
                "cuda" if cuda_seen => return Err(format!("{what} is given twice")),
                "cuda" => {
                    cuda_seen = true;
                    gpu.cuda = cuda(parameters).map_err(|e| format!("{what}: {e}"))?;
                }
                _ => return Err(format!("{what} is not one rtserve has (tensorrt, cuda)")),
            }
        }
        if self.cuda.is_some_and(|c| c.graphs) {
            gpu.cuda.cuda_graph = true;
        }
        if gpu.cuda.cuda_graph && max_batch_size > 0 {
            return Err(format!(
                "CUDA graphs replay fixed shapes, but max_batch_size is {max_batch_size}: \
                 set max_batch_size 0 (one fixed shape) or turn the graphs off"
            ));
        }
        Ok(gpu)
    }
}

fn strings(parameters: BTreeMap<String, RawScalar>) -> BTreeMap<String, String> {
    parameters.into_iter().map(|(k, v)| (k, v.into_string())).collect()
}

fn tensorrt(parameters: BTreeMap<String, String>) -> Result<TensorRtOptions, String> {
    let mut options = TensorRtOptions::default();
    for (key, value) in &parameters {
        match key.as_str() {
            "precision_mode" => options.precision = value.parse()?,
            "max_workspace_size_bytes" => options.max_workspace_bytes = Some(number(key, value)?),
            "minimum_segment_size" => options.minimum_segment_size = Some(number(key, value)?),
            "trt_engine_cache_enable" => options.engine_cache = Some(parse_bool(key, value)?),
            "trt_engine_cache_path" if value.contains('\0') => {
                return Err("trt_engine_cache_path holds a NUL byte".to_string())
            }
            "trt_engine_cache_path" => options.engine_cache_path = Some(PathBuf::from(value)),
            other => return Err(unknown(other, TENSORRT_KEYS)),
        }
    }
    Ok(options)
}

fn cuda(parameters: BTreeMap<String, String>) -> Result<CudaOptions, String> {
    let mut options = CudaOptions::default();
    for (key, value) in &parameters {
        match key.as_str() {
            "cudnn_conv_algo_search" => options.conv_algo_search = Some(value.parse()?),
            "cudnn_conv_use_max_workspace" => options.conv_max_workspace = Some(parse_bool(key, value)?),
            "enable_cuda_graph" => options.cuda_graph = parse_bool(key, value)?,
            "gpu_mem_limit" => options.memory_limit = Some(number(key, value)?),
            "use_tf32" => options.tf32 = Some(parse_bool(key, value)?),
            other => return Err(unknown(other, CUDA_KEYS)),
        }
    }
    Ok(options)
}

fn unknown(key: &str, known: &[&str]) -> String {
    format!("unknown parameter '{key}' (known: {})", known.join(", "))
}

fn number<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, String> {
    value.trim().parse().map_err(|_| format!("{key} '{value}' is not a whole number"))
}

#[cfg(test)]
mod tests {
    use rtserve_core::{ConvAlgoSearch, InstanceGroup, InstanceKind, Precision};

    use super::super::config_file::{parse_json, parse_pbtxt, parse_toml};
    use super::*;

    const TRITON_GPU: &str = r#"
        name: "resnet"
        backend: "onnxruntime"
        max_batch_size: 32
        instance_group [ { kind: KIND_GPU count: 2 gpus: [ 0, 1 ] }, { kind: KIND_CPU } ]
        optimization { execution_accelerators {
          gpu_execution_accelerator : [ {
            name : "tensorrt"
            parameters { key: "precision_mode" value: "FP16" }
            parameters { key: "max_workspace_size_bytes" value: "1073741824" }
            parameters { key: "trt_engine_cache_enable" value: "1" }
            parameters { key: "trt_engine_cache_path" value: "/tmp/trt" }
          },
          { name : "cuda" parameters { key: "cudnn_conv_algo_search" value: "0" } } ]
        } }
    "#;

    #[test]
    fn triton_gpu_config_reads() {
        let config = parse_pbtxt(TRITON_GPU, "resnet").expect("config");
        assert_eq!(
            config.instance_group,
            vec![
                InstanceGroup { count: 2, kind: InstanceKind::Gpu, gpus: vec![0, 1] },
                InstanceGroup { count: 1, kind: InstanceKind::Cpu, gpus: vec![] },
            ]
        );
        let trt = config.gpu.tensorrt.expect("tensorrt");
        assert_eq!(trt.precision, Precision::Fp16);
        assert_eq!(trt.max_workspace_bytes, Some(1 << 30));
        assert_eq!(trt.engine_cache, Some(true));
        assert_eq!(trt.engine_cache_path, Some(PathBuf::from("/tmp/trt")));
        assert_eq!(config.gpu.cuda.conv_algo_search, Some(ConvAlgoSearch::Exhaustive));
        assert!(!config.gpu.cuda.cuda_graph);
    }

    #[test]
    fn one_gpu_and_no_gpus_read() {
        let config = parse_pbtxt("instance_group { kind: KIND_GPU gpus: 3 }", "m").expect("one gpu");
        assert_eq!(config.instance_group[0].gpus, vec![3]);
        let config = parse_pbtxt("instance_group { kind: KIND_GPU count: 4 }", "m").expect("every gpu");
        assert_eq!(
            config.instance_group[0],
            InstanceGroup { count: 4, kind: InstanceKind::Gpu, gpus: vec![] }
        );
        assert_eq!(config.gpu, GpuAcceleration::default());
    }

    #[test]
    fn toml_and_json_say_the_same() {
        let toml = r#"
            max_batch_size = 8
            [[instance_group]]
            kind = "KIND_GPU"
            gpus = [0]
            [[optimization.execution_accelerators.gpu_execution_accelerator]]
            name = "tensorrt"
            parameters = { precision_mode = "INT8", minimum_segment_size = 3 }
        "#;
        let json = r#"{"max_batch_size": 8,
            "instance_group": [{"kind": "KIND_GPU", "gpus": [0]}],
            "optimization": {"execution_accelerators": {"gpu_execution_accelerator": [
                {"name": "tensorrt", "parameters": {"precision_mode": "INT8", "minimum_segment_size": "3"}}]}}}"#;
        let from_toml = parse_toml(toml, "m").expect("toml");
        let from_json = parse_json(json, "m").expect("json");
        assert_eq!(from_toml.gpu, from_json.gpu);
        let trt = from_toml.gpu.tensorrt.expect("tensorrt");
        assert_eq!((trt.precision, trt.minimum_segment_size), (Precision::Int8, Some(3)));
    }

    #[test]
    fn cuda_graphs_from_either_place_need_fixed_shapes() {
        let config = parse_pbtxt("optimization { cuda { graphs: true } }", "m").expect("graphs");
        assert!(config.gpu.cuda.cuda_graph);
        let accelerator = r#"optimization { execution_accelerators { gpu_execution_accelerator: [
            { name: "cuda" parameters { key: "enable_cuda_graph" value: "1" } } ] } }"#;
        assert!(parse_pbtxt(accelerator, "m").expect("graphs").gpu.cuda.cuda_graph);
        let err = parse_pbtxt("max_batch_size: 8 optimization { cuda { graphs: true } }", "m")
            .expect_err("batching");
        assert!(err.contains("CUDA graphs") && err.contains("max_batch_size is 8"), "{err}");
    }

    #[test]
    fn bad_accelerator_settings_are_named() {
        let gpu = |body: &str| {
            parse_pbtxt(
                &format!(
                    "optimization {{ execution_accelerators {{ gpu_execution_accelerator: [ {body} ] }} }}"
                ),
                "m",
            )
            .expect_err(body)
        };
        let cases = [
            (r#"{ name: "openvino" }"#, "'openvino' is not one rtserve has"),
            (
                r#"{ name: "tensorrt" parameters { key: "precision_mode" value: "FP8" } }"#,
                "precision_mode 'FP8'",
            ),
            (
                r#"{ name: "tensorrt" parameters { key: "max_workspace_size_bytes" value: "lots" } }"#,
                "'lots' is not a whole number",
            ),
            (
                r#"{ name: "tensorrt" parameters { key: "precison_mode" value: "FP16" } }"#,
                "unknown parameter 'precison_mode'",
            ),
            (r#"{ name: "tensorrt" }, { name: "tensorrt" }"#, "given twice"),
            (
                r#"{ name: "cuda" parameters { key: "cudnn_conv_algo_search" value: "7" } }"#,
                "cudnn_conv_algo_search '7'",
            ),
            (r#"{ name: "cuda" parameters { key: "use_tf32" value: "maybe" } }"#, "use_tf32 'maybe' must be"),
        ];
        for (body, expected) in cases {
            let err = gpu(body);
            assert!(err.contains(expected), "{body}: {err}");
        }
        let err = parse_pbtxt("instance_group { kind: KIND_CPU gpus: [0] }", "m").expect_err("gpus on cpu");
        assert!(err.contains("need kind KIND_GPU"), "{err}");
    }

    #[test]
    fn cpu_accelerators_are_ignored() {
        let config = parse_pbtxt(
            r#"optimization { execution_accelerators { cpu_execution_accelerator: [ { name: "openvino" } ] } }"#,
            "m",
        )
        .expect("openvino is ignored with a warning");
        assert_eq!(config.gpu, GpuAcceleration::default());
    }
}
