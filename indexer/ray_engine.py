"""``segsearch index --engine ray``: the same stages on Ray Data, for many GPUs or machines.

    driver                          Ray cluster
    ------                          -----------
    discover, stat-skip (SQL)
                                    read + hash files          (tasks)
    register paths, skip / claim,
    mark pending (SQL)
                                    decode, SAM masks, crops   (actor pool: one GPU each, or CPUs)
                                    CLIP embeddings            (actor pool)
    vectors + SQL commit, in write
    groups (the same store code as
    the local engine)

Only the driver talks to the stores, through the indexer's per-image surface (``look``,
``begin_image``, ``mark_pending``, ``add``/``flush``, ``fail``), so the
consistency protocol, claims (several drivers at once) and results are the local engine's: the
same masks (same model and settings), the same deterministic segment ids, the same vectors up to
float rounding of CLIP batches. Actors build their models from the driver's settings and specs.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np

from segsearch.errors import ImageError
from segsearch.identity import image_id
from segsearch.settings import Settings


def _hash_batch(batch: dict) -> dict:
    """Read and hash files (a Ray task): image id and size, or why the file cannot be read."""
    ids, sizes, errors = [], [], []
    for path in batch["path"]:
        try:
            with open(path, "rb") as f:
                data = f.read()
            ids.append(image_id(data))
            sizes.append(len(data))
            errors.append("")
        except OSError as exc:
            ids.append("")
            sizes.append(0)
            errors.append(f"cannot read file: {exc.strerror or exc}")
    return {
        "path": batch["path"],
        "image_id": np.array(ids, dtype=object),
        "size": np.array(sizes),
        "error": np.array(errors, dtype=object),
    }


def _models(settings: Settings, sam_spec, clip_spec):
    from segsearch.runtime import Models

    return Models(settings, sam_spec=sam_spec, clip_spec=clip_spec)


class SamStage:
    """Actor: decode, masks (the configured AMG engine), crops. One payload (pickled) per image."""

    def __init__(self, settings: Settings, sam_spec, clip_spec, image_size: int):
        self.settings = settings
        self.models = _models(settings, sam_spec, clip_spec)
        self.image_size = image_size

    def __call__(self, batch: dict) -> dict:
        from segsearch.images import decode_image

        from segsearch.indexer.amg import mask_generator_for
        from segsearch.indexer.working import generate_photo
        from segsearch.indexer.writer import build_segments

        s = self.settings
        payloads = []
        for path, iid in zip(batch["path"], batch["image_id"]):
            try:
                with open(path, "rb") as f:
                    data = f.read()
                if image_id(data) != iid:
                    raise ImageError("the file changed while it was being indexed")
                decoded = decode_image(data, max_pixels=s.max_image_pixels)
                masks = generate_photo(mask_generator_for(self.models), decoded.rgb, s.mask_side)
                segments, crops = build_segments(iid, self.models.fingerprint, decoded, masks, s, self.image_size)
                p = {
                    "width": decoded.width,
                    "height": decoded.height,
                    "format": decoded.format,
                    "meta": decoded.meta,
                    "segments": segments,
                    "crops": np.stack([np.asarray(c.convert("RGB")) for c in crops]),
                }
            except ImageError as exc:
                p = {"error": str(exc)}
            except OSError as exc:
                p = {"error": f"cannot read file: {exc.strerror or exc}"}
            except Exception as exc:  # noqa: BLE001 - one bad image must not stop the run
                p = {"error": f"processing error: {type(exc).__name__}: {exc}"}
            payloads.append(pickle.dumps(p))
        return {"path": batch["path"], "image_id": batch["image_id"], "payload": np.array(payloads, dtype=object)}


class ClipStage:
    """Actor: CLIP embeddings of every crop of a batch of images, in one pass."""

    def __init__(self, settings: Settings, sam_spec, clip_spec):
        self.models = _models(settings, sam_spec, clip_spec)

    def __call__(self, batch: dict) -> dict:
        from PIL import Image

        payloads = [pickle.loads(p) for p in batch["payload"]]
        crops = [Image.fromarray(c) for p in payloads if "crops" in p for c in p["crops"]]
        try:
            vecs = self.models.embedder.embed_images(crops)
        except Exception as exc:  # noqa: BLE001
            msg = f"processing error: {type(exc).__name__}: {exc}"
            payloads = [p if "error" in p else {"error": msg} for p in payloads]
        else:
            start = 0
            for p in payloads:
                if "crops" in p:
                    n = len(p.pop("crops"))
                    p["vectors"] = vecs[start : start + n]
                    start += n
        return {
            "path": batch["path"],
            "image_id": batch["image_id"],
            "payload": np.array([pickle.dumps(p) for p in payloads], dtype=object),
        }


def _init_ray(settings: Settings):
    import ray

    if not ray.is_initialized():
        kwargs = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
        if settings.ray_address:
            ray.init(address=settings.ray_address, **kwargs)
        else:  # a local instance for this run
            ray.init(num_cpus=max(2, os.cpu_count() or 1), **kwargs)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.verbose_stats_logs = False
    return ray


def ray_pass(indexer, paths: list[Path], force: bool, record) -> list:
    """One pass of ``Indexer.run_paths`` on Ray: returns the images deferred to other indexers."""
    from segsearch.video import is_video

    from segsearch.indexer.reader import Read
    from segsearch.indexer.results import Deferred, Outcome
    from segsearch.indexer.writer import Prepared

    s, models = indexer.settings, indexer.models

    todo, videos = [], []
    for path in paths:
        looked = indexer.look(path, force)
        if isinstance(looked, Outcome):
            record(looked, path)
        else:
            (videos if is_video(path) else todo).append((path, looked))
    # videos stream their frames through SAM in this process (a track needs its frames in order)
    video_deferred = indexer._pass(((p, indexer.reader.read(p, lk)) for p, lk in videos), force, record)
    if not todo:
        return video_deferred  # nothing else new: Ray is not even started

    ray = _init_ray(s)
    hashed = {}
    ds = ray.data.from_items([{"path": str(p)} for p, _ in todo])
    for row in ds.map_batches(_hash_batch, batch_size=64, batch_format="numpy").iter_rows():
        hashed[row["path"]] = (row["image_id"], int(row["size"]), row["error"])

    work, deferred = [], video_deferred
    for path, looked in todo:
        iid, size, error = hashed[str(path)]
        if error:
            record(Outcome("failed", error=error), path)
            continue
        begun = indexer.begin_image(path, Read(looked, iid, size, None), force)
        if begun is None:
            indexer.mark_pending(iid)
            work.append({"path": str(path), "image_id": iid})
        elif isinstance(begun, Deferred):
            deferred.append(begun)
        else:
            record(begun, path)
    if not work:
        return deferred

    gpus = int(ray.cluster_resources().get("GPU", 0))
    sam_actors = s.ray_sam_actors or max(1, gpus)
    per_actor = {"num_gpus": 1} if gpus else {"num_cpus": s.ray_cpus_per_actor}
    image_size = models.clip_spec.image_size
    ds = (
        ray.data.from_items(work)
        .map_batches(
            SamStage,
            fn_constructor_args=(s, models.sam_spec, models.clip_spec, image_size),
            batch_size=s.ray_sam_batch,
            batch_format="numpy",
            concurrency=sam_actors,
            **per_actor,
        )
        .map_batches(
            ClipStage,
            fn_constructor_args=(s, models.sam_spec, models.clip_spec),
            batch_size=s.ray_clip_batch,
            batch_format="numpy",
            concurrency=s.ray_clip_actors,
            **per_actor,
        )
    )
    for row in ds.iter_rows():
        path, iid, p = Path(row["path"]), row["image_id"], pickle.loads(row["payload"])
        if "error" in p:
            record(indexer.fail(iid, p["error"]), path)
            continue
        prepared = Prepared(path, iid, p["width"], p["height"], p["format"], p["segments"], [], p["vectors"], p["meta"])
        indexer.add(prepared, record)
    indexer.flush(record)
    return deferred
