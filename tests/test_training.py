"""Training: config validation, data preparation, and real DPO/SFT runs on the embedded model.

The slow tests share one run directory: ``train dpo`` (v1, from the base), then ``train sft``
(v2, from v1), then DPO from v2's adapter (v3, not promoted), as a user would run them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from selfimprove.errors import ConfigError, PolicyError
from selfimprove.training.config import TrainConfig, load_train_config

BASE = "smollm2-135m-instruct"
TOPICS = ["the sea", "a cat", "rain", "coffee", "trains", "the moon", "bread", "winter"]
FILLER = (
    "Well, um, basically, you know, honestly, it is really very much sort of like, um, "
    "a thing, you know, basically, in a way."
)


# -- config ----------------------------------------------------------------------------


def test_unknown_trl_arg_is_rejected_naming_the_key() -> None:
    with pytest.raises(ValidationError, match="trl_args key 'warmup_stepz' is not an argument"):
        TrainConfig(method="dpo", trl_args={"warmup_steps": 2, "warmup_stepz": 2})
    # valid for SFT, not for DPO: checked against the method's own config class
    TrainConfig(method="sft", trl_args={"packing": True})
    with pytest.raises(ValidationError, match="'packing' is not an argument of DPOConfig"):
        TrainConfig(method="dpo", trl_args={"packing": True})


def test_trl_args_cannot_shadow_our_settings() -> None:
    with pytest.raises(ValidationError, match="'learning_rate' duplicates the setting"):
        TrainConfig(trl_args={"learning_rate": 1.0})
    with pytest.raises(
        ValidationError,
        match="'activation_checkpointing' duplicates the setting 'gradient_checkpointing'",
    ):
        TrainConfig(trl_args={"activation_checkpointing": True})
    with pytest.raises(ValidationError, match="'output_dir' is set by selfimprove"):
        TrainConfig(trl_args={"output_dir": "/elsewhere"})


def test_trl_kwargs_reach_the_trl_config(tmp_path: Path) -> None:
    from trl import DPOConfig

    from selfimprove.training.common import trl_args

    cfg = TrainConfig(max_steps=5, beta=0.2, trl_args={"loss_type": ["ipo"], "warmup_steps": 1})
    args = DPOConfig(**trl_args(cfg, tmp_path, progress=False))
    assert (args.max_steps, args.beta, args.loss_type, args.warmup_steps) == (5, 0.2, ["ipo"], 1)
    assert args.learning_rate == 2e-4 and args.bf16 is False and args.disable_tqdm
    assert args.gradient_checkpointing is False, "TRL's default (on) is overridden"
    assert TrainConfig(lora=None).effective_learning_rate == 1e-5


def test_bf16_asked_for_on_a_cpu_builds_a_trl_config(tmp_path: Path) -> None:
    """transformers refuses bf16 without a GPU unless told to train on the CPU."""
    import torch
    from trl import DPOConfig

    from selfimprove.training.common import trl_args

    if torch.cuda.is_available():
        pytest.skip("a GPU trains bf16 on itself")
    args = DPOConfig(**trl_args(TrainConfig(trl_args={"bf16": True}), tmp_path, progress=False))
    assert args.bf16 is True and args.use_cpu is True


@pytest.mark.parametrize(("rows", "steps"), [(4, 3), (32, 24), (100, 24), (1, 1), (0, 1)])
def test_max_epochs_caps_max_steps_by_the_rows(rows: int, steps: int) -> None:
    cfg = TrainConfig(max_steps=24, max_epochs=3, per_device_train_batch_size=4,
                      gradient_accumulation_steps=1)
    assert cfg.for_rows(rows).max_steps == steps
    assert TrainConfig(max_steps=24).for_rows(4).max_steps == 24  # no cap unless asked
    assert TrainConfig(max_epochs=3).for_rows(4).max_steps is None  # epochs decide already


def test_train_policy_trains_and_records_the_capped_steps(tmp_path: Path) -> None:
    import datasets

    from selfimprove.registry import PolicyRegistry
    from selfimprove.training.policy import train_policy
    from tests.scripted_cycle import fake_trainer

    seen: list[TrainConfig] = []

    def trainer(method, base_model, parent, dataset, cfg, output_dir, progress=False):
        seen.append(cfg)
        return fake_trainer(method, base_model, parent, dataset, cfg, output_dir, progress)

    registry = PolicyRegistry(tmp_path, base_model="some/model")
    rows = datasets.Dataset.from_list(pair_rows()[:2])
    cfg = TrainConfig(max_steps=24, max_epochs=3, per_device_train_batch_size=4,
                      gradient_accumulation_steps=1)
    ref, _ = train_policy(registry, rows, cfg, progress=False, trainer=trainer)
    assert seen[0].max_steps == 2  # 3 passes over 2 rows, 4 a step
    assert registry.record(ref.version).train_config["max_steps"] == 2


def test_yaml_config_errors_name_file_line_and_key(tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text("max_steps: 3\ntrl_args:\n  warmup_steps: 1\n  bogus_knob: 2\n")
    with pytest.raises(ConfigError, match="bogus_knob") as info:
        load_train_config(path, "dpo")
    assert info.value.path == str(path) and info.value.line == 2
    assert info.value.field == "trl_args"

    path.write_text("method: sft\nmax_steps: 3\n")
    with pytest.raises(ConfigError, match="for 'sft', not 'dpo'"):
        load_train_config(path, "dpo")
    cfg = load_train_config(path, "sft", {"max_steps": 7, "learning_rate": None})
    assert (cfg.method, cfg.max_steps, cfg.learning_rate) == ("sft", 7, None)
    # a bad value from a flag names the flag, not the file
    with pytest.raises(ConfigError) as info:
        load_train_config(path, "sft", {"learning_rate": -1.0})
    assert (info.value.path, info.value.field) == ("--learning-rate", None)
    assert "greater than 0" in info.value.detail
    with pytest.raises(ConfigError) as info:
        load_train_config(None, "dpo", {"max_steps": 0})
    assert info.value.path == "--max-steps"


# -- data preparation ------------------------------------------------------------------


def pair_rows() -> list[dict[str, Any]]:
    """Pairs where the chosen reply is short and the rejected one is filler."""
    return [
        {
            "prompt": [{"role": "user", "content": f"Describe {t} in one short sentence."}],
            "chosen": [{"role": "assistant", "content": f"{t.capitalize()} is calm."}],
            "rejected": [{"role": "assistant", "content": FILLER}],
        }
        for t in TOPICS
    ]


def sft_rows() -> list[dict[str, Any]]:
    return [
        {
            "messages": [
                {"role": "user", "content": f"Name a colour for {t}."},
                {"role": "assistant", "content": f"Teal, for {t}."},
            ]
        }
        for t in TOPICS
    ]


def test_prepare_dataset_keeps_only_trl_columns() -> None:
    import datasets

    from selfimprove.training.common import prepare_dataset

    extra = {"strategy": "revision", "cycle": 1, "margin": 0.5, "principle_ids": ["a", "b"]}
    pairs = datasets.Dataset.from_list([{**r, **extra} for r in pair_rows()])
    assert prepare_dataset(pairs, "dpo").column_names == ["prompt", "chosen", "rejected"]

    sft = prepare_dataset(datasets.Dataset.from_list([{**r, **extra} for r in sft_rows()]), "sft")
    assert sft.column_names == ["prompt", "completion"]
    assert sft[0]["prompt"] == [{"role": "user", "content": "Name a colour for the sea."}]
    assert sft[0]["completion"] == [{"role": "assistant", "content": "Teal, for the sea."}]

    missing = r"lacks the column\(s\) \['prompt', 'chosen', 'rejected'\]; it has \['messages'\]"
    with pytest.raises(ValueError, match=missing):
        prepare_dataset(datasets.Dataset.from_list(sft_rows()), "dpo")
    bad = datasets.Dataset.from_list([{"messages": [{"role": "user", "content": "hi"}]}])
    with pytest.raises(ValueError, match="must end with an assistant message"):
        prepare_dataset(bad, "sft")


def test_summarise_averages_reward_stats_over_logged_steps() -> None:
    from selfimprove.training.common import summarise

    history = [
        {"loss": 0.69, "rewards/margins": 0.0, "rewards/accuracies": 0.0, "step": 1},
        {"loss": 0.40, "rewards/margins": 1.0, "rewards/accuracies": 1.0, "step": 2},
        {"train_runtime": 12.5, "train_loss": 0.55, "step": 2},
    ]
    metrics = summarise(history, steps=2, rows=8)
    assert metrics == {
        "steps": 2.0,
        "rows": 8.0,
        "train_loss": 0.55,
        "runtime_s": 12.5,
        "first_loss": 0.69,
        "final_loss": 0.40,
        "rewards_margins": 0.5,
        "rewards_accuracies": 0.5,
    }


def test_parent_on_another_base_is_refused() -> None:
    from selfimprove.training.common import build_model
    from selfimprove.types import PolicyRef

    parent = PolicyRef(version="v3", base_model="org/other", adapter_path="/x")
    with pytest.raises(PolicyError, match="policy v3 applies to base model 'org/other'"):
        build_model(BASE, parent, TrainConfig())


# -- train_policy and the entry points (a stand-in trainer: no model is loaded) -------------


def fake_trainer(calls: list[dict[str, Any]], fail: bool = False):
    """A trainer that writes what a LoRA run writes into the staging directory."""
    from selfimprove.training.common import TrainResult

    def trainer(method, base_model, parent, dataset, cfg, output_dir, progress):
        calls.append({"method": method, "base": base_model, "parent": parent.version,
                      "rows": len(dataset), "dir": Path(output_dir)})
        adapter = Path(output_dir) / "adapter"
        adapter.mkdir()
        (adapter / "adapter_config.json").write_text(
            json.dumps({"base_model_name_or_path": base_model, "peft_type": "LORA"})
        )
        if fail:
            raise RuntimeError("out of memory")
        (adapter / "adapter_model.safetensors").write_bytes(b"weights")
        return TrainResult(adapter_dir=adapter, metrics={"final_loss": 0.25, "steps": 2.0})

    return trainer


def test_train_policy_commits_the_cycle_that_trained_it(tmp_path: Path) -> None:
    import datasets

    from selfimprove.registry import PolicyRegistry
    from selfimprove.training import train_policy

    registry = PolicyRegistry(tmp_path)
    calls: list[dict[str, Any]] = []
    data = [{"name": "c1.parquet", "rows": 8, "kind": "pairs"}]
    ref, result = train_policy(
        registry, datasets.Dataset.from_list(pair_rows()), TrainConfig(max_steps=2), data=data,
        cycle=3, trainer=fake_trainer(calls),
    )
    assert calls[0]["method"] == "dpo" and calls[0]["parent"] == "v0" and calls[0]["rows"] == 8
    assert calls[0]["dir"].name.startswith(".staging-")
    assert ref.version == "v1" and registry.current().version == "v0", "not promoted"
    assert result.adapter_dir == tmp_path / "policies" / "v1" / "adapter"
    record = registry.record("v1")
    assert (record.cycle, record.method, record.parent, record.status) == (
        3, "dpo", "v0", "candidate")
    assert record.metrics == {"final_loss": 0.25, "steps": 2.0}
    assert record.train_config["max_steps"] == 2 and record.data[0].rows == 8
    assert registry.trained_in(3, "dpo") == "v1" and registry.trained_in(3, "sft") is None
    # from a given parent, promoted, outside any cycle
    sft = TrainConfig(method="sft")
    ref2, _ = train_policy(registry, datasets.Dataset.from_list(sft_rows()), sft, parent="v1",
                           promote=True, trainer=fake_trainer(calls))
    assert registry.current() == ref2 and registry.record(ref2.version).cycle is None
    assert calls[1]["parent"] == "v1"


def test_a_failed_training_run_leaves_no_version(tmp_path: Path) -> None:
    import datasets

    from selfimprove.registry import PolicyRegistry
    from selfimprove.training import train_policy

    registry = PolicyRegistry(tmp_path)
    calls: list[dict[str, Any]] = []
    with pytest.raises(RuntimeError, match="out of memory"):
        train_policy(registry, datasets.Dataset.from_list(pair_rows()), TrainConfig(), cycle=1,
                     trainer=fake_trainer(calls, fail=True))
    assert not calls[0]["dir"].exists()
    assert [r.version for r in registry.versions()] == ["v0"]
    assert registry.trained_in(1, "dpo") is None
    assert not list((tmp_path / "policies").glob(".staging-*"))


def _option_strings(parser) -> set[str]:
    return {opt for action in parser._actions for opt in action.option_strings} - {"-h", "--help"}


def test_cli_and_module_share_the_training_flags() -> None:
    import argparse

    from selfimprove.cli import build_parser
    from selfimprove.training.policy import _parser, add_train_arguments, run_training

    shared = argparse.ArgumentParser()
    add_train_arguments(shared)
    flags = _option_strings(shared)
    assert {"--config", "--max-steps", "--learning-rate", "--parent", "--promote",
            "--no-promote", "--no-progress"} <= flags
    # --cycle is the run's to pass (`launch:`); a person training by hand names no cycle.
    assert _option_strings(_parser()) == flags | {"--run-dir", "--method", "--cycle"}
    cli = build_parser()
    for method in ("dpo", "sft"):
        args = cli.parse_args(["train", method, "runs/x", "--max-steps", "3", "--no-promote"])
        assert (args.method, args.max_steps, args.promote) == (method, 3, False)
        assert args.run_dir == Path("runs/x")
    module = _parser().parse_args(["--run-dir", "runs/x", "--method", "sft", "--max-steps", "3",
                                   "--no-promote"])
    assert module.cycle is None
    assert {k: v for k, v in vars(module).items() if k != "cycle"} == {
        k: v for k, v in vars(args).items() if k in vars(module)}
    assert args.func is run_training  # one flow for `selfimprove train` and the module


def test_training_without_rows_fails_before_loading_a_model(tmp_path: Path, capsys) -> None:
    from selfimprove.errors import StoreError
    from selfimprove.store import PreferenceStore
    from selfimprove.training.policy import load_store_data

    with pytest.raises(StoreError, match="no preference store"):
        load_store_data(tmp_path, "dpo")
    PreferenceStore(tmp_path, heldout_fraction=0.0)
    with pytest.raises(StoreError, match="no rows to train DPO on"):
        load_store_data(tmp_path, "dpo")
    assert cli("train", "sft", str(tmp_path), "--no-progress") == 2
    assert "no rows to train SFT on" in capsys.readouterr().err
    assert not (tmp_path / "policies").exists() or not list(
        (tmp_path / "policies").glob("v[1-9]*"))


def test_load_store_data_names_the_shards_of_its_kind(run_dir: Path) -> None:
    from selfimprove.training.policy import load_store_data

    pairs, used = load_store_data(run_dir, "dpo")
    assert len(pairs) == 8 and [u.model_dump() for u in used] == [
        {"name": "c0.parquet", "rows": 8, "kind": "pairs"}
    ]
    sft, used = load_store_data(run_dir, "sft")
    assert len(sft) == 8 and [u.kind for u in used] == ["sft"]


def test_load_store_data_leaves_out_the_rows_of_named_strategies(tmp_path: Path, capsys) -> None:
    from selfimprove.errors import StoreError
    from selfimprove.store import PreferenceStore, content_hash
    from selfimprove.training.policy import load_store_data

    store = PreferenceStore(tmp_path, heldout_fraction=0.0)
    for shard, first, strategies in (("c1", 0, ["revision", "bare_phrases", "revision"]),
                                     ("c2", 3, ["bare_phrases", "best_of_n"])):
        rows = []
        for i, strategy in enumerate(strategies, start=first):
            row = {**pair_rows()[i], **_provenance(i), "decided_by": "checks",
                   "strategy": strategy, "prompt_id": f"{shard}-{i}"}
            rows.append({**row, "content_hash": content_hash(row)})
        store.append(rows, [], shard_id=shard)
    pairs, used = load_store_data(tmp_path, "dpo", ["bare_phrases"])
    assert list(pairs["strategy"]) == ["revision", "revision", "best_of_n"]
    assert [(u.name, u.rows) for u in used] == [
        ("c1.parquet without bare_phrases", 2), ("c2.parquet without bare_phrases", 1)]
    # a strategy the store does not hold is named, not silently ignored (a typo trains on all)
    with pytest.raises(StoreError, match=r"no DPO rows of strategy 'bare_phrase' to leave out "
                                         r"\(the rows' strategies: bare_phrases, best_of_n, "
                                         r"revision\)"):
        load_store_data(tmp_path, "dpo", ["bare_phrase"])
    with pytest.raises(StoreError, match="no rows to train DPO on once those strategies"):
        load_store_data(tmp_path, "dpo", ["revision", "bare_phrases", "best_of_n"])
    assert cli("train", "dpo", str(tmp_path), "--exclude-strategy", "nope", "--no-progress") == 2
    assert "no DPO rows of strategy 'nope'" in capsys.readouterr().err


# -- real training on the embedded model -------------------------------------------------


def _provenance(i: int) -> dict[str, Any]:
    return {
        "strategy": "revision",
        "prompt_id": f"p{i}",
        "constitution": "concise",
        "constitution_hash": "0" * 64,
        "principle_ids": ["brevity"],
        "check_results": "{}",
        "p_b_order1": 0.9,
        "p_b_order2": 0.8,
        "margin": 0.7,
        "critiques": ["too long"],
        "policy_version": "v0",
        "cycle": 0,
        "created_at": "2025-01-01T00:00:00+00:00",
    }


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run whose store holds the 8 pairs and 8 SFT rows (no held-out split)."""
    from selfimprove.store import PreferenceStore, content_hash

    root = tmp_path_factory.mktemp("run")
    pairs, sft = [], []
    for i, row in enumerate(pair_rows()):
        row = {**row, **_provenance(i), "decided_by": "judge"}
        pairs.append({**row, "content_hash": content_hash(row)})
    for i, row in enumerate(sft_rows()):
        row = {**row, **_provenance(i)}
        sft.append({**row, "content_hash": content_hash(row)})
    PreferenceStore(root, heldout_fraction=0.0).append(pairs, sft, shard_id="c0")
    return root


def write_config(path: Path, **fields: Any) -> Path:
    base = {"max_length": 128, "gradient_accumulation_steps": 1, "report_to": ["tensorboard"]}
    path.write_text(json.dumps({**base, **fields}))  # JSON is YAML
    return path


def cli(*argv: str) -> int:
    from selfimprove.cli import main

    return main(list(argv))


@pytest.fixture(scope="module")
def dpo_v1(run_dir: Path, tmp_path_factory) -> Path:
    cfg = write_config(
        tmp_path_factory.mktemp("cfg") / "dpo.yaml",
        max_steps=2,
        per_device_train_batch_size=4,
        learning_rate=5e-4,
    )
    assert cli("train", "dpo", str(run_dir), "--config", str(cfg), "--no-progress") == 0
    return run_dir / "policies" / "v1"


@pytest.fixture(scope="module")
def sft_v2(run_dir: Path, dpo_v1: Path, tmp_path_factory) -> Path:
    cfg = write_config(
        tmp_path_factory.mktemp("cfg") / "sft.yaml",
        max_steps=3,
        per_device_train_batch_size=4,
        learning_rate=5e-4,
    )
    assert cli("train", "sft", str(run_dir), "--config", str(cfg), "--no-progress") == 0
    return run_dir / "policies" / "v2"


def reply_logprobs(model, tokenizer, items: list[tuple[list[dict], list[dict]]]) -> list[float]:
    """Sum of each reply's token log-probabilities given its prompt, under the chat template.

    One padded forward pass for all items (far fewer tiny ops than one pass each).
    """
    import torch

    seqs, starts = [], []
    for prompt, reply in items:
        prompt_ids = tokenizer.apply_chat_template(
            prompt, add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"]
        full_ids = tokenizer.apply_chat_template(prompt + reply, tokenize=True, return_dict=True)[
            "input_ids"
        ]
        assert full_ids[: len(prompt_ids)] == prompt_ids
        seqs.append(full_ids)
        starts.append(len(prompt_ids))
    width = max(map(len, seqs))
    ids = torch.tensor([q + [tokenizer.pad_token_id] * (width - len(q)) for q in seqs])
    mask = torch.tensor([[1] * len(q) + [0] * (width - len(q)) for q in seqs])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    token_lp = torch.log_softmax(logits, dim=-1).gather(2, ids[:, 1:, None])[..., 0]
    return [
        float(token_lp[i, start - 1 : len(q) - 1].sum())
        for i, (q, start) in enumerate(zip(seqs, starts, strict=True))
    ]


def margins(model, tokenizer) -> list[float]:
    rows = pair_rows()
    chosen = reply_logprobs(model, tokenizer, [(r["prompt"], r["chosen"]) for r in rows])
    rejected = reply_logprobs(model, tokenizer, [(r["prompt"], r["rejected"]) for r in rows])
    return [c - r for c, r in zip(chosen, rejected, strict=True)]


@pytest.mark.slow
def test_dpo_moves_the_policy_towards_chosen(dpo_v1: Path) -> None:
    from peft import PeftModel
    from safetensors.torch import load_file

    from selfimprove.models import load_causal_lm, load_tokenizer
    from selfimprove.registry import PolicyRegistry

    ref = PolicyRegistry(dpo_v1.parent.parent).current()
    assert ref.version == "v1" and ref.adapter_path == str(dpo_v1 / "adapter")
    tokenizer = load_tokenizer(BASE)
    model = PeftModel.from_pretrained(load_causal_lm(BASE), ref.adapter_path)
    model.eval()
    trained = margins(model, tokenizer)
    with model.disable_adapter():  # the DPO reference: the base, adapter disabled
        base = margins(model, tokenizer)
    gains = [t - b for t, b in zip(trained, base, strict=True)]
    assert sum(gains) / len(gains) > 1.0, (trained, base)
    assert sum(g > 0 for g in gains) >= 7, gains

    weights = load_file(str(dpo_v1 / "adapter" / "adapter_model.safetensors"))
    lora_b = [t for name, t in weights.items() if "lora_B" in name]
    assert lora_b and any(t.abs().max() > 0 for t in lora_b), "lora_B must leave zero init"


@pytest.mark.slow
def test_dpo_version_records_data_metrics_and_logs(dpo_v1: Path) -> None:
    record = json.loads((dpo_v1 / "policy.json").read_text())
    assert (record["parent"], record["method"], record["status"]) == ("v0", "dpo", "promoted")
    assert record["data"] == [{"name": "c0.parquet", "rows": 8, "kind": "pairs"}]
    assert record["train_config"]["max_steps"] == 2
    metrics = record["metrics"]
    assert metrics["steps"] == 2 and metrics["rows"] == 8
    assert metrics["final_loss"] < metrics["first_loss"] == pytest.approx(0.6931, abs=1e-3)
    assert metrics["rewards_accuracies"] > 0 and "runtime_s" in metrics
    config = json.loads((dpo_v1 / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == BASE
    assert list((dpo_v1 / "tb").glob("events.out.tfevents.*")), "TensorBoard logs"
    assert not list(dpo_v1.parent.glob(".staging-*"))


@pytest.mark.slow
def test_sft_lowers_the_loss_on_its_rows(sft_v2: Path) -> None:
    from peft import PeftModel

    from selfimprove.models import load_causal_lm, load_tokenizer

    record = json.loads((sft_v2 / "policy.json").read_text())
    assert (record["parent"], record["method"], record["status"]) == ("v1", "sft", "promoted")
    tokenizer = load_tokenizer(BASE)

    def mean_nll(adapter: Path) -> float:
        model = PeftModel.from_pretrained(load_causal_lm(BASE), str(adapter))
        model.eval()
        items = [(r["messages"][:1], r["messages"][1:]) for r in sft_rows()]
        return -sum(reply_logprobs(model, tokenizer, items)) / len(items)

    before = mean_nll(sft_v2.parent / "v1" / "adapter")  # the parent policy
    after = mean_nll(sft_v2 / "adapter")
    assert after < before - 0.5, (before, after)


@pytest.mark.slow
def test_dpo_from_a_trained_adapter_uses_the_parent_as_reference(
    run_dir: Path, sft_v2: Path
) -> None:
    import datasets
    from safetensors.torch import load_file

    from selfimprove.registry import PolicyRegistry
    from selfimprove.training import train_policy

    registry = PolicyRegistry(run_dir)
    cfg = TrainConfig(
        max_steps=1,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=1,
        max_length=128,
        report_to=[],
    )
    ref, result = train_policy(
        registry, datasets.Dataset.from_list(pair_rows()[:2]), cfg, parent="v2", progress=False
    )
    assert ref.version == "v3" and registry.current().version == "v2", "not promoted"
    # Before the first update the policy equals its reference, the parent v2 (not the base,
    # which differs from v2 after two rounds of training): the rewards start at zero.
    first = result.log_history[0]
    assert first["rewards/chosen"] == pytest.approx(0.0, abs=1e-4)
    assert first["rewards/margins"] == pytest.approx(0.0, abs=1e-4)
    adapter = Path(ref.adapter_path)
    assert not (adapter / "ref").exists(), "the frozen reference copy is not saved"
    new, old = (
        load_file(str(d / "adapter_model.safetensors")) for d in (adapter, sft_v2 / "adapter")
    )
    assert new.keys() == old.keys()
    assert any(not new[k].equal(old[k]) for k in new)


@pytest.mark.slow
def test_module_entry_point_commits_a_candidate(run_dir: Path, dpo_v1: Path) -> None:
    """``python -m selfimprove.training`` (what ``accelerate launch -m`` runs), unpromoted."""
    import subprocess
    import sys

    from selfimprove.registry import PolicyRegistry

    before = PolicyRegistry(run_dir)
    current, last = before.current_version(), before.versions()[-1].number
    cfg = write_config(run_dir.parent / "entry.yaml", per_device_train_batch_size=2, report_to=[])
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "selfimprove.training",
            "--run-dir",
            str(run_dir),
            "--method",
            "sft",
            "--config",
            str(cfg),
            "--max-steps",
            "1",
            "--no-promote",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    version = f"v{last + 1}"
    assert proc.stdout.strip().splitlines()[-1].startswith(f"{version} (candidate): sft from")
    after = PolicyRegistry(run_dir)
    assert after.current_version() == current
    record = after.versions()[-1]
    assert (record.version, record.status, record.metrics["steps"]) == (version, "candidate", 1)


def launch_ctx(run_dir: Path, launch: dict[str, Any]):
    from types import SimpleNamespace

    from selfimprove.config import RunConfig
    from selfimprove.registry import PolicyRegistry

    sft = TrainConfig(method="sft", max_steps=1, per_device_train_batch_size=2,
                      gradient_accumulation_steps=1, max_length=64, report_to=[])
    cfg = RunConfig(launch=launch, sft=sft)
    return SimpleNamespace(cfg=cfg, run=SimpleNamespace(path=run_dir),
                           registry=PolicyRegistry(run_dir))


@pytest.mark.slow
def test_a_cycles_training_step_runs_under_accelerate_launch_on_two_cpu_processes(
    run_dir: Path, dpo_v1: Path
) -> None:
    """``launch:`` in a run config: the cycle's training step runs as two gloo processes and
    the candidate is committed as the in-process step commits it (this cycle's, unpromoted)."""
    from selfimprove.improvement_cycle.train import _train_one

    ctx = launch_ctx(run_dir, {"num_processes": 2, "cpu": True})
    parent = ctx.registry.current()
    version, metrics = _train_one(ctx, 7, "sft", parent)
    record = ctx.registry.record(version)
    assert (record.cycle, record.status, record.parent, record.method) == (
        7, "candidate", parent.version, "sft")
    assert metrics["processes"] == 2 and metrics["steps"] == 1
    assert ctx.registry.current_version() == parent.version  # the gate decides, not training
    assert ctx.registry.trained_in(7, "sft") == version  # a resumed cycle finds it


def test_a_failed_launch_names_the_exit_and_commits_nothing(run_dir: Path) -> None:
    from selfimprove.errors import TrainingError
    from selfimprove.improvement_cycle.train import _train_one

    ctx = launch_ctx(run_dir, {"num_processes": 1, "cpu": True,
                               "extra_args": ["--no-such-flag"]})
    before = [r.version for r in ctx.registry.versions()]
    with pytest.raises(TrainingError, match=r"SFT under accelerate launch failed \(exit 2\)"):
        _train_one(ctx, 8, "sft", ctx.registry.current())
    assert [r.version for r in ctx.registry.versions()] == before


def test_a_missing_accelerate_config_is_a_config_error(tmp_path: Path) -> None:
    from selfimprove.config import RunConfig, load_config

    path = tmp_path / "run.yaml"
    path.write_text("cycles: 1\nlaunch:\n  num_processes: 2\n  config_file: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="accelerate config 'nowhere.yaml' not found") as err:
        load_config(path, RunConfig)
    assert (err.value.line, err.value.field) == (4, "launch.config_file")


@pytest.mark.slow
def test_full_fine_tune_saves_a_model_the_registry_serves(tmp_path: Path) -> None:
    """``lora: null``: the whole model is trained and saved; its version is its model dir."""
    import datasets

    from selfimprove.models import load_causal_lm
    from selfimprove.registry import PolicyRegistry
    from selfimprove.training import train_policy

    registry = PolicyRegistry(tmp_path)
    cfg = TrainConfig(
        method="sft",
        lora=None,
        max_steps=1,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=1,
        max_length=64,
        report_to=[],
    )
    ref, result = train_policy(
        registry, datasets.Dataset.from_list(sft_rows()[:2]), cfg, promote=True, progress=False
    )
    assert ref.adapter_path is None and ref.base_model == str(tmp_path / "policies/v1/model")
    assert registry.current() == ref and result.metrics["steps"] == 1
    base, trained = load_causal_lm(BASE), load_causal_lm(ref.base_model)
    changed = [
        name
        for (name, a), (_, b) in zip(
            base.named_parameters(), trained.named_parameters(), strict=True
        )
        if not a.equal(b)
    ]
    assert len(changed) > 10, "a full fine-tune updates the base weights themselves"
