"""Result JSON round trip, `benchlib compare` (table, CSV, PNG) and `benchlib push` (real wandb, offline).

The WandB test reads the offline run back from its `.wandb` file. wandb 0.31 ships no Python
reader for that file (the old `wandb.sdk.internal.datastore` is gone; its Go core reads it), so
the test decodes the file's framing (LevelDB-log style blocks, CRC-checked) and parses each record
with wandb's own protobuf classes (`wandb.proto.wandb_internal_pb2.Record`).
"""
from __future__ import annotations

import csv
import json
import os
import struct
import zlib
from pathlib import Path

import pytest

from benchlib.cli import main
from benchlib.metrics import load_result, parse_log, summarize, write_result
from benchlib.metrics.compare import compare_results

FIX = Path(__file__).resolve().parent / "fixtures" / "metrics"


def _result(name: str, gpu: str = "H200", **kw):
    return summarize(parse_log([FIX / name]), gpu, **kw)


def test_result_json_round_trip_and_atomic_write(tmp_path):
    r = _result("completed_srun.log", model="Small-MoE")
    path = write_result(r, tmp_path / "result.json")
    assert not [p for p in tmp_path.iterdir() if p.name != "result.json"]  # no temp file left behind
    data = json.loads(path.read_text())
    for key in ("model", "gpu_type", "num_gpus", "precision", "layout", "steady_window", "iteration_time_ms",
                "tokens_per_s_per_gpu", "tflops_per_gpu_reported", "tflops_per_gpu_recomputed", "mfu", "peak",
                "peak_memory_mb", "loss", "status", "status_evidence", "schema_version"):
        assert key in data, key
    back = load_result(path)
    assert back.to_json() == r.to_json()


def test_nan_values_stay_valid_json(tmp_path):
    r = _result("nan.log")
    path = write_result(r, tmp_path / "r.json")
    text = path.read_text()
    assert "NaN" not in text  # json.loads would accept it, other readers not
    assert json.loads(text)["loss"]["last"] == "nan"


def test_compare_table_csv_and_png(tmp_path, capsys):
    a = tmp_path / "a.json"
    write_result(_result("completed_srun.log"), a)
    rc = main(["compare", str(a), str(FIX / "restart.log"), "--gpu", "H200", "--out", str(tmp_path / "cmp")])
    assert rc == 0
    text = capsys.readouterr().out
    # restart.log's steady median: kept lines 661, 659, 663, 660, 640, 641, 642, 639 -> (641 + 642) / 2... sorted:
    # 639 640 641 642 659 660 661 663 -> median (642 + 659) / 2 = 650.5; vs 660.25: -1.48%
    assert "650.5 (-1.5%)" in text
    assert "iter time median (ms)" in text and "TFLOP/s/GPU benchlib" in text
    rows = list(csv.reader((tmp_path / "cmp.csv").open()))
    med = next(r for r in rows if r[0] == "iter time median (ms)")
    assert float(med[1]) == pytest.approx(660.25) and float(med[2]) == pytest.approx(650.5)
    assert float(med[3]) == pytest.approx((650.5 / 660.25 - 1) * 100, abs=1e-3)
    png = (tmp_path / "cmp.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_compare_lists_config_keys_that_differ(tmp_path):
    a = _result("completed_srun.log")
    b = _result("completed_srun.log")
    b.config = {**b.config, "moe_router_topk": 8, "micro_batch_size": 2}
    text, csv_path, png = compare_results([a, b], ["a", "b"], tmp_path / "c", plot=False)
    assert png is None
    assert "config: micro_batch_size" in text and "config: moe_router_topk" in text
    assert "config: num_layers" not in text  # equal keys are not listed


def test_compare_accepts_a_run_directory(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "logs").mkdir(parents=True)
    (run / "logs" / "train.log").write_text((FIX / "completed_srun.log").read_text())
    assert main(["compare", str(run), str(FIX / "oom.log"), "--gpu", "H200", "--out", str(tmp_path / "x"), "--no-plot"]) == 0
    text = capsys.readouterr().out
    assert "oom" in text and "completed" in text


# --- WandB -----------------------------------------------------------------------------------

def read_wandb_records(path: Path):
    """Records of a .wandb file, parsed with wandb's protobuf classes."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B" and struct.unpack("<H", data[4:6])[0] == 0xBEE1
    pos, block, pending, payloads = 7, 32768, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer padding
            pos += left
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk = data[pos + 7:pos + 7 + length]
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF == crc, "corrupt record"
        pos += 7 + length
        if kind == 1:
            payloads.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            payloads.append(pending + chunk)
    records = []
    for p in payloads:
        rec = pb.Record()
        rec.ParseFromString(p)
        records.append(rec)
    return records


def _items(items) -> dict:
    return {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in items}


def test_push_writes_an_offline_run_with_the_result_numbers(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    result_path = tmp_path / "result.json"
    result = _result("restart.log", model="Small-MoE")
    write_result(result, result_path)
    assert main(["push", str(result_path), "--dir", str(tmp_path / "wb"), "--project", "bench-test"]) == 0
    out = capsys.readouterr().out
    assert "offline WandB run" in out and "wandb sync" in out
    files = list((tmp_path / "wb" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1
    # wandb's own `sync` recognises the folder as a run it would upload
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "WANDB_API_KEY"}
    dry = subprocess.run([sys.executable, "-m", "wandb", "sync", "--dry-run", str(files[0].parent)],
                         capture_output=True, text=True, env=env, timeout=120)
    assert dry.returncode == 0 and files[0].name in dry.stdout + dry.stderr, dry.stdout + dry.stderr
    records = read_wandb_records(files[0])
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert run.run_group == "Small-MoE"
    assert set(run.tags) >= {result.layout_name, "bf16", "H200"}
    config = _items(run.config.update)
    assert config["model"] == "Small-MoE" and config["megatron"]["num_experts"] == 64
    summary: dict = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            summary.update(_items(r.summary.update))
    data = json.loads(result_path.read_text())
    assert summary["steady/iteration_time_ms_median"] == data["iteration_time_ms"]["median"]
    assert summary["steady/tokens_per_s_per_gpu"] == pytest.approx(data["tokens_per_s_per_gpu"], rel=1e-12)
    assert summary["steady/tflops_per_gpu_megatron"] == data["tflops_per_gpu_reported"]
    assert summary["steady/tflops_per_gpu_benchlib"] == pytest.approx(data["tflops_per_gpu_recomputed"], rel=1e-12)
    assert summary["steady/mfu"] == pytest.approx(data["mfu"], rel=1e-12)
    assert summary["status"] == "completed" and summary["loss/last"] == data["loss"]["last"]
    history = [_items(r.history.item) for r in records if r.WhichOneof("record_type") == "history"]
    assert [h["iteration"] for h in history] == [s["iteration"] for s in data["series"]]  # restart repeats 51..60
    assert [h["train/iteration_time_ms"] for h in history] == [s["elapsed_ms"] for s in data["series"]]


def test_push_never_writes_or_prints_the_key(tmp_path, monkeypatch, capsys):
    """With a key set but --offline, the key's value appears in no file and no output."""
    secret = "wandb-test-key-0123456789abcdef0123456789abcdef"
    monkeypatch.setenv("WANDB_API_KEY", secret)
    monkeypatch.setenv("WANDB_SILENT", "true")
    res = tmp_path / "r.json"
    write_result(_result("completed_srun.log"), res)
    assert main(["push", str(res), "--offline", "--dir", str(tmp_path / "wb")]) == 0
    captured = capsys.readouterr()
    assert secret not in captured.out + captured.err
    for root, _, names in os.walk(tmp_path / "wb"):
        for n in names:
            assert secret.encode() not in (Path(root) / n).read_bytes(), n


def test_a_loaded_result_with_nan_loss_formats_and_compares(tmp_path):
    from benchlib.metrics import format_summary

    path = write_result(_result("nan.log"), tmp_path / "r.json")
    back = load_result(path)
    assert back.loss["last"] != back.loss["last"]  # NaN again, not the string
    assert "nan (it 40)" in format_summary(back)
    text, _, _ = compare_results([back, _result("completed_srun.log")], ["a", "b"], tmp_path / "c", plot=True)
    assert "loss last" in text
