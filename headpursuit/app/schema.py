"""The run config's schema: one typed dataclass per config group, registered in Hydra's ConfigStore.

Every key of a run config and its only default live here (the groups only the app reads: model,
intervention, logger and the top level, `JobConfig` the keys a run shares with the head atlas, and
the atlas's own, `AtlasAppConfig`) or in the library's config dataclasses (what the library builds:
`headpursuit.tasks.QAConfig` and the other task kinds, `headpursuit.ranking.RankingConfig`).
The YAML files of ``conf/`` start from their group's schema and hold only what differs::

    # conf/task/toxicity.yaml                  # conf/ranking/paper.yaml
    defaults: [toxicity_schema, _self_]        defaults: [ranking_schema, _self_]
                                               method: concept_restricted
                                               somp_steps: 50 ...

Composition checks every key against its schema (Hydra's "structured configs" with the "schema"
pattern): a key that does not exist (``intervention.kk=3``) or a value of the wrong type
(``intervention.k=abc``) fails before anything runs, with an OmegaConf error naming the key.
Keys whose type is a union (``task.n_rank``: an int or ``{concept: .., control: ..}``;
``task.n_eval``; ``task.batch_size`` and ``capture_batch_size``: an int or ``auto``) are `Any`
here (OmegaConf has no unions) and checked by `headpursuit.app.config.validate_config`, as are the
values a type does not pin down (ranges, choices).

`RESULT_NEUTRAL_KEYS` (`headpursuit.app.result_neutral`): the top-level keys that do not change a
run's results, the one list that the resume hash (`config_hash`) and the W&B run name (Hydra's
``override_dirname``, through the ``${hp.result_neutral_keys:}`` resolver in conf/config.yaml,
`override_dirname_excludes`) leave out.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from headpursuit.app.result_neutral import LAUNCHER_GROUP, RESULT_NEUTRAL_KEYS
from headpursuit.app.tracker import LoggerConfig
from headpursuit.ranking import RankingConfig
from headpursuit.stats import IntervalConfig
from headpursuit.tasks import CaptioningConfig, ClassificationConfig, QAConfig, TaskConfig, ToxicityConfig
from headpursuit.tasks.loaders import fixture_path

__all__ = [
    "AppConfig",
    "AtlasAppConfig",
    "AtlasConfig",
    "AtlasSompConfig",
    "JobConfig",
    "InterventionConfig",
    "LoggerConfig",
    "ModelConfig",
    "RankingSchema",
    "RENAMED_KEYS",
    "RESULT_NEUTRAL_KEYS",
    "TASK_SCHEMAS",
    "override_dirname_excludes",
    "register_configs",
]


@dataclass(kw_only=True)
class ModelConfig:
    """The model (``model/``): what `load_model` reads, and its layout for the checks before it."""

    #: a registry name (embedded: smollm2, gemma3-270m; builders: tiny_vlm), a hub id or a directory
    name_or_path: str = MISSING
    #: a hub revision (branch, tag or commit); null: the default branch
    revision: str | None = None
    trust_remote_code: bool = False
    #: extra keyword arguments of the model's from_pretrained
    kwargs: dict[str, Any] = field(default_factory=dict)
    #: the attention layout, declared so that intervention.k is checked before the load (and again
    #: after it); null: known only once the model has loaded
    n_layers: int | None = None
    n_heads: int | None = None


@dataclass(kw_only=True)
class RankingSchema(RankingConfig):
    """`RankingConfig` (the ``ranking/`` group), and the key it renamed: a run that sets
    ``ranking.k`` stops before anything loads, naming ``ranking.somp_steps``."""

    #: renamed ranking.somp_steps (the number of SOMP steps; intervention.k stays the number of
    #: heads edited). Null always: set, it fails the run with that message (`RENAMED_KEYS`).
    k: Any = None


#: old key -> (new key, what it is), for keys kept in the schema only to say where they went (null
#: unless set)
RENAMED_KEYS = {
    "ranking.k": ("ranking.somp_steps", "the number of SOMP steps; intervention.k stays the number of heads edited")
}


@dataclass(kw_only=True)
class InterventionConfig:
    """Which heads are rescaled, by how much, and the random-head controls (``intervention/``)."""

    #: the number of heads edited
    k: int = 6
    #: if set, k = round(k_frac * the model's heads), at least 1; overrides k
    k_frac: float | None = None
    #: the factor on the heads' outputs: -1 flips (suppresses), 0 ablates, > 1 enhances
    alpha: float = -1.0
    #: ranked (the top k by score) | random (seeded by `seed`) | explicit (the heads in `explicit`)
    heads: str = "ranked"
    #: heads=explicit: [[layer, head], ...] or ["layer.head", ...]
    explicit: list[Any] = field(default_factory=list)
    #: also evaluate a random head set per seed, same alpha (mean, std, median, q25, q75)
    random_controls: bool = True
    #: one random set per seed; the paper uses 10 (experiment=paper_*: [0, ..., 9]); [] needs
    #: random_controls: false
    random_seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    #: all (k of any head; ours) | same_layers (k from the edited heads' layers, edited heads
    #: excluded; ours) | layer_counts (the edited set's per-layer counts, disjoint from it; the paper's)
    random_pool: str = "all"
    #: layer_counts, when a layer holds more edited heads than other heads (SmolLM2: 5 of its 9):
    #: false takes the missing heads from the nearest layers (distance 1, 2, ...; both sides alike;
    #: recorded in results.json random.relaxed_layers and per_seed[*].relaxed, marked * in the
    #: tables); true fails the run instead
    random_strict: bool = False
    #: true: the edited model, every random control (and the baseline when not cached) generate in
    #: one batched pass over the same prompts (rows = (prompt, edit) pairs; greedy tasks only, the
    #: same tokens as one at a time); false: one generate pass per edit. Sampling tasks (toxicity)
    #: always go one edit at a time
    batched_edits: bool = True
    #: alphas of the same sweep evaluated in this job's batched pass too (same heads and random sets),
    #: each cached under its own key, so the sweep's other alpha jobs read them from the cache:
    #: ``-m intervention.alpha=-1,5 intervention.batch_alphas=[-1,5]``. [] : only this job's alpha.
    #: Needs batched_edits and a greedy task
    batch_alphas: list[float] = field(default_factory=list)
    #: the positions the edit (and every random control) acts on (headpursuit.intervention.WHERE):
    #: all (every position: the paper's edit) | prompt (the prompt's positions, read in the prompt
    #: pass) | generated (the new tokens only) | image | text (a VLM's image-patch tokens / every
    #: other token, generated ones included; image tasks only)
    where: str = "all"


@dataclass(kw_only=True)
class JobConfig:
    """The keys every job of the shell has, a run (`AppConfig`) and an atlas (`AtlasAppConfig`):
    the model, the tracker, and where and how the job runs."""

    model: ModelConfig = MISSING
    #: the logger group (conf/config.yaml: wandb); without one (a config built in code): no tracker
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    #: auto: cuda when available, else cpu
    device: str = "auto"
    #: auto: bfloat16 on GPU, float32 on CPU; or float32 / bfloat16 / float16
    dtype: str = "auto"
    #: seeds the task split (every task's `seed` follows it), the random heads and ranking baseline,
    #: torch/numpy/random
    seed: int = 0
    #: true: torch's deterministic algorithms (and cuDNN/cuBLAS settings) for capture, ranking and
    #: generation (headpursuit.set_deterministic). Slower on GPU; on CPU it changes little. Ranking is
    #: float32 with (score, layer, head) tie-breaking and random head sets are string-seeded either way
    deterministic: bool = False
    #: the activation, ranking-answer, head-score and evaluation cache shared by every job of a sweep
    #: (keys: model + samples + positions + ranking config + code fingerprint); null: no cache.
    #: conf/config.yaml sets <working dir>/outputs/cache
    cache_dir: str | None = None
    #: a run whose results.json says status=complete with the same config is skipped on rerun
    resume: bool = True
    #: in a multirun a failed job writes error.txt and the sweep goes on; true raises instead and
    #: the remaining jobs of this launch skip themselves (a rerun after a fix runs what is missing).
    #: A complete results.json is never overwritten by a failure or a skip
    fail_fast: bool = False
    #: seconds between heartbeats (run_dir/.heartbeat) while a job runs; `aggregate` reports a
    #: "running" job whose heartbeat stopped as stale (killed: SIGKILL, node failure). 0: none
    heartbeat_s: float = 30
    #: write the heat maps next to results.json
    plots: bool = True
    #: capture batch size (ranking forward passes), or auto: the largest that fits the device (text
    #: tasks on GPU; headpursuit.models.batching.auto_batch_size, kind "forward"; CPU: 32)
    capture_batch_size: Any = 8


@dataclass(kw_only=True)
class AppConfig(JobConfig):
    """A run: the groups, and the top-level keys (conf/config.yaml; those shared with the atlas:
    `JobConfig`)."""

    #: a task kind's config (`TASK_SCHEMAS`: each task YAML names its schema)
    task: Any = MISSING
    ranking: RankingSchema = MISSING
    intervention: InterventionConfig = MISSING
    #: the bootstrap intervals over the evaluation items (`headpursuit.stats.IntervalConfig`:
    #: n_resamples, level, seed; its defaults are the only ones)
    intervals: IntervalConfig = field(default_factory=IntervalConfig)
    #: transfer (the paper's Figure 4): rank the heads on another task's ranking data and concept,
    #: evaluate them on `task`; null: rank on `task` itself. Composed from conf/task/:
    #: ``task=cls_mnist +task@rank_task=cls_svhn`` (heads from SVHN, scored on MNIST)
    rank_task: Any = None


@dataclass(kw_only=True)
class AtlasSompConfig:
    """The one full-vocabulary SOMP per head an atlas reads every concept from: the SOMP options of
    `RankingConfig` under the same names, with its defaults (the ``concept_share`` ranking's), so
    that an atlas score equals that ranking's score on the same activations."""

    #: full-vocabulary SOMP steps per head (ranking.somp_steps)
    somp_steps: int = RankingConfig.somp_steps
    #: atom choice: l1 (sum_i |<R_i, D_j>|) | l2
    aggregation: str = RankingConfig.aggregation
    #: fold the final norm's gain into the unembedding
    fold_norm_gain: bool = RankingConfig.fold_norm_gain
    #: remove each head's mean over rows before pursuit
    center: bool = RankingConfig.center
    #: unit-norm dictionary rows
    normalize_atoms: bool = RankingConfig.normalize_atoms


@dataclass(kw_only=True)
class AtlasConfig:
    """A head atlas (``atlas:`` in conf/atlas.yaml, `python -m headpursuit.app.atlas`): which
    prompts, which rows, which concepts, the control, and what the outputs show."""

    #: concepts scored from the one pursuit: shipped names (headpursuit/data/concepts) or word-list
    #: files (one word per line). countries_single_word is a subset of countries: add it by hand
    concepts: list[str] = field(
        default_factory=lambda: ["countries", "colors", "numbers", "quantity", "sentiment", "toxic"]
    )
    somp: AtlasSompConfig = field(default_factory=AtlasSompConfig)
    #: which activation rows describe a head; concept-independent only (answer_concept depends on
    #: the concept). prompt_mean: one row per prompt, the mean of what the head writes over the
    #: prompt's tokens, the rows the paper describes heads with (its Table 1); the model's answers
    #: are not read, so each source generates one token. image_mean: the same over a VLM's image
    #: tokens. answer: every position predicting a token of the model's own greedy answer
    #: (teacher-forced); all: every prompt and answer position; last_prompt. The SOMP's time grows
    #: with the rows: answer rows are ~10x the prompt rows on the shipped prompts
    positions: str = "prompt_mean"
    #: the prompt source set: auto (image_prompts for a VLM, text_prompts otherwise) | text | images
    prompts: str = "auto"
    #: the prompt sources of text models: {name: a task config}, composed from conf/task/
    #: (conf/atlas.yaml: qa_countries and toxicity); add one with +task@atlas.text_prompts.NAME=<task>, drop one with
    #: ~task@atlas.text_prompts.NAME
    text_prompts: dict[str, Any] = field(default_factory=dict)
    #: the prompt sources of vision-language models (conf/atlas.yaml: captioning), as text_prompts
    image_prompts: dict[str, Any] = field(default_factory=dict)
    #: prompts per group (concept, control) of every prompt source: each source's ranking split with
    #: n_rank = {concept: n, control: n}, rank_groups = [concept, control] (the sources' own n_rank,
    #: rank_groups and n_eval are not used). Every other key is the task's own, e.g.
    #: atlas.text_prompts.qa.max_new_tokens=8
    n_per_group: int = 16
    #: random token sets per concept (the control), seeded by (seed, concept, draw)
    random_draws: int = 20
    #: matched: each random set has as many tokens of each form as the concept (a leading space
    #: then >= 3 letters, capitalised, lower-case, other) | vocab: uniform over the vocabulary.
    #: Never one of the concept's own tokens
    control_pool: str = "matched"
    #: the top-k head sets whose Jaccard overlap is reported
    top_k: int = 10
    #: heads per concept in atlas.md
    table_heads: int = 5
    #: SOMP tokens shown per head
    top_tokens: int = 5
    #: logit-lens tokens per row, then the lens_top most frequent (the paper's Table 6)
    lens_top: int = 5


@dataclass(kw_only=True)
class AtlasAppConfig(JobConfig):
    """A head atlas job (conf/atlas.yaml): the model, the tracker and the top-level keys a run has
    (`JobConfig`), and `atlas`."""

    atlas: AtlasConfig = field(default_factory=AtlasConfig)


#: schema name -> task config dataclass: conf/task/<file>.yaml starts with ``defaults: [<name>, _self_]``
TASK_SCHEMAS: dict[str, type[TaskConfig]] = {
    "qa_schema": QAConfig,
    "toxicity_schema": ToxicityConfig,
    "classification_schema": ClassificationConfig,
    "captioning_schema": CaptioningConfig,
}

#: the neutral keys that are groups: an override may name one of their keys (``logger.mode=online``)
_NEUTRAL_GROUPS: dict[str, type] = {"logger": LoggerConfig}


def override_dirname_excludes() -> list[str]:
    """Hydra's ``override_dirname.exclude_keys`` (it compares whole override keys): every key of
    `RESULT_NEUTRAL_KEYS`, each key of the neutral groups (``logger.mode``), the launcher."""
    keys = list(RESULT_NEUTRAL_KEYS)
    for group, schema in _NEUTRAL_GROUPS.items():
        keys += [f"{group}.{f.name}" for f in fields(schema)]
    return [*keys, LAUNCHER_GROUP]


def task_schema(config_class: type[TaskConfig]) -> DictConfig:
    """A task kind's schema node: its dataclass, with `seed` following the run's top-level seed."""
    node = OmegaConf.structured(config_class)
    node.seed = "${seed}"
    return node


def register_configs() -> None:
    """Store the schemas in Hydra's ConfigStore (the primary config's and each group's) and register
    the resolvers conf/ uses: ``${hp.result_neutral_keys:}`` (`override_dirname_excludes`) and
    ``${hp.fixture:NAME}`` (the absolute path of a file shipped in headpursuit/data/fixtures, so that
    the offline experiments' data paths hold from any working directory). Idempotent; runs when this
    module is imported (the app's entry point imports it; so must a caller of Hydra's compose API)."""
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=AppConfig)
    cs.store(name="atlas_schema", node=AtlasAppConfig)
    cs.store(group="model", name="model_schema", node=ModelConfig)
    cs.store(group="ranking", name="ranking_schema", node=RankingSchema)
    cs.store(group="intervention", name="intervention_schema", node=InterventionConfig)
    cs.store(group="logger", name="logger_schema", node=LoggerConfig)
    for name, config_class in TASK_SCHEMAS.items():
        cs.store(group="task", name=name, node=task_schema(config_class))
    if not OmegaConf.has_resolver("hp.result_neutral_keys"):
        OmegaConf.register_new_resolver("hp.result_neutral_keys", override_dirname_excludes)
    if not OmegaConf.has_resolver("hp.fixture"):
        OmegaConf.register_new_resolver("hp.fixture", lambda name: str(fixture_path(str(name))))


register_configs()
