"""Megatron-Core's command-line flags as data, for the login node's launch check.

The login-node parts never import Megatron (tests/layering.py), yet every launch checks its extra
arguments against Megatron's own parser. So the parser's option strings are written once, from
the parser `megatron.training.arguments` builds, to `benchlib/config/megatron_flags.json`, and
tests/test_extra_args.py regenerates the table and compares: a Megatron upgrade that changes a
flag fails until the file is regenerated with

    python -m benchlib.megatron.flag_table --write
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from benchlib.config.extra_args import FLAG_TABLE_PATH

# argparse actions that take no value on the command line
_NO_VALUE_ACTIONS = (
    argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._StoreConstAction,
    argparse._CountAction, argparse._HelpAction, argparse._VersionAction, argparse._AppendConstAction,
)
_TYPE_NAMES = {int: "int", float: "float"}


def megatron_parser() -> argparse.ArgumentParser:
    """The parser `megatron.training.arguments.parse_args` builds (without parsing anything)."""
    from megatron.training.arguments import add_megatron_arguments

    parser = argparse.ArgumentParser(description="Megatron-LM Arguments", allow_abbrev=False)
    return add_megatron_arguments(parser)


def _nargs(action: argparse.Action) -> int | str:
    """0 (a bare flag), 1 (one value), an exact count, or '?', '*', '+'."""
    if isinstance(action, _NO_VALUE_ACTIONS) or action.nargs == 0:
        return 0
    if isinstance(action, argparse.BooleanOptionalAction):
        return 0
    if action.nargs is None:
        return 1
    return action.nargs


def _choices(action: argparse.Action) -> list[str] | None:
    if action.choices is None:
        return None
    try:
        return sorted(str(c) for c in action.choices)
    except TypeError:
        return None


def build_table() -> dict[str, Any]:
    from importlib import metadata

    flags: dict[str, dict[str, Any]] = {}
    for action in megatron_parser()._actions:
        for option in action.option_strings:
            entry: dict[str, Any] = {"dest": action.dest, "nargs": _nargs(action)}
            type_name = _TYPE_NAMES.get(action.type)  # type: ignore[arg-type]
            if type_name and entry["nargs"] != 0:
                entry["type"] = type_name
            choices = _choices(action)
            if choices is not None and entry["nargs"] != 0:
                entry["choices"] = choices
            flags[option] = entry
    version = metadata.version("megatron-core").split("+")[0]
    return {
        "megatron_core": version,
        "generated_by": "python -m benchlib.megatron.flag_table --write",
        "flags": dict(sorted(flags.items())),
    }


def render_table(table: dict[str, Any]) -> str:
    """One flag a line, so a Megatron upgrade's diff reads flag by flag."""
    head = {k: v for k, v in table.items() if k != "flags"}
    lines = [f" {json.dumps(k)}: {json.dumps(v)}," for k, v in head.items()]
    body = [f"  {json.dumps(flag)}: {json.dumps(spec, sort_keys=True)}" for flag, spec in table["flags"].items()]
    return "{\n" + "\n".join(lines) + '\n "flags": {\n' + ",\n".join(body) + "\n }\n}\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchlib.megatron.flag_table", description=__doc__.splitlines()[0])
    p.add_argument("--write", action="store_true", help=f"write {FLAG_TABLE_PATH.name} (default: print it)")
    args = p.parse_args(argv)
    text = render_table(build_table())
    if args.write:
        from benchlib.core.rundir import atomic_write

        atomic_write(FLAG_TABLE_PATH, text, check_secrets=False)  # flag names, no values
        print(f"wrote {FLAG_TABLE_PATH}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
