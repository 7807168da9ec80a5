#!/usr/bin/env bash
# The seed's ResNet-50 table on an NVIDIA GPU, from a machine with nothing installed but the
# driver: installs what it needs from the package registries, builds rtserve, makes ResNet-50
# FP32 / FP16 / INT8, serves each row from one `rtserve serve`, and prints Markdown tables
# (latency and throughput per row, outputs against a CPU FP32 reference, ONNX Runtime's own
# Python session beside rtserve at batch 32, the time of each step).
#
#   bash scripts/gpu/check.sh                 # on the GPU machine (driver r580 or later)
#   bash scripts/gpu/check.sh --cpu-dry-run   # the same flow on a CPU-only machine, as far as
#                                             # a CPU allows: no installs, CPU rows, no TensorRT
#
# Installs (GPU mode): a C compiler, curl and python3-venv with apt-get when they are missing
# (as root), Rust with rustup when there is no cargo, and scripts/gpu/requirements.txt into
# scripts/gpu/.venv. Models go to models/gpu/ and TensorRT's engines to models/gpu/trt-cache/,
# both kept between runs (the engines make a second run minutes shorter).
#
# Environment:
#   RTSERVE_BIN      use this binary instead of `cargo build --release -p rtserve`
#   CARGO_TARGET_DIR where cargo builds (default: target/)
#   CHECK_WORK       keep the work folder (repository, logs, JSON results) here
#   CHECK_WARMUP, CHECK_DURATION   per bench step (default 2s and 10s; dry run 1s and 3s)
#
# Exit status: 0 when every row that could run ran and every output is within its tolerance;
# 1 otherwise (the tables are printed either way); 2 when a step before the rows failed.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

MODE=gpu
for arg in "$@"; do
  case $arg in
    --cpu-dry-run) MODE=cpu ;;
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg (--cpu-dry-run, --help)" >&2; exit 2 ;;
  esac
done

if [ "$MODE" = gpu ]; then
  BATCH=32 WARMUP=${CHECK_WARMUP:-2s} DURATION=${CHECK_DURATION:-10s} BATCHN_DURATION=6s
  REF_SECONDS=5 WARM_BUDGET=600 REF_BUDGET=300 RUN_BUDGET=480
else
  BATCH=4 WARMUP=${CHECK_WARMUP:-1s} DURATION=${CHECK_DURATION:-3s} BATCHN_DURATION=3s
  REF_SECONDS=3 WARM_BUDGET=120 REF_BUDGET=120 RUN_BUDGET=480
fi
seconds() { local d=${1%s}; echo "${d%.*}"; } # "10s" -> 10
BENCH_STEP_S=$(($(seconds "$WARMUP") + $(seconds "$DURATION")))

T0=$(date +%s)
say() { printf '[%4ds] %s\n' "$(($(date +%s) - T0))" "$*" >&2; }
die() { say "error: $*"; exit 2; }

if [ -n "${CHECK_WORK:-}" ]; then
  WORK=$CHECK_WORK
  rm -rf "$WORK/repo" "$WORK/results"
  mkdir -p "$WORK"
else
  WORK=$(mktemp -d)
fi
REPO=$WORK/repo RES=$WORK/results
mkdir -p "$REPO" "$RES"
SERVER=
# shellcheck disable=SC2317 # called by the trap
cleanup() {
  if [ -n "$SERVER" ]; then kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; fi
  if [ -z "${CHECK_WORK:-}" ]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT

STEP='' STEP_T0='' STEP_BUDGET=''
begin() { STEP=$1 STEP_BUDGET=$2 STEP_T0=$(date +%s); say "== $STEP (budget ${STEP_BUDGET}s)"; }
end() {
  local took=$(($(date +%s) - STEP_T0))
  printf '%s\t%s\t%s\n' "$STEP" "$took" "$STEP_BUDGET" >> "$RES/steps.tsv"
  say "   $STEP: ${took}s"
}

fetch() { # URL FILE
  if command -v curl > /dev/null; then
    curl --proto '=https' --tlsv1.2 -sSf "$1" -o "$2"
  else
    python3 -c 'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])' "$1" "$2"
  fi
}

# --- install ------------------------------------------------------------------------------------

# A Python of at least 3.11 (onnxruntime-gpu 1.31 has wheels for 3.11 to 3.14).
find_python() {
  local p
  for p in python3 python3.13 python3.12 python3.11 python3.14; do
    if command -v "$p" > /dev/null &&
      "$p" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2> /dev/null; then
      command -v "$p"
      return
    fi
  done
}

install_system() {
  local need=()
  command -v cc > /dev/null || need+=(build-essential)
  command -v curl > /dev/null || need+=(curl ca-certificates)
  [ -n "$(find_python)" ] || need+=(python3 python3-venv)
  [ ${#need[@]} -eq 0 ] && return
  if ! command -v apt-get > /dev/null || [ "$(id -u)" != 0 ]; then
    die "missing ${need[*]}: install them (this script installs them with apt-get as root)"
  fi
  say "apt-get install ${need[*]}"
  timeout 600 apt-get update -q > "$RES/apt.log" 2>&1
  DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -q "${need[@]}" >> "$RES/apt.log" 2>&1 ||
    die "apt-get install failed: $RES/apt.log"
  if [ -z "$(find_python)" ]; then # Ubuntu 22.04: python3 is 3.10, python3.11 is a package
    DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -q python3.11 python3.11-venv \
      >> "$RES/apt.log" 2>&1 || true
  fi
}

install_rust() {
  if command -v cargo > /dev/null; then return; fi
  if [ -x "$HOME/.cargo/bin/cargo" ]; then PATH=$HOME/.cargo/bin:$PATH; return; fi
  say "no cargo: installing Rust with rustup"
  fetch https://sh.rustup.rs "$WORK/rustup-init.sh"
  timeout 900 sh "$WORK/rustup-init.sh" -y --profile minimal --no-modify-path > "$RES/rustup.log" 2>&1 ||
    die "rustup failed: $RES/rustup.log"
  PATH=$HOME/.cargo/bin:$PATH
}

VENV=$ROOT/scripts/gpu/.venv
REQ=$ROOT/scripts/gpu/requirements.txt
TRT_SKIP=
install_python() {
  local base stamp
  base=$(find_python)
  [ -n "$base" ] || die "no Python 3.11 or later with venv (onnxruntime-gpu 1.31 needs it)"
  stamp=$(sha256sum "$REQ" | cut -c1-16)
  if [ -x "$VENV/bin/python3" ] && [ "$(cat "$VENV/.installed" 2> /dev/null)" = "$stamp" ]; then
    say "scripts/gpu/.venv is up to date with requirements.txt"
  else
    [ -x "$VENV/bin/python3" ] || "$base" -m venv "$VENV"
    grep -v '^tensorrt' "$REQ" > "$WORK/requirements-core.txt"
    say "pip install scripts/gpu/requirements.txt (about 3 GB of CUDA wheels)"
    timeout 1200 "$VENV/bin/python3" -m pip install -q --disable-pip-version-check \
      -r "$WORK/requirements-core.txt" > "$RES/pip.log" 2>&1 || die "pip install failed: $RES/pip.log"
    say "pip install $(grep '^tensorrt' "$REQ")"
    # shellcheck disable=SC2046 # one requirement a word
    if timeout 1200 "$VENV/bin/python3" -m pip install -q --disable-pip-version-check \
      -c "$WORK/requirements-core.txt" $(grep '^tensorrt' "$REQ") >> "$RES/pip.log" 2>&1; then
      echo "$stamp" > "$VENV/.installed"
    else
      say "TensorRT did not install (tail of $RES/pip.log below); the TensorRT rows are skipped"
      tail -5 "$RES/pip.log" >&2
    fi
  fi
  PY=$VENV/bin/python3
  PATH=$VENV/bin:$PATH # rtserve finds libonnxruntime through `python3 -c "import importlib..."`
}

# The libraries of the CUDA wheels and TensorRT, for rtserve (dlopen) and ONNX Runtime's providers.
gpu_library_path() {
  local site dirs
  site=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  dirs=$(find "$site/nvidia" -mindepth 2 -maxdepth 3 -type d -name lib 2> /dev/null | sort | paste -sd: -)
  if [ -d "$site/tensorrt_libs" ]; then dirs=$dirs:$site/tensorrt_libs; fi
  echo "$dirs"
}

begin install 2700
if [ "$MODE" = gpu ]; then
  command -v nvidia-smi > /dev/null || die "no nvidia-smi: this needs the NVIDIA driver (or --cpu-dry-run)"
  DRIVER=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader -i 0)
  [ "${DRIVER%%.*}" -ge 580 ] ||
    die "driver $DRIVER: onnxruntime-gpu 1.31 (CUDA 13) needs r580 or later"
  install_system
  install_rust
  install_python
  export LD_LIBRARY_PATH
  LD_LIBRARY_PATH=$(gpu_library_path)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  if ! "$PY" -c 'import glob, sys, sysconfig
sys.exit(not glob.glob(sysconfig.get_paths()["purelib"] + "/tensorrt_libs/libnvinfer.so.10*"))'; then
    TRT_SKIP="skipped: TensorRT libraries not installed (see pip.log)"
  fi
else
  PY=$(command -v python3) || die "no python3"
  "$PY" -c 'import onnxruntime, onnx, numpy' 2> /dev/null ||
    die "the dry run uses the python3 on PATH: pip install onnxruntime onnx numpy"
  TRT_SKIP="skipped: no GPU"
fi
ORT_DYLIB_PATH=$("$PY" -c 'import glob, os, onnxruntime as o
print(sorted(glob.glob(os.path.join(os.path.dirname(o.__file__), "capi", "libonnxruntime.so*")))[0])')
export ORT_DYLIB_PATH
ORT_VERSION=$("$PY" -c 'import onnxruntime as o; print(o.__version__)')
say "ONNX Runtime $ORT_VERSION; ORT_DYLIB_PATH=$ORT_DYLIB_PATH"
end

# --- build ----------------------------------------------------------------------------------------

begin build 1800
if [ -n "${RTSERVE_BIN:-}" ]; then
  BIN=$RTSERVE_BIN
  say "RTSERVE_BIN=$BIN: not building"
else
  command -v cargo > /dev/null || die "no cargo (install Rust, or run without --cpu-dry-run)"
  timeout 1800 cargo build --release -p rtserve > "$RES/build.log" 2>&1 ||
    { tail -30 "$RES/build.log" >&2; die "cargo build failed: $RES/build.log"; }
  BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/rtserve
fi
[ -x "$BIN" ] || die "no rtserve binary at $BIN"
SERVE_HELP=$("$BIN" serve --help)
end
RUN_T0=$(date +%s)

# --- models ---------------------------------------------------------------------------------------

begin models 300
mkdir -p models/gpu
FP32=models/zoo/resnet50/1/model.onnx FP16=models/gpu/resnet50_fp16.onnx INT8=models/gpu/resnet50_int8.onnx
timeout 300 "$PY" scripts/model_zoo.py fetch --only resnet50 > "$RES/models.log" 2>&1 ||
  die "model_zoo.py failed: $RES/models.log"
if [ ! -s "$FP16" ] || [ "$FP32" -nt "$FP16" ]; then
  timeout 120 "$BIN" optimize fp16 --model "$FP32" --out "$FP16" >> "$RES/models.log" 2>&1 ||
    die "rtserve optimize fp16 failed: $RES/models.log"
fi
if [ ! -s "$INT8" ] || [ "$FP32" -nt "$INT8" ]; then # 16 seeded calibration images, as the seed's matrix
  timeout 300 "$PY" scripts/bench/quantize_resnet50.py "$INT8" --model "$FP32" --rtserve "$BIN" \
    >> "$RES/models.log" 2>&1 || die "rtserve optimize quantize failed: $RES/models.log"
fi
timeout 120 "$PY" scripts/gpu/ort_reference.py inputs --model "$FP32" --batch "$BATCH" \
  --out-dir "$WORK/inputs" > "$RES/inputs.json" || die "reference inputs failed"
say "FP32 $FP32, FP16 $FP16, INT8 $INT8; $BATCH seeded images and their CPU FP32 logits"
end

# --- rows -----------------------------------------------------------------------------------------

# id | label | precision | provider | file | provider key (ort_reference.py) | dynamic batching |
# concurrency | why it is skipped
if [ "$MODE" = gpu ]; then
  ROWS=(
    "fp32_cuda|FP32, CUDA|FP32|CUDA|$FP32|cuda|0|1|"
    "fp16_cuda|FP16, CUDA|FP16|CUDA|$FP16|cuda|0|1|"
    "fp16_trt|FP16, TensorRT|FP16|TensorRT|$FP32|tensorrt-fp16|0|1|$TRT_SKIP"
    "int8_trt|INT8, TensorRT|INT8|TensorRT|$INT8|tensorrt-int8|0|1|$TRT_SKIP"
    "int8_trt_batching|INT8, TensorRT + dynamic batching|INT8|TensorRT|$INT8|tensorrt-int8|1|1,16,64|$TRT_SKIP"
  )
else # the GPU rows on the CPU where a CPU can run them, the TensorRT rows kept and marked
  ROWS=(
    "fp32_cpu|FP32, CPU (for FP32, CUDA)|FP32|CPU|$FP32|cpu|0|1|"
    "fp16_cpu|FP16, CPU (for FP16, CUDA)|FP16|CPU|$FP16|cpu|0|1|"
    "fp16_trt|FP16, TensorRT|FP16|TensorRT|$FP32|tensorrt-fp16|0|1|$TRT_SKIP"
    "int8_trt|INT8, TensorRT|INT8|TensorRT|$INT8|tensorrt-int8|0|1|$TRT_SKIP"
    "int8_trt_batching|INT8, TensorRT + dynamic batching|INT8|TensorRT|$INT8|tensorrt-int8|1|1,16,64|$TRT_SKIP"
    "int8_cpu|INT8, CPU (for INT8, TensorRT)|INT8|CPU|$INT8|cpu|0|1|"
    "int8_cpu_batching|INT8, CPU + dynamic batching (for INT8, TensorRT + batching)|INT8|CPU|$INT8|cpu|1|1,16,64|"
  )
fi

write_model() { # id file provider-key batching
  local id=$1 file=$2 pkey=$3 batching=$4
  mkdir -p "$REPO/$id/1"
  ln -s "$ROOT/$file" "$REPO/$id/1/model.onnx"
  {
    printf 'name: "%s"\nbackend: "onnxruntime"\nmax_batch_size: %d\n' "$id" "$BATCH"
    if [ "$pkey" = cpu ]; then
      echo 'instance_group [ { kind: KIND_CPU count: 1 } ]'
    else
      echo 'instance_group [ { kind: KIND_GPU count: 1 gpus: [ 0 ] } ]'
    fi
    case $pkey in
      tensorrt-*)
        local precision=${pkey#tensorrt-}
        cat << EOF
optimization { execution_accelerators { gpu_execution_accelerator: [ {
  name: "tensorrt"
  parameters { key: "precision_mode" value: "${precision^^}" }
  parameters { key: "max_workspace_size_bytes" value: "4294967296" }
} ] } }
EOF
        ;;
    esac
    if [ "$batching" = 1 ]; then echo 'dynamic_batching { max_queue_delay_microseconds: 2000 }'; fi
  } > "$REPO/$id/config.pbtxt"
}

for row in "${ROWS[@]}"; do
  IFS='|' read -r id _ _ _ file pkey batching _ skip <<< "$row"
  if [ -z "$skip" ]; then write_model "$id" "$file" "$pkey" "$batching"; fi
done

# --- server ---------------------------------------------------------------------------------------

gpu_memory() { # MiB used on GPU 0, or nothing
  if [ "$MODE" = gpu ]; then
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 | tr -d ' ' || true
  fi
}

begin server-start 120
SERVE_FLAGS=(--model-repository "$REPO" --host 127.0.0.1 --http-port 0 --grpc-port 0
  --engine onnxruntime --model-control-mode explicit)
if [ "$MODE" = gpu ]; then
  for flag in --gpus --tensorrt-cache; do
    grep -q -- "$flag " <<< "$SERVE_HELP" || say "warning: this rtserve has no $flag (older binary?)"
  done
  if grep -q -- '--gpus ' <<< "$SERVE_HELP"; then SERVE_FLAGS+=(--gpus 0); fi
  if grep -q -- '--tensorrt-cache ' <<< "$SERVE_HELP"; then
    SERVE_FLAGS+=(--tensorrt-cache "$ROOT/models/gpu/trt-cache")
  fi
  mkdir -p models/gpu/trt-cache
fi
"$BIN" serve "${SERVE_FLAGS[@]}" > "$RES/server.log" 2>&1 &
SERVER=$!
HTTP='' GRPC=''
for _ in $(seq 1200); do
  kill -0 "$SERVER" 2> /dev/null || { tail -20 "$RES/server.log" >&2; die "the server exited"; }
  HTTP=$(grep -o 'HTTP listening on [0-9.:]*' "$RES/server.log" | awk '{print $4}' || true)
  GRPC=$(grep -o 'gRPC listening on [0-9.:]*' "$RES/server.log" | awk '{print $4}' || true)
  if [ -n "$HTTP" ] && [ -n "$GRPC" ] && curl -sf "http://$HTTP/v2/health/ready" > /dev/null; then break; fi
  sleep 0.1
done
curl -sf "http://$HTTP/v2/health/ready" > /dev/null || die "the server is not ready: $RES/server.log"
BASELINE=$(gpu_memory)
echo "$BASELINE" > "$RES/gpu_baseline.txt"
say "server $SERVER: HTTP $HTTP, gRPC $GRPC${BASELINE:+; GPU memory before any model: $BASELINE MiB}"
end

: > "$RES/rows.tsv"
clean() { tr '\t\n' '  ' | cut -c1-400; }
for row in "${ROWS[@]}"; do
  IFS='|' read -r id label precision provider file pkey batching concurrency skip <<< "$row"
  ref=$(basename "$file" .onnx | sed 's/^model$/fp32/; s/^resnet50_//').$pkey
  status=ok memory='' before=''
  if [ -n "$skip" ]; then
    printf '%s\t%s\t%s\t%s\t%s\t%s\t\t\n' "$id" "$label" "$precision" "$provider" "$ref" "$skip" >> "$RES/rows.tsv"
    continue
  fi
  steps=$(tr ',' '\n' <<< "$concurrency" | wc -l)
  begin "row $id" $((WARM_BUDGET + 60 + (steps + 1) * (BENCH_STEP_S + 30)))
  before=$(gpu_memory)
  code=$(curl -sS -o "$RES/load-$id.txt" -w '%{http_code}' -X POST --max-time "$WARM_BUDGET" \
    "http://$HTTP/v2/repository/models/$id/load" || true)
  if [ "$code" != 200 ]; then
    status="failed: load HTTP $code: $(clean < "$RES/load-$id.txt")"
  elif ! timeout "$WARM_BUDGET" "$PY" scripts/gpu/ort_reference.py server --url "http://$HTTP" --model "$id" \
    --inputs "$WORK/inputs" --check "${precision,,}" --json "$RES/check-$id.json" > "$RES/check-$id.txt" 2>&1; then
    status="failed: first requests: $(tail -1 "$RES/check-$id.txt" | clean)"
  else
    say "   outputs: $(tr -d '\n ' < "$RES/check-$id.json" | grep -o '"rel":[^,]*,"top1_agreement":[^,]*,"finite":[^,]*,"pass":[a-z]*')"
    timeout $((steps * (BENCH_STEP_S + 30))) "$BIN" bench --url "grpc://$GRPC" --model "$id" \
      --concurrency "$concurrency" --warmup "$WARMUP" --duration "$DURATION" --timeout 60s \
      --distinct 64 --metrics-url "http://$HTTP" --server-pid "$SERVER" --quiet \
      --json "$RES/bench-$id.json" > "$RES/bench-$id.txt" 2>&1 ||
      status="failed: rtserve bench: $(tail -1 "$RES/bench-$id.txt" | clean)"
    memory=$(gpu_memory)
    if [ "$batching" = 0 ]; then # the batch-N figure beside ONNX Runtime's own session
      timeout $((BENCH_STEP_S + 60)) "$BIN" bench --url "grpc://$GRPC" --model "$id" --batch "$BATCH" \
        --concurrency 2 --warmup 2s --duration "$BATCHN_DURATION" --timeout 60s --distinct 8 --quiet \
        --json "$RES/batchn-$id.json" > "$RES/batchn-$id.txt" 2>&1 ||
        say "   batch-$BATCH bench failed: $(tail -1 "$RES/batchn-$id.txt")"
    fi
  fi
  curl -sS -o /dev/null -X POST --max-time 60 "http://$HTTP/v2/repository/models/$id/unload" || true
  if [ "$status" != ok ]; then
    say "   $status"
    tail -3 "$RES/server.log" >&2
  fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$id" "$label" "$precision" "$provider" "$ref" "$status" \
    "$memory" "$before" >> "$RES/rows.tsv"
  end
done
kill "$SERVER" 2> /dev/null || true
wait "$SERVER" 2> /dev/null || true
SERVER=

# --- ONNX Runtime's own session, same files and providers, batch N ---------------------------------

declare -A SESSIONS_RUN=()
for row in "${ROWS[@]}"; do
  IFS='|' read -r _ _ precision _ file pkey _ _ skip <<< "$row"
  ref=$(basename "$file" .onnx | sed 's/^model$/fp32/; s/^resnet50_//').$pkey
  if [ -n "$skip" ] || [ -n "${SESSIONS_RUN[$ref]:-}" ]; then continue; fi
  SESSIONS_RUN[$ref]=1
  begin "ort-session $ref" "$REF_BUDGET"
  timeout "$REF_BUDGET" "$PY" scripts/gpu/ort_reference.py session --model "$file" --provider "$pkey" \
    --inputs "$WORK/inputs" --check "${precision,,}" --seconds "$REF_SECONDS" \
    --trt-cache "$ROOT/models/gpu/trt-cache-ort" --json "$RES/ort-$ref.json" \
    > /dev/null 2> "$RES/ort-$ref.err" || say "   failed: $(tail -1 "$RES/ort-$ref.err")"
  end
done

# --- tables ---------------------------------------------------------------------------------------

RUN_S=$(($(date +%s) - RUN_T0))
echo
if [ "$MODE" = gpu ]; then echo "## ResNet-50 on rtserve: scripts/gpu/check.sh"
else echo "## ResNet-50 on rtserve: scripts/gpu/check.sh --cpu-dry-run"; fi
echo
if [ "$MODE" = gpu ]; then
  echo "GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader -i 0)" \
    "(driver, MiB); GPU memory with the server up and no model loaded: ${BASELINE:-?} MiB"
else
  echo "No GPU: CPU rows stand in for the CUDA ones, TensorRT rows are skipped." \
    "CPU: $(nproc) × $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
fi
SOURCE=$(git rev-parse --short HEAD 2> /dev/null || echo 'not a git checkout')
if [ "$SOURCE" != 'not a git checkout' ] && ! git diff --quiet HEAD -- crates; then SOURCE+=', crates/ modified'; fi
echo "rtserve $("$BIN" --version | awk '{print $2}') ($SOURCE);" \
  "ONNX Runtime $ORT_VERSION; bench: gRPC, $WARMUP warm-up, $DURATION window per step;" \
  "$(date -u '+%Y-%m-%d %H:%M UTC'); load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
rc=0
"$PY" scripts/gpu/report.py "$RES" --batch "$BATCH" || rc=$?
echo
echo "Run after the build: ${RUN_S}s (budget ${RUN_BUDGET}s)$([ "$RUN_S" -le "$RUN_BUDGET" ] || echo ': **over budget**');" \
  "total with installs and build: $(($(date +%s) - T0))s."
if [ -n "${CHECK_WORK:-}" ]; then echo "Logs and JSON: $RES"; fi
exit "$rc"
