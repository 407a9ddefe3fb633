"""Model files: safetensors weights with the config in the file's metadata, and the model identifier.

Only safetensors is ever read, so loading a model file never runs code from it. A model file is
untrusted: its header (config, tensor names, dtypes and shapes) is read and checked against the
shapes the config implies before any module is built or any weight is read, and the weights are
checked (finite, sane activation ranges) before they are used.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import ModelConfig
from .container import MODEL_ID_SIZE
from .errors import ModelError
from .model import CodecModel

FORMAT = "vqcodec-model-1"
#: Largest safetensors header read (a model's is a few tens of kilobytes).
MAX_HEADER_BYTES = 1 << 20
#: The dtypes a model file may store, and their sizes in bytes.
_DTYPES = {"F16": 2, "BF16": 2, "F32": 4, "BOOL": 1}
#: Range an activation range of the priors may take: the integer prior's scales derive from it.
ACT_RANGE_BOUNDS = (2.0**-20, 2.0**20)


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


def read_header(path: Path) -> tuple[dict[str, str], dict[str, dict]]:
    """The metadata and the tensor entries (dtype, shape, data_offsets) of a safetensors file,
    checked for consistency with the file's size; nothing else of the file is read."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise ModelError(f"{path} is not a safetensors file (too short)")
            (length,) = struct.unpack("<Q", prefix)
            if length > min(MAX_HEADER_BYTES, size - 8):
                raise ModelError(f"{path} is not a safetensors model file (header of {length} bytes)")
            header = json.loads(f.read(length))
    except RecursionError as exc:
        raise ModelError(f"{path}: its safetensors header is nested too deeply") from exc
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path} is not a valid safetensors model file: {exc}") from exc
    if not isinstance(header, dict):
        raise ModelError(f"{path} is not a valid safetensors model file (header is not an object)")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict):
        raise ModelError(f"{path} is not a valid safetensors model file (bad metadata)")
    data_size = size - 8 - length
    for name, entry in header.items():
        _check_entry(path, name, entry, data_size)
    return meta, header


def _check_entry(path: Path, name: str, entry: object, data_size: int) -> None:
    ok = (
        isinstance(entry, dict)
        and entry.get("dtype") in _DTYPES
        and isinstance(entry.get("shape"), list)
        and all(isinstance(d, int) and d >= 0 for d in entry["shape"])
        and isinstance(entry.get("data_offsets"), list)
        and len(entry["data_offsets"]) == 2
        and all(isinstance(o, int) for o in entry["data_offsets"])
    )
    if ok:
        begin, end = entry["data_offsets"]
        ok = 0 <= begin <= end <= data_size and end - begin == math.prod(entry["shape"]) * _DTYPES[entry["dtype"]]
    if not ok:
        raise ModelError(f"{path}: invalid safetensors entry for tensor {name!r}")


def _expected_tensors(config: ModelConfig) -> dict[str, torch.Tensor]:
    """The state dict a model of ``config`` has, as meta tensors: shapes and dtypes, no memory."""
    with torch.device("meta"):
        return CodecModel(config).state_dict()


def _check_against(path: Path, entries: dict[str, dict], expected: dict[str, torch.Tensor]) -> None:
    if set(entries) != set(expected):
        missing, extra = set(expected) - set(entries), set(entries) - set(expected)
        raise ModelError(f"{path} does not match its config (missing {sorted(missing)[:3]}, extra {sorted(extra)[:3]})")
    for name, entry in entries.items():
        want = expected[name]
        if tuple(entry["shape"]) != tuple(want.shape):
            shape = tuple(entry["shape"])
            raise ModelError(f"{path}: tensor {name} has shape {shape}, config says {tuple(want.shape)}")
        if (entry["dtype"] == "BOOL") != (want.dtype == torch.bool):
            raise ModelError(f"{path}: tensor {name} is {entry['dtype']}, config says {want.dtype}")


def _check_values(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    low, high = ACT_RANGE_BOUNDS
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ModelError(f"{path}: tensor {name} holds non-finite values")
        if name.endswith(".absmax") and not bool(((t >= low) & (t <= high)).all()):
            raise ModelError(f"{path}: activation range {name} = {t.tolist()} is outside [{low}, {high}]")


def load_model(path: str | Path) -> CodecModel:
    """Build a ``CodecModel`` (float32, eval mode, CPU) from a file written by ``save_model``,
    checking the file's header against its config before building anything."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    meta, entries = read_header(path)
    if meta.get("format") != FORMAT or not isinstance(meta.get("config"), str):
        raise ModelError(f"{path} is not a vqcodec model (metadata format {meta.get('format')!r})")
    config = ModelConfig.from_json(meta["config"])
    expected = _expected_tensors(config)
    _check_against(path, entries, expected)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"{path} is not a valid safetensors model file: {exc}") from exc
    _check_values(path, tensors)
    model = CodecModel(config)
    model.load_state_dict({name: t.to(expected[name].dtype) for name, t in tensors.items()})
    return model.eval()
