"""The Megatron model a checkpoint is converted for, built on the meta device (no memory).

Its state dict gives the expected name and shape of every parameter; its `sharded_state_dict()`
gives the distributed-checkpoint keys, so a torch_dist checkpoint matches what Megatron loads.
"""
from __future__ import annotations

import importlib
from typing import Any, Protocol

from benchlib.config.backend import FUSION_OFF_FLAGS


class ModelShape(Protocol):
    """What building needs of a model's shape (conversion's `families.ModelShape` is one)."""

    max_pos: int
    mla: bool
    q_lora_rank: int | None

    def megatron_flags(self) -> list[str]: ...


# Flags that let Megatron build the model on a CPU-only machine with its local implementation.
BUILD_FLAGS = [
    "--transformer-impl", "local", *FUSION_OFF_FLAGS, "--tokenizer-type", "NullTokenizer",
    "--micro-batch-size", "1", "--global-batch-size", "1", "--use-cpu-initialization",
]


def build_flags(shape: ModelShape, dtype: str, vocab_multiple: int) -> list[str]:
    flags = shape.megatron_flags() + BUILD_FLAGS + [
        "--seq-length", str(min(shape.max_pos, 4096)), "--make-vocab-size-divisible-by", str(vocab_multiple),
        "--ckpt-format", "torch_dist",
    ]
    if dtype == "bf16":
        flags.append("--bf16")
    elif dtype == "fp16":
        flags.append("--fp16")
    return flags


def resolve_spec(spec: str | None, shape: ModelShape) -> Any:
    """None -> Megatron's local spec (with an SDPA core attention for MLA); 'module:function' -> that."""
    if spec:
        mod, _, fn = spec.partition(":")
        return getattr(importlib.import_module(mod), fn or "get_spec")
    if not shape.mla:
        return None
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_decoder_block_spec

    from benchlib.megatron.sdpa_attention import patch_core_attention

    return lambda config: patch_core_attention(
        get_gpt_decoder_block_spec(config, use_transformer_engine=False, normalization="RMSNorm"), shape.q_lora_rank)


def build_meta_model(shape: ModelShape, dtype: str = "bf16", vocab_multiple: int = 128, spec: str | None = None) -> tuple[Any, Any]:
    """(model on the meta device at TP=PP=EP=1, Megatron args namespace)."""
    import torch

    from benchlib.megatron.build import build_gpt_model, init_single_process, parse_megatron_args

    init_single_process()
    flags = build_flags(shape, dtype, vocab_multiple)
    with torch.device("meta"):
        model = build_gpt_model(flags, spec=resolve_spec(spec, shape))
    return model, parse_megatron_args(flags)
