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
# Whole real H200 logs kept as fixtures (tests/fixtures/logs/README.md: first line = the exact
# command, `<gpus>_<model>_<backend>_...` names, native = benchlib's spec, local = Megatron's).
REAL_LOGS = Path(__file__).resolve().parent / "fixtures" / "logs"
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


def _real_logs() -> list[Path]:
    # Logs whose first line is the exact command (runs launched through the suite's scripts
    # have none; their bench/results records carry the argument list instead).
    return [p for p in sorted(REAL_LOGS.glob("*.log"))
            if "max allocated:" in p.read_text(errors="replace") and p.read_text(errors="replace").startswith("# command: ")]


LOGS = _real_logs()


@pytest.mark.skipif(not LOGS, reason="no real GPU logs with memory lines in tests/fixtures/logs/")
@pytest.mark.parametrize("log", LOGS, ids=[p.name for p in LOGS])
def test_estimate_within_15_percent_of_real_logs(log: Path) -> None:
    """The same check on the raw logs: arguments from the logged command, peak from Megatron's own
    `max allocated` lines (the largest over ranks and iterations)."""
    import re
    import shlex

    text = log.read_text(errors="replace")
    first = text.splitlines()[0]
    assert first.startswith("# command: "), "fixture logs start with their command"
    cmd = shlex.split(first[len("# command: "):])
    # logs made before the layout change ran `benchlib.driver`, with BENCH_SPEC=native in the environment
    driver = next(word for word in ("benchlib.megatron.driver", "benchlib.driver") if word in cmd)
    argv = cmd[cmd.index(driver) + 1:]
    gpus = int(re.search(r"--nproc-per-node[= ](\d+)", first).group(1))
    record = record_of_log(log)
    backend = "local" if "_local_" in log.name else "native" if any(s in text for s in ("BENCH_SPEC=native", "benchlib.spec", "benchlib.megatron.spec")) else None
    if record.get("backend") in ("native", "local", "te"):
        backend = record["backend"]
    measured = max(float(x) for x in re.findall(r"max allocated: ([\d.]+)", text)) * 1024**2
    args, backend = args_from_record({"megatron_args": argv, "gpus": gpus, "backend": backend, "fast_ops": record_fast_ops(record)})
    est = estimate_from_args(args, backend=backend)
    error = est.peak_allocated / measured - 1
    assert abs(error) <= TOLERANCE, f"{log.name}: {error:+.1%}\n{est.table()}"


PP_RECORDS = Path(__file__).resolve().parent / "fixtures" / "planning" / "h200" / "records.json"
_PP = json.loads(PP_RECORDS.read_text())["runs"] if PP_RECORDS.is_file() else []


@pytest.mark.parametrize("record", _PP, ids=[r["name"] for r in _PP])
def test_every_pipeline_rank_within_15_percent_on_pp_runs(record: dict) -> None:
    """PP>1 runs (tests/fixtures/planning/h200/README.md): not only the most loaded rank, each
    reporting rank (DP rank 0 of each stage; global rank r is pipeline stage r // (world / PP))."""
    args, backend = args_from_record(record)
    est = estimate_from_args(args, backend=backend)
    world, pp = int(record["gpus"]), int(args["pipeline_model_parallel_size"])
    assert pp > 1
    for rank, mb in record["max_allocated_mb"].items():
        stage = int(rank) // (world // pp)
        error = est.per_rank_peak[stage] / (float(mb) * 1024**2) - 1
        assert abs(error) <= TOLERANCE, f"{record['name']} rank {rank} (stage {stage}): {error:+.1%}"
    assert abs(est.peak_allocated / (_measured_mb(record) * 1024**2) - 1) <= TOLERANCE


DUMP_LOGS = [p for p in sorted([*REAL_LOGS.glob("*.log"), *PP_RECORDS.parent.glob("*.log")]) if "max allocated:" in p.read_text(errors="replace")
             and "- arguments -" in p.read_text(errors="replace")]


@pytest.mark.parametrize("log", DUMP_LOGS, ids=[p.name for p in DUMP_LOGS])
def test_estimate_from_the_logs_argument_dump(log: Path) -> None:
    """The third input path: Megatron's own argument dump as benchlib's log parser reads it
    (world size, the native spec's --spec, every default Megatron filled in)."""
    from benchlib.metrics.logparse import parse_log
    from benchlib.planning.memory import log_args

    parsed = parse_log([log])
    args, backend = log_args(parsed.config)
    args.setdefault("FAST_OPS", record_fast_ops(record_of_log(log)))
    est = estimate_from_args(args, backend=backend)
    measured = max(m.max_allocated_mb for m in parsed.memory) * 1024**2
    error = est.peak_allocated / measured - 1
    assert abs(error) <= TOLERANCE, f"{log.name}: {error:+.1%}\n{est.table()}"


def record_of_log(log: Path) -> dict:
    """The bench/results record whose run (or same-call baseline) this fixture log is."""
    rel = f"tests/fixtures/logs/{log.name}"
    for path in sorted(RESULTS.glob("*.json")):
        rec = json.loads(path.read_text())
        if rec.get("log_fixture") == rel:
            return rec
        base = rec.get("baseline") or {}
        if base.get("log_fixture") == rel:
            return base  # a local-spec baseline: no fast ops
    return {}


def record_fast_ops(record: dict) -> bool:
    """Whether the native spec's fast ops were on (records made before them carry no key: off)."""
    return bool(record.get("fast_ops", False))
