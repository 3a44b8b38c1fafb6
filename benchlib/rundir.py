"""Run directories and atomic file writes.

Layout of a run directory (under the cluster's OUTPUT_ROOT, never inside the source tree's
configs): `<OUTPUT_ROOT>/<MODEL>/<timestamp>-<job name>/` holding `launch.sh` (the rendered
script), `resolved.json` (the resolved run), `manifest.json`, `logs/`, `result.json` once parsed.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from .secrets import assert_no_secrets


def atomic_write(path: Path, text: str, *, mode: int | None = None, check_secrets: bool = True) -> None:
    """Write beside the target, fsync, then rename: readers see the old file or the whole new one."""
    path = Path(path)
    if check_secrets:
        assert_no_secrets(text, str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp creates 0600; results and scripts are meant to be read by the group too.
        os.chmod(tmp, mode if mode is not None else 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


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

    from .paths import SUITE_ROOT
    from .secrets import redact

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
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    return run_dir
