"""The benchmark suite (bench/): metrics, BD-rates, JSON layout and the rd, entropy and speed commands."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pytorch_msssim")
pytest.importorskip("scipy")
pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

from click.testing import CliRunner
from PIL import Image

import vqcodec
from bench.__main__ import main, spread
from bench.codecs import VQCodec, classical_codecs, vqcodec_codecs
from bench.hostile import forged
from bench.metrics import MSSSIM_MIN_SIDE, SSIMULACRA2_MIN_SIDE, bd_rate, ms_ssim, psnr, quality_at, ssimulacra2
from bench.peers import CLASSICAL, learned_peer
from bench.rd import QUALITY_RANGES, head_to_head, match_size
from bench.report import write_json
from tests.conftest import smooth_image
from vqcodec.zoo.weights import load_model

# Kodak averages of jpeg420 and webp_m4 from shared/anchors/classical_kodak.md (bpp, PSNR).
ANCHOR_JPEG = (
    [0.0881, 0.1179, 0.1642, 0.2555, 0.3587, 0.5334, 0.7433, 0.9299, 1.2130, 1.5490, 2.3154],
    [21.477, 22.809, 24.695, 26.672, 28.145, 29.893, 31.422, 32.515, 33.917, 35.370, 38.034],
)
ANCHOR_WEBP = (
    [0.1086, 0.2046, 0.2724, 0.3529, 0.4608, 0.6207, 0.7709, 0.9343, 1.2163, 1.7798, 2.6949],
    [25.852, 27.874, 28.846, 29.821, 30.939, 32.425, 33.607, 34.693, 36.369, 38.799, 41.308],
)


@pytest.fixture
def image_dir(tmp_path, rng):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(smooth_image(rng, 32, 40)).save(folder / "a.png")
    Image.fromarray(smooth_image(rng, 24, 48)).save(folder / "b.png")
    return folder


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


# -- metrics ----------------------------------------------------------------------------------


def test_psnr_of_identical_images_is_infinite(rng):
    image = smooth_image(rng, 8, 8)
    assert psnr(image, image) == math.inf


def test_psnr_of_known_mse():
    a = np.zeros((4, 5, 3), np.uint8)
    b = a.copy()
    b[0, 0, 0] = 60  # MSE = 60^2 / 60 samples = 60
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 60))
    assert psnr(a, a + 5) == pytest.approx(10 * math.log10(255**2 / 25))


def test_ms_ssim_needs_large_enough_images(rng):
    side = MSSSIM_MIN_SIDE
    image = smooth_image(rng, side, side + 3)
    assert ms_ssim(image, image) == pytest.approx(1.0, abs=1e-6)
    noisy = np.clip(image.astype(int) + rng.integers(-20, 21, image.shape), 0, 255).astype(np.uint8)
    assert 0 < ms_ssim(image, noisy) < 0.999
    assert ms_ssim(image[:-1], image[:-1]) is None  # one row short of the five-scale minimum


def test_ssimulacra2_is_100_for_the_original_and_falls_with_the_noise(rng):
    image = smooth_image(rng, 64, 72)
    scores = [ssimulacra2(image, image)]
    for amplitude in (4, 16, 48):
        noise = rng.integers(-amplitude, amplitude + 1, image.shape)
        scores.append(ssimulacra2(image, np.clip(image.astype(int) + noise, 0, 255).astype(np.uint8)))
    assert scores[0] == pytest.approx(100.0)
    assert scores == sorted(scores, reverse=True) and scores[-1] < 60
    side = SSIMULACRA2_MIN_SIDE - 1
    assert ssimulacra2(image[:side], image[:side]) is None


def test_bd_rate_of_a_curve_against_itself_is_zero():
    bpp, quality = ANCHOR_JPEG
    bd = bd_rate(bpp, quality, bpp, quality)
    assert bd.percent == pytest.approx(0.0, abs=1e-12)
    assert (bd.low, bd.high) == (min(quality), max(quality))


def test_bd_rate_of_ten_percent_fewer_bits_is_minus_ten_percent():
    bpp, quality = ANCHOR_JPEG
    assert bd_rate(bpp, quality, [0.9 * b for b in bpp], quality).percent == pytest.approx(-10.0)


def test_bd_rate_and_interpolation_reproduce_the_kodak_anchors():
    bd = bd_rate(*ANCHOR_JPEG, *ANCHOR_WEBP)
    assert bd.percent == pytest.approx(-34.9, abs=0.05)
    assert (round(bd.low, 2), round(bd.high, 2)) == (25.85, 38.03)
    assert quality_at(*ANCHOR_JPEG, 0.5) == pytest.approx(29.60, abs=0.005)
    assert quality_at(*ANCHOR_WEBP, 0.125) == pytest.approx(26.29, abs=0.005)
    assert quality_at(*ANCHOR_WEBP, 0.1) is None  # below the curve: no extrapolation


def test_bd_rate_needs_two_points_and_an_overlap():
    assert bd_rate([0.1, 0.2], [20.0, 25.0], [0.3], [30.0]) is None
    assert bd_rate([0.1, 0.2], [20.0, 25.0], [0.3, 0.4], [30.0, 35.0]) is None
    assert bd_rate([0.1, 0.2], [20.0, 25.0], [0.1, 0.2], [None, None]) is None


def _curve(bpp: list[float], psnr_db: list[float]) -> dict:
    return {"results": {"bpp": bpp, "psnr-rgb": psnr_db, "ms-ssim-rgb-db": psnr_db, "ssimulacra2": psnr_db}}


def test_head_to_head_compares_each_learned_codec_with_each_other_over_their_shared_range():
    bpp, quality = [0.1, 0.2, 0.4, 0.8], [25.0, 28.0, 31.0, 34.0]
    curves = {
        "jpeg420": _curve([2 * b for b in bpp], quality),
        "avif": _curve([b * 0.8 for b in bpp[1:]], quality[1:]),
        "vq": _curve(bpp, quality),
    }
    rows = {r["against"]: r for r in head_to_head(curves, {"vq"})}
    assert set(rows) == {"jpeg420", "avif"}
    assert rows["jpeg420"]["psnr"]["percent"] == pytest.approx(-50.0)
    assert rows["avif"]["ms-ssim-db"]["percent"] == pytest.approx(25.0)
    assert (rows["avif"]["psnr"]["low"], rows["avif"]["psnr"]["high"]) == (28.0, 34.0)


def test_spread_keeps_both_ends():
    assert spread([1, 2, 3, 4, 5, 6, 7], 4) == [1, 3, 5, 7]
    assert spread([1, 2], 4) == [1, 2]


def test_json_is_strict_with_missing_and_infinite_values(tmp_path):
    write_json(tmp_path / "x.json", {"a": [1.0, math.inf, None, math.nan], "b": {"c": 1 / 3}})
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": [1.0, None, None, None], "b": {"c": 0.333333}}


# -- codecs -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["jpeg420", "webp_m4", "avif"])
def test_match_size_takes_the_largest_quality_within_the_size(rng, name):
    codec = next((c for c in classical_codecs() if c.name == name), None)
    if codec is None:
        pytest.skip(f"Pillow cannot write {name} here")
    image = Image.fromarray(smooth_image(rng, 40, 56))
    low, high = QUALITY_RANGES[codec.format]
    sizes = {q: len(codec.encode(image, q)) for q in range(low, high + 1)}
    for target in (sizes[30], sizes[75] + 1, sizes[low] - 1):
        quality, data = match_size(image, target, codec)
        assert len(data) == sizes[quality]
        assert len(data) <= target or quality == low
        if all(sizes[q] <= sizes[q + 1] for q in range(low, high)):  # then bisection finds the largest
            within = [q for q, n in sizes.items() if n <= target]
            assert quality == (max(within) if within else low)


def test_vqcodec_without_decoding_gives_the_decoder_s_image(model_file, rng):
    codec = vqcodec.Codec(load_model(model_file), device="cpu")
    image = Image.fromarray(smooth_image(rng, 20, 28))
    full = VQCodec("vq", "", {"m": codec}, decode=True).run(image, "m", 1)
    fast = VQCodec("vq", "", {"m": codec}, decode=False).run(image, "m", 1)
    assert full.data == fast.data and fast.decode_s is None and full.decode_s > 0
    np.testing.assert_array_equal(full.decoded, fast.decoded)


@pytest.mark.slow
def test_ladder_runs_a_model_file_at_every_operating_point(model_file):
    (codec,) = vqcodec_codecs(False, [model_file], "cpu", decode=False, rdo=0.5, ladder=True)
    points = [point for _, point in vqcodec.quality.qualities(layers=0)]  # the tiny model has none
    assert codec.name == "vqcodec-tiny" and len(codec.settings) == len(points)
    for setting, point in zip(codec.settings, points, strict=True):
        loaded = codec.models[setting].settings
        assert (loaded.rdo, loaded.scale, loaded.rdo_passes) == (point.rdo, point.scale, point.rdo_passes)
        assert setting.startswith("q") and f"tiny {point}" in setting
    assert len({id(c.model) for c in codec.models.values()}) == 1  # one model loaded for every point
    (single,) = vqcodec_codecs(False, [model_file], "cpu", decode=False, rdo=0.5)
    assert single.settings == ["tiny"] and single.models["tiny"].settings.rdo == 0.5


# -- commands ---------------------------------------------------------------------------------


def test_rd_quick_run_writes_compressai_json_tables_and_plots(tmp_path, image_dir, model_file):
    out = tmp_path / "out"
    result = invoke(
        "rd", image_dir, "--quick", "--codecs", "jpeg420", "--model", model_file, "--no-presets", "--out", out
    )
    assert result.exit_code == 0, result.output
    run = json.loads((out / "rd.json").read_text())
    assert set(run["codecs"]) == {"jpeg420", "vqcodec-tiny"}
    assert [(r["codec"], r["against"]) for r in run["head_to_head"]] == [("vqcodec-tiny", "jpeg420")]

    curve = json.loads((out / "jpeg420.json").read_text())
    assert curve == run["codecs"]["jpeg420"]
    assert set(curve) == {"name", "description", "results"}
    results = curve["results"]
    assert {"bpp", "psnr-rgb", "ms-ssim-rgb", "encoding_time", "decoding_time"} <= set(results)
    assert len(results["setting"]) == 4 and all(len(v) == 4 for v in results.values())
    assert results["ms-ssim-rgb"] == [None] * 4  # the images are too small for five scales
    assert any("MS-SSIM needs" in note for note in run["notes"])

    vq_rows = [r for r in run["per_image"] if r["codec"] == "vqcodec-tiny"]
    assert [r["image"] for r in vq_rows] == ["a", "b"]
    codec = vqcodec.Codec(load_model(model_file), device="cpu")
    for row in vq_rows:
        original = np.asarray(Image.open(image_dir / f"{row['image']}.png").convert("RGB"))
        data = codec.compress(original)
        assert row["bytes"] == len(data) and row["decode_s"] > 0
        assert row["bpp"] == pytest.approx(8 * len(data) / (row["width"] * row["height"]), rel=1e-5)
        assert row["bits_per_subpixel"] == pytest.approx(row["bpp"] / 3, rel=1e-5)
        assert row["psnr"] == pytest.approx(psnr(original, np.asarray(codec.decompress(data))), rel=1e-5)
        encoded = codec.encode(original)
        assert row["top_bits_per_code"] == pytest.approx(encoded.top.bits_per_code, rel=1e-5)
        assert row["bottom_bits_per_code"] == pytest.approx(encoded.bottom.bits_per_code, rel=1e-5)
    assert results["top-bits-per-code"] == [None] * 4  # a classical codec has no code maps
    vq_results = run["codecs"]["vqcodec-tiny"]["results"]
    assert vq_results["top-bits-per-code"][0] == pytest.approx(
        np.mean([r["top_bits_per_code"] for r in vq_rows]), rel=1e-5
    )
    (point,) = run["same_rate"]
    assert point["codec"] == "vqcodec-tiny" and point["bpp"] == vq_results["bpp"][0]
    assert set(point) >= {"jpeg420_psnr", "jpeg420_ms_ssim"}  # None where the point is off JPEG's curve

    same = run["same_size"]
    assert [(r["codec"], r["image"], r["against"]) for r in same] == [
        ("vqcodec-tiny", "a", "jpeg420"),
        ("vqcodec-tiny", "b", "jpeg420"),
    ]
    for r in same:
        assert r["other_bytes"] <= r["bytes"] or r["other_quality"] == 1
        assert r["delta_psnr"] == pytest.approx(r["psnr"] - r["other_psnr"], abs=1e-4)
    (mean,) = run["same_size_mean"]
    ahead = sum(r["delta_psnr"] > 0 for r in same) / 2
    assert mean["images"] == 2 and mean["ahead_psnr"] == ahead
    assert run["bd_rate"]["jpeg420"]["psnr"]["percent"] == 0
    assert run["bd_rate"]["vqcodec-tiny"]["psnr"] is None  # one point is no curve

    markdown = (out / "rd.md").read_text()
    assert "## Summary" in markdown and "same size" in markdown
    for plot in ("rd_psnr.png", "rd_msssim.png", "rd_ssimulacra2.png"):
        assert (out / plot).read_bytes().startswith(b"\x89PNG")


def test_rd_refuses_unknown_codecs(tmp_path, image_dir):
    result = CliRunner().invoke(main, ["rd", str(image_dir), "--codecs", "gif", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "unknown or unavailable codec" in result.output
    result = CliRunner().invoke(main, ["rd", str(image_dir), "--same-size", "j2k", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "no same-size search for codec(s) j2k" in result.output


def test_entropy_command_reports_every_map(tmp_path, image_dir, model_file):
    out = tmp_path / "out"
    result = invoke("entropy", image_dir, "--model", model_file, "--device", "cpu", "--out", out)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "entropy.json").read_text())
    rows = {r["map"]: r for r in report["maps"]}
    assert set(rows) == {"top", "bottom", "total"}

    codec = vqcodec.Codec(load_model(model_file), device="cpu")
    encoded = [codec.encode(p) for p in sorted(image_dir.iterdir())]
    for name in ("top", "bottom"):
        row, stats = rows[name], [getattr(e, name) for e in encoded]
        assert row["codes"] == sum(s.codes for s in stats)
        assert row["prior_bits_per_code"] == pytest.approx(sum(s.real_bits for s in stats) / row["codes"], rel=1e-5)
        assert row["uniform_bits_per_code"] == pytest.approx(4.0)  # 16 codes
        assert 0 <= row["static_bits_per_code"] <= 4.0
        assert row["zlib_bits_per_code"] > 0 and row["lzma_bits_per_code"] > 0
    assert rows["total"]["codes"] == rows["top"]["codes"] + rows["bottom"]["codes"]
    assert "coder overhead %" in (out / "entropy.md").read_text()


def test_entropy_takes_one_model(tmp_path, image_dir, model_file):
    args = ["entropy", str(image_dir), "--out", str(tmp_path), "--preset", "medium", "--model", str(model_file)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "--preset NAME or --model PATH, not both" in result.output


def test_speed_command_times_every_stage(tmp_path, image_dir, model_file):
    out = tmp_path / "out"
    result = invoke("speed", image_dir, "--model", model_file, "--devices", "cpu", "--repeats", "1", "--out", out)
    assert result.exit_code == 0, result.output
    rows = json.loads((out / "speed.json").read_text())["rows"]
    assert [(r["device"], r["image"], r["width"], r["height"]) for r in rows] == [
        ("cpu", "a", 40, 32),
        ("cpu", "b", 48, 24),
    ]
    for r in rows:
        encode = {"analysis", "quantization", "prior", "entropy coding", "synthesis", "restoration", "total"}
        assert set(r["encode"]["seconds"]) == encode
        decode = set(r["decode"]["seconds"])
        assert decode - {"restoration"} == {"prior", "entropy coding", "synthesis", "total"}
        assert r["encode"]["peak_mib"] > 0 and r["decode"]["peak_mib"] > 0
    text = (out / "speed.md").read_text()
    assert "enc prior ms" in text and "prior products on the CPU: " in text


def test_speed_of_batches_is_per_image(tmp_path, image_dir, model_file):
    out = tmp_path / "out"
    result = invoke(
        "speed", image_dir, "--model", model_file, "--devices", "cpu", "--batch", "2", "--no-cuda-graphs", "--out", out
    )
    assert result.exit_code == 0, result.output
    run = json.loads((out / "speed.json").read_text())
    assert run["cuda_graphs"] is False
    (row,) = run["rows"]
    assert (row["image"], row["batch"], row["pixels"]) == ("a+b", 2, (40 * 32 + 48 * 24) / 2)
    assert row["encode"]["seconds"]["total"] > 0 and row["decode"]["seconds"]["total"] > 0


@pytest.mark.slow
def test_flat_colours_and_ramps_go_through_the_codec(codec):
    from bench.colours import Tolerance, flat_colours, ramp_steps

    loose = flat_colours(codec, Tolerance(255, 255), side=16)
    strict = flat_colours(codec, Tolerance(-1, -1), side=16)
    assert loose["colours"] == len(loose["rows"]) == 125 and loose["within"] == 125 and strict["within"] == 0
    assert 0 <= loose["worst_mean_error"] <= loose["worst_pixel_error"] <= 255
    assert all(r["bytes"] > 0 for r in loose["rows"])
    ramp = ramp_steps(codec, width=64, height=16)
    assert ramp["largest_jump"] >= 0 and ramp["ramp_step"] == 255 / 63


class _Peer:
    """Stands in for CompressAI's model: the calls and shapes the speed comparison makes."""

    def __init__(self):
        self.inputs = []

    def compress(self, x):
        self.inputs.append(tuple(x.shape))
        return {"strings": [[b"x"]], "shape": x.shape[2:]}

    def decompress(self, strings, shape):
        return {"x_hat": np.zeros(shape)}


def test_speed_against_peers_gives_ratios_of_cpu_times(tmp_path, image_dir, model_file, monkeypatch):
    """Each learned peer sees the image's edges repeated to multiples of 64; each classical one
    codes at the setting nearest vqcodec's size; every ratio is of the interleaved CPU times."""
    net = _Peer()
    monkeypatch.setattr("bench.__main__.load_learned", lambda: [learned_peer("stub", net)])
    out = tmp_path / "out"
    result = invoke("speed", image_dir, "--model", model_file, "--peers", "--repeats", "2", "--out", out)
    assert result.exit_code == 0, result.output
    run = json.loads((out / "peers.json").read_text())
    assert run["environment"]["prior products"] in ("int8", "float32") and run["environment"]["cpu capability"]
    assert [r["image"] for r in run["rows"]] == ["a", "b"]
    assert set(net.inputs) == {(1, 3, 64, 64)}  # 40x32 and 48x24, edges repeated to multiples of 64
    peers = ["stub", *[c.name for c in classical_codecs() if c.name in CLASSICAL]]
    assert list(run["ratios"]) == peers and "avif" in peers
    for row in run["rows"]:
        avif = next(c for c in classical_codecs() if c.name == "avif")
        image = Image.open(image_dir / f"{row['image']}.png").convert("RGB")
        sizes = [len(avif.encode(image, q)) for q in avif.settings]
        assert row["avif bytes"] == min(sizes, key=lambda n: abs(n - row["vqcodec bytes"]))
    for peer in peers:
        for way in ("encode", "decode"):
            ours = [r[f"vqcodec {way}"] for r in run["rows"]]
            theirs = [max(r[f"{peer} {way}"], 1e-9) for r in run["rows"]]
            assert min(ours) >= 0 and run["ratios"][peer][way]["total"] == pytest.approx(
                sum(ours) / sum(theirs), rel=1e-3
            )
    assert "vqcodec against its peers" in (out / "peers.md").read_text()


def test_speed_against_peers_without_compressai_times_the_classical_ones(tmp_path, image_dir, model_file, monkeypatch):
    def missing():
        raise ImportError("the learned speed peers need CompressAI: pip install compressai")

    monkeypatch.setattr("bench.__main__.load_learned", missing)
    result = invoke("speed", image_dir, "--model", model_file, "--peers", "--out", tmp_path)
    assert result.exit_code == 0 and "pip install compressai" in result.output
    assert "avif" in json.loads((tmp_path / "peers.json").read_text())["ratios"]


def test_region_compares_regions_with_the_whole_image():
    golden = Path(__file__).parent / "golden" / "medium-segments.vqc"
    result = invoke("region", golden, "--size", 40, "--repeats", 1)
    lines = result.output.splitlines()
    assert "256x192, .vqc version 5" in lines[0]
    assert [line.split(" | ")[0] for line in lines[3:]] == ["| 40x40 top-left", "| 40x40 centre", "| whole image"]


def test_hostile_forges_valid_headers_with_and_without_segments(codec, rng):
    sample = codec.compress(smooth_image(rng, 40, 56))
    segmented = 0
    for _ in range(20):
        fields, data = forged(rng, sample, codec.top_stride)
        try:
            header = vqcodec.read_header(data)
        except vqcodec.FormatError:
            continue  # a header claiming more than its streams can hold
        assert (header.width, header.height, header.tile) == (fields["width"], fields["height"], fields["tile"])
        if header.segmented:
            segmented += 1
            _, streams = vqcodec.format.container.unpack(data)
            count = vqcodec.format.container.segment_count(header.bottom_shape, 2 * header.tile)
            parts = vqcodec.format.container.split_segments(streams.bottom, count)
            assert len(parts) == count and 4 * (count - 1) + sum(map(len, parts)) == len(streams.bottom)
    assert segmented > 0
