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
    """Every docs/ link of the README names a file, and its #anchor (if any) one of that file's headings."""
    for link in re.findall(r"\]\((docs/[^)]+)\)", README):
        path, _, anchor = link.partition("#")
        assert (REPO / path).is_file(), link
        if anchor:
            headings = re.findall(r"^#+ (.+)$", (REPO / path).read_text(), re.M)
            slugs = {re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-") for h in headings}
            assert anchor in slugs, (link, sorted(slugs))
