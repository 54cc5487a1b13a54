"""Fetching an image by URL without becoming a proxy into the server's own network (SSRF).

Each hop of a fetch: parse the URL (http/https, a host, a valid port), resolve the host once,
refuse it unless every address it resolves to is public (or on the allow-list), then connect
to the address that was checked (the Host header and TLS SNI / certificate check keep the
name), so DNS cannot answer differently between the check and the connection. Redirects are
followed by hand, each hop checked again, at most ``max_redirects``. One deadline covers the
whole fetch, however slowly the other side sends. A refused address, a closed port and a
failed connection give the same answer, so the API cannot be used to map a network.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from typing import AsyncIterator
from urllib.parse import urljoin, urlsplit

from lookalike.errors import BadRequest, TooLarge

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
REDIRECTS = (301, 302, 303, 307, 308)
FAILED = "cannot fetch the image at that URL"  # the one answer for refused, closed and unreachable


class FetchFailed(BadRequest):
    code = "url_fetch_failed"


class InvalidUrl(BadRequest):
    code = "invalid_url"


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries: mapped (::ffff:a.b.c.d), 6to4, Teredo, NAT64."""
    if ip.ipv4_mapped:
        return ip.ipv4_mapped
    if ip.sixtofour:
        return ip.sixtofour
    if ip.teredo:
        return ip.teredo[1]
    if ip in ipaddress.IPv6Network("64:ff9b::/96"):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_public(ip: Address) -> bool:
    """A globally routable unicast address: not loopback, private, link-local (cloud metadata),
    CGNAT, multicast, reserved, unspecified, documentation or benchmarking space, in IPv4 or
    IPv6, nor an IPv6 address that embeds such an IPv4 one."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped:  # the socket would reach the IPv4 address itself
            return is_public(ip.ipv4_mapped)
        inner = _embedded_ipv4(ip)
        if inner is not None and not is_public(inner):
            return False
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_unspecified or ip.is_loopback
                                 or ip.is_link_local or ip.is_private)


@dataclass(frozen=True)
class AllowList:
    """Hosts and networks an internal deployment may fetch from although they are not public."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    @classmethod
    def parse(cls, entries: list[str]) -> "AllowList":
        hosts, networks = set(), []
        for entry in entries:
            try:
                networks.append(ipaddress.ip_network(entry.strip(), strict=False))
            except ValueError:
                hosts.add(entry.strip().lower().rstrip("."))
        return cls(frozenset(hosts), tuple(networks))

    def allows(self, host: str, ip: Address) -> bool:
        return host in self.hosts or any(ip in net for net in self.networks if net.version == ip.version)


@dataclass(frozen=True)
class Target:
    url: str
    scheme: str
    host: str  # lower case, no brackets, no trailing dot
    port: int
    path: str  # path + query, what goes on the request line


def parse_url(url: str) -> Target:
    """An absolute http(s) URL with a host, or InvalidUrl (400) saying what is wrong."""
    if not isinstance(url, str) or len(url) > 4096 or any(c in url for c in "\r\n\t\x00 "):
        raise InvalidUrl("'url' must be an http:// or https:// URL")
    try:
        parts = urlsplit(url)
        port = parts.port
        host = parts.hostname
    except ValueError:
        raise InvalidUrl("'url' is not a valid URL") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise InvalidUrl("'url' must be an http:// or https:// URL")
    if not host:
        raise InvalidUrl("'url' has no host")
    if parts.username is not None or parts.password is not None:
        raise InvalidUrl("'url' must not carry a user name or password")
    scheme = parts.scheme.lower()
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(url, scheme, host.lower().rstrip("."), port or (443 if scheme == "https" else 80), path)


async def resolve_checked(target: Target, allow: AllowList) -> Address:
    """The address to connect to: the host resolved once, every answer checked. Any refused
    address refuses the host (a name with one public and one private answer is not safe)."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise FetchFailed(FAILED) from None
    addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    if not addresses or not all(is_public(ip) or allow.allows(target.host, ip) for ip in addresses):
        raise FetchFailed(FAILED)
    return addresses[0]


async def read_capped(chunks: AsyncIterator[bytes], limit: int, what: str) -> bytes:
    """Join a byte stream, refusing (413) as soon as it grows past ``limit`` (also the ingress's
    request bodies)."""
    parts, size = [], 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"{what} exceeds the limit of {limit} bytes")
        parts.append(chunk)
    return b"".join(parts)


async def fetch(url: str, *, max_bytes: int, timeout_s: float, allow: AllowList = AllowList(),
                max_redirects: int = 3) -> bytes:
    """GET the bytes at ``url`` under the rules above. Errors: InvalidUrl (a malformed
    URL, 400), FetchFailed (400), TooLarge (413)."""
    import httpx

    try:
        async with asyncio.timeout(timeout_s):
            async with httpx.AsyncClient(follow_redirects=False, trust_env=False, timeout=timeout_s) as client:
                for _ in range(max_redirects + 1):
                    target = parse_url(url)
                    ip = await resolve_checked(target, allow)
                    netloc = f"[{ip}]" if ip.version == 6 else str(ip)
                    name = f"[{target.host}]" if ":" in target.host else target.host  # IPv6 in brackets
                    default = {"http": 80, "https": 443}[target.scheme]
                    host_header = name if target.port == default else f"{name}:{target.port}"
                    request = client.build_request(
                        "GET", f"{target.scheme}://{netloc}:{target.port}{target.path}",
                        headers={"Host": host_header, "Accept": "image/*"},
                        extensions={"sni_hostname": target.host} if target.scheme == "https" else {})
                    response = await client.send(request, stream=True)
                    try:
                        if response.status_code in REDIRECTS and response.headers.get("location"):
                            url = urljoin(url, response.headers["location"])
                            continue
                        if response.status_code != 200:
                            raise FetchFailed(f"fetching the URL returned HTTP {response.status_code}")
                        return await read_capped(response.aiter_bytes(), max_bytes, "the image at the URL")
                    finally:
                        await response.aclose()
                raise FetchFailed(f"the URL redirects more than {max_redirects} times")
    except TimeoutError:
        raise FetchFailed(f"fetching the URL took longer than {timeout_s:g} s") from None
    except httpx.HTTPError:
        raise FetchFailed(FAILED) from None
