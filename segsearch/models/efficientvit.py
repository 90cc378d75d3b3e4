"""EfficientViT-SAM's image encoder in front of SAM 1's prompt encoder and mask decoder.

EfficientViT-SAM (Zhang, Cai, Han, 2024; MIT Han Lab, Apache-2.0) keeps SAM's prompt encoder and
mask decoder and replaces the ViT image encoder with EfficientViT, distilled from SAM-ViT-H and then
trained end to end on SA-1B. The L models see the image at 512 px (the XL ones at 1024) and give
SAM's 256 x 64 x 64 embedding in SAM's 1024 px prompt frame. Built from the ``efficientsam``
package (PyPI, the lab's own code; ``pip install 'segsearch[efficientvit]'``), so a published
checkpoint (``image_encoder.backbone/neck/norm``, ``prompt_encoder``, ``mask_decoder``) loads into
segment_anything's ``Sam`` key for key, and every SAM 1 code path (the fast engine, the official
generator, the prompt segmenter) runs it unchanged.

One difference from the lab's own predictor: it resizes the photo to 512 px directly; here the
image is resized to SAM's 1024 px frame, normalised and padded as for SAM, and the encoder averages
each 2 x 2 block down to 512 px (the same pixels up to the resampling filter).
"""

from __future__ import annotations

# name -> the encoder's input side; the builder in efficientsam.models.efficientvit.sam is the name
# with underscores (efficientvit_sam_l0)
ENCODERS = {
    "efficientvit-sam-l0": 512,
    "efficientvit-sam-l1": 512,
    "efficientvit-sam-l2": 512,
    "efficientvit-sam-xl0": 1024,
    "efficientvit-sam-xl1": 1024,
}
NORM_EPS = 1e-6  # what the lab's model zoo sets on every norm of these models (set_norm_eps)


def efficientvit_encoder(name: str, frame: int = 1024):
    """The image encoder of EfficientViT-SAM ``name`` taking SAM's preprocessed ``frame`` px input."""
    import torch

    from segsearch.errors import ConfigError

    try:
        from efficientsam.models.efficientvit import sam as evsam
        from efficientsam.models.nn.norm import set_norm_eps
    except ImportError as exc:
        raise ConfigError(
            f"SAM model {name} needs the efficientsam package: pip install 'segsearch[efficientvit]' ({exc})"
        ) from exc
    if name not in ENCODERS:
        raise ConfigError(f"unknown EfficientViT-SAM encoder {name!r}; known: {', '.join(ENCODERS)}")
    side = ENCODERS[name]
    inner = getattr(evsam, name.replace("-", "_"))().image_encoder  # the lab's own modules (decoder rebuilt by us)
    set_norm_eps(inner, NORM_EPS)

    class EfficientViTEncoder(torch.nn.Module):
        """``EfficientViTSamImageEncoder`` with SAM's interface: ``img_size`` (the prompt frame) and
        an input in that frame, brought down to the encoder's own side by block averaging."""

        def __init__(self):
            super().__init__()
            self.backbone, self.neck, self.norm = inner.backbone, inner.neck, inner.norm
            self.img_size = frame
            self.side = side
            # sam_precision bf16 (segsearch.models.sam.set_precision): under autocast, as the lab's
            # modules expect (their resize and attention steps cast bf16 back to fp32 themselves)
            self.precision = "fp32"

        def forward(self, x):
            if x.shape[-1] != self.side:
                x = torch.nn.functional.avg_pool2d(x, x.shape[-1] // self.side)
            low = self.precision == "bf16"
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=low):
                return self.norm(self.neck(self.backbone(x))["sam_encoder"]).float()

    return EfficientViTEncoder()
