"""Memory is bounded by what the models see, not by photo pixels: thin strips and extreme aspect
ratios index like any photo, and one image that runs out of memory fails alone."""

import json
import subprocess
import sys
import tracemalloc

import numpy as np
from conftest import png_bytes, scene, write
from PIL import Image

from segsearch.crops import MAX_CANVAS, cut_crop, whole_image
from segsearch.eval.shapes import DEMO_SEEDS, make_scene

# `segsearch ARGS` in this process, then its own peak RSS (KiB) on stderr's last line
PEAK = """
import resource, sys
from segsearch.cli import app
try:
    app(args=sys.argv[1:], prog_name="segsearch")
    rc = 0
except SystemExit as e:
    rc = e.code or 0
print(f"peak_kib={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}", file=sys.stderr)
sys.exit(rc)
"""


def test_crops_of_huge_regions_use_a_bounded_canvas():
    strip = np.zeros((100, 100_000, 3), np.uint8)
    strip[:, 40_000:60_000] = (200, 30, 30)
    mask = np.zeros(strip.shape[:2], bool)
    mask[:, 40_000:60_000] = True
    tracemalloc.start()
    whole = whole_image(strip, size=224)
    crop = cut_crop(strip, mask, (40_000, 0, 20_000, 100), mode="masked", padding=0.1, size=224)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # a side x side canvas would be 100,000^2 x 3 bytes = 30 GB; the bounded one is MAX_CANVAS^2 x 3
    assert peak < 4 * MAX_CANVAS * MAX_CANVAS * 3 + strip.nbytes
    assert whole.size == crop.size == (224, 224)
    # the strip lands in the middle rows, scaled (a 100 px band of a 24,000 px square), not lost
    for im in (np.asarray(crop).astype(int), np.asarray(whole).astype(int)):
        red = im[..., 0] - im[..., 1] > 20
        assert red[108:117].any() and not red[:100].any() and not red[125:].any()
        assert (im[0, 0] == (122, 116, 104)).all()  # outside the image: the fill colour


def test_small_crops_are_cut_as_before():
    a = scene(width=300, height=200, box=(50, 40, 80, 60))
    m = np.zeros(a.shape[:2], bool)
    m[40:100, 50:130] = True
    crop = np.asarray(cut_crop(a, m, (50, 40, 80, 60), mode="masked", padding=0.1, size=96))
    assert (
        crop.shape == (96, 96, 3) and (crop[48, 48] == (220, 30, 30)).all() and (crop[2, 48] == (122, 116, 104)).all()
    )


def test_strips_and_extreme_aspects_index_with_the_bundled_models_under_3_gib(tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    tall = np.zeros((60_000, 80, 3), np.uint8)
    tall[:, :40] = (200, 30, 30)
    Image.fromarray(tall).save(lib / "strip-80x60000.png")
    wide = np.zeros((100, 100_000, 3), np.uint8)
    wide[:, ::7] = (30, 200, 30)
    Image.fromarray(wide).save(lib / "strip-100000x100.png")
    thin = np.zeros((20, 20_000, 3), np.uint8)
    thin[:, 5000:9000] = (30, 30, 220)
    Image.fromarray(thin).save(lib / "strip-20000x20.png")
    Image.fromarray(np.full((4, 30_000, 3), 200, np.uint8)).save(lib / "strip-30000x4.png")  # < 1 px at SAM's input
    for s in DEMO_SEEDS[:2]:
        Image.fromarray(make_scene(s).image).save(lib / f"scene-{s}.png")
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            PEAK,
            "index",
            str(lib),
            "--data",
            str(tmp_path / "data"),
            "--sam",
            "sam-shapes-tiny",
            "--clip",
            "clip-shapes-tiny",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    peak_kib = int(r.stderr.strip().splitlines()[-1].removeprefix("peak_kib="))
    summary = json.loads(r.stdout)
    assert (summary["indexed"], summary["failed"]) == (5, 1)  # strips and scenes indexed
    (failure,) = summary["failures"]
    assert failure["path"].endswith("strip-30000x4.png") and "too thin to segment" in failure["error"]
    assert peak_kib < 3 * 1024 * 1024, f"peak RSS {peak_kib / 1024:.0f} MiB"


def test_an_image_that_runs_out_of_memory_fails_alone(settings, index, make_models, tmp_path):
    from conftest import RedMaskGenerator

    class Greedy(RedMaskGenerator):
        def generate(self, rgb):
            if rgb.shape[1] == 333:
                raise MemoryError("cannot allocate 14.5 GiB")
            return super().generate(rgb)

    write(tmp_path / "lib" / "ok.png", png_bytes(scene()))
    write(tmp_path / "lib" / "huge.png", png_bytes(scene(width=333, height=100)))
    write(tmp_path / "lib" / "ok2.png", png_bytes(scene(color=(220, 40, 40), box=(5, 5, 40, 40))))
    r = index(settings, [tmp_path / "lib"], models=make_models(settings, mask_generator=Greedy()))
    assert (r.indexed, r.failed) == (2, 1)
    assert r.failures[0].path.endswith("huge.png") and "out of memory" in r.failures[0].error
    assert "333x100" in r.failures[0].error


def test_a_48_mp_photo_indexes_under_2_5_gib(tmp_path):
    """Memory follows what SAM sees (its 512-1024 px input), not the photo's 48 MP: full-resolution
    masks are only made for survivors, a bounded number at a time."""
    lib = tmp_path / "lib"
    lib.mkdir()
    Image.fromarray(make_scene(DEMO_SEEDS[5]).image).resize((8000, 6000), Image.BICUBIC).save(
        lib / "photo-48mp.jpg", quality=92
    )
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            PEAK,
            "index",
            str(lib),
            "--data",
            str(tmp_path / "data"),
            "--sam",
            "sam-shapes-tiny",
            "--clip",
            "clip-shapes-tiny",
            "--points-per-side",
            "8",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )  # SAM's default thresholds, a sparse grid
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["indexed"] == 1 and summary["segments"] >= 2  # (before the bound: 11.7 GB peak)
    peak_kib = int(r.stderr.strip().splitlines()[-1].removeprefix("peak_kib="))
    assert peak_kib < 2.5 * 1024 * 1024, f"peak RSS {peak_kib / 1024:.0f} MiB"
