"""Converted checkpoints load through Megatron's own `load_checkpoint` (`--load ... --finetune`), in
both formats, and the loaded model computes Hugging Face's logits.

Real: megatron.training.checkpointing.load_checkpoint, strict=True, with Megatron's parsed arguments.
Faked (CPU-only machine): the CUDA all-reduce of the iteration number in read_metadata
(see tests/fixtures/convert/megatron_load.py).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("megatron.core")
pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "convert"))
import tiny_hf  # noqa: E402

pytestmark = [pytest.mark.megatron, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]
LOADER = REPO / "tests" / "fixtures" / "convert" / "megatron_load.py"


@pytest.mark.parametrize(("family", "fmt", "mtp_weights"), [
    ("Qwen3-MoE", "torch_dist", True), ("Qwen3-MoE", "legacy", True), ("DeepSeek-V3", "torch_dist", True),
    # saved by transformers: num_nextn_predict_layers 1, no MTP weights -> converted and loaded (strict) without MTP
    ("GLM-4.5-Air", "torch_dist", False),
])
def test_load_checkpoint_finetune(family: str, fmt: str, mtp_weights: bool, tmp_path: Path) -> None:
    from benchlib.convert.convert import hf_to_mcore

    hf_dir, _ = tiny_hf.build(family, tmp_path / "hf", mtp_weights=mtp_weights)
    hf_to_mcore(hf_dir, tmp_path / "mc", formats=(fmt,), dtype="fp32")
    proc = subprocess.run([sys.executable, str(LOADER), str(tmp_path / "mc"), "torch" if fmt == "legacy" else "torch_dist", str(hf_dir)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "successfully loaded checkpoint" in proc.stdout
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["iteration"] == 0  # --finetune starts counting again
    assert result["max_abs_diff"] < 1e-4, result
