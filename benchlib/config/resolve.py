"""One resolution step: configs + environment + arguments -> one typed, fully-known `ResolvedRun`.

Precedence (later wins): knob defaults (knobs.py) < common.conf < runtime.conf [MODEL]
< runtime.conf [MODEL:GPU] < environment < KEY=VALUE arguments. Extra Megatron arguments
(everything from the first `--flag` on) are appended last and win over derived flags.
"""
from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from benchlib.config import flags as F
from benchlib.config.backend import BackendChoice, choose_backend, refuse_unsupported
from benchlib.config.cluster import CLUSTER_KEYS, ClusterConfig, load_cluster
from benchlib.config.extra_args import check_extra_args
from benchlib.config.input_checks import ascii_name, check_slurm_lengths, near_miss_env_warnings
from benchlib.core.gpus import BLACKWELL_TYPES, match_device_name
from benchlib.core.errors import BenchError, did_you_mean
from benchlib.config.knobs import KNOB_NAMES, Knobs, check_knob_name, coerce
from benchlib.config import pp_layout
from benchlib.config.layout import Layout, check_layout
from benchlib.config.model_config import ModelConfig, load_model, substitute
from benchlib.core.paths import SUITE_ROOT
from benchlib.config.runtime_conf import Layer, common_layer, model_layers
from benchlib.core.secrets import is_secret_name

_ASSIGN = re.compile(r"^([A-Z][A-Z0-9_]*)=(.*)$", re.S)


@dataclass(frozen=True)
class ResolvedRun:
    knobs: Knobs
    provenance: dict[str, str]
    cluster: ClusterConfig
    model: ModelConfig
    backend: BackendChoice
    megatron_args: list[str]
    flags: dict[str, Any]
    env: dict[str, str]
    gpus_per_node: int
    world_size: int
    job_name: str
    run_dir: Path
    mode: str = "sbatch"
    extra_args: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def arch(self) -> dict[str, Any]:
        return F.megatron_arg_dict(self.flags)

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model.name,
            "cluster": self.cluster.NAME,
            "knobs": dataclasses.asdict(self.knobs),
            "provenance": self.provenance,
            "cluster_config": dataclasses.asdict(self.cluster),
            "backend": {"name": self.backend.name, "reason": self.backend.reason},
            "gpus_per_node": self.gpus_per_node,
            "world_size": self.world_size,
            "job_name": self.job_name,
            "mode": self.mode,
            "run_dir": str(self.run_dir),
            "env": self.env,
            "megatron_args": self.megatron_args,
            "extra_args": self.extra_args,
            "notes": self.notes,
        }


def split_argv(argv: list[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """KEY=VALUE assignments come first; from the first other token on, all is Megatron's."""
    assigns: list[tuple[str, str]] = []
    for i, tok in enumerate(argv):
        m = _ASSIGN.match(tok)
        if not m:
            return assigns, list(argv[i:])
        assigns.append((m.group(1), m.group(2)))
    return assigns, []


def detect_local_gpus(environ: Mapping[str, str] | None = None) -> int:
    """GPUs this process may use: nvidia-smi's count, limited by CUDA_VISIBLE_DEVICES when set."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return 0
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    count = sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))
    visible = (os.environ if environ is None else environ).get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        count = min(count, len([d for d in visible.split(",") if d.strip() and not d.strip().startswith("-")]))
    return count


def detect_local_gpu_type() -> str:
    """The GPU type of this machine from nvidia-smi's name ('' when unknown)."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return ""
    try:
        out = subprocess.run([exe, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    name = out.stdout.splitlines()[0] if out.stdout.strip() else ""
    return match_device_name(name) or ""


def _job_name(k: Knobs) -> str:
    vpp = k.VPP
    if k.PP_LAYOUT and k.PP >= 1:
        try:  # the layout decides VPP; a bad one is refused with its reason by the layout check
            vpp = pp_layout.parse(k.PP_LAYOUT, k.PP).vpp
        except BenchError:
            pass
    layout = f"TP{k.TP}PP{k.PP}EP{k.EP}" + (f"CP{k.CP}" if k.CP > 1 else "") + (f"VPP{vpp}" if vpp > 1 else "")
    name = f"{k.MODEL}-{layout}-{k.PR}"
    if k.COMMENT:
        name += "-" + ascii_name(k.COMMENT)  # the #SBATCH --comment keeps the original text
    return name[:120]


def resolve_run(
    argv: list[str],
    environ: Mapping[str, str],
    *,
    mode: str = "sbatch",
    stamp: str | None = None,
    local_gpus: int | None = None,
) -> ResolvedRun:
    """Resolve one run. `mode` (sbatch or interactive) is recorded with the run."""
    assigns, extra = split_argv(argv)
    arg_knobs: dict[str, str] = {}
    arg_cluster: dict[str, str] = {}
    for key, value in assigns:
        if is_secret_name(key):
            raise BenchError(f"{key} must not be passed as an argument", hint=f"export {key} in the environment; the job reads it at run time")
        if key in KNOB_NAMES:
            arg_knobs[key] = value
        elif key in CLUSTER_KEYS:
            arg_cluster[key] = value
        else:
            raise BenchError(
                f"unknown setting {key}={value!r}{did_you_mean(key, list(KNOB_NAMES) + list(CLUSTER_KEYS))}",
                hint="valid knobs: " + ", ".join(KNOB_NAMES) + "; cluster keys: " + ", ".join(CLUSTER_KEYS),
            )
    check_extra_args(extra)  # Megatron's parser would refuse these only once the job ran
    env_knobs = {k: v for k, v in environ.items() if k in KNOB_NAMES}
    env_cluster = {k: v for k, v in environ.items() if k in CLUSTER_KEYS}

    model_name = arg_knobs.get("MODEL", env_knobs.get("MODEL", ""))
    model = load_model(model_name)
    cluster_name = arg_knobs.get("CLUSTER", env_knobs.get("CLUSTER", "local")) or "local"
    cluster = load_cluster(cluster_name, model.name, {**env_cluster, **arg_cluster})

    notes: list[str] = near_miss_env_warnings(environ, KNOB_NAMES, CLUSTER_KEYS)
    if not cluster.PYTHON:  # local runs: the interpreter running benchlib
        cluster = dataclasses.replace(cluster, PYTHON=sys.executable)
    if not cluster.GPU_TYPE:  # local runs: this machine's GPU
        detected = detect_local_gpu_type()
        if not detected:
            notes.append("GPU type not recognised on this machine: assuming H100 (set GPU_TYPE=...)")
        cluster = dataclasses.replace(cluster, GPU_TYPE=detected or "H100")
    gpus_per_node = cluster.GPUS_PER_NODE
    if gpus_per_node == 0:  # "this machine's GPUs" (local.conf)
        gpus_per_node = detect_local_gpus(environ) if local_gpus is None else local_gpus
        if gpus_per_node == 0:
            notes.append("no NVIDIA GPU found on this machine: rendering for 1 GPU")
            gpus_per_node = 1

    layers: list[Layer] = [common_layer(), *model_layers(model.name, cluster.GPU_TYPE), Layer("environment", env_knobs), Layer("arguments", arg_knobs)]
    raw: dict[str, str] = {}
    provenance: dict[str, str] = {}
    for layer in layers:
        for key, value in layer.values.items():
            check_knob_name(key, layer.label)
            raw[key] = value
            provenance[key] = layer.label
    raw["MODEL"], raw["CLUSTER"] = model.name, cluster.NAME
    values = {name: coerce(name, raw[name], provenance.get(name, "defaults")) for name in raw}
    knobs = Knobs(**values)
    if not knobs.WANDB_RUN_NAME:
        knobs = dataclasses.replace(knobs, WANDB_RUN_NAME=_job_name(knobs))
    for name in KNOB_NAMES:
        provenance.setdefault(name, "default (benchlib/config/knobs.py)")

    job_name = _job_name(knobs)
    stamp = stamp or time.strftime("%Y%m%d-%H%M%S")
    out_root = Path(cluster.OUTPUT_ROOT)
    if not out_root.is_absolute():
        out_root = SUITE_ROOT / out_root
    run_dir = out_root / model.name / f"{stamp}-{job_name}"
    check_slurm_lengths(job_name, knobs.COMMENT, run_dir)

    # Model flags with placeholders filled.
    knob_values = dataclasses.asdict(knobs)
    model_flags: dict[str, Any] = {flag: substitute(v, knob_values) for flag, v in model.model_args.items()}
    F.raise_max_positions(model_flags, knobs.SEQ_LEN)

    # The architecture as it will run: the model's flags, overridden by the user's extra args.
    extra_dict = F.tokens_to_dict(extra)
    arch = F.megatron_arg_dict({**{k: v for k, v in model_flags.items() if v not in (None, False)}, **extra_dict})
    world = knobs.NNODES * gpus_per_node
    extra_layout = str(extra_dict.get("--pipeline-model-parallel-layout") or "")
    if extra_layout:
        # the user's flag replaces the knobs' pipeline flags (flags.LAYOUT_OVERRIDE_FLAGS): check it alone
        lay = Layout(world, knobs.TP, knobs.PP, knobs.EP, knobs.ETP, knobs.CP, 1, 0, 0, knobs.MBS, knobs.GBS, knobs.NUM_LAYERS, knobs.SEQ_LEN,
                     pp_layout=extra_layout)
    else:
        lay = Layout(world, knobs.TP, knobs.PP, knobs.EP, knobs.ETP, knobs.CP, knobs.VPP, knobs.PP_FIRST, knobs.PP_LAST, knobs.MBS, knobs.GBS,
                     knobs.NUM_LAYERS, knobs.SEQ_LEN, pp_layout=knobs.PP_LAYOUT)
    check_layout(lay, arch)
    if knobs.A2A_OVERLAP and knobs.EP == 1:
        raise BenchError("A2A_OVERLAP=1 needs EP>1", hint="set EP>1 or A2A_OVERLAP=0")
    if knobs.PR == "mxfp8" and cluster.GPU_TYPE not in BLACKWELL_TYPES:
        raise BenchError(f"PR=mxfp8 needs a Blackwell GPU; cluster {cluster.NAME} has GPU_TYPE={cluster.GPU_TYPE}", hint="use PR=fp8 or PR=bf16")
    if knobs.ENTRY == "command" and not knobs.ENTRY_COMMAND.strip():
        raise BenchError("ENTRY=command needs ENTRY_COMMAND", hint="e.g. ENTRY_COMMAND='python3 my_step.py'")
    if knobs.ENTRY == "pretrain_gpt" and not cluster.MEGATRON_PATH:
        raise BenchError("ENTRY=pretrain_gpt needs MEGATRON_PATH", hint="set MEGATRON_PATH in the cluster conf, or use ENTRY=driver")
    if knobs.DATA == "random" and (knobs.ENTRY == "pretrain_gpt" or (knobs.ENTRY == "auto" and cluster.MEGATRON_PATH)):
        # Megatron's pretrain_gpt.py knows only its MockGPTDataset: it would train on mock data unannounced
        raise BenchError(f"DATA=random is benchlib's driver's dataset; ENTRY={knobs.ENTRY} runs Megatron's pretrain_gpt.py"
                         + (f" (MEGATRON_PATH={cluster.MEGATRON_PATH})" if knobs.ENTRY == "auto" else ""),
                         hint="set ENTRY=driver, or use DATA=mock with pretrain_gpt.py")

    if knobs.BASELINE:
        baseline = Path(knobs.BASELINE).expanduser().resolve()
        if not baseline.exists():
            raise BenchError(f"BASELINE={knobs.BASELINE}: no such file or run directory",
                             hint="record one with `benchlib check --record-baseline RUN --out FILE`, or leave BASELINE empty")
        knobs = dataclasses.replace(knobs, BASELINE=str(baseline))  # the job may run in another directory

    extra_flags = set(extra_dict)
    backend = choose_backend(knobs, cluster)
    refuse_unsupported(backend, knobs, model_flags, extra_flags)

    derived = F.derived_flags(
        knobs, cluster, model_flags, extra_flags,
        backend=backend.name,
        run_dir=str(run_dir),
        data_path=cluster.DATA_PATH, tokenizer=cluster.TOKENIZER_MODEL, load_path=cluster.LOAD_PATH,
    )
    tokens = F.to_tokens(model_flags.items()) + F.to_tokens(backend.flags) + F.to_tokens(derived) + list(extra)
    env = {**model.env_vars, **backend.env, **F.data_env(knobs)}
    if knobs.A2A_OVERLAP and knobs.TP == 1 and knobs.CP == 1:
        # the all-to-all runs on its own stream beside the other micro-batch's compute; one
        # hardware queue (CUDA_DEVICE_MAX_CONNECTIONS=1, for TP/CP overlap) would serialise them
        env["CUDA_DEVICE_MAX_CONNECTIONS"] = "32"
    secret_env = [k for k in env if is_secret_name(k)]
    if secret_env:
        raise BenchError(f"{model.path}: ENV_VARS must not hold secrets ({', '.join(secret_env)})", hint="export secrets in your shell instead")
    return ResolvedRun(
        knobs=knobs, provenance=provenance, cluster=cluster, model=model, backend=backend,
        megatron_args=tokens, flags=F.tokens_to_dict(tokens), env=env,
        gpus_per_node=gpus_per_node, world_size=world, job_name=job_name, run_dir=run_dir,
        mode=mode, extra_args=list(extra), notes=notes,
    )
