"""``python -m bench rd | entropy | speed | hostile | startup``: the click command line of the benchmark suite."""

from __future__ import annotations

import dataclasses
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import click
import numpy as np
import torch

import vqcodec
from vqcodec.defaults import DEFAULT_RDO
from vqcodec.threads import use_threads

from . import report
from .codecs import PillowCodec, VQCodec, classical_codecs, library_versions, vqcodec_codecs
from .colours import ANY_POINT_TOLERANCE, DEFAULT_TOLERANCE, flat_colours, ramp_steps
from .entropy import entropy_report
from .hostile import run_hostile
from .images import Sample, load_images
from .metrics import MSSSIM_MIN_SIDE
from .peers import LEARNED, compare, load_classical, load_learned, ratios
from .rd import QUALITY_RANGES, REFERENCE, average_curve, bd_rates, head_to_head, same_rate, same_size, sweep
from .speed import devices, measure_speed, timed

DEFAULT_OUT = Path(__file__).parent / "results"
#: --quick: this many images, centre-cropped to this side, this many settings per classical codec.
QUICK_IMAGES, QUICK_CROP, QUICK_SETTINGS = 3, 256, 4
#: --rdo of the commands that encode with one model (the encoder's default strength).
rdo_option = click.option("--rdo", type=click.FloatRange(min=0), default=DEFAULT_RDO, show_default=True,
                          help="RDO strength of the models' encoder (see vqcodec.Settings).")  # fmt: skip


def _command_line() -> str:
    return "python -m bench " + shlex.join(sys.argv[1:])


def spread(settings: Sequence, n: int) -> list:
    """``n`` settings spread evenly over a sweep, both ends included."""
    if len(settings) <= n:
        return list(settings)
    return [settings[i] for i in np.linspace(0, len(settings) - 1, n).round().astype(int)]


def _pick_classical(names: str | None, quick: bool) -> list[PillowCodec]:
    """The classical codecs named (all available by default), the reference always among them."""
    available = {c.name: c for c in classical_codecs()}
    wanted = [n.strip() for n in names.split(",")] if names else list(available)
    chosen = _named(available, wanted, "unknown or unavailable codec(s)")
    chosen = [available[REFERENCE], *[c for c in chosen if c.name != REFERENCE]]
    return [dataclasses.replace(c, settings=spread(c.settings, QUICK_SETTINGS)) for c in chosen] if quick else chosen


def _same_size_codecs(names: str) -> list[PillowCodec]:
    """The classical codecs named for same-size comparisons (those ``match_size`` can search)."""
    available = {c.name: c for c in classical_codecs() if c.format in QUALITY_RANGES}
    return _named(available, [n.strip() for n in names.split(",") if n.strip()], "no same-size search for codec(s)")


def _named(available: dict[str, PillowCodec], wanted: list[str], refusal: str) -> list[PillowCodec]:
    """The codecs ``wanted`` names, once each, in order; a usage error (``refusal`` and the names)
    for names not ``available``."""
    unknown = [n for n in wanted if n not in available]
    if unknown:
        raise click.UsageError(f"{refusal} {', '.join(unknown)}; available: {', '.join(available)}")
    return [available[n] for n in dict.fromkeys(wanted)]


def _images_options(f):
    f = click.option("--crop", type=click.IntRange(8), help="Centre-crop every image to at most N x N pixels.")(f)
    f = click.option("--limit", type=click.IntRange(1), help="Use only the first N images (name order).")(f)
    quick_help = (f"A fast smoke run: {QUICK_IMAGES} images cropped to {QUICK_CROP} px (unless --limit/--crop say "
                  "otherwise), fewer settings, one timing run.")  # fmt: skip
    f = click.option("--quick", is_flag=True, help=quick_help)(f)
    f = click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_OUT,
                     show_default=True, help="Folder for the results.")(f)  # fmt: skip
    return click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))(f)


def _samples(folder: Path, quick: bool, limit: int | None, crop: int | None):
    return load_images(folder, limit or (QUICK_IMAGES if quick else None), crop or (QUICK_CROP if quick else None))


def _device_option(f):
    return click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
                        help="Where vqcodec's networks run.")(f)  # fmt: skip


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Benchmarks of vqcodec: rate-distortion, code-map entropy and speed."""


def _notes(samples: Sequence[Sample], learned: Sequence[VQCodec], decode: bool) -> list[str]:
    """What a reader of the rd report must know to read its blanks."""
    notes = []
    if any(min(s.image.size) < MSSSIM_MIN_SIDE for s in samples):
        notes.append(f"MS-SSIM needs {MSSSIM_MIN_SIDE} px a side (5 scales, 11-px window): smaller images have no "
                     "MS-SSIM, and averages over them are '-'.")  # fmt: skip
    if learned and not decode:
        notes.append("vqcodec decoding skipped (--no-vq-decode): quality from the encoder's code maps, no decode time.")
    if not learned:
        notes.append("No vqcodec model ran (no shipped presets; add one with --model PATH).")
    return notes


@main.command()
@_images_options
@click.option("--codecs", "names", help="Comma-separated classical codecs (default: all available; "
              f"{REFERENCE} always runs as the reference).")  # fmt: skip
@click.option("--model", "models", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A vqcodec model file to add as a codec (repeatable).")  # fmt: skip
@click.option("--presets/--no-presets", default=True, show_default=True,
              help="Run vqcodec's shipped operating points (every point of --quality).")  # fmt: skip
@click.option("--vq-decode/--no-vq-decode", default=True, show_default=True,
              help="Run vqcodec's decoder; when off, quality comes from the encoder's code maps (which the "
                   "decoder reproduces exactly) and no decode time is given.")  # fmt: skip
@click.option("--ladder", is_flag=True, help="Run each --model at every --quality point's RDO and scale, "
              "in place of that point's preset (a candidate model's whole curve; --rdo is then unused).")  # fmt: skip
@click.option("--same-size", "same_size_names", default=REFERENCE, show_default=True,
              help="Comma-separated codecs to compare each vqcodec file with, image by image, at the largest "
                   "quality whose file is no larger (JPEG, WebP, AVIF or JPEG XL; '' for none).")  # fmt: skip
@_device_option
@rdo_option
@click.option("--repeats", type=click.IntRange(1), help="Timing runs per file, best kept [default: 3, 1 with --quick].")
@click.option("--threads", type=click.IntRange(1), default=1, show_default=True,
              help="torch threads (vqcodec on the CPU, MS-SSIM); the classical codecs run on one thread.")  # fmt: skip
def rd(
    folder, out, quick, limit, crop, names, models, presets, vq_decode, ladder, same_size_names, device, rdo,
    repeats, threads,
) -> None:  # fmt: skip
    """Rate-distortion of vqcodec and classical codecs on the images in FOLDER."""
    use_threads(threads)
    others = _same_size_codecs(same_size_names)
    samples = _samples(folder, quick, limit, crop)
    classical = _pick_classical(names, quick)
    learned = vqcodec_codecs(presets, models, device, vq_decode, rdo, ladder)
    codecs = [*classical, *learned]
    records = sweep(codecs, samples, repeats or (1 if quick else 3))
    curves = {c.name: average_curve(c, records) for c in codecs}
    same = [row for other in others for row in same_size(records, samples, {c.name for c in learned}, other)]
    environment = report.environment() | library_versions() | {"torch_threads": threads}
    run = {
        "command": _command_line(), "dataset": str(folder), "environment": environment, "rdo": rdo,
        "images": [{"name": s.name, "width": s.image.width, "height": s.image.height} for s in samples],
        "codecs": curves, "bd_rate": bd_rates(curves), "same_size": same,
        "same_size_mean": report.same_size_summary(same),
        "head_to_head": head_to_head(curves, {c.name for c in learned}),
        "same_rate": same_rate(curves, {c.name for c in learned}), "notes": _notes(samples, learned, vq_decode),
        "per_image": records,
    }  # fmt: skip
    paths = report.write_rd(run, out)
    click.echo(report.table(report.SUMMARY_HEADER, report.summary_rows(curves, run["bd_rate"])))
    if run["head_to_head"]:
        click.echo(report.head_to_head_table(run["head_to_head"]))
    click.echo("wrote " + ", ".join(str(p) for p in paths))


def _model_options(f):
    f = click.option("--preset", help="A shipped vqcodec preset.")(f)
    f = rdo_option(f)
    f = click.option("--quality", type=click.IntRange(0, 100),
                     help="The model's operating point of --quality Q (RDO, scale, enhancement).")(f)  # fmt: skip
    return click.option("--model", "model_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                        help="A vqcodec model file (.safetensors).")(f)  # fmt: skip


def _loader(preset: str | None, model_path: Path | None, rdo: float, quality: int | None):
    """A function from a device name to a loaded codec: the preset or the model file (by default
    the default preset), at the operating point of ``quality`` if given, else at ``rdo``."""
    if preset is not None and model_path is not None:
        raise click.UsageError("give --preset NAME or --model PATH, not both")
    coding = {"rdo": rdo} if quality is None else {"quality": quality}
    try:
        vqcodec.load(preset, path=model_path, device="cpu")  # fail early, with vqcodec's message
    except vqcodec.VQCodecError as exc:
        raise click.UsageError(str(exc)) from exc
    return lambda device: vqcodec.load(preset, **coding, path=model_path, device=device)


@main.command()
@_images_options
@_model_options
@_device_option
def entropy(folder, out, quick, limit, crop, model_path, quality, rdo, preset, device) -> None:
    """Bits per code of the code maps of the images in FOLDER: priors vs simple baselines."""
    load = _loader(preset, model_path, rdo, quality)
    result = entropy_report(load(device), _samples(folder, quick, limit, crop))
    out.mkdir(parents=True, exist_ok=True)
    report.write_json(out / "entropy.json", result | {"command": _command_line(), "rdo": rdo})
    text = report.entropy_markdown(result)
    (out / "entropy.md").write_text(text)
    click.echo(text + f"wrote {out / 'entropy.json'}, {out / 'entropy.md'}")


@main.command()
@_images_options
@_model_options
@click.option("--devices", "device_names", type=click.Choice(["cpu", "cuda", "all"]), default="all",
              show_default=True, help="all = the CPU, and CUDA when present.")  # fmt: skip
@click.option("--decode/--no-decode", default=True, show_default=True, help="Also time the (slow) decoder.")
@click.option("--repeats", type=click.IntRange(1), default=2, show_default=True, help="Timing runs, best kept.")
@click.option("--threads", type=click.IntRange(1), help="torch threads on the CPU [default: torch's choice].")
@click.option("--batch", type=click.IntRange(1), default=1, show_default=True,
              help="Images coded together (Codec.encode_many); times are per image.")  # fmt: skip
@click.option("--cuda-graphs/--no-cuda-graphs", default=True, show_default=True,
              help="On CUDA, replay the decoder's wavefront steps from CUDA graphs.")  # fmt: skip
@click.option("--peers", is_flag=True, help="Instead of the stages: CPU time per image against "
              f"{' and '.join(LEARNED)} (random weights; with compressai installed) and AVIF, WebP and JPEG XL "
              "(at the size nearest vqcodec's), interleaved; use with --threads 1.")  # fmt: skip
def speed(
    folder,
    out,
    quick,
    limit,
    crop,
    model_path,
    quality,
    rdo,
    preset,
    device_names,
    decode,
    repeats,
    threads,
    batch,
    cuda_graphs,
    peers,
) -> None:
    """Time per stage of vqcodec's encoder and decoder on the images in FOLDER."""
    if threads:
        use_threads(threads)
    load = _loader(preset, model_path, rdo, quality)

    def load_codec(device: str) -> vqcodec.Codec:
        codec = load(device)
        codec.cuda_graphs = cuda_graphs
        codec.processes = threads or 1  # as the command line's --threads
        return codec

    if peers:
        _speed_against_peer(load_codec("cpu"), _samples(folder, quick, limit, crop), 1 if quick else repeats, out)
        return

    names = devices() if device_names == "all" else [device_names]
    samples = _samples(folder, quick, limit, crop)
    rows = measure_speed(load_codec, samples, names, 1 if quick else repeats, decode, batch)
    out.mkdir(parents=True, exist_ok=True)
    run = {"command": _command_line(), "environment": report.environment(), "rdo": rdo, "cuda_graphs": cuda_graphs}
    report.write_json(out / "speed.json", run | {"rows": rows})
    text = report.speed_markdown(rows, _command_line(), run["environment"])
    (out / "speed.md").write_text(text)
    click.echo(text + f"wrote {out / 'speed.json'}, {out / 'speed.md'}")


def _speed_against_peer(codec: vqcodec.Codec, samples: Sequence[Sample], repeats: int, out: Path) -> None:
    try:
        peers = load_learned()
    except ImportError as exc:
        click.echo(f"note: {exc}; timing the classical peers only", err=True)
        peers = []
    peers += load_classical()
    rows = compare(codec, peers, samples, repeats)
    environment, measured = report.environment(), ratios(rows, [p.name for p in peers])
    run = {"command": _command_line(), "environment": environment, "threads": torch.get_num_threads()}
    out.mkdir(parents=True, exist_ok=True)
    report.write_json(out / "peers.json", run | {"rows": rows, "ratios": measured})
    text = report.peers_markdown(rows, measured, environment, _command_line())
    (out / "peers.md").write_text(text)
    click.echo(text + f"wrote {out / 'peers.json'}, {out / 'peers.md'}")


@main.command()
@click.option("--preset", "presets", multiple=True, help="A shipped preset [default: all of them].")
@click.option("--cases", type=click.IntRange(1), default=200, show_default=True, help="Forged files per preset.")
@click.option("--threads", type=click.IntRange(1), help="torch threads [default: torch's choice].")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_OUT, show_default=True)
def hostile(presets, cases, threads, out) -> None:
    """Decode forged .vqc files (valid checksums, sizes up to the default pixel limit, any tile,
    streams cut anywhere) made from a real file of each preset: slowest case and peak memory."""
    if threads:
        use_threads(threads)
    rng = np.random.default_rng(0)
    image = np.clip(np.linspace(0, 255, 256)[None, :, None] + rng.normal(0, 20, (192, 256, 3)), 0, 255)
    rows = {}
    for name in presets or vqcodec.presets():
        codec = vqcodec.load(name, device="cpu")
        rows[name] = run_hostile(codec, codec.compress(image.astype(np.uint8)), cases)
        r = rows[name]
        click.echo(f"{name}: {cases} forged files {r['outcomes']}, slowest {r['max_seconds']:.2f} s, "
                   f"mean {r['mean_seconds']:.3f} s, peak {r['peak_mib']:.0f} MiB")  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    report.write_json(out / "hostile.json", {"command": _command_line(), "presets": rows})
    click.echo(f"wrote {out / 'hostile.json'}")


@main.command()
@click.option("--quality", "qualities", type=click.IntRange(0, 100), multiple=True,
              help="A --quality to test [default: the lowest quality of every operating point].")  # fmt: skip
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_OUT, show_default=True)
def colours(qualities, out) -> None:
    """Flat images of the 125 grid colours and a gray ramp through each operating point: colours
    within tolerance (3/12 levels at the default quality, 6/24 elsewhere), worst errors, ramp steps."""
    spans = vqcodec.quality.qualities()
    picked = [(q, vqcodec.quality.operating_point(q)) for q in qualities] or [(s.start, p) for s, p in spans]
    rows = {}
    base = vqcodec.load(device="cpu")
    for q, point in picked:
        codec = base.with_settings(quality=q)
        default = point == vqcodec.quality.operating_point(vqcodec.quality.DEFAULT_QUALITY)
        flat = flat_colours(codec, DEFAULT_TOLERANCE if default else ANY_POINT_TOLERANCE)
        ramp = ramp_steps(codec)
        rows[f"q{q} {point}"] = {"flat": flat, "ramp": ramp}
        click.echo(f"q{q} {point}: {flat['within']}/{flat['colours']} colours within "
                   f"{flat['tolerance']['mean']:g}/{flat['tolerance']['pixel']:g}, worst mean error "
                   f"{flat['worst_mean_error']:.1f} ({tuple(flat['worst_mean_colour'])}), worst pixel "
                   f"{flat['worst_pixel_error']:.0f}, largest file {flat['max_bytes']} bytes; ramp: largest "
                   f"column jump {ramp['largest_jump']:.2f} (ramp step {ramp['ramp_step']:.2f})")  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    report.write_json(out / "colours.json", {"command": _command_line(), "points": rows})
    click.echo(f"wrote {out / 'colours.json'}")


@main.command()
@click.argument("vqc", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--size", type=click.IntRange(1), default=256, show_default=True, help="Side of the regions, pixels.")
@click.option("--threads", type=click.IntRange(1), default=1, show_default=True,
              help="torch threads and decoding processes (as the command line's --threads).")  # fmt: skip
@click.option("--repeats", type=click.IntRange(1), default=2, show_default=True)
def region(vqc, size, threads, repeats) -> None:
    """Decoding a region of the .vqc file VQC against decoding it whole: time per stage and peak
    memory of the top-left corner, the centre, and the whole image."""
    use_threads(threads)
    data = vqc.read_bytes()
    codec = vqcodec.load_for(data, device="cpu", max_pixels=vqcodec.format.container.MAX_PIXELS, processes=threads)
    header = vqcodec.read_header(data)
    w, h = min(size, header.width), min(size, header.height)
    cases = {
        f"{w}x{h} top-left": (0, 0, w, h),
        f"{w}x{h} centre": ((header.width - w) // 2, (header.height - h) // 2, w, h),
        "whole image": None,
    }
    click.echo(f"{vqc}: {header.width}x{header.height}, .vqc version {header.version}, "
               f"cpu capability {torch.backends.cpu.get_cpu_capability()}, {threads} thread(s)")  # fmt: skip
    rows = []
    for name, rect in cases.items():
        timing = timed(codec, repeats, lambda timer, rect=rect: codec.decompress(data, timer, region=rect), True)
        stages = ", ".join(f"{k} {v:.2f}" for k, v in timing.seconds.items() if k != "total")
        rows.append([name, f"{timing.seconds['total']:.2f}", f"{timing.peak_mib:.0f}", stages])
    click.echo(report.table(["decoded", "seconds", "peak MiB", "stages (s)"], rows))


@main.command()
@click.option("--repeats", type=click.IntRange(1), default=5, show_default=True)
def startup(repeats) -> None:
    """Wall time of the commands that need no network (--help, --version, presets, info), each run
    as a fresh process: what a user waits for before anything happens."""
    vqc = DEFAULT_OUT / "startup.vqc"
    DEFAULT_OUT.mkdir(parents=True, exist_ok=True)
    image = np.zeros((16, 16, 3), np.uint8)
    vqc.write_bytes(vqcodec.load(device="cpu").compress(image))
    for args in (["--help"], ["--version"], ["presets"], ["info", str(vqc)]):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "vqcodec", *args], check=True, capture_output=True)
            times.append(time.perf_counter() - start)
        click.echo(f"vqcodec {args[0]}: min {min(times):.2f} s, median {float(np.median(times)):.2f} s")


if __name__ == "__main__":
    main()
