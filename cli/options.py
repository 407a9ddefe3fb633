"""Options that several commands share."""

from __future__ import annotations

import math
from pathlib import Path

import click

from vqcodec.defaults import DEFAULT_RDO, DEFAULT_THREADS
from vqcodec.format import container
from vqcodec.settings import MAX_ENHANCEMENT_STEP


def model_options(f):
    f = click.option("--threads", type=click.IntRange(min=1), default=DEFAULT_THREADS, show_default=True,
                     help="CPU threads for the priors and the VQ-VAE's windows, and processes for the decoder's "
                     "segments (the results are the same for any number).")(f)  # fmt: skip
    f = click.option("--max-pixels", type=click.IntRange(min=1, max=container.MAX_PIXELS),
                     default=container.DEFAULT_MAX_PIXELS, show_default=True,
                     help="Refuse larger images (a small file can claim a huge one).")(f)  # fmt: skip
    f = click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
                     help="Where the networks run.")(f)  # fmt: skip
    f = click.option("--model", "model_path", type=click.Path(dir_okay=False, path_type=Path),
                     help="A model file (.safetensors) instead of a preset.")(f)  # fmt: skip
    return click.option("--preset", help="A shipped model preset (see `vqcodec presets`).")(f)


def finite(ctx: click.Context, param: click.Parameter, value: float) -> float:
    if not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a finite number")
    return value


def file_steps_option(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    """Distinct enhancement steps from "STEP,STEP,..." (``vqcodec.settings.MAX_ENHANCEMENT_STEP``);
    None where the option has no default and was not given."""
    if value is None:
        return None
    try:
        steps = tuple(dict.fromkeys(int(part) for part in value.split(",")))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of whole numbers") from None
    if any(abs(s) > MAX_ENHANCEMENT_STEP for s in steps):
        raise click.BadParameter(f"steps must be in {-MAX_ENHANCEMENT_STEP}..{MAX_ENHANCEMENT_STEP}")
    return steps


def rdo_option(f):
    """``--rdo``: how hard the encoder trades quality for rate (see ``vqcodec.Codec``)."""
    return click.option("--rdo", type=click.FloatRange(min=0), default=DEFAULT_RDO, show_default=True,
                        callback=finite, help="Rate-distortion optimisation: 0 codes the nearest codes; more "
                        "gives smaller files of lower quality.")(f)  # fmt: skip


def force_option(f):
    return click.option("--force", "-f", is_flag=True, help="Overwrite OUT if it exists.")(f)


def batch_options(f):
    options = [
        click.option("-o", "--output-dir", type=click.Path(file_okay=False, path_type=Path),
                     help="Many files: write each output into this folder, named after its input."),
        click.option("-r", "--recursive", is_flag=True, help="With -o: also take the files in subfolders."),
        click.option("-j", "--jobs", type=click.IntRange(1), default=1, show_default=True,
                     help="With -o: worker processes (each with --threads threads)."),
        click.option("--shard", metavar="I/N", help="With -o: take every N-th file from the I-th (0-based), to "
                     "split one list over N workers [default: torchrun's RANK/WORLD_SIZE, else all]."),
        click.option("--json", "as_json", is_flag=True, help="Print one JSON object per file."),
        click.option("--quiet", is_flag=True, help="Print errors only."),
        click.option("-v", "--verbose", is_flag=True, help="With -o: a line per file as well."),
    ]  # fmt: skip
    for option in reversed(options):
        f = option(f)
    return f
