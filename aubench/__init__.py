"""aubench: benchmark suite and dataset toolkit for facial action unit (AU) detection."""

__version__ = "0.1.0"
