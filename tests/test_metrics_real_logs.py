"""benchlib parse on real Megatron-Core 0.19.2 logs from H200 runs (tests/fixtures/logs/*.log).

These logs are committed by the GPU runs of this project (real training on real GPUs, trimmed).
For each: the fast parser must see exactly the iteration lines a plain line-by-line reading sees,
and the recomputed TFLOP/s/GPU (benchlib's FLOPs model on the log's own argument dump) must equal
Megatron's printed figure within 0.5%.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from benchlib.metrics import parse_log, summarize
from benchlib.metrics.status import STATUSES

LOG_DIR = Path(__file__).resolve().parent / "fixtures" / "logs"
LOGS = sorted(LOG_DIR.glob("*.log")) if LOG_DIR.is_dir() else []

_ELAPSED = re.compile(r"iteration\s+(\d+)/\s*\d+ \|.*elapsed time per iteration \(ms\): ([\d.]+)")


def _plain_reading(path: Path) -> list[tuple[int, float]]:
    """Iteration lines read the slow, obvious way: every line, one regex."""
    out = []
    with open(path, errors="replace") as fh:
        for line in fh:
            m = _ELAPSED.search(line)
            if m:
                out.append((int(m.group(1)), float(m.group(2))))
    return out


@pytest.mark.parametrize("log", LOGS, ids=[p.name for p in LOGS])
def test_real_log_iteration_lines_match_a_plain_reading(log):
    parsed = parse_log([log])
    assert [(r.iteration, r.elapsed_ms) for r in parsed.iterations] == _plain_reading(log)


@pytest.mark.parametrize("log", LOGS, ids=[p.name for p in LOGS])
def test_real_log_recomputed_tflops_equal_megatron_within_half_a_percent(log):
    parsed = parse_log([log])
    result = summarize(parsed, "H200")
    assert result.status in STATUSES
    if not parsed.iterations:
        pytest.skip(f"{log.name}: no iteration line (a start-up failure log)")
    assert parsed.config, f"{log.name}: no argument dump"
    assert result.iteration_time_ms is not None
    if result.tflops_per_gpu_reported is None:
        pytest.skip(f"{log.name}: run without --log-throughput")
    assert result.tflops_per_gpu_recomputed is not None, result.warnings
    assert abs(result.tflops_per_gpu_recomputed / result.tflops_per_gpu_reported - 1) < 0.005
    # every kept line, one by one: Megatron's figure vs benchlib's FLOPs / that line's time
    flops = result.model_flops_per_iteration
    for r in parsed.iterations:
        if r.tflops_reported and r.iteration in result.steady_window["iterations"]:
            mine = flops / (r.elapsed_ms / 1000 * 1e12 * result.num_gpus)
            # both printed to 0.1: allow the rounding of either
            assert abs(mine - r.tflops_reported) <= 0.005 * r.tflops_reported + 0.1, r.line
    assert 0 < result.mfu < 1


def _expected_status(log: Path) -> str:
    # the folder's README: `failed-*` logs are real failures kept on purpose, the others ran to the end
    return "crashed" if "failed" in log.name else "completed"


@pytest.mark.parametrize("log", LOGS, ids=[p.name for p in LOGS])
def test_real_log_status_and_exit_code(log, capsys):
    from benchlib.cli import main

    rc = main(["parse", str(log), "--gpu", "H200"])
    text = capsys.readouterr().out
    status = _expected_status(log)
    assert f"status                  {status}:" in text
    assert (rc == 0) == (status == "completed")
    if status == "crashed":
        # the evidence is the exception that ended it (torch prefixes error lines with [rank0]:), not torchrun's summary
        result = summarize(parse_log([log]), "H200")
        assert result.status_evidence.startswith(("ValueError", "RuntimeError", "AssertionError", "TypeError", "torch.")), result.status_evidence
        assert "ChildFailedError" not in result.status_evidence


@pytest.mark.parametrize("log", [p for p in LOGS if "failed" not in p.name], ids=lambda p: p.name)
def test_real_log_steady_window_follows_the_documented_rule(log):
    """log interval 1 in these runs: drop iteration 1, 2 and every iteration <= max(3, ceil(10% of N))."""
    import math

    iters = [i for i, _ in _plain_reading(log)]
    n = iters[-1] - iters[0] + 1
    skip = max(3, math.ceil(0.1 * n))
    expected = [i for i in iters[2:] if i > skip]
    result = summarize(parse_log([log]), "H200")
    assert result.steady_window["iterations"] == expected
    times = dict(_plain_reading(log))
    import statistics

    assert result.iteration_time_ms["median"] == pytest.approx(statistics.median(times[i] for i in expected))


def test_compare_two_real_runs(tmp_path, capsys):
    """Local spec vs torch-native spec, same model and layout on 4 x H200."""
    from benchlib.cli import main

    a = [p for p in LOGS if p.name == "h200x4_ep4_qwen3-30b-a3b-proxy_local_mbs2.log"]
    b = [p for p in LOGS if p.name == "h200x4_ep4_qwen3-30b-a3b-proxy_native_mbs2.log"]
    if not (a and b):
        pytest.skip("needs the 4-GPU local and native logs")
    assert main(["compare", str(a[0]), str(b[0]), "--gpu", "H200", "--out", str(tmp_path / "cmp")]) == 0
    text = capsys.readouterr().out
    assert "config: spec" in text  # the one architectural difference between the two runs
    header = next(line for line in text.splitlines() if line.startswith(" ") and "1:" in line and "2:" in line)
    assert "1:local" in header and "2:native" in header  # labels tell the runs apart
    ra, rb = (summarize(parse_log([p]), "H200") for p in (a[0], b[0]))
    delta = (rb.tokens_per_s_per_gpu / ra.tokens_per_s_per_gpu - 1) * 100
    assert f"({delta:+.1f}%)" in text
    assert (tmp_path / "cmp.png").stat().st_size > 10_000 and (tmp_path / "cmp.csv").is_file()
