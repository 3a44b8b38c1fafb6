"""`benchlib data prepare`: corpus -> tokenizer -> Megatron indexed dataset, and how to use it.

Passes over the corpus, each streamed: one to train the tokenizer (when none is given), one to
tokenize and write. The trained tokenizer goes to a temp folder beside its target and is
renamed there only once the dataset is written too, so a failed run leaves neither behind.
"""
from __future__ import annotations

import os
import shlex
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from benchlib.core.errors import BenchError
from benchlib.data.corpus import Corpus
from benchlib.megatron.indexed import bin_path, idx_path, write_indexed


@dataclass(frozen=True)
class PrepareOptions:
    input: Path
    output_prefix: Path
    text_key: str = "text"
    input_format: str = "auto"  # auto (by the file's suffix), jsonl or txt
    tokenizer: Path | None = None  # a local Hugging Face tokenizer folder; None = train one
    vocab_size: int | None = None  # for the trained tokenizer; None = DEFAULT_VOCAB
    tokenizer_output: Path | None = None  # where the trained tokenizer goes; None = <PREFIX>-tokenizer
    workers: int = 1
    append_eod: bool = False
    overwrite: bool = False
    model: str | None = None  # a model config: its --vocab-size is the default for training

    def default_vocab_size(self) -> int:
        from benchlib.data.tokenizer import DEFAULT_VOCAB

        return self.vocab_size or model_vocab_size(self.model) or DEFAULT_VOCAB

    @property
    def trains_tokenizer(self) -> bool:
        return self.tokenizer is None

    def trained_tokenizer_dir(self) -> Path:
        return self.tokenizer_output or Path(f"{self.output_prefix}-tokenizer")


@dataclass(frozen=True)
class PrepareResult:
    documents: int
    tokens: int
    skipped_empty: int
    vocab_size: int
    token_dtype: str
    tokenizer_path: Path
    trained_tokenizer: bool
    eod_appended: bool
    prefix: Path
    empty_run_splits: tuple[str, ...] = ()  # splits of RUN_SPLIT that would get no document

    @property
    def bin_path(self) -> Path:
        return bin_path(self.prefix)

    @property
    def idx_path(self) -> Path:
        return idx_path(self.prefix)


def model_vocab_size(model: str | None) -> int | None:
    """The `--vocab-size` of a model config, or None (no model named, or it sets none)."""
    if not model or model.startswith("<"):
        return None
    from benchlib.config.model_config import load_model

    value = load_model(model).model_args.get("--vocab-size")
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _absolute(path: Path) -> Path:
    # Absolute, symlinks kept: the printed knobs must work from any directory (and on other nodes).
    return Path(os.path.abspath(os.path.expanduser(str(path))))


def normalize(opts: PrepareOptions) -> PrepareOptions:
    """Check the options before any work; make every path absolute."""
    prefix_text = str(opts.output_prefix)
    if not prefix_text or prefix_text.endswith(("/", os.sep)):
        raise BenchError(f"--output-prefix {prefix_text!r} names a folder, not a file prefix", hint="e.g. --output-prefix data/mycorpus (writes data/mycorpus.bin and .idx)")
    if prefix_text.endswith((".bin", ".idx")):
        raise BenchError(
            f"--output-prefix {prefix_text!r} ends in {prefix_text[-4:]}",
            hint=f"give the prefix without the suffix: --output-prefix {prefix_text[:-4]}",
        )
    if opts.tokenizer is not None and opts.vocab_size is not None:
        raise BenchError("--tokenizer and --vocab-size both given", hint="--vocab-size is for training a new tokenizer; an existing one has its own")
    if opts.tokenizer is not None and opts.tokenizer_output is not None:
        raise BenchError("--tokenizer-output is only used when a tokenizer is trained", hint="drop --tokenizer-output, or drop --tokenizer to train one")
    if opts.workers < 1:
        raise BenchError(f"--workers {opts.workers} must be at least 1")
    if not opts.text_key:
        raise BenchError("--text-key is empty", hint="name the JSON key that holds the text, e.g. --text-key text")
    out = PrepareOptions(
        input=_absolute(opts.input),
        output_prefix=_absolute(opts.output_prefix),
        text_key=opts.text_key,
        input_format=opts.input_format,
        tokenizer=None if opts.tokenizer is None else _absolute(opts.tokenizer),
        vocab_size=opts.vocab_size,
        tokenizer_output=None if opts.tokenizer_output is None else _absolute(opts.tokenizer_output),
        workers=opts.workers,
        append_eod=opts.append_eod,
        overwrite=opts.overwrite,
        model=opts.model,
    )
    model_vocab_size(out.model)  # an unknown --model fails here, before any work
    if out.input_format not in ("auto", "jsonl", "txt"):
        raise BenchError(f"--format {out.input_format!r} is not auto, jsonl or txt")
    corpus = Corpus(out.input, out.text_key, out.input_format)
    corpus.check()
    if out.trains_tokenizer and not corpus.rereadable:
        raise BenchError(
            f"{out.input} is not a regular file, and training a tokenizer reads the input twice",
            hint="pass a regular file, or pass --tokenizer with an existing tokenizer (then a pipe is read once)",
        )
    if out.tokenizer is not None:
        from benchlib.data.tokenizer import check_tokenizer_path

        check_tokenizer_path(out.tokenizer)
    else:
        from benchlib.data.tokenizer import check_vocab_size

        check_vocab_size(out.default_vocab_size())
        if out.trained_tokenizer_dir().exists() and not out.overwrite:
            folder = out.trained_tokenizer_dir()
            raise BenchError(
                f"tokenizer folder {folder} already exists",
                hint=f"reuse it with --tokenizer {folder}, choose another --tokenizer-output, or pass --overwrite",
            )
    for target in (out.output_prefix, out.trained_tokenizer_dir() if out.trains_tokenizer else None):
        if target is not None:
            _check_writable_parent(target)
    existing = [p for p in (bin_path(out.output_prefix), idx_path(out.output_prefix)) if p.exists()]
    if existing and not out.overwrite:
        raise BenchError(
            f"{', '.join(map(str, existing))} already exist{'s' if len(existing) == 1 else ''}",
            hint="choose another --output-prefix, or pass --overwrite to replace them",
        )
    return out


def _check_writable_parent(path: Path) -> None:
    """The folder that will hold `path` can be written (or created): checked, nothing created yet."""
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise BenchError(f"{folder} is a file, so {path.parent} cannot be a folder", hint="choose another --output-prefix")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise BenchError(f"folder {folder} is not writable", hint="choose an --output-prefix in a folder you can write")


def _train_tokenizer(corpus: Corpus, vocab_size: int):
    from benchlib.data.tokenizer import train_bpe

    failure: list[BaseException] = []

    def guarded():
        # A BenchError raised inside the Rust trainer's iterator would lose its message: keep it.
        try:
            yield from corpus.documents()
        except BenchError as err:
            failure.append(err)

    tok = train_bpe(guarded(), vocab_size)
    if failure:
        raise failure[0]
    return tok


def _empty_corpus(corpus: Corpus) -> BenchError:
    stats = corpus.stats
    what = f"{stats.lines} line(s), {stats.skipped_empty} empty document(s)" if stats.lines else "no lines"
    key = f" under key {corpus.text_key!r}" if corpus.is_jsonl else ""
    return BenchError(f"{corpus.path} has no non-empty document{key} ({what})", hint="give a corpus with text in it")


def _remove_stale_cache(prefix: Path, log: Callable[[str], None]) -> None:
    # Megatron caches its sample indices under <PREFIX>/cache/, keyed by the prefix and the run's
    # settings, not by the file contents: after replacing the data they would point into the old one.
    cache = prefix / "cache"
    if cache.is_dir():
        shutil.rmtree(cache)
        log(f"removed Megatron's index cache {cache} (it described the replaced data)")


def prepare(opts: PrepareOptions, log: Callable[[str], None] = print) -> PrepareResult:
    """Run the whole step; returns what was written."""
    import tempfile

    from benchlib.data.encode import encode_documents
    from benchlib.data.tokenizer import check_tokenizer_path, save_hf_folder
    from benchlib.megatron.tokenizer import load_megatron_tokenizer

    opts = normalize(opts)
    corpus = Corpus(opts.input, opts.text_key, opts.input_format)
    staging: Path | None = None
    try:
        if opts.trains_tokenizer:
            vocab = opts.default_vocab_size()
            log(f"training a byte-level BPE tokenizer (vocab size up to {vocab}) on {opts.input} ...")
            tok = _train_tokenizer(corpus, vocab)
            if corpus.stats.documents == 0:
                raise _empty_corpus(corpus)
            final_tok = opts.trained_tokenizer_dir()
            # Staged beside its final place; moved there once the dataset is written too.
            staging = Path(tempfile.mkdtemp(prefix=f".{final_tok.name}.", suffix=".tmp", dir=_mkparent(final_tok)))
            tokenizer_dir = staging / final_tok.name
            save_hf_folder(tok, tokenizer_dir)
        else:
            final_tok = tokenizer_dir = opts.tokenizer  # type: ignore[assignment]
        check_tokenizer_path(tokenizer_dir)
        tokenizer = load_megatron_tokenizer(tokenizer_dir)
        vocab_size = int(tokenizer.vocab_size)
        eod = None
        if opts.append_eod:
            eod = tokenizer.eod
            if eod is None:
                raise BenchError(f"the tokenizer at {final_tok} has no end-of-document (eos) token", hint="drop --append-eod, or use a tokenizer with an eos_token")
        log(f"tokenizing {opts.input} with {final_tok} (vocab size {vocab_size}) ...")
        stats = write_indexed(
            opts.output_prefix,
            _progress(encode_documents(corpus.documents(), tokenizer, tokenizer_dir, workers=opts.workers), log),
            vocab_size,
            eod=eod,
            before_commit=lambda: _check_documents(corpus),
        )
        if opts.overwrite:
            _remove_stale_cache(opts.output_prefix, log)
        if staging is not None:
            from benchlib.data.tokenizer import replace_folder

            replace_folder(tokenizer_dir, final_tok)
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    from benchlib.megatron.splits import empty_splits

    return PrepareResult(
        empty_run_splits=tuple(empty_splits(stats.documents)),
        documents=stats.documents,
        tokens=stats.tokens,
        skipped_empty=corpus.stats.skipped_empty + stats.skipped_no_tokens,
        vocab_size=vocab_size,
        token_dtype=stats.dtype,
        tokenizer_path=final_tok,
        trained_tokenizer=opts.trains_tokenizer,
        eod_appended=opts.append_eod,
        prefix=opts.output_prefix,
    )


def _progress(token_ids: Iterator[list[int]], log: Callable[[str], None], every_s: float = 30.0) -> Iterator[list[int]]:
    """Pass the ids through, with a line every `every_s` seconds on a long corpus."""
    start = last = time.monotonic()
    docs = tokens = 0
    for ids in token_ids:
        docs += 1
        tokens += len(ids)
        yield ids
        now = time.monotonic()
        if now - last >= every_s:
            last = now
            log(f"  {docs} documents, {tokens} tokens ({tokens / (now - start):.0f} tokens/s)")


def _mkparent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.parent


def _check_documents(corpus: Corpus) -> None:
    if corpus.stats.documents == 0:
        raise _empty_corpus(corpus)


def _padded(vocab: int, multiple: int = 128) -> int:
    # Megatron pads the vocabulary to a multiple of --make-vocab-size-divisible-by (128) x TP.
    return -(-vocab // multiple) * multiple


def usage_text(result: PrepareResult, *, model: str | None = None, cluster: str | None = None) -> str:
    """What was written, and the exact settings that train on it."""
    q = shlex.quote
    model_name = model or "<MODEL>"
    cluster_name = cluster or "<CLUSTER>"
    tok_how = "trained byte-level BPE" if result.trained_tokenizer else "given tokenizer"
    lines = [
        f"documents   {result.documents}" + (f" ({result.skipped_empty} empty skipped)" if result.skipped_empty else ""),
        f"tokens      {result.tokens}" + (" (end-of-document token appended to each)" if result.eod_appended else " (no end-of-document tokens: pass --append-eod to mark document boundaries)"),
        f"vocab size  {result.vocab_size} ({tok_how}; tokens stored as {result.token_dtype})",
        f"data        {result.bin_path}",
        f"            {result.idx_path}",
        f"tokenizer   {result.tokenizer_path}",
    ]
    if result.empty_run_splits:
        from benchlib.megatron.splits import RUN_SPLIT, min_documents

        lines += [
            "",
            f"warning: a DATA=real run cuts the data with --split {RUN_SPLIT}; with {result.documents} documents its",
            f"  {' and '.join(result.empty_run_splits)} split gets none, and Megatron-Core 0.19.2 then hangs while building it.",
            f"  Give at least {min_documents()} documents (e.g. one paragraph or line per document).",
        ]
    wanted = model_vocab_size(model)
    if wanted is not None and _padded(wanted) != _padded(result.vocab_size):
        lines += [
            "",
            f"note: {model_name} sets --vocab-size {wanted}, but with a tokenizer Megatron sizes the embedding and output",
            f"  layers from the tokenizer ({result.vocab_size}, padded to {_padded(result.vocab_size)}): a DATA=real run then differs",
            "  in shape and speed from DATA=mock. For comparable figures train with that vocab size (needs enough text).",
        ]
    lines += [
        "",
        "To train on it (DATA=real reads the cluster conf's DATA_PATH and TOKENIZER_MODEL):",
        f"  for one run:  DATA=real DATA_PATH={q(str(result.prefix))} TOKENIZER_MODEL={q(str(result.tokenizer_path))} MODEL={model_name} bash interactive_benchmarking.sh",
        f"  or for every run of a model, in cluster_configs/benchmarking/{cluster_name}.conf:",
        f"    [{model_name}]",
        f"    DATA_PATH={result.prefix}",
        f"    TOKENIZER_MODEL={result.tokenizer_path}",
        "  then run with DATA=real.",
        f"  Megatron flags: --data-path {q(str(result.prefix))} --tokenizer-type HuggingFaceTokenizer --tokenizer-model {q(str(result.tokenizer_path))}",
    ]
    return "\n".join(lines)
