"""Prompt sets training never saw: does what a run trained carry over to them?

A run's held-out prompts are new prompts of the kinds it trained on. A transfer set
(``transfer_prompts`` in the run config, e.g. the packaged ``instructions-heldout-kinds``)
holds prompts of other kinds or topics. After the cycles, v0 and each arm's current version
answer every prompt of each set (the gate's sampling, the set's own checks beside the
constitution's); the results are saved under ``RUN_DIR/evals/transfer/SET/VERSION.json`` and
the report puts them side by side. ``selfimprove eval RUN --prompts SET --save`` does the same
for a run that has already finished.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from selfimprove.backends.base import Backend
from selfimprove.constitution import Constitution
from selfimprove.errors import ConfigError
from selfimprove.rundir import RunDir
from selfimprove.sources import PromptRecord
from selfimprove.types import SamplingParams

__all__ = ["evaluate_transfer", "load_transfer_sets", "transfer_set_name"]

_PROMPT_SUFFIXES = {".jsonl", ".json", ".ndjson", ".txt"}


def transfer_set_name(source: str | Path) -> str:
    """The name a set is saved and reported under: a packaged set's name, a file's stem."""
    path = Path(source)
    name = path.stem if path.suffix.lower() in _PROMPT_SUFFIXES else path.name
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip(".-") or "prompts"


def load_transfer_sets(
    sources: Sequence[str], train: Sequence[PromptRecord], where: Path | str = "<config>",
    field: str | None = "transfer_prompts", *, constitution: Constitution | None = None,
) -> dict[str, list[PromptRecord]]:
    """Load each set by name; a set that shares a name with another or holds a
    training prompt of the run is a located error (it could not show transfer). Errors name
    ``where`` and ``field.INDEX`` (no field when ``field`` is None); with ``constitution``, a
    prompt check that reuses one of its check ids for another check is an error on its line."""
    from selfimprove.sources import load_prompt_records

    trained = {p.prompt for p in train}
    sets: dict[str, list[PromptRecord]] = {}
    for i, source in enumerate(sources):
        key = f"{field}.{i}" if field else None
        name = transfer_set_name(source)
        if name in sets:
            raise ConfigError(where, f"two transfer prompt sets are named '{name}'", field=key)
        # an empty file is an error of its own
        records = load_prompt_records(source, constitution=constitution)
        seen = [r.prompt for r in records if r.prompt in trained]
        if seen:
            raise ConfigError(
                where, f"{len(seen)} prompt(s) of {source} are training prompts of this run "
                f"(first: {seen[0][:60]!r}): a transfer set must be unseen", field=key,
            )
        sets[name] = records
    return sets


async def evaluate_transfer(
    run: RunDir,
    sets: Mapping[str, Sequence[PromptRecord]],
    backend: Backend,
    constitution: Constitution,
    sampling: SamplingParams,
    *,
    reference: RunDir | None = None,
    progress: Callable[[str, str], None] = lambda stage, msg: None,
) -> None:
    """Evaluate v0 and the arm's current version on every set and save
    the results in ``run``. A result already saved for the same prompts is kept (a resumed run
    does not evaluate twice); ``reference`` is a run on the same base model whose v0 results
    hold here too (the loop arm's, for the control arm)."""
    from selfimprove.evaluation import evaluate_policy
    from selfimprove.registry import PolicyRegistry

    registry = PolicyRegistry(run.path)
    wanted = list(dict.fromkeys(["v0", registry.current_version()]))
    for name, records in sets.items():
        texts = [r.prompt for r in records]
        for version in wanted:
            known = run.load_transfer(name, version)
            if known is not None and known.prompts == texts:
                continue
            shared = reference.load_transfer(name, "v0") if reference and version == "v0" \
                else None
            if shared is not None and shared.prompts == texts:
                run.save_transfer(name, shared)
                continue
            progress("transfer", f"evaluating {version} on {len(texts)} prompts of {name}")
            result = await evaluate_policy(backend, registry.get(version), records,
                                           constitution, sampling, retention=())
            run.save_transfer(name, result)
