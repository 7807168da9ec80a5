//! Fake quantization for quantization-aware training: a [`Tap`] that replaces chosen tensors by
//! what QuantizeLinear → DequantizeLinear would make of them (per-channel symmetric int8
//! weights, asymmetric 8-bit activations over a range), with a straight-through estimator for
//! the gradients: 1 inside the range, 0 where a value is clipped, and the clipped values'
//! gradient to a learned range bound (as PACT learns its clipping level).

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};

use super::graph::Tap;
use super::kernels::{fake_quantize, Quantizer};
use crate::calibrate::Range;
use crate::error::Result;
use crate::quantize_math::{activation_params, ActivationType};

/// One end of an activation range.
#[derive(Debug, Clone)]
pub enum Bound {
    Fixed(f32),
    /// A scalar variable trained with the weights.
    Learned(Var),
}

impl Bound {
    fn value(&self) -> Result<f32> {
        match self {
            Bound::Fixed(v) => Ok(*v),
            Bound::Learned(var) => Ok(var.as_tensor().to_dtype(DType::F32)?.to_scalar::<f32>()?),
        }
    }

    fn tensor(&self, dtype: DType) -> Result<Tensor> {
        match self {
            Bound::Fixed(v) => Ok(Tensor::new(*v, &Device::Cpu)?.to_dtype(dtype)?),
            Bound::Learned(var) => Ok(var.as_tensor().to_dtype(dtype)?),
        }
    }
}

/// The range an activation is quantized over.
#[derive(Debug, Clone)]
pub struct ActivationRange {
    pub min: Bound,
    pub max: Bound,
}

impl ActivationRange {
    /// The range's current values (widened to hold 0 when the quantization parameters are
    /// derived from it).
    pub fn current(&self) -> Result<Range> {
        Ok(Range { min: self.min.value()?, max: self.max.value()? })
    }
}

/// The tensors to fake-quantize and how.
#[derive(Debug)]
pub struct FakeQuant {
    activation_type: ActivationType,
    weight_qmax: i32,
    ranges: Vec<ActivationRange>,
    activations: HashMap<String, usize>,
    weights: HashMap<String, Option<usize>>,
}

impl FakeQuant {
    /// Activations of `activation_type`; weights symmetric in ±`weight_qmax` (127, or 63 with
    /// reduced range).
    pub fn new(activation_type: ActivationType, weight_qmax: i32) -> FakeQuant {
        FakeQuant {
            activation_type,
            weight_qmax,
            ranges: Vec::new(),
            activations: HashMap::new(),
            weights: HashMap::new(),
        }
    }

    /// Quantizes the activation `tensor` over `range`.
    pub fn add_activation(&mut self, tensor: &str, range: ActivationRange) {
        self.activations.insert(tensor.to_string(), self.ranges.len());
        self.ranges.push(range);
    }

    /// Quantizes `tensor` over the range of `like` (added before), as MaxPool's output shares
    /// its input's.
    pub fn share_range(&mut self, tensor: &str, like: &str) {
        if let Some(&i) = self.activations.get(like) {
            self.activations.insert(tensor.to_string(), i);
        }
    }

    /// Quantizes the weight `name` with one scale per slice along `axis` (`None`: one scale).
    pub fn add_weight(&mut self, name: &str, axis: Option<usize>) {
        self.weights.insert(name.to_string(), axis);
    }

    /// Every activation's current range, by tensor name.
    pub fn ranges(&self) -> Result<HashMap<String, Range>> {
        self.activations.iter().map(|(name, &i)| Ok((name.clone(), self.ranges[i].current()?))).collect()
    }
}

impl Tap for FakeQuant {
    fn value(&self, name: &str, value: Tensor) -> Result<Tensor> {
        if let Some(&i) = self.activations.get(name) {
            return fake_quantize_activation(&value, &self.ranges[i], self.activation_type);
        }
        if let Some(&axis) = self.weights.get(name) {
            return fake_quantize_weight(&value, axis, self.weight_qmax);
        }
        Ok(value)
    }
}

/// `x` through QuantizeLinear → DequantizeLinear over `range`; gradients straight through
/// inside the range, to the learned bounds from the values clipped at them.
pub fn fake_quantize_activation(x: &Tensor, range: &ActivationRange, kind: ActivationType) -> Result<Tensor> {
    let Range { min, max } = range.current()?;
    let (scale, zero_point) = activation_params(min, max, kind);
    let (qmin, qmax) = match kind {
        ActivationType::Uint8 => (0, 255),
        ActivationType::Int8 => (-128, 127),
    };
    // For the gradients the range is clipped at the bounds themselves (the interval the
    // integers represent differs from it by less than a step, where the zero point rounds).
    let quantizer = Quantizer { scale, zero_point, qmin, qmax, low: min.min(0.0), high: max.max(0.0) };
    let (low, high) = (range.min.tensor(x.dtype())?, range.max.tensor(x.dtype())?);
    Ok(fake_quantize(x, &low, &high, quantizer)?)
}

/// `w` through symmetric int8 quantization with one scale (`max |w| / qmax`) per slice along
/// `axis`, as `quantize` stores weights; the gradient passes straight through.
pub fn fake_quantize_weight(w: &Tensor, axis: Option<usize>, qmax: i32) -> Result<Tensor> {
    let dims = w.dims().to_vec();
    let (outer, channels, inner) = match axis {
        Some(a) if a < dims.len() => {
            (dims[..a].iter().product::<usize>(), dims[a], dims[a + 1..].iter().product::<usize>())
        }
        _ => (1, 1, w.elem_count()),
    };
    let slices = w.detach().reshape((outer, channels, inner))?;
    let max_abs = slices.abs()?.max_keepdim(2)?.max_keepdim(0)?.flatten_all()?.to_dtype(DType::F32)?;
    let scales: Vec<f32> =
        max_abs.to_vec1::<f32>()?.iter().map(|m| if *m > 0.0 { m / qmax as f32 } else { 1.0 }).collect();
    let scales = Tensor::from_vec(scales, (1, channels, 1), w.device())?.to_dtype(w.dtype())?;
    let q = slices.broadcast_div(&scales)?.round()?.clamp(-qmax as f64, qmax as f64)?;
    let values = q.broadcast_mul(&scales)?.reshape(dims)?;
    Ok((w + (values - w.detach())?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quantize_math::{quantize, quantize_weights};

    fn learned(v: f32) -> Bound {
        Bound::Learned(Var::new(v, &Device::Cpu).expect("var"))
    }

    #[test]
    fn activations_take_the_values_quantize_then_dequantize_gives() {
        let xs: Vec<f32> = (0..200).map(|i| i as f32 * 0.037 - 2.5).collect();
        let x = Tensor::from_vec(xs.clone(), (2, 100), &Device::Cpu).expect("x");
        let range = ActivationRange { min: Bound::Fixed(-1.3), max: Bound::Fixed(4.1) };
        for kind in [ActivationType::Uint8, ActivationType::Int8] {
            let (scale, zp) = activation_params(-1.3, 4.1, kind);
            let (lo, hi) = if kind == ActivationType::Uint8 { (0, 255) } else { (-128, 127) };
            let got = fake_quantize_activation(&x, &range, kind).expect("fq").flatten_all().expect("flat");
            let got = got.to_vec1::<f32>().expect("values");
            for (g, v) in got.iter().zip(&xs) {
                let want = (quantize(*v, scale, zp, lo, hi) - zp) as f32 * scale;
                assert_eq!(*g, want, "{v}");
            }
        }
    }

    #[test]
    fn gradients_pass_inside_the_range_and_reach_the_learned_bounds_from_outside() {
        let x = Var::from_vec(vec![-3.0f32, -0.5, 0.5, 2.0, 9.0], 5, &Device::Cpu).expect("x");
        let range = ActivationRange { min: learned(-1.0), max: learned(4.0) };
        let y = fake_quantize_activation(x.as_tensor(), &range, ActivationType::Uint8).expect("fq");
        let grads = y.sum_all().expect("sum").backward().expect("backward");
        let gx = grads.get(x.as_tensor()).expect("dx").to_vec1::<f32>().expect("dx");
        assert_eq!(gx, vec![0.0, 1.0, 1.0, 1.0, 0.0]);
        let bound = |grads: &candle_core::backprop::GradStore, b: &Bound| match b {
            Bound::Learned(v) => grads.get(v.as_tensor()).expect("grad").to_scalar::<f32>().expect("scalar"),
            Bound::Fixed(_) => unreachable!(),
        };
        // One value clipped at each end.
        assert_eq!((bound(&grads, &range.min), bound(&grads, &range.max)), (1.0, 1.0));

        // A lower bound above 0 is widened to 0: the values below 0 are clipped at 0, and the
        // bound, which does not act, gets nothing.
        let range = ActivationRange { min: learned(0.5), max: learned(4.0) };
        let y = fake_quantize_activation(x.as_tensor(), &range, ActivationType::Uint8).expect("fq");
        let grads = y.sum_all().expect("sum").backward().expect("backward");
        let gx = grads.get(x.as_tensor()).expect("dx").to_vec1::<f32>().expect("dx");
        assert_eq!(gx, vec![0.0, 0.0, 1.0, 1.0, 0.0]);
        assert_eq!((bound(&grads, &range.min), bound(&grads, &range.max)), (0.0, 1.0));
    }

    #[test]
    fn weights_take_the_values_quantize_stores() {
        let values: Vec<f32> = (0..24).map(|i| ((i * 7) % 11) as f32 * 0.13 - 0.6).collect();
        let w = Tensor::from_vec(values.clone(), (4, 3, 2), &Device::Cpu).expect("w");
        for (axis, qmax) in [(Some(0), 127), (Some(1), 127), (None, 63)] {
            let q = quantize_weights(&values, &[4, 3, 2], axis, qmax);
            let got = fake_quantize_weight(&w, axis, qmax).expect("fq").flatten_all().expect("flat");
            let got = got.to_vec1::<f32>().expect("values");
            let channel = |i: usize| match axis {
                Some(0) => i / 6,
                Some(_) => (i / 2) % 3,
                None => 0,
            };
            for (i, g) in got.iter().enumerate() {
                let want = q.values[i] as f32 * q.scales[channel(i)];
                assert!((g - want).abs() <= 1e-6, "{axis:?} {i}: {g} vs {want}");
            }
        }
    }
}
