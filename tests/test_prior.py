"""The priors are exactly causal, so replaying them on a partial map gives the encoder's logits."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import make_model


@pytest.mark.parametrize("h,w", [(1, 1), (3, 5), (4, 7)])
@pytest.mark.parametrize("which", ["top", "bottom"])
def test_logits_do_not_depend_on_later_codes(h, w, which):
    model = make_model(seed=7)
    prior = model.top_prior if which == "top" else model.bottom_prior
    gen = torch.Generator().manual_seed(0)
    k = prior.config.codes
    top = None
    if which == "bottom":  # conditioned on a top map of half the resolution
        top = torch.randint(0, k, (1, h, w), generator=gen)
        h, w = 2 * h, 2 * w
    codes = torch.randint(0, k, (1, h, w), generator=gen)
    cond = prior.condition(top)
    full = prior.logits(codes, cond)
    for i in range(h * w):
        scrambled = codes.clone().view(-1)
        scrambled[i:] = torch.randint(0, k, (h * w - i,), generator=gen)
        replay = prior.logits(scrambled.view(1, h, w), cond)
        assert torch.equal(replay[0, :, i // w, i % w], full[0, :, i // w, i % w]), i


def test_first_position_ignores_its_own_code():
    prior = make_model(seed=2).top_prior
    a = prior.logits(torch.zeros(1, 2, 2, dtype=torch.long))
    b = prior.logits(torch.full((1, 2, 2), 5, dtype=torch.long))
    assert torch.equal(a[0, :, 0, 0], b[0, :, 0, 0])
    assert not torch.equal(a[0, :, 1, 1], b[0, :, 1, 1])


def test_conditional_prior_needs_top_map():
    prior = make_model().bottom_prior
    with pytest.raises(ValueError, match="top code map"):
        prior.condition(None)


def test_training_pass_gives_gradients():
    prior = make_model().bottom_prior.train()
    codes = torch.randint(0, 16, (2, 4, 6))
    top = torch.randint(0, 16, (2, 2, 3))
    logits = prior(codes, top)
    assert logits.shape == (2, 16, 4, 6)
    torch.nn.functional.cross_entropy(logits, codes).backward()
    assert prior.embed.weight.grad is not None
