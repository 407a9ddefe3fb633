"""Stage 5: an enhancement layer's frequency tables counted from the integers it codes.

A layer is trained pricing its coefficients with a rounded Gaussian, and a new layer codes with
the Gaussian's tables (``nn.enhancement.gaussian_probabilities``). The coefficients' real shape
around their means differs, most at the coarser steps files use a layer at, so the tables are
refitted once a layer is trained: each scale index's table from how often each integer occurs
under it when the layer codes the training photos at those steps (exactly the integers and
indices the coder sees), with ``PRIOR_COUNT`` pseudo-counts of the Gaussian so that a scale seldom
used keeps a sensible table. Nothing else changes: the same coefficients and images, smaller
files (the model gets a new identifier, as any change to its weights gives it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..coding import enhancement
from ..errors import ModelError
from ..nn.enhancement import SCALES, SYMBOLS, frequency_tables, gaussian_probabilities
from ..nn.model import CodecModel
from ..quality import RUNGS
from ..zoo.catalog import model_file
from ..zoo.weights import load_model
from . import data
from .enhancement import each_image, save_enhanced

#: Pseudo-counts of the Gaussian in each table: a table whose scale the photos use millions of
#: times is theirs, one they never use stays the Gaussian.
PRIOR_COUNT = 64


def rung_steps(layers: int) -> dict[int, tuple[int, ...]]:
    """The steps the ``--quality`` rungs code each of ``layers`` layers at (1-based; step 0 for
    a layer no rung uses)."""
    return {k: tuple(step for layer, step in RUNGS if layer == k) or (0,) for k in range(1, layers + 1)}


@torch.no_grad()
def count_symbols(
    model: CodecModel, images: Iterable[np.ndarray], steps: Mapping[int, tuple[int, ...]]
) -> dict[int, np.ndarray]:
    """For each layer of ``steps`` (1-based), how often each table's each symbol is coded when the
    layer codes ``images`` (RGB, the encoder's nearest codes) at each of its steps."""
    vqvae = model.vqvae.eval()
    contexts = {k: enhancement.IntegerContext(model.enhancements[k - 1]) for k in steps}
    counts = {k: np.zeros((SCALES, SYMBOLS), np.int64) for k in steps}
    for _, x, (base, top, bottom) in each_image(vqvae, images):
        t, b = top[0].numpy(), bottom[0].numpy()
        for k, layer_steps in steps.items():
            layer = model.enhancements[k - 1]
            for step in layer_steps:
                y = layer.coefficients(x, base, step)[0].permute(1, 2, 0).numpy()
                counts[k] += enhancement.symbol_counts(enhancement.coded_parts(contexts[k], y, t, b, step)[2])
    return counts


def counted_tables(counts: np.ndarray) -> torch.Tensor:
    """A layer's integer tables from its symbol ``counts`` (``count_symbols``), with
    ``PRIOR_COUNT`` pseudo-counts of the Gaussian per table."""
    c = torch.from_numpy(counts).double() + PRIOR_COUNT * gaussian_probabilities()
    return frequency_tables(c / c.sum(1, keepdim=True))


def train_tables(source: str | Path, folder: str | Path, out: str | Path, steps: tuple[int, ...] | None = None) -> Path:
    """Refit every enhancement layer's tables of the model ``source`` (file or preset) on the
    training photos of ``folder`` (``data.split``), each layer at ``steps`` or else at the steps
    the ``--quality`` rungs use it at (``rung_steps``); write the model to ``out``."""
    model = load_model(model_file(source))
    layers = len(model.enhancements)
    if not layers:
        raise ModelError(f"{source} has no enhancement layers to fit tables for")
    per_layer = rung_steps(layers) if steps is None else dict.fromkeys(range(1, layers + 1), steps)
    train_files, _ = data.split(folder)
    images = tqdm(data.load_rgb(train_files), desc="counting", unit="photo", dynamic_ncols=True)
    for k, counts in count_symbols(model, images, per_layer).items():
        model.enhancements[k - 1].tables.copy_(counted_tables(counts))
    save_enhanced(model, out)
    return Path(out)
