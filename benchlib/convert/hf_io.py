"""Streaming access to Hugging Face safetensors checkpoints (read one tensor at a time; write shards).

Reading never loads a whole shard: `safe_open` + `get_tensor` reads one tensor's bytes. DeepSeek-V3's
published fp8 weights (`float8_e4m3fn` + `<name>_scale_inv`, one scale per 128x128 block) are
dequantized here, so callers only ever see bf16/fp32 tensors.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchlib.core.errors import BenchError


class HFReader:
    def __init__(self, hf_dir: Path, fp8_block: tuple[int, int] | None = None) -> None:
        self.dir = Path(hf_dir)
        self.fp8_block = fp8_block or (128, 128)
        index = self.dir / "model.safetensors.index.json"
        if index.is_file():
            self.weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        elif (self.dir / "model.safetensors").is_file():
            from safetensors import safe_open

            with safe_open(str(self.dir / "model.safetensors"), "pt") as fh:
                self.weight_map = {k: "model.safetensors" for k in fh.keys()}
        else:
            raise BenchError(f"no model.safetensors.index.json or model.safetensors in {self.dir}",
                             hint="convert from a Hugging Face folder holding safetensors weights")
        missing = sorted({f for f in self.weight_map.values() if not (self.dir / f).is_file()})
        if missing:
            names = [k for k, f in self.weight_map.items() if f == missing[0]][:3]
            raise BenchError(
                f"missing shard {missing[0]} in {self.dir} (holds {', '.join(names)}, ...)"
                + (f"; {len(missing) - 1} more shard(s) missing" if len(missing) > 1 else ""),
                hint="download every file the index lists (model.safetensors.index.json), e.g. huggingface-cli download again",
            )
        self._handles: dict[str, Any] = {}

    def names(self) -> list[str]:
        return [k for k in self.weight_map if not k.endswith("_scale_inv")]

    def __contains__(self, name: str) -> bool:
        return name in self.weight_map

    def _raw(self, name: str) -> Any:
        from safetensors import safe_open

        if name not in self.weight_map:
            raise BenchError(f"tensor {name} not found in {self.dir}",
                             hint="the checkpoint does not match its config.json (layer count, experts, MTP layers?)")
        # open, read one tensor, close: an open handle keeps the shard's pages mapped (and counted in RSS)
        with safe_open(str(self.dir / self.weight_map[name]), "pt") as handle:
            return handle.get_tensor(name)

    def get(self, name: str) -> Any:
        import torch

        t = self._raw(name)
        if t.dtype in (getattr(torch, "float8_e4m3fn", None), getattr(torch, "float8_e5m2", None)):
            scale_name = f"{name}_scale_inv"
            if scale_name not in self.weight_map:
                raise BenchError(f"tensor {name} is fp8 but {scale_name} is missing", hint="the fp8 checkpoint is incomplete")
            t = dequantize_fp8(t, self._raw(scale_name), self.fp8_block)
        return t

    def close(self) -> None:
        self._handles.clear()


def dequantize_fp8(w: Any, scale_inv: Any, block: tuple[int, int] = (128, 128)) -> Any:
    """fp8 weight * its per-block scale (`weight_scale_inv`, one per block of block[0] x block[1]) -> bf16."""
    import torch

    rows, cols = w.shape
    br, bc = block
    need = (-(-rows // br), -(-cols // bc))
    if tuple(scale_inv.shape) != need:
        raise BenchError(f"weight_scale_inv shape {tuple(scale_inv.shape)} does not fit weight {tuple(w.shape)} with {br}x{bc} blocks (expected {need})",
                         hint="check quantization_config.weight_block_size in config.json")
    s = scale_inv.float().repeat_interleave(br, 0)[:rows].repeat_interleave(bc, 1)[:, :cols]
    return (w.float() * s).to(torch.bfloat16)


class HFWriter:
    """Writes tensors into numbered safetensors shards of about max_shard_bytes, then the index."""

    def __init__(self, out_dir: Path, max_shard_bytes: int = 5 * 2**30) -> None:
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max = max_shard_bytes
        self.pending: dict[str, Any] = {}
        self.pending_bytes = 0
        self.files: list[list[str]] = []
        self.total = 0

    def add(self, name: str, tensor: Any) -> None:
        n = tensor.numel() * tensor.element_size()
        if self.pending and self.pending_bytes + n > self.max:
            self.flush()
        self.pending[name] = tensor.contiguous()
        self.pending_bytes += n
        self.total += n

    def flush(self) -> None:
        from safetensors.torch import save_file

        if not self.pending:
            return
        idx = len(self.files)
        save_file(self.pending, str(self.dir / f"part-{idx:05d}.safetensors"), metadata={"format": "pt"})
        self.files.append(list(self.pending))
        self.pending, self.pending_bytes = {}, 0

    def finish(self) -> None:
        self.flush()
        n = len(self.files)
        weight_map = {}
        for i, names in enumerate(self.files):
            final = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            (self.dir / f"part-{i:05d}.safetensors").rename(self.dir / final)
            weight_map.update({k: final for k in names})
        index = {"metadata": {"total_size": self.total}, "weight_map": dict(sorted(weight_map.items()))}
        (self.dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
