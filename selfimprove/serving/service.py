"""What the server serves: a run's current version, followed across promotions.

Each request asks :meth:`RunService.context` for the critique context of the version current
now. A promotion is seen by the next request: its roles follow the new version, and the
backend switches once the requests still running on the old version have finished (see
:mod:`selfimprove.backends.served`), so no request fails or gets half of each.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from selfimprove.config import RunConfig, ServeConfig
from selfimprove.critique_loop.state import CritiqueContext
from selfimprove.errors import PolicyError, SelfImproveError
from selfimprove.registry import PolicyRegistry
from selfimprove.rundir import RunDir
from selfimprove.traffic import TrafficRecorder, move_journal

__all__ = ["RunService"]

log = logging.getLogger(__name__)


class RunService:
    """The run's policy, critique context and (optionally) traffic recorder for a server."""

    def __init__(self, run_dir: str | Path, cfg: RunConfig, serve: ServeConfig,
                 *, context: CritiqueContext | None = None) -> None:
        self.run = RunDir(run_dir)
        self.cfg = cfg
        self.serve = serve
        self.model_name = serve.model_name or self.run.path.resolve().name
        self.registry = PolicyRegistry(self.run.path)
        self._base = context  # built by start() unless given (tests, embedding)
        self._version: str | None = None
        self._ctx: CritiqueContext | None = None
        self.recorder: TrafficRecorder | None = None

    def start(self) -> None:
        """Load the models (current version) and open the recorder."""
        if self._base is None:
            from selfimprove.wiring import make_context

            self._base = make_context(self.cfg.critique, self.registry.current())
        if self.serve.record:
            self.recorder = TrafficRecorder(self.run.path, self.cfg.harvest,
                                            flush_seconds=self.serve.flush_seconds)
        else:  # what an earlier, recording server left in the journal (killed, say)
            move_journal(self.run.path, self.cfg.harvest)
        self.context()

    def context(self) -> CritiqueContext:
        """The critique context of the version current now."""
        assert self._base is not None, "start() the service first"
        try:
            version = self.registry.current_version()
        except SelfImproveError as exc:
            if self._ctx is None:
                raise
            # A pointer being repaired must not take the server down: keep the last version.
            log.warning("keeping %s: %s", self._version, exc)
            return self._ctx
        if version != self._version or self._ctx is None:
            policy = self.registry.get(version)
            self._ctx = dataclasses.replace(self._base,
                                            roles=self._base.roles.following(policy))
            if self._version is not None:
                log.warning("now serving %s (was %s)", version, self._version)
            self._version = version
        return self._ctx

    @property
    def version(self) -> str:
        return self._version or "v0"

    def accepts(self, model: str) -> bool:
        """Whether a request's ``model`` names what this server serves."""
        return model in (self.model_name, self.version, "current")

    async def aclose(self) -> None:
        if self.recorder is not None:
            self.recorder.close()
        if self._base is not None:
            await self._base.roles.aclose()


def check_exposure(serve: ServeConfig, api_key: str | None) -> None:
    """Without an API key, refuse to listen beyond this machine."""
    if api_key is None and serve.host not in ("127.0.0.1", "localhost", "::1"):
        raise PolicyError(
            f"serve.host {serve.host!r} exposes the server beyond this machine: set an API key "
            f"in ${serve.api_key_env} first (or bind 127.0.0.1)"
        )
