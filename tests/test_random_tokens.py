"""DATA=random's documents (benchlib/megatron/random_tokens.py) as Megatron's GPTDataset reads them:
uniform ids in range without EOD, deterministic per (seed, document), nothing to learn; and Megatron's
own MockGPTDataset documents beside them, which are the learnable pattern DATA=random avoids.

Real Megatron-Core on CPU: its NullTokenizer (what --tokenizer-type NullTokenizer --vocab-size builds)
and MockGPTLowLevelDataset. The whole driver path (argv, builder, samples) is tests/test_driver_data.py.
"""
from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.megatron

VOCAB = 1000


@pytest.fixture(scope="module")
def tokenizer():
    from megatron.core.tokenizers.text.libraries.null_tokenizer import NullTokenizer

    return NullTokenizer(VOCAB)  # eod = VOCAB - 1, as a run's --vocab-size builds it


def _documents(tokenizer, seed: int):
    from benchlib.megatron.random_tokens import low_level_dataset

    return low_level_dataset(tokenizer, seed)


def test_ids_are_in_the_vocabulary_and_never_eod(tokenizer):
    docs = _documents(tokenizer, 1234)
    ids = np.concatenate([docs[i] for i in range(50)])
    assert ids.dtype == np.int64 and len(ids) == 50 * docs.sequence_lengths[0]
    assert tokenizer.eod == VOCAB - 1 and docs.excludes_eod
    assert ids.min() >= 0 and ids.max() < VOCAB
    assert not (ids == tokenizer.eod).any()


def test_ids_are_roughly_uniform(tokenizer):
    """204,800 draws over 999 ids: every id appears (expected ~205 each), counts within a wide band
    of the mean, and the mean id where a uniform one is; counting documents would fail all of these."""
    docs = _documents(tokenizer, 1234)
    ids = np.concatenate([docs[i] for i in range(50)])
    counts = np.bincount(ids, minlength=VOCAB)[: VOCAB - 1]
    assert (counts > 0).all() and ids.max() == VOCAB - 2
    mean = len(ids) / (VOCAB - 1)
    assert counts.min() > 0.6 * mean and counts.max() < 1.4 * mean  # Poisson sd ~ 0.07 * mean
    assert abs(ids.mean() - (VOCAB - 2) / 2) < 5


def test_deterministic_per_seed_and_document_and_different_otherwise(tokenizer):
    a, again, other = _documents(tokenizer, 1234), _documents(tokenizer, 1234), _documents(tokenizer, 7)
    for i in (0, 1, 99_999):
        assert np.array_equal(a[i], again[i])
    assert np.array_equal(a.get(5, offset=100, length=20), a[5][100:120])  # slices of the same document
    assert np.array_equal(a.get(5, offset=4000), a[5][4000:])
    assert (a[0] != a[1]).mean() > 0.99  # two documents: about 1/999 of positions agree by chance
    assert (a[0] != other[0]).mean() > 0.99  # two seeds


def test_nothing_to_learn_unlike_megatrons_mock_documents(tokenizer):
    """Mock's next id is this id + 1 (a bigram the model learns, loss 12 -> 0.2 on the GPU); in the
    random documents the next id equals this id + 1 about once per vocabulary."""
    from megatron.core.datasets.gpt_dataset import MockGPTLowLevelDataset

    mock = MockGPTLowLevelDataset(tokenizer)
    random = _documents(tokenizer, 1234)

    def successor_share(docs) -> float:
        hits = total = 0
        for i in range(20):
            doc = docs[i][:-1] if docs is mock else docs[i]  # mock's last id is its EOD
            hits += int((doc[1:] == (doc[:-1] + 1) % VOCAB).sum())
            total += len(doc) - 1
        return hits / total

    assert successor_share(mock) == 1.0
    assert successor_share(random) < 5 / VOCAB


def test_eod_outside_the_vocabulary_leaves_every_id(tokenizer):
    from benchlib.megatron.random_tokens import RandomTokensLowLevelDataset

    docs = RandomTokensLowLevelDataset(VOCAB, eod=VOCAB + 5, seed=3)
    ids = np.concatenate([docs[i] for i in range(20)])
    assert not docs.excludes_eod and ids.max() == VOCAB - 1 and ids.min() == 0
    with pytest.raises(ValueError, match="2 ids or more"):
        RandomTokensLowLevelDataset(1, eod=0, seed=3)
