"""Train a byte-level BPE tokenizer, save it as a Hugging Face folder, load it as Megatron does.

The folder holds `tokenizer.json` + `tokenizer_config.json` (class PreTrainedTokenizerFast), so
`transformers.AutoTokenizer.from_pretrained(folder)` loads it offline, and with it Megatron's
`--tokenizer-type HuggingFaceTokenizer --tokenizer-model <folder>`.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable

from benchlib.core.errors import BenchError

EOD_TOKEN = "<|endoftext|>"  # end of document; also BOS, as in GPT-2
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS = (EOD_TOKEN, PAD_TOKEN)
BYTE_ALPHABET = 256  # byte-level BPE starts from every byte: nothing is ever unknown
MIN_VOCAB = BYTE_ALPHABET + len(SPECIAL_TOKENS)
DEFAULT_VOCAB = 32768


def check_vocab_size(vocab_size: int) -> None:
    if vocab_size < MIN_VOCAB:
        raise BenchError(
            f"--vocab-size {vocab_size} is too small for a byte-level BPE tokenizer",
            hint=f"use at least {MIN_VOCAB} (256 bytes + {len(SPECIAL_TOKENS)} special tokens); 32768 is a usual choice",
        )


def train_bpe(documents: Iterable[str], vocab_size: int) -> Any:
    """A `tokenizers.Tokenizer` trained on the documents (streamed; Rust keeps only word counts)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    check_vocab_size(vocab_size)
    tok = Tokenizer(models.BPE())
    # No normalizer: the text's bytes are kept exactly, so decode(encode(doc)) == doc.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=sys.stderr.isatty(),  # the trainer's own progress bars, on a terminal only
    )
    tok.train_from_iterator(documents, trainer=trainer)
    return tok


def hf_config() -> dict[str, Any]:
    """tokenizer_config.json: written by hand so that transformers 4.x (cluster containers) and 5.x load it."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": EOD_TOKEN,
        "eos_token": EOD_TOKEN,
        "pad_token": PAD_TOKEN,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,  # keep decode exact: no " ." -> "." rewriting
        "model_max_length": 1 << 30,  # sequence length is Megatron's business, not the tokenizer's
    }


def save_hf_folder(tok: Any, folder: Path) -> None:
    """Write the tokenizer as a Hugging Face folder into a new folder (a staging place; see replace_folder)."""
    folder = Path(folder)
    folder.mkdir(parents=True)
    tok.save(str(folder / "tokenizer.json"))
    config = hf_config()
    special = {k: config[k] for k in ("bos_token", "eos_token", "pad_token")}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    for path in (folder, *folder.iterdir()):
        os.chmod(path, 0o755 if path.is_dir() else 0o644)


def replace_folder(src: Path, dst: Path) -> None:
    """Move a finished folder onto `dst` (same filesystem), replacing an old one by rename."""
    if dst.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".old", dir=dst.parent))
        os.replace(dst, old / dst.name)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


def check_tokenizer_path(path: Path) -> None:
    if not path.exists():
        raise BenchError(
            f"tokenizer path {path} does not exist",
            hint="pass --tokenizer with a local Hugging Face tokenizer folder (tokenizer.json / tokenizer_config.json), "
            "or leave it out and pass --vocab-size to train one on the corpus",
        )
    if path.is_file():
        raise BenchError(
            f"--tokenizer {path} is a file; a Hugging Face tokenizer is loaded from its folder",
            hint=f"pass the folder that holds it: --tokenizer {path.parent}",
        )
    if path.is_dir() and not any((path / name).exists() for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")):
        raise BenchError(
            f"{path} does not look like a Hugging Face tokenizer folder (no tokenizer.json, tokenizer_config.json, vocab.json or tokenizer.model)",
            hint="point --tokenizer at the folder a tokenizer's save_pretrained() wrote",
        )
