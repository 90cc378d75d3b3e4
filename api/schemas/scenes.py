"""Scene-query and concept bodies (re-exported by ``segsearch.api.schemas``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from segsearch.api.schemas import Filters, Links, RequestBody

# --- scene queries and concepts ------------------------------------------------------------------
_ONE_OBJECT = {
    "oneOf": [
        {"required": [k], "properties": {k: {"type": "string", "minLength": 1}}}
        for k in ("text", "image_b64", "segment_id", "concept")
    ]
}


class SceneObject(RequestBody):
    """One object of a scene query: exactly one of ``text``, ``image_b64``, ``segment_id``,
    ``concept`` (a learnt concept's name), optionally with a ``negative_text``."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_ONE_OBJECT)

    text: str | None = Field(None, min_length=1, max_length=1000)
    image_b64: str | None = Field(None, min_length=1)
    segment_id: str | None = Field(None, min_length=1, max_length=64)
    concept: str | None = Field(None, min_length=1, max_length=64)
    negative_text: str | None = Field(None, min_length=1, max_length=1000)

    @model_validator(mode="after")
    def _one(self):
        if sum(bool(x) for x in (self.text, self.image_b64, self.segment_id, self.concept)) != 1:
            raise ValueError("each object needs exactly one of text, image_b64, segment_id, concept")
        return self


class SceneRelation(RequestBody):
    model_config = ConfigDict(extra="forbid")

    subject: int = Field(..., ge=0, description="Index of the subject in objects (0-based).")
    predicate: str = Field(
        ...,
        max_length=32,
        description="left_of, right_of, above, below, inside, contains, overlaps, near, larger_than",
    )
    object: int = Field(..., ge=0)


class SceneRequest(RequestBody):
    """Images holding every object, in the relations given (see ``segsearch.scene``)."""

    model_config = ConfigDict(extra="forbid")

    objects: list[SceneObject] = Field(..., min_length=1, max_length=8)
    relations: list[SceneRelation] = Field(default_factory=list, max_length=28)
    filters: Filters = Field(default_factory=Filters)
    top_k: int = Field(10, ge=1, le=100)
    offset: int = Field(0, ge=0, le=10_000)


class SceneObjectHit(BaseModel):
    segment_id: str
    bbox: list[int]
    area_frac: float
    score: float = Field(..., description="Cosine similarity with the object's query.")
    z: float = Field(..., description="Standard score of that similarity against the library's segments.")
    tags: list[str] = Field(default_factory=list)
    urls: Links


class SceneHit(BaseModel):
    image_id: str
    image_path: str | None
    score: float = Field(..., description="Mean z of the objects: comparable across queries.")
    objects: list[SceneObjectHit]


class SceneResponse(BaseModel):
    hits: list[SceneHit]
    next_offset: int | None = None

    @classmethod
    def of(cls, page) -> SceneResponse:
        return cls(
            hits=[
                SceneHit(
                    image_id=h.image_id,
                    image_path=h.image_path,
                    score=h.score,
                    objects=[
                        SceneObjectHit(**o.__dict__, urls=Links.of(o.segment_id, h.image_id, "object"))
                        for o in h.objects
                    ],
                )
                for h in page.hits
            ],
            next_offset=page.next_offset,
        )


class ConceptRequest(RequestBody):
    """Create a concept or add labels to it (``replace`` starts it over)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    text: str | None = Field(None, max_length=1000, description="What the concept is, in words (its starting point).")
    positives: list[str] = Field(default_factory=list, max_length=1000, description="Segment ids that are it.")
    negatives: list[str] = Field(default_factory=list, max_length=1000, description="Segment ids that are not.")
    replace: bool = False


class Concept(BaseModel):
    name: str
    text: str | None
    positives: int
    negatives: int
    tagged: int = Field(..., description="Segments of the library the concept tags.")
    version: int
    threshold: float


class ConceptSearchRequest(RequestBody):
    model_config = ConfigDict(extra="forbid")

    top_k: int = Field(10, ge=1, le=200)
    offset: int = Field(0, ge=0, le=10_000)
    filters: Filters = Field(default_factory=Filters)
