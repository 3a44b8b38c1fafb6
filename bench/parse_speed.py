"""Parse throughput of benchlib.metrics.parse_log on a large multi-rank Megatron log, on one core.

Builds the log in a temporary folder (deleted afterwards): a 64-rank `srun -l` job, every rank
printing what real jobs print between iteration lines (NCCL INFO lines, Python warnings, torch
C++ warnings), the last rank printing Megatron's iteration line and timers every iteration, the
argument dump and memory reports of rank 0, eval and checkpoint lines. Then times parse_log
(best of --repeat) pinned to one CPU and records MB/s in bench/results/parse_speed.json.

A second figure times a log of iteration lines only (log interval 1, no noise): the parser's
worst case per byte, reported for honesty; the target (> 100 MB/s) is for the multi-rank log.

    .venv/bin/python bench/parse_speed.py [--size-mb 300] [--repeat 3] [--out bench/results/parse_speed.json]
"""
from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

_spec = importlib.util.spec_from_file_location("make_fixtures", ROOT / "tests" / "fixtures" / "metrics" / "make_fixtures.py")
make_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_fixtures)  # type: ignore[union-attr]

WORLD = 64
NOISE_PER_RANK = (
    "gpu-node-{node:02d}:{pid}:{pid} [{local}] NCCL INFO Channel {ch:02d}/0 : {rank}[{local}] -> {peer}[{plocal}] via P2P/CUMEM/read",
    "/usr/local/lib/python3.12/dist-packages/torch/distributed/c10d_logger.py:83: UserWarning: barrier(): using the device under current context.",
    "[rank{rank}]:[W1121 10:{mm:02d}:{ss:02d}.{us:06d} ProcessGroupNCCL.cpp:5023] Guessing device ID based on global rank. This can cause a hang if rank to GPU mapping is heterogeneous.",
)


def build_multi_rank_log(path: Path, size_mb: float) -> int:
    """Write a realistic 64-rank log of about size_mb megabytes; returns iterations written."""
    dump = (ROOT / "tests" / "fixtures" / "metrics" / "argdump.txt").read_text()
    w = make_fixtures.LogWriter(world=WORLD, style="srun")
    w.startup(dump)
    target = int(size_mb * 1024 * 1024)
    written = 0
    it = 0
    with open(path, "w") as fh:
        fh.write(w.text())
        written += len(w.text())
        while written < target:
            it += 1
            w.lines = []
            w.advance(0.66)
            for rank in range(WORLD):
                node, local = divmod(rank, 8)
                peer = (rank + 1) % WORLD
                for tmpl in NOISE_PER_RANK:
                    w.rank(rank, tmpl.format(node=node, pid=1000 + rank, local=local, ch=it % 32, rank=rank, peer=peer,
                                             plocal=peer % 8, mm=(it // 60) % 60, ss=it % 60, us=it * 7 % 1000000))
            w.iteration(it, 660.0 + (it % 7) * 0.5, train_iters=10**7, loss=7.0, flops=4.4e14)
            w.timers()
            if it in (1, 2):
                w.memory(it, 20000.0, 41000.0, 45000.0)
            if it % 500 == 0:
                w.validation(it, 7.0)
                w.checkpoint(it)
            chunk = w.text()
            fh.write(chunk)
            written += len(chunk)
    return it


def build_iteration_only_log(path: Path, size_mb: float) -> int:
    w = make_fixtures.LogWriter(world=1, style="plain")
    target = int(size_mb * 1024 * 1024)
    written = it = 0
    with open(path, "w") as fh:
        while written < target:
            w.lines = []
            for _ in range(1000):
                it += 1
                w.advance(0.66)
                w.iteration(it, 660.0, train_iters=10**8, loss=7.0, flops=4.4e14)
            chunk = w.text()
            fh.write(chunk)
            written += len(chunk)
    return it


def time_parse(path: Path, repeat: int) -> tuple[float, int]:
    from benchlib.metrics import parse_log

    best = float("inf")
    n = 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        parsed = parse_log([path])
        best = min(best, time.perf_counter() - t0)
        n = len(parsed.iterations)
    return best, n


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=float, default=300.0)
    ap.add_argument("--iter-only-mb", type=float, default=50.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "parse_speed.json")
    args = ap.parse_args(argv)
    saved = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    if saved:
        os.sched_setaffinity(0, {sorted(saved)[0]})  # one core
    try:
        return _run(args, argv)
    finally:
        if saved:
            os.sched_setaffinity(0, saved)


def _run(args: argparse.Namespace, argv: list[str] | None) -> int:
    with tempfile.TemporaryDirectory(prefix="parse-speed-") as tmp:
        big = Path(tmp) / "multi_rank.log"
        t0 = time.perf_counter()
        iters = build_multi_rank_log(big, args.size_mb)
        gen_s = time.perf_counter() - t0
        size = big.stat().st_size
        secs, found = time_parse(big, args.repeat)
        assert found == iters, (found, iters)
        big.unlink()
        small = Path(tmp) / "iterations_only.log"
        iters2 = build_iteration_only_log(small, args.iter_only_mb)
        size2 = small.stat().st_size
        secs2, found2 = time_parse(small, args.repeat)
        assert found2 == iters2
    import benchlib

    mbps = size / 1e6 / secs
    result = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in [sys.executable, "bench/parse_speed.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": {"cpu": cpu_model(), "cores_used": 1, "platform": platform.platform(), "python": platform.python_version()},
        "versions": {"benchlib": benchlib.__version__, "python": sys.version.split()[0]},
        "multi_rank_log": {"ranks": WORLD, "bytes": size, "lines_per_iteration": WORLD * len(NOISE_PER_RANK) + 4,
                           "iterations": iters, "best_seconds": round(secs, 3), "mb_per_s": round(mbps, 1),
                           "generation_seconds": round(gen_s, 1)},
        "iteration_lines_only": {"bytes": size2, "iterations": iters2, "best_seconds": round(secs2, 3),
                                 "mb_per_s": round(size2 / 1e6 / secs2, 1)},
        "repeat": args.repeat,
        "target_mb_per_s": 100,
        "meets_target": mbps > 100,
        "note": "MB = 1e6 bytes; best of `repeat` runs; the log is generated in a temporary folder and deleted",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if mbps > 100 else 1


if __name__ == "__main__":
    raise SystemExit(main())
