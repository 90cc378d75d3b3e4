"""Which grid prompts to decode: all of them, or coarse to fine (``prompts="adaptive"``).

SAM's automatic mask generator decodes every point of an n x n grid (1,024 for SAM's 32 x 32) and
then throws most of the masks away: almost every prompt lands on an object another prompt already
found. With a real-size SAM the grid search is most of a photo's cost (3.6 GFLOP per prompt, about
four times the ViT-B image encoder per photo), so it pays to ask which prompts can say something
new before decoding them.

``adaptive`` decodes the grid in levels: every ``s``-th point first (about 8 x 8), then the points
halfway between, and so on down to the whole grid. A point of a later level is *skipped* when an
already decoded point nearby (within two of the level's steps) stands for it, and *every* decoded
point nearby does: each

* looks the same in the image embedding (cosine similarity of the embedding cells under the two
  points >= ``similarity``), and
* already explains it: one of that point's candidate masks covers it, or that point produced no
  candidate at all (both on the same featureless background).

(Requiring one such neighbour instead of all of them decoded a third fewer prompts but lost 3-7%
of the full grid's masks on held-out scenes: masks that start between two decoded points.)

So prompts are spent where the embedding changes (edges, small or nested objects: a small shape
inside a large one is covered by the large one's mask but does not look like it) and where no
decoded mask reaches yet. Every decoded point is a point of the full grid, decoded as the full grid
would decode it; with ``similarity`` > 1 nothing is skipped and the masks are the full grid's.
What it keeps against the full grid (matched IoU >= 0.9) on held-out scenes, small-object scenes
included, is measured by ``bench/prompts.py``.
"""

from __future__ import annotations

import numpy as np

PROMPT_MODES = ("grid", "adaptive")
# Cosine similarity of two embedding cells above which a decoded point stands for its neighbour.
# Chosen on the validation scenes (bench/prompts.py --split validation): see bench/RESULTS.md.
SIMILARITY = 0.65
FIRST_SPACING = 8  # points per side of the first level (SAM's 32 x 32 grid: every 4th point)
# Grids sparser than this are decoded whole: at the bundled models' 16 x 16 (points 64 px apart at
# 1024 px) skipping lost 5% of the segments on held-out small-object scenes (shape recall 0.237 ->
# 0.225) for a 1.2-1.5x faster decoder; at 32 x 32 it keeps >= 98% (bench/prompts.py).
MIN_SIDE = 32


def strides(n: int) -> list[int]:
    """Grid steps of the levels for an n x n grid, coarse to fine, ending at 1 (every point)."""
    if n < MIN_SIDE:
        return [1]
    s = 1
    while n // (2 * s) >= FIRST_SPACING:
        s *= 2
    out = []
    while s >= 1:
        out.append(s)
        s //= 2
    return out


def selector_for(share, embedding, mode: str, similarity: float, threshold: float) -> PromptSelector:
    """The selector for an n x n grid whose points (P x 2, x and y) lie at ``share`` of the square
    that ``embedding`` (C x h x w) covers; the low-resolution logits cover it at 4 x its grid."""
    h, w = embedding.shape[-2:]
    n = int(round(len(share) ** 0.5))

    def at(v, size):
        return np.clip((v * size).astype(int), 0, size - 1)

    fx, fy = share[:, 0], share[:, 1]
    low_rc = np.stack([at(fy, 4 * h), at(fx, 4 * w)], 1)
    cells = at(fy, h) * w + at(fx, w)
    return PromptSelector(n, cells, low_rc, embedding, mode=mode, similarity=similarity, threshold=threshold)


class PromptSelector:
    """Coarse-to-fine selection over one n x n point grid (``build_point_grid``'s order: row-major,
    rows along y).

    ``cells``: the flat embedding cell under each grid point (P ints, into ``embedding``'s h*w);
    ``low_rc``: each point's (row, column) in the decoder's low-resolution logits, for the coverage
    test; ``embedding``: the image embedding, C x h x w. After each level, :meth:`observe` gets the
    level's candidate masks (their prompt index and low-resolution logits)."""

    def __init__(
        self,
        n: int,
        cells,
        low_rc,
        embedding,
        *,
        mode: str = "adaptive",
        similarity: float = SIMILARITY,
        threshold: float = 0.0,
    ):
        import torch

        if mode not in PROMPT_MODES:
            raise ValueError(f"prompts must be one of {PROMPT_MODES}, not {mode!r}")
        self.n, self.similarity, self.threshold = n, similarity, threshold
        # the levels' grid steps; one level (the grid mode, or a grid too sparse to coarsen) is the
        # whole grid, and then nothing is compared or recorded
        self.strides = strides(n) if mode == "adaptive" else [1]
        p = n * n
        self.decoded = np.zeros(p, bool)
        if len(self.strides) > 1:
            self.found = np.zeros(p, bool)  # decoded and produced at least one candidate
            self.cover = np.zeros((p, p), bool)  # cover[q, p]: a mask of q covers p
            self.low_rc = torch.as_tensor(np.asarray(low_rc), dtype=torch.long)
            e = embedding.detach().float().flatten(1).T  # h*w x C
            e = torch.nn.functional.normalize(e, dim=1)[torch.as_tensor(np.asarray(cells), dtype=torch.long)]
            self.emb = e.cpu().numpy()

    def levels(self):
        """Index arrays of grid points to decode, level by level (call :meth:`observe` between)."""
        n = self.n
        ii, jj = np.divmod(np.arange(n * n), n)
        for level, s in enumerate(self.strides):
            idx = np.flatnonzero((ii % s == s // 2) & (jj % s == s // 2) & ~self.decoded)
            if level:
                idx = idx[~self._explained(idx, ii, jj, 2 * s)]
            self.decoded[idx] = True
            if len(idx):
                yield idx

    def _explained(self, idx, ii, jj, radius: int) -> np.ndarray:
        """Which of the points ``idx`` their decoded neighbours (within ``radius`` grid steps)
        all stand for: each looks the same and explains the point (see the module doc). One
        neighbour that does not is enough to decode it: that is where a different mask starts."""
        done = np.flatnonzero(self.decoded)
        near = (np.abs(ii[idx, None] - ii[None, done]) <= radius) & (np.abs(jj[idx, None] - jj[None, done]) <= radius)
        sim = self.emb[idx] @ self.emb[done].T >= self.similarity
        stands_for = sim & (self.cover[done][:, idx].T | ~self.found[done][None, :])
        return near.any(axis=1) & ~(near & ~stands_for).any(axis=1)

    def observe(self, prompts, low) -> None:
        """A level's candidates: ``prompts`` (K grid indices) and their low-resolution logits (K x h x w)."""
        import torch

        if len(self.strides) == 1 or len(prompts) == 0:
            return
        prompts = torch.as_tensor(prompts, dtype=torch.long).cpu()
        r, c = self.low_rc[:, 0], self.low_rc[:, 1]
        covers = (low[:, r, c] > self.threshold).cpu().numpy()  # K x P
        q = prompts.numpy()
        self.found[q] = True
        order = np.argsort(q, kind="stable")  # one OR per prompt over its candidates (ufunc.at is slow)
        uq, start = np.unique(q[order], return_index=True)
        self.cover[uq] |= np.logical_or.reduceat(covers[order], start, axis=0)
