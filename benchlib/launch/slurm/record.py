"""What a submitted run directory remembers about its Slurm job (`slurm_job.json`), and finding runs.

The record is written by `submit` right after `sbatch` answers, atomically, so `benchlib status`
and `benchlib stop` can go from a run directory to its job id and back.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

from benchlib.core.rundir import INCOMPLETE_MARKER, JOB_RECORD, RESULT_FILE, atomic_write_json  # noqa: F401 (re-exported)

JOB_ID_RE = re.compile(r"^\d+(_\d+)?$")


def write_record(run_dir: Path, record: dict[str, Any]) -> None:
    atomic_write_json(Path(run_dir) / JOB_RECORD, record)


def read_record(run_dir: Path) -> dict[str, Any] | None:
    path = Path(run_dir) / JOB_RECORD
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError:
        return None


def iter_run_dirs(output_root: Path) -> Iterator[Path]:
    """Run directories with a job record under an output root (`<root>/<MODEL>/<run>/`), newest first."""
    root = Path(output_root)
    if not root.is_dir():
        return iter(())
    found = [p.parent for p in root.glob(f"*/*/{JOB_RECORD}")]
    found.sort(key=lambda p: (p / JOB_RECORD).stat().st_mtime, reverse=True)
    return iter(found)


def find_run_by_job(output_root: Path, job_id: str) -> Path | None:
    """The run directory whose record holds this job id (an array task id `123_4` matches job 123)."""
    base = job_id.split("_")[0]
    for run_dir in iter_run_dirs(output_root):
        rec = read_record(run_dir) or {}
        if str(rec.get("job_id", "")) in (job_id, base):
            return run_dir
    return None


def run_log(run_dir: Path, job_id: str | None = None) -> Path | None:
    """The log to read progress from: the one the record names, else the newest log in logs/."""
    run_dir = Path(run_dir)
    rec = read_record(run_dir) or {}
    named = rec.get("log")
    if named and (run_dir / named).exists():
        return run_dir / named
    logs = run_dir / "logs"
    if not logs.is_dir():
        return None
    candidates = sorted(logs.glob("*.log"), key=lambda p: p.stat().st_mtime, reverse=True)
    if not candidates:
        pattern = f"*{job_id}*.out" if job_id else "*.out"
        candidates = sorted(logs.glob(pattern), key=lambda p: p.stat().st_mtime, reverse=True)
    return candidates[0] if candidates else None
