"""Model files: safetensors weights with the config in the file's metadata, and the model identifier.

Only safetensors is ever read, so loading a model file never runs code from it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from .config import ModelConfig
from .container import MODEL_ID_SIZE
from .errors import ModelError
from .model import CodecModel

FORMAT = "vqcodec-model-1"


def model_id(model: CodecModel) -> bytes:
    """A 16-byte identifier: SHA-256 of the canonical config and every tensor (name, dtype, shape, bytes)."""
    digest = hashlib.sha256(model.config.to_json().encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.digest()[:MODEL_ID_SIZE]


def save_model(model: CodecModel, path: str | Path, half: bool = False) -> None:
    """Write ``model`` to a safetensors file (``half`` stores float tensors as fp16)."""
    tensors = {}
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        tensors[name] = t.half() if half and t.is_floating_point() else t
    save_file(tensors, str(path), metadata={"format": FORMAT, "config": model.config.to_json()})


def load_model(path: str | Path) -> CodecModel:
    """Build a ``CodecModel`` (float32, eval mode, CPU) from a file written by ``save_model``."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"{path} is not a valid safetensors model file: {exc}") from exc
    if meta.get("format") != FORMAT or "config" not in meta:
        raise ModelError(f"{path} is not a vqcodec model (metadata format {meta.get('format')!r})")
    model = CodecModel(ModelConfig.from_json(meta["config"]))
    expected = model.state_dict()
    if set(tensors) != set(expected):
        missing, extra = set(expected) - set(tensors), set(tensors) - set(expected)
        raise ModelError(f"{path} does not match its config (missing {sorted(missing)[:3]}, extra {sorted(extra)[:3]})")
    for name, t in tensors.items():
        if t.shape != expected[name].shape:
            raise ModelError(
                f"{path}: tensor {name} has shape {tuple(t.shape)}, config says {tuple(expected[name].shape)}"
            )
        tensors[name] = t.to(expected[name].dtype)
    model.load_state_dict(tensors)
    return model.eval()
