from .main import app, not_built  # noqa: F401


@app.command("train-head")
def train_head() -> None:
    """Train a head on cached features."""
    not_built("train-head", 5)


@app.command("evaluate")
def evaluate() -> None:
    """Score a saved head on a feature store and write a report."""
    not_built("evaluate", 5)


@app.command("predict")
def predict() -> None:
    """Predict labels for new photos with a saved head."""
    not_built("predict", 5)
