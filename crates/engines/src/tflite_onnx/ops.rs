//! The TFLite operators the conversion writes as ONNX, one function each: the convolutions,
//! fully connected layers, pools, the element-wise and reshaping operators of image models,
//! and QUANTIZE/DEQUANTIZE.

use tract_onnx::pb::tensor_proto::DataType;
use tract_tflite::tflite::{ActivationFunctionType, BuiltinOperator, Operator, Padding, TensorType};

use super::blocks::Blocks;
use super::onnx::{int, ints, text};
use super::{Converter, Layout, Stored};

type Result<T> = std::result::Result<T, String>;

impl<'a> Converter<'a> {
    /// Writes one operator.
    pub(super) fn operator(&mut self, code: BuiltinOperator, op: &Operator<'a>) -> Result<()> {
        let inputs: Vec<i32> = op.inputs().map(|i| i.iter().collect()).unwrap_or_default();
        let outputs: Vec<i32> = op.outputs().map(|o| o.iter().collect()).unwrap_or_default();
        let &[output] = outputs.as_slice() else {
            return Err(format!("{} outputs; one is converted", outputs.len()));
        };
        let input = |i: usize| {
            inputs.get(i).copied().filter(|&t| t >= 0).ok_or_else(|| format!("input {i} is missing"))
        };
        match code {
            BuiltinOperator::CONV_2D => {
                let options = op.builtin_options_as_conv_2_doptions().ok_or("no Conv2D options")?;
                let window = Window {
                    padding: options.padding(),
                    strides: [options.stride_h(), options.stride_w()],
                    dilations: [options.dilation_h_factor(), options.dilation_w_factor()],
                };
                self.convolution(&inputs, output, window, false, options.fused_activation_function())
            }
            BuiltinOperator::DEPTHWISE_CONV_2D => {
                let options =
                    op.builtin_options_as_depthwise_conv_2_doptions().ok_or("no DepthwiseConv2D options")?;
                let window = Window {
                    padding: options.padding(),
                    strides: [options.stride_h(), options.stride_w()],
                    dilations: [options.dilation_h_factor(), options.dilation_w_factor()],
                };
                self.convolution(&inputs, output, window, true, options.fused_activation_function())
            }
            BuiltinOperator::FULLY_CONNECTED => {
                let options = op.builtin_options_as_fully_connected_options();
                if options.is_some_and(|o| o.keep_num_dims()) {
                    return Err("keep_num_dims is not converted".into());
                }
                let activation =
                    options.map_or(ActivationFunctionType::NONE, |o| o.fused_activation_function());
                self.fully_connected(&inputs, output, activation)
            }
            BuiltinOperator::MAX_POOL_2D | BuiltinOperator::AVERAGE_POOL_2D => {
                let options = op.builtin_options_as_pool_2_doptions().ok_or("no Pool2D options")?;
                let kernel = [i64::from(options.filter_height()), i64::from(options.filter_width())];
                let window = Window {
                    padding: options.padding(),
                    strides: [options.stride_h(), options.stride_w()],
                    dilations: [1, 1],
                };
                let op_type = if code == BuiltinOperator::MAX_POOL_2D { "MaxPool" } else { "AveragePool" };
                let x = self.value_in(input(0)?, Layout::Channels)?;
                let x = self.real(&x);
                let mut attributes = window.attributes();
                attributes.push(ints("kernel_shape", &kernel));
                let raw = self.onnx.node(op_type, &[&x], attributes);
                self.finish(output, raw, Layout::Channels, options.fused_activation_function())
            }
            BuiltinOperator::MEAN => self.mean(input(0)?, input(1)?, output, op),
            BuiltinOperator::ADD | BuiltinOperator::SUB | BuiltinOperator::MUL => {
                let (op_type, activation) = match code {
                    BuiltinOperator::ADD => {
                        ("Add", op.builtin_options_as_add_options().map(|o| o.fused_activation_function()))
                    }
                    BuiltinOperator::SUB => {
                        ("Sub", op.builtin_options_as_sub_options().map(|o| o.fused_activation_function()))
                    }
                    _ => ("Mul", op.builtin_options_as_mul_options().map(|o| o.fused_activation_function())),
                };
                let (operands, layout) = self.operands(&[input(0)?, input(1)?])?;
                let names: Vec<&str> = operands.iter().map(String::as_str).collect();
                let raw = self.onnx.node(op_type, &names, Vec::new());
                self.finish(output, raw, layout, activation.unwrap_or(ActivationFunctionType::NONE))
            }
            BuiltinOperator::CONCATENATION => {
                let options =
                    op.builtin_options_as_concatenation_options().ok_or("no Concatenation options")?;
                let (operands, layout) = self.operands(&inputs)?;
                let rank = self.facts(output)?.shape.len() as i32;
                let axis = if options.axis() < 0 { options.axis() + rank } else { options.axis() };
                let axis = match layout {
                    Layout::Channels => {
                        [0, 2, 3, 1].get(axis as usize).copied().ok_or("axis out of range")?
                    }
                    Layout::Native => i64::from(axis),
                };
                let names: Vec<&str> = operands.iter().map(String::as_str).collect();
                let raw = self.onnx.node("Concat", &names, vec![int("axis", axis)]);
                self.finish(output, raw, layout, options.fused_activation_function())
            }
            BuiltinOperator::RESHAPE => self.reshape(input(0)?, output),
            BuiltinOperator::PAD | BuiltinOperator::PADV2 => self.pad(&inputs, output),
            BuiltinOperator::SOFTMAX => {
                let beta = op.builtin_options_as_softmax_options().map_or(1.0, |o| o.beta());
                let x = self.value_in(input(0)?, Layout::Native)?;
                let mut x = self.real(&x);
                if beta != 1.0 {
                    let beta = self.onnx.floats("beta", &[], &[beta]);
                    x = self.onnx.node("Mul", &[&x, &beta], Vec::new());
                }
                let raw = self.onnx.node("Softmax", &[&x], vec![int("axis", -1)]);
                self.finish(output, raw, Layout::Native, ActivationFunctionType::NONE)
            }
            BuiltinOperator::RELU | BuiltinOperator::RELU6 | BuiltinOperator::RELU_N1_TO_1 => {
                let activation = match code {
                    BuiltinOperator::RELU => ActivationFunctionType::RELU,
                    BuiltinOperator::RELU6 => ActivationFunctionType::RELU6,
                    _ => ActivationFunctionType::RELU_N1_TO_1,
                };
                self.element_wise(input(0)?, output, None, activation)
            }
            BuiltinOperator::LOGISTIC => {
                self.element_wise(input(0)?, output, Some("Sigmoid"), ActivationFunctionType::NONE)
            }
            BuiltinOperator::TANH => {
                self.element_wise(input(0)?, output, Some("Tanh"), ActivationFunctionType::NONE)
            }
            BuiltinOperator::HARD_SWISH => {
                self.element_wise(input(0)?, output, Some("HardSwish"), ActivationFunctionType::NONE)
            }
            BuiltinOperator::QUANTIZE => {
                self.element_wise(input(0)?, output, None, ActivationFunctionType::NONE)
            }
            BuiltinOperator::DEQUANTIZE if self.constant_sources.contains_key(&output) => Ok(()),
            BuiltinOperator::DEQUANTIZE => {
                self.element_wise(input(0)?, output, None, ActivationFunctionType::NONE)
            }
            _ => Err("this operator is not converted to ONNX".into()),
        }
    }

    /// An operator on one tensor that keeps its layout (`op_type` `None`: only the
    /// activation and the output's quantization).
    fn element_wise(
        &mut self,
        input: i32,
        output: i32,
        op_type: Option<&str>,
        activation: ActivationFunctionType,
    ) -> Result<()> {
        let x = self.value(input)?;
        let real = self.real(&x);
        let raw = match op_type {
            Some(op_type) => self.onnx.node(op_type, &[&real], Vec::new()),
            None => real,
        };
        self.finish(output, raw, x.layout, activation)
    }

    /// The real values of several operands in one layout: NCHW when every one is held so,
    /// else the file's.
    fn operands(&mut self, inputs: &[i32]) -> Result<(Vec<String>, Layout)> {
        let values = inputs.iter().map(|&i| self.value(i)).collect::<Result<Vec<_>>>()?;
        let layout = if values.iter().all(|v| v.rank == 4 && v.layout == Layout::Channels) {
            Layout::Channels
        } else {
            Layout::Native
        };
        let names = values
            .into_iter()
            .map(|v| {
                let v = self.relayout(v, layout);
                self.real(&v)
            })
            .collect();
        Ok((names, layout))
    }

    /// CONV_2D (filter `[O, H, W, I]`) and DEPTHWISE_CONV_2D (filter `[1, H, W, C·M]`) as ONNX
    /// Conv (filter `[O, I/groups, H, W]`); an INT8 stride-2 stem over 2×2 blocks (`blocks.rs`).
    fn convolution(
        &mut self,
        inputs: &[i32],
        output: i32,
        window: Window,
        depthwise: bool,
        activation: ActivationFunctionType,
    ) -> Result<()> {
        let (&x, &w) = (inputs.first().ok_or("no input")?, inputs.get(1).ok_or("no filter")?);
        let x_shape = self.facts(x)?.shape;
        let filter = self.facts(w)?;
        let [o, kh, kw, i] = <[i64; 4]>::try_from(filter.shape.clone())
            .map_err(|_| format!("filter '{}' is not 4-D", filter.name()))?;
        let (count, per) = if depthwise { (i, 1) } else { (o, i) };
        let group = if depthwise {
            x_shape.get(3).copied().filter(|&c| c > 0).ok_or("the input's channels are not known")?
        } else {
            1
        };
        // ONNX element (c, j, y, x) comes from TFLite element (c, y, x, j) for a convolution
        // and (0, y, x, c) for a depthwise one.
        let source = move |p: usize| -> usize {
            let p = p as i64;
            let (x, y, j, c) = (p % kw, (p / kw) % kh, (p / (kw * kh)) % per, p / (kw * kh * per));
            (if depthwise { (y * kw + x) * i + c } else { ((c * kh + y) * kw + x) * i + j }) as usize
        };
        let dims = [count, per, kh, kw];
        let quantized_axis = if depthwise { 3 } else { 0 };
        let x_value = self.value_in(x, Layout::Channels)?;
        let integer = filter.element_type() == TensorType::INT8
            && filter.quant.as_ref().is_some_and(|q| q.zero_points.iter().all(|&z| z == 0))
            && !self.constant_sources.contains_key(&w)
            && matches!(x_value.stored, Stored::Quantized { .. });
        let plan = [window.strides, window.dilations];
        let blocks = (integer && !depthwise)
            .then(|| Blocks::plan(&x_shape, [kh, kw], i, plan, window.padding == Padding::SAME))
            .flatten();
        let (weights, x_value, mut attributes) = match &blocks {
            Some(blocks) => {
                let weights = self.weights(w, [&dims, &blocks.filter_dims(o)], quantized_axis, |p| {
                    blocks.source(p).map(source)
                })?;
                let moved = self.on_data(&x_value, "SpaceToDepth", &[], vec![int("blocksize", 2)]);
                (weights, moved, blocks.attributes())
            }
            None => {
                let weights = self.weights(w, [&dims, &dims], quantized_axis, |p| Some(source(p)))?;
                let mut attributes = window.attributes();
                attributes.push(ints("kernel_shape", &[kh, kw]));
                (weights, x_value, attributes)
            }
        };
        let x = self.real(&x_value);
        let mut operands = vec![x, weights];
        if let Some(&b) = inputs.get(2).filter(|&&b| b >= 0) {
            operands.push(self.weights(b, [&[count], &[count]], 0, Some)?);
        }
        attributes.push(int("group", group));
        let names: Vec<&str> = operands.iter().map(String::as_str).collect();
        let raw = self.onnx.node("Conv", &names, attributes);
        self.finish(output, raw, Layout::Channels, activation)
    }

    /// FULLY_CONNECTED: `x · Wᵀ + b` as Gemm, the input flattened to `[-1, I]` first.
    fn fully_connected(
        &mut self,
        inputs: &[i32],
        output: i32,
        activation: ActivationFunctionType,
    ) -> Result<()> {
        let (&x, &w) = (inputs.first().ok_or("no input")?, inputs.get(1).ok_or("no weights")?);
        let filter = self.facts(w)?;
        let [o, i] = <[i64; 2]>::try_from(filter.shape.clone()).map_err(|_| "the weights are not 2-D")?;
        let weights = self.weights(w, [&[o, i], &[o, i]], 0, Some)?;
        let mut x = self.value_in(x, Layout::Native)?;
        if x.rank != 2 {
            let shape = self.onnx.int64s("shape", &[-1, i]);
            x = self.on_data(&x, "Reshape", &[&shape], Vec::new());
            x.rank = 2;
        }
        let x = self.real(&x);
        let mut operands = vec![x, weights];
        if let Some(&b) = inputs.get(2).filter(|&&b| b >= 0) {
            operands.push(self.weights(b, [&[o], &[o]], 0, Some)?);
        }
        let names: Vec<&str> = operands.iter().map(String::as_str).collect();
        let raw = self.onnx.node("Gemm", &names, vec![int("transB", 1)]);
        self.finish(output, raw, Layout::Native, activation)
    }

    /// A constant operand (filter, weights, bias) of shape `dims`, element `p` taken from the
    /// file's element `source(p)` (zero where it is `None`; the file holds the `needs` elements
    /// the operator needs): int8/int32 with their scales (per axis: TFLite's `quantized_axis`
    /// becomes ONNX axis 0) behind a DequantizeLinear, else float. float32 and integer bytes are
    /// moved as they are, with no wider copy (the peak memory of a load).
    fn weights(
        &mut self,
        index: i32,
        [needs, dims]: [&[i64]; 2],
        quantized_axis: usize,
        source: impl Fn(usize) -> Option<usize>,
    ) -> Result<String> {
        let facts = self.facts(index)?;
        let elements = |dims: &[i64]| {
            usize::try_from(dims.iter().product::<i64>()).map_err(|_| format!("bad shape {dims:?}"))
        };
        let (count, stored) = (elements(dims)?, elements(needs)?);
        if facts.len()? != stored {
            return Err(format!(
                "'{}' has shape {:?}, not the {needs:?} its operator needs",
                facts.name(),
                facts.shape
            ));
        }
        let behind_dequantize = self.constant_sources.contains_key(&index);
        let (element, width) = match (facts.element_type(), &facts.quant) {
            (TensorType::FLOAT32, _) => (DataType::Float, 4),
            (TensorType::INT8, Some(_)) if !behind_dequantize => (DataType::Int8, 1),
            (TensorType::INT32, Some(_)) if !behind_dequantize => (DataType::Int32, 4),
            // float16, or integers a DEQUANTIZE turns into float weights.
            _ if !self.onnx.keeps_data() => {
                return Ok(self.onnx.constant("weights", DataType::Float, dims, Vec::new()))
            }
            _ => {
                let values = facts.floats()?;
                let ordered: Vec<f32> = (0..count).map(|p| source(p).map_or(0.0, |s| values[s])).collect();
                return Ok(self.onnx.floats("weights", dims, &ordered));
            }
        };
        let data = facts.data.ok_or("not a constant")?;
        if data.len() != stored * width {
            return Err(format!(
                "constant '{}' holds {} bytes for shape {:?}",
                facts.name(),
                data.len(),
                facts.shape
            ));
        }
        let raw: Vec<u8> = if self.onnx.keeps_data() {
            let zero = [0; 4];
            let element = |p| source(p).map_or(&zero[..width], |s| &data[s * width..(s + 1) * width]);
            (0..count).flat_map(element).copied().collect()
        } else {
            Vec::new()
        };
        let weights = self.onnx.constant("weights", element, dims, raw);
        let Some(quant) = facts.quant.clone().filter(|_| element != DataType::Float) else {
            return Ok(weights);
        };
        if quant.scales.len() > 1 && quant.axis != quantized_axis {
            return Err(format!(
                "'{}' is quantized along axis {}, not {quantized_axis}",
                facts.name(),
                quant.axis
            ));
        }
        let params = self.params(&quant, element, Some(0))?;
        Ok(self.dequantize(&Stored::Quantized { data: weights, params }))
    }

    /// MEAN over the two spatial axes of an image tensor (GlobalAveragePool); any other
    /// reduction as ReduceMean in the file's layout.
    fn mean(&mut self, x: i32, axes: i32, output: i32, op: &Operator<'a>) -> Result<()> {
        let keep = op.builtin_options_as_reducer_options().is_some_and(|o| o.keep_dims());
        let rank = self.value(x)?.rank as i64;
        let mut axes: Vec<i64> =
            self.facts(axes)?.integers()?.iter().map(|&a| if a < 0 { a + rank } else { a }).collect();
        axes.sort_unstable();
        if rank == 4 && axes == [1, 2] {
            let value = self.value_in(x, Layout::Channels)?;
            let real = self.real(&value);
            let pooled = self.onnx.node("GlobalAveragePool", &[&real], Vec::new());
            let mut value = self.produce(output, pooled, Layout::Channels, ActivationFunctionType::NONE)?;
            if !keep {
                let shape = self.onnx.int64s("shape", &[0, -1]);
                value = self.on_data(&value, "Reshape", &[&shape], Vec::new());
                value.rank = 2;
                value.layout = Layout::Native;
            }
            return self.define(output, value);
        }
        let value = self.value_in(x, Layout::Native)?;
        let real = self.real(&value);
        let raw = self.onnx.node(
            "ReduceMean",
            &[&real],
            vec![ints("axes", &axes), int("keepdims", i64::from(keep))],
        );
        self.finish(output, raw, Layout::Native, ActivationFunctionType::NONE)
    }

    /// RESHAPE to the output tensor's shape, in the file's layout (on the integers when the
    /// quantization does not change).
    fn reshape(&mut self, x: i32, output: i32) -> Result<()> {
        let target = self.facts(output)?;
        let mut shape = target.shape.clone();
        if shape.iter().filter(|&&d| d < 0).count() > 1 {
            return Err("a reshape with more than one run-time dimension is not converted".into());
        }
        if shape.first().is_some_and(|&d| d < 0) {
            shape[0] = 0;
            if let Some(d) = shape.iter().skip(1).position(|&d| d < 0) {
                shape[d + 1] = -1;
            }
        }
        let same_quantization = self.facts(x)?.quant == target.quant && !self.graph_outputs.contains(&output);
        let value = self.value_in(x, Layout::Native)?;
        let shape = self.onnx.int64s("shape", &shape);
        if same_quantization {
            let mut moved = self.on_data(&value, "Reshape", &[&shape], Vec::new());
            moved.rank = target.shape.len();
            return self.define(output, moved);
        }
        let real = self.real(&value);
        let raw = self.onnx.node("Reshape", &[&real, &shape], Vec::new());
        self.finish(output, raw, Layout::Native, ActivationFunctionType::NONE)
    }

    /// PAD / PADV2 with constant paddings (`[rank, 2]`), padding with the constant value (0,
    /// or PADV2's third input).
    fn pad(&mut self, inputs: &[i32], output: i32) -> Result<()> {
        let (&x, &paddings) = (inputs.first().ok_or("no input")?, inputs.get(1).ok_or("no paddings")?);
        let value = self.value(x)?;
        let paddings = self.facts(paddings)?.integers()?;
        if paddings.len() != value.rank * 2 {
            return Err(format!("{} paddings for a {}-D tensor", paddings.len(), value.rank));
        }
        let (begin, end): (Vec<i64>, Vec<i64>) = paddings.chunks(2).map(|p| (p[0], p[1])).unzip();
        let order: Vec<usize> = if value.layout == Layout::Channels && value.rank == 4 {
            vec![0, 3, 1, 2]
        } else {
            (0..value.rank).collect()
        };
        let pads: Vec<i64> = order.iter().map(|&a| begin[a]).chain(order.iter().map(|&a| end[a])).collect();
        let real = self.real(&value);
        let pads = self.onnx.int64s("pads", &pads);
        let mut operands = vec![real, pads];
        if let Some(&constant) = inputs.get(2).filter(|&&c| c >= 0) {
            let constant = self.facts(constant)?.floats()?;
            operands.push(self.onnx.floats("pad_value", &[], &constant[..1.min(constant.len())]));
        }
        let names: Vec<&str> = operands.iter().map(String::as_str).collect();
        let raw = self.onnx.node("Pad", &names, vec![text("mode", "constant")]);
        self.finish(output, raw, value.layout, ActivationFunctionType::NONE)
    }
}

/// The window of a convolution or pool.
struct Window {
    padding: Padding,
    strides: [i32; 2],
    dilations: [i32; 2],
}

impl Window {
    /// TFLite's SAME pads the extra row and column at the end: ONNX's `SAME_UPPER`. Dilations
    /// of 1 (ONNX's default) are left out, which pools need: AveragePool has none before
    /// opset 19.
    fn attributes(&self) -> Vec<tract_onnx::pb::AttributeProto> {
        let padding = if self.padding == Padding::SAME {
            text("auto_pad", "SAME_UPPER")
        } else {
            ints("pads", &[0, 0, 0, 0])
        };
        let mut attributes = vec![ints("strides", &self.strides.map(i64::from)), padding];
        if self.dilations != [1, 1] {
            attributes.push(ints("dilations", &self.dilations.map(i64::from)));
        }
        attributes
    }
}
