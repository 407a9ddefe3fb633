"""Time per stage of vqcodec's encoder and decoder, with peak memory, on the CPU and on CUDA.

The stages are the codec's own (``vqcodec.timing``): ``Codec.encode_many`` and
``Codec.decompress_many`` report them to a ``StageTimer``, summed over windows, batches and
wavefront steps. Images are coded ``batch`` at a time; times are per image.
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
from vqcodec.timing import (
    ANALYSIS,
    ENHANCEMENT,
    ENTROPY_CODING,
    PRIOR,
    QUANTIZATION,
    RESTORATION,
    SYNTHESIS,
    StageTimer,
    no_timer,
)

from .images import Sample

ENCODE_STAGES = (ANALYSIS, QUANTIZATION, PRIOR, ENTROPY_CODING, SYNTHESIS, ENHANCEMENT, RESTORATION)
DECODE_STAGES = (PRIOR, ENTROPY_CODING, SYNTHESIS, ENHANCEMENT, RESTORATION)


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


def timed(codec: vqcodec.Codec, repeats: int, run: Callable[[StageTimer], object], warm_up: bool) -> Timing:
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


def _per_image(timing: Timing, n: int) -> Timing:
    return Timing({stage: t / n for stage, t in timing.seconds.items()}, timing.peak_mib, timing.before_mib)


def time_encode(codec: vqcodec.Codec, images: list[np.ndarray], repeats: int) -> tuple[Timing, list[bytes]]:
    """The encoder's timing per stage and in total, per image of the batch ``images``, and the files it writes."""
    files: list[list[bytes]] = []

    def run(timer: StageTimer) -> None:
        files.append([encoded.data for encoded in codec.encode_many(images, timer=timer)])

    return _per_image(timed(codec, repeats, run, warm_up=True), len(images)), files[0]


def time_decode(codec: vqcodec.Codec, files: list[bytes], repeats: int) -> Timing:
    """The decoder's timing per stage and in total, per image of the batch ``files``."""
    timing = timed(codec, repeats, lambda timer: codec.decompress_many(files, timer=timer), warm_up=False)
    return _per_image(timing, len(files))


def devices() -> list[str]:
    """The CPU, and CUDA when a GPU is present."""
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def measure_speed(
    load: Callable[[str], vqcodec.Codec],
    samples: Sequence[Sample],
    device_names: Sequence[str],
    repeats: int,
    decode: bool,
    batch: int = 1,
) -> list[dict]:
    """One row per device and batch of images (one image by default): size, rate, and the
    encoder's (and decoder's) ``Timing`` per image."""
    rows = []
    groups = [samples[i : i + batch] for i in range(0, len(samples), batch)]
    for name in device_names:
        codec = load(name)
        for group in tqdm(groups, desc=f"speed {name}", unit="batch" if batch > 1 else "image", leave=False):
            encode, files = time_encode(codec, [np.asarray(s.image) for s in group], repeats)
            pixels = sum(s.pixels for s in group)
            rows.append({
                "device": name, "threads": torch.get_num_threads() if name == "cpu" else None,
                "image": "+".join(s.name for s in group), "batch": len(group),
                "width": group[0].image.width, "height": group[0].image.height, "pixels": pixels / len(group),
                "bpp": 8 * sum(len(f) for f in files) / pixels, "encode": asdict(encode),
                "decode": asdict(time_decode(codec, files, repeats)) if decode else None,
            })  # fmt: skip
    return rows
