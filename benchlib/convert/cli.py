"""`benchlib convert hf-to-mcore | mcore-to-hf | verify`."""
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
    h.add_argument("--allow-routing-mismatch", action="store_true",
                   help="convert a router Megatron-Core cannot reproduce (refused by default); the difference is recorded in the checkpoint")
    h.add_argument("--verify", action="store_true", help="run `convert verify` on the result (whole model; see --verify-layer-by-layer)")
    h.add_argument("--verify-layer-by-layer", action="store_true", help="with --verify: one layer at a time (models larger than host memory)")
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

    v = sub.add_parser("verify", help="run the Hugging Face and the Megatron checkpoint on the same tokens and compare them",
                       description="Max abs difference of the embeddings, every decoder layer's hidden states and the logits; "
                                   "exit status 1 when they diverge beyond the dtype's tolerance.")
    v.add_argument("--hf-dir", required=True, type=Path, help="the Hugging Face folder the checkpoint was converted from")
    v.add_argument("--mcore-dir", required=True, type=Path, help="the Megatron checkpoint (torch_dist or legacy)")
    _verify_options(v)
    v.set_defaults(func=_verify)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])


def _verify_options(v: argparse.ArgumentParser) -> None:
    v.add_argument("--layer-by-layer", action="store_true",
                   help="one decoder layer of each side at a time, streamed from the shards (host memory ~ the largest layer)")
    v.add_argument("--seq-len", type=int, default=32, help="tokens per sequence (random ids, seeded)")
    v.add_argument("--batch", type=int, default=2, help="sequences")
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--dtype", dest="compute_dtype", default="fp32", choices=["fp32", "bf16"],
                   help="computation dtype (bf16 halves the memory of --layer-by-layer; the tolerance follows the coarsest dtype)")
    v.add_argument("--spec", default=None, help="module:function of the layer spec (default: Megatron's local spec)")


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
                         spec=a.spec, overwrite=a.overwrite, dist_file_bytes=_size(a.dist_file_size),
                         allow_routing_mismatch=a.allow_routing_mismatch)
    print(report.summary())
    print("Megatron model flags: " + " ".join(report.megatron_flags))
    if a.verify:
        from benchlib.convert.verify import verify

        mcore = a.out / "torch_dist" if len(formats) > 1 else a.out
        result = verify(a.hf_dir, mcore, layer_by_layer=a.verify_layer_by_layer, spec=a.spec)
        print(result.summary())
        return 0 if result.passed else 1
    return 0


def _verify(a: argparse.Namespace) -> int:
    from benchlib.convert.verify import verify

    for flag in ("seq_len", "batch"):
        if getattr(a, flag) < 1:
            raise BenchError(f"--{flag.replace('_', '-')} must be >= 1")
    result = verify(a.hf_dir, a.mcore_dir, layer_by_layer=a.layer_by_layer, spec=a.spec, seq_len=a.seq_len, batch=a.batch,
                    seed=a.seed, compute_dtype=a.compute_dtype)
    print(result.summary())
    return 0 if result.passed else 1


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
