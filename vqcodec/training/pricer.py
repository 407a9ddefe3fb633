"""Stage 6: the encoder's pricer (``nn.pricer``) distilled from a finished model's bottom prior,
which stays frozen, as does everything else: the model keeps its identifier and its files.

Loss: the Kullback-Leibler divergence from the prior's distribution to the pricer's at every
position of the nearest code maps of training crops, the contexts RDO prices in. Validation on
the validation photos' maps: that divergence, the divergence over each position's RDO candidates
alone (its ``CANDIDATES`` nearest codes, both distributions renormalised over them: what RDO
compares), and the bits per code of the prior and of the pricer. (Trained for the candidates'
divergence instead, a pricer came closer to the prior there but made larger files: medium's
model card, History.)
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..coding.rdo import CANDIDATES
from ..defaults import DEFAULT_TILE
from ..errors import ModelError
from ..nn.config import PricerConfig
from ..nn.model import CodecModel
from ..nn.pricer import Pricer
from ..nn.prior import PixelSNAIL
from ..nn.vqvae import VQVAE2
from ..zoo.catalog import model_file
from ..zoo.weights import load_model, weights_digest
from . import data
from .checkpoint import read_meta
from .data import MapCropSampler, map_tiles
from .enhancement import save_enhanced
from .metrics import candidate_maps
from .run import Run, TrainSettings


def train_pricer(
    source: str | Path,
    folder: str | Path,
    out: str | Path,
    model_out: str | Path,
    settings: TrainSettings | None = None,
    config: PricerConfig | None = None,
) -> Path:
    """Distil a pricer of ``config``'s sizes from the bottom prior of the finished model ``source``
    (file or preset) on the code maps of the photos of ``folder``; write ``source`` with it to
    ``model_out`` (the checkpoint for resuming goes to ``out``). A model's pricer is replaced. A
    run resumes on any model of the same VQ-VAE and bottom prior (``prior_digest``): a finished
    run gives its pricer to a model whose enhancement layers were trained meanwhile."""
    out, model_out = Path(out), Path(model_out)
    settings = settings or TrainSettings(crop=DEFAULT_TILE)
    config = config or PricerConfig()
    model = load_model(model_file(source))
    meta = {"stage": "pricer", "prior": prior_digest(model), "pricer": dataclasses.asdict(config)}
    if out.exists() and {k: read_meta(out).get(k) for k in ("prior", "pricer")} != {
        k: meta[k] for k in ("prior", "pricer")
    }:
        raise ModelError(f"{out} distils a pricer of another bottom prior or size; resume it with its own")
    if model.config.pricer != config:
        model = with_pricer(model, config)
    teacher = model.bottom_prior.requires_grad_(False)
    run = Run(out, {"pricer": model.pricer.train()}, settings, meta)
    run.resume()
    train_files, val_files = data.split(folder)
    vqvae = model.vqvae
    # Training needs the nearest codes alone (one candidate each); validation all of RDO's.
    sampler = MapCropSampler(candidate_maps(vqvae, data.load_rgb(train_files), 1), settings.crop, run.generator)
    val_crops = list(map_tiles(candidate_maps(vqvae, data.load_rgb(val_files), CANDIDATES), settings.crop))

    def train_step() -> dict[str, float]:
        top, candidates = sampler.sample(settings.batch)
        loss = divergence(model.pricer, teacher, top, candidates).all_codes
        loss.backward()
        return {"loss": loss.item()}

    run.loop(train_step, lambda: validate(model.pricer, teacher, val_crops))
    save_enhanced(model.eval(), model_out)
    return model_out


def prior_digest(model: CodecModel) -> str:
    """A digest of what a pricer is distilled from: the VQ-VAE's analysis and codebooks (the code
    maps) and the bottom prior, configs and weights."""

    def distilled_from(name: str) -> bool:
        part = name.split(".")
        return part[0] == "bottom_prior" or (part[0] == "vqvae" and part[1] not in VQVAE2.SYNTHESIS)

    configs = json.dumps([asdict(model.config.vqvae), asdict(model.config.bottom_prior)])
    return weights_digest(configs, model, distilled_from).hex()[:32]


def with_pricer(model: CodecModel, config: PricerConfig) -> CodecModel:
    """``model`` with a new pricer of ``config``'s sizes (the rest as it is)."""
    grown = CodecModel(dataclasses.replace(model.config, pricer=config))
    kept = {name: t for name, t in model.state_dict().items() if not name.startswith("pricer.")}
    grown.load_state_dict(kept, strict=False)
    return grown.eval()


class Divergences(NamedTuple):
    """Means over a map's positions, in bits: the divergence from the prior's distribution to the
    pricer's over each position's candidates (renormalised) and over all codes, and the prior's
    and the pricer's bits for the nearest codes."""

    candidates: torch.Tensor
    all_codes: torch.Tensor
    prior_bits: torch.Tensor
    pricer_bits: torch.Tensor


def divergence(pricer: Pricer, prior: PixelSNAIL, top: torch.Tensor, candidates: torch.Tensor) -> Divergences:
    """``Divergences`` over the positions of the nearest bottom map of ``candidates`` (B, H, W, k;
    nearest first)."""
    bottom = candidates[..., 0]
    with torch.no_grad():
        p_logits = prior(bottom, top)
    q_logits = pricer(bottom, top)
    choice = candidates.permute(0, 3, 1, 2)
    p, q = F.log_softmax(p_logits, 1), F.log_softmax(q_logits, 1)
    p_k, q_k = F.log_softmax(p_logits.gather(1, choice), 1), F.log_softmax(q_logits.gather(1, choice), 1)
    nats = torch.stack([(p_k.exp() * (p_k - q_k)).sum(1).mean(), (p.exp() * (p - q)).sum(1).mean()])
    codes = bottom.unsqueeze(1)
    bits = -torch.stack([p.gather(1, codes).mean(), q.gather(1, codes).mean()])
    return Divergences(*(torch.cat([nats, bits]) / math.log(2)).unbind())


@torch.no_grad()
def validate(pricer: Pricer, prior: PixelSNAIL, crops: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
    """Divergences and bits per code (``divergence``) over ``crops`` (top, candidates), weighted
    by size."""
    pricer.eval()
    totals, n = torch.zeros(4, dtype=torch.float64), 0
    for top, candidates in crops:
        size = candidates[..., 0].numel()
        totals += torch.stack(divergence(pricer, prior, top, candidates)).double() * size
        n += size
    pricer.train()
    candidate_kl, kl, prior_bits, pricer_bits = (totals / n).tolist()
    return {"divergence": kl, "candidate_divergence": candidate_kl, "prior_bits": prior_bits,
            "pricer_bits": pricer_bits}  # fmt: skip
