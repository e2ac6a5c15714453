"""Reading written verdicts: realistic judge outputs, and the judges that parse them."""

from __future__ import annotations

import pytest

from selfimprove.backends.scripted import ScriptedBackend
from selfimprove.errors import ParseError
from selfimprove.judges.base import parse_choice
from selfimprove.judges.pairwise import OPTIONS, PairwiseJudge
from selfimprove.judges.pointwise import YES_NO, PointwiseJudge, RubricItem

ABSTAIN = None  # the parser must raise ParseError: the judge abstains instead of guessing

# (what a judge wrote, the option it must be read as, or ABSTAIN)
PAIRWISE = [
    ("B", "B"),
    ("A", "A"),
    ("B.", "B"),
    ("**A**", "A"),
    ("(B)", "B"),
    ("Response B is better.", "B"),
    ("I prefer Response A because it is more concise.", "A"),
    ("Answer: B", "B"),
    ("answer: A", "A"),
    ('{"choice": "B"}', "B"),
    ('{"choice": "A", "reason": "Response B gets the total wrong"}', "A"),
    ("[[A]]", "A"),
    ("Final verdict: (B)", "B"),
    ("**Verdict:** A", "A"),
    ("B. Response B answers the question directly, while Response A drifts.", "B"),
    ("A\n\nResponse A gives the correct total; Response B miscounts.", "A"),
    ("After reading both, my choice is B.", "B"),
    ("A is better: it answers the question.", "A"),
    ("The better response is B because it cites the formula.", "B"),
    ("A single clear winner: Response B.", "B"),
    ("Response B wins.", "B"),
    # the article "a" is not option A
    ("It is a tie", ABSTAIN),
    ("I will choose a single response.", ABSTAIN),
    ("I will choose a single answer that is correct, the second one.", ABSTAIN),
    ("A tie.", ABSTAIN),
    ("A clear winner is hard to pick here.", ABSTAIN),
    ("a", ABSTAIN),
    # ties, neither, both
    ("Tie.", ABSTAIN),
    ("Both responses are equally good.", ABSTAIN),
    ("Neither response answers the question.", ABSTAIN),
    ("Verdict: tie", ABSTAIN),
    ('{"choice": "neither"}', ABSTAIN),
    ("[[C]]", ABSTAIN),
    # naming both, or neither option
    ("Response A is longer, but Response B is more accurate.", ABSTAIN),
    ("A or B", ABSTAIN),
    ("Answer with a single letter: A or B.", ABSTAIN),
    ("Verdict: A or B, hard to say.", ABSTAIN),
    ("I cannot decide.", ABSTAIN),
    ("", ABSTAIN),
]

# the pointwise judge's Yes/No: "no" as a determiner is not a verdict
YES_NO_CASES = [
    ("Yes", "Yes"),
    ("no", "No"),
    ("Yes, it does.", "Yes"),
    ("No. The response never states the units.", "No"),
    ("Answer: No", "No"),
    ("It meets the criterion, so yes.", "Yes"),
    ("There is no doubt: yes.", "Yes"),
    ("The response has no errors.", ABSTAIN),
    ("No errors, and it is concise.", ABSTAIN),
    ("Yes and no.", ABSTAIN),
    ("Answer Yes or No.", ABSTAIN),
]


def _expect(text: str, options: tuple[str, ...], expected: str | None) -> None:
    if expected is ABSTAIN:
        with pytest.raises(ParseError):
            got = parse_choice(text, options)
            pytest.fail(f"{text!r} was read as {got.choice!r}, expected an abstain")
    else:
        assert parse_choice(text, options).choice == expected, text


@pytest.mark.parametrize(("text", "expected"), PAIRWISE, ids=[t[:40] for t, _ in PAIRWISE])
def test_pairwise_verdicts(text, expected):
    _expect(text, OPTIONS, expected)


@pytest.mark.parametrize(("text", "expected"), YES_NO_CASES, ids=[t for t, _ in YES_NO_CASES])
def test_yes_no_verdicts(text, expected):
    _expect(text, YES_NO, expected)


def _judge_text(conv) -> str:
    return conv[-1].content


async def test_pairwise_judge_abstains_on_an_article_instead_of_picking_the_first():
    # the probe's case: this was recorded as the first response winning, in both orders
    def respond(conv, params):
        assert "Which response is better" in _judge_text(conv)
        return "I will choose a single response."

    judge = PairwiseJudge(ScriptedBackend(respond), max_attempts=2)
    verdict = await judge.compare("What is 2+2?", "4", "four")
    assert verdict.winner == "abstain" and verdict.decided_by == "abstain"
    assert [o.choice for o in verdict.orders] == ["abstain", "abstain"]


async def test_pairwise_judge_reads_an_explicit_verdict_in_both_orders():
    def respond(conv, params):
        first = _judge_text(conv).split("Response A:")[1].split("Response B:")[0]
        # "four" is better: name its letter, after discussing both responses
        return "Response A is terse. Final verdict: A" if "four" in first else "Answer: **B**"

    judge = PairwiseJudge(ScriptedBackend(respond))
    verdict = await judge.compare("What is 2+2?", "4", "four")
    assert verdict.winner == "b" and verdict.decided_by == "judge" and verdict.p_b == 1.0


async def test_pointwise_judge_does_not_read_no_errors_as_no():
    def respond(conv, params):
        return "The response has no errors." if "units" in _judge_text(conv) else "Yes, it does."

    rubric = [RubricItem(points=2, criterion="states units"), RubricItem(points=1, criterion="x")]
    judge = PointwiseJudge(ScriptedBackend(respond), rubric)
    assert await judge.score("q", "r") is None  # abstains: was scored as "No" (0 points)

    judge = PointwiseJudge(ScriptedBackend(lambda conv, params: "Yes, it does."), rubric)
    assert await judge.score("q", "r") == 3
