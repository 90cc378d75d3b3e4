"""CLIP's text tower without torch, so a cold ``segsearch search "red car"`` answers in a second.

Importing torch costs ~3.5 s and ~650 MB on a 2-core laptop, open_clip and torchvision ~3 s more:
more than a whole query should. A text query needs only CLIP's text tower (a small causal
transformer) and its BPE tokenizer. So whenever CLIP is loaded with torch (``segsearch index``, a
server), its text tower is exported once into the data directory:

    <data>/text-tower/<clip fingerprint>/
        meta.json          architecture, token ids, the fingerprint it belongs to
        tokenizer.json     open_clip's BPE for HF ``tokenizers`` (vocab + merges, CLIP's split)
        *.npy              float32 weights, memory-mapped when read (only the query's token rows
                           of the embedding table are touched)

and a process that has not imported torch encodes text with NumPy from it (``TextTower``). The
export is checked against torch on sample texts before it is kept (cosine ≥ ``AGREE``): a model
whose text side is something else (SigLIP, a non-causal tower, another tokenizer) keeps the torch
path. Because the mask is causal and the pooled token is the end-of-text token, only the tokens up
to it are computed (a 3-word query: 5 of 77 positions).
"""

from __future__ import annotations

import html
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np

log = logging.getLogger("segsearch.models")
FORMAT = 1
FOLDER = "text-tower"
AGREE = 0.9999  # cosine between NumPy's and torch's vectors on every sample text, or no export
SAMPLES = ["red car", "a photo of a dog on the beach", "", "Café & 3 pizzas!!", "word " * 100]
# CLIP's pre-tokenization (open_clip.tokenizer.SimpleTokenizer.pat, less its special tokens)
SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def folder(data: Path, fingerprint: str) -> Path:
    return Path(data) / FOLDER / fingerprint[:32]


def _clean(text: str) -> str:
    """open_clip's default cleaning ("lower"): ftfy, HTML entities twice, whitespace, lower case."""
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).lower()


def _tokenizer_json(tokenizer) -> str:
    """open_clip's SimpleTokenizer as an HF ``tokenizers`` pipeline (what ``transformers``'
    CLIPConverter builds): the same vocabulary, merges, split and byte mapping."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    merges = [pair for pair, _ in sorted(tokenizer.bpe_ranks.items(), key=lambda kv: kv[1])]
    bpe = models.BPE(vocab=dict(tokenizer.encoder), merges=merges, end_of_word_suffix="</w>", fuse_unk=False)
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    return tok.to_str()


def _erf(x: np.ndarray) -> np.ndarray:
    """erf to ~1.2e-7 (Numerical Recipes' erfc Chebyshev fit): exact GELU without scipy."""
    z = np.abs(x)
    t = 1.0 / (1.0 + 0.5 * z)
    poly = -z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (-0.18628806 + t * (
        0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))))))))  # fmt: skip
    r = 1.0 - t * np.exp(poly)
    return np.where(x >= 0, r, -r).astype(x.dtype)


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


class TextTower:
    """Text -> L2-normalised CLIP vectors with NumPy, from an export (``export``)."""

    def __init__(self, path: Path):
        from tokenizers import Tokenizer

        self.path = Path(path)
        self.meta = json.loads((self.path / "meta.json").read_text())
        self.tokenizer = Tokenizer.from_file(str(self.path / "tokenizer.json"))
        self.w = {p.stem: np.load(p, mmap_mode="r") for p in self.path.glob("*.npy")}
        self.dim = int(self.meta["dim"])

    @classmethod
    def open(cls, data: Path, fingerprint: str) -> TextTower | None:
        """The export for this CLIP fingerprint, or None (none yet, another format, unreadable)."""
        path = folder(data, fingerprint)
        try:
            meta = json.loads((path / "meta.json").read_text())
            if meta.get("format") != FORMAT or meta.get("fingerprint") != fingerprint:
                return None
            return cls(path)
        except (OSError, ValueError, ImportError) as exc:
            if not isinstance(exc, FileNotFoundError):
                log.debug("text tower at %s not used: %s", path, exc)
            return None

    def tokens(self, text: str) -> list[int]:
        m = self.meta
        ids = [m["sot"], *self.tokenizer.encode(_clean(text), add_special_tokens=False).ids, m["eot"]]
        if len(ids) > m["context_length"]:  # open_clip's truncation: cut, and end with end-of-text
            ids = ids[: m["context_length"]]
            ids[-1] = m["eot"]
        return ids

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, text in enumerate(texts):
            v = self._encode(self.tokens(text))
            out[i] = v / max(float(np.linalg.norm(v)), 1e-12)
        return out

    def _encode(self, ids: list[int]) -> np.ndarray:
        m, w = self.meta, self.w
        n = len(ids)  # causal: the end-of-text token (the last) sees only these
        x = np.asarray(w["token_embedding.weight"][ids], np.float32) + w["positional_embedding"][:n]
        heads, eps = m["heads"], m["eps"]
        mask = np.triu(np.full((n, n), -np.inf, np.float32), 1)
        for i in range(m["layers"]):
            p = f"l{i}."
            h = _layer_norm(x, w[p + "ln_1.weight"], w[p + "ln_1.bias"], eps)
            qkv = h @ w[p + "attn.in_proj_weight"].T + w[p + "attn.in_proj_bias"]
            q, k, v = (a.reshape(n, heads, -1).transpose(1, 0, 2) for a in np.split(qkv, 3, axis=-1))
            att = q @ k.transpose(0, 2, 1) / np.sqrt(q.shape[-1]) + mask
            att = np.exp(att - att.max(-1, keepdims=True))
            att /= att.sum(-1, keepdims=True)
            o = (att @ v).transpose(1, 0, 2).reshape(n, -1)
            x = x + o @ w[p + "attn.out_proj.weight"].T + w[p + "attn.out_proj.bias"]
            h = _layer_norm(x, w[p + "ln_2.weight"], w[p + "ln_2.bias"], eps)
            h = h @ w[p + "mlp.c_fc.weight"].T + w[p + "mlp.c_fc.bias"]
            h = h * (1 / (1 + np.exp(-1.702 * h))) if m["quick_gelu"] else 0.5 * h * (1 + _erf(h / np.sqrt(2)))
            x = x + h @ w[p + "mlp.c_proj.weight"].T + w[p + "mlp.c_proj.bias"]
        pooled = _layer_norm(x[int(np.argmax(ids))], w["ln_final.weight"], w["ln_final.bias"], eps)
        return pooled @ w["text_projection"]


def _plain_causal_clip(model, tokenizer) -> str | None:
    """Why this open_clip model's text side is not the plain CLIP tower ``TextTower`` computes."""
    import torch

    blocks = getattr(getattr(model, "transformer", None), "resblocks", None)
    if type(model).__name__ != "CLIP" or blocks is None:
        return f"{type(model).__name__} is not open_clip's CLIP"
    if type(tokenizer).__name__ != "SimpleTokenizer" or getattr(tokenizer, "clean_fn", None) is None:
        return f"tokenizer {type(tokenizer).__name__}"
    if getattr(model, "text_pool_type", "argmax") != "argmax" or getattr(model, "attn_mask", None) is None:
        return "not causal with argmax pooling"
    if not isinstance(model.text_projection, torch.nn.Parameter):
        return "text projection is not a matrix"
    for b in blocks:
        if not isinstance(b.attn, torch.nn.MultiheadAttention) or not all(
            isinstance(getattr(b, n, torch.nn.Identity()), torch.nn.Identity) for n in ("ls_1", "ls_2", "ln_attn")
        ):
            return "attention block with extras"
    return None


def export(embedder, data: Path) -> Path | None:
    """Write ``embedder``'s text tower for ``TextTower`` (once per CLIP fingerprint), if it is
    one ``TextTower`` computes to ``AGREE`` on ``SAMPLES``. Never raises: a library that cannot
    take the export (read-only, another model) keeps answering through torch."""

    path = folder(data, embedder.fingerprint)
    if (path / "meta.json").is_file():
        return path
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        model, tokenizer = embedder.model, embedder.tokenizer
        why = _plain_causal_clip(model, tokenizer)
        if why:
            log.debug("CLIP %s keeps torch for text: %s", embedder.spec.name, why)
            return None
        gelu = type(model.transformer.resblocks[0].mlp.gelu).__name__
        meta = {
            "format": FORMAT,
            "fingerprint": embedder.fingerprint,
            "clip": embedder.spec.name,
            "dim": embedder.dim,
            "context_length": int(tokenizer.context_length),
            "sot": int(tokenizer.sot_token_id),
            "eot": int(tokenizer.eot_token_id),
            "layers": len(model.transformer.resblocks),
            "heads": int(model.transformer.resblocks[0].attn.num_heads),
            "eps": float(model.ln_final.eps),
            "quick_gelu": gelu == "QuickGELU",
        }
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / "tokenizer.json").write_text(_tokenizer_json(tokenizer))
        for k, v in model.state_dict().items():
            if k.startswith(("transformer.resblocks.", "token_embedding", "positional", "ln_final", "text_projection")):
                name = k.replace("transformer.resblocks.", "l")
                np.save(tmp / f"{name}.npy", v.detach().float().cpu().numpy())
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        ours = TextTower(tmp).embed_texts(SAMPLES)
        theirs = embedder.embed_texts(SAMPLES)
        agree = float(np.min(np.sum(ours * theirs, axis=1)))
        if agree < AGREE:
            log.warning(
                "CLIP %s: NumPy text tower disagrees with torch (cosine %.5f); not used", embedder.spec.name, agree
            )
            shutil.rmtree(tmp, ignore_errors=True)
            return None
        os.replace(tmp, path)
        log.debug("CLIP %s text tower exported to %s (cosine to torch ≥ %.6f)", embedder.spec.name, path, agree)
        return path
    except Exception as exc:  # noqa: BLE001 - an optimisation: never fail a run for it
        log.debug("CLIP text tower not exported to %s: %s", path, exc)
        shutil.rmtree(tmp, ignore_errors=True)
        return None
