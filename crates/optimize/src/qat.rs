//! Quantization-aware training: the trainer's forward pass fake-quantizes the tensors that
//! static quantization ([`crate::quantize`]) would wrap in Q/DQ pairs, with the same plan, the
//! same per-channel int8 weights and 8-bit activations, ranges started from calibration on the
//! engine; after fine-tuning, the same QDQ writer exports the model with the trained weights and
//! ranges.

use std::sync::Arc;

use rtserve_core::Engine;

use crate::calibrate::calibrate;
use crate::data::Sample;
use crate::error::Result;
use crate::onnx::ModelProto;
use crate::quantize::{plan_static, write_static, QuantizeOptions, QuantizeReport, StaticPlan};
use crate::train::fake_quant::{ActivationRange, Bound, FakeQuant};
use crate::train::TrainGraph;

/// Options of quantization-aware training.
#[derive(Debug, Clone)]
pub struct QatOptions {
    /// What is quantized and how, as for `quantize` (`method` calibrates the starting ranges).
    pub quantize: QuantizeOptions,
    /// Train the activation ranges with the weights (a bound that calibrates to 0 stays there,
    /// so that a folded Relu stays exact).
    pub learn_ranges: bool,
}

/// A graph set up for quantization-aware training.
pub struct Qat {
    plan: StaticPlan,
    fake: Arc<FakeQuant>,
    options: QatOptions,
}

/// Plans quantization of `model` as `quantize` would, calibrates the starting ranges on
/// `samples` with `engine`, and makes every forward pass of `graph` (built from `model`)
/// fake-quantize.
pub fn prepare(
    model: &ModelProto,
    graph: &mut TrainGraph,
    samples: &[Sample],
    engine: &dyn Engine,
    options: &QatOptions,
    progress: &dyn Fn(),
) -> Result<Qat> {
    let q = &options.quantize;
    let plan = plan_static(model, q)?;
    let ranges = calibrate(model, plan.activations(), samples, engine, q.method, progress)?;
    let mut fake = FakeQuant::new(q.activation_type, if q.reduce_range { 63 } else { 127 });
    for tensor in plan.activations() {
        let range = ranges.get(tensor).copied().unwrap_or(crate::calibrate::Range { min: 0.0, max: 0.0 });
        let mut bound = |end: &str, value: f32| -> Result<Bound> {
            if options.learn_ranges && value != 0.0 {
                Ok(Bound::Learned(graph.add_range(&format!("{tensor}::qat_{end}"), value)?))
            } else {
                Ok(Bound::Fixed(value))
            }
        };
        let range = ActivationRange { min: bound("min", range.min)?, max: bound("max", range.max)? };
        fake.add_activation(tensor, range);
    }
    for (output, input) in plan.shared_ranges() {
        fake.share_range(output, input);
    }
    for (weight, axis) in plan.weights() {
        fake.add_weight(weight, *axis);
    }
    let fake = Arc::new(fake);
    graph.set_tap(fake.clone());
    Ok(Qat { plan, fake, options: options.clone() })
}

impl Qat {
    /// The QDQ model of the trained graph: its weights quantized as `quantize` stores them, its
    /// activations over the trained ranges.
    pub fn export(&self, graph: &TrainGraph) -> Result<(ModelProto, QuantizeReport)> {
        write_static(&graph.to_model()?, &self.plan, &self.fake.ranges()?, &self.options.quantize)
    }
}
