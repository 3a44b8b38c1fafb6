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
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
