"""benchlib.megatron.driver with torch.profiler around a few training steps: where a step's GPU time goes.

    BENCH_PROFILE=START:END BENCH_PROFILE_OUT=DIR torchrun ... bench/profile_driver.py <megatron args>

Steps START..END-1 (1-based train_step calls) are profiled on rank 0. Written to DIR:
`profile_kernels.txt` (GPU kernels by self time), `profile_ops.txt` (torch ops by total GPU time,
children included) and `profile_summary.json` (kernel time by category, step wall time, count
of host syncs). A bench tool, not part of the suite's launch path.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CATEGORIES = [  # first match wins; matched against the lower-cased kernel name
    ("grouped_gemm", ("grouped", "_grouped_mm")),
    ("attention", ("flash", "fmha", "attention", "sdpa", "cudnn")),
    ("gemm", ("gemm", "cutlass", "sm90_xmma", "nvjet", "ampere_bf16", "cublas")),
    ("nccl", ("nccl",)),
    ("index_scatter_gather", ("index", "scatter", "gather", "masked", "nonzero", "sort", "radix", "cub::", "argsort")),
    ("reduce_norm_softmax", ("reduce", "norm", "softmax", "welford", "max", "sum", "logsumexp", "cross_entropy", "nll")),
    ("triton", ("triton",)),
    ("copy_cat", ("copy", "cat", "fill", "memcpy", "memset")),
    ("elementwise", ("elementwise", "vectorized", "unrolled", "pointwise")),
]


def category(name: str) -> str:
    low = name.lower()
    for cat, keys in CATEGORIES:
        if any(k in low for k in keys):
            return cat
    return "other"


def main() -> int:
    import torch
    import megatron.training.training as training

    start, _, end = os.environ.get("BENCH_PROFILE", "6:8").partition(":")
    start_i, end_i = int(start), int(end)
    out_dir = Path(os.environ.get("BENCH_PROFILE_OUT", "."))
    rank0 = int(os.environ.get("RANK", "0")) == 0
    original = training.train_step
    state: dict[str, Any] = {"calls": 0, "prof": None, "t0": 0.0}

    def profiled_train_step(*args: Any, **kwargs: Any) -> Any:
        state["calls"] += 1
        n = state["calls"]
        if rank0 and n == start_i:
            torch.cuda.synchronize()
            prof = torch.profiler.profile(
                activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
            )
            prof.__enter__()
            state["prof"], state["t0"] = prof, time.perf_counter()
        result = original(*args, **kwargs)
        if rank0 and n == end_i - 1 and state["prof"] is not None:
            torch.cuda.synchronize()
            wall = time.perf_counter() - state["t0"]
            state["prof"].__exit__(None, None, None)
            write_report(state["prof"], wall, end_i - start_i, out_dir)
            state["prof"] = None
        return result

    training.train_step = profiled_train_step
    from benchlib.megatron.driver.train import main as driver_main

    return driver_main()


def write_report(prof: Any, wall_s: float, steps: int, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    averages = prof.key_averages()
    (out_dir / "profile_ops.txt").write_text(
        averages.table(sort_by="device_time_total", row_limit=70, max_name_column_width=70)
    )
    kernels: dict[str, list[float]] = {}
    by_cat: dict[str, float] = {}
    syncs = 0
    for ev in prof.events():
        name = ev.name
        if ev.device_type.name == "CUDA":
            us = ev.device_time_total if hasattr(ev, "device_time_total") else ev.cuda_time_total
            k = kernels.setdefault(name, [0.0, 0])
            k[0] += us
            k[1] += 1
            by_cat[category(name)] = by_cat.get(category(name), 0.0) + us
        elif name in ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize"):
            syncs += 1
    total_us = sum(by_cat.values())
    lines = [f"{'ms/step':>9} {'calls':>6} {'share':>6}  kernel"]
    for name, (us, calls) in sorted(kernels.items(), key=lambda kv: -kv[1][0])[:60]:
        lines.append(f"{us / 1000 / steps:9.2f} {int(calls) // steps:6d} {us / total_us:6.1%}  {name[:150]}")
    (out_dir / "profile_kernels.txt").write_text("\n".join(lines) + "\n")
    summary = {
        "steps": steps,
        "wall_ms_per_step": wall_s * 1000 / steps,
        "kernel_ms_per_step": total_us / 1000 / steps,
        "by_category_ms_per_step": {k: round(v / 1000 / steps, 2) for k, v in sorted(by_cat.items(), key=lambda kv: -kv[1])},
        "host_syncs_per_step": syncs / steps,
    }
    (out_dir / "profile_summary.json").write_text(json.dumps(summary, indent=1))
    print("[profile] " + json.dumps(summary), flush=True)
    print("\n".join(lines[:40]), flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
