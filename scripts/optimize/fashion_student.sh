#!/usr/bin/env bash
# The hand-written Fashion-MNIST student (docs/training.md, "A hand-written student"), end to end,
# with the splits of fashion_cnn.sh (train = first 55,000 training images, held-out = last 5,000,
# test = t10k, reported only) and the zoo's fashion_cnn (examples/optimize/fashion_cnn.onnx) as
# teacher:
#   1. examples/optimize/fashion_student_init.onnx (scripts/optimize/fashion_student.py init:
#      two 2x2 stride-2 Conv+BN+Relu, Flatten, Gemm; 457,856 multiply-adds per image, 0.070x the
#      teacher's), trained three ways with the same epochs, lr, batch and seed:
#        distilled with labels          -> OUT/distilled.onnx
#        distilled without labels       -> OUT/unlabelled.onnx   (--unlabelled, alpha forced to 1)
#        labels alone (optimize train)  -> OUT/labels_only.onnx
#   2. each against the teacher on the test split on ONNX Runtime with one thread: accuracy and
#      latency at batch 1 and 8 (median of 300 runs) -> OUT/<name>.md.
# Chosen on the held-out split only (the test split was never used to choose): the architecture
# (12 candidates timed untrained against the teacher; the 5 at >= 5.5x at batch 1 trained on
# labels alone for 3 epochs, the best two for 6; this one is level with the best and faster),
# then the distillation recipe with labels at 10 epochs: lr 0.05 (against 0.1 and 0.02), T 2
# (against 3, 4, 6), alpha 0.7 (against 0.5 and 0.9 at T 2 and T 3), and 10 epochs (15 did
# not separate from it: 91.98 % against 91.90 % held-out). The unlabelled and labels-only
# runs take the same epochs, lr, batch and seed; their own settings were not tuned.
# About 10 minutes on the 2-core development VM (each epoch 10-15 s).
#
#   scripts/optimize/fashion_student.sh [OUT]  (default OUT /tmp/fashion_student)
#   RTSERVE=path/to/rtserve                    (default target/release/rtserve)
#   SEED=N                                     (the trainer's shuffling; default 0, the chosen run)
#   EPOCHS=N                                   (default 10, the recipe chosen first and run over
#                                               ten seeds; 20, chosen later on held-out and about
#                                               twice as long: docs/training.md, "Twenty epochs")
set -euo pipefail
cd "$(dirname "$0")/../.."
RTSERVE=${RTSERVE:-target/release/rtserve}
OUT=${1:-/tmp/fashion_student}
D=$OUT/data
TEACHER=examples/optimize/fashion_cnn.onnx
STUDENT=examples/optimize/fashion_student_init.onnx
mkdir -p "$D"
[ -f "$D/test_labels.npy" ] || python3 scripts/optimize/fashion_cnn.py export "$D"

RECIPE=(--epochs "${EPOCHS:-10}" --lr 0.05 --batch-size 128 --seed "${SEED:-0}" --weight-decay 5e-4)
DISTILL=(--temperature 2 --alpha 0.7 --engine onnxruntime)
SPLITS=(--data "$D/train.npz" --labels "$D/train_labels.npy"
    --heldout-data "$D/heldout.npz" --heldout-labels "$D/heldout_labels.npy"
    --test-data "$D/test.npz" --test-labels "$D/test_labels.npy")

"$RTSERVE" optimize distill --teacher "$TEACHER" --student "$STUDENT" --out "$OUT/distilled.onnx" \
    "${SPLITS[@]}" "${RECIPE[@]}" "${DISTILL[@]}" --json >"$OUT/distilled.json"
"$RTSERVE" optimize distill --teacher "$TEACHER" --student "$STUDENT" --out "$OUT/unlabelled.onnx" \
    "${SPLITS[@]}" "${RECIPE[@]}" "${DISTILL[@]}" --unlabelled --json >"$OUT/unlabelled.json"
"$RTSERVE" optimize train --model "$STUDENT" --out "$OUT/labels_only.onnx" \
    "${SPLITS[@]}" "${RECIPE[@]}" --json >"$OUT/labels_only.json"

for name in distilled unlabelled labels_only; do
    "$RTSERVE" optimize evaluate --engine onnxruntime --threads 1 --reference "$TEACHER" \
        --candidate "$OUT/$name.onnx" --data "$D/test.npz" --labels "$D/test_labels.npy" \
        --latency-runs 300 >"$OUT/$name.md"
done
tail -n +1 "$OUT"/*.md
