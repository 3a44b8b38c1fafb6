"""Golden rendered scripts: one sbatch and one interactive script per shipped model.

Regenerate after an intended change:  .venv/bin/python tests/regen_golden.py
"""
from __future__ import annotations

from pathlib import Path

from benchlib.core.paths import SUITE_ROOT

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
STAMP = "20260101-000000"
# Values that differ between machines are pinned, so the goldens are the same everywhere.
PINNED = {
    "OUTPUT_ROOT": "/runs",
    "CONTAINER_IMAGE": "/images/megatron-moe-bench.sqsh",
    "PYTHON": "python3",
    "BACKEND": "auto",
}


def render_golden(model: str, mode: str, base_env: dict[str, str]) -> str:
    from benchlib.render.scripts import render_interactive, render_sbatch
    from benchlib.config.resolve import resolve_run

    env = {**base_env, **PINNED, "MODEL": model}
    if mode == "sbatch":
        run = resolve_run(["CLUSTER=template"], env, mode="sbatch", stamp=STAMP)
        text = render_sbatch(run)
    else:
        # The interactive golden is an 8-GPU node: the torch-native backend where the model's default
        # layout runs without Transformer Engine, else Transformer Engine (an NGC container).
        from benchlib.core.errors import BenchError

        try:
            run = resolve_run(["CLUSTER=local"], {**env, "BACKEND": "native"}, mode="interactive", stamp=STAMP, local_gpus=8)
        except BenchError:
            run = resolve_run(["CLUSTER=local"], {**env, "BACKEND": "te"}, mode="interactive", stamp=STAMP, local_gpus=8)
        text = render_interactive(run)
    return text.replace(str(SUITE_ROOT), "@SUITE_ROOT@")


def golden_path(model: str, mode: str) -> Path:
    return GOLDEN_DIR / mode / f"{model}.sh"
