"""BP4D+ and MME readers: MME ships in BP4D+'s layout, so both use the BP4D occurrence-code
reader (``AUCoding/AU_OCC/F001_T1.csv``, optional ``AU_INT/AU06/F001_T1_AU06.csv``) with images
in ``2D+3D/<subject>.zip`` (members ``<...>/<task>/<frame>.jpg``) or the same tree extracted.
Optional landmarks: ``2DFeatures/F001_T1.mat``, BP4D+'s MATLAB v5 form (``fit(k).frame``,
``pts_2d``), read by ``bp4d.read_2dfeatures`` (``landmark_files.py``).

AU set: the 12 BP4D AUs (1 2 4 6 7 10 12 14 15 17 23 24), the common protocol for BP4D+ (its
coding files hold more AUs; columns are read by header name). BP4D+ codes only tasks T1, T6, T7
and T8 over a contiguous frame range: the converter takes whatever label files of those tasks
exist, and refuses a tree with label files of other tasks (T2..T5: a BP4D tree). Every
subject present is converted; BP4D+ uses its public split (folds.BP4D_PLUS_TEST_FOLDS) when it
covers the subjects, MME a seeded split balanced by frame count.
"""

from __future__ import annotations

from pathlib import Path

from .bp4d import BP4D_AUS, plan_occurrence_dataset
from .errors import Report
from .raw import DatasetPlan

CODED_TASKS = ("T1", "T6", "T7", "T8")  # label files of T2..T5 are BP4D's: refused


def plan(root: Path, options, report: Report) -> DatasetPlan:
    return plan_occurrence_dataset(root, "BP4D+", report, BP4D_AUS, progress=getattr(options, "progress", False),
                                   coded_tasks=CODED_TASKS)


def plan_mme(root: Path, options, report: Report) -> DatasetPlan:
    return plan_occurrence_dataset(root, "MME", report, BP4D_AUS, progress=getattr(options, "progress", False),
                                   coded_tasks=CODED_TASKS)
