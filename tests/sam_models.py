"""Randomly initialised HQ-SAM and SAM 2 models for the tests: toy-sized ones built from each package's own
modules (fast enough for contract checks), and the smallest official architectures saved in the official
checkpoint formats (what a user's downloaded file holds), for runs through ``xaibench run``."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from xaibench_plugins.sam import Sam2Segmenter, SamHqSegmenter


def tiny_sam_hq(img_size: int = 64, dim: int = 32):
    """HQ-SAM's architecture at toy size: one global-attention ViT block, a two-layer decoder with the HQ
    token (fixed seed, global RNG untouched)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", FutureWarning)
        from segment_anything_hq.modeling import ImageEncoderViT, MaskDecoderHQ, PromptEncoder, Sam, TwoWayTransformer

    grid = img_size // 16
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Sam(
            image_encoder=ImageEncoderViT(img_size=img_size, patch_size=16, embed_dim=dim, depth=1, num_heads=2,
                                          out_chans=dim, global_attn_indexes=(0,)),
            prompt_encoder=PromptEncoder(embed_dim=dim, image_embedding_size=(grid, grid),
                                         input_image_size=(img_size, img_size), mask_in_chans=4),
            mask_decoder=MaskDecoderHQ(transformer_dim=dim, num_multimask_outputs=3, iou_head_depth=2,
                                       iou_head_hidden_dim=16, vit_dim=dim,
                                       transformer=TwoWayTransformer(depth=1, embedding_dim=dim, num_heads=2,
                                                                     mlp_dim=64)),
        )
    return model.eval()


# SAM 2's image predictor fixes the input at 1024 pixels; a Hiera of width 8 and a 32-wide neck and decoder keep
# it cheap
TINY_HIERA = [
    "++model.image_encoder.trunk.embed_dim=8",
    "++model.image_encoder.trunk.stages=[1,1,2,1]",
    "++model.image_encoder.trunk.global_att_blocks=[3]",
    "++model.image_encoder.neck.backbone_channel_list=[64,32,16,8]",
    "++model.image_encoder.neck.d_model=32",
    "++model.image_encoder.neck.position_encoding.num_pos_feats=32",
    "++model.memory_attention.d_model=32",
    "++model.memory_attention.num_layers=1",
    "++model.memory_attention.layer.d_model=32",
    "++model.memory_attention.layer.dim_feedforward=64",
    "++model.memory_attention.layer.self_attention.embedding_dim=32",
    "++model.memory_attention.layer.cross_attention.embedding_dim=32",
]


def tiny_sam2():
    """SAM 2.1's architecture with a toy Hiera trunk (fixed seed, global RNG untouched)."""
    from sam2.build_sam import build_sam2

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build_sam2(Sam2Segmenter().config(), None, device="cpu", hydra_overrides_extra=TINY_HIERA).eval()


class Counting:
    """Mixin for a segmenter test double: counts model builds and image encodings."""

    def _count(self, model, encoder):
        self.builds = getattr(self, "builds", 0) + 1
        self.encodings = 0
        encoder.register_forward_hook(lambda *_: setattr(self, "encodings", self.encodings + 1))
        return model


class TinySamHq(Counting, SamHqSegmenter):
    def __init__(self, **params):
        super().__init__(**{"device": "cpu", **params})

    def _build_model(self):
        model = tiny_sam_hq()
        return self._count(model, model.image_encoder)


class TinySam2(Counting, Sam2Segmenter):
    def __init__(self, **params):
        super().__init__(**{"device": "cpu", **params})

    def _build_model(self):
        model = tiny_sam2()
        return self._count(model, model.image_encoder)


def official_checkpoint(family: str, path: Path, **params) -> Path:
    """Write the smallest official architecture of ``family`` ("sam-hq": vit_tiny, "sam2": hiera_tiny of
    ``params``' version, 2.1 by default), randomly initialised, in its official checkpoint format: HQ-SAM's
    a bare state dict, SAM 2's ``{"model": state dict}``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if family == "sam-hq":
            model = SamHqSegmenter(model_type="vit_tiny")._architecture()
            torch.save(model.state_dict(), path)
        else:
            model = Sam2Segmenter(model="hiera_tiny", **params)._architecture()
            torch.save({"model": model.state_dict()}, path)
    return path
