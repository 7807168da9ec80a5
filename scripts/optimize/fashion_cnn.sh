#!/usr/bin/env bash
# The Fashion-MNIST benchmark of docs/training.md, end to end with rtserve's own trainer:
#   1. the splits from Debian's dataset-fashion-mnist (scripts/optimize/fashion_cnn.py export):
#      train = the first 55,000 training images, held-out = the last 5,000, test = t10k;
#   2. the zoo's model: examples/optimize/fashion_cnn_init.onnx trained 12 epochs
#      -> OUT/fashion_cnn.onnx (kept as examples/optimize/fashion_cnn.onnx);
#   3. the pruning benchmark, with TF-MOT's anchor epochs (8 dense + 2 fine-tuning):
#      8 epochs -> OUT/dense8.onnx, then 50 % pruned three ways:
#        channels, 2 epochs  -> OUT/channels2.onnx   (the anchor's fine-tuning epochs)
#        channels, 4 epochs  -> OUT/channels4.onnx   (the held-out split's choice)
#        magnitude, 2 epochs -> OUT/magnitude.onnx   (TF-MOT's ConstantSparsity(0.5))
#   4. each pruned model against OUT/dense8.onnx on the test split: accuracy, and latency on
#      ONNX Runtime at batch 1 and 8 with one thread (what `rtserve serve` picks for a model
#      under a millisecond) -> OUT/<name>.md.
# Learning rates and epochs were chosen on the held-out split; the test split is only
# reported. About 35 minutes on the 2-core development VM.
#
#   scripts/optimize/fashion_cnn.sh [OUT]      (default OUT /tmp/fashion_cnn)
#   RTSERVE=path/to/rtserve                    (default target/release/rtserve)
set -euo pipefail
cd "$(dirname "$0")/../.."
RTSERVE=${RTSERVE:-target/release/rtserve}
OUT=${1:-/tmp/fashion_cnn}
D=$OUT/data
mkdir -p "$D"
[ -f "$D/test_labels.npy" ] || python3 scripts/optimize/fashion_cnn.py export "$D"

SPLITS=(--data "$D/train.npz" --labels "$D/train_labels.npy"
    --heldout-data "$D/heldout.npz" --heldout-labels "$D/heldout_labels.npy"
    --test-data "$D/test.npz" --test-labels "$D/test_labels.npy" --batch-size 128 --seed 0 --weight-decay 5e-4)

for epochs in 12 8; do
    name=$([ "$epochs" = 12 ] && echo fashion_cnn || echo dense8)
    "$RTSERVE" optimize train --model examples/optimize/fashion_cnn_init.onnx --out "$OUT/$name.onnx" \
        "${SPLITS[@]}" --epochs "$epochs" --lr 0.05 --json >"$OUT/$name.json"
done

prune() { # NAME, then the method's flags
    local name=$1
    shift
    "$RTSERVE" optimize prune --sparsity 0.5 --model "$OUT/dense8.onnx" --out "$OUT/$name.onnx" \
        "${SPLITS[@]}" "$@" --json >"$OUT/$name.json"
    "$RTSERVE" optimize evaluate --engine onnxruntime --threads 1 --reference "$OUT/dense8.onnx" \
        --candidate "$OUT/$name.onnx" --data "$D/test.npz" --labels "$D/test_labels.npy" \
        --latency-runs 500 >"$OUT/$name.md"
}
prune channels2 --method channels --epochs 2 --lr 0.05
prune channels4 --method channels --epochs 4 --lr 0.05
prune magnitude --method magnitude --sparsity-schedule constant --epochs 2 --lr 0.005
tail -n +1 "$OUT"/*.md
