//! How a GPU instance moves a batch: each input is decoded from the requests' bytes straight into
//! pinned (page-locked) host memory that the CUDA provider allocates, bound to the session with an
//! I/O binding and copied to the device once; each output is bound to pinned host memory too, so
//! it comes back once, and the reply lends it as it is. A fresh binding per run: a reused one
//! would write the next batch's outputs into buffers a reply may still be sending.

use std::fmt::Debug;

use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
use ort::session::Session;
use ort::value::{DynValue, PrimitiveTensorElementType, Tensor as OrtTensor};
use rtserve_core::wire::Element;
use rtserve_core::{BatchInput, DataType, EngineError};

use super::convert::{ort_error, strings_input};

/// The host memory a GPU instance stages its batches in.
pub(crate) struct Staging {
    allocator: Allocator,
}

impl Staging {
    /// Pinned host memory from the CUDA provider of `session`.
    pub(crate) fn pinned(session: &Session) -> Result<Staging, EngineError> {
        let memory =
            MemoryInfo::new(AllocationDevice::CUDA_PINNED, 0, AllocatorType::Device, MemoryType::CPUInput)
                .map_err(ort_error)?;
        let allocator = Allocator::new(session, memory).map_err(|e| {
            EngineError::new(format!("onnxruntime: no pinned host memory from the CUDA provider: {e}"))
        })?;
        Ok(Staging { allocator })
    }

    /// Ordinary host memory: the same path on a CPU session, which is how it is tested here.
    #[cfg(test)]
    pub(crate) fn host(session: &Session) -> Result<Staging, EngineError> {
        let memory = MemoryInfo::new(AllocationDevice::CPU, 0, AllocatorType::Device, MemoryType::Default)
            .map_err(ort_error)?;
        Ok(Staging { allocator: Allocator::new(session, memory).map_err(ort_error)? })
    }

    /// Runs `session` on `inputs`, computing the outputs named in `outputs` (in the model's
    /// order), and returns them by name.
    pub(crate) fn run(
        &self,
        session: &mut Session,
        inputs: &[BatchInput<'_>],
        outputs: &[String],
    ) -> Result<Vec<(String, DynValue)>, EngineError> {
        let mut binding = session.create_binding().map_err(ort_error)?;
        for input in inputs {
            let value =
                self.stage(input).map_err(|e| EngineError::new(format!("input '{}': {e}", input.name)))?;
            binding.bind_input(input.name, &value).map_err(ort_error)?;
        }
        for name in outputs {
            binding.bind_output_to_device(name.as_str(), self.allocator.memory_info()).map_err(ort_error)?;
        }
        let mut results = session.run_binding(&binding).map_err(ort_error)?;
        outputs
            .iter()
            .map(|name| {
                let value = results
                    .remove(name)
                    .ok_or_else(|| EngineError::new(format!("onnxruntime returned no output '{name}'")))?;
                Ok((name.clone(), value))
            })
            .collect()
    }

    /// One input in staging memory: its parts decoded into the tensor in place (BYTES, which the
    /// providers take from ordinary memory, as on the CPU path).
    fn stage(&self, input: &BatchInput<'_>) -> Result<DynValue, EngineError> {
        let shape = input.shape().to_vec();
        match input.datatype() {
            DataType::Bool => self.decode_into::<bool>(shape, input),
            DataType::Uint8 => self.decode_into::<u8>(shape, input),
            DataType::Uint16 => self.decode_into::<u16>(shape, input),
            DataType::Uint32 => self.decode_into::<u32>(shape, input),
            DataType::Uint64 => self.decode_into::<u64>(shape, input),
            DataType::Int8 => self.decode_into::<i8>(shape, input),
            DataType::Int16 => self.decode_into::<i16>(shape, input),
            DataType::Int32 => self.decode_into::<i32>(shape, input),
            DataType::Int64 => self.decode_into::<i64>(shape, input),
            DataType::Fp16 => self.decode_into::<half::f16>(shape, input),
            DataType::Fp32 => self.decode_into::<f32>(shape, input),
            DataType::Fp64 => self.decode_into::<f64>(shape, input),
            DataType::Bytes => strings_input(shape, input),
        }
    }

    fn decode_into<T: Element + PrimitiveTensorElementType + Debug>(
        &self,
        shape: Vec<usize>,
        input: &BatchInput<'_>,
    ) -> Result<DynValue, EngineError> {
        let mut tensor = OrtTensor::<T>::new(&self.allocator, shape).map_err(ort_error)?;
        let (_, slots) = tensor.try_extract_tensor_mut().map_err(ort_error)?;
        let mut written = 0;
        let mut slots = slots.iter_mut();
        for raw in input.raw_parts() {
            // The decoder first: `zip` takes from its first iterator first, so no slot is skipped
            // when a part ends.
            for (value, slot) in T::decode_iter(raw).zip(slots.by_ref()) {
                *slot = value;
                written += 1;
            }
        }
        if slots.next().is_some() || written * T::SIZE != input.raw_parts().map(<[u8]>::len).sum::<usize>() {
            return Err(EngineError::new(format!(
                "{} elements for the shape {:?}",
                input.raw_parts().map(<[u8]>::len).sum::<usize>() / T::SIZE,
                input.shape()
            )));
        }
        Ok(tensor.into_dyn())
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use ort::session::builder::GraphOptimizationLevel;
    use rtserve_core::{batch_inputs, ModelInstance, NamedTensor, Tensor, TensorData};

    use super::super::instance::OrtInstance;
    use super::super::runtime::{runtime, TEST_LOCK};
    use super::super::source::Source;
    use super::super::{session, SessionSettings};
    use super::*;

    fn example(model: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join(format!("../../examples/model_repository/{model}/1/model.onnx"))
    }

    /// A request of `rows` rows for every input of `session`, elements varying with `seed`.
    fn request(session: &Session, rows: usize, seed: usize) -> Vec<NamedTensor> {
        session
            .inputs()
            .iter()
            .map(|input| {
                let ort::value::ValueType::Tensor { ty, shape, .. } = input.dtype() else {
                    panic!("a tensor input")
                };
                let dims: Vec<usize> = shape
                    .iter()
                    .enumerate()
                    .map(|(i, &d)| if i == 0 { rows } else { d.max(1) as usize })
                    .collect();
                let count: usize = dims.iter().product();
                let datatype = super::super::convert::data_type(*ty).expect("a supported type");
                let values = (0..count).map(|i| ((i * 7 + seed * 3) % 11) as f64 / 4.0 - 1.0);
                let bytes: Vec<u8> = match datatype {
                    DataType::Fp32 => values.flat_map(|v| (v as f32).to_le_bytes()).collect(),
                    DataType::Int64 => values.flat_map(|v| ((v * 4.0) as i64).to_le_bytes()).collect(),
                    DataType::Bool => values.map(|v| u8::from(v > 0.0)).collect(),
                    other => panic!("no test data for {other:?}"),
                };
                let tensor = Tensor::new(datatype, dims, TensorData::Raw(bytes.into())).expect("tensor");
                NamedTensor { name: input.name().to_string(), tensor }
            })
            .collect()
    }

    /// The staged path (I/O binding, outputs bound to host memory, inputs decoded into the
    /// allocator's tensors) gives the plain path's answers bit for bit, for a batch of two
    /// requests and for a subset of the outputs. On a GPU the memory is pinned; the code is this.
    #[test]
    fn staged_runs_answer_as_plain_ones() {
        let _only = TEST_LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Ok(runtime) = runtime(None) else {
            eprintln!("skipping: no ONNX Runtime library here");
            return;
        };
        let settings = SessionSettings {
            optimization: GraphOptimizationLevel::All,
            intra_threads: 1,
            spinning: false,
            gpu: None,
        };
        for model in ["mlp", "two_io", "int_bool", "cnn"] {
            let source = Source::File(example(model));
            let mut plain = OrtInstance::new(session(runtime, &source, &settings).expect("session"));
            let staged_session = session(runtime, &source, &settings).expect("session");
            let staging = Staging::host(&staged_session).expect("host staging");
            let mut staged = OrtInstance::new(staged_session).with_staging(staging);

            let first = request(plain.session(), 2, 1);
            let second = request(plain.session(), 3, 2);
            let batch = batch_inputs(&[&first, &second]).expect("batch");
            let names: Vec<String> = plain.session().outputs().iter().map(|o| o.name().to_string()).collect();
            for outputs in [vec![], vec![names[names.len() - 1].clone()]] {
                let want = plain.infer_batch(&batch, &outputs).expect("plain run");
                let got = staged.infer_batch(&batch, &outputs).expect("staged run");
                assert_eq!(want.len(), got.len(), "{model}");
                for (w, g) in want.iter().zip(&got) {
                    assert_eq!((&w.name, w.tensor.shape()), (&g.name, g.tensor.shape()), "{model}");
                    assert_eq!(w.tensor.raw(), g.tensor.raw(), "{model} output {}", w.name);
                }
            }
            let err = staged.infer_batch(&batch, &["nope".to_string()]).expect_err("an unknown output");
            assert!(err.to_string().contains("the model has no output 'nope'"), "{err}");
        }
    }
}
