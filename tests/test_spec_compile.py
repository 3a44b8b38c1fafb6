"""COMPILE=1 (benchlib/megatron/spec/compiled.py) on a tiny native-spec MoE GPTModel on the CPU:
torch.compile with inductor (C++ codegen through the machine's gcc) gives the loss and gradients
of the eager model from the same weights, the norms really are compiled modules with unchanged
state dicts, and torch._dynamo counts no graph break (the figure the module docstring gives).
Faked: the GPU (rotary embedding asks torch.cuda.current_device, answered with the CPU)."""
from __future__ import annotations

import pytest

pytestmark = [pytest.mark.megatron, pytest.mark.slow]
torch = pytest.importorskip("torch")


@pytest.fixture
def compile_module():
    from benchlib.megatron.spec import compiled

    compiled.uninstall()
    yield compiled
    compiled.uninstall()


def _config():
    from tiny_moe import tiny_moe_config

    return tiny_moe_config()


def test_compiled_norms_and_router_match_eager_without_graph_breaks(mpu, compile_module, monkeypatch):
    from megatron.core.models.gpt.gpt_model import GPTModel
    from megatron.core.transformer.moe import router
    from torch._dynamo.utils import counters

    from benchlib.megatron.spec import native_spec

    monkeypatch.setattr(torch.cuda, "current_device", lambda: "cpu")
    monkeypatch.setenv("FAST_OPS", "0")  # Triton kernels are not what this test is about
    cfg = _config()
    tokens = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(1))
    labels = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(2))
    positions = torch.arange(16).unsqueeze(0).expand(2, -1)

    def build_and_run():
        torch.manual_seed(7)
        model = GPTModel(cfg, native_spec(cfg), vocab_size=300, max_sequence_length=16, position_embedding_type="rope")
        loss = model(tokens, positions, None, labels=labels)
        loss.sum().backward()
        return model, loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    monkeypatch.setenv("COMPILE", "0")
    eager_model, eager_loss, eager_grads = build_and_run()
    assert compile_module.installed() == []
    assert eager_model.decoder.layers[0].input_layernorm._compiled_call_impl is None

    torch._dynamo.reset()
    counters.clear()
    monkeypatch.setenv("COMPILE", "1")
    model, loss, grads = build_and_run()
    assert compile_module.installed() == ["megatron.core.transformer.moe.router:topk_routing_with_score_function"]
    assert router.topk_routing_with_score_function is compile_module.compiled_topk_routing
    layer = model.decoder.layers[0]
    norms = [layer.input_layernorm, layer.pre_mlp_layernorm, layer.self_attention.q_layernorm,
             layer.self_attention.k_layernorm, model.decoder.final_layernorm]
    assert all(n._compiled_call_impl is not None for n in norms)
    assert model.state_dict().keys() == eager_model.state_dict().keys()
    # dynamo really traced (norm frames and the router) and broke no graph
    assert counters["frames"]["ok"] >= 2 and counters["stats"]["calls_captured"] > 0
    assert dict(counters["graph_break"]) == {}
    assert torch.allclose(loss, eager_loss, rtol=1e-5, atol=1e-5)
    assert grads.keys() == eager_grads.keys()
    for name, g in eager_grads.items():
        assert float((grads[name] - g).abs().max() / g.abs().max().clamp_min(1e-12)) < 1e-4, name


def test_compile_off_leaves_the_spec_and_router_alone(compile_module, monkeypatch):
    from megatron.core.transformer.moe import router
    from megatron.core.transformer.torch_norm import WrappedTorchNorm

    from benchlib.megatron.spec.layer_spec import build_native_spec

    monkeypatch.setenv("COMPILE", "0")
    original = router.topk_routing_with_score_function
    assert compile_module.install() == []
    spec = build_native_spec(_config())
    assert compile_module.compile_spec(spec) is spec and router.topk_routing_with_score_function is original
    monkeypatch.setenv("COMPILE", "1")
    swapped = compile_module.compile_spec(spec)
    layer = swapped.layer_specs[0].submodules
    assert layer.input_layernorm is compile_module.CompiledTorchNorm
    assert layer.self_attention.submodules.q_layernorm is compile_module.CompiledTorchNorm
    assert spec.layer_specs[0].submodules.input_layernorm is WrappedTorchNorm  # the original spec is not modified
