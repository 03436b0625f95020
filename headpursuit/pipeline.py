"""The small library functions a run composes (see `headpursuit.run` for the flow).

* `validate_config` / `resolve_k`: fail fast, naming the config key.
* `RunCache`: a disk cache shared by the jobs of a sweep (and by parallel jobs: a file lock per
  entry, so one job computes and the others wait and read). It holds the model's greedy ranking
  answers, the activations (through `capture_heads`' own cache), the head scores and every
  evaluation keyed on the exact head edit (the unedited baseline is the empty edit). Nothing in it
  depends on k or alpha unless the key says so, so a k x alpha sweep extracts and ranks once.
* `select_heads`, `random_heads`, `parse_heads`: which heads to edit.
* `evaluate_with_edits`: generate inside `scale_heads`, score outside it (fluency scorers must see
  the unedited model).
* `summarize_seeds`: mean and standard deviation of the random-head controls.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import pickle
import random
import statistics
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

log = logging.getLogger(__name__)

Head = tuple[int, int]
HEAD_MODES = ("ranked", "random", "explicit")
LOGGER_MODES = ("online", "offline", "disabled")
CACHE_VERSION = 1


class ConfigError(ValueError):
    """An invalid configuration value; the message names the key."""


# ------------------------------------------------------------------------------------------
# Validation
# ------------------------------------------------------------------------------------------

def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(float(x))


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def validate_config(cfg: Mapping[str, Any]) -> None:
    """Checks that need no model; raises ConfigError naming the key. `cfg` is a resolved dict."""
    for group in ("model", "task", "ranking", "intervention"):
        if not isinstance(cfg.get(group), Mapping):
            raise ConfigError(f"config group {group!r} is missing; choose one with {group}=<option>")
    model = cfg["model"]
    if not isinstance(model.get("name_or_path"), str) or not model["name_or_path"]:
        raise ConfigError("model.name_or_path must be a registry name, hub id or directory")

    task = cfg["task"]
    from headpursuit.tasks import known_tasks

    if task.get("name") not in known_tasks():
        raise ConfigError(f"task.name={task.get('name')!r} is not a known task; known: "
                          f"{', '.join(known_tasks())}")
    from headpursuit.capture import POSITIONS

    if task.get("positions", "answer_concept") not in POSITIONS:
        raise ConfigError(f"task.positions={task.get('positions')!r} is not one of {', '.join(POSITIONS)}")

    ranking = cfg["ranking"]
    if not isinstance(ranking.get("method"), str):
        raise ConfigError("ranking.method must be a ranking method name")
    methods = known_ranking_methods()
    if methods and ranking["method"] not in methods:
        raise ConfigError(f"ranking.method={ranking['method']!r} is unknown; known: {', '.join(methods)}")
    if "k" in ranking and not (_is_int(ranking["k"]) and ranking["k"] >= 1):
        raise ConfigError(f"ranking.k (SOMP steps) must be an integer >= 1, got {ranking['k']!r}")

    iv = cfg["intervention"]
    if not _is_number(iv.get("alpha")):
        raise ConfigError(f"intervention.alpha must be a number (e.g. -1, 0, 2), got {iv.get('alpha')!r}")
    mode = iv.get("heads", "ranked")
    if mode not in HEAD_MODES:
        raise ConfigError(f"intervention.heads={mode!r} is not one of {', '.join(HEAD_MODES)}")
    kf = iv.get("k_frac")
    if kf is not None and not (_is_number(kf) and 0 < float(kf) <= 1):
        raise ConfigError(f"intervention.k_frac must be a number in (0, 1], got {kf!r}")
    if kf is None and mode != "explicit":
        k = iv.get("k")
        if not (_is_int(k) and k >= 1):
            raise ConfigError(f"intervention.k must be an integer >= 1, got {k!r}")
    if mode == "explicit":
        if not iv.get("explicit"):
            raise ConfigError("intervention.heads=explicit needs intervention.explicit=[[layer,head],...]")
        parse_heads(iv["explicit"])  # format errors name the key
    if iv.get("random_pool", "all") not in RANDOM_POOLS:
        raise ConfigError(f"intervention.random_pool={iv.get('random_pool')!r} is not one of {', '.join(RANDOM_POOLS)}")
    seeds = iv.get("random_seeds") or []
    if not isinstance(seeds, (list, tuple)) or not all(_is_int(s) for s in seeds):
        raise ConfigError(f"intervention.random_seeds must be a list of integers, got {seeds!r}")
    logger = cfg.get("logger") or {}
    if logger.get("mode", "disabled") not in LOGGER_MODES:
        raise ConfigError(f"logger.mode={logger.get('mode')!r} is not one of {', '.join(LOGGER_MODES)}")
    if not _is_int(cfg.get("seed", 0)):
        raise ConfigError(f"seed must be an integer, got {cfg.get('seed')!r}")
    # The layout declared in the model config lets k be checked before a (slow) model load.
    L, H = model.get("n_layers"), model.get("n_heads")
    if _is_int(L) and _is_int(H):
        resolve_k(iv, L * H, model_name=model["name_or_path"])


def known_ranking_methods() -> list[str]:
    try:
        from headpursuit import ranking
    except ImportError:
        return []
    for attr in ("METHODS", "RANKING_METHODS", "known_methods"):
        v = getattr(ranking, attr, None)
        if callable(v):
            v = v()
        if v:
            return sorted(v)
    return []


def resolve_k(iv: Mapping[str, Any], n_total: int, model_name: str = "the model") -> int:
    """Number of heads to edit: `k`, or `round(k_frac * n_total)` (at least 1) when k_frac is set."""
    if iv.get("heads") == "explicit":
        k = len(parse_heads(iv.get("explicit") or []))
    elif iv.get("k_frac") is not None:
        k = max(1, int(round(float(iv["k_frac"]) * n_total)))
    else:
        k = iv.get("k")
    if not _is_int(k) or k < 1:
        raise ConfigError(f"intervention.k must be an integer >= 1, got {k!r}")
    if k > n_total:
        raise ConfigError(f"intervention.k={k} is larger than the number of heads of {model_name} "
                          f"({n_total}); use intervention.k <= {n_total} or intervention.k_frac")
    return k


# ------------------------------------------------------------------------------------------
# Heads
# ------------------------------------------------------------------------------------------

def parse_heads(spec: Iterable[Any]) -> list[Head]:
    """[[layer, head], ...], ["layer.head", ...] or ["layer:head", ...] -> [(layer, head), ...]."""
    out: list[Head] = []
    for item in spec:
        try:
            if isinstance(item, str):
                a, b = item.replace(":", ".").split(".")
                out.append((int(a), int(b)))
            else:
                a, b = item
                out.append((int(a), int(b)))
        except (TypeError, ValueError):
            raise ConfigError(f"intervention.explicit: cannot read head {item!r}; use [layer, head] "
                              "or 'layer.head'") from None
    return out


def check_heads(heads: Sequence[Head], n_layers: int, n_heads: int, key: str = "intervention.explicit"):
    bad = [h for h in heads if not (0 <= h[0] < n_layers and 0 <= h[1] < n_heads)]
    if bad:
        raise ConfigError(f"{key}: heads {bad} do not exist (layers 0..{n_layers - 1}, "
                          f"heads 0..{n_heads - 1})")


RANDOM_POOLS = ("all", "same_layers")


def random_heads(n_layers: int, n_heads: int, k: int, seed: int,
                 exclude: Iterable[Head] = (), layers: Iterable[int] | None = None) -> list[Head]:
    """k distinct heads drawn uniformly (seeded, platform-stable), sorted by (layer, head).

    `layers` restricts the draw to those layers (a layer-matched control), `exclude` removes heads.
    """
    excluded = {(int(a), int(b)) for a, b in exclude}
    allowed = range(n_layers) if layers is None else sorted({int(x) for x in layers})
    pool = [(layer, h) for layer in allowed for h in range(n_heads) if (layer, h) not in excluded]
    if k > len(pool):
        where = "" if layers is None else f" in layers {list(allowed)} (intervention.random_pool=same_layers)"
        raise ConfigError(f"intervention.k={k} exceeds the {len(pool)} heads available for random draws{where}; "
                          "lower k or use intervention.random_pool=all")
    return sorted(random.Random(f"heads:{seed}").sample(pool, k))


def random_control_heads(iv: Mapping[str, Any], edited: Sequence[Head], n_layers: int, n_heads: int,
                         k: int, seed: int) -> list[Head]:
    """The random-head control for one seed: `all` heads, or (`same_layers`) the edited heads'
    layers without the edited heads themselves."""
    if iv.get("random_pool", "all") == "same_layers":
        return random_heads(n_layers, n_heads, k, seed, exclude=edited, layers={a for a, _ in edited})
    return random_heads(n_layers, n_heads, k, seed)


def select_heads(scores: Any, iv: Mapping[str, Any], n_layers: int, n_heads: int, k: int,
                 seed: int = 0) -> list[Head]:
    """The heads to edit: top-k of `scores` (ranked), k random heads (random) or the explicit list."""
    mode = iv.get("heads", "ranked")
    if mode == "ranked":
        return [(int(a), int(b)) for a, b in scores.top(k)]
    if mode == "random":
        return random_heads(n_layers, n_heads, k, seed)
    heads = parse_heads(iv.get("explicit") or [])
    check_heads(heads, n_layers, n_heads)
    return heads


def head_records(heads: Sequence[Head], table: Any = None) -> list[dict]:
    """[{layer, head, score, rank}] for results.json (score/rank from the score table if given)."""
    lookup = {}
    if table is not None:
        for row in table.itertuples(index=False):
            lookup[(int(row.layer), int(row.head))] = row
    out = []
    for layer, h in heads:
        rec = {"layer": int(layer), "head": int(h)}
        row = lookup.get((int(layer), int(h)))
        if row is not None:
            rec["score"] = float(row.score)
            rec["rank"] = int(row.rank)
        out.append(rec)
    return out


# ------------------------------------------------------------------------------------------
# Evaluation
# ------------------------------------------------------------------------------------------

def evaluate_with_edits(lm: Any, task: Any, scales: Mapping[Head, float], *, desc: str = "",
                        seed: int = 0) -> dict:
    """Generate with the heads rescaled (hooks active), then score with the hooks removed."""
    import torch

    from headpursuit.intervention import scale_heads

    torch.manual_seed(seed)
    with scale_heads(lm, dict(scales)):
        outputs = task.generate(lm, desc=desc)
    return task.score(outputs, fluency_model=lm)


def metric_groups(result: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """The per-group metric dicts of an evaluation result (drops n, examples, ...)."""
    return {g: dict(v) for g, v in result.items()
            if isinstance(v, Mapping) and g not in ("n", "examples", "fluency_info")
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v.values())}


def summarize_seeds(per_seed: Sequence[Mapping[str, Any]]) -> dict:
    """{group: {metric: mean}, "std": {..: sample std}, "median": {..: median}, "n_seeds": n}.

    The median is reported next to the mean because on small models a single draw that hits a
    load-bearing head (layer 0/1) can break every answer and drag the mean down on its own.

    NaN values (e.g. an undefined metric) are left out of a metric's mean/std; a metric NaN for
    every seed stays NaN. The std is the sample standard deviation (n-1), 0 for one seed.
    """
    out: dict[str, Any] = {"std": {}, "median": {}, "n_seeds": len(per_seed)}
    groups: dict[str, set[str]] = {}
    for r in per_seed:
        for g, m in metric_groups(r).items():
            groups.setdefault(g, set()).update(m)
    for g, metrics in groups.items():
        out[g], out["std"][g], out["median"][g] = {}, {}, {}
        for name in sorted(metrics):
            vals = [float(r[g][name]) for r in per_seed
                    if g in r and name in r[g] and math.isfinite(float(r[g][name]))]
            if not vals:
                out[g][name] = out["std"][g][name] = out["median"][g][name] = float("nan")
                continue
            mean = sum(vals) / len(vals)
            var = sum((v - mean) ** 2 for v in vals) / (len(vals) - 1) if len(vals) > 1 else 0.0
            out[g][name], out["std"][g][name] = mean, math.sqrt(var)
            out["median"][g][name] = statistics.median(vals)
    return out


# ------------------------------------------------------------------------------------------
# Keys and the cache
# ------------------------------------------------------------------------------------------

def stable_hash(*parts: Any, n: int = 20) -> str:
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:n]


_FINGERPRINT: str | None = None
_NOT_IN_FINGERPRINT = {"run.py", "__main__.py", "tracking.py", "aggregate.py", "plots.py"}


def code_fingerprint() -> str:
    """Hash of the package's code and data that produce results (not the run/record shell).

    Part of every cache key: a changed task, metric, capture or ranking never reads stale entries.
    """
    global _FINGERPRINT
    if _FINGERPRINT is None:
        root = Path(__file__).resolve().parent
        h = hashlib.sha256()
        files = sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts
                       and p.suffix in (".py", ".txt", ".jsonl", ".json", ".csv")
                       and not (p.parent == root and p.name in _NOT_IN_FINGERPRINT))
        for p in files:
            h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes() + b"\1")
        _FINGERPRINT = h.hexdigest()[:16]
    return _FINGERPRINT


def model_identity(model_cfg: Mapping[str, Any], lm: Any) -> dict:
    """What determines a loaded model's outputs (for cache keys)."""
    prov = getattr(lm, "provenance", {}) or {}
    return {
        "name_or_path": model_cfg.get("name_or_path"),
        "revision": model_cfg.get("revision"),
        "kwargs": model_cfg.get("kwargs") or {},
        "source": prov.get("source"),
        "seed": prov.get("seed"),
        "dtype": str(lm.dtype),
        "device": lm.device.type,
        "layout": dict(lm.layout.__dict__),
    }


# Task config keys that do not change what a split's generations are.
_NOT_RANKING_KEYS = {"n_eval", "n_examples", "positions"}
_NOT_EVAL_KEYS = {"n_examples", "positions"}


def task_identity(task_cfg: Mapping[str, Any], purpose: str) -> dict:
    drop = _NOT_RANKING_KEYS if purpose == "ranking" else _NOT_EVAL_KEYS
    return {k: v for k, v in task_cfg.items() if k not in drop}


class RunCache:
    """Files under `root/<kind>/<key>.<ext>`, written atomically, one lock file per entry.

    `root=None` disables caching (everything is computed, nothing is written).
    """

    def __init__(self, root: str | os.PathLike | None):
        self.root = Path(root) if root else None
        self.hits: dict[str, bool] = {}

    @property
    def enabled(self) -> bool:
        return self.root is not None

    def dir(self, kind: str) -> Path | None:
        if self.root is None:
            return None
        d = self.root / kind
        d.mkdir(parents=True, exist_ok=True)
        return d

    @contextlib.contextmanager
    def lock(self, kind: str, key: str):
        """Exclusive lock for one entry (fcntl.flock), so parallel jobs compute it once."""
        if self.root is None:
            yield
            return
        path = self.dir(kind) / f"{key}.lock"
        f = open(path, "a+")
        try:
            try:
                import fcntl

                fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            except (ImportError, OSError) as exc:  # no flock (Windows, some network filesystems)
                log.debug("cache lock unavailable (%s); going on without it", exc)
            yield
        finally:
            f.close()  # closing releases the lock

    def get_or_compute(self, kind: str, key: str, compute: Callable[[], Any], fmt: str = "json"):
        """(value, from_cache). `fmt` is json (plain data) or pickle (objects)."""
        if self.root is None:
            return compute(), False
        ext = {"json": "json", "pickle": "pkl"}[fmt]
        path = self.dir(kind) / f"{key}.{ext}"
        with self.lock(kind, key):
            value = self._read(path, fmt)
            if value is not None:
                self.hits[kind] = True
                return value, True
            value = compute()
            self._write(path, value, fmt)
        self.hits[kind] = False
        return value, False

    @staticmethod
    def _read(path: Path, fmt: str):
        if not path.exists():
            return None
        try:
            if fmt == "json":
                return json.loads(path.read_text(encoding="utf-8"))
            with open(path, "rb") as f:
                return pickle.load(f)
        except Exception as exc:  # a broken entry is recomputed, never trusted
            log.warning("cache entry %s is unreadable (%s); recomputing it", path, exc)
            return None

    @staticmethod
    def _write(path: Path, value: Any, fmt: str) -> None:
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        try:
            if fmt == "json":
                # NaN stays NaN (json reads it back); a cached value equals the computed one
                tmp.write_text(json.dumps(value, default=str), encoding="utf-8")
            else:
                with open(tmp, "wb") as f:
                    pickle.dump(value, f, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, path)
        except Exception as exc:
            log.warning("could not write cache entry %s: %s", path, exc)
            tmp.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------
# Stages with caching
# ------------------------------------------------------------------------------------------

_MODEL_MEMO: dict[str, Any] = {}
_TASK_MEMO: dict[str, Any] = {}


def load_model_memo(model_cfg: Mapping[str, Any], device: str, dtype: str) -> tuple[Any, bool]:
    """Load the model once per process: the jobs of a basic-launcher sweep share it.

    Only the last model is kept (a sweep over models does not pile them up in memory).
    """
    key = stable_hash(dict(model_cfg), device, dtype)
    if key in _MODEL_MEMO:
        return _MODEL_MEMO[key], True
    _MODEL_MEMO.clear()
    _TASK_MEMO.clear()
    with contextlib.suppress(ImportError):
        import headpursuit.models.tiny  # noqa: F401  synthetic builders register themselves
    with contextlib.suppress(ImportError):
        import headpursuit.models.tiny_vlm  # noqa: F401  registers "tiny_vlm"
    from headpursuit.models import load_model

    lm = load_model(model_cfg["name_or_path"], dtype=dtype, device=device,
                    trust_remote_code=bool(model_cfg.get("trust_remote_code", False)),
                    revision=model_cfg.get("revision"), **dict(model_cfg.get("kwargs") or {}))
    _MODEL_MEMO[key] = lm
    return lm, False


def build_task_memo(task_cfg: Mapping[str, Any], lm: Any) -> Any:
    from headpursuit.tasks import build_task

    key = stable_hash(dict(task_cfg), id(lm))
    if key not in _TASK_MEMO:
        _TASK_MEMO.clear()
        args = {k: v for k, v in task_cfg.items() if k not in ("positions",)}
        _TASK_MEMO[key] = build_task(args, lm)
    return _TASK_MEMO[key]


def concept_token_ids(concept: Any, lm: Any = None) -> list[int] | None:
    """The concept's token ids (attribute, property or method of the Concept)."""
    for attr in ("token_ids", "ids", "tokens"):
        v = getattr(concept, attr, None)
        if callable(v):
            try:
                v = v(lm.tokenizer) if lm is not None else v()
            except TypeError:
                v = v()
        if v is not None:
            try:
                return sorted({int(i) for i in v})
            except (TypeError, ValueError):
                continue
    return None


def ranking_samples_cached(cache: RunCache, task: Any, lm: Any, ident: dict) -> tuple[list, bool]:
    """The task's ranking samples (prompts + the model's own greedy answers), cached."""
    from headpursuit.capture import CaptureSample

    key = stable_hash("ranking_samples", CACHE_VERSION, ident, code_fingerprint())

    def compute():
        return [{"prompt": s.prompt, "answer": s.answer, "image": s.image, "meta": s.meta}
                for s in task.ranking_samples(lm)]

    rows, hit = cache.get_or_compute("samples", key, compute, fmt="pickle")
    return [CaptureSample(prompt=r["prompt"], answer=r["answer"], image=r.get("image"),
                          meta=r.get("meta") or {}) for r in rows], hit


def capture_cached(cache: RunCache, lm: Any, samples: list, positions: str, concept_ids,
                   batch_size: int = 8):
    """capture_heads with its disk cache, under a lock so parallel jobs extract once."""
    from headpursuit.capture import cache_key, capture_heads

    layers = list(range(lm.layout.n_layers))
    key = cache_key(lm, samples, positions, layers, concept_ids)
    with cache.lock("acts", key):
        acts = capture_heads(lm, samples, positions=positions, batch_size=batch_size,
                             concept_token_ids=concept_ids, cache_dir=cache.dir("acts"),
                             progress=False)
    return acts, key, bool(acts.meta.get("from_cache"))


def rank_cached(cache: RunCache, acts: Any, acts_key: str, lm: Any, concept: Any,
                ranking_cfg: Mapping[str, Any], seed: int):
    """rank_heads, cached on (activations, concept, ranking config, seed, code)."""
    from headpursuit.ranking import rank_heads

    kwargs = dict(ranking_cfg)
    method = kwargs.pop("method")
    key = stable_hash("scores", CACHE_VERSION, acts_key, getattr(concept, "name", None),
                      concept_token_ids(concept, lm), method, kwargs, seed, code_fingerprint())
    return cache.get_or_compute(
        "scores", key, lambda: rank_heads(acts, lm, concept, method=method, seed=seed, **kwargs),
        fmt="pickle")


def evaluate_cached(cache: RunCache, lm: Any, task: Any, ident: dict, scales: Mapping[Head, float],
                    *, desc: str, seed: int) -> tuple[dict, bool]:
    """evaluate_with_edits, cached on (model, task config, the exact edit, seed, code)."""
    edit = sorted([int(a), int(b), float(s)] for (a, b), s in scales.items())
    key = stable_hash("eval", CACHE_VERSION, ident, edit, seed, code_fingerprint())
    return cache.get_or_compute(
        "evals", key, lambda: evaluate_with_edits(lm, task, scales, desc=desc, seed=seed))
