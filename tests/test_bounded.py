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
from segsearch.models import amg_params

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


def test_a_24_mp_photo_gets_its_full_resolution_segments_from_a_working_view(
    settings, index, make_models, stores, tmp_path
):
    """A 24 MP photo's masks are made on a 2048 px view (the default) and recorded in the photo's
    pixels: the same objects, boxes and areas as masks made at full size, within a pixel or two at
    the edges. A library indexed before the setting existed keeps full-size masks and its
    fingerprint (nothing is redone)."""
    from segsearch.identity import pipeline_fingerprint
    from segsearch.masks import decode_rle
    from segsearch.models import get_sam_spec
    from segsearch.models.sam import load_sam
    from segsearch.record import Recorded, recalled

    from segsearch.indexer.amg import make_mask_generator

    shapes = get_sam_spec("sam-shapes-tiny")  # (a model that finds the shapes)
    sam = load_sam(shapes, settings.checkpoints)

    lib = tmp_path / "lib"
    lib.mkdir()
    Image.fromarray(make_scene(DEMO_SEEDS[5]).image).resize((6000, 4000), Image.BICUBIC).save(
        lib / "photo-24mp.jpg", quality=92
    )
    full = settings.model_copy(update={"mask_side": 0, "data": tmp_path / "full"})
    assert settings.mask_side == 2048
    got = {}
    for name, s in (("view", settings), ("full", full)):
        s = s.model_copy(update={"sam": "sam-shapes-tiny", "points_per_side": None, "pred_iou_thresh": None})
        s = s.model_copy(update={"stability_score_thresh": None, "min_mask_region_area": None})
        gen = make_mask_generator("fast", sam, **amg_params(s))
        r = index(s, [lib], models=make_models(s, mask_generator=gen))
        assert (r.indexed, r.failed) == (1, 0)
        catalog, _ = stores(s)
        (image,) = catalog.images_by_status("indexed")
        got[name] = [x for x in catalog.image_segments(image.id) if x.kind == "object"]
    assert len(got["view"]) == len(got["full"]) >= 2
    for a, b in zip(got["view"], got["full"]):
        ma, mb = decode_rle(a.rle), decode_rle(b.rle)
        assert ma.shape == mb.shape == (4000, 6000)
        assert (ma & mb).sum() / (ma | mb).sum() > 0.98
        assert abs(a.area - b.area) <= 0.02 * b.area and max(abs(a.x - b.x), abs(a.y - b.y)) <= 4
    old = {"points_per_side": 16, "prompts": "grid"}
    assert recalled(Recorded(sam={}, clip={}, amg=old, crop={}, clips=[]))["mask_side"] == 0
    assert pipeline_fingerprint("s", "c", {**old, "mask_side": 0}, {}) == pipeline_fingerprint("s", "c", old, {})
