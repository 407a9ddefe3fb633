"""Model configuration: every size of the VQ-VAE and the priors, stored beside the weights."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, NamedTuple

from ..defaults import DEVICE_ROW_CHUNK, WHOLE_WINDOW, WINDOW, WINDOW_MARGIN
from ..errors import ModelError


class SynthesisSize(NamedTuple):
    """Sizes of the VQ-VAE's synthesis (its decoder)."""

    channels: int
    res_blocks: int
    res_channels: int
    up_blocks: int


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
    # The synthesis may be larger than the analysis (decoding affords more than encoding, and a
    # larger synthesis changes no code map). None: the analysis' size; such fields are left out
    # of the canonical JSON, so models written before they existed keep their identifiers.
    synth_channels: int | None = None
    synth_res_blocks: int | None = None
    synth_res_channels: int | None = None
    #: Residual blocks after each upsampling but the last (None: none), for detail at finer scales.
    synth_up_blocks: int | None = None
    #: 1: every convolution sees the image's (or feature map's) edge values repeated beyond its
    #: edges; None: zeros, as most convolutional networks do (edges then look unlike the inside,
    #: which shows on flat colours).
    replicate_edges: int | None = None

    @property
    def top_stride(self) -> int:
        return 2 * self.bottom_stride

    @property
    def synthesis(self) -> SynthesisSize:
        """The synthesis' sizes, defaults resolved."""
        return SynthesisSize(
            self.channels if self.synth_channels is None else self.synth_channels,
            self.res_blocks if self.synth_res_blocks is None else self.synth_res_blocks,
            self.res_channels if self.synth_res_channels is None else self.synth_res_channels,
            self.synth_up_blocks or 0,
        )

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> VQVAEConfig:
        try:
            config = _build(cls, raw)
        except (ValueError, TypeError, OverflowError) as exc:
            raise ModelError(f"invalid VQ-VAE config: {exc}") from exc
        config.validate()
        return config

    def validate(self) -> None:
        """Every size within bounds (a model file is untrusted: nothing is built before this)."""
        _check_bounds(self, _VQVAE_BOUNDS)
        s = self.bottom_stride
        if s & (s - 1):
            raise ModelError(f"bottom_stride must be a power of two, got {s}")


@dataclass(frozen=True)
class SynthesisConfig:
    """Sizes of a model's second synthesis, for copies of the image coded at another size than
    its own (``CodecModel.resampled_synthesis``): a copy below the image's size has fewer codes
    for the priors to decode, so its decoding affords a larger synthesis."""

    channels: int = 128
    res_blocks: int = 4
    res_channels: int = 64
    up_blocks: int = 0

    @property
    def size(self) -> SynthesisSize:
        return SynthesisSize(self.channels, self.res_blocks, self.res_channels, self.up_blocks)

    def validate(self) -> None:
        """Every size within bounds (a model file is untrusted: nothing is built before this)."""
        _check_bounds(self, _SYNTHESIS_BOUNDS)


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
        """Every size within bounds (a model file is untrusted: nothing is built before this)."""
        _check_bounds(self, _PRIOR_BOUNDS)
        if self.kernel % 2 == 0:
            raise ModelError(f"prior kernel must be odd, got {self.kernel}")
        if self.attn_channels % self.attn_heads:
            raise ModelError("attn_channels must be a multiple of attn_heads")


@dataclass(frozen=True)
class EnhancementConfig:
    """Sizes of the enhancement layers (``nn.enhancement``): ``layers`` of them, one per rate,
    smallest first, each with a context network of ``channels`` and ``res_blocks``, optionally a
    second pass of ``anchor_channels``, and a post-filter of ``postfilter`` channels."""

    layers: int = 1
    channels: int = 96
    res_blocks: int = 2
    postfilter: int = 32
    #: Width of the second pass's context (``nn.enhancement.AnchorContext``), which refines the
    #: blocks of one checkerboard colour from the coded integers of the other; None: one pass
    #: (left out of the canonical JSON, so models written before it keep their identifiers).
    anchor_channels: int | None = None
    #: Pixels by which each block's synthesis (and analysis) basis reaches into its neighbours: a
    #: lapped transform, whose blocks overlap, in place of the 4x4 block transform; None: no
    #: overlap (left out of the canonical JSON, as ``anchor_channels``).
    overlap: int | None = None

    def validate(self) -> None:
        """Every size within bounds (a model file is untrusted: nothing is built before this)."""
        _check_bounds(self, _ENHANCEMENT_BOUNDS)


@dataclass(frozen=True)
class PricerConfig:
    """Sizes of the encoder's pricer (``nn.pricer``): ``channels`` wide, ``res_blocks`` deep."""

    channels: int = 32
    res_blocks: int = 2

    def validate(self) -> None:
        """Every size within bounds (a model file is untrusted: nothing is built before this)."""
        _check_bounds(self, _PRICER_BOUNDS)


@dataclass(frozen=True)
class ModelConfig:
    """A whole codec model: the VQ-VAE, its two priors and, optionally, enhancement layers and a
    synthesis for resampled copies (None: none; left out of the canonical JSON, so models without
    them keep their identifiers)."""

    vqvae: VQVAEConfig = field(default_factory=VQVAEConfig)
    top_prior: PriorConfig = field(default_factory=PriorConfig)
    bottom_prior: PriorConfig = field(default_factory=lambda: PriorConfig(cond_codes=512))
    enhancement: EnhancementConfig | None = None
    resampled_synthesis: SynthesisConfig | None = None
    #: The encoder's pricer for RDO (None: RDO prices with the bottom prior itself); not part of
    #: the model's identity (``decoding``), since no file depends on it.
    pricer: PricerConfig | None = None

    def validate(self) -> None:
        self.vqvae.validate()
        self.top_prior.validate()
        self.bottom_prior.validate()
        if self.resampled_synthesis is not None:
            self.resampled_synthesis.validate()
        if self.pricer is not None:
            self.pricer.validate()
        if self.enhancement is not None:
            self.enhancement.validate()
            if self.vqvae.bottom_stride != 4:
                raise ModelError("enhancement layers need a bottom stride of 4 (one 4x4 block per bottom code)")
        self._check_cost()
        if self.top_prior.codes != self.vqvae.top_codes or self.top_prior.cond_codes:
            raise ModelError("the top prior must be unconditional over the top codebook")
        if (self.bottom_prior.codes, self.bottom_prior.cond_codes) != (
            self.vqvae.bottom_codes,
            self.vqvae.top_codes,
        ):
            raise ModelError("the bottom prior must cover the bottom codebook, conditioned on the top")

    def _check_cost(self) -> None:
        """Each field is bounded, and so is what they cost together (``COST_BUDGET`` bytes each):
        the largest activation of a VQ-VAE window (its widest layer at half the window's side in
        pixels) and the largest logits table of the priors (``DEVICE_ROW_CHUNK`` positions)."""
        vq = self.vqvae
        side = max(WINDOW + 2 * WINDOW_MARGIN, WHOLE_WINDOW) * vq.top_stride // 2
        widest = max(vq.channels, vq.synthesis.channels, *(r.channels for r in [self.resampled_synthesis] if r))
        window = 4 * widest * side * side
        logits = 4 * DEVICE_ROW_CHUNK * max(self.top_prior.codes, self.bottom_prior.codes)
        for what, cost in (("a VQ-VAE window's activations", window), ("the priors' logits", logits)):
            if cost > COST_BUDGET:
                raise ModelError(f"model too costly: {what} would take {cost >> 20} MiB (at most {COST_BUDGET >> 20})")

    def to_json(self) -> str:
        """Canonical JSON (sorted keys); that of ``decoding`` is hashed into the model identifier."""
        return json.dumps(_without_none(asdict(self)), sort_keys=True, separators=(",", ":"))

    @property
    def decoding(self) -> ModelConfig:
        """This config without what only the encoder uses (the pricer): what files depend on."""
        return replace(self, pricer=None)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        try:
            raw = json.loads(text)
            config = cls(
                vqvae=_build(VQVAEConfig, raw["vqvae"]),
                top_prior=_build(PriorConfig, raw["top_prior"]),
                bottom_prior=_build(PriorConfig, raw["bottom_prior"]),
                enhancement=_build(EnhancementConfig, raw["enhancement"]) if "enhancement" in raw else None,
                resampled_synthesis=(
                    _build(SynthesisConfig, raw["resampled_synthesis"]) if "resampled_synthesis" in raw else None
                ),
                pricer=_build(PricerConfig, raw["pricer"]) if "pricer" in raw else None,
            )
        except RecursionError as exc:
            raise ModelError("invalid model config: nested too deeply") from exc
        except (ValueError, KeyError, TypeError, OverflowError) as exc:
            raise ModelError(f"invalid model config: {exc}") from exc
        config.validate()
        return config


#: Bytes a model's largest window activation, and its priors' largest logits table, may take
#: (``ModelConfig._check_cost``): the shipped models need 22 MiB (`medium`'s windows), 90 MiB
#: (`low`'s) and 128 MiB (`high`'s 4096-code logits).
COST_BUDGET = 512 << 20

#: Bounds of every config field: far beyond any model that decodes in reasonable time, and small
#: enough that no model file can make vqcodec build something huge. (lowest, highest) inclusive,
#: but dropout's and ema_decay's upper ends, which are excluded.
_WIDTH, _DEPTH, _CODES = (1, 1024), (0, 32), (2, 65536)
_VQVAE_BOUNDS: dict[str, tuple[float, float]] = {
    "in_channels": (3, 3),
    "channels": (2, 1024),
    "res_blocks": _DEPTH,
    "res_channels": _WIDTH,
    "embed_dim": _WIDTH,
    "top_codes": _CODES,
    "bottom_codes": _CODES,
    "bottom_stride": (2, 64),
    "ema_decay": (0.0, 1.0),
    "synth_channels": (2, 1024),
    "synth_res_blocks": _DEPTH,
    "synth_res_channels": _WIDTH,
    "synth_up_blocks": _DEPTH,
    "replicate_edges": (0, 1),
}
_PRIOR_BOUNDS: dict[str, tuple[float, float]] = {
    "codes": _CODES,
    "channels": _WIDTH,
    "kernel": (3, 15),
    "blocks": (1, 16),
    "res_blocks": _DEPTH,
    "attn_heads": (1, 64),
    "attn_channels": _WIDTH,
    "attn_rows": (1, 16),
    "attn_left": (0, 32),
    "attn_right": (0, 8),
    "dropout": (0.0, 1.0),
    "cond_codes": (0, 65536),
    "cond_res_blocks": _DEPTH,
}
_ENHANCEMENT_BOUNDS: dict[str, tuple[float, float]] = {
    "layers": (1, 16),
    "channels": _WIDTH,
    "res_blocks": _DEPTH,
    "postfilter": _WIDTH,
    "anchor_channels": _WIDTH,
    "overlap": (1, 4),
}
_PRICER_BOUNDS: dict[str, tuple[float, float]] = {"channels": _WIDTH, "res_blocks": _DEPTH}
_SYNTHESIS_BOUNDS: dict[str, tuple[float, float]] = {
    "channels": (2, 1024),
    "res_blocks": _DEPTH,
    "res_channels": _WIDTH,
    "up_blocks": _DEPTH,
}
_OPEN_ABOVE = {"dropout", "ema_decay"}


def _check_bounds(config: object, bounds: dict[str, tuple[float, float]]) -> None:
    for name, (low, high) in bounds.items():
        value = getattr(config, name)
        if value is None:
            continue
        if not (low <= value < high if name in _OPEN_ABOVE else low <= value <= high):
            closing = ")" if name in _OPEN_ABOVE else "]"
            raise ModelError(f"{type(config).__name__}.{name} = {value} is outside [{low}, {high}{closing}")


def _without_none(raw: dict[str, Any]) -> dict[str, Any]:
    return {k: _without_none(v) if isinstance(v, dict) else v for k, v in raw.items() if v is not None}


def _build(cls: type, raw: dict[str, Any]) -> Any:
    if not isinstance(raw, dict):
        raise ValueError(f"{cls.__name__} must be a JSON object")
    raw = {k: v for k, v in raw.items() if v is not None}  # None: the field's default
    known = {f.name: f.type for f in fields(cls)}
    unknown = set(raw) - set(known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {sorted(unknown)}")
    for name, value in raw.items():
        expected = float if known[name] == "float" else int
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(float(value)):
            raise ValueError(f"{cls.__name__}.{name} must be a finite number")
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
