"""``vqcodec compress | decompress | info``: a thin click layer over the Python API.

Exit codes: 0 success, 1 bad input (any ``VQCodecError``), 2 usage error, 3 internal error.
"""

from __future__ import annotations

import importlib
import io
import math
import os
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import click
from PIL import Image

import vqcodec
from vqcodec import catalog, container
from vqcodec.config import ARCHITECTURES
from vqcodec.defaults import DEFAULT_RDO, DEFAULT_THREADS, DEFAULT_TILE
from vqcodec.files import check_writable, write_atomic

EXIT_BAD_INPUT = 1
EXIT_INTERNAL = 3


class _Group(click.Group):
    """Turns codec errors into one-line messages with distinct exit codes."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except vqcodec.VQCodecError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_BAD_INPUT)
        except Exception as exc:  # anything else is our bug: say so, briefly
            click.echo(f"internal error: {type(exc).__name__}: {exc}", err=True)
            sys.exit(EXIT_INTERNAL)


def _model_options(f):
    f = click.option("--threads", type=click.IntRange(min=1), default=DEFAULT_THREADS, show_default=True,
                     help="CPU threads for the priors (the results are the same for any number).")(f)  # fmt: skip
    f = click.option("--max-pixels", type=click.IntRange(min=1, max=container.MAX_PIXELS),
                     default=container.DEFAULT_MAX_PIXELS, show_default=True,
                     help="Refuse larger images (a small file can claim a huge one).")(f)  # fmt: skip
    f = click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
                     help="Where the networks run.")(f)  # fmt: skip
    f = click.option("--model", "model_path", type=click.Path(dir_okay=False, path_type=Path),
                     help="A model file (.safetensors) instead of a preset.")(f)  # fmt: skip
    return click.option("--preset", help="A shipped model preset (see `vqcodec presets`).")(f)


def _finite(ctx: click.Context, param: click.Parameter, value: float) -> float:
    if not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a finite number")
    return value


def rdo_option(f):
    """``--rdo``: how hard the encoder trades quality for rate (see ``vqcodec.Codec``)."""
    return click.option("--rdo", type=click.FloatRange(min=0), default=DEFAULT_RDO, show_default=True,
                        callback=_finite, help="Rate-distortion optimisation: 0 codes the nearest codes; more "
                        "gives smaller files of lower quality.")(f)  # fmt: skip


def _force_option(f):
    return click.option("--force", "-f", is_flag=True, help="Overwrite OUT if it exists.")(f)


def _check_output(src: Path, path: Path, force: bool) -> None:
    """Refuse, before any work, an output that would overwrite the input (even with --force) or
    that cannot be written (see ``files.check_writable``)."""
    if path.exists() and src.exists() and os.path.samefile(src, path):
        raise vqcodec.OutputError(f"{path} is the input file itself")
    check_writable(path, force)


def _use_threads(threads: int) -> None:
    import torch  # here: the commands that need no network start without it

    torch.set_num_threads(threads)


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise vqcodec.VQCodecError(f"cannot read {path}: {exc.strerror or exc}") from exc


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(vqcodec.__version__, prog_name="vqcodec")
def main() -> None:
    """vqcodec: learned image compression with a VQ-VAE-2 and PixelSNAIL priors."""


@main.command()
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@_model_options
@rdo_option
@click.option("--rdo-passes", type=click.IntRange(min=1), help="RDO choices, each around the last: more gives "
              "smaller files, slower encoding [default: the preset's, 2 for high, else 1].")  # fmt: skip
@_force_option
def compress(
    src: Path,
    out: Path,
    preset: str | None,
    model_path: Path | None,
    device: str,
    rdo: float,
    rdo_passes: int | None,
    force: bool,
    max_pixels: int,
    threads: int,
) -> None:
    """Compress the image SRC into the .vqc file OUT."""
    _check_output(src, out, force)
    _use_threads(threads)
    codec = vqcodec.load(preset, path=model_path, device=device, rdo=rdo, rdo_passes=rdo_passes, max_pixels=max_pixels)
    start = time.perf_counter()
    encoded = codec.encode(src)
    write_atomic(out, encoded.data, replace=force)
    click.echo(f"{src} -> {out}: {len(encoded.data)} bytes, {encoded.bpp:.4f} bpp, {time.perf_counter() - start:.2f} s")


@main.command()
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@_model_options
@_force_option
def decompress(
    src: Path,
    out: Path,
    preset: str | None,
    model_path: Path | None,
    device: str,
    force: bool,
    max_pixels: int,
    threads: int,
) -> None:
    """Decompress the .vqc file SRC into the image OUT (format from its extension, e.g. .png).
    The shipped model that made SRC is found from the file; --preset or --model name another."""
    _check_output(src, out, force)
    fmt = Image.registered_extensions().get(out.suffix.lower())
    if fmt is None:
        raise click.UsageError(f"cannot tell the image format of {out} from its extension (use .png)")
    data = _read_bytes(src)
    _use_threads(threads)
    if preset is None and model_path is None:
        codec = vqcodec.load_for(data, device=device, max_pixels=max_pixels)
    else:
        codec = vqcodec.load(preset, path=model_path, device=device, max_pixels=max_pixels)
    start = time.perf_counter()
    image = codec.decompress(data)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    write_atomic(out, buffer.getvalue(), replace=force)
    bpp = 8 * len(data) / (image.width * image.height)
    click.echo(
        f"{src} -> {out}: {image.width}x{image.height} {image.mode}, {bpp:.4f} bpp, {time.perf_counter() - start:.2f} s"
    )


@main.command()
@click.argument("src", type=click.Path(path_type=Path))
def info(src: Path) -> None:
    """Show the header of the .vqc file SRC: model, image, streams, bpp and bits per code."""
    data = _read_bytes(src)
    h = container.read_header(data)
    pixels = h.width * h.height
    complete = len(data) == container.HEADER_SIZE + h.payload_len
    rows = [
        ("format", f".vqc version {container.VERSION}"),
        ("model", f"{h.model_id.hex()} ({catalog.name_of(h.model_id) or 'not installed'})"),
        ("image", f"{h.width}x{h.height}, {h.channels} channel(s), padded by {h.pad_x}x{h.pad_y}"),
        ("tiles", f"{h.tile}x{h.tile} top codes, {2 * h.tile}x{2 * h.tile} bottom codes"),
        ("file", f"{len(data)} bytes{'' if complete else ' (INCOMPLETE or with trailing bytes)'}"),
        ("bpp", f"{8 * len(data) / pixels:.4f}"),
    ]
    for name, shape, length in (("top", h.top_shape, h.top_len), ("bottom", h.bottom_shape, h.bottom_len)):
        codes = shape[0] * shape[1]
        rows.append((f"{name} map", f"{shape[1]}x{shape[0]} codes, {length} bytes, {8 * length / codes:.3f} bits/code"))
    if h.has_alpha:
        rows.append(("alpha", f"{h.alpha_len} bytes (lossless)"))
    for key, value in rows:
        click.echo(f"{key:>10}: {value}")


@main.command(name="presets")
def list_presets() -> None:
    """List the model presets shipped with this install."""
    names = vqcodec.presets()
    if not names:
        click.echo(f"no presets installed: {catalog.TRAINING_HINT}")
    for name in names:
        click.echo(name)


@main.group()
def train() -> None:
    """Train models: `train vqvae` first, then `train prior` on its code maps; `train decoder`
    fine-tunes a finished model's synthesis, `train combine` joins it to retrained priors."""


def _settings_options(crop_default: int, crop_help: str):
    def wrap(f):
        options = [
            click.option("--steps", type=click.IntRange(1), default=20000, show_default=True),
            click.option("--batch", type=click.IntRange(1), default=16, show_default=True),
            click.option("--crop", type=click.IntRange(1), default=crop_default, show_default=True, help=crop_help),
            click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=3e-4, show_default=True),
            click.option("--seed", type=int, default=0, show_default=True),
            click.option("--val-every", type=click.IntRange(1), default=500, show_default=True),
            click.option("--checkpoint-every", type=click.IntRange(1), default=1000, show_default=True),
        ]
        for option in reversed(options):
            f = option(f)
        return f

    return wrap


_init_option = click.option(
    "--init", metavar="PRESET|PATH", help="Fine-tune: start from the weights of a shipped preset or model file."
)


_bf16_option = click.option("--bf16", is_flag=True, help="Train in bfloat16 autocast (about twice as fast).")


def _training() -> ModuleType:
    """``vqcodec.train``, imported when a training command runs: it brings torch, which the other
    commands' start-up does without."""
    return importlib.import_module("vqcodec.train")


def _settings(kwargs: dict) -> Any:
    settings = _training().Settings
    return settings(**{k: kwargs.pop(k) for k in list(kwargs) if k in settings.__dataclass_fields__})


@train.command(name="vqvae")
@click.option("--data", "folder", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Checkpoint file.")
@click.option("--arch", type=click.Choice(sorted(ARCHITECTURES)), default="medium", show_default=True)
@_init_option
@_settings_options(128, "Crop side in pixels.")
def train_vqvae_command(folder: Path, out: Path, arch: str, init: str | None, **kwargs) -> None:
    """Stage 1: train a VQ-VAE on the images in DATA (resumes from OUT if it exists)."""
    _training().init_distributed()
    _training().train_vqvae(folder, out, arch, _settings(kwargs), init)
    click.echo(f"VQ-VAE checkpoint: {out} (log: {out.with_suffix('.jsonl')})")


@train.command(name="prior")
@click.option(
    "--vqvae",
    "vqvae_source",
    required=True,
    metavar="CKPT|PRESET|PATH",
    help="A stage-1 checkpoint, or a finished model whose VQ-VAE to keep (its priors are retrained).",
)
@click.option("--data", "folder", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Finished model file.")
@click.option("--arch", type=click.Choice(sorted(ARCHITECTURES)), help="Priors' architecture [default: the VQ-VAE's].")
@_init_option
@_bf16_option
@_settings_options(DEFAULT_TILE, "Crop side in top-map codes (bottom crops are twice that).")
def train_prior_command(
    vqvae_source: str, folder: Path, out: Path, arch: str | None, init: str | None, **kwargs
) -> None:
    """Stage 2: train the priors on the code maps of DATA; writes the codec model OUT."""
    _training().init_distributed()
    checkpoint = out.with_name(out.name + ".ckpt")
    _training().train_prior(vqvae_source, folder, checkpoint, out, _settings(kwargs), arch, init)
    _report_model(out, checkpoint)


@train.command(name="decoder")
@click.option("--model", "source", required=True, metavar="PRESET|PATH", help="The finished model to fine-tune.")
@click.option("--data", "folder", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Tuned model file.")
@click.option("--synth-channels", type=click.IntRange(2), help="Grow the synthesis to this width.")
@click.option("--synth-res-blocks", type=click.IntRange(0), help="Grow the synthesis to this many residual blocks.")
@click.option("--synth-res-channels", type=click.IntRange(2), help="Grow the residual blocks to this width.")
@click.option("--synth-up-blocks", type=click.IntRange(0), help="Grow: residual blocks after each inner upsampling.")
@_bf16_option
@_settings_options(128, "Crop side in pixels.")
def train_decoder_command(source: str, folder: Path, out: Path, **kwargs) -> None:
    """Stage 3: fine-tune MODEL's synthesis on its own codes of DATA; codes and file sizes stay
    the same, only the reconstruction changes. Writes the tuned model OUT. The --synth-* options
    first grow the synthesis, starting from exactly what it computes (files of MODEL still decode
    to the same maps; the new model has its own identifier)."""
    _training().init_distributed()
    checkpoint = out.with_name(out.name + ".ckpt")
    sizes = {k: kwargs.pop(k) for k in [k for k in kwargs if k.startswith("synth_")]}
    grow = {k: v for k, v in sizes.items() if v is not None}
    _training().train_decoder(source, folder, checkpoint, out, _settings(kwargs), grow)
    _report_model(out, checkpoint)


@train.command(name="combine")
@click.option("--priors", required=True, metavar="PRESET|PATH", help="The model whose priors (and codes) to keep.")
@click.option("--synthesis", required=True, metavar="PRESET|PATH", help="The model whose synthesis to take.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Combined model file.")
def train_combine_command(priors: str, synthesis: str, out: Path) -> None:
    """Join a `train prior` run and a `train decoder` run made side by side on one model: the
    priors of the first with the synthesis of the second. Both must code images alike."""
    _training().combine(priors, synthesis, out)
    click.echo(f"model: {out}")


def _report_model(out: Path, checkpoint: Path) -> None:
    click.echo(f"model: {out} (checkpoint: {checkpoint}, log: {checkpoint.with_suffix('.jsonl')})")
