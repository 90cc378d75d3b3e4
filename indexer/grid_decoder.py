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

from . import factored

# the image side kept factored where that pays (indexer/factored.py); False forces the plain path
# everywhere (bench/realsize.py --decoder plain,factored compares both in one run)
FACTORED = True


class GridDecoder:
    """Decodes single-point prompts (multimask) against one image embedding.

    ``features`` is the predictor's image embedding (1 x C x h x w); for SAM 2, ``high_res`` its
    two high-resolution feature maps (stride 4, stride 8; 1 x C' x H x W each). ``needed``: the
    low-resolution rows and columns (from the top left) whose logits anything reads; the rest of
    each mask is ``Upscaler.FILL`` (all of it is computed when None)."""

    def __init__(self, sam, features, high_res=None, needed=None):
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
        # 1 x N x C, contiguous: every prompt's embeddings are added to these, and a broadcast add
        # of a transposed view ran 30x slower (3 ms instead of 0.1 for 16 prompts of the bundled SAM)
        self.src = (features + dense).flatten(2).permute(0, 2, 1).contiguous()
        self.pos = pe.get_dense_pe().flatten(2).permute(0, 2, 1).contiguous()
        t2i = first.cross_attn_token_to_image
        self.key = key = self.src + self.pos
        self.t2i_k = _heads(t2i.k_proj(key), t2i.num_heads)  # 1 x H x N x c
        self.t2i_v = _heads(t2i.v_proj(self.src), t2i.num_heads)
        self._i2t_q = None  # the first image->token attention's image queries, made when needed
        tokens = [md.iou_token.weight, md.mask_tokens.weight]
        self.skip = 0  # output tokens before the IoU token (SAM 2's object-score token)
        if getattr(md, "pred_obj_scores", False):
            tokens.insert(0, md.obj_score_token.weight)
            self.skip = 1
        self.output_tokens = torch.cat(tokens, dim=0)
        self.iou_sigmoid = bool(getattr(md, "iou_prediction_use_sigmoid", False))
        self.high_res = high_res if getattr(md, "use_high_res_features", False) else None
        # masks only where read: ``needed`` low-resolution rows and columns (from the top left)
        part = None if needed is None else tuple(-(-v // 4) for v in needed)
        from segsearch.models.sam import precision_of

        # sam_precision bf16: the mask head's two products in bfloat16 too (Upscaler)
        low = torch.bfloat16 if precision_of(sam) == "bf16" else None
        self.upscaler = Upscaler(md.output_upscaling, self.hw, self.high_res, part, low=low)
        # the image side per prompt kept as shared + low rank where that is cheaper (indexer/factored.py)
        self.factored = factored.Factored(self.src[0], self.pos[0]) if FACTORED and factored.worth_it(md) else None

    def _transformer(self, sparse):
        """The two-way transformer and the IoU head: the final IoU and multimask tokens (B x 4 x C),
        the per-prompt image embeddings (B x N x C) and the multimask outputs' predicted IoUs
        (B x 3)."""
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
        if self.factored is not None:
            return self._factored_rest(queries, tokens)
        if _low_rank(i2t, tokens.shape[1]):
            q_img = None  # reassociated: the shared image meets the prompts' projected tokens in one product
        elif self._i2t_q is None:
            q_img = self._i2t_q = _heads(i2t.q_proj(self.key), i2t.num_heads)  # once per image
        else:
            q_img = self._i2t_q
        keys = first.norm4(_image_to_tokens(i2t, self.key, queries + tokens, queries, q_img, residual=self.src))

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
        # The final attention only for the tokens that are read afterwards: the IoU token and the
        # multimask tokens (not the single-mask token, the prompt's own tokens or SAM 2's object
        # score token). Attention rows are independent, so the others need not be computed.
        used = [self.skip] + [self.skip + 1 + i for i in range(1, md.num_mask_tokens)]
        queries, qt = queries[:, used], (queries + tokens)[:, used]
        attn = _tokens_to_image(tr.final_attn_token_to_image, qt, keys + self.pos, keys)
        queries = tr.norm_final_attn(queries + attn)

        iou = md.iou_prediction_head(queries[:, 0, :])
        if self.iou_sigmoid:
            iou = iou.sigmoid()
        return queries, keys, iou[:, 1:]  # multimask outputs

    def _factored_rest(self, queries, tokens):
        """`_transformer` from the first image->token attention on, with every prompt's image kept
        factored (shared + low rank, see indexer/factored.py); the same steps in the same order."""
        md, tr, fz = self.md, self.tr, self.factored
        heads = self.first.cross_attn_image_to_token.num_heads
        x = fz.start(len(queries), factored.rank(len(tr.layers), heads, tokens.shape[1]))
        x = fz.image_to_tokens(x, self.first.cross_attn_image_to_token, queries + tokens, queries)
        x = fz.layer_norm(x, self.first.norm4)
        for layer in tr.layers[1:]:
            qt = queries + tokens
            queries = layer.norm1(queries + _attention(layer.self_attn, qt, qt, queries))
            queries = layer.norm2(queries + fz.tokens_to_image(x, layer.cross_attn_token_to_image, queries + tokens))
            queries = layer.norm3(queries + layer.mlp(queries))
            x = fz.image_to_tokens(x, layer.cross_attn_image_to_token, queries + tokens, queries)
            x = fz.layer_norm(x, layer.norm4)
        used = [self.skip] + [self.skip + 1 + i for i in range(1, md.num_mask_tokens)]
        queries, qt = queries[:, used], (queries + tokens)[:, used]
        queries = tr.norm_final_attn(queries + fz.tokens_to_image(x, tr.final_attn_token_to_image, qt))
        x.shared = fz
        iou = md.iou_prediction_head(queries[:, 0, :])
        if self.iou_sigmoid:
            iou = iou.sigmoid()
        return queries, x, iou[:, 1:]

    def _hyper(self, queries, idx):
        """The multimask tokens' hypernetwork outputs (``queries``: the IoU token, then those)."""
        import torch

        md = self.md
        mlps = md.output_hypernetworks_mlps
        return torch.stack([mlps[i](queries[idx, i, :]) for i in range(1, md.num_mask_tokens)], dim=1)

    def __call__(self, sparse, iou_thresh: float = 0.0):
        """``sparse``: B x P x C point embeddings from the prompt encoder. Returns (low-res mask
        logits, predicted IoU, prompt index) for the prompts that have a multimask output with
        predicted IoU > ``iou_thresh`` (all prompts when it is <= 0): K x 3 x H x W, K x 3, K."""
        import torch

        queries, keys, iou = self._transformer(sparse)
        if iou_thresh > 0:
            idx = torch.nonzero(iou.max(dim=1).values > iou_thresh).flatten()
        else:
            idx = torch.arange(len(iou), device=iou.device)
        if len(idx) == 0:
            h, w = self.hw
            return iou.new_zeros((0, 3, h * 4, w * 4)), iou[:0], idx
        return self.upscaler(keys, self._hyper(queries, idx), idx), iou[idx], idx

    def candidates(self, sparse, iou_thresh: float = 0.0, with_prompts: bool = False):
        """Per mask instead of per prompt: the multimask outputs whose own predicted IoU is
        > ``iou_thresh`` (all when it is <= 0), in (prompt, output) order, as the automatic mask
        generator filters them: M x H x W logits and their M predicted IoUs (and, ``with_prompts``,
        the M prompts, as row indices of ``sparse``). Only those masks are written out."""
        import torch

        queries, keys, iou = self._transformer(sparse)
        sel = iou > iou_thresh if iou_thresh > 0 else torch.ones_like(iou, dtype=torch.bool)
        idx = torch.nonzero(sel.any(dim=1)).flatten()
        h, w = self.hw
        if len(idx) == 0:
            out = iou.new_zeros((0, h * 4, w * 4)), iou.new_zeros(0)
        else:
            out = self.upscaler(keys, self._hyper(queries, idx), idx, sel[idx]), iou[sel]
        return (*out, torch.nonzero(sel)[:, 0]) if with_prompts else out


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
    shared; with its projected queries ``q_cached``, 1 x H x N x c, if known) attends to the prompt tokens
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
    if not low:
        if q_cached.shape[0] == 1:  # image queries shared by every prompt: one product for all tokens
            flat = k.transpose(0, 1).reshape(1, n, b * t, c) @ q_cached.transpose(-1, -2)
            logits = flat.reshape(n, b, t, -1).transpose(0, 1)
        else:
            logits = k @ q_cached.transpose(-1, -2)  # B x H x T x N
    else:
        m = (k @ _head_weights(mod.q_proj, n)).reshape(b, n * t, -1)  # B x HT x C
        bias = (k * mod.q_proj.bias.view(n, 1, c)).sum(-1).reshape(b, n * t, 1)
        if kp.shape[0] == 1:  # an image shared by every prompt: one product for all their tokens
            logits = torch.addmm(bias.reshape(-1, 1), m.reshape(b * n * t, -1), kp[0].T)
        else:
            logits = torch.baddbmm(bias, m, kp.transpose(1, 2))
        logits = logits.view(b, n, t, -1)
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
    return torch.bmm(a_t, u).add_(residual)  # (baddbmm would first copy the broadcast residual twice)


class Upscaler:
    """``MaskDecoder.output_upscaling`` (ConvT 2x2/2, LayerNorm2d, GELU, ConvT 2x2/2, GELU) followed
    by the hypernetwork product, computed per image position.

    Both transposed convolutions have kernel = stride = 2, so every embedding position feeds its own
    4x4 block of the output and nothing else: the whole head is a per-position function. Here it
    runs on the prompts' channels-last image embeddings (B x N x C, as the transformer leaves them)
    as two matrix products whose rows are positions and whose columns are (dy, dx, channel), in
    blocks of positions small enough to stay in cache (``BLOCK_FLOATS`` of the largest
    intermediate), and one gather puts the masks in raster order. This replaces per-prompt NCHW
    convolutions (the 16 -> 8 channel second one ran at a fifth of the first's speed) and a
    permuted copy for the LayerNorm.

    The channel LayerNorm's mean subtraction is linear, so it is folded into the first product's
    weights (each group of output channels is centred); what is left is a variance per group and
    the affine, four cheap passes instead of a row-wise LayerNorm over 16 values (0.09 vs 0.19 ms
    per 1,024 positions of the bundled SAM). SAM 2 adds its stride-8 features after the first
    convolution and its stride-4 features after the second (``high_res`` = (stride 4, stride 8),
    shared by every prompt): they are put in the same block layout once per image.

    ``part`` (rows, columns of positions, from the top left) limits the work to the positions whose
    output is ever read: SAM pads a photo to a square, and nothing reads the masks' logits over the
    padding (a 4:3 photo: a quarter of the positions). The rest of the output is ``FILL``."""

    BLOCK_FLOATS = 1 << 20  # 4 MB of float32 per block (measured here: 1-4 MB alike, 64 KB 2x and 16 MB 2.3x slower)
    FILL = -1e4  # logits where no position was computed: far below every threshold, and finite

    def __init__(self, seq, hw, high_res=None, part=None, low=None):
        import torch

        conv1, norm, act1, conv2, act2 = seq
        if type(norm).__name__ != "LayerNorm2d":  # pragma: no cover - a model with another head
            raise ValueError(f"unexpected mask upscaling norm {type(norm).__name__}")
        c, c1 = conv1.weight.shape[:2]
        c2 = conv2.weight.shape[1]
        h, w = hw
        hv, wv = part or hw
        self.hw, self.part, self.c1, self.c2 = hw, (min(h, hv), min(w, wv)), c1, c2
        hv, wv = self.part
        self.act1, self.act2, self.eps = act1, act2, norm.eps
        self.gain, self.shift = norm.weight, norm.bias
        device = conv1.weight.device

        def centred(v):  # subtract each (dy, dx) group's channel mean: LayerNorm's first step
            g = v.reshape(*v.shape[:-1], -1, c1)
            return (g - g.mean(-1, keepdim=True)).reshape(v.shape)

        # ConvTranspose2d weight: C_in x C_out x kh x kw -> C_in x (dy, dx, C_out)
        self.w1 = centred(conv1.weight.permute(0, 2, 3, 1).reshape(c, 4 * c1))
        self.b1 = centred(conv1.bias.repeat(4))
        self.w2 = conv2.weight.permute(0, 2, 3, 1).reshape(c1, 4 * c2)
        self.b2 = conv2.bias.repeat(4)
        self.hr1 = self.hr0 = None
        if high_res is not None:
            s4, s8 = high_res[0][0], high_res[1][0]
            # rows (i, j, dy, dx) and (i, j, dy1, dx1, dy2, dx2): output pixel (2i+dy, 2j+dx) and
            # (4i + 2dy1 + dy2, 4j + 2dx1 + dx2)
            hr1 = centred(s8.reshape(c1, h, 2, w, 2).permute(1, 3, 2, 4, 0).reshape(h, w, 4, c1))
            hr0 = s4.reshape(c2, h, 2, 2, w, 2, 2).permute(1, 4, 2, 5, 3, 6, 0).reshape(h, w, 16, c2)
            self.hr1 = hr1[:hv, :wv].reshape(-1, c1)
            self.hr0 = hr0[:hv, :wv].reshape(-1, c2)
        self.low = low
        if low is not None:  # the products, the second GELU and the hypernetwork's product in ``low``
            self.w1_low, self.b1_low = self.w1.to(low), self.b1.to(low)
            self.w2, self.b2 = self.w2.to(low), self.b2.to(low)
            self.hr0 = None if self.hr0 is None else self.hr0.to(low)
        ii, jj = torch.meshgrid(torch.arange(hv), torch.arange(wv), indexing="ij")
        # the part's positions: a prefix of the raster when it spans whole rows (a landscape photo)
        self.positions = None if wv == w else (ii * w + jj).reshape(-1).to(device)
        # raster pixel (Y, X) of the part <- block column (i, j, dy1, dx1, dy2, dx2), Y = 4i + 2dy1 + dy2
        order = torch.arange(hv * wv * 16, device=device).view(hv, wv, 2, 2, 2, 2)
        self.raster = order.permute(0, 2, 4, 1, 3, 5).reshape(-1)

    def __call__(self, x, hyper, idx=None, select=None):
        """``x``: B x N x C prompt image embeddings (N = h*w, raster order), of which the prompts
        ``idx`` (all when None); ``hyper``: K x M x C2 hypernetwork outputs, one per selected prompt.
        Returns the K x M x 4h x 4w mask logits, or with ``select`` (K x M booleans) only the
        selected masks, S x 4h x 4w in (prompt, mask) order."""
        import torch

        fz = isinstance(x, factored.Image)
        c = None if fz else x.shape[-1]
        k, m = hyper.shape[:2]
        (h, w), (hv, wv) = self.hw, self.part
        c1, c2, n = self.c1, self.c2, hv * wv
        rows = min(n, max(1, self.BLOCK_FLOATS // (16 * c2)))  # positions per block
        whole = rows == n  # blocks of whole prompts (else blocks of one prompt's positions)
        prompts = max(1, self.BLOCK_FLOATS // (16 * c2 * n)) if whole else 1
        sel = None if select is None else select.reshape(-1)
        total = k * m if sel is None else int(sel.sum())
        full = (hv, wv) == (h, w)
        like = hyper  # the dtype and device of the output
        out = like.new_empty((total, 16 * h * w)) if full else like.new_full((total, 4 * h, 4 * w), self.FILL)
        done = 0
        buf = None if whole else like.new_empty((1, m, 16 * n))
        prompt_rows = torch.arange(k, device=like.device) if idx is None else idx
        for p0 in range(0, k, prompts):
            p1 = min(k, p0 + prompts)
            pr = prompt_rows[p0:p1]
            for r0 in range(0, n, rows):
                r1 = min(n, r0 + rows)
                cols = slice(r0, r1) if self.positions is None else self.positions[r0:r1]
                if fz:
                    y = x.project(x.shared, pr, cols, self.w1, self.b1, self.low).view(-1, c1)
                else:
                    xb = x[pr, cols] if self.positions is None else x[pr[:, None], cols[None]]
                    if self.low is None:
                        y = torch.addmm(self.b1, xb.reshape(-1, c), self.w1).view(-1, c1)
                    else:
                        y = torch.addmm(self.b1_low, xb.reshape(-1, c).to(self.low), self.w1_low).float().view(-1, c1)
                if self.hr1 is not None:
                    y.view(p1 - p0, -1, c1).add_(self.hr1[r0 * 4 : r1 * 4])
                rstd = y.square().mean(-1, keepdim=True).add_(self.eps).rsqrt_()
                y = self.act1(torch.addcmul(self.shift, y.mul_(rstd), self.gain))
                z = torch.addmm(self.b2, y.to(self.w2.dtype), self.w2).view(p1 - p0, (r1 - r0) * 16, c2)
                if self.hr0 is not None:
                    z += self.hr0[r0 * 16 : r1 * 16]
                masks = torch.bmm(hyper[p0:p1].to(z.dtype), self.act2(z).transpose(1, 2))  # P x M x 16(r1 - r0)
                if not whole:
                    buf[:, :, 16 * r0 : 16 * r1] = masks
                    continue
                done = self._emit(masks, sel, p0, p1, m, out, done)
            if not whole:
                done = self._emit(buf, sel, p0, p1, m, out, done)
        return out.view(-1, 4 * h, 4 * w) if sel is not None else out.view(k, m, 4 * h, 4 * w)

    def _emit(self, masks, sel, p0, p1, m, out, done) -> int:
        """The block's masks (P x M x 16n, block layout), the selected ones only, into raster order
        in ``out`` from row ``done`` (the computed part of each mask)."""
        import torch

        hv, wv = self.part
        masks = masks.reshape((p1 - p0) * m, -1)
        if sel is not None:
            masks = masks[sel[p0 * m : p1 * m]]
        raster = torch.gather(masks, 1, self.raster.expand(len(masks), -1))
        end = done + len(raster)
        if out.dim() == 2:
            out[done:end] = raster
        else:
            out[done:end, : 4 * hv, : 4 * wv] = raster.view(-1, 4 * hv, 4 * wv)
        return end
