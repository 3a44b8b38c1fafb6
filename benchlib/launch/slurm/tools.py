"""Calling the Slurm client tools: find them, run them, turn failures into BenchErrors."""
from __future__ import annotations

import os
import shutil
import subprocess
from typing import Mapping, Sequence

from benchlib.core.errors import BenchError


def require(binary: str) -> str:
    """Path of a Slurm client tool, or a BenchError that says what to do without Slurm."""
    path = shutil.which(binary)
    if path is None:
        raise BenchError(
            f"`{binary}` is not on PATH: this machine has no Slurm client",
            hint="run from a Slurm login node, or preview the job with DRY_RUN=1 "
            "(or run on a node you hold with interactive_benchmarking.sh)",
        )
    return path


def have(binary: str) -> bool:
    return shutil.which(binary) is not None


def run(
    args: Sequence[str],
    *,
    check: bool = True,
    cwd: str | os.PathLike | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 60.0,
) -> subprocess.CompletedProcess:
    """Run a Slurm tool (args[0] looked up on PATH). With `check`, a non-zero exit is a BenchError."""
    exe = require(args[0])
    try:
        res = subprocess.run(
            [exe, *args[1:]], capture_output=True, text=True, cwd=cwd, env=None if env is None else dict(env), timeout=timeout
        )
    except subprocess.TimeoutExpired:
        raise BenchError(
            f"`{' '.join(args[:2])}` did not answer in {timeout:.0f} s", hint="is slurmctld reachable? try `sinfo`"
        ) from None
    if check and res.returncode != 0:
        raise BenchError(
            f"`{' '.join(args)}` failed (exit {res.returncode}): {(res.stderr or res.stdout).strip()}",
            hint="check the message above from Slurm; `sinfo` shows whether the controller is reachable",
        )
    return res


def srun_supports_containers() -> bool:
    """True when srun has the pyxis plugin (its help lists --container-image)."""
    res = run(["srun", "--help"], check=False)
    return "--container-image" in (res.stdout + res.stderr)
