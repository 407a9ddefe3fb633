"""The ``vqcodec`` command line (installed as the ``vqcodec.cli`` package)."""

from .commands import main

__all__ = ["main"]
