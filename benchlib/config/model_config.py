"""Model configs (`model_configs/benchmarking/<MODEL>.yaml`): the model's Megatron flags.

A file has exactly two keys:
  ENV_VARS:   environment variables every rank gets (values are strings or numbers)
  MODEL_ARGS: Megatron flags. `--flag: value` renders `--flag value`; `true` renders a bare
              `--flag`; `false` or `null` leaves it out. `${KNOB}` is replaced by the knob's
              resolved value (see benchlib/config/knobs.py), e.g. `--num-layers: ${NUM_LAYERS}`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from benchlib.core.errors import BenchError, did_you_mean
from benchlib.config.knobs import KNOB_NAMES
from benchlib.core.paths import MODEL_DIR

MODEL_KEYS = ("ENV_VARS", "MODEL_ARGS")
_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
FlagValue = Any  # str | int | float | bool | None


@dataclass(frozen=True)
class ModelConfig:
    name: str
    path: Path
    env_vars: dict[str, str]
    model_args: dict[str, FlagValue]


def available_models() -> list[str]:
    return sorted(p.stem for p in MODEL_DIR.glob("*.yaml"))


def load_model(name: str) -> ModelConfig:
    if not name:
        raise BenchError("MODEL is not set", hint="MODEL=<name> with one of: " + ", ".join(available_models()))
    path = MODEL_DIR / f"{name}.yaml"
    if not path.is_file():
        raise BenchError(
            f"unknown model {name!r}{did_you_mean(name, available_models())}",
            hint="available models: " + ", ".join(available_models()),
        )
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise BenchError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise BenchError(f"{path}: expected a mapping with keys {', '.join(MODEL_KEYS)}")
    for key in data:
        if key not in MODEL_KEYS:
            raise BenchError(f"{path}: unknown top-level key {key!r}{did_you_mean(str(key), MODEL_KEYS)}", hint="valid keys: " + ", ".join(MODEL_KEYS))
    env = data.get("ENV_VARS") or {}
    args = data.get("MODEL_ARGS") or {}
    if not isinstance(env, dict) or not isinstance(args, dict):
        raise BenchError(f"{path}: ENV_VARS and MODEL_ARGS must be mappings")
    for flag, value in args.items():
        if not isinstance(flag, str) or not flag.startswith("--"):
            raise BenchError(f"{path}: MODEL_ARGS key {flag!r} is not a --flag")
        if isinstance(value, (list, dict)):
            raise BenchError(f"{path}: {flag} has a {type(value).__name__} value; write it as one string")
        for ph in _PLACEHOLDER.findall(str(value)):
            if ph not in KNOB_NAMES:
                raise BenchError(f"{path}: {flag} uses unknown placeholder ${{{ph}}}{did_you_mean(ph, KNOB_NAMES)}", hint="valid placeholders: " + ", ".join(KNOB_NAMES))
    from benchlib.config.extra_args import check_model_flags

    check_model_flags(_flag_lines(path), path)
    return ModelConfig(name=name, path=path, env_vars={str(k): _env_str(v) for k, v in env.items()}, model_args=dict(args))


def _flag_lines(path: Path) -> dict[str, int]:
    """MODEL_ARGS flag -> its 1-based line in the file (for messages that point at the typo)."""
    root = yaml.compose(path.read_text())
    lines: dict[str, int] = {}
    if isinstance(root, yaml.MappingNode):
        for key, value in root.value:
            if key.value == "MODEL_ARGS" and isinstance(value, yaml.MappingNode):
                lines.update({flag.value: flag.start_mark.line + 1 for flag, _ in value.value})
    return lines


def _env_str(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def substitute(value: FlagValue, knobs: dict[str, Any]) -> FlagValue:
    """Replace ${KNOB} placeholders; a value that is exactly one placeholder keeps the knob's type."""
    if not isinstance(value, str):
        return value
    whole = _PLACEHOLDER.fullmatch(value)
    if whole:
        return knobs[whole.group(1)]
    return _PLACEHOLDER.sub(lambda m: str(knobs[m.group(1)]), value)
