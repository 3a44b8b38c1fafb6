"""bench/parse_speed.py runs end to end on a small log and records what it measured.

The speed itself is not asserted here (a shared 2-core CI machine is no place for a timing
target); bench/results/parse_speed.json holds the measured figure.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_parse_speed_script_small(tmp_path):
    spec = importlib.util.spec_from_file_location("parse_speed", ROOT / "bench" / "parse_speed.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "speed.json"
    mod.main(["--size-mb", "4", "--iter-only-mb", "0.5", "--repeat", "1", "--out", str(out)])
    data = json.loads(out.read_text())
    big = data["multi_rank_log"]
    assert big["bytes"] >= 4 * 1024 * 1024 and big["iterations"] > 10 and big["mb_per_s"] > 0
    assert data["command"].endswith("--out " + str(out)) and data["machine"]["cores_used"] == 1
    assert not list(Path(tmp_path).glob("parse-speed-*"))  # the temporary log is gone
