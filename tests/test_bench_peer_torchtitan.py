"""bench/peers/torchtitan.py: reading torchtitan's logs and driving run_peer.sh.

The log is CONSTRUCTED here from the step-line format of torchtitan 0.2.2 (the peer README's
figures and torchtitan's metrics line: `step: N  loss: ...  memory: XGiB(P%)  tps: N,NNN ...`),
with colour codes as torchtitan prints them; no real torchtitan log is stored yet. run_peer.sh
needs a GPU and the peer's wheels, so the run test uses a stand-in script that writes such logs
where run_peer.sh would ($OUT/peer_A.log, peer_B.log) and echoes the environment it was given.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def peer():
    spec = importlib.util.spec_from_file_location("peer_torchtitan", ROOT / "bench" / "peers" / "torchtitan.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def step_line(step: int, loss: float, mem: float, tps: int, color: bool = True) -> str:
    c, r = ("\x1b[31m", "\x1b[39m") if color else ("", "")
    return (f"[rank0]:[titan] 2026-12-01 12:00:{step:02d},000 - root - INFO - {c}step: {step:2}  "
            f"loss: {loss:7.4f}  grad_norm: {1.5:7.4f}  memory: {mem:5.2f}GiB({mem / 139.8 * 100:.2f}%)  "
            f"tps: {tps:,}  tflops: {tps * 4.04e9 / 1e12:,.2f}  mfu: {tps * 4.04e9 / 9.894e14 * 100:.2f}%{r}")


def captured_log(compiled: bool, tps_by_step: dict[int, int]) -> str:
    head = ["[rank0]:[titan] 2026-12-01 12:00:00,000 - root - INFO - Starting job: peer"]
    if compiled:
        head.append("[rank0]:[titan] 2026-12-01 12:00:00,100 - root - INFO - Compiling each TransformerBlock with torch.compile")
    lines = [step_line(s, 12.0 - 0.1 * s, 61.3 if compiled else 88.8, t) for s, t in sorted(tps_by_step.items())]
    return "\n".join(head + lines + ["[rank0]:[titan] 2026-12-01 12:01:00,000 - root - INFO - Training completed"]) + "\n"


def test_parse_log_means_tokens_per_second_after_warmup(peer):
    tps = {1: 3_000, 2: 40_000, 3: 70_000, 4: 76_000, 5: 77_000, 6: 77_500, 7: 78_000, 8: 78_100}
    out = peer.parse_log(captured_log(True, tps))
    assert out["steps"] == 8 and out["measured_steps"] == 3
    assert out["tokens_per_s_per_gpu"] == pytest.approx((77_500 + 78_000 + 78_100) / 3)
    assert out["max_reserved_gib"] == 61.3 and out["last_step"] == 8
    assert out["last_loss"] == pytest.approx(12.0 - 0.8) and out["compiled"] is True
    eager = peer.parse_log(captured_log(False, {6: 60_000, 7: 60_124}))
    assert eager["compiled"] is False and eager["tokens_per_s_per_gpu"] == pytest.approx(60_062)
    nothing = peer.parse_log("Traceback (most recent call last):\nRuntimeError: CUDA out of memory\n")
    assert nothing["steps"] == 0 and nothing["tokens_per_s_per_gpu"] is None and nothing["max_reserved_gib"] is None


def test_run_drives_run_peer_sh_and_reads_both_variants(peer, tmp_path):
    stand_in = tmp_path / "peerdir"
    stand_in.mkdir()
    eager = captured_log(False, {6: 66_000, 7: 66_166})
    compiled = captured_log(True, {6: 86_800, 7: 86_952})
    (tmp_path / "A.txt").write_text(eager)
    (tmp_path / "B.txt").write_text(compiled)
    (stand_in / "run_peer.sh").write_text(
        "set -eu\n"
        f"cp {tmp_path}/A.txt \"$OUT/peer_A.log\"\n"
        f"cp {tmp_path}/B.txt \"$OUT/peer_B.log\"\n"
        "echo \"extra=$PEER_EXTRA steps=$PEER_STEPS\"\n"
    )
    out = peer.run(tmp_path / "out", gbs=32, steps=12, peer_dir=stand_in)
    assert out["returncode"] == 0 and out["global_batch"] == 32
    assert "extra=--training.global_batch_size 32 steps=12" in (tmp_path / "out" / "run_peer.out").read_text()
    assert out["variants"]["eager"]["tokens_per_s_per_gpu"] == pytest.approx(66_083)
    assert out["variants"]["compiled"]["tokens_per_s_per_gpu"] == pytest.approx(86_876)
    assert out["variants"]["compiled"]["compiled"] and not out["variants"]["eager"]["compiled"]
    json.dumps(out)  # a record the bench tool can write as it is


def test_run_reports_a_variant_that_wrote_no_log(peer, tmp_path):
    stand_in = tmp_path / "peerdir"
    stand_in.mkdir()
    (stand_in / "run_peer.sh").write_text("echo 'wheel install failed'; exit 1\n")
    out = peer.run(tmp_path / "out", peer_dir=stand_in)
    assert out["returncode"] == 1
    assert "was not written" in out["variants"]["eager"]["error"]
    assert "wheel install failed" in (tmp_path / "out" / "run_peer.out").read_text()


def test_a_peer_scenario_records_the_suite_as_a_ratio_of_each_variant(tmp_path, monkeypatch):
    """bench.runner.run_peer: torchtitan runs after the suite's run at the scenario's batch, and the
    record holds tokens/s/GPU ratios against both variants, the suite's last loss and whether it
    compares with torchtitan's (the same data on both sides)."""
    from bench.peers import torchtitan
    from bench.runner import run_peer
    from bench.scenarios import get_scenario

    stand_in = tmp_path / "peerdir"
    stand_in.mkdir()
    (tmp_path / "A.txt").write_text(captured_log(False, {6: 60_000, 7: 60_124}))
    (tmp_path / "B.txt").write_text(captured_log(True, {6: 77_800, 7: 77_806}))
    (stand_in / "run_peer.sh").write_text(
        f"cp {tmp_path}/A.txt \"$OUT/peer_A.log\"; cp {tmp_path}/B.txt \"$OUT/peer_B.log\"; echo \"$PEER_EXTRA\"\n")
    monkeypatch.setattr(torchtitan, "PEER_DIR", stand_in)
    scenario = get_scenario("qwen3-30b-a3b-proxy_vs_torchtitan_gbs4")
    peer = run_peer(scenario, {"tokens_per_s_per_gpu": 97_254.0, "losses": [12.1, None, 9.5]}, timeout_s=60)
    assert peer["global_batch"] == 4 and peer["extra_args"] == "--training.global_batch_size 4"
    assert peer["suite_ratio_vs_compiled"] == pytest.approx(97_254 / 77_803)
    assert peer["suite_ratio_vs_eager"] == pytest.approx(97_254 / 60_062)
    assert peer["suite_last_loss"] == 9.5
    # the scenario trains on torchtitan's data (DATA=random): the two last losses compare
    assert scenario.knobs["DATA"] == "random"
    assert peer["suite_data"] == "random" and peer["losses_comparable"] is True
    assert peer["losses_note"].startswith("same data distribution")
    # the run's own knobs say what it trained on: a mock run (e.g. `bench run NAME DATA=mock`) does not compare
    mock = run_peer(scenario, {"tokens_per_s_per_gpu": 97_254.0, "losses": [12.1, 0.2], "knobs": {"DATA": "mock"}},
                    timeout_s=60)
    assert mock["suite_data"] == "mock" and mock["losses_comparable"] is False
    assert mock["losses_note"].startswith("not comparable: the suite trained on DATA=mock (Megatron's mock documents")
    assert "run with DATA=random" in mock["losses_note"]


def test_run_with_other_layer_counts_uses_the_flavor_module(peer, tmp_path):
    """NUM_LAYERS=8: torchtitan is told to import bench/peers/peer_flavors.py (on its PYTHONPATH) and
    to build its 8-layer flavor; a count with no flavor is refused before anything runs."""
    stand_in = tmp_path / "peerdir"
    stand_in.mkdir()
    (tmp_path / "B.txt").write_text(captured_log(True, {6: 50_000, 7: 50_000}))
    (stand_in / "run_peer.sh").write_text(
        "set -eu\n"
        f"cp {tmp_path}/B.txt \"$OUT/peer_B.log\"\n"
        "echo \"extra=$PEER_EXTRA\"\necho \"pythonpath=$PYTHONPATH\"\n"
    )
    out = peer.run(tmp_path / "out", gbs=32, steps=12, layers=8, peer_dir=stand_in)
    said = (tmp_path / "out" / "run_peer.out").read_text()
    assert "--experimental.custom_import peer_flavors --model.flavor peer_30b_a3b_8l" in said
    assert f"pythonpath={ROOT / 'bench' / 'peers'}" in said
    assert out["layers"] == 8 and out["variants"]["compiled"]["tokens_per_s_per_gpu"] == pytest.approx(50_000)
    with pytest.raises(ValueError, match="no torchtitan flavor with 5 layers"):
        peer.run(tmp_path / "out5", layers=5, peer_dir=stand_in)
    # the module's list is the flavor module's list (it imports torchtitan, so it is read, not imported)
    text = (ROOT / "bench" / "peers" / "peer_flavors.py").read_text()
    assert f"LAYER_COUNTS = {peer.LAYER_COUNTS}" in text


def test_one_variant_runs_as_run_peer_sh_runs_it(peer, tmp_path):
    """variants=('compiled',): no run_peer.sh; the harness's wheels installed into the output folder,
    its module and the datasets shim on PYTHONPATH, torchtitan.train with peer.toml and the compile
    flags, the log where run_peer.sh puts it. `python` here is a stand-in that records its arguments."""
    peer_dir = tmp_path / "harness"
    (peer_dir / "whl").mkdir(parents=True)
    (peer_dir / "whl" / "torchtitan-0.2.2-py3-none-any.whl").write_text("")
    (tmp_path / "B.txt").write_text(captured_log(True, {6: 77_000, 7: 77_000}))
    fake = tmp_path / "python"
    fake.write_text(
        "#!/bin/bash\n"
        f"echo \"$@ | PYTHONPATH=$PYTHONPATH\" >> {tmp_path}/calls\n"
        "case \"$*\" in *'import datasets'*) exit 1;; *torch.distributed.run*) "
        f"cat {tmp_path}/B.txt;; esac\n"
    )
    fake.chmod(0o755)
    out = peer.run(tmp_path / "out", gbs=32, steps=12, variants=("compiled",), peer_dir=peer_dir, python=str(fake))
    calls = (tmp_path / "calls").read_text().splitlines()
    assert "-m pip install" in calls[0] and str(peer_dir / "whl" / "torchtitan-0.2.2-py3-none-any.whl") in calls[0]
    train = next(c for c in calls if "torch.distributed.run" in c)
    assert f"--job.config_file {peer_dir / 'tt022' / 'peer.toml'}" in train
    assert "--training.steps 12" in train and "--compile.enable --compile.components model,loss" in train
    assert "--training.global_batch_size 32" in train
    assert str(peer_dir / "shim") in train.split("PYTHONPATH=")[1]  # datasets is missing: the import shim
    assert list(out["variants"]) == ["compiled"] and out["returncode"] == 0
    assert out["variants"]["compiled"]["tokens_per_s_per_gpu"] == pytest.approx(77_000)
    assert not (tmp_path / "out" / "peer_A.log").exists()
    with pytest.raises(ValueError, match="choose from"):
        peer.run(tmp_path / "o2", variants=("fast",), peer_dir=peer_dir)
