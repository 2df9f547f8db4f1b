"""aubench: benchmark suite and dataset toolkit for facial action unit (AU) detection."""

__version__ = "0.1.0"


def __getattr__(name: str):
    """`aubench.Predictor` (aubench.predict), imported on first use: `import aubench` stays light."""
    if name == "Predictor":
        from aubench.predict import Predictor

        return Predictor
    raise AttributeError(f"module 'aubench' has no attribute {name!r}")
