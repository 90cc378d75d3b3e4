"""Export a library's segments for other tools: JSON lines, COCO (object masks as the RLE they are
stored as, loadable by pycocotools), Parquet (segments with their vectors, via pyarrow).

Every format streams the catalog a batch of images at a time (``Catalog.iter_indexed_segments``);
COCO's single JSON document is written incrementally, so memory does not grow with the library.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from segsearch.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from segsearch.store.sql import Catalog
    from segsearch.store.vectors import VectorIndex

FORMATS = ("jsonl", "coco", "parquet")
PARQUET_BATCH = 2048  # rows per Parquet row group (vectors fetched per batch too)


def _selected(catalog: Catalog, kind: str | None, path_prefix: str | None):
    """(image, its paths, its selected segment rows) for every indexed image with any selected."""
    for image, rows in catalog.iter_indexed_segments():
        paths = catalog.image_paths(image.id)
        if path_prefix is not None:
            paths = [p for p in paths if p.startswith(path_prefix)]
            if not paths:
                continue
        rows = [r for r in rows if kind is None or r.kind == kind]
        if rows:
            yield image, paths, rows


def export(
    catalog: Catalog,
    vectors: VectorIndex | None,
    collection: str | None,
    dest: str | Path,
    fmt: str = "jsonl",
    *,
    kind: str | None = None,
    path_prefix: str | None = None,
) -> int:
    """Write the selected segments to ``dest`` in ``fmt``; returns how many were written."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    dest = Path(dest).expanduser()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    selected = _selected(catalog, kind, path_prefix)
    if fmt == "jsonl":
        n = _jsonl(selected, tmp)
    elif fmt == "coco":
        n = _coco(_selected(catalog, "object" if kind is None else kind, path_prefix), tmp)
    else:
        n = _parquet(selected, vectors, collection, tmp)
    tmp.replace(dest)  # a reader never sees a half-written file
    return n


def _record(image, paths, r) -> dict:
    return {
        "segment_id": r.id,
        "image_id": image.id,
        "paths": paths,
        "width": image.width,
        "height": image.height,
        "kind": r.kind,
        "bbox": r.bbox,
        "area": int(r.area),
        "area_frac": r.area_frac,
        "predicted_iou": r.predicted_iou,
        "stability_score": r.stability_score,
        "rle": r.rle,
        **_times(r),
    }


def _times(r) -> dict:
    """A video segment's span and best frame (None for a photo's)."""
    return {"start_s": r.start_s, "end_s": r.end_s, "best_s": r.best_s}


def _jsonl(selected, path: Path) -> int:
    n = 0
    with open(path, "w") as out:
        for image, paths, rows in selected:
            for r in rows:
                out.write(json.dumps(_record(image, paths, r)) + "\n")
                n += 1
    return n


def _coco(selected, path: Path) -> int:
    """COCO instances JSON: one image per indexed image (``file_name`` its first path), one
    annotation per segment with the stored RLE, box, area and SAM's predicted IoU as ``score``;
    one category, ``object`` (SAM masks carry no class). segsearch's ids ride along."""
    n = 0
    with open(path, "w") as out:
        out.write('{"info": {"description": "segsearch export", "version": "1.0"}, ')
        out.write('"categories": [{"id": 1, "name": "object", "supercategory": "object"}], ')
        images, first_ann = [], True
        out.write('"annotations": [')
        for img_no, (image, paths, rows) in enumerate(selected, start=1):
            images.append(
                {
                    "id": img_no,
                    "file_name": paths[0] if paths else "",
                    "width": image.width,
                    "height": image.height,
                    "segsearch_image_id": image.id,
                }
            )
            for r in rows:
                n += 1
                ann = {
                    "id": n,
                    "image_id": img_no,
                    "category_id": 1,
                    "segmentation": r.rle,
                    "area": int(r.area),
                    "bbox": list(r.bbox),
                    "iscrowd": 0,
                    "score": r.predicted_iou,
                    "stability_score": r.stability_score,
                    "segsearch_segment_id": r.id,
                }
                out.write(("" if first_ann else ", ") + json.dumps(ann))
                first_ann = False
        # (image entries are small: one per image, kept until the end so annotations stream)
        out.write('], "images": ' + json.dumps(images) + "}")
    return n


def _parquet(selected, vectors, collection, path: Path) -> int:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ConfigError("Parquet export needs pyarrow: pip install pyarrow") from exc
    schema = pa.schema(
        [
            ("segment_id", pa.string()),
            ("image_id", pa.string()),
            ("path", pa.string()),
            ("width", pa.int32()),
            ("height", pa.int32()),
            ("kind", pa.string()),
            ("bbox", pa.list_(pa.int32(), 4)),
            ("area", pa.int64()),
            ("area_frac", pa.float32()),
            ("predicted_iou", pa.float32()),
            ("stability_score", pa.float32()),
            ("start_s", pa.float32()),
            ("end_s", pa.float32()),
            ("best_s", pa.float32()),
            ("rle_size", pa.list_(pa.int32(), 2)),
            ("rle_counts", pa.string()),
            ("vector", pa.list_(pa.float32())),
        ]
    )
    n = 0
    batch: list[dict] = []

    def flush(writer):
        if not batch:
            return
        found = vectors.retrieve(collection, [b["segment_id"] for b in batch]) if vectors and collection else {}
        for b in batch:
            p = found.get(b["segment_id"])
            b["vector"] = None if p is None or p.vector is None else [float(v) for v in p.vector]
        writer.write_table(pa.Table.from_pylist(batch, schema=schema))
        batch.clear()

    with pq.ParquetWriter(path, schema) as writer:
        for image, paths, rows in selected:
            for r in rows:
                rle = r.rle or {}
                batch.append(
                    {
                        "segment_id": r.id,
                        "image_id": image.id,
                        "path": paths[0] if paths else None,
                        "width": image.width,
                        "height": image.height,
                        "kind": r.kind,
                        "bbox": list(r.bbox),
                        "area": int(r.area),
                        "area_frac": r.area_frac,
                        "predicted_iou": r.predicted_iou,
                        "stability_score": r.stability_score,
                        **_times(r),
                        "rle_size": rle.get("size"),
                        "rle_counts": rle.get("counts"),
                    }
                )
                n += 1
                if len(batch) >= PARQUET_BATCH:
                    flush(writer)
        flush(writer)
    return n
