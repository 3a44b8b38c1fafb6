"""The job's WandB run, written while it trains: `benchlib wandb-follow RUN_DIR` (started by the job script).

It tails logs/train.log beside training (on the first node) and logs each iteration as its line
appears, with the project's log parser; no torch, no Megatron, no TensorBoard. When training has
ended it writes the suite's summary (result.json, which the script's `benchlib collect` wrote just
before) into the same run and finishes it. Megatron's own WandB writer stays off, so a benchmark is
exactly one run.

When training has ended:
- the script writes wandb_stop (training's exit status) after `benchlib collect`: the normal end;
- the script is gone (`--parent-pid`): killed or interrupted; the summary is computed from the log;
- SIGTERM (Slurm cancels the job, or stops a follower step at the time limit): the follower keeps
  following for `--term-grace` seconds, then ends as above.
In every case the run gets a status. Its id is kept in wandb_run.json, so `benchlib push RUN_DIR`
later updates this run (e.g. after a hard kill) instead of making another.
"""
from __future__ import annotations

import json
import os
import platform
import signal
import sys
import time
from pathlib import Path
from typing import Any, Mapping

from benchlib.core.errors import BenchError
from benchlib.core.rundir import LOGS_DIR, RESULT_FILE, TRAIN_LOG, WANDB_STOP_FILE
from benchlib.metrics.wandb_push import (HistoryFeed, LogTail, WandbRun, WandbRunRecord, feed_rows, job_state, new_run_id,
                                         run_shape, summary_of, wandb_mode)

DEFAULT_INTERVAL_S = 2.0
DEFAULT_TERM_GRACE_S = 25.0  # under Slurm's default KillWait (30 s) between SIGTERM and SIGKILL
JOB_PACKAGES = ("megatron-core", "torch", "transformer-engine", "triton", "wandb")


def say(msg: str) -> None:
    print(f"[wandb-follow {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def job_versions() -> dict[str, str]:
    """Versions in the job's own interpreter (package metadata only: nothing heavy is imported)."""
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for dist in JOB_PACKAGES:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return versions


def _alive(pid: int | None) -> bool:
    if pid is None:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _exit_status(stop_file: Path) -> int | None:
    try:
        text = stop_file.read_text().strip()
    except OSError:
        return None
    return int(text) if text.lstrip("-").isdigit() else None


def end_of_job_summary(run_dir: Path, *, since: float, exit_status: int | None) -> dict[str, Any]:
    """The suite's summary of the job: result.json when the job's collect wrote it (after `since`),
    else the result computed from the log now; a status in every case."""
    from benchlib.metrics.collect import run_dir_result
    from benchlib.metrics.result import RunResult

    path = run_dir / RESULT_FILE
    summary: dict[str, Any]
    try:
        if path.is_file() and path.stat().st_mtime >= since:
            raw = json.loads(path.read_text())
            summary = summary_of(RunResult.from_json(raw), raw)
        else:
            summary = summary_of(run_dir_result(run_dir))
    except (BenchError, OSError, ValueError) as err:
        failed = exit_status not in (None, 0)
        message = err.message if isinstance(err, BenchError) else str(err)
        summary = {"status": "crashed" if failed else "unknown", "failure_class": "crashed" if failed else None,
                   "status_detail": f"no result: {message}"}
        summary = {k: v for k, v in summary.items() if v is not None}
    if exit_status is not None:
        summary["job/exit_status"] = exit_status
    return {**summary, **job_state(run_dir)}


class _Terminated:
    def __init__(self) -> None:
        self.at: float | None = None

    def __call__(self, signum, frame) -> None:
        if self.at is None:
            self.at = time.monotonic()
            say("SIGTERM: following a little longer, then finishing the run")


def follow(run_dir: Path, *, parent_pid: int | None = None, interval_s: float = DEFAULT_INTERVAL_S,
           term_grace_s: float = DEFAULT_TERM_GRACE_S, environ: Mapping[str, str] | None = None) -> int:
    """Follow one run directory's training log into its WandB run until training has ended."""
    env = os.environ if environ is None else environ
    run_dir = Path(run_dir)
    since = time.time() - 1.0  # file times have coarse resolution on some file systems
    mode = wandb_mode(env)
    if mode == "disabled":
        say("WANDB_MODE=disabled: nothing to log")
        return 0
    terminated = _Terminated()
    signal.signal(signal.SIGTERM, terminated)
    stop_file = run_dir / WANDB_STOP_FILE

    shape = run_shape(run_dir=run_dir, environ=env)
    shape.config["versions"] = {**shape.config.get("versions", {}), **job_versions()}
    record = WandbRunRecord.load(run_dir)  # a requeued job continues its run
    if record is None:
        record = WandbRunRecord(id=new_run_id(), project=shape.project, entity=shape.entity, mode=mode,
                                name=shape.name, group=shape.group)
    else:
        shape.project, shape.entity = record.project, record.entity or shape.entity
    try:
        wb = WandbRun(shape, directory=run_dir, mode=mode, run_id=record.id, system_stats=True)
    except Exception as err:  # noqa: BLE001 (wandb raises many kinds; the job must go on)
        if mode != "online":
            raise
        say(f"online WandB failed ({type(err).__name__}: {err}); writing the run offline instead")
        mode = "offline"
        wb = WandbRun(shape, directory=run_dir, mode=mode, run_id=record.id, system_stats=True)
    record.mode, record.finished = mode, False
    record.note_writer("follower")
    record.save(run_dir)
    wb.run.summary.update({"status": "running"})
    say(f"run {record.id} ({mode}), project {shape.project}, following {run_dir / LOGS_DIR / TRAIN_LOG}")

    feed = HistoryFeed(seq_length=shape.seq_length, world_size=shape.world_size, segment=record.segment,
                       last_iteration=record.last_iteration)
    tail = LogTail(run_dir / LOGS_DIR / TRAIN_LOG, record.log_offset)
    step = record.next_step
    why = ""
    while True:
        if stop_file.exists():
            why = "training ended"
        elif not _alive(parent_pid):
            why = "the job script is gone"
        elif terminated.at is not None and time.monotonic() - terminated.at > term_grace_s:
            why = "terminated"
        rows = feed_rows(feed, tail.lines(final=bool(why)))
        if rows:
            step = wb.log_rows(rows, step)
            record.live_iteration = feed.last_iteration
            record.save(run_dir)
        if why:
            break
        time.sleep(interval_s)

    exit_status = _exit_status(stop_file)
    summary = {**end_of_job_summary(run_dir, since=since, exit_status=exit_status), "job/end": why}
    info = wb.finish(summary)
    # The chunk is complete on disk (or sent): from here on, push continues after it.
    record.log_offset, record.next_step, record.segment, record.last_iteration = tail.offset, step, feed.segment, feed.last_iteration
    record.status, record.finished, record.live_iteration = summary.get("status"), True, None
    record.save(run_dir)
    say(f"{why}: status {summary.get('status')}, {step} rows; {info}")
    return 0


def cmd_wandb_follow(args) -> int:
    try:
        return follow(args.run_dir, parent_pid=args.parent_pid, interval_s=args.interval, term_grace_s=args.term_grace)
    except BenchError:
        raise
    except Exception as err:  # noqa: BLE001 (the follower never takes the job down; say why it stopped)
        print(f"[wandb-follow] stopped: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        return 1
