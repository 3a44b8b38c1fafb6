"""`python -m bench`: named scenarios through the suite's own entry point, and their records.

The training runs here are the real path: `bash interactive_benchmarking.sh` -> `benchlib launch`
-> the rendered script -> `torch.distributed.run` -> `benchlib collect` -> result.json. Faked: the
GPU. The rank's command is ENTRY=command replaying a real H200 training log
(tests/fixtures/logs/), the one way to get a GPU's output on this machine; the calibration answers
"no CUDA device". The figures are then compared with the record the earlier tooling made from the
same real runs (bench/results/), not with numbers written here.
"""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchlib.core.errors import BenchError

from bench.records import load_records, record_problems, table_markdown
from bench.runner import run_check, run_training
from bench.scenarios import OUT_DIR, PYTHON, SCENARIOS, Scenario

ROOT = Path(__file__).resolve().parent.parent
LOGS = "tests/fixtures/logs"
MAIN_LOG = f"{LOGS}/h200x1_qwen3-30b-a3b-proxy_fastops_mbs4.log"
BASELINE_LOG = f"{LOGS}/h200x1_qwen3-30b-a3b-proxy_local_mbs4_fastops-baseline.log"
FAILED_LOG = f"{LOGS}/h200x1_deepseek-v2-lite-proxy_native_failed-mla-qnorm.log"
SECRET = "not-a-real-key-4242"


def replaying(scenario: Scenario, main_cmd: str, baseline_cmd: str | None = None) -> Scenario:
    """The scenario with the ranks replaying logs instead of training (the only fake: the GPU)."""
    knobs = {**scenario.knobs, "ENTRY": "command", "ENTRY_COMMAND": main_cmd}
    base = {**scenario.baseline_knobs, "ENTRY_COMMAND": baseline_cmd or main_cmd}
    return dataclasses.replace(scenario, knobs=knobs, baseline_knobs=base)


def machine_env(tmp_path: Path) -> dict[str, str]:
    import os

    return {**os.environ, "OUTPUT_ROOT": str(tmp_path / "runs"), "GPU_TYPE": "H200", "WANDB_API_KEY": SECRET}


def test_training_scenario_records_the_suites_figures_and_its_baseline(tmp_path: Path) -> None:
    scenario = replaying(SCENARIOS["qwen3-30b-a3b-proxy_fastops_mbs4"], f"cat {MAIN_LOG}", f"cat {BASELINE_LOG}")
    results = tmp_path / "results"
    path = run_training(scenario, {}, [], environ=machine_env(tmp_path), timeout_s=300, results_dir=results)

    assert path == results / "h200x1_qwen3-30b-a3b-proxy_fastops_mbs4.json"
    text = path.read_text()
    assert SECRET not in text
    rec = json.loads(text)
    # the same real runs, recorded earlier by other tooling from the same logs
    earlier = json.loads((ROOT / "bench/results/h200x1_qwen3-30b-a3b-proxy_fastops_mbs4.json").read_text())
    for key in ("tflops_per_gpu_megatron", "tokens_per_s_per_gpu", "steady_iteration_time_s", "mfu"):
        assert rec[key] == pytest.approx(earlier[key], rel=1e-3), key
    assert rec["baseline"]["tflops_per_gpu_megatron"] == pytest.approx(earlier["baseline"]["tflops_per_gpu_megatron"], rel=1e-3)
    assert rec["ratio_vs_baseline"] == pytest.approx(earlier["ratio_vs_baseline"], rel=1e-3)
    assert rec["max_allocated_mb"] == earlier["max_allocated_mb"]

    assert rec["scenario"] == scenario.name and rec["reproduce"] == f"python -m bench run {scenario.name}"
    assert rec["command"].startswith("MODEL=Qwen3-30B-A3B-Proxy GPUS_PER_NODE=1 bash interactive_benchmarking.sh")
    assert "BACKEND=local" in rec["baseline"]["command"] and "BACKEND" not in rec["command"]
    assert rec["backend"] == "native" and rec["baseline"]["backend"] == "local"
    assert rec["fast_ops"] is True and rec["baseline"]["fast_ops"] is False
    assert rec["versions"]["python"] and rec["calibration"] == {"skipped": "the run measured none (CALIBRATE=0 or no training step)"}
    assert "--micro-batch-size" in rec["megatron_args"]
    # the run directories the record points to are the suite's, finished
    run_dir = Path(rec["run_dir"])
    assert (run_dir / "result.json").is_file() and not (run_dir / "INCOMPLETE").exists()
    # the planner's estimate beside the measured peak, and the loss curves side by side
    est = rec["memory_estimate"]
    assert est["measured_mb"] == max(earlier["max_allocated_mb"].values()) and abs(est["error"]) <= 0.15
    curve = rec["loss_curve"]
    assert curve["iterations"] == min(len(rec["losses"]), len(rec["baseline"]["losses"])) > 0


def test_a_profile_scenario_records_the_runs_profile(tmp_path: Path) -> None:
    # the rank replays a real log and leaves a real trace where Megatron's profiler writes it
    trace = "tests/fixtures/profile/qwen3-proxy-gbs4/torch_profile/rank-0.json.gz"
    leave_trace = f'for d in "$OUTPUT_ROOT"/*/*/; do mkdir -p "$d/torch_profile" && cp {trace} "$d/torch_profile/"; done'
    scenario = replaying(SCENARIOS["qwen3-30b-a3b-proxy_profile_gbs4"], f"bash -c 'cat {MAIN_LOG}; {leave_trace}'")
    path = run_training(scenario, {}, [], environ=machine_env(tmp_path), timeout_s=300, results_dir=tmp_path / "results")

    rec = json.loads(path.read_text())
    assert path.name == "h200x1_qwen3-30b-a3b-proxy_profile_gbs4.json"
    assert rec["knobs"]["PROFILE"] == "torch" and rec["knobs"]["PROFILE_STEPS"] == "6:8"
    result = json.loads((Path(rec["run_dir"]) / "result.json").read_text())
    assert rec["profile"] == result["profile"] and [s["step"] for s in rec["profile"]["ranks"]["0"]["steps"]] == [6, 7]
    # without a trace the record has no profile, and the run's result says why
    bare = replaying(SCENARIOS["qwen3-30b-a3b-proxy_profile_gbs4"], f"cat {MAIN_LOG}")
    path = run_training(bare, {}, [], environ=machine_env(tmp_path / "bare"), timeout_s=300, results_dir=tmp_path / "bare")
    rec = json.loads(path.read_text())
    assert "profile" not in rec
    warnings = json.loads((Path(rec["run_dir"]) / "result.json").read_text())["warnings"]
    assert any("PROFILE=torch but no trace" in w for w in warnings)


def test_a_run_that_fails_writes_no_record(tmp_path: Path) -> None:
    scenario = replaying(SCENARIOS["deepseek-v2-lite-proxy_fastops_mbs2"], f"bash -c 'cat {FAILED_LOG}; exit 1'")
    results = tmp_path / "results"
    with pytest.raises(BenchError, match="did not complete") as err:
        run_training(scenario, {}, [], environ=machine_env(tmp_path), timeout_s=300, results_dir=results)
    assert "run directory" in str(err.value)
    assert not results.exists() or not list(results.iterdir())


def test_a_run_past_its_time_is_stopped_with_its_ranks(tmp_path: Path) -> None:
    marker = f"bench-timeout-{time.time_ns()}"
    scenario = replaying(SCENARIOS["deepseek-v2-lite-proxy_fastops_mbs2"], f"bash -c 'exec -a {marker} sleep 300'")
    started = time.time()
    with pytest.raises(BenchError, match="stopped after 8 s"):
        run_training(scenario, {}, [], environ=machine_env(tmp_path), timeout_s=8, results_dir=tmp_path / "results")
    assert time.time() - started < 60
    left = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout.split()
    assert not left, f"rank processes left running: {left}"


def test_a_check_scenario_wraps_the_checks_json(tmp_path: Path) -> None:
    small = Scenario("parse_speed", SCENARIOS["parse_speed"].doc, gpus=0, check_output="parse_speed.json",
                     check_command=(PYTHON, "bench/parse_speed.py", "--size-mb", "2", "--iter-only-mb", "0.2",
                                    "--repeat", "1", "--out", OUT_DIR + "/parse_speed.json"))
    path = run_check(small, environ=machine_env(tmp_path), timeout_s=300, results_dir=tmp_path)
    rec = json.loads(path.read_text())
    assert path.name == "parse_speed.json" and rec["scenario"] == "parse_speed"
    assert rec["result"]["multi_rank_log"]["bytes"] >= 2 * 1024**2 and rec["result"]["multi_rank_log"]["mb_per_s"] > 0
    assert rec["versions"]["python"] and rec["calibration"] == {"skipped": "a CPU check"}
    # the check's verdict is recorded, not a reason to drop the measurement (one shared core may miss the target)
    assert rec["check_passed"] is rec["result"]["meets_target"]


def test_a_gpu_check_is_refused_without_a_gpu(tmp_path: Path) -> None:
    with pytest.raises(BenchError, match="GPU check"):
        run_check(SCENARIOS["spec_check"], environ=machine_env(tmp_path), timeout_s=60, results_dir=tmp_path)
    assert not list(tmp_path.iterdir())


def test_every_record_names_a_scenario_or_says_why_it_is_historical() -> None:
    assert record_problems(load_records()) == []


def test_record_provenance_problems_are_found() -> None:
    good = load_records()["h200x1_qwen3-30b-a3b-proxy_fastops_mbs4"]
    planted = {
        "neither": {k: v for k, v in good.items() if k != "scenario"},
        "both": {**good, "historical": "x"},
        "h200x1_unknown": {**good, "scenario": "no-such-scenario"},
        "h200x4_qwen3-30b-a3b-proxy_fastops_mbs4": good,  # 1-GPU scenario under a 4-GPU name
        "old": {"historical": "x", "superseded_by": "no-such-scenario"},
        "h200x4_renamed": {**good, "reproduce": "python -m bench run qwen3-30b-a3b-proxy_fastops_mbs4"},  # no override
    }
    problems = record_problems(planted)
    assert len(problems) == len(planted), problems
    for stem in planted:
        assert any(p.startswith(stem + ":") for p in problems), stem
    # a run with overrides (`bench run NAME KEY=VALUE --name N`) keeps the name it was given
    custom = {**good, "reproduce": "python -m bench run qwen3-30b-a3b-proxy_fastops_mbs4 COMPILE=1"}
    assert record_problems({"h200x1_qwen3-30b-a3b-proxy_fastops_mbs4_compile": custom}) == []


def test_readme_table_is_generated_from_the_records() -> None:
    table = table_markdown(load_records())
    assert table.count("\n| `h200") >= 5
    assert table in (ROOT / "README.md").read_text(), "README's bench table is stale: paste `python -m bench table`"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_cli_lists_scenarios_and_refuses_bad_input_before_any_launch() -> None:
    listed = run_cli("list")
    assert listed.returncode == 0 and all(name in listed.stdout for name in SCENARIOS)
    unknown = run_cli("run", "qwen3-30b-a3b-proxy_fastops_mbs5")
    assert unknown.returncode == 2 and "did you mean qwen3-30b-a3b-proxy_fastops_mbs4" in unknown.stderr
    unnamed = run_cli("run", "qwen3-30b-a3b-proxy_fastops_mbs4", "MBS=2")
    assert unnamed.returncode == 2 and "--name" in unnamed.stderr
    bad = run_cli("run", "qwen3-30b-a3b-proxy_fastops_mbs4", "--name", "x", "mbs2")
    assert bad.returncode == 2 and "KEY=VALUE" in bad.stderr
    check = run_cli("run", "spec_check", "--name", "x", "MBS=2")
    assert check.returncode == 2 and "takes no knobs" in check.stderr
    assert "[bench] MODEL=" not in unknown.stdout + unnamed.stdout + bad.stdout + check.stdout


def test_a_launch_the_suite_refuses_ends_with_the_suites_reason(tmp_path: Path) -> None:
    scenario = replaying(SCENARIOS["qwen3-30b-a3b-proxy_fastops_mbs4"], "true")
    with pytest.raises(BenchError, match="before creating a run directory") as err:
        run_training(scenario, {"EP": "3"}, [], environ=machine_env(tmp_path), timeout_s=120, results_dir=tmp_path / "results")
    assert "not divisible by" in str(err.value)  # the layout check's own words, from the launch's output
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()
