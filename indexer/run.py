"""One index run over paths, on stores someone else opened: what ``segsearch.Library.index``
(and so ``segsearch index`` and a server's index jobs) runs.

It resolves the models against the library's record (``segsearch.record``), records them on a
library's first index (or an explicit ``--reindex``), discovers the files and runs the pipeline.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from segsearch import record
from segsearch.runtime import Models, Stores
from segsearch.settings import Settings

from segsearch.indexer.discover import Bounds, discover
from segsearch.indexer.pipeline import Indexer
from segsearch.indexer.results import Outcome, RunSummary


def index_paths(
    settings: Settings,
    stores: Stores,
    paths: Iterable[str | Path],
    *,
    force: bool = False,
    reindex: bool = False,
    models: Models | None = None,
    on_start: Callable[[int], None] | None = None,
    progress: Callable[[Outcome, Path], None] | None = None,
    indexer_hook: Callable[[Indexer], None] | None = None,
    bounds: Bounds | None = None,
) -> RunSummary:
    files = list(discover(paths, bounds))  # a missing path is the user's error: before anything else
    settings = record.resolve(settings, stores.catalog, "index", reindex=reindex)
    models = models or Models(settings)
    record.write(stores.catalog, settings)
    if on_start is not None:
        on_start(len(files))
    indexer = Indexer(settings, stores, models)
    if indexer_hook is not None:
        indexer_hook(indexer)
    return indexer.run_paths(files, force=force, progress=progress)


def forget_paths(stores: Stores, paths: Iterable[str]) -> dict:
    """Files deleted from the library (``serve --watch``): their paths are dropped, and an image
    left with no path loses its segments and vectors. A path that exists again is kept."""
    import os

    from segsearch.paths import on_disk

    catalog, vectors = stores.catalog, stores.vectors
    done = {"paths_removed": 0, "images_removed": 0}
    for p in paths:
        known = catalog.lookup_path(str(p))
        if known is None or os.path.exists(on_disk(p)):
            continue
        iid = known[0].image_id
        catalog.delete_path(str(p))
        done["paths_removed"] += 1
        left = catalog.image_paths(iid)
        refs: dict[str, list[str]] = {}
        for sid, coll in catalog.segment_refs(iid):
            refs.setdefault(coll, []).append(sid)
        if left:
            for coll in refs:
                vectors.set_image_paths(coll, iid, left)
            continue
        for coll, ids in refs.items():
            vectors.delete(coll, ids)
        catalog.delete_image(iid)
        done["images_removed"] += 1
    return done


def doctor(settings: Settings, stores: Stores, *, repair: bool = False, models: Models | None = None) -> dict:
    """Drift between SQL and vectors for the library's recorded models; with ``repair``, fixed.
    ``models``: already resolved ones (a server's), used as they are."""
    from segsearch.indexer.doctor import check
    from segsearch.indexer.doctor import repair as do_repair

    if models is None:
        settings = record.resolve(settings, stores.catalog, "doctor")
        models = Models(settings)
    found = check(stores.catalog, stores.vectors, models.fingerprint, models.video_fingerprint)
    out = {"found": found.to_dict()}
    if repair and found.total:
        out["repair"] = do_repair(found, Indexer(settings, stores, models))
        out["after"] = check(stores.catalog, stores.vectors, models.fingerprint, models.video_fingerprint).to_dict()
    return out
