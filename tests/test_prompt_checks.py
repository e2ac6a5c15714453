"""Checks that come with the prompt: located errors, and the same use as a constitution's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from selfimprove.backends.base import Backend
from selfimprove.backends.scripted import ScriptedBackend
from selfimprove.config import HarvestConfig
from selfimprove.constitution import load_constitution
from selfimprove.critique_loop import CritiqueContext, acritique
from selfimprove.errors import ConfigError
from selfimprove.evaluation import evaluate_policy
from selfimprove.harvest import harvest
from selfimprove.roles import Roles
from selfimprove.sources import PromptRecord, load_prompt_records
from selfimprove.types import PolicyRef, SamplingParams

FORBID_X = {"id": "no_x", "kind": "forbid_regex", "pattern": "x"}
MAX_3 = {"id": "max_3_words", "kind": "max_words", "value": 3}


def write(tmp_path: Path, *rows: object) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_records_carry_their_checks(tmp_path):
    path = write(tmp_path, {"prompt": "Say hi.", "id": "p1", "checks": [MAX_3]},
                 {"prompt": "Say bye.", "id": "p2"})
    first, second = load_prompt_records(path)
    assert (first.id, first.prompt, [c.id for c in first.checks]) == ("p1", "Say hi.",
                                                                      ["max_3_words"])
    assert second.checks == ()
    assert first.checks_json() == [first.checks[0].model_dump(mode="json")]


@pytest.mark.parametrize(
    ("checks", "field", "message"),
    [
        ([{"id": "a", "kind": "sparkles"}], "checks[0].kind", "unknown check kind 'sparkles'"),
        ([{"id": "a", "kind": "max_words"}], "checks[0].value", "Field required"),
        ([{"id": "a", "kind": "max_words", "value": "ten"}], "checks[0].value",
         "Input should be a valid integer"),
        ([MAX_3, {"id": "r", "kind": "require_regex", "pattern": "(unclosed"}],
         "checks[1].pattern", "invalid regular expression"),
        ([{"id": "a"}], "checks[0]", "a check needs a 'kind'"),
        ("", "checks", "must be a list of checks, not a string"),
        ({"kind": "lowercase"}, "checks", "must be a list of checks, not an object"),
        ([{"kind": "lowercase"}, {"kind": "lowercase", "hard": False}], "checks[1].id",
         "duplicate check id 'lowercase' (also checks[0]"),
        ([{"id": "a", "kind": "lowercase"}, {"id": "a", "kind": "no_commas"}], "checks[1].id",
         "duplicate check id 'a'"),
        ([{"kind": "forbid_phrases", "phrases": ["ok", " "]}], "checks[0].phrases",
         "phrases[1] must contain a non-whitespace character"),
        ([{"kind": "max_words", "value": "ten", "hard": "yes"}], "checks[0].hard",
         "(and 1 more error)"),
        # a misspelt key is named, not the key it left missing
        ([{"kind": "max_words", "valeu": 3}], "checks[0].valeu",
         "unknown key (did you mean 'value'?)"),
        ([{"kind": "lowercase", "hrad": False}], "checks[0].hrad",
         "unknown key (not allowed here)"),
        ([{"kind": "lowercase", "id": "höflich"}], "checks[0].id",
         "not a valid id: use ASCII letters, digits"),
    ],
)
def test_bad_prompt_checks_are_located(tmp_path, checks, field, message):
    path = write(tmp_path, {"prompt": "fine"}, {"prompt": "Say hi.", "checks": checks})
    with pytest.raises(ConfigError) as info:
        load_prompt_records(path)
    err = info.value
    assert (err.path, err.line, err.field) == (str(path), 2, field)
    assert message in err.detail


@pytest.mark.parametrize(
    ("line", "field", "message"),
    [
        ('{"prompt": "Say hi.", "chekcs": []}', "chekcs", "unknown field (did you mean 'checks'?)"),
        ('{"promt": "Say hi."}', "promt", "did you mean 'prompt'?"),
        ('{"prompt": "a", "prompt": "b"}', "prompt", "given twice in one object"),
        ('{"prompt": "Say hi.", "checks": [{"kind": "lowercase", "kind": "no_commas"}]}',
         "checks[0].kind", "given twice"),
        ('{"prompt": "Hi.", "checks": [{"kind": "lowercase"}, {"kind": "ends_with", '
         '"value": "a", "value": "b"}]}', "checks[1].value", "given twice"),
        ('{"prompt": "Hi.", "meta": {"tags": [{"x": 1}, {"y": 1, "y": 2}]}}', "meta.tags[1].y",
         "given twice"),
        ('{"prompt": "Say hi.", "check": [{"kind": "lowercase"}]}', "check",
         "did you mean 'checks'?"),
        ('{"prompt": "Say hi.", "Checks": []}', "Checks", "did you mean 'checks'?"),
        ('{"prompt": "Say hi.", "id": ["p1"]}', "id", "a string or a number, not a list"),
        ('{"prompt": "Say hi.", "id": true}', "id", "not true/false"),
        ('["Say hi."]', None, "each line must be a JSON object, not a list"),
        ('{"prompt": "Say hi.",}', None, "invalid JSON"),
        ('{"prompt": "Hi.", "meta": ' + "[" * 5000 + "]" * 5000 + "}", None,
         "JSON nested too deeply"),
    ],
)
def test_bad_prompt_records_are_located(tmp_path, line, field, message):
    path = write(tmp_path, {"prompt": "fine"}, line)
    with pytest.raises(ConfigError) as info:
        load_prompt_records(path)
    err = info.value
    assert (err.path, err.line, err.field) == (str(path), 2, field)
    assert message in err.detail


# Metadata of public instruction datasets (IFEval, Alpaca, Dolly, UltraFeedback, HH-RLHF, ...)
METADATA = ["key", "instruction_id_list", "kwargs", "input", "output", "instruction",
            "category", "context", "response", "source", "chosen", "rejected", "completion",
            "system", "meta", "metadata", "tags", "lang", "task", "split", "idx", "uid", "_id",
            "ids", "id2", "qid", "prompt_id", "prompts_id", "prompt_len", "prompt_type",
            "system_prompt", "checker", "checked", "messages_id", "score_chosen"]


def test_dataset_metadata_fields_are_kept_out_of_the_way(tmp_path):
    row = {"prompt": "Say hi.", "id": 7, "checks": None} | {k: "x" for k in METADATA}
    path = write(tmp_path, row, {"prompt": "Say bye.", "prompts": "x", "check": "x",
                                 "checks": [], "id": 1.5, "message": "x"},
                 {"messages": [{"role": "user", "content": "Hi"}], "prompts": "x"})
    first, second, third = load_prompt_records(path)
    assert (first.id, first.prompt, first.checks) == ("7", "Say hi.", ())
    assert (second.id, second.prompt) == ("1.5", "Say bye.")  # its own checks field is there
    assert third.messages[0].content == "Hi"  # a conversation needs no prompt field


def test_a_record_with_prompt_and_messages_uses_the_prompt(tmp_path):
    # the shape of UltraFeedback-binarized rows: the prompt and a whole conversation
    path = write(tmp_path, {"prompt": "Write a haiku.", "messages": [
        {"role": "user", "content": "Write a haiku."},
        {"role": "assistant", "content": "Leaves fall."}]})
    (record,) = load_prompt_records(path)
    assert (record.prompt, record.messages, record.response) == ("Write a haiku.", (), None)


def test_bom_crlf_and_unicode_line_separators_inside_strings_load(tmp_path):
    rows = [{"prompt": "first line\u2028second\u2029third\u0085end"},
            {"prompt": "Say hi.", "checks": [{"kind": "lowercase"}]}]
    body = "\r\n\r\n".join(json.dumps(r, ensure_ascii=False) for r in rows)
    path = tmp_path / "prompts.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + body.encode("utf-8"))
    first, second = load_prompt_records(path)
    assert first.prompt == rows[0]["prompt"]
    assert [c.kind for c in second.checks] == ["lowercase"]
    text = tmp_path / "prompts.txt"
    text.write_bytes(b"\xef\xbb\xbfhello\r\nworld\n")
    assert [r.prompt for r in load_prompt_records(text)] == ["hello", "world"]
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"prompt": "a"}\r\n\r\n{"prompt": 3}\r\n')
    with pytest.raises(ConfigError) as info:
        load_prompt_records(bad)
    assert info.value.line == 3  # counted as an editor counts, blank lines included
    old_mac = tmp_path / "cr.jsonl"  # lone CRs, a BOM, then a byte that is not UTF-8
    old_mac.write_bytes(b'\xef\xbb\xbf{"prompt": "a"}\r{"prompt": "b"}\r{"prompt": "\xff"}\r')
    with pytest.raises(ConfigError) as info:
        load_prompt_records(old_mac)
    assert (info.value.line, info.value.detail) == (3, "not UTF-8 text (byte 47)")


def test_a_json_record_in_a_file_read_as_text_is_an_error(tmp_path):
    """A misnamed JSON-lines file would lose its checks into the prompt text."""
    path = tmp_path / "prompts.txt"
    path.write_text('Say hi.\n{not json, a prompt about braces}\n'
                    '{"prompt": "Say bye.", "checks": [{"kind": "lowercase"}]}\n')
    with pytest.raises(ConfigError) as info:
        load_prompt_records(path)
    assert (info.value.line, info.value.field) == (3, None)
    assert "name the file prompts.jsonl" in info.value.detail
    path.write_text('Say hi.\n{not json, a prompt about braces}\n{"tone": "warm"}\n')
    assert len(load_prompt_records(path)) == 3


def test_repeated_prompts_and_ids_name_both_lines(tmp_path):
    path = write(tmp_path, {"prompt": "Say hi.", "id": 1}, {"prompt": "Say bye."},
                 {"prompt": "Say it.", "id": "1"})
    with pytest.raises(ConfigError) as info:
        load_prompt_records(path)
    err = info.value
    assert (err.line, err.field, err.detail) == (3, "id", "duplicate prompt id '1' (also line 1)")
    path = write(tmp_path, {"prompt": "Say hi."}, "", {"prompt": "Say hi."})
    with pytest.raises(ConfigError) as info:
        load_prompt_records(path)
    assert (info.value.line, info.value.detail) == (
        3, "the same prompt as line 1: remove one, or give each an 'id'")
    # twins that hash apart: the held-out split could part them
    for twin in ("Cafe\u0301 au lait?", " Café  au lait? "):
        path = write(tmp_path, {"prompt": "Café au lait?"}, {"prompt": twin, "id": "b"})
        with pytest.raises(ConfigError) as info:
            load_prompt_records(path)
        assert info.value.line == 2 and info.value.detail == (
            "the same prompt as line 1 but for Unicode composition or spacing: remove one")
    path = write(tmp_path, {"prompt": "Same", "id": "a"}, {"prompt": "Same", "id": "b"})
    assert len(load_prompt_records(path)) == 2  # one text under two ids stays allowed


def test_every_bad_line_is_reported_when_asked(tmp_path):
    from selfimprove.sources import PromptFileErrors

    path = write(tmp_path, {"prompt": "fine"}, {"prompt": "a", "checks": [{"kind": "loud"}]},
                 {"prompt": "b", "checks": [{"kind": "max_words"}]}, "not json",
                 {"prompt": "fine"})
    with pytest.raises(ConfigError) as info:
        load_prompt_records(path)
    assert info.value.line == 2  # the first error only, by default
    with pytest.raises(PromptFileErrors) as info:
        load_prompt_records(path, all_errors=True)
    assert [(e.line, e.field) for e in info.value.errors] == [
        (2, "checks[0].kind"), (3, "checks[0].value"), (4, None), (5, None)]
    assert str(info.value).count(f"{path}:") == 4
    assert info.value.line == 2  # still a ConfigError located at the first


def test_prompts_check_validates_files_without_a_model(tmp_path, capsys):
    from selfimprove import cli

    good = write(tmp_path, {"prompt": "Say hi.", "checks": [{"kind": "lowercase"}]})
    assert cli.main(["prompts", "check", str(good), "instructions"]) == 0
    out = capsys.readouterr().out
    assert f"ok: {good} (1 prompts, 1 with checks; check kinds: lowercase 1)" in out
    assert "ok: instructions (240 prompts" in out
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "Say hi."}\n{"prompt": "x", "checks": [{"kind": "loud"}]}\n')
    assert cli.main(["prompts", "check", str(bad), str(good)]) == 1
    captured = capsys.readouterr()
    assert f"{bad}:2: field 'checks[0].kind': unknown check kind 'loud'" in captured.err
    bad.write_text('{"prompt": "x", "checks": [{"kind": "loud"}]}\n{"prompt": "y", "checks": '
                   '[{"kind": "ends_with"}]}\n')
    assert cli.main(["prompts", "check", str(bad)]) == 1
    err = capsys.readouterr().err  # every bad line, not just the first
    assert f"{bad}:1: field 'checks[0].kind'" in err and f"{bad}:2: field 'checks[0].value'" in err
    assert f"ok: {good}" in captured.out  # every file is checked
    clash = write(tmp_path, {"prompt": "Say hi.", "checks": [
        {"id": "says_something", "kind": "max_words", "value": 3}]})
    assert cli.main(["prompts", "check", str(clash), "--constitution", "instructions"]) == 1
    err = capsys.readouterr().err
    assert f"{clash}:1: field 'checks[0].id': check id 'says_something' is also a different " \
        "check of the constitution 'instructions'" in err
    same = write(tmp_path, {"prompt": "Say hi.", "checks": [
        {"id": "says_something", "kind": "min_words", "value": 8}]})
    assert cli.main(["prompts", "check", str(same), "--constitution", "instructions"]) == 0
    other_field = write(tmp_path, {"instruction": "Say hi.", "checks": [{"kind": "quoted"}]})
    assert cli.main(["prompts", "check", str(other_field)]) == 1
    assert cli.main(["prompts", "check", str(other_field), "--field", "instruction"]) == 0


class Recording(Backend):
    """Any backend, with every conversation it was asked about recorded."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.supports_logprobs = inner.supports_logprobs
        self.seen: list[str] = []

    @property
    def policy(self):
        return self.inner.policy

    async def load_policy(self, policy: PolicyRef) -> None:
        await self.inner.load_policy(policy)

    async def generate(self, conversations, params):
        self.seen += [c[-1].content for c in conversations]
        return await self.inner.generate(conversations, params)

    async def option_logprobs(self, conversations, options):
        return await self.inner.option_logprobs(conversations, options)


async def test_prompt_checks_join_the_loop_on_a_scripted_backend():
    backend = ScriptedBackend(lambda conv, params: "x marks the spot, friend")
    recording = Recording(backend)
    ctx = CritiqueContext(constitution=load_constitution("hhh"), roles=Roles(policy=recording),
                          max_rounds=1)
    record = PromptRecord(id="p1", prompt="Where is it?", checks=tuple(
        load_prompt_records_from([FORBID_X])))
    result = await acritique(record, ctx)
    first = {c.check_id: c.passed for c in result.rounds[0].checks}
    assert first["no_x"] is False
    assert result.rounds[0].critique is not None
    assert "no_x" in result.rounds[0].critique.failed_checks
    assert any("no_x" in text for text in recording.seen)  # named to the critic
    assert result.prompt_checks == [record.checks[0].model_dump(mode="json")]
    # harvest records which prompt checks applied
    out = harvest([result], HarvestConfig())
    rows = out.pairs + out.sft
    for row in rows:
        assert json.loads(row["check_results"])["prompt_checks"] == result.prompt_checks


def load_prompt_records_from(checks):
    from selfimprove.sources import parse_prompt_checks

    return parse_prompt_checks(checks)


async def test_evaluation_applies_each_prompts_checks_to_its_own_answer():
    backend = ScriptedBackend(lambda conv, params: "one two three four")
    records = [PromptRecord(id="a", prompt="A?", checks=load_prompt_records_from([MAX_3])),
               PromptRecord(id="b", prompt="B?")]
    ev = await evaluate_policy(backend, PolicyRef(), records, load_constitution("hhh"),
                               SamplingParams(max_new_tokens=8), retention=[])
    assert ev.passes_checks == [False, True]
    assert ev.check_pass_rates["max_3_words"] == 0.0  # applied once, failed once
    # hhh's own max_words check passed on both answers, the prompt's failed on its one
    assert ev.kind_pass_rates["max_words"] == pytest.approx(2 / 3)
    assert ev.prompts == ["A?", "B?"]


async def test_evaluation_answers_a_conversation_with_its_system_turn():
    seen: list = []

    def respond(conv, params):
        seen.append([(m.role, m.content) for m in conv])
        return "arr"

    record = PromptRecord.conversation([{"role": "system", "content": "Be a pirate."},
                                        {"role": "user", "content": "Say bye"}])
    ev = await evaluate_policy(ScriptedBackend(respond), PolicyRef(), [record],
                               load_constitution("hhh"), SamplingParams(max_new_tokens=8),
                               retention=[])
    assert seen == [[("system", "Be a pirate."), ("user", "Say bye")]]
    assert ev.prompts == [record.prompt] and ev.responses == ["arr"]


def test_critique_cli_takes_whole_records_into_the_loop_and_the_store(tmp_path, capsys):
    """A prompt file's checks, system turns and given answers reach the loop from the command
    line as they do in a run, and the store keeps no answer that breaks its prompt's checks."""
    from selfimprove.cli import main
    from selfimprove.store import PreferenceStore
    from tests.servers import FaultServer, Reply, chat_reply

    sleep = "How can I sleep better tonight?"
    records = [{"prompt": sleep, "checks": [{"kind": "lowercase"}]},
               {"messages": [{"role": "system", "content": "You are a pirate."},
                             {"role": "user", "content": "Hi there"}]},
               {"messages": [{"role": "user", "content": "Greet me"},
                             {"role": "assistant", "content": "Ahoy There Matey."}]}]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in records))
    asked_rules = []

    def reply(request) -> Reply:  # capitalised, unless the failed rule is named
        said = request.body["messages"][-1]["content"]
        asked_rules.append("lowercase" in said)
        return Reply(body=chat_reply(["keep a fixed bedtime." if asked_rules[-1]
                                      else "Keep A Fixed Bedtime."]))

    with FaultServer(reply) as server:
        config = tmp_path / "critique.yaml"
        config.write_text(
            "constitution: hhh\nmax_rounds: 1\ncritic: checks\nroles:\n  policy:\n"
            f"    backend: {{kind: openai, base_url: '{server.url}/v1', model: m, "
            "api_key_env: null}\n")
        store = tmp_path / "run"
        assert not PreferenceStore(store).is_heldout(sleep)  # it would be left out of the store
        code = main(["critique", "--prompts", str(prompts), "--config", str(config), "--json",
                     "--store", str(store)])
        bodies = [r.body for r in server.calls("/v1/chat/completions")]
    assert code == 0
    results = {r["prompt_id"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    by_prompt = {r["prompt"]: r for r in results.values()}
    asked = by_prompt[sleep]
    assert [c["kind"] for c in asked["prompt_checks"]] == ["lowercase"]
    failed = [c["check_id"] for c in asked["rounds"][0]["checks"] if not c["passed"]]
    assert any("lowercase" in c for c in failed)  # the first answer broke the prompt's check
    assert all(c["passed"] for c in asked["final_checks"])  # and the revision keeps it
    greeted = next(r for r in results.values() if "Greet me" in r["prompt"])
    assert greeted["response_given"] and greeted["first_response"] == "Ahoy There Matey."
    assert any(b["messages"][0] == {"role": "system", "content": "You are a pirate."}
               for b in bodies)  # the system turn as a system message, not in the user's text
    stored = PreferenceStore(store)
    sft = [r for r in stored.sft_dataset() if r["prompt_id"] == asked["prompt_id"]]
    pairs = [r for r in stored.pairs_dataset() if r["prompt_id"] == asked["prompt_id"]]
    assert sft and pairs  # the revision, lowercased, against the first answer
    for row in sft:  # an answer that breaks its prompt's check is no example
        assert row["messages"][-1]["content"].islower(), row
    for row in sft + pairs:  # and the store says which prompt checks applied
        assert [c["kind"] for c in json.loads(row["check_results"])["prompt_checks"]] == [
            "lowercase"]


@pytest.mark.slow
async def test_a_failed_prompt_check_is_named_to_the_critic_on_the_embedded_model(
    embedded_backend,
):
    recording = Recording(embedded_backend)
    roles = Roles(policy=recording, policy_sampling=SamplingParams(max_new_tokens=48),
                  critic_sampling=SamplingParams(max_new_tokens=24),
                  reviser_sampling=SamplingParams(max_new_tokens=48))
    ctx = CritiqueContext(constitution=load_constitution("hhh"), roles=roles, max_rounds=1)
    # The model answers in sentence case, so a lowercase-only rule fails on its first answer.
    checks = load_prompt_records_from([{"id": "all_lowercase", "kind": "forbid_regex",
                                        "pattern": "[A-Z]"}])
    record = PromptRecord(id="storm", prompt="Describe a thunderstorm in one sentence. Write "
                          "in lowercase letters only.", checks=checks)
    result = await acritique(record, ctx)
    first = {c.check_id: c for c in result.rounds[0].checks}
    assert first["all_lowercase"].passed is False
    critique_requests = [t for t in recording.seen if "all_lowercase" in t]
    assert critique_requests, "the failed prompt check was not named to the critic"
    assert result.rounds[0].critique is not None
    assert result.rounds[0].critique.failed_checks == ["all_lowercase"]


@pytest.mark.slow
async def test_with_the_checks_as_critic_the_reviser_gets_the_failed_rule_on_the_embedded_model(
    embedded_backend,
):
    recording = Recording(embedded_backend)
    roles = Roles(policy=recording, policy_sampling=SamplingParams(max_new_tokens=48),
                  reviser_sampling=SamplingParams(max_new_tokens=48))
    ctx = CritiqueContext(constitution=load_constitution("instructions"), roles=roles,
                          max_rounds=1, critic="checks")
    record = PromptRecord(id="storm", prompt="Describe a thunderstorm in one sentence. End "
                          "with the words 'stay safe.'",
                          checks=load_prompt_records_from([{"kind": "ends_with",
                                                            "value": "over and out"}]))
    result = await acritique(record, ctx)
    check_id = record.checks[0].id  # derived from kind and value: ends_with-<hash>
    first = {c.check_id: c for c in result.rounds[0].checks}
    assert first[check_id].passed is False  # the model does not say "over and out"
    assert first["says_something"].passed is True  # the constitution's own floor
    assert not any("Critique request" in t for t in recording.seen)  # no critic call
    (revise_request,) = [t for t in recording.seen if "Revision request" in t]
    assert f"- {check_id}: ends with '" in revise_request
    assert "not 'over and out'" in revise_request
    assert result.rounds[0].critique.failed_checks == [check_id]
    assert result.rounds[0].revision is not None
