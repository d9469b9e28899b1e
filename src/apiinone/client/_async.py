"""The asyncio client: ``AsyncClient(base_url, api_key)``, the same surface as ``Client`` awaited."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
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
class AsyncTask(TaskData):
    """A task bound to the async client that fetched it."""

    client: AsyncClient | None = field(default=None, repr=False, compare=False, kw_only=True)

    @classmethod
    def from_json(cls, data: dict[str, Any], client: AsyncClient) -> AsyncTask:
        return cls(**TaskData.fields_from(data), client=client)

    @property
    def _client(self) -> AsyncClient:
        assert self.client is not None, "this task is not bound to a client"
        return self.client

    async def wait(self, timeout: float = 600.0, *, on_event: EventCallback | None = None,  # noqa: ASYNC109
                   raise_on_failure: bool = True) -> AsyncTask:
        """See ``Task.wait``; ``timeout`` mirrors it (ending in ``WaitTimeoutError`` with the task)."""
        return await self._client.tasks.wait(self.task_id, timeout=timeout, on_event=on_event,
                                             raise_on_failure=raise_on_failure)

    async def refresh(self) -> AsyncTask:
        return await self._client.tasks.get(self.task_id)

    async def cancel(self) -> AsyncTask:
        return await self._client.tasks.cancel(self.task_id)

    async def download(self, index: int = 0) -> bytes:
        return await self._client.download(self.images[index].url)

    async def save(self, path: str | Path, index: int = 0) -> Path:
        target = Path(path)
        data = await self.download(index)
        await asyncio.to_thread(target.write_bytes, data)
        return target


class AsyncClient:
    """See ``Client``: the same retries and automatic Idempotency-Key, for asyncio code."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *, timeout: float = 60.0,
                 max_retries: int = 2, backoff: float = 0.5, use_sse: bool = True,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.config = ClientConfig.build(base_url, api_key, timeout_s=timeout, max_retries=max_retries,
                                         backoff_s=backoff, use_sse=use_sse)
        self._http = httpx.AsyncClient(base_url=self.config.base_url, headers=self.config.headers,
                                       timeout=timeout, transport=transport)
        self.images = AsyncImages(self)
        self.tasks = AsyncTasks(self)
        self.models = AsyncModels(self)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, et: type[BaseException] | None, ev: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def request(self, method: str, path: str, *, retry: bool = True, **kwargs: Any) -> httpx.Response:
        attempts = self.config.max_retries + 1 if retry else 1
        for attempt in range(attempts):
            wait_s: float | None = None
            try:
                response = await self._http.request(method, path, **kwargs)
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
            await asyncio.sleep(self.config.delay_s(attempt, wait_s))
        raise AssertionError("unreachable")

    async def download(self, url: str) -> bytes:
        for attempt in range(self.config.max_retries + 1):
            request = self._http.build_request("GET", url)
            del request.headers["Authorization"]
            try:
                response = await self._http.send(request)
            except httpx.TransportError as exc:
                if attempt >= self.config.max_retries:
                    raise APIConnectionError(f"GET {url}: {type(exc).__name__}") from exc
            else:
                if response.is_success:
                    return response.content
                error = error_for(response)
                if not is_retryable(error) or attempt >= self.config.max_retries:
                    raise error
            await asyncio.sleep(self.config.delay_s(attempt, None))
        raise AssertionError("unreachable")


class AsyncImages:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def generate(self, prompt: str, *, model: str = "gpt-image-1-5", aspect_ratio: str = "1:1",
                       quality: str = "medium", input_urls: list[str] | None = None,
                       callback_url: str | None = None, idempotency_key: str | None = None,
                       wait: int | None = None) -> AsyncTask:
        headers = {"Idempotency-Key": idempotency_key or new_idempotency_key()}
        timeout = self._client.config.timeout_s
        if wait:
            headers["Prefer"] = f"wait={int(wait)}"
            timeout += wait
        body = generation_body(prompt, model=model, aspect_ratio=aspect_ratio, quality=quality,
                               input_urls=input_urls, callback_url=callback_url)
        response = await self._client.request("POST", "/api/v1/images/generations", json=body, headers=headers,
                                              timeout=timeout)
        return AsyncTask.from_json(response.json(), self._client)


class AsyncTasks:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def get(self, task_id: str) -> AsyncTask:
        response = await self._client.request("GET", f"/api/v1/tasks/{task_id}")
        return AsyncTask.from_json(response.json(), self._client)

    async def list(self, *, status: str | None = None, model: str | None = None, limit: int | None = None,
                   cursor: str | None = None) -> TaskPage:
        params = {k: v for k, v in {"status": status, "model": model, "limit": limit, "cursor": cursor}.items() if v}
        page = (await self._client.request("GET", "/api/v1/tasks", params=params)).json()
        return TaskPage([AsyncTask.from_json(t, self._client) for t in page["data"]], page.get("next_cursor"))

    async def cancel(self, task_id: str) -> AsyncTask:
        response = await self._client.request("POST", f"/api/v1/tasks/{task_id}/cancel", retry=False)
        return AsyncTask.from_json(response.json(), self._client)

    async def wait(self, task_id: str, *, timeout: float = 600.0,  # noqa: ASYNC109  (same API as Tasks.wait)
                   on_event: EventCallback | None = None, raise_on_failure: bool = True) -> AsyncTask:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        task: AsyncTask | None = None
        if self._client.config.use_sse:
            try:
                async with asyncio.timeout(timeout):
                    task = await self._wait_streaming(task_id, on_event)
            except (SSEUnavailable, TimeoutError):
                task = None
        if task is None or not task.is_done:
            task = await self._wait_polling(task_id, deadline, on_event)
        if not task.is_done:
            raise WaitTimeoutError(task, timeout)
        if raise_on_failure and task.status != "succeeded":
            raise TaskFailedError(task)
        return task

    async def events(self, task_id: str, *, last_event_id: str | None = None) -> AsyncIterator[TaskEvent]:
        """See ``Tasks.events``."""
        failures = 0
        while True:
            decoder = SSEDecoder()
            decoder.last_event_id = last_event_id
            try:
                async for event in self._stream_once(task_id, decoder):
                    failures = 0
                    yield event
                    if event.is_terminal:
                        return
            except httpx.TransportError:
                pass
            failures += 1  # dropped, or closed before the end
            if failures > self._client.config.max_retries:
                raise APIConnectionError(f"the event stream of {task_id} kept closing before the task ended")
            last_event_id = decoder.last_event_id
            await asyncio.sleep(self._client.config.delay_s(failures, (decoder.retry_ms or 0) / 1000 or None))

    async def _stream_once(self, task_id: str, decoder: SSEDecoder) -> AsyncIterator[TaskEvent]:
        headers = {"Accept": "text/event-stream"}
        if decoder.last_event_id:
            headers["Last-Event-ID"] = decoder.last_event_id
        timeout = httpx.Timeout(self._client.config.timeout_s, read=60.0)
        async with self._client._http.stream("GET", f"/api/v1/tasks/{task_id}/events", headers=headers,
                                             timeout=timeout) as response:
            if response.status_code != 200:
                await response.aread()
                error = error_for(response)
                if error.status in SSE_UNSUPPORTED_STATUSES and error.code != "task_not_found":
                    raise SSEUnavailable(str(error))
                raise error
            if not is_event_stream(response):
                raise SSEUnavailable("the server did not answer with an event stream")
            async for line in response.aiter_lines():
                sse = decoder.feed(line)
                event = task_event(sse) if sse is not None else None
                if event is not None:
                    yield event

    async def _wait_streaming(self, task_id: str, on_event: EventCallback | None) -> AsyncTask | None:
        try:
            async for event in self.events(task_id):
                if on_event is not None:
                    on_event(event)
                if event.is_terminal:
                    return AsyncTask.from_json(event.data, self._client)
        except (httpx.TransportError, APIConnectionError) as exc:
            raise SSEUnavailable(str(exc)) from exc
        except APIStatusError as exc:
            if exc.status >= 500:
                raise SSEUnavailable(str(exc)) from exc
            raise
        return None

    async def _wait_polling(self, task_id: str, deadline: float, on_event: EventCallback | None) -> AsyncTask:
        loop = asyncio.get_running_loop()
        seen: str | None = None
        interval: float | None = None
        while True:
            task = await self.get(task_id)
            if on_event is not None and task.status != seen:
                on_event(TaskEvent(event=task.status, data=task.raw if task.is_done else {"status": task.status}))
            seen = task.status
            if task.is_done or loop.time() >= deadline:
                return task
            interval = poll_interval_s(interval)
            await asyncio.sleep(max(0.0, min(interval, deadline - loop.time())))


class AsyncModels:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def list(self) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = (await self._client.request("GET", "/api/v1/models")).json()["data"]
        return data

    async def get(self, model_id: str) -> dict[str, Any]:
        model: dict[str, Any] = (await self._client.request("GET", f"/api/v1/models/{model_id}")).json()
        return model
