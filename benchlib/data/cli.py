"""`benchlib data prepare`: see docs/data.md."""
from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="prepare real data: tokenizer + Megatron indexed dataset")
    actions = data.add_subparsers(dest="data_action", metavar="ACTION")
    data.set_defaults(func=lambda args: (data.print_help(), 2)[1])

    p = actions.add_parser(
        "prepare",
        help="tokenize a .jsonl/.txt corpus into <PREFIX>.bin/.idx (training a byte-level BPE tokenizer, or with a local one)",
        description="Train a byte-level BPE tokenizer on a corpus (or take a local Hugging Face tokenizer folder) "
        "and write Megatron's indexed dataset <PREFIX>.bin/.idx. Works without internet.",
    )
    p.add_argument("--input", required=True, type=Path, metavar="FILE", help=".jsonl (one JSON object per line) or .txt (one document per line)")
    p.add_argument("--format", dest="input_format", choices=("auto", "jsonl", "txt"), default="auto", help="input format; auto: .jsonl/.json/.ndjson are JSON lines, anything else text (default auto)")
    p.add_argument("--text-key", default="text", help="JSON key holding the document text (default: text)")
    tok = p.add_mutually_exclusive_group()
    tok.add_argument("--tokenizer", type=Path, metavar="PATH", help="local Hugging Face tokenizer folder to use instead of training one")
    tok.add_argument("--vocab-size", type=int, metavar="N", help="vocabulary size of the tokenizer to train (default: --model's, else 32768)")
    p.add_argument("--tokenizer-output", type=Path, metavar="DIR", help="where the trained tokenizer goes (default: <PREFIX>-tokenizer)")
    p.add_argument("--output-prefix", required=True, type=Path, metavar="PREFIX", help="writes PREFIX.bin and PREFIX.idx")
    p.add_argument("--workers", type=int, default=1, help="tokenizing processes (default 1)")
    p.add_argument("--append-eod", action="store_true", help="end every document with the end-of-document token (usual for GPT pretraining)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing PREFIX.bin/.idx (and trained tokenizer folder)")
    p.add_argument("--model", help="model config the data is for: shown in the printed settings; its --vocab-size is the default for training")
    p.add_argument("--cluster", help="cluster conf name to show in the printed settings")
    p.set_defaults(func=prepare_command)


def _sigterm_to_exit(signum: int, frame: object) -> None:
    # Slurm and `kill` send SIGTERM: unwind so the temp files are removed, as on Ctrl-C.
    raise SystemExit(128 + signum)


def prepare_command(args: argparse.Namespace) -> int:
    # A local tokenizer folder needs no Hub; make sure nothing tries (set before transformers loads).
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from benchlib.data.prepare import PrepareOptions, prepare, usage_text

    opts = PrepareOptions(
        input=args.input,
        output_prefix=args.output_prefix,
        text_key=args.text_key,
        input_format=args.input_format,
        tokenizer=args.tokenizer,
        vocab_size=args.vocab_size,
        tokenizer_output=args.tokenizer_output,
        workers=args.workers,
        append_eod=args.append_eod,
        overwrite=args.overwrite,
        model=args.model,
    )
    previous = signal.signal(signal.SIGTERM, _sigterm_to_exit)
    try:
        result = prepare(opts, log=lambda msg: print(msg, flush=True))
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(usage_text(result, model=args.model, cluster=args.cluster))
    return 0
