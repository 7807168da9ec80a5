//! Quantization arithmetic: scales, zero points, rounding, per-channel weights.

/// The integer type of quantized activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActivationType {
    /// uint8, asymmetric (zero point 0..=255): fast U8S8 kernels on x86.
    Uint8,
    /// int8, asymmetric (zero point -128..=127).
    Int8,
}

/// Scale and zero point of an asymmetric 8-bit activation over `[min, max]` (which holds 0).
pub fn activation_params(min: f32, max: f32, kind: ActivationType) -> (f32, i32) {
    let (min, max) = (min.min(0.0), max.max(0.0));
    let scale = if max > min { (max - min) / 255.0 } else { 1.0 };
    let (qmin, qmax) = match kind {
        ActivationType::Uint8 => (0.0, 255.0),
        ActivationType::Int8 => (-128.0, 127.0),
    };
    let zero_point = (qmin - min / scale).round().clamp(qmin, qmax);
    (scale, zero_point as i32)
}

/// Quantizes one value: `clamp(round(x / scale) + zero_point)`, rounding half to even as
/// QuantizeLinear does.
pub fn quantize(x: f32, scale: f32, zero_point: i32, qmin: i32, qmax: i32) -> i32 {
    let q = (x / scale).round_ties_even() as i64 + zero_point as i64;
    q.clamp(qmin as i64, qmax as i64) as i32
}

/// Symmetric int8 weights, one scale per slice along `axis` (or one for the whole tensor when
/// `axis` is `None`). `qmax` is 127, or 63 with reduced range.
pub struct SymmetricWeights {
    pub values: Vec<i8>,
    pub scales: Vec<f32>,
}

/// Quantizes `values` of shape `dims` symmetrically to int8.
pub fn quantize_weights(values: &[f32], dims: &[i64], axis: Option<usize>, qmax: i32) -> SymmetricWeights {
    let dims: Vec<usize> = dims.iter().map(|&d| d.max(0) as usize).collect();
    let (channels, inner) = match axis {
        Some(a) if a < dims.len() => (dims[a], dims[a + 1..].iter().product::<usize>()),
        _ => (1, values.len()),
    };
    let channel_of = |i: usize| if channels == 1 { 0 } else { (i / inner) % channels };
    let mut max_abs = vec![0f32; channels];
    for (i, v) in values.iter().enumerate() {
        let c = channel_of(i);
        max_abs[c] = max_abs[c].max(v.abs());
    }
    let scales: Vec<f32> = max_abs.iter().map(|m| if *m > 0.0 { m / qmax as f32 } else { 1.0 }).collect();
    let values = values
        .iter()
        .enumerate()
        .map(|(i, v)| quantize(*v, scales[channel_of(i)], 0, -qmax, qmax) as i8)
        .collect();
    SymmetricWeights { values, scales }
}

/// Quantizes a bias to int32 with scale `input_scale * weight_scale[c]`, as the fused integer
/// kernels expect. Returns the values and the scales.
pub fn quantize_bias(bias: &[f32], input_scale: f32, weight_scales: &[f32]) -> (Vec<i32>, Vec<f32>) {
    let scales: Vec<f32> = if weight_scales.len() == 1 {
        vec![input_scale * weight_scales[0]]
    } else {
        weight_scales.iter().map(|s| input_scale * s).collect()
    };
    let values = bias
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let s = if scales.len() == 1 { scales[0] } else { scales[i] };
            quantize(*b, s, 0, i32::MIN, i32::MAX)
        })
        .collect();
    (values, scales)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uint8_params_map_the_range_onto_0_255() {
        let (scale, zp) = activation_params(-1.0, 3.0, ActivationType::Uint8);
        assert!((scale - 4.0 / 255.0).abs() < 1e-7);
        assert_eq!(zp, 64);
        assert_eq!(quantize(-1.0, scale, zp, 0, 255), 0);
        assert_eq!(quantize(3.0, scale, zp, 0, 255), 255);
        assert_eq!(quantize(0.0, scale, zp, 0, 255), zp);
        // Dequantizing gives back each value within half a step.
        for x in [-0.7f32, 0.1, 1.234, 2.9] {
            let back = (quantize(x, scale, zp, 0, 255) - zp) as f32 * scale;
            assert!((back - x).abs() <= scale / 2.0 + 1e-6, "{x} -> {back}");
        }
    }

    #[test]
    fn int8_params_and_degenerate_ranges() {
        let (scale, zp) = activation_params(0.0, 2.55, ActivationType::Int8);
        assert!((scale - 0.01).abs() < 1e-7);
        assert_eq!(zp, -128);
        assert_eq!(activation_params(0.0, 0.0, ActivationType::Uint8), (1.0, 0));
        // A range that does not hold 0 is widened to hold it.
        let (_, zp) = activation_params(1.0, 2.0, ActivationType::Uint8);
        assert_eq!(zp, 0);
    }

    #[test]
    fn rounds_half_to_even_and_saturates() {
        assert_eq!(quantize(2.5, 1.0, 0, -127, 127), 2);
        assert_eq!(quantize(3.5, 1.0, 0, -127, 127), 4);
        assert_eq!(quantize(1000.0, 1.0, 0, -127, 127), 127);
        assert_eq!(quantize(-1000.0, 1.0, 0, 0, 255), 0);
    }

    #[test]
    fn per_channel_weights_use_one_scale_per_output_channel() {
        // Shape [2, 3]: channel 0 spans up to 1.27, channel 1 up to 0.127.
        let w = [1.27f32, -0.5, 0.0, 0.127, 0.05, -0.127];
        let q = quantize_weights(&w, &[2, 3], Some(0), 127);
        assert_eq!(q.scales.len(), 2);
        assert!((q.scales[0] - 0.01).abs() < 1e-7 && (q.scales[1] - 0.001).abs() < 1e-8);
        assert_eq!(q.values, vec![127, -50, 0, 127, 50, -127]);
        // Axis 1 of a [K, N] matrix: one scale per column.
        let q = quantize_weights(&[1.0, 2.0, -1.0, 4.0], &[2, 2], Some(1), 127);
        assert_eq!(q.scales.len(), 2);
        assert_eq!(q.values[1], 64);
        assert_eq!(q.values[3], 127);
        let q = quantize_weights(&w, &[2, 3], None, 127);
        assert_eq!(q.scales.len(), 1);
    }

    #[test]
    fn bias_scale_is_input_times_weight_scale() {
        let (q, s) = quantize_bias(&[0.5, -0.25], 0.1, &[0.01, 0.05]);
        assert_eq!(s.len(), 2);
        assert!((s[0] - 0.001).abs() < 1e-9);
        assert_eq!(q, vec![500, -50]);
    }
}
