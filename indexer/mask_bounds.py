"""Box bounds from low-resolution logits, for the fast engine's NMS (``fast_amg``): for each
candidate mask, an outer box that surely contains ``upsample(logits) > threshold`` and an inner box
surely inside it, from the interpolation weights alone; the exact box only where they cannot
decide, computed over the mask's own region."""

from __future__ import annotations


class BoxBounds:
    """Mixed into ``FastAMG`` (uses its ``sam``, ``predictor`` and ``BOUNDS_CHUNK``)."""

    def _interp_maps(self, low_hw, crop_size):
        """Matrices Ry (H×lh), Rx (W×lw) with upsample(L) == Ry @ L @ Rx.T for the model's
        ``postprocess_masks`` (bilinear to the padded input, crop, bilinear to the image)."""
        import torch
        import torch.nn.functional as F

        key = (tuple(low_hw), tuple(crop_size), tuple(self.predictor.input_size))
        if getattr(self, "_maps_key", None) != key:
            img = self.sam.image_encoder.img_size

            def lin(n, m):  # (m, n): 1-D linear interpolation n -> m, PyTorch's half-pixel rule
                eye = torch.eye(n, dtype=torch.float64)[None]
                return F.interpolate(eye, size=m, mode="linear", align_corners=False)[0].T

            maps = []
            for ax in (0, 1):
                n_low, n_in, n_out = low_hw[ax], self.predictor.input_size[ax], crop_size[ax]
                maps.append((lin(n_in, n_out) @ lin(n_low, img)[:n_in]).float())
            self._maps_key, self._maps = key, maps
        return self._maps

    def _input_frame_stability(self, low, idx, thr: float, off: float):
        """SAM's stability score of each ``low[idx]`` as it would be at the model's input frame
        (bilinear to the padded square input, cropped to the image's part): the first step of
        ``postprocess_masks``, counted per cell (``bilinear_counts``)."""
        img = self.sam.image_encoder.img_size
        in_h, in_w = self.predictor.input_size
        return _stability(low[idx], (img, img), (in_h, in_w), thr, off)

    CELLS_FROM_SCALE = 4  # count per cell when the photo has this many times the input frame's pixels

    def _full_stability(self, low, idx, crop_size, thr: float, off: float):
        """SAM's stability score of each ``low[idx]`` at full resolution, as the reference computes
        it. For a photo much larger than the model's input, the second bilinear step (input frame ->
        photo) is counted per cell, so the work follows the masks' outlines, not the photo's pixels;
        otherwise the model's own upsampling is cheaper."""
        import torch
        import torch.nn.functional as F
        from segment_anything.utils.amg import calculate_stability_score

        img = self.sam.image_encoder.img_size
        in_h, in_w = self.predictor.input_size
        if crop_size[0] * crop_size[1] < self.CELLS_FROM_SCALE * in_h * in_w:
            step = self._upsample_step(crop_size)
            return torch.cat(
                [
                    calculate_stability_score(self._upsample(low[idx[j : j + step]], crop_size), thr, off)
                    for j in range(0, len(idx), step)
                ]
            )
        frame = F.interpolate(low[idx][:, None], (img, img), mode="bilinear", align_corners=False)
        return _stability(frame[:, 0, :in_h, :in_w], tuple(crop_size), tuple(crop_size), thr, off)

    def _bound_consts(self, low_hw, crop_size):
        """What the box bounds need from the interpolation maps, once per crop (the screening runs
        per decoder batch): each low-resolution row/column's first and last full-resolution index,
        the valid low-resolution extent, and the inner bound's weights and neighbourhood."""
        import torch

        key = (tuple(low_hw), tuple(crop_size), tuple(self.predictor.input_size))
        if getattr(self, "_consts_key", None) != key:
            ry, rx = self._interp_maps(low_hw, crop_size)
            first_y, last_y = self._support_span(ry)
            first_x, last_x = self._support_span(rx)
            ny, nx = int((last_y >= 0).nonzero().max()) + 1, int((last_x >= 0).nonzero().max()) + 1
            wy, ystar = ry.max(0)
            wx, xstar = rx.max(0)
            reach = max(_reach(ry), _reach(rx))
            w = wy[:, None] * wx[None, :]
            self._consts = {
                "outer": (first_x, first_y, last_x, last_y, ny, nx),
                "inner": (xstar, ystar, 2 * reach + 1, torch.where(w > 0, w, 0), torch.where(w > 0, 1 - w, 0)),
            }
            self._consts_key = key
        return self._consts

    def _outer_boxes(self, low, crop_size):
        """XYXY boxes that surely contain ``upsample(low) > threshold``: the full-resolution rows and
        columns whose interpolation support meets the low-resolution box."""
        import torch

        first_x, first_y, last_x, last_y, ny, nx = self._bound_consts(low.shape[-2:], crop_size)["outer"]
        c = self.BOUNDS_CHUNK  # padding never shows: only the valid ny x nx part
        x0, y0, x1, y1, _ = _extents((low[j : j + c, :ny, :nx] for j in range(0, len(low), c)), self.sam.mask_threshold)
        return torch.stack([first_x[x0], first_y[y0], last_x[x1], last_y[y1]], 1)

    def _inner_boxes(self, low, crop_size):
        """XYXY boxes surely inside the exact box: for a positive low-resolution pixel j, the
        full-resolution pixel with the largest interpolation weight w on j is at least
        ``w·L[j] + (1-w)·min(L over its support)``; where that is above the threshold the pixel is
        surely in the mask. Rows are -1 where no pixel is sure."""
        import torch

        xstar, ystar, k, w_on, w_off = self._bound_consts(low.shape[-2:], crop_size)["inner"]
        thr = self.sam.mask_threshold

        def sure(d):
            """d = L - thr; > 0 exactly where the pixel is sure: w > 0, L > thr and the bound above."""
            return torch.minimum(torch.addcmul(w_off * _min_filter(d, k), w_on, d), d)

        # a few candidates at a time, so a chunk's passes stay in cache instead of streaming
        # hundreds of 128x128 maps through memory
        c = self.BOUNDS_CHUNK
        x0, y0, x1, y1, found = _extents(sure(low[j : j + c] - thr) for j in range(0, len(low), c))
        out = torch.stack([xstar[x0], ystar[y0], xstar[x1], ystar[y1]], 1).float()
        out[~found] = -1
        return out

    @staticmethod
    def _support_span(r):
        """For each low-resolution index j, the first and last full-resolution index it reaches."""
        import torch

        nz = r != 0
        idx = torch.arange(r.shape[0])[:, None].expand_as(r)
        big = r.shape[0]
        first = torch.where(nz, idx, big).min(0).values
        last = torch.where(nz, idx, -1).max(0).values
        return first, last

    def _exact_boxes(self, low, crop_size):
        """XYXY boxes (inclusive, as ``batched_mask_to_box``) of ``upsample(low) > threshold``.

        A full-resolution pixel can only be positive where some low-resolution pixel in its
        (non-negative) interpolation support is positive, so each box is found by upsampling just
        the rows/columns reached from the low-resolution box."""
        import torch

        thr = self.sam.mask_threshold
        ry, rx = self._interp_maps(low.shape[-2:], crop_size)
        ry_nz, rx_nz = ry != 0, rx != 0
        out = torch.zeros(len(low), 4, dtype=torch.int64)
        pos = low > thr
        rows_any, cols_any = pos.any(2), pos.any(1)
        for i in range(len(low)):
            lr = torch.nonzero(rows_any[i]).flatten()
            lc = torch.nonzero(cols_any[i]).flatten()
            if len(lr) == 0:
                continue
            ys = torch.nonzero(ry_nz[:, lr[0] : lr[-1] + 1].any(1)).flatten()
            xs = torch.nonzero(rx_nz[:, lc[0] : lc[-1] + 1].any(1)).flatten()
            if len(ys) == 0 or len(xs) == 0:
                continue
            y0, y1, x0, x1 = int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1
            sy = torch.nonzero(ry_nz[y0:y1].any(0)).flatten()
            sx = torch.nonzero(rx_nz[x0:x1].any(0)).flatten()
            a, b, c, d = int(sy[0]), int(sy[-1]) + 1, int(sx[0]), int(sx[-1]) + 1
            region = (ry[y0:y1, a:b] @ low[i, a:b, c:d].float() @ rx[x0:x1, c:d].T) > thr
            yy = torch.nonzero(region.any(1)).flatten()
            xx = torch.nonzero(region.any(0)).flatten()
            if len(yy):
                out[i] = torch.tensor([x0 + int(xx[0]), y0 + int(yy[0]), x0 + int(xx[-1]), y0 + int(yy[-1])])
        return out


def _reach(r) -> int:
    """For a 1-D interpolation map r (full x low resolution): how far, in low-resolution pixels,
    the support of each low-resolution pixel j's representative full-resolution pixel (the one
    with the largest weight on j) reaches from j. One for SAM's two bilinear steps at any photo
    size; the inner bound's minimum runs over that neighbourhood."""
    import torch

    wmax, star = r.max(0)
    nz = (r[star] != 0).to(torch.uint8)  # row j: the support of j's representative pixel
    j = torch.arange(nz.shape[0])
    first = nz.argmax(1)
    last = nz.shape[1] - 1 - nz.flip(1).argmax(1)
    reach = torch.maximum(j - first, last - j)[wmax > 0]
    return int(reach.max()) if len(reach) else 0


def _extents(maps, thr: float = 0.0):
    """Box extents of ``map > thr`` for chunks of (n, H, W) maps: first/last column and row
    (x0, y0, x1, y1; 0 where the map is nowhere above) and whether it is anywhere, via row and
    column maxima (one pass per chunk, no boolean masks)."""
    import torch

    rows, cols = [], []
    for v in maps:
        rows.append(v.amax(2) > thr)
        cols.append(v.amax(1) > thr)
    if not rows:  # no maps
        none = torch.zeros(0, dtype=torch.long)
        return none, none, none, none, torch.zeros(0, dtype=torch.bool)
    rows, cols = torch.cat(rows), torch.cat(cols)
    r8, c8 = rows.to(torch.uint8), cols.to(torch.uint8)  # argmax: the first 1
    x0, y0 = c8.argmax(1), r8.argmax(1)
    x1, y1 = cols.shape[1] - 1 - c8.flip(1).argmax(1), rows.shape[1] - 1 - r8.flip(1).argmax(1)
    return x0, y0, x1, y1, rows.any(1)


def _min_filter(x, k: int):
    """Minimum over a k×k neighbourhood of each pixel of (N, H, W) (borders: the pixels that exist),
    as shifted elementwise minima on overlapping slices, rows then columns: no padded copy (filling
    one with +inf cost as much as the minima) and much faster on CPU than max_pool2d."""
    import torch

    r = k // 2
    if r == 0:
        return x
    out = x.clone()
    for axis in (1, 2):
        src = out.clone() if axis == 2 else x
        n = x.shape[axis]
        for d in range(1, min(r, n - 1) + 1):
            lo, hi = out.narrow(axis, d, n - d), out.narrow(axis, 0, n - d)
            torch.minimum(lo, src.narrow(axis, 0, n - d), out=lo)
            torch.minimum(hi, src.narrow(axis, d, n - d), out=hi)
    return out


def _taps(n_in: int, n_out: int, device):
    """PyTorch's bilinear (``align_corners=False``) taps along one axis, computed as its CPU kernel
    does in float32: for each output index, the source cell ``h`` (its row pair is ``h``, ``h + 1``
    of the source padded by one replicated row) and the weight ``lam`` of the second row."""
    import numpy as np
    import torch

    scale = np.float32(n_in) / np.float32(n_out)
    dst = np.arange(n_out, dtype=np.float32)
    src = np.maximum(scale * (dst + np.float32(0.5)) - np.float32(0.5), np.float32(0))
    h = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    lam = (src - h.astype(np.float32)).astype(np.float32)
    lam[h == n_in - 1] = 0  # the last row interpolates with itself
    return torch.from_numpy(h).to(device), torch.from_numpy(lam).to(device)


def _cell_table(h, lam, n_in: int, valid: int):
    """Per source cell: how many (valid) output indices fall in it, and their weights padded to the
    most any cell has (-1 weight = no output)."""
    import torch

    h, lam = h[:valid], lam[:valid]
    count = torch.bincount(h, minlength=n_in)
    width = int(count.max()) if len(count) else 0
    first = torch.zeros(n_in + 1, dtype=torch.long, device=h.device)
    first[1:] = torch.cumsum(count, 0)
    slot = torch.arange(len(h), device=h.device) - first[h]
    table = torch.full((n_in, max(width, 1)), -1.0, device=h.device)
    table[h, slot] = lam
    return count.float(), table


def cell_plan(src_hw, out_hw, valid_hw, device):
    """The per-cell tables of one bilinear resize of ``src_hw`` maps to ``out_hw`` (``align_corners=
    False``), cropped to its first ``valid_hw`` rows and columns: valid output pixels per source
    cell, and each cell's row and column weights. The same for every map of that size."""
    (n_h, n_w), (out_h, out_w), (v_h, v_w) = src_hw, out_hw, valid_hw
    cy, ty = _cell_table(*_taps(n_h, out_h, device), n_h, v_h)
    cx, tx = _cell_table(*_taps(n_w, out_w, device), n_w, v_w)
    return cy[:, None] * cx[None, :], ty, tx


def bilinear_counts(src, plan, thresholds):
    """For each map of ``src`` (B, H, W): how many pixels of the resize that ``plan`` (``cell_plan``)
    describes lie above each threshold, without making the resized maps. An output pixel is a convex combination of the
    four corners of its source cell, so a cell whose corners are all above a threshold counts all
    its output pixels, one whose corners are all at or below counts none, and only the cells an
    edge crosses are evaluated pixel by pixel (with the kernel's own weights and order)."""
    import torch
    import torch.nn.functional as F

    pixels, ty, tx = plan
    sp = F.pad(src.float()[:, None], (0, 1, 0, 1), mode="replicate")[:, 0]
    c00, c01, c10, c11 = sp[:, :-1, :-1], sp[:, :-1, 1:], sp[:, 1:, :-1], sp[:, 1:, 1:]
    cmin = torch.minimum(torch.minimum(c00, c01), torch.minimum(c10, c11))
    cmax = torch.maximum(torch.maximum(c00, c01), torch.maximum(c10, c11))
    out = []
    for t in thresholds:
        n = ((cmin > t) * pixels).sum((1, 2))
        # cells an edge crosses, and plateaus at the threshold (c(1-w) + cw need not round to c)
        b, y, x = ((cmax >= t) & ~(cmin > t) & (pixels > 0)).nonzero(as_tuple=True)
        for j in range(0, len(b), 4096):  # bounded temporaries: 4096 cells x their output pixels
            bb, yy, xx = b[j : j + 4096], y[j : j + 4096], x[j : j + 4096]
            wy, wx = ty[yy][:, :, None], tx[xx][:, None, :]
            top = c00[bb, yy, xx, None, None] * (1 - wx) + c01[bb, yy, xx, None, None] * wx
            bottom = c10[bb, yy, xx, None, None] * (1 - wx) + c11[bb, yy, xx, None, None] * wx
            v = top * (1 - wy) + bottom * wy
            hit = ((v > t) & (wy >= 0) & (wx >= 0)).sum((1, 2)).float()
            n = n.index_add(0, bb, hit)
        out.append(n)
    return out


def _stability(src, out_hw, valid_hw, thr: float, off: float):
    """``calculate_stability_score`` of the resized maps, from ``bilinear_counts`` (64 maps at a time)."""
    import torch

    plan = cell_plan(src.shape[-2:], out_hw, valid_hw, src.device)  # once, not per chunk
    res = []
    for j in range(0, len(src), 64):
        inter, union = bilinear_counts(src[j : j + 64], plan, (thr + off, thr - off))
        res.append(inter / union)  # 0 / 0 = nan, as the reference computes it
    return torch.cat(res) if res else torch.empty(0, device=src.device)


def bilinear_boxes(src, out_hw, thr: float):
    """XYXY boxes (inclusive, as ``batched_mask_to_box``; zeros where a map is nowhere above) of
    ``resize(src) > thr`` for one bilinear resize of (B, h, w) maps to ``out_hw``
    (``align_corners=False``), without making the resized maps: a cell whose four corners are
    above counts whole, one an edge crosses is evaluated pixel by pixel with the kernel's own
    weights and order (as ``bilinear_counts``), and the extremes of both give the box. Work
    follows the maps' outlines, not ``out_hw``'s pixels (SAM 2's one-step resize to the photo)."""
    import torch
    import torch.nn.functional as F

    b = src.shape[0]
    out = torch.zeros(b, 4, dtype=torch.int64, device=src.device)
    if b == 0:
        return out
    (n_h, n_w), (out_h, out_w) = src.shape[-2:], out_hw
    cy, ty = _cell_table(*_taps(n_h, out_h, src.device), n_h, out_h)
    cx, tx = _cell_table(*_taps(n_w, out_w, src.device), n_w, out_w)
    cy, cx = cy.long(), cx.long()
    fy, fx = torch.cumsum(cy, 0) - cy, torch.cumsum(cx, 0) - cx  # each cell's first output row / column
    sp = F.pad(src.float()[:, None], (0, 1, 0, 1), mode="replicate")[:, 0]
    c00, c01, c10, c11 = sp[:, :-1, :-1], sp[:, :-1, 1:], sp[:, 1:, :-1], sp[:, 1:, 1:]
    cmin = torch.minimum(torch.minimum(c00, c01), torch.minimum(c10, c11))
    cmax = torch.maximum(torch.maximum(c00, c01), torch.maximum(c10, c11))
    has = (cy[:, None] > 0) & (cx[None, :] > 0)
    big = max(out_h, out_w) + 1
    # cells wholly inside: their extents by row and column reductions (every output pixel is set)
    inside = (cmin > thr) & has
    x0, y0, x1, y1, any_in = _extents([inside.to(torch.uint8)], 0)
    lo = torch.stack([fx[x0], fy[y0]], 1)  # (x0, y0)
    hi = torch.stack([fx[x1] + cx[x1] - 1, fy[y1] + cy[y1] - 1], 1)  # (x1, y1)
    lo[~any_in], hi[~any_in] = big, -1
    # cells an edge crosses (and plateaus at thr), only where they can widen that box: a cell in a
    # row (column) of cells that holds an inside cell shares its output rows (columns)
    edge = (cmax >= thr) & ~(cmin > thr) & has
    ny, nx = edge.shape[1:]
    ar_y, ar_x = torch.arange(ny, device=src.device), torch.arange(nx, device=src.device)
    cy0, cy1 = torch.where(any_in, y0, ny), torch.where(any_in, y1, -1)
    cx0, cx1 = torch.where(any_in, x0, nx), torch.where(any_in, x1, -1)
    out_y = (ar_y[None] < cy0[:, None]) | (ar_y[None] > cy1[:, None])  # B x ny
    out_x = (ar_x[None] < cx0[:, None]) | (ar_x[None] > cx1[:, None])
    bb, y, x = (edge & (out_y[:, :, None] | out_x[:, None, :])).nonzero(as_tuple=True)
    for j in range(0, len(bb), 4096):  # bounded temporaries, as bilinear_counts
        b2, yy, xx = bb[j : j + 4096], y[j : j + 4096], x[j : j + 4096]
        wy, wx = ty[yy][:, :, None], tx[xx][:, None, :]
        top = c00[b2, yy, xx, None, None] * (1 - wx) + c01[b2, yy, xx, None, None] * wx
        bottom = c10[b2, yy, xx, None, None] * (1 - wx) + c11[b2, yy, xx, None, None] * wx
        hit = ((top * (1 - wy) + bottom * wy) > thr) & (wy >= 0) & (wx >= 0)  # k x rows x cols
        rows, cols = hit.any(2), hit.any(1)
        found = rows.any(1)
        if not bool(found.any()):
            continue
        b2, yy, xx, rows, cols = b2[found], yy[found], xx[found], rows[found], cols[found]
        r8, c8 = rows.to(torch.uint8), cols.to(torch.uint8)
        first = torch.stack([fx[xx] + c8.argmax(1), fy[yy] + r8.argmax(1)], 1)
        last = torch.stack(
            [fx[xx] + cols.shape[1] - 1 - c8.flip(1).argmax(1), fy[yy] + rows.shape[1] - 1 - r8.flip(1).argmax(1)], 1
        )
        lo.scatter_reduce_(0, b2[:, None].expand(-1, 2), first, "amin")
        hi.scatter_reduce_(0, b2[:, None].expand(-1, 2), last, "amax")
    found = hi[:, 0] >= 0
    out[found] = torch.cat([lo, hi], 1)[found]
    return out
