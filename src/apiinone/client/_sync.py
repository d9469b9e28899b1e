"""The blocking client: ``Client(base_url, api_key)``."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from apiinone.client._core import (
    SSE_UNSUPPORTED_STATUSES,
    ClientConfig,
    SSEUnavailable,
    error_for,
    generation_body,
    is_event_stream,
    is_retryable,
    new_idempotency_key,
    poll_interval_s,
    task_event,
)
from apiinone.client._errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    TaskFailedError,
    WaitTimeoutError,
)
from apiinone.client._models import TaskData, TaskEvent, TaskPage
from apiinone.client._sse import SSEDecoder

EventCallback = Callable[[TaskEvent], None]


@dataclass
class Task(TaskData):
    """A task bound to the client that fetched it, so it can wait, refresh, cancel and download."""

    client: Client | None = field(default=None, repr=False, compare=False, kw_only=True)

    @classmethod
    def from_json(cls, data: dict[str, Any], client: Client) -> Task:
        return cls(**TaskData.fields_from(data), client=client)

    @property
    def _client(self) -> Client:
        assert self.client is not None, "this task is not bound to a client"
        return self.client

    def wait(self, timeout: float = 600.0, *, on_event: EventCallback | None = None,
             raise_on_failure: bool = True) -> Task:
        """The task once it has ended: live over Server-Sent Events, polling if those are not
        available. Raises ``TaskFailedError`` for failed or canceled tasks (unless told not to)
        and ``WaitTimeoutError`` when ``timeout`` seconds pass first."""
        return self._client.tasks.wait(self.task_id, timeout=timeout, on_event=on_event,
                                       raise_on_failure=raise_on_failure)

    def refresh(self) -> Task:
        return self._client.tasks.get(self.task_id)

    def cancel(self) -> Task:
        return self._client.tasks.cancel(self.task_id)

    def download(self, index: int = 0) -> bytes:
        """The bytes of output image ``index`` (image URLs need no key)."""
        return self._client.download(self.images[index].url)

    def save(self, path: str | Path, index: int = 0) -> Path:
        target = Path(path)
        target.write_bytes(self.download(index))
        return target


class Client:
    """The apiinone API. Retries network errors, 408, 429 and 5xx with backoff; every create
    carries an ``Idempotency-Key`` so a retried create never makes a second task."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *, timeout: float = 60.0,
                 max_retries: int = 2, backoff: float = 0.5, use_sse: bool = True,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.config = ClientConfig.build(base_url, api_key, timeout_s=timeout, max_retries=max_retries,
                                         backoff_s=backoff, use_sse=use_sse)
        self._http = httpx.Client(base_url=self.config.base_url, headers=self.config.headers,
                                  timeout=timeout, transport=transport)
        self.images = Images(self)
        self.tasks = Tasks(self)
        self.models = Models(self)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def request(self, method: str, path: str, *, retry: bool = True, **kwargs: Any) -> httpx.Response:
        """One API call with retries; returns a 2xx response or raises an ``ApiinoneError``."""
        attempts = self.config.max_retries + 1 if retry else 1
        for attempt in range(attempts):
            wait_s: float | None = None
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TimeoutException as exc:
                error: Exception = APITimeoutError(f"{method} {path}: no answer in time ({type(exc).__name__})")
            except httpx.TransportError as exc:
                error = APIConnectionError(f"{method} {path}: {type(exc).__name__}: {exc}")
            else:
                if response.is_success:
                    return response
                status_error = error_for(response)
                if not is_retryable(status_error):
                    raise status_error
                error, wait_s = status_error, status_error.retry_after
            if attempt + 1 >= attempts:
                raise error
            time.sleep(self.config.delay_s(attempt, wait_s))
        raise AssertionError("unreachable")

    def download(self, url: str) -> bytes:
        """An output image; its URL needs no key, so the key is not sent (it may be another host)."""
        for attempt in range(self.config.max_retries + 1):
            request = self._http.build_request("GET", url)
            del request.headers["Authorization"]
            try:
                response = self._http.send(request)
            except httpx.TransportError as exc:
                if attempt >= self.config.max_retries:
                    raise APIConnectionError(f"GET {url}: {type(exc).__name__}") from exc
            else:
                if response.is_success:
                    return response.content
                error = error_for(response)
                if not is_retryable(error) or attempt >= self.config.max_retries:
                    raise error
            time.sleep(self.config.delay_s(attempt, None))
        raise AssertionError("unreachable")


class Images:
    def __init__(self, client: Client) -> None:
        self._client = client

    def generate(self, prompt: str, *, model: str = "gpt-image-1-5", aspect_ratio: str = "1:1",
                 quality: str = "medium", input_urls: list[str] | None = None, callback_url: str | None = None,
                 idempotency_key: str | None = None, wait: int | None = None) -> Task:
        """Create an image task (``input_urls`` = edit mode). With ``wait`` the server holds the
        answer up to that many seconds (max 60) and the task may come back already finished."""
        headers = {"Idempotency-Key": idempotency_key or new_idempotency_key()}
        timeout = self._client.config.timeout_s
        if wait:
            headers["Prefer"] = f"wait={int(wait)}"
            timeout += wait
        body = generation_body(prompt, model=model, aspect_ratio=aspect_ratio, quality=quality,
                               input_urls=input_urls, callback_url=callback_url)
        response = self._client.request("POST", "/api/v1/images/generations", json=body, headers=headers,
                                        timeout=timeout)
        return Task.from_json(response.json(), self._client)


class Tasks:
    def __init__(self, client: Client) -> None:
        self._client = client

    def get(self, task_id: str) -> Task:
        return Task.from_json(self._client.request("GET", f"/api/v1/tasks/{task_id}").json(), self._client)

    def list(self, *, status: str | None = None, model: str | None = None, limit: int | None = None,
             cursor: str | None = None) -> TaskPage:
        params = {k: v for k, v in {"status": status, "model": model, "limit": limit, "cursor": cursor}.items() if v}
        page = self._client.request("GET", "/api/v1/tasks", params=params).json()
        return TaskPage([Task.from_json(t, self._client) for t in page["data"]], page.get("next_cursor"))

    def cancel(self, task_id: str) -> Task:
        response = self._client.request("POST", f"/api/v1/tasks/{task_id}/cancel", retry=False)
        return Task.from_json(response.json(), self._client)

    def wait(self, task_id: str, *, timeout: float = 600.0, on_event: EventCallback | None = None,
             raise_on_failure: bool = True) -> Task:
        deadline = time.monotonic() + timeout
        task: Task | None = None
        if self._client.config.use_sse:
            try:
                task = self._wait_streaming(task_id, deadline, on_event)
            except SSEUnavailable:
                task = None
        if task is None or not task.is_done:
            task = self._wait_polling(task_id, deadline, on_event)
        if not task.is_done:
            raise WaitTimeoutError(task, timeout)
        if raise_on_failure and task.status != "succeeded":
            raise TaskFailedError(task)
        return task

    def events(self, task_id: str, *, last_event_id: str | None = None) -> Iterator[TaskEvent]:
        """The task's status changes as they happen, ending with the terminal one; reconnects
        (resuming after the last event seen) when the connection drops."""
        for event in self._events(task_id, last_event_id, deadline=None):
            if event is not None:
                yield event

    def _events(self, task_id: str, last_event_id: str | None, deadline: float | None) -> Iterator[TaskEvent | None]:
        """``events``, plus a ``None`` for each keep-alive so a waiter can check its deadline, and
        ending quietly once ``deadline`` passes."""
        failures = 0
        while True:
            decoder = SSEDecoder()
            decoder.last_event_id = last_event_id
            try:
                for event in self._stream_once(task_id, decoder, deadline):
                    if event is None:
                        yield None
                        continue
                    failures = 0
                    yield event
                    if event.is_terminal:
                        return
            except httpx.TransportError:
                if deadline is not None and time.monotonic() >= deadline:
                    return
            failures += 1  # dropped, or closed before the end
            if failures > self._client.config.max_retries:
                raise APIConnectionError(f"the event stream of {task_id} kept closing before the task ended")
            last_event_id = decoder.last_event_id
            time.sleep(self._client.config.delay_s(failures, (decoder.retry_ms or 0) / 1000 or None))

    def _stream_once(self, task_id: str, decoder: SSEDecoder, deadline: float | None) -> Iterator[TaskEvent | None]:
        headers = {"Accept": "text/event-stream"}
        if decoder.last_event_id:
            headers["Last-Event-ID"] = decoder.last_event_id
        read_s = 60.0  # the server sends a keep-alive every 15 s
        if deadline is not None:
            read_s = max(0.5, min(read_s, deadline - time.monotonic()))
        timeout = httpx.Timeout(self._client.config.timeout_s, read=read_s)
        with self._client._http.stream("GET", f"/api/v1/tasks/{task_id}/events", headers=headers,
                                       timeout=timeout) as response:
            if response.status_code != 200:
                response.read()
                error = error_for(response)
                if error.status in SSE_UNSUPPORTED_STATUSES and error.code != "task_not_found":
                    raise SSEUnavailable(str(error))
                raise error
            if not is_event_stream(response):
                raise SSEUnavailable("the server did not answer with an event stream")
            for line in response.iter_lines():
                if line.startswith(":"):
                    yield None
                    continue
                sse = decoder.feed(line)
                event = task_event(sse) if sse is not None else None
                if event is not None:
                    yield event

    def _wait_streaming(self, task_id: str, deadline: float, on_event: EventCallback | None) -> Task | None:
        try:
            for event in self._events(task_id, None, deadline):
                if event is not None and on_event is not None:
                    on_event(event)
                if event is not None and event.is_terminal:
                    return Task.from_json(event.data, self._client)
                if time.monotonic() >= deadline:
                    return None
        except (httpx.TransportError, APIConnectionError) as exc:
            raise SSEUnavailable(str(exc)) from exc
        except APIStatusError as exc:
            if exc.status >= 500:
                raise SSEUnavailable(str(exc)) from exc
            raise
        return None

    def _wait_polling(self, task_id: str, deadline: float, on_event: EventCallback | None) -> Task:
        seen: str | None = None
        interval: float | None = None
        while True:
            task = self.get(task_id)
            if on_event is not None and task.status != seen:
                on_event(TaskEvent(event=task.status, data=task.raw if task.is_done else {"status": task.status}))
            seen = task.status
            if task.is_done or time.monotonic() >= deadline:
                return task
            interval = poll_interval_s(interval)
            time.sleep(max(0.0, min(interval, deadline - time.monotonic())))


class Models:
    def __init__(self, client: Client) -> None:
        self._client = client

    def list(self) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = self._client.request("GET", "/api/v1/models").json()["data"]
        return data

    def get(self, model_id: str) -> dict[str, Any]:
        model: dict[str, Any] = self._client.request("GET", f"/api/v1/models/{model_id}").json()
        return model
