"""The codec model: a VQ-VAE-2, its two PixelSNAIL priors and any enhancement layers, built from one
``ModelConfig``."""

from __future__ import annotations

from torch import nn

from .config import ModelConfig
from .enhancement import Enhancement
from .prior import PixelSNAIL
from .vqvae import VQVAE2


class CodecModel(nn.Module):
    """Everything a codec needs: ``vqvae`` for analysis and synthesis, ``top_prior`` and
    ``bottom_prior`` for the probabilities of the top and bottom code maps, and ``enhancements``,
    the model's enhancement layers (none unless its config has them)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.vqvae = VQVAE2(config.vqvae)
        self.top_prior = PixelSNAIL(config.top_prior)
        self.bottom_prior = PixelSNAIL(config.bottom_prior)
        e = config.enhancement
        self.enhancements = nn.ModuleList(Enhancement(config.vqvae, e) for _ in range(e.layers if e else 0))
