"""Across-run statistics of REPEATS=N: N launches of the same run in one allocation, each with its own log.

Each launch (logs/repeat-<n>.log) is parsed on its own, with its own steady window. The result's
headline numbers stay those of logs/train.log, which holds every launch (one launch segment each,
each with its own warm-up skipped), so they pool all N steady windows; `repeats` adds, per metric,
the median, min, max, CV and spread (max/min - 1) over the runs, the olympic mean for N >= 5 (best
and worst dropped, as MLPerf scores), and every run's own steady-window CV and seed.
"""
from __future__ import annotations

import re
import statistics
from pathlib import Path
from typing import Any, Callable

from benchlib.core.rundir import LOGS_DIR, REPEAT_LOG

OLYMPIC_MIN_RUNS = 5
_REPEAT_RE = re.compile("^" + re.escape(REPEAT_LOG).replace(r"\{n\}", r"(\d+)") + "$")

# metric name -> how to read it from a RunResult
METRICS: dict[str, Callable[[Any], float | None]] = {
    "iteration_time_ms": lambda r: (r.iteration_time_ms or {}).get("median"),
    "tokens_per_s_per_gpu": lambda r: r.tokens_per_s_per_gpu,
    "tflops_per_gpu": lambda r: r.tflops_per_gpu_recomputed if r.tflops_per_gpu_recomputed is not None else r.tflops_per_gpu_reported,
    "mfu": lambda r: r.mfu,
}


def is_repeat_log(name: str) -> bool:
    return _REPEAT_RE.match(name) is not None


def repeat_logs(run_dir: Path) -> list[tuple[int, Path]]:
    """(repeat number, log) of a run directory's repeat logs, in order; empty for a single run."""
    folder = Path(run_dir) / LOGS_DIR
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        m = _REPEAT_RE.match(path.name)
        if m and path.is_file():
            found.append((int(m.group(1)), path))
    return sorted(found)


def across_runs(values: list[float]) -> dict[str, Any]:
    """median, min, max, CV (sample sd / mean), spread (max/min - 1), olympic mean (N >= 5, else None)."""
    n = len(values)
    if not n:
        return {"n": 0, "median": None, "min": None, "max": None, "mean": None, "cv": None, "spread": None, "olympic_mean": None}
    mean = statistics.fmean(values)
    lo, hi = min(values), max(values)
    olympic = statistics.fmean(sorted(values)[1:-1]) if n >= OLYMPIC_MIN_RUNS else None
    return {
        "n": n, "median": statistics.median(values), "min": lo, "max": hi, "mean": mean,
        "cv": (statistics.stdev(values) / mean) if n > 1 and mean else 0.0,
        "spread": (hi / lo - 1.0) if lo else None,
        "olympic_mean": olympic,
    }


def repeat_statistics(results: list[tuple[int, str, Any]]) -> dict[str, Any]:
    """`results`: (repeat number, log path, RunResult) per launch."""
    runs = []
    for number, log, res in results:
        runs.append({
            "repeat": number, "log": log, "status": res.status, "seed": res.config.get("seed"),
            "steady_window": res.steady_window.get("description"),
            "steady_cv": (res.iteration_time_ms or {}).get("cv"),
            **{name: get(res) for name, get in METRICS.items()},
        })
    stats = {name: across_runs([run[name] for run in runs if run[name] is not None]) for name in METRICS}
    return {"n": len(runs), "runs": runs, "stats": stats,
            "completed": sum(1 for run in runs if run["status"] == "completed"),
            "method": "N launches in one allocation, fixed seed; each run's own steady window"}


def repeats_for(run_dir: Path | None, *, gpu: str | None, world_size: int | None, config: dict | None,
                skip: int | None = None) -> dict[str, Any] | None:
    """The `repeats` field of a run directory with repeat logs, else None."""
    from benchlib.metrics.logparse import parse_log
    from benchlib.metrics.result import summarize

    if run_dir is None:
        return None
    logs = repeat_logs(run_dir)
    if not logs:
        return None
    results = []
    for number, log in logs:
        res = summarize(parse_log([log]), gpu, world_size=world_size, config=config, skip=skip)
        results.append((number, str(log), res))
    return repeat_statistics(results)


def spread_warning(repeats: dict[str, Any] | None, limit: float = 0.03) -> str | None:
    """A warning when the runs' TFLOP/s spread is above `limit` (the suite's 3% reproducibility aim)."""
    if not repeats:
        return None
    spread = repeats["stats"]["tflops_per_gpu"]["spread"]
    if spread is not None and spread > limit:
        return f"the {repeats['n']} repeats spread {spread:.1%} in TFLOP/s/GPU (max/min - 1), above {limit:.0%}"
    return None
