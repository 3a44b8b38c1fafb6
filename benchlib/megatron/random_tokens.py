"""DATA=random: documents of uniform random token ids, the data torchtitan's synthetic loader feeds
its model (`torch.randint(0, vocab_size, ...)`, /work/shared/peers/torchtitan/tt022/peer_qwen3moe.py).

Why not Megatron's MockGPTDataset (DATA=mock): its documents are 1, 2, 3, ... then EOD, a pattern
the model learns within tens of steps (loss 12 -> 0.2); MoE routing specializes and drifts as it
does, so step times move with the iteration count and between sittings, and the loss cannot be
compared with a peer's. Uniform ids cannot be learned: the loss stays near ln(vocab) and the
router stays in one regime, as on the peer.

The ids are uniform over [0, vocab) without the EOD id (NullTokenizer's vocab_size - 1 unless
--null-tokenizer-eod-id says otherwise): a document then never holds an EOD, so --eod-mask-loss or
--reset-attention-mask/--reset-position-ids cannot change a mask (the suite renders none of them).
That is 1 id of the vocabulary fewer than the peer draws from (ln(vocab - 1) vs ln(vocab): a few
millionths of a nat). vocab is the tokenizer's (--vocab-size), at most the padded vocabulary the
embedding has. Documents have no EOD and one length, so where they join inside a sample is
invisible; each is drawn from its own generator seeded with (Megatron's --seed, document index):
deterministic, different between documents and seeds, independent of the order samples are read.
Megatron's GPTDataset still shuffles and cuts them into samples of --seq-length + 1 tokens.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy
from megatron.core.datasets.gpt_dataset import GPTDatasetConfig, MockGPTDataset

DOCUMENTS = 100_000  # as MockGPTLowLevelDataset.size: Megatron's builder repeats epochs beyond it
DOCUMENT_TOKENS = 4096  # one length for all: with no EOD, where documents join cannot be seen


class RandomTokensLowLevelDataset:
    """DOCUMENTS documents of DOCUMENT_TOKENS uniform random ids in [0, vocab_size), the EOD id left out.

    The interface GPTDataset reads from a low-level dataset: len, [idx], get(idx, offset, length)
    and the document lengths (`sequence_lengths`, as MockGPTLowLevelDataset names them)."""

    def __init__(self, vocab_size: int, eod: int, seed: int,
                 documents: int = DOCUMENTS, document_tokens: int = DOCUMENT_TOKENS) -> None:
        if vocab_size < 2:
            raise ValueError(f"random tokens need a vocabulary of 2 ids or more, got {vocab_size}")
        self.vocab_size = int(vocab_size)
        self.eod = int(eod)
        self.seed = int(seed)
        self.sequence_lengths = numpy.full(documents, document_tokens, dtype=numpy.int32)

    @property
    def excludes_eod(self) -> bool:
        return 0 <= self.eod < self.vocab_size

    def __len__(self) -> int:
        return len(self.sequence_lengths)

    def __getitem__(self, idx: int) -> numpy.ndarray:
        rng = numpy.random.default_rng((self.seed, int(idx)))
        length = int(self.sequence_lengths[idx])
        if not self.excludes_eod:
            return rng.integers(0, self.vocab_size, size=length, dtype=numpy.int64)
        # uniform over the vocab_size - 1 ids other than EOD: draw below vocab_size - 1, step over EOD
        ids = rng.integers(0, self.vocab_size - 1, size=length, dtype=numpy.int64)
        ids[ids >= self.eod] += 1
        return ids

    def get(self, idx: int, offset: int = 0, length: Optional[int] = None) -> numpy.ndarray:
        if length is None:
            length = int(self.sequence_lengths[idx]) - offset
        return self[idx][offset : offset + length]


class RandomTokensGPTDataset(MockGPTDataset):
    """Megatron's MockGPTDataset (--mock-data: no files, same sampling and masks) over random-token
    documents instead of its counting ones."""

    @staticmethod
    def build_low_level_dataset(  # type: ignore[override]
        dataset_path: Optional[str], config: GPTDatasetConfig
    ) -> RandomTokensLowLevelDataset:
        return low_level_dataset(config.tokenizer, config.random_seed)


def low_level_dataset(tokenizer: Any, seed: int) -> RandomTokensLowLevelDataset:
    """The documents for Megatron's tokenizer (its vocab_size and eod) and --seed."""
    return RandomTokensLowLevelDataset(tokenizer.vocab_size, tokenizer.eod, seed)
