"""The HTTP API through Serve's proxy: a real Ray cluster, the real model, Milvus Lite, the
local store (app "main") and an S3 server with a Milvus that the tests stop (app "s3")."""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from harness.processes import own_processes
from harness.servers import wait_until
from lookalike import machine
from lookalike.embedding.images import content_id
from lookalike.milvus.lite_server import LiteServer

from harness.images import collage, draw, encode, png_with_size, truncated_jpeg


STRIP = encode(Image.new("L", (100_000, 8), 0), "PNG")  # a few KB; 100000x8 pixels


def _file(app, label, i=0):
    return app.gallery[label][i]


def _search(client, data: bytes, name="q.png", **params):
    return client.post("/api/v1/search", files={"image": (name, data, "image/png")}, params=params)


@pytest.fixture(scope="module")
def client(api):
    with api.client() as c:
        yield c


@pytest.fixture(scope="module")
def anon(api):
    with httpx.Client(base_url=api.url, timeout=60) as c:
        yield c


# -- searching -------------------------------------------------------------------------------
@pytest.mark.parametrize("label, i", [("circles", 0), ("stripes", 3), ("rings", 4), ("checkers", 1)])
def test_search_returns_the_query_image_first_with_a_working_url(api, anon, label, i):
    path = _file(api, label, i)
    data = path.read_bytes()
    r = _search(anon, data, k=5)
    assert r.status_code == 200, r.text
    body = r.json()
    first = body["results"][0]
    assert first["id"] == str(content_id(data)) and first["label"] == label and first["source"] == path.name
    assert first["score"] == pytest.approx(1.0, abs=1e-3) and len(body["results"]) == 5
    assert [h["label"] for h in body["results"][:3]] == [label] * 3  # its class-mates come next
    image = anon.get(first["url"])
    assert image.status_code == 200 and image.content == data
    assert set(body["timings"]) >= {"decode_ms", "embed_ms", "search_ms", "total_ms"}
    timing = r.headers["server-timing"]
    assert "decode;dur=" in timing and "embed;dur=" in timing and "search;dur=" in timing


def test_the_service_and_the_in_process_query_path_answer_alike(api, anon, encoder):
    """One query path (lookalike/query.py): over the deployments' handles, and in this process
    over the encoder and the catalog (as lookalike search and eval run it), the same answer."""
    from lookalike import query
    from lookalike.milvus.engines import gallery_catalog
    from lookalike.storage.store import make_store

    data = _file(api, "rings", 2).read_bytes()
    catalog = gallery_catalog(api.settings)
    try:
        path = query.local(encoder, catalog, make_store(api.settings.store), api.settings.images)
        local = query.run(path.by_image(data, query.Query(6, min_score=0.3))).hits
    finally:
        catalog.close()
    served = _search(anon, data, k=6, min_score=0.3).json()["results"]
    assert [str(h["id"]) for h in local] == [h["id"] for h in served] and len(served) >= 3
    assert [h["url"] for h in local] == [h["url"] for h in served]
    assert np.allclose([h["score"] for h in local], [h["score"] for h in served], atol=1e-4)


def test_search_by_json_base64_data_url_raw_body_and_url(api, anon):
    path = _file(api, "triangles", 2)
    data = path.read_bytes()
    want = str(content_id(data))
    b64 = base64.b64encode(data).decode()
    responses = [
        anon.post("/api/v1/search", json={"image": b64, "k": 2}),
        anon.post("/api/v1/search", json={"image": f"data:image/jpeg;base64,{b64}"}),
        anon.post("/api/v1/search?k=2", content=data, headers={"content-type": "image/jpeg"}),
    ]
    stored_url = api.url + responses[0].json()["results"][0]["url"]
    responses.append(anon.post("/api/v1/search", json={"url": stored_url}))
    for r in responses:
        assert r.status_code == 200, r.text
        assert r.json()["results"][0]["id"] == want
    assert len(responses[0].json()["results"]) == 2
    assert "fetch_ms" in responses[3].json()["timings"]


def test_k_default_and_bounds(api, anon):
    data = _file(api, "squares").read_bytes()
    assert len(_search(anon, data).json()["results"]) == api.settings.api.top_k_default
    assert len(_search(anon, data, k=30).json()["results"]) == 30
    for bad in (0, 101, "abc", 2.5):
        r = _search(anon, data, k=bad)
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_parameter", bad
    b64 = base64.b64encode(data).decode()
    for field, bad in (("k", True), ("k", 0), ("min_score", False), ("k", "true")):
        r = anon.post("/api/v1/search", json={"image": b64, field: bad})
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_parameter", (field, bad)
    for topk in (0, -1, 101, True):  # the original's route: 0 is no more "the default" than -1 is
        r = anon.post("/search/", json={"image": b64, "topk": topk})
        assert r.status_code == 422 and r.json()["ok"] is False, (topk, r.text)
    assert len([k for k in anon.post("/search/", json={"image": b64, "topk": 3}).json() if k.startswith("image")]) == 3


def test_search_by_a_box_of_the_query(api, anon):
    """A collage of two gallery images: a box around either finds that one first; the box comes
    as a query or a body field, in pixels or fractions; a bad box is a 422 that says why."""
    left, right = _file(api, "circles", 1), _file(api, "stripes", 3)
    both = collage(left, right)
    first = lambda r: (r.status_code, r.json()["results"][0]["id"] if r.status_code == 200 else r.text)
    assert first(_search(anon, both, box="0,0,160,160")) == (200, str(content_id(left.read_bytes())))
    assert first(anon.post("/api/v1/search", json={"image": base64.b64encode(both).decode(),
                                                   "box": "0.5152,0.0,0.4848,1.0"})) == \
        (200, str(content_id(right.read_bytes())))
    for bad, why in (("0,0,160", "four numbers"), ("400,0,10,10", "outside"), ("0.9,0,0.5,0.5", "within"),
                     ("200,100,200,100", "outside the 330x160 image")):  # past the edge: never clipped
        r = _search(anon, both, box=bad)
        assert r.status_code == 422 and why in r.json()["error"]["message"], (bad, r.text)


def test_filter_and_min_score(api, anon):
    data = _file(api, "circles").read_bytes()
    r = _search(anon, data, k=10, filter="squares")
    labels = [h["label"] for h in r.json()["results"]]
    assert len(labels) == 5 and set(labels) == {"squares"}
    assert _search(anon, data, filter="no-such-label").json()["results"] == []
    only_self = _search(anon, data, k=10, min_score=0.999).json()["results"]
    assert [h["id"] for h in only_self] == [str(content_id(data))]
    assert _search(anon, data, min_score=3).status_code == 422
    for not_a_number in ("nan", "inf", "-inf"):  # said as what it is, not as "should be <= 1"
        r = _search(anon, data, min_score=not_a_number)
        assert r.status_code == 422 and "finite number" in r.json()["error"]["message"], r.text
        r = anon.get("/api/v1/duplicates", params={"threshold": not_a_number})
        assert r.status_code == 422 and "finite number" in r.json()["error"]["message"], r.text


def test_non_ascii_labels_are_stored_and_filtered(api, client, anon):
    data = encode(draw("triangle", (200, 30, 90), seed=4343), "PNG")
    for label in ("café", "🍎"):
        added = client.post("/api/v1/images", files={"image": ("t.png", data, "image/png")}, data={"label": label})
        assert added.status_code == 201, added.text
        hits = _search(anon, data, k=3, filter=label).json()["results"]
        assert [h["label"] for h in hits] == [label]
        page = anon.get("/api/v1/images", params={"filter": label}).json()
        assert page["total"] == 1 and page["items"][0]["label"] == label
        assert client.delete(f"/api/v1/images/{content_id(data)}").status_code == 200


def test_more_like_this(api, anon):
    data = _file(api, "rings", 2).read_bytes()
    image_id = str(content_id(data))
    r = anon.get(f"/api/v1/images/{image_id}/similar", params={"k": 4})
    assert r.status_code == 200
    results = r.json()["results"]
    assert len(results) == 4 and image_id not in {h["id"] for h in results}
    assert results[0]["label"] == "rings"
    assert anon.get("/api/v1/images/12345/similar").status_code == 404
    assert anon.get("/api/v1/images/not-a-number/similar").status_code == 422


# -- writing -------------------------------------------------------------------------------
def test_add_is_idempotent_then_delete_removes_entry_and_object(api, client, anon):
    data = encode(draw("circle", (250, 200, 0), seed=4242), "PNG")
    image_id = str(content_id(data))
    before = client.get("/api/v1/status").json()["count"]

    first = client.post("/api/v1/images", files={"image": ("sun.png", data, "image/png")}, data={"label": "sun"})
    assert first.status_code == 201, first.text
    assert first.json()["created"] is True and first.json()["id"] == image_id and first.json()["label"] == "sun"
    again = client.post("/api/v1/images", json={"image": base64.b64encode(data).decode(), "label": "sun"})
    assert again.status_code == 200 and again.json()["created"] is False
    assert client.get("/api/v1/status").json()["count"] == before + 1  # one entity, not two

    hit = _search(anon, data, k=1).json()["results"][0]
    assert hit["id"] == image_id and hit["label"] == "sun" and hit["source"] == "sun.png"
    assert anon.get(hit["url"]).content == data
    assert anon.get(f"/api/v1/images/{image_id}").json()["key"] == hit["key"]

    deleted = client.delete(f"/api/v1/images/{image_id}")
    assert deleted.status_code == 200 and deleted.json()["deleted"] == image_id
    assert anon.get(f"/api/v1/images/{image_id}").status_code == 404
    assert anon.get(hit["url"]).status_code == 404
    assert client.delete(f"/api/v1/images/{image_id}").status_code == 404
    assert client.get("/api/v1/status").json()["count"] == before


def _planted_copies(original) -> list[bytes]:
    """Two copies of a gallery image, as a library gathers them: resized, and re-encoded."""
    img = Image.open(original).convert("RGB")
    return [encode(img.resize((320, 320)), "PNG"), encode(img, "JPEG", quality=95)]


def test_near_duplicates_are_grouped_and_deleting_one_updates_the_groups(api, client, anon):
    original = _file(api, "rings", 2)
    copies = [client.post("/api/v1/images", files={"image": (f"copy{i}.png", data, "image/png")},
                          data={"label": "rings"}).json()["id"] for i, data in enumerate(_planted_copies(original))]
    planted = {str(content_id(original.read_bytes())), *copies}
    try:
        def group_of_original(reader, threshold=0.95):
            r = reader.get("/api/v1/duplicates", params={"threshold": threshold, "limit": 50})
            while r.status_code == 202:  # the scan is a job; its progress comes meanwhile
                assert r.json()["state"] == "scanning" and set(r.json()["progress"]) == {"threshold", "done", "total"}
                time.sleep(0.5)
                r = reader.get("/api/v1/duplicates", params={"threshold": threshold, "limit": 50})
            assert r.status_code == 200 and r.json()["state"] == "done", r.text
            body = r.json()
            assert body["images"] == client.get("/api/v1/status").json()["count"]
            groups = [{i["id"] for i in g["images"]} for g in body["items"]]
            assert [g["size"] for g in body["items"]] == sorted((g["size"] for g in body["items"]), reverse=True)
            if reader is anon:
                assert all("/" not in i["source"] for g in body["items"] for i in g["images"])  # names only
            return next((g for g in groups if g & planted), set()), body

        # Starting a scan is a writer's (it loads Milvus for minutes at 200,000 images)...
        assert anon.get("/api/v1/duplicates", params={"threshold": 0.95, "refresh": "true"}).status_code == 401
        found, body = group_of_original(client)
        assert found == planted, body  # the original and its two copies, nothing else
        assert body["duplicates"] == sum(g["size"] - 1 for g in body["items"])
        assert client.delete(f"/api/v1/images/{copies[0]}").status_code == 200
        # ... reading the kept scan is anyone's; it follows the deletes made through the service.
        assert group_of_original(anon)[0] == planted - {copies[0]}
        assert anon.get("/api/v1/duplicates", params={"threshold": 1.0}).status_code == 401  # another scan
        assert group_of_original(client, threshold=1.0)[0] == set()
        for bad in ({"threshold": 2}, {"limit": 0}, {"offset": -1}, {"threshold": "x"}):
            assert anon.get("/api/v1/duplicates", params=bad).status_code == 422, bad
    finally:
        for image_id in copies:
            client.delete(f"/api/v1/images/{image_id}")


def test_concurrent_adds_of_one_new_image_answer_one_201(api, client):
    from concurrent.futures import ThreadPoolExecutor

    data = encode(draw("ring", (10, 120, 240), seed=777), "PNG")
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: client.post("/api/v1/images", files={"image": ("r.png", data, "image/png")}),
                                range(8)))
    assert sorted(r.status_code for r in answers) == [200] * 7 + [201], [r.text for r in answers]
    assert {r.json()["id"] for r in answers} == {str(content_id(data))}
    assert client.delete(f"/api/v1/images/{content_id(data)}").status_code == 200


def test_write_routes_need_the_api_key(api, anon):
    data = encode(draw("square", (1, 1, 1), seed=99), "PNG")
    for method, path, kwargs in [
        ("POST", "/api/v1/images", {"files": {"image": ("x.png", data, "image/png")}}),
        ("DELETE", f"/api/v1/images/{content_id(_file(api, 'circles').read_bytes())}", {}),
        ("POST", "/api/v1/index", {}),
        ("POST", "/insert/", {"json": {"key": "x.png", "image": base64.b64encode(data).decode()}}),
        ("POST", "/indexing/", {}),
    ]:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "wrong"}):
            r = anon.request(method, path, headers=headers, **kwargs)
            assert r.status_code == 401, (method, path, headers)
            assert r.headers["www-authenticate"] == "Bearer"
    assert anon.get("/api/v1/images", params={"limit": 1}).status_code == 200  # reads stay open
    # The key is checked before the body is read: a body declared far past the limit gets 401, not 413.
    host, port = httpx.URL(api.url).host, httpx.URL(api.url).port
    with socket.create_connection((host, port), timeout=30) as sock:  # a client that never sends it all
        sock.sendall(f"POST /api/v1/images HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: image/png\r\n"
                     f"Content-Length: {10**9}\r\n\r\nx".encode())
        assert sock.recv(200).split(b"\r\n")[0] == b"HTTP/1.1 401 Unauthorized"
    cross = anon.post("/api/v1/index", headers={"X-API-Key": "wrong", "Origin": "http://evil.example"})
    assert cross.status_code == 401 and "access-control-allow-origin" not in cross.headers
    ok = anon.post("/api/v1/index", headers={"X-API-Key": api.key})
    assert ok.status_code == 200


def test_list_pages_and_index_and_status(api, client):
    total = sum(len(v) for v in api.gallery.values())
    page = client.get("/api/v1/images", params={"limit": 7, "offset": 0}).json()
    assert len(page["items"]) == 7 and page["total"] >= total
    assert all(item["url"].startswith("/images/") for item in page["items"])
    labelled = client.get("/api/v1/images", params={"filter": "stripes", "limit": 50}).json()
    assert labelled["total"] == 5 and {i["label"] for i in labelled["items"]} == {"stripes"}
    assert client.get("/api/v1/images", params={"limit": 0}).status_code == 422

    rebuilt = client.post("/api/v1/index")
    assert rebuilt.status_code == 200 and rebuilt.json()["state"] == "done"
    index = rebuilt.json()["index"]
    assert index["type"] == "HNSW" and index["params"] == {"M": 16, "efConstruction": 200}

    status = client.get("/api/v1/status").json()
    assert status["status"] == "ok" and status["count"] >= total and status["dimension"] == 1280
    assert status["model"]["name"] == "efficientnet-lite0" and status["model"]["loaded"] is True
    assert status["milvus"]["healthy"] and status["store"]["backend"] == "local"
    assert status["index"]["type"] == "HNSW"


def test_anonymous_readers_see_no_server_internals(api, client, anon):
    """Paths, addresses and node ids go to operators (the key) only; errors speak in our words."""
    internals = [str(api.settings.store.local_dir), api.settings.milvus.uri, str(api.gallery["circles"][0].parent)]
    data = _file(api, "circles", 0).read_bytes()
    public = [anon.get("/api/v1/status"), anon.get("/status/"), anon.get("/api/v1/images", params={"limit": 50}),
              _search(anon, data, k=3), anon.get(f"/api/v1/images/{content_id(data)}"),
              anon.get(f"/api/v1/images/{content_id(data)}/similar", params={"k": 3})]
    for r in public:
        assert r.status_code == 200, r.text
        assert not [secret for secret in internals if secret in r.text], (r.request.url, r.text[:2000])
        assert "node" not in r.text, r.request.url
    status = anon.get("/api/v1/status").json()
    assert status["milvus"]["healthy"] and status["milvus"]["count"] == status["count"] and "uri" not in status["milvus"]
    assert status["store"] == {"backend": "local", "healthy": True}
    assert _search(anon, data, k=1).json()["results"][0]["source"] == api.gallery["circles"][0].name

    operator = client.get("/api/v1/status").json()  # with the key: everything, for the operator
    assert operator["store"]["root"] == str(Path(api.settings.store.local_dir).resolve())
    assert operator["milvus"]["uri"] and operator["milvus"]["node"] and operator["model"]["node"]
    assert _search(client, data, k=1).json()["results"][0]["source"] == str(api.gallery["circles"][0])

    bomb = _search(anon, png_with_size(30_000, 30_000)).json()["error"]["message"]
    assert bomb == f"the image has too many pixels; the limit is {api.settings.images.max_pixels} pixels"
    broken = anon.post("/api/v1/search", content=b"--x\r\nnot a part", headers={"content-type": "multipart/form-data"})
    assert broken.status_code == 400 and broken.json()["error"]["message"].startswith(
        "cannot parse the multipart body: ") and "400" not in broken.json()["error"]["message"], broken.text


# -- the original server's routes -----------------------------------------------------------------------
def test_original_routes(api, client, anon):
    """Field for field as the original server answered its front end (served from another origin)."""
    data = _file(api, "checkers", 2).read_bytes()
    b64 = base64.b64encode(data).decode()
    front = {"Origin": "http://front.example"}
    r = anon.post("/search/", json={"key": api.key, "image": f"data:image/jpeg;base64,{b64}"}, headers=front)
    body = r.json()
    assert r.status_code == 200 and body["ok"] is True and r.headers["access-control-allow-origin"] == "*"
    assert sorted(k for k in body if k.startswith("image")) == [f"image{i}" for i in range(1, 6)]
    assert body["image1"].startswith(api.url + "/images/")  # absolute: the page lives on another origin
    first = httpx.get(body["image1"])
    assert first.status_code == 200 and first.content == data
    assert isinstance(body["search_time"], int) and isinstance(body["embedding_time"], int)  # ms, as it was
    assert body["embedding_time"] >= 1  # decoding and a forward pass take more than a millisecond
    assert anon.post("/search/", json={"image": b64}).json()["ok"] is True  # no key: reads are open

    # The Host header is the client's word: it never becomes the address of the images it is sent.
    port = httpx.URL(api.url).port
    for host in ("evil.example", f"localhost.evil.example:{port}", f"evil.example:{port}"):
        spoofed = anon.post("/search/", json={"image": b64}, headers={"Host": host}).json()
        assert spoofed["ok"] is True and spoofed["image1"].startswith("/images/"), (host, spoofed)

    wrong = anon.post("/search/", json={"key": "not-the-key", "image": b64})
    assert wrong.status_code == 401 and wrong.json()["ok"] is False and wrong.json()["result"]

    new = encode(draw("triangle", (0, 0, 0), seed=777), "PNG")
    inserted = anon.post("/insert/", json={"key": api.key, "image": base64.b64encode(new).decode()})
    assert inserted.status_code == 200 and inserted.json()["ok"] and inserted.json()["id"] == str(content_id(new))
    assert anon.post("/insert/", json={"key": "wrong", "image": base64.b64encode(new).decode()}).status_code == 401
    assert anon.post("/indexing/", json={"key": api.key}).json()["ok"] is True
    status = anon.get("/status/", headers=front)
    assert status.headers["access-control-allow-origin"] == "*"
    status = status.json()
    assert status["ok"] is True and status["entities_num"] == status["count"] >= 31
    assert status["memory"] == pytest.approx(machine.memory_percent(), abs=10) and status["gpu"] == "none"
    assert status["cpu"] == pytest.approx(100 * os.getloadavg()[0] / len(os.sched_getaffinity(0)), abs=25)
    client.delete(f"/api/v1/images/{content_id(new)}")

    bad = anon.post("/search/", json={"key": "x", "image": "%%% not base64"})
    assert bad.status_code == 400 and bad.json()["ok"] is False and bad.json()["error"]["code"] == "bad_request"


# -- bad input -------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, status, code", [
    ({}, 400, "empty_input"),
    ({"files": {"image": ("e.png", b"", "image/png")}}, 400, "empty_input"),
    ({"files": {"image": ("t.txt", b"hello, not an image" * 20, "text/plain")}}, 415, "unsupported_media_type"),
    ({"files": {"image": ("t.jpg", truncated_jpeg(), "image/jpeg")}}, 422, "invalid_image"),
    ({"files": {"photo": ("p.png", b"x", "image/png")}}, 422, "invalid_parameter"),
    ({"json": {"picture": "abc"}}, 422, "invalid_parameter"),
    ({"json": {"image": 12}}, 422, "invalid_parameter"),
    ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "bad_request"),
    ({"content": b"hello", "headers": {"content-type": "text/plain"}}, 415, "unsupported_media_type"),
    ({"files": {"image": ("b.png", png_with_size(30_000, 30_000), "image/png")}}, 413, "too_large"),
    ({"content": b'{"image": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "headers": {"content-type":
      "application/json"}}, 400, "bad_request"),  # past the JSON parser's own recursion limit
    ({"json": {"image": "x", "k": [[[[[[[[[1]]]]]]]]]}}, 400, "bad_request"),  # past ours (8)
    ({"json": {"image": "aGk=", "filter": "a\nb"}}, 422, "invalid_parameter"),
    ({"json": {"image": "aGk=", "filter": "猫" * 100}}, 422, "invalid_parameter"),  # 300 bytes: Milvus counts bytes
    ({"files": {"image": ("s.png", STRIP, "image/png")}}, 422, "extreme_aspect_ratio"),
    ({"json": {"url": "file:///etc/passwd"}}, 400, "invalid_url"),
    ({"json": {"url": "http://[::1"}}, 400, "invalid_url"),
    ({"json": {"url": "http://127.0.0.1:9/nothing-listens-here.png"}}, 400, "url_fetch_failed"),  # allowed, closed
    ({"json": {"url": "http://[::1]:8265/api/jobs/"}}, 400, "url_fetch_failed"),  # loopback, not on the list
    ({"json": {"url": "http://169.254.169.254/latest/meta-data/"}}, 400, "url_fetch_failed"),
])
def test_bad_input_gets_a_clear_4xx_json_error(anon, kwargs, status, code):
    r = anon.post("/api/v1/search", **kwargs)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code and error["message"]


def test_request_ids_and_security_headers(anon):
    page = anon.get("/")
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert page.headers["x-content-type-options"] == "nosniff" and page.headers["referrer-policy"] == "no-referrer"
    bad = anon.post("/api/v1/search", json={"picture": 1}, headers={"X-Request-ID": "abc-123"})
    assert bad.headers["x-request-id"] == "abc-123" and bad.json()["error"]["request_id"] == "abc-123"
    made = [anon.get("/api/v1/nothing") for _ in range(3)]  # none given: Serve makes one, the body carries it
    assert all(r.json()["error"]["request_id"] == r.headers["x-request-id"] for r in made)
    assert len({r.headers["x-request-id"] for r in made}) == 3


def test_head_answers_every_get_route_without_its_body(anon, client):
    for path in ("/", "/healthz", "/api/v1/status", "/api/v1/images?limit=1", "/openapi.json"):
        get, head = anon.get(path), anon.head(path)
        assert head.status_code == get.status_code == 200, (path, head.status_code)
        assert head.content == b"" and head.headers["content-type"] == get.headers["content-type"], path
        assert head.headers["content-security-policy"] and head.headers["x-request-id"]
    key = client.get("/api/v1/images?limit=1").json()["items"][0]["key"]
    image = anon.head(f"/images/{key}")
    assert image.status_code == 200 and image.content == b"" and int(image.headers["content-length"]) > 0
    assert anon.head("/api/v1/search").status_code == 405  # a POST route: no GET, no HEAD


def test_oversized_upload_is_refused_before_reading_it(api, anon):
    too_big = b"\0" * (api.settings.images.max_bytes * 2)
    r = anon.post("/api/v1/search", content=too_big, headers={"content-type": "image/png"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"


def test_unknown_routes_methods_and_keys(anon):
    assert anon.get("/api/v1/nothing").json()["error"]["code"] == "not_found"
    r = anon.get("/api/v1/search")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    assert anon.get("/images/0000000000000000.png").status_code == 404
    traversal = anon.get("/images/..%2f..%2fconfig%2flookalike.yaml")
    assert 400 <= traversal.status_code < 500 and "error" in traversal.json()
    assert anon.get("/healthz").json() == {"ok": True}


# -- the S3 app: object-store URLs and a Milvus that goes down ----------------------------------
def test_s3_store_urls(api_s3):
    with api_s3.client() as c:
        data = _file(api_s3, "stripes", 1).read_bytes()
        r = c.post("/api/v1/images", files={"image": ("s.jpg", data, "image/jpeg")}, data={"label": "stripes"})
        assert r.status_code in (200, 201), r.text
        hit = _search(c, data, k=1).json()["results"][0]
        assert hit["id"] == str(content_id(data))
        assert hit["url"].startswith(f"http://{api_s3.settings.store.s3.endpoint}/gallery/")
        assert "X-Amz-Signature" in hit["url"]
        assert httpx.get(hit["url"]).content == data  # presigned GET straight from S3
        redirect = c.get(f"/images/{hit['key']}", follow_redirects=False)
        assert redirect.status_code == 307 and "X-Amz-Signature" in redirect.headers["location"]
        assert c.get("/api/v1/status").json()["store"] == {
            "backend": "s3", "endpoint": api_s3.settings.store.s3.endpoint, "bucket": "gallery", "healthy": True}


def test_without_a_key_writes_are_local_and_same_site_only(api_s3):
    """The S3 app has no API key: this machine may write, another site's page may not (CSRF)."""
    data = encode(draw("square", (3, 200, 3), seed=5151), "PNG")
    form = {"files": {"image": ("g.png", data, "image/png")}}
    with httpx.Client(base_url=api_s3.url, timeout=60) as c:
        for headers in ({"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
            r = c.post("/api/v1/images", headers=headers, **form)
            assert r.status_code == 403 and r.json()["error"]["code"] == "cross_site", r.text
        for header in ("X-Real-IP", "X-Forwarded-For", "Forwarded"):  # a proxy on this machine, not trusted
            forwarded = {header: "for=203.0.113.9" if header == "Forwarded" else "203.0.113.9"}
            r = c.post("/api/v1/images", headers=forwarded, **form)
            assert r.status_code == 403 and r.json()["error"]["code"] == "api_key_required", r.text
            assert c.post("/insert/", headers=forwarded, json={"image": base64.b64encode(data).decode()}).json()[
                "ok"] is False
            assert c.delete(f"/api/v1/images/{content_id(data)}", headers=forwarded).status_code == 403
        assert c.post("/insert/", headers={"Origin": "http://evil.example"}, json={
            "image": base64.b64encode(data).decode()}).json()["ok"] is False  # the original's shape, under /s3
        r = c.post("/api/v1/images", headers={"Origin": api_s3.url.rsplit("/", 1)[0]}, **form)  # its own page
        assert r.status_code == 201, r.text
        assert c.delete(f"/api/v1/images/{content_id(data)}").status_code == 200


def test_milvus_down_is_503_naming_it_and_the_service_recovers(api_s3, lite_process):
    with api_s3.client() as c:
        data = _file(api_s3, "circles", 3).read_bytes()
        c.post("/api/v1/images", files={"image": ("c.png", data, "image/png")}, data={"label": "circles"})
        assert _search(c, data, k=1).status_code == 200
        lite_process.stop()
        try:
            r = _search(c, data, k=1)
            assert r.status_code == 503, r.text
            error = r.json()["error"]
            assert error["backend"] == "milvus" and "milvus" in error["message"]
            assert r.headers["retry-after"] == "5" and error["request_id"] == r.headers["x-request-id"]
            # No internal address, path or exception name reaches the client.
            uri = api_s3.settings.milvus.uri
            assert uri not in r.text and "127.0.0.1" not in r.text and "Error" not in error["message"]
            new = encode(draw("ring", (9, 9, 9), seed=31337), "PNG")
            w = c.post("/api/v1/images", files={"image": ("n.png", new, "image/png")})
            assert w.status_code == 503
            status = c.get("/api/v1/status")
            assert status.status_code == 200 and status.json()["status"] == "degraded"
            assert status.json()["milvus"]["healthy"] is False
            assert c.get("/healthz").status_code == 200  # the service itself keeps running
        finally:
            lite_process.start()
        wait_until(lambda: _search(c, data, k=1).status_code == 200, 60, "the Searcher to reconnect on its own")
        r = _search(c, data, k=1)
        assert r.status_code == 200, r.text
        assert r.json()["results"][0]["id"] == str(content_id(data))  # nothing was lost


def test_searches_keep_answering_while_the_index_is_rebuilt(api, client, anon):
    """POST /api/v1/index under search load: every search 200 (before, the collection was
    released for the build and searches failed), the count unchanged."""
    import threading

    count = client.get("/api/v1/status").json()["count"]
    images = [p.read_bytes() for paths in api.gallery.values() for p in paths[:2]]
    stop, statuses = threading.Event(), []

    def search(offset: int) -> None:
        with httpx.Client(base_url=api.url, timeout=60) as c:
            i = offset
            while not stop.is_set():
                statuses.append(_search(c, images[i % len(images)], k=3).status_code)
                i += 1

    threads = [threading.Thread(target=search, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    time.sleep(1)
    rebuilt = client.post("/api/v1/index")
    time.sleep(1)
    stop.set()
    for t in threads:
        t.join()
    assert rebuilt.status_code == 200 and rebuilt.json()["state"] == "done"
    assert len(statuses) > 5 and set(statuses) == {200}, sorted(set(statuses))
    assert client.get("/api/v1/status").json()["count"] == count


# -- what listens beyond this machine ----------------------------------------------------------
def test_nothing_the_service_started_listens_beyond_loopback(api):
    """Every process of this run (Ray, the Serve replicas, the servers, the app's Lite server) listens
    on loopback only. Serve binds each replica's inter-deployment gRPC server to [::] unless told
    (deployments/replica_rpc.py); that server unpickles what it is sent, so Ray's token auth
    (lookalike/ray_env.py) must still refuse a caller without the token. Calls go to 127.0.0.1."""
    import ipaddress

    import grpc
    import psutil

    ours = own_processes(LiteServer(api.settings.milvus.uri))
    assert ours - own_processes()  # the app's Lite server, detached from us
    listening = [c for c in psutil.net_connections("inet") if c.status == psutil.CONN_LISTEN and c.pid in ours]

    def loopback(ip: str) -> bool:
        address = ipaddress.ip_address(ip)
        return (getattr(address, "ipv4_mapped", None) or address).is_loopback

    names = {}
    for c in listening:
        with contextlib.suppress(psutil.NoSuchProcess):  # one ending meanwhile (another app's)
            names[c.pid] = psutil.Process(c.pid).name()
    beyond = [(c.laddr, names.get(c.pid)) for c in listening if not loopback(c.laddr.ip)]
    assert not beyond, beyond
    refusing, answered = set(), []
    for c in listening:
        name = names.get(c.pid, "")
        if not name.startswith("ray::ServeReplica:main:"):
            continue
        with grpc.insecure_channel(f"127.0.0.1:{c.laddr.port}") as channel:
            try:
                channel.unary_unary("/ray.serve.ASGIService/HandleRequest")(b"", timeout=10)
                answered.append((name, c.laddr.port))
            except grpc.RpcError as err:  # Serve's server: UNAUTHENTICATED; Ray's own: UNIMPLEMENTED
                if err.code() == grpc.StatusCode.UNAUTHENTICATED:
                    refusing.add(name)
    assert not answered, answered
    assert refusing == {f"ray::ServeReplica:main:{d}" for d in ("Ingress", "Embedder", "Searcher")}, refusing


def test_replicas_run_at_the_priority_of_everything_else(api):
    """Ray lowers its workers to nice 15 unless told (lookalike/ray_env.py): on a shared machine
    any ordinary process would then starve the service."""
    import psutil

    replicas = [p for p in psutil.process_iter(["name"]) if "ServeReplica:main:" in (p.info["name"] or "")]
    assert replicas and {p.nice() for p in replicas} == {os.nice(0)}, [(p.info["name"], p.nice()) for p in replicas]


def _quarter(path: Path) -> bytes:
    """The bottom-right quarter of an image, as PNG."""
    image = Image.open(path).convert("RGB")
    return encode(image.crop((image.width // 2, image.height // 2, image.width, image.height)))


def test_with_region_rows_a_part_of_a_gallery_image_finds_the_whole(api_regions):
    """A gallery keeping region vectors (model.regions), filled by the ingest's stages and by the
    API's add: a quarter of a gallery image finds that image first, saying which part matched;
    the whole finds it as a whole; a delete takes its parts too."""
    added, indexed = api_regions.gallery["added"][0], api_regions.gallery["indexed"][2]
    with api_regions.client() as c:
        r = c.post("/api/v1/images", files={"image": (added.name, added.read_bytes(), "image/png")},
                   params={"label": added.parent.name})
        assert r.status_code == 201, r.text
        assert c.get("/api/v1/status").json()["milvus"]["descriptor"].endswith("/r0.5x3")
        for path in (added, indexed):
            image_id = str(content_id(path.read_bytes()))
            best = _search(c, _quarter(path)).json()["results"][0]
            assert (best["id"], best["region"]) == (image_id, "0.5,0.5,0.5,0.5"), path
            whole = _search(c, path.read_bytes()).json()["results"][0]
            assert (whole["id"], whole["region"]) == (image_id, None)
        gone = api_regions.gallery["indexed"][4]
        assert c.delete(f"/api/v1/images/{content_id(gone.read_bytes())}").status_code == 200
        ids = [h["id"] for h in _search(c, _quarter(gone), k=50).json()["results"]]
        assert str(content_id(gone.read_bytes())) not in ids and len(ids) == len(api_regions.gallery["indexed"])
