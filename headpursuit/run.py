"""`python -m headpursuit` / `headpursuit`: the Hydra entry point. It composes the stages, nothing else.

    model -> task -> ranking samples -> capture (cached) -> rank_heads (cached) -> select heads
    -> evaluate unedited (cached), edited, random-head controls -> results.json, head_scores.csv,
    heat map, W&B

The configs live in `conf/` at the repository top level (see `find_config_dir`). Results go to
Hydra's output directory (`HydraConfig.get().runtime.output_dir`); the job never changes directory.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from headpursuit import pipeline as P
from headpursuit.tracking import (HEAD_SCORES_FILE, RESULTS_FILE, Timer, Tracker, completed_results,
                                  config_hash, environment, flatten_metrics, write_csv_atomic,
                                  write_error, write_json_atomic)

log = logging.getLogger("headpursuit")


def find_config_dir() -> str:
    """$HEADPURSUIT_CONF, else `conf/` inside the package (installed wheel), else the repo's `conf/`."""
    here = Path(__file__).resolve().parent
    candidates = [Path(os.environ["HEADPURSUIT_CONF"])] if os.environ.get("HEADPURSUIT_CONF") else []
    candidates += [here / "conf", here.parent / "conf"]
    for c in candidates:
        if (c / "config.yaml").is_file():
            return str(c.resolve())
    raise FileNotFoundError(f"No Hydra config tree (config.yaml) in {[str(c) for c in candidates]}; "
                            "set HEADPURSUIT_CONF=/path/to/conf")


def _job_num(hc) -> int | None:
    try:
        return int(hc.job.num)
    except Exception:  # single runs have no job number
        return None


def execute(cfg: DictConfig, run_dir: Path, res: dict) -> dict:
    hc, t = HydraConfig.get(), Timer()
    config = OmegaConf.to_container(cfg, resolve=True)
    res.update(status="running", config_hash=config_hash(config), config=config,
               run={"dir": str(run_dir), "mode": hc.mode.name.lower(), "job_num": _job_num(hc),
                    "overrides": list(hc.overrides.task), "choices": dict(hc.runtime.choices)})
    P.validate_config(config)                                   # fail fast, naming the key
    if cfg.resume and (done := completed_results(run_dir, res["config_hash"])):
        log.info("%s: complete with the same config; skipping (resume=false to rerun)", run_dir)
        return done
    write_json_atomic(run_dir / RESULTS_FILE, res)
    iv, seed, cache = config["intervention"], int(cfg.seed), P.RunCache(cfg.cache_dir)
    random.seed(seed)
    tracker = Tracker(config.get("logger"), run_dir)
    sweep = f"{hc.runtime.choices.get('experiment') or 'sweep'}-{Path(hc.sweep.dir).name}"
    tracker.start(config, group=(config.get("logger") or {}).get("group")
                  or (sweep if hc.mode == RunMode.MULTIRUN else None),
                  name=hc.job.override_dirname or "default")
    try:
        with t("load_model"):
            lm, model_memo = P.load_model_memo(config["model"], cfg.device, cfg.dtype)
        L, H = lm.layout.n_layers, lm.layout.n_heads
        k = P.resolve_k(iv, L * H, lm.name)
        with t("task"):
            task = P.build_task_memo(config["task"], lm)
        model_id = P.model_identity(config["model"], lm)
        with t("ranking_samples"):
            samples, samples_hit = P.ranking_samples_cached(
                cache, task, lm, {"model": model_id, "task": P.task_identity(config["task"], "ranking")})
        concept_ids = P.concept_token_ids(task.concept, lm)
        positions = config["task"].get("positions", "answer_concept")
        with t("capture"):
            acts, acts_key, acts_hit = P.capture_cached(cache, lm, samples, positions, concept_ids,
                                                        cfg.capture_batch_size)
        with t("rank"):
            scores, scores_hit = P.rank_cached(cache, acts, acts_key, lm, task.concept, config["ranking"], seed)
        heads = P.select_heads(scores, iv, L, H, k, seed)
        write_csv_atomic(scores.table, run_dir / HEAD_SCORES_FILE)
        if cfg.plots:
            from headpursuit.plots import score_heatmap
            with t("plots"):
                heatmap = score_heatmap(scores.table, L, H, run_dir / "head_scores_heatmap.png",
                                        title=f"{lm.name} | {task.name} | {config['ranking']['method']}",
                                        highlight=heads)
        eval_id = {"model": model_id, "task": P.task_identity(config["task"], "eval")}
        alpha = float(iv["alpha"])
        with t("baseline"):
            baseline, base_hit = P.evaluate_cached(cache, lm, task, eval_id, {}, desc="baseline", seed=seed)
        with t("edited"):
            edited, edit_hit = P.evaluate_cached(cache, lm, task, eval_id, {h: alpha for h in heads},
                                                 desc="edited", seed=seed)
        per_seed, random_hits = [], []
        with t("random"):
            for s in (iv["random_seeds"] if iv.get("random_controls", True) else []):
                rh = P.random_control_heads(iv, heads, L, H, k, s)
                r, hit = P.evaluate_cached(cache, lm, task, eval_id, {h: alpha for h in rh},
                                           desc=f"random{s}", seed=seed)
                per_seed.append({"seed": s, "heads": [list(h) for h in rh], **r})
                random_hits.append(hit)
        res.update(
            model=lm.name, task=task.name, ranking=config["ranking"]["method"], k=k,
            k_frac=iv.get("k_frac"), alpha=alpha, heads_mode=iv.get("heads", "ranked"),
            n_heads_total=L * H, heads=P.head_records(heads, scores.table),
            baseline=baseline, edited=edited,
            random=({**P.summarize_seeds(per_seed), "seeds": list(iv["random_seeds"]),
                     "pool": iv.get("random_pool", "all"), "per_seed": per_seed} if per_seed else None),
            provenance={
                "model": {**lm.provenance, "layout": dict(lm.layout.__dict__), "loaded_in_process": model_memo},
                "task": task.provenance(), "environment": environment(),
                "seeds": {"seed": seed, "random_heads": list(iv["random_seeds"])},
                "code_fingerprint": P.code_fingerprint(),
                "n_ranking_samples": len(samples), "n_activation_rows": int(acts.n_rows),
                "cache": {"dir": str(cache.root) if cache.enabled else None,
                          "ranking_samples_from_cache": samples_hit, "activations_from_cache": acts_hit,
                          "scores_from_cache": scores_hit, "baseline_from_cache": base_hit,
                          "edited_from_cache": edit_hit, "random_from_cache": random_hits},
                "timings": t.seconds,
            },
            status="complete")
        tracker.log_metrics(flatten_metrics(res))
        tracker.log_summary({"k": k, "alpha": alpha, "heads": [f"{a}.{b}" for a, b in heads]})
        tracker.log_table("head_scores", scores.table)
        if cfg.plots:
            tracker.log_image("head_scores_heatmap", heatmap)
        tracker.finish(0)
    except BaseException:
        tracker.finish(1)
        res["tracking"] = tracker.status
        raise
    res["tracking"] = tracker.status
    write_json_atomic(run_dir / RESULTS_FILE, res)
    log.info("%s: %s", run_dir, {k: round(v, 3) for k, v in flatten_metrics(res).items()
                                 if "/std/" not in k and k.count("/") == 2})
    return res


@hydra.main(version_base="1.3", config_path=find_config_dir(), config_name="config")
def main(cfg: DictConfig) -> dict | None:
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    abort_flag = Path(hc.sweep.dir) / ".fail_fast_abort" if multirun else None
    res: dict = {"status": "running"}
    try:
        if multirun and cfg.get("fail_fast") and abort_flag.exists():
            raise RuntimeError(f"skipped: an earlier job of this sweep failed and fail_fast=true ({abort_flag})")
        return execute(cfg, run_dir, res)
    except Exception as exc:
        write_error(run_dir, exc, res)
        log.error("%s failed: %s: %s (see %s/error.txt)", run_dir, type(exc).__name__, exc, run_dir)
        if multirun and cfg.get("fail_fast"):
            abort_flag.touch()
        # A single run, a config error or fail_fast raises (Hydra records it; the process exits 1).
        # Otherwise a sweep records the failure in the job's dir and goes on with the other jobs.
        if not multirun or cfg.get("fail_fast") or isinstance(exc, P.ConfigError):
            raise
        return {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}


if __name__ == "__main__":
    main()
