"""Backend choice for the driver's Megatron argument list (pure Python: no torch, no megatron).

Megatron's default `--transformer-impl` is transformer_engine. Without Transformer Engine the
driver switches to benchlib's torch-native spec and adds the flags the local implementation
needs; with `--transformer-impl local` and no `--spec` it keeps Megatron's local spec (adding
the same fusion-off flags). It announces its choice in one line.
"""
from __future__ import annotations

from dataclasses import dataclass, field

NATIVE_SPEC_ARGS = ["--spec", "benchlib.spec", "native_spec"]
# Fused kernels that need apex / Transformer Engine / a compiled extension; without them
# Megatron-Core 0.19.2 fails at the first forward (measured on H200, see docs/gpu.md).
LOCAL_IMPL_FLAGS = [
    "--no-persist-layer-norm",
    "--no-gradient-accumulation-fusion",
    "--no-masked-softmax-fusion",
    "--no-rope-fusion",
]


@dataclass
class BackendChoice:
    backend: str  # "te" | "native" | "local"
    argv: list[str]
    added: list[str] = field(default_factory=list)
    announce: str = ""


def flag_value(argv: list[str], flag: str) -> str | None:
    """The value of the last `--flag VALUE` or `--flag=VALUE` in argv, or None."""
    value = None
    for i, tok in enumerate(argv):
        if tok == flag and i + 1 < len(argv):
            value = argv[i + 1]
        elif tok.startswith(flag + "="):
            value = tok.split("=", 1)[1]
    return value


def spec_value(argv: list[str]) -> list[str] | None:
    """The words after the last `--spec` (it takes any number of them), or None."""
    spec = None
    for i, tok in enumerate(argv):
        if tok == "--spec":
            words = []
            for w in argv[i + 1 :]:
                if w.startswith("--"):
                    break
                words.append(w)
            spec = words
    return spec


def without_flag(argv: list[str], flag: str, nargs: int = 1) -> list[str]:
    out, i = [], 0
    while i < len(argv):
        if argv[i] == flag:
            i += 1 + nargs
            continue
        if argv[i].startswith(flag + "="):
            i += 1
            continue
        out.append(argv[i])
        i += 1
    return out


def choose_backend(argv: list[str], te_available: bool, bench_spec: str | None = None) -> BackendChoice:
    """Decide te / native / local from the arguments, BENCH_SPEC (the launcher's environment
    variable: native | local) and whether TE imports; return the fixed argv."""
    impl = flag_value(argv, "--transformer-impl")
    spec = spec_value(argv)
    if bench_spec not in (None, "", "native", "local"):
        from ..errors import BenchError

        raise BenchError(f"BENCH_SPEC={bench_spec!r} is not native or local", hint="unset it, or BENCH_SPEC=native")
    if bench_spec == "native" or (spec is not None and spec[:2] == NATIVE_SPEC_ARGS[1:]):
        backend = "native"
    elif bench_spec == "local" and spec is None:
        backend = "local"
    elif impl == "local":
        backend = "local"
    elif impl in (None, "transformer_engine") and te_available:
        return BackendChoice("te", list(argv), announce="benchlib driver: backend te (Transformer Engine)")
    elif impl in (None, "transformer_engine"):
        backend = "native"
    else:  # inference_optimized etc.: leave to Megatron
        return BackendChoice(impl or "te", list(argv))

    new = list(argv)
    added: list[str] = []
    if impl != "local":
        new = without_flag(new, "--transformer-impl") + ["--transformer-impl", "local"]
        added += ["--transformer-impl", "local"]
    if backend == "native" and spec is None:
        new += NATIVE_SPEC_ARGS
        added += NATIVE_SPEC_ARGS
    for f in LOCAL_IMPL_FLAGS:
        if f not in new:
            new.append(f)
            added.append(f)
    why = "Transformer Engine not importable: " if impl in (None, "transformer_engine") and not te_available else ""
    what = (
        "torch-native spec (SDPA attention, grouped-GEMM experts)"
        if backend == "native"
        else "Megatron's local spec"
    )
    announce = f"benchlib driver: backend {backend}: {why}{what}" + (f"; added {' '.join(added)}" if added else "")
    return BackendChoice(backend, new, added, announce)


def te_importable() -> bool:
    import importlib.util

    if importlib.util.find_spec("transformer_engine") is None:
        return False
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception:  # a broken TE install is as good as none
        return False
    return True
