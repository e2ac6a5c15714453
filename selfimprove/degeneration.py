"""Degeneration metrics: tell a policy that got better from one that learned to loop or go quiet.

Preference training on a small model can raise the judge's win rate while the answers decay:
they start repeating themselves, run into the token cap, or shrink to nothing. These metrics
are cheap, model-free and deterministic, so the evaluation gate, ``selfimprove eval`` and the
run report can put them next to the win rate.

Per response:

- :func:`repeats_itself` — the same sentence twice, or a large share of repeated word 4-grams;
- :func:`is_near_empty` — fewer than a handful of word-like tokens;
- :func:`says_nothing_beyond` — no word left once the words the prompt asked for are taken out.

Aggregate: :func:`truncated` (share of ``finish_reason == "length"``) and
:func:`degeneration_stats`.
"""

from __future__ import annotations

import re
import statistics
import unicodedata
from collections import Counter
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from selfimprove.checks import count_words

__all__ = [
    "MIN_SENTENCE_WORDS",
    "NGRAM_N",
    "REPEATED_NGRAM_SHARE",
    "DegenerationStats",
    "degeneration_stats",
    "is_near_empty",
    "repeated_ngram_share",
    "repeats_itself",
    "says_nothing_beyond",
    "truncated",
]

#: a repeated sentence counts only from this many words: "Thank you." twice is not a loop
MIN_SENTENCE_WORDS = 4
#: word n-gram length for the repetition share. Natural prose repeats pairs and triples all the
#: time ("of the", "it is a") but rarely four words in a row; a loop of a short phrase still
#: repeats every one of its 4-grams.
NGRAM_N = 4
#: a response repeats itself when at least this share of its 4-grams already occurred earlier in
#: it. Text made of one passage written k times scores about 1 - 1/k, so 0.3 means roughly a
#: third of the text restates earlier text word for word; ordinary answers score well under 0.1.
REPEATED_NGRAM_SHARE = 0.3

# Same sentence boundaries as ``checks.count_sentences``: ., ! or ? before whitespace, or a
# line break (so list items on their own lines are sentences too).
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+|\n+")
# Words for n-grams: runs of letters/digits, keeping inner apostrophes ("don't" is one word).
_WORD = re.compile(r"[^\W_]+(?:['\u2019][^\W_]+)*")


def _strip_punctuation(text: str) -> str:
    # Unicode-aware: "¿Qué?" and "«mot»" lose their marks too, not only ASCII punctuation.
    start, end = 0, len(text)
    while start < end and unicodedata.category(text[start]).startswith("P"):
        start += 1
    while end > start and unicodedata.category(text[end - 1]).startswith("P"):
        end -= 1
    return text[start:end]


def _normalise_sentence(sentence: str) -> str:
    return _strip_punctuation(" ".join(sentence.casefold().split()))


def _has_repeated_sentence(text: str) -> bool:
    seen: set[str] = set()
    for piece in _SENTENCE_BREAK.split(text):
        sentence = _normalise_sentence(piece)
        if len(sentence.split()) < MIN_SENTENCE_WORDS:
            continue
        if sentence in seen:
            return True
        seen.add(sentence)
    return False


def repeated_ngram_share(text: str, n: int = NGRAM_N) -> float:
    """Share of the word n-grams that repeat an earlier n-gram of the same text (0.0 if none).

    Words are casefolded runs of letters and digits, so punctuation and case do not hide a loop.
    """
    words = _WORD.findall(text.casefold())
    total = len(words) - n + 1
    if total <= 0:
        return 0.0
    counts = Counter(tuple(words[i : i + n]) for i in range(total))
    return (total - len(counts)) / total


def repeats_itself(text: str) -> bool:
    """True when a sentence of at least ``MIN_SENTENCE_WORDS`` words occurs twice (after
    casefolding, collapsing whitespace and stripping end punctuation), or when the share of
    repeated word 4-grams is at least ``REPEATED_NGRAM_SHARE``."""
    return _has_repeated_sentence(text) or repeated_ngram_share(text) >= REPEATED_NGRAM_SHARE


def is_near_empty(text: str, min_words: int = 3) -> bool:
    """Fewer than ``min_words`` whitespace-separated tokens that contain a letter or digit.

    "", "...", "OK." are near-empty. Text without spaces (e.g. Chinese) is one token here, the
    same way ``checks.count_words`` counts it.
    """
    return sum(1 for token in text.split() if any(c.isalnum() for c in token)) < min_words


def says_nothing_beyond(text: str, phrases: Sequence[str], min_words: int = 1) -> bool:
    """Fewer than ``min_words`` words (:func:`is_near_empty`) once every occurrence of
    ``phrases`` is taken out (case-insensitive, their end punctuation ignored).

    The phrases are the words a prompt told the answer to use, such as its required opening and
    closing words: "The end." follows "End with 'The end.'" to the letter and answers nothing,
    while "Paris. The end." does answer. Without phrases only an empty text says nothing.
    """
    for phrase in phrases:
        core = phrase.strip().rstrip(".!?")
        if core:
            text = re.sub(re.escape(core), " ", text, flags=re.IGNORECASE)
    return is_near_empty(text, min_words)


def truncated(finish_reasons: Sequence[str]) -> float:
    """Share of responses that hit the token cap (``finish_reason == "length"``); 0.0 if none."""
    if not finish_reasons:
        return 0.0
    return sum(1 for reason in finish_reasons if reason == "length") / len(finish_reasons)


class DegenerationStats(BaseModel):
    """Degeneration metrics of a set of responses. Rates are shares in [0, 1]."""

    model_config = ConfigDict(frozen=True)
    n: int = Field(ge=0, description="number of responses")
    repetition_rate: float = Field(description="share for which repeats_itself holds")
    truncation_rate: float | None = Field(
        description="share stopped by the token cap; None when finish reasons are unknown"
    )
    near_empty_rate: float = Field(description="share for which is_near_empty holds")
    mean_words: float
    median_words: float


def degeneration_stats(
    responses: Sequence[str],
    finish_reasons: Sequence[str] | None = None,
    *,
    min_words: int = 3,
) -> DegenerationStats:
    """Aggregate the per-response metrics. Word counts are ``checks.count_words``.

    No responses give n=0 and every rate and word statistic 0.0 (``truncation_rate`` stays None
    without finish reasons), so a report can print them without special cases. ``finish_reasons``,
    when given, must align with ``responses``.
    """
    if finish_reasons is not None and len(finish_reasons) != len(responses):
        raise ValueError(
            f"{len(finish_reasons)} finish reasons for {len(responses)} responses"
        )
    n = len(responses)
    truncation_rate = None if finish_reasons is None else truncated(finish_reasons)
    if n == 0:
        return DegenerationStats(
            n=0, repetition_rate=0.0, truncation_rate=truncation_rate, near_empty_rate=0.0,
            mean_words=0.0, median_words=0.0,
        )
    words = [count_words(text) for text in responses]
    return DegenerationStats(
        n=n,
        repetition_rate=sum(repeats_itself(text) for text in responses) / n,
        truncation_rate=truncation_rate,
        near_empty_rate=sum(is_near_empty(text, min_words) for text in responses) / n,
        mean_words=statistics.fmean(words),
        median_words=float(statistics.median(words)),
    )
