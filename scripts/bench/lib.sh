# Shared by the benchmark scripts (source it after `cd` to the repository root): the binaries,
# a temporary work folder removed on exit, and `start_server`, which serves "$WORK/repo" on free
# loopback ports and sets SERVER (its pid), HTTP and GRPC (HOST:PORT).
BIN=${RTSERVE_BIN:-target/release/rtserve}
PA=${PERF_ANALYZER:-.tools/perf_analyzer/perf_analyzer}
WORK=$(mktemp -d)
SERVER=
trap 'kill $SERVER 2>/dev/null || true; rm -rf "$WORK"' EXIT

start_server() { # extra `rtserve serve` flags...
  "$BIN" serve --model-repository "$WORK/repo" --host 127.0.0.1 --http-port 0 --grpc-port 0 "$@" \
    2> "$WORK/server.log" &
  SERVER=$!
  for _ in $(seq 600); do grep -q '"ready"\|ready$' "$WORK/server.log" && break; sleep 0.1; done
  HTTP=$(grep -o 'HTTP listening on [0-9.:]*' "$WORK/server.log" | awk '{print $4}')
  GRPC=$(grep -o 'gRPC listening on [0-9.:]*' "$WORK/server.log" | awk '{print $4}')
}
