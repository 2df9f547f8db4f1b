"""Draw docs/training_curves.png, the README's example of `aubench plot`: a real two-stage run
(ME-GraphAU's tiny preset, 3 epochs per stage at 32 px, every step logged) on a small synthetic
file written by the tests' schema-exact writer, then `aubench.plot.plot_run` on its log.

    python docs/make_curves.py            (about 15 s on 2 CPU cores)
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIGURE = ROOT / "docs" / "training_curves.png"
sys.path.insert(0, str(ROOT / "tests"))

import aubench.models  # noqa: E402,F401  (registers the methods)
from aubench.engine.config import RunConfig  # noqa: E402
from aubench.engine.trainer import Trainer  # noqa: E402
from aubench.plot import plot_run  # noqa: E402
from fixtures_h5 import write_au_h5  # noqa: E402

AUS8 = ("AU1", "AU2", "AU4", "AU6", "AU9", "AU12", "AU25", "AU26")


def main() -> int:
    with tempfile.TemporaryDirectory() as folder:
        data = write_au_h5(Path(folder) / "au8.h5", num_subjects=6, sequence_lengths=(12, 10), au_names=AUS8)
        run = Path(folder) / "megraphau_fold1_full"
        Trainer(RunConfig(data=str(data), out=str(run), method="megraphau", preset="tiny", image_size=32,
                          batch_size=8, epochs=3, progress=False, device="cpu", log_every=1)).fit()
        print(f"wrote {plot_run(run, FIGURE)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
