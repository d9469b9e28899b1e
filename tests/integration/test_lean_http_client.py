"""The lean upstream client (``upstreams/http1.py``) against a scripted HTTP/1.1 server on loopback:
framing (Content-Length, chunked, read-to-close, interim answers, 204), keep-alive reuse and its
limits, failures (reset, early close, garbage, timeouts), gzip, TLS with verification, and the
request it writes."""

from __future__ import annotations

import asyncio
import gzip
import socket
import ssl
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import uvloop

from apiinone.upstreams.http1 import LeanClient, LeanTransportError
from tests.conftest import self_signed_cert


@pytest.fixture(params=["asyncio", "uvloop"], scope="module")
def event_loop_policy(request: pytest.FixtureRequest) -> asyncio.AbstractEventLoopPolicy:
    """Every test on both loops: apiinone serves on uvloop, whose buffered-protocol reads differ."""
    return uvloop.EventLoopPolicy() if request.param == "uvloop" else asyncio.DefaultEventLoopPolicy()


@dataclass
class Received:
    head: str
    body: bytes
    connection: int


@dataclass
class ScriptedServer:
    """Answers the n-th request with ``answers[n]``: bytes to send, ``None`` to close at once,
    ``"reset"`` to abort the connection, or ``"stall"`` to never answer."""

    answers: list[bytes | str | None] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    connections: int = 0
    port: int = 0
    server: asyncio.Server | None = None

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=ssl_context)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                length = next(int(line.split(":", 1)[1]) for line in head.split("\r\n")
                              if line.lower().startswith("content-length:"))
                body = await reader.readexactly(length)
                self.received.append(Received(head, body, number))
                answer = self.answers[len(self.received) - 1]
                if answer is None:
                    writer.close()
                    return
                if answer == "stall":
                    await asyncio.sleep(3600)
                if answer == "reset":
                    writer.transport.abort()
                    return
                assert isinstance(answer, bytes)
                writer.write(answer)
                await writer.drain()
                lowered = answer.lower()
                framed = b"content-length" in lowered or b"chunked" in lowered or answer.startswith(b"HTTP/1.1 204")
                if b"connection: close" in lowered or not framed:
                    writer.close()
                    return
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            writer.close()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


def answer(body: bytes, *, status: str = "200 OK", headers: str = "") -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"{headers}\r\n").encode() + body


@pytest.fixture
async def server() -> AsyncIterator[ScriptedServer]:
    srv = ScriptedServer()
    await srv.start()
    yield srv
    await srv.stop()


async def test_content_length_answers_reuse_one_connection(server: ScriptedServer) -> None:
    big = b'{"b64_json":"' + b"A" * 3_000_000 + b'"}'
    server.answers = [answer(b'{"ok":1}'), answer(big), answer(b'{"ok":3}', status="429 Too Many Requests")]
    client = LeanClient()
    url = f"http://127.0.0.1:{server.port}/v1/images/generations?x=1"
    try:
        first = await client.post(url, b'{"a":1}', {"Authorization": "Bearer sk-test"}, timeout_s=5)
        second = await client.post(url, b"{}", {}, timeout_s=5)
        third = await client.post(url, b"{}", {}, timeout_s=5)
    finally:
        await client.aclose()
    assert (first.status, first.body) == (200, b'{"ok":1}')
    assert first.header("content-type") == "application/json"
    assert second.body == big
    assert (third.status, third.body) == (429, b'{"ok":3}')
    assert server.connections == 1  # kept alive across all three
    head = server.received[0].head
    assert head.startswith("POST /v1/images/generations?x=1 HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{server.port}\r\n" in head and "Authorization: Bearer sk-test\r\n" in head
    assert "Content-Length: 7\r\n" in head and server.received[0].body == b'{"a":1}'


async def test_chunked_with_extensions_and_trailers(server: ScriptedServer) -> None:
    payload = b'{"choices":[]}' * 5000
    pieces = [payload[i:i + 7000] for i in range(0, len(payload), 7000)]
    chunked = b"".join(f"{len(p):x};ext=1\r\n".encode() + p + b"\r\n" for p in pieces)
    server.answers = [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked + b"0\r\nX-Trailer: yes\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ]
    client = LeanClient()
    try:
        first = await client.post(f"http://127.0.0.1:{server.port}/", b"{}", {}, timeout_s=5)
        second = await client.post(f"http://127.0.0.1:{server.port}/", b"{}", {}, timeout_s=5)
    finally:
        await client.aclose()
    assert first.body == payload and second.body == b"hello"
    assert server.connections == 1


async def test_an_answer_without_length_is_read_to_close_and_not_reused(server: ScriptedServer) -> None:
    server.answers = [b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{\"whole\":true}",
                      answer(b"{}")]
    client = LeanClient()
    try:
        first = await client.post(f"http://127.0.0.1:{server.port}/", b"{}", {}, timeout_s=5)
        second = await client.post(f"http://127.0.0.1:{server.port}/", b"{}", {}, timeout_s=5)
    finally:
        await client.aclose()
    assert first.body == b'{"whole":true}' and second.body == b"{}"
    assert server.connections == 2


async def test_interim_answers_are_skipped_and_204_has_no_body(server: ScriptedServer) -> None:
    server.answers = [b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + answer(b"{}"),
                      b"HTTP/1.1 204 No Content\r\n\r\n", answer(b"[1]")]
    client = LeanClient()
    try:
        first = await client.post(f"http://127.0.0.1:{server.port}/", b"{}", {}, timeout_s=5)
        second = await client.post(f"http://127.0.0.1:{server.port}/", b"{}", {}, timeout_s=5)
        third = await client.post(f"http://127.0.0.1:{server.port}/", b"{}", {}, timeout_s=5)
    finally:
        await client.aclose()
    assert (first.status, first.body) == (200, b"{}")
    assert (second.status, second.body) == (204, b"")
    assert third.body == b"[1]" and server.connections == 1


async def test_connection_close_and_http_1_0_are_not_reused(server: ScriptedServer) -> None:
    server.answers = [answer(b"1", headers="Connection: close\r\n"),
                      b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n2", answer(b"3")]
    client = LeanClient()
    try:
        bodies = [(await client.post(f"http://127.0.0.1:{server.port}/", b"{}", {}, timeout_s=5)).body
                  for _ in range(3)]
    finally:
        await client.aclose()
    assert bodies == [b"1", b"2", b"3"] and server.connections == 3


async def test_a_connection_the_server_closed_while_idle_is_not_used(server: ScriptedServer) -> None:
    server.answers = [answer(b"1"), None, answer(b"3")]
    client = LeanClient()
    url = f"http://127.0.0.1:{server.port}/"
    try:
        assert (await client.post(url, b"{}", {}, timeout_s=5)).body == b"1"
        with pytest.raises(LeanTransportError, match="closed the connection"):
            await client.post(url, b"{}", {}, timeout_s=5)  # the server closes instead of answering
        assert (await client.post(url, b"{}", {}, timeout_s=5)).body == b"3"
    finally:
        await client.aclose()
    assert server.connections == 2


async def test_idle_connections_expire(server: ScriptedServer) -> None:
    server.answers = [answer(b"1"), answer(b"2")]
    client = LeanClient(keepalive_s=0.05)
    try:
        await client.post(f"http://127.0.0.1:{server.port}/", b"{}", {}, timeout_s=5)
        await asyncio.sleep(0.1)
        await client.post(f"http://127.0.0.1:{server.port}/", b"{}", {}, timeout_s=5)
    finally:
        await client.aclose()
    assert server.connections == 2


async def test_failures_are_transport_errors(server: ScriptedServer) -> None:
    server.answers = [b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 100\r\n\r\n{\"cut", "reset", b"SMTP ready\r\n\r\n",
                      b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n1",
                      b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Encoding: br\r\n\r\n{}", answer(b"ok")]
    client = LeanClient()
    url = f"http://127.0.0.1:{server.port}/"
    try:
        for expected in ("closed the connection", "closed the connection", "HTTP/1.x", "conflicting",
                         "encoding"):
            with pytest.raises(LeanTransportError, match=expected):
                await client.post(url, b"{}", {}, timeout_s=5)
        assert (await client.post(url, b"{}", {}, timeout_s=5)).body == b"ok"
    finally:
        await client.aclose()


async def test_nothing_listening_is_a_transport_error() -> None:
    srv = ScriptedServer()
    await srv.start()
    port = srv.port
    await srv.stop()
    client = LeanClient()
    with pytest.raises(LeanTransportError, match="could not connect"):
        await client.post(f"http://127.0.0.1:{port}/", b"{}", {}, timeout_s=5)


async def test_a_stalled_answer_times_out_and_its_connection_is_dropped(server: ScriptedServer) -> None:
    server.answers = ["stall", answer(b"after")]
    client = LeanClient()
    url = f"http://127.0.0.1:{server.port}/"
    try:
        with pytest.raises(TimeoutError):
            await client.post(url, b"{}", {}, timeout_s=0.2)
        assert (await client.post(url, b"{}", {}, timeout_s=5)).body == b"after"
    finally:
        await client.aclose()
    assert server.connections == 2  # the stalled one was not put back


async def test_a_gzip_answer_sent_unasked_is_decoded(server: ScriptedServer) -> None:
    packed = gzip.compress(b'{"zipped":true}')
    server.answers = [b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\n" + f"Content-Length: {len(packed)}\r\n\r\n".encode()
                      + packed]
    client = LeanClient()
    try:
        response = await client.post(f"http://127.0.0.1:{server.port}/", b"{}", {}, timeout_s=5)
    finally:
        await client.aclose()
    assert response.body == b'{"zipped":true}'


async def test_a_header_with_a_line_break_is_refused_before_sending(server: ScriptedServer) -> None:
    client = LeanClient()
    with pytest.raises(LeanTransportError, match="line break") as caught:
        await client.post(f"http://127.0.0.1:{server.port}/", b"{}", {"Authorization": "Bearer sk-a\r\nX: y"},
                          timeout_s=5)
    assert "sk-a" not in str(caught.value)
    assert server.received == []


async def test_concurrent_calls_each_get_their_own_answer(server: ScriptedServer) -> None:
    server.answers = [answer(str(i).encode() * 1000) for i in range(40)]
    client = LeanClient(max_connections=8)
    try:
        bodies = await asyncio.gather(*(client.post(f"http://127.0.0.1:{server.port}/", b"{}", {}, timeout_s=5)
                                        for _ in range(40)))
    finally:
        await client.aclose()
    assert sorted(b.body for b in bodies) == sorted(str(i).encode() * 1000 for i in range(40))
    assert server.connections <= 8


@pytest.fixture
def loopback_cert(tmp_path: Path) -> tuple[Path, Path]:
    return self_signed_cert(tmp_path, common_name="127.0.0.1", alt_name="IP:127.0.0.1")


async def test_https_verifies_the_server(loopback_cert: tuple[Path, Path]) -> None:
    cert, key = loopback_cert
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    srv = ScriptedServer(answers=[answer(b'{"tls":true}'), answer(b'{"again":true}')])
    await srv.start(server_ctx)
    try:
        trusting = LeanClient(ssl_context=ssl.create_default_context(cafile=str(cert)))
        url = f"https://127.0.0.1:{srv.port}/v1/chat/completions"
        try:
            assert (await trusting.post(url, b"{}", {}, timeout_s=5)).body == b'{"tls":true}'
            assert (await trusting.post(url, b"{}", {}, timeout_s=5)).body == b'{"again":true}'
        finally:
            await trusting.aclose()
        assert srv.connections == 1 and f"Host: 127.0.0.1:{srv.port}\r\n" in srv.received[0].head
        strict = LeanClient()  # the system store does not know this certificate
        with pytest.raises(LeanTransportError, match="could not connect"):
            await strict.post(url, b"{}", {}, timeout_s=5)
    finally:
        await srv.stop()


async def test_framing_an_upstream_gets_wrong_is_refused_not_trusted(server: ScriptedServer) -> None:
    """Chunk sizes int() would take ("-6" once looped forever on the event loop), a transfer coding
    under the chunking, a chunk longer than its size, an answer inflating past any answer's size."""
    bomb = gzip.compress(b"0" * (300 * 1024 * 1024))
    server.answers = [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n-6\r\nabcdef\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n0x2\r\nab\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabcd\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Encoding: gzip\r\n"
        + f"Content-Length: {len(bomb)}\r\n\r\n".encode() + bomb,
        answer(b"fine"),
    ]
    client = LeanClient()
    url = f"http://127.0.0.1:{server.port}/"
    try:
        for expected in ("chunk size", "chunk size", "transfer coding", "longer than its size", "too large"):
            with pytest.raises(LeanTransportError, match=expected):
                await client.post(url, b"{}", {}, timeout_s=10)
        assert (await client.post(url, b"{}", {}, timeout_s=5)).body == b"fine"
    finally:
        await client.aclose()


async def test_answers_framed_twice_or_followed_by_bytes_do_not_keep_their_connection(
        server: ScriptedServer) -> None:
    server.answers = [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 99\r\n\r\n2\r\nab\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\ncd\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n",
        answer(b"ef"),
    ]
    client = LeanClient()
    url = f"http://127.0.0.1:{server.port}/"
    try:
        bodies = [(await client.post(url, b"{}", {}, timeout_s=5)).body for _ in range(3)]
    finally:
        await client.aclose()
    assert bodies == [b"ab", b"cd", b"ef"] and server.connections == 3


async def test_a_read_to_close_answer_cut_by_a_reset_is_an_error(server: ScriptedServer) -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(2)
        writer.write(b"HTTP/1.1 200 OK\r\n\r\n{\"partial\":")
        await writer.drain()
        await asyncio.sleep(0.05)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # linger 0: a reset (RST), not a clean close (FIN)

    srv = await asyncio.start_server(cut, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    client = LeanClient()
    try:
        with pytest.raises(LeanTransportError, match="closed the connection"):
            await client.post(f"http://127.0.0.1:{port}/", b"{}", {}, timeout_s=5)
    finally:
        await client.aclose()
        srv.close()
        await srv.wait_closed()


async def test_a_compressed_error_answer_is_classified_like_any_other(server: ScriptedServer) -> None:
    """The client has already inflated the body: the classifier must not be told it is still gzip."""
    from apiinone.upstreams.base import RouteTarget, UpstreamError
    from apiinone.upstreams.openai.images import post_json_raw

    packed = gzip.compress(b'{"error":{"message":"slow down","type":"requests","code":"rate_limit_exceeded"}}')
    server.answers = [b"HTTP/1.1 429 Too Many Requests\r\nContent-Encoding: gzip\r\nRetry-After: 2\r\n"
                      + f"Content-Length: {len(packed)}\r\n\r\n".encode() + packed]
    target = RouteTarget(model_id="m", route="r", provider="openai", base_url=f"http://127.0.0.1:{server.port}/v1",
                         api_key="sk-test-key", upstream_model="gpt-image-1.5", timeout_s=5)
    client = LeanClient()
    try:
        with pytest.raises(UpstreamError) as caught:
            await post_json_raw(client, target, f"{target.base_url}/images/generations", b"{}")
    finally:
        await client.aclose()
    assert caught.value.retryable and caught.value.retry_after_s == 2 and "slow down" in caught.value.message
