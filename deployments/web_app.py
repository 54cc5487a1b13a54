"""The HTTP application: the FastAPI app that ``@serve.ingress`` serves, with its middleware
(request ids, security headers, CORS for the read routes), static files, the one error shape,
and the routes that need no backend (the page, the docs, liveness). The API's routes are in
``ingress.py``, the original server's in ``original_routes.py`` (an APIRouter, included here).
"""

import logging
from pathlib import Path as FilePath

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from lookalike.errors import BackendUnavailable, LookalikeError, NotFound

from . import api_models as m
from . import api_responses as r
from . import original_routes
from .access import ReadCors
from .middleware import RequestContext, request_id

log = logging.getLogger("ray.serve")
WEB_DIR = FilePath(__file__).parent / "web"
VERSION = "v1"

app = FastAPI(
    title="Lookalike", version=VERSION, docs_url=None, redoc_url=None,
    summary="Reverse image search: send a picture, get the most similar images of the library.",
    description="Every error answers `{\"error\": {code, message, request_id}}` with a 4xx, or a 503 naming the "
                "backend that is down (with `Retry-After`). Write routes need the API key when the server has "
                "one (`Authorization: Bearer <key>` or `X-API-Key`), and are taken only from the server's own "
                "machine when it has none.",
)
app.add_middleware(ReadCors)  # origins: app.state.cors_origins, from the settings
app.add_middleware(RequestContext)  # outermost: every answer gets its request id and headers
if WEB_DIR.is_dir():
    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")


def _docs_assets() -> FilePath | None:
    """Swagger UI's files, from a package (no CDN: the page works offline and under our CSP)."""
    try:
        import fastapi_offline
    except ImportError:
        return None
    return FilePath(fastapi_offline.__file__).parent / "static"


if _docs_assets():
    app.mount("/docs-assets", StaticFiles(directory=_docs_assets()), name="docs-assets")


app.include_router(original_routes.router)
ORIGINAL_PATHS = {route.path for route in original_routes.router.routes}  # their errors keep its shape


def is_original_route(request: Request) -> bool:
    return request.url.path.removeprefix(request.scope.get("root_path", "")) in ORIGINAL_PATHS


# -- errors: one JSON shape, a request id, nothing internal ---------------------------------------
def error_response(exc: LookalikeError, request: Request) -> JSONResponse:
    body: dict = {"error": {**exc.to_dict(), "request_id": request_id(request.scope)}}
    if is_original_route(request):  # the original's shape: {"ok": false, "result": why}
        body = {"ok": False, "result": exc.message, **body}
    headers = {}
    if exc.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(exc, BackendUnavailable):
        headers["Retry-After"] = str(exc.retry_after_s)
    return JSONResponse(body, status_code=exc.status, headers=headers)


@app.exception_handler(LookalikeError)
async def _on_error(request: Request, exc: LookalikeError) -> JSONResponse:
    if exc.status >= 500:
        log.warning("request %s: %s %s -> %d %s %s", request_id(request.scope), request.method, request.url.path,
                    exc.status, exc.message, getattr(exc, "detail", ""))
    return error_response(exc, request)


@app.exception_handler(HTTPException)
async def _on_http_error(request: Request, exc: HTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    err = LookalikeError(str(exc.detail or ""), code=code)
    err.status = exc.status_code
    return error_response(err, request)


@app.exception_handler(RequestValidationError)
async def _on_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    return error_response(m.invalid_parameter(exc.errors()), request)  # the same words as the routes' own checks


@app.exception_handler(Exception)
async def _on_crash(request: Request, exc: Exception) -> JSONResponse:
    log.exception("request %s: unhandled error on %s %s", request_id(request.scope), request.method,
                  request.url.path)
    err = LookalikeError("internal error; the server's log has the details under this request id", code="internal")
    err.status = 500
    return error_response(err, request)


# -- the page, the docs, liveness ------------------------------------------------------------------
def _page(name: str) -> FileResponse:
    path = WEB_DIR / name
    if not path.is_file():
        raise NotFound("no web page is installed")
    return FileResponse(path, media_type="text/html")


@app.get("/", include_in_schema=False)
async def page() -> FileResponse:
    return _page("index.html")


@app.get("/duplicates", include_in_schema=False)
async def duplicates_page() -> FileResponse:
    """Near-duplicate review: groups side by side, delete the chosen ones."""
    return _page("duplicates.html")


@app.get("/docs", include_in_schema=False)
async def docs() -> HTMLResponse:
    """Swagger UI over /openapi.json, from local files and a script file (no inline code)."""
    if not _docs_assets():
        raise NotFound("the API docs page needs the fastapi-offline package; /openapi.json is served")
    return HTMLResponse(
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Lookalike API</title>'
        '<link rel="stylesheet" href="docs-assets/swagger-ui.css"></head><body><div id="swagger-ui"></div>'
        '<script src="docs-assets/swagger-ui-bundle.js"></script><script src="static/docs.js"></script>'
        '</body></html>')


@app.get("/healthz", response_model=r.Health, tags=["service"], summary="Liveness")
async def healthz() -> dict:
    return {"ok": True}
