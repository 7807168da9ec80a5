#!/usr/bin/env python3
"""`fashion_student`: a small hand-written Fashion-MNIST student for `rtserve optimize distill --student`.

Needs numpy and onnx only. The teacher is the zoo's `fashion_cnn` (examples/optimize/fashion_cnn.onnx,
written by fashion_cnn.py: 6,548,608 multiply-adds per image); this student has the same input and
output, 0.070x of its multiply-adds and 8 nodes against the teacher's 20, so that on ONNX Runtime
at one thread it is not dominated by per-call and per-node overhead the way `--student-width 0.3`
(the teacher's 20 nodes, 0.105x of its multiply-adds, only 2.3-2.8x faster) is.

  python scripts/optimize/fashion_student.py init [--seed 0] [--out examples/optimize/fashion_student_init.onnx]

`init` writes the untrained model (opset 17, ir_version 8, every node named):

  input  FLOAT [N,1,28,28]  (pixels / 255, NCHW, as fashion_cnn)
  patch1   Conv 1->32 k2 s2 p0    + patch1_bn BatchNormalization + patch1_relu Relu  -> [32,14,14]
  patch2   Conv 32->64 k2 s2 p0   + patch2_bn BatchNormalization + patch2_relu Relu  -> [64,7,7]
  flatten  Flatten(axis 1)        -> [3136]   (no pooling: the classifier sees where each feature is)
  fc       Gemm 3136->10 (transB=1)
  logits FLOAT [N,10]

Multiply-adds per image (convolutions: output positions x out x in x k x k; BatchNorm and Relu
fold into the Conv or are element-wise, not counted, as for the teacher's 6,548,608):

  patch1  14*14 * 32 *  1 * 2*2 =  25,088
  patch2   7*7  * 64 * 32 * 2*2 = 401,408
  fc       3136 * 10            =  31,360
  total                           457,856   (0.070x of the teacher's 6,548,608; <= 1/8 = 818,576)

Weights: 39,978 trained (patch1 32*4 + 32, patch2 64*128 + 64, fc 10*3136 + 10, BatchNorm
scale and bias 2 x 96) against the teacher's 75,338; 40,170 float values with the BatchNorm
running statistics (what `distill` reports) against 75,786.

The two non-overlapping strided convolutions (a "patchify" stem) shrink 28x28 to 7x7 in two
nodes; on the 2-core development VM (ONNX Runtime 1.32.0, one thread) it runs 6.0x faster than
the teacher at batch 1 and 10.5x at batch 8 (0.009 against 0.054 ms, 0.038 against 0.40 ms;
`rtserve optimize evaluate --engine onnxruntime --threads 1 --latency-runs 300`).

Initialisers: `<conv>.weight` [out,in,2,2] and `fc.weight` [10,3136] He/Kaiming normal
(std = sqrt(2 / fan_in)), drawn in graph order (patch1, patch2, fc) from
numpy.random.default_rng(seed); `<conv>.bias`, `fc.bias` zero; each BatchNormalization
(epsilon 1e-5, momentum 0.9) has `<bn>.scale` = 1, `<bn>.bias` = 0, `<bn>.mean` = 0,
`<bn>.var` = 1. Every operator is one the trainer supports (Conv, BatchNormalization, Relu,
Flatten, Gemm).

Distilled from the teacher with scripts/optimize/fashion_student.sh (docs/training.md).
"""
import argparse
import os

from fashion_cnn import Builder, save

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.normpath(os.path.join(HERE, "..", "..", "examples", "optimize", "fashion_student_init.onnx"))
TEACHER_MACS = 6_548_608

# (name, in channels, out channels, kernel = stride, batchnorm name, relu name) in graph order.
CONVS = [
    ("patch1", 1, 32, 2, "patch1_bn", "patch1_relu"),
    ("patch2", 32, 64, 2, "patch2_bn", "patch2_relu"),
]
CLASSES = 10


def multiply_adds():
    """Multiply-adds per image of the convolutions and the classifier, and the flattened width."""
    side, channels, total = 28, 1, 0
    for _, cin, cout, k, _, _ in CONVS:
        side = (side - k) // k + 1
        total += side * side * cout * cin * k * k
        channels = cout
    features = channels * side * side
    return total + features * CLASSES, features


def build(seed=0):
    """The untrained `fashion_student` as an onnx.ModelProto."""
    b = Builder(seed)
    x = "input"
    for name, cin, cout, k, bn, relu in CONVS:
        x = b.conv_bn(name, cin, cout, bn, x, relu, kernel=k, stride=k, pad=0)
    _, features = multiply_adds()
    b.node("Flatten", [x], ["flatten.out"], name="flatten", axis=1)
    b.classifier("flatten.out", features)
    return b.model("fashion_student", "fashion_student.py")


def cmd_init(args):
    model = build(args.seed)
    params = save(model, args.out)
    macs, _ = multiply_adds()
    print(f"wrote {args.out} (seed {args.seed}, {len(model.graph.node)} nodes, {params:,} parameters, "
          f"{macs:,} multiply-adds per image = {macs / TEACHER_MACS:.3f}x fashion_cnn's)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("init", help="write the untrained fashion_student ONNX model")
    p.add_argument("--seed", type=int, default=0, help="seed of numpy.random.default_rng (default 0)")
    p.add_argument("--out", default=DEFAULT_OUT,
                   help="output ONNX file (default examples/optimize/fashion_student_init.onnx)")
    p.set_defaults(func=cmd_init)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
