"""Peak memory of a conversion: tensors stream from safetensors one at a time.

A Qwen3-MoE-shaped model of about 200 MiB (fp32) is split into ~12 MiB shards (large enough that
the interpreter's own few MiB of noise do not decide the result); the conversion runs
through the CLI in a subprocess (`python -m benchlib convert hf-to-mcore`), which prints its peak RSS
(Linux VmHWM, reset just before the tensors start to flow) and its growth. The growth must stay under
three times the largest shard, i.e. far below the model's size.
"""
from __future__ import annotations

import json
import re
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


def _run(args: list[str]) -> str:
    proc = subprocess.run([sys.executable, "-m", "benchlib", "convert", *args], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _growth(stdout: str) -> float:
    m = re.search(r"peak RSS: ([\d.]+) MiB \(growth during conversion ([\d.]+) MiB", stdout)
    assert m, stdout
    return float(m.group(2)) * 2**20


def test_rss_growth_below_three_largest_shards(tmp_path: Path) -> None:
    hf_dir, _ = tiny_hf.build("Qwen3-MoE", tmp_path / "hf", max_shard_size="12MB", hidden=512, layers=6, experts=16, vocab=8192)
    shards = list(hf_dir.glob("model-*.safetensors"))
    largest = max(p.stat().st_size for p in shards)
    total = sum(p.stat().st_size for p in shards)
    assert len(shards) >= 12 and total > 10 * largest  # the model is much larger than 3 shards

    # data files scaled down with the shards (default 1GiB against 5GB shards of real checkpoints)
    out = _run(["hf-to-mcore", "--hf-dir", str(hf_dir), "--out", str(tmp_path / "mc"), "--dtype", "fp32", "--dist-file-size", "8MiB"])
    growth = _growth(out)
    assert growth < 3 * largest, f"RSS grew {growth / 2**20:.1f} MiB; largest shard {largest / 2**20:.1f} MiB, model {total / 2**20:.1f} MiB"
    report = json.loads((tmp_path / "mc" / "convert_report.json").read_text())
    assert report["peak_rss"] > 0 and report["rss_growth"] == pytest.approx(growth, rel=0.01, abs=2**20)

    back = _run(["mcore-to-hf", "--mcore-dir", str(tmp_path / "mc"), "--out", str(tmp_path / "back"), "--dtype", "fp32", "--max-shard-size", "12MiB"])
    assert _growth(back) < 3 * largest + 12 * 2**20  # + the output shard being assembled
