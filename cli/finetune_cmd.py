from .main import app, not_built  # noqa: F401


@app.command("fine-tune")
def fine_tune() -> None:
    """Fine-tune the last conv block plus a head from a cached pool4 prefix."""
    not_built("fine-tune", 6)
