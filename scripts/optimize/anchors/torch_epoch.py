#!/usr/bin/env python3
"""Time one training epoch of `fashion_cnn` in PyTorch CPU: the speed anchor for rtserve's trainer.

Runs in the anchors venv (see README.md), never in CI. Reads DIR/train.npz + DIR/train_labels.npy
(written by `python scripts/optimize/fashion_cnn.py export DIR`), builds fashion_cnn in PyTorch (NCHW,
the same layers as the ONNX model) with the weights of examples/optimize/fashion_cnn_init.onnx,
checks its forward pass against the ONNX model (onnx.reference) on 16 images, then with
torch.set_num_threads(--threads) runs one warm-up step followed by one timed epoch (shuffled
with --seed, SGD momentum 0.9, cross-entropy, BatchNorm in training mode) and prints one JSON line:
seconds per epoch, images/s, final and mean loss.

  python scripts/optimize/anchors/torch_epoch.py DIR [--threads 2] [--batch-size 128] [--lr 0.05] [--limit N]
"""
import argparse
import json
import os
import platform
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_INIT = os.path.normpath(os.path.join(HERE, "..", "..", "..", "examples", "optimize", "fashion_cnn_init.onnx"))


def build_model(torch):
    """fashion_cnn as a torch.nn.Module; parameter names map to ONNX initialisers in load_onnx_weights."""
    nn = torch.nn

    def conv_bn(cin, cout, stride=1):
        # BatchNorm2d momentum 0.1 is ONNX/Keras momentum 0.9 (running = 0.9 running + 0.1 batch).
        return nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.BatchNorm2d(cout, eps=1e-5, momentum=0.1)

    class FashionCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.stem_bn = conv_bn(1, 32)
            self.pool = nn.MaxPool2d(2, 2)
            self.conv1, self.bn1 = conv_bn(32, 32)
            self.conv2, self.bn2 = conv_bn(32, 32)
            self.down, self.down_bn = conv_bn(32, 64, stride=2)
            self.conv4, self.conv4_bn = conv_bn(64, 64)
            self.fc = nn.Linear(64, 10)

        def forward(self, x):
            relu = torch.relu
            x = self.pool(relu(self.stem_bn(self.stem(x))))
            y = relu(self.bn1(self.conv1(x)))
            x = relu(self.bn2(self.conv2(y)) + x)
            x = relu(self.down_bn(self.down(x)))
            x = relu(self.conv4_bn(self.conv4(x)))
            return self.fc(torch.flatten(x.mean((2, 3), keepdim=True), 1))

    return FashionCNN()


# torch module name -> ONNX name, for convolutions / fc and for batch norms.
LAYERS = {"stem": "stem", "conv1": "block.conv1", "conv2": "block.conv2", "down": "down", "conv4": "conv4", "fc": "fc"}
NORMS = {"stem_bn": "stem_bn", "bn1": "block.bn1", "bn2": "block.bn2", "down_bn": "down_bn", "conv4_bn": "conv4_bn"}


def load_onnx_weights(torch, model, path):
    """Copy the initialisers of the ONNX fashion_cnn into the torch model (same layouts: OIHW, [out,in])."""
    import onnx
    from onnx import numpy_helper

    w = {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}
    with torch.no_grad():
        for mod, name in LAYERS.items():
            getattr(model, mod).weight.copy_(torch.from_numpy(w[f"{name}.weight"].copy()))
            getattr(model, mod).bias.copy_(torch.from_numpy(w[f"{name}.bias"].copy()))
        for mod, name in NORMS.items():
            bn = getattr(model, mod)
            for attr, key in [("weight", "scale"), ("bias", "bias"), ("running_mean", "mean"), ("running_var", "var")]:
                getattr(bn, attr).copy_(torch.from_numpy(w[f"{name}.{key}"].copy()))


def onnx_parity(torch, model, path, x):
    """Largest |torch logits - ONNX logits| (onnx.reference.ReferenceEvaluator, eval-mode BatchNorm) on x."""
    from onnx.reference import ReferenceEvaluator

    ref = ReferenceEvaluator(path).run(None, {"input": x})[0]
    model.eval()
    with torch.no_grad():
        out = model(torch.from_numpy(x)).numpy()
    model.train()
    return float(np.max(np.abs(out - ref)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("dir", help="directory written by `fashion_cnn.py export` (reads train.npz + train_labels.npy)")
    parser.add_argument("--init", default=DEFAULT_INIT,
                        help="ONNX fashion_cnn to take the starting weights from (default examples/optimize/fashion_cnn_init.onnx); "
                             "'torch' for PyTorch's own initialisers")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--batch-size", type=int, default=128, help="batch size (default 128)")
    parser.add_argument("--lr", type=float, default=0.05, help="SGD learning rate (default 0.05)")
    parser.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shuffle and of torch (default 0)")
    parser.add_argument("--limit", type=int, default=None, help="time on the first N training images only")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    x = np.load(os.path.join(args.dir, "train.npz"))["input"]
    y = np.load(os.path.join(args.dir, "train_labels.npy"))
    if args.limit is not None:
        x, y = x[:args.limit], y[:args.limit]
    x, y = torch.from_numpy(np.ascontiguousarray(x, np.float32)), torch.from_numpy(y.astype(np.int64))

    model = build_model(torch)
    parity = None
    if args.init != "torch":
        load_onnx_weights(torch, model, args.init)
        parity = onnx_parity(torch, model, args.init, x[:16].numpy())
        print(f"init: {args.init}, max |torch - onnx| logits = {parity:.2e}", file=sys.stderr)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step(xb, yb):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(xb), yb)
        loss.backward()
        opt.step()
        return loss.item()

    step(x[:args.batch_size], y[:args.batch_size])  # warm-up step (allocations, kernel selection)

    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(args.seed))
    losses = []
    start = time.perf_counter()
    for i in range(0, len(x), args.batch_size):
        idx = order[i:i + args.batch_size]
        losses.append(step(x[idx], y[idx]))
    seconds = time.perf_counter() - start

    print(json.dumps({
        "anchor": "torch_epoch",
        "seconds_per_epoch": round(seconds, 3),
        "images_per_s": round(len(x) / seconds, 1),
        "final_loss": round(losses[-1], 4),
        "mean_loss": round(float(np.mean(losses)), 4),
        "images": len(x), "steps": len(losses), "batch_size": args.batch_size, "lr": args.lr,
        "momentum": args.momentum, "threads": args.threads, "seed": args.seed,
        "init_parity_max_abs": parity,
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
    }))


if __name__ == "__main__":
    main()
