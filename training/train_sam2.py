"""Train ``sam2-shapes-tiny``: the ``sam2`` package's own SAM 2.1 classes at a small config
(``segsearch/models/configs/sam2_shapes_tiny.yaml``: 7-block Hiera at 32 channels, d_model 64,
512-px input, a mask decoder as wide as sam-shapes-tiny's), trained on shapes-world scenes as
``sam-shapes-tiny`` was (train_sam.py): point prompts, three multimask outputs + the IoU head,
background points asking for their connected background region. On top of SAM 1's recipe, as SAM 2
is trained: the single-mask output learns box prompts, the object-score head learns "object
present", and the image goes through SAM 2's own preprocessing (a square resize of the whole image,
ImageNet mean/std, no padding) with the high-resolution features feeding the mask decoder.

The bundled weights (log: sam2-shapes-tiny.log) were trained with ``--teacher``: SAM 2 reuses SAM 1's
prompt encoder and mask decoder design, so those start as sam-shapes-tiny's (SAM 2's additions
neutral), and the Hiera encoder is trained to reproduce sam-shapes-tiny's image embedding of the
same square input (decoupled distillation, as MobileSAM trained its small encoder) while the
mask losses train everything (the head at a tenth of the learning rate):

    python training/train_sam2.py --teacher checkpoints/sam-shapes-tiny.pt --decoder-lr-scale 0.1 \
        --pool 600 --steps 1000 --threads 2 --save-every 100 --out checkpoints/sam2-shapes-tiny.pt
        # ~2 min rendering + ~32 min training on 2 cores

Without a teacher (random init, Meta's fixed decoder of 8 heads and MLP 2048 at d_model 64) 900
steps reached validation point-prompt mIoU 0.45 and no automatic masks passed even loose filters
(log: sam2-shapes-tiny-scratch.log); with the teacher, 200 steps reached 0.71.

Seeded and CPU-only. Saved as Meta's SAM 2 checkpoints are (``{"model": state_dict}``, fp16 to keep
the repo small) and loaded by the same code (segsearch.models.sam2_build).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_sam as sam1  # noqa: E402  (the shapes-world prompts, losses and background components)

from segsearch.eval.shapes import HELDOUT_SEEDS, TRAIN_SEEDS, VALIDATION_SEEDS, make_scene  # noqa: E402
from segsearch.models.known import SAM2_SHAPES_TINY_CONFIG  # noqa: E402
from segsearch.models.sam2_build import build_sam2_model  # noqa: E402

IMG = 512
LOW = IMG // 4  # SAM 2's low-res masks: 4x the stride-16 embedding
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def prepare(seed: int):
    """A scene as SAM2Transforms sees it (the whole image resized to IMG x IMG, antialiased
    bilinear as torchvision's Resize, kept as uint8), its instance masks, and the background as its connected
    regions, at IMG x IMG."""
    from PIL import Image

    sc = make_scene(seed)
    h, w = sc.image.shape[:2]
    # (PIL, not torch: these run in forked workers, where torch's OpenMP pool can deadlock)
    img = np.asarray(Image.fromarray(sc.image).resize((IMG, IMG), Image.BILINEAR))
    regions = list(sc.masks)
    bg = ~np.any(sc.masks, axis=0) if len(sc.masks) else np.ones((h, w), bool)
    masks = np.stack(
        [
            np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize((IMG, IMG), Image.BILINEAR)) > 127
            for m in [*regions, bg]
        ]
    ).astype(np.uint8)
    comps = sam1._components(masks[-1].astype(bool))
    masks = np.concatenate([masks[:-1], comps]) if len(comps) else masks
    return img, masks, len(regions)


def make_pool(seeds, workers=2):
    with Pool(workers) as p:
        return p.map(prepare, seeds, chunksize=16)


def image_features(model, images):
    """SAM2ImagePredictor.set_image for a batch: the image embedding (+ no_mem_embed) and the
    high-resolution feature maps the mask decoder adds while upscaling."""
    x = (images / 255.0 - MEAN) / STD
    backbone_out = model.forward_image(x)
    _, feats, _, sizes = model._prepare_backbone_features(backbone_out)
    if model.directly_add_no_mem_embed:
        feats[-1] = feats[-1] + model.no_mem_embed
    b = images.shape[0]
    maps = [f.permute(1, 2, 0).reshape(b, -1, *s) for f, s in zip(feats[::-1], sizes[::-1])][::-1]
    return maps[-1], maps[:-1]


def decode(model, embed, high_res, b, points=None, boxes=None, multimask=True):
    """One image's prompts -> (low-res logits P x K x LOW x LOW, IoU P x K, object logits P x 1)."""
    pe = model.sam_prompt_encoder
    if boxes is not None:
        coords = boxes.reshape(-1, 2, 2)
        labels = torch.tensor([[2, 3]], dtype=torch.int).repeat(len(coords), 1)
    else:
        coords = points[:, None, :]
        labels = torch.ones(coords.shape[:2], dtype=torch.int)
    sparse, dense = pe(points=(coords, labels), boxes=None, masks=None)
    low, iou, _, obj = model.sam_mask_decoder(
        image_embeddings=embed[b : b + 1],
        image_pe=pe.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask,
        repeat_image=True,
        high_res_features=[h[b : b + 1] for h in high_res],
    )
    return low, iou, obj


def _mask_terms(pred, iou_pred, gt):
    """SAM's loss on K outputs per prompt: focal*20 + dice on the best output, MSE on the IoU head."""
    gt3 = gt[:, None].expand_as(pred)
    per_mask = 20 * sam1.focal_loss(pred, gt3) + sam1.dice_loss(pred, gt3)
    best = per_mask.argmin(1)
    mask_loss = per_mask.gather(1, best[:, None]).mean()
    with torch.no_grad():
        binm = pred > 0
        inter = (binm & (gt3 > 0.5)).flatten(-2).sum(-1).float()
        union = (binm | (gt3 > 0.5)).flatten(-2).sum(-1).float()
        true_iou = inter / union.clamp(min=1)
    iou_loss = F.mse_loss(iou_pred, true_iou)
    return mask_loss, iou_loss, true_iou.gather(1, best[:, None]).mean()


def _boxes(masks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Boxes of shape masks with SAM's box noise (10% of the side, at most 20 px)."""
    out = []
    for m in masks:
        ys, xs = np.nonzero(m)
        x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        s = 0.1 * np.array([x1 - x0, y1 - y0, x1 - x0, y1 - y0])
        noise = np.clip(rng.normal(0, 1, 4) * s, -20, 20)
        out.append(np.clip(np.array([x0, y0, x1, y1]) + noise, 0, IMG))
    return np.array(out, np.float32)


def init_from_sam1(model, sam1_state: dict) -> None:
    """Start SAM 2's prompt encoder and mask decoder from a trained SAM 1 of the same widths (the same
    design: SAM 2 copied SAM 1's classes): every SAM 1 tensor is copied (its decoder MLPs are named
    lin1/lin2 there, layers.0/1 here); SAM 2's additions start neutral: the high-resolution feature
    projections at zero (the upscaling then computes what SAM 1's did), the object-score head as built."""
    renames = {".mlp.lin1.": ".mlp.layers.0.", ".mlp.lin2.": ".mlp.layers.1."}
    for src, dst in (("prompt_encoder.", "sam_prompt_encoder."), ("mask_decoder.", "sam_mask_decoder.")):
        own = model.state_dict()
        for k, v in sam1_state.items():
            if not k.startswith(src):
                continue
            name = dst + k[len(src) :]
            for a, b in renames.items():
                name = name.replace(a, b)
            if name in own and own[name].shape == v.shape:
                own[name].copy_(v.float())
    dec = model.sam_mask_decoder
    for conv in (dec.conv_s0, dec.conv_s1):
        torch.nn.init.zeros_(conv.weight)
        torch.nn.init.zeros_(conv.bias)


def teacher_embedding(teacher, images):
    """The SAM 1 teacher's image embedding of the same (square) input the student sees."""
    with torch.no_grad():
        return teacher.image_encoder(teacher.preprocess(images))


def batch_loss(model, pool, idx, rng, prompts_per_image, boxes_per_image=4, teacher=None):
    imgs = torch.stack([torch.from_numpy(pool[i][0]).permute(2, 0, 1).float() for i in idx])
    embed, high_res = image_features(model, imgs)
    distill = F.mse_loss(embed, teacher_embedding(teacher, imgs)) if teacher is not None else None
    preds, ious, gts, objs = [], [], [], []
    bpred, biou, bgt = [], [], []
    for b, i in enumerate(idx):
        _, masks, n_shapes = pool[i]
        coords, targets = sam1.sample_prompts(masks, n_shapes, prompts_per_image, rng)
        low, iou, obj = decode(model, embed, high_res, b, points=torch.from_numpy(coords))
        preds.append(low)
        ious.append(iou)
        objs.append(obj)
        gts.append(torch.from_numpy(masks[targets]).float())
        if n_shapes and boxes_per_image:
            pick = rng.integers(n_shapes, size=boxes_per_image)
            keep = [k for k in pick if masks[k].any()]
            if keep:
                low1, iou1, _ = decode(
                    model, embed, high_res, b, boxes=torch.from_numpy(_boxes(masks[keep], rng)), multimask=False
                )
                bpred.append(low1)
                biou.append(iou1)
                bgt.append(torch.from_numpy(masks[keep]).float())

    def low_res(t):
        return (F.interpolate(torch.cat(t)[:, None], size=(LOW, LOW), mode="area")[:, 0] > 0.5).float()

    mask_loss, iou_loss, miou = _mask_terms(torch.cat(preds), torch.cat(ious), low_res(gts))
    obj_logits = torch.cat(objs)
    obj_loss = F.binary_cross_entropy_with_logits(obj_logits, torch.ones_like(obj_logits))
    loss = mask_loss + iou_loss + 0.1 * obj_loss
    box_miou = torch.tensor(float("nan"))
    if bpred:
        bl, bi, box_miou = _mask_terms(torch.cat(bpred), torch.cat(biou), low_res(bgt))
        loss = loss + 0.5 * (bl + bi)
    if distill is not None:
        loss = loss + DISTILL_WEIGHT * distill
    return loss, mask_loss.item(), iou_loss.item(), miou.item(), box_miou.item()


DISTILL_WEIGHT = 1.0  # the teacher's embedding is layer-normed (unit scale): MSE ~1 at random init


def evaluate(model, pool, rng, n_prompts=8):
    model.eval()
    with torch.inference_mode():
        _, ml, il, miou, bmiou = batch_loss(model, pool, range(len(pool)), rng, n_prompts)
    model.train()
    return ml, il, miou, bmiou


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=2400)
    ap.add_argument("--pool", type=int, default=1000, help="training scenes (pre-rendered)")
    ap.add_argument("--pool-start", type=int, default=20000, help="first training seed (after sam-shapes-tiny's)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--init", type=Path, help="continue from these weights")
    ap.add_argument(
        "--teacher",
        type=Path,
        help="a trained SAM 1 of the same decoder widths (checkpoints/sam-shapes-tiny.pt): its prompt encoder "
        "and mask decoder initialise ours, and its image embedding is distilled into the Hiera encoder",
    )
    ap.add_argument("--decoder-lr-scale", type=float, default=1.0, help="learning-rate factor of the head")
    ap.add_argument("--save-every", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("checkpoints/sam2-shapes-tiny.pt"))
    args = ap.parse_args()
    sam1._set_globals(True, IMG)  # background points ask for their connected region (stage 4's fix)

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    t0 = time.time()
    pool = make_pool(list(TRAIN_SEEDS[args.pool_start : args.pool_start + args.pool]))
    val = make_pool(list(VALIDATION_SEEDS[:24]))
    print(f"rendered {len(pool)} training scenes in {time.time() - t0:.0f}s", flush=True)

    model = build_sam2_model(SAM2_SHAPES_TINY_CONFIG).train()
    teacher = None
    if args.teacher:
        from segsearch.models.known import SAM_SHAPES_TINY_CONFIG
        from segsearch.models.sam import build_sam_model, load_state_dict

        sam1_state = load_state_dict(args.teacher)
        teacher = build_sam_model(SAM_SHAPES_TINY_CONFIG)
        teacher.load_state_dict({k: v.float() for k, v in sam1_state.items()})
        teacher.eval().requires_grad_(False)
        if not args.init:
            init_from_sam1(model, sam1_state)
        print(f"teacher {args.teacher}: head initialised from it, image embedding distilled", flush=True)
    if args.init:
        state = torch.load(args.init, weights_only=True)["model"]
        model.load_state_dict({k: v.float() for k, v in state.items()})
        print(f"continuing from {args.init}", flush=True)
    # only the image path is trained (the memory modules are for video and get no gradient here)
    params = [
        p
        for n, p in model.named_parameters()
        if n.startswith(("image_encoder.", "sam_prompt_encoder.", "sam_mask_decoder.", "no_mem_embed"))
    ]
    print(
        f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
        f"{sum(p.numel() for p in params) / 1e6:.2f}M trained",
        flush=True,
    )
    head = [p for n, p in model.named_parameters() if n.startswith(("sam_prompt_encoder.", "sam_mask_decoder."))]
    body = [p for p in params if all(p is not h for h in head)]
    opt = torch.optim.AdamW(
        [{"params": body, "scale": 1.0}, {"params": head, "scale": args.decoder_lr_scale}],
        lr=args.lr,
        weight_decay=0.01,
    )
    start = time.time()
    for step in range(args.steps):
        frac = step / args.steps
        lr = args.lr * min(1.0, (step + 1) / 100) * (0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr * g["scale"]
        idx = rng.integers(len(pool), size=args.batch)
        loss, ml, il, miou, bmiou = batch_loss(model, pool, idx, rng, args.prompts, teacher=teacher)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if (step + 1) % 50 == 0:
            msg = (
                f"step {step + 1} {(time.time() - start) / 60:.1f}min lr {lr:.2e} mask {ml:.3f} iou-head {il:.4f} "
                f"train-mIoU {miou:.3f} box-mIoU {bmiou:.3f}"
            )
            if (step + 1) % 200 == 0:
                vml, vil, vmiou, vb = evaluate(model, val, np.random.default_rng(1))
                msg += f" | validation mask {vml:.3f} iou-head {vil:.4f} mIoU {vmiou:.3f} box-mIoU {vb:.3f}"
            print(msg, flush=True)
        if args.save_every and (step + 1) % args.save_every == 0:
            save(model, args.out)

    vml, vil, vmiou, vb = evaluate(model, val, np.random.default_rng(1))
    hml, hil, hmiou, hb = evaluate(model, make_pool(list(HELDOUT_SEEDS[:24])), np.random.default_rng(1))
    print(
        f"final after {args.steps} steps, {(time.time() - start) / 60:.1f} min: validation point mIoU {vmiou:.3f} "
        f"box mIoU {vb:.3f}; held-out point mIoU {hmiou:.3f} box mIoU {hb:.3f}",
        flush=True,
    )
    save(model, args.out)


def save(model, out: Path) -> None:
    sam1.save(model, out, key="model")  # as Meta stores SAM 2 checkpoints


if __name__ == "__main__":
    main()
