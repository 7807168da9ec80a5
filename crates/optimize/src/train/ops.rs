//! The ONNX operators the trainer runs, parsed once from their nodes, and each one's forward
//! pass on candle tensors (candle records it for the backward pass).

use candle_core::{DType, Tensor, D};

use super::kernels::{self, ConvGeometry};
use crate::error::{OptimizeError, Result};
use crate::graph::{attribute, float_attr, int_attr};
use crate::onnx::NodeProto;

/// The operators the trainer covers, as `--help` and errors list them.
pub const SUPPORTED: &str = "Conv, Gemm, MatMul, Add, Sub, Mul, Div, Relu, Clip, Sigmoid, HardSigmoid, \
HardSwish, BatchNormalization, MaxPool, AveragePool, GlobalAveragePool, Flatten, Reshape, Transpose, \
Concat, Softmax, Dropout, Identity, Constant";

/// How padding is decided for Conv and pooling.
#[derive(Debug, Clone, PartialEq)]
pub enum Padding {
    /// `[top, left, bottom, right]`.
    Explicit([usize; 4]),
    /// `auto_pad` SAME_UPPER (extra padding at the end) or SAME_LOWER (at the start).
    Same { upper: bool },
}

/// One parsed operator with its attributes.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Conv {
        strides: usize,
        dilations: usize,
        padding: Padding,
        group: usize,
    },
    Gemm {
        alpha: f64,
        beta: f64,
        trans_a: bool,
        trans_b: bool,
    },
    MatMul,
    Add,
    Sub,
    Mul,
    Div,
    Relu,
    /// Bounds from attributes (opset < 11) or from constant inputs 1 and 2.
    Clip {
        min: Option<f32>,
        max: Option<f32>,
    },
    Sigmoid,
    HardSigmoid {
        alpha: f64,
        beta: f64,
    },
    HardSwish,
    BatchNorm {
        epsilon: f64,
        momentum: f64,
    },
    MaxPool {
        kernel: (usize, usize),
        strides: (usize, usize),
        padding: Padding,
    },
    AveragePool {
        kernel: (usize, usize),
        strides: (usize, usize),
        padding: Padding,
        count_include_pad: bool,
    },
    GlobalAveragePool,
    Flatten {
        axis: i64,
    },
    Reshape {
        allow_zero: bool,
    },
    Transpose {
        perm: Option<Vec<usize>>,
    },
    Concat {
        axis: i64,
    },
    Softmax {
        axis: i64,
    },
    Dropout {
        ratio: f32,
    },
    Identity,
}

fn ints(node: &NodeProto, name: &str) -> Option<Vec<i64>> {
    attribute(node, name).map(|a| a.ints.clone())
}

fn to_usize(node: &NodeProto, what: &str, values: &[i64]) -> Result<Vec<usize>> {
    values
        .iter()
        .map(|&v| usize::try_from(v).map_err(|_| OptimizeError::node(node, format!("{what} {values:?}"))))
        .collect()
}

/// The one value of a per-axis attribute that must be the same on both spatial axes.
fn uniform(node: &NodeProto, name: &str, default: usize) -> Result<usize> {
    let Some(values) = ints(node, name) else { return Ok(default) };
    let values = to_usize(node, name, &values)?;
    match values.as_slice() {
        [] => Ok(default),
        [a, b] if a == b => Ok(*a),
        _ => Err(OptimizeError::node(
            node,
            format!("{name} {values:?}: the trainer handles 2-D operators with the same {name} on both axes"),
        )),
    }
}

fn pair(node: &NodeProto, name: &str) -> Result<Option<(usize, usize)>> {
    let Some(values) = ints(node, name) else { return Ok(None) };
    match to_usize(node, name, &values)?.as_slice() {
        [a, b] => Ok(Some((*a, *b))),
        other => {
            Err(OptimizeError::node(node, format!("{name} {other:?}: the trainer handles 2-D operators")))
        }
    }
}

fn padding(node: &NodeProto) -> Result<Padding> {
    let auto = attribute(node, "auto_pad").map(|a| String::from_utf8_lossy(&a.s).to_string());
    match auto.as_deref().unwrap_or("NOTSET") {
        "SAME_UPPER" => return Ok(Padding::Same { upper: true }),
        "SAME_LOWER" => return Ok(Padding::Same { upper: false }),
        "VALID" => return Ok(Padding::Explicit([0; 4])),
        "NOTSET" | "" => {}
        other => return Err(OptimizeError::node(node, format!("unknown auto_pad '{other}'"))),
    }
    match ints(node, "pads") {
        None => Ok(Padding::Explicit([0; 4])),
        Some(p) => match to_usize(node, "pads", &p)?.as_slice() {
            [t, l, b, r] => Ok(Padding::Explicit([*t, *l, *b, *r])),
            other => {
                Err(OptimizeError::node(node, format!("pads {other:?}: the trainer handles 2-D operators")))
            }
        },
    }
}

fn no_ceil_mode(node: &NodeProto) -> Result<()> {
    if int_attr(node, "ceil_mode", 0) != 0 {
        return Err(OptimizeError::node(node, "ceil_mode 1 is not supported by the trainer"));
    }
    if uniform(node, "dilations", 1)? != 1 {
        return Err(OptimizeError::node(node, "dilated pooling is not supported by the trainer"));
    }
    Ok(())
}

impl Op {
    /// Parses a node; an operator outside [`SUPPORTED`] is an error naming the node.
    pub fn parse(node: &NodeProto) -> Result<Op> {
        let op = match node.op_type.as_str() {
            "Conv" => Op::Conv {
                strides: uniform(node, "strides", 1)?,
                dilations: uniform(node, "dilations", 1)?,
                padding: padding(node)?,
                group: usize::try_from(int_attr(node, "group", 1))
                    .ok()
                    .filter(|g| *g > 0)
                    .ok_or_else(|| OptimizeError::node(node, "group must be positive"))?,
            },
            "Gemm" => Op::Gemm {
                alpha: float_attr(node, "alpha", 1.0) as f64,
                beta: float_attr(node, "beta", 1.0) as f64,
                trans_a: int_attr(node, "transA", 0) != 0,
                trans_b: int_attr(node, "transB", 0) != 0,
            },
            "MatMul" => Op::MatMul,
            "Add" => Op::Add,
            "Sub" => Op::Sub,
            "Mul" => Op::Mul,
            "Div" => Op::Div,
            "Relu" => Op::Relu,
            "Clip" => Op::Clip {
                min: attribute(node, "min").map(|a| a.f),
                max: attribute(node, "max").map(|a| a.f),
            },
            "Sigmoid" => Op::Sigmoid,
            "HardSigmoid" => Op::HardSigmoid {
                alpha: float_attr(node, "alpha", 0.2) as f64,
                beta: float_attr(node, "beta", 0.5) as f64,
            },
            "HardSwish" => Op::HardSwish,
            "BatchNormalization" => {
                if int_attr(node, "training_mode", 0) != 0 {
                    return Err(OptimizeError::node(
                        node,
                        "training_mode 1 (extra outputs) is not supported",
                    ));
                }
                Op::BatchNorm {
                    epsilon: float_attr(node, "epsilon", 1e-5) as f64,
                    momentum: float_attr(node, "momentum", 0.9) as f64,
                }
            }
            "MaxPool" | "AveragePool" => {
                no_ceil_mode(node)?;
                let kernel = pair(node, "kernel_shape")?
                    .ok_or_else(|| OptimizeError::node(node, "kernel_shape is required"))?;
                let strides = pair(node, "strides")?.unwrap_or((1, 1));
                let padding = padding(node)?;
                if node.op_type == "MaxPool" {
                    if node.output.len() > 1 && !node.output[1].is_empty() {
                        return Err(OptimizeError::node(node, "the Indices output is not supported"));
                    }
                    Op::MaxPool { kernel, strides, padding }
                } else {
                    Op::AveragePool {
                        kernel,
                        strides,
                        padding,
                        count_include_pad: int_attr(node, "count_include_pad", 0) != 0,
                    }
                }
            }
            "GlobalAveragePool" => Op::GlobalAveragePool,
            "Flatten" => Op::Flatten { axis: int_attr(node, "axis", 1) },
            "Reshape" => Op::Reshape { allow_zero: int_attr(node, "allowzero", 0) != 0 },
            "Transpose" => {
                Op::Transpose { perm: ints(node, "perm").map(|p| to_usize(node, "perm", &p)).transpose()? }
            }
            "Concat" => Op::Concat {
                axis: attribute(node, "axis")
                    .map(|a| a.i)
                    .ok_or_else(|| OptimizeError::node(node, "axis is required"))?,
            },
            "Softmax" => Op::Softmax { axis: int_attr(node, "axis", -1) },
            "Dropout" => Op::Dropout { ratio: float_attr(node, "ratio", 0.5) },
            "Identity" => Op::Identity,
            other => {
                return Err(OptimizeError::node(
                    node,
                    format!("operator {other} is not supported by the trainer (it covers {SUPPORTED})"),
                ))
            }
        };
        Ok(op)
    }
}

/// Normalises a possibly negative axis of a tensor of `rank` dimensions.
pub fn axis(axis: i64, rank: usize) -> Result<usize> {
    let a = if axis < 0 { axis + rank as i64 } else { axis };
    usize::try_from(a)
        .ok()
        .filter(|a| *a < rank.max(1))
        .ok_or_else(|| OptimizeError::model(format!("axis {axis} is out of range for rank {rank}")))
}

/// Explicit `[top, left, bottom, right]` padding for an input of `(h, w)`.
pub fn resolve_padding(
    padding: &Padding,
    (h, w): (usize, usize),
    kernel: (usize, usize),
    strides: (usize, usize),
    dilation: usize,
) -> [usize; 4] {
    match padding {
        Padding::Explicit(p) => *p,
        Padding::Same { upper } => {
            let total = |size: usize, k: usize, s: usize| {
                let out = size.div_ceil(s);
                ((out.saturating_sub(1)) * s + (k - 1) * dilation + 1).saturating_sub(size)
            };
            let (th, tw) = (total(h, kernel.0, strides.0), total(w, kernel.1, strides.1));
            let (small_h, small_w) = (th / 2, tw / 2);
            if *upper {
                [small_h, small_w, th - small_h, tw - small_w]
            } else {
                [th - small_h, tw - small_w, small_h, small_w]
            }
        }
    }
}

/// Conv on NCHW input `x` with weight `w` [M, C/group, kH, kW] and optional bias [M].
pub fn conv(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    strides: usize,
    dilations: usize,
    padding: &Padding,
    group: usize,
) -> Result<Tensor> {
    let (_, _, h, wd) = x.dims4()?;
    let (m, _, kh, kw) = w.dims4()?;
    let pads = resolve_padding(padding, (h, wd), (kh, kw), (strides, strides), dilations);
    let span = |k: usize| dilations * (k.max(1) - 1) + 1;
    let padded = (h + pads[0] + pads[2], wd + pads[1] + pads[3]);
    if padded.0 < span(kh) || padded.1 < span(kw) {
        return Err(OptimizeError::model(format!(
            "a {kh}x{kw} kernel does not fit a {}x{} padded input",
            padded.0, padded.1
        )));
    }
    let geometry = ConvGeometry { strides: (strides, strides), dilation: dilations, pads, group };
    let zeros;
    let bias = match bias {
        Some(b) => b,
        None => {
            zeros = Tensor::zeros(m, x.dtype(), x.device())?;
            &zeros
        }
    };
    Ok(kernels::conv2d(x, w, bias, geometry)?)
}

/// BatchNormalization in inference form: running statistics.
pub fn batch_norm_eval(
    x: &Tensor,
    scale: &Tensor,
    bias: &Tensor,
    mean: &Tensor,
    var: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    let var = kernels::to_f64s(var)?;
    Ok(kernels::batch_norm(x, scale, bias, (kernels::to_f64s(mean)?, &var), eps, false)?)
}

/// BatchNormalization in training form: the batch's statistics; returns the output, the batch
/// mean and the unbiased batch variance (for the running statistics).
pub fn batch_norm_train(
    x: &Tensor,
    scale: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (mean, var) = kernels::channel_moments(x)?;
    let count = (x.elem_count() / mean.len().max(1)) as f64;
    let unbiased: Vec<f64> =
        var.iter().map(|v| if count > 1.0 { v * count / (count - 1.0) } else { *v }).collect();
    let stat = |v: &[f64]| -> Result<Tensor> { Ok(Tensor::new(v, x.device())?.to_dtype(x.dtype())?) };
    let (batch_mean, batch_var) = (stat(&mean)?, stat(&unbiased)?);
    let y = kernels::batch_norm(x, scale, bias, (mean, &var), eps, true)?;
    Ok((y, batch_mean, batch_var))
}

/// MaxPool (padding never wins, as ONNX Runtime's -inf padding).
pub fn max_pool(
    x: &Tensor,
    kernel: (usize, usize),
    strides: (usize, usize),
    padding: &Padding,
) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let pads = resolve_padding(padding, (h, w), kernel, strides, 1);
    Ok(kernels::max_pool2d(x, kernel, strides, pads)?)
}

/// AveragePool as a depthwise convolution with a constant all-ones kernel, divided by the
/// kernel's size or (`count_include_pad` false) by the input cells each window covers.
pub fn average_pool(
    x: &Tensor,
    kernel: (usize, usize),
    strides: (usize, usize),
    padding: &Padding,
    count_include_pad: bool,
) -> Result<Tensor> {
    let (_, c, h, w) = x.dims4()?;
    let pads = resolve_padding(padding, (h, w), kernel, strides, 1);
    if h + pads[0] + pads[2] < kernel.0 || w + pads[1] + pads[3] < kernel.1 {
        return Err(OptimizeError::model(format!("a {kernel:?} kernel does not fit a {h}x{w} input")));
    }
    let window_sums = |x: &Tensor, channels: usize| -> Result<Tensor> {
        let ones = Tensor::ones((channels, 1, kernel.0, kernel.1), x.dtype(), x.device())?;
        let zeros = Tensor::zeros(channels, x.dtype(), x.device())?;
        let geometry = ConvGeometry { strides, dilation: 1, pads, group: channels };
        Ok(kernels::conv2d(x, &ones, &zeros, geometry)?)
    };
    let sums = window_sums(x, c)?;
    if count_include_pad || pads.iter().all(|p| *p == 0) {
        return Ok((sums / (kernel.0 * kernel.1) as f64)?);
    }
    let counts = window_sums(&Tensor::ones((1, 1, h, w), x.dtype(), x.device())?, 1)?;
    Ok(sums.broadcast_div(&counts)?)
}

/// Gemm: `alpha * A' B' + beta * C`.
pub fn gemm(
    a: &Tensor,
    b: &Tensor,
    c: Option<&Tensor>,
    alpha: f64,
    beta: f64,
    trans_a: bool,
    trans_b: bool,
) -> Result<Tensor> {
    let a = if trans_a { a.t()? } else { a.clone() };
    let b = if trans_b { b.t()? } else { b.clone() };
    let mut y = a.matmul(&b)?;
    if alpha != 1.0 {
        y = (y * alpha)?;
    }
    match c {
        Some(c) if beta == 1.0 => Ok(y.broadcast_add(c)?),
        Some(c) => Ok(y.broadcast_add(&(c * beta)?)?),
        None => Ok(y),
    }
}

/// HardSigmoid: `clamp(alpha * x + beta, 0, 1)`.
pub fn hard_sigmoid(x: &Tensor, alpha: f64, beta: f64) -> Result<Tensor> {
    Ok(x.affine(alpha, beta)?.clamp(0f64, 1f64)?)
}

/// Reshape's target shape from ONNX's `shape` (0 copies the input's dimension unless
/// `allow_zero`; one -1 is inferred).
pub fn reshape_dims(
    input: &[usize],
    shape: &[i64],
    allow_zero: bool,
) -> std::result::Result<Vec<usize>, String> {
    let total: usize = input.iter().product();
    let mut dims = Vec::with_capacity(shape.len());
    let mut infer = None;
    for (i, &s) in shape.iter().enumerate() {
        match s {
            -1 if infer.is_none() => {
                infer = Some(i);
                dims.push(1);
            }
            0 if !allow_zero => {
                dims.push(*input.get(i).ok_or(format!("shape {shape:?}: no dimension {i} to copy"))?)
            }
            s if s >= 0 => dims.push(s as usize),
            _ => return Err(format!("shape {shape:?} is invalid")),
        }
    }
    let known: usize = dims.iter().product();
    if let Some(i) = infer {
        if known == 0 || !total.is_multiple_of(known) {
            return Err(format!("cannot reshape {input:?} to {shape:?}"));
        }
        dims[i] = total / known;
    } else if known != total {
        return Err(format!("cannot reshape {input:?} ({total} values) to {shape:?}"));
    }
    Ok(dims)
}

/// Softmax along one axis.
pub fn softmax(x: &Tensor, axis_: i64) -> Result<Tensor> {
    let a = axis(axis_, x.rank())?;
    let max = x.max_keepdim(a)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    Ok(e.broadcast_div(&e.sum_keepdim(a)?)?)
}

/// Log-softmax over the last axis (for losses).
pub fn log_softmax(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(shifted.broadcast_sub(&lse)?)
}

/// The scalar value of a one-element float tensor.
pub fn scalar(t: &Tensor) -> Result<f32> {
    if t.elem_count() != 1 {
        return Err(OptimizeError::model(format!("expected a scalar, got shape {:?}", t.dims())));
    }
    Ok(t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reshape_copies_zero_and_infers_minus_one() {
        assert_eq!(reshape_dims(&[2, 3, 4], &[0, -1], false), Ok(vec![2, 12]));
        assert_eq!(reshape_dims(&[2, 3, 4], &[-1], false), Ok(vec![24]));
        assert!(reshape_dims(&[2, 3, 4], &[5, -1], false).is_err());
        assert!(reshape_dims(&[2, 3, 4], &[2, 3], false).is_err());
    }

    #[test]
    fn same_padding_puts_the_odd_cell_where_onnx_does() {
        let upper = resolve_padding(&Padding::Same { upper: true }, (224, 224), (3, 3), (2, 2), 1);
        assert_eq!(upper, [0, 0, 1, 1]);
        let lower = resolve_padding(&Padding::Same { upper: false }, (224, 224), (3, 3), (2, 2), 1);
        assert_eq!(lower, [1, 1, 0, 0]);
        let stride1 = resolve_padding(&Padding::Same { upper: true }, (7, 7), (3, 3), (1, 1), 1);
        assert_eq!(stride1, [1, 1, 1, 1]);
    }

    #[test]
    fn unsupported_operator_names_the_node() {
        let node = crate::graph::node("LSTM", "rnn", &["x"], &["y"]);
        let err = Op::parse(&node).expect_err("unsupported").to_string();
        assert!(err.contains("'rnn'") && err.contains("LSTM") && err.contains("not supported"), "{err}");
    }

    #[test]
    fn different_strides_per_axis_are_refused() {
        let mut node = crate::graph::node("Conv", "c", &["x", "w"], &["y"]);
        node.attribute.push(crate::onnx::AttributeProto {
            name: "strides".into(),
            ints: vec![1, 2],
            ..Default::default()
        });
        let err = Op::parse(&node).expect_err("strides").to_string();
        assert!(err.contains("strides"), "{err}");
    }
}
