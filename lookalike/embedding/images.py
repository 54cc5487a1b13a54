"""The one image preprocessing path, shared by the query path and ingest.

bytes -> validated PIL image (size limits, decodable, EXIF-oriented) -> RGB with alpha
composited on white -> fitted to the model's square input (by default: longest side resized to
it, then padded on white; ``images.fit``) -> uint8 array (H, W, 3). Normalisation to the model's mean/std happens in the encoder,
on the batch, so that arrays cross process boundaries at one byte per channel.

Pure Pillow + NumPy: the HTTP ingress uses it without importing torch.
"""

from __future__ import annotations

import hashlib
import io
import math
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from lookalike.errors import EmptyInput, InvalidImage, TooLarge, UnsupportedMedia
from lookalike.settings import ImageLimits

# Formats we accept, with the extension used for stored copies.
EXTENSIONS = {
    "JPEG": ".jpg",
    "MPO": ".jpg",  # multi-picture JPEG written by many phone cameras
    "PNG": ".png",
    "WEBP": ".webp",
    "GIF": ".gif",
    "BMP": ".bmp",
    "TIFF": ".tif",
}
CONTENT_TYPES = {".jpg": "image/jpeg", ".png": "image/png", ".webp": "image/webp", ".gif": "image/gif",
                 ".bmp": "image/bmp", ".tif": "image/tiff"}
BACKGROUND = (255, 255, 255)
_ID_MASK = (1 << 63) - 1

# We enforce our own pixel limit before decoding; Pillow's global one stays as a backstop.
warnings.simplefilter("ignore", Image.DecompressionBombWarning)


@dataclass(frozen=True)
class Box:
    """A rectangle of the (EXIF-oriented) image to search by: ``x,y,w,h`` in pixels (integers),
    or as fractions of the width and height (numbers with a decimal point, 0..1)."""

    x: float
    y: float
    w: float
    h: float
    relative: bool

    @classmethod
    def parse(cls, text: str) -> "Box":
        parts = [p.strip() for p in text.split(",")]
        if len(parts) != 4:
            raise ValueError("a box is x,y,w,h: four numbers")
        relative = any("." in p for p in parts)
        try:
            values = [float(p) if relative else int(p) for p in parts]
        except ValueError:
            raise ValueError("a box is x,y,w,h: integers in pixels, or fractions (0.25) of the image") from None
        x, y, w, h = values
        # Only fractions can be nan or inf; pixels are Python integers of any size (one past int64
        # made numpy's isfinite raise: a 500), which ``pixels`` refuses as outside the image.
        if (relative and not all(map(math.isfinite, values))) or x < 0 or y < 0 or w <= 0 or h <= 0:
            raise ValueError("a box needs x, y >= 0 and a positive width and height")
        if relative and (x + w > 1.0 + 1e-6 or y + h > 1.0 + 1e-6):
            raise ValueError("a relative box must lie within the image (x + w <= 1, y + h <= 1)")
        return cls(x, y, w, h, relative)

    def pixels(self, width: int, height: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) in an image of this size; refuses a box that does not lie
        within it (a box clipped silently would search another part than the one asked for)."""
        sx, sy = (width, height) if self.relative else (1, 1)
        left, top = round(self.x * sx), round(self.y * sy)
        right, bottom = round((self.x + self.w) * sx), round((self.y + self.h) * sy)
        if right > width or bottom > height:
            raise InvalidImage(f"the box {self} runs outside the {width}x{height} image", code="invalid_box")
        return left, top, right, bottom

    def __str__(self) -> str:
        return ",".join(f"{v:g}" for v in (self.x, self.y, self.w, self.h))


@dataclass(frozen=True)
class PreparedImage:
    """An image ready for the encoder, with what the catalog and the store need to know."""

    id: int
    pixels: np.ndarray  # (size, size, 3) uint8
    format: str

    @property
    def extension(self) -> str:
        return EXTENSIONS[self.format]

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.extension]


def content_id(data: bytes) -> int:
    """A 63-bit id from the image bytes: the same file always gets the same id."""
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "big") & _ID_MASK


def open_image(data: bytes, limits: ImageLimits, *, draft: int | None = None) -> tuple[Image.Image, str]:
    """Decode and validate; returns a fully loaded, EXIF-oriented image (any mode) and its format.

    ``draft``: the side of the square the caller fits the image to (``limits.fit``); JPEGs are
    then decoded at a reduced scale (DCT scaling) that still covers what the fit needs, which
    makes photos two or more times the model's input several times cheaper to decode.
    ``limits.max_aspect_ratio``: the longest side over the shortest (0: no limit); a strip of a
    few bytes (a 100000x8 PNG) is refused from its header, before it is decoded.
    """
    max_bytes, max_pixels = limits.max_bytes, limits.max_pixels
    min_side, max_aspect_ratio = limits.min_side, limits.max_aspect_ratio
    if not data:
        raise EmptyInput("the image is empty (0 bytes)")
    if len(data) > max_bytes:
        raise TooLarge(f"the image is {len(data)} bytes; the limit is {max_bytes}")
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise UnsupportedMedia("not an image, or an image format that is not supported") from None
    except Image.DecompressionBombError:  # Pillow's own bound, far past ours; its words are not ours
        raise TooLarge(f"the image has too many pixels; the limit is {max_pixels} pixels") from None
    except Exception as exc:  # corrupt headers make Pillow raise many kinds of error
        raise InvalidImage(f"cannot read the image header: {exc}") from None
    if img.format not in EXTENSIONS:
        raise UnsupportedMedia(f"image format {img.format} is not supported; use one of {sorted(EXTENSIONS)}")
    width, height = img.size
    if width * height > max_pixels:
        raise TooLarge(f"the image is {width}x{height} pixels; the limit is {max_pixels} pixels")
    if min(width, height) < min_side:
        raise InvalidImage(f"the image is {width}x{height}; each side must be at least {min_side} pixels")
    if max_aspect_ratio and max(width, height) > max_aspect_ratio * min(width, height):
        raise InvalidImage(f"the image is {width}x{height}; its sides may differ at most {max_aspect_ratio:g} times",
                           code="extreme_aspect_ratio")
    fmt = img.format
    try:
        if draft and fmt in ("JPEG", "MPO"):
            img.draft("RGB", draft_size(width, height, draft, limits.fit))
        img.load()
        ImageOps.exif_transpose(img, in_place=True)  # (else a copy of the whole image, turned or not)
    except Image.DecompressionBombError:  # Pillow's own bound, far past ours; its words are not ours
        raise TooLarge(f"the image has too many pixels; the limit is {max_pixels} pixels") from None
    except Exception as exc:  # truncated / corrupt data: OSError, SyntaxError, ValueError, ...
        raise InvalidImage(f"cannot decode the image: {exc}") from None
    return img, fmt


def draft_size(width: int, height: int, size: int, fit: str) -> tuple[int, int]:
    """The least a width x height image may be decoded to and still cover what ``fit`` (FITS)
    resizes to a ``size`` square: pad scales its longest side to it, crop its shortest,
    stretch both sides. (ImageNet's 500x375 photos: half size for pad, full for crop.)"""
    if fit == "stretch":
        return size, size
    side = max(width, height) if fit == "pad" else min(width, height)
    return math.ceil(width * size / side), math.ceil(height * size / side)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any mode -> RGB; transparency is composited onto white, 16-bit is scaled down."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        top = 65535.0 if img.mode.startswith("I") else max(float(arr.max()), 1.0)
        img = Image.fromarray(np.clip(arr * (255.0 / top), 0, 255).astype(np.uint8), "L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img if img.mode == "RGBA" else img.convert("RGBA")  # (convert copies even to its own mode)
        canvas = Image.new("RGB", rgba.size, BACKGROUND)
        canvas.paste(rgba, mask=rgba)  # the mask is its alpha band
        return canvas
    return img.convert("RGB") if img.mode != "RGB" else img


FITS = ("pad", "crop", "stretch")


def _resize(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    return img if img.size == size else img.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)


def fit_square(img: Image.Image, size: int, fit: str = "pad") -> Image.Image:
    """An RGB image -> size x size. ``pad``: the whole picture, longest side scaled to ``size``,
    then centred on white (memory follows the output, not the input's aspect ratio); ``crop``:
    shortest side scaled to ``size``, the centre cut out; ``stretch``: scaled to the square."""
    width, height = img.size
    if fit == "stretch":
        return _resize(img, (size, size))
    scale = size / (max(width, height) if fit == "pad" else min(width, height))
    scaled = _resize(img, (max(1, round(width * scale)), max(1, round(height * scale))))
    w, h = scaled.size
    if fit == "crop":
        left, top = (w - size) // 2, (h - size) // 2
        return scaled.crop((left, top, left + size, top + size))
    if (w, h) == (size, size):
        return scaled
    canvas = Image.new("RGB", (size, size), BACKGROUND)
    canvas.paste(scaled, ((size - w) // 2, (size - h) // 2))
    return canvas


def to_model_input(img: Image.Image, size: int, fit: str = "pad") -> np.ndarray:
    """Any image -> (size, size, 3) uint8 RGB."""
    if fit not in FITS:
        raise ValueError(f"fit must be one of {FITS}, not {fit!r}")
    return np.asarray(fit_square(to_rgb(img), size, fit), dtype=np.uint8)


def crop_box(img: Image.Image, box: Box, min_side: int) -> Image.Image:
    left, top, right, bottom = box.pixels(*img.size)
    if min(right - left, bottom - top) < min_side:
        raise InvalidImage(f"the box is {right - left}x{bottom - top} pixels of the {img.width}x{img.height} image; "
                           f"each side must be at least {min_side} pixels", code="invalid_box")
    return img.crop((left, top, right, bottom))


def prepare_regions(data: bytes, size: int, limits: ImageLimits, boxes: list[Box]) -> np.ndarray:
    """The parts ``boxes`` of one image, each as a query box is prepared (cut out of the
    EXIF-oriented image, then fitted to the model's input): (len(boxes), size, size, 3) uint8.
    Decoded once. A part under ``limits.min_side`` is taken as it is (a gallery image's region,
    not a user's box)."""
    img, _ = open_image(data, limits)
    out = np.zeros((len(boxes), size, size, 3), np.uint8)
    try:
        for i, box in enumerate(boxes):
            left, top, right, bottom = box.pixels(*img.size)
            out[i] = to_model_input(img.crop((left, top, max(right, left + 1), max(bottom, top + 1))), size, limits.fit)
    except Exception as exc:
        raise InvalidImage(f"cannot convert the image: {exc}") from None
    return out


def prepare(data: bytes, size: int, limits: ImageLimits, box: Box | None = None) -> PreparedImage:
    """bytes -> the model's ``size`` x ``size`` input, within ``limits`` (settings.images).
    ``box``: only that part of the image (its id stays the whole file's).
    Raises a LookalikeError subclass on bad input."""
    img, fmt = open_image(data, limits, draft=None if box else size)
    if box is not None:
        img = crop_box(img, box, limits.min_side)
    try:
        pixels = to_model_input(img, size, limits.fit)
    except Exception as exc:
        raise InvalidImage(f"cannot convert the image: {exc}") from None
    return PreparedImage(id=content_id(data), pixels=pixels, format=fmt)
