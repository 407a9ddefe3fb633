"""Stage 1: the VQ-VAE, from scratch or from a finished model's (``--init``)."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

from ..nn.vqvae import VQVAE2, loss
from . import data
from .metrics import validate_vqvae
from .run import Run, TrainSettings, architecture, ddp, process_device, reconstruction_step


def train_vqvae(
    folder: str | Path,
    out: str | Path,
    arch: str = "medium",
    settings: TrainSettings | None = None,
    init: str | Path | None = None,
    replicate_edges: bool = False,
) -> Path:
    """Train (or resume) a VQ-VAE on the images of ``folder``; the checkpoint goes to ``out``.
    ``init`` (a model file or preset of the same architecture, codebook sizes aside) fine-tunes its
    VQ-VAE instead. ``replicate_edges``: see ``VQVAEConfig.replicate_edges``."""
    out = Path(out)
    settings = settings or TrainSettings()
    config = architecture(arch)
    if replicate_edges:
        config = replace(config, vqvae=replace(config.vqvae, replicate_edges=1))
    device = process_device()
    model = VQVAE2(config.vqvae).to(device)
    run = Run(out, {"vqvae": model}, settings, {"stage": "vqvae", "arch": arch, "vqvae": asdict(config.vqvae)})
    run.resume(init)
    train_files, val_files = data.split(folder)
    images = data.load_rgb(train_files)
    sampler = data.CropSampler(images, settings.crop, run.generator, settings.colour, settings.weigh)
    val_images = data.load_rgb(val_files)
    net = ddp(model)

    def train_step() -> dict[str, float]:
        model.train()
        x = sampler.sample(settings.batch).to(device)
        result = net(x)
        return reconstruction_step(loss(result, x), result.recon, x)

    run.loop(train_step, lambda: validate_vqvae(model, val_images))
    return out
