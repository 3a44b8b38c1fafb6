"""Read a job's state from Slurm: squeue/scontrol while it is known to the controller, then sacct.

Order of sources: `scontrol show job` (pending, running and recently finished jobs, with the
pending reason and exit code), then `sacct` (accounting database, when the cluster has one),
then `sacct -c` (job-completion log, e.g. jobcomp/filetxt). The first that knows the job wins.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from benchlib.launch.slurm import tools

FINISHED = frozenset(
    {"COMPLETED", "FAILED", "TIMEOUT", "CANCELLED", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL", "DEADLINE"}
)
ACTIVE = frozenset({"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING", "STOPPED"})


@dataclass(frozen=True)
class JobInfo:
    job_id: str
    name: str
    state: str  # PENDING, RUNNING, COMPLETED, FAILED, TIMEOUT, CANCELLED, ...
    exit_code: str = ""  # "status:signal", e.g. "3:0", "0:15"
    reason: str = ""  # why it is pending (Dependency, Resources, Priority, ...)
    elapsed: str = ""
    time_limit: str = ""
    nodes: str = ""
    source: str = ""  # which tool answered: scontrol, sacct, sacct -c

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    def describe(self) -> str:
        text = self.state
        if self.state == "PENDING" and self.reason and self.reason != "None":
            text += f" ({self.reason})"
        if self.finished and self.exit_code:
            text += f" exit {self.exit_code}"
        return text


_SCONTROL_FIELD = re.compile(r"(?:^|\s)([A-Za-z][A-Za-z0-9_:/]*)=(.*?)(?=\s[A-Za-z][A-Za-z0-9_:/]*=|$)")


def parse_scontrol(line: str) -> dict[str, str]:
    """`scontrol show job -o` output (one line per job) -> field mapping (first occurrence wins)."""
    fields: dict[str, str] = {}
    for m in _SCONTROL_FIELD.finditer(line.strip()):
        fields.setdefault(m.group(1), m.group(2).rstrip())
    return fields


def _from_scontrol(job_id: str) -> list[JobInfo]:
    res = tools.run(["scontrol", "show", "job", "-o", str(job_id)], check=False)
    if res.returncode != 0:
        return []
    jobs = []
    for line in res.stdout.splitlines():
        if not line.strip():
            continue
        f = parse_scontrol(line)
        jid = f.get("JobId", "")
        if f.get("ArrayJobId") and f.get("ArrayTaskId"):
            jid = f"{f['ArrayJobId']}_{f['ArrayTaskId']}"
        jobs.append(
            JobInfo(
                job_id=jid, name=f.get("JobName", ""), state=f.get("JobState", "UNKNOWN"), exit_code=f.get("ExitCode", ""),
                reason=f.get("Reason", ""), elapsed=f.get("RunTime", ""), time_limit=f.get("TimeLimit", ""),
                nodes=f.get("NodeList", ""), source="scontrol",
            )
        )
    return jobs


def _from_sacct(job_id: str, completion_log: bool) -> list[JobInfo]:
    if not tools.have("sacct"):
        return []
    fmt = "JobID,JobName,State,ExitCode,Elapsed,Timelimit,NodeList"
    args = ["sacct", "-n", "-P", "-j", str(job_id), "-o", fmt]
    args += ["-c"] if completion_log else ["-X"]
    res = tools.run(args, check=False)
    if res.returncode != 0:
        return []
    rows: dict[str, JobInfo] = {}
    for line in res.stdout.splitlines():
        parts = line.split("|")
        if len(parts) < 7 or "." in parts[0]:  # skip steps (123.batch, 123.0)
            continue
        # The completion log has one record per requeue: the last one is the current state.
        rows[parts[0]] = JobInfo(
            job_id=parts[0], name=parts[1], state=parts[2].split()[0] if parts[2] else "UNKNOWN", exit_code=parts[3],
            elapsed=parts[4], time_limit=parts[5], nodes=parts[6], source="sacct -c" if completion_log else "sacct",
        )
    return list(rows.values())


def job_infos(job_id: str) -> list[JobInfo]:
    """Every record Slurm has for a job id (several for an array). While the job runs, the
    controller's (scontrol); once it has ended, the accounting record's when there is one: it is
    Slurm's final word (state and exit code as `sacct` shows them), the controller's may differ."""
    live = _from_scontrol(job_id)
    # COMPLETING: the job has ended (its epilog runs) and the controller shows the batch shell's
    # exit code (e.g. 143:0 of a cancelled job), while accounting may already have Slurm's verdict.
    if live and not all(j.finished or j.state == "COMPLETING" for j in live):
        return live
    for reader in (lambda j: _from_sacct(j, False), lambda j: _from_sacct(j, True)):
        jobs = reader(job_id)
        # Only a record of every job the controller knows (the completion log files array
        # tasks under their raw ids, so an array's tasks may be missing there).
        if jobs and all(j.finished for j in jobs) and {j.job_id for j in live} <= {j.job_id for j in jobs}:
            return jobs
    return live


def job_info(job_id: str) -> JobInfo | None:
    """The job's own record (for an array: the first task's record), or None if Slurm forgot it."""
    jobs = job_infos(job_id)
    for job in jobs:
        if job.job_id == str(job_id):
            return job
    return jobs[0] if jobs else None


def user_jobs(user: str | None = None) -> list[JobInfo]:
    """Jobs in the queue (pending or running) of a user (default: the caller): id, name, state."""
    import getpass

    args = ["squeue", "-h", "-r", "-u", user or getpass.getuser(), "-o", "%i|%j|%T|%r"]
    res = tools.run(args)
    jobs = []
    for line in res.stdout.splitlines():
        parts = line.split("|", 3)
        if len(parts) == 4:
            jobs.append(JobInfo(job_id=parts[0], name=parts[1], state=parts[2], reason=parts[3], source="squeue"))
    return jobs
