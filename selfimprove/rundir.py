"""The run directory: every path of a run, and its typed records, read and written here only.

Layout::

    RUN_DIR/config.yaml           the run's configuration (written once, before anything else)
    RUN_DIR/config.sha256         its digest: a resume tells a cut-short file from an edit
    RUN_DIR/summary.json          a flat summary of the configuration, for the report
    RUN_DIR/status.json           running / finished / failed (with the error)
    RUN_DIR/checkpoints.sqlite    the cycle graph's durable checkpoints
    RUN_DIR/evals/vN.json         a version's evaluation on the held-out prompts
    RUN_DIR/evals/vN-gate.json    the gate's result for candidate vN
    RUN_DIR/cycles/cycle-NNNN.json  one record per finished cycle (1-based)
    RUN_DIR/report.md, plots/     the report
    RUN_DIR/store/, policies/     owned by the preference store and the policy registry
    RUN_DIR/control/              the control arm: a run directory of its own

Cycles are numbered from 1 everywhere outside the graph state.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from selfimprove.atomic import write_json, write_text
from selfimprove.errors import SelfImproveError
from selfimprove.evaluation import PolicyEval
from selfimprove.gate import GateResult

__all__ = ["CycleRecord", "RunDir", "RunDirError", "RunStatus"]

_CYCLE_FILE = re.compile(r"^cycle-(\d+)\.json$")
_VERSION_FILE = re.compile(r"^v(\d+)\.json$")


class RunDirError(SelfImproveError):
    """A run directory is missing, holds another run, or has an unreadable record."""


class CycleRecord(BaseModel):
    """What one finished improvement cycle did; written as ``cycles/cycle-NNNN.json``."""

    model_config = ConfigDict(extra="ignore")
    cycle: int = Field(ge=1, description="1-based cycle number")
    prompts: int = Field(default=0, description="prompts run through the critique graph")
    pairs_kept: int = Field(default=0, description="preference pairs added to the store")
    sft_rows: int = Field(default=0, description="final revisions usable for SFT")
    dropped: dict[str, int] = Field(
        default_factory=dict, description="pairs not kept, by reason (tie, duplicate, …)"
    )
    kept: dict[str, int] = Field(
        default_factory=dict, description="pairs kept, by what decided them (checks, judge)"
    )
    trained: bool = False
    train_method: str | None = Field(default=None, description="'sft', 'dpo', … or None")
    train_metrics: dict[str, Any] = Field(
        default_factory=dict,
        description="train_loss, rewards/margins, rewards/accuracies, steps, runtime_s, …",
    )
    candidate: str | None = Field(default=None, description="the candidate's version, if any")
    eval: GateResult | None = Field(default=None, description="the gate's result")
    decision: Literal["promoted", "rejected", "skipped"] = "skipped"
    reasons: list[str] = Field(default_factory=list, description="why rejected or skipped")
    current: str = Field(default="v0", description="the current version after the cycle")
    stage_seconds: dict[str, float] = Field(default_factory=dict)


class RunStatus(BaseModel):
    status: Literal["running", "finished", "failed", "interrupted"]
    detail: str = ""


class RunDir:
    """One run directory. Creating the object touches nothing on disk."""

    CONFIG = "config.yaml"
    CONFIG_DIGEST = "config.sha256"
    SUMMARY = "summary.json"
    STATUS = "status.json"
    CHECKPOINTS = "checkpoints.sqlite"
    REPORT = "report.md"
    PLOTS = "plots"
    EVALS = "evals"
    TRANSFER = "transfer"
    CYCLES = "cycles"
    CONTROL = "control"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # -- paths -----------------------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.path / self.CONFIG

    @property
    def checkpoints_path(self) -> Path:
        return self.path / self.CHECKPOINTS

    @property
    def report_path(self) -> Path:
        return self.path / self.REPORT

    @property
    def plots_dir(self) -> Path:
        return self.path / self.PLOTS

    @property
    def control(self) -> RunDir:
        return RunDir(self.path / self.CONTROL)

    def eval_path(self, version: str) -> Path:
        return self.path / self.EVALS / f"{version}.json"

    def gate_path(self, candidate: str) -> Path:
        return self.path / self.EVALS / f"{candidate}-gate.json"

    def transfer_path(self, name: str, version: str) -> Path:
        """A version's evaluation on the transfer prompt set ``name``."""
        return self.path / self.EVALS / self.TRANSFER / name / f"{version}.json"

    def cycle_path(self, cycle: int) -> Path:
        """The record of 1-based ``cycle``."""
        if cycle < 1:
            raise ValueError(f"cycles are numbered from 1, got {cycle}")
        return self.path / self.CYCLES / f"cycle-{cycle:04d}.json"

    # -- the run's configuration -------------------------------------------------------------

    def holds_run(self) -> bool:
        return self.config_path.is_file()

    def refuse_existing(self) -> None:
        """Raise :class:`RunDirError` unless the path is free for a new run: absent, or an
        empty directory. A run's files in a directory of other files would overwrite them."""
        if self.holds_run():
            raise RunDirError(
                f"{self.path} already holds a run; continue it with `selfimprove run --resume "
                f"{self.path}` or choose another --run-dir"
            )
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f"{self.path} is a file, not a directory: choose another --run-dir")
        if self.path.is_dir() and any(self.path.iterdir()):
            raise RunDirError(
                f"{self.path} holds files but no run; a run writes its own files there "
                "(summary.json, status.json, report.md, ...): choose a new or empty --run-dir"
            )

    def create(self, config: BaseModel, summary: dict[str, Any]) -> None:
        """Write the config and summary of a new run; refuse a path that is not free."""
        self.refuse_existing()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunDirError(f"{self.path}: cannot create the run directory "
                              f"({exc.strerror or exc})") from None
        text = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
        write_text(self.config_path, text)
        # In `sha256sum` format, so `sha256sum -c config.sha256` checks it by hand too.
        write_text(self.path / self.CONFIG_DIGEST, f"{_sha256(text)}  {self.CONFIG}\n")
        write_json(self.path / self.SUMMARY, summary)

    def config_edited(self) -> bool:
        """Whether config.yaml differs from what the run wrote (False for runs that kept no
        digest: those written before it was kept)."""
        try:
            digest = (self.path / self.CONFIG_DIGEST).read_text(encoding="utf-8").split()[0]
            current = _sha256(self.config_path.read_bytes().decode("utf-8", "replace"))
        except (OSError, IndexError):
            return False
        return digest != current

    def summary(self) -> dict[str, Any]:
        """The configuration summary, or an empty mapping."""
        data = self._read(self.path / self.SUMMARY)
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise RunDirError(f"{self.path / self.SUMMARY}: expected a JSON object")
        return data

    def set_status(self, status: str, detail: str = "") -> None:
        write_json(self.path / self.STATUS, RunStatus(status=status, detail=detail)
                   .model_dump(mode="json"))  # type: ignore[arg-type]

    def status(self) -> RunStatus | None:
        data = self._read(self.path / self.STATUS)
        return None if data is None else self._validate(RunStatus, data, self.path / self.STATUS)

    # -- evaluations -------------------------------------------------------------------------

    def load_eval(self, version: str) -> PolicyEval | None:
        path = self.eval_path(version)
        data = self._read(path)
        return None if data is None else self._validate(PolicyEval, data, path)

    def save_eval(self, evaluation: PolicyEval) -> None:
        write_json(self.eval_path(evaluation.version), evaluation.model_dump(mode="json"))

    def load_gate(self, candidate: str) -> GateResult | None:
        path = self.gate_path(candidate)
        data = self._read(path)
        return None if data is None else self._validate(GateResult, data, path)

    def save_gate(self, candidate: str, result: GateResult) -> None:
        write_json(self.gate_path(candidate), result.model_dump(mode="json"))

    def load_transfer(self, name: str, version: str) -> PolicyEval | None:
        path = self.transfer_path(name, version)
        data = self._read(path)
        return None if data is None else self._validate(PolicyEval, data, path)

    def save_transfer(self, name: str, evaluation: PolicyEval) -> None:
        write_json(self.transfer_path(name, evaluation.version),
                   evaluation.model_dump(mode="json"))

    def transfer_sets(self) -> dict[str, list[PolicyEval]]:
        """Every transfer set's saved evaluations, by set name, versions in order."""
        folder = self.path / self.EVALS / self.TRANSFER
        if not folder.is_dir():
            return {}
        sets: dict[str, list[PolicyEval]] = {}
        for directory in sorted(p for p in folder.iterdir() if p.is_dir()):
            numbered = sorted((int(m.group(1)), p.stem) for p in directory.glob("v*.json")
                              if (m := _VERSION_FILE.match(p.name)))
            evals = [self.load_transfer(directory.name, version) for _, version in numbered]
            sets[directory.name] = [e for e in evals if e is not None]
        return {name: evals for name, evals in sets.items() if evals}

    def baseline(self) -> PolicyEval | None:
        """The base policy's evaluation (every run starts from v0)."""
        return self.load_eval("v0")

    # -- cycle records -----------------------------------------------------------------------

    def save_cycle(self, record: CycleRecord) -> None:
        write_json(self.cycle_path(record.cycle), record.model_dump(mode="json"))

    def load_cycles(self) -> list[CycleRecord]:
        """The finished cycles, in order (empty when none has finished)."""
        if not self.path.is_dir():
            raise RunDirError(f"{self.path}: no such run directory")
        folder = self.path / self.CYCLES
        numbered = []
        for p in folder.glob("cycle-*.json"):
            match = _CYCLE_FILE.match(p.name)
            if match:
                numbered.append((int(match.group(1)), p))
        out = []
        for number, path in sorted(numbered):
            record = self._validate(CycleRecord, self._read(path), path)
            if record.cycle != number:
                # a copied or renamed record would be reported as another cycle
                raise RunDirError(f"{path}: the record is of cycle {record.cycle}, not "
                                  f"{number} as its name says")
            out.append(record)
        return out

    # -- reading -----------------------------------------------------------------------------

    @staticmethod
    def _read(path: Path) -> Any | None:
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text("utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RunDirError(f"{path}: cannot read JSON: {exc}") from exc

    @staticmethod
    def _validate(model: type[Any], data: Any, path: Path) -> Any:
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in err["loc"])
            raise RunDirError(f"{path}: field '{where}': {err['msg']}") from None


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
