"""The hierarchical VQ-VAE (VQ-VAE-2, Razavi et al. 2019): analysis to two code maps and synthesis back."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..timing import ANALYSIS, QUANTIZATION, Timer, no_timer
from .config import SynthesisSize, VQVAEConfig
from .quantizer import VectorQuantizer

#: ``padding_mode`` of the convolutions: zeros beyond the edges, or the edge values repeated.
ZEROS, REPLICATE = "zeros", "replicate"


class EdgeConvTranspose2d(nn.ConvTranspose2d):
    """A 4x4 stride-2 transposed convolution (padding 1) of its input with the edge values repeated
    one step beyond every edge: the same weights and output size as ``nn.ConvTranspose2d(c_in,
    c_out, 4, stride=2, padding=1)``, whose outputs near the edges see zeros there instead."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__(c_in, c_out, 4, stride=2, padding=3)

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        return super().forward(F.pad(x, (1, 1, 1, 1), mode=REPLICATE), output_size)


def up2(c_in: int, c_out: int, edges: str) -> nn.ConvTranspose2d:
    """A 4x4 stride-2 transposed convolution doubling height and width."""
    return EdgeConvTranspose2d(c_in, c_out) if edges == REPLICATE else nn.ConvTranspose2d(c_in, c_out, 4, 2, 1)


class ResBlock(nn.Module):
    """ReLU - 3x3 conv - ReLU - 1x1 conv, added to the input."""

    def __init__(self, channels: int, res_channels: int, edges: str = ZEROS):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channels, res_channels, 3, padding=1, padding_mode=edges),
            nn.ReLU(),
            nn.Conv2d(res_channels, channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _res_stack(channels: int, res_channels: int, n: int, edges: str) -> list[nn.Module]:
    return [ResBlock(channels, res_channels, edges) for _ in range(n)] + [nn.ReLU()]


class Encoder(nn.Module):
    """Downsamples by ``stride`` (a power of two) with 4x4 stride-2 convolutions, then residual blocks."""

    def __init__(
        self, in_channels: int, channels: int, res_blocks: int, res_channels: int, stride: int, edges: str = ZEROS
    ):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for i in range(stride.bit_length() - 1):
            c_out = channels if i == stride.bit_length() - 2 else channels // 2
            layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1, padding_mode=edges), nn.ReLU()]
            c_in = c_out
        layers += [nn.Conv2d(c_in, channels, 3, padding=1, padding_mode=edges)]
        layers += _res_stack(channels, res_channels, res_blocks, edges)
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """Residual blocks, then upsamples by ``stride`` with 4x4 stride-2 transposed convolutions,
    with ``up_blocks`` residual blocks after each upsampling but the last."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        channels: int,
        res_blocks: int,
        res_channels: int,
        stride: int,
        up_blocks: int = 0,
        edges: str = ZEROS,
    ):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 3, padding=1, padding_mode=edges)]
        layers += _res_stack(channels, res_channels, res_blocks, edges)
        steps = stride.bit_length() - 1
        c_in = channels
        for i in range(steps):
            last = i == steps - 1
            c_out = out_channels if last else channels // 2
            layers.append(up2(c_in, c_out, edges))
            if not last:
                layers.append(nn.ReLU())
                if up_blocks:
                    layers += _res_stack(c_out, max(1, res_channels // 2), up_blocks, edges)
            c_in = c_out
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@dataclass
class VQVAEOutput:
    """What a training step needs: the reconstruction, the commitment loss and the code maps."""

    recon: torch.Tensor
    commitment: torch.Tensor
    top: torch.Tensor
    bottom: torch.Tensor


class VQVAE2(nn.Module):
    """Two-level VQ-VAE.

    Images are (B, C, H, W) floats in [-1, 1] with H and W multiples of ``config.top_stride``.
    The top decoder's output joins the bottom encoder's features before the bottom quantizer, so
    the bottom codes only carry what the top codes miss.
    """

    #: The layers that only turn codes into pixels: changing them leaves every code map as it is.
    SYNTHESIS = ("upsample_t", "dec")

    def __init__(self, config: VQVAEConfig):
        super().__init__()
        config.validate()
        self.config = c = config
        edges = REPLICATE if c.replicate_edges else ZEROS
        self.enc_b = Encoder(c.in_channels, c.channels, c.res_blocks, c.res_channels, c.bottom_stride, edges)
        self.enc_t = Encoder(c.channels, c.channels, c.res_blocks, c.res_channels, 2, edges)
        self.quantize_conv_t = nn.Conv2d(c.channels, c.embed_dim, 1)
        self.quantize_t = VectorQuantizer(c.embed_dim, c.top_codes, c.ema_decay)
        self.dec_t = Decoder(c.embed_dim, c.embed_dim, c.channels, c.res_blocks, c.res_channels, 2, edges=edges)
        self.quantize_conv_b = nn.Conv2d(c.embed_dim + c.channels, c.embed_dim, 1)
        self.quantize_b = VectorQuantizer(c.embed_dim, c.bottom_codes, c.ema_decay)
        self.upsample_t, self.dec = synthesis_layers(c, c.synthesis)

    def _analyse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        enc_b = self.enc_b(x)
        return enc_b, self.quantize_conv_t(self.enc_t(enc_b))

    def _bottom_latent(self, enc_b: torch.Tensor, q_t: torch.Tensor) -> torch.Tensor:
        return self.quantize_conv_b(torch.cat([self.dec_t(q_t), enc_b], 1))

    def forward(self, x: torch.Tensor) -> VQVAEOutput:
        """Training pass: reconstruction with straight-through codes and the summed commitment loss."""
        enc_b, z_t = self._analyse(x)
        q_t, loss_t, top = self.quantize_t(z_t)
        q_b, loss_b, bottom = self.quantize_b(self._bottom_latent(enc_b, q_t))
        return VQVAEOutput(self.synthesise(q_t, q_b), loss_t + loss_b, top, bottom)

    @torch.no_grad()
    def encode(self, x: torch.Tensor, timer: Timer = no_timer) -> tuple[torch.Tensor, torch.Tensor]:
        """Top (B, H/2s, W/2s) and bottom (B, H/s, W/s) code maps of an image batch."""
        top, bottom = self.encode_candidates(x, 1, timer)
        return top, bottom[..., 0]

    @torch.no_grad()
    def encode_candidates(self, x: torch.Tensor, k: int, timer: Timer = no_timer) -> tuple[torch.Tensor, torch.Tensor]:
        """The top code map (B, H/2s, W/2s) and, for every bottom position, its ``k`` nearest
        bottom codes, nearest first (B, H/s, W/s, k): what a rate-distortion optimising encoder
        chooses from."""
        with timer(ANALYSIS):
            enc_b, z_t = self._analyse(x)
        with timer(QUANTIZATION):
            top = self.quantize_t.indices(z_t)
        with timer(ANALYSIS):
            z_b = self._bottom_latent(enc_b, self.quantize_t.lookup(top))
        with timer(QUANTIZATION):
            bottom = self.quantize_b.candidates(z_b, k)
        return top, bottom

    def synthesis_input(self, q_t: torch.Tensor, q_b: torch.Tensor) -> torch.Tensor:
        """What the synthesis network reads: the top code vectors upsampled to the bottom map's
        resolution, joined with the bottom ones."""
        return torch.cat([self.upsample_t(q_t), q_b], 1)

    def synthesise(self, q_t: torch.Tensor, q_b: torch.Tensor) -> torch.Tensor:
        """Images from code vectors (not indices): differentiable, for training and for RDO."""
        return self.dec(self.synthesis_input(q_t, q_b))

    def synthesise_maps(self, top: torch.Tensor, bottom: torch.Tensor) -> torch.Tensor:
        """Images from code maps (indices), differentiable: what stage 3 trains."""
        return self.synthesise(self.quantize_t.lookup(top), self.quantize_b.lookup(bottom))

    @torch.no_grad()
    def decode(self, top: torch.Tensor, bottom: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] (unclamped) from code maps."""
        return self.synthesise_maps(top, bottom)

    def with_synthesis(self, synthesis: Synthesis) -> VQVAE2:
        """This VQ-VAE with ``synthesis`` in place of its own: the same analysis and codebooks (the
        same modules, not copies), not registered in any model, so no weight is stored twice."""
        view = copy.copy(self)
        view._modules = {**self._modules, **dict(synthesis.named_children())}
        return view


def synthesis_layers(config: VQVAEConfig, size: SynthesisSize) -> tuple[nn.ConvTranspose2d, Decoder]:
    """A synthesis of ``size`` for the code maps of a VQ-VAE of ``config``: the upsampling of the
    top code vectors and the decoder of both maps' vectors (``VQVAE2.SYNTHESIS``)."""
    edges = REPLICATE if config.replicate_edges else ZEROS
    upsample_t = up2(config.embed_dim, config.embed_dim, edges)
    dec = Decoder(
        2 * config.embed_dim,
        config.in_channels,
        size.channels,
        size.res_blocks,
        size.res_channels,
        config.bottom_stride,
        size.up_blocks,
        edges,
    )
    return upsample_t, dec


class Synthesis(nn.Module):
    """A second synthesis for a VQ-VAE's code maps, of a size of its own (``VQVAE2.with_synthesis``)."""

    def __init__(self, config: VQVAEConfig, size: SynthesisSize):
        super().__init__()
        self.upsample_t, self.dec = synthesis_layers(config, size)


def loss(out: VQVAEOutput, x: torch.Tensor, beta: float = 0.25) -> torch.Tensor:
    """The VQ-VAE objective with EMA codebooks: reconstruction MSE plus beta times commitment."""
    return F.mse_loss(out.recon, x) + beta * out.commitment
