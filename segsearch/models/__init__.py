"""Model registry (named specs), weight download/verification and model factories.

``registry`` holds plain data (no torch import); ``sam`` and ``clip`` build models lazily.
"""

from segsearch.models.registry import (
    ClipSpec,
    SamSpec,
    Weights,
    amg_params,
    get_clip_spec,
    get_sam_spec,
    list_specs,
    register_clip,
    register_sam,
)

__all__ = [
    "ClipSpec",
    "SamSpec",
    "Weights",
    "amg_params",
    "get_clip_spec",
    "get_sam_spec",
    "list_specs",
    "register_clip",
    "register_sam",
]
