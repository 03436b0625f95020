"""Data loaders for the text tasks: shipped fixtures, local files and hub datasets.

Every loader returns plain items with a ``group`` (``"concept"`` or ``"control"``):

* `QAItem(question, answers, group)` for question answering;
* `PromptItem(prompt, group)` for continuation tasks (toxicity).

Formats read from local files (``.jsonl``/``.json``/``.parquet``; JSON may be a list of rows or an
object holding one under ``"Data"``/``"data"``):

* fixture format: ``{"question", "answers": [...], "group"}`` / ``{"prompt", "group"}``;
* TriviaQA schema: ``{"question", "answer": {"value", "aliases", "normalized_aliases", ...}}`` (the
  Hugging Face `mandarjoshi/trivia_qa` rows) or the original release's ``{"Question", "Answer":
  {"Value", "Aliases", "NormalizedAliases"}}``; the group is ``"concept"`` when an answer alias is
  a concept word (after `normalize_answer`), else ``"control"``;
* RealToxicityPrompts schema: ``{"prompt": {"text", "toxicity", ...}, "challenging": bool, ...}``;
  ``challenging`` rows are the concept group, non-challenging rows whose prompt toxicity is known
  and below `control_max_toxicity` are the control group;
* Thoroughly Engineered Toxicity (TET) schema: one prompt column (``query`` by default); all rows
  are concept prompts (TET has no neutral prompts; tasks add the fixture's control prompts).

Hub loading goes through `datasets.load_dataset` and only happens when a config asks for it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from headpursuit.metrics.text import normalize_answer
from headpursuit.tasks.base import GROUPS

__all__ = [
    "QAItem",
    "PromptItem",
    "DataError",
    "fixture_path",
    "read_records",
    "load_qa_fixture",
    "trivia_qa_rows_to_items",
    "load_trivia_qa_file",
    "question_key",
    "without_questions_of",
    "load_prompt_fixture",
    "rtp_rows_to_items",
    "tet_rows_to_items",
    "load_rtp_file",
    "load_tet_file",
    "HubRows",
    "load_hub_rows",
    "split_identity",
]


class DataError(ValueError):
    """Malformed input data; the message names the file, line/row and field."""


@dataclass
class QAItem:
    question: str
    answers: list[str]
    group: str
    meta: dict = field(default_factory=dict)


@dataclass
class PromptItem:
    prompt: str
    group: str
    meta: dict = field(default_factory=dict)


def fixture_path(name: str) -> Path:
    """Path of a file shipped in ``headpursuit/data/fixtures``."""
    return Path(str(resources.files("headpursuit") / "data" / "fixtures" / name))


# ------------------------------------------------------------------------------------------
# Reading files
# ------------------------------------------------------------------------------------------


#: how the text files (JSONL, JSON) are read: UTF-8, and a leading byte-order mark, which some
#: editors and Windows tools write, is skipped instead of failing the first row's parse
TEXT_ENCODING = "utf-8-sig"


def _to_python(value: Any) -> Any:
    """numpy arrays / scalars from parquet -> plain lists / scalars (recursively)."""
    if isinstance(value, Mapping):
        return {k: _to_python(v) for k, v in value.items()}
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return _to_python(value.tolist())
    if isinstance(value, (list, tuple)):
        return [_to_python(v) for v in value]
    return value


def read_records(path: str | Path) -> list[tuple[str, dict]]:
    """Rows of a local ``.jsonl`` / ``.json`` / ``.parquet`` file as ``(where, row)`` pairs.

    `where` is ``"file:line N"`` (JSONL) or ``"file:row N"``, for error messages.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data file not found: {path}")
    suffix = "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix
    out: list[tuple[str, dict]] = []
    if suffix in (".jsonl", ".ndjson"):
        with path.open(encoding=TEXT_ENCODING) as f:
            for ln, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:line {ln}: invalid JSON ({e.msg})") from None
                if not isinstance(row, dict):
                    raise DataError(f"{path}:line {ln}: expected a JSON object, got {type(row).__name__}")
                out.append((f"{path}:line {ln}", row))
        return out
    if suffix == ".json":
        with path.open(encoding=TEXT_ENCODING) as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: invalid JSON ({e.msg} at line {e.lineno})") from None
        if isinstance(data, Mapping):
            for key in ("Data", "data", "rows", "examples"):
                if isinstance(data.get(key), list):
                    data = data[key]
                    break
            else:
                raise DataError(f"{path}: expected a list of rows or an object with a 'Data' list")
        for i, row in enumerate(data):
            if not isinstance(row, dict):
                raise DataError(f"{path}:row {i}: expected an object, got {type(row).__name__}")
            out.append((f"{path}:row {i}", row))
        return out
    if suffix == ".parquet":
        import pandas as pd

        df = pd.read_parquet(path)
        for i, row in enumerate(df.to_dict(orient="records")):
            out.append((f"{path}:row {i}", _to_python(row)))
        return out
    raise DataError(f"{path}: unsupported file type {suffix!r} (use .jsonl, .json or .parquet)")


def _require(row: Mapping, key: str, where: str, kind: type | tuple = str) -> Any:
    if key not in row or row[key] is None:
        raise DataError(f"{where}: missing field {key!r}")
    value = row[key]
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise DataError(f"{where}: field {key!r} must be {names}, got {type(value).__name__}")
    return value


def _group(row: Mapping, where: str) -> str:
    g = _require(row, "group", where)
    if g not in GROUPS:
        raise DataError(f"{where}: field 'group' must be one of {list(GROUPS)}, got {g!r}")
    return g


# ------------------------------------------------------------------------------------------
# Question answering
# ------------------------------------------------------------------------------------------


def load_qa_fixture(path: str | Path | None = None) -> list[QAItem]:
    """QA items in the fixture format (default: the shipped ``qa_countries.jsonl``)."""
    path = Path(path) if path is not None else fixture_path("qa_countries.jsonl")
    items = []
    for where, row in read_records(path):
        q = _require(row, "question", where).strip()
        answers = _require(row, "answers", where, (list, tuple, str))
        if isinstance(answers, str):
            answers = [answers]
        answers = [a for a in answers if isinstance(a, str) and a.strip()]
        if not q:
            raise DataError(f"{where}: field 'question' is empty")
        if not answers:
            raise DataError(f"{where}: field 'answers' has no non-empty string")
        items.append(QAItem(q, list(answers), _group(row, where), {"where": where}))
    if not items:
        raise DataError(f"{path}: no rows")
    return items


def _dedupe(seq: Iterable[str]) -> list[str]:
    seen, out = set(), []
    for s in seq:
        if isinstance(s, str) and s.strip() and s not in seen:
            seen.add(s)
            out.append(s)
    return out


def trivia_qa_rows_to_items(
    rows: Iterable[tuple[str, Mapping]] | Iterable[Mapping],
    concept_words: Iterable[str],
) -> list[QAItem]:
    """TriviaQA rows -> QAItems; group "concept" iff an answer alias is a concept word.

    Accepts `(where, row)` pairs or bare rows. Answers are ``[value] + aliases`` (original casing,
    de-duplicated); ``normalized_aliases`` also count for the concept test.
    """
    concept_norm = {normalize_answer(w) for w in concept_words}
    concept_norm.discard("")
    items = []
    for k, entry in enumerate(rows):
        where, row = entry if isinstance(entry, tuple) else (f"row {k}", entry)
        original = "Question" in row and "question" not in row  # the original release's casing
        qkey, akey = ("Question", "Answer") if original else ("question", "answer")
        q = _require(row, qkey, where)
        ans = _require(row, akey, where, Mapping)
        lower = akey == "answer"
        vkey, alkey, nkey = (
            ("value", "aliases", "normalized_aliases") if lower else ("Value", "Aliases", "NormalizedAliases")
        )
        value = _require(ans, vkey, f"{where}: field {akey!r}")
        aliases = ans.get(alkey) or []
        normalized = ans.get(nkey) or []
        answers = _dedupe([value, *aliases])
        if not answers:
            raise DataError(f"{where}: field {akey!r} has no answer text")
        is_concept = any(normalize_answer(a) in concept_norm for a in [*answers, *normalized])
        meta = {"where": where}
        if "question_id" in row or "QuestionId" in row:
            meta["id"] = row.get("question_id", row.get("QuestionId"))
        items.append(QAItem(q.strip(), answers, "concept" if is_concept else "control", meta))
    return items


def load_trivia_qa_file(path: str | Path, concept_words: Iterable[str]) -> list[QAItem]:
    """A local file in TriviaQA's schema, mapped like the hub dataset."""
    return trivia_qa_rows_to_items(read_records(path), concept_words)


def question_key(question: str) -> str:
    """A question's (or prompt's) text as compared within and across data sources:
    `normalize_answer` (lowercase, no punctuation or articles, single spaces), so that copies
    differing only in such details match; a text that normalises to nothing (punctuation only) is
    compared as written, so that such texts are not all one."""
    return normalize_answer(question) or " ".join(question.split())


def without_questions_of(items: Iterable[QAItem], others: Iterable[QAItem]) -> tuple[list[QAItem], int]:
    """`items` without those whose `question_key` is also one of `others`', and how many were dropped
    (e.g. TriviaQA train questions that also occur in the evaluation file: ranking must not see them)."""
    items = list(items)
    taken = {question_key(it.question) for it in others}
    kept = [it for it in items if question_key(it.question) not in taken]
    return kept, len(items) - len(kept)


@dataclass(frozen=True)
class HubRows:
    """The rows read from a hub split, as ``(where, row)`` pairs, and the split's `split_identity`."""

    rows: list[tuple[str, dict]]
    identity: str


def split_identity(ds: Any, rows: Iterable[tuple[str, Mapping]] | None = None) -> str:
    """What a loaded dataset split holds, for cache keys: ``datasets:<fingerprint>`` (the fingerprint
    `datasets` gives a split it loaded; another revision of the dataset has another one), else
    ``rows:<sha256>`` of `rows` read from it (e.g. a streamed split, which has no fingerprint)."""
    fingerprint = getattr(ds, "_fingerprint", None)
    if isinstance(fingerprint, str) and fingerprint:
        return f"datasets:{fingerprint}"
    if rows is None:
        raise ValueError(f"a {type(ds).__name__} has no fingerprint: pass the rows read from it to identify it")
    h = hashlib.sha256()
    for _, row in rows:
        h.update(json.dumps(row, sort_keys=True, default=str).encode() + b"\n")
    return f"rows:{h.hexdigest()}"


def load_hub_rows(
    hub_id: str,
    *,
    hub_config: str | None = None,
    hub_split: str = "train",
    max_rows: int | None = None,
    streaming: bool = False,
) -> HubRows:
    """Rows of a hub dataset via `datasets.load_dataset` (needs network or a local HF cache), with
    the split's identity."""
    import datasets

    try:
        ds = datasets.load_dataset(hub_id, hub_config, split=hub_split, streaming=streaming)
    except Exception as e:
        raise RuntimeError(
            f"could not load hub dataset {hub_id!r} (config={hub_config!r}, split={hub_split!r}): "
            f"{type(e).__name__}: {e}. Hub datasets need network access (or a populated HF "
            "cache); offline, use the shipped fixture (source: fixture) or a local file "
            "(data_path=...)."
        ) from e
    out = []
    for i, row in enumerate(ds):
        if max_rows is not None and i >= max_rows:
            break
        out.append((f"{hub_id}[{hub_split}]:row {i}", dict(row)))
    return HubRows(out, split_identity(ds, out))


# ------------------------------------------------------------------------------------------
# Continuation prompts (toxicity)
# ------------------------------------------------------------------------------------------


def load_prompt_fixture(path: str | Path | None = None) -> list[PromptItem]:
    """Prompt items in the fixture format (default: the shipped ``toxicity_prompts.jsonl``)."""
    path = Path(path) if path is not None else fixture_path("toxicity_prompts.jsonl")
    items = []
    for where, row in read_records(path):
        p = _require(row, "prompt", where)
        if not p.strip():
            raise DataError(f"{where}: field 'prompt' is empty")
        items.append(PromptItem(p, _group(row, where), {"where": where}))
    if not items:
        raise DataError(f"{path}: no rows")
    return items


def rtp_rows_to_items(
    rows: Iterable[tuple[str, Mapping]] | Iterable[Mapping],
    *,
    challenging_only: bool = True,
    control_max_toxicity: float | None = 0.1,
) -> list[PromptItem]:
    """RealToxicityPrompts rows -> PromptItems.

    Concept: rows with ``challenging == True`` (all rows when ``challenging_only=False``).
    Control (only with ``challenging_only``): non-challenging rows whose ``prompt.toxicity`` is
    known and ``< control_max_toxicity`` (None: no control rows from this source).
    """
    items = []
    for k, entry in enumerate(rows):
        where, row = entry if isinstance(entry, tuple) else (f"row {k}", entry)
        prompt = _require(row, "prompt", where, Mapping)
        text = _require(prompt, "text", f"{where}: field 'prompt'")
        if not text.strip():
            continue
        challenging = bool(row.get("challenging", False))
        tox = prompt.get("toxicity")
        meta = {"where": where, "prompt_toxicity": tox, "challenging": challenging}
        if not challenging_only or challenging:
            items.append(PromptItem(text, "concept", meta))
        elif control_max_toxicity is not None and tox is not None and tox < control_max_toxicity:
            items.append(PromptItem(text, "control", meta))
    return items


def tet_rows_to_items(
    rows: Iterable[tuple[str, Mapping]] | Iterable[Mapping], *, prompt_column: str = "query"
) -> list[PromptItem]:
    """Thoroughly Engineered Toxicity rows -> concept PromptItems (column `prompt_column`)."""
    items = []
    for k, entry in enumerate(rows):
        where, row = entry if isinstance(entry, tuple) else (f"row {k}", entry)
        text = _require(row, prompt_column, where)
        if text.strip():
            items.append(PromptItem(text, "concept", {"where": where}))
    return items


def load_rtp_file(path: str | Path, **kwargs: Any) -> list[PromptItem]:
    return rtp_rows_to_items(read_records(path), **kwargs)


def load_tet_file(path: str | Path, **kwargs: Any) -> list[PromptItem]:
    return tet_rows_to_items(read_records(path), **kwargs)
