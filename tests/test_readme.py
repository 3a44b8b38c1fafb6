"""The README stays true: its knob table is generated from knobs.py, its commands exist."""
from __future__ import annotations

import re
from pathlib import Path

from benchlib.config.knobs import knob_markdown_table

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()


def test_knob_table_matches_knobs_py():
    block = re.search(r"<!-- knobs:start -->\n(.*?)<!-- knobs:end -->", README, re.S)
    assert block, "README lacks the knobs block"
    assert block.group(1).strip() == knob_markdown_table().strip(), "regenerate: .venv/bin/python tests/sync_readme.py"


def test_readme_test_command_is_what_ci_runs():
    assert "bash tests/run.sh" in README
    assert "bash tests/run.sh" in (REPO / ".ci" / "run").read_text()


def test_linked_docs_exist():
    for link in re.findall(r"\]\((docs/[^)]+)\)", README):
        assert (REPO / link).is_file(), link
