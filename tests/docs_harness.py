"""The docs-commands harness: every command the docs show, found and checked (issue 19).

Not a test module (pytest does not collect it): the test modules import it. tests/test_docs_commands.py
tests the harness itself and the docs' Python blocks; the documented commands are cases of a few
modules, by doc file and section (`DOC_MODULES`), so `pytest -n 2 --dist loadfile` spreads them over
both workers. All
those modules share one `Docs` per process (the session fixture `docs`, tests/conftest.py) and one
run cache per test session (both workers: its entries are locked, so a job ranks and evaluates once).

Which commands (read from the docs at collection time: a newly documented command becomes a case,
a removed one disappears; each case's id is `file:line`):

* the files: README.md, experiments/README.md and docs/*.md;
* every command line of a fenced ```bash / ```sh / ```shell block: backslash continuations joined,
  `#` comments dropped (kept as the command's comment, with the comment lines right above it),
  lines that are only comments or blank skipped;
* every inline code span of those files that starts with `python -m headpursuit` (the app, and
  `.app.aggregate` / `.app.overlap`), `python experiments/` or `make `. Other tools the docs name
  (pip, `wandb sync`, `huggingface-cli`) are not ours and are not run. A fenced command that starts
  with anything else fails here: give its program a rule.

Placeholders: `<...>` and `DIR` stand for a sweep directory (see the readers below), `[--x X]` is
an optional argument (dropped), `experiment=<name>` is a template (every experiment file), and
`my_*.jsonl` is the reader's own data (a copy of the task's shipped fixture).

How each command is checked (rules, data-driven; nothing here lists the documented commands):

* `python -m headpursuit [-m] OVERRIDES`: every job of it (comma-separated values and, with -m, the
  experiment's `hydra.sweeper.params`, expanded as Hydra's basic sweeper does) is composed with
  Hydra's compose API and passes `validate_config`; a job count quoted in the command's comment
  ("all 12 jobs", "4 runs") must be the number composed. A command with a job that needs the hub
  or a GPU stops there: `hydra/launcher=submitit_slurm`, a model that is neither embedded
  (`models.embedded.EMBEDDED`) nor built (`models.loading.BUILDERS`), a task source read from the
  hub (HUB_SOURCES) or a toxicity scorer that downloads its weights (HUB_SCORERS). The others run
  for real, in this process (a model loads once, not once per command), shortened: SHRINK's
  overrides (few questions, one random set, few new tokens), `logger=none`, `plots=false`, outputs
  under tmp and one cache for the whole test session (rankings and evaluations are reused across cases).
  A sweep runs its covering jobs only (every value of every axis at least once: max(n) jobs for
  axes of n values, not their product), each as a one-job `-m` run. The command must exit 0 and
  every job's results.json must say `status: complete`. A job that ran already in an earlier case
  (same resolved config) is not run again. `--cfg job` composes and validates only (Hydra prints).
* `python -m headpursuit.app.atlas [-m] OVERRIDES`: as the app, on the atlas config
  (conf/atlas.yaml): every job composed and checked by `validate_atlas`; a job on a hub model is
  composed only; the others run for real in this process, shortened (ATLAS_SHRINK: two prompts per
  group and source, two random token sets), `logger=none`, `plots=false`; every job's results.json
  must say `status: complete`.
* `python -m headpursuit.app.aggregate | .app.overlap DIR`: run in this process on the sweep that
  the closest preceding offline multirun of the same fenced block wrote; where there is none
  (inline spans, a block of GPU sweeps), on the first offline multirun it can read (`overlap`: a
  transfer sweep, whose jobs have a `rank_task`) that its own doc file documents, else any doc file. Exit 0, outputs under tmp, and every
  file named in the command's comment exists. Without a directory (the tool named in prose): `--help`.
* `python experiments/X.py ...`: a subprocess, with X's shortening flags from SCRIPT_FLAGS
  (outputs under tmp, never into docs/; a script without an entry fails: add one). A script that
  runs pipeline sweeps says so with `--print-plan`: every job of every sweep in its plan is composed
  and validated as above, and unless the command picks sweeps itself (`--only`, `--aggregate-only`,
  which read the others from disk), only the plan's cheapest sweep runs (fewest prompts generated).
* `make TARGET`: a target whose recipe is one `$(PY) ...` line is that Python command, checked by the
  rules above (`make run` is `python -m headpursuit`, `make reproduce` the reproduce script); other
  targets (test, lint, venv, ...) are never run from here: `make -n` must accept them and their
  recipes must invoke the tools in MAKE_TOOLS.

Python blocks: README.md's runs as written (tests/test_docs_readme.py); the others are sketches
checked by tests/test_docs_commands.py.
"""

from __future__ import annotations

import dataclasses
import importlib
import itertools
import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from omegaconf import DictConfig, OmegaConf
from record_checks import check_job_record

REPO = Path(__file__).resolve().parents[1]
DOC_FILES = ["README.md", "experiments/README.md", *sorted(f"docs/{p.name}" for p in (REPO / "docs").glob("*.md"))]
SHELL_LANGS = {"bash", "sh", "shell", "console"}
COMMAND_PREFIXES = ("python -m headpursuit", "python experiments/", "make ")
READERS = {"headpursuit.app.aggregate", "headpursuit.app.overlap"}
ATLAS = "headpursuit.app.atlas"

# What needs the hub (or a GPU): a job with one of these does not run here.
CLUSTER_LAUNCHERS = {"submitit_slurm"}
HUB_SOURCES = {"hub", "rtp", "tet"}  # task.source values read from the Hugging Face hub
HUB_SCORERS = {"detoxify", "roberta"}  # toxicity scorers whose weights download

# The shortened form of an offline run: a key is set only where every job has it with a larger
# value (null n_eval: every item); a list (random seeds) keeps its first entries.
SHRINK: dict[str, int] = {
    "task.n_rank": 4,
    # 2 questions and 8 tokens, not 1 and 4: SmolLM2 gets no offline country or control question
    # right with those, and a zero baseline leaves the normalised (paper) tables without a value
    "task.n_eval": 2,
    "task.max_new_tokens": 8,
    "task.n_continuations": 1,
    "rank_task.n_rank": 4,
    "rank_task.n_eval": 2,
    "rank_task.max_new_tokens": 8,
    "intervention.random_seeds": 1,
}
QUIET = ["logger=none", "plots=false"]
# The shortened form of an atlas: few prompts, few random token sets.
ATLAS_SHRINK = ["atlas.n_per_group=2", "atlas.random_draws=2"]

# The shortening flags of each script ({out}: a tmp dir of the case, {cache}: the run cache).
# Appended after the documented flags, so they win (argparse keeps the last value).
SCRIPT_FLAGS: dict[str, list[str]] = {
    "reproduce_embedded.py": [
        "--quick",
        "--seeds=1",
        "--n-eval=1",
        "--n-rank=4",
        "--out={out}/results.md",
        "--sweeps={sweeps}",
        "--cache-dir={cache}",
    ],
    "compare_protocols.py": [
        "--n-eval=1",
        "--n-rank=4",
        "--out={out}/results.md",
        "--sweeps={sweeps}",
        "--cache-dir={cache}",
    ],
    "head_sensitivity.py": ["--n=1", "--heads=2", "--n-rank=4", "--n-eval=1", "--out={out}"],
    "bench_somp.py": ["--quick", "--heads=2", "--n-questions=4", "--no-spams"],
    "bench_capture.py": ["--repeats=1", "--prompts=4"],
    "bench_pipeline.py": ["--n-eval=1", "--n-rank=4", "--random=1", "--max-new-tokens=4", "--rounds=1"],
    "bench_atlas.py": ["--quick"],
}
# What the recipes of the make targets that are not one Python command must invoke.
MAKE_TOOLS: dict[str, tuple[str, ...]] = {
    "test": ("ruff check", "ruff format --check", "mypy", "pytest"),
    "test-fast": ("pytest", "not slow"),
    "lint": ("ruff check", "ruff format --check", "mypy"),
    "format": ("ruff check --fix", "ruff format"),
    "venv": ("pip install",),
}
PLACEHOLDER = "@PLACEHOLDER@"
DIR_PLACEHOLDERS = {"DIR"}
OWN_DATA = re.compile(r"^my_\w+\.jsonl$")
QUOTED_JOBS = re.compile(r"\b(\d+) (?:jobs|runs|tasks)\b")
OUTPUT_FILE = re.compile(r"\b[\w-]+\.(?:md|csv|png|json)\b")


# ------------------------------------------------------------------------------------------
# Reading the docs
# ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Fence:
    lang: str
    line: int  # line number of its first content line
    lines: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class DocCommand:
    file: str
    line: int
    text: str
    comment: str = ""
    block: int | None = None  # the fenced block's number in its file; None: an inline span
    nth: int = 1  # the nth command on its line (inline spans)

    @property
    def id(self) -> str:
        return f"{self.file}:{self.line}" + (f"#{self.nth}" if self.nth > 1 else "")

    @property
    def argv(self) -> tuple[str, ...]:
        return tuple(command_tokens(self.text))


def doc_text(rel: str) -> str:
    return (REPO / rel).read_text()


def fences(text: str) -> list[Fence]:
    out, lang, start, body = [], None, 0, []
    for i, line in enumerate(text.splitlines(), 1):
        m = re.match(r"^\s*```\s*([\w+-]*)", line)
        if m and lang is None:
            lang, start, body = m.group(1).lower(), i + 1, []
        elif m:
            out.append(Fence(lang, start, tuple(body)))
            lang = None
        elif lang is not None:
            body.append(line)
    return out


def split_comment(line: str) -> tuple[str, str]:
    """(code, comment) at the first `#` outside quotes that starts a word."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].strip(), line[i + 1 :].strip()
    return line.strip(), ""


def logical_lines(lines: Sequence[str], first: int) -> Iterator[tuple[int, str]]:
    """(line number, text) with backslash continuations joined."""
    pending, start = "", first
    for i, line in enumerate(lines):
        if not pending:
            start = first + i
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        yield start, pending + line
        pending = ""
    if pending:
        yield start, pending


def fenced_commands(rel: str, text: str) -> list[DocCommand]:
    out = []
    for n, fence in enumerate(fences(text)):
        if fence.lang not in SHELL_LANGS:
            continue
        above: list[str] = []
        for line_no, line in logical_lines(fence.lines, fence.line):
            code, comment = split_comment(line)
            if not code:
                above = above + [comment] if comment else []
                continue
            out.append(DocCommand(rel, line_no, code, " ".join([*above, comment]).strip(), n))
            above = []
    return out


def inline_commands(rel: str, text: str) -> list[DocCommand]:
    lines = text.splitlines()
    for fence in fences(text):  # blank the fenced blocks, keeping line numbers
        for i in range(fence.line - 2, fence.line + len(fence.lines)):
            lines[i] = ""
    prose = "\n".join(lines)
    out = []
    for m in re.finditer(r"(?<!`)`(?!`)([^`]+?)`(?!`)", prose):
        span = " ".join(m.group(1).split())
        if "\n\n" not in m.group(1) and span.startswith(COMMAND_PREFIXES):
            out.append(DocCommand(rel, prose[: m.start()].count("\n") + 1, span))
    return out


def command_tokens(text: str) -> list[str]:
    """argv of a documented command: optional `[--x X]` and `...` (any further arguments) dropped,
    `<...>` -> PLACEHOLDER."""
    text = re.sub(r"\s\[--[^\]]*\]", "", text)
    text = re.sub(r"<[^<>]+>", PLACEHOLDER, text)
    return [t for t in shlex.split(text) if t != "..."]


def documented_commands() -> list[DocCommand]:
    cmds = []
    for rel in DOC_FILES:
        text = doc_text(rel)
        cmds += fenced_commands(rel, text) + inline_commands(rel, text)
    cmds.sort(key=lambda c: (DOC_FILES.index(c.file), c.line))
    seen: dict[tuple[str, int], int] = {}
    for i, c in enumerate(cmds):
        seen[(c.file, c.line)] = seen.get((c.file, c.line), 0) + 1
        cmds[i] = dataclasses.replace(c, nth=seen[(c.file, c.line)])
    return cmds


def python_blocks(rel: str) -> list[Fence]:
    return [f for f in fences(doc_text(rel)) if f.lang == "python"]


COMMANDS = documented_commands()


def kind(argv: Sequence[str]) -> str:
    if argv[0] == "make":
        return "make"
    if list(argv[:3]) == ["python", "-m", "headpursuit"]:
        return "app"
    if list(argv[:3]) == ["python", "-m", ATLAS]:
        return "atlas"
    if list(argv[:2]) == ["python", "-m"] and argv[2] in READERS:
        return "reader"
    if argv[0] == "python" and len(argv) > 1 and argv[1].startswith("experiments/"):
        return "script"
    raise AssertionError(f"{' '.join(argv)}: no rule for this program in tests/test_docs_commands.py; add one")


# ------------------------------------------------------------------------------------------
# Composing jobs (Hydra's compose API) and what they need
# ------------------------------------------------------------------------------------------


def config_dir() -> str:
    from headpursuit.app.run import find_config_dir  # registers the hp.fixture resolver too

    return find_config_dir()


class Composer:
    """Hydra's compose API over the repository's configs, one initialisation for many composes;
    `config_name`: the primary config (`config`, the app's; `atlas`, the atlas's)."""

    def __init__(self, cache_dir: Path, config_name: str = "config"):
        self.cache_dir = cache_dir
        self.config_name = config_name
        self.memo: dict[tuple[str, ...], DictConfig] = {}
        self.validated: dict[tuple[bool, tuple[str, ...]], list[DictConfig]] = {}  # validated_jobs'

    def __call__(self, overrides: Sequence[str]) -> DictConfig:
        key = tuple(overrides)
        if key not in self.memo:
            from hydra import compose, initialize_config_dir
            from hydra.core.global_hydra import GlobalHydra

            GlobalHydra.instance().clear()
            with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
                self.memo[key] = compose(
                    self.config_name, overrides=[*overrides, f"cache_dir={self.cache_dir}"], return_hydra_config=True
                )
        return self.memo[key]

    def axes(self, overrides: Sequence[str], multirun: bool) -> OrderedDict[str, list[str]]:
        """The sweep's axes as Hydra's basic sweeper makes them: the experiment's
        `hydra.sweeper.params` first, the command line's values replacing an axis of the same key
        (each axis: its `key=value` overrides; a single run: one value per override)."""
        from hydra.core.override_parser.overrides_parser import OverridesParser

        parser = OverridesParser.create()
        parsed = parser.parse_overrides(list(overrides))
        if not multirun:
            sweeps = [o.input_line for o in parsed if o.is_sweep_override()]
            assert not sweeps, f"{sweeps}: comma-separated values need -m"
            return OrderedDict((str(i), [o]) for i, o in enumerate(overrides))
        master = self([o.input_line for o in parsed if not o.is_sweep_override()])
        params = OmegaConf.select(master, "hydra.sweeper.params") or {}
        axes: OrderedDict[str, list[str]] = OrderedDict()
        for o in parser.parse_overrides([f"{k}={v}" for k, v in params.items()] + list(overrides)):
            key = o.get_key_element()
            values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
            axes[key] = [f"{key}={v}" for v in values]
        return axes

    def jobs(self, overrides: Sequence[str], multirun: bool) -> list[list[str]]:
        """Each job's overrides, in the basic sweeper's order (the product of the axes)."""
        return [list(job) for job in itertools.product(*self.axes(overrides, multirun).values())]


def covering_jobs(axes: OrderedDict[str, list[str]]) -> list[int]:
    """Indices (in the product's order) of the fewest jobs that hold every value of every axis:
    job j takes value j mod n of each axis of n values, so max(n) jobs, not prod(n)."""
    sizes = [len(v) for v in axes.values()]
    picked = []
    for j in range(max(sizes, default=1)):
        index = 0
        for n in sizes:
            index = index * n + j % n
        picked.append(index)
    return picked


def resolved(cfg: DictConfig) -> dict[str, Any]:
    """The job config as the app sees it (without the hydra node)."""
    raw = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(raw, dict)
    raw.pop("hydra", None)
    out = OmegaConf.to_container(OmegaConf.create(raw), resolve=True)
    assert isinstance(out, dict)
    return out  # type: ignore[return-value]


def needs_hub(cfg: DictConfig) -> list[str]:
    """Why this job cannot run here (the hub, a GPU cluster); [] if it runs offline."""
    from headpursuit.models.embedded import EMBEDDED
    from headpursuit.models.loading import BUILDERS

    why = []
    launcher = OmegaConf.select(cfg, "hydra.runtime.choices").get("hydra/launcher")
    if launcher in CLUSTER_LAUNCHERS:
        why.append(f"hydra/launcher={launcher}")
    if cfg.model.name_or_path not in set(EMBEDDED) | set(BUILDERS):
        why.append(f"model {cfg.model.name_or_path} (from the hub)")
    for node in ("task", "rank_task"):
        task = cfg.get(node)
        if task and task.get("source") in HUB_SOURCES:
            why.append(f"{node}.source={task.source} (a hub dataset)")
        if task and task.get("scorer") in HUB_SCORERS:
            why.append(f"{node}.scorer={task.scorer} (downloads its weights)")
    return why


def validated_jobs(composer: Composer, overrides: Sequence[str], multirun: bool) -> list[DictConfig]:
    """Every job composed and checked by validate_config (the app's checks that need no model);
    once per command and process (a reader's search for its sweep asks again for many commands)."""
    from headpursuit.app.config import validate_config

    key = (multirun, tuple(overrides))
    if key not in composer.validated:
        cfgs = []
        for job in composer.jobs(overrides, multirun):
            cfg = composer(job)
            validate_config(resolved(cfg))
            cfgs.append(cfg)
        composer.validated[key] = cfgs
    return composer.validated[key]


def generation_cost(cfg: DictConfig) -> int:
    """Prompts a job generates for: (edited + random sets) x evaluation items x continuations."""
    iv, task = cfg.intervention, cfg.task
    n_eval = task.get("n_eval") or 1000
    items = sum(n_eval.values()) if isinstance(n_eval, DictConfig) else int(n_eval)
    sets = 1 + (len(iv.random_seeds) if iv.get("random_controls", True) else 0)
    return sets * items * int(task.get("n_continuations") or 1)


def shrink_overrides(cfgs: Sequence[DictConfig]) -> list[str]:
    """SHRINK's overrides that make every job smaller (never larger)."""
    out = []
    missing = object()
    for key, small in SHRINK.items():
        values = [OmegaConf.select(c, key, default=missing) for c in cfgs]
        if any(v is missing for v in values):
            continue
        if key.endswith("random_seeds"):
            if any(len(v) > small for v in values):
                out.append(f"{key}=[{','.join(str(s) for s in values[0][:small])}]")
        elif any(isinstance(v, DictConfig) for v in values):
            out.append(f"{key}={{concept:{small},control:{small}}}")
        elif any(v is None or v > small for v in values):
            value = min([small, *(v for v in values if isinstance(v, int))])
            out.append(f"{key}={value}")
    return out


# ------------------------------------------------------------------------------------------
# Running things
# ------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Outcome:
    """What one run of a command left: exit code, output dir, its jobs' results (or why none)."""

    rc: int
    out: Path
    results: list[dict] = dataclasses.field(default_factory=list)
    note: str = ""
    configs: list[dict] = dataclasses.field(default_factory=list)  # each result's job config, as composed here


def run_app(argv: Sequence[str], module: str = "headpursuit.app.run") -> int:
    """`python -m headpursuit ARGV` (or another Hydra app's `module`) in this process: Hydra's main,
    its exit code."""
    from hydra.core.global_hydra import GlobalHydra

    app = importlib.import_module(module)

    root = logging.getLogger()
    handlers, level, saved_argv = root.handlers[:], root.level, sys.argv
    GlobalHydra.instance().clear()
    sys.argv = ["headpursuit", *argv]
    try:
        app.main()
        return 0
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = saved_argv
        GlobalHydra.instance().clear()
        for h in root.handlers[:]:  # Hydra's job logging: its console handler outlives pytest's capture
            if h not in handlers:
                root.removeHandler(h)
                h.close()
        root.handlers[:] = handlers
        root.setLevel(level)


def job_results(out: Path, multirun: bool, n_jobs: int) -> list[dict]:
    paths = [out / str(i) / "results.json" for i in range(n_jobs)] if multirun else [out / "results.json"]
    return [json.loads(p.read_text()) if p.is_file() else {"status": "missing", "path": str(p)} for p in paths]


def assert_complete(outcome: Outcome, what: str) -> None:
    bad = [
        f"{r.get('run', {}).get('dir', r.get('path'))}: {r.get('status')} {r.get('error', '')}"
        for r in outcome.results
        if r.get("status") != "complete"
    ]
    assert outcome.rc == 0 and not bad, f"{what}: exit {outcome.rc}; jobs not complete: {bad}"


def run_script(argv: Sequence[str], timeout: int = 900) -> subprocess.CompletedProcess:
    """`python experiments/X.py ...` in its own process group: a timeout ends the sweeps it started too."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": path}
    args = [sys.executable, *argv[1:]]
    with subprocess.Popen(
        args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    ) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def selection_free(argv: Sequence[str]) -> list[str]:
    """A script's command without the flags that pick its sweeps (`--only X`, `--aggregate-only`)."""
    out, skip = [], False
    for a in argv:
        if skip or a == "--aggregate-only" or a.startswith("--only="):
            skip = False
            continue
        if a == "--only":
            skip = True
            continue
        out.append(a)
    return out


def check_quoted_jobs(cmd: DocCommand, n_jobs: int) -> None:
    """A job count quoted in the command's comment ("all 12 jobs", "4 runs") is the number composed."""
    if quoted := QUOTED_JOBS.findall(cmd.comment):
        assert int(quoted[-1]) == n_jobs, f"{cmd.id}: the comment says {quoted[-1]} jobs, it composes {n_jobs}"


def makefile_recipe(target: str) -> list[str]:
    lines = (REPO / "Makefile").read_text().splitlines()
    starts = [i for i, line in enumerate(lines) if re.match(rf"^{re.escape(target)}\s*:(?!=)", line)]
    assert starts, f"make {target}: no such target in the Makefile"
    recipe = []
    for line in lines[starts[0] + 1 :]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip())
    return recipe


def make_as_python(argv: Sequence[str]) -> list[str] | None:
    """`make TARGET [VAR=value]` as the Python command its one-line `$(PY) ...` recipe runs."""
    targets = [a for a in argv[1:] if "=" not in a]
    variables = dict(a.split("=", 1) for a in argv[1:] if "=" in a)
    if len(targets) != 1:
        return None
    recipe = makefile_recipe(targets[0])
    if len(recipe) != 1 or not recipe[0].startswith("$(PY) "):
        return None
    line = re.sub(
        r"\$\((\w+)\)", lambda m: "python" if m.group(1) == "PY" else variables.get(m.group(1), ""), recipe[0]
    )
    return shlex.split(line)


class Docs:
    """The harness's state in one process: tmp dirs, the run cache, what each command left (each runs
    once). `cache`: the run cache (default `root/cache`); the session fixture passes one that both
    xdist workers share."""

    def __init__(self, root: Path, cache: Path | None = None):
        self.root = root
        self.cache = cache or root / "cache"
        self.composer = Composer(self.cache)
        self.atlas_composer = Composer(self.cache, "atlas")
        self.outcomes: dict[tuple[str, ...], Outcome] = {}
        self.scripts: dict[tuple[str, ...], subprocess.CompletedProcess] = {}
        self.script_helps: dict[str, str] = {}  # script -> its --help
        self.script_plans: dict[tuple[str, ...], list[dict] | None] = {}  # see `plan`
        self.ran_jobs: dict[str, Path] = {}  # resolved job config -> the dir its complete run left
        self.counter = itertools.count()

    def tmp(self, name: str) -> Path:
        slug = re.sub(r"[^\w.-]+", "_", name)[:60]
        path = self.root / f"{next(self.counter):03d}_{slug}"
        path.mkdir(parents=True)
        return path

    # --- the app ---------------------------------------------------------------------------

    def app_overrides(self, argv: Sequence[str], cmd: DocCommand) -> tuple[bool, list[str], list[str]]:
        """(multirun, overrides, template keys) with placeholders replaced."""
        args = list(argv[3:])
        multirun = bool({"-m", "--multirun"} & set(args))
        args = [a for a in args if a not in ("-m", "--multirun")]
        if "--cfg" in args:  # Hydra prints the composed config and runs nothing: compose it here
            at = args.index("--cfg")
            assert args[at + 1 : at + 2] in (["job"], ["hydra"], ["all"]), f"{cmd.id}: --cfg job|hydra|all"
            del args[at : at + 2]
        assert not [a for a in args if a.startswith("-")], f"{cmd.id}: a flag this test has no rule for: {args}"
        out, templates = [], []
        for a in args:
            key, _, value = a.partition("=")
            if PLACEHOLDER in value:
                templates.append(key)
            elif OWN_DATA.match(value):
                out.append(f"{key}={self.own_data(value, args)}")
            else:
                out.append(a)
        return multirun, out, templates

    def own_data(self, name: str, args: Sequence[str]) -> Path:
        """The reader's own file: a copy of the shipped fixture of the command's task."""
        from headpursuit.tasks.loaders import fixture_path

        task = resolved(self.composer([a for a in args if not OWN_DATA.match(a.partition("=")[2])]))["task"]["name"]
        path = self.root / "own_data" / name
        path.parent.mkdir(exist_ok=True)
        shutil.copyfile(fixture_path(f"{task}.jsonl"), path)
        return path

    def template_values(self, key: str) -> list[str]:
        group = Path(config_dir()) / key.lstrip("+")
        assert group.is_dir(), f"{key}=<...>: no config group conf/{key}"
        return sorted(p.stem for p in group.glob("*.yaml"))

    def app(self, argv: Sequence[str], cmd: DocCommand) -> Outcome:
        multirun, overrides, templates = self.app_overrides(argv, cmd)
        if not templates:  # each place that documents the command: its own comment's job count
            check_quoted_jobs(cmd, len(self.composer.jobs(overrides, multirun)))
        if tuple(argv) in self.outcomes:
            return self.outcomes[tuple(argv)]
        if templates:  # e.g. experiment=<name>: every option composes and validates
            for values in itertools.product(*(self.template_values(k) for k in templates)):
                filled = [*overrides, *(f"{k}={v}" for k, v in zip(templates, values))]
                validated_jobs(self.composer, filled, multirun)
            return self.remember(argv, Outcome(0, self.root, note=f"template over {templates}: composed only"))
        cfgs = validated_jobs(self.composer, overrides, multirun)
        if "--cfg" in argv:
            return self.remember(argv, Outcome(0, self.root, note="--cfg: composed and validated, nothing runs"))
        hub = sorted({why for c in cfgs for why in needs_hub(c)})
        if hub:
            return self.remember(argv, Outcome(0, self.root, note="composed only: needs " + "; ".join(hub)))
        return self.remember(argv, self.run_offline(overrides, multirun, cfgs, self.tmp(cmd.id)))

    def run_offline(
        self, overrides: Sequence[str], multirun: bool, cfgs: Sequence[DictConfig], out: Path, *, reuse: bool = True
    ) -> Outcome:
        """The command's jobs, shortened, into `out`. A sweep runs its covering jobs (every value of
        every axis at least once; `covering_jobs`), each as a one-job multirun (`-m` with one value
        per axis) into `out/<its job number>`; a job that an earlier case ran with the same resolved
        config is copied from there, not run again (reuse=False: run anyway)."""
        shrink = shrink_overrides(cfgs)
        axes = self.composer.axes(overrides, multirun)
        jobs = [list(job) for job in itertools.product(*axes.values())]
        picked = covering_jobs(axes) if multirun else [0]
        rc, results, configs, notes = 0, [], [], []
        for i in picked:
            configs.append(resolved(self.composer([*jobs[i], *shrink])))
            key = json.dumps(configs[-1], sort_keys=True)
            where = out / str(i) if multirun else out
            job_dir = where / "0" if multirun else where  # where the job's results.json lands
            if reuse and key in self.ran_jobs:
                shutil.copytree(self.ran_jobs[key], job_dir, dirs_exist_ok=True)
                notes.append(f"job {i} copied from an earlier case")
            else:
                target = ["-m", f"hydra.sweep.dir={where}"] if multirun else [f"hydra.run.dir={where}"]
                rc = rc or run_app([*target, *jobs[i], *shrink, *QUIET, f"cache_dir={self.cache}"])
            found = job_results(job_dir, False, 1)
            results += found
            if found[0].get("status") == "complete":
                self.ran_jobs[key] = job_dir
        ran = f"jobs {picked} of {len(jobs)}" if multirun else "the run"
        return Outcome(rc, out, results, note=" ".join([ran, *shrink, *notes]), configs=configs)

    def remember(self, argv: Sequence[str], outcome: Outcome) -> Outcome:
        self.outcomes[tuple(argv)] = outcome
        return outcome

    def is_offline_multirun(self, argv: Sequence[str], cmd: DocCommand) -> bool:
        multirun, overrides, templates = self.app_overrides(argv, cmd)
        if not multirun or templates:
            return False
        return not any(needs_hub(c) for c in validated_jobs(self.composer, overrides, multirun))

    # --- the atlas -------------------------------------------------------------------------

    def atlas(self, argv: Sequence[str], cmd: DocCommand) -> Outcome:
        """An atlas command: every job composed and validated; run shortened unless one needs the hub."""
        from headpursuit.app.atlas import validate_atlas

        multirun, overrides, templates = self.app_overrides(argv, cmd)
        assert not templates, f"{cmd.id}: no rule for a template in an atlas command: {templates}"
        check_quoted_jobs(cmd, len(self.atlas_composer.jobs(overrides, multirun)))
        if tuple(argv) in self.outcomes:
            return self.outcomes[tuple(argv)]
        cfgs = [self.atlas_composer(job) for job in self.atlas_composer.jobs(overrides, multirun)]
        for cfg in cfgs:
            validate_atlas(resolved(cfg))
        hub = sorted({why for c in cfgs for why in needs_hub(c)})
        if hub:
            return self.remember(argv, Outcome(0, self.root, note="composed only: needs " + "; ".join(hub)))
        out = self.tmp(cmd.id)
        where = f"hydra.sweep.dir={out}" if multirun else f"hydra.run.dir={out}"
        args = [*(["-m"] if multirun else []), *overrides, *ATLAS_SHRINK, *QUIET, f"cache_dir={self.cache}", where]
        rc = run_app(args, module=ATLAS)
        return self.remember(argv, Outcome(rc, out, job_results(out, multirun, len(cfgs)), note=" ".join(ATLAS_SHRINK)))

    # --- readers ---------------------------------------------------------------------------

    def producer(self, cmd: DocCommand, reader: str) -> DocCommand:
        """The sweep a reader with a placeholder directory reads (see the module docstring)."""
        same_block = [c for c in COMMANDS if c.file == cmd.file and c.block == cmd.block and c.line < cmd.line]
        for c in reversed(same_block if cmd.block is not None else []):
            if kind(c.argv) == "app" and {"-m", "--multirun"} & set(c.argv):
                if self.is_offline_multirun(c.argv, c):
                    return c
                break
        # the reader's own doc file first: its sweep is documented (and run) where the reader is
        for c in sorted(COMMANDS, key=lambda c: c.file != cmd.file):
            if kind(c.argv) == "app" and self.is_offline_multirun(c.argv, c) and self.readable(c, reader):
                return c
        raise AssertionError(f"{cmd.id}: no documented offline sweep for {reader} to read")

    def readable(self, cmd: DocCommand, reader: str) -> bool:
        if reader != "headpursuit.app.overlap":
            return True
        multirun, overrides, _ = self.app_overrides(cmd.argv, cmd)
        return all(c.get("rank_task") for c in validated_jobs(self.composer, overrides, multirun))

    def reader(self, argv: Sequence[str], cmd: DocCommand) -> tuple[Outcome, Path]:
        module = importlib.import_module(argv[2])
        args = list(argv[3:])
        positional = [a for a in args if not a.startswith("-")]
        out = self.tmp(cmd.id)
        if not positional:  # the tool named in prose
            with pytest.raises(SystemExit) as exc:
                module.main(["--help"])
            return Outcome(int(exc.value.code or 0), out, note="--help"), out
        if any(PLACEHOLDER in a or a in DIR_PLACEHOLDERS for a in positional):
            source = self.producer(cmd, argv[2])
            produced = self.app(source.argv, source)
            sweep, note = produced.out, f"on the sweep of {source.id}"
            args = [str(sweep) if (PLACEHOLDER in a or a in DIR_PLACEHOLDERS) else a for a in args]
        else:
            note = ""
        rc = module.main([*args, "--out", str(out)])
        return Outcome(rc, out, note=note), out

    # --- scripts ---------------------------------------------------------------------------

    def script(self, argv: Sequence[str], cmd: DocCommand) -> subprocess.CompletedProcess:
        # A page is always built with --aggregate-only (below): a documented --aggregate-only is the same run.
        key = tuple(a for a in argv if a != "--aggregate-only")
        if key not in self.scripts:
            self.scripts[key] = self.run_documented_script(argv, cmd)
        return self.scripts[key]

    def run_documented_script(self, argv: Sequence[str], cmd: DocCommand) -> subprocess.CompletedProcess:
        script = Path(argv[1]).name
        assert script in SCRIPT_FLAGS, f"experiments/{script}: give it shortening flags in SCRIPT_FLAGS"
        out, sweeps = self.tmp(cmd.id), self.root / f"sweeps_{Path(script).stem}"
        flags = [f.format(out=out, cache=self.cache, sweeps=sweeps) for f in SCRIPT_FLAGS[script]]
        plan = self.plan(argv, flags)
        if plan is None:
            return run_script([*argv, *flags])
        for sweep in self.planned_sweeps(argv, plan):
            self.prepare_sweep(sweep, sweeps / sweep["dir"])
        # The script's own page, from the sweeps prepared here (its launches are `python -m headpursuit -m`).
        return run_script([*argv, *flags, "--aggregate-only"])

    def plan(self, argv: Sequence[str], flags: Sequence[str]) -> list[dict] | None:
        """The script's sweeps (`--print-plan`), each job composed and validated; None: it runs none.
        Asked once per script and documented flags: a plan lists every sweep whatever the command
        selects (`--only`, `--aggregate-only`: `planned_sweeps` picks) or where its page goes."""
        if argv[1] not in self.script_helps:
            self.script_helps[argv[1]] = run_script([*argv[:2], "--help"]).stdout
        if "--print-plan" not in self.script_helps[argv[1]]:
            return None
        key = tuple(selection_free(argv))
        if key not in self.script_plans:
            proc = run_script([*key, *flags, "--print-plan"])
            assert proc.returncode == 0, proc.stderr[-3000:]
            plan = json.loads(proc.stdout)
            for sweep in plan:
                sweep["cost"] = sum(map(generation_cost, validated_jobs(self.composer, sweep["overrides"], True)))
            self.script_plans[key] = plan
        return self.script_plans[key]

    @staticmethod
    def planned_sweeps(argv: Sequence[str], plan: list[dict]) -> list[dict]:
        """The sweeps the command picks (`--only X`: their selection flags), else the cheapest one."""
        given = {(a, b) for a, b in zip(argv, argv[1:])}
        picked = [s for s in plan if set(zip(s["select"][::2], s["select"][1::2])) <= given]
        return picked or [min(plan, key=lambda s: s["cost"])]

    def prepare_sweep(self, sweep: dict, out: Path) -> None:
        """One sweep of a script's plan, run here (shortened) into the dir where the script reads it."""
        if out.exists():
            return
        out.parent.mkdir(parents=True, exist_ok=True)
        cfgs = validated_jobs(self.composer, sweep["overrides"], True)
        assert not any(needs_hub(c) for c in cfgs), f"{sweep['name']}: needs the hub"
        # reuse=False: the page reads this dir (the jobs' cached stages make a rerun cheap)
        assert_complete(self.run_offline(sweep["overrides"], True, cfgs, out, reuse=False), f"sweep {sweep['name']}")


# ------------------------------------------------------------------------------------------
# The cases: a few test modules, by doc file and section
# ------------------------------------------------------------------------------------------

#: Which test module runs which commands: per doc file, from each heading on (a prefix of the
#: heading's text; "": the file's start) until the next listed one. `pytest -n 2 --dist loadfile`
#: gives each module to one worker; the pieces keep the commands that several places show (the
#: paper's offline runs in experiments/README.md and docs/paper.md, the scripts of the README, of
#: experiments/README.md and of docs/results.md, the pipeline runs of the README and
#: docs/cluster.md) in one module, so they run once, and the sweeps a reader reads with them.
DOC_MODULES: dict[str, dict[str, str]] = {
    "README.md": {
        "": "test_docs_readme",
        "## What it found on the embedded model": "test_docs_experiments",
        "## The pipeline (Hydra)": "test_docs_readme",
    },
    "experiments/README.md": {"": "test_docs_experiments", "## The paper's tables and figures": "test_docs_paper"},
    "docs/ARCHITECTURE.md": {"": "test_docs_experiments"},
    "docs/cluster.md": {"": "test_docs_readme"},
    "docs/paper.md": {"": "test_docs_paper"},
    "docs/protocol.md": {"": "test_docs_paper"},
    "docs/results.md": {"": "test_docs_experiments"},
}


def heading_lines(rel: str) -> dict[str, int]:
    """The line of each listed heading of `rel` (DOC_MODULES), "" at line 0."""
    lines = doc_text(rel).splitlines()
    out = {}
    for prefix in DOC_MODULES[rel]:
        at = [i for i, line in enumerate(lines, 1) if prefix and line.startswith(prefix)]
        assert prefix == "" or len(at) == 1, f"{rel}: DOC_MODULES names the heading {prefix!r}: found {len(at)} times"
        out[prefix] = at[0] if at else 0
    return out


def module_of(cmd: DocCommand) -> str:
    """The test module that runs `cmd` (DOC_MODULES)."""
    assert cmd.file in DOC_MODULES, f"{cmd.file}: give it a module in DOC_MODULES (tests/docs_harness.py)"
    starts = heading_lines(cmd.file)
    return max(DOC_MODULES[cmd.file].items(), key=lambda item: (starts[item[0]] <= cmd.line, starts[item[0]]))[1]


def module_names() -> set[str]:
    return {m for pieces in DOC_MODULES.values() for m in pieces.values()}


def module_cases(module: str) -> list[DocCommand]:
    """The documented commands that test module `module` (its `__name__`) runs."""
    name = module.rpartition(".")[2]
    assert name in module_names(), f"{name}: not a module of DOC_MODULES"
    return [c for c in COMMANDS if module_of(c) == name]


def case_id(c: DocCommand) -> str:
    return c.id


def check_documented_command(cmd: DocCommand, docs: Docs) -> None:
    """One documented command, checked by its program's rule (the module docstring)."""
    argv = list(cmd.argv)
    if kind(argv) == "make":
        python = make_as_python(argv)
        if python is None:
            check_make_target(argv)
            return
        argv = python
    if kind(argv) == "app":
        outcome = docs.app(argv, cmd)
        assert_complete(outcome, f"{cmd.id}: {' '.join(argv)} ({outcome.note})")
        for record, config in zip(outcome.results, outcome.configs, strict=True):
            check_job_record(record, config)  # what the job records (tests/record_checks.py)
    elif kind(argv) == "atlas":
        outcome = docs.atlas(argv, cmd)
        assert_complete(outcome, f"{cmd.id}: {' '.join(argv)} ({outcome.note})")
    elif kind(argv) == "reader":
        outcome, out = docs.reader(argv, cmd)
        assert outcome.rc == 0, f"{cmd.id}: {' '.join(argv)} exited {outcome.rc} ({outcome.note})"
        missing = [f for f in OUTPUT_FILE.findall(cmd.comment) if not list(out.rglob(f))]
        assert not missing, f"{cmd.id}: the comment names {missing}, not written ({outcome.note})"
    else:
        proc = docs.script(argv, cmd)
        assert proc.returncode == 0, f"{cmd.id}: {' '.join(argv)}\n{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}"


def check_make_target(argv: Sequence[str]) -> None:
    """A target that is not one Python command: `make -n` (prints, runs nothing) and its tools."""
    # -B: print the recipe even where the target is up to date (CI's .venv exists when this runs)
    proc = subprocess.run(["make", "-n", "-B", *argv[1:]], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for target in (a for a in argv[1:] if "=" not in a):
        missing = [tool for tool in MAKE_TOOLS.get(target, ()) if tool not in proc.stdout]
        assert not missing, f"make {target} does not invoke {missing}:\n{proc.stdout}"
