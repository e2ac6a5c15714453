"""The executable check vocabulary of a constitution, and running it on a response.

Checks are data (a fixed set of kinds), never code. Regular expressions use the ``regex``
package with a time limit, so a pathological pattern fails its check instead of hanging the loop.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import unicodedata
from collections.abc import Iterable
from functools import lru_cache
from typing import Annotated, Any, Literal, Protocol, get_args

import regex
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from selfimprove.pydantic_errors import ID_PATTERN
from selfimprove.types import CheckResult, passes

__all__ = [
    "CHECK_KINDS",
    "REGEX_TIMEOUT_S",
    "BulletCount",
    "Check",
    "EndsWith",
    "ForbidPhrases",
    "ForbidRegex",
    "IncludeWords",
    "JsonObject",
    "Lowercase",
    "MaxChars",
    "MaxSentences",
    "MaxWords",
    "MinWords",
    "NoCommas",
    "ParagraphCount",
    "Quoted",
    "RequireRegex",
    "StartsWith",
    "count_bullets",
    "count_paragraphs",
    "count_sentences",
    "count_words",
    "passes",
    "required_phrases",
    "run_check",
    "run_checks",
]

#: seconds one regex search may take before its check counts as failed
REGEX_TIMEOUT_S = 0.5

CheckId = Annotated[
    str,
    Field(
        pattern=ID_PATTERN,
        description=(
            "unique within the constitution's checks (ASCII letters, digits, '_', '-', '.'); "
            "optional: by default the kind, plus '-' and 8 hex digits of a hash of the "
            "parameters when the kind has any (e.g. 'max_words-5b856e40' for value 80)"
        ),
    ),
]

# Fields that say how a check is reported, not what it checks: left out of a derived id, so the
# same check written with another `hard` or description still collides as a duplicate.
_NOT_IDENTITY = frozenset({"id", "kind", "hard", "description"})


#: the JSON schema's word for "not blank", so editors flag what validation refuses
_NOT_BLANK_SCHEMA: dict[str, Any] = {"pattern": r"\S"}
#: an entry of ``words`` or ``phrases``
_Phrase = Annotated[str, Field(strict=True, min_length=1, json_schema_extra=_NOT_BLANK_SCHEMA)]


def _clean_doc(schema: dict[str, Any], cls: type) -> None:
    # The class docstring is the user-facing documentation of a kind: publish it in the JSON
    # schema without the source's indentation.
    if cls.__doc__:
        schema["description"] = inspect.cleandoc(cls.__doc__)


class _CheckBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra=_clean_doc)
    # Typed `str` (never None once validated): `_fill_id` derives it when the author omits it.
    # The None default is never validated, so an explicit `id: null` is still rejected.
    id: CheckId = Field(default=None)
    hard: bool = Field(
        default=True,
        strict=True,
        description="a failed hard check makes the response fail; a soft one is only reported",
    )
    description: str | None = None

    @model_validator(mode="after")
    def _fill_id(self) -> _CheckBase:
        if self.id is None:
            # Frozen model: write the field directly. It stays out of model_fields_set, so
            # dumping with exclude_unset leaves it out and re-validating derives the same id.
            self.__dict__["id"] = self.derived_id()
        return self

    def derived_id(self) -> str:
        """The id this check gets when none is written: stable across runs and processes.

        ``kind`` alone for a kind without parameters (``lowercase``); otherwise ``kind-`` plus
        the first 8 hex digits of the sha256 of the parameters as canonical JSON (defaults
        included, ``hard`` and ``description`` excluded).
        """
        kind = getattr(self, "kind", type(self).__name__)
        params = self.model_dump(mode="json", exclude=set(_NOT_IDENTITY))
        if not params:
            return kind
        canonical = json.dumps(params, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return f"{kind}-{hashlib.sha256(canonical.encode('utf-8')).hexdigest()[:8]}"


class _Limit(_CheckBase):
    value: int = Field(strict=True, ge=0, description="the limit (inclusive)")


class MaxWords(_Limit):
    """At most ``value`` whitespace-separated words."""

    kind: Literal["max_words"]


class MinWords(_Limit):
    """At least ``value`` whitespace-separated words."""

    kind: Literal["min_words"]


class MaxChars(_Limit):
    """At most ``value`` characters."""

    kind: Literal["max_chars"]


class MaxSentences(_Limit):
    """At most ``value`` sentences (see :func:`count_sentences`)."""

    kind: Literal["max_sentences"]


class _RegexCheck(_CheckBase):
    pattern: str = Field(min_length=1, description="a regular expression (Python/regex syntax)")
    ignore_case: bool = Field(default=False, strict=True)
    multiline: bool = Field(default=False, strict=True, description="'^' and '$' match at lines")
    dotall: bool = Field(default=False, strict=True, description="'.' also matches newlines")

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, pattern: str) -> str:
        try:
            _compile(pattern, 0)
        except regex.error as exc:
            raise ValueError(f"invalid regular expression: {exc}") from None
        return pattern

    def compiled(self) -> regex.Pattern:
        flags = (
            (regex.IGNORECASE if self.ignore_case else 0)
            | (regex.MULTILINE if self.multiline else 0)
            | (regex.DOTALL if self.dotall else 0)
        )
        return _compile(self.pattern, flags)


class ForbidRegex(_RegexCheck):
    """Fails when ``pattern`` matches anywhere in the response."""

    kind: Literal["forbid_regex"]


class RequireRegex(_RegexCheck):
    """Fails unless ``pattern`` matches somewhere in the response."""

    kind: Literal["require_regex"]


class ForbidPhrases(_CheckBase):
    """Fails when any phrase occurs (case-insensitive, whitespace and apostrophes normalised)."""

    kind: Literal["forbid_phrases"]
    phrases: list[_Phrase] = Field(min_length=1)

    @field_validator("phrases")
    @classmethod
    def _phrases_not_blank(cls, phrases: list[str]) -> list[str]:
        # a blank phrase would be found in every response (after normalising, even in "")
        return _each_not_blank(phrases, "phrases")


# --- IFEval-style verifiable instructions ----------------------------------------------------


class Lowercase(_CheckBase):
    """No uppercase (or titlecase) letters, in any script: "É" and "Σ" fail; digits,
    punctuation and symbols are fine.

    Example: ``{kind: lowercase}`` passes "ok, 3 things: café!" and fails "Café".
    """

    kind: Literal["lowercase"]


def _each_not_blank(items: list[str], name: str) -> list[str]:
    for i, item in enumerate(items):
        if not item.translate(_ZERO_WIDTH).strip():
            raise ValueError(f"{name}[{i}] must contain a non-whitespace character")
    return items


def _not_blank(value: str) -> str:
    if not value.translate(_ZERO_WIDTH).strip():
        raise ValueError("must contain a non-whitespace character")
    return value


class _TextEdge(_CheckBase):
    value: str = Field(strict=True, min_length=1, description="the text to look for",
                       json_schema_extra=_NOT_BLANK_SCHEMA)

    _check_value = field_validator("value")(_not_blank)


class StartsWith(_TextEdge):
    """The response starts with ``value`` (case-insensitive, curly apostrophes and runs of
    whitespace normalised). Leading whitespace is ignored, and so are leading quote marks and
    markdown emphasis (``"``, ``“``, ``'``, ``‘``, ``«``, ``*``, ``_``) unless ``value`` starts
    with them.
    ``value`` must end on a word boundary: "Yes" does not match "Yesterday".

    Example: ``{kind: starts_with, value: "Dear customer"}`` passes
    ``**Dear Customer**, thanks...`` and fails ``Hi, dear customer``.
    """

    kind: Literal["starts_with"]


class EndsWith(_TextEdge):
    """The response ends with ``value`` (case-insensitive, curly apostrophes and runs of
    whitespace normalised), ignoring trailing whitespace, and trailing quote marks and markdown
    emphasis (``"``, ``”``, ``»``, ``*``, ``_``; not ``'``, a possessive's) unless ``value``
    ends with them.
    If ``value`` ends with punctuation, the response must end with exactly that; if it does
    not, one ``.``, ``!`` or ``?`` after it is allowed. ``value`` must start on a word
    boundary: "stay safe" does not match "outstay safe".

    Example: ``{kind: ends_with, value: "stay safe"}`` passes ``... Stay safe.``,
    ``**Stay safe!**`` and ``... stay safe``; ``{kind: ends_with, value: "stay safe."}``
    fails ``... stay safe!``.
    """

    kind: Literal["ends_with"]


class IncludeWords(_CheckBase):
    r"""Every word in ``words`` appears as a whole word, case-insensitively (Unicode-aware: "é"
    is a letter, so "café" is not found in "cafés"; composed and decomposed accents are
    equal). An entry of several words matches them with any whitespace between.

    Example: ``{kind: include_words, words: [refund, "order number"]}`` passes "Your Refund
    for order\nnumber 5" and fails "refunds are possible" (reports both as missing).
    """

    kind: Literal["include_words"]
    words: list[_Phrase] = Field(min_length=1)

    @field_validator("words")
    @classmethod
    def _words_not_blank(cls, words: list[str]) -> list[str]:
        return _each_not_blank(words, "words")


def _count_range_schema(schema: dict[str, Any], cls: type) -> None:
    _clean_doc(schema, cls)
    schema["anyOf"] = [{"required": ["min"]}, {"required": ["max"]}]  # as _some_bound


class _CountRange(_CheckBase):
    model_config = ConfigDict(json_schema_extra=_count_range_schema)
    min: int | None = Field(default=None, strict=True, ge=0, description="at least (inclusive)")
    max: int | None = Field(default=None, strict=True, ge=0, description="at most (inclusive)")

    @field_validator("max")
    @classmethod
    def _max_not_below_min(cls, maximum: int | None, info: ValidationInfo) -> int | None:
        minimum = info.data.get("min")
        if maximum is not None and minimum is not None and minimum > maximum:
            raise ValueError(f"max ({maximum}) must be >= min ({minimum})")
        return maximum

    @model_validator(mode="after")
    def _some_bound(self) -> _CountRange:
        if self.min is None and self.max is None:
            raise ValueError(f"{getattr(self, 'kind', 'count')} needs 'min', 'max' or both")
        return self


class BulletCount(_CountRange):
    r"""The number of bullet lines is within ``min``..``max`` (each optional, at least one).

    A bullet line starts, after optional indentation, with ``-``, ``*`` or ``•`` followed by
    whitespace, or a number with ``.`` or ``)`` (``1.``, ``2)``) followed by whitespace, and
    has text after the marker. Nested (indented) bullets count too: the instruction "use
    exactly 3 bullet points" is about what the reader sees as bullets, and a sub-bullet is
    one. Horizontal rules (``---``, ``* * *``), ``*emphasis*`` and lines inside a fenced code
    block (```` ``` ````) are not bullets.

    Example: ``{kind: bullet_count, min: 3, max: 3}`` passes "- a\n- b\n  - b1" (3 bullets).
    """

    kind: Literal["bullet_count"]


class NoCommas(_CheckBase):
    """No commas: neither ``,`` nor the fullwidth ``，``.

    Example: ``{kind: no_commas}`` passes "Yes. Then go." and fails "Yes, then go."
    """

    kind: Literal["no_commas"]


class ParagraphCount(_CountRange):
    r"""The number of paragraphs is within ``min``..``max`` (each optional, at least one).

    Paragraphs are blocks of lines separated by one or more blank lines (a line of only
    spaces or tabs is blank); leading and trailing blank lines do not count, and an empty
    response has 0 paragraphs.

    Example: ``{kind: paragraph_count, min: 2, max: 2}`` passes "One.\n  \nTwo." and fails
    "One.\nTwo." (a single paragraph of two lines).
    """

    kind: Literal["paragraph_count"]


class JsonObject(_CheckBase):
    r"""The response is exactly one JSON object (``{...}``), optionally inside a markdown code
    fence (```` ```json ```` or ```` ``` ````) with whitespace around it. A JSON array or
    scalar fails, as does any text outside the object or the fence, or ``NaN``/``Infinity``.

    Example: ``{kind: json_object}`` passes ``{"answer": 4}`` and
    ```` ```json\n{"answer": 4}\n``` ````; it fails ``[4]`` and ``The answer: {"answer": 4}``.
    """

    kind: Literal["json_object"]


class Quoted(_CheckBase):
    """The whole response (leading and trailing whitespace ignored) is wrapped in double
    quotes: it starts with ``"`` or ``“`` and ends with ``"`` or ``”``.

    Example: ``{kind: quoted}`` passes ``“Be kind.”`` and fails ``'Be kind.'``.
    """

    kind: Literal["quoted"]


Check = Annotated[
    MaxWords
    | MinWords
    | MaxChars
    | MaxSentences
    | ForbidRegex
    | RequireRegex
    | ForbidPhrases
    | Lowercase
    | StartsWith
    | EndsWith
    | IncludeWords
    | BulletCount
    | NoCommas
    | ParagraphCount
    | JsonObject
    | Quoted,
    Field(discriminator="kind"),
]

#: every check kind's name, sorted (the ``kind`` of each member of :data:`Check`)
CHECK_KINDS: tuple[str, ...] = tuple(sorted(
    get_args(model.model_fields["kind"].annotation)[0] for model in get_args(get_args(Check)[0])
))


@lru_cache(maxsize=512)
def _compile(pattern: str, flags: int) -> regex.Pattern:
    return regex.compile(pattern, flags)


def count_words(text: str) -> int:
    """Whitespace-separated tokens."""
    return len(text.split())


_SENTENCE_BREAK = regex.compile(r"(?<=[.!?])\s+|\n+")
_LIST_MARKER = regex.compile(r"^\s*(?:\d{1,3}[.)]|[-*\u2022])\s+", regex.MULTILINE)
_WORDLIKE = regex.compile(r"\w")


def count_sentences(text: str) -> int:
    """Pieces ending in ``.``, ``!`` or ``?`` before whitespace, or separated by a line break.

    Decimals ("3.14") do not split; list items on their own lines count as one sentence each
    (their "1." or "-" markers are not sentences).
    """
    pieces = _SENTENCE_BREAK.split(_LIST_MARKER.sub("", text).strip())
    return sum(1 for piece in pieces if _WORDLIKE.search(piece))


def _normalise(text: str) -> str:
    # Curly apostrophes and line-wrapped phrases should not let a forbidden phrase slip through.
    # NFC: a decomposed accent ("cafe\u0301") must not let "café" through either.
    text = unicodedata.normalize("NFC", text)
    return " ".join(text.replace("\u2019", "'").replace("\u2018", "'").casefold().split())


def _snippet(text: str, limit: int = 40) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- helpers of the IFEval-style checks ------------------------------------------------------

_UPPER = regex.compile(r"[\p{Lu}\p{Lt}]")
_COMMA = regex.compile(r"[,\uff0c]")
# Quote marks and markdown emphasis a model likes to put before its first word.
_LEAD_DECORATION = regex.compile(r"^[\"'\u201c\u2018\u00ab*_]+\s*")
# ... and after its last (closing quotes are folded to ' and " first).
# Not the apostrophe: "the students'" is a possessive, not a closing quote.
_TRAIL_DECORATION = regex.compile(r"\s*[\"\u201d\u00bb*_]+$")
# Invisible characters that must not decide a match at the text's edges.
_ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff"))
_END_PUNCT = ".!?"
_FENCE = regex.compile(r" {0,3}(`{3,}|~{3,})")
_BULLET = regex.compile(r"[ \t]*(?:[-*][ \t]+|\u2022[ \t]*|[0-9]{1,9}[.)][ \t]+)\S")
_OPEN_QUOTES = ('"', "\u201c")
_CLOSE_QUOTES = ('"', "\u201d")


def _fold(text: str) -> str:
    # Case-insensitive; a curly apostrophe or a line break inside the text must not make
    # "I'm here" differ from "I\u2019m\nhere"; NFC so composed and decomposed accents agree.
    text = unicodedata.normalize("NFC", text).replace("\u2019", "'").replace("\u2018", "'")
    text = text.translate(_ZERO_WIDTH)
    return " ".join(text.casefold().split())


def _is_word_char(char: str) -> bool:
    return _WORDLIKE.match(char) is not None  # the same notion of a word as regex's \w


def _starts_with(text: str, value: str) -> bool:
    want = _fold(value)
    plain = _fold(text)
    # Try the text as written and without its leading decoration, so a value that itself
    # starts with a quote or "**" still matches.
    for candidate in (plain, _LEAD_DECORATION.sub("", plain)):
        if candidate.startswith(want):
            after = candidate[len(want) : len(want) + 1]
            # "Yes" must not match "Yesterday": the value has to end on a word boundary.
            if not (after and _is_word_char(after) and _is_word_char(want[-1])):
                return True
    return False


def _ends_with(text: str, value: str) -> bool:
    want = _fold(value)
    plain = _fold(text)
    # As written and without trailing quotes or emphasis ("**Stay safe.**"), as _starts_with;
    # "stay safe" also matches "stay safe." and "**stay safe**." (one mark only).
    candidates = [plain, _TRAIL_DECORATION.sub("", plain)]
    if not unicodedata.category(want[-1]).startswith("P"):
        for form in list(candidates):
            if form[-1:] in _END_PUNCT:
                candidates += [form[:-1], _TRAIL_DECORATION.sub("", form[:-1])]
    for candidate in dict.fromkeys(candidates):
        if candidate.endswith(want):
            before = candidate[-len(want) - 1 : -len(want)]
            if not (before and _is_word_char(before) and _is_word_char(want[0])):
                return True
    return False


@lru_cache(maxsize=512)
def _word_pattern(word: str) -> regex.Pattern:
    # Lookarounds rather than \b, so words that start or end with a non-letter ("C++", "$5")
    # still need a non-word character (or the text's edge) on both sides.
    body = r"\s+".join(regex.escape(part) for part in word.split())
    return regex.compile(rf"(?<!\w){body}(?!\w)", regex.IGNORECASE | regex.FULLCASE)


def count_bullets(text: str) -> int:
    """Lines starting (after optional indentation) with ``-``, ``*``, ``•``, ``N.`` or ``N)``
    and then text; nested bullets count, horizontal rules and lines inside a fenced code block
    do not (see :class:`BulletCount`)."""
    return sum(1 for line in _outside_code_fences(text.splitlines()) if _is_bullet(line))


def _outside_code_fences(lines: list[str]) -> list[str]:
    """``lines`` without fenced code blocks (CommonMark: a run of 3+ backticks or tildes,
    indented at most 3 spaces, closed by a run of the same character at least as long; an
    unclosed fence runs to the end). A ``- x`` line of code or YAML is not a bullet to a reader.
    """
    kept: list[str] = []
    fence: str | None = None
    for line in lines:
        match = _FENCE.match(line)
        if fence is None:
            if match:
                fence = match.group(1)
            else:
                kept.append(line)
        elif match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence) \
                and not line.strip().lstrip(fence[0]):
            fence = None
    return kept


def _is_bullet(line: str) -> bool:
    # "---", "* * *", "___" are thematic breaks, which start like a bullet but are not one.
    # Tested without a regex: one with a repeated backreference took seconds on "- - - ... x".
    marks = line.replace(" ", "").replace("\t", "")
    if len(marks) >= 3 and marks[0] in "-*_" and marks == marks[0] * len(marks):
        return False
    return _BULLET.match(line) is not None


def count_paragraphs(text: str) -> int:
    """Blocks of non-blank lines separated by blank (or whitespace-only) lines."""
    count, in_paragraph = 0, False
    for line in text.splitlines():
        blank = not line.strip()
        if not blank and not in_paragraph:
            count += 1
        in_paragraph = not blank
    return count


def _plural(n: int, unit: str) -> str:
    return f"{n} {unit}" + ("" if n == 1 else "s")


def _in_range(n: int, low: int | None, high: int | None, unit: str) -> tuple[bool, str]:
    counted = _plural(n, unit)
    if low is not None and n < low:
        return False, f"{counted} < min {low}"
    if high is not None and n > high:
        return False, f"{counted} > max {high}"
    if low is not None and high is not None:
        return True, f"{counted} in {low}..{high}"
    return True, f"{counted} >= {low}" if high is None else f"{counted} <= {high}"


def _unfence(body: str) -> str | None:
    """The inside of a ```` ```json ```` or ```` ``` ```` fence spanning all of ``body``."""
    # Plain string slicing: a regex with a lazy body before a closing fence backtracks
    # quadratically on long runs of whitespace, and this runs on arbitrary model output.
    if len(body) < 6 or not (body.startswith("```") and body.endswith("```")):
        return None
    inner = body[3:-3]
    tag, newline, rest = inner.partition("\n")
    return rest if newline and tag.strip().casefold() in ("", "json") else inner


def _json_object(text: str) -> tuple[bool, str]:
    body = text.strip()
    inside = _unfence(body)
    if inside is not None:
        body = inside

    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")  # Python's json accepts NaN and Infinity

    def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:  # json keeps the last silently; a reader may take the first
                raise ValueError(f"the key {key!r} is given twice in one object")
            seen.add(key)
        return dict(pairs)

    try:
        value = json.loads(body, parse_constant=no_constants, object_pairs_hook=unique_keys)
    except RecursionError:
        return False, "not valid JSON: nested too deeply"
    except ValueError as exc:  # JSONDecodeError included
        return False, f"not valid JSON: {exc}"
    if not isinstance(value, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
            type(value), "a number"
        )
        return False, f"JSON is {kind}, not an object"
    where = " in a code fence" if inside is not None else ""
    return True, f"a JSON object with {_plural(len(value), 'key')}{where}"


def run_check(check: Check, text: str, *, regex_timeout: float = REGEX_TIMEOUT_S) -> CheckResult:
    """Run one check on ``text``. Never raises for any text, never runs past the regex limit."""
    passed, detail = _evaluate(check, text, regex_timeout)
    return CheckResult(
        check_id=check.id, kind=check.kind, passed=passed, hard=check.hard, detail=detail
    )


def _at_most(n: int, limit: int, unit: str) -> tuple[bool, str]:
    return (True, f"{n} {unit} <= {limit}") if n <= limit else (False, f"{n} {unit} > {limit}")


def _evaluate(check: Check, text: str, timeout: float) -> tuple[bool, str]:
    match check:
        case MaxWords(value=limit):
            return _at_most(count_words(text), limit, "words")
        case MinWords(value=limit):
            n = count_words(text)
            if n >= limit:
                return True, f"{n} words >= {limit}"
            return False, f"{n} words < {limit}"
        case MaxChars(value=limit):
            # composed first: "é" is one character however it was typed
            return _at_most(len(unicodedata.normalize("NFC", text)), limit, "chars")
        case MaxSentences(value=limit):
            return _at_most(count_sentences(text), limit, "sentences")
        case ForbidRegex() | RequireRegex():
            try:
                found = check.compiled().search(text, timeout=timeout)
            except TimeoutError:
                return False, "regex timed out"
            if isinstance(check, ForbidRegex):
                if found is None:
                    return True, "no match"
                return False, f"matched '{_snippet(found.group())}' at char {found.start()}"
            if found is None:
                return False, f"no match for /{check.pattern}/"
            return True, f"matched '{_snippet(found.group())}' at char {found.start()}"
        case ForbidPhrases(phrases=phrases):
            haystack = _normalise(text)
            hits = [p for p in phrases if _normalise(p) in haystack]
            if not hits:
                return True, "no forbidden phrase"
            return False, "contains " + ", ".join(f"'{p}'" for p in hits)
        case Lowercase():
            upper = _UPPER.search(text)
            if upper is None:
                return True, "no uppercase letters"
            return False, f"uppercase '{upper.group()}' at char {upper.start()}"
        case StartsWith(value=value):
            if _starts_with(text, value):
                return True, f"starts with '{_snippet(value)}'"
            return False, f"starts with '{_snippet(text.lstrip(), 20)}', not '{_snippet(value)}'"
        case EndsWith(value=value):
            if _ends_with(text, value):
                return True, f"ends with '{_snippet(value)}'"
            tail = " ".join(text.split())[-20:]
            return False, f"ends with '{tail}', not '{_snippet(value)}'"
        case IncludeWords(words=words):
            haystack = unicodedata.normalize("NFC", text)
            missing = [
                w for w in words
                if _word_pattern(unicodedata.normalize("NFC", w)).search(haystack) is None
            ]
            if not missing:
                return True, f"all {_plural(len(words), 'word')} present"
            return False, "missing " + ", ".join(f"'{w}'" for w in missing)
        case BulletCount(min=low, max=high):
            return _in_range(count_bullets(text), low, high, "bullet")
        case NoCommas():
            commas = [m.start() for m in _COMMA.finditer(text)]
            if not commas:
                return True, "no commas"
            return False, f"{_plural(len(commas), 'comma')} (first at char {commas[0]})"
        case ParagraphCount(min=low, max=high):
            return _in_range(count_paragraphs(text), low, high, "paragraph")
        case JsonObject():
            return _json_object(text)
        case Quoted():
            body = text.strip()
            if len(body) >= 2 and body.startswith(_OPEN_QUOTES) and body.endswith(_CLOSE_QUOTES):
                return True, "wrapped in double quotes"
            if not body:
                return False, "empty response"
            if len(body) == 1:
                return False, f"only '{body}': not text wrapped in double quotes"
            return False, f"starts with '{body[0]}' and ends with '{body[-1]}', not double quotes"
    raise TypeError(f"unknown check {type(check).__name__}")  # unreachable for validated data


class HasChecks(Protocol):
    """Anything that carries checks (a constitution)."""

    @property
    def checks(self) -> Iterable[Check]: ...


def run_checks(
    checks: Iterable[Check] | HasChecks, text: str, *, regex_timeout: float = REGEX_TIMEOUT_S
) -> list[CheckResult]:
    """Run ``checks`` (or a constitution's checks) on ``text``, in order."""
    items = checks.checks if hasattr(checks, "checks") else checks
    return [run_check(c, text, regex_timeout=regex_timeout) for c in items]  # type: ignore[union-attr]


def required_phrases(checks: Iterable[Check]) -> list[str]:
    """The words the checks make a response use verbatim: its opening and closing words."""
    return [c.value for c in checks if isinstance(c, StartsWith | EndsWith)]
