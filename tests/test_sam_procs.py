"""SAM in worker processes (``indexer/sam_procs``, ``SEGSEARCH_SAM_PROCESSES=N`` on a CPU): a
library indexed that way must end exactly as one indexed with SAM in the indexing process, a
corrupt file still fails alone, and a worker that dies mid-run costs no image."""

import os
import signal

import pytest
import tiny
from conftest import png_bytes, scene, write
from sqlalchemy import select

from segsearch import Library
from segsearch.runtime import Models
from segsearch.store.sql import SegmentRow

from segsearch.indexer import sam_procs


def photos(root, n):
    """n distinct small scenes and one corrupt JPEG."""
    for i in range(n):
        a = scene(box=(8 + 9 * i, 10 + 5 * (i % 4), 40, 36), color=(200, 30 + 20 * i, 60))
        write(root / f"img{i:02d}.png", png_bytes(a))
    write(root / "broken.jpg", png_bytes(scene(), "JPEG")[:300])
    return root


@pytest.fixture
def sent(monkeypatch):
    """Photos go to the SAM processes from the start of a run (``ready`` waits for them to be up
    instead of letting the indexer segment the first photos itself); the ids they were sent."""
    ids = []
    ready, submit = sam_procs.SamProcesses.ready, sam_procs.SamProcesses.submit

    def wait_ready(self):
        for f in self._starting:
            f.exception(timeout=120)
        return ready(self)

    def counted(self, iid, fingerprint, decoded):
        ids.append(iid)
        return submit(self, iid, fingerprint, decoded)

    monkeypatch.setattr(sam_procs.SamProcesses, "ready", wait_ready)
    monkeypatch.setattr(sam_procs.SamProcesses, "submit", counted)
    return ids


def run(settings, root, tiny_sam, tiny_embedder, **changes):
    s = settings.model_copy(update=changes)
    models = Models(s, sam_spec=tiny.TINY_SAM, sam=tiny_sam, embedder=tiny_embedder)
    with Library(settings=s, models=models) as library:
        summary = library.index([str(root)])
        with library.catalog.Session() as ses:
            rows = {r.id: (r.image_id, tuple(r.bbox), r.area, r.rle) for r in ses.scalars(select(SegmentRow))}
        points = set(library.stores.vectors.iter_ids(models.collection))
    return summary, rows, points


def test_sam_processes_index_a_library_exactly_as_one_process_does(settings, tmp_path, sent, tiny_sam, tiny_embedder):
    root = photos(tmp_path / "lib", 10)
    procs, rows, points = run(settings, root, tiny_sam, tiny_embedder, sam_processes=2)
    assert len(sent) == 10  # every photo went to a worker; the corrupt file never reached SAM
    local, rows_local, _ = run(
        settings, root, tiny_sam, tiny_embedder, sam_processes=0, data=tmp_path / "local", database_url=None
    )
    assert (procs.indexed, procs.failed) == (local.indexed, local.failed) == (10, 1)
    assert [f.path for f in procs.failures] == [str(root / "broken.jpg")]
    assert procs.segments == local.segments > 10
    assert rows == rows_local  # same segment ids, boxes, areas and masks
    assert points == set(rows)  # every segment has its vector


def test_a_sam_process_that_dies_mid_run_costs_no_image(settings, tmp_path, sent, tiny_sam, tiny_embedder, monkeypatch):
    root = photos(tmp_path / "lib", 10)
    submit = sam_procs.SamProcesses.submit

    def kill_one_after_three(self, iid, fingerprint, decoded):
        job = submit(self, iid, fingerprint, decoded)
        if len(sent) == 3:
            os.kill(next(iter(self._pool._processes)), signal.SIGKILL)
        return job

    monkeypatch.setattr(sam_procs.SamProcesses, "submit", kill_one_after_three)
    summary, rows, points = run(settings, root, tiny_sam, tiny_embedder, sam_processes=2)
    assert (summary.indexed, summary.failed) == (10, 1), summary.failures
    assert points == set(rows) and len({image for image, *_ in rows.values()}) == 10
    again, _, _ = run(settings, root, tiny_sam, tiny_embedder, sam_processes=2)
    assert (again.indexed, again.skipped) == (0, 10)  # nothing was left to redo


def test_sam_processes_are_what_was_asked_within_memory_on_a_cpu_and_none_otherwise(settings, tiny_sam, monkeypatch):
    def workers(**changes):
        s = settings.model_copy(update=changes)
        return sam_procs.sam_workers(Models(s, sam_spec=tiny.TINY_SAM, sam=tiny_sam))

    monkeypatch.setattr(sam_procs, "GIB_PER_WORKER", 1 / 1024)
    assert workers() == 1  # by default SAM runs in the indexing process
    assert workers(sam_processes=6) == 6
    monkeypatch.setattr(sam_procs, "GIB_PER_WORKER", 2**20)
    assert workers(sam_processes=6) == 1  # not more workers than the memory holds
    monkeypatch.setattr(sam_procs, "GIB_PER_WORKER", 1 / 1024)
    s = settings.model_copy(update={"sam_processes": 6})
    given = Models(s, sam_spec=tiny.TINY_SAM, mask_generator=object())
    assert sam_procs.sam_workers(given) == 1  # a given generator is not rebuilt in other processes
    guarded = Models(s, sam_spec=tiny.TINY_SAM, sam=tiny_sam, guard=lambda: None)
    assert sam_procs.sam_workers(guarded) == 1  # a server job yields the cores to queries
