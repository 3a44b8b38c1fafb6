"""The regression gate (`benchlib check`) and REPEATS' across-run statistics, on real logs of real runs.

The slowed-down, memory-heavier and diverging runs are copies of a real H200 log with one kind of
figure rewritten (iteration times, memory lines, or the loss after an iteration): what a planted
slowdown or a numerical change looks like in the log, with everything else as it really was.
"""
from __future__ import annotations

import json
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from benchlib.cli import main

LOGS = Path(__file__).parent / "fixtures" / "logs"
ROOT = Path(__file__).resolve().parent.parent
RUN_LOG = LOGS / "h200x1_qwen3-30b-a3b-proxy_native_mbs2.log"  # 50 iterations
OTHER_LAYOUT_LOG = LOGS / "h200x1_qwen3-30b-a3b-proxy_native_mbs4.log"

_ELAPSED = re.compile(r"(elapsed time per iteration \(ms\): )([\d.]+)")
_TFLOPS = re.compile(r"(throughput per GPU \(TFLOP/s/GPU\): )([\d.]+)")
_MAXALLOC = re.compile(r"(max allocated: )([\d.]+)")
_ITER_LOSS = re.compile(r"iteration\s+(\d+)/.*?lm loss: ([\d.E+-]+)")


def _scaled_times(text: str, factor: float) -> str:
    text = _ELAPSED.sub(lambda m: f"{m.group(1)}{float(m.group(2)) * factor:.1f}", text)
    return _TFLOPS.sub(lambda m: f"{m.group(1)}{float(m.group(2)) / factor:.1f}", text)


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _baseline(tmp_path: Path) -> Path:
    out = tmp_path / "baselines" / "qwen3-proxy.json"
    assert main(["check", "--record-baseline", str(RUN_LOG), "--gpu", "H200", "--out", str(out)]) == 0
    return out


def test_the_same_run_passes(tmp_path, capsys):
    baseline = _baseline(tmp_path)
    data = json.loads(baseline.read_text())
    assert data["key"]["gpu_type"] == "H200" and data["key"]["routing"] == "learned" and data["key"]["train_iters"] == 50
    assert len(data["loss_curve"]) == 50
    capsys.readouterr()
    assert main(["check", str(RUN_LOG), "--baseline", str(baseline)]) == 0
    out = capsys.readouterr().out
    assert "verdict: PASS" in out and "FAIL" not in out


def test_a_slowed_down_copy_fails_on_step_time_and_tokens(tmp_path, capsys):
    baseline = _baseline(tmp_path)
    slow = _write(tmp_path, "slow.log", _scaled_times(RUN_LOG.read_text(), 1.08))
    capsys.readouterr()
    assert main(["check", str(slow), "--baseline", str(baseline)]) == 1
    out = capsys.readouterr().out
    assert re.search(r"step time \(steady median\) .* \+8\.0%\s+\+5%\s+FAIL", out), out
    assert re.search(r"tokens/s/GPU .* -7\.4%\s+-5%\s+FAIL", out), out
    assert "verdict: REGRESSION" in out
    # within a wider tolerance the same copy passes
    assert main(["check", str(slow), "--baseline", str(baseline), "--step-tol", "0.10"]) == 0


def test_a_faster_run_is_no_regression(tmp_path):
    baseline = _baseline(tmp_path)
    fast = _write(tmp_path, "fast.log", _scaled_times(RUN_LOG.read_text(), 0.9))
    assert main(["check", str(fast), "--baseline", str(baseline)]) == 0


def test_more_memory_fails(tmp_path, capsys):
    baseline = _baseline(tmp_path)
    heavy = _MAXALLOC.sub(lambda m: f"{m.group(1)}{float(m.group(2)) * 1.07:.2f}", RUN_LOG.read_text())
    capsys.readouterr()
    assert main(["check", str(_write(tmp_path, "heavy.log", heavy)), "--baseline", str(baseline)]) == 1
    assert re.search(r"peak memory \(max allocated\) .* \+7\.0%\s+±5%\s+FAIL", capsys.readouterr().out)


def test_a_diverging_loss_curve_fails(tmp_path, capsys):
    """From iteration 30 on the loss is 10% higher: the step time is untouched, the loss check fails."""
    baseline = _baseline(tmp_path)

    def bump(line: str) -> str:
        m = _ITER_LOSS.search(line)
        if not m or int(m.group(1)) < 30:
            return line
        return line.replace(f"lm loss: {m.group(2)}", f"lm loss: {float(m.group(2)) * 1.10:.6E}")

    diverged = "".join(bump(line) for line in RUN_LOG.read_text().splitlines(keepends=True))
    capsys.readouterr()
    assert main(["check", str(_write(tmp_path, "diverged.log", diverged)), "--baseline", str(baseline)]) == 1
    out = capsys.readouterr().out
    assert re.search(r"step time .* pass", out)
    assert re.search(r"loss max rel\. diff \(50 its\) .* 10\.00%\s+≤5%\s+FAIL", out), out


def test_another_layout_is_refused_not_judged(tmp_path, capsys):
    baseline = _baseline(tmp_path)
    assert main(["check", str(OTHER_LAYOUT_LOG), "--baseline", str(baseline)]) == 2
    err = capsys.readouterr().err
    assert "the baseline is for another benchmark (layout_name" in err and "MBS4" in err


def test_kernels_with_the_same_math_pass_the_loss_check(tmp_path, capsys):
    """Two real runs of the DeepSeek-V2-Lite proxy, the native spec with and without its fast ops: the
    loss curves agree within the default tolerance (their step times differ: that is the fast ops)."""
    out = tmp_path / "native.json"
    assert main(["check", "--record-baseline", str(LOGS / "h200x1_deepseek-v2-lite-proxy_native_mbs2.log"), "--gpu", "H200",
                 "--out", str(out)]) == 0
    capsys.readouterr()
    main(["check", str(LOGS / "h200x1_deepseek-v2-lite-proxy_fastops_mbs2.log"), "--baseline", str(out)])
    text = capsys.readouterr().out
    assert re.search(r"loss max rel\. diff \(15 its\) .* 2\.19%\s+≤5%\s+pass", text), text
    assert re.search(r"loss correlation .* pass", text), text


def test_another_iteration_count_is_another_benchmark(tmp_path, capsys):
    """The learning-rate warm-up is a fraction of TRAIN_ITERS: 20 iterations give another loss curve than 15."""
    out = tmp_path / "b.json"
    assert main(["check", "--record-baseline", str(LOGS / "h200x1_deepseek-v2-lite-proxy_fastops_mbs2.log"), "--gpu", "H200",
                 "--out", str(out)]) == 0
    assert main(["check", str(LOGS / "h200x1_deepseek-v2-lite-proxy_interactive_mbs2.log"), "--baseline", str(out)]) == 2
    assert "train_iters 15 vs 20" in capsys.readouterr().err


def test_a_run_directory_is_a_baseline_too(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "logs").mkdir(parents=True)
    shutil.copy(RUN_LOG, run_dir / "logs" / "train.log")
    # the run dir names no GPU type (no cluster in its resolved.json): its baseline is not an H200 one
    assert main(["check", str(RUN_LOG), "--gpu", "H200", "--baseline", str(run_dir)]) == 2
    slow = _write(tmp_path, "slow.log", _scaled_times(RUN_LOG.read_text(), 1.2))
    (run_dir / "resolved.json").write_text(json.dumps({"world_size": 1}))
    assert main(["check", str(RUN_LOG), "--baseline", str(run_dir)]) == 0
    assert main(["check", str(slow), "--baseline", str(run_dir)]) == 1


def test_missing_arguments_say_how(capsys):
    assert main(["check", str(RUN_LOG)]) == 2
    assert "benchlib check RUN --baseline" in capsys.readouterr().err
    assert main(["check", "--record-baseline", str(RUN_LOG)]) == 2
    assert "needs --out" in capsys.readouterr().err


def test_baseline_knob_is_checked_before_launch_and_rendered(clean_env, tmp_path):
    from benchlib.core.errors import BenchError
    from benchlib.config.resolve import resolve_run
    from benchlib.render.scripts import render_interactive, render_sbatch

    env = {**clean_env, "MODEL": "Qwen3-30B-A3B-Proxy", "OUTPUT_ROOT": str(tmp_path / "out")}
    with pytest.raises(BenchError, match="BASELINE=.*no such file"):
        resolve_run(["CLUSTER=template", f"BASELINE={tmp_path / 'missing.json'}"], env, mode="sbatch")
    baseline = _baseline(tmp_path)
    run = resolve_run(["CLUSTER=template", f"BASELINE={baseline}"], env, mode="sbatch")
    for text in (render_sbatch(run), render_interactive(run)):
        assert f"-m benchlib check \"$RUN_DIR\" --baseline {baseline}" in text


# ---- REPEATS -------------------------------------------------------------------------------------

FACTORS = (1.0, 1.02, 0.98, 1.10, 0.95)


def _repeat_run_dir(tmp_path: Path, factors=FACTORS) -> Path:
    """What the rendered script leaves with REPEATS=5: each launch's log, and all of them in train.log."""
    run_dir = tmp_path / "run"
    (run_dir / "logs").mkdir(parents=True)
    texts = [_scaled_times(RUN_LOG.read_text(), f) for f in factors]
    for n, text in enumerate(texts, 1):
        (run_dir / "logs" / f"repeat-{n}.log").write_text(text)
    (run_dir / "logs" / "train.log").write_text("".join(texts))
    return run_dir


def test_repeat_statistics_across_runs(tmp_path):
    from benchlib.metrics.collect import result_for
    from benchlib.metrics.compare import table_rows

    result, _ = result_for(str(_repeat_run_dir(tmp_path)), gpu="H200")
    rep = result.repeats
    assert rep["n"] == 5 and rep["completed"] == 5
    single, _ = result_for(str(RUN_LOG), gpu="H200")
    base = single.tflops_per_gpu_recomputed
    tflops = [run["tflops_per_gpu"] for run in rep["runs"]]
    # each run's own figure is the real run's divided by its slowdown (times rounded to 0.1 ms in the log)
    assert tflops == pytest.approx([base / f for f in FACTORS], rel=2e-4)
    st = rep["stats"]["tflops_per_gpu"]
    assert st["median"] == pytest.approx(base, rel=2e-4)
    assert st["min"] == pytest.approx(base / 1.10, rel=2e-4) and st["max"] == pytest.approx(base / 0.95, rel=2e-4)
    assert st["spread"] == pytest.approx(1.10 / 0.95 - 1, rel=1e-3)
    # olympic mean: best (0.95) and worst (1.10) dropped
    assert st["olympic_mean"] == pytest.approx(statistics.fmean(base / f for f in (1.0, 1.02, 0.98)), rel=2e-4)
    assert st["cv"] == pytest.approx(statistics.stdev(tflops) / statistics.fmean(tflops))
    # every run's own steady-window CV is the real run's (a uniform slowdown keeps it)
    assert all(run["steady_cv"] == pytest.approx(single.iteration_time_ms["cv"], rel=1e-2) for run in rep["runs"])
    assert all(run["seed"] == single.config["seed"] for run in rep["runs"])
    assert any("repeats spread 15.8%" in w for w in result.warnings)
    # the headline pools the five launches (train.log has five segments, each with its own warm-up skipped)
    assert result.segments == 5 and len(result.steady_window["skip"]) == 5
    rows = {row[0]: row[1:] for row in table_rows([result, single])}
    assert rows["repeats"][0] == "5" and rows["repeats"][1] == "-"
    assert rows["repeats spread (%)"][0] == "15.79"


def test_olympic_mean_needs_five_runs(tmp_path):
    from benchlib.metrics.collect import result_for

    result, _ = result_for(str(_repeat_run_dir(tmp_path, (1.0, 1.1, 0.9, 1.0))), gpu="H200")
    assert result.repeats["n"] == 4 and result.repeats["stats"]["tflops_per_gpu"]["olympic_mean"] is None


def test_rendered_script_repeats_with_own_logs_and_calibrates(tmp_path, clean_env):
    """The interactive script runs for real with REPEATS=3; the interpreter stands in for torchrun (no GPU
    here): a training launch prints the real log, the calibration and `benchlib collect` run for real."""
    from benchlib.config.resolve import resolve_run
    from benchlib.render.scripts import render_interactive

    fake = tmp_path / "python"
    fake.write_text(f"""#!/bin/bash
case " $* " in
  *" benchlib.megatron.driver "*) cat {str(RUN_LOG)!r} ;;
  *" benchlib.megatron.calibrate "*) shift; while [ "$1" != "-m" ]; do shift; done; exec {sys.executable!r} "$@" ;;
  *) exec {sys.executable!r} "$@" ;;
esac
""")
    fake.chmod(0o755)
    env = {**clean_env, "MODEL": "Qwen3-30B-A3B-Proxy", "EP": "1", "GBS": "16", "MBS": "2", "PYTHON": str(fake),
           "OUTPUT_ROOT": str(tmp_path / "out")}
    run = resolve_run(["CLUSTER=local", "REPEATS=3"], env, mode="interactive", local_gpus=1)
    script = tmp_path / "launch.sh"
    script.write_text(render_interactive(run))
    proc = subprocess.run(["bash", str(script)], env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=600)
    run_dir = Path(str(run.run_dir))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in (run_dir / "logs").glob("repeat-*.log")) == ["repeat-1.log", "repeat-2.log", "repeat-3.log"]
    assert (run_dir / "calibration" / "rank0.json").is_file()
    result = json.loads((run_dir / "result.json").read_text())
    assert result["repeats"]["n"] == 3 and result["repeats"]["stats"]["tflops_per_gpu"]["spread"] == 0.0
    assert result["segments"] == 3 and result["calibration"]["ranks"][0]["rank"] == 0


def test_without_train_log_the_repeat_and_calibration_logs_are_not_read_as_the_run(tmp_path):
    from benchlib.metrics.collect import run_logs

    logs = tmp_path / "logs"
    logs.mkdir()
    for name in ("slurm-7.out", "calibration.log", "repeat-1.log", "repeat-12.log"):
        (logs / name).write_text("x\n")
    assert [p.name for p in run_logs(tmp_path)] == ["slurm-7.out"]
