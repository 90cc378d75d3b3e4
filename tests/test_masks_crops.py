import numpy as np
import pytest
from conftest import scene

from segsearch.crops import FILL, cut_crop, square_box, whole_image
from segsearch.masks import MaskSet, decode_rle, encode_rle, rle_area


def test_rle_roundtrip_and_area():
    m = np.zeros((37, 53), bool)
    m[5:20, 10:30] = True
    m[30, 50] = True
    rle = encode_rle(m)
    assert isinstance(rle["counts"], str) and rle["size"] == [37, 53]
    assert np.array_equal(decode_rle(rle), m)
    assert rle_area(rle) == m.sum()


def test_maskset_moves_all_arrays_together():
    masks = np.zeros((3, 10, 10), bool)
    masks[0, :2, :2] = True  # area 4
    masks[1, :, :] = True  # area 100
    masks[2, 5:8, 5:9] = True  # area 12
    ms = MaskSet.from_masks(masks, [0.1, 0.2, 0.3], [0.9, 0.8, 0.7])
    assert ms.boxes.tolist() == [[0, 0, 2, 2], [0, 0, 10, 10], [5, 5, 4, 3]]
    kept = ms.filter(ms.areas >= 10)
    assert len(kept) == 2 and kept.predicted_iou.tolist() == pytest.approx([0.2, 0.3])
    canon = ms.sort_canonical()
    assert canon.areas.tolist() == [100, 12, 4]
    assert canon.stability_score.tolist() == pytest.approx([0.8, 0.7, 0.9])
    both = MaskSet.cat([kept, ms.filter([0])])
    assert len(both) == 3 and both.masks.shape == (3, 10, 10)


def test_square_box_pads_and_centres():
    x0, y0, side = square_box((10, 20, 40, 20), 0.25, 200, 200)
    assert side == 60  # longer side 40 + 2 * 0.25 * 40
    assert (x0 + side / 2, y0 + side / 2) == (30, 30)


@pytest.mark.parametrize("mode", ["masked", "box", "blur"])
def test_crop_modes(mode):
    rgb = scene(box=(30, 20, 60, 50), color=(220, 30, 30), bg=(0, 200, 0))
    mask = np.zeros(rgb.shape[:2], bool)
    mask[20:70, 30:90] = True
    crop = np.asarray(cut_crop(rgb, mask, (30, 20, 60, 50), mode=mode, padding=0.2, size=64))
    assert crop.shape == (64, 64, 3)
    centre, corner = crop[32, 32], crop[2, 2]
    assert centre[0] > 180 and centre[1] < 60  # the object itself
    if mode == "masked":
        assert tuple(corner) == FILL  # context removed
    elif mode == "box":
        assert corner[1] > 180  # green context kept
    else:
        assert corner[1] > 100 and tuple(corner) != FILL  # context kept, blurred


def test_crop_near_border_pads_outside_image():
    rgb = scene(box=(0, 0, 20, 20))
    mask = np.zeros(rgb.shape[:2], bool)
    mask[:20, :20] = True
    crop = np.asarray(cut_crop(rgb, mask, (0, 0, 20, 20), mode="box", padding=0.5, size=40))
    assert tuple(crop[0, 0]) == FILL and crop[20, 20, 0] > 150


def test_whole_image_is_letterboxed_square():
    im = np.asarray(whole_image(scene(width=200, height=100), size=50))
    assert im.shape == (50, 50, 3)
    assert tuple(im[0, 25]) == FILL and tuple(im[25, 25]) != FILL


def test_window_decode_equals_a_slice_of_the_full_mask():
    """Relations decode only the boxes they compare: the same pixels as a full decode, any window."""
    from segsearch.masks import decode_window, encode_rle

    rng = np.random.default_rng(0)
    for _ in range(300):
        h, w = (int(v) for v in rng.integers(1, 50, 2))
        m = rng.random((h, w)) < rng.random()
        x0, x1 = sorted(int(v) for v in rng.integers(-3, w + 3, 2))
        y0, y1 = sorted(int(v) for v in rng.integers(-3, h + 3, 2))
        got = decode_window(encode_rle(m), x0, y0, x1, y1)
        want = m[max(0, y0) : max(0, min(h, y1)), max(0, x0) : max(0, min(w, x1))]
        assert got.shape == want.shape and (got == want).all()


def test_overlay_outlines_without_changing_the_objects_colour():
    """A blue star must stay blue on the page: the segment's pixels are untouched, the rest dimmed
    and a line drawn outside it."""
    from segsearch import render
    from segsearch.masks import encode_rle

    rgb = np.zeros((60, 80, 3), np.uint8)
    rgb[:] = (200, 200, 200)
    m = np.zeros((60, 80), bool)
    m[20:40, 30:50] = True
    rgb[m] = (35, 75, 215)
    out = np.asarray(render.overlay(rgb, encode_rle(m)))
    assert (out[m] == (35, 75, 215)).all()
    assert (out[5, 5] < rgb[5, 5]).all()  # dimmed outside
    assert (out[19, 40] == 255).all() and (out[40, 40] == 255).all()  # outlined just outside


def test_a_working_mask_carried_to_the_photo_equals_the_dense_upscale():
    """Masks made on a working view reach the photo's pixels from their runs alone; the RLE, area
    and box are exactly those of the dense nearest upscale, for any sizes and ratios."""
    from segsearch.masks import ScaledMask, mask_box_xywh, upscaled_rle

    rng = np.random.default_rng(7)
    for t in range(200):
        h, w = (int(v) for v in rng.integers(1, 24, 2))
        height, width = int(h * rng.uniform(1, 5)) + int(rng.integers(0, 3)), int(w * rng.uniform(1, 5))
        height, width = max(height, h), max(width, w)
        m = rng.random((h, w)) < rng.uniform(0, 1)
        m[:] = False if t % 9 == 0 else m  # (empty masks too)
        m[:] = True if t % 13 == 0 else m
        dense = m[(np.arange(height) * h) // height][:, (np.arange(width) * w) // width]
        rle, area, box = upscaled_rle(m, height, width)
        assert rle == encode_rle(dense) and area == int(dense.sum()) == rle_area(rle)
        assert box == mask_box_xywh(dense)
        assert (ScaledMask(m, height, width)[1 : height - 1, 2:width] == dense[1 : height - 1, 2:width]).all()
