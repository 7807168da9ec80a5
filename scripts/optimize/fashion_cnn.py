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


class Builder:
    """The nodes and float initialisers of a Fashion-MNIST model (input FLOAT [N,1,28,28], pixels
    / 255; logits FLOAT [N,10]), its weights drawn He-normal from numpy.random.default_rng(seed)
    in the order they are added (fashion_cnn here, fashion_student.py's student)."""

    def __init__(self, seed):
        from onnx import helper, numpy_helper

        self.helper, self.numpy_helper = helper, numpy_helper
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits = [], []

    def init(self, name, array):
        self.inits.append(self.numpy_helper.from_array(np.ascontiguousarray(array, np.float32), name))

    def node(self, *args, **attributes):
        self.nodes.append(self.helper.make_node(*args, **attributes))

    def conv_bn(self, name, cin, cout, bn, x, relu, kernel=3, stride=1, pad=1):
        """Conv + BatchNormalization (+ Relu unless `relu` is None); returns the output tensor name."""
        self.init(f"{name}.weight", he_normal(self.rng, (cout, cin, kernel, kernel), cin * kernel * kernel))
        self.init(f"{name}.bias", np.zeros(cout))
        self.node("Conv", [x, f"{name}.weight", f"{name}.bias"], [f"{name}.out"], name=name,
                  kernel_shape=[kernel, kernel], pads=[pad] * 4, strides=[stride, stride])
        for suffix, value in [("scale", 1.0), ("bias", 0.0), ("mean", 0.0), ("var", 1.0)]:
            self.init(f"{bn}.{suffix}", np.full(cout, value))
        self.node("BatchNormalization",
                  [f"{name}.out", f"{bn}.scale", f"{bn}.bias", f"{bn}.mean", f"{bn}.var"], [f"{bn}.out"],
                  name=bn, epsilon=1e-5, momentum=0.9)
        if relu is None:
            return f"{bn}.out"
        self.node("Relu", [f"{bn}.out"], [f"{relu}.out"], name=relu)
        return f"{relu}.out"

    def classifier(self, x, features):
        """`fc` Gemm features -> 10 (transB=1), writing `logits`."""
        self.init("fc.weight", he_normal(self.rng, (10, features), features))
        self.init("fc.bias", np.zeros(10))
        self.node("Gemm", [x, "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1)

    def model(self, name, script):
        """The checked model (opset 17, ir_version 8); `script` names its producer."""
        from onnx import TensorProto, checker

        helper = self.helper
        graph = helper.make_graph(
            self.nodes, name,
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 28, 28])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
            self.inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                  producer_name=f"rtserve scripts/optimize/{script}")
        model.ir_version = 8
        checker.check_model(model, full_check=True)
        return model


def save(model, out):
    """Writes `model` to `out` (its folder made); returns its number of float values."""
    import onnx

    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    onnx.save(model, out)
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer)


def build(seed=0):
    """The untrained `fashion_cnn` as an onnx.ModelProto."""
    b = Builder(seed)
    convs = {c[0]: c for c in CONVS}

    def conv(key, x, relu):
        name, cin, cout, stride, bn = convs[key]
        return b.conv_bn(name, cin, cout, bn, x, relu, stride=stride)

    x = conv("stem", "input", "stem_relu")
    b.node("MaxPool", [x], ["pool.out"], name="pool", kernel_shape=[2, 2], strides=[2, 2])
    x = conv("block.conv1", "pool.out", "block.relu1")
    x = conv("block.conv2", x, None)
    b.node("Add", [x, "pool.out"], ["block.add.out"], name="block.add")
    b.node("Relu", ["block.add.out"], ["block.relu.out"], name="block.relu")
    x = conv("down", "block.relu.out", "down_relu")
    x = conv("conv4", x, "conv4_relu")
    b.node("GlobalAveragePool", [x], ["gap.out"], name="gap")
    b.node("Flatten", ["gap.out"], ["flatten.out"], name="flatten", axis=1)
    b.classifier("flatten.out", 64)
    return b.model("fashion_cnn", "fashion_cnn.py")


def cmd_init(args):
    model = build(args.seed)
    params = save(model, args.out)
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
