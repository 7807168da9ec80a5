//! Whether ONNX Runtime can run a model on a GPU here, and if not, why: no GPU (NVML, the
//! driver's library, finds none), a CPU-only `libonnxruntime` (no CUDA or TensorRT provider), or
//! a provider library that cannot load because a CUDA, cuDNN or TensorRT library is missing.
//!
//! The facts are gathered once per process ([`GpuFacts::probe`]); [`GpuFacts::check`] is a pure
//! function of them, so tests give it made-up facts where a real GPU would be needed.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::ep::{ExecutionProvider, TensorRT, CUDA};
use rtserve_core::GpuPlacement;

use super::runtime::Runtime;
use super::wheels::{libraries_in, missing_library, preload, wheel_library_dirs};

const CUDA_PROVIDER_LIBRARY: &str = "libonnxruntime_providers_cuda.so";
const TENSORRT_PROVIDER_LIBRARY: &str = "libonnxruntime_providers_tensorrt.so";

/// What this host and this ONNX Runtime offer for GPUs.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuFacts {
    /// The `libonnxruntime` in use.
    pub library: PathBuf,
    /// The GPUs NVML counts, or why it counts none.
    pub gpus: Result<u32, String>,
    /// Whether the library was built with the CUDA / TensorRT providers.
    pub has_cuda: bool,
    pub has_tensorrt: bool,
    /// Whether each provider's own library loads (its CUDA, cuDNN, TensorRT dependencies found):
    /// CUDA's at the probe, TensorRT's (libnvinfer is large) only once a model asks for it.
    pub cuda_loads: Result<(), String>,
    pub tensorrt_loads: OnceLock<Result<(), String>>,
}

static FACTS: OnceLock<GpuFacts> = OnceLock::new();

impl GpuFacts {
    /// The facts of this process, gathered on first use.
    pub(crate) fn of(runtime: &Runtime) -> &'static GpuFacts {
        FACTS.get_or_init(|| GpuFacts::probe(&runtime.library))
    }

    /// Asks NVML for the GPUs, ONNX Runtime for its providers, and the dynamic loader for the
    /// provider libraries (after loading the CUDA wheels' libraries found beside ONNX Runtime).
    fn probe(library: &Path) -> GpuFacts {
        let gpus = nvml_wrapper::Nvml::init()
            .map_err(|e| format!("NVML: {e}"))
            .and_then(|nvml| nvml.device_count().map_err(|e| format!("NVML: {e}")));
        let has_cuda = CUDA::is_available().unwrap_or(false);
        let has_tensorrt = TensorRT::is_available().unwrap_or(false);
        let cuda_loads = if has_cuda && gpus.as_ref().is_ok_and(|&n| n > 0) {
            preload_wheels(library);
            load_provider(&provider_library(library, CUDA_PROVIDER_LIBRARY))
        } else {
            Err("not tried".to_string())
        };
        let facts = GpuFacts {
            library: library.to_path_buf(),
            gpus,
            has_cuda,
            has_tensorrt,
            cuda_loads,
            tensorrt_loads: OnceLock::new(),
        };
        tracing::info!(
            gpus = ?facts.gpus, cuda = facts.has_cuda, tensorrt = facts.has_tensorrt,
            cuda_loads = ?facts.cuda_loads, "onnxruntime GPU support"
        );
        facts
    }

    /// Whether TensorRT's provider library loads, tried the first time a model asks for it.
    fn tensorrt_loads(&self) -> &Result<(), String> {
        self.tensorrt_loads.get_or_init(|| {
            let loads = load_provider(&provider_library(&self.library, TENSORRT_PROVIDER_LIBRARY));
            tracing::info!(?loads, "onnxruntime TensorRT provider");
            loads
        })
    }

    /// The GPUs an instance can be placed on, or everything that stands in the way.
    pub fn gpus(&self) -> Result<Vec<u32>, String> {
        let problems = self.problems(None);
        if problems.is_empty() {
            let count = self.gpus.as_ref().map_or(0, |&n| n);
            Ok((0..count).collect())
        } else {
            Err(problems.join("; "))
        }
    }

    /// Checks one placement: the GPU exists, the providers it asks for are built in and load.
    pub fn check(&self, gpu: &GpuPlacement) -> Result<(), String> {
        let problems = self.problems(Some(gpu));
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    fn problems(&self, gpu: Option<&GpuPlacement>) -> Vec<String> {
        let mut problems = Vec::new();
        match (&self.gpus, gpu) {
            (Err(reason), _) => problems.push(format!("no GPU found ({reason})")),
            (Ok(0), _) => problems.push("no GPU found (NVML sees none)".to_string()),
            (Ok(count), Some(gpu)) if gpu.id >= *count => {
                problems.push(format!("there is no GPU {} (this host has {count})", gpu.id))
            }
            _ => {}
        }
        let library = self.library.display();
        let wants_tensorrt = gpu.is_some_and(|g| g.acceleration.tensorrt.is_some());
        if !self.has_cuda {
            let tensorrt = if wants_tensorrt && !self.has_tensorrt { " or TensorRT" } else { "" };
            problems.push(format!(
                "this libonnxruntime ({library}) has no CUDA{tensorrt} provider: it is a CPU-only build \
                 (pip install onnxruntime-gpu)"
            ));
        } else if problems.is_empty() {
            if let Err(e) = &self.cuda_loads {
                problems.push(format!("the CUDA provider cannot load: {e}"));
            }
        }
        if wants_tensorrt && self.has_cuda {
            if !self.has_tensorrt {
                problems.push(format!("this libonnxruntime ({library}) has no TensorRT provider"));
            } else if problems.is_empty() {
                if let Err(e) = self.tensorrt_loads() {
                    problems.push(format!("the TensorRT provider cannot load: {e}"));
                }
            }
        }
        problems
    }
}

/// A provider library, beside the `libonnxruntime` in use.
fn provider_library(library: &Path, name: &str) -> PathBuf {
    library.parent().unwrap_or(Path::new(".")).join(name)
}

/// Loads the CUDA, cuDNN and TensorRT libraries of the wheels installed beside ONNX Runtime.
fn preload_wheels(library: &Path) {
    let dirs = wheel_library_dirs(library);
    if dirs.is_empty() {
        return;
    }
    let failed = preload(libraries_in(&dirs), load_and_keep);
    tracing::info!(folders = ?dirs, not_loaded = failed.len(), "CUDA libraries from the PyPI wheels");
    for (path, error) in failed {
        tracing::debug!(library = %path.display(), "not preloaded: {error}");
    }
}

/// Loads a provider library; the error names the library it misses and the wheel that has it.
fn load_provider(path: &Path) -> Result<(), String> {
    if !path.is_file() {
        return Err(format!("{} is not there", path.display()));
    }
    load_and_keep(path).map_err(|e| match missing_library(&e) {
        Some((soname, package)) => {
            format!("{soname} is missing (pip install {package}, or put its folder on LD_LIBRARY_PATH)")
        }
        None => e,
    })
}

/// Loads a library for the rest of the process (it is never unloaded): ONNX Runtime later asks
/// for it by name.
fn load_and_keep(path: &Path) -> Result<(), String> {
    ort::util::preload_dylib(path).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use rtserve_core::TensorRtOptions;

    use super::*;

    fn gpu_host() -> GpuFacts {
        GpuFacts {
            library: PathBuf::from("/site/onnxruntime/capi/libonnxruntime.so.1.23.2"),
            gpus: Ok(2),
            has_cuda: true,
            has_tensorrt: true,
            cuda_loads: Ok(()),
            tensorrt_loads: OnceLock::from(Ok(())),
        }
    }

    fn on(id: u32, tensorrt: bool) -> GpuPlacement {
        let mut placement = GpuPlacement { id, ..GpuPlacement::default() };
        placement.acceleration.tensorrt = tensorrt.then(TensorRtOptions::default);
        placement
    }

    #[test]
    fn a_full_gpu_host_places_anywhere_it_has() {
        let facts = gpu_host();
        assert_eq!(facts.gpus(), Ok(vec![0, 1]));
        assert_eq!(facts.check(&on(1, true)), Ok(()));
        let err = facts.check(&on(2, false)).expect_err("gpu 2");
        assert_eq!(err, "there is no GPU 2 (this host has 2)");
    }

    #[test]
    fn each_missing_piece_is_named() {
        let no_driver = GpuFacts { gpus: Err("NVML: libnvidia-ml.so.1 not found".into()), ..gpu_host() };
        assert_eq!(
            no_driver.check(&on(0, false)),
            Err("no GPU found (NVML: libnvidia-ml.so.1 not found)".into())
        );

        let cpu_build = GpuFacts { has_cuda: false, has_tensorrt: false, ..gpu_host() };
        let err = cpu_build.check(&on(0, true)).expect_err("cpu build");
        assert!(
            err.ends_with(
                "has no CUDA or TensorRT provider: it is a CPU-only build (pip install onnxruntime-gpu)"
            ),
            "{err}"
        );
        let err = cpu_build.check(&on(0, false)).expect_err("cpu build");
        assert!(
            err.ends_with("has no CUDA provider: it is a CPU-only build (pip install onnxruntime-gpu)"),
            "{err}"
        );
        let no_trt_build = GpuFacts { has_tensorrt: false, ..gpu_host() };
        assert!(no_trt_build.check(&on(0, true)).expect_err("no trt").ends_with("has no TensorRT provider"));
        assert!(cpu_build.gpus().is_err());

        // This machine: neither a GPU nor a GPU build; both said.
        let here = GpuFacts { gpus: Err("NVML: not found".into()), ..cpu_build };
        let err = here.gpus().expect_err("nothing");
        assert!(err.starts_with("no GPU found") && err.contains("no CUDA provider"), "{err}");

        let no_cudnn = GpuFacts {
            cuda_loads: Err("libcudnn.so.9 is missing (pip install nvidia-cudnn-cu13, …)".into()),
            ..gpu_host()
        };
        assert!(no_cudnn
            .check(&on(0, false))
            .expect_err("cudnn")
            .contains("CUDA provider cannot load: libcudnn.so.9"));

        let no_trt = GpuFacts {
            tensorrt_loads: OnceLock::from(Err("libnvinfer.so.10 is missing".into())),
            ..gpu_host()
        };
        assert_eq!(no_trt.check(&on(0, false)), Ok(()), "CUDA alone does not need TensorRT");
        let err = no_trt.check(&on(0, true)).expect_err("trt");
        assert_eq!(err, "the TensorRT provider cannot load: libnvinfer.so.10 is missing");
    }
}
