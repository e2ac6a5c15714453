"""The preference store: append-only Parquet shards of pairs and SFT rows for one run.

Layout under the run directory::

    store/meta.json          salt + held-out fraction, written once at creation
    store/pairs/<id>.parquet preference pairs (TRL conversational format + provenance)
    store/sft/<id>.parquet   SFT rows (``messages``) + provenance
    store/log/<id>.json      one entry per completed append (written last; harvest drops)

Each shard is written to a ``.tmp-*`` file in the same directory, fsynced, renamed into place
with ``os.replace`` and the directory fsynced, so a reader (or a ``*.parquet`` glob) never sees
a partial shard, even after ``kill -9``. Appends take a file lock (``store/.append.lock``), so
a run and a server recording traffic (:mod:`selfimprove.traffic`) can write the same store.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from filelock import FileLock
from pydantic import BaseModel, Field

from selfimprove.atomic import atomic_write
from selfimprove.errors import StoreError

if TYPE_CHECKING:
    import datasets
    import pyarrow as pa

__all__ = [
    "AppendResult",
    "PAIR_COLUMNS",
    "PreferenceStore",
    "SFT_COLUMNS",
    "ShardInfo",
    "content_hash",
    "pair_schema",
    "sft_schema",
]

Kind = Literal["pairs", "sft"]
T = TypeVar("T")

FORMAT_VERSION = 1
TMP_PREFIX = ".tmp-"
_META_KEY = b"selfimprove"
_SHARD_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_DEFAULT_HELDOUT = 0.2

# Provenance shared by pairs and SFT rows, in column order (type names are pyarrow's).
_PROVENANCE: list[tuple[str, str]] = [
    ("strategy", "string"),
    ("prompt_id", "string"),
    ("constitution", "string"),
    ("constitution_hash", "string"),
    ("principle_ids", "list<string>"),
    ("check_results", "string"),  # JSON: nested and variable, so the Parquet schema stays fixed
    ("p_b_order1", "float64?"),
    ("p_b_order2", "float64?"),
    ("margin", "float64?"),
    ("critiques", "list<string>"),
    ("policy_version", "string"),
    ("source", "string?"),  # "loop" or "traffic" (recorded from agents; absent in old shards)
    ("cycle", "int64"),
    ("created_at", "string"),
]
_PAIR_SPEC = [("prompt", "messages"), ("chosen", "messages"), ("rejected", "messages")] + [
    *_PROVENANCE,
    ("decided_by", "string"),
    ("content_hash", "string"),
]
_SFT_SPEC = [("messages", "messages"), *_PROVENANCE, ("content_hash", "string")]
PAIR_COLUMNS: list[str] = [name for name, _ in _PAIR_SPEC]
#: provenance columns a row may leave out (added after the first format; null when absent)
_OPTIONAL = ["source"]
SFT_COLUMNS: list[str] = [name for name, _ in _SFT_SPEC]


#: which rows each training method reads
DATA_KIND: dict[str, Kind] = {"dpo": "pairs", "sft": "sft"}


def _schema(spec: list[tuple[str, str]]) -> pa.Schema:
    import pyarrow as pa

    message = pa.struct([("role", pa.string()), ("content", pa.string())])
    types = {
        "string": pa.string(),
        "int64": pa.int64(),
        "float64": pa.float64(),
        "list<string>": pa.list_(pa.string()),
        "messages": pa.list_(message),
    }
    return pa.schema(
        [pa.field(n, types[t.rstrip("?")], nullable=t.endswith("?")) for n, t in spec]
    )


def pair_schema() -> pa.Schema:
    """The fixed Arrow schema of every pair shard."""
    return _schema(_PAIR_SPEC)


def sft_schema() -> pa.Schema:
    """The fixed Arrow schema of every SFT shard."""
    return _schema(_SFT_SPEC)


def content_hash(row: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of a row's conversation (prompt+chosen+rejected or messages)."""
    keys = ("messages",) if "messages" in row else ("prompt", "chosen", "rejected")
    payload = {k: row[k] for k in keys}
    canonical = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class ShardInfo(BaseModel):
    """One committed shard file."""

    name: str
    kind: Kind
    shard_id: str
    rows: int
    created: str
    duplicates: int = 0


class AppendResult(BaseModel):
    """What one :meth:`PreferenceStore.append` wrote, left out as duplicate, or skipped."""

    shard_id: str
    pairs_written: int = 0
    sft_written: int = 0
    duplicate_pairs: int = 0
    duplicate_sft: int = 0
    skipped: list[Kind] = Field(
        default_factory=list,
        description="kinds not written because an earlier append with this id wrote them",
    )

    @property
    def already_present(self) -> bool:
        """True when an append with this id had completed, so nothing was written."""
        return set(self.skipped) == {"pairs", "sft"}


def _atomic_write(path: Path, write: Callable[[Any], None], suffix: str) -> None:
    """Atomic write whose temp file carries the prefix readers and clean-up know to skip."""
    atomic_write(path, write, tmp_name=f"{TMP_PREFIX}{uuid.uuid4().hex}{suffix}")


def _prompt_text(messages: Sequence[Mapping[str, Any]]) -> str:
    """The text the held-out split hashes: a lone user turn, or a conversation's transcript
    (as for prompt records, so a conversation falls on the same side everywhere)."""
    from selfimprove.conversation import as_messages, transcript

    return transcript(as_messages(messages))


def seed_salt(seed: int) -> str:
    """The held-out salt of a seed: the same seed always holds out the same prompts."""
    return f"s{seed}"


def is_heldout(prompt: str, salt: str, fraction: float) -> bool:
    """Whether ``prompt`` falls in the held-out split fixed by ``salt`` and ``fraction``."""
    digest = hashlib.sha256(f"{salt}\0{prompt.strip()}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


class PreferenceStore:
    """Append-only store of preference pairs and SFT rows under ``root/store``.

    ``heldout_fraction`` and ``salt`` are fixed when the store is created (``None`` means
    "what the store says", or 0.2 and the salt of seed 0 for a new store); reopening with other
    values is an error, so the held-out split never moves during a run. ``readonly`` opens an
    existing store without creating it or cleaning temp files (safe beside a live writer).
    """

    def __init__(
        self,
        root: str | Path,
        heldout_fraction: float | None = None,
        salt: str | None = None,
        *,
        readonly: bool = False,
    ) -> None:
        self.root = Path(root)
        self.dir = self.root / "store"
        self.readonly = readonly
        self._hash_cache: dict[Kind, tuple[set[str], set[str]]] = {}
        meta = self._open_meta(heldout_fraction, salt)
        self.heldout_fraction: float = meta["heldout_fraction"]
        self.salt: str = meta["salt"]
        if not readonly:
            self._clean_temp_files()

    # -- opening -------------------------------------------------------------------------

    @property
    def meta_path(self) -> Path:
        return self.dir / "meta.json"

    def _kind_dir(self, kind: Kind) -> Path:
        return self.dir / kind

    @property
    def _log_dir(self) -> Path:
        return self.dir / "log"

    def _read_meta(self) -> dict[str, Any]:
        try:
            meta = json.loads(self.meta_path.read_text())
            fraction, salt = float(meta["heldout_fraction"]), str(meta["salt"])
        except KeyError as exc:
            raise StoreError(f"{self.meta_path}: store metadata without its key {exc}") from None
        except (OSError, ValueError, TypeError) as exc:
            raise StoreError(f"{self.meta_path}: unreadable store metadata ({exc})") from None
        return {**meta, "heldout_fraction": fraction, "salt": salt}

    def _open_meta(self, fraction: float | None, salt: str | None) -> dict[str, Any]:
        if fraction is not None and not (0.0 <= fraction < 1.0):
            raise StoreError(f"{self.dir}: heldout_fraction must be in [0, 1), got {fraction}")
        if not self.meta_path.is_file():
            if self.readonly:
                raise StoreError(f"no preference store at {self.dir} (no meta.json there)")
            if any(any(self._kind_dir(kind).glob("*.parquet")) for kind in ("pairs", "sft")):
                # A new meta.json would draw a new held-out split over rows written under the
                # old one: held-out prompts could then be trained on.
                raise StoreError(
                    f"{self.meta_path} is missing, but the store holds shards: its held-out "
                    "split is lost with it; restore meta.json from a copy of this store (a new "
                    "one would draw a new split over rows written under the old)"
                )
            meta = {
                "format": FORMAT_VERSION,
                "heldout_fraction": _DEFAULT_HELDOUT if fraction is None else fraction,
                # Reproducible: two fresh stores over the same prompts hold out the same ones.
                "salt": salt if salt is not None else seed_salt(0),
                "created_at": datetime.now(timezone.utc).isoformat(),
            }
            for kind in ("pairs", "sft"):
                self._kind_dir(kind).mkdir(parents=True, exist_ok=True)
            data = json.dumps(meta, indent=2).encode()
            _atomic_write(self.meta_path, lambda f: f.write(data), ".json")
        meta = self._read_meta()
        if fraction is not None and not math.isclose(fraction, meta["heldout_fraction"]):
            raise StoreError(
                f"{self.meta_path}: the store was created with heldout_fraction="
                f"{meta['heldout_fraction']}; reopening it with {fraction} would move the "
                "held-out split"
            )
        if salt is not None and salt != meta["salt"]:
            raise StoreError(
                f"{self.meta_path}: the store was created with another salt (a run's salt comes "
                "from its seed: was the seed changed?); reopening it with a different one would "
                "move the held-out split"
            )
        return meta

    def _clean_temp_files(self) -> None:
        """Remove temp files left by a writer that died mid-write (holding the append lock,
        so a live writer in another process keeps the shard it is writing)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.dir / ".append.lock")):
            for folder in (self.dir, self._kind_dir("pairs"), self._kind_dir("sft"),
                           self._log_dir):
                for tmp in folder.glob(TMP_PREFIX + "*"):
                    tmp.unlink(missing_ok=True)

    # -- held-out split ------------------------------------------------------------------

    def is_heldout(self, prompt: str) -> bool:
        """Whether ``prompt`` belongs to the held-out (evaluation-only) split."""
        return is_heldout(prompt, self.salt, self.heldout_fraction)

    def split_prompts(
        self, prompts: Iterable[T], key: Callable[[T], str] | None = None
    ) -> tuple[list[T], list[T]]:
        """Split prompts (or items whose text ``key`` gives) into (train, heldout)."""
        train: list[T] = []
        heldout: list[T] = []
        for item in prompts:
            text = key(item) if key is not None else item
            (heldout if self.is_heldout(str(text)) else train).append(item)
        return train, heldout

    # -- writing -------------------------------------------------------------------------

    def _validate(self, rows: list[dict[str, Any]], kind: Kind) -> None:
        columns = PAIR_COLUMNS if kind == "pairs" else SFT_COLUMNS
        conversation = ("prompt", "chosen", "rejected") if kind == "pairs" else ("messages",)
        for i, row in enumerate(rows):
            where = f"{kind} row {i} (prompt_id={row.get('prompt_id')!r})"
            for name in _OPTIONAL:
                row.setdefault(name, None)
            missing, extra = set(columns) - set(row), set(row) - set(columns)
            if missing or extra:
                raise StoreError(
                    f"{where}: missing columns {sorted(missing)}, unexpected {sorted(extra)}"
                )
            if any(not row[c] for c in conversation):
                raise StoreError(f"{where}: empty conversation column")
            if row["content_hash"] != content_hash(row):
                raise StoreError(f"{where}: content_hash does not match its conversation")
            prompt = _prompt_text(row["prompt"] if kind == "pairs" else row["messages"][:-1])
            if self.is_heldout(prompt):
                raise StoreError(
                    f"{where}: the prompt is in the held-out split and may never enter "
                    f"training data (store {self.dir})"
                )

    def _shard_paths(self, kind: Kind) -> list[Path]:
        folder = self._kind_dir(kind)
        if not folder.is_dir():
            return []
        return sorted(p for p in folder.glob("*.parquet") if not p.name.startswith("."))

    def _hashes(self, kind: Kind) -> set[str]:
        """Content hashes of a kind, reading only shards not seen before by this instance."""
        import pyarrow.parquet as pq

        seen, hashes = self._hash_cache.get(kind, (set(), set()))
        for path in self._shard_paths(kind):
            if path.name not in seen:
                self._shard_meta(path, kind)  # a shard of the other kind is named, not read
                table = pq.read_table(path, columns=["content_hash"])
                hashes.update(table.column("content_hash").to_pylist())
                seen.add(path.name)
        self._hash_cache[kind] = (seen, hashes)
        return hashes

    def _table_of(self, kind: Kind, rows: list[dict[str, Any]]) -> pa.Table:
        import pyarrow as pa

        schema = _schema_of(kind)
        try:
            return pa.Table.from_pylist(rows, schema=schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise StoreError(f"{kind} rows do not fit the schema ({exc})") from None

    def _write_shard(self, kind: Kind, shard_id: str, table: pa.Table, info: dict) -> None:
        import pyarrow.parquet as pq

        meta = {"format": FORMAT_VERSION, "kind": kind, "shard_id": shard_id, **info}
        table = table.replace_schema_metadata({_META_KEY: json.dumps(meta).encode()})
        path = self._kind_dir(kind) / f"{shard_id}.parquet"
        _atomic_write(path, lambda f: pq.write_table(table, f), ".partial")

    def append(
        self,
        pairs: list[dict[str, Any]],
        sft: list[dict[str, Any]],
        shard_id: str,
        *,
        dropped: Mapping[str, int] | None = None,
        prompt_ids: Iterable[str] = (),
    ) -> AppendResult:
        """Append one shard of pairs and one of SFT rows, each written atomically.

        Idempotent per ``shard_id`` (how a re-run of an interrupted step avoids duplicates):
        once an append has completed, appending the same id does nothing; after a crash
        part-way, only the missing parts are written. Rows already stored, or repeated in the
        batch, are left out and counted; a kind with no new rows writes no shard. ``dropped``
        (harvest drop counts) goes to the append's log entry, for :meth:`stats`, and so do
        ``prompt_ids`` (every prompt the append covers, kept or not: see
        :meth:`harvested_prompt_ids`). Raises
        :class:`StoreError`, writing nothing, if a row is malformed or its prompt is held out.
        """
        if self.readonly:
            raise StoreError(f"{self.dir}: the store was opened read-only")
        if not _SHARD_ID.match(shard_id):
            raise StoreError(
                f"{self.dir}: shard id {shard_id!r} must be letters, digits, '.', '_' or '-' "
                "and start with a letter or digit"
            )
        self._validate(pairs, "pairs")
        self._validate(sft, "sft")
        # Another process (a server recording traffic) may append to the same store.
        with FileLock(str(self.dir / ".append.lock")):
            return self._append(pairs, sft, shard_id, dropped, prompt_ids)

    def _append(
        self,
        pairs: list[dict[str, Any]],
        sft: list[dict[str, Any]],
        shard_id: str,
        dropped: Mapping[str, int] | None,
        prompt_ids: Iterable[str],
    ) -> AppendResult:
        result = AppendResult(shard_id=shard_id)
        log_path = self._log_dir / f"{shard_id}.json"
        if log_path.exists():
            result.skipped = ["sft", "pairs"]
            return result
        tables = {"pairs": self._table_of("pairs", pairs), "sft": self._table_of("sft", sft)}
        created = datetime.now(timezone.utc).isoformat()
        for kind, rows in (("sft", sft), ("pairs", pairs)):
            if (self._kind_dir(kind) / f"{shard_id}.parquet").exists():
                result.skipped.append(kind)
                continue
            known = self._hashes(kind)
            keep: dict[str, int] = {}
            for i, row in enumerate(rows):
                if row["content_hash"] not in known:
                    keep.setdefault(row["content_hash"], i)
            duplicates = len(rows) - len(keep)
            if keep:  # no empty shards: `load_dataset("parquet")` cannot read a 0-row file
                info = {"created_at": created, "duplicates": duplicates}
                self._write_shard(kind, shard_id, tables[kind].take(sorted(keep.values())), info)
                known.update(keep)
                self._hash_cache[kind][0].add(f"{shard_id}.parquet")
            if kind == "pairs":
                result.pairs_written, result.duplicate_pairs = len(keep), duplicates
            else:
                result.sft_written, result.duplicate_sft = len(keep), duplicates
        # The log entry is written last: its presence marks the append as complete.
        entry = {
            **result.model_dump(exclude={"skipped"}),
            "created_at": created,
            "dropped": dict(dropped or {}),
            "prompt_ids": sorted(set(prompt_ids)),
        }
        data = json.dumps(entry, sort_keys=True).encode()
        self._log_dir.mkdir(parents=True, exist_ok=True)
        _atomic_write(log_path, lambda f: f.write(data), ".partial")
        return result

    def harvest_log(self) -> list[dict[str, Any]]:
        """One entry per completed append: rows written, duplicates and harvest drops."""
        entries = []
        if self._log_dir.is_dir():
            for path in sorted(self._log_dir.glob("*.json")):
                if path.name.startswith("."):
                    continue
                try:
                    entries.append(json.loads(path.read_text()))
                except (OSError, ValueError) as exc:
                    raise StoreError(f"{path}: unreadable log entry ({exc})") from None
        return sorted(entries, key=lambda e: (e.get("created_at", ""), e.get("shard_id", "")))

    def harvested_prompt_ids(self) -> set[str]:
        """Prompts some completed append covered (a resumed harvest skips them)."""
        return {pid for entry in self.harvest_log() for pid in entry.get("prompt_ids", [])}

    # -- reading -------------------------------------------------------------------------

    def _shard_meta(self, path: Path, kind: Kind) -> tuple[int, dict[str, Any]]:
        """A shard's row count and our metadata, after checking it has ``kind``'s columns."""
        import pyarrow.parquet as pq

        try:
            md = pq.read_metadata(path)
        except (OSError, ValueError) as exc:
            raise StoreError(f"{path}: unreadable shard ({exc})") from None
        _check_shard_columns(path, kind, set(md.schema.to_arrow_schema().names))
        raw = (md.metadata or {}).get(_META_KEY, b"{}")
        return md.num_rows, json.loads(raw)

    def shards(self) -> list[ShardInfo]:
        """Committed shards of both kinds, oldest first."""
        infos = []
        for kind in ("pairs", "sft"):
            for path in self._shard_paths(kind):
                rows, meta = self._shard_meta(path, kind)
                infos.append(
                    ShardInfo(
                        name=path.name,
                        kind=kind,
                        shard_id=path.stem,
                        rows=rows,
                        created=meta.get("created_at", ""),
                        duplicates=meta.get("duplicates", 0),
                    )
                )
        return sorted(infos, key=lambda s: (s.created, s.kind, s.name))

    def shard_files(self, kind: Kind) -> list[Path]:
        """Committed shard files of one kind, oldest first (for ``load_dataset``)."""
        order = [s.name for s in self.shards() if s.kind == kind]
        return [self._kind_dir(kind) / name for name in order]

    def _table(self, kind: Kind, columns: list[str] | None = None) -> pa.Table:
        """The rows of every shard of ``kind``; a row whose content hash an earlier shard holds
        is read once (a shard copied under another name must not count twice)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        full = _schema_of(kind)
        wanted = None if columns is None else list(dict.fromkeys([*columns, "content_hash"]))
        schema = full if wanted is None else pa.schema([full.field(c) for c in wanted])
        seen: set[str] = set()
        tables = []
        for path in self.shard_files(kind):  # their columns checked by shards()
            try:
                table = pq.read_table(path, columns=wanted, schema=schema)
            except (OSError, ValueError) as exc:
                raise StoreError(f"{path}: unreadable shard ({exc})") from None
            keep = []
            for content_hash in table.column("content_hash").to_pylist():
                keep.append(content_hash not in seen)
                seen.add(content_hash)
            tables.append(table if all(keep) else table.filter(pa.array(keep)))
        table = pa.concat_tables(tables) if tables else schema.empty_table()
        if columns is not None and "content_hash" not in columns:
            table = table.drop_columns(["content_hash"])
        return table.replace_schema_metadata(None)

    def _dataset(self, kind: Kind) -> datasets.Dataset:
        # Built from Arrow in memory: the same files load with `load_dataset("parquet", ...)`,
        # but this avoids a cache copy per call and works for an empty store.
        import datasets
        from datasets.table import InMemoryTable

        return datasets.Dataset(InMemoryTable(self._table(kind)))

    def pairs_dataset(self) -> datasets.Dataset:
        """All pairs as a ``datasets.Dataset`` (TRL conversational preference format)."""
        return self._dataset("pairs")

    def sft_dataset(self) -> datasets.Dataset:
        """All SFT rows as a ``datasets.Dataset`` (``messages`` format)."""
        return self._dataset("sft")

    def training_data(self, method: str) -> tuple[datasets.Dataset, list[ShardInfo]]:
        """The rows ``method`` trains on (DPO: pairs, SFT: final revisions) and their shards."""
        kind: Kind = DATA_KIND[method]
        return self._dataset(kind), [s for s in self.shards() if s.kind == kind]

    def row_hashes(self, kind: Kind | None = None) -> set[str]:
        """Content hashes of stored rows (of one kind, or both)."""
        kinds: tuple[Kind, ...] = (kind,) if kind else ("pairs", "sft")
        return {h for k in kinds for h in self._table(k, ["content_hash"]).column(0).to_pylist()}

    def stats(self) -> dict[str, Any]:
        """Counts: rows, per strategy, per principle, per cycle, harvest drops, duplicates."""
        pairs = self._table("pairs", ["strategy", "principle_ids", "cycle"]).to_pydict()
        sft_cycles = self._table("sft", ["cycle"]).column(0).to_pylist()
        principles: Counter[str] = Counter()
        for ids in pairs["principle_ids"]:
            principles.update(ids)
        cycles: dict[int, dict[str, int]] = {}
        for kind, values in (("pairs", pairs["cycle"]), ("sft", sft_cycles)):
            for cycle, n in Counter(values).items():
                cycles.setdefault(cycle, {"pairs": 0, "sft": 0})[kind] = n
        shards = self.shards()
        log = self.harvest_log()
        dropped: Counter[str] = Counter()
        for entry in log:
            dropped.update(entry.get("dropped", {}))
        return {
            "pairs": len(pairs["cycle"]),
            "sft": len(sft_cycles),
            "shards": len(shards),
            "appends": len(log),
            "by_strategy": dict(Counter(pairs["strategy"])),
            "by_principle": dict(principles.most_common()),
            "by_cycle": dict(sorted(cycles.items())),
            "dropped": dict(dropped.most_common()),
            "duplicates": sum(s.duplicates for s in shards),
            "heldout_fraction": self.heldout_fraction,
        }

    # -- export --------------------------------------------------------------------------

    def export(self, to: str | Path) -> Path:
        """Write ``to/pairs.parquet``, ``to/sft.parquet`` and a dataset card (``README.md``).

        The folder loads with ``datasets.load_dataset(str(to), "pairs")`` (or ``"sft"``).
        """
        import pyarrow.parquet as pq

        to = Path(to)
        _check_export_folder(to)
        try:
            to.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"{to}: cannot create the export folder ({exc.strerror or exc})"
                             ) from None
        for kind in ("pairs", "sft"):
            table = self._table(kind)
            _atomic_write(to / f"{kind}.parquet", lambda f, t=table: pq.write_table(t, f), "")
        card = _dataset_card(self.stats())
        _atomic_write(to / "README.md", lambda f: f.write(card.encode()), "")
        return to

    def push_to_hub(
        self, repo_id: str, *, private: bool | None = None, token: str | None = None
    ) -> None:
        """Push pairs and SFT rows to a Hugging Face dataset repo (configs "pairs" and "sft")."""
        try:
            for kind, ds in (("pairs", self.pairs_dataset()), ("sft", self.sft_dataset())):
                ds.push_to_hub(repo_id, config_name=kind, private=private, token=token)
        except Exception as exc:  # the hub client raises many types; report one clear error
            raise StoreError(
                f"pushing {self.dir} to the Hugging Face hub dataset '{repo_id}' failed: "
                f"{exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            ) from exc


def _schema_of(kind: Kind) -> pa.Schema:
    return pair_schema() if kind == "pairs" else sft_schema()


def _check_shard_columns(path: Path, kind: Kind, names: set[str]) -> None:
    """A shard of ``kind`` has its kind's columns; the rows of another file would be read as
    nulls where a column is missing."""
    missing = [name for name in _schema_of(kind).names if name not in names]
    if missing:
        other: Kind = "sft" if kind == "pairs" else "pairs"
        hint = (f"; it holds {other} rows: move it to {path.parent.parent / other}"
                if set(_schema_of(other).names) <= names else "")
        raise StoreError(f"{path}: not a {kind} shard, missing columns {', '.join(missing)}"
                         + hint)


_EXPORT_FILES = ("pairs.parquet", "sft.parquet", "README.md")
_CARD_START = "---\nconfigs:\n- config_name: pairs\n"


def _check_export_folder(to: Path) -> None:
    """Refuse to overwrite files that are not an earlier export's (its card says so)."""
    if to.exists() and not to.is_dir():
        raise StoreError(f"{to}: the export goes into a folder, and this is a file")
    present = [name for name in _EXPORT_FILES if (to / name).exists()]
    if not present:
        return
    card = to / "README.md"
    try:
        ours = card.is_file() and card.read_text(encoding="utf-8").startswith(_CARD_START)
    except (OSError, UnicodeDecodeError):
        ours = False
    if not ours:
        raise StoreError(f"{to} holds {', '.join(present)}, not from an earlier export: the "
                         "export would replace them; choose a new or empty folder")


def _dataset_card(stats: Mapping[str, Any]) -> str:
    principles = ", ".join(f"{k} ({v})" for k, v in stats["by_principle"].items()) or "none"
    strategies = ", ".join(f"{k} ({v})" for k, v in stats["by_strategy"].items()) or "none"
    return f"""---
configs:
- config_name: pairs
  default: true
  data_files:
  - split: train
    path: pairs.parquet
- config_name: sft
  data_files:
  - split: train
    path: sft.parquet
tags:
- preference
- dpo
- constitutional-ai
---

# Preference data harvested by selfimprove

Responses critiqued and revised against a constitution, judged by an AI judge in both orders.

- `pairs` ({stats["pairs"]} rows): TRL conversational preference format (`prompt`, `chosen`,
  `rejected` as message lists) for DPO. Strategies: {strategies}.
- `sft` ({stats["sft"]} rows): `messages` (prompt and final revision) for supervised fine-tuning.

Provenance columns: `strategy`, `prompt_id`, `constitution`, `constitution_hash`,
`principle_ids`, `check_results` (JSON), `p_b_order1`/`p_b_order2` (the judge's probability
that the revision is better, in each presentation order), `margin`, `critiques`,
`policy_version`, `cycle`, `created_at`, `content_hash` (sha256 of the conversation).

Principles cited in critiques: {principles}.

```python
from datasets import load_dataset
pairs = load_dataset("<this folder or repo>", "pairs", split="train")
```
"""
