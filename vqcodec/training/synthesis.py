"""Stage 3: a finished model's synthesis fine-tuned (and optionally grown) on its own frozen codes,
and joining such a run with a priors run made beside it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError
from ..nn.config import SynthesisConfig, VQVAEConfig
from ..nn.grow import grown
from ..nn.model import CodecModel
from ..nn.vqvae import VQVAE2
from ..zoo.catalog import model_file
from ..zoo.weights import load_model, model_id, save_model
from . import data
from .checkpoint import read_meta
from .metrics import validate_vqvae
from .msssim import mixed_distortion, require_crop
from .run import Run, TrainSettings, ddp, process_device, process_rank, reconstruction_step


def train_decoder(
    source: str | Path,
    folder: str | Path,
    out: str | Path,
    model_out: str | Path,
    settings: TrainSettings | None = None,
    grow: dict[str, int] | None = None,
    ms_ssim_share: float = 0.0,
) -> Path:
    """Fine-tune the synthesis of a finished model (file or preset) on its own codes; write the
    tuned model to ``model_out`` (the checkpoint for resuming goes to ``out``). ``grow`` (VQ-VAE
    config fields ``synth_*``) first grows the synthesis to those sizes, computing what it did
    (``grow.grown``), so the larger one starts where the trained one is.

    The analysis, the codebooks and the priors stay exactly as they are, so every code map and
    every file size does too: only the reconstruction improves. That makes a long run cheap (no
    prior to retrain) and safe (the rates the priors were trained for still hold).
    ``ms_ssim_share`` (0 to 1) of the squared error is measured in MS-SSIM instead
    (``msssim.mixed_distortion``), which needs crops of ``msssim.MIN_SIDE`` pixels or more.
    """
    out, model_out = Path(out), Path(model_out)
    settings = settings or TrainSettings()
    require_crop(ms_ssim_share, settings.crop)
    model = load_model(model_file(source))
    source_id = model_id(model).hex()
    grow = grow or {}
    if out.exists() and (read_meta(out).get("source"), read_meta(out).get("grow", {})) != (source_id, grow):
        raise ModelError(f"{out} fine-tunes another model than {source}; resume it with its own source and sizes")
    if grow:
        model = grown(model, grow)
    device = process_device()
    vqvae = model.vqvae.to(device).eval()  # eval: the codebooks take no EMA updates
    vqvae.requires_grad_(False)
    for name in VQVAE2.SYNTHESIS:
        getattr(vqvae, name).requires_grad_(True)
    meta = {"stage": "decoder", "source": source_id, "grow": grow, "ms_ssim": ms_ssim_share}
    run = Run(out, {"vqvae": vqvae}, settings, meta)
    run.resume()
    train_files, val_files = data.split(folder)
    images = data.load_rgb(train_files)
    sampler = data.CropSampler(images, settings.crop, run.generator, settings.colour, settings.weigh)
    val_images = data.load_rgb(val_files)
    net = ddp(_Synthesis(vqvae))

    def train_step() -> dict[str, float]:
        x = sampler.sample(settings.batch).to(device)
        top, bottom = vqvae.encode(x)
        with settings.autocast(device):
            recon = net(top, bottom).float()
        if not ms_ssim_share:
            return reconstruction_step(F.mse_loss(recon, x), recon, x)
        distortion, log = mixed_distortion(recon, x, ms_ssim_share)
        return {**reconstruction_step(distortion / (255**2 / 4), recon, x), **log}

    run.loop(train_step, lambda: validate_vqvae(vqvae, val_images))
    if process_rank() == 0:
        save_model(model, model_out, half=True)
    return model_out


class _Synthesis(nn.Module):
    """A VQ-VAE's differentiable synthesis from code maps (what stage 3 trains)."""

    def __init__(self, vqvae: VQVAE2):
        super().__init__()
        self.vqvae = vqvae

    def forward(self, top: torch.Tensor, bottom: torch.Tensor) -> torch.Tensor:
        return self.vqvae.synthesise_maps(top, bottom)


def combine(
    priors_source: str | Path, synthesis_source: str | Path, model_out: str | Path, resampled: bool = False
) -> Path:
    """Write to ``model_out`` the model ``priors_source`` with the synthesis of
    ``synthesis_source``, which may be a grown one: how a stage-2 and a stage-3 run made side by
    side on one model join (stage 2 keeps the VQ-VAE as it is, stage 3 the codes). With
    ``resampled``, the synthesis becomes the model's synthesis of resampled copies
    (``CodecModel.resampled_synthesis``) and the rest of ``priors_source`` stays as it is, its
    own synthesis and enhancement layers too. Refused unless both models code images to the same
    maps, the maps the priors were trained on, with priors of one architecture."""
    model, synthesis = (load_model(model_file(source)) for source in (priors_source, synthesis_source))
    theirs = synthesis.vqvae.state_dict()
    analysis = {name: t for name, t in model.vqvae.state_dict().items() if name.split(".")[0] not in VQVAE2.SYNTHESIS}
    if (
        _analysis_config(model.config.vqvae) != _analysis_config(synthesis.config.vqvae)
        or model.config.top_prior != synthesis.config.top_prior
        or model.config.bottom_prior != synthesis.config.bottom_prior
        or any(name not in theirs or not torch.equal(t, theirs[name]) for name, t in analysis.items())
    ):
        raise ModelError(f"{synthesis_source} codes images differently from {priors_source}: nothing to combine")
    if resampled:
        size = synthesis.config.vqvae.synthesis._asdict()
        config = dataclasses.replace(model.config, resampled_synthesis=SynthesisConfig(**size))
        joined = CodecModel(config)
        kept = {name: t for name, t in model.state_dict().items() if not name.startswith("resampled_synthesis.")}
        joined.load_state_dict(kept, strict=False)
        joined.resampled_synthesis.load_state_dict(
            {name: t for name, t in theirs.items() if name.split(".")[0] in VQVAE2.SYNTHESIS}
        )
    else:
        synthesis.top_prior.load_state_dict(model.top_prior.state_dict())
        synthesis.bottom_prior.load_state_dict(model.bottom_prior.state_dict())
        joined = synthesis
    save_model(joined, model_out, half=True)
    return Path(model_out)


def _analysis_config(config: VQVAEConfig) -> VQVAEConfig:
    """``config`` with the synthesis' own sizes cleared: what decides the codes."""
    sizes = [f.name for f in dataclasses.fields(config) if f.name.startswith("synth_")]
    return dataclasses.replace(config, **dict.fromkeys(sizes))
