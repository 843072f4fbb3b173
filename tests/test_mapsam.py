"""MapSAM's guided decoding (tasks.sam_decoding), SAM 2 promptable tasks, SALT-style learned prompts, and the
adapter files of promptable tasks."""

from __future__ import annotations

import pytest
import torch
from conftest import sam_upstream_state, train_steps
from safetensors.torch import load_file

from vadapt.adapters import QVDoraConfig, SaltConfig
from vadapt.checkpoint import save_adapter
from vadapt.loading import load_task
from vadapt.tasks import PromptableSegmentationTask
from vadapt.tasks.promptable_config import DecoderConfig, PromptingConfig
from vadapt.tasks.sam_decoding import CoarseMaskGenerator, _attend, decode_masks

STATS = {"mean": [0.5] * 3, "std": [0.25] * 3}


def make_task(backbone: str = "sam_test", **kwargs) -> PromptableSegmentationTask:
    torch.manual_seed(0)
    if backbone.startswith("sam2"):
        kwargs.setdefault("img_size", 64)
    kwargs.setdefault("adapter", QVDoraConfig(r=4))
    return PromptableSegmentationTask(backbone=backbone, **STATS, **kwargs)


def square_batch(n: int = 2, size: int = 64, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(n, 3, size, size, generator=g) * 0.3
    mask = torch.zeros(n, size, size, dtype=torch.long)
    for i in range(n):
        y, x = torch.randint(4, size - 24, (2,), generator=g).tolist()
        image[i, :, y : y + 20, x : x + 20] += 0.7
        mask[i, y : y + 20, x : x + 20] = 1
    return {"image": image, "mask": mask}


def prompts(task: PromptableSegmentationTask, features, box: bool = False):
    coords = torch.tensor([[[20.0, 24.0], [50.0, 8.0]]])
    labels = torch.tensor([[1, 0]])
    box_t = torch.tensor([[4.0, 6.0, 40.0, 44.0]]) if box else None
    return task._encode_prompts((coords, labels), box_t)


# ---- decode_masks reproduces the upstream decoders ----------------------------------------------------------
@pytest.mark.parametrize("backbone", ["sam_test", "sam2_test"])
@pytest.mark.parametrize("box", [False, True])
def test_decode_masks_without_injections_equals_the_upstream_decoder(backbone, box):
    task = make_task(backbone).eval()
    with torch.no_grad():
        for p in task.mask_decoder.parameters():  # move every weight off its init so nothing cancels
            p.add_(torch.randn_like(p) * 0.05)
        features = task.image_features(torch.rand(1, 3, 64, 64))
        sparse, dense = prompts(task, features, box)
        pe = task.prompt_encoder.get_dense_pe()
        ours, ours_iou = decode_masks(task.mask_decoder, features.embedding, pe, sparse, dense, features.high_res)
        if backbone == "sam_test":
            theirs, theirs_iou = task.mask_decoder.predict_masks(features.embedding, pe, sparse, dense)
        else:
            theirs, theirs_iou, *_ = task.mask_decoder.predict_masks(features.embedding, pe, sparse, dense,
                                                                      repeat_image=False,
                                                                      high_res_features=features.high_res)
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(ours_iou, theirs_iou)


def test_masked_attention_ignores_masked_keys_and_falls_back_when_all_are_masked():
    torch.manual_seed(0)
    task = make_task()
    attention = task.mask_decoder.transformer.layers[0].cross_attn_token_to_image
    q, k, v = torch.randn(1, 5, 32), torch.randn(1, 16, 32), torch.randn(1, 16, 32)
    keep = torch.zeros(1, 16, dtype=torch.bool)
    keep[0, :6] = True
    out = _attend(attention, q, k, v, keep)
    k2, v2 = k.clone(), v.clone()
    k2[:, 6:] += 5 * torch.randn(1, 10, 32)
    v2[:, 6:] += 5 * torch.randn(1, 10, 32)
    torch.testing.assert_close(_attend(attention, q, k2, v2, keep), out)  # masked keys play no part
    assert not torch.allclose(attention(q=q, k=k2, v=v2), attention(q=q, k=k, v=v))
    nothing = torch.zeros(1, 16, dtype=torch.bool)
    torch.testing.assert_close(_attend(attention, q, k, v, nothing), attention(q=q, k=k, v=v), atol=1e-5,
                               rtol=1e-5)


def test_target_embedding_and_coarse_mask_change_the_decoding():
    task = make_task(prompting=PromptingConfig(mode="automatic")).eval()
    with torch.no_grad():
        features = task.image_features(torch.rand(1, 3, 64, 64))
        sparse, dense = prompts(task, features)
        pe = task.prompt_encoder.get_dense_pe()
        plain, _ = decode_masks(task.mask_decoder, features.embedding, pe, sparse, dense)
        target = torch.randn(1, 32)
        guided, _ = decode_masks(task.mask_decoder, features.embedding, pe, sparse, dense, target=target)
        coarse = torch.randn(1, 1, 4, 4)
        masked, _ = decode_masks(task.mask_decoder, features.embedding, pe, sparse, dense, target=target,
                                 coarse_logits=coarse)
    assert not torch.allclose(plain, guided) and not torch.allclose(guided, masked)


def test_coarse_mask_generator_averages_its_heads():
    torch.manual_seed(0)
    generator = CoarseMaskGenerator(8, levels=3)
    levels = [torch.randn(2, 8, 4, 4) for _ in range(3)]
    expected = sum(head(x) for head, x in zip(generator.heads, levels)) / 3
    torch.testing.assert_close(generator(levels), expected)
    with pytest.raises(ValueError, match="expected 3 feature levels"):
        generator(levels[:2])


def test_mapsam_heads_read_every_fourth_block_through_the_neck():
    task = make_task(prompting=PromptingConfig(mode="automatic"))  # sam_test has 2 blocks: block 0 is tapped
    assert task.backbone.out_indices == (0,) and len(task.coarse_head.heads) == 2
    with torch.no_grad():
        features = task.image_features(torch.rand(1, 3, 40, 64))
    assert len(features.levels) == 2 and all(x.shape == (1, 32, 4, 4) for x in features.levels)
    torch.testing.assert_close(features.levels[-1], features.embedding)
    with pytest.raises(ValueError, match="coarse_blocks"):
        make_task(prompting=PromptingConfig(mode="automatic", coarse_blocks=[1]))  # the last block is the embedding


# ---- SAM 2 --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prompting", ["sampled", "automatic", "learned"])
def test_sam2_promptable_task_shapes_and_training_step(prompting):
    task = make_task("sam2_test", prompting=PromptingConfig(mode=prompting))
    image = torch.rand(2, 3, 48, 64)
    with torch.no_grad():
        task.eval()
        if prompting == "sampled":
            logits, iou = task(image, boxes=torch.tensor([[4.0, 4.0, 30.0, 40.0], [10.0, 10.0, 50.0, 40.0]]))
        else:
            logits, iou = task(image)
    assert logits.shape == (2, 1, 48, 64) and iou.shape == (2, 1)
    if prompting == "automatic":
        assert len(task.coarse_head.heads) == 3  # FPN strides 4 and 8 (pooled) and the embedding
    task.train()
    loss = task._shared_step(square_batch(), "train")
    loss.backward()
    grads = {n.split(".")[0] for n, p in task.named_parameters() if p.grad is not None}
    expected = {"sampled": {"backbone", "mask_decoder"}, "automatic": {"backbone", "mask_decoder", "coarse_head"},
                "learned": {"backbone", "mask_decoder", "prompt_tokens"}}[prompting]
    assert grads == expected


def test_sam2_img_size_must_fit_the_hiera_windows():
    with pytest.raises(ValueError, match="multiple of"):
        make_task("sam2_test", img_size=72)


# ---- SALT-style learned prompt ------------------------------------------------------------------------------
def test_learned_prompt_with_salt_trains_salt_the_token_and_the_decoder_and_learns():
    torch.manual_seed(0)
    learned = PromptingConfig(mode="learned")
    norms = PromptableSegmentationTask(backbone="sam_test", adapter=SaltConfig(r=4, lora_r=4), prompting=learned,
                                       decoder=DecoderConfig(mask_decoder="norms"), **STATS)
    trainable = {n for n, p in norms.named_parameters() if p.requires_grad}
    decoder = {n for n in trainable if n.startswith("mask_decoder.")}
    assert decoder and all("norm" in n for n in decoder)  # SALT's rule: the decoder's LayerNorms train
    assert {n.split(".")[0] for n in trainable} == {"backbone", "mask_decoder", "prompt_tokens"}
    assert norms.capabilities.prompts == "optional"
    # learning is checked with a trainable decoder: the tiny decoder's random frozen weights barely respond
    task = PromptableSegmentationTask(backbone="sam_test", adapter=SaltConfig(r=4, lora_r=4), prompting=learned,
                                      decoder=DecoderConfig(mask_decoder="train"), **STATS)
    frozen = {n: p.detach().clone() for n, p in task.named_parameters() if not p.requires_grad}
    losses = train_steps(task, square_batch(), 25)
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5, losses
    for n, p in task.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), f"frozen {n} changed"
    with torch.no_grad():
        logits, _ = task.eval()(torch.rand(1, 3, 64, 64))
    assert logits.shape == (1, 1, 64, 64)


# ---- adapter files --------------------------------------------------------------------------------------------
def write_full_sam_weights(task: PromptableSegmentationTask, path) -> str:
    state = sam_upstream_state(task)
    torch.save(state, path)
    return str(path)


def test_adapter_files_leave_out_the_frozen_prompt_encoder_and_decoder(tmp_path):
    weights = write_full_sam_weights(make_task(adapter=None), tmp_path / "sam.pth")
    frozen = make_task(weights=weights, decoder=DecoderConfig(mask_decoder="frozen"))
    keys = set(load_file(str(save_adapter(frozen, tmp_path / "frozen.safetensors"))))
    assert keys and not any(k.startswith(("mask_decoder.", "prompt_encoder.")) for k in keys)
    norms = make_task(weights=weights, decoder=DecoderConfig(mask_decoder="norms"))
    with torch.no_grad():
        for p in norms.parameters():
            if p.requires_grad:
                p.add_(0.1)
    path = save_adapter(norms, tmp_path / "norms.safetensors")
    keys = set(load_file(str(path)))
    decoder = {k for k in keys if k.startswith("mask_decoder.")}
    assert decoder and all("norm" in k for k in decoder)
    loaded = load_task(path).eval()
    image = torch.rand(1, 3, 64, 64)
    box = torch.tensor([[4.0, 4.0, 40.0, 40.0]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(image, boxes=box), norms.eval()(image, boxes=box))


# ---- the shipped configs' trainable parameters on the real SAM ViT-B (meta device: shapes only) -------------
def test_mapsam_and_salt_configs_train_the_papers_parts_on_sam_vit_b():
    from pathlib import Path

    from vadapt.loading import task_from_config_file

    configs = Path(__file__).parents[1] / "configs"

    def parts(task) -> dict[str, int]:
        counts: dict[str, int] = {}
        for name, p in task.named_parameters():
            if p.requires_grad:
                counts[name.split(".")[0]] = counts.get(name.split(".")[0], 0) + p.numel()
        return counts

    with torch.device("meta"):
        mapsam = parts(task_from_config_file(str(configs / "mapsam_sam_vitb_roads.yaml"), weights=None))
        salt_task = task_from_config_file(str(configs / "salt_sam_vitb_kvasir.yaml"), weights=None)
    dim, rank = 768, 4
    dora = 12 * 2 * (rank * dim + dim * rank + dim)  # q and v of 12 blocks: A, B and a magnitude per output row
    spgen = (256 * 64 + 64) + 2 * 64 + (64 * 16 + 16) + 2 * 16 + (16 + 1)  # conv, LayerNorm2d, conv, LN, conv
    assert mapsam["backbone"] == dora == 165_888  # MapSAM's official DoRA count (r=4, q and v)
    assert mapsam["coarse_head"] == 4 * spgen == 70_660  # four SPGen heads, as the official code
    assert mapsam["prompt_encoder"] == 6_220 and mapsam["mask_decoder"] == 4_058_340  # all of SAM's decoder
    salt = parts(salt_task)
    assert salt["backbone"] == 8_959_968  # the official SAM (ViT) SALT setting, see tests/test_salt.py
    assert salt["prompt_tokens"] == 256
    assert salt["mask_decoder"] == sum(p.numel() for n, p in salt_task.mask_decoder.named_parameters() if "norm" in n)
