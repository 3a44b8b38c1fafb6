"""Which layer implementation a run uses, the flags it needs, and what it cannot run.

- te:     Transformer Engine (NGC containers). Everything is allowed.
- native: benchlib's torch-native spec (benchlib/megatron/spec): SDPA attention incl. MLA, grouped-GEMM experts.
- local:  Megatron-Core's own local spec (slow, no MLA): the baseline the native spec is compared with.

BACKEND=auto picks te where Transformer Engine is expected (a pyxis container, or importable
here), else native. This is the only place the backend is decided: the rendered command carries
the full Megatron argv (`--transformer-impl`, `--spec`, the fusion-off flags) and every rank's
driver executes it as it is. The choice is announced in one line by the launcher.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

from benchlib.config.cluster import ClusterConfig
from benchlib.core.errors import BenchError
from benchlib.config.knobs import Knobs

TE_FLAGS: list[tuple[str, Any]] = [("--transformer-impl", "transformer_engine"), ("--moe-permute-fusion", True)]
# Fused kernels that need apex / Transformer Engine / a compiled extension: without them
# Megatron-Core 0.19.2 fails at the first forward. Every non-TE model build uses this one list
# (the launch, conversion's model building, the CPU tests).
FUSION_OFF_FLAGS: tuple[str, ...] = (
    "--no-persist-layer-norm",
    "--no-gradient-accumulation-fusion",
    "--no-masked-softmax-fusion",
    "--no-rope-fusion",
)
LOCAL_FLAGS: list[tuple[str, Any]] = [("--transformer-impl", "local"), *((flag, True) for flag in FUSION_OFF_FLAGS)]
# benchlib's torch-native spec as Megatron's own `--spec MODULE FUNCTION` (0.19.2's GPTModelBuilder
# calls the function). The rendered command carries it; the driver only executes the argv.
NATIVE_SPEC = ("benchlib.megatron.spec", "native_spec")
NATIVE_FLAGS: list[tuple[str, Any]] = [*LOCAL_FLAGS, ("--spec", list(NATIVE_SPEC))]

# Extra Megatron flags that need Transformer Engine (or DeepEP): refused on other backends.
TE_ONLY_EXTRA_FLAGS = {
    "--fp8-format": "fp8 needs Transformer Engine",
    "--fp4-format": "fp4 needs Transformer Engine",
    "--moe-permute-fusion": "the fused permutation kernel is in Transformer Engine",
    "--moe-router-fusion": "the fused router kernel is in Transformer Engine",
    "--tp-comm-overlap": "TP communication overlap needs Transformer Engine userbuffers",
    "--sequence-parallel": "torch norms refuse sequence parallelism (Megatron needs TE's norms for it)",
    "--delay-wgrad-compute": "delayed weight-gradient compute needs Transformer Engine's grouped linear",
    "--fp8-recipe": "fp8 needs Transformer Engine",
    "--fp8-param-gather": "fp8 needs Transformer Engine",
    "--moe-flex-dispatcher-backend": "the flex dispatcher needs DeepEP or HybridEP (and Transformer Engine)",
    "--cuda-graph-impl": "CUDA graphs need Transformer Engine's RNG tracker",
    "--use-te-activation-func": "a Transformer Engine activation",
}


@dataclass(frozen=True)
class BackendChoice:
    name: str  # te | native | local
    reason: str
    flags: list[tuple[str, Any]]
    env: dict[str, str]


def te_importable() -> bool:
    return importlib.util.find_spec("transformer_engine") is not None


def choose_backend(k: Knobs, cluster: ClusterConfig) -> BackendChoice:
    name = k.BACKEND
    if name == "auto":
        if cluster.CONTAINER_RUNTIME == "pyxis":
            name, reason = "te", "auto: container runtime pyxis (NGC images ship Transformer Engine)"
        elif te_importable():
            name, reason = "te", "auto: transformer_engine is importable"
        else:
            name, reason = "native", "auto: no Transformer Engine here, using benchlib's torch-native spec"
    else:
        reason = f"BACKEND={name}"
    if name == "te":
        return BackendChoice("te", reason, list(TE_FLAGS), {})
    # the knobs keep their names on the rank: benchlib/megatron/spec/fast_ops.py reads FAST_OPS,
    # spec/compiled.py COMPILE, benchlib/megatron/fast_optimizer.py FAST_OPTIMIZER (both
    # backends lack TE's fused optimizer)
    optimizer_env = {"FAST_OPTIMIZER": str(int(k.FAST_OPTIMIZER))}
    if name == "native":
        spec_env = {"FAST_OPS": str(int(k.FAST_OPS)), "COMPILE": str(int(k.COMPILE))}
        return BackendChoice("native", reason, list(NATIVE_FLAGS), {**spec_env, **optimizer_env})
    return BackendChoice("local", reason, list(LOCAL_FLAGS), optimizer_env)


def refuse_unsupported(choice: BackendChoice, k: Knobs, model_flags: dict[str, Any], extra_flags: set[str]) -> None:
    """Refuse, before launch, what the chosen backend cannot run; name the missing piece."""
    if choice.name == "te":
        return
    problems: list[str] = []
    if k.PR != "bf16":
        problems.append(f"PR={k.PR} needs Transformer Engine")
    if k.DISPATCHER in ("deepep", "hybridep"):
        problems.append(f"DISPATCHER={k.DISPATCHER} needs the flex dispatcher with DeepEP/HybridEP (and Transformer Engine)")
    if k.TP > 1:
        problems.append(f"TP={k.TP} needs sequence parallelism, which torch norms refuse (needs Transformer Engine)")
    if k.CP > 1:
        problems.append(f"CP={k.CP}: context parallelism needs Transformer Engine's attention")
    if k.ETP > 1:
        problems.append(f"ETP={k.ETP}: expert tensor parallelism is not implemented by the {choice.name} experts")
    if k.A2A_OVERLAP and choice.name == "local":
        problems.append("A2A_OVERLAP=1 has not been run with Megatron's local spec here; use BACKEND=native (or te)")
    if choice.name == "local" and model_flags.get("--multi-latent-attention"):
        problems.append("multi-latent attention does not build with Megatron's local spec (DotProductAttention rejects k_channels); use BACKEND=native")
    for flag in sorted(extra_flags & set(TE_ONLY_EXTRA_FLAGS)):
        problems.append(f"{flag}: {TE_ONLY_EXTRA_FLAGS[flag]}")
    if problems:
        raise BenchError(
            f"BACKEND={choice.name} ({choice.reason}) cannot run this configuration:\n  - " + "\n  - ".join(problems),
            hint="use a container with Transformer Engine (BACKEND=te), or change the settings listed",
        )
