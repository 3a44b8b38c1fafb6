"""Streaming documents out of a `.jsonl` or `.txt` corpus, one at a time (never the whole file).

- `.jsonl` (`.json`/`.ndjson` with one object per line, or `--format jsonl`): each non-blank line is a JSON object; the
  document is the string under `text_key`.
- `.txt` (any other suffix, or `--format txt`): each non-blank line is a document (its trailing newline dropped).
Empty documents are skipped and counted: Megatron has nothing to sample from them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from benchlib.core.errors import BenchError

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")


@dataclass
class CorpusStats:
    """What a pass over the corpus saw; filled in while the documents are read."""

    documents: int = 0
    skipped_empty: int = 0
    lines: int = 0


@dataclass(frozen=True)
class Corpus:
    path: Path
    text_key: str = "text"
    fmt: str = "auto"  # auto (by suffix), jsonl or txt
    stats: CorpusStats = field(default_factory=CorpusStats, compare=False)

    @property
    def is_jsonl(self) -> bool:
        if self.fmt != "auto":
            return self.fmt == "jsonl"
        return self.path.suffix.lower() in JSONL_SUFFIXES

    def check(self) -> None:
        """Fail early on a path that cannot be read, before any work starts."""
        if not self.path.exists():
            raise BenchError(f"input file {self.path} does not exist", hint="pass --input with a .jsonl or .txt file")
        if self.path.is_dir():
            raise BenchError(f"input {self.path} is a folder, not a file", hint="pass --input with a .jsonl or .txt file")

    @property
    def rereadable(self) -> bool:
        """A regular file can be read twice; a pipe (e.g. `--input <(zcat c.jsonl.gz)`) only once."""
        return self.path.is_file()

    def documents(self) -> Iterator[str]:
        """Each non-empty document, in file order. Updates `self.stats` (reset on each pass)."""
        self.check()
        stats = self.stats
        stats.documents = stats.skipped_empty = stats.lines = 0
        # utf-8-sig: a byte-order mark at the start (some editors write one) is not part of the text.
        with open(self.path, encoding="utf-8-sig", newline="") as fh:
            lineno = 0
            while True:
                try:
                    line = fh.readline()
                except UnicodeDecodeError as err:
                    raise BenchError(
                        f"{self.path}:{lineno + 1}: not UTF-8 text ({err.reason})",
                        hint="convert the file to UTF-8, e.g. iconv -f latin1 -t utf-8",
                    ) from None
                if not line:
                    break
                lineno += 1
                stats.lines = lineno
                text = self._document(line, lineno)
                if text is None:
                    continue
                if not text:
                    stats.skipped_empty += 1
                    continue
                stats.documents += 1
                yield text

    def _document(self, line: str, lineno: int) -> str | None:
        """The document a line holds; None for a blank line (no document there)."""
        if not self.is_jsonl:
            text = line.rstrip("\r\n")
            return text if text.strip() else None
        if not line.strip():
            return None
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise BenchError(
                f"{self.path}:{lineno}: bad JSON line ({err.msg} at column {err.colno})",
                hint="each line of a .jsonl file must be one JSON object, e.g. {\"text\": \"...\"}",
            ) from None
        if not isinstance(obj, dict):
            raise BenchError(
                f"{self.path}:{lineno}: expected a JSON object, got {type(obj).__name__}",
                hint="each line of a .jsonl file must be one JSON object, e.g. {\"text\": \"...\"}",
            )
        if self.text_key not in obj:
            keys = ", ".join(sorted(obj)) or "none"
            raise BenchError(
                f"{self.path}:{lineno}: no key {self.text_key!r} in this JSON object (keys: {keys})",
                hint="pass --text-key with the key that holds the document text",
            )
        text = obj[self.text_key]
        if not isinstance(text, str):
            raise BenchError(
                f"{self.path}:{lineno}: {self.text_key!r} is a {type(text).__name__}, not a string",
                hint=f"the value under {self.text_key!r} must be the document's text",
            )
        try:
            text.encode("utf-8")  # JSON can spell a lone surrogate ("\ud800"): no tokenizer takes it
        except UnicodeEncodeError as err:
            raise BenchError(
                f"{self.path}:{lineno}: the text holds invalid Unicode ({err.reason} at character {err.start})",
                hint="fix or drop this document (a \\ud8xx escape without its pair)",
            ) from None
        return text
