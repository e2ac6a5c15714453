"""Agent traffic recorded into a run's store: durable at once, stored off the hot path.

What agents ask and what they were answered (and, when an answer was critiqued, the whole
critique) is recorded by a :class:`TrafficRecorder`::

    store/traffic/journal/<segment>.jsonl   one fsynced line per exchange (the durable record)
    store/traffic/<segment>.parquet          exchanges moved out of a finished journal segment

A background thread moves finished journal segments into the store: critiqued exchanges are
harvested into pairs and SFT rows (provenance ``source = "traffic"``), every exchange goes to
a traffic shard (one row per exchange id), and only then is the segment deleted. Each step is
idempotent, so a recorder killed at any moment loses nothing acknowledged and stores nothing
twice: a restart moves what was left. Exchanges nobody critiqued yet are what the next cycle
critiques (``prompts.traffic`` in a run config): their answer is the first response.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock, Timeout
from pydantic import BaseModel, Field, ValidationError

from selfimprove.atomic import atomic_write
from selfimprove.config import HarvestConfig
from selfimprove.sources import PromptRecord
from selfimprove.store import PreferenceStore
from selfimprove.types import CritiqueResult, Message

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["Exchange", "JournalMover", "TrafficLog", "TrafficRecorder", "move_journal",
           "traffic_prompt_id"]

log = logging.getLogger(__name__)

#: the ``cycle`` of store rows harvested from traffic (recorded outside any cycle)
TRAFFIC_CYCLE = -1


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def traffic_prompt_id(exchange_id: str) -> str:
    """The prompt id under which an exchange is critiqued and harvested."""
    return f"traffic-{exchange_id}"


class Exchange(BaseModel):
    """One answered request: the conversation asked, the answer given, and its critique."""

    id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    messages: list[Message] = Field(min_length=1, description="the conversation asked")
    response: str = Field(description="what was answered (the final revision if critiqued)")
    policy_version: str = "v0"
    truncated: bool = Field(default=False, description="the answer hit its token cap")
    created_at: str = Field(default_factory=_now)
    critique: CritiqueResult | None = None

    @classmethod
    def from_critique(cls, result: CritiqueResult, **kw: Any) -> Exchange:
        return cls(messages=result.conversation(), response=result.final_response,
                   policy_version=result.policy_version, truncated=result.final_truncated,
                   critique=result, **kw)

    def prompt_record(self) -> PromptRecord:
        """The exchange as a prompt for the next cycle: its answer is the first response."""
        return PromptRecord.conversation(self.messages, id=traffic_prompt_id(self.id),
                                         response=self.response, source="traffic",
                                         response_truncated=self.truncated)


def _schema() -> pa.Schema:
    import pyarrow as pa

    message = pa.struct([("role", pa.string()), ("content", pa.string())])
    return pa.schema([
        ("exchange_id", pa.string()),
        ("messages", pa.list_(message)),  # the conversation and the answer, as TRL messages
        ("policy_version", pa.string()),
        ("critiqued", pa.bool_()),
        ("truncated", pa.bool_()),  # the answer hit its token cap when served
        ("created_at", pa.string()),
    ])


class TrafficLog:
    """The traffic shards of a run's store: every recorded exchange, once."""

    def __init__(self, run_dir: str | Path) -> None:
        self.dir = Path(run_dir) / "store" / "traffic"
        self.journal_dir = self.dir / "journal"

    def shard_paths(self) -> list[Path]:
        if not self.dir.is_dir():
            return []
        return sorted(p for p in self.dir.glob("*.parquet") if not p.name.startswith("."))

    def table(self) -> pa.Table:
        import pyarrow as pa
        import pyarrow.parquet as pq

        tables = [pq.read_table(p, schema=_schema()) for p in self.shard_paths()]
        return pa.concat_tables(tables) if tables else _schema().empty_table()

    def exchange_ids(self) -> set[str]:
        return set(self.table().column("exchange_id").to_pylist())

    def pending(self, done_prompt_ids: set[str]) -> list[Exchange]:
        """Recorded exchanges no critique has covered yet (not critiqued when served, and not
        harvested by a cycle since), oldest first."""
        rows = self.table().to_pylist()
        out = []
        for row in sorted(rows, key=lambda r: r["created_at"]):
            if row["critiqued"] or traffic_prompt_id(row["exchange_id"]) in done_prompt_ids:
                continue
            *conversation, answer = row["messages"]
            out.append(Exchange(id=row["exchange_id"], messages=conversation,
                                response=answer["content"], policy_version=row["policy_version"],
                                truncated=bool(row["truncated"]), created_at=row["created_at"]))
        return out


class JournalMover:
    """Moves finished journal segments of a run into its store (see the module's docstring).

    A segment another process still writes is left alone (its writer holds the segment's file
    lock). Anything that reads traffic moves first (:func:`move_journal`), so what a killed
    server journaled is never stranded when no recorder runs any more.
    """

    def __init__(self, run_dir: str | Path, harvest: HarvestConfig | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.log = TrafficLog(run_dir)
        self.harvest_cfg = harvest or HarvestConfig()
        self._lock = threading.Lock()
        self._known: set[str] | None = None  # stored exchange ids, read once

    @functools.cached_property
    def store(self) -> PreferenceStore:
        """Opened when critiqued traffic is first harvested: moving plain exchanges never
        touches the store (nor creates one in a run directory that has none yet)."""
        return PreferenceStore(self.run_dir)

    def move(self, skip: Path | None = None) -> int:
        """Move every finished segment (all but ``skip``, the caller's open one); the number
        of exchanges newly stored."""
        if not self.log.journal_dir.is_dir():
            return 0
        moved = 0
        with self._lock:
            self._remove_stale_temp_files()
            for path in sorted(self.log.journal_dir.glob("*.jsonl")):
                if path == skip:
                    continue
                lock = segment_lock(path)
                try:
                    lock.acquire(timeout=0)
                except Timeout:
                    continue  # another process is still writing it
                try:
                    if path.exists():  # another mover may have finished it meanwhile
                        moved += self._move(path)
                finally:
                    lock.release()
                Path(str(path) + ".lock").unlink(missing_ok=True)
            self._remove_orphan_locks()
        return moved

    def _remove_stale_temp_files(self) -> None:
        for tmp in self.log.dir.glob(".tmp-*"):
            # A shard write cut by a crash (a live mover's temp file is seconds old).
            if time.time() - tmp.stat().st_mtime > 60:
                tmp.unlink(missing_ok=True)

    def _remove_orphan_locks(self) -> None:
        """Lock files left by a writer killed between taking the lock and opening its segment
        (an old one only: a live writer opens its segment right after locking it)."""
        for lock_path in self.log.journal_dir.glob("*.jsonl.lock"):
            segment = Path(str(lock_path).removesuffix(".lock"))
            if not segment.exists() and time.time() - lock_path.stat().st_mtime > 60:
                lock_path.unlink(missing_ok=True)

    def _move(self, path: Path) -> int:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self._known is None:
            self._known = self.log.exchange_ids()
        exchanges = _read_journal(path)
        new = list({e.id: e for e in exchanges if e.id not in self._known}.values())
        segment = path.stem
        critiqued = [e.critique for e in new if e.critique is not None]
        if critiqued:
            self._harvest(critiqued, segment)
        if new:
            rows = [{
                "exchange_id": e.id,
                "messages": [m.model_dump() for m in e.messages]
                + [{"role": "assistant", "content": e.response}],
                "policy_version": e.policy_version,
                "critiqued": e.critique is not None,
                "truncated": e.truncated,
                "created_at": e.created_at,
            } for e in new]
            table = pa.Table.from_pylist(rows, schema=_schema())
            atomic_write(self.log.dir / f"{segment}.parquet",
                         lambda f: pq.write_table(table, f),
                         tmp_name=f".tmp-{uuid.uuid4().hex}.partial")
            self._known.update(e.id for e in new)
        path.unlink()
        return len(new)

    def _harvest(self, results: list[CritiqueResult], segment: str) -> None:
        from selfimprove.harvest import harvest

        traffic = [r.model_copy(update={"source": "traffic"}) for r in results]
        usable = [r for r in traffic if not self.store.is_heldout(r.prompt)]
        out = harvest(usable, self.harvest_cfg, cycle=TRAFFIC_CYCLE)
        dropped = dict(out.dropped)
        if len(usable) < len(traffic):
            dropped["heldout_traffic"] = len(traffic) - len(usable)
        # The shard id is the segment's: a move re-run after a crash writes nothing twice.
        self.store.append(out.pairs, out.sft, f"traffic-{segment}", dropped=dropped,
                          prompt_ids=[r.prompt_id for r in traffic])


def move_journal(run_dir: str | Path, harvest: HarvestConfig | None = None) -> int:
    """Move what recorders left in ``run_dir``'s journal into its store (a killed server's
    segments, say); segments still being written are left alone. The number moved."""
    return JournalMover(run_dir, harvest).move()


def segment_lock(path: Path) -> FileLock:
    """The lock a journal segment's writer holds while it writes.

    Not thread-local: the segment is opened by whichever worker thread records first and
    closed by the flushing thread, and a thread-local lock would stay held after that close.
    """
    return FileLock(str(path) + ".lock", thread_local=False)


class TrafficRecorder:
    """Records exchanges into ``run_dir``'s store.

    :meth:`arecord` (or :meth:`record`) returns once the exchange is durable in the journal
    (one appended, fsynced line, in a worker thread for :meth:`arecord`); moving it into the
    store happens every ``flush_seconds`` in a background thread, and at :meth:`close`.
    """

    def __init__(
        self,
        run_dir: str | Path,
        harvest: HarvestConfig | None = None,
        *,
        flush_seconds: float = 10.0,
    ) -> None:
        if not str(run_dir).strip():
            raise ValueError("run_dir is empty: name the run directory whose store records "
                             "the traffic")
        self.run_dir = Path(run_dir)
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise ValueError(f"{self.run_dir} is a file; the recorder needs a run directory")
        if flush_seconds <= 0:
            raise ValueError(f"flush_seconds must be positive, got {flush_seconds}")
        self.log = TrafficLog(self.run_dir)
        self.flush_seconds = flush_seconds
        self.mover = JournalMover(self.run_dir, harvest)
        self.log.journal_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # the open segment: one writer line at a time
        self._segment: Path | None = None
        self._segment_lock: FileLock | None = None
        self._file: Any = None
        self._closed = threading.Event()
        self.flush()  # what a killed recorder left behind
        self._thread = threading.Thread(target=self._flush_loop, name="traffic-recorder",
                                        daemon=True)
        self._thread.start()

    # -- recording (the hot path) --------------------------------------------------------

    def record(self, exchange: Exchange) -> None:
        """Append ``exchange`` to the journal; durable when this returns."""
        line = (exchange.model_dump_json() + "\n").encode("utf-8")
        with self._lock:
            if self._closed.is_set():
                raise RuntimeError("the traffic recorder is closed")
            if self._file is None:
                self._open_segment()
            self._file.write(line)
            self._file.flush()
            os.fsync(self._file.fileno())

    async def arecord(self, exchange: Exchange) -> None:
        """:meth:`record` in a worker thread, so the event loop keeps serving."""
        await asyncio.to_thread(self.record, exchange)

    async def arecord_critique(self, result: CritiqueResult) -> None:
        await self.arecord(Exchange.from_critique(result))

    def _open_segment(self) -> None:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
        self._segment = self.log.journal_dir / f"{stamp}-{uuid.uuid4().hex[:8]}.jsonl"
        self._segment_lock = segment_lock(self._segment)
        self._segment_lock.acquire()  # other processes leave a segment being written alone
        self._file = open(self._segment, "ab")  # noqa: SIM115 - kept open across calls

    def _rotate(self) -> None:
        """Close the open segment, so the flusher may move it."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                assert self._segment_lock is not None
                self._segment_lock.release()
                self._file = self._segment = self._segment_lock = None

    # -- moving into the store (off the hot path) ----------------------------------------

    def _flush_loop(self) -> None:
        while not self._closed.wait(self.flush_seconds):
            try:
                self.flush()
            except Exception:  # a failed move is retried next time; the journal keeps it
                log.exception("moving recorded traffic into the store failed; will retry")

    def flush(self) -> int:
        """Move every finished journal segment into the store now; the number of exchanges
        newly stored."""
        self._rotate()
        with self._lock:
            open_segment = self._segment  # opened since the rotation: still being written
        return self.mover.move(skip=open_segment)

    def close(self) -> None:
        """Stop the background thread and move everything recorded into the store."""
        if self._closed.is_set():
            return
        self._rotate()
        self._closed.set()
        self._thread.join()
        self.flush()

    def __enter__(self) -> TrafficRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_journal(path: Path) -> list[Exchange]:
    """The exchanges of a journal segment; a torn last line (a write cut by a crash, never
    acknowledged) is skipped."""
    out = []
    lines = path.read_bytes().split(b"\n")
    for no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            out.append(Exchange.model_validate_json(line))
        except ValidationError:
            if no < len(lines) - 1:
                raise ValueError(f"{path}:{no}: unreadable journal line") from None
    return out
