"""The decoder's wavefront steps: run one by one, or on a GPU replayed from one CUDA graph per batch.

A step of the integer prior is a few hundred small operations (a Kodak image takes 186 steps
and about 46,500 kernel launches), so a GPU would spend it launching kernels, not computing. A
CUDA graph records a step's kernels once and replays them with one launch. A graph replays fixed shapes,
so every step of a batch runs on as many rows as its largest wavefront: the rows beyond a step's
own point at the caches' scratch row, whose values nothing reads. The codes a step decodes are
written by the next replay, before it computes. Either way the probabilities are the integer
prior's, so a file decodes the same with or without graphs.
"""

from __future__ import annotations

import warnings
from functools import cache

import numpy as np
import torch

from .qprior import IntegerPrior, MapState, Rows

#: No codes waiting to be written: (rows, codes).
_NOTHING_PENDING = (np.empty(0, np.int64), np.empty(0, np.int64))


class DirectSteps:
    """Each step's operations run as they come (numpy on the CPU, or torch anywhere)."""

    def __init__(self, prior: IntegerPrior, state: MapState):
        self.prior, self.state = prior, state

    def probabilities(self, rows: Rows) -> np.ndarray:
        """(len(rows), K) probability rows of a wavefront whose context is set."""
        return self.prior.probabilities(self.state, rows)

    def set_codes(self, rows: Rows, codes: np.ndarray) -> None:
        """Record a wavefront's decoded codes."""
        self.prior.set_codes(self.state, rows, codes)


class PaddedSteps:
    """Every step on ``size`` rows (at least the largest wavefront) as one function of three
    device tensors: the step's rows, and the previous step's rows and codes. ``capture`` records
    it in a CUDA graph; without, it runs eagerly, which is how it is tested on the CPU."""

    def __init__(self, prior: IntegerPrior, state: MapState, size: int, capture: bool):
        self.prior, self.state, self.size = prior, state, size
        self._pending = _NOTHING_PENDING
        self._host = np.empty((3, size), np.int64)
        self._inputs = torch.tensor(self._pack(np.empty(0, np.int64)), device=prior.xp.device)
        self._output = torch.empty(0)
        self._graph = self._capture() if capture else None

    def _capture(self) -> torch.cuda.CUDAGraph:
        """The step recorded in a CUDA graph, whose output stays in ``self._output``."""
        device = self.prior.xp.device
        # A first run, on the scratch row alone, creates every cache and table the step reads and
        # the BLAS handles of the capture stream, so that the capture meets none of them anew.
        stream = _capture_stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            self._step()
        stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            self._output = self._step()
        torch.cuda.current_stream(device).wait_stream(stream)
        return graph

    def _step(self) -> torch.Tensor:
        rows, code_rows, codes = self._inputs
        self.prior.set_codes(self.state, code_rows, codes)
        return self.prior.device_probabilities(self.state, rows)

    def _pack(self, rows: np.ndarray) -> np.ndarray:
        """This step's rows and the pending codes, each padded with the scratch row (code 0)."""
        host, (code_rows, codes) = self._host, self._pending
        host[:2] = self.state.scratch
        host[2] = 0
        host[0, : len(rows)] = rows
        host[1, : len(code_rows)] = code_rows
        host[2, : len(codes)] = codes
        return host

    def probabilities(self, rows: Rows) -> np.ndarray:
        """Like ``DirectSteps.probabilities`` (after writing the codes ``set_codes`` left)."""
        rows = _indices(rows)
        if len(rows) > self.size:
            raise ValueError(f"a wavefront of {len(rows)} positions in steps of {self.size}")
        self._inputs.copy_(torch.from_numpy(self._pack(rows)))
        self._pending = _NOTHING_PENDING
        if self._graph is not None:
            self._graph.replay()
        else:
            self._output = self._step()
        return self._output[: len(rows)].cpu().numpy()

    def set_codes(self, rows: Rows, codes: np.ndarray) -> None:
        """Keep a wavefront's codes for the next step to write."""
        self._pending = (_indices(rows), codes)


def _indices(rows: Rows) -> np.ndarray:
    """Rows as an index array (a padded step takes its rows as a tensor of fixed size)."""
    return np.arange(rows.start, rows.stop) if isinstance(rows, slice) else rows


@cache
def _capture_stream(device: torch.device) -> torch.cuda.Stream:
    """One stream per GPU for every warm-up and capture (BLAS handles and workspaces are per stream)."""
    return torch.cuda.Stream(device)


def wavefront_steps(prior: IntegerPrior, state: MapState, size: int, graphs: bool = True) -> DirectSteps | PaddedSteps:
    """The steps of a batch whose largest wavefront has ``size`` positions: replayed from a CUDA
    graph when the prior runs on a GPU and ``graphs``, else direct (also, with a warning, when
    the graph cannot be captured)."""
    if not (graphs and prior.xp.torch and prior.xp.device.type == "cuda"):
        return DirectSteps(prior, state)
    try:
        return PaddedSteps(prior, state, size, capture=True)
    except RuntimeError as exc:
        warnings.warn(f"CUDA graph capture failed, decoding step by step: {exc}", RuntimeWarning, stacklevel=2)
        return DirectSteps(prior, state)
