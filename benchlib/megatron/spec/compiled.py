"""`COMPILE=1`: torch.compile on the native spec's small memory-bound pieces.

What is compiled (each is a whole graph: no graph break on the tiny CPU model of
tests/test_spec_compile.py, `torch._dynamo.utils.counters["graph_break"]` stays empty):

| piece | how | graphs |
| --- | --- | --- |
| every torch norm of the spec (input / pre-MLP / q / k / kv norms, the final norm) | `nn.Module.compile()` on the module Megatron's `WrappedTorchNorm` builds | one per norm shape |
| MoE router scoring (`moe_utils.topk_routing_with_score_function` as router.py calls it) | `torch.compile` of Megatron's function | one per score function / top-k |

Already compiled without the knob: the SwiGLU of experts and dense MLPs (Megatron's
`--bias-swiglu-fusion`, on by default, is `torch.compile`d through `megatron.core.jit`).
Triton kernels of the fast ops (RoPE, cross-entropy, permutation) are not recompiled.
Not compiled: attention (SDPA is one kernel already), the grouped GEMMs, the token dispatcher
(data-dependent shapes), whole layers (Megatron's layer forward has Python-side state:
recompute, offloading, CUDA-graph hooks).

Router scoring with the fused TE router or routing replay keeps Megatron's eager function.
The knob keeps its name on the rank: COMPILE (0 by default until measured on the GPU).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

from benchlib.megatron.stand_ins import StandIns

_STAND_INS = StandIns("COMPILE", "0")
enabled, installed = _STAND_INS.enabled, _STAND_INS.installed
_ROUTER = "megatron.core.transformer.moe.router"


def install() -> list[str]:
    """Compile the router scoring (idempotent); returns what is patched."""
    if not enabled() or installed():
        return installed()
    from megatron.core.transformer.moe import router

    _STAND_INS.patch(router, "topk_routing_with_score_function", compiled_topk_routing)
    return installed()


def uninstall() -> None:
    _STAND_INS.restore()
    _compiled_routing.clear()


_compiled_routing: dict[str, Callable[..., Any]] = {}


def compiled_topk_routing(logits: Any, topk: int, *args: Any, **kwargs: Any) -> Any:
    """Megatron's `topk_routing_with_score_function`, compiled where it is plain torch."""
    original = _STAND_INS.original(_ROUTER, "topk_routing_with_score_function")
    if kwargs.get("fused") or kwargs.get("router_replay") is not None or args:
        return original(logits, topk, *args, **kwargs)
    if "fn" not in _compiled_routing:
        import torch

        _compiled_routing["fn"] = torch.compile(original)
    return _compiled_routing["fn"](logits, topk, **kwargs)


class CompiledTorchNorm:
    """Megatron's `WrappedTorchNorm` (same arguments, same module and parameters), with its
    forward compiled: `nn.Module.compile()` leaves the state dict untouched."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:  # type: ignore[misc]
        from megatron.core.transformer.torch_norm import WrappedTorchNorm

        module = WrappedTorchNorm(*args, **kwargs)
        module.compile()
        return module


_NORM_FIELDS = ("input_layernorm", "pre_mlp_layernorm", "q_layernorm", "k_layernorm", "kv_layernorm", "layer_norm")


def compile_spec(spec: Any) -> Any:
    """A copy of a native layer/block spec whose torch norms are compiled (no-op when COMPILE=0)."""
    if not enabled():
        return spec
    return _swap_norms(spec)


def _is_torch_norm(value: Any) -> bool:
    from megatron.core.transformer.torch_norm import WrappedTorchNorm

    return value is WrappedTorchNorm or getattr(value, "module", None) is WrappedTorchNorm


def _swap_norms(node: Any) -> Any:
    """Walk ModuleSpecs / submodule dataclasses / block specs, replacing WrappedTorchNorm."""
    from megatron.core.transformer.spec_utils import ModuleSpec

    if isinstance(node, ModuleSpec):
        if node.module is _torch_norm_class():
            return dataclasses.replace(node, module=CompiledTorchNorm)
        if node.submodules is not None:
            return dataclasses.replace(node, submodules=_swap_norms(node.submodules))
        return node
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        changes = {}
        for f in dataclasses.fields(node):
            value = getattr(node, f.name)
            if f.name in _NORM_FIELDS and value is _torch_norm_class():
                changes[f.name] = CompiledTorchNorm
            elif f.name == "layer_specs" and isinstance(value, list):
                changes[f.name] = [_swap_norms(v) for v in value]
            elif isinstance(value, ModuleSpec) or (dataclasses.is_dataclass(value) and not isinstance(value, type)):
                changes[f.name] = _swap_norms(value)
        return dataclasses.replace(node, **changes) if changes else node
    return node


def _torch_norm_class() -> Any:
    from megatron.core.transformer.torch_norm import WrappedTorchNorm

    return WrappedTorchNorm
