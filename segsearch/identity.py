"""Deterministic identities: images by content, segments by (image, pipeline, mask index),
vector collections by embedding model."""

from __future__ import annotations

import hashlib
import json
import re
import uuid

_SEGMENT_NS = uuid.UUID("6f1c3c52-5d0e-4a51-9a1e-2b8e6c1f0a77")


def image_id(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pipeline_fingerprint(sam_fp: str, clip_fp: str, amg: dict, crop: dict) -> str:
    """Everything that changes what segments/vectors an image gets (not batch sizes)."""
    amg = {k: v for k, v in amg.items() if k != "points_per_batch"}
    if amg.get("prompts", "grid") == "grid":  # every grid prompt, as before the setting existed:
        amg.pop("prompts", None)  # libraries indexed then keep their fingerprints
    if amg.get("mask_side", 0) == 0:  # masks at every photo's own size, as before the setting
        amg.pop("mask_side", None)
    if amg.get("sam_precision", "fp32") == "fp32":  # as before the setting
        amg.pop("sam_precision", None)
    blob = json.dumps({"sam": sam_fp, "clip": clip_fp, "amg": amg, "crop": crop}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def video_fingerprint(pipeline: str, video: dict) -> str:
    blob = json.dumps({"pipeline": pipeline, "video": video}, sort_keys=True)
    return "v" + hashlib.sha256(blob.encode()).hexdigest()[:23]


def segment_id(image: str, fingerprint: str, mask_index: int) -> str:
    return str(uuid.uuid5(_SEGMENT_NS, f"{image}:{fingerprint}:{mask_index}"))


def collection_name(clip_fingerprint: str) -> str:
    """One collection per embedding model: two CLIP models never share a vector space."""
    slug = re.sub(r"[^a-z0-9]+", "-", clip_fingerprint.split("@")[0].lower()).strip("-")[:40]
    digest = hashlib.sha256(clip_fingerprint.encode()).hexdigest()[:12]
    return f"segments-{slug}-{digest}"
