"""The local transformers backend on the embedded model: batching, seeds, log-probs, adapters."""

from __future__ import annotations

import asyncio
import math

import pytest

from selfimprove.types import Message, PolicyRef, SamplingParams

pytestmark = pytest.mark.slow

QUESTIONS = ["What is rain?", "Name a fruit.", "What is 2 + 2?", "Say hello.", "What is a cat?"]


def conv(text: str) -> list[Message]:
    return [Message(role="user", content=text)]


async def test_concurrent_requests_are_batched_and_match_sequential(embedded_backend):
    b = embedded_backend
    params = SamplingParams(max_new_tokens=12)
    calls_before = b.stats.generate_calls
    together = await asyncio.gather(*(b.generate([conv(q)], params) for q in QUESTIONS))
    batched_calls = b.stats.generate_calls - calls_before
    assert batched_calls < len(QUESTIONS), "concurrent requests were not batched"
    alone = [await b.generate([conv(q)], params) for q in QUESTIONS[:2]]
    # greedy decoding: the same start whether batched (left-padded) or alone; in bfloat16 (the
    # default on CPUs that compute it natively) padding moves later tokens' rounding
    for (((batched,),), ((single,),)) in zip(together[:2], alone, strict=True):
        assert batched.text.split()[:3] == single.text.split()[:3]
    assert all(0 < r[0][0].num_tokens <= 12 for r in together)


async def test_float32_answers_do_not_depend_on_the_batch():
    from selfimprove.backends.transformers import TransformersBackend

    b = TransformersBackend(dtype="float32", max_batch_size=8, max_wait_ms=30)
    try:
        params = SamplingParams(max_new_tokens=12)
        together = await asyncio.gather(*(b.generate([conv(q)], params) for q in QUESTIONS))
        assert b.stats.generate_calls < len(QUESTIONS), "concurrent requests were not batched"
        alone = [await b.generate([conv(q)], params) for q in QUESTIONS[:2]]
        assert [r[0][0].text for r in together[:2]] == [r[0][0].text for r in alone]
    finally:
        b.close()


async def test_per_request_token_budgets_share_a_batch(embedded_backend):
    b = embedded_backend
    short, long = await asyncio.gather(
        b.generate([conv("Describe the sea.")], SamplingParams(max_new_tokens=4)),
        b.generate([conv("Describe the sea.")], SamplingParams(max_new_tokens=16)),
    )
    assert short[0][0].num_tokens == 4 and short[0][0].finish_reason == "length"
    assert long[0][0].text.startswith(short[0][0].text)


async def test_seeded_sampling_is_reproducible(embedded_backend):
    b = embedded_backend
    params = SamplingParams(max_new_tokens=12, temperature=1.0, n=3, seed=11)
    (first,) = await b.generate([conv("Tell me a story.")], params)
    (again,) = await b.generate([conv("Tell me a story.")], params)
    (other,) = await b.generate(
        [conv("Tell me a story.")], params.model_copy(update={"seed": 12})
    )
    assert [c.text for c in first] == [c.text for c in again]
    assert len({c.text for c in first}) > 1  # n samples differ from each other
    assert [c.text for c in other] != [c.text for c in first]


async def test_option_logprobs_are_sensible(embedded_backend):
    b = embedded_backend
    yes, no = await b.option_logprobs(
        [conv("Reply with the single word Yes."), conv("Reply with the single word No.")],
        ["Yes", "No"],
    )
    for lp in (yes, no):
        assert set(lp) == {"Yes", "No"}
        assert all(v < 0 for v in lp.values())
        assert math.exp(lp["Yes"]) + math.exp(lp["No"]) <= 1.0 + 1e-6
    # the option the prompt asks for is the more likely one, either way round
    assert yes["Yes"] > yes["No"] and no["No"] > no["Yes"]


async def test_adapter_switch_changes_outputs_without_reloading(embedded_backend, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model

    from selfimprove.models import load_causal_lm, resolve_model

    base = load_causal_lm(None)
    peft_model = get_peft_model(base, LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # a visibly different policy
    peft_model.save_pretrained(tmp_path / "adapter")
    b = embedded_backend
    base_model_obj = b.model.get_base_model() if hasattr(b.model, "get_base_model") else b.model
    params = SamplingParams(max_new_tokens=10)
    (before,) = await b.generate([conv("What is rain?")], params)
    ref = PolicyRef(version="vtest", base_model=resolve_model(None),
                    adapter_path=str(tmp_path / "adapter"))
    await b.load_policy(ref)
    (with_adapter,) = await b.generate([conv("What is rain?")], params)
    await b.load_policy(PolicyRef(version="v0"))
    (after,) = await b.generate([conv("What is rain?")], params)
    assert with_adapter[0].text != before[0].text
    assert after[0].text == before[0].text
    # the backend serves the adapter merged; it must answer as the unmerged PEFT model does
    tok = b.tokenizer
    enc = tok(tok.apply_chat_template([{"role": "user", "content": "What is rain?"}],
                                      add_generation_prompt=True, tokenize=False),
              return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        out = peft_model.eval().generate(**enc, max_new_tokens=10, do_sample=False,
                                         pad_token_id=tok.pad_token_id)
    expected = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    assert with_adapter[0].text == expected
    # the base weights are the same object: no reload
    current_base = b.model.get_base_model()
    assert current_base is base_model_obj


async def test_switching_adapters_back_and_forth_leaves_the_base_weights_exact(
    embedded_backend, adapter_dir
):
    """Merging then unmerging rounds in bfloat16; the base must come back bit for bit."""
    import torch

    b = embedded_backend
    await b.load_policy(PolicyRef(version="v0"))

    def base_weights() -> dict[str, torch.Tensor]:
        model = b.model.get_base_model() if hasattr(b.model, "get_base_model") else b.model
        # PEFT wraps the layers it adapts on the first load: ".base_layer" joins their names
        return {n.replace(".base_layer", ""): p.detach().clone()
                for n, p in model.named_parameters() if "lora_" not in n}

    original = base_weights()
    adapter = PolicyRef(version="vswitch", adapter_path=adapter_dir)
    for _ in range(3):
        await b.load_policy(adapter)
        await b.load_policy(PolicyRef(version="v0"))
    restored = base_weights()
    assert restored.keys() == original.keys()
    changed = [n for n in original if not torch.equal(original[n], restored[n])]
    assert changed == []


async def test_full_fine_tune_is_served_and_switching_back_restores_v0(embedded_backend,
                                                                       tmp_path):
    import torch

    from selfimprove.backends.served import serve
    from selfimprove.errors import PolicyError
    from selfimprove.models import load_causal_lm, load_tokenizer

    # A "full fine-tune": the embedded model's weights with one tensor visibly changed.
    tuned = load_causal_lm(None)
    torch.manual_seed(0)
    with torch.no_grad():
        weight = tuned.model.layers[-1].mlp.down_proj.weight
        weight.add_(torch.randn_like(weight) * 0.5)
    tuned.save_pretrained(tmp_path / "model")
    load_tokenizer(None).save_pretrained(tmp_path / "model")
    v0 = PolicyRef(version="v0")
    v1 = PolicyRef(version="v1", base_model=str(tmp_path / "model"))

    b = embedded_backend
    params = SamplingParams(max_new_tokens=10)
    question = [conv("What is rain?")]
    await b.load_policy(v0)
    ((before,),) = await b.generate(question, params)
    (lp_before,) = await b.option_logprobs(question, ["Yes", "No"])

    await b.load_policy(v1)
    assert b.policy == v1
    ((served,),) = await b.generate(question, params)
    (lp_served,) = await b.option_logprobs(question, ["Yes", "No"])
    assert served.text != before.text and lp_served != lp_before
    # the backend answers exactly as the fine-tuned weights do
    tok = b.tokenizer
    enc = tok(tok.apply_chat_template([{"role": "user", "content": "What is rain?"}],
                                      add_generation_prompt=True, tokenize=False),
              return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        out = tuned.eval().generate(**enc, max_new_tokens=10, do_sample=False,
                                    pad_token_id=tok.pad_token_id)
    assert served.text == tok.decode(out[0, enc["input_ids"].shape[1]:],
                                     skip_special_tokens=True).strip()

    # an adapter trained on another base (here: on the fine-tune) is refused; v1 keeps serving
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    with pytest.raises(PolicyError, match="adapter is for"):
        await b.load_policy(PolicyRef(version="v2", base_model=str(tmp_path / "model"),
                                      adapter_path=str(adapter)))
    assert b.policy == v1
    ((still,),) = await b.generate(question, params)
    assert still.text == served.text

    await b.load_policy(v0)
    ((after,),) = await b.generate(question, params)
    (lp_after,) = await b.option_logprobs(question, ["Yes", "No"])
    assert after.text == before.text and lp_after == lp_before  # v0 exactly as before

    # bound versions called together: each answers as itself (the weights are kept loaded)
    ((a,),), ((c,),) = await asyncio.gather(serve(b, v1).generate(question, params),
                                          serve(b, v0).generate(question, params))
    assert (a.text, c.text) == (served.text, before.text)
    await b.load_policy(v0)


async def test_missing_adapter_keeps_serving_previous(embedded_backend, tmp_path):
    from selfimprove.errors import PolicyError

    b = embedded_backend
    before = b.policy
    with pytest.raises(PolicyError, match="still serving"):
        await b.load_policy(PolicyRef(version="vbad", adapter_path=str(tmp_path / "nope")))
    assert b.policy == before


async def test_sequence_nll_prefers_fluent_text(embedded_backend):
    fluent, scrambled = await embedded_backend.sequence_nll(
        ["The cat sat on the mat.", "mat the on sat cat The."]
    )
    assert 0 < fluent < scrambled


@pytest.mark.slow
async def test_two_runs_with_the_same_version_name_get_their_own_adapter(
    tmp_path, embedded_backend
):
    """The loop and its control arm both have a "v1": each must be served its own weights."""
    import torch
    from peft import LoraConfig, get_peft_model

    from selfimprove.backends.served import serve
    from selfimprove.models import load_causal_lm

    refs = []
    for arm, seed in (("loop", 1), ("control", 2)):
        torch.manual_seed(seed)
        model = get_peft_model(
            load_causal_lm("smollm2-135m-instruct"),
            LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
        )
        path = tmp_path / arm / "policies" / "v1" / "adapter"
        model.save_pretrained(path)
        refs.append(PolicyRef(version="v1", base_model="smollm2-135m-instruct",
                              adapter_path=str(path)))
    conv = [[Message(role="user", content="Name a colour.")]]
    scores = []
    for ref in (*refs, refs[0]):
        (lp,) = await serve(embedded_backend, ref).option_logprobs(conv, ["A", "B"])
        scores.append(lp["A"])
    assert scores[0] != pytest.approx(scores[1], abs=1e-4)  # each arm's own weights
    assert scores[2] == pytest.approx(scores[0], abs=1e-4)  # and back again


async def test_a_cancelled_caller_does_not_stop_the_batcher(embedded_backend):
    params = SamplingParams(max_new_tokens=8)
    task = asyncio.create_task(embedded_backend.generate([conv("Say hello.")], params))
    await asyncio.sleep(0.005)  # submitted and waiting on the batcher
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The batcher finishes the abandoned batch and goes on answering.
    ((out,),) = await asyncio.wait_for(
        embedded_backend.generate([conv("Name a fruit.")], params), timeout=120)
    assert out.text and embedded_backend._worker.is_alive()


async def test_length_checks_beside_a_running_batch_keep_it_padded(embedded_backend):
    # The tokenizer's padding setting is shared state: a length check on the event loop must
    # not switch it off under the batcher's padded encode of uneven prompts.
    import threading

    stop = threading.Event()
    errors: list[BaseException] = []
    long_conv = [conv("Tell me, in a few words, what a long and winding river looks like.")]

    def check_lengths() -> None:
        while not stop.is_set():
            embedded_backend._check_lengths(long_conv, 8)

    checker = threading.Thread(target=check_lengths)
    checker.start()
    try:
        for _ in range(5000):
            try:
                enc = embedded_backend._encode(["Hi.", "A much longer prompt than the first."])
            except ValueError as exc:  # an unpadded batch cannot become one tensor
                errors.append(exc)
                break
            assert enc["input_ids"].shape[0] == 2
    finally:
        stop.set()
        checker.join()
    assert not errors
