#!/usr/bin/env bash
# Distillation and quantization-aware training on Fashion-MNIST (docs/training.md), with the
# splits of fashion_cnn.sh (train = first 55,000 training images, held-out = last 5,000, test =
# t10k, reported only) and the zoo's fashion_cnn (examples/optimize/fashion_cnn.onnx) as teacher
# and as the model to quantize. No recipe was tuned: the defaults (T 3, alpha 0.7, train's lr
# 0.05) for distillation, lr 0.001 for QAT, epochs fixed in advance.
#   1. students at --student-width 0.3 (10 and 20 channels for 32 and 64: 0.105 of the
#      teacher's multiply-adds, counted from the shapes in docs/training.md), 2 epochs:
#      distilled with labels, distilled without labels (--unlabelled), and the same student
#      (channels pruned the same way) trained on labels alone (prune --method channels);
#   2. QAT, 1 epoch, against post-training INT8 (`quantize`, 512 calibration images);
#   3. each model against the teacher on the test split on ONNX Runtime with one thread:
#      accuracy and latency at batch 1 and 8 -> OUT/<name>.md.
#
#   scripts/optimize/distill_qat.sh [OUT]      (default OUT /tmp/distill_qat)
#   RTSERVE=path/to/rtserve                    (default target/release/rtserve)
#   SEED=N                                     (default 0: the shuffling of every run)
set -euo pipefail
cd "$(dirname "$0")/../.."
RTSERVE=${RTSERVE:-target/release/rtserve}
SEED=${SEED:-0}
OUT=${1:-/tmp/distill_qat}
D=$OUT/data
TEACHER=examples/optimize/fashion_cnn.onnx
mkdir -p "$D"
[ -f "$D/test_labels.npy" ] || python3 scripts/optimize/fashion_cnn.py export "$D"

SPLITS=(--data "$D/train.npz" --labels "$D/train_labels.npy"
    --heldout-data "$D/heldout.npz" --heldout-labels "$D/heldout_labels.npy"
    --test-data "$D/test.npz" --test-labels "$D/test_labels.npy" --batch-size 128 --seed "$SEED"
    --engine onnxruntime)

evaluate() { # NAME
    "$RTSERVE" optimize evaluate --engine onnxruntime --threads 1 --reference "$TEACHER" \
        --candidate "$OUT/$1.onnx" --data "$D/test.npz" --labels "$D/test_labels.npy" \
        --latency-runs 300 >"$OUT/$1.md"
}

"$RTSERVE" optimize distill --teacher "$TEACHER" --student-width 0.3 --out "$OUT/distilled.onnx" \
    "${SPLITS[@]}" --epochs 2 --json >"$OUT/distilled.json"
"$RTSERVE" optimize distill --teacher "$TEACHER" --student-width 0.3 --out "$OUT/unlabelled.onnx" \
    "${SPLITS[@]}" --epochs 2 --unlabelled --json >"$OUT/unlabelled.json"
"$RTSERVE" optimize prune --method channels --sparsity 0.7 --model "$TEACHER" \
    --out "$OUT/labels_only.onnx" "${SPLITS[@]}" --epochs 2 --json >"$OUT/labels_only.json"

"$RTSERVE" optimize qat --model "$TEACHER" --out "$OUT/qat.onnx" "${SPLITS[@]}" --epochs 1 \
    --lr 0.001 --json >"$OUT/qat.json"
"$RTSERVE" optimize quantize --engine onnxruntime --model "$TEACHER" --out "$OUT/ptq.onnx" \
    --calibration "$D/train.npz" --calibration-limit 512 --json >"$OUT/ptq.json"

for name in distilled unlabelled labels_only qat ptq; do evaluate "$name"; done
tail -n +1 "$OUT"/*.md
