"""Log parsing, steady window, status and `benchlib parse` on constructed logs.

The logs in tests/fixtures/metrics/ are constructed (make_fixtures.py says how): endings such as
OOM, NaN, NCCL watchdog and Slurm time limit cannot be produced on demand on this CPU machine.
Their argument dump is Megatron-Core 0.19.2's own output and their TFLOP/s/GPU is Megatron's
own function's; the per-line iteration times are hand-picked inputs (make_fixtures.LINE_MS), from
which the expected figures below are derived by hand.
"""
from __future__ import annotations

import json
import re
import os
import shutil
import statistics
import time
from pathlib import Path

import pytest

from benchlib.cli import main
from benchlib.core.errors import BenchError
from benchlib.metrics import parse_log, summarize
from benchlib.metrics.logparse import parse_arg_value, parse_iteration_line, strip_prefix
from benchlib.metrics.status import EXIT_CODES

FIX = Path(__file__).resolve().parent / "fixtures" / "metrics"
SMALL = json.loads((FIX / "small_moe_args.json").read_text())

# Kept lines of the 100-iteration fixtures: 1 (first line) and 10 (first interval) dropped, default
# skip = max(3, 10% of 100) = 10 -> interval 11..20 is the first kept; 60 follows eval + save at 50.
KEPT_MS = [661.0, 659.0, 663.0, 660.0, 658.0, 662.0, 660.5, 659.5]  # iterations 20,30,40,50,70,80,90,100


def result_of(name: str, gpu: str | None = "H200", **kw):
    return summarize(parse_log([FIX / name]), gpu, **kw)


def test_steady_window_and_time_statistics_of_a_completed_run():
    r = result_of("completed_srun.log")
    assert r.status == "completed"
    assert r.steady_window["iterations"] == [20, 30, 40, 50, 70, 80, 90, 100]
    assert r.steady_window["dropped"] == {"first_line": [1], "first_interval": [10], "warmup": [], "eval_or_save": [60],
                                          "other_config": []}
    st = r.iteration_time_ms
    assert st["median"] == pytest.approx((660.0 + 660.5) / 2)  # middle two of the sorted eight
    assert st["mean"] == pytest.approx(5283.0 / 8)
    # p10: position 0.7 between the two smallest (658, 659); p90: 6.3 between 662 and 663
    assert st["p10"] == pytest.approx(658.7)
    assert st["p90"] == pytest.approx(662.3)
    assert st["cv"] == pytest.approx(statistics.stdev(KEPT_MS) / (5283.0 / 8))
    assert "20..100" in r.steady_window["description"]


def test_derived_throughput_figures():
    r = result_of("completed_srun.log")
    median_s = 0.66025
    # tokens/s/GPU = global batch 32 x seq 4096 / median time / 4 GPUs
    assert r.num_gpus == 4
    assert r.tokens_per_s_per_gpu == pytest.approx(32 * 4096 / median_s / 4)
    # recomputed TFLOP/s from Megatron's own FLOPs count for this config (make_fixtures.py)
    assert r.tflops_per_gpu_recomputed == pytest.approx(SMALL["megatron_flops_per_iteration"] / (median_s * 1e12 * 4))
    assert r.model_flops_per_iteration == pytest.approx(SMALL["megatron_flops_per_iteration"], rel=1e-12)
    # Megatron's printed figure (median over the window) agrees within 0.5%
    assert abs(r.recomputed_vs_reported_pct) < 0.5
    # MFU against the H200 bf16 dense peak of 989.4
    assert r.precision == "bf16"
    assert r.peak["tflops"] == 989.4 and "H200" in r.peak["source"]
    assert r.mfu == pytest.approx(r.tflops_per_gpu_recomputed / 989.4)
    assert r.layout["ep"] == 4 and r.layout["dp"] == 4 and r.layout["gbs"] == 32
    assert r.peak_memory_mb["per_rank"] == {"0": {"max_allocated": 41244.56, "max_reserved": 45678.0}}
    assert r.theoretical_memory_mb == {"weight_and_optimizer": 9876.54, "activation": 23456.78, "total": 33333.32}
    assert (r.loss["first"], r.loss["last"], r.loss["last_iteration"]) == (11.64, 6.42, 100)


def test_argument_dump_is_recovered_with_types():
    p = parse_log([FIX / "completed_srun.log"])
    cfg = p.config
    assert cfg["num_layers"] == 4 and cfg["hidden_size"] == 2048 and cfg["num_experts"] == 64
    assert cfg["moe_layer_freq"] == [0, 1, 1, 1]
    assert cfg["bf16"] is True and cfg["fp8"] is None
    assert cfg["world_size"] == 4
    # printed as None in the dump; taken from the tokenizer's "padded vocab" line
    assert cfg["padded_vocab_size"] == 102400
    # names of 48+ characters are printed without dots
    assert "inference_dynamic_batching_prefix_caching_coordinator_policy" in cfg


@pytest.mark.parametrize("name", ["completed_srun.log", "completed_torchrun_nomicro.log"])
def test_prefix_styles_and_timestamp_formats_give_the_same_numbers(name):
    r = result_of(name)
    assert r.status == "completed"
    assert r.steady_window["iterations"] == [20, 30, 40, 50, 70, 80, 90, 100]
    assert r.iteration_time_ms["median"] == pytest.approx(660.25)


def test_strip_prefix_variants():
    assert strip_prefix(" 7: hello") == "hello"
    assert strip_prefix("63: [default3]: x") == " x"
    assert strip_prefix("[default0]:  num_layers ... 4") == "  num_layers ... 4"
    assert strip_prefix("plain") == "plain"


def test_iteration_line_fields_and_cut_lines():
    line = ("12: [2026-11-21 10:00:00] iteration       10/     100 | consumed samples:         2560 | elapsed time per "
            "iteration (ms): 1234.6 | throughput per GPU (TFLOP/s/GPU): 312.3 | energy per GPU (J/iter/GPU): 800.5 | "
            "learning rate: 1.000000E-04 | global batch size:   256 | lm loss: 1.040000E+01 | mtp_1 loss: 1.050000E+01 | "
            "loss scale: 1.0 | grad norm: 2.346 | number of skipped iterations:   0 | number of nan iterations:   2 |")
    rec = parse_iteration_line(line)
    assert (rec.iteration, rec.train_iters, rec.elapsed_ms, rec.tflops_reported) == (10, 100, 1234.6, 312.3)
    assert rec.global_batch == 256 and rec.consumed_samples == 2560 and rec.nan_iterations == 2
    assert rec.losses == {"lm loss": 10.4, "mtp_1 loss": 10.5}
    assert rec.extra["energy per GPU (J/iter/GPU)"] == 800.5
    assert rec.timestamp is not None
    assert parse_iteration_line(line[:90]) is None  # cut before the elapsed time: not a measurement


def test_arg_values():
    assert parse_arg_value("None") is None
    assert parse_arg_value("True") is True
    assert parse_arg_value("12") == 12 and parse_arg_value("1e-4") == 1e-4
    assert parse_arg_value("[0, 1, 1]") == [0, 1, 1]
    assert parse_arg_value("torch.bfloat16") == "torch.bfloat16"


@pytest.mark.parametrize("name,status,needle", [
    ("oom.log", "oom", "CUDA out of memory"),
    ("nan.log", "nan", "lm loss: nan"),
    ("nccl_timeout.log", "nccl_timeout", "Watchdog caught collective operation timeout"),
    ("time_limit.log", "timeout", "DUE TO TIME LIMIT"),
    ("exit_duration.log", "timeout", "exiting program after 4.0 minutes"),
    ("sigterm.log", "timeout", "SIGTERM"),
    ("cancelled.log", "cancelled", "CANCELLED AT"),
    ("crashed.log", "crashed", "AssertionError"),
    ("hang_log_timestamps.log", "hang", "heartbeat monitor"),
    ("completed_srun.log", "completed", "[after training is done]"),
])
def test_status_and_its_evidence_line(name, status, needle):
    r = result_of(name)
    assert r.status == status
    assert needle in r.status_evidence
    assert r.exit_code == EXIT_CODES[status]


def test_hang_detail_names_the_silence():
    r = result_of("hang_log_timestamps.log")
    # last iteration line 40, C++ warnings continue 60 minutes later: 3600 s > max(10 x 0.661 s, 300 s)
    assert "3600 s" in r.status_detail and "iteration 40" in r.status_detail


def test_running_versus_stale_by_file_age(tmp_path):
    log = tmp_path / "train.log"
    shutil.copy(FIX / "truncated_running.log", log)
    now = time.time()
    os.utime(log, (now, now))
    r = summarize(parse_log([log]), "H200", now=now + 5)
    assert r.status == "running"
    assert any("cut short" in w for w in r.warnings)
    # the cut iteration-100 line has no time: the last measurement is iteration 90
    assert r.series[-1]["iteration"] == 90
    # 301 s without a write: over the 300 s floor (10 x 0.66 s is less) -> hang
    r = summarize(parse_log([log]), "H200", now=now + 301)
    assert r.status == "hang" and "not written for 301 s" in r.status_detail
    # with a larger hang factor x median the same silence is still "running"
    r = summarize(parse_log([log]), "H200", now=now + 301, hang_factor=1000, hang_min_s=1)
    assert r.status == "running"


def test_restart_in_one_file():
    r = result_of("restart.log")
    assert r.status == "completed" and r.segments == 2
    # launch 1: lines 1..60 (60 after eval+save); launch 2 resumes at 51 and warms up again:
    # its first line (51) and first interval (60) are dropped, skip = max(3, 10% of 50) = 5.
    assert r.steady_window["dropped"]["first_line"] == [1, 51]
    assert r.steady_window["dropped"]["first_interval"] == [10, 60]
    assert r.steady_window["iterations"] == [20, 30, 40, 50, 70, 80, 90, 100]
    kept = [661.0, 659.0, 663.0, 660.0, 640.0, 641.0, 642.0, 639.0]
    assert r.iteration_time_ms["median"] == pytest.approx(statistics.median(kept))


def test_restart_over_two_files(tmp_path):
    text = (FIX / "restart.log").read_text()
    cut = text.index("[exiting program after receiving SIGTERM.]")
    cut = text.index("\n", cut) + 1
    (tmp_path / "a.log").write_text(text[:cut])
    (tmp_path / "b.log").write_text(text[cut:])
    one = result_of("restart.log")
    two = summarize(parse_log([tmp_path / "a.log", tmp_path / "b.log"]), "H200")
    assert two.segments == 2 and two.steady_window["iterations"] == one.steady_window["iterations"]
    assert two.iteration_time_ms == one.iteration_time_ms


def test_explicit_skip():
    r = result_of("completed_srun.log", skip=45)  # intervals starting at or before 45 go
    assert r.steady_window["iterations"] == [70, 80, 90, 100]
    assert r.steady_window["dropped"]["warmup"] == [20, 30, 40, 50]


def test_parser_reads_across_small_chunks_identically():
    big = parse_log([FIX / "restart.log"])
    small = parse_log([FIX / "restart.log"], chunk_bytes=4096)  # argument dump spans many chunks
    assert [r.iteration for r in small.iterations] == [r.iteration for r in big.iterations]
    assert small.config == big.config and [e.kind for e in small.events] == [e.kind for e in big.events]


def test_no_argument_dump_uses_the_given_config(tmp_path):
    lines = [ln for ln in (FIX / "completed_srun.log").read_text().splitlines()
             if "elapsed time" in ln or "loss at iteration" in ln or "saving checkpoint" in ln
             or "[after training is done]" in ln]
    log = tmp_path / "bare.log"
    log.write_text("\n".join(lines) + "\n")
    bare = summarize(parse_log([log]), "H200")
    assert bare.tflops_per_gpu_recomputed is None and bare.tokens_per_s_per_gpu is None
    assert any("argument" in w for w in bare.warnings)
    full = parse_log([FIX / "completed_srun.log"]).config
    given = summarize(parse_log([log]), "H200", config=full)
    assert given.tflops_per_gpu_recomputed == pytest.approx(result_of("completed_srun.log").tflops_per_gpu_recomputed)


def test_missing_log_is_a_bench_error():
    with pytest.raises(BenchError) as err:
        parse_log([FIX / "nope.log"])
    assert err.value.hint


# --- the command ---------------------------------------------------------------------------

def test_cli_parse_completed_prints_the_numbers_and_exits_0(capsys, tmp_path):
    out = tmp_path / "r.json"
    rc = main(["parse", str(FIX / "completed_srun.log"), "--gpu", "H200", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0
    for needle in ("median 660.2", "tokens/s/GPU", "TFLOP/s/GPU (Megatron)", "TFLOP/s/GPU (benchlib)", "MFU", "completed"):
        assert needle in text
    data = json.loads(out.read_text())
    assert data["status"] == "completed" and data["iteration_time_ms"]["median"] == pytest.approx(660.25)


@pytest.mark.parametrize("name,status", [("oom.log", "oom"), ("nan.log", "nan"), ("crashed.log", "crashed")])
def test_cli_parse_failed_runs_exit_non_zero_and_name_it(name, status, capsys):
    rc = main(["parse", str(FIX / name), "--gpu", "H100"])
    assert rc == EXIT_CODES[status] and rc != 0
    assert f"{status}:" in capsys.readouterr().out


def test_cli_ok_option_and_json(capsys):
    assert main(["parse", str(FIX / "time_limit.log"), "--json"]) == EXIT_CODES["timeout"]
    data = json.loads(capsys.readouterr().out)
    assert data["status"] == "timeout" and data["mfu"] is None  # no GPU type given
    assert main(["parse", str(FIX / "time_limit.log"), "--ok", "completed,timeout"]) == 0
    assert main(["parse", str(FIX / "time_limit.log"), "--ok", "finished"]) == 2


def test_cli_run_directory_writes_result_json(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "logs").mkdir(parents=True)
    shutil.copy(FIX / "completed_srun.log", run / "logs" / "train.log")
    (run / "resolved.json").write_text(json.dumps({"model": "Small-MoE", "world_size": 4, "cluster_config": {"GPU_TYPE": "H200"},
                                                   "megatron_args": ["--num-layers", "4"]}))
    assert main(["parse", str(run)]) == 0
    data = json.loads((run / "result.json").read_text())
    assert data["model"] == "Small-MoE" and data["gpu_type"] == "H200" and data["mfu"] > 0


def test_cli_unknown_gpu_is_refused(capsys):
    assert main(["parse", str(FIX / "completed_srun.log"), "--gpu", "H300"]) == 2
    assert "unknown GPU type" in capsys.readouterr().err


# One real-shaped line per marker, among noise from other ranks: each must be found through the
# parser's anchors (the fast path only looks at lines holding an anchor).
MARKER_LINES = {
    "oom": ["2: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB.",
            "2: RuntimeError: CUDA out of memory. Tried to allocate 1.00 GiB",
            "[rank2]:[E1121 10:00:00.000000 CUDACachingAllocator.cpp:1] CUDA error: out of memory"],
    "nan": ["3: RuntimeError: Rank 3, node n1, device 3, iteration 7: Unexpected result nan (message='found NaN in local grad norm')",
            "3: AssertionError: Rank 3: found NaN in local forward loss calculation. Device: 3, node: n1"],
    "nccl_timeout": ["[rank1]:[E1121 10:00:00.000000 ProcessGroupNCCL.cpp:632] [Rank 1] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=9) ran for 600015 milliseconds before timing out.",
                     "[rank1]:[E1121 10:00:00.000000 ProcessGroupNCCL.cpp:1] [PG ID 0 PG GUID 0 Rank 1] ProcessGroupNCCL's watchdog got stuck for 480 seconds"],
    "time_limit": ["slurmstepd: error: *** JOB 9 ON n1 CANCELLED AT 2026-11-21T10:00:00 DUE TO TIME LIMIT ***"],
    "cancelled": ["slurmstepd: error: *** JOB 9 ON n1 CANCELLED AT 2026-11-21T10:00:00 ***"],
    "exit_code": ["srun: error: n1: task 5: Exited with exit code 1",
                  "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: "],
    "traceback": ["4: Traceback (most recent call last):"],
    "done": ["0: [after training is done] datetime: 2026-11-21 10:00:00 "],
    "exit": ["0: [exiting program after receiving SIGTERM.] datetime: 2026-11-21 10:00:00 "],
}


@pytest.mark.parametrize("kind", sorted(MARKER_LINES))
def test_every_marker_line_is_found_among_noise(kind, tmp_path):
    noise = "\n".join(f"{r}: gpu-node-01:{r}:{r} [{r}] NCCL INFO Channel 00/0 : {r}[{r}] -> {r + 1}[{r + 1}] via P2P" for r in range(8))
    for i, line in enumerate(MARKER_LINES[kind]):
        log = tmp_path / f"{kind}{i}.log"
        log.write_text(noise + "\n" + line + "\n" + noise + "\n")
        kinds = [e.kind for e in parse_log([log]).events]
        assert kind in kinds, (line, kinds)


@pytest.mark.parametrize("command", ["parse", "compare", "push"])
def test_help_of_each_command(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0 and "usage: benchlib " + command in capsys.readouterr().out


def test_parse_runs_without_torch_or_megatron(tmp_path):
    """Login nodes have neither: parse + summarize + format with both made unimportable."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "sys.modules['torch'] = None; sys.modules['megatron'] = None\n"
        "from benchlib.cli import main\n"
        f"rc = main(['parse', {str(FIX / 'completed_srun.log')!r}, '--gpu', 'H200', '--out', {str(tmp_path / 'r.json')!r}])\n"
        "assert rc == 0, rc\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "r.json").read_text())["tflops_per_gpu_recomputed"] > 0


def test_strip_torch_rank_prefix():
    assert strip_prefix("[rank0]: ValueError: boom") == "ValueError: boom"
    assert strip_prefix(" 3: [rank3]: Traceback (most recent call last):") == "Traceback (most recent call last):"


def test_a_restart_with_another_layout_is_not_pooled(tmp_path):
    """Launch 2 of restart.log rewritten to micro batch 2: launch 1's lines leave the window."""
    text = (FIX / "restart.log").read_text()
    cut = text.index("[exiting program after receiving SIGTERM.]")
    second = text[cut:].replace("micro_batch_size ................................ 1",
                                "micro_batch_size ................................ 2")
    assert second != text[cut:]
    log = tmp_path / "restart_mbs2.log"
    log.write_text(text[:cut] + second)
    r = summarize(parse_log([log]), "H200")
    assert r.steady_window["dropped"]["other_config"] == [1, 10, 20, 30, 40, 50, 60]
    assert r.steady_window["iterations"] == [70, 80, 90, 100]
    assert r.iteration_time_ms["median"] == pytest.approx((640.0 + 641.0) / 2)
    assert any("another configuration" in w for w in r.warnings)


def test_percentiles_match_numpy():
    import random

    import numpy as np

    from benchlib.metrics.steady import percentile

    rng = random.Random(7)
    for n in (1, 2, 5, 17, 100):
        values = [rng.uniform(500, 900) for _ in range(n)]
        for q in (10, 50, 90):
            assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_energy_fields_when_logged(tmp_path):
    """--log-energy adds two fields after the throughput; medians over the window are recorded."""
    text = (FIX / "completed_srun.log").read_text()
    lines = []
    for line in text.splitlines():
        m = re.search(r"iteration\s+(\d+)/", line)
        if m and "elapsed time per iteration" in line:
            it = int(m.group(1))
            line = line.replace(" learning rate:", f" energy per GPU (J/iter/GPU): {400 + it:.1f} | power per GPU (W/GPU): {600 + it:.1f} | learning rate:")
        lines.append(line)
    log = tmp_path / "energy.log"
    log.write_text("\n".join(lines) + "\n")
    r = summarize(parse_log([log]), "H200")
    # window 20, 30, 40, 50, 70, 80, 90, 100 -> medians (450 + 470) / 2 and (650 + 670) / 2
    assert r.energy == {"joules_per_iteration_per_gpu": 460.0, "watts_per_gpu": 660.0}
    assert result_of("completed_srun.log").energy is None
