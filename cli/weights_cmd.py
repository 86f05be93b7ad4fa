from .main import app, not_built  # noqa: F401
import typer

weights_app = typer.Typer(help="List, fetch, import and verify weight releases.", no_args_is_help=True)
app.add_typer(weights_app, name="weights")


@weights_app.command("list")
def list_() -> None:
    """Show every release, whether present locally, source and licence."""
    not_built("weights list", 3)
