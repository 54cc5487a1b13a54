"""Who may write, and which browsers may read from other origins.

Writes (add, delete, index; the original's /insert/ and /indexing/):
- with ``api.api_key`` set, only with that key (``Authorization: Bearer``, ``X-API-Key``, or
  the original routes' JSON ``key``), compared in constant time; a valid key is allowed from
  anywhere, a page on another site included (the key is the proof);
- without a key, only from this machine and never from another site's page: a cross-site
  request forgery is refused by its ``Sec-Fetch-Site`` or ``Origin`` header. A fresh install
  therefore exposes no write to the network.

Who sent a request (``client_host``): the TCP peer, unless the peer is one of
``api.trusted_proxies`` (addresses or networks, as uvicorn's ``forwarded_allow_ips``); then the
address that proxy forwards (``Forwarded: for=``, ``X-Forwarded-For``, ``X-Real-IP``: the
right-most address that is not itself a trusted proxy, or the first if all are). A forwarding
header (any of ``FORWARDING_HEADERS``) from a peer that is not a trusted proxy makes the sender
unknown: a proxy on this machine would otherwise make every client look local.

Reads are open; ``ReadCors`` lets the configured origins' pages call them (never with
credentials). A preflight for any other route gets no CORS headers, so browsers refuse it.
Which routes are reads is read off the routes themselves: a write route declares the API key
(``BEARER``, ``API_KEY_HEADER``: ``writer``, the original routes' key checks), so /openapi.json
and /docs show it as one; every other route of the schema is a read.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from fastapi import Security
from fastapi.security import APIKeyHeader, HTTPBearer
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import compile_path

from lookalike.errors import Forbidden, LookalikeError, Unauthorized

def presented_key(request: Request, body_key: str | None = None) -> str:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.headers.get("x-api-key", "") or (body_key or "")


def key_matches(given: str, expected: str) -> bool:
    return bool(given) and hmac.compare_digest(given.encode(), expected.encode())


# Headers by which a proxy (or a client pretending to be one) names another sender.
FORWARDING_HEADERS = ("forwarded", "x-forwarded-for", "x-real-ip", "x-client-ip", "true-client-ip",
                      "cf-connecting-ip", "fastly-client-ip", "x-cluster-client-ip", "x-original-forwarded-for",
                      "client-ip")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(entries: list[str]) -> tuple[Network, ...]:
    """Addresses and CIDR networks (ValueError names a bad entry)."""
    return tuple(ipaddress.ip_network(entry.strip(), strict=False) for entry in entries)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip().strip('"')
    if text.startswith("["):  # [v6]:port
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:  # v4:port
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None  # "unknown", an obfuscated name, garbage
    return getattr(address, "ipv4_mapped", None) or address


def _forwarded_chain(request: Request) -> list[str]:
    """The addresses a proxy says the request passed through, the client first."""
    if forwarded := request.headers.get("forwarded"):
        return [part.strip()[4:] for element in forwarded.split(",") for part in element.split(";")
                if part.strip().lower().startswith("for=")]
    if xff := request.headers.get("x-forwarded-for"):
        return [part for part in xff.split(",")]
    if real := request.headers.get("x-real-ip"):
        return [real]
    return []


def client_host(request: Request, trusted: tuple[Network, ...] = ()):
    """Who sent the request (an ip_address), or None when it cannot be told."""
    peer = _address(request.client.host) if request.client else None
    forwarded = any(name in request.headers for name in FORWARDING_HEADERS)  # empty counts: it was sent
    if peer is None or not forwarded:
        return peer
    if not any(peer in net for net in trusted):
        return None  # forwarded by someone we do not trust to say so
    chain = [_address(hop) for hop in _forwarded_chain(request)]
    if not chain or None in chain:
        return None  # a trusted proxy that named nobody we can check
    for address in reversed(chain):
        if not any(address in net for net in trusted):
            return address
    return chain[0]  # every hop a trusted proxy: the first one sent it


def is_local_client(request: Request, trusted: tuple[Network, ...] = ()) -> bool:
    host = client_host(request, trusted)
    return host is not None and host.is_loopback


def local_base_url(request: Request) -> str:
    """The address the request was sent to (scheme, Host, root path) when its host is this
    machine (localhost or a loopback address), else "": a Host header is the client's word."""
    url = request.url
    try:
        host, port = url.hostname or "", url.port
    except ValueError:  # a port that is no number
        return ""
    address = _address(f"[{host}]" if ":" in host else host)
    if host.lower() != "localhost" and not (address and address.is_loopback):
        return ""
    netloc = (f"[{host}]" if ":" in host else host) + (f":{port}" if port else "")
    return f"{url.scheme}://{netloc}{request.scope.get('root_path', '')}".rstrip("/")


def is_cross_site(request: Request) -> bool:
    """A browser request made by another site's page (CSRF): Sec-Fetch-Site says so, or the
    Origin differs from the host the request was sent to."""
    if request.headers.get("sec-fetch-site", "").lower() in ("cross-site", "same-site"):
        return True
    origin = request.headers.get("origin")
    if origin is None:
        return False
    return origin == "null" or urlsplit(origin).netloc.lower() != request.headers.get("host", "").lower()


def check_write(request: Request, api_key: str, body_key: str | None = None,
                trusted: tuple[Network, ...] = ()) -> None:
    if api_key:
        if not key_matches(presented_key(request, body_key), api_key):
            raise Unauthorized("this route needs the API key (Authorization: Bearer <key> or X-API-Key)")
        return
    if not is_local_client(request, trusted):
        raise Forbidden("writes need an API key on this server (set api.api_key); without one they are "
                        "taken only from this machine, and not through a proxy unless it is one of "
                        "api.trusted_proxies", code="api_key_required")
    if is_cross_site(request):
        raise Forbidden("a write from another site's page is refused (cross-site request)", code="cross_site")


@dataclass(frozen=True)
class WritePolicy:
    """The server's write rule: its API key (empty: none) and the proxies it trusts."""

    api_key: str = field(default="", repr=False)  # never in a log line or a traceback
    trusted: tuple[Network, ...] = ()

    def check(self, request: Request, body_key: str | None = None) -> None:
        check_write(request, self.api_key, body_key, self.trusted)

    def allows(self, request: Request) -> bool:
        """May this request write (and so see what operators see)?"""
        try:
            self.check(request)
        except LookalikeError:
            return False
        return True


# The API key as the schema shows it (/docs' "Authorize"): a route that declares them is a write.
BEARER = HTTPBearer(auto_error=False, description="the API key, when the server has one")
API_KEY_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False, description="the API key, as a header")


async def writer(request: Request, _bearer=Security(BEARER), _header=Security(API_KEY_HEADER)) -> None:
    """The dependency of the write routes: refused before the body is read. The policy is the
    application's (``app.state.write_policy``, set from the settings when the ingress starts)."""
    request.app.state.write_policy.check(request)


def read_routes(app) -> list[tuple[str, re.Pattern]]:
    """(method, path pattern) of the routes other origins' pages may call, read off the app's own
    schema: every operation that asks for no credentials (HEAD with GET). The pages and their
    files are not in the schema, so not among them."""
    cached = getattr(app.state, "read_routes", None)
    if cached is None:
        cached = []
        for path, item in app.openapi()["paths"].items():
            # The schema shows {key:path} as {key}: a last parameter may hold slashes (a store's key).
            pattern = compile_path(re.sub(r"\{(\w+)\}$", r"{\1:path}", path))[0]
            for method, operation in item.items():
                if "security" not in operation:
                    cached += [(m, pattern) for m in ((method.upper(), "HEAD") if method == "get" else (method.upper(),))]
        app.state.read_routes = cached
    return cached


def _read_route(app, method: str, path: str) -> bool:
    return any(m == method and pattern.match(path) for m, pattern in read_routes(app))


class ReadCors:
    """CORS for the read routes only, for the configured origins, without credentials.
    ``origins``: a list, or None to read ``app.state.cors_origins`` of the application serving
    the request (set from the settings when the ingress starts; unset: no CORS)."""

    def __init__(self, app, origins: list[str] | None = None):
        self.app = app
        self.origins = origins

    def _allow(self, scope, origin: str) -> str | None:
        origins = self.origins
        if origins is None:
            origins = getattr(getattr(scope.get("app"), "state", None), "cors_origins", [])
        if "*" in origins:
            return "*"
        return origin if origin in origins else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or []}
        path, root = scope["path"], scope.get("root_path", "")
        if root and path.startswith(root):  # an application under a route prefix (/s3/...)
            path = path[len(root):] or "/"
        origin, method, app = headers.get("origin"), scope["method"], scope.get("app", self.app)
        if origin and method == "OPTIONS" and "access-control-request-method" in headers:
            wanted = headers["access-control-request-method"].upper()
            allowed = self._allow(scope, origin) if _read_route(app, wanted, path) else None
            response = Response(status_code=204 if allowed else 403)
            if allowed:
                response.headers.update({
                    "Access-Control-Allow-Origin": allowed, "Access-Control-Allow-Methods": wanted,
                    "Access-Control-Allow-Headers": "Content-Type, X-Request-ID", "Access-Control-Max-Age": "600"})
                if allowed != "*":
                    response.headers["Vary"] = "Origin"
            return await response(scope, receive, send)
        allowed = self._allow(scope, origin) if origin and _read_route(app, method, path) else None
        if allowed is None:
            return await self.app(scope, receive, send)
        extra = [(b"access-control-allow-origin", allowed.encode()),
                 (b"access-control-expose-headers", b"Server-Timing, X-Request-ID")]
        if allowed != "*":
            extra.append((b"vary", b"Origin"))

        async def send_with_cors(message):
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + extra
            await send(message)

        await self.app(scope, receive, send_with_cors)
