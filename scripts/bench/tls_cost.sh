#!/usr/bin/env bash
# What TLS costs: `rtserve bench` (closed loop, CONCURRENCY in flight, binary tensors over HTTP
# and unary gRPC) against two servers on examples/model_repository's MODEL, one plaintext and
# one with --tls-cert (ECDSA P-256 from a throwaway CA made with openssl), alternating plaintext
# and TLS steps ROUNDS times. Per step: throughput, and CPU time per request of the server
# (/proc) and of the bench client (/usr/bin/time); then the means as a Markdown table. CPU per
# request is the steadier figure on a shared machine, where throughput moves with the neighbours.
# Connections are kept alive (a handful of handshakes per step), so this is the cost of
# encrypting requests and replies, not of handshakes.
# Usage: RTSERVE_BIN=target/release/rtserve scripts/bench/tls_cost.sh [MODEL]
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/bench/lib.sh
MODEL=${1:-mlp}
ROUNDS=${ROUNDS:-3}
STEP_S=${STEP_S:-5}
CONCURRENCY=${CONCURRENCY:-4}
ln -s "$PWD/examples/model_repository" "$WORK/repo"
(
  cd "$WORK"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=bench-ca \
    -keyout ca.key -out ca.pem 2> /dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
    -keyout server.key -out server.csr 2> /dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n' > ext.cnf
  openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 \
    -extfile ext.cnf -out server.pem 2> /dev/null
)
start_server --engine tract --tls-cert "$WORK/server.pem" --tls-key "$WORK/server.key"
TLS_SERVER=$SERVER TLS_HTTP=$HTTP TLS_GRPC=$GRPC
mv "$WORK/server.log" "$WORK/tls-server.log"
trap 'kill $SERVER $TLS_SERVER 2>/dev/null || true; rm -rf "$WORK"' EXIT
start_server --engine tract
ticks=$(getconf CLK_TCK)
cpu() { awk -v t="$ticks" '{ sub(/^.*\) /, ""); print ($12 + $13) / t }' "/proc/$1/stat"; }
step() { # SERVER_PID URL [flags]: prints requests/s, server and client CPU µs per request
  local pid=$1 c0 c1
  shift
  c0=$(cpu "$pid")
  /usr/bin/time -f '%U %S' -o "$WORK/client.cpu" "$BIN" bench --url "$@" --model "$MODEL" \
    --concurrency "$CONCURRENCY" --warmup 0s --duration "${STEP_S}s" --quiet --json "$WORK/step.json" > /dev/null
  c1=$(cpu "$pid")
  python3 - "$WORK/step.json" "$c0" "$c1" "$WORK/client.cpu" << 'PY'
import json, sys
step = json.load(open(sys.argv[1]))["steps"][0]
n = max(step["requests"], 1)
user, system = map(float, open(sys.argv[4]).read().split()[-2:])
print(f'{step["throughput_rps"]:.0f} {(float(sys.argv[3]) - float(sys.argv[2])) / n * 1e6:.0f} {(user + system) / n * 1e6:.0f}')
PY
}
# One unmeasured step per server and transport: models warm, connections and caches made.
for target in "$SERVER http://$HTTP" "$SERVER grpc://$GRPC" \
  "$TLS_SERVER https://$TLS_HTTP --tls-ca $WORK/ca.pem" "$TLS_SERVER grpcs://$TLS_GRPC --tls-ca $WORK/ca.pem"; do
  # shellcheck disable=SC2086
  step $target > /dev/null
done
for round in $(seq "$ROUNDS"); do
  for transport in http grpc; do
    if [ "$transport" = http ]; then
      plain=$(step "$SERVER" "http://$HTTP")
      tls=$(step "$TLS_SERVER" "https://$TLS_HTTP" --tls-ca "$WORK/ca.pem")
    else
      plain=$(step "$SERVER" "grpc://$GRPC")
      tls=$(step "$TLS_SERVER" "grpcs://$TLS_GRPC" --tls-ca "$WORK/ca.pem")
    fi
    echo "round $round $transport (req/s, server CPU µs/req, client CPU µs/req): plaintext $plain; TLS $tls"
    echo "$transport $plain $tls" >> "$WORK/pairs"
  done
done
python3 - "$WORK/pairs" << 'PY'
import sys
rows = [line.split() for line in open(sys.argv[1])]
mean = lambda xs: sum(xs) / len(xs)
print("| transport | plaintext req/s | TLS req/s | ratio | server CPU µs/req plaintext → TLS | client CPU µs/req plaintext → TLS |")
print("|---|---:|---:|---:|---:|---:|")
for transport in ("http", "grpc"):
    r = [list(map(float, row[1:])) for row in rows if row[0] == transport]
    col = lambda i: mean([x[i] for x in r])
    print(f"| {transport} | {col(0):.0f} | {col(3):.0f} | {col(3) / col(0):.3f} | {col(1):.0f} → {col(4):.0f} ({col(4) / col(1):.2f}×) | {col(2):.0f} → {col(5):.0f} ({col(5) / col(2):.2f}×) |")
PY
