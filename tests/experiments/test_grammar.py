"""The toy grammar: the notes' sentence, the held-out split, why nouns need their adjectives."""

import pytest

from attnkit.experiments.adjectives import (
    EXAMPLE,
    FIERCE,
    GENTLE,
    MARK_BY_MOOD,
    VERBS_BY_MOOD,
    WORDS,
    generate,
    held_out_pairs,
    label,
    mood,
)


def test_words_hold_the_notes_sentence():
    vocab = {w for group in WORDS.values() for w in group}
    assert set(EXAMPLE.split()) <= vocab
    assert set(WORDS) >= {"determiners", "adjectives", "nouns", "verbs"}
    assert {"fluffy", "blue", "verdant"} <= set(WORDS["adjectives"])
    assert {"creature", "forest"} <= set(WORDS["nouns"])


def test_sentences_have_the_shape_det_adj_noun_verb_det_adj_noun_mark():
    classes = {w: c for c, ws in WORDS.items() for w in ws}
    for s in generate(300, seed=5):
        kinds = [classes[w] for w in s.words]
        n1, n2 = s.nouns
        assert kinds[0] == "determiners" and kinds[n1] == "nouns" and kinds[n1 + 1] == "verbs"
        assert kinds[n1 + 2] == "determiners" and kinds[n2] == "nouns"
        assert kinds[-1] == "marks" and len(s.words) == n2 + 2
        assert all(k == "adjectives" for k in kinds[1:n1] + kinds[n1 + 3:n2])
        assert len(s.adjectives_of[n1]) <= 3 and len(s.adjectives_of[n2]) <= 3


def test_what_follows_a_noun_is_decided_by_its_own_adjectives():
    for s in generate(300, seed=6):
        n1, n2 = s.nouns
        first = [s.words[i] for i in s.adjectives_of[n1]]
        second = [s.words[i] for i in s.adjectives_of[n2]]
        assert s.words[n1 + 1] in VERBS_BY_MOOD[mood(first)]
        assert s.words[-1] == MARK_BY_MOOD[mood(second)]


def test_mood():
    assert mood(["fluffy", "blue"]) == "gentle" and mood([]) == "gentle"
    assert mood(["jagged"]) == "fierce" and mood(["fluffy", "angry"]) == "mixed"
    assert not set(GENTLE) & set(FIERCE)


def test_held_out_pairs_never_in_training_and_only_them_in_held_out():
    pairs = held_out_pairs()
    assert len(pairs) == 12 * 6

    def pairs_of(sentences):
        return {(s.words[a], s.words[n]) for s in sentences for n, adjs in s.adjectives_of.items()
                for a in adjs}

    train = pairs_of(generate(3000, seed=0))
    held = pairs_of(generate(500, seed=1, held_out=True))
    assert not train & pairs and held <= pairs
    assert len(held) > 40  # the held-out sentences cover most held-out pairs


def test_held_out_sentences_give_every_noun_an_adjective_and_all_moods():
    sentences = generate(300, seed=2, held_out=True)
    assert all(adjs for s in sentences for adjs in s.adjectives_of.values())
    moods = {mood([s.words[a] for a in adjs]) for s in sentences
             for adjs in s.adjectives_of.values()}
    assert moods == {"gentle", "fierce", "mixed"}


def test_generation_is_seeded():
    assert generate(20, seed=3) == generate(20, seed=3)
    assert generate(20, seed=3) != generate(20, seed=4)


def test_label_finds_the_adjectives_before_each_noun():
    for s in generate(100, seed=7):
        assert label(s.words) == s.adjectives_of
    assert label(EXAMPLE.split()) == {3: (1, 2), 7: (6,)}


@pytest.mark.parametrize("n", [0, 1])
def test_generate_small_counts(n):
    assert len(generate(n, seed=0)) == n
