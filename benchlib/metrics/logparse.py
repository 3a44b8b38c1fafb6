"""Read Megatron-LM / Megatron-Core training logs into typed records, fast.

Logs come as users really have them: `srun -l` rank labels (` 7: `), torchrun `[default0]:`
prefixes (or both), timestamps with or without microseconds, other ranks' warnings and
tracebacks interleaved, a truncated last line, several restarts in one file or over several files.

Speed: a multi-rank log is mostly noise. Files are read in large chunks and each marker is
found with `bytes.find` (C speed); only the few matching lines are decoded and parsed with
regular expressions. No torch, no megatron import (this runs on login nodes).
"""
from __future__ import annotations

import mmap
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchlib.core.errors import BenchError
from benchlib.config.flags import parse_arg_value

CHUNK_BYTES = 64 * 1024 * 1024  # window over the mapped file; bounds the candidate-line table
TAIL_BYTES = 256 * 1024  # how much of the end is scanned for the latest timestamp

# Marker -> kind. Each is a plain substring; a hit is then parsed properly.
MARKERS: tuple[tuple[bytes, str], ...] = (
    (b"elapsed time per iteration (ms):", "iteration"),
    (b" loss at iteration", "validation"),
    (b"saving checkpoint at iteration", "checkpoint"),
    (b"memory (MB) | allocated:", "memory"),
    (b"Theoretical memory footprints:", "theoretical_memory"),
    (b"> padded vocab (size:", "padded_vocab"),
    (b"- arguments -", "args_start"),
    (b"[after training is done]", "done"),
    (b"[exiting program", "exit"),
    (b"DUE TO TIME LIMIT", "time_limit"),
    (b"CANCELLED AT", "cancelled"),
    (b"OutOfMemoryError", "oom"),
    (b"CUDA out of memory", "oom"),
    (b"CUDA error: out of memory", "oom"),
    (b"Watchdog caught collective operation timeout", "nccl_timeout"),
    (b"Some NCCL operations have failed or timed out", "nccl_timeout"),
    (b"ProcessGroupNCCL's watchdog got stuck", "nccl_timeout"),
    (b"found NaN in", "nan"),
    (b"found Inf in", "nan"),
    (b"Unexpected result nan", "nan"),
    (b"Unexpected result inf", "nan"),
    (b"Traceback (most recent call last)", "traceback"),
    (b"Exited with exit code", "exit_code"),
    (b"ChildFailedError", "exit_code"),
)

MARKERS_STR: tuple[tuple[str, str], ...] = tuple((m.decode(), k) for m, k in MARKERS)
# Substrings that find every line a marker can be on, with few passes over the bytes (each pass
# is a C-speed bytes.find; fewer and longer needles are faster). Every marker's line holds one of
# these: Slurm's and srun's lines say "error:", Python exceptions end in "Error".
ANCHORS: tuple[bytes, ...] = (
    b"iteration",  # iteration, validation, checkpoint and memory lines; "[exiting program at iteration"
    b"rror",  # Python errors (OOM, NaN asserts, crashes), torchrun's ChildFailedError, "srun: error:", "slurmstepd: error:"
    b"Traceback (most recent call last)",
    b"atchdog",  # NCCL watchdog timeout / watchdog stuck
    b"failed or timed out",
    b"------------------------ arguments ------------------------",
    b"Theoretical memory footprints:",
    b"] datetime: ",  # print_datetime: training done, exit-duration, SIGTERM
    b"> padded vocab (size:",
    b"Unexpected result",  # Megatron's rerun state machine (NaN/Inf)
)

# Line prefixes: `srun -l` label, torchrun's `[defaultN]:`, torch's `[rankN]: ` on errors.
_PREFIX = re.compile(r"^\s*(?:(\d+): ?)?(?:\[default(\d+)\]:)?(?:\[rank\d+\]: ?)?")
_TS = re.compile(r"(\d{4}-\d\d-\d\d)[ T](\d\d:\d\d:\d\d)(\.\d+)?")
_GLOG_TS = re.compile(r"\[[WEIF](\d\d)(\d\d) (\d\d:\d\d:\d\d)(\.\d+)?")  # torch/NCCL C++ warnings
_ITER = re.compile(r"iteration\s+(\d+)\s*/\s*(\d+)")
_MEM = re.compile(r"\[Rank (\d+)\] \(after (\d+) iterations\) memory \(MB\) \| allocated: ([\d.]+) \| "
                  r"max allocated: ([\d.]+) \| reserved: ([\d.]+) \| max reserved: ([\d.]+)")
_THEO = re.compile(r"weight and optimizer=([\d.]+) MB, activation=([\d.]+) MB, total=([\d.]+) MB")
_PADDED = re.compile(r"new size: (\d+)")
# `  name ..... value`; names of 48+ characters get no dots: `  name  value`.
_ARG = re.compile(r"^\s*([A-Za-z_]\w*) \.*(?: (.*?))?\s*$")
_EXC = re.compile(rb"\n(?:[ \t]*\d+: ?)?(?:\[default\d+\]:)?(?:\[rank\d+\]: ?)?((?:[A-Za-z_][\w.]*\.)?[A-Za-z_]\w*"
                  rb"(?:Error|Exception|Interrupt|Exit)\b[^\n]*)")
_EXIT_CODE = re.compile(r"(?:exit code|exitcode\s*:)\s*(-?\d+)")


@dataclass
class IterationRecord:
    """One `iteration N/M | ...` line: Megatron's averages over the interval since the last line."""
    iteration: int
    train_iters: int
    elapsed_ms: float
    timestamp: float | None = None  # seconds, log clock (naive time read as UTC)
    tflops_reported: float | None = None
    global_batch: int | None = None
    consumed_samples: int | None = None
    learning_rate: float | None = None
    losses: dict[str, float] = field(default_factory=dict)
    loss_scale: float | None = None
    grad_norm: float | None = None
    skipped_iterations: int = 0
    nan_iterations: int = 0
    extra: dict[str, float] = field(default_factory=dict)
    segment: int = 0
    after_eval_or_save: bool = False  # a validation or checkpoint line since the previous iteration line
    line: str = ""


@dataclass
class MemoryRecord:
    rank: int
    iteration: int
    allocated_mb: float
    max_allocated_mb: float
    reserved_mb: float
    max_reserved_mb: float


@dataclass
class Event:
    """A line that matters for status or steady state: end markers, failures, eval, saves."""
    kind: str
    line: str
    segment: int
    file: str
    timestamp: float | None = None
    detail: str = ""


@dataclass
class ParsedLog:
    paths: list[str]
    total_bytes: int
    iterations: list[IterationRecord]
    memory: list[MemoryRecord]
    events: list[Event]
    config: dict[str, Any]  # argument dump of the last segment that had one
    segment_configs: dict[int, dict[str, Any]]  # launch segment -> its argument dump
    segments: int  # number of launches seen (restarts + 1)
    theoretical_memory_mb: dict[str, float] | None
    last_timestamp: float | None  # latest timestamp anywhere near the end of the last file
    last_line: str
    mtime: float  # newest modification time over the files
    truncated_last_line: bool

    def events_of(self, *kinds: str, segment: int | None = None) -> list[Event]:
        return [e for e in self.events if e.kind in kinds and (segment is None or e.segment == segment)]


def strip_prefix(line: str) -> str:
    """Drop `srun -l` and torchrun prefixes."""
    return line[_PREFIX.match(line).end():]


_DAY_CACHE: dict[str, float] = {}


def _day_epoch(day: str) -> float:
    """Seconds at 00:00 of a YYYY-MM-DD date (log clock read as UTC); cached: dates repeat."""
    t = _DAY_CACHE.get(day)
    if t is None:
        t = datetime(int(day[0:4]), int(day[5:7]), int(day[8:10]), tzinfo=timezone.utc).timestamp()
        _DAY_CACHE[day] = t
    return t


def parse_timestamp(text: str) -> float | None:
    m = _TS.search(text)
    if not m:
        return None
    try:
        day = _day_epoch(m.group(1))
    except ValueError:
        return None
    hms = m.group(2)
    frac = float(m.group(3)) if m.group(3) else 0.0
    return day + int(hms[0:2]) * 3600 + int(hms[3:5]) * 60 + int(hms[6:8]) + frac


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def parse_iteration_line(line: str) -> IterationRecord | None:
    """Parse one iteration line (prefix already stripped or not). None if it is cut short."""
    m = _ITER.search(line)
    if not m:
        return None
    rec = IterationRecord(iteration=int(m.group(1)), train_iters=int(m.group(2)), elapsed_ms=float("nan"),
                          line=line.strip())
    rec.timestamp = parse_timestamp(line[: m.start()])
    for part in line[m.end():].split("|"):
        key, sep, value = part.partition(":")
        if not sep:
            continue
        key, value = key.strip(), value.strip()
        if key == "elapsed time per iteration (ms)":
            rec.elapsed_ms = _float(value) or float("nan")
        elif key == "throughput per GPU (TFLOP/s/GPU)":
            rec.tflops_reported = _float(value)
        elif key == "global batch size":
            rec.global_batch = int(value) if value.isdigit() else None
        elif key == "consumed samples":
            rec.consumed_samples = int(value) if value.isdigit() else None
        elif key == "learning rate":
            rec.learning_rate = _float(value)
        elif key == "loss scale":
            rec.loss_scale = _float(value)
        elif key == "grad norm":
            rec.grad_norm = _float(value)
        elif key == "number of skipped iterations":
            rec.skipped_iterations = int(value) if value.isdigit() else 0
        elif key == "number of nan iterations":
            rec.nan_iterations = int(value) if value.isdigit() else 0
        elif "loss" in key:
            v = _float(value)
            if v is not None:
                rec.losses[key] = v
        else:
            v = _float(value)
            if v is not None:
                rec.extra[key] = v
    # A truncated line lacks the fields after the cut: without the time it is useless.
    if rec.elapsed_ms != rec.elapsed_ms:
        return None
    return rec


def parse_memory_line(line: str) -> MemoryRecord | None:
    """Parse one `[Rank R] (after N iterations) memory (MB) | ...` line (prefix or not)."""
    m = _MEM.search(line)
    if not m:
        return None
    return MemoryRecord(int(m.group(1)), int(m.group(2)), *(float(m.group(i)) for i in range(3, 7)))


def parse_arg_line(line: str) -> tuple[str, Any] | None:
    """One `  name ....... value` line of the argument dump (prefix or not): (name, typed value)."""
    m = _ARG.match(strip_prefix(line))
    return (m.group(1), parse_arg_value(m.group(2) or "")) if m else None


class _Reader:
    """State carried across chunks and files."""

    def __init__(self) -> None:
        self.iterations: list[IterationRecord] = []
        self.memory: list[MemoryRecord] = []
        self.events: list[Event] = []
        self.configs: list[dict[str, Any]] = []
        self.segment_configs: dict[int, dict[str, Any]] = {}
        self.theoretical: dict[str, float] | None = None
        self.segment = 0
        self.segment_has_iterations = False
        self.pending_eval_or_save = False
        self.in_args: dict[str, Any] | None = None
        self.file = ""
        self.any_launch_seen = False

    def new_segment(self) -> None:
        if self.segment_has_iterations or self.any_launch_seen:
            self.segment += 1
        self.segment_has_iterations = False
        self.pending_eval_or_save = False

    def event(self, kind: str, line: str, detail: str = "") -> None:
        self.events.append(Event(kind, line.strip(), self.segment, self.file, parse_timestamp(line), detail))

    def args_line(self, line: str) -> bool:
        """Feed a line inside an argument dump. Returns False at its end."""
        body = strip_prefix(line)
        if "- end of arguments -" in body:
            self.configs.append(self.in_args or {})
            self.segment_configs[self.segment] = self.configs[-1]
            self.in_args = None
            return False
        m = _ARG.match(body)
        if m and self.in_args is not None:
            self.in_args[m.group(1)] = parse_arg_value(m.group(2) or "")
        return True

    def handle(self, kind: str, line: str, chunk: bytes, line_end: int) -> None:
        if kind == "iteration":
            rec = parse_iteration_line(line)
            if rec is None:
                return
            last = self.iterations[-1] if self.iterations else None
            # A restart without an argument dump in between: the iteration count went back.
            if last is not None and last.segment == self.segment and rec.iteration <= last.iteration:
                self.new_segment()
            rec.segment = self.segment
            rec.after_eval_or_save = self.pending_eval_or_save
            self.pending_eval_or_save = False
            self.segment_has_iterations = True
            self.iterations.append(rec)
        elif kind == "validation":
            if "validation" in line:
                self.pending_eval_or_save = True
                self.event("validation", line)
        elif kind == "checkpoint":
            self.pending_eval_or_save = True
            self.event("checkpoint", line)
        elif kind == "memory":
            rec = parse_memory_line(line)
            if rec is not None:
                self.memory.append(rec)
        elif kind == "theoretical_memory":
            m = _THEO.search(line)
            if m:
                self.theoretical = {"weight_and_optimizer": float(m.group(1)), "activation": float(m.group(2)),
                                    "total": float(m.group(3))}
        elif kind == "padded_vocab":
            # The dump is printed before the tokenizer pads the vocabulary: take the size from here.
            m = _PADDED.search(line)
            if m and self.configs and self.configs[-1].get("padded_vocab_size") is None:
                self.configs[-1]["padded_vocab_size"] = int(m.group(1))
        elif kind == "args_start":
            if "end of arguments" in line:
                return
            self.new_segment()
            self.any_launch_seen = True
            self.in_args = {}
        elif kind == "traceback":
            window = chunk[line_end: line_end + 65536]
            m = _EXC.search(window)
            self.event("traceback", line, detail=m.group(1).decode("utf-8", "replace").strip() if m else "")
        elif kind == "exit_code":
            m = _EXIT_CODE.search(line)
            if m and int(m.group(1)) == 0:
                return
            self.event("exit_code", line)
        else:
            self.event(kind, line)


def _args_block(reader: _Reader, buf, begin: int, end: int) -> int:
    """Feed argument-dump lines from `begin` to the dump's end marker (or `end`); returns where it stopped."""
    end_pos = buf.find(b"- end of arguments -", begin, end)
    stop = end if end_pos < 0 else buf.find(b"\n", end_pos, end)
    stop = end if stop < 0 else stop
    for raw in buf[begin:stop].split(b"\n"):
        if not reader.args_line(raw.decode("utf-8", "replace")):
            break
    return stop


def _scan_window(reader: _Reader, buf, start: int, end: int) -> None:
    """Lines in buf[start:end] (whole lines): find candidates by a few anchors (one C-speed pass
    each, no copy of the bytes), then classify each candidate line once, in file order."""
    if reader.in_args is not None:  # argument dump continued from the previous window
        start = _args_block(reader, buf, start, end)
    lines: dict[int, int] = {}  # line start -> line end
    for anchor in ANCHORS:
        pos = buf.find(anchor, start, end)
        while pos >= 0:
            ls = buf.rfind(b"\n", start, pos) + 1 or start
            le = buf.find(b"\n", pos, end)
            le = end if le < 0 else le
            lines[ls] = le
            pos = buf.find(anchor, le, end)  # one hit per line is enough
    skip_until = -1
    for ls in sorted(lines):
        if ls < skip_until:
            continue
        le = lines[ls]
        line = buf[ls:le].decode("utf-8", "replace")
        seen: set[str] = set()
        for marker, kind in MARKERS_STR:
            if kind not in seen and marker in line:
                seen.add(kind)
                reader.handle(kind, line, buf, le)
        if "args_start" in seen and reader.in_args is not None:
            skip_until = _args_block(reader, buf, min(le + 1, end), end)


def _last_timestamp(path: Path, year_hint: int | None) -> tuple[float | None, str]:
    """Latest timestamp in the file's tail (Megatron's or torch's C++ log format), and its last line."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        fh.seek(max(0, size - TAIL_BYTES))
        tail = fh.read().decode("utf-8", "replace")
    lines = [ln for ln in tail.splitlines() if ln.strip()]
    last_line = lines[-1] if lines else ""
    best: float | None = None
    for m in _TS.finditer(tail):
        frac = float(m.group(3)) if m.group(3) else 0.0
        try:
            t = datetime.strptime(f"{m.group(1)} {m.group(2)}", "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc).timestamp() + frac
        except ValueError:
            continue
        best = t if best is None or t > best else best
    if year_hint is not None:
        for m in _GLOG_TS.finditer(tail):
            try:
                t = datetime.strptime(f"{year_hint}-{m.group(1)}-{m.group(2)} {m.group(3)}", "%Y-%m-%d %H:%M:%S")
            except ValueError:
                continue
            ts = t.replace(tzinfo=timezone.utc).timestamp() + (float(m.group(4)) if m.group(4) else 0.0)
            best = ts if best is None or ts > best else best
    return best, last_line


def parse_log(paths: list[Path] | list[str], *, chunk_bytes: int = CHUNK_BYTES) -> ParsedLog:
    """Parse one run's log files, in the order given (restarts may be split over files)."""
    files = [Path(p) for p in paths]
    if not files:
        raise BenchError("no log files given", hint="pass the run's log file(s) or its run directory")
    for f in files:
        if not f.is_file():
            raise BenchError(f"log file not found: {f}", hint="check the path; a run directory keeps its logs in logs/")
    reader = _Reader()
    total = 0
    truncated = False
    for f in files:
        reader.file = str(f)
        size = f.stat().st_size
        if size == 0:
            continue
        with open(f, "rb") as fh:
            # Small files are read whole; large ones are mapped (no copy) and scanned in windows.
            buf = fh.read() if size <= chunk_bytes else mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            try:
                if isinstance(buf, mmap.mmap) and hasattr(mmap, "MADV_SEQUENTIAL"):
                    buf.madvise(mmap.MADV_SEQUENTIAL)
                size = len(buf)  # a log still being written may have grown since stat()
                total += size
                truncated = buf[size - 1:size] != b"\n"
                pos = 0
                while pos < size:
                    # windows end just after a newline, so no line is split between two windows
                    end = min(pos + chunk_bytes, size)
                    cut = size if end == size else buf.rfind(b"\n", pos, end) + 1
                    if cut <= pos:  # one line longer than a window: take the rest
                        cut = size
                    _scan_window(reader, buf, pos, cut)
                    pos = cut
            finally:
                if isinstance(buf, mmap.mmap):
                    buf.close()
        if reader.in_args is not None:  # dump cut off by the end of the file
            reader.configs.append(reader.in_args)
            reader.segment_configs[reader.segment] = reader.in_args
            reader.in_args = None
    year = None
    for rec in reversed(reader.iterations):
        if rec.timestamp is not None:
            year = datetime.fromtimestamp(rec.timestamp, timezone.utc).year
            break
    last_ts, last_line = _last_timestamp(files[-1], year)
    return ParsedLog(
        paths=[str(f) for f in files],
        total_bytes=total,
        iterations=reader.iterations,
        memory=reader.memory,
        events=reader.events,
        config=reader.configs[-1] if reader.configs else {},
        segment_configs=reader.segment_configs,
        segments=reader.segment + 1,
        theoretical_memory_mb=reader.theoretical,
        last_timestamp=last_ts,
        last_line=last_line,
        mtime=max(os.stat(f).st_mtime for f in files),
        truncated_last_line=truncated,
    )
