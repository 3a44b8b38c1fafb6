"""Documents -> token ids, streamed in batches, in one process or a pool of workers.

Every worker loads the tokenizer the way a run does (Megatron's HuggingFaceTokenizer) and
encodes with its transformers tokenizer, which is what Megatron's `tokenize(text)` calls: the
ids in the dataset are the ids a run's tokenizer produces. Order is kept, and at most
2 x workers batches are in flight, so memory stays bounded whatever the corpus size.
"""
from __future__ import annotations

import itertools
import multiprocessing
from collections import deque
from pathlib import Path
from typing import Any, Iterable, Iterator

BATCH_DOCS = 1024

_WORKER_TOKENIZER: Any = None


def batched(items: Iterable[str], size: int) -> Iterator[list[str]]:
    it = iter(items)
    while batch := list(itertools.islice(it, size)):
        yield batch


def encode_batch(hf_tokenizer: Any, texts: list[str]) -> list[list[int]]:
    # Same as Megatron's HuggingFaceTokenizer.text_to_ids (include_special_tokens=True): the
    # tokenizer's own special tokens (e.g. a BOS) are added exactly as in a run.
    enc = hf_tokenizer(texts, return_attention_mask=False, return_token_type_ids=False)
    return enc["input_ids"]


def _init_worker(tokenizer_path: str) -> None:
    global _WORKER_TOKENIZER
    from benchlib.megatron.tokenizer import hf_backend, load_megatron_tokenizer

    _WORKER_TOKENIZER = hf_backend(load_megatron_tokenizer(Path(tokenizer_path)))


def _encode_in_worker(texts: list[str]) -> list[list[int]]:
    return encode_batch(_WORKER_TOKENIZER, texts)


def encode_documents(
    documents: Iterable[str], tokenizer: Any, tokenizer_path: Path, *, workers: int = 1, batch_docs: int = BATCH_DOCS
) -> Iterator[list[int]]:
    """Token ids of each document, in order. `tokenizer` is Megatron's, already loaded here."""
    batches = batched(documents, batch_docs)
    if workers <= 1:
        hf = tokenizer._tokenizer.tokenizer
        for batch in batches:
            yield from encode_batch(hf, batch)
        return
    # spawn, not fork: the Rust tokenizer's thread pool does not survive a fork.
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(str(tokenizer_path),)) as pool:
        pending: deque = deque()
        for batch in batches:
            pending.append(pool.apply_async(_encode_in_worker, (batch,)))
            if len(pending) >= 2 * workers:
                yield from pending.popleft().get()
        while pending:
            yield from pending.popleft().get()
