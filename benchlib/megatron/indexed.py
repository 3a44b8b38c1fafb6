"""Writing Megatron's indexed dataset (`<PREFIX>.bin` + `<PREFIX>.idx`) with Megatron's own builder.

Tokens go to a temp `.bin` beside the target as they come (the corpus is never in memory; the
builder keeps one length per document for the index). Only after the index is written are both
renamed onto `<PREFIX>.bin` / `<PREFIX>.idx`: an interrupted run leaves nothing half-written there.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from benchlib.core.errors import BenchError


@dataclass
class WriteStats:
    documents: int = 0
    tokens: int = 0
    skipped_no_tokens: int = 0
    dtype: str = ""


def bin_path(prefix: Path) -> Path:
    return Path(f"{prefix}.bin")


def idx_path(prefix: Path) -> Path:
    return Path(f"{prefix}.idx")


def token_dtype(vocab_size: int):  # -> type[numpy.number]
    """The dtype Megatron's tools/preprocess_data.py picks: uint16 below 65500 ids, else int32."""
    from megatron.core.datasets.indexed_dataset import DType

    return DType.optimal_dtype(vocab_size)


def _fsync(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


class AtomicIndexedWriter:
    """`with AtomicIndexedWriter(prefix, vocab_size) as w: w.add(ids); w.commit()`.

    Leaving the block without `commit()` (an error, Ctrl-C) deletes the temp files.
    """

    def __init__(self, prefix: Path, vocab_size: int, *, eod: int | None = None) -> None:
        self.prefix = Path(prefix)
        self.vocab_size = vocab_size
        self.eod = eod
        self.stats = WriteStats()
        self._tmp_dir: Path | None = None
        self._builder = None

    def __enter__(self) -> "AtomicIndexedWriter":
        from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

        self.prefix.parent.mkdir(parents=True, exist_ok=True)
        # A hidden temp folder beside the target: same filesystem, so the final rename is atomic.
        self._tmp_dir = Path(tempfile.mkdtemp(prefix=f".{self.prefix.name}.", suffix=".tmp", dir=self.prefix.parent))
        dtype = token_dtype(self.vocab_size)
        self.stats.dtype = dtype.__name__
        self._builder = IndexedDatasetBuilder(str(bin_path(self._tmp_prefix)), dtype=dtype)
        return self

    @property
    def _tmp_prefix(self) -> Path:
        assert self._tmp_dir is not None
        return self._tmp_dir / "data"

    def add(self, ids: list[int]) -> None:
        """One document's token ids (plus the end-of-document id when `eod` is set)."""
        import numpy

        if not ids:
            self.stats.skipped_no_tokens += 1
            return
        if self.eod is not None:
            ids = [*ids, self.eod]
        self._builder.add_document(numpy.asarray(ids, dtype=self._builder.dtype), [len(ids)])
        self.stats.documents += 1
        self.stats.tokens += len(ids)

    def commit(self) -> None:
        """Write the index, then move both files onto the prefix."""
        if self.stats.documents == 0:
            raise BenchError("no document produced any token: nothing to write", hint="check the input corpus")
        self._builder.finalize(str(idx_path(self._tmp_prefix)))
        for src in (bin_path(self._tmp_prefix), idx_path(self._tmp_prefix)):
            _fsync(src)
            os.chmod(src, 0o644)
        # .bin first: a reader opens the .idx to find the .bin, so the new .idx comes last.
        os.replace(bin_path(self._tmp_prefix), bin_path(self.prefix))
        os.replace(idx_path(self._tmp_prefix), idx_path(self.prefix))

    def __exit__(self, *exc: object) -> None:
        if self._builder is not None and not self._builder.data_file.closed:
            self._builder.data_file.close()
        if self._tmp_dir is not None:
            shutil.rmtree(self._tmp_dir, ignore_errors=True)


def write_indexed(
    prefix: Path,
    token_ids: Iterable[list[int]],
    vocab_size: int,
    *,
    eod: int | None = None,
    before_commit: Callable[[], None] | None = None,
) -> WriteStats:
    """Write every document's ids; `before_commit` may still refuse (raise) before anything is renamed."""
    with AtomicIndexedWriter(prefix, vocab_size, eod=eod) as writer:
        for ids in token_ids:
            writer.add(ids)
        if before_commit is not None:
            before_commit()
        writer.commit()
    return writer.stats
