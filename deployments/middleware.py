"""One ASGI middleware in front of every route: the request id, the security headers, and HEAD.

The request id is Ray Serve's: its proxy takes the client's ``X-Request-ID`` or makes one, puts
it in the request's headers and the answer's, and logs it on its access line. This middleware
hands it to the routes (``request_id(scope)``), so every error body (``error.request_id``) and
the log line an error writes carry the same id; outside Serve (a test client) it makes one. The
headers keep the web page from being framed, sniffed or leaking its address, and let it load
scripts only from itself. HEAD is answered for every GET route (RFC 9110 asks it of every
server; uptime checks and ``curl -I`` send it) as GET with its headers and without its body:
FastAPI's routes take only the methods they declare, so without this each was a 405.
"""

from __future__ import annotations

import uuid

REQUEST_ID = b"x-request-id"
SECURITY_HEADERS = {
    # Scripts, styles and fetches from this origin only; result images may come from an object
    # store elsewhere (img-src); never inside another site's frame.
    "content-security-policy": "default-src 'self'; img-src 'self' data: blob: http: https:; object-src 'none'; "
                               "base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}


def request_id(scope) -> str:
    return scope.get("state", {}).get("request_id", "")


class RequestContext:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rid = dict(scope.get("headers") or []).get(REQUEST_ID, b"").decode("latin-1")[:200]
        extra = [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
        if not rid:  # not behind Serve's proxy
            rid = str(uuid.uuid4())
            extra.append((REQUEST_ID, rid.encode()))
        scope.setdefault("state", {})["request_id"] = rid
        head = scope["method"] == "HEAD"
        if head:
            scope = {**scope, "method": "GET"}

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [kv for kv in extra if kv[0] not in present]
            elif head and message["type"] == "http.response.body":  # GET's headers, Content-Length too
                message = {**message, "body": b""}
            await send(message)

        await self.app(scope, receive, send_with_headers)
