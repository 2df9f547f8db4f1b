"""F1 scores published by the papers, shown beside ours in the leaderboard (marked "reported").

Only numbers whose source we could read are listed; each entry names its source. Scores are
F1 in percent, per AU and the average over AUs, on the standard subject-exclusive 3-fold
protocol with all training labels ("full"), as the papers report them (their own training,
not ours). Knowledge-Spreader's (ICCV 2023) sparse-label scores are not listed: we could not
read its result tables from an accessible source, so no number of it is claimed here.
"""
from __future__ import annotations

ME_GRAPHAU_README = ("CVI-SZU/ME-GraphAU README.md, 'Main Results' (commit "
                     "008f28174d09dac14d3ae273d1dbe57bc8074863), Luo et al., IJCAI-ECAI 2022")

_BP4D_AUS = ["AU1", "AU2", "AU4", "AU6", "AU7", "AU10", "AU12", "AU14", "AU15", "AU17", "AU23", "AU24"]
_DISFA_AUS = ["AU1", "AU2", "AU4", "AU6", "AU9", "AU12", "AU25", "AU26"]


def _entry(method: str, dataset: str, aus: list[str], scores: list[float], mean: float, source: str) -> dict:
    assert len(aus) == len(scores)
    return {"method": method, "dataset": dataset, "protocol": "full", "f1": dict(zip(aus, scores)),
            "mean_f1": mean, "source": source}


REPORTED: list[dict] = [
    _entry("JAA-Net", "BP4D", _BP4D_AUS,
           [47.2, 44.0, 54.9, 77.5, 74.6, 84.0, 86.9, 61.9, 43.6, 60.3, 42.7, 41.9], 60.0, ME_GRAPHAU_README),
    _entry("ME-GraphAU (ResNet-50)", "BP4D", _BP4D_AUS,
           [53.7, 46.9, 59.0, 78.5, 80.0, 84.4, 87.8, 67.3, 52.5, 63.2, 50.6, 52.4], 64.7, ME_GRAPHAU_README),
    _entry("JAA-Net", "DISFA", _DISFA_AUS, [43.7, 46.2, 56.0, 41.4, 44.7, 69.6, 88.3, 58.4], 56.0, ME_GRAPHAU_README),
    _entry("ME-GraphAU (ResNet-50)", "DISFA", _DISFA_AUS,
           [54.6, 47.1, 72.9, 54.0, 55.7, 76.7, 91.1, 53.0], 63.1, ME_GRAPHAU_README),
]


def reported_for(dataset: str, protocol: str) -> list[dict]:
    return [r for r in REPORTED if r["dataset"] == dataset and r["protocol"] == protocol]
