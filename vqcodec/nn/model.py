"""The codec model: a VQ-VAE-2 and its two PixelSNAIL priors, built from one ``ModelConfig``."""

from __future__ import annotations

from torch import nn

from .config import ModelConfig
from .prior import PixelSNAIL
from .vqvae import VQVAE2


class CodecModel(nn.Module):
    """Everything a codec needs: ``vqvae`` for analysis and synthesis, ``top_prior`` and
    ``bottom_prior`` for the probabilities of the top and bottom code maps."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.vqvae = VQVAE2(config.vqvae)
        self.top_prior = PixelSNAIL(config.top_prior)
        self.bottom_prior = PixelSNAIL(config.bottom_prior)
