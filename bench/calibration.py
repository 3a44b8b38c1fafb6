"""GPU calibration: what this machine's GPU delivers right now, beside its datasheet.

A record's throughput means little without knowing whether the GPU was a healthy one: a throttled
or shared GPU gives lower figures for reasons outside the suite. Two short measurements on GPU 0
(about two seconds): a bf16 matmul (8192^3, the peak a training GEMM can reach) and a device-to-
device copy (HBM bandwidth), each the median of several timed repetitions, as fractions of the
GPU table's dense bf16 peak and HBM bandwidth (benchlib.core.gpus).

It runs in a process of its own (`python -m bench.calibration GPU_TYPE` prints JSON), so the bench
process never holds a CUDA context on GPU 0 while the next run (a baseline) measures its memory.
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
GEMM_N = 8192
COPY_BYTES = 2 * 1024**3
REPEATS = 10


def _timed_ms(torch: Any, fn: Any, repeats: int = REPEATS) -> float:
    for _ in range(3):  # warm-up: kernel selection, clocks
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def calibrate(gpu_type: str | None, timeout_s: int = 180) -> dict[str, Any]:
    """The calibration, measured in a child process; {"error": ...} if it could not run."""
    cmd = [sys.executable, "-m", "bench.calibration", gpu_type or ""]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"no answer in {timeout_s} s"}
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {"error": f"exit {proc.returncode}: {proc.stderr.strip()[-500:]}"}


def measure(gpu_type: str | None) -> dict[str, Any]:
    """Measured bf16 matmul TFLOP/s and copy GB/s on GPU 0, with their share of the datasheet.
    Returns {"skipped": reason} where there is no CUDA GPU (a CPU machine, the tests)."""
    try:
        import torch
    except ImportError:
        return {"skipped": "torch is not installed"}
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device"}
    dev = torch.device("cuda", 0)
    a = torch.randn(GEMM_N, GEMM_N, device=dev, dtype=torch.bfloat16)
    b = torch.randn(GEMM_N, GEMM_N, device=dev, dtype=torch.bfloat16)
    gemm_ms = _timed_ms(torch, lambda: torch.matmul(a, b))
    del a, b
    src = torch.empty(COPY_BYTES // 2, device=dev, dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    copy_ms = _timed_ms(torch, lambda: dst.copy_(src))
    del src, dst
    torch.cuda.empty_cache()
    out: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0),
        "bf16_matmul_tflops": round(2 * GEMM_N**3 / (gemm_ms / 1000) / 1e12, 1),
        "copy_gbps": round(2 * COPY_BYTES / (copy_ms / 1000) / 1e9, 1),  # read + write
        "method": f"median of {REPEATS}: bf16 matmul {GEMM_N}^3; device copy of {COPY_BYTES // 1024**3} GiB (read+write)",
    }
    if gpu_type:
        from benchlib.core.gpus import gpu_type as lookup_gpu

        spec = lookup_gpu(gpu_type)
        peak = spec.peaks["bf16"][0]
        out["bf16_matmul_of_peak"] = round(out["bf16_matmul_tflops"] / peak, 3)
        if spec.hbm_gbps:
            out["copy_of_hbm"] = round(out["copy_gbps"] / spec.hbm_gbps, 3)
    return out


if __name__ == "__main__":
    print(json.dumps(measure(sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] else None)))
