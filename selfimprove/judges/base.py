"""Judge contract pieces shared by the pairwise and pointwise judges."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel

from selfimprove.errors import ParseError


class GeneratedChoice(BaseModel):
    """A verdict the judge wrote out instead of one read from option log-probabilities."""

    choice: str


def two_way_probability(logprobs: dict[str, float], first: str, second: str) -> float:
    """P(first) renormalized over the two options."""
    a, b = logprobs[first], logprobs[second]
    top = max(a, b)
    ea, eb = math.exp(a - top), math.exp(b - top)
    return ea / (ea + eb)


#: options that are also ordinary English words ("a", "no"): as bare tokens they count only where
#: the next word could not follow the article or determiner ("A is", "A or B"; not "A tie")
_COMMON_WORDS = frozenset({"a", "i", "no"})
_AFTER_OPTION = (
    "is|was|wins|won|does|did|has|had|provides|gives|answers|seems|appears|looks|meets|follows"
    "|addresses|explains|gets|remains|contains|uses|beats|outperforms|because|since|should"
    "|would|must|or|and|nor|vs|versus|than|over"
)
_TIE = r"(?i:\b(?:tie|tied|neither|both|equally)\b)"
_TIE_VERDICT = r"(?i:(?:tie|tied|neither|both|equal|equally|none)\b)"  # after a marker
# words that label what follows as the verdict: "Answer: B", "Final verdict is B", "**Choice:** B".
# A bare "answer is" is left out: "the correct answer is A" talks about the question.
_MARKER = (
    r"(?i:\b(?:(?:final|my)\s+answer|verdict|choice|decision|winner|preference|selection"
    r"|(?:better|best|preferred)\s+response)\b\s*(?:\*\*|__)?\s*(?::|=|-|\bis\b|\bwould\s+be\b)"
    r"|\banswer\b\s*(?:\*\*|__)?\s*[:=])"
    r"""[\s*_"'(\[]*(?i:(?:response|option)\s+)?"""
)
_JSON_KEY = r"""["']?(?i:choice|answer|verdict|winner|preference|better)["']?\s*:\s*["']"""
# what may follow an option named after a marker: punctuation, the end, or a reason ("because")
_MARKER_END = r"(?=[^\w\s]|\s*$|\s+(?i:is|was|wins|because|since|as|for)\b)"
_PREFIX = r"(?i:\b(?:response|option|output|assistant|candidate)\s+)"


def _option_pattern(option: str, guarded: bool) -> str:
    """A standalone ``option``: a letter in uppercase only (so "a" the article never counts), a
    word in any case. ``guarded``: a common word followed by a word that shows it is an article
    or determiner ("A single", "no errors") does not count."""
    body = re.escape(option)
    if not (len(option) == 1 and option.isalpha()):
        body = f"(?i:{body})"
    pattern = rf"(?<![^\W_])(?<!['’&/-]){body}(?![^\W_])(?!['’&/-])"
    if guarded and option.lower() in _COMMON_WORDS:
        pattern += rf"(?!\s+(?!(?:{_AFTER_OPTION})\b)[a-z])"
    return pattern


def _leading_pattern(option: str) -> str:
    """The text opening with the bare option as its own sentence: ``B``, ``B.``, ``**B**``,
    ``(B)``; for a word option also ``Yes, it does``."""
    end = r"\s*$|[.!]?\s*\n|[.!](?:\s|$)"
    if not (len(option) == 1 and option.isalpha()):
        end += r"|,\s"
    return rf"""^[\s*_"'(\[]*{_option_pattern(option, False)}[*_"')\]]*(?:{end})"""


def _found(patterns: Sequence[str], text: str) -> bool:
    return any(re.search(p, text) for p in patterns)


def parse_choice(text: str, options: Sequence[str]) -> GeneratedChoice:
    """Read exactly one of ``options`` from a judge's written verdict, or raise :class:`ParseError`.

    A wrong reading trains on the wrong preference while a :class:`ParseError` costs only a
    retry or an abstain, so anything unclear raises. In order:

    1. an explicit verdict decides: ``{"choice": "B"}``, ``Answer: B``, ``Final verdict is
       (B)``, ``[[B]]``, or the text opening with the bare option (``B``, ``B.``, ``**B**``,
       ``Yes, ...``); an explicit tie (``Verdict: tie``, ``[[C]]``) or two options raise;
    2. otherwise a tie word anywhere ("tie", "neither", "both", "equally") raises (abstain);
    3. otherwise the options mentioned decide: ``Response B``, ``(A)``, ``**B**`` or a
       standalone option; exactly one of them, else :class:`ParseError`.

    Single-letter options count only in uppercase, so "It is a tie" and "I will choose a single
    answer" name no option, and a capital "A" followed by a word that an article takes ("A
    single", "A tie") is not one either. Word options (``Yes``/``No``) count in any case, but
    "no" before such a word ("no errors") is a determiner, not a verdict.
    """
    stripped = text.strip()
    free = {o: _option_pattern(o, False) for o in options}
    guarded = {o: _option_pattern(o, True) for o in options}
    explicit = {
        o: [
            rf"{_JSON_KEY}{free[o]}",
            rf"{_MARKER}{free[o]}{_MARKER_END}",
            rf"\[\[{free[o]}\]\]",
            _leading_pattern(o),
        ]
        for o in options
    }
    # [[C]] is MT-Bench's tie label
    explicit_tie = [rf"{_JSON_KEY}{_TIE_VERDICT}", rf"{_MARKER}{_TIE_VERDICT}", r"\[\[C\]\]"]
    if _found(explicit_tie, stripped):
        raise ParseError(f"the verdict is a tie or neither, not one of {list(options)}")
    named = [o for o in options if _found(explicit[o], stripped)]
    if not named:
        if re.search(_TIE, stripped):
            raise ParseError(f"the verdict mentions a tie, neither or both of {list(options)}")
        mentions = {
            o: [
                rf"{_PREFIX}{free[o]}",
                rf"\({free[o]}\)",
                rf"\*\*{free[o]}\*\*",
                guarded[o],
            ]
            for o in options
        }
        named = [o for o in options if _found(mentions[o], stripped)]
    if len(named) != 1:
        what = "none" if not named else "several (" + ", ".join(sorted(named)) + ")"
        raise ParseError(f"expected exactly one of {list(options)} in the verdict, found {what}")
    return GeneratedChoice(choice=named[0])


Choice = Literal["first", "second", "abstain"]
