"""The ``featstore`` command line (Typer). Results on stdout, progress and errors on stderr.

Each command parses its options, makes one call into its stage's public function (the same
call is the Python API), and prints what :mod:`featstore.report.tables` renders. Heavy
libraries (torch, timm, zarr, scikit-learn) are imported inside the commands, so
``featstore --help`` is instant. Commands: :mod:`featstore.cli.commands` and
:mod:`featstore.cli.manifest` and :mod:`featstore.cli.team` (copy, export); what they
share: :mod:`featstore.cli._shared`.
"""

from __future__ import annotations

import errno
import os
import sys

import typer
from rich.markup import escape

from featstore.cli import (  # noqa: F401  (registers them)
    commands,
    finetune,
    manifest,
    pipeline,
    team,
)
from featstore.cli._shared import app, err
from featstore.errors import FeatstoreError
from featstore.options import cli_message

try:  # recent typer vendors click under typer._click; older typer uses click itself
    from typer._click.exceptions import NoArgsIsHelpError, UsageError
except ImportError:  # pragma: no cover
    from click.exceptions import UsageError

    try:
        from click.exceptions import NoArgsIsHelpError
    except ImportError:  # click < 8.2 prints the help and exits by itself
        class NoArgsIsHelpError(UsageError):  # type: ignore[no-redef]
            """Never raised by this click."""

__all__ = ["app", "main"]

INTERRUPTED = 130  # the shell's exit status for a process stopped by Ctrl-C (128 + SIGINT)


def _internal(e: BaseException) -> None:
    err.print(f"[red]error:[/] internal {e.__class__.__name__}: {escape(str(e))} "
              "(re-run with --debug for the traceback)", highlight=False)
    sys.exit(1)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: one clear line on error, the traceback only with --debug."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("FEATSTORE_DEBUG") == "1"
    args = [a for a in args if a != "--debug"]
    try:
        code = app(args=args, prog_name="featstore", standalone_mode=False)
    except NoArgsIsHelpError as e:  # the help is already printed
        sys.exit(e.exit_code)
    except UsageError as e:  # a bad option value or a missing option: one line too
        where = f"featstore {e.ctx.info_name} --help" if e.ctx and e.ctx.parent else (
            "featstore --help")
        err.print(f"[red]error:[/] {escape(e.format_message())} (see '{where}')",
                  highlight=False)
        sys.exit(1)
    except typer.Abort:
        err.print("aborted")
        sys.exit(1)
    except FeatstoreError as e:
        if debug:
            raise
        err.print(f"[red]error:[/] {escape(cli_message(e))}", highlight=False)
        sys.exit(1)
    except OSError as e:  # a read-only store, mount or credentials; else a bug
        if debug:
            raise
        if not isinstance(e, PermissionError) and e.errno != errno.EROFS:
            _internal(e)
        what = f": {e.filename}" if e.filename else ""
        denied = "read-only file system" if e.errno == errno.EROFS else "permission denied"
        err.print(f"[red]error:[/] {denied}{escape(what)} ({escape(e.strerror or str(e))})"
                  "; this needs write access there (probe, fuse and results work on a "
                  "read-only store; their runs go to --results-store)", highlight=False)
        sys.exit(1)
    except KeyboardInterrupt:
        code = INTERRUPTED
    except Exception as e:  # a bug: still one line, unless --debug
        if debug:
            raise
        _internal(e)
    if code == INTERRUPTED:  # typer turns Ctrl-C into exit code 130 and prints nothing
        err.print("interrupted: finished work is kept (shards, runs, checkpoints); re-run the "
                  "same command to resume")
    sys.exit(code or 0)
