"""Example queries made from a library, for the page's start: what its segments are mostly of.

Zero-shot, as CLIP is meant to be used: a fixed vocabulary (COCO's 80 everyday things, plus
colours and simple shapes), each word's text vector scored against the calibration sample of the
library's object segments (``segsearch.scene.background``). Each word's cosines are standardised
over the sample (a word that scores high on everything is not a good example), each segment goes
to the word it matches best if that is clearly above the word's typical segment, and the words that
won the most segments are the examples. A library of cars suggests "car"; the shapes world suggests
"red circle".
"""

from __future__ import annotations

import numpy as np

# COCO's 80 categories (hyphens join a two-word name)
_COCO_NAMES = (
    "person bicycle car motorcycle airplane bus train truck boat traffic-light fire-hydrant stop-sign parking-meter "
    "bench bird cat dog horse sheep cow elephant bear zebra giraffe backpack umbrella handbag tie suitcase frisbee "
    "skis snowboard sports-ball kite baseball-bat baseball-glove skateboard surfboard tennis-racket bottle wine-glass "
    "cup fork knife spoon bowl banana apple sandwich orange broccoli carrot hot-dog pizza donut cake chair couch "
    "potted-plant bed dining-table toilet tv laptop mouse remote keyboard cell-phone microwave oven toaster sink "
    "refrigerator book clock vase scissors teddy-bear hair-drier toothbrush"
)
COCO = _COCO_NAMES.split()
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black")
SHAPES = ("circle", "square", "triangle", "ring", "star")
VOCABULARY = tuple(w.replace("-", " ") for w in COCO) + tuple(f"{c} {s}" for c in COLOURS for s in SHAPES)
CLEAR_Z = 2.0  # a segment counts for a word only this many standard deviations above the word's typical segment


def example_queries(sample: np.ndarray, text_vectors: np.ndarray, words=VOCABULARY, n: int = 4) -> list[str]:
    """``sample``: unit rows of the library's object vectors; ``text_vectors``: one unit row per
    word. The ``n`` words that the most segments match best (none for an empty library)."""
    if sample.size == 0 or text_vectors.shape[1] != sample.shape[1]:
        return []
    s = sample @ text_vectors.T  # segments x words
    z = (s - s.mean(0)) / np.maximum(s.std(0), 1e-6)
    best = z.argmax(1)
    clear = z[np.arange(len(z)), best] >= CLEAR_Z
    counts = np.bincount(best[clear], minlength=len(words))
    order = np.argsort(-counts, kind="stable")
    return [words[i] for i in order[:n] if counts[i] > 0]
