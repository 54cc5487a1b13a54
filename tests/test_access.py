"""Who may write and which origins may read (deployments/access.py), on ASGI scopes and a small
Starlette app; the same rules through the running service are in test_api.py."""

from __future__ import annotations

import os

import pytest
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.testclient import TestClient

from deployments.access import (
    FORWARDING_HEADERS, ReadCors, check_write, client_host, local_base_url, parse_networks,
)
from lookalike.errors import Forbidden, Unauthorized


def request(client=("127.0.0.1", 5000), **headers) -> Request:
    raw = [(k.replace("_", "-").lower().encode(), v.encode()) for k, v in {"host": "127.0.0.1:8000", **headers}.items()]
    return Request({"type": "http", "method": "POST", "path": "/api/v1/images", "headers": raw, "client": client,
                    "query_string": b""})


def test_without_a_key_writes_come_only_from_this_machine():
    check_write(request(), "")  # loopback, no Origin: the CLI or curl on this machine
    check_write(request(client=("::1", 5000)), "")
    check_write(request(origin="http://127.0.0.1:8000", sec_fetch_site="same-origin"), "")  # the service's own page
    for peer in (("10.0.0.7", 5000), ("203.0.113.9", 5000), ("testclient", 50000)):
        with pytest.raises(Forbidden) as err:
            check_write(request(client=peer), "")
        assert err.value.code == "api_key_required"
    with pytest.raises(Forbidden):  # a proxy on this machine forwarding someone else
        check_write(request(x_forwarded_for="203.0.113.9"), "")


@pytest.mark.parametrize("header", FORWARDING_HEADERS)
def test_without_trusted_proxies_any_forwarding_header_makes_a_keyless_write_foreign(header):
    """nginx is often set to send only X-Real-IP: from a loopback peer that must not pass."""
    value = "for=203.0.113.9" if header == "forwarded" else "203.0.113.9"
    with pytest.raises(Forbidden) as err:
        check_write(request(**{header.replace("-", "_"): value}), "")
    assert err.value.code == "api_key_required"
    with pytest.raises(Forbidden):  # even naming this machine: nobody is trusted to say so
        check_write(request(**{header.replace("-", "_"): value.replace("203.0.113.9", "127.0.0.1")}), "")


@pytest.mark.parametrize("header", FORWARDING_HEADERS)
def test_an_empty_forwarding_header_still_makes_a_keyless_write_foreign(header):
    """An empty ``X-Forwarded-For:`` is still a proxy's (or a client's) word about the sender."""
    with pytest.raises(Forbidden) as err:
        check_write(request(**{header.replace("-", "_"): ""}), "")
    assert err.value.code == "api_key_required"
    assert client_host(request(**{header.replace("-", "_"): " "}), parse_networks(["127.0.0.1"])) is None


@pytest.mark.parametrize("host, want", [
    ("127.0.0.1:8000", "http://127.0.0.1:8000"), ("localhost:8000", "http://localhost:8000"),
    ("[::1]:8000", "http://[::1]:8000"), ("127.0.0.1", "http://127.0.0.1"),
    ("evil.example", ""), ("localhost.evil.example:8000", ""), ("127.0.0.1@evil.example", ""),
    ("10.0.0.1:8000", ""), ("127.0.0.1:notaport", ""),
])
def test_a_base_url_comes_from_the_host_header_only_when_it_names_this_machine(host, want):
    assert local_base_url(request(host=host)) == want


def test_the_original_routes_absolute_urls_start_with_the_public_url():
    from types import SimpleNamespace

    from deployments.original_routes import _absolute
    from lookalike.settings import ApiSettings

    def absolute(public_url: str, host: str) -> str:
        service = SimpleNamespace(settings=SimpleNamespace(api=ApiSettings(public_url=public_url)))
        return _absolute(service, request(host=host), "/images/a.png")

    assert absolute("https://search.example.com/", "evil.example") == "https://search.example.com/images/a.png"
    assert absolute("", "127.0.0.1:8000") == "http://127.0.0.1:8000/images/a.png"
    assert absolute("", "evil.example") == "/images/a.png"
    for bad in ("search.example.com", "ftp://x", "https://x/?q=1", "https://"):
        with pytest.raises(ValueError, match="api.public_url"):
            ApiSettings(public_url=bad)


def test_a_trusted_proxy_names_the_client():
    trusted = parse_networks(["127.0.0.1", "10.0.0.0/8"])
    proxy = ("10.1.2.3", 443)
    assert str(client_host(request(client=proxy, x_real_ip="203.0.113.9"), trusted)) == "203.0.113.9"
    # A client's own X-Forwarded-For is kept by proxies: the right-most untrusted hop is the sender.
    spoofed = request(client=proxy, x_forwarded_for="127.0.0.1, 203.0.113.9, 10.0.0.2")
    assert str(client_host(spoofed, trusted)) == "203.0.113.9"
    with pytest.raises(Forbidden):
        check_write(spoofed, "", trusted=trusted)
    assert str(client_host(request(client=proxy, forwarded='for="[2001:db8::1]:4711";proto=https'),
                           trusted)) == "2001:db8::1"
    # Through a trusted proxy on this machine, a client on this machine may write without a key.
    check_write(request(x_forwarded_for="127.0.0.1"), "", trusted=trusted)
    check_write(request(client=proxy, x_real_ip="::1"), "", trusted=trusted)
    # An untrusted peer's headers are not believed; a trusted one that names garbage is refused.
    assert client_host(request(client=("203.0.113.7", 1), x_real_ip="127.0.0.1"), trusted) is None
    assert client_host(request(client=proxy, x_forwarded_for="unknown"), trusted) is None
    with pytest.raises(ValueError):
        parse_networks(["not-an-address"])


@pytest.mark.parametrize("headers", [
    {"origin": "http://evil.example"}, {"origin": "null"}, {"sec_fetch_site": "cross-site"},
    {"sec_fetch_site": "same-site"}, {"origin": "http://127.0.0.1:9999"},
])
def test_without_a_key_a_cross_site_write_is_refused(headers):
    with pytest.raises(Forbidden) as err:
        check_write(request(**headers), "")
    assert err.value.code == "cross_site"


def test_with_a_key_only_the_key_counts():
    check_write(request(client=("203.0.113.9", 1), authorization="Bearer s3cret"), "s3cret")
    check_write(request(origin="http://other.example", x_api_key="s3cret"), "s3cret")  # the key is the proof
    check_write(request(), "s3cret", body_key="s3cret")  # the original routes' JSON key
    for headers in ({}, {"authorization": "Bearer wrong"}, {"x_api_key": "s3cre"}, {"authorization": "Bearer "}):
        with pytest.raises(Unauthorized):
            check_write(request(**headers), "s3cret")


def _app(origins):
    """Routes as the service declares them: a write declares the API key (its write check); the
    page is not in the schema."""
    from fastapi import Depends, FastAPI

    from deployments.access import WritePolicy, writer

    app = FastAPI()
    app.state.write_policy = WritePolicy()  # no key: the test client is no local peer, writes are refused

    async def ok():
        return PlainTextResponse("ok")

    app.post("/api/v1/search", tags=["search"])(ok)
    app.get("/api/v1/images", tags=["library"])(ok)
    app.post("/api/v1/images", tags=["library"], dependencies=[Depends(writer)])(ok)
    app.post("/api/v1/index", tags=["library"], dependencies=[Depends(writer)])(ok)
    app.get("/status/", tags=["the original's routes"])(ok)
    app.get("/healthz", tags=["service"])(ok)
    app.get("/", include_in_schema=False)(ok)
    return TestClient(ReadCors(app, origins), raise_server_exceptions=False)


def test_cors_on_read_routes_only_and_never_with_credentials():
    client = _app(["*"])
    read = client.post("/api/v1/search", headers={"Origin": "http://front.example"})
    assert read.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in read.headers
    for path in ("/status/", "/healthz"):  # a front end on another origin checks the service is up
        assert client.get(path, headers={"Origin": "http://front.example"}).headers[
            "access-control-allow-origin"] == "*", path
    pre = client.options("/api/v1/search", headers={"Origin": "http://front.example",
                                                    "Access-Control-Request-Method": "POST"})
    assert pre.status_code == 204 and pre.headers["access-control-allow-methods"] == "POST"
    for method, path in (("POST", "/api/v1/images"), ("POST", "/api/v1/index"), ("DELETE", "/api/v1/images")):
        pre = client.options(path, headers={"Origin": "http://front.example", "Access-Control-Request-Method": method})
        assert pre.status_code == 403 and "access-control-allow-origin" not in pre.headers, (method, path)
    write = client.post("/api/v1/images", headers={"Origin": "http://front.example"})
    assert "access-control-allow-origin" not in write.headers
    assert "access-control-allow-origin" in client.get("/api/v1/images", headers={"Origin": "http://x"}).headers
    assert "access-control-allow-origin" not in client.get("/", headers={"Origin": "http://x"}).headers


def test_cors_for_listed_origins():
    client = _app(["http://front.example"])
    ok = client.post("/api/v1/search", headers={"Origin": "http://front.example"})
    assert ok.headers["access-control-allow-origin"] == "http://front.example" and ok.headers["vary"] == "Origin"
    other = client.post("/api/v1/search", headers={"Origin": "http://other.example"})
    assert "access-control-allow-origin" not in other.headers
    assert "access-control-allow-origin" not in _app([]).post("/api/v1/search", headers={"Origin": "http://x"}).headers


def test_lookalike_serve_refuses_a_non_loopback_host_without_a_key(tmp_path, monkeypatch, capsys):
    import yaml

    from lookalike import cli
    from lookalike.cli import processes

    started = []
    monkeypatch.setattr(processes.subprocess, "Popen", lambda *a, **k: started.append(a))  # never reached
    config = tmp_path / "serve.yaml"
    for host, key, refused in (("0.0.0.0", "", True), ("10.1.2.3", "", True), ("0.0.0.0", "k3y", False),
                               ("127.0.0.1", "", False), ("::1", "", False)):
        config.write_text(yaml.safe_dump({"http_options": {"host": host, "port": 8000}}))
        monkeypatch.setenv("LOOKALIKE_API__API_KEY", key)
        settings = cli.load_settings()
        reason = processes.open_writes_refusal(str(config), settings)
        assert (reason is not None) == refused, host
        if refused:
            assert cli.main(["serve", "--serve-config", str(config)]) == 2
            assert "no API key is set" in capsys.readouterr().err and not started
    # --http-host (a container) is the same check on the address given instead of the file's.
    config.write_text(yaml.safe_dump({"http_options": {"host": "127.0.0.1", "port": 8000}}))
    monkeypatch.setenv("LOOKALIKE_API__API_KEY", "")
    assert cli.main(["serve", "--serve-config", str(config), "--http-host", "0.0.0.0"]) == 2
    assert "--http-host" in capsys.readouterr().err and not started
    copy = processes.serve_config_with_host(str(config), "0.0.0.0")
    assert yaml.safe_load(open(copy))["http_options"] == {"host": "0.0.0.0", "port": 8000}
    os.unlink(copy)
