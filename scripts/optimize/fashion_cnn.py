#!/usr/bin/env python3
"""`fashion_cnn`: the untrained Fashion-MNIST CNN for `rtserve optimize train/prune`, and its data splits.

Needs numpy and onnx only. Data: the Debian package `dataset-fashion-mnist`
(/usr/share/datasets/fashion-mnist, or $FASHION_MNIST_DIR), read as in fashion_mnist.py
(pixels / 255 as float32).

  python scripts/optimize/fashion_cnn.py init [--seed 0] [--out examples/optimize/fashion_cnn_init.onnx]
  python scripts/optimize/fashion_cnn.py export DIR [--limit N]

`init` writes the untrained model (opset 17, ir_version 8, every node named):

  input  FLOAT [N,1,28,28]  (pixels / 255, NCHW)
  stem        Conv 1->32 k3 p1      + stem_bn BatchNormalization + stem_relu Relu
  pool        MaxPool k2 s2          -> [32,14,14]
  block.conv1 Conv 32->32 k3 p1     + block.bn1 + block.relu1
  block.conv2 Conv 32->32 k3 p1     + block.bn2
  block.add   Add(block.bn2, pool)  + block.relu
  down        Conv 32->64 k3 s2 p1  + down_bn + down_relu   -> [64,7,7]
  conv4       Conv 64->64 k3 p1     + conv4_bn + conv4_relu
  gap GlobalAveragePool, flatten Flatten(axis 1), fc Gemm 64->10 (transB=1)
  logits FLOAT [N,10]

Initialisers: `<conv>.weight` [out,in,3,3] and `fc.weight` [10,64] He/Kaiming normal
(std = sqrt(2 / fan_in)), drawn in graph order (stem, block.conv1, block.conv2, down, conv4, fc)
from numpy.random.default_rng(seed); `<conv>.bias`, `fc.bias` zero; each BatchNormalization
(epsilon 1e-5, momentum 0.9) has `<bn>.scale` = 1, `<bn>.bias` = 0, `<bn>.mean` = 0, `<bn>.var` = 1.

`export DIR` writes the splits (inputs as npz array `input`, float32 [N,1,28,28]; labels int64):

  DIR/train.npz   + DIR/train_labels.npy     first 55,000 training images (for training)
  DIR/heldout.npz + DIR/heldout_labels.npy   last 5,000 training images (for choosing recipes)
  DIR/test.npz    + DIR/test_labels.npy      t10k, 10,000 images (reported, never used for choosing)

`--limit N` keeps only the first N images of each split (quick runs).
"""
import argparse
import gzip
import os

import numpy as np

DATA = os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")
HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.normpath(os.path.join(HERE, "..", "..", "examples", "optimize", "fashion_cnn_init.onnx"))
TRAIN_SIZE = 55_000  # the remaining 5,000 of the 60,000 training images are the held-out split

# (name, in channels, out channels, stride, batchnorm name) for every convolution, in graph order.
CONVS = [
    ("stem", 1, 32, 1, "stem_bn"),
    ("block.conv1", 32, 32, 1, "block.bn1"),
    ("block.conv2", 32, 32, 1, "block.bn2"),
    ("down", 32, 64, 2, "down_bn"),
    ("conv4", 64, 64, 1, "conv4_bn"),
]


def read(kind):
    """Images [N,1,28,28] float32 in [0,1] and labels int64 of the Debian files for `kind` (train or t10k)."""
    with gzip.open(os.path.join(DATA, f"{kind}-images-idx3-ubyte.gz")) as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)
    with gzip.open(os.path.join(DATA, f"{kind}-labels-idx1-ubyte.gz")) as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    return images.astype(np.float32) / 255.0, labels.astype(np.int64)


def he_normal(rng, shape, fan_in):
    """Kaiming normal: N(0, 2 / fan_in) as float32."""
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


def build(seed=0):
    """The untrained `fashion_cnn` as an onnx.ModelProto."""
    from onnx import TensorProto, checker, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits = []
    nodes = []

    def init(name, array):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(array, np.float32), name))

    def conv_bn(name, cin, cout, stride, bn, x, relu):
        """Conv k3 p1 + BatchNormalization (+ Relu); returns the output tensor name."""
        init(f"{name}.weight", he_normal(rng, (cout, cin, 3, 3), cin * 9))
        init(f"{name}.bias", np.zeros(cout))
        nodes.append(helper.make_node(
            "Conv", [x, f"{name}.weight", f"{name}.bias"], [f"{name}.out"], name=name,
            kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[stride, stride]))
        for suffix, value in [("scale", 1.0), ("bias", 0.0), ("mean", 0.0), ("var", 1.0)]:
            init(f"{bn}.{suffix}", np.full(cout, value))
        nodes.append(helper.make_node(
            "BatchNormalization",
            [f"{name}.out", f"{bn}.scale", f"{bn}.bias", f"{bn}.mean", f"{bn}.var"], [f"{bn}.out"],
            name=bn, epsilon=1e-5, momentum=0.9))
        if relu is None:
            return f"{bn}.out"
        nodes.append(helper.make_node("Relu", [f"{bn}.out"], [f"{relu}.out"], name=relu))
        return f"{relu}.out"

    convs = {c[0]: c for c in CONVS}
    x = conv_bn(*convs["stem"], "input", "stem_relu")
    nodes.append(helper.make_node("MaxPool", [x], ["pool.out"], name="pool", kernel_shape=[2, 2], strides=[2, 2]))
    x = conv_bn(*convs["block.conv1"], "pool.out", "block.relu1")
    x = conv_bn(*convs["block.conv2"], x, None)
    nodes.append(helper.make_node("Add", [x, "pool.out"], ["block.add.out"], name="block.add"))
    nodes.append(helper.make_node("Relu", ["block.add.out"], ["block.relu.out"], name="block.relu"))
    x = conv_bn(*convs["down"], "block.relu.out", "down_relu")
    x = conv_bn(*convs["conv4"], x, "conv4_relu")
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap.out"], name="gap"))
    nodes.append(helper.make_node("Flatten", ["gap.out"], ["flatten.out"], name="flatten", axis=1))
    init("fc.weight", he_normal(rng, (10, 64), 64))
    init("fc.bias", np.zeros(10))
    nodes.append(helper.make_node("Gemm", ["flatten.out", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1))

    graph = helper.make_graph(
        nodes, "fashion_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="rtserve scripts/optimize/fashion_cnn.py")
    model.ir_version = 8
    checker.check_model(model, full_check=True)
    return model


def cmd_init(args):
    import onnx

    model = build(args.seed)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    onnx.save(model, args.out)
    params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    print(f"wrote {args.out} (seed {args.seed}, {len(model.graph.node)} nodes, {params:,} parameters)")


def cmd_export(args):
    os.makedirs(args.dir, exist_ok=True)
    x, y = read("train")
    xt, yt = read("t10k")
    splits = {
        "train": (x[:TRAIN_SIZE], y[:TRAIN_SIZE]),
        "heldout": (x[TRAIN_SIZE:], y[TRAIN_SIZE:]),
        "test": (xt, yt),
    }
    for name, (images, labels) in splits.items():
        if args.limit is not None:
            images, labels = images[:args.limit], labels[:args.limit]
        np.savez(os.path.join(args.dir, f"{name}.npz"), input=images)
        np.save(os.path.join(args.dir, f"{name}_labels.npy"), labels)
        print(f"wrote {args.dir}/{name}.npz + {name}_labels.npy ({len(labels):,} images)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("init", help="write the untrained fashion_cnn ONNX model")
    p.add_argument("--seed", type=int, default=0, help="seed of numpy.random.default_rng (default 0)")
    p.add_argument("--out", default=DEFAULT_OUT, help="output ONNX file (default examples/optimize/fashion_cnn_init.onnx)")
    p.set_defaults(func=cmd_init)
    p = sub.add_parser("export", help="write the train / heldout / test splits as .npz + _labels.npy")
    p.add_argument("dir", help="output directory")
    p.add_argument("--limit", type=int, default=None, help="keep only the first N images of each split")
    p.set_defaults(func=cmd_export)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
