"""Question answering with a concept-valued answer (the paper's TriviaQA / country-names task).

Config: `QAConfig` (a Hydra ``task`` node holds the same keys)::

    task = QATask(QAConfig(n_rank=30, n_eval=50), lm.tokenizer)

Prompt: ``lm.format_prompt(question + " " + instruction)`` (``prompt_preset: ours``) or
``lm.format_prompt(QA_PAPER.format(question=question))`` (``paper``: the paper's Table 4 template,
`headpursuit.tasks.prompts.QA_PAPER`, no instruction appended); greedy decoding.

Ranking questions from their own source (the paper: heads from TriviaQA *train* questions,
evaluation on disjoint data): ``hub_rank_split`` (source hub) or ``rank_data_path`` (source
trivia_qa_file). Then the ranking split comes only from that source and the evaluation split only
from the main one; ranking questions whose normalised text (`loaders.question_key`) also occurs in
the main source are dropped, and the provenance counts them (``data.rank_overlap_dropped``).
A question repeated within a source is kept once (its first row), with a warning; the provenance
counts the repeats (``data.duplicates_dropped``, ``data.rank_duplicates_dropped``).
``rank_groups`` holds as without it: control ranking questions come from the ranking source too.

Metrics per group:
``accuracy`` (an accepted alias occurs as whole words in the normalised answer), ``f1`` (the
standard TriviaQA token F1, the paper's metric), ``concept_rate``
(answers with at least one concept word), ``concept_count`` (mean concept words per answer) and
``empty_rate``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from headpursuit.errors import ConfigError
from headpursuit.fingerprint import content_digest
from headpursuit.intervention import generate_with_edits
from headpursuit.metrics.text import alias_match
from headpursuit.models.generation import generate_batch
from headpursuit.tasks import loaders
from headpursuit.tasks.answer_task import AnswerTask
from headpursuit.tasks.base import GroupOutputs, TaskConfig, TaskOutputs, group_counts
from headpursuit.tasks.loaders import QAItem
from headpursuit.tasks.prompts import QA_PAPER, check_preset
from headpursuit.tasks.sources import DataSpec

if TYPE_CHECKING:
    from headpursuit.intervention import Head
    from headpursuit.models.handle import LoadedModel

__all__ = ["QAConfig", "QATask", "DEFAULT_INSTRUCTION"]

DEFAULT_INSTRUCTION = "Give only the short answer, no explanation."

_SOURCES = ("fixture", "jsonl", "hub", "trivia_qa_file")


@dataclass(kw_only=True)
class QAConfig(TaskConfig):
    """Question answering's keys (the `TaskConfig` keys with QA's defaults, and its own)."""

    name: str = "qa_countries"
    concept: Any = "countries"
    #: fixture (the shipped hand-written questions) | jsonl (a file in the fixture's format) | hub
    #: (a TriviaQA copy on the hub) | trivia_qa_file (a file in TriviaQA's schema)
    source: str = "fixture"
    #: the file of source jsonl / trivia_qa_file (null: the shipped fixture)
    data_path: str | None = None
    hub_id: str = "mandarjoshi/trivia_qa"
    hub_config: str | None = "rc.nocontext"
    #: source hub: the evaluation split (all of it when hub_rank_split is set)
    hub_split: str = "validation"
    #: source hub: ranking questions from this split (the paper: heads from TriviaQA train
    #: questions, evaluation on disjoint data); null: rank and evaluate on parts of hub_split
    hub_rank_split: str | None = None
    #: source trivia_qa_file: a second TriviaQA-schema file read for ranking only
    rank_data_path: str | None = None
    #: read at most this many rows (per source)
    max_rows: int | None = None
    n_rank: Any = 40
    n_eval: Any = 40
    #: ours: the question + `instruction` | paper: the paper's TriviaQA template (Table 4)
    prompt_preset: str = "ours"
    #: ours: appended to each question (null or "": none)
    instruction: str | None = DEFAULT_INSTRUCTION
    #: a system message for chat templates (null: none)
    system: str | None = None
    #: tokens generated per answer (greedy)
    max_new_tokens: int = 16
    #: rows per generate batch, or auto (the largest that fits the device; CPU: 64)
    batch_size: Any = 16
    #: none | correct: keep only the ranking answers that match an alias
    ranking_filter: str = "none"


class QATask(AnswerTask):
    name = "qa_countries"
    config_class = QAConfig

    def __init__(self, config: QAConfig, tokenizer: Any = None):
        super().__init__(config, tokenizer)
        c = config
        spec = DataSpec(c.source, c.data_path, c.hub_id, c.hub_config, c.hub_split, c.max_rows).checked(
            self.name, _SOURCES
        )
        self._check_ranking_filter(c.ranking_filter)
        self._check_rank_source(spec, c.hub_rank_split, c.rank_data_path)
        self.prompt_preset = check_preset(self.name, c.prompt_preset)
        # the paper's template is the whole user message: no instruction appended
        self.instruction = "" if c.prompt_preset == "paper" else (c.instruction or "").strip()
        self.system = c.system
        self.max_new_tokens = int(c.max_new_tokens)
        self.ranking_filter = c.ranking_filter
        items, label = self._load(spec)
        items = self._drop_repeats(items, label)
        self.data_source["n_items"] = group_counts(items)
        rank_items = self._load_rank(spec, c.hub_rank_split, c.rank_data_path, items)
        if rank_items is not None:
            label = f"{label} (ranking: {self.data_source['rank_source']})"
        self._split(items, source=label, rank_items=rank_items)

    def _load(self, spec: DataSpec) -> tuple[list[QAItem], str]:
        """The items (at most `max_rows`) and a label naming where they came from."""
        words = list(getattr(self.concept, "words", []) or [])
        if spec.source == "hub":  # max_rows applies while reading
            hub = spec.hub_rows()
            items = loaders.trivia_qa_rows_to_items(hub.rows, words)
            self.data_source = spec.hub_info(hub)
            return items, f"{spec.hub_id}/{spec.hub_config}[{spec.hub_split}]"
        if spec.source == "trivia_qa_file":
            path: str | Path = spec.require_path(self.name)
            items = loaders.load_trivia_qa_file(path, words)
        else:
            if spec.source == "jsonl":
                spec.require_path(self.name)
            path = Path(spec.data_path) if spec.data_path else loaders.fixture_path("qa_countries.jsonl")
            items = loaders.load_qa_fixture(path)
        self.data_source = spec.file_info(path)
        return spec.head(items), str(path)

    def _check_rank_source(self, spec: DataSpec, hub_rank_split: str | None, rank_data_path: str | None) -> None:
        """A ConfigError naming the key when a ranking source is set that `spec.source` does not read."""
        if rank_data_path and spec.source != "trivia_qa_file":
            hint = " (for the hub, task.hub_rank_split=train)" if spec.source == "hub" else ""
            raise ConfigError(
                f"{self.name}: task.rank_data_path is read only with task.source=trivia_qa_file, got "
                f"task.source={spec.source!r}; set task.source=trivia_qa_file task.data_path=<evaluation file>, "
                f"or task.rank_data_path=null{hint}"
            )
        if hub_rank_split and spec.source != "hub":
            raise ConfigError(
                f"{self.name}: task.hub_rank_split is read only with task.source=hub, got task.source="
                f"{spec.source!r}; set task.hub_rank_split=null (a local ranking file: task.source=trivia_qa_file "
                "task.rank_data_path=...)"
            )
        if hub_rank_split and hub_rank_split == spec.hub_split:
            raise ConfigError(
                f"{self.name}: task.hub_rank_split={hub_rank_split!r} is the evaluation split too "
                f"(task.hub_split); set task.hub_rank_split=train task.hub_split=validation, or "
                "task.hub_rank_split=null to rank and evaluate on parts of one split"
            )
        if rank_data_path and spec.data_path and Path(rank_data_path).resolve() == Path(spec.data_path).resolve():
            raise ConfigError(
                f"{self.name}: task.rank_data_path is task.data_path ({rank_data_path}); give a separate "
                "ranking file, or task.rank_data_path=null to rank and evaluate on parts of one file"
            )

    def _load_rank(
        self, spec: DataSpec, hub_rank_split: str | None, rank_data_path: str | None, eval_items: list[QAItem]
    ) -> list[QAItem] | None:
        """The ranking-only items (None without a ranking source), without those whose question also
        occurs in `eval_items`; records the source and the dropped count in `data_source`."""
        words = list(getattr(self.concept, "words", []) or [])
        if hub_rank_split:
            hub = replace(spec, hub_split=hub_rank_split).hub_rows()
            items = loaders.trivia_qa_rows_to_items(hub.rows, words)
            where = f"{spec.hub_id}/{spec.hub_config}[{hub_rank_split}]"
            self.data_source["hub_rank_split"] = hub_rank_split
            self.data_source["content"]["hub_rank_split"] = hub.identity
        elif rank_data_path:
            items = spec.head(loaders.load_trivia_qa_file(rank_data_path, words))
            where = str(rank_data_path)
            self.data_source["rank_path"] = where
            self.data_source["content"]["rank_data_path"] = content_digest(rank_data_path)
        else:
            return None
        items = self._drop_repeats(items, where, count_as="rank_duplicates_dropped")
        kept, dropped = loaders.without_questions_of(items, eval_items)
        self.data_source.update(
            {"rank_source": where, "rank_n_items": group_counts(kept), "rank_overlap_dropped": dropped}
        )
        return kept

    def item_key(self, item: QAItem) -> str:
        """Two rows ask the same question when their `loaders.question_key`s agree."""
        return loaders.question_key(item.question)

    # --- prompting ----------------------------------------------------------------------
    def user_text(self, question: str) -> str:
        if self.prompt_preset == "paper":
            return QA_PAPER.format(question=question)
        return f"{question} {self.instruction}" if self.instruction else question

    def prompt_template(self) -> str:
        """The user message with ``{question}`` for the question (for the provenance)."""
        return self.user_text("{question}") if self.prompt_preset == "ours" else QA_PAPER

    def format(self, lm: LoadedModel, question: str) -> str:
        text = self.user_text(question)
        if self.system is not None:
            return lm.format_prompt(text, system=self.system)
        return lm.format_prompt(text)

    def answer(self, lm: LoadedModel, items: list, desc: str) -> GroupOutputs:
        prompts = [self.format(lm, it.question) for it in items]
        outs = (
            generate_batch(lm, prompts, max_new_tokens=self.max_new_tokens, batch_size=self.batch_size, desc=desc)
            if prompts
            else []
        )
        return self._group_outputs(items, prompts, [o if isinstance(o, str) else o[0] for o in outs])

    def answer_edits(
        self, lm: LoadedModel, items: list, edits: Sequence[Mapping[Head, float]], desc: str, where: str = "all"
    ) -> list[GroupOutputs]:
        prompts = [self.format(lm, it.question) for it in items]
        if not prompts:
            return [self._group_outputs(items, prompts, []) for _ in edits]
        per_edit = generate_with_edits(
            lm,
            prompts,
            edits,
            max_new_tokens=self.max_new_tokens,
            batch_size=self.edit_batch_rows(len(edits)),
            desc=desc,
            where=where,
        )
        return [self._group_outputs(items, prompts, outs) for outs in per_edit]

    def _group_outputs(self, items: list, prompts: list[str], answers: list[str]) -> GroupOutputs:
        return GroupOutputs(
            inputs=[it.question for it in items],
            prompts=prompts,
            outputs=[[a] for a in answers],  # greedy: one answer per prompt
            references=[list(it.answers) for it in items],
        )

    # --- the contract -------------------------------------------------------------------
    def ranking_samples(self, lm: LoadedModel) -> list:
        from headpursuit.capture import CaptureSample

        def sample_of(it: QAItem, prompt: str, answer: str) -> CaptureSample | None:
            correct = alias_match(answer, it.answers)
            if self.ranking_filter == "correct" and not correct:
                return None
            meta = {"question": it.question, "answers": it.answers, "correct": correct, "group": it.group}
            return CaptureSample(prompt=prompt, answer=answer, meta=meta)

        return self.kept_samples(*self.ranking_answers(lm), sample_of)

    def score(self, outputs: TaskOutputs, **_: Any) -> dict:
        result = self._answer_scores(outputs)
        result["examples"] = self._examples(outputs)
        return result

    def provenance(self) -> dict:
        p = super().provenance()
        p.update(
            {
                "ranking_filter": self.ranking_filter,
                "prompt_preset": self.prompt_preset,
                "prompt_template": self.prompt_template(),
            }
        )
        return p
