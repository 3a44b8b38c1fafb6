"""`check_fits` and `benchlib estimate` on resolved runs of shipped model configs (no GPU needed)."""
from __future__ import annotations

import pytest

from benchlib.cli import main
from benchlib.core.errors import BenchError
from benchlib.planning.memory import check_fits, estimate_memory
from benchlib.config.resolve import resolve_run

ENV = {"CLUSTER": "template"}  # GPU_TYPE H100, 8 GPUs per node


def test_a_layout_that_cannot_fit_is_stopped_with_the_breakdown_and_the_escape_knob():
    # DeepSeek-V3 with EP=8 on 16 nodes (PP=16): a 4-layer stage holds 4 x 32 experts of
    # 3 x 7168 x 2048 = 5.6B parameters; expert-DP = 128 / (16 x 8) = 1 leaves their Adam state
    # unsharded: 5.6B x (2 + 4 + 12) bytes = about 100 GB > 80 GB.
    run = resolve_run(["MODEL=DeepSeek-V3", "EP=8", "NNODES=16", "GBS=128"], ENV)
    with pytest.raises(BenchError) as err:
        check_fits(run)
    text = str(err.value)
    assert "MEM_CHECK=0" in text
    for part in ("weights", "gradients", "optimizer state", "activations", "H100"):
        assert part in text
    check_fits(resolve_run(["MODEL=DeepSeek-V3", "EP=8", "NNODES=16", "GBS=128", "MEM_CHECK=0"], ENV))


def test_a_proxy_that_fits_passes():
    run = resolve_run(["MODEL=Qwen3-30B-A3B-Proxy"], ENV)
    check_fits(run)
    est = estimate_memory(run)
    assert est.fits() and est.flops_per_iteration and est.flops_per_iteration > 0


def test_estimate_command_prints_the_breakdown(capsys):
    assert main(["estimate", "Qwen3-30B-A3B-Proxy", "CLUSTER=template", "MBS=2", "GBS=16"]) == 0
    out = capsys.readouterr().out
    assert "peak allocated" in out and "optimizer state" in out and "FLOPs per iteration" in out


def test_a_record_with_the_command_line_estimates_like_the_run_it_came_from():
    # The GPU records keep megatron_args as the argument list the job ran with (plus the GPU
    # count and backend); reading it back must give the same estimate as the resolved run.
    from benchlib.planning.memory import args_from_record, estimate_from_args

    run = resolve_run(["MODEL=Qwen3-30B-A3B-Proxy", "EP=4", "NNODES=1", "GBS=32", "MBS=2"], ENV)
    record = {"megatron_args": list(run.megatron_args), "gpus": run.world_size, "backend": run.backend.name}
    args, backend = args_from_record(record)
    from_record = estimate_from_args(args, backend=backend)
    from_run = estimate_memory(run)
    assert from_record.peak_allocated == from_run.peak_allocated
    assert from_record.params == from_run.params


def test_launch_refuses_before_anything_is_written_and_mem_check_0_lets_it_through(tmp_path, monkeypatch, capsys):
    """Through the lead's `benchlib launch` (which calls check_fits): no sbatch is needed, the
    refusal comes before a run directory or a submission."""
    for key in ("DRY_RUN", "MEM_CHECK", "MODEL", "CLUSTER"):
        monkeypatch.delenv(key, raising=False)
    argv = ["launch", "--mode", "sbatch", "MODEL=DeepSeek-V3", "CLUSTER=template", "EP=8", "NNODES=16", "GBS=128",
            f"OUTPUT_ROOT={tmp_path}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "exceeds" in err and "MEM_CHECK=0" in err and "optimizer state" in err
    assert not any(tmp_path.iterdir())  # nothing written
    monkeypatch.setenv("DRY_RUN", "1")
    assert main(argv + ["MEM_CHECK=0"]) == 0
    assert "#SBATCH" in capsys.readouterr().out


def test_estimate_options_after_the_model_are_options_not_megatron_args(capsys):
    import json

    assert main(["estimate", "Qwen3-30B-A3B-Proxy", "CLUSTER=template", "--gpu", "H200", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["gpu_type"] == "H200" and data["peak_allocated"] <= data["total"] <= data["capacity"]
