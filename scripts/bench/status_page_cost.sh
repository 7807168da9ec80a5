#!/usr/bin/env bash
# What the status page costs the server: throughput of `rtserve bench` (closed loop, 2 in
# flight) against one server on examples/model_repository, alternately without and with a
# headless Chromium showing `/` (which polls /v2/status every second), ROUNDS times each, and
# the ratio of the means. Needs chromium, node and `npm ci --prefix tests/browser`.
# Usage: RTSERVE_BIN=target/debug/rtserve scripts/bench/status_page_cost.sh [MODEL]
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/bench/lib.sh
MODEL=${1:-two_io}
ROUNDS=${ROUNDS:-3}
STEP_S=${STEP_S:-15}
ln -s "$PWD/examples/model_repository" "$WORK/repo"
start_server
step() { # prints the requests/s of one bench step
  "$BIN" bench --url "http://$HTTP" --model "$MODEL" --concurrency 2 --warmup 2s \
    --duration "${STEP_S}s" --quiet --json "$WORK/step.json" > /dev/null
  python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["steps"][0]["throughput_rps"])' "$WORK/step.json"
}
for round in $(seq "$ROUNDS"); do
  off=$(step)
  node tests/browser/hold.mjs "http://$HTTP" $((STEP_S + 5)) > "$WORK/hold.log" &
  hold=$!
  sleep 2 # Chromium started and the page showing before the step's warm-up ends
  on=$(step)
  wait $hold
  echo "round $round: without the page $off req/s, with the page $on req/s ($(cat "$WORK/hold.log"))"
  echo "$off $on" >> "$WORK/pairs"
done
python3 - "$WORK/pairs" << 'PY'
import sys
pairs = [tuple(map(float, line.split())) for line in open(sys.argv[1])]
off = sum(p[0] for p in pairs) / len(pairs)
on = sum(p[1] for p in pairs) / len(pairs)
print(f"mean without the page {off:.0f} req/s, with it {on:.0f} req/s: ratio with/without {on / off:.3f}")
PY
