#!/usr/bin/env python3
"""The seed's pruning recipe (TensorFlow Model Optimization) on `fashion_cnn`: the anchor for `rtserve optimize prune`.

Runs in the anchors venv (see README.md), never in CI. Reads the splits written by
`python scripts/optimize/fashion_cnn.py export DIR` and, by default, the starting weights of
examples/optimize/fashion_cnn_init.onnx (the same numbers rtserve's trainer starts from):

  1. builds fashion_cnn in tf-keras (channels-last; the stride-2 `down` conv is ZeroPadding2D(1) +
     a 'valid' conv so it samples the same pixels as the ONNX Conv with pads 1), loads the ONNX
     weights and checks its forward pass against the ONNX model (onnx.reference) on 16 test images;
  2. trains it dense for --epochs on train.npz (shuffled, --seed);
  3. wraps it in tfmot.sparsity.keras.prune_low_magnitude with ConstantSparsity(--sparsity, begin_step=0)
     (all Conv2D and Dense kernels), fine-tunes --finetune-epochs with UpdatePruningStep, strip_pruning;
  4. prints one JSON line: dense and pruned held-out/test accuracy, the measured sparsity of the pruned
     kernels, wall times, and every setting.

  python scripts/optimize/anchors/tfmot_prune.py DIR [--epochs 8] [--finetune-epochs 2] [--optimizer sgd]
      [--lr 0.05] [--schedule cosine] [--finetune-lr LR/10] [--batch-size 128] [--limit N]
"""
import argparse
import contextlib
import json
import os
import platform
import sys
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # tfmot needs tf-keras (Keras 2), not Keras 3
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_INIT = os.path.normpath(os.path.join(HERE, "..", "..", "..", "examples", "optimize", "fashion_cnn_init.onnx"))

# (name, filters, stride, batchnorm name) for every convolution, in graph order (as fashion_cnn.py).
CONVS = [
    ("stem", 32, 1, "stem_bn"),
    ("block.conv1", 32, 1, "block.bn1"),
    ("block.conv2", 32, 1, "block.bn2"),
    ("down", 64, 2, "down_bn"),
    ("conv4", 64, 1, "conv4_bn"),
]


def load_split(directory, name, limit):
    """(images NHWC float32, labels int64) of DIR/<name>.npz + DIR/<name>_labels.npy."""
    x = np.load(os.path.join(directory, f"{name}.npz"))["input"]
    y = np.load(os.path.join(directory, f"{name}_labels.npy"))
    if limit is not None:
        x, y = x[:limit], y[:limit]
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)), y.astype(np.int64)


def build_model(keras):
    """fashion_cnn in tf-keras, NHWC. Layer names follow the ONNX node names ('.' becomes '_')."""
    L = keras.layers

    def conv_bn(x, name, filters, stride, bn, relu):
        if stride == 1:
            x = L.Conv2D(filters, 3, padding="same", name=name.replace(".", "_"))(x)
        else:  # ONNX pads 1 on every side; Keras 'same' would pad only bottom/right for even inputs
            x = L.ZeroPadding2D(1, name=name.replace(".", "_") + "_pad")(x)
            x = L.Conv2D(filters, 3, strides=stride, padding="valid", name=name.replace(".", "_"))(x)
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
    return keras.Model(inp, out, name="fashion_cnn")


def load_onnx_weights(model, path):
    """Copy the initialisers of the ONNX fashion_cnn into the Keras model (OIHW -> HWIO, [10,64] -> [64,10])."""
    import onnx
    from onnx import numpy_helper

    w = {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}
    for name, _, _, bn in CONVS:
        model.get_layer(name.replace(".", "_")).set_weights([w[f"{name}.weight"].transpose(2, 3, 1, 0), w[f"{name}.bias"]])
        model.get_layer(bn.replace(".", "_")).set_weights([w[f"{bn}.{k}"] for k in ("scale", "bias", "mean", "var")])
    model.get_layer("fc").set_weights([w["fc.weight"].T, w["fc.bias"]])


def onnx_parity(model, path, x_nhwc):
    """Largest |Keras logits - ONNX logits| (onnx.reference.ReferenceEvaluator) on x_nhwc."""
    from onnx.reference import ReferenceEvaluator

    ref = ReferenceEvaluator(path).run(None, {"input": np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2))})[0]
    return float(np.max(np.abs(model(x_nhwc, training=False).numpy() - ref)))


def make_optimizer(keras, args, lr):
    """The optimizer named by --optimizer, with learning rate `lr` (a float or a schedule)."""
    if args.optimizer == "sgd":
        return keras.optimizers.SGD(lr, momentum=args.momentum, weight_decay=args.weight_decay or None)
    if args.optimizer == "adam":
        return keras.optimizers.Adam(lr, weight_decay=args.weight_decay or None)
    return keras.optimizers.AdamW(lr, weight_decay=args.weight_decay)


def compile_model(keras, model, optimizer):
    model.compile(optimizer=optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])


def accuracy(model, x, y, batch_size):
    logits = model.predict(x, batch_size=max(batch_size, 512), verbose=0)
    return float(np.mean(np.argmax(logits, 1) == y))


def kernel_sparsity(model):
    """Fraction of exact zeros in every Conv2D / Dense kernel, per layer and overall."""
    per_layer, zeros, total = {}, 0, 0
    for layer in model.layers:
        if layer.__class__.__name__ in ("Conv2D", "Dense"):
            k = layer.get_weights()[0]
            per_layer[layer.name] = round(float(np.mean(k == 0)), 4)
            zeros += int(np.sum(k == 0))
            total += k.size
    return zeros / total, per_layer


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("dir", help="directory written by `fashion_cnn.py export` (train/heldout/test .npz + _labels.npy)")
    parser.add_argument("--init", default=DEFAULT_INIT,
                        help="ONNX fashion_cnn to take the starting weights from (default examples/optimize/fashion_cnn_init.onnx); "
                             "'keras' for Keras' own initialisers")
    parser.add_argument("--epochs", type=int, default=8, help="dense training epochs (default 8)")
    parser.add_argument("--finetune-epochs", type=int, default=2, help="fine-tuning epochs under pruning (default 2)")
    parser.add_argument("--sparsity", type=float, default=0.5, help="ConstantSparsity target (default 0.5)")
    parser.add_argument("--frequency", type=int, default=100, help="ConstantSparsity frequency in steps (default 100, tfmot's)")
    parser.add_argument("--optimizer", choices=["sgd", "adam", "adamw"], default="sgd", help="optimizer (default sgd)")
    parser.add_argument("--lr", type=float, default=0.05, help="dense learning rate (default 0.05)")
    parser.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    parser.add_argument("--weight-decay", type=float, default=0.0,
                        help="decoupled weight decay (Keras optimizers' weight_decay; default 0, AdamW 0 too unless set)")
    parser.add_argument("--schedule", choices=["constant", "cosine"], default="cosine",
                        help="dense learning-rate schedule: constant, or cosine decay to 0 over all dense steps (default cosine)")
    parser.add_argument("--finetune-lr", type=float, default=None, help="constant fine-tuning learning rate (default --lr / 10)")
    parser.add_argument("--batch-size", type=int, default=128, help="batch size (default 128)")
    parser.add_argument("--seed", type=int, default=0, help="seed for shuffling and Keras (default 0)")
    parser.add_argument("--threads", type=int, default=2, help="TensorFlow intra-op threads (default 2)")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N images of each split (quick check)")
    parser.add_argument("--verbose", type=int, default=2, help="Keras fit verbosity, on stderr (default 2: one line an epoch)")
    args = parser.parse_args()
    finetune_lr = args.finetune_lr if args.finetune_lr is not None else args.lr / 10

    import tensorflow as tf
    import tf_keras as keras
    import tensorflow_model_optimization as tfmot

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    keras.utils.set_random_seed(args.seed)

    x, y = load_split(args.dir, "train", args.limit)
    xh, yh = load_split(args.dir, "heldout", args.limit)
    xt, yt = load_split(args.dir, "test", args.limit)

    model = build_model(keras)
    parity = None
    if args.init != "keras":
        load_onnx_weights(model, args.init)
        parity = onnx_parity(model, args.init, xt[:16])
        print(f"init: {args.init}, max |keras - onnx| logits = {parity:.2e}", file=sys.stderr)

    # Dense training.
    steps = -(-len(x) // args.batch_size) * args.epochs
    lr = keras.optimizers.schedules.CosineDecay(args.lr, steps) if args.schedule == "cosine" else args.lr
    compile_model(keras, model, make_optimizer(keras, args, lr))
    start = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # Keras progress on stderr: stdout is the JSON line only
        model.fit(x, y, batch_size=args.batch_size, epochs=args.epochs, shuffle=True,
                  validation_data=(xh, yh), verbose=args.verbose)
    dense_s = time.perf_counter() - start
    dense = {"heldout": accuracy(model, xh, yh, args.batch_size), "test": accuracy(model, xt, yt, args.batch_size)}
    print(f"dense: {dense}", file=sys.stderr)

    # The seed's recipe: prune_low_magnitude, ConstantSparsity, fine-tune with UpdatePruningStep, strip_pruning.
    schedule = tfmot.sparsity.keras.ConstantSparsity(args.sparsity, begin_step=0, frequency=args.frequency)
    pruned = tfmot.sparsity.keras.prune_low_magnitude(model, pruning_schedule=schedule)
    compile_model(keras, pruned, make_optimizer(keras, args, finetune_lr))
    start = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        pruned.fit(x, y, batch_size=args.batch_size, epochs=args.finetune_epochs, shuffle=True, validation_data=(xh, yh),
                   callbacks=[tfmot.sparsity.keras.UpdatePruningStep()], verbose=args.verbose)
    finetune_s = time.perf_counter() - start
    stripped = tfmot.sparsity.keras.strip_pruning(pruned)
    compile_model(keras, stripped, make_optimizer(keras, args, finetune_lr))
    sparsity, per_layer = kernel_sparsity(stripped)
    result = {
        "anchor": "tfmot_prune",
        "dense_heldout_acc": round(dense["heldout"], 4),
        "dense_test_acc": round(dense["test"], 4),
        "pruned_heldout_acc": round(accuracy(stripped, xh, yh, args.batch_size), 4),
        "pruned_test_acc": round(accuracy(stripped, xt, yt, args.batch_size), 4),
        "sparsity": round(sparsity, 4),
        "sparsity_per_layer": per_layer,
        "dense_train_s": round(dense_s, 1),
        "finetune_s": round(finetune_s, 1),
        "wall_s": round(dense_s + finetune_s, 1),
        "init_parity_max_abs": parity,
        "settings": {
            "init": os.path.basename(args.init) if args.init != "keras" else "keras",
            "train_images": len(x), "heldout_images": len(xh), "test_images": len(xt),
            "epochs": args.epochs, "finetune_epochs": args.finetune_epochs, "sparsity": args.sparsity,
            "frequency": args.frequency, "optimizer": args.optimizer, "lr": args.lr,
            "momentum": args.momentum if args.optimizer == "sgd" else None, "weight_decay": args.weight_decay,
            "schedule": args.schedule, "finetune_lr": finetune_lr, "batch_size": args.batch_size,
            "seed": args.seed, "threads": args.threads,
        },
        "versions": {"tensorflow": tf.__version__, "tf_keras": keras.__version__,
                     "tfmot": getattr(tfmot, "__version__", "?"), "python": platform.python_version()},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
