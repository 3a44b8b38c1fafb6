"""Megatron's own tokenizer loading, as a run with `--tokenizer-type HuggingFaceTokenizer` does it."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from benchlib.core.errors import BenchError


def load_megatron_tokenizer(path: Path) -> Any:
    """The tokenizer exactly as a run builds it for `--tokenizer-type HuggingFaceTokenizer`."""
    import warnings

    with warnings.catch_warnings():
        # Importing megatron.core warns about Transformer Engine / Apex; irrelevant to tokenizing.
        warnings.simplefilter("ignore", UserWarning)
        from megatron.core.tokenizers import MegatronTokenizer

    try:
        # Same call and arguments as megatron.core.tokenizers.utils.build_tokenizer for
        # HuggingFaceTokenizer with Megatron's default flags.
        return MegatronTokenizer.from_pretrained(
            tokenizer_path=str(path),
            metadata_path={"library": "huggingface"},
            chat_template=None,
            vocab_file=None,
            merges_file=None,
            additional_special_tokens=[],
            use_fast=True,
            trust_remote_code=False,
            include_special_tokens=True,
        )
    except (ValueError, OSError) as err:
        raise BenchError(
            f"could not load the tokenizer at {path}: {err}",
            hint="it must be a Hugging Face tokenizer folder that AutoTokenizer loads without internet",
        ) from None


def hf_backend(megatron_tokenizer: Any) -> Any:
    """The transformers tokenizer inside Megatron's wrapper (what its `tokenize` calls per text)."""
    return megatron_tokenizer._tokenizer.tokenizer
