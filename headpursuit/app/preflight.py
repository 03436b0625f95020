"""The checks of a run that need no model weights, run before the model loads: a 7B job that
would fail on a missing data file, an unknown concept or an unavailable device fails in seconds,
before any GPU time, with a message naming the config key and a fix that works as written.

    preflight(conf)         # conf = validate_config(cfg); raises PreflightError("task.data_path='x.jsonl': no such file. Fix: ...")

What is checked (after `validate_config`, which needs no tokenizer either):

* `device`: exists on this machine (`headpursuit.models.loading.check_device`);
* `cache_dir`: the directory (or, not made yet, its nearest existing parent) takes a new file: a
  probe file is created there and deleted again (`check_cache_dir`);
* `task.data_path`: exists, is readable and not empty, and parses (`.jsonl` / `.json` / `.parquet`);
* with the model's tokenizer (a few MB, loaded without the weights; for embedded and hub models,
  not for synthetic builders such as `tiny_vlm`, whose load takes seconds anyway):
  * `ranking.somp_steps` (SOMP steps / top tokens): at most the vocabulary, the dictionary a ranking
    picks from (`check_somp_steps`);
  * `task.concept`: a shipped name or a word-list file whose words tokenise to something;
  * the task built from its config: `task.source`, the data file's schema, the ranking /
    evaluation split sizes. The task is built again, on the model, after the model loads.

Checked before, by `validate_config` (neither model nor tokenizer), among the config values:

* `task.n_rank` (and `rank_task.n_rank`): an int >= 1, or per group with every ranked group >= 1;
* `task.n_eval`: an int >= 1, null (every item) or per group;
* `task.max_new_tokens`, `task.n_continuations`: >= 1;
* `intervention.random_seeds`: not empty while `intervention.random_controls` is true.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from headpursuit.app.schema import AppConfig, ModelConfig
from headpursuit.concepts import available_concepts, load_concept
from headpursuit.errors import ConfigError
from headpursuit.models.embedded import EMBEDDED
from headpursuit.models.loading import BUILDERS, check_device
from headpursuit.models.tiny import embedded_tokenizer
from headpursuit.ranking import RankingConfig
from headpursuit.tasks import DataError, SplitError, TaskConfig, build_task, task_config
from headpursuit.tasks.loaders import read_records

__all__ = [
    "PreflightError",
    "preflight",
    "standalone_tokenizer",
    "check_data_file",
    "check_concept",
    "check_task_builds",
    "check_cache_dir",
    "check_somp_steps",
]

log = logging.getLogger(__name__)


class PreflightError(ConfigError):
    """A job's input (data file, concept, task source or splits) fails a check before the model
    loads. Unlike other config errors a multirun records it and goes on, as for a runtime failure:
    the jobs of a sweep may read different data."""


#: the data files `read_records` parses (others, e.g. image folders or CSV, are left to the task)
RECORD_SUFFIXES = (".jsonl", ".ndjson", ".json", ".parquet")
SHIPPED_DATA_FIX = "task.source=fixture task.data_path=null (the shipped data)"


def shipped_data_fix(node: str = "task") -> str:
    """The fix that always works for a task node's data: the shipped fixture."""
    return SHIPPED_DATA_FIX.replace("task.", f"{node}.")


def preflight(conf: AppConfig) -> None:
    """Every check of a validated run config (`validate_config`) that needs no model weights:
    ConfigError naming the key (`device`), PreflightError for the job's input (`task.*`)."""
    check_device(conf.device)
    check_cache_dir(conf.cache_dir)
    # the evaluated task, and the task a transfer run ranks on (rank_task)
    tasks = [("task", conf.task)] + ([("rank_task", conf.rank_task)] if conf.rank_task is not None else [])
    for node, task_cfg in tasks:
        for key in ("data_path", "rank_data_path"):
            check_data_file(task_cfg, key=key, node=node)
    tokenizer = standalone_tokenizer(conf.model)
    if tokenizer is None:
        return
    check_somp_steps(conf.ranking, tokenizer, conf.model.name_or_path)
    for node, task_cfg in tasks:
        check_concept(task_cfg, tokenizer, node=node)
        check_task_builds(task_cfg, tokenizer, node=node)


def standalone_tokenizer(model_cfg: ModelConfig) -> Any:
    """The model's tokenizer, without its weights; None when it cannot be had that way (a
    synthetic builder, or a hub model whose tokenizer is not reachable: its load reports that)."""
    name = model_cfg.name_or_path
    if name in BUILDERS:
        return None
    try:
        if name in EMBEDDED:
            return embedded_tokenizer(name)
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(
            name,
            revision=model_cfg.revision,
            trust_remote_code=model_cfg.trust_remote_code,
        )
    except Exception as exc:  # the model load itself says what is wrong
        log.info(
            "preflight: no tokenizer for %s without its weights (%s); concept checks wait for the model", name, exc
        )
        return None


def check_cache_dir(cache_dir: Any) -> None:
    """`cache_dir` (null: no cache) can be written: the directory, or its nearest existing parent
    when it is not made yet, takes a new file. A probe file is created there and deleted; nothing
    else is created or removed."""
    if cache_dir in (None, ""):
        return
    path = Path(str(cache_dir)).expanduser()
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    fix = "Fix: cache_dir=<a writable directory>, or cache_dir=null (no cache: every stage is computed)"
    if existing is None or not existing.is_dir():
        raise ConfigError(f"cache_dir={str(cache_dir)!r}: {existing or path} is not a directory. {fix}")
    try:
        fd, probe = tempfile.mkstemp(prefix=".headpursuit-write-probe-", dir=existing)
    except OSError as exc:
        made = "" if existing == path else f" (its nearest existing parent, where it would be made: {existing})"
        raise ConfigError(f"cache_dir={str(cache_dir)!r} is not writable{made}: {exc.strerror or exc}. {fix}") from None
    os.close(fd)
    os.unlink(probe)


def check_somp_steps(ranking_cfg: RankingConfig, tokenizer: Any, model_name: str) -> None:
    """`ranking.somp_steps` at most the vocabulary: SOMP picks its atoms from the unembedding's rows
    (one per token) and `logit_lens` takes that many top tokens; `rank_heads` refuses more for every
    method. (`concept_restricted` caps the steps at the number of concept tokens itself, with a
    warning.) The tokenizer's length stands for the vocabulary; the unembedding may have a few
    padding rows more, which `rank_heads` checks after the load."""
    steps = ranking_cfg.somp_steps
    vocab = len(tokenizer)
    if steps > vocab:
        capped = (
            " (concept_restricted caps the steps at the number of concept tokens, but not above the vocabulary)"
            if ranking_cfg.method == "concept_restricted"
            else ""
        )
        raise ConfigError(
            f"ranking.somp_steps={steps} (SOMP steps) is larger than the vocabulary of {model_name} ({vocab} "
            f"tokens), the dictionary the ranking picks from; at most {vocab}{capped}. Fix: ranking.somp_steps="
            f"{RankingConfig.somp_steps}"
        )


def check_data_file(task_cfg: TaskConfig, *, key: str = "data_path", node: str = "task") -> None:
    """`task.data_path` (or another file key, e.g. rank_data_path, of the config node `node`), when
    the task kind has it and it is set: exists, readable, not empty, and parses if it is a record file."""
    raw = getattr(task_cfg, key, None)
    if raw in (None, ""):
        return
    path = Path(str(raw)).expanduser()
    where = f"{node}.{key}={raw!r}"
    if not path.exists():
        # rank_data_path=null: the ranking questions come from the evaluation source's own split
        fallback = shipped_data_fix(node) if key == "data_path" else f"{node}.{key}=null"
        raise PreflightError(f"{where}: no such file or directory. Fix: {node}.{key}=<an existing file>, or {fallback}")
    if path.is_dir():
        return  # an image folder: the task reads it
    try:
        with open(path, "rb") as f:
            first = f.read(1)
    except OSError as exc:
        raise PreflightError(
            f"{where}: cannot be read ({exc}). Fix: make it readable, or {shipped_data_fix(node)}"
        ) from None
    if not first:
        raise PreflightError(
            f"{where}: the file is empty (0 bytes). Fix: point it at a file with rows, or {shipped_data_fix(node)}"
        )
    if path.suffix.lower() in RECORD_SUFFIXES:
        try:
            rows = read_records(path)
        except (DataError, OSError, UnicodeDecodeError, ValueError) as exc:
            raise PreflightError(
                f"{where}: malformed: {exc}. Fix: repair the file, or {shipped_data_fix(node)}"
            ) from None
        if not rows:
            raise PreflightError(
                f"{where}: the file has no rows. Fix: point it at a file with rows, or {shipped_data_fix(node)}"
            )


def check_concept(task_cfg: TaskConfig, tokenizer: Any, *, node: str = "task") -> None:
    """`task.concept` (a name, a word-list file or a list of words) gives a non-empty concept."""
    concept = task_cfg.concept
    if concept is None:
        return  # derived by the task (e.g. classification's class names)
    where = f"{node}.concept={concept!r}"
    shipped = ", ".join(available_concepts())
    try:
        load_concept(list(concept) if isinstance(concept, (list, tuple)) else concept, tokenizer)
    except ValueError as exc:
        if str(exc).startswith("Unknown concept"):
            raise PreflightError(
                f"{where} is neither a shipped concept ({shipped}) nor an existing word-list file. "
                f"Fix: {node}.concept=countries (or another shipped name), or {node}.concept=/path/to/words.txt "
                f"(one word per line)"
            ) from None
        raise PreflightError(f"{where}: {exc} Fix (a shipped concept): {node}.concept=countries") from None


@contextlib.contextmanager
def tasks_log_quiet() -> Iterator[None]:
    """The tasks' logged warnings (e.g. repeated questions dropped) held back, errors kept."""
    logger = logging.getLogger("headpursuit.tasks")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def check_task_builds(task_cfg: TaskConfig | Mapping[str, Any], tokenizer: Any, *, node: str = "task") -> None:
    """Build the task on the tokenizer alone: its source, data schema and splits are then checked."""
    task_cfg = task_config(task_cfg, node=node)
    source = getattr(task_cfg, "source", None)
    try:
        # The build on the model warns again, where it counts: warnings and the tasks' logged ones.
        with warnings.catch_warnings(), tasks_log_quiet():
            warnings.simplefilter("ignore")
            build_task(task_cfg, tokenizer=tokenizer)
    except PreflightError:
        raise
    except ConfigError as exc:  # e.g. task.rank_groups: already names the key
        raise PreflightError(str(exc)) from None
    except SplitError as exc:
        raise PreflightError(
            f"{node}.n_rank / {node}.n_eval: {exc}. Fix: lower {node}.n_rank and {node}.n_eval "
            f"(now {task_cfg.n_rank!r} and {task_cfg.n_eval!r}), or give more data"
        ) from None
    except (DataError, FileNotFoundError, UnicodeDecodeError) as exc:
        raise PreflightError(
            f"{node}.data_path={getattr(task_cfg, 'data_path', None)!r} ({node}.source={source!r}): {exc}. "
            f"Fix: a file in the format {node}.source={source!r} reads, or {shipped_data_fix(node)}"
        ) from None
    except ValueError as exc:
        msg = str(exc)
        if "unknown source" in msg:
            raise PreflightError(
                f"{node}.source={source!r}: {msg}. Fix: {node}.source=fixture (the shipped data)"
            ) from None
        if "needs data_path" in msg:
            raise PreflightError(
                f"{node}.data_path is null, but {node}.source={source!r} reads a file ({msg}). "
                f"Fix: {node}.data_path=/path/to/file, or {shipped_data_fix(node)}"
            ) from None
        raise PreflightError(f"task ({node}.name={task_cfg.name!r}): {msg}") from None
