import io
import numpy as np
import pytest
from PIL import Image

from lookalike import errors
from lookalike.embedding.images import Box, content_id, draft_size, fit_square, open_image, prepare
from lookalike.settings import ImageLimits

from harness.images import draw, encode, jpeg_with_orientation, png_with_size, truncated_jpeg

LIMITS = ImageLimits(max_bytes=5_000_000, max_pixels=10_000_000, min_side=8, max_aspect_ratio=0)


def test_prepare_gives_model_sized_uint8_and_content_id():
    data = encode(draw("circle", (200, 0, 0), seed=1, size=300), "PNG")
    prepared = prepare(data, 224, LIMITS)
    assert prepared.pixels.shape == (224, 224, 3) and prepared.pixels.dtype == np.uint8
    assert prepared.format == "PNG" and prepared.extension == ".png" and prepared.content_type == "image/png"
    assert prepared.id == content_id(data) and 0 <= prepared.id < 2**63
    assert prepared.id != content_id(data + b"\0")


def test_exif_orientation_is_applied():
    # A wide image whose EXIF says "rotate 90": decoded upright it is tall.
    img = Image.new("RGB", (120, 60), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 60, 60))  # left half blue
    oriented, fmt = open_image(jpeg_with_orientation(img, 6), LIMITS)
    assert fmt == "JPEG"
    assert oriented.size == (60, 120)
    top = np.asarray(oriented.convert("RGB"))[5, 30]
    assert top[2] > 200 and top[0] < 60  # the blue half is now on top


def test_alpha_is_composited_on_white_and_padding_is_white():
    rgba = Image.new("RGBA", (100, 50), (0, 0, 0, 0))  # fully transparent, wide
    rgba.paste((0, 0, 0, 255), (40, 10, 60, 40))  # an opaque black block
    pixels = prepare(encode(rgba, "PNG"), 64, LIMITS).pixels
    assert (pixels[0, 0] == 255).all()  # padding (top band) is white
    assert (pixels[20, 5] >= 250).all()  # transparent area became white, not black
    assert (pixels[32, 32] < 30).all()  # the opaque block stays black


@pytest.mark.parametrize("mode", ["L", "P", "LA", "CMYK", "I;16"])
def test_any_mode_becomes_rgb(mode):
    img = draw("square", (10, 120, 200), seed=3).convert("RGB")
    if mode == "I;16":
        img = Image.fromarray(np.asarray(img.convert("L"), dtype=np.uint16) * 257)  # 16-bit grey
    else:
        img = img.convert(mode)
    fmt = "JPEG" if mode == "CMYK" else ("TIFF" if mode in ("LA",) else "PNG")
    data = encode(img, fmt)
    assert Image.open(io.BytesIO(data)).mode.startswith(mode[0])
    pixels = prepare(data, 32, LIMITS).pixels
    assert pixels.shape == (32, 32, 3)
    assert pixels.min() < 128 < pixels.max()  # the drawing survived the conversion


@pytest.mark.parametrize("data, error", [
    (b"", errors.EmptyInput),
    (b"GIF89a not really", errors.UnsupportedMedia),
    (b"plain text, not an image" * 4, errors.UnsupportedMedia),
    (truncated_jpeg(), errors.InvalidImage),
    (png_with_size(20_000, 20_000), errors.TooLarge),
    (encode(Image.new("RGB", (4, 4))), errors.InvalidImage),
    (encode(Image.new("RGB", (10, 10)), "PDF"), errors.UnsupportedMedia),
])
def test_bad_input_raises_a_clear_domain_error(data, error):
    with pytest.raises(error) as info:
        prepare(data, 32, LIMITS)
    assert 400 <= info.value.status < 500 and info.value.message


def test_byte_limit():
    data = encode(draw("circle", (1, 2, 3), seed=2), "PNG")
    with pytest.raises(errors.TooLarge):
        prepare(data, 32, ImageLimits(max_bytes=len(data) - 1, max_pixels=10**7))


def test_large_jpeg_is_decoded_at_reduced_scale_with_the_same_result():
    big = draw("triangle", (0, 150, 0), seed=4, size=400).resize((2400, 2400))
    data = encode(big, "JPEG", quality=90)
    reduced, _ = open_image(data, LIMITS, draft=224)
    assert 224 <= reduced.size[0] < 2400 / 4  # DCT scaling: an eighth (300 px), never below what is needed
    whole = prepare(data, 224, LIMITS).pixels
    full = np.asarray(open_image(data, LIMITS)[0].convert("RGB").resize((224, 224), Image.BICUBIC))
    assert np.abs(whole.astype(int) - full.astype(int)).mean() < 4  # the model sees the same picture



@pytest.mark.parametrize("fit, decoded", [("pad", (250, 188)), ("crop", (500, 375)), ("stretch", (500, 375))])
def test_a_photo_is_decoded_at_the_least_scale_its_fit_needs(fit, decoded):
    """ImageNet's 500x375 JPEGs: pad scales the longest side to 224, so half the size covers
    it; crop needs the shortest side at 224 or more (stretch both): no reduction."""
    data = encode(draw("circle", (200, 30, 30), seed=5, size=400).resize((500, 375)), "JPEG", quality=90)
    limits = LIMITS.model_copy(update={"fit": fit})
    assert open_image(data, limits, draft=224)[0].size == decoded
    reduced = prepare(data, 224, limits).pixels
    full = np.asarray(fit_square(open_image(data, limits)[0].convert("RGB"), 224, fit))
    assert np.abs(reduced.astype(int) - full.astype(int)).mean() < 2  # the model sees the same picture


@pytest.mark.parametrize("size, want", [((500, 375), {"pad": (224, 168), "crop": (299, 224)}),
                                        ((375, 500), {"pad": (168, 224), "crop": (224, 299)}),
                                        ((3, 1000), {"pad": (1, 224), "crop": (224, 74667)})])
def test_draft_size_covers_what_each_fit_resizes_to(size, want):
    for fit, covered in want.items():
        assert draft_size(*size, 224, fit) == covered
    assert draft_size(*size, 224, "stretch") == (224, 224)

def test_pillows_bomb_guard_answers_in_our_words():
    """Past Pillow's own limit (2 x 89 Mpx) its error speaks of a 'DOS attack'; the answer names our limit."""
    with pytest.raises(errors.TooLarge) as info:
        prepare(png_with_size(20_000, 20_000), 32, LIMITS)
    assert info.value.message == "the image has too many pixels; the limit is 10000000 pixels"


@pytest.mark.parametrize("fit", ["pad", "crop", "stretch"])
def test_every_fit_gives_the_model_square(fit):
    wide = Image.new("RGB", (300, 100), (0, 0, 0))
    pixels = prepare(encode(wide, "PNG"), 64, LIMITS.model_copy(update={"fit": fit})).pixels
    assert pixels.shape == (64, 64, 3)
    black = (pixels < 30).all(axis=2).mean()
    # pad keeps the whole picture (a third of the square, white around it); crop and stretch fill it.
    assert black == pytest.approx(1 / 3, abs=0.03) if fit == "pad" else black == 1.0


def test_pad_scales_before_padding_so_memory_follows_the_output(monkeypatch):
    """A 20000x8 strip must never be padded to a 20000x20000 canvas (400 Mpx, 1.2 GB)."""
    from lookalike.embedding import images

    strip = encode(Image.new("RGB", (20000, 8), (0, 0, 0)))
    made = []
    real_new = Image.new
    monkeypatch.setattr(images.Image, "new", lambda mode, size, *a, **k: made.append(size) or real_new(mode, size, *a, **k))
    pixels = prepare(strip, 224, LIMITS).pixels
    assert pixels.shape == (224, 224, 3)
    assert made and max(w * h for w, h in made) <= 224 * 224


def test_an_extreme_aspect_ratio_is_refused_from_the_header(monkeypatch):
    """A 100000x8 PNG is a few KB; refused before decoding (its pixels are never loaded)."""
    strip = encode(Image.new("L", (100_000, 8), 0), "PNG")
    assert len(strip) < 10_000
    loaded = []
    monkeypatch.setattr(Image.Image, "load", lambda self: loaded.append(self.size))
    with pytest.raises(errors.InvalidImage) as err:
        prepare(strip, 224, LIMITS.model_copy(update={"max_aspect_ratio": 50}))
    assert err.value.code == "extreme_aspect_ratio" and err.value.status == 422 and not loaded
    monkeypatch.undo()
    assert prepare(encode(Image.new("RGB", (400, 8))), 224, LIMITS.model_copy(update={"max_aspect_ratio": 50})).pixels.shape == \
        (224, 224, 3)  # 50:1 itself passes
    assert prepare(strip, 224, LIMITS).pixels.shape == (224, 224, 3)  # 0: no limit


@pytest.mark.parametrize("text, want", [
    ("10,20,30,40", Box(10, 20, 30, 40, relative=False)),
    (" 0.25, 0.1 ,0.5,0.5", Box(0.25, 0.1, 0.5, 0.5, relative=True)),
    ("0,0,1.0,1", Box(0, 0, 1, 1, relative=True)),  # one decimal point makes it relative
])
def test_box_parses_pixels_or_fractions(text, want):
    assert Box.parse(text) == want


@pytest.mark.parametrize("text", ["", "1,2,3", "1,2,3,4,5", "a,b,c,d", "-1,0,10,10", "0,0,0,10", "10,10,5.5,5",
                                  "0.6,0,0.5,0.5", "nan,0,0.5,0.5", "0,0,inf,1"])
def test_a_bad_box_is_refused_with_the_reason(text):
    with pytest.raises(ValueError):
        Box.parse(text)


def test_a_box_searches_by_that_part_of_the_oriented_image():
    # A wide image, EXIF "rotate 90": upright it is 60x120, blue on top, red below.
    img = Image.new("RGB", (120, 60), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 60, 60))
    data = jpeg_with_orientation(img, 6)
    for box in (Box.parse("0,0,60,60"), Box.parse("0.0,0.0,1.0,0.5")):
        top = prepare(data, 32, LIMITS, box)
        assert top.id == content_id(data)  # the whole file's id
        assert (top.pixels[..., 2] > 200).all() and (top.pixels[..., 0] < 60).all()  # all blue: no padding
    bottom = prepare(data, 32, LIMITS, Box.parse("0,60,60,60")).pixels
    assert (bottom[..., 0] > 200).all() and (bottom[..., 2] < 60).all()
    assert (prepare(data, 32, LIMITS, Box.parse("0.0,0.5,1.0,0.5")).pixels == bottom).all()  # up to the edge
    # Past the right or bottom edge (never clipped to another part than the one asked for); too small.
    for outside in ("60,0,10,10", "0,120,10,10", "0,60,600,600", "0,60,61,60", "50,0,11,10", "0,0,4,60",
                    "0,0,99999999999999999999,1"):  # past int64: refused as outside, not a crash
        with pytest.raises(errors.InvalidImage) as err:
            prepare(data, 32, LIMITS, Box.parse(outside))
        assert err.value.code == "invalid_box" and "60x120" in err.value.message
