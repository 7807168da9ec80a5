#!/usr/bin/env python3
"""Fashion-MNIST for `rtserve optimize`: train the small classifier once, export the test set.

Data: the Debian package `dataset-fashion-mnist` (/usr/share/datasets/fashion-mnist, 70k labelled
28x28 images). Needs numpy, onnx and scikit-learn.

  python scripts/optimize/fashion_mnist.py train        # writes examples/optimize/fashion_mnist_mlp.onnx
  python scripts/optimize/fashion_mnist.py export DIR   # DIR/{calibration,test}.npz, DIR/test_labels.npy

The model: scikit-learn MLPClassifier (784-128-10, ReLU, seed 0) exported as plain
MatMul/Add/Relu ONNX (opset 17): input `input` FP32 [N,784] = pixels / 255, output `logits`
FP32 [N,10].
"""
import gzip
import os
import sys

import numpy as np

DATA = os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")
HERE = os.path.dirname(os.path.abspath(__file__))
MODEL = os.path.join(HERE, "..", "..", "examples", "optimize", "fashion_mnist_mlp.onnx")


def read(kind):
    with gzip.open(os.path.join(DATA, f"{kind}-images-idx3-ubyte.gz")) as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 784)
    with gzip.open(os.path.join(DATA, f"{kind}-labels-idx1-ubyte.gz")) as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    return images.astype(np.float32) / 255.0, labels.astype(np.int64)


def train():
    from onnx import TensorProto, helper, numpy_helper, save
    from sklearn.neural_network import MLPClassifier

    x, y = read("train")
    clf = MLPClassifier(hidden_layer_sizes=(128,), max_iter=15, random_state=0, batch_size=256)
    clf.fit(x, y)
    xt, yt = read("t10k")
    print(f"test accuracy (scikit-learn): {clf.score(xt, yt):.4f}")
    w1, w2 = (w.astype(np.float32) for w in clf.coefs_)
    b1, b2 = (b.astype(np.float32) for b in clf.intercepts_)
    inits = [numpy_helper.from_array(a, n) for a, n in [(w1, "fc1.weight"), (b1, "fc1.bias"), (w2, "fc2.weight"), (b2, "fc2.bias")]]
    nodes = [
        helper.make_node("MatMul", ["input", "fc1.weight"], ["fc1.mm"], name="fc1"),
        helper.make_node("Add", ["fc1.mm", "fc1.bias"], ["fc1.out"], name="fc1_bias"),
        helper.make_node("Relu", ["fc1.out"], ["relu1"], name="relu1"),
        helper.make_node("MatMul", ["relu1", "fc2.weight"], ["fc2.mm"], name="fc2"),
        helper.make_node("Add", ["fc2.mm", "fc2.bias"], ["logits"], name="fc2_bias"),
    ]
    graph = helper.make_graph(
        nodes, "fashion_mnist_mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 784])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="rtserve scripts/optimize/fashion_mnist.py")
    model.ir_version = 8
    save(model, MODEL)
    print(f"wrote {MODEL}")


def export(out):
    os.makedirs(out, exist_ok=True)
    x, _ = read("train")
    xt, yt = read("t10k")
    np.savez(os.path.join(out, "calibration.npz"), input=x[:500])
    np.savez(os.path.join(out, "test.npz"), input=xt)
    np.save(os.path.join(out, "test_labels.npy"), yt)
    print(f"wrote {out}/calibration.npz (500 training images), test.npz + test_labels.npy (10,000)")


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "train":
        train()
    elif len(sys.argv) == 3 and sys.argv[1] == "export":
        export(sys.argv[2])
    else:
        sys.exit(__doc__)
