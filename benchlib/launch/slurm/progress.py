"""Progress of a run from its training log: the last `iteration N/ TOTAL` line Megatron printed."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

# Megatron's training log line: " [2026-..] iteration       10/      50 | consumed samples: ..."
# (with `srun --label`, prefixed by "0: "). Only the last rank prints it, so any line counts.
_ITER = re.compile(r"\biteration\s+(\d+)\s*/\s*(\d+)\s*\|")
_TAIL_BYTES = 256 * 1024  # a progress check reads the log's tail only; logs can be large


@dataclass(frozen=True)
class Progress:
    iteration: int
    total: int

    def __str__(self) -> str:
        pct = 100.0 * self.iteration / self.total if self.total else 0.0
        return f"iteration {self.iteration}/{self.total} ({pct:.0f}%)"


def read_tail(path: Path, nbytes: int = _TAIL_BYTES) -> str:
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - nbytes))
        return fh.read().decode("utf-8", errors="replace")


def log_progress(path: Path) -> Progress | None:
    """The last iteration line in the log, or None (no log yet, or no iteration printed yet)."""
    try:
        text = read_tail(path)
    except FileNotFoundError:
        return None
    last = None
    for m in _ITER.finditer(text):
        last = m
    return Progress(int(last.group(1)), int(last.group(2))) if last else None
