#!/usr/bin/env bash
# Quantization-aware training of the zoo's EfficientNet-Lite0 with the stem quantized
# (docs/training.md, "QAT on EfficientNet-Lite0"): self-distillation from the FP32 model on
# augmented crops of the calibration photos, judged on held-out photos as docs/optimize.md does.
#   data (scripts/optimize/photo_sets.py, scikit-image's photos from the zoo cache):
#     training.npz   384 crops/flips of the 6 calibration photos (no labels: the FP32 model's
#                    outputs are the targets)
#     tuning.npz     96 crops of 6 other photos: chooses the best epoch (agreement with FP32),
#                    and chose the recipe below
#     evaluation.npz 204 samples of 4 photos in neither set: reported only, never used to choose
#   1. post-training INT8 (`quantize`, MinMax, on the first 48 training samples: the ranges QAT
#      starts from) -> OUT/ptq.onnx
#   2. QAT from the same ranges: AdamW lr 3e-5, ranges frozen, batch 8, EPOCHS epochs (16), T 3
#      (chosen on tuning.npz among 8 runs, docs/training.md) -> OUT/qat.onnx; about 30 minutes
#      and 11 GB of memory on the 2-core development VM
#   3. each against the FP32 model on evaluation.npz with ONNX Runtime -> OUT/<name>.md
#
#   scripts/optimize/effnet_qat.sh [OUT] [EPOCHS]   (default /tmp/effnet_qat, 16)
#   RTSERVE=path/to/rtserve                         (default target/release/rtserve)
#   SEED=N                                          QAT's shuffling seed (default 0)
set -euo pipefail
cd "$(dirname "$0")/../.."
RTSERVE=${RTSERVE:-target/release/rtserve}
OUT=${1:-/tmp/effnet_qat}
EPOCHS=${2:-16}
SEED=${SEED:-0}
P=$OUT/photos
MODEL=models/zoo/efficientnet_lite0/1/model.onnx
[ -f "$MODEL" ] || { echo "no $MODEL: python3 scripts/model_zoo.py fetch" >&2; exit 1; }
mkdir -p "$OUT"
[ -f "$P/tuning.npz" ] || python3 scripts/optimize/photo_sets.py "$P"

"$RTSERVE" optimize quantize --engine onnxruntime --model "$MODEL" --out "$OUT/ptq.onnx" \
    --calibration "$P/training.npz" --calibration-limit 48 --json >"$OUT/ptq.json"
"$RTSERVE" optimize qat --engine onnxruntime --model "$MODEL" --teacher "$MODEL" --out "$OUT/qat.onnx" \
    --data "$P/training.npz" --heldout-data "$P/tuning.npz" --calibration-limit 48 \
    --epochs "$EPOCHS" --lr 0.00003 --optimizer adamw --freeze-ranges --batch-size 8 --seed "$SEED" \
    --json >"$OUT/qat.json"
for name in ptq qat; do
    "$RTSERVE" optimize evaluate --engine onnxruntime --reference "$MODEL" --candidate "$OUT/$name.onnx" \
        --data "$P/evaluation.npz" --latency-runs 30 >"$OUT/$name.md"
done
grep -H "top-1 agreement" "$OUT"/ptq.md "$OUT"/qat.md
