#!/usr/bin/env python3
"""Replays one unshuffled epoch of rtserve's training of a fashion_cnn-shaped student in float64 PyTorch.

Runs in the anchors venv (see README.md), never in CI. rtserve's `distill` / `prune --method channels`
with `--no-shuffle --epochs 1` sees the training images in their order; this script takes the same
steps from the same starting weights in float64 (PyTorch's functional ops, written out here, not
rtserve's code): the seed's loss alpha·T²·KL(softmax(t/T) ‖ softmax(s/T)) + (1-alpha)·CE, the
teacher's logits in inference mode, BatchNormalization on batch statistics with the running ones
updated at momentum 0.9 (ONNX's convention), SGD v = m·v + g + wd·w; w −= lr·v at a cosine rate per
step to 0. It then prints, for every tensor, how far rtserve's trained file (and, with --tf, the
weights `tf_distill_qat.py --no-shuffle --momentum-form torch --save-students` wrote) lies from the
replay, relative to how far training moved it. float32 round-off alone gives about 1e-6 after one
step, growing with the steps.

  D=/tmp/replay; mkdir -p $D   # train.npz / train_labels.npy: the first 1,280 training images
  rtserve optimize distill --teacher examples/optimize/fashion_cnn.onnx --student-width 0.3 --out $D/rt.onnx \\
      --data $D/train.npz --labels $D/train_labels.npy --heldout 0 --batch-size 128 --epochs 1 --weight-decay 0 \
      --no-shuffle
  # --heldout 0: without it rtserve holds out the last 10 % of the images and trains on the rest
  python scripts/optimize/anchors/replay_f64.py $D --student STUDENT.onnx --trained $D/rt.onnx --mode distilled

STUDENT.onnx is the starting student (`prune --method channels --sparsity 0.7 --epochs 0`, as in
tf_distill_qat.py).
"""

import argparse
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fashion_cnn_keras import CONVS, STUDENTS, ZOO_MODEL, onnx_initialisers, student_alphas  # noqa: E402


class Net:
    """fashion_cnn (any widths) on float64 tensors holding an ONNX file's initialisers."""

    def __init__(self, torch, path, trainable):
        self.torch, self.F = torch, torch.nn.functional
        self.p = {k: torch.tensor(v.astype(np.float64), requires_grad=trainable and not k.endswith((".mean", ".var")))
                  for k, v in onnx_initialisers(path).items()}

    def conv_bn(self, x, conv, stride, bn, training):
        p, F = self.p, self.F
        x = F.conv2d(x, p[f"{conv}.weight"], p[f"{conv}.bias"], stride=stride, padding=1)
        # PyTorch's momentum 0.1 is ONNX's 0.9: running = 0.9·running + 0.1·batch.
        return F.batch_norm(x, p[f"{bn}.mean"], p[f"{bn}.var"], p[f"{bn}.scale"], p[f"{bn}.bias"],
                            training=training, momentum=0.1, eps=1e-5)

    def __call__(self, x, training):
        F = self.F
        (stem, _, _, stem_bn), (c1, _, _, bn1), (c2, _, _, bn2), (down, _, _, down_bn), (c4, _, _, bn4) = CONVS
        x = F.relu(self.conv_bn(x, stem, 1, stem_bn, training))
        pool = F.max_pool2d(x, 2, 2)
        x = F.relu(self.conv_bn(pool, c1, 1, bn1, training))
        x = F.relu(self.conv_bn(x, c2, 1, bn2, training) + pool)
        x = F.relu(self.conv_bn(x, down, 2, down_bn, training))
        x = F.relu(self.conv_bn(x, c4, 1, bn4, training))
        return F.linear(x.mean((2, 3)), self.p["fc.weight"], self.p["fc.bias"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("dir", help="directory with train.npz and train_labels.npy (the images rtserve trained on)")
    parser.add_argument("--student", required=True, help="the starting student (ONNX)")
    parser.add_argument("--trained", required=True, help="rtserve's trained student (ONNX)")
    parser.add_argument("--tf", default=None, help="TensorFlow's trained student (.npz of --save-students)")
    parser.add_argument("--teacher", default=ZOO_MODEL, help="the teacher (default the zoo's fashion_cnn.onnx)")
    parser.add_argument("--mode", choices=STUDENTS, default="distilled",
                        help="distilled (--alpha), unlabelled (alpha 1) or labels_only (alpha 0)")
    parser.add_argument("--temperature", type=float, default=3.0, help="T (default 3)")
    parser.add_argument("--alpha", type=float, default=0.7, help="weight of the soft term when distilled (default 0.7)")
    parser.add_argument("--lr", type=float, default=0.05, help="base learning rate, cosine per step to 0 (default 0.05)")
    parser.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    parser.add_argument("--weight-decay", type=float, default=0.0, help="L2 weight decay added to the gradient (default 0)")
    parser.add_argument("--batch-size", type=int, default=128, help="batch size (default 128)")
    parser.add_argument("--epochs", type=int, default=1,
                        help="passes over the images, in the same order each time (default 1; rtserve must have "
                             "kept its last epoch: see its report's best_epoch)")
    args = parser.parse_args()

    import torch

    torch.set_default_dtype(torch.float64)
    F = torch.nn.functional
    images = np.load(os.path.join(args.dir, "train.npz"))["input"].astype(np.float64)
    labels = np.load(os.path.join(args.dir, "train_labels.npy")).astype(np.int64)
    teacher, student = Net(torch, args.teacher, False), Net(torch, args.student, True)
    t_, alpha = args.temperature, student_alphas(args.alpha)[args.mode]
    per_epoch = -(-len(images) // args.batch_size)
    steps = per_epoch * args.epochs
    velocity = {}
    for step in range(steps):
        rows = slice(step % per_epoch * args.batch_size, (step % per_epoch + 1) * args.batch_size)
        x, y = torch.tensor(images[rows]), torch.tensor(labels[rows])
        with torch.no_grad():
            log_p = F.log_softmax(teacher(x, False) / t_, 1)
        logits = student(x, True)
        kl = (log_p.exp() * (log_p - F.log_softmax(logits / t_, 1))).sum(1)
        loss = (alpha * t_ * t_ * kl + (1 - alpha) * F.cross_entropy(logits, y, reduction="none")).mean()
        for v in student.p.values():
            v.grad = None
        loss.backward()
        lr = args.lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        with torch.no_grad():
            for name, v in student.p.items():
                if v.grad is None:
                    continue
                g = v.grad + args.weight_decay * v
                velocity[name] = g if name not in velocity else args.momentum * velocity[name] + g
                v -= lr * velocity[name]
        if step in (0, steps - 1):
            print(f"step {step}: loss {loss.item():.6f}")

    start = onnx_initialisers(args.student)
    trained = {"rtserve": onnx_initialisers(args.trained)}
    if args.tf:
        trained["TensorFlow"] = dict(np.load(args.tf))
    worst = {side: 0.0 for side in trained}
    print(f"{steps} steps; per tensor: |replay - start|, then |side - replay| / |replay - start|")
    for name, v in student.p.items():
        replay = v.detach().numpy()
        moved = np.linalg.norm(replay - start[name])
        if moved < 1e-6:  # a conv bias ahead of BatchNormalization: no gradient, nothing to compare
            continue
        errors = {side: np.linalg.norm(w[name].astype(np.float64) - replay) / moved for side, w in trained.items()}
        for side, e in errors.items():
            worst[side] = max(worst[side], e)
        print(f"  {name:20s} {moved:.3e}  " + "  ".join(f"{side} {e:.1e}" for side, e in errors.items()))
    print("largest: " + ", ".join(f"{side} {e:.1e}" for side, e in worst.items()))


if __name__ == "__main__":
    main()
