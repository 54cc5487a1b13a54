"""URL fetching that cannot be turned inwards (lookalike/storage/url_fetch.py).

Refusals are tested where no connection is needed (the address is refused before any is made);
allowed fetches go to a loopback server put on the allow-list. No traffic leaves the machine.
"""

from __future__ import annotations

import asyncio
import ipaddress
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from lookalike.storage import url_fetch
from lookalike.errors import TooLarge
from lookalike.storage.url_fetch import FAILED, AllowList, FetchFailed, InvalidUrl, fetch, is_public

from harness.servers import HOST

LOOPBACK = AllowList.parse(["127.0.0.1/32"])
IMAGE = b"\x89PNG\r\n\x1a\n" + b"x" * 1000


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802
        seen.append((self.path, self.headers.get("Host")))
        if self.path == "/img":
            self._send(200, IMAGE)
        elif self.path.startswith("/to/"):  # /to/<absolute or relative location>
            self.send_response(302)
            self.send_header("Location", self.path[len("/to/"):])
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/loop":
            self.send_response(301)
            self.send_header("Location", "/loop")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/drip":  # one byte every 0.3 s, for ever
            self.send_response(200)
            self.send_header("Content-Length", "1000000")
            self.end_headers()
            try:
                for _ in range(100):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.3)
            except OSError:
                pass
        else:
            self._send(404, b"no")

    def _send(self, status, body):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


seen: list[tuple[str, str]] = []


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer((HOST, 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://{HOST}:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def get(url, allow=AllowList(), timeout_s=5.0, max_bytes=1_000_000):
    return asyncio.run(fetch(url, max_bytes=max_bytes, timeout_s=timeout_s, allow=allow))


@pytest.mark.parametrize("address", [
    "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
    "224.0.0.1", "240.0.0.1", "255.255.255.255", "192.0.2.1", "::1", "::", "fe80::1", "fc00::1", "ff02::1",
    "::ffff:127.0.0.1", "::ffff:169.254.169.254", "2002:7f00:1::", "64:ff9b::a9fe:a9fe",
])
def test_non_public_addresses_are_refused(address):
    assert not is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_pass(address):
    assert is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("url", [
    "http://127.0.0.1/", "http://localhost/", "http://LOCALHOST./", "http://0.0.0.0/", "http://2130706433/",
    "http://0x7f000001/", "http://0177.0.0.1/", "http://127.1/", "http://[::1]/", "http://[::ffff:127.0.0.1]/",
    "http://169.254.169.254/latest/meta-data/", "http://10.0.0.1:8265/api/jobs/", "http://[fd00::1]:80/",
    "https://127.0.0.1:8443/",
])
def test_every_spelling_of_an_inward_address_is_refused_without_connecting(url, monkeypatch):
    import httpx

    async def no_connection(*args, **kwargs):
        raise AssertionError("a refused address was connected to")

    monkeypatch.setattr(httpx.AsyncClient, "send", no_connection)
    with pytest.raises(FetchFailed) as err:
        get(url)
    assert err.value.message == FAILED and err.value.status == 400


@pytest.mark.parametrize("url", ["http://[::1", "file:///etc/passwd", "ftp://example.org/a.png", "http://",
                                 "http:///path", "//example.org/a.png", "http://exa mple.org/", "http://a:99999/",
                                 "http://user:pw@example.org/", "javascript:alert(1)", "http://a\r\nb/", ""])
def test_malformed_urls_are_a_400_before_any_lookup(url, monkeypatch):
    async def no_lookup(*args, **kwargs):
        raise AssertionError("a malformed URL was resolved")

    monkeypatch.setattr(url_fetch, "resolve_checked", no_lookup)
    with pytest.raises(InvalidUrl) as err:
        get(url)
    assert err.value.status == 400


def test_an_allow_listed_loopback_server_is_fetched_by_its_checked_address(server):
    seen.clear()
    assert get(f"{server}/img", LOOPBACK) == IMAGE
    port = server.rsplit(":", 1)[1]
    assert seen == [("/img", f"{HOST}:{port}")]  # the Host header keeps the name the user gave


def test_allow_list_by_host_name(server):
    port = server.rsplit(":", 1)[1]
    assert get(f"http://localhost:{port}/img", AllowList.parse(["localhost"])) == IMAGE
    with pytest.raises(FetchFailed):  # the name is allowed, not every loopback spelling of it
        get(f"http://127.0.0.1:{port}/img", AllowList.parse(["localhost"]))


def test_a_refused_address_and_a_closed_port_answer_the_same(server):
    from harness.servers import free_port

    closed = free_port()
    with pytest.raises(FetchFailed) as refused:
        get(f"http://127.0.0.1:{closed}/img")  # not allowed
    with pytest.raises(FetchFailed) as unreachable:
        get(f"http://127.0.0.1:{closed}/img", LOOPBACK)  # allowed, nothing listens
    assert refused.value.to_dict() == unreachable.value.to_dict()


def test_every_redirect_hop_is_checked_again(server):
    port = int(server.rsplit(":", 1)[1])
    assert get(f"{server}/to//img", LOOPBACK) == IMAGE  # a relative hop, allowed
    seen.clear()
    with pytest.raises(FetchFailed) as err:  # a hop to another loopback address, not on the list
        get(f"{server}/to/http://127.0.0.2:{port}/img", LOOPBACK)
    assert err.value.message == FAILED and seen == [(f"/to/http://127.0.0.2:{port}/img", f"{HOST}:{port}")]
    seen.clear()
    by_name = AllowList.parse(["localhost"])  # the name is allowed; a hop to 127.0.0.1 by address is not
    with pytest.raises(FetchFailed):
        get(f"http://localhost:{port}/to/http://{HOST}:{port}/img", by_name)
    assert [path for path, _ in seen] == [f"/to/http://{HOST}:{port}/img"]  # the second hop was never made
    with pytest.raises(FetchFailed, match="redirects more than 3"):
        get(f"{server}/loop", LOOPBACK)


def test_one_deadline_for_the_whole_fetch(server):
    started = time.monotonic()
    with pytest.raises(FetchFailed, match="longer than 1 s"):
        get(f"{server}/drip", LOOPBACK, timeout_s=1.0)  # each read is quick; the whole is not
    assert time.monotonic() - started < 2.0


def test_size_limit_and_http_errors(server):
    with pytest.raises(TooLarge):
        get(f"{server}/img", LOOPBACK, max_bytes=100)
    with pytest.raises(FetchFailed, match="HTTP 404"):
        get(f"{server}/missing", LOOPBACK)
