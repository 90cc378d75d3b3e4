"""The mask decoder per prompt: the two-way transformer and the mask upscaling, fp32 against bf16.

    python bench/decoder.py                          # sam-vit-b, one thread, batches of 4 prompts
    python bench/decoder.py --sam sam2.1-hiera-tiny --threads 2 --batch 16

Real architecture, random weights (a product's cost does not depend on the weights' values), SAM's
1024 px frame with a 4:3 photo in it (the masks' logits are made only over the photo, as the engine
makes them). For each precision (``sam_precision``: the encoder's and the mask head's products) it
prints milliseconds per prompt for ``GridDecoder``'s transformer (with the IoU head) and for the
upscaling of every prompt's masks (the engine upscales only prompts with an output above the
predicted-IoU threshold), best of ``--repeats``.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sam", default="sam-vit-b")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=4, help="prompts per decoder call (the engine's CPU batch: 4)")
    ap.add_argument("--calls", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    import torch

    from segsearch.models import get_sam_spec
    from segsearch.models.sam import is_sam2, load_sam, set_precision

    from segsearch.indexer.grid_decoder import GridDecoder

    torch.set_num_threads(args.threads)
    spec = get_sam_spec(args.sam)
    sam = load_sam(dataclasses.replace(spec, weights=None), Path("unused"))
    sam2 = is_sam2(sam)
    side = 1024
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(1, 256, side // 16, side // 16, generator=g) * 0.5
    high = [torch.randn(1, c, side // s, side // s, generator=g) for c, s in ((32, 4), (64, 8))]  # (SAM 2's)
    coords = torch.rand(args.batch, 1, 2, generator=g) * torch.tensor([side, side * 3 / 4])
    labels = torch.ones(args.batch, 1, dtype=torch.int)
    pe = sam.sam_prompt_encoder if sam2 else sam.prompt_encoder
    base = None
    for prec in ("fp32", "bf16"):
        set_precision(sam, prec)
        with torch.inference_mode():
            dec = GridDecoder(sam, feats, high if sam2 else None, needed=None if sam2 else (side * 3 // 4, side))
            sparse, _ = pe(points=(coords, labels), boxes=None, masks=None)
            idx = torch.arange(args.batch)
            best_t = best_u = float("inf")
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                for _ in range(args.calls):
                    q, keys, _iou = dec._transformer(sparse)
                t1 = time.perf_counter()
                for _ in range(args.calls):
                    dec.upscaler(keys, dec._hyper(q, idx), idx)
                t2 = time.perf_counter()
                best_t, best_u = min(best_t, t1 - t0), min(best_u, t2 - t1)
        per = 1000 / (args.calls * args.batch)
        row = (best_t * per, best_u * per)
        base = base or row
        print(
            f"{args.sam} {prec}, {args.threads} thread(s), batch {args.batch}: transformer {row[0]:.2f} ms/prompt "
            f"({base[0] / row[0]:.2f}x), upscaling {row[1]:.2f} ms/prompt ({base[1] / row[1]:.2f}x)",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
