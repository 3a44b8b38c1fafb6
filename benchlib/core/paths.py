"""Where the suite's folders are. Everything is found relative to the checkout, not the cwd."""
from __future__ import annotations

import os
from pathlib import Path

SUITE_ROOT = Path(os.environ.get("BENCH_SUITE_ROOT", Path(__file__).resolve().parents[2]))
MODEL_DIR = SUITE_ROOT / "model_configs" / "benchmarking"
RUNTIME_DIR = SUITE_ROOT / "runtime_configs" / "benchmarking"
CLUSTER_DIR = SUITE_ROOT / "cluster_configs" / "benchmarking"
TEMPLATE_DIR = Path(__file__).resolve().parents[1] / "render" / "templates"
