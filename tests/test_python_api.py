"""The Python API as a user meets it: ``from segsearch import Library``, on the bundled shapes
models (which know coloured shapes, so the answers can be checked against the scenes' truth)."""

import json
from collections import Counter

import numpy as np
from PIL import Image

from segsearch.eval.quality import iou_matrix
from segsearch.eval.shapes import DEMO_SEEDS, SHAPES_AMG, make_scene
from segsearch.masks import decode_rle


def test_a_python_user_indexes_searches_segments_exports_and_comes_back(tmp_path):
    """... and exports for other tools: JSON lines, Parquet with vectors, COCO through the CLI."""
    from segsearch import Library

    photos = tmp_path / "photos"
    photos.mkdir()
    truth = {}
    for seed in DEMO_SEEDS[:6]:
        sc = make_scene(seed)
        Image.fromarray(sc.image).save(photos / f"scene-{seed}.png")
        truth[f"scene-{seed}.png"] = sc
    query = Counter(c for sc in truth.values() for c in sc.captions).most_common(1)[0][0]
    data = tmp_path / "library"

    with Library(data, sam="sam-shapes-tiny", clip="clip-shapes-tiny", offline=True, **SHAPES_AMG) as lib:
        summary = lib.index([photos])
        assert summary.indexed == 6 and summary.failed == 0 and summary.segments > 6

        hits = lib.search(query, top_k=3, filters={"kind": "object"})
        assert len(hits) == 3 and hits[0].score >= hits[1].score >= hits[2].score
        top = hits[0]
        sc = truth[top.image_path.rsplit("/", 1)[1]]
        assert query in sc.captions  # the best hit is in a scene that has the object asked for
        seg = lib.catalog.get_segments([top.segment_id])[top.segment_id]
        best = iou_matrix(sc.masks, decode_rle(seg.rle)[None])[:, 0]
        assert max(iou for iou, cap in zip(best, sc.captions) if cap == query) >= 0.5  # ... and it is that object

        like = lib.search(segment_id=top.segment_id, top_k=1)  # more like this: itself first
        assert like[0].segment_id == top.segment_id and like[0].score > 0.99
        x, y, w, h = top.bbox
        by_image = lib.search(image=sc.image[y : y + h, x : x + w], top_k=5, filters={"kind": "object"})
        assert top.segment_id in {hit.segment_id for hit in by_image}  # a crop of the object finds it

        page = lib.search_page(query, top_k=2, group_by_image=True)
        assert len(page.groups) == 2 and len({g.image_id for g in page.groups}) == 2
        assert page.groups[0].score >= page.groups[1].score and page.next_offset == 2
        assert lib.search_page(query, top_k=2, offset=2, group_by_image=True).groups[0].image_id not in {
            g.image_id for g in page.groups
        }

        j = sc.captions.index(query)
        ys, xs = np.nonzero(sc.masks[j])
        k = len(ys) // 2
        masks, scores = lib.segment(photos / top.image_path.rsplit("/", 1)[1], points=[[int(xs[k]), int(ys[k])]])
        assert masks.shape[1:] == sc.image.shape[:2] and scores[0] == scores.max()
        assert iou_matrix(sc.masks[j : j + 1], masks[:1])[0, 0] >= 0.5  # a click on the object outlines it

        out = tmp_path / "segments.jsonl"
        assert lib.export(out) == summary.segments
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        objects = [r for r in rows if r["kind"] == "object"]
        assert len(rows) == summary.segments and {r["image_id"] for r in rows} == {r["image_id"] for r in objects}
        assert all(decode_rle(r["rle"]).shape == (r["height"], r["width"]) for r in objects[:5])

        # other tools: COCO (pycocotools loads it; its masks are the stored ones) and Parquet with vectors
        pq_out = tmp_path / "segments.parquet"
        assert lib.export(pq_out, format="parquet", kind="object") == len(objects)
        import pyarrow.parquet as pq

        table = pq.read_table(pq_out).to_pylist()
        assert {t["segment_id"] for t in table} == {r["segment_id"] for r in objects}
        assert all(len(t["vector"]) == 64 for t in table)  # clip-shapes-tiny's vectors ride along
        assert abs(sum(v * v for v in table[0]["vector"]) - 1) < 1e-3

    from pycocotools.coco import COCO
    from pycocotools.mask import decode
    from typer.testing import CliRunner

    from segsearch.cli import app

    coco_out = tmp_path / "coco.json"
    r = CliRunner().invoke(app, ["export", "--format", "coco", "--out", str(coco_out), "--data", str(data)])
    assert r.exit_code == 0 and f"wrote {len(objects)} segments" in r.stdout, r.output
    coco = COCO(str(coco_out))
    assert len(coco.getImgIds()) == 6 and len(coco.getAnnIds()) == len(objects)
    stored = {r["segment_id"]: r for r in objects}
    for ann in coco.loadAnns(coco.getAnnIds()):
        img = coco.loadImgs(ann["image_id"])[0]
        want = stored[ann["segsearch_segment_id"]]
        assert img["file_name"] == want["paths"][0] and ann["bbox"] == want["bbox"]
        assert np.array_equal(coco.annToMask(ann), decode_rle(want["rle"]))
    assert decode(coco.annToRLE(coco.loadAnns(coco.getAnnIds())[0])).sum() > 0

    # The library remembers its models: no model names, same answers.
    with Library(data, offline=True) as again:
        info = again.info()
        assert info["library"]["sam"]["name"] == "sam-shapes-tiny" and info["counts"]["indexed"] == 6
        assert again.doctor()["found"]["total"] == 0
        assert [h.segment_id for h in again.search(query, top_k=3, filters={"kind": "object"})] == [
            h.segment_id for h in hits
        ]
        assert again.index([photos]).skipped == 6  # nothing new to do
