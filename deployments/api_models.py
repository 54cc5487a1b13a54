"""The HTTP API's request models (pydantic): each route's parameters and body, checked once by
the route's dependency (``body``), and what /openapi.json and /docs show of them. The response
models are in ``api_responses.py``."""

import base64
import binascii
from typing import Annotated, Any, Awaitable, Callable, TypeVar

from pydantic import (
    AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, ValidationInfo, WithJsonSchema,
    field_validator, model_validator,
)
from starlette.requests import Request

from lookalike.embedding.images import Box
from lookalike.errors import BadRequest, EmptyInput, InvalidParameter
from lookalike.limits import LABEL_MAX_BYTES, TEXT_MAX_CHARS, utf8_len

from .inputs import read_fields

M = TypeVar("M", bound=BaseModel)
# The settings' bounds on parameters (api.top_k_max, api.page_size_max): set by the Ingress as it
# starts (``configure``), so that every check of a parameter, the framework's own included, has them.
LIMITS: dict[str, int] = {}


def configure(api) -> None:
    LIMITS.update(top_k_max=api.top_k_max, page_size_max=api.page_size_max)


# -- requests ----------------------------------------------------------------------------------
def _no_bool(value: Any) -> Any:
    if isinstance(value, bool):  # JSON true is not the number 1
        raise ValueError("must be a number, not a boolean")
    return value


def _blank_is_none(value: Any) -> Any:
    return None if value == "" else value  # an empty query or form field: not given


def _no_control_characters(value: str, allowed: str = "") -> None:
    if any((ord(c) < 32 or ord(c) == 127) and c not in allowed for c in value):
        raise ValueError("must not contain control characters")


def _label(value: str) -> str:
    if utf8_len(value) > LABEL_MAX_BYTES:
        raise ValueError(f"must be a label of at most {LABEL_MAX_BYTES} bytes (UTF-8)")
    _no_control_characters(value)
    return value


def _top_k_max(value: int | None, info: ValidationInfo) -> int | None:
    return value if value is None else _at_most(value, info, "top_k_max")


Number = BeforeValidator(_no_bool)
Blank = BeforeValidator(_blank_is_none)
Label = Annotated[str, AfterValidator(_label), Field(max_length=LABEL_MAX_BYTES)]


class SearchParams(BaseModel):
    """What a search takes beside the image: from the query string, or as fields of the JSON
    body or the form. One declaration: the schema shows it, and every route validates with it
    (``parse``)."""

    model_config = ConfigDict(extra="ignore")

    k: Annotated[int | None, Number, Blank, AfterValidator(_top_k_max)] = Field(
        None, ge=1, description="how many results (api.top_k_max at most)")
    filter: Annotated[Label | None, Blank] = Field(
        None, description=f"only images with this label ({LABEL_MAX_BYTES} bytes of UTF-8 at most)")
    min_score: Annotated[float | None, Number, Blank] = Field(None, ge=-1, le=1, allow_inf_nan=False,
                                                              description="cosine similarity at least")


def _box(value: str | None) -> Box | None:
    return None if value is None else Box.parse(value)


class ImageSearchParams(SearchParams):
    """A search by an uploaded image may take only a part of it."""

    box: Annotated[str | None, Blank] = Field(
        None, description="search by this part of the image only: `x,y,w,h` in the image's pixels (integers, "
                          "after its EXIF orientation), or as fractions of its width and height (`0.25,0.1,0.5,0.5`)",
        examples=["0.25,0.1,0.5,0.5"])

    @field_validator("box")
    @classmethod
    def _valid_box(cls, value: str | None) -> str | None:
        _box(value)  # the same parse the route uses: a bad box is a 422 with the reason
        return value

    @property
    def region(self) -> Box | None:
        return _box(self.box)


class PageParams(BaseModel):
    model_config = ConfigDict(extra="ignore")

    offset: int = Field(0, ge=0, le=10_000_000)
    limit: Annotated[int, AfterValidator(lambda v, info: _at_most(v, info, "page_size_max"))] = Field(
        50, ge=1, description="api.page_size_max at most")
    filter: Annotated[Label | None, Blank] = Field(None, description="only images with this label")


class DuplicateParams(BaseModel):
    model_config = ConfigDict(extra="ignore")

    threshold: Annotated[float | None, Number, Blank] = Field(
        None, ge=0, le=1, allow_inf_nan=False, description="cosine similarity at least (default: duplicates.threshold)")
    offset: int = Field(0, ge=0, le=10_000_000, description="groups to skip")
    limit: Annotated[int, AfterValidator(lambda v, info: _at_most(v, info, "page_size_max"))] = Field(
        20, ge=1, description="groups per page (api.page_size_max at most)")
    refresh: bool = Field(False, description="scan again even when the last scan still stands")


def _at_most(value: int, info: ValidationInfo, setting: str) -> int:
    bound = (info.context or LIMITS).get(setting)
    if bound is not None and value > bound:
        raise ValueError(f"must be at most {bound} (api.{setting})")
    return value


def _image(value: Any) -> Any:
    """An image field: bytes as sent (a file part, a raw body), or base64 text (a data: URL as
    browsers' FileReader makes, too)."""
    if value is None or isinstance(value, bytes):
        return value
    if not isinstance(value, str):
        raise ValueError("must be a base64 string")
    text = value.partition(",")[2] if value.startswith("data:") else value
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("'image' is not valid base64") from None


class ImageSource(BaseModel):
    """A request's image: its bytes (a file part, a raw body, or base64 in JSON or a form field),
    or a URL the server fetches."""

    model_config = ConfigDict(extra="ignore")

    image: Annotated[bytes | None, BeforeValidator(_image), WithJsonSchema(
        {"type": "string", "description": "base64 bytes, or a data: URL", "examples": ["iVBORw0KGgo..."]})] = None
    url: str | None = Field(None, description="an http(s) URL on a public address", examples=[
        "https://upload.wikimedia.org/wikipedia/commons/a/a3/Eq_it-na_pizza-margherita_sep2005_sml.jpg"])
    name: str = Field("", description="where it came from (a file part's name; kept as `source`)")

    def _asks_without_image(self) -> bool:
        """Whether the request asks something that needs no image (a search by words)."""
        return False

    @model_validator(mode="after")
    def _one_image(self) -> "ImageSource":
        if self._asks_without_image():
            return self
        if self.image is None and self.url is None:
            raise InvalidParameter("no image in the request: send a multipart file field 'image', JSON "
                                   "{\"image\": base64} or {\"url\": \"http...\"}, or a raw image/* body"
                                   + (", or 'text' to search by words" if "text" in type(self).model_fields else ""))
        if self.image is not None and not self.image:
            raise EmptyInput("the image is empty (0 bytes)")
        return self


class AddParams(BaseModel):
    model_config = ConfigDict(extra="ignore")

    label: Annotated[Label | None, Blank] = Field(
        None, description=f"the image's label (its class; {LABEL_MAX_BYTES} bytes of UTF-8 at most)")


def _text(value: str | None) -> str | None:
    if value is None:
        return None
    _no_control_characters(value, allowed="\t\n\r")  # words may come in lines
    return " ".join(value.split()) or None


class ImageJson(ImageSearchParams, ImageSource):
    """A search's request: the image (or words) and the search's parameters."""

    text: Annotated[str | None, Blank, AfterValidator(_text)] = Field(
        None, max_length=TEXT_MAX_CHARS, description="search by words instead of an image (a model with a text "
                                                     "tower: an immich-clip export)", examples=["a red bicycle"])

    def _asks_without_image(self) -> bool:
        if self.text is None:
            return False
        if self.image is not None or self.url is not None:
            raise InvalidParameter("send an image or 'text', not both")
        if self.box is not None:
            raise InvalidParameter("'box' is a part of an image; a search by 'text' has none")
        return True


class AddJson(ImageSource, AddParams):
    """An add's request: the image and its label."""


class OriginalSearchJson(ImageSource):
    """The original front end's body for /search/ and /insert/."""

    key: str | None = Field(None, description="the API key, when the server has one")
    topk: Annotated[int | None, Number, Blank, AfterValidator(_top_k_max)] = Field(
        None, ge=1, description="how many results (5 when not given)")
    label: Annotated[Label | None, Blank] = Field(None, description="/insert/: the image's label")


class OriginalKey(BaseModel):
    """The original's /indexing/ body."""

    model_config = ConfigDict(extra="ignore")
    key: str | None = Field(None, description="the API key, when the server has one")


def parse(model: type[M], fields: dict) -> M:
    """``fields`` (query string, JSON or form fields) validated by ``model``, with the settings'
    bounds (``LIMITS``). InvalidParameter (422) says what is wrong with the first bad field."""
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        raise invalid_parameter(exc.errors()) from None


def body(model: type[M]) -> Callable[[Request], Awaitable[M]]:
    """A route's dependency: what the request sent (its query string and its body, in any of the
    image's forms: ``inputs.read_fields``), checked once by ``model``."""
    async def checked(request: Request) -> M:
        words = "text" in model.model_fields and bool(request.query_params.get("text"))  # no body needed
        fields = await read_fields(request, request.app.state.settings, image=issubclass(model, ImageSource) and not words)
        return parse(model, fields)

    checked.__name__ = f"{model.__name__}_body"
    return checked


def invalid_parameter(errors: list[dict]) -> InvalidParameter:
    """The first of pydantic's (or FastAPI's) validation errors, as our 422: the field and why."""
    first = errors[0] if errors else {}
    where = ".".join(str(part) for part in first.get("loc", ()) if part not in ("query", "path", "body")) or "body"
    return InvalidParameter(f"'{where}': {first.get('msg', 'invalid').removeprefix('Value error, ')}")


def image_body(model: type[BaseModel]) -> dict:
    """openapi_extra for a route that takes an image in any of the four forms: the JSON body is
    ``model``; a multipart form has the same fields, with the image as a file; the parameters may
    come in the query string too."""
    schema = model.model_json_schema()
    fields = {name: prop for name, prop in schema["properties"].items() if name not in ("image", "url", "name")}
    parameters = [{"name": name, "in": "query", "required": False, "schema": prop,
                   "description": prop.get("description", "")} for name, prop in fields.items()]
    image_required = "text" not in fields  # a search may send words instead
    return {"parameters": parameters, "requestBody": {"required": image_required, "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["image"] if image_required else [], "properties": {
            "image": {"type": "string", "format": "binary"}, **fields}}},
        "application/json": {"schema": schema},
        "image/*": {"schema": {"type": "string", "format": "binary"}},
    }}}


class IndexRequest(BaseModel):
    """``POST /api/v1/index``'s optional body: without one, the index is rebuilt."""
    model_config = ConfigDict(extra="forbid")
    model: dict[str, Any] | None = Field(
        None, description="Re-embed the gallery under this model: fields of the `model` settings that differ from "
                          "the service's (`name`, `weights`, `pooling`, ...; `lookalike reembed` takes the same from "
                          "the configuration). The job runs in the cluster; searches keep answering from the "
                          "current model until the switch, and after it until the service runs the new model.",
        examples=[{"name": "immich-clip", "weights": "models/ViT-B-32__openai"}])
