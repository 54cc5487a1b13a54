"""Search by words, through the service: an app on /clip whose model is a CLIP export in immich's
layout (tests/support/clip_export.py: random weights, so the test is about plumbing and
fidelity, not about which picture a word finds). Its scores must be the cosines of open_clip's
own vectors for the same weights, words and images; the bundled model answers text with a 422
that says what would give it words."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from lookalike.embedding.images import content_id, prepare

from harness.fixtures import App, deploy
from .support.clip_export import SIZE, write_immich_clip
from harness.images import CLASSES, draw, encode


@pytest.fixture(scope="module")
def clip_app(serve_url, api, tmp_path_factory):
    """The main app's Milvus Lite and store, a collection of its own, the model an export; the
    gallery's first three images per class indexed with it by the in-process indexer."""
    from ray import serve

    from lookalike.embedding.encoder import ImageEncoder
    from lookalike.indexing.indexer import index_items
    from lookalike.indexing.sources import SourceItem
    from lookalike.milvus.engines import gallery_catalog
    from lookalike.storage.store import make_store

    clip = write_immich_clip(tmp_path_factory.mktemp("models") / "Tiny-ViT__random")
    settings = api.settings.model_copy(update={
        "model": api.settings.model.model_copy(update={"name": "immich-clip", "weights": str(clip.folder)}),
        "milvus": api.settings.milvus.model_copy(update={"collection": "clip"})})
    files = [p for paths in api.gallery.values() for p in paths[:3]]
    catalog = gallery_catalog(settings)
    report = index_items([SourceItem(str(p), p.parent.name) for p in files], settings,
                         encoder=ImageEncoder(settings.model), catalog=catalog, store=make_store(settings.store))
    assert report.indexed == len(files)
    deploy("clip", "/clip", settings)
    app = App(url=serve_url + "/clip", settings=settings, gallery={"indexed": files}, key=api.key)
    app.clip = clip
    yield app
    serve.delete("clip")
    catalog.versions.drop()
    catalog.close()


@pytest.fixture(scope="module")
def anon(clip_app):
    with httpx.Client(base_url=clip_app.url, timeout=60) as c:
        yield c


def _reference_scores(app) -> dict[str, np.ndarray]:
    """Each indexed image's id -> open_clip's own vector for it (after the one preprocessing)."""
    files = app.gallery["indexed"]
    pixels = np.stack([prepare(p.read_bytes(), SIZE, app.settings.images).pixels for p in files])
    vectors = app.clip.reference_image(pixels)
    return {str(content_id(p.read_bytes())): v for p, v in zip(files, vectors)}


def test_words_find_images_with_open_clips_own_scores(clip_app, anon):
    reference = _reference_scores(clip_app)
    words = "a photo of a red circle"
    want = clip_app.clip.reference_text([words])[0]
    for request in (dict(json={"text": words, "k": 8}), dict(data={"text": words, "k": "8"}),
                    dict(params={"text": words, "k": 8})):  # JSON, a form, the query string
        response = anon.post("/api/v1/search", **request)
        assert response.status_code == 200, response.text
        hits = response.json()["results"]
        assert len(hits) == 8 and set(response.json()["timings"]) >= {"embed_ms", "search_ms", "total_ms"}
        assert np.allclose([h["score"] for h in hits], [reference[h["id"]] @ want for h in hits], atol=2e-3)
    best = max(reference, key=lambda i: reference[i] @ want)  # exact search over the same vectors
    assert hits[0]["id"] == best


def test_images_search_with_open_clips_own_vectors_too(clip_app, anon):
    reference = _reference_scores(clip_app)
    query = clip_app.gallery["indexed"][4]
    hits = anon.post("/api/v1/search", files={"image": ("q.png", query.read_bytes(), "image/png")},
                     params={"k": 5}).json()["results"]
    mine = reference[str(content_id(query.read_bytes()))]
    assert hits[0]["id"] == str(content_id(query.read_bytes())) and hits[0]["score"] > 0.999
    assert np.allclose([h["score"] for h in hits], [reference[h["id"]] @ mine for h in hits], atol=2e-3)


def test_words_take_filters_k_and_thresholds(clip_app, anon):
    label = clip_app.gallery["indexed"][0].parent.name
    hits = anon.post("/api/v1/search", json={"text": "blue stripes", "filter": label, "k": 50}).json()["results"]
    assert len(hits) == 3 and {h["label"] for h in hits} == {label}
    scores = [h["score"] for h in anon.post("/api/v1/search", json={"text": "blue stripes", "k": 50}).json()["results"]]
    cut = anon.post("/api/v1/search", json={"text": "blue stripes", "k": 50, "min_score": scores[3]}).json()["results"]
    assert [h["score"] for h in cut] == scores[:len(cut)] and 4 <= len(cut) < len(scores)


@pytest.mark.parametrize("body, message", [
    ({"text": "a cat", "url": "http://127.0.0.1/x.png"}, "an image or 'text', not both"),
    ({"text": "a cat", "box": "0,0,1,1"}, "a search by 'text' has none"),
    ({"text": "a\x00cat"}, "control characters"),
    ({"text": "x" * 1001}, "at most 1000 characters"),
    ({"text": "   "}, "or 'text' to search by words"),
])
def test_bad_text_queries_get_a_422_that_says_why(anon, body, message):
    response = anon.post("/api/v1/search", json=body)
    assert response.status_code == 422 and message in response.json()["error"]["message"], response.text


@pytest.fixture(scope="module")
def image_only(serve_url, clip_app, tmp_path_factory):
    """The same export without its text tower, on /clip-images over the same collection."""
    import shutil

    from ray import serve

    folder = tmp_path_factory.mktemp("image-only") / clip_app.clip.folder.name  # the descriptor: the folder's name
    shutil.copytree(clip_app.clip.folder, folder, ignore=shutil.ignore_patterns("textual"))
    settings = clip_app.settings.model_copy(update={
        "model": clip_app.settings.model.model_copy(update={"weights": str(folder)})})
    deploy("clip-images", "/clip-images", settings)
    with httpx.Client(base_url=serve_url + "/clip-images", timeout=60) as client:
        yield client
    serve.delete("clip-images")


def test_a_model_without_a_text_tower_answers_422_naming_it(image_only):
    response = image_only.post("/api/v1/search", json={"text": "a red bicycle"})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "text_search_unavailable"
    assert "immich-clip:Tiny-ViT__random has no text tower" in response.json()["error"]["message"]
    assert "open-clip:<architecture>" in response.json()["error"]["message"]
    image = encode(draw(*list(CLASSES.values())[0], seed=1))  # its images search as before
    assert image_only.post("/api/v1/search", files={"image": ("q.png", image, "image/png")}).status_code == 200


def test_status_says_the_model_takes_words(clip_app, anon, image_only):
    assert anon.get("/api/v1/status").json()["model"]["text"] is True
    assert image_only.get("/api/v1/status").json()["model"]["text"] is False


# -- words on the bundled model: its classifier's rows -------------------------------------------
def test_words_on_the_bundled_model_search_along_its_class_rows(api, encoder):
    """The direction the service searches along is the class rows' (class_words.py), and the
    scores are its cosines with the gallery's own vectors."""
    from lookalike.embedding.class_words import ClassWords, classes_for, efficientnet_lite0_rows

    direction = ClassWords(efficientnet_lite0_rows()).direction(classes_for("a wall clock")[1])
    files = [p for paths in api.gallery.values() for p in paths]
    vectors = encoder.encode(np.stack([prepare(p.read_bytes(), 224, api.settings.images).pixels for p in files]))
    want = {str(content_id(p.read_bytes())): float(v @ direction) for p, v in zip(files, vectors)}
    with httpx.Client(base_url=api.url, timeout=60) as main:
        hits = main.post("/api/v1/search", json={"text": "a wall clock", "k": 5}).json()["results"]
        assert [h["id"] for h in hits] == sorted(want, key=want.get, reverse=True)[:5]
        assert np.allclose([h["score"] for h in hits], [want[h["id"]] for h in hits], atol=2e-3)
        refused = main.post("/api/v1/search", json={"text": "stars and flags"})
        assert refused.status_code == 422 and refused.json()["error"]["code"] == "unknown_words"
        assert "near it: " in refused.json()["error"]["message"]
        assert main.get("/api/v1/status").json()["model"]["text"] is True


def test_the_page_searches_by_words_where_the_model_has_them(browser, clip_app, image_only):
    """Last in this module: the browser (Playwright's sync API) holds an event loop from here on."""
    from .test_web import open_page

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        page = context.new_page()
        page.set_default_timeout(30_000)
        open_page(page, clip_app.url)
        page.wait_for_selector("#text-form", state="visible")
        page.fill("#text", "a photo of a red circle")
        page.press("#text", "Enter")
        page.wait_for_function("() => document.querySelectorAll('#results .card').length === 10")
        assert page.inner_text("#results-title") == "Results for “a photo of a red circle”"
        want = anon_search_ids(clip_app, "a photo of a red circle")
        assert page.eval_on_selector_all("#results .card", "cards => cards.map(c => c.dataset.id)") == want
        open_page(page, str(image_only.base_url).rstrip("/"))  # no text tower: no box to type words in
        page.wait_for_function("() => document.querySelector('#status-model').textContent !== '…'")
        assert not page.is_visible("#text-form")
    finally:
        context.close()


def anon_search_ids(app, text: str) -> list[str]:
    with httpx.Client(base_url=app.url, timeout=60) as anon:
        return [h["id"] for h in anon.post("/api/v1/search", json={"text": text, "k": 10}).json()["results"]]
