"""vqcodec's speed against a learned peer on the same machine, in the same run: CompressAI's scale
hyperprior (Ballé et al. 2018, ``bmshj2018_hyperprior`` at quality 3) with random weights, which
compute exactly what trained ones do. Timings drift between machines and over time on one machine,
so what this reports is the ratio, image by image, of CPU times measured interleaved.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import vqcodec

from .images import Sample

PEER = "bmshj2018-hyperprior q3"
#: CompressAI's models take sides that are multiples of 64 (four stride-2 layers, then two more).
_PEER_MULTIPLE = 64


def load_peer() -> torch.nn.Module:
    """The peer, ready to code (its entropy models' tables built). Needs the ``compressai`` package."""
    try:
        from compressai.zoo import bmshj2018_hyperprior
    except ImportError as exc:
        raise ImportError("the speed peer needs CompressAI: pip install compressai") from exc
    torch.manual_seed(0)
    net = bmshj2018_hyperprior(quality=3, pretrained=False).eval()
    net.update(force=True)
    return net


def _peer_input(image: np.ndarray) -> torch.Tensor:
    """(1, 3, H', W') in [0, 1], the image's edges repeated up to sides that are multiples of 64."""
    x = torch.tensor(image).permute(2, 0, 1)[None].float() / 255
    h, w = x.shape[2:]
    return F.pad(x, (0, -w % _PEER_MULTIPLE, 0, -h % _PEER_MULTIPLE), mode="replicate")


def _cpu_now() -> float:
    """CPU seconds of this process (every thread) and of its children that have ended."""
    children = os.times()
    return time.process_time() + children.children_user + children.children_system


def cpu_seconds(run: Callable[[], object]) -> float:
    """CPU time of one call of ``run``: every thread of the process, and the decoder's forked
    processes (``Codec.processes``), which end within the call."""
    start = _cpu_now()
    run()
    return _cpu_now() - start


def _image_seconds(codec: vqcodec.Codec, peer: torch.nn.Module, image: np.ndarray, repeats: int) -> dict:
    """The best of ``repeats`` CPU times of vqcodec's and the peer's encode and decode of ``image``,
    each round running all four in turn, after an untimed warm-up round; and vqcodec's file size."""
    x = _peer_input(image)
    data = codec.compress(image)
    with torch.no_grad():
        coded = peer.compress(x)
        runs = {
            "vqcodec encode": lambda: codec.compress(image),
            "peer encode": lambda: peer.compress(x),
            "vqcodec decode": lambda: codec.decompress(data),
            "peer decode": lambda: peer.decompress(coded["strings"], coded["shape"]),
        }
        for run in runs.values():
            run()
        times = [{name: cpu_seconds(run) for name, run in runs.items()} for _ in range(repeats)]
    return {"bytes": len(data)} | {name: min(t[name] for t in times) for name in runs}


def compare(codec: vqcodec.Codec, peer: torch.nn.Module, samples: Sequence[Sample], repeats: int) -> list[dict]:
    """Per image: CPU seconds of vqcodec's and the peer's encode and decode (``_image_seconds``)."""
    rows = []
    for sample in tqdm(samples, desc="speed against the peer", unit="image", leave=False):
        times = _image_seconds(codec, peer, np.asarray(sample.image), repeats)
        rows.append({"image": sample.name, "pixels": sample.pixels, "bpp": 8 * times["bytes"] / sample.pixels} | times)
    return rows


def ratios(rows: Sequence[dict]) -> dict[str, dict[str, float]]:
    """vqcodec's time over the peer's, encode and decode: of the summed times, and the largest of an image."""
    out = {}
    for way in ("encode", "decode"):
        ours = np.array([r[f"vqcodec {way}"] for r in rows])
        theirs = np.array([r[f"peer {way}"] for r in rows])
        out[way] = {"total": float(ours.sum() / theirs.sum()), "max": float((ours / theirs).max())}
    return out
