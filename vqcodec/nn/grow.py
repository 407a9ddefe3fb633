"""Function-preserving growth of a synthesis: a wider and deeper decoder that starts out computing
exactly what a trained smaller one computes (Net2Net, Chen et al. 2016), so fine-tuning it on
frozen codes starts from the trained model's quality instead of from scratch.

Every convolution of the small decoder is copied into the top-left corner of the matching, larger
one; the weights from new channels into old ones are zeroed, so the old channels compute what they
did; new channels start random and join in as training moves those zeros. Residual blocks with
no counterpart start as the identity (their last convolution zeroed).
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from ..errors import ModelError
from .model import CodecModel
from .vqvae import Decoder, ResBlock


def _segments(decoder: Decoder) -> list[list[nn.Module]]:
    """The decoder's layers cut before each transposed convolution: every segment starts with a
    convolution and holds the residual blocks at that scale."""
    segments: list[list[nn.Module]] = []
    for layer in decoder.net:
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
            segments.append([layer])
        elif isinstance(layer, ResBlock):
            segments[-1].append(layer)
    return segments


@torch.no_grad()
def _embed(big: nn.Module, small: nn.Module) -> None:
    """Copy conv ``small`` into the corner of conv ``big``; zero what feeds old outputs from new inputs."""
    transposed = isinstance(big, nn.ConvTranspose2d)
    w_big, w_small = big.weight, small.weight
    if transposed:  # (in, out, k, k)
        i, o = w_small.shape[:2]
        w_big[:, :o] = 0
        w_big[:i, :o] = w_small
    else:  # (out, in, k, k)
        o, i = w_small.shape[:2]
        w_big[:o] = 0
        w_big[:o, :i] = w_small
    if big.bias is not None:
        big.bias[:o] = small.bias


@torch.no_grad()
def _identity(block: ResBlock) -> None:
    last = block.body[-1]
    last.weight.zero_()
    last.bias.zero_()


def grow_decoder(big: Decoder, small: Decoder) -> None:
    """Make ``big`` compute what ``small`` computes, for any input (see the module's docstring).
    ``big`` must have the same number of upsamplings and at least ``small``'s sizes everywhere."""
    big_segments, small_segments = _segments(big), _segments(small)
    if len(big_segments) != len(small_segments):
        raise ModelError("a synthesis can only grow at the same stride")
    for seg_big, seg_small in zip(big_segments, small_segments, strict=True):
        if len(seg_big) < len(seg_small):
            raise ModelError("a synthesis can only grow: it has fewer residual blocks than the model's")
        for i, layer in enumerate(seg_big):
            if i >= len(seg_small):
                _identity(layer)
                continue
            pairs = zip(layer.body[1::2], seg_small[i].body[1::2], strict=True) if i else [(layer, seg_small[i])]
            for conv_big, conv_small in pairs:
                if any(b < s for b, s in zip(conv_big.weight.shape, conv_small.weight.shape, strict=True)):
                    raise ModelError("a synthesis can only grow: a layer is narrower than the model's")
                _embed(conv_big, conv_small)


def grown(model: CodecModel, sizes: dict[str, int]) -> CodecModel:
    """A copy of ``model`` whose synthesis has the VQ-VAE config fields ``sizes`` (``synth_*``),
    grown from ``model``'s so that it decodes every code map to the same pixels."""
    config = replace(model.config, vqvae=replace(model.config.vqvae, **sizes))
    big = CodecModel(config)
    theirs = model.state_dict()
    big.load_state_dict({k: v for k, v in theirs.items() if not k.startswith("vqvae.dec.")}, strict=False)
    grow_decoder(big.vqvae.dec, model.vqvae.dec)
    return big.eval()
