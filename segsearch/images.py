"""Decode any supported image file into an orientation-corrected RGB array.

Used by the indexer and (later) the API's uploads, so both apply the same rules:
EXIF orientation applied, every mode converted to 8-bit RGB, first frame of animations,
and a pixel cap checked from the header before any pixel is decoded (decompression bombs).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from segsearch.errors import ImageError, ImageTooLarge
from segsearch.exif import PhotoMeta, read_meta

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".heic", ".heif"})
_heif_registered = False


def _register_heif() -> None:
    global _heif_registered
    if not _heif_registered:
        try:
            import pillow_heif

            pillow_heif.register_heif_opener()
        except ImportError:  # pragma: no cover - dependency is declared
            pass
        _heif_registered = True


@dataclass
class DecodedImage:
    rgb: np.ndarray  # (H, W, 3) uint8, orientation-corrected
    format: str
    meta: PhotoMeta = PhotoMeta()  # capture time, camera, GPS from EXIF (empty when absent)

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    def pil(self) -> Image.Image:
        return Image.fromarray(self.rgb)


def decode_image(
    data: bytes, *, max_pixels: int = 100_000_000, cap_name: str = "SEGSEARCH_MAX_IMAGE_PIXELS"
) -> DecodedImage:
    """Decode ``data``; raises ``ImageError`` with a human-readable reason on any problem."""
    if not data:
        raise ImageError("empty file (0 bytes)")
    _register_heif()
    try:
        with warnings.catch_warnings():
            # our own cap below replaces PIL's DecompressionBombWarning/Error
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            old_cap = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
            try:
                im = Image.open(io.BytesIO(data))
            finally:
                Image.MAX_IMAGE_PIXELS = old_cap
            fmt = im.format or "unknown"
            w, h = im.size
            if w <= 0 or h <= 0:
                raise ImageError(f"invalid image size {w}x{h}")
            if w * h > max_pixels:
                raise ImageTooLarge(
                    f"image is {w}x{h} = {w * h:,} pixels, above the cap of {max_pixels:,} "
                    f"({cap_name}; checked from the header, before decoding)"
                )
            im.seek(0)  # first frame of GIF/WebP/TIFF animations
            im.load()
            meta = read_meta(im)
            try:
                im = ImageOps.exif_transpose(im)
            except Exception:  # noqa: BLE001 - corrupt EXIF: keep the pixels as stored
                pass
            rgb = to_rgb(im)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError("not a recognised image format") from None
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise ImageError(f"cannot decode image: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - decoders raise many types on hostile input
        raise ImageError(f"cannot decode image: {type(exc).__name__}: {exc}") from None
    return DecodedImage(rgb=rgb, format=fmt, meta=meta)


# Rows converted per step for 32-bit integer and float images (a block of 256 rows of a 20,000 px
# wide image is 20 MB of float32): the conversion never holds a float copy of the whole image.
TO_RGB_ROWS = 256


def to_rgb(im: Image.Image) -> np.ndarray:
    """Any PIL mode to (H, W, 3) uint8. Transparency is composited over white;
    high-bit-depth images are rescaled, not clipped."""
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(im)
        g = np.empty(a.shape, np.uint8)
        if mode.startswith("I;16"):
            np.floor_divide(a, 257, out=g, casting="unsafe")  # 0..65535 -> 0..255, integers only
        else:
            lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
            scale = 255.0 / (hi - lo) if hi > lo else 0.0
            for r in range(0, a.shape[0], TO_RGB_ROWS):  # float32 a block of rows at a time: memory ~ the image
                block = (a[r : r + TO_RGB_ROWS].astype(np.float32) - np.float32(lo)) * np.float32(scale)
                g[r : r + TO_RGB_ROWS] = np.clip(np.nan_to_num(block), 0, 255).astype(np.uint8)
        return np.repeat(g[:, :, None], 3, axis=2)
    if mode == "P" and "transparency" in im.info or mode in ("PA",):
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "La", "RGBa"):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, im)
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im, dtype=np.uint8).copy()


def check_sam_view(width: int, height: int, input_size: int) -> None:
    """SAM resizes the longer side to its input size (1024 px for Meta's models); an image so thin
    that its shorter side would round to no pixel at all cannot be segmented: say so."""
    short, long = min(width, height), max(width, height)
    if int(short * input_size / long + 0.5) < 1:
        raise ImageError(
            f"image is {width}x{height}: too thin to segment (its shorter side would be under one "
            f"pixel at SAM's {input_size}-px input; aspect ratio {long / short:.0f}:1)"
        )
