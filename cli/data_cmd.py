from .main import app, not_built  # noqa: F401


@app.command("data")
def data() -> None:
    """Build a dataset manifest (path, label, split, group, extras)."""
    not_built("data", 2)
