"""Runtime defaults: `common.conf` (shared) and `runtime.conf` (a `[MODEL]` row per model,
optionally `[MODEL:GPU]` rows that override it for one GPU type)."""
from __future__ import annotations

from dataclasses import dataclass

from benchlib.config.confparse import read_conf
from benchlib.core.gpus import GPU_TYPES
from benchlib.core.errors import BenchError
from benchlib.config.knobs import check_knob_name
from benchlib.core.paths import RUNTIME_DIR

# Keys every model row must set (issue: "a model without a row must not exist").
ROW_KEYS = (
    "TP", "PP", "EP", "ETP", "CP", "VPP", "PP_FIRST", "PP_LAST", "MBS", "GBS",
    "NUM_LAYERS", "NNODES", "RUN_TIME", "SEQ_LEN", "DISPATCHER", "MOE_GROUPED_GEMM", "PR",
)
GPU_SECTION_TYPES = GPU_TYPES


@dataclass(frozen=True)
class Layer:
    """One source of raw knob values, with a label for provenance and error messages."""

    label: str
    values: dict[str, str]


def common_layer() -> Layer:
    path = RUNTIME_DIR / "common.conf"
    conf = read_conf(path)
    extra = [s for s in conf.sections if s]
    if extra:
        raise BenchError(f"{path}: sections are not allowed in common.conf ({', '.join(extra)})", hint="per-model values go in runtime.conf")
    for key in conf.sections[""]:
        check_knob_name(key, conf.where("", key))
    return Layer("common.conf", {k: e.value for k, e in conf.sections[""].items()})


def runtime_sections() -> dict[str, dict[str, str]]:
    """All `[MODEL]` / `[MODEL:GPU]` sections of runtime.conf, key-checked."""
    path = RUNTIME_DIR / "runtime.conf"
    conf = read_conf(path)
    if conf.sections[""]:
        raise BenchError(f"{path}: keys outside a [MODEL] section: {', '.join(conf.sections[''])}", hint="shared defaults go in common.conf")
    out: dict[str, dict[str, str]] = {}
    for section, entries in conf.sections.items():
        if not section:
            continue
        if ":" in section:
            gpu = section.split(":", 1)[1]
            if gpu not in GPU_SECTION_TYPES:
                raise BenchError(f"{path}: section [{section}] names unknown GPU type {gpu!r}", hint="GPU types: " + ", ".join(GPU_SECTION_TYPES))
        for key in entries:
            check_knob_name(key, conf.where(section, key))
        out[section] = {k: e.value for k, e in entries.items()}
    return out


def model_layers(model: str, gpu_type: str) -> list[Layer]:
    sections = runtime_sections()
    if model not in sections:
        raise BenchError(
            f"runtime_configs/benchmarking/runtime.conf has no [{model}] row",
            hint=f"add a [{model}] section with {', '.join(ROW_KEYS)}",
        )
    missing = [k for k in ROW_KEYS if k not in sections[model]]
    if missing:
        raise BenchError(f"runtime.conf [{model}] lacks {', '.join(missing)}", hint="every model row sets all of " + ", ".join(ROW_KEYS))
    layers = [Layer(f"runtime.conf [{model}]", sections[model])]
    gpu_key = f"{model}:{gpu_type}"
    if gpu_key in sections:
        layers.append(Layer(f"runtime.conf [{gpu_key}]", sections[gpu_key]))
    return layers
