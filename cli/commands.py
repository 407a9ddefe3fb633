"""``vqcodec compress | decompress | info``: a thin click layer over the Python API.

Exit codes: 0 success, 1 bad input (any ``VQCodecError``), 2 usage error, 3 internal error.
"""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path

import click
from PIL import Image

import vqcodec
from vqcodec import container
from vqcodec.files import write_atomic

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
    f = click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
                     help="Where the networks run.")(f)  # fmt: skip
    f = click.option("--model", "model_path", type=click.Path(dir_okay=False, path_type=Path),
                     help="A model file (.safetensors) instead of a preset.")(f)  # fmt: skip
    return click.option("--preset", help="A shipped model preset (see `vqcodec presets`).")(f)


def _force_option(f):
    return click.option("--force", "-f", is_flag=True, help="Overwrite OUT if it exists.")(f)


def _load(preset: str | None, model_path: Path | None, device: str) -> vqcodec.Codec:
    return vqcodec.load(preset, path=model_path, device=device)


def _check_output(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise click.UsageError(f"{path} exists; pass --force to overwrite it")
    if path.is_dir():
        raise click.UsageError(f"{path} is a folder")


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
@_force_option
def compress(src: Path, out: Path, preset: str | None, model_path: Path | None, device: str, force: bool) -> None:
    """Compress the image SRC into the .vqc file OUT."""
    _check_output(out, force)
    codec = _load(preset, model_path, device)
    start = time.perf_counter()
    encoded = codec.encode(src)
    write_atomic(out, encoded.data)
    click.echo(f"{src} -> {out}: {len(encoded.data)} bytes, {encoded.bpp:.4f} bpp, {time.perf_counter() - start:.2f} s")


@main.command()
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@_model_options
@_force_option
def decompress(src: Path, out: Path, preset: str | None, model_path: Path | None, device: str, force: bool) -> None:
    """Decompress the .vqc file SRC into the image OUT (format from its extension, e.g. .png)."""
    _check_output(out, force)
    fmt = Image.registered_extensions().get(out.suffix.lower())
    if fmt is None:
        raise click.UsageError(f"cannot tell the image format of {out} from its extension (use .png)")
    data = _read_bytes(src)
    codec = _load(preset, model_path, device)
    start = time.perf_counter()
    image = codec.decompress(data)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    write_atomic(out, buffer.getvalue())
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
        ("model", h.model_id.hex()),
        ("image", f"{h.width}x{h.height}, {h.channels} channel(s), padded by {h.pad_x}x{h.pad_y}"),
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
        click.echo(f"no presets installed: {vqcodec.codec.TRAINING_HINT}")
    for name in names:
        click.echo(name)
