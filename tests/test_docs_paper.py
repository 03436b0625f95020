"""The commands docs/paper.md shows, each run and checked by its program's rule (tests/docs_harness.py;
which module runs which doc file's commands: `DOC_MODULES` there)."""

from __future__ import annotations

import pytest
from docs_harness import DocCommand, Docs, case_id, check_documented_command, module_cases


@pytest.mark.slow
@pytest.mark.parametrize("cmd", module_cases(__name__), ids=case_id)
def test_documented_command(cmd: DocCommand, docs: Docs):
    check_documented_command(cmd, docs)
