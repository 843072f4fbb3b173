"""SAM 2 prompt encoder + mask decoder on our Hiera backbone: equivalence with sam2's image predictor, loading,
real-size construction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vadapt.backbones import BACKBONES, create_backbone
from vadapt.backbones.sam2 import Sam2PromptParts, _sam2_config_dir, build_sam2_prompt_decoder
from vadapt.weights import WeightsMismatchError, WeightsNotFoundError

IMG = 128  # tiny SAM 2: 128 px input, 8 x 8 embedding grid
DIM = 32  # the sam2_test neck's d_model


def _tiny_sam2_base() -> torch.nn.Module:
    """A full ``SAM2Base`` from ``sam2.1_hiera_t.yaml`` with the ``sam2_test`` image encoder, memory parts
    shrunk to width 32 and ``image_size`` 128 (the SAM heads keep the config's options)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(_sam2_config_dir() / "sam2.1/sam2.1_hiera_t.yaml").model
    attn = {"embedding_dim": DIM, "feat_sizes": [IMG // 16, IMG // 16]}
    cfg = OmegaConf.merge(cfg, OmegaConf.create({
        "image_encoder": BACKBONES.get("sam2_test").kwargs["overrides"],
        "image_size": IMG,
        "memory_attention": {"d_model": DIM, "num_layers": 1, "layer": {
            "d_model": DIM, "dim_feedforward": 64, "self_attention": attn,
            "cross_attention": {**attn, "kv_in_dim": DIM}}},
        "memory_encoder": {"out_dim": DIM, "in_dim": DIM, "position_encoding": {"num_pos_feats": DIM},
                           "mask_downsampler": {"embed_dim": DIM}, "fuser": {"num_layers": 1, "layer": {"dim": DIM}}},
    }))
    OmegaConf.update(cfg, "image_encoder.neck.position_encoding.warmup_cache", False, force_add=True)
    model = instantiate(cfg, _convert_="all")
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():  # move every parameter off its init (zeros, ones) so nothing hides a mix-up
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return model.eval()


@pytest.fixture(scope="module")
def sam2_file(tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    model = _tiny_sam2_base()
    path = tmp_path_factory.mktemp("sam2") / "tiny_sam2.pt"
    torch.save({"model": model.state_dict()}, path)
    return model, path


@pytest.fixture(scope="module")
def ours(sam2_file):
    _, path = sam2_file
    backbone = create_backbone("sam2_test", weights=str(path)).eval()
    parts = build_sam2_prompt_decoder(backbone, str(path), img_size=IMG).eval()
    return backbone, parts


def _image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (IMG, IMG, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def predictor(sam2_file):
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    model, _ = sam2_file
    pred = SAM2ImagePredictor(model)
    g = IMG // 16
    pred._bb_feat_sizes = [(4 * g, 4 * g), (2 * g, 2 * g), (g, g)]  # upstream hard-codes the 1024 px sizes
    pred.set_image(_image())
    return pred


def test_parts_structure(ours):
    from sam2.modeling.sam.mask_decoder import MaskDecoder
    from sam2.modeling.sam.prompt_encoder import PromptEncoder

    _, parts = ours
    assert isinstance(parts, Sam2PromptParts)
    assert isinstance(parts.prompt_encoder, PromptEncoder) and isinstance(parts.mask_decoder, MaskDecoder)
    assert isinstance(parts.no_mem_embed, torch.nn.Parameter) and parts.no_mem_embed.shape == (1, 1, DIM)
    assert parts.prompt_encoder.image_embedding_size == (IMG // 16, IMG // 16)
    assert parts.prompt_encoder.input_image_size == (IMG, IMG)
    # sam2.1_hiera_t.yaml options
    dec = parts.mask_decoder
    assert parts.use_high_res_features and dec.use_high_res_features and dec.pred_obj_scores
    assert dec.use_multimask_token_for_obj_ptr and dec.iou_prediction_head.sigmoid_output


def test_image_features_match_set_image(ours, predictor):
    backbone, parts = ours
    x = predictor._transforms(_image())[None]  # the normalised (1, 3, 128, 128) input set_image used
    with torch.no_grad():
        embedding, high_res = parts.image_features(backbone(x))
    torch.testing.assert_close(embedding, predictor._features["image_embed"], atol=1e-5, rtol=1e-5)
    assert high_res is not None and len(high_res) == 2
    for a, b in zip(high_res, predictor._features["high_res_feats"]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert [tuple(h.shape) for h in high_res] == [(1, DIM // 8, 32, 32), (1, DIM // 4, 16, 16)]


PROMPTS = {
    "one_point_multi": ([[40.0, 70.0]], [1], None, True),
    "points_single": ([[40.0, 70.0], [100.5, 12.0], [64.0, 64.0]], [1, 0, 1], None, False),
    "box_multi": (None, None, [10.0, 20.0, 90.0, 110.0], True),
    "box_points_single": ([[50.0, 60.0], [5.0, 120.0]], [1, 0], [10.0, 20.0, 90.0, 110.0], False),
}


@pytest.mark.parametrize("case", list(PROMPTS))
def test_decode_matches_predictor(ours, predictor, case):
    coords, labels, box, multimask = PROMPTS[case]
    backbone, parts = ours
    x = predictor._transforms(_image())[None]
    points = None if coords is None else (torch.tensor([coords]), torch.tensor([labels]))
    boxes = None if box is None else torch.tensor([box])
    with torch.no_grad():
        logits, iou = parts.decode(*parts.image_features(backbone(x)), points=points, boxes=boxes,
                                   multimask_output=multimask)
    _, ref_iou, ref_logits = predictor.predict(
        point_coords=None if coords is None else np.array(coords), point_labels=labels,
        box=None if box is None else np.array(box), multimask_output=multimask, return_logits=True,
    )  # numpy, batch dim dropped; low-res logits clamped to [-32, 32]
    m = 3 if multimask else 1
    assert logits.shape == (1, m, IMG // 4, IMG // 4) and iou.shape == (1, m)
    torch.testing.assert_close(logits[0].clamp(-32, 32), torch.from_numpy(ref_logits), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(iou[0], torch.from_numpy(ref_iou), atol=1e-5, rtol=1e-5)


def test_decode_dynamic_multimask_matches(sam2_file, ours, predictor):
    """build_sam2's default post-processing (dynamic fall-back to the best multimask) via the extra args."""
    model, path = sam2_file
    backbone, _ = ours
    extra = {"dynamic_multimask_via_stability": True, "dynamic_multimask_stability_delta": 0.05,
             "dynamic_multimask_stability_thresh": 0.98}
    parts = build_sam2_prompt_decoder(backbone, str(path), img_size=IMG, mask_decoder_extra_args=extra).eval()
    x = predictor._transforms(_image())[None]
    points = (torch.tensor([[[30.0, 90.0]]]), torch.tensor([[1]]))
    with torch.no_grad():
        logits, iou = parts.decode(*parts.image_features(backbone(x)), points=points, multimask_output=False)
    dec = model.sam_mask_decoder
    saved = {k: getattr(dec, k) for k in extra}
    try:
        for k, v in extra.items():
            setattr(dec, k, v)
        _, ref_iou, ref_logits = predictor.predict(point_coords=np.array([[30.0, 90.0]]), point_labels=[1],
                                                   multimask_output=False, return_logits=True)
    finally:
        for k, v in saved.items():
            setattr(dec, k, v)
    torch.testing.assert_close(logits[0].clamp(-32, 32), torch.from_numpy(ref_logits), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(iou[0], torch.from_numpy(ref_iou), atol=1e-5, rtol=1e-5)
    # the random model's single-mask token is unstable, so the fall-back really changed the output
    with torch.no_grad():
        plain, _ = ours[1].decode(*ours[1].image_features(backbone(x)), points=points, multimask_output=False)
    assert not torch.allclose(plain, logits, atol=1e-3)


def test_decode_rejects_wrong_grid(ours):
    _, parts = ours
    with pytest.raises(ValueError, match="grid"):
        parts.decode(torch.zeros(1, DIM, 4, 4), None, points=(torch.zeros(1, 1, 2), torch.ones(1, 1)))


# ---- loading ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("drop", ["no_mem_embed", "sam_mask_decoder.iou_token.weight",
                                  "sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"])
def test_missing_key_is_named(sam2_file, tmp_path, drop):
    model, _ = sam2_file
    backbone = create_backbone("sam2_test")
    sd = {k: v for k, v in model.state_dict().items() if k != drop}
    path = tmp_path / "partial.pt"
    torch.save({"model": sd}, path)
    with pytest.raises(WeightsMismatchError, match=drop.replace(".", r"\.")):
        build_sam2_prompt_decoder(backbone, str(path), img_size=IMG)


def test_wrong_shape_and_unexpected_keys(sam2_file, tmp_path):
    model, _ = sam2_file
    backbone = create_backbone("sam2_test")
    sd = dict(model.state_dict())
    sd["sam_mask_decoder.extra.weight"] = torch.zeros(1)
    path = tmp_path / "extra.pt"
    torch.save({"model": sd}, path)
    with pytest.raises(WeightsMismatchError, match=r"sam_mask_decoder\.extra\.weight"):
        build_sam2_prompt_decoder(backbone, str(path), img_size=IMG)
    sd = dict(model.state_dict())
    sd["no_mem_embed"] = torch.zeros(1, 1, DIM + 1)
    torch.save({"model": sd}, path)
    with pytest.raises(WeightsMismatchError, match="no_mem_embed"):
        build_sam2_prompt_decoder(backbone, str(path), img_size=IMG)


def test_loaded_values_and_random_init(sam2_file, ours):
    model, _ = sam2_file
    _, parts = ours
    torch.testing.assert_close(parts.no_mem_embed, model.no_mem_embed)
    torch.testing.assert_close(parts.mask_decoder.state_dict(), model.sam_mask_decoder.state_dict())
    torch.testing.assert_close(parts.prompt_encoder.state_dict(), model.sam_prompt_encoder.state_dict())

    backbone = create_backbone("sam2_test")
    fresh = build_sam2_prompt_decoder(backbone, None, img_size=64)
    assert fresh.prompt_encoder.image_embedding_size == (4, 4)
    assert not torch.equal(fresh.no_mem_embed, model.no_mem_embed)
    assert fresh.no_mem_embed.abs().max() > 0  # trunc-normal init, as SAM2Base
    with pytest.raises(WeightsNotFoundError):
        build_sam2_prompt_decoder(backbone, "pretrained")  # the tiny variant has no published weights
    with pytest.raises(ValueError, match="multiple"):
        build_sam2_prompt_decoder(backbone, None, img_size=100)


# ---- real sizes -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sam2.1_hiera_b+", "sam2_hiera_l"])
def test_real_size_matches_sam2base_heads(name, monkeypatch):
    """Built on the meta device; the reference is sam2's own SAM2Base from the same config."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    # Hiera computes its drop-path rates with torch.linspace(...).item(), impossible on meta: keep it on CPU
    linspace = torch.linspace
    monkeypatch.setattr(torch, "linspace", lambda *a, **k: linspace(*a, **{**k, "device": "cpu"}))
    config = BACKBONES.get(name).kwargs["config"]
    with torch.device("meta"):
        cfg = OmegaConf.load(_sam2_config_dir() / config).model
        OmegaConf.update(cfg, "image_encoder.neck.position_encoding.warmup_cache", False, force_add=True)
        ref = instantiate(cfg, _convert_="all")
        parts = build_sam2_prompt_decoder(create_backbone(name), img_size=1024)
    ref_sd = {f"{prefix}.{k}": v for prefix, mod in (("prompt_encoder", ref.sam_prompt_encoder),
                                                    ("mask_decoder", ref.sam_mask_decoder))
              for k, v in mod.state_dict().items()}
    ref_sd["no_mem_embed"] = ref.no_mem_embed
    ours_sd = parts.state_dict()
    assert {k: tuple(v.shape) for k, v in ours_sd.items()} == {k: tuple(v.shape) for k, v in ref_sd.items()}
    ref_count = sum(p.numel() for p in [*ref.sam_prompt_encoder.parameters(), *ref.sam_mask_decoder.parameters(),
                                        ref.no_mem_embed])
    assert sum(p.numel() for p in parts.parameters()) == ref_count
    assert parts.prompt_encoder.image_embedding_size == (64, 64)
    assert parts.mask_decoder.use_high_res_features and parts.no_mem_embed.shape == (1, 1, 256)
