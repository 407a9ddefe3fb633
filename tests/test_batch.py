"""Many files and pipes, through the installed console script: folders in, a folder out, worker
processes, a bad file reported while the others go on, '-' for standard input and output, JSON
lines, and shards that split one list between workers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import smooth_image
from vqcodec.io import batch


def vqcodec_command() -> list[str]:
    script = shutil.which("vqcodec", path=os.path.dirname(sys.executable))
    return [script] if script else [sys.executable, "-m", "vqcodec"]


def cli(*args, stdin: bytes | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*vqcodec_command(), *map(str, args)], input=stdin, capture_output=True, check=False,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Three images (one in a subfolder, one a JPEG) and a file that is not an image."""
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(3)
    Image.fromarray(smooth_image(rng, 20, 28)).save(folder / "a.png")
    Image.fromarray(smooth_image(rng, 18, 30)).save(folder / "b.jpg", quality=95)
    (folder / "sub").mkdir()
    Image.fromarray(smooth_image(rng, 16, 16, 4)).save(folder / "sub" / "c.png")
    (folder / "broken.png").write_bytes(b"not an image")
    return folder


def test_a_folder_in_a_folder_out_with_a_bad_file(photos, model_file, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    result = cli("compress", photos, "-o", out, "-r", "-j", "2", "--model", model_file)
    assert result.returncode == 1  # one file failed
    assert sorted(p.name for p in out.iterdir()) == ["a.vqc", "b.vqc", "c.vqc"]
    err = result.stderr.decode()
    assert "broken.png" in err and "cannot read image" in err
    assert "4 file(s), 1 failed" in result.stdout.decode()
    images = tmp_path / "images"
    images.mkdir()
    result = cli("decompress", out, "-o", images, "--model", model_file, "--json")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert {Path(o["output"]).name for o in lines} == {"a.png", "b.png", "c.png"}
    assert all(o["status"] == "ok" and o["bpp"] > 0 for o in lines)
    assert Image.open(images / "c.png").mode == "RGBA" and Image.open(images / "a.png").size == (28, 20)


def test_without_recursive_subfolders_are_left_out_and_outputs_kept(photos, model_file, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.vqc").write_bytes(b"mine")
    result = cli("compress", photos / "a.png", photos / "b.jpg", photos, "-o", out, "--model", model_file, "--json")
    outcomes = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert (out / "a.vqc").read_bytes() == b"mine" and result.returncode == 1
    assert not (out / "c.vqc").exists()
    assert any("exists" in (o["error"] or "") for o in outcomes)


def test_names_that_would_collide_are_refused_before_any_work(tmp_path, model_file, rng):
    for name in ("x.png", "x.bmp"):
        Image.fromarray(smooth_image(rng, 8, 8)).save(tmp_path / name)
    out = tmp_path / "out"
    out.mkdir()
    result = cli("compress", tmp_path / "x.png", tmp_path / "x.bmp", "-o", out, "--model", model_file)
    assert result.returncode == 1 and "both be written" in result.stderr.decode()
    assert list(out.iterdir()) == []


def test_pipes(photos, model_file, tmp_path):
    png = (photos / "a.png").read_bytes()
    coded = cli("compress", "-", "-", "--model", model_file, stdin=png)
    assert coded.returncode == 0, coded.stderr
    assert coded.stdout[:4] == b"\x89VQC" and b"bpp" in coded.stderr
    (tmp_path / "a.vqc").write_bytes(coded.stdout)
    decoded = cli("decompress", "-", "-", "--format", "png", "--model", model_file, stdin=coded.stdout)
    assert decoded.returncode == 0, decoded.stderr
    assert cli("decompress", tmp_path / "a.vqc", tmp_path / "a.png", "--model", model_file).returncode == 0
    assert decoded.stdout == (tmp_path / "a.png").read_bytes()


@pytest.mark.slow
def test_lossy_outputs_take_a_quality_and_alpha_is_not_lost(photos, model_file, tmp_path):
    cli("compress", photos / "a.png", tmp_path / "a.vqc", "--model", model_file)
    sizes = []
    for q in (10, 95):
        out = tmp_path / f"a{q}.jpg"
        assert cli("decompress", tmp_path / "a.vqc", out, "--quality", q, "--model", model_file).returncode == 0
        sizes.append(out.stat().st_size)
    assert sizes[0] < sizes[1]
    cli("compress", photos / "sub" / "c.png", tmp_path / "c.vqc", "--model", model_file)
    result = cli("decompress", tmp_path / "c.vqc", tmp_path / "c.jpg", "--model", model_file)
    assert result.returncode == 1 and "transparency" in result.stderr.decode()
    assert not (tmp_path / "c.jpg").exists()


def test_shards_split_a_list_between_workers(photos, model_file, tmp_path):
    files = [Path(f"{i}.png") for i in range(10)]
    shards = [batch.shard(files, i, 3) for i in range(3)]
    assert sorted(f for s in shards for f in s) == sorted(files) and len(shards[0]) == 4
    with pytest.raises(batch.UsageError):
        batch.shard(files, 3, 3)
    outs = []
    for rank in range(2):  # as torchrun would start them
        out = tmp_path / f"rank{rank}"
        out.mkdir()
        cli("compress", photos, "-o", out, "-r", "--model", model_file, env={"RANK": str(rank), "WORLD_SIZE": "2"})
        outs.append({p.name for p in out.iterdir()})
    assert outs[0].isdisjoint(outs[1]) and outs[0] | outs[1] == {"a.vqc", "b.vqc", "c.vqc"}
    out = tmp_path / "explicit"
    out.mkdir()
    cli("compress", photos, "-o", out, "-r", "--shard", "1/2", "--model", model_file)
    assert {p.name for p in out.iterdir()} == outs[1]


@pytest.mark.parametrize(
    "options,env",
    [
        (["--shard", "3/2"], {}),
        (["--shard", "a/2"], {}),
        ([], {"RANK": "abc", "WORLD_SIZE": "2"}),
        ([], {"RANK": "2", "WORLD_SIZE": "2"}),
    ],
)
def test_impossible_shards_are_usage_errors(photos, model_file, tmp_path, options, env):
    """From the options or from the launcher's environment: exit 2, one line, nothing written."""
    result = cli("compress", photos, "-o", tmp_path, "-r", "--model", model_file, *options, env=env)
    assert result.returncode == 2 and not list(tmp_path.iterdir()), result.stderr
    assert b"shard" in result.stderr.lower() or b"RANK" in result.stderr
