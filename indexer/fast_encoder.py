"""SAM's image encoder with fused attention: same modules, same order, same result up to float
rounding.

`segment_anything`'s ViT attention materialises every attention map, then adds the decomposed
relative-position terms in a broadcast that writes the whole map again, then softmaxes it. In a
global-attention block of ViT-B at 1024 px that is 12 heads x 4096 x 4096 floats (800 MB) written
and read several times: on one CPU core the four global blocks took ~23 s of a ~30 s encoder
while the MLPs took well under a second each. Here the relative-position terms (small:
per query row, one value per key row and one per key column) are expanded into an additive
mask a slab of query rows at a time, and PyTorch's fused scaled-dot-product kernel does the
product, the mask, the softmax and the weighted sum in cache-sized tiles.
"""

from __future__ import annotations

import numpy as np

# float elements of one slab of the relative-position mask (heads x rows x keys): 128 MB
_MASK_BUDGET = 1 << 25


def encode(encoder, x, mask_budget: int = _MASK_BUDGET):
    """``ImageEncoderViT.forward`` with :func:`attention` in every block."""
    from segment_anything.modeling.image_encoder import window_partition, window_unpartition

    x = encoder.patch_embed(x.to(encoder.patch_embed.proj.weight.dtype))  # (bf16: sam_precision)
    if encoder.pos_embed is not None:
        x = x + encoder.pos_embed
    for blk in encoder.blocks:  # Block.forward
        shortcut = x
        x = blk.norm1(x)
        if blk.window_size > 0:
            h, w = x.shape[1], x.shape[2]
            x, pad_hw = window_partition(x, blk.window_size)
        x = attention(blk.attn, x, mask_budget)
        if blk.window_size > 0:
            x = window_unpartition(x, blk.window_size, pad_hw, (h, w))
        x = shortcut + x
        x = x + blk.mlp(blk.norm2(x))
    return encoder.neck(x.permute(0, 3, 1, 2))  # (the neck stays fp32 and casts its input: set_precision)


def attention(mod, x, mask_budget: int = _MASK_BUDGET):
    """``image_encoder.Attention.forward`` (B x H x W x C -> same) with the fused kernel.

    The relative-position term of ``add_decomposed_rel_pos`` for query (y, x) and key (y', x') is
    ``rel_h[y, x, y'] + rel_w[y, x, x']``; it is added as a float mask, built per slab of rows."""
    import torch
    import torch.nn.functional as F
    from segment_anything.modeling.image_encoder import get_rel_pos

    b, h, w, _ = x.shape
    n, heads = h * w, mod.num_heads
    q, k, v = mod.qkv(x).reshape(b, n, 3, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)  # B x nH x N x c
    if not mod.use_rel_pos:
        out = F.scaled_dot_product_attention(q, k, v, scale=mod.scale)
    else:
        r_q = q.reshape(b, heads, h, w, -1)
        rel_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, get_rel_pos(h, h, mod.rel_pos_h)).reshape(b, heads, n, h)
        rel_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, get_rel_pos(w, w, mod.rel_pos_w)).reshape(b, heads, n, w)
        rows = min(max(mask_budget // (b * heads * n), 1), n)
        outs = []
        for s in range(0, n, rows):
            e = min(n, s + rows)
            mask = (rel_h[:, :, s:e, :, None] + rel_w[:, :, s:e, None, :]).reshape(b, heads, e - s, n)
            outs.append(F.scaled_dot_product_attention(q[:, :, s:e], k, v, attn_mask=mask, scale=mod.scale))
        out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
    out = out.view(b, heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1)
    return mod.proj(out)


def set_image(predictor, image: np.ndarray) -> None:
    """``SamPredictor.set_image(image)`` (RGB uint8 HWC) with :func:`encode` as the encoder."""
    import torch

    model = predictor.model
    if model.image_format != "RGB":  # pragma: no cover - every SAM checkpoint is RGB
        image = image[..., ::-1]
    t = torch.as_tensor(predictor.transform.apply_image(image), device=predictor.device)
    t = t.permute(2, 0, 1).contiguous()[None, :, :, :]
    predictor.reset_image()
    predictor.original_size = image.shape[:2]
    predictor.input_size = tuple(t.shape[-2:])
    x = model.preprocess(t)
    if hasattr(model.image_encoder, "blocks"):  # SAM's ViT
        predictor.features = encode(model.image_encoder, x)
    else:  # another encoder in front of SAM's decoder (segsearch.models.efficientvit): its own forward
        predictor.features = model.image_encoder(x)
    predictor.is_image_set = True
