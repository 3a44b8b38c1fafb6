"""ckpt_convert_scripts/<Family>/*.sh run the same `benchlib convert` commands (real bash, real conversion)."""
from __future__ import annotations

import json
import os
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
SCRIPTS = REPO / "ckpt_convert_scripts"
FAMILY_DIRS = ["DeepSeek-V2", "DeepSeek-V3", "Qwen3-MoE", "Mixtral", "GLM-4.5-Air"]


def _bash(script: Path, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHON": sys.executable, **env}
    return subprocess.run(["bash", str(script)], env=full, cwd=cwd, capture_output=True, text=True, timeout=600)


def test_every_family_has_both_wrappers() -> None:
    for fam in FAMILY_DIRS:
        for name in ("hf_to_mcore.sh", "mcore_to_hf.sh"):
            path = SCRIPTS / fam / name
            assert path.is_file(), path
            assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
            text = path.read_text()
            assert 'source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"' in text
            # Each hf_to_mcore wrapper names its own family (the converter refuses another family's checkpoint).
            assert (f'hf_to_mcore "{fam}" "$@"' if name == "hf_to_mcore.sh" else 'mcore_to_hf "$@"') in text
    common = (SCRIPTS / "common.sh").read_text()
    assert common.count('-m benchlib convert') == 2


def test_wrappers_convert_both_ways_from_another_folder(tmp_path: Path) -> None:
    """Run from outside the repo; legacy at TP=2, PP=2 uneven, EP=2 (checked layer by layer, VERIFY), then back
    to HF with identical tensors."""
    import torch
    from safetensors.torch import load_file

    hf_dir, _ = tiny_hf.build("Mixtral", tmp_path / "hf")
    r = _bash(SCRIPTS / "Mixtral" / "hf_to_mcore.sh",
              {"HF_DIR": str(hf_dir), "OUT_DIR": str(tmp_path / "mc"), "FORMAT": "legacy", "TP": "2", "PP": "2", "EP": "2",
               "FIRST_STAGE_LAYERS": "2", "DTYPE": "fp32", "VERIFY": "layer-by-layer"}, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "peak RSS:" in r.stdout
    assert "verify (layer-by-layer" in r.stdout and "PASS" in r.stdout
    assert (tmp_path / "mc" / "iter_0000001" / "mp_rank_01_001_001" / "model_optim_rng.pt").is_file()
    r = _bash(SCRIPTS / "Mixtral" / "mcore_to_hf.sh", {"MCORE_DIR": str(tmp_path / "mc"), "OUT_DIR": str(tmp_path / "back"), "DTYPE": "fp32"}, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]

    def tensors(d: Path) -> dict:
        out = {}
        for f in set(json.loads((d / "model.safetensors.index.json").read_text())["weight_map"].values()):
            out.update(load_file(d / f))
        return out

    a, b = tensors(hf_dir), tensors(tmp_path / "back")
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_wrapper_refuses_another_family(tmp_path: Path) -> None:
    hf_dir, _ = tiny_hf.build("Qwen3-MoE", tmp_path / "hf")
    r = _bash(SCRIPTS / "DeepSeek-V3" / "hf_to_mcore.sh", {"HF_DIR": str(hf_dir), "OUT_DIR": str(tmp_path / "mc")}, cwd=tmp_path)
    assert r.returncode == 2 and "holds a Qwen3-MoE checkpoint, not DeepSeek-V3" in r.stderr
    assert not (tmp_path / "mc").exists()
