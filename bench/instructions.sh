#!/usr/bin/env bash
# Instructions per call of W0 (bare tonic) and W0' (the services' layers),
# counted by valgrind's callgrind rather than timed: the same figure whatever
# else the host is doing, so the layers' cost can be told apart from this
# host's swings. Each server runs under callgrind on 127.0.0.1 twice, and
# h2load sends it gRPC health checks (4 connections, 64 streams in flight on
# each): FEW calls in one run, FEW + CALLS in the other. The
# difference of the two totals is what CALLS calls cost, start and stop
# left out.
#
#   bench/instructions.sh [BIN_DIR] [CALLS] [FEW]
#
# Needs valgrind and h2load (Debian: valgrind, nghttp2-client).
set -euo pipefail
# A failed step inside $(...) stops the script too.
shopt -s inherit_errexit
bin_dir="${1:-target/release}"
calls="${2:-10000}"
few="${3:-1000}"
work="$(mktemp -d)"
# A server left running by a failed step is found by its output file's
# name, unique to this run (it is a grandchild, started in a subshell).
trap 'pkill -f -- "--callgrind-out-file=$work/" 2> /dev/null || true; rm -rf "$work"' EXIT

# An empty HealthCheckRequest, gRPC-framed: uncompressed, zero length.
printf '\0\0\0\0\0' > "$work/check.bin"

# Total instructions of one server's life under callgrind, serving $3 calls.
total() {
  local flag="$1" port="$2" n="$3"
  # As blog-bench starts its servers: logging filtered at `warn`.
  RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$work/out" \
    "$bin_dir/blog-bench" "$flag" "127.0.0.1:$port" > /dev/null 2> "$work/valgrind.log" &
  local pid=$!
  local load=(timeout 300 h2load -c 4 -m 64 -d "$work/check.bin"
    -H 'content-type: application/grpc' -H 'te: trailers'
    "http://127.0.0.1:$port/grpc.health.v1.Health/Check")
  # Wait for the port without calling the server (h2load would count
  # toward the total, and it exits 0 even when every request failed).
  for _ in $(seq 300); do
    (echo > "/dev/tcp/127.0.0.1/$port") 2> /dev/null && break
    kill -0 "$pid" 2> /dev/null || break
    sleep 0.1
  done
  if ! "${load[@]}" -n "$n" > "$work/h2load.log" 2>&1 ||
    ! grep -q "$n succeeded, 0 failed, 0 errored" "$work/h2load.log"; then
    cat "$work/h2load.log" "$work/valgrind.log" >&2
    kill "$pid" 2> /dev/null || true
    return 1
  fi
  kill -TERM "$pid"
  wait "$pid" || true
  awk '/^(summary|totals):/ { print $2; exit }' "$work/out"
  rm -f "$work/out"
}

per_call() {
  local flag="$1" port="$2" a b
  a="$(total "$flag" "$port" "$few")"
  b="$(total "$flag" "$port" $((few + calls)))"
  echo $(((b - a) / calls))
}

port=$((20000 + RANDOM % 20000))
bare="$(per_call --noop-server "$port")"
layered="$(per_call --layered-noop-server "$((port + 1))")"
echo "instructions per call: W0 (bare tonic) $bare, W0' (the services' layers) $layered"
awk -v b="$bare" -v l="$layered" \
  'BEGIN { printf "W0\x27 / W0 by instructions: %.2f (W0 per call over W0\x27 per call)\n", b / l }'
