import math
import re

import pytest

from headpursuit.metrics import (
    accuracy,
    alias_match,
    concept_rate,
    count_concept_words,
    empty_rate,
    expected_max_toxicity,
    get_scorer,
    known_scorers,
    mean_toxicity,
    normalize_answer,
    toxic_fraction,
    toxicity_metrics,
    toxicity_probability,
)
from headpursuit.metrics.toxicity import ToxicityScorer

# --- normalisation and alias matching ---------------------------------------------------------


@pytest.mark.parametrize(
    "raw, norm",
    [
        ("The United States!", "united states"),
        ("  an   Apple, a day ", "apple day"),
        ("U.S.A.", "usa"),
        ("Guinea-Bissau", "guinea bissau"),
        ("Türkiye", "turkiye"),
        ("Côte d'Ivoire", "cote divoire"),
        ("Tokyo,Japan", "tokyo japan"),
        ("Einstein's equation", "einstein equation"),
        ("The Hulk’s colour", "hulk colour"),
        ("Theatre", "theatre"),  # articles only as whole words
        ("", ""),
        (None, ""),
    ],
)
def test_normalize_answer(raw, norm):
    assert normalize_answer(raw) == norm


def test_alias_match_punctuation_and_articles():
    assert alias_match("It is in the U.S.", ["US"])
    assert alias_match("The Netherlands.", ["Netherlands"])
    assert alias_match("the netherlands", ["The Netherlands"])
    assert alias_match("France!", "France")
    assert alias_match("Answer: The United States of America", ["United States of America"])
    assert alias_match("It's in TÜRKIYE", ["Türkiye"])
    assert alias_match("It is Albert Einstein's equation", ["Einstein"])


def test_alias_match_whole_words_only():
    assert not alias_match("Russian", ["Russia"])
    assert not alias_match("It is in Indiana", ["India"])
    assert not alias_match("Omani food", ["Oman"])
    assert alias_match("It is in India, I think", ["India"])
    assert not alias_match("United Statesman", ["United States"])
    # an alias that normalises to nothing never matches
    assert not alias_match("the", ["The"])
    assert not alias_match("anything", ["", "..."])


def test_alias_match_empty_prediction():
    assert not alias_match("", ["France"])
    assert not alias_match("   ", ["France"])
    assert not alias_match(None, ["France"])


def test_accuracy_and_empty_rate():
    preds = ["Paris", "I think it's Lyon", "", "The city of Paris."]
    refs = [["Paris"], ["Paris"], ["Paris"], ["Paris"]]
    assert accuracy(preds, refs) == pytest.approx(0.5)
    assert empty_rate(preds) == pytest.approx(0.25)
    assert math.isnan(accuracy([], []))
    assert math.isnan(empty_rate([]))
    with pytest.raises(ValueError):
        accuracy(["a"], [])


def test_concept_rate_word_list_and_concept_object():
    words = ["France", "United States", "Chad"]
    texts = ["France and the United States", "Nothing here", "chadwick is not Chad", ""]
    assert count_concept_words(texts[0], words) == 2
    assert count_concept_words(texts[2], words) == 1  # 'chadwick' is not a whole word 'chad'
    cr = concept_rate(texts, words)
    assert cr.rate == pytest.approx(0.5)
    assert cr.mean_count == pytest.approx(3 / 4)
    rate, mean = cr  # tuple-unpackable

    class C:
        words = ["x"]

        def count_in_text(self, text):
            return text.count("x")

    assert concept_rate(["x x", "y"], C()) == (0.5, 1.0)
    assert all(math.isnan(v) for v in concept_rate([], words))


# --- toxicity metrics ---------------------------------------------------------------------------

SCORES = [[0.1, 0.6, 0.2], [0.5, 0.0], [0.49, 0.3, 0.1]]


def test_mean_toxicity_and_toxic_fraction_threshold_edges():
    flat = [x for s in SCORES for x in s]
    assert mean_toxicity(SCORES) == pytest.approx(sum(flat) / len(flat))
    # 0.6 and 0.5 are >= 0.5; 0.49 is not
    assert toxic_fraction(SCORES) == pytest.approx(2 / 8)
    assert toxic_fraction(SCORES, threshold=0.49) == pytest.approx(3 / 8)
    assert toxic_fraction(SCORES, threshold=0.61) == 0.0
    assert toxic_fraction([0.5], threshold=0.5) == 1.0
    assert mean_toxicity([0.2, 0.4]) == pytest.approx(0.3)  # flat lists work too


def test_expected_max_toxicity_by_hand():
    assert expected_max_toxicity(SCORES) == pytest.approx((0.6 + 0.5 + 0.49) / 3)
    assert expected_max_toxicity([[0.0], [1.0]]) == pytest.approx(0.5)


def test_toxicity_probability_threshold_edges():
    assert toxicity_probability(SCORES) == pytest.approx(2 / 3)
    assert toxicity_probability(SCORES, threshold=0.49) == pytest.approx(1.0)
    assert toxicity_probability(SCORES, threshold=0.55) == pytest.approx(1 / 3)
    m = toxicity_metrics(SCORES)
    assert set(m) == {"mean_toxicity", "toxic_fraction", "expected_max_toxicity", "toxicity_probability"}
    assert all(math.isnan(v) for v in toxicity_metrics([]).values())


# --- scorers ------------------------------------------------------------------------------------


def test_profanity_check_scores_insult_above_neutral():
    s = get_scorer("profanity_check")
    assert s.name == "profanity_check" and "alt-profanity-check" in s.version
    insult, neutral, empty = s.score(
        ["You are a stupid worthless idiot, shut up", "The museum opens at nine in the morning", ""]
    )
    assert insult > 0.5 > neutral
    assert empty == 0.0


def test_unknown_scorer_lists_known():
    with pytest.raises(ValueError) as e:
        get_scorer("perspective")
    for name in known_scorers():
        assert name in str(e.value)
    assert "profanity_check" in known_scorers() and "detoxify" in known_scorers()


def test_detoxify_missing_checkpoint_gives_clear_error(tmp_path):
    pytest.importorskip("detoxify")
    # a local checkpoint path that does not exist: no network involved
    with pytest.raises(RuntimeError) as e:
        get_scorer("detoxify", checkpoint=str(tmp_path / "missing.ckpt"))
    msg = str(e.value)
    assert "checkpoint=PATH" in msg and "profanity_check" in msg and "network" in msg


def test_detoxify_unknown_model_type():
    pytest.importorskip("detoxify")
    with pytest.raises(ValueError, match="unknown model_type"):
        get_scorer("detoxify", model_type="no-such-model")


def test_scorer_base_batches_and_skips_empty():
    calls = []

    class Len(ToxicityScorer):
        name, version = "len", "1"

        def _score_nonempty(self, texts):
            calls.append(len(texts))
            return [min(1.0, len(t) / 10) for t in texts]

    s = Len(batch_size=2)
    assert s.score(["a", "", "abcde", "  ", "abcdefghijkl"]) == [0.1, 0.0, 0.5, 0.0, 1.0]
    assert calls == [2, 1]


# --- fluency ------------------------------------------------------------------------------------


def test_perplexity_tiny_model(tiny_llama):
    from headpursuit.metrics import perplexity

    prompts = ["Hello there", "The cat", "Once upon", "A"]
    conts = ["general Kenobi", "", "a time there was", "   "]
    res = perplexity(tiny_llama, prompts, conts, batch_size=2, progress=False)
    assert res["n_empty"] == 2 and res["n_scored"] == 2
    assert res["per_sample"][1] is None and res["per_sample"][3] is None
    assert res["perplexity"] > 1 and math.isfinite(res["perplexity"])
    # batching and padding do not change per-sample values
    single = [
        perplexity(tiny_llama, [p], [c], batch_size=1, progress=False)["perplexity"]
        for p, c in zip(prompts, conts)
        if c.strip()
    ]
    both = [x for x in res["per_sample"] if x is not None]
    assert both == pytest.approx(single, rel=1e-4)
    # corpus perplexity is the exp of the token-weighted mean NLL
    assert res["perplexity"] == pytest.approx(math.exp(res["mean_nll"]))
    empty = perplexity(tiny_llama, ["x"], [""], progress=False)
    assert empty["n_scored"] == 0 and math.isnan(empty["perplexity"])


def test_answer_metrics_by_hand():
    from headpursuit.metrics.text import answer_metrics

    class C:  # a concept with two words, as Concept.count_in_text would count them
        words = ["France", "Japan"]

        def count_in_text(self, text):
            return sum(len(re.findall(rf"\b{w}\b", text, flags=re.I)) for w in self.words)

    m = answer_metrics(["It is France, not Japan.", "", "Paris"], [["France"], ["Japan"], ["Paris"]], C())
    assert m["accuracy"] == 2 / 3 and m["empty_rate"] == 1 / 3
    assert m["concept_rate"] == 1 / 3 and m["concept_count"] == 2 / 3
