"""Vector quantization: bounded-memory nearest-code search and an EMA codebook with code restarts."""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

#: Upper bound on the number of entries of one chunk of the N x K distance matrix.
MAX_DISTANCE_ENTRIES = 1 << 22


def _distance_rows(x: torch.Tensor, codebook: torch.Tensor, max_entries: int) -> Iterator[tuple[slice, torch.Tensor]]:
    """The N x K squared distances less ||x||^2 (constant per row, so it moves no ranking),
    ``max_entries // K`` rows at a time: memory stays bounded whatever N is."""
    rows = max(1, max_entries // codebook.shape[0])
    code_norms = codebook.pow(2).sum(1)
    for start in range(0, x.shape[0], rows):
        # addmm: one pass less than - 2 * (x @ c)
        yield slice(start, start + rows), torch.addmm(code_norms, x[start : start + rows], codebook.t(), alpha=-2.0)


def nearest_code(x: torch.Tensor, codebook: torch.Tensor, max_entries: int = MAX_DISTANCE_ENTRIES) -> torch.Tensor:
    """Index of the nearest codebook row (squared Euclidean) for every row of ``x``.

    ``x`` is (N, D), ``codebook`` (K, D). Ties go to the lowest index. On a GPU with Triton, the
    fused kernel of ``kernels`` does the same without any distance matrix.
    """
    if x.is_cuda:
        from . import kernels  # here, not at the top: importing Triton takes a while and helps only on a GPU

        if kernels.available(x):
            return kernels.nearest_code_fused(x, codebook)
    out = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    for rows, dist in _distance_rows(x, codebook, max_entries):
        out[rows] = dist.argmin(1)
    return out


def nearest_codes(
    x: torch.Tensor, codebook: torch.Tensor, k: int, max_entries: int = MAX_DISTANCE_ENTRIES
) -> torch.Tensor:
    """Indices (N, k) of the ``k`` nearest codebook rows of every row of ``x``, nearest first.
    With ``k`` = 1 they are ``nearest_code``'s (its ties, its fused kernel)."""
    if k == 1:
        return nearest_code(x, codebook, max_entries).unsqueeze(1)
    k = min(k, codebook.shape[0])
    idx = torch.empty(x.shape[0], k, dtype=torch.long, device=x.device)
    for rows, dist in _distance_rows(x, codebook, max_entries):
        idx[rows] = dist.topk(k, dim=1, largest=False).indices
    return idx


class VectorQuantizer(nn.Module):
    """A codebook of ``codes`` vectors of size ``dim``, learnt by exponential moving averages.

    ``forward`` quantizes a (B, dim, H, W) map with a straight-through gradient and, in
    training, updates the codebook and restarts codes that fell out of use with encoder outputs
    drawn from the batch (Dhariwal et al., Jukebox; Zeghidour et al.).
    """

    def __init__(self, dim: int, codes: int, decay: float = 0.99, eps: float = 1e-5, restart_below: float = 1.0):
        super().__init__()
        self.dim, self.codes, self.decay, self.eps, self.restart_below = dim, codes, decay, eps, restart_below
        # Replaced by encoder outputs at the first training batch; uniform_ (unlike randn) is
        # cheap on the meta device, where model files are checked before anything is allocated.
        embed = torch.empty(codes, dim).uniform_(-1.0, 1.0)
        self.register_buffer("embed", embed)
        self.register_buffer("cluster_size", torch.ones(codes))
        self.register_buffer("embed_sum", embed.clone())
        # Set from the first training batch (codes drawn from encoder outputs), so no code starts dead.
        self.register_buffer("initialised", torch.tensor(False))

    def indices(self, z: torch.Tensor) -> torch.Tensor:
        """Code indices (B, H, W) of a (B, dim, H, W) map."""
        b, _, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, self.dim)
        return nearest_code(flat, self.embed).view(b, h, w)

    def candidates(self, z: torch.Tensor, k: int) -> torch.Tensor:
        """Indices (B, H, W, k) of the ``k`` nearest codes of every vector of a (B, dim, H, W) map,
        nearest first."""
        b, _, h, w = z.shape
        return nearest_codes(z.permute(0, 2, 3, 1).reshape(-1, self.dim), self.embed, k).view(b, h, w, -1)

    def lookup(self, idx: torch.Tensor) -> torch.Tensor:
        """The (B, dim, H, W) code vectors of an index map (B, H, W)."""
        return F.embedding(idx, self.embed).permute(0, 3, 1, 2).contiguous()

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Quantize ``z``: returns (straight-through codes, commitment loss, indices)."""
        idx = self.indices(z)
        q = self.lookup(idx)
        if self.training:
            self._ema_update(z.detach(), idx)
        commitment = F.mse_loss(z, q.detach())
        return z + (q - z).detach(), commitment, idx

    @torch.no_grad()
    def _ema_update(self, z: torch.Tensor, idx: torch.Tensor) -> None:
        flat = z.permute(0, 2, 3, 1).reshape(-1, self.dim)
        if not self.initialised:
            self._init_from(flat)
            idx = self.indices(z)
        idx = idx.reshape(-1)
        counts = torch.bincount(idx, minlength=self.codes).type(flat.dtype)
        sums = flat.new_zeros(self.codes, self.dim).index_add_(0, idx, flat)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(counts)
            torch.distributed.all_reduce(sums)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (total + self.codes * self.eps) * total
        self.embed.copy_(self.embed_sum / smoothed.unsqueeze(1))
        self._restart_dead(flat)

    def _init_from(self, flat: torch.Tensor) -> None:
        pick = torch.randint(0, flat.shape[0], (self.codes,), device=flat.device)
        fresh = flat[pick].clone()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.broadcast(fresh, 0)
        self.embed.copy_(fresh)
        self.embed_sum.copy_(fresh)
        self.cluster_size.fill_(1.0)
        self.initialised.fill_(True)

    def _restart_dead(self, flat: torch.Tensor) -> None:
        dead = self.cluster_size < self.restart_below
        n_dead = int(dead.sum())
        if n_dead == 0:
            return
        pick = torch.randint(0, flat.shape[0], (n_dead,), device=flat.device)
        fresh = flat[pick]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.broadcast(fresh, 0)
        self.embed[dead] = fresh
        self.embed_sum[dead] = fresh
        self.cluster_size[dead] = 1.0
