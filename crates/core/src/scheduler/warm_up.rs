//! Warm-up at load: runs batches of zeros through an instance to seed the latency profile.

use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::pool::infer_caught;
use crate::{EngineError, ModelConfig, ModelInstance, NamedTensor, Tensor, TensorData};

/// The batch sizes a warm-up measures: powers of two below `max_batch_size`, the maximum itself
/// and the preferred sizes; just 1 for a model that does not batch.
pub fn warm_up_sizes(config: &ModelConfig) -> Vec<usize> {
    let max = config.max_batch_size as usize;
    if max == 0 {
        return vec![1];
    }
    let mut sizes: Vec<usize> =
        std::iter::successors(Some(1usize), |s| s.checked_mul(2)).take_while(|&s| s < max).collect();
    sizes.push(max);
    if let Some(batching) = &config.dynamic_batching {
        sizes.extend(
            batching.preferred_batch_size.iter().map(|&s| s as usize).filter(|&s| s >= 1 && s <= max),
        );
    }
    sizes.sort_unstable();
    sizes.dedup();
    sizes
}

/// Inputs of zeros (empty strings for BYTES) with `rows` rows, shaped by the config's specs;
/// dynamic dimensions become 1. For a model that does not batch, `rows` is ignored.
pub fn zero_inputs(config: &ModelConfig, rows: usize) -> Result<Vec<NamedTensor>, EngineError> {
    config
        .inputs
        .iter()
        .map(|spec| {
            let dims = spec.dims.iter().map(|&d| usize::try_from(d).ok().filter(|&d| d > 0).unwrap_or(1));
            let shape: Vec<usize> = if config.max_batch_size > 0 {
                std::iter::once(rows).chain(dims).collect()
            } else {
                dims.collect()
            };
            let count: usize = shape.iter().product();
            let data = match spec.data_type.size() {
                Some(size) => TensorData::Raw(Bytes::from(vec![0u8; count * size])),
                None => TensorData::Strings(vec![Bytes::new(); count]),
            };
            let tensor =
                Tensor::new(spec.data_type, shape, data).map_err(|e| EngineError::new(e.to_string()))?;
            Ok(NamedTensor { name: spec.name.clone(), tensor })
        })
        .collect()
}

/// One untimed run at the largest warm-up size, so that an instance's first request does not
/// pay for its first allocations. Blocking: it runs the model.
pub fn prime(instance: &mut dyn ModelInstance, config: &ModelConfig) -> Result<(), EngineError> {
    let name = format!("{}#warm-up", config.name);
    let outputs: Vec<String> = config.outputs.iter().map(|o| o.name.clone()).collect();
    let largest = warm_up_sizes(config).last().copied().unwrap_or(1);
    infer_caught(&name, instance, &zero_inputs(config, largest)?, &outputs).map(drop)
}

/// Times `rounds` runs of each warm-up size on `instance`, after one untimed run at the
/// largest size ([`prime`]). Blocking: it runs the model.
pub fn warm_up(
    instance: &mut dyn ModelInstance,
    config: &ModelConfig,
    rounds: usize,
) -> Result<Vec<(usize, Duration)>, EngineError> {
    prime(instance, config)?;
    let name = format!("{}#warm-up", config.name);
    let outputs: Vec<String> = config.outputs.iter().map(|o| o.name.clone()).collect();
    let sizes = warm_up_sizes(config);
    let mut samples = Vec::with_capacity(sizes.len() * rounds);
    for rows in sizes {
        let inputs = zero_inputs(config, rows)?;
        for _ in 0..rounds {
            samples.push((rows, timed_run(&name, instance, &inputs, &outputs)?));
        }
    }
    Ok(samples)
}

/// The median time of `rounds` runs of one row on `instance`, after one untimed run: what the
/// model costs at its cheapest, to choose its threads from. Blocking: it runs the model.
pub fn one_row_time(
    instance: &mut dyn ModelInstance,
    config: &ModelConfig,
    rounds: usize,
) -> Result<Duration, EngineError> {
    let name = format!("{}#timing", config.name);
    let outputs: Vec<String> = config.outputs.iter().map(|o| o.name.clone()).collect();
    let inputs = zero_inputs(config, 1)?;
    infer_caught(&name, instance, &inputs, &outputs)?;
    let mut times = Vec::with_capacity(rounds.max(1));
    for _ in 0..rounds.max(1) {
        times.push(timed_run(&name, instance, &inputs, &outputs)?);
    }
    times.sort_unstable();
    Ok(times[times.len() / 2])
}

fn timed_run(
    name: &str,
    instance: &mut dyn ModelInstance,
    inputs: &[NamedTensor],
    outputs: &[String],
) -> Result<Duration, EngineError> {
    let start = Instant::now();
    infer_caught(name, instance, inputs, outputs)?;
    Ok(start.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DataType, DynamicBatching, TensorSpec};

    fn config(max_batch_size: u32) -> ModelConfig {
        ModelConfig {
            name: "m".into(),
            max_batch_size,
            inputs: vec![
                TensorSpec { name: "x".into(), data_type: DataType::Fp32, dims: vec![3, -1] },
                TensorSpec { name: "s".into(), data_type: DataType::Bytes, dims: vec![2] },
            ],
            dynamic_batching: Some(DynamicBatching {
                preferred_batch_size: vec![6],
                ..DynamicBatching::default()
            }),
            ..ModelConfig::default()
        }
    }

    #[test]
    fn sizes_cover_powers_of_two_the_maximum_and_preferred() {
        assert_eq!(warm_up_sizes(&config(10)), vec![1, 2, 4, 6, 8, 10]);
        assert_eq!(warm_up_sizes(&config(1)), vec![1]);
        assert_eq!(warm_up_sizes(&config(0)), vec![1]);
    }

    /// Records the rows of each call; answers with no outputs.
    struct Rows(Vec<usize>);

    impl ModelInstance for Rows {
        fn infer(&mut self, inputs: &[NamedTensor], _: &[String]) -> Result<Vec<NamedTensor>, EngineError> {
            self.0.push(inputs[0].tensor.shape()[0]);
            Ok(Vec::new())
        }
    }

    #[test]
    fn warm_up_primes_at_the_largest_size_then_times_every_size() {
        let mut instance = Rows(Vec::new());
        let samples = warm_up(&mut instance, &config(4), 2).expect("runs");
        assert_eq!(instance.0, vec![4, 1, 1, 2, 2, 4, 4]);
        assert_eq!(samples.iter().map(|(rows, _)| *rows).collect::<Vec<_>>(), vec![1, 1, 2, 2, 4, 4]);
        let mut other = Rows(Vec::new());
        prime(&mut other, &config(4)).expect("runs");
        assert_eq!(other.0, vec![4]);
    }

    #[test]
    fn one_row_time_runs_one_row_once_untimed_then_the_rounds() {
        let mut instance = Rows(Vec::new());
        one_row_time(&mut instance, &config(8), 5).expect("runs");
        assert_eq!(instance.0, vec![1; 6]);
    }

    #[test]
    fn zero_inputs_follow_the_specs() {
        let inputs = zero_inputs(&config(8), 4).expect("valid");
        assert_eq!(inputs[0].tensor.shape(), &[4, 3, 1]);
        assert_eq!(inputs[0].tensor.to_f32(), Some(vec![0.0; 12]));
        assert_eq!(inputs[1].tensor.shape(), &[4, 2]);
        assert_eq!(inputs[1].tensor.data(), &TensorData::Strings(vec![Bytes::new(); 8]));
        assert_eq!(zero_inputs(&config(0), 4).expect("valid")[0].tensor.shape(), &[3, 1]);
    }
}
