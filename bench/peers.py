"""vqcodec's speed against peers on the same machine, in the same run: CompressAI's scale
hyperprior (Ballé et al. 2018, ``bmshj2018_hyperprior``) and mean-scale hyperprior (Minnen et al.
2018, ``mbt2018_mean``), both at quality 3 with random weights, which compute exactly what trained
ones do; and AVIF, WebP and JPEG XL through Pillow, each at the setting whose file is nearest in
size to vqcodec's. Timings drift between machines and over time on one machine, so what this
reports is the ratio, image by image, of CPU times measured interleaved.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

import vqcodec

from .codecs import PillowCodec, classical_codecs
from .images import Sample

#: The learned peers: CompressAI zoo names and their quality.
LEARNED = {"bmshj2018-hyperprior q3": ("bmshj2018_hyperprior", 3), "mbt2018-mean q3": ("mbt2018_mean", 3)}
#: The classical peers, by the bench's codec names.
CLASSICAL = ("avif", "webp_m4", "jxl")
#: CompressAI's models take sides that are multiples of 64 (four stride-2 layers, then two more).
_PEER_MULTIPLE = 64

#: Zero-argument calls that encode and decode one image, and the peer's file size in bytes.
Runs = tuple[Callable[[], object], Callable[[], object], int]


@dataclass(frozen=True)
class Peer:
    """A codec to time beside vqcodec: ``prepare(image, vqc_bytes)`` gives its runs for ``image``."""

    name: str
    prepare: Callable[[np.ndarray, int], Runs]


def learned_peer(name: str, net: torch.nn.Module) -> Peer:
    """A CompressAI model as a peer (its entropy models' tables built)."""

    def prepare(image: np.ndarray, _: int) -> Runs:
        x = _peer_input(image)
        with torch.no_grad():
            coded = net.compress(x)
        size = sum(len(s[0]) for s in coded["strings"])
        return (lambda: _no_grad(net.compress, x),
                lambda: _no_grad(net.decompress, coded["strings"], coded["shape"]), size)  # fmt: skip

    return Peer(name, prepare)


def _no_grad(run: Callable, *args: object) -> object:
    with torch.no_grad():
        return run(*args)


def classical_peer(codec: PillowCodec) -> Peer:
    """A Pillow codec as a peer, at its setting whose file is nearest in size to vqcodec's."""

    def prepare(image: np.ndarray, vqc_bytes: int) -> Runs:
        pil = Image.fromarray(image)
        files = [codec.encode(pil, setting) for setting in codec.settings]
        nearest = min(range(len(files)), key=lambda i: abs(len(files[i]) - vqc_bytes))
        setting, data = codec.settings[nearest], files[nearest]
        return lambda: codec.encode(pil, setting), lambda: codec.load(data), len(data)

    return Peer(codec.name, prepare)


def load_learned() -> list[Peer]:
    """The learned peers. Needs the ``compressai`` package."""
    try:
        from compressai import zoo
    except ImportError as exc:
        raise ImportError("the learned speed peers need CompressAI: pip install compressai") from exc
    peers = []
    for name, (model, quality) in LEARNED.items():
        torch.manual_seed(0)
        net = getattr(zoo, model)(quality=quality, pretrained=False).eval()
        net.update(force=True)
        peers.append(learned_peer(name, net))
    return peers


def load_classical() -> list[Peer]:
    """AVIF, WebP and JPEG XL, those this Pillow can write."""
    return [classical_peer(c) for c in classical_codecs() if c.name in CLASSICAL]


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


def _image_seconds(codec: vqcodec.Codec, peers: Sequence[Peer], image: np.ndarray, repeats: int) -> dict:
    """The best of ``repeats`` CPU times of vqcodec's and each peer's encode and decode of
    ``image``, each round running all of them in turn, after an untimed warm-up round; and each
    one's file size."""
    data = codec.compress(image)
    runs: dict[str, Callable[[], object]] = {
        "vqcodec encode": lambda: codec.compress(image),
        "vqcodec decode": lambda: codec.decompress(data),
    }
    sizes = {"vqcodec bytes": len(data)}
    for peer in peers:
        encode, decode, size = peer.prepare(image, len(data))
        runs |= {f"{peer.name} encode": encode, f"{peer.name} decode": decode}
        sizes[f"{peer.name} bytes"] = size
    for run in runs.values():
        run()
    times = [{name: cpu_seconds(run) for name, run in runs.items()} for _ in range(repeats)]
    return sizes | {name: min(t[name] for t in times) for name in runs}


def compare(codec: vqcodec.Codec, peers: Sequence[Peer], samples: Sequence[Sample], repeats: int) -> list[dict]:
    """Per image: CPU seconds of vqcodec's and each peer's encode and decode (``_image_seconds``)."""
    rows = []
    for sample in tqdm(samples, desc="speed against the peers", unit="image", leave=False):
        times = _image_seconds(codec, peers, np.asarray(sample.image.convert("RGB")), repeats)
        rows.append({"image": sample.name, "pixels": sample.pixels, "bpp": 8 * times["vqcodec bytes"] / sample.pixels}
                    | times)  # fmt: skip
    return rows


def ratios(rows: Sequence[dict], peers: Sequence[str]) -> dict[str, dict[str, dict[str, float]]]:
    """For each peer, vqcodec's time over the peer's, encode and decode: of the summed times, and
    the largest of an image."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for peer in peers:
        out[peer] = {}
        for way in ("encode", "decode"):
            ours = np.array([r[f"vqcodec {way}"] for r in rows])
            theirs = np.maximum(np.array([r[f"{peer} {way}"] for r in rows]), 1e-9)
            out[peer][way] = {"total": float(ours.sum() / theirs.sum()), "max": float((ours / theirs).max())}
    return out
