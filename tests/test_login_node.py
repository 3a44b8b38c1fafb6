"""A login node has neither torch nor Megatron: rendering, DRY_RUN and parsing must still work.

torch/megatron are installed in the test environment, so they are hidden here by an import
blocker placed in front of Python's importers (any import of them raises ImportError).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from benchlib.config.model_config import available_models

REPO = Path(__file__).resolve().parent.parent
BLOCKER = """
import sys, runpy
class _NoHeavy:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'megatron', 'transformer_engine', 'triton', 'wandb', 'matplotlib'):
            raise ImportError(f'{name} is not installed on this login node')
        return None
sys.meta_path.insert(0, _NoHeavy())
sys.argv = ['benchlib'] + sys.argv[1:]
runpy.run_module('benchlib', run_name='__main__')
"""


def _login_node(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKER, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=120)


def test_dry_run_render_without_torch(clean_env):
    model = available_models()[0]
    proc = _login_node({**clean_env, "DRY_RUN": "1", "MODEL": model}, "launch", "--mode", "sbatch", "--", "CLUSTER=template")
    assert proc.returncode == 0, proc.stderr
    assert "#SBATCH --job-name=" in proc.stdout and "--num-layers" in proc.stdout


def test_parse_without_torch(clean_env):
    logs = sorted((REPO / "tests" / "fixtures").rglob("*.log"))
    assert logs, "no fixture logs"
    proc = _login_node(clean_env, "parse", str(logs[0]), "--json")
    assert "is not installed on this login node" not in proc.stderr, proc.stderr
    assert proc.stdout.strip().startswith("{") or proc.stdout.strip().startswith("["), proc.stdout[:500] + proc.stderr[-2000:]
