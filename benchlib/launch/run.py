"""Launch a resolved run: DRY_RUN printing, the run directory, sbatch submission, interactive execution."""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Mapping

from benchlib.core.errors import BenchError
from benchlib.render.scripts import render_interactive, render_sbatch
from benchlib.config.resolve import ResolvedRun, detect_local_gpus, resolve_run
from benchlib.core.rundir import LAUNCH_SCRIPT, MANIFEST_FILE, RESOLVED_FILE, atomic_write, atomic_write_json
from benchlib.launch.rundir import build_manifest, create_run_dir

GPU_ENTRIES = ("auto", "driver", "pretrain_gpt")


def say(msg: str) -> None:
    print(f"[benchlib] {msg}", file=sys.stderr, flush=True)


def memory_check(run: ResolvedRun, *, dry_run: bool) -> None:
    """Stop a launch whose per-rank memory estimate exceeds the GPU (MEM_CHECK=0 lets it through)."""
    if not run.knobs.MEM_CHECK or run.knobs.ENTRY in ("validate", "command"):
        return
    try:
        from benchlib.planning.memory import check_fits
    except ModuleNotFoundError:
        return
    try:
        check_fits(run)
    except BenchError as err:
        if not dry_run:
            raise
        say(f"warning (DRY_RUN continues): {err}")


def wandb_check(run: ResolvedRun, environ: Mapping[str, str], *, dry_run: bool) -> None:
    """WANDB=1: the job's Python must import wandb (refused otherwise); no WANDB_API_KEY means offline (warned).

    The import is tried in a subprocess of the job's interpreter (the cluster's PYTHON, or this one
    for local runs): benchlib itself never imports wandb here. Inside a container it cannot be tried.
    """
    if not run.knobs.WANDB:
        return
    from benchlib.metrics.wandb_push import wandb_mode

    mode = wandb_mode(environ)
    if mode == "offline" and not environ.get("WANDB_API_KEY") and (environ.get("WANDB_MODE") or "").lower() not in ("offline", "dryrun"):
        say("warning: WANDB=1 without WANDB_API_KEY: the job writes its WandB run offline into <run dir>/wandb; "
            "upload it later with `wandb sync <run dir>/wandb/offline-run-*` (or export WANDB_API_KEY to log online)")
    if mode == "disabled":
        say("WANDB=1 with WANDB_MODE=disabled: nothing will be logged")
        return
    python = run.cluster.PYTHON
    if run.cluster.CONTAINER_RUNTIME == "pyxis":
        say(f"WANDB=1: cannot check here that the container's {python} imports wandb; the job's logs/wandb.log will say")
        return
    why = ""
    try:
        proc = subprocess.run([python, "-c", "import wandb"], capture_output=True, text=True, timeout=180,
                              env={k: v for k, v in environ.items()})
        if proc.returncode != 0:
            lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
            why = lines[-1] if lines else f"exit status {proc.returncode}"
    except (OSError, subprocess.TimeoutExpired) as err:
        why = f"{type(err).__name__}: {err}"
    if not why:
        return
    err = BenchError(
        f"WANDB=1, but the job's Python ({python}) cannot import wandb ({why})",
        hint=f"install it for that interpreter ({python} -m pip install wandb; without internet: "
             f"{python} -m pip install --no-index --find-links .whl wandb), or run without WANDB=1 and "
             "`benchlib push <run dir>` afterwards from a machine that has wandb",
    )
    if not dry_run:
        raise err
    say(f"warning (DRY_RUN continues): {err}")


def prepare(mode: str, argv: list[str], environ: Mapping[str, str]) -> tuple[ResolvedRun, str]:
    run = resolve_run(argv, environ, mode=mode)
    say(f"model {run.model.name}, cluster {run.cluster.NAME} ({run.cluster.GPU_TYPE}), {run.knobs.NNODES} node(s) x {run.gpus_per_node} GPU(s), backend {run.backend.name} ({run.backend.reason})")
    for note in run.notes:
        say(note)
    dry_run = environ.get("DRY_RUN", "0") not in ("", "0")
    memory_check(run, dry_run=dry_run)
    wandb_check(run, environ, dry_run=dry_run)
    script = render_sbatch(run) if mode == "sbatch" else render_interactive(run)
    return run, script


def write_run_dir(run: ResolvedRun, script: str, argv: list[str], mode: str) -> Path:
    run_dir = create_run_dir(run.run_dir)
    script_path = run_dir / LAUNCH_SCRIPT
    atomic_write(script_path, script, mode=0o755)
    atomic_write_json(run_dir / RESOLVED_FILE, run.to_json())
    atomic_write_json(run_dir / MANIFEST_FILE, build_manifest(run, argv, mode))
    return script_path


def _refuse_without_gpu(argv: list[str], environ: Mapping[str, str]) -> None:
    from benchlib.config.resolve import split_argv

    assigns = dict(split_argv(argv)[0])
    entry = assigns.get("ENTRY", environ.get("ENTRY", "auto"))
    if entry in GPU_ENTRIES and detect_local_gpus(environ) == 0:
        model = assigns.get("MODEL", environ.get("MODEL", "<model>"))
        raise BenchError(
            "no NVIDIA GPU on this machine, so there is nothing to train on",
            hint=f"DRY_RUN=1 MODEL={model} bash interactive_benchmarking.sh prints what would run",
        )


def launch(mode: str, argv: list[str], environ: Mapping[str, str] | None = None) -> int:
    environ = dict(os.environ if environ is None else environ)
    dry_run = environ.get("DRY_RUN", "0") not in ("", "0")
    if mode == "interactive" and not dry_run:
        _refuse_without_gpu(argv, environ)  # before layout errors that only a missing GPU causes
    run, script = prepare(mode, argv, environ)
    if environ.get("DRY_RUN", "0") not in ("", "0"):
        sys.stdout.write(script)
        return 0
    if mode == "sbatch":
        from benchlib.launch.slurm.submit import check_can_submit, check_time_limit

        check_can_submit(run.cluster.CONTAINER_RUNTIME)  # before anything is written
        check_time_limit(run.knobs.RUN_TIME, run.cluster.PARTITION)
    script_path = write_run_dir(run, script, argv, mode)
    if mode == "sbatch":
        from benchlib.launch.slurm.submit import SbatchRefused, submit

        try:
            result = submit(run, run.run_dir, script_path)
        except SbatchRefused as err:
            shutil.rmtree(run.run_dir, ignore_errors=True)  # never queued: leave no run behind
            with contextlib.suppress(OSError):
                run.run_dir.parent.rmdir()  # the model's folder, if this run made it and it is empty
            raise BenchError(f"{err.message}; its run directory {run.run_dir} was removed", hint=err.hint) from None
        print(f"submitted job {result.job_id}")
        print(f"run directory {run.run_dir}")
        return 0
    say(f"run directory {run.run_dir}")
    proc = subprocess.run(["bash", str(script_path)], env=environ)
    return proc.returncode
