"""The roles of the critique loop: which backend, serving which version, with which sampling."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from selfimprove.backends.base import Backend
from selfimprove.backends.served import serve, unwrap
from selfimprove.types import PolicyRef, SamplingParams

__all__ = ["Roles"]


@dataclass
class Roles:
    """The backend and sampling settings of each role; by default every role is the policy.

    A role given as a :class:`~selfimprove.backends.served.ServedPolicy` names the version that
    answers it; a bare backend answers with whatever it serves (a separately configured critic
    or judge keeps its own model). :meth:`following` moves every role that shares the policy's
    backend to another version in one explicit step.
    """

    policy: Backend
    critic: Backend | None = None
    reviser: Backend | None = None
    judge: Backend | None = None
    policy_sampling: SamplingParams = field(
        default_factory=lambda: SamplingParams(max_new_tokens=128)
    )
    critic_sampling: SamplingParams = field(
        default_factory=lambda: SamplingParams(max_new_tokens=96)
    )
    reviser_sampling: SamplingParams = field(
        default_factory=lambda: SamplingParams(max_new_tokens=128)
    )
    sample_sampling: SamplingParams = field(
        default_factory=lambda: SamplingParams(max_new_tokens=128, temperature=0.8, top_p=0.95)
    )
    judge_sampling: SamplingParams = field(
        default_factory=lambda: SamplingParams(max_new_tokens=16)
    )

    def __post_init__(self) -> None:
        self.critic = self.critic or self.policy
        self.reviser = self.reviser or self.policy
        self.judge = self.judge or self.policy

    @property
    def policy_version(self) -> str:
        """The version answering as the policy (``v0`` when a bare backend does)."""
        ref = self.policy.policy
        return ref.version if ref is not None else "v0"

    def shares_policy_backend(self, role: Backend) -> bool:
        return unwrap(role) is unwrap(self.policy)

    def following(self, policy: PolicyRef) -> Roles:
        """These roles with ``policy`` answering as the policy and as every role that shares
        the policy's backend (self-critique: the policy critiques and judges itself)."""

        def move(role: Backend) -> Backend:
            return serve(role, policy) if self.shares_policy_backend(role) else role

        assert self.critic and self.reviser and self.judge
        return dataclasses.replace(
            self,
            policy=serve(self.policy, policy),
            critic=move(self.critic),
            reviser=move(self.reviser),
            judge=move(self.judge),
        )

    def backends(self) -> list[Backend]:
        """Each distinct backend under the roles, once."""
        seen: dict[int, Backend] = {}
        for role in (self.policy, self.critic, self.reviser, self.judge):
            if role is not None:
                seen.setdefault(id(unwrap(role)), unwrap(role))
        return list(seen.values())

    async def aclose(self) -> None:
        for backend in self.backends():
            await backend.aclose()
