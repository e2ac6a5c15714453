"""``selfimprove serve``: a run's current version behind an OpenAI-compatible HTTP API.

:mod:`.openai_api` holds the wire format, :mod:`.service` what is served (the current version,
followed across promotions, and the traffic recorder), :mod:`.app` the FastAPI routes.
"""

from selfimprove.serving.app import build_app
from selfimprove.serving.service import RunService

__all__ = ["RunService", "build_app"]
