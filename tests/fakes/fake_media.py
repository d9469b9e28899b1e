"""Protocol-faithful fakes of three media-job upstreams, served over real HTTP on loopback:
fal's queue API, Replicate's predictions API and Veo through the Gemini API.

Each is a real uvicorn server (in a background thread) speaking its vendor's wire format: paths,
auth headers, status names, error bodies, result files. Jobs move on by *polls*, not by time, so
tests never depend on timing: a job answers "queued" on its first status poll, then "running" with
a progress that grows each poll, and ends on poll ``polls_to_finish`` (or never, while ``hold`` is
set, until ``release()``). ``outcome`` picks how jobs end: ``success``, ``fail``, ``big`` (the
result file is larger than a test's cap), ``wrong_type`` (the result is HTML) or ``filtered``
(Veo: the safety filter removed the video). Result files are a real MP4 (made once with PyAV) and a
real WAV.
"""

from __future__ import annotations

import io
import itertools
import math
import socket
import struct
import threading
import time
import wave
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

FAL_KEY = "fal-test-key-0001:secret"
REPLICATE_TOKEN = "r8_test_token_0000000000000001"
GEMINI_KEY = "AIzaTestKey000000000000000000001"


def _sample_mp4() -> bytes:
    from apiinone.upstreams.local_slideshow.slideshow import render_mp4

    return render_mp4("fake upstream video", 640, 360, 2)


def _sample_wav(seconds: float = 1.0, rate: int = 8000) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / rate)))
                               for i in range(int(seconds * rate))))
    return out.getvalue()


_SAMPLES: dict[str, bytes] = {}
_SAMPLES_LOCK = threading.Lock()


def sample(kind: str) -> bytes:
    with _SAMPLES_LOCK:
        if kind not in _SAMPLES:
            _SAMPLES[kind] = _sample_mp4() if kind == "mp4" else _sample_wav()
        return _SAMPLES[kind]


@dataclass
class Job:
    id: str
    model: str
    input: dict[str, Any]
    audio: bool = False
    polls: int = 0
    canceled: bool = False
    created_at: float = field(default_factory=time.time)


@dataclass
class FakeMediaState:
    polls_to_finish: int = 3
    hold: bool = False
    outcome: str = "success"
    big_bytes: int = 3_000_000
    fail_next: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    jobs: dict[str, Job] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    downloads: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def new_job(self, model: str, body: dict[str, Any], audio: bool) -> Job:
        job = Job(id=f"{next(self.ids):06d}-{int(time.time() * 1000) % 100000:05d}", model=model, input=body,
                  audio=audio)
        with self.lock:
            self.jobs[job.id] = job
        return job

    def advance(self, job: Job) -> tuple[str, int | None]:
        """One status poll: (queued | running | done | canceled, progress)."""
        with self.lock:
            job.polls += 1
            if job.canceled:
                return "canceled", None
            if job.polls == 1 and (self.hold or self.polls_to_finish > 1):
                return "queued", None
            if self.hold or job.polls < self.polls_to_finish:
                return "running", min(95, 10 * job.polls if self.hold else round(100 * job.polls / self.polls_to_finish))
            return "done", 100

    def file_bytes(self, job: Job) -> tuple[bytes, str]:
        if self.outcome == "wrong_type":
            return b"<!doctype html><html><body>Not Found</body></html>", "text/html"
        if self.outcome == "big":
            base = sample("mp4")
            return base + b"\0" * max(0, self.big_bytes - len(base)), "video/mp4"
        return (sample("wav"), "audio/wav") if job.audio else (sample("mp4"), "video/mp4")


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


def _control_routes(state: FakeMediaState) -> list[Route]:
    async def config(request: Request) -> Response:
        body = orjson.loads(await request.body() or b"{}")
        for key in ("polls_to_finish", "hold", "outcome", "big_bytes"):
            if key in body:
                setattr(state, key, body[key])
        return _json({"ok": True})

    async def release(request: Request) -> Response:
        state.hold = False
        return _json({"ok": True})

    async def files(request: Request) -> Response:
        job = state.jobs.get(request.path_params["job_id"])
        if job is None:
            return Response(b"not found", status_code=404)
        with state.lock:
            state.downloads += 1
        data, ctype = state.file_bytes(job)
        return Response(data, media_type=ctype)

    return [Route("/_fake/config", config, methods=["POST"]), Route("/_fake/release", release, methods=["POST"]),
            Route("/_files/{job_id}.{ext}", files, methods=["GET"])]


def _failure(state: FakeMediaState) -> tuple[int, dict[str, Any]] | None:
    with state.lock:
        return state.fail_next.pop(0) if state.fail_next else None


# ----------------------------------------------------------------------------------------- fal


def build_fal(state: FakeMediaState, origin: str) -> Starlette:
    """``queue.fal.run``: POST /{model_id} → request_id; GET /{owner}/{alias}/requests/{id}/status;
    GET /{owner}/{alias}/requests/{id}; PUT /{owner}/{alias}/requests/{id}/cancel. ``Key`` auth."""

    def auth_error(request: Request) -> Response | None:
        if request.headers.get("authorization") != f"Key {FAL_KEY}":
            return _json({"detail": "No user found for Key ID and Secret"}, 401)
        return None

    def urls(app: str, request_id: str) -> dict[str, str]:
        base = f"{origin}/{app}/requests/{request_id}"
        return {"response_url": base, "status_url": f"{base}/status", "cancel_url": f"{base}/cancel"}

    async def submit(request: Request) -> Response:
        state.requests.append(("POST", request.url.path))
        if (denied := auth_error(request)) is not None:
            return denied
        if (failure := _failure(state)) is not None:
            return _json(failure[1], failure[0])
        model = request.path_params["model_id"]
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return _json({"detail": "Invalid JSON"}, 422)
        if not isinstance(body.get("prompt"), str) or not body["prompt"]:
            return _json({"detail": [{"loc": ["body", "prompt"], "msg": "field required", "type": "value_error.missing"}]}, 422)
        parts = model.split("/")
        job = state.new_job(model, body, audio="music" in model or "audio" in model)
        return _json({"request_id": job.id, **urls("/".join(parts[:2]), job.id), "queue_position": 0})

    async def status(request: Request) -> Response:
        state.requests.append(("GET", request.url.path))
        if (denied := auth_error(request)) is not None:
            return denied
        if (failure := _failure(state)) is not None:
            return _json(failure[1], failure[0])
        job = state.jobs.get(request.path_params["request_id"])
        if job is None:
            return _json({"detail": "Request not found"}, 404)
        app = f"{request.path_params['owner']}/{request.path_params['alias']}"
        phase, progress = state.advance(job)
        if phase == "queued":
            return _json({"status": "IN_QUEUE", "queue_position": 1, **urls(app, job.id)}, 202)
        logs = [{"message": f"Generating video: {progress}%", "level": "INFO", "source": "user",
                 "timestamp": "2026-12-01T08:00:00.000000"}] if progress is not None else []
        if phase == "running":
            return _json({"status": "IN_PROGRESS", "logs": logs, **urls(app, job.id)}, 202)
        body: dict[str, Any] = {"status": "COMPLETED", "logs": logs, "metrics": {"inference_time": 1.5},
                                **urls(app, job.id)}
        if phase == "canceled":
            body["error"], body["error_type"] = "Request was cancelled", "request_cancelled"
        elif state.outcome == "fail":
            body["error"], body["error_type"] = "Runner crashed while generating", "runner_server_error"
        return _json(body)

    async def result(request: Request) -> Response:
        state.requests.append(("GET", request.url.path))
        if (denied := auth_error(request)) is not None:
            return denied
        job = state.jobs.get(request.path_params["request_id"])
        if job is None:
            return _json({"detail": "Request not found"}, 404)
        if job.canceled:
            return _json({"detail": "Request was cancelled"}, 400)
        if state.outcome == "fail":
            return _json({"detail": "Runner crashed while generating"}, 500)
        data, ctype = state.file_bytes(job)
        ext = "wav" if job.audio else "mp4"
        file = {"url": f"{origin}/_files/{job.id}.{ext}", "content_type": ctype, "file_name": f"output.{ext}",
                "file_size": len(data)}
        return _json({"audio": file} if job.audio else {"video": file, "seed": 42})

    async def cancel(request: Request) -> Response:
        state.requests.append(("PUT", request.url.path))
        if (denied := auth_error(request)) is not None:
            return denied
        job = state.jobs.get(request.path_params["request_id"])
        if job is None:
            return _json({"detail": "Request not found"}, 404)
        with state.lock:
            done = not state.hold and job.polls >= state.polls_to_finish
            if not done:
                job.canceled = True
        if done:
            return _json({"status": "ALREADY_COMPLETED"}, 400)
        return _json({"status": "CANCELLATION_REQUESTED"}, 202)

    return Starlette(routes=[
        *_control_routes(state),
        Route("/{owner}/{alias}/requests/{request_id}/status", status, methods=["GET"]),
        Route("/{owner}/{alias}/requests/{request_id}/cancel", cancel, methods=["PUT"]),
        Route("/{owner}/{alias}/requests/{request_id}", result, methods=["GET"]),
        Route("/{model_id:path}", submit, methods=["POST"]),
    ])


# ----------------------------------------------------------------------------------- replicate


def build_replicate(state: FakeMediaState, origin: str) -> Starlette:
    """``api.replicate.com``: POST /v1/models/{owner}/{name}/predictions (or /v1/predictions with a
    version), GET /v1/predictions/{id}, POST /v1/predictions/{id}/cancel. ``Bearer`` auth."""

    def auth_error(request: Request) -> Response | None:
        if request.headers.get("authorization") != f"Bearer {REPLICATE_TOKEN}":
            return _json({"title": "Unauthenticated", "detail": "You did not pass a valid authentication token",
                          "status": 401}, 401)
        return None

    def prediction(job: Job, status: str, progress: int | None) -> dict[str, Any]:
        logs = "".join(f"{p:3d}%|{'#' * (p // 10):<10}| {p}/100 [00:0{i}<00:10]\n"
                       for i, p in enumerate(range(10, (progress or 0) + 1, 10)))
        body: dict[str, Any] = {
            "id": job.id, "model": job.model, "version": "dp-" + "0" * 28, "input": job.input, "logs": logs,
            "output": None, "data_removed": False, "error": None, "status": status,
            "created_at": "2026-12-01T08:00:00.000Z", "started_at": None, "completed_at": None,
            "urls": {"get": f"{origin}/v1/predictions/{job.id}", "cancel": f"{origin}/v1/predictions/{job.id}/cancel",
                     "web": f"{origin}/p/{job.id}"},
        }
        if status == "succeeded":
            ext = "wav" if job.audio else "mp4"
            body["output"] = f"{origin}/_files/{job.id}.{ext}"
            body["metrics"] = {"predict_time": 12.3}
        if status == "failed":
            body["error"] = "CUDA out of memory"
        return body

    async def create(request: Request) -> Response:
        state.requests.append(("POST", request.url.path))
        if (denied := auth_error(request)) is not None:
            return denied
        if (failure := _failure(state)) is not None:
            return _json(failure[1], failure[0])
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return _json({"title": "Invalid JSON", "detail": "body is not JSON", "status": 400}, 400)
        owner, name = request.path_params.get("owner"), request.path_params.get("name")
        if owner is None and not body.get("version"):
            return _json({"title": "Invalid version or not permitted", "status": 422,
                          "detail": "The specified version does not exist (or perhaps you don't have permission to use it?)"}, 422)
        inputs = body.get("input")
        if not isinstance(inputs, dict) or not inputs.get("prompt"):
            return _json({"title": "Input validation failed", "status": 422, "detail": "- input: prompt is required",
                          "invalid_fields": [{"type": "required", "field": "input", "description": "prompt is required"}]}, 422)
        model = f"{owner}/{name}" if owner else str(body["version"])
        job = state.new_job(model, inputs, audio="music" in model)
        return _json(prediction(job, "starting", None), 201)

    async def get(request: Request) -> Response:
        state.requests.append(("GET", request.url.path))
        if (denied := auth_error(request)) is not None:
            return denied
        if (failure := _failure(state)) is not None:
            return _json(failure[1], failure[0])
        job = state.jobs.get(request.path_params["prediction_id"])
        if job is None:
            return _json({"title": "Not found", "detail": "Not found.", "status": 404}, 404)
        phase, progress = state.advance(job)
        status = {"queued": "starting", "running": "processing", "canceled": "canceled"}.get(
            phase, "failed" if state.outcome == "fail" else "succeeded")
        return _json(prediction(job, status, progress))

    async def cancel(request: Request) -> Response:
        state.requests.append(("POST", request.url.path))
        if (denied := auth_error(request)) is not None:
            return denied
        job = state.jobs.get(request.path_params["prediction_id"])
        if job is None:
            return _json({"title": "Not found", "detail": "Not found.", "status": 404}, 404)
        with state.lock:
            done = not state.hold and job.polls >= state.polls_to_finish
            if not done:
                job.canceled = True
        return _json(prediction(job, "succeeded" if done else "canceled", None))

    return Starlette(routes=[
        *_control_routes(state),
        Route("/v1/models/{owner}/{name}/predictions", create, methods=["POST"]),
        Route("/v1/predictions", create, methods=["POST"]),
        Route("/v1/predictions/{prediction_id}/cancel", cancel, methods=["POST"]),
        Route("/v1/predictions/{prediction_id}", get, methods=["GET"]),
    ])


# ----------------------------------------------------------------------------------------- veo


def build_veo(state: FakeMediaState, origin: str) -> Starlette:
    """Gemini API: POST /v1beta/models/{model}:predictLongRunning → operation name; GET
    /v1beta/{name} until ``done``; the video URI downloads with the key (and redirects, as Google's
    file downloads do). ``x-goog-api-key`` auth; a bad key is a 400 ``API_KEY_INVALID``."""

    def auth_error(request: Request) -> Response | None:
        key = request.headers.get("x-goog-api-key") or request.query_params.get("key")
        if key != GEMINI_KEY:
            return _json({"error": {"code": 400, "message": "API key not valid. Please pass a valid API key.",
                                    "status": "INVALID_ARGUMENT",
                                    "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                                                 "reason": "API_KEY_INVALID", "domain": "googleapis.com"}]}}, 400)
        return None

    async def predict(request: Request) -> Response:
        state.requests.append(("POST", request.url.path))
        model, _, method = request.path_params["model_method"].partition(":")
        if method != "predictLongRunning":
            return _json({"error": {"code": 404, "message": "Method not found.", "status": "NOT_FOUND"}}, 404)
        if (denied := auth_error(request)) is not None:
            return denied
        if (failure := _failure(state)) is not None:
            return _json(failure[1], failure[0])
        body = orjson.loads(await request.body() or b"{}")
        instances = body.get("instances")
        if not isinstance(instances, list) or not instances or not instances[0].get("prompt"):
            return _json({"error": {"code": 400, "message": "* instances[0].prompt: required", "status": "INVALID_ARGUMENT"}}, 400)
        job = state.new_job(model, body, audio=False)
        return _json({"name": f"models/{model}/operations/{job.id}"})

    async def operation(request: Request) -> Response:
        state.requests.append(("GET", request.url.path))
        if (denied := auth_error(request)) is not None:
            return denied
        if (failure := _failure(state)) is not None:
            return _json(failure[1], failure[0])
        model, job_id = request.path_params["model"], request.path_params["op"]
        job = state.jobs.get(job_id)
        name = f"models/{model}/operations/{job_id}"
        if job is None:
            return _json({"error": {"code": 404, "message": "Operation not found.", "status": "NOT_FOUND"}}, 404)
        phase, _progress = state.advance(job)
        if phase in ("queued", "running"):
            return _json({"name": name})
        if state.outcome == "fail":
            return _json({"name": name, "done": True,
                          "error": {"code": 13, "message": "Video generation failed due to an internal error.",
                                    "status": "INTERNAL"}})
        response: dict[str, Any] = {"@type": "type.googleapis.com/google.ai.generativelanguage.v1beta.PredictLongRunningResponse"}
        if state.outcome == "filtered":
            response["generateVideoResponse"] = {"raiMediaFilteredCount": 1, "raiMediaFilteredReasons": [
                "The video was filtered because it may violate our policies."]}
        else:
            response["generateVideoResponse"] = {"generatedSamples": [
                {"video": {"uri": f"{origin}/v1beta/files/{job.id}:download?alt=media"}}]}
        return _json({"name": name, "done": True, "response": response})

    async def download(request: Request) -> Response:
        state.requests.append(("GET", request.url.path))
        if (denied := auth_error(request)) is not None:
            return denied
        file_id = request.path_params["file_method"].partition(":")[0]
        if file_id not in state.jobs:
            return _json({"error": {"code": 404, "message": "File not found.", "status": "NOT_FOUND"}}, 404)
        return Response(status_code=302, headers={"Location": f"{origin}/_files/{file_id}.mp4"})

    return Starlette(routes=[
        *_control_routes(state),
        Route("/v1beta/models/{model}/operations/{op}", operation, methods=["GET"]),
        Route("/v1beta/models/{model_method}", predict, methods=["POST"]),
        Route("/v1beta/files/{file_method}", download, methods=["GET"]),
    ])


# -------------------------------------------------------------------------------------- server

BUILDERS = {"fal": build_fal, "replicate": build_replicate, "veo": build_veo}
KEYS = {"fal": FAL_KEY, "replicate": REPLICATE_TOKEN, "veo": GEMINI_KEY}


class FakeMediaUpstream:
    """One vendor's fake in a background thread: ``with FakeMediaUpstream("fal") as fake: fake.base_url``."""

    def __init__(self, vendor: str) -> None:
        self.vendor = vendor
        self.state = FakeMediaState()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_key(self) -> str:
        return KEYS[self.vendor]

    def start(self) -> FakeMediaUpstream:
        sample("mp4")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(2048)
        self.port = sock.getsockname()[1]
        app = BUILDERS[self.vendor](self.state, self.base_url)
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                                     loop="asyncio", timeout_keep_alive=30))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True,
                                        name=f"fake-{self.vendor}-{self.port}")
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"fake {self.vendor} server did not start")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> FakeMediaUpstream:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def configure(self, **values: Any) -> None:
        for key, value in values.items():
            setattr(self.state, key, value)

    def release(self) -> None:
        self.state.hold = False

    def fail_next(self, status: int, body: dict[str, Any]) -> None:
        self.state.fail_next.append((status, body))

    def calls(self, method: str, contains: str) -> int:
        return sum(1 for m, p in list(self.state.requests) if m == method and contains in p)


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.fakes.fake_media --vendor fal --port-file F [--hold]``: a subprocess fake
    (benchmarks), steered through ``/_fake/config`` and ``/_fake/release``."""
    import argparse
    from pathlib import Path

    parser = argparse.ArgumentParser()
    parser.add_argument("--vendor", choices=sorted(BUILDERS), default="fal")
    parser.add_argument("--port-file", type=Path, required=True)
    parser.add_argument("--hold", action="store_true")
    args = parser.parse_args(argv)
    fake = FakeMediaUpstream(args.vendor).start()
    fake.configure(hold=args.hold)
    args.port_file.write_text(str(fake.port))
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        fake.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
