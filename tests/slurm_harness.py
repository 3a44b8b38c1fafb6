"""A real Slurm cluster on this machine for the tests (pytest fixture module).

`slurm_cluster` (session scope) starts `slurmctld` and `slurmd` from the OS packages (installed
by tests/install_slurm.sh, never by this module) under a temporary folder, on 127.0.0.1 only,
with ports picked free at start so several test sessions on one machine do not collide. It
yields a `SlurmCluster`: the conf path, the environment the Slurm client commands need
(`SLURM_CONF`, also put into `os.environ` for the session so code under test that calls
`sbatch`/`squeue`/`scancel` reaches this cluster), a benchlib cluster conf for it
(`CONTAINER_RUNTIME=none`, no GPUs requested) and small helpers that read job state straight
from `sacct -c` / `scontrol`, independent of benchlib's own readers.

At the end it cancels what is left and stops the daemons by the pids it started.

Use it from a test module with `from slurm_harness import slurm_cluster  # noqa: F401` or from
conftest.py with `pytest_plugins = ("slurm_harness",)`; either way one cluster serves the whole
session (a process-wide reference count). It skips only when Slurm is missing and we are not
root (nothing could install it); as root a missing Slurm is an error: run tests/install_slurm.sh.
Without root it still runs: SlurmUser and SlurmdUser are the current user (the only user whose
jobs such a cluster can start).

Two nodes: `<host>` (this machine's short name, partition `debug`, the default) and `<host>-2`
(only in partition `multi`, with the first): a second slurmd on the same host, so NNODES=2 jobs
get a real two-node allocation (`PARTITION=multi`). Only when the host name resolves to loopback
(jobs use the first node's name as MASTER_ADDR); otherwise one node named `localhost` and
`multi_partition` is empty. What is not real here: GPUs (each node declares 16 CPUs and no
GRES; jobs ask for none), separate machines (both nodes are this host), enroot/pyxis (not installed, so jobs use
CONTAINER_RUNTIME=none). Time limits, signals, dependencies, arrays, cancellation and accounting
are Slurm's own.
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



def _first_node_name() -> str:
    """This host's short name when it resolves to loopback (jobs use the first node's name as
    MASTER_ADDR), else "localhost". Slurm refuses a second node beside one named "localhost"."""
    host = socket.gethostname().split(".")[0]
    try:
        addr = socket.gethostbyname(host)
    except OSError:
        return "localhost"
    return host if host and addr.startswith("127.") else "localhost"


NODE = _first_node_name()
# A second slurmd on the same host under another name gives real two-node allocations. Its name
# does not resolve, so it must never come first in a node list: "<NODE>-2" sorts after NODE.
NODE2 = f"{NODE}-2" if NODE != "localhost" else ""
PARTITION = "debug"  # the first node only: single-node jobs always get NODE
MULTI_PARTITION = "multi"  # both nodes
SHORT_PARTITION = "short"  # the first node, with a time limit of SHORT_PARTITION_LIMIT
SHORT_PARTITION_LIMIT = "00:10:00"
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


def _free_ports(n: int) -> list[int]:
    # Slurm takes the ports as given; just make sure they differ.
    while True:
        ports = [_free_port() for _ in range(n)]
        if len(set(ports)) == n:
            return ports


SLURM_CONF_TEMPLATE = """\
# One-node test cluster written by tests/slurm_harness.py. Loopback only.
ClusterName=benchtest
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ctld_port}
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
SlurmUser={user}
SlurmdUser={user}
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
SlurmdSpoolDir={root}/spool-%n
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd-%n.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd-%n.log
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
NodeName={node} NodeAddr=127.0.0.1 Port={slurmd_port} CPUs={cpus} RealMemory=8000 State=UNKNOWN
PartitionName={partition} Nodes={node} Default=YES MaxTime=INFINITE State=UP
PartitionName={short} Nodes={node} MaxTime={short_limit} State=UP
"""
SECOND_NODE_TEMPLATE = """\
NodeName={node2} NodeAddr=127.0.0.1 Port={slurmd2_port} CPUs={cpus} RealMemory=8000 State=UNKNOWN
PartitionName={multi} Nodes={node},{node2} MaxTime=INFINITE State=UP
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
    multi_partition: str = ""  # PARTITION=<this> for NNODES=2 jobs; empty when this host has one node only
    nodes: tuple[str, ...] = (NODE,)

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
        path = self.root / ({"slurmd": f"slurmd-{NODE}", "slurmd2": f"slurmd-{NODE2}"}.get(daemon, daemon) + ".log")
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
        for name, popen in zip(("slurmctld", "slurmd", "slurmd2"), getattr(cluster, "_popens", ())):
            if popen.poll() is not None:  # poll(): an exited child stays a zombie that kill(pid, 0) still finds
                stderr = (cluster.root / f"{name}.stderr").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{name} (pid {popen.pid}) exited at start:\n{stderr}")
        res = cluster.run("sinfo", "-h", "-N", "-o", "%T", check=False)
        last = (res.stdout + res.stderr).strip()
        states = [s.rstrip("*~#") for s in last.split()]
        if res.returncode == 0 and len(states) >= len(cluster.nodes) and all(s in ("idle", "mixed", "allocated") for s in states):
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
    nodes = [n for n in (NODE, NODE2) if n]
    for sub in ("state", *(f"spool-{n}" for n in nodes)):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "plugstack.conf").write_text("")  # no SPANK plugins (the system's would load pyxis if present)
    ctld_port, slurmd_port, slurmd2_port = _free_ports(3)
    import pwd

    user = pwd.getpwuid(os.getuid()).pw_name
    conf = root / "slurm.conf"
    values = dict(
        node=NODE, node2=NODE2, root=root, ctld_port=ctld_port, slurmd_port=slurmd_port, slurmd2_port=slurmd2_port,
        user=user, cpus=NODE_CPUS, partition=PARTITION, multi=MULTI_PARTITION,
        short=SHORT_PARTITION, short_limit=SHORT_PARTITION_LIMIT,
    )
    conf.write_text(SLURM_CONF_TEMPLATE.format(**values) + (SECOND_NODE_TEMPLATE.format(**values) if NODE2 else ""))
    output_root = root / "runs"
    output_root.mkdir()
    bench_conf = root / "benchtest.conf"
    write_bench_cluster_conf(bench_conf, output_root)
    cluster = SlurmCluster(
        root=root, conf=conf, env={"SLURM_CONF": str(conf)}, bench_cluster_conf=bench_conf,
        output_root=output_root, jobcomp=root / "jobcomp.txt", nodes=tuple(nodes),
        multi_partition=MULTI_PARTITION if NODE2 else "",
    )
    env = {**os.environ, "SLURM_CONF": str(conf)}
    # -i: ignore a stale state file; -D: stay in the foreground so the pid is ours.
    ctld = subprocess.Popen(
        ["slurmctld", "-D", "-i", "-f", str(conf)], env=env, stdout=subprocess.DEVNULL, stderr=open(root / "slurmctld.stderr", "w"),
        start_new_session=True,
    )
    cluster.pids["slurmctld"] = ctld.pid
    time.sleep(0.5)
    popens = [ctld]
    for name, node in zip(("slurmd", "slurmd2"), nodes):
        slurmd = subprocess.Popen(
            ["slurmd", "-D", "-f", str(conf), "-N", node], env=env, stdout=subprocess.DEVNULL,
            stderr=open(root / f"{name}.stderr", "w"), start_new_session=True,
        )
        cluster.pids[name] = slurmd.pid
        popens.append(slurmd)
    cluster._popens = tuple(popens)  # type: ignore[attr-defined]
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
        if cluster.multi_partition:
            cluster.run("scancel", "--partition", cluster.multi_partition, check=False)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if not cluster.run("squeue", "-h", "-o", "%i", check=False).stdout.strip():
                break
            time.sleep(0.5)
    for name in ("slurmd2", "slurmd", "slurmctld"):
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
    if _SHARED["cluster"] is None:
        tmp = Path(tempfile.mkdtemp(prefix="bench-slurm-"))
        try:
            cluster = start_cluster(tmp)
        except BaseException:
            if os.environ.get("BENCH_KEEP_SLURM_DIR") != "1":  # the error carries the daemons' output
                shutil.rmtree(tmp, ignore_errors=True)
            raise
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
