"""The driver's argument handling: backend choice (pure Python) and the resulting argument list
going through Megatron-Core 0.19.2's own parse_args + validate_args + gpt_config_from_args.

Faked: the GPU. validate_args asks torch.cuda.get_device_capability(); it is answered with an
H200's (9, 0) because this CI machine has no NVIDIA driver. Nothing else is stubbed.
"""
from __future__ import annotations

import sys

import pytest

from benchlib.driver.argv import LOCAL_IMPL_FLAGS, NATIVE_SPEC_ARGS, choose_backend, flag_value, spec_value
from benchlib.errors import BenchError

SMALL_MOE = [
    "--num-layers", "2", "--hidden-size", "256", "--num-attention-heads", "8", "--group-query-attention",
    "--num-query-groups", "2", "--kv-channels", "32", "--ffn-hidden-size", "512", "--num-experts", "8",
    "--moe-router-topk", "2", "--moe-ffn-hidden-size", "128", "--seq-length", "128",
    "--max-position-embeddings", "128", "--micro-batch-size", "1", "--global-batch-size", "8",
    "--mock-data", "--tokenizer-type", "NullTokenizer", "--vocab-size", "1000", "--bf16", "--swiglu",
    "--normalization", "RMSNorm", "--disable-bias-linear", "--position-embedding-type", "rope",
    "--train-iters", "5", "--lr", "1e-4", "--moe-token-dispatcher-type", "alltoall", "--moe-grouped-gemm",
]


def test_no_te_switches_to_native_and_adds_local_impl_flags() -> None:
    c = choose_backend(list(SMALL_MOE), te_available=False)
    assert c.backend == "native"
    assert flag_value(c.argv, "--transformer-impl") == "local"
    assert spec_value(c.argv) == NATIVE_SPEC_ARGS[1:]
    for f in LOCAL_IMPL_FLAGS:
        assert f in c.argv
    assert c.announce.startswith("benchlib driver: backend native") and "\n" not in c.announce


def test_te_importable_keeps_arguments_untouched() -> None:
    c = choose_backend(list(SMALL_MOE), te_available=True)
    assert c.backend == "te" and c.argv == SMALL_MOE


def test_explicit_local_keeps_megatron_local_spec() -> None:
    c = choose_backend(SMALL_MOE + ["--transformer-impl", "local", "--no-rope-fusion"], te_available=False)
    assert c.backend == "local"
    assert spec_value(c.argv) is None
    assert c.argv.count("--no-rope-fusion") == 1  # not added twice


def test_bench_spec_env_overrides_te_default() -> None:
    c = choose_backend(SMALL_MOE + ["--transformer-impl", "transformer_engine"], te_available=True, bench_spec="native")
    assert c.backend == "native"
    assert flag_value(c.argv, "--transformer-impl") == "local"
    assert c.argv.count("--transformer-impl") == 1
    with pytest.raises(BenchError):
        choose_backend(SMALL_MOE, te_available=False, bench_spec="fast")


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

    import benchlib.spec

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: (9, 0))
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    c = choose_backend(list(SMALL_MOE), te_available=False)
    monkeypatch.setattr(sys, "argv", ["driver", *c.argv])
    args = parse_args()
    validate_args(args)
    assert args.transformer_impl == "local"
    cfg = gpt_config_from_args(args)
    t = cfg.transformer
    assert t.persist_layer_norm is False and t.gradient_accumulation_fusion is False
    assert t.masked_softmax_fusion is False and t.apply_rope_fusion is False
    assert cfg.transformer_layer_spec is benchlib.spec.native_spec


@pytest.mark.megatron
def test_megatron_refuses_a_bad_layout_through_the_driver_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("megatron.core")
    from megatron.training.arguments import parse_args, validate_args

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: (9, 0))
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "6")
    c = choose_backend(SMALL_MOE + ["--expert-model-parallel-size", "6"], te_available=False)
    monkeypatch.setattr(sys, "argv", ["driver", *c.argv])
    args = parse_args()
    with pytest.raises(AssertionError):
        validate_args(args)


@pytest.mark.megatron
def test_forward_step_gives_the_schedule_plan_when_megatron_asks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Megatron's combined 1F1B schedule (A2A_OVERLAP=1) calls forward_step(..., return_schedule_plan=True)
    and expects the model's schedule plan, not its output."""
    import megatron.training

    from benchlib.driver import train

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
