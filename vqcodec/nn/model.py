"""The codec model: a VQ-VAE-2, its two PixelSNAIL priors, any enhancement layers and any synthesis
for resampled copies, built from one ``ModelConfig``."""

from __future__ import annotations

from torch import nn

from .config import ModelConfig
from .enhancement import Enhancement
from .pricer import Pricer
from .prior import PixelSNAIL
from .vqvae import VQVAE2, Synthesis


class CodecModel(nn.Module):
    """Everything a codec needs: ``vqvae`` for analysis and synthesis, ``top_prior`` and
    ``bottom_prior`` for the probabilities of the top and bottom code maps, ``enhancements``,
    the model's enhancement layers, and ``resampled_synthesis``, the synthesis of copies coded at
    another size than the image's, and ``pricer``, the encoder's estimate of the bottom prior's
    prices for RDO (none of these unless its config has them)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.vqvae = VQVAE2(config.vqvae)
        self.top_prior = PixelSNAIL(config.top_prior)
        self.bottom_prior = PixelSNAIL(config.bottom_prior)
        e = config.enhancement
        self.enhancements = nn.ModuleList(Enhancement(config.vqvae, e) for _ in range(e.layers if e else 0))
        r = config.resampled_synthesis
        self.resampled_synthesis = Synthesis(config.vqvae, r.size) if r is not None else None
        p = config.pricer
        self.pricer = Pricer(p, config.bottom_prior.codes, config.vqvae.top_codes) if p is not None else None

    def vqvae_for(self, resampled: bool) -> VQVAE2:
        """The VQ-VAE that synthesises a copy coded at another size than the image's
        (``resampled``), or at its own: ``vqvae`` with the model's ``resampled_synthesis``, where
        it has one, or ``vqvae`` itself."""
        if resampled and self.resampled_synthesis is not None:
            return self.vqvae.with_synthesis(self.resampled_synthesis)
        return self.vqvae
