"""Generated test images: labelled classes of simple drawings, and broken files of every kind."""

from __future__ import annotations

import io
import random
import struct
import zlib
from pathlib import Path

from PIL import Image, ImageDraw

# label -> (shape, colour). Classes differ in shape and colour so that any decent embedding
# separates them; variations inside a class differ in size, position and shade.
CLASSES = {
    "circles": ("circle", (220, 40, 40)),
    "squares": ("square", (40, 90, 220)),
    "triangles": ("triangle", (30, 160, 60)),
    "stripes": ("stripes", (230, 160, 20)),
    "checkers": ("checker", (120, 40, 160)),
    "rings": ("ring", (20, 150, 160)),
}


def draw(shape: str, colour: tuple[int, int, int], seed: int, size: int = 160) -> Image.Image:
    rnd = random.Random(seed)
    shade = tuple(max(0, min(255, c + rnd.randint(-25, 25))) for c in colour)
    img = Image.new("RGB", (size, size), (255, 255, 255))
    d = ImageDraw.Draw(img)
    r = rnd.randint(size // 4, size // 3)
    cx, cy = rnd.randint(r + 4, size - r - 4), rnd.randint(r + 4, size - r - 4)
    if shape == "circle":
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=shade)
    elif shape == "ring":
        d.ellipse((cx - r, cy - r, cx + r, cy + r), outline=shade, width=max(4, r // 4))
    elif shape == "square":
        d.rectangle((cx - r, cy - r, cx + r, cy + r), fill=shade)
    elif shape == "triangle":
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=shade)
    elif shape == "stripes":
        step = rnd.randint(10, 16)
        for x in range(0, size, step * 2):
            d.rectangle((x, 0, x + step - 1, size), fill=shade)
    elif shape == "checker":
        step = rnd.randint(14, 22)
        for y in range(0, size, step):
            for x in range(0, size, step):
                if (x // step + y // step) % 2 == 0:
                    d.rectangle((x, y, x + step - 1, y + step - 1), fill=shade)
    return img


def collage(left: Path, right: Path) -> bytes:
    """Two images side by side on a 330x160 white canvas as PNG: ``left`` at x 0-159, ``right``
    at x 170-329, each resized to 160 px square."""
    canvas = Image.new("RGB", (330, 160), (255, 255, 255))
    canvas.paste(Image.open(left).convert("RGB").resize((160, 160)), (0, 0))
    canvas.paste(Image.open(right).convert("RGB").resize((160, 160)), (170, 0))
    return encode(canvas, "PNG")


def encode(img: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def make_gallery(root: Path, per_class: int = 5) -> dict[str, list[Path]]:
    """``root/<label>/<label>_<i>.(png|jpg)``; returns label -> files."""
    files: dict[str, list[Path]] = {}
    for c, (label, (shape, colour)) in enumerate(CLASSES.items()):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            fmt, ext = ("JPEG", "jpg") if i % 2 else ("PNG", "png")
            path = root / label / f"{label}_{i}.{ext}"
            path.write_bytes(encode(draw(shape, colour, seed=1000 * c + i), fmt, **({"quality": 92} if ext == "jpg" else {})))
            files.setdefault(label, []).append(path)
    return files


def png_with_size(width: int, height: int) -> bytes:
    """A small valid PNG whose header claims width x height (a decompression bomb's header)."""
    data = bytearray(encode(Image.new("RGB", (8, 8), (0, 0, 0))))
    ihdr = 8  # after the signature: length(4) 'IHDR'(4) data(13) crc(4)
    data[ihdr + 8: ihdr + 16] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr + 4: ihdr + 21])) & 0xFFFFFFFF
    data[ihdr + 21: ihdr + 25] = struct.pack(">I", crc)
    return bytes(data)


def truncated_jpeg() -> bytes:
    full = encode(draw("circle", (10, 10, 200), seed=7, size=256), "JPEG", quality=95)
    return full[: len(full) // 2]


def jpeg_with_orientation(img: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(img, "JPEG", exif=exif, quality=95)


def broken_files(root: Path) -> dict[str, str]:
    """Write one file per kind of bad input; returns file name -> expected skip code."""
    root.mkdir(parents=True, exist_ok=True)
    cases = {
        "empty.jpg": (b"", "empty_input"),
        "text.png": (b"this is not an image at all\n" * 10, "unsupported_media_type"),
        "truncated.jpg": (truncated_jpeg(), "invalid_image"),
        "bomb.png": (png_with_size(20000, 20000), "too_large"),
        "tiny.png": (encode(Image.new("RGB", (2, 2))), "invalid_image"),
    }
    for name, (data, _) in cases.items():
        (root / name).write_bytes(data)
    return {name: code for name, (_, code) in cases.items()}


def messy_source(target: Path, gallery_root: Path) -> tuple[dict[str, str], Path, Path]:
    """The gallery plus every kind of bad file, a copy of one image under another label, a
    hidden folder and a non-image extension. Returns (expected skip codes by file name,
    the copy, the file it copies)."""
    import shutil

    shutil.copytree(gallery_root, target)
    expected_skips = broken_files(target / "broken")
    original, copy = target / "rings" / "rings_0.png", target / "circles" / "same_bytes_as_a_ring.png"
    shutil.copy(original, copy)
    (target / ".cache").mkdir()
    shutil.copy(target / "rings" / "rings_1.jpg", target / ".cache" / "hidden.jpg")
    (target / "notes.txt").write_text("not an image extension: not listed")
    return expected_skips, copy, original
