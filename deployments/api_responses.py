"""The HTTP API's response models (pydantic): what the routes are checked to return, and what
/openapi.json and /docs show of it; ``errors`` documents a route's error answers (every error
has the one body, ``ErrorResponse``)."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ImageEntry(BaseModel):
    id: str = Field(description="63-bit id from the image's SHA-256, as a string", examples=["4306154112467219081"])
    key: str = Field(description="the object's key in the image store")
    label: str
    source: str = Field(description="where the image came from: its file name, or, for operators (who may "
                                    "write), the path, key or URL as recorded")
    url: str = Field(description="where a browser loads the image")


class Hit(ImageEntry):
    distance: float = Field(description="squared L2 distance of the unit vectors")
    score: float = Field(description="cosine similarity, -1..1 (the results' order); for a result found by a "
                         "part of it, that part's less model.regions.margin")
    region: str | None = Field(None, description="the part of the image that matched, x,y,w,h as fractions of its "
                               "width and height, where the gallery keeps region vectors (model.regions); "
                               "null: the whole image", examples=["0.5,0,0.5,0.5"])


class Timings(BaseModel):
    model_config = ConfigDict(extra="allow")
    decode_ms: float | None = None
    embed_ms: float | None = None
    search_ms: float | None = None
    total_ms: float | None = None
    fetch_ms: float | None = None


class SearchResponse(BaseModel):
    results: list[Hit]
    timings: Timings


class SimilarResponse(SearchResponse):
    id: str


class AddResponse(ImageEntry):
    created: bool = Field(description="true: stored now (201); false: it was there already (200)")


class DeleteResponse(BaseModel):
    deleted: str
    key: str
    object_deleted: bool = Field(description="false when the original was indexed in place and is kept")


class ImagePage(BaseModel):
    items: list[ImageEntry]
    offset: int
    limit: int
    total: int


class DuplicateImage(ImageEntry):
    score: float = Field(description="its highest cosine similarity to another image of the group")


class DuplicateGroup(BaseModel):
    size: int
    top_score: float = Field(description="the group's closest pair")
    images: list[DuplicateImage] = Field(description="the best-connected image first")


class ScanProgress(BaseModel):
    threshold: float | None
    done: int = Field(description="images scanned so far")
    total: int


class DuplicatesResponse(BaseModel):
    state: Literal["done", "scanning"] = Field(
        description="done (200), or scanning (202): the scan goes on; ask again for its result")
    progress: ScanProgress | None = None
    threshold: float | None = None
    images: int | None = Field(None, description="images scanned")
    groups: int | None = Field(None, description="groups found (all pages)")
    duplicates: int | None = Field(None, description="images that could go: every group's members but one")
    seconds: float | None = Field(None, description="how long the scan took")
    offset: int | None = None
    limit: int | None = None
    items: list[DuplicateGroup] = Field(default_factory=list)


class IndexResponse(BaseModel):
    model_config = ConfigDict(extra="allow")
    state: Literal["done", "building"] = Field(
        description="done (200), or building (202): the rebuild goes on, searches keep answering meanwhile")
    index: dict
    seconds: float


class ReembedResponse(BaseModel):
    model_config = ConfigDict(extra="allow")
    state: Literal["staging", "reembedding", "done", "failed"] = Field(
        description="staging or reembedding (202): the job goes on (`GET /api/v1/status`: `reembed_job`); done or "
                    "failed: how the last re-embed for this model ended")
    name: str = Field(description="the model being re-embedded into")
    done: int = Field(description="images embedded so far")
    total: int | None = Field(None, description="images to embed (known once staged)")


class Status(BaseModel):
    model_config = ConfigDict(extra="allow")
    status: str = Field(description="ok, or degraded when a backend is down")
    count: int | None = Field(description="images in the collection")
    dimension: int
    model: dict
    index: dict | None
    milvus: dict
    store: dict
    version: str


class Health(BaseModel):
    ok: bool


class ErrorDetail(BaseModel):
    code: str = Field(description="stable machine code", examples=["invalid_image"])
    message: str
    request_id: str = Field(description="also in the X-Request-ID header and the server's log line")
    backend: str | None = Field(None, description="503 only: which backend is down")


class ErrorResponse(BaseModel):
    error: ErrorDetail


class OriginalSearchResponse(BaseModel):
    model_config = ConfigDict(extra="allow")  # image1 ... imageK: absolute URLs
    ok: bool
    embedding_time: int = Field(description="decode + embed, integer milliseconds")
    search_time: int = Field(description="Milvus search, integer milliseconds")


class OriginalStatus(Status):
    ok: bool
    entities_num: int | None
    cpu: float | None = Field(description="this machine's load (1-minute average over its CPUs), percent")
    memory: float | None = Field(description="this machine's memory in use, percent")
    gpu: str = Field(description="the Embedder's GPU, or none")


class OriginalOk(BaseModel):
    model_config = ConfigDict(extra="allow")
    ok: bool


def errors(*statuses: int) -> dict:
    """The documented error answers of a route (every error has the same body)."""
    what = {400: "bad input (malformed body, JSON, URL, or a URL that cannot be fetched)",
            401: "the API key is missing or wrong", 403: "a write refused (no API key, or another site's page)",
            404: "no such image or route", 409: "it conflicts with work already done or running",
            413: "too many bytes or pixels", 415: "not an image format it reads",
            422: "an invalid image or parameter", 503: "a backend is down (see `backend`; retry after Retry-After)"}
    return {s: {"model": ErrorResponse, "description": what[s]} for s in statuses}
