"""`benchlib convert verify`: does a Megatron checkpoint compute what its Hugging Face checkpoint computes?

Both models run on the same tokens (CPU, or the GPU when there is one). Reported: the max abs
difference of the embeddings, of every decoder layer's output hidden states and of the logits, the
first place where they diverge, and pass/fail against a tolerance set by the coarsest dtype involved.

Two modes:
  whole model     transformers' `from_pretrained` on the HF folder and Megatron's GPTModel with every
                  parameter loaded from the checkpoint; each side feeds its own hidden states forward.
  layer by layer  one decoder layer of each side at a time, both fed the Hugging Face side's input to
                  that layer, so host memory is bounded by the largest layer, not the model. The HF
                  layer is a one-layer model of the same config loaded by transformers from a
                  temporary one-layer safetensors file (its tensors streamed from the shards); the
                  Megatron layer is a one-layer GPTModel built from the same flags, its parameters
                  streamed from the checkpoint. The final norm and output layer are applied with each
                  side's weights as RMSNorm + matmul.
MTP layers are not compared (Megatron is built without them).
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from benchlib.convert import memory
from benchlib.convert.families import ModelShape, read_config, shape_from_config
from benchlib.convert.hf_io import HFReader
from benchlib.convert.mapping import canonical_name
from benchlib.core.errors import BenchError

# max abs difference allowed, relative to the reference's largest |value|, by the coarsest dtype
# of the two checkpoints and the computation (fp32 differences are summation order only)
TOLERANCE = {"fp32": 1e-4, "fp16": 5e-3, "bf16": 3e-2}
_RANK = {"fp32": 0, "fp16": 1, "bf16": 2}


@dataclass
class Diff:
    name: str  # "embedding", "layer 3", "logits"
    max_abs: float
    ref_max: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.max_abs <= self.tolerance * max(self.ref_max, 1e-6)


@dataclass
class VerifyReport:
    mode: str
    dtype: str  # the dtype whose tolerance applies
    device: str
    tokens: tuple[int, int]
    diffs: list[Diff] = field(default_factory=list)
    argmax_agreement: float = 0.0
    seconds: float = 0.0
    baseline_rss: int = 0
    peak_rss: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def first_divergence(self) -> str | None:
        return next((d.name for d in self.diffs if not d.ok), None)

    @property
    def passed(self) -> bool:
        return self.first_divergence is None

    def summary(self) -> str:
        mib = 2**20
        lines = [f"note: {n}" for n in self.notes]
        lines.append(f"verify ({self.mode}, {self.device}, tokens {self.tokens[0]}x{self.tokens[1]}, "
                     f"{self.dtype} tolerance {TOLERANCE[self.dtype]:g} x max|reference|):")
        for d in self.diffs:
            lines.append(f"  {d.name:<12} max abs diff {d.max_abs:.3e}  (reference max {d.ref_max:.3e})  {'ok' if d.ok else 'DIVERGES'}")
        lines.append(f"  next-token argmax agreement: {100 * self.argmax_agreement:.1f}%")
        lines.append(f"peak RSS: {self.peak_rss / mib:.1f} MiB (growth during verify {max(0, self.peak_rss - self.baseline_rss) / mib:.1f} MiB "
                     f"over {self.baseline_rss / mib:.1f} MiB at start); {self.seconds:.1f} s")
        first = self.first_divergence
        lines.append("PASS: the Megatron checkpoint computes what the Hugging Face one computes" if first is None
                     else f"FAIL: first divergence at {first}")
        return "\n".join(lines)


def _dtype_name(t: Any) -> str:
    import torch

    return {torch.float32: "fp32", torch.float16: "fp16"}.get(t, "bf16")


def _diff(name: str, ref: Any, got: Any, dtype: str) -> Diff:
    ref, got = ref.float(), got.float().to(ref.device)
    return Diff(name, (ref - got).abs().max().item(), ref.abs().max().item(), TOLERANCE[dtype])


def _stored_dtype(get: Any) -> str:
    """The Megatron checkpoint's parameter dtype (a small tensor read as stored)."""
    return _dtype_name(get("decoder.final_layernorm.weight", None).dtype)


def _megatron_shape(hf_dir: Path, mcore_dir: Path) -> ModelShape:
    """The model as converted (hf_config.json beside the checkpoint: MTP dropped when absent), without MTP."""
    stored = Path(mcore_dir) / "hf_config.json"
    cfg = json.loads(stored.read_text()) if stored.is_file() else read_config(hf_dir)
    cfg.pop("quantization_config", None)
    return dataclasses.replace(shape_from_config(cfg), mtp_layers=0)


def _layer_output(module: Any, store: dict[int, Any], key: int, seq_first: bool) -> Any:
    def hook(_mod: Any, _inp: Any, out: Any) -> None:
        h = out[0] if isinstance(out, tuple) else out
        store[key] = (h.transpose(0, 1) if seq_first else h).detach().float()
    return module.register_forward_hook(hook)


def _megatron_masks(tokens: Any) -> tuple[Any, Any]:
    import torch

    s = tokens.shape[1]
    pos = torch.arange(s, device=tokens.device)[None].expand_as(tokens)
    # Megatron's mask: True where attention is NOT allowed
    mask = torch.triu(torch.ones(s, s, device=tokens.device), diagonal=1).bool()[None, None]
    return pos, mask


def _build_megatron(shape: ModelShape, spec: str | None, device: str) -> Any:
    from benchlib.megatron.build import build_gpt_model, init_single_process
    from benchlib.megatron.model import build_flags, resolve_spec

    init_single_process()
    model = build_gpt_model(build_flags(shape, "fp32", 128), spec=resolve_spec(spec, shape))
    model.eval()
    return model.to(device) if device != "cpu" else model


def _load_megatron(model: Any, get: Callable[[str, Any], Any], vocab: int, dtype: Any) -> None:
    """Every parameter of `model` from the checkpoint (get: full TP=1 tensor by the mapping's name)."""
    import torch

    model.to(dtype)
    with torch.no_grad():
        for k, p in model.state_dict().items():
            if "_extra_state" in k or not hasattr(p, "shape"):
                continue
            src = get(canonical_name(k), dtype)
            if k.endswith(("word_embeddings.weight", "output_layer.weight")):
                p.zero_()
                p[:vocab].copy_(src[:vocab])
            else:
                p.copy_(src)
            del src
            memory.trim()


def _megatron_run(model: Any, tokens: Any, decoder_input: Any = None) -> Any:
    import contextlib

    import torch

    from benchlib.megatron.build import cpu_current_device

    pos, mask = _megatron_masks(tokens)
    ctx = cpu_current_device() if tokens.device.type == "cpu" else contextlib.nullcontext()
    with torch.no_grad(), ctx:
        return model(tokens, pos, mask, decoder_input=decoder_input)


def _rms_head(h: Any, norm_w: Any, out_w: Any, eps: float) -> Any:
    import torch

    x = h.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return (x * norm_w.float()) @ out_w.float().t()


def verify(hf_dir: Path, mcore_dir: Path, *, layer_by_layer: bool = False, spec: str | None = None, seq_len: int = 32,
           batch: int = 2, seed: int = 0, compute_dtype: str = "fp32", device: str | None = None) -> VerifyReport:
    import torch

    from benchlib.convert.convert import _find_iter_dir, open_mcore

    t0 = time.time()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local folders only
    import transformers

    transformers.utils.logging.set_verbosity_error()  # one-layer models: "embed_tokens MISSING" is expected
    transformers.utils.logging.disable_progress_bar()
    if compute_dtype not in ("fp32", "bf16"):
        raise BenchError(f"unknown --dtype {compute_dtype!r}", hint="fp32 or bf16")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    hf_dir, mcore_dir = Path(hf_dir), Path(mcore_dir)
    shape = _megatron_shape(hf_dir, mcore_dir)
    hf_shape = shape_from_config(read_config(hf_dir))
    if (hf_shape.family, hf_shape.num_layers, hf_shape.hidden) != (shape.family, shape.num_layers, shape.hidden):
        raise BenchError(f"{hf_dir} ({hf_shape.family}, {hf_shape.num_layers} layers, hidden {hf_shape.hidden}) is not the model "
                         f"converted into {mcore_dir} ({shape.family}, {shape.num_layers} layers, hidden {shape.hidden})",
                         hint="pass the Hugging Face folder the checkpoint was converted from")
    get = open_mcore(_find_iter_dir(mcore_dir), shape, spec)
    reader = HFReader(hf_dir, hf_shape.fp8_block)
    tdt = {"fp32": torch.float32, "bf16": torch.bfloat16}[compute_dtype]
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, shape.vocab, (batch, seq_len), generator=gen).to(device)

    hf_embed = reader.get("model.embed_tokens.weight")
    mc_embed = get("embedding.word_embeddings.weight", hf_embed.dtype)[: shape.vocab]
    # get() converts to the dtype asked; the stored one is what the embedding comes back as unconverted
    stored = max((_dtype_name(hf_embed.dtype), _stored_dtype(get), compute_dtype), key=_RANK.__getitem__)
    report = VerifyReport("layer-by-layer" if layer_by_layer else "whole model", stored, device, (batch, seq_len))
    report.notes = list(shape.notes)
    if shape.routing_mismatches:
        report.notes += [f"routing Megatron-Core cannot reproduce: {r}" for r, _ in shape.routing_mismatches]
    x_hf = hf_embed[tokens.cpu()].to(device, tdt)
    report.diffs.append(_diff("embedding", x_hf, mc_embed[tokens.cpu()].to(device, tdt), stored))
    del hf_embed, mc_embed
    memory.trim()
    memory.reset_peak()
    report.baseline_rss = memory.current_rss_bytes()
    if layer_by_layer:
        ref_logits, got_logits = _by_layer(hf_dir, reader, get, shape, tokens, x_hf, tdt, report, spec)
    else:
        ref_logits, got_logits = _whole(hf_dir, get, shape, tokens, tdt, report, spec)
    report.diffs.append(_diff("logits", ref_logits, got_logits, stored))
    report.argmax_agreement = (ref_logits.argmax(-1) == got_logits.argmax(-1).to(ref_logits.device)).float().mean().item()
    report.peak_rss = memory.peak_rss_bytes()
    report.seconds = time.time() - t0
    return report


def _whole(hf_dir: Path, get: Any, shape: ModelShape, tokens: Any, tdt: Any, report: VerifyReport, spec: str | None) -> tuple[Any, Any]:
    import torch
    import transformers

    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=tdt).to(tokens.device).eval()
    hf_out: dict[int, Any] = {}
    handles = [_layer_output(layer, hf_out, i, seq_first=False) for i, layer in enumerate(hf.model.layers[: shape.num_layers])]
    with torch.no_grad():
        ref = hf(input_ids=tokens).logits.float()
    for h in handles:
        h.remove()
    del hf
    memory.trim()
    mc = _build_megatron(shape, spec, tokens.device.type)
    _load_megatron(mc, get, shape.vocab, tdt)
    mc_out: dict[int, Any] = {}
    for i, layer in enumerate(mc.decoder.layers):
        _layer_output(layer, mc_out, i, seq_first=True)
    got = _megatron_run(mc, tokens)[..., : shape.vocab].float()
    for i in range(shape.num_layers):
        report.diffs.append(_diff(f"layer {i}", hf_out[i], mc_out[i], report.dtype))
    return ref, got


def _one_layer_hf_config(cfg: dict[str, Any], shape: ModelShape, i: int) -> dict[str, Any]:
    """config.json of a one-layer model whose layer 0 is layer i (dense or MoE as it is), tiny vocabulary."""
    moe = bool(shape.moe_pattern[i])
    out = dict(cfg, num_hidden_layers=1, vocab_size=8, tie_word_embeddings=False, pad_token_id=None,
               bos_token_id=None, eos_token_id=None)
    out.pop("quantization_config", None)
    for key in ("layer_types", "mlp_layer_types"):
        out.pop(key, None)
    if shape.model_type == "qwen3_moe":
        out.update(mlp_only_layers=[] if moe else [0], decoder_sparse_step=1)
    elif shape.model_type != "mixtral":
        out.update(first_k_dense_replace=0 if moe else 1, moe_layer_freq=1, num_nextn_predict_layers=0)
    return out


def _by_layer(hf_dir: Path, reader: HFReader, get: Any, shape: ModelShape, tokens: Any, x: Any, tdt: Any,
              report: VerifyReport, spec: str | None) -> tuple[Any, Any]:
    import torch
    import transformers
    from safetensors.torch import save_file

    cfg = read_config(hf_dir)
    release = getattr(getattr(get, "__self__", None), "release", lambda: None)
    tmp = Path(tempfile.mkdtemp(prefix="benchlib-verify-"))
    try:
        for i in range(shape.num_layers):
            moe = shape.moe_pattern[i]
            # Hugging Face: layer i as layer 0 of a one-layer model, loaded by transformers itself
            prefix = f"model.layers.{i}."
            tensors = {f"model.layers.0.{n[len(prefix):]}": reader.get(n).to(tdt) for n in reader.names() if n.startswith(prefix)}
            (tmp / "config.json").write_text(json.dumps(_one_layer_hf_config(cfg, shape, i)))
            save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
            del tensors
            memory.trim()
            hf = transformers.AutoModelForCausalLM.from_pretrained(tmp, dtype=tdt).to(tokens.device).eval()
            (tmp / "model.safetensors").unlink()
            hf_out: dict[int, Any] = {}
            _layer_output(hf.model.layers[0], hf_out, 0, seq_first=False)
            with torch.no_grad():
                hf.model(inputs_embeds=x, position_ids=torch.arange(x.shape[1], device=x.device)[None].expand(x.shape[0], -1))
            del hf
            memory.trim()
            # Megatron: a one-layer GPTModel of the same flags, layer i's parameters streamed into it (built
            # anew for each layer: keeping it would add a layer to the Hugging Face side's peak)
            small_shape = dataclasses.replace(shape, num_layers=1, moe_pattern=[moe], vocab=8, tie_embeddings=False, mtp_layers=0)
            mc = _build_megatron(small_shape, spec, tokens.device.type)
            mc_out: dict[int, Any] = {}
            _layer_output(mc.decoder.layers[0], mc_out, 0, seq_first=True)
            _load_layer(mc, get, i, tdt)
            release()  # the checkpoint reader's cache of this layer
            _megatron_run(mc, torch.zeros_like(tokens), decoder_input=x.transpose(0, 1).contiguous())
            del mc
            memory.trim()
            report.diffs.append(_diff(f"layer {i}", hf_out[0], mc_out[0], report.dtype))
            x = hf_out[0].to(tdt)  # the same input for both sides' next layer
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    hf_norm, mc_norm = reader.get("model.norm.weight"), get("decoder.final_layernorm.weight", torch.float32)
    hf_head = reader.get("model.embed_tokens.weight" if shape.tie_embeddings else "lm_head.weight")
    mc_head = get("embedding.word_embeddings.weight" if shape.tie_embeddings else "output_layer.weight", torch.float32)[: shape.vocab]
    ref = _rms_head(x, hf_norm.to(x.device), hf_head.to(x.device), shape.eps)
    got = _rms_head(x, mc_norm.to(x.device), mc_head.to(x.device), shape.eps)
    return ref, got


def _load_layer(model: Any, get: Any, i: int, dtype: Any) -> None:
    """The one-layer model's decoder layer 0 from the checkpoint's decoder layer i (the rest stays as built)."""
    import torch

    model.to(dtype)
    with torch.no_grad():
        for k, p in model.state_dict().items():
            if not k.startswith("decoder.layers.0.") or "_extra_state" in k or not hasattr(p, "shape"):
                continue
            p.copy_(get(canonical_name(k).replace("decoder.layers.0.", f"decoder.layers.{i}.", 1), dtype))
            memory.trim()
