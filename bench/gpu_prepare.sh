#!/usr/bin/env bash
# Stage what bench/gpu_check.sh needs, for a CUDA machine without a package index: wheels of
# the dependencies a bare PyTorch image lacks (.whl/, for Python 3.12) and the Kodak images
# (.kodak/). Both folders are git-ignored; copy them to the GPU machine with the repository.
# Usage: bash bench/gpu_prepare.sh KODAK_DIR
set -euo pipefail
cd "$(dirname "$0")/.."
kodak=${1:?usage: bash bench/gpu_prepare.sh KODAK_DIR}
rm -rf .whl .kodak
mkdir -p .whl .kodak
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl "constriction>=0.5,<0.6" "pytorch-msssim>=1.0"
cp "$kodak"/*.png .kodak/
du -sh .whl .kodak
