"""SAM's mask decoder for many point prompts on one image, without repeating per-image work.

`MaskDecoder.forward` copies the image embedding once per prompt and runs every prompt through
the whole two-way transformer and the upscaling convolutions. Part of that does not depend on
the prompt at all. In the first transformer layer the image side is still the bare embedding
(plus the "no mask" dense embedding, the same for every point prompt), so

* the keys and values of the first token->image attention, and
* the queries of the first image->token attention

are the same for every prompt: `GridDecoder` computes them once per image and broadcasts them.
The mask upscaling (two transposed convolutions on the full embedding grid, the largest single
cost per prompt) runs only for prompts with at least one multimask output whose predicted IoU
passes the threshold; the automatic mask generator drops the others before it looks at a mask.

Everything else is the model's own modules, called in the same order, so the outputs are
`MaskDecoder.forward(..., multimask_output=True)`'s up to float rounding (tests/test_amg.py checks
it against the official decoder). SAM 2's decoder is the same design with three additions, handled
here: an object-score token before the IoU token, a sigmoid on the IoU head, and the image
encoder's stride-4 and stride-8 feature maps added while upscaling (shared by every prompt).
"""

from __future__ import annotations

import math


class GridDecoder:
    """Decodes single-point prompts (multimask) against one image embedding.

    ``features`` is the predictor's image embedding (1 x C x h x w); for SAM 2, ``high_res`` its
    two high-resolution feature maps (stride 4, stride 8; 1 x C' x H x W each)."""

    def __init__(self, sam, features, high_res=None):
        import torch

        sam2 = hasattr(sam, "sam_mask_decoder")
        md = sam.sam_mask_decoder if sam2 else sam.mask_decoder
        tr = md.transformer
        first = tr.layers[0]
        if not first.skip_first_layer_pe:  # pragma: no cover - all SAM variants skip it
            raise ValueError("GridDecoder expects SAM's first two-way layer to skip the token PE")
        pe = sam.sam_prompt_encoder if sam2 else sam.prompt_encoder
        self.md, self.tr, self.first = md, tr, first
        self.hw = tuple(features.shape[-2:])
        dense = pe.no_mask_embed.weight.reshape(1, -1, 1, 1)  # the dense embedding when no mask is given
        self.src = (features + dense).flatten(2).permute(0, 2, 1)  # 1 x N x C
        self.pos = pe.get_dense_pe().flatten(2).permute(0, 2, 1)  # 1 x N x C
        t2i, i2t = first.cross_attn_token_to_image, first.cross_attn_image_to_token
        key = self.src + self.pos
        self.t2i_k = _heads(t2i.k_proj(key), t2i.num_heads)  # 1 x H x N x c
        self.t2i_v = _heads(t2i.v_proj(self.src), t2i.num_heads)
        self.i2t_q = _heads(i2t.q_proj(key), i2t.num_heads)
        tokens = [md.iou_token.weight, md.mask_tokens.weight]
        self.skip = 0  # output tokens before the IoU token (SAM 2's object-score token)
        if getattr(md, "pred_obj_scores", False):
            tokens.insert(0, md.obj_score_token.weight)
            self.skip = 1
        self.output_tokens = torch.cat(tokens, dim=0)
        self.iou_sigmoid = bool(getattr(md, "iou_prediction_use_sigmoid", False))
        self.high_res = high_res if getattr(md, "use_high_res_features", False) else None

    def __call__(self, sparse, iou_thresh: float = 0.0):
        """``sparse``: B x P x C point embeddings from the prompt encoder. Returns (low-res mask
        logits, predicted IoU, prompt index) for the prompts that have a multimask output with
        predicted IoU > ``iou_thresh`` (all prompts when it is <= 0): K x 3 x H x W, K x 3, K."""
        import torch

        md, tr, first = self.md, self.tr, self.first
        b = sparse.shape[0]
        tokens = torch.cat((self.output_tokens.unsqueeze(0).expand(b, -1, -1), sparse), dim=1)

        # first layer, with the prompt-independent image projections taken from the cache
        queries = first.norm1(_attention(first.self_attn, tokens, tokens, tokens))
        t2i = first.cross_attn_token_to_image
        q = _heads(t2i.q_proj(queries + tokens), t2i.num_heads)  # B x H x T x c
        # every prompt's tokens attend to the same image keys: one batch of B*T queries
        hq, tq = q.shape[1], q.shape[2]
        out = _sdpa(q.transpose(0, 1).reshape(1, hq, b * tq, -1), self.t2i_k, self.t2i_v)
        out = out.reshape(hq, b, tq, -1).transpose(0, 1)
        queries = first.norm2(queries + t2i.out_proj(_merge(out)))
        queries = first.norm3(queries + first.mlp(queries))
        i2t = first.cross_attn_image_to_token
        keys = first.norm4(_image_to_tokens(i2t, None, queries + tokens, queries, self.i2t_q, residual=self.src))

        for layer in tr.layers[1:]:  # TwoWayAttentionBlock.forward, image side per prompt
            qt = queries + tokens
            queries = layer.norm1(queries + _attention(layer.self_attn, qt, qt, queries))
            kp = keys + self.pos
            queries = layer.norm2(
                queries + _tokens_to_image(layer.cross_attn_token_to_image, queries + tokens, kp, keys)
            )
            queries = layer.norm3(queries + layer.mlp(queries))
            keys = layer.norm4(
                _image_to_tokens(
                    layer.cross_attn_image_to_token, kp, queries + tokens, queries, residual=keys, inplace=True
                )
            )
        attn = _tokens_to_image(tr.final_attn_token_to_image, queries + tokens, keys + self.pos, keys)
        queries = tr.norm_final_attn(queries + attn)

        s = self.skip
        iou = md.iou_prediction_head(queries[:, s, :])
        if self.iou_sigmoid:
            iou = iou.sigmoid()
        iou = iou[:, 1:]  # multimask outputs
        if iou_thresh > 0:
            idx = torch.nonzero(iou.max(dim=1).values > iou_thresh).flatten()
        else:
            idx = torch.arange(b, device=iou.device)
        c = keys.shape[-1]
        h, w = self.hw
        if len(idx) == 0:
            return iou.new_zeros((0, 3, h * 4, w * 4)), iou[:0], idx
        src = keys[idx].transpose(1, 2).reshape(len(idx), c, h, w)
        up = _upscale(md.output_upscaling, src, self.high_res)
        hyper = torch.stack(
            [md.output_hypernetworks_mlps[i](queries[idx, s + 1 + i, :]) for i in range(1, md.num_mask_tokens)], dim=1
        )
        n, uc, uh, uw = up.shape
        masks = (hyper @ up.view(n, uc, uh * uw)).view(n, -1, uh, uw)
        return masks, iou[idx], idx


def _heads(x, n):
    b, t, c = x.shape
    return x.reshape(b, t, n, c // n).transpose(1, 2)


def _merge(x):
    b, n, t, c = x.shape
    return x.transpose(1, 2).reshape(b, t, n * c)


def _attention(mod, q, k, v):
    """segment_anything's ``Attention.forward`` with PyTorch's fused scaled-dot-product kernel."""
    n = mod.num_heads
    out = _sdpa(_heads(mod.q_proj(q), n), _heads(mod.k_proj(k), n), _heads(mod.v_proj(v), n))
    return mod.out_proj(_merge(out))


def _sdpa(q, k, v):
    import torch.nn.functional as F

    return F.scaled_dot_product_attention(q, k, v)


def _low_rank(mod, t: int) -> bool:
    """Whether to reassociate an attention between T prompt tokens and a per-prompt image: the
    image side then meets H*T projected token vectors instead of being projected itself (C -> I
    per image position). Pays when H*T is at most the attention's inner width: fewer multiply-adds
    (N*C*H*T instead of N*C*I plus the logits), and no projected N x I image tensor, its bias
    pass or its head transposes (ViT-B/L/H: 8 heads x 7 tokens vs 128; the bundled tiny SAM: 4 x 7
    vs 32, decoder 0.49 -> 0.41 s per image on one CPU thread)."""
    return mod.num_heads * t <= mod.internal_dim


def _head_weights(linear, n):
    """A projection's weight split per head: H x c x C (rows of head h)."""
    w = linear.weight
    return w.view(n, w.shape[0] // n, w.shape[1])


def _tokens_to_image(mod, qt, kp, x):
    """``Attention(q=qt, k=kp, v=x)``: prompt tokens (B x T x C) attend to a per-prompt image
    (B x N x C). Reassociated when it pays (see _low_rank): logits = (Q_h W_k,h) kp^T (the key
    bias adds a per-row constant, which softmax ignores) and A_h (x W_v,h^T + b_v) =
    (A_h x) W_v,h^T + b_v (rows of A_h sum to 1)."""
    n = mod.num_heads
    b, t, _ = qt.shape
    if not _low_rank(mod, t):
        return _attention(mod, qt, kp, x)
    q = _heads(mod.q_proj(qt), n)  # B x H x T x c
    c = q.shape[-1]
    qk = (q / math.sqrt(c)) @ _head_weights(mod.k_proj, n)  # B x H x T x C
    a = (qk.reshape(b, n * t, -1) @ kp.transpose(1, 2)).softmax(dim=-1)  # B x HT x N
    ax = (a @ x).view(b, n, t, -1)  # B x H x T x C
    out = ax @ _head_weights(mod.v_proj, n).transpose(-1, -2) + mod.v_proj.bias.view(n, 1, c)
    return mod.out_proj(_merge(out))


def _image_to_tokens(mod, kp, kt, vt, q_cached=None, residual=None, inplace=False):
    """``residual + Attention(q=kp, k=kt, v=vt)``: a per-prompt image (B x N x C, or 1 x N x C
    shared; or its projected queries ``q_cached``, 1 x H x N x c) attends to the prompt tokens
    (B x T x C), and the result is added to ``residual`` (B x N x C or shared 1 x N x C; modified
    in place when ``inplace``).
    The logits are laid out T x N so the softmax runs over the short token axis as a column
    reduction (a row softmax over rows of ~7 values is several times slower on CPU). When it
    pays (see _low_rank) the image side is not projected: logits = kp (W_q,h^T K_h^T) + b_q,h K_h^T
    and out_proj(A V) = sum_h A_h (V_h W_o,h^T) + b_o. There the output bias and the residual
    go into the one product that writes the B x N x C result: each position's softmax weights sum
    to 1 per head, so b_o / H added to every row of V_h W_o,h^T adds b_o, and the product
    accumulates onto the residual (every other pass over that tensor is memory-bound on a CPU)."""
    import torch

    n = mod.num_heads
    b, t, _ = kt.shape
    k = _heads(mod.k_proj(kt), n)  # B x H x T x c
    v = _heads(mod.v_proj(vt), n)
    c = k.shape[-1]
    k = k / math.sqrt(c)
    low = _low_rank(mod, t)
    if q_cached is None and not low:
        q_cached = _heads(mod.q_proj(kp), n)
    if q_cached is not None:
        if q_cached.shape[0] == 1:  # image queries shared by every prompt: one product for all tokens
            flat = k.transpose(0, 1).reshape(1, n, b * t, c) @ q_cached.transpose(-1, -2)
            logits = flat.reshape(n, b, t, -1).transpose(0, 1)
        else:
            logits = k @ q_cached.transpose(-1, -2)  # B x H x T x N
    else:
        m = (k @ _head_weights(mod.q_proj, n)).reshape(b, n * t, -1)  # B x HT x C
        bias = (k * mod.q_proj.bias.view(n, 1, c)).sum(-1).reshape(b, n * t, 1)
        logits = (m @ kp.transpose(1, 2) + bias).view(b, n, t, -1)
    a = logits.softmax(dim=-2)  # B x H x T x N
    if not low:
        out = mod.out_proj(_merge(a.transpose(-1, -2) @ v))
        if residual is None:
            return out
        return residual.add_(out) if inplace else residual + out
    wo = mod.out_proj.weight  # C x I
    u = v @ wo.view(wo.shape[0], n, c).permute(1, 2, 0) + mod.out_proj.bias / n  # B x H x T x C
    a_t = a.reshape(b, n * t, -1).transpose(1, 2)  # B x N x HT
    u = u.reshape(b, n * t, -1)
    if residual is None:
        return a_t @ u
    if inplace:
        return residual.baddbmm_(a_t, u)
    return torch.baddbmm(residual.expand(b, -1, -1), a_t, u)


def _upscale(seq, x, high_res=None):
    """``MaskDecoder.output_upscaling`` (ConvT, LayerNorm2d, GELU, ConvT, GELU) with the channel
    LayerNorm done by the fused kernel on a channels-last view instead of five elementwise ops.
    SAM 2 adds its stride-8 features after the first transposed convolution and its stride-4
    features after the second (``high_res`` = (stride 4, stride 8), broadcast over the prompts)."""
    import torch.nn.functional as F

    conv1, norm, act1, conv2, act2 = seq
    if type(norm).__name__ != "LayerNorm2d":  # pragma: no cover - a model with another head
        raise ValueError(f"unexpected mask upscaling norm {type(norm).__name__}")
    x = conv1(x)
    if high_res is not None:
        x = x + high_res[1]
    x = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), norm.weight, norm.bias, norm.eps).permute(0, 3, 1, 2)
    x = conv2(act1(x))
    if high_res is not None:
        x = x + high_res[0]
    return act2(x)
