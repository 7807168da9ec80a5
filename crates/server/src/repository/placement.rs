//! Where each instance of a model runs: Triton's `instance_group` read against the GPUs the
//! engine can use. `KIND_GPU` places `count` instances on each listed GPU (every GPU, or the
//! server's `--gpus`, when none are listed); `KIND_CPU` and `KIND_MODEL` run on the CPU;
//! `KIND_AUTO` (and no instance_group at all) runs on the GPUs when the engine can use them,
//! else on the CPU, as Triton does. A `KIND_GPU` group that cannot be placed fails the load with
//! the engine's reason, unless the model's `allow_cpu_fallback` parameter lets it run on the CPU.

use std::path::PathBuf;

use rtserve_core::{Device, Engine, GpuPlacement, InstanceGroup, InstanceKind, ModelConfig};

use super::load::bool_parameter;
use super::LoadError;

/// The parameter that lets a `KIND_GPU` group run on the CPU when it cannot be placed on a GPU.
pub const ALLOW_CPU_FALLBACK_PARAMETER: &str = "allow_cpu_fallback";

/// The server's GPU defaults (`--gpus`, `--tensorrt-cache`).
#[derive(Debug, Clone, Default)]
pub struct GpuDefaults {
    /// The GPUs a `KIND_GPU` group without `gpus` uses; `None`: every GPU the engine finds.
    pub ids: Option<Vec<u32>>,
    /// Where TensorRT keeps its engines when a model's config does not say.
    pub tensorrt_cache: Option<PathBuf>,
}

/// One device per instance, in the order of the config's groups.
pub fn placements(
    config: &ModelConfig,
    engine: &dyn Engine,
    defaults: &GpuDefaults,
) -> Result<Vec<Device>, LoadError> {
    let fallback = bool_parameter(config, ALLOW_CPU_FALLBACK_PARAMETER)?;
    let default_group = [InstanceGroup { count: 1, kind: InstanceKind::Auto, gpus: Vec::new() }];
    let groups = if config.instance_group.is_empty() { &default_group[..] } else { &config.instance_group };
    let mut devices = Vec::new();
    for group in groups {
        let count = group.count.max(1) as usize;
        match group.kind {
            InstanceKind::Cpu | InstanceKind::Model => {
                devices.extend(std::iter::repeat_n(Device::Cpu, count))
            }
            InstanceKind::Auto => match gpu_devices(config, engine, defaults, &group.gpus) {
                Ok(gpus) => gpus.into_iter().for_each(|gpu| devices.extend(std::iter::repeat_n(gpu, count))),
                Err(reason) => {
                    tracing::debug!(model = %config.name, "KIND_AUTO runs on the CPU: {reason}");
                    devices.extend(std::iter::repeat_n(Device::Cpu, count));
                }
            },
            InstanceKind::Gpu => match gpu_devices(config, engine, defaults, &group.gpus) {
                Ok(gpus) => gpus.into_iter().for_each(|gpu| devices.extend(std::iter::repeat_n(gpu, count))),
                Err(reason) if fallback => {
                    tracing::warn!(
                        model = %config.name,
                        "KIND_GPU instances run on the CPU ({ALLOW_CPU_FALLBACK_PARAMETER}): {reason}"
                    );
                    devices.extend(std::iter::repeat_n(Device::Cpu, count));
                }
                Err(reason) => {
                    return Err(LoadError::Placement(format!(
                        "instance_group KIND_GPU cannot be placed: {reason} (use KIND_CPU, or set the \
                         parameter {ALLOW_CPU_FALLBACK_PARAMETER} to true to run on the CPU instead)"
                    )))
                }
            },
        }
    }
    Ok(devices)
}

/// The GPU placements of one group: its listed GPUs, else the defaults, each checked with the
/// engine. The first GPU that cannot take the model gives the reason.
fn gpu_devices(
    config: &ModelConfig,
    engine: &dyn Engine,
    defaults: &GpuDefaults,
    listed: &[u32],
) -> Result<Vec<Device>, String> {
    let ids = if !listed.is_empty() {
        listed.to_vec()
    } else if let Some(ids) = &defaults.ids {
        ids.clone()
    } else {
        engine.gpus().map_err(|e| e.to_string())?
    };
    if ids.is_empty() {
        return Err(format!("the {} engine found no GPU", engine.name()));
    }
    ids.into_iter()
        .map(|id| {
            let placement = GpuPlacement {
                id,
                acceleration: config.gpu.clone(),
                max_batch_size: config.max_batch_size,
                tensorrt_cache: defaults.tensorrt_cache.clone(),
            };
            engine.check_gpu(&placement).map_err(|e| format!("gpu {id}: {e}"))?;
            Ok(Device::Gpu(placement))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use rtserve_core::{EngineError, PreparedModel, TensorRtOptions};

    use super::*;

    /// An engine with GPUs `0..gpus` of which those in `broken` cannot take a model.
    struct FakeGpuEngine {
        gpus: Result<Vec<u32>, &'static str>,
        broken: Vec<u32>,
    }

    impl Engine for FakeGpuEngine {
        fn name(&self) -> &'static str {
            "fake"
        }
        fn prepare(&self, _: &Path) -> Result<Box<dyn PreparedModel>, EngineError> {
            Err(EngineError::new("not used"))
        }
        fn gpus(&self) -> Result<Vec<u32>, EngineError> {
            self.gpus.clone().map_err(EngineError::new)
        }
        fn check_gpu(&self, gpu: &GpuPlacement) -> Result<(), EngineError> {
            let found = self.gpus()?;
            if !found.contains(&gpu.id) {
                return Err(EngineError::new(format!("no GPU {}", gpu.id)));
            }
            if self.broken.contains(&gpu.id) {
                return Err(EngineError::new("libcudnn.so.9 is missing"));
            }
            Ok(())
        }
    }

    fn two_gpus() -> FakeGpuEngine {
        FakeGpuEngine { gpus: Ok(vec![0, 1]), broken: vec![] }
    }

    fn no_gpu() -> FakeGpuEngine {
        FakeGpuEngine { gpus: Err("no GPU found (NVML: libnvidia-ml.so.1 not found)"), broken: vec![] }
    }

    fn config(groups: &[(InstanceKind, u32, &[u32])]) -> ModelConfig {
        ModelConfig {
            name: "m".to_string(),
            max_batch_size: 16,
            instance_group: groups
                .iter()
                .map(|&(kind, count, gpus)| InstanceGroup { count, kind, gpus: gpus.to_vec() })
                .collect(),
            ..ModelConfig::default()
        }
    }

    fn ids(devices: &[Device]) -> Vec<String> {
        devices.iter().map(Device::describe).collect()
    }

    #[test]
    fn gpu_groups_place_count_instances_on_each_gpu() {
        let listed = config(&[(InstanceKind::Gpu, 2, &[1, 0]), (InstanceKind::Cpu, 1, &[])]);
        let devices = placements(&listed, &two_gpus(), &GpuDefaults::default()).expect("placed");
        assert_eq!(ids(&devices), ["gpu 1", "gpu 1", "gpu 0", "gpu 0", "cpu"]);

        let every = config(&[(InstanceKind::Gpu, 1, &[])]);
        let devices = placements(&every, &two_gpus(), &GpuDefaults::default()).expect("every gpu");
        assert_eq!(ids(&devices), ["gpu 0", "gpu 1"]);
        let only_one = GpuDefaults { ids: Some(vec![1]), tensorrt_cache: Some(PathBuf::from("/cache")) };
        let devices = placements(&every, &two_gpus(), &only_one).expect("--gpus 1");
        assert_eq!(ids(&devices), ["gpu 1"]);
        let Device::Gpu(gpu) = &devices[0] else { panic!("a gpu") };
        assert_eq!((gpu.max_batch_size, gpu.tensorrt_cache.as_deref()), (16, Some(Path::new("/cache"))));
    }

    #[test]
    fn the_config_s_accelerators_reach_every_gpu_instance() {
        let mut with_trt = config(&[(InstanceKind::Gpu, 1, &[0, 1])]);
        with_trt.gpu.tensorrt = Some(TensorRtOptions::default());
        let devices = placements(&with_trt, &two_gpus(), &GpuDefaults::default()).expect("placed");
        assert!(devices.iter().all(|d| matches!(d, Device::Gpu(g) if g.acceleration.tensorrt.is_some())));
    }

    #[test]
    fn auto_follows_the_gpus_and_cpu_groups_stay() {
        let auto = config(&[(InstanceKind::Auto, 1, &[])]);
        assert_eq!(
            ids(&placements(&auto, &two_gpus(), &GpuDefaults::default()).expect("gpu")),
            ["gpu 0", "gpu 1"]
        );
        assert_eq!(ids(&placements(&auto, &no_gpu(), &GpuDefaults::default()).expect("cpu")), ["cpu"]);
        let none = config(&[]);
        assert_eq!(ids(&placements(&none, &no_gpu(), &GpuDefaults::default()).expect("cpu")), ["cpu"]);
        let cpu = config(&[(InstanceKind::Cpu, 3, &[]), (InstanceKind::Model, 1, &[])]);
        assert_eq!(ids(&placements(&cpu, &two_gpus(), &GpuDefaults::default()).expect("cpu")), ["cpu"; 4]);
    }

    #[test]
    fn a_gpu_group_that_cannot_be_placed_says_why_or_falls_back_when_allowed() {
        let gpu = config(&[(InstanceKind::Gpu, 2, &[])]);
        let err = placements(&gpu, &no_gpu(), &GpuDefaults::default()).expect_err("no gpu");
        let text = err.to_string();
        assert!(text.contains("KIND_GPU cannot be placed: no GPU found (NVML"), "{text}");
        assert!(text.contains(ALLOW_CPU_FALLBACK_PARAMETER), "{text}");

        let missing = config(&[(InstanceKind::Gpu, 1, &[3])]);
        let err = placements(&missing, &two_gpus(), &GpuDefaults::default()).expect_err("gpu 3");
        assert!(err.to_string().contains("gpu 3: no GPU 3"), "{err}");

        let broken = FakeGpuEngine { gpus: Ok(vec![0, 1]), broken: vec![1] };
        let err = placements(&gpu, &broken, &GpuDefaults::default()).expect_err("broken gpu 1");
        assert!(err.to_string().contains("gpu 1: libcudnn.so.9 is missing"), "{err}");

        let mut allowed = gpu.clone();
        allowed.parameters.insert(ALLOW_CPU_FALLBACK_PARAMETER.to_string(), "true".to_string());
        assert_eq!(
            ids(&placements(&allowed, &no_gpu(), &GpuDefaults::default()).expect("fallback")),
            ["cpu", "cpu"]
        );
        allowed.parameters.insert(ALLOW_CPU_FALLBACK_PARAMETER.to_string(), "sometimes".to_string());
        let err = placements(&allowed, &no_gpu(), &GpuDefaults::default()).expect_err("bad parameter");
        assert!(err.to_string().contains("'sometimes' must be true"), "{err}");
    }
}
