"""Launch a resolved run: DRY_RUN printing, the run directory, sbatch submission, interactive execution."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
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
        refuse_busy_gpus(environ)
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
    if run.knobs.NNODES == 1 and not environ.get("MASTER_PORT"):
        # A fixed port collides with any other run on the box (or a leftover rank of an earlier one).
        environ["MASTER_PORT"] = str(free_port())
    return run_script(script_path, environ)


def free_port() -> int:
    """A TCP port nobody listens on now (the kernel's pick)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def run_script(script_path: Path, environ: Mapping[str, str]) -> int:
    """Run the interactive script to its end. SIGINT/SIGTERM/SIGHUP to this process are passed on
    to the script, whose trap stops every process of the run; this process never kills it itself
    (subprocess.run would SIGKILL it on Ctrl-C, leaving the ranks behind)."""
    proc: subprocess.Popen | None = None
    received: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        received.append(signum)
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signum)

    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    # Handlers first: a signal with a handler starts out at its default in the script, where a
    # signal this process inherited as ignored (a background job of a script, `nohup ... &` starts
    # with SIGINT ignored) would stay ignored, and bash cannot trap a signal ignored at its start.
    previous = {sig: signal.signal(sig, forward) for sig in handled}
    try:
        proc = subprocess.Popen(["bash", str(script_path)], env=dict(environ))
        if received:  # arrived while the script was starting
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(received[-1])
        return proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def gpu_holders() -> list[tuple[str, str, str, str]]:
    """(pid, process name, used memory, command line) of each compute process on this machine's GPUs."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    try:
        out = subprocess.run([exe, "--query-compute-apps=pid,process_name,used_memory", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    holders = []
    for line in out.stdout.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 3 or not parts[0].isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{parts[0]}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            cmdline = ""
        holders.append((parts[0], parts[1], parts[2], cmdline or parts[1]))
    return holders


def refuse_busy_gpus(environ: Mapping[str, str]) -> None:
    """A GPU held by another process (often a leftover rank of an earlier run) is refused:
    the new run would run out of memory or measure a shared GPU."""
    holders = gpu_holders()
    if not holders:
        return
    listing = "; ".join(f"pid {pid} ({mem}): {cmd[:200]}" for pid, _name, mem, cmd in holders)
    if environ.get("ALLOW_BUSY_GPU", "0") not in ("", "0"):
        say(f"warning: GPU(s) in use by other processes, launching anyway (ALLOW_BUSY_GPU): {listing}")
        return
    pids = " ".join(pid for pid, *_ in holders)
    raise BenchError(
        f"{len(holders)} process(es) already use this machine's GPUs: {listing}",
        hint=f"stop them (kill {pids}; kill -9 {pids} if they ignore it), or launch anyway with ALLOW_BUSY_GPU=1",
    )
