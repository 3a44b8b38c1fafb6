"""Hugging Face <-> Megatron-Core conversion: the two directions, streamed.

hf -> mcore: every Megatron parameter is built from its HF tensors when it is written (torch_dist),
or per pipeline stage (legacy per-rank files). mcore -> hf: every Megatron parameter is read,
split into its HF tensors and appended to the current safetensors shard.
Both write into a temporary folder beside the target and rename it when complete.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchlib.core.errors import BenchError
from benchlib.convert import memory
from benchlib.convert.families import ModelShape, read_config, shape_from_config
from benchlib.convert.hf_io import HFReader, HFWriter
from benchlib.convert.layout import Layout, rank_dir, tp_merge, tp_split
from benchlib.convert.mapping import IGNORED_SUFFIXES, Rule, all_rules, canonical_name, combine, mtp_shared_copies, split

DTYPES = ("bf16", "fp16", "fp32")
ITERATION = 1


@dataclass
class Report:
    direction: str
    family: str
    output: str
    formats: list[str]
    tensors: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    baseline_rss: int = 0
    peak_rss: int = 0
    megatron_flags: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def rss_growth(self) -> int:
        return max(0, self.peak_rss - self.baseline_rss)

    def summary(self) -> str:
        mib = 2**20
        notes = "".join(f"note: {n}\n" for n in self.notes)
        return notes + (f"converted {self.family} ({self.direction}, {', '.join(self.formats)}): {self.tensors} tensors, "
                f"{self.bytes_written / mib:.1f} MiB in {self.seconds:.1f} s -> {self.output}\n"
                f"peak RSS: {self.peak_rss / mib:.1f} MiB (growth during conversion {self.rss_growth / mib:.1f} MiB over "
                f"{self.baseline_rss / mib:.1f} MiB at start)")


def _torch_dtype(name: str) -> Any:
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


class _Staging:
    """A temporary folder beside `target`, renamed onto it only when the work completes."""

    def __init__(self, target: Path, overwrite: bool) -> None:
        self.target = Path(target).resolve()
        if self.target.exists() and any(self.target.iterdir()) and not overwrite:
            raise BenchError(f"{self.target} exists and is not empty", hint="choose a new output folder or pass --overwrite")
        self.tmp = self.target.parent / f".{self.target.name}.partial-{os.getpid()}"

    def __enter__(self) -> Path:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.tmp, ignore_errors=True)
        # leftovers of killed conversions into the same target (their process is gone)
        for old in self.target.parent.glob(f".{self.target.name}.partial-*"):
            pid = old.name.rsplit("-", 1)[-1]
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                shutil.rmtree(old, ignore_errors=True)
        self.tmp.mkdir()
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:  # noqa: ANN001
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        if self.target.exists():
            old = self.target.parent / f".{self.target.name}.old-{os.getpid()}"
            self.target.rename(old)
            self.tmp.rename(self.target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            self.tmp.rename(self.target)


def _expected_shapes(model: Any) -> dict[str, tuple[int, ...]]:
    """Megatron's parameters in the mapping's names (see mapping.canonical_name) -> shape."""
    return {canonical_name(k): tuple(v.shape) for k, v in model.state_dict().items() if hasattr(v, "shape") and "_extra_state" not in k}


MTP_FLAG_NOTE = ("the run that loads it must not ask for MTP: leave --mtp-num-layers out of the model config "
                 "(model_configs/.../<model>.yaml, e.g. DeepSeek-V3.yaml and GLM-4.5-Air.yaml set it to 1), "
                 "or the load stops on the missing MTP keys (and with a relaxed --dist-ckpt-strictness MTP starts from random weights)")


def _drop_absent_mtp(reader: HFReader, shape: ModelShape, cfg: dict[str, Any]) -> tuple[ModelShape, dict[str, Any], str | None]:
    """A checkpoint saved by transformers says num_nextn_predict_layers > 0 but holds no MTP weights
    (transformers does not keep them): convert without MTP. A partial MTP set stays an error."""
    if not shape.mtp_layers:
        return shape, cfg, None
    mtp_names = [n for r in all_rules(shape) if r.layer.startswith("mtp.") for n in r.hf]
    present = [n for n in mtp_names if n in reader]
    if present and len(present) < len(mtp_names):
        missing = [n for n in mtp_names if n not in reader]
        raise BenchError(f"the checkpoint's MTP layers are incomplete: {len(missing)} of {len(mtp_names)} MTP tensors are missing, "
                         f"e.g. {', '.join(missing[:3])}",
                         hint="copy every shard of the checkpoint, or remove the MTP tensors entirely (then it converts without MTP)")
    if present:
        return shape, cfg, None
    note = (f"config.json says num_nextn_predict_layers={shape.mtp_layers} but the checkpoint holds no MTP weights "
            f"(transformers drops them when it saves): converted without MTP; {MTP_FLAG_NOTE}")
    cfg = dict(cfg, num_nextn_predict_layers=0)
    return dataclasses.replace(shape, mtp_layers=0, notes=list(shape.notes)), cfg, note


def _check_routing(shape: ModelShape, allow: bool) -> list[str]:
    """Refuse routing Megatron-Core cannot reproduce, unless allowed; the notes to record."""
    from benchlib.convert.families import ALLOW_FIX

    if not shape.routing_mismatches:
        return []
    if not allow:
        reason, fix = shape.routing_mismatches[0]
        more = f" ({len(shape.routing_mismatches) - 1} more difference(s))" if len(shape.routing_mismatches) > 1 else ""
        raise BenchError(f"routing mismatch: {reason}{more}", hint=f"{fix}; {ALLOW_FIX}")
    return [f"routing mismatch (converted with --allow-routing-mismatch): {reason}" for reason, _ in shape.routing_mismatches]


def _check_coverage(reader: HFReader, rules: list[Rule], shape: ModelShape) -> None:
    used = {n for r in rules for n in r.hf} | set(mtp_shared_copies(shape))
    unknown = [n for n in reader.names() if n not in used and not n.endswith(IGNORED_SUFFIXES)]
    if unknown:
        raise BenchError(
            f"{len(unknown)} tensor(s) of the {shape.family} checkpoint have no Megatron counterpart, e.g. {', '.join(unknown[:3])}",
            hint="this variant of the architecture is not supported by the converter (or config.json does not match the weights)",
        )
    missing = [n for r in rules for n in r.hf if n not in reader]
    if missing:
        raise BenchError(f"tensor {missing[0]} is missing from the checkpoint ({len(missing)} missing in all)",
                         hint="check that config.json matches the weights (num_hidden_layers, experts, num_nextn_predict_layers)")


class _Producer:
    """Megatron parameter name -> full tensor, built from HF tensors and checked against Megatron's shape."""

    def __init__(self, reader: HFReader, rules: list[Rule], shape: ModelShape, expected: dict[str, tuple], dtype: Any) -> None:
        self.reader, self.shape, self.expected, self.dtype = reader, shape, expected, dtype
        self.rules = {r.mcore: r for r in rules}
        self.count = 0
        self.bytes = 0

    def __call__(self, name: str) -> Any:
        import torch

        memory.trim()  # the previous parameter has been written and dropped
        name = canonical_name(name)
        rule = self.rules.get(name)
        if rule is None:
            raise BenchError(f"Megatron parameter {name} has no Hugging Face source",
                             hint="the Megatron model built from these flags has a parameter the converter does not fill; report it")
        parts = [self.reader.get(n) for n in rule.hf]
        try:
            t = combine(rule, parts, self.shape)
        except RuntimeError as err:
            raise BenchError(f"shape mismatch building {name} from {', '.join(f'{n} {tuple(p.shape)}' for n, p in zip(rule.hf, parts))}: {err}",
                             hint="config.json does not match the weights") from None
        want = self.expected[name]
        if name.endswith(("word_embeddings.weight", "output_layer.weight")) and t.shape[0] < want[0]:
            pad = torch.zeros((want[0] - t.shape[0], *t.shape[1:]), dtype=t.dtype)
            t = torch.cat([t, pad])  # Megatron pads the vocabulary
        if tuple(t.shape) != want:
            raise BenchError(f"shape mismatch: {', '.join(rule.hf)} give {tuple(t.shape)} for {name}, Megatron expects {want}",
                             hint="config.json does not match the weights, or the tensor is corrupt")
        self.count += 1
        out = t.to(self.dtype).contiguous()
        self.bytes += out.numel() * out.element_size()
        return out


def hf_to_mcore(hf_dir: Path, out_dir: Path, *, formats: tuple[str, ...] = ("torch_dist",), dtype: str = "bf16",
                layout: Layout = Layout(), expert_layout: str = "auto", spec: str | None = None,
                overwrite: bool = False, dist_file_bytes: int = 2**30, allow_routing_mismatch: bool = False) -> Report:
    """Convert the HF checkpoint in hf_dir to a Megatron checkpoint in out_dir (see docs/convert.md)."""
    t0 = time.time()
    cfg = read_config(hf_dir)
    shape = shape_from_config(cfg)
    layout.check(heads=shape.heads, kv_heads=shape.kv_heads, num_experts=shape.num_experts, ffn=shape.ffn,
                 moe_ffn=shape.moe_ffn, mla=shape.mla)
    stages = layout.stage_layers(shape.num_layers)
    if expert_layout not in ("auto", "sequential", "grouped"):
        raise BenchError(f"unknown --expert-layout {expert_layout!r}", hint="use auto, sequential or grouped")
    routing_notes = _check_routing(shape, allow_routing_mismatch)
    reader = HFReader(hf_dir, shape.fp8_block)
    shape, cfg, mtp_note = _drop_absent_mtp(reader, shape, cfg)
    rules = all_rules(shape)
    _check_coverage(reader, rules, shape)
    from benchlib.megatron.model import build_meta_model

    model, args = build_meta_model(shape, dtype, layout.vocab_multiple, spec)
    if expert_layout == "auto":  # what the spec's experts are called
        grouped = any(re.search(r"\.experts\.linear_fc1\.weight\d+$", k) for k in model.state_dict())
        expert_layout = "grouped" if grouped else "sequential"
    expected = _expected_shapes(model)
    unfilled = sorted(set(expected) - {r.mcore for r in rules})
    if unfilled:
        raise BenchError(f"Megatron parameter {unfilled[0]} has no Hugging Face source ({len(unfilled)} in all)",
                         hint="the converter's mapping does not cover this model configuration; report it")
    report = Report("hf-to-mcore", shape.family, str(out_dir), list(formats), megatron_flags=shape.megatron_flags(),
                    notes=list(shape.notes) + routing_notes + ([mtp_note] if mtp_note else []))
    memory.trim()
    memory.reset_peak()  # after imports and the meta-model build: the conversion's own growth
    report.baseline_rss = memory.current_rss_bytes()
    produce = _Producer(reader, rules, shape, expected, _torch_dtype(dtype))
    with _Staging(out_dir, overwrite) as tmp:
        common = {"args": args, "checkpoint_version": 3.0, "iteration": ITERATION}
        if report.notes:  # in the checkpoint's own metadata (common.pt / each rank file), not only beside it
            common["conversion_notes"] = list(report.notes)
        if "torch_dist" in formats:
            from benchlib.megatron import checkpoint as dist_checkpoint

            dist_dir = tmp / "torch_dist" if len(formats) > 1 else tmp
            dist_checkpoint.save(model, dist_dir / f"iter_{ITERATION:07d}", produce, common, dist_file_bytes)
            (dist_dir / "latest_checkpointed_iteration.txt").write_text(f"{ITERATION}\n")
        if "legacy" in formats:
            leg_dir = tmp / "legacy" if len(formats) > 1 else tmp
            extra = [canonical_name(k) for k in model.state_dict() if k.endswith("._extra_state")]
            _write_legacy(leg_dir, shape, rules, produce, layout, stages, expert_layout, args, extra, report.notes)
        for d in {tmp} | ({tmp / f for f in formats} if len(formats) > 1 else set()):
            # beside each checkpoint: what mcore-to-hf and a run need to rebuild the model
            (d / "hf_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
            (d / "megatron_model_args.txt").write_text(" ".join(shape.megatron_flags()) + "\n")
        report.tensors, report.bytes_written = produce.count, produce.bytes
        report.peak_rss = memory.peak_rss_bytes()
        report.seconds = time.time() - t0
        (tmp / "convert_report.json").write_text(json.dumps(report.__dict__ | {"rss_growth": report.rss_growth}, indent=2) + "\n")
    reader.close()
    return report


def _legacy_name(name: str, stage: range, expert_layout: str, ep_rank: int, ep: int, num_experts: int) -> str | None:
    """Megatron name on a rank (local layer and expert numbers); None when the rank does not hold it."""
    import re

    m = re.match(r"decoder\.layers\.(\d+)\.(.*)", name)
    if m:
        i = int(m.group(1))
        if i not in stage:
            return None
        name = f"decoder.layers.{i - stage.start}.{m.group(2)}"
    m = re.search(r"\.local_experts\.(\d+)\.(linear_fc[12])\.(weight|_extra_state)$", name)
    if m:
        e = int(m.group(1))
        per = num_experts // ep
        if e // per != ep_rank:
            return None
        local = e % per
        head = name[: m.start()]
        if expert_layout == "grouped":
            # TEGroupedMLP / torch-native names; these experts keep no per-expert extra state
            return f"{head}.{m.group(2)}.weight{local}" if m.group(3) == "weight" else None
        return f"{head}.local_experts.{local}.{m.group(2)}.{m.group(3)}"
    return name


def _stage_of(name: str, stages: list[range], mtp: bool = False) -> list[int]:
    """Pipeline stages holding `name`: the embedding on the first (and, with MTP, also on the last,
    which embeds the shifted tokens itself), layers where they fall, the rest on the last."""
    import re

    m = re.match(r"decoder\.layers\.(\d+)\.", name)
    if m:
        return [next(p for p, r in enumerate(stages) if int(m.group(1)) in r)]
    if name.startswith("embedding."):
        return sorted({0, len(stages) - 1}) if mtp else [0]
    return [len(stages) - 1]  # final norm, output layer, MTP


def _write_legacy(out: Path, shape: ModelShape, rules: list[Rule], produce: _Producer, layout: Layout,
                  stages: list[range], expert_layout: str, args: Any, extra_states: list[str], notes: list[str]) -> None:
    """Per-rank model_optim_rng.pt files, one pipeline stage in memory at a time."""
    import copy

    import torch

    it_dir = out / f"iter_{ITERATION:07d}"
    for pp_rank, stage in enumerate(stages):
        mtp = shape.mtp_layers > 0
        names = [r.mcore for r in rules if pp_rank in _stage_of(r.mcore, stages, mtp)]
        full: dict[str, Any] = {n: produce(n) for n in names}
        # Megatron's linears carry an (empty) _extra_state entry; a strict load_state_dict wants it
        full.update({n: None for n in extra_states if pp_rank in _stage_of(n, stages, mtp)})
        for n in ("embedding.word_embeddings.weight", "output_layer.weight"):
            if n in full:  # pad the vocabulary to a multiple of vocab_multiple * TP, as Megatron does
                t = full[n]
                mult = layout.vocab_multiple * layout.tp
                rows = -(-shape.vocab // mult) * mult
                t = t[: shape.vocab]
                full[n] = torch.cat([t, t.new_zeros((rows - shape.vocab, *t.shape[1:]))]) if rows > shape.vocab else t
        rank_args = copy.copy(args)
        rank_args.tensor_model_parallel_size, rank_args.pipeline_model_parallel_size = layout.tp, layout.pp
        rank_args.expert_model_parallel_size = layout.ep
        rank_args.expert_tensor_parallel_size = layout.tp  # Megatron's default: experts cut like the rest
        rank_args.decoder_first_pipeline_num_layers, rank_args.decoder_last_pipeline_num_layers = layout.first, layout.last
        rank_args.padded_vocab_size = -(-shape.vocab // (layout.vocab_multiple * layout.tp)) * layout.vocab_multiple * layout.tp
        for ep_rank in range(layout.ep):
            per_tp: list[dict[str, Any]] = [{} for _ in range(layout.tp)]
            for n, t in full.items():
                local = _legacy_name(n, stage, expert_layout, ep_rank, layout.ep, shape.num_experts)
                if local is None:
                    continue
                for tp_rank, piece in enumerate(tp_split(local, t, layout.tp) if t is not None else [None] * layout.tp):
                    per_tp[tp_rank][local] = piece
            for tp_rank, sd in enumerate(per_tp):
                d = it_dir / rank_dir(tp_rank, pp_rank, ep_rank, layout)
                d.mkdir(parents=True, exist_ok=True)
                state = {"model": sd, "args": rank_args, "checkpoint_version": 3.0, "iteration": ITERATION}
                if notes:
                    state["conversion_notes"] = list(notes)
                torch.save(state, d / "model_optim_rng.pt")
        del full
    (out / "latest_checkpointed_iteration.txt").write_text(f"{ITERATION}\n")


# ---------------------------------------------------------------- Megatron -> Hugging Face

def _find_iter_dir(ckpt: Path) -> Path:
    ckpt = Path(ckpt)
    latest = ckpt / "latest_checkpointed_iteration.txt"
    if latest.is_file():
        tag = latest.read_text().strip()
        return ckpt / ("release" if tag == "release" else f"iter_{int(tag):07d}")
    if (ckpt / "metadata.json").is_file() or any(ckpt.glob("mp_rank_*")):
        return ckpt
    raise BenchError(f"{ckpt} is not a Megatron checkpoint (no latest_checkpointed_iteration.txt, metadata.json or mp_rank_* folders)",
                     hint="point --mcore-dir at the folder given to --save / --load")


class _LegacyReader:
    """Full TP=1 parameters from legacy per-rank files, merged across TP/EP/PP.

    Files are opened with mmap and only one pipeline stage's files are kept open at a time (the
    parameters are asked for in layer order), so resident memory stays near one stage.
    """

    def __init__(self, it_dir: Path, shape: ModelShape) -> None:
        import re

        import torch

        self.shape = shape
        self.paths: dict[tuple[int, int, int], Path] = {}
        args = None
        for d in sorted(it_dir.glob("mp_rank_*")):
            m = re.fullmatch(r"mp_rank_(\d+)(?:_(\d{3}))?(?:_(\d{3}))?", d.name)
            if not m or not (d / "model_optim_rng.pt").is_file():
                continue
            if args is None:
                args = torch.load(d / "model_optim_rng.pt", map_location="cpu", mmap=True, weights_only=False).get("args")
            pp_size = getattr(args, "pipeline_model_parallel_size", 1)
            if pp_size > 1:
                pp, ep = int(m.group(2) or 0), int(m.group(3) or 0)
            else:  # mp_rank_TT_EEE
                pp, ep = 0, int(m.group(2) or 0)
            self.paths[(int(m.group(1)), pp, ep)] = d / "model_optim_rng.pt"
        if not self.paths:
            raise BenchError(f"no mp_rank_*/model_optim_rng.pt under {it_dir}", hint="point --mcore-dir at a Megatron checkpoint")
        self.tp = 1 + max(k[0] for k in self.paths)
        self.pp = 1 + max(k[1] for k in self.paths)
        self.ep = 1 + max(k[2] for k in self.paths)
        self._open: dict[tuple[int, int, int], dict[str, Any]] = {}
        self._stage = -1
        # decoder layers per stage, counted from the files themselves
        self.offsets = [0]
        for p in range(self.pp):
            sd = self._file(0, p, 0)
            n = len({k.split(".")[2] for k in sd if k.startswith("decoder.layers.")})
            self.offsets.append(self.offsets[-1] + n)

    def release(self) -> None:
        """Drop the rank files kept open (mmap) for the current stage."""
        self._open.clear()
        self._stage = -1

    def _file(self, tp: int, pp: int, ep: int) -> dict[str, Any]:
        import torch

        if pp != self._stage:
            self._open.clear()  # drop the previous stage's mappings
            self._stage = pp
        key = (tp, pp, ep)
        if key not in self._open:
            if key not in self.paths:
                raise BenchError(f"rank file for tp={tp}, pp={pp}, ep={ep} is missing", hint="copy every mp_rank_* folder of the checkpoint")
            self._open[key] = torch.load(self.paths[key], map_location="cpu", mmap=True, weights_only=False)["model"]
        return self._open[key]

    def get(self, name: str, dtype: Any) -> Any:
        import re

        m = re.match(r"decoder\.layers\.(\d+)\.(.*)", name)
        stage, local = self.pp - 1, name
        if m:
            i = int(m.group(1))
            stage = next(p for p in range(self.pp) if self.offsets[p] <= i < self.offsets[p + 1])
            local = f"decoder.layers.{i - self.offsets[stage]}.{m.group(2)}"
        elif name.startswith("embedding."):
            stage = 0
        ep_rank = 0
        em = re.search(r"\.local_experts\.(\d+)\.(linear_fc[12])\.weight$", local)
        candidates = [local]
        if em:
            per = self.shape.num_experts // self.ep
            e = int(em.group(1))
            ep_rank, le = e // per, e % per
            head = local[: em.start()]
            candidates = [f"{head}.local_experts.{le}.{em.group(2)}.weight", f"{head}.{em.group(2)}.weight{le}"]
        shards = []
        for tp in range(self.tp):
            sd = self._file(tp, stage, ep_rank)
            key = next((c for c in candidates if c in sd), None)
            if key is None:
                raise BenchError(f"tensor {local} is missing from rank (tp={tp}, pp={stage}, ep={ep_rank})",
                                 hint="the checkpoint does not match hf_config.json (layers, experts, MTP)")
            shards.append(sd[key])
        merged = tp_merge(candidates[0], shards)
        return merged if dtype is None else merged.to(dtype)  # None: as stored


def open_mcore(it_dir: Path, shape: ModelShape, spec: str | None = None) -> Any:
    """get(name, dtype) -> full (TP=1) Megatron parameter, from a torch_dist or legacy checkpoint."""
    if (it_dir / "metadata.json").is_file():
        from benchlib.megatron import checkpoint as dist_checkpoint
        from benchlib.megatron.model import build_meta_model

        model, _ = build_meta_model(shape, "fp32", 128, spec)
        return dist_checkpoint.Reader(model, it_dir, canonical_name).get
    return _LegacyReader(it_dir, shape).get


def mcore_to_hf(mcore_dir: Path, out_dir: Path, *, hf_config: Path | None = None, dtype: str = "bf16",
                max_shard_bytes: int = 5 * 2**30, spec: str | None = None, overwrite: bool = False) -> Report:
    t0 = time.time()
    mcore_dir = Path(mcore_dir)
    cfg_path = Path(hf_config) if hf_config else mcore_dir / "hf_config.json"
    if cfg_path.is_dir():
        cfg_path = cfg_path / "config.json"
    if not cfg_path.is_file():
        raise BenchError(f"no Hugging Face config for {mcore_dir} ({cfg_path} not found)",
                         hint="pass --hf-config <folder with config.json> (conversions by benchlib store hf_config.json beside the checkpoint)")
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("quantization_config", None)  # written unquantized
    shape = shape_from_config(cfg)
    rules = all_rules(shape)
    it_dir = _find_iter_dir(mcore_dir)
    tdt = _torch_dtype(dtype)
    report = Report("mcore-to-hf", shape.family, str(out_dir), ["safetensors"])
    get = open_mcore(it_dir, shape, spec)
    shared = mtp_shared_copies(shape)
    memory.trim()
    memory.reset_peak()  # after imports and the meta-model build: the conversion's own growth
    report.baseline_rss = memory.current_rss_bytes()
    with _Staging(out_dir, overwrite) as tmp:
        writer = HFWriter(tmp, max_shard_bytes)
        kept: dict[str, Any] = {}
        for rule in rules:
            memory.trim()
            t = get(rule.mcore, tdt)
            if rule.mcore in ("embedding.word_embeddings.weight", "output_layer.weight"):
                t = t[: shape.vocab]
            try:
                parts = split(rule, t, shape)
            except RuntimeError as err:
                raise BenchError(f"shape mismatch splitting {rule.mcore} {tuple(t.shape)} into {', '.join(rule.hf)}: {err}",
                                 hint="hf_config.json does not match the checkpoint") from None
            for n, p in zip(rule.hf, parts):
                writer.add(n, p)
                report.tensors += 1
                if n in shared.values():
                    kept[n] = p
        for copy_name, source in shared.items():
            writer.add(copy_name, kept[source].clone())
            report.tensors += 1
        writer.finish()
        cfg_out = dict(cfg)
        # transformers 5 names the key "dtype", older releases "torch_dtype"
        cfg_out["dtype" if "dtype" in cfg_out else "torch_dtype"] = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}[dtype]
        (tmp / "config.json").write_text(json.dumps(cfg_out, indent=2) + "\n")
        report.bytes_written = writer.total
        report.peak_rss = memory.peak_rss_bytes()
        report.seconds = time.time() - t0
    return report
