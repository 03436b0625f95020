"""The run config's schema (headpursuit/app/schema.py): every conf/ option composes against it, a
typo or a wrong type fails at composition naming the key, every default is written once, the
renamed ranking.k names its new key, and the result-neutral keys are one list."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from dataclasses import fields
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from headpursuit.app import tracking
from headpursuit.app.config import ConfigError, validate_config
from headpursuit.app.result_neutral import LAUNCHER_GROUP, RESULT_NEUTRAL_KEYS
from headpursuit.app.run import recorded_config
from headpursuit.app.schema import (
    TASK_SCHEMAS,
    InterventionConfig,
    LoggerConfig,
    ModelConfig,
    RankingSchema,
    override_dirname_excludes,
)
from headpursuit.tasks import QAConfig, ToxicityConfig

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
GROUPS = ("model", "task", "ranking", "intervention", "logger")
SCHEMAS = {"model": ModelConfig, "ranking": RankingSchema, "intervention": InterventionConfig, "logger": LoggerConfig}


def _compose(*overrides: str, conf: Path = CONF, hydra: bool = False):
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        return compose("config", overrides=["cache_dir=null", *overrides], return_hydra_config=hydra)


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def _schema_of(group: str, option: str) -> type:
    """The dataclass a group file fills: its defaults list names the schema, or another file of the
    group (conf/task/cls_* -> classification) that does."""
    if group != "task":
        return SCHEMAS[group]
    parent = yaml.safe_load((CONF / "task" / f"{option}.yaml").read_text())["defaults"][0]
    return TASK_SCHEMAS[parent] if parent in TASK_SCHEMAS else _schema_of("task", parent)


OPTIONS = [(group, option) for group in GROUPS for option in _options(group)]


@pytest.mark.parametrize("group, option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_group_option_composes_against_its_schema(group, option):
    cfg = _compose(f"{group}={option}")
    assert OmegaConf.get_type(cfg[group]) is _schema_of(group, option)
    conf = validate_config(cfg)  # the checks beyond the types pass too
    assert isinstance(getattr(conf, group), _schema_of(group, option))


@pytest.mark.parametrize("group, option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_group_files_hold_only_what_differs_from_the_schema(group, option):
    """One default, in the dataclass: a group file sets a key only to a value other than it."""
    raw = yaml.safe_load((CONF / group / f"{option}.yaml").read_text()) or {}
    defaults = OmegaConf.to_container(OmegaConf.structured(_schema_of(group, option)))
    same = {key: value for key, value in raw.items() if key != "defaults" and defaults[key] == value}
    assert not same, f"conf/{group}/{option}.yaml repeats the schema's defaults: {same}"


def test_the_default_run_is_the_library_defaults():
    """The values the app runs with are the library's own: QA's max_new_tokens (24 in the code, 16
    in the YAML before) and toxicity's n_continuations (5 and 3) have one value now, the YAML's."""
    assert validate_config(_compose()).task == QAConfig()
    assert validate_config(_compose("task=toxicity")).task == ToxicityConfig()
    assert (QAConfig().max_new_tokens, ToxicityConfig().n_continuations) == (16, 3)
    assert validate_config(_compose()).intervention == InterventionConfig()
    assert InterventionConfig().heads == "ranked"


def test_task_seeds_follow_the_run_seed():
    conf = validate_config(_compose("seed=3", "task=cls_mnist", "+task@rank_task=cls_svhn"))
    assert conf.task.seed == conf.rank_task.seed == 3


TYPOS_AND_TYPES = [
    ("intervention.kk=3", "intervention.kk"),  # a typo
    ("intervention.k=abc", "intervention.k"),  # the wrong type
    ("intervention.alpha=strong", "intervention.alpha"),
    ("intervention.random_seeds=[a]", "intervention.random_seeds"),
    ("task.max_new_token=8", "task.max_new_token"),
    ("task.max_new_tokens=many", "task.max_new_tokens"),
    ("ranking.somp_steps=1.5", "ranking.somp_steps"),
    ("ranking.centre=true", "ranking.centre"),
    ("model.n_heads=x", "model.n_heads"),
    ("logger.modes=online", "logger.modes"),
    ("seedd=1", "seedd"),
    ("deterministic=sometimes", "deterministic"),
]


@pytest.mark.parametrize("override, key", TYPOS_AND_TYPES, ids=[t[0] for t in TYPOS_AND_TYPES])
def test_a_typo_or_a_wrong_type_fails_at_composition_naming_the_key(override, key):
    with pytest.raises(ConfigCompositionException) as info:
        _compose(override)
    assert key in f"{info.value} {info.value.__cause__}"


def test_a_typo_in_a_config_file_fails_at_composition(tmp_path):
    """The same check holds for what a YAML file sets (an experiment file, a local override)."""
    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    (conf / "experiment" / "typo.yaml").write_text("# @package _global_\nintervention:\n  kk: 3\n")
    with pytest.raises(ConfigCompositionException) as info:
        _compose("experiment=typo", conf=conf)
    assert "kk" in f"{info.value} {info.value.__cause__}"


def test_renamed_ranking_k_names_ranking_somp_steps():
    cfg = _compose("ranking.k=50")
    with pytest.raises(ConfigError, match=r"ranking\.k was renamed ranking\.somp_steps.*Fix: ranking\.somp_steps=50"):
        validate_config(cfg)
    assert validate_config(_compose("ranking.somp_steps=50")).ranking.somp_steps == 50
    # The key exists only to say so: unset, it is in neither results.json nor the resume hash.
    assert "k" not in recorded_config(_compose())["ranking"]


def test_result_neutral_keys_are_one_list():
    neutral = [
        "cache_dir=/elsewhere",
        "resume=false",
        "fail_fast=true",
        "plots=false",
        "heartbeat_s=0",
        "logger=none",
        "logger.mode=online",
        "logger.project=other",
        f"{LAUNCHER_GROUP}=basic",
    ]
    cfg = _compose(*neutral, "intervention.k=3", hydra=True)
    # Hydra's exclude list is the Python list (with each logger key and the launcher) ...
    excluded = list(cfg.hydra.job.config.override_dirname.exclude_keys)
    assert excluded == override_dirname_excludes()
    assert set(RESULT_NEUTRAL_KEYS) | {f"logger.{f.name}" for f in fields(LoggerConfig)} | {LAUNCHER_GROUP} == set(
        excluded
    )
    # ... so the W&B run name holds only what changes the results,
    assert cfg.hydra.job.override_dirname == "intervention.k=3"
    # and the resume hash leaves out the same keys.
    assert tracking.VOLATILE_KEYS == RESULT_NEUTRAL_KEYS
    base = recorded_config(_compose())
    assert tracking.config_hash(recorded_config(_compose(*neutral[:-1]))) == tracking.config_hash(base)
    assert tracking.config_hash(recorded_config(_compose("intervention.k=3"))) != tracking.config_hash(base)


def test_the_library_builds_a_task_from_its_dataclass_without_hydra():
    code = textwrap.dedent("""
        import sys
        from headpursuit.models.tiny import embedded_tokenizer
        from headpursuit.tasks import QAConfig, QATask, build_task

        tok = embedded_tokenizer("smollm2")
        task = QATask(QAConfig(n_rank=3, n_eval=4), tok)
        same = build_task(QAConfig(n_rank=3, n_eval=4), tokenizer=tok)
        from_dict = build_task({"name": "qa_countries", "n_rank": 3, "n_eval": 4}, tokenizer=tok)
        assert task.items("eval") == same.items("eval") == from_dict.items("eval")
        assert len(task.items("eval", "concept")) == 4 and task.max_new_tokens == 16
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("hydra", "omegaconf")))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "[]"
