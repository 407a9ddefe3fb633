"""Stage 4: an enhancement layer (``nn.enhancement``) trained over a finished model, which stays
frozen: its code maps, priors and files are untouched, and the layer adds a rate above them.

Loss: the layer's bits per pixel + ``lam`` x the distortion, with uniform noise standing in for
rounding (optionally in the rate alone, the synthesis seeing rounded coefficients). The
distortion is 255^2 x MSE (CompressAI's convention), with ``ms_ssim_share`` of it
``msssim.MSSSIM_PER_MSE`` x (1 - MS-SSIM) instead (CompressAI's MS-SSIM models take about that many
times the lambda of its MSE models of equal rate). Validation: the layer's bits per pixel from its
rounded integers, the PSNR of the enhanced and of the plain reconstruction of the validation
photos, and the mean MS-SSIM of the enhanced ones. The model written at the end has its
activation ranges calibrated on the validation photos, ready to code.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ..errors import ModelError
from ..io.image import pad_to, to_tensor
from ..nn.config import EnhancementConfig
from ..nn.enhancement import Enhancement, lapped
from ..nn.model import CodecModel
from ..nn.prior import observing
from ..nn.vqvae import VQVAE2
from ..zoo.catalog import model_file
from ..zoo.weights import load_model, model_id, save_model
from . import data
from .checkpoint import read_meta
from .metrics import psnr
from .msssim import MIN_SIDE, mixed_distortion, ms_ssim, require_crop
from .run import Run, TrainSettings


def train_enhancement(
    source: str | Path,
    folder: str | Path,
    out: str | Path,
    model_out: str | Path,
    lam: float,
    settings: TrainSettings | None = None,
    layer: int | None = None,
    ms_ssim_share: float = 0.0,
    straight_through: bool = False,
    anchor_channels: int | None = None,
    overlap: int | None = None,
    file_steps: tuple[int, ...] = (0,),
) -> Path:
    """Train an enhancement layer of rate ``lam`` over the finished model ``source`` (file or
    preset) on the photos of ``folder``; write ``source`` with it to ``model_out`` (the checkpoint
    for resuming goes to ``out``). ``layer`` (1-based) continues one of the model's layers;
    without it a new layer is added after the others, started from the last one if there is one
    (so add layers from the lowest rate up). ``ms_ssim_share`` (0 to 1) of the distortion is
    measured in MS-SSIM, which needs crops of ``msssim.MIN_SIDE`` pixels or more.
    ``straight_through`` trains the synthesis on rounded coefficients (``Enhancement.forward``).
    ``anchor_channels`` gives a one-pass model's layers a second pass of that width, which starts
    as no change (``nn.enhancement.AnchorContext``); ``overlap`` makes their block transforms
    lapped ones (``with_overlap``). Each batch is coded at one of ``file_steps``
    (the steps files use the layer at, ``nn.enhancement.step_factor``), its distortion weighted by
    2^(-step/4): a step's quantisation error grows as its step squared."""
    out, model_out = Path(out), Path(model_out)
    settings = settings or TrainSettings()
    require_crop(ms_ssim_share, settings.crop)
    model = load_model(model_file(source))
    source_id = model_id(model).hex()
    if out.exists() and (read_meta(out).get("source"), read_meta(out).get("layer")) != (source_id, layer):
        raise ModelError(f"{out} trains a layer of another model than {source}; resume it with its own source")
    model, index = with_layer(model, layer)
    model = with_overlap(with_second_pass(model, anchor_channels), overlap)
    net = model.enhancements[index]
    vqvae = model.vqvae.eval().requires_grad_(False)
    meta = {
        "stage": "enhancement",
        "source": source_id,
        "layer": layer,
        "lam": lam,
        "ms_ssim": ms_ssim_share,
        "straight_through": straight_through,
        "anchor_channels": anchor_channels,
        "overlap": overlap,
        "file_steps": list(file_steps),
    }
    run = Run(out, {"enhancement": net}, settings, meta)
    run.resume()
    train_files, val_files = data.split(folder)
    sampler = data.CropSampler(data.load_rgb(train_files), settings.crop, run.generator)
    val_images = data.load_rgb(val_files)

    def train_step() -> dict[str, float]:
        x = sampler.sample(settings.batch)
        step = file_steps[0]
        if file_steps[1:]:  # with one step nothing is drawn: the crops are those of runs before --file-steps
            step = file_steps[int(torch.randint(len(file_steps), (1,), generator=run.generator))]
        out, bits = net(x, *base_pass(vqvae, x), noisy=True, straight_through=straight_through, step=step)
        bpp = bits / (x.shape[0] * x.shape[2] * x.shape[3])
        distortion, log = mixed_distortion(out, x, ms_ssim_share)
        loss = bpp + lam * 2 ** (-step / 4) * distortion
        loss.backward()
        return {"loss": loss.item(), "bpp": bpp.item(), **log}

    run.loop(train_step, lambda: validate_steps(net, vqvae, val_images, file_steps))
    calibrate(net, vqvae, val_images)
    save_enhanced(model, model_out)
    return model_out


def save_enhanced(model: CodecModel, path: str | Path) -> None:
    """Write ``model`` in half precision where its frozen part is stored so (the shipped models),
    so that it stays exactly itself, else in full."""
    frozen = [t for name, t in model.state_dict().items() if not name.startswith("enhancements.")]
    save_model(
        path=path, model=model, half=all(torch.equal(t, t.half().to(t.dtype)) for t in frozen if t.is_floating_point())
    )


def with_second_pass(model: CodecModel, channels: int | None) -> CodecModel:
    """``model`` whose layers (if it has any) have second passes of ``channels`` (new ones change
    nothing; None: as it is). A model's layers have one width of second pass or none."""
    config = model.config.enhancement
    if config is None or channels is None or config.anchor_channels == channels:
        return model
    if config.anchor_channels is not None:
        raise ModelError(f"the model's layers have second passes of {config.anchor_channels} channels, not {channels}")
    return regrown(model, anchor_channels=channels)


def with_overlap(model: CodecModel, overlap: int | None) -> CodecModel:
    """``model`` whose layers (if it has any) have lapped transforms reaching ``overlap`` pixels
    into their neighbours, grown from their block transforms (``nn.enhancement.lapped``: the same
    transforms at first; None: as it is). A model's layers have one overlap or none."""
    config = model.config.enhancement
    if config is None or overlap is None or config.overlap == overlap:
        return model
    if config.overlap is not None:
        raise ModelError(f"the model's layers overlap by {config.overlap} pixels, not {overlap}")
    grown = regrown(model, overlap=overlap)
    with torch.no_grad():
        for old, new in zip(model.enhancements, grown.enhancements, strict=True):
            new.analysis.weight.copy_(lapped(old.analysis.weight, overlap))
            new.synthesis.weight.copy_(lapped(old.synthesis.weight, overlap))
    return grown


def regrown(model: CodecModel, **changes: int) -> CodecModel:
    """``model`` with its enhancement config changed, every weight of the same shape kept (the
    others as a new layer starts them)."""
    grown = CodecModel(
        dataclasses.replace(model.config, enhancement=dataclasses.replace(model.config.enhancement, **changes))
    )
    own = grown.state_dict()
    grown.load_state_dict({k: t for k, t in model.state_dict().items() if own[k].shape == t.shape}, strict=False)
    return grown.eval()


def with_layer(model: CodecModel, layer: int | None) -> tuple[CodecModel, int]:
    """``model`` with the layer to train (a new one, unless ``layer`` names one), and its index."""
    layers = len(model.enhancements)
    if layer is not None:
        if not 1 <= layer <= layers:
            raise ModelError(f"the model has {layers} enhancement layers: there is no layer {layer}")
        return model, layer - 1
    config = model.config.enhancement or EnhancementConfig(layers=0)
    grown = CodecModel(dataclasses.replace(model.config, enhancement=dataclasses.replace(config, layers=layers + 1)))
    grown.load_state_dict(model.state_dict(), strict=False)
    new = grown.enhancements[layers]
    if layers:
        new.load_state_dict(model.enhancements[layers - 1].state_dict())
    else:  # the context's embeddings start as the model's codebooks
        with torch.no_grad():
            new.context.top.weight.copy_(model.vqvae.quantize_t.embed)
            new.context.bottom.weight.copy_(model.vqvae.quantize_b.embed)
    return grown.eval(), layers


@torch.no_grad()
def base_pass(vqvae: VQVAE2, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The frozen model's reconstruction of ``x`` from its nearest codes, and those code maps."""
    top, bottom = vqvae.encode(x)
    return vqvae.decode(top, bottom), top, bottom


@torch.no_grad()
def each_image(vqvae: VQVAE2, images: list[np.ndarray]) -> Iterator[tuple[np.ndarray, torch.Tensor, tuple]]:
    """(image, padded tensor, base pass) of each image."""
    for rgb in images:
        x = to_tensor(pad_to(rgb, vqvae.config.top_stride))
        yield rgb, x, base_pass(vqvae, x)


def validate_steps(
    net: Enhancement, vqvae: VQVAE2, images: list[np.ndarray], steps: tuple[int, ...]
) -> dict[str, float]:
    """``validate`` at step 0, and at each other of ``steps`` under keys ending in @STEP."""
    log = validate(net, vqvae, images)
    for step in steps:
        if step:
            log |= {f"{k}@{step}": v for k, v in validate(net, vqvae, images, step).items() if k != "base_psnr"}
    return log


@torch.no_grad()
def validate(net: Enhancement, vqvae: VQVAE2, images: list[np.ndarray], step: int = 0) -> dict[str, float]:
    """The layer's bits per pixel (rounded integers) at a file's ``step``, the aggregate PSNR of
    the enhanced and of the plain reconstructions, and the mean MS-SSIM of the enhanced ones (of
    the images large enough for it)."""
    net.eval()
    bits = pixels = 0.0
    errors = {"enhanced": 0.0, "base": 0.0}
    similarities = []
    for rgb, x, (recon, top, bottom) in each_image(vqvae, images):
        out, b = net(x, recon, top, bottom, noisy=False, step=step)
        h, w = rgb.shape[:2]
        ref = torch.from_numpy(rgb.copy()).permute(2, 0, 1).double()
        for name, t in (("enhanced", out), ("base", recon)):
            levels = ((t[0, :, :h, :w].double().clamp(-1, 1) + 1) * 127.5).round()
            errors[name] += float(((levels - ref) ** 2).sum())
            if name == "enhanced" and min(h, w) >= MIN_SIDE:
                similarities.append(float(ms_ssim(levels[None], ref[None], peak=255.0)))
        bits += float(b)
        pixels += h * w
    net.train()
    return {
        "enhancement_bpp": bits / pixels,
        "psnr": psnr(errors["enhanced"] / (3 * pixels)),
        "base_psnr": psnr(errors["base"] / (3 * pixels)),
        **({"ms_ssim": float(np.mean(similarities))} if similarities else {}),
    }


@torch.no_grad()
def calibrate(net: Enhancement, vqvae: VQVAE2, images: list[np.ndarray]) -> None:
    """Set the contexts' activation ranges (where their integer versions round) from ``images``."""
    net.eval()
    with observing(net):
        for _, x, (recon, top, bottom) in each_image(vqvae, images):
            net.context_of(net.coefficients(x, recon), top, bottom)
