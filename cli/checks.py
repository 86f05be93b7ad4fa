"""Option callbacks that check an output place while the command line is parsed, before any work:
each failure is one FeatxError line (see featx.paths)."""

from __future__ import annotations

import typer

from featx import paths


def _name(param: typer.CallbackParam) -> str:
    return param.opts[0] if param.opts else param.name or "option"


def out_dir(param: typer.CallbackParam, value):
    """An output folder (train-head --out, fine-tune --out, evaluate --report)."""
    if value is not None:
        paths.check_out_dir(value, _name(param))
    return value


def out_file(param: typer.CallbackParam, value):
    """An output file (data --out)."""
    if value is not None:
        paths.check_out_file(value, _name(param))
    return value


def store_target(param: typer.CallbackParam, value):
    """A store that will be written (extract --store, fine-tune --cache)."""
    if value is not None:
        paths.check_store_target(value, _name(param))
    return value


def store_source(param: typer.CallbackParam, value):
    """A store that will be read (train-head, evaluate --store)."""
    if value is not None:
        paths.check_store_source(value)
    return value
