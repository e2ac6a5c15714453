"""The backend contract: async chat completions for batches of conversations."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from selfimprove.errors import PolicyError
from selfimprove.types import Completion, Conversation, PolicyRef, SamplingParams


def refuse_full_model(backend: str, policy: PolicyRef) -> None:
    """Raise for a full fine-tune on a backend that can only switch LoRA adapters.

    Such a version has no adapter, so serving "its" base model would silently serve v0.
    """
    if policy.adapter_path is None and policy.version != "v0":
        raise PolicyError(
            f"policy {policy.version} is a full fine-tune (weights in {policy.base_model}); "
            f"{backend} switches LoRA adapters on its base model only: start it on that "
            "model directory instead"
        )


class Backend(ABC):
    """Chat completions for a batch of conversations.

    Implementations must be safe to call concurrently from many graph threads: concurrent
    calls are the way work is batched (the local backend gathers them into one ``generate``).
    """

    #: whether :meth:`option_logprobs` is implemented (judges fall back to generated verdicts)
    supports_logprobs: bool = False

    @abstractmethod
    async def generate(
        self, conversations: Sequence[Conversation], params: SamplingParams
    ) -> list[list[Completion]]:
        """Return ``params.n`` completions for each conversation, in order."""

    async def option_logprobs(
        self, conversations: Sequence[Conversation], options: Sequence[str]
    ) -> list[dict[str, float]]:
        """Log-probability of each option as the first token of the assistant's reply.

        Returns one ``{option: logprob}`` mapping per conversation.
        """
        raise NotImplementedError(f"{type(self).__name__} does not provide log-probabilities")

    async def load_policy(self, policy: PolicyRef) -> None:
        """Serve ``policy`` from now on (e.g. switch LoRA adapter) without reloading the base."""
        raise NotImplementedError(f"{type(self).__name__} cannot switch policies")

    @property
    def policy(self) -> PolicyRef | None:
        """The policy currently served, when the backend knows it."""
        return None

    async def aclose(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Release resources (threads, HTTP clients, servers)."""
