"""Domain errors. Each carries a stable machine code and the HTTP status the API maps it to;
the ingest report uses the same codes as skip reasons."""

from __future__ import annotations


class LookalikeError(Exception):
    status: int = 400
    code: str = "bad_request"

    def __init__(self, message: str, *, code: str | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def to_dict(self) -> dict:
        return {"code": self.code, "message": self.message}

    # Exceptions cross process boundaries (Ray); keep the code through pickling.
    def __reduce__(self):
        return (_rebuild, (type(self), self.message, self.code, self.__dict__))


def _rebuild(cls, message, code, state):
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err.__dict__.update(state)
    err.message, err.code = message, code
    return err


class BadRequest(LookalikeError):
    status, code = 400, "bad_request"


class EmptyInput(BadRequest):
    code = "empty_input"


class Unauthorized(LookalikeError):
    status, code = 401, "unauthorized"


class Forbidden(LookalikeError):
    status, code = 403, "forbidden"


class NotFound(LookalikeError):
    status, code = 404, "not_found"


class Conflict(LookalikeError):
    """The request conflicts with the gallery's state (a re-embed running, nothing to do)."""

    status, code = 409, "conflict"


class TooLarge(LookalikeError):
    """Too many bytes or too many pixels (decompression bombs)."""

    status, code = 413, "too_large"


class UnsupportedMedia(LookalikeError):
    """Not an image, or an image format we do not decode."""

    status, code = 415, "unsupported_media_type"


class InvalidImage(LookalikeError):
    """Recognised as an image but cannot be decoded (truncated, corrupt, degenerate)."""

    status, code = 422, "invalid_image"


class InvalidParameter(LookalikeError):
    status, code = 422, "invalid_parameter"


class TextSearchUnavailable(InvalidParameter):
    """A text query to a gallery whose model has no text tower."""

    code = "text_search_unavailable"

    def __init__(self, model: str):
        super().__init__(f"the gallery's model {model} has no text tower, so it cannot search by words; a model "
                         "with one gives text search: a CLIP export (model.name immich-clip or open-clip:<architecture>), "
                         "or efficientnet-lite0 with model.class_words on (see the README, 'Models')")


class BackendUnavailable(LookalikeError):
    """A backend the request needs is down; names it. ``reason`` is shown to clients, so it
    never holds an address, a path or an exception's name; ``detail`` (those) goes to the log."""

    status, code = 503, "backend_unavailable"
    retry_after_s = 5

    def __init__(self, backend: str, reason: str = "", *, detail: str = ""):
        self.backend = backend
        self.detail = detail
        suffix = f": {reason}" if reason else ""
        super().__init__(f"{backend} is unavailable{suffix}")

    def to_dict(self) -> dict:
        return {**super().to_dict(), "backend": self.backend}


class GalleryMoved(BackendUnavailable):
    """The gallery was re-embedded under another model (or is being): a search with vectors of
    a model no version holds, or a write of the previous model's vectors. Answered while a
    rolling update replaces the replicas; a client retries."""

    code = "gallery_moved"

    def __init__(self, descriptor: str, recorded: str | None, *, writing: bool = False):
        if writing:
            reason = (f"{descriptor} vectors cannot be written to a gallery of {recorded} vectors: it was "
                      "re-embedded under another model and the service's replicas are moving to it; retry shortly")
        else:
            reason = f"no version of it holds {descriptor} vectors (it holds {recorded})"
        super().__init__("gallery", reason)


class ConfigurationError(LookalikeError):
    """The settings ask for something this installation cannot provide."""

    status, code = 500, "configuration_error"


class SchemaMismatch(ConfigurationError):
    code = "schema_mismatch"
