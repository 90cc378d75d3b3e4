"""The models segsearch knows by name: Meta's SAM 1 and SAM 2.1 releases, the CLIP models users
pick, and the small ones this repo trains on the shapes world (training/). Pure data, registered in
:mod:`segsearch.models.registry` on import, as segment_anything's ``sam_model_registry`` and
open_clip's pretrained tags list theirs."""

from __future__ import annotations

from segsearch.models.hub import HubWeights
from segsearch.models.registry import ClipSpec, SamSpec, Weights, register_clip, register_sam, sam_config

# --- official checkpoints -------------------------------------------------------------------
_SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
# Cost: image-encoder compute relative to ViT-B (the decoder is the same for all three).
for _name, _arch, _file, _sha, _size, _params, _cost in [
    (
        "sam-vit-b",
        "vit_b",
        "sam_vit_b_01ec64.pth",
        "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
        375_042_383,
        "91M",
        "1x",
    ),
    (
        "sam-vit-l",
        "vit_l",
        "sam_vit_l_0b3195.pth",
        "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
        1_249_524_607,
        "308M",
        "3x",
    ),
    (
        "sam-vit-h",
        "vit_h",
        "sam_vit_h_4b8939.pth",
        "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
        2_564_550_879,
        "636M",
        "6x",
    ),
]:
    register_sam(
        SamSpec(
            _name,
            sam_config(_arch),
            Weights(_file, _sha, _SAM_URL + _file, _size),
            f"Segment Anything {_arch} (Meta, {_params} params)",
            licence="Apache-2.0",
            cost=_cost,
        )
    )

# SAM 2.1 (Meta, 2024-09-28 release). Meta publishes no SHA-256 for these files and we found no public
# record of one, so they are trust on first use: the Hugging Face copy (Meta's own `facebook` org) is
# fetched with the hub machinery, its commit and hash recorded at the first download; Meta's URL is
# listed as the mirror. Cost: image-encoder time relative to SAM ViT-B at 1024 px, measured on a CPU
# (bench/RESULTS.md, 2026-11-29).
_SAM2_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/"
for _name, _cfg, _file, _params, _cost in [
    ("sam2.1-hiera-tiny", "t", "sam2.1_hiera_tiny.pt", "38.9M", "0.3x"),
    ("sam2.1-hiera-small", "s", "sam2.1_hiera_small.pt", "46M", "0.4x"),
    ("sam2.1-hiera-base-plus", "b+", "sam2.1_hiera_base_plus.pt", "80.8M", "0.75x"),
    ("sam2.1-hiera-large", "l", "sam2.1_hiera_large.pt", "224.4M", "2x"),
]:
    register_sam(
        SamSpec(
            _name,
            {"family": "sam2", "yaml": f"sam2:configs/sam2.1/sam2.1_hiera_{_cfg}.yaml", "image_size": 1024},
            HubWeights(f"facebook/{_name}", _file),
            f"Segment Anything 2.1 Hiera-{_cfg.upper()} (Meta, {_params} params)",
            licence="Apache-2.0",
            cost=_cost,
            family="sam2",
            mirror=_SAM2_URL + _file,
        )
    )

# EfficientViT-SAM (MIT Han Lab, Apache-2.0): SAM's prompt encoder and mask decoder behind an EfficientViT
# image encoder (segsearch.models.efficientvit), for CPUs. Weights on the lab's Hugging Face repo; no
# SHA-256 is published, so trust on first use. COCO box-prompted mAP from the lab's model card (ViTDet
# boxes; SAM-ViT-H: 46.5). Cost: image-encoder time relative to SAM ViT-B, measured on a 2-core CPU at
# SAM's 1024 px frame (bench/RESULTS.md, 2026-12-07 night).
for _name, _params, _map, _cost in [
    ("efficientvit-sam-l0", "34.8M", "45.7", "0.07x"),
    ("efficientvit-sam-l1", "47.7M", "46.2", "0.1x"),
    ("efficientvit-sam-l2", "61.3M", "46.6", "0.12x"),
    ("efficientvit-sam-xl0", "117.0M", "47.5", "0.43x"),
    ("efficientvit-sam-xl1", "203.3M", "47.8", "0.58x"),
]:
    register_sam(
        SamSpec(
            _name,
            sam_config("vit_b", encoder=_name, image_size=1024),
            HubWeights("mit-han-lab/efficientvit-sam", _name.replace("-", "_") + ".pt"),
            f"EfficientViT-SAM {_name.rsplit('-', 1)[1].upper()} (MIT Han Lab, {_params} params, COCO mAP {_map})",
            licence="Apache-2.0",
            cost=_cost,
        )
    )

# CLIP models users pick in 2026, from the Hugging Face Hub (open_clip 3.x fetches its `openai` tags there
# too: OpenAI's CDN answers 404 since 2025-10). OpenAI weights need QuickGELU (the `-quickgelu` configs).
# Pinned where a public source shows the commit and the file's SHA-256; otherwise trust on first use
# (segsearch.models.hub), and `models list` says so. Cost: image-encoder compute relative to ViT-B/32.
# clip-vit-b-32's pin: revision a6f597a3… and open_clip_model.safetensors 605,143,284 bytes,
# SHA-256 e6d1bd77…, as several public projects record them (HfApi model_info + downloaded file).
for _name, _arch, _tag, _repo, _file, _rev, _sha, _size, _dim, _lic, _cost, _needs, _what in [
    (
        "clip-vit-b-32",
        "ViT-B-32-quickgelu",
        "openai",
        "timm/vit_base_patch32_clip_224.openai",
        "open_clip_model.safetensors",
        "a6f597a30f7b82c51704746581f9a4e41421e878",
        "e6d1bd7789aa45192b3bf90570a789b478bae1b74ebcce7eddd908e83a2b7c31",
        605_143_284,
        512,
        "MIT",
        "1x",
        "",
        "OpenAI CLIP ViT-B/32, QuickGELU",
    ),
    (
        "clip-vit-b-16",
        "ViT-B-16-quickgelu",
        "openai",
        "timm/vit_base_patch16_clip_224.openai",
        "open_clip_model.safetensors",
        None,
        None,
        None,
        512,
        "MIT",
        "4x",
        "",
        "OpenAI CLIP ViT-B/16, QuickGELU",
    ),
    (
        "clip-vit-l-14",
        "ViT-L-14-quickgelu",
        "openai",
        "timm/vit_large_patch14_clip_224.openai",
        "open_clip_model.safetensors",
        None,
        None,
        None,
        768,
        "MIT",
        "18x",
        "",
        "OpenAI CLIP ViT-L/14, QuickGELU",
    ),
    (
        "siglip2-vit-b-16",
        "ViT-B-16-SigLIP2",
        "webli",
        "timm/ViT-B-16-SigLIP2",
        "open_clip_model.safetensors",
        None,
        None,
        None,
        768,
        "Apache-2.0",
        "5x",
        "transformers, sentencepiece (its tokenizer)",
        "Google SigLIP 2 ViT-B/16 (WebLI)",
    ),
    (
        "datacomp-vit-l-14",
        "ViT-L-14",
        "datacomp_xl_s13b_b90k",
        "laion/CLIP-ViT-L-14-DataComp.XL-s13B-b90K",
        "open_clip_pytorch_model.bin",
        None,
        None,
        None,
        768,
        "MIT",
        "18x",
        "",
        "DataComp-XL CLIP ViT-L/14 (LAION)",
    ),
    (
        "pe-core-b-16",
        "PE-Core-B-16",
        "meta",
        "timm/PE-Core-B-16",
        "open_clip_model.safetensors",
        None,
        None,
        None,
        1024,
        "Apache-2.0",
        "4x",
        "",
        "Meta Perception Encoder PE-Core-B/16",
    ),
]:
    register_clip(
        ClipSpec(
            _name,
            _arch,
            HubWeights(_repo, _file, _rev, _sha, _size),
            quick_gelu=_arch.endswith("quickgelu"),
            pretrained_tag=_tag,
            dim=_dim,
            licence=_lic,
            cost=_cost,
            needs=_needs,
            description=f"{_what} (open_clip '{_arch}', '{_tag}')",
        )
    )


# --- bundled small models trained by this repo on the shapes world (training/) ------------------------
# Generator settings chosen for each on the shapes world's validation split (training/README.md);
# they run with these unless the user sets others. segsearch.eval.shapes.SHAPES_AMG is the first.
SAM_SHAPES_TINY_AMG = {
    "points_per_side": 16,
    "points_per_batch": 64,
    "pred_iou_thresh": 0.7,
    "stability_score_thresh": 0.6,
    "min_mask_region_area": 600,
}
# sam2-shapes-tiny (validation split, 15 scenes, mask recall@0.75 by predicted-IoU / stability
# filter): 0.5/0.5 0.765, 0.5/0.6 0.750, 0.7/0.6 0.676, 0.8/0.6 0.559, 0.5/0.8 0.559; a 32x32 grid 0.750
SAM2_SHAPES_TINY_AMG = {**SAM_SHAPES_TINY_AMG, "pred_iou_thresh": 0.5, "stability_score_thresh": 0.5}
SAM_SHAPES_TINY_CONFIG = sam_config(
    "vit_b",
    image_size=512,
    vit_patch_size=16,
    encoder_embed_dim=96,
    encoder_depth=4,
    encoder_num_heads=3,
    encoder_global_attn_indexes=[1, 3],
    encoder_window_size=5,
    prompt_embed_dim=64,
    decoder_depth=2,
    decoder_mlp_dim=256,
    decoder_num_heads=4,
    iou_head_hidden_dim=64,
)

SAM2_SHAPES_TINY_CONFIG = {
    "family": "sam2",
    "yaml": "segsearch:models/configs/sam2_shapes_tiny.yaml",
    "image_size": 512,  # (as in the YAML: the input side, for the request-size checks)
}

CLIP_SHAPES_TINY_CFG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 4, "width": 128, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}

register_sam(
    SamSpec(
        "sam-shapes-tiny",
        SAM_SHAPES_TINY_CONFIG,
        Weights("sam-shapes-tiny.pt", "c3bedf10ed0910889b6bed51d84adae52cc2928f972e2c4c593c8f2c71de68e3"),
        "bundled: tiny SAM trained on the shapes world (training/train_sam.py); knows only coloured shapes",
        licence="Apache-2.0",
        cost="0.002x",
        amg_defaults=SAM_SHAPES_TINY_AMG,
    )
)

register_sam(
    SamSpec(
        "sam2-shapes-tiny",
        SAM2_SHAPES_TINY_CONFIG,
        Weights("sam2-shapes-tiny.pt", "3feb6100e01337effb5c846ac540173501fdaaf211c2386c88c22f68140875eb"),
        "bundled: tiny SAM 2.1 (the sam2 package's classes) trained on the shapes world (training/train_sam2.py); "
        "knows only coloured shapes",
        licence="Apache-2.0",
        cost="0.004x",
        family="sam2",
        amg_defaults=SAM2_SHAPES_TINY_AMG,
    )
)

register_clip(
    ClipSpec(
        "clip-shapes-tiny",
        "segsearch-shapes-tiny",
        Weights("clip-shapes-tiny.pt", "7d1cee5ed18675027501c4824d91327750b971ce39c956bb12372e43f5c83320"),
        model_cfg=CLIP_SHAPES_TINY_CFG,
        description="bundled: tiny CLIP trained on shapes-world crops (training/train_clip.py); knows only coloured "
        "shapes",
        dim=64,
        licence="Apache-2.0",
        cost="0.01x",
    )
)
