"""Creating a run directory and its manifest (what the launch knew when it wrote the run)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from benchlib.core.rundir import LOGS_DIR


def suite_git_commit(root: Path) -> str:
    import subprocess

    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if out.returncode != 0:
        return "unknown"
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def known_versions() -> dict[str, str]:
    """Versions visible on the submitting machine (no heavy imports)."""
    import platform
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for dist in ("megatron-moe-bench", "megatron-core", "torch", "transformer-engine", "jinja2", "pyyaml", "wandb"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return versions


def build_manifest(run: Any, argv: list[str], mode: str) -> dict[str, Any]:
    import getpass
    import socket
    import time

    from benchlib.core.paths import SUITE_ROOT
    from benchlib.core.secrets import redact

    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "mode": mode,
        "suite_commit": suite_git_commit(SUITE_ROOT),
        "versions_at_submit": known_versions(),
        "host": socket.gethostname(),
        "user": getpass.getuser(),
        "command": redact(" ".join(argv)),
        "model": run.model.name,
        "cluster": run.cluster.NAME,
        "container_image": run.cluster.CONTAINER_IMAGE if run.cluster.CONTAINER_RUNTIME == "pyxis" else None,
        "gpu_type": run.cluster.GPU_TYPE,
        "world_size": run.world_size,
        "backend": run.backend.name,
        "knobs": {k: v for k, v in run.to_json()["knobs"].items()},
        "provenance": run.provenance,
    }


def create_run_dir(run_dir: Path) -> Path:
    if run_dir.exists() and any(run_dir.iterdir()):
        raise FileExistsError(f"run directory already exists and is not empty: {run_dir}")
    (run_dir / LOGS_DIR).mkdir(parents=True, exist_ok=True)
    return run_dir
