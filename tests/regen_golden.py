"""Rewrite tests/golden/ from the current configs and templates: .venv/bin/python tests/regen_golden.py"""
from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib.config.cluster import CLUSTER_KEYS  # noqa: E402
from benchlib.config.knobs import KNOB_NAMES  # noqa: E402
from benchlib.config.model_config import available_models  # noqa: E402
from golden_util import GOLDEN_DIR, golden_path, render_golden  # noqa: E402


def main() -> int:
    env = {k: v for k, v in os.environ.items() if k not in KNOB_NAMES and k not in CLUSTER_KEYS}
    env.pop("WANDB_API_KEY", None)
    for mode in ("sbatch", "interactive"):
        (GOLDEN_DIR / mode).mkdir(parents=True, exist_ok=True)
        for stale in (GOLDEN_DIR / mode).glob("*.sh"):
            stale.unlink()
        for model in available_models():
            golden_path(model, mode).write_text(render_golden(model, mode, env))
            print(f"wrote {golden_path(model, mode).relative_to(GOLDEN_DIR.parent.parent)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
