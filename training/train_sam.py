"""Train ``sam-shapes-tiny``: the real segment_anything classes at small dimensions, trained on
shapes-world scenes to segment the shape under a point prompt (multimask outputs + IoU head,
as SAM is trained), so that automatic mask generation recovers a scene's shapes.

The bundled weights are five stages (logs: sam-shapes-tiny.log, sam-shapes-tiny-stage2.log ...
-stage5.log), each continuing the previous one on fresh scenes. Stages 1-4 ran at a 320-px input
(``--image-size 320``; the default is now the bundled model's 512), stage 5 resized them to 512:

    python training/train_sam.py --image-size 320 --out stage1.pt     # 3600 steps, ~35 min on 2 cores
    python training/train_sam.py --image-size 320 --init stage1.pt --pool-start 3000 --pool 4000 \
        --steps 5000 --lr 1e-3 --prompts 32 --out stage2.pt             # ~60 min alone (94 min shared)
    python training/train_sam.py --image-size 320 --init stage2.pt --pool-start 7000 --pool 4000 \
        --steps 5000 --lr 5e-4 --prompts 32 --threads 1 --save-every 500 --out stage3.pt
        # ^ the step-3500 snapshot (the run was stopped there, ~57 min, held-out mIoU flat since 2500)
    python training/train_sam.py --image-size 320 --init stage3.pt --bg-components --pool-start 11000 \
        --pool 3000 --steps 2000 --lr 3e-4 --prompts 32 --out stage4.pt   # ~19 min
    python training/train_sam.py --init stage4.pt --image-size 512 --bg-components --pool-start 14000 \
        --pool 2500 --steps 1500 --lr 3e-4 --prompts 32 --val-split validation --save-every 250 \
        --out checkpoints/sam-shapes-tiny.pt   # ~36 min training + 11 min rendering (2 cores)

Stage 5 exists because at 320 px the automatic masks of small shapes (stars, rings in 768-px
scenes) were too coarse: for most missed shapes no candidate reached IoU 0.75 at all. The
position embedding and the global blocks' relative-position tables are resized
(:func:`resize_sam_state`) and training continues at 512 px (low-res masks 128 instead of 80).
Stage 4 (``--bg-components``) makes a point on the background ask for its connected background
region (a ring's hole) rather than the whole background: before it, a point in a ring's hole got
the filled disk with a high predicted IoU, and box NMS (disk and ring share a box) then dropped
the ring itself.

Seeded and CPU-only; prints the loss and a held-out point-prompt mIoU as it goes. The result is
a plain state dict (fp16 to keep the repo small) loaded by the same code as Meta's checkpoints.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from segsearch.eval.shapes import HELDOUT_SEEDS, TRAIN_SEEDS, VALIDATION_SEEDS, make_scene
from segsearch.models.known import SAM_SHAPES_TINY_CONFIG
from segsearch.models.sam import build_sam_model

IMG = SAM_SHAPES_TINY_CONFIG["image_size"]  # set by --image-size (module globals: the rendering pool sees them)
LOW = IMG // SAM_SHAPES_TINY_CONFIG["vit_patch_size"] * 4  # low-res mask side


def resize_sam_state(state: dict, image_size: int, patch_size: int) -> dict:
    """Adapt a SAM state dict trained at one input size to another, as ViTs are fine-tuned at a new
    resolution: the absolute position embedding is resized bicubically over the patch grid and the
    global-attention blocks' relative-position tables linearly (segment_anything's get_rel_pos does
    the same at run time when the sizes differ). Windowed blocks' tables keep their size."""
    grid = image_size // patch_size
    out = dict(state)
    pos = state["image_encoder.pos_embed"].float()  # (1, H, W, C)
    if pos.shape[1] != grid:
        out["image_encoder.pos_embed"] = F.interpolate(
            pos.permute(0, 3, 1, 2), size=(grid, grid), mode="bicubic", align_corners=False
        ).permute(0, 2, 3, 1)
        old = pos.shape[1]
        for k, v in state.items():
            if k.endswith((".rel_pos_h", ".rel_pos_w")) and v.shape[0] == 2 * old - 1:  # a global block
                out[k] = F.interpolate(v.float().T[None], size=2 * grid - 1, mode="linear")[0].T
    return out


def prepare(seed: int):
    """A scene resized like SamPredictor does (longest side -> IMG, pad bottom/right), with its
    instance masks plus the background region, as uint8 arrays at IMG resolution."""
    from PIL import Image

    sc = make_scene(seed)
    h, w = sc.image.shape[:2]
    scale = IMG / max(h, w)
    nh, nw = int(h * scale + 0.5), int(w * scale + 0.5)
    img = np.zeros((IMG, IMG, 3), np.uint8)
    img[:nh, :nw] = np.asarray(Image.fromarray(sc.image).resize((nw, nh), Image.BILINEAR))
    regions = list(sc.masks)
    bg = ~np.any(sc.masks, axis=0) if len(sc.masks) else np.ones((h, w), bool)
    regions.append(bg)
    masks = np.zeros((len(regions), IMG, IMG), np.uint8)
    for i, m in enumerate(regions):
        masks[i, :nh, :nw] = (
            np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize((nw, nh), Image.BILINEAR)) > 127
        )
    if BG_COMPONENTS:
        # the background as its connected regions (a ring's hole, a gap enclosed by shapes, the
        # rest): a point in a hole then asks for the hole, as SAM segments background regions,
        # instead of for the whole background, which taught the model to answer with the filled disk
        comps = _components(masks[-1].astype(bool))
        masks = np.concatenate([masks[:-1], comps]) if len(comps) else masks
    return img, masks, (nh, nw), len(regions) - 1


BG_COMPONENTS = False  # set by --bg-components (a module global so the rendering pool sees it)


def _components(region: np.ndarray, min_area: int = 16) -> np.ndarray:
    """4-connected components of a boolean mask (area >= min_area), as uint8 masks."""
    from PIL import Image, ImageDraw

    lab = Image.fromarray(region.astype(np.int32), mode="I")
    out = []
    label = 2
    arr = np.asarray(lab)
    while True:
        ys, xs = np.nonzero(arr == 1)
        if len(xs) == 0:
            break
        ImageDraw.floodfill(lab, (int(xs[0]), int(ys[0])), label, thresh=0)
        arr = np.asarray(lab)
        comp = arr == label
        if comp.sum() >= min_area:
            out.append(comp.astype(np.uint8))
        label += 1
    return np.stack(out) if out else np.zeros((0, *region.shape), np.uint8)


def make_pool(seeds, workers=2):
    with Pool(workers, initializer=_set_globals, initargs=(BG_COMPONENTS, IMG)) as p:
        return p.map(prepare, seeds, chunksize=16)


def _set_globals(bg_components: bool, image_size: int) -> None:
    global BG_COMPONENTS, IMG, LOW
    BG_COMPONENTS = bg_components
    IMG = image_size
    LOW = IMG // SAM_SHAPES_TINY_CONFIG["vit_patch_size"] * 4


def sample_prompts(masks: np.ndarray, n_shapes: int, n: int, rng: np.random.Generator, bg_frac: float = 0.2):
    """n point prompts: mostly inside shapes (masks[:n_shapes]), some on the background
    (masks[n_shapes:]: one region, or its connected regions; a uniform background pixel)."""
    coords, targets = [], []
    bg_areas = masks[n_shapes:].reshape(len(masks) - n_shapes, -1).sum(1).astype(float)
    for _ in range(n):
        use_bg = n_shapes == 0 or rng.random() < bg_frac
        if not use_bg:
            k = int(rng.integers(n_shapes))
        elif BG_COMPONENTS and bg_areas.sum() > 0:  # (without the flag: stages 1-2's exact draws)
            k = n_shapes + int(rng.choice(len(bg_areas), p=bg_areas / bg_areas.sum()))
        else:
            k = n_shapes
        ys, xs = np.nonzero(masks[k])
        if len(xs) == 0:
            k = n_shapes
            ys, xs = np.nonzero(masks[k])
        j = int(rng.integers(len(xs)))
        coords.append((xs[j] + 0.5, ys[j] + 0.5))
        targets.append(k)
    return np.array(coords, np.float32), targets


def focal_loss(logits, target, alpha=0.25, gamma=2.0):
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    pt = p * target + (1 - p) * (1 - target)
    loss = ce * ((1 - pt) ** gamma)
    loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    return loss.flatten(-2).mean(-1)


def dice_loss(logits, target):
    p = torch.sigmoid(logits).flatten(-2)
    t = target.flatten(-2)
    return 1 - (2 * (p * t).sum(-1) + 1) / (p.sum(-1) + t.sum(-1) + 1)


def forward(sam, images, prompts):
    """images: (B,3,IMG,IMG) float 0..255; prompts: list of (P,2) coords -> (B*P,3,LOW,LOW), (B*P,3)."""
    x = (images - sam.pixel_mean) / sam.pixel_std
    emb = sam.image_encoder(x)
    pe = sam.prompt_encoder.get_dense_pe()
    all_masks, all_iou = [], []
    for b, coords in enumerate(prompts):
        pts = torch.as_tensor(coords)[:, None, :]
        labels = torch.ones(pts.shape[:2], dtype=torch.int)
        sparse, dense = sam.prompt_encoder(points=(pts, labels), boxes=None, masks=None)
        m, iou = sam.mask_decoder(
            image_embeddings=emb[b : b + 1],
            image_pe=pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=True,
        )
        all_masks.append(m)
        all_iou.append(iou)
    return torch.cat(all_masks), torch.cat(all_iou)


def batch_loss(sam, pool, idx, rng, prompts_per_image):
    imgs, prompt_list, gts = [], [], []
    for i in idx:
        img, masks, _, n_shapes = pool[i]
        coords, targets = sample_prompts(masks, n_shapes, prompts_per_image, rng)
        imgs.append(torch.from_numpy(img).permute(2, 0, 1).float())
        prompt_list.append(coords)
        gts.append(torch.from_numpy(masks[targets]).float())
    images = torch.stack(imgs)
    pred, iou_pred = forward(sam, images, prompt_list)
    gt = F.interpolate(torch.cat(gts)[:, None], size=(LOW, LOW), mode="area")[:, 0]
    gt = (gt > 0.5).float()
    gt3 = gt[:, None].expand_as(pred)
    per_mask = 20 * focal_loss(pred, gt3) + dice_loss(pred, gt3)
    best = per_mask.argmin(1)
    mask_loss = per_mask.gather(1, best[:, None]).mean()
    with torch.no_grad():
        binm = pred > 0
        inter = (binm & (gt3 > 0.5)).flatten(-2).sum(-1).float()
        union = (binm | (gt3 > 0.5)).flatten(-2).sum(-1).float()
        true_iou = inter / union.clamp(min=1)
    iou_loss = F.mse_loss(iou_pred, true_iou)
    return mask_loss + iou_loss, mask_loss.item(), iou_loss.item(), true_iou.gather(1, best[:, None]).mean().item()


def evaluate(sam, pool, rng, n_prompts=8):
    sam.eval()
    with torch.inference_mode():
        _, ml, il, miou = batch_loss(sam, pool, range(len(pool)), rng, n_prompts)
    sam.train()
    return ml, il, miou


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3600, help="optimizer steps (~0.4 s each on 2 cores)")
    ap.add_argument("--pool", type=int, default=3000, help="training scenes (pre-rendered)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--prompts", type=int, default=16, help="point prompts per image per step")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--pool-start", type=int, default=0, help="first training seed of the pool")
    ap.add_argument("--init", type=Path, help="start from these weights (continue training) instead of random init")
    ap.add_argument("--save-every", type=int, default=0, help="also write --out every N steps (0: only at the end)")
    ap.add_argument(
        "--bg-components",
        action="store_true",
        help="background prompts target their connected background region (e.g. a ring's hole)",
    )
    ap.add_argument(
        "--image-size",
        type=int,
        default=SAM_SHAPES_TINY_CONFIG["image_size"],
        help="SAM input side; --init weights trained at another size are resized (pos-embed, rel-pos)",
    )
    ap.add_argument(
        "--val-split",
        choices=["heldout", "validation"],
        default="heldout",
        help="scenes for the printed point-prompt mIoU (stages 1-4 used heldout; use validation)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("checkpoints/sam-shapes-tiny.pt"))
    args = ap.parse_args()
    _set_globals(args.bg_components, args.image_size)

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    t0 = time.time()
    pool = make_pool(list(TRAIN_SEEDS[args.pool_start : args.pool_start + args.pool]))
    val = make_pool(list((HELDOUT_SEEDS if args.val_split == "heldout" else VALIDATION_SEEDS)[:24]))
    print(f"rendered {len(pool)} training scenes in {time.time() - t0:.0f}s", flush=True)

    sam = build_sam_model({**SAM_SHAPES_TINY_CONFIG, "image_size": IMG}).train()
    if args.init:
        state = torch.load(args.init, weights_only=True)
        sam.load_state_dict(
            {
                k: v.float()
                for k, v in resize_sam_state(state, IMG, sam.image_encoder.patch_embed.proj.kernel_size[0]).items()
            }
        )
        print(f"continuing from {args.init}", flush=True)
    n_params = sum(p.numel() for p in sam.parameters())
    print(f"model: {n_params / 1e6:.2f}M parameters", flush=True)
    opt = torch.optim.AdamW(sam.parameters(), lr=args.lr, weight_decay=0.01)
    start = time.time()
    for step in range(args.steps):
        elapsed = time.time() - start
        frac = step / args.steps
        lr = args.lr * min(1.0, (step + 1) / 100) * (0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        idx = rng.integers(len(pool), size=args.batch)
        loss, ml, il, miou = batch_loss(sam, pool, idx, rng, args.prompts)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(sam.parameters(), 1.0)
        opt.step()
        if (step + 1) % 50 == 0:
            msg = (
                f"step {step + 1} {elapsed / 60:.1f}min lr {lr:.2e} mask {ml:.3f} iou-head {il:.4f} "
                f"train-mIoU {miou:.3f}"
            )
            if (step + 1) % 250 == 0:
                vml, vil, vmiou = evaluate(sam, val, np.random.default_rng(1))
                msg += f" | heldout mask {vml:.3f} iou-head {vil:.4f} mIoU {vmiou:.3f}"
            print(msg, flush=True)
        if args.save_every and (step + 1) % args.save_every == 0:
            save(sam, args.out)

    vml, vil, vmiou = evaluate(sam, val, np.random.default_rng(1))
    print(
        f"final after {args.steps} steps, {(time.time() - start) / 60:.1f} min: "
        f"heldout point-prompt mIoU {vmiou:.3f} (mask loss {vml:.3f})",
        flush=True,
    )
    save(sam, args.out)


def save(sam, out: Path, key: str | None = None) -> None:
    """fp16 weights, written atomically; ``key``: nested under it (SAM 2's ``{"model": ...}``)."""
    state = {k: v.half() if v.is_floating_point() else v for k, v in sam.state_dict().items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    torch.save({key: state} if key else state, tmp)
    tmp.replace(out)
    sha = hashlib.sha256(out.read_bytes()).hexdigest()
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB) sha256 {sha}", flush=True)


if __name__ == "__main__":
    main()
