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


def prepare(mode: str, argv: list[str], environ: Mapping[str, str]) -> tuple[ResolvedRun, str]:
    run = resolve_run(argv, environ, mode=mode)
    say(f"model {run.model.name}, cluster {run.cluster.NAME} ({run.cluster.GPU_TYPE}), {run.knobs.NNODES} node(s) x {run.gpus_per_node} GPU(s), backend {run.backend.name} ({run.backend.reason})")
    for note in run.notes:
        say(note)
    dry_run = environ.get("DRY_RUN", "0") not in ("", "0")
    memory_check(run, dry_run=dry_run)
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
