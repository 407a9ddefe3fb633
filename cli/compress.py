"""``vqcodec compress``: images to ``.vqc`` files, a thin layer over ``vqcodec.io.batch``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from vqcodec import quality as vqcodec_quality
from vqcodec.defaults import MAX_SCALE, MIN_SCALE
from vqcodec.io import batch
from vqcodec.settings import MAX_ENHANCEMENT_LAYER, MAX_ENHANCEMENT_STEP

from .main import main
from .options import batch_options, finite, force_option, model_options, rdo_option
from .run import check_output, deliver, options_from, read_bytes, run_files, stream_report

#: The --quality help's list of operating points and the qualities that pick each.
QUALITY_HELP = "; ".join(f"{span.start}-{span.stop - 1} {point}" for span, point in vqcodec_quality.qualities())


@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="IN... [OUT]")
@model_options
@rdo_option
@click.option("--rdo-passes", type=click.IntRange(min=1), help="RDO choices, each around the last: more gives "
              "smaller files, slower encoding [default: the preset's, 2 for high, else 1].")  # fmt: skip
@force_option
@click.option(
    "--scale",
    type=click.FloatRange(MIN_SCALE, MAX_SCALE),
    default=1.0,
    show_default=True,
    callback=finite,
    help="Code a copy of the image resampled by X (the decoder resamples it back): above 1, larger "
    "files and better pictures than the preset gives; below 1, smaller files.",
    metavar="X",
)
@click.option(
    "--enhancement",
    type=click.IntRange(0, MAX_ENHANCEMENT_LAYER),
    default=0,
    show_default=True,
    metavar="N",
    help="Code the model's enhancement layer N on top of its code maps, for higher rates and better "
    "pictures than the codes alone give (0: none; the image is coded at its own size).",
)
@click.option(
    "--enhancement-step",
    type=click.IntRange(-MAX_ENHANCEMENT_STEP, MAX_ENHANCEMENT_STEP),
    default=0,
    show_default=True,
    metavar="K",
    help="Quantise the enhancement layer's coefficients 2^(K/8) times as coarsely as it was trained "
    "for: above 0, smaller files; below 0, larger.",
)
@click.option("--strip", is_flag=True, help="Leave the ICC colour profile and EXIF data out of the file.")
@click.option(
    "--no-restoration",
    "no_restoration",
    is_flag=True,
    help="Write no restoration filter: encoding saves its fit, pictures lose a little.",
)
@click.option(
    "-q",
    "--quality",
    type=click.IntRange(0, 100),
    help="0..100, higher: larger files, better pictures; picks --rdo, --rdo-passes, --scale and "
    f"--enhancement(-step) (chosen for the default preset): {QUALITY_HELP} "
    f"[default: the model's settings; the default preset's are quality {vqcodec_quality.DEFAULT_QUALITY}].",
)
@click.option(
    "--target-size", type=click.IntRange(1), metavar="BYTES", help="The best file of any quality that fits in BYTES."
)
@click.option(
    "--target-bpp",
    type=click.FloatRange(0, min_open=True),
    metavar="X",
    help="The best file of any quality within X bits per pixel.",
)
@batch_options
def compress(
    inputs: tuple[Path, ...],
    rdo: float,
    rdo_passes: int | None,
    scale: float,
    enhancement: int,
    enhancement_step: int,
    strip: bool,
    no_restoration: bool,
    quality: int | None,
    target_size: int | None,
    target_bpp: float | None,
    **kwargs,
) -> None:
    """Compress the image IN into the .vqc file OUT ('-': standard input or output), or, with -o,
    every image IN (files, and the images in folders) into the folder given."""
    if quality is not None and (target_size or target_bpp):
        raise click.UsageError("--quality and --target-size/--target-bpp each choose the operating point: give one")
    context = click.get_current_context()
    given = {
        name: value
        for name, value in (
            ("rdo", rdo),
            ("rdo_passes", rdo_passes),
            ("scale", scale),
            ("enhancement", enhancement),
            ("enhancement_step", enhancement_step),
        )
        if context.get_parameter_source(name) != click.core.ParameterSource.DEFAULT
    }
    if given and (quality is not None or target_size or target_bpp):
        flag = "--" + next(iter(given)).replace("_", "-")
        raise click.UsageError(f"--quality and --target-size/--target-bpp set {flag}: give one of them")
    coding = given | ({"strip_metadata": True} if strip else {}) | ({"restore": False} if no_restoration else {})
    options = options_from(kwargs, quality=quality, settings=coding, target_bytes=target_size, target_bpp=target_bpp)
    run_files(batch.compress_file, inputs, ".vqc", batch.IMAGE_SUFFIXES, options, kwargs, _compress_stream)


def _compress_stream(src: Path, out: Path, options: batch.Options, kwargs: dict) -> None:
    """compress with standard input and/or output."""
    data = batch.read_image_stream(sys.stdin.buffer, options) if str(src) == "-" else read_bytes(src)
    if str(out) != "-":
        check_output(src, out, options.force)
    _, encoded = batch.encode_image(data, options)
    deliver(out, encoded.data, options)
    stream_report(src, out, len(data), len(encoded.data), encoded.bpp, kwargs)
