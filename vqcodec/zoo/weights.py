"""Model files: safetensors weights with the config in the file's metadata, and the model identifier.

Only safetensors is ever read, so loading a model file never runs code from it. A model file is
untrusted: its header is checked (``modelfile``), then against the shapes its config implies
before any module is built or any weight is read, and the weights before they are used.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..errors import ModelError
from ..format.container import MODEL_ID_SIZE
from ..nn.config import ModelConfig
from ..nn.model import CodecModel
from .modelfile import FORMAT, read_config, read_weights


def model_id(model: CodecModel) -> bytes:
    """A 16-byte identifier: SHA-256 of the canonical config and every tensor (name, dtype, shape,
    bytes) that decoding uses: the encoder's pricer is left out (``ModelConfig.decoding``), so a
    model keeps its identifier, and its files, when one is added."""
    digest = weights_digest(model.config.decoding.to_json(), model, lambda name: not name.startswith("pricer."))
    return digest[:MODEL_ID_SIZE]


def weights_digest(header: str, model: CodecModel, keep: Callable[[str], bool]) -> bytes:
    """SHA-256 of ``header`` and of each tensor of ``model`` whose name ``keep`` accepts (name,
    dtype, shape and bytes, in name order)."""
    digest = hashlib.sha256(header.encode())
    for name, tensor in sorted(model.state_dict().items()):
        if not keep(name):
            continue
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.digest()


def save_model(model: CodecModel, path: str | Path, half: bool = False) -> None:
    """Write ``model`` to a safetensors file (``half`` stores float tensors as fp16)."""
    tensors = {}
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        tensors[name] = t.half() if half and t.is_floating_point() else t
    save_file(tensors, str(path), metadata={"format": FORMAT, "config": model.config.to_json()})


def _expected_tensors(config: ModelConfig) -> dict[str, torch.Tensor]:
    """The state dict a model of ``config`` has, as meta tensors: shapes and dtypes, no memory."""
    with torch.device("meta"):
        return CodecModel(config).state_dict()


#: Tensors of these dtypes (file and torch names) must be stored as such; the others are floats.
_KINDS = {"BOOL": "bool", "torch.bool": "bool", "I32": "int32", "torch.int32": "int32"}


def _check_against(path: Path, entries: dict[str, dict], expected: dict[str, torch.Tensor]) -> None:
    if set(entries) != set(expected):
        missing, extra = set(expected) - set(entries), set(entries) - set(expected)
        raise ModelError(f"{path} does not match its config (missing {sorted(missing)[:3]}, extra {sorted(extra)[:3]})")
    for name, entry in entries.items():
        want = expected[name]
        if tuple(entry["shape"]) != tuple(want.shape):
            shape = tuple(entry["shape"])
            raise ModelError(f"{path}: tensor {name} has shape {shape}, config says {tuple(want.shape)}")
        if _KINDS.get(entry["dtype"], "float") != _KINDS.get(str(want.dtype), "float"):
            raise ModelError(f"{path}: tensor {name} is {entry['dtype']}, config says {want.dtype}")


def load_model(path: str | Path) -> CodecModel:
    """Build a ``CodecModel`` (float32, eval mode, CPU) from a file written by ``save_model``,
    checking the file's header against its config before building anything, and its weights
    before using them (``modelfile``)."""
    path = Path(path)
    config, entries = read_config(path)
    expected = _expected_tensors(config)
    _check_against(path, entries, expected)
    arrays = read_weights(path)
    model = CodecModel(config)
    model.load_state_dict({name: torch.from_numpy(a).to(expected[name].dtype) for name, a in arrays.items()})
    return model.eval()
