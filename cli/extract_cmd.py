from .main import app, not_built  # noqa: F401


@app.command("extract")
def extract() -> None:
    """Run a frozen base once over a dataset into a Zarr feature store."""
    not_built("extract", 4)
