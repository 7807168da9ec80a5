"""`fashion_cnn` in tf-keras, with the weights of an ONNX file: what the TensorFlow anchors share.

The data splits of `python scripts/optimize/fashion_cnn.py export DIR`, the model (any channel
widths: the zoo's teacher has 32/64, a student cut by `rtserve optimize prune --method channels`
fewer; or the hand-written student of scripts/optimize/fashion_student.py, told apart by its
`patch1` convolution), the copy of the ONNX initialisers into it, and a check of its forward pass
against the ONNX model itself (onnx.reference). No TensorFlow import here: the callers pass `keras`
(tf-keras, which tfmot needs) after setting TF_USE_LEGACY_KERAS.
"""
import os

import numpy as np

# The zoo's fashion_cnn: the teacher of the distillation anchors.
ZOO_MODEL = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..",
                                          "examples", "optimize", "fashion_cnn.onnx"))

# The three students of the distillation anchors, and the weight of the teacher's term in each:
# `alpha` distilled with labels, 1 without them, 0 on labels alone.
STUDENTS = ("distilled", "unlabelled", "labels_only")


def student_alphas(alpha):
    """{student: alpha} for the three STUDENTS, `alpha` being the distilled one's."""
    return dict(zip(STUDENTS, (alpha, 1.0, 0.0)))


# (name, filters in the zoo's model, stride, batchnorm name) for every convolution, in graph order
# (as fashion_cnn.py). The residual joins `stem` and `block.conv2`: they always have the same width.
CONVS = [
    ("stem", 32, 1, "stem_bn"),
    ("block.conv1", 32, 1, "block.bn1"),
    ("block.conv2", 32, 1, "block.bn2"),
    ("down", 64, 2, "down_bn"),
    ("conv4", 64, 1, "conv4_bn"),
]


def load_split(directory, name, limit=None):
    """(images NHWC float32, labels int64) of DIR/<name>.npz + DIR/<name>_labels.npy."""
    x = np.load(os.path.join(directory, f"{name}.npz"))["input"]
    y = np.load(os.path.join(directory, f"{name}_labels.npy"))
    if limit is not None:
        x, y = x[:limit], y[:limit]
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)), y.astype(np.int64)


def onnx_initialisers(path):
    """{initialiser name: numpy array} of an ONNX file."""
    import onnx
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}


def conv_widths(path):
    """{conv name: output channels} of every convolution of an ONNX file (its rank-4 `.weight`s)."""
    w = onnx_initialisers(path)
    return {k[: -len(".weight")]: int(v.shape[0]) for k, v in w.items() if k.endswith(".weight") and v.ndim == 4}


def build_model(keras, widths=None, name="fashion_cnn"):
    """fashion_cnn in tf-keras, NHWC, with `widths` ({conv name: filters}; default the zoo's).

    Layer names follow the ONNX node names ('.' becomes '_'). The stride-2 `down` conv is
    ZeroPadding2D(1) + a 'valid' conv: Keras 'same' would pad only bottom/right on the 14x14 input
    and sample other pixels than the ONNX Conv with pads 1.
    """
    L = keras.layers
    widths = widths or {}

    def conv_bn(x, conv, filters, stride, bn, relu):
        filters = widths.get(conv, filters)
        if stride == 1:
            x = L.Conv2D(filters, 3, padding="same", name=conv.replace(".", "_"))(x)
        else:
            x = L.ZeroPadding2D(1, name=conv.replace(".", "_") + "_pad")(x)
            x = L.Conv2D(filters, 3, strides=stride, padding="valid", name=conv.replace(".", "_"))(x)
        x = L.BatchNormalization(epsilon=1e-5, momentum=0.9, name=bn.replace(".", "_"))(x)
        return L.ReLU(name=relu)(x) if relu else x

    inp = keras.Input((28, 28, 1), name="input")
    x = conv_bn(inp, *CONVS[0], "stem_relu")
    pool = L.MaxPooling2D(2, 2, name="pool")(x)
    x = conv_bn(pool, *CONVS[1], "block_relu1")
    x = conv_bn(x, *CONVS[2], None)
    x = L.Add(name="block_add")([x, pool])
    x = L.ReLU(name="block_relu")(x)
    x = conv_bn(x, *CONVS[3], "down_relu")
    x = conv_bn(x, *CONVS[4], "conv4_relu")
    x = L.GlobalAveragePooling2D(name="gap")(x)
    out = L.Dense(10, name="fc")(x)
    return keras.Model(inp, out, name=name)


def load_onnx_weights(model, path):
    """Copy the initialisers of an ONNX fashion_cnn into the Keras model (OIHW -> HWIO, [10,C] -> [C,10])."""
    w = onnx_initialisers(path)
    for name, _, _, bn in CONVS:
        model.get_layer(name.replace(".", "_")).set_weights([w[f"{name}.weight"].transpose(2, 3, 1, 0), w[f"{name}.bias"]])
        model.get_layer(bn.replace(".", "_")).set_weights([w[f"{bn}.{k}"] for k in ("scale", "bias", "mean", "var")])
    model.get_layer("fc").set_weights([w["fc.weight"].T, w["fc.bias"]])


def onnx_weights(model):
    """The weights of a Keras fashion_cnn under the ONNX initialiser names and layouts (the inverse of
    load_onnx_weights)."""
    out = {}
    for name, _, _, bn in CONVS:
        kernel, bias = model.get_layer(name.replace(".", "_")).get_weights()
        out[f"{name}.weight"], out[f"{name}.bias"] = kernel.transpose(3, 2, 0, 1), bias
        for key, value in zip(("scale", "bias", "mean", "var"), model.get_layer(bn.replace(".", "_")).get_weights()):
            out[f"{bn}.{key}"] = value
    kernel, bias = model.get_layer("fc").get_weights()
    out["fc.weight"], out["fc.bias"] = kernel.T, bias
    return out


# The hand-written student's convolutions (fashion_student.py): 2x2, stride 2, no padding, each
# with BatchNormalization `<conv>_bn` and Relu, then Flatten (of NCHW) and Gemm `fc`.
PATCHES = ("patch1", "patch2")


def build_patch_student(keras, widths, name="fashion_student"):
    """The hand-written student in tf-keras, NHWC, with `widths` ({conv name: filters})."""
    L = keras.layers
    inp = keras.Input((28, 28, 1), name="input")
    x = inp
    for conv in PATCHES:
        x = L.Conv2D(widths[conv], 2, strides=2, padding="valid", name=conv)(x)
        x = L.BatchNormalization(epsilon=1e-5, momentum=0.9, name=f"{conv}_bn")(x)
        x = L.ReLU(name=f"{conv}_relu")(x)
    x = L.Flatten(name="flatten")(x)
    out = L.Dense(10, name="fc")(x)
    return keras.Model(inp, out, name=name)


def load_patch_student_weights(model, path):
    """Copy the initialisers of the ONNX student into the Keras one. Keras flattens NHWC, ONNX
    NCHW: the rows of `fc` are reordered from (c, h, w) to (h, w, c)."""
    w = onnx_initialisers(path)
    for conv in PATCHES:
        model.get_layer(conv).set_weights([w[f"{conv}.weight"].transpose(2, 3, 1, 0), w[f"{conv}.bias"]])
        model.get_layer(f"{conv}_bn").set_weights([w[f"{conv}_bn.{k}"] for k in ("scale", "bias", "mean", "var")])
    fc = w["fc.weight"]
    channels = w[f"{PATCHES[-1]}.weight"].shape[0]
    side = int(round((fc.shape[1] // channels) ** 0.5))
    rows = fc.reshape(fc.shape[0], channels, side, side).transpose(2, 3, 1, 0).reshape(-1, fc.shape[0])
    model.get_layer("fc").set_weights([rows, w["fc.bias"]])


def keras_from_onnx(keras, path, name="fashion_cnn"):
    """A Keras model with the widths and weights of the ONNX file at `path`: fashion_cnn (any
    widths) or the hand-written student."""
    widths = conv_widths(path)
    if PATCHES[0] in widths:
        model = build_patch_student(keras, widths, name=name)
        load_patch_student_weights(model, path)
        return model
    model = build_model(keras, widths, name=name)
    load_onnx_weights(model, path)
    return model


def onnx_parity(model, path, x_nhwc):
    """Largest |Keras logits - ONNX logits| (onnx.reference.ReferenceEvaluator) on x_nhwc."""
    from onnx.reference import ReferenceEvaluator

    ref = ReferenceEvaluator(path).run(None, {"input": np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2))})[0]
    return float(np.max(np.abs(model(x_nhwc, training=False).numpy() - ref)))


def accuracy(model, x, y, batch_size=512):
    """Top-1 accuracy of a Keras model (inference mode) on (x, y)."""
    logits = model.predict(x, batch_size=max(batch_size, 512), verbose=0)
    return float(np.mean(np.argmax(logits, 1) == y))
