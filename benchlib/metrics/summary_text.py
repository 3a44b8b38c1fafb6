"""The short human table `benchlib parse` prints."""
from __future__ import annotations

from benchlib.metrics.result import RunResult


def _fmt(value: float | None, spec: str = ".1f", suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def format_summary(result: RunResult) -> str:
    """A short human table."""
    st = result.iteration_time_ms or {}
    rows = [
        ("model", result.model or "-"),
        ("GPUs", f"{result.num_gpus or '-'} x {result.gpu_type or '?'}  ({result.precision}, {result.layout_name or '-'})"),
        ("steady window", result.steady_window.get("description", "")),
        ("iteration time (ms)", "-" if not st else
         f"median {st['median']:.1f}  mean {st['mean']:.1f}  p10 {st['p10']:.1f}  p90 {st['p90']:.1f}  cv {st['cv'] * 100:.1f}%"),
        ("tokens/s/GPU", _fmt(result.tokens_per_s_per_gpu, ",.0f")),
        ("TFLOP/s/GPU (Megatron)", _fmt(result.tflops_per_gpu_reported)),
        ("TFLOP/s/GPU (benchlib)", _fmt(result.tflops_per_gpu_recomputed)
         + ("" if result.recomputed_vs_reported_pct is None else f"  ({result.recomputed_vs_reported_pct:+.2f}% vs Megatron)")),
        ("MFU", "-" if result.mfu is None else f"{result.mfu * 100:.1f}% of {result.peak['tflops']:g} TFLOP/s ({result.peak['precision']})"),
        ("peak memory (MB)", "-" if result.peak_memory_mb.get("max_allocated") is None else
         f"max allocated {result.peak_memory_mb['max_allocated']:.0f}, max reserved {result.peak_memory_mb['max_reserved']:.0f}"
         f" (over {len(result.peak_memory_mb['per_rank'])} rank(s))"),
        ("loss", "-" if result.loss.get("first") is None else
         f"{result.loss['first']:.4f} (it {result.loss['first_iteration']}) -> {result.loss['last']:.4f} (it {result.loss['last_iteration']})"),
        ("status", f"{result.status}: {result.status_evidence}" + (f"  [{result.status_detail}]" if result.status_detail else "")),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    lines += [f"warning: {w}" for w in result.warnings]
    return "\n".join(lines)
