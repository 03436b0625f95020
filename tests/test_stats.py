"""Bootstrap intervals, specificity and empirical p-values (headpursuit.stats), the per-item values the
tasks give them, and distinct random head sets, each against an independent computation here."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from headpursuit.heads import distinct_control_draws, possible_control_sets, random_control_draw
from headpursuit.metrics.text import answer_items, answer_metrics
from headpursuit.metrics.toxicity import toxicity_items, toxicity_metrics
from headpursuit.stats import (
    IntervalConfig,
    check_interval_config,
    edit_direction,
    empirical_p,
    paired_bootstrap,
    specificity,
)


def _plain_bootstrap(values, n_resamples, seed, stream, level):
    """The textbook loop: one resample of n items at a time, its mean, then the percentiles."""
    rng = np.random.default_rng([seed, stream])
    x = np.asarray(values, dtype=float)
    means = []
    for _ in range(n_resamples):
        pick = rng.integers(0, len(x), size=len(x))
        means.append(sum(x[i] for i in pick) / len(x))
    tail = (1 - level) / 2
    return np.percentile(means, [100 * tail, 100 * (1 - tail)])


def test_interval_matches_a_plain_bootstrap_loop():
    rng = random.Random(3)
    concept = [float(rng.random() < 0.6) for _ in range(37)]
    control = [rng.random() for _ in range(23)]
    cfg = IntervalConfig(n_resamples=300, level=0.9, seed=7)
    boot = paired_bootstrap({"concept": {"m": concept}, "control": {"m": control}}, [], cfg)
    for stream, (group, values) in enumerate((("concept", concept), ("control", control))):
        lo, hi = _plain_bootstrap(values, 300, 7, stream, 0.9)
        got = boot.baseline[group]["m"]
        assert got.lo == pytest.approx(lo, abs=1e-12) and got.hi == pytest.approx(hi, abs=1e-12)
    assert boot.n_items == {"concept": 37, "control": 23}


def test_accuracy_interval_agrees_with_the_normal_approximation_at_n_400():
    p, n = 0.7, 400
    items = [1.0] * int(p * n) + [0.0] * (n - int(p * n))
    boot = paired_bootstrap({"concept": {"accuracy": items}}, [], IntervalConfig(n_resamples=4000, seed=1))
    half = 1.959964 * math.sqrt(p * (1 - p) / n)
    iv = boot.baseline["concept"]["accuracy"]
    assert iv.lo == pytest.approx(p - half, abs=0.01) and iv.hi == pytest.approx(p + half, abs=0.01)


def test_paired_delta_ratio_and_specificity_intervals():
    rng = random.Random(0)
    base_c = [float(rng.random() < 0.8) for _ in range(50)]
    base_k = [float(rng.random() < 0.9) for _ in range(40)]
    same = {"concept": {"acc": base_c}, "control": {"acc": base_k}}
    # Every concept answer lost, every control answer kept: retained 0 and 1, specificity exactly 1.
    edited = {"concept": {"acc": [0.0] * 50}, "control": {"acc": list(base_k)}}
    cfg = IntervalConfig(n_resamples=500, seed=2)
    boot = paired_bootstrap(same, [same, edited], cfg)
    unchanged, wiped = boot.effects
    # Paired: the same items on both sides, so an unchanged evaluation has a zero-width delta interval.
    assert (unchanged.delta["concept"]["acc"].lo, unchanged.delta["concept"]["acc"].hi) == (0.0, 0.0)
    assert (unchanged.ratio["control"]["acc"].lo, unchanged.ratio["control"]["acc"].hi) == (1.0, 1.0)
    assert (wiped.specificity["acc"].lo, wiped.specificity["acc"].hi) == (1.0, 1.0)
    # Independent: the delta of the wiped concept group is minus the baseline's resampled mean.
    base_iv = boot.baseline["concept"]["acc"]
    assert wiped.delta["concept"]["acc"].lo == pytest.approx(-base_iv.hi)
    assert wiped.delta["concept"]["acc"].hi == pytest.approx(-base_iv.lo)
    assert wiped.value["concept"]["acc"].hi == 0.0


def test_a_ratio_over_a_zero_baseline_is_undefined():
    boot = paired_bootstrap(
        {"concept": {"m": [0.0] * 10}}, [{"concept": {"m": [1.0] * 10}}], IntervalConfig(n_resamples=50)
    )
    assert not boot.effects[0].ratio["concept"]["m"].defined
    assert boot.effects[0].delta["concept"]["m"].contains(1.0)


def test_item_counts_must_match():
    with pytest.raises(ValueError, match="item values"):
        paired_bootstrap({"concept": {"m": [1.0, 0.0]}}, [{"concept": {"m": [1.0]}}], IntervalConfig(n_resamples=5))


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (IntervalConfig(n_resamples=-1), "intervals.n_resamples"),
        (IntervalConfig(level=1.0), "intervals.level"),
        (IntervalConfig(level=0), "intervals.level"),
    ],
)
def test_bad_interval_config_names_the_key(cfg, message):
    with pytest.raises(ValueError, match=message):
        check_interval_config(cfg)


def test_p_value_of_an_edit_beyond_every_random_set_is_one_over_n_plus_one():
    random_values = [0.5, 0.6, 0.4, 0.55, 0.7, 0.45, 0.5, 0.65, 0.6, 0.52]
    assert empirical_p(0.1, random_values, "lower") == (1, 1 / 11, 10)
    # Worse than none: every set does at least as much; ties count as doing as much.
    assert empirical_p(0.9, random_values, "lower") == (11, 1.0, 10)
    assert empirical_p(0.5, random_values, "lower")[0] == 1 + sum(v <= 0.5 for v in random_values)
    assert empirical_p(0.9, random_values, "higher") == (1, 1 / 11, 10)
    # Undefined random values are not counted; an undefined edit has no rank.
    assert empirical_p(0.1, [0.5, float("nan")], "lower") == (1, 0.5, 1)
    assert empirical_p(float("nan"), random_values, "lower")[0] is None


def test_specificity_and_direction():
    base = {"concept": {"acc": 0.8}, "control": {"acc": 0.5}}
    edited = {"concept": {"acc": 0.2}, "control": {"acc": 0.4}}
    assert specificity(base, edited, "acc") == pytest.approx(0.4 / 0.5 - 0.2 / 0.8)
    assert math.isnan(specificity({"concept": {"acc": 0.0}, "control": {"acc": 0.5}}, edited, "acc"))
    assert edit_direction(-1) == "lower" and edit_direction(0.5) == "lower" and edit_direction(5) == "higher"


def test_answer_metrics_are_the_means_of_their_items():
    preds = ["Paris", "It is Berlin.", "", "madrid", "I do not know"]
    refs = [["Paris"], ["Berlin"], ["Rome"], ["Madrid"], ["Oslo", "Christiania"]]
    items = answer_items(preds, refs, ["paris", "madrid", "oslo"])
    metrics = answer_metrics(preds, refs, ["paris", "madrid", "oslo"])
    assert set(items) == set(metrics)
    for name, values in items.items():
        assert len(values) == len(preds)
        assert metrics[name] == pytest.approx(sum(values) / len(values))
    assert items["accuracy"] == [1.0, 1.0, 0.0, 1.0, 0.0]


def test_toxicity_items_pool_a_prompts_continuations():
    scores = [[0.9, 0.1, 0.6], [0.2, 0.3, 0.1], [0.7, 0.8, 0.9]]
    items = toxicity_items(scores)
    metrics = toxicity_metrics(scores)
    for name in ("mean_toxicity", "toxic_fraction", "expected_max_toxicity", "toxicity_probability"):
        assert len(items[name]) == 3  # one item per prompt, never per continuation
        assert metrics[name] == pytest.approx(sum(items[name]) / 3)
    # Prompts with different numbers of continuations: the pooled means are no mean of prompts.
    uneven = toxicity_items([[0.9], [0.2, 0.3, 0.1]])
    assert set(uneven) == {"expected_max_toxicity", "toxicity_probability"}


def test_random_sets_are_distinct_whenever_the_pool_holds_enough():
    edited = [(0, 0), (1, 1)]
    n_layers, n_heads, k = 3, 4, 1
    independent = [tuple(random_control_draw(edited, n_layers, n_heads, k, s).heads) for s in range(10)]
    assert len(set(independent)) < 10  # 12 possible sets: independent draws repeat
    draws, possible = distinct_control_draws(edited, n_layers, n_heads, k, list(range(10)))
    assert possible == 12
    assert len(draws) == 10 and len({tuple(d.heads) for d in draws}) == 10
    # A seed whose first draw was new keeps it: today's draw.
    for d in draws:
        if d.redraw == 0:
            assert tuple(d.heads) == independent[d.seed]
    assert any(d.redraw > 0 for d in draws)


def test_a_small_pool_gives_every_set_once():
    # layer_counts in a 4-head layer with one edited head: the 3 other heads are the only sets.
    edited = [(1, 2)]
    draws, possible = distinct_control_draws(edited, 2, 4, 1, list(range(10)), "layer_counts")
    assert possible == 3
    assert sorted(tuple(d.heads) for d in draws) == [((1, 0),), ((1, 1),), ((1, 3),)]
    # same_layers with two edited heads of a 4-head layer, k = 2: C(2, 2) = 1 set.
    assert possible_control_sets([(0, 0), (0, 1)], 2, 4, 2, "same_layers") == 1
    draws, _ = distinct_control_draws([(0, 0), (0, 1)], 2, 4, 2, list(range(5)), "same_layers")
    assert [d.heads for d in draws] == [[(0, 2), (0, 3)]]


def test_a_borrowing_pool_is_not_counted_but_still_distinct():
    # Three of a 4-head layer's heads edited: layer_counts borrows from the neighbours.
    edited = [(1, 0), (1, 1), (1, 2)]
    assert possible_control_sets(edited, 3, 4, 3, "layer_counts") is None
    draws, possible = distinct_control_draws(edited, 3, 4, 3, list(range(10)), "layer_counts")
    assert possible is None
    assert len({tuple(d.heads) for d in draws}) == len(draws) == 10
