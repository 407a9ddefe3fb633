"""vqcodec's benchmark suite: rate-distortion against classical codecs, code-map entropy, speed.

Run from the repository root: ``python -m bench rd DIR``, ``python -m bench entropy DIR --model M``,
``python -m bench speed DIR --model M`` (see bench/README.md). Needs the ``bench`` extra.
"""
