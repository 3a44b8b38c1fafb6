"""The short human table `benchlib parse` prints."""
from __future__ import annotations

from benchlib.metrics.calibration import summary_line
from benchlib.metrics.profile import summary_lines as profile_lines
from benchlib.metrics.result import RunResult

_COMPONENT_LABELS = {"attention": "attention", "routed_experts": "routed experts", "shared_experts": "shared experts",
                     "dense_mlp": "dense MLP", "router": "router", "output_layer": "output layer", "mtp_other": "MTP other"}


def _components(result: RunResult) -> str:
    parts = (result.flops_by_component or {}).get("shares")
    if not parts:
        return "-"
    shown = [f"{_COMPONENT_LABELS.get(k, k)} {v * 100:.1f}%" for k, v in parts.items() if v > 0]
    return ", ".join(shown) + " (router not counted)"


def _expert_load(result: RunResult) -> str:
    load = result.expert_load
    if not load:
        return "-"
    window = "" if load["window_median"] is None else (
        f"; window {load['window_first']:.3f} -> {load['window_last']:.3f}, median {load['window_median']:.3f}")
    return (f"{load['metric']} {load['first']:.3f} (it {load['first_iteration']}) -> {load['last']:.3f} "
            f"(it {load['last_iteration']}){window} (1.0 = uniform)")


def _repeats(result: RunResult) -> str:
    rep = result.repeats
    if not rep:
        return "-"
    st = rep["stats"]["tflops_per_gpu"]
    if not st["n"]:
        return f"{rep['n']} run(s), none with a throughput"
    text = (f"{rep['n']} runs: TFLOP/s/GPU median {st['median']:.1f}, min {st['min']:.1f}, max {st['max']:.1f}, "
            f"cv {st['cv'] * 100:.1f}%, spread {st['spread'] * 100:.1f}%")
    if st["olympic_mean"] is not None:
        text += f", olympic mean {st['olympic_mean']:.1f}"
    cvs = [run["steady_cv"] for run in rep["runs"] if run["steady_cv"] is not None]
    if cvs:
        text += "; per-run steady cv " + ", ".join(f"{cv * 100:.1f}%" for cv in cvs)
    return text


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
        ("routing", result.routing or "-"),
        ("expert load", _expert_load(result)),
        ("FLOPs by component", _components(result)),
        ("calibration", summary_line(result.calibration)),
        ("repeats", _repeats(result)),
        *profile_lines(result.profile),
        ("status", f"{result.status}: {result.status_evidence}" + (f"  [{result.status_detail}]" if result.status_detail else "")),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    lines += [f"warning: {w}" for w in result.warnings]
    return "\n".join(lines)
