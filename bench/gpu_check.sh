#!/usr/bin/env bash
# vqcodec's GPU checks in one run on a CUDA machine (.whl/ and .kodak/ from bench/gpu_prepare.sh):
#   bash bench/gpu_check.sh        (about 9 minutes)
# The cross-device and fused-kernel tests, then `python -m bench speed` on CUDA: the default
# preset on all 24 Kodak images one at a time and eight at a time, and on 6 without CUDA graphs;
# the other presets on 6 images.
# Everything lands in $OUT (check.log and one speed_*.json per run; bench/results/gpu without $OUT).
# Each step has its own time limit, so a slow one still leaves the others' results.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-bench/results/gpu}
mkdir -p "$out"

speed() {
  local name=$1
  shift
  timeout "$1" python3 -m bench speed .kodak --devices cuda --out "/tmp/speed_$name" "${@:2}" \
    && cp "/tmp/speed_$name/speed.json" "$out/speed_$name.json"
}

checks() {
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || return 1
  export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TQDM_DISABLE=1
  # Uninstalled, the package's command line (cli/, installed as vqcodec.cli) needs a link to import.
  python3 -c "import vqcodec.cli" 2>/dev/null || ln -s ../cli vqcodec/cli
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
  timeout 150 python3 -m pytest -o addopts= -q -p no:cacheprovider tests/test_kernels.py tests/test_devices.py
  speed medium 140 --preset medium --repeats 3
  speed medium_batch8 60 --preset medium --batch 8
  speed medium_no_graphs 40 --preset medium --limit 6 --no-cuda-graphs
  speed high 60 --preset high --limit 6
  speed low 30 --preset low --limit 6
}

checks 2>&1 | tee "$out/check.log"
