"""Accuracy of the memory estimate against GPU runs recorded under bench/results/.

Each record (written by the GPU engineer from real H200 runs) that carries `max_allocated_mb`
(Megatron's `max allocated` of the most loaded rank) and `megatron_args` (the run's argument
dump) must be estimated within 15%. The estimate is computed from the arguments alone; no
term is fitted to any record. Without such records the test is skipped and says so.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchlib.planning.memory import args_from_record, estimate_from_args

RESULTS = Path(__file__).resolve().parent.parent / "bench" / "results"
TOLERANCE = 0.15


def _records() -> list[tuple[str, dict]]:
    """Every record with both fields; a file may hold one record, a list, or {"runs": [...]}."""
    out = []
    for path in sorted(RESULTS.glob("**/*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        items = data.get("runs", [data]) if isinstance(data, dict) else data if isinstance(data, list) else []
        for i, rec in enumerate(items):
            if isinstance(rec, dict) and rec.get("max_allocated_mb") and isinstance(rec.get("megatron_args"), (dict, list)):
                name = rec.get("name") or f"{i}"
                out.append((f"{path.relative_to(RESULTS)}:{name}", rec))
    return out


def _measured_mb(record: dict) -> float:
    value = record["max_allocated_mb"]
    if isinstance(value, dict):  # per rank: the most loaded one
        return max(float(v) for v in value.values())
    if isinstance(value, list):
        return max(float(v) for v in value)
    return float(value)


RECORDS = _records()


@pytest.mark.skipif(not RECORDS, reason="no GPU records with max_allocated_mb and megatron_args in bench/results/ yet")
@pytest.mark.parametrize("name,record", RECORDS, ids=[n for n, _ in RECORDS])
def test_estimate_within_15_percent_of_measured_peak(name: str, record: dict) -> None:
    args, backend = args_from_record(record)
    est = estimate_from_args(args, backend=backend)
    measured = _measured_mb(record) * 1024**2
    error = est.peak_allocated / measured - 1
    assert abs(error) <= TOLERANCE, (
        f"{name}: estimated {est.peak_allocated / 2**20:.0f} MiB vs measured {measured / 2**20:.0f} MiB "
        f"({error:+.1%})\n{est.table()}"
    )
