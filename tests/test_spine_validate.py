"""Megatron-Core's own parser and validator, on this CPU, for every shipped model at its default layout."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from benchlib.config.model_config import available_models

REPO = Path(__file__).resolve().parent.parent
MODELS = available_models()
# The models meant to run on one GPU without Transformer Engine.
PROXIES = [m for m in ("Qwen3-30B-A3B-Proxy", "DeepSeek-V2-Lite-Proxy") if m in MODELS]


def _validate(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchlib", "validate", *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.mark.megatron
@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_megatron_accepts_every_model_at_its_default_layout(model, clean_env):
    proc = _validate({**clean_env, "MODEL": model}, "CLUSTER=template")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert f"ok: Megatron-Core accepts {model}" in proc.stdout


@pytest.mark.megatron
@pytest.mark.slow
@pytest.mark.parametrize("model", PROXIES)
def test_megatron_accepts_proxies_on_one_gpu_without_te(model, clean_env):
    proc = _validate({**clean_env, "MODEL": model, "BACKEND": "native", "GPUS_PER_NODE": "1", "GPU_TYPE": "H200"}, "CLUSTER=local")
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.megatron
def test_megatron_refusal_is_reported_with_its_message(clean_env):
    # The suite's own checks pass; Megatron's validator refuses fp16 next to the derived bf16.
    model = PROXIES[0] if PROXIES else MODELS[0]
    proc = _validate({**clean_env, "MODEL": model}, "CLUSTER=template", "--fp16")
    assert proc.returncode == 2
    assert "Megatron-Core refused this run" in proc.stderr and "args.bf16" in proc.stderr


@pytest.mark.megatron
def test_unknown_megatron_flag_is_refused(clean_env):
    proc = _validate({**clean_env, "MODEL": MODELS[0]}, "CLUSTER=template", "--no-such-megatron-flag")
    assert proc.returncode == 2 and "unrecognized arguments: --no-such-megatron-flag" in proc.stderr


@pytest.mark.megatron
def test_megatron_accepts_forced_routing_and_manual_gc(clean_env):
    """ROUTING=forced and MANUAL_GC=1 render flags Megatron-Core 0.19.2 knows (and validates)."""
    model = PROXIES[0] if PROXIES else MODELS[0]
    proc = _validate({**clean_env, "MODEL": model, "ROUTING": "forced", "MANUAL_GC": "1"}, "CLUSTER=template")
    assert proc.returncode == 0, proc.stderr[-3000:]
