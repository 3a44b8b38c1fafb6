"""A real one-node Slurm cluster for the tests (pytest fixture module).

`slurm_cluster` (session scope) starts `slurmctld` and `slurmd` from the OS packages (installed
by tests/install_slurm.sh, never by this module) under a temporary folder, on 127.0.0.1 only,
with ports picked free at start so several test sessions on one machine do not collide. It
yields a `SlurmCluster`: the conf path, the environment the Slurm client commands need
(`SLURM_CONF`, also put into `os.environ` for the session so code under test that calls
`sbatch`/`squeue`/`scancel` reaches this cluster), a benchlib cluster conf for it
(`CONTAINER_RUNTIME=none`, no GPUs requested) and small helpers that read job state straight
from `sacct -c` / `scontrol`, independent of benchlib's own readers.

At the end it cancels what is left and stops the two daemons by the pids it started.

Use it from a test module with `from slurm_harness import slurm_cluster  # noqa: F401` or from
conftest.py with `pytest_plugins = ("slurm_harness",)`; either way one cluster serves the whole
session (a process-wide reference count). It skips only when Slurm is missing and we are not
root (nothing could install it); as root a missing Slurm is an error: run tests/install_slurm.sh.

What is not real here: GPUs (the node declares 16 CPUs and no GRES; jobs ask for none), more
than one node, enroot/pyxis (not installed, so jobs use CONTAINER_RUNTIME=none). Time limits,
signals, dependencies, arrays, cancellation and accounting are Slurm's own.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

NODE = "localhost"
PARTITION = "debug"
NODE_CPUS = 16  # more than the 2 real cores (config_overrides): jobs here mostly sleep or validate
GPUS_PER_NODE = 2  # tasks per node in the test cluster conf (one per "GPU"; REQUEST_GPUS=0)
SLURM_BINARIES = ("slurmctld", "slurmd", "sbatch", "srun", "squeue", "scontrol", "sacct", "scancel")
TERMINAL_STATES = {
    "COMPLETED", "FAILED", "TIMEOUT", "CANCELLED", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL", "DEADLINE",
}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _free_port_pair() -> tuple[int, int]:
    # Slurm takes SlurmctldPort and SlurmdPort as given; just make sure they differ.
    while True:
        a, b = _free_port(), _free_port()
        if a != b:
            return a, b


SLURM_CONF_TEMPLATE = """\
# One-node test cluster written by tests/slurm_harness.py. Loopback only.
ClusterName=benchtest
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
SlurmUser={user}
SlurmdUser=root
AuthType=auth/none
CredType=cred/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
PlugStackConfig={root}/plugstack.conf
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={root}/jobcomp.txt
ReturnToService=2
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
# Fast, exact time limits for the tests: no grace past the limit, 2 s from SIGTERM to SIGKILL.
OverTimeLimit=0
KillWait=2
# Keep finished jobs visible to scontrol for the whole session.
MinJobAge=3600
InactiveLimit=0
SlurmdParameters=config_overrides
SchedulerParameters=sched_interval=2
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=8000 State=UNKNOWN
PartitionName={partition} Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


@dataclass
class SlurmCluster:
    """A running one-node cluster. `env` is what a client command needs to reach it."""

    root: Path
    conf: Path
    env: dict[str, str]
    bench_cluster_conf: Path  # a benchlib cluster conf (CLUSTER=<this path>) for this cluster
    output_root: Path
    jobcomp: Path
    pids: dict[str, int] = field(default_factory=dict)

    # -- raw Slurm queries (deliberately not benchlib's, so the tests check benchlib against Slurm) --
    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), env={**os.environ, **self.env}, capture_output=True, text=True, check=check, timeout=60)

    def sacct(self, job_id: str) -> list[dict[str, str]]:
        """Job-completion records (`sacct -c`) of a job: JobID, JobName, State, ExitCode.

        An array task `A_T` is looked up in the completion file itself: jobcomp/filetxt records it
        under its own raw job id with ArrayJobId=A ArrayTaskId=T, fields `sacct -c` cannot read.
        """
        if "_" in str(job_id):
            return self.array_task_records(str(job_id))
        out = self.run("sacct", "-c", "-n", "-P", "-j", str(job_id), "-o", "JobID,JobName,State,ExitCode", check=False).stdout
        rows = []
        for line in out.splitlines():
            parts = line.split("|")
            if len(parts) >= 4:
                rows.append({"JobID": parts[0], "JobName": parts[1], "State": parts[2].split()[0], "ExitCode": parts[3]})
        return rows

    def array_task_records(self, task_id: str) -> list[dict[str, str]]:
        array_id, task = task_id.split("_", 1)
        rows = []
        text = self.jobcomp.read_text(errors="replace") if self.jobcomp.exists() else ""
        for line in text.splitlines():
            rec = dict(re.findall(r"(\w+)=(\S*)", line))
            if rec.get("ArrayJobId") == array_id and rec.get("ArrayTaskId") == task:
                rows.append({"JobID": task_id, "JobName": rec.get("Name", ""), "State": rec.get("JobState", ""), "ExitCode": rec.get("ExitCode", "")})
        return rows

    def scontrol_job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job -o` as a mapping (JobState, Reason, ExitCode, JobName, StdOut, ...)."""
        res = self.run("scontrol", "show", "job", "-o", str(job_id), check=False)
        fields: dict[str, str] = {}
        line = res.stdout.splitlines()[0] if res.stdout.strip() else ""
        # Values may hold spaces (Comment, paths): a field runs until the next ' Key='.
        for m in re.finditer(r"(?:^|\s)([A-Za-z:/]+)=(.*?)(?=\s[A-Za-z:/]+=|$)", line):
            fields.setdefault(m.group(1), m.group(2).rstrip())
        return fields

    def wait_finished(self, job_id: str, timeout: float = 120.0) -> dict[str, str]:
        """Wait until `sacct -c` has the job's completion record; return it (the job row, not steps)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for row in self.sacct(job_id):
                if row["JobID"] == str(job_id) and row["State"] in TERMINAL_STATES:
                    return row
            time.sleep(1)
        raise AssertionError(
            f"job {job_id} did not finish in {timeout:.0f} s: scontrol says {self.scontrol_job(job_id)}\n"
            f"slurmctld log tail:\n{self.log_tail('slurmctld')}"
        )

    def wait_state(self, job_id: str, states: set[str], timeout: float = 60.0) -> dict[str, str]:
        """Wait until scontrol reports one of `states` (e.g. RUNNING, PENDING); return scontrol's fields."""
        deadline = time.monotonic() + timeout
        last: dict[str, str] = {}
        while time.monotonic() < deadline:
            last = self.scontrol_job(job_id)
            if last.get("JobState") in states:
                return last
            time.sleep(0.5)
        raise AssertionError(f"job {job_id} never reached {sorted(states)}: last scontrol fields {last}")

    def log_tail(self, daemon: str, lines: int = 30) -> str:
        path = self.root / f"{daemon}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"


def write_bench_cluster_conf(path: Path, output_root: Path) -> None:
    """The benchlib cluster conf of the test cluster: no container, no GPUs requested, this Python."""
    path.write_text(
        "# benchlib cluster conf for the one-node test Slurm (tests/slurm_harness.py)\n"
        f"PARTITION={PARTITION}\n"
        f"GPUS_PER_NODE={GPUS_PER_NODE}\n"
        "GPU_TYPE=H100\n"
        "REQUEST_GPUS=0\n"
        "CONTAINER_RUNTIME=none\n"
        "MPI_TYPE=none\n"
        f"OUTPUT_ROOT={output_root}\n"
        f"PYTHON={sys.executable}\n"
        f"MASTER_PORT={_free_port()}\n"
    )


def _missing_binaries() -> list[str]:
    return [b for b in SLURM_BINARIES if shutil.which(b) is None]


def _wait_node_idle(cluster: SlurmCluster, timeout: float = 45.0) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        for name, pid in cluster.pids.items():
            if not _alive(pid):
                raise RuntimeError(f"{name} (pid {pid}) exited at start:\n{cluster.log_tail(name)}")
        res = cluster.run("sinfo", "-h", "-N", "-o", "%T", check=False)
        last = (res.stdout + res.stderr).strip()
        if res.returncode == 0 and last.split() and last.split()[0].rstrip("*~#") in ("idle", "mixed", "allocated"):
            return
        time.sleep(0.5)
    raise RuntimeError(
        f"the test Slurm node never became idle (last sinfo: {last!r})\n"
        f"slurmctld:\n{cluster.log_tail('slurmctld')}\nslurmd:\n{cluster.log_tail('slurmd')}"
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def start_cluster(root: Path) -> SlurmCluster:
    """Write the conf, start slurmctld then slurmd in the foreground (-D) as our children."""
    for sub in ("state", "spool"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "plugstack.conf").write_text("")  # no SPANK plugins (the system's would load pyxis if present)
    ctld_port, slurmd_port = _free_port_pair()
    import pwd

    user = pwd.getpwuid(os.getuid()).pw_name
    conf = root / "slurm.conf"
    conf.write_text(
        SLURM_CONF_TEMPLATE.format(
            node=NODE, root=root, ctld_port=ctld_port, slurmd_port=slurmd_port, user=user, cpus=NODE_CPUS, partition=PARTITION
        )
    )
    output_root = root / "runs"
    output_root.mkdir()
    bench_conf = root / "benchtest.conf"
    write_bench_cluster_conf(bench_conf, output_root)
    cluster = SlurmCluster(
        root=root, conf=conf, env={"SLURM_CONF": str(conf)}, bench_cluster_conf=bench_conf,
        output_root=output_root, jobcomp=root / "jobcomp.txt",
    )
    env = {**os.environ, "SLURM_CONF": str(conf)}
    # -i: ignore a stale state file; -D: stay in the foreground so the pid is ours.
    ctld = subprocess.Popen(
        ["slurmctld", "-D", "-i", "-f", str(conf)], env=env, stdout=subprocess.DEVNULL, stderr=open(root / "slurmctld.stderr", "w"),
        start_new_session=True,
    )
    cluster.pids["slurmctld"] = ctld.pid
    time.sleep(0.5)
    slurmd = subprocess.Popen(
        ["slurmd", "-D", "-f", str(conf), "-N", NODE], env=env, stdout=subprocess.DEVNULL, stderr=open(root / "slurmd.stderr", "w"),
        start_new_session=True,
    )
    cluster.pids["slurmd"] = slurmd.pid
    cluster._popens = (ctld, slurmd)  # type: ignore[attr-defined]
    try:
        _wait_node_idle(cluster)
    except BaseException:
        stop_cluster(cluster)
        raise
    return cluster


def stop_cluster(cluster: SlurmCluster) -> None:
    """Cancel what is left, then stop slurmd and slurmctld by the pids we started."""
    if cluster.pids.get("slurmctld") and _alive(cluster.pids["slurmctld"]):
        cluster.run("scancel", "--partition", PARTITION, check=False)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if not cluster.run("squeue", "-h", "-o", "%i", check=False).stdout.strip():
                break
            time.sleep(0.5)
    for name in ("slurmd", "slurmctld"):
        pid = cluster.pids.get(name)
        if not pid or not _alive(pid):
            continue
        os.kill(pid, signal.SIGTERM)
        popen = next((p for p in getattr(cluster, "_popens", ()) if p.pid == pid), None)
        try:
            if popen is not None:
                popen.wait(timeout=15)
            else:
                deadline = time.monotonic() + 15
                while _alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.2)
        except subprocess.TimeoutExpired:
            pass
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
            if popen is not None:
                popen.wait(timeout=5)


# One cluster per test process, shared by every module that uses the fixture.
_SHARED: dict[str, object] = {"cluster": None, "users": 0, "tmp": None, "saved_env": None}


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    missing = _missing_binaries()
    if missing:
        if os.getuid() != 0:
            pytest.skip(f"Slurm is not installed ({', '.join(missing)} missing) and not root: run tests/install_slurm.sh as root")
        raise RuntimeError(f"Slurm is not installed ({', '.join(missing)} missing): run `bash tests/install_slurm.sh` first (as root)")
    if os.getuid() != 0:
        pytest.skip("the test Slurm runs slurmd, which must run as root (jobs are started as the submitting user)")
    if _SHARED["cluster"] is None:
        tmp = Path(tempfile.mkdtemp(prefix="bench-slurm-"))
        cluster = start_cluster(tmp)
        _SHARED.update(cluster=cluster, tmp=tmp, saved_env=os.environ.get("SLURM_CONF"))
        os.environ["SLURM_CONF"] = str(cluster.conf)
    _SHARED["users"] = int(_SHARED["users"]) + 1  # type: ignore[call-overload]
    try:
        yield _SHARED["cluster"]  # type: ignore[misc]
    finally:
        _SHARED["users"] = int(_SHARED["users"]) - 1  # type: ignore[call-overload]
        if _SHARED["users"] == 0 and _SHARED["cluster"] is not None:
            cluster = _SHARED["cluster"]
            _SHARED["cluster"] = None
            stop_cluster(cluster)  # type: ignore[arg-type]
            saved = _SHARED["saved_env"]
            if saved is None:
                os.environ.pop("SLURM_CONF", None)
            else:
                os.environ["SLURM_CONF"] = str(saved)
            if os.environ.get("BENCH_KEEP_SLURM_DIR") != "1":
                shutil.rmtree(str(_SHARED["tmp"]), ignore_errors=True)
