"""How a run ended, with the log line that shows it.

Only the last launch segment counts (an earlier crash that was restarted is history).
Precedence, first match wins: oom > nan > nccl_timeout > timeout > completed > (cancelled |
crashed: whichever the log shows first, so a cancel line that follows a crash, e.g. srun's
--kill-on-bad-exit, never masks it) > (no end marker) hang | running.

The log is then reconciled with how the launcher and Slurm say the run ended (`Ending`, kept in
the run directory's ended.json): see `reconcile`.

Hang rule: with no end marker and no failure line, the run is `hang` when
  (a) the log's own latest timestamp (Megatron's, or torch/NCCL C++ warnings) is more than
      T after the last iteration line, or
  (b) the file has not been written for more than T (it stopped without an end marker);
otherwise it is `running` (file written within T, no end marker yet).
T = max(hang_factor x median steady iteration time, hang_min_s); defaults 10 x and 300 s.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

from benchlib.metrics.logparse import Event, ParsedLog

# Exit codes of `benchlib parse` per status (2 is a usage/input error, 1 an unexpected crash).
EXIT_CODES: dict[str, int] = {
    "completed": 0,
    "running": 3,
    "timeout": 4,
    "cancelled": 5,
    "oom": 6,
    "nan": 7,
    "nccl_timeout": 8,
    "hang": 9,
    "crashed": 10,
    "node_failure": 11,
}
FAILURES = ("oom", "nan", "nccl_timeout", "crashed")
STATUSES = tuple(EXIT_CODES)

DEFAULT_HANG_FACTOR = 10.0
DEFAULT_HANG_MIN_S = 300.0


@dataclass
class RunStatus:
    status: str
    evidence: str  # the log line (or a sentence built from lines) that shows it
    detail: str = ""

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]

    def to_json(self) -> dict:
        return {**asdict(self), "exit_code": self.exit_code}


def _first(events: list[Event]) -> Event | None:
    return events[0] if events else None


def _fmt_ts(ts: float | None) -> str:
    if ts is None:
        return "?"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


def determine_status(parsed: ParsedLog, median_iter_s: float | None, *, hang_factor: float = DEFAULT_HANG_FACTOR,
                     hang_min_s: float = DEFAULT_HANG_MIN_S, now: float | None = None) -> RunStatus:
    seg = parsed.segments - 1
    ev = [e for e in parsed.events if e.segment == seg]

    def kind(*kinds: str) -> list[Event]:
        return [e for e in ev if e.kind in kinds]

    if e := _first(kind("oom")):
        return RunStatus("oom", e.line)
    iters = [r for r in parsed.iterations if r.segment == seg]
    for r in iters:
        bad = [k for k, v in r.losses.items() if math.isnan(v) or math.isinf(v)]
        if bad or r.nan_iterations > 0:
            return RunStatus("nan", r.line, detail=f"iteration {r.iteration}: " + (f"{', '.join(bad)} not finite" if bad else f"{r.nan_iterations} nan iterations"))
    if e := _first(kind("nan")):
        return RunStatus("nan", e.line)
    if e := _first(kind("nccl_timeout")):
        return RunStatus("nccl_timeout", e.line)
    if e := _first(kind("time_limit")):
        return RunStatus("timeout", e.line, detail="Slurm time limit")
    for e in kind("exit"):
        if "SIGTERM" in e.line:
            return RunStatus("timeout", e.line, detail="SIGTERM (Slurm signal before the time limit)")
        if "minutes" in e.line:
            return RunStatus("timeout", e.line, detail="--exit-duration-in-mins reached")
        if "at iteration" in e.line:
            return RunStatus("timeout", e.line, detail="--exit-interval reached")
    if e := _first(kind("done")):
        return RunStatus("completed", e.line)
    if e := _first(kind("cancelled", "traceback", "exit_code")):
        if e.kind == "cancelled":
            return RunStatus("cancelled", e.line)
        if e.kind == "traceback":
            return RunStatus("crashed", e.detail or e.line, detail=e.line)
        return RunStatus("crashed", e.line)
    last = iters[-1] if iters else None
    if last is not None and last.iteration >= last.train_iters:
        return RunStatus("completed", last.line, detail="reached train_iters (no end marker after it)")

    threshold = hang_min_s
    if median_iter_s:
        threshold = max(hang_factor * median_iter_s, hang_min_s)
    now = time.time() if now is None else now
    where = f"iteration {last.iteration} at {_fmt_ts(last.timestamp)}" if last else "no iteration line yet"
    if last is not None and last.timestamp is not None and parsed.last_timestamp is not None:
        silence = parsed.last_timestamp - last.timestamp
        if silence > threshold:
            return RunStatus("hang", parsed.last_line.strip(),
                             detail=f"no iteration line for {silence:.0f} s after {where} (limit {threshold:.0f} s); "
                                    f"log continues to {_fmt_ts(parsed.last_timestamp)}")
    idle = now - parsed.mtime
    if idle > threshold:
        return RunStatus("hang", parsed.last_line.strip(),
                         detail=f"log not written for {idle:.0f} s (limit {threshold:.0f} s) and no end marker; last: {where}")
    return RunStatus("running", parsed.last_line.strip(), detail=f"log written {idle:.0f} s ago, no end marker yet; last: {where}")


# Slurm's final job states, as the run's status (ended.json keeps Slurm's own word).
SLURM_STATES: dict[str, str] = {
    "COMPLETED": "completed",
    "FAILED": "failed",
    "OUT_OF_MEMORY": "failed",
    "TIMEOUT": "timeout",
    "DEADLINE": "timeout",
    "CANCELLED": "cancelled",
    "PREEMPTED": "cancelled",
    "NODE_FAIL": "node_failure",
    "BOOT_FAIL": "node_failure",
}


@dataclass
class Ending:
    """How the run ended according to its launcher or Slurm, not its log.

    `how`: "" (only the exit status is known), "cancelled", "timeout", or a Slurm job state.
    `exit_status`: the training step's exit status (the launch script's), when known.
    """
    how: str = ""
    exit_status: int | None = None
    source: str = ""  # "interactive launch", "sbatch job", "sacct", ...
    slurm_exit_code: str = ""  # Slurm's "status:signal"

    def outcome(self) -> str:
        """completed, failed, timeout, cancelled, node_failure, or "" when unknown."""
        how = self.how.strip()
        if how in ("cancelled", "timeout", "completed", "failed", "node_failure"):
            return how
        if how:
            return SLURM_STATES.get(how.split()[0].upper(), "")
        if self.exit_status is None:
            return ""
        return "completed" if self.exit_status == 0 else "failed"

    def describe(self) -> str:
        words = [self.source or "launcher", self.how or ("exit" if self.exit_status is not None else "")]
        if self.exit_status is not None:
            words.append(f"status {self.exit_status}")
        if self.slurm_exit_code:
            words.append(f"ExitCode {self.slurm_exit_code}")
        return " ".join(w for w in words if w)


def reconcile(log_status: RunStatus, ending: Ending | None) -> RunStatus:
    """The run's status once the launcher or Slurm has said how it ended.

    Slurm's (or the launcher's) outcome decides the status; the log decides the failure class:
    completed -> completed (a step without an end marker, e.g. ENTRY=command, is not `running`);
    failed -> the log's failure (oom, nan, nccl_timeout, crashed), else crashed;
    timeout -> timeout; cancelled -> cancelled; node failure -> node_failure.
    """
    outcome = ending.outcome() if ending else ""
    if not outcome or ending is None:
        return log_status
    said = ending.describe()
    log_words = f"the log says {log_status.status}: {log_status.evidence}".strip()
    if outcome == "completed":
        if log_status.status in ("running", "hang", "cancelled"):
            return RunStatus("completed", said, detail=log_words)
        return log_status
    if outcome == "failed":
        if log_status.status in FAILURES:
            return log_status
        return RunStatus("crashed", said, detail=log_words)
    if log_status.status == outcome:
        return log_status
    return RunStatus(outcome, said, detail=log_words)
