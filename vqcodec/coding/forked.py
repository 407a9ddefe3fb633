"""Work in a forked child process, its result (or its error) sent back through a pipe.

The decoder's wavefront steps are many small numpy operations whose Python overhead holds the
GIL, so threads decoding segments side by side run one after another; processes do not. A fork
shares the loaded model with the child copy-on-write, so starting one costs milliseconds. Only on
Linux (elsewhere forking a process that has loaded torch is unsafe or unavailable).
"""

from __future__ import annotations

import multiprocessing
import sys
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")

#: Whether ``Forked`` may be used here.
AVAILABLE = sys.platform.startswith("linux")


class Forked(Generic[T]):
    """``fn(*args)`` running in a forked child from construction; ``result()`` waits for it."""

    def __init__(self, fn: Callable[..., T], *args: Any):
        context = multiprocessing.get_context("fork")
        self._receive, send = context.Pipe(duplex=False)
        self._process = context.Process(target=_run, args=(send, fn, args), daemon=True)
        self._process.start()
        send.close()

    def result(self) -> T:
        """What ``fn`` returned; what it raised is raised here."""
        try:
            ok, value = self._receive.recv()
        except EOFError:
            code = self._process.exitcode
            raise RuntimeError(f"a worker process ended without a result (exit code {code})") from None
        finally:
            self.close()
        if not ok:
            raise value
        return value

    def close(self) -> None:
        """Stop the child if it still runs, and release it."""
        self._receive.close()
        if self._process.is_alive():
            self._process.terminate()
        self._process.join()


def _run(send: Any, fn: Callable[..., Any], args: tuple) -> None:
    try:
        send.send((True, fn(*args)))
    except BaseException as exc:  # every error goes back to the parent
        send.send((False, exc))
    finally:
        send.close()
