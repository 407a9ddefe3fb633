"""``vqcodec compress | decompress | info``: a thin click layer over the Python API.

Exit codes: 0 success, 1 bad input (any ``VQCodecError``), 2 usage error, 3 internal error.
"""

from __future__ import annotations

import importlib
import io
import json
import math
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, BinaryIO

import click
from PIL import Image
from tqdm import tqdm

import vqcodec
from vqcodec import quality as vqcodec_quality
from vqcodec.coding.restoration import SHAPES, from_bytes
from vqcodec.defaults import DEFAULT_RDO, DEFAULT_THREADS, DEFAULT_TILE, MAX_SCALE, MIN_SCALE
from vqcodec.format import container
from vqcodec.io import batch
from vqcodec.io.files import check_name, check_writable, write_atomic
from vqcodec.nn.config import ARCHITECTURES
from vqcodec.zoo import catalog, modelfile

EXIT_BAD_INPUT = 1
EXIT_INTERNAL = 3
#: 128 + SIGPIPE, what a shell reports for a command whose reader closed the pipe.
EXIT_BROKEN_PIPE = 141


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
        except BrokenPipeError:  # the reader went away (`vqcodec info f.vqc | head -1`): stop quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(EXIT_BROKEN_PIPE)
        except Exception as exc:  # anything else is our bug: say so, briefly
            click.echo(f"internal error: {type(exc).__name__}: {exc}", err=True)
            sys.exit(EXIT_INTERNAL)


def _model_options(f):
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


def _finite(ctx: click.Context, param: click.Parameter, value: float) -> float:
    if not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a finite number")
    return value


def rdo_option(f):
    """``--rdo``: how hard the encoder trades quality for rate (see ``vqcodec.Codec``)."""
    return click.option("--rdo", type=click.FloatRange(min=0), default=DEFAULT_RDO, show_default=True,
                        callback=_finite, help="Rate-distortion optimisation: 0 codes the nearest codes; more "
                        "gives smaller files of lower quality.")(f)  # fmt: skip


_QUALITY_HELP = "; ".join(f"{span.start}-{span.stop - 1} {point}" for span, point in vqcodec_quality.qualities())


def _force_option(f):
    return click.option("--force", "-f", is_flag=True, help="Overwrite OUT if it exists.")(f)


def _check_output(src: Path, path: Path, force: bool) -> None:
    """Refuse, before any work, an output that would overwrite the input (even with --force) or
    that cannot be written (see ``files.check_writable``)."""
    check_name(path)
    if path.exists() and src.exists() and os.path.samefile(src, path):
        raise vqcodec.OutputError(f"{path} is the input file itself")
    check_writable(path, force)


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise vqcodec.VQCodecError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _read_vqc(path: Path, read: Callable[[BinaryIO], bytes] = container.read_file) -> bytes:
    """A ``.vqc`` file from ``path`` or standard input ("-"), read no further than its header says
    the file runs (so a huge file, a pipe or a device is refused after a few bytes)."""
    if str(path) == "-":
        return read(sys.stdin.buffer)
    try:
        with path.open("rb") as f:
            return read(f)
    except OSError as exc:
        raise vqcodec.VQCodecError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _terminated(signum: int, frame: object) -> None:
    sys.exit(128 + signum)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(vqcodec.__version__, prog_name="vqcodec")
def main() -> None:
    """vqcodec: learned image compression with a VQ-VAE-2 and PixelSNAIL priors."""
    warnings.showwarning = _show_warning
    # SIGTERM (kill, a service manager) ends the command as Ctrl-C does: through its clean-ups,
    # so no temporary output is left behind.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminated)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line, like errors: no Python source line."""
    click.echo(f"warning: {message}", err=True)


def _batch_options(f):
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


@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="IN... [OUT]")
@_model_options
@rdo_option
@click.option("--rdo-passes", type=click.IntRange(min=1), help="RDO choices, each around the last: more gives "
              "smaller files, slower encoding [default: the preset's, 2 for high, else 1].")  # fmt: skip
@_force_option
@click.option(
    "--scale",
    type=click.FloatRange(MIN_SCALE, MAX_SCALE),
    default=1.0,
    show_default=True,
    callback=_finite,
    help="Code a copy of the image resampled by X (the decoder resamples it back): above 1, larger "
    "files and better pictures than the preset gives; below 1, smaller files.",
    metavar="X",
)
@click.option("--strip", is_flag=True, help="Leave the ICC colour profile and EXIF data out of the file.")
@click.option(
    "--no-restoration",
    "no_restoration",
    is_flag=True,
    help="Write no restoration filter: encoding saves one synthesis, pictures lose 0.1-0.5 dB.",
)
@click.option(
    "-q",
    "--quality",
    type=click.IntRange(0, 100),
    help="0..100, higher: larger files, better "
    f"pictures; picks --rdo, --rdo-passes and --scale (chosen for the default preset): {_QUALITY_HELP} "
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
@_batch_options
def compress(
    inputs: tuple[Path, ...],
    rdo: float,
    rdo_passes: int | None,
    scale: float,
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
        for name, value in (("rdo", rdo), ("rdo_passes", rdo_passes), ("scale", scale))
        if context.get_parameter_source(name) != click.core.ParameterSource.DEFAULT
    }
    if given and (quality is not None or target_size or target_bpp):
        flag = "--" + next(iter(given)).replace("_", "-")
        raise click.UsageError(f"--quality and --target-size/--target-bpp set {flag}: give one of them")
    coding = given | ({"strip_metadata": True} if strip else {}) | ({"restore": False} if no_restoration else {})
    options = _options(kwargs, quality=quality, settings=coding, target_bytes=target_size, target_bpp=target_bpp)
    _run(batch.compress_file, inputs, ".vqc", batch.IMAGE_SUFFIXES, options, kwargs, _compress_stream)


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
@_model_options
@_force_option
@click.option("--format", "image_format", help="Image format of OUT, where no file name says it (OUT '-' or -o) "
              "[default: png]: png, webp, jpeg, tiff, bmp, ...")  # fmt: skip
@click.option("--quality", type=click.IntRange(0, 100), help="For a lossy OUT format (jpeg, webp): its quality.")
@click.option("--region", metavar="X,Y,W,H", callback=_region,
              help="Decode only this rectangle (pixels: left, top, width, height), exactly as in the whole "
              "image, decoding only what it needs.")  # fmt: skip
@_batch_options
def decompress(
    inputs: tuple[Path, ...], image_format: str | None, quality: int | None, region: tuple | None, **kwargs
) -> None:
    """Decompress the .vqc file IN into the image OUT ('-': standard input or output; the format
    from OUT's extension or --format), or, with -o, every .vqc file IN into the folder given. The
    shipped model that made each file is found from the file; --preset or --model name another."""
    single_out = inputs[-1] if kwargs["output_dir"] is None and len(inputs) == 2 else None
    fmt = _image_format(image_format, single_out)
    options = _options(kwargs, image_format=fmt, image_quality=quality, region=region)
    suffix = "." + fmt.lower().replace("jpeg", "jpg")
    _run(batch.decompress_file, inputs, suffix, batch.VQC_SUFFIXES, options, kwargs, _decompress_stream)


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


def _options(kwargs: dict, **extra) -> batch.Options:
    if kwargs["model_path"] is not None:
        modelfile.check(kwargs["model_path"])  # a bad model file is refused before torch is imported
    return batch.Options(
        preset=kwargs["preset"], model_path=kwargs["model_path"], device=kwargs["device"],
        max_pixels=kwargs["max_pixels"], threads=kwargs["threads"], force=kwargs["force"], **extra,
    )  # fmt: skip


def _run(work, inputs, suffix, suffixes, options: batch.Options, kwargs: dict, stream) -> None:
    """One file (IN OUT, either may be '-') or, with -o, many; report, and exit 1 if any failed."""
    out_dir = kwargs["output_dir"]
    if out_dir is None:
        if len(inputs) != 2:
            raise click.UsageError("give IN and OUT, or several inputs with -o/--output-dir")
        src, out = inputs
        if "-" in (str(src), str(out)):
            stream(src, out, options, kwargs)
            return
        _check_output(src, out, options.force)
        outcome = next(batch.run(work, [(src, out)], options))
        _report(outcome, kwargs, single=True)
        if outcome.status != "ok":
            sys.exit(EXIT_BAD_INPUT)
        return
    if not out_dir.is_dir():
        raise vqcodec.OutputError(f"output folder {out_dir} does not exist")
    files = batch.expand(list(inputs), suffixes, kwargs["recursive"])
    files = _sharded(files, kwargs["shard"])
    pairs = batch.plan(files, out_dir, suffix)
    start = time.perf_counter()
    outcomes = []
    with tqdm(total=len(pairs), unit="file", disable=kwargs["quiet"] or kwargs["as_json"], file=sys.stderr) as bar:
        for outcome in batch.run(work, pairs, options, kwargs["jobs"]):
            outcomes.append(outcome)
            bar.update(1)
            with tqdm.external_write_mode(file=sys.stderr):
                _report(outcome, kwargs, single=False)
    if not kwargs["quiet"]:
        click.echo(batch.summary(outcomes, time.perf_counter() - start), err=kwargs["as_json"])
    if any(o.status != "ok" for o in outcomes):
        sys.exit(EXIT_BAD_INPUT)


def _sharded(files: list[Path], text: str | None) -> list[Path]:
    """This worker's share of ``files`` (--shard I/N, else the launcher's RANK and WORLD_SIZE);
    a shard that cannot be, from the options or the environment, is a usage error (exit 2)."""
    try:
        if text is None:
            index, count = batch.env_shard()
        else:
            index, count = (int(part) for part in text.split("/"))
    except ValueError as exc:
        source = f"--shard {text!r}" if text else "RANK and WORLD_SIZE"
        raise click.UsageError(f"{source}: give whole numbers, e.g. --shard 0/4") from exc
    try:
        return batch.shard(files, index, count)
    except vqcodec.UsageError as exc:
        raise click.UsageError(str(exc)) from exc


def _report(outcome: batch.Outcome, kwargs: dict, single: bool) -> None:
    if kwargs["as_json"]:
        click.echo(json.dumps(outcome.to_dict()))
    elif outcome.status != "ok":
        click.echo(f"error: {outcome.input}: {outcome.error}" if not single else f"error: {outcome.error}", err=True)
    elif not kwargs["quiet"] and (single or kwargs["verbose"]):
        click.echo(
            f"{outcome.input} -> {outcome.output}: {outcome.width}x{outcome.height}, {outcome.bytes_out} bytes, "
            f"{outcome.bpp:.4f} bpp, {outcome.seconds:.2f} s"
        )


def _compress_stream(src: Path, out: Path, options: batch.Options, kwargs: dict) -> None:
    """compress with standard input and/or output."""
    data = batch.read_image_stream(sys.stdin.buffer, options) if str(src) == "-" else _read_bytes(src)
    if str(out) != "-":
        _check_output(src, out, options.force)
    _, encoded = batch.encode_image(data, options)
    _deliver(out, encoded.data, options)
    _stream_report(src, out, len(data), len(encoded.data), encoded.bpp, kwargs)


def _decompress_stream(src: Path, out: Path, options: batch.Options, kwargs: dict) -> None:
    """decompress with standard input and/or output."""
    data = _read_vqc(src, batch.read_checked)
    if str(out) != "-":
        _check_output(src, out, options.force)
    codec = batch.codec_for(options, data)
    image = batch.decode_image(codec, data, options)
    buffer = io.BytesIO()
    batch.save_image(image, buffer, options)
    _deliver(out, buffer.getvalue(), options)
    _stream_report(src, out, len(data), buffer.tell(), batch.bits_per_pixel(data), kwargs)


def _deliver(out: Path, data: bytes, options: batch.Options) -> None:
    if str(out) == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        write_atomic(out, data, replace=options.force)


def _stream_report(src: Path, out: Path, bytes_in: int, bytes_out: int, bpp: float, kwargs: dict) -> None:
    """Report on standard error when standard output carries the data."""
    if kwargs["quiet"]:
        return
    text = (json.dumps({"input": str(src), "output": str(out), "status": "ok", "bytes_in": bytes_in,
                        "bytes_out": bytes_out, "bpp": bpp}) if kwargs["as_json"]
            else f"{src} -> {out}: {bytes_out} bytes, {bpp:.4f} bpp")  # fmt: skip
    click.echo(text, err=str(out) == "-")


@main.command()
@click.argument("src", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def info(src: Path, as_json: bool) -> None:
    """Show the header of the .vqc file SRC: model, image, streams, bpp and bits per code (the file
    is checked, not decoded; a damaged one is shown as far as it reads, and exits 1)."""
    data = _read_vqc(src)
    # A longer file was read only as far as its header says it runs: its size is its own.
    size = src.stat().st_size if str(src) != "-" and src.is_file() else len(data)
    h = container.read_header(data)
    restoration = None
    try:
        _, streams = container.unpack(data)
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
        "maps": maps, "alpha_bytes": h.alpha_len, "restoration": restoration, "problem": problem,
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
_colour_option = click.option(
    "--colour-augment",
    "colour",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Share of crops recoloured or replaced by flat colours and ramps, so rare colours come back right.",
)


def _training() -> ModuleType:
    """``vqcodec.training.train``, imported when a training command runs: it brings torch, which the other
    commands' start-up does without."""
    return importlib.import_module("vqcodec.training.train")


def _settings(kwargs: dict) -> Any:
    settings = _training().Settings
    return settings(**{k: kwargs.pop(k) for k in list(kwargs) if k in settings.__dataclass_fields__})


@train.command(name="vqvae")
@click.option("--data", "folder", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Checkpoint file.")
@click.option("--arch", type=click.Choice(sorted(ARCHITECTURES)), default="medium", show_default=True)
@_init_option
@_colour_option
@click.option(
    "--replicate-edges", is_flag=True, help="Convolutions see the edge values repeated beyond the edges, not zeros."
)
@_settings_options(128, "Crop side in pixels.")
def train_vqvae_command(
    folder: Path, out: Path, arch: str, init: str | None, replicate_edges: bool, **kwargs: Any
) -> None:
    """Stage 1: train a VQ-VAE on the images in DATA (resumes from OUT if it exists)."""
    _training().init_distributed()
    _training().train_vqvae(folder, out, arch, _settings(kwargs), init, replicate_edges)
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
@click.option("--rdo", type=click.FloatRange(min=0), default=0.0, show_default=True, callback=_finite,
              help="Learn the codes the encoder writes at this RDO strength, priced by the priors of "
              "--vqvae (a finished model), instead of the nearest codes.")  # fmt: skip
@_bf16_option
@_settings_options(DEFAULT_TILE, "Crop side in top-map codes (bottom crops are twice that).")
def train_prior_command(
    vqvae_source: str, folder: Path, out: Path, arch: str | None, init: str | None, rdo: float, **kwargs
) -> None:
    """Stage 2: train the priors on the code maps of DATA; writes the codec model OUT."""
    _training().init_distributed()
    checkpoint = out.with_name(out.name + ".ckpt")
    _training().train_prior(vqvae_source, folder, checkpoint, out, _settings(kwargs), arch, init, rdo)
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
@_colour_option
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
