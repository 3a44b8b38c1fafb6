"""Push a run's result to Weights & Biases: config, per-iteration series, summary.

Offline (a local wandb run folder that `wandb sync` uploads later) when WANDB_API_KEY is not
set, online when it is. The key is read by wandb itself from the environment; this module
never prints or writes it. Runs are grouped by model and tagged with layout and precision.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from benchlib.core.errors import BenchError
from benchlib.core.secrets import redact
from benchlib.metrics.result import RunResult

DEFAULT_PROJECT = "megatron-moe-bench"


def summary_of(result: RunResult) -> dict[str, Any]:
    """The flat summary pushed to WandB (also what tests compare with the result JSON)."""
    st = result.iteration_time_ms or {}
    out: dict[str, Any] = {
        "status": result.status,
        "num_gpus": result.num_gpus,
        "gpu_type": result.gpu_type,
        "precision": result.precision,
        "layout": result.layout_name,
        "steady/first_iteration": result.steady_window.get("first_iteration"),
        "steady/last_iteration": result.steady_window.get("last_iteration"),
        "steady/lines": result.steady_window.get("intervals"),
        "steady/iteration_time_ms_median": st.get("median"),
        "steady/iteration_time_ms_mean": st.get("mean"),
        "steady/iteration_time_ms_p10": st.get("p10"),
        "steady/iteration_time_ms_p90": st.get("p90"),
        "steady/iteration_time_cv": st.get("cv"),
        "steady/tokens_per_s_per_gpu": result.tokens_per_s_per_gpu,
        "steady/tflops_per_gpu_megatron": result.tflops_per_gpu_reported,
        "steady/tflops_per_gpu_benchlib": result.tflops_per_gpu_recomputed,
        "steady/mfu": result.mfu,
        "peak_tflops": (result.peak or {}).get("tflops"),
        "memory/max_allocated_mb": result.peak_memory_mb.get("max_allocated"),
        "memory/max_reserved_mb": result.peak_memory_mb.get("max_reserved"),
        "loss/first": result.loss.get("first"),
        "loss/last": result.loss.get("last"),
    }
    return {k: v for k, v in out.items() if v is not None}


def config_of(result: RunResult) -> dict[str, Any]:
    cfg = {k: v for k, v in result.config.items() if isinstance(v, (int, float, str, bool, list)) or v is None}
    return {"model": result.model, "gpu_type": result.gpu_type, "num_gpus": result.num_gpus,
            "precision": result.precision, "layout": result.layout, "megatron": cfg}


def push_result(result: RunResult, *, directory: Path, project: str | None = None, entity: str | None = None,
                force_offline: bool = False, name: str | None = None) -> str:
    """Log one result as one WandB run. Returns a one-line description (no secrets)."""
    try:
        import wandb
    except ImportError:
        raise BenchError("wandb is not installed", hint="pip install wandb (or push from a machine that has it)") from None
    offline = force_offline or not os.environ.get("WANDB_API_KEY")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tags = [t for t in (result.layout_name, result.precision, result.gpu_type, f"{result.num_gpus}gpu" if result.num_gpus else None) if t]
    run = wandb.init(
        project=project or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT,
        entity=entity or os.environ.get("WANDB_ENTITY") or None,
        group=result.model or "unknown-model",
        job_type="benchmark",
        tags=tags,
        name=name,
        dir=str(directory),
        config=config_of(result),
        mode="offline" if offline else "online",
        settings=wandb.Settings(silent=True, console="off", save_code=False, x_disable_stats=True),
        reinit="create_new",
    )
    try:
        # The iteration number is the x axis (a restart repeats iterations; wandb's own step must not go back).
        run.define_metric("iteration")
        run.define_metric("train/*", step_metric="iteration")
        for s in result.series:
            row: dict[str, Any] = {"iteration": s["iteration"], "train/iteration_time_ms": s["elapsed_ms"],
                                   "train/in_steady_window": int(bool(s.get("in_window"))), "train/segment": s.get("segment", 0)}
            if isinstance(s.get("tflops_reported"), (int, float)):
                row["train/tflops_per_gpu_megatron"] = s["tflops_reported"]
            if isinstance(s.get("lm_loss"), (int, float)):
                row["train/lm_loss"] = s["lm_loss"]
            run.log(row)
        run.summary.update(summary_of(result))
        where = Path(run.dir).parent
        url = None if offline else run.url
    finally:
        run.finish()
        # wandb-core writes the run's last records after finish() returns; teardown waits for it,
        # so the offline folder is complete when this returns (a `wandb sync` right after works).
        wandb.teardown()
    if offline:
        return f"offline WandB run in {where} (upload later: wandb sync {where})"
    return redact(f"WandB run {url}")
