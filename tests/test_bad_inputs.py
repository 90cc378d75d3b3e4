"""A corpus of bad and unusual inputs, generated here (never downloaded). Through the indexer each
file is either indexed or recorded as failed with a clear reason, and the run goes on; through the
API every one gets a 2xx or a 4xx problem+json, never a 5xx."""

import io
import os
import struct
import zlib

import numpy as np
from conftest import png_bytes, scene
from PIL import Image

PROBLEM = "application/problem+json"


def _img(mode="RGB", size=(64, 48)):
    rng = np.random.default_rng(sum(size))
    a = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(a).convert(mode)


def _save(im, fmt, **kw):
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _png_header_only(w, h):
    """A valid PNG signature + IHDR claiming w×h, with one tiny compressed IDAT: a decompression bomb."""

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 1024))
        + chunk(b"IEND", b"")
    )


def _exif(orientation):
    ex = Image.Exif()
    ex[0x0112] = orientation
    return _save(_img(size=(80, 40)), "JPEG", exif=ex.tobytes())


def _animated(fmt):
    frames = [_img(size=(40, 30)) for _ in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, format=fmt, save_all=True, append_images=frames[1:], duration=50, loop=0)
    return buf.getvalue()


def _heic():
    import pillow_heif

    buf = io.BytesIO()
    pillow_heif.from_pillow(_img(size=(64, 64))).save(buf, quality=60)
    return buf.getvalue()


def _corrupt_exif():
    good = _exif(6)
    i = good.find(b"Exif\x00\x00")
    return good[: i + 6] + b"\xff" * 40 + good[i + 46 :]


def corpus():
    """name -> (file name, bytes, expected) with expected 'indexed', 'failed' or 'either'."""
    jpeg, png, webp = _save(_img(), "JPEG"), _save(_img(), "PNG"), _save(_img(), "WEBP")
    c = {
        "truncated_jpeg": ("trunc.jpg", jpeg[: len(jpeg) // 2], "either"),
        "truncated_png": ("trunc.png", png[: len(png) // 2], "failed"),
        "truncated_webp": ("trunc.webp", webp[: len(webp) // 2], "failed"),
        "zero_bytes": ("zero.jpg", b"", "failed"),
        "random_bytes": ("random.jpg", os.urandom(4096), "failed"),
        "text_named_png": ("notes.png", b"hello, I am not an image\n" * 20, "failed"),
        "png_bomb": ("bomb.png", _png_header_only(30000, 30000), "failed"),
        "tall_1x2000": ("tall.png", png_bytes(np.full((2000, 1, 3), 200, np.uint8)), "either"),
        "wide_3000x1": ("wide.png", png_bytes(np.full((1, 3000, 3), 90, np.uint8)), "either"),
        "one_pixel": ("one.png", png_bytes(np.full((1, 1, 3), 7, np.uint8)), "either"),
        "cmyk_jpeg": ("cmyk.jpg", _save(_img("CMYK"), "JPEG"), "indexed"),
        "grey16_png": (
            "g16.png",
            _save(Image.fromarray((np.arange(64 * 48).reshape(48, 64) * 20).astype(np.uint16)), "PNG"),
            "indexed",
        ),
        "palette_transparency": ("pal.png", _save(_img("P"), "PNG", transparency=0), "indexed"),
        "rgba_png": ("rgba.png", _save(_img("RGBA"), "PNG"), "indexed"),
        "la_png": ("la.png", _save(_img("LA"), "PNG"), "indexed"),
        "bilevel_png": ("bw.png", _save(_img("1"), "PNG"), "indexed"),
        "animated_gif": ("anim.gif", _animated("GIF"), "indexed"),
        "animated_webp": ("anim.webp", _animated("WEBP"), "indexed"),
        "corrupt_exif": ("badexif.jpg", _corrupt_exif(), "either"),
        "png_named_jpg": ("wrongext.jpg", png_bytes(scene()), "indexed"),
        "bmp": ("pic.bmp", _save(_img(), "BMP"), "indexed"),
        "tiff": ("pic.tiff", _save(_img(), "TIFF"), "indexed"),
        "heic": ("pic.heic", _heic(), "indexed"),
        "unicode_name": ("фото_写真_🙂.png", png_bytes(scene(color=(10, 200, 10))), "indexed"),
        "spaces_name": ("my holiday pic .png", png_bytes(scene(color=(10, 10, 200))), "indexed"),
        "newline_name": ("line\nbreak.png", png_bytes(scene(color=(200, 200, 10))), "indexed"),
    }
    for o in range(1, 9):
        c[f"exif_orientation_{o}"] = (f"exif{o}.jpg", _exif(o), "indexed")
    return c


def test_corpus_has_at_least_30_kinds():
    assert len(corpus()) + 3 >= 30  # + symlink loop, directory named .jpg, FIFO named .jpg (below)


def test_indexer_survives_the_corpus(settings, index, stores, tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    files = {}
    for kind, (name, data, expected) in corpus().items():
        p = lib / name
        p.write_bytes(data)
        files[str(p)] = (kind, expected)
    (lib / "loop").symlink_to(lib, target_is_directory=True)  # symlink loop: must not hang or recurse
    (lib / "folder.jpg").mkdir()  # a directory named like an image
    (lib / "folder.jpg" / "inside.png").write_bytes(png_bytes(scene(color=(240, 120, 20))))
    files[str(lib / "folder.jpg" / "inside.png")] = ("inside_dir_named_jpg", "indexed")
    os.mkfifo(lib / "pipe.jpg")  # a FIFO would block a naive reader forever

    settings = settings.model_copy(update={"max_image_pixels": 50_000_000})
    r = index(settings, [lib])
    failures = {f.path: f.error for f in r.failures}
    assert r.indexed + r.failed + r.skipped >= len(files)
    for path, (kind, expected) in files.items():
        if expected == "indexed":
            assert path not in failures, (kind, failures.get(path))
        elif expected == "failed":
            assert path in failures, kind
        if path in failures:
            msg = failures[path]
            assert msg and "Traceback" not in msg and len(msg) < 500, (kind, msg)
    assert "too large" in failures[str(lib / "bomb.png")] or "pixels" in failures[str(lib / "bomb.png")]
    assert failures.get(str(lib / "pipe.jpg")) == "not a regular file"
    # a second run changes nothing and loses nothing
    again = index(settings, [lib])
    assert again.indexed == 0
    catalog, _ = stores(settings)
    counts = catalog.counts()
    assert counts["indexed"] == r.indexed and counts["failed"] >= 1


def test_unreadable_deleted_and_changed_files(settings, index, stores, tmp_path, monkeypatch):
    """Permission denied (simulated: the tests run as root, for whom chmod 000 changes nothing), a file
    deleted after discovery, and a file rewritten between stat and read: each is handled, the run goes
    on, and the next run converges on what is on disk."""
    import builtins

    from segsearch.indexer.reader import Reader

    lib = tmp_path / "lib"
    locked = lib / "locked.png"
    gone = lib / "gone.png"
    changing = lib / "changing.png"
    ok = lib / "ok.png"
    for p, c in [(locked, (200, 0, 0)), (gone, (0, 200, 0)), (changing, (0, 0, 200)), (ok, (200, 200, 0))]:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(png_bytes(scene(color=c)))
    real_open, real_read = builtins.open, Reader.read

    def guarded_open(file, *a, **kw):
        if str(file) == str(locked):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *a, **kw)

    def read_after_change(self, path, looked, **kw):
        if path == gone and gone.exists():
            gone.unlink()  # deleted after discovery and stat, just before it is read
        if path == changing and not getattr(self, "_changed", False):
            self._changed = True
            changing.write_bytes(png_bytes(scene(color=(10, 240, 240), box=(5, 5, 30, 30))))  # rewritten mid-run
        return real_read(self, path, looked, **kw)

    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr(Reader, "read", read_after_change)
    r = index(settings, [lib])
    failures = {f.path: f.error for f in r.failures}
    assert "Permission denied" in failures[str(locked)]
    assert "No such file" in failures[str(gone)] or "cannot read" in failures[str(gone)]
    assert r.indexed == 2  # ok.png and the rewritten file (its new bytes)

    monkeypatch.setattr(builtins, "open", real_open)
    monkeypatch.setattr(Reader, "read", real_read)
    again = index(settings, [lib])
    assert again.failed == 0 and again.indexed == 1  # the formerly unreadable file; nothing else redone
    catalog, _ = stores()
    assert catalog.counts()["indexed"] == 3
    assert catalog.lookup_path(str(gone)) is None
