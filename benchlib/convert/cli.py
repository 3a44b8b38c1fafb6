"""`benchlib convert hf-to-mcore | mcore-to-hf`."""
from __future__ import annotations

import argparse
from pathlib import Path

from benchlib.core.errors import BenchError


def _size(text: str) -> int:
    units = {"k": 2**10, "m": 2**20, "g": 2**30}
    t = text.strip().lower().rstrip("b").rstrip("i")
    if t and t[-1] in units:
        return int(float(t[:-1]) * units[t[-1]])
    return int(t)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("convert", help="convert checkpoints between Hugging Face and Megatron-Core",
                              description="Streamed checkpoint conversion between Hugging Face safetensors and Megatron-Core.")
    sub = p.add_subparsers(dest="convert_action", metavar="ACTION")

    h = sub.add_parser("hf-to-mcore", help="Hugging Face safetensors -> Megatron (torch_dist and/or legacy per-rank)")
    h.add_argument("--hf-dir", required=True, type=Path, help="folder with config.json and *.safetensors")
    h.add_argument("--out", required=True, type=Path, help="Megatron checkpoint folder to create (use it as --load)")
    h.add_argument("--format", default="torch_dist", choices=["torch_dist", "legacy", "both"],
                   help="torch_dist (loads at any TP/PP/EP) or legacy per-rank files at the target layout; both puts each in a subfolder")
    h.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"], help="parameter dtype written")
    h.add_argument("--target-tp", type=int, default=1, help="legacy format: tensor parallel size")
    h.add_argument("--target-pp", type=int, default=1, help="legacy format: pipeline parallel size")
    h.add_argument("--target-ep", type=int, default=1, help="legacy format: expert parallel size")
    h.add_argument("--target-first-stage-layers", type=int, default=None, help="legacy format: decoder layers on the first stage (uneven PP)")
    h.add_argument("--target-last-stage-layers", type=int, default=None, help="legacy format: decoder layers on the last stage (uneven PP)")
    h.add_argument("--expert-layout", default="auto", choices=["auto", "sequential", "grouped"],
                   help="legacy format: SequentialMLP (local_experts.{i}.linear_fc1.weight), grouped (experts.linear_fc1.weight{i}: "
                        "TEGroupedMLP and the torch-native spec) or auto (what --spec builds; local spec: sequential)")
    h.add_argument("--make-vocab-size-divisible-by", type=int, default=128, help="as the run's Megatron flag (vocabulary padding)")
    h.add_argument("--spec", default=None, help="module:function returning the layer spec the runs use (default: Megatron's local spec)")
    h.add_argument("--family", default=None, help="refuse a checkpoint of another family (used by ckpt_convert_scripts/<Family>/)")
    h.add_argument("--dist-file-size", default="1GiB",
                   help="torch_dist: largest data file written (files are held in memory while written; default 1GiB)")
    h.add_argument("--overwrite", action="store_true", help="replace an existing output folder (only once the new one is complete)")
    h.set_defaults(func=_hf_to_mcore)

    m = sub.add_parser("mcore-to-hf", help="Megatron (torch_dist or legacy per-rank) -> Hugging Face safetensors")
    m.add_argument("--mcore-dir", required=True, type=Path, help="Megatron checkpoint folder (holds latest_checkpointed_iteration.txt)")
    m.add_argument("--out", required=True, type=Path, help="Hugging Face folder to create")
    m.add_argument("--hf-config", type=Path, default=None, help="config.json (or its folder); default: hf_config.json stored by hf-to-mcore")
    m.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    m.add_argument("--max-shard-size", default="5GiB", help="safetensors shard size, e.g. 5GiB, 200MiB")
    m.add_argument("--spec", default=None, help="module:function returning the layer spec the checkpoint was saved with")
    m.add_argument("--overwrite", action="store_true")
    m.set_defaults(func=_mcore_to_hf)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])


def _hf_to_mcore(a: argparse.Namespace) -> int:
    from benchlib.convert.convert import hf_to_mcore
    from benchlib.convert.layout import Layout

    for flag in ("target_tp", "target_pp", "target_ep"):
        if getattr(a, flag) < 1:
            raise BenchError(f"--{flag.replace('_', '-')} must be >= 1")
    if a.family:
        _check_family(a.hf_dir, a.family)
    formats = ("torch_dist", "legacy") if a.format == "both" else (a.format,)
    layout = Layout(a.target_tp, a.target_pp, a.target_ep, a.target_first_stage_layers, a.target_last_stage_layers,
                    a.make_vocab_size_divisible_by)
    if a.format == "torch_dist" and (a.target_tp, a.target_pp, a.target_ep) != (1, 1, 1):
        print("note: torch_dist checkpoints load at any TP/PP/EP; --target-* only shape the legacy format")
    report = hf_to_mcore(a.hf_dir, a.out, formats=formats, dtype=a.dtype, layout=layout, expert_layout=a.expert_layout,
                         spec=a.spec, overwrite=a.overwrite, dist_file_bytes=_size(a.dist_file_size))
    print(report.summary())
    print("Megatron model flags: " + " ".join(report.megatron_flags))
    return 0


def _mcore_to_hf(a: argparse.Namespace) -> int:
    from benchlib.convert.convert import mcore_to_hf

    report = mcore_to_hf(a.mcore_dir, a.out, hf_config=a.hf_config, dtype=a.dtype, max_shard_bytes=_size(a.max_shard_size),
                         spec=a.spec, overwrite=a.overwrite)
    print(report.summary())
    return 0


def _check_family(hf_dir: Path, family: str) -> None:
    from benchlib.convert.families import FAMILIES, read_config, shape_from_config

    known = sorted(set(FAMILIES.values()))
    if family not in known:
        raise BenchError(f"unknown --family {family!r}", hint=f"one of {', '.join(known)}")
    got = shape_from_config(read_config(hf_dir)).family
    if got != family:
        raise BenchError(f"{hf_dir} holds a {got} checkpoint, not {family}",
                         hint=f"use ckpt_convert_scripts/{got}/ (or benchlib convert without --family)")
