"""What every training stage shares: its settings and learning-rate schedule, the loop with its
logging, checkpoints and exact resuming, warm starts from a finished model, and data-parallel
training under ``torchrun`` (each process draws its own crops, process 0 logs and saves)."""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..errors import ModelError
from ..nn.config import ARCHITECTURES, ModelConfig
from ..nn.model import CodecModel
from ..zoo.catalog import model_file
from ..zoo.weights import load_model
from .checkpoint import checkpoint_modules, load_checkpoint, load_modules, read_meta, save_checkpoint
from .metrics import psnr

#: Share of the steps at the end of a run over which the learning rate decays to zero.
DECAY_SHARE = 0.2


@dataclass(frozen=True)
class TrainSettings:
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
    #: How crops draw their images: ``"area"`` or ``"image"`` (``defaults.WEIGHINGS``).
    weigh: str = "area"
    #: Decay of an exponential moving average of the weights, which validation reports beside the
    #: weights as trained and the finished model takes (0: none). Averaging smooths the noise of
    #: the last steps that the learning rate's decay alone leaves.
    ema: float = 0.0

    def autocast(self, device: torch.device) -> torch.autocast:
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def lr_at(self, step: int) -> float:
        """Constant ``lr``, then a linear decay to zero over the last ``DECAY_SHARE`` of the steps
        (a schedule of the step alone, so resuming stays exact and longer runs share a prefix)."""
        decay_start = (1 - DECAY_SHARE) * self.steps
        if step < decay_start:
            return self.lr
        return self.lr * max(0.0, (self.steps - step) / (self.steps - decay_start))


def process_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def process_device() -> torch.device:
    """The GPU of this process (torchrun's LOCAL_RANK) when there is one, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


@dataclass
class Run:
    """What both stages share: the optimizer loop, logging, checkpointing and resuming."""

    out: Path
    modules: dict[str, nn.Module]
    settings: TrainSettings
    meta: dict

    def __post_init__(self) -> None:
        params = [p for m in self.modules.values() for p in m.parameters()]
        self.optimizer = torch.optim.Adam(params, lr=self.settings.lr)
        self.generator = torch.Generator().manual_seed(self.settings.seed + process_rank())
        self.step = 0
        self.log_path = self.out.with_suffix(".jsonl")
        self.averages = {f"ema_{n}": copy.deepcopy(m) for n, m in self.modules.items()} if self.settings.ema else {}

    def resume(self, init: str | Path | None = None) -> None:
        """Continue from ``out`` if it exists (other processes than 0 draw fresh crops); else, with
        ``init``, start from the weights of a finished model file or shipped preset (fine-tuning)."""
        if self.out.exists():
            stored = read_meta(self.out).get("vqvae")
            if "vqvae" in self.meta and stored is not None and stored != self.meta["vqvae"]:
                raise ModelError(f"{self.out} trains a VQ-VAE {stored}, not this run's {self.meta['vqvae']}")
            self.step = load_checkpoint(self.out, self.modules, self.optimizer, self.generator)["step"]
            self._restore_averages()
            if process_rank():
                self.generator.manual_seed(self.settings.seed + 1_000_003 * process_rank() + self.step)
        elif init is not None:
            self._take_weights(load_model(model_file(init)), str(init))
            self._restore_averages()

    def _take_weights(self, source: CodecModel, name: str) -> None:
        """Each module's weights from the same-named part of ``source``, which must match it in all
        but codebook sizes; layers sized by a changed codebook start fresh (a warm start)."""
        for part_name, module in self.modules.items():
            part = getattr(source, part_name)
            if _sizes_but_codebooks(part.config) != _sizes_but_codebooks(module.config):
                raise ModelError(f"{name}: its {part_name} is {part.config}, this run trains {module.config}")
            fresh = _load_matching(module, part)
            if fresh and process_rank() == 0:
                tqdm.write(f"{name}: {part_name} layers {', '.join(fresh)} start fresh (codebook sizes differ)")

    def log(self, split: str, metrics: dict[str, float]) -> None:
        if process_rank() == 0:
            with self.log_path.open("a") as f:
                f.write(json.dumps({"step": self.step, "split": split, "time": time.time(), **metrics}) + "\n")

    def _restore_averages(self) -> None:
        """The averages stored with the checkpoint ``out``, else (a run that starts averaging) the
        weights themselves."""
        if not self.averages:
            return
        stored = self.out.exists() and checkpoint_modules(self.out) >= set(self.averages)
        if stored:
            load_modules(self.out, self.averages)
        else:
            for module, average in self._with_averages():
                average.load_state_dict(module.state_dict())

    def _with_averages(self) -> Iterator[tuple[nn.Module, nn.Module]]:
        """Each trained module and its average."""
        return ((module, self.averages[f"ema_{name}"]) for name, module in self.modules.items())

    @torch.no_grad()
    def _average(self) -> None:
        """Move the averages towards the weights; the decay grows to ``ema`` over the first steps
        of a run (``(1 + t) / (10 + t)``), so early averages forget the random start."""
        decay = min(self.settings.ema, (1 + self.step) / (10 + self.step))
        for module, average in self._with_averages():
            for a, p in zip(average.parameters(), module.parameters(), strict=True):
                if p.requires_grad:
                    a.lerp_(p, 1 - decay)
            for a, b in zip(average.buffers(), module.buffers(), strict=True):
                a.copy_(b)

    @torch.no_grad()
    def _swap_averages(self) -> None:
        """Exchange the weights and their averages (twice restores them)."""
        for module, average in self._with_averages():
            for a, p in zip(average.parameters(), module.parameters(), strict=True):
                held = p.detach().clone()
                p.copy_(a)
                a.copy_(held)

    def _validate(self, validate: Callable[[], dict[str, float]]) -> dict[str, float]:
        """``validate``'s metrics for the weights, and with averaging ``ema_`` ones for the averages."""
        metrics = validate()
        if self.averages:
            self._swap_averages()
            metrics |= {f"ema_{k}": v for k, v in validate().items()}
            self._swap_averages()
        return metrics

    def save(self) -> None:
        if process_rank() == 0:
            modules = {**self.modules, **self.averages}
            save_checkpoint(self.out, modules, self.optimizer, self.generator, {**self.meta, "step": self.step})

    def loop(self, train_step: Callable[[], dict[str, float]], validate: Callable[[], dict[str, float]]) -> None:
        """Run ``train_step`` until ``settings.steps``, validating and checkpointing on schedule."""
        s = self.settings
        bar = tqdm(total=s.steps, initial=self.step, disable=process_rank() != 0, dynamic_ncols=True)
        running = None
        while self.step < s.steps:
            for group in self.optimizer.param_groups:
                group["lr"] = s.lr_at(self.step)
            metrics = train_step()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            if self.averages:
                self._average()
            running = metrics["loss"] if running is None else 0.98 * running + 0.02 * metrics["loss"]
            bar.update(1)
            bar.set_postfix(loss=f"{running:.4f}")
            if self.step % 50 == 0:
                self.log("train", {**metrics, "lr": s.lr_at(self.step - 1)})
            if self.step % s.val_every == 0 or self.step == s.steps:
                self.log("val", self._validate(validate))
            if self.step % s.checkpoint_every == 0 or self.step == s.steps:
                self.save()
        bar.close()
        if self.averages:
            self._swap_averages()  # the finished model takes the averages


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


def ddp(module: nn.Module) -> nn.Module:
    if dist.is_available() and dist.is_initialized():
        return nn.parallel.DistributedDataParallel(module)
    return module


def reconstruction_step(total: torch.Tensor, recon: torch.Tensor, x: torch.Tensor) -> dict[str, float]:
    """Backpropagate ``total``; the step's metrics (MSE on [-1, 1], PSNR on 8-bit)."""
    total.backward()
    mse = F.mse_loss(recon.detach(), x).item()
    return {"loss": total.item(), "mse": mse, "psnr": psnr(mse * 127.5**2)}


def architecture(name: str) -> ModelConfig:
    if name not in ARCHITECTURES:
        raise ModelError(f"unknown architecture {name!r}; choose from {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name]()


def init_distributed() -> bool:
    """Join the process group when started by torchrun (gloo on the CPU, NCCL on GPUs)."""
    if "RANK" not in os.environ or dist.is_initialized():
        return False
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return True
