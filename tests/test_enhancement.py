"""Enhancement layers: exact coefficient coding, an integer context that follows the float one,
files that decode to what the encoder reconstructed, and hostile records refused."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vqcodec
from tests.conftest import make_model, smooth_image
from vqcodec.coding import enhancement, restoration
from vqcodec.coding.entropy import Decoder, uncodable
from vqcodec.errors import DecodeMismatchError, FormatError, ModelError, UsageError
from vqcodec.format import container
from vqcodec.nn.config import EnhancementConfig
from vqcodec.nn.enhancement import (
    COEFFICIENTS,
    FIRST_SCALE,
    LOG_SCALE_STEP,
    MEAN_STEPS,
    SCALES,
    SYMBOLS,
    TAIL,
    anchor_mask,
    step_factor,
)
from vqcodec.nn.model import CodecModel
from vqcodec.nn.prior import observing
from vqcodec.quality import RUNGS
from vqcodec.training import tables
from vqcodec.training.enhancement import with_overlap
from vqcodec.zoo.weights import load_model, save_model


def enhanced_model(layers: int = 2, anchor_channels: int | None = None, overlap: int | None = None) -> CodecModel:
    """``make_model`` with random enhancement layers (two-pass ones with ``anchor_channels``,
    lapped ones with ``overlap``), their post-filters, second passes, overlaps and ranges set."""
    base = make_model()
    sizes = EnhancementConfig(
        layers=layers, channels=16, res_blocks=1, postfilter=8, anchor_channels=anchor_channels, overlap=overlap
    )
    config = dataclasses.replace(base.config, enhancement=sizes)
    torch.manual_seed(1)
    model = CodecModel(config)
    model.load_state_dict(base.state_dict(), strict=False)
    k = config.vqvae.top_codes
    with torch.no_grad():
        for layer in model.enhancements:
            layer.postfilter[-1].weight.normal_(0, 0.01)
            if layer.anchors is not None:
                layer.anchors.out.weight.normal_(0, 0.02)
            if overlap:
                layer.synthesis.weight.add_(torch.randn_like(layer.synthesis.weight) * 0.05)
            with observing(layer):
                y = torch.randn(2, COEFFICIENTS, 12, 14) * 3
                layer.context_of(y, torch.randint(0, k, (2, 6, 7)), torch.randint(0, k, (2, 12, 14)))
    return model.eval()


@pytest.fixture(scope="module")
def codec() -> vqcodec.Codec:
    return vqcodec.Codec(enhanced_model(), device="cpu")


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return smooth_image(np.random.default_rng(3), 45, 70)


def test_coefficients_round_trip_exactly_with_escapes(rng):
    index = rng.integers(0, SCALES, (9, 11, 48))
    q = rng.integers(-4, 5, index.shape)
    q[0, 0, :4] = [TAIL + 1, -TAIL - 1, 5000, -70000]  # escaped, the last beyond what is coded
    q = enhancement.quantise(q.astype(np.float64), np.zeros_like(q))
    tables = enhancement.checked_tables(enhanced_model(1).enhancements[0].tables)
    data = enhancement.encode([(q, index), (q[::-1], index[::-1])], tables)
    decoder = Decoder(data)
    assert np.array_equal(enhancement.decode(decoder, index, tables), q)
    assert np.array_equal(enhancement.decode(decoder, index[::-1], tables), q[::-1])
    assert q[0, 0, 3] == -(TAIL + (1 << enhancement.ESCAPE_BITS) - 1)


def test_every_table_can_code_its_escape():
    tables = enhancement.checked_tables(enhanced_model(1).enhancements[0].tables)
    assert tables.shape == (SCALES, SYMBOLS)
    assert not uncodable(np.full(SCALES, enhancement.ESCAPE), tables).any()


def test_straight_through_synthesises_the_rounded_coefficients_and_passes_gradients():
    model = enhanced_model(1)
    layer, k = model.enhancements[0], model.config.vqvae.top_codes
    torch.manual_seed(2)
    x, base = torch.rand(1, 3, 16, 16) * 2 - 1, torch.rand(1, 3, 16, 16) * 2 - 1
    top, bottom = torch.randint(0, k, (1, 2, 2)), torch.randint(0, k, (1, 4, 4))
    rounded, _ = layer(x, base, top, bottom, noisy=False)
    through, bits = layer(x, base, top, bottom, noisy=True, straight_through=True)
    torch.testing.assert_close(through, rounded)
    (through.square().sum() + bits).backward()
    assert layer.analysis.weight.grad.abs().sum() > 0 and layer.log_gain.grad.abs().sum() > 0


def first_pass(context: enhancement.IntegerContext, top: np.ndarray, bottom: np.ndarray, step: int = 0):
    """The first pass's means and scale indices at ``step``."""
    _, mean, scale = context.first(top, bottom)
    return enhancement.rescaled(mean, step), enhancement.indices(scale, step)


def test_integer_context_follows_the_float_one():
    layer = enhanced_model(1).enhancements[0]
    top, bottom = torch.randint(0, 16, (1, 6, 7)), torch.randint(0, 16, (1, 12, 14))
    mean, index = first_pass(enhancement.IntegerContext(layer), top[0].numpy(), bottom[0].numpy())
    with torch.no_grad():
        float_mean, log_scale = (t[0].permute(1, 2, 0).numpy() for t in layer.context(top, bottom))
    spread = np.abs(float_mean).max()
    assert np.abs(mean / MEAN_STEPS - float_mean).max() < 0.05 * spread + 1 / MEAN_STEPS
    float_index = np.clip(np.round(log_scale / LOG_SCALE_STEP) - FIRST_SCALE, 0, SCALES - 1)
    assert np.abs(index - float_index).max() <= 2 and np.mean(index == float_index) > 0.8


@pytest.mark.parametrize("step", [0, 5])
def test_integer_second_pass_follows_the_float_one(step):
    layer = enhanced_model(1, anchor_channels=8).enhancements[0]
    rng = np.random.default_rng(3)
    top, bottom = rng.integers(0, 16, (6, 7)), rng.integers(0, 16, (12, 14))
    q = np.where(anchor_mask(12, 14).numpy()[..., None], rng.integers(-6, 7, (12, 14, COEFFICIENTS)), 0)
    with torch.no_grad():
        features = layer.context.features(torch.from_numpy(top)[None], torch.from_numpy(bottom)[None])
        anchors = torch.from_numpy(q).permute(2, 0, 1)[None].float() * step_factor(step)
        with observing(layer.anchors):  # ranges for these inputs, as calibration sets them for real ones
            layer.anchors(features, anchors)
        float_mean, float_log_scale = (t[0].permute(1, 2, 0).numpy() for t in layer.anchors(features, anchors))
    context = enhancement.IntegerContext(layer)
    d_mean, d_scale = context.second(context.first(top, bottom)[0], q, step)
    others = ~anchor_mask(12, 14).numpy()  # the corrections are computed where they are used
    assert not d_mean[~others].any() and not d_scale[~others].any()
    d_mean, d_scale, float_mean, float_log_scale = (a[others] for a in (d_mean, d_scale, float_mean, float_log_scale))
    spread = np.abs(float_mean).max()
    assert spread > 0.1
    assert np.abs(d_mean / MEAN_STEPS - float_mean).max() < 0.05 * spread + 1 / MEAN_STEPS
    index_error = np.abs(d_scale - np.round(float_log_scale / LOG_SCALE_STEP))
    assert index_error.max() <= 2 and np.mean(index_error == 0) > 0.8


@pytest.mark.parametrize("step", [0, 5, -8])
def test_two_pass_files_decode_to_what_the_encoder_reconstructed(image, step):
    codec = vqcodec.Codec(enhanced_model(1, anchor_channels=8), device="cpu")
    encoded = codec.encode(image, rdo=0, enhancement=1, enhancement_step=step)
    decoded = np.asarray(codec.decompress(encoded.data))
    assert np.array_equal(decoded, codec.reconstruct(encoded.codes, 70, 45, restored=encoded.restoration))
    assert np.array_equal(codec.decode_codes(encoded.data).enhancement.values, encoded.codes.enhancement.values)
    assert codec.encode(image, rdo=0, enhancement=1, enhancement_step=step).data == encoded.data


def test_a_new_second_pass_changes_no_coefficient():
    model = enhanced_model(1)
    grown = CodecModel(
        dataclasses.replace(model.config, enhancement=dataclasses.replace(model.config.enhancement, anchor_channels=8))
    )
    grown.load_state_dict(model.state_dict(), strict=False)
    image = smooth_image(np.random.default_rng(4), 40, 56)
    one, two = (vqcodec.Codec(m.eval(), device="cpu").encode(image, rdo=0, enhancement=1) for m in (model, grown))
    assert np.array_equal(one.codes.enhancement.values, two.codes.enhancement.values)
    assert abs(len(one.data) - len(two.data)) <= 8


def test_a_lapped_transform_grown_from_a_block_one_codes_the_same_integers():
    model = enhanced_model(1)
    lapped = with_overlap(model, 2)
    assert lapped.enhancements[0].synthesis.weight.shape[-1] == 8
    image = smooth_image(np.random.default_rng(4), 40, 56)
    one, two = (vqcodec.Codec(m, device="cpu").encode(image, rdo=0, enhancement=1) for m in (model, lapped))
    assert np.array_equal(one.codes.enhancement.values, two.codes.enhancement.values)
    assert abs(len(one.data) - len(two.data)) <= 8


def test_lapped_layers_decode_to_what_the_encoder_reconstructed_whole_and_by_region(image):
    codec = vqcodec.Codec(enhanced_model(1, overlap=2), device="cpu")
    encoded = codec.encode(image, rdo=0, enhancement=1)
    whole = np.asarray(codec.decompress(encoded.data))
    assert np.array_equal(whole, codec.reconstruct(encoded.codes, 70, 45, restored=encoded.restoration))
    assert np.array_equal(np.asarray(codec.decompress(encoded.data, region=(9, 4, 30, 27))), whole[4:31, 9:39])


def test_a_step_moves_scales_by_whole_indices_and_scales_the_means():
    context = enhancement.IntegerContext(enhanced_model(1).enhancements[0])
    top, bottom = np.random.default_rng(0).integers(0, 16, (6, 7)), np.random.default_rng(1).integers(0, 16, (12, 14))
    mean, index = first_pass(context, top, bottom)
    finer_mean, finer_index = first_pass(context, top, bottom, -8)
    assert np.array_equal(finer_index, np.clip(index + 8, 0, SCALES - 1))
    assert np.abs(finer_mean - 2 * mean).max() <= 1


def test_enhanced_files_decode_to_what_the_encoder_reconstructed(codec, image):
    plain = codec.encode(image, rdo=0, restore=False)
    sizes, errors = [], []
    for layer, step in ((1, 8), (1, 0), (2, -8)):
        encoded = codec.encode(image, rdo=0, enhancement=layer, enhancement_step=step)
        decoded = np.asarray(codec.decompress(encoded.data))
        assert np.array_equal(decoded, codec.reconstruct(encoded.codes, 70, 45, restored=encoded.restoration))
        assert np.array_equal(codec.decode_codes(encoded.data).enhancement.values, encoded.codes.enhancement.values)
        assert container.read_header(encoded.data).version == 6
        sizes.append(len(encoded.data))
        errors.append(np.mean((decoded.astype(float) - image) ** 2))
    assert len(plain.data) < sizes[0] < sizes[1] < sizes[2]
    assert (
        errors[2]
        < errors[1]
        < errors[0]
        < np.mean((np.asarray(codec.decompress(plain.data), dtype=float) - image) ** 2)
    )


@pytest.mark.parametrize("passes", [1, 2])
def test_with_rdo_the_restoration_filter_is_fitted_to_the_enhanced_image(codec, image, passes, monkeypatch):
    # Where RDO changed few codes its last synthesis stands in for the maps' image; never for an
    # enhanced image (here: whatever it changed).
    monkeypatch.setattr(vqcodec.codec, "STAND_IN_SHARE", 1.01)
    encoded = codec.encode(image, rdo=0.1, rdo_passes=passes, enhancement=1)
    _, streams = container.unpack(encoded.data)
    map_bytes = len(streams.top) + len(streams.bottom) + len(streams.enhancement)
    fitted = restoration.fit(image, codec.reconstruct(encoded.codes, 70, 45), map_bytes)
    assert fitted is not None and streams.filter == restoration.to_bytes(fitted)


def test_tables_counted_on_an_image_code_its_integers_in_fewer_bytes(image):
    model = enhanced_model(1, anchor_channels=8)
    before = vqcodec.Codec(model, device="cpu").encode(image, rdo=0, enhancement=1, enhancement_step=2)
    counts = tables.count_symbols(model, [image], {1: (2,)})[1]
    assert counts.sum() == 12 * 18 * COEFFICIENTS  # every coefficient of the image padded to 48 x 72, once
    model.enhancements[0].tables.copy_(tables.counted_tables(counts))
    codec = vqcodec.Codec(model, device="cpu")
    after = codec.encode(image, rdo=0, enhancement=1, enhancement_step=2)
    assert np.array_equal(after.codes.enhancement.values, before.codes.enhancement.values)
    assert len(container.unpack(after.data)[1].enhancement) < len(container.unpack(before.data)[1].enhancement)
    assert np.array_equal(codec.decode_codes(after.data).enhancement.values, after.codes.enhancement.values)


def test_counted_tables_keep_every_integer_codable():
    counts = np.zeros((SCALES, SYMBOLS), np.int64)
    counts[10, TAIL] = 10**9  # one symbol of one table seen a billion times, nothing else
    t = tables.counted_tables(counts)
    assert enhancement.checked_tables(t).min() >= 1
    assert torch.equal(t[11], enhanced_model(1).enhancements[0].tables[11])  # unseen: the Gaussian's
    steps = tables.rung_steps(4)
    assert steps[2] == tuple(step for layer, step in RUNGS if layer == 2) and steps[4] == (0,)


def test_a_region_of_an_enhanced_file_is_that_part_of_the_image(codec, image):
    data = codec.compress(image, rdo=0, enhancement=1)
    whole = np.asarray(codec.decompress(data))
    assert np.array_equal(np.asarray(codec.decompress(data, region=(9, 4, 30, 27))), whole[4:31, 9:39])


def test_enhancement_settings_are_checked(codec, image):
    with pytest.raises(UsageError, match="scale must be 1"):
        codec.encode(image, enhancement=1, scale=1.5)
    with pytest.raises(UsageError, match="has 2"):
        codec.encode(image, enhancement=3)
    with pytest.raises(UsageError, match="enhancement_step"):
        codec.encode(image, enhancement=1, enhancement_step=40)
    with pytest.raises(UsageError, match="enhancement layer 1"):
        vqcodec.Codec(make_model(), device="cpu").encode(image, enhancement=1)


def _forged(data: bytes, record: bytes) -> bytes:
    """``data`` with another enhancement record, its checksums made right."""
    header, streams = container.unpack(data)
    return container.pack(header, dataclasses.replace(streams, enhancement=record))


def test_hostile_enhancement_records_are_refused(codec, image):
    data = codec.compress(image, rdo=0, enhancement=1)
    layer, step, crc, stream = container.read_enhancement(container.unpack(data)[1].enhancement)
    with pytest.raises(FormatError, match="enhancement layer 3"):
        codec.decompress(_forged(data, container.enhancement_record(3, step, crc, stream)))
    with pytest.raises(DecodeMismatchError, match="enhancement"):
        codec.decompress(_forged(data, container.enhancement_record(layer, step, crc ^ 1, stream)))
    flipped = bytes([stream[0] ^ 0x55]) + stream[1:]
    with pytest.raises((DecodeMismatchError, FormatError)):
        codec.decompress(_forged(data, container.enhancement_record(layer, step, crc, flipped)))
    with pytest.raises(FormatError, match="enhancement record"):
        codec.decompress(_forged(data, b"\x01\x00"))


def test_enhancement_on_a_resampled_copy_is_refused(codec, image):
    header, streams = container.unpack(codec.compress(image, rdo=0, enhancement=1))
    forged = container.pack(dataclasses.replace(header, flags=header.flags | container.FLAG_RESAMPLED), streams)
    with pytest.raises(FormatError, match="resampled"):
        container.read_header(forged)


def test_model_files_keep_their_layers_and_refuse_bad_tables(tmp_path, image):
    model = enhanced_model(1)
    path = tmp_path / "enhanced.safetensors"
    save_model(model, path)
    loaded = vqcodec.load(path=path, device="cpu")
    assert loaded.compress(image, rdo=0, enhancement=1) == vqcodec.Codec(model, device="cpu").compress(
        image, rdo=0, enhancement=1
    )
    with torch.no_grad():
        model.enhancements[0].tables[3, 5] = 0
    save_model(model, path)
    with pytest.raises(ModelError, match="tables"):
        vqcodec.Codec(load_model(path), device="cpu")


def test_quality_codes_the_upper_rungs_with_the_layers_where_the_model_has_them(image):
    from vqcodec import quality

    model = enhanced_model(quality.ENHANCEMENT_LAYERS)
    codec = vqcodec.Codec(model, device="cpu")
    sizes = []
    for span, point in quality.qualities():
        if point.enhancement:
            encoded = codec.encode(image, quality=span.start)
            assert codec.decode_codes(encoded.data).enhancement.layer == point.enhancement
            sizes.append(len(encoded.data))
    assert len(sizes) == len(quality.RUNGS)
    assert vqcodec.Codec(make_model(), device="cpu", quality=100).settings.scale == 2


def test_command_line_codes_and_reports_a_layer(tmp_path, image):
    import json

    from click.testing import CliRunner
    from PIL import Image

    from vqcodec.cli import main

    model, src, out = tmp_path / "m.safetensors", tmp_path / "a.png", tmp_path / "a.vqc"
    save_model(enhanced_model(), model)
    Image.fromarray(image).save(src)
    run = CliRunner().invoke
    assert run(main, ["compress", str(src), str(out), "--model", str(model), "--enhancement", "2",
                      "--enhancement-step", "-3", "--rdo", "0"]).exit_code == 0  # fmt: skip
    reported = json.loads(run(main, ["info", str(out), "--json"]).output)["enhancement"]
    assert (reported["layer"], reported["step"]) == (2, -3)
    assert "enhance: layer 2 at step -3" in run(main, ["info", str(out)]).output
    refused = run(main, ["compress", str(src), str(tmp_path / "b.vqc"), "--model", str(model), "-q", "90",
                         "--enhancement", "1"])  # fmt: skip
    assert refused.exit_code == 2 and "--enhancement" in refused.output


FUZZ_CODEC = vqcodec.Codec(enhanced_model(), device="cpu")
FUZZ_SAMPLE = FUZZ_CODEC.compress(smooth_image(np.random.default_rng(7), 21, 26), rdo=0, enhancement=2)
FUZZ_REFERENCE = FUZZ_CODEC.decompress(FUZZ_SAMPLE).tobytes()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    edits=st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), min_size=1, max_size=8),
    cut=st.integers(0, 1 << 16),
)
def test_forged_enhancement_records_decode_or_are_refused(edits, cut):
    """Records mutated behind valid payload checksums (a forger's file) are refused, or decode to
    the original where the change touched nothing decoded; nothing else happens."""
    record = bytearray(container.unpack(FUZZ_SAMPLE)[1].enhancement)
    for pos, value in edits:
        record[pos % len(record)] = value
    try:
        image = FUZZ_CODEC.decompress(_forged(FUZZ_SAMPLE, bytes(record[: max(1, cut % (len(record) + 1))])))
    except vqcodec.VQCodecError:
        return
    assert image.tobytes() == FUZZ_REFERENCE
