//! The execution providers of a GPU instance, from its placement: TensorRT first when the config
//! asks for it (nodes it cannot take fall to CUDA), then CUDA, then ONNX Runtime's CPU kernels
//! for what neither runs. A provider that fails to register fails the session: an instance that
//! was placed on a GPU never runs silently on the CPU.

use std::path::PathBuf;

use ort::ep::cuda::ConvAlgorithmSearch;
use ort::ep::{ExecutionProviderDispatch, TensorRT, CUDA};
use rtserve_core::{ConvAlgoSearch, CudaOptions, GpuPlacement, Precision, TensorRtOptions, TensorSpec};

/// The providers for `gpu`, in priority order. `inputs` are the model's declared inputs, from
/// which TensorRT's profile shapes are made.
pub(crate) fn execution_providers(
    gpu: &GpuPlacement,
    inputs: &[TensorSpec],
) -> Vec<ExecutionProviderDispatch> {
    let mut providers = Vec::with_capacity(2);
    if let Some(trt) = &gpu.acceleration.tensorrt {
        providers.push(tensorrt(gpu, trt, inputs).build().error_on_failure());
    }
    providers.push(cuda(gpu.id, &gpu.acceleration.cuda).build().error_on_failure());
    providers
}

fn cuda(device: u32, options: &CudaOptions) -> CUDA {
    let mut cuda = CUDA::default().with_device_id(device as i32);
    if let Some(search) = options.conv_algo_search {
        cuda = cuda.with_conv_algorithm_search(match search {
            ConvAlgoSearch::Exhaustive => ConvAlgorithmSearch::Exhaustive,
            ConvAlgoSearch::Heuristic => ConvAlgorithmSearch::Heuristic,
            ConvAlgoSearch::Default => ConvAlgorithmSearch::Default,
        });
    }
    if let Some(max) = options.conv_max_workspace {
        cuda = cuda.with_conv_max_workspace(max);
    }
    if options.cuda_graph {
        cuda = cuda.with_cuda_graph(true);
    }
    if let Some(limit) = options.memory_limit {
        cuda = cuda.with_memory_limit(usize::try_from(limit).unwrap_or(usize::MAX));
    }
    if let Some(tf32) = options.tf32 {
        cuda = cuda.with_tf32(tf32);
    }
    cuda
}

fn tensorrt(gpu: &GpuPlacement, options: &TensorRtOptions, inputs: &[TensorSpec]) -> TensorRT {
    let mut trt = TensorRT::default().with_device_id(gpu.id as i32);
    // INT8 comes from the model's Q/DQ nodes; layers between them may still run in FP16.
    trt = trt.with_fp16(options.precision != Precision::Fp32).with_int8(options.precision == Precision::Int8);
    if let Some(bytes) = options.max_workspace_bytes {
        trt = trt.with_max_workspace_size(usize::try_from(bytes).unwrap_or(usize::MAX));
    }
    if let Some(size) = options.minimum_segment_size {
        trt = trt.with_min_subgraph_size(size as usize);
    }
    if let Some(cache) = engine_cache(gpu, options) {
        let cache = cache.to_string_lossy().to_string();
        trt = trt.with_engine_cache(true).with_engine_cache_path(&cache);
        trt = trt.with_timing_cache(true).with_timing_cache_path(&cache);
    }
    if let Some(profile) = profile_shapes(inputs, gpu.max_batch_size) {
        trt = trt
            .with_profile_min_shapes(&profile.min)
            .with_profile_opt_shapes(&profile.max)
            .with_profile_max_shapes(&profile.max);
    }
    trt
}

/// The engine cache folder: the model's `trt_engine_cache_path`, else the server's
/// `--tensorrt-cache`; none when `trt_engine_cache_enable` is false.
fn engine_cache(gpu: &GpuPlacement, options: &TensorRtOptions) -> Option<PathBuf> {
    if options.engine_cache == Some(false) {
        return None;
    }
    options.engine_cache_path.clone().or_else(|| gpu.tensorrt_cache.clone())
}

/// TensorRT's optimization profile, `name:1x3x224x224,...` for the smallest and the largest batch.
#[derive(Debug, PartialEq)]
struct Profile {
    min: String,
    max: String,
}

/// The profile of a batching model whose inputs vary only in the batch dimension; `None`
/// otherwise (TensorRT then builds for the shapes it meets).
fn profile_shapes(inputs: &[TensorSpec], max_batch_size: u32) -> Option<Profile> {
    if max_batch_size == 0 || inputs.is_empty() {
        return None;
    }
    let shape = |spec: &TensorSpec, batch: u32| -> Option<String> {
        let (first, rest) = spec.dims.split_first()?;
        if *first != -1 || rest.iter().any(|&d| d < 1) || spec.name.contains([':', ',']) {
            return None;
        }
        let dims: Vec<String> =
            std::iter::once(batch.to_string()).chain(rest.iter().map(i64::to_string)).collect();
        Some(format!("{}:{}", spec.name, dims.join("x")))
    };
    let all = |batch: u32| -> Option<String> {
        inputs.iter().map(|spec| shape(spec, batch)).collect::<Option<Vec<_>>>().map(|s| s.join(","))
    };
    Some(Profile { min: all(1)?, max: all(max_batch_size)? })
}

#[cfg(test)]
mod tests {
    use rtserve_core::DataType;

    use super::*;

    fn spec(name: &str, dims: &[i64]) -> TensorSpec {
        TensorSpec { name: name.to_string(), data_type: DataType::Fp32, dims: dims.to_vec() }
    }

    #[test]
    fn profiles_span_one_to_max_batch() {
        let inputs = [spec("images", &[-1, 3, 224, 224]), spec("mask", &[-1, 7])];
        let profile = profile_shapes(&inputs, 32).expect("profile");
        assert_eq!(profile.min, "images:1x3x224x224,mask:1x7");
        assert_eq!(profile.max, "images:32x3x224x224,mask:32x7");
        assert_eq!(profile_shapes(&inputs, 0), None, "no batching, fixed shapes");
        assert_eq!(profile_shapes(&[spec("text", &[-1, -1])], 8), None, "a second dynamic dimension");
        assert_eq!(profile_shapes(&[spec("a:b", &[-1, 4])], 8), None, "a name the option format cannot hold");
    }

    #[test]
    fn the_model_s_cache_path_wins_and_can_be_turned_off() {
        let gpu = GpuPlacement { tensorrt_cache: Some(PathBuf::from("/server")), ..GpuPlacement::default() };
        let mut options = TensorRtOptions::default();
        assert_eq!(engine_cache(&gpu, &options), Some(PathBuf::from("/server")));
        options.engine_cache_path = Some(PathBuf::from("/model"));
        assert_eq!(engine_cache(&gpu, &options), Some(PathBuf::from("/model")));
        options.engine_cache = Some(false);
        assert_eq!(engine_cache(&gpu, &options), None);
    }

    #[test]
    fn tensorrt_goes_before_cuda() {
        let mut gpu = GpuPlacement::default();
        let names = |gpu: &GpuPlacement| -> Vec<&'static str> {
            execution_providers(gpu, &[]).iter().map(ExecutionProviderDispatch::name).collect()
        };
        assert_eq!(names(&gpu), ["CUDAExecutionProvider"]);
        gpu.acceleration.tensorrt = Some(TensorRtOptions::default());
        assert_eq!(names(&gpu), ["TensorrtExecutionProvider", "CUDAExecutionProvider"]);
    }
}
