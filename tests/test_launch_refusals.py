"""Issue 15: nothing bad reaches the queue. Each row of the issue's table, tried as a user does
(`bash sbatch_benchmarking.sh` on the test Slurm of tests/slurm_harness.py), is refused with a
`fix:` line, and leaves nothing behind: no run directory under OUTPUT_ROOT and no new job.

Not real here: GPUs and pyxis (the test cluster has neither: CONTAINER_RUNTIME=none, ENTRY=command
stands in for training where a job is submitted).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from slurm_harness import SHORT_PARTITION, SHORT_PARTITION_LIMIT, SlurmCluster, slurm_cluster  # noqa: F401  (session fixture)

ROOT = Path(__file__).resolve().parent.parent
MODEL = "Qwen3-30B-A3B-Proxy"
pytestmark = [pytest.mark.slurm]


def user_env(cluster: SlurmCluster, output_root: Path, **knobs: str) -> dict[str, str]:
    from benchlib.config.cluster import CLUSTER_KEYS
    from benchlib.config.knobs import KNOB_NAMES
    from benchlib.core.secrets import is_secret_name

    drop = set(KNOB_NAMES) | set(CLUSTER_KEYS) | {"DRY_RUN"}
    env = {k: v for k, v in os.environ.items() if k not in drop and not is_secret_name(k)}
    env.update(cluster.env)
    env.update({"CLUSTER": str(cluster.bench_cluster_conf), "MODEL": MODEL, "BENCH_PYTHON": sys.executable,
                "OUTPUT_ROOT": str(output_root), "ENTRY": "command", "ENTRY_COMMAND": "true"})
    env.update(knobs)
    return env


def job_ids(cluster: SlurmCluster) -> set[str]:
    """Every job slurmctld knows (finished ones stay: MinJobAge=3600)."""
    out = cluster.run("scontrol", "-o", "show", "job", check=False).stdout
    return set(re.findall(r"^JobId=(\d+)", out, re.M))


def submit(cluster: SlurmCluster, output_root: Path, *args: str, **knobs: str) -> subprocess.CompletedProcess:
    env = user_env(cluster, output_root, **knobs)
    return subprocess.run(["bash", str(ROOT / "sbatch_benchmarking.sh"), *args], env=env, capture_output=True, text=True, timeout=120)


def assert_refused_and_nothing_written(cluster: SlurmCluster, tmp_path: Path, *args: str, expect: list[str], **knobs: str) -> str:
    output_root = tmp_path / "runs"
    before = job_ids(cluster)
    res = submit(cluster, output_root, *args, **knobs)
    assert res.returncode == 2, res.stdout + res.stderr
    for text in expect:
        assert text in res.stderr, f"{text!r} not in:\n{res.stderr}"
    assert "\n  fix: " in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert not output_root.exists() or not any(output_root.rglob("*")), sorted(output_root.rglob("*"))
    assert job_ids(cluster) == before, "no job was submitted"
    return res.stderr


def test_unknown_megatron_flag_refused_before_submission(slurm_cluster, tmp_path):
    assert_refused_and_nothing_written(
        slurm_cluster, tmp_path, "--no-such-flag", expect=["--no-such-flag is not a Megatron-Core 0.19.2 flag"]
    )


def test_misspelt_megatron_flag_gets_did_you_mean(slurm_cluster, tmp_path):
    err = assert_refused_and_nothing_written(
        slurm_cluster, tmp_path, "--moe-aux-los-coeff", "1e-4", expect=["did you mean --moe-aux-loss-coeff"]
    )
    assert "--moe-aux-los-coeff" in err


def test_knob_after_the_first_word_is_refused_naming_the_knob(slurm_cluster, tmp_path):
    err = assert_refused_and_nothing_written(slurm_cluster, tmp_path, "tp=2", "EP=2", expect=["knob TP", "TP=2"])
    assert "before the first --flag" in err


def test_knob_after_a_megatron_flag_is_refused_naming_the_knob(slurm_cluster, tmp_path):
    assert_refused_and_nothing_written(
        slurm_cluster, tmp_path, "--moe-aux-loss-coeff", "1e-4", "EP=2", expect=["'EP=2'", "knob EP", "before the first --flag"]
    )


def test_stray_value_is_refused(slurm_cluster, tmp_path):
    assert_refused_and_nothing_written(
        slurm_cluster, tmp_path, "--lr", "1e-4", "3e-4", expect=["'3e-4'", "after --lr 1e-4", "belongs to no flag"]
    )


def test_flag_value_of_the_wrong_type_is_refused(slurm_cluster, tmp_path):
    assert_refused_and_nothing_written(slurm_cluster, tmp_path, "--lr", "fast", expect=["--lr takes a number, not 'fast'"])


@pytest.mark.parametrize(
    "run_time, expect",
    [
        ("25:99:99", "minutes and seconds must be below 60"),
        ("00:00:00", "is zero"),
        ("1-24:00:00", "hours below 24"),
        ("30", "is not HH:MM:SS"),
    ],
)
def test_bad_run_time_refused(slurm_cluster, tmp_path, run_time, expect):
    assert_refused_and_nothing_written(slurm_cluster, tmp_path, expect=[f"RUN_TIME={run_time!r}", expect], RUN_TIME=run_time)


def test_run_time_beyond_the_partitions_limit_refused(slurm_cluster, tmp_path):
    assert_refused_and_nothing_written(
        slurm_cluster, tmp_path,
        expect=[f"partition {SHORT_PARTITION}'s time limit", "sinfo", "set RUN_TIME to"],
        PARTITION=SHORT_PARTITION, RUN_TIME="00:20:00",
    )


def test_run_time_within_the_partitions_limit_is_submitted(slurm_cluster, tmp_path):
    res = submit(slurm_cluster, tmp_path / "runs", PARTITION=SHORT_PARTITION, RUN_TIME=SHORT_PARTITION_LIMIT, COMMENT="short")
    assert res.returncode == 0, res.stderr
    job_id = re.search(r"submitted job (\d+)", res.stdout).group(1)
    assert slurm_cluster.wait_finished(job_id, timeout=120)["State"] == "COMPLETED"


@pytest.mark.parametrize(
    "knob, value, minimum",
    [("NNODES", "0", 1), ("TP", "0", 1), ("MBS", "-1", 1), ("MBS", "0", 1), ("EP", "0", 1), ("GBS", "0", 1),
     ("NUM_LAYERS", "0", 1), ("SEQ_LEN", "-4096", 1), ("TRAIN_ITERS", "0", 1), ("VPP", "0", 1), ("PP_FIRST", "-1", 0)],
)
def test_sizes_at_or_below_zero_refused_with_the_right_minimum(slurm_cluster, tmp_path, knob, value, minimum):
    err = assert_refused_and_nothing_written(
        slurm_cluster, tmp_path, expect=[f"{knob}={value}", f"fix: set {knob} to {minimum} or more"], **{knob: value}
    )
    assert "ZeroDivisionError" not in err


def test_comment_too_long_for_slurm_refused_before_anything_is_written(slurm_cluster, tmp_path):
    assert_refused_and_nothing_written(
        slurm_cluster, tmp_path, expect=["COMMENT is 10000 bytes", "1024"], COMMENT="x" * 10_000
    )


def test_output_root_too_long_refused_before_anything_is_written(slurm_cluster, tmp_path):
    deep = tmp_path / "runs" / "/".join(["d" * 200] * 25)  # over PATH_MAX
    before = job_ids(slurm_cluster)
    res = submit(slurm_cluster, deep)
    assert res.returncode == 2 and "fix: use a shorter OUTPUT_ROOT" in res.stderr, res.stderr
    assert not (tmp_path / "runs").exists()
    assert job_ids(slurm_cluster) == before


def test_sbatch_refusal_removes_the_run_directory_and_quotes_sbatch(slurm_cluster, tmp_path):
    # Slurm itself refuses (an unknown partition sinfo cannot vouch for): its own words are the hint.
    err = assert_refused_and_nothing_written(
        slurm_cluster, tmp_path, expect=["sbatch refused the job", "was removed", "sbatch said: sbatch: error:", "invalid partition"],
        PARTITION="no-such-partition",
    )
    assert "ACCOUNT" not in err and "QOS" not in err, "no guessing at settings sbatch did not name"


def test_unicode_comment_kept_in_slurm_comment_and_transliterated_in_job_name(slurm_cluster, tmp_path):
    comment = "Ñoño-çà-ðø run ü"
    res = submit(slurm_cluster, tmp_path / "runs", COMMENT=comment)
    assert res.returncode == 0, res.stderr
    job_id = re.search(r"submitted job (\d+)", res.stdout).group(1)
    info = slurm_cluster.scontrol_job(job_id)
    assert info["Comment"] == comment, info
    assert info["JobName"].endswith("-Nono-ca-do_run_u"), info["JobName"]
    slurm_cluster.wait_finished(job_id, timeout=120)


def test_near_miss_knob_names_in_the_environment_warned(slurm_cluster, tmp_path):
    env = user_env(slurm_cluster, tmp_path / "runs", TPP="2", EXPERT_PARALLEL="2", ep="4", DRY_RUN="1")
    res = subprocess.run(["bash", str(ROOT / "sbatch_benchmarking.sh")], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    warnings = [ln for ln in res.stderr.splitlines() if "is not a knob and is ignored" in ln]
    assert len(warnings) == 3, res.stderr
    for name, meant in (("TPP", "TP"), ("EXPERT_PARALLEL", "EP"), ("ep", "EP")):
        assert any(f"variable {name} " in ln and f"did you mean {meant}?" in ln for ln in warnings), warnings
    assert not any(f"variable {name} " in res.stderr for name in ("HOME", "PATH", "SLURM_CONF")), "only near misses warn"


def test_model_yaml_with_an_unknown_flag_names_file_and_line(slurm_cluster, tmp_path, monkeypatch):
    """The model config is a copy of the shipped one with one flag misspelt (in-process launch)."""
    import benchlib.config.model_config as model_config
    from benchlib.core.errors import BenchError
    from benchlib.launch.run import launch

    models = tmp_path / "models"
    models.mkdir()
    text = (model_config.MODEL_DIR / f"{MODEL}.yaml").read_text()
    assert "--num-attention-heads:" in text
    (models / f"{MODEL}.yaml").write_text(text.replace("--num-attention-heads:", "--num-atention-heads:"))
    line = 1 + text[: text.index("--num-attention-heads:")].count("\n")
    monkeypatch.setattr(model_config, "MODEL_DIR", models)
    output_root = tmp_path / "runs"
    before = job_ids(slurm_cluster)
    with pytest.raises(BenchError) as err:
        launch("sbatch", [], user_env(slurm_cluster, output_root))
    message = str(err.value)
    assert f"{models / MODEL}.yaml:{line}: model config flag --num-atention-heads is not a Megatron-Core" in message
    assert "did you mean --num-attention-heads" in message and "memory model" not in message
    assert not output_root.exists() and job_ids(slurm_cluster) == before


@pytest.mark.parametrize(
    "text, seconds",
    [("infinite", None), ("UNLIMITED", None), ("30", 1800), ("10:00", 600), ("1:00:00", 3600), ("2-00:00:00", 172800), ("1-12:30:00", 131400)],
)
def test_sinfo_time_limits_read_as_slurm_writes_them(text, seconds):
    from benchlib.launch.slurm.submit import slurm_time_seconds

    assert slurm_time_seconds(text) == seconds
