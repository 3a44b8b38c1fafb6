"""One WandB run per benchmark: its shape (group, tags, config), per-iteration rows, summary, and push.

The job's follower (benchlib.metrics.wandb_follow) and `benchlib push` build the run with the same
functions here, so a run logged live and a run pushed afterwards look the same on the dashboard:
- group = model; tags = layout, precision, GPU type, backend, GPU count; name = WANDB_RUN_NAME;
- config = resolved knobs, layout, Megatron arguments, cluster, suite commit, versions;
- history (x axis `iteration`) = what Megatron prints per iteration, plus tokens/s, from the log;
- summary = the suite's result: steady-window figures, tokens/s/GPU, MFU, status, peak memory.
The run's id is kept in the run directory (wandb_run.json): a push of that directory updates the
same run (resume) and logs only the iterations the run does not have yet.

Offline (a folder under <dir>/wandb/ that `wandb sync` uploads) unless WANDB_API_KEY is set. The key
is read by wandb itself from the environment; nothing here prints or writes it.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from benchlib.core.errors import BenchError
from benchlib.core.rundir import (INCOMPLETE_MARKER, LOGS_DIR, MANIFEST_FILE, RESOLVED_FILE, RESULT_FILE, TRAIN_LOG,
                                  WANDB_RUN_FILE, atomic_write_json)
from benchlib.core.secrets import redact
from benchlib.metrics.logparse import parse_arg_line, parse_iteration_line, parse_memory_line, strip_prefix
from benchlib.metrics.result import RunResult
from benchlib.metrics.runconfig import layout_of, precision_of, split_config

DEFAULT_PROJECT = "megatron-moe-bench"
ITERATION_MARKER = "elapsed time per iteration (ms):"
MEMORY_MARKER = "memory (MB) | allocated:"
EVIDENCE_CHARS = 500  # a status' evidence line, clipped for the summary
# result.json sections written by other parts of the suite when they exist (calibration, repeats):
# their scalars go into the summary under the section's name.
EXTRA_RESULT_SECTIONS = ("calibration", "repeats")


def wandb_mode(environ: Mapping[str, str]) -> str:
    """offline, online or disabled. Online needs WANDB_API_KEY; without it a run is written offline."""
    mode = (environ.get("WANDB_MODE") or "").strip().lower()
    if mode in ("offline", "dryrun"):
        return "offline"
    if mode == "disabled":
        return "disabled"
    return "online" if environ.get("WANDB_API_KEY") else "offline"


def metric_name(key: str) -> str:
    """A Megatron field name as a WandB key: `mtp_1 loss` -> `mtp_1_loss`."""
    return re.sub(r"[^0-9A-Za-z]+", "_", key).strip("_").lower()


# --- per-iteration rows ------------------------------------------------------------------------

class HistoryFeed:
    """WandB rows from a Megatron log's lines, fed in order (live by the follower, or a whole log by push).

    An iteration line gives one row; a memory line gives a row with the largest figures seen over the
    ranks for its iteration. A restart (the iteration count goes back) starts a new `train/segment`.
    Tokens/s needs seq_length and world size: from the run's resolved.json, or the log's argument dump.
    """

    def __init__(self, *, seq_length: int | None = None, world_size: int | None = None, segment: int = 0,
                 last_iteration: int | None = None) -> None:
        self.seq_length = seq_length
        self.world_size = world_size
        self.segment = segment
        self.last_iteration = last_iteration
        self._in_args = False
        self._memory: dict[int, dict[str, float]] = {}

    def feed(self, line: str) -> dict[str, Any] | None:
        if ITERATION_MARKER in line:
            rec = parse_iteration_line(strip_prefix(line))
            return None if rec is None else self._iteration_row(rec)
        if MEMORY_MARKER in line:
            return self._memory_row(line)
        if "end of arguments" in line:
            self._in_args = False
        elif "- arguments -" in line:
            self._in_args = True
        elif self._in_args:
            parsed = parse_arg_line(line)
            if parsed and parsed[0] in ("seq_length", "world_size") and isinstance(parsed[1], int):
                setattr(self, parsed[0], parsed[1])
        return None

    def _iteration_row(self, rec) -> dict[str, Any]:
        if self.last_iteration is not None and rec.iteration <= self.last_iteration:
            self.segment += 1
            self._memory.clear()
        self.last_iteration = rec.iteration
        row: dict[str, Any] = {"iteration": rec.iteration, "train/segment": self.segment,
                               "train/iteration_time_ms": rec.elapsed_ms}
        if rec.tflops_reported is not None:
            row["train/tflops_per_gpu_megatron"] = rec.tflops_reported
        if rec.global_batch and self.seq_length and rec.elapsed_ms > 0:
            tokens_per_s = rec.global_batch * self.seq_length / (rec.elapsed_ms / 1000.0)
            row["train/tokens_per_s"] = tokens_per_s
            if self.world_size:
                row["train/tokens_per_s_per_gpu"] = tokens_per_s / self.world_size
        for key, value in (("learning_rate", rec.learning_rate), ("grad_norm", rec.grad_norm), ("loss_scale", rec.loss_scale),
                           ("global_batch_size", rec.global_batch)):
            if value is not None:
                row[f"train/{key}"] = value
        row["train/skipped_iterations"] = rec.skipped_iterations
        row["train/nan_iterations"] = rec.nan_iterations
        for key, value in {**rec.losses, **rec.extra}.items():  # lm loss, the MoE losses, energy, ...
            row[f"train/{metric_name(key)}"] = value
        return row

    def _memory_row(self, line: str) -> dict[str, Any] | None:
        rec = parse_memory_line(line)
        if rec is None:
            return None
        best = self._memory.setdefault(rec.iteration, {})
        changed = False
        for key, value in (("allocated_mb", rec.allocated_mb), ("max_allocated_mb", rec.max_allocated_mb),
                           ("reserved_mb", rec.reserved_mb), ("max_reserved_mb", rec.max_reserved_mb)):
            if value > best.get(key, -1.0):
                best[key] = value
                changed = True
        if not changed:
            return None
        return {"iteration": rec.iteration, **{f"memory/{k}": v for k, v in best.items()}}


class LogTail:
    """The complete new lines of a growing log file, from a byte offset on, read in bounded chunks."""

    CHUNK_BYTES = 8 * 1024 * 1024

    def __init__(self, path: Path, offset: int = 0) -> None:
        self.path = Path(path)
        self.offset = offset  # bytes consumed: everything before is a complete line already read

    def lines(self, *, final: bool = False) -> Iterator[str]:
        """New complete lines; with final=True also a last line without its newline (the writer is gone)."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return
        if size < self.offset:  # replaced or truncated: read it again
            self.offset = 0
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            pending = b""
            while True:
                chunk = fh.read(self.CHUNK_BYTES)
                if not chunk:
                    break
                data = pending + chunk
                cut = data.rfind(b"\n") + 1
                complete, pending = data[:cut], data[cut:]
                self.offset += len(complete)
                yield from complete.decode("utf-8", "replace").splitlines()
            if final and pending:
                self.offset += len(pending)
                yield pending.decode("utf-8", "replace")


def feed_rows(feed: "HistoryFeed", lines: Iterable[str]) -> list[dict[str, Any]]:
    return [row for row in map(feed.feed, lines) if row]


def rows_from_series(result: RunResult) -> Iterator[dict[str, Any]]:
    """Rows of a result JSON's series (a push of a result without its log): the fields it keeps."""
    seq = result.config.get("seq_length") if isinstance(result.config.get("seq_length"), int) else None
    for s in result.series:
        row: dict[str, Any] = {"iteration": s["iteration"], "train/segment": s.get("segment", 0),
                               "train/iteration_time_ms": s["elapsed_ms"]}
        if isinstance(s.get("tflops_reported"), (int, float)):
            row["train/tflops_per_gpu_megatron"] = s["tflops_reported"]
        if isinstance(s.get("lm_loss"), (int, float)):
            row["train/lm_loss"] = s["lm_loss"]
        gbs = s.get("global_batch")
        if gbs and seq and s["elapsed_ms"] > 0:
            row["train/tokens_per_s"] = gbs * seq / (s["elapsed_ms"] / 1000.0)
            if result.num_gpus:
                row["train/tokens_per_s_per_gpu"] = row["train/tokens_per_s"] / result.num_gpus
        yield row


# --- run shape: name, group, tags, config ------------------------------------------------------

@dataclass
class RunShape:
    project: str
    entity: str | None
    name: str
    group: str
    tags: list[str]
    config: dict[str, Any]
    seq_length: int | None = None
    world_size: int | None = None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _scalars(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if isinstance(v, (int, float, str, bool, list)) or v is None}


def run_shape(*, run_dir: Path | None = None, result: RunResult | None = None, name: str | None = None,
              project: str | None = None, entity: str | None = None,
              environ: Mapping[str, str] | None = None) -> RunShape:
    """How a run looks on WandB, from its run directory (resolved.json, manifest.json) and/or its result."""
    env = os.environ if environ is None else environ
    resolved = _read_json(Path(run_dir) / RESOLVED_FILE) if run_dir else {}
    manifest = _read_json(Path(run_dir) / MANIFEST_FILE) if run_dir else {}
    meta, args = split_config(resolved) if resolved else ({}, {})
    if result is not None:
        args = {**args, **result.config}  # the log's argument dump: what ran
    knobs = resolved.get("knobs") or manifest.get("knobs") or {}
    world = meta.get("world_size") or (result.num_gpus if result else None)
    if not world and isinstance(args.get("world_size"), int):
        world = args["world_size"]
    gpu = meta.get("gpu_type") or (result.gpu_type if result else None) or manifest.get("gpu_type")
    model = resolved.get("model") or (result.model if result else None) or manifest.get("model") or "unknown-model"
    precision = result.precision if result else precision_of(args)
    layout, layout_name = (result.layout, result.layout_name) if result else layout_of(args, world)
    backend = (resolved.get("backend") or {}).get("name") or manifest.get("backend") or args.get("transformer_impl")
    versions = dict(manifest.get("versions_at_submit") or {})
    config: dict[str, Any] = {
        "model": model, "cluster": resolved.get("cluster") or manifest.get("cluster"), "gpu_type": gpu, "num_gpus": world,
        "backend": backend, "precision": precision, "layout": layout, "layout_name": layout_name,
        "knobs": _scalars(knobs), "cluster_config": _scalars(resolved.get("cluster_config") or {}),
        "suite_commit": manifest.get("suite_commit"), "versions": versions, "megatron": _scalars(args),
        "run_dir": str(run_dir) if run_dir else None,
    }
    tags = [t for t in (layout_name, precision, gpu, backend, f"{world}gpu" if world else None) if t]
    seq = args.get("seq_length") if isinstance(args.get("seq_length"), int) else None
    return RunShape(
        project=project or knobs.get("WANDB_PROJECT") or env.get("WANDB_PROJECT") or DEFAULT_PROJECT,
        entity=entity or env.get("WANDB_ENTITY") or None,
        name=name or knobs.get("WANDB_RUN_NAME") or (Path(run_dir).name if run_dir else None) or model,
        group=model, tags=list(dict.fromkeys(tags)), config=config, seq_length=seq, world_size=world,
    )


# --- summary ------------------------------------------------------------------------------------

def _flatten(prefix: str, value: Any, out: dict[str, Any], depth: int = 0) -> None:
    if isinstance(value, bool) or isinstance(value, (int, str)) or (isinstance(value, float) and math.isfinite(value)):
        out[prefix] = value
    elif isinstance(value, dict) and depth < 3:
        for k, v in value.items():
            _flatten(f"{prefix}/{k}", v, out, depth + 1)


def summary_of(result: RunResult, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The flat summary: the suite's result (also what tests compare with the result JSON).

    `extra` is the result.json as written (calibration, repeats: sections other parts of the suite add).
    """
    st = result.iteration_time_ms or {}
    peak = result.peak or {}
    out: dict[str, Any] = {
        "status": result.status,
        "failure_class": None if result.status == "completed" else result.status,
        "status_detail": result.status_detail or None,
        "status_evidence": (result.status_evidence or "")[:EVIDENCE_CHARS] or None,
        "exit_code": result.exit_code,
        "num_gpus": result.num_gpus,
        "gpu_type": result.gpu_type,
        "precision": result.precision,
        "layout": result.layout_name,
        "segments": result.segments,
        "steady/first_iteration": result.steady_window.get("first_iteration"),
        "steady/last_iteration": result.steady_window.get("last_iteration"),
        "steady/lines": result.steady_window.get("intervals"),
        "steady/iteration_time_ms_median": st.get("median"),
        "steady/iteration_time_ms_mean": st.get("mean"),
        "steady/iteration_time_ms_p10": st.get("p10"),
        "steady/iteration_time_ms_p90": st.get("p90"),
        "steady/iteration_time_cv": st.get("cv"),
        "steady/tokens_per_s_per_gpu": result.tokens_per_s_per_gpu,
        "steady/tflops_per_gpu_megatron": result.tflops_per_gpu_reported,
        "steady/tflops_per_gpu_benchlib": result.tflops_per_gpu_recomputed,
        "steady/mfu": result.mfu,
        "peak_tflops": peak.get("tflops"),
        "peak_precision": peak.get("precision"),
        "peak_source": peak.get("source"),
        "memory/max_allocated_mb": result.peak_memory_mb.get("max_allocated"),
        "memory/max_reserved_mb": result.peak_memory_mb.get("max_reserved"),
        "memory/theoretical_total_mb": (result.theoretical_memory_mb or {}).get("total"),
        "loss/first": result.loss.get("first"),
        "loss/last": result.loss.get("last"),
    }
    for section in EXTRA_RESULT_SECTIONS:
        if extra and extra.get(section) is not None:
            _flatten(section, extra[section], out)
    return {k: v for k, v in out.items() if v is not None}


# --- the run's record in its run directory ---------------------------------------------------

@dataclass
class WandbRunRecord:
    """wandb_run.json: which WandB run a run directory has, and how much of its log is in it."""
    id: str
    project: str
    entity: str | None
    mode: str
    name: str
    group: str
    # What the run holds for sure: rows of chunks that were finished (an offline chunk of a killed
    # writer may be lost). A row's step is its place in the log's rows, so a row logged again after
    # a kill gets the step it had: WandB keeps one row per step.
    log_offset: int = 0  # bytes of logs/train.log whose rows are in finished chunks
    next_step: int = 0  # wandb step of the next row
    segment: int = 0
    last_iteration: int | None = None
    live_iteration: int | None = None  # the last iteration logged by a writer still at work (progress only)
    finished: bool = False
    status: str | None = None
    writers: list[str] = field(default_factory=list)  # "follower", "push"
    updated: str = ""

    @classmethod
    def load(cls, run_dir: Path) -> "WandbRunRecord | None":
        data = _read_json(Path(run_dir) / WANDB_RUN_FILE)
        if not data.get("id"):
            return None
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in names})

    def save(self, run_dir: Path) -> None:
        self.updated = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        atomic_write_json(Path(run_dir) / WANDB_RUN_FILE, asdict(self))

    def note_writer(self, writer: str) -> None:
        if writer not in self.writers:
            self.writers.append(writer)


def new_run_id() -> str:
    import secrets

    return secrets.token_hex(4)


def _wait_for_a_fresh_offline_folder(directory: Path, run_id: str) -> None:
    """Offline folders are named by the second and the id: a second chunk of the same run in the same
    second would land in the first one's folder."""
    for clock in (time.localtime, time.gmtime):
        if (Path(directory) / "wandb" / f"offline-run-{time.strftime('%Y%m%d_%H%M%S', clock())}-{run_id}").exists():
            time.sleep(1.1)
            return


class WandbRun:
    """An open WandB run of this shape: rows with the iteration as x axis, then the summary."""

    def __init__(self, shape: RunShape, *, directory: Path, mode: str, run_id: str, system_stats: bool = False) -> None:
        try:
            import wandb
        except ImportError:
            raise BenchError("wandb is not installed", hint="pip install wandb (or push from a machine that has it)") from None
        self._wandb = wandb
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if mode == "offline":
            _wait_for_a_fresh_offline_folder(directory, run_id)
        self.mode = mode
        self.run = wandb.init(
            project=shape.project, entity=shape.entity, group=shape.group, job_type="benchmark", tags=shape.tags,
            name=shape.name, dir=str(directory), config=shape.config, mode=mode, id=run_id, resume="allow",
            settings=wandb.Settings(silent=True, console="off", save_code=False, x_disable_stats=not system_stats),
            reinit="create_new",
        )
        # The iteration is the x axis (a restart repeats iterations; wandb's own step must not go back).
        self.run.define_metric("iteration")
        for prefix in ("train/*", "memory/*"):
            self.run.define_metric(prefix, step_metric="iteration")

    @property
    def folder(self) -> Path:
        return Path(self.run.dir).parent

    def log_rows(self, rows: Iterable[dict[str, Any]], step: int) -> int:
        """Log rows from wandb step `step` on; returns the step of the next row."""
        for row in rows:
            self.run.log(row, step=step)
            step += 1
        return step

    def finish(self, summary: Mapping[str, Any]) -> str:
        """Write the summary, close the run; returns where it went (no secrets)."""
        try:
            self.run.summary.update(dict(summary))
            url = None if self.mode == "offline" else self.run.url
        finally:
            self.run.finish()
            # wandb-core writes the run's last records after finish() returns; teardown waits for it,
            # so the offline folder is complete when this returns (a `wandb sync` right after works).
            self._wandb.teardown()
        if self.mode == "offline":
            return f"offline WandB run in {self.folder} (upload later: wandb sync {self.folder})"
        return redact(f"WandB run {url}")


def job_state(run_dir: Path) -> dict[str, Any]:
    """What the run directory says about the job beyond its log: unfinished marker."""
    return {"job/incomplete": (Path(run_dir) / INCOMPLETE_MARKER).exists()}


# --- push --------------------------------------------------------------------------------------

def push_run_dir(run_dir: Path, result: RunResult, *, project: str | None = None, entity: str | None = None,
                 force_offline: bool = False, directory: Path | None = None) -> str:
    """Push a run directory into ITS WandB run: the job's (wandb_run.json) or a new one it then keeps.
    Meant for a job that has ended: a follower still at work would write after it."""
    from benchlib.metrics.collect import run_logs

    run_dir = Path(run_dir)
    record = WandbRunRecord.load(run_dir)
    shape = run_shape(run_dir=run_dir, result=result, project=project, entity=entity)
    if record is not None:
        if project and project != record.project:
            raise BenchError(f"{run_dir} already has WandB run {record.id} in project {record.project}",
                             hint=f"push without --project (or --project {record.project}); a second project would hold a duplicate")
        shape.project, shape.entity = record.project, record.entity or shape.entity
    else:
        record = WandbRunRecord(id=new_run_id(), project=shape.project, entity=shape.entity, mode="", name=shape.name,
                                group=shape.group)
    mode = "offline" if force_offline else wandb_mode(os.environ)
    logs = run_logs(run_dir)
    main_log = run_dir / LOGS_DIR / TRAIN_LOG
    feed = HistoryFeed(seq_length=shape.seq_length, world_size=shape.world_size, segment=record.segment,
                       last_iteration=record.last_iteration)
    rows: list[dict[str, Any]] = []
    log_offset = record.log_offset
    if logs == [main_log]:  # the follower's log: only what the run does not have yet
        tail = LogTail(main_log, record.log_offset)
        rows = feed_rows(feed, tail.lines(final=True))
        log_offset = tail.offset
    elif record.next_step == 0:
        for log in logs:
            rows += feed_rows(feed, LogTail(log).lines(final=True))
    raw = _read_json(run_dir / RESULT_FILE)
    wb = WandbRun(shape, directory=directory or run_dir, mode=mode, run_id=record.id)
    next_step = wb.log_rows(rows, record.next_step)
    info = wb.finish({**summary_of(result, raw), **job_state(run_dir)})
    record.log_offset = log_offset
    record.next_step, record.segment, record.last_iteration = next_step, feed.segment, feed.last_iteration
    record.mode, record.status, record.finished, record.live_iteration = mode, result.status, True, None
    record.note_writer("push")
    record.save(run_dir)
    return info


def push_result(result: RunResult, *, directory: Path, project: str | None = None, entity: str | None = None,
                force_offline: bool = False, name: str | None = None, log: Path | None = None) -> str:
    """Log a result (a result JSON, or a bare log file) as a new WandB run. Returns a one-line description."""
    shape = run_shape(result=result, name=name, project=project, entity=entity)
    if log is not None:
        feed = HistoryFeed(seq_length=shape.seq_length, world_size=shape.world_size)
        rows: Iterable[dict[str, Any]] = feed_rows(feed, LogTail(log).lines(final=True))
    else:
        rows = rows_from_series(result)
    mode = "offline" if force_offline else wandb_mode(os.environ)
    wb = WandbRun(shape, directory=directory, mode=mode, run_id=new_run_id())
    wb.log_rows(rows, 0)
    return wb.finish(summary_of(result))
