"""What a kind of work is: the one interface the task service, the worker and the catalog use.

A kind (``image``, ``video``, ``audio``, ``speech``, ``chat``) is one package under
``apiinone.kinds`` that declares ``KIND = <an object with this interface>``. It owns its request
rules, its price rule, how its input becomes an upstream job, and its output shape. ``queued``
kinds are tasks (created, leased by a worker, ``run``); the others are answered directly by the
API process through the same route pool and metering.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import httpx

    from apiinone.domain.catalog import ModelSpec
    from apiinone.domain.tasks import Task
    from apiinone.storage.base import Storage
    from apiinone.upstreams.pool import RoutePool


class TaskFailure(Exception):
    """The task ends ``failed`` with this code and message (nothing is charged)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Finished:
    """The task succeeded: its public ``output`` (files already in storage)."""

    output: dict[str, Any]
    route: str | None = None


@dataclass(frozen=True, slots=True)
class Deferred:
    """The job runs upstream (video, audio): the worker records ``remote_job`` on the task and lets
    go of its slot; the remote-job poller follows it from ``poll_after_ms``."""

    remote_job: dict[str, Any]
    route: str
    poll_after_ms: int = 1000


RunOutcome = Finished | Deferred


@dataclass(frozen=True, slots=True)
class StillRunning:
    """A remote job has not ended yet: its latest ``progress`` (0-100 or None), and when the
    upstream suggests looking again (None: the poller's own backoff decides)."""

    progress: int | None = None
    poll_after_ms: int | None = None


FollowOutcome = Finished | StillRunning


@dataclass(frozen=True, slots=True)
class RunContext:
    """Everything a queued kind may use while running one task. No database, no credits."""

    spec: ModelSpec
    pool: RoutePool
    storage: Storage
    fetch_client: httpx.AsyncClient
    files_base_url: str
    timeout_s: float
    hooks: Mapping[str, Callable[..., None]] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    """Deployment settings a kind reads (e.g. ``max_result_bytes`` for remote results)."""

    def file_url(self, key: str) -> str:
        return self.storage.public_url(key) or f"{self.files_base_url}/files/{key}"


class Kind(Protocol):
    name: str
    queued: bool
    create_path: str
    """The route that creates work of this kind (named in the 'wrong route' error)."""

    def validate_pricing(self, spec: ModelSpec) -> None:
        """Raise ValueError naming what is wrong with ``spec.pricing`` for this kind."""

    def parameters_schema(self, spec: ModelSpec) -> dict[str, Any]:
        """JSON Schema of the create request's body for this model."""


class QueuedKind(Kind, Protocol):
    async def run(self, ctx: RunContext, task: Task) -> RunOutcome:
        """Do the task's work (raise TaskFailure to fail it)."""


class RemoteKind(QueuedKind, Protocol):
    """A queued kind whose ``run`` may return :class:`Deferred`: the remote-job poller then calls
    ``follow`` until the job ends, and ``cancel_remote`` when the client cancels."""

    async def follow(self, ctx: RunContext, task: Task) -> FollowOutcome:
        """Look at the upstream job once (raise TaskFailure to fail the task, a retryable
        UpstreamError to look again later)."""

    async def cancel_remote(self, ctx: RunContext, task: Task) -> bool:
        """Ask the upstream to stop the task's job; False where it cannot."""


def require_price(value: object, what: str, *, whole: bool = False) -> None:
    """A price is a non-negative number of credits (at most 6 decimals; whole where ``whole``)."""
    from decimal import Decimal, InvalidOperation

    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{what} must be a number of credits, not {type(value).__name__}")
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"{what} must be a number of credits") from None
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"{what} must be a non-negative number of credits")
    if whole and amount != amount.to_integral_value():
        raise ValueError(f"{what} must be a whole number of credits")
    if amount.as_tuple().exponent < -6:  # type: ignore[operator]
        raise ValueError(f"{what} has more than 6 decimals")
