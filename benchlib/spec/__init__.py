"""benchlib's torch-native Megatron layer spec (no Transformer Engine needed).

Use through Megatron's `--spec benchlib.spec native_spec` with `--transformer-impl local`
(the benchlib driver picks it when Transformer Engine is absent). Megatron's builder calls
`native_spec(config, vp_stage=...)`. torch / megatron are imported only when it is called.
"""
from __future__ import annotations

from typing import Any, Optional

SPEC_ARG = ["benchlib.spec", "native_spec"]


def native_spec(config: Any, vp_stage: Optional[int] = None) -> Any:
    """Megatron layer / block spec: SDPA core attention, grouped-GEMM experts, torch norms."""
    from .layer_spec import build_native_spec

    return build_native_spec(config, vp_stage=vp_stage)
