"""Question answering with a concept-valued answer (the paper's TriviaQA / country-names task).

Config (all keyword arguments; a Hydra ``task`` node passes the same keys)::

    name: qa_countries
    concept: countries            # Concept name (headpursuit/data/concepts) or a word list
    source: fixture               # fixture | jsonl | hub | trivia_qa_file
    data_path: null               # fixture-format JSONL (source fixture/jsonl) or a TriviaQA-schema
                                  #   file (source trivia_qa_file); null = the shipped fixture
    hub_id: mandarjoshi/trivia_qa # source hub
    hub_config: rc.nocontext
    hub_split: validation
    max_rows: null                # read at most this many rows (hub / files)
    n_rank: 30                    # per ranked group (int or {concept: .., control: ..})
    n_eval: 50
    rank_groups: null             # null / [concept]: rank on concept questions; [concept, control]:
                                  #   also n_rank control questions (from those eval does not use)
    seed: 0
    instruction: "Give only the short answer, no explanation."  # appended; null/"" = none
    system: null                  # optional system message for chat templates
    max_new_tokens: 24
    batch_size: 16
    ranking_filter: none          # none | correct: keep only ranking answers that alias-match

Prompt: ``lm.format_prompt(question + " " + instruction)``; greedy decoding. Metrics per group:
``accuracy`` (an accepted alias occurs as whole words in the normalised answer), ``concept_rate``
(answers with at least one concept word), ``concept_count`` (mean concept words per answer) and
``empty_rate``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from headpursuit.metrics.text import alias_match
from headpursuit.models.generation import generate_batch
from headpursuit.tasks import loaders
from headpursuit.tasks.base import GROUPS, GroupOutputs, Task, TaskOutputs

if TYPE_CHECKING:
    from headpursuit.models.handle import LoadedModel

__all__ = ["QATask", "DEFAULT_INSTRUCTION"]

DEFAULT_INSTRUCTION = "Give only the short answer, no explanation."

_SOURCES = ("fixture", "jsonl", "hub", "trivia_qa_file")


class QATask(Task):
    name = "qa_countries"
    config_keys = (
        "source",
        "data_path",
        "hub_id",
        "hub_config",
        "hub_split",
        "max_rows",
        "instruction",
        "system",
        "max_new_tokens",
        "ranking_filter",
    )

    def __init__(
        self,
        *,
        concept: Any = "countries",
        tokenizer: Any = None,
        source: str = "fixture",
        data_path: str | None = None,
        hub_id: str = "mandarjoshi/trivia_qa",
        hub_config: str | None = "rc.nocontext",
        hub_split: str = "validation",
        max_rows: int | None = None,
        instruction: str | None = DEFAULT_INSTRUCTION,
        system: str | None = None,
        max_new_tokens: int = 24,
        ranking_filter: str = "none",
        n_rank: Any = 30,
        n_eval: Any = 50,
        seed: int = 0,
        batch_size: int = 16,
        n_examples: int = 3,
        **unknown: Any,
    ):
        super().__init__(
            concept=concept,
            tokenizer=tokenizer,
            n_rank=n_rank,
            n_eval=n_eval,
            seed=seed,
            batch_size=batch_size,
            n_examples=n_examples,
            **unknown,
        )
        if source not in _SOURCES:
            raise ValueError(f"{self.name}: unknown source {source!r}; known: {', '.join(_SOURCES)}")
        if ranking_filter not in ("none", "correct"):
            raise ValueError(f"{self.name}: ranking_filter must be 'none' or 'correct', got {ranking_filter!r}")
        self.instruction = (instruction or "").strip()
        self.system = system
        self.max_new_tokens = int(max_new_tokens)
        self.ranking_filter = ranking_filter

        words = list(getattr(self.concept, "words", []) or [])
        if source in ("fixture", "jsonl"):
            if source == "jsonl" and not data_path:
                raise ValueError(f"{self.name}: source 'jsonl' needs data_path")
            path = Path(data_path) if data_path else loaders.fixture_path("qa_countries.jsonl")
            items = loaders.load_qa_fixture(path)
            label = str(path)
            self.data_source = {"source": source, "path": label}
        elif source == "trivia_qa_file":
            if not data_path:
                raise ValueError(f"{self.name}: source 'trivia_qa_file' needs data_path")
            items = loaders.load_trivia_qa_file(data_path, words)
            label = str(data_path)
            self.data_source = {"source": source, "path": label}
        else:
            items = loaders.load_trivia_qa_hub(
                words, hub_id=hub_id, hub_config=hub_config, hub_split=hub_split, max_rows=max_rows
            )
            label = f"{hub_id}/{hub_config}[{hub_split}]"
            self.data_source = {"source": source, "hub_id": hub_id, "hub_config": hub_config, "hub_split": hub_split}
        if max_rows is not None and source != "hub":
            items = items[: int(max_rows)]
        self.data_source["n_items"] = {g: sum(it.group == g for it in items) for g in GROUPS}
        self._split(items, source=label)

    # --- prompting ----------------------------------------------------------------------
    def user_text(self, question: str) -> str:
        return f"{question} {self.instruction}" if self.instruction else question

    def format(self, lm: LoadedModel, question: str) -> str:
        text = self.user_text(question)
        if self.system is not None:
            return lm.format_prompt(text, system=self.system)
        return lm.format_prompt(text)

    def _answer(self, lm: LoadedModel, items: list, desc: str) -> GroupOutputs:
        prompts = [self.format(lm, it.question) for it in items]
        outs = (
            generate_batch(lm, prompts, max_new_tokens=self.max_new_tokens, batch_size=self.batch_size, desc=desc)
            if prompts
            else []
        )
        return GroupOutputs(
            inputs=[it.question for it in items],
            prompts=prompts,
            outputs=[[o] if isinstance(o, str) else o for o in outs],  # greedy: one string per prompt
            references=[list(it.answers) for it in items],
        )

    # --- the contract -------------------------------------------------------------------
    def ranking_samples(self, lm: LoadedModel) -> list:
        from headpursuit.capture import CaptureSample

        items = self.ranking_items()
        go = self._answer(lm, items, desc=f"{self.name} ranking answers")
        samples = []
        for it, prompt, out in zip(items, go.prompts, go.outputs):
            answer = out[0]
            if self.ranking_filter == "correct" and not alias_match(answer, it.answers):
                continue
            samples.append(
                CaptureSample(
                    prompt=prompt,
                    answer=answer,
                    meta={
                        "question": it.question,
                        "answers": it.answers,
                        "correct": alias_match(answer, it.answers),
                        "group": it.group,
                    },
                )
            )
        if not samples:
            raise ValueError(f"{self.name}: no ranking samples left after ranking_filter={self.ranking_filter!r}")
        return samples

    def generate(self, lm: LoadedModel, *, split: str = "eval", desc: str = "") -> TaskOutputs:
        out = TaskOutputs(task=self.name, split=split, desc=desc)
        for g in GROUPS:
            label = " ".join(x for x in (self.name, desc, g) if x)
            out.groups[g] = self._answer(lm, self.items(split, g), desc=label)
        return out

    def score(self, outputs: TaskOutputs, **_: Any) -> dict:
        result = self._answer_scores(outputs)
        result["examples"] = self._examples(outputs)
        return result

    def provenance(self) -> dict:
        p = super().provenance()
        p.update(
            {
                "instruction": self.instruction,
                "system": self.system,
                "max_new_tokens": self.max_new_tokens,
                "decoding": "greedy",
                "ranking_filter": self.ranking_filter,
            }
        )
        return p
