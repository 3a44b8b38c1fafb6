"""The run directory's contract (its file names, defined here only) and atomic file writes.

A run directory lives under the cluster's OUTPUT_ROOT: `<OUTPUT_ROOT>/<MODEL>/<timestamp>-<job name>/`.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from benchlib.core.secrets import assert_no_secrets

LAUNCH_SCRIPT = "launch.sh"  # the rendered sbatch or interactive script
RESOLVED_FILE = "resolved.json"  # the resolved run (knobs, provenance, Megatron argv)
MANIFEST_FILE = "manifest.json"  # suite commit, versions, host, redacted command
LOGS_DIR = "logs"
TRAIN_LOG = "train.log"  # under LOGS_DIR: every rank's output, labelled
RESULT_FILE = "result.json"  # the parsed result, written once the run ends
CALIBRATION_DIR = "calibration"  # rank<N>.json per rank, written before training (benchlib.megatron.calibrate)
CALIBRATION_LOG = "calibration.log"  # under LOGS_DIR: the calibration step's output
REPEAT_LOG = "repeat-{n}.log"  # under LOGS_DIR with REPEATS>1: launch n (1-based) alone; train.log holds them all
INCOMPLETE_MARKER = "INCOMPLETE"  # present while the run has not finished cleanly
JOB_RECORD = "slurm_job.json"  # the Slurm job a submitted run belongs to
WANDB_RUN_FILE = "wandb_run.json"  # the run's WandB run (id, project, mode, what is logged): push updates it
WANDB_STOP_FILE = "wandb_stop"  # written by the job script when training ended (its exit status): the follower finishes
WANDB_LOG = "wandb.log"  # under LOGS_DIR: the WandB follower's own output (never mixed into TRAIN_LOG)
ENDING_FILE = "ended.json"  # how the launcher / Slurm says the run ended (metrics.status.Ending)
PROFILE_TENSORBOARD_DIR = "profile"  # PROFILE=torch: Megatron's --tensorboard-dir
TORCH_PROFILE_DIR = "torch_profile"  # PROFILE=torch: Megatron writes rank-<N>.json.gz here (beside --tensorboard-dir)


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
