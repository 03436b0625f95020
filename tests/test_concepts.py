"""Concepts with the real SmolLM2 tokenizer (loaded from the embedded GGUF, no model weights)."""

from __future__ import annotations

import pytest
import torch

from headpursuit.concepts import Concept, available_concepts, load_concept, read_word_list


@pytest.fixture(scope="module")
def tok():
    from headpursuit.models.tiny import embedded_tokenizer

    return embedded_tokenizer("smollm2")


def test_shipped_concepts_exist():
    assert {"countries", "colors", "numbers", "toxic", "sentiment"} <= set(available_concepts())


@pytest.mark.parametrize(
    "name", ["countries", "countries_single_word", "colors", "colours", "numbers", "toxic", "sentiment"]
)
def test_shipped_concepts_load(tok, name):
    c = load_concept(name, tok)
    assert isinstance(c, Concept) and len(c) > 20
    ids = c.token_ids
    assert ids.dtype == torch.long and torch.equal(ids, torch.unique(ids))  # sorted unique
    assert set(c.word_token_ids) | set(c.unusable_words) == set(c.words)
    assert set(sum(c.word_token_ids.values(), [])) == set(ids.tolist())


def test_single_word_countries_are_the_single_word_subset(tok):
    from headpursuit.concepts import concept_dir

    full = read_word_list(concept_dir() / "countries.txt")
    single = read_word_list(concept_dir() / "countries_single_word.txt")
    assert single == [w for w in full if " " not in w]
    c = load_concept("countries_single_word", tok)
    assert tok.encode(" United", add_special_tokens=False)[0] not in set(c.token_ids.tolist())
    assert tok.encode(" United", add_special_tokens=False)[0] in set(load_concept("countries", tok).token_ids.tolist())


def test_countries_tokens(tok):
    c = load_concept("countries", tok)
    assert c.name == "countries"
    space_france = tok(" France", add_special_tokens=False)["input_ids"]
    bare_france = tok("France", add_special_tokens=False)["input_ids"]
    assert len(space_france) == 1 and len(bare_france) == 1
    assert space_france[0] in c and bare_france[0] in c
    assert set(c.word_token_ids["France"]) == {space_france[0], bare_france[0]}
    assert " USA" in [tok.decode([i]) for i in c.word_token_ids["USA"]]
    # "The Netherlands" is tokenised without its article: " The" would stand for every text
    the = tok(" The", add_special_tokens=False)["input_ids"][0]
    assert the not in c
    # multi-word names contribute their first token and are reported
    assert "United States" in c.multi_token_words
    # no generic pieces: every first token carries at least 2 characters of its word
    for i in c.token_ids.tolist():
        assert len(tok.decode([i]).strip()) >= 2


def test_unusable_words_reported(tok):
    # " f" + "uck": the first token has a single character of the word -> unusable
    c = load_concept(["fuck", "France", "Togo"], tok, name="mixed")
    assert c.name == "mixed"
    assert "fuck" in c.unusable_words and "Togo" in c.unusable_words
    assert "France" in c.word_token_ids
    assert len(c) == 2
    assert "2 unusable" in c.summary()


def test_empty_concept_error(tok):
    with pytest.raises(ValueError) as e:
        load_concept(["fuck", "Togo"], tok, name="hopeless")
    msg = str(e.value)
    assert "hopeless" in msg and "smollm2" in msg and "Fix" in msg
    with pytest.raises(ValueError, match="no words"):
        load_concept([], tok)
    with pytest.raises(ValueError, match="Unknown concept"):
        load_concept("not_a_concept", tok)


def test_word_list_with_a_byte_order_mark_reads_like_one_without(tok, tmp_path):
    text = "sparrow\neagle\nparrot\n"
    plain, bom = tmp_path / "plain.txt", tmp_path / "bom.txt"
    plain.write_text(text, encoding="utf-8")
    bom.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))  # as Notepad and some exports write it
    assert read_word_list(bom) == read_word_list(plain) == ["sparrow", "eagle", "parrot"]
    assert torch.equal(load_concept(str(bom), tok).token_ids, load_concept(str(plain), tok).token_ids)


def test_path_and_comments(tok, tmp_path):
    p = tmp_path / "birds.txt"
    p.write_text("# birds\nsparrow\n\neagle   # big\nEagle\nparrot\n", encoding="utf-8")
    assert read_word_list(p) == ["sparrow", "eagle", "Eagle", "parrot"]
    c = load_concept(str(p), tok)
    assert c.name == "birds"
    eagle = tok(" eagle", add_special_tokens=False)["input_ids"][0]
    Eagle = tok(" Eagle", add_special_tokens=False)["input_ids"][0]
    assert eagle in c and Eagle in c  # capitalised variant included
    assert load_concept(c, tok) is c


def test_count_in_text(tok):
    c = load_concept("countries", tok)
    text = (
        "I flew from france to the United  States of America, then U.S. and USA; "
        "but us, Francesca and Frances do not count. Niger, Nigeria."
    )
    assert c.find_in_text(text) == ["france", "United  States of America", "U.S.", "USA", "Niger", "Nigeria"]
    assert c.count_in_text(text) == 6
    assert c.count_in_text("") == 0
    colors = load_concept("colours", tok)
    assert colors.count_in_text("A red car, a Blue sky; reddish and bored do not count.") == 2


def test_mask(tok):
    c = load_concept("numbers", tok)
    m = c.mask(len(tok))
    assert m.sum() == len(c) and m[c.token_ids].all()
