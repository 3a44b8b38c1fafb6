"""`benchlib status` and `benchlib stop`: follow and cancel submitted runs.

A target is a run directory (its `slurm_job.json` names the job), a Slurm job id (`123`, or
`123_4` for an array task), or a run directory's name under the output root. The output root is
the cluster conf's OUTPUT_ROOT (`--cluster`, else $CLUSTER, else `local`).
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict
from pathlib import Path

from benchlib.core.errors import BenchError
from benchlib.launch.slurm import tools
from benchlib.launch.slurm.progress import log_progress
from benchlib.launch.slurm.queue import JobInfo, job_infos, user_jobs
from benchlib.launch.slurm.record import INCOMPLETE_MARKER, JOB_ID_RE, RESULT_FILE, find_run_by_job, iter_run_dirs, read_record, run_log


def output_root(cluster_name: str | None) -> Path:
    from benchlib.config.cluster import load_cluster
    from benchlib.core.paths import SUITE_ROOT

    name = cluster_name or os.environ.get("CLUSTER") or "local"
    cluster = load_cluster(name, "", {k: v for k, v in os.environ.items() if k == "OUTPUT_ROOT"})
    root = Path(cluster.OUTPUT_ROOT)
    return root if root.is_absolute() else SUITE_ROOT / root


def resolve_target(target: str, cluster_name: str | None) -> tuple[Path | None, str]:
    """(run dir or None, job id) for a run dir, a job id or a run name."""
    path = Path(target)
    if path.is_dir():
        rec = read_record(path)
        if not rec or not rec.get("job_id"):
            raise BenchError(
                f"{path} has no slurm_job.json: it was not submitted with sbatch (DRY_RUN or interactive run?)",
                hint="give the Slurm job id instead, or a run directory made by sbatch_benchmarking.sh",
            )
        return path, str(rec["job_id"])
    if JOB_ID_RE.match(target):
        try:
            run_dir = find_run_by_job(output_root(cluster_name), target)
        except BenchError:
            run_dir = None
        return run_dir, target
    root = output_root(cluster_name)
    matches = [d for d in iter_run_dirs(root) if d.name == target or d.name.startswith(target)]
    if len(matches) == 1:
        return resolve_target(str(matches[0]), cluster_name)
    if len(matches) > 1:
        raise BenchError(f"{target!r} matches {len(matches)} runs under {root}", hint="give the full run directory path")
    raise BenchError(
        f"{target!r} is neither a run directory, a job id nor a run name under {root}",
        hint="use `benchlib status` with no argument to list the submitted runs",
    )


def _slurm_view(job_id: str) -> list[JobInfo]:
    """What Slurm says about a job; nothing when this machine has no Slurm client (the run directory
    still tells the progress, the marker and the result)."""
    if not job_id or not tools.have("scontrol"):
        return []
    return job_infos(job_id)


def reconcile_result(run_dir: Path, job: JobInfo) -> str | None:
    """Once Slurm has decided, its final state goes into the run's ended.json and result.json is
    collected again, so the result agrees with Slurm (a job collected before Slurm wrote its
    time-limit line, a cancelled job that never collected). Returns the result's status."""
    from benchlib.core.rundir import LOGS_DIR, TRAIN_LOG
    from benchlib.metrics.collect import read_ending, result_for, run_dir_config, write_ending
    from benchlib.metrics.result import write_result
    from benchlib.metrics.status import Ending

    if not job.finished or not (run_dir / LOGS_DIR / TRAIN_LOG).is_file():
        return None
    known = read_ending(run_dir) or Ending()
    ending = Ending(how=job.state, exit_status=known.exit_status, source=f"Slurm ({job.source})", slurm_exit_code=job.exit_code)
    if ending == known and (run_dir / RESULT_FILE).is_file():
        try:
            return json.loads((run_dir / RESULT_FILE).read_text()).get("status")
        except (OSError, json.JSONDecodeError):
            pass  # collect it again below
    write_ending(run_dir, ending)
    config = run_dir_config(run_dir) or {}
    gpu_type = (config.get("cluster_config") or {}).get("GPU_TYPE")
    result, _ = result_for(str(run_dir), gpu=gpu_type, world_size=config.get("world_size"))
    write_result(result, run_dir / RESULT_FILE)
    return result.status


def _run_summary(run_dir: Path | None, job_id: str, jobs: list[JobInfo]) -> dict:
    info: dict = {"job_id": job_id, "run_dir": str(run_dir) if run_dir else None}
    info["jobs"] = [asdict(j) for j in jobs]
    own = [j for j in jobs if j.job_id == str(job_id)]
    if run_dir is not None and len(own) == 1:
        try:
            info["status"] = reconcile_result(run_dir, own[0])
        except BenchError as err:
            info["status"] = None
            info["status_error"] = str(err)
    if run_dir is not None:
        log = run_log(run_dir, job_id)
        prog = log_progress(log) if log else None
        info["log"] = str(log) if log else None
        info["progress"] = {"iteration": prog.iteration, "total": prog.total} if prog else None
        info["incomplete"] = (run_dir / INCOMPLETE_MARKER).exists()
        info["result"] = str(run_dir / RESULT_FILE) if (run_dir / RESULT_FILE).exists() else None
    return info


def _print_summary(s: dict) -> None:
    jobs = [JobInfo(**j) for j in s["jobs"]]
    if s["run_dir"]:
        print(f"run dir:  {s['run_dir']}")
    if not jobs:
        why = "Slurm no longer knows this job" if tools.have("scontrol") else "no Slurm client on this machine"
        print(f"job:      {s['job_id']} ({why})")
    for job in jobs:
        print(f"job:      {job.job_id} {job.name}")
        print(f"state:    {job.describe()}")
        if job.elapsed or job.time_limit:
            print(f"elapsed:  {job.elapsed or '?'} of {job.time_limit or '?'}")
    if s["run_dir"]:
        prog = s.get("progress")
        print("progress: " + (f"iteration {prog['iteration']}/{prog['total']}" if prog else "no iteration logged yet"))
        if s.get("incomplete"):
            print(f"marker:   {INCOMPLETE_MARKER} (cut by the time limit, or stopped before the end)")
        if s.get("result"):
            status = f" (status {s['status']})" if s.get("status") else ""
            print(f"result:   {s['result']}{status}")


def cmd_status(args: argparse.Namespace) -> int:
    if args.target:
        run_dir, job_id = resolve_target(args.target, args.cluster)
        summary = _run_summary(run_dir, job_id, _slurm_view(job_id))
        if args.json:
            print(json.dumps(summary, indent=2))
        else:
            _print_summary(summary)
        return 0
    root = output_root(args.cluster)
    rows = []
    for run_dir in list(iter_run_dirs(root))[: args.limit]:
        job_id = str((read_record(run_dir) or {}).get("job_id", ""))
        rows.append(_run_summary(run_dir, job_id, _slurm_view(job_id)))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no submitted runs under {root}")
        return 0
    for s in rows:
        state = " ".join(JobInfo(**j).describe() for j in s["jobs"]) or "unknown to Slurm"
        prog = s.get("progress")
        extra = f" it {prog['iteration']}/{prog['total']}" if prog else ""
        extra += " INCOMPLETE" if s.get("incomplete") else ""
        extra += f" {s['status']}" if s.get("status") else ""
        print(f"{s['job_id']:>10}  {state:<28}{extra}  {s['run_dir']}")
    return 0


def model_job_ids(model: str, cluster_name: str | None) -> list[JobInfo]:
    """Queued/running jobs of a model: job names `<MODEL>-TP...` plus jobs recorded under OUTPUT_ROOT/<MODEL>/."""
    queued = user_jobs()
    recorded: set[str] = set()
    try:
        root = output_root(cluster_name) / model
    except BenchError:
        root = None
    if root is not None and root.is_dir():
        for run_dir in root.iterdir():
            rec = read_record(run_dir) or {}
            if rec.get("job_id"):
                recorded.add(str(rec["job_id"]))
    prefix = f"{model}-TP"  # resolve._job_name: <MODEL>-TP<tp>PP<pp>EP<ep>...; the TP keeps Foo from matching Foo-Proxy
    out = []
    for job in queued:
        base = job.job_id.split("_")[0]
        if job.name.startswith(prefix) or job.job_id in recorded or base in recorded:
            out.append(job)
    return out


def cmd_stop(args: argparse.Namespace) -> int:
    if bool(args.target) == bool(args.model):
        raise BenchError("give either a run (directory, job id or run name) or --model NAME", hint="e.g. benchlib stop 1234")
    if args.model:
        jobs = model_job_ids(args.model, args.cluster)
        if not jobs:
            print(f"no queued or running jobs of model {args.model}")
            return 0
        ids = sorted({j.job_id.split("_")[0] if args.whole_arrays else j.job_id for j in jobs})
        names = {j.job_id: j.name for j in jobs}
    else:
        _, job_id = resolve_target(args.target, args.cluster)
        known = job_infos(job_id)
        if not known:
            raise BenchError(f"Slurm does not know job {job_id}", hint="`benchlib status` lists the submitted runs")
        if all(j.finished for j in known):
            # Nothing to cancel: say how it ended rather than letting scancel fail.
            print(f"job {job_id} already ended: {', '.join(j.describe() for j in known)}")
            return 0
        ids, names = [job_id], {j.job_id: j.name for j in known}
    tools.run(["scancel", *ids])
    for job_id in ids:
        print(f"cancelled job {job_id} {names.get(job_id, '')}".rstrip())
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("status", help="state of submitted runs: queue state, exit code, progress from the log")
    p.add_argument("target", nargs="?", help="run directory, Slurm job id or run name; none = list the recent runs")
    p.add_argument("--cluster", help="cluster conf whose OUTPUT_ROOT holds the runs (default: $CLUSTER or local)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--limit", type=int, default=20, help="runs listed without a target (default 20)")
    p.set_defaults(func=cmd_status)

    p = subparsers.add_parser("stop", help="cancel a submitted run (scancel) or every queued job of a model")
    p.add_argument("target", nargs="?", help="run directory, Slurm job id (123 or 123_4) or run name")
    p.add_argument("--model", help="cancel every queued/running job of this model (job names <MODEL>-TP...)")
    p.add_argument("--cluster", help="cluster conf whose OUTPUT_ROOT holds the runs (default: $CLUSTER or local)")
    p.add_argument("--whole-arrays", action="store_true", help="with --model: cancel whole arrays, not just matching tasks")
    p.set_defaults(func=cmd_stop)
