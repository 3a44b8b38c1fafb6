"""`benchlib convert` on a login node: the CLI and the planning modules load without torch/megatron."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_convert_modules_import_without_torch() -> None:
    code = (
        "import sys, argparse\n"
        "import benchlib.convert.cli as c, benchlib.convert.convert, benchlib.convert.families, benchlib.convert.layout\n"
        "p = argparse.ArgumentParser(); s = p.add_subparsers(); c.register(s)\n"
        "a = p.parse_args(['convert', 'hf-to-mcore', '--hf-dir', 'x', '--out', 'y', '--format', 'legacy', '--target-pp', '2'])\n"
        "assert a.target_pp == 2 and a.format == 'legacy' and a.expert_layout == 'auto'\n"
        "bad = [m for m in ('torch', 'megatron', 'safetensors', 'transformers') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_layout_split_and_refusals() -> None:
    from benchlib.convert.layout import Layout, rank_dir
    from benchlib.core.errors import BenchError

    assert [list(r) for r in Layout(pp=4, first=13).stage_layers(61)] == [list(range(13)), list(range(13, 29)), list(range(29, 45)), list(range(45, 61))]
    assert [len(r) for r in Layout(pp=3, first=2, last=3).stage_layers(9)] == [2, 4, 3]
    assert [len(r) for r in Layout(pp=2).stage_layers(6)] == [3, 3]
    for bad in (Layout(pp=4, first=12), Layout(pp=2, first=4, last=4), Layout(pp=4)):
        try:
            bad.stage_layers(61 if bad.first != 4 else 6)
        except BenchError as err:
            assert "does not divide the model" in str(err)
        else:
            raise AssertionError(bad)
    assert rank_dir(1, 0, 0, Layout(tp=2)) == "mp_rank_01"
    assert rank_dir(1, 2, 0, Layout(tp=2, pp=4)) == "mp_rank_01_002"
    assert rank_dir(0, 0, 3, Layout(ep=4)) == "mp_rank_00_003"
    assert rank_dir(1, 1, 3, Layout(tp=2, pp=2, ep=4)) == "mp_rank_01_001_003"


def test_tp_split_merge_are_inverse_and_keep_swiglu_halves() -> None:
    import pytest

    torch = pytest.importorskip("torch")
    from benchlib.convert.layout import tp_merge, tp_split

    fc1 = torch.arange(8 * 3).reshape(8, 3).float()  # rows 0-3 gate, 4-7 up
    parts = tp_split("decoder.layers.0.mlp.linear_fc1.weight", fc1, 2)
    assert torch.equal(parts[0], fc1[[0, 1, 4, 5]]) and torch.equal(parts[1], fc1[[2, 3, 6, 7]])
    assert torch.equal(tp_merge("decoder.layers.0.mlp.linear_fc1.weight", parts), fc1)
    proj = torch.randn(4, 6)
    halves = tp_split("decoder.layers.0.self_attention.linear_proj.weight", proj, 2)
    assert halves[0].shape == (4, 3) and torch.equal(tp_merge("x.linear_proj.weight", halves), proj)
    grouped = tp_split("decoder.layers.0.mlp.experts.linear_fc1.weight3", fc1, 2)
    assert torch.equal(grouped[1], fc1[[2, 3, 6, 7]])
    norm = torch.randn(5)
    assert all(p is norm for p in tp_split("decoder.final_layernorm.weight", norm, 4))
