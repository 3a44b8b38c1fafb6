"""Routing as a controlled variable, the expert load Megatron logs, and the steady window's reasons,
read from real H200 logs (the forced-routing log is a real log whose argument dump says forced)."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from benchlib.metrics.collect import result_for

LOGS = Path(__file__).parent / "fixtures" / "logs"
QWEN = LOGS / "h200x1_qwen3-30b-a3b-proxy_native_mbs4.log"  # aux_loss, 15 iterations
DEEPSEEK = LOGS / "h200x1_deepseek-v2-lite-proxy_fastops_mbs2.log"  # seq_aux_loss
SHORT = LOGS / "h200x1_mixtral-8x2b-8l_local_mbs2.log"  # 10 iterations
LONG = LOGS / "h200x1_qwen3-30b-a3b-proxy_native_mbs2.log"  # 50 iterations


def _logged(path: Path, key: str) -> dict[int, float]:
    out = {}
    for m in re.finditer(r"iteration\s+(\d+)/.*?\| " + re.escape(key) + r": ([\d.E+-]+)", path.read_text()):
        out[int(m.group(1))] = float(m.group(2))
    return out


def test_learned_routing_and_its_load_balancing_loss():
    result, _ = result_for(str(QWEN), gpu="H200")
    assert result.routing == "learned"
    logged = _logged(QWEN, "load_balancing_loss")
    load = result.expert_load
    assert load["metric"] == "load_balancing_loss"
    assert (load["first_iteration"], load["first"]) == (1, logged[1])
    assert (load["last_iteration"], load["last"]) == (15, logged[15])
    window = result.steady_window["iterations"]
    assert load["window_first"] == logged[window[0]] and load["window_last"] == logged[window[-1]]
    assert [s["load_balancing_loss"] for s in result.series] == [logged[s["iteration"]] for s in result.series]


def test_seq_aux_loss_runs_report_the_loss_they_really_log():
    """DeepSeek's seq_aux_loss also logs a plain load_balancing_loss that stays 0."""
    result, _ = result_for(str(DEEPSEEK), gpu="H200")
    assert set(_logged(DEEPSEEK, "load_balancing_loss").values()) == {0.0}
    assert result.expert_load["metric"] == "seq_load_balancing_loss"
    assert result.expert_load["first"] == _logged(DEEPSEEK, "seq_load_balancing_loss")[1]


def test_forced_routing_is_read_from_the_argument_dump(tmp_path):
    text = QWEN.read_text()
    assert re.search(r"moe_router_force_load_balancing \.+ False", text)
    forced = tmp_path / "forced.log"
    forced.write_text(re.sub(r"(moe_router_force_load_balancing \.+ )False", r"\1True", text))
    assert result_for(str(forced), gpu="H200")[0].routing == "forced"


def test_dense_model_has_no_routing():
    from benchlib.metrics.logparse import parse_log
    from benchlib.metrics.result import summarize

    parsed = parse_log([QWEN])
    parsed.config.pop("num_experts")
    assert summarize(parsed, "H200").routing is None


@pytest.mark.parametrize("log, enough", [(SHORT, False), (LONG, True)])
def test_steady_window_says_why_and_whether_it_is_enough(log, enough):
    result, _ = result_for(str(log), gpu="H200")
    window = result.steady_window
    assert window["enough"] is enough
    assert "drop the first line" in window["why"] and "ROUTING=forced" in window["why"]
    short_warning = [w for w in result.warnings if "fewer than 10" in w]
    assert bool(short_warning) is (not enough)


def test_run_dir_result_carries_the_suite_commit(tmp_path):
    (tmp_path / "logs").mkdir()
    shutil.copy(LONG, tmp_path / "logs" / "train.log")
    (tmp_path / "manifest.json").write_text(json.dumps({"suite_commit": "abc123", "versions_at_submit": {"torch": "2.11.0"}}))
    result, _ = result_for(str(tmp_path), gpu="H200")
    assert result.source["suite_commit"] == "abc123" and result.source["versions"] == {"torch": "2.11.0"}
