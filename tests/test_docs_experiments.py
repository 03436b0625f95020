"""The documented commands of experiments/README.md's offline section, README.md's findings, docs/results.md,
docs/ARCHITECTURE.md: each run and checked by its program's rule
(tests/docs_harness.py; `DOC_MODULES` there says which module runs which commands)."""

from __future__ import annotations

import pytest
from docs_harness import DocCommand, Docs, case_id, check_documented_command, module_cases


@pytest.mark.slow
@pytest.mark.parametrize("cmd", module_cases(__name__), ids=case_id)
def test_documented_command(cmd: DocCommand, docs: Docs):
    check_documented_command(cmd, docs)
