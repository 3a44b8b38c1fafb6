"""`benchlib data prepare`: a corpus the tests generate -> tokenizer + Megatron .bin/.idx, read back
with Megatron-Core's own IndexedDataset and decoded with transformers' AutoTokenizer.

Real parts throughout: the `tokenizers` trainer, transformers, Megatron-Core 0.19.2's
IndexedDatasetBuilder / IndexedDataset / HuggingFaceTokenizer, all on CPU. Nothing is faked.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy
import pytest

from test_data_support import make_documents, printed_figure, run_prepare, write_jsonl, write_txt

pytestmark = pytest.mark.megatron


def read_back(prefix: Path) -> list[list[int]]:
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ds = IndexedDataset(str(prefix))
    return [ds[i].tolist() for i in range(len(ds))]


def hf_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


@pytest.fixture(scope="module")
def prepared_jsonl(tmp_path_factory):
    """One jsonl corpus prepared with a trained tokenizer and --append-eod (shared: it takes a few seconds)."""
    root = tmp_path_factory.mktemp("jsonl")
    docs = make_documents(300, seed=1)
    corpus = write_jsonl(root / "corpus.jsonl", docs)
    code, out = run_prepare("--input", str(corpus), "--vocab-size", "600", "--output-prefix", str(root / "out" / "corpus"), "--append-eod")
    assert code == 0
    return root, docs, out


def test_jsonl_round_trip_through_megatron_indexed_dataset(prepared_jsonl):
    root, docs, out = prepared_jsonl
    prefix = root / "out" / "corpus"
    assert prefix.with_suffix(".bin").is_file() and prefix.with_suffix(".idx").is_file()
    tok = hf_tokenizer(root / "out" / "corpus-tokenizer")  # the default place of a trained tokenizer
    seqs = read_back(prefix)
    assert len(seqs) == len(docs) == printed_figure(out, "documents")
    for doc, ids in zip(docs, seqs):
        # Each document ends with the end-of-document token, and only there.
        assert ids[-1] == tok.eos_token_id
        assert tok.convert_ids_to_tokens(ids[-1]) == "<|endoftext|>"
        assert tok.eos_token_id not in ids[:-1]
        assert tok.decode(ids[:-1]) == doc
        assert ids[:-1] == tok(doc).input_ids
    assert printed_figure(out, "tokens") == sum(len(s) for s in seqs)


def test_trained_tokenizer_is_byte_level_bpe_of_the_asked_size(prepared_jsonl):
    root, docs, out = prepared_jsonl
    folder = root / "out" / "corpus-tokenizer"
    spec = json.loads((folder / "tokenizer.json").read_text())
    assert spec["model"]["type"] == "BPE"
    assert spec["pre_tokenizer"]["type"] == "ByteLevel" and spec["decoder"]["type"] == "ByteLevel"
    tok = hf_tokenizer(folder)
    # 300 short documents have enough distinct pairs to fill 600 ids (256 bytes + 2 special + merges).
    assert len(tok) == 600 == printed_figure(out, "vocab size")
    # Byte-level: text never seen in training still round-trips, with no unknown token.
    unseen = "Zebra-λ ☃ 𝄞 unseen\r\nbytes"
    assert tok.decode(tok(unseen).input_ids) == unseen


def test_token_dtype_is_the_one_megatron_picks_for_the_vocab(prepared_jsonl):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    root, _, out = prepared_jsonl
    # Megatron stores ids as uint16 when the vocabulary has fewer than 65500 entries (600 here).
    assert IndexedDataset(str(root / "out" / "corpus")).index.dtype == numpy.uint16
    assert "uint16" in out


def test_summary_prints_the_settings_that_use_it(prepared_jsonl):
    root, _, out = prepared_jsonl
    prefix = root / "out" / "corpus"
    folder = root / "out" / "corpus-tokenizer"
    assert f"DATA=real DATA_PATH={prefix} TOKENIZER_MODEL={folder}" in out
    assert f"    DATA_PATH={prefix}\n    TOKENIZER_MODEL={folder}\n" in out
    assert f"--data-path {prefix} --tokenizer-type HuggingFaceTokenizer --tokenizer-model {folder}" in out
    assert str(prefix) + ".bin" in out and str(prefix) + ".idx" in out


def test_txt_corpus_is_one_document_per_line(tmp_path):
    docs = make_documents(200, seed=2, multiline=False)
    lines = []
    for i, d in enumerate(docs):
        lines.append(d)
        if i % 50 == 0:
            lines.append("")  # blank lines hold no document
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    code, out = run_prepare("--input", str(corpus), "--vocab-size", "400", "--output-prefix", str(tmp_path / "txt"), "--tokenizer-output", str(tmp_path / "tok"))
    assert code == 0
    tok = hf_tokenizer(tmp_path / "tok")
    seqs = read_back(tmp_path / "txt")
    assert len(seqs) == len(docs) == printed_figure(out, "documents")
    assert [tok.decode(s) for s in seqs] == docs  # no --append-eod: the ids are the text alone
    assert "no end-of-document tokens" in out


def test_text_key_picks_the_field(tmp_path):
    docs = make_documents(40, seed=3)
    corpus = write_jsonl(tmp_path / "c.jsonl", docs, key="content")
    run_prepare("--input", str(corpus), "--text-key", "content", "--vocab-size", "300", "--output-prefix", str(tmp_path / "c"))
    tok = hf_tokenizer(tmp_path / "c-tokenizer")
    assert [tok.decode(s) for s in read_back(tmp_path / "c")] == docs


def test_existing_tokenizer_folder_is_used_as_is(tmp_path, prepared_jsonl):
    """--tokenizer with a folder written by transformers' own save_pretrained (not by benchlib)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    other = Tokenizer(models.BPE())
    other.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    other.decoder = decoders.ByteLevel()
    other.train_from_iterator(
        make_documents(100, seed=9), trainers.BpeTrainer(vocab_size=420, special_tokens=["</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    )
    folder = tmp_path / "hf-tok"
    PreTrainedTokenizerFast(tokenizer_object=other, eos_token="</s>", clean_up_tokenization_spaces=False).save_pretrained(str(folder))
    before = sorted(os.listdir(folder))

    docs = make_documents(120, seed=4)
    corpus = write_jsonl(tmp_path / "c.jsonl", docs)
    code, out = run_prepare("--input", str(corpus), "--tokenizer", str(folder), "--output-prefix", str(tmp_path / "d"), "--append-eod")
    assert code == 0
    assert sorted(os.listdir(folder)) == before
    assert not (tmp_path / "d-tokenizer").exists()  # nothing trained
    tok = hf_tokenizer(folder)
    assert printed_figure(out, "vocab size") == len(tok) == 420
    seqs = read_back(tmp_path / "d")
    assert len(seqs) == 120
    for doc, ids in zip(docs, seqs):
        assert ids == tok(doc).input_ids + [tok.convert_tokens_to_ids("</s>")]
        assert tok.decode(ids[:-1]) == doc
    assert f"TOKENIZER_MODEL={folder}" in out


def test_same_corpus_with_the_trained_tokenizer_gives_the_same_ids(tmp_path, prepared_jsonl):
    root, docs, _ = prepared_jsonl
    run_prepare("--input", str(root / "corpus.jsonl"), "--tokenizer", str(root / "out" / "corpus-tokenizer"), "--output-prefix", str(tmp_path / "again"), "--append-eod")
    assert (tmp_path / "again.bin").read_bytes() == (root / "out" / "corpus.bin").read_bytes()
    assert (tmp_path / "again.idx").read_bytes() == (root / "out" / "corpus.idx").read_bytes()


def test_empty_documents_are_skipped_and_counted(tmp_path):
    docs = make_documents(30, seed=5)
    corpus = tmp_path / "c.jsonl"
    with open(corpus, "w") as fh:
        for i, d in enumerate(docs):
            fh.write(json.dumps({"text": d}) + "\n")
            if i % 10 == 0:
                fh.write(json.dumps({"text": ""}) + "\n\n")  # an empty text and a blank line
    code, out = run_prepare("--input", str(corpus), "--vocab-size", "300", "--output-prefix", str(tmp_path / "c"))
    assert len(read_back(tmp_path / "c")) == 30
    assert "(3 empty skipped)" in out


@pytest.mark.slow
def test_workers_write_the_same_dataset_as_one_process(tmp_path, prepared_jsonl):
    root, docs, _ = prepared_jsonl
    big = write_jsonl(tmp_path / "big.jsonl", make_documents(1500, seed=6))
    tok = str(root / "out" / "corpus-tokenizer")
    run_prepare("--input", str(big), "--tokenizer", tok, "--output-prefix", str(tmp_path / "one"), "--append-eod")
    run_prepare("--input", str(big), "--tokenizer", tok, "--output-prefix", str(tmp_path / "two"), "--append-eod", "--workers", "2")
    assert (tmp_path / "two.bin").read_bytes() == (tmp_path / "one.bin").read_bytes()
    assert (tmp_path / "two.idx").read_bytes() == (tmp_path / "one.idx").read_bytes()


@pytest.mark.slow
def test_real_cli_end_to_end(tmp_path):
    """`python -m benchlib data prepare` in its own process, from another working directory, with a
    relative output prefix: the printed settings hold absolute paths that work from anywhere."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parent.parent
    docs = make_documents(80, seed=7, multiline=False)
    write_txt(tmp_path / "c.txt", docs)
    env = dict(os.environ, PYTHONPATH=str(repo))
    proc = subprocess.run(
        [sys.executable, "-m", "benchlib", "data", "prepare", "--input", "c.txt", "--vocab-size", "300", "--output-prefix", "sub/c", "--append-eod",
         "--model", "Qwen3-30B-A3B-Proxy", "--cluster", "local"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    prefix, folder = tmp_path / "sub" / "c", tmp_path / "sub" / "c-tokenizer"
    assert f"DATA=real DATA_PATH={prefix} TOKENIZER_MODEL={folder} MODEL=Qwen3-30B-A3B-Proxy" in proc.stdout
    assert "cluster_configs/benchmarking/local.conf" in proc.stdout and "[Qwen3-30B-A3B-Proxy]" in proc.stdout
    # The model's 151936-id vocabulary is not what this 300-id tokenizer gives a run: said so.
    assert "note: Qwen3-30B-A3B-Proxy sets --vocab-size 151936" in proc.stdout and "padded to 384" in proc.stdout
    tok = hf_tokenizer(folder)
    assert [tok.decode(s[:-1]) for s in read_back(prefix)] == docs


def test_model_vocab_is_the_default_training_size_and_unknown_models_are_refused(tmp_path):
    import yaml

    from benchlib.data.prepare import PrepareOptions
    from benchlib.core.errors import BenchError
    from benchlib.core.paths import MODEL_DIR

    expected = yaml.safe_load((MODEL_DIR / "Qwen3-30B-A3B-Proxy.yaml").read_text())["MODEL_ARGS"]["--vocab-size"]
    opts = PrepareOptions(input=tmp_path / "c.txt", output_prefix=tmp_path / "o", model="Qwen3-30B-A3B-Proxy")
    assert opts.default_vocab_size() == int(expected)
    assert PrepareOptions(input=tmp_path / "c.txt", output_prefix=tmp_path / "o", model="Qwen3-30B-A3B-Proxy", vocab_size=999).default_vocab_size() == 999
    corpus = write_txt(tmp_path / "c.txt", ["hello"])
    with pytest.raises(BenchError, match="unknown model 'Qwen3-30B-A3B-Prox'"):
        run_prepare("--input", str(corpus), "--output-prefix", str(tmp_path / "o"), "--model", "Qwen3-30B-A3B-Prox")


def test_printed_settings_resolve_to_the_megatron_data_flags(prepared_jsonl, tmp_path):
    """The env overrides and the [MODEL] section that `prepare` prints, fed to benchlib's own
    resolver: both give --data-path / HuggingFaceTokenizer / --tokenizer-model for DATA=real."""
    from benchlib.core.paths import CLUSTER_DIR
    from benchlib.config.resolve import resolve_run

    root, _, out = prepared_jsonl
    prefix, folder = str(root / "out" / "corpus"), str(root / "out" / "corpus-tokenizer")
    model = "Qwen3-30B-A3B-Proxy"
    want = {"--data-path": prefix, "--tokenizer-type": "HuggingFaceTokenizer", "--tokenizer-model": folder}

    env = {"DATA_PATH": prefix, "TOKENIZER_MODEL": folder}
    run = resolve_run([f"MODEL={model}", "DATA=real"], env, mode="interactive", local_gpus=1)
    assert {k: run.flags.get(k) for k in want} == want
    assert "--mock-data" not in run.flags
    # The split `prepare` checks the corpus size against is the one a run renders.
    from benchlib.megatron.splits import RUN_SPLIT

    assert run.flags["--split"] == RUN_SPLIT

    # The printed [MODEL] section, pasted into a copy of the local cluster conf.
    section = out[out.index("    [<MODEL>]") : out.index("  then run with DATA=real.")]
    pasted = "\n".join(line.strip() for line in section.splitlines()).replace("[<MODEL>]", f"[{model}]")
    conf = tmp_path / "mine.conf"
    conf.write_text((CLUSTER_DIR / "local.conf").read_text() + "\n" + pasted + "\n")
    run = resolve_run([f"MODEL={model}", "DATA=real", f"CLUSTER={conf}"], {}, mode="interactive", local_gpus=1)
    assert {k: run.flags.get(k) for k in want} == want


def test_runs_split_gives_every_document_to_training(tmp_path):
    """DATA=real renders --split 100,0,0 (benchmarks train only), so even a tiny corpus leaves no
    split with weight but no document (which makes Megatron-Core 0.19.2 hang); a weighted split
    such as 99,1,0 still is detected as empty for 50 documents."""
    from benchlib.megatron.splits import RUN_SPLIT, empty_splits, min_documents

    assert RUN_SPLIT == "100,0,0" and empty_splits(1) == [] and min_documents() == 1
    assert empty_splits(50, "99,1,0") == ["valid"] and min_documents("99,1,0") == 51
    docs = make_documents(3, seed=8)
    code, out = run_prepare("--input", str(write_jsonl(tmp_path / "a.jsonl", docs)), "--vocab-size", "300", "--output-prefix", str(tmp_path / "a"))
    assert code == 0 and "warning: a DATA=real run" not in out


def test_large_vocab_is_stored_as_int32_with_ids_above_uint16(tmp_path):
    """A given tokenizer of 70000 ids (a word-level one built here): Megatron stores int32 from 65500
    ids up, and ids above 65535 must come back unchanged."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "</s>": 1, **{f"w{i}": i for i in range(2, 70000)}}
    wl = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    wl.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    folder = tmp_path / "wordlevel"
    PreTrainedTokenizerFast(tokenizer_object=wl, eos_token="</s>", unk_token="[UNK]").save_pretrained(str(folder))
    docs = ["w2 w65535 w65536 w69999", "w70000 w12345"]  # w70000 is unknown: id 0
    corpus = write_jsonl(tmp_path / "c.jsonl", docs)
    code, out = run_prepare("--input", str(corpus), "--tokenizer", str(folder), "--output-prefix", str(tmp_path / "big"), "--append-eod")
    ds = IndexedDataset(str(tmp_path / "big"))
    assert ds.index.dtype == numpy.int32 and "int32" in out
    assert [ds[i].tolist() for i in range(len(ds))] == [[2, 65535, 65536, 69999, 1], [0, 12345, 1]]
