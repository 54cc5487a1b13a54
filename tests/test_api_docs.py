"""The API's schema and docs: the README's route table against /openapi.json, and /docs in a
real browser (Chromium), offline and under the service's Content-Security-Policy."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_routes() -> set[tuple[str, str]]:
    text = README.read_text()
    section = text[text.index("## HTTP API"):text.index("## Ingesting a library")]
    found = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            first_cell = line.split("|")[1]
            found |= {(method, path) for method, path in re.findall(r"`(GET|POST|DELETE|PUT|PATCH) ([^`]+)`",
                                                                     first_cell)}
    return found


def schema_routes(schema: dict) -> set[tuple[str, str]]:
    return {(method.upper(), re.sub(r"\{(\w+):path\}", r"{\1}", path))
            for path, item in schema["paths"].items() for method in item}


def test_the_readme_route_table_matches_the_schema():
    from deployments.ingress import app

    schema = app.openapi()
    assert readme_routes() == schema_routes(schema)
    for path, item in schema["paths"].items():
        for method, op in item.items():
            assert op.get("summary"), (method, path)
            assert "200" in op["responses"] or "201" in op["responses"], (method, path)


def test_the_served_schema_documents_every_route_and_its_errors(api):
    schema = httpx.get(api.url + "/openapi.json").json()
    assert schema_routes(schema) == readme_routes()
    search = schema["paths"]["/api/v1/search"]["post"]
    assert set(search["requestBody"]["content"]) == {"multipart/form-data", "application/json", "image/*"}
    assert {"400", "413", "415", "422", "503"} <= set(search["responses"])
    error = schema["components"]["schemas"]["ErrorDetail"]["properties"]
    assert {"code", "message", "request_id"} <= set(error)


@pytest.fixture
def page(browser):
    context = browser.new_context()
    context.route(re.compile(r"^(?!http://127\.0\.0\.1)"), lambda route: route.abort())  # offline: nothing else
    p = context.new_page()
    yield p
    context.close()


def test_docs_render_in_chromium_offline_under_the_csp(page, api):
    violations = []
    page.on("console", lambda msg: violations.append(msg.text) if "Content Security Policy" in msg.text else None)
    page.goto(api.url + "/docs")
    page.wait_for_selector(".opblock-summary-path", timeout=30_000)
    paths = page.locator(".opblock-summary-path").all_inner_texts()
    assert any("/api/v1/search" in p for p in paths) and any("/status/" in p for p in paths)
    assert page.locator(".info .title").inner_text().startswith("Lookalike")
    assert violations == []
