"""SAM's two-way transformer for many prompts without a per-prompt image tensor (issue 31 item 3).

Per prompt, the mask decoder's image side changes only through attention to that prompt's few
tokens: after the first image->token attention each position's update is a softmax-weighted mix
of H*T vectors (H heads, T tokens: 8 x 7 for SAM ViT-B/L/H and SAM 2). So every per-prompt image
the transformer makes is

    X_b = s_b * S + R_b^T U_b          (N positions x C channels)

with S (N x C) shared by every prompt, s_b a per-position scale, and a low-rank part: R_b (K x N)
mixing weights and U_b (K x C) rows, K ~ 2*H*T + 2 = 114 < C = 256. The two LayerNorms on the
image side keep that form exactly: a row's mean and variance come from S's (once per image), the
rows of U and their products (``_cross``, ``G = U U^T``), and the normalised image is again
scale * shared + low rank. Every product of the image with a projection becomes a shared product
(once per image) plus a K-wide one per prompt; no N x C tensor is made per prompt, and the passes
over such tensors (adds, LayerNorms, the position encoding) were half the decoder's time on a CPU.

The products S U^T that a variance needs are taken through the rows' own factors: an attention
block's rows are ``v_h[t] @ Wo_h^T`` (v: the prompt's values, c = C_attn/H wide; Wo_h: shared),
so S U^T = (S Wo_h) v_h^T, a c-wide product per prompt instead of a C-wide one. Outputs are the
official decoder's up to float rounding (tests/test_amg.py, tests/test_sam2.py compare them).
"""

from __future__ import annotations

import math


def worth_it(md) -> bool:
    """Whether the factored form pays for this decoder: its rank (an attention update per layer,
    a bias row per layer and one more) must stay well under the channel width. Measured on one
    CPU thread: ViT-B (115 of 256) 26 -> 15 ms per prompt, SAM 2.1 (131 of 256) 50 -> 22 ms;
    the bundled tiny SAMs (59 of 64) 1.5 -> 2.2 ms, so they keep the plain path."""
    tr = md.transformer
    heads = tr.layers[0].cross_attn_image_to_token.num_heads
    tokens = 1 + md.num_mask_tokens + int(getattr(md, "pred_obj_scores", False)) + 2  # outputs, point, pad
    return rank(len(tr.layers), heads, tokens) <= 0.6 * tr.embedding_dim


def rank(layers: int, heads: int, tokens: int) -> int:
    """Rows of the low-rank part after the transformer: each layer's image->token attention adds
    heads * tokens, each LayerNorm one bias row, plus the first attention's output bias."""
    return layers * (heads * tokens + 1) + 1


class Image:
    """One batch of per-prompt images X_b = s_b * S_stage + R_b^T U_b (see the module docstring).

    ``s``: B x N (None: 1); ``R``: B x K x N; ``U``: B x K x C. ``blocks``: where the rows of U come
    from, for the variance's cross products: ("attn", k0, k1, v, M, origin) rows = per head
    v_h (B x T x c) @ M_h (c x C, shared); ("const", k, vec) one shared row; ``ones`` the row whose
    weights are all 1 (biases added since the last LayerNorm), or None."""

    def __init__(self, stage, s, rows, bufs, blocks, ones):
        self.stage, self.s, self.rows, self.bufs, self.blocks, self.ones = stage, s, rows, bufs, blocks, ones
        self._uw = {}

    @property
    def R(self):
        return self.bufs[0][:, : self.rows]

    @property
    def U(self):
        return self.bufs[1][:, : self.rows]

    def grow(self, n: int):
        """Views of the next ``n`` rows of R and U (the buffers are made for the whole transformer,
        so appending rows copies nothing)."""
        k = self.rows
        return self.bufs[0][:, k : k + n], self.bufs[1][:, k : k + n]

    def project(self, shared, pr, cols, w, b, low=None):
        """(X W + b) for prompts ``pr`` at positions ``cols``: (P * rows) x D, the upscaler's first
        product, as a shared product plus a K-wide one (that one in ``low`` precision if given)."""
        sw = shared.get(("up", self.stage, id(w)), lambda: shared.S(self.stage) @ w)
        uw = self._uw.get(id(w))
        if uw is None:
            uw = self._uw[id(w)] = (self.U @ w).to(low or w.dtype)  # B x K x D, once per batch
        if len(pr) == 1:  # views, no copies of a prompt's K x N weights
            pr = slice(int(pr[0]), int(pr[0]) + 1)
        r = self.R[pr][:, :, cols].transpose(1, 2)
        y = (r @ uw[pr]) if low is None else (r.to(low) @ uw[pr]).float()  # P x rows x D
        if self.s is None:
            y += sw[cols]
        else:
            y.addcmul_(self.s[pr][:, cols, None], sw[cols])
        return y.add_(b).view(-1, w.shape[1])


class Factored:
    """The per-image caches and the operations of the transformer's image side on `Image`s."""

    def __init__(self, src, pos):
        self.stages = [src]  # the shared S after 0, 1, 2 ... LayerNorms (N x C)
        self.pos = pos
        self.cache = {}

    def get(self, key, make):
        v = self.cache.get(key)
        if v is None:
            v = self.cache[key] = make()
        return v

    def S(self, stage):
        return self.stages[stage]

    def start(self, b, capacity: int):
        """A batch of ``b`` images that are still the shared embedding, with room for ``capacity``
        low-rank rows."""
        src = self.stages[0]
        n, c = src.shape
        return Image(0, None, 0, (src.new_empty((b, capacity, n)), src.new_empty((b, capacity, c))), [], None)

    # -- attention -------------------------------------------------------------------------

    def scores(self, x: Image, w, proj, with_pos: bool):
        """B x H x T x N: w_h[t] . (W_h (X_n [+ pos_n]) + b_h) for per-head vectors w (B x H x T x c)
        and a projection (weight H*c x C)."""
        import torch

        b, h, t, c = w.shape
        n, ch = self.stages[0].shape
        wh = w.permute(1, 0, 2, 3).reshape(h, b * t, c)

        def shared_part(with_s: bool, with_p: bool):
            def make():
                m = (self.S(x.stage) if with_s else 0) + (self.pos if with_p else 0)
                return torch.addmm(proj.bias, m, proj.weight.T).T.reshape(h, c, n).contiguous()

            return self.get(("p", x.stage, id(proj), with_s, with_p), make)

        def head_major(m):  # H x c x N shared -> B x H x T x N view
            return (wh @ m).view(h, b, t, n).permute(1, 0, 2, 3)

        if x.R.shape[1]:
            ww = (w @ proj.weight.view(h, c, ch)).reshape(b, h * t, ch)  # B x HT x C
            out = torch.bmm(ww @ x.U.transpose(1, 2), x.R).view(b, h, t, n)
        else:
            out = w.new_zeros((b, h, t, n))
        if x.s is None:
            out += head_major(shared_part(True, with_pos))
        else:
            # the bias goes with the unscaled part (the position encoding's, or alone)
            s_part = self.get(
                ("p0", x.stage, id(proj)), lambda: (self.S(x.stage) @ proj.weight.T).T.reshape(h, c, n).contiguous()
            )
            out.addcmul_(head_major(s_part), x.s.view(b, 1, 1, n))
            if with_pos:
                out += head_major(shared_part(False, True))
            else:
                out += (w * proj.bias.view(h, 1, c)).sum(-1, keepdim=True)
        return out

    def tokens_to_image(self, x: Image, mod, qt):
        """``Attention(q=qt, k=X + pos, v=X)``: the prompts' tokens (B x T x C) read their image."""
        import torch

        h = mod.num_heads
        b, t, _ = qt.shape
        n = self.stages[0].shape[0]
        q = _heads(mod.q_proj(qt), h)
        c = q.shape[-1]
        a = self.scores(x, q / math.sqrt(c), mod.k_proj, True).view(b, h * t, n).softmax(dim=-1)
        sv = self.get(
            ("v", x.stage, id(mod.v_proj)),
            lambda: (self.S(x.stage) @ mod.v_proj.weight.T).view(n, h, c).permute(1, 0, 2).contiguous(),
        )
        aw = a.view(b, h, t, n)
        if x.s is not None:
            aw = aw * x.s.view(b, 1, 1, n)
        o = (aw.permute(1, 0, 2, 3).reshape(h, b * t, n) @ sv).view(h, b, t, c).permute(1, 0, 2, 3)
        if x.R.shape[1]:
            au = torch.bmm(torch.bmm(a, x.R.transpose(1, 2)), x.U)  # B x HT x C
            wv = mod.v_proj.weight.view(h, c, -1).transpose(-1, -2)  # H x C x c
            o = o + au.view(b, h, t, -1) @ wv
        o = o + mod.v_proj.bias.view(h, 1, c)
        return mod.out_proj(o.transpose(1, 2).reshape(b, t, h * c))

    def image_to_tokens(self, x: Image, mod, kt, vt) -> Image:
        """X + ``Attention(q=X + pos, k=kt, v=vt)``: the image reads the prompts' tokens; the update
        is appended as H*T rows (and the output bias to the all-ones row)."""
        import torch

        h = mod.num_heads
        b, t, _ = kt.shape
        n = self.stages[0].shape[0]
        k = _heads(mod.k_proj(kt), h)
        v = _heads(mod.v_proj(vt), h)
        c = k.shape[-1]
        a = self.scores(x, k / math.sqrt(c), mod.q_proj, True).softmax(dim=2)  # over the tokens
        wo = mod.out_proj.weight  # C x H*c
        m = wo.view(wo.shape[0], h, c).permute(1, 2, 0)  # H x c x C
        k0 = x.rows
        r_new, u_new = x.grow(h * t)
        r_new.copy_(a.view(b, h * t, n))
        torch.matmul(v, m, out=u_new.view(b, h, t, -1))
        blocks = [*x.blocks, ("attn", k0, k0 + h * t, v, m, id(mod))]
        return _with_bias(Image(x.stage, x.s, k0 + h * t, x.bufs, blocks, x.ones), mod.out_proj.bias)

    # -- LayerNorm -------------------------------------------------------------------------

    def layer_norm(self, x: Image, norm) -> Image:
        """``norm(X)`` in the same form: the variance from the shared rows' statistics, the K rows'
        Gram matrix and their cross products with S; then S -> centred S * gain (shared), every
        row centred and scaled by the gain, R and s scaled by 1/std, and the bias an all-ones row."""

        S = self.S(x.stage)
        n, ch = S.shape
        sc, sc2 = self.get(("ln", x.stage), lambda: _centred(S))
        R, U = x.R, x.U
        uc = U.sub_(U.mean(-1, keepdim=True))  # the rows centred (in place: they are not read again)
        # |X_n - mean|^2 = s^2 |S_c,n|^2 + 2 s R_n . cross_n + R_n^T G R_n, in one product and one dot
        cross = self._cross(x, sc)  # B x K x N: S_c . U_k per position
        if x.s is not None:
            cross.mul_(x.s.unsqueeze(1))
        var = cross.baddbmm_(uc @ uc.transpose(1, 2), R, beta=2).mul_(R).sum(1)
        var = var.add_(sc2) if x.s is None else var.addcmul_(x.s.square(), sc2)
        r = var.div_(ch).add_(norm.eps).rsqrt_()
        if len(self.stages) == x.stage + 1:
            self.stages.append(sc * norm.weight)
        g = norm.weight
        s = r if x.s is None else r * x.s
        R.mul_(r.unsqueeze(1))
        U.mul_(g)
        r_new, u_new = x.grow(1)
        r_new.fill_(1.0)
        u_new.copy_(norm.bias.expand(len(r), 1, -1))
        blocks = []
        for blk in x.blocks:
            if blk[0] == "attn":
                kind, k0, k1, v, m, origin = blk
                blocks.append((kind, k0, k1, v, (m - m.mean(-1, keepdim=True)) * g, origin))
            else:
                blocks.append(("const", blk[1], (blk[2] - blk[2].mean()) * g, blk[3]))
        blocks.append(("const", x.rows, norm.bias, ("ln", id(norm))))
        return Image(x.stage + 1, s, x.rows + 1, x.bufs, blocks, x.rows)

    def _cross(self, x: Image, sc):
        """B x K x N: S_c . U_k at every position, through each block's factors (c-wide per prompt)."""

        b, k, _ = x.R.shape
        n = sc.shape[0]
        out = x.R.new_empty((b, k, n))
        for blk in x.blocks:
            if blk[0] == "attn":
                _, k0, k1, v, m, origin = blk
                h, c, _ = m.shape
                t = v.shape[2]
                sm = self.get(("x", x.stage, origin), lambda m=m, h=h, c=c: (m.reshape(h * c, -1) @ sc.T).view(h, c, n))
                vh = v.permute(1, 0, 2, 3).reshape(h, b * t, c)
                out[:, k0:k1] = (vh @ sm).view(h, b, t, n).permute(1, 0, 2, 3).reshape(b, h * t, n)
            else:
                _, row, vec, origin = blk
                out[:, row] = self.get(("xc", x.stage, origin), lambda vec=vec: sc @ vec)
        return out


def _with_bias(x: Image, bias) -> Image:
    """X + bias (the same at every position): added to the all-ones row, made if there is none."""

    if x.ones is None:
        r_new, u_new = x.grow(1)
        r_new.fill_(1.0)
        u_new.copy_(bias.expand(len(u_new), 1, -1))
        blocks = [*x.blocks, ("const", x.rows, bias, ("bias", id(bias)))]
        return Image(x.stage, x.s, x.rows + 1, x.bufs, blocks, x.rows)
    x.U[:, x.ones] += bias
    blocks = []
    for blk in x.blocks:
        if blk[0] == "const" and blk[1] == x.ones:
            blk = ("const", blk[1], blk[2] + bias, (blk[3], id(bias)))
        blocks.append(blk)
    return Image(x.stage, x.s, x.rows, x.bufs, blocks, x.ones)


def _centred(S):
    sc = S - S.mean(-1, keepdim=True)
    return sc, sc.square().sum(-1)


def _heads(x, n):
    b, t, c = x.shape
    return x.reshape(b, t, n, c // n).transpose(1, 2)
