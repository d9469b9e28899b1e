"""A typed Python client for the apiinone API, blocking (``Client``) and asyncio (``AsyncClient``).

    from apiinone.client import Client

    with Client("http://127.0.0.1:8000", api_key="aio_...") as client:   # or APIINONE_API_KEY
        task = client.images.generate("A logo for Bean & Brew", model="gpt-image-1-5", aspect_ratio="2:3")
        task = task.wait()                      # live over Server-Sent Events, polling as a fallback
        task.save("logo.png")

Network errors, 408, 429 and 5xx are retried with backoff; every create carries an
``Idempotency-Key`` so a retry never creates (or charges) a second task. Errors are exception types
rooted at ``ApiinoneError`` (see ``apiinone.client._errors`` for the tree).
"""

from apiinone.client._async import AsyncClient, AsyncTask
from apiinone.client._errors import (
    APIConnectionError,
    ApiinoneError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    InsufficientCreditsError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    ServiceUnavailableError,
    TaskFailedError,
    WaitTimeoutError,
)
from apiinone.client._models import TaskData, TaskEvent, TaskImage, TaskPage
from apiinone.client._sync import Client, Task

__all__ = [
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "ApiinoneError",
    "AsyncClient",
    "AsyncTask",
    "AuthenticationError",
    "BadRequestError",
    "Client",
    "ConflictError",
    "InsufficientCreditsError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "RateLimitError",
    "ServerError",
    "ServiceUnavailableError",
    "Task",
    "TaskData",
    "TaskEvent",
    "TaskFailedError",
    "TaskImage",
    "TaskPage",
    "WaitTimeoutError",
]
