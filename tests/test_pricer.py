"""The encoder's pricer: RDO's candidates priced by a small network distilled from the bottom prior."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

import vqcodec
from tests.conftest import make_model, smooth_image
from vqcodec.nn import pricer as pricer_module
from vqcodec.nn.config import PricerConfig
from vqcodec.training.pricer import divergence, with_pricer
from vqcodec.zoo.weights import load_model, model_id, save_model


@pytest.fixture(scope="module")
def priced():
    torch.manual_seed(2)
    model = with_pricer(make_model(), PricerConfig(channels=8, res_blocks=2))
    with torch.no_grad():
        for p in model.pricer.parameters():
            p.normal_(0, 0.5)
    return model


def test_a_pricer_leaves_the_model_identifier_and_its_files_alone(priced, tmp_path):
    plain = make_model()
    assert model_id(priced) == model_id(plain)
    assert "pricer" not in json.loads(plain.config.to_json())
    save_model(priced, tmp_path / "m.safetensors")
    assert load_model(tmp_path / "m.safetensors").config.pricer == PricerConfig(8, 2)
    image = smooth_image(np.random.default_rng(1), 40, 56)
    priced_codec, plain_codec = vqcodec.Codec(priced, device="cpu"), vqcodec.Codec(plain, device="cpu")
    data = priced_codec.compress(image, rdo=0.5)
    assert np.array_equal(np.asarray(plain_codec.decompress(data)), np.asarray(priced_codec.decompress(data)))
    assert priced_codec.compress(image, rdo=0) == plain_codec.compress(image, rdo=0)


def test_rdo_prices_by_the_pricer_where_the_model_has_one(priced, monkeypatch):
    image = smooth_image(np.random.default_rng(2), 48, 64)
    codec = vqcodec.Codec(priced, device="cpu")
    by_pricer = codec.encode(image, rdo=2.0)
    assert codec.compress(image, rdo=2.0) == by_pricer.data
    calls = []
    real = pricer_module.Pricer.relative_bits
    monkeypatch.setattr(pricer_module.Pricer, "relative_bits", lambda *a: calls.append(1) or real(*a))
    codec.encode(image, rdo=2.0, rdo_passes=2)
    assert len(calls) == 2
    by_prior = vqcodec.Codec(make_model(), device="cpu").encode(image, rdo=2.0)
    assert not np.array_equal(by_pricer.codes.bottom, by_prior.codes.bottom)


def test_the_pricers_files_do_not_depend_on_the_thread_count(priced):
    image = smooth_image(np.random.default_rng(3), 64, 80)
    codec = vqcodec.Codec(priced, device="cpu")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = codec.compress(image, rdo=1.0)
        torch.set_num_threads(2)
        two = codec.compress(image, rdo=1.0)
    finally:
        torch.set_num_threads(threads)
    assert one == two


def test_prices_by_bands_are_those_of_the_whole_map(priced, monkeypatch):
    rng = np.random.default_rng(4)
    k = priced.config.vqvae.top_codes
    top, bottom = rng.integers(0, k, (11, 9)), rng.integers(0, k, (22, 18))
    candidates = rng.integers(0, k, (22, 18, 3))
    whole = priced.pricer.relative_bits(bottom, top, candidates)
    monkeypatch.setattr(pricer_module, "BAND", 2)
    banded = priced.pricer.relative_bits(bottom, top, candidates)
    np.testing.assert_allclose(banded, whole, rtol=1e-5, atol=1e-4)
    with torch.no_grad():
        logits = priced.pricer(torch.as_tensor(bottom)[None], torch.as_tensor(top)[None])[0].permute(1, 2, 0)
    full = np.take_along_axis(logits.numpy(), candidates, -1) / -np.log(2)
    np.testing.assert_allclose(whole, full, rtol=1e-5, atol=1e-4)


def test_pricer_sizes_are_checked():
    config = dataclasses.replace(make_model().config, pricer=PricerConfig(channels=4096))
    with pytest.raises(vqcodec.ModelError, match="channels"):
        config.validate()


def test_the_pricers_elu_is_torchs_in_value_and_gradient():
    x = torch.linspace(-20, 20, 4001, dtype=torch.float32, requires_grad=True)
    mine, theirs = pricer_module.elu(x), torch.nn.functional.elu(x)
    torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-6)
    (grad_mine,) = torch.autograd.grad(mine.sum(), x)
    (grad_theirs,) = torch.autograd.grad(theirs.sum(), x)
    torch.testing.assert_close(grad_mine, grad_theirs, rtol=0, atol=1e-6)


def test_the_candidate_divergence_compares_the_candidates_alone():
    """RDO compares its candidates' bits and nothing else: a pricer that gives them the prior's
    probabilities up to a factor per position has no candidate divergence (what validation
    reports beside the divergence over all codes), whatever it gives the other codes."""
    torch.manual_seed(3)
    codes, k = 16, 4
    p_logits = torch.randn(2, codes, 3, 5)
    candidates = torch.stack([torch.randperm(codes)[:k] for _ in range(2 * 3 * 5)]).view(2, 3, 5, k)
    q_logits = torch.randn(2, codes, 3, 5) * 3
    choice = candidates.permute(0, 3, 1, 2)
    q_logits.scatter_(1, choice, p_logits.gather(1, choice) + torch.randn(2, 1, 3, 5))
    top = torch.zeros(2, 2, 3, dtype=torch.long)
    candidate_kl, kl, prior_bits, pricer_bits = divergence(
        lambda b, t: q_logits, lambda b, t: p_logits, top, candidates
    )
    assert abs(candidate_kl.item()) < 1e-6 and kl.item() > 0.1 and prior_bits.item() > 0 and pricer_bits.item() > 0
    other = divergence(lambda b, t: torch.randn(2, codes, 3, 5), lambda b, t: p_logits, top, candidates)[0]
    assert other.item() > 0.01
