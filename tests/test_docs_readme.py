"""The documented commands of README.md's pipeline and development sections, docs/cluster.md: each run and checked by its program's rule
(tests/docs_harness.py; `DOC_MODULES` there says which module runs which commands)."""

from __future__ import annotations

from typing import Any

import pytest
from docs_harness import DocCommand, Docs, case_id, check_documented_command, module_cases, python_blocks


@pytest.mark.slow
@pytest.mark.parametrize("cmd", module_cases(__name__), ids=case_id)
def test_documented_command(cmd: DocCommand, docs: Docs):
    check_documented_command(cmd, docs)


@pytest.mark.slow
def test_readme_library_snippet_runs():
    """README.md's library example, extracted from the README and run as written."""
    blocks = python_blocks("README.md")
    assert blocks, "README.md has no ```python block"
    namespace: dict[str, Any] = {"__name__": "readme"}
    for block in blocks:
        exec(compile("\n".join(block.lines), f"README.md:{block.line}", "exec"), namespace)
    assert namespace["out"].shape[-1] > 0  # generated under the edit
    effects = namespace["effects"].table
    assert {"delta_concept", "delta_control"} <= set(effects.columns) and len(effects) > 0
