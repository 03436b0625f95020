"""What the jobs of documented commands record, beyond `status: complete` (issues 13, 19).

Not a test module: the docs harness (tests/docs_harness.py) runs every documented command, and on
every complete job of a pipeline command it calls `check_job_record(record, config)`: the job's
results.json and the config the harness composed for it (independently of the run; the harness's
shortened form: few questions, one random set). Checked here:

* each paper experiment's offline run (`python -m headpursuit -m experiment=paper_X data=offline`,
  documented for each in docs/paper.md and experiments/README.md): the paper's protocol on a
  stand-in, k of its heads, normalised metrics, the random controls, and per experiment its own
  (Table 2's scorer and held-out words, Table 13's CIDEr and caption prompts);
* every job on `tiny_vlm` (`experiment=tiny_vlm_captioning`, its `task=classification`, the paper's
  vision experiments): the task's metrics per group, and every output saying that the vision tower
  is random.

These checks were end-to-end tests of their own (tests/test_paper_experiments.py,
test_paper_toxicity.py, test_paper_captioning.py: subprocess runs; tests/test_tasks_vision.py: the
same stages in-process) that ran what the harness runs again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from headpursuit.models.tiny_vlm import VISION_NOTE
from headpursuit.tasks.prompts import CAPTION_PAPER, RTP_PAPER

#: heads of both offline stand-ins (smollm2, and tiny_vlm, whose language model is SmolLM2)
STAND_IN_HEADS = 270
STAND_INS = {"smollm2", "tiny_vlm"}


def check_offline_paper_job(r: Mapping[str, Any], cfg: Mapping[str, Any]) -> None:
    """Every paper experiment offline: the paper's protocol on a stand-in, its k of the stand-in's heads."""
    assert r["status"] == "complete" and cfg["model"]["name_or_path"] in STAND_INS
    assert r["config"]["task"]["positions"] == cfg["task"]["positions"]
    assert r["provenance"]["task"].get("prompt_preset") == "paper"
    iv = cfg["intervention"]
    k = round(iv["k_frac"] * STAND_IN_HEADS) if iv.get("k_frac") is not None else iv["k"]
    assert len(r["heads"]) == r["k"] == k
    assert r["normalized"]["edited"]  # every metric also normalised to the unedited model
    if iv["random_controls"]:
        assert r["random"]["pool"] == iv["random_pool"]
        assert len(r["random"]["per_seed"]) == len(iv["random_seeds"])
    if cfg["model"]["name_or_path"] == "tiny_vlm":  # random vision weights: every output says so
        assert any("random" in note.lower() for note in r["provenance"]["model"]["notes"])


def check_tab2_toxicity(r: Mapping[str, Any], cfg: Mapping[str, Any]) -> None:
    """Table 2: the offline scorer on both groups, held-out words, RTP's paper prompt."""
    if cfg["ranking"]["method"] == "concept_restricted":  # the paper's ranking (ranking=paper)
        assert r["ranking"] == "concept_restricted"
    for section in ("baseline", "edited"):
        assert r[section]["scorer"] == "profanity_check" and "alt-profanity-check" in r[section]["scorer_version"]
        for g in ("concept", "control"):
            m = r[section][g]
            assert 0.0 <= m["toxic_fraction"] <= 1.0 and m["held_out_word_frequency"] >= 0.0
    assert "toxic_fraction" in r["normalized"]["edited"]["concept"]
    assert "held_out_word_frequency" in r["random"]["median"]["concept"]
    prov = r["provenance"]["task"]
    assert prov["prompt_preset"] == "paper" and prov["prompt_template"] == RTP_PAPER
    assert prov["held_out"]["n_held_out"] > 0 and prov["held_out"]["seed"] == 0
    assert prov["concept_n_words"] == prov["held_out"]["n_selection"]


def check_tab13_captioning(r: Mapping[str, Any], cfg: Mapping[str, Any]) -> None:
    """Table 13: CIDEr per group, layer-matched controls, the paper's caption prompts."""
    iv = cfg["intervention"]
    # the job's k_frac of the stand-in's heads (8/1024 of 270 = 2; the sweep's other k_frac jobs too)
    assert r["k"] == (max(1, round(iv["k_frac"] * STAND_IN_HEADS)) if iv.get("k_frac") is not None else iv["k"])
    if cfg["ranking"]["method"] == "concept_restricted":
        assert r["ranking"] == "concept_restricted"
    assert r["config"]["task"]["prompt_preset"] == "paper"
    for g in ("concept", "control"):
        assert "cider" in r["baseline"][g] and "cider" in r["edited"][g]
        assert "cider" in r["normalized"]["edited"][g]
    assert r["random"]["pool"] == "layer_counts" and r["random"]["n_seeds"] == len(cfg["intervention"]["random_seeds"])
    prov = r["provenance"]["task"]
    assert prov["prompt_preset"] == "paper" and prov["paper_caption_prompts"] == dict(CAPTION_PAPER)
    if prov["prompt_family"] is not None:  # prompted in this run (not every generation from the cache)
        assert prov["prompt_family"] == "llava" and prov["instruction"] == CAPTION_PAPER["llava"]


#: the experiment-specific checks, on top of `check_offline_paper_job`
PAPER_CHECKS: dict[str, Callable[[Mapping[str, Any], Mapping[str, Any]], None]] = {
    "paper_tab2_toxicity": check_tab2_toxicity,
    "paper_tab13_captioning": check_tab13_captioning,
}


#: the metrics each vision task reports per group (every one a float)
VISION_METRICS = {
    "classification": {"accuracy", "concept_rate", "concept_count", "empty_rate"},
    "captioning": {"concept_rate", "concept_count", "bleu", "chrf", "sentence_bleu", "mean_words", "empty_rate"},
}
#: tiny_vlm's language model: SmolLM2's layout (layers, heads, head dim)
TINY_VLM_LAYOUT = (30, 9, 64)


def check_tiny_vlm_job(r: Mapping[str, Any], cfg: Mapping[str, Any]) -> None:
    """A job on tiny_vlm: its task's metrics for both groups, before and after the edit, and every
    output (results, examples, provenance) saying that the vision side is random."""
    layout = r["provenance"]["model"]["layout"]
    assert (layout["n_layers"], layout["n_heads"], layout["head_dim"]) == TINY_VLM_LAYOUT
    task = cfg["task"]["name"]
    for section in ("baseline", "edited"):
        res = r[section]
        groups = [g for g in ("concept", "control") if g in res]  # a transfer run (rank_task): concept only
        assert "concept" in groups and all(res["n"][g] == 0 for g in res["n"] if g not in groups)
        for g in groups:
            assert VISION_METRICS[task] <= set(res[g]), (section, g, sorted(res[g]))
            assert all(isinstance(v, float) for v in res[g].values()), (section, g, res[g])
            assert res["n"][g] >= 1
        assert res["vision_random_init"] is True and VISION_NOTE in res["notes"]
        assert res["examples"] and all(VISION_NOTE in ex["notes"] for ex in res["examples"])
        assert all(ex["references"] and ex["group"] in ("concept", "control") for ex in res["examples"])
        if task == "classification":
            assert all(0.0 <= res[g]["accuracy"] <= 1.0 for g in groups)
    prov = r["provenance"]["task"]
    assert prov["vision_random_init"] is True and VISION_NOTE in prov["model_notes"]
    if task == "captioning":
        assert prov["caption_metrics"]["package"] == "sacrebleu"


def is_offline_paper_job(r: Mapping[str, Any]) -> bool:
    choices = r.get("run", {}).get("choices", {})
    return str(choices.get("experiment")).startswith("paper_") and choices.get("data") == "offline"


def check_job_record(r: Mapping[str, Any], cfg: Mapping[str, Any]) -> None:
    """A complete job of a documented pipeline command: the checks that apply to it (module docstring)."""
    if is_offline_paper_job(r):
        check_offline_paper_job(r, cfg)
        experiment = r["run"]["choices"]["experiment"]
        if experiment in PAPER_CHECKS:
            PAPER_CHECKS[experiment](r, cfg)
    if cfg["model"]["name_or_path"] == "tiny_vlm":
        check_tiny_vlm_job(r, cfg)
