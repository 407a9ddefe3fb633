"""``vqcodec info`` and ``vqcodec presets``: what a file holds and what is installed, without torch."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import click

import vqcodec
from vqcodec.coding.restoration import SHAPES, from_bytes
from vqcodec.format import container
from vqcodec.zoo import catalog

from .main import main
from .run import read_vqc


@main.command()
@click.argument("src", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def info(src: Path, as_json: bool) -> None:
    """Show the header of the .vqc file SRC: model, image, streams, bpp and bits per code (the file
    is checked, not decoded; a damaged one is shown as far as it reads, and exits 1)."""
    data = read_vqc(src)
    # A longer file was read only as far as its header says it runs: its size is its own.
    size = src.stat().st_size if str(src) != "-" and src.is_file() else len(data)
    h = container.read_header(data)
    restoration = enhancement = None
    try:
        _, streams = container.unpack(data)
        if streams.enhancement:
            layer, step, _, _ = container.read_enhancement(streams.enhancement)
            enhancement = {"layer": layer, "step": step, "bytes": len(streams.enhancement),
                           "bits_per_pixel": 8 * len(streams.enhancement) / (h.width * h.height)}  # fmt: skip
        if streams.filter:
            shape = SHAPES[from_bytes(streams.filter).shape]
            restoration = {"bytes": len(streams.filter), "radius": shape.radius, "cross": shape.cross,
                           "description": shape.describe()}  # fmt: skip
        problem = None
    except vqcodec.FormatError as exc:
        problem = str(exc)
    maps = {
        name: {"width": shape[1], "height": shape[0], "bytes": length, "bits_per_code": 8 * length / math.prod(shape)}
        for name, shape, length in (("top", h.top_shape, h.top_len), ("bottom", h.bottom_shape, h.bottom_len))
    }
    fields = {
        "version": h.version, "metadata": h.has_metadata, "resampled": h.resampled, "model": h.model_id.hex(),
        "preset": catalog.name_of(h.model_id), "width": h.width, "height": h.height, "channels": h.channels,
        "padding": [h.pad_x, h.pad_y], "tile": h.tile, "bytes": size, "bpp": 8 * size / (h.width * h.height),
        "maps": maps, "alpha_bytes": h.alpha_len, "restoration": restoration, "enhancement": enhancement,
        "problem": problem,
    }  # fmt: skip
    if as_json:
        click.echo(json.dumps(fields))
        if problem:
            sys.exit(1)
        return
    rows = [
        (
            "format",
            f".vqc version {h.version}"
            + (", with metadata" if h.has_metadata else "")
            + (", codes a resampled copy of the image" if h.resampled else ""),
        ),
        ("model", f"{h.model_id.hex()} ({fields['preset'] or 'not installed'})"),
        ("image", f"{h.width}x{h.height}, {h.channels} channel(s), padded by {h.pad_x}x{h.pad_y}"),
        ("tiles", f"{h.tile}x{h.tile} top codes, {2 * h.tile}x{2 * h.tile} bottom codes"),
        ("file", f"{size} bytes" + (f" (DAMAGED: {problem})" if problem else "")),
        ("bpp", f"{fields['bpp']:.4f}"),
    ]
    for name, m in maps.items():
        rows.append((f"{name} map", f"{m['width']}x{m['height']} codes, {m['bytes']} bytes, "
                     f"{m['bits_per_code']:.3f} bits/code"))  # fmt: skip
    if h.has_alpha:
        rows.append(("alpha", f"{h.alpha_len} bytes (lossless)"))
    if enhancement:
        step = f" at step {enhancement['step']:+d}" if enhancement["step"] else ""
        rows.append(("enhance", f"layer {enhancement['layer']}{step}, {enhancement['bytes']} bytes, "
                     f"{enhancement['bits_per_pixel']:.4f} bpp"))  # fmt: skip
    if restoration:
        rows.append(("filter", f"{restoration['bytes']} bytes ({restoration['description']})"))
    for key, value in rows:
        click.echo(f"{key:>10}: {value}")
    if problem:
        sys.exit(1)


@main.command(name="presets")
def list_presets() -> None:
    """List the model presets shipped with this install."""
    names = vqcodec.presets()
    if not names:
        click.echo(f"no presets installed: {catalog.TRAINING_HINT}")
    for name in names:
        click.echo(name)
