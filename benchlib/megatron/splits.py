"""Documents per train/valid/test split, as Megatron cuts a dataset with `--split`.

Megatron-Core 0.19.2 loops forever building a split that has weight but no document (its
epoch count grows until the tokens it wants are reached, and an empty split has none), even
when no sample is asked of it (`--eval-iters 0`). So `prepare` says so when the corpus is too
small for the split a DATA=real run renders.
"""
from __future__ import annotations

from benchlib.config.flags import RUN_SPLIT  # what a DATA=real run renders
SPLIT_NAMES = ("train", "valid", "test")


def documents_per_split(num_documents: int, split: str = RUN_SPLIT) -> list[int | None]:
    """Documents each split gets (None: the split has no weight, Megatron builds nothing)."""
    from megatron.core.datasets.blended_megatron_dataset_config import (
        convert_split_vector_to_split_matrix,
        parse_and_normalize_split,
    )

    matrix = convert_split_vector_to_split_matrix(parse_and_normalize_split(split))
    counts: list[int | None] = []
    for bounds in matrix:
        if bounds is None:
            counts.append(None)
        else:  # the same rounding as BlendedMegatronDatasetBuilder._build_megatron_dataset_splits
            counts.append(int(round(bounds[1] * float(num_documents))) - int(round(bounds[0] * float(num_documents))))
    return counts


def empty_splits(num_documents: int, split: str = RUN_SPLIT) -> list[str]:
    """Names of the splits that have weight but get no document."""
    return [name for name, n in zip(SPLIT_NAMES, documents_per_split(num_documents, split)) if n == 0]


def min_documents(split: str = RUN_SPLIT, limit: int = 1_000_000) -> int:
    """The fewest documents with no empty weighted split."""
    n = 1
    while empty_splits(n, split) and n < limit:
        n += 1
    return n
