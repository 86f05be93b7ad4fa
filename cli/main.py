"""The `featx` command: a thin typer layer over the featx Python API."""

from __future__ import annotations

import sys

import click
import typer

from featx.errors import FeatxError

app = typer.Typer(
    help="featx: run a frozen VGG16/VGGFace base once into a Zarr feature store, then train heads in seconds.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def not_built(command: str, issue: int) -> None:
    raise FeatxError(f"`featx {command}` is not built yet (planned in issue #{issue})")


from . import data_cmd, weights_cmd, extract_cmd, heads_cmd, finetune_cmd, compare_cmd  # noqa: E402,F401  (commands)


def main(argv: list[str] | None = None) -> int:
    """Entry point: user errors print one line and exit 2, never a traceback."""
    try:
        rv = app(args=argv, standalone_mode=False)
    except FeatxError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.exceptions.Abort:
        print("aborted", file=sys.stderr)
        return 130
    except click.ClickException as e:
        e.show()
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return rv if isinstance(rv, int) else 0


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":  # `python -m featx_cli.main`: use the registered app
    from featx_cli.main import entry as _entry

    _entry()
