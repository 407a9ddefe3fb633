"""Many files at once: inputs expanded from files and folders, output names derived from input
names, the work spread over processes (each with its own codecs and torch threads), and every
file's outcome reported; a file that fails is reported and the others go on.

For more than one machine, ``shard`` gives each of N workers (``torchrun`` ranks, Ray or Dask
tasks, cluster array jobs) every N-th file of one sorted list, so they split it without talking.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from .. import quality
from ..errors import LimitError, OutputError, UsageError, VQCodecError
from ..format.container import DEFAULT_MAX_PIXELS, MAX_METADATA, MODES, decode_metadata, read_file, read_header, unpack
from .files import check_writable, write_atomic

#: Files a folder contributes: images to compress, ``.vqc`` files to decompress.
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".gif"}
VQC_SUFFIXES = {".vqc"}


@dataclass(frozen=True)
class Options:
    """How every file of a run is coded (the command line's options)."""

    preset: str | None = None
    model_path: Path | None = None
    device: str = "auto"
    max_pixels: int | None = None
    threads: int = 1
    force: bool = False
    quality: int | None = None  # compress: the operating point of this quality
    settings: dict[str, Any] = field(default_factory=dict)  # compress: ``Settings`` fields to override
    image_format: str = "PNG"  # decompress: the Pillow format to write
    image_quality: int | None = None  # decompress to a lossy format: its quality
    target_bytes: int | None = None  # compress: the largest file of any quality within this size
    target_bpp: float | None = None  # the same, in bits per pixel
    region: tuple[int, int, int, int] | None = None  # decompress: only this rectangle (x, y, width, height)


@dataclass
class Outcome:
    """What became of one file: one JSON object of ``--json``."""

    input: str
    output: str
    status: str = "ok"
    error: str | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    width: int = 0
    height: int = 0
    bpp: float = 0.0
    seconds: float = 0.0
    model: str | None = None
    bits_per_code: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def expand(inputs: Sequence[Path], suffixes: set[str], recursive: bool) -> list[Path]:
    """Files as given, and the files with ``suffixes`` inside folders (their subfolders too with
    ``recursive``), each folder's files sorted by path; a file named twice is taken once."""
    files: list[Path] = []
    for path in inputs:
        if path.is_dir():
            pattern = "**/*" if recursive else "*"
            files += sorted(p for p in path.glob(pattern) if p.is_file() and p.suffix.lower() in suffixes)
        else:
            files.append(path)
    unique = {p.resolve(): p for p in reversed(files)}
    return [p for p in files if unique[p.resolve()] is p]


def shard(files: Sequence[Path], index: int, count: int) -> list[Path]:
    """Worker ``index`` of ``count``'s share: every ``count``-th file from the ``index``-th, so the
    shards of one list are disjoint and together cover it."""
    if not 0 <= index < count:
        raise UsageError(f"shard {index} of {count} does not exist (0 <= index < count)")
    return list(files[index::count])


def plan(files: Sequence[Path], out_dir: Path, suffix: str) -> list[tuple[Path, Path]]:
    """(input, output) pairs: each output in ``out_dir``, named as its input with ``suffix``. Two
    inputs that would write one output are refused before any work."""
    pairs = [(src, out_dir / (src.stem + suffix)) for src in files]
    seen: dict[Path, Path] = {}
    for src, out in pairs:
        if out in seen:
            raise UsageError(f"{seen[out]} and {src} would both be written to {out}")
        seen[out] = src
    return pairs


# -- one file, in whichever process runs it ----------------------------------------------------

_CODECS: dict[Any, Any] = {}


def codec_for(options: Options, data: bytes | None = None) -> Any:
    """This process' codec for ``options``' model (for a ``.vqc`` file with no model named: the
    shipped model that made it), loaded once; it serves every operating point."""
    from .. import codec as codecs  # here: a worker process imports torch once it has work
    from ..threads import use_threads

    use_threads(options.threads)
    if data is not None and options.preset is None and options.model_path is None:
        key: Any = ("file", read_header(data).model_id)
        if key not in _CODECS:
            _CODECS[key] = codecs.load_for(
                data, device=options.device, max_pixels=_max_pixels(options), processes=options.threads
            )
        return _CODECS[key]
    key = ("options", options.preset, options.model_path, options.device)
    if key not in _CODECS:
        _CODECS[key] = codecs.load(
            options.preset, path=options.model_path, device=options.device, max_pixels=_max_pixels(options),
            processes=options.threads,
        )  # fmt: skip
    return _CODECS[key]


def _max_pixels(options: Options) -> int:
    return options.max_pixels or DEFAULT_MAX_PIXELS


def compress_file(src: Path, out: Path, options: Options) -> Outcome:
    """Compress one image file to ``out`` (never half-written; replaced only with ``force``)."""
    outcome = Outcome(str(src), str(out))
    start = time.perf_counter()
    try:
        codec, encoded = encode_image(src, options)
        write_atomic(out, encoded.data, replace=options.force)
        outcome.bytes_in, outcome.bytes_out = src.stat().st_size, len(encoded.data)
        outcome.width, outcome.height, outcome.bpp = encoded.width, encoded.height, encoded.bpp
        outcome.model = codec.name
        outcome.bits_per_code = {"top": encoded.top.bits_per_code, "bottom": encoded.bottom.bits_per_code}
    except (VQCodecError, OSError) as exc:
        outcome.status, outcome.error = "error", str(exc)
    outcome.seconds = time.perf_counter() - start
    return outcome


def encode_image(image: Any, options: Options) -> tuple[Any, Any]:
    """The codec and the encoding of ``image``: with ``options``' model, or with a target size
    the largest operating point of its model's ladder (``quality.ladder``) that fits."""
    codec = codec_for(options)
    if options.target_bytes is None and options.target_bpp is None:
        return codec, codec.encode(image, quality=options.quality, **options.settings)
    from .image import read_image, to_pil

    # Read once: every operating point tried codes these pixels (and ICC and EXIF data).
    picture = read_image(image, _max_pixels(options))
    pixels = to_pil(picture)
    width, height = picture.size
    budgets = [options.target_bytes or float("inf"), (options.target_bpp or float("inf")) * width * height / 8]
    budget = int(min(budgets))
    found = {}

    def encode(point: quality.OperatingPoint) -> bytes:
        found[point] = codec.encode(pixels, **options.settings | point._asdict())
        return found[point].data

    _, point = quality.largest_within(encode, budget, len(codec.model.enhancements))
    return codec, found[point]


def decompress_file(src: Path, out: Path, options: Options) -> Outcome:
    """Decompress one ``.vqc`` file to the image ``out`` in ``options.image_format``."""
    outcome = Outcome(str(src), str(out))
    start = time.perf_counter()
    try:
        with src.open("rb") as f:
            data = read_checked(f)
        codec = codec_for(options, data)
        image = decode_image(codec, data, options)
        buffer = io.BytesIO()
        save_image(image, buffer, options)
        write_atomic(out, buffer.getvalue(), replace=options.force)
        outcome.bytes_in, outcome.bytes_out = len(data), buffer.tell()
        outcome.width, outcome.height = image.size
        outcome.bpp, outcome.model = bits_per_pixel(data), codec.name
    except (VQCodecError, OSError) as exc:
        outcome.status, outcome.error = "error", str(exc)
    outcome.seconds = time.perf_counter() - start
    return outcome


def bits_per_pixel(data: bytes) -> float:
    """The rate of a ``.vqc`` file: its bits over its image's pixels (whatever part was decoded)."""
    header = read_header(data)
    return 8 * len(data) / (header.width * header.height)


def read_checked(stream: BinaryIO) -> bytes:
    """A ``.vqc`` file from ``stream`` (``container.read_file``), its layout and payload checksum
    checked before any model is loaded: a damaged file is refused in milliseconds."""
    data = read_file(stream)
    unpack(data)
    return data


#: Bytes an image file may take per pixel: 16-bit RGBA stored uncompressed, the most any format
#: vqcodec reads needs (formats that compress take less).
MAX_FILE_BYTES_PER_PIXEL = 8


def read_image_stream(stream: BinaryIO, options: Options) -> bytes:
    """An image file from ``stream`` (standard input), read no further than an image within the
    pixel limit can run (``MAX_FILE_BYTES_PER_PIXEL`` a pixel, plus its ICC and EXIF data)."""
    limit = MAX_FILE_BYTES_PER_PIXEL * _max_pixels(options) + MAX_METADATA + (1 << 20)
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise LimitError(
            f"the input is longer than {limit} bytes, more than an image within the pixel limit takes "
            "(--max-pixels raises it)"
        )
    return data


def decode_image(codec: Any, data: bytes, options: Options) -> Any:
    """The image of ``data``, after checking that ``options.image_format`` can hold it (before
    decoding anything)."""
    header = codec.read_header(data)
    _check_format_holds(MODES[header.channels], decode_metadata(unpack(data)[1].metadata), options)
    return codec.decompress(data, region=options.region)


def _check_format_holds(mode: str, metadata: dict[str, bytes], options: Options) -> None:
    """Refuse, before decoding, an output format that cannot hold an image of ``mode`` with its
    ICC profile and EXIF data: a few pixels of that mode, with that metadata, are written in the
    format and read back (formats Pillow cannot read back are trusted to have written them)."""
    fmt = options.image_format
    failure, kept_alpha = _probe_format(mode, metadata, options)
    opaque = mode.replace("A", "")
    if "A" in mode and not kept_alpha and (failure is None or _probe_format(opaque, metadata, options)[0] is None):
        raise OutputError(f"the image has transparency, which {fmt} cannot hold; use .png or .webp")
    if failure is not None:
        what = f"a {mode} image" + (" with its ICC profile or EXIF data" if metadata else "")
        raise OutputError(f"{fmt} cannot hold {what}: {failure}; use .png")


def _probe_format(mode: str, metadata: dict[str, bytes], options: Options) -> tuple[Exception | None, bool]:
    """What writing a 3 x 2 image of ``mode`` with ``metadata`` in the output format raises (None
    if nothing), and whether reading it back keeps an alpha channel (True where it cannot be read)."""
    from PIL import Image

    probe = Image.new(mode, (3, 2))
    probe.info.update(metadata)
    buffer = io.BytesIO()
    try:
        save_image(probe, buffer, options)
    except Exception as exc:  # whatever the format's writer raises, it cannot write this image
        return exc, False
    try:
        with Image.open(buffer) as back:
            return None, "A" in back.mode or "transparency" in back.info
    except Exception:  # a format Pillow writes but cannot read back
        return None, True


def save_image(image: Any, stream: Any, options: Options) -> None:
    """Write ``image`` in ``options.image_format``, with its ICC profile and EXIF data."""
    params = {k: v for k, v in image.info.items() if k in ("icc_profile", "exif")}
    if options.image_quality is not None:
        params["quality"] = options.image_quality
    image.save(stream, format=options.image_format, **params)


# -- many files ---------------------------------------------------------------------------------

Work = Callable[[Path, Path, Options], Outcome]


def run(work: Work, pairs: Sequence[tuple[Path, Path]], options: Options, workers: int = 1) -> Iterator[Outcome]:
    """Each pair's outcome as it finishes: in this process with one worker, else in ``workers``
    processes, each with ``options.threads`` torch threads (``codec_for``). Outputs that exist (without
    ``force``) or cannot be written fail before their input is read."""
    checked = []
    for src, out in pairs:
        try:
            check_writable(out, options.force)
            checked.append((src, out))
        except OutputError as exc:
            yield Outcome(str(src), str(out), status="error", error=str(exc))
    if workers <= 1 or len(checked) <= 1:
        for src, out in checked:
            yield work(src, out, options)
        return
    context = _spawn_context()
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        futures = [pool.submit(work, src, out, options) for src, out in checked]
        for future in futures:
            yield future.result()


def _spawn_context() -> Any:
    """Fresh worker processes (fork would copy torch's thread pools, which is unsafe)."""
    import multiprocessing

    return multiprocessing.get_context(
        "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    )


def summary(outcomes: Sequence[Outcome], seconds: float) -> str:
    """One line: files, failures, bytes in and out, mean bpp, wall time."""
    ok = [o for o in outcomes if o.status == "ok"]
    failed = len(outcomes) - len(ok)
    bpp = sum(o.bpp for o in ok) / len(ok) if ok else 0.0
    return (
        f"{len(outcomes)} file(s), {failed} failed; {sum(o.bytes_in for o in ok)} bytes in, "
        f"{sum(o.bytes_out for o in ok)} bytes out; mean {bpp:.4f} bpp; {seconds:.1f} s"
    )


def env_shard() -> tuple[int, int]:
    """(index, count) from a launcher's environment: torchrun's RANK and WORLD_SIZE, else (0, 1)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
