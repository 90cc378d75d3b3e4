"""The Python API: ``from segsearch import Library``.

    from segsearch import Library

    with Library("~/photos-index") as lib:            # a data directory (created on first index)
        lib.index(["~/Pictures"])                       # SAM masks -> crops -> CLIP -> stores
        for hit in lib.search("red car", top_k=5):      # text; or image=..., or segment_id=...
            print(hit.score, hit.image_path, hit.bbox)

A library remembers its models (``segsearch.record``): ``sam``/``clip`` are needed only when a
new library should use other models than the defaults. The CLI (``segsearch ...``) and the HTTP
API (``segsearch serve``) are thin layers over this class.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segsearch.errors import ConfigError, ImageError, NotFoundError, QueryError
from segsearch.runtime import Models, Stores, open_stores
from segsearch.search import Searcher, SearchPage, minus
from segsearch.settings import Settings
from segsearch.store.vectors import SearchFilter

if TYPE_CHECKING:  # pragma: no cover
    from segsearch.search import Hit


def make_settings(**given: Any) -> Settings:
    """Settings from the environment, config files and defaults, overridden by the values given
    (``None`` means "not given", so the library's record still decides)."""
    from pydantic import ValidationError

    try:
        return Settings(**{k: v for k, v in given.items() if v is not None})
    except ValidationError as exc:
        raise ConfigError(f"invalid settings: {exc}") from exc


class Library:
    """A photo library indexed at the level of objects: one data directory (or one SQL database
    and Qdrant server), its stores open for the life of this object.

    ``data_dir``, ``sam``, ``clip`` and any ``Settings`` field as a keyword (``device="cuda"``,
    ``database_url=...``, ``points_per_side=16``) override the environment and config files.
    ``settings``/``models``: ready-made ones (the server, tests and benchmarks share theirs)."""

    def __init__(
        self,
        data_dir: str | Path | None = None,
        sam: str | None = None,
        clip: str | None = None,
        *,
        settings: Settings | None = None,
        models: Models | None = None,
        stores: Stores | None = None,
        **settings_kw: Any,
    ):
        given = {"data": data_dir, "sam": sam, "clip": clip, **settings_kw}
        if settings is None:
            settings = make_settings(**given)
        elif any(v is not None for v in given.values()):
            settings = make_settings(**{**settings.model_dump(include=settings.model_fields_set), **given})
        self.settings = settings
        self.stores = stores or open_stores(settings)
        self._models = models
        self._search_models: Models | None = None
        self._segmenter = None  # SAM with its embedding cache, made on the first segment()

    # --- life cycle ----------------------------------------------------------------------------------
    def close(self) -> None:
        self.stores.close()

    def __enter__(self) -> Library:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def catalog(self):
        return self.stores.catalog

    @property
    def vectors(self):
        return self.stores.vectors

    def resolve(self, purpose: str, *, reindex: bool = False) -> Settings:
        """These settings with what the user did not give taken from the library's record."""
        from segsearch import record

        collections = self.vectors.collections() if purpose in ("search", "serve") else None
        return record.resolve(self.settings, self.catalog, purpose, reindex=reindex, collections=collections)

    def models(self) -> Models:
        """The models searches use (the record's CLIP; loaded on first use)."""
        if self._models is not None:
            return self._models
        if self._search_models is None:
            self._search_models = Models(self.resolve("search"))
        return self._search_models

    # --- indexing ------------------------------------------------------------------------------------
    def index(
        self,
        paths: Iterable[str | Path],
        force: bool = False,
        *,
        reindex: bool = False,
        on_start: Callable[[int], None] | None = None,
        progress: Callable | None = None,
        models: Models | None = None,
        indexer_hook: Callable | None = None,
        bounds=None,
    ):
        """Segment, embed and store every image under ``paths`` (files, folders, globs); unchanged
        images are skipped unless ``force``. Returns the run summary (``RunSummary``: indexed,
        skipped, failed with reasons, segments, seconds per stage). ``reindex`` switches a library
        to the models given (otherwise other models than the recorded ones are refused). ``bounds``
        (``segsearch.indexer.discover.Bounds``): roots, file count, time and cancel check of the walk."""
        from segsearch.indexer.run import index_paths

        summary = index_paths(
            self.settings,
            self.stores,
            paths,
            force=force,
            reindex=reindex,
            models=models or self._models,
            on_start=on_start,
            progress=progress,
            indexer_hook=indexer_hook,
            bounds=bounds,
        )
        self._search_models = None  # a first index may have recorded the models
        return summary

    def forget(self, paths: Iterable[str]) -> dict:
        """Drop deleted files (their images, if no other path has the same bytes)."""
        from segsearch.indexer.run import forget_paths

        return forget_paths(self.stores, paths)

    @staticmethod
    def missing_inputs(paths: Iterable[str]) -> list[str]:
        """The paths (files, folders, globs) that name nothing, without walking folders."""
        from segsearch.indexer.discover import missing_inputs

        return missing_inputs(paths)

    def doctor(self, repair: bool = False, *, models: Models | None = None) -> dict:
        """Drift between SQL records and vectors (orphans, missing vectors, stuck or stale images,
        vanished files); ``repair`` fixes it and checks again."""
        from segsearch.indexer.run import doctor

        return doctor(self.settings, self.stores, repair=repair, models=models or self._models)

    # --- search --------------------------------------------------------------------------------------
    def searcher(self) -> Searcher:
        m = self.models()
        return Searcher(self.catalog, self.vectors, m.query_encoder, m.collection)

    def query_vector(
        self,
        text: str | None = None,
        *,
        image: Any = None,
        segment_id: str | None = None,
        negative_text: str | None = None,
    ):
        """The CLIP vector of a query: a text, an image (path, bytes, PIL image or RGB array; the
        whole image) or a stored segment ("more like this"), optionally minus a negative text."""
        import numpy as np

        if sum(x is not None for x in (text, image, segment_id)) != 1:
            raise ConfigError("give exactly one of text, image or segment_id")
        s = self.searcher()
        if text is not None:
            vector = s.text_vector(text)
        elif image is not None:
            vector = s.image_vector(self._pil(image))
        else:
            m = self.models()
            known = segment_id in self.catalog.get_segments([segment_id])  # SQL first: any string is safe there
            point = self.vectors.retrieve(m.collection, [segment_id]).get(segment_id) if known else None
            if point is None:
                raise KeyError(segment_id)
            vector = np.asarray(point.vector, np.float32)
        if negative_text:
            vector = minus(vector, s.text_vector(negative_text))
        return vector

    def search(
        self,
        text: str | None = None,
        *,
        image: Any = None,
        segment_id: str | None = None,
        top_k: int = 10,
        filters: SearchFilter | dict | None = None,
        negative_text: str | None = None,
        offset: int = 0,
        score_threshold: float | None = None,
    ) -> list[Hit]:
        """The ``top_k`` best segments for a text, an image or a stored segment. ``filters``: a
        ``SearchFilter`` or a dict of its fields (``kind``, ``path_prefix``, ``image_ids``,
        ``min_area``, ``max_area``)."""
        return self.search_page(
            text,
            image=image,
            segment_id=segment_id,
            top_k=top_k,
            filters=filters,
            negative_text=negative_text,
            offset=offset,
            score_threshold=score_threshold,
        ).hits

    def search_page(
        self,
        text: str | None = None,
        *,
        image: Any = None,
        segment_id: str | None = None,
        top_k: int = 10,
        filters: SearchFilter | dict | None = None,
        negative_text: str | None = None,
        offset: int = 0,
        score_threshold: float | None = None,
        group_by_image: bool = False,
        group_size: int = 3,
    ) -> SearchPage:
        """``search`` with paging (``next_offset``) and, optionally, results grouped per image."""
        vector = self.query_vector(text, image=image, segment_id=segment_id, negative_text=negative_text)
        flt = self._filter(filters)
        return self.searcher().page(
            vector,
            top_k=top_k,
            offset=offset,
            flt=flt,
            score_threshold=score_threshold,
            group_by_image=group_by_image,
            group_size=group_size,
        )

    # --- scenes and concepts -------------------------------------------------------------------------
    def object_vector(self, obj: Any):
        """A scene object's vector: a text, or a dict with one of ``text``, ``image`` (path, bytes,
        PIL, array), ``image_b64``, ``segment_id`` or ``concept`` (a learnt concept's weights),
        and optionally ``negative_text``."""
        import base64
        import binascii

        if isinstance(obj, str):
            obj = {"text": obj}
        obj = {k: v for k, v in dict(obj).items() if v is not None}
        neg = obj.pop("negative_text", None)
        if "image_b64" in obj:
            try:
                obj["image"] = base64.b64decode(obj.pop("image_b64"), validate=True)
            except (binascii.Error, ValueError):
                raise QueryError("image_b64 is not valid base64") from None
        if "concept" in obj and len(obj) == 1:
            vector = self.concepts().get(obj["concept"]).model.direction
            return minus(vector, self.searcher().text_vector(neg)) if neg else vector
        if len(obj) != 1 or next(iter(obj)) not in ("text", "image", "segment_id"):
            raise QueryError(f"a scene object has one of text, image_b64, segment_id, concept (got {sorted(obj)})")
        try:
            return self.query_vector(**obj, negative_text=neg)
        except KeyError:
            raise NotFoundError(f"no segment with id {obj.get('segment_id')!r} in this library") from None

    def scene_search(
        self,
        objects: list,
        relations: Iterable = (),
        *,
        filters: SearchFilter | dict | None = None,
        top_k: int = 10,
        offset: int = 0,
    ):
        """Images holding every object (texts or dicts, see ``object_vector``) in the relations
        given (``"0 left_of 1"``, ``(0, "inside", 1)`` or dicts), ranked: a ``ScenePage`` whose hits
        carry the segment chosen for each object and the combined score (``segsearch.scene``)."""
        from segsearch.relations import check_relations, parse_relation
        from segsearch.scene import MAX_OBJECTS, SceneSearcher

        objects = list(objects)
        if not 1 <= len(objects) <= MAX_OBJECTS:
            raise QueryError(f"a scene query has 1 to {MAX_OBJECTS} objects (got {len(objects)})")
        rels = [parse_relation(r) for r in relations]
        check_relations(len(objects), rels)  # before any model work
        vectors = [self.object_vector(o) for o in objects]
        flt = self._filter(filters)
        m = self.models()
        return SceneSearcher(self.catalog, self.vectors, m.collection).search(
            vectors, rels, flt=flt, top_k=top_k, offset=offset
        )

    def concepts(self):
        """The library's concepts (``segsearch.concepts.Concepts``: list, get, learn, search, remove)."""
        from segsearch.concepts import Concepts

        m = self.models()
        return Concepts(self.catalog, self.vectors, m.collection, self.searcher().text_vector)

    def learn_concept(self, name: str, *, text: str | None = None, positives=(), negatives=(), replace=False):
        """Create a concept, or add labelled segments to it, and tag the library (see ``concepts``)."""
        return self.concepts().learn(name, text=text, positives=positives, negatives=negatives, replace=replace)

    def concept_search(self, name: str, *, top_k: int = 10, offset: int = 0, filters=None) -> list[Hit]:
        flt = self._filter(filters)
        return self.concepts().search(name, self.searcher(), top_k=top_k, offset=offset, flt=flt)

    def _filter(self, filters: SearchFilter | dict | None) -> SearchFilter | None:
        """``filters`` as a SearchFilter; a ``tags`` entry that names no concept of this library is
        an error (NotFoundError), not a search that finds nothing."""
        flt = filters if isinstance(filters, SearchFilter) or filters is None else SearchFilter(**filters)
        if flt is not None and flt.tags:
            from segsearch.store.concepts import ConceptStore

            ConceptStore(self.catalog).require(flt.tags)
        return flt

    def _pil(self, image: Any):
        from PIL import Image

        from segsearch.images import decode_image

        if isinstance(image, Image.Image):
            return image.convert("RGB")
        if hasattr(image, "shape"):
            return Image.fromarray(image).convert("RGB")
        try:
            data = image if isinstance(image, bytes) else Path(image).expanduser().read_bytes()
            return decode_image(data, max_pixels=self.settings.max_image_pixels).pil()
        except (OSError, ImageError) as exc:
            raise ConfigError(
                f"cannot use query image {image if not isinstance(image, bytes) else '(bytes)'}: {exc}"
            ) from exc

    # --- segments ------------------------------------------------------------------------------------
    def segment(
        self,
        image: Any,
        *,
        points=None,
        labels=None,
        box=None,
        multimask: bool = True,
        mask_input=None,
        with_logits: bool = False,
    ):
        """Interactive segmentation: point prompts (``[[x, y], ...]``, labels 1 foreground / 0
        background) and/or a box (``[x, y, w, h]``) on an image (path, bytes or RGB array) ->
        ``(masks (N, H, W) bool, scores)``, best first; with ``with_logits`` also each mask's
        low-resolution logits, which given back as ``mask_input`` (with more points) refine that
        mask, as the SAM and SAM 2 tutorials do. Loads SAM (the library's, either family)."""
        import hashlib

        import numpy as np

        from segsearch.models.sam import PromptSegmenter

        rgb = np.asarray(self._pil(image))
        m = self.models()
        if self._segmenter is None:
            self._segmenter = PromptSegmenter(m.sam)
        pts = None if points is None else np.asarray(points, np.float32).reshape(-1, 2)
        lab = None if pts is None else np.asarray(labels if labels is not None else [1] * len(pts), np.int64)
        xyxy = None if box is None else [box[0], box[1], box[0] + box[2], box[1] + box[3]]
        key = hashlib.sha256(rgb.tobytes()).hexdigest()
        got = self._segmenter.predict(
            key, rgb, points=pts, labels=lab, box_xyxy=xyxy, multimask=multimask, mask_input=mask_input
        )
        order = np.argsort(-got.scores)
        if with_logits:
            return got.masks[order], got.scores[order], got.logits[order]
        return got.masks[order], got.scores[order]

    def info(self) -> dict:
        """Recorded models and settings, counts, last run and size on disk (``segsearch info``)."""
        from segsearch import record

        return record.info(self.resolve("info"), self.catalog, self.vectors)

    def export(
        self, dest: str | Path, *, format: str = "jsonl", kind: str | None = None, path_prefix: str | None = None
    ) -> int:
        """Write the indexed segments to ``dest``; returns how many. ``format``: ``jsonl`` (one
        JSON line per segment: ids, source paths, box, area, SAM's scores, COCO RLE mask), ``coco``
        (COCO instances JSON of the object segments, loadable by pycocotools) or ``parquet``
        (segments with their CLIP vectors; needs pyarrow). ``kind`` and ``path_prefix`` select."""
        from segsearch.export import export

        collection = self.models().collection if format == "parquet" else None
        return export(self.catalog, self.vectors, collection, dest, format, kind=kind, path_prefix=path_prefix)
