"""Real-size end to end: what one photo costs with real SAM and CLIP architectures.

    python bench/realsize.py --json                      # the models a new library gets here
    python bench/realsize.py --sam sam2.1-hiera-tiny --clip clip-vit-b-32 --photos 2
    python bench/realsize.py --prompts grid,adaptive     # both prompt selections, one run
    python bench/realsize.py --mask-side 0,2048          # full-size masks vs the working view, one run
    python bench/realsize.py --decoder plain,factored    # the decoder's plain vs factored image side
    python bench/realsize.py --sam-precision fp32,bf16 --clip-precision fp32,bf16   # reduced precision

Real architectures with random weights (no weights can be downloaded here; the cost of a forward
pass does not depend on the weights' values), a photo-like 12 MP JPEG, and the whole pipeline a
`segsearch index` runs: decode, SAM (encoder, decoder, post-processing), crops, CLIP, the stores.
Prints per photo: end-to-end seconds (model load excluded), seconds per stage and the process
tree's peak memory (its own child process, so the peak is this pipeline's alone).

**Planted masks.** Random weights pass no filter: their predicted IoUs and stability scores are
noise, so no mask would be upsampled, cropped or embedded and the benchmark would time a pipeline
that does nothing after the decoder. So the photo is drawn from a known world (``--objects``
shapes, default 100, sizes log-uniform between 2% and 20% of the photo's side, overlapping, on a
textured background: SA-1B averages ~100 masks per image), and the decoder's *outputs* are
replaced after it has run at full cost: a prompt that lands on an object answers that object's
mask (low-resolution logits drawn from the object, steep edges) with predicted IoU 0.95 as its
first output and scores below the threshold for the other two; a prompt on the background answers
nothing that passes. Prompt selection (``--prompts adaptive``) compares embedding cells, and a
random encoder's cells are noise, so for it the planted world also stands in for a trained
encoder: cells on one object alike, cells on different objects or the background not. The upscaling of the
candidates is paid for real (the planted IoUs decide which prompts are upscaled). With SAM's
32 x 32 grid this gives a few hundred candidates past the IoU filter and about one mask per object
hit after NMS, so upsampling, NMS, crops and CLIP cost what they cost on a real photo.
Planting needs the fast engine (``--amg fast``, the default).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def make_photo(path: Path, width: int, height: int, n_objects: int, seed: int = 0):
    """A photo-like JPEG and its objects' masks (low-resolution label map built later)."""
    import numpy as np
    from PIL import Image, ImageFilter

    from segsearch.eval.shapes import COLORS, shape_mask

    rng = np.random.default_rng(seed)
    # textured background: noise at three scales, blurred, plus a gradient (JPEG-realistic entropy)
    img = np.zeros((height, width, 3), np.float32)
    for cells, amp in ((8, 60.0), (64, 25.0), (512, 10.0)):
        small = rng.normal(0, 1, (max(2, height * cells // width), cells, 3)).astype(np.float32)
        img += amp * np.asarray(Image.fromarray(small[..., 0]).resize((width, height), Image.BICUBIC))[..., None]
    img += np.linspace(60, 160, height, dtype=np.float32)[:, None, None]
    img += rng.normal(0, 6, (height, width, 3)).astype(np.float32)
    side = min(width, height)
    objects = []
    colours = list(COLORS.values())
    for k in range(n_objects):
        size = side * math.exp(rng.uniform(math.log(0.02), math.log(0.2)))
        cx, cy = rng.uniform(size / 2, width - size / 2), rng.uniform(size / 2, height - size / 2)
        shape = ("circle", "square", "triangle", "star", "ring")[int(rng.integers(5))]
        # masks drawn at 1/4 scale (enough for planting; the photo itself is full size)
        m = shape_mask(shape, cx / 4, cy / 4, size / 4, rng.uniform(0, 2 * math.pi), width // 4, height // 4)
        if m.sum() < 4:
            continue
        col = np.array(colours[k % len(colours)], np.float32) + rng.normal(0, 25, 3)
        big = np.asarray(Image.fromarray(m).resize((width, height), Image.NEAREST))
        shade = 0.75 + 0.5 * rng.uniform()
        img[big] = img[big] * 0.25 + col * shade
        objects.append(m)
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(1.2)).save(path, quality=90)
    return objects


class Planter:
    """Replaces the grid decoder's outputs with the photo's objects (see the module doc)."""

    def __init__(self, objects, photo_size, sam2: bool = False):
        self.objects, self.photo_size, self.sam2 = objects, photo_size, sam2  # masks at 1/4 of the photo's size
        self.local = threading.local()
        self.frames: dict = {}

    def install(self):

        from segsearch.indexer import grid_decoder

        planter = self
        real_transformer = grid_decoder.GridDecoder._transformer
        real_candidates = grid_decoder.GridDecoder.candidates

        def transformer(dec, sparse):
            queries, keys, iou = real_transformer(dec, sparse)  # the full cost, then planted scores
            return queries, keys, planter.ious(dec, len(iou)).to(iou.dtype)

        def candidates(dec, sparse, iou_thresh=0.0, with_prompts=False):
            out = real_candidates(dec, sparse, iou_thresh, with_prompts)
            low, iou = out[0], out[1]
            return (planter.logits(dec, low, iou_thresh), iou, *out[2:])

        real_call = grid_decoder.GridDecoder.__call__

        def call(dec, sparse, iou_thresh=0.0):  # (SAM 2's engine: per prompt, 3 outputs each)
            low, iou, idx = real_call(dec, sparse, iou_thresh)
            picked = planter.local.picked
            for row, k in enumerate(idx.tolist()):
                if picked[k]:
                    low[row, 0] = planter.planted(dec, picked[k]).to(low.dtype)
            return low, iou, idx

        grid_decoder.GridDecoder._transformer = transformer
        grid_decoder.GridDecoder.candidates = candidates
        grid_decoder.GridDecoder.__call__ = call
        # the prompts' coordinates, recorded per thread as the engine encodes them
        if self.sam2:
            import sam2.modeling.sam.prompt_encoder as pe
        else:
            import segment_anything.modeling.prompt_encoder as pe
        real_embed = pe.PromptEncoder.forward

        def forward(enc, points, boxes, masks):
            if points is not None:  # (x, y) in the 1024-px input frame: low-res pixel = / 4
                planter.local.coords = points[0][:, 0, :].detach().cpu().numpy()
            return real_embed(enc, points, boxes, masks)

        pe.PromptEncoder.forward = forward
        # prompt selection compares embedding cells: a trained encoder's cells are alike on one
        # object and differ across objects; random weights' are noise (median cosine 0.15 between
        # neighbours), which would make adaptive selection decode every prompt. The planted
        # world's embedding for it: each cell one-hot of the object under its centre.
        from segsearch.indexer import prompts

        real_init = prompts.PromptSelector.__init__

        def init(sel, n, cells, low_rc, embedding, **kw):
            real_init(sel, n, cells, low_rc, planter.embedding(embedding), **kw)

        prompts.PromptSelector.__init__ = init

    def embedding(self, real):
        """One-hot object labels per embedding cell (C x h x w, as ``real``)."""
        import numpy as np
        import torch

        h, w = real.shape[-2:]
        labels, _ = self._frame_for((h, w))
        cells = labels[2::4, 2::4][:h, :w]  # the label at each cell's centre (4 low-res px per cell)
        out = np.zeros((len(self.objects) + 1, h, w), np.float32)
        out[cells, np.arange(h)[:, None], np.arange(w)[None, :]] = 1
        return torch.from_numpy(out)

    def _frame(self, dec):
        return self._frame_for(dec.hw)

    def _frame_for(self, hw):
        """Label map (object index + 1, topmost last) and per-object logits in the decoder's
        low-resolution frame: 4 x the embedding grid; SAM 1 pads the photo to a square (long side
        = the frame), SAM 2 stretches it to the square."""
        import numpy as np
        from PIL import Image

        if hw in self.frames:
            return self.frames[hw]
        h, w = hw
        lh, lw = 4 * h, 4 * w
        pw, ph = self.photo_size
        if self.sam2:
            vw, vh = lw, lh
        else:
            vw, vh = max(1, round(pw * lw / max(pw, ph))), max(1, round(ph * lh / max(pw, ph)))
        labels = np.zeros((lh, lw), np.int32)
        logits = []
        for k, m in enumerate(self.objects):
            small = (
                np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize((vw, vh), Image.BILINEAR), np.float32) / 255
            )
            full = np.zeros((lh, lw), np.float32)
            full[:vh, :vw] = small
            logits.append(full)
            labels[full > 0.5] = k + 1
        self.frames[hw] = (labels, logits)
        return self.frames[hw]

    def ious(self, dec, b):
        """The batch's planted IoUs (0.95 for the first output of a prompt on an object), and the
        object under each prompt (0: background) recorded for :meth:`planted`."""
        import torch

        labels, _ = self._frame(dec)
        lh, lw = labels.shape
        coords = self.local.coords[-b:]
        self.local.picked = [int(labels[min(lh - 1, int(y / 4)), min(lw - 1, int(x / 4))]) for x, y in coords]
        out = torch.full((b, 3), 0.2)
        out[[i for i, k in enumerate(self.local.picked) if k], 0] = 0.95
        return out

    def planted(self, dec, k: int):
        """Object ``k``'s low-resolution logits (k >= 1): steep edges, so its masks are stable."""
        import torch

        return torch.from_numpy((self._frame(dec)[1][k - 1] - 0.5) * 40)

    def logits(self, dec, low, iou_thresh):
        import torch

        rows = [self.planted(dec, k) for k in self.local.picked if k]
        if not rows:
            return low
        planted = torch.stack(rows).to(low.dtype)
        return planted if len(planted) == len(low) else low


def child(args) -> dict:
    """One configuration, in this (child) process."""
    import dataclasses

    import torch

    from segsearch import Library
    from segsearch.models import get_clip_spec, get_sam_spec
    from segsearch.models.clip import ClipEmbedder
    from segsearch.models.sam import load_sam as load_spec
    from segsearch.runtime import Models
    from segsearch.settings import Settings

    if args.threads:
        torch.set_num_threads(args.threads)
    from segsearch.indexer import grid_decoder

    grid_decoder.FACTORED = args.decoder_mode != "plain"
    work = Path(tempfile.mkdtemp(prefix="realsize-"))
    photos = []
    for i in range(args.photos):
        p = work / f"photo{i}.jpg"
        w, h = (int(v) for v in args.size.split("x"))
        objects = make_photo(p, w, h, args.objects, seed=i)
        photos.append((p, objects))
    settings = Settings(
        data=work / "lib",
        sam=args.sam,
        clip=args.clip,
        offline=True,
        prompts=args.prompt_mode,
        mask_side=args.side,
        sam_precision=args.sam_prec,
        clip_precision=args.clip_prec,
    )
    sam_spec, clip_spec = get_sam_spec(args.sam), get_clip_spec(args.clip)
    t = time.perf_counter()
    sam = load_spec(dataclasses.replace(sam_spec, weights=None), Path("unused"), device="cpu")
    emb = ClipEmbedder.from_spec(
        dataclasses.replace(clip_spec, weights=None), work, device="cpu", precision=settings.clip_precision
    )
    load_s = time.perf_counter() - t
    planter = None
    if not args.no_plant:
        planter = Planter(photos[0][1], tuple(int(v) for v in args.size.split("x")), sam2=sam_spec.family == "sam2")
        planter.install()
    per_photo, stages, segments = [], {}, 0
    models = Models(settings, sam_spec=sam_spec, clip_spec=clip_spec, sam=sam, embedder=emb)
    with Library(settings=settings, models=models) as lib:
        for i, (p, objects) in enumerate(photos):
            if planter:
                planter.objects, planter.frames = objects, {}
            summary = lib.index([p]).to_dict()
            if summary["failed"]:
                raise SystemExit(f"indexing failed: {summary}")
            if i == 0 and args.photos > 1:
                continue  # warm-up photo: first calls allocate and tune
            per_photo.append(
                summary["seconds"] - summary["stages"].get("load_models", 0) - summary["stages"].get("optimize", 0)
            )
            segments += summary["segments"]
            for k, v in summary["stages"].items():
                stages[k] = stages.get(k, 0.0) + v
    n = max(1, len(per_photo))
    gen = models.mask_generator
    return {
        "sam": args.sam,
        "clip": args.clip,
        "prompts": args.prompt_mode,
        "clip_precision": settings.clip_precision,
        "sam_precision": settings.sam_precision,
        "mask_side": args.side,
        "decoder": args.decoder_mode,
        "planted": not args.no_plant,
        "photo": args.size,
        "threads": torch.get_num_threads(),
        "per_photo_s": round(sum(per_photo) / n, 2),
        "stages_s": {k.removeprefix("sam_"): round(v / n, 3) for k, v in sorted(stages.items())},
        "segments_per_photo": round(segments / n, 1),
        "prompts_decoded": getattr(gen, "prompts_decoded", None),
        "model_load_s": round(load_s, 1),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sam", default=None, help="default: the SAM a new library gets on this machine")
    ap.add_argument("--clip", default=None, help="default: the CLIP a new library gets")
    ap.add_argument("--prompts", default=None, help="grid, adaptive or both comma-separated (default: the product's)")
    ap.add_argument("--photos", type=int, default=2, help="photos per run; the first warms up (default 2)")
    ap.add_argument("--size", default="4000x3000", help="photo size (default 12 MP)")
    ap.add_argument("--objects", type=int, default=100)
    ap.add_argument("--threads", type=int, default=None, help="default: all cores")
    ap.add_argument("--no-plant", action="store_true", help="random weights' own outputs (nothing survives)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--prompt-mode", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--mask-side", default=None, help="working view sides, comma-separated (default: the product's)")
    ap.add_argument("--side", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--decoder", default="factored", help="plain, factored or both comma-separated (default factored)")
    ap.add_argument("--decoder-mode", default="factored", help=argparse.SUPPRESS)
    ap.add_argument("--sam-precision", default=None, help="fp32, bf16 or both comma-separated (default: the product's)")
    ap.add_argument("--clip-precision", default=None, help="fp32, int8, bf16, comma-separated (default: the product's)")
    ap.add_argument("--sam-prec", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--clip-prec", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(child(args)), flush=True)
        return 0
    from segsearch.settings import Settings

    defaults = Settings()
    args.sam = args.sam or defaults.sam
    args.clip = args.clip or defaults.clip
    modes = (args.prompts or defaults.prompts).split(",")
    sides = [int(v) for v in (args.mask_side or str(defaults.mask_side)).split(",")]
    results = []
    decoders = args.decoder.split(",")
    sams = (args.sam_precision or defaults.sam_precision).split(",")
    clips = (args.clip_precision or defaults.clip_precision).split(",")
    # precisions paired when both lists are as long (fp32,bf16 + fp32,bf16: two runs), else crossed
    precs = list(zip(sams, clips)) if len(sams) == len(clips) else [(s, c) for s in sams for c in clips]
    configs = [(m, v, d, p) for m in modes for v in sides for d in decoders for p in precs]
    for mode, side, dec, (sam_prec, clip_prec) in configs:
        cmd = [sys.executable, __file__, "--child", "--prompt-mode", mode, "--sam", args.sam, "--clip", args.clip]
        cmd += ["--side", str(side), "--decoder-mode", dec, "--sam-prec", sam_prec, "--clip-prec", clip_prec]
        cmd += ["--photos", str(args.photos), "--size", args.size, "--objects", str(args.objects)]
        cmd += ["--threads", str(args.threads)] if args.threads else []
        cmd += ["--no-plant"] if args.no_plant else []
        sys.path.insert(0, str(HERE))
        from treemem import descendants, memory_kib

        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        peak = 0.0
        while proc.poll() is None:
            peak = max(peak, sum(memory_kib(p)[1] for p in descendants(proc.pid)) / 1024)
            time.sleep(0.2)
        out = proc.stdout.read()
        line = next((ln for ln in out.splitlines() if ln.startswith("RESULT ")), None)
        if proc.returncode or line is None:
            print(out, file=sys.stderr)
            return proc.returncode or 1
        r = json.loads(line[7:])
        r["peak_mib"] = round(peak, 1)
        results.append(r)
        if not args.json:
            print(_line(r), flush=True)
    if len(results) > 1:
        base = results[0]
        for r in results[1:]:
            r["speedup_vs_first"] = round(base["per_photo_s"] / r["per_photo_s"], 2)
    if args.json:
        print(json.dumps(results[0] if len(results) == 1 else results))
    elif len(results) > 1:
        print(
            "end-to-end speedup vs the first:",
            {_label(r): r.get("speedup_vs_first", 1.0) for r in results},
        )
    return 0


def _label(r: dict) -> str:
    return f"{r['prompts']}/side {r['mask_side']}/{r['decoder']}/{r['sam_precision']}+{r['clip_precision']}"


def _line(r: dict) -> str:
    st = ", ".join(f"{k} {v:.2f}" for k, v in r["stages_s"].items() if v >= 0.005)
    return (
        f"{r['sam']} + {r['clip']}, prompts {r['prompts']} ({r['prompts_decoded']} decoded), "
        f"mask side {r['mask_side']}, {r['decoder']} decoder, SAM {r['sam_precision']}, CLIP {r['clip_precision']}, "
        f"{r['photo']}, "
        f"{r['threads']} threads: {r['per_photo_s']:.2f} s/photo, {r['segments_per_photo']} segments, "
        f"peak {r['peak_mib']:.0f} MiB; {st}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
