"""Reader for the suite's `.conf` files: `KEY=VALUE` lines, `#` comments, `[section]` headers.

Values follow shell quoting (`KEY="a b"`), but nothing is executed or expanded here: a conf
file is data. `${VAR}` / `~` expansion, where a key allows it, is done by the caller.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from benchlib.core.errors import BenchError

_LINE = re.compile(r"^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$")
_SECTION = re.compile(r"^\[([^\]]+)\]$")


@dataclass
class ConfEntry:
    value: str
    line: int


@dataclass
class ConfFile:
    path: Path
    # section name ("" for the top) -> key -> entry
    sections: dict[str, dict[str, ConfEntry]] = field(default_factory=dict)

    def where(self, section: str, key: str) -> str:
        entry = self.sections[section][key]
        return f"{self.path}:{entry.line}"


def read_conf(path: Path) -> ConfFile:
    if not path.is_file():
        raise BenchError(f"config file not found: {path}")
    conf = ConfFile(path=path, sections={"": {}})
    section = ""
    for lineno, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _SECTION.match(line)
        if m:
            section = m.group(1).strip()
            if section in conf.sections:
                raise BenchError(f"{path}:{lineno}: section [{section}] appears twice", hint="merge the two sections")
            conf.sections[section] = {}
            continue
        m = _LINE.match(line)
        if not m:
            raise BenchError(f"{path}:{lineno}: expected KEY=VALUE, got {raw!r}", hint="write one KEY=VALUE per line")
        key, rest = m.group(1), m.group(2)
        try:
            words = shlex.split(rest, comments=True)
        except ValueError as err:
            raise BenchError(f"{path}:{lineno}: cannot parse the value of {key}: {err}", hint="check the quotes") from None
        if len(words) > 1:
            raise BenchError(
                f"{path}:{lineno}: the value of {key} has several words: {rest.strip()}",
                hint=f'quote it: {key}="{" ".join(words)}"',
            )
        if key in conf.sections[section]:
            raise BenchError(f"{path}:{lineno}: {key} is set twice in [{section or 'top'}]", hint="keep one")
        conf.sections[section][key] = ConfEntry(words[0] if words else "", lineno)
    return conf
