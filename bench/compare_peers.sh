#!/usr/bin/env bash
# ladle against `transformers serve` on the same converted model, through HTTP, with the
# shared load generator: streaming chat, greedy, 64 tokens forced, concurrency 1 and 16.
# The servers run one after the other (never together) so each has the machine to itself.
#
#   bench/compare_peers.sh [OUT_DIR]
# Needs: .venv (make install); a second virtualenv with transformers[serving] at $PEER_VENV
# (default /tmp/tsvenv: python3 -m venv /tmp/tsvenv && /tmp/tsvenv/bin/pip install
# torch==2.13.0 "transformers[serving]"); the load generator at $LOADGEN.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-artifacts/peers}
PEER_VENV=${PEER_VENV:-/tmp/tsvenv}
LOADGEN=${LOADGEN:-../shared/tools/loadgen.py}
BACKEND=${BACKEND:-hf_eager}
PORT_LADLE=${PORT_LADLE:-8301}
PORT_PEER=${PORT_PEER:-8302}
LEVELS=${LEVELS:-1,16}
REQUESTS=${REQUESTS:-8,32}
mkdir -p "$OUT"
MODEL_DIR=$(.venv/bin/python -c "from backends.runner.loading import resolve; print(resolve(None).path)")
echo "model directory: $MODEL_DIR"

wait_up() {  # url
  for _ in $(seq 1 300); do
    curl -sf -o /dev/null "$1" && return 0
    sleep 1
  done
  echo "server at $1 did not come up" >&2
  return 1
}

run_load() {  # port model label extra...
  local port=$1 model=$2 label=$3
  shift 3
  .venv/bin/python "$LOADGEN" --base-url "http://127.0.0.1:$port" --model "$model" --endpoint chat \
    --concurrency "$LEVELS" --requests-per-level "$REQUESTS" --max-tokens 64 --ignore-eos \
    --label "$label" --output "$OUT/$label.json" "$@"
}

MODEL=$MODEL_DIR BACKEND=$BACKEND DTYPE=float32 NO_PLAYGROUND=1 \
  .venv/bin/ladle --host 127.0.0.1 --port "$PORT_LADLE" --log-level warning > "$OUT/ladle.log" 2>&1 &
LADLE_PID=$!
trap 'kill $LADLE_PID 2>/dev/null || true' EXIT
wait_up "http://127.0.0.1:$PORT_LADLE/health"
run_load "$PORT_LADLE" ladle "ladle-$BACKEND"
kill "$LADLE_PID"; wait "$LADLE_PID" 2>/dev/null || true

"$PEER_VENV/bin/transformers" serve "$MODEL_DIR" --continuous-batching --dtype float32 --device cpu \
  --host 127.0.0.1 --port "$PORT_PEER" > "$OUT/peer.log" 2>&1 &
PEER_PID=$!
trap 'kill $PEER_PID 2>/dev/null || true' EXIT
wait_up "http://127.0.0.1:$PORT_PEER/health"
run_load "$PORT_PEER" "$MODEL_DIR" transformers-serve --ignore-eos-mode hf-generation-config
kill "$PEER_PID"; wait "$PEER_PID" 2>/dev/null || true
echo "results in $OUT"
