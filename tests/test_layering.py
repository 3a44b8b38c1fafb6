"""The layering of benchlib's parts (tests/layering.py holds the rules, docs/ARCHITECTURE.md the table)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from layering import ALLOWED_PARTS, check_tree

PACKAGE = Path(__file__).resolve().parents[1] / "benchlib"


def test_every_import_follows_the_rules() -> None:
    violations = check_tree(PACKAGE)
    assert not violations, "layering broken:\n" + "\n".join(map(str, violations))


def test_every_folder_is_a_known_part() -> None:
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders == set(ALLOWED_PARTS)


@pytest.mark.parametrize(
    ("module", "line", "rule"),
    [
        ("config/knobs.py", "import torch", "config runs on login nodes: no torch"),
        ("metrics/steady.py", "    from megatron.core import parallel_state", "only benchlib/megatron imports Megatron-Core"),
        ("metrics/status.py", "from benchlib.launch.run import launch", "metrics may import only config, core"),
        ("megatron/validate.py", "from benchlib.convert.families import ModelShape", "megatron may import only config, core"),
        ("planning/arch.py", "from ..launch import run", "planning may import only config, core, metrics"),
        ("render/scripts.py", "    import triton", "render runs on login nodes: no triton"),
    ],
)
def test_a_planted_wrong_import_fails_with_the_rule_it_broke(tmp_path: Path, module: str, line: str, rule: str) -> None:
    copy = tmp_path / "benchlib"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / module
    body = target.read_text()
    if line.startswith("    "):  # a lazy import, inside a function: still refused
        line = "def _planted():\n" + line + "\n"
    target.write_text(body + "\n" + line + "\n")
    violations = check_tree(copy)
    assert len(violations) == 1, violations
    assert violations[0].path == module and rule in str(violations[0])


def test_a_module_at_the_package_root_must_belong_to_a_part(tmp_path: Path) -> None:
    copy = tmp_path / "benchlib"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "helpers.py").write_text("X = 1\n")
    assert [v.path for v in check_tree(copy)] == ["helpers.py"]
