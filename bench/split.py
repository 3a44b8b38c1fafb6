"""Split an iteration into its micro-batches and the rest, from two records of one shape.

Two runs that differ only in how many micro-batches an iteration accumulates give two equations
`t = n * per_micro_batch + per_iteration`; the per-iteration part is what the step costs outside
the micro-batches (optimizer, gradient and parameter handling, the training loop's syncs). The
peer's variants in the same records are split the same way from their tokens/s/GPU, so the two
sides' overheads compare.

    python -m bench split RECORD_A RECORD_B      # record names under bench/results or paths
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchlib.core.errors import BenchError

# knobs that must agree for the two runs to share a micro-batch: everything but GBS and the run length
SHAPE_KNOBS = ("MODEL", "NUM_LAYERS", "MBS", "SEQ_LEN", "TP", "PP", "VPP", "CP", "EP", "ETP", "PR", "BACKEND",
               "FAST_OPS", "FAST_OPTIMIZER", "COMPILE", "RECOMPUTE", "A2A_OVERLAP", "DISPATCHER", "DATA")


@dataclass(frozen=True)
class IterationSplit:
    """One side's iteration time as `micro_batches * per_micro_batch_s + per_iteration_s`."""

    side: str
    """`suite` or the peer's variant (`torchtitan eager`, `torchtitan compiled`)."""
    micro_batches: tuple[int, int]
    """Micro-batches per iteration on one data-parallel rank in the two records."""
    iteration_s: tuple[float, float]
    """Measured steady iteration time in each record."""
    per_micro_batch_s: float
    """Time one more micro-batch adds to the iteration."""
    per_iteration_s: float
    """Time the iteration takes beyond its micro-batches."""


def load_record(name_or_path: str, results_dir: Path) -> dict[str, Any]:
    path = Path(name_or_path)
    if not path.suffix:
        path = results_dir / f"{name_or_path}.json"
    if not path.is_file():
        raise BenchError(f"no record {name_or_path!r} (looked for {path})",
                         hint="name a record under bench/results without .json, or give its path")
    return json.loads(path.read_text())


def _solve(side: str, n: tuple[int, int], t: tuple[float, float]) -> IterationSplit:
    per_micro_batch = (t[1] - t[0]) / (n[1] - n[0])
    return IterationSplit(side=side, micro_batches=n, iteration_s=t, per_micro_batch_s=per_micro_batch,
                          per_iteration_s=t[0] - n[0] * per_micro_batch)


def _data_parallel(rec: dict[str, Any]) -> int:
    knobs = rec["knobs"]
    model_parallel = int(knobs["TP"]) * int(knobs["PP"]) * int(knobs["CP"])
    return int(rec["gpu_count"]) // model_parallel


def split_records(a: dict[str, Any], b: dict[str, Any]) -> list[IterationSplit]:
    """The suite's split, then each peer variant both records measured."""
    for rec in (a, b):
        if not rec.get("knobs") or not rec.get("steady_iteration_time_s"):
            raise BenchError(f"record {rec.get('name')!r} has no knobs or steady iteration time",
                             hint="split training records written by `python -m bench run`")
    differ = [k for k in SHAPE_KNOBS if a["knobs"].get(k) != b["knobs"].get(k)]
    if a.get("gpu_count") != b.get("gpu_count"):
        differ.append("gpu_count")
    if differ:
        raise BenchError(f"the two records differ in {', '.join(differ)}: their micro-batches are not the same",
                         hint="split two records of one shape that differ only in GBS")
    n = tuple(int(r["knobs"]["GBS"]) // (int(r["knobs"]["MBS"]) * _data_parallel(r)) for r in (a, b))
    if n[0] == n[1]:
        raise BenchError(f"both records accumulate {n[0]} micro-batch(es) per iteration: nothing to solve",
                         hint="split records at two GBS values, e.g. the GBS 4 and GBS 32 side-by-sides")
    splits = [_solve("suite", n, (float(a["steady_iteration_time_s"]), float(b["steady_iteration_time_s"])))]
    peers = [(r.get("peer") or {}) for r in (a, b)]
    for variant in ("eager", "compiled"):
        measured = [(p.get("variants") or {}).get(variant) or {} for p in peers]
        if not all(m.get("tokens_per_s_per_gpu") for m in measured):
            continue
        gpus = int(a["gpu_count"])
        # the peer shards data over every GPU (FSDP); its step time from its tokens/s/GPU
        peer_n = tuple(int(p["global_batch"]) // (int(p["local_batch"]) * gpus) for p in peers)
        if peer_n[0] == peer_n[1]:
            continue
        seq = int(a["knobs"]["SEQ_LEN"])
        times = tuple(int(p["global_batch"]) * seq / (float(m["tokens_per_s_per_gpu"]) * gpus)
                      for p, m in zip(peers, measured))
        splits.append(_solve(f"{peers[0].get('peer', 'peer')} {variant}", peer_n, times))
    return splits


def split_table(splits: list[IterationSplit]) -> str:
    lines = ["| side | micro-batches | iteration (ms) | per micro-batch (ms) | per iteration (ms) |",
             "| --- | --- | --- | --- | --- |"]
    for s in splits:
        lines.append(f"| {s.side} | {s.micro_batches[0]} / {s.micro_batches[1]} "
                     f"| {s.iteration_s[0] * 1e3:.1f} / {s.iteration_s[1] * 1e3:.1f} "
                     f"| {s.per_micro_batch_s * 1e3:.1f} | {s.per_iteration_s * 1e3:.1f} |")
    return "\n".join(lines)
