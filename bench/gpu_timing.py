"""Timing a GPU function for bench/'s check scripts: warm-up calls, then the median of CUDA-event times."""
from __future__ import annotations

import statistics
from typing import Callable


def timed(fn: Callable[[], object], reps: int = 10, warmup: int = 3) -> float:
    """Median milliseconds of `fn()` over `reps` calls, each timed by CUDA events, after `warmup` calls."""
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)
