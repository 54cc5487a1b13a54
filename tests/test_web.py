"""The web page, end to end in headless Chromium (Debian's package, driven by Playwright)."""

from __future__ import annotations

import base64

import httpx
import pytest

from harness.servers import wait_until
from lookalike.embedding.images import content_id

from harness.images import collage, draw, encode


@pytest.fixture
def page(browser, api):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    open_page(page, api.url)
    yield page
    context.close()


def open_page(page, url: str) -> None:
    # Intercept file choosers from the start: expect_file_chooser turns interception on without
    # waiting for the browser, so on a busy machine a click or Enter right after it could open
    # the (headless, invisible) native dialog instead and the test waited in vain.
    page.on("filechooser", lambda chooser: None)
    page.goto(url + "/")
    page.wait_for_selector("body[data-ready=true]")


def _first_card(page):
    page.wait_for_selector("#results .card")
    return page.locator("#results .card").first


def _results_for(page, path) -> str:
    """Wait for a result list whose first card is the given image; returns its id."""
    want = str(content_id(path.read_bytes()))
    page.wait_for_function("id => document.querySelector('#results .card')?.dataset.id === id", arg=want)
    return want


def _drop_file_js(selector: str, name: str, mime: str, data: bytes, event: str = "drop") -> str:
    b64 = base64.b64encode(data).decode()
    target = "document" if selector == "document" else f"document.querySelector('{selector}')"
    make_event = ("new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true})" if event == "drop"
                  else "new ClipboardEvent('paste', {clipboardData: dt, bubbles: true, cancelable: true})")
    return f"""() => {{
        const bytes = Uint8Array.from(atob('{b64}'), c => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], '{name}', {{type: '{mime}'}}));
        {target}.dispatchEvent({make_event});
    }}"""


def test_upload_by_click_shows_the_image_first_with_timings(page, api, tmp_path):
    path = api.gallery["stripes"][2]
    with page.expect_file_chooser() as chooser:
        page.click("#drop")
    chooser.value.set_files(str(path))
    _results_for(page, path)
    first = _first_card(page)
    assert first.locator(".label").inner_text() == "stripes"
    assert "score 1.000" in first.locator(".score").inner_text()
    assert page.locator("#results .card").count() == 10
    timings = page.locator("#timings").inner_text()
    assert "decode" in timings and "embed" in timings and "search" in timings
    assert "fetch" not in timings and "null" not in timings, timings  # nothing was fetched for an upload
    href = first.locator("a").get_attribute("href")
    assert httpx.get(api.url + href).content == path.read_bytes()  # the link opens the full image
    assert page.locator("#message").is_hidden()
    # Every result thumbnail actually loaded.
    page.wait_for_function("() => [...document.querySelectorAll('#results img')].every(i => i.complete)")
    assert page.evaluate("() => [...document.querySelectorAll('#results img')].every(i => i.naturalWidth > 0)")
    page.screenshot(path=str(tmp_path / "results.png"), full_page=True)


def test_drag_and_drop_and_paste(page, api):
    dropped = api.gallery["checkers"][1]
    page.evaluate(_drop_file_js("#drop", dropped.name, "image/jpeg", dropped.read_bytes()))
    _results_for(page, dropped)
    pasted = api.gallery["triangles"][0]
    page.evaluate(_drop_file_js("document", "pasted.png", "image/png", pasted.read_bytes(), event="paste"))
    _results_for(page, pasted)
    assert page.locator("#preview").is_visible()


def test_k_selector_and_label_filter(page, api):
    path = api.gallery["circles"][0]
    page.set_input_files("#file", str(path))
    _results_for(page, path)
    page.select_option("#k", "5")
    page.wait_for_function("() => document.querySelectorAll('#results .card').length === 5")
    page.fill("#filter", "squares")
    page.locator("#filter").press("Enter")
    page.locator("#k").focus()  # change fires on blur
    page.wait_for_function(
        "() => [...document.querySelectorAll('#results .label')].every(l => l.textContent === 'squares')")
    assert page.locator("#results .card").count() == 5


def test_more_like_this(page, api):
    path = api.gallery["rings"][1]
    page.set_input_files("#file", str(path))
    _results_for(page, path)
    second = page.locator("#results .card").nth(1)
    clicked = second.get_attribute("data-id")
    second.locator(".similar").click()
    page.wait_for_function("() => document.querySelector('#results-title').textContent.startsWith('More like')")
    page.wait_for_function("id => document.querySelector('#results .card')?.dataset.id !== id", arg=clicked)
    ids = page.eval_on_selector_all("#results .card", "cards => cards.map(c => c.dataset.id)")
    assert clicked not in ids and len(ids) == 10
    assert _first_card(page).locator(".label").inner_text() == "rings"


def test_drag_a_box_on_the_query_searches_by_that_part(page, api):
    """A collage of a ring and a triangle: a box dragged around the triangle (mouse) finds that
    very image first; a box moved and resized by keyboard onto the ring, the ring."""
    ring, triangle = api.gallery["rings"][3], api.gallery["triangles"][2]
    page.set_input_files("#file", files=[{"name": "collage.png", "mimeType": "image/png",
                                          "buffer": collage(ring, triangle)}])
    page.wait_for_selector("#results .card")
    area = page.locator("#region-img").bounding_box()
    scale = area["width"] / 330
    page.mouse.move(area["x"] + 172 * scale, area["y"] + 2 * scale)
    page.mouse.down()
    page.mouse.move(area["x"] + 250 * scale, area["y"] + 80 * scale, steps=4)
    page.mouse.move(area["x"] + 328 * scale, area["y"] + 158 * scale, steps=4)
    page.mouse.up()
    _results_for(page, triangle)
    assert page.locator("#results-title").inner_text().startswith("Results for a part of")
    assert "part: 47%" in page.locator("#region-text").inner_text()
    # Keyboard: Escape clears the box, "Choose a part" makes a centred one; move it left, shrink it.
    page.keyboard.press("Escape")
    page.click("#region-start")
    assert page.evaluate("() => document.activeElement.id") == "region-box"
    for key in ["ArrowUp"] * 5 + ["ArrowLeft"] * 5 + ["Shift+ArrowDown"] * 10 + ["Shift+ArrowLeft"]:
        page.keyboard.press(key)
    page.keyboard.press("Enter")
    _results_for(page, ring)
    page.click("#region-clear")  # the whole image again
    page.wait_for_function("() => document.querySelector('#results-title').textContent === 'Results for collage.png'")


def test_duplicates_page_lists_a_planted_copy_and_deletes_it(browser, api):
    from PIL import Image

    original = api.gallery["squares"][3]
    copy = encode(Image.open(original).convert("RGB").resize((300, 300)), "PNG")
    added = httpx.post(api.url + "/api/v1/images", files={"image": ("copy.png", copy, "image/png")},
                       data={"label": "squares"}, headers={"X-API-Key": api.key})
    assert added.status_code == 201
    copy_id, original_id = added.json()["id"], str(content_id(original.read_bytes()))
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(60_000)
    # Accept the delete's confirm(). Subscribed now: Playwright turns dialog handling on without
    # waiting, and a dialog with no handler yet is dismissed (on a busy machine, the click came first).
    page.on("dialog", lambda dialog: dialog.accept())
    try:
        page.goto(api.url + "/")
        page.click("text=Near-duplicates")  # the search page links to it
        page.wait_for_selector("body[data-ready=true]")
        page.fill("#key", api.key)  # starting a scan needs what a write needs
        page.fill("#threshold", "0.95")
        page.click("#scan")
        card = page.locator(f"#groups .card[data-id='{copy_id}']")
        card.wait_for()
        group = page.locator("#groups .group", has=page.locator(f".card[data-id='{copy_id}']"))
        assert group.locator(f".card[data-id='{original_id}']").count() == 1  # beside its original
        assert "Scanned" in page.locator("#progress").inner_text()
        card.locator("input[type=checkbox]").check()
        assert page.locator("#delete").inner_text() == "Delete 1 selected"
        page.click("#delete")
        page.wait_for_function("id => !document.querySelector(`#groups .card[data-id='${id}']`)", arg=copy_id)
        assert page.locator("#message").is_hidden()
        assert httpx.get(f"{api.url}/api/v1/images/{copy_id}").status_code == 404
    finally:
        context.close()
        httpx.delete(f"{api.url}/api/v1/images/{copy_id}", headers={"X-API-Key": api.key})


def test_search_by_url(page, api):
    path = api.gallery["squares"][4]
    key = f"{content_id(path.read_bytes()):016x}{path.suffix}"  # content-addressed
    page.fill("#url", f"{api.url}/images/{key}")
    page.click("#url-form button")
    _results_for(page, path)


def test_errors_are_shown_never_silent(page, api):
    page.set_input_files("#file", files=[{"name": "notes.txt", "mimeType": "text/plain",
                                          "buffer": b"these are notes, not a picture\n" * 5}])
    message = page.locator("#message")
    message.wait_for(state="visible")
    assert "not an image" in message.inner_text() and "415" in message.inner_text()
    page.set_input_files("#file", files=[{"name": "broken.jpg", "mimeType": "image/jpeg",
                                          "buffer": api.gallery["rings"][1].read_bytes()[:300]}])
    page.wait_for_function("() => document.querySelector('#message').textContent.includes('422')")
    # A successful search clears the message.
    page.set_input_files("#file", str(api.gallery["circles"][2]))
    _results_for(page, api.gallery["circles"][2])
    assert message.is_hidden()


def test_backend_down_is_reported(browser, api_s3, lite_process):
    context = browser.new_context()
    page = context.new_page()
    open_page(page, api_s3.url)  # the S3 app, served under /s3/
    page.wait_for_function("() => document.querySelector('#status-health').textContent.includes('milvus up')")
    lite_process.stop()
    try:
        page.set_input_files("#file", str(api_s3.gallery["circles"][0]))
        page.wait_for_function("() => document.querySelector('#message').textContent.includes('503')",
                               timeout=60_000)
        text = page.locator("#message").inner_text()
        assert "backend: milvus" in text and "down" in text
        # The panel refreshes after the failed search, not at its next 30 s tick.
        page.wait_for_function("() => document.querySelector('#status-health').textContent.includes('milvus down')",
                               timeout=15_000)
    finally:
        lite_process.start()
        context.close()
    wait_until(lambda: httpx.get(api_s3.url + "/api/v1/status").json()["milvus"]["healthy"] is True, 60,
               "the s3 app's Milvus to be back", interval=1)


def test_status_panel_matches_the_api(page, api):
    status = httpx.get(api.url + "/api/v1/status").json()
    page.wait_for_function("() => document.querySelector('#status-count').dataset.count !== undefined")
    assert page.locator("#status-count").get_attribute("data-count") == str(status["count"])
    assert status["model"]["name"] in page.locator("#status-model").inner_text()
    assert f"{status['dimension']}-d" in page.locator("#status-model").inner_text()
    assert status["index"]["type"] in page.locator("#status-index").inner_text()
    assert page.locator("#status-health").inner_text().count(" up") == 3
    assert status["model"]["runtime"] in page.locator("#status-model").inner_text()
    # The test app's Lite size limit is below its gallery: the page passes the advice on.
    assert "Milvus server" in status["milvus"]["warning"]
    assert page.locator("#status-warning").inner_text() == status["milvus"]["warning"]


def test_big_photo_is_downscaled_before_upload_and_still_found(page, api):
    big = encode(draw("square", (30, 110, 30), seed=8080, size=400).resize((2400, 1800)), "JPEG", quality=95)
    added = httpx.post(api.url + "/api/v1/images", files={"image": ("big.jpg", big, "image/jpeg")},
                       data={"label": "big"}, headers={"X-API-Key": api.key})
    assert added.status_code == 201
    uploads = []
    page.on("request", lambda r: uploads.append(len(r.post_data_buffer or b""))
            if r.url.endswith("/api/v1/search?k=10") else None)
    try:
        page.set_input_files("#file", files=[{"name": "big.jpg", "mimeType": "image/jpeg", "buffer": big}])
        page.wait_for_selector("#results .card")
        first = _first_card(page)
        assert first.get_attribute("data-id") == added.json()["id"]  # the same photo, found from 600 px
        assert float(first.locator(".score").inner_text().split()[1]) > 0.95
        assert uploads and max(uploads) < len(big) / 3
    finally:
        httpx.delete(f"{api.url}/api/v1/images/{added.json()['id']}", headers={"X-API-Key": api.key})


def test_keyboard_and_phone_width(browser, api):
    context = browser.new_context(viewport={"width": 375, "height": 740}, is_mobile=True, has_touch=True)
    page = context.new_page()
    open_page(page, api.url)
    assert page.evaluate("() => document.scrollingElement.scrollWidth") <= 375  # no sideways scrolling
    page.keyboard.press("Tab")  # the header's link to the duplicates page, then the drop zone
    assert page.evaluate("() => document.activeElement.textContent") == "Near-duplicates"
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.id") == "drop"
    with page.expect_file_chooser() as chooser:
        page.keyboard.press("Enter")
    chooser.value.set_files(str(api.gallery["rings"][0]))
    _results_for(page, api.gallery["rings"][0])
    assert page.evaluate("() => document.scrollingElement.scrollWidth") <= 375
    # Result buttons are reachable by keyboard and act on Enter.
    page.locator("#results .card .similar").first.focus()
    page.keyboard.press("Enter")
    page.wait_for_function("() => document.querySelector('#results-title').textContent.startsWith('More like')")
    context.close()


ORIGINAL_PAGE = """<!doctype html><html><body><p id="status"></p><p id="times"></p><div id="images"></div>
<script>
// As the original front end calls its server: baseURL points at another origin.
const baseURL = "%s";
async function run(dataURL) {
  const status = await (await fetch(baseURL + "/status/")).json();
  document.getElementById("status").textContent =
    `${status.entities_num} images, cpu ${status.cpu}%%, memory ${status.memory}%%, gpu ${status.gpu}`;
  const response = await fetch(baseURL + "/search/", {method: "POST", headers: {"Content-Type": "application/json"},
                                                      body: JSON.stringify({key: "", image: dataURL})});
  const body = await response.json();
  document.getElementById("times").textContent = `${body.embedding_time}ms ${body.search_time}ms`;
  for (let i = 1; i <= 5; i++) {
    const img = document.createElement("img");
    img.src = body["image" + i];
    document.getElementById("images").appendChild(img);
  }
}
</script></body></html>"""


def test_the_original_front_end_on_another_origin_shows_five_images(browser, api):
    """CORS on /status/ and /search/ (a JSON POST: a preflight first), absolute image URLs."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Front(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):  # noqa: N802
            body = (ORIGINAL_PAGE % api.url).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    front = ThreadingHTTPServer(("127.0.0.1", 0), Front)
    threading.Thread(target=front.serve_forever, daemon=True).start()
    context = browser.new_context()
    try:
        page = context.new_page()
        page.set_default_timeout(30_000)
        page.goto(f"http://127.0.0.1:{front.server_address[1]}/")  # another port: another origin
        query = api.gallery["stripes"][2]
        data_url = "data:image/png;base64," + base64.b64encode(query.read_bytes()).decode()
        page.evaluate("url => run(url)", data_url)
        page.wait_for_function("() => [...document.images].length === 5 && "
                               "[...document.images].every(i => i.complete && i.naturalWidth > 0)")
        count = httpx.get(api.url + "/api/v1/status").json()["count"]
        assert page.inner_text("#status").startswith(f"{count} images, cpu ")
        embed, search = page.inner_text("#times").split()
        assert embed.endswith("ms") and embed[:-2].isdigit() and search[:-2].isdigit()
        first = page.evaluate("() => document.images[0].src")
        assert httpx.get(first).content == query.read_bytes()  # the query itself comes first
    finally:
        context.close()
        front.shutdown()
        front.server_close()


def test_a_matched_part_is_outlined_on_its_result(browser, api_regions):
    """On a gallery keeping region vectors, a quarter of a gallery image finds it first, and its
    card outlines the part that matched, on the picture; a whole-image match has no outline."""
    from PIL import Image

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    open_page(page, api_regions.url)
    path = api_regions.gallery["indexed"][2]
    image = Image.open(path).convert("RGB")
    quarter = encode(image.crop((image.width // 2, image.height // 2, image.width, image.height)))
    page.set_input_files("#file", files=[{"name": "part.png", "mimeType": "image/png", "buffer": quarter}])
    _results_for(page, path)
    first = _first_card(page)
    outline = first.locator(".matched")
    outline.wait_for(state="visible")
    # Both rectangles in one go (the page may still be scrolling): the picture is square, so all of
    # the image box is picture, and its bottom-right quarter is outlined.
    frame, box = first.evaluate("card => [card.querySelector('img'), card.querySelector('.matched')].map("
                                "e => e.getBoundingClientRect().toJSON())")
    for got, want in ((box["x"], frame["x"] + frame["width"] / 2), (box["y"], frame["y"] + frame["height"] / 2),
                      (box["width"], frame["width"] / 2), (box["height"], frame["height"] / 2)):
        assert abs(got - want) <= 3, (box, frame)
    assert "a part matched" in first.locator(".score").inner_text()
    page.set_input_files("#file", files=[{"name": "whole.png", "mimeType": "image/png", "buffer": path.read_bytes()}])
    page.wait_for_function("() => document.querySelector('#results-title').textContent === 'Results for whole.png'")
    _results_for(page, path)
    assert _first_card(page).locator(".matched").is_hidden()
    context.close()
