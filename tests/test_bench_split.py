"""`python -m bench split`: an iteration's time per micro-batch and beyond them, from two records.

The records are the H200 side-by-sides under bench/results/ (real runs); the synthetic cases
rewrite one of them with known times so the solution is checked against what was put in.
"""
from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchlib.core.errors import BenchError

from bench.records import RESULTS_DIR
from bench.split import IterationSplit, load_record, split_records, split_table

ROOT = Path(__file__).resolve().parent.parent
GBS4 = "h200x1_qwen3-30b-a3b-proxy_vs_torchtitan_gbs4"
GBS32 = "h200x1_qwen3-30b-a3b-proxy_vs_torchtitan_gbs32"
# issue 17's target for the 3.1 B-parameter proxy on one H200 with the distributed optimizer
ITERATION_OVERHEAD_TARGET_S = 0.030


def with_times(rec: dict, gbs: int, per_micro_batch_s: float, per_iteration_s: float,
               peer_per_micro_batch_s: float, peer_per_iteration_s: float) -> dict:
    """`rec` at GBS `gbs` with the suite's and the compiled peer's iteration made of the given parts."""
    out = copy.deepcopy(rec)
    out["knobs"]["GBS"] = gbs
    n = gbs // int(rec["knobs"]["MBS"])
    out["steady_iteration_time_s"] = n * per_micro_batch_s + per_iteration_s
    peer = out["peer"]
    peer["global_batch"] = gbs
    step_s = n * peer_per_micro_batch_s + peer_per_iteration_s
    peer["variants"] = {"compiled": {"tokens_per_s_per_gpu": gbs * int(rec["knobs"]["SEQ_LEN"]) / step_s}}
    return out


def test_split_recovers_the_parts_the_times_were_made_of() -> None:
    rec = load_record(GBS4, RESULTS_DIR)
    a = with_times(rec, 8, 0.120, 0.021, 0.180, 0.033)
    b = with_times(rec, 48, 0.120, 0.021, 0.180, 0.033)
    suite, peer = split_records(a, b)
    assert suite.side == "suite" and suite.micro_batches == (2, 12)
    assert suite.per_micro_batch_s == pytest.approx(0.120) and suite.per_iteration_s == pytest.approx(0.021)
    assert peer.side == "torchtitan compiled" and peer.micro_batches == (2, 12)
    assert peer.per_micro_batch_s == pytest.approx(0.180) and peer.per_iteration_s == pytest.approx(0.033)


def test_recorded_h200_overhead_meets_the_target_and_the_micro_batches_beat_the_peer() -> None:
    splits = {s.side: s for s in split_records(load_record(GBS4, RESULTS_DIR), load_record(GBS32, RESULTS_DIR))}
    assert set(splits) == {"suite", "torchtitan eager", "torchtitan compiled"}
    suite, compiled = splits["suite"], splits["torchtitan compiled"]
    assert suite.micro_batches == (1, 8)
    assert 0 < suite.per_iteration_s <= ITERATION_OVERHEAD_TARGET_S
    assert suite.per_micro_batch_s < compiled.per_micro_batch_s
    for s in splits.values():  # each side's two measured iterations are reproduced by its parts
        for n, t in zip(s.micro_batches, s.iteration_s):
            assert n * s.per_micro_batch_s + s.per_iteration_s == pytest.approx(t)


def test_records_of_different_shapes_or_one_accumulation_are_refused() -> None:
    rec = load_record(GBS4, RESULTS_DIR)
    other = copy.deepcopy(rec)
    other["knobs"]["MBS"] = 8
    other["knobs"]["NUM_LAYERS"] = 8
    with pytest.raises(BenchError, match="differ in NUM_LAYERS, MBS"):
        split_records(rec, other)
    with pytest.raises(BenchError, match="both records accumulate 1 micro-batch"):
        split_records(rec, copy.deepcopy(rec))
    with pytest.raises(BenchError, match="no record 'nonesuch'"):
        load_record("nonesuch", RESULTS_DIR)


def test_split_table_has_a_row_per_side() -> None:
    table = split_table([IterationSplit("suite", (1, 8), (0.161, 1.1025), 0.1345, 0.0264)])
    assert table.splitlines()[2] == "| suite | 1 / 8 | 161.0 / 1102.5 | 134.5 | 26.4 |"


def test_cli_prints_the_split_and_refuses_mismatched_records(tmp_path: Path) -> None:
    ok = subprocess.run([sys.executable, "-m", "bench", "split", GBS4, GBS32], cwd=ROOT,
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    rows = [line for line in ok.stdout.splitlines() if line.startswith("| suite")]
    assert len(rows) == 1
    rec = load_record(GBS4, RESULTS_DIR)
    rec["knobs"]["SEQ_LEN"] = 8192
    path = tmp_path / "other.json"
    path.write_text(json.dumps(rec))
    bad = subprocess.run([sys.executable, "-m", "bench", "split", GBS4, str(path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "differ in SEQ_LEN" in bad.stderr and "fix:" in bad.stderr
