"""The paper's metrics: TriviaQA token F1 / EM, CIDEr-D, the RoBERTa toxicity scorer, held-out words."""

import math
import random
from collections import Counter

import pytest

from headpursuit.metrics import (
    RobertaToxicityScorer,
    cider_d,
    exact_match_official,
    get_scorer,
    known_scorers,
    mean_token_f1,
    normalize_answer,
    official_normalize,
    split_words,
    token_f1,
    toxic_fraction,
    word_frequency,
)
from headpursuit.metrics.cider import caption_tokens
from headpursuit.metrics.toxicity import ROBERTA_TOXICITY_MODEL

# --- official TriviaQA normalisation, token F1, exact match -------------------------------------


@pytest.mark.parametrize(
    "raw, norm",
    [
        ("The Cat sat on a mat.", "cat sat on mat"),
        ("U.S.", "u s"),  # punctuation -> space (SQuAD would give "us")
        ("U.S.A.", "u s"),  # ... and the stand-alone "a" is then an article
        ("Einstein's", "einstein s"),  # no possessive rule
        ("hello_world", "hello world"),
        ("\u2018Quoted\u2019 \u00b4x", "quoted x"),
        ("Türkiye", "türkiye"),  # no accent folding
        ("Theatre", "theatre"),
        ("", ""),
        (None, ""),
    ],
)
def test_official_normalize_is_the_triviaqa_script(raw, norm):
    assert official_normalize(raw) == norm


def test_repo_normalize_answer_unchanged():
    assert normalize_answer("U.S.A.") == "usa"
    assert normalize_answer("Einstein's") == "einstein"
    assert normalize_answer("Türkiye") == "turkiye"


def test_token_f1_hand_worked():
    # same tokens after dropping articles: F1 = 1
    assert token_f1("the cat sat on the mat", "a cat sat on a mat") == 1.0
    # pred [barack obama was president] vs [obama]: common 1, P = 1/4, R = 1,
    # F1 = 2 * 1/4 * 1 / (1/4 + 1) = 0.4
    assert token_f1("Barack Obama was president", ["Obama"]) == pytest.approx(0.4)
    # bags: pred {new: 2, york: 2} vs {new, york, city}: common 2, P = 2/4, R = 2/3,
    # F1 = 2 * 1/2 * 2/3 / (1/2 + 2/3) = (2/3) / (7/6) = 4/7
    assert token_f1("new york new york", ["new york city"]) == pytest.approx(4 / 7)
    # punctuation: [st louis missouri] vs [st louis]: P = 2/3, R = 1, F1 = (4/3) / (5/3) = 0.8
    assert token_f1("St. Louis, Missouri", ["St Louis"]) == pytest.approx(0.8)


def test_token_f1_max_over_aliases():
    assert token_f1("the UK", ["United Kingdom", "UK", "Britain"]) == 1.0
    # [united kingdom of great britain] (5 tokens) vs "britain": P = 1/5, R = 1 -> F1 = 0.4 / 1.2 = 1/3;
    # vs "united kingdom": P = 2/5, R = 1 -> F1 = 0.8 / 1.4 = 4/7; the max is 4/7
    assert token_f1("United Kingdom of Great Britain", ["Britain", "United Kingdom"]) == pytest.approx(4 / 7)


def test_token_f1_no_overlap_and_empty():
    assert token_f1("Paris", ["London"]) == 0.0
    assert token_f1("", ["London"]) == 0.0
    assert token_f1(None, ["London"]) == 0.0
    assert token_f1("the", ["the"]) == 0.0  # normalises to nothing
    assert token_f1("London", []) == 0.0
    assert token_f1("London", "London") == 1.0  # a single string is one ground truth


def test_exact_match_official():
    assert exact_match_official("The Beatles!", ["beatles"]) == 1.0
    assert exact_match_official("Beatles band", ["beatles"]) == 0.0
    assert exact_match_official("UK", ["United Kingdom", "U.K"]) == 0.0  # "u k" != "uk"
    assert exact_match_official("u-k", ["United Kingdom", "U.K"]) == 1.0
    assert exact_match_official("Paris", []) == 0.0


def test_mean_token_f1():
    # "Obama" vs [barack obama]: P = 1, R = 1/2 -> 2/3; "x" vs "y": 0; mean 1/3
    assert mean_token_f1(["Obama", "x"], [["Barack Obama"], ["y"]]) == pytest.approx(1 / 3)
    assert math.isnan(mean_token_f1([], []))
    with pytest.raises(ValueError):
        mean_token_f1(["a"], [])


# --- CIDEr-D -------------------------------------------------------------------------------------

# Lower-case, punctuation-free captions, so pycocoevalcap's (Java) PTB tokeniser and ours agree.
CIDER_EXAMPLES = {
    "three_images": (
        ["a man is riding a horse on the beach", "two dogs play in the snow", "a plate of food on a table"],
        [
            [
                "a man rides a horse on a beach",
                "a person riding a horse along the shore",
                "a man on a brown horse at the beach",
            ],
            ["two dogs playing in the snow", "dogs run through deep snow", "a pair of dogs play outside in winter"],
            ["a plate with food sits on a wooden table", "food on a white plate", "a meal on a table"],
        ],
    ),
    "clipping": (
        ["dog dog dog dog dog", "a cat on a mat"],
        [["a dog runs", "the dog is a good dog"], ["a cat sits on the mat", "there is a cat on a mat"]],
    ),
    "uneven": (
        ["", "red car parked on street", "a bird"],
        [
            ["a small boat on a lake"],
            ["a red car parked on a city street", "red car on the street"],
            ["a bird on a branch", "a small bird sits", "bird"],
        ],
    ),
}

# Published-implementation values: pycocoevalcap 1.2 (PyPI), `Cider().compute_score(gts, res)` run
# once on exactly these strings (gts = {i: refs}, res = {i: [candidate]}); per image, then corpus.
PYCOCOEVALCAP_VALUES = {
    "three_images": ([2.4522717708596353, 2.231418960915884, 2.2609564011047185], 2.3148823776267458),
    "clipping": ([0.6082688193845932, 5.176939053035689], 2.892603936210141),
    "uneven": ([0.0, 3.781036321072694, 2.3057950074840234], 2.0289437761855726),
}


def slow_cider_d(candidates, references, sigma=6.0):
    """CIDEr-D by the paper's formulas, with plain loops (independent of the library code).

    g_k(s) = tf of each n-gram in s (raw counts, as pycocoevalcap) * log(N / max(1, df)), df = number
    of images whose references contain the n-gram; CIDEr-D_n = 10/m * sum_j
    exp(-(l_c - l_j)^2 / (2 sigma^2)) * <min(g(c), g(s_j)), g(s_j)> / (|g(c)| |g(s_j)|);
    CIDEr-D = mean over n = 1..4. Lengths are token counts (equal, as differences, to
    pycocoevalcap's bigram counts whenever both sentences are non-empty).
    """

    def grams(tokens, n):
        return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]

    cands = [c.split() for c in candidates]
    refs = [[r.split() for r in rs] for rs in references]
    n_images = len(refs)
    scores = []
    for cand, image_refs in zip(cands, refs):
        per_order = []
        for n in range(1, 5):
            total = 0.0
            for ref in image_refs:
                vocab = sorted(set(grams(cand, n)) | set(grams(ref, n)))
                idf = []
                for g in vocab:
                    df = sum(1 for rs in refs if any(g in grams(r, n) for r in rs))
                    idf.append(math.log(n_images) - math.log(max(1, df)))
                gc = [grams(cand, n).count(g) * w for g, w in zip(vocab, idf)]
                gr = [grams(ref, n).count(g) * w for g, w in zip(vocab, idf)]
                num = sum(min(a, b) * b for a, b in zip(gc, gr))
                den = math.sqrt(sum(a * a for a in gc)) * math.sqrt(sum(b * b for b in gr))
                cos = num / den if den > 0 else 0.0
                total += cos * math.exp(-((len(cand) - len(ref)) ** 2) / (2 * sigma**2))
            per_order.append(10.0 * total / len(image_refs))
        scores.append(sum(per_order) / 4)
    return scores


@pytest.mark.parametrize("name", sorted(CIDER_EXAMPLES))
def test_cider_d_matches_pycocoevalcap_values(name):
    cands, refs = CIDER_EXAMPLES[name]
    per_item, corpus = PYCOCOEVALCAP_VALUES[name]
    out = cider_d(cands, refs)
    assert out["cider_per_item"] == pytest.approx(per_item, rel=1e-12, abs=1e-12)
    assert out["cider"] == pytest.approx(corpus, rel=1e-12)


@pytest.mark.parametrize("name", sorted(CIDER_EXAMPLES))
def test_cider_d_matches_slow_reference(name):
    cands, refs = CIDER_EXAMPLES[name]
    out = cider_d(cands, refs)
    expected = slow_cider_d(cands, refs)
    assert out["cider_per_item"] == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert out["cider"] == pytest.approx(sum(expected) / len(expected), rel=1e-9)


def test_cider_d_identical_caption_scores_highest():
    cands, refs = CIDER_EXAMPLES["three_images"]
    exact = cider_d([refs[0][0]] + cands[1:], refs)["cider_per_item"][0]
    others = [cider_d([c] + cands[1:], refs)["cider_per_item"][0] for c in [cands[0], cands[1], cands[2]]]
    assert exact > max(others)
    assert exact > 0


def test_cider_d_no_overlap_is_zero():
    out = cider_d(["zebra zebra giraffe", "a dog"], [["a red car", "the car is red"], ["a dog runs"]])
    assert out["cider_per_item"][0] == 0.0
    assert out["cider_per_item"][1] > 0.0


def test_cider_d_tokenisation_ignores_case_and_punctuation():
    cands, refs = CIDER_EXAMPLES["three_images"]
    noisy = [c.upper() + "." for c in cands]
    noisy_refs = [[r.capitalize() + "!" for r in rs] for rs in refs]
    assert cider_d(noisy, noisy_refs)["cider"] == pytest.approx(cider_d(cands, refs)["cider"])
    assert caption_tokens("Don't pet the dog's black-and-white ball, OK?") == [
        "do",
        "n't",
        "pet",
        "the",
        "dog",
        "'s",
        "black-and-white",
        "ball",
        "ok",
    ]


def test_cider_d_edges():
    out = cider_d([], [])
    assert math.isnan(out["cider"]) and out["cider_per_item"] == []
    with pytest.raises(ValueError, match="no reference"):
        cider_d(["a dog"], [[]])
    with pytest.raises(ValueError):
        cider_d(["a dog"], [])
    # a single string is one reference
    as_strings = cider_d(["a dog", "a cat"], ["a dog", "a cat"])
    assert as_strings == cider_d(["a dog", "a cat"], [["a dog"], ["a cat"]])


# --- RoBERTa toxicity scorer ---------------------------------------------------------------------

TINY_WORDS = ["you", "are", "a", "nice", "idiot", "person", "stupid", "thing", "hello", "world"]


def _save_tiny_classifier(directory, id2label):
    """A tiny random RobertaForSequenceClassification + word-level tokenizer saved to `directory`."""
    torch = pytest.importorskip("torch")
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, RobertaConfig, RobertaForSequenceClassification

    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    vocab.update({w: i + 4 for i, w in enumerate(TINY_WORDS)})
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=32,
    )
    config = RobertaConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=40,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        initializer_range=0.5,
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
    )
    torch.manual_seed(0)
    model = RobertaForSequenceClassification(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _independent_probabilities(directory, texts, label_index):
    """p(label) per text: one unpadded forward pass per text, softmax written out by hand."""
    import torch
    from transformers import AutoTokenizer, RobertaForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = RobertaForSequenceClassification.from_pretrained(directory).eval()
    out = []
    for text in texts:
        with torch.no_grad():
            logits = model(**tokenizer(text, return_tensors="pt")).logits[0].tolist()
        exps = [math.exp(x - max(logits)) for x in logits]
        out.append(exps[label_index] / sum(exps))
    return out


TEXTS = ["you are a nice person", "you stupid idiot", "", "hello world hello world hello", "stupid thing", "you are"]


def test_roberta_scorer_registered():
    assert "roberta" in known_scorers()


def test_roberta_scorer_offline_error_is_clear(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(RuntimeError) as err:
        get_scorer("roberta", cache_dir=str(tmp_path / "empty-cache"))
    msg = str(err.value)
    assert ROBERTA_TOXICITY_MODEL in msg
    assert f"download {ROBERTA_TOXICITY_MODEL}" in msg
    assert "model_name_or_path" in msg and "profanity_check" in msg


def test_roberta_scorer_missing_local_dir(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(RuntimeError, match="no-such-model"):
        RobertaToxicityScorer(model_name_or_path=str(missing))


@pytest.mark.parametrize(
    "id2label, toxic_index",
    [
        ({0: "neutral", 1: "toxic"}, 1),
        ({0: "TOXIC", 1: "neutral"}, 0),  # the index comes from the config, not a constant
    ],
)
def test_roberta_scorer_matches_independent_softmax(tmp_path, id2label, toxic_index):
    directory = _save_tiny_classifier(tmp_path / "tiny", id2label)
    scorer = get_scorer("roberta", model_name_or_path=str(directory), batch_size=2)
    assert scorer.name == "roberta" and scorer.toxic_index == toxic_index
    assert str(directory) in scorer.version
    scores = scorer.score(TEXTS)
    nonempty = [t for t in TEXTS if t]
    expected = iter(_independent_probabilities(directory, nonempty, toxic_index))
    expected_all = [next(expected) if t else 0.0 for t in TEXTS]
    assert scores == pytest.approx(expected_all, abs=1e-5)
    assert len(set(round(s, 4) for s in scores if s)) > 1  # the random model does discriminate
    # "toxic generations" = toxic_fraction: the share of texts whose argmax label is toxic
    argmax_toxic = [p > 0.5 for p in expected_all]
    assert toxic_fraction(scores) == pytest.approx(sum(argmax_toxic) / len(TEXTS))


def test_roberta_scorer_needs_a_toxic_label(tmp_path):
    directory = _save_tiny_classifier(tmp_path / "tiny", {0: "negative", 1: "positive"})
    with pytest.raises(ValueError, match="toxic"):
        RobertaToxicityScorer(model_name_or_path=str(directory))


# --- held-out toxic words ------------------------------------------------------------------------

WORDS = [f"word{i}" for i in range(20)] + ["Word3", "word5 "]  # duplicates modulo case/space


def test_split_words_disjoint_and_covering():
    selection, held_out = split_words(WORDS)
    assert not set(selection) & set(held_out)
    assert set(selection) | set(held_out) == {f"word{i}" for i in range(20)}
    assert len(held_out) == 10 and len(selection) == 10
    assert selection == sorted(selection) and held_out == sorted(held_out)


def test_split_words_seeded():
    assert split_words(WORDS, seed=0) == split_words(WORDS, seed=0)
    shuffled = list(WORDS)
    random.Random(1).shuffle(shuffled)
    assert split_words(shuffled, seed=0) == split_words(WORDS, seed=0)  # input order is irrelevant
    assert split_words(WORDS, seed=0) != split_words(WORDS, seed=1)
    # pinned: the split must not change across platforms / Python versions (string-seeded Random)
    assert split_words([f"w{i}" for i in range(8)], seed=0) == (["w0", "w2", "w6", "w7"], ["w1", "w3", "w4", "w5"])


def test_split_words_fraction():
    sel, held = split_words(WORDS, held_out_fraction=0.25)
    assert len(held) == 5 and len(sel) == 15
    assert len(split_words(["x", "y", "z"], held_out_fraction=0.5)[1]) == 2  # 1.5 rounds up
    assert split_words(WORDS, held_out_fraction=0.0)[1] == []
    assert split_words(WORDS, held_out_fraction=1.0)[0] == []
    with pytest.raises(ValueError):
        split_words(WORDS, held_out_fraction=1.5)


def test_word_frequency_counts_only_held_out_words():
    selection, held_out = split_words(WORDS, seed=3)
    only_selection = [" ".join(selection), f"{selection[0].upper()} and {selection[1]}!"]
    assert word_frequency(only_selection, held_out) == 0.0
    texts = [f"{held_out[0]} {held_out[0].upper()} {selection[0]}", f"{held_out[1]}, really", "nothing"]
    # counts 2, 1, 0 -> mean 1
    assert word_frequency(texts, held_out) == pytest.approx(1.0)
    assert word_frequency([f"x{held_out[0]}y"], held_out) == 0.0  # whole words only
    assert math.isnan(word_frequency([], held_out))
    counts = Counter(w for t in texts for w in t.lower().replace(",", " ").split() if w in selection)
    assert word_frequency(texts, selection) == pytest.approx(sum(counts.values()) / len(texts))


def test_answer_metrics_reports_official_f1_beside_accuracy():
    """QA groups carry the paper's metric: "It is France" vs "France" has P = 1/3, R = 1 -> F1 = 1/2;
    "the Paris city" vs "Paris" (article dropped) has P = 1/2, R = 1 -> F1 = 2/3; mean 7/12."""
    from headpursuit.metrics.text import answer_metrics

    class OneWord:
        def count_in_text(self, text):
            return text.count("France")

    m = answer_metrics(["It is France", "the Paris city"], [["France"], ["Paris"]], OneWord())
    assert m["accuracy"] == 1.0
    assert m["f1"] == pytest.approx(7 / 12)
