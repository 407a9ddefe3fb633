"""Training: stage 1 learns the VQ-VAE, stage 2 the two priors on its code maps, and an optional
stage 3 fine-tunes a finished model's synthesis on its own, frozen codes.

Both stages draw random crops from a folder of images (a fixed split holds out one image in
``data.VALIDATION_EVERY`` for validation), write JSON lines of training and validation metrics,
and checkpoint model, optimizer and sampler so a run resumes exactly. Under ``torchrun`` they
train data-parallel (DDP): each process draws its own crops, process 0 logs and saves.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..codec import Codec
from ..defaults import DEFAULT_TILE
from ..errors import ModelError
from ..io.image import pad_to, to_rgb, to_tensor
from ..nn.config import ARCHITECTURES, ModelConfig, VQVAEConfig
from ..nn.grow import grown
from ..nn.model import CodecModel
from ..nn.prior import PixelSNAIL, calibrate
from ..nn.vqvae import VQVAE2, loss
from ..zoo.catalog import model_file
from ..zoo.weights import load_model, model_id, save_model
from . import data
from .checkpoint import is_checkpoint, load_checkpoint, load_modules, read_meta, save_checkpoint

#: Share of the steps at the end of a run over which the learning rate decays to zero.
DECAY_SHARE = 0.2


@dataclass(frozen=True)
class Settings:
    """How long and how a stage trains."""

    steps: int = 20000
    batch: int = 16
    crop: int = 128  # pixels for the VQ-VAE; top-map codes for the priors (bottom crops are twice that)
    lr: float = 3e-4
    seed: int = 0
    val_every: int = 500
    checkpoint_every: int = 1000
    #: Train in bfloat16 autocast (CPUs with AVX512-BF16 and GPUs): about twice as fast. Only the
    #: priors and the synthesis take it; code search stays in float32, and so does validation.
    bf16: bool = False
    #: Share of training crops recoloured or replaced by flat colours and ramps (``data.CropSampler``).
    colour: float = 0.0

    def autocast(self, device: torch.device) -> torch.autocast:
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def lr_at(self, step: int) -> float:
        """Constant ``lr``, then a linear decay to zero over the last ``DECAY_SHARE`` of the steps
        (a schedule of the step alone, so resuming stays exact and longer runs share a prefix)."""
        decay_start = (1 - DECAY_SHARE) * self.steps
        if step < decay_start:
            return self.lr
        return self.lr * max(0.0, (self.steps - step) / (self.steps - decay_start))


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _device() -> torch.device:
    """The GPU of this process (torchrun's LOCAL_RANK) when there is one, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


@dataclass
class _Run:
    """What both stages share: the optimizer loop, logging, checkpointing and resuming."""

    out: Path
    modules: dict[str, nn.Module]
    settings: Settings
    meta: dict

    def __post_init__(self) -> None:
        params = [p for m in self.modules.values() for p in m.parameters()]
        self.optimizer = torch.optim.Adam(params, lr=self.settings.lr)
        self.generator = torch.Generator().manual_seed(self.settings.seed + _rank())
        self.step = 0
        self.log_path = self.out.with_suffix(".jsonl")

    def resume(self, init: str | Path | None = None) -> None:
        """Continue from ``out`` if it exists (other processes than 0 draw fresh crops); else, with
        ``init``, start from the weights of a finished model file or shipped preset (fine-tuning)."""
        if self.out.exists():
            stored = read_meta(self.out).get("vqvae")
            if "vqvae" in self.meta and stored is not None and stored != self.meta["vqvae"]:
                raise ModelError(f"{self.out} trains a VQ-VAE {stored}, not this run's {self.meta['vqvae']}")
            self.step = load_checkpoint(self.out, self.modules, self.optimizer, self.generator)["step"]
            if _rank():
                self.generator.manual_seed(self.settings.seed + 1_000_003 * _rank() + self.step)
        elif init is not None:
            self._take_weights(load_model(model_file(init)), str(init))

    def _take_weights(self, source: CodecModel, name: str) -> None:
        """Each module's weights from the same-named part of ``source``, which must match it in all
        but codebook sizes; layers sized by a changed codebook start fresh (a warm start)."""
        for part_name, module in self.modules.items():
            part = getattr(source, part_name)
            if _sizes_but_codebooks(part.config) != _sizes_but_codebooks(module.config):
                raise ModelError(f"{name}: its {part_name} is {part.config}, this run trains {module.config}")
            fresh = _load_matching(module, part)
            if fresh and _rank() == 0:
                tqdm.write(f"{name}: {part_name} layers {', '.join(fresh)} start fresh (codebook sizes differ)")

    def log(self, split: str, metrics: dict[str, float]) -> None:
        if _rank() == 0:
            with self.log_path.open("a") as f:
                f.write(json.dumps({"step": self.step, "split": split, "time": time.time(), **metrics}) + "\n")

    def save(self) -> None:
        if _rank() == 0:
            save_checkpoint(self.out, self.modules, self.optimizer, self.generator, {**self.meta, "step": self.step})

    def loop(self, train_step: Callable[[], dict[str, float]], validate: Callable[[], dict[str, float]]) -> None:
        """Run ``train_step`` until ``settings.steps``, validating and checkpointing on schedule."""
        s = self.settings
        bar = tqdm(total=s.steps, initial=self.step, disable=_rank() != 0, dynamic_ncols=True)
        running = None
        while self.step < s.steps:
            for group in self.optimizer.param_groups:
                group["lr"] = s.lr_at(self.step)
            metrics = train_step()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            running = metrics["loss"] if running is None else 0.98 * running + 0.02 * metrics["loss"]
            bar.update(1)
            bar.set_postfix(loss=f"{running:.4f}")
            if self.step % 50 == 0:
                self.log("train", {**metrics, "lr": s.lr_at(self.step - 1)})
            if self.step % s.val_every == 0 or self.step == s.steps:
                self.log("val", validate())
            if self.step % s.checkpoint_every == 0 or self.step == s.steps:
                self.save()
        bar.close()


#: Config fields that ``--init`` may change: the layers they size start fresh.
_CODEBOOK_FIELDS = frozenset({"top_codes", "bottom_codes", "codes", "cond_codes"})


def _sizes_but_codebooks(config: object) -> dict:
    """The config's sizes but its codebooks' and how its convolutions treat edges (weights that
    work with zeros beyond the edges are where a run learning replicated edges starts)."""
    return {k: v for k, v in asdict(config).items() if k not in _CODEBOOK_FIELDS and k != "replicate_edges"}


@torch.no_grad()
def _load_matching(module: nn.Module, source: nn.Module) -> list[str]:
    """Copy from ``source`` every layer whose own tensors all have the shapes of ``module``'s;
    return the names of the layers left as they were. A layer moves as a whole, so a resized
    codebook keeps its own usage statistics and is initialised from data again."""
    theirs = dict(source.named_modules())
    fresh = []
    for layer_name, layer in module.named_modules():
        own, other = _own_tensors(layer), _own_tensors(theirs[layer_name])
        if all(other[k].shape == t.shape for k, t in own.items()):
            for k, t in own.items():
                t.copy_(other[k])
        else:
            fresh.append(layer_name)
    return fresh


def _own_tensors(layer: nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(layer.named_parameters(recurse=False)), **dict(layer.named_buffers(recurse=False))}


def _ddp(module: nn.Module) -> nn.Module:
    if dist.is_available() and dist.is_initialized():
        return nn.parallel.DistributedDataParallel(module)
    return module


def _psnr(mse_255: float) -> float:
    return 10 * math.log10(255**2 / mse_255) if mse_255 > 0 else math.inf


def codebook_use(codes: list[np.ndarray], size: int) -> dict[str, float]:
    """Perplexity of the code histogram and the share of codes used at least once."""
    counts = np.bincount(np.concatenate([c.reshape(-1) for c in codes]), minlength=size)
    p = counts[counts > 0] / counts.sum()
    return {"perplexity": float(np.exp(-(p * np.log(p)).sum())), "used": float((counts > 0).mean())}


# -- stage 1: the VQ-VAE -----------------------------------------------------------------------


def train_vqvae(
    folder: str | Path,
    out: str | Path,
    arch: str = "medium",
    settings: Settings = Settings(),
    init: str | Path | None = None,
    replicate_edges: bool = False,
) -> Path:
    """Train (or resume) a VQ-VAE on the images of ``folder``; the checkpoint goes to ``out``.
    ``init`` (a model file or preset of the same architecture, codebook sizes aside) fine-tunes its
    VQ-VAE instead. ``replicate_edges``: see ``VQVAEConfig.replicate_edges``."""
    out = Path(out)
    config = _architecture(arch)
    if replicate_edges:
        config = replace(config, vqvae=replace(config.vqvae, replicate_edges=1))
    device = _device()
    model = VQVAE2(config.vqvae).to(device)
    run = _Run(out, {"vqvae": model}, settings, {"stage": "vqvae", "arch": arch, "vqvae": asdict(config.vqvae)})
    run.resume(init)
    train_files, val_files = data.split(folder)
    sampler = data.CropSampler(data.load_rgb(train_files), settings.crop, run.generator, settings.colour)
    val_images = data.load_rgb(val_files)
    net = _ddp(model)

    def train_step() -> dict[str, float]:
        model.train()
        x = sampler.sample(settings.batch).to(device)
        result = net(x)
        return _reconstruction_step(loss(result, x), result.recon, x)

    run.loop(train_step, lambda: validate_vqvae(model, val_images))
    return out


def _reconstruction_step(total: torch.Tensor, recon: torch.Tensor, x: torch.Tensor) -> dict[str, float]:
    """Backpropagate ``total``; the step's metrics (MSE on [-1, 1], PSNR on 8-bit)."""
    total.backward()
    mse = F.mse_loss(recon.detach(), x).item()
    return {"loss": total.item(), "mse": mse, "psnr": _psnr(mse * 127.5**2)}


@torch.no_grad()
def validate_vqvae(model: VQVAE2, images: list[np.ndarray]) -> dict[str, float]:
    """PSNR of the 8-bit reconstructions (MSE pooled over all pixels) and codebook use of both
    maps, over whole validation images padded as the codec pads them (crops would see too few
    codes to tell how many are in use)."""
    model.eval()
    device = next(model.parameters()).device
    maps = code_maps(model, images)
    squared_error = 0.0
    for img, codes in zip(images, maps, strict=True):
        top, bottom = (torch.from_numpy(m).unsqueeze(0).to(device) for m in codes)
        recon = to_rgb(model.decode(top, bottom))[: img.shape[0], : img.shape[1]]
        squared_error += float(((recon.astype(np.float64) - img) ** 2).sum())
    mse = squared_error / sum(img.size for img in images)
    tops, bottoms = zip(*maps, strict=True)
    use_t = codebook_use(list(tops), model.config.top_codes)
    use_b = codebook_use(list(bottoms), model.config.bottom_codes)
    return {
        "mse": mse,
        "psnr": _psnr(mse),
        **{f"top_{k}": v for k, v in use_t.items()},
        **{f"bottom_{k}": v for k, v in use_b.items()},
        **flat_colour_errors(model),
    }


#: Side of the flat images ``flat_colour_errors`` codes, and the margin left out of the measure
#: (the edge of an image is not what a flat area inside a photo sees).
FLAT_SIDE, FLAT_MARGIN = 64, 8


@torch.no_grad()
def flat_colour_errors(model: VQVAE2) -> dict[str, float]:
    """How flat images of the 125 grid colours come back through the VQ-VAE (codes, no priors):
    the worst error of a mean channel, the worst pixel, and how many colours are within
    ``data.FLAT_MEAN_TOLERANCE`` and ``data.FLAT_PIXEL_TOLERANCE``."""
    device = next(model.parameters()).device
    colours = torch.from_numpy(data.colour_grid()).float().to(device)
    x = (colours / 127.5 - 1.0)[:, :, None, None].expand(-1, -1, FLAT_SIDE, FLAT_SIDE).contiguous()
    top, bottom = model.encode(x)
    y = ((model.decode(top, bottom) + 1.0) * 127.5).round().clamp(0, 255)
    inner = slice(FLAT_MARGIN, FLAT_SIDE - FLAT_MARGIN)
    error = y[:, :, inner, inner] - colours[:, :, None, None]
    mean_error = error.mean((2, 3)).abs().amax(1)
    pixel_error = error.abs().amax((1, 2, 3))
    return {
        "flat_worst_mean": float(mean_error.max()),
        "flat_worst_pixel": float(pixel_error.max()),
        "flat_within": float(
            ((mean_error <= data.FLAT_MEAN_TOLERANCE) & (pixel_error <= data.FLAT_PIXEL_TOLERANCE)).sum()
        ),
    }


# -- stage 3: the synthesis on frozen codes --------------------------------------------------------


def train_decoder(
    source: str | Path,
    folder: str | Path,
    out: str | Path,
    model_out: str | Path,
    settings: Settings = Settings(),
    grow: dict[str, int] | None = None,
) -> Path:
    """Fine-tune the synthesis of a finished model (file or preset) on its own codes; write the
    tuned model to ``model_out`` (the checkpoint for resuming goes to ``out``). ``grow`` (VQ-VAE
    config fields ``synth_*``) first grows the synthesis to those sizes, computing what it did
    (``grow.grown``), so the larger one starts where the trained one is.

    The analysis, the codebooks and the priors stay exactly as they are, so every code map and
    every file size does too: only the reconstruction improves. That makes a long run cheap (no
    prior to retrain) and safe (the rates the priors were trained for still hold).
    """
    out, model_out = Path(out), Path(model_out)
    model = load_model(model_file(source))
    source_id = model_id(model).hex()
    grow = grow or {}
    if out.exists() and (read_meta(out).get("source"), read_meta(out).get("grow", {})) != (source_id, grow):
        raise ModelError(f"{out} fine-tunes another model than {source}; resume it with its own source and sizes")
    if grow:
        model = grown(model, grow)
    device = _device()
    vqvae = model.vqvae.to(device).eval()  # eval: the codebooks take no EMA updates
    vqvae.requires_grad_(False)
    for name in VQVAE2.SYNTHESIS:
        getattr(vqvae, name).requires_grad_(True)
    run = _Run(out, {"vqvae": vqvae}, settings, {"stage": "decoder", "source": source_id, "grow": grow})
    run.resume()
    train_files, val_files = data.split(folder)
    sampler = data.CropSampler(data.load_rgb(train_files), settings.crop, run.generator, settings.colour)
    val_images = data.load_rgb(val_files)
    net = _ddp(_Synthesis(vqvae))

    def train_step() -> dict[str, float]:
        x = sampler.sample(settings.batch).to(device)
        top, bottom = vqvae.encode(x)
        with settings.autocast(device):
            recon = net(top, bottom).float()
        return _reconstruction_step(F.mse_loss(recon, x), recon, x)

    run.loop(train_step, lambda: validate_vqvae(vqvae, val_images))
    if _rank() == 0:
        save_model(model, model_out, half=True)
    return model_out


class _Synthesis(nn.Module):
    """A VQ-VAE's differentiable synthesis from code maps (what stage 3 trains)."""

    def __init__(self, vqvae: VQVAE2):
        super().__init__()
        self.vqvae = vqvae

    def forward(self, top: torch.Tensor, bottom: torch.Tensor) -> torch.Tensor:
        return self.vqvae.synthesise_maps(top, bottom)


def combine(priors_source: str | Path, synthesis_source: str | Path, model_out: str | Path) -> Path:
    """Write to ``model_out`` the model ``priors_source`` with the synthesis of
    ``synthesis_source``: how a stage-2 and a stage-3 run made side by side on one model join
    (stage 2 keeps the VQ-VAE as it is, stage 3 the codes). Refused unless both models code
    images to the same maps, the maps the priors were trained on."""
    model, synthesis = (load_model(model_file(source)) for source in (priors_source, synthesis_source))
    theirs = synthesis.vqvae.state_dict()
    analysis = {name: t for name, t in model.vqvae.state_dict().items() if name.split(".")[0] not in VQVAE2.SYNTHESIS}
    if model.config.vqvae != synthesis.config.vqvae or any(
        not torch.equal(t, theirs[name]) for name, t in analysis.items()
    ):
        raise ModelError(f"{synthesis_source} codes images differently from {priors_source}: nothing to combine")
    for name in VQVAE2.SYNTHESIS:
        getattr(model.vqvae, name).load_state_dict(getattr(synthesis.vqvae, name).state_dict())
    save_model(model, model_out, half=True)
    return Path(model_out)


# -- stage 2: the priors -----------------------------------------------------------------------


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
        priors = _architecture(arch or meta["arch"])
    else:
        finished = load_model(model_file(source))
        model = finished.vqvae
        priors = _architecture(arch) if arch else finished.config
    vq = model.config
    config = ModelConfig(
        vqvae=vq,
        top_prior=replace(priors.top_prior, codes=vq.top_codes),
        bottom_prior=replace(priors.bottom_prior, codes=vq.bottom_codes, cond_codes=vq.top_codes),
    )
    config.validate()
    return model.eval(), config


@torch.no_grad()
def code_maps(model: VQVAE2, images: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(top, bottom) code maps of whole images, edge-padded as the codec pads them."""
    s, device = model.config.top_stride, next(model.parameters()).device
    maps = []
    for img in images:
        top, bottom = model.encode(to_tensor(pad_to(img, s)).to(device))
        maps.append((top[0].cpu().numpy(), bottom[0].cpu().numpy()))
    return maps


class MapCropSampler:
    """Aligned random crops of (top, bottom) maps: size x size top codes, 2size x 2size bottom codes."""

    def __init__(self, maps: list[tuple[np.ndarray, np.ndarray]], size: int, generator: torch.Generator):
        self.maps = [(t, b) for t, b in maps if min(t.shape) >= size]
        if not self.maps:
            raise ModelError(f"no code map is {size} codes on a side; use a smaller --crop")
        self.size, self.generator = size, generator

    def _randint(self, high: int) -> int:
        return int(torch.randint(high, (1,), generator=self.generator))

    def sample(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        tops, bottoms = [], []
        for _ in range(batch):
            top, bottom = self.maps[self._randint(len(self.maps))]
            r, c = self._randint(top.shape[0] - self.size + 1), self._randint(top.shape[1] - self.size + 1)
            tops.append(top[r : r + self.size, c : c + self.size])
            bottoms.append(bottom[2 * r : 2 * (r + self.size), 2 * c : 2 * (c + self.size)])
        return torch.from_numpy(np.stack(tops)), torch.from_numpy(np.stack(bottoms))


def _crops(maps: list[tuple[np.ndarray, np.ndarray]], size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Every whole size x size tile of each map (matching how the codec tiles maps)."""
    for top, bottom in maps:
        for r in range(0, top.shape[0] - size + 1, size):
            for c in range(0, top.shape[1] - size + 1, size):
                yield (
                    torch.from_numpy(top[None, r : r + size, c : c + size]),
                    torch.from_numpy(bottom[None, 2 * r : 2 * (r + size), 2 * c : 2 * (c + size)]),
                )


def rdo_codec(source: str | Path, rdo: float) -> Codec:
    """The encoder of the finished model ``source`` at RDO strength ``rdo``, whose maps
    ``rdo_maps`` gives: the bottom codes its priors price, not the nearest ones."""
    if is_checkpoint(Path(source)):
        raise ModelError("RDO code maps need a finished model (its priors price the codes), not a checkpoint")
    return Codec(load_model(model_file(source)), device=_device(), rdo=rdo)


@torch.no_grad()
def rdo_maps(codec: Codec, images: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(top, bottom) code maps ``codec`` writes for whole images."""
    coded = (codec.encode(img).codes for img in tqdm(images, desc="RDO code maps", disable=_rank() != 0))
    return [(c.top, c.bottom) for c in coded]


def train_prior(
    vqvae_source: str | Path,
    folder: str | Path,
    out: str | Path,
    model_out: str | Path,
    settings: Settings = Settings(crop=DEFAULT_TILE),
    arch: str | None = None,
    init: str | Path | None = None,
    rdo: float = 0.0,
) -> Path:
    """Train (or resume) both priors on the code maps of ``folder``; write the finished, calibrated
    codec model to ``model_out`` (the checkpoint for resuming goes to ``out``). ``init`` (a model
    file or preset with the same priors) fine-tunes its priors, e.g. after fine-tuning its VQ-VAE.
    With ``rdo`` the maps are those the finished model ``vqvae_source`` encodes at that strength
    (``rdo_codec``), so the priors learn the codes files hold; otherwise the nearest codes."""
    out, model_out = Path(out), Path(model_out)
    vqvae, config = load_vqvae(vqvae_source, arch)
    device = _device()
    top_prior, bottom_prior = PixelSNAIL(config.top_prior).to(device), PixelSNAIL(config.bottom_prior).to(device)
    run = _Run(out, {"top_prior": top_prior, "bottom_prior": bottom_prior}, settings, {"stage": "prior"})
    run.resume(init)
    train_files, val_files = data.split(folder)
    codec = rdo_codec(vqvae_source, rdo) if rdo else None

    def maps(files: list[Path]) -> list[tuple[np.ndarray, np.ndarray]]:
        images = data.load_rgb(files)
        return rdo_maps(codec, images) if codec else code_maps(vqvae, images)

    train_maps, val_maps = maps(train_files), maps(val_files)
    sampler = MapCropSampler(train_maps, settings.crop, run.generator)
    val_crops = [(t.to(device), b.to(device)) for t, b in _crops(val_maps, settings.crop)]
    top_net, bottom_net = _ddp(top_prior), _ddp(bottom_prior)

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
    if _rank() == 0:
        calibrate(top_prior, [(t, None) for t, _ in val_crops])
        calibrate(bottom_prior, [(b, t) for t, b in val_crops])
        model = CodecModel(config).to(device)
        model.vqvae.load_state_dict(vqvae.state_dict())
        model.top_prior.load_state_dict(top_prior.state_dict())
        model.bottom_prior.load_state_dict(bottom_prior.state_dict())
        save_model(model, model_out, half=True)
    return model_out


@torch.no_grad()
def validate_priors(
    top_prior: PixelSNAIL, bottom_prior: PixelSNAIL, crops: list[tuple[torch.Tensor, torch.Tensor]]
) -> dict[str, float]:
    """Bits per code of each map under the float priors, over the validation tiles."""
    top_prior.eval()
    bottom_prior.eval()
    nats_t = sum(F.cross_entropy(top_prior(t), t, reduction="sum").item() for t, _ in crops)
    nats_b = sum(F.cross_entropy(bottom_prior(b, t), b, reduction="sum").item() for t, b in crops)
    n_t, n_b = sum(t.numel() for t, _ in crops), sum(b.numel() for _, b in crops)
    return {"top_bits": nats_t / n_t / math.log(2), "bottom_bits": nats_b / n_b / math.log(2)}


def _architecture(name: str) -> ModelConfig:
    if name not in ARCHITECTURES:
        raise ModelError(f"unknown architecture {name!r}; choose from {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name]()


def init_distributed() -> bool:
    """Join the process group when started by torchrun (gloo on the CPU, NCCL on GPUs)."""
    if "RANK" not in os.environ or dist.is_initialized():
        return False
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return True
