"""Where a profiled step's GPU time goes, from the Chrome traces PROFILE=torch leaves in a run directory.

Megatron-Core's torch.profiler handler writes `<run_dir>/torch_profile/rank-<N>.json.gz` (Chrome
trace format). Each profiled step is the CPU-side `ProfilerStep#N` annotation; the GPU's
kernels, memcpys and memsets inside that window (clipped to it) give the GPU's busy time (the
union of their intervals over all streams), its idle gaps, the kernel time by category and the
top kernels. Host syncs are the CUDA runtime's synchronize calls made inside the window, with how
long the CPU waited in them. Times in the trace are microseconds; the result is in ms.

Each of the largest idle gaps says what the host was doing: `ended_by` names the GPU event that
ended the gap and the CPU ops that launched it (the event's `args.correlation` leads to its
`cuda_runtime` / `cuda_driver` launch call, whose enclosing `cpu_op` / `user_annotation` events on
that thread are the chain); `host_wait_ms` is the longest synchronize call that returned inside
the gap (the host waited for the GPU to drain, then had to queue new work). A trace without
correlations or launch events (a trimmed or CPU-only one) leaves `launch` and `cpu_ops` null.

Read with plain json/gzip: this runs on the login node (no torch).
"""
from __future__ import annotations

import gzip
import json
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchlib.core.rundir import TORCH_PROFILE_DIR

TRACE_GLOB = "rank-*.json.gz"
STEP_PREFIX = "ProfilerStep#"
STEP_CATEGORY = "user_annotation"  # the CPU-side annotation; 'gpu_user_annotation' is its GPU shadow
GPU_EVENT_CATEGORIES = {"kernel": None, "gpu_memcpy": "memcpy", "gpu_memset": "memset"}  # None: by kernel name
SYNC_CALLS = ("cudaStreamSynchronize", "cudaEventSynchronize", "cudaDeviceSynchronize")
TOP_KERNELS = 15
TOP_GAPS = 8
SUMMARY_GAPS = 5  # the printed summary's gap lines
LAUNCH_CATEGORIES = ("cuda_runtime", "cuda_driver")  # Triton launches through the driver (cuLaunchKernelEx)
CPU_OP_CATEGORIES = ("cpu_op", "user_annotation")
MAX_CHAIN = 5  # CPU op names kept per gap: the outermost two and the innermost two around "..."
CHAIN_ELISION = "..."
GPU_NAME_CHARS = 60

# Kernel categories: first match wins, matched against the lower-cased kernel name.
LIBRARY_CATEGORIES = [
    ("grouped_gemm", ("grouped", "_grouped_mm", "groupproblemshape")),  # the last: torch._grouped_mm's CUTLASS kernel
    ("attention", ("flash", "fmha", "attention", "sdpa", "cudnn")),
    ("gemm", ("gemm", "cutlass", "sm90_xmma", "nvjet", "ampere_bf16", "cublas")),
    ("nccl", ("nccl",)),
]
TORCH_CATEGORIES = [
    ("index_scatter_gather", ("index", "scatter", "gather", "masked", "nonzero", "sort", "radix", "cub::", "argsort")),
    ("reduce_norm_softmax", ("reduce", "norm", "softmax", "welford", "max", "sum", "logsumexp", "cross_entropy", "nll")),
    ("copy_cat", ("copy", "cat", "fill", "memcpy", "memset")),
    ("elementwise", ("elementwise", "vectorized", "unrolled", "pointwise")),
]
# Triton names a kernel after its Python function (`_adamw_kernel`, `triton_poi_fused_add_0`): a bare
# identifier. Checked after the libraries (cuBLAS's nvjet_*, cuDNN's, NCCL's are bare identifiers too)
# and before torch's own kernels, which are `void at::native::...<...>(...)` or mangled `_Z...` names.
_BARE_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
CATEGORY_NAMES = [c for c, _ in LIBRARY_CATEGORIES] + ["triton"] + [c for c, _ in TORCH_CATEGORIES] + ["other", "memcpy", "memset"]


class TraceError(Exception):
    """A trace that cannot be read (truncated, corrupt, not a Chrome trace)."""


def kernel_category(name: str) -> str:
    low = name.lower()
    for cat, keys in LIBRARY_CATEGORIES:
        if any(k in low for k in keys):
            return cat
    if "triton" in low or (_BARE_IDENTIFIER.fullmatch(name) and not name.startswith("_Z")):
        return "triton"
    for cat, keys in TORCH_CATEGORIES:
        if any(k in low for k in keys):
            return cat
    return "other"


def read_trace_events(path: Path) -> list[dict[str, Any]]:
    """The trace's events (`.json.gz` as the profiler writes it, or plain `.json`); TraceError for a
    file that is not a whole Chrome trace."""
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rt", encoding="utf-8") as fh:
                data = json.load(fh)
        else:
            data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, EOFError, zlib.error, ValueError) as err:  # BadGzipFile is an OSError, JSONDecodeError a ValueError
        raise TraceError(f"{type(err).__name__}: {err}") from None
    events = data.get("traceEvents") if isinstance(data, dict) else data
    if not isinstance(events, list):
        raise TraceError("no traceEvents list (not a Chrome trace)")
    return [e for e in events if isinstance(e, dict)]


def profiled_steps(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The CPU-side `ProfilerStep#N` annotations, in time order; TraceError when there is none."""
    steps = sorted((e for e in events if e.get("cat") == STEP_CATEGORY
                    and str(e.get("name", "")).startswith(STEP_PREFIX) and "ts" in e and "dur" in e),
                   key=lambda e: float(e["ts"]))
    if not steps:
        raise TraceError(f"no '{STEP_PREFIX}N' events (cat {STEP_CATEGORY!r}): "
                         "not a torch.profiler trace of training steps")
    return steps


def step_number(step: dict[str, Any]) -> int | str:
    number = str(step["name"])[len(STEP_PREFIX):]
    return int(number) if number.isdigit() else number


def gpu_event_category(event: dict[str, Any]) -> str:
    """A GPU event's category: `memcpy` / `memset` by event kind, a kernel's by its name."""
    return GPU_EVENT_CATEGORIES[event["cat"]] or kernel_category(str(event.get("name", "?")))


@dataclass(frozen=True)
class _Span:
    start: float  # us, clipped to the step
    end: float
    name: str
    category: str
    starts_inside: bool  # launched in this step (counts as a call here)


def _union(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[tuple[float, float]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def _ms(us: float) -> float:
    return round(us / 1000.0, 3)


_QUALIFIER = re.compile(r"(?:\(anonymous namespace\)|[A-Za-z_][A-Za-z0-9_]*)::")


def short_gpu_name(name: str) -> str:
    """A GPU event's name for one line: without `void`, the parameter list and namespace qualifiers
    (`void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>, std::array<...> >(int, ...)`
    -> `vectorized_elementwise_kernel<4, FillFunctor<float>, ...>`), at most about GPU_NAME_CHARS.
    Memcpy / Memset names (`Memcpy DtoH (Device -> Pinned)`) are kept whole."""
    if name.startswith(("Memcpy", "Memset")):
        return name
    text = name[len("void "):] if name.startswith("void ") else name
    if text.endswith(")"):  # drop the trailing parameter list, matching its parentheses
        depth = 0
        for i in range(len(text) - 1, -1, -1):
            depth += {")": 1, "(": -1}.get(text[i], 0)
            if depth == 0:
                text = text[:i] if i > 0 else text
                break
    text = _QUALIFIER.sub("", text).strip()
    if len(text) <= GPU_NAME_CHARS:
        return text
    # too long: keep the template's leading arguments that fit (the functor, say), then "...>"; an
    # argument that does not fit whole goes by its template's name (`BinaryFunctor<...>`)
    open_at = text.find("<")
    if 0 < open_at < GPU_NAME_CHARS - 5:
        kept, depth, arg_start = text[:open_at + 1], 0, open_at + 1
        for i in range(open_at + 1, len(text)):
            depth += {"<": 1, ">": -1}.get(text[i], 0)
            if depth < 0 or (depth == 0 and text[i] == ","):  # the template's end, or one argument's
                arg = text[arg_start:i].strip()
                if len(kept) + len(arg) + len(", ...>") > GPU_NAME_CHARS:
                    head = arg.split("<", 1)[0] + "<...>"  # a long argument by its own template's name
                    if "<" in arg and len(kept) + len(head) + len(", ...>") <= GPU_NAME_CHARS:
                        kept += ("" if kept.endswith("<") else ", ") + head
                    break
                kept += ("" if kept.endswith("<") else ", ") + arg
                arg_start = i + 1
                if depth < 0:
                    return kept + ">"
        return kept + ("...>" if kept.endswith("<") else ", ...>")
    return text[:GPU_NAME_CHARS - 3] + "..."


class _HostIndex:
    """The trace's host side, for what launched a GPU event: launch calls by correlation and each
    thread's CPU ops (`cpu_op`, `user_annotation`) sorted by start."""

    def __init__(self, events: list[dict[str, Any]]) -> None:
        self.launches: dict[Any, dict[str, Any]] = {}
        ops: dict[Any, list[tuple[float, float, str]]] = {}
        for e in events:
            cat = e.get("cat")
            if cat in LAUNCH_CATEGORIES:
                corr = (e.get("args") or {}).get("correlation")
                if corr is not None and "ts" in e:
                    self.launches.setdefault(corr, e)
            elif cat in CPU_OP_CATEGORIES and e.get("ph") == "X" and "ts" in e and "dur" in e:
                name = str(e.get("name", "?"))
                if not name.startswith(STEP_PREFIX):
                    ops.setdefault(e.get("tid"), []).append((float(e["ts"]), float(e["ts"]) + float(e["dur"]), name))
        # outermost first: earlier start, then the longer of two starting together
        self.ops = {tid: sorted(rows, key=lambda r: (r[0], -r[1])) for tid, rows in ops.items()}

    def launch_of(self, gpu_event: dict[str, Any]) -> dict[str, Any] | None:
        corr = (gpu_event.get("args") or {}).get("correlation")
        return None if corr is None else self.launches.get(corr)

    def chain(self, launch: dict[str, Any]) -> list[str]:
        """The CPU ops on the launch's thread that enclose the launch call, outermost first; at most
        MAX_CHAIN names (the outermost and innermost kept around CHAIN_ELISION)."""
        start = float(launch["ts"])
        end = start + float(launch.get("dur", 0.0))
        names = [name for op_start, op_end, name in self.ops.get(launch.get("tid"), ())
                 if op_start <= start and op_end >= end]
        if len(names) > MAX_CHAIN:
            keep = (MAX_CHAIN - 1) // 2
            names = names[:keep] + [CHAIN_ELISION] + names[-keep:]
        return names


def _ended_by(event: dict[str, Any], host: _HostIndex) -> dict[str, Any]:
    """The GPU event that ended a gap, its launch call and the CPU ops around that call (None where
    the trace has no launch for it)."""
    launch = host.launch_of(event)
    return {"gpu": short_gpu_name(str(event.get("name", "?"))),
            "launch": None if launch is None else str(launch.get("name", "?")),
            "cpu_ops": None if launch is None else host.chain(launch)}


def _host_wait(gap_start: float, gap_end: float, syncs: list[dict[str, Any]]) -> tuple[float | None, str | None]:
    """The longest synchronize call that returned inside the gap: (its duration in ms, its name)."""
    inside = [e for e in syncs if gap_start <= float(e["ts"]) + float(e.get("dur", 0.0)) <= gap_end]
    if not inside:
        return None, None
    longest = max(inside, key=lambda e: float(e.get("dur", 0.0)))
    return _ms(float(longest.get("dur", 0.0))), str(longest["name"])


def step_profile(step: dict[str, Any], gpu_events: list[dict[str, Any]], syncs: list[dict[str, Any]],
                 host: _HostIndex | None = None) -> dict[str, Any]:
    """One step's figures: the GPU's work inside the step's wall window, and the host syncs made in
    it; each of the largest idle gaps with what ended it and the host's wait before it."""
    host = host if host is not None else _HostIndex([])  # without the host side: launch and cpu_ops null
    t0 = float(step["ts"])
    t1 = t0 + float(step["dur"])
    spans: list[_Span] = []
    first_at: dict[float, dict[str, Any]] = {}  # clipped start -> the GPU event starting there first
    for ev in gpu_events:
        start, end = float(ev["ts"]), float(ev["ts"]) + float(ev.get("dur", 0.0))
        if end <= t0 or start >= t1:
            continue
        spans.append(_Span(max(start, t0), min(end, t1), str(ev.get("name", "?")), gpu_event_category(ev), start >= t0))
        first_at.setdefault(max(start, t0), ev)
    busy = _union([(s.start, s.end) for s in spans])
    busy_us = sum(end - start for start, end in busy)
    gaps: list[tuple[float, float, float, float]] = []  # (length, offset from the step's start, start, end), us
    cursor = t0
    for start, end in busy:
        if start > cursor:
            gaps.append((start - cursor, cursor - t0, cursor, start))
        cursor = max(cursor, end)
    if t1 > cursor:
        gaps.append((t1 - cursor, cursor - t0, cursor, t1))
    by_category: dict[str, float] = {}
    kernels: dict[str, list[Any]] = {}  # name -> [us, calls, category]
    for s in spans:
        by_category[s.category] = by_category.get(s.category, 0.0) + (s.end - s.start)
        k = kernels.setdefault(s.name, [0.0, 0, s.category])
        k[0] += s.end - s.start
        k[1] += 1 if s.starts_inside else 0
    in_step = [e for e in syncs if t0 <= float(e["ts"]) < t1]
    by_call: dict[str, int] = {}
    for e in in_step:
        by_call[e["name"]] = by_call.get(e["name"], 0) + 1
    return {
        "step": step_number(step),
        "wall_ms": _ms(t1 - t0),
        "gpu_busy_ms": _ms(busy_us),
        "gpu_idle_ms": _ms((t1 - t0) - busy_us),
        "largest_idle_gaps": [_gap(*gap, first_at, syncs, host)
                              for gap in sorted(gaps, reverse=True)[:TOP_GAPS]],
        "gpu_ms_by_category": {c: _ms(us) for c, us in sorted(by_category.items(), key=lambda kv: -kv[1])},
        "kernels": {name: {"ms": v[0] / 1000.0, "calls": v[1], "category": v[2]} for name, v in kernels.items()},
        "host_syncs": {"count": len(in_step), "by_call": by_call, "cpu_wait_ms": _ms(sum(float(e.get("dur", 0.0)) for e in in_step))},
    }


def _gap(length: float, offset: float, start: float, end: float, first_at: dict[float, dict[str, Any]],
         syncs: list[dict[str, Any]], host: _HostIndex) -> dict[str, Any]:
    """One idle gap (us) with what ended it (None for the step's trailing gap: the step ended
    first) and the host's wait in a sync before it."""
    ender = first_at.get(end)
    wait_ms, wait_call = _host_wait(start, end, syncs)
    return {"ms": _ms(length), "at_ms": _ms(offset),
            "ended_by": None if ender is None else _ended_by(ender, host),
            "host_wait_ms": wait_ms, "host_wait_call": wait_call}


def _mean_over_steps(steps: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(steps)

    def mean(key: str) -> float:
        return round(sum(s[key] for s in steps) / n, 3)

    categories: dict[str, float] = {}
    kernels: dict[str, list[Any]] = {}
    for s in steps:
        for cat, ms in s["gpu_ms_by_category"].items():
            categories[cat] = categories.get(cat, 0.0) + ms / n
        for name, k in s["kernels"].items():
            acc = kernels.setdefault(name, [0.0, 0, k["category"]])
            acc[0] += k["ms"] / n
            acc[1] += k["calls"] / n
    top = sorted(kernels.items(), key=lambda kv: -kv[1][0])[:TOP_KERNELS]
    gaps = sorted(({"step": s["step"], **g} for s in steps for g in s["largest_idle_gaps"]), key=lambda g: -g["ms"])
    wall = mean("wall_ms")
    return {
        "wall_ms": wall,
        "gpu_busy_ms": mean("gpu_busy_ms"),
        "gpu_idle_ms": mean("gpu_idle_ms"),
        "gpu_busy_share": round(mean("gpu_busy_ms") / wall, 4) if wall else None,
        "gpu_ms_by_category": {c: round(ms, 3) for c, ms in sorted(categories.items(), key=lambda kv: -kv[1])},
        # whole names: kernels of one CUTLASS template differ only deep inside theirs
        "top_kernels": [{"name": name, "category": cat, "ms": round(ms, 3), "calls": round(calls, 2)}
                        for name, (ms, calls, cat) in top],
        "largest_idle_gaps": gaps[:TOP_GAPS],
        "host_syncs": round(sum(s["host_syncs"]["count"] for s in steps) / n, 2),
        "host_sync_cpu_wait_ms": round(sum(s["host_syncs"]["cpu_wait_ms"] for s in steps) / n, 3),
    }


def trace_profile(path: Path) -> dict[str, Any]:
    """One rank's trace: its profiled steps and their mean. TraceError for an unreadable trace or one
    without a profiled step."""
    events = read_trace_events(path)
    steps = profiled_steps(events)
    gpu_events = [e for e in events if e.get("cat") in GPU_EVENT_CATEGORIES and "ts" in e]
    syncs = [e for e in events if e.get("cat") == "cuda_runtime" and e.get("name") in SYNC_CALLS and "ts" in e]
    try:
        host = _HostIndex(events)
        per_step = [step_profile(s, gpu_events, syncs, host) for s in steps]
    except (KeyError, TypeError, ValueError) as err:  # an event without a number where the format has one
        raise TraceError(f"malformed event ({type(err).__name__}: {err})") from None
    mean = _mean_over_steps(per_step)
    for s in per_step:  # per step: the figures; the kernel table is kept once, averaged
        del s["kernels"]
    return {"steps": per_step, "mean_per_step": mean}


def _rank_of(path: Path) -> str:
    return path.name[len("rank-"):-len(".json.gz")]


def profile_for(run_dir: Path, *, profile_knob: str | None = None) -> tuple[dict[str, Any] | None, list[str]]:
    """The run's profile (None without a readable trace) and warnings: a PROFILE=torch run without a
    trace, a trace that cannot be read."""
    trace_dir = Path(run_dir) / TORCH_PROFILE_DIR
    paths = sorted(trace_dir.glob(TRACE_GLOB), key=lambda p: (len(p.name), p.name)) if trace_dir.is_dir() else []
    warnings: list[str] = []
    if not paths:
        if profile_knob == "torch":
            warnings.append(f"PROFILE=torch but no trace {trace_dir}/{TRACE_GLOB}: Megatron writes it when the last "
                            "profiled step (PROFILE_STEPS' END) ends; did training reach it? The result has no profile")
        return None, warnings
    ranks: dict[str, Any] = {}
    for path in paths:
        try:
            ranks[_rank_of(path)] = {"trace": str(path.relative_to(run_dir)), **trace_profile(path)}
        except TraceError as err:
            warnings.append(f"unreadable profiler trace {path} ({err}); the result's profile leaves it out")
    if not ranks:
        return None, warnings
    return {
        "source": f"torch.profiler Chrome traces in {TORCH_PROFILE_DIR}/ (PROFILE=torch); per step: the CPU's "
                  f"{STEP_PREFIX}N window, the GPU's kernels/memcpys/memsets clipped to it",
        "ranks": ranks,
    }, warnings


def gap_line(gap: dict[str, Any]) -> str:
    """One idle gap in a line: where, what ended it, the CPU ops that launched that, the host's sync
    before it. `ended_by` / `host_wait_ms` may be missing (a result written before they existed)."""
    where = f" of step {gap['step']}" if "step" in gap else ""
    text = f"{gap['ms']:.2f} ms at +{gap['at_ms']:.1f} ms{where}"
    ended_by = gap.get("ended_by")
    if ended_by:
        text += f" -> {ended_by['gpu']}"
        if ended_by.get("cpu_ops"):
            text += f" [{' > '.join(ended_by['cpu_ops'])}]"
    elif "ended_by" in gap:
        text += " -> the step's end"
    if gap.get("host_wait_ms") is not None:
        text += f"; host waited {gap['host_wait_ms']:.3f} ms in {gap['host_wait_call']}"
    return text


def summary_lines(profile: dict[str, Any] | None) -> list[tuple[str, str]]:
    """Rows for the printed summary: the first profiled rank's busy/idle per step, its top
    categories, its syncs and its largest idle gaps (one line each)."""
    if not profile or not profile.get("ranks"):
        return []
    rank, data = next(iter(profile["ranks"].items()))
    m = data["mean_per_step"]
    share = f" ({m['gpu_busy_share'] * 100:.0f}% busy)" if m["gpu_busy_share"] is not None else ""
    busy = m["gpu_busy_ms"] or 0.0
    cats = ", ".join(f"{c} {ms:.1f} ms ({ms / busy * 100:.0f}%)" if busy else f"{c} {ms:.1f} ms"
                     for c, ms in list(m["gpu_ms_by_category"].items())[:4])
    return [
        (f"GPU per step (rank {rank})",
         f"wall {m['wall_ms']:.1f} ms, busy {busy:.1f} ms, idle {m['gpu_idle_ms']:.1f} ms{share} over "
         f"{len(data['steps'])} profiled step(s)"),
        ("GPU time by kind", cats or "-"),
        ("host syncs per step", f"{m['host_syncs']:g}, CPU waited {m['host_sync_cpu_wait_ms']:.1f} ms"),
        *((f"idle gap {i}", gap_line(gap)) for i, gap in enumerate(m["largest_idle_gaps"][:SUMMARY_GAPS], 1)),
    ]
