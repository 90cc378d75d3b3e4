"""Fuzzing the image-decoding entry point (hypothesis, bounded): whatever the bytes, decode_image
returns an RGB uint8 image within the pixel cap or raises ImageError; never anything else, never a
hang (each example is a few KB)."""

import io

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from segsearch.errors import ImageError
from segsearch.images import decode_image

CAP = 2_000_000


def _seed_files():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
    out = []
    for fmt, mode in [
        ("PNG", "RGB"),
        ("JPEG", "RGB"),
        ("WEBP", "RGB"),
        ("GIF", "P"),
        ("BMP", "RGB"),
        ("TIFF", "RGB"),
        ("PNG", "RGBA"),
        ("JPEG", "CMYK"),
        ("PNG", "I;16"),
    ]:
        buf = io.BytesIO()
        im = Image.fromarray(a).convert(mode) if mode != "I;16" else Image.fromarray(a[..., 0].astype(np.uint16) * 200)
        im.save(buf, format=fmt)
        out.append(buf.getvalue())
    return out


SEEDS = _seed_files()


def check(data: bytes) -> None:
    try:
        d = decode_image(data, max_pixels=CAP)
    except ImageError as exc:
        assert str(exc)
        return
    assert d.rgb.dtype == np.uint8 and d.rgb.ndim == 3 and d.rgb.shape[2] == 3
    assert d.width * d.height <= CAP and d.rgb.shape[:2] == (d.height, d.width)


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(data=st.binary(max_size=4096))
def test_random_bytes(data):
    check(data)


@settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(
    seed=st.sampled_from(SEEDS),
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=12),
    cut=st.one_of(st.none(), st.integers(0, 10_000)),
)
def test_mutated_real_files(seed, edits, cut):
    """Byte flips in headers and data, and truncation, of valid files of every supported format."""
    b = bytearray(seed)
    for pos, val in edits:
        b[pos % len(b)] = val
    if cut is not None:
        b = b[: cut % (len(b) + 1)]
    check(bytes(b))
