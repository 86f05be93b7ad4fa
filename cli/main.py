"""The `featx` entry point: runs the typer app and turns every failure into one line and an exit code.

Exit codes: 0 done; 1 a check failed where the command says so; 2 a usage error, a FeatxError or an
OS error (the path and its cause); 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import errno
import importlib
import os
import sys

import typer

from featx.errors import FeatxError
from featx.paths import shown


def _click_classes(name: str) -> tuple[type, ...]:
    """`name` from every click that typer may raise from: its vendored copy (typer >= 0.29, found
    through the module of typer.BadParameter) and the click package (older typer), where installed."""
    found = {getattr(importlib.import_module(typer.BadParameter.__module__), name, None)}
    try:
        import click.exceptions

        found.add(getattr(click.exceptions, name, None))
    except ImportError:
        pass
    return tuple(c for c in found if isinstance(c, type))


CLICK_ERRORS = _click_classes("ClickException")
EXITS = (typer.Exit, *_click_classes("Exit"))
ABORTS = (typer.Abort, *_click_classes("Abort"))

RESUMABLE = {
    "extract": "interrupted: finished shards are kept; rerun the same command to resume",
    "fine-tune": "interrupted: finished prefix-cache shards and epochs are kept; rerun the same command to resume",
}


def _say(msg: str) -> None:
    print(shown(msg), file=sys.stderr)


def _interrupted(argv: list[str]) -> int:
    command = next((a for a in argv if not a.startswith("-")), "")
    _say(RESUMABLE.get(command, "interrupted; rerun the same command"))
    return 130


def _os_error(e: OSError) -> int:
    if e.errno == errno.EPIPE:  # `featx ... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 1
    where = ": ".join(shown(os.fspath(f)) for f in (e.filename, e.filename2) if f is not None)
    cause = e.strerror or str(e) or type(e).__name__
    _say(f"error: {where}: {cause}" if where else f"error: {cause}")
    return 2


def main(argv: list[str] | None = None) -> int:
    """Run featx with `argv` (default: the command line); return the exit code, never a traceback
    for usage errors, FeatxError, OS errors or Ctrl-C."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        from .app import app

        rv = app(args=argv, prog_name="featx", standalone_mode=False)
    except FeatxError as e:
        _say(f"error: {e}")
        return 2
    except EXITS as e:
        return e.exit_code
    except ABORTS as e:
        if isinstance(e.__cause__, KeyboardInterrupt):  # click < 8.2 and older typer turn Ctrl-C into Abort
            return _interrupted(argv)
        _say("aborted")
        return 1
    except CLICK_ERRORS as e:
        e.show()
        return e.exit_code
    except KeyboardInterrupt:
        return _interrupted(argv)
    except OSError as e:
        return _os_error(e)
    if rv == 130:  # typer turns Ctrl-C inside a command into Exit(130), returned without standalone mode
        return _interrupted(argv)
    return rv if isinstance(rv, int) else 0


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":  # python -m featx_cli.main
    entry()
