#!/usr/bin/env bash
# The GPU machine's one command: install the carried wheels, check that Python finds them,
# then run the GPU check (backends, targets, HTTP line) and leave its results under $OUT.
#
#   bench/gpu_run.sh            # on the GPU machine: llama-1b shape, bfloat16, 64 forced tokens
#   bench/gpu_run.sh smoke      # anywhere: the same steps on the tiny shape on CPU, in about a minute
#   bench/gpu_run.sh preflight  # install the wheels and check ladle's requirements only
#
# Environment: OUT (results; default ./artifacts), WHEELS (.whl), SITE (/tmp/site), PYTHON
# (python3), RUN_TIMEOUT_S (the check's hard limit; 290 s, so install and check end inside
# about 300 s), GPU_CHECK_ARGS (more flags for `python -m bench.gpu_check`, appended last).
# Exit status: the check's (0 pass, 1 a target failed, 124 past RUN_TIMEOUT_S, its JSON then
# holding the phases that finished); else 2 when requirements were unmet; 3 install failed.
# The device-tool call (README, "GPU check"), after `make gpu-wheels` in the checkout it sends:
#   command: bash bench/gpu_run.sh    carry: [".whl"]    timeout_s: 340
set -uo pipefail

mode=${1:-full}
cd "$(dirname "$0")/.." || exit 3
OUT=${OUT:-./artifacts}
WHEELS=${WHEELS:-.whl}
SITE=${SITE:-/tmp/site}
PYTHON=${PYTHON:-python3}
RUN_TIMEOUT_S=${RUN_TIMEOUT_S:-290}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

if compgen -G "$WHEELS/*.whl" >/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" "$WHEELS"/*.whl || exit 3
    export PYTHONPATH="$SITE:$PWD"
else
    echo "gpu_run: no wheels in $WHEELS: using the installed packages"
    export PYTHONPATH="$PWD"
fi

"$PYTHON" -m bench.gpu_wheels installed --wheels "$WHEELS" 2>&1 | tee "$OUT/preflight.log"
preflight=${PIPESTATUS[0]}
[ "$mode" = preflight ] && exit "$preflight"
# A device call is scarce: an unmet requirement is reported, and the check still runs to
# show what works.
[ "$preflight" -ne 0 ] && echo "gpu_run: ladle's requirements are not all met here (see above); checking anyway"

case "$mode" in
full)
    # One compiled decode width (256 columns) per hf_bettertransformer load; the HTTP server
    # compiles the same graph again, mostly from the inductor cache the check left in /tmp.
    args=(--config llama-1b --tokens 64 --max-context 256 --ttft-lengths 128 --budget-s 270)
    args+=(--exact-config tiny --http-seconds 10)
    ;;
smoke)
    args=(--config tiny --device cpu --rounds 1 --tokens 4 --agree-tokens 8 --threads 1)
    args+=(--max-context 256 --ttft-lengths 128 --budget-s 240 --http-seconds 1)
    ;;
*)
    echo "gpu_run: unknown mode $mode (full, smoke or preflight)"
    exit 2
    ;;
esac

# shellcheck disable=SC2086  # GPU_CHECK_ARGS is a list of flags
timeout -k 10 "$RUN_TIMEOUT_S" "$PYTHON" -m bench.gpu_check "${args[@]}" \
    --out "$OUT/gpu_check.json" ${GPU_CHECK_ARGS:-} 2>&1 | tee "$OUT/gpu_run.log"
status=${PIPESTATUS[0]}
[ "$status" -eq 0 ] && status=$preflight
exit "$status"
