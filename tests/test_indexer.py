"""The main job end to end on tiny random-init SAM/CLIP (real segment_anything/open_clip classes),
the real SQL catalog and the embedded Qdrant Edge store. Every test runs twice: records in SQLite
and in PostgreSQL."""

import io

import numpy as np
import pg
import pytest
import tiny
from conftest import RedMaskGenerator, png_bytes, scene, write
from PIL import Image

from segsearch.errors import ConfigError
from segsearch.identity import collection_name
from segsearch.masks import decode_rle
from segsearch.store.sql import Catalog

from segsearch.indexer.pipeline import Indexer


@pytest.fixture(params=["sqlite", "postgresql"])
def settings(request, settings):
    if request.param == "postgresql":
        return settings.model_copy(update={"database_url": request.getfixturevalue("pg_url")})
    return settings


@pytest.fixture
def relocate(settings, request):
    """relocate(data_dir, **changes): the same settings on a second, empty data dir (and, on
    PostgreSQL, a second empty database)."""

    def _relocate(data, **changes):
        update = {"data": data, **changes}
        if settings.database_url:
            admin = request.getfixturevalue("pg_admin")
            url = update["database_url"] = pg.create_database(admin)
            request.addfinalizer(lambda: pg.drop_database(admin, url))
        return settings.model_copy(update=update)

    return _relocate


def library(root, n=3):
    """n distinct small scenes."""
    paths = []
    for i in range(n):
        a = scene(box=(10 + 15 * i, 20, 50, 40), color=(200, 40 + 50 * i, 30))
        paths.append(write(root / f"img{i}.png", png_bytes(a)))
    return paths


def store_state(settings):
    """What a user could observe: image statuses, segment ids in SQL, point ids in the store.
    Opens and closes the stores (the embedded store admits one process/handle at a time)."""
    from segsearch.runtime import open_stores

    catalog, vectors = open_stores(settings)
    coll = collection_name(tiny.TINY_CLIP.fingerprint)
    try:
        with catalog.Session() as s:
            from sqlalchemy import select

            from segsearch.store.sql import ImageRow, SegmentRow

            images = {r.id: r.status for r in s.scalars(select(ImageRow))}
            seg_ids = set(s.scalars(select(SegmentRow.id)))
        point_ids = set(vectors.iter_ids(coll))
    finally:
        vectors.close()
        catalog.close()
    return images, seg_ids, point_ids


def test_index_then_rerun_is_idempotent(settings, index, stores, tmp_path):
    lib = tmp_path / "lib"
    library(lib, 3)
    first = index(settings, [lib])
    assert (first.indexed, first.skipped, first.failed) == (3, 0, 0)
    assert first.segments >= 3  # at least the whole-image segment per image
    images, seg_ids, point_ids = store_state(settings)
    assert set(images.values()) == {"indexed"} and len(images) == 3
    assert seg_ids == point_ids and len(seg_ids) == first.segments

    again = index(settings, [lib])
    assert (again.indexed, again.skipped, again.failed, again.segments) == (0, 3, 0, 0)
    assert store_state(settings) == (images, seg_ids, point_ids)


def test_changed_file_is_reindexed_and_old_segments_removed(settings, index, stores, tmp_path):
    lib = tmp_path / "lib"
    paths = library(lib, 2)
    index(settings, [lib])
    images_before, segs_before, _ = store_state(settings)
    write(paths[0], png_bytes(scene(box=(70, 60, 40, 30), color=(30, 30, 230))))
    r = index(settings, [lib])
    assert (r.indexed, r.skipped) == (1, 1)
    images, seg_ids, point_ids = store_state(settings)
    assert len(images) == 2  # the old bytes' image is gone with its path
    assert len(set(images) - set(images_before)) == 1
    assert seg_ids == point_ids
    gone = segs_before - seg_ids  # the old version's segments: removed from SQL and vectors
    assert gone and not (gone & point_ids) and seg_ids & segs_before  # the untouched image kept its own


def test_same_bytes_at_two_paths_is_one_image(settings, index, stores, tmp_path):
    data = png_bytes(scene())
    a = write(tmp_path / "lib" / "a.png", data)
    b = write(tmp_path / "lib" / "sub" / "b.png", data)
    r = index(settings, [tmp_path / "lib"])
    assert (r.indexed, r.skipped) == (1, 1)
    images, seg_ids, point_ids = store_state(settings)
    catalog, vectors = stores()
    assert len(images) == 1
    (iid,) = images
    assert catalog.image_paths(iid) == [str(a), str(b)]
    # both paths are searchable by folder
    from segsearch.store.vectors import SearchFilter

    coll = collection_name(tiny.TINY_CLIP.fingerprint)
    assert vectors.count(coll, SearchFilter(path_prefix=str(b.parent))) == len(seg_ids)


def test_force_reindexes_without_duplicates(settings, index, stores, tmp_path):
    library(tmp_path / "lib", 2)
    first = index(settings, [tmp_path / "lib"])
    state = store_state(settings)
    forced = index(settings, [tmp_path / "lib"], force=True)
    assert forced.indexed == 2 and forced.segments == first.segments
    assert store_state(settings) == state  # deterministic ids: same set, nothing doubled


@pytest.mark.parametrize("orientation,transpose", [(6, Image.ROTATE_90), (3, Image.ROTATE_180), (8, Image.ROTATE_270)])
def test_exif_rotated_input_is_stored_in_corrected_coordinates(
    settings, index, stores, make_models, tmp_path, orientation, transpose
):
    upright = scene(width=160, height=120, box=(100, 10, 40, 30))
    stored = Image.fromarray(upright).transpose(transpose)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    stored.save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    write(tmp_path / "lib" / "rot.jpg", buf.getvalue())
    models = make_models(settings, mask_generator=RedMaskGenerator())
    r = index(settings, [tmp_path / "lib"], models=models)
    assert r.indexed == 1
    catalog, _ = stores()
    with catalog.Session() as s:
        from sqlalchemy import select

        from segsearch.store.sql import ImageRow, SegmentRow

        img = s.scalars(select(ImageRow)).one()
        segs = {seg.kind: seg for seg in s.scalars(select(SegmentRow))}
    assert (img.width, img.height) == (160, 120)
    obj = segs["object"]
    assert abs(obj.x - 100) <= 2 and abs(obj.y - 10) <= 2 and abs(obj.w - 40) <= 3 and abs(obj.h - 30) <= 3
    mask = decode_rle(obj.rle)
    assert mask.shape == (120, 160) and mask[25, 120] and not mask[100, 20]
    assert segs["image"].bbox == [0, 0, 160, 120]


def test_modes_and_failures(settings, index, stores, tmp_path):
    lib = tmp_path / "lib"
    base = scene()
    write(lib / "cmyk.jpg", _encode(Image.fromarray(base).convert("CMYK"), "JPEG"))
    write(lib / "grey16.png", _encode(Image.fromarray(base[..., 0].astype(np.uint16) * 257), "PNG"))
    pal = Image.fromarray(base).convert("P")
    write(lib / "palette.png", _encode(pal, "PNG", transparency=pal.getpixel((0, 0))))
    write(lib / "heic.heic", _encode(Image.fromarray(base), "HEIF"))
    good = png_bytes(scene(color=(10, 200, 200)))
    write(lib / "truncated.png", good[: len(good) // 2])
    write(lib / "zero.jpg", b"")
    write(lib / "random.jpg", np.random.default_rng(0).bytes(5000))
    write(lib / "bomb.png", _encode(Image.new("1", (12_000, 12_000)), "PNG"))
    settings = settings.model_copy(update={"max_image_pixels": 50_000_000})
    r = index(settings, [lib])
    failed = {f.path.rsplit("/", 1)[1]: f.error for f in r.failures}
    assert set(failed) == {"truncated.png", "zero.jpg", "random.jpg", "bomb.png"}
    assert "0 bytes" in failed["zero.jpg"] and "not a recognised image" in failed["random.jpg"]
    assert "pixels, above the cap" in failed["bomb.png"]
    assert (r.indexed, r.failed) == (4, 4)
    images, seg_ids, point_ids = store_state(settings)
    assert sorted(images.values()) == ["failed"] * 4 + ["indexed"] * 4
    assert seg_ids == point_ids
    catalog, _ = stores()
    run = catalog.get_run(r.run_id)
    assert run.status == "completed" and run.failed == 4 and len(run.failures) == 4


def _encode(im, fmt, **kw):
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


class Crash(BaseException):
    """Stands in for the process dying (not an Exception: nothing catches it)."""


def test_crash_between_vector_write_and_sql_commit_then_resume(
    settings, index, stores, tmp_path, monkeypatch, relocate
):
    lib = tmp_path / "lib"
    library(lib, 3)
    clean = tmp_path / "clean"
    clean_settings = relocate(clean)
    index(clean_settings, [lib])
    expected = store_state(clean_settings)

    calls = {"n": 0}
    real_commit = Catalog.commit_segments

    def crashing_commit(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise Crash()  # vectors of image 2 are written, its SQL rows are not
        return real_commit(self, *a, **kw)

    monkeypatch.setattr(Catalog, "commit_segments", crashing_commit)
    with pytest.raises(Crash):
        index(settings, [lib])
    images, seg_ids, point_ids = store_state(settings)
    # one write group holds all 3 images: image 1 committed, 2 crashed mid-commit, 3 not reached
    assert sorted(images.values()) == ["indexed", "pending", "pending"]
    assert point_ids > seg_ids  # the interrupted images' vectors exist without records...
    catalog, vectors = stores()
    pending = next(i for i, st in images.items() if st == "pending")
    assert catalog.get_image(pending).n_segments == 0  # ...and it does not count as indexed
    vectors.close()  # the embedded store serves one handle at a time

    monkeypatch.setattr(Catalog, "commit_segments", real_commit)
    r = index(settings, [lib])
    assert (r.indexed, r.skipped) == (2, 1)
    assert store_state(settings) == expected  # same ids, no duplicates, no orphans


def test_crash_before_vector_write_leaves_pending_and_resumes(settings, index, stores, tmp_path, monkeypatch):
    lib = tmp_path / "lib"
    library(lib, 2)
    from segsearch.store.edge import EdgeVectorIndex

    real = EdgeVectorIndex.upsert
    monkeypatch.setattr(EdgeVectorIndex, "upsert", lambda *a, **k: (_ for _ in ()).throw(Crash()))
    with pytest.raises(Crash):
        index(settings, [lib])
    images, seg_ids, point_ids = store_state(settings)
    assert list(images.values()) == ["pending", "pending"] and not seg_ids and not point_ids
    monkeypatch.setattr(EdgeVectorIndex, "upsert", real)
    r = index(settings, [lib])
    assert r.indexed == 2
    images, seg_ids, point_ids = store_state(settings)
    assert set(images.values()) == {"indexed"} and seg_ids == point_ids


def test_model_switch_creates_new_collection(settings, index, stores, make_models, tiny_embedder_b, tmp_path):
    lib = tmp_path / "lib"
    library(lib, 2)
    index(settings, [lib])
    settings_b = settings.model_copy(update={"clip": "clip-test-tiny-b"})
    models_b = make_models(settings_b, embedder=tiny_embedder_b)
    with pytest.raises(ConfigError, match="indexed with SAM sam-test-tiny and CLIP clip-test-tiny.*--reindex"):
        index(settings_b, [lib], models=models_b)  # the library remembers: switching is explicit
    r = index(settings_b, [lib], models=models_b, reindex=True)
    assert r.indexed == 2  # a different pipeline: everything redone
    catalog, vectors = stores()
    coll_a = collection_name(tiny.TINY_CLIP.fingerprint)
    coll_b = collection_name(tiny.TINY_CLIP_B.fingerprint)
    assert coll_a != coll_b and set(vectors.collections()) == {coll_a, coll_b}
    sql_ids = catalog.segment_ids(coll_b)
    assert set(vectors.iter_ids(coll_b)) == sql_ids and len(sql_ids) == r.segments
    assert vectors.count(coll_a) == 0  # the old space holds no orphans of re-indexed images
    assert catalog.segment_ids(coll_a) == set()


def test_amg_settings_change_reindexes(settings, index, tmp_path):
    library(tmp_path / "lib", 1)
    index(settings, [tmp_path / "lib"])
    r = index(settings.model_copy(update={"points_per_side": 3}), [tmp_path / "lib"], reindex=True)
    assert r.indexed == 1
    r = index(settings.model_copy(update={"points_per_side": 3, "points_per_batch": 4}), [tmp_path / "lib"])
    assert r.skipped == 1  # batch size is not part of the result


def test_segment_ids_are_deterministic_across_data_dirs(settings, index, stores, tmp_path, relocate):
    library(tmp_path / "lib", 2)
    index(settings, [tmp_path / "lib"])
    other = relocate(tmp_path / "other")
    index(other, [tmp_path / "lib"])
    assert store_state(settings)[1] == store_state(other)[1]


def test_indexer_works_on_server_backend(settings, index, stores, tmp_path):
    library(tmp_path / "lib", 2)
    s = settings.model_copy(update={"vector_backend": "server", "qdrant_url": str(tmp_path / "qdrant")})
    r = index(s, [tmp_path / "lib"])
    assert r.indexed == 2
    images, seg_ids, point_ids = store_state(s)
    assert seg_ids == point_ids and len(seg_ids) == r.segments


def test_indexer_class_can_be_used_alone(settings, make_models, stores, tmp_path):
    """The pipeline object works without the CLI wrapper (for the API and engines)."""
    write(tmp_path / "x.png", png_bytes(scene()))
    indexer = Indexer(settings, stores(), make_models(settings, mask_generator=RedMaskGenerator()))
    outcome = indexer.index_file(tmp_path / "x.png")
    assert outcome.status == "indexed" and outcome.segments == 2


def test_streaming_settings_do_not_change_results(settings, index, tmp_path, relocate):
    """Prefetch depth, reader threads and write-group size change speed, never what is stored."""
    library(tmp_path / "lib", 5)
    r1 = index(settings, [tmp_path / "lib"])
    one_by_one = relocate(tmp_path / "serial", prefetch=1, read_workers=1, write_group_images=1)
    r2 = index(one_by_one, [tmp_path / "lib"])
    wide = relocate(tmp_path / "wide", prefetch=16, read_workers=4, write_group_images=3, write_group_crops=4)
    r3 = index(wide, [tmp_path / "lib"])
    assert r1.indexed == r2.indexed == r3.indexed == 5
    assert store_state(settings) == store_state(one_by_one) == store_state(wide)
