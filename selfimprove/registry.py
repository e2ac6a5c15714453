"""Policy versions of one run: ``v0`` (the base), ``v1``, … and an atomic ``current`` pointer.

Layout under the run directory::

    policies/v0/policy.json        the base model (no weights of its own)
    policies/vN/policy.json        parent, method, data used, training config, metrics, evals
    policies/vN/adapter/           PEFT adapter files (or model/ for a full fine-tune)
    policies/current.json          which version backends serve
    policies/.counter              the last version number handed out (never reused)
    policies/.staging-<id>/        a training run in progress (invisible until committed)

Training writes into a staging directory; :meth:`PolicyRegistry.commit` moves it into place
with one rename, so a crash leaves either nothing or a complete version. Every JSON file is
replaced atomically (temp file, fsync, ``os.replace``). A staging directory whose owner died
is removed the next time the registry is opened.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from filelock import FileLock, Timeout
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from selfimprove.adapters import read_adapter_config
from selfimprove.atomic import fsync_dir, write_json
from selfimprove.errors import PolicyError
from selfimprove.models import DEFAULT_MODEL
from selfimprove.types import PolicyRef

__all__ = ["DataUsed", "EvalRecord", "PolicyRecord", "PolicyRegistry"]

POLICIES = "policies"
STAGING_PREFIX = ".staging-"
_VERSION = re.compile(r"^v(\d+)$")

Status = Literal["base", "candidate", "promoted", "rejected", "corrupt"]


class DataUsed(BaseModel):
    """One store shard (or other data source) a version was trained on."""

    name: str
    rows: int = Field(ge=0)
    kind: str = ""


class EvalRecord(BaseModel):
    at: str
    metrics: dict[str, Any]


class PolicyRecord(BaseModel):
    """The contents of ``policy.json``."""

    model_config = ConfigDict(extra="forbid")
    version: str
    parent: str | None = None
    base_model: str = Field(description="the model the weights apply to")
    method: Literal["base", "dpo", "sft"] = "base"
    artifact: Literal["none", "adapter", "model"] = "none"
    data: list[DataUsed] = Field(default_factory=list)
    train_config: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    cycle: int | None = Field(default=None, description="the improvement cycle that trained it")
    created_at: str = Field(default_factory=lambda: _now())
    evals: list[EvalRecord] = Field(default_factory=list)
    status: Status = "candidate"
    reason: str | None = Field(default=None, description="why it was rejected or is corrupt")
    promoted_at: str | None = None

    @property
    def number(self) -> int:
        return _number(self.version)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _number(version: str) -> int:
    match = _VERSION.match(version)
    if not match:
        raise PolicyError(f"'{version}' is not a policy version (expected v0, v1, ...)")
    return int(match.group(1))


class PolicyRegistry:
    """The policy versions of the run in ``run_dir``.

    ``base_model`` is fixed when the registry is created (``None``: the one recorded in ``v0``,
    or the embedded default for a new registry); opening with a different one is an error.
    Writers serialise on a file lock, so several processes may share a run directory.
    """

    def __init__(self, run_dir: str | Path, base_model: str | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.dir = self.run_dir / POLICIES
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(str(self.dir / ".lock"))
        self._staging_locks: dict[Path, FileLock] = {}
        with self._lock:
            self.base_model = self._open_base(base_model)
            self._clean_staging()

    # -- opening ---------------------------------------------------------------------------

    def _open_base(self, base_model: str | None) -> str:
        path = self._record_path("v0")
        if not path.exists():
            record = PolicyRecord(
                version="v0", base_model=base_model or DEFAULT_MODEL, status="base"
            )
            path.parent.mkdir(exist_ok=True)
            write_json(path, record.model_dump(mode="json"))
        recorded = self._read_record("v0").base_model
        if base_model is not None and base_model != recorded:
            raise PolicyError(
                f"{self.dir}: the policies of this run are built on '{recorded}', "
                f"not '{base_model}'"
            )
        return recorded

    def _clean_staging(self) -> None:
        """Remove staging directories whose owner is gone (its lock is free)."""
        names = {p.name.removesuffix(".lock") for p in self.dir.glob(STAGING_PREFIX + "*")}
        for name in sorted(names):
            path = self.dir / name
            if path in self._staging_locks:
                continue
            lock = FileLock(str(path) + ".lock")
            try:
                lock.acquire(timeout=0)
            except Timeout:
                continue  # a live training run owns it
            try:
                shutil.rmtree(path, ignore_errors=True)
            finally:
                lock.release()
                Path(lock.lock_file).unlink(missing_ok=True)
        for tmp in self.dir.glob(".tmp-*"):
            tmp.unlink(missing_ok=True)

    # -- reading ---------------------------------------------------------------------------

    def _record_path(self, version: str) -> Path:
        return self.dir / version / "policy.json"

    def _read_record(self, version: str) -> PolicyRecord:
        path = self._record_path(version)
        if not path.parent.is_dir():
            raise PolicyError(f"policy {version} does not exist (no {path.parent})")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise PolicyError(f"policy {version} is corrupt: {path} is missing") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise PolicyError(f"policy {version} is corrupt: {path} is not JSON ({exc})") from None
        try:
            record = PolicyRecord.model_validate(data)
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            field = ".".join(str(p) for p in err["loc"])
            raise PolicyError(
                f"policy {version} is corrupt: {path}: field '{field}': {err['msg']}"
            ) from None
        if record.version != version:
            raise PolicyError(f"policy {version} is corrupt: {path} says it is {record.version}")
        return record

    def _resolve_base(self, base_model: str) -> str:
        """Base models inside the run (a full fine-tune's ``model/``) are stored relative."""
        if base_model.startswith(POLICIES + "/"):
            return str(self.run_dir / base_model)
        return base_model

    def _relative_base(self, base_model: str) -> str:
        path = Path(base_model)
        if path.is_absolute():
            try:
                return path.resolve().relative_to(self.run_dir.resolve()).as_posix()
            except ValueError:
                pass
        return base_model

    def _check_files(self, version: str, folder: Path, record: PolicyRecord) -> None:
        """Raise :class:`PolicyError` unless ``folder`` holds the weights ``record`` names."""
        if record.artifact == "adapter":
            try:
                config = read_adapter_config(folder / "adapter", version)
            except PolicyError as exc:
                raise PolicyError(str(exc).replace(f"policy {version}:",
                                                   f"policy {version} is corrupt:", 1)) from None
            named = config.get("base_model_name_or_path")
            accepted = {record.base_model, self._resolve_base(record.base_model)}
            if named not in accepted:
                raise PolicyError(
                    f"policy {version}: its adapter was trained on '{named}', but the policy "
                    f"names base model '{record.base_model}'"
                )
        elif record.artifact == "model":
            model = folder / "model"
            if not (model / "config.json").is_file():
                raise PolicyError(f"policy {version} is corrupt: {model}/config.json is missing")
            if not any(model.glob("*.safetensors")) and not any(model.glob("*.bin")):
                raise PolicyError(f"policy {version} is corrupt: no weight files in {model}")

    def _ref(self, record: PolicyRecord) -> PolicyRef:
        folder = self.dir / record.version
        if record.artifact == "adapter":
            return PolicyRef(
                version=record.version,
                base_model=self._resolve_base(record.base_model),
                adapter_path=str(folder / "adapter"),
            )
        if record.artifact == "model":
            return PolicyRef(version=record.version, base_model=str(folder / "model"))
        return PolicyRef(version=record.version, base_model=self._resolve_base(record.base_model))

    def record(self, version: str) -> PolicyRecord:
        """The validated record of ``version`` (files checked too)."""
        _number(version)
        record = self._read_record(version)
        self._check_files(version, self.dir / version, record)
        return record

    def get(self, version: str) -> PolicyRef:
        """A reference to ``version`` after checking its record and files.

        Raises :class:`PolicyError` naming the version and what is missing or corrupt.
        """
        return self._ref(self.record(version))

    def current_version(self) -> str:
        """The promoted version backends serve; a pointer to anything else is an error."""
        version = self._pointer()
        status = self._read_record(version).status if version != "v0" else "base"
        if status not in ("base", "promoted"):
            raise PolicyError(
                f"{self.dir / 'current.json'} names {version}, whose status is {status}: only "
                f"a promoted version can be current; {self._repair_hint()}"
            )
        return version

    def _repair_hint(self, which: str = "the version that should be current") -> str:
        return (f"repair it by promoting {which}: `selfimprove policies {self.dir.parent} "
                "--promote VERSION`")

    def _pointer(self) -> str:
        path = self.dir / "current.json"
        if not path.exists():
            promoted = [r.version for r in self.versions() if r.status == "promoted"]
            if promoted:
                raise PolicyError(
                    f"{path} is missing, but {', '.join(promoted)} "
                    f"{'was' if len(promoted) == 1 else 'were'} promoted; "
                    f"{self._repair_hint('the one that should be current')}"
                )
            return "v0"
        try:
            version = json.loads(path.read_text(encoding="utf-8"))["version"]
            _number(version)
        except (OSError, ValueError, KeyError, TypeError, PolicyError) as exc:
            raise PolicyError(
                f"{path} is corrupt ({exc}); {self._repair_hint()}"
            ) from None
        return version

    def trained_in(self, cycle: int, method: str) -> str | None:
        """The version committed by ``method`` in 1-based ``cycle``, if any (a run that crashed
        after committing finds it again instead of training twice)."""
        for rec in self.versions():
            if rec.cycle == cycle and rec.method == method and rec.status != "corrupt":
                return rec.version
        return None

    def parent_for_training(self, version: str | None = None) -> PolicyRef:
        """The version to train from (default: current); a rejected one is refused."""
        if version is None:
            return self.current()
        record = self.record(version)
        if record.status == "rejected":
            raise PolicyError(
                f"policy {version} was rejected ({record.reason}); train from a promoted "
                "version or a candidate instead"
            )
        return self._ref(record)

    def current(self) -> PolicyRef:
        """The promoted policy (``v0`` until something is promoted)."""
        return self.get(self.current_version())

    def _numbers(self) -> list[int]:
        out = []
        for path in self.dir.iterdir():
            match = _VERSION.match(path.name)
            if match and path.is_dir():
                out.append(int(match.group(1)))
        return sorted(out)

    def versions(self) -> list[PolicyRecord]:
        """Every version, oldest first; a corrupt one appears with status ``corrupt``."""
        records = []
        for n in self._numbers():
            version = f"v{n}"
            try:
                records.append(self.record(version))
            except PolicyError as exc:
                try:
                    raw = self._read_record(version)
                except PolicyError:
                    raw = PolicyRecord(version=version, base_model="?")
                records.append(raw.model_copy(update={"status": "corrupt", "reason": str(exc)}))
        return records

    # -- writing ---------------------------------------------------------------------------

    def staging_dir(self) -> Path:
        """A fresh directory for a training run; it is invisible until :meth:`commit`.

        The directory is locked for the life of this process: if the process dies, the lock
        goes with it and the next :class:`PolicyRegistry` removes the directory.
        """
        path = self.dir / f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}"
        lock = FileLock(str(path) + ".lock")
        lock.acquire(timeout=0)
        path.mkdir()
        self._staging_locks[path] = lock
        return path

    def discard(self, staging: Path) -> None:
        """Remove a staging directory (a failed run)."""
        staging = Path(staging)
        shutil.rmtree(staging, ignore_errors=True)
        self._release_staging(staging)

    def _release_staging(self, staging: Path) -> None:
        lock = self._staging_locks.pop(staging, None)
        if lock is not None:
            lock.release()
            Path(lock.lock_file).unlink(missing_ok=True)

    def commit(
        self,
        staging: Path,
        *,
        parent: str,
        method: Literal["dpo", "sft"],
        data: Iterable[DataUsed | Mapping[str, Any]] = (),
        train_config: Mapping[str, Any] | None = None,
        metrics: Mapping[str, float] | None = None,
        base_model: str | None = None,
        cycle: int | None = None,
    ) -> PolicyRef:
        """Make ``staging`` the next version (status ``candidate``; not current).

        ``staging`` must hold ``adapter/`` or ``model/``. ``base_model`` defaults to the
        parent's. The version number is taken under the registry lock and never reused,
        even if a version directory is later deleted.
        """
        staging = Path(staging)
        if staging.parent.resolve() != self.dir.resolve() or not staging.name.startswith(
            STAGING_PREFIX
        ):
            raise PolicyError(f"{staging} is not a staging directory of {self.dir}")
        artifact = "adapter" if (staging / "adapter").is_dir() else "model"
        parent_ref = self.get(parent)
        base = base_model or parent_ref.base_model
        with self._lock:
            number = max([self._counter(), *self._numbers()]) + 1
            version = f"v{number}"
            record = PolicyRecord(
                version=version,
                parent=parent,
                base_model=self._relative_base(base),
                method=method,
                artifact=artifact,
                data=[d if isinstance(d, DataUsed) else DataUsed.model_validate(d) for d in data],
                train_config=dict(train_config or {}),
                metrics={k: float(v) for k, v in (metrics or {}).items()},
                cycle=cycle,
                status="candidate",
            )
            self._check_files(f"{version} (staged in {staging.name})", staging, record)
            write_json(staging / "policy.json", record.model_dump(mode="json"))
            # the number is spent before the rename, so a crash in between cannot reuse it
            write_json(self.dir / ".counter", {"last": number})
            target = self.dir / version
            if target.exists():  # a directory nobody counted (copied in by hand): never overwrite
                raise PolicyError(f"{target} already exists; refusing to overwrite it")
            os.rename(staging, target)
            fsync_dir(self.dir)
        self._release_staging(staging)
        return self._ref(record)

    def _counter(self) -> int:
        path = self.dir / ".counter"
        if not path.exists():
            return 0
        try:
            return int(json.loads(path.read_text(encoding="utf-8"))["last"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise PolicyError(f"{path} is corrupt ({exc})") from None

    def _update(self, version: str, **changes: Any) -> PolicyRecord:
        record = self._read_record(version).model_copy(update=changes)
        write_json(self._record_path(version), record.model_dump(mode="json"))
        return record

    def promote(self, version: str) -> PolicyRef:
        """Make ``version`` current. Only a committed, valid, non-rejected version qualifies."""
        with self._lock:
            record = self.record(version)
            if record.status == "rejected":
                raise PolicyError(
                    f"policy {version} was rejected ({record.reason}); it cannot become current"
                )
            if record.status == "candidate":
                record = self._update(version, status="promoted", promoted_at=_now())
            write_json(self.dir / "current.json", {"version": version, "updated_at": _now()})
        return self._ref(record)

    def mark_rejected(self, version: str, reason: str) -> None:
        """Record that ``version`` failed its gate; it can never be promoted afterwards."""
        with self._lock:
            record = self._read_record(version)
            if record.status == "base":
                raise PolicyError("policy v0 is the base model; it cannot be rejected")
            if version == self.current_version():
                raise PolicyError(
                    f"policy {version} is current; promote another version before rejecting it"
                )
            self._update(version, status="rejected", reason=reason)

    def record_eval(self, version: str, metrics: Mapping[str, Any]) -> None:
        """Append evaluation results to ``version``'s record."""
        with self._lock:
            record = self._read_record(version)
            evals = [*record.evals, EvalRecord(at=_now(), metrics=dict(metrics))]
            self._update(version, evals=evals)
