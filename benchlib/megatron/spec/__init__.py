"""benchlib's torch-native Megatron layer spec (no Transformer Engine needed).

Use through Megatron's `--spec benchlib.megatron.spec native_spec` with `--transformer-impl local`
(what BACKEND=native renders; benchlib/config/backend.py). Megatron's builder calls
`native_spec(config, vp_stage=...)`. torch / megatron are imported only when it is called.
Building the spec also installs `fast_ops` (see there; `FAST_OPS=0` turns it off) and, with
`COMPILE=1`, compiles the norms and router scoring (compiled.py).
"""
from __future__ import annotations

from typing import Any, Optional

def native_spec(config: Any, vp_stage: Optional[int] = None) -> Any:
    """Megatron layer / block spec: SDPA core attention, grouped-GEMM experts, torch norms.

    Also puts the spec's fast stand-ins for a few Megatron functions in place (fast_ops.py:
    cross-entropy, MoE token permutation), once per process."""
    from benchlib.megatron.spec import compiled, fast_ops
    from benchlib.megatron.spec.layer_spec import build_native_spec

    fast_ops.install()
    compiled.install()
    return compiled.compile_spec(build_native_spec(config, vp_stage=vp_stage))
