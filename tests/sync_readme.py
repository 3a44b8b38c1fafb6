"""Rewrite the README's knob table from benchlib/config/knobs.py: .venv/bin/python tests/sync_readme.py"""
from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from benchlib.config.knobs import knob_markdown_table  # noqa: E402

readme = REPO / "README.md"
text = readme.read_text()
new = re.sub(r"(<!-- knobs:start -->\n).*?(<!-- knobs:end -->)", lambda m: m.group(1) + knob_markdown_table() + "\n" + m.group(2), text, flags=re.S)
readme.write_text(new)
print("README knob table updated")
