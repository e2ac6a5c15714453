"""The preference store: atomic shards, idempotency, dedup, held-out split, export, CLI, TRL."""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from selfimprove.errors import StoreError
from selfimprove.store import (
    PAIR_COLUMNS,
    SFT_COLUMNS,
    PreferenceStore,
    is_heldout,
    pair_schema,
    seed_salt,
    sft_schema,
)

WRITER = Path(__file__).with_name("store_writer.py")


def _load_writer():
    spec = importlib.util.spec_from_file_location("store_writer", WRITER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


W = _load_writer()


def store_at(path: Path, fraction: float = 0.0, **kw) -> PreferenceStore:
    return PreferenceStore(path, heldout_fraction=fraction, **kw)


def test_meta_is_fixed_at_creation(tmp_path):
    store = store_at(tmp_path, 0.3, salt="pepper")
    meta = json.loads((tmp_path / "store" / "meta.json").read_text())
    assert (meta["heldout_fraction"], meta["salt"]) == (0.3, "pepper")
    again = PreferenceStore(tmp_path)
    assert (again.heldout_fraction, again.salt) == (0.3, "pepper")
    with pytest.raises(StoreError, match="heldout_fraction=0.3"):
        PreferenceStore(tmp_path, heldout_fraction=0.2)
    with pytest.raises(StoreError, match="salt"):
        PreferenceStore(tmp_path, salt="other")
    with pytest.raises(StoreError, match="no preference store"):
        PreferenceStore(tmp_path / "elsewhere", readonly=True)
    with pytest.raises(StoreError, match=r"\[0, 1\)"):
        PreferenceStore(tmp_path / "bad", heldout_fraction=1.0)
    assert store.pairs_dataset().num_rows == 0


def test_a_lost_meta_json_is_not_recreated_next_to_shards(tmp_path):
    store = store_at(tmp_path, 0.0, salt="pepper")
    pairs, sft = W.shard_rows(0)
    store.append(pairs, sft, "cycle0-batch0")
    meta = tmp_path / "store" / "meta.json"
    meta.unlink()
    with pytest.raises(StoreError, match="meta.json is missing, but the store holds shards"):
        PreferenceStore(tmp_path, heldout_fraction=0.0, salt="other")  # e.g. the seed changed
    assert not meta.exists()  # no new split was drawn


def test_store_metadata_without_a_key_names_it(tmp_path):
    store_at(tmp_path, 0.3, salt="pepper")
    (tmp_path / "store" / "meta.json").write_text('{"salt": "pepper"}')
    with pytest.raises(StoreError, match="meta.json: store metadata without its key "
                       "'heldout_fraction'"):
        PreferenceStore(tmp_path)


def test_new_store_without_a_salt_uses_seed_0s(tmp_path):
    """Reproducible: two fresh stores over the same prompts hold out the same ones."""
    a, b = PreferenceStore(tmp_path / "a"), PreferenceStore(tmp_path / "b")
    assert a.heldout_fraction == 0.2
    assert a.salt == b.salt == seed_salt(0)
    prompts = [f"question number {i}" for i in range(200)]
    assert a.split_prompts(prompts) == b.split_prompts(prompts)
    assert json.loads((tmp_path / "a" / "store" / "meta.json").read_text())["salt"] == seed_salt(0)


def test_seed_salt_and_is_heldout_fix_the_split_without_a_store():
    assert seed_salt(3) == seed_salt(3)
    assert len({seed_salt(s) for s in range(5)}) == 5
    prompts = [f"question number {i}" for i in range(400)]
    held = [p for p in prompts if is_heldout(p, seed_salt(1), 0.25)]
    assert 60 <= len(held) <= 140  # 25% of 400, loosely
    assert held != [p for p in prompts if is_heldout(p, seed_salt(2), 0.25)]
    # surrounding whitespace does not move a prompt across the split
    assert all(is_heldout(f"  {p}\n", seed_salt(1), 0.25) for p in held)
    assert not any(is_heldout(p, seed_salt(1), 0.0) for p in prompts)


def test_store_split_is_the_module_split(tmp_path):
    store = store_at(tmp_path, 0.3, salt=seed_salt(7))
    prompts = [f"question number {i}" for i in range(200)]
    assert [store.is_heldout(p) for p in prompts] == [
        is_heldout(p, seed_salt(7), 0.3) for p in prompts
    ]


def test_heldout_split_is_salted_and_stable(tmp_path):
    prompts = [f"question number {i}" for i in range(400)]
    store = store_at(tmp_path / "one", 0.25, salt="s1")
    train, heldout = store.split_prompts(prompts)
    assert sorted(train + heldout) == sorted(prompts)
    assert all(store.is_heldout(p) for p in heldout)
    assert not any(store.is_heldout(p) for p in train)
    assert 60 <= len(heldout) <= 140  # 25% of 400, loosely
    assert PreferenceStore(tmp_path / "one").split_prompts(prompts) == (train, heldout)
    other = store_at(tmp_path / "two", 0.25, salt="s2")
    assert other.split_prompts(prompts)[1] != heldout
    items = [{"text": p} for p in prompts]
    assert store.split_prompts(items, key=lambda d: d["text"])[1] == [
        {"text": p} for p in heldout
    ]


def test_heldout_prompt_is_rejected_and_nothing_written(tmp_path):
    store = store_at(tmp_path, 0.5, salt="fixed")
    shard = next(i for i in range(100) if store.is_heldout(W.prompt_text(i, 0)))
    pairs, sft = W.shard_rows(shard)
    with pytest.raises(StoreError, match=f"prompt_id='w{shard:05d}-0'.*held-out"):
        store.append(pairs, sft, "s0")
    # SFT rows are checked as well, and a mixed batch is refused as a whole.
    clean_shard = next(
        i for i in range(100) if not any(store.is_heldout(W.prompt_text(i, j)) for j in range(4))
    )
    clean_pairs, _ = W.shard_rows(clean_shard)
    with pytest.raises(StoreError, match="held-out"):
        store.append(clean_pairs, sft, "s1")
    assert store.shards() == []
    assert [p.name for p in (tmp_path / "store" / "pairs").iterdir()] == []
    assert [p.name for p in (tmp_path / "store" / "sft").iterdir()] == []


def test_append_is_idempotent_per_shard_id(tmp_path):
    store = store_at(tmp_path)
    pairs, sft = W.shard_rows(0)
    first = store.append(pairs, sft, "cycle0-batch0", dropped={"tie": 2, "abstain": 1})
    assert (first.pairs_written, first.sft_written, first.skipped) == (4, 3, [])
    again = store.append(pairs, sft, "cycle0-batch0", dropped={"tie": 2, "abstain": 1})
    assert again.already_present and again.pairs_written == again.sft_written == 0
    assert store.pairs_dataset().num_rows == 4 and store.sft_dataset().num_rows == 3
    # The drop log was recorded once.
    assert store.stats()["dropped"] == {"tie": 2, "abstain": 1}


def test_interrupted_append_completes_the_missing_kind(tmp_path):
    store = store_at(tmp_path)
    pairs, sft = W.shard_rows(0)
    # As if the writer died after the SFT shard: no pair shard, no completed log entry.
    store.append([], sft, "b0")
    assert not (tmp_path / "store" / "pairs" / "b0.parquet").exists()
    (tmp_path / "store" / "log" / "b0.json").unlink()
    result = store.append(pairs, sft, "b0", dropped={"tie": 1})
    assert result.skipped == ["sft"] and result.pairs_written == 4
    assert store.append(pairs, sft, "b0").already_present
    assert [e["dropped"] for e in store.harvest_log()] == [{"tie": 1}]
    assert store.pairs_dataset().num_rows == 4 and store.sft_dataset().num_rows == 3


def test_dedup_across_shards_and_within_batch(tmp_path):
    store = store_at(tmp_path)
    pairs0, sft0 = W.shard_rows(0)
    pairs1, sft1 = W.shard_rows(1)
    store.append(pairs0, sft0, "a")
    res = store.append(pairs0[:2] + pairs1 + [pairs1[0]], sft0[:1] + sft1, "b")
    assert (res.pairs_written, res.duplicate_pairs) == (4, 3)
    assert (res.sft_written, res.duplicate_sft) == (3, 1)
    hashes = store.pairs_dataset()["content_hash"]
    assert len(hashes) == len(set(hashes)) == 8
    assert store.row_hashes("pairs") == set(hashes)
    assert store.row_hashes() == set(hashes) | set(store.sft_dataset()["content_hash"])
    assert store.stats()["duplicates"] == 4
    # A fresh instance dedups against what is on disk, not just what it wrote itself.
    res2 = PreferenceStore(tmp_path).append(pairs1, [], "c")
    assert (res2.pairs_written, res2.duplicate_pairs) == (0, 4)


def test_malformed_rows_are_refused(tmp_path):
    store = store_at(tmp_path)
    pairs, _ = W.shard_rows(0)
    with pytest.raises(StoreError, match="shard id"):
        store.append(pairs, [], ".tmp-sneaky")
    with pytest.raises(StoreError, match="shard id"):
        store.append(pairs, [], "../escape")
    missing = {k: v for k, v in pairs[0].items() if k != "margin"}
    with pytest.raises(StoreError, match=r"missing columns \['margin'\]"):
        store.append([missing], [], "x")
    edited = {**pairs[1], "chosen": [{"role": "assistant", "content": "edited"}]}
    with pytest.raises(StoreError, match="content_hash does not match"):
        store.append([edited], [], "x")
    wrong_type = {**pairs[2], "cycle": "three"}
    with pytest.raises(StoreError, match="do not fit the schema"):
        store.append([wrong_type], [], "x")
    assert store.shards() == []


def test_shards_keep_one_schema_and_load_with_datasets(tmp_path):
    import datasets

    store = store_at(tmp_path)
    for i in range(3):
        pairs, sft = W.shard_rows(i)
        store.append(pairs, sft if i != 1 else [], f"s{i}")
    store.append([], [], "empty")  # an empty batch writes no shard (and is logged)
    assert [e["shard_id"] for e in store.harvest_log()] == ["s0", "s1", "s2", "empty"]
    files = {k: sorted((tmp_path / "store" / k).glob("*.parquet")) for k in ("pairs", "sft")}
    assert [len(files["pairs"]), len(files["sft"])] == [3, 2]
    assert all(pq.read_schema(f).remove_metadata() == pair_schema() for f in files["pairs"])
    assert all(pq.read_schema(f).remove_metadata() == sft_schema() for f in files["sft"])
    pairs = datasets.load_dataset(
        "parquet", data_files=str(tmp_path / "store" / "pairs" / "*.parquet"), split="train",
        cache_dir=str(tmp_path / "hf-cache"),
    )
    assert pairs.num_rows == 12 and pairs.column_names == PAIR_COLUMNS
    assert sorted(pairs["content_hash"]) == sorted(store.pairs_dataset()["content_hash"])
    sft = datasets.Dataset.from_parquet(
        [str(f) for f in store.shard_files("sft")], cache_dir=str(tmp_path / "hf-cache")
    )
    assert sft.num_rows == 6 and sft.column_names == SFT_COLUMNS
    assert sft[0]["messages"][0] == {"role": "user", "content": W.prompt_text(0, 0)}


def test_empty_store_has_the_columns(tmp_path):
    store = store_at(tmp_path)
    assert store.pairs_dataset().column_names == PAIR_COLUMNS
    assert store.sft_dataset().column_names == SFT_COLUMNS
    assert store.stats()["pairs"] == store.stats()["sft"] == 0


def test_training_data_gives_each_method_its_rows_and_shards(tmp_path):
    store = store_at(tmp_path)
    empty, shards = store.training_data("dpo")
    assert empty.num_rows == 0 and shards == []
    store.append(*W.shard_rows(0), "s0")
    store.append([], W.shard_rows(1)[1], "s1")  # SFT rows only
    pairs, pair_shards = store.training_data("dpo")
    assert pairs.num_rows == W.PAIRS_PER_SHARD and pairs.column_names == PAIR_COLUMNS
    assert [(s.name, s.kind, s.rows) for s in pair_shards] == [
        ("s0.parquet", "pairs", W.PAIRS_PER_SHARD)
    ]
    sft, sft_shards = store.training_data("sft")
    assert sft.num_rows == 2 * W.SFT_PER_SHARD and sft.column_names == SFT_COLUMNS
    assert [(s.name, s.kind) for s in sft_shards] == [("s0.parquet", "sft"), ("s1.parquet", "sft")]
    assert sum(s.rows for s in sft_shards) == sft.num_rows


def test_stats_counts(tmp_path):
    store = store_at(tmp_path)
    for i in range(3):
        store.append(*W.shard_rows(i), f"s{i}", dropped={"tie": i, "abstain": 1})
    stats = store.stats()
    assert (stats["pairs"], stats["sft"], stats["shards"], stats["appends"]) == (12, 9, 6, 3)
    assert stats["by_strategy"] == {"revision": 12}
    # principle-{j % 3} for j in 0..3: principle-0 twice per shard.
    assert stats["by_principle"] == {"principle-0": 6, "principle-1": 3, "principle-2": 3}
    assert stats["by_cycle"] == {c: {"pairs": 4, "sft": 3} for c in range(3)}
    assert stats["dropped"] == {"abstain": 3, "tie": 3}
    assert [s.shard_id for s in store.shards() if s.kind == "pairs"] == ["s0", "s1", "s2"]


def test_temp_files_are_invisible_and_cleaned(tmp_path):
    store = store_at(tmp_path)
    store.append(*W.shard_rows(0), "s0")
    stale = tmp_path / "store" / "pairs" / ".tmp-deadbeef.partial"
    stale.write_bytes(b"PAR1 half a shard")
    reader = PreferenceStore(tmp_path, readonly=True)
    assert [s.name for s in reader.shards() if s.kind == "pairs"] == ["s0.parquet"]
    assert reader.pairs_dataset().num_rows == 4
    assert stale.exists()  # a read-only reader leaves a live writer's temp file alone
    with pytest.raises(StoreError, match="read-only"):
        reader.append(*W.shard_rows(1), "s1")
    PreferenceStore(tmp_path)
    assert not stale.exists()


def test_export_is_loadable_with_a_dataset_card(tmp_path):
    import datasets

    store = store_at(tmp_path / "run")
    store.append(*W.shard_rows(0), "s0", dropped={"tie": 1})
    store.append(*W.shard_rows(1), "s1")
    out = store.export(tmp_path / "export")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "pairs.parquet", "sft.parquet"]
    card = (out / "README.md").read_text()
    assert "config_name: pairs" in card and "(8 rows)" in card
    cache = str(tmp_path / "hf-cache")
    pairs = datasets.load_dataset(str(out), "pairs", split="train", cache_dir=cache)
    sft = datasets.load_dataset(str(out), "sft", split="train", cache_dir=cache)
    assert pairs.num_rows == 8 and sft.num_rows == 6
    assert pairs.column_names == PAIR_COLUMNS and sft.column_names == SFT_COLUMNS
    assert set(pairs["content_hash"]) == store.row_hashes("pairs")


def test_export_replaces_only_an_earlier_export(tmp_path):
    store = store_at(tmp_path / "run")
    store.append(*W.shard_rows(0), "s0")
    out = store.export(tmp_path / "export")
    store.append(*W.shard_rows(1), "s1")
    assert "(8 rows)" in (store.export(out) / "README.md").read_text()  # again: replaced
    project = tmp_path / "project"
    project.mkdir()
    (project / "README.md").write_text("# my project\n")
    (project / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="holds README.md, not from an earlier export"):
        store.export(project)
    assert (project / "README.md").read_text() == "# my project\n"
    assert sorted(p.name for p in project.iterdir()) == ["README.md", "notes.txt"]
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    store.export(other)  # none of its files has an export's name
    assert (other / "notes.txt").read_text() == "mine"
    a_file = tmp_path / "a_file"
    a_file.write_text("keep")
    with pytest.raises(StoreError, match="goes into a folder, and this is a file"):
        store.export(a_file)
    with pytest.raises(StoreError, match="cannot create the export folder"):
        store.export(a_file / "sub")
    assert a_file.read_text() == "keep"


def test_a_stray_or_copied_shard_is_named_or_read_once(tmp_path):
    import shutil

    import pyarrow as pa

    store = store_at(tmp_path)
    store.append(*W.shard_rows(0), "s0")
    store.append(*W.shard_rows(1), "s1")
    pairs_dir, sft_dir = tmp_path / "store" / "pairs", tmp_path / "store" / "sft"
    (first,) = sorted(pairs_dir.glob("s0*.parquet"))
    shutil.copy(first, pairs_dir / "zz-copy.parquet")  # the same rows under another name
    assert store.pairs_dataset().num_rows == 8 and store.stats()["pairs"] == 8
    (sft_shard,) = sorted(sft_dir.glob("s0*.parquet"))
    shutil.copy(sft_shard, pairs_dir / "zz-sft.parquet")
    with pytest.raises(StoreError, match=r"zz-sft.parquet: not a pairs shard, missing columns "
                       r"prompt, chosen, rejected.*it holds sft rows: move it to"):
        store.stats()
    (pairs_dir / "zz-sft.parquet").unlink()
    pq.write_table(pa.table({"x": [1, 2]}), pairs_dir / "zz-other.parquet")
    for read in (store.stats, store.pairs_dataset, lambda: store.export(tmp_path / "out")):
        with pytest.raises(StoreError, match="zz-other.parquet: not a pairs shard"):
            read()


def test_push_to_hub_failure_is_a_clear_store_error(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    store = store_at(tmp_path)
    store.append(*W.shard_rows(0), "s0")
    with pytest.raises(StoreError, match="hub dataset 'someone/prefs' failed"):
        store.push_to_hub("someone/prefs", token="hf_not_a_real_token")


# -- CLI -----------------------------------------------------------------------------------


def cli(*argv: str) -> int:
    from selfimprove.cli.data import register

    parser = argparse.ArgumentParser(prog="selfimprove")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.func(args)


def test_cli_stats_and_export(tmp_path, capsys):
    store = store_at(tmp_path / "run")
    store.append(*W.shard_rows(0), "s0", dropped={"abstain": 2, "tie": 5})
    assert cli("data", "stats", str(tmp_path / "run")) == 0
    shown = capsys.readouterr().out
    for expected in ("pairs", "sft rows", "principle-0", "abstain", "tie"):
        assert expected in shown
    assert re.search(r"abstain\s*│\s*2", shown) and re.search(r"tie\s*│\s*5", shown)
    assert cli("data", "stats", "--json", str(tmp_path / "run")) == 0
    stats = json.loads(capsys.readouterr().out)
    assert (stats["pairs"], stats["sft"], stats["dropped"]) == (4, 3, {"tie": 5, "abstain": 2})
    assert cli("data", "export", str(tmp_path / "run"), "--to", str(tmp_path / "out")) == 0
    assert (tmp_path / "out" / "pairs.parquet").is_file()
    assert pq.read_metadata(tmp_path / "out" / "pairs.parquet").num_rows == 4


def test_cli_reports_missing_store(tmp_path, capsys):
    with pytest.raises(StoreError, match="no preference store"):
        cli("data", "stats", str(tmp_path / "nowhere"))
    from selfimprove.cli import main

    assert main(["data", "stats", str(tmp_path / "nowhere")]) != 0
    err = capsys.readouterr().err
    assert "no preference store" in err and "nowhere" in err
    assert not (tmp_path / "nowhere").exists()  # stats never creates a store


# -- crash safety ----------------------------------------------------------------------------


def _check_store_after_kill(root: Path) -> tuple[int, int]:
    """Everything a reader sees is whole: returns (pair shards, temp files lying around)."""
    temps = 0
    for kind in ("pairs", "sft", "log"):
        for path in (root / "store" / kind).iterdir() if (root / "store" / kind).exists() else []:
            if path.name.startswith(".tmp-"):
                assert path.suffix == ".partial"  # never matched by a *.parquet glob
                temps += 1
            else:
                assert re.fullmatch(r"w\d{5}\.(parquet|json)", path.name), path.name
    store = PreferenceStore(root, readonly=True)
    ids = {kind: sorted(s.shard_id for s in store.shards() if s.kind == kind)
           for kind in ("pairs", "sft")}
    logged = sorted(e["shard_id"] for e in store.harvest_log())
    n = len(ids["pairs"])
    # Appends run in order, each writing SFT, then pairs, then its log entry: the pair shards
    # are a prefix, SFT at most one ahead, the log at most one behind.
    assert ids["pairs"] == [f"w{i:05d}" for i in range(n)]
    assert ids["sft"] in (ids["pairs"], ids["pairs"] + [f"w{n:05d}"])
    assert logged in (ids["pairs"], ids["pairs"][:-1])
    pairs = store.pairs_dataset()
    sft = store.sft_dataset()
    assert pairs.num_rows == W.PAIRS_PER_SHARD * n
    assert sft.num_rows == W.SFT_PER_SHARD * len(ids["sft"])
    assert len(set(pairs["content_hash"])) == pairs.num_rows
    assert len(set(sft["content_hash"])) == sft.num_rows
    for row in pairs:
        shard, j = map(int, row["prompt_id"][1:].split("-"))
        expected = W.pair_row(shard, j)
        assert {k: row[k] for k in PAIR_COLUMNS} == expected
    for row in sft:
        shard, j = map(int, row["prompt_id"][1:].split("-"))
        assert {k: row[k] for k in SFT_COLUMNS} == W.sft_row(shard, j)
    return n, temps


def test_store_survives_sigkill_at_random_moments(tmp_path):
    import datasets

    root = tmp_path / "run"
    store_at(root)
    rng = random.Random(20250101)
    trials, temps_seen = 24, 0
    shard_counts = []
    for _ in range(trials):
        proc = subprocess.Popen(
            [sys.executable, str(WRITER), str(root), "100000"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
            time.sleep(rng.uniform(0.0, 0.4))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
        n, temps = _check_store_after_kill(root)
        shard_counts.append(n)
        temps_seen += temps
    assert shard_counts == sorted(shard_counts)
    assert shard_counts[-1] >= trials // 2  # the kills did land on a writer that was writing
    # A writer reopening the store cleans what a killed writer left behind.
    PreferenceStore(root)
    assert not list((root / "store").rglob(".tmp-*"))
    loaded = datasets.load_dataset(
        "parquet", data_files=str(root / "store" / "pairs" / "*.parquet"), split="train",
        cache_dir=str(tmp_path / "hf-cache"),
    )
    assert loaded.num_rows == W.PAIRS_PER_SHARD * shard_counts[-1]
    print(f"crash test: {trials} kills, {shard_counts[-1]} shards, {temps_seen} temp files seen")


# -- TRL accepts the rows as they are ----------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    from selfimprove.models import load_tokenizer

    return load_tokenizer(None)


def _filled_store(path: Path) -> PreferenceStore:
    store = store_at(path)
    store.append(*W.shard_rows(0), "s0")
    return store


def test_trl_preference_preparation_accepts_pairs(tmp_path, tokenizer):
    from trl.data_utils import is_conversational, maybe_apply_chat_template

    ds = _filled_store(tmp_path).pairs_dataset()
    row = ds[0]
    assert is_conversational(row)
    text = maybe_apply_chat_template(row, tokenizer)
    assert text["prompt"].endswith("<|im_start|>assistant\n")
    assert W.prompt_text(0, 0) in text["prompt"]
    assert text["chosen"].startswith("good 0-0") and text["rejected"].startswith("bad 0-0")
    mapped = ds.map(maybe_apply_chat_template, fn_kwargs={"processing_class": tokenizer})
    assert all(isinstance(t, str) and t for t in mapped["chosen"])


def test_trl_sft_preparation_accepts_messages(tmp_path, tokenizer):
    from trl.data_utils import is_conversational, maybe_apply_chat_template

    ds = _filled_store(tmp_path).sft_dataset()
    row = ds[0]
    assert is_conversational(row)
    text = maybe_apply_chat_template(row, tokenizer)["text"]
    assert W.prompt_text(0, 0) in text and "good 0-0" in text
    ids = tokenizer.apply_chat_template(row["messages"], tokenize=True, return_dict=True)
    assert len(ids["input_ids"]) > 100


@pytest.mark.slow
def test_trl_trainers_prepare_store_datasets(tmp_path):
    """DPOTrainer and SFTTrainer tokenize and collate the store's datasets unchanged."""
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    from selfimprove.models import load_causal_lm, load_tokenizer

    store = _filled_store(tmp_path / "run")
    tok = load_tokenizer(None)
    model = load_causal_lm(None)
    common = dict(per_device_train_batch_size=2, max_length=64, report_to="none",
                  use_cpu=True, save_strategy="no", logging_strategy="no")
    dpo = DPOTrainer(model=model, args=DPOConfig(output_dir=str(tmp_path / "dpo"), **common),
                     train_dataset=store.pairs_dataset(), processing_class=tok)
    batch = next(iter(dpo.get_train_dataloader()))
    assert {"prompt_ids", "chosen_ids", "rejected_ids"} <= set(dpo.train_dataset.column_names)
    assert batch["input_ids"].shape[0] == 4  # chosen and rejected of 2 pairs
    sft = SFTTrainer(model=model, args=SFTConfig(output_dir=str(tmp_path / "sft"), **common),
                     train_dataset=store.sft_dataset(), processing_class=tok)
    batch = next(iter(sft.get_train_dataloader()))
    assert batch["input_ids"].shape == (2, 64)
