"""Measure a few layouts' peak memory on a GPU machine and compare with the estimate.

    python -m benchlib.planning.gpu_check --out "$OUT" --budget 300 \\
        "pp2_ep2:Qwen3-30B-A3B-Proxy:4:NUM_LAYERS=8,PP=2,EP=2,MBS=2,GBS=32"

Each spec is NAME:MODEL:GPUS:KNOBS (native backend, mock data). Training goes through
`bench/gpu_runs.py`'s launcher (the same torchrun + benchlib.megatron.driver path as the project's GPU
records); the record (`max_allocated_mb` per rank, `megatron_args`, ...) gets this module's
estimate beside it and is written to OUT/records.json.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _gpu_runs():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("gpu_runs", ROOT / "bench" / "gpu_runs.py")
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["gpu_runs"] = mod
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def main() -> int:
    from benchlib.planning.memory import args_from_record, estimate_from_args

    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--budget", type=int, default=300)
    p.add_argument("--iters", type=int, default=6)
    p.add_argument("specs", nargs="+")
    a = p.parse_args()
    gr = _gpu_runs()
    a.out.mkdir(parents=True, exist_ok=True)
    deadline = time.time() + a.budget
    records = []
    for text in a.specs:
        name, model, gpus, knobs_text = text.split(":", 3)
        knobs = {}
        for kv in filter(None, knobs_text.split(",")):
            k, v = kv.split("=", 1)
            knobs[k] = int(v) if v.isdigit() else v
        run = gr.Run(model, int(gpus), knobs, "native", a.iters, timeout=max(30, int(deadline - time.time())))
        if time.time() > deadline - 30:
            print(f"[gpu_check] skipping {name}: out of time", flush=True)
            continue
        rec = gr.launch(name, run, a.out, deadline)
        if rec.get("max_allocated_mb"):
            args, backend = args_from_record(rec)
            est = estimate_from_args(args, backend=backend)
            measured = max(rec["max_allocated_mb"].values())
            rec["estimate_mb"] = est.peak_allocated / 2**20
            rec["estimate_error"] = est.peak_allocated / 2**20 / measured - 1
            print(f"[gpu_check] {name}: measured {measured:.0f} MB, estimated {rec['estimate_mb']:.0f} MB "
                  f"({rec['estimate_error']:+.1%}); per rank {rec['max_allocated_mb']}", flush=True)
        else:
            print(f"[gpu_check] {name}: no memory lines; rc={rec.get('rc')}\n" + "\n".join(rec.get("log_tail", [])[-15:]), flush=True)
        records.append(rec)
        (a.out / "records.json").write_text(json.dumps({"versions": gr.versions(), "runs": records}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
