"""The egress guard refuses every way of spelling an internal address, without touching the network."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence

import pytest

from apiinone.net.egress import (
    EgressPolicy,
    HostNotResolved,
    IPAddress,
    Resolver,
    UrlNotAllowed,
    check_url,
    check_url_syntax,
    is_public_address,
    system_resolver,
)

STRICT = EgressPolicy()
LOOPBACK = EgressPolicy.from_setting("127.0.0.0/8")
LOOPBACK_BOTH = EgressPolicy.from_setting("127.0.0.0/8,::1/128")

REFUSED_SCHEMES_AND_SHAPES = [
    "file:///etc/passwd",
    "file://localhost/etc/passwd",
    "gopher://example.com:70/_stats",
    "ftp://example.com/a.png",
    "ftps://example.com/a.png",
    "data:image/png;base64,iVBORw0KGgo=",
    "javascript:alert(1)",
    "ws://example.com/socket",
    "wss://example.com/socket",
    "dict://example.com:11211/stat",
    "ldap://example.com/",
    "sftp://example.com/a.png",
    "jar:http://example.com/a.jar!/",
    "netdoc:///etc/passwd",
    "//example.com/a.png",
    "example.com/a.png",
    "/a.png",
    "http:/example.com/a.png",
    "http:example.com",
    "https:///a.png",
    "http://",
    "",
    "http://" + "a" * 2100 + ".com/",
]

REFUSED_USERINFO_AND_JUNK = [
    "http://user@example.com/",
    "http://user:pass@example.com/",
    "http://@example.com/",
    "http://example.com@127.0.0.1/",
    "http://127.0.0.1@example.com/",
    "http://127.0.0.1:80@example.com/",
    "http://user@evil.com@example.com/",
    "http://user%40evil.com@example.com/",
    "http://example.com\\@127.0.0.1/",
    "http://example.com\\.127.0.0.1/",
    "http://example.com%40127.0.0.1/",
    "http://%31%32%37.0.0.1/",
    "http://exa mple.com/",
    "http://example.com /",
    " http://example.com/",
    "http://example.com\t/",
    "http://example.com\n.evil.com/",
    "http://example.com\x00.evil.com/",
    "http://exa%20mple.com/",
    "http://-example.com/",
    "http://example-.com/",
    "http://" + "a" * 64 + ".com/",
    "http://example.com:0/",
    "http://example.com:99999/",
    "http://①②⑦.0.0.1/",
]

REFUSED_IPV4_LOOPBACK_SPELLINGS = [
    "http://127.0.0.1/",
    "http://127.0.0.1:8080/hook",
    "http://127.0.0.1./",
    "http://127.255.255.254/",
    "http://127.1/",
    "http://127.0.1/",
    "http://2130706433/",
    "http://0x7f000001/",
    "http://0X7F000001/",
    "http://0x7f.0x0.0x0.0x1/",
    "http://0x7f.1/",
    "http://0177.0.0.1/",
    "http://0177.1/",
    "http://017700000001/",
    "http://127.000.000.001/",
    "http://0/",
    "http://00/",
    "http://0x0/",
    "http://0.0.0.0/",
    "http://0.0.0.0:8000/",
    "http://0.1.2.3/",
]

REFUSED_IPV4_INTERNAL = [
    "http://10.0.0.1/",
    "http://10.255.255.255/",
    "http://012.0.0.1/",
    "http://167772161/",
    "http://172.16.0.1/",
    "http://172.31.255.255/",
    "http://192.168.0.1/",
    "http://192.168.1.1:8443/",
    "http://0xc0a80101/",
    "http://100.64.0.1/",
    "http://100.127.255.254/",
    "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
    "http://169.254.169.254./",
    "http://169.254.170.2/v2/credentials",
    "http://2852039166/",
    "http://0xa9fea9fe/",
    "http://0251.0376.0251.0376/",
    "http://169.254.43518/",
    "http://192.0.0.1/",
    "http://192.0.0.170/",
    "http://192.0.2.1/",
    "http://198.18.0.1/",
    "http://198.19.255.255/",
    "http://198.51.100.7/",
    "http://203.0.113.9/",
    "http://192.88.99.1/",
    "http://224.0.0.1/",
    "http://239.255.255.250/",
    "http://240.0.0.1/",
    "http://255.255.255.255/",
]

REFUSED_IPV6 = [
    "http://[::1]/",
    "http://[::1]:8080/",
    "http://[0:0:0:0:0:0:0:1]/",
    "http://[::]/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:7f00:1]/",
    "http://[::FFFF:7F00:1]/",
    "http://[0:0:0:0:0:ffff:127.0.0.1]/",
    "http://[::ffff:10.0.0.1]/",
    "http://[::ffff:192.168.0.1]/",
    "http://[::ffff:169.254.169.254]/",
    "http://[::ffff:a9fe:a9fe]/",
    "http://[::ffff:0.0.0.0]/",
    "http://[::127.0.0.1]/",
    "http://[::7f00:1]/",
    "http://[::8.8.8.8]/",
    "http://[::ffff:0:7f00:1]/",
    "http://[fe80::1]/",
    "http://[fe80::1%25eth0]/",
    "http://[fe80::a9fe:a9fe]/",
    "http://[febf::1]/",
    "http://[fec0::1]/",
    "http://[fc00::1]/",
    "http://[fd00:ec2::254]/",
    "http://[fd12:3456:789a::1]/",
    "http://[ff02::1]/",
    "http://[ff05::1:3]/",
    "http://[ff0e::1]/",
    "http://[64:ff9b::7f00:1]/",
    "http://[64:ff9b::127.0.0.1]/",
    "http://[64:ff9b::a9fe:a9fe]/",
    "http://[64:ff9b::10.0.0.1]/",
    "http://[64:ff9b:1::a00:1]/",
    "http://[2002:7f00:1::]/",
    "http://[2002:7f00:0001::1]/",
    "http://[2002:a9fe:a9fe::1]/",
    "http://[2002:c0a8:101::1]/",
    "http://[2002:a00:1::]/",
    "http://[2001:db8::1]/",
    "http://[3fff::1]/",
    "http://[2001::1]/",
    "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/",
    "http://[100::1]/",
    "http://[::1%25lo]/",
    "http://[::1/",
    "http://[not-an-ip]/",
]

REFUSED_NAMES = [
    "http://localhost/",
    "http://LOCALHOST/",
    "http://localhost./",
    "http://localhost:8000/hook",
    "http://foo.localhost/",
    "http://a.b.localhost./",
    "http://LocalHost.LocalHost/",
    "http://localhost.localdomain/",
    "http://ip6-localhost/",
    "http://ip6-loopback/",
    "http://localhost6/",
]

REFUSED_BAD_HOSTS = [
    "http://1.2.3.4.5/",
    "http://foo.127.1/",
    "http://example.0x7f/",
    "http://256.1.1.1/",
    "http://1.2.3.256/",
    "http://1.2.65536/",
    "http://4294967296/",
    "http://0x100000000/",
    "http://08.0.0.1/",
    "http://0x7g.0.0.1/",
]

ALL_REFUSED = (
    REFUSED_SCHEMES_AND_SHAPES
    + REFUSED_USERINFO_AND_JUNK
    + REFUSED_IPV4_LOOPBACK_SPELLINGS
    + REFUSED_IPV4_INTERNAL
    + REFUSED_IPV6
    + REFUSED_NAMES
    + REFUSED_BAD_HOSTS
)

ACCEPTED = {
    "https://example.com/a.png": "https://example.com/a.png",
    "http://example.com": "http://example.com",
    "https://EXAMPLE.com:8443/x?y=1#z": "https://example.com:8443/x?y=1#z",
    "HTTPS://Hooks.Example.COM/Path/Case": "https://hooks.example.com/Path/Case",
    "https://hooks.example.com./cb": "https://hooks.example.com./cb",
    "https://exämple.com/a.png": "https://xn--exmple-cua.com/a.png",
    "https://img_cdn.example.com/a.png": "https://img_cdn.example.com/a.png",
    "http://example.com:65535/": "http://example.com:65535/",
    "https://example.com/a%20b.png?sig=a@b": "https://example.com/a%20b.png?sig=a@b",
    "http://8.8.8.8/": "http://8.8.8.8/",
    "http://1.1.1.1:8080/hook": "http://1.1.1.1:8080/hook",
    "http://134744072/": "http://8.8.8.8/",
    "http://0x08080808/": "http://8.8.8.8/",
    "http://8.8.2056/": "http://8.8.8.8/",
    "http://[2606:4700:4700::1111]/": "http://[2606:4700:4700::1111]/",
    "http://[64:ff9b::808:808]/": "http://[64:ff9b::808:808]/",
    "http://[2002:808:808::1]/": "http://[2002:808:808::1]/",
    "http://[::ffff:8.8.8.8]/": "http://[::ffff:8.8.8.8]/",
}


@pytest.mark.parametrize("url", ALL_REFUSED)
def test_refused_by_syntax_check(url: str) -> None:
    with pytest.raises(UrlNotAllowed) as info:
        check_url_syntax(url, STRICT)
    assert info.value.message


@pytest.mark.parametrize(("url", "normalized"), list(ACCEPTED.items()))
def test_accepted_by_syntax_check(url: str, normalized: str) -> None:
    assert check_url_syntax(url, STRICT) == normalized
    assert check_url_syntax(url) == normalized


@pytest.mark.parametrize(
    "url",
    REFUSED_SCHEMES_AND_SHAPES + REFUSED_USERINFO_AND_JUNK + REFUSED_IPV4_INTERNAL + REFUSED_BAD_HOSTS,
)
def test_allow_list_for_loopback_opens_nothing_else(url: str) -> None:
    with pytest.raises(UrlNotAllowed):
        check_url_syntax(url, LOOPBACK_BOTH)


@pytest.mark.parametrize(
    ("url", "normalized"),
    [
        ("http://127.0.0.1:8000/hook", "http://127.0.0.1:8000/hook"),
        ("http://127.1:8000/hook", "http://127.0.0.1:8000/hook"),
        ("http://2130706433/", "http://127.0.0.1/"),
        ("http://0x7f.1/", "http://127.0.0.1/"),
        ("http://[::1]:8000/", "http://[::1]:8000/"),
        ("http://[::ffff:127.0.0.1]/", "http://[::ffff:127.0.0.1]/"),
        ("http://localhost:8000/", "http://localhost:8000/"),
        ("http://app.localhost/", "http://app.localhost/"),
    ],
)
def test_allow_list_opens_loopback(url: str, normalized: str) -> None:
    assert check_url_syntax(url, LOOPBACK_BOTH) == normalized


def test_ipv4_only_allow_list_keeps_ipv6_loopback_closed() -> None:
    assert check_url_syntax("http://127.0.0.1/", LOOPBACK) == "http://127.0.0.1/"
    with pytest.raises(UrlNotAllowed):
        check_url_syntax("http://[::1]/", LOOPBACK)
    # localhost is dialled only on the loopback addresses that are open.
    assert check_url_syntax("http://localhost/", LOOPBACK) == "http://localhost/"


def test_allow_list_for_a_private_range() -> None:
    policy = EgressPolicy.from_setting("10.1.0.0/16")
    assert check_url_syntax("http://10.1.2.3/", policy) == "http://10.1.2.3/"
    for url in ("http://10.2.0.1/", "http://127.0.0.1/", "http://localhost/"):
        with pytest.raises(UrlNotAllowed):
            check_url_syntax(url, policy)


# --- policy and address classification ----------------------------------------------------------


def test_policy_from_setting() -> None:
    assert EgressPolicy.from_setting(None).allow == ()
    assert EgressPolicy.from_setting("").allow == ()
    assert EgressPolicy.from_setting(" , ").allow == ()
    policy = EgressPolicy.from_setting(" 10.0.0.1/8 , ,::1/128,192.168.5.5")
    assert policy.allow == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
        ipaddress.ip_network("192.168.5.5/32"),
    )
    assert EgressPolicy.from_setting(["127.0.0.0/8"]).allow == (ipaddress.ip_network("127.0.0.0/8"),)
    with pytest.raises(ValueError, match="banana"):
        EgressPolicy.from_setting("127.0.0.0/8,banana")


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "0.0.0.0",
        "10.1.2.3",
        "172.20.0.1",
        "192.168.100.1",
        "100.64.0.1",
        "169.254.169.254",
        "198.18.0.1",
        "192.0.2.1",
        "198.51.100.1",
        "203.0.113.1",
        "224.0.0.251",
        "240.0.0.1",
        "255.255.255.255",
        "::",
        "::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "::ffff:169.254.169.254",
        "::10.0.0.1",
        "fe80::1",
        "fe80::1%2",
        "fc00::1",
        "fd00::1",
        "ff02::1",
        "64:ff9b::7f00:1",
        "64:ff9b::c0a8:1",
        "64:ff9b:1::1",
        "2002:7f00:1::1",
        "2002:a9fe:a9fe::",
        "2001:db8::1",
        "2001::1",
        "100::1",
    ],
)
def test_not_public(address: str) -> None:
    assert not is_public_address(ipaddress.ip_address(address))
    assert not is_public_address(ipaddress.ip_address(address), STRICT)


@pytest.mark.parametrize(
    "address",
    ["8.8.8.8", "1.1.1.1", "93.184.215.14", "2606:4700:4700::1111", "2a00:1450:4001::200e",
     "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1"],
)  # fmt: skip
def test_public(address: str) -> None:
    assert is_public_address(ipaddress.ip_address(address))


def test_allow_list_in_is_public_address() -> None:
    assert is_public_address(ipaddress.ip_address("127.0.0.5"), LOOPBACK)
    assert is_public_address(ipaddress.ip_address("::ffff:127.0.0.5"), LOOPBACK)
    assert not is_public_address(ipaddress.ip_address("::1"), LOOPBACK)
    assert is_public_address(ipaddress.ip_address("::1"), LOOPBACK_BOTH)
    assert not is_public_address(ipaddress.ip_address("10.0.0.1"), LOOPBACK_BOTH)


# --- check_url with an injected resolver ---------------------------------------------------------


class FakeResolver:
    """Answers from a table and records every question, so no test touches real DNS."""

    def __init__(self, table: dict[str, Sequence[str]]) -> None:
        self.table = table
        self.calls: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> list[IPAddress]:
        self.calls.append((host, port))
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [ipaddress.ip_address(a) for a in self.table[host]]


async def test_hostname_resolving_to_private_is_refused() -> None:
    resolver = FakeResolver({"internal.example.com": ["10.0.0.1"]})
    with pytest.raises(UrlNotAllowed) as info:
        await check_url("https://internal.example.com/hook", STRICT, resolver)
    assert info.value.address == ipaddress.ip_address("10.0.0.1")
    assert "10.0.0.1" not in info.value.message  # internal DNS answers are not echoed to users
    assert resolver.calls == [("internal.example.com", 443)]


@pytest.mark.parametrize(
    "addresses",
    [
        ["8.8.8.8", "10.0.0.1"],
        ["8.8.8.8", "127.0.0.1"],
        ["2606:4700::1111", "::1"],
        ["::ffff:169.254.169.254"],
        ["169.254.169.254"],
        ["100.100.100.200"],
        ["fd00:ec2::254"],
        ["0.0.0.0"],
    ],
)
async def test_any_bad_address_taints_the_host(addresses: list[str]) -> None:
    resolver = FakeResolver({"mixed.example.com": addresses})
    with pytest.raises(UrlNotAllowed):
        await check_url("http://mixed.example.com/", STRICT, resolver)


async def test_public_hostname_passes_and_returns_addresses() -> None:
    resolver = FakeResolver({"hooks.example.com": ["8.8.8.8", "2606:4700:4700::1111"]})
    addresses = await check_url("http://hooks.example.com:8080/cb", STRICT, resolver)
    assert addresses == [ipaddress.ip_address("8.8.8.8"), ipaddress.ip_address("2606:4700:4700::1111")]
    assert resolver.calls == [("hooks.example.com", 8080)]


async def test_idn_is_resolved_as_punycode() -> None:
    resolver = FakeResolver({"xn--exmple-cua.com": ["8.8.8.8"]})
    await check_url("https://exämple.com/a.png", STRICT, resolver)
    assert resolver.calls == [("xn--exmple-cua.com", 443)]


async def test_allow_list_opens_loopback_for_resolved_names() -> None:
    resolver = FakeResolver({"dev.test": ["127.0.0.1"]})
    with pytest.raises(UrlNotAllowed):
        await check_url("http://dev.test:8000/", STRICT, resolver)
    assert await check_url("http://dev.test:8000/", LOOPBACK, resolver) == [ipaddress.ip_address("127.0.0.1")]


@pytest.mark.parametrize("url", ["http://127.0.0.1/", "http://[::1]/", "http://localhost/", "http://127.1/"])
async def test_literals_and_loopback_names_never_reach_the_resolver(url: str) -> None:
    resolver = FakeResolver({})
    with pytest.raises(UrlNotAllowed):
        await check_url(url, STRICT, resolver)
    assert await check_url(url, LOOPBACK_BOTH, resolver)
    assert resolver.calls == []


async def test_syntax_is_checked_before_resolving() -> None:
    resolver = FakeResolver({"example.com": ["8.8.8.8"]})
    with pytest.raises(UrlNotAllowed):
        await check_url("gopher://example.com/", STRICT, resolver)
    with pytest.raises(UrlNotAllowed):
        await check_url("http://user@example.com/", STRICT, resolver)
    assert resolver.calls == []


async def test_unresolvable_host_is_refused() -> None:
    with pytest.raises(HostNotResolved):
        await check_url("https://nowhere.example.com/", STRICT, FakeResolver({}))
    with pytest.raises(UrlNotAllowed):
        await check_url("https://empty.example.com/", STRICT, FakeResolver({"empty.example.com": []}))


async def test_slow_resolver_is_refused() -> None:
    async def slow(host: str, port: int) -> list[IPAddress]:
        await asyncio.sleep(10)
        return [ipaddress.ip_address("8.8.8.8")]

    resolver: Resolver = slow
    with pytest.raises(HostNotResolved, match="timed out"):
        await check_url("https://slow.example.com/", STRICT, resolver, timeout_s=0.05)


async def test_system_resolver_on_numeric_host() -> None:
    # A numeric host is answered by getaddrinfo itself: no DNS traffic.
    assert await system_resolver("127.0.0.1", 80) == [ipaddress.ip_address("127.0.0.1")]
