"""Cluster configs (`cluster_configs/benchmarking/<CLUSTER>.conf`): where and how jobs run.

Each key is a field of `ClusterConfig` below, with its doc; `template.conf` documents the same
keys for users. Per-model data paths go in `[MODEL]` sections (DATA_PATH, TOKENIZER_MODEL, LOAD_PATH).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from benchlib.config.confparse import read_conf
from benchlib.core.gpus import GPU_TYPES
from benchlib.core.errors import BenchError, did_you_mean
from benchlib.core.paths import CLUSTER_DIR


def ckey(doc: str, default: object = "") -> object:
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class ClusterConfig:
    NAME: str = ckey("Set from the file name; not a key.")
    ACCOUNT: str = ckey("Slurm account (#SBATCH --account); empty = none.")
    PARTITION: str = ckey("Slurm partition (#SBATCH --partition); empty = the cluster's default.")
    QOS: str = ckey("Slurm QoS; empty = none.")
    GPUS_PER_NODE: int = ckey("GPUs per node (4 on GB200 NVL72 trays, 8 on most others).", 8)
    GPU_TYPE: str = ckey("GPU type: H100, H200, B200, GB200, GB300 or A100 (validation, MFU, memory checks); empty = this machine's.", "H100")
    REQUEST_GPUS: bool = ckey("Ask Slurm for GPUs with --gpus-per-node (0 for CPU-only test clusters).", True)
    SEGMENT: int = ckey("Slurm --segment size in nodes (GB200 NVL domains); 0 = none.", 0)
    CONTAINER_RUNTIME: str = ckey("pyxis (srun --container-image) or none (plain srun, software on the nodes).", "pyxis")
    CONTAINER_IMAGE: str = ckey("Container image: a .sqsh path or docker://registry#image:tag.")
    CONTAINER_MOUNTS: str = ckey("Extra container mounts, comma separated SRC:DST (the suite and output root are added).")
    MPI_TYPE: str = ckey("srun --mpi type (pmix, pmi2, none).", "pmix")
    OUTPUT_ROOT: str = ckey("Where run directories go; relative paths are under the suite's folder.", "runs")
    PYTHON: str = ckey("Python interpreter on the nodes / in the container.", "python3")
    MEGATRON_PATH: str = ckey("Megatron-LM checkout with pretrain_gpt.py; empty = benchlib's bundled driver.")
    DATA_PATH: str = ckey("Default Megatron data prefix for DATA=real (per model in [MODEL] sections).")
    TOKENIZER_MODEL: str = ckey("Default tokenizer (path or name) for DATA=real (per model in [MODEL] sections).")
    LOAD_PATH: str = ckey("Checkpoint to load when PRETRAIN=0 (per model in [MODEL] sections).")
    SBATCH_EXTRA: str = ckey("Extra #SBATCH flags, space separated, e.g. '--exclusive --mem=0'.")
    MASTER_PORT: int = ckey("Rendezvous port on the first node.", 29500)


CLUSTER_KEYS = tuple(f.name for f in dataclasses.fields(ClusterConfig) if f.name != "NAME")
PER_MODEL_KEYS = ("DATA_PATH", "TOKENIZER_MODEL", "LOAD_PATH")
_PATH_KEYS = ("OUTPUT_ROOT", "MEGATRON_PATH", "DATA_PATH", "TOKENIZER_MODEL", "LOAD_PATH", "CONTAINER_IMAGE")
_CHOICES = {"CONTAINER_RUNTIME": ("pyxis", "none"), "GPU_TYPE": GPU_TYPES}


def available_clusters() -> list[str]:
    return sorted(p.stem for p in CLUSTER_DIR.glob("*.conf"))


def cluster_path(name: str) -> Path:
    if "/" in name or name.endswith(".conf"):
        return Path(name)
    return CLUSTER_DIR / f"{name}.conf"


def _expand(value: str) -> str:
    # Paths may say ${HOME}/x or ~/x; nothing else is expanded.
    return os.path.expanduser(os.path.expandvars(value))


def load_cluster(name: str, model: str, env_overrides: dict[str, str] | None = None) -> ClusterConfig:
    """Read a cluster conf; `[model]` sections override per-model paths; environment wins last."""
    path = cluster_path(name)
    if not path.is_file():
        raise BenchError(
            f"unknown cluster {name!r}: {path} does not exist",
            hint=f"use one of: {', '.join(available_clusters())}, or copy cluster_configs/benchmarking/template.conf",
        )
    conf = read_conf(path)
    values: dict[str, str] = {}
    for section, entries in conf.sections.items():
        for key, entry in entries.items():
            valid = CLUSTER_KEYS if section == "" else PER_MODEL_KEYS
            if key not in valid:
                raise BenchError(
                    f"{path}:{entry.line}: unknown cluster key {key!r}"
                    + (f" in [{section}]" if section else "")
                    + did_you_mean(key, valid),
                    hint="valid keys: " + ", ".join(valid),
                )
    values.update({k: e.value for k, e in conf.sections[""].items()})
    if model in conf.sections:
        values.update({k: e.value for k, e in conf.sections[model].items()})
    for key, raw in (env_overrides or {}).items():
        if key in CLUSTER_KEYS:
            values[key] = raw
    typed: dict[str, object] = {"NAME": path.stem}
    fields = {f.name: f for f in dataclasses.fields(ClusterConfig)}
    for key, raw in values.items():
        f = fields[key]
        if f.type in ("int", int):
            try:
                typed[key] = int(raw)
            except ValueError:
                raise BenchError(f"{path}: {key}={raw!r} is not an integer") from None
        elif f.type in ("bool", bool):
            if raw.lower() not in ("0", "1", "true", "false"):
                raise BenchError(f"{path}: {key}={raw!r} is not 0 or 1")
            typed[key] = raw.lower() in ("1", "true")
        else:
            if key in _CHOICES and raw not in _CHOICES[key] and not (key == "GPU_TYPE" and raw == ""):
                raise BenchError(f"{path}: {key}={raw!r} is not one of {', '.join(_CHOICES[key])}")
            typed[key] = _expand(raw) if key in _PATH_KEYS else raw
    cluster = ClusterConfig(**typed)  # type: ignore[arg-type]
    if cluster.GPUS_PER_NODE < 0:
        raise BenchError(f"{path}: GPUS_PER_NODE must be 0 (count this machine's GPUs) or more")
    return cluster
