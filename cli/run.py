"""Running a command over one file (either end may be standard input or output) or many (-o):
checking outputs, reading inputs, reporting each outcome."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import click
from tqdm import tqdm

import vqcodec
from vqcodec.format import container
from vqcodec.io import batch
from vqcodec.io.files import check_name, check_writable, write_atomic
from vqcodec.zoo import modelfile

from .main import EXIT_BAD_INPUT


def check_output(src: Path, path: Path, force: bool) -> None:
    """Refuse, before any work, an output that would overwrite the input (even with --force) or
    that cannot be written (see ``files.check_writable``)."""
    check_name(path)
    if path.exists() and src.exists() and os.path.samefile(src, path):
        raise vqcodec.OutputError(f"{path} is the input file itself")
    check_writable(path, force)


def read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise vqcodec.VQCodecError(f"cannot read {path}: {exc.strerror or exc}") from exc


def read_vqc(path: Path, read: Callable[[BinaryIO], bytes] = container.read_file) -> bytes:
    """A ``.vqc`` file from ``path`` or standard input ("-"), read no further than its header says
    the file runs (so a huge file, a pipe or a device is refused after a few bytes)."""
    if str(path) == "-":
        return read(sys.stdin.buffer)
    try:
        with path.open("rb") as f:
            return read(f)
    except OSError as exc:
        raise vqcodec.VQCodecError(f"cannot read {path}: {exc.strerror or exc}") from exc


def options_from(kwargs: dict, **extra) -> batch.Options:
    if kwargs["model_path"] is not None:
        modelfile.check(kwargs["model_path"])  # a bad model file is refused before torch is imported
    return batch.Options(
        preset=kwargs["preset"], model_path=kwargs["model_path"], device=kwargs["device"],
        max_pixels=kwargs["max_pixels"], threads=kwargs["threads"], force=kwargs["force"], **extra,
    )  # fmt: skip


def run_files(work, inputs, suffix, suffixes, options: batch.Options, kwargs: dict, stream) -> None:
    """One file (IN OUT, either may be '-') or, with -o, many; report, and exit 1 if any failed."""
    out_dir = kwargs["output_dir"]
    if out_dir is None:
        if len(inputs) != 2:
            raise click.UsageError("give IN and OUT, or several inputs with -o/--output-dir")
        src, out = inputs
        if "-" in (str(src), str(out)):
            stream(src, out, options, kwargs)
            return
        check_output(src, out, options.force)
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


def deliver(out: Path, data: bytes, options: batch.Options) -> None:
    if str(out) == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        write_atomic(out, data, replace=options.force)


def stream_report(src: Path, out: Path, bytes_in: int, bytes_out: int, bpp: float, kwargs: dict) -> None:
    """Report on standard error when standard output carries the data."""
    if kwargs["quiet"]:
        return
    text = (json.dumps({"input": str(src), "output": str(out), "status": "ok", "bytes_in": bytes_in,
                        "bytes_out": bytes_out, "bpp": bpp}) if kwargs["as_json"]
            else f"{src} -> {out}: {bytes_out} bytes, {bpp:.4f} bpp")  # fmt: skip
    click.echo(text, err=str(out) == "-")
