"""The models installed with vqcodec: the presets by name, and every model a release shipped
(replaced ones included) by the identifier that each ``.vqc`` file carries, so a file made with
any shipped model decodes without naming it. Reads a small index; imports no torch.

``models/index.json`` maps each identifier (hex) to its file, relative to the ``models/`` folder
of its package (vqcodec's unless it names another), a name (the preset's, or for a replaced model
the preset and the release it came with) and optionally the encoder settings the model codes with
by default (``vqcodec.settings.Settings`` fields), so that a model loaded by path gets them too.

Replaced models live in an optional package (``"package"``: ``vqcodec_retired``, from
``retired-models/`` in the repository), which bounds what vqcodec installs while every file a
release wrote stays decodable: without the package such a file is refused with the model's name
and the package to install.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import ModelError, ModelMismatchError

SUFFIX = ".safetensors"
TRAINING_HINT = (
    "train one with `vqcodec train vqvae --data DIR` and `vqcodec train prior --vqvae CKPT`, "
    "or pass a model file with path=... (CLI: --model PATH)"
)


def _folder() -> Path:
    return Path(str(resources.files("vqcodec") / "models"))


def presets() -> list[str]:
    """Names of the trained models shipped inside the package."""
    folder = _folder()
    if not folder.is_dir():
        return []
    return sorted(p.name[: -len(SUFFIX)] for p in folder.iterdir() if p.name.endswith(SUFFIX))


def preset_path(name: str) -> Path:
    """The file of the shipped preset ``name``."""
    available = presets()
    if name not in available:
        if not available:
            raise ModelError(f"no trained model ships with this vqcodec yet: {TRAINING_HINT}")
        raise ModelError(f"unknown preset {name!r}; available: {', '.join(available)}")
    return _folder() / f"{name}{SUFFIX}"


def model_file(preset_or_path: str | Path) -> Path:
    """``preset_or_path`` itself if it is a file, else the file of the shipped preset of that name."""
    path = Path(preset_or_path)
    return path if path.is_file() else preset_path(str(preset_or_path))


@lru_cache(maxsize=1)
def index() -> dict[str, dict[str, Any]]:
    """Identifier (hex) -> {"file", "name", optionally "settings"} of every model shipped with
    this install."""
    path = _folder() / "index.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def name_of(model_id: bytes) -> str | None:
    """The preset name (or, for a replaced model, its description) of a model identifier."""
    entry = index().get(model_id.hex())
    return entry["name"] if entry else None


def settings_of(model_id: bytes) -> dict[str, Any]:
    """The encoder settings a shipped model codes with by default, where they differ from
    ``Settings``' defaults (none for a model this install did not ship)."""
    entry = index().get(model_id.hex())
    return dict(entry.get("settings", {})) if entry else {}


def find(model_id: bytes) -> tuple[str, Path]:
    """The name and file of the shipped model with this identifier; ``ModelMismatchError`` with
    the installed presets if none has it."""
    entry = index().get(model_id.hex())
    if entry is None:
        raise ModelMismatchError(
            f"this file was made with model {model_id.hex()}, which is not installed (presets here: "
            f"{', '.join(presets()) or 'none'}); pass the model file that made it (--model PATH)"
        )
    return entry["name"], _model_folder(entry) / entry["file"]


def _model_folder(entry: dict[str, Any]) -> Path:
    """The folder that holds an index entry's file: vqcodec's own, or its optional package's."""
    package = entry.get("package")
    if package is None:
        return _folder()
    try:
        return Path(str(resources.files(package) / "models"))
    except ModuleNotFoundError:
        raise ModelMismatchError(
            f"this file was made with {entry['name']}, a model a later release replaced; its models are in the "
            f"optional package {package.replace('_', '-')}: install it (from a clone of vqcodec: "
            f"pip install ./retired-models) to decode the file"
        ) from None
