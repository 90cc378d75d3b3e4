"""``segsearch doctor``: find and repair drift between the SQL records and the vector store.

Drift kinds (each listed by id in the report):

* ``orphan_vectors``     points in a collection with no segment row (e.g. a crash after the vector
                         write, before the SQL commit, and the file then vanished)
* ``missing_vectors``    indexed images some of whose segment rows have no point
* ``stuck_pending``      images left ``pending`` by an interrupted run
* ``stale_fingerprint``  indexed images whose pipeline fingerprint is not the current settings'
* ``dead_paths``         known file paths that no longer exist; ``missing_files`` the images left
                         with no existing path at all
* ``tag_drift``          segments whose concept tags in the vector payload (what ``filters.tags``
                         sees) differ from SQL's ``segment_tags`` (a crash between the two writes)

Images an indexer is working on right now (a live claim, see ``segsearch.store.sql``) are not
drift: their vectors may precede their SQL commit, and they are ``pending`` on purpose.

Repair rewrites drifted tags from SQL, deletes orphans and dead paths (and the images with no file
left, with their vectors), then re-indexes every affected image that still has a file, through the
normal indexer (deterministic ids, so nothing is duplicated), and checks again. Exit code 0 when no
drift remains.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

from segsearch.paths import on_disk

KINDS = (
    "orphan_vectors",
    "missing_vectors",
    "stuck_pending",
    "stale_fingerprint",
    "dead_paths",
    "missing_files",
    "tag_drift",
)


@dataclass
class DriftReport:
    orphan_vectors: dict[str, list[str]] = field(default_factory=dict)  # collection -> point ids
    missing_vectors: list[str] = field(default_factory=list)  # image ids
    stuck_pending: list[str] = field(default_factory=list)
    stale_fingerprint: list[str] = field(default_factory=list)
    dead_paths: list[str] = field(default_factory=list)
    missing_files: list[str] = field(default_factory=list)
    tag_drift: dict[str, list[str]] = field(default_factory=dict)  # collection -> segment ids

    def counts(self) -> dict[str, int]:
        return {
            k: sum(len(v) for v in getattr(self, k).values())
            if isinstance(getattr(self, k), dict)
            else len(getattr(self, k))
            for k in KINDS
        }

    @property
    def total(self) -> int:
        return sum(self.counts().values())

    def to_dict(self) -> dict:
        return {"counts": self.counts(), "total": self.total, **asdict(self)}


def check(catalog, vectors, fingerprint: str, video_fingerprint: str | None = None) -> DriftReport:
    """Compare SQL with the vector store. ``fingerprint``: the photos' current pipeline fingerprint;
    ``video_fingerprint``: the videos' (it includes the video sampling), the photos' if not given."""
    from segsearch.store.concepts import ConceptStore

    r = DriftReport()
    collections = sorted(set(vectors.collections()) | set(catalog.segment_collections()))
    missing: set[str] = set()
    busy = catalog.live_claims()  # images an indexer is writing right now are not drift
    for coll in collections:
        owners = catalog.segment_owner_map(coll)
        point_ids = set(vectors.iter_ids(coll))
        orphans = sorted(point_ids - owners.keys())
        if orphans and busy:
            held = vectors.retrieve(coll, orphans, with_vectors=False)
            orphans = [i for i in orphans if i not in held or held[i].payload.get("image_id") not in busy]
        if orphans:
            r.orphan_vectors[coll] = orphans
        missing |= {owners[sid] for sid in owners.keys() - point_ids}
        in_sql = ConceptStore(catalog).tags_in(coll)
        in_payload = {pid: sorted(t) for pid, t in vectors.iter_tags(coll)}
        drift = sorted(
            sid
            for sid in (in_sql.keys() | in_payload.keys())
            if sid in point_ids and sorted(in_sql.get(sid, [])) != in_payload.get(sid, [])
        )
        if drift:
            r.tag_drift[coll] = drift
    indexed = catalog.images_by_status("indexed")
    r.missing_vectors = sorted(missing & {im.id for im in indexed})
    r.stuck_pending = [im.id for im in catalog.images_by_status("pending") if im.id not in busy]
    r.stale_fingerprint = [
        im.id
        for im in indexed
        if im.fingerprint != (video_fingerprint or fingerprint if im.media == "video" else fingerprint)
    ]
    alive: set[str] = set()
    owners_of_paths: dict[str, str] = {}
    for path, iid in catalog.all_paths():
        owners_of_paths[path] = iid
        if os.path.isfile(on_disk(path)):
            alive.add(iid)
        else:
            r.dead_paths.append(path)
    r.missing_files = sorted({owners_of_paths[p] for p in r.dead_paths} - alive)
    return r


def repair(report: DriftReport, indexer) -> dict:
    """Fix what ``check`` found; returns what was done."""
    catalog, vectors = indexer.stores.catalog, indexer.stores.vectors
    done = {"orphans_deleted": 0, "paths_removed": 0, "images_removed": 0, "images_reindexed": 0, "reindex_failed": 0}
    done["tags_rewritten"] = 0
    if report.tag_drift:
        from segsearch.store.concepts import ConceptStore

        store = ConceptStore(catalog)
        for coll, ids in report.tag_drift.items():
            lists = store.tags_of(ids)
            vectors.set_tags(coll, {sid: lists.get(sid, []) for sid in ids})
            done["tags_rewritten"] += len(ids)
    for coll, ids in report.orphan_vectors.items():
        vectors.delete(coll, ids)
        done["orphans_deleted"] += len(ids)
    for path in report.dead_paths:
        catalog.delete_path(path)
        done["paths_removed"] += 1
    for iid in report.missing_files:
        indexer.writer.remove_image(iid)
        done["images_removed"] += 1
    redo = (set(report.missing_vectors) | set(report.stuck_pending) | set(report.stale_fingerprint)) - set(
        report.missing_files
    )
    paths = []
    for iid in sorted(redo):
        ps = [p for p in catalog.image_paths(iid) if os.path.isfile(on_disk(p))]
        if ps:
            paths.append(ps[0])
    if paths:
        from pathlib import Path

        summary = indexer.run_paths([Path(p) for p in paths], force=True)
        done["images_reindexed"] = summary.indexed
        done["reindex_failed"] = summary.failed
    return done
