"""User-facing errors and the conversion report (skipped frames and notes, never silent)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


class DatasetError(Exception):
    """A problem with the user's input: printed as one clear line, no traceback."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None):
        self.message = message  # without the path and line
        self.path = path
        self.line = line
        where = ""
        if path is not None:
            where = f"{path}"
            if line is not None:
                where += f", line {line}"
            where += ": "
        super().__init__(where + message)


@dataclass
class Skip:
    """One skipped frame (or sequence): ``kind`` is the reason counted in the report."""

    sequence: str
    frame_no: int | None
    kind: str
    detail: str

    def __str__(self) -> str:
        frame = "" if self.frame_no is None else f" frame {self.frame_no}"
        return f"{self.sequence}{frame}: {self.kind}: {self.detail}"

    def to_list(self) -> list:
        return [self.sequence, self.frame_no, self.kind, self.detail]


@dataclass
class Report:
    """Collects per-frame problems. Strict mode (the default) raises on the first one;
    with ``skip_bad`` the frame is dropped and listed here, so nothing disappears silently."""

    skip_bad: bool = False
    skips: list[Skip] = field(default_factory=list)
    notes: Counter = field(default_factory=Counter)

    def problem(self, message: str, *, sequence: str, frame_no: int | None = None,
                path: str | None = None, line: int | None = None, kind: str) -> None:
        """A per-frame (or per-sequence) problem: raise, or record a skip of ``kind``."""
        if not self.skip_bad:
            raise DatasetError(message + " (use --skip-bad to skip such frames)", path, line)
        self.skip(message, sequence=sequence, frame_no=frame_no, path=path, line=line, kind=kind)

    def skip(self, message: str, *, sequence: str, frame_no: int | None = None, path: str | None = None,
             line: int | None = None, kind: str) -> None:
        """A frame left out in either mode: for gaps the dataset itself has (e.g. Aff-Wild2 ships
        no face image for frames where its face detector failed), which are expected, not errors,
        but are still listed and counted like every skip."""
        where = f"{path}" + (f", line {line}" if line is not None else "") if path else ""
        self.skips.append(Skip(sequence, frame_no, kind, message + (f" [{where}]" if where else "")))

    def note(self, message: str, count: int = 1) -> None:
        self.notes[message] += count

