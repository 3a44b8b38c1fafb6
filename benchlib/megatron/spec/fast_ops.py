"""Faster stand-ins for Megatron-Core functions the native spec's layers call (no TE needed).

Installed once per process when Megatron builds the native spec (`native_spec`), so every route
to the spec (benchlib's driver, Megatron's own `--spec benchlib.megatron.spec native_spec`) gets them.
Each stand-in keeps the signature of the function it replaces and hands anything it does not
cover back to Megatron's original:

| replaced (module.name) | covers | falls back for |
| --- | --- | --- |
| tensor_parallel.vocab_parallel_cross_entropy, language_module.fused_vocab_parallel_cross_entropy | loss over the vocabulary without an fp32 copy of the logits (kernels/cross_entropy.py) | TP>1, label smoothing, CPU tensors |
| token_dispatcher.permute / unpermute | token permutation without atomics (kernels/permute.py) | TE-fused, drop-and-pad, probs merged in unpermute, CPU tensors |
| token_dispatcher.sort_chunks_by_idxs | skips the copy when the chunk order is the identity (one EP rank) | any real reordering |
| rope_utils._apply_rotary_pos_emb_bshd | rotary embedding in one kernel each way, MLA's layout included (kernels/rope.py) | interleaved RoPE, unusual angle shapes, CPU tensors |

`FAST_OPS=0` (the knob, under its own name on every rank) leaves Megatron's functions in place (to compare, or to rule these out).
"""
from __future__ import annotations

from typing import Any

from benchlib.megatron.stand_ins import StandIns

_STAND_INS = StandIns("FAST_OPS", "1")
enabled, installed = _STAND_INS.enabled, _STAND_INS.installed
_patch, _original = _STAND_INS.patch, _STAND_INS.original


def install() -> list[str]:
    """Put the stand-ins in place (idempotent); returns what is patched."""
    if not enabled() or installed():
        return installed()
    from megatron.core import tensor_parallel
    from megatron.core.models.common.language_module import language_module
    from megatron.core.models.common.embeddings import rope_utils
    from megatron.core.transformer.moe import token_dispatcher

    _patch(tensor_parallel, "vocab_parallel_cross_entropy", vocab_parallel_cross_entropy)
    _patch(language_module, "fused_vocab_parallel_cross_entropy", fused_vocab_parallel_cross_entropy)
    _patch(token_dispatcher, "permute", permute)
    _patch(token_dispatcher, "unpermute", unpermute)
    _patch(token_dispatcher, "sort_chunks_by_idxs", sort_chunks_by_idxs)
    _patch(rope_utils, "_apply_rotary_pos_emb_bshd", apply_rotary_pos_emb_bshd)
    return installed()


def uninstall() -> None:
    """Restore Megatron's functions (tests)."""
    _STAND_INS.restore()


# --- cross-entropy --------------------------------------------------------------------------

def _tp_size(tp_group: Any) -> int:
    if tp_group is not None:
        return tp_group.size()
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        return parallel_state.get_tensor_model_parallel_world_size()
    return 1


def _loss_covered(logits: Any, target: Any, tp_group: Any, label_smoothing: float = 0.0) -> bool:
    from benchlib.megatron.spec.kernels import use_triton

    return label_smoothing == 0.0 and _tp_size(tp_group) == 1 and use_triton(logits, target)


def vocab_parallel_cross_entropy(vocab_parallel_logits: Any, target: Any, label_smoothing: float = 0.0, tp_group: Any = None) -> Any:
    from benchlib.megatron.spec.kernels.cross_entropy import cross_entropy

    if _loss_covered(vocab_parallel_logits, target, tp_group, label_smoothing):
        return cross_entropy(vocab_parallel_logits, target)
    original = _original("megatron.core.tensor_parallel", "vocab_parallel_cross_entropy")
    return original(vocab_parallel_logits, target, label_smoothing=label_smoothing, tp_group=tp_group)


def fused_vocab_parallel_cross_entropy(vocab_parallel_logits: Any, target: Any, tp_group: Any) -> Any:
    from benchlib.megatron.spec.kernels.cross_entropy import cross_entropy

    if _loss_covered(vocab_parallel_logits, target, tp_group):
        return cross_entropy(vocab_parallel_logits, target)
    original = _original("megatron.core.models.common.language_module.language_module", "fused_vocab_parallel_cross_entropy")
    return original(vocab_parallel_logits, target, tp_group)


# --- MoE token permutation ------------------------------------------------------------------

_DISPATCHER = "megatron.core.transformer.moe.token_dispatcher"


def permute(tokens: Any, routing_map: Any, probs: Any = None, num_out_tokens: Any = None, fused: bool = False,
            drop_and_pad: bool = False, tokens_per_expert: Any = None, align_size: int = 0) -> Any:
    """Megatron's `permute` (same outputs, same order: expert-major, tokens ascending within an
    expert) whose backward sums each token's copies without atomics."""
    from benchlib.megatron.spec.kernels import use_triton
    from benchlib.megatron.spec.kernels.permute import permute_tokens

    num_tokens = tokens.shape[0]
    if fused or drop_and_pad or num_out_tokens is None or num_tokens == 0 or not use_triton(tokens):
        return _original(_DISPATCHER, "permute")(
            tokens, routing_map, probs=probs, num_out_tokens=num_out_tokens, fused=fused,
            drop_and_pad=drop_and_pad, tokens_per_expert=tokens_per_expert, align_size=align_size,
        )
    # expert-major list of (expert, token) pairs: a stable sort of the transposed routing map
    expert_major = routing_map.bool().T.contiguous().reshape(-1)
    picked = expert_major.argsort(descending=True, stable=True)[:num_out_tokens]
    sorted_indices = picked % num_tokens
    permuted_probs = probs.T.contiguous().reshape(-1)[picked] if probs is not None else None
    return permute_tokens(tokens, sorted_indices), permuted_probs, sorted_indices, None, tokens_per_expert


def unpermute(permuted_tokens: Any, sorted_indices: Any, restore_shape: Any, probs: Any = None, routing_map: Any = None,
              fused: bool = False, drop_and_pad: bool = False, pad_offsets: Any = None) -> Any:
    """Megatron's `unpermute`; without probs to merge (they are applied in the experts) it is a
    segment sum instead of a bf16 scatter-add."""
    from benchlib.megatron.spec.kernels import use_triton
    from benchlib.megatron.spec.kernels.permute import unpermute_tokens

    num_tokens = int(restore_shape[0])
    covered = not fused and not drop_and_pad and probs is None and pad_offsets is None and use_triton(permuted_tokens)
    if not covered:
        return _original(_DISPATCHER, "unpermute")(
            permuted_tokens, sorted_indices, restore_shape, probs=probs, routing_map=routing_map,
            fused=fused, drop_and_pad=drop_and_pad, pad_offsets=pad_offsets,
        )
    return unpermute_tokens(permuted_tokens, sorted_indices, num_tokens).view(restore_shape)


def sort_chunks_by_idxs(input: Any, split_sizes: Any, sorted_idxs: Any, probs: Any = None, fused: bool = False) -> Any:
    """Megatron's `sort_chunks_by_idxs`; an identity order (one EP rank) costs no copy."""
    if not fused and sorted_idxs.device.type == "cpu" and sorted_idxs.tolist() == list(range(sorted_idxs.numel())):
        return input, probs
    return _original(_DISPATCHER, "sort_chunks_by_idxs")(input, split_sizes, sorted_idxs, probs=probs, fused=fused)


# --- rotary embedding -----------------------------------------------------------------------

def apply_rotary_pos_emb_bshd(t: Any, freqs: Any, rotary_interleaved: bool = False, mla_rotary_interleaved: bool = False,
                              mscale: float = 1.0, multi_latent_attention: Any = None) -> Any:
    """Megatron's `_apply_rotary_pos_emb_bshd` (rotate-half RoPE, MLA's even/odd layout too)."""
    from benchlib.megatron.spec.kernels.rope import apply_rope, covers

    mla = bool(mla_rotary_interleaved if multi_latent_attention is None else multi_latent_attention)
    if covers(t, freqs, rotary_interleaved):
        return apply_rope(t, freqs, mscale=mscale, mla_interleaved=mla)
    return _original("megatron.core.models.common.embeddings.rope_utils", "_apply_rotary_pos_emb_bshd")(
        t, freqs, rotary_interleaved=rotary_interleaved, mla_rotary_interleaved=mla, mscale=mscale,
    )
