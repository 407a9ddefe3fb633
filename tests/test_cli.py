"""The command line: round trips with a model file, refusals, messages and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import vqcodec
from tests.conftest import smooth_image
from vqcodec.cli import main
from vqcodec.coding.restoration import SHAPES
from vqcodec.format import container
from vqcodec.zoo.weights import load_model


@pytest.fixture
def image_file(tmp_path, rng):
    path = tmp_path / "in.png"
    Image.fromarray(smooth_image(rng, 19, 26)).save(path)
    return path


def run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_compress_decompress_round_trip(tmp_path, image_file, model_file):
    vqc, png = tmp_path / "out.vqc", tmp_path / "out.png"
    result = run("compress", image_file, vqc, "--model", model_file, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "bytes" in result.output and "bpp" in result.output and " s" in result.output
    result = run("decompress", vqc, png, "--model", model_file)
    assert result.exit_code == 0, result.output

    codec = vqcodec.Codec(load_model(model_file), device="cpu")
    encoded = codec.encode(image_file)
    assert vqc.read_bytes() == encoded.data
    decoded = codec.decode_codes(vqc.read_bytes())
    np.testing.assert_array_equal(decoded.top, encoded.codes.top)
    np.testing.assert_array_equal(decoded.bottom, encoded.codes.bottom)
    expected = codec.reconstruct(encoded.codes, 26, 19, restored=encoded.restoration)
    np.testing.assert_array_equal(np.asarray(Image.open(png)), expected)


def test_no_restoration_option_writes_no_filter(tmp_path, image_file, model_file, monkeypatch):
    monkeypatch.setattr(vqcodec.coding.restoration, "_db_worth", lambda file_bytes, pixels: 100.0)  # a filter pays
    vqc, plain = tmp_path / "out.vqc", tmp_path / "plain.vqc"
    assert run("compress", image_file, vqc, "--model", model_file).exit_code == 0
    assert run("compress", image_file, plain, "--model", model_file, "--no-restoration").exit_code == 0
    assert container.read_header(vqc.read_bytes()).has_filter
    assert not container.read_header(plain.read_bytes()).has_filter
    shape = SHAPES[container.unpack(vqc.read_bytes())[1].filter[0] - 1]  # the record's first byte names it
    reported = json.loads(run("info", vqc, "--json").output)["restoration"]
    assert (reported["radius"], reported["cross"]) == (shape.radius, shape.cross)
    assert f"filter: {reported['bytes']} bytes" in run("info", vqc).output
    assert json.loads(run("info", plain, "--json").output)["restoration"] is None
    codec = vqcodec.Codec(load_model(model_file), device="cpu", restore=False)
    assert plain.read_bytes() == codec.compress(image_file)


def test_rdo_passes_option_writes_that_codecs_file(tmp_path, image_file, model_file):
    vqc = tmp_path / "out.vqc"
    assert run("compress", image_file, vqc, "--model", model_file, "--rdo", "5", "--rdo-passes", "2").exit_code == 0
    codec = vqcodec.Codec(load_model(model_file), device="cpu", rdo=5.0, rdo_passes=2)
    assert vqc.read_bytes() == codec.compress(image_file)
    assert vqc.read_bytes() != codec.compress(image_file, rdo_passes=1)


def test_info_reports_header(tmp_path, image_file, model_file):
    vqc = tmp_path / "out.vqc"
    run("compress", image_file, vqc, "--model", model_file)
    result = run("info", vqc)
    assert result.exit_code == 0, result.output
    header = vqcodec.read_header(vqc.read_bytes())
    assert header.model_id.hex() in result.output
    assert "26x19" in result.output and "bits/code" in result.output and "bpp" in result.output


def test_refuses_to_overwrite_without_force(tmp_path, image_file, model_file):
    vqc = tmp_path / "out.vqc"
    vqc.write_bytes(b"precious")
    result = run("compress", image_file, vqc, "--model", model_file)
    assert result.exit_code == 1 and "--force" in result.output
    assert vqc.read_bytes() == b"precious"
    assert run("compress", image_file, vqc, "--model", model_file, "--force").exit_code == 0
    assert vqc.read_bytes() != b"precious"


def test_bad_input_is_one_line_and_leaves_no_file(tmp_path, model_file):
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    out = tmp_path / "out.vqc"
    result = run("compress", junk, out, "--model", model_file)
    assert result.exit_code == 1
    assert result.output.startswith("error: cannot read image") and result.output.count("\n") == 1
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [junk]


def test_damaged_file_is_refused(tmp_path, image_file, model_file):
    vqc, png = tmp_path / "out.vqc", tmp_path / "out.png"
    run("compress", image_file, vqc, "--model", model_file)
    vqc.write_bytes(vqc.read_bytes()[:-3])
    result = run("decompress", vqc, png, "--model", model_file)
    assert result.exit_code == 1 and "truncated" in result.output
    assert not png.exists()


def test_usage_errors_exit_2(tmp_path, image_file, model_file):
    assert run("compress", image_file).exit_code == 2
    assert run("compress", image_file, tmp_path / "o.vqc", "--device", "tpu").exit_code == 2
    for rdo in ("-1", "nan", "inf"):
        assert run("compress", image_file, tmp_path / "o.vqc", "--model", model_file, "--rdo", rdo).exit_code == 2
    for passes in ("0", "1.5"):
        result = run("compress", image_file, tmp_path / "o.vqc", "--model", model_file, "--rdo-passes", passes)
        assert result.exit_code == 2
    assert not (tmp_path / "o.vqc").exists()
    result = run("decompress", tmp_path / "x.vqc", tmp_path / "out.unknownext", "--model", model_file)
    assert result.exit_code == 2 and "extension" in result.output


def test_missing_model_names_training_command(tmp_path, image_file):
    if vqcodec.presets():
        pytest.skip("a trained preset is installed")
    result = run("compress", image_file, tmp_path / "o.vqc")
    assert result.exit_code == 1 and "vqcodec train" in result.output
    with pytest.raises(vqcodec.ModelError, match="vqcodec train"):
        vqcodec.load()


def test_unknown_preset_and_both_sources(model_file):
    with pytest.raises(vqcodec.VQCodecError):
        vqcodec.load("no-such-preset")
    with pytest.raises(vqcodec.VQCodecError, match="not both"):
        vqcodec.load("medium", path=model_file)


def test_python_dash_m_runs_the_cli():
    result = subprocess.run([sys.executable, "-m", "vqcodec", "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0 and "compress" in result.stdout


#: Runs the CLI with the given arguments in a fresh interpreter, then says whether torch came in.
_TORCH_AFTER = (
    "import sys; from vqcodec.cli import main; main(sys.argv[1:], standalone_mode=False); print('torch' in sys.modules)"
)


def test_quick_commands_start_without_torch(tmp_path, image_file, model_file):
    """--help, --version, presets and info answer without importing torch (seconds of start-up)."""
    vqc = tmp_path / "a.vqc"
    assert run("compress", image_file, vqc, "--model", model_file).exit_code == 0
    for args in (["--help"], ["--version"], ["presets"], ["info", str(vqc)], ["info", "--json", str(vqc)]):
        result = subprocess.run([sys.executable, "-c", _TORCH_AFTER, *args], capture_output=True, text=True, check=True)
        assert result.stdout.splitlines()[-1] == "False", args


def test_warnings_are_one_line(tmp_path, rng, model_file):
    path = tmp_path / "cmyk.jpg"
    Image.fromarray(smooth_image(rng, 8, 8, 4), "CMYK").save(path)
    result = subprocess.run(
        [sys.executable, "-m", "vqcodec", "compress", str(path), str(tmp_path / "o.vqc"), "--model", str(model_file)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0 and result.stderr == "warning: CMYK image converted to RGB\n"


def test_info_json_and_damage(tmp_path, image_file, model_file):
    vqc = tmp_path / "a.vqc"
    run("compress", image_file, vqc, "--model", model_file)
    fields = json.loads(run("info", vqc, "--json").output)
    assert (fields["width"], fields["height"], fields["version"], fields["problem"]) == (26, 19, 1, None)
    assert fields["maps"]["bottom"]["bits_per_code"] > 0 and fields["preset"] is None
    vqc.write_bytes(vqc.read_bytes()[:-4])
    result = run("info", vqc)
    assert result.exit_code == 1 and "DAMAGED" in result.output
