#!/usr/bin/env bash
# Stage, on this machine, what bench/gpu_check.sh needs on a lent GPU machine, which reaches no
# package index: wheels of the dependencies its image lacks (.whl/, for its Python 3.12) and the
# Kodak images (.kodak/). Both folders are git-ignored; name them in the device tool's `carry`.
# Usage: bash bench/gpu_prepare.sh [KODAK_DIR]   (default ../shared/data/kodak)
set -euo pipefail
cd "$(dirname "$0")/.."
kodak=${1:-../shared/data/kodak}
rm -rf .whl .kodak
mkdir -p .whl .kodak
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl "constriction>=0.5,<0.6" "pytorch-msssim>=1.0"
cp "$kodak"/*.png .kodak/
du -sh .whl .kodak
