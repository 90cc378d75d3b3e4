"""Shapes world: deterministic scenes whose ground truth matches their pixels."""

import numpy as np
import pytest

from segsearch.eval.shapes import COLORS, MIN_VISIBLE, SHAPES, make_scene, shape_mask
from segsearch.search import prompt_for


def test_scenes_are_deterministic():
    a, b = make_scene(123), make_scene(123)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.masks, b.masks) and a.labels == b.labels
    assert not np.array_equal(make_scene(124).image, a.image)


@pytest.mark.parametrize("seed", range(0, 20))
def test_ground_truth_matches_pixels(seed):
    sc = make_scene(seed)
    h, w = sc.image.shape[:2]
    assert 256 <= w <= 768 and 256 <= h <= 768 and 0.55 <= h / w <= 1.75
    assert 1 <= len(sc.labels) <= 6 and sc.masks.shape == (len(sc.labels), h, w)
    # visible masks are disjoint and non-trivial
    assert (sc.masks.sum(0) <= 1).all()
    for m, (colour, shape) in zip(sc.masks, sc.labels):
        assert m.sum() > 150
        mean = sc.image[m].astype(float).mean(0)
        assert np.linalg.norm(mean - np.array(COLORS[colour])) < 30, (colour, shape, mean)


def test_every_colour_and_shape_occurs():
    seen = {lab for s in range(100) for lab in make_scene(s).labels}
    assert {c for c, _ in seen} == set(COLORS) and {s for _, s in seen} == set(SHAPES)


def test_occlusion_keeps_enough_visible():
    # full shape areas are redrawn from the generator's own geometry: visible >= MIN_VISIBLE
    for seed in range(20):
        sc = make_scene(seed)
        later = np.zeros(sc.masks.shape[1:], bool)
        for m in sc.masks[::-1]:
            assert not (m & later).any()
            later |= m
    ring = shape_mask("ring", 50, 50, 60, 0.0, 100, 100)
    assert not ring[50, 50] and ring[50, 22]
    assert MIN_VISIBLE >= 0.5


def test_prompt_templating():
    assert prompt_for("red car") == "a photo of a red car."
    assert prompt_for("a yellow ring") == "a yellow ring"
    assert prompt_for("  The   red car ") == "The red car"
