"""Steady-state window over iteration lines, and iteration-time statistics.

Rules (per launch segment, so a restart warms up again):
1. the segment's first line (Megatron's iteration-1 line: start-up cost) is dropped;
2. the first interval after it is dropped (it still averages in warm-up iterations);
3. every interval that overlaps the first `skip` iterations of the segment is dropped;
   default skip = max(3, 10% of the iterations the segment logged);
4. every interval with a validation or checkpoint-save line inside it is dropped;
5. launches whose argument dump differs from the last launch's in a key that changes speed
   (layout, batch, shape, precision, implementation) are left out entirely.
Each kept line is Megatron's average over its interval; statistics are over those lines.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field

from benchlib.metrics.logparse import IterationRecord

DEFAULT_MIN_SKIP = 3
DEFAULT_SKIP_FRACTION = 0.10


@dataclass
class SteadyWindow:
    first_iteration: int | None
    last_iteration: int | None
    intervals: int  # iteration lines kept
    iterations: list[int] = field(default_factory=list)  # the kept lines' iteration numbers
    skip: list[int] = field(default_factory=list)  # warm-up iterations skipped, per segment
    dropped: dict[str, list[int]] = field(default_factory=dict)  # reason -> iteration numbers
    fallback: bool = False  # True when no line survived the rules and all but the first lines were used

    def describe(self) -> str:
        if not self.intervals:
            return "no steady window (too few iteration lines)"
        text = f"iterations {self.first_iteration}..{self.last_iteration} ({self.intervals} log lines)"
        parts = [f"{k}: {len(v)}" for k, v in self.dropped.items() if v]
        if parts:
            text += "; dropped " + ", ".join(parts)
        if self.fallback:
            text += "; FALLBACK: warm-up rules left nothing, window includes warm-up"
        return text

    def to_json(self) -> dict:
        return asdict(self)


def default_skip(logged_iterations: int) -> int:
    return max(DEFAULT_MIN_SKIP, math.ceil(DEFAULT_SKIP_FRACTION * logged_iterations))


def select_window(records: list[IterationRecord], skip: int | None = None, *,
                  exclude_segments: set[int] | frozenset[int] = frozenset()) -> tuple[list[IterationRecord], SteadyWindow]:
    """`exclude_segments`: launches that ran another configuration than the last one (their lines go to `other_config`)."""
    kept: list[IterationRecord] = []
    dropped: dict[str, list[int]] = {"first_line": [], "first_interval": [], "warmup": [], "eval_or_save": [],
                                     "other_config": []}
    skips: list[int] = []
    not_first: list[IterationRecord] = []
    segments = sorted({r.segment for r in records})
    for seg in segments:
        recs = [r for r in records if r.segment == seg]
        if seg in exclude_segments:
            dropped["other_config"].extend(r.iteration for r in recs)
            continue
        # The first line of a launch is iteration start+1; what came before it was done earlier.
        seg_start = recs[0].iteration
        seg_skip = default_skip(recs[-1].iteration - seg_start + 1) if skip is None else skip
        skips.append(seg_skip)
        warm_end = seg_start + seg_skip - 1
        prev_iter = seg_start - 1
        for i, r in enumerate(recs):
            interval_start = prev_iter + 1
            prev_iter = r.iteration
            if i == 0:
                dropped["first_line"].append(r.iteration)
                continue
            not_first.append(r)
            if i == 1:
                dropped["first_interval"].append(r.iteration)
            elif interval_start <= warm_end:
                dropped["warmup"].append(r.iteration)
            elif r.after_eval_or_save:
                dropped["eval_or_save"].append(r.iteration)
            else:
                kept.append(r)
    fallback = False
    if not kept and not_first:
        kept, fallback = not_first, True
    window = SteadyWindow(
        first_iteration=kept[0].iteration if kept else None,
        last_iteration=kept[-1].iteration if kept else None,
        intervals=len(kept),
        iterations=[r.iteration for r in kept],
        skip=skips,
        dropped=dropped,
        fallback=fallback,
    )
    return kept, window


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default method)."""
    data = sorted(values)
    if not data:
        raise ValueError("no values")
    pos = (len(data) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


@dataclass
class TimeStats:
    median: float
    mean: float
    p10: float
    p90: float
    cv: float  # sample standard deviation / mean; 0 with one value
    min: float
    max: float
    n: int

    def to_json(self) -> dict:
        return asdict(self)


def time_stats(values: list[float]) -> TimeStats | None:
    if not values:
        return None
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return TimeStats(median=statistics.median(values), mean=mean, p10=percentile(values, 10),
                     p90=percentile(values, 90), cv=sd / mean if mean else 0.0,
                     min=min(values), max=max(values), n=len(values))
