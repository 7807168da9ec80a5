//! GPU metrics under Triton's names (`nv_gpu_*`, `nv_energy_consumption`, each labelled
//! `gpu_uuid`), read from NVML when `/metrics` is scraped. NVML (`libnvidia-ml.so.1`) is loaded
//! at run time: on a host without the NVIDIA driver the server starts all the same, says once
//! why it has no GPU metrics, and exports none.
//!
//! The readings come through [`GpuSource`], in NVML's units; [`GpuCollector`] converts them to
//! Triton's (utilization as a ratio, watts, joules), so a fake source can test the exposition.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use nvml_wrapper::error::NvmlError;
use nvml_wrapper::Nvml;
use prometheus::core::{Collector, Desc};
use prometheus::proto::{MetricFamily, MetricType};

use crate::scrape::Family;

/// One GPU's readings in NVML's units; a field is `None` where its read failed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GpuSample {
    /// NVML's UUID (`GPU-…`), the `gpu_uuid` label.
    pub uuid: String,
    /// Percent of the last sample period in which a kernel ran.
    pub utilization_percent: Option<u32>,
    pub memory_total_bytes: Option<u64>,
    pub memory_used_bytes: Option<u64>,
    pub power_usage_milliwatts: Option<u32>,
    /// The power management limit.
    pub power_limit_milliwatts: Option<u32>,
    /// Energy since the driver loaded.
    pub energy_millijoules: Option<u64>,
}

/// Where GPU readings come from.
pub trait GpuSource: Send + Sync {
    /// The GPUs that answered, each with the fields it could read.
    fn devices(&self) -> Vec<GpuSample>;
}

/// The GPUs NVML sees.
pub struct NvmlSource {
    nvml: Nvml,
}

impl NvmlSource {
    /// Loads NVML and initialises it; fails without the library or the driver.
    pub fn init() -> Result<NvmlSource, NvmlError> {
        Ok(NvmlSource { nvml: Nvml::init()? })
    }
}

/// A reading, or `None` with a debug line saying which one failed and why.
fn reading<T>(gpu: &str, field: &str, result: Result<T, NvmlError>) -> Option<T> {
    result.map_err(|e| tracing::debug!(gpu, field, error = %e, "GPU reading left out of the metrics")).ok()
}

impl GpuSource for NvmlSource {
    fn devices(&self) -> Vec<GpuSample> {
        let Some(count) = reading("all", "device count", self.nvml.device_count()) else {
            return Vec::new();
        };
        (0..count)
            .filter_map(|index| {
                let index_name = index.to_string();
                let device = reading(&index_name, "device", self.nvml.device_by_index(index))?;
                let uuid = reading(&index_name, "uuid", device.uuid())?;
                let memory = reading(&uuid, "memory", device.memory_info());
                Some(GpuSample {
                    utilization_percent: reading(&uuid, "utilization", device.utilization_rates())
                        .map(|u| u.gpu),
                    memory_total_bytes: memory.as_ref().map(|m| m.total),
                    memory_used_bytes: memory.as_ref().map(|m| m.used),
                    power_usage_milliwatts: reading(&uuid, "power usage", device.power_usage()),
                    power_limit_milliwatts: reading(&uuid, "power limit", device.power_management_limit()),
                    energy_millijoules: reading(&uuid, "energy", device.total_energy_consumption()),
                    uuid,
                })
            })
            .collect()
    }
}

/// The `nv_*` families, read from a [`GpuSource`] at each scrape.
pub struct GpuCollector {
    source: Box<dyn GpuSource>,
    /// Each GPU's energy reading when first seen (at start for those that answered then):
    /// `nv_energy_consumption` counts from it, as Triton counts since the server started.
    energy_at_start: Mutex<HashMap<String, u64>>,
}

impl GpuCollector {
    /// A collector over `source`, taking each GPU's energy reading now as its zero.
    pub fn new(source: Box<dyn GpuSource>) -> GpuCollector {
        let collector = GpuCollector { source, energy_at_start: Mutex::new(HashMap::new()) };
        for gpu in collector.source.devices() {
            if let Some(energy) = gpu.energy_millijoules {
                collector.energy_since_start_joules(&gpu.uuid, energy);
            }
        }
        collector
    }

    /// A collector over NVML, or `None` (with one info line saying why) where NVML does not load.
    pub fn from_nvml() -> Option<GpuCollector> {
        match NvmlSource::init() {
            Ok(source) => {
                let gpus = source.devices().len();
                tracing::info!("GPU metrics (nv_gpu_*) from NVML: {gpus} GPU(s)");
                Some(GpuCollector::new(Box::new(source)))
            }
            Err(e) => {
                tracing::info!("no GPU metrics: NVML did not load ({e})");
                None
            }
        }
    }

    fn energy_since_start_joules(&self, uuid: &str, millijoules: u64) -> f64 {
        let mut start = self.energy_at_start.lock().unwrap_or_else(PoisonError::into_inner);
        let zero = start.entry(uuid.to_string()).or_insert(millijoules);
        if millijoules < *zero {
            // The driver reloaded and its counter started again: count from there (Prometheus
            // reads the drop as a counter reset).
            *zero = 0;
        }
        (millijoules - *zero) as f64 / 1000.0
    }
}

impl Collector for GpuCollector {
    fn desc(&self) -> Vec<&Desc> {
        Vec::new()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        use MetricType::{COUNTER, GAUGE};
        let mut utilization = Family::new("nv_gpu_utilization", "GPU utilization rate [0.0 - 1.0)", GAUGE);
        let mut memory_total = Family::new("nv_gpu_memory_total_bytes", "GPU total memory, in bytes", GAUGE);
        let mut memory_used = Family::new("nv_gpu_memory_used_bytes", "GPU used memory, in bytes", GAUGE);
        let mut power_usage = Family::new("nv_gpu_power_usage", "GPU power usage in watts", GAUGE);
        let mut power_limit = Family::new("nv_gpu_power_limit", "GPU power management limit in watts", GAUGE);
        let mut energy = Family::new(
            "nv_energy_consumption",
            "GPU energy consumption in joules since the server started",
            COUNTER,
        );
        for gpu in self.source.devices() {
            let labels = [("gpu_uuid", gpu.uuid.as_str())];
            if let Some(percent) = gpu.utilization_percent {
                utilization.sample(&labels, f64::from(percent) / 100.0);
            }
            if let Some(bytes) = gpu.memory_total_bytes {
                memory_total.sample(&labels, bytes as f64);
            }
            if let Some(bytes) = gpu.memory_used_bytes {
                memory_used.sample(&labels, bytes as f64);
            }
            if let Some(milliwatts) = gpu.power_usage_milliwatts {
                power_usage.sample(&labels, f64::from(milliwatts) / 1000.0);
            }
            if let Some(milliwatts) = gpu.power_limit_milliwatts {
                power_limit.sample(&labels, f64::from(milliwatts) / 1000.0);
            }
            if let Some(millijoules) = gpu.energy_millijoules {
                energy.sample(&labels, self.energy_since_start_joules(&gpu.uuid, millijoules));
            }
        }
        // Families without samples are left out by `Registry::gather`.
        [utilization, memory_total, memory_used, power_usage, power_limit, energy]
            .into_iter()
            .map(|f| f.family)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use prometheus::{Encoder, Registry, TextEncoder};

    use super::*;

    /// Hands out one prepared scrape per call, then repeats the last.
    struct FakeGpus {
        scrapes: Mutex<VecDeque<Vec<GpuSample>>>,
    }

    impl FakeGpus {
        fn new(scrapes: Vec<Vec<GpuSample>>) -> Box<FakeGpus> {
            Box::new(FakeGpus { scrapes: Mutex::new(scrapes.into()) })
        }
    }

    impl GpuSource for FakeGpus {
        fn devices(&self) -> Vec<GpuSample> {
            let mut scrapes = self.scrapes.lock().expect("lock");
            if scrapes.len() > 1 {
                scrapes.pop_front().expect("a scrape")
            } else {
                scrapes.front().cloned().unwrap_or_default()
            }
        }
    }

    fn gpu(uuid: &str, energy_millijoules: u64) -> GpuSample {
        GpuSample {
            uuid: uuid.to_string(),
            utilization_percent: Some(37),
            memory_total_bytes: Some(85_899_345_920),
            memory_used_bytes: Some(1_073_741_824),
            power_usage_milliwatts: Some(71_500),
            power_limit_milliwatts: Some(700_000),
            energy_millijoules: Some(energy_millijoules),
        }
    }

    fn render(registry: &Registry) -> String {
        let mut text = Vec::new();
        TextEncoder::new().encode(&registry.gather(), &mut text).expect("encode");
        String::from_utf8(text).expect("UTF-8")
    }

    fn registry(collector: GpuCollector) -> Registry {
        let registry = Registry::new();
        registry.register(Box::new(collector)).expect("register");
        registry
    }

    #[test]
    fn exposes_triton_names_and_units() {
        // The first reading is taken at start: energy counts from it.
        let source = FakeGpus::new(vec![vec![gpu("GPU-a", 1_000_000)], vec![gpu("GPU-a", 1_250_500)]]);
        let text = render(&registry(GpuCollector::new(source)));
        let expected = "\
# HELP nv_energy_consumption GPU energy consumption in joules since the server started
# TYPE nv_energy_consumption counter
nv_energy_consumption{gpu_uuid=\"GPU-a\"} 250.5
# HELP nv_gpu_memory_total_bytes GPU total memory, in bytes
# TYPE nv_gpu_memory_total_bytes gauge
nv_gpu_memory_total_bytes{gpu_uuid=\"GPU-a\"} 85899345920
# HELP nv_gpu_memory_used_bytes GPU used memory, in bytes
# TYPE nv_gpu_memory_used_bytes gauge
nv_gpu_memory_used_bytes{gpu_uuid=\"GPU-a\"} 1073741824
# HELP nv_gpu_power_limit GPU power management limit in watts
# TYPE nv_gpu_power_limit gauge
nv_gpu_power_limit{gpu_uuid=\"GPU-a\"} 700
# HELP nv_gpu_power_usage GPU power usage in watts
# TYPE nv_gpu_power_usage gauge
nv_gpu_power_usage{gpu_uuid=\"GPU-a\"} 71.5
# HELP nv_gpu_utilization GPU utilization rate [0.0 - 1.0)
# TYPE nv_gpu_utilization gauge
nv_gpu_utilization{gpu_uuid=\"GPU-a\"} 0.37
";
        assert_eq!(text, expected);
    }

    #[test]
    fn a_failed_reading_leaves_out_that_series_only() {
        let mut partial = gpu("GPU-b", 5_000);
        partial.utilization_percent = None;
        partial.power_usage_milliwatts = None;
        let source = FakeGpus::new(vec![vec![gpu("GPU-a", 0), partial]]);
        let text = render(&registry(GpuCollector::new(source)));
        let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        for family in ["nv_gpu_memory_total_bytes", "nv_gpu_memory_used_bytes", "nv_gpu_power_limit"] {
            for uuid in ["GPU-a", "GPU-b"] {
                let series = format!("{family}{{gpu_uuid=\"{uuid}\"}} ");
                assert!(lines.iter().any(|l| l.starts_with(&series)), "no {series} in:\n{text}");
            }
        }
        for family in ["nv_gpu_utilization", "nv_gpu_power_usage"] {
            let series: Vec<&str> = lines.iter().copied().filter(|l| l.starts_with(family)).collect();
            assert_eq!(series.len(), 1, "{family}: {series:?}");
            assert!(series[0].starts_with(&format!("{family}{{gpu_uuid=\"GPU-a\"}} ")), "{series:?}");
        }
        assert!(lines.contains(&"nv_energy_consumption{gpu_uuid=\"GPU-b\"} 0"), "{text}");
    }

    #[test]
    fn no_gpus_no_series() {
        let text = render(&registry(GpuCollector::new(FakeGpus::new(vec![Vec::new()]))));
        assert_eq!(text, "");
    }

    #[test]
    fn energy_counts_from_the_first_reading_and_again_after_a_driver_reload() {
        // Start: GPU-a only. GPU-b first answers at the first scrape; GPU-a's counter restarts
        // (driver reload) at the second.
        let source = FakeGpus::new(vec![
            vec![gpu("GPU-a", 10_000)],
            vec![gpu("GPU-a", 12_000), gpu("GPU-b", 900_000)],
            vec![gpu("GPU-a", 3_000), gpu("GPU-b", 901_500)],
        ]);
        let registry = registry(GpuCollector::new(source));
        let energy = |text: &str, uuid: &str| -> String {
            let series = format!("nv_energy_consumption{{gpu_uuid=\"{uuid}\"}} ");
            let line = text.lines().find(|l| l.starts_with(&series));
            line.unwrap_or_else(|| panic!("no {series} in:\n{text}"))[series.len()..].to_string()
        };
        let first = render(&registry);
        assert_eq!((energy(&first, "GPU-a").as_str(), energy(&first, "GPU-b").as_str()), ("2", "0"));
        let second = render(&registry);
        assert_eq!((energy(&second, "GPU-a").as_str(), energy(&second, "GPU-b").as_str()), ("3", "1.5"));
    }
}
