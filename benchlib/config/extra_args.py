"""Extra Megatron arguments checked at launch, against Megatron-Core's own flag list, without Megatron.

`megatron_flags.json` (beside this file) is Megatron-Core's parser as data: every option string,
how many values it takes, and its type and choices where argparse checks them. It is generated
from the parser `megatron.training.arguments` builds (`python -m benchlib.megatron.flag_table
--write`), and a test regenerates it and compares, so it cannot drift from the pinned Megatron.

What is refused here, in milliseconds, is what Megatron's argparse would refuse on the GPUs once the
job ran: an unknown flag (with "did you mean"), a word that belongs to no flag (`tp=2`: a knob
written after the first `--flag`, or in lower case), a missing value, a value of the wrong type
or outside the flag's choices.
"""
from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

from benchlib.core.errors import BenchError, did_you_mean
from benchlib.config.knobs import KNOB_NAMES

FLAG_TABLE_PATH = Path(__file__).with_name("megatron_flags.json")
_NEGATIVE_NUMBER = re.compile(r"-\d+(\.\d+)?([eE][-+]?\d+)?|-\.\d+([eE][-+]?\d+)?|-inf|-nan")
_KEY_VALUE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", re.S)


@functools.lru_cache(maxsize=1)
def flag_table() -> dict[str, Any]:
    """The shipped table: {'megatron_core': version, 'flags': {option: {nargs, type?, choices?}}}."""
    try:
        return json.loads(FLAG_TABLE_PATH.read_text())
    except (OSError, ValueError) as err:
        raise BenchError(
            f"Megatron's flag list {FLAG_TABLE_PATH} cannot be read ({err})",
            hint="regenerate it where Megatron-Core is installed: python -m benchlib.megatron.flag_table --write",
        ) from None


def megatron_version() -> str:
    return str(flag_table().get("megatron_core", "?"))


def known_flags() -> dict[str, dict[str, Any]]:
    return flag_table()["flags"]


def _is_option(token: str) -> bool:
    """`--x` or `-x` is an option; `-1`, `-0.5`, `-1e-4` are (negative) values."""
    return token.startswith("-") and len(token) > 1 and not _NEGATIVE_NUMBER.fullmatch(token)


def unknown_flag_error(flag: str, where: str) -> BenchError:
    suggestion = did_you_mean(flag, list(known_flags()))
    return BenchError(
        f"{where} {flag} is not a Megatron-Core {megatron_version()} flag{suggestion}; "
        f"its parser would stop the job with 'unrecognized arguments: {flag}'",
        hint=f"fix the spelling or remove the flag (every flag Megatron knows is in {FLAG_TABLE_PATH.name}, "
        "benchlib/config/)",
    )


def _knob_in(word: str) -> str | None:
    """The knob a word like `tp=2`, `EP=2` or `tp` was meant to set, or None."""
    m = _KEY_VALUE.match(word)
    key = (m.group(1) if m else word).upper()
    return key if key in KNOB_NAMES else None


def stray_word_error(word: str, after: str | None) -> BenchError:
    position = f"after {after}" if after else "before any --flag"
    knob = _knob_in(word)
    m = _KEY_VALUE.match(word)
    if knob:
        value = m.group(2) if m else "..."
        case_note = "" if (m.group(1) if m else word) == knob else " (knob names are upper case)"
        return BenchError(
            f"{word!r} in the extra Megatron arguments ({position}) is not a Megatron argument: it looks like the knob {knob}",
            hint=f"write {knob}={value}{case_note}, and put KEY=VALUE knobs before the first --flag",
        )
    if m:
        return BenchError(
            f"{word!r} in the extra Megatron arguments ({position}) is not a Megatron argument and not a knob"
            f"{did_you_mean(m.group(1).upper(), KNOB_NAMES)}",
            hint="KEY=VALUE knobs (upper case, `benchlib knobs` lists them) must come before the first --flag",
        )
    return BenchError(
        f"{word!r} in the extra Megatron arguments ({position}) belongs to no flag",
        hint="remove the stray word, or give it the --flag it is a value of; KEY=VALUE knobs must come before the first --flag",
    )


def _check_value(flag: str, spec: dict[str, Any], value: str) -> None:
    knob = _knob_in(value) if _KEY_VALUE.match(value) else None
    if knob and (spec.get("type") or spec.get("choices")):
        raise BenchError(
            f"{flag} got {value!r} as its value: that looks like the knob {knob}",
            hint=f"give {flag} its value, and put {knob}=... before the first --flag (KEY=VALUE knobs come first)",
        )
    kind = spec.get("type")
    if kind == "int":
        try:
            int(value)
        except ValueError:
            raise BenchError(f"{flag} takes a whole number, not {value!r}", hint=f"e.g. {flag} 2") from None
    elif kind == "float":
        try:
            float(value)
        except ValueError:
            raise BenchError(f"{flag} takes a number, not {value!r}", hint=f"e.g. {flag} 1e-4") from None
    choices = spec.get("choices")
    if choices and value not in choices:
        raise BenchError(
            f"{flag} {value!r} is not one of Megatron's choices{did_you_mean(value, choices)}",
            hint=f"{flag} takes one of: {', '.join(choices)}",
        )


def check_extra_args(tokens: list[str]) -> None:
    """Refuse extra arguments that Megatron-Core's parser would refuse, in the suite's words."""
    flags = known_flags()
    last_flag: str | None = None  # the flag (and values) a stray word follows, for the message
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if not _is_option(tok):
            raise stray_word_error(tok, last_flag)
        name, eq, inline = tok.partition("=")
        spec = flags.get(name)
        if spec is None:
            raise unknown_flag_error(name, "extra argument")
        nargs = spec["nargs"]
        i += 1
        last_flag = tok
        if eq:  # --flag=value: exactly one value, and the flag must take one
            if nargs == 0:
                raise BenchError(f"{name} takes no value, but got {tok!r}", hint=f"write {name} alone")
            _check_value(name, spec, inline)
            continue
        values: list[str] = []
        limit = {0: 0, "?": 1, "*": None, "+": None}.get(nargs, nargs)
        while i < len(tokens) and not _is_option(tokens[i]) and (limit is None or len(values) < limit):
            if nargs in ("?", "*", "+") and _KEY_VALUE.match(tokens[i]) and _knob_in(tokens[i]):
                break  # `--moe-aux-loss-coeff 1e-4 EP=2`: a knob written after the flags, not a value
            values.append(tokens[i])
            i += 1
        need = {"+": 1, "*": 0, "?": 0}.get(nargs, nargs)
        if len(values) < need:
            raise BenchError(
                f"{name} needs {need if isinstance(nargs, int) else 'at least one'} value{'s' if need != 1 else ''}, got {len(values)}",
                hint=f"e.g. {name} VALUE",
            )
        for value in values:
            _check_value(name, spec, value)
        last_flag = " ".join([tok, *values])


def check_model_flags(flag_lines: dict[str, int], path: Path) -> None:
    """Refuse a model config flag Megatron does not know, naming the file and line."""
    flags = known_flags()
    for flag, line in flag_lines.items():
        if flag not in flags:
            raise unknown_flag_error(flag, f"{path}:{line}: model config flag")
