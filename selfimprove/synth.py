"""Synthetic instruction prompts with their own checks (verifiable instructions).

A prompt is a task about an everyday topic ("Describe a thunderstorm.") plus one or two
instructions, each phrased in one of several ways and each carrying the executable check that
verifies it ("Write in lowercase letters only" -> ``{"kind": "lowercase", "id": "lowercase"}``).
Generation is seeded and deterministic: the same ``(n, seed, kinds)`` gives byte-identical
files. Two instructions are only combined when the compatibility table allows it, so no prompt
asks for something impossible (lowercase text that starts with "Here is", a JSON object that
ends with "stay safe.").

Held-out kinds (:data:`HELDOUT_KINDS`): ``quoted`` and ``no_commas``. The shipped training set
``instructions`` never uses them and ``instructions-heldout-kinds`` uses only them, so a run
trained on the first and evaluated on the second shows whether the policy learned to follow
instructions in general rather than the particular kinds it was trained on. These two are held
out because they are whole-response surface constraints that none of the trained kinds implies
(wrapping the answer in quotes, avoiding one punctuation mark), are easy to state and to check,
and combine with each other, so the held-out set needs no trained kind at all.

The shipped sets are regenerated with::

    selfimprove prompts synth --n 240 --seed 0 --exclude-kinds quoted,no_commas \\
        --out selfimprove/data/prompts/instructions.jsonl
    selfimprove prompts synth --n 40 --seed 1 --kinds quoted,no_commas \\
        --out selfimprove/data/prompts/instructions-heldout-kinds.jsonl
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfimprove.atomic import write_text
from selfimprove.sources import PromptRecord, parse_prompt_checks

__all__ = [
    "HELDOUT_KINDS",
    "INCOMPATIBLE",
    "KINDS",
    "PHRASINGS",
    "TOPICS",
    "Instruction",
    "compatible",
    "phrasings",
    "records_jsonl",
    "resolve_kinds",
    "synth_prompts",
    "write_jsonl",
]

#: every instruction kind, each verified by the check kind of the same name
KINDS: tuple[str, ...] = (
    "lowercase",
    "ends_with",
    "starts_with",
    "include_words",
    "bullet_count",
    "no_commas",
    "paragraph_count",
    "max_words",
    "quoted",
    "json_object",
)

#: kinds kept out of the training set, to measure generalisation to unseen kinds
HELDOUT_KINDS: tuple[str, ...] = ("quoted", "no_commas")

#: unordered pairs of kinds never asked for together: they contradict, or satisfying both
#: takes contortions that would make the prompt unnatural
INCOMPATIBLE: frozenset[frozenset[str]] = frozenset(
    frozenset(pair)
    for pair in (
        ("lowercase", "starts_with"),  # the openers are capitalised
        ("json_object", "bullet_count"),
        ("json_object", "paragraph_count"),
        ("json_object", "quoted"),
        ("json_object", "ends_with"),
        ("json_object", "starts_with"),
        ("json_object", "no_commas"),  # a JSON object of more than one key needs commas
        ("quoted", "ends_with"),  # the closing quote would come after the phrase
        ("quoted", "bullet_count"),
        ("quoted", "paragraph_count"),
        ("bullet_count", "paragraph_count"),
    )
)


def compatible(a: str, b: str) -> bool:
    """Whether instructions of kinds ``a`` and ``b`` may share a prompt (never the same kind)."""
    return a != b and frozenset((a, b)) not in INCOMPATIBLE


# (topic, words that fit it for include_words); topics read after "Describe", "Explain", ...
TOPICS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("a thunderstorm", ("lightning", "thunder")),
    ("how bread rises", ("yeast", "dough")),
    ("how a bicycle stays upright", ("wheels", "balance")),
    ("why the sky is blue", ("light", "scattering")),
    ("how to brew a good cup of tea", ("water", "leaves")),
    ("a rainy afternoon at home", ("window", "blanket")),
    ("how bees make honey", ("nectar", "hive")),
    ("the water cycle", ("evaporation", "clouds")),
    ("how to plant a tomato seedling", ("soil", "sunlight")),
    ("a busy train station", ("platform", "crowd")),
    ("why we need sleep", ("brain", "rest")),
    ("how a refrigerator keeps food cold", ("heat", "coolant")),
    ("the changing of the seasons", ("autumn", "winter")),
    ("how to tie a shoelace", ("loop", "knot")),
    ("a walk on the beach", ("waves", "sand")),
    ("how vaccines work", ("immune", "protection")),
    ("how a library is organised", ("shelves", "catalogue")),
    ("why leaves change colour in autumn", ("chlorophyll", "pigment")),
    ("how to make a paper airplane", ("fold", "wings")),
    ("a farmers market on a Saturday", ("vegetables", "stalls")),
    ("how the moon affects the tides", ("gravity", "ocean")),
    ("how to save money on groceries", ("budget", "list")),
    ("a campfire at night", ("flames", "stars")),
    ("how a rainbow forms", ("droplets", "colours")),
    ("why exercise is good for you", ("heart", "muscles")),
    ("how to care for a houseplant", ("water", "light")),
    ("how an airplane flies", ("lift", "wings")),
    ("a snowy morning", ("snow", "quiet")),
    ("how to boil an egg", ("water", "minutes")),
    ("how recycling works", ("plastic", "sorting")),
    ("why cats purr", ("vibration", "comfort")),
    ("how to start learning a new language", ("practice", "vocabulary")),
    ("a visit to the dentist", ("teeth", "checkup")),
    ("how a compass works", ("magnet", "north")),
    ("how to pack for a weekend trip", ("clothes", "bag")),
    ("the life cycle of a butterfly", ("caterpillar", "wings")),
    ("how to make friends in a new city", ("clubs", "neighbours")),
    ("a summer evening on a balcony", ("sunset", "breeze")),
    ("why bread goes stale", ("moisture", "starch")),
    ("how a volcano erupts", ("magma", "pressure")),
    ("how to wash a wool sweater", ("cold", "gentle")),
    ("a first day at a new job", ("colleagues", "nervous")),
    ("how solar panels make electricity", ("sunlight", "cells")),
    ("why the ocean is salty", ("minerals", "rivers")),
    ("how to keep a conversation going", ("questions", "listen")),
    ("a city park in spring", ("blossoms", "benches")),
    ("how coffee is grown", ("beans", "farms")),
    ("how to stay calm before an exam", ("breathing", "sleep")),
)

# Words any answer can use naturally, mixed with the topic's own for include_words.
_GENERIC_WORDS = ("simple", "because", "example", "usually", "important", "remember")

_TASKS = (
    "Describe {topic}.",
    "Explain {topic}.",
    "Write a short note about {topic}.",
    "Tell me about {topic}.",
    "Give a brief overview of {topic}.",
    "Tell a ten-year-old about {topic}.",
)

# Sentence openers and closers: no commas, so that they combine with no_commas.
_OPENERS = ("Here is", "Imagine", "The short answer is", "Think of it this way", "Let me explain")
_CLOSERS = ("Any questions?", "stay safe.", "That is all.", "Hope this helps.", "The end.")

_NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five"}


# Each phrasing is a clause with a capitalised first word (lowered when it is joined after
# "and") and no final full stop. Placeholders: {value}, {words}, {n}, {noun}.
PHRASINGS: dict[str, tuple[str, ...]] = {
    "lowercase": (
        "Write in lowercase letters only",
        "Use no capital letters at all",
        "Keep your entire answer in lowercase",
        "Do not use a single uppercase letter",
    ),
    "ends_with": (
        "End with the words '{value}'",
        "Finish your answer with the exact phrase '{value}'",
        "Make '{value}' the last words of your answer",
        "Let '{value}' be the very last words of your reply",
    ),
    "starts_with": (
        "Begin your answer with the words '{value}'",
        "Start with '{value}'",
        "Open your reply with the phrase '{value}'",
    ),
    "include_words": (
        "Use the {noun} {words}",
        "Make sure your answer contains the {noun} {words}",
        "Include the {noun} {words} somewhere",
    ),
    "bullet_count_exact": (
        "Use exactly {n} bullet points",
        "Answer as a list of exactly {n} bullet points",
        "Give precisely {n} bullet points",
    ),
    "bullet_count_min": (
        "Use at least {n} bullet points",
        "Give {n} or more bullet points",
        "Format it as a list with no fewer than {n} bullet points",
    ),
    "no_commas": (
        "Do not use any commas",
        "Avoid commas entirely",
        "Write without a single comma",
        "Leave out every comma",
    ),
    "paragraph_count": (
        "Write exactly {n} paragraphs separated by blank lines",
        "Split your answer into {n} paragraphs with a blank line between them",
        "Write {n} paragraphs (no more and no fewer) with blank lines between them",
    ),
    "max_words": (
        "Answer in at most {n} words",
        "Keep it to {n} words or fewer",
        "Use no more than {n} words",
    ),
    "quoted": (
        "Wrap your entire answer in double quotation marks",
        "Put your whole response inside double quotes",
        "Enclose the full answer in double quotes as if it were a quotation",
    ),
    "json_object": (
        "Reply with a single JSON object (no text outside it)",
        "Format your entire answer as one JSON object",
        "Return only a JSON object with a \"summary\" key",
    ),
}
# A kind whose phrasings come in variants: all variants count as phrasings of the kind.
_VARIANTS = {"bullet_count": ("bullet_count_exact", "bullet_count_min")}


def phrasings(kind: str) -> tuple[str, ...]:
    """All phrasings of instruction ``kind`` (its variants together)."""
    return tuple(p for v in _VARIANTS.get(kind, (kind,)) for p in PHRASINGS[v])


@dataclass(frozen=True)
class Instruction:
    """One instruction: the clause shown in the prompt and the check that verifies it."""

    kind: str
    text: str
    check: dict[str, Any]


def _quote_words(words: Sequence[str]) -> str:
    quoted = [f"'{w}'" for w in words]
    return " and ".join(quoted)


def _instruction(
    kind: str, rng: random.Random, topic_words: Sequence[str], lowercase: bool
) -> Instruction:
    """Draw one instruction of ``kind``; ``lowercase``: the prompt also asks for lowercase."""
    check: dict[str, Any] = {"kind": kind, "id": kind}
    fields: dict[str, Any] = {}
    variant = kind
    if kind == "ends_with":
        value = rng.choice(_CLOSERS)
        # With lowercase, the closer must be lowercase too, or the two would contradict.
        value = value.lower() if lowercase else value
        check["value"] = fields["value"] = value
    elif kind == "starts_with":
        check["value"] = fields["value"] = rng.choice(_OPENERS)
    elif kind == "include_words":
        pool = list(topic_words) + list(_GENERIC_WORDS)
        words = rng.sample(pool, rng.choice((1, 2)))
        check["words"] = words
        fields["words"] = _quote_words(words)
        fields["noun"] = "word" if len(words) == 1 else "words"
    elif kind == "bullet_count":
        variant = rng.choice(_VARIANTS["bullet_count"])
        n = rng.randint(2, 5) if variant == "bullet_count_exact" else rng.randint(2, 4)
        check.update({"min": n, "max": n} if variant == "bullet_count_exact" else {"min": n})
        fields["n"] = _NUMBER_WORDS[n]
    elif kind == "paragraph_count":
        # Two or three: "one paragraph separated by blank lines" does not read naturally.
        n = rng.randint(2, 3)
        check.update({"min": n, "max": n})
        fields["n"] = _NUMBER_WORDS[n]
    elif kind == "max_words":
        n = rng.choice((30, 40, 50, 60, 80))
        check["value"] = n
        fields["n"] = n
    text = rng.choice(PHRASINGS[variant]).format(**fields)
    return Instruction(kind=kind, text=text, check=check)


def _sentence(clause: str) -> str:
    # "End with the words 'stay safe.'" already ends a sentence: no second full stop.
    return clause if clause[-2:] in (".'", "?'", "!'") else clause + "."


def _join(clauses: Sequence[str], rng: random.Random) -> str:
    if len(clauses) == 2 and rng.random() < 0.5:
        first, second = clauses
        return _sentence(f"{first} and {second[0].lower()}{second[1:]}")
    return " ".join(_sentence(c) for c in clauses)


def resolve_kinds(
    kinds: Iterable[str] | None = None, exclude_kinds: Iterable[str] = ()
) -> tuple[str, ...]:
    """The kinds to draw from, in :data:`KINDS` order (ValueError naming an unknown kind)."""
    chosen = tuple(KINDS) if kinds is None else tuple(kinds)
    excluded = tuple(exclude_kinds)
    for kind in (*chosen, *excluded):
        if kind not in KINDS:
            raise ValueError(f"unknown instruction kind {kind!r} (known: {', '.join(KINDS)})")
    result = tuple(k for k in KINDS if k in chosen and k not in excluded)
    if not result:
        raise ValueError("no instruction kinds left to draw from")
    return result


def synth_prompts(
    n: int,
    seed: int = 0,
    *,
    kinds: Sequence[str] | None = None,
    exclude_kinds: Sequence[str] = (),
    max_instructions: int = 2,
) -> list[PromptRecord]:
    """``n`` distinct instruction prompts with their checks, deterministic for ``seed``.

    Kinds are drawn in turn from ``kinds`` (default all of :data:`KINDS`) minus
    ``exclude_kinds``, so each appears about equally often as a prompt's first instruction;
    about half the prompts get a second, compatible instruction (up to ``max_instructions``).
    Ids are ``synth-<seed>-<index>``. Raises ValueError for ``n`` outside 1 to
    :data:`MAX_PROMPTS`, an unknown kind, or when the kinds allow fewer than ``n`` distinct
    prompts.
    """
    if not 1 <= n <= MAX_PROMPTS:
        raise ValueError(
            f"n must be between 1 and {MAX_PROMPTS}, got {n} (for more, join the files of "
            "several seeds: `selfimprove prompts check` finds a prompt repeated across them)"
        )
    if max_instructions not in (1, 2):
        raise ValueError(f"max_instructions must be 1 or 2, got {max_instructions}")
    pool = resolve_kinds(kinds, exclude_kinds)
    rng = random.Random(f"selfimprove.synth:{seed}")
    records: list[PromptRecord] = []
    seen: set[str] = set()
    order: list[str] = []
    misses = 0
    while len(records) < n:
        if not order:
            order = list(pool)
            rng.shuffle(order)
        prompt, checks = _draw(order.pop(), pool, rng, max_instructions)
        if prompt in seen:
            misses += 1
            # Only a small space (one or two kinds, many prompts) runs into this many repeats.
            if misses > _MAX_MISSES:
                raise ValueError(
                    f"kinds {', '.join(pool)} gave only {len(records)} distinct prompts, "
                    f"fewer than the {n} asked for"
                )
            continue
        misses = 0
        seen.add(prompt)
        record_id = f"synth-{seed}-{len(records)}"
        checked = parse_prompt_checks(checks)
        records.append(PromptRecord(id=record_id, prompt=prompt, checks=checked))
    return records


#: the most prompts one call draws: the set is held in memory and written at once, and a
#: million prompts took over a minute, so a mistyped count fails at once instead
MAX_PROMPTS = 100_000

#: consecutive repeated prompts after which the space of prompts counts as exhausted
_MAX_MISSES = 2000


def _draw(
    first: str, pool: Sequence[str], rng: random.Random, max_instructions: int
) -> tuple[str, list[dict[str, Any]]]:
    """One prompt text and its checks (as data), ``first`` being its first instruction."""
    topic, topic_words = rng.choice(TOPICS)
    task = rng.choice(_TASKS).format(topic=topic)
    chosen = [first]
    partners = [k for k in pool if compatible(first, k)]
    if max_instructions > 1 and partners and rng.random() < 0.5:
        chosen.append(rng.choice(partners))
    lowercase = "lowercase" in chosen
    instructions = [_instruction(k, rng, topic_words, lowercase) for k in chosen]
    return f"{task} {_join([i.text for i in instructions], rng)}", [i.check for i in instructions]


def _check_json(check: Any) -> dict[str, Any]:
    # kind and id first, then the parameters; defaults (hard: true) are left out.
    data = check.model_dump(mode="json", exclude_defaults=True)
    return {"kind": data.pop("kind"), "id": data.pop("id"), **data}


def records_jsonl(records: Iterable[PromptRecord]) -> str:
    """The JSON-lines text of ``records``: ``{"prompt", "id", "checks"}`` per line."""
    lines = [
        json.dumps(
            {"prompt": r.prompt, "id": r.id, "checks": [_check_json(c) for c in r.checks]},
            ensure_ascii=False,
        )
        for r in records
    ]
    return "".join(line + "\n" for line in lines)


def write_jsonl(records: Iterable[PromptRecord], path: str | Path) -> Path:
    """Write ``records`` as a prompt file that :func:`~selfimprove.sources.load_prompt_records`
    reads back; atomic, so a reader never sees half a file."""
    path = Path(path)
    write_text(path, records_jsonl(records))
    return path
