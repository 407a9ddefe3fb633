"""The ``vqcodec`` command line (installed as the ``vqcodec.cli`` package)."""

import os

# Before torch (and its OpenMP runtime) loads: idle OpenMP threads sleep instead of spinning, so
# --threads 2 on a machine whose other core is busy does not fight it for that core (decoding a
# 1-megapixel photo there: 15% slower than one thread with spinning, 4% with sleeping).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .commands import main

__all__ = ["main"]
