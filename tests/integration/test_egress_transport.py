"""The connect-time egress guard against a real HTTP server on 127.0.0.1.

Every request in this file goes to 127.0.0.1 or is refused before a socket is opened; fake
resolvers stand in for DNS so nothing leaves the machine.
"""

from __future__ import annotations

import asyncio
import io
import ipaddress
import random
import socket
import ssl
import struct
import zlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from PIL import Image

from apiinone.net.egress import (
    EgressPolicy,
    IPAddress,
    UrlNotAllowed,
    check_url,
    guarded_transport,
)
from apiinone.net.fetch import InputFetchError, fetch_input_image
from tests.conftest import self_signed_cert

STRICT = EgressPolicy()
LOOPBACK = EgressPolicy.from_setting("127.0.0.0/8")


# --- a tiny HTTP server --------------------------------------------------------------------------


@dataclass
class Route:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    chunked: bool = False
    stall_s: float = 0.0  # sleep after the headers, before the body


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]


class TinyServer:
    """One request per connection; counts connections so tests can prove none was made."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self.routes: dict[str, Route] = {}
        self.connections = 0
        self.requests: list[Seen] = []
        self._ssl = ssl_context
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self._ssl)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _version = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    name, value = line.split(":", 1)
                    headers[name.strip().lower()] = value.strip()
            self.requests.append(Seen(method, path, headers))
            route = self.routes.get(path, Route(404, b"not found"))
            out = [f"HTTP/1.1 {route.status} X", "Connection: close"]
            out += [f"{k}: {v}" for k, v in route.headers.items()]
            out.append(
                "Transfer-Encoding: chunked" if route.chunked else f"Content-Length: {len(route.body)}"
            )
            writer.write(("\r\n".join(out) + "\r\n\r\n").encode("latin-1"))
            await writer.drain()
            if route.stall_s:
                await asyncio.sleep(route.stall_s)
            if route.chunked:
                for i in range(0, len(route.body), 1000):
                    piece = route.body[i : i + 1000]
                    writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                    await writer.drain()
                writer.write(b"0\r\n\r\n")
            else:
                writer.write(route.body)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)


@pytest.fixture
async def server() -> AsyncIterator[TinyServer]:
    srv = TinyServer()
    await srv.start()
    srv.routes["/ok"] = Route(200, b"hello", {"Content-Type": "text/plain"})
    yield srv
    await srv.stop()


class FakeResolver:
    """Returns one answer per call (the last one repeats): a scripted DNS, rebinding included."""

    def __init__(self, *answers: Sequence[str]) -> None:
        self.answers = [[ipaddress.ip_address(a) for a in answer] for answer in answers]
        self.calls: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> list[IPAddress]:
        self.calls.append((host, port))
        if not self.answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        index = min(len(self.calls), len(self.answers)) - 1
        return list(self.answers[index])


def client_for(policy: EgressPolicy, resolver: FakeResolver | None = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=guarded_transport(policy, resolver=resolver or FakeResolver()),
        follow_redirects=False,
        timeout=5.0,
    )


# --- the transport ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "template",
    [
        "http://127.0.0.1:{port}/ok",
        "http://127.1:{port}/ok",
        "http://2130706433:{port}/ok",
        "http://0x7f000001:{port}/ok",
        "http://localhost:{port}/ok",
        "http://localhost.:{port}/ok",
        "http://api.localhost:{port}/ok",
        "http://[::ffff:127.0.0.1]:{port}/ok",
        "http://[::1]:{port}/ok",
        "http://0.0.0.0:{port}/ok",
        "http://0:{port}/ok",
    ],
)
async def test_blocked_by_default_without_connecting(server: TinyServer, template: str) -> None:
    resolver = FakeResolver()
    async with client_for(STRICT, resolver) as client:
        with pytest.raises(UrlNotAllowed):
            await client.get(template.format(port=server.port))
    assert server.connections == 0
    assert resolver.calls == []  # literals and loopback names are decided without DNS


async def test_hostname_resolving_to_loopback_is_blocked(server: TinyServer) -> None:
    resolver = FakeResolver(["127.0.0.1"])
    async with client_for(STRICT, resolver) as client:
        with pytest.raises(UrlNotAllowed):
            await client.get(f"http://dev.test:{server.port}/ok")
    assert resolver.calls == [("dev.test", server.port)]
    assert server.connections == 0


async def test_allowed_with_allow_list(server: TinyServer) -> None:
    async with client_for(LOOPBACK) as client:
        response = await client.get(f"http://127.0.0.1:{server.port}/ok")
        assert response.status_code == 200
        assert response.text == "hello"
        response = await client.get(f"http://127.1:{server.port}/ok")
        assert response.status_code == 200
        response = await client.get(f"http://localhost:{server.port}/ok")
        assert response.status_code == 200
    assert server.connections == 3


async def test_resolved_name_dials_checked_ip_and_keeps_host_header(server: TinyServer) -> None:
    resolver = FakeResolver(["127.0.0.1"])
    async with client_for(LOOPBACK, resolver) as client:
        response = await client.get(f"http://dev.test:{server.port}/ok")
    assert response.status_code == 200
    assert server.requests[0].headers["host"] == f"dev.test:{server.port}"


async def test_dns_rebinding_is_refused_at_connect_time(server: TinyServer) -> None:
    # Public at request time, loopback when the connection is made.
    resolver = FakeResolver(["8.8.8.8"], ["127.0.0.1"])
    url = f"http://rebind.test:{server.port}/ok"
    assert await check_url(url, STRICT, resolver) == [ipaddress.ip_address("8.8.8.8")]
    async with client_for(STRICT, resolver) as client:
        with pytest.raises(UrlNotAllowed) as info:
            await client.get(url)
    assert info.value.address == ipaddress.ip_address("127.0.0.1")
    assert len(resolver.calls) == 2
    assert server.connections == 0


async def test_rebinding_to_a_mix_is_refused(server: TinyServer) -> None:
    # One good address does not excuse a bad one: nothing is dialled.
    resolver = FakeResolver(["127.0.0.1", "8.8.8.8"])
    async with client_for(STRICT, resolver) as client:
        with pytest.raises(UrlNotAllowed):
            await client.get(f"http://mixed.test:{server.port}/ok")
    assert server.connections == 0


async def test_unresolvable_at_connect_time_is_a_connect_error(server: TinyServer) -> None:
    async with client_for(STRICT, FakeResolver()) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"http://gone.test:{server.port}/ok")
    assert server.connections == 0


async def test_followed_redirect_to_closed_address_is_still_refused(server: TinyServer) -> None:
    # Callers must not follow redirects; if one does, each hop is still checked at connect time.
    server.routes["/hop"] = Route(302, headers={"Location": f"http://127.0.0.2:{server.port}/ok"})
    policy = EgressPolicy.from_setting("127.0.0.1/32")
    async with client_for(policy) as client:
        response = await client.get(f"http://127.0.0.1:{server.port}/hop")
        assert response.status_code == 302
        with pytest.raises(UrlNotAllowed):
            await client.get(f"http://127.0.0.1:{server.port}/hop", follow_redirects=True)
    assert server.connections == 2


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    return self_signed_cert(tmp_path, common_name="secure.test", alt_name="DNS:secure.test")


async def test_tls_uses_the_hostname_for_sni_and_verification(tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    sni_seen: list[str | None] = []
    server_ctx.sni_callback = lambda _sock, name, _ctx: sni_seen.append(name)
    srv = TinyServer(server_ctx)
    await srv.start()
    srv.routes["/ok"] = Route(200, b"secure")
    try:
        client_ctx = ssl.create_default_context(cafile=str(cert))
        resolver = FakeResolver(["127.0.0.1"])
        transport = guarded_transport(LOOPBACK, resolver=resolver, verify=client_ctx)
        async with httpx.AsyncClient(transport=transport, follow_redirects=False) as client:
            response = await client.get(f"https://secure.test:{srv.port}/ok")
        assert response.text == "secure"
        assert sni_seen == ["secure.test"]
        assert srv.requests[0].headers["host"] == f"secure.test:{srv.port}"
    finally:
        await srv.stop()


# --- fetch_input_image --------------------------------------------------------------------------


def image_bytes(fmt: str, size: tuple[int, int] = (16, 12)) -> bytes:
    """Noisy pixels, so the file does not compress to almost nothing."""
    buffer = io.BytesIO()
    pixels = random.Random(1).randbytes(size[0] * size[1] * 3)
    Image.frombytes("RGB", size, pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png() -> bytes:
    """A tiny file that claims 100000 x 100000 pixels."""
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    ("fmt", "content_type", "filename"),
    [
        ("PNG", "image/png", "image.png"),
        ("JPEG", "image/jpeg", "image.jpg"),
        ("WEBP", "image/webp", "image.webp"),
    ],
)
async def test_fetch_accepts_real_images(
    server: TinyServer, fmt: str, content_type: str, filename: str
) -> None:
    data = image_bytes(fmt)
    # The header lies; only the bytes count.
    server.routes["/img"] = Route(200, data, {"Content-Type": "application/octet-stream"})
    async with client_for(LOOPBACK) as client:
        image = await fetch_input_image(client, f"http://127.0.0.1:{server.port}/img")
    assert image.data == data
    assert image.content_type == content_type
    assert image.filename == filename
    assert server.requests[0].headers["accept-encoding"] == "identity"


async def test_fetch_accepts_chunked_body(server: TinyServer) -> None:
    data = image_bytes("PNG", (200, 200))
    assert len(data) > 10_000  # many chunks
    server.routes["/img"] = Route(200, data, {"Content-Type": "image/png"}, chunked=True)
    async with client_for(LOOPBACK) as client:
        image = await fetch_input_image(client, f"http://127.0.0.1:{server.port}/img")
    assert image.data == data


@pytest.mark.parametrize(
    "body",
    [
        b"this is plain text, not a png",
        b"<svg xmlns='http://www.w3.org/2000/svg'/>",
        b"",
        b"GIF89a\x01\x00\x01\x00\x00\x00\x00;",
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 40,
        b"RIFF\x00\x00\x00\x00WEBPVP8 garbage",
        b"\xff\xd8\xff\xe0 definitely not a jpeg",
    ],
)
async def test_fetch_refuses_non_images_served_as_png(server: TinyServer, body: bytes) -> None:
    server.routes["/fake.png"] = Route(200, body, {"Content-Type": "image/png"})
    async with client_for(LOOPBACK) as client:
        with pytest.raises(InputFetchError):
            await fetch_input_image(client, f"http://127.0.0.1:{server.port}/fake.png")


async def test_fetch_refuses_corrupt_png(server: TinyServer) -> None:
    data = bytearray(image_bytes("PNG"))
    data[-20] ^= 0xFF  # break a CRC inside the image data
    server.routes["/bad.png"] = Route(200, bytes(data), {"Content-Type": "image/png"})
    async with client_for(LOOPBACK) as client:
        with pytest.raises(InputFetchError):
            await fetch_input_image(client, f"http://127.0.0.1:{server.port}/bad.png")


@pytest.mark.parametrize("chunked", [False, True])
async def test_fetch_refuses_oversize_body(server: TinyServer, chunked: bool) -> None:
    data = image_bytes("PNG", (300, 300))
    assert len(data) > 1000
    server.routes["/big.png"] = Route(200, data, {"Content-Type": "image/png"}, chunked=chunked)
    async with client_for(LOOPBACK) as client:
        with pytest.raises(InputFetchError, match="larger than 1000 bytes"):
            await fetch_input_image(client, f"http://127.0.0.1:{server.port}/big.png", max_bytes=1000)


async def test_fetch_refuses_too_many_pixels(server: TinyServer) -> None:
    server.routes["/wide.png"] = Route(200, image_bytes("PNG", (100, 100)))
    server.routes["/bomb.png"] = Route(200, bomb_png())
    async with client_for(LOOPBACK) as client:
        with pytest.raises(InputFetchError, match="pixels"):
            await fetch_input_image(client, f"http://127.0.0.1:{server.port}/wide.png", max_pixels=5000)
        with pytest.raises(InputFetchError):
            await fetch_input_image(client, f"http://127.0.0.1:{server.port}/bomb.png")


async def test_fetch_refuses_redirects(server: TinyServer) -> None:
    server.routes["/img"] = Route(200, image_bytes("PNG"))
    server.routes["/moved"] = Route(302, headers={"Location": "/img"})
    async with client_for(LOOPBACK) as client:
        with pytest.raises(InputFetchError, match="redirect"):
            await fetch_input_image(client, f"http://127.0.0.1:{server.port}/moved")
    assert [r.path for r in server.requests] == ["/moved"]


async def test_fetch_refuses_http_errors(server: TinyServer) -> None:
    async with client_for(LOOPBACK) as client:
        with pytest.raises(InputFetchError, match="404"):
            await fetch_input_image(client, f"http://127.0.0.1:{server.port}/missing.png")


async def test_fetch_refuses_content_encoding(server: TinyServer) -> None:
    server.routes["/gz.png"] = Route(200, zlib.compress(image_bytes("PNG")), {"Content-Encoding": "deflate"})
    async with client_for(LOOPBACK) as client:
        with pytest.raises(InputFetchError, match="encoding"):
            await fetch_input_image(client, f"http://127.0.0.1:{server.port}/gz.png")


async def test_fetch_total_timeout(server: TinyServer) -> None:
    server.routes["/slow.png"] = Route(200, image_bytes("PNG"), stall_s=5.0)
    async with client_for(LOOPBACK) as client:
        with pytest.raises(InputFetchError, match="longer than"):
            await fetch_input_image(client, f"http://127.0.0.1:{server.port}/slow.png", total_timeout_s=0.3)


async def test_fetch_blocked_by_default_without_connecting(server: TinyServer) -> None:
    server.routes["/img"] = Route(200, image_bytes("PNG"))
    async with client_for(STRICT) as client:
        with pytest.raises(InputFetchError, match="not allowed"):
            await fetch_input_image(client, f"http://127.0.0.1:{server.port}/img")
    assert server.connections == 0


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/a.png", "not a url"])
async def test_fetch_refuses_other_schemes(url: str) -> None:
    async with client_for(LOOPBACK) as client:
        with pytest.raises(InputFetchError):
            await fetch_input_image(client, url)
