"""Model files as untrusted input, without torch: a safetensors header (config, tensor names,
dtypes, shapes, offsets) read and checked against the file's size, the config bounded, and the
weights read with numpy and checked (finite, sane activation ranges). ``weights.load_model`` then
checks the shapes the config implies and builds the model; the command line runs these checks
first, so a bad model file is refused before torch is even imported.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file

from ..errors import ModelError
from ..nn.config import ModelConfig

FORMAT = "vqcodec-model-1"
#: Largest safetensors header read (a model's is a few tens of kilobytes).
MAX_HEADER_BYTES = 1 << 20
#: The dtypes a model file may store (``weights.save_model`` writes F16 or F32, and I32 for the
#: enhancement layers' frequency tables), and their sizes.
_DTYPES = {"F16": 2, "F32": 4, "BOOL": 1, "I32": 4}
#: Range an activation range of the priors may take: the integer prior's scales derive from it.
ACT_RANGE_BOUNDS = (2.0**-20, 2.0**20)


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


def read_config(path: Path) -> tuple[ModelConfig, dict[str, dict]]:
    """The validated config and the tensor entries of the model file at ``path``."""
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    meta, entries = read_header(path)
    if meta.get("format") != FORMAT or not isinstance(meta.get("config"), str):
        raise ModelError(f"{path} is not a vqcodec model (metadata format {meta.get('format')!r})")
    return ModelConfig.from_json(meta["config"]), entries


#: Largest magnitude of any stored value: float16's range, which every shipped model is stored in
#: (their largest, codebook sums, are under 500); anything beyond is no trained model's.
MAX_WEIGHT = 65504.0


def read_weights(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of the model file at ``path`` (whose header ``read_config`` checked), checked:
    finite, within ``MAX_WEIGHT``, and activation ranges within ``ACT_RANGE_BOUNDS``."""
    try:
        arrays = load_file(str(path))
    except (SafetensorError, OSError, ValueError, TypeError) as exc:
        raise ModelError(f"{path} is not a valid safetensors model file: {exc}") from exc
    low, high = ACT_RANGE_BOUNDS
    for name, a in arrays.items():
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise ModelError(f"{path}: tensor {name} holds non-finite values")
        if a.dtype.kind == "f" and a.size and not name.endswith(".absmax") and np.abs(a).max() > MAX_WEIGHT:
            raise ModelError(f"{path}: tensor {name} holds values beyond +-{MAX_WEIGHT:g}")
        if name.endswith(".absmax") and not ((a.astype(np.float64) >= low) & (a.astype(np.float64) <= high)).all():
            raise ModelError(f"{path}: activation range {name} = {a.tolist()} is outside [{low}, {high}]")
    return arrays


def check(path: str | Path) -> None:
    """Everything about a model file that can be checked without torch."""
    read_config(Path(path))
    read_weights(Path(path))
