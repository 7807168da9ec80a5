//! Where a model instance runs, and the GPU settings a model config asks for in Triton's words
//! (`instance_group { kind: KIND_GPU gpus: [...] }`, `optimization { execution_accelerators {
//! gpu_execution_accelerator: [ { name: "tensorrt" | "cuda" ... } ] } }`), read and checked by
//! the server's config reader, carried out by an engine that has GPU providers.

use std::path::PathBuf;

/// The device of one instance.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Device {
    #[default]
    Cpu,
    Gpu(GpuPlacement),
}

impl Device {
    /// `cpu` or `gpu 0`, for logs and errors.
    pub fn describe(&self) -> String {
        match self {
            Device::Cpu => "cpu".to_string(),
            Device::Gpu(gpu) => format!("gpu {}", gpu.id),
        }
    }
}

/// One instance on one GPU.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GpuPlacement {
    /// The GPU's index, as CUDA and NVML count them.
    pub id: u32,
    pub acceleration: GpuAcceleration,
    /// The model's `max_batch_size`: TensorRT builds its engine for batches up to it.
    pub max_batch_size: u32,
    /// Where TensorRT keeps the engines it builds (a restart then reuses them), unless the
    /// accelerator's own `trt_engine_cache_path` says otherwise.
    pub tensorrt_cache: Option<PathBuf>,
}

/// A model's GPU execution settings.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GpuAcceleration {
    /// TensorRT in front of CUDA (`name: "tensorrt"`).
    pub tensorrt: Option<TensorRtOptions>,
    /// CUDA's own settings (`name: "cuda"`, and `optimization { cuda { graphs: true } }`).
    pub cuda: CudaOptions,
}

/// The precision TensorRT may build layers in (`precision_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    #[default]
    Fp32,
    Fp16,
    /// INT8 from the model's Q/DQ nodes (explicit quantization), FP16 elsewhere.
    Int8,
}

impl std::str::FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "FP32" => Ok(Precision::Fp32),
            "FP16" => Ok(Precision::Fp16),
            "INT8" => Ok(Precision::Int8),
            _ => Err(format!("precision_mode '{s}' is not FP32, FP16 or INT8")),
        }
    }
}

/// TensorRT's settings, Triton's parameter names in the comments.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TensorRtOptions {
    /// `precision_mode`.
    pub precision: Precision,
    /// `max_workspace_size_bytes`.
    pub max_workspace_bytes: Option<u64>,
    /// `minimum_segment_size`: the smallest subgraph TensorRT takes over.
    pub minimum_segment_size: Option<u32>,
    /// `trt_engine_cache_enable`: `Some(false)` turns the cache off even with `--tensorrt-cache`.
    pub engine_cache: Option<bool>,
    /// `trt_engine_cache_path`.
    pub engine_cache_path: Option<PathBuf>,
}

/// cuDNN's convolution algorithm search (`cudnn_conv_algo_search`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvAlgoSearch {
    /// Time every algorithm once per shape: the seed's `cudnn.benchmark = True`.
    Exhaustive,
    Heuristic,
    Default,
}

impl std::str::FromStr for ConvAlgoSearch {
    type Err = String;

    /// Triton's numbers (0, 1, 2) or the names.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "0" | "EXHAUSTIVE" => Ok(ConvAlgoSearch::Exhaustive),
            "1" | "HEURISTIC" => Ok(ConvAlgoSearch::Heuristic),
            "2" | "DEFAULT" => Ok(ConvAlgoSearch::Default),
            _ => Err(format!("cudnn_conv_algo_search '{s}' is not 0/EXHAUSTIVE, 1/HEURISTIC or 2/DEFAULT")),
        }
    }
}

/// CUDA's settings; `None` keeps ONNX Runtime's default.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CudaOptions {
    /// `cudnn_conv_algo_search`.
    pub conv_algo_search: Option<ConvAlgoSearch>,
    /// `cudnn_conv_use_max_workspace`.
    pub conv_max_workspace: Option<bool>,
    /// `enable_cuda_graph` (or `optimization { cuda { graphs: true } }`): replay the whole model
    /// as one CUDA graph, the seed's "reduce-overhead". Fixed shapes only.
    pub cuda_graph: bool,
    /// `gpu_mem_limit`, bytes.
    pub memory_limit: Option<u64>,
    /// `use_tf32`.
    pub tf32: Option<bool>,
}
