"""Read Megatron-LM / Megatron-Core training logs into typed records, fast.

Logs come as users really have them: `srun -l` rank labels (` 7: `), torchrun `[default0]:`
prefixes (or both), timestamps with or without microseconds, other ranks' warnings and
tracebacks interleaved, a truncated last line, several restarts in one file or over several files.

Speed: a multi-rank log is mostly noise. Files are read in large chunks and each marker is
found with `bytes.find` (C speed); only the few matching lines are decoded and parsed with
regular expressions. No torch, no megatron import (this runs on login nodes).
"""
from __future__ import annotations

import ast
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import BenchError

CHUNK_BYTES = 32 * 1024 * 1024
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

# Line prefixes: `srun -l` label, then optionally torchrun's `[defaultN]:`.
_PREFIX = re.compile(r"^\s*(?:(\d+): ?)?(?:\[default(\d+)\]:)?")
_TS = re.compile(r"(\d{4}-\d\d-\d\d)[ T](\d\d:\d\d:\d\d)(\.\d+)?")
_GLOG_TS = re.compile(r"\[[WEIF](\d\d)(\d\d) (\d\d:\d\d:\d\d)(\.\d+)?")  # torch/NCCL C++ warnings
_ITER = re.compile(r"iteration\s+(\d+)\s*/\s*(\d+)")
_MEM = re.compile(r"\[Rank (\d+)\] \(after (\d+) iterations\) memory \(MB\) \| allocated: ([\d.]+) \| "
                  r"max allocated: ([\d.]+) \| reserved: ([\d.]+) \| max reserved: ([\d.]+)")
_THEO = re.compile(r"weight and optimizer=([\d.]+) MB, activation=([\d.]+) MB, total=([\d.]+) MB")
_PADDED = re.compile(r"new size: (\d+)")
# `  name ..... value`; names of 48+ characters get no dots: `  name  value`.
_ARG = re.compile(r"^\s*([A-Za-z_]\w*) \.*(?: (.*?))?\s*$")
_EXC = re.compile(rb"\n(?:[ \t]*\d+: ?)?(?:\[default\d+\]:)?((?:[A-Za-z_][\w.]*\.)?[A-Za-z_]\w*"
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


def parse_timestamp(text: str) -> float | None:
    m = _TS.search(text)
    if not m:
        return None
    frac = float(m.group(3)) if m.group(3) else 0.0
    dt = datetime.strptime(f"{m.group(1)} {m.group(2)}", "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)
    return dt.timestamp() + frac


def parse_arg_value(text: str) -> Any:
    """A value as `_print_args` printed it (str() of a Python value) back into Python."""
    text = text.strip()
    if text in ("None", ""):
        return None
    if text in ("True", "False"):
        return text == "True"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        pass
    if text[:1] in "[({" and text[-1:] in "])}":
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text
    return text


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


class _Reader:
    """State carried across chunks and files."""

    def __init__(self) -> None:
        self.iterations: list[IterationRecord] = []
        self.memory: list[MemoryRecord] = []
        self.events: list[Event] = []
        self.configs: list[dict[str, Any]] = []
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
            m = _MEM.search(line)
            if m:
                self.memory.append(MemoryRecord(int(m.group(1)), int(m.group(2)), *(float(m.group(i)) for i in range(3, 7))))
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


def _scan_chunk(reader: _Reader, chunk: bytes) -> None:
    start = 0
    if reader.in_args is not None:  # argument dump continued from the previous chunk
        end_pos = chunk.find(b"- end of arguments -")
        stop = len(chunk) if end_pos < 0 else chunk.find(b"\n", end_pos)
        stop = len(chunk) if stop < 0 else stop
        for raw in chunk[:stop].split(b"\n"):
            if not reader.args_line(raw.decode("utf-8", "replace")):
                break
        start = stop
    hits: list[tuple[int, str]] = []
    for marker, kind in MARKERS:
        pos = chunk.find(marker, start)
        while pos >= 0:
            hits.append((pos, kind))
            pos = chunk.find(marker, pos + len(marker))
    hits.sort()
    last_line_start = -1
    last_kind = ""
    skip_until = -1
    for pos, kind in hits:
        if pos < skip_until:
            continue
        ls = chunk.rfind(b"\n", 0, pos) + 1
        if ls == last_line_start and kind == last_kind:
            continue  # two markers of one kind on one line
        last_line_start, last_kind = ls, kind
        le = chunk.find(b"\n", pos)
        le = len(chunk) if le < 0 else le
        line = chunk[ls:le].decode("utf-8", "replace")
        reader.handle(kind, line, chunk, le)
        if kind == "args_start" and reader.in_args is not None:
            end_pos = chunk.find(b"- end of arguments -", le)
            stop = len(chunk) if end_pos < 0 else chunk.find(b"\n", end_pos)
            stop = len(chunk) if stop < 0 else stop
            for raw in chunk[le + 1: stop].split(b"\n"):
                if not reader.args_line(raw.decode("utf-8", "replace")):
                    break
            skip_until = stop


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
        with open(f, "rb") as fh:
            carry = b""
            while True:
                block = fh.read(chunk_bytes)
                if not block:
                    if carry:  # last line without a newline: a truncated write
                        truncated = True
                        _scan_chunk(reader, carry)
                    break
                total += len(block)
                block = carry + block
                cut = block.rfind(b"\n") + 1
                if cut == 0:
                    carry = block
                    continue
                carry = block[cut:]
                _scan_chunk(reader, block[:cut])
        if reader.in_args is not None:  # dump cut off by the end of the file
            reader.configs.append(reader.in_args)
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
        segments=reader.segment + 1,
        theoretical_memory_mb=reader.theoretical,
        last_timestamp=last_ts,
        last_line=last_line,
        mtime=max(os.stat(f).st_mtime for f in files),
        truncated_last_line=truncated,
    )
