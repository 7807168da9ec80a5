#!/usr/bin/env python3
"""The seed's pruning recipe (TensorFlow Model Optimization) on `fashion_cnn`: the anchor for `rtserve optimize prune`.

Runs in the anchors venv (see README.md), never in CI. Reads the splits written by
`python scripts/optimize/fashion_cnn.py export DIR` and, by default, the starting weights of
examples/optimize/fashion_cnn_init.onnx (the same numbers rtserve's trainer starts from):

  1. builds fashion_cnn in tf-keras (fashion_cnn_keras.py: channels-last, the stride-2 `down` conv
     as ZeroPadding2D(1) + a 'valid' conv), loads the ONNX weights and checks its forward pass
     against the ONNX model (onnx.reference) on 16 test images;
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

from fashion_cnn_keras import accuracy, build_model, load_onnx_weights, load_split, onnx_parity  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_INIT = os.path.normpath(os.path.join(HERE, "..", "..", "..", "examples", "optimize", "fashion_cnn_init.onnx"))


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
