"""The regression gate on real H200 runs (tests/fixtures/gate/, one GPU sitting on 2026-12-01):

- `h200x1_qwen3-proxy_repeats5_train.log`: `python -m bench run qwen3-30b-a3b-proxy_repeats5`, the
  Qwen3-30B-A3B proxy at its H200 defaults, REPEATS=5, TRAIN_ITERS=30 (its logs/train.log: the five
  launches one after another, each announced by the script's `launch N of 5` line);
- `h200x1_qwen3-proxy_rerun_launch.log`: right after, the same run once more with BASELINE= set;
- `h200x1_qwen3-proxy_fastops0_launch.log`: the same with FAST_OPS=0 (Megatron's own loss,
  permutation and RoPE: a planted slowdown).
The repeat logs of the run directory are cut from its train.log at the script's own markers.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from benchlib.core.rundir import LOGS_DIR, REPEAT_LOG, RESOLVED_FILE, TRAIN_LOG
from benchlib.metrics.collect import result_for
from benchlib.metrics.gate import baseline_from_result, gate, load_baseline, passed

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "gate"
REPEATS_LOG = FIXTURES / "h200x1_qwen3-proxy_repeats5_train.log"
RERUN = FIXTURES / "h200x1_qwen3-proxy_rerun_launch.log"
FAST_OPS_OFF = FIXTURES / "h200x1_qwen3-proxy_fastops0_launch.log"
SHIPPED_BASELINE = Path(__file__).resolve().parents[1] / "bench" / "baselines" / "h200x1_qwen3-30b-a3b-proxy_iters30.json"
# what these runs' resolved.json said of them (the part the result reads): the model is not in a log
RESOLVED = {"model": "Qwen3-30B-A3B-Proxy", "world_size": 1, "cluster_config": {"GPU_TYPE": "H200"}}
MARKER = re.compile(r"^\[bench [^\]]*\] launch (\d+) of 5 \(REPEATS\)$", re.M)


def run_dir_of(root: Path, log: Path) -> Path:
    (root / LOGS_DIR).mkdir(parents=True)
    (root / LOGS_DIR / TRAIN_LOG).write_text(log.read_text())
    (root / RESOLVED_FILE).write_text(json.dumps(RESOLVED))
    return root


def result_of(root: Path, log: Path):
    return result_for(str(run_dir_of(root, log)), gpu="H200")[0]


def repeats_run_dir(root: Path) -> Path:
    run_dir_of(root, REPEATS_LOG)
    logs = root / LOGS_DIR
    text = REPEATS_LOG.read_text()
    marks = list(MARKER.finditer(text))
    assert [int(m.group(1)) for m in marks] == [1, 2, 3, 4, 5]
    for m, nxt in zip(marks, [*marks[1:], None]):
        body = text[m.end() + 1:nxt.start() if nxt else len(text)]
        (logs / REPEAT_LOG.replace("{n}", m.group(1))).write_text(body)
    return root


def verdicts_by_check(verdicts):
    return {v.check.split(" (")[0]: v.ok for v in verdicts}


def test_a_rerun_passes_and_a_planted_slowdown_fails_against_a_baseline_with_repeats(tmp_path):
    result, run_dir = result_for(str(repeats_run_dir(tmp_path / "baseline")), gpu="H200")
    assert result.status == "completed" and result.repeats["n"] == 5
    baseline = baseline_from_result(result, run_dir, source="bench run qwen3-30b-a3b-proxy_repeats5")
    envelope = baseline["loss_envelope"]
    assert [row[0] for row in envelope] == list(range(1, 31))
    # the five repeats of one launch (same seed) already spread this much where the loss falls fast
    assert max((hi - lo) / lo for _, lo, hi in envelope) > 0.05

    rerun = result_of(tmp_path / "rerun", RERUN)
    verdicts = gate(rerun, baseline)
    assert passed(verdicts), verdicts
    # judged against the last repeat's curve alone, the same rerun fails the loss check only:
    # the envelope is what lets a faithful rerun through
    alone = verdicts_by_check(gate(rerun, {**baseline, "loss_envelope": None}))
    assert alone["loss max rel. diff"] is False
    assert alone["step time"] and alone["tokens/s/GPU"] and alone["peak memory"]

    slowed = verdicts_by_check(gate(result_of(tmp_path / "slowed", FAST_OPS_OFF), baseline))
    assert slowed["step time"] is False and slowed["tokens/s/GPU"] is False


def test_the_shipped_baseline_passes_the_rerun_and_fails_fast_ops_off(tmp_path):
    """bench/baselines/h200x1_qwen3-30b-a3b-proxy_iters30.json, as `BASELINE=` on a launch reads it."""
    baseline = load_baseline(SHIPPED_BASELINE)
    assert baseline["key"]["model"] == "Qwen3-30B-A3B-Proxy" and baseline["loss_envelope"]
    assert passed(gate(result_of(tmp_path / "rerun", RERUN), baseline))
    slowed = gate(result_of(tmp_path / "slowed", FAST_OPS_OFF), baseline)
    assert not passed(slowed) and verdicts_by_check(slowed)["step time"] is False
