#!/usr/bin/env python3
"""TF-MOT's QAT on the zoo's EfficientNet-Lite0, the stem quantized: the anchor for scripts/optimize/effnet_qat.sh.

Runs in the anchors venv (see README.md), never in CI. The same model, data, loss, optimizer and
epochs as effnet_qat.sh (docs/training.md, "QAT on EfficientNet-Lite0"):

  1. the model: models/zoo/efficientnet_lite0/1/model.onnx rebuilt in tf-keras, channels-last, with
     its weights (keras_from_onnx below), checked against ONNX Runtime on 4 photos;
  2. the targets: the ONNX model's FP32 logits on ONNX Runtime, as rtserve computes them with its
     serving engine; they are also the reference every agreement is measured against;
  3. post-training INT8: tf.lite (Optimize.DEFAULT) with the first --calibration-limit (48) training
     samples as the representative dataset, the samples rtserve's ranges come from;
  4. QAT: tfmot.quantization.keras.quantize_model (TF-MOT's default 8-bit scheme, its own ranges: activation
     ranges start at [-6, 6] and follow a moving average; --ranges calibrated starts them at the min/max over the
     calibration samples instead, as rtserve's; --repair-depthwise quantizes depthwise kernels per channel, see
     repair_depthwise_ranges), its figures on the tuning set before training, self-distillation from the FP32 logits (the seed's loss with alpha 1: T²·KL, T --temperature 3),
     Keras AdamW (--lr 3e-5 with CosineDecay to 0 over all steps, weight decay 5e-4, epsilon 1e-8, as
     candle's), batch --batch-size 8, --epochs 16, shuffled with --seed, the epoch whose fake-quantized
     model agrees most with FP32 on the tuning set kept (the first on a tie); then the same tf.lite
     conversion;
  5. each INT8 model run by ai-edge-litert's interpreter on the evaluation set (and the tuning set)
     against the FP32 logits: top-1 agreement, FP32 top-1 in the top 5, mean cosine, mean abs error
     (rtserve optimize evaluate's figures); one JSON line on stdout (and in --out).

Data: the four sets of scripts/optimize/photo_sets.py (training 384, tuning 96, evaluation 204;
NCHW, transposed here). The evaluation set is reported only.

  python scripts/optimize/anchors/tf_effnet_qat.py PHOTOS_DIR [--ranges tfmot|calibrated] [--repair-depthwise]
      [--epochs 16] [--seed 0] [--limit N] [--out FILE]
"""
import argparse
import contextlib
import os
import sys
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # tfmot needs tf-keras (Keras 2), not Keras 3
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from fashion_cnn_keras import onnx_initialisers  # noqa: E402
from tf_distill_qat import (  # noqa: E402
    best_heldout_callback, distillation_loss, emit, log, stamp, tflite_int8, tflite_logits)

ZOO_EFFNET = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..",
                                           "models", "zoo", "efficientnet_lite0", "1", "model.onnx"))
SETS = ("training", "tuning", "evaluation")


def load_set(directory, name, limit=None):
    """The samples of DIR/<name>.npz, NHWC float32."""
    x = np.load(os.path.join(directory, f"{name}.npz"))["input"][:limit]
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def same_pads(size, kernel, stride):
    """TensorFlow's 'SAME' padding (before, after) of one spatial axis."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def keras_from_onnx(keras, path, name="efficientnet_lite0"):
    """The ONNX CNN at `path` in tf-keras, NHWC, with its weights. Handles what the zoo's EfficientNet-Lite0
    is made of: Conv (dense or depthwise), Clip (ReLU6), Identity, Add, GlobalAveragePool + Flatten, Gemm.

    Conv padding is 'same' where the ONNX pads are TensorFlow's SAME pads, else ZeroPadding2D + 'valid'.
    A Conv followed by Clip gets a frozen BatchNormalization between them that computes the identity (scale 1,
    shift 0, mean 0, variance 1 − epsilon): TF-MOT fake-quantizes the kernel of a Conv followed by ReLU only
    through its Conv-BatchNorm-ReLU pattern (without it, LayerReLUQuantize gives the Conv no quantizer at all),
    and the TFLite converter folds the BatchNorm away.
    """
    import onnx
    from onnx import helper

    L = keras.layers
    graph = onnx.load(path).graph
    weights = onnx_initialisers(path)
    consumers = {}
    for node in graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node.op_type)
    inp = graph.input[0]
    channels, height, width = (d.dim_value for d in inp.type.tensor_type.shape.dim[1:])
    x_in = keras.Input((height, width, channels), name="input")
    tensors, loads = {inp.name: x_in}, []
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        layer = node.name.replace(".", "_")
        x = tensors.get(node.input[0])
        if node.op_type == "Conv":
            w, b = weights[node.input[1]], weights[node.input[2]]
            kh, kw = w.shape[2:]
            stride = attrs.get("strides", [1, 1])
            group = attrs.get("group", 1)
            pads = attrs.get("pads", [0, 0, 0, 0])
            size = x.shape[1:3]
            wanted = [same_pads(size[i], (kh, kw)[i], stride[i]) for i in range(2)]
            padding = "same"
            if [p for pair in zip(*wanted) for p in pair] != list(pads):
                x = L.ZeroPadding2D(((pads[0], pads[2]), (pads[1], pads[3])), name=f"{layer}_pad")(x)
                padding = "valid"
            if group == 1:
                conv = L.Conv2D(w.shape[0], (kh, kw), strides=stride, padding=padding, name=layer)
                kernel = w.transpose(2, 3, 1, 0)
            elif group == w.shape[0] == x.shape[-1] and w.shape[1] == 1:
                conv = L.DepthwiseConv2D((kh, kw), strides=stride, padding=padding, name=layer)
                kernel = w.transpose(2, 3, 0, 1)
            else:
                raise ValueError(f"{node.name}: grouped convolution with group {group} is not handled")
            x = conv(x)
            loads.append((conv, [kernel, b]))
            if consumers.get(node.output[0]) == ["Clip"]:
                bn = L.BatchNormalization(epsilon=1e-3, name=f"{layer}_bn")
                bn.trainable = False
                x = bn(x)
                ones = np.ones(w.shape[0], np.float32)
                loads.append((bn, [ones, 0 * ones, 0 * ones, ones - np.float32(1e-3)]))
        elif node.op_type == "Clip":
            low, high = (float(weights[i].reshape(-1)[0]) for i in node.input[1:3])
            if low != 0.0:
                raise ValueError(f"{node.name}: Clip({low}, {high}) is not a ReLU")
            x = L.ReLU(max_value=high, name=layer)(x)
        elif node.op_type == "Identity":
            pass
        elif node.op_type == "Add":
            x = L.Add(name=layer)([tensors[i] for i in node.input])
        elif node.op_type == "GlobalAveragePool":
            x = L.GlobalAveragePooling2D(name=layer)(x)
        elif node.op_type == "Flatten":
            if len(x.shape) != 2:  # only after GlobalAveragePool, whose output is flat already
                raise ValueError(f"{node.name}: Flatten of a rank-{len(x.shape)} tensor is not handled")
        elif node.op_type == "Gemm":
            w, b = weights[node.input[1]], weights[node.input[2]]
            dense = L.Dense(b.shape[0], name=layer)
            x = dense(x)
            loads.append((dense, [w.T if attrs.get("transB", 0) else w, b]))
        else:
            raise ValueError(f"{node.name}: operator {node.op_type} is not handled")
        tensors[node.output[0]] = x
    model = keras.Model(x_in, tensors[graph.output[0].name], name=name)
    for layer, values in loads:
        layer.set_weights(values)
    return model


def calibrate_ranges(keras, quantized, model, x, batch_size):
    """Starts every activation range of the TF-MOT model at the min/max (widened to hold 0) of its float tensor over
    x, as rtserve's MinMax calibration, instead of TF-MOT's [-6, 6] (which then moves by a moving average with decay
    0.999 a step). Kernel ranges are left alone: TF-MOT takes them from the kernel at every step. Returns how many
    ranges were set."""
    ranges = []
    for layer in quantized.layers:
        mins = [w for w in layer.non_trainable_weights
                if w.name.endswith("_min:0") and not w.name.split("/")[-1].startswith(("kernel", "depthwise_kernel"))]
        for low in mins:
            high = next(w for w in layer.non_trainable_weights if w.name == low.name.replace("_min:0", "_max:0"))
            inner = layer.name[len("quant_"):] if layer.name.startswith("quant_") else None
            ranges.append((low, high, model.get_layer(inner).output if inner else model.input))
    probe = keras.Model(model.input, [tensor for _, _, tensor in ranges])
    lows = [np.inf] * len(ranges)
    highs = [-np.inf] * len(ranges)
    for i in range(0, len(x), batch_size):
        outputs = probe(x[i:i + batch_size], training=False)
        for k, out in enumerate(outputs):
            lows[k], highs[k] = min(lows[k], float(np.min(out))), max(highs[k], float(np.max(out)))
    for (low, high, _), a, b in zip(ranges, lows, highs):
        low.assign(np.full(low.shape, min(a, 0.0), np.float32))
        high.assign(np.full(high.shape, max(b, 0.0), np.float32))
    return len(ranges)


def repair_depthwise_ranges():
    """Makes TF-MOT fake-quantize DepthwiseConv2D kernels per channel, as TFLite stores them. TF-MOT 0.8.1 gives a
    depthwise kernel [kh, kw, C, 1] one range: Default8BitConvWeightsQuantizer sizes its ranges by the last axis
    (tensorflow/model-optimization#808). Here a kernel with a last axis of 1 is quantized as [kh, kw, 1, C]."""
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import default_8bit_quantizers
    import tensorflow as tf

    quantizer = default_8bit_quantizers.Default8BitConvWeightsQuantizer
    build, call = quantizer.build, quantizer.__call__

    def depthwise(shape):
        return len(shape) == 4 and shape[-1] == 1

    def build_per_channel(self, tensor_shape, name, layer):
        if depthwise(tensor_shape):
            tensor_shape = tf.TensorShape([tensor_shape[0], tensor_shape[1], 1, tensor_shape[2]])
        return build(self, tensor_shape, name, layer)

    def call_per_channel(self, inputs, training, weights, **kwargs):
        if not depthwise(inputs.shape):
            return call(self, inputs, training, weights, **kwargs)
        swapped = tf.transpose(inputs, [0, 1, 3, 2])
        return tf.transpose(call(self, swapped, training, weights, **kwargs), [0, 1, 3, 2])

    quantizer.build, quantizer.__call__ = build_per_channel, call_per_channel


def ort_logits(path, sets, threads):
    """{set name: the ONNX model's logits} on ONNX Runtime (CPU) for each NHWC set, one session, batches of 16."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(x):
        return np.concatenate([session.run(None, {name: np.ascontiguousarray(x[i:i + 16].transpose(0, 3, 1, 2))})[0]
                               for i in range(0, len(x), 16)])

    return {key: run(x) for key, x in sets.items()}


def compare(logits, reference):
    """rtserve optimize evaluate's figures of `logits` against `reference`."""
    top1 = np.argmax(reference, 1)
    top5 = np.argsort(-logits, 1)[:, :5]
    cosine = np.sum(logits * reference, 1) / (np.linalg.norm(logits, axis=1) * np.linalg.norm(reference, axis=1))
    return {"samples": len(logits), "top1_agreement": round(float(np.mean(np.argmax(logits, 1) == top1)), 4),
            "fp32_top1_in_top5": round(float(np.mean(np.any(top5 == top1[:, None], 1))), 4),
            "mean_cosine": round(float(np.mean(cosine)), 5),
            "mean_abs_error": round(float(np.mean(np.abs(logits - reference))), 4)}


def tflite_figures(tf, name, content, data, fp32, threads):
    """compare() of a TFLite model on the tuning and evaluation sets, and how many of its Conv/FC ops take int8."""
    report = {"bytes": len(content)}
    for split in ("tuning", "evaluation"):
        logits, report["int8_conv_fc"] = tflite_logits(tf, content, data[split], threads)
        report[split] = compare(logits, fp32[split])
    log(f"{name}: evaluation {report['evaluation']}")
    return report


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("dir", help="directory written by scripts/optimize/photo_sets.py (training/tuning/evaluation.npz)")
    parser.add_argument("--model", default=ZOO_EFFNET, help="the FP32 ONNX model (default the zoo's EfficientNet-Lite0)")
    parser.add_argument("--epochs", type=int, default=16, help="QAT epochs (default 16, effnet_qat.sh's)")
    parser.add_argument("--lr", type=float, default=3e-5, help="AdamW learning rate (default 3e-5)")
    parser.add_argument("--weight-decay", type=float, default=5e-4, help="AdamW decoupled weight decay (default 5e-4)")
    parser.add_argument("--temperature", type=float, default=3.0, help="T of the self-distillation (default 3)")
    parser.add_argument("--batch-size", type=int, default=8, help="batch size (default 8)")
    parser.add_argument("--calibration-limit", type=int, default=48,
                        help="training samples for post-training INT8's representative dataset (default 48)")
    parser.add_argument("--ranges", choices=["tfmot", "calibrated"], default="tfmot",
                        help="where QAT's activation ranges start: tfmot, TF-MOT's own [-6, 6] (the default); calibrated, "
                             "the min/max over the --calibration-limit samples, as rtserve's (TF-MOT has no calibration)")
    parser.add_argument("--repair-depthwise", action="store_true",
                        help="fake-quantize DepthwiseConv2D kernels per channel in QAT, as TFLite stores them (TF-MOT "
                             "0.8.1 gives each one range: tensorflow/model-optimization#808)")
    parser.add_argument("--seed", type=int, default=0, help="seed for shuffling and Keras (default 0)")
    parser.add_argument("--threads", type=int, default=2, help="TensorFlow, TFLite and ONNX Runtime threads (default 2)")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N samples of each set (quick check)")
    parser.add_argument("--out", default=None, help="also write the JSON line to this file")
    parser.add_argument("--verbose", type=int, default=2, help="Keras fit verbosity, on stderr (default 2: one line an epoch)")
    args = parser.parse_args()

    import tensorflow as tf
    import tf_keras as keras
    import tensorflow_model_optimization as tfmot

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    keras.utils.set_random_seed(args.seed)
    started = time.time()

    data = {name: load_set(args.dir, name, args.limit) for name in SETS}
    fp32 = ort_logits(args.model, data, args.threads)
    model = keras_from_onnx(keras, args.model)
    parity = float(np.max(np.abs(model(data["evaluation"][:4], training=False).numpy() - fp32["evaluation"][:4])))
    log(f"max |keras - onnxruntime| logits: {parity:.2e}")

    ptq = tflite_figures(tf, "ptq tflite", tflite_int8(tf, model, data["training"][:args.calibration_limit]), data,
                         fp32, args.threads)

    if args.repair_depthwise:
        repair_depthwise_ranges()
    q = tfmot.quantization.keras.quantize_model(model)
    calibrated = None
    if args.ranges == "calibrated":
        calibrated = calibrate_ranges(keras, q, model, data["training"][:args.calibration_limit], args.batch_size)
        log(f"qat: {calibrated} activation ranges start from the first {args.calibration_limit} training samples")
    x = data["training"]
    steps = -(-len(x) // args.batch_size) * args.epochs
    optimizer = keras.optimizers.AdamW(keras.optimizers.schedules.CosineDecay(args.lr, steps),
                                       weight_decay=args.weight_decay, epsilon=1e-8)
    q.compile(optimizer=optimizer, loss=distillation_loss(tf, args.temperature, 1.0))
    q(x[:args.batch_size], training=True)  # sets the kernel ranges (kept at [-6, 6] until a training step does)
    start_figures = compare(q.predict(data["tuning"], batch_size=16, verbose=0), fp32["tuning"])
    log(f"qat: before training, tuning {start_figures}")
    best = best_heldout_callback(keras, data["tuning"], np.argmax(fp32["tuning"], 1))
    y_fit = np.concatenate([np.zeros((len(x), 1), np.float32), fp32["training"]], axis=1)  # [no label, FP32 logits]
    log(f"qat: quantize_model, {args.epochs} epoch(s) of {len(x)} samples, AdamW {args.lr}, batch {args.batch_size}")
    start = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        q.fit(x, y_fit, batch_size=args.batch_size, epochs=args.epochs, shuffle=True, callbacks=[best],
              verbose=args.verbose)
    qat = {"ranges": args.ranges, "calibrated_ranges": calibrated, "start_tuning": start_figures, "epochs": best.epochs,
           "best_epoch": best.best[1], "fit_s": round(time.perf_counter() - start, 1),
           "fake_quant": {split: compare(q.predict(data[split], batch_size=16, verbose=0), fp32[split])
                          for split in ("tuning", "evaluation")}}
    qat["tflite_int8"] = tflite_figures(tf, "qat tflite", tflite_int8(tf, q), data, fp32, args.threads)

    result = {
        "anchor": "tf_effnet_qat",
        "ptq_tflite_int8": ptq,
        "qat": qat,
        "parity_max_abs": parity,
        "wall_s": round(time.time() - started, 1),
        "settings": {"model": os.path.basename(os.path.dirname(os.path.dirname(args.model))),
                     "samples": {name: len(x) for name, x in data.items()}, "epochs": args.epochs, "lr": args.lr,
                     "optimizer": "adamw", "schedule": "cosine", "weight_decay": args.weight_decay,
                     "temperature": args.temperature, "batch_size": args.batch_size,
                     "calibration_limit": args.calibration_limit, "ranges": args.ranges,
                     "repair_depthwise": args.repair_depthwise, "seed": args.seed, "threads": args.threads},
        **stamp(tf, keras, tfmot, started),
    }
    emit(result, args.out)


if __name__ == "__main__":
    main()
