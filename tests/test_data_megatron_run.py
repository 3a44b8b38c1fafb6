"""A prepared dataset as a training run reads it: Megatron-Core's own argument parser and tokenizer
builder (`--tokenizer-type HuggingFaceTokenizer --tokenizer-model <folder>`, offline), then
BlendedMegatronDatasetBuilder + GPTDatasetConfig over `--data-path <prefix>`, drawing samples of
`--seq-length` tokens on CPU.

Runs in a child process so that torch.distributed (a real gloo group of world size 1, as a
1-GPU run has, minus the GPU) and the offline Hugging Face settings (HF_HUB_OFFLINE=1 and an
empty HF_HOME) are the child's alone. Only the GPU is missing; nothing is stubbed except that
Megatron's `compile_helpers()` (which runs `make`, failing in the pip wheel) is replaced by a
function that fails the test if anything calls it.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from test_data_support import make_documents, run_prepare, write_jsonl

pytestmark = [pytest.mark.megatron, pytest.mark.slow]

SEQ = 64
CHILD = r"""
import json, os, sys
import torch
import megatron.core.datasets.utils as dataset_utils

def _no_make():
    raise AssertionError("compile_helpers() was called: it runs make, which the pip wheel cannot")
dataset_utils.compile_helpers = _no_make

torch.distributed.init_process_group("gloo", rank=0, world_size=1)

from megatron.training.arguments import parse_args
from megatron.core.tokenizers.utils.build_tokenizer import build_tokenizer
from megatron.training.utils import get_blend_and_blend_per_split
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

prefix, tokenizer, seq, docs_file = sys.argv[1:5]
sys.argv = [
    "pretrain", "--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
    "--micro-batch-size", "1", "--seq-length", seq, "--max-position-embeddings", seq,
    # What benchlib.config.flags renders for DATA=real:
    "--data-path", prefix, "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", tokenizer,
    "--split", "99,1,0",
]
args = parse_args()
tok = build_tokenizer(args)  # what megatron.training.global_vars builds for a run
blend, blend_per_split = get_blend_and_blend_per_split(args)
config = GPTDatasetConfig(  # the fields pretrain_gpt.py fills from the arguments
    random_seed=args.seed, sequence_length=args.seq_length, blend=blend, blend_per_split=blend_per_split,
    split=args.split, path_to_cache=args.data_cache_path, mmap_bin_files=args.mmap_bin_files, tokenizer=tok,
    reset_position_ids=args.reset_position_ids, reset_attention_mask=args.reset_attention_mask,
    eod_mask_loss=args.eod_mask_loss, create_attention_mask=args.create_attention_mask_in_dataloader,
)
train, valid, test = BlendedMegatronDatasetBuilder(GPTDataset, [16, 2, 0], lambda: True, config).build()
samples = [{k: v.tolist() for k, v in train[i].items() if k in ("tokens", "labels", "loss_mask")} for i in range(len(train))]
docs = json.load(open(docs_file))
import megatron.core.datasets.helpers_cpp as helpers_cpp
print("RESULT " + json.dumps({
    "vocab_size": tok.vocab_size, "padded_vocab_size": args.padded_vocab_size, "eod": tok.eod,
    "train_len": len(train), "valid_len": len(valid) if valid is not None else None,
    "samples": samples, "doc_ids": [tok.tokenize(d) for d in docs],
    "detok": {str(i): tok.detokenize(ids) for i, ids in enumerate(tok.tokenize(d) for d in docs[:20])},
    "helpers_cpp": helpers_cpp.__file__,
    "split_documents": [len(d.indices) if d is not None else None for d in (train, valid, test)],
    "offline": os.environ.get("HF_HUB_OFFLINE"),
}))
torch.distributed.destroy_process_group()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def run_view(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    docs = make_documents(300, seed=21)
    corpus = write_jsonl(root / "corpus.jsonl", docs)
    run_prepare("--input", str(corpus), "--vocab-size", "700", "--output-prefix", str(root / "data" / "corpus"), "--append-eod")
    (root / "docs.json").write_text(json.dumps(docs))
    (root / "hf-home").mkdir()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=str(root / "hf-home"),
               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(root / "data" / "corpus"), str(root / "data" / "corpus-tokenizer"), str(SEQ), str(root / "docs.json")],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))
    return root, docs, json.loads(line[len("RESULT "):])


def test_megatron_loads_the_trained_tokenizer_offline(run_view):
    _, docs, view = run_view
    assert view["offline"] == "1"
    assert view["vocab_size"] == 700
    # Megatron pads the vocabulary to a multiple of 128 (x TP=1): 700 -> 768.
    assert view["padded_vocab_size"] == 768
    # Megatron's tokenizer round-trips the text and its eod is the trained end-of-document token (id 0).
    assert view["eod"] == 0
    for i, text in view["detok"].items():
        assert text == docs[int(i)]


def test_gpt_dataset_samples_are_windows_over_whole_documents(run_view):
    _, docs, view = run_view
    eod = view["eod"]
    doc_ids = [ids + [eod] for ids in view["doc_ids"]]  # as written with --append-eod
    as_tuple = {tuple(ids) for ids in doc_ids}
    assert view["train_len"] >= 16 and view["valid_len"] >= 2
    whole_docs_seen = 0
    for sample in view["samples"]:
        tokens, labels = sample["tokens"], sample["labels"]
        assert len(tokens) == len(labels) == SEQ
        assert labels[:-1] == tokens[1:]  # next-token targets
        stream = tokens + labels[-1:]  # the SEQ + 1 tokens Megatron read from the .bin
        pieces, start = [], 0
        for j, t in enumerate(stream):
            if t == eod:
                pieces.append(stream[start : j + 1])
                start = j + 1
        tail = stream[start:]
        if not pieces:  # the whole window lies inside one long document
            assert any(_contains(ids, stream) for ids in doc_ids)
            continue
        # The window starts inside a document (a suffix of one) ...
        assert any(ids[-len(pieces[0]) :] == pieces[0] for ids in doc_ids)
        # ... holds whole documents, exactly as tokenized, between boundaries ...
        for middle in pieces[1:]:
            assert tuple(middle) in as_tuple
            whole_docs_seen += 1
        # ... and ends inside one (a prefix of one).
        if tail:
            assert any(ids[: len(tail)] == tail for ids in doc_ids)
    assert whole_docs_seen > 0, "no sample spanned a whole document: the check above checked little"


def _contains(seq: list[int], part: list[int]) -> bool:
    return any(seq[i : i + len(part)] == part for i in range(len(seq) - len(part) + 1))


def test_dataset_indices_come_from_the_wheels_compiled_helpers(run_view):
    root, _, view = run_view
    assert view["helpers_cpp"].endswith(".so")
    # The sample indices were built and cached next to the data, where Megatron puts them.
    cached = list((root / "data" / "corpus" / "cache" / "GPTDataset_indices").glob("*-sample_index.npy"))
    assert cached, "no GPTDataset index cache written"


def test_documents_per_split_is_what_megatron_cut(run_view):
    from benchlib.megatron.splits import documents_per_split

    _, docs, view = run_view
    assert view["split_documents"] == documents_per_split(len(docs), "99,1,0")
    assert sum(n for n in view["split_documents"] if n) == len(docs)
