"""Shared test helpers. Area-specific fixtures live in their own modules (e.g. slurm_harness.py)."""
from __future__ import annotations

import importlib.util
import os
import socket
import sys
from pathlib import Path

import pytest

# Triton kernels (benchlib/megatron/spec/kernels) run on CPUs under Triton's interpreter, which must be
# chosen before triton is first imported; CPU tensors reach them only where a test asks for it.
os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


HAS_MEGATRON = _has("megatron.core") and _has("torch")


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs torch and megatron-core (bash tests/setup_env.sh installs them)")
    for item in items:
        if "megatron" in item.keywords and not HAS_MEGATRON:
            item.add_marker(skip)


@pytest.fixture
def clean_env() -> dict[str, str]:
    """An environment with no knob, cluster key or secret leaking in from the caller's shell."""
    from benchlib.config.cluster import CLUSTER_KEYS
    from benchlib.config.knobs import KNOB_NAMES
    from benchlib.core.secrets import is_secret_name

    drop = set(KNOB_NAMES) | set(CLUSTER_KEYS) | {"DRY_RUN"}
    return {k: v for k, v in os.environ.items() if k not in drop and not is_secret_name(k)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mpu():
    """Megatron's parallel state on a one-process gloo group (CPU), for one test module."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    created = False
    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ["MASTER_PORT"] = str(_free_port())
        dist.init_process_group("gloo", rank=0, world_size=1)
        created = True
    if not ps.model_parallel_is_initialized():
        ps.initialize_model_parallel(1, 1)
    yield ps
    ps.destroy_model_parallel()
    if created:
        dist.destroy_process_group()
