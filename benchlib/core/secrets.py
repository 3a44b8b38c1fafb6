"""Secrets: which variables are secret, and redaction of anything printed or written.

A secret is read by the job at run time from its own environment (Slurm exports the
submitter's environment); it is never rendered into a script, manifest or command line.
"""
from __future__ import annotations

import os
import re
from typing import Iterable, Mapping

SECRET_NAMES: tuple[str, ...] = ("WANDB_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "NGC_API_KEY")
_SECRET_PATTERN = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD)$")
REDACTED = "<redacted>"


def is_secret_name(name: str) -> bool:
    return name in SECRET_NAMES or bool(_SECRET_PATTERN.search(name.upper()))


def secret_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values of secret variables in the environment (long enough to be worth redacting)."""
    env = os.environ if environ is None else environ
    return sorted({v for k, v in env.items() if is_secret_name(k) and v and len(v) >= 4}, key=len, reverse=True)


def redact(text: str, environ: Mapping[str, str] | None = None, extra: Iterable[str] = ()) -> str:
    for value in [*secret_values(environ), *extra]:
        text = text.replace(value, REDACTED)
    return text


def assert_no_secrets(text: str, where: str, environ: Mapping[str, str] | None = None) -> None:
    """Last line of defence before a file is written: refuse to write a secret's value."""
    for value in secret_values(environ):
        if value in text:
            raise RuntimeError(f"refusing to write {where}: it contains the value of a secret variable")
