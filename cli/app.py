"""The featx typer app: every command and option is registered here, from the command modules."""

from __future__ import annotations

import typer

from . import compare_cmd, data_cmd, export_cmd, extract_cmd, finetune_cmd, heads_cmd, labels_cmd, store_cmd, weights_cmd


def _version(value: bool) -> None:
    if value:
        from featx import __version__

        typer.echo(f"featx {__version__}")
        raise typer.Exit()


def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the featx version and exit."),
) -> None:
    """featx: run a frozen VGG16/VGGFace base once into a Zarr feature store, then train heads in seconds."""


def build() -> typer.Typer:
    """The `featx` app: data, weights list|get|import|verify, extract, store verify|repair, labels list|add|type,
    train-head, evaluate, predict, fine-tune."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.callback()(_root)
    app.command("data")(data_cmd.data)
    weights = typer.Typer(help="List, fetch, import and verify weight releases.")
    weights.command("list")(weights_cmd.list_)
    weights.command("get")(weights_cmd.get)
    weights.command("import")(weights_cmd.import_)
    weights.command("verify")(weights_cmd.verify)
    app.add_typer(weights, name="weights")
    app.command("extract")(extract_cmd.extract)
    app.command("train-head")(heads_cmd.train_head)
    app.command("evaluate")(heads_cmd.evaluate)
    app.command("predict")(heads_cmd.predict)
    app.command("compare")(compare_cmd.compare)
    app.command("fine-tune")(finetune_cmd.fine_tune)
    app.command("export")(export_cmd.export)
    store = typer.Typer(help="Check a feature store against its checksums; recompute bad shards.")
    store.command("verify")(store_cmd.verify)
    store.command("repair")(store_cmd.repair)
    store.command("upgrade")(store_cmd.upgrade)
    app.add_typer(store, name="store")
    labels = typer.Typer(help="The targets of a feature store: list them, join new ones by path, retype one.")
    labels.command("list")(labels_cmd.list_)
    labels.command("add")(labels_cmd.add)
    labels.command("type")(labels_cmd.type_)
    app.add_typer(labels, name="labels")
    return app


app = build()
