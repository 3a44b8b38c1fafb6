"""Helpers shared by the tests/test_data_*.py files (no tests here): a generated corpus and the CLI call."""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import random
from pathlib import Path

from benchlib.core.errors import BenchError

_WORDS = (
    "the a river mountain quick brown fox jumps over lazy dog data tokens expert router "
    "gradient über café naïve 東京 Ωmega ✓ 🙂 can't won't 3.14 -42 (parens) [brackets] {braces}"
).split()


def make_documents(n: int = 300, seed: int = 0, *, multiline: bool = True) -> list[str]:
    """`n` generated documents of a few sentences: unicode, punctuation, runs of spaces, tabs,
    and (when multiline) newlines inside a document, all of which must survive the round trip."""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        sentences = []
        for _ in range(rng.randint(1, 4)):
            words = [rng.choice(_WORDS) for _ in range(rng.randint(3, 18))]
            sentences.append(" ".join(words).capitalize() + rng.choice([".", "!", "?", " ..."]))
        sep = rng.choice([" ", "  ", "\t", "\n"] if multiline else [" ", "  ", "\t"])
        doc = sep.join(sentences) + f" #{i}"
        if rng.random() < 0.1:
            doc = "  " + doc  # leading spaces are part of the document too
        docs.append(doc)
    return docs


def write_jsonl(path: Path, docs: list[str], key: str = "text") -> Path:
    with open(path, "w", encoding="utf-8") as fh:
        for i, doc in enumerate(docs):
            fh.write(json.dumps({"id": i, key: doc}, ensure_ascii=bool(i % 2)) + "\n")
    return path


def write_txt(path: Path, docs: list[str]) -> Path:
    assert all("\n" not in d for d in docs), "a .txt corpus holds one document per line"
    path.write_text("".join(d + "\n" for d in docs), encoding="utf-8")
    return path


def data_parser() -> argparse.ArgumentParser:
    """A parser with only the data area's subcommands, registered as benchlib's CLI does it."""
    from benchlib.data.cli import register

    parser = argparse.ArgumentParser(prog="benchlib")
    register(parser.add_subparsers(dest="command"))
    return parser


def run_prepare(*argv: str) -> tuple[int, str]:
    """`benchlib data prepare ARGV...` in-process; returns (exit code, stdout). BenchError propagates."""
    args = data_parser().parse_args(["data", "prepare", *argv])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = args.func(args)
    return code, out.getvalue()


def prepare_error(*argv: str) -> BenchError:
    try:
        run_prepare(*argv)
    except BenchError as err:
        return err
    raise AssertionError(f"expected a BenchError from data prepare {' '.join(argv)}")


def printed_figure(stdout: str, label: str) -> int:
    """The number after `label` in the summary `prepare` prints (e.g. 'tokens      1234 ...')."""
    for line in stdout.splitlines():
        if line.startswith(label + " "):
            return int(line[len(label):].split()[0])
    raise AssertionError(f"no {label!r} line in:\n{stdout}")
