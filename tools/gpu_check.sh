#!/usr/bin/env bash
# The torch backend's check on a lent GPU machine (tools/gpu_check.py; docs/torch-backend.md, "On a lent GPU").
# Run from anywhere; works in the repository root with the machine's python3 (no venv):
#   tools/gpu_check.sh [--budget 420] [--steps facts,data,...]     results in $OUT (gpu_check.json, log, ...)
#   OUT=/tmp/x tools/gpu_check.sh --device cpu --tiny               the same here, small
# Needs .gpucheck/refs (tools/gpu_check.py prepare). Where the machine's protobuf is older than the
# package needs, the wheel that prepare put in .gpucheck/wheels is installed into /tmp/gpu_check_site.
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check_out}
PYTHON=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$OUT"
if ! "$PYTHON" -c 'import caffe_cae.proto.caffe_cae_pb2' 2>/dev/null; then
    echo "gpu_check: the package's protobuf schema does not load; installing .gpucheck/wheels/*.whl" | tee "$OUT/log"
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/gpu_check_site .gpucheck/wheels/*.whl || exit 2
    export PYTHONPATH="/tmp/gpu_check_site:$PYTHONPATH"
fi
"$PYTHON" tools/gpu_check.py check --out "$OUT" "$@" 2>&1 | tee -a "$OUT/log"
