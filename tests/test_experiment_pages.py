"""The pages experiments/reproduce_embedded.py rewrites keep the sections other commands own."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "experiments" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_reproduce_page_keeps_every_owned_section_in_order():
    repro = _script("reproduce_embedded")
    protocols = "<!-- protocols:start -->\n## A\n1 | 2\n<!-- protocols:end -->"
    notes = "<!-- protocols_notes:start -->\nprose about A\n<!-- protocols_notes:end -->"
    atlas = "<!-- atlas:start -->\n## B\n<!-- where:end -->\n<!-- atlas:end -->"
    page = "\n\n".join(
        ["# old tables (rewritten)", protocols, "loose prose (dropped)", notes, atlas, "<!-- open:start -->\nno end"]
    )
    assert repro.kept_blocks(page) == [protocols, notes, atlas]
    # the blocks of the published page, none lost
    published = (REPO / "docs" / "results.md").read_text()
    names = [m.group("name") for m in repro.OWNED_BLOCK.finditer(published)]
    assert names and all(published.count(f"<!-- {n}:start -->") == 1 for n in names)
    assert published.count(":start -->") == len(names)
