"""A torch_dist checkpoint converted once loads at another layout: TP=2, or EP=2, in real
multi-process Megatron (gloo on CPU, one process per rank), with logits matching Hugging Face's.

Real: Megatron-Core parallel_state at TP/EP 2, its tensor-parallel layers and MoE dispatcher over
gloo, dist_checkpointing.load resharding the checkpoint. Not covered here: PP>1 (the last stage's
shared embedding goes to CUDA in Megatron, so it cannot be built on CPU); it is covered for the
legacy format by test_convert_parity.py's TP/PP/EP round trip.
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
RESHARD = REPO / "tests" / "fixtures" / "convert" / "reshard_load.py"


@pytest.mark.parametrize(("family", "tp", "ep"), [("Qwen3-MoE", 2, 1), ("DeepSeek-V3", 1, 2)])
def test_torch_dist_loads_at_other_layout(family: str, tp: int, ep: int, tmp_path: Path) -> None:
    from benchlib.convert.convert import hf_to_mcore

    hf_dir, _ = tiny_hf.build(family, tmp_path / "hf")
    hf_to_mcore(hf_dir, tmp_path / "mc", dtype="fp32")
    proc = subprocess.run([sys.executable, str(RESHARD), str(tmp_path / "mc"), str(hf_dir), str(tp), "1", str(ep)],
                          cwd=REPO, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["world"] == tp * ep
    assert result["max_abs_diff"] < 1e-4, result
