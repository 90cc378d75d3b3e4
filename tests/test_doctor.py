"""segsearch doctor finds drift between SQL and vectors, repairs it, and says so in its exit code."""

import json
import uuid

import pytest
from test_indexer import Crash, library, store_state
from typer.testing import CliRunner

from segsearch.store.sql import Catalog
from segsearch.store.vectors import VectorPoint

from segsearch.cli import app


def doctor(settings, *extra):
    args = ["doctor", "--data", str(settings.data), "--sam", settings.sam, "--clip", settings.clip, "--json", *extra]
    r = CliRunner().invoke(
        app,
        args,
        env={
            f"SEGSEARCH_{k.upper()}": str(v)
            for k, v in {
                "checkpoints": settings.checkpoints,
                "points_per_side": settings.points_per_side,
                "points_per_batch": settings.points_per_batch,
                "pred_iou_thresh": settings.pred_iou_thresh,
                "stability_score_thresh": settings.stability_score_thresh,
                "min_segment_area": settings.min_segment_area,
            }.items()
        },
    )
    assert r.stdout.strip(), f"doctor printed no JSON (exit {r.exit_code}): {r.output} {r.exception!r}"
    return r.exit_code, json.loads(r.stdout)


def test_clean_index_has_no_drift(settings, index, tmp_path):
    library(tmp_path / "lib", 2)
    index(settings, [tmp_path / "lib"])
    code, out = doctor(settings)
    assert code == 0 and out["found"]["total"] == 0


def test_finds_and_repairs_every_kind_of_drift(settings, index, stores, tmp_path, monkeypatch):
    paths = library(tmp_path / "lib", 4)
    index(settings, [tmp_path / "lib"])
    expected_state = store_state(settings)
    catalog, vectors = stores()
    coll = vectors.collections()[0]
    some_image = catalog.get_image(catalog.all_paths()[0][1])
    seg_ids = [sid for sid, _ in catalog.segment_refs(some_image.id)]
    vectors.upsert(coll, [VectorPoint(str(uuid.uuid4()), [0.1] * 32, {"image_id": "x", "kind": "object"})])  # orphan
    vectors.delete(coll, seg_ids[:1])  # an indexed image loses a vector
    other = next(p for p, iid in catalog.all_paths() if iid != some_image.id)
    catalog.mark_pending(catalog.lookup_path(other)[1].id, some_image.fingerprint, coll)  # stuck pending
    vectors.close()
    catalog.close()
    paths[-1].unlink()  # a file deleted from the library

    code, out = doctor(settings)
    c = out["found"]["counts"]
    assert code == 1
    assert (c["orphan_vectors"], c["missing_vectors"], c["stuck_pending"], c["dead_paths"], c["missing_files"]) == (
        1,
        1,
        1,
        1,
        1,
    )

    code, out = doctor(settings, "--repair")
    assert code == 0, out
    assert out["after"]["total"] == 0
    assert out["repair"]["images_reindexed"] == 2 and out["repair"]["images_removed"] == 1
    images, seg_ids_sql, point_ids = store_state(settings)
    assert seg_ids_sql == point_ids  # every record has its vector and vice versa
    assert len(images) == 3 and set(images.values()) == {"indexed"}
    assert seg_ids_sql < expected_state[1]  # the vanished file's segments are gone, the rest are the same ids


def test_interrupted_run_is_repaired_by_doctor(settings, index, tmp_path, monkeypatch):
    library(tmp_path / "lib", 3)
    real = Catalog.commit_segments
    calls = {"n": 0}

    def crash_second(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise Crash()
        return real(self, *a, **kw)

    monkeypatch.setattr(Catalog, "commit_segments", crash_second)
    with pytest.raises(Crash):
        index(settings, [tmp_path / "lib"])
    monkeypatch.setattr(Catalog, "commit_segments", real)
    code, out = doctor(settings)
    assert code == 1 and out["found"]["counts"]["stuck_pending"] == 2
    code, out = doctor(settings, "--repair")
    assert code == 0 and out["after"]["total"] == 0
    images, seg_ids, point_ids = store_state(settings)
    assert set(images.values()) == {"indexed"} and seg_ids == point_ids


def test_an_image_being_indexed_right_now_is_not_drift(settings, index, stores, tmp_path):
    """Another indexer has written the vectors of an image it holds but not yet committed SQL:
    doctor must neither report nor 'repair' that."""
    library(tmp_path / "lib", 2)
    index(settings, [tmp_path / "lib"])
    catalog, vectors = stores()
    coll = vectors.collections()[0]
    iid = catalog.all_paths()[0][1]
    fp = catalog.get_image(iid).fingerprint
    assert catalog.claim(iid, "busy-indexer", lease_s=60)
    catalog.mark_pending(iid, fp, coll)
    vectors.upsert(coll, [VectorPoint(str(uuid.uuid4()), [0.1] * 32, {"image_id": iid, "kind": "object"})])
    vectors.close()
    catalog.close()
    code, out = doctor(settings)
    assert code == 0 and out["found"]["total"] == 0, out
    catalog = Catalog.open(settings.sql_url)
    catalog.release_worker_claims("busy-indexer")  # the holder is gone: now it is drift
    catalog.close()
    code, out = doctor(settings)
    assert code != 0 and out["found"]["stuck_pending"] == [iid] and len(out["found"]["orphan_vectors"][coll]) == 1


def test_concept_tags_that_drifted_from_sql_are_found_and_rewritten(settings, index, stores, tmp_path):
    """Tags live in SQL and in the vector payload (where filters read them); a crash between the two
    writes leaves them apart. doctor finds such segments and rewrites their payload from SQL."""
    import numpy as np

    from segsearch.concepts import ConceptModel, new_row
    from segsearch.store.concepts import ConceptStore
    from segsearch.store.schema import SegmentTagRow
    from segsearch.store.vectors import SearchFilter

    library(tmp_path / "lib", 3)
    index(settings, [tmp_path / "lib"])
    catalog, vectors = stores()
    coll = vectors.collections()[0]
    owners = catalog.segment_owner_map(coll)
    ids = sorted(owners)
    picked = ids[:3]  # a concept's state as Concepts.learn leaves it: SQL rows, then the payload
    row = new_row("picked", None, coll, picked, [], ConceptModel(np.zeros(32, np.float32), 0.0))
    ConceptStore(catalog).save(
        row, [SegmentTagRow(segment_id=i, concept="picked", image_id=owners[i], score=0.9) for i in picked]
    )
    vectors.set_tags(coll, {i: ["picked"] for i in picked})
    lost, stray = picked[0], ids[-1]
    vectors.set_tags(coll, {lost: [], stray: ["picked"]})  # as if the payload write had been lost / stale
    vectors.close()
    catalog.close()

    code, out = doctor(settings)
    assert code == 1 and out["found"]["counts"]["tag_drift"] == 2
    assert sorted(out["found"]["tag_drift"][coll]) == sorted([lost, stray])
    code, out = doctor(settings, "--repair")
    assert code == 0 and out["repair"]["tags_rewritten"] == 2 and out["after"]["total"] == 0
    catalog, vectors = stores()
    assert {h.id for h in vectors.search(coll, [1.0] * 32, 1000, SearchFilter(tags=["picked"]))} == set(picked)
