"""Recording agent traffic: durable at once, moved into the store once, used by the next cycle."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest
from filelock import Timeout

from selfimprove.backends.scripted import ScriptedBackend
from selfimprove.config import RunConfig
from selfimprove.constitution import load_constitution
from selfimprove.critique_loop import acritique
from selfimprove.improvement_cycle.sample import pending_traffic
from selfimprove.store import PreferenceStore
from selfimprove.traffic import (
    Exchange,
    TrafficLog,
    TrafficRecorder,
    segment_lock,
    traffic_prompt_id,
)
from selfimprove.types import Message
from tests.test_critique_graph import CONSTITUTION, LONG, SHORT, make_ctx, prefer, responder

ROOT = Path(__file__).resolve().parents[1]


def exchange(i: int, **kw) -> Exchange:
    return Exchange(messages=[Message(role="user", content=f"question number {i}?")],
                    response=f"answer {i}", **kw)


@pytest.fixture
def critiqued(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(CONSTITUTION)
    ctx = make_ctx(load_constitution(path), ScriptedBackend(responder(SHORT), prefer(SHORT)))

    async def make(question: str):
        return await acritique([{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": question}], ctx, response=LONG)

    return make


async def test_recorded_exchanges_reach_the_store_once(tmp_path, critiqued):
    run = tmp_path / "run"
    result = await critiqued("How do tides work?")  # outside the held-out split
    heldout = await critiqued("Why is the sea salty?")  # inside it: never a training row
    assert PreferenceStore(run).is_heldout(heldout.prompt)
    with TrafficRecorder(run, flush_seconds=3600) as recorder:
        for i in range(3):
            await recorder.arecord(exchange(i))
        await recorder.arecord_critique(result)
        await recorder.arecord_critique(heldout)
        # Durable before it is stored: the journal holds every line already.
        (segment,) = TrafficLog(run).journal_dir.glob("*.jsonl")
        assert len(segment.read_text().splitlines()) == 5
        assert TrafficLog(run).shard_paths() == []
    log = TrafficLog(run)
    table = log.table().to_pylist()
    assert sorted(r["critiqued"] for r in table) == [False, False, False, True, True]
    assert list(log.journal_dir.glob("*.jsonl")) == []
    # The critiqued exchange became training rows marked as traffic, with the conversation.
    store = PreferenceStore(run)
    pairs = store.pairs_dataset()
    assert store.stats()["dropped"]["heldout_traffic"] == 1
    assert pairs.num_rows == 1 and pairs["source"] == ["traffic"] and pairs["cycle"] == [-1]
    assert pairs[0]["prompt"][0] == {"role": "system", "content": "Be brief."}
    assert pairs[0]["chosen"][0]["content"] == SHORT
    assert pairs[0]["rejected"][0]["content"] == LONG
    # Pending for the next cycle: the three exchanges nobody critiqued, oldest first.
    pending = log.pending(store.harvested_prompt_ids())
    assert [e.response for e in pending] == ["answer 0", "answer 1", "answer 2"]


async def test_a_move_cut_by_a_crash_is_finished_without_duplicates(tmp_path, critiqued):
    run = tmp_path / "run"
    result = await critiqued("How do tides work?")
    recorder = TrafficRecorder(run, flush_seconds=3600)
    recorder.record(exchange(1))
    recorder.record(Exchange.from_critique(result))
    recorder._rotate()
    (segment,) = TrafficLog(run).journal_dir.glob("*.jsonl")
    kept = segment.read_bytes()
    recorder.close()
    # As if the process died after writing the shards but before deleting the segment:
    segment.write_bytes(kept + b'{"id": "torn", "messa')  # and a torn, unacknowledged line
    again = TrafficRecorder(run, flush_seconds=3600)
    again.close()
    assert TrafficLog(run).table().num_rows == 2
    assert PreferenceStore(run).pairs_dataset().num_rows == 1
    assert list(TrafficLog(run).journal_dir.glob("*.jsonl")) == []


def test_a_broken_line_inside_a_segment_is_a_located_error(tmp_path):
    run = tmp_path / "run"
    journal = TrafficLog(run).journal_dir
    journal.mkdir(parents=True)
    bad = journal / "old.jsonl"
    bad.write_text(exchange(1).model_dump_json() + "\nnot json\n" + exchange(2).model_dump_json()
                   + "\n")
    with pytest.raises(ValueError, match=r"old\.jsonl:2: unreadable journal line"):
        TrafficRecorder(run, flush_seconds=3600)
    assert bad.exists()  # nothing recorded is thrown away


def test_a_closed_recorder_refuses_to_record(tmp_path):
    recorder = TrafficRecorder(tmp_path / "run", flush_seconds=3600)
    recorder.close()
    with pytest.raises(RuntimeError, match="closed"):
        recorder.record(exchange(0))


@pytest.mark.parametrize(("where", "kwargs", "message"), [
    ("", {}, "run_dir is empty"),
    ("file", {}, "is a file; the recorder needs a run directory"),
    ("run", {"flush_seconds": 0}, "flush_seconds must be positive"),
])
def test_a_recorder_without_a_run_directory_is_refused(tmp_path, where, kwargs, message):
    (tmp_path / "file").write_text("mine")
    path = str(tmp_path / where) if where else ""
    with pytest.raises(ValueError, match=message):
        TrafficRecorder(path, **kwargs)
    assert (tmp_path / "file").read_text() == "mine" and not (tmp_path / "run").exists()


def test_the_background_thread_moves_traffic_without_close(tmp_path):
    run = tmp_path / "run"
    recorder = TrafficRecorder(run, flush_seconds=0.1)
    try:
        recorder.record(exchange(7))
        deadline = time.monotonic() + 10
        while TrafficLog(run).table().num_rows == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert TrafficLog(run).table().column("critiqued").to_pylist() == [False]
    finally:
        recorder.close()


WRITER = """
import sys
from selfimprove.traffic import Exchange, TrafficRecorder
from selfimprove.types import Message
recorder = TrafficRecorder(sys.argv[1], flush_seconds=0.05)
i = 0
while True:
    e = Exchange(id=f"x{i:05d}", messages=[Message(role="user", content=f"q {i} " * 200)],
                 response="a" * 2000)
    recorder.record(e)
    print(e.id, flush=True)  # acknowledged: the request would be answered now
    i += 1
"""


@pytest.mark.slow
def test_every_acknowledged_exchange_is_stored_exactly_once_after_sigkill(tmp_path):
    run = tmp_path / "run"
    rng = random.Random(0)
    acknowledged: list[str] = []
    for _ in range(4):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(run)], stdout=subprocess.PIPE,
                                text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert proc.stdout is not None
        acknowledged.append(proc.stdout.readline().strip())
        time.sleep(rng.uniform(0.2, 1.0))
        os.kill(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        acknowledged += out.split()
        assert proc.returncode == -signal.SIGKILL
    TrafficRecorder(run, flush_seconds=3600).close()  # the restart moves what was left
    ids = TrafficLog(run).table().column("exchange_id").to_pylist()
    assert len(ids) == len(set(ids))  # nothing twice
    assert set(acknowledged) <= set(ids)  # nothing acknowledged lost
    assert list(TrafficLog(run).journal_dir.glob("*.jsonl")) == []


def cycle_ctx(run: Path, store: PreferenceStore) -> SimpleNamespace:
    return SimpleNamespace(run=SimpleNamespace(path=run), store=store, cfg=RunConfig())


def test_what_a_killed_recorder_journaled_reaches_the_next_cycle(tmp_path):
    """No recorder runs after the kill: the cycle itself moves the journal, and leaves a
    segment another recorder is still writing alone."""
    run = tmp_path / "run"
    store = PreferenceStore(run, heldout_fraction=0.0)
    journal = TrafficLog(run).journal_dir
    journal.mkdir(parents=True)
    (journal / "20260101T000000000000-dead0000.jsonl").write_text(
        "".join(exchange(i).model_dump_json() + "\n" for i in range(3)))
    (journal / "20260101T000000000000-dead0000.jsonl.lock").touch()  # the dead writer's lock
    live = TrafficRecorder(run, flush_seconds=3600)
    try:
        live.record(exchange(99))  # its open segment is locked by this live recorder
        assert TrafficLog(run).table().num_rows == 3  # the live recorder moved the dead one's
        (journal / "20260101T000000000001-dead0001.jsonl").write_text(
            exchange(4).model_dump_json() + "\n")
        records = pending_traffic(cycle_ctx(run, store), limit=10)
        assert sorted(r.prompt for r in records) == sorted(
            f"question number {i}?" for i in (0, 1, 2, 4))
        (still_open,) = journal.glob("*.jsonl")  # the live recorder's, not moved under it
        assert "question number 99?" in still_open.read_text()
    finally:
        live.close()
    assert len(TrafficLog(run).table()) == 5 and list(journal.glob("*.jsonl")) == []


def test_a_segment_opened_in_a_worker_thread_is_released_by_the_flusher(tmp_path):
    """Agents record from worker threads; the background thread closes their segment, and
    another process must then be free to take its lock."""
    run = tmp_path / "run"
    recorder = TrafficRecorder(run, flush_seconds=3600)
    try:
        with ThreadPoolExecutor(1) as pool:  # the recording thread stays alive throughout
            pool.submit(recorder.record, exchange(1)).result()
            (segment,) = TrafficLog(run).journal_dir.glob("*.jsonl")
            with pytest.raises(Timeout):
                segment_lock(segment).acquire(timeout=0)  # held while it is being written
            recorder._rotate()
            probe = segment_lock(segment)
            probe.acquire(timeout=0)  # free once closed, whichever thread closed it
            probe.release()
            assert recorder.flush() == 1
    finally:
        recorder.close()


def test_the_next_cycle_takes_pending_exchanges_outside_the_heldout_split(tmp_path):
    run = tmp_path / "run"
    store = PreferenceStore(run, heldout_fraction=0.5, salt="fixed")
    with TrafficRecorder(run, flush_seconds=3600) as recorder:
        for i in range(20):
            recorder.record(exchange(i))
    ctx = cycle_ctx(run, store)
    records = pending_traffic(ctx, limit=4)
    assert len(records) == 4
    assert all(r.source == "traffic" and r.response and r.id.startswith("traffic-")
               for r in records)
    assert not any(store.is_heldout(r.prompt) for r in records)
    # Once a cycle's harvest covered them, they are no longer pending.
    store.append([], [], "cycle-0001", prompt_ids=[r.id for r in records])
    rest = pending_traffic(ctx, limit=100)
    assert not {r.id for r in rest} & {r.id for r in records}
    assert {traffic_prompt_id(e.id) for e in TrafficLog(run).pending(set())} >= {
        r.id for r in rest}
    assert json.loads(records[0].model_dump_json())["source"] == "traffic"


async def test_a_served_answer_cut_at_its_token_cap_is_revised_not_imitated(tmp_path):
    """A plain answer that hit max_tokens passes a word limit by stopping mid-sentence: the
    next cycle revises it like a failure, and it never becomes an SFT example itself."""
    from selfimprove.config import HarvestConfig
    from selfimprove.harvest import harvest

    path = tmp_path / "tiny.yaml"
    path.write_text(CONSTITUTION)
    ctx = make_ctx(load_constitution(path), ScriptedBackend(responder(SHORT), prefer(SHORT)),
                   critic="checks")
    run = tmp_path / "run"
    with TrafficRecorder(run, flush_seconds=3600) as recorder:
        recorder.record(exchange(1, truncated=True).model_copy(update={"response": "cut off"}))
        recorder.record(exchange(2).model_copy(update={"response": "whole answer"}))
    cut, whole = [e.prompt_record() for e in TrafficLog(run).pending(set())]
    assert cut.response_truncated and not whole.response_truncated
    cut_result, whole_result = [await acritique(r, ctx) for r in (cut, whole)]
    assert whole_result.rounds == []  # passes every check: nothing to revise
    (rnd,) = cut_result.rounds
    assert rnd.critique.failed_checks == ["ended"] and "cut off" in rnd.critique.text
    assert cut_result.final_response == SHORT
    out = harvest([cut_result, whole_result], HarvestConfig())
    assert sorted(row["messages"][-1]["content"] for row in out.sft) == [SHORT, "whole answer"]
    (pair,) = out.pairs
    assert pair["rejected"][0]["content"] == "cut off" and pair["decided_by"] == "checks"
    assert {cut_result.source, whole_result.source} == {"traffic"}


async def test_a_served_answer_still_cut_after_revising_is_no_sft_example(tmp_path):
    from selfimprove.config import HarvestConfig
    from selfimprove.harvest import harvest

    path = tmp_path / "tiny.yaml"
    path.write_text(CONSTITUTION)
    ctx = make_ctx(load_constitution(path), ScriptedBackend(responder(SHORT), prefer(SHORT)),
                   critic="checks", max_rounds=0)  # no revision allowed
    record = exchange(1, truncated=True).prompt_record()
    result = await acritique(record, ctx)
    assert result.rounds == [] and result.final_truncated
    assert harvest([result], HarvestConfig()).dropped["truncated_sft"] == 1
