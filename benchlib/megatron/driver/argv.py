"""Reading the driver's Megatron argument list (pure Python: no torch, no megatron).

The backend is decided once, at resolution (benchlib/config/backend.py): the rendered command
carries `--transformer-impl`, `--spec` and the fusion-off flags. The driver reads them only to
know what it runs, and refuses an argv that asks for Transformer Engine where it does not import.
"""
from __future__ import annotations

from benchlib.config.backend import NATIVE_SPEC
from benchlib.core.errors import BenchError


def strip_separator(words: list[str]) -> list[str]:
    """argparse REMAINDER keeps a leading `--`; the argument list starts after it."""
    words = list(words)
    return words[1:] if words[:1] == ["--"] else words


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


def backend_of(argv: list[str]) -> str:
    """What the argv runs: te, native (benchlib's spec) or local (Megatron's local spec)."""
    spec = spec_value(argv)
    if spec is not None and tuple(spec[:2]) == NATIVE_SPEC:
        return "native"
    impl = flag_value(argv, "--transformer-impl")
    if impl in (None, "transformer_engine"):  # Megatron's default is Transformer Engine
        return "te"
    return "local" if spec is None else "custom"


def check_runnable(argv: list[str], te_available: bool) -> str:
    """The backend of argv; an argv that needs Transformer Engine where it does not import is refused."""
    backend = backend_of(argv)
    if backend == "te" and not te_available:
        raise BenchError(
            "these Megatron arguments use Transformer Engine (--transformer-impl transformer_engine, Megatron's default), "
            "which does not import here",
            hint="launch through the suite with BACKEND=native (benchlib's torch-native spec), which renders "
            f"--transformer-impl local --spec {' '.join(NATIVE_SPEC)} and the fusion-off flags",
        )
    return backend


def te_importable() -> bool:
    import importlib.util

    if importlib.util.find_spec("transformer_engine") is None:
        return False
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception:  # a broken TE install is as good as none
        return False
    return True
