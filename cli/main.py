"""The ``vqcodec`` command group: one-line errors with distinct exit codes, warnings as one line,
SIGTERM handled as Ctrl-C.

Exit codes: 0 success, 1 bad input (any ``VQCodecError``), 2 usage error, 3 internal error.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import warnings

import click

import vqcodec

EXIT_BAD_INPUT = 1
EXIT_INTERNAL = 3
#: 128 + SIGPIPE, what a shell reports for a command whose reader closed the pipe.
EXIT_BROKEN_PIPE = 141


class _Group(click.Group):
    """Turns codec errors into one-line messages with distinct exit codes."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except vqcodec.VQCodecError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_BAD_INPUT)
        except BrokenPipeError:  # the reader went away (`vqcodec info f.vqc | head -1`): stop quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(EXIT_BROKEN_PIPE)
        except Exception as exc:  # anything else is our bug: say so, briefly
            click.echo(f"internal error: {type(exc).__name__}: {exc}", err=True)
            sys.exit(EXIT_INTERNAL)


def _terminated(signum: int, frame: object) -> None:
    sys.exit(128 + signum)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(vqcodec.__version__, prog_name="vqcodec")
def main() -> None:
    """vqcodec: learned image compression with a VQ-VAE-2 and PixelSNAIL priors."""
    warnings.showwarning = _show_warning
    # SIGTERM (kill, a service manager) ends the command as Ctrl-C does: through its clean-ups,
    # so no temporary output is left behind.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminated)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line, like errors: no Python source line."""
    click.echo(f"warning: {message}", err=True)
