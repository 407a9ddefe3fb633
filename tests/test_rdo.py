"""Rate-distortion optimised quantization: its error estimate, its choice, and the codec's use of it."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import vqcodec
from tests.conftest import make_model, smooth_image
from vqcodec.coding.rdo import (
    CANDIDATES,
    PROBE_SHARE,
    PROBE_STEP,
    Terms,
    _per_position,
    choose,
    curvature_margin,
    window_terms,
)
from vqcodec.io.image import to_rgb, to_tensor
from vqcodec.zoo import catalog


def test_choice_weighs_estimated_error_against_bits():
    """cost = linear + margin x measured gain x squared + rdo x mean error x bits, least wins."""
    linear = np.array([[[0.0, -0.5, -1.0]]])
    squared = np.array([[[0.0, 1.0, 4.0]]])
    one = np.ones((1, 1))
    # quadratic term: margin / 2
    terms = Terms(linear, squared, error=one, gain=3 * one, probe=6 * one, synthesis=np.zeros((4, 4, 3), np.uint8))
    candidates = np.array([[[10, 11, 12]]])
    bits = np.array([[[9.0, 5.0, 1.0]]])
    for margin in (curvature_margin(1), curvature_margin(2)):
        for rdo in (0.0, 0.3, 1.0, 10.0):
            cost = linear + margin / 2 * squared + rdo * bits
            assert choose(candidates, terms, bits, rdo, margin)[0, 0] == 10 + cost.argmin()
        assert choose(candidates, terms, bits, 0.0, margin)[0, 0] == 10
        assert choose(candidates, terms, bits, 10.0, margin)[0, 0] == 12


def test_linear_term_is_the_slope_of_the_pixel_error():
    """For every position and candidate, linear = d/dt of the pixel error as the position's code
    vector moves from its current code towards the candidate (checked by finite differences on a
    random model, the current codes not the nearest ones, as in a second pass)."""
    model = make_model(seed=3)
    vq = model.vqvae
    x = to_tensor(smooth_image(np.random.default_rng(3), 16, 24))
    top, cand = vq.encode_candidates(x, CANDIDATES)
    current = cand[..., 2]
    linear, squared, error, gain, probe, pixels = window_terms(vq, x, top, cand, current)
    q_t, q_b = vq.quantize_t.lookup(top), vq.quantize_b.lookup(current)
    torch.testing.assert_close(error.sum(), (vq.synthesise(q_t, q_b) - x).pow(2).sum())
    assert np.array_equal(pixels[0].numpy(), to_rgb(vq.decode(top, current)))  # what the decoder synthesises
    exact = copy.deepcopy(vq).double()  # finite differences need more than float32's 7 digits
    q_t, q_b, x, embed = q_t.double(), q_b.double(), x.double(), exact.quantize_b.embed
    with torch.no_grad():
        base = (exact.synthesise(q_t, q_b) - x).pow(2).sum()
        eps = 1e-4
        for r, c, k in [(0, 0, 1), (2, 3, 4), (3, 5, 7), (1, 4, 0)]:
            step = embed[cand[0, r, c, k]] - embed[current[0, r, c]]
            moved = q_b.clone()
            moved[0, :, r, c] += eps * step
            slope = ((exact.synthesise(q_t, moved) - x).pow(2).sum() - base) / eps
            assert float(slope) == pytest.approx(float(linear[0, r, c, k]), rel=0.01, abs=1e-4)
            assert float(squared[0, r, c, k]) == pytest.approx(float(step.pow(2).sum()), rel=1e-5)
    assert float(squared[..., 2].abs().max()) == 0.0  # staying put changes nothing
    assert bool((gain >= 0).all()) and float(probe.sum()) > 0


def test_codec_rdo_zero_codes_the_nearest_codes(rng):
    model = make_model(seed=4)
    image = smooth_image(rng, 24, 40)
    encoded = vqcodec.Codec(model, device="cpu", rdo=0).encode(image)
    top, bottom = model.vqvae.encode(to_tensor(image))
    assert np.array_equal(encoded.codes.top, top[0].numpy()) and np.array_equal(encoded.codes.bottom, bottom[0].numpy())


def test_codec_with_rdo_codes_candidates_and_round_trips(rng):
    model = make_model(seed=4)
    image = smooth_image(rng, 24, 40)
    plain = vqcodec.Codec(model, device="cpu", rdo=0).encode(image)
    codec = vqcodec.Codec(model, device="cpu", rdo=5.0)
    encoded = codec.encode(image)
    assert np.array_equal(encoded.codes.top, plain.codes.top)  # RDO chooses bottom codes only
    _, cand = model.vqvae.encode_candidates(to_tensor(image), CANDIDATES)
    assert (cand[0].numpy() == encoded.codes.bottom[..., None]).any(-1).all()
    assert not np.array_equal(encoded.codes.bottom, plain.codes.bottom)
    assert np.array_equal(codec.decode_codes(encoded.data).bottom, encoded.codes.bottom)


@pytest.mark.parametrize("rdo", [-0.1, float("nan"), float("inf")])
def test_bad_rdo_is_refused(rdo):
    with pytest.raises(ValueError, match="rdo"):
        vqcodec.Codec(make_model(), device="cpu", rdo=rdo)
    with pytest.raises(ValueError, match="rdo_passes"):
        vqcodec.Codec(make_model(), device="cpu", rdo_passes=0)


def test_a_second_pass_chooses_among_the_candidates_and_round_trips(rng):
    model = make_model(seed=4)
    image = smooth_image(rng, 24, 40)
    one, two = (vqcodec.Codec(model, device="cpu", rdo=5.0, rdo_passes=n) for n in (1, 2))
    first, second = one.encode(image), two.encode(image)
    _, cand = model.vqvae.encode_candidates(to_tensor(image), CANDIDATES)
    assert (cand[0].numpy() == second.codes.bottom[..., None]).any(-1).all()
    assert not np.array_equal(first.codes.bottom, second.codes.bottom)
    assert np.array_equal(one.decode_codes(second.data).bottom, second.codes.bottom)  # any decoder reads it
    assert vqcodec.load("high").settings.rdo_passes == 2 and vqcodec.load().settings.rdo_passes == 1
    assert vqcodec.load(path=catalog.preset_path("high")).settings.rdo_passes == 2  # the model's, not the name's
    assert vqcodec.load("high", rdo_passes=1).settings.rdo_passes == 1
    assert vqcodec.load(rdo_passes=3).settings.rdo_passes == 3


def test_gain_is_measured_in_a_band_as_the_whole_synthesis_gives_it():
    """The gain probe runs on the middle rows with some context: there it is the gain the whole
    image's synthesis gives, elsewhere zero (both the gain and the probe, so their ratio holds)."""
    model = make_model(seed=6)
    vq = model.vqvae
    x = to_tensor(smooth_image(np.random.default_rng(6), 96, 40))
    top, cand = vq.encode_candidates(x, CANDIDATES)
    _, _, _, gain, probe, _ = window_terms(vq, x, top, cand, cand[..., 0])
    q_t, q_b = vq.quantize_t.lookup(top), vq.quantize_b.lookup(cand[..., 0])
    step = (vq.quantize_b.lookup(cand[..., 1]) - q_b) * PROBE_STEP
    with torch.no_grad():
        moved = (vq.synthesise(q_t, q_b + step) - vq.synthesise(q_t, q_b)) / PROBE_STEP
    whole = _per_position(moved.pow(2), vq.config.bottom_stride)
    band = (probe[0] > 0).any(1).nonzero()[:, 0]
    rows = top.shape[1] // PROBE_SHARE
    assert len(band) == 2 * rows and int(band[-1] - band[0]) == 2 * rows - 1  # contiguous
    assert abs(int(band[0]) - (2 * top.shape[1] - 1 - int(band[-1]))) <= 2  # in the middle
    torch.testing.assert_close(gain[:, band], whole[:, band], rtol=1e-3, atol=1e-4)
    outside = torch.ones(gain.shape[1], dtype=torch.bool)
    outside[band] = False
    assert not gain[:, outside].any() and not probe[:, outside].any()
