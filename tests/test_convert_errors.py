"""Bad input to `benchlib convert`: clear BenchErrors naming the tensor/setting; no half-written output.

Real parts: the CLI entry point, transformers-built tiny checkpoints, Megatron-Core (meta-device build).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("megatron.core")
pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "convert"))
import tiny_hf  # noqa: E402

from benchlib.cli import main  # noqa: E402

pytestmark = pytest.mark.megatron


@pytest.fixture(scope="module")
def qwen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d, _ = tiny_hf.build("Qwen3-MoE", tmp_path_factory.mktemp("q") / "hf")
    return d


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_missing_shard_is_named(qwen: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    d = _copy(qwen, tmp_path / "hf")
    victim = sorted(d.glob("model-*.safetensors"))[3]
    victim.unlink()
    rc = main(["convert", "hf-to-mcore", "--hf-dir", str(d), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and f"missing shard {victim.name}" in err
    assert not (tmp_path / "out").exists()


def test_shape_mismatch_names_tensor(qwen: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    d = _copy(qwen, tmp_path / "hf")
    index = json.loads((d / "model.safetensors.index.json").read_text())["weight_map"]
    name = "model.layers.1.self_attn.o_proj.weight"
    f = d / index[name]
    tensors = load_file(f)
    tensors[name] = torch.zeros(64, 32)
    save_file(tensors, str(f))
    rc = main(["convert", "hf-to-mcore", "--hf-dir", str(d), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and "shape mismatch" in err and name in err and "decoder.layers.1.self_attention.linear_proj.weight" in err
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.partial-*"))  # the staging folder was removed


def test_unsupported_architecture(qwen: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    d = _copy(qwen, tmp_path / "hf")
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(model_type="llama4", architectures=["Llama4ForCausalLM"])
    (d / "config.json").write_text(json.dumps(cfg))
    rc = main(["convert", "hf-to-mcore", "--hf-dir", str(d), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and "unsupported architecture" in err and "llama4" in err and "Qwen3MoeForCausalLM" in err


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--target-tp", "3"], ["attention heads 4", "--target-tp 3"]),
        (["--target-ep", "3"], ["experts 4", "--target-ep 3"]),
        (["--target-pp", "2", "--target-first-stage-layers", "2", "--target-last-stage-layers", "2"], ["3 layers", "--target-pp 2"]),
    ],
)
def test_layout_that_does_not_divide(qwen: Path, tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str], words: list[str]) -> None:
    rc = main(["convert", "hf-to-mcore", "--hf-dir", str(qwen), "--out", str(tmp_path / "out"), "--format", "legacy", *args])
    err = capsys.readouterr().err
    assert rc == 2 and "does not divide" in err
    for w in words:
        assert w in err


def test_existing_output_kept_when_conversion_fails(qwen: Path, tmp_path: Path) -> None:
    """A finished checkpoint is never replaced by a half-written one (write beside, then rename)."""
    out = tmp_path / "out"
    assert main(["convert", "hf-to-mcore", "--hf-dir", str(qwen), "--out", str(out), "--dtype", "fp32"]) == 0
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    d = _copy(qwen, tmp_path / "hf")
    sorted(d.glob("model-*.safetensors"))[-1].unlink()
    assert main(["convert", "hf-to-mcore", "--hf-dir", str(d), "--out", str(out), "--overwrite"]) == 2
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert (out / "iter_0000001" / "metadata.json").is_file()


def test_format_both_and_killed_leftovers(qwen: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """--format both writes torch_dist/ and legacy/ (each with its hf_config.json, so mcore-to-hf
    works on either); a staging folder left by a killed conversion (dead pid) is cleared."""
    stale = tmp_path / ".out.partial-999999999"
    (stale / "iter_0000001").mkdir(parents=True)
    out = tmp_path / "out"
    assert main(["convert", "hf-to-mcore", "--hf-dir", str(qwen), "--out", str(out), "--format", "both", "--dtype", "fp32"]) == 0
    assert not stale.exists()
    for sub in ("torch_dist", "legacy"):
        assert (out / sub / "latest_checkpointed_iteration.txt").read_text().strip() == "1"
        assert (out / sub / "hf_config.json").is_file()
    assert (out / "torch_dist" / "iter_0000001" / "metadata.json").is_file()
    assert (out / "legacy" / "iter_0000001" / "mp_rank_00" / "model_optim_rng.pt").is_file()
    assert main(["convert", "mcore-to-hf", "--mcore-dir", str(out / "legacy"), "--out", str(tmp_path / "back"), "--dtype", "fp32"]) == 0
    assert "peak RSS:" in capsys.readouterr().out
    assert (tmp_path / "back" / "model.safetensors.index.json").is_file()


def test_single_file_checkpoint(tmp_path: Path) -> None:
    """A checkpoint saved as one model.safetensors (no index) converts too."""
    d, _ = tiny_hf.build("Mixtral", tmp_path / "hf", max_shard_size="50GB")
    assert (d / "model.safetensors").is_file() and not (d / "model.safetensors.index.json").exists()
    assert main(["convert", "hf-to-mcore", "--hf-dir", str(d), "--out", str(tmp_path / "out"), "--dtype", "fp32"]) == 0
    assert (tmp_path / "out" / "iter_0000001" / "metadata.json").is_file()
