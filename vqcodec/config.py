"""Model configuration: every size of the VQ-VAE and the priors, stored beside the weights."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from .errors import ModelError


@dataclass(frozen=True)
class VQVAEConfig:
    """Sizes of the hierarchical VQ-VAE (VQ-VAE-2).

    The bottom map has stride ``bottom_stride`` (a power of two) in the image; the top map has
    twice that stride.
    """

    in_channels: int = 3
    channels: int = 128
    res_blocks: int = 2
    res_channels: int = 64
    embed_dim: int = 64
    top_codes: int = 512
    bottom_codes: int = 512
    bottom_stride: int = 4
    ema_decay: float = 0.99

    @property
    def top_stride(self) -> int:
        return 2 * self.bottom_stride

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> VQVAEConfig:
        try:
            config = _build(cls, raw)
        except (ValueError, TypeError) as exc:
            raise ModelError(f"invalid VQ-VAE config: {exc}") from exc
        config.validate()
        return config

    def validate(self) -> None:
        s = self.bottom_stride
        if s < 2 or s & (s - 1):
            raise ModelError(f"bottom_stride must be a power of two >= 2, got {s}")
        for name in ("channels", "res_channels", "embed_dim", "top_codes", "bottom_codes"):
            if getattr(self, name) < 1:
                raise ModelError(f"{name} must be positive")
        if max(self.top_codes, self.bottom_codes) > 65536:
            raise ModelError("codebooks are limited to 65536 codes (16-bit indices)")


@dataclass(frozen=True)
class PriorConfig:
    """Sizes of one PixelSNAIL prior.

    ``cond_codes`` > 0 makes it conditional on a map of that many codes at half the resolution
    (the bottom prior, conditioned on the top map).
    """

    codes: int = 512
    channels: int = 128
    kernel: int = 5
    blocks: int = 2
    res_blocks: int = 2
    attn_heads: int = 4
    attn_channels: int = 64
    attn_rows: int = 4
    attn_left: int = 6
    attn_right: int = 1
    dropout: float = 0.1
    cond_codes: int = 0
    cond_res_blocks: int = 2

    def validate(self) -> None:
        if self.kernel < 3 or self.kernel % 2 == 0:
            raise ModelError(f"prior kernel must be odd and >= 3, got {self.kernel}")
        if self.attn_channels % self.attn_heads:
            raise ModelError("attn_channels must be a multiple of attn_heads")
        if self.attn_rows < 1 or self.attn_left < 0 or self.attn_right < 0:
            raise ModelError("the attention window needs attn_rows >= 1, attn_left >= 0 and attn_right >= 0")


@dataclass(frozen=True)
class ModelConfig:
    """A whole codec model: the VQ-VAE and its two priors."""

    vqvae: VQVAEConfig = field(default_factory=VQVAEConfig)
    top_prior: PriorConfig = field(default_factory=PriorConfig)
    bottom_prior: PriorConfig = field(default_factory=lambda: PriorConfig(cond_codes=512))

    def validate(self) -> None:
        self.vqvae.validate()
        self.top_prior.validate()
        self.bottom_prior.validate()
        if self.top_prior.codes != self.vqvae.top_codes or self.top_prior.cond_codes:
            raise ModelError("the top prior must be unconditional over the top codebook")
        if (self.bottom_prior.codes, self.bottom_prior.cond_codes) != (
            self.vqvae.bottom_codes,
            self.vqvae.top_codes,
        ):
            raise ModelError("the bottom prior must cover the bottom codebook, conditioned on the top")

    def to_json(self) -> str:
        """Canonical JSON (sorted keys), also hashed into the model identifier."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        try:
            raw = json.loads(text)
            config = cls(
                vqvae=_build(VQVAEConfig, raw["vqvae"]),
                top_prior=_build(PriorConfig, raw["top_prior"]),
                bottom_prior=_build(PriorConfig, raw["bottom_prior"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelError(f"invalid model config: {exc}") from exc
        config.validate()
        return config


def _build(cls: type, raw: dict[str, Any]) -> Any:
    known = {f.name: f.type for f in fields(cls)}
    unknown = set(raw) - set(known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {sorted(unknown)}")
    for name, value in raw.items():
        expected = float if known[name] == "float" else int
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ValueError(f"{cls.__name__}.{name} must be a number")
        if expected is int and not isinstance(value, int):
            raise ValueError(f"{cls.__name__}.{name} must be an integer")
    return cls(**raw)


def tiny_config(codes: int = 16, bottom_stride: int = 4) -> ModelConfig:
    """A very small model for tests and smoke runs (random weights are useful only for those)."""
    vqvae = VQVAEConfig(
        channels=16,
        res_blocks=1,
        res_channels=8,
        embed_dim=8,
        top_codes=codes,
        bottom_codes=codes,
        bottom_stride=bottom_stride,
    )
    prior = PriorConfig(
        codes=codes,
        channels=16,
        kernel=3,
        blocks=1,
        res_blocks=1,
        attn_heads=2,
        attn_channels=8,
        attn_rows=1,
        attn_left=1,
        attn_right=1,
        dropout=0.0,
        cond_res_blocks=1,
    )
    bottom = PriorConfig(**{**asdict(prior), "cond_codes": codes})
    return ModelConfig(vqvae=vqvae, top_prior=prior, bottom_prior=bottom)


def _fast_priors(codes: int) -> tuple[PriorConfig, PriorConfig]:
    """Top and bottom priors sized for fast CPU decoding (0.35 M and 0.47 M parameters)."""
    prior = PriorConfig(
        codes=codes,
        channels=64,
        kernel=3,
        blocks=1,
        res_blocks=2,
        attn_heads=2,
        attn_channels=32,
        attn_rows=4,
        attn_left=6,
        attn_right=1,
        dropout=0.1,
        cond_res_blocks=1,
    )
    return prior, PriorConfig(**{**asdict(prior), "cond_codes": codes})


def _small_vqvae(bottom_stride: int, bottom_codes: int = 512) -> ModelConfig:
    vqvae = VQVAEConfig(
        channels=64,
        res_blocks=2,
        res_channels=32,
        embed_dim=32,
        bottom_codes=bottom_codes,
        bottom_stride=bottom_stride,
    )
    top, bottom = _fast_priors(512)
    return ModelConfig(vqvae=vqvae, top_prior=top, bottom_prior=replace(bottom, codes=bottom_codes))


def medium_config() -> ModelConfig:
    """The default architecture: bottom stride 4, 512-code books, priors sized for fast CPU decoding."""
    return _small_vqvae(4)


def low_config() -> ModelConfig:
    """The low-rate architecture: as ``medium`` with bottom stride 8 (a quarter of the codes)."""
    return _small_vqvae(8)


def high_config() -> ModelConfig:
    """The high-rate architecture: as ``medium`` with a bottom codebook of 4096 codes."""
    return _small_vqvae(4, bottom_codes=4096)


#: Named architectures for ``vqcodec train``.
ARCHITECTURES = {"tiny": tiny_config, "low": low_config, "medium": medium_config, "high": high_config}
