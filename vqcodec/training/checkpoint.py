"""Training checkpoints: model, optimizer and sampler state in one safetensors file, resumable exactly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from ..errors import ModelError

FORMAT = "vqcodec-checkpoint-1"


def save_checkpoint(
    path: str | Path,
    modules: dict[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    meta: dict[str, Any],
) -> None:
    """Write every module's state, the optimizer's state and the random states, atomically."""
    tensors = {
        f"{name}.{k}": v.detach().cpu().contiguous() for name, m in modules.items() for k, v in m.state_dict().items()
    }
    state = optimizer.state_dict()
    for pid, entries in state["state"].items():
        for key, value in entries.items():
            tensors[f"optim.{pid}.{key}"] = torch.as_tensor(value).cpu().contiguous()
    tensors["generator"] = generator.get_state()
    tensors["torch_rng"] = torch.get_rng_state()  # dropout and codebook restarts draw from it
    metadata = {"format": FORMAT, "meta": json.dumps(meta), "param_groups": json.dumps(state["param_groups"])}
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(path)


def read_meta(path: str | Path) -> dict[str, Any]:
    """The ``meta`` dictionary stored with a checkpoint."""
    return json.loads(_metadata(path)["meta"])


def is_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a safetensors file written by ``save_checkpoint``."""
    try:
        _metadata(path)
    except ModelError:
        return False
    return True


def _metadata(path: str | Path) -> dict[str, str]:
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise ModelError(f"cannot read checkpoint {path}: {exc}") from exc
    if metadata.get("format") != FORMAT:
        raise ModelError(f"{path} is not a vqcodec training checkpoint")
    return metadata


def checkpoint_modules(path: str | Path) -> set[str]:
    """The names of the modules whose states a checkpoint holds."""
    with safe_open(str(path), framework="pt") as f:
        return {k.split(".", 1)[0] for k in f.keys() if "." in k and not k.startswith("optim.")}  # noqa: SIM118


def load_modules(path: str | Path, modules: dict[str, torch.nn.Module]) -> None:
    """Load the named modules' states from a checkpoint."""
    tensors = load_file(str(path))
    for name, module in modules.items():
        prefix = f"{name}."
        module.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})


def load_checkpoint(
    path: str | Path,
    modules: dict[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
) -> dict[str, Any]:
    """Restore everything ``save_checkpoint`` wrote; returns its ``meta``."""
    metadata = _metadata(path)
    load_modules(path, modules)
    tensors = load_file(str(path))
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(metadata["param_groups"])})
    generator.set_state(tensors["generator"])
    torch.set_rng_state(tensors["torch_rng"])
    return json.loads(metadata["meta"])
