"""Occlusion conditions of a run: what `--train-occlusion` and `--test-occlusion` take.

A condition is "none", "patches:<ratio>" (random grid cells) or "block:<ratio>" (one rectangle),
parsed to None or (kind, ratio), the `occlusion=` argument of aubench.data's datasets; its name
("none", "patches0.5", "block0.3") goes into protocol names, result file names and the result's
"occlusion" record. The training condition belongs to the run (its identity and checkpoint); the
test condition to each result: one trained run is tested under every condition of a sweep.
"""
from __future__ import annotations

try:
    from aubench.data.occlusion import condition_name, parse_condition
except ImportError:  # until aubench.data.occlusion has them: the same behaviour, here
    from aubench.data.occlusion import OCCLUSION_KINDS

    def parse_condition(text: str) -> tuple[str, float] | None:
        """"none" -> None, "patches:0.5" -> ("patches", 0.5); ValueError for anything else."""
        text = text.strip()
        if text == "none":
            return None
        kind, _, ratio = text.partition(":")
        try:
            value = float(ratio)
        except ValueError:
            value = None
        if kind not in OCCLUSION_KINDS or value is None or not 0 < value <= 1:
            raise ValueError(f"expected none, patches:<ratio> or block:<ratio> with a ratio in (0, 1], got {text!r}")
        return kind, value

    def condition_name(occlusion: tuple[str, float] | None) -> str:
        """None -> "none", ("patches", 0.5) -> "patches0.5"."""
        return "none" if occlusion is None else f"{occlusion[0]}{occlusion[1]:g}"

NONE = "none"

__all__ = ["NONE", "condition_name", "parse_condition"]
