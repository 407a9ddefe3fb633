"""Stage 2: the two priors, on the code maps of a trained VQ-VAE (the nearest codes, or those the
encoder writes with RDO)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..codec import Codec
from ..defaults import DEFAULT_TILE
from ..errors import ModelError
from ..nn.config import ModelConfig, VQVAEConfig
from ..nn.model import CodecModel
from ..nn.prior import PixelSNAIL, calibrate
from ..nn.vqvae import VQVAE2
from ..zoo.catalog import model_file
from ..zoo.weights import load_model, save_model
from . import data
from .checkpoint import is_checkpoint, load_modules, read_meta
from .data import MapCropSampler, map_tiles
from .metrics import code_maps, validate_priors
from .run import Run, TrainSettings, architecture, ddp, process_device, process_rank


def load_vqvae(source: str | Path, arch: str | None = None) -> tuple[VQVAE2, ModelConfig]:
    """The VQ-VAE (eval mode) of ``source`` and the whole model's config: that VQ-VAE with the
    priors of architecture ``arch``.

    ``source`` is a stage-1 checkpoint (``arch`` defaults to the one it was trained as) or a
    finished model, file or preset (``arch`` defaults to its own priors): retraining the priors of
    a finished model keeps its VQ-VAE, fine-tuned synthesis included, and so its code maps.
    """
    path = Path(source)
    if is_checkpoint(path):
        meta = read_meta(path)
        if meta.get("stage") != "vqvae":
            raise ModelError(f"{path} is not a VQ-VAE checkpoint (stage {meta.get('stage')!r})")
        model = VQVAE2(VQVAEConfig.from_dict(meta["vqvae"]))
        load_modules(path, {"vqvae": model})
        priors = architecture(arch or meta["arch"])
    else:
        finished = load_model(model_file(source))
        model = finished.vqvae
        priors = architecture(arch) if arch else finished.config
    vq = model.config
    config = ModelConfig(
        vqvae=vq,
        top_prior=replace(priors.top_prior, codes=vq.top_codes),
        bottom_prior=replace(priors.bottom_prior, codes=vq.bottom_codes, cond_codes=vq.top_codes),
    )
    config.validate()
    return model.eval(), config


def rdo_codec(source: str | Path, rdo: float) -> Codec:
    """The encoder of the finished model ``source`` at RDO strength ``rdo``, whose maps
    ``rdo_maps`` gives: the bottom codes its priors price, not the nearest ones."""
    if is_checkpoint(Path(source)):
        raise ModelError("RDO code maps need a finished model (its priors price the codes), not a checkpoint")
    return Codec(load_model(model_file(source)), device=process_device(), rdo=rdo)


@torch.no_grad()
def rdo_maps(codec: Codec, images: Iterable[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(top, bottom) code maps ``codec`` writes for whole images."""
    coded = (codec.encode(img).codes for img in tqdm(images, desc="RDO code maps", disable=process_rank() != 0))
    return [(c.top, c.bottom) for c in coded]


def train_prior(
    vqvae_source: str | Path,
    folder: str | Path,
    out: str | Path,
    model_out: str | Path,
    settings: TrainSettings | None = None,
    arch: str | None = None,
    init: str | Path | None = None,
    rdo: float = 0.0,
    augment: tuple[str, ...] = (),
) -> Path:
    """Train (or resume) both priors on the code maps of ``folder``; write the finished, calibrated
    codec model to ``model_out`` (the checkpoint for resuming goes to ``out``). ``init`` (a model
    file or preset with the same priors) fine-tunes its priors, e.g. after fine-tuning its VQ-VAE.
    With ``rdo`` the maps are those the finished model ``vqvae_source`` encodes at that strength
    (``rdo_codec``), so the priors learn the codes files hold; otherwise the nearest codes.
    ``augment`` (``defaults.AUGMENTS``) adds the maps of mirrored and shifted copies of the training
    photos (``data.variants``); validation keeps the photos as they are."""
    out, model_out = Path(out), Path(model_out)
    settings = settings or TrainSettings(crop=DEFAULT_TILE)
    vqvae, config = load_vqvae(vqvae_source, arch)
    device = process_device()
    top_prior, bottom_prior = PixelSNAIL(config.top_prior).to(device), PixelSNAIL(config.bottom_prior).to(device)
    meta = {"stage": "prior", "augment": list(augment)}
    run = Run(out, {"top_prior": top_prior, "bottom_prior": bottom_prior}, settings, meta)
    run.resume(init)
    train_files, val_files = data.split(folder)
    codec = rdo_codec(vqvae_source, rdo) if rdo else None

    def maps(files: list[Path], augment: tuple[str, ...] = ()) -> list[tuple[np.ndarray, np.ndarray]]:
        images = data.variants(data.load_rgb(files), augment)
        return rdo_maps(codec, images) if codec else code_maps(vqvae, images)

    train_maps, val_maps = maps(train_files, augment), maps(val_files)
    sampler = MapCropSampler(train_maps, settings.crop, run.generator)
    val_crops = [(t.to(device), b.to(device)) for t, b in map_tiles(val_maps, settings.crop)]
    top_net, bottom_net = ddp(top_prior), ddp(bottom_prior)

    def train_step() -> dict[str, float]:
        top_prior.train()
        bottom_prior.train()
        top, bottom = (m.to(device) for m in sampler.sample(settings.batch))
        with settings.autocast(device):
            logits_top, logits_bottom = top_net(top), bottom_net(bottom, top)
        ce_top = F.cross_entropy(logits_top.float(), top)
        ce_bottom = F.cross_entropy(logits_bottom.float(), bottom)
        (ce_top + ce_bottom).backward()
        bits = 1 / math.log(2)
        return {
            "loss": (ce_top + ce_bottom).item(),
            "top_bits": ce_top.item() * bits,
            "bottom_bits": ce_bottom.item() * bits,
        }

    run.loop(train_step, lambda: validate_priors(top_prior, bottom_prior, val_crops))
    if process_rank() == 0:
        calibrate(top_prior, [(t, None) for t, _ in val_crops])
        calibrate(bottom_prior, [(b, t) for t, b in val_crops])
        model = CodecModel(config).to(device)
        model.vqvae.load_state_dict(vqvae.state_dict())
        model.top_prior.load_state_dict(top_prior.state_dict())
        model.bottom_prior.load_state_dict(bottom_prior.state_dict())
        save_model(model, model_out, half=True)
    return model_out
