"""Submitting rendered scripts with `sbatch --parsable`, and job arrays for sweeps.

`submit(run, run_dir, script_path)` is what `benchlib.launch.run` calls in sbatch mode. Every
#SBATCH directive (job name, output, time, signal, dependency) is in the rendered script itself,
so what DRY_RUN prints is exactly what is submitted; the sbatch command line only adds
`--parsable` (and `--array` for arrays).
"""
from __future__ import annotations

import datetime as _dt
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from benchlib.core.errors import BenchError
from benchlib.core.rundir import LAUNCH_SCRIPT, LOGS_DIR, TRAIN_LOG
from benchlib.render.scripts import shell_quote
from benchlib.launch.slurm import tools
from benchlib.launch.slurm.record import write_record

if TYPE_CHECKING:  # no import cycle at run time; launch imports us
    from benchlib.config.resolve import ResolvedRun


@dataclass(frozen=True)
class SubmitResult:
    job_id: str  # "123" (for an array: the array's job id)
    run_dir: Path
    script_path: Path
    command: list[str]
    array: str | None = None
    task_ids: list[str] = field(default_factory=list)  # "123_0", "123_1", ... for arrays

    def summary(self) -> str:
        kind = f"array job {self.job_id} ({self.array})" if self.array else f"job {self.job_id}"
        return f"Submitted {kind}\nrun dir: {self.run_dir}"


def check_can_submit(container_runtime: str) -> None:
    """Fail before anything is queued: no sbatch, or pyxis asked for and srun does not know it."""
    tools.require("sbatch")
    if container_runtime == "pyxis":
        tools.require("srun")
        if not tools.srun_supports_containers():
            raise BenchError(
                "CONTAINER_RUNTIME=pyxis but `srun --help` does not list --container-image: "
                "the pyxis plugin is not installed on this cluster",
                hint="run without a container: set CONTAINER_RUNTIME=none in the cluster conf (or in the environment) "
                "with the software installed on the nodes; or ask the admins for pyxis/enroot",
            )


class SbatchRefused(BenchError):
    """sbatch answered with an error: nothing was queued."""


_PARSABLE = re.compile(r"^(\d+)(;\S+)?$")
_SLURM_TIME = re.compile(r"^(?:(\d+)-)?(?:(\d+):)?(\d+)(?::(\d+))?$")


def slurm_time_seconds(text: str) -> int | None:
    """Seconds in a time as sinfo prints it (D-HH:MM:SS, HH:MM:SS, MM:SS, MM); None for infinite."""
    m = _SLURM_TIME.match(text.strip())
    if not m:
        return None
    days, a, b, c = m.groups()
    if a is None and c is None:  # "MM"
        hours, minutes, seconds = 0, int(b), 0
    elif c is None:  # "MM:SS", or "D-HH:MM"... sinfo writes D-HH:MM:SS, so read two fields as MM:SS
        hours, minutes, seconds = (0, int(a), int(b)) if days is None else (int(a), int(b), 0)
    else:
        hours, minutes, seconds = int(a), int(b), int(c)
    return ((int(days or 0) * 24 + hours) * 60 + minutes) * 60 + seconds


def partition_time_limit(partition: str) -> tuple[str, str] | None:
    """(partition, its time limit as sinfo prints it) -- the default partition when `partition` is
    empty -- or None when sinfo cannot tell (no sinfo, no answer, no such partition)."""
    if not tools.have("sinfo"):
        return None
    try:
        res = tools.run(["sinfo", "-h", "-o", "%P %l"], check=False, timeout=15)
    except BenchError:
        return None
    if res.returncode != 0:
        return None
    for line in res.stdout.splitlines():
        fields = line.split()
        if len(fields) != 2:
            continue
        name, limit = fields
        is_default = name.endswith("*")
        name = name.rstrip("*")
        if (partition and name == partition) or (not partition and is_default):
            return name, limit
    return None


def check_time_limit(run_time: str, partition: str) -> None:
    """Refuse a RUN_TIME beyond the partition's limit (Slurm would leave the job pending forever)."""
    from benchlib.config.knobs import run_time_seconds

    found = partition_time_limit(partition)
    if found is None:
        return
    name, limit_text = found
    limit = slurm_time_seconds(limit_text)
    if limit is not None and run_time_seconds(run_time) > limit:
        raise BenchError(
            f"RUN_TIME={run_time} is beyond partition {name}'s time limit of {limit_text} (sinfo)",
            hint=f"set RUN_TIME to {limit_text} or less, or choose another PARTITION",
        )


def _sbatch(args: list[str], cwd: Path) -> str:
    # The submitter's environment is exported to the job (Slurm's default --export=ALL): that is how a
    # WANDB_API_KEY reaches the job without ever being written into the script.
    res = tools.run(args, check=False, cwd=cwd)
    if res.returncode != 0:
        said = (res.stderr or res.stdout).strip() or "(nothing)"
        # name the setting behind what sbatch's own words point at, not a guess at all of them
        named = [key for key in ("PARTITION", "ACCOUNT", "QOS") if key.lower() in said.lower()]
        where = f" (check {', '.join(named)} in the cluster conf or the environment)" if named else ""
        raise SbatchRefused(
            f"sbatch refused the job (exit {res.returncode}); nothing was queued",
            hint=f"sbatch said: {said}{where}; DRY_RUN=1 prints the script it was given",
        )
    lines = [ln.strip() for ln in res.stdout.splitlines() if ln.strip()]
    m = _PARSABLE.match(lines[-1]) if lines else None
    if not m:
        raise BenchError(f"could not read a job id from sbatch's answer: {res.stdout!r}")
    return m.group(1)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def submit(run: "ResolvedRun", run_dir: Path, script_path: Path | None = None, *, quiet: bool = True) -> SubmitResult:
    """`sbatch --parsable` the run's rendered script from its run directory; record the job id in
    `slurm_job.json` (printing it is the caller's: `benchlib.launch.run` does, unless quiet=False here)."""
    run_dir = Path(run_dir)
    if script_path is None:
        if run_dir.is_file():  # called as submit(run, script_path)
            run_dir, script_path = run_dir.parent, run_dir
        else:
            script_path = run_dir / LAUNCH_SCRIPT
    script_path = Path(script_path)
    check_can_submit(run.cluster.CONTAINER_RUNTIME)
    cmd = ["sbatch", "--parsable", str(script_path)]
    job_id = _sbatch(cmd, cwd=run_dir)
    record: dict[str, Any] = {
        "job_id": job_id,
        "job_name": getattr(run, "job_name", ""),
        "model": run.knobs.MODEL,
        "cluster": run.cluster.NAME,
        "script": script_path.name if script_path.parent == run_dir else str(script_path),
        "log": f"{LOGS_DIR}/{TRAIN_LOG}",
        "submitted_at": _now(),
        "sbatch": shlex.join(cmd),
    }
    write_record(run_dir, record)
    result = SubmitResult(job_id=job_id, run_dir=run_dir, script_path=script_path, command=cmd)
    if not quiet:  # benchlib.launch.run prints the job id and run directory itself
        print(result.summary())
    return result


# --- job arrays (sweeps) --------------------------------------------------------------------------

# Directives that may differ between the runs of one array (each run keeps its own in launch.sh).
_PER_RUN = ("--job-name", "-J", "--output", "-o", "--error", "-e", "--dependency", "-d", "--comment")


def _directives(script: str) -> list[str]:
    out = []
    for line in script.splitlines():
        if line.startswith("#SBATCH "):
            out.append(line[len("#SBATCH "):].strip())
        elif line.strip() and not line.startswith("#"):
            break  # sbatch stops reading directives at the first command
    return out


def _directive_name(d: str) -> str:
    return d.split("=", 1)[0].split(" ", 1)[0]


def array_script(launch_scripts: Sequence[Path], *, job_name: str, output_dir: Path) -> str:
    """An sbatch array script whose task i runs launch_scripts[i] (rendered run scripts, one per run).

    The resource directives (nodes, tasks, GPUs, time, partition, account, signal, ...) are taken from
    the runs' own scripts and must agree: one array has one allocation shape. Each run still writes
    its log, markers and result into its own run directory; the array's own output goes to
    `output_dir/slurm-%A_%a.out`.
    """
    if not launch_scripts:
        raise BenchError("an array needs at least one run script")
    shared: list[str] | None = None
    for path in launch_scripts:
        ds = [d for d in _directives(Path(path).read_text()) if _directive_name(d) not in _PER_RUN]
        if shared is None:
            shared = ds
        elif ds != shared:
            raise BenchError(
                f"{path} asks Slurm for a different allocation than {launch_scripts[0]}: {sorted(set(ds) ^ set(shared))}",
                hint="put runs with different NNODES/RUN_TIME/cluster in separate arrays (or submit them one by one)",
            )
    lines = [
        "#!/usr/bin/env bash",
        f"#SBATCH --job-name={shell_quote(job_name)}",
        f"#SBATCH --output={shell_quote(str(Path(output_dir) / 'slurm-%A_%a.out'))}",
        *[f"#SBATCH {d}" for d in shared or []],
        "# Written by benchlib.launch.slurm.submit.array_script: array task i runs the i-th run's own script.",
        "set -euo pipefail",
        'case "${SLURM_ARRAY_TASK_ID:?not an array task}" in',
    ]
    for i, path in enumerate(launch_scripts):
        lines.append(f"  {i}) exec bash {shell_quote(str(Path(path).resolve()))} ;;")
    lines += ['  *) echo "no run for array task ${SLURM_ARRAY_TASK_ID}" >&2; exit 2 ;;', "esac", ""]
    return "\n".join(lines)


def submit_array(
    script_path: Path,
    *,
    run_dirs: Sequence[Path] = (),
    array: str | None = None,
    max_parallel: int | None = None,
    cwd: Path | None = None,
    quiet: bool = True,
) -> SubmitResult:
    """`sbatch --parsable --array=SPEC script`. With run_dirs, task i's job id is recorded in run_dirs[i].

    `array` defaults to 0-(len(run_dirs)-1); `max_parallel` adds Slurm's `%N` throttle.
    """
    tools.require("sbatch")
    script_path = Path(script_path)
    if array is None:
        if not run_dirs:
            raise BenchError("submit_array needs an array spec or the run directories of its tasks")
        array = f"0-{len(run_dirs) - 1}"
    if max_parallel:
        array = f"{array}%{int(max_parallel)}"
    cmd = ["sbatch", "--parsable", f"--array={array}", str(script_path)]
    job_id = _sbatch(cmd, cwd=Path(cwd) if cwd else script_path.parent)
    task_ids = []
    for i, run_dir in enumerate(run_dirs):
        task_id = f"{job_id}_{i}"
        task_ids.append(task_id)
        write_record(
            Path(run_dir),
            {"job_id": task_id, "array_job_id": job_id, "array_task": i, "script": str(script_path),
             "submitted_at": _now(), "sbatch": shlex.join(cmd)},
        )
    result = SubmitResult(
        job_id=job_id, run_dir=Path(cwd) if cwd else script_path.parent, script_path=script_path, command=cmd,
        array=array, task_ids=task_ids,
    )
    if not quiet:
        print(result.summary(), file=sys.stdout)
    return result
