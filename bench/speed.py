"""Time per stage of vqcodec's encoder and decoder, with peak memory, on the CPU and on CUDA.

The library has no stage hooks, so the encoder's stages are replayed here from its pieces (the
VQ-VAE's analysis and quantizers, the priors' one causal pass, the range coder); the replay is
checked to write exactly the streams ``Codec.encode`` writes, so the stages time the real work.
The decoder's stages are public calls: ``decode_codes`` (entropy decoding with the prior replay)
and ``reconstruct`` (synthesis).
"""

from __future__ import annotations

import contextlib
import resource
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import vqcodec
from vqcodec import container, entropy
from vqcodec.image import to_tensor

from .images import Sample

ENCODE_STAGES = ("analysis", "quantization", "prior", "entropy coding")
DECODE_STAGES = ("entropy decoding + prior replay", "synthesis")


class StageTimer:
    """Wall-clock seconds per named stage, waiting for the GPU at each boundary."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = {}

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        self._sync()
        start = time.perf_counter()
        yield
        self._sync()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start


@torch.no_grad()
def staged_encode(codec: vqcodec.Codec, rgb: np.ndarray, timer: StageTimer) -> tuple[bytes, bytes]:
    """The top and bottom streams of ``rgb``, computed stage by stage under ``timer``."""
    model, vq = codec.model, codec.model.vqvae
    x = to_tensor(rgb, codec.top_stride).to(codec.device)
    with timer("analysis"):
        enc_b, z_t = vq._analyse(x)
    with timer("quantization"):
        top = vq.quantize_t.indices(z_t)
        bottom = vq.quantize_b.indices(vq._bottom_latent(enc_b, vq.quantize_t.lookup(top)))
    with timer("prior"):
        cond = model.bottom_prior.condition(top)
        top_probs = entropy.probabilities(model.top_prior.logits(top, None)[0].flatten(1).t())
        bottom_probs = entropy.probabilities(model.bottom_prior.logits(bottom, cond)[0].flatten(1).t())
    with timer("entropy coding"):
        top_stream = entropy.encode(top[0].cpu().numpy().reshape(-1), top_probs)
        bottom_stream = entropy.encode(bottom[0].cpu().numpy().reshape(-1), bottom_probs)
    return top_stream, bottom_stream


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak: CUDA's allocator statistics, or Linux's peak RSS (VmHWM) where it can be reset."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):  # not Linux: the peak is then the process's lifetime peak
        Path("/proc/self/clear_refs").write_text("5")


def memory_mib(device: torch.device, peak: bool) -> float:
    """Memory in MiB now or at its peak: CUDA, what torch allocated; CPU, the process's resident set
    (from /proc on Linux; elsewhere the peak is the lifetime ``ru_maxrss`` and "now" is that too)."""
    if device.type == "cuda":
        return (torch.cuda.max_memory_allocated if peak else torch.cuda.memory_allocated)(device) / 2**20
    status = Path("/proc/self/status")
    if status.exists():
        key = "VmHWM:" if peak else "VmRSS:"
        for line in status.read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


@dataclass(frozen=True)
class Timing:
    """Best-of-N seconds per stage (and "total"), peak memory and the memory held before (MiB)."""

    seconds: dict[str, float]
    peak_mib: float
    before_mib: float


def _best(runs: list[dict[str, float]]) -> dict[str, float]:
    return {stage: min(run[stage] for run in runs) for stage in runs[0]}


def time_encode(codec: vqcodec.Codec, rgb: np.ndarray, repeats: int) -> tuple[Timing, bytes]:
    """The encoder's timing per stage and in total, and the file it writes."""
    before = memory_mib(codec.device, peak=False)
    reset_peak_memory(codec.device)
    reference = codec.encode(rgb)  # also warms up (allocations, kernels)
    _, streams = container.unpack(reference.data)
    runs = []
    for _ in range(max(1, repeats)):
        timer = StageTimer(codec.device)
        if staged_encode(codec, rgb, timer) != (streams.top, streams.bottom):
            raise RuntimeError("the staged encoder no longer matches Codec.encode: update bench/speed.py")
        with timer("total"):
            codec.encode(rgb)
        runs.append(timer.seconds)
    return Timing(_best(runs), memory_mib(codec.device, peak=True), before), reference.data


def time_decode(codec: vqcodec.Codec, data: bytes, size: tuple[int, int], repeats: int) -> Timing:
    """The decoder's timing per stage and in total."""
    before = memory_mib(codec.device, peak=False)
    reset_peak_memory(codec.device)
    runs = []
    for _ in range(max(1, repeats)):
        timer = StageTimer(codec.device)
        with timer(DECODE_STAGES[0]):
            codes = codec.decode_codes(data)
        with timer(DECODE_STAGES[1]):
            codec.reconstruct(codes, *size)
        with timer("total"):
            codec.decompress(data)
        runs.append(timer.seconds)
    return Timing(_best(runs), memory_mib(codec.device, peak=True), before)


def devices() -> list[str]:
    """The CPU, and CUDA when a GPU is present."""
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def measure_speed(
    load: Callable[[str], vqcodec.Codec],
    samples: Sequence[Sample],
    device_names: Sequence[str],
    repeats: int,
    decode: bool,
) -> list[dict]:
    """One row per device and image: size, rate, and the encoder's (and decoder's) ``Timing``."""
    rows = []
    for name in device_names:
        codec = load(name)
        for sample in tqdm(samples, desc=f"speed {name}", unit="image", leave=False):
            encode, data = time_encode(codec, np.asarray(sample.image), repeats)
            rows.append({
                "device": name, "threads": torch.get_num_threads() if name == "cpu" else None,
                "image": sample.name, "width": sample.image.width, "height": sample.image.height,
                "bpp": 8 * len(data) / sample.pixels, "encode": asdict(encode),
                "decode": asdict(time_decode(codec, data, sample.image.size, repeats)) if decode else None,
            })  # fmt: skip
    return rows
