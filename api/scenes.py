"""Scene-query and concept routes: ``POST /v1/search/scene`` and ``/v1/concepts``.

Thin handlers over ``segsearch.scene`` and ``segsearch.concepts``; errors of the query itself
(an unknown predicate, a cycle, unknown segment ids) are ``QueryError`` -> 422 problem+json, an
unknown concept is 404."""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter, Depends, Response

from segsearch.errors import NotFoundError
from segsearch.relations import Relation, check_relations
from segsearch.scene import SceneSearcher
from segsearch.search import SearchPage, minus

from segsearch.api import schemas
from segsearch.api.deps import ServicesDep, require_admin, require_read
from segsearch.api.routes import NOT_FOUND, b64decode, decode_upload
from segsearch.api.services import Services

router = APIRouter(prefix="/v1", dependencies=[Depends(require_read)])
INVALID = {422: {"model": schemas.Problem, "description": "A query no image can answer as written"}}


def object_vector(services: Services, obj: schemas.SceneObject) -> np.ndarray:
    if obj.text:
        v = services.text_vector(obj.text)
    elif obj.image_b64:  # the caller holds a work slot
        v = services.image_vector(decode_upload(b64decode(obj.image_b64), services).pil())
    elif obj.concept:
        v = services.concepts.get(obj.concept).model.direction
    else:
        known = obj.segment_id in services.catalog.get_segments([obj.segment_id])  # SQL first: any id is safe there
        point = services.vectors.retrieve(services.collection, [obj.segment_id]).get(obj.segment_id) if known else None
        if point is None:
            raise NotFoundError(f"no segment with id {obj.segment_id!r} in this library")
        v = np.asarray(point.vector, np.float32)
    return minus(v, services.text_vector(obj.negative_text)) if obj.negative_text else v


@router.post("/search/scene", response_model=schemas.SceneResponse, responses={**NOT_FOUND, **INVALID})
def search_scene(body: schemas.SceneRequest, services: ServicesDep):
    """Images holding every object in the relations given, each with the segment chosen per object."""
    rels = [Relation(r.subject, r.predicate, r.object) for r in body.relations]
    check_relations(len(body.objects), rels)  # before any model work
    with services.scene_work.slot():  # a scene query can cost a second of CPU: a slot of its own pool
        vectors = [object_vector(services, o) for o in body.objects]
        page = SceneSearcher(services.catalog, services.vectors, services.collection).search(
            vectors, rels, flt=body.filters.to_filter(), top_k=body.top_k, offset=body.offset
        )
    return schemas.SceneResponse.of(page)


@router.get("/concepts", response_model=list[schemas.Concept])
def list_concepts(services: ServicesDep):
    return [schemas.Concept(**c.summary()) for c in services.concepts.list()]


@router.post("/concepts", response_model=schemas.Concept, responses={**INVALID}, dependencies=[Depends(require_admin)])
def learn_concept(body: schemas.ConceptRequest, services: ServicesDep):
    """Create a concept, or add labelled segments to it, train it and tag the library."""
    with services.work.slot():
        c = services.concepts.learn(
            body.name,
            text=body.text,
            positives=body.positives,
            negatives=body.negatives,
            replace=body.replace,
            max_concepts=services.settings.max_concepts,
        )
    return schemas.Concept(**c.summary())


@router.get("/concepts/{name}", response_model=schemas.Concept, responses=NOT_FOUND)
def get_concept(name: str, services: ServicesDep):
    return schemas.Concept(**services.concepts.get(name).summary())


@router.delete(
    "/concepts/{name}",
    status_code=204,
    response_class=Response,
    responses=NOT_FOUND,
    dependencies=[Depends(require_admin)],
)
def delete_concept(name: str, services: ServicesDep):
    services.concepts.remove(name)
    return Response(status_code=204)


@router.post("/concepts/{name}/search", response_model=schemas.SearchResponse, responses=NOT_FOUND)
def concept_search(name: str, body: schemas.ConceptSearchRequest, services: ServicesDep):
    """Segments ranked by the concept; each hit's score is the concept's probability."""
    hits = services.concepts.search(
        name, services.searcher, top_k=body.top_k + 1, offset=body.offset, flt=body.filters.to_filter()
    )
    more = len(hits) > body.top_k
    return schemas.SearchResponse.of(
        SearchPage(hits=hits[: body.top_k], next_offset=body.offset + body.top_k if more else None)
    )
