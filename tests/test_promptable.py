"""PromptableSegmentationTask (SAM v1): prompts, what trains, the embedding cache, adapter checkpoints."""

from __future__ import annotations

import pytest
import torch
from conftest import sam_upstream_state, train_steps

from vadapt.adapters import QVDoraConfig
from vadapt.checkpoint import save_adapter
from vadapt.loading import load_task
from vadapt.tasks import EmbeddingCache, PromptableSegmentationTask
from vadapt.tasks.promptable import masked_mean_embedding, select_point_prompts
from vadapt.tasks.promptable_config import DecoderConfig, LossConfig, PromptingConfig

SIZE = 64  # sam_test's img_size
STATS = {"mean": [0.5] * 3, "std": [0.25] * 3}


def make_task(**kwargs) -> PromptableSegmentationTask:
    torch.manual_seed(0)
    args = {"backbone": "sam_test", "adapter": QVDoraConfig(r=4), **STATS, **kwargs}
    return PromptableSegmentationTask(**args)


def square_batch(n: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """A bright square on noise per image; the square is class 1."""
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(n, 3, SIZE, SIZE, generator=g) * 0.3
    mask = torch.zeros(n, SIZE, SIZE, dtype=torch.long)
    for i in range(n):
        y, x = torch.randint(4, 36, (2,), generator=g).tolist()
        image[i, :, y : y + 20, x : x + 20] += 0.7
        mask[i, y : y + 20, x : x + 20] = 1
    mask[:, :2] = 255  # some ignored pixels
    return {"image": image, "mask": mask}


@pytest.fixture(scope="module")
def task() -> PromptableSegmentationTask:
    return make_task().eval()


@pytest.mark.parametrize("prompt", ["points", "boxes", "both"])
def test_shapes(task, prompt):
    image = torch.rand(2, 3, 48, 56)
    points = torch.tensor([[[10.0, 12.0], [30.0, 20.0]], [[5.0, 5.0], [0.0, 0.0]]])
    labels = torch.tensor([[1, 0], [1, -1]])
    boxes = torch.tensor([[4.0, 4.0, 30.0, 40.0], [10.0, 10.0, 20.0, 20.0]])
    kwargs = {"points": {"point_coords": points, "point_labels": labels}, "boxes": {"boxes": boxes},
              "both": {"point_coords": points, "point_labels": labels, "boxes": boxes}}[prompt]
    with torch.no_grad():
        logits, iou = task(image, **kwargs)
    assert logits.shape == (2, 1, 48, 56) and iou.shape == (2, 1)
    assert task.image_embeddings(image).shape == (2, 32, SIZE // 16, SIZE // 16)


def test_multimask_output_gives_three_masks():
    task = make_task(decoder=DecoderConfig(multimask_output=True)).eval()
    with torch.no_grad():
        logits, iou = task(torch.rand(1, 3, SIZE, SIZE), boxes=torch.tensor([[4.0, 4.0, 30.0, 40.0]]))
    assert logits.shape == (1, 3, SIZE, SIZE) and iou.shape == (1, 3)


def test_bad_prompts_are_named(task):
    image = torch.rand(2, 3, SIZE, SIZE)
    with pytest.raises(ValueError, match="point_coords must be"):
        task(image, torch.zeros(2, 3), torch.ones(2, 3))
    with pytest.raises(ValueError, match="point_labels must be"):
        task(image, torch.zeros(2, 3, 2), torch.ones(2, 4))
    with pytest.raises(ValueError, match="give both or neither"):
        task(image, torch.zeros(2, 3, 2))
    with pytest.raises(ValueError, match="boxes must be"):
        task(image, boxes=torch.zeros(1, 4))
    with pytest.raises(ValueError, match="needs a prompt"):
        task(image)
    with pytest.raises(ValueError, match="sample 1 has no prompt"):
        task(image, torch.zeros(2, 1, 2), torch.tensor([[1], [-1]]))
    with pytest.raises(ValueError, match="larger than the encoder"):
        task(torch.rand(1, 3, SIZE + 16, SIZE), boxes=torch.zeros(1, 4))


def test_non_sam_backbone_and_bad_options_are_refused():
    with pytest.raises(ValueError, match="needs a SAM or SAM 2 backbone"):
        PromptableSegmentationTask(backbone="efficientnet_lite0_test", **STATS)
    with pytest.raises(ValueError, match="mask_decoder must be"):
        make_task(decoder=DecoderConfig(mask_decoder="adapter"))
    with pytest.raises(ValueError, match="decoder_lora_r"):
        make_task(decoder=DecoderConfig(decoder_lora_r=0))


def trainable(task: PromptableSegmentationTask) -> set[str]:
    return {n.split(".")[0] for n, p in task.named_parameters() if p.requires_grad}


def test_what_trains_is_configured():
    assert trainable(make_task()) == {"backbone", "mask_decoder"}
    frozen_decoder = DecoderConfig(prompt_encoder="train", mask_decoder="frozen")
    assert trainable(make_task(adapter=None, decoder=frozen_decoder)) == {"prompt_encoder"}
    lora = make_task(adapter=None, decoder=DecoderConfig(mask_decoder="lora", decoder_lora_r=2))
    names = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert names and all(n.startswith("mask_decoder.") and "lora_" in n for n in names)
    adapted = make_task()
    adapter = [n for n, p in adapted.backbone.named_parameters() if p.requires_grad]
    assert adapter and all(".adapter." in n for n in adapter)


def test_training_moves_only_adapter_and_decoder_and_loss_falls():
    task = make_task(prompting=PromptingConfig(box_probability=0.5), lr=3e-3)
    frozen = {n: p.detach().clone() for n, p in task.named_parameters() if not p.requires_grad}
    before_trainable = {n: p.detach().clone() for n, p in task.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in task.parameters() if p.requires_grad], lr=3e-3)
    batch = square_batch(2)
    task.train()
    losses = []
    for _ in range(25):
        loss = task._shared_step(batch, "train")
        optimizer.zero_grad()
        loss.backward()
        for n, p in task.named_parameters():
            assert (p.grad is not None) <= p.requires_grad, n
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5, losses
    for n, p in task.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), f"frozen {n} changed"
    assert any(not torch.equal(p, before_trainable[n]) for n, p in task.named_parameters()
               if n.startswith("backbone.") and p.requires_grad)
    assert not any(p.requires_grad for p in task.prompt_encoder.parameters())
    task._log_scores("train")  # metrics accumulated and computed


def test_validation_step_and_preview(tmp_path):
    task = make_task().eval()
    with torch.no_grad():
        task._shared_step(square_batch(2), "val")
    assert len(task._preview) == 2
    picture = task.preview_picture(task._preview)
    assert picture.size == (3 * SIZE + 8, 2 * SIZE + 4)


def test_embedding_cache_runs_the_encoder_once(task):
    calls = []
    handle = task.backbone.register_forward_hook(lambda *_: calls.append(1))
    task.cache.clear()
    image = square_batch(1)["image"][0]
    first = torch.tensor([[20.0, 20.0]]), torch.tensor([1])
    second = torch.tensor([[40.0, 40.0], [5.0, 5.0]]), torch.tensor([1, 0])
    try:
        a, _ = task.predict_with_prompts(image, *first)
        b, _ = task.predict_with_prompts(image, *second)
        task.predict_with_prompts(image, boxes=torch.tensor([4.0, 4.0, 30.0, 30.0]))
    finally:
        handle.remove()
    assert len(calls) == 1
    with torch.no_grad():
        ref_a, _ = task(image[None], first[0][None], first[1][None])
        ref_b, _ = task(image[None], second[0][None], second[1][None])
    torch.testing.assert_close(a, ref_a)
    torch.testing.assert_close(b, ref_b)


def test_embedding_cache_is_lru():
    cache = EmbeddingCache(maxsize=2)
    for key in "abc":
        cache.put(key, torch.zeros(1))
    assert len(cache) == 2 and cache.get("a") is None and cache.get("c") is not None


def test_adapter_checkpoint_round_trip(tmp_path):
    # random frozen weights are not in the adapter file: write the tiny SAM's full weights, upstream format
    source = make_task(adapter=None, decoder=DecoderConfig(mask_decoder="frozen"))
    state = sam_upstream_state(source)
    weights = tmp_path / "sam_test.pth"
    torch.save(state, weights)
    task = make_task(weights=str(weights), decoder=DecoderConfig(mask_decoder="lora")).eval()
    torch.testing.assert_close(task.prompt_encoder.state_dict(), source.prompt_encoder.state_dict())
    with torch.no_grad():  # a "trained" adapter: random, non-zero adapter weights
        for p in task.parameters():
            if p.requires_grad:
                p.normal_(0, 0.2)
    path = save_adapter(task, tmp_path / "adapter.safetensors")
    loaded = load_task(path).eval()
    image, boxes = torch.rand(1, 3, SIZE, SIZE), torch.tensor([[4.0, 4.0, 40.0, 40.0]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(image, boxes=boxes), task(image, boxes=boxes))


def test_encoder_only_weights_file_is_refused(tmp_path):
    source = make_task(adapter=None)
    weights = tmp_path / "encoder_only.pth"
    torch.save({f"image_encoder.{k}": v for k, v in source.backbone.model.state_dict().items()}, weights)
    with pytest.raises(Exception, match="missing"):
        make_task(weights=str(weights))


# ---- automatic (MapSAM prompt-free) prompting -------------------------------------------------------------
AUTOMATIC = PromptingConfig(mode="automatic")


def test_select_point_prompts_picks_top_and_bottom_pixels_of_the_upsampled_map():
    coarse = torch.zeros(2, 1, 4, 4)
    coarse[0, 0, 1, 2], coarse[0, 0, 3, 0] = 5.0, -5.0  # peak in cell (row 1, col 2), trough in (3, 0)
    coarse[1, 0, 0, 1], coarse[1, 0, 2, 3] = 3.0, -3.0
    coords, labels = select_point_prompts(coarse, 2, SIZE)  # 16-pixel cells
    cells = (coords // 16).long()  # (x, y) cell of every point
    assert cells[0, :2].tolist() == [[2, 1]] * 2 and cells[0, 2:].tolist() == [[0, 3]] * 2
    assert cells[1, :2].tolist() == [[1, 0]] * 2 and cells[1, 2:].tolist() == [[3, 2]] * 2
    assert labels.tolist() == [[1, 1, 0, 0]] * 2
    # the two picks of a sign are neighbouring pixels around the cell centre, as MapSAM's
    assert (coords[:, 0] - coords[:, 1]).abs().sum(-1).max() <= 2
    # only pixels of the unpadded input are picked: the trough of image 1 lies outside 40 x 40
    coords, _ = select_point_prompts(coarse, 1, SIZE, size=(40, 40))
    assert (coords < 40).all()
    with pytest.raises(ValueError, match="auto_points"):
        select_point_prompts(coarse, 40 * 40 + 1, SIZE, size=(40, 40))


def test_masked_mean_embedding():
    embedding = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2)
    coarse = torch.tensor([[[[1.0, -1.0], [2.0, -3.0]]], [[[-1.0, -1.0], [-1.0, -1.0]]]])
    mean = masked_mean_embedding(embedding, coarse)
    torch.testing.assert_close(mean[0], embedding[0, :, :, 0].mean(-1))  # cells (0, 0) and (1, 0)
    torch.testing.assert_close(mean[1], torch.zeros(3))  # nothing > 0.5: zero vector


def test_automatic_forward_without_prompts():
    task = make_task(prompting=AUTOMATIC).eval()
    assert task.capabilities.prompts == "optional" and make_task().capabilities.prompts == "required"
    with torch.no_grad():
        logits, iou = task(torch.rand(2, 3, 48, 56))
        _, _, coarse, coords, labels = task.segment_automatic(torch.rand(2, 3, 48, 56))
    assert logits.shape == (2, 1, 48, 56) and iou.shape == (2, 1)
    assert coarse.shape == (2, 1, SIZE // 16, SIZE // 16) and coords.shape == (2, 4, 2) and labels.shape == (2, 4)
    with pytest.raises(ValueError, match="PromptingConfig.mode must be"):
        make_task(prompting=PromptingConfig(mode="auto"))
    with pytest.raises(ValueError, match="auto_points"):
        make_task(prompting=PromptingConfig(mode="automatic", auto_points=0))


def test_automatic_training_loss_falls_coarse_head_trains_encoder_frozen():
    task = make_task(prompting=AUTOMATIC)
    assert trainable(task) == {"backbone", "mask_decoder", "coarse_head"}
    encoder = {n: p.detach().clone() for n, p in task.backbone.named_parameters() if not p.requires_grad}
    head = {n: p.detach().clone() for n, p in task.coarse_head.named_parameters()}
    losses = train_steps(task, square_batch(2), 30)
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5, losses
    for n, p in task.backbone.named_parameters():
        if n in encoder:
            assert torch.equal(p, encoder[n]), f"frozen {n} changed"
    assert all(not torch.equal(p, head[n]) for n, p in task.coarse_head.named_parameters())
    task._log_scores("train")
    task.eval()
    with torch.no_grad():
        task._shared_step(square_batch(1, seed=1), "val")
    assert len(task._preview) == 1 and task.preview_picture(task._preview).size == (3 * SIZE + 8, SIZE)


def test_automatic_adapter_checkpoint_keeps_the_coarse_head(tmp_path):
    source = make_task(adapter=None, decoder=DecoderConfig(mask_decoder="frozen"))
    state = sam_upstream_state(source)
    weights = tmp_path / "sam_test.pth"
    torch.save(state, weights)
    task = make_task(weights=str(weights), prompting=AUTOMATIC).eval()
    with torch.no_grad():
        for p in task.parameters():
            if p.requires_grad:
                p.normal_(0, 0.2)
    loaded = load_task(save_adapter(task, tmp_path / "adapter.safetensors")).eval()
    assert loaded.capabilities.prompts == "optional"
    torch.testing.assert_close(loaded.coarse_head.state_dict(), task.coarse_head.state_dict())
    image = torch.rand(1, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(loaded(image), task(image))


# ---- grouped settings: YAML, checkpoints, and the flat init args of earlier versions ----------------------------
#: the settings of one automatic task as earlier versions took them: flat init args (none at its default)
FLAT_SETTINGS = {"prompting": "automatic", "auto_points": 1, "masked_attention": False, "prompt_encoder": "train",
                 "multimask_output": True, "focal_weight": 0.5, "dice_weight": 0.5, "coarse_weight": 2.0}
GROUPED_SETTINGS = {"prompting": {"mode": "automatic", "auto_points": 1, "masked_attention": False},
                    "decoder": {"prompt_encoder": "train", "multimask_output": True},
                    "loss": {"focal_weight": 0.5, "dice_weight": 0.5, "coarse_weight": 2.0}}


def grouped_configs() -> dict[str, object]:
    return {"prompting": PromptingConfig(**GROUPED_SETTINGS["prompting"]),
            "decoder": DecoderConfig(**GROUPED_SETTINGS["decoder"]), "loss": LossConfig(**GROUPED_SETTINGS["loss"])}


def test_upgrade_init_args_groups_the_flat_settings_of_earlier_versions():
    upgrade = PromptableSegmentationTask.upgrade_init_args
    assert upgrade({"backbone": "sam_test", **FLAT_SETTINGS}) == {"backbone": "sam_test", **GROUPED_SETTINGS}
    assert upgrade(GROUPED_SETTINGS) == GROUPED_SETTINGS  # grouped already: as it is
    stored = {"class_path": "vadapt.tasks.promptable_config.DecoderConfig", "init_args": {"mask_decoder": "lora"}}
    assert upgrade({"decoder": stored, "decoder_lora_r": 2})["decoder"] == {**stored, "init_args": {
        "mask_decoder": "lora", "decoder_lora_r": 2}}
    with pytest.raises(ValueError, match="auto_points given both flat"):
        upgrade({"prompting": {"mode": "automatic", "auto_points": 3}, "auto_points": 1})
    for init_args in ({"prompting": "learned"}, {"prompting": {"mode": "learned"}},
                      {"prompting": {"class_path": "PromptingConfig", "init_args": {"mode": "learned"}}}):
        assert PromptableSegmentationTask.capabilities_for(init_args).prompts == "optional"
    assert PromptableSegmentationTask.capabilities_for({"prompting": {"num_positive": 2}}).prompts == "required"


def test_grouped_settings_from_yaml_and_their_typos_are_named():
    from vadapt.loading import build_task

    path = "vadapt.tasks.PromptableSegmentationTask"
    task = build_task(path, {"backbone": "sam_test", **STATS, **GROUPED_SETTINGS})
    assert (task.prompting_config, task.decoder_config, task.loss_config) == tuple(grouped_configs().values())
    assert task.hparams["lr"] == 1e-4 and task.hparams["weight_decay"] == 1e-2 and task.hparams["poly_power"] == 1.0
    assert "freeze_backbone" not in task.hparams  # the encoder trains through its adapter only
    with pytest.raises(Exception, match="auto_pionts"):
        build_task(path, {"backbone": "sam_test", "prompting": {"mode": "automatic", "auto_pionts": 2}})
    with pytest.raises(Exception, match="freeze_backbone"):
        build_task(path, {"backbone": "sam_test", "freeze_backbone": False})


def test_flat_settings_from_python_still_build_the_same_task_with_a_deprecation_warning():
    with pytest.warns(DeprecationWarning, match="flat settings"):
        flat = make_task(**FLAT_SETTINGS)
    assert dict(flat.hparams) == dict(make_task(**grouped_configs()).hparams)


def test_grouped_settings_round_trip_and_old_flat_checkpoints_load(tmp_path):
    import json

    from safetensors.torch import load_file, save_file

    from vadapt.checkpoint import MANIFEST_KEY, read_manifest
    from vadapt.loading import capabilities_of

    source = make_task(adapter=None, decoder=DecoderConfig(mask_decoder="frozen"))
    state = sam_upstream_state(source)
    weights = tmp_path / "sam_test.pth"
    torch.save(state, weights)
    task = make_task(weights=str(weights), **grouped_configs()).eval()
    with torch.no_grad():
        for p in task.parameters():
            if p.requires_grad:
                p.normal_(0, 0.2)
    path = save_adapter(task, tmp_path / "adapter.safetensors")
    manifest = read_manifest(path)
    stored = {**vars(PromptingConfig()), **GROUPED_SETTINGS["prompting"]}
    assert manifest["init_args"]["prompting"] == {"class_path": "vadapt.tasks.promptable_config.PromptingConfig",
                                                  "init_args": stored}
    image = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        expected = task(image)
    # an earlier version's file: the same tensors, the settings flat in init_args, no stored capabilities
    old = {k: v for k, v in manifest.items() if k != "capabilities"}
    old["init_args"] = {**{k: v for k, v in manifest["init_args"].items() if k not in GROUPED_SETTINGS},
                        **FLAT_SETTINGS}
    old_path = tmp_path / "old.safetensors"
    save_file(load_file(str(path)), str(old_path), metadata={MANIFEST_KEY: json.dumps(old)})
    assert capabilities_of(read_manifest(old_path)) == task.capabilities
    for file in (path, old_path):
        loaded = load_task(file).eval()
        assert (loaded.prompting_config, loaded.decoder_config, loaded.loss_config) == tuple(
            grouped_configs().values())
        with torch.no_grad():
            logits, ious = loaded(image)
        assert logits.shape == (2, 3, SIZE, SIZE)
        assert torch.equal(logits, expected[0]) and torch.equal(ious, expected[1])
