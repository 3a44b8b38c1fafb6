"""First run on a machine whose python3 is itself a virtual environment (scripts/bench_python.sh).

The situation is built for real: an "outer" venv plays the GPU image's /opt/torch/.venv (its
python3 first on PATH), holding torch, jinja2, pyyaml, triton (the shared test environment's
installed packages, symlinked into it) but not megatron-core; the suite's .venv is then made
from that venv's python3 by the script, offline, from a `.whl/` holding only megatron-core.

Faked, because it cannot exist here: the GPU (`nvidia-smi` on PATH is a stub that prints
nothing, which is all bench_python.sh asks of it), and the megatron-core wheel (a wheel with the
real name and version holding only an empty `megatron.core` package: the real one needs nothing
the test checks, and no network is used).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_SITE = Path(sysconfig.get_paths()["purelib"])
pytestmark = [pytest.mark.megatron]  # the outer venv borrows this environment's torch


def _fake_megatron_core_wheel(whl_dir: Path) -> Path:
    whl_dir.mkdir(parents=True, exist_ok=True)
    path = whl_dir / "megatron_core-0.19.2-py3-none-any.whl"
    dist = "megatron_core-0.19.2.dist-info"
    files = {
        "megatron/__init__.py": "",
        "megatron/core/__init__.py": "FAKE_FOR_TEST = True\n",
        f"{dist}/METADATA": "Metadata-Version: 2.1\nName: megatron-core\nVersion: 0.19.2\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{name},,\n" for name in files) + f"{dist}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
        zf.writestr(f"{dist}/RECORD", record)
    return path


@pytest.fixture(scope="module")
def outer_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv (no system site-packages) holding the shared environment's packages, minus megatron."""
    outer = tmp_path_factory.mktemp("outer") / "venv"
    base = Path(sys.base_prefix) / "bin" / "python3"
    subprocess.run([str(base), "-m", "venv", "--without-pip", str(outer)], check=True, timeout=120)
    site = Path(subprocess.run([str(outer / "bin" / "python3"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    for entry in SHARED_SITE.iterdir():
        name = entry.name.lower()
        if name.startswith(("megatron", "benchlib", "_pytest", "pytest", "pip")) or name.endswith(".pth"):
            continue
        (site / entry.name).symlink_to(entry)
    return outer


def _checkout(tmp_path: Path) -> Path:
    """A copy of the launcher part of the suite (bench_python.sh makes .venv next to scripts/)."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "bench_python.sh", repo / "scripts" / "bench_python.sh")
    return repo


def _source(repo: Path, outer: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    fake_bin = tmp_path / "fakebin"
    fake_bin.mkdir(exist_ok=True)
    smi = fake_bin / "nvidia-smi"
    smi.write_text("#!/bin/sh\nexit 0\n")
    smi.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("BENCH_PYTHON", "PYTHONPATH", "VIRTUAL_ENV", "DRY_RUN", "PYENV_VERSION")}
    # Like `source /opt/torch/.venv/bin/activate`: the venv's python3 comes first.
    env["PATH"] = f"{outer / 'bin'}:{fake_bin}:/usr/bin:/bin"
    env["BENCH_NEEDS_TRAIN"] = "1"
    script = (
        f"set -euo pipefail; source {repo / 'scripts' / 'bench_python.sh'}; echo \"BENCH_PYTHON=$BENCH_PYTHON\"; "
        "\"$BENCH_PYTHON\" -c 'import torch, jinja2, yaml, triton, megatron.core as m; print(\"torch at\", torch.__file__); print(\"fake megatron\", m.FAKE_FOR_TEST)'"
    )
    return subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)


def test_venv_in_venv_reuses_the_outer_packages_and_installs_only_megatron(outer_venv: Path, tmp_path: Path) -> None:
    repo = _checkout(tmp_path)
    _fake_megatron_core_wheel(repo / ".whl")
    res = _source(repo, outer_venv, tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"BENCH_PYTHON={repo / '.venv' / 'bin' / 'python'}" in res.stdout
    assert "installing into .venv what is missing: megatron-core==0.19.2" in res.stderr
    assert "fake megatron True" in res.stdout
    # torch comes from the outer venv, not a copy in .venv.
    torch_line = next(line for line in res.stdout.splitlines() if line.startswith("torch at"))
    assert str(outer_venv) in torch_line
    site = next((repo / ".venv" / "lib").glob("python3*/site-packages"))
    assert not (site / "torch").exists() and not (site / "jinja2").exists()
    assert (site / "megatron" / "core").is_dir()
    # The second source finds .venv complete and installs nothing.
    again = _source(repo, outer_venv, tmp_path)
    assert again.returncode == 0, again.stderr
    assert "installing" not in again.stderr and "creating" not in again.stderr


def test_offline_missing_wheel_is_named_with_its_download_command(outer_venv: Path, tmp_path: Path) -> None:
    """The outer venv lacks jinja2 here; .whl/ holds only megatron-core, so jinja2 is named."""
    repo = _checkout(tmp_path)
    _fake_megatron_core_wheel(repo / ".whl")
    thin = tmp_path / "thin"
    subprocess.run([str(Path(sys.base_prefix) / "bin" / "python3"), "-m", "venv", "--without-pip", str(thin)], check=True, timeout=120)
    site = next((thin / "lib").glob("python3*/site-packages"))
    for entry in SHARED_SITE.iterdir():
        if not entry.name.lower().startswith(("jinja2", "megatron", "pip")) and not entry.name.endswith(".pth"):
            (site / entry.name).symlink_to(entry)
    res = _source(repo, thin, tmp_path)
    assert res.returncode != 0
    assert "no wheel for 'jinja2'" in res.stderr, res.stderr
    assert "pip download --no-deps --only-binary=:all: --python-version 3.12" in res.stderr
    assert "-d .whl 'jinja2'" in res.stderr
    assert "megatron" not in res.stderr.split("no wheel for", 1)[1].split("\n")[0]


def test_a_venv_left_by_the_old_setup_is_repaired(outer_venv: Path, tmp_path: Path) -> None:
    """The old setup's .venv (`--system-site-packages` from inside a venv: the base interpreter's
    packages, not the venv's) is given the outer venv's packages instead of failing offline."""
    repo = _checkout(tmp_path)
    _fake_megatron_core_wheel(repo / ".whl")
    subprocess.run([str(outer_venv / "bin" / "python3"), "-m", "venv", "--system-site-packages", str(repo / ".venv")],
                   check=True, timeout=300)
    res = _source(repo, outer_venv, tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "installing into .venv what is missing: megatron-core==0.19.2" in res.stderr
    assert str(outer_venv) in next(line for line in res.stdout.splitlines() if line.startswith("torch at"))
