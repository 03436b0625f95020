"""The docs-commands harness (tests/docs_harness.py) tested, and the docs' Python sketches checked
(issue 19).

The documented commands themselves are cases of a few test modules, by doc file and section
(`DOC_MODULES`: tests/test_docs_readme.py, test_docs_experiments.py, test_docs_paper.py); README.md's
library example runs in tests/test_docs_readme.py.

Python blocks other than README.md's (docs/ARCHITECTURE.md, docs/protocol.md) are API sketches, not
programs (`-> Tensor` annotations, `...` arguments): every name they call must exist in the package,
a variable assigned from a call takes its return annotation's type, and the attributes used on it and
the keyword arguments of every call must exist. docs/cluster.md's ```yaml block (a machine-local
config) is not checked.
"""

from __future__ import annotations

import builtins
import importlib
import inspect
import pkgutil
import re
from pathlib import Path
from typing import Any

import pytest
from docs_harness import (
    COMMANDS,
    DOC_FILES,
    DOC_MODULES,
    PLACEHOLDER,
    Composer,
    Fence,
    command_tokens,
    covering_jobs,
    fenced_commands,
    inline_commands,
    kind,
    make_as_python,
    module_cases,
    module_names,
    module_of,
    needs_hub,
    python_blocks,
    selection_free,
    shrink_overrides,
    split_comment,
)

TESTS = Path(__file__).resolve().parent


def test_every_doc_file_has_a_module_that_runs_its_commands():
    """A new doc file needs an entry in DOC_MODULES, and each module there exists and runs its cases
    (through `module_cases`): every documented command is the case of exactly one module."""
    assert set(DOC_MODULES) == set(DOC_FILES), (
        f"give each doc file a module in DOC_MODULES: {set(DOC_FILES) ^ set(DOC_MODULES)}"
    )
    for module in module_names():
        source = (TESTS / f"{module}.py").read_text()
        assert "module_cases(__name__)" in source and "check_documented_command(" in source, module
    assert sorted(c.id for m in module_names() for c in module_cases(m)) == sorted(c.id for c in COMMANDS)
    # by section: README.md's findings (its scripts) go with experiments/README.md's, the rest not
    assert {module_of(c) for c in COMMANDS if c.file == "README.md"} == {"test_docs_readme", "test_docs_experiments"}


def test_selection_free_drops_the_flags_that_pick_sweeps():
    """A script's plan is asked once for its commands that differ only in the sweeps they pick."""
    argv = ["python", "experiments/r.py", "--only", "a,b", "--n-eval", "3", "--aggregate-only", "--only=c"]
    assert selection_free(argv) == ["python", "experiments/r.py", "--n-eval", "3"]


def test_every_checked_record_comes_from_a_documented_command():
    """tests/record_checks.py's checks run on the documented commands that the harness runs: each
    paper experiment needs an offline one (`-m experiment=paper_X data=offline`, no cluster launcher),
    and tiny_vlm's two tasks one each."""
    from record_checks import PAPER_CHECKS

    experiments = sorted(p.stem for p in (TESTS.parent / "conf" / "experiment").glob("paper_*.yaml"))
    for name in experiments:
        assert any(
            kind(c.argv) == "app"
            and {f"experiment={name}", "data=offline"} <= set(c.argv)
            and not any(a.startswith("hydra/launcher=") for a in c.argv)
            for c in COMMANDS
        ), f"{name}: no documented offline command runs it"
    assert set(PAPER_CHECKS) <= set(experiments)
    # the end-to-end runs on tiny_vlm that check_tiny_vlm_job checks: both vision tasks
    tiny = [set(c.argv) for c in COMMANDS if kind(c.argv) == "app" and "experiment=tiny_vlm_captioning" in c.argv]
    assert any("task=classification" in argv for argv in tiny) and any(
        not any(a.startswith("task=") for a in argv) for argv in tiny
    ), "document experiment=tiny_vlm_captioning, with and without task=classification"


# ------------------------------------------------------------------------------------------
# The cases
# ------------------------------------------------------------------------------------------


def test_the_docs_have_commands():
    """The extraction finds what the docs show (a broken parser would test nothing)."""
    by_kind: dict[str, int] = {}
    for c in COMMANDS:
        by_kind[kind(c.argv)] = by_kind.get(kind(c.argv), 0) + 1
    assert set(by_kind) == {"app", "atlas", "reader", "script", "make"}, by_kind
    assert any(c.file == "README.md" and c.argv == ("make", "run") for c in COMMANDS)
    continued = [
        c for c in COMMANDS if "hydra.launcher.partition=gpu" in c.argv and "intervention.k=1,5,10,20,50" in c.argv
    ]
    assert continued, "backslash continuations are joined into one command"


def test_fence_and_inline_extraction_rules():
    text = "\n".join(
        [
            "Run `python -m headpursuit a=1` or `pip install x`; `make\nrun` too.",
            "```bash",
            "# two jobs",
            "python -m headpursuit -m k=1,2 \\",
            "    alpha=-1  # flip",
            "",
            "make test   # lint + tests",
            "```",
            "```python",
            "python -m headpursuit not=a_command",
            "```",
        ]
    )
    fenced, inline = fenced_commands("x.md", text), inline_commands("x.md", text)
    assert [(c.line, c.argv, c.comment) for c in fenced] == [
        (5, ("python", "-m", "headpursuit", "-m", "k=1,2", "alpha=-1"), "two jobs flip"),
        (8, ("make", "test"), "lint + tests"),
    ]
    assert [(c.line, c.argv) for c in inline] == [
        (1, ("python", "-m", "headpursuit", "a=1")),
        (1, ("make", "run")),
    ]
    assert command_tokens("python -m headpursuit.app.overlap DIR [--k K] [--metric x]") == [
        "python",
        "-m",
        "headpursuit.app.overlap",
        "DIR",
    ]
    assert command_tokens("aggregate outputs/multiruns/<date_time>") == [
        "aggregate",
        f"outputs/multiruns/{PLACEHOLDER}",
    ]


def test_sweep_expansion_follows_hydras_basic_sweeper(tmp_path):
    """File axes first, a command-line value replaces the file's axis of the same key."""
    composer = Composer(tmp_path)
    jobs = composer.jobs(["protocol=paper", "intervention.k_frac=0.02"], multirun=True)
    assert jobs == [
        ["intervention.k_frac=0.02", "ranking=paper", "protocol=paper"],
        ["intervention.k_frac=0.02", "ranking=logit_lens_mean", "protocol=paper"],
    ]
    assert len(composer.jobs(["intervention.k=1,3", "intervention.alpha=-1,0,2"], multirun=True)) == 6
    assert composer.jobs(["intervention.k=3"], multirun=False) == [["intervention.k=3"]]


def test_covering_jobs_hold_every_value_of_every_axis(tmp_path):
    """A 4 x 3 x 1 sweep runs 4 of its 12 jobs, and those 4 hold every value of every axis."""
    composer = Composer(tmp_path)
    overrides = ["intervention.k=1,3,6,10", "intervention.alpha=-1,0,2", "task.n_eval=5"]
    axes, jobs = composer.axes(overrides, True), composer.jobs(overrides, True)
    picked = covering_jobs(axes)
    assert len(jobs) == 12 and len(picked) == 4 == len(set(picked))
    for values in axes.values():
        assert {v for i in picked for v in jobs[i] if v in values} == set(values)
    assert covering_jobs(composer.axes(["intervention.k=3"], False)) == [0]


def test_hub_rule_and_shrink_rule(tmp_path):
    composer = Composer(tmp_path)
    slurm = composer(["experiment=qa_mistral", "hydra/launcher=submitit_slurm"])
    assert needs_hub(slurm) == [
        "hydra/launcher=submitit_slurm",
        "model mistralai/Mistral-7B-Instruct-v0.2 (from the hub)",
        "task.source=hub (a hub dataset)",
    ]
    assert needs_hub(composer(["experiment=paper_tab2_toxicity", "data=offline"])) == []
    assert needs_hub(composer(["experiment=tiny_vlm_captioning"])) == []
    small = composer(["experiment=smoke"])  # n_rank 6, n_eval 4, 8 tokens, seeds [0, 1]
    assert shrink_overrides([small]) == [
        "task.n_rank=4",
        "task.n_eval=2",
        "intervention.random_seeds=[0]",
    ]
    assert "task.n_eval={concept:2,control:2}" in shrink_overrides([composer(["experiment=paper_tab2_toxicity"])])


def test_make_run_is_the_default_pipeline_command():
    """`make run` is covered by the `python -m headpursuit` case (the same command)."""
    assert make_as_python(["make", "run"]) == ["python", "-m", "headpursuit"]
    assert any(c.argv == ("python", "-m", "headpursuit") for c in COMMANDS)


# ------------------------------------------------------------------------------------------
# Python blocks
# ------------------------------------------------------------------------------------------


def package_names() -> dict[str, Any]:
    """Every public top-level name of every headpursuit module (what a sketch may call)."""
    import headpursuit

    names: dict[str, Any] = {}
    for info in pkgutil.walk_packages(headpursuit.__path__, "headpursuit."):
        if any(part.startswith("_") for part in info.name.split(".")[1:]):
            continue
        module = importlib.import_module(info.name)
        names.update({k: v for k, v in vars(module).items() if not k.startswith("_")})
    names.update({k: getattr(headpursuit, k) for k in headpursuit.__all__})
    return names


def has_attribute(cls: type, attr: str) -> bool:
    """A class attribute, a dataclass field / annotation, or an attribute its methods set."""
    if hasattr(cls, attr):
        return True
    for klass in cls.__mro__:
        if attr in getattr(klass, "__annotations__", {}):
            return True
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        if re.search(rf"self\.{attr}\s*[:=]", source):
            return True
    return False


def return_type(fn: Any, names: dict[str, Any]) -> type | None:
    """A class itself, or the package class a function's return annotation names."""
    if inspect.isclass(fn):
        return fn
    try:
        hint = inspect.signature(fn).return_annotation
    except (TypeError, ValueError):
        return None
    if isinstance(hint, str):  # `from __future__ import annotations`: the annotation's text
        hint = names.get(hint.strip("'\""))
    return hint if inspect.isclass(hint) and hint.__module__.startswith("headpursuit") else None


def call_keywords(code: str, start: int) -> list[str]:
    """The keyword names of the call whose '(' is at `start` (top level of its arguments)."""
    depth, words, i = 0, [], start
    for i in range(start, len(code)):
        ch = code[i]
        depth += ch in "([{"
        depth -= ch in ")]}"
        if depth == 0:
            break
    args = code[start + 1 : i]
    level, piece = 0, []
    for ch in args:
        level += ch in "([{"
        level -= ch in ")]}"
        piece.append(ch if level == 0 else " ")
    words = re.findall(r"(?:^|,)\s*(\w+)\s*=(?!=)", "".join(piece))
    return words


def accepts(fn: Any, keyword: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return True
    return keyword in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def sketch_problems(code: str, names: dict[str, Any]) -> list[str]:
    """What a Python sketch names that the package does not have."""
    code = "\n".join(split_comment(line)[0] for line in code.splitlines())
    types: dict[str, type] = {}
    problems = []
    for m in re.finditer(r"^\s*(\w+)\s*=\s*([\w.]+)\(", code, re.M):
        target = resolve(m.group(2), names, types)
        if (t := return_type(target, names)) is not None:
            types[m.group(1)] = t
    for m in re.finditer(r"(?<![\w.])([A-Za-z_]\w*(?:\.\w+)*)\(", code):
        dotted = m.group(1)
        head = dotted.split(".")[0]
        if "." not in dotted and (head in vars(builtins) or head in ("with", "for", "if", "return")):
            continue
        if head not in names and head not in types:
            if "." not in dotted:  # a method of a variable the sketch does not type is not checked
                problems.append(f"{dotted}: not a name of the package")
            continue
        target = resolve(dotted, names, types)
        if target is None:
            problems.append(f"{dotted}: no such attribute")
            continue
        problems += [
            f"{dotted}({kw}=...): no such parameter"
            for kw in call_keywords(code, m.end() - 1)
            if not accepts(target, kw)
        ]
    for m in re.finditer(r"(?<![\w.])(\w+)\.(\w+)", code):
        var, attr = m.groups()
        if var in types and not has_attribute(types[var], attr):
            problems.append(f"{var}.{attr}: {types[var].__name__} has no {attr}")
    for m in re.finditer(r"^\s*[\w.]+\s*:\s*([A-Z]\w*)", code, re.M):
        if m.group(1) not in names:
            problems.append(f"{m.group(1)}: not a name of the package")
    return sorted(set(problems))


def resolve(dotted: str, names: dict[str, Any], types: dict[str, type]) -> Any:
    head, *attrs = dotted.split(".")
    obj: Any = types.get(head, names.get(head))
    for attr in attrs:
        if obj is None:
            return None
        if inspect.isclass(obj) and not hasattr(obj, attr):
            return attr if has_attribute(obj, attr) else None  # an instance attribute: present, not callable here
        obj = getattr(obj, attr, None)
    return obj


SKETCHES = [(rel, f) for rel in DOC_FILES if rel != "README.md" for f in python_blocks(rel)]


@pytest.mark.parametrize("rel,block", SKETCHES, ids=[f"{rel}:{f.line}" for rel, f in SKETCHES])
def test_python_sketch_names_what_exists(rel: str, block: Fence):
    problems = sketch_problems("\n".join(block.lines), package_names())
    assert not problems, f"{rel}:{block.line}: {problems}"


def test_sketch_checker_finds_what_is_missing():
    names = package_names()
    assert sketch_problems('lm = load_model("smollm2")\nlm.layout\nlm.o_proj(0)', names) == []
    assert sketch_problems('lm = load_model("smollm2")\nlm.no_such_thing', names) == [
        "lm.no_such_thing: LoadedModel has no no_such_thing"
    ]
    assert sketch_problems("acts = capture_heads(lm, s, positions='all', colour=1)", names) == [
        "capture_heads(colour=...): no such parameter"
    ]
    assert sketch_problems("x = not_in_the_package(1)", names) == ["not_in_the_package: not a name of the package"]
