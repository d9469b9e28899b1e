"""The one egress guard for every outbound request a user can aim (webhooks, input images).

A user-supplied URL must never let the server reach loopback, the private network, link-local
cloud metadata or any other non-public address. The guard works in three layers:

* :func:`check_url_syntax` rejects bad schemes, userinfo tricks and IP literals in every spelling
  at request time, without touching the network;
* :func:`check_url` also resolves the host and refuses if *any* address is not public, so the
  user gets an immediate, clear error;
* :func:`guarded_transport` repeats the resolution and the check at connect time and then connects
  to the very address it checked, so DNS rebinding between the two checks gains nothing.

Only the transport is a real security boundary; the first two exist for early, friendly errors.
Callers must send requests with ``follow_redirects=False`` (a redirect would be checked again by
the transport, but the contract says redirects are not followed) and must not configure proxies
or mounts on the client, which would bypass the transport.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

import httpcore
import httpx

__all__ = [
    "EgressPolicy",
    "GuardedNetworkBackend",
    "HostNotResolved",
    "IPAddress",
    "IPNetwork",
    "Resolver",
    "UrlNotAllowed",
    "check_url",
    "check_url_syntax",
    "guarded_transport",
    "is_public_address",
    "system_resolver",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
#: ``await resolver(host, port)`` returns the addresses the host resolves to (tests inject fakes).
Resolver = Callable[[str, int], Awaitable[Sequence[IPAddress]]]

CertTypes = str | tuple[str, str] | tuple[str, str, str]

MAX_URL_LENGTH = 2048
DEFAULT_RESOLVE_TIMEOUT_S = 5.0


class UrlNotAllowed(Exception):
    """A URL the egress policy refuses; ``message`` is safe to show to the API user.

    ``address`` is the refused address, for logs only: for a resolved name it may be an internal
    address the user should not learn from us (split-horizon DNS).
    """

    def __init__(self, message: str, *, address: IPAddress | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.address = address


class HostNotResolved(UrlNotAllowed):
    """The host did not resolve (in time); at connect time this is a transient network error."""


@dataclass(frozen=True, slots=True)
class EgressPolicy:
    """Which non-public ranges an operator opened (``APIINONE_EGRESS_ALLOW``); empty = none."""

    allow: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_setting(cls, value: str | Iterable[str] | None) -> EgressPolicy:
        """Parse a comma-separated CIDR list; a bad entry is a configuration error (ValueError)."""
        if value is None:
            return cls()
        parts = value.split(",") if isinstance(value, str) else list(value)
        nets: list[IPNetwork] = []
        for raw in parts:
            item = raw.strip()
            if not item:
                continue
            try:
                nets.append(ipaddress.ip_network(item, strict=False))
            except ValueError as exc:
                raise ValueError(f"invalid CIDR in egress allow-list: {item!r}") from exc
        return cls(tuple(nets))

    def allows(self, ip: IPAddress) -> bool:
        """True when the operator explicitly opened this address (mapped IPv6 counts as its IPv4)."""
        candidates: list[IPAddress] = [ip]
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            candidates.append(ip.ipv4_mapped)
        return any(c in net for c in candidates for net in self.allow if c.version == net.version)


_STRICT = EgressPolicy()

# Everything here is either not routable on the internet or reaches something inside our network.
_BLOCKED_V4 = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",  # "this network", 0.0.0.0 reaches localhost on Linux
        "10.0.0.0/8",
        "100.64.0.0/10",  # carrier-grade NAT
        "127.0.0.0/8",
        "169.254.0.0/16",  # link-local, cloud metadata
        "172.16.0.0/12",
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",  # TEST-NET-1
        "192.31.196.0/24",  # AS112
        "192.52.193.0/24",  # AMT
        "192.88.99.0/24",  # 6to4 relay anycast
        "192.168.0.0/16",
        "192.175.48.0/24",  # AS112 direct delegation
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # TEST-NET-2
        "203.0.113.0/24",  # TEST-NET-3
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, includes broadcast
    )
)
_GLOBAL_UNICAST_V6 = ipaddress.IPv6Network("2000::/3")
_V4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")
_BLOCKED_V6 = tuple(
    ipaddress.IPv6Network(n)
    for n in (
        "2001::/23",  # IETF protocol assignments incl. Teredo (embeds an obfuscated IPv4)
        "2001:db8::/32",  # documentation
        "3fff::/20",  # documentation
    )
)


def _is_public_v4(ip: ipaddress.IPv4Address) -> bool:
    return ip.is_global and not any(ip in net for net in _BLOCKED_V4)


def _is_public_v6(ip: ipaddress.IPv6Address) -> bool:
    if ip.scope_id:
        return False
    if ip in _V4_MAPPED:
        mapped = ip.ipv4_mapped
        return mapped is not None and _is_public_v4(mapped)
    if ip in _NAT64:
        # The NAT64 gateway would connect to the embedded IPv4 address on our behalf.
        return _is_public_v4(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    if ip in _SIX_TO_FOUR:
        embedded = ip.sixtofour
        if embedded is None or not _is_public_v4(embedded):
            return False
    # Loopback, unspecified, IPv4-compatible, ULA, link/site-local and multicast are all
    # outside 2000::/3, so requiring global unicast refuses them in one go.
    if ip not in _GLOBAL_UNICAST_V6 or any(ip in net for net in _BLOCKED_V6):
        return False
    return ip.is_global or ip in _SIX_TO_FOUR


def is_public_address(ip: IPAddress, policy: EgressPolicy | None = None) -> bool:
    """May we connect to ``ip``? True for public unicast addresses or ones the policy opened."""
    if (policy if policy is not None else _STRICT).allows(ip):
        return True
    if isinstance(ip, ipaddress.IPv4Address):
        return _is_public_v4(ip)
    return _is_public_v6(ip)


# --- host classification ------------------------------------------------------------------------

_LOOPBACK_NAMES = frozenset(
    {
        "localhost",
        "localhost.localdomain",
        "localhost6",
        "localhost6.localdomain6",
        "ip6-localhost",
        "ip6-loopback",
    }
)
_LOOPBACK_ADDRESSES: tuple[IPAddress, ...] = (
    ipaddress.IPv4Address("127.0.0.1"),
    ipaddress.IPv6Address("::1"),
)
_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")
_NUMERIC_LABEL = re.compile(r"^(?:[0-9]+|0x[0-9a-f]*)$")


def _parse_loose_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """Decode an IPv4 literal the way inet_aton and browsers do (``127.1``, ``0x7f000001``...).

    Returns None when the host is a domain name. A host whose last label is numeric but does not
    decode is refused: resolvers and URL parsers disagree on such names, which is how filters are
    bypassed.
    """
    parts = host.split(".")
    if len(parts) > 1 and parts[-1] == "":
        parts.pop()
    if not parts or not _NUMERIC_LABEL.match(parts[-1]):
        return None
    values: list[int] = []
    for part in parts:
        if not _NUMERIC_LABEL.match(part):
            raise UrlNotAllowed("host is not a valid domain name or IP address")
        if part.startswith("0x"):
            values.append(int(part[2:] or "0", 16))
        elif len(part) > 1 and part.startswith("0"):
            if not all(ch in "01234567" for ch in part):
                raise UrlNotAllowed("host is not a valid domain name or IP address")
            values.append(int(part, 8))
        else:
            values.append(int(part))
    if len(values) > 4 or any(v > 255 for v in values[:-1]) or values[-1] >= 256 ** (5 - len(values)):
        raise UrlNotAllowed("host is not a valid domain name or IP address")
    number = values[-1]
    for index, value in enumerate(values[:-1]):
        number += value << (8 * (3 - index))
    return ipaddress.IPv4Address(number)


@dataclass(frozen=True, slots=True)
class _Host:
    """A host split into "literal addresses we already know" or "a DNS name to resolve"."""

    name: str  # lower-case ASCII (punycode), without brackets
    addresses: tuple[IPAddress, ...] = ()  # set for IP literals and loopback names
    is_literal: bool = False


def _classify_host(raw: str) -> _Host:
    host = raw.strip("[]").lower() if raw.startswith("[") else raw.lower()
    if not host:
        raise UrlNotAllowed("URL has no host")
    if ":" in host:
        if "%" in host:
            raise UrlNotAllowed("IPv6 zone identifiers are not allowed")
        try:
            return _Host(host, (ipaddress.IPv6Address(host),), is_literal=True)
        except ValueError as exc:
            raise UrlNotAllowed("host is not a valid IPv6 address") from exc
    v4 = _parse_loose_ipv4(host)
    if v4 is not None:
        return _Host(host, (v4,), is_literal=True)
    bare = host[:-1] if host.endswith(".") else host
    labels = bare.split(".")
    if len(bare) > 253 or not all(_LABEL.match(label) for label in labels):
        raise UrlNotAllowed("host is not a valid domain name")
    if bare in _LOOPBACK_NAMES or labels[-1] == "localhost":
        return _Host(host, _LOOPBACK_ADDRESSES)
    return _Host(host)


def _refuse_address(ip: IPAddress) -> UrlNotAllowed:
    return UrlNotAllowed(
        f"address {ip} is not public (private, loopback, link-local or reserved)", address=ip
    )


def _refuse_resolved(host: _Host, ip: IPAddress) -> UrlNotAllowed:
    return UrlNotAllowed(f"host {host.name} resolves to a non-public address", address=ip)


def _static_allowed(host: _Host, policy: EgressPolicy) -> list[IPAddress]:
    """Check addresses known without DNS; loopback names keep whichever loopbacks are opened."""
    if host.is_literal:
        ip = host.addresses[0]
        if not is_public_address(ip, policy):
            raise _refuse_address(ip)
        return [ip]
    allowed = [ip for ip in host.addresses if is_public_address(ip, policy)]
    if not allowed:
        raise UrlNotAllowed(f"{host.name} is a loopback name and loopback is not allowed")
    return allowed


async def system_resolver(host: str, port: int) -> list[IPAddress]:
    """Resolve with the OS resolver (``loop.getaddrinfo``), TCP addresses only, order kept."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise HostNotResolved(f"could not resolve host {host}") from exc
    seen: dict[IPAddress, None] = {}
    for family, _type, _proto, _canon, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        address = str(sockaddr[0])
        scope = sockaddr[3] if family == socket.AF_INET6 and len(sockaddr) > 3 else 0
        try:
            ip = ipaddress.ip_address(f"{address}%{scope}" if scope and "%" not in address else address)
        except ValueError:
            continue
        seen.setdefault(ip, None)
    return list(seen)


async def _resolve_checked(
    host: _Host,
    port: int,
    policy: EgressPolicy,
    resolver: Resolver,
    timeout_s: float | None,
) -> list[IPAddress]:
    """Resolve a DNS name and refuse unless every address is allowed (one bad one taints all)."""
    if host.addresses:
        return _static_allowed(host, policy)
    try:
        async with asyncio.timeout(timeout_s):
            resolved = list(await resolver(host.name, port))
    except TimeoutError as exc:
        raise HostNotResolved(f"resolving host {host.name} timed out") from exc
    except OSError as exc:  # custom resolvers may let socket.gaierror through
        raise HostNotResolved(f"could not resolve host {host.name}") from exc
    if not resolved:
        raise HostNotResolved(f"could not resolve host {host.name}")
    for ip in resolved:
        if not is_public_address(ip, policy):
            raise _refuse_resolved(host, ip)
    return resolved


# --- public checks ------------------------------------------------------------------------------


def _parse(url: str) -> tuple[httpx.URL, _Host, int]:
    if not isinstance(url, str) or not url:
        raise UrlNotAllowed("URL is empty")
    if len(url) > MAX_URL_LENGTH:
        raise UrlNotAllowed(f"URL is longer than {MAX_URL_LENGTH} characters")
    if any(ord(ch) <= 0x20 or ord(ch) == 0x7F for ch in url) or "\\" in url:
        raise UrlNotAllowed("URL contains whitespace, control characters or backslashes")
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError, UnicodeError) as exc:
        raise UrlNotAllowed("URL is not valid") from exc
    if parsed.scheme not in ("http", "https"):
        raise UrlNotAllowed("only http and https URLs are allowed")
    scheme_end = url.find("://")
    if scheme_end < 0 or url[:scheme_end].lower() != parsed.scheme:
        raise UrlNotAllowed("URL must be absolute (scheme://host/...)")
    authority = re.split(r"[/?#]", url[scheme_end + 3 :], maxsplit=1)[0]
    if "@" in authority or parsed.userinfo:
        raise UrlNotAllowed("credentials in the URL are not allowed")
    port = parsed.port
    if port is not None and not 0 < port < 65536:
        raise UrlNotAllowed("URL port is out of range")
    try:
        raw_host = parsed.raw_host.decode("ascii")
    except UnicodeDecodeError as exc:
        raise UrlNotAllowed("host is not a valid domain name") from exc
    host = _classify_host(raw_host)
    return parsed, host, port or (443 if parsed.scheme == "https" else 80)


def check_url_syntax(url: str, policy: EgressPolicy | None = None) -> str:
    """Static request-time check (no network); returns the normalized URL or raises UrlNotAllowed.

    IP literals are decided here in every spelling; odd IPv4 spellings that are allowed are
    rewritten to dotted-quad so no later parser can read them differently.
    """
    parsed, host, _port = _parse(url)
    policy = policy if policy is not None else _STRICT
    if host.addresses:
        _static_allowed(host, policy)
        if host.is_literal and isinstance(host.addresses[0], ipaddress.IPv4Address):
            canonical = str(host.addresses[0])
            if canonical != host.name:
                parsed = parsed.copy_with(host=canonical)
    return str(parsed)


async def check_url(
    url: str,
    policy: EgressPolicy | None = None,
    resolver: Resolver | None = None,
    *,
    timeout_s: float = DEFAULT_RESOLVE_TIMEOUT_S,
) -> list[IPAddress]:
    """Syntax check plus DNS: refuse if the host does not resolve or any address is not allowed."""
    check_url_syntax(url, policy)
    _parsed, host, port = _parse(url)
    return await _resolve_checked(
        host, port, policy if policy is not None else _STRICT, resolver or system_resolver, timeout_s
    )


# --- connect-time guard -------------------------------------------------------------------------


class GuardedNetworkBackend(httpcore.AsyncNetworkBackend):
    """httpcore backend that resolves and checks the host itself, then dials the checked IP.

    httpcore hands the original hostname to ``start_tls`` as ``server_hostname`` (see
    ``AsyncHTTPConnection._connect``), so SNI and certificate checks still use the name, and the
    Host header comes from the request URL, untouched.
    """

    def __init__(
        self,
        policy: EgressPolicy | None = None,
        resolver: Resolver | None = None,
        inner: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self._policy = policy if policy is not None else _STRICT
        self._resolver = resolver or system_resolver
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore dictates the signature
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            addresses = await _resolve_checked(
                _classify_host(host), port, self._policy, self._resolver, timeout
            )
        except HostNotResolved as exc:
            # Same as an unguarded client would report, so delivery retries it like any DNS blip.
            raise httpcore.ConnectError(exc.message) from exc
        last_error: Exception | None = None
        for ip in addresses:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                return await self._inner.connect_tcp(
                    str(ip),
                    port,
                    timeout=remaining,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except httpcore.ConnectError as exc:
                last_error = exc
        assert last_error is not None  # _resolve_checked never returns an empty list
        raise last_error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore dictates the signature
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise UrlNotAllowed("unix sockets are not allowed for egress")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _GuardedTransport(httpx.AsyncHTTPTransport):
    """An httpx transport whose connection pool dials only through :class:`GuardedNetworkBackend`."""

    def __init__(
        self,
        policy: EgressPolicy | None,
        *,
        resolver: Resolver | None,
        verify: ssl.SSLContext | str | bool,
        cert: CertTypes | None,
        trust_env: bool,
        http1: bool,
        http2: bool,
        limits: httpx.Limits,
        local_address: str | None,
        retries: int,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None,
    ) -> None:
        ssl_context = httpx.create_ssl_context(verify=verify, cert=cert, trust_env=trust_env)
        super().__init__(verify=ssl_context, http1=http1, http2=http2, limits=limits)
        # httpx offers no hook for the network backend, so the pool it built is replaced by an
        # identical one that dials through the guard (no proxy, no unix socket by construction).
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            http1=http1,
            http2=http2,
            local_address=local_address,
            retries=retries,
            network_backend=GuardedNetworkBackend(policy, resolver),
            socket_options=socket_options,
        )


def guarded_transport(
    policy: EgressPolicy | None = None,
    *,
    resolver: Resolver | None = None,
    verify: ssl.SSLContext | str | bool = True,
    cert: CertTypes | None = None,
    trust_env: bool = True,
    http1: bool = True,
    http2: bool = False,
    limits: httpx.Limits = httpx.Limits(max_connections=100, max_keepalive_connections=20),
    local_address: str | None = None,
    retries: int = 0,
    socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
) -> httpx.AsyncHTTPTransport:
    """Build the transport for user-aimed requests: ``httpx.AsyncClient(transport=...)``.

    Refused connections raise :class:`UrlNotAllowed` (not an httpx error) before any socket is
    opened. Use ``follow_redirects=False`` and no proxies/mounts on the client.
    """
    return _GuardedTransport(
        policy,
        resolver=resolver,
        verify=verify,
        cert=cert,
        trust_env=trust_env,
        http1=http1,
        http2=http2,
        limits=limits,
        local_address=local_address,
        retries=retries,
        socket_options=socket_options,
    )
