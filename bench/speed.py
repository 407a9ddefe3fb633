"""Time per stage of vqcodec's encoder and decoder, with peak memory, on the CPU and on CUDA.

The stages are the codec's own (``vqcodec.timing``): ``Codec.encode`` and ``Codec.decompress``
report them to a ``StageTimer``, summed over windows, batches and wavefront steps.
"""

from __future__ import annotations

import contextlib
import resource
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import vqcodec
from vqcodec.timing import ANALYSIS, ENTROPY_CODING, PRIOR, QUANTIZATION, SYNTHESIS, StageTimer, no_timer

from .images import Sample

ENCODE_STAGES = (ANALYSIS, QUANTIZATION, PRIOR, ENTROPY_CODING)
DECODE_STAGES = (PRIOR, ENTROPY_CODING, SYNTHESIS)


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


def _timed(codec: vqcodec.Codec, repeats: int, run: Callable[[StageTimer], object], warm_up: bool) -> Timing:
    """Best-of-``repeats`` stage times of ``run(timer)``, with the peak memory since the start
    (an untimed warm-up run first, when asked: allocations, kernels)."""
    before = memory_mib(codec.device, peak=False)
    reset_peak_memory(codec.device)
    if warm_up:
        run(no_timer)
    runs = []
    for _ in range(max(1, repeats)):
        timer = StageTimer(codec.device)
        with timer("total"):
            run(timer)
        runs.append(timer.seconds)
    return Timing(_best(runs), memory_mib(codec.device, peak=True), before)


def time_encode(codec: vqcodec.Codec, rgb: np.ndarray, repeats: int) -> tuple[Timing, bytes]:
    """The encoder's timing per stage and in total, and the file it writes."""
    files: list[bytes] = []
    timing = _timed(codec, repeats, lambda timer: files.append(codec.encode(rgb, timer=timer).data), warm_up=True)
    return timing, files[0]


def time_decode(codec: vqcodec.Codec, data: bytes, repeats: int) -> Timing:
    """The decoder's timing per stage and in total."""
    return _timed(codec, repeats, lambda timer: codec.decompress(data, timer=timer), warm_up=False)


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
                "decode": asdict(time_decode(codec, data, repeats)) if decode else None,
            })  # fmt: skip
    return rows
