"""``vqcodec decompress``: ``.vqc`` files to images, a thin layer over ``vqcodec.io.batch``."""

from __future__ import annotations

import io
from pathlib import Path

import click
from PIL import Image

from vqcodec.io import batch

from .main import main
from .options import batch_options, force_option, model_options
from .run import check_output, deliver, options_from, read_vqc, run_files, stream_report


def _region(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, int, int, int] | None:
    """--region X,Y,W,H as four whole numbers (whether it lies inside an image is checked per file)."""
    if value is None:
        return None
    parts = value.split(",")
    if len(parts) != 4 or not all(p.strip().isdigit() for p in parts) or int(parts[2]) < 1 or int(parts[3]) < 1:
        raise click.BadParameter(f"expected X,Y,W,H (whole numbers, width and height at least 1), not {value!r}")
    x, y, w, h = (int(p) for p in parts)
    return x, y, w, h


@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="IN... [OUT]")
@model_options
@force_option
@click.option("--format", "image_format", help="Image format of OUT, where no file name says it (OUT '-' or -o) "
              "[default: png]: png, webp, jpeg, tiff, bmp, ...")  # fmt: skip
@click.option("--quality", type=click.IntRange(0, 100), help="For a lossy OUT format (jpeg, webp): its quality.")
@click.option("--region", metavar="X,Y,W,H", callback=_region,
              help="Decode only this rectangle (pixels: left, top, width, height), exactly as in the whole "
              "image, decoding only what it needs.")  # fmt: skip
@batch_options
def decompress(
    inputs: tuple[Path, ...], image_format: str | None, quality: int | None, region: tuple | None, **kwargs
) -> None:
    """Decompress the .vqc file IN into the image OUT ('-': standard input or output; the format
    from OUT's extension or --format), or, with -o, every .vqc file IN into the folder given. The
    shipped model that made each file is found from the file; --preset or --model name another."""
    single_out = inputs[-1] if kwargs["output_dir"] is None and len(inputs) == 2 else None
    fmt = _image_format(image_format, single_out)
    options = options_from(kwargs, image_format=fmt, image_quality=quality, region=region)
    suffix = "." + fmt.lower().replace("jpeg", "jpg")
    run_files(batch.decompress_file, inputs, suffix, batch.VQC_SUFFIXES, options, kwargs, _decompress_stream)


def _image_format(name: str | None, out: Path | None) -> str:
    """The Pillow format: --format, else OUT's extension, else PNG."""
    if name:
        fmt = Image.registered_extensions().get("." + name.lower().lstrip("."))
        if fmt is None or fmt not in Image.SAVE:
            raise click.UsageError(f"unknown image format {name!r}")
        return fmt
    if out is None or str(out) == "-":
        return "PNG"
    fmt = Image.registered_extensions().get(out.suffix.lower())
    if fmt is None:
        raise click.UsageError(f"cannot tell the image format of {out} from its extension (use .png or --format)")
    return fmt


def _decompress_stream(src: Path, out: Path, options: batch.Options, kwargs: dict) -> None:
    """decompress with standard input and/or output."""
    data = read_vqc(src, batch.read_checked)
    if str(out) != "-":
        check_output(src, out, options.force)
    codec = batch.codec_for(options, data)
    image = batch.decode_image(codec, data, options)
    buffer = io.BytesIO()
    batch.save_image(image, buffer, options)
    deliver(out, buffer.getvalue(), options)
    stream_report(src, out, len(data), buffer.tell(), batch.bits_per_pixel(data), kwargs)
