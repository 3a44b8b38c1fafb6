"""Rendering: golden scripts, shell quoting of hostile values, secrets, DRY_RUN through the real scripts."""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from benchlib.config.model_config import available_models
from benchlib.render.scripts import render_interactive, render_sbatch, shell_quote
from benchlib.config.resolve import resolve_run

sys.path.insert(0, str(Path(__file__).resolve().parent))
from golden_util import golden_path, render_golden  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
MODELS = available_models()
PROXY = "Qwen3-30B-A3B-Proxy" if "Qwen3-30B-A3B-Proxy" in MODELS else MODELS[0]
SENTINEL = "sk-SENTINEL-7f3a9c-do-not-leak"
HOSTILE = ["a b", "it's", 'say "hi"', "x;rm -rf /", "$(touch /tmp/pwned_bench)", "`id`", "line1\nline2", "$HOME", "*", "--flag=va'l"]


@pytest.mark.parametrize("mode", ["sbatch", "interactive"])
@pytest.mark.parametrize("model", MODELS)
def test_golden_scripts(model, mode, clean_env):
    path = golden_path(model, mode)
    assert path.is_file(), f"missing golden {path}: run .venv/bin/python tests/regen_golden.py"
    assert render_golden(model, mode, clean_env) == path.read_text(), (
        f"{path} differs from the rendered script; if the change is intended, run .venv/bin/python tests/regen_golden.py"
    )


@pytest.mark.parametrize("model", MODELS)
def test_rendered_scripts_are_valid_bash_with_strict_mode(model, clean_env):
    for mode in ("sbatch", "interactive"):
        text = render_golden(model, mode, clean_env)
        assert "set -euo pipefail" in text and "set -x" not in text.replace("`set -x`", "")
        subprocess.run(["bash", "-n"], input=text, text=True, check=True)


@pytest.mark.parametrize("value", HOSTILE)
def test_shell_quote_round_trips_hostile_values(value):
    out = subprocess.run(["bash", "-c", f"printf '%s' {shell_quote(value)}"], capture_output=True, text=True, check=True)
    assert out.stdout == value


def _fake_python(tmp_path: Path) -> Path:
    """Stands in for the interpreter (no GPU here): records the argv it was started with."""
    fake = tmp_path / "fake python"
    fake.write_text(f"#!{sys.executable}\nimport json, os, sys\nopen(os.environ['ARGV_OUT'], 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n")
    fake.chmod(0o755)
    return fake


def test_interactive_script_passes_hostile_values_verbatim(tmp_path, clean_env):
    """The rendered script runs for real; the interpreter is a recorder (torch cannot run here)."""
    out_root = tmp_path / "out dir;$(touch pwned)'q"
    extra = ["--wandb-exp-name", HOSTILE[4], "--data-cache-path", "line1\nline2 'x' \"y\" `id` ;"]
    env = {**clean_env, "MODEL": PROXY, "NNODES": "1", "EP": "1", "GBS": "8", "PYTHON": str(_fake_python(tmp_path)), "OUTPUT_ROOT": str(out_root), "COMMENT": "c;$(id) 'x'"}
    run = resolve_run(["CLUSTER=local", *extra], env, mode="interactive", local_gpus=1)
    script = tmp_path / "launch.sh"
    script.write_text(render_interactive(run))
    argv_out = tmp_path / "argv.json"
    proc = subprocess.run(["bash", str(script)], env={**env, "ARGV_OUT": str(argv_out)}, cwd=tmp_path, capture_output=True, text=True)
    calls = [json.loads(line) for line in argv_out.read_text().splitlines()]
    # the GPU calibration (CALIBRATE=1 by default), the training launch, then `benchlib collect`
    calibration, recorded = calls[0], calls[1]
    assert calibration[:2] == ["-m", "torch.distributed.run"] and "benchlib.megatron.calibrate" in calibration
    assert calls[2][:3] == ["-m", "benchlib", "collect"]
    assert recorded[:2] == ["-m", "torch.distributed.run"]
    i = recorded.index("benchlib.megatron.driver")
    assert recorded[i + 1 :] == run.megatron_args
    assert recorded[-4:] == extra
    assert not (tmp_path / "pwned").exists() and not Path("/tmp/pwned_bench").exists()
    assert (Path(str(run.run_dir)) / "logs" / "train.log").is_file()
    assert proc.returncode in (0, 1)  # training "succeeded"; collect may find no iterations


def test_sbatch_directives_quote_hostile_comment(clean_env):
    run = resolve_run(["CLUSTER=template"], {**clean_env, "MODEL": PROXY, "COMMENT": "x;$(touch /tmp/pwned_bench) \"q\""}, mode="sbatch")
    text = render_sbatch(run)
    line = next(l for l in text.splitlines() if l.startswith("#SBATCH --comment="))
    assert shlex.split(line.split("=", 1)[1]) == ["x;$(touch /tmp/pwned_bench) \"q\""]
    job = next(l for l in text.splitlines() if l.startswith("#SBATCH --job-name="))
    assert "$(" not in job and ";" not in job


def _cli(env: dict[str, str], script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / script), *args], env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif("DeepSeek-V3" not in MODELS, reason="DeepSeek-V3 config not shipped")
def test_dry_run_deepseek_v3_prints_full_sbatch_script(clean_env):
    env = {**clean_env, "DRY_RUN": "1", "MODEL": "DeepSeek-V3", "CLUSTER": "template", "WANDB": "1", "WANDB_API_KEY": SENTINEL}
    proc = _cli(env, "sbatch_benchmarking.sh")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith("#!/bin/bash") and "#SBATCH --nodes=" in out and "srun" in out
    for flag in ("--num-layers", "--hidden-size", "--num-experts", "--multi-latent-attention", "--kv-lora-rank", "--moe-router-topk", "--expert-model-parallel-size"):
        assert flag in out, flag
    # WANDB=1: the job's follower writes the one WandB run; Megatron's own writer stays off.
    assert "-m benchlib wandb-follow" in out and "--wandb-" not in out
    assert SENTINEL not in out and SENTINEL not in proc.stderr


def test_dry_run_unknown_model_and_bad_ep(clean_env):
    proc = _cli({**clean_env, "DRY_RUN": "1", "MODEL": "NoSuchModel"}, "sbatch_benchmarking.sh")
    assert proc.returncode != 0 and proc.stdout == ""
    for model in MODELS:
        assert model in proc.stderr
    if "DeepSeek-V3" in MODELS:
        proc = _cli({**clean_env, "DRY_RUN": "1", "MODEL": "DeepSeek-V3", "CLUSTER": "template", "EP": "6"}, "sbatch_benchmarking.sh")
        assert proc.returncode != 0 and proc.stdout == "" and "EP=6" in proc.stderr


def test_interactive_without_gpu_points_to_dry_run(clean_env, tmp_path):
    if subprocess.run(["bash", "-c", "command -v nvidia-smi"], capture_output=True).returncode == 0:
        pytest.skip("this machine has nvidia-smi")
    env = {**clean_env, "MODEL": PROXY, "OUTPUT_ROOT": str(tmp_path)}
    proc = _cli(env, "interactive_benchmarking.sh")
    assert proc.returncode != 0
    assert "no NVIDIA GPU" in proc.stderr and "DRY_RUN=1" in proc.stderr
    assert not any(tmp_path.iterdir()), "nothing may be written before the check"


def test_launch_writes_run_dir_without_secrets(clean_env, tmp_path):
    """A real interactive launch on CPU (ENTRY=command): run dir, manifest, resolved config, log."""
    env = {**clean_env, "MODEL": PROXY, "OUTPUT_ROOT": str(tmp_path), "ENTRY": "command", "ENTRY_COMMAND": "echo step-ran", "WANDB": "1", "WANDB_API_KEY": SENTINEL,
           "WANDB_MODE": "offline"}  # the job's WandB run is written into the run dir, which is searched for the key too
    proc = _cli(env, "interactive_benchmarking.sh", "TRAIN_ITERS=3", "--lr", "0.5")
    assert "step-ran" in proc.stdout, proc.stderr
    run_dirs = list((tmp_path / PROXY).iterdir())
    assert len(run_dirs) == 1
    run_dir = run_dirs[0]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["model"] == PROXY and manifest["knobs"]["TRAIN_ITERS"] == 3
    assert len(manifest["suite_commit"]) >= 7 and "python" in manifest["versions_at_submit"]
    resolved = json.loads((run_dir / "resolved.json").read_text())
    assert resolved["megatron_args"][-2:] == ["--lr", "0.5"]
    assert "step-ran" in (run_dir / "logs" / "train.log").read_text()
    assert not (run_dir / "INCOMPLETE").exists()
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert SENTINEL not in path.read_text(errors="replace"), path
    assert SENTINEL not in proc.stdout + proc.stderr
    assert str(REPO) not in str(run_dir) or "runs" in str(run_dir)


def test_no_gpu_message_comes_before_layout_errors(clean_env, tmp_path):
    """EP=4 cannot tile the one GPU assumed without a GPU: the user must hear about the GPU first."""
    if subprocess.run(["bash", "-c", "command -v nvidia-smi"], capture_output=True).returncode == 0:
        pytest.skip("this machine has nvidia-smi")
    proc = _cli({**clean_env, "MODEL": PROXY, "OUTPUT_ROOT": str(tmp_path)}, "interactive_benchmarking.sh", "EP=4")
    assert proc.returncode != 0 and "no NVIDIA GPU" in proc.stderr and "EP=4" not in proc.stderr.split("fix:")[0]
