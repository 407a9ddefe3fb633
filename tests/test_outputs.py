"""Outputs: nothing is overwritten without --force, even in a race; nothing half-written is left;
modes follow the umask; an output that cannot be written is refused before any work."""

from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import sys
import threading

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import vqcodec
from tests.conftest import smooth_image
from vqcodec.cli import main
from vqcodec.io import files


@pytest.fixture
def image_file(tmp_path, rng):
    path = tmp_path / "in.png"
    Image.fromarray(smooth_image(rng, 19, 26)).save(path)
    return path


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def leftovers(folder) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_two_processes_racing_for_one_output(tmp_path, image_file, model_file):
    """Started together without --force, exactly one writes OUT; the other fails with exit 1."""
    out = tmp_path / "out.vqc"
    command = [sys.executable, "-m", "vqcodec", "compress", str(image_file), str(out), "--model", str(model_file)]
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(), p.stderr.read()) for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    assert sorted(code for code, _ in results) == [0, 1], results
    loser = next(err for code, err in results if code == 1)
    assert ("exists" in loser or "appeared" in loser) and loser.count("\n") == 1
    assert vqcodec.read_header(out.read_bytes()).width == 26 and leftovers(tmp_path) == []


def test_a_file_appearing_during_the_encode_is_kept(tmp_path, image_file, model_file, monkeypatch):
    out = tmp_path / "out.vqc"
    encode = vqcodec.Codec.encode

    def encode_while_someone_writes(self, image, *args, **kwargs):
        out.write_bytes(b"theirs")
        return encode(self, image, *args, **kwargs)

    monkeypatch.setattr(vqcodec.Codec, "encode", encode_while_someone_writes)
    result = run("compress", image_file, out, "--model", model_file)
    assert result.exit_code == 1 and "appeared" in result.output
    assert out.read_bytes() == b"theirs" and leftovers(tmp_path) == []


def test_a_dangling_symlink_counts_as_existing(tmp_path, image_file, model_file):
    out = tmp_path / "out.vqc"
    out.symlink_to(tmp_path / "nowhere")
    assert run("compress", image_file, out, "--model", model_file).exit_code == 1
    assert out.is_symlink() and not (tmp_path / "nowhere").exists()
    with pytest.raises(vqcodec.OutputError, match="appeared"):
        files.write_atomic(out, b"data")


def test_output_that_is_the_input_is_refused_even_with_force(tmp_path, image_file, model_file):
    original = image_file.read_bytes()
    link = tmp_path / "link.png"
    link.symlink_to(image_file)
    for out in (image_file, link):
        result = run("compress", image_file, out, "--model", model_file, "--force")
        assert result.exit_code == 1 and "input file itself" in result.output
    vqc = tmp_path / "a.vqc"
    assert run("compress", image_file, vqc, "--model", model_file).exit_code == 0
    assert run("decompress", vqc, vqc, "--model", model_file, "--force", "--format", "png").exit_code == 1
    assert image_file.read_bytes() == original and vqcodec.read_header(vqc.read_bytes())


def test_a_full_disk_leaves_the_old_file_and_no_temporary(tmp_path, image_file, model_file, monkeypatch):
    out = tmp_path / "out.vqc"
    out.write_bytes(b"old")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    result = run("compress", image_file, out, "--model", model_file, "--force")
    assert result.exit_code == 1 and "No space left" in result.output and result.output.count("\n") == 1
    assert out.read_bytes() == b"old" and leftovers(tmp_path) == []


def test_sigterm_while_writing_leaves_the_old_file_and_no_temporary(tmp_path, image_file, model_file, monkeypatch):
    """SIGTERM ends the command through its clean-ups, as Ctrl-C does (exit 143)."""
    out = tmp_path / "out.vqc"
    out.write_bytes(b"old")
    previous = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(os, "fsync", lambda fd: os.kill(os.getpid(), signal.SIGTERM))
    try:
        result = run("compress", image_file, out, "--model", model_file, "--force")
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert result.exit_code == 128 + signal.SIGTERM
    assert out.read_bytes() == b"old" and leftovers(tmp_path) == []


def test_names_the_file_system_cannot_hold_are_refused_before_encoding(tmp_path, image_file, model_file, monkeypatch):
    monkeypatch.setattr(vqcodec.Codec, "encode", lambda *_, **__: pytest.fail("encoded"))
    result = run("compress", image_file, tmp_path / ("n" * 300 + ".vqc"), "--model", model_file)
    assert result.exit_code == 1 and "longer than" in result.output and result.output.count("\n") == 1
    assert leftovers(tmp_path) == []


def test_names_near_the_limit_are_written(tmp_path):
    longest = os.pathconf(tmp_path, "PC_NAME_MAX")
    files.write_atomic(tmp_path / ("n" * longest), b"x")
    assert (tmp_path / ("n" * longest)).read_bytes() == b"x"


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_output_mode_follows_the_umask(tmp_path, mask, mode):
    old = os.umask(mask)
    try:
        files.write_atomic(tmp_path / "new", b"x")
        files.write_atomic(tmp_path / "new", b"y", replace=True)
    finally:
        os.umask(old)
    assert (tmp_path / "new").stat().st_mode & 0o777 == mode and (tmp_path / "new").read_bytes() == b"y"


def test_unwritable_outputs_are_refused_before_encoding(tmp_path, image_file, model_file, monkeypatch):
    monkeypatch.setattr(vqcodec.Codec, "encode", lambda *_, **__: pytest.fail("encoded"))
    result = run("compress", image_file, tmp_path / "missing" / "out.vqc", "--model", model_file)
    assert result.exit_code == 1 and "does not exist" in result.output
    assert run("compress", image_file, tmp_path, "--model", model_file).exit_code == 1
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        assert run("compress", image_file, locked / "o.vqc", "--model", model_file).exit_code == 1


def test_decoded_pixels_and_files_do_not_depend_on_thread_count(tmp_path):
    """The shipped default preset writes the same bytes and decodes the same pixels on 1 and 2
    threads (oneDNN's 1x1 convolutions did not: their sums depend on the thread count)."""
    image = tmp_path / "in.png"
    Image.fromarray(smooth_image(np.random.default_rng(7), 96, 160)).save(image)
    script = (
        "import sys, hashlib, torch, vqcodec; torch.set_num_threads(int(sys.argv[1])); "
        "c = vqcodec.load(sys.argv[2], device='cpu'); d = c.compress(sys.argv[3]); "
        "print(hashlib.sha256(d).hexdigest(), hashlib.sha256(c.decompress(d).tobytes()).hexdigest())"
    )
    for preset in ("medium", "high"):
        outs = [
            subprocess.run(
                [sys.executable, "-c", script, str(n), preset, str(image)], capture_output=True, text=True, check=True
            ).stdout
            for n in (1, 2)
        ]
        assert outs[0] == outs[1] and len(outs[0].split()) == 2


@pytest.fixture
def rgba_vqc(tmp_path, rng, model_file):
    path = tmp_path / "rgba.vqc"
    Image.fromarray(smooth_image(rng, 20, 28, 4), "RGBA").save(tmp_path / "rgba.png")
    assert run("compress", tmp_path / "rgba.png", path, "--model", model_file).exit_code == 0
    return path


@pytest.mark.parametrize("suffix", [".pcx", ".ppm", ".bmp", ".eps", ".blp", ".jpg"])
def test_formats_that_cannot_hold_the_image_are_refused_before_decoding(
    tmp_path, rgba_vqc, model_file, suffix, monkeypatch
):
    monkeypatch.setattr(vqcodec.Codec, "decompress", lambda *_, **__: pytest.fail("decoded"))
    out = tmp_path / f"out{suffix}"
    result = run("decompress", rgba_vqc, out, "--model", model_file)
    assert result.exit_code == 1 and result.output.count("\n") == 1 and not out.exists(), result.output
    assert "transparency" in result.output or "cannot hold" in result.output


def test_exif_a_format_cannot_hold_is_refused_before_decoding(tmp_path, rng, model_file, monkeypatch):
    exif = Image.Exif()
    exif[0x010E] = "x" * 70_000  # more than JPEG's 64 kB APP1 segment
    Image.fromarray(smooth_image(rng, 20, 28)).save(tmp_path / "a.png", exif=exif.tobytes())
    assert run("compress", tmp_path / "a.png", tmp_path / "a.vqc", "--model", model_file).exit_code == 0
    monkeypatch.setattr(vqcodec.Codec, "decompress", lambda *_, **__: pytest.fail("decoded"))
    result = run("decompress", tmp_path / "a.vqc", tmp_path / "a.jpg", "--model", model_file)
    assert result.exit_code == 1 and "EXIF" in result.output and not (tmp_path / "a.jpg").exists()


def test_unreadable_exif_in_an_input_is_left_out_with_a_warning(tmp_path, rng, model_file):
    junk = b"Exif\x00\x00" + bytes(rng.integers(0, 256, 200, dtype=np.uint8))
    Image.fromarray(smooth_image(rng, 20, 28)).save(tmp_path / "a.png", exif=junk)
    result = subprocess.run(
        [sys.executable, "-m", "vqcodec", "compress", str(tmp_path / "a.png"), str(tmp_path / "a.vqc"),
         "--model", str(model_file), "--quiet"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0 and result.stderr.startswith("warning: unreadable EXIF data")
    assert "exif" not in vqcodec.load(path=model_file, device="cpu").decompress(tmp_path / "a.vqc").info


def test_force_writes_through_a_fifo(tmp_path, image_file, model_file):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    result = run("compress", image_file, fifo, "--model", model_file, "--force")
    reader.join(timeout=60)
    assert result.exit_code == 0, result.output
    assert stat.S_ISFIFO(fifo.stat().st_mode) and received and received[0][:4] == b"\x89VQC"
    assert leftovers(tmp_path) == []


def test_force_onto_a_symlink_replaces_the_file_it_names(tmp_path, image_file, model_file):
    target, link = tmp_path / "target.vqc", tmp_path / "link.vqc"
    target.write_bytes(b"old")
    link.symlink_to(target)
    assert run("compress", image_file, link, "--model", model_file).exit_code == 1  # exists
    assert run("compress", image_file, link, "--model", model_file, "--force").exit_code == 0
    assert link.is_symlink() and target.read_bytes()[:4] == b"\x89VQC"
