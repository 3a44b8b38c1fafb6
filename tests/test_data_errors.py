"""`benchlib data prepare` refusals (clear BenchErrors) and atomic output: a failed or interrupted
run leaves nothing half-written at the output prefix, and an old dataset intact.

Real tokenizers / transformers / Megatron-Core on CPU; the interrupt is a real SIGTERM sent to a
real `data prepare` process reading from a pipe the test holds open.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_data_support import data_parser, make_documents, prepare_error, run_prepare, write_jsonl

pytestmark = pytest.mark.megatron

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def small_tokenizer(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tok")
    corpus = write_jsonl(root / "c.jsonl", make_documents(60, seed=11))
    run_prepare("--input", str(corpus), "--vocab-size", "300", "--output-prefix", str(root / "c"))
    return root / "c-tokenizer"


def test_missing_input(tmp_path):
    err = prepare_error("--input", str(tmp_path / "nope.jsonl"), "--output-prefix", str(tmp_path / "o"))
    assert "nope.jsonl does not exist" in err.message and err.hint
    assert os.listdir(tmp_path) == []


def test_input_is_a_folder(tmp_path):
    err = prepare_error("--input", str(tmp_path), "--output-prefix", str(tmp_path / "o"))
    assert "is a folder" in err.message


@pytest.mark.parametrize(
    "name,content",
    [
        ("blank.jsonl", "\n\n   \n"),
        ("empty-texts.jsonl", '{"text": ""}\n{"text": ""}\n'),
        ("zero.txt", ""),
        ("blank.txt", "\n   \n\t\n"),
    ],
)
def test_empty_corpus(tmp_path, name, content):
    corpus = tmp_path / name
    corpus.write_text(content)
    err = prepare_error("--input", str(corpus), "--vocab-size", "300", "--output-prefix", str(tmp_path / "o"))
    assert "no non-empty document" in err.message and str(corpus) in err.message
    assert sorted(os.listdir(tmp_path)) == [name]  # no tokenizer folder, no .bin/.idx, no temp files


def test_empty_corpus_with_a_given_tokenizer(tmp_path, small_tokenizer):
    corpus = tmp_path / "e.jsonl"
    corpus.write_text('{"text": ""}\n')
    err = prepare_error("--input", str(corpus), "--tokenizer", str(small_tokenizer), "--output-prefix", str(tmp_path / "o"))
    assert "no non-empty document" in err.message
    assert sorted(os.listdir(tmp_path)) == ["e.jsonl"]


def test_bad_json_line_is_named_by_number(tmp_path):
    lines = [json.dumps({"text": d}) for d in make_documents(5, seed=12)]
    lines.insert(3, '{"text": "unterminated')
    corpus = tmp_path / "bad.jsonl"
    corpus.write_text("\n".join(lines) + "\n")
    err = prepare_error("--input", str(corpus), "--vocab-size", "300", "--output-prefix", str(tmp_path / "o"))
    assert f"{corpus}:4: bad JSON line" in err.message
    assert "one JSON object" in err.hint
    assert sorted(os.listdir(tmp_path)) == ["bad.jsonl"]


def test_json_line_that_is_not_an_object(tmp_path):
    corpus = tmp_path / "list.jsonl"
    corpus.write_text('{"text": "fine"}\n["a", "b"]\n')
    err = prepare_error("--input", str(corpus), "--vocab-size", "300", "--output-prefix", str(tmp_path / "o"))
    assert f"{corpus}:2: expected a JSON object, got list" in err.message


def test_text_key_missing(tmp_path):
    corpus = tmp_path / "k.jsonl"
    corpus.write_text('{"text": "one"}\n\n{"body": "two", "id": 2}\n')
    err = prepare_error("--input", str(corpus), "--vocab-size", "300", "--output-prefix", str(tmp_path / "o"))
    assert f"{corpus}:3: no key 'text'" in err.message and "body, id" in err.message
    assert "--text-key" in err.hint


def test_text_value_not_a_string(tmp_path):
    corpus = tmp_path / "n.jsonl"
    corpus.write_text('{"text": 42}\n')
    err = prepare_error("--input", str(corpus), "--vocab-size", "300", "--output-prefix", str(tmp_path / "o"))
    assert f"{corpus}:1: 'text' is a int, not a string" in err.message


def test_tokenizer_path_missing(tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", ["hello"])
    err = prepare_error("--input", str(corpus), "--tokenizer", str(tmp_path / "no-tok"), "--output-prefix", str(tmp_path / "o"))
    assert f"tokenizer path {tmp_path / 'no-tok'} does not exist" in err.message
    assert "--vocab-size" in err.hint


def test_tokenizer_folder_without_tokenizer_files(tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", ["hello"])
    (tmp_path / "empty-tok").mkdir()
    err = prepare_error("--input", str(corpus), "--tokenizer", str(tmp_path / "empty-tok"), "--output-prefix", str(tmp_path / "o"))
    assert "does not look like a Hugging Face tokenizer folder" in err.message


def test_tokenizer_and_vocab_size_are_exclusive(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        data_parser().parse_args(["data", "prepare", "--input", "x", "--output-prefix", "o", "--tokenizer", "t", "--vocab-size", "300"])
    assert exc.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_vocab_size_too_small(tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", ["hello"])
    err = prepare_error("--input", str(corpus), "--vocab-size", "100", "--output-prefix", str(tmp_path / "o"))
    assert "--vocab-size 100 is too small" in err.message and "258" in err.hint


def test_prefix_with_a_suffix(tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", ["hello"])
    err = prepare_error("--input", str(corpus), "--output-prefix", str(tmp_path / "o.bin"))
    assert f"--output-prefix {str(tmp_path / 'o')}" in err.hint


def test_existing_output_is_not_replaced_without_overwrite(tmp_path, small_tokenizer):
    corpus = write_jsonl(tmp_path / "c.jsonl", make_documents(20, seed=13))
    run_prepare("--input", str(corpus), "--tokenizer", str(small_tokenizer), "--output-prefix", str(tmp_path / "o"))
    before = (tmp_path / "o.bin").read_bytes()
    err = prepare_error("--input", str(corpus), "--tokenizer", str(small_tokenizer), "--output-prefix", str(tmp_path / "o"))
    assert "already exist" in err.message and "--overwrite" in err.hint
    assert (tmp_path / "o.bin").read_bytes() == before
    # A trained tokenizer folder is protected the same way.
    run_prepare("--input", str(corpus), "--vocab-size", "300", "--output-prefix", str(tmp_path / "t"))
    err = prepare_error("--input", str(corpus), "--vocab-size", "300", "--output-prefix", str(tmp_path / "t2"), "--tokenizer-output", str(tmp_path / "t-tokenizer"))
    assert "already exists" in err.message and f"--tokenizer {tmp_path / 't-tokenizer'}" in err.hint


def test_failure_while_writing_leaves_old_dataset_intact(tmp_path, small_tokenizer):
    good = write_jsonl(tmp_path / "good.jsonl", make_documents(50, seed=14))
    run_prepare("--input", str(good), "--tokenizer", str(small_tokenizer), "--output-prefix", str(tmp_path / "o"))
    old = {p: (tmp_path / p).read_bytes() for p in ("o.bin", "o.idx")}
    entries = sorted(os.listdir(tmp_path))
    # 600 good documents, then a bad line: the writer has written to its temp files when it fails.
    lines = [json.dumps({"text": d}) for d in make_documents(600, seed=15)] + ["not json"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    err = prepare_error("--input", str(bad), "--tokenizer", str(small_tokenizer), "--output-prefix", str(tmp_path / "o"), "--overwrite")
    assert f"{bad}:601: bad JSON line" in err.message
    assert {p: (tmp_path / p).read_bytes() for p in old} == old
    assert sorted(os.listdir(tmp_path)) == sorted(entries + ["bad.jsonl"])  # no temp files left


def test_overwrite_replaces_data_and_drops_megatrons_stale_index_cache(tmp_path, small_tokenizer):
    corpus = write_jsonl(tmp_path / "c.jsonl", make_documents(20, seed=16))
    run_prepare("--input", str(corpus), "--tokenizer", str(small_tokenizer), "--output-prefix", str(tmp_path / "o"))
    stale = tmp_path / "o" / "cache" / "GPTDataset_indices"  # where Megatron caches sample indices for prefix o
    stale.mkdir(parents=True)
    (stale / "x-document_index.npy").write_bytes(b"old")
    corpus2 = write_jsonl(tmp_path / "c2.jsonl", make_documents(35, seed=17))
    code, out = run_prepare("--input", str(corpus2), "--tokenizer", str(small_tokenizer), "--output-prefix", str(tmp_path / "o"), "--overwrite")
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    assert len(IndexedDataset(str(tmp_path / "o"))) == 35
    assert not (tmp_path / "o" / "cache").exists()
    assert "removed Megatron's index cache" in out


@pytest.mark.slow
def test_sigterm_mid_write_leaves_nothing_at_the_prefix(tmp_path, small_tokenizer):
    """A real process, killed with SIGTERM while its temp .bin is being written."""
    fifo = tmp_path / "corpus.pipe"
    os.mkfifo(fifo)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code = (
        "import sys; sys.path.insert(0, 'tests');"
        "from test_data_support import data_parser;"
        "a = data_parser().parse_args(sys.argv[1:]); sys.exit(a.func(a))"
    )
    argv = ["data", "prepare", "--input", str(fifo), "--format", "jsonl", "--tokenizer", str(small_tokenizer), "--output-prefix", str(out_dir / "o")]
    proc = subprocess.Popen([sys.executable, "-c", code, *argv], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        with open(fifo, "w") as pipe:  # blocks until the child opens the pipe for reading
            for doc in make_documents(2000, seed=18):  # several batches: some reach the temp .bin
                pipe.write(json.dumps({"text": doc}) + "\n")
            pipe.flush()
            deadline = time.time() + 120
            temp_bins: list[Path] = []
            while time.time() < deadline and not any(p.stat().st_size > 0 for p in temp_bins):
                temp_bins = list(out_dir.glob(".o.*.tmp/data.bin"))
                time.sleep(0.1)
            assert temp_bins and temp_bins[0].stat().st_size > 0, "the writer never started"
            proc.send_signal(signal.SIGTERM)  # the pipe is still open: the child is mid-corpus
            proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM
    assert os.listdir(out_dir) == []


def test_pipe_input_cannot_train_a_tokenizer(tmp_path):
    fifo = tmp_path / "p"
    os.mkfifo(fifo)
    err = prepare_error("--input", str(fifo), "--output-prefix", str(tmp_path / "o"))
    assert "reads the input twice" in err.message and "--tokenizer" in err.hint


def test_real_cli_prints_error_and_fix_with_exit_code_2(tmp_path):
    """Through `python -m benchlib`, as a user runs it: no traceback, the fix on its own line."""
    proc = subprocess.run(
        [sys.executable, "-m", "benchlib", "data", "prepare", "--input", str(tmp_path / "missing.txt"), "--output-prefix", str(tmp_path / "o")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert f"error: input file {tmp_path / 'missing.txt'} does not exist" in proc.stderr
    assert "  fix: pass --input" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_lone_surrogate_in_json_is_named_by_line(tmp_path):
    corpus = tmp_path / "s.jsonl"
    corpus.write_text('{"text": "fine"}\n{"text": "broken \\ud800 pair"}\n')
    err = prepare_error("--input", str(corpus), "--vocab-size", "300", "--output-prefix", str(tmp_path / "o"))
    assert f"{corpus}:2: the text holds invalid Unicode" in err.message


def test_byte_order_mark_is_not_text(tmp_path):
    corpus = tmp_path / "bom.jsonl"
    corpus.write_bytes("\ufeff".encode() + b'{"text": "first"}\n{"text": "second"}\n')
    run_prepare("--input", str(corpus), "--vocab-size", "300", "--output-prefix", str(tmp_path / "o"))
    from transformers import AutoTokenizer
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    tok = AutoTokenizer.from_pretrained(str(tmp_path / "o-tokenizer"))
    ds = IndexedDataset(str(tmp_path / "o"))
    assert [tok.decode(ds[i].tolist()) for i in range(len(ds))] == ["first", "second"]


def test_output_folder_under_a_file_is_refused_before_any_work(tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", ["hello"])
    (tmp_path / "afile").write_text("x")
    err = prepare_error("--input", str(corpus), "--vocab-size", "300", "--output-prefix", str(tmp_path / "afile" / "sub" / "o"))
    assert "is a file" in err.message


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere: no unwritable folder to test with")
def test_unwritable_output_folder(tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", ["hello"])
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    err = prepare_error("--input", str(corpus), "--vocab-size", "300", "--output-prefix", str(locked / "o"))
    assert "not writable" in err.message


def test_tokenizer_json_file_instead_of_its_folder(tmp_path, small_tokenizer):
    corpus = write_jsonl(tmp_path / "c.jsonl", ["hello"])
    err = prepare_error("--input", str(corpus), "--tokenizer", str(small_tokenizer / "tokenizer.json"), "--output-prefix", str(tmp_path / "o"))
    assert "is a file" in err.message and f"--tokenizer {small_tokenizer}" in err.hint
