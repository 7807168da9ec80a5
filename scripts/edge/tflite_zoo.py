#!/usr/bin/env python3
"""TFLite test models and LiteRT reference outputs for rtserve's TFLite support (issue 17, item 2).

Run by hand only, never in CI, from the venv of scripts/edge/requirements.txt:

  python3 -m venv scripts/edge/.venv
  scripts/edge/.venv/bin/pip install -r scripts/edge/requirements.txt
  PY=scripts/edge/.venv/bin/python

  $PY scripts/edge/tflite_zoo.py fashion            # examples/edge/fashion_cnn_{float,int8}.tflite
  $PY scripts/edge/tflite_zoo.py mobilenet DIR      # DIR/mobilenet_v2_{float,int8}.tflite (not committed, ~14 + ~4 MB)
  $PY scripts/edge/tflite_zoo.py resnet50 DIR       # DIR/resnet50_{float,int8}.tflite (not committed, ~100 + ~25 MB)
  $PY scripts/edge/tflite_zoo.py mobile             # examples/edge/mobile_block_{float,int8}.tflite (small, seeded)
  $PY scripts/edge/tflite_zoo.py mediapipe          # examples/edge/face_detection_short_range.tflite, from the mediapipe wheel
  $PY scripts/edge/tflite_zoo.py refs [--dir D]     # D/refs/<model>.{npz,json} for every D/*.tflite (D = examples/edge)
  $PY scripts/edge/tflite_zoo.py bench MODEL...     # LiteRT invoke() latency, num_threads=1, 50 runs (p50/p99, runs/s, peak RSS)

Every written .tflite is hashed and compared with EXPECTED_SHA256 below: a mismatch is reported
(exit status 1) but the file is kept, so a new TensorFlow version shows up as a checksum change.

`fashion`: Keras CNN on Fashion-MNIST from the Debian package `dataset-fashion-mnist`
(/usr/share/datasets/fashion-mnist, or $FASHION_MNIST_DIR), pixels / 255, NHWC:

  input  "image" [1,28,28,1] (float32, or int8 in the int8 model); the batch is fixed to 1
         (--dynamic-batch keeps it -1; see below)
  Conv2D 16 k3 valid + ReLU -> MaxPool 2 -> Conv2D 32 k3 valid + ReLU -> MaxPool 2
  -> Flatten (5*5*32) -> Dense 10 (logits, no softmax)
  output [1,10] (float32, or int8)

trained 2 epochs (Adam, batch 128) on the 60k training images with tf.keras.utils.set_random_seed(0)
and tf.config.experimental.enable_op_determinism(). Converted with TFLiteConverter.from_keras_model:
float32 as is; INT8 with optimizations DEFAULT, representative dataset = the first 200 training
images, supported_ops TFLITE_BUILTINS_INT8, int8 input and output. The model is trained with a
dynamic batch and converted through a copy of its layers on a batch-1 Input: with a dynamic batch
the converter keeps Flatten's run-time shape arithmetic (SHAPE, STRIDED_SLICE with
shrink_axis_mask, PACK, then RESHAPE), which tract-tflite 0.23.9 as published cannot decode
(vendor/ fixes it); `fashion --dynamic-batch --out DIR` writes that variant (unpinned; committed
as examples/edge/fashion_cnn_int8_dynamic_batch.tflite).

`unsupported`: examples/edge/cumsum.tflite, one CUMSUM (an operator tract-tflite lacks), for the
tests of a file refused at load.

`mobilenet DIR`: tf.keras.applications.MobileNetV2(weights=None, input_shape=(224,224,3),
alpha=1.0, classes=1000) after set_random_seed(0) (random weights; output is the softmax), input
[1,224,224,3] float32 in [-1,1]. Its BatchNormalization statistics are then set from 16 images
uniform in [-1,1] (numpy.random.default_rng(1); one training-mode pass with momentum 0), since
with the initial statistics every output is exactly 1/1000. INT8 as above with 50 images drawn uniform in [-1,1] from
numpy.random.default_rng(0).

`resnet50 DIR`: tf.keras.applications.ResNet50(weights=None, input_shape=(224,224,3)) after
set_random_seed(0), BatchNormalization statistics and INT8 calibration as for `mobilenet` (16
and 50 images uniform in [-1,1]): the seed's "ResNet-50 TFLite (mobile)" row, timed by
side_by_side.sh.

`mobile`: a small image model with random seeded weights that holds, in a few kilobytes, the
operators of mobile classifiers: PAD, strided and 1x1 Conv2D with ReLU6, an inverted residual
block (DepthwiseConv2D, ADD), AveragePool and a depthwise convolution with depth multiplier 2
joined by CONCATENATION, MaxPool, hard-swish, a squeeze-and-excitation gate (MEAN, FULLY_CONNECTED,
LOGISTIC, RESHAPE, MUL), MEAN, FULLY_CONNECTED and SOFTMAX. Input "image" [1,32,32,3] in [-1,1];
outputs the logits [1,10] and their softmax. BatchNormalization statistics and INT8 calibration
as for `mobilenet` (16 and 50 images uniform in [-1,1]).

`mediapipe`: copies mediapipe/modules/face_detection/face_detection_short_range.tflite out of the
mediapipe 0.10.14 wheel (Apache-2.0; the last wheels that bundle the .tflite files, later ones
download them at run time), fetched with `pip download mediapipe==0.10.14 --no-deps`.

`refs`: for each D/<model>.tflite writes D/refs/<model>.npz and D/refs/<model>.json, using
ai_edge_litert.interpreter.Interpreter(num_threads=1). All models here have one input and one or
more outputs and a batch dimension of 1. The npz holds

  input            the model's input tensor for N examples stacked on axis 0, in the model's own
                   dtype (int8 models: the float image quantized with the input's scale and zero
                   point, round half to even, clipped to [-128,127]); shape [N, *input_shape[1:]]
  output           (models with one output) LiteRT's output, stacked the same way
  output_<i>       (models with several outputs) output i in LiteRT's output order
  input_float      the float data before quantization (int8 models only)

Each example was run on its own with batch 1 (the model's declared shape). Examples: fashion
models, the first 8 Fashion-MNIST t10k images; the others, 1 image uniform in [-1,1] from
numpy.random.default_rng(0). The json records, for every input and output tensor, its name,
dtype, shape, shape_signature and quantization (scale, zero_point; 0/0 means not quantized),
plus the sha256 of the .tflite and the TF/LiteRT versions used.

LiteRT runs with its default op resolver, which applies the XNNPACK delegate; for MobileNetV2 float
the plain builtin and the reference kernels agree with it within 5e-6 relative.

Comparing (issue 17): float outputs within 1e-4 relative (max|a-b| / max|ref| per tensor); int8
outputs within one quantization step (|a-b| <= 1) on >= 99% of the elements. MobileNetV2's int8
output is a softmax over 1000 classes with scale 1/256, so nearly every element is -128 there: a
weak check; the float model is the real one.
"""
import argparse
import hashlib
import json
import os
import sys
import time
import zipfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
EDGE = os.path.join(ROOT, "examples", "edge")
SEED = 0

# The Fashion-MNIST reader of `rtserve optimize`'s scripts (numpy only; honours $FASHION_MNIST_DIR).
sys.path.insert(0, os.path.join(ROOT, "scripts", "optimize"))
import fashion_mnist  # noqa: E402

MEDIAPIPE_WHEEL = "mediapipe==0.10.14"
MEDIAPIPE_MEMBER = "mediapipe/modules/face_detection/face_detection_short_range.tflite"

# sha256 of what this script writes with the versions of requirements.txt (tensorflow-cpu 2.21.0,
# x86-64, 2 cores). Filled in from real runs; see the report in examples/edge/README.md.
EXPECTED_SHA256 = {
    "fashion_cnn_float.tflite": "8e0c9cc13840c3cd1b1610e70c7e066557b29062a3b0c17f86910c4ff96ece3c",
    "fashion_cnn_int8.tflite": "860101607049ba2deb4a6ba691f188c89018d7c8992e6a46cd0bc8ad5fee15f7",
    "mobilenet_v2_float.tflite": "03e967d07e0be1e472f1fa4bbbd2bd492d590e3fb2080794a00a2bf4b7823015",
    "mobilenet_v2_int8.tflite": "b6f22ebd9e9b2a6298e5429ce0ce6cd5e39625f6dd51d4b407ddc3b5ccbcbd8c",
    "mobile_block_float.tflite": "6db989b2c65f3ba6eddeb2a2b2269df039c8de7fec44876f7182d6ac17b94822",
    "mobile_block_int8.tflite": "babd3319a1e772932949181fa930e6e4f6f14bfebde46a0f43d340cf749cec4f",
    "face_detection_short_range.tflite": "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8",
}


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def check(path, pinned=True):
    """Print the file's sha256 and size; return False when it differs from EXPECTED_SHA256."""
    digest, name = sha256(path), os.path.basename(path)
    want = EXPECTED_SHA256.get(name) if pinned else None
    status = "unpinned" if want is None else ("ok" if want == digest else f"MISMATCH (expected {want})")
    print(f"{name}: {os.path.getsize(path)} bytes sha256 {digest} {status}")
    return want is None or want == digest


def read_fashion(kind):
    """Images [N,28,28,1] (NHWC) float32 in [0,1] and labels int64."""
    images, labels = fashion_mnist.read(kind)
    return images.reshape(-1, 28, 28, 1), labels


def seed_tf():
    import tensorflow as tf

    tf.keras.utils.set_random_seed(SEED)
    tf.config.experimental.enable_op_determinism()
    return tf


def convert(tf, model, calibration, out_float, out_int8, pinned=True):
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    with open(out_float, "wb") as f:
        f.write(conv.convert())

    def representative():
        for x in calibration:
            yield [x[None].astype(np.float32)]

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = representative
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    with open(out_int8, "wb") as f:
        f.write(conv.convert())
    return all([check(out_float, pinned), check(out_int8, pinned)])


def fashion(args):
    tf = seed_tf()
    x, y = read_fashion("train")
    xt, yt = read_fashion("t10k")
    model = tf.keras.Sequential([
        tf.keras.Input((28, 28, 1), name="image"),
        tf.keras.layers.Conv2D(16, 3, activation="relu", name="conv1"),
        tf.keras.layers.MaxPooling2D(2, name="pool1"),
        tf.keras.layers.Conv2D(32, 3, activation="relu", name="conv2"),
        tf.keras.layers.MaxPooling2D(2, name="pool2"),
        tf.keras.layers.Flatten(name="flatten"),
        tf.keras.layers.Dense(10, name="logits"),
    ], name="fashion_cnn")
    model.compile(optimizer="adam", loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(x, y, epochs=args.epochs, batch_size=128, shuffle=True, verbose=2)
    print(f"test accuracy (Keras): {model.evaluate(xt, yt, verbose=0)[1]:.4f}")
    if not args.dynamic_batch:
        # Same layers and weights, batch fixed to 1. With a dynamic batch the converter keeps
        # Flatten's run-time shape computation (SHAPE, STRIDED_SLICE shrink_axis_mask, PACK before
        # RESHAPE), which only the vendored tract-tflite decodes.
        x_in = out = tf.keras.Input((28, 28, 1), batch_size=1, name="image")
        for layer in model.layers:
            out = layer(out)
        model = tf.keras.Model(x_in, out, name="fashion_cnn")
    out_dir = args.out or EDGE
    os.makedirs(out_dir, exist_ok=True)
    ok = convert(tf, model, x[:200], os.path.join(out_dir, "fashion_cnn_float.tflite"),
                 os.path.join(out_dir, "fashion_cnn_int8.tflite"), pinned=not args.dynamic_batch)
    return 0 if ok else 1


def settle_batch_norm(tf, model, shape):
    """With freshly initialised BatchNormalization statistics (mean 0, variance 1) the activations
    vanish through the layers and a softmax is exactly uniform, useless as a reference. One
    forward pass in training mode with momentum 0 sets every BN's moving mean and variance to the
    batch statistics of 16 random images, so each layer sees normalised inputs."""
    for layer in model.layers:
        if isinstance(layer, tf.keras.layers.BatchNormalization):
            layer.momentum = 0.0
    model(np.random.default_rng(SEED + 1).uniform(-1, 1, (16, *shape)).astype(np.float32), training=True)


def random_calibration(shape):
    """50 images uniform in [-1, 1]: the INT8 calibration of the random-weight models."""
    return np.random.default_rng(SEED).uniform(-1, 1, (50, *shape)).astype(np.float32)


def mobilenet(args):
    tf = seed_tf()
    model = tf.keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3), alpha=1.0, classes=1000)
    settle_batch_norm(tf, model, (224, 224, 3))
    os.makedirs(args.dir, exist_ok=True)
    ok = convert(tf, model, random_calibration((224, 224, 3)), os.path.join(args.dir, "mobilenet_v2_float.tflite"),
                 os.path.join(args.dir, "mobilenet_v2_int8.tflite"))
    return 0 if ok else 1


def resnet50(args):
    tf = seed_tf()
    model = tf.keras.applications.ResNet50(weights=None, input_shape=(224, 224, 3), classes=1000)
    settle_batch_norm(tf, model, (224, 224, 3))
    os.makedirs(args.dir, exist_ok=True)
    ok = convert(tf, model, random_calibration((224, 224, 3)), os.path.join(args.dir, "resnet50_float.tflite"),
                 os.path.join(args.dir, "resnet50_int8.tflite"), pinned=False)
    return 0 if ok else 1


def mobile(args):
    tf = seed_tf()
    layers = tf.keras.layers
    x_in = tf.keras.Input((32, 32, 3), batch_size=1, name="image")
    x = layers.ZeroPadding2D(((0, 1), (0, 1)))(x_in)
    x = layers.ReLU(6.0)(layers.BatchNormalization()(layers.Conv2D(16, 3, strides=2, use_bias=False)(x)))
    y = layers.ReLU(6.0)(layers.BatchNormalization()(layers.Conv2D(32, 1, use_bias=False)(x)))
    y = layers.ReLU(6.0)(layers.BatchNormalization()(layers.DepthwiseConv2D(3, padding="same", use_bias=False)(y)))
    y = layers.BatchNormalization()(layers.Conv2D(16, 1, use_bias=False)(y))
    x = layers.Add()([x, y])
    a = layers.AveragePooling2D(2, strides=2, padding="same")(x)
    b = layers.ReLU()(layers.DepthwiseConv2D(3, strides=2, padding="same", depth_multiplier=2)(x))
    x = layers.MaxPooling2D(2)(layers.Concatenate()([a, b]))
    x = layers.Activation("hard_swish")(layers.Conv2D(24, 3, padding="same")(x))
    gate = layers.Dense(24, activation="sigmoid")(layers.Dense(8, activation="relu")(layers.GlobalAveragePooling2D()(x)))
    x = layers.Multiply()([x, layers.Reshape((1, 1, 24))(gate)])
    logits = layers.Dense(10, name="logits")(layers.GlobalAveragePooling2D()(x))
    model = tf.keras.Model(x_in, [logits, layers.Softmax(name="probabilities")(logits)], name="mobile_block")
    settle_batch_norm(tf, model, (32, 32, 3))
    ok = convert(tf, model, random_calibration((32, 32, 3)), os.path.join(EDGE, "mobile_block_float.tflite"),
                 os.path.join(EDGE, "mobile_block_int8.tflite"))
    return 0 if ok else 1


def unsupported(args):
    """A four-number model whose one operator (CUMSUM) tract's TFLite reader lacks: the tests'
    example of a real file refused at load with the operator named."""
    tf = seed_tf()
    x_in = tf.keras.Input((4,), batch_size=1, name="x")
    model = tf.keras.Model(x_in, tf.keras.layers.Lambda(lambda t: tf.math.cumsum(t, axis=1))(x_in))
    out = os.path.join(EDGE, "cumsum.tflite")
    with open(out, "wb") as f:
        f.write(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    print(f"wrote {out} ({sha256(out)})")
    return 0


def mediapipe(args):
    import glob
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-d", tmp, MEDIAPIPE_WHEEL], check=True)
        (wheel,) = glob.glob(os.path.join(tmp, "mediapipe-*.whl"))
        out = os.path.join(EDGE, os.path.basename(MEDIAPIPE_MEMBER))
        with zipfile.ZipFile(wheel) as z, open(out, "wb") as f:
            f.write(z.read(MEDIAPIPE_MEMBER))
    return 0 if check(out) else 1


def interpreter(path):
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=path, num_threads=1)
    it.allocate_tensors()
    return it


def describe(d):
    scale, zero = d["quantization"]
    return {
        "name": d["name"], "dtype": np.dtype(d["dtype"]).name, "shape": d["shape"].tolist(),
        "shape_signature": d["shape_signature"].tolist(), "quantization": {"scale": float(scale), "zero_point": int(zero)},
    }


def quantize(x, d):
    scale, zero = d["quantization"]
    if scale == 0:
        return x.astype(d["dtype"])
    info = np.iinfo(d["dtype"])
    return np.clip(np.round(x / scale) + zero, info.min, info.max).astype(d["dtype"])


KSERVE = {"float32": "FP32", "int8": "INT8", "uint8": "UINT8"}


def write_expected(path, stem, inp, x, outs, results):
    """The examples `x` in the format of tests/data/expected/*.json (what rtserve's engine tests
    read): {model, inputs: [{name, datatype, shape, data}], outputs: [...]}, as one batch."""
    def tensor(name, array):
        return {"name": name, "datatype": KSERVE[str(array.dtype)], "shape": list(array.shape),
                "data": [float(v) if array.dtype == np.float32 else int(v) for v in array.ravel()]}
    case = {"model": stem, "inputs": [tensor(inp["name"], x)],
            "outputs": [tensor(o["name"], np.stack(r)[: len(x)]) for o, r in zip(outs, results)]}
    with open(path, "w") as f:
        json.dump(case, f)
        f.write("\n")


def refs(args):
    import ai_edge_litert
    import tensorflow as tf

    out_dir = os.path.join(args.dir, "refs")
    os.makedirs(out_dir, exist_ok=True)
    for name in sorted(os.listdir(args.dir)):
        if not name.endswith(".tflite") or name == "cumsum.tflite":
            continue
        path, stem = os.path.join(args.dir, name), name[: -len(".tflite")]
        it = interpreter(path)
        (inp,), outs = it.get_input_details(), it.get_output_details()
        if name.startswith("fashion_cnn"):
            x = read_fashion("t10k")[0][:8]
        else:
            x = np.random.default_rng(SEED).uniform(-1, 1, (1, *inp["shape"][1:])).astype(np.float32)
        q = quantize(x, inp)
        results = [[] for _ in outs]
        for row in q:
            it.set_tensor(inp["index"], row[None])
            it.invoke()
            for r, o in zip(results, outs):
                r.append(it.get_tensor(o["index"])[0])
        arrays = {"input": q}
        if q.dtype != np.float32:
            arrays["input_float"] = x
        if len(outs) == 1:
            arrays["output"] = np.stack(results[0])
        else:
            arrays.update({f"output_{i}": np.stack(r) for i, r in enumerate(results)})
        np.savez(os.path.join(out_dir, stem + ".npz"), **arrays)
        meta = {
            "model": name, "sha256": sha256(path), "examples": len(q),
            "tensorflow": tf.__version__, "ai_edge_litert": ai_edge_litert.__version__ if hasattr(ai_edge_litert, "__version__") else None,
            "inputs": [describe(inp)], "outputs": [describe(o) for o in outs],
        }
        with open(os.path.join(out_dir, stem + ".json"), "w") as f:
            json.dump(meta, f, indent=1)
            f.write("\n")
        if stem.startswith(("fashion_cnn", "mobile_block")):
            # A file with a run-time batch is checked on all the examples as one batch.
            rows = len(q) if inp["shape_signature"][0] == -1 else 1
            write_expected(os.path.join(out_dir, stem + ".expected.json"), stem, inp, q[:rows], outs, results)
        print(f"{stem}: input {q.dtype}{list(q.shape)} -> " + ", ".join(f"{np.stack(r).dtype}{list(np.stack(r).shape)}" for r in results))
    return 0


def peak_rss_mib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def bench(args):
    """LiteRT's invoke() at one thread on one seeded input per model; with --save-input DIR the
    input is also written as DIR/<model>.npy, for `rtserve run` to time the same tensor. The peak
    RSS is this process's (Python, NumPy and LiteRT; TensorFlow is not imported here)."""
    for path in args.models:
        it = interpreter(path)
        (inp,) = it.get_input_details()
        x = quantize(np.random.default_rng(SEED).uniform(-1, 1, inp["shape"]).astype(np.float32), inp)
        if args.save_input:
            np.save(os.path.join(args.save_input, os.path.basename(path)[: -len(".tflite")] + ".npy"), x)
        it.set_tensor(inp["index"], x)
        for _ in range(args.warmup):
            it.invoke()
        times = []
        for _ in range(args.runs):
            t = time.perf_counter()
            it.invoke()
            times.append((time.perf_counter() - t) * 1e3)
        p50, p99 = np.percentile(times, [50, 99], method="inverted_cdf")
        print(f"{os.path.basename(path)}: LiteRT num_threads=1 invoke ({args.runs} runs): p50 {p50:.3f} ms, "
              f"p99 {p99:.3f} ms, {1e3 * len(times) / sum(times):.1f} runs/s; peak RSS {peak_rss_mib():.1f} MiB")
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("fashion")
    s.add_argument("--epochs", type=int, default=2)
    s.add_argument("--dynamic-batch", action="store_true", help="keep the batch dimension dynamic (-1); not what is committed")
    s.add_argument("--out", help="output folder (default examples/edge)")
    s.set_defaults(fn=fashion)
    s = sub.add_parser("mobilenet")
    s.add_argument("dir")
    s.set_defaults(fn=mobilenet)
    s = sub.add_parser("resnet50")
    s.add_argument("dir")
    s.set_defaults(fn=resnet50)
    sub.add_parser("mobile").set_defaults(fn=mobile)
    sub.add_parser("mediapipe").set_defaults(fn=mediapipe)
    sub.add_parser("unsupported").set_defaults(fn=unsupported)
    s = sub.add_parser("refs")
    s.add_argument("--dir", default=EDGE)
    s.set_defaults(fn=refs)
    s = sub.add_parser("bench")
    s.add_argument("models", nargs="+")
    s.add_argument("--runs", type=int, default=50)
    s.add_argument("--warmup", type=int, default=5)
    s.add_argument("--save-input", metavar="DIR", help="also write each model's input as DIR/<model>.npy")
    s.set_defaults(fn=bench)
    args = p.parse_args()
    sys.exit(args.fn(args))


if __name__ == "__main__":
    main()
