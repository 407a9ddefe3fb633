"""torch's CPU thread count: set for the process, or lowered to one for a block of work and restored
after it. The one place that sets it (and, for the process, that of numpy's BLAS)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from threadpoolctl import threadpool_limits


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Within the block, torch runs on one CPU thread (process-wide); the caller's count after it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def use_threads(threads: int) -> None:
    """torch's CPU threads for this process (the priors' products and the VQ-VAE's windows), and
    at most as many for numpy's BLAS (the restoration filter's fit), which otherwise takes every
    core."""
    torch.set_num_threads(threads)
    threadpool_limits(limits=threads, user_api="blas")


def one_thread_here() -> None:
    """torch on one CPU thread in the calling thread, a worker of the codec's own (a new thread
    starts with torch's default count); numpy's BLAS, whose count is the process's, is left alone."""
    torch.set_num_threads(1)
