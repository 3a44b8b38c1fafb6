"""Checks on what a user typed that are not about one knob's value: near-miss knob names in the
environment, the job name's characters, and the lengths Slurm and the file system accept.

All run before the run directory exists, so a refusal leaves nothing behind.
"""
from __future__ import annotations

import difflib
import re
import unicodedata
from pathlib import Path
from typing import Iterable, Mapping

from benchlib.core.errors import BenchError

# slurmctld refuses a job whose comment or name is longer than this (bytes), with
# "Pathname of a file, directory or other parameter too long"; paths are limited to PATH_MAX.
SLURM_MAX_COMMENT = 1024
SLURM_MAX_JOB_NAME = 1024
PATH_MAX = 4095
NAME_MAX = 255  # one path component
# Long names for the parallel sizes, as other tools spell them (EXPERT_PARALLEL, TENSOR_MODEL_PARALLEL_SIZE).
_LONG_FORM = re.compile(r"^(EXPERT_TENSOR|VIRTUAL_PIPELINE|TENSOR|PIPELINE|EXPERT|CONTEXT)(_MODEL)?_PARALLEL(ISM)?(_SIZE|_DEGREE)?$")
_LONG_FORM_KNOB = {"EXPERT_TENSOR": "ETP", "VIRTUAL_PIPELINE": "VPP", "TENSOR": "TP", "PIPELINE": "PP", "EXPERT": "EP", "CONTEXT": "CP"}
_BATCH_FORM = re.compile(r"^(MICRO|GLOBAL)_?BATCH(_SIZE)?$")
# Letters NFKD does not decompose into ASCII, spelt as readers would.
_LATIN_EXTRA = {"ß": "ss", "æ": "ae", "Æ": "AE", "ø": "o", "Ø": "O", "œ": "oe", "Œ": "OE", "ł": "l", "Ł": "L",
                "đ": "d", "Đ": "D", "ð": "d", "Ð": "D", "þ": "th", "Þ": "Th", "ı": "i"}


def meant_knob(name: str, knob_names: Iterable[str]) -> str | None:
    """The knob an environment variable's name was probably meant to be, or None."""
    knobs = tuple(knob_names)
    upper = name.upper()
    if upper in knobs:
        return upper if upper != name else None  # lower or mixed case of a knob
    m = _LONG_FORM.match(upper)
    if m:
        return _LONG_FORM_KNOB[m.group(1)]
    m = _BATCH_FORM.match(upper)
    if m:
        return "MBS" if m.group(1) == "MICRO" else "GBS"
    if len(upper) < 3:
        return None
    close = difflib.get_close_matches(upper, knobs, n=1, cutoff=0.8)
    return close[0] if close else None


def near_miss_env_warnings(environ: Mapping[str, str], knob_names: Iterable[str], other_keys: Iterable[str]) -> list[str]:
    """One line per environment variable that looks like a knob but is not one (it is ignored)."""
    knobs = tuple(knob_names)
    taken = set(knobs) | set(other_keys)
    out = []
    for name in sorted(environ):
        if name in taken:
            continue
        meant = meant_knob(name, knobs)
        if meant and meant not in environ:
            out.append(f"warning: environment variable {name} is not a knob and is ignored; did you mean {meant}? (export {meant}=...)")
    return out


def ascii_name(text: str) -> str:
    """Text for a Slurm job name: accents stripped (é -> e), other letters spelt out, the rest '_'."""
    out = []
    for ch in unicodedata.normalize("NFKD", text):
        if unicodedata.combining(ch):
            continue
        if ch.isascii():
            out.append(ch)
        elif ch in _LATIN_EXTRA:
            out.append(_LATIN_EXTRA[ch])
        elif ch.isalnum():
            out.append(f"u{ord(ch):04x}")  # a letter with no Latin spelling: its code point, not nothing
        else:
            out.append(" ")  # a symbol: becomes '_' with its neighbours below
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", "".join(out))


def check_slurm_lengths(job_name: str, comment: str, run_dir: Path) -> None:
    """Refuse names and paths Slurm or the file system would refuse, before anything is written."""
    comment_bytes = len(comment.encode())
    if comment_bytes > SLURM_MAX_COMMENT:
        raise BenchError(
            f"COMMENT is {comment_bytes} bytes; Slurm refuses a job comment over {SLURM_MAX_COMMENT}",
            hint=f"shorten COMMENT to at most {SLURM_MAX_COMMENT} bytes (it also goes into the job name, shortened)",
        )
    if len(job_name.encode()) > SLURM_MAX_JOB_NAME:
        raise BenchError(f"the job name is over Slurm's {SLURM_MAX_JOB_NAME} bytes", hint="shorten COMMENT or MODEL")
    for part in run_dir.parts:
        if len(part.encode()) > NAME_MAX:
            raise BenchError(
                f"the run directory's name component {part[:60]!r}... is {len(part.encode())} bytes; the file system allows {NAME_MAX}",
                hint="shorten COMMENT, or OUTPUT_ROOT's folder names",
            )
    longest = run_dir / "logs" / "slurm-0000000000.out"
    if len(str(longest).encode()) > PATH_MAX:
        raise BenchError(
            f"the run directory's path is {len(str(run_dir).encode())} bytes; its files would pass the system's {PATH_MAX}",
            hint="use a shorter OUTPUT_ROOT in the cluster conf (or the environment)",
        )
