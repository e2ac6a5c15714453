"""Degeneration metrics: repetition, near-empty and truncated responses, and their aggregate."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from selfimprove.checks import count_words
from selfimprove.degeneration import (
    MIN_SENTENCE_WORDS,
    NGRAM_N,
    REPEATED_NGRAM_SHARE,
    DegenerationStats,
    degeneration_stats,
    is_near_empty,
    repeated_ngram_share,
    repeats_itself,
    truncated,
)

# A genuine answer of 89 words that reuses common phrases ("of the" three times, "some of the"
# twice) without repeating any four words in a row or any sentence.
WATER_CYCLE = (
    "The water cycle describes how water moves through the environment. Heat from the sun "
    "evaporates water from the surface of the oceans, and the vapour rises into the "
    "atmosphere. As it cools, it condenses into clouds made of tiny droplets. When the "
    "droplets grow heavy enough, they fall as rain or snow. Some of the water soaks into the "
    "ground, some of the rest runs off into rivers, and most of it eventually returns to the "
    "sea to begin the cycle again. Plants also release moisture through their leaves."
)
REPEATED_SENTENCE = "When the droplets grow heavy enough, they fall as rain or snow."


def test_the_normal_paragraph_is_long_and_not_repetitive():
    assert 60 <= count_words(WATER_CYCLE) <= 90
    assert WATER_CYCLE.count("of the") == 3
    assert repeated_ngram_share(WATER_CYCLE) == 0.0
    assert not repeats_itself(WATER_CYCLE)


def test_a_repeated_sentence_counts_even_when_few_ngrams_repeat():
    text = WATER_CYCLE + " " + REPEATED_SENTENCE.upper().replace(".", "!")
    # The n-gram share alone would let it pass: it is the sentence rule that catches it.
    assert 0 < repeated_ngram_share(text) < REPEATED_NGRAM_SHARE
    assert repeats_itself(text)


def test_the_sentence_rule_normalises_case_whitespace_and_end_punctuation():
    assert repeats_itself('The answer is forty two. "The   ANSWER is forty two!"')
    assert not repeats_itself("The answer is forty two. Well, the answer is forty two.")
    assert repeats_itself("- Boil the water first\n- Add the pasta\n- boil the water first.")


def test_short_repeated_sentences_do_not_count():
    assert MIN_SENTENCE_WORDS == 4
    assert not repeats_itself("Thank you. Thank you.")
    assert not repeats_itself("Yes it is. No. Yes it is.")


def test_a_short_sentence_looping_counts_through_the_ngram_share():
    text = "Practice every day. Practice every day. Practice every day."
    # 9 words, 6 four-grams, 3 distinct: half of them repeat an earlier one.
    assert repeated_ngram_share(text) == pytest.approx(0.5)
    assert repeats_itself(text)


def test_a_phrase_loop_counts():
    text = "and then the cat sat on the mat " * 3
    # 24 words, 21 four-grams, 8 distinct (the loop has period 8).
    assert repeated_ngram_share(text) == pytest.approx(13 / 21)
    assert repeats_itself(text.strip())


def test_the_ngram_threshold_is_inclusive():
    assert REPEATED_NGRAM_SHARE == 0.3
    # 13 words, 10 four-grams; the tail repeats 2 of them ("a b c d", "b c d e").
    assert repeated_ngram_share("a b c d e f g h a b c d e") == pytest.approx(0.2)
    assert not repeats_itself("a b c d e f g h a b c d e")
    # 13 words, 10 four-grams, 3 repeats: exactly at the threshold.
    assert repeated_ngram_share("a b c d e f g a b c d e f") == pytest.approx(0.3)
    assert repeats_itself("a b c d e f g a b c d e f")


def test_the_ngram_share_ignores_case_and_punctuation_but_keeps_apostrophes():
    assert NGRAM_N == 4
    assert repeated_ngram_share("Go on, then: go ON then; GO on then!") == pytest.approx(0.5)
    # 8 words, 5 four-grams, 3 distinct.
    assert repeated_ngram_share("don't stop now don't stop now don't stop") == pytest.approx(0.4)
    # "don't" is one word, not "don" and "t": 5 words, 2 distinct four-grams, no repeat.
    assert repeated_ngram_share("don't stop don't stop don't") == 0.0
    assert repeated_ngram_share("don\u2019t stop don\u2019t stop don\u2019t") == 0.0
    assert repeated_ngram_share("") == 0.0
    assert repeated_ngram_share("one two three") == 0.0


@pytest.mark.parametrize(
    "text",
    [
        "Straße ist lang und breit. STRASSE IST LANG UND BREIT!",
        "¿Qué hora es ahora mismo? qué hora es ahora mismo",
        "Кошка сидит на ковре. Кошка сидит на ковре.",
        "Η γάτα κάθεται στο χαλί. η γάτα κάθεται στο χαλί",
    ],
)
def test_unicode_repetition_counts(text):
    assert repeats_itself(text)


@pytest.mark.parametrize(
    "text",
    [
        "Die Straße ist lang. Der Weg ist kurz, aber steil und schön.",
        "Кошка сидит на ковре, а собака спит у двери.",
        "猫はマットの上に座っています。犬はドアのそばで寝ています。",
        "",
    ],
)
def test_unicode_and_empty_non_repetition(text):
    assert not repeats_itself(text)


@pytest.mark.parametrize(
    ("text", "near_empty"),
    [
        ("", True),
        ("   \n\t ", True),
        ("...", True),
        ("OK.", True),
        ("- * -- !!", True),
        ("Yes, I agree.", False),
        ("1 2 3", False),
        ("Ça va bien", False),
        ("... ok ... fine ...", True),  # two word-like tokens
    ],
)
def test_is_near_empty(text, near_empty):
    assert is_near_empty(text) is near_empty


def test_is_near_empty_min_words():
    assert is_near_empty("Yes, I agree.", min_words=4)
    assert not is_near_empty("OK.", min_words=1)
    assert is_near_empty("...", min_words=1)
    assert not is_near_empty("", min_words=0)


def test_truncated_rate():
    assert truncated([]) == 0.0
    assert truncated(["stop", "stop"]) == 0.0
    assert truncated(["stop", "length", "length", "stop"]) == pytest.approx(0.5)
    assert truncated(("length",)) == 1.0
    # Only the token cap counts: other reasons (a stop string, an aborted request) do not.
    assert truncated(["stop", "length", "abort"]) == pytest.approx(1 / 3)


def test_stats_of_no_responses():
    stats = degeneration_stats([])
    assert stats == DegenerationStats(
        n=0, repetition_rate=0.0, truncation_rate=None, near_empty_rate=0.0,
        mean_words=0.0, median_words=0.0,
    )
    assert degeneration_stats([], []).truncation_rate == 0.0


def test_stats_without_finish_reasons():
    responses = [WATER_CYCLE, "Practice every day. " * 3, "OK.", "", "Yes, I agree with you."]
    stats = degeneration_stats(responses)
    assert stats.n == 5
    assert stats.repetition_rate == pytest.approx(1 / 5)
    assert stats.truncation_rate is None
    assert stats.near_empty_rate == pytest.approx(2 / 5)
    words = [count_words(r) for r in responses]
    assert words == [89, 9, 1, 0, 5]
    assert stats.mean_words == pytest.approx(104 / 5)
    assert stats.median_words == 5.0


def test_stats_with_finish_reasons_and_min_words():
    responses = ["one two three four", "a - b", "x y", "and then the cat sat on the mat " * 4]
    stats = degeneration_stats(responses, ["stop", "stop", "length", "length"], min_words=4)
    assert stats.truncation_rate == pytest.approx(0.5)
    assert stats.repetition_rate == pytest.approx(0.25)
    # "a - b" is 3 words for count_words but 2 word-like tokens: near-empty either way here.
    assert stats.near_empty_rate == pytest.approx(0.5)
    assert stats.mean_words == pytest.approx((4 + 3 + 2 + 32) / 4)
    assert stats.median_words == pytest.approx(3.5)


def test_stats_need_one_finish_reason_per_response():
    with pytest.raises(ValueError, match="1 finish reasons for 2 responses"):
        degeneration_stats(["a", "b"], ["stop"])


def test_stats_are_frozen_and_serialise():
    stats = degeneration_stats(["hello there friend"], ["stop"])
    with pytest.raises(ValidationError):
        stats.n = 3
    assert DegenerationStats.model_validate_json(stats.model_dump_json()) == stats


def test_says_nothing_beyond_the_required_words():
    from selfimprove.degeneration import says_nothing_beyond

    assert says_nothing_beyond("The end.", ["The end."])
    assert says_nothing_beyond('"Let me explain."', ["Let me explain"])
    both = ["Let me explain", "That is all."]
    assert says_nothing_beyond("LET ME EXPLAIN: ... That is all!", both)
    # one word of its own is an answer ("Paris." to a capital-city question)
    assert not says_nothing_beyond("Paris. The end.", ["The end."])
    assert not says_nothing_beyond("Let me explain: bees make honey. That is all.", both)
    assert not says_nothing_beyond("Bees make honey.", [])
    assert says_nothing_beyond("", [])
