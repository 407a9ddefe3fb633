"""The ``vqcodec`` command line (installed as the ``vqcodec.cli`` package): one module per
command over the Python API, ``main`` the group they join."""

import os

# Before torch (and its OpenMP runtime) loads: idle OpenMP threads sleep instead of spinning, so
# --threads 2 on a machine whose other core is busy does not fight it for that core.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from . import compress, decompress, info, train
from .main import main

__all__ = ["compress", "decompress", "info", "main", "train"]
