"""Decoding: every supported format and mode ends as orientation-corrected 8-bit RGB;
bad files raise ImageError with a reason."""

import io

import numpy as np
import pytest
from conftest import png_bytes, scene
from PIL import Image

from segsearch.errors import ImageError, ImageTooLarge
from segsearch.images import decode_image


def encoded(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize(
    "fmt,ext_kw",
    [
        ("PNG", {}),
        ("JPEG", {"quality": 95}),
        ("WEBP", {"lossless": True}),
        ("BMP", {}),
        ("TIFF", {}),
        ("GIF", {}),
        ("HEIF", {"quality": 95}),
    ],
)
def test_formats_decode_to_rgb(fmt, ext_kw):
    a = scene()
    d = decode_image(encoded(Image.fromarray(a), fmt, **ext_kw))
    assert d.rgb.shape == a.shape and d.rgb.dtype == np.uint8
    # the red box is still red where it was (lossy formats: approximately)
    assert d.rgb[45, 60, 0] > 150 and d.rgb[45, 60, 1] < 90
    assert d.rgb[5, 5, 0] < 90


@pytest.mark.parametrize(
    "orientation,expected_size",
    [(1, (160, 120)), (3, (160, 120)), (6, (120, 160)), (8, (120, 160)), (2, (160, 120)), (5, (120, 160))],
)
def test_exif_orientation_is_applied(orientation, expected_size):
    upright = scene()
    # store pixels so that applying the EXIF orientation gives back `upright`
    inverse = {
        1: None,
        2: Image.FLIP_LEFT_RIGHT,
        3: Image.ROTATE_180,
        5: Image.TRANSPOSE,
        6: Image.ROTATE_90,
        8: Image.ROTATE_270,
    }[orientation]
    im = Image.fromarray(upright)
    stored = im.transpose(inverse) if inverse is not None else im
    exif = Image.Exif()
    exif[0x0112] = orientation
    d = decode_image(encoded(stored, "PNG", exif=exif.tobytes()))
    assert (d.width, d.height) == (160, 120)
    assert np.array_equal(d.rgb, upright)
    assert stored.size == expected_size


def test_cmyk_jpeg():
    im = Image.fromarray(scene()).convert("CMYK")
    d = decode_image(encoded(im, "JPEG", quality=95))
    assert d.rgb.shape == (120, 160, 3)
    assert d.rgb[45, 60, 0] > 150


def test_16bit_grey_is_rescaled_not_clipped():
    a = (np.linspace(0, 65535, 160)[None, :].repeat(120, 0)).astype(np.uint16)
    d = decode_image(encoded(Image.fromarray(a), "PNG"))
    assert d.rgb.shape == (120, 160, 3)
    assert d.rgb[0, 0, 0] == 0 and d.rgb[0, -1, 0] == 255
    assert 100 < d.rgb[0, 80, 0] < 160  # mid-grey stays mid-grey (a plain convert would give 255)


def test_palette_with_transparency_composited_on_white():
    im = Image.fromarray(scene()).convert("P")
    im.info["transparency"] = im.getpixel((0, 0))
    d = decode_image(encoded(im, "PNG", transparency=im.getpixel((0, 0))))
    assert tuple(d.rgb[0, 0]) == (255, 255, 255)
    assert d.rgb[45, 60, 0] > 150


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "1", "I", "F"])
def test_other_modes(mode):
    im = Image.fromarray(scene()).convert(mode)
    fmt = "TIFF" if mode in ("I", "F") else "PNG"
    d = decode_image(encoded(im, fmt))
    assert d.rgb.shape == (120, 160, 3) and d.rgb.dtype == np.uint8


def test_animated_gif_takes_first_frame():
    frames = [Image.fromarray(scene(color=c)) for c in [(220, 30, 30), (30, 220, 30)]]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    d = decode_image(buf.getvalue())
    assert d.rgb[45, 60, 0] > 150 and d.rgb[45, 60, 1] < 90


def test_bad_inputs_raise_clear_errors():
    good = png_bytes(scene())
    with pytest.raises(ImageError, match="empty"):
        decode_image(b"")
    with pytest.raises(ImageError, match="not a recognised image"):
        decode_image(b"this is not an image at all" * 10)
    with pytest.raises(ImageError):
        decode_image(good[: len(good) // 2])  # truncated PNG
    jpeg = encoded(Image.fromarray(scene()), "JPEG")
    with pytest.raises(ImageError):
        decode_image(jpeg[:200])


def test_decompression_bomb_is_refused_before_decoding():
    # a tiny file that claims a huge image
    bomb = encoded(Image.new("1", (20_000, 20_000)), "PNG")
    assert len(bomb) < 200_000
    with pytest.raises(ImageTooLarge, match="400,000,000 pixels"):
        decode_image(bomb, max_pixels=100_000_000)
    assert decode_image(png_bytes(scene()), max_pixels=160 * 120).width == 160
    with pytest.raises(ImageTooLarge):
        decode_image(png_bytes(scene()), max_pixels=160 * 120 - 1)
