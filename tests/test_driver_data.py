"""The driver's data path and loss, as a run uses them: Megatron-Core's own
`parse_and_validate_args` on the driver's argument list, then `benchlib.megatron.driver.train.datasets_provider`
(Megatron's BlendedMegatronDatasetBuilder over MockGPTDataset, benchlib's random-token dataset (DATA=random)
or an indexed dataset made by `benchlib data prepare`), then samples drawn on CPU; and the loss function's per-token reduction.

Runs Megatron in a child process (its global state and a gloo group of world size 1 stay there).
Faked: the GPU. validate_args asks torch.cuda.get_device_capability(), answered with an H200's
(9, 0); Megatron's `compile_helpers()` is replaced by the driver's own check, as in a real run.
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
torch = pytest.importorskip("torch")

CHILD = r"""
import json, sys
import torch
torch.cuda.get_device_capability = lambda *a, **k: (9, 0)
torch.distributed.init_process_group("gloo", rank=0, world_size=1)
from megatron.core import parallel_state as ps
ps.initialize_model_parallel(1, 1)
import megatron.core.datasets.utils as dataset_utils
from megatron.training.arguments import parse_and_validate_args
from benchlib.config.backend import NATIVE_FLAGS
from benchlib.config.flags import to_tokens
from benchlib.megatron.driver.argv import backend_of
from benchlib.megatron.driver import train

dataset_utils.compile_helpers = train._check_helpers_instead_of_make
data_args = json.loads(sys.argv[1])
seeds = json.loads(sys.argv[2])  # the datasets again for each --seed (null: the argv's)
base = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4", "--micro-batch-size", "1",
        "--global-batch-size", "4", "--seq-length", "32", "--max-position-embeddings", "32", "--train-iters", "4",
        "--lr", "1e-4", "--bf16"]
argv = base + data_args + to_tokens(NATIVE_FLAGS)
sys.argv = ["driver"] + argv
args = parse_and_validate_args()
train.fill_wheel_defaults(args)
train._check_helpers_instead_of_make()
by_seed = []
for seed in seeds:
    if seed is not None:
        args.seed = seed
    tr, va, te = train.datasets_provider([8, 0, 0])
    by_seed.append([{k: v.tolist() for k, v in tr[i].items() if k in ("tokens", "labels", "loss_mask")}
                    for i in range(min(len(tr), 64))])
print("RESULT " + json.dumps({"backend": backend_of(argv), "eval_interval": args.eval_interval, "len": len(tr),
                              "cls": type(tr).__name__, "samples": by_seed[0], "samples_by_seed": by_seed,
                              "padded_vocab": args.padded_vocab_size}))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_child(data_args: list[str], tmp_path, data: str, seeds: tuple[int | None, ...] = (None,)) -> dict:
    """`data`: the DATA knob, as the launch renders it into every rank's environment."""
    (tmp_path / "hf-home").mkdir(exist_ok=True)
    env = dict(os.environ, DATA=data, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=str(tmp_path / "hf-home"),
               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0",
               PYTHONPATH=os.pathsep.join([str(__import__("pathlib").Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(data_args), json.dumps(list(seeds))], env=env,
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))
    return {**json.loads(line[len("RESULT "):]), "stdout": proc.stdout}


MOCK_ARGS = ["--mock-data", "--tokenizer-type", "NullTokenizer", "--vocab-size", "1000"]  # what flags.py renders for mock and random


def test_mock_data_through_the_driver(tmp_path):
    view = run_child(MOCK_ARGS, tmp_path, "mock")
    assert view["backend"] == "native"
    assert view["eval_interval"] == 4  # 0.19.2 leaves it None; the driver fills it with --train-iters
    assert view["cls"] == "MockGPTDataset" and view["len"] >= 8
    assert "> building mock GPT datasets" in view["stdout"]
    assert view["padded_vocab"] == 1024  # ceil(1000 / 128) * 128
    for s in view["samples"]:
        assert len(s["tokens"]) == 32 and s["labels"][:-1] == s["tokens"][1:]
        assert max(s["tokens"]) < 1000


def test_random_data_through_the_driver(tmp_path):
    """DATA=random: the same argv as mock, the knob in the environment picks benchlib's random-token
    documents; ids below the vocabulary (so below the padded one), never NullTokenizer's EOD (999), no
    masked token, the same samples for the same --seed and others for another."""
    view = run_child([*MOCK_ARGS, "--seed", "1234"], tmp_path, "random", seeds=(None, 1234, 7))
    assert view["cls"] == "RandomTokensGPTDataset" and view["len"] >= 8
    assert "> building random-token GPT datasets (uniform ids in [0, 1000) without EOD 999, seed 1234)" in view["stdout"]
    first, same_seed, other_seed = view["samples_by_seed"]
    assert first == same_seed and len(first) == 64
    ids = []
    for s in first:
        assert len(s["tokens"]) == 32 and s["labels"][:-1] == s["tokens"][1:]
        assert set(s["loss_mask"]) == {1.0}
        ids += s["tokens"]
    assert min(ids) >= 0 and max(ids) < 1000 and 999 not in ids and max(ids) >= 990
    assert len(set(ids)) > 800  # 2048 uniform draws over 999 ids: ~870 distinct; mock's samples count up
    assert len({tuple(s["tokens"]) for s in first}) == len(first)  # no two samples alike
    other = [t for s in other_seed for t in s["tokens"]]
    assert sum(a != b for a, b in zip(ids, other)) > 0.99 * len(ids)


def test_random_data_with_a_data_path_is_refused(tmp_path):
    """DATA=random in the environment beside argv that reads files: an error, not a silent real run."""
    from benchlib.core.errors import BenchError
    from benchlib.megatron.driver.train import data_choice

    assert data_choice(True, {"DATA": "random"}) == "random"
    assert data_choice(True, {"DATA": "mock"}) == data_choice(True, {}) == "mock"
    assert data_choice(False, {"DATA": "real"}) == "real"
    with pytest.raises(BenchError, match="DATA=random but the arguments read real data"):
        data_choice(False, {"DATA": "random"})


def test_indexed_data_through_the_driver(tmp_path):
    docs = make_documents(60, seed=5)
    corpus = write_jsonl(tmp_path / "corpus.jsonl", docs)
    prefix = tmp_path / "data" / "corpus"
    run_prepare("--input", str(corpus), "--vocab-size", "600", "--output-prefix", str(prefix), "--append-eod")
    tok_dir = tmp_path / "data" / "corpus-tokenizer"
    view = run_child(["--data-path", str(prefix), "--tokenizer-type", "HuggingFaceTokenizer",
                      "--tokenizer-model", str(tok_dir), "--split", "100,0,0"], tmp_path, "real")
    assert view["cls"] == "GPTDataset" and view["len"] >= 8
    # Independent of Megatron: tokenize the documents with the prepared tokenizer itself; every
    # sample must be made of real documents: a suffix of one, whole ones, a prefix of one.
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    doc_ids = [tok.encode(d, add_special_tokens=False).ids + [0] for d in docs]  # 0 = eod (--append-eod)
    checked = 0
    for s in view["samples"]:
        assert s["labels"][:-1] == s["tokens"][1:]
        window = s["tokens"] + s["labels"][-1:]
        cuts = [i for i, t in enumerate(window) if t == 0]
        if not cuts:  # inside one long document
            assert any(_contains(ids, window) for ids in doc_ids)
            checked += 1
            continue
        first, last = window[: cuts[0] + 1], window[cuts[-1] + 1 :]
        assert any(ids[-len(first):] == first for ids in doc_ids)
        for a, b in zip(cuts, cuts[1:]):
            assert window[a + 1 : b + 1] in doc_ids
        assert not last or any(ids[: len(last)] == last for ids in doc_ids)
        checked += 1
    assert checked >= 8


def _contains(seq: list[int], part: list[int]) -> bool:
    n = len(part)
    return any(seq[i : i + n] == part for i in range(len(seq) - n + 1))


def test_loss_is_a_per_token_sum_with_its_count():
    from benchlib.megatron.driver.train import loss_func

    losses = torch.tensor([[2.0, 4.0, 6.0], [1.0, 3.0, 5.0]])
    mask = torch.tensor([[1, 0, 1], [1, 1, 0]])
    loss, num, report = loss_func(mask, losses)
    assert float(loss) == 2.0 + 6.0 + 1.0 + 3.0
    assert int(num) == 4
    assert report["lm loss"].tolist() == [12.0, 4.0]
