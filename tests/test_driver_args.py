"""The driver's argument handling: reading the backend the launcher rendered (pure Python) and the resulting argument list
going through Megatron-Core 0.19.2's own parse_args + validate_args + gpt_config_from_args.

Faked: the GPU. validate_args asks torch.cuda.get_device_capability(); it is answered with an
H200's (9, 0) because this CI machine has no NVIDIA driver. Nothing else is stubbed.
"""
from __future__ import annotations

import sys

import pytest

from pathlib import Path

from benchlib.config.backend import FUSION_OFF_FLAGS, LOCAL_FLAGS, NATIVE_FLAGS, NATIVE_SPEC
from benchlib.config.flags import to_tokens
from benchlib.megatron.driver.argv import backend_of, check_runnable, flag_value, spec_value
from benchlib.core.errors import BenchError

SMALL_MOE = [
    "--num-layers", "2", "--hidden-size", "256", "--num-attention-heads", "8", "--group-query-attention",
    "--num-query-groups", "2", "--kv-channels", "32", "--ffn-hidden-size", "512", "--num-experts", "8",
    "--moe-router-topk", "2", "--moe-ffn-hidden-size", "128", "--seq-length", "128",
    "--max-position-embeddings", "128", "--micro-batch-size", "1", "--global-batch-size", "8",
    "--mock-data", "--tokenizer-type", "NullTokenizer", "--vocab-size", "1000", "--bf16", "--swiglu",
    "--normalization", "RMSNorm", "--disable-bias-linear", "--position-embedding-type", "rope",
    "--train-iters", "5", "--lr", "1e-4", "--moe-token-dispatcher-type", "alltoall", "--moe-grouped-gemm",
]


NATIVE_ARGV = SMALL_MOE + to_tokens(NATIVE_FLAGS)


def test_backend_is_read_from_the_rendered_argv_not_decided() -> None:
    """The launcher's NATIVE_FLAGS make a native argv; the driver only reads it back, whatever TE does."""
    assert spec_value(NATIVE_ARGV) == list(NATIVE_SPEC)
    assert flag_value(NATIVE_ARGV, "--transformer-impl") == "local"
    for flag in FUSION_OFF_FLAGS:
        assert flag in NATIVE_ARGV
    assert backend_of(NATIVE_ARGV) == "native"
    assert check_runnable(NATIVE_ARGV, te_available=True) == "native"  # TE importable changes nothing
    assert check_runnable(NATIVE_ARGV, te_available=False) == "native"
    local = SMALL_MOE + to_tokens(LOCAL_FLAGS)
    assert backend_of(local) == "local" and spec_value(local) is None


def test_te_argv_runs_where_te_imports_and_is_refused_with_the_fix_where_it_does_not() -> None:
    assert check_runnable(list(SMALL_MOE), te_available=True) == "te"  # Megatron's default impl is TE
    with pytest.raises(BenchError) as err:
        check_runnable(SMALL_MOE + ["--transformer-impl", "transformer_engine"], te_available=False)
    assert "BACKEND=native" in err.value.hint


def test_driver_module_keeps_no_environment_backend_switch() -> None:
    """One decision per fact: nothing under benchlib reads a second backend variable."""
    import benchlib

    root = Path(benchlib.__file__).parent
    offenders = [str(p) for p in root.rglob("*.py") if "BENCH_SPEC" in p.read_text()]
    assert offenders == []


def test_flag_value_forms() -> None:
    assert flag_value(["--a", "1", "--a=2"], "--a") == "2"
    assert flag_value(["--ab", "1"], "--a") is None
    assert spec_value(["--spec", "m", "f", "--x"]) == ["m", "f"]


@pytest.mark.megatron
def test_megatron_validates_native_argv_and_resolves_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("megatron.core")
    from megatron.training.argument_utils import gpt_config_from_args
    from megatron.training.arguments import parse_args, validate_args

    import benchlib.megatron.spec

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: (9, 0))
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setattr(sys, "argv", ["driver", *NATIVE_ARGV])
    args = parse_args()
    validate_args(args)
    assert args.transformer_impl == "local"
    cfg = gpt_config_from_args(args)
    t = cfg.transformer
    assert t.persist_layer_norm is False and t.gradient_accumulation_fusion is False
    assert t.masked_softmax_fusion is False and t.apply_rope_fusion is False
    assert cfg.transformer_layer_spec is benchlib.megatron.spec.native_spec


@pytest.mark.megatron
def test_megatron_refuses_a_bad_layout_through_the_driver_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("megatron.core")
    from megatron.training.arguments import parse_args, validate_args

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: (9, 0))
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "6")
    monkeypatch.setattr(sys, "argv", ["driver", *NATIVE_ARGV, "--expert-model-parallel-size", "6"])
    args = parse_args()
    with pytest.raises(AssertionError):
        validate_args(args)


@pytest.mark.megatron
def test_forward_step_gives_the_schedule_plan_when_megatron_asks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Megatron's combined 1F1B schedule (A2A_OVERLAP=1) calls forward_step(..., return_schedule_plan=True)
    and expects the model's schedule plan, not its output."""
    import megatron.training

    from benchlib.megatron.driver import train

    class Timer:
        def start(self) -> None: ...
        def stop(self) -> None: ...

    monkeypatch.setattr(megatron.training, "get_timers", lambda: (lambda name, log_level=0: Timer()))
    batch = ("tokens", "labels", "loss_mask", "mask", "positions")
    monkeypatch.setattr(train, "get_batch", lambda it: batch)
    calls = []

    class Model:
        def __call__(self, *args, **kwargs):
            calls.append(("forward", args, kwargs))
            return "output"

        def build_schedule_plan(self, *args, **kwargs):
            calls.append(("plan", args, kwargs))
            return "plan"

    out, loss_fn = train.forward_step(iter(()), Model(), return_schedule_plan=True)
    assert out == "plan" and loss_fn.args == ("loss_mask",)
    out, _ = train.forward_step(iter(()), Model())
    assert out == "output"
    assert [c[0] for c in calls] == ["plan", "forward"]
    assert calls[0][1] == ("tokens", "positions", "mask") and calls[0][2] == {"labels": "labels", "loss_mask": "loss_mask"}
